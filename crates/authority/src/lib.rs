//! The key authority: holds the FAME master secret and the directory's view
//! of who holds which attribute at which version.
//!
//! * `POST /v1/keys`: a FAME key for the caller's current attributes, each at
//!   its current version (`role:doctor@v2` after two revocations), sealed to
//!   the caller's certificate key. Disabled identities are refused.
//! * `POST /v1/policy/resolve`: a policy with every attribute at its current
//!   version, the form records are sealed under, so a revoked holder's old key
//!   no longer satisfies what is written afterwards.
//! * `GET /v1/abe/public-key`: the FAME master public key.
//! * `POST /v1/search/tokens`, `POST /v1/search/index`: searchable
//!   encryption through the authority ([`search`]).
//! * `GET /v1/attestation/evidence`, `POST /v1/attestation/challenge`,
//!   `POST /v1/components/register`: remote attestation of the authority to
//!   its clients and of components to the authority ([`attestation`]).
//!
//! Every issuance and refusal is logged as a confidential audit event with a
//! signed receipt.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod attestation;
pub mod consent;
pub mod facts;
pub mod review;
pub mod search;
pub mod stats;

pub use asclepios_api::keys::{
    check_resolution, identity_entry_message, key_context, resolution_message, EmergencyGranted,
    EmergencyRequest, IdentityKey, IssuedKey, PolicyText, ResolvedPolicy,
};
use std::collections::BTreeSet;
use std::sync::Arc;

use asclepios_audit::{Action, AuditEvent, AuditTrail, Outcome, Receipt};
use asclepios_crypto::abe::MasterSecretKey;
use asclepios_crypto::policy::{attribute_name, Policy};
use asclepios_net::sealed_box::{self};
use asclepios_net::server::{json_body, require_signature, ApiError, Caller, SignatureCheck};
use asclepios_net::signature::Verified;
use asclepios_store::{IdentityStatus, Store};
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::Deserialize;

pub use asclepios_store::versioned_attribute as versioned;

/// The attribute that opens a patient's records in an emergency.
pub fn emergency_attribute(patient: &str) -> String {
    format!("emergency:{patient}")
}

/// The role allowed to break the glass.
pub const EMERGENCY_ROLE: &str = "role:emergency";

pub use asclepios_records::WithReceipt;
pub use attestation::{ComponentGate, EvidenceSource};

/// The authority's state.
pub struct KeyAuthority {
    store: Store,
    trail: AuditTrail<Store>,
    master: MasterSecretKey,
    public_key_hex: String,
    emergency_seconds: i64,
    mitra: asclepios_crypto::sse::Mitra,
    search_roles: Vec<String>,
    slot_sealer: stats::SlotSealer,
    attestation: attestation::Attestation,
    /// Whether the integrity alarm has been written to the audit log.
    alarm_logged: std::sync::atomic::AtomicBool,
    /// Held from a cohort's check against the cohorts already keyed to its
    /// record: two requests at once must not both pass the rule.
    cohort_lock: std::sync::Mutex<()>,
    /// Held across a directory change: changes of one identity's
    /// attributes never interleave.
    admin_lock: std::sync::Mutex<()>,
    /// Some re-wrap may not have completed (set at start and after any
    /// failure): the sweeper re-wraps every wrapper still naming an old
    /// attribute version until none is left.
    rewrap_pending: std::sync::atomic::AtomicBool,
    /// The signed directory facts last built, and the change they are at.
    facts_cache: std::sync::Mutex<Option<(u64, asclepios_api::SignedFacts)>>,
}

impl std::fmt::Debug for KeyAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyAuthority(<master secret redacted>)")
    }
}

use asclepios_records::{blocking, store_error};

impl KeyAuthority {
    /// An authority over `store` with the master secrets, logging through
    /// `trail`; break-glass grants last `emergency_seconds`; holders of one
    /// of `search_roles` (e.g. `role:doctor`) may search.
    pub fn new(
        store: Store,
        trail: AuditTrail<Store>,
        master: MasterSecretKey,
        sse_key: &asclepios_crypto::sse::SseKey,
        stats_key: &[u8; 32],
        emergency_seconds: u64,
        search_roles: Vec<String>,
    ) -> Self {
        let public_key_hex = hex::encode(master.public_key().to_bytes());
        KeyAuthority {
            mitra: asclepios_crypto::sse::Mitra::new(sse_key),
            store,
            trail,
            master,
            public_key_hex,
            emergency_seconds: i64::try_from(emergency_seconds).unwrap_or(3600),
            search_roles,
            slot_sealer: stats::SlotSealer::new(stats_key),
            attestation: Default::default(),
            alarm_logged: Default::default(),
            cohort_lock: Default::default(),
            admin_lock: Default::default(),
            rewrap_pending: std::sync::atomic::AtomicBool::new(true),
            facts_cache: Default::default(),
        }
    }

    /// Whether `caller` holds one of `roles` now.
    fn holds_role(&self, caller: &str, roles: &[&str]) -> Result<bool, ApiError> {
        Ok(self
            .current_attributes(caller)?
            .iter()
            .any(|a| roles.contains(&attribute_name(a))))
    }

