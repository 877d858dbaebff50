//! The append-only log over a storage backend.
//!
//! The backend keeps entries, every complete subtree hash and the signed
//! checkpoints (see [`LogStore`]). The log keeps the tree's right border in
//! memory, so an append hashes only the new leaves and the nodes they complete,
//! and writes them with the entries in one transaction. Proofs read about
//! `2·log2(n)` stored hashes in one query.
//!
//! The log never signs two inconsistent checkpoints: before signing size `n`,
//! it proves, from the store, that the tree of `n` leaves extends the last
//! checkpoint it signed, and refuses otherwise (a store edited behind its back).
//! "The last checkpoint it signed" is the larger of the one this process signed
//! (or was told of with [`Log::trust_checkpoint`]) and the one in the store, so
//! deleting checkpoint rows does not let a rewritten history be signed. A
//! deployment keeps its latest checkpoint outside the database too (witnesses,
//! monitors, the data directory) and hands it to `trust_checkpoint` at start.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Mutex;

use crate::cosignature::{CosignatureVerifier, WitnessPolicy};
use crate::merkle::{self, Hash, NodeId, NodeSource};
use crate::note::{Checkpoint, NoteSigner, NoteVerifier, SignedNote};
use crate::witness::{AddCheckpoint, WitnessClient, WitnessError};
use crate::Error;
use asclepios_crypto::format::{Kind, Reader, Writer};
use asclepios_crypto::DecodeError;
use sha2::Sha256;
use zeroize::Zeroizing;

/// Most entries accepted in one append.
pub const MAX_BATCH: usize = 65_536;
/// Largest entry accepted, in bytes.
pub const MAX_ENTRY_BYTES: usize = 1 << 20;
/// How long an append keeps retrying when other writers of the same log
/// (services of one deployment in other processes) win the races.
const APPEND_PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);

/// What a log needs from a database. Implementations make `append` atomic and
/// durable before returning, and refuse it when `first_index` is not the
/// current size (another writer got there first).
pub trait LogStore {
    /// The backend's error.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Number of entries in `log` (0 for a log never written).
    fn log_size(&self, log: &str) -> Result<u64, Self::Error>;

    /// Appends `entries` at `first_index..` with the complete subtree hashes
    /// they create and each entry's subject tag (`subjects` is as long as
    /// `entries`), atomically. Returns `Ok(false)` without writing anything
    /// when the log's size is no longer `first_index`.
    fn log_append(
        &self,
        log: &str,
        first_index: u64,
        entries: &[&[u8]],
        subjects: &[Option<Subject>],
        nodes: &[(NodeId, Hash)],
    ) -> Result<bool, Self::Error>;

    /// For each of `subjects`, the last entry below `before` tagged with it
    /// (its index and leaf), in one read.
    fn log_last_about(
        &self,
        log: &str,
        subjects: &[Subject],
        before: u64,
    ) -> Result<Vec<Option<IndexedLeaf>>, Self::Error>;

    /// Up to `limit` entries in `range` tagged with `subject`, with their
    /// indices, in order.
    fn log_entries_about(
        &self,
        log: &str,
        subject: &Subject,
        range: Range<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, Self::Error>;

    /// The hashes of complete subtrees (an error if one is missing).
    fn log_nodes(&self, log: &str, ids: &[NodeId]) -> Result<Vec<Hash>, Self::Error>;

    /// Entries `range` (in order).
    fn log_entries(&self, log: &str, range: Range<u64>) -> Result<Vec<Vec<u8>>, Self::Error>;

    /// Records a signed checkpoint of `size` leaves.
    fn log_put_checkpoint(&self, log: &str, size: u64, note: &str) -> Result<(), Self::Error>;

    /// The signed checkpoint of the largest size, if any.
    fn log_latest_checkpoint(&self, log: &str) -> Result<Option<(u64, String)>, Self::Error>;
}

/// A leaf and its index in the log.
pub type IndexedLeaf = (u64, Vec<u8>);

/// An entry's subject tag: who the entry is about (a patient), keyed with
/// a secret of the log's operator (see [`Log::subject`]), so the store can
/// hand a patient their entries alone without a column that names them.
pub type Subject = [u8; 16];

/// A leaf about a subject: the subject's tag and the index of the previous
/// leaf about the same subject in this log (none for the first), then the
/// entry. The links make each subject's leaves one chain inside the Merkle
/// tree, so whoever serves a patient their entries cannot leave one out
/// unseen: the next entry names it. With the tag in the leaf, anyone who
/// reads every entry (an auditor, [`audit_entries`]) checks every chain.
///
/// ```text
/// LinkedLeaf = header(0x0d) | subject(16) | u64 (previous index + 1, or 0)
///              | bytes32(entry)
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkedLeaf {
    /// Whom the entry is about (see [`Log::subject`]).
    pub subject: Subject,
    /// The index of the previous leaf about the same subject.
    pub previous: Option<u64>,
    /// The entry itself.
    pub entry: Vec<u8>,
}

impl LinkedLeaf {
    /// The leaf's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(Kind::LinkedLeaf, 28 + self.entry.len());
        w.raw(&self.subject);
        w.u64(self.previous.map_or(0, |i| i.saturating_add(1)));
        w.bytes32(&self.entry);
        w.finish()
    }

