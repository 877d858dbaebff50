//! The audit log: durable appends against raw inserts of the same bytes into
//! the same backend, proofs at a million leaves from stored subtree hashes,
//! and in-memory tree hashing against ct-merkle.

use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use asclepios_audit::merkle::{self, MemoryTree};
use asclepios_audit::{Log, NoteSigner};
use asclepios_store::{BackendKind, Store};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde_json::{json, Value};

use crate::timing::{self, Budget};

/// Bytes of an entry in the append cases: about one sealed audit event.
const ENTRY_BYTES: usize = 1024;
/// Entries per append while building the large logs.
const BUILD_BATCH: usize = 8192;

/// Where the PostgreSQL cases run (a fresh schema, dropped afterwards).
fn postgres_url() -> String {
    std::env::var("ASCLEPIOS_BENCH_POSTGRES_URL")
        .or_else(|_| std::env::var("ASCLEPIOS_TEST_POSTGRES_URL"))
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A store in a scratch location that is removed afterwards.
pub(crate) struct Scratch {
    store: Option<Store>,
    _dir: Option<tempfile::TempDir>,
    schema: Option<String>,
}

impl Scratch {
    pub(crate) fn new(kind: BackendKind, tag: &str) -> anyhow::Result<Self> {
        match kind {
            BackendKind::Sqlite => {
                let dir = tempfile::tempdir()?;
                let store = Store::open_sqlite(&dir.path().join("bench.db"))?;
                Ok(Scratch {
                    store: Some(store),
                    _dir: Some(dir),
                    schema: None,
                })
            }
            BackendKind::Postgres => {
                let schema = format!("asclepios_bench_{tag}_{}", std::process::id());
                let store = Store::open_postgres(&postgres_url(), Some(&schema), 2).with_context(|| {
                    "the PostgreSQL cases need a server (set ASCLEPIOS_BENCH_POSTGRES_URL); \
                     start it with `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`"
                })?;
                Ok(Scratch {
                    store: Some(store),
                    _dir: None,
                    schema: Some(schema),
                })
            }
        }
    }

    pub(crate) fn store(&self) -> &Store {
        self.store.as_ref().expect("open until dropped")
    }

    pub(crate) fn take(&mut self) -> Store {
        self.store.take().expect("taken once")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        self.store = None;
        if let Some(schema) = &self.schema {
            if let Ok(mut c) = postgres::Client::connect(&postgres_url(), postgres::NoTls) {
                let _ = c.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"));
            }
        }
    }
}

fn signer() -> NoteSigner {
    NoteSigner::from_seed("bench.asclepios", &[3; 32]).expect("valid name")
}

fn entries(rng: &mut ChaCha20Rng, n: usize, len: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|_| {
            let mut e = vec![0u8; len];
            rng.fill_bytes(&mut e);
            e
        })
        .collect()
}

/// The witness of `append-witnessed` (its state synced to disk before it
/// answers), whose state lives in `dir`.
fn bench_witness(dir: &std::path::Path) -> anyhow::Result<asclepios_audit::Witness> {
    Ok(asclepios_audit::Witness::open(
        dir,
        asclepios_audit::Cosigner::from_seed("bench.asclepios/witness", &[4; 32])?,
        [("bench.asclepios/log".to_string(), signer().verifier())],
    )?)
}

