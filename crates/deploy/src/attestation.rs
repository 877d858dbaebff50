//! The deployment's remote attestation: which attester the key authority
//! uses, its attested TLS certificate (minted from its issuer certificate,
//! renewed with fresh evidence), the policies relying parties read, and the
//! development signer and policies `init` writes.

use std::path::Path;
use std::sync::{Arc, RwLock};

use asclepios_attest::attester::{
    Attester, GramineSgxAttester, InsecureSoftwareAttester, TdxTsmAttester,
};
use asclepios_attest::evidence::{Binding, Format, Freshness};
use asclepios_attest::policy::{Policy, Reference};
use asclepios_attest::ratls;
use asclepios_net::pki::{CertificateAuthority, ServiceKey};
use asclepios_net::tls;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::SigningKey;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use zeroize::Zeroizing;

use crate::config::CONFIG_FILE;
use crate::directory::Layout;
use crate::{read_file, write_file, Config, Error};

/// The development attestation signer, relative to the data directory.
pub const DEVELOPMENT_KEY: &str = "pki/attestation-dev.key";

fn attest_err(e: asclepios_attest::Error) -> Error {
    Error::Invalid(e.to_string())
}

/// Makes the development (insecure-software) signer.
pub fn create_development_key(dir: &Path) -> Result<(), Error> {
    let mut seed = Zeroizing::new([0u8; 32]);
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, seed.as_mut());
    let key = SigningKey::from_bytes(&seed);
    let pem = key
        .to_pkcs8_pem(Default::default())
        .map_err(|e| Error::Invalid(format!("attestation key: {e}")))?;
    crate::write_new_file(&dir.join(DEVELOPMENT_KEY), &pem, true)
}

fn development_key(dir: &Path) -> Result<SigningKey, Error> {
    let path = dir.join(DEVELOPMENT_KEY);
    let pem = Zeroizing::new(read_file(&path)?);
    SigningKey::from_pkcs8_pem(&pem).map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))
}

/// The insecure-software attester of this deployment: the running binary
/// and `asclepios.toml`, signed with the development key.
pub fn development_attester(dir: &Path) -> Result<InsecureSoftwareAttester, Error> {
    InsecureSoftwareAttester::for_running_binary(development_key(dir)?, &dir.join(CONFIG_FILE))
        .map_err(attest_err)
}

/// Writes the development policies: insecure-software accepted, with the
/// running binary and the current configuration as the only reference
/// value. Run again after changing the binary or `asclepios.toml` (the
/// measurement covers both).
pub fn write_development_policies(dir: &Path) -> Result<Reference, Error> {
    let config = Config::load(dir)?;
    let attester = development_attester(dir)?;
    let reference = Reference {
        name: "development build (insecure-software)".into(),
        format: Format::InsecureSoftware,
        measurement: hex::encode(attester.measurement()),
        signer: Some(hex::encode(attester.signer())),
        min_isv_svn: None,
    };
    let policy = Policy {
        formats: vec![Format::InsecureSoftware],
        min_tcb_status: "UpToDate".into(),
        allow_debug: false,
        max_evidence_age_seconds: 86_400,
        reference: vec![reference.clone()],
    };
    let text = format!(
        "# DEVELOPMENT reference values: they accept insecure-software evidence,\n\
         # which proves nothing about hardware. A production policy lists only\n\
         # sgx-dcap or tdx-dcap measurements (see the asclepios-attest docs).\n\n{}",
        policy.to_toml().map_err(attest_err)?
    );
    for file in [
        &config.attestation.policy,
        &config.attestation.component_policy,
    ] {
        write_file(&dir.join(file), &text, false)?;
    }
    Ok(reference)
}

fn load(dir: &Path, file: &str) -> Result<Policy, Error> {
    let path = dir.join(file);
    let text = read_file(&path).map_err(|e| {
        Error::Config(format!(
            "{e}: attestation needs reference values there (see `asclepios attest --help`; \
             `asclepios attest dev-policy` writes development ones)"
        ))
    })?;
    Policy::from_toml(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
}

/// The relying parties' policy for the authority.
pub fn authority_policy(dir: &Path, config: &Config) -> Result<Policy, Error> {
    load(dir, &config.attestation.policy)
}

/// The authority's policy for components.
pub fn component_policy(dir: &Path, config: &Config) -> Result<Policy, Error> {
    load(dir, &config.attestation.component_policy)
}

/// The attester the configuration's `attestation.evidence` names, or none.
pub fn attester(dir: &Path, config: &Config) -> Result<Option<Arc<dyn Attester>>, Error> {
    attester_named(dir, config, &config.attestation.evidence)
}

/// The attester `name` names (`none`, `insecure-software`, `sgx-dcap`,
/// `tdx-dcap`), or none.
pub fn attester_named(
    dir: &Path,
    config: &Config,
    name: &str,
) -> Result<Option<Arc<dyn Attester>>, Error> {
    let collateral = config.attestation.collateral.as_ref().map(|c| dir.join(c));
    Ok(match name {
        "none" => None,
        "insecure-software" => Some(Arc::new(development_attester(dir)?)),
        "tdx-dcap" => Some(Arc::new(
            TdxTsmAttester::new(TdxTsmAttester::DEFAULT_ROOT, collateral).map_err(attest_err)?,
        )),
        "sgx-dcap" => Some(Arc::new(
            GramineSgxAttester::new(GramineSgxAttester::DEFAULT_ROOT, collateral)
                .map_err(attest_err)?,
        )),
        other => {
            return Err(Error::Config(format!(
                "attestation.evidence `{other}`: use none, sgx-dcap, tdx-dcap or insecure-software"
            )))
        }
    })
}

struct Current {
    certified: Arc<CertifiedKey>,
    spki_der: Vec<u8>,
}

/// The authority's TLS certificate: a fresh key per certificate, evidence
/// binding it in the `id-pe-cmw` extension, signed by the authority's
/// issuer certificate. Serves as the rustls certificate resolver and as the
/// source of challenge evidence for the current key.
pub struct AttestedCertificate {
    issuer: CertificateAuthority,
    issuer_pem: String,
    names: Vec<String>,
    seconds: u64,
    attester: Option<Arc<dyn Attester>>,
    current: RwLock<Arc<Current>>,
}

impl std::fmt::Debug for AttestedCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttestedCertificate")
            .field("names", &self.names)
            .field("format", &self.attester.as_ref().map(|a| a.format()))
            .finish_non_exhaustive()
    }
}

