//! The audit log's storage: entries with the subtree hashes they complete,
//! and checkpoints.
//!
//! Every complete subtree of a Merkle tree ends at exactly one leaf: node
//! `(level, index)` ends at leaf `(index+1)·2^level - 1`. So the row of leaf
//! `i` carries, in `subtree_hashes`, the hashes of the subtrees ending there,
//! level 0 (the leaf hash) first: `1 + trailing_ones(i)` hashes, two on
//! average. An append writes one row per entry, like a plain insert of the
//! same bytes, and a proof reads the rows that hold its nodes by primary key,
//! in one statement.

use std::collections::HashMap;
use std::ops::Range;

use asclepios_audit::{Hash, LogStore, NodeId, Subject};

use crate::db::{int, placeholders, Value};
use crate::{now, Store, StoreError};

/// Rows per lookup statement (keeps statements short and cacheable).
const ROWS_PER_QUERY: usize = 64;

/// Subjects per query of [`LogStore::log_last_about`] when there are many.
const SUBJECTS_PER_QUERY: usize = 256;

/// Up to this many subjects, [`LogStore::log_last_about`] seeks each.
const SEEKS_UP_TO: usize = 16;

/// The leaf whose row holds node `id`.
fn holding_leaf(id: NodeId) -> Result<u64, StoreError> {
    id.index
        .checked_add(1)
        .and_then(|x| x.checked_mul(1u64.checked_shl(id.level.into())?))
        .map(|x| x - 1)
        .ok_or_else(|| StoreError::Invalid(format!("node {id:?} lies beyond 2^64 entries")))
}

impl LogStore for Store {
    type Error = StoreError;

