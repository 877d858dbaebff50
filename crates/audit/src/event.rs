//! Confidential audit events.
//!
//! An event is serialized as JSON and sealed under a fresh data key with the
//! record envelope of `asclepios-crypto`. The key is then wrapped twice:
//!
//! * to every auditor's X25519 key with HPKE (RFC 9180, base mode,
//!   DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305), the HPKE
//!   associated data binding the sealed body and the ABE wrapper, so a wrapped
//!   key cannot be moved to another entry nor the entry edited around it;
//! * under the ABE policy `patient:<pseudonym> or role:auditor`, so the
//!   patient concerned reads events about their own records.
//!
//! Only the resulting bytes become a log leaf; the published part of the log
//! (hashes, sizes, checkpoints) says nothing about an event. The ABE
//! ciphertext carries its policy in clear, so whoever holds the stored entries
//! (the record service's operator) learns which patient pseudonym an event
//! concerns: no more than the service sees when it serves the request.
//!
//! ```text
//! AuditEntry = header(0x08) | u32 n | n × (recipient id(8) | enc(32) | bytes16(HPKE(key)))
//!              | bytes32(KeyWrapper) | bytes32(SealedBody)
//! ```
//!
//! An entry about a patient is stored inside a `LinkedLeaf` (see
//! [`crate::log::LinkedLeaf`]) that chains it to the patient's previous one.

use std::fmt;

use asclepios_crypto::abe::{Ciphertext, KemKey, PublicKey, UserKey};
use asclepios_crypto::envelope::{
    self, DataKey, EncodedWrapper, KeyWrapper, RecordContext, SealedBody,
};
use asclepios_crypto::format::{Kind, Reader, Writer};
use asclepios_crypto::{DecodeError, Policy};
use hpke::aead::ChaCha20Poly1305;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem as _, OpModeR, OpModeS, Serializable};
use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::Error;

const HPKE_INFO: &[u8] = b"asclepios audit entry v1";
const MAX_RECIPIENTS: usize = 64;
const MAX_WRAPPED_BYTES: usize = 1 << 20;
const MAX_EVENT_BYTES: usize = 256 * 1024;

type Kem = X25519HkdfSha256;

/// What was done.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// A record was created.
    Create,
    /// A record was read.
    Read,
    /// A record was updated (new version).
    Update,
    /// A record was erased (crypto-shredded).
    Delete,
    /// The encrypted index was searched.
    Search,
    /// The authority issued a key.
    KeyIssue,
    /// A consent was granted or withdrawn.
    ConsentChange,
    /// An identity or attribute was revoked.
    Revoke,
    /// Break-glass: emergency access was started.
    EmergencyAccess,
    /// A de-identified export.
    Export,
    /// An attestation verdict: a component's evidence appraised by the
    /// authority, or the authority's appraised by a client.
    Attestation,
    /// The key authority found its state changed, deleted or rolled back
    /// outside it, and stopped issuing.
    IntegrityAlarm,
    /// An administrator changed the directory (an identity added or
    /// disabled, attributes set, an auditor key set).
    DirectoryChange,
    /// A request refused before any handler logged it (unsigned, badly
    /// signed, oversized, malformed, to no route), or a count of such
    /// refusals from one peer in one window.
    RequestRefused,
}

/// How it ended.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Done.
    Success,
    /// Refused (authentication, authorization, revocation, consent).
    Denied,
    /// Failed for another reason.
    Failed,
}

/// One audit event, as its authorised readers see it.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditEvent {
    /// Unique id of the event.
    pub id: String,
    /// Pseudonym of who acted.
    pub actor: String,
    /// What they did.
    pub action: Action,
    /// What it was done to (a record id, a key, a consent).
    pub resource: String,
    /// Pseudonym of the patient concerned, if any.
    pub patient: Option<String>,
    /// When, in seconds since the Unix epoch (UTC).
    pub time: u64,
    /// How it ended.
    pub outcome: Outcome,
    /// Purpose of use (an HL7 v3-ActReason code, e.g. `TREAT`, `ETREAT`, `HRESCH`).
    pub purpose: String,
    /// Whether this was emergency (break-glass) access.
    pub emergency: bool,
    /// The signature of the request that caused it (base64), for non-repudiation.
    pub request_signature: Option<String>,
    /// For a write: what it stored, so a reader of the log can tell a
    /// served version older than the latest written (a rollback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub written: Option<Written>,
}

