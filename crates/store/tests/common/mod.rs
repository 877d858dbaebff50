//! Test backends: a SQLite file in a fresh temporary directory, and a fresh
//! PostgreSQL schema (dropped afterwards) on the server named by
//! `ASCLEPIOS_TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/test`).

#![allow(dead_code)]

use std::sync::atomic::{AtomicU32, Ordering};

use asclepios_store::{BackendKind, Store};

pub const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

pub fn postgres_url() -> String {
    std::env::var("ASCLEPIOS_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_POSTGRES_URL.into())
}

/// A backend under test, with raw SQL access for tampering.
pub enum Harness {
    Sqlite { dir: tempfile::TempDir },
    Postgres { url: String, schema: String },
}

fn unique_schema() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "asclepios_test_{}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        nanos
    )
}

impl Harness {
    pub fn new(kind: BackendKind) -> Self {
        match kind {
            BackendKind::Sqlite => Harness::Sqlite {
                dir: tempfile::tempdir().expect("temporary directory"),
            },
            BackendKind::Postgres => Harness::Postgres {
                url: postgres_url(),
                schema: unique_schema(),
            },
        }
    }

    pub fn kind(&self) -> BackendKind {
        match self {
            Harness::Sqlite { .. } => BackendKind::Sqlite,
            Harness::Postgres { .. } => BackendKind::Postgres,
        }
    }

    pub fn sqlite_path(&self) -> std::path::PathBuf {
        match self {
            Harness::Sqlite { dir } => dir.path().join("asclepios.db"),
            Harness::Postgres { .. } => unreachable!(),
        }
    }

    /// Opens (or reopens) the store.
    pub fn open(&self) -> Store {
        match self {
            Harness::Sqlite { .. } => Store::open_sqlite(&self.sqlite_path()).expect("open SQLite store"),
            Harness::Postgres { url, schema } => Store::open_postgres(url, Some(schema), 4)
                .unwrap_or_else(|e| {
                    panic!(
                        "the PostgreSQL tests need a server at {url} (set ASCLEPIOS_TEST_POSTGRES_URL to use another): {e}\n\
                         start it with: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
                    )
                }),
        }
    }

    /// The key authority's anchor file for this backend's store.
    pub fn anchor_path(&self) -> std::path::PathBuf {
        match self {
            Harness::Sqlite { dir } => dir.path().join("integrity.anchor"),
            Harness::Postgres { schema, .. } => {
                std::env::temp_dir().join(format!("{schema}.anchor"))
            }
        }
    }

    /// Opens (or reopens) the store as the key authority does: with its
    /// state authenticated under a fixed test key and anchored in a file.
    pub fn open_protected(&self) -> Result<Store, asclepios_store::StoreError> {
        self.open().with_integrity(
            asclepios_store::IntegrityKey::from_bytes(&[0x5a; 32]).unwrap(),
            Some(self.anchor_path()),
        )
    }

    /// Runs raw SQL behind the store's back (to tamper with it).
    pub fn raw(&self, sql: &str) {
        match self {
            Harness::Sqlite { .. } => {
                let conn = rusqlite::Connection::open(self.sqlite_path()).unwrap();
                conn.execute_batch(sql).unwrap();
            }
            Harness::Postgres { url, schema } => {
                let mut client = postgres::Client::connect(url, postgres::NoTls).unwrap();
                client
                    .batch_execute(&format!("SET search_path TO {schema}; {sql}"))
                    .unwrap();
            }
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Harness::Postgres { url, schema } = self {
            let _ = std::fs::remove_file(std::env::temp_dir().join(format!("{schema}.anchor")));
            let _ =
                std::fs::remove_file(std::env::temp_dir().join(format!("{schema}.anchor.lock")));
            if let Ok(mut client) = postgres::Client::connect(url, postgres::NoTls) {
                let _ = client.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"));
            }
        }
    }
}

/// Defines each listed test once per backend: `sqlite::NAME` and `postgres::NAME`.
#[macro_export]
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[test] fn $name() { super::$name(&super::common::Harness::new(asclepios_store::BackendKind::Sqlite)) })*
        }
        mod postgres {
            $(#[test] fn $name() { super::$name(&super::common::Harness::new(asclepios_store::BackendKind::Postgres)) })*
        }
    };
}
