//! Where evidence comes from.
//!
//! * [`InsecureSoftwareAttester`]: the development signer (any machine).
//! * [`TdxTsmAttester`]: a TDX guest's quote through the Linux configfs-tsm
//!   interface (`/sys/kernel/config/tsm/report`, Linux 6.7 and later).
//! * [`GramineSgxAttester`]: an SGX enclave's quote through Gramine's
//!   `/dev/attestation` pseudo-files.
//!
//! The two hardware attesters are thin file-interface clients; this
//! project's CI has no TDX or SGX machine, so they are exercised only up to
//! their error paths here (see the crate's README).

use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use sha2::{Digest, Sha256};

use crate::evidence::{Binding, Body, Evidence, Format, Quote};
use crate::{software, Error};

/// Something that makes evidence for a binding.
pub trait Attester: Send + Sync {
    /// The format it makes.
    fn format(&self) -> Format;
    /// Evidence whose report data carries `binding`.
    fn evidence(&self, binding: &Binding) -> Result<Evidence, Error>;
}

/// SHA-256 of a file's contents.
pub fn file_sha256(path: &Path) -> Result<[u8; 32], Error> {
    let bytes = std::fs::read(path)
        .map_err(|e| Error::Attester(format!("cannot read {}: {e}", path.display())))?;
    Ok(Sha256::digest(bytes).into())
}

/// The development attester: signs a measurement of the running binary and
/// its configuration with a local key. INSECURE (see [`crate::software`]).
pub struct InsecureSoftwareAttester {
    key: SigningKey,
    binary_sha256: [u8; 32],
    config_sha256: [u8; 32],
}

impl std::fmt::Debug for InsecureSoftwareAttester {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InsecureSoftwareAttester")
            .field("binary_sha256", &hex::encode(self.binary_sha256))
            .field("config_sha256", &hex::encode(self.config_sha256))
            .finish_non_exhaustive()
    }
}

impl InsecureSoftwareAttester {
    /// An attester for given digests.
    pub fn new(key: SigningKey, binary_sha256: [u8; 32], config_sha256: [u8; 32]) -> Self {
        InsecureSoftwareAttester {
            key,
            binary_sha256,
            config_sha256,
        }
    }

    /// An attester measuring the running executable and `config`.
    pub fn for_running_binary(key: SigningKey, config: &Path) -> Result<Self, Error> {
        Ok(Self::new(
            key,
            running_binary_sha256()?,
            file_sha256(config)?,
        ))
    }

    /// The measurement it reports (what a policy lists).
    pub fn measurement(&self) -> [u8; 32] {
        software::measurement(&self.binary_sha256, &self.config_sha256)
    }

    /// The signer key (what a policy lists next to the measurement).
    pub fn signer(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }
}

/// SHA-256 of the running executable.
pub fn running_binary_sha256() -> Result<[u8; 32], Error> {
    let exe = std::env::current_exe()
        .map_err(|e| Error::Attester(format!("cannot find the running executable: {e}")))?;
    file_sha256(&exe)
}

impl Attester for InsecureSoftwareAttester {
    fn format(&self) -> Format {
        Format::InsecureSoftware
    }

    fn evidence(&self, binding: &Binding) -> Result<Evidence, Error> {
        Ok(software::sign(
            &self.key,
            self.binary_sha256,
            self.config_sha256,
            binding,
        ))
    }
}

fn read_collateral(path: &Option<PathBuf>) -> Result<Option<String>, Error> {
    path.as_ref()
        .map(|p| {
            std::fs::read_to_string(p).map_err(|e| {
                Error::Attester(format!("cannot read collateral {}: {e}", p.display()))
            })
        })
        .transpose()
}

/// A TDX guest's quotes through configfs-tsm.
#[derive(Debug)]
pub struct TdxTsmAttester {
    root: PathBuf,
    collateral: Option<PathBuf>,
}

impl TdxTsmAttester {
    /// The kernel's report directory.
    pub const DEFAULT_ROOT: &'static str = "/sys/kernel/config/tsm/report";

