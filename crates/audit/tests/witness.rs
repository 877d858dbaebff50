//! The witness against the C2SP `tlog-witness` rules: it cosigns only
//! consistent extensions of what it cosigned before, never two roots for
//! one size, keeps its state across restarts, and keeps evidence of forks.

use asclepios_audit::merkle::{leaf_hash, MemoryTree};
use asclepios_audit::note::SignedNote;
use asclepios_audit::witness::AddCheckpoint;
use asclepios_audit::{Checkpoint, Cosigner, NoteSigner, Witness, WitnessError, WitnessPolicy};
use proptest::prelude::*;

const ORIGIN: &str = "audit.example/log";

fn log_key() -> NoteSigner {
    NoteSigner::from_seed(ORIGIN, &[5; 32]).unwrap()
}

fn cosigner() -> Cosigner {
    Cosigner::from_seed("witness.example/w1", &[6; 32]).unwrap()
}

fn witness(dir: &std::path::Path) -> Witness {
    Witness::open(
        dir,
        cosigner(),
        [(ORIGIN.to_string(), log_key().verifier())],
    )
    .unwrap()
}

/// A log of `entries` (each a byte string), as a tree.
fn tree(entries: &[Vec<u8>]) -> MemoryTree {
    let mut t = MemoryTree::new();
    for e in entries {
        t.push_leaf_hash(leaf_hash(e));
    }
    t
}

fn signed(t: &MemoryTree, size: u64, key: &NoteSigner) -> String {
    Checkpoint {
        origin: ORIGIN.into(),
        size,
        root: t.root_at(size),
        extensions: Vec::new(),
    }
    .sign(key)
    .unwrap()
}

fn submit(w: &Witness, t: &MemoryTree, old: u64, size: u64) -> Result<String, WitnessError> {
    let request = AddCheckpoint {
        old_size: old,
        proof: if old == 0 {
            Vec::new()
        } else {
            t.prove_consistency(old, size)
        },
        checkpoint: signed(t, size, &log_key()),
    };
    w.add_checkpoint(request.to_body().as_bytes())
}

fn entries(n: u64, tag: &str) -> Vec<Vec<u8>> {
    (0..n).map(|i| format!("{tag} {i}").into_bytes()).collect()
}

#[test]
fn cosigns_consistent_extensions_and_the_cosignature_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let w = witness(dir.path());
    let t = tree(&entries(20, "e"));
    let line = submit(&w, &t, 0, 7).unwrap();
    let note = format!("{}{line}", signed(&t, 7, &log_key()));
    let policy = WitnessPolicy {
        witnesses: vec![cosigner().verifier()],
        quorum: 1,
    };
    policy.verify(&note, &log_key().verifier()).unwrap();
    submit(&w, &t, 7, 20).unwrap();
    assert_eq!(w.latest(ORIGIN), Some((20, t.root_at(20))));
    // The same checkpoint again is cosigned again (a fresh timestamp).
    submit(&w, &t, 20, 20).unwrap();
}

#[test]
fn refuses_stale_inconsistent_and_second_roots() {
    let dir = tempfile::tempdir().unwrap();
    let w = witness(dir.path());
    let t = tree(&entries(30, "e"));
    submit(&w, &t, 0, 10).unwrap();
    // A stale old size: 409 with the latest size.
    let e = submit(&w, &t, 0, 12).unwrap_err();
    assert_eq!(
        e,
        WitnessError::Conflict {
            latest: 10,
            fork: false
        }
    );
    assert_eq!(e.status(), 409);
    // A smaller tree than cosigned: refused as a rollback, and kept as evidence.
    let e = submit(&w, &t, 0, 5).unwrap_err();
    assert_eq!(e.status(), 409);
    assert!(e.is_misbehaviour());
    // A rewritten history of a larger size: the proof fails (422).
    let mut rewritten = entries(30, "e");
    rewritten[3] = b"edited".to_vec();
    let r = tree(&rewritten);
    let request = AddCheckpoint {
        old_size: 10,
        proof: r.prove_consistency(10, 25),
        checkpoint: signed(&r, 25, &log_key()),
    };
    let e = w.add_checkpoint(request.to_body().as_bytes()).unwrap_err();
    assert!(matches!(e, WitnessError::Inconsistent { .. }), "{e}");
    assert_eq!(e.status(), 422);
    assert!(e.is_misbehaviour());
    // A second root for size 10: a fork.
    let e = submit(&w, &r, 10, 10).unwrap_err();
    assert_eq!(
        e,
        WitnessError::Conflict {
            latest: 10,
            fork: true
        }
    );
    assert!(w.evidence().len() >= 3, "{:?}", w.evidence());
    // Nothing moved: the honest log goes on.
    assert_eq!(w.latest(ORIGIN), Some((10, t.root_at(10))));
    submit(&w, &t, 10, 30).unwrap();
}

