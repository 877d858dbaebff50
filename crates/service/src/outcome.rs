//! Audited outcomes: every audited request of both services ends in
//! [`log_outcome`] or [`audit_outcome`]; both serve their log's entries to
//! patients and auditors through [`audit_slice`].

use crate::AUDITOR_ROLE;
use asclepios_api::records::AuditSlice;
use asclepios_api::records::WithReceipt;
use asclepios_audit::Action;
use asclepios_audit::AuditEvent;
use asclepios_audit::AuditTrail;
use asclepios_audit::Outcome;
use asclepios_audit::Receipt;
use asclepios_crypto::policy::attribute_name;
use asclepios_net::server::ApiError;
use asclepios_net::signature::Verified;
use asclepios_store::Store;
use axum::http::StatusCode;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::Deserialize;

/// Logs the outcome of `result` as the event `event` makes for it (success;
/// refused for a 4xx; failed otherwise) and attaches the receipt: every
/// audited request of both services ends here.
pub fn log_outcome<T>(
    trail: &AuditTrail<Store>,
    v: &Verified,
    result: Result<T, ApiError>,
    event: impl FnOnce(Outcome) -> AuditEvent,
) -> Result<WithReceipt<T>, ApiError> {
    log_outcome_to_all(trail, v, result, |outcome, _| vec![event(outcome)])
}

/// [`log_outcome`] for a request that concerns several patients: `events`
/// makes one event per patient (from the outcome and, on success, the
/// result), all written in one batch. The caller gets the first event's
/// receipt. `events` must make at least one event.
pub fn log_outcome_to_all<T>(
    trail: &AuditTrail<Store>,
    v: &Verified,
    result: Result<T, ApiError>,
    events: impl FnOnce(Outcome, Option<&T>) -> Vec<AuditEvent>,
) -> Result<WithReceipt<T>, ApiError> {
    let (outcome, status) = match &result {
        Ok(_) => (Outcome::Success, StatusCode::OK),
        Err(e) if e.status.is_client_error() => (Outcome::Denied, e.status),
        Err(e) => (Outcome::Failed, e.status),
    };
    let events = events(outcome, result.as_ref().ok());
    let receipt = log_events(trail, &events, v, status)?;
    Ok(WithReceipt {
        result: result.map_err(ApiError::logged)?,
        receipt,
    })
}

/// [`log_outcome`] for an event about no patient, with an optional purpose
/// of use.
pub fn audit_outcome<T>(
    trail: &AuditTrail<Store>,
    v: &Verified,
    caller: &str,
    (action, purpose): (Action, Option<&str>),
    resource: String,
    result: Result<T, ApiError>,
) -> Result<WithReceipt<T>, ApiError> {
    log_outcome(trail, v, result, |outcome| {
        let mut event = AuditEvent::new(
            caller,
            action,
            resource,
            None,
            outcome,
            Some(v.signature.clone()),
        );
        if let Some(purpose) = purpose {
            event.purpose = purpose.into();
        }
        event
    })
}

/// The first 128 characters of a name, for an audit event.
pub fn shown(s: &str) -> String {
    s.chars().take(128).collect()
}

/// Logs `event` for the request `v` answered with `status`; its receipt.
/// Shared by the services: an audit log that cannot be written is a 503.
pub fn log_event(
    trail: &AuditTrail<Store>,
    event: &AuditEvent,
    v: &Verified,
    status: StatusCode,
) -> Result<Receipt, ApiError> {
    log_events(trail, std::slice::from_ref(event), v, status)
}

/// [`log_event`] for several events of one request, in one batch; the
/// first one's receipt.
pub fn log_events(
    trail: &AuditTrail<Store>,
    events: &[AuditEvent],
    v: &Verified,
    status: StatusCode,
) -> Result<Receipt, ApiError> {
    // Backend details stay on the server; the caller learns it may retry.
    let unavailable = |e: &dyn std::fmt::Display| {
        // The operator sees why (no event content is in the error).
        tracing::error!("the audit log refused an event: {e}");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "audit log unavailable; retry later",
        )
    };
    trail
        .record_all(events, &v.request_hash, status.as_u16())
        .map_err(|e| unavailable(&e))?
        .into_iter()
        .next()
        .ok_or_else(|| unavailable(&"a request made no audit event"))
}

/// Most entries per audit slice.
pub const MAX_AUDIT_SLICE: u64 = 512;