    /// Parses a linked leaf; `Ok(None)` for a leaf of another kind (an entry
    /// about no subject, stored as it is).
    pub fn from_bytes(leaf: &[u8]) -> Result<Option<Self>, DecodeError> {
        if leaf.get(..5) != Some(&[b'A', b'S', b'C', b'L', Kind::LinkedLeaf as u8][..]) {
            return Ok(None);
        }
        let mut r = Reader::new(leaf, Kind::LinkedLeaf)?;
        let subject = r.fixed("subject")?;
        let previous = r.u64("previous leaf")?.checked_sub(1);
        let entry = r.bytes32("linked entry", MAX_ENTRY_BYTES)?.to_vec();
        r.finish()?;
        Ok(Some(LinkedLeaf {
            subject,
            previous,
            entry,
        }))
    }
}

/// Most subjects whose last leaf a log process remembers (a million
/// patients: about 40 MiB).
const SUBJECT_HEADS: usize = 1 << 20;

/// HKDF info for the key of subject tags.
const SUBJECT_KEY_INFO: &[u8] = b"asclepios audit subject tag v1";

fn storage<E: std::error::Error + Send + Sync + 'static>(e: E) -> Error {
    Error::Storage(Box::new(e))
}

/// Subtrees of at least `2^CACHE_MIN_LEVEL` leaves are kept in memory once
/// known to be right: they are 1/16 of all nodes, appear in every proof, and
/// never change. A proof then reads only its few low-level siblings from the
/// store. Only hashes this process computed, or read from the store as part of
/// a proof that it checked against the current root, enter the cache.
const CACHE_MIN_LEVEL: u8 = 4;
/// At most this many cached hashes (about 40 MiB with the map's overhead);
/// larger logs cache only their higher levels.
const CACHE_MAX_NODES: usize = 1 << 19;

#[derive(Default)]
struct NodeCache(Mutex<HashMap<NodeId, Hash>>);

impl NodeCache {
    /// Whether every cacheable subtree the ranges' tilings need is cached.
    fn covers(&self, ranges: &[(u64, u64)]) -> bool {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        ranges.iter().all(|&(a, b)| {
            merkle::tiling(a, b)
                .iter()
                .all(|id| id.level < CACHE_MIN_LEVEL || map.contains_key(id))
        })
    }

    fn insert(&self, nodes: impl IntoIterator<Item = (NodeId, Hash)>) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for (id, hash) in nodes {
            if id.level >= CACHE_MIN_LEVEL && map.len() < CACHE_MAX_NODES {
                map.insert(id, hash);
            }
        }
    }
}

/// Hashes from the cache, the rest from the store in one read. What was read
/// from the store is kept aside in `fetched` until the caller has checked it.
struct Nodes<'a, S> {
    store: &'a S,
    log: &'a str,
    cache: Option<&'a NodeCache>,
    fetched: std::cell::RefCell<Vec<(NodeId, Hash)>>,
}

impl<S: LogStore> NodeSource for Nodes<'_, S> {
    type Error = Error;
    fn nodes(&self, ids: &[NodeId]) -> Result<Vec<Hash>, Error> {
        let mut out: Vec<Option<Hash>> = match self.cache {
            Some(cache) => {
                let map = cache.0.lock().unwrap_or_else(|p| p.into_inner());
                ids.iter().map(|id| map.get(id).copied()).collect()
            }
            None => vec![None; ids.len()],
        };
        let missing: Vec<NodeId> = ids
            .iter()
            .zip(&out)
            .filter(|(_, h)| h.is_none())
            .map(|(id, _)| *id)
            .collect();
        if !missing.is_empty() {
            let fetched = self.store.log_nodes(self.log, &missing).map_err(storage)?;
            if fetched.len() != missing.len() {
                return Err(Error::Inconsistent(format!(
                    "the store returned {} subtree hashes for {} asked",
                    fetched.len(),
                    missing.len()
                )));
            }
            self.fetched
                .borrow_mut()
                .extend(missing.iter().copied().zip(fetched.iter().copied()));
            let mut fetched = fetched.into_iter();
            for slot in out.iter_mut().filter(|h| h.is_none()) {
                *slot = fetched.next();
            }
        }
        Ok(out.into_iter().flatten().collect())
    }
}

struct Head {
    size: u64,
    frontier: Vec<Hash>,
}

impl Head {
    fn root(&self) -> Hash {
        let mut iter = self.frontier.iter().rev();
        match iter.next() {
            None => merkle::empty_root(),
            Some(last) => iter.fold(*last, |acc, h| merkle::node_hash(h, &acc)),
        }
    }
}

/// A transparency log named `log_id` in a store, signing checkpoints for
/// `origin`.
pub struct Log<S> {
    store: S,
    log_id: String,
    origin: String,
    signer: NoteSigner,
    head: Mutex<Head>,
    cache: NodeCache,
    /// The largest checkpoint this process signed or was told to trust.
    last_signed: Mutex<Option<Checkpoint>>,
    /// The last leaf this process appended per subject (see `last_about`).
    subject_heads: Mutex<HashMap<Subject, u64>>,
    /// The largest stored (cosigned) note this process made: served even if
    /// its row was deleted from the store.
    last_note: Mutex<Option<(u64, String)>>,
    /// The witnesses asked to cosign each checkpoint, and how many must.
    witnesses: Vec<WitnessSlot>,
    quorum: usize,
    /// Set once a witness reported that this log forked, rolled back or
    /// rewrote its history: no checkpoint is signed again by this process.
    alarm: Mutex<Option<String>>,
    /// Keys [`Log::subject`].
    subject_key: Zeroizing<[u8; 32]>,
    /// Held from choosing a checkpoint's size to storing it cosigned: two
    /// trails of one log must not show the witness a size smaller than one
    /// it has just cosigned (which is what a rollback looks like).
    signing: Mutex<()>,
}

