//! The rules the authority enforces before it issues statistics slots and
//! function keys for aggregates.
//!
//! **Slots are people.** A study has at most one slot per patient of the
//! directory. A data provider names the patients it publishes values of and
//! is told their slots ([`KeyAuthority::stats_slots`]); a name the directory
//! does not know as a patient is refused, so a provider cannot plant slots of
//! its own (review finding H10c), and a patient another provider fills is a
//! conflict. Slot numbers are shuffled within a request, so the record
//! service cannot read an order into them.
//!
//! **The cohort rule counts people, across every study** (H10b). A key sums
//! one cohort of a study with equal weights. Every release ever made (a key
//! for one label over one set of people, in any study) is kept; the sets of
//! people of all releases, with the new one, split the population into
//! regions (people grouped by exactly which releases contain them). Any
//! linear combination of keys (a difference of two sums, from one study or
//! two over the same data) is constant on each region, so the rule asks that
//! every non-empty region hold at least [`MIN_COHORT`] people. A provider
//! knows the values it published, and a provider colluding with a
//! researcher can subtract them: so the regions must also hold at least
//! [`MIN_COHORT`] people (or none) once the people each provider fills, in
//! any study, are taken out. Asking again for a released set of people is
//! always allowed; a cohort entirely inside one provider's people is too
//! (that provider knows those values already).
//!
//! **Releases are noisy and budgeted** (H10a). Every published value carries
//! a noise share (`asclepios_api::stats::noise_share`), so each released sum
//! is [`RELEASE_EPSILON`]-differentially private for any group the rule lets
//! out. Every key issued spends that ε of every person it covers, per study
//! and over all studies (the population); a key that would overspend either
//! budget for anyone in its cohort is refused. Issuing the same key again
//! is charged too: the values under a label live in the record service's
//! store, whose operator could delete them so that a provider publishes
//! again with fresh noise, and a free second key would then average the
//! noise away. Each person a key covers finds it, with its ε, in their
//! access list.
//!
//! **Keys are bound to labels** (H10d): a key for one label opens no other.

use crate::blocking;
use crate::stats;
use crate::KeyAuthority;
use crate::WithReceipt;
pub use asclepios_api::stats::{
    slots_context, stats_key_context, Budget, IssuedSlots, PartLabel, SlotRequest, StatsKey,
    StatsKeyRequest, MIN_COHORT, POPULATION_BUDGET, RELEASE_EPSILON, STUDY_BUDGET,
};
use asclepios_audit::{Action, AuditEvent};
use asclepios_net::sealed_box;
use asclepios_net::server::json_body;
use asclepios_net::server::Caller;
use asclepios_net::signature::Verified;
use axum::extract::State;
use axum::Extension;
use axum::Json;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use asclepios_crypto::ipfe::{Label, Mcfe, SlotKey};
use asclepios_net::server::ApiError;
use asclepios_service::store_error;
use asclepios_store::{ReleaseRow, Store};
use axum::http::StatusCode;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::seq::SliceRandom;
use rand_core::{OsRng, RngCore};

/// Why a cohort was refused.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum Refusal {
    /// Too few people.
    #[error("a cohort of {size} is below the minimum of {min}: it could single people out")]
    TooSmall {
        /// Its size.
        size: usize,
        /// The minimum.
        min: usize,
    },
    /// Combined with released keys it would isolate a small group.
    #[error("with the keys already released (in any study), a group of {size} would be isolated (minimum {min}): ask for a released cohort, or one disjoint from them")]
    Differencing {
        /// The smallest region.
        size: usize,
        /// The minimum.
        min: usize,
    },
    /// A provider that knows its own values could isolate a small group.
    #[error("{provider}, which knows the values it published, could subtract them and isolate a group of {size} (minimum {min}): ask for a cohort with more people outside each provider")]
    Provider {
        /// The provider.
        provider: String,
        /// The smallest region left.
        size: usize,
        /// The minimum.
        min: usize,
    },
    /// The privacy budget of someone in the cohort is spent.
    #[error("the privacy budget is spent: this release (ε {epsilon}) would take {scope} past ε {budget} for {people} person(s) in the cohort")]
    Budget {
        /// `study \`x\`` or `all studies`.
        scope: String,
        /// The release's ε.
        epsilon: f64,
        /// The budget.
        budget: f64,
        /// How many people it would overspend.
        people: usize,
    },
}

