//! C2SP signed notes with Ed25519, and C2SP `tlog-checkpoint` bodies.
//!
//! A signed note is a UTF-8 text ending in a newline, a blank line, and one
//! line per signature: `— <key name> <base64(key id ‖ signature)>`. The key id
//! of an Ed25519 key is the first four bytes of
//! `SHA-256(name ‖ "\n" ‖ 0x01 ‖ public key)`. Keys are written as
//! `<name>+<hex key id>+<base64(0x01 ‖ public key)>` (verifier) and
//! `PRIVATE+KEY+<name>+<hex key id>+<base64(0x01 ‖ seed)>` (signer), so the
//! Go `golang.org/x/mod/sumdb/note` package and transparency tooling read them.
//!
//! A checkpoint is a note whose text is `origin`, `size`, `base64(root)` and
//! optional extension lines.

use std::fmt;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::merkle::Hash;

/// The signature-type byte of Ed25519 in signed notes.
const ALG_ED25519: u8 = 0x01;
/// At most this many signature lines are read (as the Go implementation does).
const MAX_SIGNATURES: usize = 100;
/// Longest note accepted, in bytes.
pub const MAX_NOTE_BYTES: usize = 1 << 20;
pub(crate) const SIG_PREFIX: &str = "\u{2014} ";

/// Why a note, key or checkpoint was refused.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
pub enum NoteError {
    /// The bytes are not a well-formed note, key or checkpoint.
    #[error("malformed {what}: {why}")]
    Malformed {
        /// What was being read.
        what: &'static str,
        /// What was wrong.
        why: String,
    },
    /// No signature by the given key verifies.
    #[error("no valid signature by key `{0}`")]
    NotSigned(String),
    /// Fewer witnesses than required cosigned the checkpoint.
    #[error("the checkpoint is cosigned by {} of the {quorum} witnesses required ({})", have.len(), if have.is_empty() { "none".to_string() } else { have.join(", ") })]
    NotCosigned {
        /// The witnesses that did.
        have: Vec<String>,
        /// How many are required.
        quorum: usize,
    },
}

pub(crate) fn malformed(what: &'static str, why: impl Into<String>) -> NoteError {
    NoteError::Malformed {
        what,
        why: why.into(),
    }
}

pub(crate) fn check_key_name(name: &str) -> Result<(), NoteError> {
    if name.is_empty()
        || name.contains('+')
        || name.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(malformed(
            "key name",
            "must be non-empty, without spaces, control characters or '+'",
        ));
    }
    Ok(())
}

fn key_id(name: &str, public: &[u8; 32]) -> [u8; 4] {
    key_id_of(ALG_ED25519, name, public)
}

/// `SHA-256(name ‖ "\n" ‖ alg ‖ public key)[..4]`: the key id of a note key
/// (`alg` 0x01) or of a cosigner key (`alg` 0x04).
pub(crate) fn key_id_of(alg: u8, name: &str, public: &[u8; 32]) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n");
    h.update([alg]);
    h.update(public);
    let d = h.finalize();
    [d[0], d[1], d[2], d[3]]
}

/// A note verifier key (public).
#[derive(Clone, PartialEq, Eq)]
pub struct NoteVerifier {
    name: String,
    id: [u8; 4],
    key: VerifyingKey,
}

impl fmt::Debug for NoteVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NoteVerifier({self})")
    }
}

impl fmt::Display for NoteVerifier {
    /// The `name+hexid+base64` encoding.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut raw = vec![ALG_ED25519];
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

impl NoteVerifier {
    /// Parses `name+hexid+base64(0x01 ‖ key)`, checking the id matches the key.
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        const WHAT: &str = "verifier key";
        let text = text.trim_end_matches(['\n', '\r']);
        let mut parts = text.splitn(3, '+');
        let (Some(name), Some(id_hex), Some(key_b64)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed(WHAT, "expected `name+keyid+base64key`"));
        };
        check_key_name(name)?;
        let id: [u8; 4] = hex::decode(id_hex)
            .ok()
            .and_then(|v| v.try_into().ok())
            .filter(|_| {
                id_hex.len() == 8
                    && id_hex
                        .chars()
                        .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
            })
            .ok_or_else(|| malformed(WHAT, "key id must be 8 lowercase hex digits"))?;
        let raw = B64
            .decode(key_b64)
            .map_err(|e| malformed(WHAT, format!("key is not base64: {e}")))?;
        let Some((&ALG_ED25519, key)) = raw.split_first() else {
            return Err(malformed(
                WHAT,
                "only Ed25519 keys (type 0x01) are supported",
            ));
        };
        let key: [u8; 32] = key
            .try_into()
            .map_err(|_| malformed(WHAT, "an Ed25519 key is 32 bytes"))?;
        if key_id(name, &key) != id {
            return Err(malformed(WHAT, "key id does not match the key"));
        }
        let key = VerifyingKey::from_bytes(&key)
            .ok()
            .filter(|k| !k.is_weak())
            .ok_or_else(|| malformed(WHAT, "not a valid Ed25519 public key"))?;
        Ok(NoteVerifier {
            name: name.to_string(),
            id,
            key,
        })
    }

    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The four-byte key id.
    pub fn key_id(&self) -> [u8; 4] {
        self.id
    }

    /// The Ed25519 public key.
    pub fn public_key(&self) -> &VerifyingKey {
        &self.key
    }
}

