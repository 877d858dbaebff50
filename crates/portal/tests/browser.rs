//! The portal in a real browser: headless Chromium driven over WebDriver
//! (Debian's `chromium` and `chromium-driver`; `.ci/run` installs them).
//! A patient signs in through the launch link, sees an emergency access
//! made in the setup, withdraws a consent and the revoked clinician is
//! refused; an auditor approves the break-glass grant; a clinician searches
//! and opens a record. Screenshots of each view go to
//! `target/portal-screenshots/`, and every page passes a check of labels
//! and headings.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use asclepios_client::Client;
use asclepios_deploy::directory::Directory;
use asclepios_deploy::serve::{start_authority, start_records, Service};
use asclepios_deploy::split::write_records_dir;
use asclepios_deploy::{init::init, Config};
use asclepios_fhir::synth::Generator;
use asclepios_portal::Portal;
use base64::Engine;
use serde_json::{json, Value};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

fn tool(env: &str, default: &str) -> PathBuf {
    let path = std::env::var_os(env)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default));
    assert!(
        path.exists(),
        "{} not found: install Debian's chromium and chromium-driver \
         (`apt-get install chromium chromium-driver`; .ci/run does) or set {env}",
        path.display()
    );
    path
}

/// A chromedriver process, stopped on drop.
struct Driver {
    child: Child,
    base: String,
    http: reqwest::Client,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Driver {
    async fn start() -> Driver {
        let port = free_port();
        let child = Command::new(tool("CHROMEDRIVER", "/usr/bin/chromedriver"))
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let driver = Driver {
            child,
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
        };
        for _ in 0..100 {
            if let Ok(r) = driver
                .http
                .get(format!("{}/status", driver.base))
                .send()
                .await
            {
                if r.status().is_success() {
                    return driver;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("chromedriver did not answer on {}", driver.base);
    }

    async fn session(&self, profile: &Path) -> Session {
        let chromium = tool("CHROMIUM", "/usr/bin/chromium");
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--disable-quic", "--no-first-run", "--disable-background-networking",
                         "--disable-component-update", "--disable-sync", "--window-size=1280,1600",
                         format!("--user-data-dir={}", profile.display())]
            }
        }}});
        let v: Value = self
            .http
            .post(format!("{}/session", self.base))
            .json(&caps)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {v}"));
        Session {
            http: self.http.clone(),
            base: format!("{}/session/{id}", self.base),
        }
    }
}

/// One browser session.
struct Session {
    http: reqwest::Client,
    base: String,
}

impl Session {
    async fn call(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base));
        if method != reqwest::Method::GET {
            request = request.json(&body);
        }
        let v: Value = request.send().await.unwrap().json().await.unwrap();
        assert!(
            v["value"].get("error").is_none(),
            "WebDriver {path}: {}",
            v["value"]
        );
        v["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", json!({ "url": url }))
            .await;
    }

    async fn find(&self, css: &str) -> String {
        let v = self
            .call(
                reqwest::Method::POST,
                "/element",
                json!({"using": "css selector", "value": css}),
            )
            .await;
        v[ELEMENT].as_str().unwrap().to_string()
    }

    async fn click(&self, css: &str) {
        let e = self.find(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{e}/click"),
            json!({}),
        )
        .await;
    }

    async fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{e}/value"),
            json!({ "text": text }),
        )
        .await;
    }

    async fn source(&self) -> String {
        self.call(reqwest::Method::GET, "/source", Value::Null)
            .await
            .as_str()
            .unwrap()
            .to_string()
    }

    /// The page source once it contains `text` (a click's navigation may
    /// still be under way when the click returns).
    async fn wait_for(&self, text: &str) -> String {
        for _ in 0..200 {
            let html = self.source().await;
            if html.contains(text) {
                return html;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("the page never showed `{text}`:\n{}", self.source().await);
    }

    async fn screenshot(&self, name: &str) {
        let png = self
            .call(reqwest::Method::GET, "/screenshot", Value::Null)
            .await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap())
            .unwrap();
        let dir = screenshots();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), bytes).unwrap();
    }

    async fn quit(self) {
        let _ = self.http.delete(&self.base).send().await;
    }
}

fn screenshots() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"))
        .join("portal-screenshots")
}

/// Labels and headings: one `h1`, no skipped heading level, every visible
/// form control labelled, every button named, the language set.
fn check_accessibility(page: &str, html: &str) {
    assert!(html.contains("<html lang=\"en\""), "{page}: no language");
    let mut last = 0;
    let mut h1 = 0;
    for (i, _) in html.match_indices("<h") {
        let Some(level) = html[i + 2..].chars().next().and_then(|c| c.to_digit(10)) else {
            continue;
        };
        if level == 1 {
            h1 += 1;
        }
        assert!(
            level <= last + 1,
            "{page}: heading h{level} after h{last} skips a level"
        );
        last = level;
    }
    assert_eq!(h1, 1, "{page}: one h1");
    for tag in ["<input", "<select", "<textarea"] {
        for (i, _) in html.match_indices(tag) {
            let end = html[i..].find('>').unwrap() + i;
            let element = &html[i..end];
            if element.contains("type=\"hidden\"") {
                continue;
            }
            let labelled = element.contains("aria-label=")
                || element
                    .split("id=\"")
                    .nth(1)
                    .and_then(|rest| rest.split('"').next())
                    .is_some_and(|id| html.contains(&format!("<label for=\"{id}\"")));
            assert!(labelled, "{page}: unlabelled control {element}>");
        }
    }
    for (i, _) in html.match_indices("<button") {
        let end = html[i..].find("</button>").unwrap() + i;
        let button = &html[i..end];
        let text = button.rsplit('>').next().unwrap_or("").trim();
        assert!(
            !text.is_empty() || button.contains("aria-label="),
            "{page}: a button without a name: {button}"
        );
    }
}

