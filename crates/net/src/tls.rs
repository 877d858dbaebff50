//! rustls configurations for the deployment: TLS 1.3 only, the deployment CA
//! as the only trust anchor, client certificates required by every server,
//! and the aws-lc-rs provider's key exchange groups with X25519MLKEM768 (a
//! post-quantum hybrid) first.
//!
//! Two rules keep one service from posing as another party:
//! * servers accept a client certificate only when the root issued it
//!   directly ([`DirectlyIssuedClients`]): the key authority's online
//!   issuer, a CA below the root, cannot mint an identity;
//! * clients check a service's certificate against the service's own TLS
//!   name, whatever address they dial ([`pinned_server_verifier`]), and the
//!   record service's certificate never carries the authority's name.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::aws_lc_rs;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::Error;

/// What checks a server's certificate (re-exported for clients that pick one).
pub use rustls::client::danger::ServerCertVerifier as ServerVerifier;

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

/// The handshake-signature checks of a verifier that only adds a rule to
/// the certificate check: they go to `self.inner` unchanged (client and
/// server verifiers have the same three methods).
macro_rules! delegate_handshake_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.inner.verify_tls12_signature(message, cert, dss)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.inner.verify_tls13_signature(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.inner.supported_verify_schemes()
        }
    };
}

/// The client verifier of every service: the chain must verify against the
/// deployment CA (webpki) *and* the client certificate must be issued by
/// the root itself, with no intermediate. Identity certificates come only
/// from the deployment CA; a CA below it (the authority's RA-TLS issuer) is
/// for server names, and its key is online, so nothing it signs may
/// authenticate a client.
///
/// A client may send the root itself along (OpenSSL-based clients complete
/// the chain from their trust store); any other certificate beside its own
/// is refused, and the path is built from the leaf and the root alone.
#[derive(Debug)]
pub struct DirectlyIssuedClients {
    inner: Arc<dyn ClientCertVerifier>,
    anchors: Vec<CertificateDer<'static>>,
}

impl DirectlyIssuedClients {
    /// The verifier for client certificates issued by the CA in `ca_pem`.
    pub fn new(ca_pem: &str) -> Result<Arc<Self>, Error> {
        let inner = WebPkiClientVerifier::builder_with_provider(roots(ca_pem)?, provider())
            .build()
            .map_err(|e| Error::Certificate(format!("client verifier: {e}")))?;
        Ok(Arc::new(DirectlyIssuedClients {
            inner,
            anchors: certs_from_pem(ca_pem)?,
        }))
    }
}

impl ClientCertVerifier for DirectlyIssuedClients {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if !intermediates.iter().all(|c| self.anchors.contains(c)) {
            return Err(rustls::Error::General(
                "client certificates must be issued directly by the deployment CA".into(),
            ));
        }
        self.inner.verify_client_cert(end_entity, &[], now)
    }

    delegate_handshake_signatures!();
}

fn server_builder(
    ca_pem: &str,
) -> Result<rustls::ConfigBuilder<ServerConfig, rustls::server::WantsServerCert>, Error> {
    Ok(ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(DirectlyIssuedClients::new(ca_pem)?))
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

/// Checks a server's certificate for one pinned name, whatever name or
/// address the client dialled: a client that means the key authority
/// accepts only a certificate for the authority's TLS name, so another
/// service's certificate from the same CA cannot stand in for it.
#[derive(Debug)]
pub struct PinnedName {
    inner: Arc<dyn ServerCertVerifier>,
    name: ServerName<'static>,
}

/// The deployment CA's server verifier, pinned to the DNS name `name`.
pub fn pinned_server_verifier(ca_pem: &str, name: &str) -> Result<Arc<PinnedName>, Error> {
    let name = ServerName::try_from(name.to_string())
        .map_err(|e| Error::Certificate(format!("service name `{name}`: {e}")))?;
    Ok(Arc::new(PinnedName {
        inner: server_verifier(ca_pem)?,
        name,
    }))
}

impl ServerCertVerifier for PinnedName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _dialled: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    delegate_handshake_signatures!();
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
