//! The directory as the key authority vouches for it: every identity's key,
//! status and current attributes, the attribute versions, the auditors'
//! sealing keys, the components' attestations, the live break-glass grants
//! and who owns which statistics slot.
//!
//! The authority builds [`DirectoryFacts`] from its authenticated state and
//! signs the exact JSON bytes ([`SignedFacts`]); the record service verifies
//! the signature with the authority's pinned key and never moves back to an
//! older `change` (a replayed, older signed copy is refused). The service
//! therefore enforces what the authority decided, whatever its own database
//! or host holds.

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

/// What the signature covers: this domain separator, then the facts' JSON.
const DOMAIN: &[u8] = b"asclepios directory facts v1\n";

/// Why signed facts were not accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FactsError {
    /// The signature is malformed or not the authority's.
    #[error("the directory facts are not signed by the key authority")]
    BadSignature,
    /// The signed bytes do not parse.
    #[error("the directory facts are malformed: {0}")]
    Malformed(String),
    /// An authentic but older copy than one already accepted.
    #[error(
        "the directory facts are older (change {offered}) than ones already accepted (change {known}): a rollback"
    )]
    Rollback {
        /// The change offered.
        offered: u64,
        /// The change already accepted.
        known: u64,
    },
}

/// One identity as the authority vouches for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    /// `clinician`, `patient`, `device`, ...
    pub kind: String,
    /// Its Ed25519 public key (hex), if registered.
    pub public_key: Option<String>,
    /// Whether it may act.
    pub active: bool,
    /// The attributes it holds, each at its current version (`name@vN`).
    pub attributes: Vec<String>,
}

/// A component's latest attestation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentFact {
    /// The appraisal tier (`affirming`, `warning`, `contraindicated`).
    pub trust: String,
    /// The appraisal's reasons, one line.
    pub appraisal: String,
    /// SHA-256 (hex) of the certificate key the evidence bound.
    pub key_sha256: String,
    /// Until when the registration holds (Unix seconds).
    pub expires_at: u64,
}

/// A break-glass grant that had not expired when the facts were built.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantFact {
    /// The patient.
    pub patient: String,
    /// The clinician who broke the glass.
    pub clinician: String,
    /// When it ends (Unix seconds).
    pub expires_at: i64,
}

/// Consecutive statistics slots of a study owned by one data provider.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotRange {
    /// The first slot.
    pub first: u64,
    /// The last slot (inclusive).
    pub last: u64,
    /// The provider that owns them.
    pub provider: String,
}

/// The directory at one change of the authority's authenticated state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectoryFacts {
    /// The change of the authority's state these facts were read at: later
    /// facts carry larger numbers.
    pub change: u64,
    /// When they were built (Unix seconds).
    pub issued_at: u64,
    /// Every identity, by id.
    pub members: BTreeMap<String, Member>,
    /// Every attribute's current version (absent: version 0).
    pub attribute_versions: BTreeMap<String, u64>,
    /// The auditors events are sealed to: id and HPKE public key (hex).
    pub auditors: Vec<(String, String)>,
    /// Components' attestations, by identity.
    pub components: BTreeMap<String, ComponentFact>,
    /// Live break-glass grants.
    pub emergency: Vec<GrantFact>,
    /// Statistics slots' owners, by study.
    pub slots: BTreeMap<String, Vec<SlotRange>>,
}

impl DirectoryFacts {
    /// The identity `id`, if the directory has it.
    pub fn member(&self, id: &str) -> Option<&Member> {
        self.members.get(id)
    }

    /// The attributes `id` holds now, at their current versions (none for an
    /// unknown identity).
    pub fn current_attributes(&self, id: &str) -> &[String] {
        self.members.get(id).map_or(&[], |m| &m.attributes)
    }