/// One witness as the log knows it: how to reach it, its key, and the size
/// it last cosigned (as far as this process knows).
struct WitnessSlot {
    key: CosignatureVerifier,
    client: Box<dyn WitnessClient>,
    size: Mutex<u64>,
}

impl<S> std::fmt::Debug for Log<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log")
            .field("log_id", &self.log_id)
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

impl<S: LogStore> Log<S> {
    /// Opens (or starts) the log `log_id`; `origin` is the checkpoint origin
    /// line, `signer` the checkpoint key.
    pub fn open(store: S, log_id: &str, origin: &str, signer: NoteSigner) -> Result<Self, Error> {
        let probe = Checkpoint {
            origin: origin.to_string(),
            size: 0,
            root: merkle::empty_root(),
            extensions: Vec::new(),
        };
        if origin.is_empty() || Checkpoint::from_text(&probe.to_text()).as_ref() != Ok(&probe) {
            return Err(Error::Invalid(
                "the origin must be one non-empty line without control characters".into(),
            ));
        }
        let subject_key = signer.derive_key(SUBJECT_KEY_INFO);
        let log = Log {
            store,
            log_id: log_id.to_string(),
            origin: origin.to_string(),
            signer,
            subject_key,
            head: Mutex::new(Head {
                size: 0,
                frontier: Vec::new(),
            }),
            cache: NodeCache::default(),
            last_signed: Mutex::new(None),
            last_note: Mutex::new(None),
            subject_heads: Mutex::new(HashMap::new()),
            witnesses: Vec::new(),
            quorum: 0,
            alarm: Mutex::new(None),
            signing: Mutex::new(()),
        };
        log.reload()?;
        log.warm_cache()?;
        Ok(log)
    }

    /// Loads every stored subtree of `2^CACHE_MIN_LEVEL` leaves or more (as
    /// many as the cache holds, largest first) and checks each against its
    /// children and the head, so proofs read only low-level siblings from the
    /// start. A stored hash that does not fit is an error: the store was
    /// edited.
    fn warm_cache(&self) -> Result<(), Error> {
        let (size, _) = self.head();
        let frontier = merkle::frontier(size);
        let head_frontier = self
            .head
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .frontier
            .clone();
        // The lowest level whose nodes, with all above, fit in the cache.
        let mut low = CACHE_MIN_LEVEL;
        while low < 63 && (size >> low) as usize > CACHE_MAX_NODES / 2 {
            low += 1;
        }
        let mut ids = Vec::new();
        let mut level = low;
        while level < 64 && size >> level > 0 {
            ids.extend((0..size >> level).map(|j| NodeId::new(level, j)));
            level += 1;
        }
        if ids.is_empty() {
            return Ok(());
        }
        let hashes = self.store.log_nodes(&self.log_id, &ids).map_err(storage)?;
        if hashes.len() != ids.len() {
            return Err(Error::Inconsistent(
                "stored subtree hashes are missing".into(),
            ));
        }
        let map: HashMap<NodeId, Hash> = ids.into_iter().zip(hashes).collect();
        for (id, hash) in &map {
            if id.level > low {
                let left = map.get(&NodeId::new(id.level - 1, 2 * id.index));
                let right = map.get(&NodeId::new(id.level - 1, 2 * id.index + 1));
                if let (Some(l), Some(r)) = (left, right) {
                    if &merkle::node_hash(l, r) != hash {
                        return Err(Error::Inconsistent(format!(
                            "the stored subtree hash at level {} index {} does not match its children",
                            id.level, id.index
                        )));
                    }
                }
            }
        }
        for (id, hash) in frontier.iter().zip(&head_frontier) {
            if map.get(id).is_some_and(|h| h != hash) {
                return Err(Error::Inconsistent(
                    "stored subtree hashes disagree with the head".into(),
                ));
            }
        }
        // The largest stored subtree at each level is tied to the head through
        // the frontier: a complete node at level >= low either is on the
        // frontier or has a parent in the map, so the checks above chain every
        // cached hash to the head's root.
        self.cache.insert(map);
        Ok(())
    }

    /// Re-reads the size and right border from the store.
    fn reload(&self) -> Result<(), Error> {
        // Held across the reads: an append of this process (which holds it
        // across its write) cannot commit between the size read here and
        // the head set, so a reload never moves the head back over it.
        let mut head = self.head.lock().unwrap_or_else(|p| p.into_inner());
        let size = self.store.log_size(&self.log_id).map_err(storage)?;
        let ids = merkle::frontier(size);
        let frontier = self.store.log_nodes(&self.log_id, &ids).map_err(storage)?;
        if frontier.len() != ids.len() {
            return Err(Error::Inconsistent(
                "the store's right border is incomplete".into(),
            ));
        }
        *head = Head { size, frontier };
        Ok(())
    }

