//! rustls configurations for the deployment: TLS 1.3 only, the deployment CA
//! as the only trust anchor, client certificates required by every server,
//! and the aws-lc-rs provider's key exchange groups with X25519MLKEM768 (a
//! post-quantum hybrid) first.

use std::sync::Arc;

use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::aws_lc_rs;
use rustls::server::{ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::Error;

fn pem_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Certificate(format!("{what}: {e}"))
}

/// Certificates from PEM text (a chain, leaf first).
pub fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err("certificate PEM", e))?;
    if certs.is_empty() {
        return Err(Error::Certificate("no certificate in the PEM text".into()));
    }
    Ok(certs)
}

/// A private key from PEM text.
pub fn key_from_pem(pem: &str) -> Result<PrivateKeyDer<'static>, Error> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| pem_err("private key PEM", e))
}

fn roots(ca_pem: &str) -> Result<Arc<RootCertStore>, Error> {
    let mut roots = RootCertStore::empty();
    for cert in certs_from_pem(ca_pem)? {
        roots.add(cert)?;
    }
    Ok(Arc::new(roots))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(aws_lc_rs::default_provider())
}

/// The names of the key exchange groups offered, most preferred first.
pub fn key_exchange_groups() -> Vec<String> {
    aws_lc_rs::default_provider()
        .kx_groups
        .iter()
        .map(|g| format!("{:?}", g.name()))
        .collect()
}

fn server_builder(
    ca_pem: &str,
) -> Result<rustls::ConfigBuilder<ServerConfig, rustls::server::WantsServerCert>, Error> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca_pem)?, provider())
        .build()
        .map_err(|e| Error::Certificate(format!("client verifier: {e}")))?;
    Ok(ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier))
}

fn with_alpn(mut config: ServerConfig) -> Arc<ServerConfig> {
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

/// A server that requires a client certificate issued by the CA.
pub fn server_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<Arc<ServerConfig>, Error> {
    Ok(with_alpn(server_builder(ca_pem)?.with_single_cert(
        certs_from_pem(cert_pem)?,
        key_from_pem(key_pem)?,
    )?))
}

/// A server whose certificate `resolver` chooses per handshake (one that
/// renews its attested certificate while running).
pub fn server_config_with_resolver(
    ca_pem: &str,
    resolver: Arc<dyn ResolvesServerCert>,
) -> Result<Arc<ServerConfig>, Error> {
    Ok(with_alpn(
        server_builder(ca_pem)?.with_cert_resolver(resolver),
    ))
}

/// A chain (PEM, leaf first) and its key, ready for a resolver.
pub fn certified_key(chain_pem: &str, key_pem: &str) -> Result<Arc<CertifiedKey>, Error> {
    let key = provider()
        .key_provider
        .load_private_key(key_from_pem(key_pem)?)?;
    Ok(Arc::new(CertifiedKey::new(certs_from_pem(chain_pem)?, key)))
}

/// The verifier of server certificates against the deployment CA, to wrap
/// (the attesting verifier checks the chain with it first).
pub fn server_verifier(ca_pem: &str) -> Result<Arc<WebPkiServerVerifier>, Error> {
    WebPkiServerVerifier::builder_with_provider(roots(ca_pem)?, provider())
        .build()
        .map_err(|e| Error::Certificate(format!("server verifier: {e}")))
}

/// A client that trusts only the CA and authenticates with its certificate.
pub fn client_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<Arc<ClientConfig>, Error> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(ca_pem)?)
        .with_client_auth_cert(certs_from_pem(cert_pem)?, key_from_pem(key_pem)?)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A client that authenticates with its certificate and checks servers
/// with `verifier` (which must check the chain itself).
pub fn client_config_with_verifier(
    verifier: Arc<dyn ServerCertVerifier>,
    cert_pem: &str,
    key_pem: &str,
) -> Result<Arc<ClientConfig>, Error> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(certs_from_pem(cert_pem)?, key_from_pem(key_pem)?)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A client without a certificate that checks servers with `verifier`
/// (to look at a server's certificate: the server then refuses it).
pub fn anonymous_client_config_with_verifier(
    verifier: Arc<dyn ServerCertVerifier>,
) -> Result<Arc<ClientConfig>, Error> {
    Ok(Arc::new(
        ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth(),
    ))
}

/// A client without a certificate (to show servers refuse it).
pub fn anonymous_client_config(ca_pem: &str) -> Result<Arc<ClientConfig>, Error> {
    Ok(Arc::new(
        ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots(ca_pem)?)
            .with_no_client_auth(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hybrid_post_quantum_group_comes_first() {
        let groups = key_exchange_groups();
        assert_eq!(
            groups.first().map(String::as_str),
            Some("X25519MLKEM768"),
            "{groups:?}"
        );
    }
}
