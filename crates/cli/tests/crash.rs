//! Crash safety of the whole platform: the key authority and the record
//! service run as two child processes (`asclepios serve authority` and
//! `asclepios serve records`), each on its own SQLite file or PostgreSQL
//! schema, while clients write records concurrently; one or both are killed
//! with SIGKILL at random moments and restarted. Afterwards:
//!
//! - every write acknowledged with a receipt is readable and opens to what
//!   was written (and, when indexing was acknowledged too, search finds it);
//! - the audit log is consistent with every checkpoint signed before a kill;
//! - no key wrapper lacks its record version, no record version lacks its
//!   main wrapper, and the search index holds exactly the entries the
//!   keyword states account for: none orphaned, none missing.
//!
//! The default run kills 3 times per backend; `scripts/crash.sh` sets
//! `ASCLEPIOS_CRASH_KILLS` for the long run. PostgreSQL must answer at
//! 127.0.0.1:5432 (database `test`) or at `ASCLEPIOS_TEST_POSTGRES_URL`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use asclepios_audit::Checkpoint;
use asclepios_client::{Client, ClientError};
use asclepios_crypto::sse::Mitra;
use asclepios_deploy::split::write_records_dir;
use asclepios_deploy::{init::init, Config};
use common::free_port;
use rand_core::RngCore;

const PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
/// Clients writing at once, each as its own identity: the patient and the
/// two members of the patient's care team.
const WRITERS: [&str; 3] = ["dr-heart", "nurse-ward", "pat-00000"];
const PATIENT: &str = "pat-00000";

fn pg_url() -> String {
    std::env::var("ASCLEPIOS_TEST_POSTGRES_URL").unwrap_or_else(|_| PG_URL.into())
}

fn kills() -> usize {
    std::env::var("ASCLEPIOS_CRASH_KILLS")
        .ok()
        .and_then(|k| k.parse().ok())
        .unwrap_or(3)
}

/// A write a client made, and how far it was acknowledged.
#[derive(Clone, Debug)]
struct Write {
    patient: String,
    record_id: String,
    resource: serde_json::Value,
    /// The record service's receipt arrived.
    stored: bool,
    /// The authority's index receipt arrived too.
    indexed: bool,
}

/// Which of the two services a kill takes down.
#[derive(Clone, Copy, Debug)]
enum Victim {
    Authority,
    Records,
    Both,
}

