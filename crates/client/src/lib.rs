//! The asclepios client SDK: what the CLI, the portal and the tests use.
//!
//! A client acts as one identity of a deployment: its certificate and key
//! authenticate every connection (mutual TLS) and sign every request. Records
//! are sealed here, before they leave: the FHIR resource under a fresh data
//! key, the key wrapped under the record's policy (each attribute at its
//! current version, as the authority resolves it), the whole signed by the
//! author. Reading fetches the sealed record and opens it with the identity's
//! ABE key from the authority. Every answer's receipt is checked: signed by
//! the service, naming this request, included in a checkpoint of the audit log.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod checkpoints;
mod files;
pub mod search;

pub use asclepios_api::records::ExportNotice;
pub mod stats;

use std::path::Path;

use std::sync::Arc;

use asclepios_api::keys::{
    check_resolution, resolution_message, IssuedKey, PolicyText, ResolvedPolicy,
};
use asclepios_api::records::{author_message, PutRecord, RecordOut, WithReceipt};
use asclepios_attest::policy::{appraise, Appraisal, Expected, Trust};
use asclepios_attest::ratls::AttestingVerifier;
use asclepios_audit::{NoteVerifier, Receipt};
use asclepios_crypto::abe::{PublicKey, UserKey};
use asclepios_crypto::envelope::{self, Envelope, KeyWrapper, RecordContext, SealedBody};
use asclepios_crypto::Policy;
use asclepios_net::client::SignedClient;
use asclepios_net::pki::public_key;
use asclepios_net::tls::certs_from_pem;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ed25519_dalek::pkcs8::DecodePrivateKey;
use ed25519_dalek::{Signer, SigningKey};
use reqwest::Method;
use serde::de::DeserializeOwned;
use zeroize::Zeroizing;

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The service refused the request.
    #[error("{service} refused the request ({status}): {message}")]
    Refused {
        /// Which service.
        service: &'static str,
        /// The HTTP status.
        status: u16,
        /// The service's explanation.
        message: String,
    },
    /// Transport, certificates or request signing.
    #[error(transparent)]
    Net(#[from] asclepios_net::Error),
    /// Sealing or opening.
    #[error(transparent)]
    Crypto(#[from] asclepios_crypto::Error),
    /// A receipt or the audit log did not check out.
    #[error(transparent)]
    Audit(#[from] asclepios_audit::Error),
    /// The deployment's files (missing, unreadable or malformed).
    #[error("{0}")]
    Files(String),
    /// An answer that is not what the protocol says.
    #[error("unexpected answer: {0}")]
    Protocol(String),
    /// The caller asked for something this client will not send.
    #[error("{0}")]
    Invalid(String),
    /// Search tokens or index values that do not open.
    #[error(transparent)]
    Search(#[from] asclepios_crypto::sse::SseError),
    /// The key authority's attestation was refused (with the reasons).
    #[error("the key authority's attestation is refused: {0}")]
    Attestation(String),
    /// A service showed a view of its audit log that contradicts one this
    /// client verified before: a fork (two histories) or a rollback. Both
    /// signed checkpoints are in the evidence file.
    #[error(
        "the {log} audit log forked or rolled back: {why}; refusing. Evidence (both signed \
         checkpoints): {}",
        evidence.display()
    )]
    LogFork {
        /// Which log.
        log: String,
        /// What contradicted what.
        why: String,
        /// Where the evidence was written.
        evidence: std::path::PathBuf,
    },
    /// The record service served a record older than (or other than) the
    /// latest write the audit log holds for it: a rollback of the store.
    #[error(
        "record {record}: the service served version {served}, but the audit log holds a \
         write of {logged}; the store was rolled back or altered"
    )]
    StaleRecord {
        /// The record's id.
        record: String,
        /// The version (and body) served.
        served: String,
        /// The latest write logged.
        logged: String,
    },
    /// The record was stored (and its receipt checked) but the index was
    /// not updated: index it again with [`Client::index_record`].
    #[error("the record was stored, but indexing it for search failed: {0}")]
    NotIndexed(Box<ClientError>),
}

struct Service {
    name: &'static str,
    http: SignedClient,
    receipt_key: [u8; 32],
    /// The key of the log its receipts and audit slices come from.
    log: NoteVerifier,
}

/// How long an author's key, as the directory gave it, is kept before it is
/// asked for again.
pub const AUTHOR_KEY_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(300);

/// One identity's connection to a deployment.
pub struct Client {
    id: String,
    key_pem: Zeroizing<String>,
    signing: SigningKey,
    authority: Service,
    records: Service,
    abe_public_key: PublicKey,
    user_key: Option<UserKey>,
    attributes: Vec<String>,
    /// Authors' public keys, as the directory gave them.
    authors: std::sync::Mutex<std::collections::HashMap<String, ([u8; 32], std::time::Instant)>>,
    /// Appraises the authority's certificate at every handshake.
    attestation: Option<Arc<AttestingVerifier>>,
    /// Whether a failed attestation stops this client.
    require_attestation: bool,
    /// The verdict of the challenge made before the first key request.
    authority_verdict: std::sync::Mutex<Option<Appraisal>>,
    /// Patients' record-naming keys, as the authority gave them.
    naming_keys:
        std::sync::Mutex<std::collections::HashMap<String, asclepios_crypto::naming::NamingKey>>,
    /// The witnesses whose cosignatures every accepted checkpoint carries.
    witnesses: asclepios_audit::WitnessPolicy,
    /// The last checkpoint verified per log (see [`checkpoints`]).
    held: checkpoints::HeldCheckpoints,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

use files::read;

/// Record payloads are padded to a multiple of this many bytes before
/// sealing: the store sees sizes in steps of 1 KiB, not each resource's.
pub const PAYLOAD_BUCKET: usize = 1024;

/// A request body as JSON.
fn to_json<T: serde::Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, ClientError> {
    serde_json::to_vec(value).map_err(|e| ClientError::Protocol(e.to_string()))
}

/// What a reader of the audit log checked: its events, the signed
/// checkpoint they were proved against, and, for an auditor, the whole tree
/// (to prove an earlier checkpoint consistent with this one).
#[derive(Debug)]
pub struct AuditView {
    /// The events this identity can open.
    pub events: Vec<ProvedEvent>,
    /// The latest signed checkpoint (verified).
    pub checkpoint: asclepios_audit::Checkpoint,
    /// Every entry's leaf hash, as read by an auditor; a patient reads only
    /// their own entries, with proofs, and has no tree.
    pub tree: Option<asclepios_audit::merkle::MemoryTree>,
}

impl AuditView {
    /// Whether `earlier` (a checkpoint seen before) is a prefix of this one:
    /// a consistency proof from the tree, checked against both roots.
    pub fn consistent_with(&self, earlier: &asclepios_audit::Checkpoint) -> bool {
        let cp = &self.checkpoint;
        let Some(tree) = &self.tree else {
            return false;
        };
        earlier.size <= cp.size && cp.size <= tree.size() && {
            let proof = tree.prove_consistency(earlier.size, cp.size);
            asclepios_audit::merkle::verify_consistency(
                earlier.size,
                cp.size,
                &earlier.root,
                &cp.root,
                &proof,
            )
            .is_ok()
        }
    }
}

/// The record writes `events` show done for `patient` (successful creates
/// and updates, each with what it stored).
pub fn logged_writes<'a>(
    events: &'a [ProvedEvent],
    patient: &'a str,
) -> impl Iterator<Item = &'a asclepios_audit::Written> + 'a {
    events
        .iter()
        .map(|p| &p.event)
        .filter(move |e| {
            e.outcome == asclepios_audit::Outcome::Success
                && e.patient.as_deref() == Some(patient)
                && matches!(
                    e.action,
                    asclepios_audit::Action::Create | asclepios_audit::Action::Update
                )
        })
        .filter_map(|e| e.written.as_ref())
}

