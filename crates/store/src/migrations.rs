//! Versioned schema migrations, applied in order on open, each in its own
//! transaction together with its row in `asclepios_schema`.
//!
//! DDL is written once with `{INT}` and `{BYTES}` for the two type names that
//! differ (`INTEGER`/`BLOB` on SQLite, `BIGINT`/`BYTEA` on PostgreSQL).

use crate::db::Value;
use crate::{BackendKind, Store, StoreError};

struct Migration {
    version: i64,
    description: &'static str,
    ddl: &'static str,
}

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "records, key wrappers, SSE index, audit log, authority directory",
        ddl: r#"
CREATE TABLE record_versions (
    patient     TEXT    NOT NULL,
    record_id   TEXT    NOT NULL,
    version     {INT}   NOT NULL,
    body        {BYTES} NOT NULL,
    created_at  {INT}   NOT NULL,
    PRIMARY KEY (patient, record_id, version)
);
CREATE TABLE key_wrappers (
    patient     TEXT    NOT NULL,
    record_id   TEXT    NOT NULL,
    version     {INT}   NOT NULL,
    slot        TEXT    NOT NULL,
    wrapper     {BYTES} NOT NULL,
    epoch       {INT}   NOT NULL,
    updated_at  {INT}   NOT NULL,
    PRIMARY KEY (patient, record_id, version, slot)
);
CREATE TABLE sse_index (
    addr        {BYTES} NOT NULL PRIMARY KEY,
    value       {BYTES} NOT NULL
);
CREATE TABLE audit_logs (
    log_id      TEXT    NOT NULL PRIMARY KEY,
    size        {INT}   NOT NULL
);
CREATE TABLE audit_entries (
    log_id          TEXT    NOT NULL,
    idx             {INT}   NOT NULL,
    entry           {BYTES} NOT NULL,
    subtree_hashes  {BYTES} NOT NULL,
    PRIMARY KEY (log_id, idx)
);
CREATE TABLE audit_checkpoints (
    log_id      TEXT    NOT NULL,
    size        {INT}   NOT NULL,
    note        TEXT    NOT NULL,
    created_at  {INT}   NOT NULL,
    PRIMARY KEY (log_id, size)
);
CREATE TABLE identities (
    identity_id  TEXT   NOT NULL PRIMARY KEY,
    kind         TEXT   NOT NULL,
    display_name TEXT   NOT NULL,
    public_key   {BYTES},
    status       TEXT   NOT NULL,
    created_at   {INT}  NOT NULL,
    updated_at   {INT}  NOT NULL
);
CREATE TABLE attribute_versions (
    attribute   TEXT    NOT NULL PRIMARY KEY,
    version     {INT}   NOT NULL
);
CREATE TABLE identity_attributes (
    identity_id     TEXT  NOT NULL,
    attribute       TEXT  NOT NULL,
    granted_version {INT} NOT NULL,
    granted_at      {INT} NOT NULL,
    revoked_at      {INT},
    PRIMARY KEY (identity_id, attribute)
);
CREATE INDEX identity_attributes_by_attribute ON identity_attributes (attribute);
CREATE TABLE consents (
    patient     TEXT    NOT NULL,
    consent_id  TEXT    NOT NULL,
    version     {INT}   NOT NULL,
    grantee     TEXT    NOT NULL,
    scope       TEXT    NOT NULL,
    status      TEXT    NOT NULL,
    document    {BYTES},
    updated_at  {INT}   NOT NULL,
    PRIMARY KEY (patient, consent_id, version)
);
CREATE TABLE emergency_grants (
    patient     TEXT    NOT NULL,
    grant_id    TEXT    NOT NULL,
    clinician   TEXT    NOT NULL,
    reason      TEXT    NOT NULL,
    issued_at   {INT}   NOT NULL,
    expires_at  {INT}   NOT NULL,
    reviewed_by TEXT,
    reviewed_at {INT},
    PRIMARY KEY (patient, grant_id)
);
CREATE INDEX emergency_grants_unreviewed ON emergency_grants (reviewed_at, issued_at);
"#,
    },
    Migration {
        version: 2,
        description:
            "searchable-encryption client state (sealed keyword counters and record keyword lists)",
        ddl: r#"
CREATE TABLE sse_state (
    row_id      {BYTES} NOT NULL PRIMARY KEY,
    sealed      {BYTES} NOT NULL
);
"#,
    },
    Migration {
        version: 3,
        description:
            "functional-encryption statistics: slot keys (sealed), encrypted values, issued cohorts",
        ddl: r#"
CREATE TABLE fe_slots (
    study       TEXT    NOT NULL,
    slot        {INT}   NOT NULL,
    provider    TEXT    NOT NULL,
    sealed_key  {BYTES} NOT NULL,
    PRIMARY KEY (study, slot)
);
CREATE TABLE fe_values (
    study       TEXT    NOT NULL,
    label       TEXT    NOT NULL,
    slot        {INT}   NOT NULL,
    ciphertext  {BYTES} NOT NULL,
    PRIMARY KEY (study, label, slot)
);
CREATE TABLE fe_cohorts (
    study       TEXT    NOT NULL,
    cohort_id   TEXT    NOT NULL,
    slots       {BYTES} NOT NULL,
    PRIMARY KEY (study, cohort_id)
);
"#,
    },
    Migration {
        version: 4,
        description: "attested components: the latest appraisal of each component identity",
        ddl: r#"
CREATE TABLE components (
    identity_id TEXT    NOT NULL PRIMARY KEY,
    format      TEXT    NOT NULL,
    measurement TEXT    NOT NULL,
    trust       TEXT    NOT NULL,
    appraisal   TEXT    NOT NULL,
    key_sha256  {BYTES} NOT NULL,
    attested_at {INT}   NOT NULL,
    expires_at  {INT}   NOT NULL
);
"#,
    },
    Migration {
        version: 5,
        description: "auditors' sealing keys: audit events are sealed to the current auditors of the directory",
        ddl: r#"
CREATE TABLE auditor_keys (
    identity_id TEXT    NOT NULL PRIMARY KEY,
    public_key  {BYTES} NOT NULL,
    created_at  {INT}   NOT NULL
);
"#,
    },
    Migration {
        version: 6,
        description: "the key authority's state authenticated: a tag per partition of its tables, and a head over the tags",
        ddl: r#"
CREATE TABLE integrity_tags (
    tbl         TEXT    NOT NULL,
    part        TEXT    NOT NULL,
    tag         {BYTES} NOT NULL,
    PRIMARY KEY (tbl, part)
);
CREATE TABLE integrity_head (
    id          {INT}   NOT NULL PRIMARY KEY,
    seq         {INT}   NOT NULL,
    tag_count   {INT}   NOT NULL,
    tag_sum     {BYTES} NOT NULL,
    mac         {BYTES} NOT NULL
);
"#,
    },
    Migration {
        version: 7,
        description: "audit entries tagged with their subject (a keyed patient tag)",
        ddl: r#"
ALTER TABLE audit_entries ADD COLUMN subject {BYTES};
CREATE INDEX audit_entries_by_subject ON audit_entries (log_id, subject, idx)
"#,
    },
    Migration {
        version: 8,
        description: "statistics slots are people (one per patient and study) and releases are kept for the whole population",
        ddl: r#"
CREATE TABLE fe_people (
    study       TEXT    NOT NULL,
    slot        {INT}   NOT NULL,
    patient     TEXT    NOT NULL,
    provider    TEXT    NOT NULL,
    sealed_key  {BYTES} NOT NULL,
    PRIMARY KEY (study, slot),
    UNIQUE (study, patient)
);
CREATE TABLE fe_releases (
    population  TEXT    NOT NULL,
    release_id  TEXT    NOT NULL,
    study       TEXT    NOT NULL,
    label       TEXT    NOT NULL,
    patients    {BYTES} NOT NULL,
    epsilon_micro {INT} NOT NULL,
    PRIMARY KEY (population, release_id)
)
"#,
    },
    Migration {
        version: 9,
        description: "attribute floors (no write under a revoked version once the authority has said so) and request nonces shared by every replica",
        ddl: r#"
CREATE TABLE attribute_floors (
    name        TEXT    NOT NULL PRIMARY KEY,
    version     {INT}   NOT NULL
);
CREATE TABLE request_nonces (
    service     TEXT    NOT NULL,
    keyid       TEXT    NOT NULL,
    nonce       TEXT    NOT NULL,
    expires_at  {INT}   NOT NULL,
    PRIMARY KEY (service, keyid, nonce)
);
CREATE INDEX request_nonces_by_expiry ON request_nonces (expires_at)
"#,
    },
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = 9;

