//! No existence oracle on records (review finding L1): outside the
//! patient's circle, a missing record, an erased one and one whose policy
//! the caller does not satisfy all answer the same 403 with the same words;
//! inside the circle a missing record is a 404. Nor on the directory: a
//! patient's entry and a missing identity answer alike to anyone outside
//! the patient's circle. On SQLite and PostgreSQL.

mod common;

use asclepios_deploy::Config;
use asclepios_fhir::synth::Generator;
use common::{client, deploy, refusal};

/// `GET /v1/identities/<id>` as `caller`: status and message, with `id`
/// replaced by `<id>` (the message names what was asked for).
async fn directory_entry(d: &common::Deployment, caller: &str, id: &str) -> (u16, String) {
    let c = common::connection(d, common::Domain::Authority, caller);
    let r = c
        .send(
            reqwest::Method::GET,
            &format!("/v1/identities/{id}"),
            Vec::new(),
        )
        .await
        .unwrap();
    (
        r.status().as_u16(),
        r.text().await.unwrap().replace(id, "<id>"),
    )
}

async fn no_patient_enumeration(d: &common::Deployment) {
    // Outside pat-00001's circle, a researcher and a clinician of another
    // patient cannot tell the patient from a pseudonym nobody holds.
    for caller in ["researcher-rita", "dr-heart"] {
        let patient = directory_entry(d, caller, "pat-00001").await;
        let nobody = directory_entry(d, caller, "pat-99999").await;
        assert_eq!(patient.0, 404, "{caller}: {patient:?}");
        assert_eq!(patient, nobody, "{caller}");
    }
    // The patient, its care team and the administrators read it; other
    // authors' entries (a clinician's) are there for every reader.
    for caller in ["pat-00001", "admin-ada"] {
        assert_eq!(
            directory_entry(d, caller, "pat-00001").await.0,
            200,
            "{caller}"
        );
    }
    assert_eq!(
        directory_entry(d, "researcher-rita", "dr-heart").await.0,
        200
    );
}

async fn scenario(postgres: bool) {
    let d = deploy(postgres).await;
    no_patient_enumeration(&d).await;
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
