//! Replay protection that survives restarts and replicas (review finding
//! M7), on SQLite and PostgreSQL. The attacker captured a patient's signed
//! consent request (a TLS-terminating proxy, or the receiving service's
//! operator) and replays it, byte for byte:
//! - at once: refused;
//! - after the patient withdrew the consent and the authority restarted:
//!   refused (nonces live in the store), and the consent stays withdrawn;
//! - at a second replica of the authority on the same store: refused;
//! - at the record service (a request for one service does not verify at
//!   another): refused.

mod common;

use asclepios_deploy::config::{AUTHORITY_TLS_NAME, RECORDS_TLS_NAME};
use asclepios_deploy::directory::Layout;
use asclepios_net::signature::{RequestSigner, SignedHeaders};
use common::{client, deploy};

const PATIENT: &str = "pat-00000";

/// The patient's raw mutual-TLS HTTP client and request signer.
fn patient_http(dir: &std::path::Path) -> (reqwest::Client, RequestSigner) {
    let layout = Layout::new(dir);
    let (cert, key) = layout.identity(PATIENT);
    let read = |p: std::path::PathBuf| std::fs::read_to_string(p).unwrap();
    let key = read(key);
    let tls =
        asclepios_net::tls::client_config(&read(layout.ca_cert()), &read(cert), &key).unwrap();
    let http = reqwest::Client::builder()
        .use_preconfigured_tls((*tls).clone())
        .build()
        .unwrap();
    (http, RequestSigner::from_pem(PATIENT, &key).unwrap())
}

/// Sends the captured request to `base`; the status.
async fn deliver(
    http: &reqwest::Client,
    base: &str,
    captured: &SignedHeaders,
    body: &[u8],
) -> (u16, String) {
    let r = http
        .post(format!("{base}/v1/consents"))
        .header("content-type", "application/json")
        .header("content-digest", &captured.content_digest)
        .header("signature-input", &captured.signature_input)
        .header("signature", &captured.signature)
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn scenario(postgres: bool) {
    let mut d = deploy(postgres).await;
    let (http, signer) = patient_http(&d.dir);
    let body = serde_json::to_vec(&serde_json::json!({
        "grantee": "dr-er", "purpose": "TREAT", "resource_types": ["*"], "expires_at": null
    }))
    .unwrap();
    let created = asclepios_net::server::unix_now();
    let captured = signer
        .sign(
            "POST",
            AUTHORITY_TLS_NAME,
            "/v1/consents",
            &body,
            created,
            "captured-1",
        )
        .unwrap();
    let (status, text) = deliver(&http, &d.authority_url, &captured, &body).await;
    assert_eq!(status, 200, "{text}");
    let (status, text) = deliver(&http, &d.authority_url, &captured, &body).await;
    assert_eq!((status, text.contains("replay")), (401, true), "{text}");

    // The patient withdraws; the authority restarts; the replay comes back.
    let patient = client(&d, PATIENT);
    let consents = patient.consents().await.unwrap();
    assert_eq!(consents.len(), 1);
    patient
        .withdraw_consent(&consents[0].consent_id)
        .await
        .unwrap();
    d.authority = None;
    d.start_authority().await.expect("the authority restarts");
    let (status, text) = deliver(&http, &d.authority_url, &captured, &body).await;
    assert_eq!(
        (status, text.contains("replay")),
        (401, true),
        "after a restart: {text}"
    );

    // A second replica of the authority on the same store.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _replica = asclepios_deploy::serve::start_authority(
        &d.dir,
        Some(&format!("127.0.0.1:{port}")),
        &d.records_url,
    )
    .await
    .expect("a second replica starts");
    let (status, text) = deliver(
        &http,
        &format!("https://localhost:{port}"),
        &captured,
        &body,
    )
    .await;
    assert_eq!(
        (status, text.contains("replay")),
        (401, true),
        "at another replica: {text}"
    );

    // Signed for the authority, so not valid at the record service.
    let (status, text) = deliver(&http, &d.records_url, &captured, &body).await;
    assert_eq!(status, 401, "at the record service: {text}");
    assert!(text.contains("does not verify"), "{text}");
    // A request signed for the record service is refused at the authority.
    let for_records = signer
        .sign(
            "POST",
            RECORDS_TLS_NAME,
            "/v1/consents",
            &body,
            created,
            "captured-2",
        )
        .unwrap();
    let (status, text) = deliver(&http, &d.authority_url, &for_records, &body).await;
    assert_eq!(status, 401, "{text}");

    // Nothing came back: one consent, withdrawn.
    let consents = patient.consents().await.unwrap();
    assert_eq!(consents.len(), 1, "{consents:?}");
    assert_eq!(consents[0].status, "withdrawn");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captured_requests_do_not_replay_on_sqlite() {
    scenario(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captured_requests_do_not_replay_on_postgres() {
    scenario(true).await;
}
