//! Search tokens, sealed keyword states, index values. The property is documented on
//! `asclepios_fuzz_targets::sse_decoders`, which the default test run also replays.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| asclepios_fuzz_targets::sse_decoders(data));
