//! asclepios cryptography: the schemes that keep records confidential from the
//! servers that store them.
//!
//! * [`policy`]: the access-policy language (AND, OR, `k of`), parser and printer.
//! * [`lsss`]: policies as linear secret-sharing schemes (monotone span programs).
//! * [`abe`]: FAME ciphertext-policy attribute-based encryption (Agrawal–Chase,
//!   CCS 2017) over BLS12-381, used as a key-encapsulation mechanism.
//! * [`envelope`]: sealed records: a fresh data key per record version, an AEAD
//!   body, and a separable ABE wrapper of the data key.
//! * [`sse`]: Mitra dynamic searchable encryption (Ghareh Chamani et al.,
//!   CCS 2018) with forward and Type-II backward privacy, and compaction.
//! * [`ipfe`]: inner-product functional encryption over ristretto255,
//!   single-input (Agrawal–Libert–Stehlé 2016) and multi-client (Chotard et
//!   al. 2018), with a baby-step giant-step discrete-log table.
//! * [`dp`]: distributed discrete Laplace noise shares for the statistics.
//! * [`format`]: the tagged, versioned binary formats and their decode errors.
//!
//! This crate is pure: no I/O, no async, no global state beyond a cache of
//! public hash values. Randomness is passed in (`rand_core` 0.6, the version
//! `blstrs` uses). Secret keys are zeroized on drop and never printed by `Debug`.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod abe;
pub mod dp;
pub mod envelope;
pub mod format;
pub mod ipfe;
pub mod lsss;
pub mod naming;
pub mod policy;
pub mod sse;

pub use format::DecodeError;
pub use policy::{Policy, PolicyError};

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A policy was malformed or too large.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// Bytes could not be decoded.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The key's attributes do not satisfy the ciphertext's policy.
    #[error("access denied: the key's attributes do not satisfy the policy `{policy}`")]
    NotSatisfied {
        /// The policy in canonical form.
        policy: String,
    },
    /// An authenticated decryption failed: the object was modified, or belongs
    /// with another record, or the key does not open it.
    #[error("authentication failed for the {0}: it was modified, belongs to another record, or this key cannot open it")]
    Authentication(&'static str),
    /// An argument outside what the API accepts.
    #[error("invalid input: {0}")]
    Invalid(String),
}
