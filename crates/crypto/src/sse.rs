//! Dynamic searchable symmetric encryption: **Mitra** (Ghareh Chamani,
//! Papadopoulos, Papamanthou and Jalili, "New Constructions for Forward and
//! Backward Private Symmetric Searchable Encryption", CCS 2018, §4).
//!
//! The index the server keeps is an opaque map from 16-byte addresses to
//! sealed values. The *client* (in asclepios, the key authority) keeps the
//! secret [`SseKey`] and, per keyword `w`, a counter: the `c`-th update of `w`
//! is written at `addr = G(K_w, c‖0)` with value `(op, id)` sealed under
//! `G(K_w, c‖1‖2)`. A search for `w` hands over the addresses (and the value
//! keys) of counters `first..next`; the server returns what it holds there,
//! the searcher opens the values and replays adds and deletes in counter order.
//!
//! Instantiation (DESIGN: "PRF = HMAC-SHA256 or AES"):
//! * `K_w = HMAC-SHA256(K_kw, w)`; `G(K_w, ·)` is AES-256 under `K_w` on the
//!   block `c (8 bytes, big-endian) ‖ tag (1 byte) ‖ 0…`, tag 0 for the
//!   address, tags 1 and 2 for the 32-byte value key.
//! * Values are sealed with AES-256-GCM under the entry's own key, with a
//!   random nonce and the address as associated data. The paper XORs a pad;
//!   the AEAD costs 28 bytes more and lets a searcher detect a server that
//!   altered or swapped entries, and the random nonce keeps a value safe even
//!   if a rolled-back state (a restored backup) ever reused a counter.
//!
//! Deviation, written down: **compaction** ([`Mitra::compact`]). The paper
//! lets the client re-insert a search's result under fresh counters; here the
//! live ids are re-inserted packed into fixed-size chunks of
//! [`CHUNK_PLAINTEXT`] bytes (about 90 references each) at counters past the
//! old ones, and the old entries are deleted, so a search reads a number of
//! entries that follows the live result set, not the history. Forward privacy
//! is unchanged (new counters, new addresses, unlinkable before they are
//! searched); the server learns at compaction that the entries it just
//! returned are replaced by that many chunks.
//!
//! # Leakage (what the server holding the index learns)
//!
//! * **Updates:** that an update batch of *n* entries happened, and each
//!   entry's length class (64-byte steps of the record reference). Not the
//!   keyword, not whether an entry adds or deletes, and, by forward privacy,
//!   not whether it matches an earlier search: an entry written after a search
//!   sits at an address that search's tokens never name.
//! * **Searches:** the search pattern (the same keyword searched twice reads
//!   overlapping addresses; a compaction links the addresses it deletes to the
//!   chunks it writes, so the pattern carries across it) and the number of
//!   entries read, which is the number of updates of the keyword since its last
//!   compaction plus its chunks; from Type-II backward privacy, when those
//!   updates happened. Not which entries are deletions, nor the ids deleted.
//! * **Compaction:** the live result size, to within a chunk (≈ 90 ids).
//!   Chunks (2 076 bytes) are told apart from single entries (92 to 348
//!   bytes) by size.
//! * **Results:** the records a searcher then reads are reads like any other
//!   (access pattern), logged in the audit trail.
//!
//! Whoever holds a search's tokens (the searcher) learns more than the live
//! result: every id added and deleted since the last compaction. Writers
//! should shuffle an update batch that spans several keywords, so the order
//! of entries in the batch does not group them by keyword.
//!
//! The keyword state ([`KeywordState`]) is small and sealed
//! ([`Mitra::seal_state`]) for storage under a pseudorandom row id; anyone who
//! watches that row change links updates of one keyword, so it belongs with
//! the authority, not with the index's server.

use std::collections::{HashMap, HashSet};

use aes::cipher::{generic_array::GenericArray, BlockEncrypt, KeyInit};
use aes::Aes256;
use aes_gcm::aead::{Aead, AeadInPlace, Payload};
use aes_gcm::Aes256Gcm;
use chacha20poly1305::XChaCha20Poly1305;
use hmac::{Hmac, Mac};
use rand_core::{CryptoRng, RngCore};
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::format::{DecodeError, Kind, Reader, Writer};

