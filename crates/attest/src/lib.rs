//! Remote attestation for asclepios, in the roles of IETF RATS (RFC 9334):
//! the key authority is an *Attester*; clients and the authority's own
//! component registry are *Relying Parties* with the *Verifier* in this crate.
//!
//! * [`evidence`]: the evidence envelope (format kind 0x0c) and how report
//!   data binds a TLS key and a freshness claim.
//! * [`software`]: `insecure-software`, a development format: a measurement
//!   of the running binary and its configuration, signed by a local key.
//!   It proves nothing about hardware, is named insecure wherever it
//!   appears, and is refused by every policy that asks for hardware.
//! * [`dcap`]: Intel SGX and TDX DCAP quotes, verified with `dcap-qvl`
//!   against collateral (PCK chain, CRLs, TCB info, QE identity) at a given
//!   time, fully offline.
//! * [`policy`]: reference values and the appraisal (AR4SI tiers:
//!   affirming, warning, contraindicated, each with its reasons).
//! * [`ratls`]: RA-TLS: the evidence travels in the TLS certificate as a
//!   RATS conceptual message wrapper (CMW) in the `id-pe-cmw` extension, and
//!   a rustls verifier checks it against the certificate's own key.
//! * [`attester`]: where evidence comes from: the development signer, a TDX
//!   guest's configfs-tsm interface, an SGX enclave's Gramine interface.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod attester;
pub mod dcap;
pub mod evidence;
pub mod policy;
pub mod ratls;
pub mod software;

pub use evidence::{Binding, Evidence, Format, Freshness};
pub use policy::{Appraisal, Policy, Trust};

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Evidence bytes that do not decode.
    #[error("evidence: {0}")]
    Decode(#[from] asclepios_crypto::format::DecodeError),
    /// Evidence that decodes but does not verify (signature, chain, collateral).
    #[error("evidence does not verify: {0}")]
    Verify(String),
    /// A policy file that cannot be used.
    #[error("attestation policy: {0}")]
    Policy(String),
    /// Evidence could not be produced on this machine.
    #[error("attester: {0}")]
    Attester(String),
    /// A certificate without evidence, or with a malformed extension.
    #[error("certificate: {0}")]
    Certificate(String),
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
