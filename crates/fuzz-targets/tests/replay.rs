//! Replays every fuzz target's kept corpus (`fuzz/corpus/<target>`) and
//! crash-regression inputs (`fuzz/regressions/<target>`) through the target's
//! body, without the fuzzer. A target with no kept corpus fails: the corpus
//! is how a fuzz campaign's coverage reaches the default test run.

use std::path::{Path, PathBuf};

use asclepios_fuzz_targets::TARGETS;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

fn replay(name: &str, body: fn(&[u8])) {
    let corpus = inputs(&fuzz_dir().join("corpus").join(name));
    let regressions = inputs(&fuzz_dir().join("regressions").join(name));
    assert!(
        !corpus.is_empty(),
        "no corpus kept for `{name}` under fuzz/corpus/{name}: run `scripts/fuzz.sh` and commit \
         the minimised corpus"
    );
    for path in corpus.iter().chain(&regressions) {
        let data = std::fs::read(path).unwrap();
        let outcome = std::panic::catch_unwind(|| body(&data));
        assert!(
            outcome.is_ok(),
            "`{name}` fails on {} (reproduce with `cargo fuzz run {name} {}`)",
            path.display(),
            path.display()
        );
    }
    eprintln!(
        "{name}: {} corpus and {} regression inputs replayed",
        corpus.len(),
        regressions.len()
    );
}

macro_rules! replay_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                let (name, body) = TARGETS
                    .iter()
                    .find(|(n, _)| *n == stringify!($name))
                    .expect("a target of that name");
                replay(name, *body);
            }
        )*

        /// Every target has its replay test above.
        #[test]
        fn every_target_is_replayed() {
            let replayed = [$(stringify!($name)),*];
            for (name, _) in TARGETS {
                assert!(replayed.contains(name), "`{name}` has no replay test");
            }
        }
    };
}

replay_tests!(
    policy_parse,
    abe_decoders,
    envelope_decoders,
    sse_decoders,
    fe_decoders,
    audit_decoders,
    attest_decoders,
    request_signature,
    http_bodies,
    deid_input,
);

/// The HTTP target's requests pass the signature check and reach the
/// handlers: a well-formed request is answered 200, a forbidden one 403.
#[test]
fn http_requests_reach_the_handlers() {
    use asclepios_fuzz_targets::http::send;
    // Route 18 is GET /v1/identities/{id}; caller 0 is dr-heart.
    assert_eq!(send(b"\x12\x00dr-heart").map(|s| s.as_u16()), Some(200));
    assert_eq!(send(b"\x12\x00nobody").map(|s| s.as_u16()), Some(404));
    // Route 9 is GET /v1/audit/entries: not for a doctor.
    assert_eq!(send(b"\x09\x00start=0").map(|s| s.as_u16()), Some(403));
    // As the auditor (caller 4), it is.
    assert_eq!(send(b"\x09\x04start=0").map(|s| s.as_u16()), Some(200));
}
