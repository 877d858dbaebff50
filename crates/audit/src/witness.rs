//! A transparency-log witness (C2SP `tlog-witness`), and what a log needs to
//! ask witnesses for cosignatures.
//!
//! A witness knows some logs by their checkpoint keys. For each log (by its
//! origin line) it remembers the latest checkpoint it cosigned, and cosigns
//! a new one only if a consistency proof shows that it extends that one. It
//! never cosigns two different roots for one size, nor a smaller tree: a log
//! operator who rewrites, truncates or forks its log cannot get a
//! cosignature for the result, and clients that require cosignatures refuse
//! checkpoints without them.
//!
//! The witness keeps its state in its own directory ([`Witness::open`]), one
//! file per log, replaced atomically (written, synced, renamed, directory
//! synced) before a cosignature leaves: a crash never rolls it back. A
//! submission signed by the log that contradicts the state (a fork or a
//! rollback) is kept as evidence under `evidence/`.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use sha2::{Digest, Sha256};

use crate::cosignature::Cosigner;
use crate::merkle::{self, Hash};
use crate::note::{Checkpoint, NoteVerifier, SignedNote};

/// Most consistency-proof lines in a request (C2SP: at most 63).
pub const MAX_PROOF_LINES: usize = 63;
/// Longest request body accepted, in bytes.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Why a witness did not cosign, with the HTTP status `tlog-witness` gives it.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
pub enum WitnessError {
    /// The request is not a well-formed `add-checkpoint` body, or its old
    /// size exceeds the checkpoint's (400).
    #[error("malformed add-checkpoint request: {0}")]
    Malformed(String),
    /// The witness does not know the log (404).
    #[error("this witness does not witness the log `{0}`")]
    UnknownLog(String),
    /// No signature by the log's key verifies (403).
    #[error("the checkpoint is not signed by the log's key")]
    NotSigned,
    /// The old size is not the size the witness last cosigned (409); the
    /// submitter should prove consistency from `latest` instead. Also the
    /// answer to a checkpoint of the same size with another root, or of a
    /// smaller size than cosigned (then `fork` is set: evidence of a forked
    /// or rolled-back log).
    #[error("{}", if *fork { format!("the witness cosigned a tree of size {latest} that this checkpoint contradicts: the log forked or was rolled back") } else { format!("the witness's latest cosigned size is {latest}") })]
    Conflict {
        /// The size of the latest checkpoint the witness cosigned.
        latest: u64,
        /// Whether the submission is a second root for that size.
        fork: bool,
    },
    /// The consistency proof does not verify (422): the log rewrote the
    /// history the witness saw.
    #[error("the consistency proof from size {old} does not verify: {why}")]
    Inconsistent {
        /// The size proved from.
        old: u64,
        /// What failed.
        why: String,
    },
    /// The witness could not keep its state (500); nothing was cosigned.
    #[error("the witness cannot store its state: {0}")]
    Storage(String),
}

impl WitnessError {
    /// The HTTP status `tlog-witness` answers this with.
    pub fn status(&self) -> u16 {
        match self {
            WitnessError::Malformed(_) => 400,
            WitnessError::NotSigned => 403,
            WitnessError::UnknownLog(_) => 404,
            WitnessError::Conflict { .. } => 409,
            WitnessError::Inconsistent { .. } => 422,
            WitnessError::Storage(_) => 500,
        }
    }

    /// Whether this is evidence that the log misbehaved (a fork, a rollback
    /// or a rewritten history), rather than a request to resend.
    pub fn is_misbehaviour(&self) -> bool {
        matches!(
            self,
            WitnessError::Conflict { fork: true, .. } | WitnessError::Inconsistent { .. }
        )
    }
}

/// An `add-checkpoint` request: the size the submitter believes the
/// witness is at, a consistency proof from it, and the signed checkpoint.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct AddCheckpoint {
    /// The witness's latest cosigned size, as the submitter knows it.
    pub old_size: u64,
    /// The consistency proof from `old_size` to the checkpoint's size.
    pub proof: Vec<Hash>,
    /// The signed checkpoint note.
    pub checkpoint: String,
}

impl AddCheckpoint {
    /// The request body.
    pub fn to_body(&self) -> String {
        let mut body = format!("old {}\n", self.old_size);
        for h in &self.proof {
            body.push_str(&B64.encode(h));
            body.push('\n');
        }
        body.push('\n');
        body.push_str(&self.checkpoint);
        body
    }

