//! RA-TLS: the attesting verifier over real certificate chains (deployment
//! CA -> the service's name-constrained issuer -> a leaf with evidence in
//! `id-pe-cmw`), the way a client meets the key authority.

use asclepios_attest::evidence::{Binding, Freshness};
use asclepios_attest::policy::{appraise, Expected, Policy, Trust};
use asclepios_attest::ratls::{self, AttestingVerifier};
use asclepios_attest::software;
use asclepios_net::pki::{CertificateAuthority, ServiceKey};
use asclepios_net::tls::{certs_from_pem, server_verifier};
use ed25519_dalek::SigningKey;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{ServerName, UnixTime};

const BINARY: [u8; 32] = [0x11; 32];
const CONFIG: [u8; 32] = [0x22; 32];

struct Deployment {
    ca_pem: String,
    issuer: CertificateAuthority,
    issuer_pem: String,
    dev: SigningKey,
}

fn deployment() -> Deployment {
    let ca = CertificateAuthority::generate("test CA").unwrap();
    let issued = ca
        .issue_service_issuer("authority", &["localhost", "127.0.0.1"])
        .unwrap();
    Deployment {
        ca_pem: ca.cert_pem(),
        issuer: CertificateAuthority::from_pem(&issued.cert_pem, &issued.key_pem).unwrap(),
        issuer_pem: issued.cert_pem,
        dev: SigningKey::from_bytes(&[9; 32]),
    }
}

fn dev_policy(d: &Deployment) -> Policy {
    Policy::from_toml(&format!(
        "formats = [\"insecure-software\"]\nmax_evidence_age_seconds = 3600\n\
         [[reference]]\nname = \"dev build\"\nformat = \"insecure-software\"\n\
         measurement = \"{}\"\nsigner = \"{}\"\n",
        hex::encode(software::measurement(&BINARY, &CONFIG)),
        hex::encode(d.dev.verifying_key().to_bytes())
    ))
    .unwrap()
}

/// A leaf for `key` carrying evidence that binds `bound` (the SPKI the
/// evidence names) issued at `issued_at`.
fn leaf(d: &Deployment, key: &ServiceKey, bound: Option<&[u8]>, issued_at: u64) -> String {
    let extension = bound.map(|spki| {
        let e = software::sign(
            &d.dev,
            BINARY,
            CONFIG,
            &Binding::new(spki, Freshness::IssuedAt(issued_at)),
        );
        (&ratls::CMW_EXTENSION_OID[..], ratls::extension_value(&e))
    });
    let leaf = d
        .issuer
        .issue_server_for_key(key, "authority", &["localhost"], 3600, extension)
        .unwrap();
    format!("{leaf}{}", d.issuer_pem)
}

fn check(
    d: &Deployment,
    chain_pem: &str,
    policy: Policy,
    require: bool,
) -> (Result<(), String>, Option<ratls::Seen>) {
    let verifier = AttestingVerifier::new(server_verifier(&d.ca_pem).unwrap(), policy, require);
    let chain = certs_from_pem(chain_pem).unwrap();
    let result = verifier
        .verify_server_cert(
            &chain[0],
            &chain[1..],
            &ServerName::try_from("localhost").unwrap(),
            &[],
            UnixTime::now(),
        )
        .map(|_| ())
        .map_err(|e| e.to_string());
    (result, verifier.last())
}

fn now() -> u64 {
    asclepios_attest::unix_now()
}

#[test]
fn evidence_bound_to_the_certificate_key_is_accepted_as_a_warning() {
    let d = deployment();
    let key = ServiceKey::generate().unwrap();
    let chain = leaf(&d, &key, Some(&key.spki_der()), now());
    let (result, seen) = check(&d, &chain, dev_policy(&d), true);
    result.unwrap();
    let seen = seen.unwrap();
    // Development evidence is never better than a warning.
    assert_eq!(seen.appraisal.trust, Trust::Warning, "{}", seen.appraisal);
    assert_eq!(seen.appraisal.reference.as_deref(), Some("dev build"));
    assert!(seen.appraisal.warnings[0].contains("insecure-software"));
}

#[test]
fn a_tls_key_that_does_not_match_the_evidence_is_refused() {
    let d = deployment();
    let key = ServiceKey::generate().unwrap();
    let other = ServiceKey::generate().unwrap();
    let chain = leaf(&d, &key, Some(&other.spki_der()), now());
    let (result, seen) = check(&d, &chain, dev_policy(&d), true);
    let e = result.unwrap_err();
    assert!(e.contains("another TLS key"), "{e}");
    assert_eq!(seen.unwrap().appraisal.trust, Trust::Contraindicated);
}