/// What a record write stored.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Written {
    /// The record's (opaque) id.
    pub record_id: String,
    /// The version written.
    pub version: u64,
    /// SHA-256 of the sealed body (hex).
    pub body_sha256: String,
}

impl Written {
    /// What writing `body` as `version` of `record_id` commits to.
    pub fn new(record_id: &str, version: u64, body: &[u8]) -> Self {
        Written {
            record_id: record_id.to_string(),
            version,
            body_sha256: hex::encode(Sha256::digest(body)),
        }
    }
}

impl AuditEvent {
    /// An event happening now, with a fresh random id, for treatment
    /// (`TREAT`) and not an emergency; change `purpose` and `emergency` as needed.
    pub fn new(
        actor: &str,
        action: Action,
        resource: String,
        patient: Option<&str>,
        outcome: Outcome,
        request_signature: Option<String>,
    ) -> Self {
        let mut id = [0u8; 16];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut id);
        AuditEvent {
            id: hex::encode(id),
            actor: actor.to_string(),
            action,
            resource,
            patient: patient.map(str::to_string),
            time: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            outcome,
            purpose: "TREAT".into(),
            emergency: false,
            request_signature,
            written: None,
        }
    }

    /// The ABE policy that lets the patient concerned, and auditors, read it.
    pub fn reader_policy(&self) -> Result<Policy, Error> {
        let text = match &self.patient {
            Some(p) => format!("\"patient:{}\" or \"role:auditor\"", p.replace('"', "")),
            None => "\"role:auditor\"".to_string(),
        };
        Policy::parse(&text).map_err(|e| Error::Invalid(format!("patient pseudonym: {e}")))
    }

    /// The event as a FHIR R4 `AuditEvent` resource. Break-glass events follow
    /// the HL7 example: type DCM 110113, subtype 110127 "Emergency Override
    /// Started", purpose v3-ActReason ETREAT.
    pub fn to_fhir(&self) -> serde_json::Value {
        use serde_json::json;
        let dcm = "http://dicom.nema.org/resources/ontology/DCM";
        let (type_code, type_display) = match self.action {
            Action::EmergencyAccess | Action::IntegrityAlarm | Action::RequestRefused => {
                ("110113", "Security Alert")
            }
            Action::KeyIssue | Action::Revoke | Action::ConsentChange => {
                ("110136", "Security Roles Changed")
            }
            Action::Export => ("110106", "Export"),
            Action::Search => ("110112", "Query"),
            Action::Attestation => ("110114", "User Authentication"),
            Action::DirectoryChange => ("110137", "User Security Attributes Changed"),
            _ => ("110110", "Patient Record"),
        };
        let fhir_action = match self.action {
            Action::Create => "C",
            Action::Read | Action::Export => "R",
            Action::Update | Action::ConsentChange | Action::Revoke | Action::DirectoryChange => {
                "U"
            }
            Action::Delete => "D",
            Action::Search => "E",
            Action::KeyIssue
            | Action::EmergencyAccess
            | Action::Attestation
            | Action::IntegrityAlarm
            | Action::RequestRefused => "E",
        };
        let outcome = match self.outcome {
            Outcome::Success => "0",
            Outcome::Denied => "4",
            Outcome::Failed => "8",
        };
        let recorded = time::OffsetDateTime::from_unix_timestamp(self.time as i64)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_else(|| "1970-01-01T00:00:00Z".into());
        let mut resource = json!({
            "resourceType": "AuditEvent",
            "id": self.id,
            "type": {"system": dcm, "code": type_code, "display": type_display},
            "action": fhir_action,
            "recorded": recorded,
            "outcome": outcome,
            "purposeOfEvent": [{"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
                "code": self.purpose,
            }]}],
            "agent": [{
                "who": {"identifier": {"value": self.actor}},
                "requestor": true,
            }],
            "source": {"observer": {"display": "asclepios"}},
            "entity": [{"what": {"identifier": {"value": self.resource}}}],
        });
        if self.action == Action::EmergencyAccess {
            resource["subtype"] = json!([{
                "system": dcm, "code": "110127", "display": "Emergency Override Started"
            }]);
        }
        if let Some(p) = &self.patient {
            if let Some(entities) = resource["entity"].as_array_mut() {
                entities.push(json!({
                    "what": {"identifier": {"value": p}},
                    "role": {
                        "system": "http://terminology.hl7.org/CodeSystem/object-role",
                        "code": "1",
                        "display": "Patient",
                    },
                }));
            }
        }
        if let Some(sig) = &self.request_signature {
            resource["agent"][0]["extension"] = json!([{
                "url": "urn:asclepios:request-signature",
                "valueString": sig,
            }]);
        }
        resource
    }
}

