//! The record service: stores sealed FHIR records it cannot read.
//!
//! A record version arrives as a sealed body, a data-key wrapper and the
//! author's Ed25519 signature over both (with the patient pseudonym, record id
//! and version), over mutual TLS and a signed request. The service checks the
//! structure and the author signature, applies its own rules as a second
//! layer (the caller's identity must be active), stores the version, logs the
//! access as a confidential audit event and answers with a signed receipt.
//! Refused requests are logged too. It never holds a key that opens a record.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub use asclepios_api::records::{
    author_message, parse_search_ref, search_ref, AttestationVerdict, AuditSlice, Erased,
    ExportNotice, IndexLookup, IndexValues, PutRecord, RecordOut, StatsValues, StatsValuesOut,
    VerdictLogged, WithReceipt, MAX_LOOKUP,
};
use asclepios_service::{PeerCaller, Stored};
use std::sync::Arc;

use asclepios_audit::{Action, AuditEvent, AuditTrail, Outcome};
use asclepios_crypto::envelope::{KeyWrapper, SealedBody};
use asclepios_crypto::policy::{attribute_name, attribute_version};
use asclepios_net::server::{json_body, require_signature, ApiError, Caller, SignatureCheck};
use asclepios_net::signature::Verified;
use asclepios_store::Store;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Extension, Json, Router};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ed25519_dalek::{Signature, VerifyingKey};
use serde::Deserialize;

mod audit;
pub mod directory;
mod guards;
pub mod internal;
mod openapi;
mod search;
mod stats;

pub use directory::DirectoryView;
pub use guards::registered_key_guard;
pub use openapi::openapi_document;
pub use stats::{StatsQuery, MAX_STATS_VALUES, STATS_READERS};
// The machinery both services share, under the names it always had here.
pub use asclepios_service::{
    audit_outcome, audit_slice, bad_request, blocking, check_attested, check_name,
    check_stats_name, identity_key_sha256, log_event, log_outcome, require_active,
    require_registered_key, shown, store_error, stored_author, stored_sealed_body, verified_author,
    SliceQuery, AUDITOR_ROLE, INTEGRITY_ALARM, MAX_AUDIT_SLICE,
};

/// The slot of a record's main key wrapper.
pub const MAIN_SLOT: &str = "main";

/// The service's state.
pub struct RecordService {
    store: Store,
    trail: Arc<AuditTrail<Store>>,
    /// Who is who and holds what: the authority's signed facts, never the
    /// store's rows.
    directory: Arc<DirectoryView>,
    /// The key authority's service identity, which alone may use the
    /// internal routes (none: nobody may).
    authority_identity: Option<String>,
    /// Directory kinds that must hold a current attestation to write
    /// (empty: attestation of components is not required).
    attested_kinds: Vec<String>,
}

impl std::fmt::Debug for RecordService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecordService")
    }
}

/// How much of the service a route takes: storing and erasing versions,
/// exports and statistics publication are heavy (they wait behind at most
/// a few others, see [`asclepios_net::admission`]); reads and searches are
/// light and never wait behind them.
pub fn weigh(method: &axum::http::Method, route: &str) -> asclepios_net::admission::Weight {
    use asclepios_net::admission::Weight;
    use axum::http::Method;
    // Methods no route takes are refused at once: light.
    let changes = [Method::POST, Method::PUT, Method::DELETE, Method::PATCH].contains(method);
    if !changes || route == "/v1/search" {
        Weight::Light
    } else {
        Weight::Heavy
    }
}

fn b64(what: &str, s: &str) -> Result<Vec<u8>, ApiError> {
    B64.decode(s)
        .map_err(|_| bad_request(format!("`{what}` is not base64")))
}

fn now() -> u64 {
    asclepios_net::server::unix_now()
}

impl RecordService {
    /// A service over `store`, logging through `trail`, acting on the
    /// directory as the authority vouches for it in `directory`.
    pub fn new(store: Store, trail: AuditTrail<Store>, directory: Arc<DirectoryView>) -> Self {
        RecordService {
            store,
            trail: Arc::new(trail),
            directory,
            authority_identity: None,
            attested_kinds: Vec::new(),
        }
    }

