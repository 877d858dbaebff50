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
pub mod split;
pub mod standalone_witness;
pub mod witnesses;

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

/// Writes a file, secret ones readable by the owner only. Never through a
/// symbolic link, and a secret file that already exists is narrowed to
/// 0600 before anything is written into it (a pre-created 0666 file must
/// not receive a key).
pub fn write_file(path: &std::path::Path, contents: &str, secret: bool) -> Result<(), Error> {
    write(path, contents.as_bytes(), secret, false)
}

/// Like [`write_file`], but refuses a path that exists already (a file or
/// a symbolic link): what `init` and `user add` write must be theirs alone.
pub fn write_new_file(path: &std::path::Path, contents: &str, secret: bool) -> Result<(), Error> {
    write(path, contents.as_bytes(), secret, true)
}

fn write(path: &std::path::Path, contents: &[u8], secret: bool, new: bool) -> Result<(), Error> {
    use std::io::Write;
    let io = |e: std::io::Error| Error::Io(format!("cannot write {}: {e}", path.display()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true);
    if new {
        // O_CREAT|O_EXCL: fails on any existing entry, a dangling link included.
        options.create_new(true);
    } else {
        options.create(true).truncate(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NOFOLLOW);
        if secret {
            options.mode(0o600);
        }
    }
    let mut f = options.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            Error::Io(format!(
                "{} exists already; refusing to overwrite it (remove it, or choose a fresh directory)",
                path.display()
            ))
        } else {
            io(e)
        }
    })?;
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(io)?;
    }
    f.write_all(contents).map_err(io)?;
    f.sync_all().map_err(io)
}

/// Creates `dir` (and its parents) if needed, refuses it if it is a
/// symbolic link, and makes it private to its owner: key files inside a
/// directory an attacker can redirect are not private.
pub fn create_private_dir(dir: &std::path::Path) -> Result<(), Error> {
    let io = |e: std::io::Error| Error::Io(format!("cannot create {}: {e}", dir.display()));
    std::fs::create_dir_all(dir).map_err(io)?;
    let meta = std::fs::symlink_metadata(dir).map_err(io)?;
    if meta.file_type().is_symlink() || !meta.is_dir() {
        return Err(Error::Io(format!(
            "{} is a symbolic link or not a directory; refusing to put keys there",
            dir.display()
        )));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
    }
    Ok(())
}

/// Reads a text file, saying which when it fails.
pub fn read_file(path: &std::path::Path) -> Result<String, Error> {
    std::fs::read_to_string(path)
        .map_err(|e| Error::Io(format!("cannot read {}: {e}", path.display())))
}