    /// An attester over the configfs-tsm directory `root`, shipping the
    /// collateral in `collateral` (fetched from a PCCS) with each quote.
    pub fn new(root: impl Into<PathBuf>, collateral: Option<PathBuf>) -> Result<Self, Error> {
        let root = root.into();
        if !root.is_dir() {
            return Err(Error::Attester(format!(
                "{} does not exist: this is not a TDX guest with configfs-tsm \
                 (Linux 6.7+, configfs mounted)",
                root.display()
            )));
        }
        Ok(TdxTsmAttester { root, collateral })
    }
}

impl Attester for TdxTsmAttester {
    fn format(&self) -> Format {
        Format::TdxDcap
    }

    fn evidence(&self, binding: &Binding) -> Result<Evidence, Error> {
        let mut name = [0u8; 8];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut name);
        let dir = self.root.join(format!("asclepios-{}", hex::encode(name)));
        let io = |what: &str, e: std::io::Error| {
            Error::Attester(format!("configfs-tsm {what} ({}): {e}", dir.display()))
        };
        std::fs::create_dir(&dir).map_err(|e| io("mkdir", e))?;
        let result = (|| {
            let provider =
                std::fs::read_to_string(dir.join("provider")).map_err(|e| io("provider", e))?;
            if provider.trim() != "tdx_guest" {
                return Err(Error::Attester(format!(
                    "configfs-tsm provider is `{}`, not tdx_guest",
                    provider.trim()
                )));
            }
            std::fs::write(dir.join("inblob"), binding.report_data())
                .map_err(|e| io("inblob", e))?;
            std::fs::read(dir.join("outblob")).map_err(|e| io("outblob", e))
        })();
        let _ = std::fs::remove_dir(&dir);
        Ok(Evidence {
            freshness: binding.freshness,
            body: Body::TdxDcap(Quote {
                quote: result?,
                collateral: read_collateral(&self.collateral)?,
            }),
        })
    }
}

/// An SGX enclave's quotes through Gramine's `/dev/attestation`.
#[derive(Debug)]
pub struct GramineSgxAttester {
    root: PathBuf,
    collateral: Option<PathBuf>,
}

impl GramineSgxAttester {
    /// Gramine's pseudo-file directory.
    pub const DEFAULT_ROOT: &'static str = "/dev/attestation";

    /// An attester over Gramine's `root`, shipping `collateral` with each quote.
    pub fn new(root: impl Into<PathBuf>, collateral: Option<PathBuf>) -> Result<Self, Error> {
        let root = root.into();
        let kind = std::fs::read_to_string(root.join("attestation_type")).map_err(|e| {
            Error::Attester(format!(
                "{}: {e}: not running in a Gramine SGX enclave with remote attestation",
                root.display()
            ))
        })?;
        if kind.trim() != "dcap" {
            return Err(Error::Attester(format!(
                "Gramine's attestation type is `{}`; asclepios needs `dcap`",
                kind.trim()
            )));
        }
        Ok(GramineSgxAttester { root, collateral })
    }
}

impl Attester for GramineSgxAttester {
    fn format(&self) -> Format {
        Format::SgxDcap
    }

    fn evidence(&self, binding: &Binding) -> Result<Evidence, Error> {
        let io = |what: &str, e: std::io::Error| {
            Error::Attester(format!("Gramine {what} ({}): {e}", self.root.display()))
        };
        std::fs::write(self.root.join("user_report_data"), binding.report_data())
            .map_err(|e| io("user_report_data", e))?;
        let quote = std::fs::read(self.root.join("quote")).map_err(|e| io("quote", e))?;
        Ok(Evidence {
            freshness: binding.freshness,
            body: Body::SgxDcap(Quote {
                quote,
                collateral: read_collateral(&self.collateral)?,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hardware_attesters_say_why_they_cannot_run_here() {
        let tmp = std::env::temp_dir().join("asclepios-no-such-attestation-dir");
        let e = TdxTsmAttester::new(&tmp, None).unwrap_err().to_string();
        assert!(e.contains("not a TDX guest"), "{e}");
        let e = GramineSgxAttester::new(&tmp, None).unwrap_err().to_string();
        assert!(e.contains("Gramine"), "{e}");
    }
}
