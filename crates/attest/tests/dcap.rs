//! Real Intel DCAP quotes (the samples that ship with dcap-qvl, see
//! `tests/data/dcap-qvl/NOTICE.md`): they verify at a pinned time inside
//! their collateral's validity window, fail outside it, and fail after any
//! single-byte change to the signed quote body, its signature, the
//! attestation key or the QE report that certifies it.

use asclepios_attest::dcap::{parse_collateral, verify};
use asclepios_attest::evidence::{Body, Evidence, Freshness, Quote};
use asclepios_attest::policy::{appraise, Expected, Policy, Trust};
use asclepios_attest::Format;

const SGX_QUOTE: &[u8] = include_bytes!("data/dcap-qvl/sgx_quote");
const SGX_COLLATERAL: &str = include_str!("data/dcap-qvl/sgx_quote_collateral.json");
const TDX_QUOTE: &[u8] = include_bytes!("data/dcap-qvl/tdx_quote");
const TDX_COLLATERAL: &str = include_str!("data/dcap-qvl/tdx_quote_collateral.json");

/// 2025-07-01T00:00:00Z: inside both windows (SGX: TCB info and QE identity
/// issued 2025-06-19T10:56:11Z, PCK CRL next update 2025-07-19T10:23:18Z;
/// TDX: 2025-06-19T10:32:27Z to 2025-07-19T10:00:35Z).
const INSIDE: u64 = 1_751_328_000;
/// 2025-06-01T00:00:00Z: before the collateral was issued.
const BEFORE: u64 = 1_748_736_000;
/// 2025-08-01T00:00:00Z: after its next update was due.
const AFTER: u64 = 1_754_006_400;

/// The signed quote body and the signature data that follows it: the
/// ECDSA signature, the attestation key, the QE report and its signature.
/// Offsets per Intel's quote format (v3 for SGX, v4 for TDX).
fn signed_ranges(format: Format) -> Vec<std::ops::Range<usize>> {
    match format {
        // header 48 + enclave report 384 | length 4 | sig 64, key 64,
        // QE report 384, QE signature 64
        Format::SgxDcap => vec![0..432, 436..1012],
        // header 48 + TD report 584 | length 4 | sig 64, key 64 |
        // certification data type 2 + size 4 | QE report 384, QE signature 64
        Format::TdxDcap => vec![0..632, 636..764, 770..1218],
        Format::InsecureSoftware => unreachable!(),
    }
}

fn samples() -> [(Format, &'static [u8], &'static str); 2] {
    [
        (Format::SgxDcap, SGX_QUOTE, SGX_COLLATERAL),
        (Format::TdxDcap, TDX_QUOTE, TDX_COLLATERAL),
    ]
}

#[test]
fn sample_quotes_verify_inside_their_window_and_fail_outside() {
    for (format, quote, collateral) in samples() {
        let collateral = parse_collateral(collateral).unwrap();
        let claims = verify(quote, format, &collateral, INSIDE, false)
            .unwrap_or_else(|e| panic!("{format:?} at {INSIDE}: {e}"));
        assert_eq!(claims.format, format);
        assert!(!claims.debug);
        match format {
            Format::SgxDcap => {
                assert_eq!(claims.measurement.len(), 32);
                assert_eq!(
                    claims.tcb_status.as_deref(),
                    Some("ConfigurationAndSWHardeningNeeded")
                );
                assert_eq!(claims.advisory_ids, ["INTEL-SA-00289", "INTEL-SA-00615"]);
            }
            _ => {
                assert_eq!(claims.measurement.len(), 48);
                assert_eq!(claims.tcb_status.as_deref(), Some("UpToDate"));
            }
        }
        for t in [BEFORE, AFTER] {
            let e = verify(quote, format, &collateral, t, false).unwrap_err();
            assert!(!e.to_string().is_empty(), "{format:?} at {t}");
        }
        // The other format's name on the envelope is refused.
        let other = if format == Format::SgxDcap {
            Format::TdxDcap
        } else {
            Format::SgxDcap
        };
        let e = verify(quote, other, &collateral, INSIDE, false).unwrap_err();
        assert!(e.to_string().contains("the envelope says"), "{e}");
    }
}

