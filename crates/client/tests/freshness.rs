//! Record freshness (review finding M5), played by the record service's
//! database administrator: a record rolled back to an older version, with
//! its older key wrapper, still opens and still carries a valid author
//! signature; only the audit log's write events, which commit to each
//! version and body, show it. The patient's client refuses it.

mod common;

use asclepios_client::ClientError;
use asclepios_deploy::Config;
use asclepios_fhir::synth::Generator;
use common::{client, deploy, Domain};

async fn a_rolled_back_record_is_refused(postgres: bool) {
    let d = deploy(postgres).await;
    let mut generator = Generator::new(11);
    let pid = "pat-00000";
    let first = generator.blood_pressure(pid);
    let mut second = first.clone();
    second["valueQuantity"] = serde_json::json!({"value": 180, "unit": "mm[Hg]"});
    let policy = Config::load(&d.dir).unwrap().default_policy(pid);
    let mut heart = client(&d, "dr-heart");
    heart.refresh_key().await.unwrap();
    let record_id = heart.record_id_for(pid, &first).await.unwrap();
    heart
        .put_record(pid, &record_id, 1, &first, &policy)
        .await
        .unwrap();
    heart
        .put_record(pid, &record_id, 2, &second, &policy)
        .await
        .unwrap();

    let mut patient = client(&d, pid);
    patient.refresh_key().await.unwrap();
    let (fresh, _) = patient.get_fresh_record(pid, &record_id).await.unwrap();
    assert_eq!(fresh, second);
    let (sealed, _) = patient.get_sealed(pid, &record_id).await.unwrap();
    assert_eq!(
        patient.check_fresh(&sealed).await.unwrap(),
        2,
        "two writes logged"
    );

    // The DB admin drops version 2 and its wrapper: version 1 is served.
    d.as_db_admin(
        Domain::Records,
        "DELETE FROM record_versions WHERE version = 2; DELETE FROM key_wrappers WHERE version = 2;",
    )
    .await;
    let (served, _) = heart.get_record(pid, &record_id).await.unwrap();
    assert_eq!(
        served, first,
        "the rollback opens and verifies for a reader"
    );
    match patient.get_fresh_record(pid, &record_id).await {
        Err(ClientError::StaleRecord { served, logged, .. }) => {
            assert_eq!((served.as_str(), logged.as_str()), ("1", "2"));
        }
        other => panic!("the rolled-back record was accepted: {other:?}"),
    }

    // An erased record brought back from a copy (a backup) is refused.
    let third = generator.blood_pressure(pid);
    let erased_id = heart.record_id_for(pid, &third).await.unwrap();
    heart
        .put_record(pid, &erased_id, 1, &third, &policy)
        .await
        .unwrap();
    d.as_db_admin(
        Domain::Records,
        &format!(
            "CREATE TABLE saved_wrappers AS SELECT * FROM key_wrappers WHERE record_id = '{erased_id}'; \
             CREATE TABLE saved_versions AS SELECT * FROM record_versions WHERE record_id = '{erased_id}';"
        ),
    )
    .await;
    patient.erase_record(pid, &erased_id).await.unwrap();
    d.as_db_admin(
        Domain::Records,
        "INSERT INTO key_wrappers SELECT * FROM saved_wrappers; \
         INSERT INTO record_versions SELECT * FROM saved_versions;",
    )
    .await;
    assert_eq!(heart.get_record(pid, &erased_id).await.unwrap().0, third);
    match patient.get_fresh_record(pid, &erased_id).await {
        Err(ClientError::StaleRecord { logged, .. }) => {
            assert!(logged.contains("erasure"), "{logged}");
        }
        other => panic!("the resurrected record was accepted: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_record_is_refused_on_sqlite() {
    a_rolled_back_record_is_refused(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_record_is_refused_on_postgres() {
    a_rolled_back_record_is_refused(true).await;
}
