//! Statistics without seeing the data: data providers encrypt each patient's
//! value in the patient's slot (multi-client inner-product FE), with a noise
//! share added; a researcher gets a key for the equal-weight sum over a
//! cohort, if the authority's rule and privacy budget allow it, and learns
//! that noisy sum and nothing else.
//!
//! Each value is published as several parts under labels
//! `period/feature/part` (`asclepios_api::stats::Part`): `present` (1, or 0
//! when the patient has no value, so missing values stay hidden),
//! `value:lo..hi` (clipped to the range and shifted by `−lo`, scaled by
//! 10^[`DECIMALS`]), `square:lo..hi` (for the variance), and `bucket:<lo>-<hi>` indicators for
//! a histogram. Count, sum, mean, variance and bucket counts follow, each
//! with the standard deviation of its noise.

use std::collections::BTreeMap;

use asclepios_api::records::{StatsValues, StatsValuesOut};
use asclepios_api::stats::{
    check_range, noise_share, slots_context, stats_key_context, IssuedSlots, SlotRequest, StatsKey,
    StatsKeyRequest,
};
pub use asclepios_api::stats::{parse_range, Budget, Part, PartLabel, DECIMALS, RELEASE_EPSILON};
use asclepios_crypto::ipfe::{self, DlogTable, Label, Mcfe, McfeKey, SlotKey};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use reqwest::Method;

use crate::{to_json, Client, ClientError};

/// Largest aggregate decrypted (sums of squares of large cohorts reach it).
pub const AGGREGATE_BOUND: u64 = 1 << 40;
/// Baby steps of the discrete-log table (about 25 MB, built once a process).
pub const TABLE_BABY_STEPS: u64 = 1 << 20;

/// A noisy sum and what it carries.
#[derive(Clone, Debug, PartialEq)]
pub struct Aggregate {
    /// The noisy sum, in published (scaled) units.
    pub sum: i64,
    /// Slots in the cohort.
    pub slots: usize,
    /// The standard deviation of the noise in `sum`, if every slot added
    /// its share.
    pub noise_sd: f64,
    /// Where the privacy budget stands after this release.
    pub budget: Budget,
}

/// Aggregates over one cohort, each noisy.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    /// Slots in the cohort.
    pub slots: usize,
    /// Patients with a value (noisy).
    pub count: i64,
    /// Standard deviation of the count's noise.
    pub count_sd: f64,
    /// Sum of values (noisy).
    pub sum: f64,
    /// Standard deviation of the sum's noise.
    pub sum_sd: f64,
    /// Mean (`None` without values).
    pub mean: Option<f64>,
    /// Approximate standard deviation of the mean's noise.
    pub mean_sd: Option<f64>,
    /// Population variance.
    pub variance: Option<f64>,
    /// Bucket label and noisy count, in label order.
    pub histogram: Vec<(String, i64)>,
    /// Where the privacy budget stands after the summary; its `epsilon` is
    /// what the summary's new releases spent.
    pub budget: Budget,
}

fn scale() -> f64 {
    10f64.powi(DECIMALS as i32)
}

/// The parts a value is published as, before noise: `(part, integer)`.
/// The value is clipped to `range` and shifted by its lower end (so one
/// person moves a sum by at most the range's width); buckets are on the
/// clipped value.
pub fn feature_parts(
    value: Option<f64>,
    range: (f64, f64),
    buckets: &[f64],
) -> Result<Vec<(Part, i64)>, ClientError> {
    let (lo, hi) = check_range(range.0, range.1).map_err(ClientError::Protocol)?;
    let fe = |e: ipfe::FeError| ClientError::Protocol(e.to_string());
    let clipped = value.map(|v| if v.is_nan() { lo } else { v.clamp(lo, hi) });
    let x = clipped
        .map(|v| ipfe::scale(v - lo, DECIMALS))
        .transpose()
        .map_err(fe)?;
    let mut parts = vec![
        (Part::Present, i64::from(x.is_some())),
        (Part::Value { lo, hi }, x.unwrap_or(0)),
        (Part::Square { lo, hi }, x.map_or(0, |x| x * x)),
    ];
    for (name, blo, bhi) in bucket_ranges(buckets) {
        let inside = clipped.is_some_and(|v| v >= blo && v < bhi);
        parts.push((Part::Bucket(name), i64::from(inside)));
    }
    Ok(parts)
}

