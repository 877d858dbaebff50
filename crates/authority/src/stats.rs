//! The rule the authority enforces before it issues a function key for an
//! aggregate: a key sums one cohort (a set of slots, one per patient value)
//! with equal weights, and may not single anyone out, alone or combined with
//! the keys already issued for the same study.
//!
//! **The rule.** A cohort needs at least `min_cohort` slots (default 10). And
//! the cohorts of every key issued for the study, with the new one, split the
//! slots into regions (slots grouped by exactly which cohorts contain them);
//! every non-empty region must hold at least `min_cohort` slots. Any linear
//! combination of issued keys (a difference of two sums, say) is constant on
//! each region, so its support is a union of regions: no combination of keys
//! isolates fewer than `min_cohort` people. Asking again for an issued cohort
//! is always allowed; a cohort that is a strict subset of an issued one with
//! fewer than `min_cohort` slots left over is refused (the differencing
//! attack).

use crate::blocking;
use crate::stats;
use crate::KeyAuthority;
use crate::WithReceipt;
pub use asclepios_api::stats::{
    slots_context, stats_key_context, IssuedSlots, SlotRequest, StatsKey, StatsKeyRequest,
};
use asclepios_audit::Action;
use asclepios_net::sealed_box;
use asclepios_net::server::json_body;
use asclepios_net::server::Caller;
use asclepios_net::signature::Verified;
use axum::extract::State;
use axum::Extension;
use axum::Json;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use asclepios_crypto::ipfe::{Label, Mcfe, SlotKey};
use asclepios_net::server::ApiError;
use asclepios_service::store_error;
use asclepios_store::Store;
use axum::http::StatusCode;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};

/// Why a cohort was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Too few slots.
    #[error("a cohort of {size} is below the minimum of {min}: it could single people out")]
    TooSmall {
        /// Its size.
        size: usize,
        /// The minimum.
        min: usize,
    },
    /// Combined with issued keys it would isolate a small group.
    #[error("with the keys already issued for this study, a group of {size} would be isolated (minimum {min}): ask for an issued cohort, or one disjoint from them")]
    Differencing {
        /// The smallest region.
        size: usize,
        /// The minimum.
        min: usize,
    },
}

/// Checks a new cohort against the cohorts already issued for its study.
pub fn check_cohort(
    issued: &[BTreeSet<u64>],
    cohort: &BTreeSet<u64>,
    min_cohort: usize,
) -> Result<(), Refusal> {
    if cohort.len() < min_cohort {
        return Err(Refusal::TooSmall {
            size: cohort.len(),
            min: min_cohort,
        });
    }
    if issued.iter().any(|c| c == cohort) {
        return Ok(());
    }
    let family: Vec<&BTreeSet<u64>> = issued.iter().chain(std::iter::once(cohort)).collect();
    // Each slot's membership pattern; slots in no cohort are never revealed.
    let mut pattern: HashMap<u64, Vec<u64>> = HashMap::new();
    let words = family.len().div_ceil(64);
    for (i, c) in family.iter().enumerate() {
        for &slot in c.iter() {
            pattern.entry(slot).or_insert_with(|| vec![0; words])[i / 64] |= 1 << (i % 64);
        }
    }
    let mut regions: HashMap<Vec<u64>, usize> = HashMap::new();
    for bits in pattern.into_values() {
        *regions.entry(bits).or_default() += 1;
    }
    match regions.values().copied().min() {
        Some(size) if size < min_cohort => Err(Refusal::Differencing {
            size,
            min: min_cohort,
        }),
        _ => Ok(()),
    }
}

/// Smallest cohort a key is issued for.
pub const MIN_COHORT: usize = 10;
/// Roles that publish encrypted values (data providers).
pub const PROVIDER_ROLES: &[&str] = &["role:lab"];
/// The role that asks for aggregates.
pub const RESEARCHER_ROLE: &str = "role:researcher";
/// Most slots one request allocates.
pub const MAX_SLOTS: u32 = 100_000;

pub use asclepios_service::check_stats_name as check_study_name;

/// The encoding of a cohort's slots (for the store and its id).
pub fn encode_slots(slots: &BTreeSet<u64>) -> Vec<u8> {
    slots.iter().flat_map(|s| s.to_be_bytes()).collect()
}

fn decode_slots(bytes: &[u8]) -> BTreeSet<u64> {
    bytes
        .chunks_exact(8)
        .map(|c| u64::from_be_bytes(c.try_into().expect("8 bytes")))
        .collect()
}