fn render(ddl: &str, kind: BackendKind) -> String {
    let (int, bytes) = match kind {
        BackendKind::Sqlite => ("INTEGER", "BLOB"),
        BackendKind::Postgres => ("BIGINT", "BYTEA"),
    };
    ddl.replace("{INT}", int).replace("{BYTES}", bytes)
}

pub(crate) fn apply(store: &Store) -> Result<(), StoreError> {
    let kind = store.kind();
    store.transaction(|tx| {
        if kind == BackendKind::Postgres {
            // Serialize concurrent starts of several service replicas.
            tx.query("SELECT pg_advisory_xact_lock(4242424242)::text", &[])?;
        }
        tx.exec(
            &render(
                "CREATE TABLE IF NOT EXISTS asclepios_schema (version {INT} PRIMARY KEY, description TEXT NOT NULL, applied_at {INT} NOT NULL)",
                kind,
            ),
            &[],
        )?;
        let current = tx
            .query_opt("SELECT MAX(version) FROM asclepios_schema", &[])?
            .map(|r| r.opt_int(0))
            .transpose()?
            .flatten()
            .unwrap_or(0);
        if current > SCHEMA_VERSION {
            return Err(StoreError::Schema(format!(
                "the database is at schema version {current}, newer than this build's {SCHEMA_VERSION}; upgrade asclepios"
            )));
        }
        for m in MIGRATIONS.iter().filter(|m| m.version > current) {
            for statement in render(m.ddl, kind).split(';').map(str::trim).filter(|s| !s.is_empty()) {
                tx.exec(statement, &[])?;
            }
            tx.exec(
                "INSERT INTO asclepios_schema (version, description, applied_at) VALUES ($1, $2, $3)",
                &[Value::Int(m.version), m.description.into(), Value::Int(crate::now())],
            )?;
        }
        Ok(())
    })
}

/// DDL of the benchmark scratch table.
#[cfg(feature = "bench-hooks")]
pub(crate) fn bench_table(kind: BackendKind) -> String {
    render(
        "CREATE TABLE IF NOT EXISTS bench_raw (k {INT} PRIMARY KEY, v {BYTES} NOT NULL)",
        kind,
    )
}
