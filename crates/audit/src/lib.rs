//! The asclepios audit log: a tamper-evident, append-only transparency log
//! (RFC 9162 §2.1 Merkle tree, C2SP signed checkpoints) of confidential
//! events.
//!
//! * [`merkle`]: tree hashing, proofs from stored subtree hashes, verifiers.
//! * [`note`]: C2SP signed notes (Ed25519) and `tlog-checkpoint` bodies.
//! * [`log`]: the log over any [`log::LogStore`] backend, with checkpoints that
//!   are never signed for a tree that does not extend the previous one.
//! * [`event`]: audit events, encrypted to auditors (HPKE) and to the patient
//!   concerned (CP-ABE) before they become leaves; FHIR `AuditEvent` export.
//! * [`cosignature`]: C2SP `tlog-cosignature` (Ed25519 `cosignature/v1`)
//!   keys, lines and the quorum a reader requires.
//! * [`witness`]: a C2SP `tlog-witness` that cosigns only consistent
//!   extensions of what it cosigned before, and how logs reach witnesses.
//! * [`receipt`]: signed receipts naming a request's leaf and a checkpoint
//!   that includes it, and the trail services write them from.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod cosignature;
pub mod event;
pub mod log;
pub mod merkle;
pub mod note;
pub mod receipt;
pub mod witness;

pub use cosignature::{CosignatureVerifier, Cosigner, WitnessPolicy};
pub use event::{
    Action, AuditEvent, AuditorPublicKey, AuditorSecretKey, KemCache, Outcome, SealedEvent, Written,
};
pub use log::{LinkedLeaf, Log, LogStore, Subject};
pub use merkle::{Hash, NodeId};
pub use note::{Checkpoint, NoteError, NoteSigner, NoteVerifier};
pub use receipt::{AuditTrail, Receipt};
pub use witness::{Witness, WitnessClient, WitnessError};

/// Errors of the audit log.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The storage backend failed.
    #[error("audit storage: {0}")]
    Storage(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A note, key or checkpoint was malformed or not signed.
    #[error(transparent)]
    Note(#[from] NoteError),
    /// Encryption or decryption of an event failed.
    #[error(transparent)]
    Crypto(#[from] asclepios_crypto::Error),
    /// An entry could not be decoded.
    #[error(transparent)]
    Decode(#[from] asclepios_crypto::DecodeError),
    /// The stored log contradicts a signed checkpoint: it was tampered with.
    #[error("the log is inconsistent: {0}")]
    Inconsistent(String),
    /// Too few witnesses cosigned a checkpoint (unreachable, or refusing
    /// for a reason other than the log's misbehaviour).
    #[error("witnesses: {0}")]
    Witness(String),
    /// Other writers kept appending; the append was not made.
    #[error("the log kept changing under this writer; retry the append")]
    Conflict,
    /// An argument outside what the API accepts.
    #[error("invalid input: {0}")]
    Invalid(String),
}