impl AttestedCertificate {
    /// Loads the authority's issuer and mints the first certificate.
    pub fn new(dir: &Path, config: &Config) -> Result<Self, Error> {
        let layout = Layout::new(dir);
        let (cert_path, key_path) = layout.service("authority");
        let issuer_pem = read_file(&cert_path)?;
        let issuer_key = Zeroizing::new(read_file(&key_path)?);
        let issuer = CertificateAuthority::from_pem(&issuer_pem, &issuer_key)?;
        let attester = attester(dir, config)?;
        let seconds = config.attestation.certificate_seconds.max(120);
        let names: Vec<String> = config
            .authority
            .certificate_names()
            .into_iter()
            .map(str::to_string)
            .collect();
        let first = mint(&issuer, &issuer_pem, &names, seconds, attester.as_deref())?;
        Ok(AttestedCertificate {
            issuer,
            issuer_pem,
            names,
            seconds,
            attester,
            current: RwLock::new(Arc::new(first)),
        })
    }

    /// Mints a new certificate with fresh evidence and serves it from now on.
    pub fn renew(&self) -> Result<(), Error> {
        let next = mint(
            &self.issuer,
            &self.issuer_pem,
            &self.names,
            self.seconds,
            self.attester.as_deref(),
        )?;
        if let Ok(mut current) = self.current.write() {
            *current = Arc::new(next);
        }
        Ok(())
    }

    /// How often to renew, in seconds.
    pub fn renew_every(&self) -> u64 {
        self.seconds / 2
    }

    /// The evidence format presented, if any.
    pub fn format(&self) -> Option<Format> {
        self.attester.as_ref().map(|a| a.format())
    }

    fn current(&self) -> Option<Arc<Current>> {
        self.current.read().ok().map(|c| c.clone())
    }
}

fn mint(
    issuer: &CertificateAuthority,
    issuer_pem: &str,
    names: &[String],
    seconds: u64,
    attester: Option<&dyn Attester>,
) -> Result<Current, Error> {
    let key = ServiceKey::generate()?;
    let spki_der = key.spki_der();
    let extension = match attester {
        Some(a) => {
            let binding =
                Binding::new(&spki_der, Freshness::IssuedAt(asclepios_attest::unix_now()));
            let evidence = a.evidence(&binding).map_err(attest_err)?;
            Some((
                &ratls::CMW_EXTENSION_OID[..],
                ratls::extension_value(&evidence),
            ))
        }
        None => None,
    };
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    // Not the issuer's name: a leaf named like its issuer looks self-issued
    // to OpenSSL, whose clients then refuse the chain.
    let leaf = issuer.issue_server_for_key(
        &key,
        "asclepios authority TLS",
        &names,
        i64::try_from(seconds).unwrap_or(86_400),
        extension,
    )?;
    let chain = format!("{leaf}{issuer_pem}");
    Ok(Current {
        certified: tls::certified_key(&chain, &key.key_pem())?,
        spki_der,
    })
}

impl ResolvesServerCert for AttestedCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current().map(|c| c.certified.clone())
    }
}

impl asclepios_authority::EvidenceSource for AttestedCertificate {
    fn evidence_for_nonce(&self, nonce: [u8; 32]) -> Result<Vec<u8>, String> {
        let attester = self.attester.as_ref().ok_or_else(|| {
            "this authority presents no attestation evidence (attestation.evidence = none)"
                .to_string()
        })?;
        let current = self
            .current()
            .ok_or_else(|| "no current certificate".to_string())?;
        attester
            .evidence(&Binding::new(&current.spki_der, Freshness::Nonce(nonce)))
            .map(|e| e.to_bytes())
            .map_err(|e| e.to_string())
    }
}

/// What a person starting or using this deployment must be told about its
/// attestation settings (each line a warning; none for a production setup).
pub fn warnings(config: &Config) -> Vec<String> {
    let a = &config.attestation;
    let mut out = Vec::new();
    match a.evidence.as_str() {
        "insecure-software" => out.push(
            "the key authority presents INSECURE-SOFTWARE attestation evidence: a locally \
             signed measurement with no hardware root of trust (development only)"
                .to_string(),
        ),
        "none" => out.push("the key authority presents no attestation evidence".to_string()),
        _ => {}
    }
    if !a.require {
        out.push(
            "attestation is OFF for clients (attestation.require = false): they talk to the \
             key authority whatever its evidence says"
                .to_string(),
        );
    }
    if !a.require_components {
        out.push(
            "component attestation is OFF (attestation.require_components = false): devices \
             get keys without attesting"
                .to_string(),
        );
    }
    out
}
