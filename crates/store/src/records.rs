//! Sealed record bodies (append-only history) and their data-key wrappers.

use crate::db::{int, Row, Value};
use crate::{now, Store, StoreError};

/// Longest patient pseudonym, record id or wrapper slot name, in bytes.
pub const MAX_KEY_BYTES: usize = 256;
/// Largest sealed body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 17 * 1024 * 1024;

/// One stored version of a record.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct RecordVersion {
    /// Pseudonym of the patient the record is about.
    pub patient: String,
    /// The record's id.
    pub record_id: String,
    /// Its version (1, 2, ...).
    pub version: u64,
    /// The sealed body (ciphertext).
    pub body: Vec<u8>,
    /// When it was stored (Unix seconds).
    pub created_at: i64,
}

/// A wrapper with the record version it belongs to (for scans).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct WrapperRow {
    /// The patient's pseudonym.
    pub patient: String,
    /// The record's id.
    pub record_id: String,
    /// The record version.
    pub version: u64,
    /// The wrapper.
    pub wrapper: Wrapper,
}

/// What an erasure destroyed.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Erased {
    /// Records (all their versions).
    pub records: u64,
    /// Record versions (bodies).
    pub versions: u64,
    /// Key wrappers.
    pub wrappers: u64,
}

/// A data-key wrapper of one record version.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Wrapper {
    /// Which wrapper (`main`, or another slot a deployment uses).
    pub slot: String,
    /// The wrapper's bytes.
    pub bytes: Vec<u8>,
    /// The attribute epoch it was made for (bumped by re-wraps).
    pub epoch: u64,
    /// When it was last written (Unix seconds).
    pub updated_at: i64,
}

fn check_key(what: &str, s: &str) -> Result<(), StoreError> {
    if s.is_empty() || s.len() > MAX_KEY_BYTES {
        return Err(StoreError::Invalid(format!(
            "{what} must be 1 to {MAX_KEY_BYTES} bytes"
        )));
    }
    Ok(())
}

fn record_version(row: &Row) -> Result<RecordVersion, StoreError> {
    Ok(RecordVersion {
        patient: row.text(0)?,
        record_id: row.text(1)?,
        version: row.uint(2)?,
        body: row.bytes(3)?,
        created_at: row.int(4)?,
    })
}

/// Key of the PostgreSQL advisory lock that orders record writes (shared)
/// after floor raises (exclusive). SQLite's write transactions are
/// serialised already.
const FLOORS_LOCK: i64 = 0x6173_636c_666c_7231;

/// The floor of `attribute` (0 if it has none).
fn floor_of(tx: &mut dyn crate::db::Tx, attribute: &str) -> Result<u64, StoreError> {
    tx.query_opt(
        "SELECT version FROM attribute_floors WHERE name = $1",
        &[attribute.into()],
    )?
    .map_or(Ok(0), |r| r.uint(0))
}

/// Refuses `named` if an attribute is below its floor; inside a write's
/// transaction, holding the floors lock shared.
fn check_floors(
    tx: &mut dyn crate::db::Tx,
    postgres: bool,
    named: &[(&str, u64)],
) -> Result<(), StoreError> {
    if postgres {
        tx.exec(
            "SELECT pg_advisory_xact_lock_shared($1)",
            &[Value::Int(FLOORS_LOCK)],
        )?;
    }
    for (name, version) in named {
        let floor = floor_of(tx, name)?;
        if *version < floor {
            return Err(StoreError::Conflict(format!(
                "the policy names `{name}` at version {version}, but it was revoked up to \
                 version {floor}: resolve the policy again"
            )));
        }
    }
    Ok(())
}

impl Store {
    /// Raises attribute floors: from now on no record version may be stored
    /// under a policy that names one of `floors` below its version (a
    /// revoked one). Floors never go down. Returns once every write that
    /// checked against the old floors has committed.
    pub fn raise_attribute_floors(&self, floors: &[(String, u64)]) -> Result<(), StoreError> {
        let postgres = self.kind() == crate::BackendKind::Postgres;
        self.transaction(|tx| {
            if postgres {
                tx.exec(
                    "SELECT pg_advisory_xact_lock($1)",
                    &[Value::Int(FLOORS_LOCK)],
                )?;
            }
            for (name, version) in floors {
                check_key("attribute", name)?;
                tx.exec(
                    "INSERT INTO attribute_floors (name, version) VALUES ($1, $2) \
                     ON CONFLICT (name) DO UPDATE SET version = excluded.version \
                     WHERE attribute_floors.version < excluded.version",
                    &[name.as_str().into(), int(*version)?],
                )?;
            }
            Ok(())
        })
    }

