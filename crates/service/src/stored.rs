//! What the record service stores for a version: the author, the author's
//! signature and the sealed body, and how the author is proven from them.

use asclepios_api::records::author_message;
use asclepios_crypto::envelope::SealedBody;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ed25519_dalek::Signature;
use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

/// The sealed body inside a stored record version (for the authority's
/// re-wrapping, which must show the body a wrapper is bound to).
pub fn stored_sealed_body(stored: &[u8]) -> Result<SealedBody, String> {
    let stored: Stored =
        serde_json::from_slice(stored).map_err(|e| format!("stored record: {e}"))?;
    let bytes = B64
        .decode(&stored.body)
        .map_err(|_| "stored record: body is not base64".to_string())?;
    SealedBody::from_bytes(&bytes).map_err(|e| format!("stored record: {e}"))
}

/// Who wrote a stored record version.
pub fn stored_author(stored: &[u8]) -> Result<String, String> {
    let stored: Stored =
        serde_json::from_slice(stored).map_err(|e| format!("stored record: {e}"))?;
    Ok(stored.author)
}

/// Who wrote a stored record version, once their signature over it checks
/// out with `author_key` (the key the directory vouches for): the record
/// store's `author` field alone is only what its database says.
pub fn verified_author(
    stored: &[u8],
    patient: &str,
    record_id: &str,
    version: u64,
    author_key: &[u8],
) -> Result<String, String> {
    let stored: Stored =
        serde_json::from_slice(stored).map_err(|e| format!("stored record: {e}"))?;
    let body = B64
        .decode(&stored.body)
        .map_err(|_| "stored record: body is not base64".to_string())?;
    let signature = B64
        .decode(&stored.author_signature)
        .ok()
        .and_then(|s| Signature::from_slice(&s).ok())
        .ok_or("stored record: a malformed author signature")?;
    let key: [u8; 32] = author_key
        .try_into()
        .map_err(|_| "the author's key is not an Ed25519 key".to_string())?;
    VerifyingKey::from_bytes(&key)
        .and_then(|k| {
            k.verify_strict(
                &author_message(patient, record_id, version, &body),
                &signature,
            )
        })
        .map_err(|_| {
            format!(
                "the stored record's signature does not verify with {}'s key",
                stored.author
            )
        })?;
    Ok(stored.author)
}

/// What the store keeps as a version's body: the sealed body and its author.
#[derive(Debug, Serialize, Deserialize)]
pub struct Stored {
    /// Who stored it, as the record service saw the caller.
    pub author: String,
    /// The author's Ed25519 signature over the version (base64).
    pub author_signature: String,
    /// The sealed body (base64).
    pub body: String,
}
