//! Search reaches only the searcher's circle (review finding H9), on SQLite
//! and PostgreSQL: a care-team nurse who searches a diagnosis code finds her
//! own patient's records and never another patient's; a query that names a
//! patient outside her circle is refused, decoys included, and the patient
//! named sees the refused attempt; every patient a search reaches sees it in
//! their access list; a break-glass grant and a configured registry role
//! widen the circle, and their searches are shown too.

mod common;

use asclepios_audit::{Action, AuditEvent, Outcome};
use asclepios_client::search::record_keywords;
use asclepios_client::{Client, ClientError};
use asclepios_deploy::Config;
use asclepios_fhir::synth::Generator;
use common::*;

/// A diagnosis code of `patient`'s that `other` does not have.
fn code_only_of(patient: &[Vec<String>], other: &[Vec<String>]) -> String {
    patient
        .iter()
        .flatten()
        .filter(|k| k.starts_with("code:http://snomed.info/sct|"))
        .find(|k| !other.iter().flatten().any(|o| o == *k))
        .expect("the two patients share every diagnosis code: pick other seeds")
        .clone()
}

/// Searches the events `patient` can read for `actor`'s searches.
async fn searches_seen_by(patient: &Client, actor: &str) -> Vec<AuditEvent> {
    patient
        .audit_events()
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.action == Action::Search && e.actor == actor)
        .collect()
}

fn refused(result: Result<impl std::fmt::Debug, ClientError>) -> String {
    match result {
        Err(ClientError::Refused {
            status: 403,
            message,
            ..
        }) => message,
        other => panic!("expected a 403, got {other:?}"),
    }
}

