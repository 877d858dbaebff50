//! asclepios storage: the one interface the services use, over two backends.
//!
//! * **SQLite** ([`Store::open_sqlite`]): the embedded default, one file in the
//!   data directory, write-ahead log, `synchronous = FULL`.
//! * **PostgreSQL** ([`Store::open_postgres`]): the production backend, a
//!   bounded connection pool.
//!
//! Every operation is written once, as SQL over a small transaction
//! abstraction (`db::Tx`) that both backends implement, and is atomic: it
//! commits in one transaction before returning, so a write that returned `Ok`
//! survives a `kill -9` of the process.
//!
//! What is stored is ciphertext and opaque bytes: sealed record bodies
//! (append-only history per record), data-key wrappers (separate rows,
//! replaceable for re-wrap, deletable for crypto-shredding), the
//! searchable-encryption index, the audit log (entries, subtree hashes,
//! checkpoints; see [`asclepios_audit::LogStore`]) and the key authority's
//! directory (identities, attribute versions, consents, emergency grants).
//!
//! ## Distribution (Citus)
//!
//! Tables are keyed so a distributed PostgreSQL can shard them:
//!
//! | table | distribution column | colocated with |
//! |---|---|---|
//! | `record_versions`, `key_wrappers`, `consents`, `emergency_grants` | `patient` (pseudonym) | each other |
//! | `sse_index` | `addr` (pseudorandom, spreads evenly) | none |
//! | `sse_state` | `row_id` (pseudorandom) | none |
//! | `fe_people`, `fe_values`, `fe_slots`, `fe_cohorts` | `study` | each other |
//! | `fe_releases` | `population` (one per deployment) | none |
//! | `audit_logs`, `audit_entries`, `audit_nodes`, `audit_checkpoints` | `log_id` | each other |
//! | `identities`, `identity_attributes`, `attribute_versions` | reference tables (small, replicated) | |
//!
//! Every query on a distributed table names its distribution column, so it
//! routes to one shard. An index update ([`Store::sse_apply`]) spans several
//! shards of `sse_index` and `sse_state` in one (two-phase) transaction.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod audit;
mod components;
mod db;
mod directory;
mod integrity;
pub use integrity::IntegrityKey;
mod migrations;
mod postgres;
pub use postgres::create_service_role as create_postgres_service_role;
pub use postgres::redact as redact_url;
mod nonces;
pub use nonces::PRUNE_EVERY as NONCE_PRUNE_EVERY;
mod records;
mod sqlite;
mod sse;
mod stats;

use std::path::Path;

pub use components::Component;
pub use directory::{
    versioned_attribute, AttributeGrant, Consent, ConsentStatus, DirectoryState, EmergencyGrant,
    Identity, IdentityStatus,
};
pub use migrations::SCHEMA_VERSION;
pub use records::{Erased, RecordVersion, Wrapper, WrapperRow};
pub use sse::{SseBatch, StateWrite};
pub use stats::{PersonSlot, ReleaseRow};

use db::Tx;

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached or opened; the message says what to do.
    #[error("{0}")]
    Unavailable(String),
    /// SQLite reported an error.
    #[error("SQLite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL reported an error.
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] ::postgres::Error),
    /// The write conflicts with what is stored (e.g. a version that exists).
    #[error("conflict: {0}")]
    Conflict(String),
    /// Nothing is stored under that key.
    #[error("not found: {0}")]
    NotFound(String),
    /// Stored data is not what this code wrote.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// An argument outside what the store accepts.
    #[error("invalid input: {0}")]
    Invalid(String),
    /// The database schema is newer than this build.
    #[error("schema: {0}")]
    Schema(String),
    /// The key authority's state was changed, deleted or rolled back outside
    /// the authority (see [`Store::with_integrity`]). Sticky: the store
    /// refuses every protected operation from then on.
    #[error("integrity alarm: {0}")]
    Integrity(String),
}

enum Backend {
    Sqlite(sqlite::Sqlite),
    Postgres(postgres::Postgres),
}

/// The storage interface, on SQLite or PostgreSQL. Cloning shares the
/// connections and the integrity state.
#[derive(Clone)]
pub struct Store {
    backend: std::sync::Arc<Backend>,
    integrity: Option<std::sync::Arc<integrity::Integrity>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match *self.backend {
            Backend::Sqlite(_) => "Store(sqlite)",
            Backend::Postgres(_) => "Store(postgres)",
        })
    }
}

