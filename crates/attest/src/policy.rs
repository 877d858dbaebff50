//! Reference values and the appraisal of evidence against them.
//!
//! A policy is a TOML file:
//!
//! ```toml
//! # Formats this relying party accepts. Leave out "insecure-software" in
//! # production: a policy without it refuses development evidence.
//! formats = ["sgx-dcap", "tdx-dcap"]
//! # The lowest TCB status accepted; anything above "UpToDate" is a warning.
//! min_tcb_status = "SWHardeningNeeded"
//! allow_debug = false
//! max_evidence_age_seconds = 86400
//!
//! [[reference]]
//! name = "key authority 1.4.2"
//! format = "sgx-dcap"
//! measurement = "<MRENCLAVE, hex>"
//! signer = "<MRSIGNER, hex>"      # optional for SGX, required for insecure-software
//! min_isv_svn = 3                 # optional, SGX
//! ```
//!
//! The appraisal follows the trustworthiness tiers of the RATS attestation
//! results draft (AR4SI): *affirming*, *warning* (acceptable, with reasons a
//! human should see), *contraindicated* (refused, with every reason found).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::evidence::{Binding, Body, Claims, Evidence, Format, Freshness};
use crate::{dcap, software, Error};

/// Intel's TCB statuses, best first.
pub const TCB_STATUSES: [&str; 7] = [
    "UpToDate",
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
    "OutOfDate",
    "OutOfDateConfigurationNeeded",
    "Revoked",
];

/// How far into the future an issued-at time may lie (clock skew).
pub const MAX_CLOCK_SKEW_SECONDS: u64 = 300;

fn tcb_rank(status: &str) -> Option<usize> {
    TCB_STATUSES.iter().position(|s| *s == status)
}

/// One accepted measurement.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reference {
    /// A label for people (shown in appraisals).
    #[serde(default)]
    pub name: String,
    /// The format this measurement is in.
    pub format: Format,
    /// MRENCLAVE, MRTD or software measurement, hex.
    pub measurement: String,
    /// MRSIGNER or the development signer key, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer: Option<String>,
    /// The lowest enclave security version accepted (SGX).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_isv_svn: Option<u16>,
}

/// A relying party's attestation policy.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Formats accepted.
    pub formats: Vec<Format>,
    /// The lowest TCB status accepted (DCAP).
    #[serde(default = "default_min_tcb")]
    pub min_tcb_status: String,
    /// Whether debug enclaves and trust domains are accepted (never in production).
    #[serde(default)]
    pub allow_debug: bool,
    /// The oldest issued-at evidence accepted, in seconds.
    #[serde(default = "default_max_age")]
    pub max_evidence_age_seconds: u64,
    /// Accepted measurements.
    #[serde(default)]
    pub reference: Vec<Reference>,
}

fn default_min_tcb() -> String {
    "UpToDate".into()
}

fn default_max_age() -> u64 {
    86_400
}

fn hex_field(what: &str, text: &str, lens: &[usize]) -> Result<Vec<u8>, Error> {
    let bytes = hex::decode(text.trim())
        .map_err(|e| Error::Policy(format!("{what} `{text}` is not hex: {e}")))?;
    if !lens.contains(&bytes.len()) {
        return Err(Error::Policy(format!(
            "{what} `{text}` has {} bytes; expected {lens:?}",
            bytes.len()
        )));
    }
    Ok(bytes)
}

fn measurement_len(format: Format) -> usize {
    match format {
        Format::TdxDcap => 48,
        Format::SgxDcap | Format::InsecureSoftware => 32,
    }
}

impl Policy {
    /// Reads and checks a policy from TOML text.
    pub fn from_toml(text: &str) -> Result<Self, Error> {
        let policy: Policy = toml::from_str(text).map_err(|e| Error::Policy(e.to_string()))?;
        policy.check()?;
        Ok(policy)
    }

    /// The TOML text of this policy.
    pub fn to_toml(&self) -> Result<String, Error> {
        toml::to_string_pretty(self).map_err(|e| Error::Policy(e.to_string()))
    }

    /// Whether this policy refuses evidence without a hardware root of trust.
    pub fn requires_hardware(&self) -> bool {
        self.formats.iter().all(|f| f.is_hardware())
    }

