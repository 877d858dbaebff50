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
use crate::{audit_outcome, audit_slice, log_event, shown, SliceQuery};
use asclepios_audit::Action;
use asclepios_audit::AuditEvent;
use asclepios_audit::Outcome;
use asclepios_net::server::json_body;
use asclepios_net::server::ApiError;
use asclepios_net::server::Caller;
use asclepios_net::signature::Verified;
use axum::extract::Query;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Extension;
use axum::Json;
use std::sync::Arc;

pub(crate) async fn audit_entries(
    State(s): State<Arc<RecordService>>,
    Extension(Caller(caller)): Extension<Caller>,
    q: Result<Query<SliceQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<AuditSlice>, ApiError> {
    let Query(q) = q.map_err(|e| bad_request(format!("query: {}", e.body_text())))?;
    blocking(move || {
        let facts = s.directory.facts()?;
        audit_slice(s.trail.log(), facts.member(&caller.id), &caller.id, &q)
    })
    .await
    .map(Json)
}

/// A consistency proof between two sizes of the log.
pub(crate) async fn audit_consistency(
    State(s): State<Arc<RecordService>>,
    Extension(Caller(caller)): Extension<Caller>,
    q: Result<Query<asclepios_service::ConsistencyQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<asclepios_api::records::ConsistencyProof>, ApiError> {
    let Query(q) = q.map_err(|e| bad_request(format!("query: {}", e.body_text())))?;
    blocking(move || {
        let facts = s.directory.facts()?;
        asclepios_service::audit_consistency(
            s.trail.log(),
            facts.member(&caller.id),
            &caller.id,
            q.old,
            q.new,
        )
    })
    .await
    .map(Json)
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