/// [`feature_parts`] with each part's noise share added: what a provider
/// encrypts.
pub fn noisy_parts<R: rand::Rng + ?Sized>(
    value: Option<f64>,
    range: (f64, f64),
    buckets: &[f64],
    rng: &mut R,
) -> Result<Vec<(Part, i64)>, ClientError> {
    feature_parts(value, range, buckets)?
        .into_iter()
        .map(|(part, x)| {
            let noise = noise_share(&part).map_err(|e| ClientError::Protocol(e.to_string()))?;
            Ok((part, x + noise.sample(rng)))
        })
        .collect()
}

/// The mean from a noisy count and a noisy sum of values shifted by `−lo`
/// (published units), each with its noise's standard deviation: the mean
/// and the approximate standard deviation of its noise (by the delta
/// method). `None` when the count is not positive.
pub fn mean_estimate(
    (count, count_sd): (i64, f64),
    (shifted_sum, sum_sd): (i64, f64),
    lo: f64,
) -> Option<(f64, f64)> {
    if count <= 0 {
        return None;
    }
    let (c, s) = (count as f64, scale());
    let m = shifted_sum as f64 / c;
    let sd = ((sum_sd / c).powi(2) + (m / c * count_sd).powi(2)).sqrt() / s;
    Some((lo + m / s, sd))
}

/// The standard deviation of the noise a sum of `slots` shares of `label`
/// carries.
pub fn noise_sd(label: &str, slots: usize) -> Result<f64, ClientError> {
    let part = PartLabel::parse(label).map_err(ClientError::Protocol)?.part;
    Ok(noise_share(&part)
        .map_err(|e| ClientError::Protocol(e.to_string()))?
        .sum_sd(slots))
}

/// How far the discrete log of a noisy sum of `slots` values of `label` is
/// searched: the largest true sum plus 12 standard deviations of noise.
fn search_bound(label: &str, slots: usize) -> Result<u64, ClientError> {
    let part = PartLabel::parse(label).map_err(ClientError::Protocol)?.part;
    let largest = match &part {
        Part::Present | Part::Bucket(_) => 1.0,
        Part::Value { .. } | Part::Square { .. } => part.sensitivity() as f64,
    };
    let bound = slots as f64 * largest + 12.0 * noise_sd(label, slots)? + 64.0;
    Ok((bound.ceil() as u64).min(AGGREGATE_BOUND))
}

/// `bucket:<lo>-<hi>` names for edges `e0 < e1 < ...`, with open ends.
fn bucket_ranges(edges: &[f64]) -> Vec<(String, f64, f64)> {
    if edges.is_empty() {
        return Vec::new();
    }
    let mut out = vec![(format!("lt{}", edges[0]), f64::NEG_INFINITY, edges[0])];
    for w in edges.windows(2) {
        out.push((format!("{}-{}", w[0], w[1]), w[0], w[1]));
    }
    let last = edges[edges.len() - 1];
    out.push((format!("ge{last}"), last, f64::INFINITY));
    out
}

/// `key`'s sum of the `published` values (by slot) of `slots` under
/// `label`: every slot of the cohort must have published.
async fn decrypt_published(
    label: &str,
    slots: &[u64],
    key: McfeKey,
    published: &BTreeMap<u64, String>,
) -> Result<i64, ClientError> {
    let bound = search_bound(label, slots.len())?;
    let mut cts = Vec::with_capacity(slots.len());
    for slot in slots {
        let point = published
            .get(slot)
            .and_then(|b| B64.decode(b).ok())
            .and_then(|b| ipfe::point_from_bytes(&b))
            .ok_or_else(|| {
                ClientError::Protocol(format!(
                    "slot {slot} has published no value under {label}: the aggregate needs every slot of the cohort"
                ))
            })?;
        cts.push(point);
    }
    let label = label.to_string();
    tokio::task::spawn_blocking(move || {
        let table = DlogTable::shared(TABLE_BABY_STEPS);
        let y = vec![1i64; cts.len()];
        Mcfe::decrypt(&key, &y, &Label::new(&label), &cts, &table, bound)
    })
    .await
    .map_err(|e| ClientError::Protocol(e.to_string()))?
    .map_err(|e| ClientError::Protocol(e.to_string()))
}

