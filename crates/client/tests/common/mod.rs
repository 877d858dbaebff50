//! A deployment as it runs in production: the key authority and the record
//! service apart, each from its own data directory on its own store (SQLite
//! files, or PostgreSQL schemas of their own), talking over mutual TLS on
//! loopback; and a look at the raw bytes of both stores.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use asclepios_client::Client;
use asclepios_deploy::init::{init, RECORD_SERVICE_IDENTITY};
use asclepios_deploy::serve::{start_authority, start_records, Service};
use asclepios_deploy::split::write_records_dir;
use asclepios_deploy::Config;

const PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

pub fn pg_url() -> String {
    std::env::var("ASCLEPIOS_TEST_POSTGRES_URL").unwrap_or_else(|_| PG_URL.into())
}

/// One of the two trust domains, each with its own directory and store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Domain {
    Authority,
    Records,
}

pub struct Deployment {
    pub _tmp: tempfile::TempDir,
    /// The key authority's directory: the deployment `init` wrote, with
    /// every user's identity files.
    pub dir: PathBuf,
    /// The record service's own directory.
    pub records_dir: PathBuf,
    pub authority_url: String,
    pub records_url: String,
    pub authority_port: u16,
    pub records_port: u16,
    pub authority: Option<Service>,
    pub records: Option<Service>,
    /// The authority's PostgreSQL schema (the record service's is
    /// `<schema>_records`), or `None` on SQLite.
    pub pg_schema: Option<String>,
}