/// Bytes of an index address.
pub const ADDR_LEN: usize = 16;
/// Longest record reference the index holds.
pub const MAX_ID_LEN: usize = 255;
/// Plaintext bytes of a compacted chunk (type byte, then length-prefixed ids).
pub const CHUNK_PLAINTEXT: usize = 2048;
/// Single entries are padded to a multiple of this many plaintext bytes.
const SINGLE_CLASS: usize = 64;
/// Bytes the AEAD tag adds to each value.
pub const TAG_LEN: usize = 16;
/// Bytes of the random nonce each value starts with.
pub const NONCE_LEN: usize = 12;
/// Most keywords remembered for one record.
pub const MAX_KEYWORDS: usize = 4096;
/// Most tokens one token list may carry (the authority compacts a keyword
/// before its list grows this long).
pub const MAX_TOKENS: usize = 1 << 20;

const ENTRY_ADD: u8 = 0x01;
const ENTRY_DELETE: u8 = 0x02;
const ENTRY_CHUNK: u8 = 0x03;

const AAD_LABEL: &[u8] = b"asclepios sse entry v1";

/// An index address.
pub type Addr = [u8; ADDR_LEN];

/// Errors of the searchable-encryption scheme.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SseError {
    /// A record reference that is empty or too long.
    #[error("a record reference must be 1 to {MAX_ID_LEN} bytes, got {0}")]
    BadId(usize),
    /// The server returned nothing at some searched addresses: it lost them, or
    /// a compaction replaced them after the tokens were issued (ask again).
    #[error("the index holds nothing at {0} of the searched addresses: ask for fresh tokens (a compaction may have replaced them)")]
    Missing(usize),
    /// A value failed authentication or does not parse: the server altered it.
    #[error("index entry {0} failed authentication or is malformed: the index was altered")]
    Corrupt(usize),
    /// Tokens and values do not line up.
    #[error("{tokens} tokens but {values} values")]
    Mismatch {
        /// Tokens sent.
        tokens: usize,
        /// Values received.
        values: usize,
    },
    /// A token list longer than one search may carry.
    #[error("a token list may name at most {MAX_TOKENS} entries; compact the keyword first")]
    TooManyEntries,
    /// A sealed state or token list that does not decode.
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// Whether an update adds or deletes a (keyword, id) pair.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Op {
    /// The id now matches the keyword.
    Add,
    /// The id no longer matches the keyword.
    Delete,
}

/// The index's master secret: 32 random bytes, from which the keyword keys,
/// row ids and the state-sealing key are derived.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct SseKey([u8; 32]);

impl std::fmt::Debug for SseKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SseKey(<redacted>)")
    }
}

impl SseKey {
    /// A fresh random key.
    pub fn generate(rng: &mut (impl RngCore + CryptoRng)) -> Self {
        let mut k = [0u8; 32];
        rng.fill_bytes(&mut k);
        SseKey(k)
    }

    /// The key from its 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        SseKey(bytes)
    }

    /// Its 32 bytes (to be sealed for storage).
    pub fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.0)
    }
}

/// Where a keyword's list stands: live entries sit at counters
/// `first..next`, of which `first..compacted` are chunks written by the last
/// compaction and `compacted..next` single updates since.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct KeywordState {
    /// First counter still in the index.
    pub first: u64,
    /// End of the compacted chunks.
    pub compacted: u64,
    /// The next counter to write.
    pub next: u64,
}

impl KeywordState {
    /// Entries a search reads.
    pub fn entries(&self) -> u64 {
        self.next.saturating_sub(self.first)
    }

    /// Single updates since the last compaction.
    pub fn singles(&self) -> u64 {
        self.next.saturating_sub(self.compacted)
    }

    /// Whether a search should compact first: once the updates since the last
    /// compaction reach 16 and a quarter of the chunks, so a search reads at
    /// most about 1.25 times the entries of a fresh compaction (plus 16), and
    /// each compaction's rewrite is paid for by the updates it folds in.
    pub fn should_compact(&self) -> bool {
        let chunks = self.compacted.saturating_sub(self.first);
        self.singles() >= 16.max(chunks / 4)
    }
}

/// One index entry to write.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Entry {
    /// Where.
    pub addr: Addr,
    /// The sealed value.
    pub value: Vec<u8>,
}

/// What a search hands the server (`addr`) and keeps (`key`).
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Token {
    /// The address to read.
    pub addr: Addr,
    /// The key that opens the value there.
    key: [u8; 32],
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Token({:02x?}, <key redacted>)", &self.addr[..4])
    }
}

/// A compaction to apply atomically: write `put`, delete `delete`.
#[derive(Clone, Debug)]
pub struct Compaction {
    /// New chunks.
    pub put: Vec<Entry>,
    /// The entries they replace.
    pub delete: Vec<Addr>,
}

