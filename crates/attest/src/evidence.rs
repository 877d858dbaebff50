//! The evidence envelope and its binding.
//!
//! Every evidence format carries 64 bytes of *report data* that the
//! attesting environment chose and the quote or signature covers. asclepios
//! fills them the same way for every format:
//!
//! ```text
//! report_data[0..32]  = SHA-256(SubjectPublicKeyInfo DER of the TLS key)
//! report_data[32..64] = SHA-256("asclepios attestation v1" || 0x00 || freshness)
//! freshness           = 0x01 || nonce (32 bytes)      a verifier's challenge
//!                     | 0x02 || issued_at (u64 BE)    seconds since the epoch
//! ```
//!
//! The first half is the RA-TLS binding (the layout Gramine's RA-TLS uses,
//! so other verifiers can read it); the second commits to a verifier's
//! nonce where the flow has one (a challenge over an open connection), or
//! to the time the measured code says it made the evidence (a certificate,
//! made before any verifier connects), which the policy's maximum age
//! bounds.
//!
//! The envelope (format kind 0x0c, after the `ASCL` header):
//!
//! ```text
//! freshness tag u8, nonce [32] | issued_at u64
//! format u8: 1 sgx-dcap, 2 tdx-dcap, 3 insecure-software
//! sgx-dcap / tdx-dcap: quote (u32 length, at most 64 KiB),
//!                      collateral present u8, collateral JSON (u32 length, at most 256 KiB)
//! insecure-software:   binary SHA-256 [32], config SHA-256 [32], report data [64],
//!                      signer Ed25519 key [32], signature [64]
//! ```
//!
//! Collateral is signed by Intel, so an attester may ship it with its quote
//! (saving the verifier a PCCS round trip); a verifier may supply its own.

use std::fmt;

use asclepios_crypto::format::{DecodeError, Kind, Reader, Writer};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Largest quote accepted (real quotes are 4 to 10 KiB).
pub const MAX_QUOTE_BYTES: usize = 64 << 10;
/// Largest collateral JSON accepted (real collateral is 15 to 30 KiB).
pub const MAX_COLLATERAL_BYTES: usize = 256 << 10;

/// The evidence formats.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// An Intel SGX DCAP (ECDSA) quote of an enclave.
    SgxDcap,
    /// An Intel TDX DCAP quote of a trust domain.
    TdxDcap,
    /// The development format: no hardware behind it. Insecure.
    InsecureSoftware,
}

impl Format {
    /// The name used in policies, configurations and messages.
    pub fn name(self) -> &'static str {
        match self {
            Format::SgxDcap => "sgx-dcap",
            Format::TdxDcap => "tdx-dcap",
            Format::InsecureSoftware => "insecure-software",
        }
    }

    /// Whether a hardware root of trust stands behind this format.
    pub fn is_hardware(self) -> bool {
        !matches!(self, Format::InsecureSoftware)
    }

    fn byte(self) -> u8 {
        match self {
            Format::SgxDcap => 1,
            Format::TdxDcap => 2,
            Format::InsecureSoftware => 3,
        }
    }

    /// Parses a format name.
    pub fn parse(name: &str) -> Option<Self> {
        [Format::SgxDcap, Format::TdxDcap, Format::InsecureSoftware]
            .into_iter()
            .find(|f| f.name() == name)
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())?;
        if !self.is_hardware() {
            f.write_str(" (INSECURE: development only, no hardware root of trust)")?;
        }
        Ok(())
    }
}

/// What makes evidence fresh.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Freshness {
    /// A verifier's challenge.
    Nonce([u8; 32]),
    /// When the attester made it, in seconds since the epoch.
    IssuedAt(u64),
}

impl Freshness {
    fn encode(&self) -> Vec<u8> {
        match self {
            Freshness::Nonce(n) => [&[1u8][..], n].concat(),
            Freshness::IssuedAt(t) => [&[2u8][..], &t.to_be_bytes()].concat(),
        }
    }
}

/// What the report data commits to: a TLS key and a freshness claim.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Binding {
    /// SHA-256 of the key's SubjectPublicKeyInfo (DER).
    pub key_sha256: [u8; 32],
    /// The freshness claim.
    pub freshness: Freshness,
}

