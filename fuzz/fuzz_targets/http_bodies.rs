//! Signed HTTP requests with arbitrary paths and bodies against both services. The property is documented on
//! `asclepios_fuzz_targets::http_bodies`, which the default test run also replays.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| asclepios_fuzz_targets::http_bodies(data));
