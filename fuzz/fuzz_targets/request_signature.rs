//! RFC 9421 signature headers. The property is documented on
//! `asclepios_fuzz_targets::request_signature`, which the default test run also replays.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| asclepios_fuzz_targets::request_signature(data));
