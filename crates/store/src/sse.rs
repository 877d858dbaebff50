//! The searchable-encryption index: opaque address → opaque value. Addresses
//! are pseudorandom and written once; a search reads a batch of them.

use crate::db::Value;
use crate::{Store, StoreError};

/// Longest address or value accepted, in bytes.
pub const MAX_SSE_BYTES: usize = 4096;
const ADDRS_PER_QUERY: usize = 256;

impl Store {
    /// Writes index entries in one transaction. An address written before is a
    /// conflict (and nothing of the batch is written).
    pub fn sse_put(&self, entries: &[(Vec<u8>, Vec<u8>)]) -> Result<(), StoreError> {
        if entries
            .iter()
            .any(|(a, v)| a.is_empty() || a.len() > MAX_SSE_BYTES || v.len() > MAX_SSE_BYTES)
        {
            return Err(StoreError::Invalid(format!(
                "index addresses must be 1 to {MAX_SSE_BYTES} bytes, values at most {MAX_SSE_BYTES}"
            )));
        }
        let rows: Vec<Vec<Value>> = entries
            .iter()
            .map(|(a, v)| vec![a.as_slice().into(), v.as_slice().into()])
            .collect();
        self.transaction(|tx| tx.insert_many("sse_index", &["addr", "value"], &rows))
            .map_err(|e| match e {
                e if is_duplicate(&e) => {
                    StoreError::Conflict("an index address was written before".into())
                }
                e => e,
            })
    }

    /// Reads index entries; `None` where an address holds nothing.
    pub fn sse_get(&self, addrs: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        self.read(|tx| {
            let mut found = std::collections::HashMap::with_capacity(addrs.len());
            for chunk in addrs.chunks(ADDRS_PER_QUERY) {
                let placeholders: Vec<String> =
                    (1..=chunk.len()).map(|i| format!("${i}")).collect();
                let sql = format!(
                    "SELECT addr, value FROM sse_index WHERE addr IN ({})",
                    placeholders.join(", ")
                );
                let params: Vec<Value> = chunk.iter().map(|a| a.as_slice().into()).collect();
                for row in tx.query(&sql, &params)? {
                    found.insert(row.bytes(0)?, row.bytes(1)?);
                }
            }
            Ok(addrs.iter().map(|a| found.get(a).cloned()).collect())
        })
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
