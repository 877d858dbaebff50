//! Patients' record-naming keys (`asclepios_crypto::naming`): a member of
//! a patient's circle (the patient, the care team, a consented party, a
//! live break-glass grant) or a lab gets the key that turns a FHIR
//! reference into the opaque id the record is stored under. The same
//! people may write the patient's records; anyone else, the record service
//! and its store included, sees ids that say nothing. Every issuance is
//! audited and shown to the patient.

use std::sync::Arc;

use asclepios_api::records::{NamingKeyOut, NamingKeyRequest};
use asclepios_audit::{Action, AuditEvent};
use asclepios_crypto::naming::NamingSecret;
use asclepios_net::server::{json_body, ApiError, Caller};
use asclepios_net::signature::Verified;
use asclepios_service::{blocking, check_name};
use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};

use crate::{KeyAuthority, WithReceipt};

/// Whoever may write any patient's records also names them.
const NAMING_ROLES: [&str; 1] = ["role:lab"];

impl KeyAuthority {
    /// Derives patients' naming keys from `secret`.
    pub fn with_naming_secret(mut self, secret: NamingSecret) -> Self {
        self.naming = Some(secret);
        self
    }

    pub(crate) fn naming_key(
        &self,
        caller: &asclepios_net::pki::PeerIdentity,
        v: &Verified,
        req: NamingKeyRequest,
    ) -> Result<WithReceipt<NamingKeyOut>, ApiError> {
        check_name("patient", &req.patient)?;
        let patient = req.patient.as_str();
        let checks = || -> Result<NamingKeyOut, ApiError> {
            self.active(&caller.id)?;
            self.require_attested(caller)?;
            let held = self.current_attributes(&caller.id)?;
            if !asclepios_service::in_circle(&held, patient, &NAMING_ROLES) {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    format!(
                        "`{}` may not name records of {patient}: it is not the patient, on the care \
                         team, consented, in an emergency or a lab",
                        caller.id
                    ),
                ));
            }
            let secret = self.naming.as_ref().ok_or_else(|| {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "this authority was started without a record-naming secret",
                )
            })?;
            Ok(NamingKeyOut {
                patient: patient.to_string(),
                key: hex::encode(secret.patient_key(patient).to_bytes()),
            })
        };
        asclepios_service::log_outcome(&self.trail, v, checks(), |outcome| {
            AuditEvent::new(
                &caller.id,
                Action::KeyIssue,
                format!("record-naming key of {patient}"),
                Some(patient),
                outcome,
                Some(v.signature.clone()),
            )
        })
    }
}

pub(crate) async fn naming_key(
    State(s): State<Arc<KeyAuthority>>,
    Extension(Caller(caller)): Extension<Caller>,
    Extension(v): Extension<Verified>,
    body: axum::body::Bytes,
) -> Result<Json<WithReceipt<NamingKeyOut>>, ApiError> {
    let req: NamingKeyRequest = json_body(&body)?;
    blocking(move || s.naming_key(&caller, &v, req))
        .await
        .map(Json)
}
