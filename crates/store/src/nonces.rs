//! Nonces of accepted signed requests, kept until their signatures expire:
//! every replica of a service shares them, and they survive restarts, so a
//! captured request cannot be replayed at another replica or after a
//! restart.
//!
//! Limit: a row lives as long as a signature is accepted (a few minutes),
//! and expired rows are deleted every [`PRUNE_EVERY`] insertions, so the
//! table holds about the requests of the last few minutes.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::{Store, StoreError};

/// Expired nonces are deleted once every this many insertions.
pub const PRUNE_EVERY: u64 = 1024;

/// How long past its expiry a nonce is kept before pruning may delete it.
const PRUNE_MARGIN_SECS: u64 = 60;

/// Longest service name, identity or nonce stored, in bytes.
const MAX_NONCE_KEY: usize = 128;

static INSERTED: AtomicU64 = AtomicU64::new(0);

impl Store {
    /// Remembers `(keyid, nonce)` for `service` until `expires_at`; `false`
    /// if it is remembered already (a replay). A remembered pair whose
    /// expiry passed counts as new (its signature no longer verifies, so
    /// only a fresh request can bring it).
    pub fn remember_nonce(
        &self,
        service: &str,
        keyid: &str,
        nonce: &str,
        expires_at: u64,
        now: u64,
    ) -> Result<bool, StoreError> {
        let fresh = self.remember_nonces(service, &[(keyid, nonce, expires_at, now)])?;
        Ok(fresh.first().copied().unwrap_or(false))
    }

    /// [`Store::remember_nonce`] for many requests in one transaction (one
    /// commit, one disk flush, however many requests arrived together):
    /// `(keyid, nonce, expires_at, now)` each, with the time its own
    /// signature was checked at; whether each was new. A pair twice in
    /// `batch` is new once.
    pub fn remember_nonces(
        &self,
        service: &str,
        batch: &[(&str, &str, u64, u64)],
    ) -> Result<Vec<bool>, StoreError> {
        for (keyid, nonce, _, _) in batch {
            for (what, s) in [("service", service), ("keyid", keyid), ("nonce", nonce)] {
                if s.is_empty() || s.len() > MAX_NONCE_KEY {
                    return Err(StoreError::Invalid(format!(
                        "{what} must be 1 to {MAX_NONCE_KEY} bytes"
                    )));
                }
            }
        }
        // Pruned up to a minute before the earliest check in the batch: a
        // row expired then is expired for every request in it, and for any
        // request checked before this batch and still waiting to be stored
        // (were it pruned, a replay among those would pass as new).
        let earliest = batch.iter().map(|b| b.3).min().unwrap_or(0);
        let earliest = crate::db::int(earliest.saturating_sub(PRUNE_MARGIN_SECS))?;
        let before = INSERTED.fetch_add(batch.len() as u64, Ordering::Relaxed);
        let prune =
            before / PRUNE_EVERY != (before + batch.len() as u64) / PRUNE_EVERY || before == 0;
        self.transaction(|tx| {
            if prune {
                tx.exec(
                    "DELETE FROM request_nonces WHERE expires_at < $1",
                    std::slice::from_ref(&earliest),
                )?;
            }
            batch
                .iter()
                .map(|(keyid, nonce, expires_at, now)| {
                    let fresh = tx.exec(
                        "INSERT INTO request_nonces (service, keyid, nonce, expires_at) \
                         VALUES ($1, $2, $3, $4) \
                         ON CONFLICT (service, keyid, nonce) DO UPDATE SET expires_at = excluded.expires_at \
                         WHERE request_nonces.expires_at < $5",
                        &[
                            service.into(),
                            (*keyid).into(),
                            (*nonce).into(),
                            crate::db::int(*expires_at)?,
                            crate::db::int(*now)?,
                        ],
                    )?;
                    Ok(fresh == 1)
                })
                .collect()
        })
    }
}
