//! Logging outcomes and reading the log: every audited request ends in
//! [`log_outcome`]; patients and auditors read the sealed entries; clients
//! log their exports and their verdicts on the authority's attestation.

use crate::bad_request;
use crate::blocking;
use crate::check_stats_name;
use crate::AttestationVerdict;
use crate::AuditSlice;
use crate::ExportNotice;
use crate::RecordService;
use crate::VerdictLogged;
use crate::WithReceipt;
use crate::AUDITOR_ROLE;
use asclepios_audit::Action;
use asclepios_audit::AuditEvent;
use asclepios_audit::AuditTrail;
use asclepios_audit::Outcome;
use asclepios_audit::Receipt;
use asclepios_crypto::policy::attribute_name;
use asclepios_net::server::json_body;
use asclepios_net::server::ApiError;
use asclepios_net::server::Caller;
use asclepios_net::signature::Verified;
use asclepios_store::Store;
use axum::extract::Query;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Extension;
use axum::Json;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::Deserialize;
use std::sync::Arc;

/// Logs the outcome of `result` as the event `event` makes for it (success;
/// refused for a 4xx; failed otherwise) and attaches the receipt: every
/// audited request of both services ends here.
pub fn log_outcome<T>(
    trail: &AuditTrail<Store>,
    v: &Verified,
    result: Result<T, ApiError>,
    event: impl FnOnce(Outcome) -> AuditEvent,
) -> Result<WithReceipt<T>, ApiError> {
    let (outcome, status) = match &result {
        Ok(_) => (Outcome::Success, StatusCode::OK),
        Err(e) if e.status.is_client_error() => (Outcome::Denied, e.status),
        Err(e) => (Outcome::Failed, e.status),
    };
    let receipt = log_event(trail, &event(outcome), v, status)?;
    Ok(WithReceipt {
        result: result?,
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
pub(crate) fn shown(s: &str) -> String {
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
    // Backend details stay on the server; the caller learns it may retry.
    trail
        .record(event, &v.request_hash, status.as_u16())
        .map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "audit log unavailable; retry later",
            )
        })
}

/// Most entries per audit slice.
pub const MAX_AUDIT_SLICE: u64 = 512;

pub(crate) async fn audit_entries(
    State(s): State<Arc<RecordService>>,
    Extension(Caller(caller)): Extension<Caller>,
    q: Result<Query<SliceQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<AuditSlice>, ApiError> {
    let Query(q) = q.map_err(|e| bad_request(format!("query: {}", e.body_text())))?;
    blocking(move || {
        let facts = s.directory.facts()?;
        audit_slice(s.trail.log(), facts.member(&caller.id), &caller.id, q.start)
    })
    .await
    .map(Json)
}

/// Entries of `log` from `start` (at most [`MAX_AUDIT_SLICE`]) and its
/// latest checkpoint, for `member` (the caller, as the directory knows it).
/// The entries are sealed, but their policies name patients: they are for
/// patients (who read their own) and auditors. Both services answer with it
/// for their own log.
pub fn audit_slice(
    log: &asclepios_audit::Log<asclepios_store::Store>,
    member: Option<&asclepios_api::directory::Member>,
    caller: &str,
    start: Option<u64>,
) -> Result<AuditSlice, ApiError> {
    crate::require_active(member, caller)?;
    let may_read = member.is_some_and(|m| {
        m.kind == "patient"
            || m.attributes
                .iter()
                .any(|a| attribute_name(a) == AUDITOR_ROLE)
    });
    if !may_read {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "the audit log is for patients and auditors",
        ));
    }
    let unavailable =
        |e: asclepios_audit::Error| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
    let (size, _) = log.sync().map_err(unavailable)?;
    let start = start.unwrap_or(0).min(size);
    let end = (start + MAX_AUDIT_SLICE).min(size);
    let entries = log.entries(start..end).map_err(unavailable)?;
    Ok(AuditSlice {
        start,
        entries: entries.iter().map(|e| B64.encode(e)).collect(),
        checkpoint: log.latest_checkpoint().map_err(unavailable)?,
    })
}

/// Which entries of the log.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SliceQuery {
    /// The first entry wanted.
    pub start: Option<u64>,
}

/// Logs an export (what profile, how many resources, to whom).
pub(crate) async fn record_export(
    State(s): State<Arc<RecordService>>,
    Extension(Caller(caller)): Extension<Caller>,
    Extension(v): Extension<Verified>,
    body: axum::body::Bytes,
) -> Result<Json<WithReceipt<()>>, ApiError> {
    let req: ExportNotice = json_body(&body)?;
    blocking(move || {
        let work = || -> Result<(), ApiError> {
            s.check_caller(&caller.id)?;
            check_stats_name("profile", &req.profile)?;
            check_stats_name("recipient", &req.recipient)?;
            Ok(())
        };
        let resource = format!(
            "export: profile {}, {} resources from {} records, to {}",
            shown(&req.profile),
            req.resources,
            req.records_read,
            shown(&req.recipient)
        );
        audit_outcome(
            &s.trail,
            &v,
            &caller.id,
            (Action::Export, Some("HRESCH")),
            resource,
            work(),
        )
    })
    .await
    .map(Json)
}

pub(crate) async fn attestation_verdict(
    State(s): State<Arc<RecordService>>,
    Extension(Caller(caller)): Extension<Caller>,
    Extension(v): Extension<Verified>,
    body: axum::body::Bytes,
) -> Result<Json<WithReceipt<VerdictLogged>>, ApiError> {
    let req: AttestationVerdict = json_body(&body)?;
    blocking(move || {
        s.check_caller(&caller.id)?;
        if !matches!(
            req.trust.as_str(),
            "affirming" | "warning" | "contraindicated"
        ) || req.subject.len() > 64
        {
            return Err(bad_request(
                "trust: affirming, warning or contraindicated; subject: at most 64 bytes",
            ));
        }
        let resource: String = format!("attestation of {}: {}", shown(&req.subject), req.summary)
            .chars()
            .take(512)
            .collect();
        // A refused attestation is logged as a denial (of the authority).
        let outcome = if req.trust == "contraindicated" {
            Outcome::Denied
        } else {
            Outcome::Success
        };
        let event = AuditEvent::new(
            &caller.id,
            Action::Attestation,
            resource,
            None,
            outcome,
            Some(v.signature.clone()),
        );
        let receipt = log_event(&s.trail, &event, &v, StatusCode::OK)?;
        Ok(WithReceipt {
            result: VerdictLogged { trust: req.trust },
            receipt,
        })
    })
    .await
    .map(Json)
}
