//! asclepios transport security.
//!
//! * [`pki`]: the deployment's certificate authority, and certificates for
//!   services and identities. Every key is Ed25519, so the key a client
//!   authenticates with in TLS is the key it signs requests with.
//! * [`tls`]: rustls configurations: TLS 1.3 only, client certificates
//!   required, X25519MLKEM768 hybrid key exchange preferred.
//! * [`signature`]: signed requests in the form of HTTP Message Signatures
//!   (RFC 9421) over method, path, body digest, creation time and nonce, with
//!   a replay guard.
//! * [`sealed_box`]: encrypting a payload to an identity's certificate key
//!   (HPKE to its X25519 form), for keys the authority hands out.
//! * [`server`]: serving an axum router over mutual TLS, with the caller's
//!   identity on every request and the signature check as middleware.
//! * [`admission`]: which requests a service takes now and which it asks to
//!   come back later (429), per identity and by weight.
//! * [`metrics`]: request counts, latencies and refusals for `/metrics`,
//!   and the structured request log.
//! * [`client`]: the matching HTTPS client that signs every request.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admission;
pub mod client;
pub mod metrics;
pub mod openapi;
pub mod pki;
pub mod sealed_box;
pub mod server;
pub mod signature;
pub mod tls;

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A certificate or key could not be made or read.
    #[error("certificate: {0}")]
    Certificate(String),
    /// A TLS configuration could not be built.
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// A request signature was missing, malformed, stale, replayed or wrong.
    #[error("request signature: {0}")]
    Signature(String),
    /// The connection or request failed.
    #[error("transport: {0}")]
    Transport(String),
}
