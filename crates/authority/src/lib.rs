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
pub mod emergency;
pub mod facts;
pub mod naming;
mod openapi;
pub mod record_access;
pub mod review;
pub mod rewrap;
pub mod search;
pub mod stats;
pub mod witness;

pub use openapi::openapi_document;
pub use rewrap::{
    fence, rewrap_stale, rewrap_stale_for_request, rewrap_stale_within, REWRAP_TIME_PER_TICK,
};

pub use asclepios_api::keys::{
    check_resolution, identity_entry_message, key_context, resolution_message, EmergencyGranted,
    EmergencyRequest, IdentityKey, IssuedKey, PolicyText, ResolvedPolicy,
};
use std::sync::Arc;

use asclepios_audit::{Action, AuditEvent, AuditTrail, Outcome};
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

pub use asclepios_api::records::WithReceipt;
pub use attestation::{ComponentGate, EvidenceSource};

/// The authority's state.
pub struct KeyAuthority {
    store: Store,
    trail: Arc<AuditTrail<Store>>,
    master: MasterSecretKey,
    public_key_hex: String,
    emergency_seconds: i64,
    mitra: asclepios_crypto::sse::Mitra,
    search_roles: Vec<String>,
    /// Roles whose holders search every patient's records (see
    /// [`KeyAuthority::with_cross_patient_search`]).
    cross_patient_search_roles: Vec<String>,
    slot_sealer: stats::SlotSealer,
    /// The privacy budgets statistics keys are checked against.
    stats_budgets: stats::Budgets,
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
    /// The secret patients' record-naming keys derive from.
    naming: Option<asclepios_crypto::naming::NamingSecret>,
    /// The directory change the record service last confirmed it holds;
    /// held while telling it of a newer one.
    facts_pushed: std::sync::Mutex<u64>,
    /// The record service's data: wrappers to re-wrap, record versions, the
    /// encrypted index.
    records: Arc<dyn record_access::RecordAccess>,
    /// The one identity that may read the directory facts (the record
    /// service's).
    facts_reader: Option<String>,
    /// Held across an index update or compaction, from reading the keyword
    /// states to swapping them: the index entries are written before the
    /// states move, so two updates must never compute the same addresses.
    index_lock: std::sync::Mutex<()>,
    /// The witness of the audit logs, if this authority runs one.
    witness: Option<Arc<asclepios_audit::Witness>>,
}

impl std::fmt::Debug for KeyAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyAuthority(<master secret redacted>)")
    }
}

