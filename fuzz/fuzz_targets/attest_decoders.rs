//! Attestation evidence, RA-TLS certificates, DCAP quotes. The property is documented on
//! `asclepios_fuzz_targets::attest_decoders`, which the default test run also replays.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| asclepios_fuzz_targets::attest_decoders(data));
