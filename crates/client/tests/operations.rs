//! Overload sheds the flooder, not everyone (review finding H11, the
//! request half), and the services are operable: `/healthz`, `/readyz` and
//! `/metrics` (checked with Prometheus' `promtool`), on SQLite and
//! PostgreSQL.
//!
//! The flooder is an identity with a valid certificate that sends far more
//! than its share: it is answered 429 with `Retry-After` (counted per
//! reason in `/metrics`), while another identity's reads keep succeeding.
//! Expensive work (key generation) beyond the heavy slots and their queue
//! is shed the same way. A client left at its default retries after the
//! `Retry-After` and gets every answer.

mod common;

use std::sync::Arc;
use std::time::Duration;

use asclepios_net::client::SignedClient;
use common::{client, connection, deploy_with, Domain};
use reqwest::Method;

/// Tight limits, so that a test can reach them.
fn tight(config: &mut asclepios_deploy::Config) {
    for service in [&mut config.authority, &mut config.records] {
        service.limits.in_flight_per_identity = 4;
        service.limits.per_second_per_identity = 2;
        service.limits.burst_per_identity = 30;
        service.limits.heavy_at_once = 1;
        service.limits.heavy_waiting = 2;
        service.metrics_readers = vec!["admin-ada".into()];
    }
}

const CHEAP_READ: &str = "/v1/patients/pat-00000/records";

