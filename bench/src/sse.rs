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

/// Patients in the searcher's circle for `op=search-circle`.
const CIRCLE_PATIENTS: usize = 1000;
/// Codes the circle's records are drawn from (uniformly).
const CIRCLE_CODES: usize = 20;

/// A searcher whose circle is [`CIRCLE_PATIENTS`] patients, through the
/// authority's index as deployed (keyword states in an integrity-protected
/// store, keyed per patient): the query's tokens for every patient of the
/// circle, the record service's read of their addresses, and the opening of
/// the values; against the same records indexed without the per-patient
/// component (one list per keyword, `unscoped_us`), in the same store and
/// run. `audit_us` is logging the search to every patient it reached, in
/// one batch, as the authority does (`audit_first_us`: with no sealing key
/// cached, as after 60 s without an event about them).
fn circle_cases(
    kind: BackendKind,
    records_per_patient: usize,
    budget: Budget,
    rows: &mut Vec<Value>,
) -> anyhow::Result<()> {
    use asclepios_authority::search::{scoped_keywords, QueryTokens};
    use std::collections::BTreeSet;

    let mut scratch = Scratch::new(kind, "circle")?;
    let store = scratch
        .take()
        .with_integrity(asclepios_store::IntegrityKey::from_bytes(&[8; 32])?, None)?;
    let records = asclepios_authority::record_access::LocalRecords(store.clone());
    let lock = std::sync::Mutex::new(());
    let scoped_mitra = Mitra::new(&SseKey::from_bytes([7; 32]));
    let flat_mitra = Mitra::new(&SseKey::from_bytes([9; 32]));
    let scoped = SearchIndex::new(&scoped_mitra, &store, &records, &lock);
    let flat = SearchIndex::new(&flat_mitra, &store, &records, &lock);
    let patients: Vec<String> = (0..CIRCLE_PATIENTS)
        .map(|p| format!("pat-{p:05}"))
        .collect();
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    eprintln!(
        "sse: {}: indexing {} patients x {records_per_patient} records, per patient and flat",
        kind.name(),
        patients.len()
    );
    let per_batch = (BATCH / records_per_patient).max(1);
    for group in patients.chunks(per_batch) {
        let (mut by_patient, mut flat_batch) = (Vec::new(), Vec::new());
        for p in group {
            for r in 0..records_per_patient {
                let kind = if r % 4 == 0 {
                    "Condition"
                } else {
                    "Observation"
                };
                let code = rng.next_u64() as usize % CIRCLE_CODES;
                let kws = vec![
                    format!("type:{kind}"),
                    format!("code:http://loinc.org|{code}-0"),
                    format!("patient:{p}"),
                ];
                let id = format!("{p}/obs-{r:04}").into_bytes();
                by_patient.push((id.clone(), scoped_keywords(p, &kws)));
                flat_batch.push((id, kws));
            }
        }
        for (index, batch) in [(&scoped, by_patient), (&flat, flat_batch)] {
            index
                .set_keywords_many(&batch)
                .map_err(|e| anyhow::anyhow!("indexing: {}", e.message))?;
        }
    }
    let everyone: BTreeSet<String> = patients.iter().cloned().collect();
    let open = |tokens: &[u8]| -> anyhow::Result<Vec<Vec<u8>>> {
        let tokens = sse::decode_tokens(tokens)?;
        let mut addrs: Vec<Vec<u8>> = tokens.iter().map(|t| t.addr.to_vec()).collect();
        // As the client sends them: sorted, not grouped by patient.
        addrs.sort();
        let values = store.sse_get(&addrs)?;
        let by_addr: std::collections::HashMap<&[u8], &Option<Vec<u8>>> =
            addrs.iter().map(Vec::as_slice).zip(&values).collect();
        let mine: Vec<Option<&[u8]>> = tokens
            .iter()
            .map(|t| by_addr[&t.addr[..]].as_deref())
            .collect();
        Ok(sse::open_results(&tokens, &mine)?.ids)
    };
    // The matches of a query, intersected across groups as the client does.
    let intersect = |groups: &[Vec<String>], ids: &dyn Fn(&str) -> anyhow::Result<Vec<Vec<u8>>>| {
        let mut result: Option<BTreeSet<Vec<u8>>> = None;
        for group in groups {
            let mut union = BTreeSet::new();
            for k in group {
                union.extend(ids(k)?);
            }
            result = Some(match result {
                None => union,
                Some(acc) => acc.intersection(&union).cloned().collect(),
            });
        }
        anyhow::Ok(result.unwrap_or_default().len())
    };
    let query = |groups: &[Vec<String>],
                 scope: &BTreeSet<String>|
     -> anyhow::Result<(QueryTokens, usize)> {
        let found = scoped
            .query_tokens(groups, scope)
            .map_err(|e| anyhow::anyhow!("tokens: {}", e.message))?;
        let matches = intersect(groups, &|k| {
            let (_, tokens) = found
                .lists
                .iter()
                .find(|(kw, _)| kw == k)
                .expect("a list per keyword");
            open(tokens)
        })?;
        Ok((found, matches))
    };
    let trail_scratch = Scratch::new(kind, "circle_audit")?;
    let mut abe_rng = ChaCha20Rng::seed_from_u64(4);
    let (abe_public, _) = asclepios_crypto::abe::setup(&mut abe_rng);
    let make_trail = || {
        asclepios_audit::AuditTrail::new(
            std::sync::Arc::new(
                asclepios_audit::Log::open(
                    trail_scratch.store().clone(),
                    "bench",
                    "bench.asclepios/log",
                    asclepios_audit::NoteSigner::from_seed("bench.asclepios", &[3; 32])
                        .expect("a valid name"),
                )
                .expect("the log opens"),
            ),
            abe_public.clone(),
            Vec::new(),
            "authority",
            ed25519_dalek::SigningKey::from_bytes(&[5; 32]),
        )
    };
    let events = |reached: &[String]| -> Vec<asclepios_audit::AuditEvent> {
        reached
            .iter()
            .map(|p| {
                asclepios_audit::AuditEvent::new(
                    "nurse-ward",
                    asclepios_audit::Action::Search,
                    "search: type:Condition".into(),
                    Some(p),
                    asclepios_audit::Outcome::Success,
                    None,
                )
            })
            .collect()
    };
    // (query as shown, its groups, the patients it covers)
    type Case<'a> = (&'a str, Vec<Vec<String>>, BTreeSet<String>);
    let cases: [Case; 3] = [
        (
            "type:Condition",
            vec![vec!["type:Condition".into()]],
            everyone.clone(),
        ),
        (
            "code:http://loinc.org|7-0 and type:Observation",
            vec![
                vec!["code:http://loinc.org|7-0".into()],
                vec!["type:Observation".into()],
            ],
            everyone.clone(),
        ),
        (
            "patient:pat-00042 and type:Observation",
            vec![
                vec!["patient:pat-00042".into()],
                vec!["type:Observation".into()],
            ],
            BTreeSet::from(["pat-00042".to_string()]),
        ),
    ];
    for (shown, groups, scope) in cases {
        eprintln!("sse: {}: circle search `{shown}`", kind.name());
        // The first search compacts; timed once.
        let started = std::time::Instant::now();
        let (found, matches) = query(&groups, &scope)?;
        let first = started.elapsed().as_secs_f64() * 1e6;
        let mut failure = None;
        let tokens_us = timing::single(budget, || {
            if let Err(e) = scoped.query_tokens(&groups, &scope) {
                failure.get_or_insert(e.message);
            }
        });
        let ours_us = timing::single(budget, || {
            if let Err(e) = query(&groups, &scope) {
                failure.get_or_insert(e.to_string());
            }
        });
        // The same answer from one list per keyword (intersected as the
        // client does), without the per-patient component.
        let flat_search = || {
            intersect(&groups, &|k| {
                let tokens = flat
                    .tokens(k)
                    .map_err(|e| anyhow::anyhow!("{}", e.message))?;
                let tokens = sse::decode_tokens(&tokens)?;
                let addrs: Vec<Vec<u8>> = tokens.iter().map(|t| t.addr.to_vec()).collect();
                let values = store.sse_get(&addrs)?;
                Ok(sse::open_results(&tokens, &values)?.ids)
            })
        };
        let flat_matches = flat_search()?;
        anyhow::ensure!(
            flat_matches == matches,
            "per-patient lists found {matches} records, one list per keyword {flat_matches}"
        );
        let unscoped_us = timing::single(budget, || {
            if let Err(e) = flat_search() {
                failure.get_or_insert(e.to_string());
            }
        });
        if let Some(e) = failure {
            anyhow::bail!("circle search on {}: {e}", kind.name());
        }
        let to_log = events(&found.reached);
        let trail = make_trail();
        let started = std::time::Instant::now();
        trail.record_all(&to_log, &[0; 32], 200)?;
        let audit_first_us = started.elapsed().as_secs_f64() * 1e6;
        let audit_us = timing::single(budget, || {
            if let Err(e) = trail.record_all(&to_log, &[0; 32], 200) {
                failure.get_or_insert(e.to_string());
            }
        });
        if let Some(e) = failure {
            anyhow::bail!("logging a circle search on {}: {e}", kind.name());
        }
        rows.push(json!({
            "suite": "sse", "op": "search-circle", "backend": kind.name(),
            "patients": scope.len(), "query": shown, "matches": matches,
            "reached": found.reached.len(), "ours_us": round(ours_us),
            "tokens_us": round(tokens_us), "first_us": round(first),
            "unscoped_us": round(unscoped_us), "ratio": round(ours_us / unscoped_us),
            "audit_us": round(audit_us), "audit_first_us": round(audit_first_us),
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
        if selected(&format!("circle-{}", kind.name())) || selected("circle") {
            circle_cases(kind, if quick { 4 } else { 20 }, budget, &mut rows)
                .with_context(|| format!("circle search on {}", kind.name()))?;
        }
    }
    Ok(rows)
}
