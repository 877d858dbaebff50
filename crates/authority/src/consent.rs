//! Patients' consents (GDPR): a patient grants a party access to their
//! records for a purpose, for some resource types, until a date; and
//! withdraws it. A grant gives the party the attribute `consent:<patient>`,
//! which record policies name; withdrawal and expiry revoke it as any
//! revocation: the attribute's version bumps and the patient's records are
//! re-wrapped, so the party's keys stop opening them.
//!
//! Resource types and purpose are recorded (and exported as FHIR Consent) but
//! not enforced per type by the cryptography: the attribute is per patient.

use crate::blocking;
use crate::consent;
use crate::store_error;
use crate::KeyAuthority;
use crate::WithReceipt;
pub use asclepios_api::consent::{ConsentGrant, ConsentOut};
use asclepios_audit::Action;
use asclepios_audit::AuditEvent;
use asclepios_audit::Outcome;
use asclepios_audit::Receipt;
use asclepios_net::server::json_body;
use asclepios_net::server::ApiError;
use asclepios_net::server::Caller;
use asclepios_net::signature::Verified;
use asclepios_store::IdentityStatus;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Extension;
use axum::Json;
use std::sync::Arc;

/// The attribute a consent gives its grantee.
pub fn consent_attribute(patient: &str) -> String {
    format!("consent:{patient}")
}

/// The FHIR R4 Consent resource for a consent.
pub fn to_fhir(
    patient: &str,
    consent_id: &str,
    active: bool,
    grant: &ConsentGrant,
    updated_at: i64,
) -> serde_json::Value {
    use serde_json::json;
    let rfc3339 = |t: i64| {
        time::OffsetDateTime::from_unix_timestamp(t)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
    };
    let mut provision = json!({
        "type": "permit",
        "actor": [{
            "role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]},
            "reference": {"identifier": {"value": grant.grantee}},
        }],
        "purpose": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": grant.purpose}],
    });
    if !grant.resource_types.iter().any(|t| t == "*") {
        provision["class"] = grant
            .resource_types
            .iter()
            .map(|t| json!({"system": "http://hl7.org/fhir/resource-types", "code": t}))
            .collect();
    }
    if let Some(end) = grant.expires_at.and_then(rfc3339) {
        provision["period"] = json!({"end": end});
    }
    json!({
        "resourceType": "Consent",
        "id": consent_id,
        "status": if active { "active" } else { "inactive" },
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0", "display": "Patient Consent"}]}],
        "patient": {"identifier": {"value": patient}},
        "dateTime": rfc3339(updated_at),
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]},
        "provision": provision,
    })
}

impl KeyAuthority {
    /// Ends a consent: recorded as withdrawn; if no other active consent of
    /// the patient names the same grantee, the grantee's `consent:<patient>`
    /// is revoked and the patient's records re-wrapped: at once if
    /// `rewrap_now` (a withdrawal: the patient hears "done" after it), else
    /// by the sweeper's bounded re-wrap (an expiry, so that one patient's
    /// many records hold up no other expiry).
    pub(crate) fn end_consent(
        &self,
        c: &asclepios_store::Consent,
        rewrap_now: bool,
    ) -> Result<(), String> {
        let mut withdrawn = c.clone();
        withdrawn.status = asclepios_store::ConsentStatus::Withdrawn;
        let others = self
            .store
            .consents(&c.patient)
            .map_err(|e| e.to_string())?
            .into_iter()
            .any(|o| {
                o.consent_id != c.consent_id
                    && o.grantee == c.grantee
                    && o.status == asclepios_store::ConsentStatus::Active
            });
        let attribute = consent::consent_attribute(&c.patient);
        let held = self
            .store
            .identity_attributes(&c.grantee)
            .map_err(|e| e.to_string())?
            .iter()
            .any(|a| a.attribute == attribute);
        // The consent ends and its attribute goes in one transaction.
        let revoke = !others && held;
        self.store
            .end_consent(
                &withdrawn,
                revoke.then_some((c.grantee.as_str(), attribute.as_str())),
            )
            .map_err(|e| e.to_string())?;
        if revoke && rewrap_now {
            self.rewrap_or_defer();
        } else if revoke {
            self.rewrap_may_be_pending();
        }
        Ok(())
    }

