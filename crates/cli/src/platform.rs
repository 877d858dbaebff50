//! `asclepios serve` and the client commands (`put`, `get`, `records`, `erase`).

use std::path::{Path, PathBuf};

use std::io::Write;

use anyhow::Context;
use asclepios_client::Client;
use asclepios_deploy::serve::{start, Listen};
use asclepios_deploy::Config;

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Runs the key authority and the record service until Ctrl-C.
pub fn serve(dir: &Path, postgres: Option<String>) -> anyhow::Result<()> {
    let mut config = Config::load(dir)?;
    if let Some(url) = postgres {
        config.store.url = url;
        std::fs::write(
            dir.join(asclepios_deploy::config::CONFIG_FILE),
            config.to_toml()?,
        )
        .context("updating the configuration with the PostgreSQL URL")?;
    }
    runtime()?.block_on(async {
        let services = start(dir, &Listen::default()).await?;
        println!("key authority   https://{}", services.authority);
        println!(
            "record service  https://{} (OpenAPI at /openapi.json)",
            services.records
        );
        println!("store           {}", config.store.url);
        println!(
            "mutual TLS 1.3 with the CA in {}/pki/ca.pem; Ctrl-C stops",
            dir.display()
        );
        tokio::signal::ctrl_c()
            .await
            .context("waiting for Ctrl-C")?;
        println!("stopping");
        drop(services);
        Ok(())
    })
}

/// Which identity a client command acts as.
#[derive(clap::Args, Debug)]
pub struct AsArg {
    /// The identity to act as (its certificate and key are in <dir>/identities/)
    #[arg(long = "as", value_name = "ID")]
    identity: String,
}

fn connect(dir: &Path, who: &AsArg) -> anyhow::Result<Client> {
    let config = Config::load(dir)?;
    let url = |listen: &str| format!("https://{}", listen.replace("127.0.0.1", "localhost"));
    Ok(Client::connect(
        dir,
        &who.identity,
        &url(&config.authority.listen),
        &url(&config.records.listen),
    )?)
}

/// `asclepios put`: seal a FHIR resource on this machine and store it.
pub fn put(
    dir: &Path,
    who: &AsArg,
    patient: &str,
    file: &PathBuf,
    policy: Option<String>,
    version: u64,
) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let resource: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", file.display()))?;
    let view = asclepios_fhir::ResourceView::from_value(resource.clone())
        .with_context(|| format!("{} is not a FHIR resource", file.display()))?;
    let record_id = view.id().context("the resource has no id")?.to_string();
    let policy = policy.unwrap_or_else(|| {
        Config::load(dir)
            .map(|c| c.default_policy(patient))
            .unwrap_or_default()
    });
    runtime()?.block_on(async {
        let client = connect(dir, who)?;
        let receipt = client
            .put_record(patient, &record_id, version, &resource, &policy)
            .await?;
        println!(
            "stored {} {record_id} v{version} for {patient}",
            view.resource_type()
        );
        println!("policy: {policy}");
        println!(
            "receipt: audit leaf {} (checked against a signed checkpoint)",
            receipt.leaf_index
        );
        Ok(())
    })
}

/// `asclepios get`: fetch a record and open it with this identity's key.
pub fn get(dir: &Path, who: &AsArg, patient: &str, record_id: &str) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let mut client = connect(dir, who)?;
        client.refresh_key().await?;
        let (resource, receipt) = client.get_record(patient, record_id).await?;
        let mut out = std::io::stdout().lock();
        // A closed pipe (`| head`) is not an error worth a panic.
        match writeln!(out, "{}", serde_json::to_string_pretty(&resource)?) {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(e.into()),
            _ => {}
        }
        eprintln!(
            "receipt: audit leaf {} (checked against a signed checkpoint)",
            receipt.leaf_index
        );
        Ok(())
    })
}

/// `asclepios records`: a patient's record ids.
pub fn list(dir: &Path, who: &AsArg, patient: &str) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let client = connect(dir, who)?;
        for (id, version) in client.list_records(patient).await? {
            println!("{id}  v{version}");
        }
        Ok(())
    })
}

/// `asclepios erase`: crypto-shred a record (the patient only).
pub fn erase(dir: &Path, who: &AsArg, patient: &str, record_id: &str) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let client = connect(dir, who)?;
        let n = client.erase_record(patient, record_id).await?;
        println!("erased {record_id}: {n} key wrapper(s) destroyed; the ciphertext can no longer be opened");
        Ok(())
    })
}
