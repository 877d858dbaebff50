//! Policy text: canonical print and re-parse. The property is documented on
//! `asclepios_fuzz_targets::policy_parse`, which the default test run also replays.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| asclepios_fuzz_targets::policy_parse(data));
