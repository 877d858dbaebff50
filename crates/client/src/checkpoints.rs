//! The checkpoints a client has verified, kept per log under its identity
//! (`identities/<id>.logs/`), so that a later view of a log must be proved
//! consistent with every earlier one: a service that forks its log (one
//! history for this client, another for others) or rolls it back is caught
//! as soon as the two views meet here, and the evidence is written down.
//! Beside each checkpoint, the index of the last entry about this identity
//! read in that log, which every later view of the identity's entries must
//! still hold.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use asclepios_audit::{Checkpoint, NoteVerifier};
use sha2::{Digest, Sha256};

/// The last checkpoint verified per log, in memory and on disk.
#[derive(Debug)]
pub(crate) struct HeldCheckpoints {
    dir: PathBuf,
    held: Mutex<HashMap<String, (Checkpoint, String)>>,
}

impl HeldCheckpoints {
    /// The checkpoints kept in `dir`.
    pub(crate) fn new(dir: PathBuf) -> Self {
        HeldCheckpoints {
            dir,
            held: Mutex::default(),
        }
    }

    fn file(&self, origin: &str) -> PathBuf {
        self.dir.join(format!(
            "{}.checkpoint",
            &hex::encode(Sha256::digest(origin.as_bytes()))[..32]
        ))
    }

    /// The checkpoint held for `log` (its key names its origin), if any.
    /// A held file that no longer verifies is ignored, not trusted.
    pub(crate) fn get(&self, log: &NoteVerifier) -> Option<(Checkpoint, String)> {
        let origin = log.name();
        if let Some(held) = self.lock().get(origin) {
            return Some(held.clone());
        }
        let note = std::fs::read_to_string(self.file(origin)).ok()?;
        let cp = Checkpoint::verify(&note, log).ok()?;
        self.lock()
            .insert(origin.to_string(), (cp.clone(), note.clone()));
        Some((cp, note))
    }

    /// Holds `cp` (signed as `note`) if it is larger than what is held.
    pub(crate) fn advance(&self, cp: &Checkpoint, note: &str) -> Result<(), String> {
        {
            let mut held = self.lock();
            if held.get(&cp.origin).is_some_and(|(h, _)| h.size >= cp.size) {
                return Ok(());
            }
            held.insert(cp.origin.clone(), (cp.clone(), note.to_string()));
        }
        write_atomically(&self.dir, &self.file(&cp.origin), note.as_bytes())
    }

    /// The index and leaf hash of the last entry about this identity it has
    /// read in the log of `origin`: a later view must still hold that leaf
    /// (a service that drops it from this identity's slice, or relinks the
    /// chain around it, is caught).
    pub(crate) fn last_own_entry(&self, origin: &str) -> Option<(u64, [u8; 32])> {
        let text = std::fs::read_to_string(self.file(origin).with_extension("own")).ok()?;
        let (index, leaf) = text.trim().split_once(' ')?;
        Some((
            index.parse().ok()?,
            hex::decode(leaf).ok()?.try_into().ok()?,
        ))
    }

    /// Holds entry `index` (leaf hash `leaf`) as the last about this
    /// identity in `origin`'s log.
    pub(crate) fn hold_own_entry(
        &self,
        origin: &str,
        index: u64,
        leaf: &[u8; 32],
    ) -> Result<(), String> {
        if self
            .last_own_entry(origin)
            .is_some_and(|(held, _)| held >= index)
        {
            return Ok(());
        }
        let path = self.file(origin).with_extension("own");
        let text = format!("{index} {}\n", hex::encode(leaf));
        write_atomically(&self.dir, &path, text.as_bytes())
    }

    /// Writes the two contradicting checkpoints (and what was tried) to an
    /// evidence file; returns its path.
    pub(crate) fn evidence(&self, held: &str, shown: &str, why: &str) -> PathBuf {
        let text = format!(
            "# The audit log contradicts a checkpoint this client verified before.\n\
             # {why}\n\n## held\n\n{held}\n## shown\n\n{shown}"
        );
        let path = self.dir.join(format!(
            "evidence-{}-{}.txt",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            &hex::encode(Sha256::digest(text.as_bytes()))[..8]
        ));
        match write_atomically(&self.dir, &path, text.as_bytes()) {
            Ok(()) => path,
            Err(e) => PathBuf::from(format!("(not written: {e})")),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Checkpoint, String)>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Writes through a uniquely named temporary file and a rename, so that a
/// crash or a concurrent client never leaves a torn file.
fn write_atomically(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut nonce = [0u8; 8];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut nonce);
    let tmp = path.with_extension(format!("tmp-{}", hex::encode(nonce)));
    std::fs::write(&tmp, bytes).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("cannot write {}: {e}", path.display())
    })
}