#[test]
fn refuses_unknown_logs_foreign_signatures_and_malformed_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let w = witness(dir.path());
    let t = tree(&entries(4, "e"));
    let stranger = NoteSigner::from_seed(ORIGIN, &[9; 32]).unwrap();
    let forged = AddCheckpoint {
        old_size: 0,
        proof: Vec::new(),
        checkpoint: signed(&t, 4, &stranger),
    };
    assert_eq!(
        w.add_checkpoint(forged.to_body().as_bytes())
            .unwrap_err()
            .status(),
        403
    );
    let other_log = NoteSigner::from_seed("other.example/log", &[5; 32]).unwrap();
    let unknown = Checkpoint {
        origin: "other.example/log".into(),
        size: 1,
        root: t.root_at(1),
        extensions: Vec::new(),
    }
    .sign(&other_log)
    .unwrap();
    let body = format!("old 0\n\n{unknown}");
    assert_eq!(w.add_checkpoint(body.as_bytes()).unwrap_err().status(), 404);
    let good = signed(&t, 4, &log_key());
    for bad in [
        format!("old 01\n\n{good}"),
        format!("old 5\n\n{good}"),
        format!("old x\n\n{good}"),
        format!("old 0\nnot-base64!\n\n{good}"),
        format!("old 0\n{good}"),
        "old 0\n\n".to_string(),
        format!("old 0\n{}\n{good}", "AAAA\n".repeat(64)),
    ] {
        let e = w.add_checkpoint(bad.as_bytes()).unwrap_err();
        assert_eq!(e.status(), 400, "{bad:?}: {e}");
    }
    assert!(w
        .add_checkpoint(&[0xff, 0xfe, b'\n', b'\n'])
        .is_err_and(|e| e.status() == 400));
    assert_eq!(w.latest(ORIGIN), None);
}

#[test]
fn state_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let t = tree(&entries(16, "e"));
    {
        let w = witness(dir.path());
        submit(&w, &t, 0, 9).unwrap();
    }
    let w = witness(dir.path());
    assert_eq!(w.latest(ORIGIN), Some((9, t.root_at(9))));
    let mut rewritten = entries(16, "e");
    rewritten[0] = b"x".to_vec();
    assert!(submit(&w, &tree(&rewritten), 9, 9).is_err());
    submit(&w, &t, 9, 16).unwrap();
    // A state file edited behind the witness's back is refused at open.
    let file = std::fs::read_dir(dir.path().join("state"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text.replace("\n16\n", "\n15\n")).unwrap();
    assert!(Witness::open(
        dir.path(),
        cosigner(),
        [(ORIGIN.to_string(), log_key().verifier())]
    )
    .is_err());
}

#[test]
fn cosignatures_carry_the_c2sp_key_id_and_timestamp() {
    let dir = tempfile::tempdir().unwrap();
    let w = witness(dir.path());
    let t = tree(&entries(3, "e"));
    let line = submit(&w, &t, 0, 3).unwrap();
    let note = SignedNote::parse(&format!("{}{line}", signed(&t, 3, &log_key()))).unwrap();
    let (name, id, raw) = &note.signatures[1];
    assert_eq!(name, "witness.example/w1");
    // key id = SHA-256(name ‖ "\n" ‖ 0x04 ‖ key)[..4]; 8-byte timestamp; 64-byte signature.
    let vkey = cosigner().verifier().to_string();
    assert_eq!(&hex::encode(id), vkey.split('+').nth(1).unwrap());
    assert_eq!(raw.len(), 72);
    let time = u64::from_be_bytes(raw[..8].try_into().unwrap());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(time <= now && now - time < 60);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Whatever sequence of honest and forged submissions arrives, the
    /// witness never cosigns two different roots for one size, never a
    /// smaller tree after a larger one, and every tree it cosigns extends
    /// the one before.
    #[test]
    fn never_cosigns_a_fork(
        steps in proptest::collection::vec((0u64..40, any::<bool>(), any::<bool>()), 1..24)
    ) {
        let dir = tempfile::tempdir().unwrap();
        let w = witness(dir.path());
        let honest = tree(&entries(40, "e"));
        let mut forked_entries = entries(40, "e");
        forked_entries[2] = b"forged".to_vec();
        let forked = tree(&forked_entries);
        let mut cosigned: Vec<(u64, [u8; 32])> = Vec::new();
        for (size, fork, stale) in steps {
            let t = if fork { &forked } else { &honest };
            let latest = w.latest(ORIGIN).map_or(0, |(s, _)| s);
            let old = if stale { latest.saturating_sub(1) } else { latest };
            if old > size {
                continue;
            }
            if submit(&w, t, old, size).is_ok() {
                cosigned.push((size, t.root_at(size)));
            }
        }
        for pair in cosigned.windows(2) {
            let ((a, ra), (b, rb)) = (pair[0], pair[1]);
            prop_assert!(a <= b);
            if a == b {
                prop_assert_eq!(ra, rb);
            }
        }
        // All cosigned roots come from one history.
        let first_tree_is_forked = cosigned
            .iter()
            .find(|(s, _)| *s > 2)
            .is_some_and(|(s, r)| *r == forked.root_at(*s));
        let t = if first_tree_is_forked { &forked } else { &honest };
        for (s, r) in &cosigned {
            prop_assert_eq!(*r, t.root_at(*s));
        }
    }
}
