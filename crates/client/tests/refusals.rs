//! Every request lands in the audit log, refusals included (review finding
//! L3): requests refused before any handler saw them (unsigned, to no
//! route) are logged, a flood from one peer as one event per window, and
//! reads of directory entries and policy resolutions are logged too.

mod common;

use asclepios_audit::{Action, AuditEvent};
use common::*;

fn refusals<'a>(events: &'a [AuditEvent], actor: &str, status: &str) -> Vec<&'a AuditEvent> {
    events
        .iter()
        .filter(|e| e.action == Action::RequestRefused && e.actor == actor)
        .filter(|e| e.resource.contains(status))
        .collect()
}

async fn refusals_and_reads_are_logged(postgres: bool) {
    let d = deploy(postgres).await;
    let read = |p: &str| std::fs::read_to_string(d.dir.join(p)).unwrap();
    // A peer with a valid certificate sends requests without signatures.
    let tls = asclepios_net::tls::client_config(
        &read("pki/ca.pem"),
        &read("identities/dr-heart.pem"),
        &read("identities/dr-heart.key"),
    )
    .unwrap();
    let unsigned = reqwest::Client::builder()
        .use_preconfigured_tls((*tls).clone())
        .build()
        .unwrap();
    for _ in 0..20 {
        let answer = unsigned
            .get(format!("{}/v1/records/pat-00000", d.records_url))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 401);
    }
    // A signed request to no route, and a signed read of a directory entry.
    let records = connection(&d, Domain::Records, "dr-heart");
    let answer = records
        .send(reqwest::Method::GET, "/v1/nowhere", Vec::new())
        .await
        .unwrap();
    assert_eq!(answer.status(), 404);
    let authority = connection(&d, Domain::Authority, "dr-heart");
    let answer = authority
        .send(
            reqwest::Method::GET,
            "/v1/identities/nurse-ward",
            Vec::new(),
        )
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    // A write resolves its policy at the authority.
    let mut heart = client(&d, "dr-heart");
    heart.refresh_key().await.unwrap();
    let mut generator = asclepios_fhir::synth::Generator::new(3);
    let observation = generator.blood_pressure("pat-00000");
    let policy = asclepios_deploy::Config::load(&d.dir)
        .unwrap()
        .default_policy("pat-00000");
    heart
        .put_resource("pat-00000", 1, &observation, &policy)
        .await
        .unwrap();

    let mut auditor = client(&d, "auditor-ann");
    auditor.refresh_key().await.unwrap();
    let events = auditor.audit_events().await.unwrap();
    // Twenty unsigned requests in one window: the first is logged now,
    // the other nineteen as one count when the window ends.
    let unsigned = refusals(&events, "dr-heart", "(401)");
    assert_eq!(unsigned.len(), 1, "{unsigned:?}");
    assert!(unsigned[0]
        .resource
        .starts_with("GET /v1/records/pat-00000 refused"));
    assert_eq!(refusals(&events, "dr-heart", "(404)").len(), 1);
    assert!(events.iter().any(|e| e.actor == "dr-heart"
        && e.action == Action::Read
        && e.resource == "identity/nurse-ward"));
    assert!(events.iter().any(|e| e.actor == "dr-heart"
        && e.action == Action::Read
        && e.resource.starts_with("policy resolution: ")
        && e.resource.contains("pat-00000")));
    // Refusals of no patient's record are for the auditors alone.
    let mut patient = client(&d, "pat-00000");
    patient.refresh_key().await.unwrap();
    assert!(patient
        .audit_events()
        .await
        .unwrap()
        .iter()
        .all(|e| e.action != Action::RequestRefused));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_and_reads_are_logged_on_sqlite() {
    refusals_and_reads_are_logged(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_and_reads_are_logged_on_postgres() {
    refusals_and_reads_are_logged(true).await;
}
