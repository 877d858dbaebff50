//! `asclepios attest ...`: appraise evidence (a file or a running key
//! authority), register a component, write development reference values.
//!
//! `verify` exit status: 0 only when the appraisal is affirming, 3 when it
//! is a warning (acceptable, with reasons a person must read: a script that
//! checks for success must not take a warning for one), 1 when it is
//! contraindicated, 2 when the input cannot be used.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{anyhow, Context};
use asclepios_attest::policy::{appraise, Appraisal, Expected, Policy, Trust};
use asclepios_attest::ratls::AttestingVerifier;
use asclepios_deploy::Config;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use clap::Subcommand;

use crate::platform::{connect, runtime, AsArg};

#[derive(Subcommand, Debug)]
pub enum AttestCommand {
    /// Appraise attestation evidence against reference values and print the verdict:
    /// affirming, warning or contraindicated, with every reason.
    ///
    /// TARGET is a file holding an evidence envelope (binary or base64), or the URL of a
    /// key authority (https://localhost:7443): its TLS certificate's evidence is checked
    /// against the certificate's own key and, with --as, a fresh challenge is answered
    /// too (and the verdict is audited).
    ///
    /// Example: asclepios attest verify --dir d https://localhost:7443
    /// Exit status: 0 affirming, 3 warning (e.g. development evidence), 1 contraindicated,
    /// 2 unusable input.
    Verify {
        /// Evidence file or https:// URL of a key authority.
        target: String,
        /// Reference values (TOML) [default: the deployment's attestation policy]
        #[arg(long)]
        policy: Option<PathBuf>,
        /// Intel collateral (PCCS JSON) to verify a DCAP quote with, instead of the
        /// evidence's own.
        #[arg(long)]
        collateral: Option<PathBuf>,
        /// Verify as of this time (Unix seconds) [default: now].
        #[arg(long)]
        at: Option<u64>,
        /// For a file: the nonce the evidence must answer (64 hex digits).
        #[arg(long)]
        nonce: Option<String>,
        /// For a file: SHA-256 of the SubjectPublicKeyInfo the evidence must bind (hex).
        #[arg(long)]
        key_sha256: Option<String>,
        /// For a URL: also challenge the authority as this identity.
        #[arg(long = "as", value_name = "ID")]
        identity: Option<String>,
    },
    /// Attest this component (e.g. a lab device) to the key authority: answer its
    /// challenge with evidence bound to the identity's certificate key. Keys are released
    /// to components only while a registration holds (attestation.require_components).
    ///
    /// Example: asclepios attest register --dir d --as lab-central
    Register {
        #[command(flatten)]
        who: AsArg,
        /// Evidence to present: insecure-software, sgx-dcap or tdx-dcap
        /// [default: the deployment's attestation.evidence]
        #[arg(long)]
        evidence: Option<String>,
    },
    /// Write development reference values (insecure-software) for this binary and the
    /// deployment's current asclepios.toml, into both policy files. Run it after
    /// rebuilding or editing the configuration: the measurement covers both.
    DevPolicy,
}

fn policy_from(dir: &Path, file: Option<&PathBuf>) -> anyhow::Result<Policy> {
    match file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            Ok(Policy::from_toml(&text).with_context(|| path.display().to_string())?)
        }
        None => {
            let config = Config::load(dir)?;
            Ok(asclepios_deploy::attestation::authority_policy(
                dir, &config,
            )?)
        }
    }
}

fn hex32(what: &str, text: &str) -> anyhow::Result<[u8; 32]> {
    hex::decode(text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| anyhow!("{what}: 64 hex digits"))
}

/// Evidence bytes from a file: the binary envelope, or base64 of it.
fn read_evidence(path: &Path) -> anyhow::Result<Vec<u8>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if bytes.starts_with(&asclepios_crypto::format::MAGIC) {
        return Ok(bytes);
    }
    let text: String = String::from_utf8_lossy(&bytes)
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    B64.decode(text.as_bytes()).map_err(|_| {
        anyhow!(
            "{}: neither an evidence envelope nor base64 of one",
            path.display()
        )
    })
}

