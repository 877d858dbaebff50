//! Writes keep the patient in (review finding M4): a writer in the circle
//! may add a version, but its policy must let the patient alone, and an
//! emergency for the patient alone, read it. A lab that tries to lock the
//! patient out of their own record is refused, on SQLite and PostgreSQL,
//! and the patient still reads the latest version.

mod common;

use asclepios_client::ClientError;
use asclepios_deploy::Config;
use asclepios_fhir::synth::Generator;
use common::{client, deploy};

async fn scenario(postgres: bool) {
    let d = deploy(postgres).await;
    let pid = "pat-00000";
    let mut generator = Generator::new(7);
    let observation = generator.blood_pressure(pid);
    let policy = Config::load(&d.dir).unwrap().default_policy(pid);
    let mut heart = client(&d, "dr-heart");
    heart.refresh_key().await.unwrap();
    let record_id = heart.record_id_for(pid, &observation).await.unwrap();
    heart
        .put_record(pid, &record_id, 1, &observation, &policy)
        .await
        .unwrap();

    let mut lab = client(&d, "lab-central");
    lab.refresh_key().await.unwrap();
    for locked_out in [
        // The review's version: both names, and nobody alone can read.
        format!("patient:{pid} and emergency:{pid}"),
        format!("patient:{pid} and role:lab"),
        format!("(patient:{pid} or emergency:{pid}) and role:lab"),
        format!("emergency:{pid} or role:lab"),
        format!("patient:{pid} or role:lab"),
    ] {
        let err = lab
            .put_record(pid, &record_id, 2, &observation, &locked_out)
            .await
            .unwrap_err();
        match err {
            ClientError::Refused {
                status: 403,
                message,
                ..
            } => assert!(message.contains("alone read the record"), "{message}"),
            other => panic!("`{locked_out}`: {other}"),
        }
    }
    // A policy that adds readers and keeps both clauses is fine.
    let wider = format!("{policy} or role:lab");
    lab.put_record(pid, &record_id, 2, &observation, &wider)
        .await
        .unwrap();
    let mut patient = client(&d, pid);
    patient.refresh_key().await.unwrap();
    let (read, _) = patient.get_record(pid, &record_id).await.unwrap();
    assert_eq!(read, observation);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_keep_the_patient_in_on_sqlite() {
    scenario(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_keep_the_patient_in_on_postgres() {
    scenario(true).await;
}