/// An audit event as its reader checked it.
#[derive(Clone, Debug)]
pub struct ProvedEvent {
    /// The event.
    pub event: asclepios_audit::AuditEvent,
    /// Its leaf index in the log.
    pub index: u64,
    /// The size of the signed checkpoint it was proved against.
    pub checkpoint_size: u64,
    /// Whether its inclusion proof leads to the checkpoint's root.
    pub included: bool,
}

fn refused_appraisal(why: &str) -> Appraisal {
    Appraisal {
        trust: Trust::Contraindicated,
        problems: vec![why.to_string()],
        warnings: Vec::new(),
        claims: None,
        reference: None,
        format: None,
    }
}

/// A service's receipt key: the Ed25519 key of its certificate.
fn service_key(cert_pem: &str) -> Result<[u8; 32], ClientError> {
    let der = certs_from_pem(cert_pem)?;
    Ok(public_key(&der[0])?)
}

impl Client {
    /// Connects as identity `id` of the deployment in `dir`, to the services
    /// at `authority` and `records` (e.g. `https://localhost:7443`).
    pub fn connect(
        dir: &Path,
        id: &str,
        authority: &str,
        records: &str,
    ) -> Result<Self, ClientError> {
        let layout = asclepios_api::layout::Layout::new(dir);
        let ca = read(&layout.ca_cert())?;
        let (cert_path, key_path) = layout.identity(id);
        let cert = read(&cert_path)?;
        let key_pem = Zeroizing::new(read(&key_path)?);
        let signing = SigningKey::from_pkcs8_pem(&key_pem)
            .map_err(|e| ClientError::Protocol(format!("{}: {e}", key_path.display())))?;
        let config = files::ClientConfig::load(dir)?;
        let require_attestation = config.attestation.require;
        // The authority's certificate is appraised at every handshake
        // against the deployment's reference values; with `require`, a
        // refused appraisal fails the connection before any request.
        // Each service's certificate is checked against that service's own
        // TLS name, whatever address is dialled: the record service's
        // certificate (same CA) cannot stand in for the authority.
        let pinned = |name: &str| asclepios_net::tls::pinned_server_verifier(&ca, name);
        let authority_verifier = pinned(&config.authority.tls_name)?;
        let attestation = match config.authority_policy(dir) {
            Ok(policy) => Some(Arc::new(AttestingVerifier::new(
                authority_verifier.clone(),
                policy,
                require_attestation,
            ))),
            Err(e) if require_attestation => return Err(e),
            Err(_) => None,
        };
        let over =
            |verifier: Arc<dyn asclepios_net::tls::ServerVerifier>, base: &str, name: &str| {
                SignedClient::with_tls(
                    base,
                    name,
                    id,
                    asclepios_net::tls::client_config_with_verifier(verifier, &cert, &key_pem)?,
                    &key_pem,
                )
            };
        let authority_http = match &attestation {
            Some(verifier) => over(verifier.clone(), authority, &config.authority.tls_name)?,
            None => over(authority_verifier, authority, &config.authority.tls_name)?,
        };
        let records_http = over(
            pinned(&config.records.tls_name)?,
            records,
            &config.records.tls_name,
        )?;
        let log = files::log_verifier(&layout.log_verifier())?;
        // With the services apart, the record service keeps a log of its
        // own, under its own key.
        let records_log_file = layout.records_log_verifier();
        let records_log = if records_log_file.exists() {
            files::log_verifier(&records_log_file)?
        } else {
            log.clone()
        };
        let service = |name: &'static str,
                       http: SignedClient,
                       log: NoteVerifier|
         -> Result<Service, ClientError> {
            Ok(Service {
                name,
                http,
                receipt_key: service_key(&read(&layout.service(name).0)?)?,
                log,
            })
        };
        Ok(Client {
            id: id.to_string(),
            signing,
            authority: service("authority", authority_http, log)?,
            records: service("records", records_http, records_log)?,
            abe_public_key: files::abe_public_key(dir)?,
            user_key: None,
            attributes: Vec::new(),
            authors: Default::default(),
            key_pem,
            attestation,
            require_attestation,
            authority_verdict: std::sync::Mutex::new(None),
            naming_keys: Default::default(),
            witnesses: {
                // The authority's witness and every independent one the
                // deployment names: the configured quorum (by default all)
                // must have cosigned.
                let mut witnesses = vec![files::witness_verifier(
                    &dir.join(asclepios_api::layout::WITNESS_VERIFIER),
                )?];
                for w in &config.audit.witnesses {
                    witnesses.push(
                        asclepios_audit::CosignatureVerifier::parse(&w.key)
                            .map_err(|e| ClientError::Files(format!("[audit] witnesses: {e}")))?,
                    );
                }
                let quorum =
                    asclepios_audit::WitnessPolicy::quorum_of(config.audit.quorum, witnesses.len())
                        .map_err(ClientError::Files)?;
                asclepios_audit::WitnessPolicy { witnesses, quorum }
            },
            held: checkpoints::HeldCheckpoints::new(
                dir.join("identities").join(format!("{id}.logs")),
            ),
        })
    }

    /// Accepts a service's signed checkpoint only if it carries the log's
    /// signature and the witnesses' cosignatures, and is consistent with
    /// the checkpoint of that log this identity verified last (proved by
    /// the service, either way round). Holds it if it is newer. A fork or
    /// a rollback is refused with [`ClientError::LogFork`] and evidence.
    async fn accept_checkpoint(
        &self,
        service: &Service,
        note: &str,
    ) -> Result<asclepios_audit::Checkpoint, ClientError> {
        let (cp, _) = self
            .witnesses
            .verify(note, &service.log)
            .map_err(|e| ClientError::Audit(e.into()))?;
        // The log's key is named after its origin: a checkpoint naming
        // another log is not this one's.
        if cp.origin != service.log.name() {
            return Err(ClientError::Protocol(format!(
                "the {} log's checkpoint names the log `{}`, not `{}`",
                service.name,
                cp.origin,
                service.log.name()
            )));
        }
        let Some((held, held_note)) = self.held.get(&service.log) else {
            self.held.advance(&cp, note).map_err(ClientError::Files)?;
            return Ok(cp);
        };
        let fork = |why: String| ClientError::LogFork {
            log: service.name.to_string(),
            evidence: self.held.evidence(&held_note, note, &why),
            why,
        };
        if held.size == cp.size {
            if held.root != cp.root {
                return Err(fork(format!(
                    "two different trees of size {} are both signed and cosigned",
                    cp.size
                )));
            }
            return Ok(cp);
        }
        let (old, new) = if held.size < cp.size {
            (&held, &cp)
        } else {
            (&cp, &held)
        };
        let path = format!("/v1/audit/consistency?old={}&new={}", old.size, new.size);
        let proof: Result<(asclepios_api::records::ConsistencyProof, _), _> =
            Self::call(service, Method::GET, &path, Vec::new()).await;
        let proof = match proof {
            Ok((p, _)) => p,
            // The log no longer holds what it checkpointed for us.
            Err(ClientError::Refused { status: 404, .. }) if cp.size < held.size => {
                return Err(fork(format!(
                    "the log shows size {} but cosigned size {} before, and cannot prove the two \
                     consistent: it was rolled back",
                    cp.size, held.size
                )))
            }
            Err(e) => return Err(e),
        };
        let hashes: Option<Vec<asclepios_audit::Hash>> = proof
            .proof
            .iter()
            .map(|h| B64.decode(h).ok().and_then(|b| b.try_into().ok()))
            .collect();
        let hashes = hashes
            .ok_or_else(|| ClientError::Protocol("a consistency proof is malformed".into()))?;
        if let Err(e) = asclepios_audit::merkle::verify_consistency(
            old.size, new.size, &old.root, &new.root, &hashes,
        ) {
            return Err(fork(format!(
                "the checkpoints of sizes {} and {} are not one history: {e}",
                old.size, new.size
            )));
        }
        self.held.advance(&cp, note).map_err(ClientError::Files)?;
        Ok(cp)
    }