use asclepios_service::{blocking, shown, store_error};

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
            trail: Arc::new(trail),
            master,
            public_key_hex,
            emergency_seconds: i64::try_from(emergency_seconds).unwrap_or(3600),
            search_roles,
            cross_patient_search_roles: Vec::new(),
            slot_sealer: stats::SlotSealer::new(stats_key),
            stats_budgets: stats::Budgets::default(),
            attestation: Default::default(),
            alarm_logged: Default::default(),
            cohort_lock: Default::default(),
            admin_lock: Default::default(),
            rewrap_pending: std::sync::atomic::AtomicBool::new(true),
            facts_cache: Default::default(),
            facts_pushed: Default::default(),
            naming: None,
            records: Arc::new(record_access::LocalRecords(store.clone())),
            store,
            index_lock: Default::default(),
            facts_reader: None,
            witness: None,
        }
    }

    /// Serves the directory facts to `identity` alone (the record service's
    /// identity); without this, to no one.
    pub fn serving_facts_to(mut self, identity: &str) -> Self {
        self.facts_reader = Some(identity.to_string());
        self
    }

    /// Reaches the record service's data through `records` instead of the
    /// authority's own store (the services in processes of their own).
    pub fn with_records(mut self, records: Arc<dyn record_access::RecordAccess>) -> Self {
        self.records = records;
        self
    }

    /// Whether `caller` holds one of `roles` now.
    fn holds_role(&self, caller: &str, roles: &[&str]) -> Result<bool, ApiError> {
        Ok(self
            .current_attributes(caller)?
            .iter()
            .any(|a| roles.contains(&attribute_name(a))))
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
            // The reason names rows, some keyed by patient: it goes to the
            // auditors (the event below), not to the operator's log.
            tracing::error!(
                "INTEGRITY ALARM: the authority's state failed verification; nothing is issued \
                 until an operator has checked the store (the reason is in the audit log)"
            );
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
                tracing::error!("the integrity alarm could not be logged: {e}");
                self.alarm_logged
                    .store(false, std::sync::atomic::Ordering::SeqCst);
            }
        }
        Some(reason)
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

    /// The operators' side of the authority (see
    /// [`asclepios_service::operations`]): admission under `limits`
    /// (`exempt`: the record service's identity, whose calls carry the
    /// audit log's witnessing), metrics with the audit log's size, the
    /// re-wrap queue and the integrity alarm, and readiness (the store
    /// answers, no integrity alarm, the audit log not in alarm).
    pub fn operations(
        self: &Arc<Self>,
        limits: asclepios_net::admission::AdmissionLimits,
        exempt: Vec<String>,
        metrics_readers: Vec<String>,
    ) -> asclepios_service::Operations {
        use asclepios_net::metrics::Gauge;
        let (gauged, ready) = (self.clone(), self.clone());
        asclepios_service::Operations::new(
            self.trail.clone(),
            asclepios_service::ServiceOperations {
                service: "authority",
                limits,
                weigh,
                exempt,
                metrics_readers,
                gauges: move || {
                    vec![
                        Gauge {
                            name: "asclepios_rewrap_queue_length",
                            help: "Re-wrap rounds left for the sweeper (0 or 1: one round re-wraps every wrapper under a revoked attribute version).",
                            value: f64::from(u8::from(gauged.rewraps_pending())),
                        },
                        Gauge {
                            name: "asclepios_integrity_alarm",
                            help: "1 while the authority's state failed verification and it refuses to issue.",
                            value: f64::from(u8::from(gauged.store.integrity_alarm().is_some())),
                        },
                    ]
                },
                ready: move || {
                    if ready.integrity_alarm().is_some() {
                        return Err("integrity alarm (the reason is in the audit log)".into());
                    }
                    asclepios_service::store_answers(&ready.store)
                },
            },
        )
    }

    /// The router: every route behind the signature check.
    pub fn router(self: Arc<Self>, check: Arc<SignatureCheck>) -> Router {
        Router::new()
            .route("/v1/keys", post(issue_key))
            .route("/v1/policy/resolve", post(resolve_policy))
            .route("/v1/records/naming-key", post(naming::naming_key))
            .route("/v1/emergency", post(emergency::emergency))
            .route(
                "/v1/emergency/reviews",
                get(review::pending_reviews).post(review::review_grant),
            )
            .route(
                "/v1/consents",
                post(consent::grant_consent).get(consent::list_consents),
            )
            .route(
                "/v1/consents/{consent_id}/withdraw",
                post(consent::withdraw_consent),
            )
            .route("/v1/abe/public-key", get(public_key))
            .route("/v1/identities/{id}", get(identity_key))
            .route("/v1/directory/facts", get(facts::directory_facts_answer))
            .route("/v1/audit/entries", get(audit_entries))
            .route("/v1/audit/consistency", get(audit_consistency))
            .route("/v1/witness/add-checkpoint", post(witness::add_checkpoint))
            .route("/v1/search/tokens", post(search::search_tokens))
            .route("/v1/search/index", post(search::index_record))
            .route("/v1/stats/slots", post(stats::stats_slots))
            .route("/v1/stats/keys", post(stats::stats_key))
            .route("/v1/attestation/evidence", get(attestation_evidence))
            .route("/v1/attestation/challenge", post(attestation_challenge))
            .route("/v1/components/register", post(register_component))
            .route(
                "/v1/directory/identities",
                get(admin::list_members).post(admin::register_identity),
            )
            .route(
                "/v1/directory/identities/{id}/attributes",
                axum::routing::put(admin::set_identity_attributes),
            )
            .route(
                "/v1/directory/identities/{id}/disable",
                post(admin::disable_identity),
            )
            .route(
                "/v1/directory/identities/{id}/auditor-key",
                axum::routing::put(admin::put_auditor_key),
            )
            .layer(axum::middleware::from_fn_with_state(
                self.clone(),
                push_directory_changes,
            ))
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

    /// The authority's store (its nonces live there too).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The key the authority signs directory entries, facts and resolved
    /// policies with (its service key).
    pub fn verifying_key(&self) -> ed25519_dalek::VerifyingKey {
        self.trail.verifying_key()
    }

    fn active(&self, caller: &str) -> Result<(), ApiError> {
        asclepios_service::require_active(facts::member(&self.store, caller)?.as_ref(), caller)
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
            // One read of the caller's directory entry serves every check
            // and the attributes the key is made for.
            let me = facts::member(&self.store, &caller.id)?;
            asclepios_service::require_active(me.as_ref(), &caller.id)?;
            if me.as_ref().is_some_and(|m| m.kind == facts::SERVICE_KIND) {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "a service identity gets no attribute key",
                ));
            }
            self.require_attested(caller)?;
            let attributes = me.map(|m| m.attributes).unwrap_or_default();
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
        asclepios_service::audit_outcome(
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

/// How much of the authority a route takes: key generation, directory
/// changes (with their re-wraps), consents, break-glass grants, index
/// updates and statistics keys are heavy (they wait behind at most a few
/// others, see [`asclepios_net::admission`]); reads, policy resolution,
/// naming keys, search tokens and attestation challenges are light.
pub fn weigh(method: &axum::http::Method, route: &str) -> asclepios_net::admission::Weight {
    use asclepios_net::admission::Weight;
    const LIGHT_POSTS: [&str; 5] = [
        "/v1/policy/resolve",
        "/v1/records/naming-key",
        "/v1/search/tokens",
        "/v1/attestation/challenge",
        "/v1/witness/add-checkpoint",
    ];
    use axum::http::Method;
    // Administrators' directory changes are never shed behind others'
    // heavy work (a user about to be revoked must not hold off the
    // revocation by filling the queue); callers without role:admin are
    // refused them at once. Methods no route takes are refused at once too.
    let changes = [Method::POST, Method::PUT, Method::DELETE, Method::PATCH].contains(method);
    if !changes || LIGHT_POSTS.contains(&route) || route.starts_with("/v1/directory/") {
        Weight::Light
    } else {
        Weight::Heavy
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
            asclepios_service::INTEGRITY_ALARM,
        )
        .into_response();
    }
    let response = next.run(request).await;
    // A request that tripped the alarm logs it now.
    let check = s.clone();
    let _ = blocking(move || Ok(check.integrity_alarm())).await;
    response
}