/// Sends `n` requests at once; the statuses, each with its `Retry-After`.
async fn burst(
    http: &Arc<SignedClient>,
    method: Method,
    path: &str,
    n: usize,
) -> Vec<(u16, Option<u64>)> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (http, method, path) = (http.clone(), method.clone(), path.to_string());
            tokio::spawn(async move {
                let r = http.send(method, &path, Vec::new()).await.unwrap();
                let retry = r
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok());
                (r.status().as_u16(), retry)
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

async fn get_text(http: &SignedClient, path: &str) -> (u16, String) {
    let r = http.send(Method::GET, path, Vec::new()).await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// Runs `promtool check metrics` on an exposition; fails the test with
/// promtool's findings.
fn promtool_check(what: &str, exposition: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "promtool could not be run ({e}): install Debian's `prometheus` package \
                 (`apt-get install prometheus`; .ci/run does)"
            )
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics refused {what}'s /metrics:\n{}{}\n--- exposition ---\n{exposition}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The value of the series `series` (name and labels, as exposed).
fn sample(exposition: &str, series: &str) -> f64 {
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no series `{series}` in:\n{exposition}"))
}

async fn scenario(postgres: bool) {
    let mut d = deploy_with(postgres, tight).await;
    let mut flooder = connection(&d, Domain::Records, "dr-heart");
    flooder.set_throttle_retries(0);
    let flooder = Arc::new(flooder);
    let honest = connection(&d, Domain::Records, "pat-00000");

    // The flood: 64 requests at once from one identity, while another
    // identity reads.
    let flood = {
        let flooder = flooder.clone();
        tokio::spawn(async move { burst(&flooder, Method::GET, CHEAP_READ, 64).await })
    };
    for _ in 0..20 {
        let (status, body) = get_text(&honest, CHEAP_READ).await;
        assert_eq!(status, 200, "an honest read during the flood: {body}");
    }
    let statuses = flood.await.unwrap();
    let shed: Vec<_> = statuses.iter().filter(|(s, _)| *s == 429).collect();
    assert!(
        !shed.is_empty(),
        "64 requests at once with 4 allowed in flight: none was answered 429 ({statuses:?})"
    );
    assert!(
        shed.iter().all(|(_, retry)| retry.is_some_and(|s| s >= 1)),
        "every 429 names when to come back: {shed:?}"
    );
    assert!(
        statuses.iter().all(|(s, _)| *s == 200 || *s == 429),
        "{statuses:?}"
    );

    // Past the rate (2 per second, bursts of 30; the 20 reads above spent
    // most of the burst): 429 with a Retry-After; a client that honours it
    // gets every answer.
    let patient = connection(&d, Domain::Records, "pat-00000");
    for i in 0..30 {
        let (status, body) = get_text(&patient, CHEAP_READ).await;
        assert_eq!(
            status, 200,
            "request {i}: retried after its Retry-After, then answered: {body}"
        );
    }

    // Heavy work beyond one slot and a queue of two: key generation at
    // the authority, twelve at once from identities of their own.
    let mut heavy = Vec::new();
    for id in ["dr-heart", "nurse-ward", "dr-er", "pat-00000"] {
        let mut c = connection(&d, Domain::Authority, id);
        c.set_throttle_retries(0);
        // Connected first, so that the twelve arrive together.
        assert_eq!(get_text(&c, "/healthz").await.0, 200);
        heavy.push(Arc::new(c));
    }
    let tasks: Vec<_> = heavy
        .iter()
        .flat_map(|c| (0..3).map(move |_| c.clone()))
        .map(|c| tokio::spawn(async move { burst(&c, Method::POST, "/v1/keys", 1).await[0] }))
        .collect();
    let mut key_statuses = Vec::new();
    for t in tasks {
        key_statuses.push(t.await.unwrap().0);
    }
    assert!(
        key_statuses.contains(&429),
        "12 key generations at once with 1 slot and 2 waiting: none shed ({key_statuses:?})"
    );
    assert!(key_statuses.contains(&200), "{key_statuses:?}");

    // What the operators see; a patient reads no metrics (their timing
    // would tell when someone broke the glass).
    let (status, _) = get_text(&honest, "/metrics").await;
    assert_eq!(status, 403);
    let scraper = connection(&d, Domain::Records, "admin-ada");
    assert_eq!(get_text(&scraper, "/healthz").await.0, 200);
    let (status, ready) = get_text(&scraper, "/readyz").await;
    assert_eq!(status, 200, "{ready}");
    let (status, records_metrics) = get_text(&scraper, "/metrics").await;
    assert_eq!(status, 200);
    promtool_check("the record service", &records_metrics);
    let in_flight = sample(
        &records_metrics,
        "asclepios_throttled_total{service=\"records\",reason=\"in_flight\"}",
    );
    let rate = sample(
        &records_metrics,
        "asclepios_throttled_total{service=\"records\",reason=\"rate\"}",
    );
    assert!(in_flight >= 1.0, "{records_metrics}");
    assert!(
        in_flight + rate >= shed.len() as f64 + 1.0,
        "{records_metrics}"
    );
    assert!(
        sample(
            &records_metrics,
            "asclepios_requests_total{service=\"records\",route=\"/v1/patients/{patient}/records\",method=\"GET\",status=\"200\"}"
        ) >= 50.0
    );
    assert!(
        sample(
            &records_metrics,
            "asclepios_audit_log_entries{service=\"records\"}"
        ) >= 1.0
    );
    // Route templates only: no patient, no record in any label.
    assert!(!records_metrics.contains("pat-00000"), "{records_metrics}");

    let authority_scraper = connection(&d, Domain::Authority, "admin-ada");
    let (_, authority_metrics) = get_text(&authority_scraper, "/metrics").await;
    promtool_check("the key authority", &authority_metrics);
    assert!(
        sample(
            &authority_metrics,
            "asclepios_throttled_total{service=\"authority\",reason=\"heavy_queue\"}"
        ) >= 1.0
    );
    assert_eq!(
        sample(
            &authority_metrics,
            "asclepios_rewrap_queue_length{service=\"authority\"}"
        ),
        0.0
    );
    assert_eq!(
        sample(
            &authority_metrics,
            "asclepios_integrity_alarm{service=\"authority\"}"
        ),
        0.0
    );

    // Not ready: the authority under an integrity alarm (the DB admin
    // granted an attribute behind its back) answers /readyz 503, and
    // /metrics shows the alarm.
    d.as_db_admin(
        Domain::Authority,
        "INSERT INTO identity_attributes (identity_id, attribute, granted_version, granted_at, revoked_at) \
         VALUES ('dr-er', 'patient:pat-00000', 0, 1, NULL)",
    )
    .await;
    let _ = client(&d, "dr-er").refresh_key().await;
    let (status, why) = get_text(&authority_scraper, "/readyz").await;
    assert_eq!(status, 503, "{why}");
    assert!(why.contains("integrity alarm"), "{why}");
    assert_eq!(get_text(&authority_scraper, "/healthz").await.0, 200);
    let (_, authority_metrics) = get_text(&authority_scraper, "/metrics").await;
    assert_eq!(
        sample(
            &authority_metrics,
            "asclepios_integrity_alarm{service=\"authority\"}"
        ),
        1.0
    );

    // Not ready: the record service once the authority is gone and its
    // facts have aged out.
    drop(d.authority.take());
    let deadline = std::time::Instant::now()
        + Duration::from_secs(asclepios_deploy::serve::FACTS_MAX_AGE_SECONDS + 20);
    loop {
        let (status, why) = get_text(&scraper, "/readyz").await;
        if status == 503 {
            assert!(why.contains("not ready"), "{why}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the record service stayed ready without the authority"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overload_sheds_the_flooder_and_operators_see_it_sqlite() {
    scenario(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overload_sheds_the_flooder_and_operators_see_it_postgres() {
    scenario(true).await;
}
