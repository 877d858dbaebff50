//! FHIR resources and bundles through de-identification. The property is documented on
//! `asclepios_fuzz_targets::deid_input`, which the default test run also replays.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| asclepios_fuzz_targets::deid_input(data));
