//! The searchable-encryption index: opaque address → opaque value. Addresses
//! are pseudorandom and written once; a search reads a batch of them.
//!
//! Beside it, `sse_state` keeps the index client's (the authority's) sealed
//! rows under pseudorandom row ids: per-keyword counters and per-record
//! keyword lists. [`Store::sse_apply`] changes both in one transaction, with a
//! compare-and-swap on every state row it touches, so concurrent updates of
//! one keyword cannot hand out the same counter twice.

use crate::db::{placeholders, Row, Tx, Value};
use crate::integrity::SSE_STATE;
use crate::{Store, StoreError};

/// A change of one sealed state row, applied only if the row still holds
/// `expect` (`None`: the row must not exist).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateWrite {
    /// The row id.
    pub row: Vec<u8>,
    /// What the writer read.
    pub expect: Option<Vec<u8>>,
    /// What to store (`None` deletes the row).
    pub new: Option<Vec<u8>>,
}

/// One atomic change of the index and its client state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SseBatch {
    /// State rows to compare and swap.
    pub state: Vec<StateWrite>,
    /// Index entries to write (addresses must be new).
    pub put: Vec<(Vec<u8>, Vec<u8>)>,
    /// Index addresses to delete.
    pub delete: Vec<Vec<u8>>,
}

/// Longest address or value accepted, in bytes.
pub const MAX_SSE_BYTES: usize = 4096;
const ADDRS_PER_QUERY: usize = 256;

/// Deletes the index entries at `addrs`, a batch of addresses a statement.
fn delete_entries(tx: &mut dyn Tx, addrs: &[Vec<u8>]) -> Result<(), StoreError> {
    for chunk in addrs.chunks(ADDRS_PER_QUERY) {
        let params: Vec<Value> = chunk.iter().map(|a| a.as_slice().into()).collect();
        tx.exec(
            &format!(
                "DELETE FROM sse_index WHERE addr IN ({})",
                placeholders(1, chunk.len())
            ),
            &params,
        )?;
    }
    Ok(())
}

impl Store {
    /// Writes index entries in one transaction. An address written before is a
    /// conflict (and nothing of the batch is written).
    pub fn sse_put(&self, entries: &[(Vec<u8>, Vec<u8>)]) -> Result<(), StoreError> {
        self.sse_apply(&SseBatch {
            put: entries.to_vec(),
            ..SseBatch::default()
        })
    }

    /// Applies a batch in one transaction: every state row must still hold
    /// what its writer read, every new address must be unused; otherwise it is
    /// a [`StoreError::Conflict`] and nothing is written.
    pub fn sse_apply(&self, batch: &SseBatch) -> Result<(), StoreError> {
        let too_big = |b: &[u8]| b.is_empty() || b.len() > MAX_SSE_BYTES;
        if batch
            .put
            .iter()
            .any(|(a, v)| too_big(a) || v.len() > MAX_SSE_BYTES)
            || batch.delete.iter().any(|a| too_big(a))
            || batch.state.iter().any(|w| {
                too_big(&w.row) || w.new.as_deref().is_some_and(|n| n.len() > MAX_SSE_BYTES)
            })
        {
            return Err(StoreError::Invalid(format!(
                "index addresses and row ids must be 1 to {MAX_SSE_BYTES} bytes, values at most {MAX_SSE_BYTES}"
            )));
        }
        let rows: Vec<Vec<Value>> = batch
            .put
            .iter()
            .map(|(a, v)| vec![a.as_slice().into(), v.as_slice().into()])
            .collect();
        // The state rows are the authority's: checked and re-tagged.
        let rows_touched: Vec<String> = batch.state.iter().map(|w| hex::encode(&w.row)).collect();
        let touched: Vec<_> = rows_touched
            .iter()
            .map(|r| (&SSE_STATE, r.as_str()))
            .collect();
        self.protected_transaction(&touched, |tx, _| {
            for w in &batch.state {
                swap_state(tx, w)?;
            }
            delete_entries(tx, &batch.delete)?;
            for chunk in rows.chunks(ADDRS_PER_QUERY) {
                tx.insert_many("sse_index", &["addr", "value"], chunk)?;
            }
            // Each state row holds its new value afterwards, or nothing.
            let after = batch
                .state
                .iter()
                .map(|w| {
                    w.new
                        .iter()
                        .map(|new| Row(vec![w.row.as_slice().into(), new.as_slice().into()]))
                        .collect()
                })
                .collect();
            Ok(((), after))
        })
        .map_err(|e| match e {
            e if is_duplicate(&e) => StoreError::Conflict(
                "an index address or state row was written before: read the state again".into(),
            ),
            e => e,
        })
    }

