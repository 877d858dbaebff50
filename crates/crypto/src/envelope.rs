//! Sealed records.
//!
//! A record version is sealed under a fresh 256-bit data key (DEK) with
//! XChaCha20-Poly1305; the DEK is wrapped separately under an access policy with
//! the FAME KEM. The two parts are stored apart so a DEK can be re-wrapped for a
//! new policy (consent change, revocation) without touching the body, and all
//! its wrappers destroyed to crypto-shred the record.
//!
//! ```text
//! SealedBody  = header | record id | version | policy hash | nonce(24) | AEAD(DEK, payload; aad = header..policy hash)
//! KeyWrapper  = header | ABE ciphertext | body binding(32) | nonce(24) | AEAD(KEM key, DEK; aad = header | SHA-256(ABE ct) | body binding)
//! Envelope    = header | SealedBody | KeyWrapper
//! ```
//!
//! The body's associated data binds the record id, version and the hash of the
//! policy the author sealed under. The wrapper binds its whole ABE ciphertext
//! (policy included) and the body it belongs to (`body binding` = SHA-256 of the
//! body's associated data), so neither part can be swapped between records or
//! edited without the open failing. After a re-wrap the wrapper's policy may
//! differ from the body's original policy hash; [`Opened`] reports both.

use std::fmt;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand_core::{CryptoRng, RngCore};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::abe::{Ciphertext, KemKey, PublicKey, UserKey};
use crate::format::{DecodeError, Kind, Reader, Writer};
use crate::policy::Policy;
use crate::Error;

/// Largest payload that can be sealed (16 MiB).
pub const MAX_PAYLOAD_BYTES: usize = 16 * 1024 * 1024;
/// Longest record id, in bytes.
pub const MAX_RECORD_ID_BYTES: usize = 256;
const MAX_ABE_CIPHERTEXT_BYTES: usize = 1 << 20;
const TAG_BYTES: usize = 16;

/// What a sealed body is bound to: the record and its version.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct RecordContext {
    /// The record's id (at most [`MAX_RECORD_ID_BYTES`] bytes).
    pub record_id: String,
    /// The record's version, starting at 1.
    pub version: u64,
}

/// SHA-256 of a policy's canonical text.
pub fn policy_hash(policy: &Policy) -> [u8; 32] {
    Sha256::digest(policy.to_string().as_bytes()).into()
}

/// A record's data key. Zeroized on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct DataKey([u8; 32]);

impl DataKey {
    /// A fresh random key.
    pub fn generate(rng: &mut (impl RngCore + CryptoRng)) -> Self {
        let mut k = [0u8; 32];
        rng.fill_bytes(&mut k);
        DataKey(k)
    }

    /// The key bytes, for wrapping it to further recipients (e.g. with HPKE).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// A key received from a further recipient's unwrap.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        DataKey(bytes)
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey(<redacted>)")
    }
}

/// The AEAD-sealed body of one record version.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SealedBody {
    context: RecordContext,
    policy_hash: [u8; 32],
    nonce: [u8; 24],
    ciphertext: Vec<u8>,
}

/// The ABE wrapper of a record's data key.
#[derive(Clone, PartialEq, Debug)]
pub struct KeyWrapper {
    abe: Ciphertext,
    abe_bytes: Vec<u8>,
    body_binding: [u8; 32],
    nonce: [u8; 24],
    wrapped: [u8; 32 + TAG_BYTES],
}

/// A sealed body with its key wrapper.
#[derive(Clone, PartialEq, Debug)]
pub struct Envelope {
    /// The sealed body.
    pub body: SealedBody,
    /// The data key's wrapper.
    pub wrapper: KeyWrapper,
}

/// The result of opening an envelope.
pub struct Opened {
    /// The plaintext payload (zeroized on drop).
    pub payload: Zeroizing<Vec<u8>>,
    /// The record and version the body is bound to.
    pub context: RecordContext,
    /// The policy of the wrapper that opened it.
    pub policy: Policy,
    /// Whether the wrapper's policy is the one the body was sealed under (false
    /// after a re-wrap to another policy).
    pub policy_is_original: bool,
}

impl fmt::Debug for Opened {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Opened")
            .field("payload", &format_args!("<{} bytes>", self.payload.len()))
            .field("context", &self.context)
            .field("policy", &self.policy.to_string())
            .finish()
    }
}