/// The smallest non-empty region of `family` (`None`: every set is empty).
fn smallest_region<T: Eq + std::hash::Hash>(family: &[Vec<&T>]) -> Option<usize> {
    let words = family.len().div_ceil(64);
    let mut pattern: HashMap<&T, Vec<u64>> = HashMap::new();
    for (i, c) in family.iter().enumerate() {
        for person in c {
            pattern.entry(*person).or_insert_with(|| vec![0; words])[i / 64] |= 1 << (i % 64);
        }
    }
    let mut regions: HashMap<Vec<u64>, usize> = HashMap::new();
    for bits in pattern.into_values() {
        *regions.entry(bits).or_default() += 1;
    }
    regions.values().copied().min()
}

/// What one provider knows: the people whose slot it fills, by study. It
/// knows their values in that study, and nothing of them in another.
pub type Knowledge<T> = BTreeMap<String, BTreeSet<T>>;

/// Checks a new cohort (a set of people of `study`) against every cohort
/// released before, in any study, and against what each provider knows:
/// for each provider, each release's people less those the provider fills
/// in that release's study (whose values it can subtract).
pub fn check_cohort<T: Ord + std::hash::Hash>(
    released: &[(String, BTreeSet<T>)],
    (study, cohort): (&str, &BTreeSet<T>),
    providers: &BTreeMap<String, Knowledge<T>>,
    min_cohort: usize,
) -> Result<(), Refusal> {
    if cohort.len() < min_cohort {
        return Err(Refusal::TooSmall {
            size: cohort.len(),
            min: min_cohort,
        });
    }
    if released.iter().any(|(s, c)| s == study && c == cohort) {
        return Ok(());
    }
    let all: Vec<(&str, &BTreeSet<T>)> = released
        .iter()
        .map(|(s, c)| (s.as_str(), c))
        .chain(std::iter::once((study, cohort)))
        .collect();
    let family: Vec<Vec<&T>> = all.iter().map(|(_, c)| c.iter().collect()).collect();
    if let Some(size) = smallest_region(&family).filter(|&s| s < min_cohort) {
        return Err(Refusal::Differencing {
            size,
            min: min_cohort,
        });
    }
    // The provider that could isolate the fewest people.
    let empty = BTreeSet::new();
    let worst = providers
        .iter()
        .filter_map(|(p, knows)| {
            let family: Vec<Vec<&T>> = all
                .iter()
                .map(|(s, c)| {
                    let known = knows.get(*s).unwrap_or(&empty);
                    c.iter().filter(|x| !known.contains(*x)).collect()
                })
                .collect();
            Some((smallest_region(&family)?, p))
        })
        .filter(|&(size, _)| size < min_cohort)
        .min();
    match worst {
        Some((size, provider)) => Err(Refusal::Provider {
            provider: provider.clone(),
            size,
            min: min_cohort,
        }),
        None => Ok(()),
    }
}

/// The ε each release spent, per person: `(in study, in all studies)`.
fn spent<'a>(releases: &'a [ReleaseRow], study: &str) -> HashMap<&'a str, (u64, u64)> {
    let mut spent: HashMap<&str, (u64, u64)> = HashMap::new();
    for r in releases {
        for p in &r.patients {
            let e = spent.entry(p.as_str()).or_default();
            e.1 += r.epsilon_micro;
            if r.study == study {
                e.0 += r.epsilon_micro;
            }
        }
    }
    spent
}

fn micro(epsilon: f64) -> u64 {
    (epsilon * 1e6).round() as u64
}

fn unmicro(m: u64) -> f64 {
    m as f64 / 1e6
}

/// The budgets a release is checked against.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Budgets {
    /// ε per person per study.
    pub study: f64,
    /// ε per person over all studies.
    pub population: f64,
}

impl Default for Budgets {
    fn default() -> Self {
        Budgets {
            study: STUDY_BUDGET,
            population: POPULATION_BUDGET,
        }
    }
}

