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
    /// The privacy budgets of statistics.
    pub stats: StatsConfig,
    /// Remote attestation of the key authority and of components.
    pub attestation: AttestationConfig,
    /// Where the authority's sealing key comes from.
    pub seal: SealConfig,
}

/// Where the key authority's sealing key comes from. It opens the sealed
/// master secrets and the key that authenticates the authority's state, so
/// it never sits beside them: a copy of the data directory (or a backup of
/// it, or the host of a service that shares it) must open nothing.
///
/// In development it is a file outside the data directory. In a TEE it is
/// not a file at all: the enclave derives it by sealing to its measurement
/// (SGX `EGETKEY` with the MRENCLAVE policy, or a TDX key released by a key
/// broker after attestation), so only the same code on the same platform
/// can open the sealed secrets.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SealConfig {
    /// The file holding the sealing key (hex). Relative paths are relative
    /// to the data directory. Default: `<data directory>.seal.key`, beside
    /// the directory. A file inside the data directory is refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<String>,
}

/// `path` with `.` and `..` resolved without touching the file system.
fn lexical(path: &Path) -> std::path::PathBuf {
    let mut out = std::path::PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// Remote attestation. The defaults are a production deployment's: clients
/// require the authority to attest, components must attest before keys are
/// released to them, and the authority presents no evidence until its
/// hardware format is configured (so clients refuse it: configure
/// `evidence`, `collateral` and the reference values first). `asclepios
/// init` writes the development settings instead (see
/// [`AttestationConfig::development`]).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AttestationConfig {
    /// What the key authority presents in its TLS certificate: `none`,
    /// `sgx-dcap` (in a Gramine enclave), `tdx-dcap` (in a TDX guest) or
    /// `insecure-software` (development only).
    pub evidence: String,
    /// PCCS collateral (JSON) shipped with hardware quotes, refreshed by the
    /// operator; relative to the data directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub collateral: Option<String>,
    /// Clients refuse an authority whose attestation fails `policy`.
    pub require: bool,
    /// The clients' reference values for the authority (a policy TOML file).
    pub policy: String,
    /// How long the authority's attested TLS certificate is valid, in
    /// seconds; it is renewed with fresh evidence at half that.
    pub certificate_seconds: u64,
    /// Components must attest before the authority releases keys to them.
    pub require_components: bool,
    /// Directory kinds that are components.
    pub component_kinds: Vec<String>,
    /// Reference values for components (a policy TOML file).
    pub component_policy: String,
    /// How long a component's registration holds, in seconds.
    pub registration_seconds: u64,
}

impl Default for AttestationConfig {
    fn default() -> Self {
        AttestationConfig {
            evidence: "none".into(),
            collateral: None,
            require: true,
            policy: "attestation-policy.toml".into(),
            certificate_seconds: 86_400,
            require_components: true,
            component_kinds: vec!["device".into()],
            component_policy: "component-policy.toml".into(),
            registration_seconds: 86_400,
        }
    }
}

impl AttestationConfig {
    /// A development deployment's settings: the authority presents
    /// insecure-software evidence, and nobody is required to attest (both
    /// printed loudly by the services and the CLI).
    pub fn development() -> Self {
        AttestationConfig {
            evidence: "insecure-software".into(),
            require: false,
            require_components: false,
            ..Default::default()
        }
    }
}

/// Search settings.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SearchConfig {
    /// Attributes that allow searching (any one suffices). A search covers
    /// the searcher's circle only: the patients whose `patient:`,
    /// `care-team:`, `consent:` or live `emergency:` attribute it holds.
    pub roles: Vec<String>,
    /// Attributes whose holders search every patient's records (e.g.
    /// `role:registry`); each patient such a search reaches sees it in
    /// their access list. Holders also need one of `roles`. None by default.
    pub cross_patient_roles: Vec<String>,
}

impl Default for SearchConfig {
    fn default() -> Self {
        SearchConfig {
            roles: vec!["role:doctor".into(), "role:nurse".into(), "role:lab".into()],
            cross_patient_roles: Vec::new(),
        }
    }
}