/// What a search found.
#[derive(Clone, PartialEq, Eq)]
pub struct SearchResult {
    /// The live ids, in the order they were first added (duplicates removed).
    pub ids: Vec<Vec<u8>>,
    /// Entries read.
    pub entries: usize,
    /// Ids read that were deleted or added again since: what compaction
    /// removes (deletions count twice: the delete and the add it cancels).
    pub stale: usize,
}

impl std::fmt::Debug for SearchResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Record references are metadata: counts only.
        write!(
            f,
            "SearchResult({} ids from {} entries, {} stale)",
            self.ids.len(),
            self.entries,
            self.stale
        )
    }
}

/// A keyword's PRF `G(K_w, ·)`, keyed once per keyword.
struct KeywordPrf(Aes256);

impl KeywordPrf {
    fn block(counter: u64, tag: u8) -> GenericArray<u8, aes::cipher::consts::U16> {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&counter.to_be_bytes());
        b[8] = tag;
        b.into()
    }

    /// The token of counter `c`.
    fn token(&self, counter: u64) -> Token {
        let mut blocks = [
            Self::block(counter, 0),
            Self::block(counter, 1),
            Self::block(counter, 2),
        ];
        self.0.encrypt_blocks(&mut blocks);
        let mut key = [0u8; 32];
        key[..16].copy_from_slice(&blocks[1]);
        key[16..].copy_from_slice(&blocks[2]);
        let token = Token {
            addr: blocks[0].into(),
            key,
        };
        blocks[1].zeroize();
        blocks[2].zeroize();
        key.zeroize();
        token
    }
}

fn aad(addr: &Addr) -> [u8; AAD_LABEL.len() + ADDR_LEN] {
    let mut out = [0u8; AAD_LABEL.len() + ADDR_LEN];
    out[..AAD_LABEL.len()].copy_from_slice(AAD_LABEL);
    out[AAD_LABEL.len()..].copy_from_slice(addr);
    out
}

impl Token {
    fn seal(&self, plaintext: &[u8], rng: &mut (impl RngCore + CryptoRng)) -> Entry {
        let cipher = Aes256Gcm::new(GenericArray::from_slice(&self.key));
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill_bytes(&mut nonce);
        let sealed = cipher
            .encrypt(
                GenericArray::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad(&self.addr),
                },
            )
            .expect("AES-GCM seals any plaintext under 64 GiB");
        let mut value = Vec::with_capacity(NONCE_LEN + sealed.len());
        value.extend_from_slice(&nonce);
        value.extend_from_slice(&sealed);
        Entry {
            addr: self.addr,
            value,
        }
    }

    /// Opens `value` into `plain` (reused across entries: no allocation
    /// per entry, and one buffer to wipe).
    fn open_into(&self, value: &[u8], plain: &mut Vec<u8>) -> bool {
        if value.len() < NONCE_LEN + TAG_LEN {
            return false;
        }
        let (nonce, sealed) = value.split_at(NONCE_LEN);
        let (body, tag) = sealed.split_at(sealed.len() - TAG_LEN);
        plain.clear();
        plain.extend_from_slice(body);
        Aes256Gcm::new(GenericArray::from_slice(&self.key))
            .decrypt_in_place_detached(
                GenericArray::from_slice(nonce),
                &aad(&self.addr),
                plain,
                GenericArray::from_slice(tag),
            )
            .is_ok()
    }
}

type HmacSha256 = Hmac<Sha256>;

fn hmac(key: &[u8], parts: &[&[u8]]) -> Zeroizing<[u8; 32]> {
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        mac.update(p);
    }
    Zeroizing::new(mac.finalize().into_bytes().into())
}

/// The client side of Mitra: derives keyword keys, seals updates, issues
/// search tokens, compacts, and seals the per-keyword state for storage.
pub struct Mitra {
    keyword_key: Zeroizing<[u8; 32]>,
    row_key: Zeroizing<[u8; 32]>,
    seal: XChaCha20Poly1305,
}

impl std::fmt::Debug for Mitra {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Mitra(<keys redacted>)")
    }
}

const STATE_ROW: u8 = 1;
const DOC_ROW: u8 = 2;

impl Mitra {
    /// The scheme under `key`.
    pub fn new(key: &SseKey) -> Self {
        let sub = |label: &[u8]| hmac(&key.0, &[b"asclepios sse v1 ", label]);
        let seal_key = sub(b"state seal");
        Mitra {
            keyword_key: sub(b"keyword"),
            row_key: sub(b"row id"),
            seal: XChaCha20Poly1305::new(GenericArray::from_slice(seal_key.as_slice())),
        }
    }

