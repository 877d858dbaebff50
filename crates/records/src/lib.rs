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
    author_message, parse_search_ref, search_ref, AttestationVerdict, AuditSlice, ExportNotice,
    IndexLookup, IndexValues, PutRecord, RecordOut, StatsValues, StatsValuesOut, VerdictLogged,
    WithReceipt, MAX_LOOKUP,
};
use std::sync::Arc;

use asclepios_api::directory::{ComponentFact, Member};
use asclepios_audit::{Action, AuditEvent, AuditTrail, Outcome, Receipt};
use asclepios_crypto::envelope::{KeyWrapper, SealedBody};
use asclepios_crypto::policy::attribute_name;
use asclepios_net::server::{json_body, require_signature, ApiError, Caller, SignatureCheck};
use asclepios_net::signature::Verified;
use asclepios_store::{Store, StoreError};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Extension, Json, Router};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ed25519_dalek::{Signature, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub mod directory;
pub use directory::DirectoryView;

/// The role that reads the whole audit log: compared as a whole attribute
/// (any version), never as a prefix (`role:auditor-trainee` is another role).
pub const AUDITOR_ROLE: &str = "role:auditor";

/// The slot of a record's main key wrapper.
pub const MAIN_SLOT: &str = "main";

/// The sealed body inside a stored record version (for the authority's
/// re-wrapping, which must show the body a wrapper is bound to).
pub fn stored_sealed_body(stored: &[u8]) -> Result<SealedBody, String> {
    let stored: Stored =
        serde_json::from_slice(stored).map_err(|e| format!("stored record: {e}"))?;
    let bytes = B64
        .decode(&stored.body)
        .map_err(|_| "stored record: body is not base64".to_string())?;
    SealedBody::from_bytes(&bytes).map_err(|e| format!("stored record: {e}"))
}

/// Who wrote a stored record version.
pub fn stored_author(stored: &[u8]) -> Result<String, String> {
    let stored: Stored =
        serde_json::from_slice(stored).map_err(|e| format!("stored record: {e}"))?;
    Ok(stored.author)
}

/// Who wrote a stored record version, once their signature over it checks
/// out with `author_key` (the key the directory vouches for): the record
/// store's `author` field alone is only what its database says.
pub fn verified_author(
    stored: &[u8],
    patient: &str,
    record_id: &str,
    version: u64,
    author_key: &[u8],
) -> Result<String, String> {
    let stored: Stored =
        serde_json::from_slice(stored).map_err(|e| format!("stored record: {e}"))?;
    let body = B64
        .decode(&stored.body)
        .map_err(|_| "stored record: body is not base64".to_string())?;
    let signature = B64
        .decode(&stored.author_signature)
        .ok()
        .and_then(|s| Signature::from_slice(&s).ok())
        .ok_or("stored record: a malformed author signature")?;
    let key: [u8; 32] = author_key
        .try_into()
        .map_err(|_| "the author's key is not an Ed25519 key".to_string())?;
    VerifyingKey::from_bytes(&key)
        .and_then(|k| {
            k.verify_strict(
                &author_message(patient, record_id, version, &body),
                &signature,
            )
        })
        .map_err(|_| {
            format!(
                "the stored record's signature does not verify with {}'s key",
                stored.author
            )
        })?;
    Ok(stored.author)
}

/// What the store keeps as a version's body: the sealed body and its author.
#[derive(Serialize, Deserialize)]
struct Stored {
    author: String,
    author_signature: String,
    body: String,
}

/// The service's state.
pub struct RecordService {
    store: Store,
    trail: AuditTrail<Store>,
    /// Who is who and holds what: the authority's signed facts, never the
    /// store's rows.
    directory: Arc<DirectoryView>,
    /// Directory kinds that must hold a current attestation to write
    /// (empty: attestation of components is not required).
    attested_kinds: Vec<String>,
}

impl std::fmt::Debug for RecordService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecordService")
    }
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, message)
}