pub fn run(dir: &Path, command: AttestCommand) -> ExitCode {
    let result = match command {
        AttestCommand::Verify {
            target,
            policy,
            collateral,
            at,
            nonce,
            key_sha256,
            identity,
        } => verify(
            dir,
            &target,
            policy.as_ref(),
            collateral.as_ref(),
            at,
            nonce.as_deref(),
            key_sha256.as_deref(),
            identity,
        ),
        AttestCommand::Register { who, evidence } => register(dir, &who, evidence),
        AttestCommand::DevPolicy => dev_policy(dir),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// `verify`'s exit status for a warning.
pub const EXIT_WARNING: u8 = 3;

fn verdict(appraisal: &Appraisal) -> ExitCode {
    print!("{appraisal}");
    match appraisal.trust {
        Trust::Affirming => ExitCode::SUCCESS,
        Trust::Warning => ExitCode::from(EXIT_WARNING),
        Trust::Contraindicated => ExitCode::from(1),
    }
}

#[allow(clippy::too_many_arguments)]
fn verify(
    dir: &Path,
    target: &str,
    policy: Option<&PathBuf>,
    collateral: Option<&PathBuf>,
    at: Option<u64>,
    nonce: Option<&str>,
    key_sha256: Option<&str>,
    identity: Option<String>,
) -> anyhow::Result<ExitCode> {
    let policy = policy_from(dir, policy)?;
    let collateral = collateral
        .map(|p| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display())))
        .transpose()?;
    let now = at.unwrap_or_else(asclepios_attest::unix_now);
    if let Some(url) = target.strip_prefix("https://") {
        return verify_url(dir, url, policy, identity);
    }
    let evidence = read_evidence(Path::new(target))?;
    let expected = Expected {
        key_sha256: key_sha256.map(|k| hex32("--key-sha256", k)).transpose()?,
        nonce: nonce.map(|n| hex32("--nonce", n)).transpose()?,
    };
    Ok(verdict(&appraise(
        &evidence,
        &expected,
        &policy,
        now,
        collateral.as_deref(),
    )))
}

/// Connects to a key authority and appraises its certificate (and, as an
/// identity, a fresh challenge).
fn verify_url(
    dir: &Path,
    authority: &str,
    policy: Policy,
    identity: Option<String>,
) -> anyhow::Result<ExitCode> {
    let base = format!("https://{}", authority.trim_end_matches('/'));
    if let Some(id) = identity {
        let who = AsArg { identity: id };
        let client = connect_for(dir, &who, &base)?;
        let appraisal = runtime()?.block_on(client.attest_authority())?;
        println!("(challenge answered; verdict logged by the record service)");
        return Ok(verdict(&appraisal));
    }
    let ca = std::fs::read_to_string(dir.join("pki/ca.pem"))
        .with_context(|| format!("reading the deployment CA in {}", dir.display()))?;
    let verifier = Arc::new(AttestingVerifier::new(
        asclepios_net::tls::server_verifier(&ca)?,
        policy,
        false,
    ));
    let host = authority
        .rsplit_once(':')
        .map(|(h, _)| h)
        .unwrap_or(authority)
        .trim_matches(['[', ']'])
        .to_string();
    let config = asclepios_net::tls::anonymous_client_config_with_verifier(verifier.clone())?;
    runtime()?.block_on(async {
        let tcp = tokio::net::TcpStream::connect(authority)
            .await
            .with_context(|| format!("connecting to {authority}"))?;
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|e| anyhow!("{host}: {e}"))?;
        // The authority asks for a client certificate and ends the
        // handshake without one; its certificate was appraised by then.
        let _ = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await;
        anyhow::Ok(())
    })?;
    let seen = verifier.last().ok_or_else(|| {
        anyhow!("{authority} presented no certificate that chains to the deployment CA")
    })?;
    println!("certificate key: sha256:{}", hex::encode(seen.key_sha256));
    Ok(verdict(&seen.appraisal))
}

fn connect_for(
    dir: &Path,
    who: &AsArg,
    authority: &str,
) -> anyhow::Result<asclepios_client::Client> {
    let config = Config::load(dir)?;
    Ok(asclepios_client::Client::connect(
        dir,
        &who.identity,
        authority,
        &format!(
            "https://{}",
            config.records.listen.replace("127.0.0.1", "localhost")
        ),
    )?)
}

fn register(dir: &Path, who: &AsArg, evidence: Option<String>) -> anyhow::Result<ExitCode> {
    let config = Config::load(dir)?;
    let name = evidence.unwrap_or_else(|| config.attestation.evidence.clone());
    let attester = asclepios_deploy::attestation::attester_named(dir, &config, &name)?
        .ok_or_else(|| anyhow!("--evidence none: nothing to register with"))?;
    if !attester.format().is_hardware() {
        eprintln!("WARNING: registering with INSECURE-SOFTWARE evidence (development only)");
    }
    let client = connect(dir, who)?;
    let registered = runtime()?.block_on(client.register_component(attester.as_ref()))?;
    println!(
        "{} registered: {} (until {})",
        who.identity, registered.summary, registered.expires_at
    );
    Ok(ExitCode::SUCCESS)
}

fn dev_policy(dir: &Path) -> anyhow::Result<ExitCode> {
    let reference = asclepios_deploy::attestation::write_development_policies(dir)?;
    println!(
        "wrote development reference values (INSECURE: insecure-software accepted)\n\
         measurement {}\nsigner      {}",
        reference.measurement,
        reference.signer.unwrap_or_default()
    );
    Ok(ExitCode::SUCCESS)
}
