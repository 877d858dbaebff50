//! `asclepios log verify-*`: exit 0 when the claim holds, 1 when it does not,
//! 2 on malformed input, one line on stdout.

use std::process::Command;

use asclepios_audit::merkle::{self, MemoryTree};
use asclepios_audit::{Checkpoint, NoteSigner};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;

fn log(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_asclepios"))
        .arg("log")
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1, "one line expected: {stdout:?}");
    (out.status.code().unwrap(), stdout)
}

fn joined(hashes: &[[u8; 32]], enc: fn(&[u8; 32]) -> String) -> String {
    hashes.iter().map(enc).collect::<Vec<_>>().join(",")
}

fn hexed(h: &[u8; 32]) -> String {
    hex::encode(h)
}

fn b64(h: &[u8; 32]) -> String {
    B64.encode(h)
}

fn tree(n: u64) -> MemoryTree {
    let mut t = MemoryTree::new();
    for i in 0..n {
        t.push(format!("e{i}").as_bytes());
    }
    t
}

#[test]
fn inclusion_holds_fails_or_is_malformed() {
    let t = tree(13);
    let leaf = merkle::leaf_hash(b"e6");
    let proof = t.prove_inclusion(6, 13);
    for enc in [hexed as fn(&[u8; 32]) -> String, b64] {
        let (code, line) = log(&[
            "verify-inclusion",
            "--size",
            "13",
            "--index",
            "6",
            "--leaf-hash",
            &enc(&leaf),
            "--root",
            &enc(&t.root()),
            "--proof",
            &joined(&proof, enc),
        ]);
        assert_eq!(code, 0, "{line}");
        assert!(line.starts_with("OK"));
    }
    let (code, line) = log(&[
        "verify-inclusion",
        "--size",
        "13",
        "--index",
        "7",
        "--leaf-hash",
        &hexed(&leaf),
        "--root",
        &hexed(&t.root()),
        "--proof",
        &joined(&proof, hexed),
    ]);
    assert_eq!(code, 1, "{line}");
    assert!(line.starts_with("FAIL"));
    for (flag, value) in [("--size", "-3"), ("--root", "abcd"), ("--proof", "zz,yy")] {
        let mut args = vec![
            "verify-inclusion".to_string(),
            "--size".into(),
            "13".into(),
            "--index".into(),
            "6".into(),
            "--leaf-hash".into(),
            hexed(&leaf),
            "--root".into(),
            hexed(&t.root()),
            "--proof".into(),
            joined(&proof, hexed),
        ];
        let at = args.iter().position(|a| a == flag).unwrap();
        args[at + 1] = value.into();
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, line) = log(&refs);
        assert_eq!(code, 2, "{flag}: {line}");
        assert!(line.starts_with("MALFORMED"));
    }
}

#[test]
fn verifiers_take_sizes_a_real_log_reaches() {
    let size = 1u64 << 63;
    let index = size - 3;
    let leaf = merkle::leaf_hash(b"x");
    let length = 63 + (index >> 63).count_ones() as usize;
    let proof: Vec<[u8; 32]> = (0..length).map(|i| [i as u8; 32]).collect();
    let root = merkle::root_from_inclusion(index, size, &leaf, &proof).unwrap();
    let (code, line) = log(&[
        "verify-inclusion",
        "--size",
        &size.to_string(),
        "--index",
        &index.to_string(),
        "--leaf-hash",
        &b64(&leaf),
        "--root",
        &b64(&root),
        "--proof",
        &joined(&proof, b64),
    ]);
    assert_eq!(code, 0, "{line}");
    // Paths that split at the very top of a tree of more than 2^63 leaves.
    let size = (1u64 << 63) + 1;
    let proof: Vec<[u8; 32]> = (0..64).map(|i| [i as u8; 32]).collect();
    let root = merkle::root_from_inclusion(1, size, &leaf, &proof).unwrap();
    let (code, line) = log(&[
        "verify-inclusion",
        "--size",
        &size.to_string(),
        "--index",
        "1",
        "--leaf-hash",
        &hexed(&leaf),
        "--root",
        &hexed(&root),
        "--proof",
        &joined(&proof, hexed),
    ]);
    assert_eq!(code, 0, "{line}");
    let (code, line) = log(&[
        "verify-consistency",
        "--old-size",
        "1",
        "--old-root",
        &hexed(&leaf),
        "--new-size",
        &size.to_string(),
        "--new-root",
        &hexed(&root),
        "--proof",
        &joined(&proof[1..], hexed),
    ]);
    assert_eq!(code, 1, "{line}");
}

#[test]
fn consistency_holds_or_fails() {
    let t = tree(21);
    let proof = t.prove_consistency(6, 21);
    let args = |old_root: &[u8; 32]| {
        vec![
            "verify-consistency".to_string(),
            "--old-size".into(),
            "6".into(),
            "--old-root".into(),
            hexed(old_root),
            "--new-size".into(),
            "21".into(),
            "--new-root".into(),
            b64(&t.root()),
            "--proof".into(),
            joined(&proof, hexed),
        ]
    };
    let run = |a: Vec<String>| log(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(run(args(&t.root_at(6))).0, 0);
    assert_eq!(run(args(&t.root_at(7))).0, 1);
    let (code, _) = log(&[
        "verify-consistency",
        "--old-size",
        "21",
        "--old-root",
        &hexed(&t.root()),
        "--new-size",
        "21",
        "--new-root",
        &hexed(&t.root()),
        "--proof",
        "",
    ]);
    assert_eq!(code, 0);
}

#[test]
fn checkpoints_verify_against_their_key_only() {
    let dir = tempfile::tempdir().unwrap();
    let signer = NoteSigner::from_seed("log.example", &[5; 32]).unwrap();
    let cp = Checkpoint {
        origin: "log.example/audit".into(),
        size: 99,
        root: [1; 32],
        extensions: vec![],
    };
    let note_path = dir.path().join("checkpoint");
    std::fs::write(&note_path, cp.sign(&signer).unwrap()).unwrap();
    let key_path = dir.path().join("key.pub");
    std::fs::write(&key_path, format!("{}\n", signer.verifier())).unwrap();
    let other_path = dir.path().join("other.pub");
    let other = NoteSigner::from_seed("log.example", &[6; 32]).unwrap();
    std::fs::write(&other_path, other.verifier().to_string()).unwrap();
    let check = |note: &std::path::Path, key: &std::path::Path| {
        log(&[
            "verify-checkpoint",
            "--checkpoint",
            note.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ])
    };
    let (code, line) = check(&note_path, &key_path);
    assert_eq!(code, 0, "{line}");
    assert!(line.contains("size 99"));
    assert_eq!(check(&note_path, &other_path).0, 1);
    let forged = dir.path().join("forged");
    std::fs::write(
        &forged,
        cp.sign(&signer).unwrap().replace("\n99\n", "\n100\n"),
    )
    .unwrap();
    assert_eq!(check(&forged, &key_path).0, 1);
    let garbage = dir.path().join("garbage");
    std::fs::write(&garbage, "not a checkpoint").unwrap();
    assert_eq!(check(&garbage, &key_path).0, 2);
    assert_eq!(check(&note_path, &garbage).0, 2);
    assert_eq!(check(&dir.path().join("missing"), &key_path).0, 2);
}
