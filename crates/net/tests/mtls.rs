//! Mutual TLS and signed requests end to end on localhost: a client without a
//! certificate never reaches a handler; signed requests are accepted once;
//! tampered or replayed ones are refused.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use asclepios_net::client::SignedClient;
use asclepios_net::pki::CertificateAuthority;
use asclepios_net::server::{self, Caller, SignatureCheck};
use asclepios_net::signature::{ReplayGuard, Verified};
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
        .issue_server("records", &["localhost", "127.0.0.1"])
        .unwrap();
    let config =
        tls::server_config(&ca.cert_pem(), &server_cert.cert_pem, &server_cert.key_pem).unwrap();
    let check = Arc::new(SignatureCheck {
        replays: ReplayGuard::new(),
        max_body_bytes: 1024,
    });
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
        .sign("POST", "/echo", b"pay 10", server::unix_now(), "n-1")
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
    // Signed by someone else's key for bob's certificate.
    let mallory = d.ca.issue_identity("mallory").unwrap();
    let other = asclepios_net::signature::RequestSigner::from_pem("bob", &mallory.key_pem).unwrap();
    let h2 = other
        .sign("POST", "/echo", b"x", server::unix_now(), "n-2")
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
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str, pem: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, pem).unwrap();
        p
    };
    let out = std::process::Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(path("ca.pem", &ca.cert_pem()))
        .arg("-untrusted")
        .arg(path("issuer.pem", &issued.cert_pem))
        .args(["-purpose", "sslserver"])
        .arg(path("leaf.pem", &leaf))
        .output()
        .expect("the openssl command (Debian package openssl)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
