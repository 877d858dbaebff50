//! What the authority vouches for to the record service: the directory
//! read from its authenticated state, signed with its key
//! ([`asclepios_api::SignedFacts`]), rebuilt only when a directory table
//! changed. The authority's own checks read the same rows, as
//! [`Member`]s and [`ComponentFact`]s, so both services judge a caller by one
//! set of rules (`asclepios_service::{require_active, check_attested, …}`).

use std::collections::BTreeMap;
use std::sync::Arc;

use asclepios_api::directory::{ComponentFact, GrantFact, Member, SlotRange};
use asclepios_api::{DirectoryFacts, FactsSource, SignedFacts};
use asclepios_net::server::ApiError;
use asclepios_service::{blocking, store_error, AUDITOR_ROLE};
use asclepios_store::{versioned_attribute, Component, IdentityStatus, Store, StoreError};
use axum::extract::State;
use axum::Extension;

use crate::KeyAuthority;

/// An identity as both services judge it, from the authority's store.
pub(crate) fn member(store: &Store, id: &str) -> Result<Option<Member>, ApiError> {
    let Some(identity) = store.identity(id).map_err(store_error)? else {
        return Ok(None);
    };
    Ok(Some(Member {
        kind: identity.kind,
        public_key: identity.public_key.map(hex::encode),
        active: identity.status == IdentityStatus::Active,
        attributes: store.current_attributes(id).map_err(store_error)?,
    }))
}

/// A component's registration as both services judge it.
pub(crate) fn component_fact(c: &Component) -> ComponentFact {
    ComponentFact {
        trust: c.trust.clone(),
        appraisal: c.appraisal.clone(),
        key_sha256: hex::encode(&c.key_sha256),
        expires_at: c.expires_at,
    }
}

/// The directory facts at the store's current change; grants that ended
/// before `now` are left out.
pub fn directory_facts(store: &Store, now: i64) -> Result<DirectoryFacts, StoreError> {
    let state = store.directory_state()?;
    let versions: BTreeMap<String, u64> = state.versions.into_iter().collect();
    let version = |a: &str| versions.get(a).copied().unwrap_or(0);
    let mut held: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (id, attribute) in &state.held {
        held.entry(id.as_str())
            .or_default()
            .push(versioned_attribute(attribute, version(attribute)));
    }
    let mut members = BTreeMap::new();
    for identity in &state.identities {
        let mut attributes = held.remove(identity.id.as_str()).unwrap_or_default();
        attributes.sort();
        members.insert(
            identity.id.clone(),
            Member {
                kind: identity.kind.clone(),
                public_key: identity.public_key.as_deref().map(hex::encode),
                active: identity.status == IdentityStatus::Active,
                attributes,
            },
        );
    }
    // Events are sealed to active identities that hold the auditor role
    // and have a sealing key.
    let auditors = state
        .auditor_keys
        .iter()
        .filter(|(id, _)| {
            members.get(id).is_some_and(|m| {
                m.active
                    && m.attributes
                        .iter()
                        .any(|a| asclepios_crypto::policy::attribute_name(a) == AUDITOR_ROLE)
            })
        })
        .map(|(id, key)| (id.clone(), hex::encode(key)))
        .collect();
    let components = state
        .components
        .iter()
        .map(|c| (c.identity_id.clone(), component_fact(c)))
        .collect();
    let emergency = state
        .grants
        .iter()
        .filter(|g| g.expires_at > now)
        .map(|g| GrantFact {
            patient: g.patient.clone(),
            clinician: g.clinician.clone(),
            expires_at: g.expires_at,
        })
        .collect();
    let mut slots: BTreeMap<String, Vec<SlotRange>> = BTreeMap::new();
    let mut by_study: BTreeMap<&str, Vec<(u64, &str)>> = BTreeMap::new();
    for (study, slot, provider) in &state.slots {
        by_study.entry(study).or_default().push((*slot, provider));
    }
    for (study, mut owned) in by_study {
        owned.sort();
        let ranges = slots.entry(study.to_string()).or_default();
        for (slot, provider) in owned {
            match ranges.last_mut() {
                Some(r) if r.provider == provider && r.last.checked_add(1) == Some(slot) => {
                    r.last = slot;
                }
                _ => ranges.push(SlotRange {
                    first: slot,
                    last: slot,
                    provider: provider.to_string(),
                }),
            }
        }
    }
    Ok(DirectoryFacts {
        change: state.change,
        issued_at: u64::try_from(now).unwrap_or(0),
        members,
        attribute_versions: versions,
        auditors,
        components,
        emergency,
        slots,
    })
}

