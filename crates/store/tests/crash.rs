//! Crash safety: a writer process is killed with SIGKILL in the middle of
//! appends; every append it acknowledged must be there afterwards, no batch
//! half-written, and the next checkpoint consistent with the last one it
//! signed. The writer is this test binary re-run as `child_writer`.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use asclepios_audit::log::audit_entries;
use asclepios_audit::{merkle, Checkpoint, Log, NoteSigner};
use asclepios_store::{BackendKind, Store};
use common::Harness;

const BATCH: usize = 8;
const LOCATION_VAR: &str = "ASCLEPIOS_CRASH_STORE";

fn signer() -> NoteSigner {
    NoteSigner::from_seed("crash.asclepios.test", &[9; 32]).unwrap()
}

fn entry(i: u64) -> Vec<u8> {
    format!("crash entry {i}").into_bytes()
}

fn open_at(location: &str) -> Store {
    match location.split_once('|') {
        Some((url, schema)) => Store::open_postgres(url, Some(schema), 2).unwrap(),
        None => Store::open_sqlite(std::path::Path::new(location)).unwrap(),
    }
}

/// The writer: appends batches forever, printing each acknowledged size and
/// each signed checkpoint, until it is killed.
#[test]
#[ignore = "run by crash tests as their child process"]
fn child_writer() {
    let location = std::env::var(LOCATION_VAR).expect("run by the crash tests");
    let log = Log::open(open_at(&location), "main", "crash.asclepios.test", signer()).unwrap();
    let mut out = std::io::stdout().lock();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut next = log.head().0;
    let mut batches = 0;
    while Instant::now() < deadline {
        let entries: Vec<Vec<u8>> = (next..next + BATCH as u64).map(entry).collect();
        let refs: Vec<&[u8]> = entries.iter().map(Vec::as_slice).collect();
        next = log.append(&refs).unwrap().end;
        writeln!(out, "ack {next}").unwrap();
        batches += 1;
        if batches % 5 == 0 {
            writeln!(out, "checkpoint {}", hex::encode(log.checkpoint().unwrap())).unwrap();
        }
        out.flush().unwrap();
    }
}

fn crash_and_recover(h: &Harness) {
    let location = match h {
        Harness::Sqlite { .. } => h.sqlite_path().display().to_string(),
        Harness::Postgres { url, schema } => format!("{url}|{schema}"),
    };
    drop(h.open()); // create the schema before the child races for it
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "child_writer",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(LOCATION_VAR, &location)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut acked = 0u64;
    let mut last_checkpoint = None;
    let mut checkpoints = 0;
    let reader = BufReader::new(child.stdout.take().unwrap());
    for line in reader.lines() {
        let line = line.unwrap();
        if let Some(n) = line.strip_prefix("ack ") {
            acked = n.parse().unwrap();
        } else if let Some(note) = line.strip_prefix("checkpoint ") {
            last_checkpoint = Some(String::from_utf8(hex::decode(note).unwrap()).unwrap());
            checkpoints += 1;
        }
        // Kill mid-stream: the writer is busy with its next append.
        if checkpoints >= 3 && acked >= 200 {
            child.kill().unwrap(); // SIGKILL
            break;
        }
    }
    child.wait().unwrap();
    assert!(
        checkpoints >= 3,
        "the writer stopped early ({acked} acknowledged)"
    );
    let before = Checkpoint::verify(&last_checkpoint.unwrap(), &signer().verifier()).unwrap();

    let log = Log::open(h.open(), "main", "crash.asclepios.test", signer()).unwrap();
    let (size, _) = log.head();
    assert!(size >= acked, "acknowledged {acked}, found {size}");
    assert_eq!(
        size % BATCH as u64,
        0,
        "a batch was half-written: size {size}"
    );
    let stored = log.entries(0..size).unwrap();
    for (i, e) in stored.iter().enumerate() {
        assert_eq!(e, &entry(i as u64), "entry {i}");
    }
    let after_note = log.checkpoint().unwrap();
    let after = Checkpoint::verify(&after_note, &log.verifier()).unwrap();
    let proof = log.prove_consistency(before.size, after.size).unwrap();
    merkle::verify_consistency(before.size, after.size, &before.root, &after.root, &proof).unwrap();
    audit_entries(
        log.store(),
        "main",
        "crash.asclepios.test",
        &after_note,
        &log.verifier(),
    )
    .unwrap();
    eprintln!(
        "{}: killed after {acked} acknowledged; {size} stored; checkpoint {} -> {} consistent",
        h.kind().name(),
        before.size,
        after.size
    );
}

#[test]
fn sqlite_writer_killed_mid_append_loses_nothing_acknowledged() {
    crash_and_recover(&Harness::new(BackendKind::Sqlite));
}

#[test]
fn postgres_writer_killed_mid_append_loses_nothing_acknowledged() {
    crash_and_recover(&Harness::new(BackendKind::Postgres));
}