/// What callers are told while the key authority's state fails verification.
pub const INTEGRITY_ALARM: &str = "integrity alarm: the key authority's state failed verification \
     (changed, deleted or rolled back outside the authority); nothing is issued until an operator \
     has checked the store and restarted the authority";

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
            trail,
            directory,
            attested_kinds: Vec::new(),
        }
    }

    /// Requires identities of these directory kinds (e.g. `device`) to hold
    /// a current attestation before they store a record version (what
    /// `require_components` turns on for the authority's keys as well).
    pub fn requiring_attested(mut self, kinds: Vec<String>) -> Self {
        self.attested_kinds = kinds;
        self
    }

    /// The router: every route behind the signature check.
    pub fn router(self: Arc<Self>, check: Arc<SignatureCheck>) -> Router {
        Router::new()
            .route("/v1/records", axum::routing::post(put_record))
            .route(
                "/v1/records/{patient}/{record_id}",
                get(get_record).delete(shred_record),
            )
            .route(
                "/v1/records/{patient}/{record_id}/versions",
                get(record_versions),
            )
            .route("/v1/patients/{patient}/records", get(list_records))
            .route("/v1/search", axum::routing::post(search_index))
            .route("/v1/exports", axum::routing::post(record_export))
            .route(
                "/v1/stats/values",
                axum::routing::post(publish_stats).get(stats_values),
            )
            .route("/v1/audit/entries", get(audit_entries))
            .route(
                "/v1/attestation/verdicts",
                axum::routing::post(attestation_verdict),
            )
            .layer(axum::middleware::from_fn_with_state(
                self.directory.clone(),
                registered_key_guard,
            ))
            .layer(axum::middleware::from_fn_with_state(
                check,
                require_signature,
            ))
            .route("/openapi.json", get(openapi))
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
        Ok(self.directory.facts()?.current_attributes(caller).to_vec())
    }

    /// Who may write a patient's records, and under what: the writer holds
    /// `patient:<p>`, `care-team:<p>`, `consent:<p>`, `emergency:<p>` or
    /// `role:lab`; the policy names the patient and the emergency clause, with
    /// every attribute at its current version (so a re-wrap scan cannot miss it).
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
        let leaves = policy.leaves();
        for required in [format!("patient:{patient}"), format!("emergency:{patient}")] {
            if !leaves.iter().any(|l| attribute_name(l) == required) {
                return Err(bad_request(format!("the policy must name `{required}`")));
            }
        }
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
        let held = self.current_attributes(caller)?;
        Ok(held.iter().any(|a| {
            let a = attribute_name(a);
            also.contains(&a)
                || ["patient", "care-team", "consent", "emergency"]
                    .iter()
                    .any(|ns| a == format!("{ns}:{patient}"))
        }))
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
        work: impl FnOnce() -> Result<T, ApiError>,
    ) -> Result<WithReceipt<T>, ApiError> {
        // A name that cannot go into an event is refused before anything.
        check_name("patient", patient)?;
        let result = self.check_caller(caller).and_then(|()| work());
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
            mark(Self::event(caller, action, resource, patient, outcome, v))
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
        let resource = format!("record/{}/{}", put.patient, put.record_id);
        let patient = put.patient.clone();
        self.audited(&caller.id, if put.version == 1 { Action::Create } else { Action::Update }, resource, &patient, v, || {
            let body = b64("body", &put.body)?;
            let wrapper = b64("wrapper", &put.wrapper)?;
            let sealed = SealedBody::from_bytes(&body).map_err(|e| bad_request(format!("body: {e}")))?;
            let parsed = KeyWrapper::from_bytes(&wrapper).map_err(|e| bad_request(format!("wrapper: {e}")))?;
            if sealed.context().record_id != put.record_id || sealed.context().version != put.version {
                return Err(bad_request("the sealed body is bound to another record id or version"));
            }
            if !parsed.binds(&sealed) {
                return Err(bad_request("the key wrapper belongs to another body"));
            }
            // An unattested device stores nothing (M6).
            let facts = self.directory.facts()?;
            check_attested(facts.member(&caller.id), facts.components.get(&caller.id), caller, &self.attested_kinds)?;
            self.check_write_policy(&caller.id, &put.patient, parsed.policy())?;
            let sig = b64("author_signature", &put.author_signature)?;
            let sig = Signature::from_slice(&sig).map_err(|_| bad_request("author_signature is not an Ed25519 signature"))?;
            VerifyingKey::from_bytes(&caller.public_key)
                .and_then(|k| k.verify_strict(&author_message(&put.patient, &put.record_id, put.version, &body), &sig))
                .map_err(|_| bad_request("the author signature does not verify with the caller's certificate key"))?;
            let stored = serde_json::to_vec(&Stored {
                author: caller.id.clone(),
                author_signature: put.author_signature.clone(),
                body: put.body.clone(),
            })
            .map_err(|e| bad_request(e.to_string()))?;
            self.store
                .put_record_version(&put.patient, &put.record_id, put.version, &stored, &[(MAIN_SLOT, &wrapper, 0)])
                .map_err(store_error)?;
            Ok(put.version)
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
            let found = self
                .store
                .record_version(patient, record_id, version)
                .map_err(store_error)?
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::NOT_FOUND,
                        format!("no record {record_id} of {patient}"),
                    )
                })?;
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
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    format!("`{}` may not read the records of {patient}", caller.id),
                ));
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
                    return Err(ApiError::new(
                        StatusCode::FORBIDDEN,
                        format!(
                            "`{}` does not hold attributes that satisfy this record's policy",
                            caller.id
                        ),
                    ));
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