/// `/v1/search/tokens` as `id` sends it, with any groups it likes.
async fn raw_tokens(d: &Deployment, id: &str, groups: serde_json::Value) -> u16 {
    connection(d, Domain::Authority, id)
        .send(
            reqwest::Method::POST,
            "/v1/search/tokens",
            serde_json::to_vec(&serde_json::json!({ "groups": groups })).unwrap(),
        )
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn scenario(postgres: bool) {
    let d = deploy_with(postgres, |cfg| {
        cfg.search.roles.push("role:registry".into());
        cfg.search.cross_patient_roles = vec!["role:registry".into()];
    })
    .await;
    add_identity(&d, "registrar", "clinician", &["role:registry"]).await;

    // Two patients' records: Ana's written by her cardiologist, Ben's by
    // Ben himself. The nurse is on Ana's care team only.
    let mut generator = Generator::new(23);
    let cfg = Config::load(&d.dir).unwrap();
    let mut heart = client(&d, "dr-heart");
    heart.refresh_key().await.unwrap();
    let mut ana = client(&d, "pat-00000");
    ana.refresh_key().await.unwrap();
    let mut ben = client(&d, "pat-00001");
    ben.refresh_key().await.unwrap();
    let mut keywords: Vec<Vec<Vec<String>>> = vec![Vec::new(), Vec::new()];
    for (i, writer) in [&heart, &ben].into_iter().enumerate() {
        let bundle = generator.patient(4);
        let pid = bundle.patient_id().to_string();
        assert_eq!(pid, format!("pat-0000{i}"));
        for r in bundle.all() {
            writer
                .put_resource(&pid, 1, r, &cfg.default_policy(&pid))
                .await
                .unwrap();
            keywords[i].push(record_keywords(&pid, r));
        }
    }
    let bens_code = code_only_of(&keywords[1], &keywords[0]);

    // H9: the nurse searches a diagnosis only Ben has and finds nothing.
    let mut nurse = client(&d, "nurse-ward");
    nurse.refresh_key().await.unwrap();
    assert!(nurse.search(&bens_code).await.unwrap().is_empty());
    let all = nurse.search("type:Condition").await.unwrap();
    assert!(!all.is_empty());
    assert!(all.iter().all(|m| m.patient == "pat-00000"), "{all:?}");

    // Naming Ben is refused, alone, with a decoy, or beside Ana; so is a
    // query that names Ben under a keyword of Ana's.
    let named = nurse.search("patient:pat-00001 and type:Condition").await;
    assert!(refused(named).contains("pat-00001"));
    for groups in [
        serde_json::json!([["patient:pat-00001"]]),
        serde_json::json!([["patient:pat-00001", "patient:decoy-xyz"]]),
        serde_json::json!([["patient:pat-00000", "patient:pat-00001"]]),
        serde_json::json!([["type:Condition"], ["patient:pat-00001"]]),
        serde_json::json!([["patient:decoy-xyz"]]),
    ] {
        assert_eq!(
            raw_tokens(&d, "nurse-ward", groups.clone()).await,
            403,
            "{groups}"
        );
    }

    // Someone without a search role cannot write into Ben's access list by
    // naming him, however many names it sends.
    let many: Vec<String> = (0..2000).map(|i| format!("patient:pat-{i:05}")).collect();
    for id in ["researcher-rita", "pat-00000"] {
        let status = raw_tokens(&d, id, serde_json::json!([many.clone()])).await;
        assert!(status == 400 || status == 403, "{id}: {status}");
        let status = raw_tokens(&d, id, serde_json::json!([["patient:pat-00001"]])).await;
        assert_eq!(status, 403);
        assert!(searches_seen_by(&ben, id).await.is_empty());
    }

    // Ben sees the refused attempts; he sees no search that reached him.
    let seen = searches_seen_by(&ben, "nurse-ward").await;
    assert!(seen.len() >= 5, "{seen:?}");
    assert!(
        seen.iter().all(|e| e.outcome == Outcome::Denied),
        "{seen:?}"
    );
    assert!(seen
        .iter()
        .all(|e| e.patient.as_deref() == Some("pat-00001")));
    // Ana sees every search of the nurse's that reached her, and not
    // Ben's name in the refused query that named them both.
    let seen = searches_seen_by(&ana, "nurse-ward").await;
    let reached: Vec<&AuditEvent> = seen
        .iter()
        .filter(|e| e.outcome == Outcome::Success)
        .collect();
    assert!(
        reached
            .iter()
            .any(|e| e.resource.contains("type:Condition")),
        "{seen:?}"
    );
    assert!(
        seen.iter().all(|e| !e.resource.contains("pat-00001")),
        "{seen:?}"
    );
    // A search naming Ana that finds nothing still shows in her list: the
    // nurse learnt that Ana has no such diagnosis.
    assert!(nurse
        .search(&format!("patient:pat-00000 and {bens_code}"))
        .await
        .unwrap()
        .is_empty());
    assert!(searches_seen_by(&ana, "nurse-ward")
        .await
        .iter()
        .any(|e| e.outcome == Outcome::Success && e.resource.contains(&bens_code)));

    // A break-glass grant puts Ben in the emergency physician's circle
    // while it lasts.
    let mut er = client(&d, "dr-er");
    er.refresh_key().await.unwrap();
    let query = format!("patient:pat-00001 and {bens_code}");
    refused(er.search(&query).await);
    er.break_glass("pat-00001", "unconscious").await.unwrap();
    er.refresh_key().await.unwrap();
    let found = er.search(&query).await.unwrap();
    assert!(!found.is_empty());
    assert!(found.iter().all(|m| m.patient == "pat-00001"));
    // Ben sees it, marked as an emergency access.
    assert!(searches_seen_by(&ben, "dr-er")
        .await
        .iter()
        .any(|e| e.outcome == Outcome::Success && e.emergency && e.purpose == "ETREAT"));

    // A registry role searches everyone, and everyone it reaches sees it.
    let registrar = client(&d, "registrar");
    let found = registrar.search("type:Condition").await.unwrap();
    for p in ["pat-00000", "pat-00001"] {
        assert!(found.iter().any(|m| m.patient == p), "{found:?}");
    }
    for patient in [&ana, &ben] {
        let seen = searches_seen_by(patient, "registrar").await;
        // (Not how many other patients it reached: that is for auditors.)
        assert!(
            seen.iter()
                .any(|e| e.outcome == Outcome::Success && e.resource == "search: type:Condition"),
            "{seen:?}"
        );
    }
    // A search that reaches nobody is still logged (to auditors).
    assert!(registrar
        .search("practitioner:nobody")
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_reaches_only_the_circle_on_sqlite() {
    scenario(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_reaches_only_the_circle_on_postgres() {
    scenario(true).await;
}
