//! The machinery both services' handlers share, and nothing of either
//! service: running store work off the async threads, mapping store errors
//! (the integrity alarm among them), audited outcomes and the audit slice,
//! the rules that judge a caller (active, registered key, attestation), and
//! how a stored version proves its author. The key authority and the record
//! service each depend on this crate, never on each other.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod guards;
pub mod operations;
pub mod outcome;
pub mod refusals;
pub mod stored;

use asclepios_net::server::ApiError;
use asclepios_store::StoreError;
use axum::http::StatusCode;
pub use guards::{
    check_attested, circle_patients, identity_key_sha256, in_circle, require_active,
    require_registered_key, PeerCaller,
};
pub use operations::{operable, store_answers, Operations, Readiness, ServiceOperations};
pub use outcome::{
    audit_consistency, audit_outcome, audit_slice, log_event, log_events, log_outcome,
    log_outcome_to_all, shown, ConsistencyQuery, SliceQuery, MAX_AUDIT_SLICE,
};
pub use refusals::{log_refusals, RefusalLog};
pub use stored::{stored_author, stored_sealed_body, verified_author, Stored};

/// A service's nonces in its store ([`asclepios_net::signature::NonceStore`]):
/// shared by every replica on the same store, kept across restarts.
///
/// Requests that arrive together share one transaction (group commit): a
/// worker thread takes every nonce waiting, stores them in one commit and
/// answers each. Without it every signed request, reads included, paid a
/// commit of its own (a disk flush on SQLite) behind every other's.
#[derive(Debug)]
pub struct StoredNonces {
    queue: std::sync::mpsc::Sender<PendingNonce>,
}

#[derive(Debug)]
struct PendingNonce {
    keyid: String,
    nonce: String,
    expires_at: u64,
    now: u64,
    answer: std::sync::mpsc::SyncSender<Result<bool, String>>,
}

/// Most nonces stored in one transaction.
const NONCE_BATCH: usize = 512;

impl StoredNonces {
    /// Nonces of `service` (`authority`, `records`) in `store`, with their
    /// worker thread (it ends when this is dropped).
    pub fn new(store: asclepios_store::Store, service: &'static str) -> Self {
        let (queue, pending) = std::sync::mpsc::channel::<PendingNonce>();
        std::thread::Builder::new()
            .name(format!("{service}-nonces"))
            .spawn(move || {
                while let Ok(first) = pending.recv() {
                    let mut batch = vec![first];
                    while batch.len() < NONCE_BATCH {
                        match pending.try_recv() {
                            Ok(next) => batch.push(next),
                            Err(_) => break,
                        }
                    }
                    // Each with the time its own signature was checked at.
                    let items: Vec<(&str, &str, u64, u64)> = batch
                        .iter()
                        .map(|p| (p.keyid.as_str(), p.nonce.as_str(), p.expires_at, p.now))
                        .collect();
                    match store.remember_nonces(service, &items) {
                        Ok(fresh) => {
                            for (p, fresh) in batch.iter().zip(fresh) {
                                let _ = p.answer.send(Ok(fresh));
                            }
                        }
                        Err(e) => {
                            for p in &batch {
                                let _ = p.answer.send(Err(e.to_string()));
                            }
                        }
                    }
                }
            })
            .expect("a thread for the nonce store");
        StoredNonces { queue }
    }
}

impl asclepios_net::signature::NonceStore for StoredNonces {
    fn remember(
        &self,
        keyid: &str,
        nonce: &str,
        expires_at: u64,
        now: u64,
    ) -> Result<bool, String> {
        let (answer, answered) = std::sync::mpsc::sync_channel(1);
        self.queue
            .send(PendingNonce {
                keyid: keyid.to_string(),
                nonce: nonce.to_string(),
                expires_at,
                now,
                answer,
            })
            .map_err(|_| "the nonce store stopped".to_string())?;
        answered
            .recv()
            .map_err(|_| "the nonce store stopped".to_string())?
    }
}

/// Runs store and crypto work off the async threads.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the request was interrupted",
        )
    })?
}

/// A store error as the caller sees it: 4xx for what the request got
/// wrong, a bare 503 otherwise (backend details stay on the server).
pub fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, m),
        StoreError::NotFound(m) => ApiError::new(StatusCode::NOT_FOUND, m),
        StoreError::Invalid(m) => bad_request(m),
        // The reason (which rows) goes to the audit log and the operator.
        StoreError::Integrity(_) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, INTEGRITY_ALARM),
        // Backend details stay on the server.
        _ => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "storage unavailable; retry later",
        ),
    }
}

/// What callers are told while the key authority's state fails verification.
pub const INTEGRITY_ALARM: &str = "integrity alarm: the key authority's state failed verification \
     (changed, deleted or rolled back outside the authority); nothing is issued until an operator \
     has checked the store and restarted the authority";

/// Patient pseudonyms and record ids: 1 to 128 letters, digits, `-`, `_`, `.`.
pub fn check_name(what: &str, s: &str) -> Result<(), ApiError> {
    asclepios_net::pki::check_identity_id(s).map_err(|_| {
        bad_request(format!(
            "`{what}` must be 1 to 128 letters, digits, '-', '_' or '.'"
        ))
    })
}

/// A 400 with `message`.
pub fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, message)
}

/// The role that reads the whole audit log: compared as a whole attribute
/// (any version), never as a prefix (`role:auditor-trainee` is another role).
pub const AUDITOR_ROLE: &str = "role:auditor";

/// A study name or label: 1 to 128 of letters, digits, `-_.:/`.
pub fn check_stats_name(what: &str, s: &str) -> Result<(), ApiError> {
    let ok = (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(bad_request(format!(
            "`{what}` must be 1 to 128 letters, digits or -_.:/"
        )))
    }
}