/// Patient pseudonyms and record ids: 1 to 128 letters, digits, `-`, `_`, `.`.
pub fn check_name(what: &str, s: &str) -> Result<(), ApiError> {
    asclepios_net::pki::check_identity_id(s).map_err(|_| {
        bad_request(format!(
            "`{what}` must be 1 to 128 letters, digits, '-', '_' or '.'"
        ))
    })
}

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
fn shown(s: &str) -> String {
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

/// The caller must be in the directory and active (403 otherwise).
pub fn require_active(member: Option<&Member>, caller: &str) -> Result<(), ApiError> {
    match member {
        Some(m) if m.active => Ok(()),
        Some(_) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("identity `{caller}` is disabled"),
        )),
        None => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("identity `{caller}` is not in the directory"),
        )),
    }
}

/// The caller as handlers see it.
type PeerCaller = asclepios_net::pki::PeerIdentity;

/// The caller's certificate must carry the key the directory vouches for
/// (403 otherwise): a certificate for the same id with another key (minted
/// with a stolen CA key, or issued to an id before it was registered)
/// speaks for nobody.
pub fn require_registered_key(
    member: Option<&Member>,
    caller: &PeerCaller,
) -> Result<(), ApiError> {
    if asclepios_api::directory::same_key(
        member.and_then(|m| m.public_key.as_deref()),
        &caller.public_key,
    ) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "the certificate of `{}` does not carry the key the directory vouches for",
                caller.id
            ),
        ))
    }
}

/// Middleware of the record service: every signed request comes from a
/// certificate whose key the authority's directory vouches for.
pub async fn registered_key_guard(
    axum::extract::State(directory): axum::extract::State<Arc<DirectoryView>>,
    axum::Extension(asclepios_net::server::Caller(caller)): axum::Extension<
        asclepios_net::server::Caller,
    >,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let checked = blocking(move || {
        let facts = directory.facts()?;
        require_registered_key(facts.member(&caller.id), &caller)
    });
    match checked.await {
        Ok(()) => next.run(request).await,
        Err(e) => e.into_response(),
    }
}

/// SHA-256 of the caller's certificate key as SubjectPublicKeyInfo: what a
/// component's registration is bound to.
pub fn identity_key_sha256(peer: &PeerCaller) -> [u8; 32] {
    Sha256::digest(asclepios_attest::ratls::ed25519_spki(&peer.public_key)).into()
}

