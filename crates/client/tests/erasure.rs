//! Erasure that erases (review finding H8), on SQLite and PostgreSQL. The
//! attacker is the record service's database administrator after the
//! patient erased: the review carved the "erased" key wrapper out of the
//! SQLite file (WAL mode had kept the old page) and re-inserted it.
//!
//! After `erase` (one record) and `erase --patient` (all of them):
//! - no byte sequence of any erased wrapper or body is left in any file of
//!   the SQLite store (main file and write-ahead log), or in any tuple, live
//!   or dead, of the PostgreSQL tables (read page by page with
//!   `pageinspect`);
//! - the receipt says what was destroyed, and the patient's access list has
//!   the erasure;
//! - another patient's records are untouched.

mod common;

use asclepios_deploy::Config;
use asclepios_fhir::synth::Generator;
use common::{client, contains, deploy, pg_url, Domain};

/// Every wrapper and body the records store holds for `patient`, as the DB
/// administrator reads them before the erasure.
async fn remains(d: &common::Deployment, patient: &str) -> Vec<Vec<u8>> {
    let mut out = d
        .table_rows(
            Domain::Records,
            &format!("SELECT wrapper FROM key_wrappers WHERE patient = '{patient}'"),
        )
        .await;
    out.extend(
        d.table_rows(
            Domain::Records,
            &format!("SELECT body FROM record_versions WHERE patient = '{patient}'"),
        )
        .await,
    );
    out
}

/// What a carver finds: every file of the SQLite store, or the data of
/// every tuple (live or dead) on every page of the PostgreSQL tables and
/// their TOAST tables, read with `pageinspect`.
async fn carvable(d: &common::Deployment) -> Vec<u8> {
    let (dir, schema) = d.store_of(Domain::Records);
    tokio::task::spawn_blocking(move || match schema {
        None => std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| {
                let path = e.unwrap().path();
                let name = path.file_name()?.to_str()?.to_string();
                name.starts_with("asclepios.db").then(|| std::fs::read(&path).unwrap())
            })
            .flatten()
            .collect(),
        Some(schema) => {
            let mut c = postgres::Client::connect(&pg_url(), postgres::NoTls).unwrap();
            c.batch_execute("CREATE EXTENSION IF NOT EXISTS pageinspect")
                .expect("pageinspect (PostgreSQL contrib) is needed to read dead tuples");
            let mut relations = Vec::new();
            for table in ["key_wrappers", "record_versions"] {
                let name = format!("{schema}.{table}");
                relations.push(name.clone());
                let toast: Option<String> = c
                    .query_one(
                        "SELECT NULLIF(reltoastrelid, 0)::regclass::text FROM pg_class WHERE oid = $1::text::regclass",
                        &[&name],
                    )
                    .unwrap()
                    .get(0);
                relations.extend(toast);
            }
            let mut out = Vec::new();
            for relation in relations {
                let pages: i64 = c
                    .query_one("SELECT pg_relation_size($1::text::regclass) / 8192", &[&relation])
                    .unwrap()
                    .get(0);
                for page in 0..pages {
                    let rows = c
                        .query(
                            "SELECT t_data FROM heap_page_items(get_raw_page($1::text, $2::int)) WHERE t_data IS NOT NULL",
                            &[&relation, &(page as i32)],
                        )
                        .unwrap();
                    for r in rows {
                        out.extend(r.get::<_, Vec<u8>>(0));
                        out.push(0);
                    }
                }
            }
            out
        }
    })
    .await
    .unwrap()
}

/// A 64-byte window from the middle of `bytes`: what a carver would look
/// for (whole wrappers may be split across TOAST chunks).
fn probe(bytes: &[u8]) -> &[u8] {
    let mid = bytes.len() / 2;
    &bytes[mid.saturating_sub(32)..(mid + 32).min(bytes.len())]
}

async fn scenario(postgres: bool) {
    let d = deploy(postgres).await;
    let (pid, other) = ("pat-00000", "pat-00001");
    let mut generator = Generator::new(3);
    let mut heart = client(&d, "dr-heart");
    heart.refresh_key().await.unwrap();
    // A lab writes for both patients.
    let mut lab = client(&d, "lab-central");
    lab.refresh_key().await.unwrap();
    let config = Config::load(&d.dir).unwrap();
    let mut ids = Vec::new();
    for patient in [pid, pid, pid, other] {
        let observation = generator.blood_pressure(patient);
        let id = lab.record_id_for(patient, &observation).await.unwrap();
        let policy = config.default_policy(patient);
        lab.put_record(patient, &id, 1, &observation, &policy)
            .await
            .unwrap();
        ids.push(id);
    }
    // A second version of the first record.
    let newer = generator.blood_pressure(pid);
    lab.put_record(pid, &ids[0], 2, &newer, &config.default_policy(pid))
        .await
        .unwrap();
    let before = remains(&d, pid).await;
    assert_eq!(before.len(), 8, "4 versions, each a wrapper and a body");
    let spared = remains(&d, other).await;
    let stored = carvable(&d).await;
    assert!(
        before.iter().all(|b| contains(&stored, probe(b))),
        "the carver finds what is stored (the test can see the bytes)"
    );

    let mut patient = client(&d, pid);
    patient.refresh_key().await.unwrap();
    let one = patient.erase_record(pid, &ids[0]).await.unwrap();
    assert_eq!((one.records, one.versions, one.wrappers), (1, 2, 2));
    let all = patient.erase_patient(pid, |_, _| {}).await.unwrap();
    assert_eq!((all.records, all.versions, all.wrappers), (2, 2, 2));

    let left = carvable(&d).await;
    for (i, bytes) in before.iter().enumerate() {
        assert!(
            !contains(&left, probe(bytes)),
            "erased bytes #{i} are still in the {} store",
            if postgres { "PostgreSQL" } else { "SQLite" }
        );
    }
    for bytes in &spared {
        assert!(
            contains(&left, probe(bytes)),
            "another patient's record went too"
        );
    }
    assert!(patient.list_records(pid).await.unwrap().is_empty());
    assert!(heart.get_record(pid, &ids[1]).await.is_err());
    let mut spared_patient = client(&d, other);
    spared_patient.refresh_key().await.unwrap();
    assert!(spared_patient.get_record(other, &ids[3]).await.is_ok());

    // The patient's access list has both erasures.
    let events = patient.audit_events().await.unwrap();
    let erasures: Vec<_> = events
        .iter()
        .filter(|e| e.action == asclepios_audit::Action::Delete && e.actor == pid)
        .map(|e| e.resource.clone())
        .collect();
    assert!(
        erasures.contains(&format!("record/{pid}/{}", ids[0])),
        "{erasures:?}"
    );
    assert!(erasures.contains(&format!("records/{pid}")), "{erasures:?}");
    // Only the patient erases.
    let err = heart.erase_patient(other, |_, _| {}).await.unwrap_err();
    assert_eq!(common::refusal(err).0, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_leaves_nothing_to_carve_on_sqlite() {
    scenario(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_leaves_nothing_to_carve_on_postgres() {
    scenario(true).await;
}
