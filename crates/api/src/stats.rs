//! Statistics slots, aggregate keys and the privacy policy of a release, as
//! the authority issues them and providers and researchers read them.
//!
//! **Slots are people.** A study has at most one slot per patient of the
//! directory; a provider names the patients it holds values for and is told
//! their slots, and can create none for anyone else.
//!
//! **Labels say what a value is.** A value is published as parts under
//! `period/feature/part`: `present` (1 or 0), `value:lo..hi` and
//! `square:lo..hi` (the value clipped to `[lo, hi]` and shifted by `−lo`,
//! scaled by 10^[`DECIMALS`], and its square), and `bucket:...` indicators. The range in the label fixes
//! the part's sensitivity, so every reader can tell the noise it carries.
//!
//! **Every published value carries a noise share** ([`noise_share`]) such that
//! the shares of any [`honest_shares`] slots sum to discrete Laplace noise
//! making the part's sum [`RELEASE_EPSILON`]-differentially private.

use asclepios_crypto::dp::{NoiseError, NoiseShare};
use asclepios_net::sealed_box::SealedBox;
use serde::{Deserialize, Serialize};

/// Decimal places values keep (one: 128.4 mmHg is published as 1284).
pub const DECIMALS: u32 = 1;
/// Largest magnitude of a published value before scaling (|value| < 6553.6).
pub const MAX_VALUE: f64 = 6553.5;
/// Fewest people a key, or any combination of keys, may single out.
pub const MIN_COHORT: usize = 10;
/// The ε one released aggregate (one label over one cohort) spends.
pub const RELEASE_EPSILON: f64 = 1.0;
/// The fraction of a smallest group's noise shares that may be missing (its
/// providers omitted them) while the sum still carries the full noise. The
/// shares of any one provider are already left out by the cohort rule, which
/// counts people outside each provider.
pub const TOLERATED_OMISSION: f64 = 1.0 / 3.0;
/// Default ε one study may spend on any one person.
pub const STUDY_BUDGET: f64 = 20.0;
/// Default ε all studies together may spend on any one person (the
/// population's budget).
pub const POPULATION_BUDGET: f64 = 60.0;

/// The honest shares any released group is guaranteed:
/// `MIN_COHORT · (1 − TOLERATED_OMISSION)`.
pub fn honest_shares() -> f64 {
    MIN_COHORT as f64 * (1.0 - TOLERATED_OMISSION)
}

/// What a published part is.
#[derive(Clone, Debug, PartialEq)]
pub enum Part {
    /// 1 if the person has a value, else 0.
    Present,
    /// The value clipped to `[lo, hi]`, minus `lo`.
    Value {
        /// Lower clip.
        lo: f64,
        /// Upper clip.
        hi: f64,
    },
    /// The square of the clipped value minus `lo`.
    Square {
        /// Lower clip.
        lo: f64,
        /// Upper clip.
        hi: f64,
    },
    /// 1 if the value falls in the bucket, else 0.
    Bucket(String),
}

/// A label, parsed.
#[derive(Clone, Debug, PartialEq)]
pub struct PartLabel {
    /// The period (a date prefix).
    pub period: String,
    /// The feature's name.
    pub feature: String,
    /// The part.
    pub part: Part,
}

/// A clip range: finite, `lo < hi`, both within ±[`MAX_VALUE`].
pub fn check_range(lo: f64, hi: f64) -> Result<(f64, f64), String> {
    if lo.is_finite() && hi.is_finite() && lo < hi && lo.abs() <= MAX_VALUE && hi.abs() <= MAX_VALUE
    {
        Ok((lo, hi))
    } else {
        Err(format!(
            "the range {lo}..{hi} must have lo < hi, both within ±{MAX_VALUE}"
        ))
    }
}

/// `lo..hi`, checked by [`check_range`].
pub fn parse_range(r: &str) -> Result<(f64, f64), String> {
    let bad = || format!("`{r}` is not lo..hi (e.g. 0..300)");
    let (lo, hi) = r.split_once("..").ok_or_else(bad)?;
    let lo = lo.trim().parse::<f64>().map_err(|_| bad())?;
    let hi = hi.trim().parse::<f64>().map_err(|_| bad())?;
    check_range(lo, hi)
}

impl Part {
    /// The part's name in a label.
    pub fn name(&self) -> String {
        match self {
            Part::Present => "present".into(),
            Part::Value { lo, hi } => format!("value:{lo}..{hi}"),
            Part::Square { lo, hi } => format!("square:{lo}..{hi}"),
            Part::Bucket(b) => format!("bucket:{b}"),
        }
    }

    /// How much one person can change the part's sum, in published
    /// (scaled) units: a published part lies in `[0, sensitivity]`.
    pub fn sensitivity(&self) -> u64 {
        let scale = 10f64.powi(DECIMALS as i32);
        match self {
            Part::Present | Part::Bucket(_) => 1,
            Part::Value { lo, hi } => ((hi - lo) * scale).ceil().max(1.0) as u64,
            Part::Square { lo, hi } => ((hi - lo) * scale).ceil().max(1.0).powi(2) as u64,
        }
    }
}

