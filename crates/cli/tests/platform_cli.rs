//! The platform through the `asclepios` binary: init, serve, import, get,
//! consent, break-glass, audit, over real mutual TLS.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use common::free_port;

fn asclepios(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_asclepios"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = asclepios(args);
    assert!(
        out.status.success(),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_deployment_through_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    let d = dir.to_str().unwrap();
    ok(&["init", "--dir", d]);
    // Free ports, so tests may run side by side.
    let config = dir.join("asclepios.toml");
    let authority_port = free_port();
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("127.0.0.1:7443", &format!("127.0.0.1:{authority_port}"))
        .replace("127.0.0.1:7444", &format!("127.0.0.1:{}", free_port()));
    std::fs::write(&config, text).unwrap();
    // The development measurement covers the configuration: refresh it.
    let refreshed = ok(&["attest", "dev-policy", "--dir", d]);
    assert!(refreshed.contains("INSECURE"), "{refreshed}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_asclepios"))
        .args(["serve", "--dir", d])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let _serve = Serve(child);
    for line in lines.by_ref() {
        if line.unwrap().starts_with("mutual TLS") {
            break;
        }
    }

    // The authority's RA-TLS certificate, appraised by anyone with the CA.
    let authority = format!("https://localhost:{authority_port}");
    // Development evidence is a warning: exit status 3, not success (L9).
    let warned = asclepios(&["attest", "verify", "--dir", d, &authority]);
    assert_eq!(warned.status.code(), Some(3));
    let verdict = String::from_utf8_lossy(&warned.stdout).to_string();
    assert!(verdict.contains("appraisal: warning"), "{verdict}");
    assert!(verdict.contains("INSECURE"), "{verdict}");
    assert!(
        verdict.contains("reference: development build"),
        "{verdict}"
    );
    let challenged = asclepios(&[
        "attest", "verify", "--dir", d, &authority, "--as", "dr-heart",
    ]);
    assert_eq!(challenged.status.code(), Some(3));
    let challenged = String::from_utf8_lossy(&challenged.stdout).to_string();
    assert!(challenged.contains("challenge answered"), "{challenged}");
    let registered = ok(&["attest", "register", "--dir", d, "--as", "lab-central"]);
    assert!(
        registered.contains("lab-central registered: warning"),
        "{registered}"
    );
    // Evidence files: an envelope (binary or base64) or nothing usable.
    let junk = tmp.path().join("junk.evidence");
    std::fs::write(&junk, b"ASCL\x0c\x01\x02").unwrap();
    let out = asclepios(&["attest", "verify", "--dir", d, junk.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("does not decode"));
    std::fs::write(&junk, "not base64 at all!").unwrap();
    let out = asclepios(&["attest", "verify", "--dir", d, junk.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));

    // The directory is administered through the authority, as an
    // administrator: signed, audited, role-checked.
    let added = ok(&[
        "user",
        "add",
        "dr-kim",
        "--as",
        "admin-ada",
        "--attr",
        "role:doctor",
        "--dir",
        d,
    ]);
    assert!(
        added.contains("dr-kim") && added.contains("role:doctor"),
        "{added}"
    );
    let set = ok(&[
        "user",
        "set-attrs",
        "dr-kim",
        "--as",
        "admin-ada",
        "--attr",
        "role:nurse",
        "--dir",
        d,
    ]);
    assert!(set.contains("revoked: role:doctor"), "{set}");
    let refused = asclepios(&["user", "disable", "dr-kim", "--as", "dr-heart", "--dir", d]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("role:admin"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    ok(&["user", "disable", "dr-kim", "--as", "admin-ada", "--dir", d]);
    let list = ok(&["user", "list", "--as", "admin-ada", "--dir", d]);
    assert!(
        list.lines()
            .any(|l| l.starts_with("dr-kim") && l.contains("DISABLED")),
        "{list}"
    );
    assert!(list
        .lines()
        .any(|l| l.starts_with("pat-00001") && l.contains("patient:pat-00001")));
    let bad = asclepios(&["user", "add", "bad id!", "--as", "admin-ada", "--dir", d]);
    assert!(!bad.status.success());

    let data = tmp.path().join("sample.ndjson");
    std::fs::write(
        &data,
        ok(&["synth", "--patients", "2", "--encounters", "1"]),
    )
    .unwrap();
    let imported = ok(&[
        "import",
        "--dir",
        d,
        "--as",
        "lab-central",
        data.to_str().unwrap(),
    ]);
    assert!(
        imported.contains("imported") && imported.contains("0 skipped"),
        "{imported}"
    );
    // Records are stored under opaque ids; a FHIR reference names one
    // through the patient's naming key.
    let observation: serde_json::Value = std::fs::read_to_string(&data)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|r| {
            r["resourceType"] == "Observation" && r["subject"]["reference"] == "Patient/pat-00000"
        })
        .unwrap();
    let fhir_id = observation["id"].as_str().unwrap().to_string();
    let json = ok(&[
        "get",
        "--dir",
        d,
        "--as",
        "pat-00000",
        "--patient",
        "pat-00000",
        &format!("Observation/{fhir_id}"),
    ]);
    assert!(json.contains("\"resourceType\": \"Observation\""), "{json}");
    assert!(json.contains(&fhir_id), "{json}");
    let listed = ok(&[
        "records",
        "--dir",
        d,
        "--as",
        "dr-heart",
        "--patient",
        "pat-00000",
    ]);
    assert!(
        listed.lines().count() > 2
            && listed
                .lines()
                .all(|l| l.starts_with('r') && !l.contains("obs-") && !l.contains("pat-")),
        "{listed}"
    );

    // Search: the index was filled by the import; results are read normally.
    let ids = ok(&[
        "search",
        "--dir",
        d,
        "--as",
        "dr-heart",
        "--ids-only",
        "type:Observation",
        "patient:pat-00000",
    ]);
    let first = ids
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("pat-00000/"))
        .unwrap()
        .to_string();
    assert!(
        listed.lines().any(|l| l.starts_with(&first)),
        "{first} not in {listed}"
    );
    assert!(
        ids.lines()
            .all(|l| l.starts_with("pat-00000/r") && l.len() == 43),
        "{ids}"
    );
    let json = ok(&[
        "get",
        "--dir",
        d,
        "--as",
        "pat-00000",
        "--patient",
        "pat-00000",
        &first,
    ]);
    assert!(json.contains("\"resourceType\": \"Observation\""), "{json}");
    let refused = asclepios(&[
        "get",
        "--dir",
        d,
        "--as",
        "researcher-rita",
        "--patient",
        "pat-00000",
        &first,
    ]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("satisfy this record's policy"));
    let opened = ok(&[
        "search",
        "--dir",
        d,
        "--as",
        "dr-heart",
        "code:http://loinc.org|8480-6 and patient:pat-00000",
    ]);
    assert!(
        opened.lines().count() >= 1 && opened.lines().all(|l| l.contains("8480-6")),
        "{opened}"
    );
    let refused = asclepios(&[
        "search",
        "--dir",
        d,
        "--as",
        "researcher-rita",
        "type:Observation",
    ]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("searching needs one of"));

    // The portal: a launch link on loopback; the link's secret buys a
    // session cookie, anything else is refused.
    let mut portal = Command::new(env!("CARGO_BIN_EXE_asclepios"))
        .args(["portal", "--dir", d, "--identity", "pat-00000"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(portal.stdout.take().unwrap()).lines();
    let _portal = Serve(portal);
    let link = out
        .by_ref()
        .map(|l| l.unwrap())
        .find_map(|l| l.strip_prefix("open: ").map(str::to_string))
        .unwrap();
    let rest = link.strip_prefix("http://127.0.0.1:").unwrap();
    let (port, path) = rest.split_once('/').unwrap();
    let get = |path: &str| {
        use std::io::{Read, Write};
        let mut s =
            std::net::TcpStream::connect(("127.0.0.1", port.parse::<u16>().unwrap())).unwrap();
        write!(
            s,
            "GET /{path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        answer
    };
    let answer = get(path);
    assert!(answer.starts_with("HTTP/1.1 303"), "{answer}");
    assert!(answer.contains("set-cookie: asclepios_portal="), "{answer}");
    assert!(get("patient").starts_with("HTTP/1.1 401"));
    assert!(get("login?token=00").starts_with("HTTP/1.1 401"));

    // A de-identified export of what dr-heart can read of pat-00000.
    let out_dir = tmp.path().join("export");
    let exported = ok(&[
        "export",
        "--dir",
        d,
        "--as",
        "dr-heart",
        "--patient",
        "pat-00000",
        "--profile",
        "safe-harbor",
        "--to",
        "registry-x",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert!(
        exported.contains("exported") && exported.contains("audit log (leaf"),
        "{exported}"
    );
    let written = std::fs::read_to_string(out_dir.join("resources.ndjson")).unwrap();
    let sample = std::fs::read_to_string(&data).unwrap();
    let family = sample
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|r| r["resourceType"] == "Patient" && r["id"] == "pat-00000")
        .and_then(|r| r["name"][0]["family"].as_str().map(str::to_string))
        .unwrap();
    assert!(written.lines().count() >= 2, "{written}");
    assert!(!written.contains(&family), "{family} in the export");
    assert!(
        !written.contains("pat-00000"),
        "the pseudonym left in the export"
    );

    // Statistics: a provider publishes encrypted values, a researcher asks.
    let cohort = tmp.path().join("cohort.ndjson");
    std::fs::write(
        &cohort,
        ok(&[
            "synth",
            "--patients",
            "12",
            "--encounters",
            "1",
            "--seed",
            "5",
        ]),
    )
    .unwrap();
    let publish = [
        "stats",
        "publish",
        "--dir",
        d,
        "--as",
        "lab-central",
        "--study",
        "bp",
        "--period",
        "20",
        "--feature",
        "systolic",
        "--code",
        "http://loinc.org|8480-6",
        "--range",
        "80..220",
        "--buckets",
        "120,140",
        cohort.to_str().unwrap(),
    ];
    // A slot is a person: patients the directory does not know get none.
    let unknown = asclepios(&publish);
    assert!(!unknown.status.success());
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(stderr.contains("not patients of the directory"), "{stderr}");
    for i in 2..12 {
        let id = format!("pat-{i:05}");
        ok(&[
            "user",
            "add",
            &id,
            "--kind",
            "patient",
            "--as",
            "admin-ada",
            "--attr",
            &format!("patient:{id}"),
            "--dir",
            d,
        ]);
    }
    let published = ok(&publish);
    assert!(
        published.contains("published 12 patient(s) (12 with a value)"),
        "{published}"
    );
    let summary = ok(&[
        "stats",
        "query",
        "--dir",
        d,
        "--as",
        "researcher-rita",
        "--study",
        "bp",
        "--period",
        "20",
        "--feature",
        "systolic",
    ]);
    // "count     N  (noise sd S)": noisy, within ten noise deviations.
    let count_line = summary
        .lines()
        .find(|l| l.starts_with("count"))
        .unwrap_or_else(|| panic!("{summary}"));
    let numbers: Vec<f64> = count_line
        .split(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-'))
        .filter_map(|w| w.parse().ok())
        .collect();
    let (count, sd) = (numbers[0], numbers[1]);
    assert!(sd > 0.5 && (count - 12.0).abs() <= 10.0 * sd, "{summary}");
    assert!(summary.contains("bucket 120-140"), "{summary}");
    assert!(summary.contains("noise sd"), "{summary}");
    let small = asclepios(&[
        "stats",
        "query",
        "--dir",
        d,
        "--as",
        "researcher-rita",
        "--study",
        "bp",
        "--period",
        "20",
        "--feature",
        "systolic",
        "--cohort",
        "slots:0,1,2",
    ]);
    assert!(!small.status.success());
    assert!(String::from_utf8_lossy(&small.stderr).contains("below the minimum"));

    ok(&[
        "consent",
        "grant",
        "--dir",
        d,
        "--as",
        "pat-00000",
        "--to",
        "researcher-rita",
        "--purpose",
        "HRESCH",
    ]);
    let consents = ok(&["consent", "list", "--dir", d, "--as", "pat-00000", "--fhir"]);
    assert!(
        consents.contains("\"resourceType\":\"Consent\""),
        "{consents}"
    );

    let glass = ok(&[
        "emergency",
        "open",
        "--dir",
        d,
        "--as",
        "dr-er",
        "--patient",
        "pat-00001",
        "--reason",
        "unresponsive",
    ]);
    assert!(glass.contains("BREAK-GLASS granted"), "{glass}");
    let queue = ok(&["emergency", "review", "--dir", d, "--as", "auditor-ann"]);
    assert!(queue.starts_with("1 unreviewed"), "{queue}");
    let grant = queue
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().next())
        .expect("the queue names the grant")
        .to_string();
    // Reviewing is the auditors' (M8): anyone else is refused by the
    // authority, and the queue stays as it was.
    for who in ["nobody-at-all", "researcher-rita"] {
        let refused = asclepios(&[
            "emergency",
            "review",
            "--dir",
            d,
            "--as",
            who,
            "--ack",
            &grant,
        ]);
        assert!(!refused.status.success(), "{who} acknowledged a grant");
    }
    let reviewed = ok(&[
        "emergency",
        "review",
        "--dir",
        d,
        "--as",
        "auditor-ann",
        "--ack",
        &grant,
    ]);
    assert!(reviewed.contains("0 unreviewed"), "{reviewed}");
    let audit = ok(&["audit", "--dir", d, "--as", "pat-00001", "--fhir"]);
    assert!(
        audit.contains("110127"),
        "the patient sees the break-glass: {audit}"
    );
    let bad = asclepios(&[
        "emergency",
        "open",
        "--dir",
        d,
        "--as",
        "nurse-ward",
        "--patient",
        "pat-00001",
        "--reason",
        "x",
    ]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("403"));
}