    /// The attributes `id` may act on at `now`: those it holds, less an
    /// `emergency:<patient>` attribute whose break-glass grant has ended
    /// (the authority revokes it at its next sweep; until then the grant's
    /// end is what counts).
    pub fn live_attributes(&self, id: &str, now: i64) -> Vec<String> {
        self.current_attributes(id)
            .iter()
            .filter(|a| {
                let name = a.split_once("@v").map_or(a.as_str(), |(n, _)| n);
                match name.strip_prefix("emergency:") {
                    Some(patient) => self.in_emergency(id, patient, now),
                    None => true,
                }
            })
            .cloned()
            .collect()
    }

    /// An attribute's current version (0 if never revoked from anyone).
    pub fn attribute_version(&self, attribute: &str) -> u64 {
        self.attribute_versions.get(attribute).copied().unwrap_or(0)
    }

    /// Whether `clinician` holds a break-glass grant for `patient` at `now`.
    pub fn in_emergency(&self, clinician: &str, patient: &str, now: i64) -> bool {
        self.emergency
            .iter()
            .any(|g| g.patient == patient && g.clinician == clinician && g.expires_at > now)
    }

    /// The provider that owns `slot` of `study`, if any.
    pub fn slot_owner(&self, study: &str, slot: u64) -> Option<&str> {
        self.slots.get(study).and_then(|ranges| {
            ranges
                .iter()
                .find(|r| (r.first..=r.last).contains(&slot))
                .map(|r| r.provider.as_str())
        })
    }

    /// These facts, signed by `sign` (the authority's Ed25519 key) over the
    /// domain separator and their exact JSON.
    pub fn signed_with(&self, sign: impl FnOnce(&[u8]) -> Signature) -> SignedFacts {
        // A map keyed by strings and plain fields: serializing cannot fail.
        let facts = serde_json::to_string(self).unwrap_or_default();
        let signature = sign(&message(&facts));
        SignedFacts {
            facts,
            signature: B64.encode(signature.to_bytes()),
        }
    }
}

fn message(facts: &str) -> Vec<u8> {
    let mut m = DOMAIN.to_vec();
    m.extend_from_slice(facts.as_bytes());
    m
}

/// Directory facts as they travel: the exact JSON the authority signed, and
/// its Ed25519 signature (base64).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedFacts {
    /// [`DirectoryFacts`] as JSON.
    pub facts: String,
    /// The authority's signature over the domain separator and `facts`.
    pub signature: String,
}

impl SignedFacts {
    /// The facts, if `authority` signed them. Checks the signature before
    /// parsing anything.
    pub fn verify(&self, authority: &VerifyingKey) -> Result<DirectoryFacts, FactsError> {
        let signature = B64
            .decode(&self.signature)
            .ok()
            .and_then(|s| Signature::from_slice(&s).ok())
            .ok_or(FactsError::BadSignature)?;
        authority
            .verify(&message(&self.facts), &signature)
            .map_err(|_| FactsError::BadSignature)?;
        serde_json::from_str(&self.facts).map_err(|e| FactsError::Malformed(e.to_string()))
    }

    /// The facts, if `authority` signed them and they are not older than
    /// `known` (the change already accepted).
    pub fn verify_after(
        &self,
        authority: &VerifyingKey,
        known: u64,
    ) -> Result<DirectoryFacts, FactsError> {
        let facts = self.verify(authority)?;
        if facts.change < known {
            return Err(FactsError::Rollback {
                offered: facts.change,
                known,
            });
        }
        Ok(facts)
    }
}

/// Where the record service gets the authority's signed facts: in one
/// process, the authority itself; across processes, its API over mutual TLS.
pub trait FactsSource: Send + Sync {
    /// The authority's current signed facts, or `None` if they are still at
    /// change `known` (the one the caller holds).
    fn fetch(&self, known: Option<u64>) -> Result<Option<SignedFacts>, String>;

    /// The caller has seen signs of newer facts (a wrapper under newer
    /// attribute versions): fetch soon rather than at the next poll.
    fn wake(&self) {}

    /// Like [`FactsSource::fetch`], but asks the authority now rather than
    /// answering from the last poll (before refusing someone). Blocks.
    fn fetch_now(&self, known: Option<u64>) -> Result<Option<SignedFacts>, String> {
        self.fetch(known)
    }
}