/// Entries of `log` for `member` (the caller, as the directory knows it),
/// from `q.start`, and the log's latest checkpoint. Both services answer
/// with it for their own log.
///
/// An auditor gets every entry (at most [`MAX_AUDIT_SLICE`]), in order. A
/// patient gets only the entries tagged with their subject tag, each with
/// its index and inclusion proof in the tree of `q.size` leaves (by default
/// the latest checkpoint's): other patients' entries, and so their sealed
/// policies, which name patients, never reach them.
pub fn audit_slice(
    log: &asclepios_audit::Log<asclepios_store::Store>,
    member: Option<&asclepios_api::directory::Member>,
    caller: &str,
    q: &SliceQuery,
) -> Result<AuditSlice, ApiError> {
    crate::require_active(member, caller)?;
    let auditor = member.is_some_and(|m| {
        m.attributes
            .iter()
            .any(|a| attribute_name(a) == AUDITOR_ROLE)
    });
    let patient = member.is_some_and(|m| m.kind == "patient");
    if !auditor && !patient {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "the audit log is for patients and auditors",
        ));
    }
    let unavailable =
        |e: asclepios_audit::Error| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
    // A log not yet cosigned (its witness was away when it started) is
    // checkpointed now.
    let checkpoint = match log.latest_checkpoint().map_err(unavailable)? {
        Some(note) => note,
        None => log.checkpoint().map_err(unavailable)?,
    };
    if auditor {
        if q.size.is_some() {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "`size` is for a patient's slice; an auditor reads every entry",
            ));
        }
        let (size, _) = log.sync().map_err(unavailable)?;
        let start = q.start.unwrap_or(0).min(size);
        let end = (start + MAX_AUDIT_SLICE).min(size);
        let entries = log.entries(start..end).map_err(unavailable)?;
        return Ok(AuditSlice {
            start,
            entries: entries.iter().map(|e| B64.encode(e)).collect(),
            checkpoint: Some(checkpoint),
            proved: None,
        });
    }
    let signed = asclepios_audit::log::peek_checkpoint(&checkpoint)
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?
        .size;
    let size = match q.size {
        Some(size) if size > signed => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("the latest checkpoint is of {signed} entries, not {size}"),
            ))
        }
        Some(size) => size,
        None => signed,
    };
    let start = q.start.unwrap_or(0).min(size);
    let about = log
        .entries_about(
            &log.subject(caller),
            start..size,
            MAX_AUDIT_SLICE as usize + 1,
        )
        .map_err(unavailable)?;
    let more = about.len() > MAX_AUDIT_SLICE as usize;
    let about = &about[..about.len().min(MAX_AUDIT_SLICE as usize)];
    let indices: Vec<u64> = about.iter().map(|(i, _)| *i).collect();
    let proofs: Vec<Vec<String>> = log
        .prove_inclusions(&indices, size)
        .map_err(unavailable)?
        .iter()
        .map(|proof| proof.iter().map(|h| B64.encode(h)).collect())
        .collect();
    Ok(AuditSlice {
        start,
        entries: about.iter().map(|(_, e)| B64.encode(e)).collect(),
        checkpoint: Some(checkpoint),
        proved: Some(asclepios_api::records::ProvedEntries {
            size,
            indices,
            proofs,
            next: if more {
                about.last().map(|(i, _)| i + 1)
            } else {
                None
            },
        }),
    })
}

/// The consistency proof between sizes `old` and `new` of the log, for any
/// active caller: hashes only, which say nothing about any event.
pub fn audit_consistency(
    log: &asclepios_audit::Log<asclepios_store::Store>,
    member: Option<&asclepios_api::directory::Member>,
    caller: &str,
    old: u64,
    new: u64,
) -> Result<asclepios_api::records::ConsistencyProof, ApiError> {
    crate::require_active(member, caller)?;
    if old > new {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("old size {old} exceeds new size {new}"),
        ));
    }
    let (mut size, _) = log.head();
    if new > size {
        size = log
            .sync()
            .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?
            .0;
    }
    if new > size {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("the log has {size} entries, not {new}"),
        ));
    }
    let proof = log
        .prove_consistency(old, new)
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    Ok(asclepios_api::records::ConsistencyProof {
        old,
        new,
        proof: proof.iter().map(|h| B64.encode(h)).collect(),
    })
}

/// Which two sizes of the log.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsistencyQuery {
    /// The smaller size.
    pub old: u64,
    /// The larger size.
    pub new: u64,
}

/// Which entries of the log.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SliceQuery {
    /// The first entry wanted.
    pub start: Option<u64>,
    /// For a patient: the tree size to prove entries in (a checkpoint's
    /// size the client holds); by default the latest checkpoint's.
    pub size: Option<u64>,
}
