//! Searchable encryption: Mitra (ours) against Cosmian Findex and a plaintext
//! inverted index, on the same synthetic index of (keyword, record) pairs
//! whose keywords follow a Zipf law, in the same run.
//!
//! * `update`: the whole index written in batches of [`BATCH`] pairs;
//!   in memory each batch goes to ours, to Findex (both word sizes) and to
//!   the plaintext index in turn; on SQLite and PostgreSQL through the
//!   authority's batched indexing (sealed counters, per-record keyword lists,
//!   one transaction per batch).
//! * `search_first`: a keyword's first search, over its update history as
//!   written (one entry per update). In memory only.
//! * `search`: every later search, after that first one compacted the list.
//!
//! Findex is given its best configuration per case: it runs with 32-byte
//! and 256-byte words (its generic encoding packs values across words) and
//! the faster of the two is its figure (`peer_config` says which).

use std::collections::{HashMap, HashSet};

use anyhow::Context;
use asclepios_authority::search::SearchIndex;
use asclepios_crypto::sse::{self, KeywordState, MemoryIndex, Mitra, Op, SseKey};
use asclepios_store::BackendKind;
use cosmian_findex::{generic_decode, generic_encode, Findex, IndexADT, MemoryEncryptionLayer};
use cosmian_sse_memories::{Address, InMemory, ADDRESS_LENGTH};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde_json::{json, Value};

use crate::audit::Scratch;
use crate::timing::{self, Budget};

/// Pairs per update batch.
const BATCH: usize = 1000;
/// Keywords per record (distinct).
const KEYWORDS_PER_RECORD: usize = 2;
/// The Zipf exponent.
const ZIPF_S: f64 = 1.0;

/// The synthetic index: batches of records, each with its keywords.
struct Dataset {
    batches: Vec<Vec<(Vec<u8>, Vec<String>)>>,
    /// The plaintext answer: keyword -> ids.
    truth: HashMap<String, Vec<Vec<u8>>>,
    pairs: usize,
}

fn keyword(rank: usize) -> String {
    format!("code:http://loinc.org|{rank}-{}", rank % 10)
}

fn dataset(pairs: usize, vocabulary: usize, seed: u64) -> Dataset {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    // Inverse CDF of Zipf(s) over ranks 1..=vocabulary.
    let mut cdf = Vec::with_capacity(vocabulary);
    let mut total = 0.0;
    for r in 1..=vocabulary {
        total += 1.0 / (r as f64).powf(ZIPF_S);
        cdf.push(total);
    }
    let draw = |rng: &mut ChaCha20Rng| {
        let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * total;
        cdf.partition_point(|&c| c < u) + 1
    };
    let records = pairs / KEYWORDS_PER_RECORD;
    let per_batch = BATCH / KEYWORDS_PER_RECORD;
    let mut truth: HashMap<String, Vec<Vec<u8>>> = HashMap::new();
    let mut batches = Vec::new();
    let mut batch = Vec::with_capacity(per_batch);
    for d in 0..records {
        let id = format!("pat-{:05}/obs-{d:07}", d / 20).into_bytes();
        let mut ranks = Vec::with_capacity(KEYWORDS_PER_RECORD);
        while ranks.len() < KEYWORDS_PER_RECORD {
            let r = draw(&mut rng);
            if !ranks.contains(&r) {
                ranks.push(r);
            }
        }
        let kws: Vec<String> = ranks.into_iter().map(keyword).collect();
        for k in &kws {
            truth.entry(k.clone()).or_default().push(id.clone());
        }
        batch.push((id, kws));
        if batch.len() == per_batch {
            batches.push(std::mem::take(&mut batch));
        }
    }
    if !batch.is_empty() {
        batches.push(batch);
    }
    Dataset {
        batches,
        truth,
        pairs: records * KEYWORDS_PER_RECORD,
    }
}

/// The keyword whose result count is closest to `target`.
fn keyword_near(data: &Dataset, target: usize) -> (String, usize) {
    let (k, ids) = data
        .truth
        .iter()
        .min_by_key(|(k, ids)| (ids.len().abs_diff(target), (*k).clone()))
        .expect("a non-empty index");
    (k.clone(), ids.len())
}

/// Ours in memory: the authority's state and the server's map, one process.
struct Ours {
    mitra: Mitra,
    states: HashMap<String, KeywordState>,
    index: MemoryIndex,
    rng: ChaCha20Rng,
}

impl Ours {
    fn update(&mut self, batch: &[(Vec<u8>, Vec<String>)]) {
        let mut by_keyword: HashMap<&str, Vec<(Op, &[u8])>> = HashMap::new();
        for (id, kws) in batch {
            for k in kws {
                by_keyword.entry(k).or_default().push((Op::Add, id));
            }
        }
        let mut entries = Vec::with_capacity(BATCH);
        for (k, ops) in by_keyword {
            let st = self.states.entry(k.to_string()).or_default();
            entries.extend(
                self.mitra
                    .update(k, st, &ops, &mut self.rng)
                    .expect("ids fit"),
            );
        }
        self.index.put(entries).expect("fresh addresses");
    }