/// Domain separation for the second half of the report data.
const FRESHNESS_CONTEXT: &[u8] = b"asclepios attestation v1\0";

impl Binding {
    /// The binding of the key with SubjectPublicKeyInfo `spki_der`.
    pub fn new(spki_der: &[u8], freshness: Freshness) -> Self {
        Binding {
            key_sha256: Sha256::digest(spki_der).into(),
            freshness,
        }
    }

    /// The 64 bytes of report data that carry this binding.
    pub fn report_data(&self) -> [u8; 64] {
        let mut out = [0u8; 64];
        out[..32].copy_from_slice(&self.key_sha256);
        let mut h = Sha256::new();
        h.update(FRESHNESS_CONTEXT);
        h.update(self.freshness.encode());
        out[32..].copy_from_slice(&h.finalize());
        out
    }
}

/// A quote with, optionally, the collateral to verify it.
#[derive(Clone, PartialEq, Eq)]
pub struct Quote {
    /// The raw DCAP quote.
    pub quote: Vec<u8>,
    /// The collateral as a PCCS serves it (dcap-qvl's JSON form).
    pub collateral: Option<String>,
}

impl fmt::Debug for Quote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Quote")
            .field("quote", &format_args!("<{} bytes>", self.quote.len()))
            .field(
                "collateral",
                &self
                    .collateral
                    .as_ref()
                    .map(|c| format!("<{} bytes>", c.len())),
            )
            .finish()
    }
}

/// The insecure development report: what the binary and configuration
/// hashed to, signed by a local key.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SoftwareReport {
    /// SHA-256 of the running executable.
    pub binary_sha256: [u8; 32],
    /// SHA-256 of its configuration file.
    pub config_sha256: [u8; 32],
    /// The binding (see the module docs).
    pub report_data: [u8; 64],
    /// The local Ed25519 key that signed it.
    pub signer: [u8; 32],
    /// The signature over the three fields above.
    pub signature: [u8; 64],
}

/// What the evidence is.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Body {
    /// An SGX DCAP quote.
    SgxDcap(Quote),
    /// A TDX DCAP quote.
    TdxDcap(Quote),
    /// The insecure development format.
    InsecureSoftware(SoftwareReport),
}

/// Attestation evidence.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Evidence {
    /// What makes it fresh (committed to in its report data).
    pub freshness: Freshness,
    /// The format-specific part.
    pub body: Body,
}

impl Evidence {
    /// Its format.
    pub fn format(&self) -> Format {
        match self.body {
            Body::SgxDcap(_) => Format::SgxDcap,
            Body::TdxDcap(_) => Format::TdxDcap,
            Body::InsecureSoftware(_) => Format::InsecureSoftware,
        }
    }

    /// The encoded envelope.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::new(Kind::AttestationEvidence);
        match self.freshness {
            Freshness::Nonce(n) => {
                w.raw(&[1]);
                w.raw(&n);
            }
            Freshness::IssuedAt(t) => {
                w.raw(&[2]);
                w.u64(t);
            }
        }
        w.raw(&[self.format().byte()]);
        match &self.body {
            Body::SgxDcap(q) | Body::TdxDcap(q) => {
                w.bytes32(&q.quote);
                match &q.collateral {
                    Some(c) => {
                        w.raw(&[1]);
                        w.bytes32(c.as_bytes());
                    }
                    None => w.raw(&[0]),
                }
            }
            Body::InsecureSoftware(r) => {
                w.raw(&r.binary_sha256);
                w.raw(&r.config_sha256);
                w.raw(&r.report_data);
                w.raw(&r.signer);
                w.raw(&r.signature);
            }
        }
        w.finish()
    }

    /// Decodes an envelope; never panics on untrusted bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes, Kind::AttestationEvidence)?;
        let freshness = match r.u8("freshness")? {
            1 => Freshness::Nonce(r.fixed("nonce")?),
            2 => Freshness::IssuedAt(r.u64("issued_at")?),
            _ => {
                return Err(DecodeError::Invalid {
                    what: "freshness",
                    why: "unknown kind".into(),
                })
            }
        };
        let body = match r.u8("format")? {
            f @ (1 | 2) => {
                let quote = r.bytes32("quote", MAX_QUOTE_BYTES)?.to_vec();
                let collateral = match r.u8("collateral present")? {
                    0 => None,
                    1 => {
                        let c = r.bytes32("collateral", MAX_COLLATERAL_BYTES)?;
                        Some(
                            std::str::from_utf8(c)
                                .map_err(|_| DecodeError::InvalidUtf8("collateral"))?
                                .to_string(),
                        )
                    }
                    _ => {
                        return Err(DecodeError::Invalid {
                            what: "collateral flag",
                            why: "not 0 or 1".into(),
                        })
                    }
                };
                let q = Quote { quote, collateral };
                if f == 1 {
                    Body::SgxDcap(q)
                } else {
                    Body::TdxDcap(q)
                }
            }
            3 => Body::InsecureSoftware(SoftwareReport {
                binary_sha256: r.fixed("binary digest")?,
                config_sha256: r.fixed("config digest")?,
                report_data: r.fixed("report data")?,
                signer: r.fixed("signer")?,
                signature: r.fixed("signature")?,
            }),
            _ => {
                return Err(DecodeError::Invalid {
                    what: "format",
                    why: "unknown".into(),
                })
            }
        };
        r.finish()?;
        Ok(Evidence { freshness, body })
    }
}