/// Whether `hex_key` is the 32-byte key `key` (for comparing a certificate's
/// key with the one the directory vouches for).
pub fn same_key(hex_key: Option<&str>, key: &[u8]) -> bool {
    hex_key
        .and_then(|h| hex::decode(h).ok())
        .is_some_and(|k| k == key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    trait Sign {
        fn sign(&self, key: &SigningKey) -> SignedFacts;
    }

    impl Sign for DirectoryFacts {
        fn sign(&self, key: &SigningKey) -> SignedFacts {
            self.signed_with(|m| key.sign(m))
        }
    }

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn facts(change: u64) -> DirectoryFacts {
        let mut f = DirectoryFacts {
            change,
            ..Default::default()
        };
        f.members.insert(
            "dr-ada".into(),
            Member {
                kind: "clinician".into(),
                public_key: Some(hex::encode([7u8; 32])),
                active: true,
                attributes: vec!["care-team:pat-1@v2".into()],
            },
        );
        f.attribute_versions.insert("care-team:pat-1".into(), 2);
        f.slots.insert(
            "study".into(),
            vec![SlotRange {
                first: 0,
                last: 9,
                provider: "lab-1".into(),
            }],
        );
        f
    }

    #[test]
    fn signed_facts_verify_with_the_authority_key_only() {
        let signed = facts(3).sign(&key(1));
        assert_eq!(signed.verify(&key(1).verifying_key()).unwrap(), facts(3));
        assert_eq!(
            signed.verify(&key(2).verifying_key()),
            Err(FactsError::BadSignature)
        );
    }

    #[test]
    fn any_edit_of_the_signed_bytes_is_refused() {
        let signed = facts(3).sign(&key(1));
        let granted = SignedFacts {
            facts: signed
                .facts
                .replace("care-team:pat-1@v2", "patient:pat-1@v0"),
            ..signed.clone()
        };
        assert_ne!(granted.facts, signed.facts);
        assert_eq!(
            granted.verify(&key(1).verifying_key()),
            Err(FactsError::BadSignature)
        );
        let garbage = SignedFacts {
            signature: "not base64!".into(),
            ..signed
        };
        assert_eq!(
            garbage.verify(&key(1).verifying_key()),
            Err(FactsError::BadSignature)
        );
    }

    #[test]
    fn older_facts_are_a_rollback() {
        let old = facts(3).sign(&key(1));
        let pk = key(1).verifying_key();
        assert!(old.verify_after(&pk, 3).is_ok());
        assert_eq!(
            old.verify_after(&pk, 4),
            Err(FactsError::Rollback {
                offered: 3,
                known: 4
            })
        );
    }

    #[test]
    fn lookups_answer_from_the_facts() {
        let f = facts(1);
        assert_eq!(f.current_attributes("dr-ada"), ["care-team:pat-1@v2"]);
        assert!(f.current_attributes("nobody").is_empty());
        assert_eq!(f.attribute_version("care-team:pat-1"), 2);
        assert_eq!(f.attribute_version("role:nurse"), 0);
        assert_eq!(f.slot_owner("study", 9), Some("lab-1"));
        assert_eq!(f.slot_owner("study", 10), None);
        assert_eq!(f.slot_owner("other", 0), None);
        assert!(same_key(
            f.member("dr-ada").unwrap().public_key.as_deref(),
            &[7u8; 32]
        ));
        assert!(!same_key(None, &[7u8; 32]));
    }

    #[test]
    fn an_ended_grant_stops_counting_before_the_sweep() {
        let mut f = facts(1);
        f.members.get_mut("dr-ada").unwrap().attributes = vec![
            "role:doctor".into(),
            "emergency:pat-1@v3".into(),
            "emergency:pat-2".into(),
        ];
        f.emergency.push(GrantFact {
            patient: "pat-1".into(),
            clinician: "dr-ada".into(),
            expires_at: 100,
        });
        assert_eq!(
            f.live_attributes("dr-ada", 99),
            ["role:doctor", "emergency:pat-1@v3"]
        );
        assert_eq!(f.live_attributes("dr-ada", 100), ["role:doctor"]);
    }
}