    /// Ends consents whose expiry has passed; their re-wraps are left to
    /// [`KeyAuthority::reconcile_rewraps`]. One that cannot be ended is
    /// logged and does not stop the others (the error names the first).
    /// Returns how many ended.
    pub fn expire_consents(&self, now: i64) -> Result<usize, String> {
        let mut ended = 0;
        let mut failures = Vec::new();
        for c in self.store.all_consents().map_err(|e| e.to_string())? {
            let expired = c.status == asclepios_store::ConsentStatus::Active
                && serde_json::from_str::<consent::ConsentGrant>(&c.scope)
                    .ok()
                    .and_then(|g| g.expires_at)
                    .is_some_and(|t| t <= now);
            if expired {
                match self.end_consent(&c, false) {
                    Ok(()) => ended += 1,
                    Err(e) => {
                        tracing::error!("ending expired consent {} failed: {e}", c.consent_id);
                        failures.push(e);
                    }
                }
            }
        }
        match failures.first() {
            Some(first) => Err(format!(
                "{} expired consent(s) could not be ended (first: {first})",
                failures.len()
            )),
            None => Ok(ended),
        }
    }

    pub(crate) fn consent_out(c: &asclepios_store::Consent) -> Option<consent::ConsentOut> {
        let grant: consent::ConsentGrant = serde_json::from_str(&c.scope).ok()?;
        let active = c.status == asclepios_store::ConsentStatus::Active;
        Some(consent::ConsentOut {
            consent_id: c.consent_id.clone(),
            version: c.version,
            status: if active { "active" } else { "withdrawn" }.into(),
            fhir: consent::to_fhir(&c.patient, &c.consent_id, active, &grant, c.updated_at),
            grant,
        })
    }

    pub(crate) fn consent_event(
        &self,
        patient: &str,
        resource: String,
        v: &Verified,
        outcome: Outcome,
        status: StatusCode,
    ) -> Result<Receipt, ApiError> {
        let patient_ok = asclepios_net::pki::check_identity_id(patient).is_ok();
        let mut event = AuditEvent::new(
            patient,
            Action::ConsentChange,
            resource,
            Some(patient).filter(|_| patient_ok),
            outcome,
            Some(v.signature.clone()),
        );
        event.purpose = "PATADMIN".into();
        asclepios_service::log_event(&self.trail, &event, v, status)
    }