    fn prf(&self, keyword: &str) -> KeywordPrf {
        let kw = hmac(self.keyword_key.as_slice(), &[keyword.as_bytes()]);
        KeywordPrf(Aes256::new(GenericArray::from_slice(kw.as_slice())))
    }

    /// Seals updates of `keyword`, advancing `state`. Entries are returned in
    /// counter order; write them together with the new state.
    pub fn update(
        &self,
        keyword: &str,
        state: &mut KeywordState,
        ops: &[(Op, &[u8])],
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<Vec<Entry>, SseError> {
        for (_, id) in ops {
            check_id(id)?;
        }
        let prf = self.prf(keyword);
        // Sized for the longest id, so it never reallocates (and leaves no copy).
        let mut plaintext = Zeroizing::new(Vec::with_capacity(
            (2 + MAX_ID_LEN).div_ceil(SINGLE_CLASS) * SINGLE_CLASS,
        ));
        let mut out = Vec::with_capacity(ops.len());
        for (op, id) in ops {
            plaintext.clear();
            plaintext.push(match op {
                Op::Add => ENTRY_ADD,
                Op::Delete => ENTRY_DELETE,
            });
            plaintext.push(id.len() as u8);
            plaintext.extend_from_slice(id);
            let padded = plaintext.len().div_ceil(SINGLE_CLASS) * SINGLE_CLASS;
            plaintext.resize(padded, 0);
            out.push(prf.token(state.next).seal(&plaintext, rng));
            state.next += 1;
        }
        Ok(out)
    }

    /// The tokens of a search for `keyword`: one per entry in `first..next`.
    pub fn tokens(&self, keyword: &str, state: &KeywordState) -> Vec<Token> {
        self.tokens_between(keyword, state.first, state.next)
    }

    /// The tokens of counters `from..to` (to read a long list page by page).
    pub fn tokens_between(&self, keyword: &str, from: u64, to: u64) -> Vec<Token> {
        let prf = self.prf(keyword);
        (from..to).map(|c| prf.token(c)).collect()
    }

    /// Replaces a keyword's entries by chunks holding `live`, at fresh
    /// counters; advances `state`. `state` must be the one the search that
    /// found `live` used: apply `put` and `delete` in one transaction with a
    /// compare-and-swap of the state, so an update made in between is not lost.
    pub fn compact(
        &self,
        keyword: &str,
        state: &mut KeywordState,
        live: &[Vec<u8>],
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<Compaction, SseError> {
        for id in live {
            check_id(id)?;
        }
        let mut seen = HashSet::with_capacity(live.len());
        let prf = self.prf(keyword);
        let delete = (state.first..state.next)
            .map(|c| prf.token(c).addr)
            .collect();
        state.first = state.next;
        let mut put = Vec::new();
        let mut chunk = Zeroizing::new(Vec::with_capacity(CHUNK_PLAINTEXT));
        let mut flush = |chunk: &mut Vec<u8>, state: &mut KeywordState| {
            chunk.resize(CHUNK_PLAINTEXT, 0);
            put.push(prf.token(state.next).seal(chunk, rng));
            state.next += 1;
            chunk.clear();
        };
        for id in live.iter().filter(|id| seen.insert(id.as_slice())) {
            if chunk.is_empty() {
                chunk.push(ENTRY_CHUNK);
            }
            if chunk.len() + 1 + id.len() > CHUNK_PLAINTEXT {
                flush(&mut chunk, state);
                chunk.push(ENTRY_CHUNK);
            }
            chunk.push(id.len() as u8);
            chunk.extend_from_slice(id);
        }
        if !chunk.is_empty() {
            flush(&mut chunk, state);
        }
        state.compacted = state.next;
        Ok(Compaction { put, delete })
    }

    /// A stable pseudorandom row id for `keyword`'s state.
    pub fn state_row(&self, keyword: &str) -> [u8; 16] {
        self.row(STATE_ROW, keyword.as_bytes())
    }

    /// A stable pseudorandom row id for what is remembered about record `id`
    /// (the keywords it is indexed under).
    pub fn doc_row(&self, id: &[u8]) -> [u8; 16] {
        self.row(DOC_ROW, id)
    }

    fn row(&self, kind: u8, name: &[u8]) -> [u8; 16] {
        let h = hmac(self.row_key.as_slice(), &[&[kind], name]);
        let mut out = [0u8; 16];
        out.copy_from_slice(&h[..16]);
        out
    }

    /// Seals a keyword state for storage under `row`.
    pub fn seal_state(
        &self,
        row: &[u8; 16],
        state: &KeywordState,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Vec<u8> {
        let mut plain = [0u8; 24];
        plain[..8].copy_from_slice(&state.first.to_be_bytes());
        plain[8..16].copy_from_slice(&state.compacted.to_be_bytes());
        plain[16..].copy_from_slice(&state.next.to_be_bytes());
        self.seal_row(Kind::SseState, row, &plain, rng)
    }

    /// Opens a sealed keyword state read from `row`.
    pub fn open_state(&self, row: &[u8; 16], sealed: &[u8]) -> Result<KeywordState, SseError> {
        let plain = self.open_row(Kind::SseState, row, sealed)?;
        let mut r = Reader::new_raw(&plain);
        let state = KeywordState {
            first: r.u64("first counter")?,
            compacted: r.u64("compacted counter")?,
            next: r.u64("next counter")?,
        };
        r.finish()?;
        if !(state.first <= state.compacted && state.compacted <= state.next) {
            return Err(DecodeError::Invalid {
                what: "keyword state",
                why: "counters out of order".into(),
            }
            .into());
        }
        Ok(state)
    }

    /// Seals the keyword list of a record for storage under `row`, padded to
    /// 256-byte steps so its size says little.
    pub fn seal_keywords(
        &self,
        row: &[u8; 16],
        keywords: &[String],
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Vec<u8> {
        let len = 4 + keywords.iter().map(|k| 2 + k.len()).sum::<usize>();
        let mut plain = Zeroizing::new(Vec::with_capacity(len.div_ceil(256) * 256));
        plain.extend_from_slice(&(keywords.len() as u32).to_be_bytes());
        for k in keywords {
            plain.extend_from_slice(&(k.len() as u16).to_be_bytes());
            plain.extend_from_slice(k.as_bytes());
        }
        let padded = plain.len().div_ceil(256) * 256;
        plain.resize(padded, 0);
        self.seal_row(Kind::SseKeywords, row, &plain, rng)
    }

    /// Opens a record's keyword list read from `row`.
    pub fn open_keywords(&self, row: &[u8; 16], sealed: &[u8]) -> Result<Vec<String>, SseError> {
        let plain = self.open_row(Kind::SseKeywords, row, sealed)?;
        let mut r = Reader::new_raw(&plain);
        let n = r.count("keyword count", MAX_KEYWORDS, 2)?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(r.str16("keyword", 1 << 12)?.to_string());
        }
        Ok(out)
    }

    fn seal_row(
        &self,
        kind: Kind,
        row: &[u8; 16],
        plain: &[u8],
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Vec<u8> {
        let mut nonce = [0u8; 24];
        rng.fill_bytes(&mut nonce);
        let mut aad = Writer::new(kind);
        aad.raw(row);
        let sealed = self
            .seal
            .encrypt(
                GenericArray::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: &aad.finish(),
                },
            )
            .expect("AES-GCM seals any plaintext under 64 GiB");
        let mut w = Writer::new(kind);
        w.raw(&nonce);
        w.raw(&sealed);
        w.finish()
    }

    fn open_row(
        &self,
        kind: Kind,
        row: &[u8; 16],
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, SseError> {
        let mut r = Reader::new(sealed, kind)?;
        let nonce: [u8; 24] = r.fixed("nonce")?;
        let rest = r.rest();
        let mut aad = Writer::new(kind);
        aad.raw(row);
        self.seal
            .decrypt(
                GenericArray::from_slice(&nonce),
                Payload {
                    msg: rest,
                    aad: &aad.finish(),
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| {
                SseError::Decode(DecodeError::Invalid {
                    what: kind.name(),
                    why: "authentication failed: sealed under another key or row, or altered"
                        .into(),
                })
            })
    }
}

fn check_id(id: &[u8]) -> Result<(), SseError> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        Err(SseError::BadId(id.len()))
    } else {
        Ok(())
    }
}

/// Opens what the server returned for `tokens` and replays it: chunks then
/// single adds and deletes, in counter order.
pub fn open_results<V: AsRef<[u8]>>(
    tokens: &[Token],
    values: &[Option<V>],
) -> Result<SearchResult, SseError> {
    let mut replay = Replay::default();
    replay.feed(tokens, values)?;
    Ok(replay.finish())
}

/// Replays a keyword's entries in counter order, page by page (a long list
/// need not be held at once).
#[derive(Default)]
pub struct Replay {
    /// Ids in the order read, while every entry so far was a chunk (chunks
    /// hold distinct ids, so no map is needed).
    ids: Vec<Vec<u8>>,
    /// From the first single entry on: each id, the order it was first
    /// added in, and whether it is live.
    seen: Option<HashMap<Vec<u8>, (usize, bool)>>,
    stale: usize,
    entries: usize,
}

impl std::fmt::Debug for Replay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Replay({} entries)", self.entries)
    }
}

impl Replay {
    /// Opens and replays the next page of entries.
    pub fn feed<V: AsRef<[u8]>>(
        &mut self,
        tokens: &[Token],
        values: &[Option<V>],
    ) -> Result<(), SseError> {
        if tokens.len() != values.len() {
            return Err(SseError::Mismatch {
                tokens: tokens.len(),
                values: values.len(),
            });
        }
        let missing = values.iter().filter(|v| v.is_none()).count();
        if missing > 0 {
            return Err(SseError::Missing(missing));
        }
        let mut plain = Zeroizing::new(Vec::with_capacity(CHUNK_PLAINTEXT));
        for (token, value) in tokens.iter().zip(values) {
            let i = self.entries;
            self.entries += 1;
            let value = value.as_ref().map_or(&[][..], AsRef::as_ref);
            if !token.open_into(value, &mut plain) {
                return Err(SseError::Corrupt(i));
            }
            match plain.first() {
                Some(&ENTRY_CHUNK) => {
                    let mut rest = &plain[1..];
                    while let Some((&len, tail)) = rest.split_first() {
                        if len == 0 {
                            break;
                        }
                        let id = tail.get(..len as usize).ok_or(SseError::Corrupt(i))?;
                        rest = &tail[len as usize..];
                        match self.seen {
                            None => self.ids.push(id.to_vec()),
                            Some(_) => self.add(id),
                        }
                    }
                }
                Some(&op @ (ENTRY_ADD | ENTRY_DELETE)) => {
                    let len = *plain.get(1).ok_or(SseError::Corrupt(i))? as usize;
                    let id = plain.get(2..2 + len).ok_or(SseError::Corrupt(i))?;
                    if len == 0 {
                        return Err(SseError::Corrupt(i));
                    }
                    if op == ENTRY_ADD {
                        self.add(id);
                    } else {
                        self.delete(id);
                    }
                }
                _ => return Err(SseError::Corrupt(i)),
            }
        }
        Ok(())
    }