/// What verified evidence says, in one shape for every format.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Claims {
    /// The format it came in.
    pub format: Format,
    /// MRENCLAVE (SGX), MRTD (TDX) or the software measurement.
    pub measurement: Vec<u8>,
    /// MRSIGNER (SGX) or the development signer's key; none for TDX.
    pub signer: Option<Vec<u8>>,
    /// The enclave's security version (SGX).
    pub isv_svn: Option<u16>,
    /// The platform's TCB status from Intel's TCB info (DCAP only).
    pub tcb_status: Option<String>,
    /// Intel security advisories that apply to the platform.
    pub advisory_ids: Vec<String>,
    /// Whether the enclave or trust domain runs in debug mode (its memory
    /// is readable from outside).
    pub debug: bool,
    /// The report data (see the module docs).
    pub report_data: [u8; 64],
    /// Further measurements worth showing (RTMRs, binary digest, ...).
    pub details: Vec<(&'static str, String)>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn software() -> Evidence {
        Evidence {
            freshness: Freshness::IssuedAt(1_700_000_000),
            body: Body::InsecureSoftware(SoftwareReport {
                binary_sha256: [1; 32],
                config_sha256: [2; 32],
                report_data: [3; 64],
                signer: [4; 32],
                signature: [5; 64],
            }),
        }
    }

    #[test]
    fn envelopes_round_trip() {
        let quote = Evidence {
            freshness: Freshness::Nonce([9; 32]),
            body: Body::TdxDcap(Quote {
                quote: vec![7; 100],
                collateral: Some("{}".into()),
            }),
        };
        for e in [software(), quote] {
            assert_eq!(Evidence::from_bytes(&e.to_bytes()).unwrap(), e);
        }
    }

    #[test]
    fn the_binding_separates_keys_and_freshness() {
        let a = Binding::new(b"key a", Freshness::IssuedAt(1)).report_data();
        let b = Binding::new(b"key b", Freshness::IssuedAt(1)).report_data();
        let c = Binding::new(b"key a", Freshness::IssuedAt(2)).report_data();
        let d = Binding::new(b"key a", Freshness::Nonce([0; 32])).report_data();
        assert_ne!(a[..32], b[..32]);
        assert_eq!(a[32..], b[32..]);
        assert_eq!(a[..32], c[..32]);
        assert_ne!(a[32..], c[32..]);
        assert_ne!(a[32..], d[32..]);
        assert_eq!(a[..32], Sha256::digest(b"key a")[..]);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = Evidence::from_bytes(&bytes);
            let mut valid = software().to_bytes();
            let n = valid.len();
            for (i, b) in bytes.iter().enumerate().take(8) {
                valid[(*b as usize * 7 + i) % n] ^= b | 1;
            }
            let _ = Evidence::from_bytes(&valid);
            let _ = Evidence::from_bytes(&valid[..bytes.len() % n]);
        }
    }
}