    /// The service's store (its nonces live there too).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Lets the key authority's service identity `identity` use the
    /// internal routes (the services in processes of their own).
    pub fn serving_authority(mut self, identity: &str) -> Self {
        self.authority_identity = Some(identity.to_string());
        self
    }

    /// Requires identities of these directory kinds (e.g. `device`) to hold
    /// a current attestation before they store a record version (what
    /// `require_components` turns on for the authority's keys as well).
    pub fn requiring_attested(mut self, kinds: Vec<String>) -> Self {
        self.attested_kinds = kinds;
        self
    }

    /// The operators' side of this service (see
    /// [`asclepios_service::operations`]): admission under `limits` (the
    /// key authority's calls exempt: they carry revocations and re-wraps),
    /// metrics with the audit log's size, and readiness (the store answers,
    /// the authority's facts are held, the audit log is not in alarm).
    pub fn operations(
        self: &Arc<Self>,
        limits: asclepios_net::admission::AdmissionLimits,
        metrics_readers: Vec<String>,
    ) -> asclepios_service::Operations {
        let ready = self.clone();
        asclepios_service::Operations::new(
            self.trail.clone(),
            asclepios_service::ServiceOperations {
                service: "records",
                limits,
                weigh,
                exempt: self.authority_identity.clone().into_iter().collect(),
                metrics_readers,
                gauges: Vec::new,
                ready: move || {
                    asclepios_service::store_answers(&ready.store)?;
                    if ready.directory.facts().is_err() {
                        return Err("no current directory facts from the key authority".into());
                    }
                    Ok(())
                },
            },
        )
    }

    /// The router: every route behind the signature check.
    pub fn router(self: Arc<Self>, check: Arc<SignatureCheck>) -> Router {
        Router::new()
            .route("/v1/records", axum::routing::post(put_record))
            .route(
                "/v1/records/{patient}/{record_id}",
                get(get_record).delete(erase_record),
            )
            .route(
                "/v1/records/{patient}/{record_id}/versions",
                get(record_versions),
            )
            .route(
                "/v1/patients/{patient}/records",
                get(list_records).delete(erase_patient),
            )
            .route("/v1/search", axum::routing::post(search::search_index))
            .route("/v1/exports", axum::routing::post(audit::record_export))
            .route(
                "/v1/stats/values",
                axum::routing::post(stats::publish_stats).get(stats::stats_values),
            )
            .route("/v1/audit/entries", get(audit::audit_entries))
            .route("/v1/audit/consistency", get(audit::audit_consistency))
            .route(
                "/v1/internal/wrappers/scan",
                axum::routing::post(internal::scan_wrappers),
            )
            .route(
                "/v1/internal/wrappers/replace",
                axum::routing::post(internal::replace_wrapper),
            )
            .route(
                "/v1/internal/records/version",
                axum::routing::post(internal::record_version),
            )
            .route(
                "/v1/internal/index/get",
                axum::routing::post(internal::index_get),
            )
            .route(
                "/v1/internal/index/write",
                axum::routing::post(internal::index_write),
            )
            .route(
                "/v1/internal/facts/changed",
                axum::routing::post(internal::facts_changed),
            )
            .route(
                "/v1/attestation/verdicts",
                axum::routing::post(audit::attestation_verdict),
            )
            .layer(axum::middleware::from_fn_with_state(
                self.directory.clone(),
                registered_key_guard,
            ))
            .layer(axum::middleware::from_fn_with_state(
                check,
                require_signature,
            ))
            .route("/openapi.json", get(openapi::openapi))
            .layer(axum::middleware::from_fn_with_state(
                asclepios_service::RefusalLog::new(
                    self.trail.clone(),
                    asclepios_service::refusals::WINDOW,
                ),
                asclepios_service::log_refusals,
            ))
            .layer(axum::middleware::map_response(
                asclepios_net::server::json_errors,
            ))
            .with_state(self)
    }