    /// Tells the log of a checkpoint it signed before (kept outside the
    /// database). It will refuse to sign anything that does not extend it.
    pub fn trust_checkpoint(&self, note: &str) -> Result<(), Error> {
        let cp = Checkpoint::verify(note, &self.verifier())?;
        if cp.origin != self.origin {
            return Err(Error::Invalid(format!(
                "checkpoint of `{}`, not of this log `{}`",
                cp.origin, self.origin
            )));
        }
        let mut last = self.last_signed.lock().unwrap_or_else(|p| p.into_inner());
        if last.as_ref().is_none_or(|l| l.size < cp.size) {
            *last = Some(cp);
        }
        Ok(())
    }

    /// Closes the log, returning the backend.
    pub fn into_store(self) -> S {
        self.store
    }

    /// The backend.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The checkpoint verifier key.
    pub fn verifier(&self) -> NoteVerifier {
        self.signer.verifier()
    }

    /// Catches up with other writers (other service instances on the same
    /// store) and returns the current size and root.
    pub fn sync(&self) -> Result<(u64, Hash), Error> {
        self.reload()?;
        Ok(self.head())
    }

    /// The current size and root, as this instance last saw them.
    pub fn head(&self) -> (u64, Hash) {
        let head = self.head.lock().unwrap_or_else(|p| p.into_inner());
        (head.size, head.root())
    }

    /// Appends entries durably; returns their indices. One transaction for the
    /// batch. If another writer appended meanwhile, reloads and retries.
    pub fn append(&self, entries: &[&[u8]]) -> Result<Range<u64>, Error> {
        Ok(self.append_about(entries, &vec![None; entries.len()])?.0)
    }

    /// [`Log::append`] with each entry's subject tag (`subjects[i]` for
    /// `entries[i]`; `None` for entries about no patient); also returns the
    /// leaf hashes, which for an entry about a subject are of its
    /// [`LinkedLeaf`].
    pub fn append_about(
        &self,
        entries: &[&[u8]],
        subjects: &[Option<Subject>],
    ) -> Result<(Range<u64>, Vec<Hash>), Error> {
        if subjects.len() != entries.len() {
            return Err(Error::Invalid("one subject per entry".into()));
        }
        if entries.len() > MAX_BATCH {
            return Err(Error::Invalid(format!(
                "at most {MAX_BATCH} entries per append"
            )));
        }
        if let Some(e) = entries.iter().find(|e| e.len() > MAX_ENTRY_BYTES) {
            return Err(Error::Invalid(format!(
                "an entry of {} bytes exceeds the {MAX_ENTRY_BYTES}-byte limit",
                e.len()
            )));
        }
        let started = std::time::Instant::now();
        for attempt in 0u64.. {
            if attempt > 0 {
                // Another writer won the race. Retry at once the first time;
                // then pause a little, with jitter, so that two writers that
                // collided do not collide again in step.
                if started.elapsed() > APPEND_PATIENCE {
                    break;
                }
                if attempt > 1 {
                    let jitter = rand_core::RngCore::next_u32(&mut rand_core::OsRng) % 500;
                    std::thread::sleep(std::time::Duration::from_micros(
                        100 * attempt.min(10) + u64::from(jitter),
                    ));
                }
            }
            let mut head = self.head.lock().unwrap_or_else(|p| p.into_inner());
            let first = head.size;
            // Links are taken under the head lock, for this first index: a
            // store that moved meanwhile refuses the append, and the retry
            // links again.
            let linked = self.link(first, entries, subjects)?;
            let leaves: Vec<Hash> = linked.iter().map(|e| merkle::leaf_hash(e)).collect();
            let (nodes, frontier) = merkle::append_nodes(head.size, &head.frontier, &leaves);
            let stored: Vec<&[u8]> = linked.iter().map(|e| e.as_ref()).collect();
            if self
                .store
                .log_append(&self.log_id, first, &stored, subjects, &nodes)
                .map_err(storage)?
            {
                head.size += entries.len() as u64;
                head.frontier = frontier;
                self.cache.insert(nodes);
                {
                    let mut heads = self.subject_heads.lock().unwrap_or_else(|p| p.into_inner());
                    if heads.len() > SUBJECT_HEADS {
                        heads.clear();
                    }
                    for (i, subject) in subjects.iter().enumerate() {
                        if let Some(subject) = subject {
                            heads.insert(*subject, first + i as u64);
                        }
                    }
                }
                return Ok((first..head.size, leaves));
            }
            drop(head);
            self.reload()?;
        }
        Err(Error::Conflict)
    }