#[test]
fn stale_missing_and_insecure_evidence_is_refused() {
    let d = deployment();
    let key = ServiceKey::generate().unwrap();
    let spki = key.spki_der();

    let stale = leaf(&d, &key, Some(&spki), now() - 7200);
    let e = check(&d, &stale, dev_policy(&d), true).0.unwrap_err();
    assert!(e.contains("s old"), "{e}");

    let future = leaf(&d, &key, Some(&spki), now() + 7200);
    let e = check(&d, &future, dev_policy(&d), true).0.unwrap_err();
    assert!(e.contains("future"), "{e}");

    let bare = leaf(&d, &key, None, now());
    let e = check(&d, &bare, dev_policy(&d), true).0.unwrap_err();
    assert!(e.contains("no attestation evidence"), "{e}");
    // Not required: the handshake goes on, the verdict is kept for the caller.
    let (ok, seen) = check(&d, &bare, dev_policy(&d), false);
    ok.unwrap();
    assert_eq!(seen.unwrap().appraisal.trust, Trust::Contraindicated);

    let good = leaf(&d, &key, Some(&spki), now());
    let hardware = Policy::from_toml("formats = [\"sgx-dcap\", \"tdx-dcap\"]\n").unwrap();
    let e = check(&d, &good, hardware, true).0.unwrap_err();
    assert!(e.contains("requires hardware"), "{e}");
}

#[test]
fn the_chain_and_the_issuers_name_constraints_are_checked_first() {
    let d = deployment();
    let key = ServiceKey::generate().unwrap();
    // A leaf the issuer makes for a name outside its constraints.
    let e = software::sign(
        &d.dev,
        BINARY,
        CONFIG,
        &Binding::new(&key.spki_der(), Freshness::IssuedAt(now())),
    );
    let outside = d
        .issuer
        .issue_server_for_key(
            &key,
            "authority",
            &["localhost", "records.example"],
            3600,
            Some((&ratls::CMW_EXTENSION_OID[..], ratls::extension_value(&e))),
        )
        .unwrap();
    let chain = format!("{outside}{}", d.issuer_pem);
    let (result, seen) = check(&d, &chain, dev_policy(&d), true);
    assert!(result.is_err());
    assert!(
        seen.is_none(),
        "nothing is appraised before the chain holds"
    );

    // A chain from another CA is refused whatever its evidence says.
    let other = deployment();
    let chain = leaf(&other, &key, Some(&key.spki_der()), now());
    let (result, seen) = check(&d, &chain, dev_policy(&other), true);
    assert!(result.is_err());
    assert!(seen.is_none());
}

#[test]
fn a_replayed_challenge_answer_is_refused() {
    let d = deployment();
    let key = ServiceKey::generate().unwrap();
    let spki = key.spki_der();
    let answer = software::sign(
        &d.dev,
        BINARY,
        CONFIG,
        &Binding::new(&spki, Freshness::Nonce([1; 32])),
    )
    .to_bytes();
    let key_sha256 = Some(sha256(&spki));
    let fresh = appraise(
        &answer,
        &Expected {
            key_sha256,
            nonce: Some([1; 32]),
        },
        &dev_policy(&d),
        now(),
        None,
    );
    assert_eq!(fresh.trust, Trust::Warning, "{fresh}");
    let replayed = appraise(
        &answer,
        &Expected {
            key_sha256,
            nonce: Some([2; 32]),
        },
        &dev_policy(&d),
        now(),
        None,
    );
    assert_eq!(replayed.trust, Trust::Contraindicated);
    assert!(replayed.problems[0].contains("another nonce"), "{replayed}");
    // Nor does a challenge answer pass for a certificate's evidence.
    let as_certificate = appraise(
        &answer,
        &Expected {
            key_sha256,
            nonce: None,
        },
        &dev_policy(&d),
        now(),
        None,
    );
    assert_eq!(as_certificate.trust, Trust::Contraindicated);
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

#[test]
fn certificates_round_trip_their_evidence() {
    let d = deployment();
    let key = ServiceKey::generate().unwrap();
    let chain = certs_from_pem(&leaf(&d, &key, Some(&key.spki_der()), 5)).unwrap();
    let bytes = ratls::evidence_from_certificate(&chain[0])
        .unwrap()
        .unwrap();
    let e = asclepios_attest::Evidence::from_bytes(&bytes).unwrap();
    assert_eq!(e.freshness, Freshness::IssuedAt(5));
    assert_eq!(ratls::evidence_from_certificate(&chain[1]).unwrap(), None);
}