impl PartLabel {
    /// `period/feature/part`.
    pub fn parse(label: &str) -> Result<Self, String> {
        let mut it = label.splitn(3, '/');
        let (Some(period), Some(feature), Some(part)) = (it.next(), it.next(), it.next()) else {
            return Err(format!("`{label}` is not period/feature/part"));
        };
        if period.is_empty() || feature.is_empty() {
            return Err(format!("`{label}` has an empty period or feature"));
        }
        let part = if part == "present" {
            Part::Present
        } else if let Some(r) = part.strip_prefix("value:") {
            let (lo, hi) = parse_range(r).map_err(|e| bad_range(label, &e))?;
            Part::Value { lo, hi }
        } else if let Some(r) = part.strip_prefix("square:") {
            let (lo, hi) = parse_range(r).map_err(|e| bad_range(label, &e))?;
            Part::Square { lo, hi }
        } else if let Some(b) = part.strip_prefix("bucket:").filter(|b| !b.is_empty()) {
            Part::Bucket(b.to_string())
        } else {
            return Err(format!(
                "`{label}`: a part is present, value:<lo>..<hi>, square:<lo>..<hi> or bucket:<name>"
            ));
        };
        Ok(PartLabel {
            period: period.into(),
            feature: feature.into(),
            part,
        })
    }

    /// The label's text.
    pub fn label(&self) -> String {
        format!("{}/{}/{}", self.period, self.feature, self.part.name())
    }
}

fn bad_range(label: &str, why: &str) -> String {
    format!("`{label}`: {why}")
}

/// The noise share every published value of `part` carries.
pub fn noise_share(part: &Part) -> Result<NoiseShare, NoiseError> {
    NoiseShare::new(RELEASE_EPSILON, part.sensitivity(), honest_shares())
}

/// Allocated slots and their keys.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuedSlots {
    /// Each patient asked for and its slot, in the order asked.
    pub slots: Vec<(String, u64)>,
    /// The slot keys, 64 bytes each in the same order, sealed to the caller.
    pub keys: SealedBox,
}

/// A data provider's request for the slots of patients in a study.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotRequest {
    /// The study.
    pub study: String,
    /// The patients (directory pseudonyms) the provider publishes values of.
    pub patients: Vec<String>,
}

/// A key for the equal-weight sum over a cohort, and what it cost.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatsKey {
    /// The cohort's slots, in order.
    pub slots: Vec<u64>,
    /// The decryption key (64 bytes), sealed to the caller.
    pub key: SealedBox,
    /// The privacy budget after this release.
    pub budget: Budget,
}

/// Where a release leaves the privacy budget.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// The ε this release spent of each person it covers (every key
    /// spends, a repeated one too).
    pub epsilon: f64,
    /// The most ε the study has spent on anyone in the cohort.
    pub study_spent: f64,
    /// The study's budget per person.
    pub study_budget: f64,
    /// The most ε all studies have spent on anyone in the cohort.
    pub population_spent: f64,
    /// The population's budget per person.
    pub population_budget: f64,
}

/// A researcher's request for an aggregate key.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatsKeyRequest {
    /// The study.
    pub study: String,
    /// The label the values were published under (`period/feature/part`).
    pub label: String,
    /// `all`, `provider:<id>`, or `slots:<n>,<n>,...`.
    pub cohort: String,
}

/// The context slot keys are sealed to a provider under.
pub fn slots_context(identity: &str, study: &str) -> Vec<u8> {
    format!("asclepios stats slots v2:{identity}:{study}").into_bytes()
}

/// The context an aggregate key is sealed to a researcher under.
pub fn stats_key_context(identity: &str, study: &str, label: &str) -> Vec<u8> {
    format!("asclepios stats key v1:{identity}:{study}:{label}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_parse_and_print_back() {
        for l in [
            "2024/systolic/present",
            "2024-03/systolic/value:0..250",
            "20/sys/square:-50.5..50",
            "2024/systolic/bucket:120-140",
        ] {
            assert_eq!(PartLabel::parse(l).unwrap().label(), l);
        }
        for l in [
            "2024/systolic/value",
            "2024/systolic/value:250..0",
            "2024/systolic/value:0..9999",
            "2024/systolic/bucket:",
            "2024/systolic",
            "/x/present",
        ] {
            assert!(PartLabel::parse(l).is_err(), "{l}");
        }
    }

    #[test]
    fn sensitivity_follows_the_range() {
        assert_eq!(Part::Present.sensitivity(), 1);
        assert_eq!(Part::Value { lo: 0.0, hi: 250.0 }.sensitivity(), 2500);
        assert_eq!(
            Part::Value {
                lo: 50.0,
                hi: 250.0
            }
            .sensitivity(),
            2000
        );
        assert_eq!(
            Part::Value {
                lo: -300.0,
                hi: 250.0
            }
            .sensitivity(),
            5500
        );
        assert_eq!(Part::Square { lo: 0.0, hi: 250.0 }.sensitivity(), 6_250_000);
        assert!(honest_shares() >= 6.0);
    }
}