fn check_context(context: &RecordContext) -> Result<(), Error> {
    if context.record_id.is_empty() || context.record_id.len() > MAX_RECORD_ID_BYTES {
        return Err(Error::Invalid(format!(
            "record id must be 1 to {MAX_RECORD_ID_BYTES} bytes"
        )));
    }
    Ok(())
}

/// Seals `payload` for `policy`, bound to `context`.
pub fn seal(
    mpk: &PublicKey,
    policy: &Policy,
    context: &RecordContext,
    payload: &[u8],
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<Envelope, Error> {
    let dek = DataKey::generate(rng);
    seal_with_key(mpk, policy, context, payload, &dek, rng)
}

/// Seals `payload` like [`seal_with_key`], wrapping the key under an
/// encapsulation made earlier for `abe`'s policy (see
/// [`KeyWrapper::wrap_encapsulated`]).
pub fn seal_encapsulated(
    abe: &Ciphertext,
    kem_key: &KemKey,
    context: &RecordContext,
    payload: &[u8],
    dek: &DataKey,
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<Envelope, Error> {
    let body = seal_body(abe.policy(), context, payload, dek, rng)?;
    let wrapper = KeyWrapper::wrap_encapsulated(abe, kem_key, &body, dek, rng);
    Ok(Envelope { body, wrapper })
}

/// Seals `payload` like [`seal`] under a data key the caller chose, so the
/// caller can also hand the key to recipients outside the ABE policy (the
/// audit log wraps it to auditors with HPKE). The key must be fresh.
pub fn seal_with_key(
    mpk: &PublicKey,
    policy: &Policy,
    context: &RecordContext,
    payload: &[u8],
    dek: &DataKey,
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<Envelope, Error> {
    let body = seal_body(policy, context, payload, dek, rng)?;
    let wrapper = KeyWrapper::wrap(mpk, policy, &body, dek, rng);
    Ok(Envelope { body, wrapper })
}

/// The AEAD-sealed body alone.
fn seal_body(
    policy: &Policy,
    context: &RecordContext,
    payload: &[u8],
    dek: &DataKey,
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<SealedBody, Error> {
    check_context(context)?;
    if payload.len() > MAX_PAYLOAD_BYTES {
        return Err(Error::Invalid(format!(
            "payload of {} bytes exceeds the {MAX_PAYLOAD_BYTES}-byte limit",
            payload.len()
        )));
    }
    let mut nonce = [0u8; 24];
    rng.fill_bytes(&mut nonce);
    let mut body = SealedBody {
        context: context.clone(),
        policy_hash: policy_hash(policy),
        nonce,
        ciphertext: Vec::new(),
    };
    let aad = body.associated_data();
    body.ciphertext = XChaCha20Poly1305::new((&dek.0).into())
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: payload,
                aad: &aad,
            },
        )
        .map_err(|_| Error::Invalid("payload too large for the AEAD".into()))?;
    Ok(body)
}

/// Opens an envelope with a user key.
pub fn open(key: &UserKey, envelope: &Envelope) -> Result<Opened, Error> {
    let dek = envelope.wrapper.unwrap_key(key, &envelope.body)?;
    let payload = envelope.body.open(&dek)?;
    let policy = envelope.wrapper.abe.policy().clone();
    Ok(Opened {
        payload,
        context: envelope.body.context.clone(),
        policy_is_original: policy_hash(&policy) == envelope.body.policy_hash,
        policy,
    })
}

impl SealedBody {
    /// The record and version this body is bound to.
    pub fn context(&self) -> &RecordContext {
        &self.context
    }

    /// Hash of the policy the body was originally sealed under.
    pub fn policy_hash(&self) -> &[u8; 32] {
        &self.policy_hash
    }

    /// The header fields up to the policy hash: the AEAD's associated data.
    fn associated_data(&self) -> Vec<u8> {
        let mut w = Writer::new(Kind::SealedBody);
        w.bytes16(self.context.record_id.as_bytes());
        w.u64(self.context.version);
        w.raw(&self.policy_hash);
        w.finish()
    }

    /// SHA-256 of the associated data: what a wrapper commits to.
    pub fn binding(&self) -> [u8; 32] {
        Sha256::digest(self.associated_data()).into()
    }

    /// Decrypts the body with its data key.
    pub fn open(&self, dek: &DataKey) -> Result<Zeroizing<Vec<u8>>, Error> {
        XChaCha20Poly1305::new((&dek.0).into())
            .decrypt(
                XNonce::from_slice(&self.nonce),
                Payload {
                    msg: &self.ciphertext,
                    aad: &self.associated_data(),
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| Error::Authentication("sealed body"))
    }

    /// Serializes the body.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = self.associated_data();
        out.extend_from_slice(&self.nonce);
        out.extend_from_slice(&(self.ciphertext.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.ciphertext);
        out
    }

    /// Parses a body.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes, Kind::SealedBody)?;
        let record_id = r.str16("record id", MAX_RECORD_ID_BYTES)?.to_string();
        let version = r.u64("version")?;
        let policy_hash = r.fixed("policy hash")?;
        let nonce = r.fixed("nonce")?;
        let ciphertext = r
            .bytes32("body ciphertext", MAX_PAYLOAD_BYTES + TAG_BYTES)?
            .to_vec();
        if ciphertext.len() < TAG_BYTES {
            return Err(DecodeError::Truncated {
                what: "body ciphertext",
                needed: TAG_BYTES,
                left: ciphertext.len(),
            });
        }
        r.finish()?;
        Ok(SealedBody {
            context: RecordContext { record_id, version },
            policy_hash,
            nonce,
            ciphertext,
        })
    }
}

impl KeyWrapper {
    /// Wraps `dek` for `policy`, committing to `body`.
    pub fn wrap(
        mpk: &PublicKey,
        policy: &Policy,
        body: &SealedBody,
        dek: &DataKey,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Self {
        let (abe, kem_key) = mpk.encapsulate(policy, rng);
        Self::wrap_encapsulated(&abe, &kem_key, body, dek, rng)
    }

    /// Wraps `dek` under an encapsulation made earlier for the same policy.
    /// A service that seals many small objects for one policy (audit events
    /// about one patient) reuses one encapsulation for a while: each wrap
    /// still has its own random 192-bit nonce and binds its own body, so the
    /// KEM key's reuse is safe; what it saves is the pairing-group work.
    pub fn wrap_encapsulated(
        abe: &Ciphertext,
        kem_key: &KemKey,
        body: &SealedBody,
        dek: &DataKey,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Self {
        let abe = abe.clone();
        let abe_bytes = abe.to_bytes();
        let body_binding = body.binding();
        let mut nonce = [0u8; 24];
        rng.fill_bytes(&mut nonce);
        let aad = Self::associated_data(&abe_bytes, &body_binding);
        let sealed = XChaCha20Poly1305::new(kem_key.as_bytes().into())
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &dek.0,
                    aad: &aad,
                },
            )
            .expect("a 32-byte message always encrypts");
        let wrapped = sealed.try_into().expect("32 bytes + 16-byte tag");
        KeyWrapper {
            abe,
            abe_bytes,
            body_binding,
            nonce,
            wrapped,
        }
    }

    /// Replaces this wrapper by one for `new_policy`, using a key that can open
    /// it. Only the wrapper changes; the body stays as it is.
    pub fn rewrap(
        &self,
        key: &UserKey,
        body: &SealedBody,
        mpk: &PublicKey,
        new_policy: &Policy,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<Self, Error> {
        let dek = self.unwrap_key(key, body)?;
        Ok(Self::wrap(mpk, new_policy, body, &dek, rng))
    }

    /// Whether this wrapper belongs with `body` (its binding matches).
    pub fn binds(&self, body: &SealedBody) -> bool {
        self.body_binding == body.binding()
    }

    /// Reads only the policy of an encoded wrapper (see
    /// [`Ciphertext::peek_policy`]).
    pub fn peek_policy(bytes: &[u8]) -> Result<Policy, DecodeError> {
        let mut r = Reader::new(bytes, Kind::KeyWrapper)?;
        Ciphertext::peek_policy(r.bytes32("ABE ciphertext", MAX_ABE_CIPHERTEXT_BYTES)?)
    }

    /// The policy the data key is wrapped under.
    pub fn policy(&self) -> &Policy {
        self.abe.policy()
    }

    fn associated_data(abe_bytes: &[u8], body_binding: &[u8; 32]) -> Vec<u8> {
        let mut w = Writer::new(Kind::KeyWrapper);
        w.raw(&Sha256::digest(abe_bytes));
        w.raw(body_binding);
        w.finish()
    }

    /// Recovers the data key, checking that this wrapper belongs to `body`.
    pub fn unwrap_key(&self, key: &UserKey, body: &SealedBody) -> Result<DataKey, Error> {
        if self.body_binding != body.binding() {
            return Err(Error::Authentication("key wrapper"));
        }
        self.unwrap_with(&self.decapsulate(key)?, body)
    }

    /// SHA-256 of the ABE ciphertext: equal for wrappers made under one
    /// encapsulation (see [`KeyWrapper::wrap_encapsulated`]), whose KEM key
    /// a reader may then decapsulate once and reuse.
    pub fn encapsulation_id(&self) -> [u8; 32] {
        Sha256::digest(&self.abe_bytes).into()
    }

    /// The KEM key of this wrapper's encapsulation (the pairing work).
    pub fn decapsulate(&self, key: &UserKey) -> Result<KemKey, Error> {
        key.decapsulate(&self.abe)
    }

    /// Recovers the data key with the KEM key of this wrapper's
    /// encapsulation, checking that this wrapper belongs to `body`.
    pub fn unwrap_with(&self, kem_key: &KemKey, body: &SealedBody) -> Result<DataKey, Error> {
        EncodedWrapper {
            abe_bytes: &self.abe_bytes,
            body_binding: self.body_binding,
            nonce: self.nonce,
            wrapped: self.wrapped,
        }
        .unwrap_with(kem_key, body)
    }
}

/// A key wrapper read without decoding its ABE ciphertext, whose group
/// elements (point decompression, subgroup checks) are most of the cost of
/// reading one: enough to tell its encapsulation and to unwrap with a KEM
/// key already decapsulated from it. [`KeyWrapper::from_bytes`] decodes in
/// full.
#[derive(Clone, Copy, Debug)]
pub struct EncodedWrapper<'a> {
    abe_bytes: &'a [u8],
    body_binding: [u8; 32],
    nonce: [u8; 24],
    wrapped: [u8; 32 + TAG_BYTES],
}

impl<'a> EncodedWrapper<'a> {
    /// Splits an encoded [`KeyWrapper`] (lengths checked, nothing decoded).
    pub fn parse(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes, Kind::KeyWrapper)?;
        let abe_bytes = r.bytes32("ABE ciphertext", MAX_ABE_CIPHERTEXT_BYTES)?;
        let body_binding = r.fixed("body binding")?;
        let nonce = r.fixed("nonce")?;
        let wrapped = r.fixed("wrapped key")?;
        r.finish()?;
        Ok(EncodedWrapper {
            abe_bytes,
            body_binding,
            nonce,
            wrapped,
        })
    }

    /// See [`KeyWrapper::encapsulation_id`].
    pub fn encapsulation_id(&self) -> [u8; 32] {
        Sha256::digest(self.abe_bytes).into()
    }

    /// See [`KeyWrapper::unwrap_with`].
    pub fn unwrap_with(&self, kem_key: &KemKey, body: &SealedBody) -> Result<DataKey, Error> {
        if self.body_binding != body.binding() {
            return Err(Error::Authentication("key wrapper"));
        }
        let aad = KeyWrapper::associated_data(self.abe_bytes, &self.body_binding);
        let mut dek = XChaCha20Poly1305::new(kem_key.as_bytes().into())
            .decrypt(
                XNonce::from_slice(&self.nonce),
                Payload {
                    msg: &self.wrapped,
                    aad: &aad,
                },
            )
            .map_err(|_| Error::Authentication("key wrapper"))?;
        let mut out = [0u8; 32];
        out.copy_from_slice(&dek);
        dek.zeroize();
        Ok(DataKey(out))
    }
}

impl KeyWrapper {
    /// Serializes the wrapper.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::new(Kind::KeyWrapper);
        w.bytes32(&self.abe_bytes);
        w.raw(&self.body_binding);
        w.raw(&self.nonce);
        w.raw(&self.wrapped);
        w.finish()
    }

    /// Parses a wrapper, decoding its ABE ciphertext in full.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let encoded = EncodedWrapper::parse(bytes)?;
        Ok(KeyWrapper {
            abe: Ciphertext::from_bytes(encoded.abe_bytes)?,
            abe_bytes: encoded.abe_bytes.to_vec(),
            body_binding: encoded.body_binding,
            nonce: encoded.nonce,
            wrapped: encoded.wrapped,
        })
    }
}