    /// Slots (and their keys, sealed to the caller) for a data provider.
    fn stats_slots(
        &self,
        caller: &asclepios_net::pki::PeerIdentity,
        v: &Verified,
        req: stats::SlotRequest,
    ) -> Result<WithReceipt<stats::IssuedSlots>, ApiError> {
        let resource = format!(
            "stats slots: {} x{}",
            req.study.chars().take(128).collect::<String>(),
            req.count
        );
        let work = || -> Result<stats::IssuedSlots, ApiError> {
            self.active(&caller.id)?;
            self.require_attested(caller)?;
            stats::check_study_name("study", &req.study)?;
            if !self.holds_role(&caller.id, stats::PROVIDER_ROLES)? {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    format!(
                        "publishing statistics needs one of: {}",
                        stats::PROVIDER_ROLES.join(", ")
                    ),
                ));
            }
            let (first, keys) = stats::allocate_slots(
                &self.store,
                &self.slot_sealer,
                &req.study,
                &caller.id,
                req.count,
            )?;
            let sealed = sealed_box::seal(
                &caller.public_key,
                &stats::slots_context(&caller.id, &req.study),
                &keys,
            )
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
            Ok(stats::IssuedSlots {
                first,
                count: req.count,
                keys: sealed,
            })
        };
        asclepios_records::audit_outcome(
            &self.trail,
            v,
            &caller.id,
            (Action::KeyIssue, Some("HRESCH")),
            resource,
            work(),
        )
    }

    /// An aggregate key for a researcher, if the cohort passes the rule.
    fn stats_key(
        &self,
        caller: &asclepios_net::pki::PeerIdentity,
        v: &Verified,
        req: stats::StatsKeyRequest,
    ) -> Result<WithReceipt<stats::StatsKey>, ApiError> {
        let shown = |s: &str| s.chars().take(128).collect::<String>();
        let mut resource = format!(
            "stats key: study {}, label {}, cohort {}",
            shown(&req.study),
            shown(&req.label),
            shown(&req.cohort)
        );
        let work = || -> Result<stats::StatsKey, ApiError> {
            self.active(&caller.id)?;
            self.require_attested(caller)?;
            stats::check_study_name("study", &req.study)?;
            stats::check_study_name("label", &req.label)?;
            if !self.holds_role(&caller.id, &[stats::RESEARCHER_ROLE])? {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    format!("aggregate keys need `{}`", stats::RESEARCHER_ROLE),
                ));
            }
            let (slots, key) = {
                let _one_at_a_time = self.cohort_lock.lock().unwrap_or_else(|p| p.into_inner());
                stats::cohort_key(&self.store, &self.slot_sealer, &req.study, &req.cohort)?
            };
            let sealed = sealed_box::seal(
                &caller.public_key,
                &stats::stats_key_context(&caller.id, &req.study, &req.label),
                key.as_ref(),
            )
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
            Ok(stats::StatsKey {
                slots: slots.into_iter().collect(),
                key: sealed,
            })
        };
        let result = work();
        if let Ok(key) = &result {
            resource.push_str(&format!(" ({} slots)", key.slots.len()));
        }
        asclepios_records::audit_outcome(
            &self.trail,
            v,
            &caller.id,
            (Action::KeyIssue, Some("HRESCH")),
            resource,
            result,
        )
    }

    fn index(&self) -> search::SearchIndex<'_> {
        search::SearchIndex::new(&self.mitra, &self.store)
    }

    /// Search tokens for an authorised caller: an active identity holding
    /// one of the search roles. A search result names records (patient and
    /// id) whatever the caller's key opens, so search is a role of its own.
    fn search_tokens(
        &self,
        caller: &asclepios_net::pki::PeerIdentity,
        v: &Verified,
        req: search::TokenRequest,
    ) -> Result<WithReceipt<search::TokenLists>, ApiError> {
        // The audit event names the keywords (it is sealed to auditors); a
        // search for one patient's records is also shown to that patient.
        let shown: String = req.keywords.join(" and ").chars().take(1000).collect();
        let patients: BTreeSet<&str> = req
            .keywords
            .iter()
            .filter_map(|k| k.strip_prefix("patient:"))
            .filter(|p| asclepios_net::pki::check_identity_id(p).is_ok())
            .collect();
        let patient = (patients.len() == 1).then(|| *patients.first().expect("one"));
        let event = |outcome| {
            AuditEvent::new(
                &caller.id,
                Action::Search,
                format!("search: {shown}"),
                patient,
                outcome,
                Some(v.signature.clone()),
            )
        };
        let checks = || -> Result<search::TokenLists, ApiError> {
            self.active(&caller.id)?;
            self.require_attested(caller)?;
            let held = self.current_attributes(&caller.id)?;
            if !held
                .iter()
                .any(|a| self.search_roles.iter().any(|r| r == attribute_name(a)))
            {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    format!("searching needs one of: {}", self.search_roles.join(", ")),
                ));
            }
            search::check_keywords(&req.keywords, search::MAX_TOKEN_KEYWORDS)?;
            search::token_lists(&self.index(), &req.keywords)
        };
        asclepios_records::log_outcome(&self.trail, v, checks(), event)
    }

    /// Indexes a record under the keywords its writer derived. Only the
    /// author of the record's latest version, or its patient, may.
    fn index_record(
        &self,
        caller: &asclepios_net::pki::PeerIdentity,
        v: &Verified,
        req: search::IndexRequest,
    ) -> Result<WithReceipt<search::IndexOutcome>, ApiError> {
        asclepios_records::check_name("patient", &req.patient)?;
        asclepios_records::check_name("record_id", &req.record_id)?;
        let checks = || -> Result<(), ApiError> {
            self.active(&caller.id)?;
            // An unattested device writes nothing into the index (M6).
            self.require_attested(caller)?;
            search::check_keywords(&req.keywords, search::MAX_RECORD_KEYWORDS)?;
            let latest = self
                .store
                .record_version(&req.patient, &req.record_id, None)
                .map_err(store_error)?
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::NOT_FOUND,
                        format!("no record {}/{}", req.patient, req.record_id),
                    )
                })?;
            // The author as the record's signature proves it, with the key
            // the directory vouches for: the record store's field is not
            // evidence.
            let claimed = asclepios_records::stored_author(&latest.body)
                .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e))?;
            let key = self
                .store
                .identity(&claimed)
                .map_err(store_error)?
                .and_then(|i| i.public_key)
                .unwrap_or_default();
            let author = asclepios_records::verified_author(
                &latest.body,
                &req.patient,
                &req.record_id,
                latest.version,
                &key,
            )
            .map_err(|e| ApiError::new(StatusCode::CONFLICT, e))?;
            if author != caller.id && req.patient != caller.id {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "only the author of the record's latest version, or its patient, may index it",
                ));
            }
            Ok(())
        };
        let id = asclepios_records::search_ref(&req.patient, &req.record_id);
        let result = checks().and_then(|()| self.index().set_keywords(&id, &req.keywords));
        let detail = result.as_ref().map_or(String::new(), |o| {
            format!(": +{} -{} keywords", o.added, o.removed)
        });
        asclepios_records::log_outcome(&self.trail, v, result, |outcome| {
            AuditEvent::new(
                &caller.id,
                Action::Update,
                format!("search-index/{}/{}{detail}", req.patient, req.record_id),
                Some(&req.patient),
                outcome,
                Some(v.signature.clone()),
            )
        })
    }

    /// Ends expired break-glass grants: the clinician's emergency attribute is
    /// revoked and the patient's records re-wrapped, so the short-lived key
    /// stops opening them. Returns how many grants ended.
    pub fn expire_emergency_grants(&self, now: i64) -> Result<usize, String> {
        let mut ended = 0;
        for g in self
            .store
            .expired_emergency_grants(now)
            .map_err(|e| e.to_string())?
        {
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
                continue;
            }
            let still_held = self
                .store
                .identity_attributes(&g.clinician)
                .map_err(|e| e.to_string())?
                .iter()
                .any(|a| a.attribute == attribute);
            if still_held {
                self.store
                    .revoke_attribute(&g.clinician, &attribute)
                    .map_err(|e| e.to_string())?;
                rewrap_after_revocation(&self.store, &self.master, &[attribute])
                    .inspect_err(|_| self.rewrap_may_be_pending())?;
                ended += 1;
            }
        }
        Ok(ended)
    }

    /// Ends a consent: recorded as withdrawn; if no other active consent of
    /// the patient names the same grantee, the grantee's `consent:<patient>`
    /// is revoked and the patient's records re-wrapped.
    fn end_consent(&self, c: &asclepios_store::Consent) -> Result<(), String> {
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
        if revoke {
            rewrap_after_revocation(&self.store, &self.master, &[attribute])
                .inspect_err(|_| self.rewrap_may_be_pending())?;
        }
        Ok(())
    }

    /// Ends consents whose expiry has passed. Returns how many.
    pub fn expire_consents(&self, now: i64) -> Result<usize, String> {
        let mut ended = 0;
        for c in self.store.all_consents().map_err(|e| e.to_string())? {
            let expired = c.status == asclepios_store::ConsentStatus::Active
                && serde_json::from_str::<consent::ConsentGrant>(&c.scope)
                    .ok()
                    .and_then(|g| g.expires_at)
                    .is_some_and(|t| t <= now);
            if expired {
                self.end_consent(&c)?;
                ended += 1;
            }
        }
        Ok(ended)
    }

    fn consent_out(c: &asclepios_store::Consent) -> Option<consent::ConsentOut> {
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

    fn consent_event(
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
        asclepios_records::log_event(&self.trail, &event, v, status)
    }

    /// The caller must be an active patient identity.
    fn patient(&self, caller: &str) -> Result<(), ApiError> {
        self.active(caller)?;
        let is_patient = self
            .store
            .identity(caller)
            .map_err(store_error)?
            .is_some_and(|i| i.kind == "patient");
        if !is_patient {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "only patients give or withdraw consent for their records",
            ));
        }
        Ok(())
    }

    fn grant(
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
            return Err(e);
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

    fn withdraw(
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
                return Err(e);
            }
        };
        if let Err(e) = self.end_consent(&c) {
            // Database details stay in the operator's log; the failure is
            // audited like any other outcome.
            eprintln!("asclepios authority: withdrawing consent {consent_id}: {e}");
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
                    asclepios_records::INTEGRITY_ALARM
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

    fn break_glass(
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
            Err(e)
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
    fn emergency_event(
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
        asclepios_records::log_event(&self.trail, &event, v, status)
    }

    /// The integrity alarm of the authority's store, if raised; the first
    /// time it is seen it is written to the audit log (and to stderr for the
    /// operator). Blocks: call it off async threads.
    pub fn integrity_alarm(&self) -> Option<String> {
        let reason = self.store.integrity_alarm()?;
        if !self
            .alarm_logged
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            eprintln!("asclepios authority: INTEGRITY ALARM: {reason}");
            let event = AuditEvent::new(
                "authority",
                Action::IntegrityAlarm,
                format!("authority-state: {reason}"),
                None,
                Outcome::Failed,
                None,
            );
            let hash = <sha2::Sha256 as sha2::Digest>::digest(reason.as_bytes()).into();
            if let Err(e) = self.trail.record(&event, &hash, 503) {
                eprintln!("asclepios authority: the integrity alarm could not be logged: {e}");
                self.alarm_logged
                    .store(false, std::sync::atomic::Ordering::SeqCst);
            }
        }
        Some(reason)
    }

    /// Re-wraps what an earlier failure left under old attribute versions,
    /// if anything may be (see [`rewrap_stale`]). Blocks.
    pub fn reconcile_rewraps(&self) -> Result<usize, String> {
        use std::sync::atomic::Ordering;
        if !self.rewrap_pending.swap(false, Ordering::SeqCst) {
            return Ok(0);
        }
        rewrap_stale(&self.store, &self.master).inspect_err(|_| {
            self.rewrap_pending.store(true, Ordering::SeqCst);
        })
    }

    /// Notes that a re-wrap may not have completed.
    pub(crate) fn rewrap_may_be_pending(&self) {
        self.rewrap_pending
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Fails closed for a reason found outside the store: every request is
    /// answered 503 from now on, and the alarm is logged. Blocks.
    pub fn raise_alarm(&self, reason: &str) {
        self.store.raise_alarm(reason);
        self.integrity_alarm();
    }

    /// Verifies the authority's whole state again (the periodic check that
    /// also covers rows no request has read). Blocks.
    pub fn verify_state(&self) -> Option<String> {
        let _ = self.store.verify_integrity();
        self.integrity_alarm()
    }

    /// The router: every route behind the signature check.
    pub fn router(self: Arc<Self>, check: Arc<SignatureCheck>) -> Router {
        Router::new()
            .route("/v1/keys", post(issue_key))
            .route("/v1/policy/resolve", post(resolve_policy))
            .route("/v1/emergency", post(emergency))
            .route(
                "/v1/emergency/reviews",
                get(pending_reviews).post(review_grant),
            )
            .route("/v1/consents", post(grant_consent).get(list_consents))
            .route("/v1/consents/{consent_id}/withdraw", post(withdraw_consent))
            .route("/v1/abe/public-key", get(public_key))
            .route("/v1/identities/{id}", get(identity_key))
            .route("/v1/directory/facts", get(facts::directory_facts_answer))
            .route("/v1/search/tokens", post(search_tokens))
            .route("/v1/search/index", post(index_record))
            .route("/v1/stats/slots", post(stats_slots))
            .route("/v1/stats/keys", post(stats_key))
            .route("/v1/attestation/evidence", get(attestation_evidence))
            .route("/v1/attestation/challenge", post(attestation_challenge))
            .route("/v1/components/register", post(register_component))
            .route(
                "/v1/directory/identities",
                get(list_members).post(register_identity),
            )
            .route(
                "/v1/directory/identities/{id}/attributes",
                axum::routing::put(set_identity_attributes),
            )
            .route(
                "/v1/directory/identities/{id}/disable",
                post(disable_identity),
            )
            .route(
                "/v1/directory/identities/{id}/auditor-key",
                axum::routing::put(set_auditor_key),
            )
            .layer(axum::middleware::from_fn_with_state(
                self.store.clone(),
                facts::registered_key_guard,
            ))
            .layer(axum::middleware::from_fn_with_state(
                check,
                require_signature,
            ))
            .route(
                "/openapi.json",
                get(|| async { axum::Json(openapi_document()) }),
            )
            .layer(axum::middleware::from_fn_with_state(
                self.clone(),
                integrity_guard,
            ))
            .layer(axum::middleware::map_response(
                asclepios_net::server::json_errors,
            ))
            .with_state(self)
    }

    /// The key the authority signs directory entries, facts and resolved
    /// policies with (its service key).
    pub fn verifying_key(&self) -> ed25519_dalek::VerifyingKey {
        self.trail.verifying_key()
    }

    fn active(&self, caller: &str) -> Result<(), ApiError> {
        asclepios_records::require_active(facts::member(&self.store, caller)?.as_ref(), caller)
    }

    /// The caller's current attributes, each at its current version.
    pub fn current_attributes(&self, identity: &str) -> Result<Vec<String>, ApiError> {
        self.store.current_attributes(identity).map_err(store_error)
    }

    fn issue(
        &self,
        caller: &asclepios_net::pki::PeerIdentity,
        v: &Verified,
    ) -> Result<WithReceipt<IssuedKey>, ApiError> {
        let work = || -> Result<IssuedKey, ApiError> {
            self.active(&caller.id)?;
            self.require_attested(caller)?;
            let attributes = self.current_attributes(&caller.id)?;
            let key = self
                .master
                .keygen(&attributes, &mut rand_core::OsRng)
                .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
            let sealed = sealed_box::seal(
                &caller.public_key,
                &key_context(&caller.id),
                &key.to_bytes(),
            )
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
            Ok(IssuedKey {
                attributes,
                key: sealed,
            })
        };
        asclepios_records::audit_outcome(
            &self.trail,
            v,
            &caller.id,
            (Action::KeyIssue, None),
            format!("abe-key/{}", caller.id),
            work(),
        )
    }

    /// `policy` with every attribute at its current version.
    pub fn resolve(&self, policy: &Policy) -> Result<Policy, ApiError> {
        resolve_with(&self.store, policy).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))
    }
}

