//! Auditors are directory identities (review finding H4). Every event is
//! sealed to the auditors the directory names at that moment: disabling an
//! auditor, or taking `role:auditor` away, removes its key from every later
//! event at once, and an auditor added with `user add --auditor` reads
//! events from then on. Played as the review did: the entries are read
//! straight from the store (what a DB admin, a backup or any patient's
//! download gives) and opened with the auditor's HPKE secret key.

mod common;

use asclepios_audit::{LogStore, SealedEvent};
use asclepios_deploy::directory::Directory;
use asclepios_deploy::keys::auditor_secret;
use asclepios_deploy::serve::AUDIT_LOG_ID;
use asclepios_deploy::Config;
use common::*;

/// How many of the log's entries from `from` on `auditor` opens, and how
/// many there are (off the async threads: PostgreSQL's client blocks).
async fn opened_by(d: &Deployment, auditor: &str, from: u64) -> (usize, usize) {
    let (dir, auditor) = (d.dir.clone(), auditor.to_string());
    tokio::task::spawn_blocking(move || {
        let store = Config::load(&dir).unwrap().open_store(&dir).unwrap();
        let size = store.log_size(AUDIT_LOG_ID).unwrap();
        let key = auditor_secret(&dir, &auditor).unwrap();
        let entries = store.log_entries(AUDIT_LOG_ID, from..size).unwrap();
        let opened = entries
            .iter()
            .filter(|e| {
                SealedEvent::from_bytes(e)
                    .ok()
                    .is_some_and(|s| s.open_as_auditor(&key).is_ok())
            })
            .count();
        (opened, entries.len())
    })
    .await
    .unwrap()
}

async fn log_size(d: &Deployment) -> u64 {
    let dir = d.dir.clone();
    tokio::task::spawn_blocking(move || {
        let store = Config::load(&dir).unwrap().open_store(&dir).unwrap();
        store.log_size(AUDIT_LOG_ID).unwrap()
    })
    .await
    .unwrap()
}

async fn admin(d: &Deployment, work: impl FnOnce(&Directory) + Send + 'static) {
    let dir = d.dir.clone();
    tokio::task::spawn_blocking(move || work(&Directory::open(&dir).unwrap()))
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
    admin(&d, |dir| {
        dir.add("auditor-bo", "auditor", "Bo", &["role:auditor".into()])
            .unwrap();
        dir.make_auditor("auditor-bo").unwrap();
        dir.add("auditor-cy", "auditor", "Cy", &["role:auditor".into()])
            .unwrap();
        dir.make_auditor("auditor-cy").unwrap();
    })
    .await;

    let start = log_size(&d).await;
    some_events(&d).await;
    for who in ["auditor-ann", "auditor-bo", "auditor-cy"] {
        let (opened, total) = opened_by(&d, who, start).await;
        assert!(
            total > 0 && opened == total,
            "{who} opened {opened} of {total}"
        );
    }

    // Disabled (ann) and demoted (bo): neither opens anything written later.
    admin(&d, |dir| {
        dir.disable("auditor-ann").unwrap();
        dir.set_attributes("auditor-bo", &["role:researcher".into()])
            .unwrap();
    })
    .await;
    let later = log_size(&d).await;
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
