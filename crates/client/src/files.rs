//! What a client reads from a deployment directory (see
//! [`asclepios_api::layout::Layout`]): the CA, its identity's certificate and
//! key, the services' certificates and TLS names, the authority's
//! attestation reference values, the logs' verifiers and the ABE public key.
//! The client reads them itself: it does not link the deployment's server
//! side.

use std::path::Path;

use asclepios_api::layout::Layout;
use serde::Deserialize;

use crate::ClientError;

/// The parts of `asclepios.toml` a client acts on; the rest is the
/// services'.
#[derive(Debug, Deserialize)]
pub(crate) struct ClientConfig {
    pub(crate) authority: ServiceNames,
    pub(crate) records: ServiceNames,
    pub(crate) attestation: AttestationSettings,
    #[serde(default)]
    pub(crate) audit: AuditSettings,
}

/// The independent witnesses asked to cosign every checkpoint, besides the
/// key authority's, and how many must have.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct AuditSettings {
    #[serde(default)]
    pub(crate) witnesses: Vec<WitnessSetting>,
    /// How many witnesses must have cosigned (all when unset).
    #[serde(default)]
    pub(crate) quorum: Option<usize>,
}

/// One independent witness: its cosigning key (its URL is the services').
#[derive(Debug, Deserialize)]
pub(crate) struct WitnessSetting {
    pub(crate) key: String,
}

/// A service's TLS name: its certificate must carry it.
#[derive(Debug, Deserialize)]
pub(crate) struct ServiceNames {
    pub(crate) tls_name: String,
}

/// Whether the authority must attest, and against which reference values.
#[derive(Debug, Deserialize)]
pub(crate) struct AttestationSettings {
    pub(crate) require: bool,
    pub(crate) policy: String,
}

/// Reads a text file, saying which when it fails.
pub(crate) fn read(path: &Path) -> Result<String, ClientError> {
    std::fs::read_to_string(path)
        .map_err(|e| ClientError::Files(format!("cannot read {}: {e}", path.display())))
}

impl ClientConfig {
    /// The configuration of the deployment in `dir`.
    pub(crate) fn load(dir: &Path) -> Result<Self, ClientError> {
        let path = Layout::new(dir).config();
        toml::from_str(&read(&path)?)
            .map_err(|e| ClientError::Files(format!("{}: {e}", path.display())))
    }

    /// The authority's attestation reference values.
    pub(crate) fn authority_policy(
        &self,
        dir: &Path,
    ) -> Result<asclepios_attest::policy::Policy, ClientError> {
        let path = dir.join(&self.attestation.policy);
        let text = read(&path).map_err(|e| {
            ClientError::Files(format!(
                "{e}: attestation needs reference values there (see `asclepios attest --help`; \
                 `asclepios attest dev-policy` writes development ones)"
            ))
        })?;
        asclepios_attest::policy::Policy::from_toml(&text)
            .map_err(|e| ClientError::Files(format!("{}: {e}", path.display())))
    }
}

/// A log's checkpoint verifier key.
pub(crate) fn log_verifier(path: &Path) -> Result<asclepios_audit::NoteVerifier, ClientError> {
    asclepios_audit::NoteVerifier::parse(read(path)?.trim_end())
        .map_err(|e| ClientError::Files(format!("{}: {e}", path.display())))
}

/// A witness's cosigning key.
pub(crate) fn witness_verifier(
    path: &Path,
) -> Result<asclepios_audit::CosignatureVerifier, ClientError> {
    asclepios_audit::CosignatureVerifier::parse(read(path)?.trim_end()).map_err(|e| {
        ClientError::Files(format!(
            "{}: {e} (the key authority writes its witness's key there at init and at start)",
            path.display()
        ))
    })
}

/// The ABE public key.
pub(crate) fn abe_public_key(dir: &Path) -> Result<asclepios_crypto::abe::PublicKey, ClientError> {
    let path = Layout::new(dir).abe_public_key();
    let text = zeroize::Zeroizing::new(read(&path)?);
    let bytes = hex::decode(text.trim())
        .map_err(|_| ClientError::Files(format!("{} is not hex", path.display())))?;
    asclepios_crypto::abe::PublicKey::from_bytes(&bytes)
        .map_err(|e| ClientError::Files(format!("{}: {e}", path.display())))
}