#[derive(Deserialize)]
struct NonceQuery {
    nonce: String,
}

/// Fails closed: while the integrity alarm is raised, every request is
/// answered 503 and nothing is issued; the alarm is logged once.
async fn integrity_guard(
    State(s): State<Arc<KeyAuthority>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let check = s.clone();
    let raised = blocking(move || Ok(check.integrity_alarm()))
        .await
        .unwrap_or_else(|_| Some("the integrity check was interrupted".into()));
    if raised.is_some() {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            asclepios_records::INTEGRITY_ALARM,
        )
        .into_response();
    }
    let response = next.run(request).await;
    // A request that tripped the alarm logs it now.
    let check = s.clone();
    let _ = blocking(move || Ok(check.integrity_alarm())).await;
    response
}

async fn attestation_evidence(
    State(s): State<Arc<KeyAuthority>>,
    axum::extract::Query(q): axum::extract::Query<NonceQuery>,
) -> Result<Json<attestation::EvidenceOut>, ApiError> {
    blocking(move || s.evidence(&q.nonce)).await.map(Json)
}

async fn attestation_challenge(
    State(s): State<Arc<KeyAuthority>>,
    Extension(Caller(caller)): Extension<Caller>,
) -> Result<Json<attestation::Challenge>, ApiError> {
    blocking(move || s.challenge(&caller)).await.map(Json)
}