/// The two trust domains apart, each from its own directory and store.
struct Deployment {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    authority_url: String,
    records_url: String,
    _services: [Service; 2],
}

impl Deployment {
    fn client(&self, id: &str) -> Client {
        Client::connect(&self.dir, id, &self.authority_url, &self.records_url).unwrap()
    }
}

async fn deployment() -> Deployment {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("authority");
    let records_dir = tmp.path().join("records");
    let (d, r) = (dir.clone(), records_dir.clone());
    tokio::task::spawn_blocking(move || {
        init(&d, &Config::development()).unwrap();
        write_records_dir(&d, &r).unwrap();
        // Set up before the authority serves: offline, on its own store.
        Directory::open(&d)
            .unwrap()
            .add(
                "dr-gp",
                "clinician",
                "Dr. Gil Pratt, general practitioner",
                &["role:doctor".into()],
            )
            .unwrap();
    })
    .await
    .unwrap();
    let (authority_port, records_port) = (free_port(), free_port());
    let authority_url = format!("https://localhost:{authority_port}");
    let records_url = format!("https://localhost:{records_port}");
    let authority = start_authority(
        &dir,
        Some(&format!("127.0.0.1:{authority_port}")),
        &records_url,
    )
    .await
    .unwrap();
    let records = start_records(
        &records_dir,
        Some(&format!("127.0.0.1:{records_port}")),
        &authority_url,
    )
    .await
    .unwrap();
    let d = Deployment {
        _tmp: tmp,
        dir,
        authority_url,
        records_url,
        _services: [authority, records],
    };
    // The record service serves once it holds the authority's facts.
    let probe = d.client("pat-00000");
    for _ in 0..200 {
        match probe.latest_checkpoint().await {
            Err(asclepios_client::ClientError::Refused { status: 503, .. }) => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await
            }
            other => {
                other.expect("the record service answers");
                break;
            }
        }
    }
    d
}