/// A note signer key (secret; zeroized on drop, never printed).
pub struct NoteSigner {
    name: String,
    id: [u8; 4],
    key: SigningKey,
}

impl fmt::Debug for NoteSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NoteSigner")
            .field("name", &self.name)
            .field("key_id", &hex::encode(self.id))
            .finish_non_exhaustive()
    }
}

impl NoteSigner {
    /// A signer from a 32-byte Ed25519 seed.
    pub fn from_seed(name: &str, seed: &[u8; 32]) -> Result<Self, NoteError> {
        check_key_name(name)?;
        let key = SigningKey::from_bytes(seed);
        Ok(NoteSigner {
            name: name.to_string(),
            id: key_id(name, key.verifying_key().as_bytes()),
            key,
        })
    }

    /// A 32-byte key for another use of the signer's owner, derived from
    /// its seed with HKDF-SHA256 under the label `info`: independent of the
    /// signatures and of keys derived under other labels.
    pub(crate) fn derive_key(&self, info: &[u8]) -> Zeroizing<[u8; 32]> {
        let seed = Zeroizing::new(self.key.to_bytes());
        let mut out = Zeroizing::new([0u8; 32]);
        hkdf::Hkdf::<sha2::Sha256>::new(None, seed.as_slice())
            .expand(info, out.as_mut())
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        out
    }

    /// Generates a fresh signer from the operating system's randomness.
    pub fn generate(name: &str) -> Result<Self, NoteError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        rand_core::RngCore::try_fill_bytes(&mut rand_core::OsRng, seed.as_mut())
            .map_err(|e| malformed("signer key", format!("no randomness: {e}")))?;
        Self::from_seed(name, &seed)
    }

    /// Parses `PRIVATE+KEY+name+hexid+base64(0x01 ‖ seed)`.
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        const WHAT: &str = "signer key";
        let text = text.trim_end_matches(['\n', '\r']);
        let rest = text
            .strip_prefix("PRIVATE+KEY+")
            .ok_or_else(|| malformed(WHAT, "expected `PRIVATE+KEY+name+keyid+base64key`"))?;
        let mut parts = rest.splitn(3, '+');
        let (Some(name), Some(id_hex), Some(key_b64)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed(
                WHAT,
                "expected `PRIVATE+KEY+name+keyid+base64key`",
            ));
        };
        let raw = Zeroizing::new(
            B64.decode(key_b64)
                .map_err(|_| malformed(WHAT, "key is not base64"))?,
        );
        let Some((&ALG_ED25519, seed)) = raw.split_first() else {
            return Err(malformed(
                WHAT,
                "only Ed25519 keys (type 0x01) are supported",
            ));
        };
        let seed: Zeroizing<[u8; 32]> = Zeroizing::new(
            seed.try_into()
                .map_err(|_| malformed(WHAT, "an Ed25519 seed is 32 bytes"))?,
        );
        let signer = Self::from_seed(name, &seed)?;
        if hex::encode(signer.id) != id_hex {
            return Err(malformed(WHAT, "key id does not match the key"));
        }
        Ok(signer)
    }

    /// The `PRIVATE+KEY+...` encoding (secret: handle as such).
    pub fn to_secret_string(&self) -> Zeroizing<String> {
        let mut raw = Zeroizing::new(vec![ALG_ED25519]);
        raw.extend_from_slice(self.key.as_bytes());
        Zeroizing::new(format!(
            "PRIVATE+KEY+{}+{}+{}",
            self.name,
            hex::encode(self.id),
            B64.encode(raw.as_slice())
        ))
    }

    /// The matching verifier.
    pub fn verifier(&self) -> NoteVerifier {
        NoteVerifier {
            name: self.name.clone(),
            id: self.id,
            key: self.key.verifying_key(),
        }
    }

    /// Signs `text` (which must be a valid note text) and returns the signed note.
    pub fn sign(&self, text: &str) -> Result<String, NoteError> {
        check_text(text)?;
        let sig = self.key.sign(text.as_bytes());
        let mut raw = self.id.to_vec();
        raw.extend_from_slice(&sig.to_bytes());
        Ok(format!(
            "{text}\n{SIG_PREFIX}{} {}\n",
            self.name,
            B64.encode(raw)
        ))
    }
}