/// Checks that a release of `epsilon` over `cohort` in `study` overspends
/// nobody's budget; where the budget would stand after it.
pub fn check_budget(
    releases: &[ReleaseRow],
    study: &str,
    cohort: &BTreeSet<String>,
    epsilon: f64,
    budgets: Budgets,
) -> Result<Budget, Refusal> {
    let spent = spent(releases, study);
    let add = micro(epsilon);
    let (mut most_study, mut most_all) = (0u64, 0u64);
    let (mut over_study, mut over_all) = (0usize, 0usize);
    for p in cohort {
        let (s, a) = spent.get(p.as_str()).copied().unwrap_or_default();
        most_study = most_study.max(s + add);
        most_all = most_all.max(a + add);
        over_study += usize::from(s + add > micro(budgets.study));
        over_all += usize::from(a + add > micro(budgets.population));
    }
    if over_study > 0 {
        return Err(Refusal::Budget {
            scope: format!("study `{study}`"),
            epsilon,
            budget: budgets.study,
            people: over_study,
        });
    }
    if over_all > 0 {
        return Err(Refusal::Budget {
            scope: "all studies".into(),
            epsilon,
            budget: budgets.population,
            people: over_all,
        });
    }
    Ok(Budget {
        epsilon,
        study_spent: unmicro(most_study),
        study_budget: budgets.study,
        population_spent: unmicro(most_all),
        population_budget: budgets.population,
    })
}

/// Roles that publish encrypted values (data providers).
pub const PROVIDER_ROLES: &[&str] = &["role:lab"];
/// The role that asks for aggregates.
pub const RESEARCHER_ROLE: &str = "role:researcher";
/// Most patients one slot request names.
pub const MAX_SLOTS: usize = 100_000;

pub use asclepios_service::check_stats_name as check_study_name;

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

/// Slot keys in the clear, 64 bytes each, wiped on drop.
pub type ClearKeys = zeroize::Zeroizing<Vec<u8>>;

/// The slots of `patients` in `study` for `provider` (existing ones it
/// fills, new ones for patients nobody fills), in the order asked, with
/// their keys in the clear for sealing to the provider. New slots are
/// numbered in a shuffled order. Keys are made here and kept sealed in the
/// store.
pub fn assign_slots(
    store: &Store,
    sealer: &SlotSealer,
    study: &str,
    provider: &str,
    patients: &[String],
) -> Result<(Vec<(String, u64)>, ClearKeys), ApiError> {
    let mut shuffled = patients.to_vec();
    shuffled.shuffle(&mut OsRng);
    let mut fresh: HashMap<u64, SlotKey> = HashMap::new();
    let assigned = store
        .fe_assign_slots(study, provider, &shuffled, &mut |slot, _| {
            let key = SlotKey::generate(&mut OsRng);
            let sealed = sealer.seal(study, slot, &key);
            fresh.insert(slot, key);
            sealed
        })
        .map_err(store_error)?;
    let by_patient: HashMap<&str, &asclepios_store::PersonSlot> =
        assigned.iter().map(|s| (s.patient.as_str(), s)).collect();
    let mut clear = zeroize::Zeroizing::new(Vec::with_capacity(64 * patients.len()));
    let mut slots = Vec::with_capacity(patients.len());
    for p in patients {
        let s = by_patient[p.as_str()];
        let key = match fresh.get(&s.slot) {
            Some(k) => k.clone(),
            None => sealer
                .open(study, s.slot, &s.sealed_key)
                .ok_or_else(unopenable)?,
        };
        clear.extend_from_slice(key.to_bytes().as_ref());
        slots.push((p.clone(), s.slot));
    }
    Ok((slots, clear))
}

fn unopenable() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "a slot key does not open under this authority's statistics key",
    )
}

/// A key issued for a cohort, and what it released.
pub struct Issued {
    /// The cohort's slots, in order.
    pub slots: Vec<u64>,
    /// The people it covers.
    pub people: BTreeSet<String>,
    /// The key.
    pub key: zeroize::Zeroizing<[u8; 64]>,
    /// Where the budget stands after it.
    pub budget: Budget,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("slots", &self.slots.len())
            .field("budget", &self.budget)
            .finish_non_exhaustive()
    }
}