    fn event(
        caller: &str,
        action: Action,
        resource: String,
        patient: &str,
        outcome: Outcome,
        v: &Verified,
    ) -> AuditEvent {
        AuditEvent::new(
            caller,
            action,
            resource,
            Some(patient),
            outcome,
            Some(v.signature.clone()),
        )
    }

    /// The caller's attributes, each at its current version (as keys and
    /// policies carry them).
    fn current_attributes(&self, caller: &str) -> Result<Vec<String>, ApiError> {
        Ok(self
            .directory
            .facts()?
            .live_attributes(caller, now() as i64))
    }

    /// 503 if `policy` names an attribute at a newer version than the facts
    /// know: the authority has moved on (a revocation and its re-wrap) and
    /// the facts will follow within a poll. Asks for them at once.
    fn check_facts_current(
        &self,
        facts: &asclepios_api::DirectoryFacts,
        policy: &asclepios_crypto::Policy,
    ) -> Result<(), ApiError> {
        let ahead = policy
            .leaves()
            .into_iter()
            .any(|leaf| attribute_version(leaf) > facts.attribute_version(attribute_name(leaf)));
        if ahead {
            self.directory.wake();
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the record service's copy of the directory is behind this record's policy (a \
                 revocation just happened); retry in a moment",
            ));
        }
        Ok(())
    }

    /// Who may write a patient's records, and under what: the writer holds
    /// `patient:<p>`, `care-team:<p>`, `consent:<p>`, `emergency:<p>` or
    /// `role:lab`; `patient:<p>` alone and `emergency:<p>` alone each satisfy
    /// the policy, and every attribute is at its current version (so a
    /// re-wrap scan cannot miss it).
    fn check_write_policy(
        &self,
        caller: &str,
        patient: &str,
        policy: &asclepios_crypto::Policy,
    ) -> Result<(), ApiError> {
        if !self.in_circle(caller, patient, &["role:lab"])? {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!("`{caller}` may not write records of {patient}: it is not the patient, on the care team, consented or in an emergency"),
            ));
        }
        let facts = self.directory.facts()?;
        self.check_facts_current(&facts, policy)?;
        // The patient, and an emergency for the patient, must each open the
        // new version on their own: a writer may not lock the patient out of
        // their own record (review finding M4), nor the emergency team.
        for required in [format!("patient:{patient}"), format!("emergency:{patient}")] {
            if !policy.is_satisfied_by(&|leaf| attribute_name(leaf) == required) {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    format!("the policy must let `{required}` alone read the record (e.g. `{required} or ...`)"),
                ));
            }
        }
        let leaves = policy.leaves();
        for leaf in leaves {
            let name = attribute_name(leaf);
            let current = asclepios_store::versioned_attribute(name, facts.attribute_version(name));
            if leaf != current {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    format!("the policy names `{leaf}` but the current version is `{current}`: resolve the policy again"),
                ));
            }
        }
        Ok(())
    }

    /// Whether `caller` is in `patient`'s circle: the patient, the care team,
    /// a consented party, an emergency grant, or one of `also` (e.g. `role:lab`).
    fn in_circle(&self, caller: &str, patient: &str, also: &[&str]) -> Result<bool, ApiError> {
        Ok(asclepios_service::in_circle(
            &self.current_attributes(caller)?,
            patient,
            also,
        ))
    }

    /// Listing a patient's records or a record's versions is for the
    /// patient's circle and auditors: ids and versions are metadata too.
    fn check_may_list(&self, caller: &str, patient: &str) -> Result<(), ApiError> {
        if self.in_circle(caller, patient, &[AUDITOR_ROLE, "role:lab"])? {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!("`{caller}` may not list the records of {patient}"),
            ))
        }
    }

    /// The second layer: the caller's identity must be known and active.
    fn check_caller(&self, caller: &str) -> Result<(), ApiError> {
        require_active(self.directory.facts()?.member(caller), caller)
    }

    /// Runs `work`; on refusal logs a denied event, on success the given one.
    fn audited<T>(
        &self,
        caller: &str,
        action: Action,
        resource: String,
        patient: &str,
        v: &Verified,
        work: impl Fn() -> Result<T, ApiError>,
    ) -> Result<WithReceipt<T>, ApiError> {
        self.audited_write(caller, action, resource, patient, v, None, work)
    }

    /// [`Self::audited`] for a write, whose event commits to what it stored.
    #[allow(clippy::too_many_arguments)]
    fn audited_write<T>(
        &self,
        caller: &str,
        action: Action,
        resource: String,
        patient: &str,
        v: &Verified,
        written: Option<asclepios_audit::Written>,
        work: impl Fn() -> Result<T, ApiError>,
    ) -> Result<WithReceipt<T>, ApiError> {
        // A name that cannot go into an event is refused before anything.
        check_name("patient", patient)?;
        let mut result = self.check_caller(caller).and_then(|()| work());
        // A refusal is decided on the authority's current facts, not on a
        // copy up to a poll old (a consent just granted, an identity just
        // registered): refused work has changed nothing, so it runs again.
        if matches!(&result, Err(e) if e.status == StatusCode::FORBIDDEN)
            && self.directory.refresh_now()?
        {
            result = self.check_caller(caller).and_then(|()| work());
        }
        // Under an active break-glass grant, the access is logged as emergency
        // treatment: loudly, for the patient and the auditors.
        let now = now() as i64;
        let emergency = self
            .directory
            .last()
            .is_some_and(|f| f.in_emergency(caller, patient, now));
        let mark = |mut e: AuditEvent| {
            if emergency {
                e.emergency = true;
                e.purpose = "ETREAT".into();
            }
            e
        };
        log_outcome(&self.trail, v, result, |outcome| {
            let mut event = Self::event(caller, action, resource, patient, outcome, v);
            event.written = written;
            mark(event)
        })
    }

    fn put(
        &self,
        caller: &PeerCaller,
        v: &Verified,
        put: PutRecord,
    ) -> Result<WithReceipt<u64>, ApiError> {
        // Names that go into events, policies and storage keys must be plain:
        // refuse anything else before doing or logging anything.
        check_name("patient", &put.patient)?;
        check_name("record_id", &put.record_id)?;
        // Stored ids say nothing of the record: no FHIR id, no type.
        if !asclepios_crypto::naming::is_opaque_record_id(&put.record_id) {
            return Err(bad_request(
                "`record_id` must be an opaque id (`r` and 32 hex digits), derived with the \
                 patient's naming key (`POST /v1/records/naming-key` at the key authority)",
            ));
        }
        let resource = format!("record/{}/{}", put.patient, put.record_id);
        let patient = put.patient.clone();
        // The event commits to what is stored: a later rollback of this
        // record shows against it.
        let written = B64
            .decode(&put.body)
            .ok()
            .map(|body| asclepios_audit::Written::new(&put.record_id, put.version, &body));
        let action = if put.version == 1 {
            Action::Create
        } else {
            Action::Update
        };
        self.audited_write(&caller.id, action, resource, &patient, v, written, || {
            let body = b64("body", &put.body)?;
            let wrapper = b64("wrapper", &put.wrapper)?;
            let sealed =
                SealedBody::from_bytes(&body).map_err(|e| bad_request(format!("body: {e}")))?;
            let parsed = KeyWrapper::from_bytes(&wrapper)
                .map_err(|e| bad_request(format!("wrapper: {e}")))?;
            if sealed.context().record_id != put.record_id
                || sealed.context().version != put.version
            {
                return Err(bad_request(
                    "the sealed body is bound to another record id or version",
                ));
            }
            if !parsed.binds(&sealed) {
                return Err(bad_request("the key wrapper belongs to another body"));
            }
            // An unattested device stores nothing (M6).
            let facts = self.directory.facts()?;
            check_attested(
                facts.member(&caller.id),
                facts.components.get(&caller.id),
                caller,
                &self.attested_kinds,
            )?;
            self.check_write_policy(&caller.id, &put.patient, parsed.policy())?;
            let sig = b64("author_signature", &put.author_signature)?;
            let sig = Signature::from_slice(&sig)
                .map_err(|_| bad_request("author_signature is not an Ed25519 signature"))?;
            VerifyingKey::from_bytes(&caller.public_key)
                .and_then(|k| {
                    k.verify_strict(
                        &author_message(&put.patient, &put.record_id, put.version, &body),
                        &sig,
                    )
                })
                .map_err(|_| {
                    bad_request(
                        "the author signature does not verify with the caller's certificate key",
                    )
                })?;
            let stored = serde_json::to_vec(&Stored {
                author: caller.id.clone(),
                author_signature: put.author_signature.clone(),
                body: put.body.clone(),
            })
            .map_err(|e| bad_request(e.to_string()))?;
            // Checked again against the floors inside the insert: a
            // revocation may have landed since the facts were read.
            let named: Vec<(&str, u64)> = parsed
                .policy()
                .leaves()
                .into_iter()
                .map(|leaf| (attribute_name(leaf), attribute_version(leaf)))
                .collect();
            self.store
                .put_record_version_above_floors(
                    &put.patient,
                    &put.record_id,
                    put.version,
                    &stored,
                    &[(MAIN_SLOT, &wrapper, 0)],
                    &named,
                )
                .map_err(store_error)?;
            Ok(put.version)
        })
    }

    /// Erases one record, or every record of the patient: every version's
    /// body and every wrapper, out of the store's files. The patient's right
    /// (GDPR art. 17) alone; the event in the patient's log says what was
    /// destroyed.
    fn erase(
        &self,
        caller: &str,
        v: &Verified,
        patient: &str,
        record_id: Option<&str>,
    ) -> Result<WithReceipt<Erased>, ApiError> {
        check_name("patient", patient)?;
        if let Some(r) = record_id {
            check_name("record_id", r)?;
        }
        let resource = match record_id {
            Some(r) => format!("record/{patient}/{r}"),
            None => format!("records/{patient}"),
        };
        self.audited(caller, Action::Delete, resource, patient, v, || {
            if caller != patient {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "only the patient may erase their records",
                ));
            }
            let erased = self.store.erase(patient, record_id).map_err(store_error)?;
            Ok(Erased {
                records: erased.records,
                versions: erased.versions,
                wrappers: erased.wrappers,
            })
        })
    }

    fn get(
        &self,
        caller: &PeerCaller,
        v: &Verified,
        patient: &str,
        record_id: &str,
        version: Option<u64>,
    ) -> Result<WithReceipt<RecordOut>, ApiError> {
        let resource = format!("record/{patient}/{record_id}");
        self.audited(&caller.id, Action::Read, resource, patient, v, || {
            let unsatisfied = || {
                ApiError::new(
                    StatusCode::FORBIDDEN,
                    format!(
                        "`{}` does not hold attributes that satisfy this record's policy",
                        caller.id
                    ),
                )
            };
            let Some(found) = self
                .store
                .record_version(patient, record_id, version)
                .map_err(store_error)?
            else {
                // A missing record answers outsiders as a forbidden one does
                // (review finding L1): ids are for the patient's circle.
                if self.in_circle(&caller.id, patient, &[AUDITOR_ROLE, "role:lab"])? {
                    return Err(ApiError::new(
                        StatusCode::NOT_FOUND,
                        format!("no record {record_id} of {patient}"),
                    ));
                }
                return Err(unsatisfied());
            };
            let stored: Stored = serde_json::from_slice(&found.body).map_err(|_| {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "a stored record is damaged",
                )
            })?;
            let wrapper = self
                .store
                .wrappers(patient, record_id, found.version)
                .map_err(store_error)?
                .into_iter()
                .find(|w| w.slot == MAIN_SLOT);
            // The second layer: the caller's current attributes (at their
            // current versions) must satisfy the wrapper's policy. Revoked
            // members, withdrawn consents and expired emergency grants are
            // refused here, not only by the cryptography.
            // An erased record (no wrapper left) has no policy to check:
            // what remains of it (author, signature, that it existed) is
            // for the patient's circle and auditors only.
            if wrapper.is_none()
                && !self.in_circle(&caller.id, patient, &[AUDITOR_ROLE, "role:lab"])?
            {
                return Err(unsatisfied());
            }
            if let Some(w) = &wrapper {
                let policy = KeyWrapper::peek_policy(&w.bytes).map_err(|_| {
                    ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "a stored key wrapper is damaged",
                    )
                })?;
                let held: std::collections::HashSet<String> =
                    self.current_attributes(&caller.id)?.into_iter().collect();
                if !policy.is_satisfied_by(&|a| held.contains(a)) {
                    self.check_facts_current(&*self.directory.facts()?, &policy)?;
                    return Err(unsatisfied());
                }
            }
            let wrapper = wrapper.map(|w| B64.encode(w.bytes));
            Ok(RecordOut {
                patient: found.patient,
                record_id: found.record_id,
                version: found.version,
                author: stored.author,
                body: stored.body,
                wrapper,
                author_signature: stored.author_signature,
            })
        })
    }
}

