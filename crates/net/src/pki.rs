//! The deployment PKI: one CA, certificates for services (DNS names and IP
//! addresses) and for identities (users, devices). An identity certificate
//! names its identity twice: as the subject common name and as the URI
//! `urn:asclepios:identity:<id>` in its subject alternative names, which is
//! what services read.

use std::fmt;

use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType, PKCS_ED25519,
};
use time::{Duration, OffsetDateTime};
use zeroize::Zeroizing;

use crate::Error;

/// The URI prefix that carries an identity in a certificate.
pub const IDENTITY_URI_PREFIX: &str = "urn:asclepios:identity:";
/// How long identity and service certificates are valid.
pub const LEAF_VALIDITY_DAYS: i64 = 397;
/// How long the CA is valid.
pub const CA_VALIDITY_DAYS: i64 = 3650;

fn cert_err(e: impl fmt::Display) -> Error {
    Error::Certificate(e.to_string())
}

/// A certificate and its private key, PEM-encoded (the key zeroized on drop).
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// The PKCS#8 private key (a secret).
    pub key_pem: Zeroizing<String>,
}

impl fmt::Debug for Issued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issued")
            .field("cert_pem", &format_args!("<{} bytes>", self.cert_pem.len()))
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// A fresh Ed25519 key for a short-lived TLS certificate, made where it
/// will be used (inside the attested environment), so evidence can bind it
/// before the certificate exists.
pub struct ServiceKey(KeyPair);

impl fmt::Debug for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServiceKey(<redacted>)")
    }
}

impl ServiceKey {
    /// A new key.
    pub fn generate() -> Result<Self, Error> {
        Ok(ServiceKey(
            KeyPair::generate_for(&PKCS_ED25519).map_err(cert_err)?,
        ))
    }

    /// Its SubjectPublicKeyInfo (DER): what attestation evidence binds.
    pub fn spki_der(&self) -> Vec<u8> {
        self.0.public_key_der()
    }

    /// The private key (PKCS#8 PEM; a secret).
    pub fn key_pem(&self) -> Zeroizing<String> {
        Zeroizing::new(self.0.serialize_pem())
    }
}

/// The deployment's certificate authority, or a service's own issuer (a
/// CA certificate constrained to the service's names, see
/// [`CertificateAuthority::issue_service_issuer`]).
pub struct CertificateAuthority {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CertificateAuthority(<redacted key>)")
    }
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = OffsetDateTime::now_utc();
    // A little slack for clocks that run behind.
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(days);
}