    fn check(&self) -> Result<(), Error> {
        if self.formats.is_empty() {
            return Err(Error::Policy("`formats` lists no format".into()));
        }
        if tcb_rank(&self.min_tcb_status).is_none_or(|r| r == TCB_STATUSES.len() - 1) {
            return Err(Error::Policy(format!(
                "min_tcb_status `{}`: use one of {:?}",
                self.min_tcb_status,
                &TCB_STATUSES[..TCB_STATUSES.len() - 1]
            )));
        }
        for r in &self.reference {
            let what = format!("reference `{}`", r.name);
            if !self.formats.contains(&r.format) {
                return Err(Error::Policy(format!(
                    "{what} is in {}, which `formats` does not accept",
                    r.format.name()
                )));
            }
            hex_field(
                &format!("{what}: measurement"),
                &r.measurement,
                &[measurement_len(r.format)],
            )?;
            match (&r.signer, r.format) {
                (None, Format::InsecureSoftware) => {
                    return Err(Error::Policy(format!(
                        "{what}: insecure-software references must name their signer key"
                    )))
                }
                (Some(_), Format::TdxDcap) => {
                    return Err(Error::Policy(format!(
                        "{what}: TDX references have no signer; pin MRTD alone"
                    )))
                }
                (Some(s), _) => {
                    hex_field(&format!("{what}: signer"), s, &[32])?;
                }
                (None, _) => {}
            }
        }
        Ok(())
    }

    fn matching_reference(&self, claims: &Claims) -> Result<&Reference, String> {
        let measurement = hex::encode(&claims.measurement);
        let mut near = None;
        for r in self.reference.iter().filter(|r| r.format == claims.format) {
            if !r.measurement.trim().eq_ignore_ascii_case(&measurement) {
                continue;
            }
            if let Some(signer) = &r.signer {
                let actual = claims.signer.as_deref().map(hex::encode);
                if actual.as_deref().map(str::to_ascii_lowercase)
                    != Some(signer.trim().to_ascii_lowercase())
                {
                    near = Some(format!(
                        "measurement matches reference `{}` but the signer {} is not {signer}",
                        r.name,
                        actual.unwrap_or_else(|| "(none)".into())
                    ));
                    continue;
                }
            }
            if let (Some(min), Some(svn)) = (r.min_isv_svn, claims.isv_svn) {
                if svn < min {
                    near = Some(format!(
                        "measurement matches reference `{}` but ISV SVN {svn} is below {min}",
                        r.name
                    ));
                    continue;
                }
            }
            return Ok(r);
        }
        Err(near.unwrap_or_else(|| {
            format!(
                "measurement {measurement} is not among the policy's {} reference value(s)",
                claims.format.name()
            )
        }))
    }
}

/// What the relying party expects the evidence to bind.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Expected {
    /// SHA-256 of the SubjectPublicKeyInfo of the key the verifier is
    /// talking to (the TLS peer's). `None` only for a look at evidence
    /// outside any connection, and then the appraisal says the binding was
    /// not checked.
    pub key_sha256: Option<[u8; 32]>,
    /// The nonce the verifier sent, if the flow has one. Without one the
    /// evidence must carry an issued-at time within the policy's age.
    pub nonce: Option<[u8; 32]>,
}

/// The AR4SI trustworthiness tier of an appraisal.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Trust {
    /// Every check passed.
    Affirming,
    /// Acceptable, with reasons a person should see.
    Warning,
    /// Refused.
    Contraindicated,
}

impl fmt::Display for Trust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Trust::Affirming => "affirming",
            Trust::Warning => "warning",
            Trust::Contraindicated => "contraindicated",
        })
    }
}

/// The verdict on one piece of evidence.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Appraisal {
    /// The tier.
    pub trust: Trust,
    /// Why it is contraindicated (empty otherwise).
    pub problems: Vec<String>,
    /// What a person should know even when it is accepted.
    pub warnings: Vec<String>,
    /// What the evidence says, when its signature chain verified.
    pub claims: Option<Claims>,
    /// The reference value it matched.
    pub reference: Option<String>,
    /// The evidence's format, when it decoded.
    pub format: Option<Format>,
}

