//! Statistics without seeing the data: data providers encrypt each patient's
//! value in its own slot (multi-client inner-product FE); a researcher gets a
//! key for the equal-weight sum over a cohort, if the authority's rule allows
//! it, and learns that sum and nothing else.
//!
//! Each value is published as several features under labels
//! `period/feature/part`: `present` (1, or 0 when the patient has no value,
//! so missing values stay hidden), `value` (scaled by 10^[`DECIMALS`]),
//! `square` (for the variance), and `bucket:<lo>-<hi>` indicators for a
//! histogram. Count, sum, mean, variance and bucket counts follow.

use std::collections::BTreeMap;

use asclepios_api::records::{StatsValues, StatsValuesOut};
use asclepios_api::stats::{
    slots_context, stats_key_context, IssuedSlots, SlotRequest, StatsKey, StatsKeyRequest,
};
use asclepios_crypto::ipfe::{self, DlogTable, Label, Mcfe, McfeKey, SlotKey};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use reqwest::Method;

use crate::{to_json, Client, ClientError};

/// Decimal places values keep (one: 128.4 mmHg is published as 1284).
pub const DECIMALS: u32 = 1;
/// Largest aggregate decrypted (sums of squares of large cohorts reach it).
pub const AGGREGATE_BOUND: u64 = 1 << 40;
/// Baby steps of the discrete-log table (about 25 MB, built once a process).
pub const TABLE_BABY_STEPS: u64 = 1 << 20;

/// Aggregates over one cohort.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    /// Slots in the cohort.
    pub slots: usize,
    /// Patients with a value.
    pub count: i64,
    /// Sum of values.
    pub sum: f64,
    /// Mean (`None` without values).
    pub mean: Option<f64>,
    /// Population variance.
    pub variance: Option<f64>,
    /// Bucket label and count, in label order.
    pub histogram: Vec<(String, i64)>,
}

fn label(period: &str, feature: &str, part: &str) -> String {
    format!("{period}/{feature}/{part}")
}

/// The parts a value is published as: `(part, integer)`.
pub fn feature_parts(
    value: Option<f64>,
    buckets: &[f64],
) -> Result<Vec<(String, i64)>, ClientError> {
    let fe = |e: ipfe::FeError| ClientError::Protocol(e.to_string());
    let x = value
        .map(|v| ipfe::scale(v, DECIMALS))
        .transpose()
        .map_err(fe)?;
    if x.is_some_and(|x| x.unsigned_abs() >= 1 << 16) {
        return Err(ClientError::Protocol(format!(
            "{} is too large for a statistic (|value| < 6553.6)",
            value.unwrap_or_default()
        )));
    }
    let mut parts = vec![
        ("present".to_string(), i64::from(x.is_some())),
        ("value".to_string(), x.unwrap_or(0)),
        ("square".to_string(), x.map_or(0, |x| x * x)),
    ];
    for (name, lo, hi) in bucket_ranges(buckets) {
        let inside = value.is_some_and(|v| v >= lo && v < hi);
        parts.push((name, i64::from(inside)));
    }
    Ok(parts)
}

/// `bucket:<lo>-<hi>` names for edges `e0 < e1 < ...`, with open ends.
fn bucket_ranges(edges: &[f64]) -> Vec<(String, f64, f64)> {
    if edges.is_empty() {
        return Vec::new();
    }
    let mut out = vec![(
        format!("bucket:lt{}", edges[0]),
        f64::NEG_INFINITY,
        edges[0],
    )];
    for w in edges.windows(2) {
        out.push((format!("bucket:{}-{}", w[0], w[1]), w[0], w[1]));
    }
    let last = edges[edges.len() - 1];
    out.push((format!("bucket:ge{last}"), last, f64::INFINITY));
    out
}

