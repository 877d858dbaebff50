//! Component attestation: challenges, evidence and registrations.

use asclepios_attest::policy::Trust;
use serde::{Deserialize, Serialize};

/// A registration's verdict.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registered {
    /// The appraisal tier.
    pub trust: Trust,
    /// The appraisal in one line.
    pub summary: String,
    /// Until when it holds.
    pub expires_at: u64,
}

/// Fresh evidence from the authority.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvidenceOut {
    /// The evidence envelope, base64.
    pub evidence: String,
}

/// A nonce to answer with registration evidence.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Challenge {
    /// 32 bytes, hex.
    pub nonce: String,
    /// Until when it may be answered (seconds since the epoch).
    pub expires_at: u64,
}

/// A component's registration request.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    /// The evidence envelope, base64: binding the caller's certificate key
    /// and a challenge nonce.
    pub evidence: String,
}
