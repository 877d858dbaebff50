//! A revocation in the middle of an import (review findings H5 and M3),
//! played through the `asclepios` binary as the review played it: `import`
//! stores a patient's history as a lab while an administrator takes the
//! nurse off the patient's care team, twice. The two services run apart
//! (`serve authority`, `serve records`), where the record service learns of
//! a revocation only when told: the widest window for the race.
//!
//! Afterwards, on SQLite and PostgreSQL:
//! - every resource is stored, and `import` says so (nothing counted as
//!   "already stored" that is not, exit status 0);
//! - no key wrapper names the care-team attribute at a revoked version (the
//!   nurse's old key opens none of them);
//! - the care team's current doctor reads every record.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use asclepios_crypto::envelope::KeyWrapper;
use asclepios_crypto::policy::{attribute_name, attribute_version};
use asclepios_deploy::split::write_records_dir;
use asclepios_deploy::{init::init, Config};
use common::free_port;

const PATIENT: &str = "pat-00000";
const REVOKED: &str = "care-team:pat-00000";
const PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

fn pg_url() -> String {
    std::env::var("ASCLEPIOS_TEST_PG").unwrap_or_else(|_| PG_URL.to_string())
}

fn asclepios(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_asclepios"))
        .args(args)
        .output()
        .unwrap()
}

