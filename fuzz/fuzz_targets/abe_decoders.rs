//! FAME public keys, master keys, user keys and ciphertexts. The property is documented on
//! `asclepios_fuzz_targets::abe_decoders`, which the default test run also replays.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| asclepios_fuzz_targets::abe_decoders(data));