    /// The caller must be an active patient identity.
    pub(crate) fn patient(&self, caller: &str) -> Result<(), ApiError> {
        self.active(caller)?;
        let is_patient = self
            .store
            .identity(caller)
            .map_err(store_error)?
            .is_some_and(|i| i.kind == crate::facts::PATIENT_KIND);
        if !is_patient {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "only patients give or withdraw consent for their records",
            ));
        }
        Ok(())
    }

    pub(crate) fn grant(
        &self,
        caller: &asclepios_net::pki::PeerIdentity,
        v: &Verified,
        grant: consent::ConsentGrant,
    ) -> Result<WithReceipt<consent::ConsentOut>, ApiError> {
        let checks = || -> Result<(), ApiError> {
            self.patient(&caller.id)?;
            let token = |s: &str| {
                !s.is_empty()
                    && s.len() <= 64
                    && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'*')
            };
            if !token(&grant.purpose)
                || grant.resource_types.is_empty()
                || !grant.resource_types.iter().all(|t| token(t))
            {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "purpose and resource types must be codes (letters and digits, or *)",
                ));
            }
            if grant
                .expires_at
                .is_some_and(|t| t <= asclepios_net::server::unix_now() as i64)
            {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "the expiry is in the past",
                ));
            }
            match self.store.identity(&grant.grantee).map_err(store_error)? {
                Some(i) if i.status == IdentityStatus::Active => Ok(()),
                _ => Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("no active identity `{}` to grant to", grant.grantee),
                )),
            }
        };
        let resource = format!("consent for {}", grant.grantee);
        if let Err(e) = checks() {
            self.consent_event(&caller.id, resource, v, Outcome::Denied, e.status)?;
            return Err(e.logged());
        }
        let mut id = [0u8; 12];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut id);
        let consent_id = format!("consent-{}", hex::encode(id));
        let record = asclepios_store::Consent {
            patient: caller.id.clone(),
            consent_id: consent_id.clone(),
            version: 0,
            grantee: grant.grantee.clone(),
            scope: serde_json::to_string(&grant)
                .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))?,
            status: asclepios_store::ConsentStatus::Active,
            document: None,
            updated_at: 0,
        };
        let version = self.store.put_consent(&record).map_err(store_error)?;
        self.store
            .grant_attribute(&grant.grantee, &consent::consent_attribute(&caller.id))
            .map_err(store_error)?;
        let receipt = self.consent_event(
            &caller.id,
            format!("{consent_id} for {}", grant.grantee),
            v,
            Outcome::Success,
            StatusCode::OK,
        )?;
        let stored = asclepios_store::Consent {
            version,
            updated_at: asclepios_net::server::unix_now() as i64,
            ..record
        };
        let out = Self::consent_out(&stored).ok_or_else(|| {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "consent not readable")
        })?;
        Ok(WithReceipt {
            result: out,
            receipt,
        })
    }

    pub(crate) fn withdraw(
        &self,
        caller: &asclepios_net::pki::PeerIdentity,
        v: &Verified,
        consent_id: &str,
    ) -> Result<WithReceipt<consent::ConsentOut>, ApiError> {
        let resource = format!("{consent_id} withdrawn");
        let found = self.patient(&caller.id).and_then(|()| {
            self.store
                .consents(&caller.id)
                .map_err(store_error)?
                .into_iter()
                .find(|c| {
                    c.consent_id == consent_id && c.status == asclepios_store::ConsentStatus::Active
                })
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::NOT_FOUND,
                        format!("no active consent `{consent_id}`"),
                    )
                })
        });
        let c = match found {
            Ok(c) => c,
            Err(e) => {
                self.consent_event(&caller.id, resource, v, Outcome::Denied, e.status)?;
                return Err(e.logged());
            }
        };
        if let Err(e) = self.end_consent(&c, true) {
            // Database details stay in the operator's log; the failure is
            // audited like any other outcome.
            tracing::error!("withdrawing consent {consent_id}: {e}");
            let _ = self.consent_event(
                &caller.id,
                resource,
                v,
                Outcome::Failed,
                StatusCode::SERVICE_UNAVAILABLE,
            );
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                if self.store.integrity_alarm().is_some() {
                    asclepios_service::INTEGRITY_ALARM
                } else {
                    "the consent could not be withdrawn; try again"
                },
            ));
        }
        let receipt =
            self.consent_event(&caller.id, resource, v, Outcome::Success, StatusCode::OK)?;
        let latest = self
            .store
            .consents(&caller.id)
            .map_err(store_error)?
            .into_iter()
            .find(|x| x.consent_id == consent_id)
            .and_then(|x| Self::consent_out(&x))
            .ok_or_else(|| {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "consent not readable")
            })?;
        Ok(WithReceipt {
            result: latest,
            receipt,
        })
    }
}

pub(crate) async fn grant_consent(
    State(s): State<Arc<KeyAuthority>>,
    Extension(Caller(caller)): Extension<Caller>,
    Extension(v): Extension<Verified>,
    body: axum::body::Bytes,
) -> Result<Json<WithReceipt<consent::ConsentOut>>, ApiError> {
    let grant: consent::ConsentGrant = json_body(&body)?;
    blocking(move || s.grant(&caller, &v, grant))
        .await
        .map(Json)
}

pub(crate) async fn withdraw_consent(
    State(s): State<Arc<KeyAuthority>>,
    Extension(Caller(caller)): Extension<Caller>,
    Extension(v): Extension<Verified>,
    axum::extract::Path(consent_id): axum::extract::Path<String>,
) -> Result<Json<WithReceipt<consent::ConsentOut>>, ApiError> {
    blocking(move || s.withdraw(&caller, &v, &consent_id))
        .await
        .map(Json)
}

pub(crate) async fn list_consents(
    State(s): State<Arc<KeyAuthority>>,
    Extension(Caller(caller)): Extension<Caller>,
) -> Result<Json<Vec<consent::ConsentOut>>, ApiError> {
    blocking(move || {
        s.patient(&caller.id)?;
        Ok(s.store
            .consents(&caller.id)
            .map_err(store_error)?
            .iter()
            .filter_map(KeyAuthority::consent_out)
            .collect())
    })
    .await
    .map(Json)
}