/// Most KEM keys a [`KemCache`] holds.
const KEM_CACHE_ENTRIES: usize = 4096;

/// Decapsulated KEM keys by encapsulation, for one reader's key (see
/// [`SealedEvent::open_with_abe_cached`]); the keys are zeroized on drop.
#[derive(Default)]
pub struct KemCache(std::collections::HashMap<[u8; 32], KemKey>);

impl fmt::Debug for KemCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KemCache({} keys)", self.0.len())
    }
}

/// An auditor's HPKE public key.
#[derive(Clone, PartialEq, Eq)]
pub struct AuditorPublicKey(<Kem as hpke::Kem>::PublicKey);

/// An auditor's HPKE secret key (zeroized on drop, never printed).
pub struct AuditorSecretKey(<Kem as hpke::Kem>::PrivateKey);

impl fmt::Debug for AuditorPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AuditorPublicKey({})", hex::encode(self.id()))
    }
}

impl fmt::Debug for AuditorSecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuditorSecretKey(<redacted>)")
    }
}

impl AuditorPublicKey {
    /// First 8 bytes of SHA-256 of the key: how an entry names its recipient.
    pub fn id(&self) -> [u8; 8] {
        let d = Sha256::digest(self.0.to_bytes());
        d[..8].try_into().unwrap_or([0; 8])
    }

    /// The 32-byte X25519 public key.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes().into()
    }

    /// Parses a 32-byte X25519 public key.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        <Kem as hpke::Kem>::PublicKey::from_bytes(bytes)
            .map(AuditorPublicKey)
            .map_err(|_| Error::Invalid("an auditor public key is 32 bytes of X25519".into()))
    }
}

impl AuditorSecretKey {
    /// A fresh key pair.
    pub fn generate(rng: &mut (impl RngCore + CryptoRng)) -> (AuditorSecretKey, AuditorPublicKey) {
        let (sk, pk) = Kem::gen_keypair(rng);
        (AuditorSecretKey(sk), AuditorPublicKey(pk))
    }

    /// The 32-byte secret (handle as a secret).
    pub fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.0.to_bytes().into())
    }

    /// Parses a 32-byte secret and derives the public key.
    pub fn from_bytes(bytes: &[u8]) -> Result<(Self, AuditorPublicKey), Error> {
        let sk = <Kem as hpke::Kem>::PrivateKey::from_bytes(bytes)
            .map_err(|_| Error::Invalid("an auditor secret key is 32 bytes of X25519".into()))?;
        let pk = Kem::sk_to_pk(&sk);
        Ok((AuditorSecretKey(sk), AuditorPublicKey(pk)))
    }
}

/// What an auditor's wrapped key is bound to: this entry's body and ABE
/// wrapper, so neither can be swapped or edited under an auditor's nose.
fn recipient_aad(body: &SealedBody, wrapper: &[u8]) -> Vec<u8> {
    let mut aad = body.binding().to_vec();
    aad.extend_from_slice(&Sha256::digest(wrapper));
    aad
}

struct Recipient {
    id: [u8; 8],
    enc: [u8; 32],
    wrapped: Vec<u8>,
}