/// Which database a store runs on.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum BackendKind {
    /// SQLite.
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

impl BackendKind {
    /// `"sqlite"` or `"postgres"`.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Sqlite => "sqlite",
            BackendKind::Postgres => "postgres",
        }
    }
}

impl Store {
    /// Opens (creating if needed) the SQLite database at `path` and applies
    /// pending migrations.
    pub fn open_sqlite(path: &Path) -> Result<Self, StoreError> {
        let store = Store {
            backend: std::sync::Arc::new(Backend::Sqlite(sqlite::Sqlite::open(path)?)),
            integrity: None,
        };
        migrations::apply(&store)?;
        Ok(store)
    }

    /// Connects to PostgreSQL (`url` as libpq accepts it, e.g.
    /// `postgres://user@127.0.0.1:5432/db`), optionally in `schema` (created
    /// if missing), with at most `max_connections`, and applies pending
    /// migrations.
    pub fn open_postgres(
        url: &str,
        schema: Option<&str>,
        max_connections: usize,
    ) -> Result<Self, StoreError> {
        let store = Store {
            backend: std::sync::Arc::new(Backend::Postgres(postgres::Postgres::open(
                url,
                schema,
                max_connections,
            )?)),
            integrity: None,
        };
        migrations::apply(&store)?;
        Ok(store)
    }

    /// Opens a store from a location: `postgres://…` / `postgresql://…` URLs
    /// go to PostgreSQL, anything else is a SQLite file path
    /// (`sqlite://` prefix optional).
    pub fn open(location: &str) -> Result<Self, StoreError> {
        if location.starts_with("postgres://") || location.starts_with("postgresql://") {
            Self::open_postgres(location, None, 16)
        } else {
            let path = location.strip_prefix("sqlite://").unwrap_or(location);
            Self::open_sqlite(Path::new(path))
        }
    }

    /// Which database this is.
    pub fn kind(&self) -> BackendKind {
        match *self.backend {
            Backend::Sqlite(_) => BackendKind::Sqlite,
            Backend::Postgres(_) => BackendKind::Postgres,
        }
    }

    /// Whether the database answers a trivial read (readiness checks).
    pub fn ping(&self) -> Result<(), StoreError> {
        self.read(|tx| tx.query("SELECT 1", &[]).map(drop))
    }

    /// Runs `f` in one transaction, committed before this returns.
    fn transaction<T>(
        &self,
        f: impl FnOnce(&mut dyn Tx) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        match &*self.backend {
            Backend::Sqlite(b) => b.transaction(f),
            Backend::Postgres(b) => b.transaction(f),
        }
    }

    /// Runs read-only statements outside an explicit transaction: one round
    /// trip per statement on PostgreSQL instead of three.
    fn read<T>(
        &self,
        f: impl FnOnce(&mut dyn Tx) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        match &*self.backend {
            Backend::Sqlite(b) => b.read(f),
            Backend::Postgres(b) => b.read(f),
        }
    }

    /// Inserts raw rows into a scratch table in one transaction: the floor
    /// that benchmarks compare durable appends with. Not part of the schema
    /// the services use; only built with the `bench-hooks` feature.
    #[cfg(feature = "bench-hooks")]
    pub fn bench_raw_insert(&self, rows: &[(u64, &[u8])]) -> Result<(), StoreError> {
        self.transaction(|tx| {
            let rows = rows
                .iter()
                .map(|(k, v)| Ok(vec![db::int(*k)?, db::Value::from(*v)]))
                .collect::<Result<Vec<_>, StoreError>>()?;
            tx.insert_many("bench_raw", &["k", "v"], &rows)
        })
    }

    /// Creates or empties the benchmark scratch table.
    #[cfg(feature = "bench-hooks")]
    pub fn bench_reset(&self) -> Result<(), StoreError> {
        let ddl = migrations::bench_table(self.kind());
        self.transaction(|tx| {
            tx.exec(&ddl, &[])?;
            tx.exec("DELETE FROM bench_raw", &[]).map(|_| ())
        })
    }
}

/// Seconds since the Unix epoch, as stored.
pub(crate) fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