async fn register_component(
    State(s): State<Arc<KeyAuthority>>,
    Extension(Caller(caller)): Extension<Caller>,
    Extension(v): Extension<Verified>,
    body: axum::body::Bytes,
) -> Result<Json<WithReceipt<attestation::Registered>>, ApiError> {
    let req: attestation::Registration = json_body(&body)?;
    blocking(move || s.register_component(&caller, &v, req))
        .await
        .map(Json)
}

async fn issue_key(
    State(s): State<Arc<KeyAuthority>>,
    Extension(Caller(caller)): Extension<Caller>,
    Extension(v): Extension<Verified>,
) -> Result<Json<WithReceipt<IssuedKey>>, ApiError> {
    blocking(move || s.issue(&caller, &v)).await.map(Json)
}

async fn search_tokens(
    State(s): State<Arc<KeyAuthority>>,
    Extension(Caller(caller)): Extension<Caller>,
    Extension(v): Extension<Verified>,
    body: axum::body::Bytes,
) -> Result<Json<WithReceipt<search::TokenLists>>, ApiError> {
    let req: search::TokenRequest = json_body(&body)?;
    blocking(move || s.search_tokens(&caller, &v, req))
        .await
        .map(Json)
}

async fn index_record(
    State(s): State<Arc<KeyAuthority>>,
    Extension(Caller(caller)): Extension<Caller>,
    Extension(v): Extension<Verified>,
    body: axum::body::Bytes,
) -> Result<Json<WithReceipt<search::IndexOutcome>>, ApiError> {
    let req: search::IndexRequest = json_body(&body)?;
    blocking(move || s.index_record(&caller, &v, req))
        .await
        .map(Json)
}

