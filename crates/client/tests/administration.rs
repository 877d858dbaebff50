//! The directory is administered through the key authority's API, on SQLite
//! and PostgreSQL: only an active identity holding exactly `role:admin` may
//! change it, each change is an audit event the auditors read, and what the
//! administrator does takes effect at once (a revoked attribute is gone
//! from the next key).

mod common;

use asclepios_audit::{Action, LogStore, SealedEvent};
use asclepios_authority::admin::Registration;
use asclepios_client::ClientError;
use asclepios_deploy::keys::auditor_secret;
use asclepios_deploy::serve::AUDIT_LOG_ID;
use asclepios_deploy::Config;
use common::*;

fn assert_forbidden<T: std::fmt::Debug>(r: Result<T, ClientError>, what: &str) {
    match r {
        Err(ClientError::Refused {
            status: 403,
            message,
            ..
        }) => assert!(message.contains("role:admin"), "{what}: {message}"),
        other => panic!("{what}: expected 403, got {other:?}"),
    }
}

async fn directory_changes_seen_by(d: &Deployment, auditor: &str) -> Vec<String> {
    let (dir, auditor) = (d.dir.clone(), auditor.to_string());
    tokio::task::spawn_blocking(move || {
        let store = Config::load(&dir).unwrap().open_store(&dir).unwrap();
        let size = store.log_size(AUDIT_LOG_ID).unwrap();
        let key = auditor_secret(&dir, &auditor).unwrap();
        store
            .log_entries(AUDIT_LOG_ID, 0..size)
            .unwrap()
            .iter()
            .filter_map(|e| SealedEvent::from_bytes(e).ok()?.open_as_auditor(&key).ok())
            .filter(|e| e.action == Action::DirectoryChange)
            .map(|e| format!("{} {:?} {}", e.actor, e.outcome, e.resource))
            .collect()
    })
    .await
    .unwrap()
}

