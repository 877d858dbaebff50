//! Keys, resolved policies, directory entries and break-glass: what the key
//! authority hands out, and the messages it signs.

use asclepios_crypto::policy::{attribute_name, Node};
use asclepios_crypto::Policy;
use asclepios_net::sealed_box::SealedBox;
use serde::{Deserialize, Serialize};

/// An issued key.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuedKey {
    /// The attributes it holds (versioned).
    pub attributes: Vec<String>,
    /// The FAME user key, sealed to the caller.
    pub key: SealedBox,
}

/// A policy to resolve.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyText {
    /// The policy.
    pub policy: String,
}

/// A resolved policy, signed by the authority: the client checks the
/// signature against the authority's certificate key and that the policy is
/// exactly the one it asked for with version tags added
/// ([`check_resolution`]), so nobody else on the path can widen the policy
/// a record is sealed under.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolvedPolicy {
    /// The policy with every attribute at its current version.
    pub policy: String,
    /// The authority's Ed25519 signature over [`resolution_message`] (base64).
    pub signature: String,
}

/// Checks that `resolved` is `requested` with version tags added and
/// nothing else: the same tree, the same thresholds, the same attribute
/// names in the same places.
pub fn check_resolution(requested: &Policy, resolved: &Policy) -> Result<(), String> {
    fn strip(node: &Node) -> Node {
        match node {
            Node::Attr(a) => Node::Attr(attribute_name(a).to_string()),
            Node::And(c) => Node::And(c.iter().map(strip).collect()),
            Node::Or(c) => Node::Or(c.iter().map(strip).collect()),
            Node::Threshold(k, c) => Node::Threshold(*k, c.iter().map(strip).collect()),
        }
    }
    if strip(requested.root()) == strip(resolved.root()) {
        Ok(())
    } else {
        Err(format!(
            "the authority's answer `{resolved}` is not the policy asked for (`{requested}`) with versions added"
        ))
    }
}

/// What the authority signs when it resolves a policy: the request it
/// answers (its signature-base hash, so an answer cannot be moved to
/// another request), the policy asked for and the policy given.
pub fn resolution_message(request_hash: &[u8; 32], requested: &str, resolved: &str) -> Vec<u8> {
    let mut m = b"asclepios resolved policy v1\n".to_vec();
    m.extend_from_slice(request_hash);
    for part in [requested, resolved] {
        m.extend_from_slice(&(part.len() as u64).to_be_bytes());
        m.extend_from_slice(part.as_bytes());
    }
    m
}

/// An identity's public signing key, for checking what it signed.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityKey {
    /// The identity.
    pub id: String,
    /// Its Ed25519 certificate key (hex).
    pub public_key: String,
    /// Whether it may act now.
    pub active: bool,
    /// The change of the authority's (authenticated) state this entry was
    /// read at: later entries carry larger numbers.
    pub directory_change: u64,
    /// The authority's Ed25519 signature over [`identity_entry_message`]
    /// (base64): the key is vouched for by the authority, not by whatever a
    /// database or a service in between returned.
    pub signature: String,
}

/// What the authority signs when it vouches for an identity's key.
pub fn identity_entry_message(
    id: &str,
    public_key_hex: &str,
    active: bool,
    directory_change: u64,
) -> Vec<u8> {
    let mut m = b"asclepios directory entry v1\n".to_vec();
    for part in [id, public_key_hex] {
        m.extend_from_slice(&(part.len() as u64).to_be_bytes());
        m.extend_from_slice(part.as_bytes());
    }
    m.push(u8::from(active));
    m.extend_from_slice(&directory_change.to_be_bytes());
    m
}

/// A break-glass request.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmergencyRequest {
    /// The patient's pseudonym.
    pub patient: String,
    /// Why, in the clinician's words (kept in the audit log).
    pub reason: String,
}

/// A granted break-glass.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmergencyGranted {
    /// The grant's id.
    pub grant_id: String,
    /// The attribute granted (fetch a fresh key to use it).
    pub attribute: String,
    /// When it stops working (Unix seconds).
    pub expires_at: i64,
}

/// The context an issued key is sealed under.
pub fn key_context(identity: &str) -> Vec<u8> {
    format!("asclepios abe user key v1:{identity}").into_bytes()
}
