//! RA-TLS: attestation evidence inside the TLS certificate.
//!
//! The attested component makes a fresh TLS key inside its trusted
//! environment, has evidence made whose report data commits to that key's
//! SubjectPublicKeyInfo (see [`crate::evidence`]), and puts the evidence in
//! its certificate. A verifier that completes the handshake knows the peer
//! holds the key (TLS proves possession), and the evidence says which
//! measured code made the key. A relay that forwards someone else's
//! certificate cannot finish the handshake; one that presents its own key
//! has evidence bound to the wrong key.
//!
//! Encoding: the certificate extension `id-pe-cmw` (1.3.6.1.5.5.7.1.35, the
//! IANA PKIX arc for a RATS conceptual message wrapper), not critical. Its
//! value is `CMW ::= CHOICE { json UTF8String, cbor OCTET STRING }`; we use
//! the JSON record form:
//!
//! ```text
//! UTF8String '["application/vnd.asclepios.attestation-evidence", "<base64url(envelope)>", 4]'
//! ```
//!
//! where 4 is the CMW indicator for evidence and the envelope is the
//! format-0x0c bytes of [`Evidence`].

use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, OtherError, SignatureScheme};
use sha2::{Digest, Sha256};

use crate::evidence::Evidence;
use crate::policy::{appraise, Appraisal, Expected, Policy};
use crate::Error;

/// `id-pe-cmw`: the certificate extension that carries the evidence.
pub const CMW_EXTENSION_OID: [u64; 9] = [1, 3, 6, 1, 5, 5, 7, 1, 35];
/// The same, dotted.
pub const CMW_EXTENSION_OID_TEXT: &str = "1.3.6.1.5.5.7.1.35";
/// The CMW type of our evidence envelope.
pub const EVIDENCE_MEDIA_TYPE: &str = "application/vnd.asclepios.attestation-evidence";
/// The CMW indicator bit for evidence.
const CMW_IND_EVIDENCE: u64 = 4;
/// Largest extension value accepted.
const MAX_EXTENSION_BYTES: usize = 512 << 10;

/// The DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410).
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// The SubjectPublicKeyInfo (DER) of an Ed25519 key.
pub fn ed25519_spki(key: &[u8; 32]) -> Vec<u8> {
    [&ED25519_SPKI_PREFIX[..], key].concat()
}

/// The SHA-256 of a certificate's SubjectPublicKeyInfo.
pub fn spki_sha256(cert_der: &[u8]) -> Result<[u8; 32], Error> {
    certificate_parts(cert_der).map(|(key, _)| key)
}

/// The extension value (DER) that carries `evidence`.
pub fn extension_value(evidence: &Evidence) -> Vec<u8> {
    let record = serde_json::json!([
        EVIDENCE_MEDIA_TYPE,
        B64URL.encode(evidence.to_bytes()),
        CMW_IND_EVIDENCE
    ])
    .to_string();
    let mut out = vec![0x0c]; // UTF8String
    let len = record.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(record.as_bytes());
    out
}

/// Reads a DER UTF8String, refusing non-minimal lengths and trailing bytes.
fn der_utf8_string(der: &[u8]) -> Result<&str, Error> {
    let bad = |why: &str| Error::Certificate(format!("CMW extension: {why}"));
    let (&tag, rest) = der.split_first().ok_or_else(|| bad("empty"))?;
    if tag != 0x0c {
        return Err(bad("not the JSON (UTF8String) form"));
    }
    let (&first, rest) = rest.split_first().ok_or_else(|| bad("no length"))?;
    let (len, body) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 3 || rest.len() < n {
            return Err(bad("bad length"));
        }
        let len = rest[..n].iter().fold(0usize, |a, b| (a << 8) | *b as usize);
        if rest[0] == 0 || len < 0x80 {
            return Err(bad("non-minimal length"));
        }
        (len, &rest[n..])
    };
    if len != body.len() || len > MAX_EXTENSION_BYTES {
        return Err(bad("length does not match the value"));
    }
    std::str::from_utf8(body).map_err(|_| bad("not UTF-8"))
}

/// The evidence envelope in a certificate's `id-pe-cmw` extension, if any.
pub fn evidence_from_certificate(cert_der: &[u8]) -> Result<Option<Vec<u8>>, Error> {
    certificate_parts(cert_der)?.1.transpose()
}

/// One parse of a certificate: the SHA-256 of its SubjectPublicKeyInfo,
/// and the evidence in its `id-pe-cmw` extension if it has one (or why
/// that extension is malformed).
#[allow(clippy::type_complexity)]
fn certificate_parts(cert_der: &[u8]) -> Result<([u8; 32], Option<Result<Vec<u8>, Error>>), Error> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| Error::Certificate(e.to_string()))?;
    let key = Sha256::digest(cert.public_key().raw).into();
    let evidence = cert
        .extensions()
        .iter()
        .find(|e| e.oid.to_id_string() == CMW_EXTENSION_OID_TEXT)
        .map(|ext| cmw_evidence(ext.value));
    Ok((key, evidence))
}

