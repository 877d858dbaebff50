//! Mutual TLS and signed requests end to end on localhost: a client without a
//! certificate never reaches a handler; signed requests are accepted once;
//! tampered or replayed ones are refused.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use asclepios_net::client::SignedClient;
use asclepios_net::pki::CertificateAuthority;
use asclepios_net::server::{self, Caller, SignatureCheck};
use asclepios_net::signature::Verified;
use asclepios_net::tls;
use axum::routing::post;
use axum::{Extension, Router};
use reqwest::Method;

async fn echo(
    Extension(Caller(who)): Extension<Caller>,
    Extension(v): Extension<Verified>,
    Extension(handled): Extension<Arc<AtomicUsize>>,
    body: String,
) -> String {
    handled.fetch_add(1, Ordering::SeqCst);
    format!(
        "{} signed {} bytes with nonce {}",
        who.id,
        body.len(),
        v.nonce
    )
}

struct Deployment {
    ca: CertificateAuthority,
    base: String,
    handled: Arc<AtomicUsize>,
}

async fn start() -> Deployment {
    let ca = CertificateAuthority::generate("test CA").unwrap();
    let server_cert = ca
        .issue_server("records", &["records.test", "localhost", "127.0.0.1"])
        .unwrap();
    let config =
        tls::server_config(&ca.cert_pem(), &server_cert.cert_pem, &server_cert.key_pem).unwrap();
    let check = SignatureCheck::in_memory("records.test", 1024);
    let handled = Arc::new(AtomicUsize::new(0));
    let app = Router::new()
        .route("/echo", post(echo))
        .layer(axum::middleware::from_fn_with_state(
            check,
            server::require_signature,
        ))
        .layer(Extension(handled.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!(
        "https://localhost:{}",
        listener.local_addr().unwrap().port()
    );
    tokio::spawn(server::serve(listener, config, app, std::future::pending()));
    Deployment { ca, base, handled }
}

fn client(d: &Deployment, id: &str) -> SignedClient {
    let issued = d.ca.issue_identity(id).unwrap();
    SignedClient::new(
        &d.base,
        "records.test",
        id,
        &d.ca.cert_pem(),
        &issued.cert_pem,
        &issued.key_pem,
    )
    .unwrap()
}

#[tokio::test]
async fn signed_requests_over_mutual_tls() {
    let d = start().await;
    let alice = client(&d, "alice");
    let r = alice
        .send(Method::POST, "/echo", b"hello".to_vec())
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().starts_with("alice signed 5 bytes"));
    // Over the limit: 413 with a JSON error, never reaching the handler.
    let r = alice
        .send(Method::POST, "/echo", vec![b'x'; 4096])
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert!(r.text().await.unwrap().contains("\"error\""));
}

#[tokio::test]
async fn unsigned_tampered_and_replayed_requests_are_refused() {
    let d = start().await;
    let issued = d.ca.issue_identity("bob").unwrap();
    let tls = tls::client_config(&d.ca.cert_pem(), &issued.cert_pem, &issued.key_pem).unwrap();
    let http = reqwest::Client::builder()
        .use_preconfigured_tls((*tls).clone())
        .build()
        .unwrap();
    let url = format!("{}/echo", d.base);
    let r = http.post(&url).body("x").send().await.unwrap();
    assert_eq!(r.status(), 401, "unsigned");
    let signer = asclepios_net::signature::RequestSigner::from_pem("bob", &issued.key_pem).unwrap();
    let h = signer
        .sign(
            "POST",
            "records.test",
            "/echo",
            b"pay 10",
            server::unix_now(),
            "n-1",
        )
        .unwrap();
    let send = |body: &'static str| {
        http.post(&url)
            .header("content-digest", &h.content_digest)
            .header("signature-input", &h.signature_input)
            .header("signature", &h.signature)
            .body(body)
            .send()
    };
    assert_eq!(send("pay 99").await.unwrap().status(), 401, "tampered body");
    assert_eq!(
        send("pay 10").await.unwrap().status(),
        200,
        "first delivery"
    );
    let replay = send("pay 10").await.unwrap();
    assert_eq!(replay.status(), 401, "replay");
    assert!(replay.text().await.unwrap().contains("replay"));
    // Signed for another service (same CA, same host): refused here.
    let elsewhere = signer
        .sign(
            "POST",
            "authority.test",
            "/echo",
            b"pay 10",
            server::unix_now(),
            "n-3",
        )
        .unwrap();
    let r = http
        .post(&url)
        .header("content-digest", elsewhere.content_digest)
        .header("signature-input", elsewhere.signature_input)
        .header("signature", elsewhere.signature)
        .body("pay 10")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "a request signed for another service");
    // Signed by someone else's key for bob's certificate.
    let mallory = d.ca.issue_identity("mallory").unwrap();
    let other = asclepios_net::signature::RequestSigner::from_pem("bob", &mallory.key_pem).unwrap();
    let h2 = other
        .sign(
            "POST",
            "records.test",
            "/echo",
            b"x",
            server::unix_now(),
            "n-2",
        )
        .unwrap();
    let r = http
        .post(&url)
        .header("content-digest", h2.content_digest)
        .header("signature-input", h2.signature_input)
        .header("signature", h2.signature)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "wrong key");
}