impl Client {
    /// The slots of `patients` (directory pseudonyms) in `study` for this
    /// data provider, with their keys (keep them: a slot encrypts its
    /// patient's values for every later period). Asking again for a patient
    /// returns the same slot and key.
    pub async fn stats_slots(
        &self,
        study: &str,
        patients: &[String],
    ) -> Result<Vec<(String, u64, SlotKey)>, ClientError> {
        let body = to_json(&SlotRequest {
            study: study.to_string(),
            patients: patients.to_vec(),
        })?;
        let (issued, _): (IssuedSlots, _) = self
            .call_with_receipt("authority", Method::POST, "/v1/stats/slots", body)
            .await?;
        let bytes = asclepios_net::sealed_box::open(
            &self.key_pem,
            &slots_context(&self.id, study),
            &issued.keys,
        )?;
        let asked: Vec<&String> = issued.slots.iter().map(|(p, _)| p).collect();
        if bytes.len() != 64 * issued.slots.len() || asked.iter().copied().ne(patients.iter()) {
            return Err(ClientError::Protocol("the slot keys do not add up".into()));
        }
        issued
            .slots
            .into_iter()
            .zip(bytes.chunks_exact(64))
            .map(|((patient, slot), c)| {
                let key = SlotKey::from_bytes(c.try_into().expect("64 bytes"))
                    .ok_or_else(|| ClientError::Protocol("a malformed slot key".into()))?;
                Ok((patient, slot, key))
            })
            .collect()
    }

    /// Encrypts and publishes one value per slot for `period`/`feature`
    /// (`None`: the patient has no value), clipped to `range`, with
    /// histogram `buckets`; every part carries its noise share.
    pub async fn stats_publish(
        &self,
        study: &str,
        (period, feature): (&str, &str),
        range: (f64, f64),
        buckets: &[f64],
        values: &[(u64, &SlotKey, Option<f64>)],
    ) -> Result<usize, ClientError> {
        let mut by_label: BTreeMap<String, Vec<(u64, String)>> = BTreeMap::new();
        let mut labels: BTreeMap<String, Label> = BTreeMap::new();
        let mut rng = rand_core::OsRng;
        for (slot, key, value) in values {
            for (part, x) in noisy_parts(*value, range, buckets, &mut rng)? {
                let name = PartLabel {
                    period: period.into(),
                    feature: feature.into(),
                    part,
                }
                .label();
                let l = labels
                    .entry(name.clone())
                    .or_insert_with(|| Label::new(&name));
                let ct = key
                    .encrypt(l, x)
                    .map_err(|e| ClientError::Protocol(e.to_string()))?;
                by_label
                    .entry(name)
                    .or_default()
                    .push((*slot, B64.encode(ipfe::point_to_bytes(&ct))));
            }
        }
        // `present` first: a second publication of the period is refused
        // before any of its other parts is written.
        let present = PartLabel {
            period: period.into(),
            feature: feature.into(),
            part: Part::Present,
        }
        .label();
        let mut ordered: Vec<(String, Vec<(u64, String)>)> = Vec::with_capacity(by_label.len());
        if let Some(values) = by_label.remove(&present) {
            ordered.push((present, values));
        }
        ordered.extend(by_label);
        let mut published = 0;
        for (label, values) in ordered {
            let body = to_json(&StatsValues {
                study: study.to_string(),
                label,
                values,
            })?;
            let (n, _): (usize, _) = self
                .call_with_receipt("records", Method::POST, "/v1/stats/values", body)
                .await?;
            published += n;
        }
        Ok(published)
    }

    /// The values published under `label` in `study`, by slot (base64
    /// points).
    async fn published_values(
        &self,
        study: &str,
        label: &str,
    ) -> Result<BTreeMap<u64, String>, ClientError> {
        let path = format!("/v1/stats/values?study={study}&label={label}");
        let (out, _): (StatsValuesOut, _) = self
            .call_with_receipt("records", Method::GET, &path, Vec::new())
            .await?;
        Ok(out.values.into_iter().collect())
    }

    /// The labels published in `study`.
    pub async fn stats_labels(&self, study: &str) -> Result<Vec<String>, ClientError> {
        let path = format!("/v1/stats/values?study={study}");
        let (out, _): (StatsValuesOut, _) = self
            .call_with_receipt("records", Method::GET, &path, Vec::new())
            .await?;
        Ok(out.labels)
    }

    /// An aggregate key for `cohort` (`all`, `provider:<id>`, `slots:...`)
    /// under `label` alone, the cohort's slots and the budget it leaves:
    /// the authority checks the cohort against its rule and budget first.
    pub async fn stats_key(
        &self,
        study: &str,
        label: &str,
        cohort: &str,
    ) -> Result<(Vec<u64>, McfeKey, Budget), ClientError> {
        let body = to_json(&StatsKeyRequest {
            study: study.to_string(),
            label: label.to_string(),
            cohort: cohort.to_string(),
        })?;
        let (issued, _): (StatsKey, _) = self
            .call_with_receipt("authority", Method::POST, "/v1/stats/keys", body)
            .await?;
        let bytes = asclepios_net::sealed_box::open(
            &self.key_pem,
            &stats_key_context(&self.id, study, label),
            &issued.key,
        )?;
        let key = <&[u8; 64]>::try_from(bytes.as_slice())
            .ok()
            .and_then(McfeKey::from_bytes)
            .ok_or_else(|| ClientError::Protocol("a malformed aggregate key".into()))?;
        Ok((issued.slots, key, issued.budget))
    }