    /// The map of ids, made at the first single entry from the chunk ids
    /// read so far.
    fn seen(&mut self) -> &mut HashMap<Vec<u8>, (usize, bool)> {
        let ids = &mut self.ids;
        self.seen.get_or_insert_with(|| {
            std::mem::take(ids)
                .into_iter()
                .enumerate()
                .map(|(order, id)| (id, (order, true)))
                .collect()
        })
    }

    fn add(&mut self, id: &[u8]) {
        let seen = self.seen();
        let order = seen.len();
        let dup = match seen.get_mut(id) {
            Some((_, live)) => std::mem::replace(live, true),
            None => {
                seen.insert(id.to_vec(), (order, true));
                false
            }
        };
        self.stale += usize::from(dup);
    }

    fn delete(&mut self, id: &[u8]) {
        // The delete entry, and the add it cancels.
        let cancelled = match self.seen().get_mut(id) {
            Some((_, live)) => std::mem::replace(live, false),
            None => false,
        };
        self.stale += 1 + usize::from(cancelled);
    }

    /// The live ids.
    pub fn finish(self) -> SearchResult {
        let ids = match self.seen {
            None => self.ids,
            Some(seen) => {
                let mut live: Vec<(usize, Vec<u8>)> = seen
                    .into_iter()
                    .filter(|(_, (_, live))| *live)
                    .map(|(id, (order, _))| (order, id))
                    .collect();
                live.sort_unstable_by_key(|(order, _)| *order);
                live.into_iter().map(|(_, id)| id).collect()
            }
        };
        SearchResult {
            ids,
            entries: self.entries,
            stale: self.stale,
        }
    }
}

/// Serializes tokens for the searcher (format kind `SseTokens`).
pub fn encode_tokens(tokens: &[Token]) -> Zeroizing<Vec<u8>> {
    // Sized up front: a reallocation would leave a copy of the keys behind.
    let mut w = Writer::with_capacity(Kind::SseTokens, 4 + tokens.len() * (ADDR_LEN + 32));
    w.u32(tokens.len() as u32);
    for t in tokens {
        w.raw(&t.addr);
        w.raw(&t.key);
    }
    Zeroizing::new(w.finish())
}

/// Parses tokens serialized by [`encode_tokens`].
pub fn decode_tokens(bytes: &[u8]) -> Result<Vec<Token>, SseError> {
    let mut r = Reader::new(bytes, Kind::SseTokens)?;
    let n = r.count("token count", MAX_TOKENS, ADDR_LEN + 32)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let addr = r.fixed("address")?;
        let key = Zeroizing::new(r.fixed::<32>("value key")?);
        out.push(Token { addr, key: *key });
    }
    r.finish()?;
    Ok(out)
}

