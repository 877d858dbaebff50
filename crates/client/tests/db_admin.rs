//! The database administrator against the key authority's state, on SQLite
//! and PostgreSQL, with the services running (review findings C1 and H1,
//! and a rollback): with raw SQL they grant themselves a patient's
//! attribute, swap a clinician's key, or put back an old copy of the state.
//! Each attack must be caught at the next use: the authority issues nothing,
//! answers 503 with the integrity alarm, and the alarm is in the audit log
//! for the auditors.

mod common;

use asclepios_audit::{AuditEvent, LogStore, SealedEvent};
use asclepios_client::ClientError;
use asclepios_deploy::keys::auditor_secret;
use asclepios_deploy::serve::AUDIT_LOG_ID;
use asclepios_deploy::Config;
use common::*;

fn assert_alarm<T: std::fmt::Debug>(r: Result<T, ClientError>, what: &str) {
    match r {
        Err(ClientError::Refused {
            status: 503,
            message,
            ..
        }) => assert!(message.contains("integrity alarm"), "{what}: {message}"),
        other => panic!("{what}: expected 503 with the integrity alarm, got {other:?}"),
    }
}

/// The events of the audit log that `auditor` opens.
async fn audit_events(d: &Deployment, auditor: &str) -> Vec<AuditEvent> {
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
            .collect()
    })
    .await
    .unwrap()
}