/// The cohort a request names, checked against the rule and the budget over
/// every release of every study, recorded, and the key for its equal-weight
/// sum under `label` alone: a key asked for one label (a count) opens no
/// other (the values), so the audit event that names the label says what
/// the key opens.
pub fn cohort_key(
    store: &Store,
    sealer: &SlotSealer,
    (study, label, cohort): (&str, &str, &str),
    budgets: Budgets,
) -> Result<Issued, ApiError> {
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, m);
    PartLabel::parse(label).map_err(bad)?;
    // Every study's slots, read once: this study's for the cohort, all of
    // them for what each provider knows.
    let all_people = store.fe_all_people().map_err(store_error)?;
    let people: Vec<&asclepios_store::PersonSlot> = all_people
        .iter()
        .filter(|(s, _)| s == study)
        .map(|(_, slot)| slot)
        .collect();
    if people.is_empty() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no study `{study}` (or none of its slots was assigned)"),
        ));
    }
    let chosen: Vec<&asclepios_store::PersonSlot> = if cohort == "all" {
        people
    } else if let Some(p) = cohort.strip_prefix("provider:") {
        people.into_iter().filter(|s| s.provider == p).collect()
    } else if let Some(list) = cohort.strip_prefix("slots:") {
        let wanted: BTreeSet<u64> = list
            .split(',')
            .map(|n| n.trim().parse::<u64>())
            .collect::<Result<_, _>>()
            .map_err(|_| bad("slots:<n>,<n>,... takes slot numbers".into()))?;
        let known: BTreeSet<u64> = people.iter().map(|s| s.slot).collect();
        if let Some(s) = wanted.iter().find(|s| !known.contains(s)) {
            return Err(bad(format!("slot {s} is not in study `{study}`")));
        }
        people
            .into_iter()
            .filter(|s| wanted.contains(&s.slot))
            .collect()
    } else {
        return Err(bad(
            "a cohort is `all`, `provider:<id>` or `slots:<n>,<n>,...`".into(),
        ));
    };
    let cohort_people: BTreeSet<String> = chosen.iter().map(|s| s.patient.clone()).collect();
    // What each provider knows: the people it fills, study by study.
    let mut providers: BTreeMap<String, Knowledge<String>> = BTreeMap::new();
    for (in_study, s) in &all_people {
        providers
            .entry(s.provider.clone())
            .or_default()
            .entry(in_study.clone())
            .or_default()
            .insert(s.patient.clone());
    }
    let mut id = [0u8; 16];
    OsRng.fill_bytes(&mut id);
    let release = ReleaseRow {
        release_id: hex::encode(id),
        study: study.to_string(),
        label: label.to_string(),
        patients: cohort_people.iter().cloned().collect(),
        epsilon_micro: micro(RELEASE_EPSILON),
    };
    let mut budget = None;
    let recorded = store
        .fe_add_release(&release, &mut |before| {
            let released: BTreeSet<(String, BTreeSet<String>)> = before
                .iter()
                .map(|r| (r.study.clone(), r.patients.iter().cloned().collect()))
                .collect();
            let released: Vec<_> = released.into_iter().collect();
            check_cohort(&released, (study, &cohort_people), &providers, MIN_COHORT)?;
            budget = Some(check_budget(
                before,
                study,
                &cohort_people,
                RELEASE_EPSILON,
                budgets,
            )?);
            Ok::<_, Refusal>(())
        })
        .map_err(store_error)?
        .map_err(|e| ApiError::new(StatusCode::FORBIDDEN, e.to_string()))?;
    let Some(budget) = budget.filter(|_| recorded) else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the release was not recorded; retry",
        ));
    };
    let mut keys = Vec::with_capacity(chosen.len());
    for s in &chosen {
        keys.push(
            sealer
                .open(study, s.slot, &s.sealed_key)
                .ok_or_else(unopenable)?,
        );
    }
    let refs: Vec<&SlotKey> = keys.iter().collect();
    let key = Mcfe::keygen(&refs, &vec![1; refs.len()], &Label::new(label))
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    Ok(Issued {
        slots: chosen.iter().map(|s| s.slot).collect(),
        people: cohort_people,
        key: key.to_bytes(),
        budget,
    })
}

