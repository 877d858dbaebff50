//! Attestation at the authority, both ways round.
//!
//! As an *Attester*: `GET /v1/attestation/evidence?nonce=<hex>` answers
//! fresh evidence that binds the authority's current TLS key and the
//! caller's nonce (the certificate's own evidence carries only an issue
//! time; a nonce proves it is live).
//!
//! As a *Relying Party* for components (devices, service replicas): a
//! component asks `POST /v1/attestation/challenge` for a nonce, makes
//! evidence binding its client-certificate key and that nonce, and posts it
//! to `POST /v1/components/register`. The authority appraises it against
//! the component policy, keeps the verdict (a contraindicated one withdraws
//! an earlier approval) and audits it. With registration required, keys,
//! search tokens and statistics keys are released to a component only
//! while its registration holds and names the key it connects with.

pub use asclepios_api::attestation::{Challenge, EvidenceOut, Registered, Registration};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use asclepios_attest::policy::{appraise, Expected, Policy};
use asclepios_audit::Action;
use asclepios_net::pki::PeerIdentity;
use asclepios_net::server::ApiError;
use asclepios_net::signature::Verified;
use asclepios_store::Component;
use axum::http::StatusCode;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use rand_core::{OsRng, RngCore};

use crate::{store_error, KeyAuthority, WithReceipt};

/// How long a registration challenge may be answered, in seconds.
pub const CHALLENGE_SECONDS: u64 = 300;
/// Most challenges outstanding at once.
const MAX_CHALLENGES: usize = 10_000;

/// Makes evidence for the authority's current TLS key.
pub trait EvidenceSource: Send + Sync {
    /// Evidence binding the current TLS key and `nonce`, encoded.
    fn evidence_for_nonce(&self, nonce: [u8; 32]) -> Result<Vec<u8>, String>;
}

/// Which identities must attest, and against what.
#[derive(Clone, Debug)]
pub struct ComponentGate {
    /// Whether registration is required before keys are released.
    pub required: bool,
    /// Directory kinds that are components (e.g. `device`).
    pub kinds: Vec<String>,
    /// Reference values for components.
    pub policy: Option<Policy>,
    /// How long a registration holds, in seconds.
    pub registration_seconds: u64,
}

impl Default for ComponentGate {
    fn default() -> Self {
        ComponentGate {
            required: false,
            kinds: Vec::new(),
            policy: None,
            registration_seconds: 86_400,
        }
    }
}

/// The authority's attestation state.
#[derive(Default)]
pub(crate) struct Attestation {
    pub(crate) source: Option<Arc<dyn EvidenceSource>>,
    pub(crate) gate: ComponentGate,
    challenges: Mutex<HashMap<[u8; 32], (String, u64)>>,
}

/// SHA-256 of an identity certificate's SubjectPublicKeyInfo.
pub use asclepios_service::identity_key_sha256;

fn now() -> u64 {
    asclepios_attest::unix_now()
}

fn bad_request(msg: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, msg)
}

impl KeyAuthority {
    /// Serves challenge evidence from `source` and appraises components
    /// under `gate`.
    pub fn with_attestation(
        mut self,
        source: Option<Arc<dyn EvidenceSource>>,
        gate: ComponentGate,
    ) -> Self {
        self.attestation.source = source;
        self.attestation.gate = gate;
        self
    }

