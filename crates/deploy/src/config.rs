//! The deployment's one TOML file. Every option has a default; paths are
//! relative to the file's directory.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::Error;

/// The whole configuration.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The deployment's name (used in the CA and the audit log origin).
    pub name: String,
    /// Where records, the directory, the index and the audit log are stored.
    pub store: StoreConfig,
    /// The key authority service.
    pub authority: ServiceConfig,
    /// The record service.
    pub records: ServiceConfig,
    /// Audit log settings.
    pub audit: AuditConfig,
    /// Break-glass settings.
    pub emergency: EmergencyConfig,
    /// How a record's policy is derived when none is given.
    pub policy: PolicyConfig,
    /// Who may search the encrypted index.
    pub search: SearchConfig,
}

/// Search settings.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SearchConfig {
    /// Attributes that allow searching (any one suffices). A search result
    /// names records, patient included, whether or not the searcher's key
    /// opens them: give it to roles that work across patients.
    pub roles: Vec<String>,
}

impl Default for SearchConfig {
    fn default() -> Self {
        SearchConfig {
            roles: vec!["role:doctor".into(), "role:nurse".into(), "role:lab".into()],
        }
    }
}

/// The store.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `sqlite://<path>` (relative to the data directory) or `postgres://...`.
    pub url: String,
    /// PostgreSQL only: the schema to keep the tables in (created if missing).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
}

/// One HTTPS service.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceConfig {
    /// Address to listen on.
    pub listen: String,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
}

/// The audit log.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// The checkpoint origin line (a unique name for the log).
    pub origin: String,
}

/// Break-glass.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmergencyConfig {
    /// How long an emergency grant lasts, in seconds.
    pub grant_seconds: u64,
}

/// Default record policies.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// The policy for a patient's records, with `{patient}` replaced by the
    /// patient's pseudonym. The emergency clause `emergency:{patient}` is
    /// always added if absent.
    pub default: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            name: "asclepios-dev".into(),
            store: StoreConfig::default(),
            authority: ServiceConfig {
                listen: "127.0.0.1:7443".into(),
                max_body_bytes: 1 << 20,
            },
            records: ServiceConfig::default(),
            audit: AuditConfig::default(),
            emergency: EmergencyConfig::default(),
            policy: PolicyConfig::default(),
            search: SearchConfig::default(),
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            url: "sqlite://asclepios.db".into(),
            schema: None,
        }
    }
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            listen: "127.0.0.1:7444".into(),
            max_body_bytes: 8 << 20,
        }
    }
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            origin: "asclepios-dev/audit".into(),
        }
    }
}

impl Default for EmergencyConfig {
    fn default() -> Self {
        EmergencyConfig {
            grant_seconds: 3600,
        }
    }
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            default:
                "patient:{patient} or care-team:{patient} or (role:doctor and consent:{patient})"
                    .into(),
        }
    }
}

/// The configuration file's name in a data directory.
pub const CONFIG_FILE: &str = "asclepios.toml";

impl Config {
    /// Reads `asclepios.toml` from a data directory.
    pub fn load(dir: &Path) -> Result<Self, Error> {
        let path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            Error::Io(format!(
                "cannot read {}: {e}; run `asclepios init --dir {}` first",
                path.display(),
                dir.display()
            ))
        })?;
        toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }

    /// The TOML text, with a comment header.
    pub fn to_toml(&self) -> Result<String, Error> {
        let body = toml::to_string_pretty(self).map_err(|e| Error::Config(e.to_string()))?;
        Ok(format!(
            "# asclepios deployment configuration. Every option has a default;\n\
             # paths are relative to this file's directory.\n\n{body}"
        ))
    }

    /// Where the store is: an absolute SQLite path or the PostgreSQL URL.
    pub fn store_location(&self, dir: &Path) -> String {
        match self.store.url.strip_prefix("sqlite://") {
            Some(path) => {
                let p = PathBuf::from(path);
                if p.is_absolute() {
                    p.display().to_string()
                } else {
                    dir.join(p).display().to_string()
                }
            }
            None => self.store.url.clone(),
        }
    }

    /// Opens the deployment's store.
    pub fn open_store(&self, dir: &Path) -> Result<asclepios_store::Store, Error> {
        let location = self.store_location(dir);
        Ok(
            if location.starts_with("postgres://") || location.starts_with("postgresql://") {
                asclepios_store::Store::open_postgres(&location, self.store.schema.as_deref(), 8)?
            } else {
                asclepios_store::Store::open(&location)?
            },
        )
    }

    /// The default policy text for a patient (with the emergency clause).
    pub fn default_policy(&self, patient: &str) -> String {
        let text = self.policy.default.replace("{patient}", patient);
        let emergency = format!("emergency:{patient}");
        if text
            .split(|c: char| c.is_whitespace() || c == '(' || c == ')' || c == ',')
            .any(|t| t == emergency)
        {
            text
        } else {
            format!("({text}) or {emergency}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_round_trip_and_unknown_keys_are_refused() {
        let c = Config::default();
        let text = c.to_toml().unwrap();
        assert_eq!(toml::from_str::<Config>(&text).unwrap(), c);
        assert!(toml::from_str::<Config>("nmae = \"typo\"").is_err());
        let partial: Config = toml::from_str("[records]\nlisten = \"0.0.0.0:9000\"").unwrap();
        assert_eq!(partial.records.max_body_bytes, 8 << 20);
        assert_eq!(partial.authority, Config::default().authority);
    }

    #[test]
    fn the_default_policy_always_carries_the_emergency_clause() {
        let c = Config::default();
        assert!(c.default_policy("pat-1").ends_with("or emergency:pat-1"));
        let mut c2 = c.clone();
        c2.policy.default = "patient:{patient} or emergency:{patient}".into();
        assert_eq!(c2.default_policy("p"), "patient:p or emergency:p");
    }
}
