//! The bodies of the fuzz targets, one function per target.
//!
//! cargo-fuzz (`fuzz/`) wraps each in `fuzz_target!`; the default test run
//! (`tests/replay.rs`) feeds each the corpus and crash-regression inputs kept
//! under `fuzz/corpus/<target>` and `fuzz/regressions/<target>`, so a finding
//! fixed once stays fixed without running the fuzzer.
//!
//! Every target states its property in its doc comment. All of them require
//! typed errors and never a panic; decoders also require that whatever
//! decodes re-encodes to the same bytes.

#![forbid(unsafe_code)]

mod decoders;
pub mod http;
pub use http::http_bodies;

pub use decoders::{
    abe_decoders, attest_decoders, audit_decoders, deid_input, envelope_decoders, fe_decoders,
    policy_parse, request_signature, sse_decoders,
};

/// A fuzz target: its name (the cargo-fuzz binary and corpus directory) and
/// its body.
pub type Target = (&'static str, fn(&[u8]));

/// Every target, in the order `scripts/fuzz.sh` runs them.
pub const TARGETS: &[Target] = &[
    ("policy_parse", policy_parse),
    ("abe_decoders", abe_decoders),
    ("envelope_decoders", envelope_decoders),
    ("sse_decoders", sse_decoders),
    ("fe_decoders", fe_decoders),
    ("audit_decoders", audit_decoders),
    ("attest_decoders", attest_decoders),
    ("request_signature", request_signature),
    ("http_bodies", http_bodies),
    ("deid_input", deid_input),
];