#[test]
fn every_single_byte_change_to_the_signed_parts_fails() {
    for (format, quote, collateral) in samples() {
        let collateral = parse_collateral(collateral).unwrap();
        let mut checked = 0;
        for range in signed_ranges(format) {
            for i in range {
                for flip in [0x01u8, 0xff] {
                    let mut m = quote.to_vec();
                    m[i] ^= flip;
                    assert!(
                        verify(&m, format, &collateral, INSIDE, false).is_err(),
                        "{format:?}: byte {i} ^ {flip:#x} still verifies"
                    );
                    checked += 1;
                }
            }
        }
        // Truncations never verify either (and never panic). The TDX sample
        // ends in 70 bytes of zero padding after the signature data (the
        // attester's buffer), which the quote format does not cover.
        let body = if format == Format::SgxDcap { 432 } else { 632 };
        let signature_data = u32::from_le_bytes(quote[body..body + 4].try_into().unwrap());
        let end = body + 4 + signature_data as usize;
        assert!(end <= quote.len());
        for len in (0..end).step_by(97).chain([end - 1]) {
            assert!(verify(&quote[..len], format, &collateral, INSIDE, false).is_err());
        }
        assert!(checked > 2000, "{checked}");
    }
}

fn sample_evidence(format: Format, quote: &[u8], collateral: &str) -> Vec<u8> {
    let q = Quote {
        quote: quote.to_vec(),
        collateral: Some(collateral.to_string()),
    };
    Evidence {
        freshness: Freshness::IssuedAt(INSIDE),
        body: if format == Format::SgxDcap {
            Body::SgxDcap(q)
        } else {
            Body::TdxDcap(q)
        },
    }
    .to_bytes()
}

#[test]
fn appraisals_of_the_samples_name_every_reason() {
    let collateral = parse_collateral(SGX_COLLATERAL).unwrap();
    let claims = verify(SGX_QUOTE, Format::SgxDcap, &collateral, INSIDE, false).unwrap();
    let evidence = sample_evidence(Format::SgxDcap, SGX_QUOTE, SGX_COLLATERAL);
    let expected = Expected {
        key_sha256: Some(claims.report_data[..32].try_into().unwrap()),
        nonce: None,
    };
    let policy = |min: &str, measurement: &str| {
        Policy::from_toml(&format!(
            "formats = [\"sgx-dcap\"]\nmin_tcb_status = \"{min}\"\n\
             [[reference]]\nname = \"sample enclave\"\nformat = \"sgx-dcap\"\n\
             measurement = \"{measurement}\"\nsigner = \"{}\"\n",
            hex::encode(claims.signer.as_ref().unwrap())
        ))
        .unwrap()
    };
    let measurement = hex::encode(&claims.measurement);

    // The sample's report data is not our binding, so it is refused for that
    // whatever else holds; the TCB status is a warning when the policy
    // accepts it and a second problem when it does not.
    let a = appraise(
        &evidence,
        &expected,
        &policy("ConfigurationAndSWHardeningNeeded", &measurement),
        INSIDE,
        None,
    );
    assert_eq!(a.trust, Trust::Contraindicated);
    assert_eq!(a.problems.len(), 1, "{a}");
    assert!(a.problems[0].contains("freshness"), "{a}");
    assert!(a.warnings[0].contains("INTEL-SA-00289"), "{a}");
    assert_eq!(a.reference.as_deref(), Some("sample enclave"));

    let strict = appraise(
        &evidence,
        &expected,
        &policy("UpToDate", &measurement),
        INSIDE,
        None,
    );
    assert!(
        strict.problems.iter().any(|p| p.contains("TCB status")),
        "{strict}"
    );

    let other = appraise(
        &evidence,
        &expected,
        &policy("UpToDate", &"ab".repeat(32)),
        INSIDE,
        None,
    );
    assert!(
        other.problems.iter().any(|p| p.contains("not among")),
        "{other}"
    );

    // Too late: the collateral has expired, so the chain itself fails.
    let late = appraise(
        &evidence,
        &expected,
        &policy("UpToDate", &measurement),
        AFTER,
        None,
    );
    assert_eq!(late.trust, Trust::Contraindicated);
    assert!(late.claims.is_none(), "{late}");

    // A hardware policy refuses development evidence outright.
    let dev = asclepios_attest::software::sign(
        &ed25519_dalek::SigningKey::from_bytes(&[1; 32]),
        [0; 32],
        [0; 32],
        &asclepios_attest::Binding {
            key_sha256: expected.key_sha256.unwrap(),
            freshness: Freshness::IssuedAt(INSIDE),
        },
    );
    let refused = appraise(
        &dev.to_bytes(),
        &expected,
        &policy("UpToDate", &measurement),
        INSIDE,
        None,
    );
    assert!(
        refused.problems[0].contains("requires hardware"),
        "{refused}"
    );
}
