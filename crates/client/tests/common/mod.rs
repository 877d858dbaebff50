//! A deployment on SQLite or PostgreSQL with both services on loopback, and
//! a look at the raw bytes of its store.

#![allow(dead_code)]

use std::path::Path;

use asclepios_client::Client;
use asclepios_deploy::serve::{start, Listen, Services};
use asclepios_deploy::{init::init, Config};

const PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

pub fn pg_url() -> String {
    std::env::var("ASCLEPIOS_TEST_POSTGRES_URL").unwrap_or_else(|_| PG_URL.into())
}

pub struct Deployment {
    pub _tmp: tempfile::TempDir,
    pub dir: std::path::PathBuf,
    pub services: Services,
    pub pg_schema: Option<String>,
}

impl Drop for Deployment {
    fn drop(&mut self) {
        if let Some(schema) = self.pg_schema.clone() {
            // The blocking client cannot run on the test's async threads.
            let _ = std::thread::spawn(move || {
                if let Ok(mut c) = postgres::Client::connect(&pg_url(), postgres::NoTls) {
                    let _ = c.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"));
                }
            })
            .join();
        }
    }
}

pub async fn deploy(postgres: bool) -> Deployment {
    deploy_with(postgres, |_| {}).await
}

/// A deployment whose configuration `adjust` changes before `init` writes it.
pub async fn deploy_with(postgres: bool, adjust: impl FnOnce(&mut Config)) -> Deployment {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("deployment");
    let mut config = Config::development();
    // Short break-glass grants, so the test sees one expire.
    config.emergency.grant_seconds = 3;
    adjust(&mut config);
    let mut pg_schema = None;
    if postgres {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let schema = format!("asclepios_e2e_{}_{nanos}", std::process::id());
        config.store.url = pg_url();
        config.store.schema = Some(schema.clone());
        pg_schema = Some(schema);
    }
    let d = dir.clone();
    tokio::task::spawn_blocking(move || init(&d, &config))
        .await
        .unwrap()
        .unwrap_or_else(|e| {
            panic!(
                "init failed: {e}\n(the PostgreSQL case needs a server at {}; start it with \
                 `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`)",
                pg_url()
            )
        });
    let listen = Listen {
        authority: Some("127.0.0.1:0".into()),
        records: Some("127.0.0.1:0".into()),
    };
    let services = start(&dir, &listen).await.unwrap();
    Deployment {
        _tmp: tmp,
        dir,
        services,
        pg_schema,
    }
}

pub fn client(d: &Deployment, id: &str) -> Client {
    Client::connect(
        &d.dir,
        id,
        &format!("https://localhost:{}", d.services.authority.port()),
        &format!("https://localhost:{}", d.services.records.port()),
    )
    .unwrap()
}

pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// Every byte the store holds: the SQLite files, or every table of the schema.
pub fn raw_bytes(dir: &Path, pg_schema: Option<&str>) -> Vec<u8> {
    match pg_schema {
        None => ["asclepios.db", "asclepios.db-wal"]
            .iter()
            .filter_map(|f| std::fs::read(dir.join(f)).ok())
            .flatten()
            .collect(),
        Some(schema) => {
            let mut c = postgres::Client::connect(&pg_url(), postgres::NoTls).unwrap();
            let tables: Vec<String> = c
                .query(
                    "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1",
                    &[&schema],
                )
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect();
            let names: Vec<&str> = tables.iter().map(String::as_str).collect();
            table_bytes(dir, Some(schema), &names)
        }
    }
}

/// The bytes of every row of `tables`, binary columns as their raw bytes
/// (PostgreSQL's JSON shows `bytea` as hex, which would hide a plaintext).
pub fn table_bytes(dir: &Path, pg_schema: Option<&str>, tables: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    match pg_schema {
        None => {
            let c = rusqlite::Connection::open(dir.join("asclepios.db")).unwrap();
            for t in tables {
                let mut stmt = c.prepare(&format!("SELECT * FROM {t}")).unwrap();
                let columns = stmt.column_count();
                let mut rows = stmt.query([]).unwrap();
                while let Some(row) = rows.next().unwrap() {
                    for i in 0..columns {
                        match row.get_ref(i).unwrap() {
                            rusqlite::types::ValueRef::Blob(b) => out.extend_from_slice(b),
                            rusqlite::types::ValueRef::Text(b) => out.extend_from_slice(b),
                            rusqlite::types::ValueRef::Integer(n) => {
                                out.extend_from_slice(n.to_string().as_bytes())
                            }
                            _ => {}
                        }
                        out.push(0);
                    }
                }
            }
        }
        Some(schema) => {
            let mut c = postgres::Client::connect(&pg_url(), postgres::NoTls).unwrap();
            for t in tables {
                let sql = format!("SELECT row_to_json(x)::text FROM {schema}.{t} x");
                for row in c.query(&sql, &[]).unwrap() {
                    let text: String = row.get(0);
                    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
                    for v in json.as_object().unwrap().values() {
                        match v {
                            serde_json::Value::String(s) => match s.strip_prefix("\\x") {
                                Some(h) => out.extend(hex::decode(h).unwrap()),
                                None => out.extend_from_slice(s.as_bytes()),
                            },
                            other => out.extend_from_slice(other.to_string().as_bytes()),
                        }
                        out.push(0);
                    }
                }
            }
        }
    }
    out
}