    fn log_size(&self, log: &str) -> Result<u64, StoreError> {
        self.read(|tx| {
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
        subjects: &[Option<Subject>],
        nodes: &[(NodeId, Hash)],
    ) -> Result<bool, StoreError> {
        if subjects.len() != entries.len() {
            return Err(StoreError::Invalid("one subject per entry".into()));
        }
        let new_size = first_index + entries.len() as u64;
        // Gather each leaf's subtree hashes, level by level from 0.
        let mut per_leaf: Vec<Vec<u8>> = vec![Vec::with_capacity(64); entries.len()];
        let mut sorted: Vec<&(NodeId, Hash)> = nodes.iter().collect();
        sorted.sort_by_key(|(id, _)| id.level);
        for (id, hash) in sorted {
            let leaf = holding_leaf(*id)?;
            let slot = leaf
                .checked_sub(first_index)
                .and_then(|i| per_leaf.get_mut(i as usize))
                .ok_or_else(|| {
                    StoreError::Invalid(format!("node {id:?} does not end in this append"))
                })?;
            if slot.len() != usize::from(id.level) * 32 {
                return Err(StoreError::Invalid(format!("node {id:?} out of order")));
            }
            slot.extend_from_slice(hash);
        }
        let rows = entries
            .iter()
            .zip(per_leaf)
            .zip(subjects)
            .enumerate()
            .map(|(i, ((e, hashes), subject))| {
                let index = first_index + i as u64;
                if hashes.len() != 32 * (1 + index.trailing_ones() as usize) {
                    return Err(StoreError::Invalid(format!(
                        "entry {index} lacks the subtree hashes it completes"
                    )));
                }
                let subject = subject.map_or(Value::Null, |s| Value::Bytes(s.to_vec()));
                Ok(vec![
                    log.into(),
                    int(index)?,
                    (*e).into(),
                    hashes.into(),
                    subject,
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
            tx.insert_many(
                "audit_entries",
                &["log_id", "idx", "entry", "subtree_hashes", "subject"],
                &rows,
            )?;
            Ok(true)
        })
    }

    fn log_nodes(&self, log: &str, ids: &[NodeId]) -> Result<Vec<Hash>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut leaves = ids
            .iter()
            .map(|id| holding_leaf(*id))
            .collect::<Result<Vec<_>, _>>()?;
        let wanted = leaves.clone();
        leaves.sort_unstable();
        leaves.dedup();
        self.read(|tx| {
            let mut rows: HashMap<u64, Vec<u8>> = HashMap::with_capacity(leaves.len());
            for chunk in leaves.chunks(ROWS_PER_QUERY) {
                let sql = format!(
                    "SELECT idx, subtree_hashes FROM audit_entries WHERE log_id = $1 AND idx IN ({})",
                    placeholders(2, chunk.len())
                );
                let mut params = Vec::with_capacity(chunk.len() + 1);
                params.push(log.into());
                for leaf in chunk {
                    params.push(int(*leaf)?);
                }
                for row in tx.query(&sql, &params)? {
                    rows.insert(row.uint(0)?, row.bytes(1)?);
                }
            }
            ids.iter()
                .zip(wanted)
                .map(|(id, leaf)| {
                    let at = usize::from(id.level) * 32;
                    rows.get(&leaf)
                        .and_then(|h| h.get(at..at + 32))
                        .and_then(|h| h.try_into().ok())
                        .ok_or_else(|| {
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
        self.read(|tx| {
            tx.query(
                "SELECT entry FROM audit_entries WHERE log_id = $1 AND idx >= $2 AND idx < $3 ORDER BY idx",
                &[log.into(), int(range.start)?, int(range.end)?],
            )?
            .iter()
            .map(|r| r.bytes(0))
            .collect()
        })
    }

    fn log_last_about(
        &self,
        log: &str,
        subjects: &[Subject],
        before: u64,
    ) -> Result<Vec<Option<asclepios_audit::log::IndexedLeaf>>, StoreError> {
        // A few subjects (an ordinary event names one or two): one indexed
        // seek each (`audit_entries_by_subject`, backwards from `before`). A
        // `MAX(idx) … GROUP BY` reads every entry about each subject, so each
        // event about a patient would cost more than the last (it was a
        // third of the record service's time under load). Many subjects (a
        // statistics release names its whole cohort): that query, in
        // chunks, rather than a round trip per subject.
        self.read(|tx| {
            if subjects.len() <= SEEKS_UP_TO {
                return subjects
                    .iter()
                    .map(|subject| {
                        let row = tx.query_opt(
                            "SELECT idx, entry FROM audit_entries \
                             WHERE log_id = $1 AND subject = $2 AND idx < $3 \
                             ORDER BY idx DESC LIMIT 1",
                            &[log.into(), subject.to_vec().into(), int(before)?],
                        )?;
                        row.map(|r| Ok((r.uint(0)?, r.bytes(1)?))).transpose()
                    })
                    .collect();
            }
            let mut found = std::collections::HashMap::with_capacity(subjects.len());
            for chunk in subjects.chunks(SUBJECTS_PER_QUERY) {
                // $1 the log, $2 the bound, then the subjects.
                let mut params = vec![log.into(), int(before)?];
                params.extend(chunk.iter().map(|s| s.to_vec().into()));
                let rows = tx.query(
                    &format!(
                        "SELECT e.subject, e.idx, e.entry FROM audit_entries e JOIN \
                         (SELECT subject, MAX(idx) AS last FROM audit_entries \
                          WHERE log_id = $1 AND idx < $2 AND subject IN ({}) GROUP BY subject) m \
                         ON e.subject = m.subject AND e.idx = m.last WHERE e.log_id = $1",
                        placeholders(3, chunk.len())
                    ),
                    &params,
                )?;
                for row in rows {
                    found.insert(row.bytes(0)?, (row.uint(1)?, row.bytes(2)?));
                }
            }
            Ok(subjects
                .iter()
                .map(|s| found.get(s.as_slice()).cloned())
                .collect())
        })
    }

    fn log_entries_about(
        &self,
        log: &str,
        subject: &Subject,
        range: Range<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(|tx| {
            tx.query(
                "SELECT idx, entry FROM audit_entries WHERE log_id = $1 AND subject = $2 AND idx >= $3 AND idx < $4 ORDER BY idx LIMIT $5",
                &[
                    log.into(),
                    subject.to_vec().into(),
                    int(range.start)?,
                    int(range.end)?,
                    Value::Int(limit),
                ],
            )?
            .iter()
            .map(|r| Ok((r.uint(0)?, r.bytes(1)?)))
            .collect()
        })
    }

    /// Two writers of one log may checkpoint the same size: both sign the
    /// same text with the same key, and Ed25519 signatures are
    /// deterministic, so the log's signature lines are equal. The witnesses'
    /// cosignatures after them differ in their timestamps: the note put last
    /// is kept. A note whose log-signed part differs for a size already
    /// checkpointed is a fork of the log and is refused.
    fn log_put_checkpoint(&self, log: &str, size: u64, note: &str) -> Result<(), StoreError> {
        self.transaction(|tx| {
            tx.exec(
                "INSERT INTO audit_checkpoints (log_id, size, note, created_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (log_id, size) DO NOTHING",
                &[log.into(), int(size)?, note.into(), Value::Int(now())],
            )?;
            let stored = tx
                .query_opt(
                    "SELECT note FROM audit_checkpoints WHERE log_id = $1 AND size = $2",
                    &[log.into(), int(size)?],
                )?
                .map(|r| r.text(0))
                .transpose()?;
            match stored {
                Some(s) if s == note => Ok(()),
                Some(s) if log_signed_part(&s) == log_signed_part(note) => tx
                    .exec(
                        "UPDATE audit_checkpoints SET note = $3 WHERE log_id = $1 AND size = $2",
                        &[log.into(), int(size)?, note.into()],
                    )
                    .map(drop),
                _ => Err(StoreError::Conflict(format!(
                    "another checkpoint of size {size} is stored for log `{log}`"
                ))),
            }
        })
    }

    fn log_latest_checkpoint(&self, log: &str) -> Result<Option<(u64, String)>, StoreError> {
        self.read(|tx| {
            tx.query_opt(
                "SELECT size, note FROM audit_checkpoints WHERE log_id = $1 ORDER BY size DESC LIMIT 1",
                &[log.into()],
            )?
            .map(|r| Ok((r.uint(0)?, r.text(1)?)))
            .transpose()
        })
    }
}

/// A signed note up to and including its first signature line (the log's
/// own): what two writers of one log sign identically.
fn log_signed_part(note: &str) -> &str {
    let Some(blank) = note.find("\n\n") else {
        return note;
    };
    match note[blank + 2..].find('\n') {
        Some(end) => &note[..blank + 2 + end + 1],
        None => note,
    }
}