    /// `key`'s sum of the values published under `label` by `slots` (all
    /// of them must have published).
    pub async fn stats_decrypt(
        &self,
        study: &str,
        label: &str,
        slots: &[u64],
        key: McfeKey,
    ) -> Result<i64, ClientError> {
        let published = self.published_values(study, label).await?;
        decrypt_published(label, slots, key, &published).await
    }

    /// The noisy sum over `cohort` (`all`, `provider:<id>`, `slots:...`) of
    /// the values under `label`, with its noise and budget.
    pub async fn stats_sum(
        &self,
        study: &str,
        label: &str,
        cohort: &str,
    ) -> Result<Aggregate, ClientError> {
        Ok(self.aggregate(study, label, cohort, None).await?.0)
    }

    /// [`Client::stats_sum`], with the cohort's slots, over `published`
    /// when the values were fetched already.
    async fn aggregate(
        &self,
        study: &str,
        label: &str,
        cohort: &str,
        published: Option<&BTreeMap<u64, String>>,
    ) -> Result<(Aggregate, Vec<u64>), ClientError> {
        let (slots, key, budget) = self.stats_key(study, label, cohort).await?;
        let sum = match published {
            Some(values) => decrypt_published(label, &slots, key, values).await?,
            None => self.stats_decrypt(study, label, &slots, key).await?,
        };
        let aggregate = Aggregate {
            sum,
            slots: slots.len(),
            noise_sd: noise_sd(label, slots.len())?,
            budget,
        };
        Ok((aggregate, slots))
    }