impl KeyAuthority {
    /// Slots (and their keys, sealed to the caller) of the patients a data
    /// provider names.
    pub(crate) fn stats_slots(
        &self,
        caller: &asclepios_net::pki::PeerIdentity,
        v: &Verified,
        req: stats::SlotRequest,
    ) -> Result<WithReceipt<stats::IssuedSlots>, ApiError> {
        let resource = format!(
            "stats slots: {} x{}",
            req.study.chars().take(128).collect::<String>(),
            req.patients.len()
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
            let distinct: BTreeSet<&String> = req.patients.iter().collect();
            if req.patients.is_empty()
                || req.patients.len() > MAX_SLOTS
                || distinct.len() != req.patients.len()
            {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("name 1 to {MAX_SLOTS} distinct patients"),
                ));
            }
            let directory = self.all_patients()?;
            let unknown: Vec<&str> = req
                .patients
                .iter()
                .filter(|p| !directory.contains(*p))
                .map(String::as_str)
                .collect();
            if !unknown.is_empty() {
                let shown: Vec<&str> = unknown.iter().take(5).copied().collect();
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!(
                        "{} of the names are not patients of the directory ({}{}): a slot is a person; register them or leave them out",
                        unknown.len(),
                        shown.join(", "),
                        if unknown.len() > 5 { ", ..." } else { "" }
                    ),
                ));
            }
            if self
                .store
                .fe_legacy_study(&req.study)
                .map_err(store_error)?
            {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    format!(
                        "study `{}` has numbered slots from before slots named people; publish under a new study name",
                        req.study
                    ),
                ));
            }
            let (slots, keys) = stats::assign_slots(
                &self.store,
                &self.slot_sealer,
                &req.study,
                &caller.id,
                &req.patients,
            )?;
            let sealed = sealed_box::seal(
                &caller.public_key,
                &stats::slots_context(&caller.id, &req.study),
                &keys,
            )
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
            Ok(stats::IssuedSlots {
                slots,
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

    /// An aggregate key for a researcher, if the cohort passes the rule and
    /// the budget; each person a new release covers finds it in their
    /// access list.
    pub(crate) fn stats_key(
        &self,
        caller: &asclepios_net::pki::PeerIdentity,
        v: &Verified,
        req: stats::StatsKeyRequest,
    ) -> Result<WithReceipt<stats::StatsKey>, ApiError> {
        let shown = |s: &str| s.chars().take(128).collect::<String>();
        let resource = format!(
            "stats key: study {}, label {}, cohort {}",
            shown(&req.study),
            shown(&req.label),
            shown(&req.cohort)
        );
        let work = || -> Result<(stats::StatsKey, BTreeSet<String>), ApiError> {
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
            let issued = {
                let _one_at_a_time = self.cohort_lock.lock().unwrap_or_else(|p| p.into_inner());
                stats::cohort_key(
                    &self.store,
                    &self.slot_sealer,
                    (&req.study, &req.label, &req.cohort),
                    self.stats_budgets,
                )?
            };
            let sealed = sealed_box::seal(
                &caller.public_key,
                &stats::stats_key_context(&caller.id, &req.study, &req.label),
                issued.key.as_ref(),
            )
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
            let covered = issued.people;
            Ok((
                stats::StatsKey {
                    slots: issued.slots,
                    key: sealed,
                    budget: issued.budget,
                },
                covered,
            ))
        };
        let logged =
            asclepios_service::log_outcome_to_all(&self.trail, v, work(), |outcome, ok| {
                let event = |patient: Option<&str>, detail: String| {
                    let mut event = AuditEvent::new(
                        &caller.id,
                        Action::KeyIssue,
                        format!("{resource}{detail}"),
                        patient,
                        outcome,
                        Some(v.signature.clone()),
                    );
                    event.purpose = "HRESCH".into();
                    event
                };
                let Some((key, covered)) = ok else {
                    return vec![event(None, String::new())];
                };
                let b = &key.budget;
                let mut events = vec![event(
                    None,
                    format!(
                        " ({} people, ε {}; most spent: {} of {} in the study, {} of {} in all)",
                        key.slots.len(),
                        b.epsilon,
                        b.study_spent,
                        b.study_budget,
                        b.population_spent,
                        b.population_budget
                    ),
                )];
                // Each person a new release covers sees it and its ε.
                events.extend(covered.iter().map(|p| {
                    event(
                        Some(p),
                        format!(
                            " (a noisy aggregate over {} people, ε {} spent on you)",
                            key.slots.len(),
                            b.epsilon
                        ),
                    )
                }));
                events
            })?;
        Ok(WithReceipt {
            result: logged.result.0,
            receipt: logged.receipt,
        })
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

    fn nobody() -> BTreeMap<String, Knowledge<u64>> {
        BTreeMap::new()
    }

    fn in_s(sets: &[BTreeSet<u64>]) -> Vec<(String, BTreeSet<u64>)> {
        sets.iter().map(|c| ("s".to_string(), c.clone())).collect()
    }

    #[test]
    fn small_and_differencing_cohorts_are_refused() {
        let all = set(0..50);
        let check = |released: &[BTreeSet<u64>], cohort: &BTreeSet<u64>| {
            check_cohort(&in_s(released), ("s", cohort), &nobody(), 10)
        };
        assert_eq!(
            check(&[], &set(0..9)),
            Err(Refusal::TooSmall { size: 9, min: 10 })
        );
        assert!(check(&[], &all).is_ok());
        // All but one: the difference is one person.
        assert_eq!(
            check(std::slice::from_ref(&all), &set(1..50)),
            Err(Refusal::Differencing { size: 1, min: 10 })
        );
        // The same in another study over the same people (H10b).
        assert_eq!(
            check_cohort(
                &[("bp2".to_string(), all.clone())],
                ("bp3", &set(1..50)),
                &nobody(),
                10
            ),
            Err(Refusal::Differencing { size: 1, min: 10 })
        );
        // Halves of the whole: every region has 25.
        assert!(check(std::slice::from_ref(&all), &set(0..25)).is_ok());
        // Asking again for a released cohort is fine.
        assert!(check(&[all.clone(), set(0..25)], &set(0..25)).is_ok());
        // Overlapping by a sliver is not.
        assert!(check(&[all.clone(), set(0..25)], &set(20..45)).is_err());
    }

    fn knows(study: &str, people: BTreeSet<u64>) -> Knowledge<u64> {
        BTreeMap::from([(study.to_string(), people)])
    }

    /// Review finding H10c: a colluding provider fills nine people with
    /// values it knows; a cohort of those nine and one other is refused.
    #[test]
    fn a_provider_cannot_subtract_what_it_knows() {
        let providers = BTreeMap::from([
            ("lab-central".to_string(), knows("s", set(0..12))),
            ("lab-north".to_string(), knows("s", set(12..21))),
        ]);
        let cohort: BTreeSet<u64> = [3].into_iter().chain(12..21).collect();
        assert_eq!(
            check_cohort(&[], ("s", &cohort), &providers, 10),
            Err(Refusal::Provider {
                provider: "lab-north".into(),
                size: 1,
                min: 10
            })
        );
        // All 21: lab-central could subtract its 12 and learn the sum of
        // lab-north's 9.
        assert!(check_cohort(&[], ("s", &set(0..21)), &providers, 10).is_err());
        // Each provider's own people are fine: it knows them already.
        assert!(check_cohort(&[], ("s", &set(0..12)), &providers, 10).is_ok());
    }

    /// A provider that fills the victim in another study knows nothing of
    /// the victim's value in this one: that must not let it through (an
    /// outside review's bypass).
    #[test]
    fn filling_someone_elsewhere_does_not_hide_them() {
        let mut north = knows("e", set(12..22));
        north.insert("x3".into(), [3].into());
        let providers = BTreeMap::from([
            ("lab-central".to_string(), knows("e", [3].into())),
            ("lab-north".to_string(), north),
        ]);
        let cohort: BTreeSet<u64> = [3].into_iter().chain(12..22).collect();
        assert_eq!(
            check_cohort(&[], ("e", &cohort), &providers, 10),
            Err(Refusal::Provider {
                provider: "lab-north".into(),
                size: 1,
                min: 10
            })
        );
    }

    fn release(study: &str, people: &[&str], epsilon: f64) -> ReleaseRow {
        ReleaseRow {
            release_id: format!("{study}{people:?}{epsilon}"),
            study: study.into(),
            label: "p/f/present".into(),
            patients: people.iter().map(|p| p.to_string()).collect(),
            epsilon_micro: micro(epsilon),
        }
    }

    #[test]
    fn budgets_are_per_person_per_study_and_overall() {
        let people: BTreeSet<String> = ["a", "b"].iter().map(|p| p.to_string()).collect();
        let budgets = Budgets {
            study: 2.0,
            population: 3.0,
        };
        let r = vec![release("s1", &["a"], 1.0), release("s1", &["a", "b"], 1.0)];
        // a has spent 2 in s1: a third release there is refused.
        assert!(matches!(
            check_budget(&r, "s1", &people, 1.0, budgets),
            Err(Refusal::Budget { people: 1, .. })
        ));
        // In s2, a has 1 left overall.
        let b = check_budget(&r, "s2", &people, 1.0, budgets).unwrap();
        assert_eq!((b.study_spent, b.population_spent), (1.0, 3.0));
        let mut r2 = r.clone();
        r2.push(release("s2", &["a"], 1.0));
        assert!(matches!(
            check_budget(&r2, "s3", &people, 1.0, budgets),
            Err(Refusal::Budget { ref scope, .. }) if scope == "all studies"
        ));
    }

    proptest! {
        /// Whatever is asked, in whatever order, in whichever of three
        /// studies, no combination of the keys released isolates fewer than
        /// the minimum, even for a provider that subtracts the values it
        /// published: sampled integer combinations of the released cohorts'
        /// indicator vectors, each release less the people the provider
        /// fills in its study, have an empty support or one of at least
        /// `min` people.
        #[test]
        fn no_combination_of_released_keys_isolates_anyone(
            asks in prop::collection::vec((0usize..3, 0u64..40, 1u64..40), 1..24),
            splits in prop::collection::vec(5u64..35, 3),
            coefficients in prop::collection::vec(prop::collection::vec(-3i64..=3, 24), 16),
        ) {
            let min = 5;
            let studies = ["s0", "s1", "s2"];
            // Over one population of 40, providers a and b split each
            // study differently; c fills 10..20 in s1 only.
            let mut providers: BTreeMap<String, Knowledge<u64>> = BTreeMap::new();
            for (study, split) in studies.iter().zip(&splits) {
                let a = providers.entry("a".into()).or_default();
                a.insert(study.to_string(), set(0..*split));
                let b = providers.entry("b".into()).or_default();
                b.insert(study.to_string(), set(*split..40));
            }
            providers.insert("c".into(), knows("s1", set(10..20)));
            let mut released: Vec<(String, BTreeSet<u64>)> = Vec::new();
            for (study, start, len) in asks {
                let cohort: BTreeSet<u64> = (start..(start + len).min(40)).collect();
                let study = studies[study];
                if check_cohort(&released, (study, &cohort), &providers, min).is_ok()
                    && !released.iter().any(|(s, c)| s == study && *c == cohort)
                {
                    released.push((study.to_string(), cohort));
                }
            }
            for (_, c) in &released {
                prop_assert!(c.len() >= min);
            }
            let none = BTreeMap::new();
            let knowledge: Vec<&Knowledge<u64>> =
                std::iter::once(&none).chain(providers.values()).collect();
            let empty = BTreeSet::new();
            for coeffs in &coefficients {
                for k in &knowledge {
                    let mut v = [0i64; 40];
                    for ((study, c), coeff) in released.iter().zip(coeffs) {
                        let known = k.get(study).unwrap_or(&empty);
                        for &person in c.iter().filter(|p| !known.contains(p)) {
                            v[person as usize] += coeff;
                        }
                    }
                    let support = v.iter().filter(|x| **x != 0).count();
                    prop_assert!(support == 0 || support >= min, "support {support}: {v:?}");
                }
            }
        }
    }
}
