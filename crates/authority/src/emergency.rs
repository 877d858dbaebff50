//! Break-glass: an emergency clinician declares an emergency for a patient
//! and gets a short-lived key for the emergency clause of the patient's
//! policies. The grant is logged as critical, reaches the patient and the
//! auditors' review queue, and ends on its own (the sweeper revokes the
//! attribute and re-wraps).
use crate::blocking;
use crate::emergency_attribute;
use crate::store_error;
use crate::EmergencyGranted;
use crate::EmergencyRequest;
use crate::KeyAuthority;
use crate::WithReceipt;
use crate::EMERGENCY_ROLE;
use asclepios_audit::Action;
use asclepios_audit::AuditEvent;
use asclepios_audit::Outcome;
use asclepios_audit::Receipt;
use asclepios_net::server::json_body;
use asclepios_net::server::ApiError;
use asclepios_net::server::Caller;
use asclepios_net::signature::Verified;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Extension;
use axum::Json;
use std::sync::Arc;

impl KeyAuthority {
    /// Ends expired break-glass grants: the clinician's emergency attribute is
    /// revoked at once (both services refuse it from then on), and the
    /// patient's records are re-wrapped by the sweeper's bounded re-wrap, so
    /// the short-lived key stops opening them. A grant that cannot be ended
    /// is logged and does not stop the others. Returns how many ended.
    pub fn expire_emergency_grants(&self, now: i64) -> Result<usize, String> {
        let mut ended = 0;
        let mut failures = Vec::new();
        for g in self
            .store
            .expired_emergency_grants(now)
            .map_err(|e| e.to_string())?
        {
            match self.end_grant(&g, now) {
                Ok(true) => ended += 1,
                Ok(false) => {}
                Err(e) => {
                    // Who and for whom goes to the audit log, not the
                    // operator's log.
                    tracing::error!("ending an expired break-glass grant failed: {e}");
                    failures.push(e);
                }
            }
        }
        match failures.first() {
            Some(first) => Err(format!(
                "{} expired grant(s) could not be ended (first: {first})",
                failures.len()
            )),
            None => Ok(ended),
        }
    }

    /// Revokes an expired grant's attribute unless a newer live grant keeps
    /// it; the re-wrap is left to [`KeyAuthority::reconcile_rewraps`], so
    /// one patient's many records hold up no other expiry. Whether it ended.
    fn end_grant(&self, g: &asclepios_store::EmergencyGrant, now: i64) -> Result<bool, String> {
        let attribute = emergency_attribute(&g.patient);
        // A newer, live grant for the same clinician and patient keeps
        // the attribute: only the last grant's expiry ends it.
        let live = self
            .store
            .emergency_grants(&g.patient)
            .map_err(|e| e.to_string())?
            .iter()
            .any(|o| o.clinician == g.clinician && o.expires_at > now);
        if live {
            return Ok(false);
        }
        let still_held = self
            .store
            .identity_attributes(&g.clinician)
            .map_err(|e| e.to_string())?
            .iter()
            .any(|a| a.attribute == attribute);
        if !still_held {
            return Ok(false);
        }
        self.store
            .revoke_attribute(&g.clinician, &attribute)
            .map_err(|e| e.to_string())?;
        self.rewrap_may_be_pending();
        Ok(true)
    }

    pub(crate) fn break_glass(
        &self,
        caller: &asclepios_net::pki::PeerIdentity,
        v: &Verified,
        req: EmergencyRequest,
    ) -> Result<WithReceipt<EmergencyGranted>, ApiError> {
        let mut event_id = [0u8; 16];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut event_id);
        let event_id = hex::encode(event_id);
        let refuse = |e: ApiError| -> Result<WithReceipt<EmergencyGranted>, ApiError> {
            self.emergency_event(&event_id, &caller.id, &req, v, Outcome::Denied, e.status)?;
            Err(e.logged())
        };
        if let Err(e) = self.active(&caller.id) {
            return refuse(e);
        }
        if req.reason.trim().is_empty()
            || req.reason.len() > 1000
            || req.patient.is_empty()
            || req.patient.len() > 128
        {
            return refuse(ApiError::new(
                StatusCode::BAD_REQUEST,
                "a patient and a reason (up to 1000 characters) are required",
            ));
        }
        // The role first: without it nobody learns whether the name is a
        // patient here (review finding L1).
        let holds_role = self
            .store
            .identity_attributes(&caller.id)
            .map_err(store_error)?
            .iter()
            .any(|a| a.attribute == EMERGENCY_ROLE);
        if !holds_role {
            return refuse(ApiError::new(
                StatusCode::FORBIDDEN,
                format!("breaking the glass needs `{EMERGENCY_ROLE}`"),
            ));
        }
        let is_patient = asclepios_net::pki::check_identity_id(&req.patient).is_ok()
            && self
                .store
                .identity(&req.patient)
                .map_err(store_error)?
                .is_some_and(|i| i.kind == "patient");
        if !is_patient {
            return refuse(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("`{}` is not a patient in the directory", req.patient),
            ));
        }
        let now = asclepios_net::server::unix_now() as i64;
        let mut id = [0u8; 12];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut id);
        let grant = asclepios_store::EmergencyGrant {
            patient: req.patient.clone(),
            grant_id: hex::encode(id),
            clinician: caller.id.clone(),
            // The reason is health information: it lives only in the
            // encrypted audit event, which the grant points to.
            reason: format!("in audit event {event_id}"),
            issued_at: now,
            expires_at: now + self.emergency_seconds,
            reviewed_by: None,
            reviewed_at: None,
        };
        let attribute = emergency_attribute(&req.patient);
        // The grant row first: an attribute without a row would never expire.
        self.store
            .put_emergency_grant(&grant)
            .map_err(store_error)?;
        self.store
            .grant_attribute(&caller.id, &attribute)
            .map_err(store_error)?;
        let receipt = self.emergency_event(
            &event_id,
            &caller.id,
            &req,
            v,
            Outcome::Success,
            StatusCode::OK,
        )?;
        Ok(WithReceipt {
            result: EmergencyGranted {
                grant_id: grant.grant_id,
                attribute,
                expires_at: grant.expires_at,
            },
            receipt,
        })
    }

    /// The critical audit event of a break-glass: readable by the patient.
    pub(crate) fn emergency_event(
        &self,
        event_id: &str,
        caller: &str,
        req: &EmergencyRequest,
        v: &Verified,
        outcome: Outcome,
        status: StatusCode,
    ) -> Result<Receipt, ApiError> {
        let patient =
            Some(req.patient.as_str()).filter(|p| asclepios_net::pki::check_identity_id(p).is_ok());
        let resource = format!(
            "patient/{}; reason: {}",
            req.patient.chars().take(128).collect::<String>(),
            req.reason.chars().take(1000).collect::<String>()
        );
        let mut event = AuditEvent::new(
            caller,
            Action::EmergencyAccess,
            resource,
            patient,
            outcome,
            Some(v.signature.clone()),
        );
        event.id = event_id.to_string();
        event.purpose = "ETREAT".into();
        event.emergency = true;
        asclepios_service::log_event(&self.trail, &event, v, status)
    }
}

pub(crate) async fn emergency(
    State(s): State<Arc<KeyAuthority>>,
    Extension(Caller(caller)): Extension<Caller>,
    Extension(v): Extension<Verified>,
    body: axum::body::Bytes,
) -> Result<Json<WithReceipt<EmergencyGranted>>, ApiError> {
    let req: EmergencyRequest = json_body(&body)?;
    blocking(move || s.break_glass(&caller, &v, req))
        .await
        .map(Json)
}
