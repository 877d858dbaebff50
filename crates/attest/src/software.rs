//! `insecure-software`: the development evidence format.
//!
//! The "measurement" is SHA-256 over the SHA-256 of the running executable
//! and the SHA-256 of its configuration file; the report is signed with an
//! Ed25519 key kept on the same machine. Whoever can read that key can sign
//! any measurement, so this format shows the attestation flow working end to
//! end and catches a changed binary or configuration by accident, nothing
//! more. It is printed as INSECURE wherever it appears, an appraisal of it is
//! at best a warning, and a policy that does not list it refuses it.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::evidence::{Binding, Body, Evidence, SoftwareReport};
use crate::Error;

/// What the signature covers, after this prefix: binary digest, config
/// digest, report data.
const SIGNED_CONTEXT: &[u8] = b"asclepios insecure-software evidence v1\0";

/// The measurement that policies list: SHA-256(binary digest || config digest).
pub fn measurement(binary_sha256: &[u8; 32], config_sha256: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(binary_sha256);
    h.update(config_sha256);
    h.finalize().into()
}

fn signed_message(binary: &[u8; 32], config: &[u8; 32], report_data: &[u8; 64]) -> Vec<u8> {
    [SIGNED_CONTEXT, binary, config, report_data].concat()
}

/// Makes insecure-software evidence for `binding`.
pub fn sign(
    key: &SigningKey,
    binary_sha256: [u8; 32],
    config_sha256: [u8; 32],
    binding: &Binding,
) -> Evidence {
    let report_data = binding.report_data();
    let signature = key.sign(&signed_message(
        &binary_sha256,
        &config_sha256,
        &report_data,
    ));
    Evidence {
        freshness: binding.freshness,
        body: Body::InsecureSoftware(SoftwareReport {
            binary_sha256,
            config_sha256,
            report_data,
            signer: key.verifying_key().to_bytes(),
            signature: signature.to_bytes(),
        }),
    }
}

/// Checks the report's signature (strictly: no malleable or small-order
/// keys). Which signers are acceptable is the policy's question.
pub fn verify(report: &SoftwareReport) -> Result<(), Error> {
    let key = VerifyingKey::from_bytes(&report.signer)
        .map_err(|_| Error::Verify("the signer key is not an Ed25519 point".into()))?;
    if key.is_weak() {
        return Err(Error::Verify("the signer key has small order".into()));
    }
    key.verify_strict(
        &signed_message(
            &report.binary_sha256,
            &report.config_sha256,
            &report.report_data,
        ),
        &Signature::from_bytes(&report.signature),
    )
    .map_err(|_| Error::Verify("the insecure-software signature does not verify".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evidence::Freshness;

    #[test]
    fn signed_reports_verify_and_any_changed_byte_fails() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let binding = Binding::new(b"spki", Freshness::IssuedAt(5));
        let e = sign(&key, [1; 32], [2; 32], &binding);
        let Body::InsecureSoftware(r) = &e.body else {
            panic!("software body")
        };
        verify(r).unwrap();
        assert_eq!(r.report_data, binding.report_data());
        let bytes = e.to_bytes();
        // Header (6), freshness (9), format (1): then the signed report.
        for i in 16..bytes.len() {
            let mut m = bytes.clone();
            m[i] ^= 0x01;
            let Body::InsecureSoftware(r) = Evidence::from_bytes(&m).unwrap().body else {
                panic!("software body")
            };
            assert!(verify(&r).is_err(), "byte {i}");
        }
    }
}