/// Seals and opens slot keys at rest in the store.
pub struct SlotSealer(XChaCha20Poly1305);

impl std::fmt::Debug for SlotSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SlotSealer(<key redacted>)")
    }
}

fn slot_aad(study: &str, slot: u64) -> Vec<u8> {
    let mut aad = format!("asclepios stats slot v1:{study}:").into_bytes();
    aad.extend_from_slice(&slot.to_be_bytes());
    aad
}

impl SlotSealer {
    /// Under the authority's statistics key.
    pub fn new(key: &[u8; 32]) -> Self {
        SlotSealer(XChaCha20Poly1305::new(key.into()))
    }

    fn seal(&self, study: &str, slot: u64, key: &SlotKey) -> Vec<u8> {
        let mut nonce = [0u8; 24];
        OsRng.fill_bytes(&mut nonce);
        let sealed = self
            .0
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: key.to_bytes().as_ref(),
                    aad: &slot_aad(study, slot),
                },
            )
            .expect("XChaCha20-Poly1305 seals 64 bytes");
        [nonce.as_slice(), &sealed].concat()
    }

    fn open(&self, study: &str, slot: u64, sealed: &[u8]) -> Option<SlotKey> {
        if sealed.len() < 24 {
            return None;
        }
        let plain = zeroize::Zeroizing::new(
            self.0
                .decrypt(
                    XNonce::from_slice(&sealed[..24]),
                    Payload {
                        msg: &sealed[24..],
                        aad: &slot_aad(study, slot),
                    },
                )
                .ok()?,
        );
        SlotKey::from_bytes(plain.as_slice().try_into().ok()?)
    }
}

/// Allocates `count` slots of `study` for `provider`: keys made here, kept
/// sealed in the store, returned in the clear for sealing to the provider.
pub fn allocate_slots(
    store: &Store,
    sealer: &SlotSealer,
    study: &str,
    provider: &str,
    count: u32,
) -> Result<(u64, zeroize::Zeroizing<Vec<u8>>), ApiError> {
    if count == 0 || count > MAX_SLOTS {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("ask for 1 to {MAX_SLOTS} slots"),
        ));
    }
    let mut clear = zeroize::Zeroizing::new(Vec::with_capacity(64 * count as usize));
    let first = store
        .fe_add_slots(study, provider, count as usize, &mut |slot| {
            let key = SlotKey::generate(&mut OsRng);
            clear.extend_from_slice(key.to_bytes().as_ref());
            sealer.seal(study, slot, &key)
        })
        .map_err(store_error)?;
    Ok((first, clear))
}

/// The cohort a request names, checked against the rule, recorded, and
/// the key for its equal-weight sum under `label` alone: a key asked for
/// one label (a count) opens no other (the values), so the audit event that
/// names the label says what the key opens.
pub fn cohort_key(
    store: &Store,
    sealer: &SlotSealer,
    study: &str,
    label: &str,
    cohort: &str,
) -> Result<(BTreeSet<u64>, zeroize::Zeroizing<[u8; 64]>), ApiError> {
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, m);
    let slots = store.fe_slots(study).map_err(store_error)?;
    if slots.is_empty() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no study `{study}`"),
        ));
    }
    let chosen: BTreeSet<u64> = if cohort == "all" {
        slots.iter().map(|s| s.slot).collect()
    } else if let Some(p) = cohort.strip_prefix("provider:") {
        slots
            .iter()
            .filter(|s| s.provider == p)
            .map(|s| s.slot)
            .collect()
    } else if let Some(list) = cohort.strip_prefix("slots:") {
        list.split(',')
            .map(|n| n.trim().parse::<u64>())
            .collect::<Result<_, _>>()
            .map_err(|_| bad("slots:<n>,<n>,... takes slot numbers".into()))?
    } else {
        return Err(bad(
            "a cohort is `all`, `provider:<id>` or `slots:<n>,<n>,...`".into(),
        ));
    };
    let known: BTreeSet<u64> = slots.iter().map(|s| s.slot).collect();
    if let Some(s) = chosen.iter().find(|s| !known.contains(s)) {
        return Err(bad(format!("slot {s} is not in study `{study}`")));
    }
    let issued: Vec<BTreeSet<u64>> = store
        .fe_cohorts(study)
        .map_err(store_error)?
        .iter()
        .map(|b| decode_slots(b))
        .collect();
    check_cohort(&issued, &chosen, MIN_COHORT)
        .map_err(|e| ApiError::new(StatusCode::FORBIDDEN, e.to_string()))?;
    let mut keys = Vec::with_capacity(chosen.len());
    for row in slots.iter().filter(|s| chosen.contains(&s.slot)) {
        keys.push(
            sealer
                .open(study, row.slot, &row.sealed_key)
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "a slot key does not open under this authority's statistics key",
                    )
                })?,
        );
    }
    let refs: Vec<&SlotKey> = keys.iter().collect();
    let key = Mcfe::keygen(&refs, &vec![1; refs.len()], &Label::new(label))
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    let encoded = encode_slots(&chosen);
    let id = hex::encode(Sha256::digest(&encoded));
    store
        .fe_add_cohort(study, &id, &encoded)
        .map_err(store_error)?;
    Ok((chosen, key.to_bytes()))
}