/// One trust domain's `asclepios serve <domain>` child process.
struct Process {
    domain: &'static str,
    dir: PathBuf,
    log: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Process {
    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_asclepios"))
            .args(["serve", self.domain, "--dir"])
            .arg(&self.dir)
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("start `asclepios serve {}`: {e}", self.domain));
        self.child = Some(child);
    }

    fn until_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "`asclepios serve {}` exited with {status}:\n{}",
                    self.domain,
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "`asclepios serve {}` did not listen within 60 s",
                self.domain
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL (std's `Child::kill` on Unix), then reap.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The two trust domains, each in a process of its own.
struct Service {
    /// The authority's directory (the users' identity files are there).
    dir: PathBuf,
    authority: Process,
    records: Process,
}

impl Service {
    fn start(&mut self) {
        for p in [&mut self.authority, &mut self.records] {
            if p.child.is_none() {
                p.spawn();
            }
        }
        self.authority.until_listening();
        self.records.until_listening();
    }

    fn kill(&mut self, victim: Victim) {
        match victim {
            Victim::Authority => self.authority.kill(),
            Victim::Records => self.records.kill(),
            Victim::Both => {
                self.authority.kill();
                self.records.kill();
            }
        }
    }

    fn client(&self, id: &str) -> Client {
        Client::connect(
            &self.dir,
            id,
            &format!("https://localhost:{}", self.authority.port),
            &format!("https://localhost:{}", self.records.port),
        )
        .unwrap()
    }
}

async fn write_until(
    client: Client,
    writer: usize,
    policy: String,
    stop: Arc<AtomicBool>,
    writes: Arc<Mutex<Vec<Write>>>,
) {
    let mut synth = asclepios_fhir::synth::Generator::new(writer as u64);
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let patient = PATIENT;
        let mut resource = synth.blood_pressure(patient);
        resource["id"] = format!("crash-{writer}-{n}").into();
        // The naming key is fetched once (then kept): if the authority is
        // down at that moment, this write is cut short like any other.
        let (record_id, outcome) = match client.record_id_for(patient, &resource).await {
            Ok(record_id) => {
                let outcome = client
                    .put_record(patient, &record_id, 1, &resource, &policy)
                    .await;
                (record_id, outcome)
            }
            Err(e) => (String::new(), Err(e)),
        };
        let (stored, indexed) = match outcome {
            Ok(_) => (true, true),
            Err(ClientError::NotIndexed(_)) => (true, false),
            // The service died under the request: the write may or may not
            // have landed. Wait for it to come back.
            Err(e) => {
                if std::env::var_os("ASCLEPIOS_CRASH_VERBOSE").is_some() {
                    eprintln!("{record_id}: {e}");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                (false, false)
            }
        };
        writes.lock().unwrap().push(Write {
            patient: patient.into(),
            record_id,
            resource,
            stored,
            indexed,
        });
    }
}

async fn latest_checkpoint(auditor: &Client) -> Checkpoint {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match auditor.latest_checkpoint().await {
            Ok(cp) => return cp,
            Err(e) if Instant::now() > deadline => panic!("no checkpoint: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

async fn crash_and_check(postgres: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("authority");
    let records_dir = tmp.path().join("records");
    let mut config = Config::development();
    let (authority, records) = (free_port(), free_port());
    config.authority.listen = format!("127.0.0.1:{authority}");
    config.records.listen = format!("127.0.0.1:{records}");
    let schema = format!("asclepios_crash_{}_{}", std::process::id(), authority);
    if postgres {
        config.store.url = pg_url();
        config.store.schema = Some(schema.clone());
    }
    let (a, r) = (dir.clone(), records_dir.clone());
    tokio::task::spawn_blocking(move || {
        init(&a, &config)?;
        write_records_dir(&a, &r)
    })
    .await
    .unwrap()
    .unwrap_or_else(|e| {
        panic!(
            "init failed: {e}\n(the PostgreSQL case needs a server at {}; start it with \
                 `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`)",
            pg_url()
        )
    });
    let mut service = Service {
        dir: dir.clone(),
        authority: Process {
            domain: "authority",
            dir: dir.clone(),
            log: tmp.path().join("authority.log"),
            port: authority,
            child: None,
        },
        records: Process {
            domain: "records",
            dir: records_dir.clone(),
            log: tmp.path().join("records.log"),
            port: records,
            child: None,
        },
    };
    service.start();

    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(Mutex::new(Vec::new()));
    let policy = Config::load(&dir).unwrap().default_policy(PATIENT);
    let mut tasks = Vec::new();
    for (i, id) in WRITERS.iter().enumerate() {
        let mut client = service.client(id);
        client.refresh_key().await.unwrap();
        tasks.push(tokio::spawn(write_until(
            client,
            i,
            policy.clone(),
            stop.clone(),
            writes.clone(),
        )));
    }
    let mut auditor = service.client("auditor-ann");
    auditor.refresh_key().await.unwrap();

    // Kill at random moments, the authority, the record service or both;
    // keep the last checkpoint signed before each.
    let mut checkpoints = Vec::new();
    for _ in 0..kills() {
        let pause = 300 + u64::from(rand_core::OsRng.next_u32() % 1200);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        checkpoints.push(latest_checkpoint(&auditor).await);
        let victim = [Victim::Authority, Victim::Records, Victim::Both]
            [rand_core::OsRng.next_u32() as usize % 3];
        service.kill(victim);
        service.start();
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let writes = writes.lock().unwrap().clone();
    let stored: Vec<&Write> = writes.iter().filter(|w| w.stored).collect();
    let lost = writes.len() - stored.len();
    eprintln!(
        "{}: {} kills, {} writes acknowledged ({} also indexed), {lost} cut short",
        if postgres { "PostgreSQL" } else { "SQLite" },
        checkpoints.len(),
        stored.len(),
        stored.iter().filter(|w| w.indexed).count(),
    );
    assert!(
        stored.len() > checkpoints.len(),
        "the writers made too little progress to test anything"
    );

    // Every acknowledged write reads back and opens to what was written.
    let mut reader = service.client("dr-heart");
    reader.refresh_key().await.unwrap();
    for w in &stored {
        let (opened, _) = reader
            .get_record(&w.patient, &w.record_id)
            .await
            .unwrap_or_else(|e| panic!("acknowledged {}/{} is lost: {e}", w.patient, w.record_id));
        assert_eq!(opened, w.resource, "{}/{} changed", w.patient, w.record_id);
    }

    // The log after the restarts extends every checkpoint signed before them.
    let view = auditor.audit_view().await.unwrap();
    for cp in &checkpoints {
        assert!(
            view.consistent_with(cp),
            "the log of size {} is not consistent with the checkpoint of size {} signed before a kill",
            view.checkpoint.size,
            cp.size
        );
    }

    // Search finds every write whose indexing was acknowledged, and every
    // match is a record that exists.
    {
        let patient = PATIENT;
        let matches = reader.search(&format!("patient:{patient}")).await.unwrap();
        let found: BTreeSet<&str> = matches.iter().map(|m| m.record_id.as_str()).collect();
        for w in stored.iter().filter(|w| w.indexed && w.patient == patient) {
            assert!(
                found.contains(w.record_id.as_str()),
                "indexed {}/{} is not found",
                w.patient,
                w.record_id
            );
        }
        for m in &matches {
            reader
                .get_sealed(&m.patient, &m.record_id)
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "search names {}/{}, which is not stored: {e}",
                        m.patient, m.record_id
                    )
                });
        }
    }
    drop(reader);
    drop(auditor);
    service.kill(Victim::Both);

    // The store itself: no orphaned wrapper, no version without its wrapper,
    // and the index entries are exactly those the keyword states describe.
    // (As the authority files them: per patient.)
    let keywords: BTreeSet<String> = writes
        .iter()
        .flat_map(|w| {
            asclepios_authority::search::scoped_keywords(
                &w.patient,
                &asclepios_client::search::record_keywords(&w.patient, &w.resource),
            )
        })
        .collect();
    let stores = Stores {
        authority: (dir.clone(), postgres.then(|| schema.clone())),
        records: (
            records_dir.clone(),
            postgres.then(|| format!("{schema}_records")),
        ),
    };
    tokio::task::spawn_blocking(move || check_store(&stores, &keywords))
        .await
        .unwrap();
    if postgres {
        let _ = tokio::task::spawn_blocking(move || {
            if let Ok(mut c) = postgres::Client::connect(&pg_url(), postgres::NoTls) {
                let _ = c.batch_execute(&format!(
                    "DROP SCHEMA IF EXISTS {schema} CASCADE; \
                     DROP SCHEMA IF EXISTS {schema}_records CASCADE; \
                     DROP ROLE IF EXISTS {schema}_records"
                ));
            }
        })
        .await;
    }
}

/// Rows of a query on either backend, each column as bytes.
fn query(dir: &Path, pg_schema: Option<&str>, sql: &str) -> Vec<Vec<Vec<u8>>> {
    match pg_schema {
        None => {
            let c = rusqlite::Connection::open(dir.join("asclepios.db")).unwrap();
            let mut stmt = c.prepare(sql).unwrap();
            let columns = stmt.column_count();
            stmt.query_map([], |row| {
                (0..columns)
                    .map(|i| {
                        Ok(match row.get_ref(i)? {
                            rusqlite::types::ValueRef::Blob(b) => b.to_vec(),
                            rusqlite::types::ValueRef::Text(t) => t.to_vec(),
                            rusqlite::types::ValueRef::Integer(n) => n.to_string().into_bytes(),
                            other => format!("{other:?}").into_bytes(),
                        })
                    })
                    .collect()
            })
            .unwrap()
            .map(Result::unwrap)
            .collect()
        }
        Some(schema) => {
            let mut c = postgres::Client::connect(&pg_url(), postgres::NoTls).unwrap();
            c.batch_execute(&format!("SET search_path TO {schema}"))
                .unwrap();
            c.query(sql, &[])
                .unwrap()
                .iter()
                .map(|row| {
                    (0..row.len())
                        .map(|i| match row.columns()[i].type_().name() {
                            "bytea" => row.get::<_, Vec<u8>>(i),
                            "text" => row.get::<_, String>(i).into_bytes(),
                            _ => row.get::<_, i64>(i).to_string().into_bytes(),
                        })
                        .collect()
                })
                .collect()
        }
    }
}

/// Each domain's directory and PostgreSQL schema (`None` on SQLite).
struct Stores {
    authority: (PathBuf, Option<String>),
    records: (PathBuf, Option<String>),
}

fn check_store(stores: &Stores, keywords: &BTreeSet<String>) {
    // Wrappers, versions and index entries are the record service's; the
    // keyword states and the search key the authority's.
    let (dir, pg_schema) = (&stores.records.0, stores.records.1.as_deref());
    let (authority_dir, authority_schema) = (&stores.authority.0, stores.authority.1.as_deref());
    let orphans = query(
        dir,
        pg_schema,
        "SELECT w.patient, w.record_id FROM key_wrappers w WHERE NOT EXISTS \
         (SELECT 1 FROM record_versions r WHERE r.patient = w.patient \
          AND r.record_id = w.record_id AND r.version = w.version)",
    );
    assert!(
        orphans.is_empty(),
        "{} orphaned key wrappers",
        orphans.len()
    );
    let unwrapped = query(
        dir,
        pg_schema,
        "SELECT r.patient, r.record_id FROM record_versions r WHERE NOT EXISTS \
         (SELECT 1 FROM key_wrappers w WHERE w.patient = r.patient \
          AND w.record_id = r.record_id AND w.version = r.version AND w.slot = 'main')",
    );
    assert!(
        unwrapped.is_empty(),
        "{} record versions without their key wrapper",
        unwrapped.len()
    );

    let mitra = Mitra::new(&asclepios_deploy::keys::sse_key(authority_dir).unwrap());
    let states: BTreeMap<Vec<u8>, Vec<u8>> = query(
        authority_dir,
        authority_schema,
        "SELECT row_id, sealed FROM sse_state",
    )
    .into_iter()
    .map(|mut r| (std::mem::take(&mut r[0]), std::mem::take(&mut r[1])))
    .collect();
    let mut expected = BTreeSet::new();
    // Entries are written before the keyword states that reach them are
    // swapped: a kill in between leaves entries just past a state's
    // counter (the next update writes over them), and one after a
    // compaction's swap leaves entries below its first counter. Neither is
    // reachable; anything else would be.
    let mut unreachable = BTreeSet::new();
    for keyword in keywords {
        let row = mitra.state_row(keyword);
        let state = match states.get(row.as_slice()) {
            Some(sealed) => mitra.open_state(&row, sealed).unwrap(),
            // Never indexed, or its first update cut short before the swap.
            None => Default::default(),
        };
        for token in mitra.tokens(keyword, &state) {
            expected.insert(token.addr.to_vec());
        }
        for token in mitra
            .tokens_between(keyword, 0, state.first)
            .into_iter()
            .chain(mitra.tokens_between(keyword, state.next, state.next + 4096))
        {
            unreachable.insert(token.addr.to_vec());
        }
    }
    let stored: BTreeSet<Vec<u8>> = query(dir, pg_schema, "SELECT addr FROM sse_index")
        .into_iter()
        .map(|mut r| std::mem::take(&mut r[0]))
        .collect();
    let orphaned = stored
        .difference(&expected)
        .filter(|a| !unreachable.contains(*a))
        .count();
    let missing = expected.difference(&stored).count();
    assert_eq!(
        (orphaned, missing),
        (0, 0),
        "index entries no keyword state accounts for, and entries a state expects but the index lacks"
    );
    eprintln!(
        "store checked: {} index entries over {} keywords, no orphans",
        stored.len(),
        keywords.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_concurrent_writers_sqlite() {
    crash_and_check(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_concurrent_writers_postgres() {
    crash_and_check(true).await;
}