impl Envelope {
    /// Serializes body and wrapper together.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::new(Kind::Envelope);
        w.bytes32(&self.body.to_bytes());
        w.bytes32(&self.wrapper.to_bytes());
        w.finish()
    }

    /// Parses an envelope.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes, Kind::Envelope)?;
        let body = SealedBody::from_bytes(r.bytes32("sealed body", MAX_PAYLOAD_BYTES + 1024)?)?;
        let wrapper =
            KeyWrapper::from_bytes(r.bytes32("key wrapper", MAX_ABE_CIPHERTEXT_BYTES + 1024)?)?;
        r.finish()?;
        Ok(Envelope { body, wrapper })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abe::setup;
    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    fn ctx(id: &str, version: u64) -> RecordContext {
        RecordContext {
            record_id: id.into(),
            version,
        }
    }

    #[test]
    fn seal_open_and_rewrap() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let (mpk, msk) = setup(&mut rng);
        let doctor = msk.keygen(&["role:doctor"], &mut rng).unwrap();
        let nurse = msk.keygen(&["role:nurse"], &mut rng).unwrap();
        let policy = Policy::parse("role:doctor or patient:p1").unwrap();
        let env = seal(
            &mpk,
            &policy,
            &ctx("obs-1", 1),
            b"{\"resourceType\":\"Observation\"}",
            &mut rng,
        )
        .unwrap();
        let env = Envelope::from_bytes(&env.to_bytes()).unwrap();
        let opened = open(&doctor, &env).unwrap();
        assert_eq!(&opened.payload[..], b"{\"resourceType\":\"Observation\"}");
        assert_eq!(opened.context, ctx("obs-1", 1));
        assert!(opened.policy_is_original);
        assert!(matches!(
            open(&nurse, &env),
            Err(Error::NotSatisfied { .. })
        ));

        // Re-wrap for a policy that admits nurses: the body is untouched.
        let new_policy = Policy::parse("role:doctor or role:nurse").unwrap();
        let wrapper = env
            .wrapper
            .rewrap(&doctor, &env.body, &mpk, &new_policy, &mut rng)
            .unwrap();
        let env2 = Envelope {
            body: env.body.clone(),
            wrapper,
        };
        let opened = open(&nurse, &env2).unwrap();
        assert!(!opened.policy_is_original);
        assert_eq!(opened.policy, new_policy);
    }

    #[test]
    fn wrappers_cannot_move_between_records() {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let (mpk, msk) = setup(&mut rng);
        let key = msk.keygen(&["a"], &mut rng).unwrap();
        let policy = Policy::parse("a").unwrap();
        let e1 = seal(&mpk, &policy, &ctx("r1", 1), b"one", &mut rng).unwrap();
        let e2 = seal(&mpk, &policy, &ctx("r2", 1), b"two", &mut rng).unwrap();
        let swapped = Envelope {
            body: e1.body.clone(),
            wrapper: e2.wrapper.clone(),
        };
        assert!(matches!(
            open(&key, &swapped),
            Err(Error::Authentication(_))
        ));
        // Same record id, another version: also refused.
        let e3 = seal(&mpk, &policy, &ctx("r1", 2), b"one v2", &mut rng).unwrap();
        let swapped = Envelope {
            body: e1.body,
            wrapper: e3.wrapper,
        };
        assert!(open(&key, &swapped).is_err());
    }

    #[test]
    fn limits_are_checked() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let (mpk, _) = setup(&mut rng);
        let policy = Policy::parse("a").unwrap();
        assert!(seal(&mpk, &policy, &ctx("", 1), b"x", &mut rng).is_err());
        let long = "x".repeat(MAX_RECORD_ID_BYTES + 1);
        assert!(seal(&mpk, &policy, &ctx(&long, 1), b"x", &mut rng).is_err());
    }
}