/// `append` (durable appends of a batch) or, if `witnessed`,
/// `append-witnessed` (the same with a checkpoint per batch, cosigned by an
/// in-process witness), against raw inserts of the same rows.
fn append_cases(
    kind: BackendKind,
    batches: &[usize],
    budget: Budget,
    rows: &mut Vec<Value>,
    witnessed: bool,
) -> anyhow::Result<()> {
    let op = if witnessed {
        "append-witnessed"
    } else {
        "append"
    };
    // One database for both sides: the log's rows and the raw rows share its
    // write-ahead log, checkpoints and fsyncs, so the floor is the same backend
    // doing the same I/O without the log.
    let mut scratch = Scratch::new(kind, if witnessed { "witnessed" } else { "append" })?;
    scratch.store().bench_reset()?;
    let state = tempfile::tempdir()?;
    let mut log = Log::open(scratch.take(), "bench", "bench.asclepios/log", signer())?;
    if witnessed {
        let witness = bench_witness(state.path())?;
        log = log.with_witnesses(vec![(witness.verifier(), Box::new(witness))], 1);
    }
    let mut rng = ChaCha20Rng::seed_from_u64(if witnessed { 3 } else { 1 });
    let key = AtomicU64::new(0);
    for &batch in batches {
        eprintln!("audit: {op} {} batch {batch}", kind.name());
        let data = entries(&mut rng, batch, ENTRY_BYTES);
        let refs: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
        let mut failure = None;
        let mut ours = || {
            let done = log.append(&refs).and_then(|_| {
                if witnessed {
                    log.checkpoint().map(drop)
                } else {
                    Ok(())
                }
            });
            if let Err(e) = done {
                failure.get_or_insert(e.to_string());
            }
        };
        let mut raw_failure = None;
        let mut floor = || {
            let first = key.fetch_add(batch as u64, Ordering::Relaxed);
            let raw: Vec<(u64, &[u8])> = refs
                .iter()
                .enumerate()
                .map(|(i, e)| (first + i as u64, *e))
                .collect();
            if let Err(e) = log.store().bench_raw_insert(&raw) {
                raw_failure.get_or_insert(e.to_string());
            }
        };
        let us = timing::interleaved(budget, &mut [&mut ours, &mut floor]);
        if let Some(e) = failure.or(raw_failure) {
            anyhow::bail!("{op} {} batch {batch}: {e}", kind.name());
        }
        let per_s = batch as f64 / (us[0] / 1e6);
        let floor_per_s = batch as f64 / (us[1] / 1e6);
        rows.push(json!({
            "suite": "audit", "op": op, "backend": kind.name(), "batch": batch,
            "per_s": per_s.round(), "floor_per_s": floor_per_s.round(),
            "ratio": (per_s / floor_per_s * 1000.0).round() / 1000.0,
        }));
    }
    Ok(())
}

/// `cosign`: one witness step (parse, the log's signature, the consistency
/// proof, the cosignature, the state synced to disk), per checkpoint, each
/// one leaf larger than the last.
fn cosign_cases(budget: Budget, rows: &mut Vec<Value>) -> anyhow::Result<()> {
    const LEAVES: u64 = 1 << 16;
    let state = tempfile::tempdir()?;
    let witness = bench_witness(state.path())?;
    let mut tree = MemoryTree::new();
    for i in 0..LEAVES {
        tree.push_leaf_hash(merkle::leaf_hash(&i.to_be_bytes()));
    }
    let body = |old: u64, size: u64| -> anyhow::Result<String> {
        let note = asclepios_audit::Checkpoint {
            origin: "bench.asclepios/log".into(),
            size,
            root: tree.root_at(size),
            extensions: Vec::new(),
        }
        .sign(&signer())?;
        Ok(asclepios_audit::witness::AddCheckpoint {
            old_size: old,
            proof: if old == 0 {
                Vec::new()
            } else {
                tree.prove_consistency(old, size)
            },
            checkpoint: note,
        }
        .to_body())
    };
    // Bodies made ahead, so only the witness's work is timed.
    let start = LEAVES / 2;
    witness.add_checkpoint(body(0, start)?.as_bytes())?;
    let bodies: Vec<String> = (start..LEAVES - 1)
        .take(4096)
        .map(|s| body(s, s + 1))
        .collect::<anyhow::Result<_>>()?;
    let mut next = bodies.iter();
    let mut failure = None;
    let us = timing::single(budget, || {
        if let Some(b) = next.next() {
            if let Err(e) = witness.add_checkpoint(b.as_bytes()) {
                failure.get_or_insert(e.to_string());
            }
        }
    });
    if let Some(e) = failure {
        anyhow::bail!("cosign: {e}");
    }
    rows.push(json!({
        "suite": "audit", "op": "cosign", "leaves": start,
        "ours_us": (us * 1000.0).round() / 1000.0,
    }));
    Ok(())
}