impl Appraisal {
    /// Whether the relying party may go on.
    pub fn is_acceptable(&self) -> bool {
        self.trust != Trust::Contraindicated
    }

    pub(crate) fn refused(format: Option<Format>, problem: String) -> Self {
        Appraisal {
            trust: Trust::Contraindicated,
            problems: vec![problem],
            warnings: Vec::new(),
            claims: None,
            reference: None,
            format,
        }
    }

    /// One line: the tier and its reasons.
    pub fn summary(&self) -> String {
        let reasons: Vec<&str> = self
            .problems
            .iter()
            .chain(&self.warnings)
            .map(String::as_str)
            .collect();
        let format = self.format.map(|f| f.name()).unwrap_or("undecodable");
        if reasons.is_empty() {
            format!("{} ({format})", self.trust)
        } else {
            format!("{} ({format}): {}", self.trust, reasons.join("; "))
        }
    }
}

impl fmt::Display for Appraisal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "appraisal: {}", self.trust)?;
        if let Some(format) = self.format {
            writeln!(f, "format:    {format}")?;
        }
        if let Some(c) = &self.claims {
            writeln!(f, "measurement: {}", hex::encode(&c.measurement))?;
            if let Some(s) = &c.signer {
                writeln!(f, "signer:      {}", hex::encode(s))?;
            }
            if let Some(svn) = c.isv_svn {
                writeln!(f, "isv_svn:     {svn}")?;
            }
            if let Some(t) = &c.tcb_status {
                writeln!(f, "tcb_status:  {t}")?;
            }
            if !c.advisory_ids.is_empty() {
                writeln!(f, "advisories:  {}", c.advisory_ids.join(", "))?;
            }
            writeln!(f, "debug:       {}", c.debug)?;
            writeln!(
                f,
                "bound key:   sha256:{}",
                hex::encode(&c.report_data[..32])
            )?;
            for (k, v) in &c.details {
                writeln!(f, "{k}: {v}")?;
            }
        }
        if let Some(r) = &self.reference {
            writeln!(f, "reference: {r}")?;
        }
        for p in &self.problems {
            writeln!(f, "refused because: {p}")?;
        }
        for w in &self.warnings {
            writeln!(f, "warning: {w}")?;
        }
        Ok(())
    }
}

/// Appraises encoded evidence: decodes it, verifies its signature chain
/// (with `collateral` JSON if given, else the evidence's own), checks that
/// it binds the expected key and freshness, and compares its claims to the
/// policy. Never fails: what goes wrong is a reason in the appraisal.
pub fn appraise(
    evidence: &[u8],
    expected: &Expected,
    policy: &Policy,
    now: u64,
    collateral: Option<&str>,
) -> Appraisal {
    match Evidence::from_bytes(evidence) {
        Ok(e) => appraise_evidence(&e, expected, policy, now, collateral),
        Err(err) => Appraisal::refused(None, format!("the evidence does not decode: {err}")),
    }
}