#[tokio::test]
async fn a_client_without_a_certificate_never_reaches_a_handler() {
    let d = start().await;
    let anonymous = tls::anonymous_client_config(&d.ca.cert_pem()).unwrap();
    let http = reqwest::Client::builder()
        .use_preconfigured_tls((*anonymous).clone())
        .build()
        .unwrap();
    assert!(http
        .post(format!("{}/echo", d.base))
        .body("x")
        .send()
        .await
        .is_err());
    // A certificate from another CA is refused as well.
    let rogue = CertificateAuthority::generate("rogue").unwrap();
    let cert = rogue.issue_identity("alice").unwrap();
    let tls = tls::client_config(&d.ca.cert_pem(), &cert.cert_pem, &cert.key_pem).unwrap();
    let http = reqwest::Client::builder()
        .use_preconfigured_tls((*tls).clone())
        .build()
        .unwrap();
    assert!(http
        .post(format!("{}/echo", d.base))
        .body("x")
        .send()
        .await
        .is_err());
    assert_eq!(d.handled.load(Ordering::SeqCst), 0);
}

/// The key authority's chain (deployment CA, then its name-constrained
/// issuer, then a short-lived leaf) as OpenSSL verifies it, like the
/// OpenSSL-based clients (curl, Python) that talk to a deployment. rustls
/// accepted a root limited to path length 0 above the issuer and a leaf
/// named like its issuer; OpenSSL refuses both.
#[test]
fn the_authority_chain_verifies_with_openssl() {
    use asclepios_net::pki::ServiceKey;
    let ca = CertificateAuthority::generate("test CA").unwrap();
    let issued = ca
        .issue_service_issuer("asclepios authority", &["localhost"])
        .unwrap();
    let issuer = CertificateAuthority::from_pem(&issued.cert_pem, &issued.key_pem).unwrap();
    let leaf = issuer
        .issue_server_for_key(
            &ServiceKey::generate().unwrap(),
            "asclepios authority TLS",
            &["localhost"],
            3600,
            None,
        )
        .unwrap();
    let out = openssl_verify(&ca.cert_pem(), &issued.cert_pem, "sslserver", &leaf);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `openssl verify` of `leaf` for `purpose` against the root `ca`, with
/// `issuer` offered as an intermediate.
fn openssl_verify(ca: &str, issuer: &str, purpose: &str, leaf: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str, pem: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, pem).unwrap();
        p
    };
    std::process::Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(path("ca.pem", ca))
        .arg("-untrusted")
        .arg(path("issuer.pem", issuer))
        .args(["-purpose", purpose])
        .arg(path("leaf.pem", leaf))
        .output()
        .expect("the openssl command (Debian package openssl)")
}

/// A client certificate the server accepts, or `false` if the handshake (or
/// the request) fails.
async fn reaches(d: &Deployment, chain_pem: &str, key_pem: &str, id: &str) -> bool {
    let tls = tls::client_config(&d.ca.cert_pem(), chain_pem, key_pem).unwrap();
    SignedClient::with_tls(&d.base, "records.test", id, tls, key_pem)
        .unwrap()
        .send(Method::POST, "/echo", b"x".to_vec())
        .await
        .is_ok_and(|r| r.status() == 200)
}