/// The evidence envelope in a `id-pe-cmw` extension value.
fn cmw_evidence(value: &[u8]) -> Result<Vec<u8>, Error> {
    let text = der_utf8_string(value)?;
    let record: Vec<serde_json::Value> =
        serde_json::from_str(text).map_err(|e| Error::Certificate(format!("CMW record: {e}")))?;
    match record.as_slice() {
        [serde_json::Value::String(t), serde_json::Value::String(v), rest @ ..]
            if t == EVIDENCE_MEDIA_TYPE && rest.len() <= 1 =>
        {
            B64URL
                .decode(v)
                .map_err(|e| Error::Certificate(format!("CMW value: {e}")))
        }
        _ => Err(Error::Certificate(format!(
            "the CMW record is not of type {EVIDENCE_MEDIA_TYPE}"
        ))),
    }
}

/// Appraises the evidence a certificate carries against its own key.
pub fn appraise_certificate(
    cert_der: &[u8],
    policy: &Policy,
    now: u64,
    collateral: Option<&str>,
) -> Appraisal {
    appraise_certificate_keyed(cert_der, policy, now, collateral).0
}

/// [`appraise_certificate`], with the certificate's key hash when it parsed.
fn appraise_certificate_keyed(
    cert_der: &[u8],
    policy: &Policy,
    now: u64,
    collateral: Option<&str>,
) -> (Appraisal, Option<[u8; 32]>) {
    let refused = |why: String| Appraisal::refused(None, why);
    let (key_sha256, evidence) = match certificate_parts(cert_der) {
        Ok(parts) => parts,
        Err(e) => return (refused(e.to_string()), None),
    };
    let appraisal = match evidence {
        Some(Ok(evidence)) => appraise(
            &evidence,
            &Expected {
                key_sha256: Some(key_sha256),
                nonce: None,
            },
            policy,
            now,
            collateral,
        ),
        None => refused(format!(
            "the certificate carries no attestation evidence (no {CMW_EXTENSION_OID_TEXT} extension)"
        )),
        Some(Err(e)) => refused(e.to_string()),
    };
    (appraisal, Some(key_sha256))
}

/// The last appraisal a verifier made, with the key it was for.
#[derive(Clone, Debug)]
pub struct Seen {
    /// The verdict.
    pub appraisal: Appraisal,
    /// SHA-256 of the server certificate's SubjectPublicKeyInfo.
    pub key_sha256: [u8; 32],
}

/// A rustls server-certificate verifier that checks the chain with `inner`
/// (the deployment CA) and then appraises the leaf's evidence. With
/// `require`, a contraindicated appraisal fails the handshake; without, the
/// verdict is only kept for the caller to show.
pub struct AttestingVerifier {
    inner: Arc<dyn ServerCertVerifier>,
    policy: Policy,
    require: bool,
    seen: Mutex<Option<Seen>>,
}

impl std::fmt::Debug for AttestingVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttestingVerifier")
            .field("require", &self.require)
            .finish_non_exhaustive()
    }
}

impl AttestingVerifier {
    /// A verifier over `inner` with `policy`.
    pub fn new(inner: Arc<dyn ServerCertVerifier>, policy: Policy, require: bool) -> Self {
        AttestingVerifier {
            inner,
            policy,
            require,
            seen: Mutex::new(None),
        }
    }

    /// The appraisal of the last certificate this verifier saw.
    pub fn last(&self) -> Option<Seen> {
        self.seen.lock().ok().and_then(|s| s.clone())
    }

    /// The policy it appraises with.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }
}

impl ServerCertVerifier for AttestingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        let (appraisal, key_sha256) =
            appraise_certificate_keyed(end_entity.as_ref(), &self.policy, now.as_secs(), None);
        let key_sha256 = key_sha256.unwrap_or([0; 32]);
        let acceptable = appraisal.is_acceptable();
        let summary = appraisal.summary();
        if let Ok(mut seen) = self.seen.lock() {
            *seen = Some(Seen {
                appraisal,
                key_sha256,
            });
        }
        if self.require && !acceptable {
            return Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                OtherError(Arc::new(Error::Certificate(format!(
                    "the server's attestation is refused: {summary}"
                )))),
            )));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evidence::{Binding, Freshness};

    #[test]
    fn extension_values_round_trip_and_malformed_ones_are_refused() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
        let e = crate::software::sign(
            &key,
            [1; 32],
            [2; 32],
            &Binding::new(b"k", Freshness::IssuedAt(9)),
        );
        let value = extension_value(&e);
        let text = der_utf8_string(&value).unwrap();
        assert!(text.starts_with("[\"application/vnd.asclepios.attestation-evidence\""));
        for bad in [
            &value[..value.len() - 1],
            &[0x04, 0x01, 0x00][..],
            &[0x0c, 0x81, 0x05, b'a', b'b', b'c', b'd', b'e'][..],
            &[0x0c][..],
        ] {
            assert!(der_utf8_string(bad).is_err(), "{bad:?}");
        }
    }
}