    /// Parses a request body.
    pub fn parse(body: &[u8]) -> Result<Self, WitnessError> {
        let bad = |why: &str| WitnessError::Malformed(why.to_string());
        if body.len() > MAX_REQUEST_BYTES {
            return Err(bad("the body is too long"));
        }
        let body = std::str::from_utf8(body).map_err(|_| bad("the body is not UTF-8"))?;
        let (head, checkpoint) = body
            .split_once("\n\n")
            .ok_or_else(|| bad("no blank line before the checkpoint"))?;
        let mut lines = head.split('\n');
        let old = lines
            .next()
            .and_then(|l| l.strip_prefix("old "))
            .ok_or_else(|| bad("the first line must be `old <size>`"))?;
        let canonical = !old.is_empty()
            && old.bytes().all(|b| b.is_ascii_digit())
            && (old == "0" || !old.starts_with('0'));
        let old_size: u64 = old
            .parse()
            .ok()
            .filter(|_| canonical)
            .ok_or_else(|| bad("the old size must be a decimal without leading zeros"))?;
        let proof = lines
            .map(|l| {
                B64.decode(l)
                    .ok()
                    .and_then(|h| Hash::try_from(h).ok())
                    .ok_or_else(|| bad("a proof line is not a base64 SHA-256 hash"))
            })
            .collect::<Result<Vec<Hash>, _>>()?;
        if proof.len() > MAX_PROOF_LINES {
            return Err(bad("more than 63 proof lines"));
        }
        Ok(AddCheckpoint {
            old_size,
            proof,
            checkpoint: checkpoint.to_string(),
        })
    }
}

/// A witness: its cosigning key, the logs it knows, and its state.
pub struct Witness {
    cosigner: Cosigner,
    logs: HashMap<String, NoteVerifier>,
    dir: PathBuf,
    /// The latest cosigned `(size, root)` per origin. Held across a
    /// submission's check and the state's write, so two submissions cannot
    /// interleave (the race `tlog-witness` warns of).
    state: Mutex<HashMap<String, (u64, Hash)>>,
}

impl std::fmt::Debug for Witness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Witness")
            .field("name", &self.cosigner.verifier().name())
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn io(what: &str, path: &Path, e: std::io::Error) -> WitnessError {
    WitnessError::Storage(format!("{what} {}: {e}", path.display()))
}

/// The state file of a log: named by a hash of its origin, so any origin
/// makes a safe file name.
fn state_file(dir: &Path, origin: &str) -> PathBuf {
    dir.join("state").join(format!(
        "{}.checkpoint",
        hex::encode(Sha256::digest(origin))
    ))
}

/// Writes `contents` to `path` so that a crash leaves the old file or the
/// new one, never a mix, and the new one is on disk when this returns.
fn replace_file(path: &Path, contents: &[u8]) -> Result<(), WitnessError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(|e| io("cannot create", &tmp, e))?;
    f.write_all(contents)
        .and_then(|_| f.sync_all())
        .map_err(|e| io("cannot write", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io("cannot replace", path, e))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("cannot sync", dir, e))
}

