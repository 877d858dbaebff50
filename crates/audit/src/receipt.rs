//! Signed receipts, and the trail services write them from.
//!
//! Every accepted request is logged as one confidential event; the service
//! answers with a receipt it signs with its certificate key. The receipt names
//! the request (the hash of its RFC 9421 signature base), the outcome, the
//! event's leaf in the log and a signed checkpoint with the inclusion proof,
//! so the caller can check, and later prove, that its request was logged.

use std::sync::Mutex;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use rand_core::OsRng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use asclepios_crypto::abe::PublicKey;

use crate::event::{AuditEvent, AuditorPublicKey, SealedEvent};
use crate::log::{Log, LogStore};
use crate::merkle::{self, Hash};
use crate::note::{Checkpoint, NoteVerifier};
use crate::Error;

/// A service's signed statement that a request was handled and logged.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    /// Which service.
    pub service: String,
    /// SHA-256 of the request's signature base (base64).
    pub request: String,
    /// The HTTP status it answered with.
    pub status: u16,
    /// The audit event's leaf index.
    pub leaf_index: u64,
    /// The leaf's hash (base64).
    pub leaf_hash: String,
    /// A signed checkpoint that includes the leaf.
    pub checkpoint: String,
    /// The inclusion proof of the leaf in that checkpoint (base64 hashes).
    pub inclusion_proof: Vec<String>,
    /// The service's Ed25519 signature over all of the above (base64).
    pub signature: String,
}

impl Receipt {
    fn signed_text(&self) -> String {
        format!(
            "asclepios receipt v1\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n",
            self.service,
            self.request,
            self.status,
            self.leaf_index,
            self.leaf_hash,
            B64.encode(Sha256::digest(self.checkpoint.as_bytes())),
            self.inclusion_proof.join(",")
        )
    }

    /// Checks the receipt: signed by the service key, for this request, and
    /// its leaf included in a checkpoint signed by the log. Returns the checkpoint.
    pub fn verify(
        &self,
        service_key: &[u8; 32],
        log: &NoteVerifier,
        request_hash: &Hash,
    ) -> Result<Checkpoint, Error> {
        let bad = |why: &str| Error::Invalid(format!("receipt: {why}"));
        let key = VerifyingKey::from_bytes(service_key).map_err(|_| bad("bad service key"))?;
        let sig = B64
            .decode(&self.signature)
            .ok()
            .and_then(|b| Signature::from_slice(&b).ok())
            .ok_or_else(|| bad("malformed signature"))?;
        key.verify_strict(self.signed_text().as_bytes(), &sig)
            .map_err(|_| bad("not signed by the service"))?;
        if self.request != B64.encode(request_hash) {
            return Err(bad("it is for another request"));
        }
        let checkpoint = Checkpoint::verify(&self.checkpoint, log)?;
        let decode = |s: &str| -> Result<Hash, Error> {
            B64.decode(s)
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| bad("malformed hash"))
        };
        let leaf = decode(&self.leaf_hash)?;
        let proof = self
            .inclusion_proof
            .iter()
            .map(|h| decode(h))
            .collect::<Result<Vec<_>, _>>()?;
        merkle::verify_inclusion(
            self.leaf_index,
            checkpoint.size,
            &leaf,
            &proof,
            &checkpoint.root,
        )
        .map_err(|e| bad(&format!("the event is not in the checkpoint: {e}")))?;
        Ok(checkpoint)
    }
}

/// What a service needs to log events and sign receipts.
pub struct AuditTrail<S> {
    log: Log<S>,
    abe_public_key: PublicKey,
    auditors: Vec<AuditorPublicKey>,
    service: String,
    receipt_key: SigningKey,
    /// Appends and checkpoints one at a time, so every receipt's checkpoint
    /// includes its own leaf.
    order: Mutex<()>,
}

impl<S> std::fmt::Debug for AuditTrail<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditTrail")
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

impl<S: LogStore> AuditTrail<S> {
    /// A trail for `service` over `log`, sealing events to `auditors` and
    /// under ABE, signing receipts with `receipt_key`.
    pub fn new(
        log: Log<S>,
        abe_public_key: PublicKey,
        auditors: Vec<AuditorPublicKey>,
        service: &str,
        receipt_key: SigningKey,
    ) -> Self {
        AuditTrail {
            log,
            abe_public_key,
            auditors,
            service: service.to_string(),
            receipt_key,
            order: Mutex::new(()),
        }
    }

    /// The log.
    pub fn log(&self) -> &Log<S> {
        &self.log
    }

    /// Logs `event` (sealed) and returns the signed receipt.
    pub fn record(
        &self,
        event: &AuditEvent,
        request_hash: &Hash,
        status: u16,
    ) -> Result<Receipt, Error> {
        let sealed =
            SealedEvent::seal(event, &self.auditors, &self.abe_public_key, &mut OsRng)?.to_bytes();
        let leaf = merkle::leaf_hash(&sealed);
        let _order = self.order.lock().unwrap_or_else(|p| p.into_inner());
        let index = self.log.append(&[&sealed])?.start;
        let checkpoint = self.log.checkpoint()?;
        let size = crate::log::peek_checkpoint(&checkpoint)?.size;
        let proof = self.log.prove_inclusion(index, size)?;
        let mut receipt = Receipt {
            service: self.service.clone(),
            request: B64.encode(request_hash),
            status,
            leaf_index: index,
            leaf_hash: B64.encode(leaf),
            checkpoint,
            inclusion_proof: proof.iter().map(|h| B64.encode(h)).collect(),
            signature: String::new(),
        };
        receipt.signature = B64.encode(
            self.receipt_key
                .sign(receipt.signed_text().as_bytes())
                .to_bytes(),
        );
        Ok(receipt)
    }
}
