//! asclepios deployments.
//!
//! * [`attestation`]: the authority's attested TLS certificate, the
//!   attester the configuration names, and the development signer and
//!   reference values `init` writes.
//! * [`config`]: the one TOML file, with a default for every option.
//! * [`init`]: `asclepios init`: a working development deployment (CA,
//!   service and identity certificates, a sample organisation in the
//!   directory, the configuration).
//! * [`keys`]: the service keys (FAME master keys sealed at rest, the audit
//!   log's checkpoint key, auditors' HPKE keys).
//! * [`serve`]: the key authority and the record service of a deployment,
//!   started over mutual TLS (what `asclepios serve` and the demo run).
//! * [`directory`]: `asclepios user ...`: adding identities, setting their
//!   attributes (revocation bumps attribute versions), disabling them.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod attestation;
pub mod config;
pub mod directory;
pub mod init;
pub mod keys;
pub mod serve;

pub use config::Config;

/// Errors of deployment tasks; each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{0}")]
    Io(String),
    /// The configuration is invalid.
    #[error("configuration: {0}")]
    Config(String),
    /// Certificates or keys.
    #[error(transparent)]
    Net(#[from] asclepios_net::Error),
    /// The store.
    #[error(transparent)]
    Store(#[from] asclepios_store::StoreError),
    /// A note key.
    #[error(transparent)]
    Note(#[from] asclepios_audit::NoteError),
    /// A request that cannot be carried out as asked.
    #[error("{0}")]
    Invalid(String),
}

/// Writes a file, secret ones readable by the owner only.
pub fn write_file(path: &std::path::Path, contents: &str, secret: bool) -> Result<(), Error> {
    use std::io::Write;
    let io = |e: std::io::Error| Error::Io(format!("cannot write {}: {e}", path.display()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut f = options.open(path).map_err(io)?;
    f.write_all(contents.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)
}

/// Reads a text file, saying which when it fails.
pub fn read_file(path: &std::path::Path) -> Result<String, Error> {
    std::fs::read_to_string(path)
        .map_err(|e| Error::Io(format!("cannot read {}: {e}", path.display())))
}
