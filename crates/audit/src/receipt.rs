//! Signed receipts, and the trail services write them from.
//!
//! Every accepted request is logged as one confidential event; the service
//! answers with a receipt it signs with its certificate key. The receipt names
//! the request (the hash of its RFC 9421 signature base), the outcome, the
//! event's leaf in the log and a signed checkpoint with the inclusion proof,
//! so the caller can check, and later prove, that its request was logged.

use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use rand_core::OsRng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use asclepios_crypto::abe::{Ciphertext, KemKey, PublicKey};
use asclepios_crypto::Policy;

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
    log: Arc<Log<S>>,
    abe_public_key: PublicKey,
    auditors: Vec<AuditorPublicKey>,
    service: String,
    receipt_key: SigningKey,
    /// Events waiting for the next batch, and whether a leader is committing.
    queue: Mutex<Queue>,
    /// Versions the reader policy's attributes, if set.
    #[allow(clippy::type_complexity)]
    resolve: Option<Box<dyn Fn(&Policy) -> Result<Policy, String> + Send + Sync>>,
    /// The auditors to seal each event to, asked at every event, if set
    /// (instead of the fixed `auditors`).
    #[allow(clippy::type_complexity)]
    current_auditors: Option<Box<dyn Fn() -> Result<Vec<AuditorPublicKey>, String> + Send + Sync>>,
    /// Recent encapsulations by reader policy (see `seal`).
    kems: Mutex<std::collections::HashMap<String, (Ciphertext, KemKey, std::time::Instant)>>,
}

/// How long one encapsulation serves the events of one policy, in seconds.
const KEM_REUSE_SECS: u64 = 60;
/// Most policies with a cached encapsulation.
const KEM_CACHE_POLICIES: usize = 4096;

/// An event waiting to be committed, and where its receipt goes.
struct Pending {
    entry: Vec<u8>,
    /// The tag of the patient the event is about, if any.
    subject: Option<crate::log::Subject>,
    request: Hash,
    status: u16,
    reply: std::sync::mpsc::Sender<Result<Receipt, Error>>,
}

#[derive(Default)]
struct Queue {
    pending: Vec<Pending>,
    leader: bool,
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
    /// under ABE, signing receipts with `receipt_key`. Services in one
    /// process share one `Arc<Log>`: their appends then take turns on its
    /// lock instead of racing in the store.
    pub fn new(
        log: impl Into<Arc<Log<S>>>,
        abe_public_key: PublicKey,
        auditors: Vec<AuditorPublicKey>,
        service: &str,
        receipt_key: SigningKey,
    ) -> Self {
        AuditTrail {
            log: log.into(),
            abe_public_key,
            auditors,
            service: service.to_string(),
            receipt_key,
            queue: Mutex::new(Queue::default()),
            kems: Mutex::new(Default::default()),
            resolve: None,
            current_auditors: None,
        }
    }

    /// Puts the events' reader policies at current attribute versions
    /// (`role:auditor@v1` after a revocation), so revoked readers stop
    /// reading new events and keys issued since can.
    pub fn with_policy_versions(
        mut self,
        resolve: impl Fn(&Policy) -> Result<Policy, String> + Send + Sync + 'static,
    ) -> Self {
        self.resolve = Some(Box::new(resolve));
        self
    }

    /// Seals each event to the auditors `current` names at that moment (the
    /// directory's active holders of the auditor role), so that disabling an
    /// auditor or taking the role away removes it from every later event at
    /// once. If `current` fails, the event is not written: nothing is logged
    /// to readers nobody vouched for.
    pub fn with_current_auditors(
        mut self,
        current: impl Fn() -> Result<Vec<AuditorPublicKey>, String> + Send + Sync + 'static,
    ) -> Self {
        self.current_auditors = Some(Box::new(current));
        self
    }

    /// The service's Ed25519 signature over `message`, with the key that
    /// signs its receipts: for answers a client must be able to attribute
    /// to the service itself (a resolved policy), not only to the channel.
    /// Callers prefix `message` with a context string of their own.
    pub fn sign(&self, message: &[u8]) -> ed25519_dalek::Signature {
        use ed25519_dalek::Signer;
        self.receipt_key.sign(message)
    }

    /// The key that checks [`AuditTrail::sign`]'s signatures.
    pub fn verifying_key(&self) -> ed25519_dalek::VerifyingKey {
        self.receipt_key.verifying_key()
    }

    /// The log.
    pub fn log(&self) -> &Log<S> {
        &self.log
    }

    /// Logs `event` (sealed) and returns the signed receipt.
    ///
    /// Group commit: concurrent callers' events are appended as one batch and
    /// covered by one checkpoint. The first caller to find no batch in
    /// progress becomes the leader and commits everything queued, until the
    /// queue is empty; the others wait for their receipts. One durable append
    /// and one checkpoint serve many requests under load, and a lone request
    /// pays no extra latency.
    pub fn record(
        &self,
        event: &AuditEvent,
        request_hash: &Hash,
        status: u16,
    ) -> Result<Receipt, Error>
    where
        S: Send + Sync,
    {
        let mut receipts = self.record_all(std::slice::from_ref(event), request_hash, status)?;
        Ok(receipts.pop().expect("one receipt per event"))
    }

