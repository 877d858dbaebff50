//! Between the services: what the key authority asks of the record
//! service's store when the two run apart (re-wraps after a revocation, who
//! authored a record, the encrypted index). Only the authority's service
//! identity may call these routes. Bytes travel as base64.

use serde::{Deserialize, Serialize};

/// Where a wrapper scan resumes: after this wrapper.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WrapperKey {
    /// The patient's pseudonym.
    pub patient: String,
    /// The record's id.
    pub record_id: String,
    /// The record version.
    pub version: u64,
    /// The wrapper's slot.
    pub slot: String,
}

/// A page of wrappers.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WrapperScan {
    /// Resume after this one (from the start if absent).
    pub after: Option<WrapperKey>,
    /// At most this many (1 to [`MAX_SCAN`]).
    pub limit: usize,
}

/// Most wrappers one scan answers.
pub const MAX_SCAN: usize = 1024;

/// One wrapper of one record version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WrapperOut {
    /// Which wrapper.
    pub key: WrapperKey,
    /// Its bytes (base64).
    pub wrapper: String,
    /// The epoch it was made for.
    pub epoch: u64,
    /// When it was last written (Unix seconds).
    pub updated_at: i64,
}

/// A record version to read (the latest if `version` is absent).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionQuery {
    /// The patient's pseudonym.
    pub patient: String,
    /// The record's id.
    pub record_id: String,
    /// The version.
    pub version: Option<u64>,
}

/// A stored record version as the record service holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredVersion {
    /// The patient's pseudonym.
    pub patient: String,
    /// The record's id.
    pub record_id: String,
    /// The version.
    pub version: u64,
    /// What the service stored (author, signature, sealed body), base64.
    pub body: String,
    /// When (Unix seconds).
    pub created_at: i64,
}

/// A re-wrapped wrapper to put in place of the one at `expected_epoch`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WrapperReplacement {
    /// Which wrapper.
    pub key: WrapperKey,
    /// The epoch it must still be at.
    pub expected_epoch: u64,
    /// The new wrapper (base64).
    pub wrapper: String,
    /// Its epoch.
    pub new_epoch: u64,
}

/// Index addresses to read (base64).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexGet {
    /// The addresses, at most [`MAX_INDEX_BATCH`].
    pub addrs: Vec<String>,
}

/// Index entries to write over and addresses to delete (base64).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexWrite {
    /// `(address, value)` pairs, at most [`MAX_INDEX_BATCH`].
    pub put: Vec<(String, String)>,
    /// Addresses, at most [`MAX_INDEX_BATCH`].
    pub delete: Vec<String>,
}

/// Most addresses or entries in one index request.
pub const MAX_INDEX_BATCH: usize = 65_536;

/// The authority's directory moved to `change`: the record service fetches
/// the facts at once and answers which change it now holds, so that a
/// revocation binds both services before the administrator's call returns.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FactsChanged {
    /// The authority's directory change.
    pub change: u64,
}