    pub(crate) fn evidence(&self, nonce_hex: &str) -> Result<EvidenceOut, ApiError> {
        let nonce: [u8; 32] = hex::decode(nonce_hex)
            .ok()
            .and_then(|n| n.try_into().ok())
            .ok_or_else(|| bad_request("nonce: 32 bytes in hex"))?;
        let source = self.attestation.source.as_ref().ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "this authority presents no attestation evidence",
            )
        })?;
        let evidence = source
            .evidence_for_nonce(nonce)
            .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e))?;
        Ok(EvidenceOut {
            evidence: B64.encode(evidence),
        })
    }

    pub(crate) fn challenge(&self, caller: &PeerIdentity) -> Result<Challenge, ApiError> {
        self.active(&caller.id)?;
        let mut nonce = [0u8; 32];
        OsRng.fill_bytes(&mut nonce);
        let expires_at = now() + CHALLENGE_SECONDS;
        let mut challenges = self
            .attestation
            .challenges
            .lock()
            .map_err(|_| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "try again"))?;
        let t = now();
        challenges.retain(|_, (_, exp)| *exp > t);
        if challenges.len() >= MAX_CHALLENGES {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many outstanding attestation challenges: try again shortly",
            ));
        }
        challenges.insert(nonce, (caller.id.clone(), expires_at));
        Ok(Challenge {
            nonce: hex::encode(nonce),
            expires_at,
        })
    }

    /// Appraises a component's evidence, keeps and audits the verdict.
    pub(crate) fn register_component(
        &self,
        caller: &PeerIdentity,
        v: &Verified,
        req: Registration,
    ) -> Result<WithReceipt<Registered>, ApiError> {
        let mut summary = String::from("no appraisal");
        let result = (|| {
            self.active(&caller.id)?;
            let evidence = B64
                .decode(req.evidence.as_bytes())
                .map_err(|_| bad_request("evidence: not base64"))?;
            let policy = self.attestation.gate.policy.as_ref().ok_or_else(|| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    "this authority has no component policy configured",
                )
            })?;
            // The nonce must be one we issued to this caller, unexpired;
            // it is used up whatever the verdict.
            let nonce = asclepios_attest::Evidence::from_bytes(&evidence)
                .ok()
                .and_then(|e| match e.freshness {
                    asclepios_attest::Freshness::Nonce(n) => Some(n),
                    _ => None,
                })
                .ok_or_else(|| bad_request("evidence: must decode and answer a challenge nonce"))?;
            let issued = self
                .attestation
                .challenges
                .lock()
                .map_err(|_| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "try again"))?
                .remove(&nonce);
            match issued {
                Some((who, exp)) if who == caller.id && exp > now() => {}
                _ => {
                    summary = "the nonce is unknown, expired or another's (a replay?)".into();
                    return Err(ApiError::new(
                        StatusCode::FORBIDDEN,
                        format!("attestation refused: {summary}"),
                    ));
                }
            }
            let key_sha256 = identity_key_sha256(caller);
            let t = now();
            let appraisal = appraise(
                &evidence,
                &Expected {
                    key_sha256: Some(key_sha256),
                    nonce: Some(nonce),
                },
                policy,
                t,
                None,
            );
            summary = appraisal.summary();
            let expires_at = t + self.attestation.gate.registration_seconds;
            self.store
                .put_component(&Component {
                    identity_id: caller.id.clone(),
                    format: appraisal.format.map(|f| f.name()).unwrap_or("").into(),
                    measurement: appraisal
                        .claims
                        .as_ref()
                        .map(|c| hex::encode(&c.measurement))
                        .unwrap_or_default(),
                    trust: appraisal.trust.to_string(),
                    appraisal: summary.clone(),
                    key_sha256: key_sha256.to_vec(),
                    attested_at: t,
                    expires_at,
                })
                .map_err(store_error)?;
            if !appraisal.is_acceptable() {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    format!("attestation refused: {summary}"),
                ));
            }
            Ok(Registered {
                trust: appraisal.trust,
                summary: summary.clone(),
                expires_at,
            })
        })();
        let resource: String = format!("component/{}: {summary}", caller.id)
            .chars()
            .take(512)
            .collect();
        asclepios_service::audit_outcome(
            &self.trail,
            v,
            &caller.id,
            (Action::Attestation, None),
            resource,
            result,
        )
    }

    /// Refuses key release to a component without a current registration
    /// for the key it connects with (when registration is required).
    pub(crate) fn require_attested(&self, caller: &PeerIdentity) -> Result<(), ApiError> {
        let gate = &self.attestation.gate;
        if !gate.required {
            return Ok(());
        }
        let component = self
            .store
            .component(&caller.id)
            .map_err(asclepios_service::store_error)?;
        asclepios_service::check_attested(
            crate::facts::member(&self.store, &caller.id)?.as_ref(),
            component
                .as_ref()
                .map(crate::facts::component_fact)
                .as_ref(),
            caller,
            &gate.kinds,
        )
    }
}