impl Witness {
    /// Opens the witness whose state lives in `dir` (created if missing),
    /// cosigning with `cosigner` for the logs `logs` (`(origin, checkpoint
    /// key)` pairs). Refuses a state file that is not a checkpoint signed
    /// by its log.
    pub fn open(
        dir: &Path,
        cosigner: Cosigner,
        logs: impl IntoIterator<Item = (String, NoteVerifier)>,
    ) -> Result<Self, WitnessError> {
        for sub in ["state", "evidence"] {
            let path = dir.join(sub);
            std::fs::create_dir_all(&path).map_err(|e| io("cannot create", &path, e))?;
        }
        let logs: HashMap<String, NoteVerifier> = logs.into_iter().collect();
        let mut state = HashMap::new();
        for (origin, key) in &logs {
            let path = state_file(dir, origin);
            let note = match std::fs::read_to_string(&path) {
                Ok(note) => note,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io("cannot read", &path, e)),
            };
            let cp = Checkpoint::verify(&note, key).map_err(|e| {
                WitnessError::Storage(format!(
                    "{} is not a checkpoint of `{origin}`: {e}",
                    path.display()
                ))
            })?;
            if &cp.origin != origin {
                return Err(WitnessError::Storage(format!(
                    "{} holds a checkpoint of `{}`, not `{origin}`",
                    path.display(),
                    cp.origin
                )));
            }
            state.insert(origin.clone(), (cp.size, cp.root));
        }
        Ok(Witness {
            cosigner,
            logs,
            dir: dir.to_path_buf(),
            state: Mutex::new(state),
        })
    }

    /// The witness's public key.
    pub fn verifier(&self) -> crate::cosignature::CosignatureVerifier {
        self.cosigner.verifier()
    }

    /// The latest `(size, root)` this witness cosigned for `origin`.
    pub fn latest(&self, origin: &str) -> Option<(u64, Hash)> {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(origin)
            .copied()
    }

    /// Files of evidence of misbehaving logs kept so far.
    pub fn evidence(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.dir.join("evidence"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        files.sort();
        files
    }

    /// Handles an `add-checkpoint` body: checks it as `tlog-witness` says,
    /// stores the new state and returns the cosignature line(s).
    pub fn add_checkpoint(&self, body: &[u8]) -> Result<String, WitnessError> {
        let request = AddCheckpoint::parse(body)?;
        let note = SignedNote::parse(&request.checkpoint)
            .map_err(|e| WitnessError::Malformed(e.to_string()))?;
        let checkpoint = Checkpoint::from_text(&note.text)
            .map_err(|e| WitnessError::Malformed(e.to_string()))?;
        let key = self
            .logs
            .get(&checkpoint.origin)
            .ok_or_else(|| WitnessError::UnknownLog(checkpoint.origin.clone()))?;
        note.verify(key).map_err(|_| WitnessError::NotSigned)?;
        if request.old_size > checkpoint.size {
            return Err(WitnessError::Malformed(format!(
                "old size {} exceeds the checkpoint's size {}",
                request.old_size, checkpoint.size
            )));
        }
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (latest, latest_root) = state
            .get(&checkpoint.origin)
            .copied()
            .unwrap_or((0, merkle::empty_root()));
        if request.old_size != latest {
            // A smaller tree than one already cosigned is a rollback.
            let rollback = latest > checkpoint.size;
            if rollback {
                self.keep_evidence(&checkpoint, latest, &request, "rollback");
            }
            return Err(WitnessError::Conflict {
                latest,
                fork: rollback,
            });
        }
        if latest == checkpoint.size && latest_root != checkpoint.root {
            self.keep_evidence(&checkpoint, latest, &request, "fork");
            return Err(WitnessError::Conflict { latest, fork: true });
        }
        if let Err(e) = merkle::verify_consistency(
            latest,
            checkpoint.size,
            &latest_root,
            &checkpoint.root,
            &request.proof,
        ) {
            self.keep_evidence(&checkpoint, latest, &request, "inconsistent");
            return Err(WitnessError::Inconsistent {
                old: latest,
                why: e.to_string(),
            });
        }
        let time = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let line = self
            .cosigner
            .cosign(&note.text, time)
            .map_err(|e| WitnessError::Malformed(e.to_string()))?;
        // Persisted before the cosignature leaves; never moved backwards.
        if checkpoint.size > latest || !state.contains_key(&checkpoint.origin) {
            replace_file(
                &state_file(&self.dir, &checkpoint.origin),
                request.checkpoint.as_bytes(),
            )?;
            state.insert(
                checkpoint.origin.clone(),
                (checkpoint.size, checkpoint.root),
            );
        }
        Ok(line)
    }

    /// Keeps a submission that contradicts what was cosigned, with the
    /// witness's own view, for whoever investigates. Best effort: the
    /// refusal stands whether or not the evidence could be written.
    fn keep_evidence(
        &self,
        checkpoint: &Checkpoint,
        latest: u64,
        request: &AddCheckpoint,
        kind: &str,
    ) {
        let cosigned =
            std::fs::read_to_string(state_file(&self.dir, &checkpoint.origin)).unwrap_or_default();
        let text = format!(
            "# {kind}: the log `{}` submitted a checkpoint of size {} that does not extend the \
             one of size {latest} this witness cosigned.\n\n## cosigned before\n\n{cosigned}\n\
             ## submitted\n\n{}\n",
            checkpoint.origin,
            checkpoint.size,
            request.to_body()
        );
        let name = format!(
            "{}-{kind}-{}.txt",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
            &hex::encode(Sha256::digest(text.as_bytes()))[..8]
        );
        let _ = std::fs::write(self.dir.join("evidence").join(name), text);
    }
}

/// How a log reaches one witness: in process, or over `tlog-witness` HTTP.
pub trait WitnessClient: Send + Sync {
    /// Submits an `add-checkpoint` body; returns the cosignature lines, or
    /// the witness's refusal (a `Storage` error for an unreachable one).
    fn add_checkpoint(&self, body: &str) -> Result<String, WitnessError>;
}

impl WitnessClient for Witness {
    fn add_checkpoint(&self, body: &str) -> Result<String, WitnessError> {
        Witness::add_checkpoint(self, body.as_bytes())
    }
}

impl<T: WitnessClient + ?Sized> WitnessClient for std::sync::Arc<T> {
    fn add_checkpoint(&self, body: &str) -> Result<String, WitnessError> {
        (**self).add_checkpoint(body)
    }
}