/// The privacy budgets of statistics: each released aggregate spends ε 1
/// of every person it covers (`asclepios_api::stats::RELEASE_EPSILON`).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StatsConfig {
    /// The ε one study may spend on any one person.
    pub study_budget: u32,
    /// The ε all studies together may spend on any one person.
    pub population_budget: u32,
}

impl Default for StatsConfig {
    fn default() -> Self {
        StatsConfig {
            study_budget: asclepios_api::stats::STUDY_BUDGET as u32,
            population_budget: asclepios_api::stats::POPULATION_BUDGET as u32,
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

impl StoreConfig {
    /// The store's URL for printing: a PostgreSQL password (in the user
    /// part or a `password=` parameter) is replaced by `***`.
    pub fn shown(&self) -> String {
        asclepios_store::redact_url(&self.url)
    }
}

/// One HTTPS service.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceConfig {
    /// Address to listen on.
    pub listen: String,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// The service's own TLS name: its certificate carries it, and clients
    /// check the certificate against it whatever address they dial, so no
    /// other service of the deployment can pose as this one. The two
    /// services' names must differ (checked on load).
    pub tls_name: String,
    /// Further DNS names and IP addresses in its certificate (for tools such
    /// as curl that check the name they dialled).
    pub names: Vec<String>,
    /// What one identity may ask of the service before it is answered 429
    /// (`Retry-After`), and how much heavy work runs at once.
    pub limits: RequestLimits,
    /// Identities that may read `/metrics` (e.g. a Prometheus scraper's);
    /// none by default.
    pub metrics_readers: Vec<String>,
}

/// Admission limits of one service (see
/// [`asclepios_net::admission::AdmissionLimits`]).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RequestLimits {
    /// Requests one identity may have in flight.
    pub in_flight_per_identity: usize,
    /// Requests per second one identity may send, sustained.
    pub per_second_per_identity: u32,
    /// Requests one identity may send at once after a quiet spell.
    pub burst_per_identity: u32,
    /// Heavy requests (key generation, writes, re-wraps) running at once;
    /// 0: half the cores, at least one.
    pub heavy_at_once: usize,
    /// Heavy requests waiting for their turn; one more is answered 429.
    pub heavy_waiting: usize,
}

impl Default for RequestLimits {
    fn default() -> Self {
        let d = asclepios_net::admission::AdmissionLimits::default();
        RequestLimits {
            in_flight_per_identity: d.in_flight_per_identity,
            per_second_per_identity: d.rate_per_identity as u32,
            burst_per_identity: d.burst_per_identity as u32,
            heavy_at_once: 0,
            heavy_waiting: d.heavy_queue,
        }
    }
}

impl RequestLimits {
    /// The limits as admission applies them.
    pub fn admission(&self) -> asclepios_net::admission::AdmissionLimits {
        let d = asclepios_net::admission::AdmissionLimits::default();
        asclepios_net::admission::AdmissionLimits {
            in_flight_per_identity: self.in_flight_per_identity.max(1),
            rate_per_identity: f64::from(self.per_second_per_identity.max(1)),
            burst_per_identity: f64::from(self.burst_per_identity.max(1)),
            heavy_slots: if self.heavy_at_once == 0 {
                d.heavy_slots
            } else {
                self.heavy_at_once
            },
            heavy_queue: self.heavy_waiting,
        }
    }
}

impl ServiceConfig {
    /// Every name its certificate carries: the TLS name first.
    pub fn certificate_names(&self) -> Vec<&str> {
        std::iter::once(self.tls_name.as_str())
            .chain(self.names.iter().map(String::as_str))
            .collect()
    }
}

/// The key authority's default TLS name (`.internal` is reserved for
/// private use and never resolves publicly).
pub const AUTHORITY_TLS_NAME: &str = "authority.asclepios.internal";
/// The record service's default TLS name.
pub const RECORDS_TLS_NAME: &str = "records.asclepios.internal";

fn local_names() -> Vec<String> {
    vec!["localhost".into(), "127.0.0.1".into(), "::1".into()]
}

/// The audit log.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// The checkpoint origin line (a unique name for the log).
    pub origin: String,
    /// Independent witnesses, besides the key authority's, that are asked
    /// to cosign every checkpoint (`asclepios witness`).
    pub witnesses: Vec<WitnessRef>,
    /// How many of the witnesses (the key authority's and those listed)
    /// must have cosigned a checkpoint before a log serves it or a client
    /// accepts it; all of them when unset.
    pub quorum: Option<usize>,
}