/// After a request that changed the directory (an administrator's change,
/// a consent given or withdrawn, a break-glass grant, a component
/// registered, slots allocated), tells the record service before answering:
/// when the caller hears "done", both services judge by the change (a
/// disabled auditor is sealed to by neither; a withdrawn consent opens
/// nothing at either). If the record service cannot be told, the change
/// stands and reaches it with its next poll; the failure is reported.
async fn push_directory_changes(
    State(s): State<Arc<KeyAuthority>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let reads_only = matches!(
        *request.method(),
        axum::http::Method::GET | axum::http::Method::HEAD
    );
    // Only a request that itself moved the directory waits for the record
    // service (key issuance, searches and resolutions never do).
    let before = s.store.directory_change();
    let response = next.run(request).await;
    if reads_only || !response.status().is_success() || s.store.directory_change() == before {
        return response;
    }
    let _ = blocking(move || {
        s.push_directory_change();
        Ok(())
    })
    .await;
    response
}

impl KeyAuthority {
    /// Tells the record service of a directory change it has not yet
    /// confirmed (see [`push_directory_changes`]). Blocks, one push at a
    /// time, each at most [`record_access::FACTS_PUSH_LIMIT`].
    pub fn push_directory_change(&self) {
        let mut pushed = self.facts_pushed.lock().unwrap_or_else(|p| p.into_inner());
        let Some(change) = self.store.directory_change() else {
            return;
        };
        if change <= *pushed {
            return;
        }
        let versions = match self.store.attribute_versions() {
            Ok(v) => v,
            Err(e) => {
                tracing::error!("reading attribute versions: {e}");
                return;
            }
        };
        match self
            .records
            .directory_changed(change, &versions, record_access::FACTS_PUSH_LIMIT)
        {
            Ok(()) => *pushed = change,
            Err(e) => tracing::warn!(
                "the record service has not taken directory change \
                 {change} yet (it will within a poll): {e}"
            ),
        }
    }
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
        let result = (|| {
            s.active(&caller.id)?;
            // An unattested device gets no policy to seal under (M6).
            s.require_attested(&caller)?;
            let resolved = s.resolve(&policy)?.to_string();
            let signature =
                s.trail
                    .sign(&resolution_message(&v.request_hash, &req.policy, &resolved));
            Ok(ResolvedPolicy {
                policy: resolved,
                signature: B64.encode(signature.to_bytes()),
            })
        })();
        // Every resolution is logged: who asked to seal under which policy.
        let resource = format!("policy resolution: {}", shown(&req.policy));
        s.logged_read(&v, &caller.id, resource, result)
    })
    .await
    .map(Json)
}