    /// How often a request answered 429 (too many requests) is sent again
    /// after its `Retry-After` (5 by default; 0 returns every 429 as
    /// [`ClientError::Refused`], e.g. for a load test that counts them).
    pub fn set_throttle_retries(&mut self, retries: u32) {
        self.authority.http.set_throttle_retries(retries);
        self.records.http.set_throttle_retries(retries);
    }

    /// The identity.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The ABE key last fetched (for tools that open records themselves).
    pub fn user_key(&self) -> Option<&UserKey> {
        self.user_key.as_ref()
    }

    /// The attributes of the ABE key last fetched.
    pub fn attributes(&self) -> &[String] {
        &self.attributes
    }

    async fn call<T: DeserializeOwned>(
        service: &Service,
        method: Method,
        path: &str,
        body: Vec<u8>,
    ) -> Result<(T, [u8; 32]), ClientError> {
        let (response, request_hash) = service.http.send_signed(method, path, body).await?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| ClientError::Net(asclepios_net::Error::Transport(e.to_string())))?;
        if !status.is_success() {
            let message = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
            return Err(ClientError::Refused {
                service: service.name,
                status: status.as_u16(),
                message,
            });
        }
        let value = serde_json::from_slice(&bytes)
            .map_err(|e| ClientError::Protocol(format!("{} answered {e}", service.name)))?;
        Ok((value, request_hash))
    }

    /// Calls a service and checks the answer's receipt.
    async fn call_with_receipt<T: DeserializeOwned>(
        &self,
        which: &'static str,
        method: Method,
        path: &str,
        body: Vec<u8>,
    ) -> Result<(T, Receipt), ClientError> {
        let service = if which == "authority" {
            if self.require_attestation {
                self.ensure_authority_attested().await?;
            }
            &self.authority
        } else {
            &self.records
        };
        let (answer, hash): (WithReceipt<T>, _) = Self::call(service, method, path, body).await?;
        answer
            .receipt
            .verify(&service.receipt_key, &service.log, &hash)?;
        self.accept_checkpoint(service, &answer.receipt.checkpoint)
            .await?;
        Ok((answer.result, answer.receipt))
    }

    /// The appraisal of the authority's certificate at the last handshake,
    /// if the deployment has a policy for it.
    pub fn authority_certificate_appraisal(&self) -> Option<Appraisal> {
        self.attestation.as_ref()?.last().map(|s| s.appraisal)
    }

    /// Challenges the key authority: fresh evidence for a random nonce,
    /// bound to the TLS key of this connection, appraised against the
    /// deployment's policy together with the certificate's own evidence.
    /// The verdict is reported to the record service (audited there, so a
    /// refused authority cannot hide it) and kept for later key requests.
    pub async fn attest_authority(&self) -> Result<Appraisal, ClientError> {
        let verifier = self.attestation.as_ref().ok_or_else(|| {
            ClientError::Attestation(
                "the deployment has no attestation policy for the authority".into(),
            )
        })?;
        let mut nonce = [0u8; 32];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut nonce);
        let path = format!("/v1/attestation/evidence?nonce={}", hex::encode(nonce));
        let answer: Result<(asclepios_api::attestation::EvidenceOut, _), _> =
            Self::call(&self.authority, Method::GET, &path, Vec::new()).await;
        let seen = verifier.last();
        let mut appraisal = match (answer, &seen) {
            (Ok((out, _)), Some(seen)) => match B64.decode(out.evidence.as_bytes()) {
                Ok(evidence) => appraise(
                    &evidence,
                    &Expected {
                        key_sha256: Some(seen.key_sha256),
                        nonce: Some(nonce),
                    },
                    verifier.policy(),
                    asclepios_attest::unix_now(),
                    None,
                ),
                Err(_) => refused_appraisal("the challenge evidence is not base64"),
            },
            (Ok(_), None) => refused_appraisal("no certificate was appraised on this connection"),
            (Err(e), _) => refused_appraisal(&format!("no challenge evidence: {e}")),
        };
        // The certificate's own evidence must hold too.
        if let Some(cert) = seen.map(|s| s.appraisal) {
            if cert.trust > appraisal.trust {
                appraisal.trust = cert.trust;
            }
            appraisal
                .problems
                .extend(cert.problems.iter().map(|p| format!("certificate: {p}")));
        }
        let verdict = asclepios_api::records::AttestationVerdict {
            subject: "authority".into(),
            trust: appraisal.trust.to_string(),
            summary: appraisal.summary(),
        };
        let _: (asclepios_api::records::VerdictLogged, Receipt) = self
            .call_with_receipt(
                "records",
                Method::POST,
                "/v1/attestation/verdicts",
                to_json(&verdict)?,
            )
            .await?;
        if let Ok(mut slot) = self.authority_verdict.lock() {
            *slot = Some(appraisal.clone());
        }
        Ok(appraisal)
    }

    /// Attests this identity as a component: answers the authority's
    /// challenge with evidence from `attester` bound to this identity's
    /// certificate key. The authority appraises it, audits the verdict and,
    /// when components must attest, releases keys only while it holds.
    pub async fn register_component(
        &self,
        attester: &dyn asclepios_attest::attester::Attester,
    ) -> Result<asclepios_api::attestation::Registered, ClientError> {
        use asclepios_api::attestation::{Challenge, Registration};
        let (challenge, _): (Challenge, _) = Self::call(
            &self.authority,
            Method::POST,
            "/v1/attestation/challenge",
            Vec::new(),
        )
        .await?;
        let nonce: [u8; 32] = hex::decode(&challenge.nonce)
            .ok()
            .and_then(|n| n.try_into().ok())
            .ok_or_else(|| ClientError::Protocol("the challenge nonce is not 32 bytes".into()))?;
        let spki = asclepios_attest::ratls::ed25519_spki(&self.signing.verifying_key().to_bytes());
        let evidence = attester
            .evidence(&asclepios_attest::Binding::new(
                &spki,
                asclepios_attest::Freshness::Nonce(nonce),
            ))
            .map_err(|e| ClientError::Attestation(e.to_string()))?;
        let body = to_json(&Registration {
            evidence: B64.encode(evidence.to_bytes()),
        })?;
        let (registered, _): (asclepios_api::attestation::Registered, Receipt) = self
            .call_with_receipt("authority", Method::POST, "/v1/components/register", body)
            .await?;
        Ok(registered)
    }

    /// Challenges the authority once (see [`Client::attest_authority`]) and
    /// refuses to go on if the verdict is contraindicated.
    async fn ensure_authority_attested(&self) -> Result<(), ClientError> {
        let known = self.authority_verdict.lock().ok().and_then(|v| v.clone());
        let appraisal = match known {
            Some(a) => a,
            None => Box::pin(self.attest_authority()).await?,
        };
        if appraisal.trust == Trust::Contraindicated {
            return Err(ClientError::Attestation(appraisal.summary()));
        }
        Ok(())
    }

    /// Fetches a fresh ABE key for the identity's current attributes.
    pub async fn refresh_key(&mut self) -> Result<&[String], ClientError> {
        let (issued, _receipt): (IssuedKey, Receipt) = self
            .call_with_receipt("authority", Method::POST, "/v1/keys", Vec::new())
            .await?;
        let bytes = asclepios_net::sealed_box::open(
            &self.key_pem,
            &asclepios_api::keys::key_context(&self.id),
            &issued.key,
        )?;
        self.user_key = Some(UserKey::from_bytes(&bytes).map_err(asclepios_crypto::Error::from)?);
        self.attributes = issued.attributes;
        Ok(&self.attributes)
    }

    /// The policy with every attribute at its current version, as the key
    /// authority signed it. The answer must carry the authority's signature
    /// (its certificate key, from the deployment's files) over this request,
    /// and be exactly `policy` with version tags added: a party that poses as
    /// the authority cannot widen what a record is sealed under.
    pub async fn resolve_policy(&self, policy: &str) -> Result<Policy, ClientError> {
        let requested = Policy::parse(policy).map_err(asclepios_crypto::Error::from)?;
        let body = to_json(&PolicyText {
            policy: policy.to_string(),
        })?;
        if self.require_attestation {
            self.ensure_authority_attested().await?;
        }
        let (resolved, request_hash): (ResolvedPolicy, _) =
            Self::call(&self.authority, Method::POST, "/v1/policy/resolve", body).await?;
        let refused = |why: String| ClientError::Protocol(format!("policy resolution: {why}"));
        let signature = B64
            .decode(&resolved.signature)
            .ok()
            .and_then(|b| ed25519_dalek::Signature::from_slice(&b).ok())
            .ok_or_else(|| refused("the answer's signature is malformed".into()))?;
        ed25519_dalek::VerifyingKey::from_bytes(&self.authority.receipt_key)
            .and_then(|key| {
                key.verify_strict(
                    &resolution_message(&request_hash, policy, &resolved.policy),
                    &signature,
                )
            })
            .map_err(|_| refused("the answer is not signed by the key authority".into()))?;
        let resolved = Policy::parse(&resolved.policy).map_err(asclepios_crypto::Error::from)?;
        check_resolution(&requested, &resolved).map_err(refused)?;
        Ok(resolved)
    }

    /// Patient `patient`'s record-naming key, from the authority (the
    /// patient's circle and labs get it; audited), kept for this client's
    /// lifetime.
    async fn naming_key(
        &self,
        patient: &str,
    ) -> Result<asclepios_crypto::naming::NamingKey, ClientError> {
        if let Some(key) = self.naming_keys_held().get(patient) {
            return Ok(key.clone());
        }
        asclepios_net::pki::check_identity_id(patient)?;
        let body = to_json(&asclepios_api::records::NamingKeyRequest {
            patient: patient.to_string(),
        })?;
        let (out, _receipt): (asclepios_api::records::NamingKeyOut, _) = self
            .call_with_receipt("authority", Method::POST, "/v1/records/naming-key", body)
            .await?;
        let bytes: Zeroizing<[u8; 32]> = Zeroizing::new(
            hex::decode(&out.key)
                .ok()
                .and_then(|b| b.try_into().ok())
                .filter(|_| out.patient == patient)
                .ok_or_else(|| {
                    ClientError::Protocol("the authority sent a malformed naming key".into())
                })?,
        );
        let key = asclepios_crypto::naming::NamingKey::from_bytes(*bytes);
        self.naming_keys_held()
            .insert(patient.to_string(), key.clone());
        Ok(key)
    }

    fn naming_keys_held(
        &self,
    ) -> std::sync::MutexGuard<
        '_,
        std::collections::HashMap<String, asclepios_crypto::naming::NamingKey>,
    > {
        self.naming_keys.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The opaque id the record service stores `resource_type/fhir_id` of
    /// `patient` under: a MAC under the patient's naming key, so the store
    /// learns neither the FHIR id nor the type (see
    /// [`asclepios_crypto::naming`]).
    pub async fn record_id(
        &self,
        patient: &str,
        resource_type: &str,
        fhir_id: &str,
    ) -> Result<String, ClientError> {
        Ok(self
            .naming_key(patient)
            .await?
            .record_id(resource_type, fhir_id))
    }

    /// [`Client::record_id`] of a FHIR resource (its `resourceType` and
    /// `id`).
    pub async fn record_id_for(
        &self,
        patient: &str,
        resource: &serde_json::Value,
    ) -> Result<String, ClientError> {
        let field = |name: &str| {
            resource[name]
                .as_str()
                .filter(|s| !s.is_empty())
                .ok_or_else(|| {
                    ClientError::Invalid(format!(
                        "the resource has no `{name}`: it cannot be named"
                    ))
                })
        };
        self.record_id(patient, field("resourceType")?, field("id")?)
            .await
    }

    /// Seals a FHIR resource and stores it as `version` of its record,
    /// whose opaque id is returned with the receipt.
    pub async fn put_resource(
        &self,
        patient: &str,
        version: u64,
        resource: &serde_json::Value,
        policy: &str,
    ) -> Result<(String, Receipt), ClientError> {
        let record_id = self.record_id_for(patient, resource).await?;
        let receipt = self
            .put_record(patient, &record_id, version, resource, policy)
            .await?;
        Ok((record_id, receipt))
    }

    /// Seals a FHIR resource and stores it as `version` of `record_id` (an
    /// opaque id: [`Client::record_id_for`]).
    pub async fn put_record(
        &self,
        patient: &str,
        record_id: &str,
        version: u64,
        resource: &serde_json::Value,
        policy: &str,
    ) -> Result<Receipt, ClientError> {
        let policy = self.resolve_policy(policy).await?;
        self.put_record_resolved(patient, record_id, version, resource, &policy)
            .await
    }

    /// Like [`Client::put_record`] with a policy already resolved (bulk
    /// imports resolve once per patient).
    pub async fn put_record_resolved(
        &self,
        patient: &str,
        record_id: &str,
        version: u64,
        resource: &serde_json::Value,
        policy: &Policy,
    ) -> Result<Receipt, ClientError> {
        if !asclepios_crypto::naming::is_opaque_record_id(record_id) {
            return Err(ClientError::Invalid(format!(
                "`{record_id}` is not an opaque record id: derive it with record_id_for (the \
                 store must not learn FHIR ids)"
            )));
        }
        let mut payload = Zeroizing::new(to_json(resource)?);
        // Padded with JSON whitespace to a multiple of PAYLOAD_BUCKET, so a
        // ciphertext's size does not tell a Patient from an Observation.
        let padded = payload.len().div_ceil(PAYLOAD_BUCKET).max(1) * PAYLOAD_BUCKET;
        payload.resize(padded, b' ');
        let context = RecordContext {
            record_id: record_id.to_string(),
            version,
        };
        let envelope = envelope::seal(
            &self.abe_public_key,
            policy,
            &context,
            &payload,
            &mut rand_core::OsRng,
        )?;
        let body = envelope.body.to_bytes();
        let wrapper = envelope.wrapper.to_bytes();
        let signature = self
            .signing
            .sign(&author_message(patient, record_id, version, &body));
        let put = PutRecord {
            patient: patient.to_string(),
            record_id: record_id.to_string(),
            version,
            body: B64.encode(&body),
            wrapper: B64.encode(&wrapper),
            author_signature: B64.encode(signature.to_bytes()),
        };
        let json = to_json(&put)?;
        let (_version, receipt): (u64, _) = self
            .call_with_receipt("records", Method::POST, "/v1/records", json)
            .await?;
        // The keywords are derived here, from the plaintext, and go to the
        // authority only: the record service never sees them.
        self.index_record(
            patient,
            record_id,
            search::record_keywords(patient, resource),
        )
        .await
        .map_err(|e| ClientError::NotIndexed(Box::new(e)))?;
        Ok(receipt)
    }

    /// The sealed record as stored (for inspection and tamper tests).
    pub async fn get_sealed(
        &self,
        patient: &str,
        record_id: &str,
    ) -> Result<(RecordOut, Receipt), ClientError> {
        let (record, receipt): (RecordOut, Receipt) = self
            .call_with_receipt(
                "records",
                Method::GET,
                &format!("/v1/records/{patient}/{record_id}"),
                Vec::new(),
            )
            .await?;
        // The service must answer with the record asked for, not another the
        // caller can also read.
        if record.patient != patient || record.record_id != record_id {
            return Err(ClientError::Protocol(format!(
                "asked for {patient}/{record_id}, got {}/{}",
                record.patient, record.record_id
            )));
        }
        Ok((record, receipt))
    }

    /// Opens a sealed record with this identity's ABE key.
    pub fn open(&self, record: &RecordOut) -> Result<serde_json::Value, ClientError> {
        let key = self.user_key.as_ref().ok_or_else(|| {
            ClientError::Protocol("no ABE key yet: call refresh_key first".into())
        })?;
        let wrapper_b64 = record.wrapper.as_ref().ok_or_else(|| {
            ClientError::Protocol("the record was erased: no key wrapper remains".into())
        })?;
        let decode = |what: &str, s: &str| {
            B64.decode(s)
                .map_err(|_| ClientError::Protocol(format!("{what} is not base64")))
        };
        let body = SealedBody::from_bytes(&decode("body", &record.body)?)
            .map_err(asclepios_crypto::Error::from)?;
        let wrapper = KeyWrapper::from_bytes(&decode("wrapper", wrapper_b64)?)
            .map_err(asclepios_crypto::Error::from)?;
        if body.context().record_id != record.record_id || body.context().version != record.version
        {
            return Err(ClientError::Protocol(
                "the body is bound to another record".into(),
            ));
        }
        let opened = envelope::open(key, &Envelope { body, wrapper })?;
        serde_json::from_slice(&opened.payload)
            .map_err(|e| ClientError::Protocol(format!("record content: {e}")))
    }

    /// Reads and opens the latest version of a record, after checking its
    /// author's signature with the author's key from the directory. A
    /// reader in the patient's circle (who holds the naming key) also checks
    /// that the resource is the one the id names: a writer cannot pass one
    /// resource off under another's id. A reader outside it (a policy may
    /// admit one) cannot tell, and relies on the author's signature alone.
    pub async fn get_record(
        &self,
        patient: &str,
        record_id: &str,
    ) -> Result<(serde_json::Value, Receipt), ClientError> {
        let (resource, receipt, _) = self.read_record(patient, record_id).await?;
        Ok((resource, receipt))
    }

    /// [`Client::get_record`], then [`Client::check_fresh`]: for the patient
    /// (or an auditor), a record the store rolled back is refused.
    pub async fn get_fresh_record(
        &self,
        patient: &str,
        record_id: &str,
    ) -> Result<(serde_json::Value, Receipt), ClientError> {
        let (resource, receipt, record) = self.read_record(patient, record_id).await?;
        self.check_fresh(&record).await?;
        Ok((resource, receipt))
    }

    async fn read_record(
        &self,
        patient: &str,
        record_id: &str,
    ) -> Result<(serde_json::Value, Receipt, RecordOut), ClientError> {
        let (record, receipt) = self.get_sealed(patient, record_id).await?;
        self.check_author(&record).await?;
        let resource = self.open(&record)?;
        match self.record_id_for(patient, &resource).await {
            Ok(named) if named == record_id => {}
            Ok(_) | Err(ClientError::Invalid(_)) => {
                return Err(ClientError::Protocol(format!(
                    "record {record_id} holds {}/{}, which is stored under another id: \
                     its writer ({}) filed it under the wrong id",
                    resource["resourceType"].as_str().unwrap_or("?"),
                    resource["id"].as_str().unwrap_or("?"),
                    record.author
                )))
            }
            // No naming key for this patient: outside the circle.
            Err(ClientError::Refused { status: 403, .. }) => {}
            Err(e) => return Err(e),
        }
        Ok((resource, receipt, record))
    }

    /// Checks that `record` is the latest version the audit log holds a
    /// write of, with the body that write committed to. For a reader of the
    /// log's events about the record's patient (the patient, an auditor):
    /// others cannot open them, and get [`ClientError::Refused`] or an
    /// empty answer. Returns how many logged writes of the record it saw.
    pub async fn check_fresh(&self, record: &RecordOut) -> Result<usize, ClientError> {
        let view = self.audit_view().await?;
        let stale = |served: String, logged: String| ClientError::StaleRecord {
            record: record.record_id.clone(),
            served,
            logged,
        };
        // In log order: the writes of this record, and whether it was
        // erased after the last of them.
        let mut events: Vec<&ProvedEvent> = view.events.iter().collect();
        events.sort_by_key(|p| p.index);
        let resource = format!("record/{}/{}", record.patient, record.record_id);
        let mut writes: Vec<&asclepios_audit::Written> = Vec::new();
        let mut erased = false;
        for p in events {
            let e = &p.event;
            if e.outcome != asclepios_audit::Outcome::Success
                || e.patient.as_deref() != Some(record.patient.as_str())
            {
                continue;
            }
            match e.action {
                asclepios_audit::Action::Create | asclepios_audit::Action::Update => {
                    if let Some(w) = e
                        .written
                        .as_ref()
                        .filter(|w| w.record_id == record.record_id)
                    {
                        writes.push(w);
                        erased = false;
                    }
                }
                asclepios_audit::Action::Delete if e.resource == resource => erased = true,
                _ => {}
            }
        }
        let body = B64
            .decode(&record.body)
            .map_err(|_| ClientError::Protocol("body is not base64".into()))?;
        let served = asclepios_audit::Written::new(&record.record_id, record.version, &body);
        if erased {
            return Err(stale(
                served.version.to_string(),
                "an erasure after its last write".into(),
            ));
        }
        // A version written twice means the store went back and was
        // written again: the earlier write was rolled back.
        for (i, w) in writes.iter().enumerate() {
            if writes[..i]
                .iter()
                .any(|earlier| earlier.version == w.version)
            {
                return Err(stale(
                    served.version.to_string(),
                    format!("two writes of version {}", w.version),
                ));
            }
        }
        if let Some(latest) = writes.iter().max_by_key(|w| w.version) {
            if latest.version > served.version {
                return Err(stale(
                    served.version.to_string(),
                    latest.version.to_string(),
                ));
            }
        }
        if let Some(logged) = writes.iter().rev().find(|w| w.version == served.version) {
            if logged.body_sha256 != served.body_sha256 {
                return Err(stale(
                    format!("{} (body {})", served.version, served.body_sha256),
                    format!("{} (body {})", logged.version, logged.body_sha256),
                ));
            }
        }
        Ok(writes.len())
    }

    /// Checks a record's author signature (body and place, not the
    /// replaceable key wrapper). The author's key comes from the directory
    /// (signed by the authority) and is kept for [`AUTHOR_KEY_MAX_AGE`]; a
    /// signature that does not verify with a kept key is checked once more
    /// with a fresh one (the author's key changed: review finding L6).
    pub async fn check_author(&self, record: &RecordOut) -> Result<(), ClientError> {
        asclepios_net::pki::check_identity_id(&record.author)
            .map_err(|_| ClientError::Protocol("the record names a malformed author".into()))?;
        let cached = self
            .authors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&record.author)
            .filter(|(_, fetched)| fetched.elapsed() < AUTHOR_KEY_MAX_AGE)
            .map(|(key, _)| *key);
        let key = match cached {
            Some(key) => key,
            None => self.author_key(&record.author).await?,
        };
        let body = B64
            .decode(&record.body)
            .map_err(|_| ClientError::Protocol("body is not base64".into()))?;
        let signature = B64
            .decode(&record.author_signature)
            .ok()
            .and_then(|s| ed25519_dalek::Signature::from_slice(&s).ok())
            .ok_or_else(|| ClientError::Protocol("malformed author signature".into()))?;
        let message = author_message(&record.patient, &record.record_id, record.version, &body);
        let verifies = |key: &[u8; 32]| {
            ed25519_dalek::VerifyingKey::from_bytes(key)
                .and_then(|k| k.verify_strict(&message, &signature))
                .is_ok()
        };
        if verifies(&key) {
            return Ok(());
        }
        // A kept key that does not verify: the author's key may have
        // changed since; ask once more.
        if cached.is_some() && verifies(&self.author_key(&record.author).await?) {
            return Ok(());
        }
        Err(ClientError::Protocol(format!(
            "the record's signature does not verify with {}'s key",
            record.author
        )))
    }

    /// `author`'s key as the authority's signed directory entry gives it
    /// now; kept for later checks.
    async fn author_key(&self, author: &str) -> Result<[u8; 32], ClientError> {
        let path = format!("/v1/identities/{author}");
        let (found, _): (asclepios_api::keys::IdentityKey, _) =
            Self::call(&self.authority, Method::GET, &path, Vec::new()).await?;
        // The key counts only as the authority vouches for it.
        let vouched = B64
            .decode(&found.signature)
            .ok()
            .and_then(|b| ed25519_dalek::Signature::from_slice(&b).ok())
            .is_some_and(|signature| {
                ed25519_dalek::VerifyingKey::from_bytes(&self.authority.receipt_key)
                    .and_then(|k| {
                        k.verify_strict(
                            &asclepios_api::keys::identity_entry_message(
                                &found.id,
                                &found.public_key,
                                found.active,
                                found.directory_change,
                            ),
                            &signature,
                        )
                    })
                    .is_ok()
            });
        if !vouched || found.id != author {
            return Err(ClientError::Protocol(format!(
                "the directory entry of {author} is not signed by the key authority"
            )));
        }
        let key: [u8; 32] = hex::decode(&found.public_key)
            .ok()
            .and_then(|k| k.try_into().ok())
            .ok_or_else(|| ClientError::Protocol("the directory gave a malformed key".into()))?;
        self.authors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(author.to_string(), (key, std::time::Instant::now()));
        Ok(key)
    }

    /// The versions of a record, oldest first.
    pub async fn record_versions(
        &self,
        patient: &str,
        record_id: &str,
    ) -> Result<Vec<u64>, ClientError> {
        let path = format!("/v1/records/{patient}/{record_id}/versions");
        Ok(self
            .call_with_receipt("records", Method::GET, &path, Vec::new())
            .await?
            .0)
    }

    /// A patient's record ids with their latest versions.
    pub async fn list_records(&self, patient: &str) -> Result<Vec<(String, u64)>, ClientError> {
        Ok(self
            .call_with_receipt(
                "records",
                Method::GET,
                &format!("/v1/patients/{patient}/records"),
                Vec::new(),
            )
            .await?
            .0)
    }

    /// Breaks the glass for `patient`: a short-lived emergency attribute is
    /// granted (fetch a fresh key to use it), and a critical audit event,
    /// readable by the patient, is logged.
    pub async fn break_glass(
        &self,
        patient: &str,
        reason: &str,
    ) -> Result<asclepios_api::keys::EmergencyGranted, ClientError> {
        let body = to_json(&asclepios_api::keys::EmergencyRequest {
            patient: patient.to_string(),
            reason: reason.to_string(),
        })?;
        Ok(self
            .call_with_receipt("authority", Method::POST, "/v1/emergency", body)
            .await?
            .0)
    }

    /// Break-glass grants waiting for an auditor's review (auditors only).
    pub async fn emergency_reviews(
        &self,
    ) -> Result<Vec<asclepios_api::review::PendingReview>, ClientError> {
        Ok(Self::call(
            &self.authority,
            Method::GET,
            "/v1/emergency/reviews",
            Vec::new(),
        )
        .await?
        .0)
    }

    /// An auditor's decision on a break-glass grant: `approve`, or `flag`
    /// with a comment saying why. Audited; the patient can read it.
    pub async fn review_emergency(
        &self,
        patient: &str,
        grant_id: &str,
        decision: &str,
        comment: &str,
    ) -> Result<asclepios_api::review::Reviewed, ClientError> {
        let body = to_json(&asclepios_api::review::ReviewDecision {
            patient: patient.into(),
            grant_id: grant_id.into(),
            decision: decision.into(),
            comment: comment.into(),
        })?;
        Ok(self
            .call_with_receipt("authority", Method::POST, "/v1/emergency/reviews", body)
            .await?
            .0)
    }

    /// The directory's members (for `role:admin` and `role:auditor`).
    pub async fn directory_members(
        &self,
    ) -> Result<Vec<asclepios_api::admin::MemberOut>, ClientError> {
        Ok(self
            .call_with_receipt(
                "authority",
                Method::GET,
                "/v1/directory/identities",
                Vec::new(),
            )
            .await?
            .0)
    }

    /// Adds an identity to the directory (as `role:admin`; audited). Its
    /// certificate comes from the deployment CA; `public_key` is that
    /// certificate's key.
    pub async fn register_identity(
        &self,
        registration: &asclepios_api::admin::Registration,
    ) -> Result<asclepios_api::admin::ChangeOut, ClientError> {
        let body = to_json(registration)?;
        Ok(self
            .call_with_receipt("authority", Method::POST, "/v1/directory/identities", body)
            .await?
            .0)
    }

    /// Sets an identity's attributes to exactly `attributes` (as
    /// `role:admin`; audited): those taken away are revoked.
    pub async fn set_identity_attributes(
        &self,
        id: &str,
        attributes: &[String],
    ) -> Result<asclepios_api::admin::ChangeOut, ClientError> {
        asclepios_net::pki::check_identity_id(id)?;
        let body = to_json(&asclepios_api::admin::AttributeSet {
            attributes: attributes.to_vec(),
        })?;
        let path = format!("/v1/directory/identities/{id}/attributes");
        Ok(self
            .call_with_receipt("authority", Method::PUT, &path, body)
            .await?
            .0)
    }

    /// Disables an identity (as `role:admin`; audited).
    pub async fn disable_identity(
        &self,
        id: &str,
    ) -> Result<asclepios_api::admin::ChangeOut, ClientError> {
        asclepios_net::pki::check_identity_id(id)?;
        let path = format!("/v1/directory/identities/{id}/disable");
        Ok(self
            .call_with_receipt("authority", Method::POST, &path, Vec::new())
            .await?
            .0)
    }

    /// Sets the HPKE key audit events are sealed to for auditor `id` (as
    /// `role:admin`; audited).
    pub async fn set_auditor_key(
        &self,
        id: &str,
        public_key: &[u8],
    ) -> Result<asclepios_api::admin::ChangeOut, ClientError> {
        asclepios_net::pki::check_identity_id(id)?;
        let body = to_json(&asclepios_api::admin::AuditorKey {
            public_key: hex::encode(public_key),
        })?;
        let path = format!("/v1/directory/identities/{id}/auditor-key");
        Ok(self
            .call_with_receipt("authority", Method::PUT, &path, body)
            .await?
            .0)
    }

    /// Every audit event this identity may read (its ABE key opens them):
    /// for a patient, every access to their records. Checks each slice's
    /// entries against the log's checkpoint.
    pub async fn audit_events(&self) -> Result<Vec<asclepios_audit::AuditEvent>, ClientError> {
        Ok(self
            .audit_views()
            .await?
            .into_iter()
            .flat_map(|view| view.events.into_iter().map(|p| p.event))
            .collect())
    }

    /// The record service's log and, where the key authority keeps a log of
    /// its own (the services apart), the authority's, each checked as
    /// [`Client::audit_view`] checks it.
    pub async fn audit_views(&self) -> Result<Vec<AuditView>, ClientError> {
        let records = self.audit_view_of(&self.records).await?;
        // One log under one key (both services in one process), or two:
        // told apart by their keys, which no service can choose, not by
        // the origin lines they write.
        if self.authority.log.public_key() == self.records.log.public_key() {
            return Ok(vec![records]);
        }
        let authority = self.audit_view_of(&self.authority).await?;
        Ok(vec![records, authority])
    }

    /// The audit log's latest signed checkpoint, verified with the log's
    /// key: what a monitor keeps to prove later views consistent with it.
    pub async fn latest_checkpoint(&self) -> Result<asclepios_audit::Checkpoint, ClientError> {
        // A start past the end gives no entries, only the checkpoint.
        let path = format!("/v1/audit/entries?start={}", u64::MAX);
        let (slice, _): (asclepios_api::records::AuditSlice, _) =
            Self::call(&self.records, Method::GET, &path, Vec::new()).await?;
        let note = slice
            .checkpoint
            .ok_or_else(|| ClientError::Protocol("the service gave no signed checkpoint".into()))?;
        self.accept_checkpoint(&self.records, &note).await
    }

    /// [`Client::audit_events`], each with its place in the log and its
    /// inclusion proof checked against the signed checkpoint, with the
    /// checkpoint and the tree the entries were read into.
    pub async fn audit_view(&self) -> Result<AuditView, ClientError> {
        self.audit_view_of(&self.records).await
    }

    async fn audit_view_of(&self, service: &Service) -> Result<AuditView, ClientError> {
        let key = self.user_key.as_ref().ok_or_else(|| {
            ClientError::Protocol("no ABE key yet: call refresh_key first".into())
        })?;
        let (first, _): (asclepios_api::records::AuditSlice, _) = Self::call(
            service,
            Method::GET,
            "/v1/audit/entries?start=0",
            Vec::new(),
        )
        .await?;
        if first.proved.is_some() {
            return self.patient_view_of(service, key, first).await;
        }
        let mut events = Vec::new();
        let mut kems = asclepios_audit::KemCache::default();
        let mut tree = asclepios_audit::merkle::MemoryTree::new();
        let mut checkpoint = None;
        let mut retries = 0;
        let mut slice = first;
        loop {
            if slice.start != tree.size() || slice.proved.is_some() {
                return Err(ClientError::Protocol(
                    "the audit slice starts elsewhere".into(),
                ));
            }
            checkpoint = slice.checkpoint.or(checkpoint);
            if slice.entries.is_empty() {
                // Done, unless the checkpoint vouches for entries appended
                // since the last slice: then read on.
                let behind = match &checkpoint {
                    Some(note) => {
                        asclepios_audit::log::peek_checkpoint(note)
                            .map_err(ClientError::Audit)?
                            .size
                            > tree.size()
                    }
                    None => false,
                };
                if !behind {
                    break;
                }
                retries += 1;
                if retries > 3 {
                    return Err(ClientError::Protocol(
                        "the checkpoint vouches for entries the service does not serve".into(),
                    ));
                }
            }
            for entry in &slice.entries {
                let bytes = B64
                    .decode(entry)
                    .map_err(|_| ClientError::Protocol("an audit entry is not base64".into()))?;
                let index = tree.size();
                let leaf = asclepios_audit::merkle::leaf_hash(&bytes);
                tree.push_leaf_hash(leaf);
                if let Ok(sealed) = asclepios_audit::SealedEvent::from_bytes(&bytes) {
                    if let Ok(event) = sealed.open_with_abe_cached(key, &mut kems) {
                        events.push((index, leaf, event));
                    }
                }
            }
            let path = format!("/v1/audit/entries?start={}", tree.size());
            slice = Self::call(service, Method::GET, &path, Vec::new()).await?.0;
        }
        // The entries read must be the log a signed checkpoint vouches for;
        // entries past it are not vouched for and are left out.
        let note = checkpoint
            .ok_or_else(|| ClientError::Protocol("the service gave no signed checkpoint".into()))?;
        let cp = self.accept_checkpoint(service, &note).await?;
        if cp.size > tree.size() || tree.root_at(cp.size) != cp.root {
            return Err(ClientError::Protocol(
                "the audit entries do not match the signed checkpoint".into(),
            ));
        }
        let events = events
            .into_iter()
            .filter(|(index, _, _)| *index < cp.size)
            .map(|(index, leaf, event)| {
                let proof = tree.prove_inclusion(index, cp.size);
                ProvedEvent {
                    included: asclepios_audit::merkle::verify_inclusion(
                        index, cp.size, &leaf, &proof, &cp.root,
                    )
                    .is_ok(),
                    event,
                    index,
                    checkpoint_size: cp.size,
                }
            })
            .collect();
        Ok(AuditView {
            events,
            checkpoint: cp,
            tree: Some(tree),
        })
    }

    /// A patient's view: the service sends only the entries about this
    /// patient, each with its inclusion proof in the tree of one cosigned
    /// checkpoint (accepted first, and pinned for the following slices). An
    /// entry whose proof fails is refused; so is one sealed to anyone but this patient: the service was
    /// to send this patient's entries alone.
    async fn patient_view_of(
        &self,
        service: &Service,
        key: &UserKey,
        first: asclepios_api::records::AuditSlice,
    ) -> Result<AuditView, ClientError> {
        let note = first
            .checkpoint
            .clone()
            .ok_or_else(|| ClientError::Protocol("the service gave no signed checkpoint".into()))?;
        let served = self.accept_checkpoint(service, &note).await?;
        // Never a view older than one this client verified: a service that
        // serves an old checkpoint (its newer rows deleted) is asked for
        // proofs in the held one.
        let (cp, mut slice) = match self.held.get(&service.log) {
            Some((held, _)) if held.size > served.size => {
                let path = format!("/v1/audit/entries?start=0&size={}", held.size);
                (
                    held,
                    Self::call(service, Method::GET, &path, Vec::new()).await?.0,
                )
            }
            _ => (served, first),
        };
        let mut events = Vec::new();
        let mut expected_start = 0;
        let mut last_index = None;
        let held_own = self.held.last_own_entry(&cp.origin);
        // Whether the held leaf was read again, and the last leaf read.
        let mut held_found = false;
        let mut last_leaf = None;
        let mut kems = asclepios_audit::KemCache::default();
        let broken = |why: String| {
            ClientError::Protocol(format!(
                "the service left entries about this patient out of their audit slice: {why}"
            ))
        };
        loop {
            let proved = slice.proved.take().ok_or_else(|| {
                ClientError::Protocol("a patient's audit slice came without proofs".into())
            })?;
            if proved.size != cp.size || slice.start != expected_start {
                return Err(ClientError::Protocol(format!(
                    "the audit slice is for entries {}.. of a tree of {}, not {expected_start}.. of {}",
                    slice.start, proved.size, cp.size
                )));
            }
            if proved.indices.len() != slice.entries.len()
                || proved.proofs.len() != slice.entries.len()
            {
                return Err(ClientError::Protocol(
                    "the audit slice's entries, indices and proofs do not match".into(),
                ));
            }
            for ((entry, index), proof) in slice
                .entries
                .iter()
                .zip(&proved.indices)
                .zip(&proved.proofs)
            {
                let index = *index;
                if index < slice.start || last_index.is_some_and(|last| index <= last) {
                    return Err(ClientError::Protocol(
                        "the audit slice's indices are out of order".into(),
                    ));
                }
                let bytes = B64
                    .decode(entry)
                    .map_err(|_| ClientError::Protocol("an audit entry is not base64".into()))?;
                let proof = proof
                    .iter()
                    .map(|h| {
                        B64.decode(h)
                            .ok()
                            .and_then(|h| asclepios_audit::Hash::try_from(h.as_slice()).ok())
                    })
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| {
                        ClientError::Protocol("an inclusion proof hash is not 32 bytes".into())
                    })?;
                let leaf = asclepios_audit::merkle::leaf_hash(&bytes);
                asclepios_audit::merkle::verify_inclusion(index, cp.size, &leaf, &proof, &cp.root)
                    .map_err(|e| {
                        ClientError::Protocol(format!(
                            "audit entry {index} is not in the signed checkpoint: {e}"
                        ))
                    })?;
                // Each entry about this patient names the one before it:
                // the chain read must have no gap.
                let linked = asclepios_audit::LinkedLeaf::from_bytes(&bytes)
                    .ok()
                    .flatten()
                    .ok_or_else(|| {
                        ClientError::Protocol(format!(
                            "audit entry {index} is not linked to this patient's entries"
                        ))
                    })?;
                if held_own == Some((index, leaf)) {
                    held_found = true;
                }
                if linked.previous != last_index {
                    return Err(broken(format!(
                        "entry {index} follows entry {}, but the slice went from {}",
                        linked.previous.map_or("none".into(), |i| i.to_string()),
                        last_index.map_or("none".into(), |i| i.to_string()),
                    )));
                }
                let sealed = asclepios_audit::SealedEvent::from_bytes(&linked.entry)
                    .map_err(|e| ClientError::Protocol(format!("audit entry {index}: {e}")))?;
                let mine = format!("patient:{}", self.id);
                if !sealed.reader_policy().is_ok_and(|p| {
                    p.leaves()
                        .iter()
                        .any(|l| asclepios_crypto::policy::attribute_name(l) == mine)
                }) {
                    return Err(ClientError::Protocol(format!(
                        "audit entry {index} is not about this patient: the service sent another's entry"
                    )));
                }
                last_index = Some(index);
                last_leaf = Some(leaf);
                // Sealed to this patient, but not under a key this client
                // holds (an attribute version since re-issued): proved, not read.
                let Ok(event) = sealed.open_with_abe_cached(key, &mut kems) else {
                    continue;
                };
                events.push(ProvedEvent {
                    event,
                    index,
                    checkpoint_size: cp.size,
                    included: true,
                });
            }
            let Some(next) = proved.next else { break };
            if next <= slice.start || next > cp.size {
                return Err(ClientError::Protocol(
                    "the audit slice points back or past its tree".into(),
                ));
            }
            expected_start = next;
            let path = format!("/v1/audit/entries?start={next}&size={}", cp.size);
            slice = Self::call(service, Method::GET, &path, Vec::new()).await?.0;
        }
        // The last entry read before must still be here, the same leaf (a
        // tail cut off, or a chain relinked around it).
        if let Some((held, _)) = held_own.filter(|_| !held_found) {
            return Err(broken(format!(
                "entry {held} was read before and is missing now"
            )));
        }
        if let (Some(last), Some(leaf)) = (last_index, last_leaf) {
            self.held
                .hold_own_entry(&cp.origin, last, &leaf)
                .map_err(ClientError::Files)?;
        }
        Ok(AuditView {
            events,
            checkpoint: cp,
            tree: None,
        })
    }

    /// As a patient: grants `grant.grantee` access to this patient's records.
    pub async fn grant_consent(
        &self,
        grant: &asclepios_api::consent::ConsentGrant,
    ) -> Result<asclepios_api::consent::ConsentOut, ClientError> {
        let body = to_json(grant)?;
        Ok(self
            .call_with_receipt("authority", Method::POST, "/v1/consents", body)
            .await?
            .0)
    }

    /// As a patient: withdraws a consent (its grantee's access ends as a revocation does).
    pub async fn withdraw_consent(
        &self,
        consent_id: &str,
    ) -> Result<asclepios_api::consent::ConsentOut, ClientError> {
        let path = format!("/v1/consents/{consent_id}/withdraw");
        Ok(self
            .call_with_receipt("authority", Method::POST, &path, Vec::new())
            .await?
            .0)
    }

    /// As a patient: every consent, latest version each (with its FHIR Consent).
    pub async fn consents(&self) -> Result<Vec<asclepios_api::consent::ConsentOut>, ClientError> {
        Ok(
            Self::call(&self.authority, Method::GET, "/v1/consents", Vec::new())
                .await?
                .0,
        )
    }

    /// Logs a de-identified export made from records this identity read.
    pub async fn record_export(
        &self,
        notice: &asclepios_api::records::ExportNotice,
    ) -> Result<Receipt, ClientError> {
        let body = to_json(notice)?;
        let ((), receipt) = self
            .call_with_receipt("records", Method::POST, "/v1/exports", body)
            .await?;
        Ok(receipt)
    }

    /// Erases a record: every version's body and key wrapper, out of the
    /// record service's store files. The patient only. The record leaves
    /// the search index too.
    pub async fn erase_record(
        &self,
        patient: &str,
        record_id: &str,
    ) -> Result<asclepios_api::records::Erased, ClientError> {
        let erased = self
            .call_with_receipt(
                "records",
                Method::DELETE,
                &format!("/v1/records/{patient}/{record_id}"),
                Vec::new(),
            )
            .await?
            .0;
        self.index_record(patient, record_id, Vec::new()).await?;
        Ok(erased)
    }

    /// Erases every record of a patient (as [`Client::erase_record`] does
    /// one), in one transaction. The patient only. `progress` is called
    /// after each record leaves the search index.
    pub async fn erase_patient(
        &self,
        patient: &str,
        progress: impl Fn(usize, usize),
    ) -> Result<asclepios_api::records::Erased, ClientError> {
        let records = self.list_records(patient).await?;
        let erased = self
            .call_with_receipt(
                "records",
                Method::DELETE,
                &format!("/v1/patients/{patient}/records"),
                Vec::new(),
            )
            .await?
            .0;
        for (i, (record_id, _)) in records.iter().enumerate() {
            self.index_record(patient, record_id, Vec::new()).await?;
            progress(i + 1, records.len());
        }
        Ok(erased)
    }
}