    /// The leaves of `entries` appended at `first`: an entry about a
    /// subject becomes a [`LinkedLeaf`] naming the previous leaf about the
    /// same subject (earlier in this batch, or the last in the store); the
    /// others are stored as they are.
    fn link<'a>(
        &self,
        first: u64,
        entries: &[&'a [u8]],
        subjects: &[Option<Subject>],
    ) -> Result<Vec<std::borrow::Cow<'a, [u8]>>, Error> {
        let mut last = self.last_about(subjects, first)?;
        let mut leaves = Vec::with_capacity(entries.len());
        for (i, (entry, subject)) in entries.iter().zip(subjects).enumerate() {
            let Some(subject) = subject else {
                leaves.push(std::borrow::Cow::Borrowed(*entry));
                continue;
            };
            let index = first + i as u64;
            let previous = last.insert(*subject, Some(index)).flatten();
            leaves.push(std::borrow::Cow::Owned(
                LinkedLeaf {
                    subject: *subject,
                    previous,
                    entry: entry.to_vec(),
                }
                .to_bytes(),
            ));
        }
        Ok(leaves)
    }

    /// The last leaf below `before` about each of `subjects`: the later of
    /// the one the store's tags name (which must be a leaf about that
    /// subject: a re-tagged leaf is refused) and the last this process
    /// appended (a leaf untagged in the store meanwhile is still linked to).
    /// One read of the store for the whole batch.
    fn last_about(
        &self,
        subjects: &[Option<Subject>],
        before: u64,
    ) -> Result<HashMap<Subject, Option<u64>>, Error> {
        let distinct: Vec<Subject> = subjects
            .iter()
            .flatten()
            .copied()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        if distinct.is_empty() {
            return Ok(HashMap::new());
        }
        let tagged = self
            .store
            .log_last_about(&self.log_id, &distinct, before)
            .map_err(storage)?;
        if tagged.len() != distinct.len() {
            return Err(Error::Inconsistent(
                "the store answered for other subjects".into(),
            ));
        }
        let heads = self.subject_heads.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = HashMap::with_capacity(distinct.len());
        for (subject, tagged) in distinct.iter().zip(tagged) {
            let tagged = match tagged {
                Some((index, leaf)) => {
                    let about = LinkedLeaf::from_bytes(&leaf)
                        .ok()
                        .flatten()
                        .map(|l| l.subject);
                    if about.as_ref() != Some(subject) || index >= before {
                        return Err(Error::Inconsistent(format!(
                            "the store tags entry {index} with a subject its leaf does not name"
                        )));
                    }
                    Some(index)
                }
                None => None,
            };
            let appended = heads.get(subject).copied().filter(|i| *i < before);
            out.insert(*subject, tagged.max(appended));
        }
        Ok(out)
    }

    /// The previous checkpoint: the larger of the store's latest and the one
    /// this process knows of. Both must be ours, and agree where they meet.
    fn previous_checkpoint(&self) -> Result<Option<(Checkpoint, Option<String>)>, Error> {
        let stored = match self
            .store
            .log_latest_checkpoint(&self.log_id)
            .map_err(storage)?
        {
            Some((row_size, note)) => {
                let cp = Checkpoint::verify(&note, &self.verifier())?;
                if cp.size != row_size || cp.origin != self.origin {
                    return Err(Error::Inconsistent(
                        "the stored checkpoint does not match its row".into(),
                    ));
                }
                Some((cp, Some(note)))
            }
            None => None,
        };
        let known = self
            .last_signed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        Ok(match (stored, known) {
            (Some((s, note)), Some(k)) if s.size == k.size => {
                if s.root != k.root {
                    return Err(Error::Inconsistent(format!(
                        "two different checkpoints of size {} exist",
                        s.size
                    )));
                }
                Some((s, note))
            }
            (Some((s, note)), Some(k)) => {
                if s.size > k.size {
                    Some((s, note))
                } else {
                    Some((k, None))
                }
            }
            (Some(s), None) => Some(s),
            (None, Some(k)) => Some((k, None)),
            (None, None) => None,
        })
    }

    /// Signs a checkpoint of the current tree, after proving from the store
    /// that it extends the last checkpoint signed. Returns the signed note.
    pub fn checkpoint(&self) -> Result<String, Error> {
        let _turn = self.signing.lock().unwrap_or_else(|p| p.into_inner());
        self.checkpoint_in_turn()
    }

    fn checkpoint_in_turn(&self) -> Result<String, Error> {
        let previous = self.previous_checkpoint()?;
        if let Some((old, _)) = &previous {
            if self.head().0 < old.size {
                // Another writer may have appended: catch up before judging.
                self.reload()?;
            }
        }
        let (size, root) = self.head();
        if let Some((old, old_note)) = previous {
            if size < old.size {
                return Err(Error::Inconsistent(format!(
                    "the log has {size} entries but a checkpoint of {} was signed",
                    old.size
                )));
            }
            // Read straight from the store: the check is of what it holds.
            let proof = merkle::prove_consistency(&self.uncached_nodes(), old.size, size)?;
            merkle::verify_consistency(old.size, size, &old.root, &root, &proof).map_err(|e| {
                Error::Inconsistent(format!(
                    "the stored tree does not extend the last signed checkpoint: {e}"
                ))
            })?;
            if old.size == size {
                if let Some(note) = old_note {
                    return self.witnessed(note, size, false);
                }
            }
        }
        // The root from the in-memory border must agree with the stored nodes.
        let stored_root = merkle::root(&self.uncached_nodes(), size)?;
        if stored_root != root {
            return Err(Error::Inconsistent(
                "stored subtree hashes disagree with the log's head".into(),
            ));
        }
        let checkpoint = Checkpoint {
            origin: self.origin.clone(),
            size,
            root,
            extensions: Vec::new(),
        };
        let note = checkpoint.sign(&self.signer)?;
        // Stored only once cosigned: a checkpoint the witnesses refuse is
        // never served.
        let note = self.witnessed(note, size, false)?;
        *self.last_signed.lock().unwrap_or_else(|p| p.into_inner()) = Some(checkpoint);
        {
            let mut last = self.last_note.lock().unwrap_or_else(|p| p.into_inner());
            if last.as_ref().is_none_or(|(s, _)| *s < size) {
                *last = Some((size, note.clone()));
            }
        }
        Ok(note)
    }

    /// Asks the log's witnesses to cosign checkpoints, `quorum` of which
    /// must. With none (the default) checkpoints carry the log's signature
    /// alone.
    pub fn with_witnesses(
        mut self,
        witnesses: Vec<(CosignatureVerifier, Box<dyn WitnessClient>)>,
        quorum: usize,
    ) -> Self {
        self.witnesses = witnesses
            .into_iter()
            .map(|(key, client)| WitnessSlot {
                key,
                client,
                size: Mutex::new(0),
            })
            .collect();
        self.quorum = quorum;
        self
    }

    /// The witnesses and quorum a reader of this log requires.
    pub fn witness_policy(&self) -> WitnessPolicy {
        WitnessPolicy {
            witnesses: self.witnesses.iter().map(|w| w.key.clone()).collect(),
            quorum: self.quorum,
        }
    }

    /// Why this log stopped signing, if a witness found it misbehaving.
    pub fn alarm(&self) -> Option<String> {
        self.alarm.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Submits the current checkpoint to every witness, even those that
    /// cosigned it already: each checks it against the latest it cosigned.
    /// Run at start, this finds a store that was rolled back or rewritten
    /// while the log was down. Returns the cosigned checkpoint; an error
    /// if a witness found the log misbehaving or the quorum was not met.
    pub fn check_witnesses(&self) -> Result<String, Error> {
        let _turn = self.signing.lock().unwrap_or_else(|p| p.into_inner());
        let note = self.checkpoint_in_turn()?;
        let size = peek_checkpoint(&note)?.size;
        self.witnessed(note, size, true)
    }

    /// `note` (the log's checkpoint of `size`) with the cosignatures of at
    /// least `quorum` witnesses, stored. Witnesses whose cosignature it
    /// carries already are asked again only if `again`.
    fn witnessed(&self, note: String, size: u64, again: bool) -> Result<String, Error> {
        if let Some(alarm) = self.alarm() {
            return Err(Error::Inconsistent(alarm));
        }
        if self.witnesses.is_empty() {
            self.store
                .log_put_checkpoint(&self.log_id, size, &note)
                .map_err(storage)?;
            return Ok(note);
        }
        let signed = SignedNote::parse(&note)?;
        let mut lines = String::new();
        let mut cosigned = 0;
        let mut refusals = Vec::new();
        for witness in &self.witnesses {
            if !again && witness.key.verify(&signed).is_ok() {
                cosigned += 1;
                continue;
            }
            match self.ask_witness(witness, &note, size) {
                Ok(line) => {
                    lines.push_str(&line);
                    cosigned += 1;
                }
                Err(e) if e.is_misbehaviour() => {
                    let alarm = format!(
                        "witness `{}` refused the log's checkpoint of size {size}: {e}; the \
                         stored log is not the one the witness saw (rolled back, rewritten or \
                         forked)",
                        witness.key.name()
                    );
                    *self.alarm.lock().unwrap_or_else(|p| p.into_inner()) = Some(alarm.clone());
                    return Err(Error::Inconsistent(alarm));
                }
                Err(e) => refusals.push(format!("`{}`: {e}", witness.key.name())),
            }
        }
        if cosigned < self.quorum {
            return Err(Error::Witness(format!(
                "{cosigned} of the {} witnesses required cosigned the checkpoint of size {size} \
                 ({})",
                self.quorum,
                refusals.join("; ")
            )));
        }
        // Asked again: the witnesses' earlier lines give way to the fresh ones.
        let note = if again {
            let keep: Vec<&str> = note
                .lines()
                .skip_while(|l| !l.is_empty())
                .filter(|l| {
                    !l.is_empty() && !self.witnesses.iter().any(|w| signed_by(l, w.key.name()))
                })
                .collect();
            format!("{}\n{}\n", signed.text, keep.join("\n"))
        } else {
            note
        };
        let note = format!("{note}{lines}");
        self.store
            .log_put_checkpoint(&self.log_id, size, &note)
            .map_err(storage)?;
        Ok(note)
    }

    /// One `add-checkpoint` exchange with a witness, proving consistency
    /// from the size it last cosigned (learnt from its 409 if unknown).
    fn ask_witness(
        &self,
        witness: &WitnessSlot,
        note: &str,
        size: u64,
    ) -> Result<String, WitnessError> {
        let mut old = *witness.size.lock().unwrap_or_else(|p| p.into_inner());
        for _ in 0..3 {
            if old > size {
                return Err(WitnessError::Conflict {
                    latest: old,
                    fork: true,
                });
            }
            let proof = if old == 0 || old == size {
                Vec::new()
            } else {
                merkle::prove_consistency(&self.nodes(), old, size)
                    .map_err(|e| WitnessError::Storage(format!("consistency proof: {e}")))?
            };
            let request = AddCheckpoint {
                old_size: old,
                proof,
                checkpoint: note.to_string(),
            };
            match witness.client.add_checkpoint(&request.to_body()) {
                Ok(lines) => {
                    // Keep only this witness's valid cosignature: whatever
                    // else came back is not trusted.
                    let with = SignedNote::parse(&format!("{note}{lines}"))
                        .map_err(|e| WitnessError::Malformed(e.to_string()))?;
                    witness
                        .key
                        .verify(&with)
                        .map_err(|e| WitnessError::Storage(format!("the witness's answer: {e}")))?;
                    let line: String = lines
                        .lines()
                        .filter(|l| signed_by(l, witness.key.name()))
                        .map(|l| format!("{l}\n"))
                        .collect();
                    *witness.size.lock().unwrap_or_else(|p| p.into_inner()) = size;
                    return Ok(line);
                }
                Err(WitnessError::Conflict {
                    latest,
                    fork: false,
                }) if latest != old => old = latest,
                // A 409 for the very size proved from: the witness holds
                // another root for it (over HTTP the body carries only the
                // size).
                Err(WitnessError::Conflict { latest, .. }) => {
                    return Err(WitnessError::Conflict { latest, fork: true })
                }
                Err(e) => return Err(e),
            }
        }
        Err(WitnessError::Storage(
            "the witness's size kept changing".into(),
        ))
    }

    fn nodes(&self) -> Nodes<'_, S> {
        Nodes {
            store: &self.store,
            log: &self.log_id,
            cache: Some(&self.cache),
            fetched: Default::default(),
        }
    }

    fn uncached_nodes(&self) -> Nodes<'_, S> {
        Nodes {
            cache: None,
            ..self.nodes()
        }
    }

    /// Checks `size` against the log, catching up with other writers first.
    fn check_size(&self, size: u64) -> Result<(), Error> {
        if size > self.head().0 {
            self.reload()?;
        }
        let (current, _) = self.head();
        if size > current {
            return Err(Error::Invalid(format!(
                "the log has {current} entries, not {size}"
            )));
        }
        Ok(())
    }

    /// The root of the first `size` entries.
    pub fn root_at(&self, size: u64) -> Result<Hash, Error> {
        self.check_size(size)?;
        merkle::root(&self.nodes(), size)
    }

    /// The inclusion proof of entry `index` in the tree of `size` entries.
    ///
    /// For the current size, the leaf's own hash is read in the same query and
    /// the proof checked against the head before what was read is cached.
    pub fn prove_inclusion(&self, index: u64, size: u64) -> Result<Vec<Hash>, Error> {
        self.check_size(size)?;
        if index >= size {
            return Err(Error::Invalid(format!(
                "index {index} is outside a tree of {size}"
            )));
        }
        let nodes = self.nodes();
        let mut ranges = merkle::inclusion_ranges(index, size);
        let (head_size, head_root) = self.head();
        // Read the leaf too (same query) when the proof will bring hashes
        // worth caching, so they can be checked against the head first.
        let check = size == head_size && !self.cache.covers(&ranges);
        if check {
            ranges.push((index, index + 1));
        }
        let mut hashes = merkle::range_hashes(&nodes, &ranges)?;
        if check {
            let leaf = hashes.pop().unwrap_or_default();
            if merkle::verify_inclusion(index, size, &leaf, &hashes, &head_root).is_ok() {
                self.cache.insert(nodes.fetched.take());
            }
        }
        Ok(hashes)
    }

    /// The consistency proof between the trees of `old` and `new` entries.
    pub fn prove_consistency(&self, old: u64, new: u64) -> Result<Vec<Hash>, Error> {
        self.check_size(new)?;
        if old > new {
            return Err(Error::Invalid(format!(
                "old size {old} exceeds new size {new}"
            )));
        }
        merkle::prove_consistency(&self.nodes(), old, new)
    }

    /// Entries `range`.
    pub fn entries(&self, range: Range<u64>) -> Result<Vec<Vec<u8>>, Error> {
        self.check_size(range.end)?;
        self.store.log_entries(&self.log_id, range).map_err(storage)
    }

    /// The inclusion proofs of `indices` in the tree of `size` leaves, with
    /// one batched read of their nodes (a patient's audit slice proves
    /// hundreds of entries at once).
    pub fn prove_inclusions(&self, indices: &[u64], size: u64) -> Result<Vec<Vec<Hash>>, Error> {
        self.check_size(size)?;
        if let Some(index) = indices.iter().find(|i| **i >= size) {
            return Err(Error::Invalid(format!(
                "index {index} is outside a tree of {size}"
            )));
        }
        let per_index: Vec<Vec<(u64, u64)>> = indices
            .iter()
            .map(|i| merkle::inclusion_ranges(*i, size))
            .collect();
        let all: Vec<(u64, u64)> = per_index.iter().flatten().copied().collect();
        let mut hashes = merkle::range_hashes(&self.nodes(), &all)?.into_iter();
        Ok(per_index
            .iter()
            .map(|ranges| hashes.by_ref().take(ranges.len()).collect())
            .collect())
    }

    /// The subject tag of `name` (a patient pseudonym) in this log:
    /// HMAC-SHA256 under a key derived (HKDF-SHA256, its own label) from the
    /// log's signing key, truncated to 16 bytes. Every writer of one log
    /// holds that key, so they tag alike; a store dump alone cannot be
    /// searched for a pseudonym through it.
    pub fn subject(&self, name: &str) -> Subject {
        use hmac::Mac;
        let mut mac = <hmac::Hmac<Sha256> as Mac>::new_from_slice(self.subject_key.as_slice())
            .expect("HMAC takes keys of any length");
        mac.update(name.as_bytes());
        let tag = mac.finalize().into_bytes();
        let mut subject = [0u8; 16];
        subject.copy_from_slice(&tag[..16]);
        subject
    }

    /// Up to `limit` entries about `subject` among entries `range`, with
    /// their indices.
    pub fn entries_about(
        &self,
        subject: &Subject,
        range: Range<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, Error> {
        self.check_size(range.end)?;
        self.store
            .log_entries_about(&self.log_id, subject, range, limit)
            .map_err(storage)
    }

    /// The latest signed checkpoint, if any: the larger of the store's
    /// latest and the latest this process stored (a checkpoint row deleted
    /// behind the log's back does not make it serve an older view).
    pub fn latest_checkpoint(&self) -> Result<Option<String>, Error> {
        let stored = self
            .store
            .log_latest_checkpoint(&self.log_id)
            .map_err(storage)?;
        let made = self
            .last_note
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        Ok(match (stored, made) {
            (Some((s, note)), Some((m, _))) if s >= m => Some(note),
            (_, Some((_, note))) => Some(note),
            (stored, None) => stored.map(|(_, note)| note),
        })
    }
}

