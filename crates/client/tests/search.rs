//! Search over encrypted records end to end, on SQLite and PostgreSQL:
//! results agree with a plaintext index of the same records, through updates
//! and erasure; who may search; and the store's index holds no keyword and
//! no record id in the clear. (Whose records a search reaches:
//! `search_scope.rs`.)

mod common;

use std::collections::{BTreeMap, BTreeSet};

use asclepios_client::search::{record_keywords, Match};
use asclepios_client::ClientError;
use asclepios_deploy::Config;
use asclepios_fhir::synth::Generator;
use common::{client, contains, deploy, Deployment};

/// What a plaintext index of the same records answers.
fn plain_search(
    index: &BTreeMap<(String, String), Vec<String>>,
    groups: &[Vec<&str>],
) -> Vec<Match> {
    index
        .iter()
        .filter(|(_, kws)| {
            groups
                .iter()
                .all(|g| g.iter().any(|k| kws.iter().any(|x| x == k)))
        })
        .map(|((patient, record_id), _)| Match {
            patient: patient.clone(),
            record_id: record_id.clone(),
        })
        .collect()
}

async fn scenario(d: Deployment) {
    let mut generator = Generator::new(11);
    let bundle = generator.patient(3);
    let pid = bundle.patient_id().to_string();
    assert_eq!(pid, "pat-00000");
    let policy = Config::load(&d.dir).unwrap().default_policy(&pid);
    let mut heart = client(&d, "dr-heart");
    heart.refresh_key().await.unwrap();

    let mut plain: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for r in bundle.all() {
        let (id, _) = heart.put_resource(&pid, 1, r, &policy).await.unwrap();
        plain.insert((pid.clone(), id), record_keywords(&pid, r));
    }
    assert!(plain.len() >= 8, "{}", plain.len());

    // Queries agree with the plaintext index.
    let systolic = "code:http://loinc.org|8480-6";
    let month = plain
        .values()
        .flatten()
        .find(|k| k.starts_with("month:"))
        .unwrap()
        .clone();
    let year = &month["month:".len().."month:".len() + 4];
    let range = format!("date:{year}-01..{year}-12");
    let year_months: Vec<String> = (1..=12).map(|m| format!("month:{year}-{m:02}")).collect();
    let year_months: Vec<&str> = year_months.iter().map(String::as_str).collect();
    let cases: Vec<(String, Vec<Vec<&str>>)> = vec![
        (systolic.into(), vec![vec![systolic]]),
        ("type:Encounter".into(), vec![vec!["type:Encounter"]]),
        (
            format!("type:Observation and {month}"),
            vec![vec!["type:Observation"], vec![month.as_str()]],
        ),
        (
            format!("type:Condition and {range}"),
            vec![vec!["type:Condition"], year_months.clone()],
        ),
        (
            "practitioner:nobody".into(),
            vec![vec!["practitioner:nobody"]],
        ),
    ];
    for (query, groups) in &cases {
        let found = heart.search(query).await.unwrap();
        assert_eq!(found, plain_search(&plain, groups), "{query}");
    }
    // Searching twice (the first compacted nothing yet) gives the same.
    let first = heart.search("type:Observation").await.unwrap();
    assert_eq!(heart.search("type:Observation").await.unwrap(), first);
    assert!(!first.is_empty());

    // An update changes the record's keywords: the old code no longer finds it.
    let bp = first
        .iter()
        .find(|m| {
            plain[&(m.patient.clone(), m.record_id.clone())]
                .iter()
                .any(|k| k == systolic)
        })
        .unwrap()
        .clone();
    let (mut resource, _) = heart.get_record(&bp.patient, &bp.record_id).await.unwrap();
    resource["code"]["coding"][0]["code"] = "8462-4".into();
    heart
        .put_record(&bp.patient, &bp.record_id, 2, &resource, &policy)
        .await
        .unwrap();
    plain.insert(
        (bp.patient.clone(), bp.record_id.clone()),
        record_keywords(&pid, &resource),
    );
    assert!(!heart.search(systolic).await.unwrap().contains(&bp));
    assert!(heart
        .search("code:http://loinc.org|8462-4")
        .await
        .unwrap()
        .contains(&bp));

    // Many updates of one keyword, then searches: compaction keeps answers right.
    for i in 0..40 {
        let mut extra = generator.blood_pressure(&pid);
        extra["id"] = format!("bp-extra-{i}").into();
        let (id, _) = heart.put_resource(&pid, 1, &extra, &policy).await.unwrap();
        plain.insert((pid.clone(), id), record_keywords(&pid, &extra));
    }
    for _ in 0..2 {
        assert_eq!(
            heart.search(systolic).await.unwrap(),
            plain_search(&plain, &[vec![systolic]])
        );
    }

    // Erasure takes the record out of the index.
    let mut patient = client(&d, &pid);
    patient.refresh_key().await.unwrap();
    patient
        .erase_record(&bp.patient, &bp.record_id)
        .await
        .unwrap();
    plain.remove(&(bp.patient.clone(), bp.record_id.clone()));
    assert_eq!(
        heart.search("type:Observation").await.unwrap(),
        plain_search(&plain, &[vec!["type:Observation"]])
    );

    // Who may search: not patients, not researchers (they get statistics).
    for who in [pid.as_str(), "researcher-rita"] {
        let err = client(&d, who)
            .search("type:Observation")
            .await
            .unwrap_err();
        assert!(
            matches!(err, ClientError::Refused { status: 403, .. }),
            "{who}: {err}"
        );
    }
    // A lab may search, but is in no patient's circle: its searches reach
    // nobody, and naming a patient is refused.
    let mut lab = client(&d, "lab-central");
    lab.refresh_key().await.unwrap();
    assert!(lab.search(systolic).await.unwrap().is_empty());
    let err = lab
        .search(&format!("patient:{pid} and {systolic}"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::Refused { status: 403, .. }),
        "{err}"
    );
    // Bad queries are refused before anything is sent.
    assert!(heart.search("colour:red").await.is_err());
    // Only the author (or the patient) may index a record.
    let err = lab
        .index_record(&pid, &first[0].record_id, vec!["type:Fake".into()])
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::Refused { status: 403, .. }),
        "{err}"
    );

    // The index holds no keyword and no record reference in the clear; the
    // store as a whole holds no keyword.
    let index = d.table_bytes(&["sse_index", "sse_state"]).await;
    let whole = d.raw_bytes().await;
    assert!(index.len() > 10_000, "{} index bytes", index.len());
    let record_ids: BTreeSet<&str> = plain.keys().map(|(_, r)| r.as_str()).collect();
    for needle in record_ids.iter().copied().chain([
        pid.as_str(),
        "8480-6",
        "loinc",
        "Observation",
        year,
        "dr-heart",
        "st-mary",
    ]) {
        assert!(
            !contains(&index, needle.as_bytes()),
            "`{needle}` in the index"
        );
    }
    // (`patient:<p>` is also an ABE attribute, held in the directory and
    // named by policies: as a keyword it is only checked in the index.)
    for keyword in plain
        .values()
        .flatten()
        .filter(|k| !k.starts_with("patient:"))
    {
        assert!(
            !contains(&whole, keyword.as_bytes()),
            "keyword `{keyword}` in the raw store"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_on_sqlite() {
    scenario(deploy(false).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_on_postgres() {
    scenario(deploy(true).await).await;
}
