//! The audit log under its witness, played by the record service's
//! operator with SQL on its database (the review's H3): a log deleted and
//! restarted is refused at start, and a client that verified the earlier
//! log refuses the rewritten one even when a witness (that lost its state,
//! or colludes) cosigns it.

mod common;

use std::time::Duration;

use asclepios_client::ClientError;
use common::{client, deploy, Domain};

async fn a_rewritten_log_is_refused(postgres: bool) {
    let mut d = deploy(postgres).await;
    let mut patient = client(&d, "pat-00000");
    patient.refresh_key().await.unwrap();
    patient.list_records("pat-00000").await.unwrap();
    let views = patient.audit_views().await.unwrap();
    let held = views[0].checkpoint.size;
    assert!(held > 0);
    // Every checkpoint the client accepted carries the witness's cosignature.
    let signed = std::fs::read_dir(d.dir.join("identities/pat-00000.logs"))
        .unwrap()
        .filter(|f| {
            f.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|e| e == "checkpoint")
        })
        .count();
    assert_eq!(signed, 2, "one held checkpoint per log");

    // H3: the operator stops the record service, deletes its log and
    // restarts it. The authority's witness saw a longer log: no start.
    drop(d.records.take());
    d.as_db_admin(
        Domain::Records,
        "DELETE FROM audit_checkpoints; DELETE FROM audit_entries; DELETE FROM audit_logs;",
    )
    .await;
    let refused = d.start_records().await.unwrap_err().to_string();
    assert!(refused.contains("AUDIT LOG ALARM"), "{refused}");
    assert!(refused.contains("rolled back"), "{refused}");
    let evidence = std::fs::read_dir(d.dir.join("witness/evidence"))
        .unwrap()
        .count();
    assert!(evidence > 0, "the witness keeps the refused checkpoint");

    // The witness loses its state (or its operator colludes): the
    // rewritten log starts afresh and is cosigned.
    drop(d.authority.take());
    std::fs::remove_dir_all(d.dir.join("witness/state")).unwrap();
    d.start_authority().await.unwrap();
    let mut started = false;
    for _ in 0..50 {
        if d.start_records().await.is_ok() {
            started = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(started, "the record service restarts");
    d.until_ready().await;
    // A client that never saw the old log accepts the new one...
    let mut newcomer = client(&d, "pat-00001");
    newcomer.refresh_key().await.unwrap();
    newcomer.audit_views().await.unwrap();
    // ...but the client that held the old one refuses, with evidence.
    match patient.list_records("pat-00000").await {
        Err(ClientError::LogFork { evidence, log, .. }) => {
            assert_eq!(log, "records");
            let text = std::fs::read_to_string(&evidence).unwrap();
            assert_eq!(text.matches("\n\u{2014} ").count(), 4, "{text}");
        }
        other => panic!("the rewritten log was accepted: {other:?}"),
    }
    assert!(matches!(
        patient.audit_views().await,
        Err(ClientError::LogFork { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewritten_log_is_refused_on_sqlite() {
    a_rewritten_log_is_refused(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewritten_log_is_refused_on_postgres() {
    a_rewritten_log_is_refused(true).await;
}

/// Rewrites the `asclepios.toml` of `dir` through `edit`.
fn edit_config(dir: &std::path::Path, edit: impl FnOnce(&mut asclepios_deploy::Config)) {
    let mut config = asclepios_deploy::Config::load(dir).unwrap();
    edit(&mut config);
    std::fs::write(dir.join("asclepios.toml"), config.to_toml().unwrap()).unwrap();
}

/// An independent witness (`asclepios witness`), named in both services'
/// configuration: every checkpoint carries its cosignature, clients require
/// it, and without it no checkpoint is made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_independent_witness_cosigns_and_is_required_unless_the_quorum_says_otherwise() {
    use asclepios_deploy::config::WitnessRef;
    use asclepios_deploy::standalone_witness;
    let mut d = deploy(false).await;
    let tmp = tempfile::tempdir().unwrap();
    let w = tmp.path().join("witness");
    let public = standalone_witness::init(&w, "witness.test/w1", "127.0.0.1:0").unwrap();
    for key in ["pki/audit-log.pub", "pki/records-log.pub"] {
        standalone_witness::add_log(&w, &std::fs::read_to_string(d.dir.join(key)).unwrap())
            .unwrap();
    }
    let (addr, task) = standalone_witness::serve(&w, None).await.unwrap();
    drop(d.records.take());
    drop(d.authority.take());
    for dir in [&d.dir, &d.records_dir] {
        edit_config(dir, |config| {
            config.audit.witnesses.push(WitnessRef {
                url: format!("http://{addr}"),
                key: public.trim().to_string(),
            })
        });
    }
    d.start_authority().await.unwrap();
    d.start_records().await.unwrap();
    d.until_ready().await;
    let mut patient = client(&d, "pat-00000");
    patient.refresh_key().await.unwrap();
    patient.list_records("pat-00000").await.unwrap();
    // The client requires both witnesses' cosignatures on both logs.
    assert_eq!(patient.audit_views().await.unwrap().len(), 2);
    assert_eq!(std::fs::read_dir(w.join("state")).unwrap().count(), 2);
    // The witness goes away: nothing more can be logged, so nothing is done.
    task.abort();
    let _ = task.await;
    match patient.list_records("pat-00000").await {
        Err(ClientError::Refused { status: 503, .. }) => {}
        other => panic!("served without the witness: {other:?}"),
    }
    // With a quorum of one of the two, the services go on without it, and
    // clients accept checkpoints the authority's witness alone cosigned.
    drop(d.records.take());
    drop(d.authority.take());
    for dir in [&d.dir, &d.records_dir] {
        edit_config(dir, |config| config.audit.quorum = Some(1));
    }
    d.start_authority().await.unwrap();
    d.start_records().await.unwrap();
    d.until_ready().await;
    let mut patient = client(&d, "pat-00000");
    patient.refresh_key().await.unwrap();
    patient.list_records("pat-00000").await.unwrap();
    assert_eq!(patient.audit_views().await.unwrap().len(), 2);
    // A quorum above the witnesses there are is refused at start.
    drop(d.records.take());
    edit_config(&d.records_dir, |config| config.audit.quorum = Some(3));
    let refused = d.start_records().await.unwrap_err().to_string();
    assert!(refused.contains("quorum = 3"), "{refused}");
}
