//! Attestation evidence on arbitrary bytes: the evidence envelope, the
//! RA-TLS certificate extension (through a whole certificate parse), the
//! appraisal, and Intel DCAP quotes against real collateral all give typed
//! errors or contraindicated verdicts, never a panic; an envelope that
//! decodes re-encodes the same. Seed with the sample quotes:
//! `cp crates/attest/tests/data/dcap-qvl/*_quote fuzz/corpus/attest_decoders/`.
#![no_main]

use std::sync::OnceLock;

use asclepios_attest::dcap;
use asclepios_attest::policy::{appraise, Expected, Policy};
use asclepios_attest::{ratls, Evidence, Format};
use libfuzzer_sys::fuzz_target;

/// Inside the sample collateral's validity window.
const AT: u64 = 1_751_328_000;

fn collateral() -> &'static dcap_qvl::QuoteCollateralV3 {
    static C: OnceLock<dcap_qvl::QuoteCollateralV3> = OnceLock::new();
    C.get_or_init(|| {
        dcap::parse_collateral(include_str!(
            "../../crates/attest/tests/data/dcap-qvl/sgx_quote_collateral.json"
        ))
        .expect("sample collateral")
    })
}

fn policy() -> &'static Policy {
    static P: OnceLock<Policy> = OnceLock::new();
    P.get_or_init(|| {
        Policy::from_toml(
            "formats = [\"sgx-dcap\", \"tdx-dcap\", \"insecure-software\"]\nallow_debug = true\n",
        )
        .expect("policy")
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(e) = Evidence::from_bytes(data) {
        assert_eq!(e.to_bytes(), data);
    }
    let _ = ratls::evidence_from_certificate(data);
    let expected = Expected {
        key_sha256: Some([0; 32]),
        nonce: None,
    };
    let _ = appraise(data, &expected, policy(), AT, None);
    for format in [Format::SgxDcap, Format::TdxDcap] {
        let _ = dcap::verify(data, format, collateral(), AT, true);
    }
});