/// Whether `line` is a note signature line under the key name `name`.
fn signed_by(line: &str, name: &str) -> bool {
    line.strip_prefix(crate::note::SIG_PREFIX)
        .and_then(|rest| rest.strip_prefix(name))
        .is_some_and(|rest| rest.starts_with(' '))
}

/// Re-reads every stored entry up to a checkpoint's size, and every stored
/// subtree hash, and checks them against the checkpoint: catches any entry
/// changed, removed, reordered or inserted since it was signed, any linked
/// leaf that skips an earlier leaf about its subject, and any stored
/// hash that does not match the entries (which would otherwise serve proofs
/// for entries that are not there). Works in chunks with memory logarithmic in
/// the size.
pub fn audit_entries<S: LogStore>(
    store: &S,
    log_id: &str,
    origin: &str,
    signed_checkpoint: &str,
    verifier: &NoteVerifier,
) -> Result<Checkpoint, Error> {
    let checkpoint = Checkpoint::verify(signed_checkpoint, verifier)?;
    if checkpoint.origin != origin {
        return Err(Error::Inconsistent(format!(
            "the checkpoint is for `{}`, not `{origin}`",
            checkpoint.origin
        )));
    }
    let stored = store.log_size(log_id).map_err(storage)?;
    if stored < checkpoint.size {
        return Err(Error::Inconsistent(format!(
            "the store holds {stored} entries; the checkpoint vouches for {}",
            checkpoint.size
        )));
    }
    const CHUNK: u64 = 4096;
    // The last entry about each subject: every linked leaf must name it.
    let mut chains: HashMap<Subject, u64> = HashMap::new();
    let mut frontier = Vec::new();
    let mut at = 0;
    while at < checkpoint.size {
        let end = (at + CHUNK).min(checkpoint.size);
        let entries = store.log_entries(log_id, at..end).map_err(storage)?;
        if entries.len() as u64 != end - at {
            return Err(Error::Inconsistent(format!(
                "entries {at}..{end}: {} found",
                entries.len()
            )));
        }
        for (i, entry) in entries.iter().enumerate() {
            let index = at + i as u64;
            if let Some(linked) = LinkedLeaf::from_bytes(entry)
                .map_err(|e| Error::Inconsistent(format!("entry {index}: {e}")))?
            {
                let last = chains.insert(linked.subject, index);
                if linked.previous != last {
                    return Err(Error::Inconsistent(format!(
                        "entry {index} links to {:?} but the previous entry about its subject is {:?}",
                        linked.previous, last
                    )));
                }
            }
        }
        let leaves: Vec<Hash> = entries.iter().map(|e| merkle::leaf_hash(e)).collect();
        let (created, next) = merkle::append_nodes(at, &frontier, &leaves);
        let ids: Vec<NodeId> = created.iter().map(|(id, _)| *id).collect();
        let stored_hashes = store.log_nodes(log_id, &ids).map_err(storage)?;
        if let Some(((id, _), _)) = created
            .iter()
            .zip(&stored_hashes)
            .find(|((_, want), got)| want != *got)
        {
            return Err(Error::Inconsistent(format!(
                "the stored hash of the subtree at level {} index {} does not match the entries",
                id.level, id.index
            )));
        }
        if stored_hashes.len() != ids.len() {
            return Err(Error::Inconsistent("subtree hashes are missing".into()));
        }
        frontier = next;
        at = end;
    }
    let root = Head {
        size: checkpoint.size,
        frontier,
    }
    .root();
    if root != checkpoint.root {
        return Err(Error::Inconsistent(format!(
            "the stored entries hash to {} but the checkpoint of size {} says {}",
            hex::encode(root),
            checkpoint.size,
            hex::encode(checkpoint.root)
        )));
    }
    Ok(checkpoint)
}

/// Splits a signed note without verifying it (for reading its size first).
pub fn peek_checkpoint(note: &str) -> Result<Checkpoint, Error> {
    Ok(Checkpoint::from_text(&SignedNote::parse(note)?.text)?)
}