async fn identity_key(
    State(s): State<Arc<KeyAuthority>>,
    Extension(Caller(caller)): Extension<Caller>,
    Extension(v): Extension<Verified>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Json<IdentityKey>, ApiError> {
    blocking(move || {
        // Every read of a directory entry is logged.
        let resource = format!("identity/{}", shown(&id));
        let result = s.identity_entry(&caller.id, &id);
        s.logged_read(&v, &caller.id, resource, result)
    })
    .await
    .map(Json)
}

impl KeyAuthority {
    /// Logs a read of `resource` by `caller` (for the auditors) with its
    /// outcome, and returns the answer: answers signed by the authority
    /// itself, which carry no receipt.
    fn logged_read<T>(
        &self,
        v: &Verified,
        caller: &str,
        resource: String,
        result: Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let purpose = (Action::Read, None);
        asclepios_service::audit_outcome(&self.trail, v, caller, purpose, resource, result)
            .map(|logged| logged.result)
    }

    /// The signed directory entry of `id`, for `caller`.
    fn identity_entry(&self, caller: &str, id: &str) -> Result<IdentityKey, ApiError> {
        let s = self;
        s.active(caller)?;
        // A patient's entry says that the pseudonym is a patient here: it
        // goes to the patient's circle (who read what the patient writes),
        // administrators and auditors. Anyone else gets the answer a
        // missing identity gets, so the directory cannot be enumerated for
        // patients (review finding L1).
        let unknown = || ApiError::new(StatusCode::NOT_FOUND, format!("no identity `{id}`"));
        let identity = s
            .store
            .identity(id)
            .map_err(store_error)?
            .ok_or_else(unknown)?;
        if identity.kind == facts::PATIENT_KIND && caller != id {
            let held = s.current_attributes(caller)?;
            if !asclepios_service::in_circle(
                &held,
                id,
                &[admin::ADMIN_ROLE, asclepios_service::AUDITOR_ROLE],
            ) {
                return Err(unknown());
            }
        }
        // The entry vouches for an author's key: the services' identities
        // author nothing (a record "by" the record service's identity is
        // its operator's forgery), so none is vouched for.
        if identity.kind == facts::SERVICE_KIND {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("`{id}` is a service identity: it authors no record"),
            ));
        }
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
    }
}

/// The authority's own audit log, for patients and auditors (with the
/// services apart, what the authority logs is in its log, not the record
/// service's).
async fn audit_consistency(
    State(s): State<Arc<KeyAuthority>>,
    Extension(Caller(caller)): Extension<Caller>,
    q: Result<
        axum::extract::Query<asclepios_service::ConsistencyQuery>,
        axum::extract::rejection::QueryRejection,
    >,
) -> Result<Json<asclepios_api::records::ConsistencyProof>, ApiError> {
    let axum::extract::Query(q) =
        q.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("query: {}", e.body_text())))?;
    blocking(move || {
        let member = facts::member(&s.store, &caller.id)?;
        asclepios_service::audit_consistency(
            s.trail.log(),
            member.as_ref(),
            &caller.id,
            q.old,
            q.new,
        )
    })
    .await
    .map(Json)
}

async fn audit_entries(
    State(s): State<Arc<KeyAuthority>>,
    Extension(Caller(caller)): Extension<Caller>,
    q: Result<
        axum::extract::Query<asclepios_service::SliceQuery>,
        axum::extract::rejection::QueryRejection,
    >,
) -> Result<Json<asclepios_api::records::AuditSlice>, ApiError> {
    let axum::extract::Query(q) =
        q.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("query: {}", e.body_text())))?;
    blocking(move || {
        let member = facts::member(&s.store, &caller.id)?;
        asclepios_service::audit_slice(s.trail.log(), member.as_ref(), &caller.id, &q)
    })
    .await
    .map(Json)
}

async fn public_key(State(s): State<Arc<KeyAuthority>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "public_key": s.public_key_hex }))
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
