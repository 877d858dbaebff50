//! C2SP `tlog-cosignature` (Ed25519, `cosignature/v1`): a witness's
//! timestamped statement that a checkpoint is the largest consistent tree
//! head it has seen for that log.
//!
//! A cosignature is one more signature line on the checkpoint's signed note:
//! `— <witness name> base64(key id ‖ u64 timestamp (big-endian) ‖ Ed25519
//! signature)`, where the key id is `SHA-256(name ‖ "\n" ‖ 0x04 ‖ public
//! key)[..4]` and the signed message is
//!
//! ```text
//! cosignature/v1
//! time <timestamp>
//! <the checkpoint's note text>
//! ```
//!
//! Keys are written like note keys with type byte 0x04:
//! `<name>+<hex key id>+<base64(0x04 ‖ public key)>` and
//! `PRIVATE+KEY+<name>+<hex key id>+<base64(0x04 ‖ seed)>`.

use std::collections::BTreeSet;
use std::fmt;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use zeroize::Zeroizing;

use crate::note::{
    check_key_name, check_text, key_id_of, malformed, Checkpoint, NoteError, NoteVerifier,
    SignedNote, SIG_PREFIX,
};

/// The signature-type byte of Ed25519 `cosignature/v1` keys.
const ALG_COSIGNATURE_V1: u8 = 0x04;

/// The message a `cosignature/v1` signs.
fn signed_message(time: u64, text: &str) -> String {
    format!("cosignature/v1\ntime {time}\n{text}")
}

/// A witness's public cosigning key.
#[derive(Clone, PartialEq, Eq)]
pub struct CosignatureVerifier {
    name: String,
    id: [u8; 4],
    key: VerifyingKey,
}

impl fmt::Debug for CosignatureVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CosignatureVerifier({self})")
    }
}

impl fmt::Display for CosignatureVerifier {
    /// The `name+hexid+base64(0x04 ‖ key)` encoding.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut raw = vec![ALG_COSIGNATURE_V1];
        raw.extend_from_slice(self.key.as_bytes());
        write!(
            f,
            "{}+{}+{}",
            self.name,
            hex::encode(self.id),
            B64.encode(raw)
        )
    }
}

/// A key's name, key id and key bytes, as written.
type KeyParts<'a> = (&'a str, [u8; 4], Zeroizing<Vec<u8>>);

/// Splits `name+hexid+base64` and checks the type byte and key id.
fn parse_key<'a>(what: &'static str, text: &'a str) -> Result<KeyParts<'a>, NoteError> {
    let mut parts = text.splitn(3, '+');
    let (Some(name), Some(id_hex), Some(key_b64)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed(what, "expected `name+keyid+base64key`"));
    };
    check_key_name(name)?;
    let id: [u8; 4] = hex::decode(id_hex)
        .ok()
        .and_then(|v| v.try_into().ok())
        .filter(|_| id_hex.len() == 8 && !id_hex.chars().any(|c| c.is_ascii_uppercase()))
        .ok_or_else(|| malformed(what, "key id must be 8 lowercase hex digits"))?;
    let raw = Zeroizing::new(
        B64.decode(key_b64)
            .map_err(|_| malformed(what, "key is not base64"))?,
    );
    match raw.split_first() {
        Some((&ALG_COSIGNATURE_V1, rest)) if rest.len() == 32 => {
            Ok((name, id, Zeroizing::new(rest.to_vec())))
        }
        Some((&ALG_COSIGNATURE_V1, _)) => Err(malformed(what, "an Ed25519 key is 32 bytes")),
        _ => Err(malformed(
            what,
            "only Ed25519 cosignature/v1 keys (type 0x04) are supported",
        )),
    }
}

impl CosignatureVerifier {
    /// Parses `name+hexid+base64(0x04 ‖ key)`, checking the id matches.
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        const WHAT: &str = "cosigner verifier key";
        let (name, id, raw) = parse_key(WHAT, text.trim_end_matches(['\n', '\r']))?;
        let key: [u8; 32] = raw[..]
            .try_into()
            .map_err(|_| malformed(WHAT, "an Ed25519 key is 32 bytes"))?;
        if key_id_of(ALG_COSIGNATURE_V1, name, &key) != id {
            return Err(malformed(WHAT, "key id does not match the key"));
        }
        let key = VerifyingKey::from_bytes(&key)
            .ok()
            .filter(|k| !k.is_weak())
            .ok_or_else(|| malformed(WHAT, "not a valid Ed25519 public key"))?;
        Ok(CosignatureVerifier {
            name: name.to_string(),
            id,
            key,
        })
    }

    /// The witness's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The timestamp of this witness's valid cosignature on `note`, if it
    /// carries one. Lines by other keys are ignored; a line by this key that
    /// does not verify is an error (as for note signatures).
    pub fn verify(&self, note: &SignedNote) -> Result<u64, NoteError> {
        let mut found = None;
        for (name, id, raw) in &note.signatures {
            if name != &self.name || id != &self.id {
                continue;
            }
            let bad = || NoteError::NotSigned(self.name.clone());
            if raw.len() != 8 + 64 {
                return Err(bad());
            }
            let time = u64::from_be_bytes(raw[..8].try_into().map_err(|_| bad())?);
            if time > i64::MAX as u64 {
                return Err(bad());
            }
            let sig = Signature::from_slice(&raw[8..]).map_err(|_| bad())?;
            self.key
                .verify_strict(signed_message(time, &note.text).as_bytes(), &sig)
                .map_err(|_| bad())?;
            found = Some(found.map_or(time, |t: u64| t.max(time)));
        }
        found.ok_or_else(|| NoteError::NotSigned(self.name.clone()))
    }
}