impl AuditConfig {
    /// The quorum among `witnesses` witnesses: `quorum`, or all of them.
    pub fn witness_quorum(&self, witnesses: usize) -> Result<usize, String> {
        asclepios_audit::WitnessPolicy::quorum_of(self.quorum, witnesses)
    }
}

/// An independent witness of the audit logs.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessRef {
    /// Its `tlog-witness` submission prefix, e.g. `http://witness.example:7380`.
    pub url: String,
    /// Its cosigning key (C2SP vkey, type 0x04: its `witness.pub`).
    pub key: String,
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
                tls_name: AUTHORITY_TLS_NAME.into(),
                names: local_names(),
                limits: RequestLimits::default(),
                metrics_readers: Vec::new(),
            },
            records: ServiceConfig::default(),
            audit: AuditConfig::default(),
            emergency: EmergencyConfig::default(),
            policy: PolicyConfig::default(),
            search: SearchConfig::default(),
            stats: StatsConfig::default(),
            attestation: AttestationConfig::default(),
            seal: SealConfig::default(),
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
            tls_name: RECORDS_TLS_NAME.into(),
            names: local_names(),
            limits: RequestLimits::default(),
            metrics_readers: Vec::new(),
        }
    }
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            origin: "asclepios-dev/audit".into(),
            witnesses: Vec::new(),
            quorum: None,
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
    /// The configuration `asclepios init` writes: the defaults, with
    /// development attestation settings.
    pub fn development() -> Self {
        Config {
            attestation: AttestationConfig::development(),
            ..Config::default()
        }
    }

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
        let config: Config =
            toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        config
            .check()
            .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        Ok(config)
    }

    /// Refuses settings that would let one service pose as the other: a
    /// record-service certificate that names the authority (or the reverse)
    /// would pass a client's check for the wrong service.
    pub fn check(&self) -> Result<(), String> {
        let (a, r) = (&self.authority, &self.records);
        if a.tls_name.is_empty() || r.tls_name.is_empty() {
            return Err("`tls_name` must be set for [authority] and [records]".into());
        }
        if a.tls_name.parse::<std::net::IpAddr>().is_ok()
            || r.tls_name.parse::<std::net::IpAddr>().is_ok()
        {
            return Err("`tls_name` is a DNS name, not an address".into());
        }
        if a.tls_name.eq_ignore_ascii_case(&r.tls_name)
            || r.names.iter().any(|n| n.eq_ignore_ascii_case(&a.tls_name))
            || a.names.iter().any(|n| n.eq_ignore_ascii_case(&r.tls_name))
        {
            return Err(format!(
                "the authority's TLS name `{}` and the record service's `{}` must be distinct, \
                 and neither may appear among the other's `names`",
                a.tls_name, r.tls_name
            ));
        }
        let sample = "pat-00000";
        let policy = asclepios_crypto::Policy::parse(&self.default_policy(sample))
            .map_err(|e| format!("[policy] default: {e}"))?;
        for alone in ["patient", "emergency"] {
            let required = format!("{alone}:{sample}");
            if !policy.is_satisfied_by(&|a| asclepios_crypto::policy::attribute_name(a) == required)
            {
                return Err(format!(
                    "[policy] default must let `{alone}:{{patient}}` alone read a record (e.g. `{alone}:{{patient}} or ...`): the record service refuses writes that lock it out"
                ));
            }
        }
        if self.stats.study_budget == 0 || self.stats.population_budget < self.stats.study_budget {
            return Err(
                "[stats] needs study_budget of 1 or more and population_budget of at least study_budget"
                    .into(),
            );
        }
        Ok(())
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

    /// The file the authority's sealing key is in: `[seal] key_file`, or
    /// `<dir>.seal.key` beside the data directory. Refused if it lies inside
    /// the data directory. Works before the directory exists (`init`).
    pub fn seal_key_file(&self, dir: &Path) -> Result<std::path::PathBuf, Error> {
        let data = lexical(
            &std::path::absolute(dir).map_err(|e| Error::Io(format!("{}: {e}", dir.display())))?,
        );
        let path = match &self.seal.key_file {
            Some(file) => lexical(&data.join(file)),
            None => {
                let name = data.file_name().ok_or_else(|| {
                    Error::Config(format!(
                        "{}: a data directory needs a name (the sealing key goes beside it)",
                        dir.display()
                    ))
                })?;
                data.with_file_name(format!("{}.seal.key", name.to_string_lossy()))
            }
        };
        // By name, and where both exist, by where they really are (a
        // symbolic link or another name of the same directory).
        let inside = path.starts_with(&data)
            || match (data.canonicalize(), path.parent().map(Path::canonicalize)) {
                (Ok(d), Some(Ok(p))) => p.starts_with(d),
                _ => false,
            };
        if inside {
            return Err(Error::Config(format!(
                "the sealing key {} lies inside the data directory {}: keep it outside ([seal] key_file)",
                path.display(),
                dir.display()
            )));
        }
        Ok(path)
    }

    /// The authority's integrity anchor: beside its sealing key, outside the
    /// data directory and the database (`<seal key file>` with `.anchor`).
    pub fn integrity_anchor_file(&self, dir: &Path) -> Result<std::path::PathBuf, Error> {
        Ok(self.seal_key_file(dir)?.with_extension("anchor"))
    }

    /// Opens the deployment's store as the key authority uses it: its state
    /// authenticated under the authority's integrity key and anchored on its
    /// host (see [`asclepios_store::Store::with_integrity`]). Tampering
    /// found now is an error.
    pub fn open_authority_store(&self, dir: &Path) -> Result<asclepios_store::Store, Error> {
        Ok(self.open_store(dir)?.with_integrity(
            crate::keys::integrity_key(dir)?,
            Some(self.integrity_anchor_file(dir)?),
        )?)
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
    fn store_passwords_are_never_shown() {
        for (url, shown) in [
            (
                "postgres://app:s3cret@db:5432/x",
                "postgres://app:***@db:5432/x",
            ),
            (
                "postgres://app@db/x?password=s3cret&x=1",
                "postgres://app@db/x?password=***&x=1",
            ),
            (
                "host=db user=app password=s3cret dbname=x",
                "host=db user=app password=*** dbname=x",
            ),
            ("sqlite://asclepios.db", "sqlite://asclepios.db"),
        ] {
            let c = StoreConfig {
                url: url.into(),
                schema: None,
            };
            assert_eq!(c.shown(), shown);
        }
    }

    #[test]
    fn the_services_must_have_distinct_tls_names() {
        assert!(Config::default().check().is_ok());
        let mut same = Config::default();
        same.records.tls_name = same.authority.tls_name.clone();
        assert!(same.check().is_err());
        let mut borrowed = Config::default();
        borrowed
            .records
            .names
            .push(AUTHORITY_TLS_NAME.to_ascii_uppercase());
        assert!(borrowed.check().is_err());
        // An [authority] section without `tls_name` must not silently take
        // the record service's default.
        let partial: Config = toml::from_str("[authority]\nlisten = \"127.0.0.1:1\"").unwrap();
        assert!(partial.check().is_err(), "{:?}", partial.authority); // A default policy that locks the patient out of their records.
        let mut locked = Config::default();
        locked.policy.default = "patient:{patient} and role:doctor".into();
        assert!(locked.check().unwrap_err().contains("alone read"));
        assert!(Config::default().check().is_ok());
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