impl KeyAuthority {
    /// Slots (and their keys, sealed to the caller) for a data provider.
    pub(crate) fn stats_slots(
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
        asclepios_service::audit_outcome(
            &self.trail,
            v,
            &caller.id,
            (Action::KeyIssue, Some("HRESCH")),
            resource,
            work(),
        )
    }

    /// An aggregate key for a researcher, if the cohort passes the rule.
    pub(crate) fn stats_key(
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
                stats::cohort_key(
                    &self.store,
                    &self.slot_sealer,
                    &req.study,
                    &req.label,
                    &req.cohort,
                )?
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
        asclepios_service::audit_outcome(
            &self.trail,
            v,
            &caller.id,
            (Action::KeyIssue, Some("HRESCH")),
            resource,
            result,
        )
    }
}

pub(crate) async fn stats_slots(
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

pub(crate) async fn stats_key(
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn set(r: std::ops::Range<u64>) -> BTreeSet<u64> {
        r.collect()
    }

    #[test]
    fn small_and_differencing_cohorts_are_refused() {
        let all = set(0..50);
        assert_eq!(
            check_cohort(&[], &set(0..9), 10),
            Err(Refusal::TooSmall { size: 9, min: 10 })
        );
        assert!(check_cohort(&[], &all, 10).is_ok());
        // All but one: the difference is one person.
        assert_eq!(
            check_cohort(std::slice::from_ref(&all), &set(1..50), 10),
            Err(Refusal::Differencing { size: 1, min: 10 })
        );
        // Halves of the whole: every region has 25.
        assert!(check_cohort(std::slice::from_ref(&all), &set(0..25), 10).is_ok());
        // Asking again for an issued cohort is fine.
        assert!(check_cohort(&[all.clone(), set(0..25)], &set(0..25), 10).is_ok());
        // Overlapping by a sliver is not.
        assert!(check_cohort(&[all.clone(), set(0..25)], &set(20..45), 10).is_err());
    }

    proptest! {
        /// Whatever is asked, in whatever order, no combination of the keys
        /// issued isolates fewer than the minimum: sampled integer
        /// combinations of the issued cohorts' indicator vectors have an
        /// empty support or one of at least `min` slots.
        #[test]
        fn no_combination_of_issued_keys_isolates_anyone(
            asks in prop::collection::vec((0u64..40, 1u64..40), 1..24),
            coefficients in prop::collection::vec(prop::collection::vec(-3i64..=3, 24), 16),
        ) {
            let min = 5;
            let mut issued: Vec<BTreeSet<u64>> = Vec::new();
            for (start, len) in asks {
                let cohort: BTreeSet<u64> = (start..(start + len).min(40)).collect();
                if check_cohort(&issued, &cohort, min).is_ok() && !issued.contains(&cohort) {
                    issued.push(cohort);
                }
            }
            for c in &issued {
                prop_assert!(c.len() >= min);
            }
            for coeffs in &coefficients {
                let mut v = [0i64; 40];
                for (c, k) in issued.iter().zip(coeffs) {
                    for &slot in c {
                        v[slot as usize] += k;
                    }
                }
                let support = v.iter().filter(|&&x| x != 0).count();
                prop_assert!(support == 0 || support >= min, "support {support}: {v:?}");
            }
            // Pairwise differences in particular.
            for a in &issued {
                for b in &issued {
                    let d = a.symmetric_difference(b).count();
                    prop_assert!(d == 0 || d >= min);
                }
            }
        }
    }
}