fn proof_cases(
    kind: BackendKind,
    leaves: u64,
    budget: Budget,
    rows: &mut Vec<Value>,
) -> anyhow::Result<()> {
    let mut scratch = Scratch::new(kind, "proofs")?;
    let log = Log::open(scratch.take(), "bench", "bench.asclepios/log", signer())?;
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    eprintln!(
        "audit: building a log of {leaves} entries on {}",
        kind.name()
    );
    let mut built = 0u64;
    while built < leaves {
        let n = BUILD_BATCH.min((leaves - built) as usize);
        let data = entries(&mut rng, n, 64);
        let refs: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
        built = log.append(&refs)?.end;
    }
    // Measure a freshly opened log (as a reader process would start), not the
    // writer whose in-memory node cache the build filled.
    let opened = std::time::Instant::now();
    let log = Log::open(log.into_store(), "bench", "bench.asclepios/log", signer())?;
    eprintln!(
        "audit: opened the {} log of {leaves} in {:?} (cache warm-up included)",
        kind.name(),
        opened.elapsed()
    );
    let size = leaves;
    let root = log.root_at(size)?;
    let mut pick = ChaCha20Rng::seed_from_u64(3);
    let mut failure: Option<String> = None;
    let mut record = |op: &str, us: f64, cold_us: Option<f64>| {
        let mut row = json!({
            "suite": "audit", "op": op, "backend": kind.name(), "leaves": leaves,
            "ours_us": (us * 100.0).round() / 100.0,
        });
        if let Some(cold) = cold_us {
            row["ours_cold_us"] = json!((cold * 100.0).round() / 100.0);
        }
        rows.push(row);
    };
    // Proofs: first from the freshly opened log (its node cache filling as it
    // goes: `ours_cold_us`), then again once warm (`ours_us`, a long-running
    // log service's steady state).
    let mut prove_inclusion = || {
        let index = pick.next_u64() % size;
        if let Err(e) = log.prove_inclusion(index, size) {
            failure.get_or_insert(e.to_string());
        }
    };
    let cold = timing::single(budget, &mut prove_inclusion);
    let warm = timing::single(budget, &mut prove_inclusion);
    record("prove-inclusion", warm, Some(cold));
    let mut prove_consistency = || {
        let old = 1 + pick.next_u64() % (size - 1);
        if let Err(e) = log.prove_consistency(old, size) {
            failure.get_or_insert(e.to_string());
        }
    };
    let cold = timing::single(budget, &mut prove_consistency);
    let warm = timing::single(budget, &mut prove_consistency);
    record("prove-consistency", warm, Some(cold));
    // Verification is pure computation on a proof; time it on real proofs.
    let index = pick.next_u64() % size;
    let leaf = merkle::leaf_hash(&log.entries(index..index + 1)?[0]);
    let proof = log.prove_inclusion(index, size)?;
    let us = timing::single(budget, || {
        if merkle::verify_inclusion(index, size, &leaf, &proof, &root).is_err() {
            failure.get_or_insert("inclusion proof did not verify".into());
        }
    });
    record("verify-inclusion", us, None);
    let old = size / 3 + 1;
    let old_root = log.root_at(old)?;
    let proof = log.prove_consistency(old, size)?;
    let us = timing::single(budget, || {
        if merkle::verify_consistency(old, size, &old_root, &root, &proof).is_err() {
            failure.get_or_insert("consistency proof did not verify".into());
        }
    });
    record("verify-consistency", us, None);
    if let Some(e) = failure {
        anyhow::bail!("proofs on {}: {e}", kind.name());
    }
    Ok(())
}