/// [`appraise`] for decoded evidence.
pub fn appraise_evidence(
    evidence: &Evidence,
    expected: &Expected,
    policy: &Policy,
    now: u64,
    collateral: Option<&str>,
) -> Appraisal {
    let format = evidence.format();
    if !policy.formats.contains(&format) {
        let why = if !format.is_hardware() && policy.requires_hardware() {
            "insecure-software evidence is refused: this policy requires hardware \
             (sgx-dcap or tdx-dcap)"
                .to_string()
        } else {
            format!("this policy does not accept {} evidence", format.name())
        };
        return Appraisal::refused(Some(format), why);
    }
    let claims = match verify_claims(evidence, policy, now, collateral) {
        Ok(c) => c,
        Err(e) => return Appraisal::refused(Some(format), e.to_string()),
    };
    let mut problems = Vec::new();
    let mut warnings = Vec::new();

    // The binding: the key first (an RA-TLS relay is the attack that matters).
    let bound_key: [u8; 32] = claims.report_data[..32].try_into().unwrap_or([0; 32]);
    match expected.key_sha256 {
        Some(k) if k != bound_key => problems.push(
            "the evidence is bound to another TLS key than the one this connection uses".into(),
        ),
        Some(_) => {}
        None => warnings.push(format!(
            "the key binding was not checked: the evidence names key sha256:{}",
            hex::encode(bound_key)
        )),
    }
    if claims.report_data
        != (Binding {
            key_sha256: bound_key,
            freshness: evidence.freshness,
        })
        .report_data()
    {
        problems.push("the report data does not commit to the evidence's freshness claim".into());
    }
    match (expected.nonce, evidence.freshness) {
        (Some(n), Freshness::Nonce(got)) if n == got => {}
        (Some(_), Freshness::Nonce(_)) => {
            problems.push("the evidence answers another nonce (a replay?)".into())
        }
        (Some(_), Freshness::IssuedAt(_)) => {
            problems.push("a nonce was sent but the evidence carries none (a replay?)".into())
        }
        (None, Freshness::Nonce(_)) => problems.push(
            "the evidence answers a nonce this verifier did not send; its age is unknown".into(),
        ),
        (None, Freshness::IssuedAt(t)) => {
            if t > now.saturating_add(MAX_CLOCK_SKEW_SECONDS) {
                problems.push(format!("the evidence is dated {} s in the future", t - now));
            } else if now.saturating_sub(t) > policy.max_evidence_age_seconds {
                problems.push(format!(
                    "the evidence is {} s old; the policy accepts at most {} s",
                    now - t,
                    policy.max_evidence_age_seconds
                ));
            }
        }
    }

    if claims.debug {
        if policy.allow_debug {
            warnings.push("debug mode: the attested memory is readable from outside".into());
        } else {
            problems.push("debug mode is forbidden by the policy".into());
        }
    }
    if let Some(status) = &claims.tcb_status {
        match (tcb_rank(status), tcb_rank(&policy.min_tcb_status)) {
            (Some(r), Some(min)) if r <= min => {
                if r > 0 {
                    warnings.push(format!(
                        "TCB status {status} (advisories: {})",
                        if claims.advisory_ids.is_empty() {
                            "none".into()
                        } else {
                            claims.advisory_ids.join(", ")
                        }
                    ));
                }
            }
            _ => problems.push(format!(
                "TCB status {status} is below the policy's minimum {}",
                policy.min_tcb_status
            )),
        }
    }
    let reference = match policy.matching_reference(&claims) {
        Ok(r) => Some(if r.name.is_empty() {
            r.measurement.clone()
        } else {
            r.name.clone()
        }),
        Err(why) => {
            problems.push(why);
            None
        }
    };
    if !format.is_hardware() {
        warnings.push(
            "insecure-software evidence: a locally signed measurement, no hardware root \
             of trust; development only"
                .into(),
        );
    }
    let trust = if !problems.is_empty() {
        Trust::Contraindicated
    } else if !warnings.is_empty() {
        Trust::Warning
    } else {
        Trust::Affirming
    };
    Appraisal {
        trust,
        problems,
        warnings,
        claims: Some(claims),
        reference,
        format: Some(format),
    }
}

/// Verifies the evidence's signature chain and returns its claims.
fn verify_claims(
    evidence: &Evidence,
    policy: &Policy,
    now: u64,
    collateral: Option<&str>,
) -> Result<Claims, Error> {
    match &evidence.body {
        Body::SgxDcap(q) | Body::TdxDcap(q) => {
            let json = collateral.or(q.collateral.as_deref()).ok_or_else(|| {
                Error::Verify(
                    "no collateral: the evidence carries none; supply the PCCS collateral \
                     (--collateral)"
                        .into(),
                )
            })?;
            dcap::verify(
                &q.quote,
                evidence.format(),
                &dcap::parse_collateral(json)?,
                now,
                policy.allow_debug,
            )
        }
        Body::InsecureSoftware(r) => {
            software::verify(r)?;
            Ok(Claims {
                format: Format::InsecureSoftware,
                measurement: software::measurement(&r.binary_sha256, &r.config_sha256).to_vec(),
                signer: Some(r.signer.to_vec()),
                isv_svn: None,
                tcb_status: None,
                advisory_ids: Vec::new(),
                debug: false,
                report_data: r.report_data,
                details: vec![
                    ("binary_sha256", hex::encode(r.binary_sha256)),
                    ("config_sha256", hex::encode(r.config_sha256)),
                ],
            })
        }
    }
}
