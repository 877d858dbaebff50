//! Encrypting to an identity: HPKE (RFC 9180, base mode, DHKEM(X25519,
//! HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305) to the X25519 form of the
//! identity's Ed25519 certificate key, as age does for ssh-ed25519 recipients.
//! The authority uses it to hand out ABE keys that only the identity holding
//! the certificate's private key can open, even if a proxy terminates TLS.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ed25519_dalek::pkcs8::DecodePrivateKey;
use ed25519_dalek::{SigningKey, VerifyingKey};
use hpke::aead::ChaCha20Poly1305;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, OpModeR, OpModeS, Serializable};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::Error;

type Kem = X25519HkdfSha256;

/// A payload sealed to one identity (JSON: base64 fields).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealedBox {
    /// The HPKE encapsulated key.
    pub enc: String,
    /// The ciphertext.
    pub ciphertext: String,
}

fn err(why: impl Into<String>) -> Error {
    Error::Certificate(why.into())
}

/// Seals `plaintext` to the identity whose certificate key is `ed25519_public`;
/// `context` (e.g. the identity id and purpose) must match when opening.
pub fn seal(
    ed25519_public: &[u8; 32],
    context: &[u8],
    plaintext: &[u8],
) -> Result<SealedBox, Error> {
    let montgomery = VerifyingKey::from_bytes(ed25519_public)
        .map_err(|_| err("not an Ed25519 public key"))?
        .to_montgomery();
    let pk = <Kem as hpke::Kem>::PublicKey::from_bytes(montgomery.as_bytes())
        .map_err(|_| err("not an X25519 public key"))?;
    let (enc, ct) = hpke::single_shot_seal::<ChaCha20Poly1305, HkdfSha256, Kem, _>(
        &OpModeS::Base,
        &pk,
        context,
        plaintext,
        b"",
        &mut rand_core::OsRng,
    )
    .map_err(|e| err(format!("HPKE: {e}")))?;
    Ok(SealedBox {
        enc: B64.encode(enc.to_bytes()),
        ciphertext: B64.encode(ct),
    })
}

/// Opens a box with the identity's PKCS#8 key (its certificate key).
pub fn open(
    key_pem: &str,
    context: &[u8],
    sealed: &SealedBox,
) -> Result<Zeroizing<Vec<u8>>, Error> {
    let signing =
        SigningKey::from_pkcs8_pem(key_pem).map_err(|e| err(format!("identity key: {e}")))?;
    let scalar = Zeroizing::new(signing.to_scalar_bytes());
    let sk = <Kem as hpke::Kem>::PrivateKey::from_bytes(scalar.as_slice())
        .map_err(|_| err("identity key is not usable for X25519"))?;
    let enc = B64
        .decode(&sealed.enc)
        .ok()
        .and_then(|b| <Kem as hpke::Kem>::EncappedKey::from_bytes(&b).ok())
        .ok_or_else(|| err("malformed HPKE encapsulation"))?;
    let ct = B64
        .decode(&sealed.ciphertext)
        .map_err(|_| err("malformed sealed box"))?;
    hpke::single_shot_open::<ChaCha20Poly1305, HkdfSha256, Kem>(
        &OpModeR::Base,
        &sk,
        &enc,
        context,
        &ct,
        b"",
    )
    .map(Zeroizing::new)
    .map_err(|_| err("the sealed box does not open with this key and context"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::CertificateAuthority;

    #[test]
    fn only_the_identity_opens_its_box() {
        let ca = CertificateAuthority::generate("t").unwrap();
        let alice = ca.issue_identity("alice").unwrap();
        let bob = ca.issue_identity("bob").unwrap();
        let signer = crate::signature::RequestSigner::from_pem("alice", &alice.key_pem).unwrap();
        let sealed = seal(&signer.public_key(), b"abe-key:alice", b"secret").unwrap();
        assert_eq!(
            open(&alice.key_pem, b"abe-key:alice", &sealed)
                .unwrap()
                .as_slice(),
            b"secret"
        );
        assert!(open(&alice.key_pem, b"abe-key:bob", &sealed).is_err());
        assert!(open(&bob.key_pem, b"abe-key:alice", &sealed).is_err());
    }
}