/// `asclepios records` as the care team's doctor.
fn doctors_records(dir: &str) -> std::process::Output {
    asclepios(&[
        "records",
        "--dir",
        dir,
        "--as",
        "dr-heart",
        "--patient",
        PATIENT,
    ])
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One trust domain's store, read as its database administrator would.
enum Db {
    Sqlite(PathBuf),
    Postgres(String),
}

impl Db {
    fn rows(&self, sql: &str) -> Vec<Vec<u8>> {
        match self {
            Db::Sqlite(dir) => {
                let c = rusqlite::Connection::open(dir.join("asclepios.db")).unwrap();
                let mut st = c.prepare(sql).unwrap();
                st.query_map([], |r| {
                    Ok(match r.get_ref(0)? {
                        rusqlite::types::ValueRef::Blob(b) => b.to_vec(),
                        rusqlite::types::ValueRef::Text(t) => t.to_vec(),
                        rusqlite::types::ValueRef::Integer(i) => i.to_string().into_bytes(),
                        other => panic!("{other:?}"),
                    })
                })
                .unwrap()
                .map(Result::unwrap)
                .collect()
            }
            Db::Postgres(schema) => {
                let (schema, sql) = (schema.clone(), sql.to_string());
                std::thread::spawn(move || {
                    let mut c = postgres::Client::connect(&pg_url(), postgres::NoTls).unwrap();
                    c.batch_execute(&format!("SET search_path TO {schema}"))
                        .unwrap();
                    c.query(&sql, &[])
                        .unwrap()
                        .iter()
                        .map(|r| match r.try_get::<_, Vec<u8>>(0) {
                            Ok(b) => b,
                            Err(_) => match r.try_get::<_, String>(0) {
                                Ok(s) => s.into_bytes(),
                                Err(_) => r.get::<_, i64>(0).to_string().into_bytes(),
                            },
                        })
                        .collect()
                })
                .join()
                .unwrap()
            }
        }
    }

    fn count(&self, sql: &str) -> u64 {
        String::from_utf8(self.rows(sql).remove(0))
            .unwrap()
            .parse()
            .unwrap()
    }

    /// Waits until the patient has at least `n` records stored.
    fn until_records(&self, n: u64, import: &mut Child) {
        let deadline = Instant::now() + Duration::from_secs(120);
        let sql = format!("SELECT COUNT(*) FROM record_versions WHERE patient = '{PATIENT}'");
        while self.count(&sql) < n {
            assert!(
                import.try_wait().unwrap().is_none(),
                "the import ended before the revocation"
            );
            assert!(Instant::now() < deadline, "the import makes no progress");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// `asclepios serve <domain>`, logging to `log`, killed when dropped.
fn serve(domain: &str, dir: &Path, log: &Path) -> Killed {
    let log = std::fs::File::create(log).unwrap();
    Killed(
        Command::new(env!("CARGO_BIN_EXE_asclepios"))
            .args(["serve", domain, "--dir"])
            .arg(dir)
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap(),
    )
}

fn set_nurse(dir: &str, attributes: &[&str]) {
    let mut args = vec![
        "user",
        "set-attrs",
        "nurse-ward",
        "--as",
        "admin-ada",
        "--dir",
        dir,
    ];
    for a in attributes {
        args.extend(["--attr", a]);
    }
    let out = asclepios(&args);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn scenario(postgres: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    let mut config = Config::development();
    let authority_port = free_port();
    config.authority.listen = format!("127.0.0.1:{authority_port}");
    config.records.listen = format!("127.0.0.1:{}", free_port());
    let records_dir = tmp.path().join("records");
    let (authority_db, records_db) = if postgres {
        let schema = format!("asclepios_race_{}_{authority_port}", std::process::id());
        config.store.url = pg_url();
        config.store.schema = Some(schema.clone());
        (
            Db::Postgres(schema.clone()),
            Db::Postgres(format!("{schema}_records")),
        )
    } else {
        (Db::Sqlite(dir.clone()), Db::Sqlite(records_dir.clone()))
    };
    init(&dir, &config)
        .and_then(|_| write_records_dir(&dir, &records_dir))
        .unwrap_or_else(|e| {
            panic!(
                "init failed: {e}\n(the PostgreSQL case needs a server at {}; start it with \
                 `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`)",
                pg_url()
            )
        });
    let d = dir.to_str().unwrap();
    let _authority = serve("authority", &dir, &tmp.path().join("authority.log"));
    let _records = serve("records", &records_dir, &tmp.path().join("records.log"));
    for listen in [&config.authority.listen, &config.records.listen] {
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(listen.as_str()).is_err() {
            assert!(Instant::now() < deadline, "{listen} does not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // The record service answers once it holds the authority's facts.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !doctors_records(d).status.success() {
        assert!(Instant::now() < deadline, "the record service is not ready");
        std::thread::sleep(Duration::from_millis(100));
    }

    let history = tmp.path().join("history.ndjson");
    let synth = asclepios(&["synth", "--patients", "1", "--encounters", "20"]);
    std::fs::write(&history, &synth.stdout).unwrap();
    let resources = synth
        .stdout
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .count() as u64;

    // Ends by itself once the services are gone, should the test fail.
    let mut import = Command::new(env!("CARGO_BIN_EXE_asclepios"))
        .args(["import", "--dir", d, "--as", "lab-central"])
        .arg(&history)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Off the care team while the lab writes, back on, and off again.
    records_db.until_records(resources / 5, &mut import);
    set_nurse(d, &["role:nurse", "dept:cardiology"]);
    records_db.until_records(resources / 2, &mut import);
    set_nurse(d, &["role:nurse", "dept:cardiology", REVOKED]);
    set_nurse(d, &["role:nurse", "dept:cardiology"]);
    let out = std::mem::replace(&mut import, Command::new("true").spawn().unwrap())
        .wait_with_output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains(&format!(
            "imported {resources} resource(s); 0 already stored"
        )),
        "{said}"
    );
    let stored = records_db.count(&format!(
        "SELECT COUNT(*) FROM record_versions WHERE patient = '{PATIENT}'"
    ));
    assert_eq!(stored, resources, "every resource is stored");

    // No wrapper names the care-team attribute below its current version.
    let current = authority_db.count(&format!(
        "SELECT version FROM attribute_versions WHERE attribute = '{REVOKED}'"
    ));
    assert_eq!(current, 2, "two revocations");
    let wrappers = records_db.rows(&format!(
        "SELECT wrapper FROM key_wrappers WHERE patient = '{PATIENT}'"
    ));
    assert_eq!(wrappers.len() as u64, resources);
    for bytes in &wrappers {
        let wrapper = KeyWrapper::from_bytes(bytes).unwrap();
        for leaf in wrapper.policy().leaves() {
            if attribute_name(leaf) == REVOKED {
                assert_eq!(
                    attribute_version(leaf),
                    current,
                    "a wrapper still names `{leaf}`: {}",
                    wrapper.policy()
                );
            }
        }
    }

    // The care team's doctor reads every record.
    let listed = doctors_records(d);
    assert!(listed.status.success());
    let listed = String::from_utf8_lossy(&listed.stdout).to_string();
    let ids: Vec<&str> = listed
        .split_whitespace()
        .filter(|w| w.len() == 33 && w.starts_with('r'))
        .collect();
    assert_eq!(ids.len() as u64, resources, "{listed}");
    read_all(&dir, &ids);
}

/// Reads every record as the care team's doctor, in one process.
fn read_all(dir: &Path, ids: &[&str]) {
    let config = Config::load(dir).unwrap();
    let url = |listen: &str| format!("https://localhost:{}", listen.rsplit(':').next().unwrap());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut doctor = asclepios_client::Client::connect(
            dir,
            "dr-heart",
            &url(&config.authority.listen),
            &url(&config.records.listen),
        )
        .unwrap();
        doctor.refresh_key().await.unwrap();
        for id in ids {
            doctor
                .get_record(PATIENT, id)
                .await
                .unwrap_or_else(|e| panic!("dr-heart cannot read {id}: {e}"));
        }
    });
}

#[test]
fn a_revocation_during_an_import_loses_and_leaks_nothing_on_sqlite() {
    scenario(false);
}

#[test]
fn a_revocation_during_an_import_loses_and_leaks_nothing_on_postgres() {
    scenario(true);
}