/// The key authority's issuer is a CA below the root whose key is online
/// (it renews the attested TLS certificate). Its holder mints a client
/// certificate for a patient: refused with the issuer in the chain and
/// without; by the direct-issuance rule and by webpki's own checks (the
/// issuer's serverAuth-only EKU and excluded URI subtree) each on its own;
/// and by OpenSSL.
#[tokio::test]
async fn an_identity_minted_with_the_authority_issuer_key_is_refused() {
    let d = start().await;
    let issued =
        d.ca.issue_service_issuer("asclepios authority", &["authority.test", "127.0.0.1"])
            .unwrap();
    let issuer = CertificateAuthority::from_pem(&issued.cert_pem, &issued.key_pem).unwrap();
    let forged = issuer.issue_identity("pat-00000").unwrap();
    let with_issuer = format!("{}{}", forged.cert_pem, issued.cert_pem);
    assert!(!reaches(&d, &with_issuer, &forged.key_pem, "pat-00000").await);
    assert!(!reaches(&d, &forged.cert_pem, &forged.key_pem, "pat-00000").await);
    assert_eq!(d.handled.load(Ordering::SeqCst), 0);
    let honest = d.ca.issue_identity("pat-00000").unwrap();
    assert!(reaches(&d, &honest.cert_pem, &honest.key_pem, "pat-00000").await);

    // Each layer alone: webpki's own client verifier (EKU and name
    // constraints, without the direct-issuance rule) refuses the chain too.
    let der = |pem: &str| tls::certs_from_pem(pem).unwrap().remove(0);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der(&d.ca.cert_pem())).unwrap();
    let webpki = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
    )
    .build()
    .unwrap();
    let now = rustls_pki_types::UnixTime::now();
    assert!(webpki
        .verify_client_cert(&der(&forged.cert_pem), &[der(&issued.cert_pem)], now)
        .is_err());
    assert!(webpki
        .verify_client_cert(&der(&honest.cert_pem), &[], now)
        .is_ok());
    let direct = tls::DirectlyIssuedClients::new(&d.ca.cert_pem()).unwrap();
    use rustls::server::danger::ClientCertVerifier;
    assert!(direct
        .verify_client_cert(&der(&honest.cert_pem), &[der(&issued.cert_pem)], now)
        .is_err());
    // The root sent along (as OpenSSL-based clients do) is not an
    // intermediate: accepted.
    assert!(direct
        .verify_client_cert(&der(&honest.cert_pem), &[der(&d.ca.cert_pem())], now)
        .is_ok());
    let out = openssl_verify(
        &d.ca.cert_pem(),
        &issued.cert_pem,
        "sslclient",
        &forged.cert_pem,
    );
    assert!(
        !out.status.success(),
        "OpenSSL accepted an identity minted by the authority's issuer"
    );
}

/// A client that means one service checks the certificate against that
/// service's TLS name, whatever address it dials: the record service's
/// certificate (same CA, same addresses) does not pass for the authority.
#[tokio::test]
async fn a_client_pinned_to_one_service_refuses_another() {
    let d = start().await;
    let alice = d.ca.issue_identity("alice").unwrap();
    let over = |name: &str| {
        let verifier = tls::pinned_server_verifier(&d.ca.cert_pem(), name).unwrap();
        let tls =
            tls::client_config_with_verifier(verifier, &alice.cert_pem, &alice.key_pem).unwrap();
        SignedClient::with_tls(&d.base, "records.test", "alice", tls, &alice.key_pem).unwrap()
    };
    let records = over("records.test")
        .send(Method::POST, "/echo", b"x".to_vec())
        .await
        .unwrap();
    assert_eq!(records.status(), 200);
    assert!(over("authority.test")
        .send(Method::POST, "/echo", b"x".to_vec())
        .await
        .is_err());
    assert_eq!(d.handled.load(Ordering::SeqCst), 1);
}
