//! The expiry sweeper is not held up by one large patient (review finding
//! M10), on SQLite and PostgreSQL. A lab (any writer in the circle) fills
//! one patient's history with records under huge policies (each costs a
//! re-wrap of about a second's work, as in the review); a clinician breaks
//! the glass for that patient and then for another. Both grants expire: the second one's attribute must be
//! revoked within a sweep or two of its expiry, whatever the first
//! patient's re-wrap costs, and the first patient's records are re-wrapped
//! afterwards, in bounded steps.

mod common;

use std::time::{Duration, Instant};

use asclepios_crypto::envelope::KeyWrapper;
use asclepios_crypto::policy::{attribute_name, attribute_version};
use asclepios_deploy::Config;
use asclepios_fhir::synth::Generator;
use common::{client, deploy, Domain};

const LARGE: &str = "pat-00000";
const SMALL: &str = "pat-00001";
const RECORDS: usize = 8;
/// Attributes of the huge clause each planted record's policy adds.
const WIDE: usize = 240;

/// Whether every wrapper of `patient` names `emergency:<patient>` at a
/// version above 0 (re-wrapped after the grant ended).
async fn all_rewrapped(d: &common::Deployment, patient: &str) -> bool {
    let bytes = d
        .table_rows(
            Domain::Records,
            &format!("SELECT wrapper FROM key_wrappers WHERE patient = '{patient}'"),
        )
        .await;
    let emergency = format!("emergency:{patient}");
    bytes.iter().all(|b| {
        KeyWrapper::from_bytes(b)
            .unwrap()
            .policy()
            .leaves()
            .iter()
            .filter(|l| attribute_name(l) == emergency)
            .all(|l| attribute_version(l) > 0)
    })
}

async fn scenario(postgres: bool) {
    let d = deploy(postgres).await;
    let config = Config::load(&d.dir).unwrap();
    let mut lab = client(&d, "lab-central");
    lab.refresh_key().await.unwrap();
    let mut generator = Generator::new(11);
    let wide: Vec<String> = (0..WIDE).map(|i| format!("dept:ward-{i}")).collect();
    let policy = format!(
        "{} or ({})",
        config.default_policy(LARGE),
        wide.join(" and ")
    );
    for i in 0..RECORDS {
        let mut observation = generator.blood_pressure(LARGE);
        observation["id"] = format!("obs-large-{i}").into();
        lab.put_resource(LARGE, 1, &observation, &policy)
            .await
            .unwrap();
    }

    let mut er = client(&d, "dr-er");
    er.break_glass(LARGE, "unconscious").await.unwrap();
    er.break_glass(SMALL, "unconscious").await.unwrap();
    let small_expires = Instant::now() + Duration::from_secs(config.emergency.grant_seconds);
    tokio::time::sleep_until(small_expires.into()).await;
    let emergency = format!("emergency:{SMALL}");
    let ended = loop {
        let key = er.refresh_key().await.unwrap().to_vec();
        if !key.iter().any(|a| attribute_name(a) == emergency) {
            break small_expires.elapsed();
        }
        assert!(
            small_expires.elapsed() < Duration::from_secs(60),
            "the second grant never ended"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let sweep = Duration::from_secs(asclepios_deploy::serve::SWEEP_SECONDS);
    eprintln!(
        "{}: the second grant ended {ended:?} after its expiry",
        if postgres { "PostgreSQL" } else { "SQLite" }
    );
    assert!(
        ended <= 2 * sweep + Duration::from_secs(1),
        "the second grant ended {ended:?} after its expiry: held up behind the first patient's re-wrap"
    );

    // The large patient's records are re-wrapped in the end.
    let deadline = Instant::now() + Duration::from_secs(120);
    while !all_rewrapped(&d, LARGE).await {
        assert!(Instant::now() < deadline, "the re-wrap never finished");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_large_patient_holds_up_no_expiry_on_sqlite() {
    scenario(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_large_patient_holds_up_no_expiry_on_postgres() {
    scenario(true).await;
}