impl CertificateAuthority {
    /// A new CA named `name`.
    pub fn generate(name: &str) -> Result<Self, Error> {
        let key = KeyPair::generate_for(&PKCS_ED25519).map_err(cert_err)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "asclepios deployment");
        // One CA may stand below the root: the key authority's issuer of
        // attested TLS certificates. (rustls' verifier does not enforce path
        // lengths; OpenSSL-based clients do and refused a 0 here.)
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        validity(&mut params, CA_VALIDITY_DAYS);
        let cert = params.self_signed(&key).map_err(cert_err)?;
        Ok(CertificateAuthority { cert, key })
    }

    /// Loads a CA from its certificate and key (PEM).
    ///
    /// What signing needs of the issuer is its subject name and its key (the
    /// authority key identifier is derived from the key): re-signing the same
    /// subject with the same key gives an issuer object that signs exactly as
    /// the original did. The subject is rebuilt from its common and
    /// organisation names and must come out byte for byte the same (rcgen's
    /// own reader refuses the URI name constraint of the authority's issuer).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, Error> {
        let key = KeyPair::from_pem(key_pem).map_err(cert_err)?;
        let der = pem_body(cert_pem)?;
        let (_, original) = x509_parser::parse_x509_certificate(&der).map_err(cert_err)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        for attr in original.subject().iter_attributes() {
            let value = attr.as_str().map_err(cert_err)?;
            let oid = attr.attr_type();
            if *oid == x509_parser::oid_registry::OID_X509_COMMON_NAME {
                params.distinguished_name.push(DnType::CommonName, value);
            } else if *oid == x509_parser::oid_registry::OID_X509_ORGANIZATION_NAME {
                params
                    .distinguished_name
                    .push(DnType::OrganizationName, value);
            } else {
                return Err(Error::Certificate(format!(
                    "the CA certificate's subject has an attribute ({oid}) asclepios does not issue"
                )));
            }
        }
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).map_err(cert_err)?;
        let (_, rebuilt) = x509_parser::parse_x509_certificate(cert.der()).map_err(cert_err)?;
        if rebuilt.subject().as_raw() != original.subject().as_raw() {
            return Err(Error::Certificate(
                "the CA certificate's subject is not in the form asclepios issues".into(),
            ));
        }
        if !same_key(cert_pem, &key)? {
            return Err(Error::Certificate(
                "the CA key does not match the CA certificate".into(),
            ));
        }
        Ok(CertificateAuthority { cert, key })
    }

    /// The CA certificate (PEM), which every party trusts.
    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// The CA private key (PEM; a secret).
    pub fn key_pem(&self) -> Zeroizing<String> {
        Zeroizing::new(self.key.serialize_pem())
    }

    fn issue(&self, mut params: CertificateParams) -> Result<Issued, Error> {
        let key = KeyPair::generate_for(&PKCS_ED25519).map_err(cert_err)?;
        validity(&mut params, LEAF_VALIDITY_DAYS);
        self.sign(params, &key)
    }

    fn sign(&self, mut params: CertificateParams, key: &KeyPair) -> Result<Issued, Error> {
        params.is_ca = IsCa::NoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(key, &self.cert, &self.key)
            .map_err(cert_err)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: Zeroizing::new(key.serialize_pem()),
        })
    }

    /// A server certificate for `names` (DNS names or IP addresses).
    pub fn issue_server(&self, common_name: &str, names: &[&str]) -> Result<Issued, Error> {
        self.issue(server_params(common_name, names)?)
    }

    /// A certificate for a service that mints its own short-lived TLS
    /// certificates (the key authority, for RA-TLS): a CA certificate
    /// limited to one level below it, so its key can vouch for nothing but
    /// the service itself:
    ///
    /// * name constraints permit only `names` (DNS names, IP addresses) and
    ///   exclude every URI name, the form identities take
    ///   ([`IDENTITY_URI_PREFIX`]); rcgen has no URI subtree, so the
    ///   extension is encoded here ([`name_constraints_der`]);
    /// * its extended key usage is server authentication only, which
    ///   verifiers apply to every certificate of a path, so nothing it
    ///   issues can authenticate a client.
    ///
    /// Servers also accept client certificates only when the root issued
    /// them directly (see `tls`), so even a stolen issuer key mints no
    /// identity. Its key also signs the service's receipts.
    pub fn issue_service_issuer(&self, common_name: &str, names: &[&str]) -> Result<Issued, Error> {
        let key = KeyPair::generate_for(&PKCS_ED25519).map_err(cert_err)?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.custom_extensions.push({
            let mut ext = CustomExtension::from_oid_content(
                NAME_CONSTRAINTS_OID,
                name_constraints_der(names),
            );
            ext.set_criticality(true);
            ext
        });
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        validity(&mut params, LEAF_VALIDITY_DAYS);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .map_err(cert_err)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: Zeroizing::new(key.serialize_pem()),
        })
    }

    /// A server certificate for `key`, valid for `seconds`, carrying the
    /// extra non-critical extension `extension` (OID arcs, DER value) if
    /// given: what an attested service issues itself with its issuer.
    pub fn issue_server_for_key(
        &self,
        key: &ServiceKey,
        common_name: &str,
        names: &[&str],
        seconds: i64,
        extension: Option<(&[u64], Vec<u8>)>,
    ) -> Result<String, Error> {
        let mut params = server_params(common_name, names)?;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::minutes(5);
        params.not_after = now + Duration::seconds(seconds);
        if let Some((oid, value)) = extension {
            params
                .custom_extensions
                .push(CustomExtension::from_oid_content(oid, value));
        }
        params.is_ca = IsCa::NoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key.0, &self.cert, &self.key)
            .map_err(cert_err)?;
        Ok(cert.pem())
    }

    /// A client certificate for identity `id`.
    pub fn issue_identity(&self, id: &str) -> Result<Issued, Error> {
        check_identity_id(id)?;
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, id);
        params.subject_alt_names.push(SanType::URI(
            format!("{IDENTITY_URI_PREFIX}{id}")
                .try_into()
                .map_err(cert_err)?,
        ));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params)
    }
}

fn server_params(common_name: &str, names: &[&str]) -> Result<CertificateParams, Error> {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    for name in names {
        params.subject_alt_names.push(match name.parse() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName((*name).try_into().map_err(cert_err)?),
        });
    }
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    Ok(params)
}

/// The name constraints extension (RFC 5280 §4.2.1.10).
const NAME_CONSTRAINTS_OID: &[u64] = &[2, 5, 29, 30];

/// The DER of a NameConstraints value that permits `names` (DNS names, or IP
/// addresses as single-host subnets) and excludes every URI. rustls-webpki
/// takes any excluded URI subtree as matching every URI name; OpenSSL
/// refuses a URN (which has no host) under any URI constraint. The base
/// given is the identity URI prefix, which says what the exclusion is for.
fn name_constraints_der(names: &[&str]) -> Vec<u8> {
    use yasna::Tag;
    yasna::construct_der(|w| {
        w.write_sequence(|w| {
            w.next().write_tagged_implicit(Tag::context(0), |w| {
                w.write_sequence(|w| {
                    for name in names {
                        w.next()
                            .write_sequence(|w| match name.parse::<std::net::IpAddr>() {
                                Ok(ip) => {
                                    let (addr, mask) = match ip {
                                        std::net::IpAddr::V4(v4) => {
                                            (v4.octets().to_vec(), vec![0xff; 4])
                                        }
                                        std::net::IpAddr::V6(v6) => {
                                            (v6.octets().to_vec(), vec![0xff; 16])
                                        }
                                    };
                                    w.next().write_tagged_implicit(Tag::context(7), |w| {
                                        w.write_bytes(&[addr, mask].concat())
                                    })
                                }
                                Err(_) => w.next().write_tagged_implicit(Tag::context(2), |w| {
                                    w.write_ia5_string(name)
                                }),
                            });
                    }
                })
            });
            w.next().write_tagged_implicit(Tag::context(1), |w| {
                w.write_sequence(|w| {
                    w.next().write_sequence(|w| {
                        w.next().write_tagged_implicit(Tag::context(6), |w| {
                            w.write_ia5_string(IDENTITY_URI_PREFIX)
                        })
                    })
                })
            });
        })
    })
}

