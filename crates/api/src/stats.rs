//! Statistics slots and aggregate keys as the authority issues them.

use asclepios_net::sealed_box::SealedBox;
use serde::{Deserialize, Serialize};

/// Allocated slots and their keys.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuedSlots {
    /// The first slot number; the rest follow.
    pub first: u64,
    /// How many.
    pub count: u32,
    /// The slot keys, 64 bytes each in order, sealed to the caller.
    pub keys: SealedBox,
}

/// A data provider's request for slots in a study.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotRequest {
    /// The study.
    pub study: String,
    /// How many slots (one per patient value).
    pub count: u32,
}

/// A key for the equal-weight sum over a cohort.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatsKey {
    /// The cohort's slots, in order.
    pub slots: Vec<u64>,
    /// The decryption key (64 bytes), sealed to the caller.
    pub key: SealedBox,
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
    format!("asclepios stats slots v1:{identity}:{study}").into_bytes()
}

/// The context an aggregate key is sealed to a researcher under.
pub fn stats_key_context(identity: &str, study: &str, label: &str) -> Vec<u8> {
    format!("asclepios stats key v1:{identity}:{study}:{label}").into_bytes()
}