impl KeyAuthority {
    /// The directory facts, signed; rebuilt only when a directory table
    /// changed since the last ones (or always, on a store without
    /// integrity protection, which has no change counter).
    pub fn signed_facts(&self) -> Result<SignedFacts, String> {
        let change = self.store.directory_change();
        let mut cached = self.facts_cache.lock().unwrap_or_else(|p| p.into_inner());
        if let (Some(change), Some((at, signed))) = (change, cached.as_ref()) {
            if *at == change {
                return Ok(signed.clone());
            }
        }
        let now = asclepios_net::server::unix_now() as i64;
        let facts = directory_facts(&self.store, now).map_err(|e| e.to_string())?;
        let signed = facts.signed_with(|m| self.trail.sign(m));
        *cached = Some((facts.change, signed.clone()));
        Ok(signed)
    }
}

impl FactsSource for KeyAuthority {
    fn fetch(&self, known: Option<u64>) -> Result<Option<SignedFacts>, String> {
        if self.store.integrity_alarm().is_some() {
            return Err(asclepios_service::INTEGRITY_ALARM.to_string());
        }
        if known.is_some() && known == self.store.directory_change() {
            return Ok(None);
        }
        self.signed_facts().map(Some)
    }
}

/// Middleware of the authority: every signed request comes from a
/// certificate whose key the directory vouches for (the same rule as the
/// record service's, on the authority's own store).
pub(crate) async fn registered_key_guard(
    State(store): State<Store>,
    Extension(asclepios_net::server::Caller(caller)): Extension<asclepios_net::server::Caller>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let checked = blocking(move || {
        asclepios_service::require_registered_key(member(&store, &caller.id)?.as_ref(), &caller)
    });
    match checked.await {
        Ok(()) => next.run(request).await,
        Err(e) => e.into_response(),
    }
}

/// Which change of the facts the caller holds.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FactsQuery {
    known: Option<u64>,
}

/// `GET /v1/directory/facts`: the signed facts, for the record service's
/// identity only (configured with [`KeyAuthority::serving_facts_to`]); 204 if they are still at change `known`. Not
/// audited: the record service asks about once a second, and the facts
/// carry nothing that the directory changes behind them did not log.
pub(crate) async fn directory_facts_answer(
    State(s): State<Arc<KeyAuthority>>,
    Extension(asclepios_net::server::Caller(caller)): Extension<asclepios_net::server::Caller>,
    query: Result<axum::extract::Query<FactsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<axum::response::Response, ApiError> {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    let axum::extract::Query(q) = query
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("query: {}", e.body_text())))?;
    blocking(move || {
        let me = member(&s.store, &caller.id)?;
        asclepios_service::require_active(me.as_ref(), &caller.id)?;
        if me.is_none_or(|m| m.kind != SERVICE_KIND)
            || s.facts_reader.as_deref() != Some(caller.id.as_str())
        {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "the directory facts are for the deployment's record service",
            ));
        }
        s.fetch(q.known)
            .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e))
    })
    .await
    .map(|answer| match answer {
        None => StatusCode::NO_CONTENT.into_response(),
        Some(signed) => axum::Json(signed).into_response(),
    })
}

/// The directory kind of the deployment's own services.
pub const SERVICE_KIND: &str = "service";

/// The facts source a record service in this process reads.
pub fn in_process(authority: &Arc<KeyAuthority>) -> Arc<dyn FactsSource> {
    authority.clone()
}

/// The directory kind of patients.
pub const PATIENT_KIND: &str = "patient";