    /// Logs several events of one request (one per patient a search reached)
    /// and returns their receipts in order. They are queued together, so
    /// they go in one append (all or none) unless the queue holds more than
    /// one append's worth ([`crate::log::MAX_BATCH`]).
    pub fn record_all(
        &self,
        events: &[AuditEvent],
        request_hash: &Hash,
        status: u16,
    ) -> Result<Vec<Receipt>, Error>
    where
        S: Send + Sync,
    {
        let sealed = self.seal_all(events)?;
        let (tx, rx) = std::sync::mpsc::channel();
        let lead = {
            let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            for (event, entry) in events.iter().zip(sealed) {
                queue.pending.push(Pending {
                    entry,
                    subject: event.patient.as_deref().map(|p| self.log.subject(p)),
                    request: *request_hash,
                    status,
                    reply: tx.clone(),
                });
            }
            !std::mem::replace(&mut queue.leader, true)
        };
        drop(tx);
        if lead {
            self.lead();
        }
        let mut receipts = Vec::with_capacity(events.len());
        for _ in events {
            receipts.push(
                rx.recv()
                    .map_err(|_| Error::Invalid("the audit batch was abandoned".into()))??,
            );
        }
        Ok(receipts)
    }

    /// Seals `events`, on every core when there are many (a search that
    /// reached many patients): each new reader policy costs an ABE
    /// encryption.
    fn seal_all(&self, events: &[AuditEvent]) -> Result<Vec<Vec<u8>>, Error>
    where
        S: Send + Sync,
    {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        if events.len() < 16 || cores == 1 {
            return events.iter().map(|e| self.seal(e)).collect();
        }
        let per_thread = events.len().div_ceil(cores);
        std::thread::scope(|scope| {
            let parts: Vec<_> = events
                .chunks(per_thread)
                .map(|part| {
                    scope.spawn(move || {
                        part.iter()
                            .map(|e| self.seal(e))
                            .collect::<Result<Vec<_>, _>>()
                    })
                })
                .collect();
            let mut sealed = Vec::with_capacity(events.len());
            for part in parts {
                sealed.extend(
                    part.join()
                        .map_err(|_| Error::Invalid("sealing an event panicked".into()))??,
                );
            }
            Ok(sealed)
        })
    }

    /// Seals an event, reusing a recent encapsulation for its reader policy:
    /// the pairing-group work of one ABE encryption is shared by the events
    /// about one patient within `KEM_REUSE_SECS` (each still has its own data
    /// key, nonce and binding). Cuts the dominant cost of logging a read.
    fn seal(&self, event: &AuditEvent) -> Result<Vec<u8>, Error> {
        let mut policy = event.reader_policy()?;
        if let Some(resolve) = &self.resolve {
            policy = resolve(&policy).map_err(Error::Invalid)?;
        }
        let text = policy.to_string();
        let now = std::time::Instant::now();
        let cached = {
            let cache = self.kems.lock().unwrap_or_else(|p| p.into_inner());
            cache
                .get(&text)
                .filter(|(_, _, made)| now.duration_since(*made).as_secs() < KEM_REUSE_SECS)
                .map(|(ct, key, _)| (ct.clone(), key.clone()))
        };
        let (ct, key) = match cached {
            Some(hit) => hit,
            None => {
                let (ct, key) = self.abe_public_key.encapsulate(&policy, &mut OsRng);
                let mut cache = self.kems.lock().unwrap_or_else(|p| p.into_inner());
                if cache.len() >= KEM_CACHE_POLICIES {
                    cache.clear();
                }
                cache.insert(text, (ct.clone(), key.clone(), now));
                (ct, key)
            }
        };
        let current;
        let auditors = match &self.current_auditors {
            Some(source) => {
                current = source().map_err(Error::Invalid)?;
                &current
            }
            None => &self.auditors,
        };
        Ok(SealedEvent::seal_encapsulated(event, auditors, &ct, &key, &mut OsRng)?.to_bytes())
    }

    /// Commits queued events batch by batch until none are left.
    fn lead(&self) {
        loop {
            let batch = {
                let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
                if queue.pending.is_empty() {
                    queue.leader = false;
                    return;
                }
                // At most one append's worth: a flood of queued events
                // fills several batches instead of failing them all.
                let n = queue.pending.len().min(crate::log::MAX_BATCH);
                queue.pending.drain(..n).collect::<Vec<_>>()
            };
            match self.commit(&batch) {
                Ok(receipts) => {
                    for (p, r) in batch.into_iter().zip(receipts) {
                        let _ = p.reply.send(Ok(r));
                    }
                }
                Err(e) => {
                    let message = e.to_string();
                    for p in batch {
                        let _ = p
                            .reply
                            .send(Err(Error::Invalid(format!("audit log: {message}"))));
                    }
                }
            }
        }
    }

    fn commit(&self, batch: &[Pending]) -> Result<Vec<Receipt>, Error> {
        let entries: Vec<&[u8]> = batch.iter().map(|p| p.entry.as_slice()).collect();
        let subjects: Vec<_> = batch.iter().map(|p| p.subject).collect();
        let (range, leaves) = self.log.append_about(&entries, &subjects)?;
        let checkpoint = self.log.checkpoint()?;
        let size = crate::log::peek_checkpoint(&checkpoint)?.size;
        // Every receipt's proof in one read of the tree.
        let indices: Vec<u64> = range.clone().collect();
        let proofs = self.log.prove_inclusions(&indices, size)?;
        batch
            .iter()
            .zip(range.zip(leaves).zip(proofs))
            .map(|(p, ((index, leaf), proof))| {
                let mut receipt = Receipt {
                    service: self.service.clone(),
                    request: B64.encode(p.request),
                    status: p.status,
                    leaf_index: index,
                    leaf_hash: B64.encode(leaf),
                    checkpoint: checkpoint.clone(),
                    inclusion_proof: proof.iter().map(|h| B64.encode(h)).collect(),
                    signature: String::new(),
                };
                receipt.signature = B64.encode(
                    self.receipt_key
                        .sign(receipt.signed_text().as_bytes())
                        .to_bytes(),
                );
                Ok(receipt)
            })
            .collect()
    }
}
