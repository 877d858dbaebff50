//! Auditors are directory identities (review finding H4). Every event is
//! sealed to the auditors the directory names at that moment: disabling an
//! auditor, or taking `role:auditor` away, removes its key from every later
//! event at once, and an auditor added with `user add --auditor` reads
//! events from then on. Played as the review did: the entries are read
//! straight from the store (what a DB admin, a backup or any patient's
//! download gives) and opened with the auditor's HPKE secret key.

mod common;

use asclepios_audit::{LogStore, SealedEvent};
use asclepios_deploy::keys::{auditor_secret, create_auditor_key};
use asclepios_deploy::serve::AUDIT_LOG_ID;
use asclepios_deploy::Config;
use common::*;

/// How many of both logs' entries from `from` on `auditor` opens, and
/// how many there are (off the async threads: PostgreSQL's client blocks).
async fn opened_by(d: &Deployment, auditor: &str, from: [u64; 2]) -> (usize, usize) {
    let stores = [d.store_of(Domain::Authority), d.store_of(Domain::Records)];
    let (dir, auditor) = (d.dir.clone(), auditor.to_string());
    tokio::task::spawn_blocking(move || {
        let key = auditor_secret(&dir, &auditor).unwrap();
        let (mut opened, mut total) = (0, 0);
        for ((store_dir, _), from) in stores.iter().zip(from) {
            let store = Config::load(store_dir)
                .unwrap()
                .open_store(store_dir)
                .unwrap();
            let size = store.log_size(AUDIT_LOG_ID).unwrap();
            let entries = store.log_entries(AUDIT_LOG_ID, from..size).unwrap();
            total += entries.len();
            opened += entries
                .iter()
                .filter(|e| {
                    SealedEvent::from_bytes(e)
                        .ok()
                        .is_some_and(|s| s.open_as_auditor(&key).is_ok())
                })
                .count();
        }
        (opened, total)
    })
    .await
    .unwrap()
}

/// The sizes of the authority's and the record service's logs.
async fn log_sizes(d: &Deployment) -> [u64; 2] {
    let stores = [d.store_of(Domain::Authority), d.store_of(Domain::Records)];
    tokio::task::spawn_blocking(move || {
        stores.map(|(dir, _)| {
            let store = Config::load(&dir).unwrap().open_store(&dir).unwrap();
            store.log_size(AUDIT_LOG_ID).unwrap()
        })
    })
    .await
    .unwrap()
}

/// Adds an auditor as `asclepios user add --auditor` does: the identity,
/// then its HPKE key, set through the authority's API.
async fn add_auditor(d: &Deployment, id: &str) {
    add_identity(d, id, "auditor", &["role:auditor"]).await;
    let (dir, owned) = (d.dir.clone(), id.to_string());
    let public = tokio::task::spawn_blocking(move || create_auditor_key(&dir, &owned))
        .await
        .unwrap()
        .unwrap();
    client(d, "admin-ada")
        .set_auditor_key(id, &public.to_bytes())
        .await
        .unwrap();
}

async fn some_events(d: &Deployment) {
    let mut doctor = client(d, "dr-heart");
    doctor.refresh_key().await.unwrap();
    doctor.list_records("pat-00000").await.unwrap();
}

async fn auditors_follow_the_directory(postgres: bool) {
    let d = deploy(postgres).await;
    add_auditor(&d, "auditor-bo").await;
    add_auditor(&d, "auditor-cy").await;

    let start = log_sizes(&d).await;
    some_events(&d).await;
    for who in ["auditor-ann", "auditor-bo", "auditor-cy"] {
        let (opened, total) = opened_by(&d, who, start).await;
        assert!(
            total > 0 && opened == total,
            "{who} opened {opened} of {total}"
        );
    }

    // Disabled (ann) and demoted (bo): neither opens anything written later.
    let admin = client(&d, "admin-ada");
    admin.disable_identity("auditor-ann").await.unwrap();
    admin
        .set_identity_attributes("auditor-bo", &["role:researcher".into()])
        .await
        .unwrap();
    let later = log_sizes(&d).await;
    some_events(&d).await;
    let mut doctor = client(&d, "dr-er");
    doctor.refresh_key().await.unwrap();
    doctor
        .break_glass("pat-00001", "suspected overdose")
        .await
        .unwrap();
    for who in ["auditor-ann", "auditor-bo"] {
        let (opened, total) = opened_by(&d, who, later).await;
        assert!(total > 0, "no later events");
        assert_eq!(
            opened, 0,
            "{who} still opens {opened} of {total} later events"
        );
    }
    let (opened, total) = opened_by(&d, "auditor-cy", later).await;
    assert_eq!(
        opened, total,
        "the remaining auditor reads every later event"
    );
    // What they could read before stays readable to them (it was theirs).
    assert!(opened_by(&d, "auditor-ann", start).await.0 > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auditors_follow_the_directory_on_sqlite() {
    auditors_follow_the_directory(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auditors_follow_the_directory_on_postgres() {
    auditors_follow_the_directory(true).await;
}