pub(crate) fn check_text(text: &str) -> Result<(), NoteError> {
    if text.len() > MAX_NOTE_BYTES {
        return Err(malformed("note", "too long"));
    }
    if !text.ends_with('\n') {
        return Err(malformed("note", "text must end with a newline"));
    }
    if text.chars().any(|c| c.is_control() && c != '\n') {
        return Err(malformed("note", "text holds control characters"));
    }
    Ok(())
}

/// A note split into its text and its signature lines (unverified).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SignedNote {
    /// The signed text, ending with a newline.
    pub text: String,
    /// `(key name, key id, signature)` for each signature line.
    pub signatures: Vec<(String, [u8; 4], Vec<u8>)>,
}

impl SignedNote {
    /// Splits a signed note. Fails on anything that is not a well-formed note.
    pub fn parse(note: &str) -> Result<Self, NoteError> {
        if note.len() > MAX_NOTE_BYTES {
            return Err(malformed("note", "too long"));
        }
        let split = note
            .rfind("\n\n")
            .ok_or_else(|| malformed("note", "no blank line before the signatures"))?;
        let text = &note[..split + 1];
        check_text(text)?;
        let sigs = &note[split + 2..];
        if !sigs.ends_with('\n') {
            return Err(malformed("note", "signature block must end with a newline"));
        }
        let mut signatures = Vec::new();
        for line in sigs[..sigs.len() - 1].split('\n') {
            if signatures.len() == MAX_SIGNATURES {
                return Err(malformed("note", "too many signatures"));
            }
            let rest = line
                .strip_prefix(SIG_PREFIX)
                .ok_or_else(|| malformed("note", "signature line must start with `— `"))?;
            let (name, b64) = rest
                .split_once(' ')
                .ok_or_else(|| malformed("note", "signature line must be `— name base64`"))?;
            check_key_name(name)?;
            let raw = B64
                .decode(b64)
                .map_err(|_| malformed("note", "signature is not base64"))?;
            if raw.len() < 5 {
                return Err(malformed("note", "signature too short"));
            }
            let id = [raw[0], raw[1], raw[2], raw[3]];
            signatures.push((name.to_string(), id, raw[4..].to_vec()));
        }
        if signatures.is_empty() {
            return Err(malformed("note", "no signatures"));
        }
        Ok(SignedNote {
            text: text.to_string(),
            signatures,
        })
    }

    /// Checks that `verifier` signed this note: at least one signature line
    /// names its key, and every line that does carries a valid signature (as
    /// Go's `note.Open` requires). Signatures by other keys are ignored.
    pub fn verify(&self, verifier: &NoteVerifier) -> Result<(), NoteError> {
        let mut by_this_key = self
            .signatures
            .iter()
            .filter(|(name, id, _)| name == &verifier.name && id == &verifier.id)
            .peekable();
        if by_this_key.peek().is_none() {
            return Err(NoteError::NotSigned(verifier.name.clone()));
        }
        let all_valid = by_this_key.all(|(_, _, sig)| {
            Signature::from_slice(sig)
                .is_ok_and(|s| verifier.key.verify_strict(self.text.as_bytes(), &s).is_ok())
        });
        if all_valid {
            Ok(())
        } else {
            Err(NoteError::NotSigned(verifier.name.clone()))
        }
    }
}

/// A transparency-log checkpoint (C2SP `tlog-checkpoint`).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Checkpoint {
    /// Unique name of the log.
    pub origin: String,
    /// Number of leaves.
    pub size: u64,
    /// Root hash of the tree of `size` leaves.
    pub root: Hash,
    /// Extension lines (without newlines), if any.
    pub extensions: Vec<String>,
}

