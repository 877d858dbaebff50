//! Posing as the key authority (review finding H7). The network is
//! untrusted: a party that answers on the authority's address must not make
//! a client seal a record under a policy the authority never gave.
//!
//! * With the record service's certificate (same CA, same addresses), the
//!   client refuses the handshake: it checks the authority's own TLS name.
//! * With a certificate for the authority's name (a stolen leaf, minted here
//!   with the authority's issuer key), an answer signed by any other key is
//!   refused, and so is a correctly signed answer that is not exactly the
//!   policy asked for with versions added.
//!
//! In every case nothing is stored: the policy is checked before sealing.

mod common;

use std::sync::Arc;

use asclepios_authority::{resolution_message, PolicyText, ResolvedPolicy};
use asclepios_client::Client;
use asclepios_deploy::directory::Layout;
use asclepios_net::pki::{CertificateAuthority, ServiceKey};
use asclepios_net::server::{self, SignatureCheck};
use asclepios_net::signature::Verified;
use asclepios_net::tls;
use axum::routing::post;
use axum::{Extension, Json, Router};
use base64::Engine;
use common::*;
use ed25519_dalek::pkcs8::DecodePrivateKey;
use ed25519_dalek::{Signer, SigningKey};

/// How the fake authority widens and signs its answer.
#[derive(Clone)]
struct Fake {
    signer: Arc<SigningKey>,
}

async fn widened(
    Extension(fake): Extension<Fake>,
    Extension(v): Extension<Verified>,
    body: axum::body::Bytes,
) -> Json<ResolvedPolicy> {
    let asked: PolicyText = serde_json::from_slice(&body).unwrap();
    let policy = format!("({}) or role:researcher", asked.policy);
    let signature = fake
        .signer
        .sign(&resolution_message(&v.request_hash, &asked.policy, &policy));
    Json(ResolvedPolicy {
        policy,
        signature: base64::engine::general_purpose::STANDARD.encode(signature.to_bytes()),
    })
}

/// Starts a fake authority over TLS with `cert_pem`/`key_pem`, signing its
/// widened answers with `signer`; returns its URL.
async fn fake_authority(
    dir: &std::path::Path,
    chain_pem: &str,
    key_pem: &str,
    signer: SigningKey,
) -> String {
    let ca = std::fs::read_to_string(Layout::new(dir).ca_cert()).unwrap();
    let config = tls::server_config(&ca, chain_pem, key_pem).unwrap();
    // It answers to the authority's name, as an impostor would.
    let check = SignatureCheck::in_memory(asclepios_deploy::config::AUTHORITY_TLS_NAME, 1 << 16);
    let app = Router::new()
        .route("/v1/policy/resolve", post(widened))
        .layer(axum::middleware::from_fn_with_state(
            check,
            server::require_signature,
        ))
        .layer(Extension(Fake {
            signer: Arc::new(signer),
        }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "https://localhost:{}",
        listener.local_addr().unwrap().port()
    );
    tokio::spawn(server::serve(listener, config, app, std::future::pending()));
    url
}

fn victim(d: &Deployment, authority: &str) -> Client {
    Client::connect(&d.dir, "dr-heart", authority, &d.records_url).unwrap()
}

async fn try_put(client: &Client) -> Result<(), String> {
    let resource = serde_json::json!({
        "resourceType": "Condition", "id": "cond-secret-1",
        "subject": {"reference": "Patient/pat-00000"},
        "note": [{"text": "psychiatric note: confidential"}]
    });
    client
        .put_record(
            "pat-00000",
            // (An opaque id fixed here: the attack is on the policy.)
            "r33333333333333333333333333333333",
            1,
            &resource,
            "patient:pat-00000 or care-team:pat-00000 or emergency:pat-00000",
        )
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn key(path: &std::path::Path) -> (String, SigningKey) {
    let pem = std::fs::read_to_string(path).unwrap();
    let signing = SigningKey::from_pkcs8_pem(&pem).unwrap();
    (pem, signing)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_party_but_the_authority_resolves_a_policy() {
    let d = deploy(false).await;
    let layout = Layout::new(&d.dir);

    // 1. The record service's own certificate and key, on the authority's
    //    address: refused at the handshake.
    let (records_cert, records_key) = Layout::new(&d.records_dir).service("records");
    let (records_key_pem, records_signer) = key(&records_key);
    let url = fake_authority(
        &d.dir,
        &std::fs::read_to_string(records_cert).unwrap(),
        &records_key_pem,
        records_signer,
    )
    .await;
    let err = try_put(&victim(&d, &url)).await.unwrap_err();
    assert!(
        err.contains("transport") || err.contains("certificate"),
        "{err}"
    );

    // 2. A certificate for the authority's TLS name (what a stolen leaf
    //    gives), answers signed by the leaf's key: refused as unsigned.
    let config = asclepios_deploy::Config::load(&d.dir).unwrap();
    let (issuer_cert, issuer_key) = layout.service("authority");
    let issuer_pem = std::fs::read_to_string(&issuer_cert).unwrap();
    let (issuer_key_pem, issuer_signer) = key(&issuer_key);
    let issuer = CertificateAuthority::from_pem(&issuer_pem, &issuer_key_pem).unwrap();
    let leaf_key = ServiceKey::generate().unwrap();
    let leaf = issuer
        .issue_server_for_key(
            &leaf_key,
            "stolen authority leaf",
            &config.authority.certificate_names(),
            3600,
            None,
        )
        .unwrap();
    let chain = format!("{leaf}{issuer_pem}");
    let leaf_signer = SigningKey::from_pkcs8_pem(&leaf_key.key_pem()).unwrap();
    let url = fake_authority(&d.dir, &chain, &leaf_key.key_pem(), leaf_signer).await;
    let err = try_put(&victim(&d, &url)).await.unwrap_err();
    assert!(err.contains("not signed by the key authority"), "{err}");

    // 3. Even signed with the authority's own key, a widened policy is not
    //    the policy asked for with versions added: refused.
    let url = fake_authority(&d.dir, &chain, &leaf_key.key_pem(), issuer_signer).await;
    let err = try_put(&victim(&d, &url)).await.unwrap_err();
    assert!(err.contains("not the policy asked for"), "{err}");

    // Nothing reached the record service, and the real authority still works.
    let honest = client(&d, "dr-heart");
    assert!(honest.list_records("pat-00000").await.unwrap().is_empty());
    try_put(&honest).await.unwrap();
    assert_eq!(honest.list_records("pat-00000").await.unwrap().len(), 1);
}