    /// Writes index entries (replacing what an address held) and deletes
    /// addresses, in one transaction: the record service's half of an index
    /// update, whose other half (the keyword states' compare-and-swap) the
    /// key authority makes in its own store. Writing first and swapping
    /// second makes a crash in between harmless: entries at addresses no
    /// state reaches are never read, and the next update writes over them.
    pub fn sse_index_write(
        &self,
        put: &[(Vec<u8>, Vec<u8>)],
        delete: &[Vec<u8>],
    ) -> Result<(), StoreError> {
        let too_big = |b: &[u8]| b.is_empty() || b.len() > MAX_SSE_BYTES;
        if put
            .iter()
            .any(|(a, v)| too_big(a) || v.len() > MAX_SSE_BYTES)
            || delete.iter().any(|a| too_big(a))
        {
            return Err(StoreError::Invalid(format!(
                "index addresses must be 1 to {MAX_SSE_BYTES} bytes, values at most {MAX_SSE_BYTES}"
            )));
        }
        let replaced: Vec<Vec<u8>> = put.iter().map(|(a, _)| a.clone()).collect();
        let rows: Vec<Vec<Value>> = put
            .iter()
            .map(|(a, v)| vec![a.as_slice().into(), v.as_slice().into()])
            .collect();
        self.transaction(|tx| {
            delete_entries(tx, delete)?;
            delete_entries(tx, &replaced)?;
            for chunk in rows.chunks(ADDRS_PER_QUERY) {
                tx.insert_many("sse_index", &["addr", "value"], chunk)?;
            }
            Ok(())
        })
    }

    /// Reads index entries; `None` where an address holds nothing.
    pub fn sse_get(&self, addrs: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        self.select_by_key("sse_index", "addr", "value", addrs)
    }

    /// Reads sealed state rows; `None` where a row does not exist. Under
    /// integrity protection each row is checked against the authority's
    /// memory of it (a rolled-back counter would reuse index addresses).
    pub fn sse_state(&self, rows: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        if !self.is_protected() {
            return self.select_by_key("sse_state", "row_id", "sealed", rows);
        }
        let parts: Vec<String> = rows.iter().map(hex::encode).collect();
        self.partitions(&SSE_STATE, &parts)?
            .iter()
            .map(|rows| rows.first().map(|row| row.bytes(1)).transpose())
            .collect()
    }

    /// `value` of `table` for each `key`, in batches of [`ADDRS_PER_QUERY`].
    fn select_by_key(
        &self,
        table: &str,
        key: &str,
        value: &str,
        keys: &[Vec<u8>],
    ) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        self.read(|tx| {
            let mut found = std::collections::HashMap::with_capacity(keys.len());
            for chunk in keys.chunks(ADDRS_PER_QUERY) {
                let sql = format!(
                    "SELECT {key}, {value} FROM {table} WHERE {key} IN ({})",
                    placeholders(1, chunk.len())
                );
                let params: Vec<Value> = chunk.iter().map(|a| a.as_slice().into()).collect();
                for row in tx.query(&sql, &params)? {
                    found.insert(row.bytes(0)?, row.bytes(1)?);
                }
            }
            Ok(keys.iter().map(|k| found.get(k).cloned()).collect())
        })
    }
}

/// Compare-and-swap of one state row inside a transaction.
fn swap_state(tx: &mut dyn Tx, w: &StateWrite) -> Result<(), StoreError> {
    let conflict = || {
        StoreError::Conflict(
            "a keyword or record state changed while it was being updated: read it again".into(),
        )
    };
    let changed = match (&w.expect, &w.new) {
        (None, Some(new)) => {
            tx.insert_many(
                "sse_state",
                &["row_id", "sealed"],
                &[vec![w.row.as_slice().into(), new.as_slice().into()]],
            )?;
            1
        }
        (Some(old), Some(new)) => tx.exec(
            "UPDATE sse_state SET sealed = $1 WHERE row_id = $2 AND sealed = $3",
            &[
                new.as_slice().into(),
                w.row.as_slice().into(),
                old.as_slice().into(),
            ],
        )?,
        (Some(old), None) => tx.exec(
            "DELETE FROM sse_state WHERE row_id = $1 AND sealed = $2",
            &[w.row.as_slice().into(), old.as_slice().into()],
        )?,
        (None, None) => {
            let exists = tx.query_opt(
                "SELECT 1 FROM sse_state WHERE row_id = $1",
                &[w.row.as_slice().into()],
            )?;
            u64::from(exists.is_none())
        }
    };
    if changed == 1 {
        Ok(())
    } else {
        Err(conflict())
    }
}

/// Whether an error is a unique-key violation.
pub(crate) fn is_duplicate(e: &StoreError) -> bool {
    match e {
        StoreError::Sqlite(rusqlite::Error::SqliteFailure(f, _)) => {
            f.code == rusqlite::ErrorCode::ConstraintViolation
        }
        StoreError::Postgres(p) => p.code() == Some(&::postgres::error::SqlState::UNIQUE_VIOLATION),
        _ => false,
    }
}