/// An encrypted audit event: the bytes of one log leaf.
pub struct SealedEvent {
    recipients: Vec<Recipient>,
    /// The encoded ABE wrapper: decoded in full only when a reader's key
    /// must decapsulate it (see [`SealedEvent::open_with_abe_cached`]).
    wrapper: Vec<u8>,
    body: SealedBody,
}

impl fmt::Debug for SealedEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealedEvent")
            .field("recipients", &self.recipients.len())
            .finish_non_exhaustive()
    }
}

impl SealedEvent {
    /// Encrypts `event` to `auditors` and under the event's reader policy.
    pub fn seal(
        event: &AuditEvent,
        auditors: &[AuditorPublicKey],
        abe_public_key: &PublicKey,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<Self, Error> {
        let (abe, kem_key) = abe_public_key.encapsulate(&event.reader_policy()?, rng);
        Self::seal_encapsulated(event, auditors, &abe, &kem_key, rng)
    }

    /// Like [`SealedEvent::seal`], under an encapsulation made earlier for
    /// the event's reader policy (see `KeyWrapper::wrap_encapsulated`).
    pub fn seal_encapsulated(
        event: &AuditEvent,
        auditors: &[AuditorPublicKey],
        abe: &Ciphertext,
        kem_key: &KemKey,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<Self, Error> {
        if auditors.len() > MAX_RECIPIENTS {
            return Err(Error::Invalid(format!("at most {MAX_RECIPIENTS} auditors")));
        }
        let json = Zeroizing::new(
            serde_json::to_vec(event).map_err(|e| Error::Invalid(format!("event: {e}")))?,
        );
        if json.len() > MAX_EVENT_BYTES {
            return Err(Error::Invalid("event too large".into()));
        }
        // The encapsulation must be for the reader policy, possibly with its
        // attributes at their current versions (`role:auditor@v1`).
        let unversioned = |p: &Policy| {
            p.leaves()
                .iter()
                .map(|l| asclepios_crypto::policy::attribute_name(l).to_string())
                .collect::<Vec<_>>()
        };
        if unversioned(abe.policy()) != unversioned(&event.reader_policy()?) {
            return Err(Error::Invalid(
                "the encapsulation is for another policy".into(),
            ));
        }
        let context = RecordContext {
            record_id: format!("audit-event:{}", event.id),
            version: 1,
        };
        let dek = DataKey::generate(rng);
        let sealed = envelope::seal_encapsulated(abe, kem_key, &context, &json, &dek, rng)?;
        let wrapper = sealed.wrapper.to_bytes();
        let aad = recipient_aad(&sealed.body, &wrapper);
        let mut recipients = Vec::with_capacity(auditors.len());
        for auditor in auditors {
            let (enc, wrapped) = hpke::single_shot_seal::<ChaCha20Poly1305, HkdfSha256, Kem, _>(
                &OpModeS::Base,
                &auditor.0,
                HPKE_INFO,
                dek.as_bytes(),
                &aad,
                rng,
            )
            .map_err(|e| Error::Invalid(format!("HPKE: {e}")))?;
            recipients.push(Recipient {
                id: auditor.id(),
                enc: enc.to_bytes().into(),
                wrapped,
            });
        }
        Ok(SealedEvent {
            recipients,
            wrapper,
            body: sealed.body,
        })
    }

    /// The ABE policy the entry is sealed under (in clear in the entry).
    pub fn reader_policy(&self) -> Result<Policy, DecodeError> {
        KeyWrapper::peek_policy(&self.wrapper)
    }

    /// Decrypts as an auditor.
    pub fn open_as_auditor(&self, key: &AuditorSecretKey) -> Result<AuditEvent, Error> {
        let id = AuditorPublicKey(Kem::sk_to_pk(&key.0)).id();
        let r =
            self.recipients.iter().find(|r| r.id == id).ok_or_else(|| {
                Error::Invalid("this entry is not encrypted to this auditor".into())
            })?;
        let enc = <Kem as hpke::Kem>::EncappedKey::from_bytes(&r.enc)
            .map_err(|_| Error::Invalid("malformed HPKE encapsulation".into()))?;
        let key_bytes = Zeroizing::new(
            hpke::single_shot_open::<ChaCha20Poly1305, HkdfSha256, Kem>(
                &OpModeR::Base,
                &key.0,
                &enc,
                HPKE_INFO,
                &r.wrapped,
                &recipient_aad(&self.body, &self.wrapper),
            )
            .map_err(|_| {
                Error::Crypto(asclepios_crypto::Error::Authentication("auditor key wrap"))
            })?,
        );
        let dek: [u8; 32] = key_bytes
            .as_slice()
            .try_into()
            .map_err(|_| Error::Invalid("wrapped key has the wrong length".into()))?;
        self.open_with(&DataKey::from_bytes(dek))
    }

    /// Decrypts with an ABE key (the patient concerned, or an auditor's ABE key).
    pub fn open_with_abe(&self, key: &UserKey) -> Result<AuditEvent, Error> {
        let dek = KeyWrapper::from_bytes(&self.wrapper)?.unwrap_key(key, &self.body)?;
        self.open_with(&dek)
    }

    /// [`SealedEvent::open_with_abe`], decapsulating each encapsulation once
    /// per `cache`: the events about one patient sealed within a minute
    /// share one (see `AuditTrail`), so a reader of many events does the
    /// pairing work once per encapsulation, not once per event.
    pub fn open_with_abe_cached(
        &self,
        key: &UserKey,
        cache: &mut KemCache,
    ) -> Result<AuditEvent, Error> {
        let encoded = EncodedWrapper::parse(&self.wrapper)?;
        let id = encoded.encapsulation_id();
        let kem = match cache.0.get(&id) {
            Some(kem) => kem,
            None => {
                let kem = KeyWrapper::from_bytes(&self.wrapper)?.decapsulate(key)?;
                if cache.0.len() >= KEM_CACHE_ENTRIES {
                    cache.0.clear();
                }
                cache.0.entry(id).or_insert(kem)
            }
        };
        let dek = encoded.unwrap_with(kem, &self.body)?;
        self.open_with(&dek)
    }

    fn open_with(&self, dek: &DataKey) -> Result<AuditEvent, Error> {
        let json = self.body.open(dek)?;
        let event: AuditEvent = serde_json::from_slice(&json)
            .map_err(|e| Error::Invalid(format!("decrypted event is not valid: {e}")))?;
        if self.body.context().record_id != format!("audit-event:{}", event.id) {
            return Err(Error::Invalid(
                "event id does not match its sealed context".into(),
            ));
        }
        Ok(event)
    }

    /// The entry's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::new(Kind::AuditEntry);
        w.u32(self.recipients.len() as u32);
        for r in &self.recipients {
            w.raw(&r.id);
            w.raw(&r.enc);
            w.bytes16(&r.wrapped);
        }
        w.bytes32(&self.wrapper);
        w.bytes32(&self.body.to_bytes());
        w.finish()
    }

    /// Parses an entry, or a log leaf holding one (a [`LinkedLeaf`] of an
    /// event about a patient).
    ///
    /// [`LinkedLeaf`]: crate::log::LinkedLeaf
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        if let Some(linked) = crate::log::LinkedLeaf::from_bytes(bytes)? {
            return Self::from_entry_bytes(&linked.entry);
        }
        Self::from_entry_bytes(bytes)
    }

    fn from_entry_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes, Kind::AuditEntry)?;
        let n = r.count("recipient count", MAX_RECIPIENTS, 8 + 32 + 2)?;
        let mut recipients = Vec::with_capacity(n);
        for _ in 0..n {
            recipients.push(Recipient {
                id: r.fixed("recipient id")?,
                enc: r.fixed("HPKE encapsulation")?,
                wrapped: r.bytes16("wrapped key", 1024)?.to_vec(),
            });
        }
        // Lengths only: the ABE ciphertext's group elements are decoded
        // when a reader's key needs them.
        let wrapper = r.bytes32("key wrapper", MAX_WRAPPED_BYTES)?.to_vec();
        EncodedWrapper::parse(&wrapper)?;
        let body = SealedBody::from_bytes(r.bytes32("sealed event", MAX_EVENT_BYTES + 4096)?)?;
        r.finish()?;
        Ok(SealedEvent {
            recipients,
            wrapper,
            body,
        })
    }
}