/// A witness's secret cosigning key (zeroized on drop, never printed).
pub struct Cosigner {
    name: String,
    id: [u8; 4],
    key: SigningKey,
}

impl fmt::Debug for Cosigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cosigner")
            .field("name", &self.name)
            .field("key_id", &hex::encode(self.id))
            .finish_non_exhaustive()
    }
}

impl Cosigner {
    /// A cosigner from a 32-byte Ed25519 seed.
    pub fn from_seed(name: &str, seed: &[u8; 32]) -> Result<Self, NoteError> {
        check_key_name(name)?;
        let key = SigningKey::from_bytes(seed);
        Ok(Cosigner {
            name: name.to_string(),
            id: key_id_of(ALG_COSIGNATURE_V1, name, key.verifying_key().as_bytes()),
            key,
        })
    }

    /// A fresh cosigner from the operating system's randomness.
    pub fn generate(name: &str) -> Result<Self, NoteError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        rand_core::RngCore::try_fill_bytes(&mut rand_core::OsRng, seed.as_mut())
            .map_err(|e| malformed("cosigner key", format!("no randomness: {e}")))?;
        Self::from_seed(name, &seed)
    }

    /// Parses `PRIVATE+KEY+name+hexid+base64(0x04 ‖ seed)`.
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        const WHAT: &str = "cosigner key";
        let rest = text
            .trim_end_matches(['\n', '\r'])
            .strip_prefix("PRIVATE+KEY+")
            .ok_or_else(|| malformed(WHAT, "expected `PRIVATE+KEY+name+keyid+base64key`"))?;
        let (name, id, raw) = parse_key(WHAT, rest)?;
        let seed: Zeroizing<[u8; 32]> = Zeroizing::new(
            raw[..]
                .try_into()
                .map_err(|_| malformed(WHAT, "an Ed25519 seed is 32 bytes"))?,
        );
        let cosigner = Self::from_seed(name, &seed)?;
        if cosigner.id != id {
            return Err(malformed(WHAT, "key id does not match the key"));
        }
        Ok(cosigner)
    }

    /// The `PRIVATE+KEY+...` encoding (secret: handle as such).
    pub fn to_secret_string(&self) -> Zeroizing<String> {
        let mut raw = Zeroizing::new(vec![ALG_COSIGNATURE_V1]);
        raw.extend_from_slice(self.key.as_bytes());
        Zeroizing::new(format!(
            "PRIVATE+KEY+{}+{}+{}",
            self.name,
            hex::encode(self.id),
            B64.encode(raw.as_slice())
        ))
    }

    /// The matching public key.
    pub fn verifier(&self) -> CosignatureVerifier {
        CosignatureVerifier {
            name: self.name.clone(),
            id: self.id,
            key: self.key.verifying_key(),
        }
    }

    /// The cosignature line (`— name base64(...)\n`) on the note text
    /// `text`, made at `time` (seconds since the epoch).
    pub fn cosign(&self, text: &str, time: u64) -> Result<String, NoteError> {
        check_text(text)?;
        if time > i64::MAX as u64 {
            return Err(malformed("cosignature", "timestamp beyond 2^63 - 1"));
        }
        let sig = self.key.sign(signed_message(time, text).as_bytes());
        let mut raw = self.id.to_vec();
        raw.extend_from_slice(&time.to_be_bytes());
        raw.extend_from_slice(&sig.to_bytes());
        Ok(format!("{SIG_PREFIX}{} {}\n", self.name, B64.encode(raw)))
    }
}

/// Which witnesses a reader requires, and how many of them.
#[derive(Clone, Debug, Default)]
pub struct WitnessPolicy {
    /// The witnesses whose cosignatures count.
    pub witnesses: Vec<CosignatureVerifier>,
    /// How many distinct witnesses must have cosigned.
    pub quorum: usize,
}