/// Refuses a caller of one of `kinds` (directory kinds that are components)
/// without a current, not contraindicated registration for the very key it
/// connects with. Both services apply it: the authority before it releases
/// keys, tokens or policies, the record service before it stores a version.
pub fn check_attested(
    member: Option<&Member>,
    component: Option<&ComponentFact>,
    caller: &PeerCaller,
    kinds: &[String],
) -> Result<(), ApiError> {
    if kinds.is_empty() {
        return Ok(());
    }
    if !member.is_some_and(|m| kinds.contains(&m.kind)) {
        return Ok(());
    }
    let refuse = |why: String| {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "component `{}` {why}: attest first (`asclepios attest register --as {}`)",
                caller.id, caller.id
            ),
        ))
    };
    let contraindicated = asclepios_attest::policy::Trust::Contraindicated.to_string();
    match component {
        None => refuse("has not attested".into()),
        Some(c) if c.trust == contraindicated => {
            refuse(format!("failed its last attestation ({})", c.appraisal))
        }
        Some(c) if c.expires_at <= asclepios_attest::unix_now() => {
            refuse("has an expired attestation".into())
        }
        Some(c) if c.key_sha256 != hex::encode(identity_key_sha256(caller)) => {
            refuse("attested with another certificate key".into())
        }
        Some(_) => Ok(()),
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

/// Which values to fetch.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatsQuery {
    /// The study.
    pub study: String,
    /// The label; absent: list the labels instead.
    pub label: Option<String>,
}

/// Roles that may read encrypted statistics values (providers, researchers).
pub const STATS_READERS: &[&str] = &["role:lab", "role:researcher"];

/// Most values one publication may carry.
pub const MAX_STATS_VALUES: usize = 100_000;

/// A data provider publishes encrypted values for slots it owns; each slot
/// publishes once per label. The service stores points it cannot open.
async fn publish_stats(
    State(s): State<Arc<RecordService>>,
    Extension(Caller(caller)): Extension<Caller>,
    Extension(v): Extension<Verified>,
    body: axum::body::Bytes,
) -> Result<Json<WithReceipt<usize>>, ApiError> {
    let req: StatsValues = json_body(&body)?;
    blocking(move || {
        let work = || -> Result<usize, ApiError> {
            s.check_caller(&caller.id)?;
            check_stats_name("study", &req.study)?;
            check_stats_name("label", &req.label)?;
            if req.values.is_empty() || req.values.len() > MAX_STATS_VALUES {
                return Err(bad_request(format!(
                    "publish 1 to {MAX_STATS_VALUES} values at a time"
                )));
            }
            let facts = s.directory.facts()?;
            let mut rows = Vec::with_capacity(req.values.len());
            for (slot, ct) in &req.values {
                if facts.slot_owner(&req.study, *slot) != Some(caller.id.as_str()) {
                    return Err(ApiError::new(
                        StatusCode::FORBIDDEN,
                        format!("slot {slot} of `{}` is not yours", req.study),
                    ));
                }
                let bytes = B64
                    .decode(ct)
                    .ok()
                    .filter(|b| asclepios_crypto::ipfe::point_from_bytes(b).is_some())
                    .ok_or_else(|| {
                        bad_request("values are ristretto255 points (32 bytes, base64)")
                    })?;
                rows.push((*slot, bytes));
            }
            s.store
                .fe_put_values(&req.study, &req.label, &rows)
                .map_err(store_error)?;
            Ok(rows.len())
        };
        let resource = format!(
            "stats/{}/{}: {} values",
            shown(&req.study),
            shown(&req.label),
            req.values.len()
        );
        audit_outcome(
            &s.trail,
            &v,
            &caller.id,
            (Action::Create, Some("HRESCH")),
            resource,
            work(),
        )
    })
    .await
    .map(Json)
}