/// Serves a portal for `client`; its base URL and launch URL.
async fn launch(client: Client) -> (Arc<Portal>, String, String) {
    let portal = Portal::new(client).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let launch = format!("{base}{}", portal.launch_path());
    tokio::spawn(asclepios_portal::serve(
        listener,
        portal.clone(),
        std::future::pending(),
    ));
    (portal, base, launch)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patients_auditors_and_clinicians_in_a_real_browser() {
    // reqwest here speaks plain HTTP to chromedriver and the portal, but
    // builds its TLS stack anyway: give it the provider the project uses.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let d = deployment().await;
    let config = Config::load(&d.dir).unwrap();

    // Setup: the lab stores a patient's records; the patient consents to a
    // GP, who reads one; the emergency physician breaks the glass and reads.
    let mut lab = d.client("lab-central");
    lab.refresh_key().await.unwrap();
    let bundle = Generator::new(11).patient(2);
    let pid = "pat-00000";
    assert_eq!(bundle.patient_id(), pid);
    let policy = lab
        .resolve_policy(&config.default_policy(pid))
        .await
        .unwrap();
    let mut first_obs = None;
    for r in bundle.all() {
        let id = lab.record_id_for(pid, r).await.unwrap();
        lab.put_record_resolved(pid, &id, 1, r, &policy)
            .await
            .unwrap();
        if first_obs.is_none() && r["resourceType"] == "Observation" {
            first_obs = Some(id);
        }
    }
    let record = first_obs.unwrap();
    let mut patient = d.client(pid);
    patient.refresh_key().await.unwrap();
    patient
        .grant_consent(&asclepios_authority::consent::ConsentGrant {
            grantee: "dr-gp".into(),
            purpose: "TREAT".into(),
            resource_types: vec!["*".into()],
            expires_at: None,
        })
        .await
        .unwrap();
    let mut gp = d.client("dr-gp");
    gp.refresh_key().await.unwrap();
    gp.get_record(pid, &record).await.unwrap();
    let mut er = d.client("dr-er");
    er.break_glass(pid, "unconscious on arrival").await.unwrap();
    er.refresh_key().await.unwrap();
    er.get_record(pid, &record).await.unwrap();

    let driver = Driver::start().await;
    let profile = tempfile::tempdir().unwrap();
    let browser = driver.session(profile.path()).await;

    // The patient.
    let (_p, base, url) = launch(patient).await;
    // Without the launch secret nothing is served; a forged post is refused.
    let plain = reqwest::Client::new();
    let r = plain.get(format!("{base}/patient")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = plain
        .post(format!("{base}/patient/consents/withdraw"))
        .form(&[("consent", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = plain
        .get(format!("{base}/patient"))
        .header("host", "evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 421);
    assert!(r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("default-src 'none'"));

    browser.goto(&url).await;
    let html = browser.source().await;
    assert!(html.contains("My records (pat-00000)"), "{html}");
    // The launch link signed this browser in; it signs no other.
    let again = plain.get(&url).send().await.unwrap();
    assert_eq!(again.status(), 401);
    assert!(again.headers().get("set-cookie").is_none());
    assert!(again.text().await.unwrap().contains("used already"));
    assert!(
        html.contains("EMERGENCY ACCESS"),
        "the break-glass is shown"
    );
    assert!(html.contains("dr-er"));
    assert!(html.contains("inclusion proof verified"));
    assert!(!html.contains("inclusion proof FAILED"));
    assert!(html.contains("Systolic blood pressure"));
    assert!(html.contains("Key authority attestation: warning (insecure-software)"));
    check_accessibility("patient", &html);
    browser.screenshot("patient").await;
    // With the session cookie but not the page's CSRF token, or from
    // another site, a post is refused.
    let cookie = browser
        .call(
            reqwest::Method::GET,
            "/cookie/asclepios_portal",
            Value::Null,
        )
        .await["value"]
        .as_str()
        .unwrap()
        .to_string();
    let forged = plain
        .post(format!("{base}/patient/consents/withdraw"))
        .header("cookie", format!("asclepios_portal={cookie}"))
        .form(&[("consent", "x"), ("csrf", "0000")])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    let cross_site = plain
        .post(format!("{base}/patient/consents/withdraw"))
        .header("cookie", format!("asclepios_portal={cookie}"))
        .header("origin", "http://evil.example")
        .form(&[("consent", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(cross_site.status(), 403);

    browser
        .click("button[aria-label=\"Withdraw consent for dr-gp\"]")
        .await;
    let html = browser.wait_for("Consent withdrawn").await;
    assert!(html.contains("withdrawn"));
    check_accessibility("patient after withdrawal", &html);
    browser.screenshot("patient-consent-withdrawn").await;
    // The withdrawal took effect: the GP's fresh key no longer opens it.
    gp.refresh_key().await.unwrap();
    assert!(
        gp.get_record(pid, &record).await.is_err(),
        "the GP is refused after the withdrawal"
    );

    // The patient erases a record from the page; the erasure is listed.
    // The button names the record by its FHIR reference; the store knows it
    // only by its opaque id.
    let erased = "Observation/obs-00000-0-3";
    let erased_id = d
        .client(pid)
        .record_id(pid, "Observation", "obs-00000-0-3")
        .await
        .unwrap();
    browser
        .click(&format!("button[aria-label=\"Erase record {erased}\"]"))
        .await;
    let html = browser.wait_for("Record erased").await;
    assert!(html.contains(&format!("record/pat-00000/{erased_id}")));
    assert!(d
        .client("dr-heart")
        .get_record(pid, &erased_id)
        .await
        .is_err());

    // The auditor approves the break-glass grant.
    let (_a, _base, url) = launch(d.client("auditor-ann")).await;
    browser.goto(&url).await;
    let html = browser.source().await;
    assert!(html.contains("Break-glass review queue"), "{html}");
    assert!(html.contains("dr-er"));
    assert!(html.contains("signature verified"));
    check_accessibility("auditor", &html);
    browser.screenshot("auditor-queue").await;
    browser
        .type_into("#comment-0", "patient unconscious; justified")
        .await;
    browser.click("button[value=\"approve\"]").await;
    let html = browser.wait_for("Review recorded").await;
    assert!(html.contains("No break-glass grant is waiting"));
    assert!(html.contains("consistent with the previous checkpoint"));
    check_accessibility("auditor after review", &html);
    browser.screenshot("auditor-reviewed").await;
    let store = config.open_store(&d.dir).unwrap();
    assert!(store.unreviewed_emergency_grants().unwrap().is_empty());
    // Event search.
    browser.type_into("#actor", "dr-er").await;
    browser.click("form[role=\"search\"] button").await;
    let html = browser.wait_for("value=\"dr-er\"").await;
    assert!(html.contains("matching event(s)"), "{html}");
    browser.screenshot("auditor-search").await;

    // The clinician searches and opens a record.
    let (_c, _base, url) = launch(d.client("dr-heart")).await;
    browser.goto(&url).await;
    browser
        .type_into("#q", "type:Observation and patient:pat-00000")
        .await;
    browser.click("form[role=\"search\"] button").await;
    let html = browser.wait_for("match(es)").await;
    check_accessibility("clinician search", &html);
    browser.screenshot("clinician-search").await;
    browser.click("table a").await;
    let html = browser.wait_for("resourceType").await;
    assert!(html.contains("Versions: 1"));
    check_accessibility("clinician record", &html);
    browser.screenshot("clinician-record").await;

    browser.quit().await;
    drop(driver);
}