    /// The floor of `attribute` (0 if it has none).
    pub fn attribute_floor(&self, attribute: &str) -> Result<u64, StoreError> {
        self.transaction(|tx| floor_of(tx, attribute))
    }

    /// Stores version `version` of a record with its wrappers, atomically.
    /// Versions start at 1 and go up by one; history is never rewritten, so
    /// storing a version that exists, or skipping one, is a conflict.
    pub fn put_record_version(
        &self,
        patient: &str,
        record_id: &str,
        version: u64,
        body: &[u8],
        wrappers: &[(&str, &[u8], u64)],
    ) -> Result<(), StoreError> {
        self.put_record_version_above_floors(patient, record_id, version, body, wrappers, &[])
    }

    /// Like [`Store::put_record_version`], but a conflict if `named` (the
    /// attributes the wrappers' policies name, each with its version) has an
    /// attribute below its floor ([`Store::raise_attribute_floors`]).
    ///
    /// The floors are read inside the transaction that inserts, under a lock
    /// that a raise waits for: once a raise has returned, every write that
    /// checked against the old floor has committed (so a re-wrap scan that
    /// starts then sees it), and every later write sees the new floor.
    pub fn put_record_version_above_floors(
        &self,
        patient: &str,
        record_id: &str,
        version: u64,
        body: &[u8],
        wrappers: &[(&str, &[u8], u64)],
        named: &[(&str, u64)],
    ) -> Result<(), StoreError> {
        check_key("patient pseudonym", patient)?;
        check_key("record id", record_id)?;
        if body.is_empty() || body.len() > MAX_BODY_BYTES {
            return Err(StoreError::Invalid(format!(
                "a sealed body must be 1 to {MAX_BODY_BYTES} bytes"
            )));
        }
        for (i, (slot, _, _)) in wrappers.iter().enumerate() {
            check_key("wrapper slot", slot)?;
            if wrappers[..i].iter().any(|(s, _, _)| s == slot) {
                return Err(StoreError::Invalid(format!(
                    "wrapper slot `{slot}` given twice"
                )));
            }
        }
        let at = now();
        let postgres = self.kind() == crate::BackendKind::Postgres;
        self.transaction(|tx| {
            check_floors(tx, postgres, named)?;
            let latest = tx
                .query_opt(
                    "SELECT MAX(version) FROM record_versions WHERE patient = $1 AND record_id = $2",
                    &[patient.into(), record_id.into()],
                )?
                .map(|r| r.opt_int(0))
                .transpose()?
                .flatten()
                .unwrap_or(0);
            if i64::try_from(version).ok() != latest.checked_add(1) {
                return Err(StoreError::Conflict(format!(
                    "record {record_id} is at version {latest}; the next version is {}",
                    latest + 1
                )));
            }
            tx.exec(
                "INSERT INTO record_versions (patient, record_id, version, body, created_at) VALUES ($1, $2, $3, $4, $5)",
                &[patient.into(), record_id.into(), int(version)?, body.into(), Value::Int(at)],
            )?;
            let rows = wrappers
                .iter()
                .map(|(slot, bytes, epoch)| {
                    Ok(vec![
                        patient.into(),
                        record_id.into(),
                        int(version)?,
                        (*slot).into(),
                        (*bytes).into(),
                        int(*epoch)?,
                        Value::Int(at),
                    ])
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            tx.insert_many(
                "key_wrappers",
                &["patient", "record_id", "version", "slot", "wrapper", "epoch", "updated_at"],
                &rows,
            )
        })
    }

    /// A version of a record (the latest when `version` is `None`).
    pub fn record_version(
        &self,
        patient: &str,
        record_id: &str,
        version: Option<u64>,
    ) -> Result<Option<RecordVersion>, StoreError> {
        self.read(|tx| {
            let row = match version {
                Some(v) => tx.query_opt(
                    "SELECT patient, record_id, version, body, created_at FROM record_versions WHERE patient = $1 AND record_id = $2 AND version = $3",
                    &[patient.into(), record_id.into(), int(v)?],
                )?,
                None => tx.query_opt(
                    "SELECT patient, record_id, version, body, created_at FROM record_versions WHERE patient = $1 AND record_id = $2 ORDER BY version DESC LIMIT 1",
                    &[patient.into(), record_id.into()],
                )?,
            };
            row.as_ref().map(record_version).transpose()
        })
    }

    /// The versions of a record, oldest first.
    pub fn record_versions(&self, patient: &str, record_id: &str) -> Result<Vec<u64>, StoreError> {
        self.read(|tx| {
            tx.query(
                "SELECT version FROM record_versions WHERE patient = $1 AND record_id = $2 ORDER BY version",
                &[patient.into(), record_id.into()],
            )?
            .iter()
            .map(|r| r.uint(0))
            .collect()
        })
    }

    /// A patient's records with their latest version, by record id.
    pub fn patient_records(&self, patient: &str) -> Result<Vec<(String, u64)>, StoreError> {
        self.read(|tx| {
            tx.query(
                "SELECT record_id, MAX(version) FROM record_versions WHERE patient = $1 GROUP BY record_id ORDER BY record_id",
                &[patient.into()],
            )?
            .iter()
            .map(|r| Ok((r.text(0)?, r.uint(1)?)))
            .collect()
        })
    }

    /// The wrappers of a record version, by slot.
    pub fn wrappers(
        &self,
        patient: &str,
        record_id: &str,
        version: u64,
    ) -> Result<Vec<Wrapper>, StoreError> {
        self.read(|tx| {
            tx.query(
                "SELECT slot, wrapper, epoch, updated_at FROM key_wrappers WHERE patient = $1 AND record_id = $2 AND version = $3 ORDER BY slot",
                &[patient.into(), record_id.into(), int(version)?],
            )?
            .iter()
            .map(|r| {
                Ok(Wrapper {
                    slot: r.text(0)?,
                    bytes: r.bytes(1)?,
                    epoch: r.uint(2)?,
                    updated_at: r.int(3)?,
                })
            })
            .collect()
        })
    }

    /// Writes (or replaces) the wrapper in `slot` of an existing record
    /// version: a re-wrap after revocation or a consent change.
    pub fn put_wrapper(
        &self,
        patient: &str,
        record_id: &str,
        version: u64,
        slot: &str,
        bytes: &[u8],
        epoch: u64,
    ) -> Result<(), StoreError> {
        check_key("wrapper slot", slot)?;
        self.transaction(|tx| {
            let exists = tx
                .query_opt(
                    "SELECT 1 FROM record_versions WHERE patient = $1 AND record_id = $2 AND version = $3",
                    &[patient.into(), record_id.into(), int(version)?],
                )?
                .is_some();
            if !exists {
                return Err(StoreError::NotFound(format!("record {record_id} version {version}")));
            }
            tx.exec(
                "INSERT INTO key_wrappers (patient, record_id, version, slot, wrapper, epoch, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (patient, record_id, version, slot) DO UPDATE SET wrapper = excluded.wrapper, epoch = excluded.epoch, updated_at = excluded.updated_at",
                &[patient.into(), record_id.into(), int(version)?, slot.into(), bytes.into(), int(epoch)?, Value::Int(now())],
            )?;
            Ok(())
        })
    }

    /// Replaces the wrapper in `slot` only if it is still at `expected_epoch`
    /// (compare-and-swap): a re-wrap never resurrects a shredded wrapper nor
    /// overwrites a newer one. Returns whether it was replaced.
    #[allow(clippy::too_many_arguments)]
    pub fn replace_wrapper(
        &self,
        patient: &str,
        record_id: &str,
        version: u64,
        slot: &str,
        expected_epoch: u64,
        bytes: &[u8],
        new_epoch: u64,
    ) -> Result<bool, StoreError> {
        self.transaction(|tx| {
            let n = tx.exec(
                "UPDATE key_wrappers SET wrapper = $1, epoch = $2, updated_at = $3 \
                 WHERE patient = $4 AND record_id = $5 AND version = $6 AND slot = $7 AND epoch = $8",
                &[
                    bytes.into(),
                    int(new_epoch)?,
                    Value::Int(now()),
                    patient.into(),
                    record_id.into(),
                    int(version)?,
                    slot.into(),
                    int(expected_epoch)?,
                ],
            )?;
            Ok(n == 1)
        })
    }

    /// Wrappers in key order after the row `after` (the last of the previous page), at
    /// most `limit`: for background scans such as re-wrapping after a
    /// revocation.
    pub fn scan_wrappers(
        &self,
        after: Option<&WrapperRow>,
        limit: usize,
    ) -> Result<Vec<WrapperRow>, StoreError> {
        let (p, r, v, s) = after.map_or(("", "", 0, ""), |w| {
            (
                w.patient.as_str(),
                w.record_id.as_str(),
                w.version,
                w.wrapper.slot.as_str(),
            )
        });
        self.read(|tx| {
            tx.query(
                "SELECT patient, record_id, version, slot, wrapper, epoch, updated_at FROM key_wrappers \
                 WHERE (patient > $1) OR (patient = $1 AND record_id > $2) OR (patient = $1 AND record_id = $2 AND version > $3) \
                 OR (patient = $1 AND record_id = $2 AND version = $3 AND slot > $4) \
                 ORDER BY patient, record_id, version, slot LIMIT $5",
                &[p.into(), r.into(), int(v)?, s.into(), int(limit as u64)?],
            )?
            .iter()
            .map(|row| {
                Ok(WrapperRow {
                    patient: row.text(0)?,
                    record_id: row.text(1)?,
                    version: row.uint(2)?,
                    wrapper: Wrapper {
                        slot: row.text(3)?,
                        bytes: row.bytes(4)?,
                        epoch: row.uint(5)?,
                        updated_at: row.int(6)?,
                    },
                })
            })
            .collect()
        })
    }

    /// Erases one record (`Some(record_id)`) or every record of `patient`
    /// (`None`): every version's body and every wrapper, in one
    /// transaction, and then out of the store's files
    /// ([`Store::purge_deleted`]). Returns what was destroyed; nothing if
    /// there was nothing.
    pub fn erase(&self, patient: &str, record_id: Option<&str>) -> Result<Erased, StoreError> {
        check_key("patient pseudonym", patient)?;
        if let Some(r) = record_id {
            check_key("record id", r)?;
        }
        let (filter, params): (&str, Vec<Value>) = match record_id {
            Some(r) => (
                "patient = $1 AND record_id = $2",
                vec![patient.into(), r.into()],
            ),
            None => ("patient = $1", vec![patient.into()]),
        };
        let erased = self.transaction(|tx| {
            let count = |tx: &mut dyn crate::db::Tx, sql: &str| -> Result<u64, StoreError> {
                tx.query_opt(sql, &params)?.map_or(Ok(0), |r| r.uint(0))
            };
            let records = count(
                tx,
                &format!("SELECT COUNT(DISTINCT record_id) FROM record_versions WHERE {filter}"),
            )?;
            let versions = tx.exec(
                &format!("DELETE FROM record_versions WHERE {filter}"),
                &params,
            )?;
            let wrappers = tx.exec(&format!("DELETE FROM key_wrappers WHERE {filter}"), &params)?;
            Ok(Erased {
                records,
                versions,
                wrappers,
            })
        })?;
        // Always, even when nothing was left to delete: a purge that failed
        // after its delete committed (a reader held the log) is retried by
        // erasing again.
        self.purge_deleted(&["record_versions", "key_wrappers"])?;
        Ok(erased)
    }

    /// Makes rows deleted from `tables` unrecoverable from the store's
    /// files. SQLite (`secure_delete` on) zeroed their pages, but in the
    /// write-ahead log: a `TRUNCATE` checkpoint writes the zeroed pages over
    /// the old ones in the main file and empties the log. PostgreSQL keeps
    /// deleted rows as dead tuples until a vacuum: `VACUUM` removes them
    /// (its write-ahead log and base backups keep them until they are
    /// recycled; see the README's erasure section).
    pub fn purge_deleted(&self, tables: &[&str]) -> Result<(), StoreError> {
        match &*self.backend {
            crate::Backend::Sqlite(b) => b.checkpoint(),
            crate::Backend::Postgres(b) => b.vacuum(tables),
        }
    }
}
