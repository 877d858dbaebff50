//! The record service run apart from the key authority learns the directory
//! as the authority vouches for it: signed facts, fetched over mutual TLS
//! with the record service's own identity, verified with the authority's
//! key. Revocations reach it within a poll; nobody but a service identity
//! reads the facts; and without answers from the authority, it fails closed.

mod common;

use std::time::Duration;

use asclepios_deploy::directory::Layout;
use asclepios_deploy::init::RECORD_SERVICE_IDENTITY;
use asclepios_net::client::SignedClient;
use asclepios_records::directory::PolledFacts;
use asclepios_records::DirectoryView;
use common::*;

fn read(path: std::path::PathBuf) -> String {
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The authority's signing key, from its certificate (public).
fn authority_key(d: &Deployment) -> ed25519_dalek::VerifyingKey {
    let pem = read(Layout::new(&d.dir).service("authority").0);
    let der = asclepios_net::tls::certs_from_pem(&pem).unwrap();
    let key = asclepios_net::pki::public_key(&der[0]).unwrap();
    ed25519_dalek::VerifyingKey::from_bytes(&key).unwrap()
}

async fn facts(
    view: &std::sync::Arc<DirectoryView>,
) -> Result<std::sync::Arc<asclepios_api::DirectoryFacts>, String> {
    let view = view.clone();
    tokio::task::spawn_blocking(move || view.facts().map_err(|e| e.message))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_record_service_learns_the_directory_over_mutual_tls() {
    let d = deploy(false).await;
    let source = PolledFacts::spawn(
        connection(&d, Domain::Authority, RECORD_SERVICE_IDENTITY),
        Duration::from_millis(100),
        Duration::from_secs(2),
    );
    source
        .first_answer(Duration::from_secs(10))
        .await
        .expect("the authority answers the record service");
    let view = std::sync::Arc::new(DirectoryView::new(authority_key(&d), source.clone()));
    let first = facts(&view).await.unwrap();
    let nurse = first
        .member("nurse-ward")
        .expect("the nurse is in the facts");
    assert!(nurse.active);
    assert!(
        nurse.attributes.iter().any(|a| a == "care-team:pat-00000"),
        "{:?}",
        nurse.attributes
    );
    assert!(first.auditors.iter().any(|(id, _)| id == "auditor-ann"));

    // An administrator takes the nurse off the care team: within a poll the
    // record service judges by the new facts.
    client(&d, "admin-ada")
        .set_identity_attributes("nurse-ward", &["role:nurse".into()])
        .await
        .unwrap();
    let mut seen = None;
    for _ in 0..100 {
        let now = facts(&view).await.unwrap();
        if now.change > first.change {
            seen = Some(now);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = seen.expect("the revocation reached the record service");
    assert_eq!(after.current_attributes("nurse-ward"), ["role:nurse"]);
    assert_eq!(after.attribute_version("care-team:pat-00000"), 1);

    // The facts are for the deployment's services, not for its users.
    let answer = connection(&d, Domain::Authority, "dr-heart")
        .send(reqwest::Method::GET, "/v1/directory/facts", Vec::new())
        .await
        .unwrap();
    assert_eq!(answer.status(), 403);
    // Nor for the authority's own service identity: only the record
    // service's, as configured.
    let answer = connection(
        &d,
        Domain::Authority,
        asclepios_deploy::init::AUTHORITY_SERVICE_IDENTITY,
    )
    .send(reqwest::Method::GET, "/v1/directory/facts", Vec::new())
    .await
    .unwrap();
    assert_eq!(answer.status(), 403);

    // The services' identities hold nothing: an administrator can neither
    // give the record service's identity attributes (its host would then
    // open records), nor make another service identity; and it gets no
    // attribute key.
    let admin = client(&d, "admin-ada");
    match admin
        .set_identity_attributes(RECORD_SERVICE_IDENTITY, &["care-team:pat-00000".into()])
        .await
    {
        Err(asclepios_client::ClientError::Refused { status: 409, .. }) => {}
        other => panic!("attributes for the record service's identity: {other:?}"),
    }
    let spy = asclepios_api::admin::Registration {
        id: "spy-svc".into(),
        kind: "service".into(),
        display_name: "a second record service".into(),
        public_key: hex::encode([7u8; 32]),
        attributes: Vec::new(),
    };
    match admin.register_identity(&spy).await {
        Err(asclepios_client::ClientError::Refused { status: 403, .. }) => {}
        other => panic!("a new service identity: {other:?}"),
    }
    let answer = connection(&d, Domain::Authority, RECORD_SERVICE_IDENTITY)
        .send(reqwest::Method::POST, "/v1/keys", Vec::new())
        .await
        .unwrap();
    assert_eq!(answer.status(), 403);

    // Without answers from the authority, the record service refuses to
    // judge anyone.
    let layout = Layout::new(&d.records_dir);
    let (cert, key) = layout.identity(RECORD_SERVICE_IDENTITY);
    let unanswered = SignedClient::new(
        "https://localhost:1",
        asclepios_deploy::config::AUTHORITY_TLS_NAME,
        RECORD_SERVICE_IDENTITY,
        &read(layout.ca_cert()),
        &read(cert),
        &read(key),
    )
    .unwrap();
    let silent = PolledFacts::spawn(
        unanswered,
        Duration::from_millis(100),
        Duration::from_secs(2),
    );
    assert!(silent
        .first_answer(Duration::from_millis(500))
        .await
        .is_err());
    let blind = std::sync::Arc::new(DirectoryView::new(authority_key(&d), silent));
    let why = facts(&blind).await.unwrap_err();
    assert!(why.contains("cannot vouch"), "{why}");
}