    /// Count, sum, mean, variance and histogram of `feature` in `period`
    /// over `cohort`, each noisy, with the noise they carry.
    pub async fn stats_summary(
        &self,
        study: &str,
        period: &str,
        feature: &str,
        cohort: &str,
    ) -> Result<Summary, ClientError> {
        let prefix = format!("{period}/{feature}/");
        let labels: Vec<String> = self
            .stats_labels(study)
            .await?
            .into_iter()
            .filter(|l| l.starts_with(&prefix))
            .collect();
        let present_label = format!("{prefix}present");
        if !labels.contains(&present_label) {
            return Err(ClientError::Protocol(format!(
                "nothing is published under {prefix} in `{study}`"
            )));
        }
        // The count first: its key names the cohort's slots. Only labels
        // every one of them published are asked for afterwards, so a label
        // some provider published over its own slots alone spends no budget.
        let (present, slots) = self.aggregate(study, &present_label, cohort, None).await?;
        // Each other label's values, fetched once: to check coverage, then
        // to decrypt.
        let mut covering: BTreeMap<String, BTreeMap<u64, String>> = BTreeMap::new();
        for l in labels.iter().filter(|l| **l != present_label) {
            let values = self.published_values(study, l).await?;
            if slots.iter().all(|s| values.contains_key(s)) {
                covering.insert(l.clone(), values);
            }
        }
        let value_label = covering
            .keys()
            .find(|l| l.starts_with(&format!("{prefix}value:")))
            .cloned()
            .ok_or_else(|| {
                ClientError::Protocol(format!(
                    "no value:<range> label under {prefix} was published by every slot of the cohort"
                ))
            })?;
        let parsed = PartLabel::parse(&value_label).map_err(ClientError::Protocol)?;
        let (lo, hi) = match parsed.part {
            Part::Value { lo, hi } => (lo, hi),
            _ => (0.0, 0.0),
        };
        let square_label = PartLabel {
            part: Part::Square { lo, hi },
            ..parsed
        }
        .label();
        let Some(square_values) = covering.get(&square_label) else {
            return Err(ClientError::Protocol(format!(
                "{square_label} was not published by every slot of the cohort"
            )));
        };
        let (value, _) = self
            .aggregate(study, &value_label, cohort, Some(&covering[&value_label]))
            .await?;
        let (square, _) = self
            .aggregate(study, &square_label, cohort, Some(square_values))
            .await?;
        let mut epsilon = present.budget.epsilon + value.budget.epsilon + square.budget.epsilon;
        let mut budget = square.budget.clone();
        let bucket_prefix = format!("{prefix}bucket:");
        let mut histogram = Vec::new();
        for (l, values) in &covering {
            if let Some(bucket) = l.strip_prefix(&bucket_prefix) {
                let (n, _) = self.aggregate(study, l, cohort, Some(values)).await?;
                epsilon += n.budget.epsilon;
                budget = n.budget;
                histogram.push((bucket.to_string(), n.sum));
            }
        }
        let s = scale();
        let count = present.sum;
        let estimate = mean_estimate((count, present.noise_sd), (value.sum, value.noise_sd), lo);
        let variance = (count > 0).then(|| {
            let (c, m) = (count as f64, value.sum as f64 / count as f64);
            (square.sum as f64 / c - m * m) / (s * s)
        });
        budget.epsilon = epsilon;
        Ok(Summary {
            slots: present.slots,
            count,
            count_sd: present.noise_sd,
            sum: value.sum as f64 / s + lo * count as f64,
            sum_sd: value.noise_sd / s,
            mean: estimate.map(|e| e.0),
            mean_sd: estimate.map(|e| e.1),
            variance,
            histogram,
            budget,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::SeedableRng;

    /// A mean over 1,000 patients, encrypted with noise shares, keyed and
    /// decrypted as the services would, stays within three standard
    /// deviations of the stated noise of the plaintext mean (the error
    /// `docs/design.md` documents), and is not the plaintext mean.
    #[test]
    fn a_mean_over_1000_patients_is_within_the_documented_error() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(19);
        let range = (80.0, 200.0);
        let n = 1000;
        let values: Vec<f64> = (0..n)
            .map(|i| 100.0 + ((i * 37) % 60) as f64 + 0.1 * (i % 10) as f64)
            .collect();
        let keys: Vec<SlotKey> = (0..n).map(|_| SlotKey::generate(&mut rng)).collect();
        let present_label = "2026/systolic/present";
        let value_label = "2026/systolic/value:80..200";
        let mut cts: BTreeMap<&str, Vec<_>> = BTreeMap::new();
        for (key, v) in keys.iter().zip(&values) {
            for (part, x) in noisy_parts(Some(*v), range, &[], &mut rng).unwrap() {
                let name = match part {
                    Part::Present => present_label,
                    Part::Value { .. } => value_label,
                    _ => continue,
                };
                cts.entry(name)
                    .or_default()
                    .push(key.encrypt(&Label::new(name), x).unwrap());
            }
        }
        let table = DlogTable::new(1 << 14);
        let refs: Vec<&SlotKey> = keys.iter().collect();
        let y = vec![1i64; n];
        let sum = |label: &str| {
            let key = Mcfe::keygen(&refs, &y, &Label::new(label)).unwrap();
            let bound = search_bound(label, n).unwrap();
            Mcfe::decrypt(&key, &y, &Label::new(label), &cts[label], &table, bound).unwrap()
        };
        let count = sum(present_label);
        let shifted = sum(value_label);
        let (mean, sd) = mean_estimate(
            (count, noise_sd(present_label, n).unwrap()),
            (shifted, noise_sd(value_label, n).unwrap()),
            range.0,
        )
        .unwrap();
        let truth = values.iter().sum::<f64>() / n as f64;
        assert!(
            (mean - truth).abs() <= 3.0 * sd,
            "mean {mean}, plaintext {truth}, noise sd {sd}"
        );
        assert!(mean != truth, "no noise was added");
        assert!(sd > 0.5 && sd < 5.0, "noise sd {sd}");
    }

    #[test]
    fn values_are_clipped_shifted_and_bucketed() {
        let parts = feature_parts(Some(250.0), (80.0, 200.0), &[120.0, 140.0]).unwrap();
        let names: Vec<String> = parts.iter().map(|(p, _)| p.name()).collect();
        assert_eq!(
            names,
            [
                "present",
                "value:80..200",
                "square:80..200",
                "bucket:lt120",
                "bucket:120-140",
                "bucket:ge140"
            ]
        );
        let xs: Vec<i64> = parts.iter().map(|(_, x)| *x).collect();
        assert_eq!(xs, [1, 1200, 1_440_000, 0, 0, 1]);
        let none = feature_parts(None, (80.0, 200.0), &[]).unwrap();
        assert!(none.iter().all(|(_, x)| *x == 0));
        assert!(feature_parts(Some(1.0), (5.0, 5.0), &[]).is_err());
    }
}