/// The alarm reaches the auditors: an `integrity-alarm` event naming what
/// was found (it may take a sweep of the authority to be written).
async fn assert_alarm_audited(d: &Deployment, about: &str) {
    for _ in 0..50 {
        let events = audit_events(d, "auditor-ann").await;
        if let Some(e) = events
            .iter()
            .find(|e| e.action == asclepios_audit::Action::IntegrityAlarm)
        {
            assert!(e.resource.contains(about), "{}", e.resource);
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("no integrity-alarm event in the audit log");
}

/// Review C1: the DB admin inserts `patient:pat-00000` for the emergency
/// physician, who is on no care team, and asks for a key.
async fn a_self_granted_attribute_gets_no_key(postgres: bool) {
    let d = deploy(postgres).await;
    // An honest request first: the authority has read its directory.
    let mut patient = client(&d, "pat-00000");
    patient.refresh_key().await.unwrap();
    d.as_db_admin(
        Domain::Authority,
        "INSERT INTO identity_attributes (identity_id, attribute, granted_version, granted_at, revoked_at) \
         VALUES ('dr-er', 'patient:pat-00000', 0, 1, NULL)",
    )
    .await;
    let mut mallory = client(&d, "dr-er");
    assert_alarm(
        mallory.refresh_key().await,
        "the key for the planted attribute",
    );
    // Fail closed: nothing is issued to anyone until an operator looks.
    assert_alarm(patient.refresh_key().await, "an honest patient's key");
    assert_alarm_audited(&d, "identity_attributes").await;
}

/// Review H1: the DB admin swaps the cardiologist's key for their own and
/// plants a record "by" her; the reader's `get` must fail, clearly.
async fn a_swapped_author_key_fails_the_read(postgres: bool) {
    let d = deploy(postgres).await;
    let mut doctor = client(&d, "dr-heart");
    doctor.refresh_key().await.unwrap();
    let record = serde_json::json!({
        "resourceType": "Observation", "id": "obs-h1", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": "Patient/pat-00000"},
        "valueQuantity": {"value": 72, "unit": "/min"}
    });
    let policy = Config::load(&d.dir).unwrap().default_policy("pat-00000");
    let (record_id, _) = doctor
        .put_resource("pat-00000", 1, &record, &policy)
        .await
        .unwrap();
    let mut patient = client(&d, "pat-00000");
    patient.refresh_key().await.unwrap();
    let mallory_key = hex::encode([7u8; 32]);
    d.as_db_admin(
        Domain::Authority,
        &match postgres {
            false => format!("UPDATE identities SET public_key = X'{mallory_key}' WHERE identity_id = 'dr-heart'"),
            true => format!("UPDATE identities SET public_key = '\\x{mallory_key}'::bytea WHERE identity_id = 'dr-heart'"),
        },
    )
    .await;
    assert_alarm(
        patient.get_record("pat-00000", &record_id).await,
        "a read whose author key was swapped",
    );
    assert_alarm_audited(&d, "identities").await;
}

const AUTHORITY_TABLES: [&str; 9] = [
    "identities",
    "identity_attributes",
    "attribute_versions",
    "auditor_keys",
    "components",
    "consents",
    "emergency_grants",
    "integrity_tags",
    "integrity_head",
];

/// The DB admin keeps a copy of the authority's tables, and after the
/// nurse is taken off the care team puts the whole copy back: a
/// self-consistent, authentic, older state.
async fn a_rolled_back_state_is_refused(postgres: bool) {
    let d = deploy(postgres).await;
    let copy: String = AUTHORITY_TABLES
        .iter()
        .map(|t| format!("CREATE TABLE copy_{t} AS SELECT * FROM {t};"))
        .collect();
    d.as_db_admin(Domain::Authority, &copy).await;
    client(&d, "admin-ada")
        .set_identity_attributes(
            "nurse-ward",
            &["role:nurse".into(), "dept:cardiology".into()],
        )
        .await
        .unwrap();
    let mut nurse = client(&d, "nurse-ward");
    let key = nurse.refresh_key().await.unwrap().to_vec();
    assert!(!key.iter().any(|a| a.starts_with("care-team:")), "{key:?}");
    let restore: String = AUTHORITY_TABLES
        .iter()
        .map(|t| format!("DELETE FROM {t}; INSERT INTO {t} SELECT * FROM copy_{t};"))
        .collect();
    d.as_db_admin(Domain::Authority, &restore).await;
    assert_alarm(
        nurse.refresh_key().await,
        "a key from the rolled-back state",
    );
    assert_alarm_audited(&d, "rolled back").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c1_self_granted_attribute_on_sqlite() {
    a_self_granted_attribute_gets_no_key(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c1_self_granted_attribute_on_postgres() {
    a_self_granted_attribute_gets_no_key(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h1_swapped_author_key_on_sqlite() {
    a_swapped_author_key_fails_the_read(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h1_swapped_author_key_on_postgres() {
    a_swapped_author_key_fails_the_read(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_on_sqlite() {
    a_rolled_back_state_is_refused(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_on_postgres() {
    a_rolled_back_state_is_refused(true).await;
}

/// A re-wrap the database refused (a trigger on the unprotected wrappers)
/// is not forgotten: the revocation holds at once, and the authority
/// re-wraps what still names the old version as soon as it can.
async fn a_refused_rewrap_is_redone(postgres: bool) {
    let d = deploy(postgres).await;
    let mut doctor = client(&d, "dr-heart");
    doctor.refresh_key().await.unwrap();
    let record = serde_json::json!({
        "resourceType": "Observation", "id": "obs-rw", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": "Patient/pat-00000"},
        "valueQuantity": {"value": 70, "unit": "/min"}
    });
    let policy = Config::load(&d.dir).unwrap().default_policy("pat-00000");
    doctor
        .put_resource("pat-00000", 1, &record, &policy)
        .await
        .unwrap();
    d.as_db_admin(
        Domain::Records,
        if postgres {
            "CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'refused'; END $$ LANGUAGE plpgsql; \
             CREATE TRIGGER refuse BEFORE UPDATE ON key_wrappers FOR EACH ROW EXECUTE FUNCTION refuse();"
        } else {
            "CREATE TRIGGER refuse BEFORE UPDATE ON key_wrappers BEGIN SELECT RAISE(ABORT, 'refused'); END;"
        },
    )
    .await;
    let admin = client(&d, "admin-ada");
    // The revocation commits; its re-wrap is refused.
    assert!(admin
        .set_identity_attributes(
            "nurse-ward",
            &["role:nurse".into(), "dept:cardiology".into()],
        )
        .await
        .is_err());
    let mut nurse = client(&d, "nurse-ward");
    let key = nurse.refresh_key().await.unwrap().to_vec();
    assert!(!key.iter().any(|a| a.starts_with("care-team:")), "{key:?}");
    d.as_db_admin(
        Domain::Records,
        if postgres {
            "DROP TRIGGER refuse ON key_wrappers"
        } else {
            "DROP TRIGGER refuse"
        },
    )
    .await;
    let policies = || {
        let (dir, _) = d.store_of(Domain::Records);
        async move {
            tokio::task::spawn_blocking(move || {
                let store = Config::load(&dir).unwrap().open_store(&dir).unwrap();
                store
                    .scan_wrappers(None, 1000)
                    .unwrap()
                    .iter()
                    .map(|w| {
                        asclepios_crypto::envelope::KeyWrapper::peek_policy(&w.wrapper.bytes)
                            .unwrap()
                            .to_string()
                    })
                    .collect::<Vec<_>>()
            })
            .await
            .unwrap()
        }
    };
    for _ in 0..60 {
        let now = policies().await;
        if !now.is_empty() && now.iter().all(|p| p.contains("care-team:pat-00000@v1")) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    panic!("still under the old version: {:?}", policies().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_rewrap_on_sqlite() {
    a_refused_rewrap_is_redone(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_rewrap_on_postgres() {
    a_refused_rewrap_is_redone(true).await;
}

/// The DB admin rewrites a record's stored author to a colleague, who then
/// tries to rewrite its search keywords: the authority goes by the author's
/// signature and the directory's key, not by the record store's field.
async fn a_rewritten_author_field_grants_no_indexing(postgres: bool) {
    let d = deploy(postgres).await;
    let mut doctor = client(&d, "dr-heart");
    doctor.refresh_key().await.unwrap();
    let record = serde_json::json!({
        "resourceType": "Observation", "id": "obs-ix", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": "Patient/pat-00000"},
        "valueQuantity": {"value": 71, "unit": "/min"}
    });
    let policy = Config::load(&d.dir).unwrap().default_policy("pat-00000");
    let (record_id, _) = doctor
        .put_resource("pat-00000", 1, &record, &policy)
        .await
        .unwrap();
    doctor
        .index_record("pat-00000", &record_id, vec!["code:x".into()])
        .await
        .unwrap();
    d.as_db_admin(
        Domain::Records,
        &if postgres {
            format!("UPDATE record_versions SET body = convert_to(replace(convert_from(body, 'UTF8'), \
             '\"author\":\"dr-heart\"', '\"author\":\"nurse-ward\"'), 'UTF8') WHERE record_id = '{record_id}'")
        } else {
            format!("UPDATE record_versions SET body = CAST(replace(CAST(body AS TEXT), \
             '\"author\":\"dr-heart\"', '\"author\":\"nurse-ward\"') AS BLOB) WHERE record_id = '{record_id}'")
        },
    )
    .await;
    let nurse = client(&d, "nurse-ward");
    match nurse
        .index_record("pat-00000", &record_id, vec!["code:planted".into()])
        .await
    {
        Err(ClientError::Refused {
            status: 409,
            message,
            ..
        }) => {
            assert!(message.contains("does not verify"), "{message}")
        }
        other => panic!("the rewritten author field let the nurse index: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewritten_author_on_sqlite() {
    a_rewritten_author_field_grants_no_indexing(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewritten_author_on_postgres() {
    a_rewritten_author_field_grants_no_indexing(true).await;
}
