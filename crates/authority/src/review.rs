//! Auditors' review of break-glass grants: the queue of unreviewed grants,
//! and a decision (approve, or flag for follow-up) with a comment. The
//! decision and comment live in the sealed audit event (the comment may
//! speak of the patient's health); the grant row records who reviewed it.

use crate::blocking;
use crate::review;
pub use asclepios_api::review::{PendingReview, ReviewDecision, Reviewed};
use asclepios_audit::{Action, AuditEvent};
use asclepios_net::pki::PeerIdentity;
use asclepios_net::server::json_body;
use asclepios_net::server::ApiError;
use asclepios_net::server::Caller;
use asclepios_net::signature::Verified;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Extension;
use axum::Json;
use std::sync::Arc;

use crate::{store_error, KeyAuthority, WithReceipt};

/// The role that reviews break-glass grants.
pub use asclepios_service::AUDITOR_ROLE;

impl KeyAuthority {
    fn require_auditor(&self, caller: &PeerIdentity) -> Result<(), ApiError> {
        self.active(&caller.id)?;
        if self.holds_role(&caller.id, &[AUDITOR_ROLE])? {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!("reviewing break-glass grants needs `{AUDITOR_ROLE}`"),
            ))
        }
    }

    /// Unreviewed break-glass grants, oldest first (auditors only).
    pub(crate) fn pending_reviews(
        &self,
        caller: &PeerIdentity,
    ) -> Result<Vec<PendingReview>, ApiError> {
        self.require_auditor(caller)?;
        Ok(self
            .store
            .unreviewed_emergency_grants()
            .map_err(store_error)?
            .into_iter()
            .map(|g| PendingReview {
                patient: g.patient,
                grant_id: g.grant_id,
                clinician: g.clinician,
                issued_at: g.issued_at,
                expires_at: g.expires_at,
            })
            .collect())
    }

    /// Records an auditor's decision, audited (readable by the patient).
    pub(crate) fn review(
        &self,
        caller: &PeerIdentity,
        v: &Verified,
        req: ReviewDecision,
    ) -> Result<WithReceipt<Reviewed>, ApiError> {
        let shown: String = req.patient.chars().take(128).collect();
        let patient = asclepios_net::pki::check_identity_id(&req.patient)
            .is_ok()
            .then_some(shown.as_str());
        let resource: String = format!(
            "review of break-glass grant {} on patient/{shown}: {}; comment: {}",
            req.grant_id.chars().take(64).collect::<String>(),
            req.decision.chars().take(16).collect::<String>(),
            req.comment.chars().take(2000).collect::<String>()
        );
        let work = || -> Result<Reviewed, ApiError> {
            self.require_auditor(caller)?;
            if !matches!(req.decision.as_str(), "approve" | "flag") || req.comment.len() > 2000 {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "decision: approve or flag; comment: up to 2000 characters",
                ));
            }
            if req.decision == "flag" && req.comment.trim().is_empty() {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "flagging a grant needs a comment saying why",
                ));
            }
            self.store
                .review_emergency_grant(&req.patient, &req.grant_id, &caller.id)
                .map_err(store_error)?;
            Ok(Reviewed {
                grant_id: req.grant_id.clone(),
                decision: req.decision.clone(),
            })
        };
        asclepios_service::log_outcome(&self.trail, v, work(), |outcome| {
            let mut event = AuditEvent::new(
                &caller.id,
                Action::EmergencyAccess,
                resource,
                patient,
                outcome,
                Some(v.signature.clone()),
            );
            // Health-system administration, not treatment.
            event.purpose = "HSYSADMIN".into();
            event
        })
    }
}

pub(crate) async fn pending_reviews(
    State(s): State<Arc<KeyAuthority>>,
    Extension(Caller(caller)): Extension<Caller>,
) -> Result<Json<Vec<review::PendingReview>>, ApiError> {
    blocking(move || s.pending_reviews(&caller)).await.map(Json)
}

pub(crate) async fn review_grant(
    State(s): State<Arc<KeyAuthority>>,
    Extension(Caller(caller)): Extension<Caller>,
    Extension(v): Extension<Verified>,
    body: axum::body::Bytes,
) -> Result<Json<WithReceipt<review::Reviewed>>, ApiError> {
    let req: review::ReviewDecision = json_body(&body)?;
    blocking(move || s.review(&caller, &v, req)).await.map(Json)
}