fn memory_cases(leaves: usize, budget: Budget, rows: &mut Vec<Value>) -> anyhow::Result<()> {
    use ct_merkle::mem_backed_tree::MemoryBackedTree;
    eprintln!("audit: in-memory trees of {leaves} leaves");
    let mut rng = ChaCha20Rng::seed_from_u64(4);
    let data = entries(&mut rng, leaves, 32);
    let mut ours_root = [0u8; 32];
    let mut peer_root = [0u8; 32];
    let us = timing::interleaved(
        budget,
        &mut [
            &mut || {
                let mut t = MemoryTree::new();
                for e in &data {
                    t.push(e);
                }
                ours_root = t.root();
            },
            &mut || {
                let mut t = MemoryBackedTree::<sha2::Sha256, Vec<u8>>::new();
                for e in &data {
                    t.push(e.clone());
                }
                peer_root = t.root().as_bytes().as_slice().try_into().unwrap_or([0; 32]);
            },
        ],
    );
    anyhow::ensure!(
        ours_root == peer_root,
        "ct-merkle and asclepios disagree on the root"
    );
    rows.push(json!({
        "suite": "audit", "op": "memory-root", "leaves": leaves,
        "ours_us": us[0].round(), "peer": "ct-merkle", "peer_us": us[1].round(),
        "speedup": (us[1] / us[0] * 100.0).round() / 100.0,
    }));
    let mut ours = MemoryTree::new();
    let mut peer = MemoryBackedTree::<sha2::Sha256, Vec<u8>>::new();
    for e in &data {
        ours.push(e);
        peer.push(e.clone());
    }
    let size = leaves as u64;
    let mut pick = ChaCha20Rng::seed_from_u64(5);
    // Both sides prove the same random leaf in each round.
    let index = std::cell::Cell::new(0u64);
    let sink = std::cell::Cell::new(0usize);
    let us = timing::interleaved(
        budget,
        &mut [
            &mut || {
                index.set(pick.next_u64() % size);
                let proof = ours.prove_inclusion(index.get(), size);
                sink.set(sink.get() + proof.len());
            },
            &mut || {
                let proof = peer.prove_inclusion(index.get() as usize);
                sink.set(sink.get() + proof.as_bytes().len());
            },
        ],
    );
    std::hint::black_box(sink.get());
    rows.push(json!({
        "suite": "audit", "op": "memory-prove", "leaves": leaves,
        "ours_us": (us[0] * 1000.0).round() / 1000.0, "peer": "ct-merkle",
        "peer_us": (us[1] * 1000.0).round() / 1000.0,
        "speedup": (us[1] / us[0] * 100.0).round() / 100.0,
    }));
    Ok(())
}

/// `ASCLEPIOS_BENCH_AUDIT_CASES=append,witnessed,proofs,memory` runs only those groups.
fn selected(group: &str) -> bool {
    std::env::var("ASCLEPIOS_BENCH_AUDIT_CASES")
        .map_or(true, |v| v.split(',').any(|g| g.trim() == group))
}

pub fn run(quick: bool, budget: Budget) -> anyhow::Result<Vec<Value>> {
    let mut rows = Vec::new();
    let batches: &[usize] = if quick { &[1, 64] } else { &[1, 64, 1024] };
    let proof_leaves: u64 = if quick { 10_000 } else { 1_000_000 };
    let memory_leaves: usize = if quick { 4096 } else { 100_000 };
    for kind in [BackendKind::Sqlite, BackendKind::Postgres] {
        if selected("append") {
            append_cases(kind, batches, budget, &mut rows, false)?;
        }
    }
    if selected("witnessed") {
        cosign_cases(budget, &mut rows)?;
        for kind in [BackendKind::Sqlite, BackendKind::Postgres] {
            append_cases(kind, batches, budget, &mut rows, true)?;
        }
    }
    for kind in [BackendKind::Sqlite, BackendKind::Postgres] {
        if selected("proofs") {
            proof_cases(kind, proof_leaves, budget, &mut rows)?;
        }
    }
    if selected("memory") {
        memory_cases(memory_leaves, budget, &mut rows)?;
    }
    Ok(rows)
}