impl Client {
    /// Slots of `study` for this data provider, with their keys (keep them:
    /// a slot encrypts its patient's values for every later period).
    pub async fn stats_slots(
        &self,
        study: &str,
        count: u32,
    ) -> Result<(u64, Vec<SlotKey>), ClientError> {
        let body = to_json(&SlotRequest {
            study: study.to_string(),
            count,
        })?;
        let (issued, _): (IssuedSlots, _) = self
            .call_with_receipt("authority", Method::POST, "/v1/stats/slots", body)
            .await?;
        let bytes = asclepios_net::sealed_box::open(
            &self.key_pem,
            &slots_context(&self.id, study),
            &issued.keys,
        )?;
        if bytes.len() != 64 * issued.count as usize || issued.count != count {
            return Err(ClientError::Protocol("the slot keys do not add up".into()));
        }
        let keys = bytes
            .chunks_exact(64)
            .map(|c| SlotKey::from_bytes(c.try_into().expect("64 bytes")))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| ClientError::Protocol("a malformed slot key".into()))?;
        Ok((issued.first, keys))
    }

    /// Encrypts and publishes one value per slot for `period`/`feature`
    /// (`None`: the patient has no value), with histogram `buckets`.
    pub async fn stats_publish(
        &self,
        study: &str,
        period: &str,
        feature: &str,
        buckets: &[f64],
        values: &[(u64, &SlotKey, Option<f64>)],
    ) -> Result<usize, ClientError> {
        let mut by_label: BTreeMap<String, Vec<(u64, String)>> = BTreeMap::new();
        let mut labels: BTreeMap<String, Label> = BTreeMap::new();
        for (slot, key, value) in values {
            for (part, x) in feature_parts(*value, buckets)? {
                let name = label(period, feature, &part);
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
        let mut published = 0;
        for (label, values) in by_label {
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

    /// The labels published in `study`.
    pub async fn stats_labels(&self, study: &str) -> Result<Vec<String>, ClientError> {
        let path = format!("/v1/stats/values?study={study}");
        let (out, _): (StatsValuesOut, _) = self
            .call_with_receipt("records", Method::GET, &path, Vec::new())
            .await?;
        Ok(out.labels)
    }

    /// An aggregate key for `cohort` (`all`, `provider:<id>`, `slots:...`)
    /// under `label` alone, and the cohort's slots: the authority checks the
    /// cohort against its rule first.
    pub async fn stats_key(
        &self,
        study: &str,
        label: &str,
        cohort: &str,
    ) -> Result<(Vec<u64>, McfeKey), ClientError> {
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
        Ok((issued.slots, key))
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
        let path = format!("/v1/stats/values?study={study}&label={label}");
        let (out, _): (StatsValuesOut, _) = self
            .call_with_receipt("records", Method::GET, &path, Vec::new())
            .await?;
        let published: BTreeMap<u64, String> = out.values.into_iter().collect();
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
            Mcfe::decrypt(&key, &y, &Label::new(&label), &cts, &table, AGGREGATE_BOUND)
        })
        .await
        .map_err(|e| ClientError::Protocol(e.to_string()))?
        .map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// The sum over `cohort` (`all`, `provider:<id>`, `slots:...`) of the
    /// values under `label`, and the cohort's size.
    pub async fn stats_sum(
        &self,
        study: &str,
        label: &str,
        cohort: &str,
    ) -> Result<(i64, usize), ClientError> {
        let (slots, key) = self.stats_key(study, label, cohort).await?;
        let sum = self.stats_decrypt(study, label, &slots, key).await?;
        Ok((sum, slots.len()))
    }

    /// Count, sum, mean, variance and histogram of `feature` in `period`
    /// over `cohort`.
    pub async fn stats_summary(
        &self,
        study: &str,
        period: &str,
        feature: &str,
        cohort: &str,
    ) -> Result<Summary, ClientError> {
        let scale = 10f64.powi(DECIMALS as i32);
        let (count, slots) = self
            .stats_sum(study, &label(period, feature, "present"), cohort)
            .await?;
        let (sum, _) = self
            .stats_sum(study, &label(period, feature, "value"), cohort)
            .await?;
        let (squares, _) = self
            .stats_sum(study, &label(period, feature, "square"), cohort)
            .await?;
        let prefix = label(period, feature, "bucket:");
        let mut histogram = Vec::new();
        for l in self.stats_labels(study).await? {
            if let Some(bucket) = l.strip_prefix(&prefix) {
                let (n, _) = self.stats_sum(study, &l, cohort).await?;
                histogram.push((bucket.to_string(), n));
            }
        }
        let mean = (count > 0).then(|| sum as f64 / count as f64 / scale);
        let variance = (count > 0).then(|| {
            let m = sum as f64 / count as f64;
            (squares as f64 / count as f64 - m * m) / (scale * scale)
        });
        Ok(Summary {
            slots,
            count,
            sum: sum as f64 / scale,
            mean,
            variance,
            histogram,
        })
    }
}