async fn only_administrators_change_the_directory(postgres: bool) {
    let d = deploy(postgres).await;
    let admin = client(&d, "admin-ada");
    let doctor = client(&d, "dr-heart");
    // Someone else's key, as `user add` would have issued it.
    let public_key = hex::encode([3u8; 32]);
    let registration = |id: &str, attributes: &[&str]| Registration {
        id: id.into(),
        kind: "clinician".into(),
        display_name: id.into(),
        public_key: public_key.clone(),
        attributes: attributes.iter().map(|a| a.to_string()).collect(),
    };
    // A clinician cannot add, change or disable anyone (herself included).
    assert_forbidden(
        doctor
            .register_identity(&registration("dr-mallory", &["patient:pat-00000"]))
            .await,
        "a clinician adding an identity",
    );
    assert_forbidden(
        doctor
            .set_identity_attributes(
                "dr-heart",
                &["role:doctor".into(), "patient:pat-00000".into()],
            )
            .await,
        "a clinician widening her own attributes",
    );
    assert_forbidden(
        doctor.disable_identity("dr-er").await,
        "a clinician disabling a colleague",
    );
    // The administrator can.
    let added = admin
        .register_identity(&registration("dr-kim", &["role:doctor"]))
        .await
        .unwrap();
    assert_eq!(added.member.attributes, [("role:doctor".to_string(), 0)]);
    let changed = admin
        .set_identity_attributes("nurse-ward", &["role:nurse".into()])
        .await
        .unwrap();
    assert!(changed
        .revocation
        .revoked
        .contains(&"care-team:pat-00000".to_string()));
    let mut nurse = client(&d, "nurse-ward");
    let key = nurse.refresh_key().await.unwrap().to_vec();
    assert_eq!(key, ["role:nurse"], "the revocation holds at the next key");
    // A role that merely starts with role:admin is not role:admin (L2).
    admin
        .set_identity_attributes(
            "researcher-rita",
            &["role:researcher".into(), "role:admin-trainee".into()],
        )
        .await
        .unwrap();
    let mut trainee = client(&d, "researcher-rita");
    trainee.refresh_key().await.unwrap();
    assert_forbidden(
        trainee.disable_identity("dr-kim").await,
        "role:admin-trainee",
    );
    assert!(admin.directory_members().await.unwrap().len() >= 9);
    // One key, one identity; ids that are only dots are no ids; and the
    // directory keeps an administrator.
    let heart_key = admin
        .directory_members()
        .await
        .unwrap()
        .into_iter()
        .find(|m| m.id == "dr-heart")
        .unwrap();
    assert!(heart_key.active);
    let doctor_cert_key = {
        let pem = std::fs::read_to_string(d.dir.join("identities/dr-heart.pem")).unwrap();
        let der = asclepios_net::tls::certs_from_pem(&pem).unwrap();
        asclepios_net::pki::peer_identity(&der[0])
            .unwrap()
            .public_key
    };
    let mut twin = registration("dr-twin", &[]);
    twin.public_key = hex::encode(doctor_cert_key);
    match admin.register_identity(&twin).await {
        Err(ClientError::Refused {
            status: 409,
            message,
            ..
        }) => {
            assert!(message.contains("dr-heart"), "{message}")
        }
        other => panic!("a second identity with dr-heart's key: {other:?}"),
    }
    assert!(matches!(
        admin.register_identity(&registration("..", &[])).await,
        Err(ClientError::Refused { status: 400, .. })
    ));
    match admin.disable_identity("admin-ada").await {
        Err(ClientError::Refused {
            status: 409,
            message,
            ..
        }) => {
            assert!(message.contains("last administrator"), "{message}")
        }
        other => panic!("the last administrator disabled herself: {other:?}"),
    }
    // Every attempt, refused or done, is in the log for the auditors.
    let seen = directory_changes_seen_by(&d, "auditor-ann").await;
    assert!(
        seen.iter()
            .any(|e| e.starts_with("dr-heart Denied directory/dr-mallory")),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|e| e.starts_with("admin-ada Success directory/nurse-ward")),
        "{seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_administrators_change_the_directory_on_sqlite() {
    only_administrators_change_the_directory(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_administrators_change_the_directory_on_postgres() {
    only_administrators_change_the_directory(true).await;
}

/// A certificate for `admin-ada` minted with the CA key but another key pair
/// (a stolen CA key, or a certificate issued before a refused registration)
/// speaks for nobody: both services refuse it.
async fn a_certificate_the_directory_does_not_vouch_for_is_refused(postgres: bool) {
    let d = deploy(postgres).await;
    let dir = d.dir.clone();
    tokio::task::spawn_blocking(move || {
        let ca = asclepios_net::pki::CertificateAuthority::from_pem(
            &std::fs::read_to_string(dir.join("pki/ca.pem")).unwrap(),
            &std::fs::read_to_string(dir.join("pki/ca.key")).unwrap(),
        )
        .unwrap();
        let minted = ca.issue_identity("admin-ada").unwrap();
        std::fs::write(dir.join("identities/admin-ada.pem"), &minted.cert_pem).unwrap();
        std::fs::write(
            dir.join("identities/admin-ada.key"),
            minted.key_pem.as_bytes(),
        )
        .unwrap();
    })
    .await
    .unwrap();
    let mallory = client(&d, "admin-ada");
    match mallory
        .set_identity_attributes("researcher-rita", &["patient:pat-00000".into()])
        .await
    {
        Err(ClientError::Refused {
            status: 403,
            message,
            ..
        }) => {
            assert!(message.contains("does not carry the key"), "{message}")
        }
        other => panic!("a minted certificate changed the directory: {other:?}"),
    }
    match mallory.list_records("pat-00000").await {
        Err(ClientError::Refused { status: 403, .. }) => {}
        other => panic!("a minted certificate read from the record service: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minted_certificate_is_refused_on_sqlite() {
    a_certificate_the_directory_does_not_vouch_for_is_refused(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minted_certificate_is_refused_on_postgres() {
    a_certificate_the_directory_does_not_vouch_for_is_refused(true).await;
}