/// The server side, in memory: an address → value map (tests, benchmarks and
/// the reference for the stored index).
#[derive(Clone, Debug, Default)]
pub struct MemoryIndex {
    map: HashMap<Addr, Vec<u8>>,
}

impl MemoryIndex {
    /// Writes entries; an address written before is refused (nothing of the
    /// batch is written), as the stored index does.
    pub fn put(&mut self, entries: Vec<Entry>) -> Result<(), Addr> {
        let mut seen = HashSet::with_capacity(entries.len());
        if let Some(e) = entries
            .iter()
            .find(|e| self.map.contains_key(&e.addr) || !seen.insert(e.addr))
        {
            return Err(e.addr);
        }
        self.map.reserve(entries.len());
        for e in entries {
            self.map.insert(e.addr, e.value);
        }
        Ok(())
    }

    /// Reads the values at `addrs`.
    pub fn get(&self, addrs: impl IntoIterator<Item = Addr>) -> Vec<Option<&[u8]>> {
        addrs
            .into_iter()
            .map(|a| self.map.get(&a).map(Vec::as_slice))
            .collect()
    }

    /// Deletes entries.
    pub fn delete(&mut self, addrs: &[Addr]) {
        for a in addrs {
            self.map.remove(a);
        }
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Every stored address and value (to scan what a server would see).
    pub fn entries(&self) -> impl Iterator<Item = (&Addr, &Vec<u8>)> {
        self.map.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::SeedableRng;

    fn rng() -> rand_chacha::ChaCha20Rng {
        rand_chacha::ChaCha20Rng::from_entropy()
    }

    fn scheme() -> Mitra {
        Mitra::new(&SseKey::from_bytes([7; 32]))
    }

    fn search(m: &Mitra, idx: &MemoryIndex, w: &str, st: &KeywordState) -> SearchResult {
        let tokens = m.tokens(w, st);
        let values = idx.get(tokens.iter().map(|t| t.addr));
        open_results(&tokens, &values).unwrap()
    }

    #[test]
    fn add_delete_search_and_compact() {
        let m = scheme();
        let mut idx = MemoryIndex::default();
        let mut st = KeywordState::default();
        let ops: Vec<(Op, &[u8])> = vec![
            (Op::Add, b"r1"),
            (Op::Add, b"r2"),
            (Op::Delete, b"r1"),
            (Op::Add, b"r3"),
            (Op::Add, b"r1"),
        ];
        idx.put(
            m.update("type:Observation", &mut st, &ops, &mut rng())
                .unwrap(),
        )
        .unwrap();
        let r = search(&m, &idx, "type:Observation", &st);
        assert_eq!(r.ids, vec![b"r1".to_vec(), b"r2".to_vec(), b"r3".to_vec()]);
        assert_eq!(r.stale, 2);
        assert!(search(&m, &idx, "type:Condition", &KeywordState::default())
            .ids
            .is_empty());

        let c = m
            .compact("type:Observation", &mut st, &r.ids, &mut rng())
            .unwrap();
        assert_eq!((c.put.len(), c.delete.len()), (1, 5));
        idx.delete(&c.delete);
        idx.put(c.put).unwrap();
        assert_eq!(idx.len(), 1);
        let again = search(&m, &idx, "type:Observation", &st);
        assert_eq!(again.ids, r.ids);
        assert_eq!((again.entries, again.stale), (1, 0));
    }

    #[test]
    fn many_ids_span_chunks() {
        let m = scheme();
        let mut idx = MemoryIndex::default();
        let mut st = KeywordState::default();
        let ids: Vec<Vec<u8>> = (0..1000)
            .map(|i| format!("pat-{i:05}/obs-{i:07}").into_bytes())
            .collect();
        let c = m.compact("w", &mut st, &ids, &mut rng()).unwrap();
        assert!(c.put.len() > 5 && c.put.len() < 20, "{}", c.put.len());
        idx.put(c.put).unwrap();
        assert_eq!(search(&m, &idx, "w", &st).ids, ids);
        // An empty result compacts to nothing.
        let c = m.compact("w", &mut st, &[], &mut rng()).unwrap();
        idx.delete(&c.delete);
        assert!(c.put.is_empty() && idx.is_empty());
        assert_eq!(st.entries(), 0);
    }

    #[test]
    fn altered_missing_or_swapped_values_are_refused() {
        let m = scheme();
        let mut st = KeywordState::default();
        let entries = m
            .update(
                "w",
                &mut st,
                &[(Op::Add, b"a"), (Op::Add, b"b")],
                &mut rng(),
            )
            .unwrap();
        let tokens = m.tokens("w", &st);
        let mut values: Vec<_> = entries.iter().map(|e| Some(e.value.clone())).collect();
        values.swap(0, 1);
        assert_eq!(open_results(&tokens, &values), Err(SseError::Corrupt(0)));
        values.swap(0, 1);
        values[1].as_mut().unwrap()[3] ^= 1;
        assert_eq!(open_results(&tokens, &values), Err(SseError::Corrupt(1)));
        values[1] = None;
        assert_eq!(open_results(&tokens, &values), Err(SseError::Missing(1)));
        assert!(matches!(
            open_results(&tokens, &values[..1]),
            Err(SseError::Mismatch { .. })
        ));
    }

    #[test]
    fn ids_are_checked_and_entries_padded() {
        let m = scheme();
        let mut st = KeywordState::default();
        assert_eq!(
            m.update("w", &mut st, &[(Op::Add, b"")], &mut rng()),
            Err(SseError::BadId(0))
        );
        assert_eq!(
            m.update("w", &mut st, &[(Op::Add, &[1u8; 256])], &mut rng()),
            Err(SseError::BadId(256))
        );
        assert_eq!(st, KeywordState::default());
        let short = m
            .update("w", &mut st, &[(Op::Add, b"x")], &mut rng())
            .unwrap();
        let long = m
            .update("w", &mut st, &[(Op::Add, &[b'y'; 63])], &mut rng())
            .unwrap();
        assert_eq!(short[0].value.len(), NONCE_LEN + SINGLE_CLASS + TAG_LEN);
        assert_eq!(long[0].value.len(), NONCE_LEN + 2 * SINGLE_CLASS + TAG_LEN);
    }

    #[test]
    fn state_and_keywords_seal_to_their_row() {
        let m = scheme();
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
        let st = KeywordState {
            first: 3,
            compacted: 5,
            next: 9,
        };
        let row = m.state_row("code:http://loinc.org|8480-6");
        let sealed = m.seal_state(&row, &st, &mut rng);
        assert_eq!(m.open_state(&row, &sealed).unwrap(), st);
        assert!(m.open_state(&m.state_row("other"), &sealed).is_err());
        let other = Mitra::new(&SseKey::from_bytes([8; 32]));
        assert!(other.open_state(&row, &sealed).is_err());
        let kws: Vec<String> = (0..40).map(|i| format!("month:2024-{i:02}")).collect();
        let doc = m.doc_row(b"pat-1/obs-1");
        let sealed = m.seal_keywords(&doc, &kws, &mut rng);
        assert_eq!(sealed.len() % 256, 6 + 24 + TAG_LEN);
        assert_eq!(m.open_keywords(&doc, &sealed).unwrap(), kws);
        assert!(m.open_keywords(&doc, &sealed[..sealed.len() - 1]).is_err());
    }

    #[test]
    fn tokens_round_trip_and_bad_bytes_are_errors() {
        let m = scheme();
        let st = KeywordState {
            first: 0,
            compacted: 0,
            next: 300,
        };
        let tokens = m.tokens("w", &st);
        let bytes = encode_tokens(&tokens);
        let back = decode_tokens(&bytes).unwrap();
        assert_eq!(
            back.iter().map(|t| t.addr).collect::<Vec<_>>(),
            tokens.iter().map(|t| t.addr).collect::<Vec<_>>()
        );
        for cut in 0..bytes.len() {
            assert!(decode_tokens(&bytes[..cut]).is_err());
        }
    }

    #[test]
    fn compaction_policy() {
        let fresh = KeywordState::default();
        assert!(!fresh.should_compact());
        let st = KeywordState {
            first: 0,
            compacted: 0,
            next: 16,
        };
        assert!(st.should_compact());
        let big = KeywordState {
            first: 0,
            compacted: 400,
            next: 499,
        };
        assert!(!big.should_compact());
        assert!(KeywordState { next: 500, ..big }.should_compact());
    }
}