impl WitnessPolicy {
    /// The quorum a deployment configured (`[audit] quorum`) among
    /// `witnesses` witnesses (the key authority's and the independent
    /// ones): all of them when unset, and never 0 nor more than there are.
    /// Logs and clients apply the same rule.
    pub fn quorum_of(configured: Option<usize>, witnesses: usize) -> Result<usize, String> {
        match configured {
            None => Ok(witnesses),
            Some(q) if (1..=witnesses).contains(&q) => Ok(q),
            Some(q) => Err(format!(
                "[audit] quorum = {q}: it must be between 1 and the {witnesses} witnesses \
                 (the key authority's and the {} listed)",
                witnesses.saturating_sub(1)
            )),
        }
    }

    /// Parses a checkpoint note, checks the log's signature with `log` and
    /// at least `quorum` distinct witnesses' cosignatures; returns the
    /// checkpoint and the names of the witnesses that cosigned it.
    pub fn verify(
        &self,
        note: &str,
        log: &NoteVerifier,
    ) -> Result<(Checkpoint, Vec<String>), NoteError> {
        let checkpoint = Checkpoint::verify(note, log)?;
        let signed = SignedNote::parse(note)?;
        let cosigned: BTreeSet<String> = self
            .witnesses
            .iter()
            .filter(|w| w.verify(&signed).is_ok())
            .map(|w| w.name().to_string())
            .collect();
        if cosigned.len() < self.quorum {
            return Err(NoteError::NotCosigned {
                have: cosigned.into_iter().collect(),
                quorum: self.quorum,
            });
        }
        Ok((checkpoint, cosigned.into_iter().collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::note::NoteSigner;

    fn checkpoint_note() -> (String, NoteVerifier) {
        let log = NoteSigner::from_seed("example.org/log", &[1; 32]).unwrap();
        let cp = Checkpoint {
            origin: "example.org/log".into(),
            size: 12,
            root: [9; 32],
            extensions: Vec::new(),
        };
        (cp.sign(&log).unwrap(), log.verifier())
    }

    #[test]
    fn keys_round_trip_and_ids_use_type_0x04() {
        let w = Cosigner::from_seed("witness.example/w1", &[3; 32]).unwrap();
        let back = Cosigner::parse(&w.to_secret_string()).unwrap();
        assert_eq!(back.verifier(), w.verifier());
        let v = CosignatureVerifier::parse(&w.verifier().to_string()).unwrap();
        assert_eq!(v, w.verifier());
        // A note key (type 0x01) is not a cosigner key.
        let note_key = NoteSigner::from_seed("witness.example/w1", &[3; 32]).unwrap();
        assert!(CosignatureVerifier::parse(&note_key.verifier().to_string()).is_err());
        assert_ne!(note_key.verifier().key_id(), v.id);
    }

    #[test]
    fn cosignatures_verify_and_refuse_changes() {
        let (note, log) = checkpoint_note();
        let w = Cosigner::from_seed("witness.example/w1", &[3; 32]).unwrap();
        let signed = SignedNote::parse(&note).unwrap();
        let line = w.cosign(&signed.text, 1_679_315_147).unwrap();
        let cosigned = format!("{note}{line}");
        let policy = WitnessPolicy {
            witnesses: vec![w.verifier()],
            quorum: 1,
        };
        let (cp, names) = policy.verify(&cosigned, &log).unwrap();
        assert_eq!(cp.size, 12);
        assert_eq!(names, vec!["witness.example/w1".to_string()]);
        assert_eq!(
            w.verifier()
                .verify(&SignedNote::parse(&cosigned).unwrap())
                .unwrap(),
            1_679_315_147
        );
        // Without it, or with the timestamp changed, the quorum is not met.
        assert!(matches!(
            policy.verify(&note, &log),
            Err(NoteError::NotCosigned { .. })
        ));
        let mut raw = B64
            .decode(line.trim_end().rsplit(' ').next().unwrap())
            .unwrap();
        raw[11] ^= 1;
        let forged = format!("{note}{SIG_PREFIX}witness.example/w1 {}\n", B64.encode(raw));
        assert!(policy.verify(&forged, &log).is_err());
        // The same line on another checkpoint does not verify.
        let other = Checkpoint {
            origin: "example.org/log".into(),
            size: 13,
            root: [9; 32],
            extensions: Vec::new(),
        }
        .sign(&NoteSigner::from_seed("example.org/log", &[1; 32]).unwrap())
        .unwrap();
        assert!(policy.verify(&format!("{other}{line}"), &log).is_err());
        // A quorum of two needs two distinct witnesses, not two lines of one.
        let again = w.cosign(&signed.text, 1_679_315_148).unwrap();
        let two = WitnessPolicy {
            quorum: 2,
            ..policy.clone()
        };
        assert!(two.verify(&format!("{cosigned}{again}"), &log).is_err());
    }
}
