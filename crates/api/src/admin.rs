//! Directory administration: what an admin sends the authority and what it
//! answers.

use serde::{Deserialize, Serialize};

/// An identity to add to the directory.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    /// Its id (the URI name in its certificate).
    pub id: String,
    /// What it is (`clinician`, `patient`, `device`, `auditor`, ...).
    pub kind: String,
    /// A name for people.
    pub display_name: String,
    /// Its certificate's Ed25519 key (hex): what its signatures verify with.
    pub public_key: String,
    /// Its attributes (`namespace:value`).
    pub attributes: Vec<String>,
}

/// A member as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberOut {
    /// The identity.
    pub id: String,
    /// Its kind.
    pub kind: String,
    /// Its display name.
    pub display_name: String,
    /// Whether it may act.
    pub active: bool,
    /// Its attributes with the version each was granted at.
    pub attributes: Vec<(String, u64)>,
}

/// An auditor's audit-log sealing key.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditorKey {
    /// The HPKE public key (hex).
    pub public_key: String,
}

/// New attributes for an identity (exactly these).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttributeSet {
    /// The attributes it holds from now on.
    pub attributes: Vec<String>,
}

/// The answer to a change: the member as it is now, and what was revoked.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangeOut {
    /// The member after the change.
    pub member: MemberOut,
    /// What was revoked, if anything.
    pub revocation: Revocation,
}

/// What a revocation did.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Revocation {
    /// Attributes taken away (each now at a new version).
    pub revoked: Vec<String>,
    /// Data-key wrappers re-wrapped so keys from before no longer open them.
    pub rewrapped: usize,
    /// Wrappers left for the authority's background re-wrap (the change
    /// re-wraps for a bounded time; the record service refuses the revoked
    /// holders from the start either way).
    #[serde(default)]
    pub continues_in_background: bool,
}
