//! Remote attestation: what appraising evidence costs.
//!
//! * `dcap-appraise`: our whole appraisal of an Intel sample quote in its
//!   envelope (decode, collateral JSON, dcap-qvl's chain and signature
//!   checks, binding, reference values) next to dcap-qvl's bare `verify`
//!   on the same quote with collateral already parsed (the peer).
//! * `ratls-verify`: a client's certificate check of an attested authority
//!   certificate (chain, then the insecure-software evidence against the
//!   leaf key and policy) next to the chain check alone (the floor).

use asclepios_attest::dcap;
use asclepios_attest::evidence::{Binding, Body, Evidence, Freshness, Quote};
use asclepios_attest::policy::{appraise, Expected, Policy};
use asclepios_attest::ratls::{self, AttestingVerifier};
use asclepios_attest::software;
use asclepios_net::pki::{CertificateAuthority, ServiceKey};
use asclepios_net::tls::{certs_from_pem, server_verifier};
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{ServerName, UnixTime};
use serde_json::{json, Value};

use crate::timing::{self, Budget};

const SAMPLES: [(&str, &[u8], &str); 2] = [
    (
        "sgx",
        include_bytes!("../../crates/attest/tests/data/dcap-qvl/sgx_quote"),
        include_str!("../../crates/attest/tests/data/dcap-qvl/sgx_quote_collateral.json"),
    ),
    (
        "tdx",
        include_bytes!("../../crates/attest/tests/data/dcap-qvl/tdx_quote"),
        include_str!("../../crates/attest/tests/data/dcap-qvl/tdx_quote_collateral.json"),
    ),
];

/// Inside the samples' collateral validity window (2025-07-01).
const AT: u64 = 1_751_328_000;

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Runs the suite.
pub fn run(_quick: bool, budget: Budget) -> anyhow::Result<Vec<Value>> {
    let mut rows = Vec::new();
    for (name, quote, collateral_json) in SAMPLES {
        let collateral = dcap::parse_collateral(collateral_json)?;
        let q = Quote {
            quote: quote.to_vec(),
            collateral: Some(collateral_json.to_string()),
        };
        let evidence = Evidence {
            freshness: Freshness::IssuedAt(AT),
            body: if name == "sgx" {
                Body::SgxDcap(q)
            } else {
                Body::TdxDcap(q)
            },
        }
        .to_bytes();
        let policy = Policy::from_toml(
            "formats = [\"sgx-dcap\", \"tdx-dcap\"]\nmin_tcb_status = \"OutOfDate\"\n",
        )?;
        let expected = Expected {
            key_sha256: Some([0; 32]),
            nonce: None,
        };
        let mut ours = || {
            let a = appraise(&evidence, &expected, &policy, AT, None);
            // The sample binds another key, so it is refused, after every check ran.
            assert!(a.claims.is_some(), "{a}");
            std::hint::black_box(a);
        };
        let mut peer = || {
            let r = dcap_qvl::verify::verify(quote, &collateral, AT).expect("sample verifies");
            std::hint::black_box(r);
        };
        let us = timing::interleaved(budget, &mut [&mut ours, &mut peer]);
        rows.push(json!({
            "suite": "attest", "op": "dcap-appraise", "quote": name,
            "ours_us": round(us[0]), "peer": "dcap-qvl", "peer_us": round(us[1]),
            "speedup": round(us[1] / us[0]),
        }));
    }

    // An attested certificate chain as the authority serves it.
    let ca = CertificateAuthority::generate("bench CA")?;
    let issued = ca.issue_service_issuer("authority", &["localhost"])?;
    let issuer = CertificateAuthority::from_pem(&issued.cert_pem, &issued.key_pem)?;
    let key = ServiceKey::generate()?;
    let dev = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let now = asclepios_attest::unix_now();
    let e = software::sign(
        &dev,
        [1; 32],
        [2; 32],
        &Binding::new(&key.spki_der(), Freshness::IssuedAt(now)),
    );
    let leaf = issuer.issue_server_for_key(
        &key,
        "authority",
        &["localhost"],
        3600,
        Some((&ratls::CMW_EXTENSION_OID[..], ratls::extension_value(&e))),
    )?;
    let chain = certs_from_pem(&format!("{leaf}{}", issued.cert_pem))?;
    let policy = Policy::from_toml(&format!(
        "formats = [\"insecure-software\"]\n[[reference]]\nformat = \"insecure-software\"\n\
         measurement = \"{}\"\nsigner = \"{}\"\n",
        hex::encode(software::measurement(&[1; 32], &[2; 32])),
        hex::encode(dev.verifying_key().to_bytes())
    ))?;
    let chain_only = server_verifier(&ca.cert_pem())?;
    let attesting = AttestingVerifier::new(chain_only.clone(), policy, true);
    let name = ServerName::try_from("localhost")?;
    let check = |v: &dyn ServerCertVerifier| {
        v.verify_server_cert(&chain[0], &chain[1..], &name, &[], UnixTime::now())
            .expect("the chain verifies");
    };
    let mut ours = || check(&attesting);
    let mut floor = || check(chain_only.as_ref());
    let us = timing::interleaved(budget, &mut [&mut ours, &mut floor]);
    rows.push(json!({
        "suite": "attest", "op": "ratls-verify", "format": "insecure-software",
        "ours_us": round(us[0]), "floor_us": round(us[1]),
        "ratio": round(us[0] / us[1]),
    }));
    Ok(rows)
}