async fn put_record(
    State(s): State<Arc<RecordService>>,
    Extension(Caller(caller)): Extension<Caller>,
    Extension(v): Extension<Verified>,
    body: axum::body::Bytes,
) -> Result<Json<WithReceipt<u64>>, ApiError> {
    let put: PutRecord = json_body(&body)?;
    blocking(move || s.put(&caller, &v, put)).await.map(Json)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VersionQuery {
    version: Option<u64>,
}

async fn get_record(
    State(s): State<Arc<RecordService>>,
    Extension(Caller(caller)): Extension<Caller>,
    Extension(v): Extension<Verified>,
    Path((patient, record_id)): Path<(String, String)>,
    q: Result<Query<VersionQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<WithReceipt<RecordOut>>, ApiError> {
    let Query(q) = q.map_err(|e| bad_request(format!("query: {}", e.body_text())))?;
    blocking(move || s.get(&caller, &v, &patient, &record_id, q.version))
        .await
        .map(Json)
}

async fn list_records(
    State(s): State<Arc<RecordService>>,
    Extension(Caller(caller)): Extension<Caller>,
    Extension(v): Extension<Verified>,
    Path(patient): Path<String>,
) -> Result<Json<WithReceipt<Vec<(String, u64)>>>, ApiError> {
    blocking(move || {
        let resource = format!("patient/{patient}/records");
        s.audited(&caller.id, Action::Search, resource, &patient, &v, || {
            s.check_may_list(&caller.id, &patient)?;
            s.store.patient_records(&patient).map_err(store_error)
        })
    })
    .await
    .map(Json)
}

async fn record_versions(
    State(s): State<Arc<RecordService>>,
    Extension(Caller(caller)): Extension<Caller>,
    Extension(v): Extension<Verified>,
    Path((patient, record_id)): Path<(String, String)>,
) -> Result<Json<WithReceipt<Vec<u64>>>, ApiError> {
    blocking(move || {
        let resource = format!("record/{patient}/{record_id}/versions");
        s.audited(&caller.id, Action::Search, resource, &patient, &v, || {
            s.check_may_list(&caller.id, &patient)?;
            let versions = s
                .store
                .record_versions(&patient, &record_id)
                .map_err(store_error)?;
            if versions.is_empty() {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    format!("no record {record_id} of {patient}"),
                ));
            }
            Ok(versions)
        })
    })
    .await
    .map(Json)
}

async fn erase_record(
    State(s): State<Arc<RecordService>>,
    Extension(Caller(caller)): Extension<Caller>,
    Extension(v): Extension<Verified>,
    Path((patient, record_id)): Path<(String, String)>,
) -> Result<Json<WithReceipt<Erased>>, ApiError> {
    blocking(move || s.erase(&caller.id, &v, &patient, Some(&record_id)))
        .await
        .map(Json)
}

async fn erase_patient(
    State(s): State<Arc<RecordService>>,
    Extension(Caller(caller)): Extension<Caller>,
    Extension(v): Extension<Verified>,
    Path(patient): Path<String>,
) -> Result<Json<WithReceipt<Erased>>, ApiError> {
    blocking(move || s.erase(&caller.id, &v, &patient, None))
        .await
        .map(Json)
}