fn pem_body(pem: &str) -> Result<Vec<u8>, Error> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .map(|c| c.to_vec())
        .map_err(cert_err)
}

fn same_key(cert_pem: &str, key: &KeyPair) -> Result<bool, Error> {
    let der = pem_body(cert_pem)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(cert_err)?;
    Ok(cert.public_key().subject_public_key.data.as_ref() == key.public_key_raw())
}

/// Identity ids: 1 to 128 characters of letters, digits, `-`, `_`, `.`.
pub fn check_identity_id(id: &str) -> Result<(), Error> {
    if id.is_empty()
        || id.len() > 128
        || id.bytes().all(|b| b == b'.')
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(Error::Certificate(format!(
            "identity id `{id}`: use 1 to 128 letters, digits, '-', '_' or '.' (not dots alone)"
        )));
    }
    Ok(())
}

/// Who a verified client certificate speaks for.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct PeerIdentity {
    /// The identity id from the certificate.
    pub id: String,
    /// The certificate's Ed25519 public key: the key its requests are signed with.
    pub public_key: [u8; 32],
}

/// The Ed25519 public key of a certificate (service or identity).
pub fn public_key(cert_der: &[u8]) -> Result<[u8; 32], Error> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).map_err(cert_err)?;
    let spki = cert.public_key();
    if spki.algorithm.algorithm.to_id_string() != "1.3.101.112" {
        return Err(Error::Certificate(
            "asclepios certificates carry Ed25519 keys".into(),
        ));
    }
    spki.subject_public_key
        .data
        .as_ref()
        .try_into()
        .map_err(|_| Error::Certificate("an Ed25519 key is 32 bytes".into()))
}

/// Reads the identity and key from a (chain-verified) client certificate.
pub fn peer_identity(cert_der: &[u8]) -> Result<PeerIdentity, Error> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).map_err(cert_err)?;
    let id = cert
        .subject_alternative_name()
        .map_err(cert_err)?
        .and_then(|san| {
            san.value.general_names.iter().find_map(|n| match n {
                x509_parser::extensions::GeneralName::URI(uri) => {
                    uri.strip_prefix(IDENTITY_URI_PREFIX).map(str::to_string)
                }
                _ => None,
            })
        })
        .ok_or_else(|| Error::Certificate("the certificate names no asclepios identity".into()))?;
    check_identity_id(&id)?;
    let spki = cert.public_key();
    if spki.algorithm.algorithm.to_id_string() != "1.3.101.112" {
        return Err(Error::Certificate(
            "identity certificates carry Ed25519 keys".into(),
        ));
    }
    let public_key: [u8; 32] = spki
        .subject_public_key
        .data
        .as_ref()
        .try_into()
        .map_err(|_| Error::Certificate("an Ed25519 key is 32 bytes".into()))?;
    Ok(PeerIdentity { id, public_key })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_certificates_name_their_identity_and_key() {
        let ca = CertificateAuthority::generate("test CA").unwrap();
        let issued = ca.issue_identity("dr-heart").unwrap();
        let der = pem_body(&issued.cert_pem).unwrap();
        let peer = peer_identity(&der).unwrap();
        assert_eq!(peer.id, "dr-heart");
        let key = KeyPair::from_pem(&issued.key_pem).unwrap();
        assert_eq!(peer.public_key.as_slice(), key.public_key_raw());
        assert!(ca.issue_identity("bad id").is_err());
        let server = ca
            .issue_server("records", &["localhost", "127.0.0.1"])
            .unwrap();
        assert!(peer_identity(&pem_body(&server.cert_pem).unwrap()).is_err());
    }

    #[test]
    fn a_reloaded_ca_issues_certificates_the_original_verifies() {
        let ca = CertificateAuthority::generate("test CA").unwrap();
        let again = CertificateAuthority::from_pem(&ca.cert_pem(), &ca.key_pem()).unwrap();
        let issued = again.issue_identity("nurse").unwrap();
        let der = pem_body(&issued.cert_pem).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let ca_der = pem_body(&ca.cert_pem()).unwrap();
        let (_, ca_cert) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
        cert.verify_signature(Some(ca_cert.public_key())).unwrap();
        let other = CertificateAuthority::generate("other").unwrap();
        assert!(CertificateAuthority::from_pem(&ca.cert_pem(), &other.key_pem()).is_err());
    }
}
