//! Where a deployment directory keeps what `init` writes and clients read:
//! paths only, no I/O. Both `init` (writing) and the client (reading its
//! certificates, keys and the services' public keys) follow it.

use std::path::{Path, PathBuf};

/// The configuration file in a data directory.
pub const CONFIG_FILE: &str = "asclepios.toml";

/// The files of a deployment's data directory.
#[derive(Clone, Debug)]
pub struct Layout {
    /// The data directory.
    pub dir: PathBuf,
}

impl Layout {
    /// The layout of `dir`.
    pub fn new(dir: &Path) -> Self {
        Layout {
            dir: dir.to_path_buf(),
        }
    }

    /// The configuration file.
    pub fn config(&self) -> PathBuf {
        self.dir.join(CONFIG_FILE)
    }

    /// The CA certificate.
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("pki/ca.pem")
    }

    /// The CA key (a secret).
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("pki/ca.key")
    }

    /// A service's certificate and key.
    pub fn service(&self, name: &str) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("pki/{name}.pem")),
            self.dir.join(format!("pki/{name}.key")),
        )
    }

    /// An identity's certificate and key.
    pub fn identity(&self, id: &str) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("identities/{id}.pem")),
            self.dir.join(format!("identities/{id}.key")),
        )
    }

    /// The verifier of this directory's service's audit log.
    pub fn log_verifier(&self) -> PathBuf {
        self.dir.join("pki/audit-log.pub")
    }

    /// In the key authority's directory of a split deployment: the record
    /// service's log verifier, for clients.
    pub fn records_log_verifier(&self) -> PathBuf {
        self.dir.join(RECORDS_LOG_VERIFIER)
    }

    /// The ABE public key (hex).
    pub fn abe_public_key(&self) -> PathBuf {
        self.dir.join("authority/abe-public.key")
    }
}

/// Where clients find the record service's log verifier in the key
/// authority's directory (relative to it).
pub const RECORDS_LOG_VERIFIER: &str = "pki/records-log.pub";

/// The key authority's witness's public key (C2SP `cosignature/v1` vkey):
/// every checkpoint a client accepts carries its cosignature.
pub const WITNESS_VERIFIER: &str = "pki/witness.pub";