async fn stats_slots(
    State(s): State<Arc<KeyAuthority>>,
    Extension(Caller(caller)): Extension<Caller>,
    Extension(v): Extension<Verified>,
    body: axum::body::Bytes,
) -> Result<Json<WithReceipt<stats::IssuedSlots>>, ApiError> {
    let req: stats::SlotRequest = json_body(&body)?;
    blocking(move || s.stats_slots(&caller, &v, req))
        .await
        .map(Json)
}

async fn stats_key(
    State(s): State<Arc<KeyAuthority>>,
    Extension(Caller(caller)): Extension<Caller>,
    Extension(v): Extension<Verified>,
    body: axum::body::Bytes,
) -> Result<Json<WithReceipt<stats::StatsKey>>, ApiError> {
    let req: stats::StatsKeyRequest = json_body(&body)?;
    blocking(move || s.stats_key(&caller, &v, req))
        .await
        .map(Json)
}

async fn emergency(
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

async fn pending_reviews(
    State(s): State<Arc<KeyAuthority>>,
    Extension(Caller(caller)): Extension<Caller>,
) -> Result<Json<Vec<review::PendingReview>>, ApiError> {
    blocking(move || s.pending_reviews(&caller)).await.map(Json)
}

async fn list_members(
    State(s): State<Arc<KeyAuthority>>,
    Extension(Caller(caller)): Extension<Caller>,
    Extension(v): Extension<Verified>,
) -> Result<Json<WithReceipt<Vec<admin::MemberOut>>>, ApiError> {
    blocking(move || s.list_members(&caller.id, &v))
        .await
        .map(Json)
}

/// Runs an administrator's change off the async threads.
async fn directory_change(
    s: Arc<KeyAuthority>,
    caller: asclepios_net::pki::PeerIdentity,
    v: Verified,
    change: admin::Change,
) -> Result<Json<WithReceipt<admin::ChangeOut>>, ApiError> {
    blocking(move || s.change(&caller.id, &v, change))
        .await
        .map(Json)
}

/// A directory change whose body does not parse is refused, and audited
/// like every other attempt.
async fn parsed<T: serde::de::DeserializeOwned>(
    s: &Arc<KeyAuthority>,
    caller: &asclepios_net::pki::PeerIdentity,
    v: &Verified,
    target: &str,
    body: &[u8],
) -> Result<T, ApiError> {
    match json_body(body) {
        Ok(parsed) => Ok(parsed),
        Err(e) => {
            let (s, caller, v, target) =
                (s.clone(), caller.id.clone(), v.clone(), target.to_string());
            let (status, message) = (e.status, e.message.clone());
            let logged = blocking(move || s.refused_change(&caller, &v, &target, e)).await;
            Err(logged.err().unwrap_or(ApiError::new(status, message)))
        }
    }
}

async fn register_identity(
    State(s): State<Arc<KeyAuthority>>,
    Extension(Caller(caller)): Extension<Caller>,
    Extension(v): Extension<Verified>,
    body: axum::body::Bytes,
) -> Result<Json<WithReceipt<admin::ChangeOut>>, ApiError> {
    let change = admin::Change::Register(parsed(&s, &caller, &v, "(new identity)", &body).await?);
    directory_change(s, caller, v, change).await
}

async fn set_identity_attributes(
    State(s): State<Arc<KeyAuthority>>,
    Extension(Caller(caller)): Extension<Caller>,
    Extension(v): Extension<Verified>,
    axum::extract::Path(id): axum::extract::Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<WithReceipt<admin::ChangeOut>>, ApiError> {
    let set = parsed(&s, &caller, &v, &id, &body).await?;
    directory_change(s, caller, v, admin::Change::SetAttributes(id, set)).await
}

async fn disable_identity(
    State(s): State<Arc<KeyAuthority>>,
    Extension(Caller(caller)): Extension<Caller>,
    Extension(v): Extension<Verified>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Json<WithReceipt<admin::ChangeOut>>, ApiError> {
    directory_change(s, caller, v, admin::Change::Disable(id)).await
}

async fn set_auditor_key(
    State(s): State<Arc<KeyAuthority>>,
    Extension(Caller(caller)): Extension<Caller>,
    Extension(v): Extension<Verified>,
    axum::extract::Path(id): axum::extract::Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<WithReceipt<admin::ChangeOut>>, ApiError> {
    let key = parsed(&s, &caller, &v, &id, &body).await?;
    directory_change(s, caller, v, admin::Change::AuditorKey(id, key)).await
}

async fn review_grant(
    State(s): State<Arc<KeyAuthority>>,
    Extension(Caller(caller)): Extension<Caller>,
    Extension(v): Extension<Verified>,
    body: axum::body::Bytes,
) -> Result<Json<WithReceipt<review::Reviewed>>, ApiError> {
    let req: review::ReviewDecision = json_body(&body)?;
    blocking(move || s.review(&caller, &v, req)).await.map(Json)
}

async fn grant_consent(
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

async fn withdraw_consent(
    State(s): State<Arc<KeyAuthority>>,
    Extension(Caller(caller)): Extension<Caller>,
    Extension(v): Extension<Verified>,
    axum::extract::Path(consent_id): axum::extract::Path<String>,
) -> Result<Json<WithReceipt<consent::ConsentOut>>, ApiError> {
    blocking(move || s.withdraw(&caller, &v, &consent_id))
        .await
        .map(Json)
}

async fn list_consents(
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

async fn resolve_policy(
    State(s): State<Arc<KeyAuthority>>,
    Extension(Caller(caller)): Extension<Caller>,
    Extension(v): Extension<Verified>,
    body: axum::body::Bytes,
) -> Result<Json<ResolvedPolicy>, ApiError> {
    let req: PolicyText = json_body(&body)?;
    let policy = Policy::parse(&req.policy)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
    blocking(move || {
        s.active(&caller.id)?;
        // An unattested device gets no policy to seal under (M6).
        s.require_attested(&caller)?;
        let resolved = s.resolve(&policy)?.to_string();
        let signature = s
            .trail
            .sign(&resolution_message(&v.request_hash, &req.policy, &resolved));
        Ok(ResolvedPolicy {
            policy: resolved,
            signature: B64.encode(signature.to_bytes()),
        })
    })
    .await
    .map(Json)
}

async fn identity_key(
    State(s): State<Arc<KeyAuthority>>,
    Extension(Caller(caller)): Extension<Caller>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Json<IdentityKey>, ApiError> {
    blocking(move || {
        s.active(&caller.id)?;
        let identity =
            s.store.identity(&id).map_err(store_error)?.ok_or_else(|| {
                ApiError::new(StatusCode::NOT_FOUND, format!("no identity `{id}`"))
            })?;
        let key = identity.public_key.ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("`{id}` has no registered key"),
            )
        })?;
        let public_key = hex::encode(key);
        let active = identity.status == IdentityStatus::Active;
        let directory_change = s.store.integrity_seq().unwrap_or(0);
        let signature = s.trail.sign(&identity_entry_message(
            &identity.id,
            &public_key,
            active,
            directory_change,
        ));
        Ok(IdentityKey {
            id: identity.id,
            public_key,
            active,
            directory_change,
            signature: B64.encode(signature.to_bytes()),
        })
    })
    .await
    .map(Json)
}

async fn public_key(State(s): State<Arc<KeyAuthority>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "public_key": s.public_key_hex }))
}

/// Re-wraps, under their policies with every attribute at its current
/// version, the data keys of every stored record whose wrapper names one of
/// `revoked` (attribute names without versions). The old wrappers are
/// replaced. Keys issued before the revocation no longer open these records;
/// holders that keep the attribute get fresh keys at their next fetch.
/// Returns how many wrappers were re-wrapped.
pub fn rewrap_after_revocation(
    store: &Store,
    master: &MasterSecretKey,
    revoked: &[String],
) -> Result<usize, String> {
    let mpk = master.public_key();
    let mut after = None;
    let mut count = 0;
    let mut failures = Vec::new();
    loop {
        let page = store
            .scan_wrappers(after.as_ref(), 256)
            .map_err(|e| e.to_string())?;
        let Some(last) = page.last() else { break };
        after = Some(last.clone());
        for row in &page {
            match rewrap_row(store, master, &mpk, row, revoked) {
                Ok(true) => count += 1,
                Ok(false) => {}
                Err(e) => failures.push(format!(
                    "{}/{} v{}: {e}",
                    row.patient, row.record_id, row.version
                )),
            }
        }
    }
    if let Some(first) = failures.first() {
        return Err(format!(
            "{} re-wrapped; {} wrapper(s) could not be (first: {first}); they keep their old policy until fixed",
            count,
            failures.len()
        ));
    }
    Ok(count)
}

/// Re-wraps every wrapper whose policy names an attribute at an older
/// version than its current one: what a revocation whose re-wrap failed (a
/// crash, a database that refused) left behind. Returns how many.
pub fn rewrap_stale(store: &Store, master: &MasterSecretKey) -> Result<usize, String> {
    use asclepios_crypto::envelope::KeyWrapper;
    let mpk = master.public_key();
    let mut current: std::collections::HashMap<String, u64> = Default::default();
    let mut after = None;
    let mut count = 0;
    let mut failures = Vec::new();
    loop {
        let page = store
            .scan_wrappers(after.as_ref(), 256)
            .map_err(|e| e.to_string())?;
        let Some(last) = page.last() else { break };
        after = Some(last.clone());
        for row in &page {
            let Ok(wrapper) = KeyWrapper::from_bytes(&row.wrapper.bytes) else {
                failures.push(format!(
                    "{}/{}: an unreadable wrapper",
                    row.patient, row.record_id
                ));
                continue;
            };
            let mut stale = Vec::new();
            for leaf in wrapper.policy().leaves() {
                let name = attribute_name(leaf).to_string();
                let version = leaf
                    .rsplit_once("@v")
                    .and_then(|(_, v)| v.parse::<u64>().ok())
                    .unwrap_or(0);
                let now = match current.get(&name) {
                    Some(v) => *v,
                    None => {
                        let v = store.attribute_version(&name).map_err(|e| e.to_string())?;
                        current.insert(name.clone(), v);
                        v
                    }
                };
                if version < now {
                    stale.push(name);
                }
            }
            if stale.is_empty() {
                continue;
            }
            match rewrap_row(store, master, &mpk, row, &stale) {
                Ok(true) => count += 1,
                Ok(false) => {}
                Err(e) => failures.push(format!(
                    "{}/{} v{}: {e}",
                    row.patient, row.record_id, row.version
                )),
            }
        }
    }
    match failures.first() {
        Some(first) => Err(format!(
            "{count} re-wrapped; {} wrapper(s) still name old attribute versions (first: {first})",
            failures.len()
        )),
        None => Ok(count),
    }
}

/// Re-wraps one wrapper if its policy names a revoked attribute. Returns
/// whether it was replaced.
fn rewrap_row(
    store: &Store,
    master: &MasterSecretKey,
    mpk: &asclepios_crypto::abe::PublicKey,
    row: &asclepios_store::WrapperRow,
    revoked: &[String],
) -> Result<bool, String> {
    use asclepios_crypto::envelope::KeyWrapper;
    let wrapper = KeyWrapper::from_bytes(&row.wrapper.bytes).map_err(|e| e.to_string())?;
    let attributes: Vec<String> = wrapper
        .policy()
        .leaves()
        .iter()
        .map(|a| a.to_string())
        .collect();
    if !attributes
        .iter()
        .any(|a| revoked.iter().any(|r| r == attribute_name(a)))
    {
        return Ok(false);
    }
    let stored = store
        .record_version(&row.patient, &row.record_id, Some(row.version))
        .map_err(|e| e.to_string())?
        .ok_or("a wrapper without its record")?;
    let body = asclepios_records::stored_sealed_body(&stored.body)?;
    // A key for exactly the policy's attributes, made and dropped here.
    let mut unique = attributes.clone();
    unique.sort();
    unique.dedup();
    let key = master
        .keygen(&unique, &mut rand_core::OsRng)
        .map_err(|e| e.to_string())?;
    let policy = resolve_with(store, wrapper.policy())?;
    let rewrapped = wrapper
        .rewrap(&key, &body, mpk, &policy, &mut rand_core::OsRng)
        .map_err(|e| e.to_string())?;
    store
        .replace_wrapper(
            &row.patient,
            &row.record_id,
            row.version,
            &row.wrapper.slot,
            row.wrapper.epoch,
            &rewrapped.to_bytes(),
            row.wrapper.epoch + 1,
        )
        .map_err(|e| e.to_string())
}

/// `policy` with every attribute at its current version in `store`.
pub fn resolve_with(store: &Store, policy: &Policy) -> Result<Policy, String> {
    let mut versions = std::collections::HashMap::new();
    for leaf in policy.leaves() {
        let name = attribute_name(leaf);
        if !versions.contains_key(name) {
            let v = store.attribute_version(name).map_err(|e| e.to_string())?;
            versions.insert(name.to_string(), v);
        }
    }
    policy
        .at_versions(&|name| versions.get(name).copied().unwrap_or(0))
        .map_err(|e| e.to_string())
}

/// The key authority's OpenAPI 3.1 document (served at `/openapi.json`).
pub fn openapi_document() -> serde_json::Value {
    use asclepios_net::openapi::{
        answer, array, base64, document, object, operation, string, uint, In,
    };
    let strings = |max| array(string(), max);
    document(
        "asclepios key authority",
        env!("CARGO_PKG_VERSION"),
        serde_json::json!({
            "/v1/keys": {"post": operation(
                "This identity's FAME key for its current attributes, sealed to its certificate key.",
                &[], None, answer(),
            )},
            "/v1/policy/resolve": {"post": operation(
                "A policy with each attribute at its current version.",
                &[], Some(object(&[("policy", string())], &[])), answer(),
            )},
            "/v1/emergency": {"post": operation(
                "Break the glass: a short emergency grant for a patient (loudly logged, reviewed later).",
                &[], Some(object(&[("patient", string()), ("reason", string())], &[])), answer(),
            )},
            "/v1/emergency/reviews": {
                "get": operation("Emergency grants awaiting review (auditors).", &[], None, answer()),
                "post": operation(
                    "Review an emergency grant (auditors).",
                    &[],
                    Some(object(&[
                        ("patient", string()), ("grant_id", string()),
                        ("decision", string()), ("comment", string()),
                    ], &[])),
                    answer(),
                ),
            },
            "/v1/consents": {
                "get": operation("This patient's consents.", &[], None, answer()),
                "post": operation(
                    "As a patient: grant access to one's records.",
                    &[],
                    Some(object(
                        &[("grantee", string()), ("purpose", string()), ("resource_types", strings(64))],
                        &[("expires_at", serde_json::json!({"type": ["integer", "null"]}))],
                    )),
                    answer(),
                ),
            },
            "/v1/consents/{consent_id}/withdraw": {"post": operation(
                "Withdraw a consent: the grantee loses access to the records it covered.",
                &[("consent_id", In::Path, true)], None, answer(),
            )},
            "/v1/abe/public-key": {"get": operation("The FAME public key.", &[], None, answer())},
            "/v1/identities/{id}": {"get": operation(
                "An identity's signing key and status as a directory entry signed by the authority.",
                &[("id", In::Path, true)], None, answer(),
            )},
            "/v1/search/tokens": {"post": operation(
                "Search tokens for keywords (search roles only).",
                &[], Some(object(&[("keywords", strings(64))], &[])), answer(),
            )},
            "/v1/search/index": {"post": operation(
                "Index a record under keywords (its latest author or its patient).",
                &[],
                Some(object(&[
                    ("patient", string()), ("record_id", string()),
                    ("keywords", strings(search::MAX_RECORD_KEYWORDS)),
                ], &[])),
                answer(),
            )},
            "/v1/stats/slots": {"post": operation(
                "Allocate statistics slots to a data provider, with their keys sealed to it.",
                &[], Some(object(&[("study", string()), ("count", uint())], &[])), answer(),
            )},
            "/v1/stats/keys": {"post": operation(
                "An aggregate key for a label over a cohort (researchers).",
                &[],
                Some(object(&[("study", string()), ("label", string()), ("cohort", string())], &[])),
                answer(),
            )},
            "/v1/attestation/evidence": {"get": operation(
                "Fresh attestation evidence binding the current TLS key and a 32-byte hex nonce.",
                &[("nonce", In::Query, true)], None, answer(),
            )},
            "/v1/attestation/challenge": {"post": operation(
                "A single-use nonce for a component's attestation.",
                &[], None, answer(),
            )},
            "/v1/components/register": {"post": operation(
                "Register a component with evidence answering its challenge.",
                &[], Some(object(&[("evidence", base64())], &[])), answer(),
            )},
            "/v1/directory/facts": {"get": operation(
                "The directory as the authority vouches for it, signed (the record service; unchanged since `known`: 204).",
                &[("known", In::Query, false)], None, answer(),
            )},
            "/v1/directory/identities": {
                "get": operation("The directory's members (administrators and auditors).", &[], None, answer()),
                "post": operation(
                    "Add an identity with its certificate key and attributes (administrators; audited).",
                    &[],
                    Some(object(&[
                        ("id", string()), ("kind", string()), ("display_name", string()),
                        ("public_key", string()), ("attributes", strings(256)),
                    ], &[])),
                    answer(),
                ),
            },
            "/v1/directory/identities/{id}/attributes": {"put": operation(
                "Set an identity's attributes to exactly these; the others are revoked (administrators; audited).",
                &[("id", In::Path, true)], Some(object(&[("attributes", strings(256))], &[])), answer(),
            )},
            "/v1/directory/identities/{id}/disable": {"post": operation(
                "Disable an identity and revoke its attributes (administrators; audited).",
                &[("id", In::Path, true)], None, answer(),
            )},
            "/v1/directory/identities/{id}/auditor-key": {"put": operation(
                "Set the HPKE key audit events are sealed to for an auditor (administrators; audited).",
                &[("id", In::Path, true)], Some(object(&[("public_key", string())], &[])), answer(),
            )},
        }),
    )
}