/// A study's encrypted values under a label (or its labels), for providers
/// and researchers: points nobody can open without an aggregate key.
async fn stats_values(
    State(s): State<Arc<RecordService>>,
    Extension(Caller(caller)): Extension<Caller>,
    Extension(v): Extension<Verified>,
    Query(q): Query<StatsQuery>,
) -> Result<Json<WithReceipt<StatsValuesOut>>, ApiError> {
    blocking(move || {
        let work = || -> Result<StatsValuesOut, ApiError> {
            s.check_caller(&caller.id)?;
            check_stats_name("study", &q.study)?;
            let held = s.current_attributes(&caller.id)?;
            if !held
                .iter()
                .any(|a| STATS_READERS.contains(&attribute_name(a)))
            {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    format!(
                        "reading statistics needs one of: {}",
                        STATS_READERS.join(", ")
                    ),
                ));
            }
            match &q.label {
                None => Ok(StatsValuesOut {
                    labels: s.store.fe_labels(&q.study).map_err(store_error)?,
                    values: Vec::new(),
                }),
                Some(label) => {
                    check_stats_name("label", label)?;
                    Ok(StatsValuesOut {
                        labels: vec![label.clone()],
                        values: s
                            .store
                            .fe_values(&q.study, label)
                            .map_err(store_error)?
                            .into_iter()
                            .map(|(slot, ct)| (slot, B64.encode(ct)))
                            .collect(),
                    })
                }
            }
        };
        let resource = format!(
            "stats/{}/{}",
            shown(&q.study),
            shown(q.label.as_deref().unwrap_or("*"))
        );
        audit_outcome(
            &s.trail,
            &v,
            &caller.id,
            (Action::Read, Some("HRESCH")),
            resource,
            work(),
        )
    })
    .await
    .map(Json)
}

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

