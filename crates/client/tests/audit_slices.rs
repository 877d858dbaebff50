//! A patient's audit slice (review finding M2): the service hands each
//! patient the entries about them alone, with inclusion proofs, and the
//! record service's database administrator cannot hide one of them, nor
//! slip in another patient's, without the patient's client saying so.

mod common;

use asclepios_api::records::AuditSlice;
use asclepios_audit::SealedEvent;
use asclepios_client::ClientError;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use common::*;

/// The first slice of the record service's log as `id` is served it.
async fn raw_slice(d: &Deployment, id: &str) -> AuditSlice {
    let answer = connection(d, Domain::Records, id)
        .send(
            reqwest::Method::GET,
            "/v1/audit/entries?start=0",
            Vec::new(),
        )
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    answer.json().await.unwrap()
}

/// The patients an entry's (clear) ABE policy names.
fn patients_named(entry: &str) -> Vec<String> {
    let sealed = SealedEvent::from_bytes(&B64.decode(entry).unwrap()).unwrap();
    sealed
        .reader_policy()
        .unwrap()
        .leaves()
        .iter()
        .map(|l| asclepios_crypto::policy::attribute_name(l).to_string())
        .filter(|a| a.starts_with("patient:"))
        .collect()
}

fn left_out(result: Result<Vec<asclepios_client::AuditView>, ClientError>) -> String {
    match result {
        Err(ClientError::Protocol(why)) => why,
        other => panic!("the doctored slice was accepted: {other:?}"),
    }
}

async fn each_patient_reads_their_own_entries_alone(postgres: bool) {
    let d = deploy(postgres).await;
    let mut ana = client(&d, "pat-00000");
    ana.refresh_key().await.unwrap();
    let mut ben = client(&d, "pat-00001");
    ben.refresh_key().await.unwrap();
    ben.list_records("pat-00001").await.unwrap();
    ana.list_records("pat-00000").await.unwrap();
    ana.list_records("pat-00000").await.unwrap();

    // What the service sends Ana: her entries, each proved, nothing else.
    let slice = raw_slice(&d, "pat-00000").await;
    let proved = slice
        .proved
        .as_ref()
        .expect("a patient's slice carries proofs");
    assert!(slice.entries.len() >= 2, "{slice:?}");
    assert_eq!(proved.indices.len(), slice.entries.len());
    for entry in &slice.entries {
        assert_eq!(patients_named(entry), ["patient:pat-00000"]);
    }
    let ana_events = ana.audit_events().await.unwrap();
    assert!(ana_events.len() >= 2);
    assert!(ana_events
        .iter()
        .all(|e| e.patient.as_deref() == Some("pat-00000")));
    let ben_events = ben.audit_events().await.unwrap();
    assert!(!ben_events.is_empty());
    assert!(ben_events
        .iter()
        .all(|e| e.patient.as_deref() == Some("pat-00001")));
    // The auditor still reads every entry, and re-hashes the whole tree.
    let mut auditor = client(&d, "auditor-ann");
    auditor.refresh_key().await.unwrap();
    assert!(raw_slice(&d, "auditor-ann").await.proved.is_none());
    let all = auditor.audit_events().await.unwrap();
    for patient in ["pat-00000", "pat-00001"] {
        assert!(all.iter().any(|e| e.patient.as_deref() == Some(patient)));
    }

    // The DB admin tags every patient entry as Ana's: Ben's reach her.
    d.as_db_admin(
        Domain::Records,
        "CREATE TABLE saved_subjects AS SELECT log_id, idx, subject FROM audit_entries;
         UPDATE audit_entries SET subject = (SELECT subject FROM audit_entries
             WHERE idx = (SELECT MAX(idx) FROM audit_entries WHERE subject IS NOT NULL))
         WHERE subject IS NOT NULL;",
    )
    .await;
    let why = left_out(ana.audit_views().await);
    assert!(why.contains("not about this patient"), "{why}");
    let restore = "UPDATE audit_entries SET subject = (SELECT s.subject FROM saved_subjects s
                       WHERE s.log_id = audit_entries.log_id AND s.idx = audit_entries.idx);";
    d.as_db_admin(Domain::Records, restore).await;
    ana.audit_views().await.unwrap();

    // The DB admin untags Ana's first entry: the next one names it.
    d.as_db_admin(
        Domain::Records,
        "UPDATE audit_entries SET subject = NULL WHERE idx = (SELECT MIN(idx) FROM audit_entries
             WHERE subject = (SELECT subject FROM audit_entries
                 WHERE idx = (SELECT MAX(idx) FROM audit_entries WHERE subject IS NOT NULL)));",
    )
    .await;
    let why = left_out(ana.audit_views().await);
    assert!(why.contains("left entries about this patient out"), "{why}");
    d.as_db_admin(Domain::Records, restore).await;
    ana.audit_views().await.unwrap();

    // The DB admin untags Ana's latest entry: no later entry names it, but
    // her client read it before.
    d.as_db_admin(
        Domain::Records,
        "UPDATE audit_entries SET subject = NULL
             WHERE idx = (SELECT MAX(idx) FROM audit_entries WHERE subject IS NOT NULL);",
    )
    .await;
    let why = left_out(ana.audit_views().await);
    assert!(why.contains("was read before and is missing now"), "{why}");
    d.as_db_admin(Domain::Records, restore).await;
    ana.audit_views().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_patient_reads_their_own_entries_alone_on_sqlite() {
    each_patient_reads_their_own_entries_alone(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_patient_reads_their_own_entries_alone_on_postgres() {
    each_patient_reads_their_own_entries_alone(true).await;
}
