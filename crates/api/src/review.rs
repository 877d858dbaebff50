//! The review queue of break-glass grants.

use serde::{Deserialize, Serialize};

/// A grant waiting for review.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PendingReview {
    /// The patient's pseudonym.
    pub patient: String,
    /// The grant.
    pub grant_id: String,
    /// Who broke the glass.
    pub clinician: String,
    /// When (Unix seconds).
    pub issued_at: i64,
    /// Until when it worked.
    pub expires_at: i64,
}

/// The decision as recorded.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reviewed {
    /// The grant.
    pub grant_id: String,
    /// `approve` or `flag`.
    pub decision: String,
}

/// An auditor's decision on a grant.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReviewDecision {
    /// The patient's pseudonym.
    pub patient: String,
    /// The grant.
    pub grant_id: String,
    /// `approve` or `flag`.
    pub decision: String,
    /// Why (kept only in the sealed audit event), up to 2000 characters.
    pub comment: String,
}