/// Logs an export (what profile, how many resources, to whom).
async fn record_export(
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

async fn attestation_verdict(
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

async fn search_index(
    State(s): State<Arc<RecordService>>,
    Extension(Caller(caller)): Extension<Caller>,
    Extension(v): Extension<Verified>,
    body: axum::body::Bytes,
) -> Result<Json<WithReceipt<IndexValues>>, ApiError> {
    let req: IndexLookup = json_body(&body)?;
    blocking(move || {
        let lookup = || -> Result<IndexValues, ApiError> {
            s.check_caller(&caller.id)?;
            if req.addrs.len() > MAX_LOOKUP {
                return Err(bad_request(format!(
                    "at most {MAX_LOOKUP} addresses per lookup"
                )));
            }
            let addrs = req
                .addrs
                .iter()
                .map(|a| {
                    B64.decode(a)
                        .ok()
                        .filter(|a| a.len() == asclepios_crypto::sse::ADDR_LEN)
                        .ok_or_else(|| bad_request("addresses are 16 bytes, base64"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let values = s.store.sse_get(&addrs).map_err(store_error)?;
            Ok(IndexValues {
                values: values
                    .into_iter()
                    .map(|v| v.map(|v| B64.encode(v)))
                    .collect(),
            })
        };
        let resource = format!("index lookup: {} addresses", req.addrs.len());
        audit_outcome(
            &s.trail,
            &v,
            &caller.id,
            (Action::Search, None),
            resource,
            lookup(),
        )
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

async fn shred_record(
    State(s): State<Arc<RecordService>>,
    Extension(Caller(caller)): Extension<Caller>,
    Extension(v): Extension<Verified>,
    Path((patient, record_id)): Path<(String, String)>,
) -> Result<Json<WithReceipt<u64>>, ApiError> {
    blocking(move || {
        let resource = format!("record/{patient}/{record_id}");
        s.audited(&caller.id, Action::Delete, resource, &patient, &v, || {
            // Erasure is the patient's right (GDPR art. 17).
            if caller.id != patient {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "only the patient may erase their records",
                ));
            }
            s.store
                .shred_record(&patient, &record_id)
                .map_err(store_error)
        })
    })
    .await
    .map(Json)
}

/// Most entries per audit slice.
pub const MAX_AUDIT_SLICE: u64 = 512;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SliceQuery {
    start: Option<u64>,
}

async fn audit_entries(
    State(s): State<Arc<RecordService>>,
    Extension(Caller(caller)): Extension<Caller>,
    q: Result<Query<SliceQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<AuditSlice>, ApiError> {
    let Query(q) = q.map_err(|e| bad_request(format!("query: {}", e.body_text())))?;
    blocking(move || {
        s.check_caller(&caller.id)?;
        // The entries are sealed, but their policies name patients: they are
        // for patients (who read their own) and auditors.
        let is_patient = s
            .directory
            .facts()?
            .member(&caller.id)
            .is_some_and(|m| m.kind == "patient");
        if !is_patient
            && !s
                .current_attributes(&caller.id)?
                .iter()
                .any(|a| attribute_name(a) == AUDITOR_ROLE)
        {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "the audit log is for patients and auditors",
            ));
        }
        let log = s.trail.log();
        let (size, _) = log
            .sync()
            .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
        let start = q.start.unwrap_or(0).min(size);
        let end = (start + MAX_AUDIT_SLICE).min(size);
        let entries = log
            .entries(start..end)
            .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
        Ok(AuditSlice {
            start,
            entries: entries.iter().map(|e| B64.encode(e)).collect(),
            checkpoint: log
                .latest_checkpoint()
                .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?,
        })
    })
    .await
    .map(Json)
}

async fn openapi() -> Json<serde_json::Value> {
    Json(openapi_document())
}

/// The service's OpenAPI 3.1 document (served at `/openapi.json`).
pub fn openapi_document() -> serde_json::Value {
    use asclepios_net::openapi::{
        answer, array, base64, document, object, operation, string, uint, In,
    };
    let record = [("patient", In::Path, true), ("record_id", In::Path, true)];
    document(
        "asclepios record service",
        env!("CARGO_PKG_VERSION"),
        serde_json::json!({
            "/v1/records": {"post": operation(
                "Store a sealed record version (signed request), with receipt.",
                &[],
                Some(object(&[
                    ("patient", string()), ("record_id", string()), ("version", uint()),
                    ("body", base64()), ("wrapper", base64()), ("author_signature", base64()),
                ], &[])),
                answer(),
            )},
            "/v1/records/{patient}/{record_id}": {
                "get": operation(
                    "A sealed record version (latest, or ?version=N), with receipt.",
                    &[record[0], record[1], ("version", In::Query, false)],
                    None,
                    answer(),
                ),
                "delete": operation(
                    "Erase (crypto-shred) a record: the patient only.",
                    &record,
                    None,
                    answer(),
                ),
            },
            "/v1/records/{patient}/{record_id}/versions": {"get": operation(
                "The versions of a record (its history), with receipt.",
                &record,
                None,
                answer(),
            )},
            "/v1/patients/{patient}/records": {"get": operation(
                "A patient's record ids and latest versions.",
                &[("patient", In::Path, true)],
                None,
                answer(),
            )},
            "/v1/search": {"post": operation(
                "Sealed index values at the given addresses (from search tokens the key authority issued), with receipt.",
                &[],
                Some(object(&[("addrs", array(base64(), MAX_LOOKUP))], &[])),
                answer(),
            )},
            "/v1/exports": {"post": operation(
                "Log a de-identified export (profile, counts, recipient), with receipt.",
                &[],
                Some(object(&[
                    ("profile", string()), ("resources", uint()),
                    ("records_read", uint()), ("recipient", string()),
                ], &[])),
                answer(),
            )},
            "/v1/stats/values": {
                "post": operation(
                    "Publish encrypted statistics values (slot, ristretto255 point), with receipt.",
                    &[],
                    Some(object(&[
                        ("study", string()), ("label", string()),
                        ("values", array(serde_json::json!({
                            "type": "array", "prefixItems": [uint(), base64()],
                            "minItems": 2, "maxItems": 2,
                        }), MAX_STATS_VALUES)),
                    ], &[])),
                    answer(),
                ),
                "get": operation(
                    "The published values of a label (or, without one, the study's labels), with receipt.",
                    &[("study", In::Query, true), ("label", In::Query, false)],
                    None,
                    answer(),
                ),
            },
            "/v1/audit/entries": {"get": operation(
                "Encrypted audit entries from ?start= (at most 512) and the latest checkpoint.",
                &[("start", In::Query, false)],
                None,
                answer(),
            )},
            "/v1/attestation/verdicts": {"post": operation(
                "Log a client's verdict on the key authority's attestation (audited; a refusal is logged as denied), with receipt.",
                &[],
                Some(object(&[("subject", string()), ("trust", string()), ("summary", string())], &[])),
                answer(),
            )},
        }),
    )
}