    fn search(&self, k: &str) -> Vec<Vec<u8>> {
        let st = self.states.get(k).copied().unwrap_or_default();
        let tokens = self.mitra.tokens(k, &st);
        let values = self.index.get(tokens.iter().map(|t| t.addr));
        sse::open_results(&tokens, &values)
            .expect("an honest index")
            .ids
    }

    fn compact(&mut self, k: &str) {
        let live = self.search(k);
        let st = self.states.entry(k.to_string()).or_default();
        let c = self
            .mitra
            .compact(k, st, &live, &mut self.rng)
            .expect("ids fit");
        self.index.delete(&c.delete);
        self.index.put(c.put).expect("fresh addresses");
    }
}

type Memory<const W: usize> = MemoryEncryptionLayer<W, InMemory<Address<ADDRESS_LENGTH>, [u8; W]>>;

/// Findex with `W`-byte words, in memory, driven on a current-thread runtime.
struct Peer<const W: usize> {
    findex: Findex<W, Vec<u8>, String, Memory<W>>,
    rt: tokio::runtime::Runtime,
}

impl<const W: usize> Peer<W> {
    fn new() -> Self {
        let mut seed = [0u8; 32];
        ChaCha20Rng::seed_from_u64(9).fill_bytes(&mut seed);
        let key = cosmian_crypto_core::Secret::<32>::from_unprotected_bytes(&mut seed);
        let memory = MemoryEncryptionLayer::new(&key, InMemory::default());
        Peer {
            findex: Findex::new(
                memory,
                generic_encode::<W, Vec<u8>>,
                generic_decode::<W, _, _>,
            ),
            rt: tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("a runtime"),
        }
    }

    fn update(&self, batch: &[(Vec<u8>, Vec<String>)]) {
        let mut by_keyword: HashMap<&str, HashSet<Vec<u8>>> = HashMap::new();
        for (id, kws) in batch {
            for k in kws {
                by_keyword.entry(k).or_default().insert(id.clone());
            }
        }
        self.rt.block_on(async {
            for (k, ids) in by_keyword {
                self.findex
                    .insert(k.to_string(), ids)
                    .await
                    .expect("findex insert");
            }
        });
    }

    fn search(&self, k: &str) -> HashSet<Vec<u8>> {
        self.rt
            .block_on(self.findex.search(&k.to_string()))
            .expect("findex search")
    }
}

/// The floor: a plaintext inverted index doing the same work.
#[derive(Default)]
struct Plain(HashMap<String, Vec<Vec<u8>>>);

impl Plain {
    fn update(&mut self, batch: &[(Vec<u8>, Vec<String>)]) {
        for (id, kws) in batch {
            for k in kws {
                self.0.entry(k.clone()).or_default().push(id.clone());
            }
        }
    }

    fn search(&self, k: &str) -> Vec<Vec<u8>> {
        self.0.get(k).cloned().unwrap_or_default()
    }
}

fn time(f: impl FnOnce()) -> f64 {
    let t = std::time::Instant::now();
    f();
    t.elapsed().as_secs_f64()
}

fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn memory_cases(
    data: &Dataset,
    targets: &[usize],
    budget: Budget,
    rows: &mut Vec<Value>,
) -> anyhow::Result<()> {
    let mut ours = Ours {
        mitra: Mitra::new(&SseKey::from_bytes([5; 32])),
        states: HashMap::new(),
        index: MemoryIndex::default(),
        rng: ChaCha20Rng::seed_from_u64(4),
    };
    let small = Peer::<32>::new();
    let large = Peer::<256>::new();
    let mut plain = Plain::default();
    let mut t = [0.0f64; 4];
    eprintln!(
        "sse: memory: writing {} pairs in {} batches",
        data.pairs,
        data.batches.len()
    );
    for batch in &data.batches {
        // In turn, so all four see the same machine load.
        t[0] += time(|| ours.update(batch));
        t[1] += time(|| small.update(batch));
        t[2] += time(|| large.update(batch));
        t[3] += time(|| plain.update(batch));
    }
    let per_s = |secs: f64| (data.pairs as f64 / secs).round();
    let (peer_secs, peer_config) = if t[1] <= t[2] {
        (t[1], "32-byte words")
    } else {
        (t[2], "256-byte words")
    };
    rows.push(json!({
        "suite": "sse", "op": "update", "backend": "memory", "pairs": data.pairs, "batch": BATCH,
        "per_s": per_s(t[0]), "peer": "findex", "peer_config": peer_config,
        "peer_per_s": per_s(peer_secs), "speedup": round(peer_secs / t[0]),
        "floor_per_s": per_s(t[3]),
    }));

    for &target in targets {
        let (k, matches) = keyword_near(data, target);
        eprintln!("sse: memory: search `{k}` ({matches} matches)");
        let want: HashSet<Vec<u8>> = data.truth[&k].iter().cloned().collect();
        let check = |ids: Vec<Vec<u8>>| {
            assert_eq!(ids.len(), want.len(), "ours found another count");
            assert!(ids.iter().all(|i| want.contains(i)), "ours found other ids");
        };
        check(ours.search(&k));
        assert_eq!(small.search(&k), want, "findex disagrees");
        assert_eq!(large.search(&k), want, "findex disagrees");
        for op in ["search_first", "search"] {
            if op == "search" {
                ours.compact(&k);
                check(ours.search(&k));
            }
            let entries = ours.states[&k].entries();
            let us = timing::interleaved(
                budget,
                &mut [
                    &mut || drop(std::hint::black_box(ours.search(&k))),
                    &mut || drop(std::hint::black_box(small.search(&k))),
                    &mut || drop(std::hint::black_box(large.search(&k))),
                    &mut || drop(std::hint::black_box(plain.search(&k))),
                ],
            );
            let (peer_us, peer_config) = if us[1] <= us[2] {
                (us[1], "32-byte words")
            } else {
                (us[2], "256-byte words")
            };
            rows.push(json!({
                "suite": "sse", "op": op, "backend": "memory", "results": target,
                "matches": matches, "entries": entries,
                "ours_us": round(us[0]), "peer": "findex", "peer_config": peer_config,
                "peer_us": round(peer_us), "speedup": round(peer_us / us[0]),
                "floor_us": round(us[3]), "ratio": round(us[0] / us[3]),
            }));
        }
    }
    Ok(())
}

