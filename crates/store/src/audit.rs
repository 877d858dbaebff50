//! The audit log's storage: entries, complete subtree hashes, checkpoints.

use std::ops::Range;

use asclepios_audit::{Hash, LogStore, NodeId};

use crate::db::{int, Value};
use crate::{now, Store, StoreError};

/// Node ids per lookup statement (keeps statements short and cacheable).
const NODES_PER_QUERY: usize = 64;

impl LogStore for Store {
    type Error = StoreError;

    fn log_size(&self, log: &str) -> Result<u64, StoreError> {
        self.transaction(|tx| {
            tx.query_opt(
                "SELECT size FROM audit_logs WHERE log_id = $1",
                &[log.into()],
            )?
            .map_or(Ok(0), |r| r.uint(0))
        })
    }

    fn log_append(
        &self,
        log: &str,
        first_index: u64,
        entries: &[&[u8]],
        nodes: &[(NodeId, Hash)],
    ) -> Result<bool, StoreError> {
        let new_size = first_index + entries.len() as u64;
        let entry_rows = entries
            .iter()
            .enumerate()
            .map(|(i, e)| Ok(vec![log.into(), int(first_index + i as u64)?, (*e).into()]))
            .collect::<Result<Vec<_>, StoreError>>()?;
        let node_rows = nodes
            .iter()
            .map(|(id, h)| {
                Ok(vec![
                    log.into(),
                    Value::Int(id.level.into()),
                    int(id.index)?,
                    h.as_slice().into(),
                ])
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        self.transaction(|tx| {
            // The head row is the lock: appenders to one log serialize on it,
            // and one that read a stale size changes nothing.
            let moved = if first_index == 0 {
                tx.exec(
                    "INSERT INTO audit_logs (log_id, size) VALUES ($1, $2) ON CONFLICT (log_id) DO UPDATE SET size = excluded.size WHERE audit_logs.size = 0",
                    &[log.into(), int(new_size)?],
                )?
            } else {
                tx.exec(
                    "UPDATE audit_logs SET size = $1 WHERE log_id = $2 AND size = $3",
                    &[int(new_size)?, log.into(), int(first_index)?],
                )?
            };
            if moved != 1 {
                return Ok(false);
            }
            tx.insert_many("audit_entries", &["log_id", "idx", "entry"], &entry_rows)?;
            tx.insert_many("audit_nodes", &["log_id", "level", "idx", "hash"], &node_rows)?;
            Ok(true)
        })
    }

    fn log_nodes(&self, log: &str, ids: &[NodeId]) -> Result<Vec<Hash>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        self.transaction(|tx| {
            let mut found = std::collections::HashMap::with_capacity(ids.len());
            for chunk in ids.chunks(NODES_PER_QUERY) {
                let mut sql = String::from(
                    "SELECT level, idx, hash FROM audit_nodes WHERE log_id = $1 AND (",
                );
                let mut params = vec![log.into()];
                for (i, id) in chunk.iter().enumerate() {
                    if i > 0 {
                        sql.push_str(" OR ");
                    }
                    sql.push_str(&format!(
                        "(level = ${} AND idx = ${})",
                        2 * i + 2,
                        2 * i + 3
                    ));
                    params.push(Value::Int(id.level.into()));
                    params.push(int(id.index)?);
                }
                sql.push(')');
                for row in tx.query(&sql, &params)? {
                    let level = u8::try_from(row.int(0)?)
                        .map_err(|_| StoreError::Corrupt("node level out of range".into()))?;
                    let hash: Hash = row
                        .bytes(2)?
                        .try_into()
                        .map_err(|_| StoreError::Corrupt("node hash is not 32 bytes".into()))?;
                    found.insert(NodeId::new(level, row.uint(1)?), hash);
                }
            }
            ids.iter()
                .map(|id| {
                    found.get(id).copied().ok_or_else(|| {
                        StoreError::Corrupt(format!(
                            "log {log}: subtree hash at level {} index {} is missing",
                            id.level, id.index
                        ))
                    })
                })
                .collect()
        })
    }

    fn log_entries(&self, log: &str, range: Range<u64>) -> Result<Vec<Vec<u8>>, StoreError> {
        self.transaction(|tx| {
            tx.query(
                "SELECT entry FROM audit_entries WHERE log_id = $1 AND idx >= $2 AND idx < $3 ORDER BY idx",
                &[log.into(), int(range.start)?, int(range.end)?],
            )?
            .iter()
            .map(|r| r.bytes(0))
            .collect()
        })
    }

    fn log_put_checkpoint(&self, log: &str, size: u64, note: &str) -> Result<(), StoreError> {
        self.transaction(|tx| {
            tx.exec(
                "INSERT INTO audit_checkpoints (log_id, size, note, created_at) VALUES ($1, $2, $3, $4)",
                &[log.into(), int(size)?, note.into(), Value::Int(now())],
            )
            .map(|_| ())
        })
    }

    fn log_latest_checkpoint(&self, log: &str) -> Result<Option<(u64, String)>, StoreError> {
        self.transaction(|tx| {
            tx.query_opt(
                "SELECT size, note FROM audit_checkpoints WHERE log_id = $1 ORDER BY size DESC LIMIT 1",
                &[log.into()],
            )?
            .map(|r| Ok((r.uint(0)?, r.text(1)?)))
            .transpose()
        })
    }
}