impl Checkpoint {
    /// The note text of the checkpoint.
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            B64.encode(self.root)
        );
        for e in &self.extensions {
            s.push_str(e);
            s.push('\n');
        }
        s
    }

    /// Parses a checkpoint's note text.
    pub fn from_text(text: &str) -> Result<Self, NoteError> {
        const WHAT: &str = "checkpoint";
        check_text(text)?;
        let lines: Vec<&str> = text[..text.len() - 1].split('\n').collect();
        if lines.len() < 3 {
            return Err(malformed(WHAT, "needs origin, size and root lines"));
        }
        let origin = lines[0];
        if origin.is_empty() {
            return Err(malformed(WHAT, "empty origin line"));
        }
        let size_text = lines[1];
        let canonical = !size_text.is_empty()
            && size_text.bytes().all(|b| b.is_ascii_digit())
            && (size_text == "0" || !size_text.starts_with('0'));
        let size: u64 = size_text
            .parse()
            .ok()
            .filter(|_| canonical)
            .ok_or_else(|| {
                malformed(WHAT, "size must be a decimal number without leading zeros")
            })?;
        let root: Hash = B64
            .decode(lines[2])
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| malformed(WHAT, "root must be 32 bytes of standard base64"))?;
        let extensions: Vec<String> = lines[3..].iter().map(|s| s.to_string()).collect();
        if extensions.iter().any(|e| e.is_empty()) {
            return Err(malformed(WHAT, "empty extension line"));
        }
        Ok(Checkpoint {
            origin: origin.to_string(),
            size,
            root,
            extensions,
        })
    }

    /// Signs the checkpoint, returning the signed note. Refuses a checkpoint
    /// whose text would read back as something else (an origin or extension
    /// with a line break, an empty extension).
    pub fn sign(&self, signer: &NoteSigner) -> Result<String, NoteError> {
        let text = self.to_text();
        if Self::from_text(&text).as_ref() != Ok(self) {
            return Err(malformed(
                "checkpoint",
                "origin and extensions must be single non-empty lines without control characters",
            ));
        }
        signer.sign(&text)
    }

    /// Parses a signed checkpoint and checks `verifier` signed it.
    pub fn verify(note: &str, verifier: &NoteVerifier) -> Result<Self, NoteError> {
        let signed = SignedNote::parse(note)?;
        let checkpoint = Self::from_text(&signed.text)?;
        signed.verify(verifier)?;
        Ok(checkpoint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_then_verify_and_refuse_changes() {
        let signer = NoteSigner::from_seed("example.org/log", &[7; 32]).unwrap();
        let verifier = NoteVerifier::parse(&signer.verifier().to_string()).unwrap();
        assert_eq!(verifier, signer.verifier());
        let cp = Checkpoint {
            origin: "example.org/log".into(),
            size: 12,
            root: [3; 32],
            extensions: vec![],
        };
        let note = cp.sign(&signer).unwrap();
        assert_eq!(Checkpoint::verify(&note, &verifier).unwrap(), cp);
        let forged = note.replacen("\n12\n", "\n13\n", 1);
        assert_eq!(
            Checkpoint::verify(&forged, &verifier),
            Err(NoteError::NotSigned("example.org/log".into()))
        );
        let other = NoteSigner::from_seed("example.org/log", &[8; 32]).unwrap();
        assert!(Checkpoint::verify(&note, &other.verifier()).is_err());
        let again = NoteSigner::parse(&signer.to_secret_string()).unwrap();
        assert_eq!(again.verifier(), verifier);
    }

    #[test]
    fn checkpoints_that_would_read_back_differently_are_not_signed() {
        let signer = NoteSigner::from_seed("log", &[7; 32]).unwrap();
        let base = Checkpoint {
            origin: "log".into(),
            size: 1,
            root: [0; 32],
            extensions: vec![],
        };
        let cases = [
            Checkpoint {
                origin: "a\n5".into(),
                ..base.clone()
            },
            Checkpoint {
                origin: "a\r".into(),
                ..base.clone()
            },
            Checkpoint {
                extensions: vec!["x\ny".into()],
                ..base.clone()
            },
            Checkpoint {
                extensions: vec![String::new()],
                ..base.clone()
            },
        ];
        for cp in cases {
            assert!(cp.sign(&signer).is_err(), "{cp:?}");
        }
        assert!(base.sign(&signer).is_ok());
    }

    #[test]
    fn weak_verifier_keys_are_refused() {
        // The identity point: every signature "verifies" under a weak key.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let mut raw = vec![ALG_ED25519];
        raw.extend_from_slice(&identity);
        let text = format!(
            "weak+{}+{}",
            hex::encode(key_id("weak", &identity)),
            B64.encode(raw)
        );
        assert!(NoteVerifier::parse(&text).is_err());
    }

    #[test]
    fn malformed_checkpoints_are_refused() {
        for text in [
            "o\n012\nAAAA\n",
            "o\n-1\nAAAA\n",
            "\n1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n",
            "o\n1\nnot base64\n",
            "o\n1\n",
            "o\n18446744073709551616\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n",
        ] {
            assert!(Checkpoint::from_text(text).is_err(), "{text:?}");
        }
    }
}