fn store_cases(
    kind: BackendKind,
    data: &Dataset,
    targets: &[usize],
    budget: Budget,
    rows: &mut Vec<Value>,
) -> anyhow::Result<()> {
    let scratch = Scratch::new(kind, "sse")?;
    let mitra = Mitra::new(&SseKey::from_bytes([6; 32]));
    let records = asclepios_authority::record_access::LocalRecords(scratch.store().clone());
    let lock = std::sync::Mutex::new(());
    let index = SearchIndex::new(&mitra, scratch.store(), &records, &lock);
    eprintln!(
        "sse: {}: writing {} pairs in {} batches",
        kind.name(),
        data.pairs,
        data.batches.len()
    );
    let started = std::time::Instant::now();
    for batch in &data.batches {
        index
            .set_keywords_many(batch)
            .map_err(|e| anyhow::anyhow!("indexing: {}", e.message))?;
    }
    let secs = started.elapsed().as_secs_f64();
    rows.push(json!({
        "suite": "sse", "op": "update", "backend": kind.name(), "pairs": data.pairs,
        "batch": BATCH, "per_s": (data.pairs as f64 / secs).round(),
    }));
    let search = |k: &str| -> anyhow::Result<Vec<Vec<u8>>> {
        let bytes = index
            .tokens(k)
            .map_err(|e| anyhow::anyhow!("tokens: {}", e.message))?;
        let tokens = sse::decode_tokens(&bytes)?;
        let addrs: Vec<Vec<u8>> = tokens.iter().map(|t| t.addr.to_vec()).collect();
        let values = scratch.store().sse_get(&addrs)?;
        Ok(sse::open_results(&tokens, &values)?.ids)
    };
    for &target in targets {
        let (k, matches) = keyword_near(data, target);
        eprintln!("sse: {}: search `{k}` ({matches} matches)", kind.name());
        // The first search compacts the list; it is timed once.
        let first = time(|| {
            let ids = search(&k).expect("search");
            assert_eq!(ids.len(), matches, "{}: wrong result count", kind.name());
        });
        let mut failure = None;
        let us = timing::single(budget, || {
            if let Err(e) = search(&k) {
                failure.get_or_insert(e.to_string());
            }
        });
        if let Some(e) = failure {
            anyhow::bail!("search on {}: {e}", kind.name());
        }
        rows.push(json!({
            "suite": "sse", "op": "search", "backend": kind.name(), "results": target,
            "matches": matches, "ours_us": round(us), "first_us": round(first * 1e6),
        }));
    }
    Ok(())
}

/// Runs the suite: 10^6 pairs (2·10^4 with `--quick`).
pub fn run(quick: bool, budget: Budget) -> anyhow::Result<Vec<Value>> {
    let (pairs, vocabulary, targets): (usize, usize, &[usize]) = if quick {
        (20_000, 1_000, &[10, 100, 1000])
    } else {
        (1_000_000, 10_000, &[10, 1000, 100_000])
    };
    let pairs = std::env::var("ASCLEPIOS_BENCH_SSE_PAIRS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(pairs);
    eprintln!("sse: building a Zipf index of {pairs} pairs over {vocabulary} keywords");
    let data = dataset(pairs, vocabulary, 1);
    let mut rows = Vec::new();
    let selected = |case: &str| {
        std::env::var("ASCLEPIOS_BENCH_SSE_CASES")
            .map(|v| v.split(',').any(|c| c == case))
            .unwrap_or(true)
    };
    if selected("memory") {
        memory_cases(&data, targets, budget, &mut rows)?;
    }
    for kind in [BackendKind::Sqlite, BackendKind::Postgres] {
        if selected(kind.name()) {
            store_cases(kind, &data, targets, budget, &mut rows)
                .with_context(|| format!("sse on {}", kind.name()))?;
        }
    }
    Ok(rows)
}
