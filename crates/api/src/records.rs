//! The record service's wire types: stored versions, receipts, exports, the
//! encrypted index and statistics values.

use asclepios_audit::Receipt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A de-identified export, declared by the identity that made it (the
/// records were read, and so logged, one by one; this logs what left).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportNotice {
    /// The de-identification profile.
    pub profile: String,
    /// Resources exported.
    pub resources: u64,
    /// Records read for it.
    pub records_read: u64,
    /// Who receives it.
    pub recipient: String,
}

/// A slice of the audit log: encrypted entries, readable only by those the
/// events concern (patients) and auditors.
///
/// An auditor is given every entry from `start` on, in order, and re-hashes
/// the whole tree. A patient is given only the entries about them, each with
/// its index and inclusion proof in the tree of `size` leaves: the hashes
/// prove each entry without showing any other.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSlice {
    /// Where the slice starts (an index of the log).
    pub start: u64,
    /// The entries (base64).
    pub entries: Vec<String>,
    /// The latest signed checkpoint.
    pub checkpoint: Option<String>,
    /// For a patient's slice: what proves each entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proved: Option<ProvedEntries>,
}

/// Where a patient's entries are in the log, and their inclusion proofs.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvedEntries {
    /// The tree size the proofs are for (a checkpoint's).
    pub size: u64,
    /// Each entry's index in the log.
    pub indices: Vec<u64>,
    /// Each entry's RFC 9162 inclusion proof (base64 hashes).
    pub proofs: Vec<Vec<String>>,
    /// Where the next slice starts, if entries about this patient may remain
    /// below `size`.
    pub next: Option<u64>,
}

/// A consistency proof between two sizes of a service's audit log
/// (RFC 9162 §2.1.4), for a client to check that a checkpoint it holds and
/// a newer (or older) one it is shown belong to one history.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsistencyProof {
    /// The smaller size.
    pub old: u64,
    /// The larger size.
    pub new: u64,
    /// The proof's hashes (base64).
    pub proof: Vec<String>,
}

/// The record of a reported verdict.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerdictLogged {
    /// The tier as logged.
    pub trust: String,
}

/// Answers search tokens against the index: the service sees addresses and
/// sealed values, never a keyword or a record id. Logged (how many
/// addresses, not which).
/// A client's verdict on the key authority's attestation, reported here so
/// it lands in the audit log even when the authority is the one refused.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttestationVerdict {
    /// What was appraised (`authority`).
    pub subject: String,
    /// The tier: `affirming`, `warning` or `contraindicated`.
    pub trust: String,
    /// The appraisal in one line.
    pub summary: String,
}

/// What an author signs: the record's place and its sealed body. Not the
/// key wrapper: wrappers are replaced on re-wrap (revocation, consent), and
/// each is bound to the body by its own AEAD.
pub fn author_message(patient: &str, record_id: &str, version: u64, body: &[u8]) -> Vec<u8> {
    let mut h = Sha256::new();
    for part in [
        b"asclepios record v1".as_slice(),
        patient.as_bytes(),
        record_id.as_bytes(),
    ] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    h.update(version.to_be_bytes());
    h.update(Sha256::digest(body));
    h.finalize().to_vec()
}

/// A record version as uploaded.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutRecord {
    /// The patient's pseudonym (routing metadata).
    pub patient: String,
    /// The record's id.
    pub record_id: String,
    /// Its version (1, 2, ...).
    pub version: u64,
    /// The sealed body (base64).
    pub body: String,
    /// The data-key wrapper (base64).
    pub wrapper: String,
    /// The author's signature over [`author_message`] (base64).
    pub author_signature: String,
}

/// A record version as returned.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordOut {
    /// The patient's pseudonym.
    pub patient: String,
    /// The record's id.
    pub record_id: String,
    /// Its version.
    pub version: u64,
    /// The author's identity.
    pub author: String,
    /// The sealed body (base64).
    pub body: String,
    /// The main data-key wrapper (base64); absent once the record is shredded.
    pub wrapper: Option<String>,
    /// The author's signature (base64).
    pub author_signature: String,
}

/// A response with its receipt.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WithReceipt<T> {
    /// The answer.
    pub result: T,
    /// The signed receipt of the request.
    pub receipt: Receipt,
}

/// Encrypted statistics values a data provider publishes.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatsValues {
    /// The study.
    pub study: String,
    /// The label (`period/feature/part`).
    pub label: String,
    /// `(slot, ciphertext)` pairs, the ciphertext a ristretto255 point (base64).
    pub values: Vec<(u64, String)>,
}

/// A study's labels, or one label's values.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatsValuesOut {
    /// The labels (the one asked for, or all).
    pub labels: Vec<String>,
    /// `(slot, ciphertext)` under the label asked for.
    pub values: Vec<(u64, String)>,
}

/// The patient and record id of a search reference, if it is one.
pub fn parse_search_ref(r: &[u8]) -> Option<(String, String)> {
    let s = std::str::from_utf8(r).ok()?;
    let (patient, record_id) = s.split_once('/')?;
    (asclepios_net::pki::check_identity_id(patient).is_ok()
        && asclepios_net::pki::check_identity_id(record_id).is_ok())
    .then(|| (patient.to_string(), record_id.to_string()))
}

/// How the search index names a record: `patient/record_id` (neither part
/// may contain `/`, see [`check_name`]).
pub fn search_ref(patient: &str, record_id: &str) -> Vec<u8> {
    format!("{patient}/{record_id}").into_bytes()
}

/// Index addresses to look up (from search tokens the authority issued).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexLookup {
    /// Addresses (base64), at most [`MAX_LOOKUP`].
    pub addrs: Vec<String>,
}

/// What the index holds at the looked-up addresses.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexValues {
    /// Sealed values (base64), `null` where there is none, in order.
    pub values: Vec<Option<String>>,
}

/// Most addresses one lookup may name.
pub const MAX_LOOKUP: usize = 1 << 16;

/// A request for a patient's record-naming key (`POST /v1/records/naming-key`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamingKeyRequest {
    /// The patient.
    pub patient: String,
}

/// A patient's record-naming key: what turns a FHIR reference into the
/// opaque id the record is stored under (`asclepios_crypto::naming`).
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamingKeyOut {
    /// The patient.
    pub patient: String,
    /// The key (hex, 32 bytes).
    pub key: String,
}

impl std::fmt::Debug for NamingKeyOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NamingKeyOut({}, <key redacted>)", self.patient)
    }
}

/// What an erasure destroyed: every version's body and every key wrapper of
/// the records erased, out of the store's files (see the README's erasure
/// section for what backups keep).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Erased {
    /// Records erased.
    pub records: u64,
    /// Record versions (sealed bodies) destroyed.
    pub versions: u64,
    /// Key wrappers destroyed.
    pub wrappers: u64,
}
