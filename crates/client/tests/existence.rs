//! No existence oracle on records (review finding L1): outside the
//! patient's circle, a missing record, an erased one and one whose policy
//! the caller does not satisfy all answer the same 403 with the same words;
//! inside the circle a missing record is a 404. On SQLite and PostgreSQL.

mod common;

use asclepios_deploy::Config;
use asclepios_fhir::synth::Generator;
use common::{client, deploy, refusal};

async fn scenario(postgres: bool) {
    let d = deploy(postgres).await;
    let pid = "pat-00000";
    let mut generator = Generator::new(11);
    let policy = Config::load(&d.dir).unwrap().default_policy(pid);
    let mut heart = client(&d, "dr-heart");
    heart.refresh_key().await.unwrap();
    let mut ids = Vec::new();
    for _ in 0..2 {
        let observation = generator.blood_pressure(pid);
        let id = heart.record_id_for(pid, &observation).await.unwrap();
        heart
            .put_record(pid, &id, 1, &observation, &policy)
            .await
            .unwrap();
        ids.push(id);
    }
    let mut patient = client(&d, pid);
    patient.refresh_key().await.unwrap();
    patient.erase_record(pid, &ids[1]).await.unwrap();
    let missing = format!("{}0", &ids[0][..ids[0].len() - 1]);
    let missing = if missing == ids[0] {
        format!("{}1", &ids[0][..ids[0].len() - 1])
    } else {
        missing
    };

    let researcher = client(&d, "researcher-rita");
    let mut answers = Vec::new();
    for id in [&ids[0], &ids[1], &missing] {
        answers.push(refusal(researcher.get_sealed(pid, id).await.unwrap_err()));
    }
    assert_eq!(answers[0].0, 403);
    assert!(
        answers.iter().all(|a| a == &answers[0]),
        "existing, erased and missing answer differently: {answers:?}"
    );
    // The circle is told a record is missing.
    let (status, _) = refusal(heart.get_sealed(pid, &missing).await.unwrap_err());
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_existence_oracle_on_sqlite() {
    scenario(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_existence_oracle_on_postgres() {
    scenario(true).await;
}