impl Drop for Deployment {
    fn drop(&mut self) {
        // Stop both before their schemas go.
        drop(self.records.take());
        drop(self.authority.take());
        if let Some(schema) = self.pg_schema.clone() {
            // The blocking client cannot run on the test's async threads.
            let _ = std::thread::spawn(move || {
                if let Ok(mut c) = postgres::Client::connect(&pg_url(), postgres::NoTls) {
                    let _ = c.batch_execute(&format!(
                        "DROP SCHEMA IF EXISTS {schema} CASCADE; \
                         DROP SCHEMA IF EXISTS {schema}_records CASCADE; \
                         DROP ROLE IF EXISTS {schema}_records"
                    ));
                }
            })
            .join();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub async fn deploy(postgres: bool) -> Deployment {
    deploy_with(postgres, |_| {}).await
}

/// A deployment whose configuration `adjust` changes before `init` writes it.
pub async fn deploy_with(postgres: bool, adjust: impl FnOnce(&mut Config)) -> Deployment {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("authority");
    let records_dir = tmp.path().join("records");
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
    let (authority_port, records_port) = (free_port(), free_port());
    let mut d = Deployment {
        _tmp: tmp,
        dir,
        records_dir,
        authority_url: format!("https://localhost:{authority_port}"),
        records_url: format!("https://localhost:{records_port}"),
        authority_port,
        records_port,
        authority: None,
        records: None,
        pg_schema,
    };
    d.start_records().await.expect("the record service starts");
    d.start_authority().await.expect("the authority starts");
    d.until_ready().await;
    d
}

impl Deployment {
    /// (Re)starts the record service on its port.
    pub async fn start_records(&mut self) -> Result<(), asclepios_deploy::Error> {
        let listen = format!("127.0.0.1:{}", self.records_port);
        let service = start_records(&self.records_dir, Some(&listen), &self.authority_url).await?;
        self.records = Some(service);
        Ok(())
    }

    /// (Re)starts the key authority on its port.
    pub async fn start_authority(&mut self) -> Result<(), asclepios_deploy::Error> {
        let listen = format!("127.0.0.1:{}", self.authority_port);
        let service = start_authority(&self.dir, Some(&listen), &self.records_url).await?;
        self.authority = Some(service);
        Ok(())
    }

    /// Waits until the record service holds the authority's first facts
    /// (until then it refuses everyone with 503).
    pub async fn until_ready(&self) {
        let probe = connection(self, Domain::Records, "pat-00000");
        let path = format!("/v1/audit/entries?start={}", u64::MAX);
        for _ in 0..200 {
            let answer = probe
                .send(reqwest::Method::GET, &path, Vec::new())
                .await
                .expect("the record service answers");
            match answer.status().as_u16() {
                503 => tokio::time::sleep(Duration::from_millis(50)).await,
                200 => return,
                other => panic!("the record service is not ready: {other}"),
            }
        }
        panic!("the record service never got the authority's facts");
    }

    /// The directory holding identity `id`'s files: the record service's
    /// own identity lives in its directory, every other in the authority's.
    pub fn identity_dir(&self, id: &str) -> &Path {
        if id == RECORD_SERVICE_IDENTITY {
            &self.records_dir
        } else {
            &self.dir
        }
    }

    /// A domain's data directory and PostgreSQL schema.
    pub fn store_of(&self, domain: Domain) -> (PathBuf, Option<String>) {
        match domain {
            Domain::Authority => (self.dir.clone(), self.pg_schema.clone()),
            Domain::Records => (
                self.records_dir.clone(),
                self.pg_schema.as_ref().map(|s| format!("{s}_records")),
            ),
        }
    }

    /// Every byte both stores hold.
    pub async fn raw_bytes(&self) -> Vec<u8> {
        let stores = [
            self.store_of(Domain::Authority),
            self.store_of(Domain::Records),
        ];
        tokio::task::spawn_blocking(move || {
            stores
                .iter()
                .flat_map(|(dir, schema)| raw_bytes(dir, schema.as_deref()))
                .collect()
        })
        .await
        .unwrap()
    }

    /// Every byte one domain's store holds.
    pub async fn raw_bytes_of(&self, domain: Domain) -> Vec<u8> {
        let (dir, schema) = self.store_of(domain);
        tokio::task::spawn_blocking(move || raw_bytes(&dir, schema.as_deref()))
            .await
            .unwrap()
    }

    /// The bytes of every row of `tables` in both stores.
    pub async fn table_bytes(&self, tables: &[&str]) -> Vec<u8> {
        let stores = [
            self.store_of(Domain::Authority),
            self.store_of(Domain::Records),
        ];
        let tables: Vec<String> = tables.iter().map(|t| t.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            let names: Vec<&str> = tables.iter().map(String::as_str).collect();
            stores
                .iter()
                .flat_map(|(dir, schema)| table_bytes(dir, schema.as_deref(), &names))
                .collect()
        })
        .await
        .unwrap()
    }

    /// The first column of `sql`'s rows (binary) on a domain's store, as its
    /// database administrator reads them.
    pub async fn table_rows(&self, domain: Domain, sql: &str) -> Vec<Vec<u8>> {
        let (dir, schema) = self.store_of(domain);
        let sql = sql.to_string();
        tokio::task::spawn_blocking(move || match schema {
            None => {
                let c = rusqlite::Connection::open(dir.join("asclepios.db")).unwrap();
                let mut st = c.prepare(&sql).unwrap();
                st.query_map([], |r| r.get::<_, Vec<u8>>(0))
                    .unwrap()
                    .map(Result::unwrap)
                    .collect()
            }
            Some(schema) => {
                let mut c = postgres::Client::connect(&pg_url(), postgres::NoTls).unwrap();
                c.batch_execute(&format!("SET search_path TO {schema}"))
                    .unwrap();
                c.query(&sql, &[])
                    .unwrap()
                    .iter()
                    .map(|r| r.get::<_, Vec<u8>>(0))
                    .collect()
            }
        })
        .await
        .unwrap()
    }

    /// Runs `sql` on a domain's store as its database administrator would.
    pub async fn as_db_admin(&self, domain: Domain, sql: &str) {
        let (dir, schema) = self.store_of(domain);
        let sql = sql.to_string();
        tokio::task::spawn_blocking(move || match schema {
            None => rusqlite::Connection::open(dir.join("asclepios.db"))
                .unwrap()
                .execute_batch(&sql)
                .unwrap(),
            Some(schema) => postgres::Client::connect(&pg_url(), postgres::NoTls)
                .unwrap()
                .batch_execute(&format!("SET search_path TO {schema}; {sql}"))
                .unwrap(),
        })
        .await
        .unwrap()
    }
}

pub fn client(d: &Deployment, id: &str) -> Client {
    Client::connect(&d.dir, id, &d.authority_url, &d.records_url).unwrap()
}

/// A signed connection to one of the services as identity `id`.
pub fn connection(d: &Deployment, domain: Domain, id: &str) -> asclepios_net::client::SignedClient {
    let layout = asclepios_deploy::directory::Layout::new(d.identity_dir(id));
    let (cert, key) = layout.identity(id);
    let read =
        |p: PathBuf| std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let (url, name) = match domain {
        Domain::Authority => (
            &d.authority_url,
            asclepios_deploy::config::AUTHORITY_TLS_NAME,
        ),
        Domain::Records => (&d.records_url, asclepios_deploy::config::RECORDS_TLS_NAME),
    };
    asclepios_net::client::SignedClient::new(
        url,
        name,
        id,
        &read(layout.ca_cert()),
        &read(cert),
        &read(key),
    )
    .unwrap()
}

/// The status and message of a refusal; any other outcome fails the test.
pub fn refusal(e: asclepios_client::ClientError) -> (u16, String) {
    match e {
        asclepios_client::ClientError::Refused {
            status, message, ..
        } => (status, message),
        other => panic!("expected a refusal, got {other}"),
    }
}

pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// Every byte one store holds: the SQLite files, or every table of the
/// schema.
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

/// Adds an identity as `asclepios user add` does: its certificate from the
/// deployment CA, its directory entry from the authority (as `admin-ada`).
pub async fn add_identity(d: &Deployment, id: &str, kind: &str, attributes: &[&str]) {
    let (dir, owned) = (d.dir.clone(), id.to_string());
    let public_key = tokio::task::spawn_blocking(move || {
        asclepios_deploy::directory::issue_identity_files(&dir, &owned)
    })
    .await
    .unwrap()
    .unwrap();
    client(d, "admin-ada")
        .register_identity(&asclepios_api::admin::Registration {
            id: id.into(),
            kind: kind.into(),
            display_name: id.into(),
            public_key: hex::encode(public_key),
            attributes: attributes.iter().map(|a| a.to_string()).collect(),
        })
        .await
        .unwrap_or_else(|e| panic!("registering {id}: {e}"));
}
