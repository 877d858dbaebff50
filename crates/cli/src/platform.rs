//! `asclepios serve` and the client commands (`put`, `get`, `records`, `erase`).

use std::path::{Path, PathBuf};

use std::io::Write;

use anyhow::Context;
use asclepios_client::Client;
use asclepios_deploy::serve::{local_url, start, start_authority, start_records, Listen};
use asclepios_deploy::Config;

pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Runs the key authority and the record service until Ctrl-C.
pub fn serve(dir: &Path, postgres: Option<String>) -> anyhow::Result<()> {
    let mut config = Config::load(dir)?;
    if let Some(url) = postgres {
        config.store.url = crate::admin::postgres_url(url)?;
        // Only a store that opens goes into the configuration.
        config
            .open_store(dir)
            .with_context(|| format!("opening {}", config.store.shown()))?;
        // 0600: the URL may carry a password.
        asclepios_deploy::write_file(
            &dir.join(asclepios_deploy::config::CONFIG_FILE),
            &config.to_toml()?,
            true,
        )
        .context("updating the configuration with the PostgreSQL URL")?;
    }
    runtime()?.block_on(async {
        let services = start(dir, &Listen::default()).await?;
        eprintln!(
            "WARNING: development only: the key authority and the record service run in ONE \
             process on ONE store, so whoever runs this host holds both trust domains. Run them \
             apart with `asclepios init --records-dir R`, `asclepios serve authority --dir {}` \
             and `asclepios serve records --dir R`.",
            dir.display()
        );
        println!("key authority   https://{}", services.authority);
        println!(
            "record service  https://{} (OpenAPI at /openapi.json)",
            services.records
        );
        println!("store           {}", config.store.shown());
        println!(
            "mutual TLS 1.3 with the CA in {}/pki/ca.pem; Ctrl-C stops",
            dir.display()
        );
        for w in asclepios_deploy::attestation::warnings(&config) {
            eprintln!("WARNING: {w}");
        }
        tokio::signal::ctrl_c()
            .await
            .context("waiting for Ctrl-C")?;
        println!("stopping");
        drop(services);
        Ok(())
    })
}

/// One trust domain on its own.
#[derive(clap::Subcommand, Debug)]
pub enum ServeOnly {
    /// The key authority alone, from its data directory (what `init --dir` wrote).
    Authority {
        /// Where the record service is [default: https://localhost:<its configured port>].
        #[arg(long, value_name = "URL")]
        records_url: Option<String>,
    },
    /// The record service alone, from its own directory (what `init --records-dir` wrote).
    Records {
        /// Where the key authority is [default: https://localhost:<its configured port>].
        #[arg(long, value_name = "URL")]
        authority_url: Option<String>,
    },
}

/// `asclepios serve authority|records`: one service, in this process only.
pub fn serve_one(dir: &Path, only: ServeOnly) -> anyhow::Result<()> {
    let config = Config::load(dir)?;
    runtime()?.block_on(async {
        let (name, service) = match only {
            ServeOnly::Authority { records_url } => {
                let url = records_url.unwrap_or_else(|| local_url(&config.records.listen));
                let service = start_authority(dir, None, &url).await?;
                println!("record service expected at {url}");
                ("key authority", service)
            }
            ServeOnly::Records { authority_url } => {
                let url = authority_url.unwrap_or_else(|| local_url(&config.authority.listen));
                let service = start_records(dir, None, &url).await?;
                println!(
                    "key authority expected at {url} (directory facts every {} ms)",
                    asclepios_deploy::serve::FACTS_POLL_MILLIS
                );
                ("record service", service)
            }
        };
        println!(
            "{name:<15} https://{} (OpenAPI at /openapi.json)",
            service.addr
        );
        println!("store           {}", config.store.shown());
        println!(
            "mutual TLS 1.3 with the CA in {}/pki/ca.pem; Ctrl-C stops",
            dir.display()
        );
        tokio::signal::ctrl_c()
            .await
            .context("waiting for Ctrl-C")?;
        println!("stopping");
        drop(service);
        Ok(())
    })
}

/// Which identity a client command acts as.
#[derive(clap::Args, Debug)]
pub struct AsArg {
    /// The identity to act as (its certificate and key are in <dir>/identities/)
    #[arg(long = "as", value_name = "ID")]
    pub(crate) identity: String,
}

pub(crate) fn connect(dir: &Path, who: &AsArg) -> anyhow::Result<Client> {
    let config = Config::load(dir)?;
    if !config.attestation.require {
        eprintln!(
            "WARNING: attestation is OFF (attestation.require = false in {}): the key \
             authority's evidence is not enforced",
            dir.join(asclepios_deploy::config::CONFIG_FILE).display()
        );
    }
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
    let fhir_id = view.id().context("the resource has no id")?.to_string();
    let policy = policy.unwrap_or_else(|| {
        Config::load(dir)
            .map(|c| c.default_policy(patient))
            .unwrap_or_default()
    });
    runtime()?.block_on(async {
        let client = connect(dir, who)?;
        let (record_id, receipt) = client
            .put_resource(patient, version, &resource, &policy)
            .await?;
        println!(
            "stored {}/{fhir_id} v{version} for {patient} as record {record_id}",
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

/// The stored id `record` names: an opaque id as `records` and `search
/// --ids-only` list them, or a FHIR reference (`Observation/obs-1`), which
/// the patient's naming key turns into one.
async fn stored_id(client: &Client, patient: &str, record: &str) -> anyhow::Result<String> {
    if asclepios_crypto::naming::is_opaque_record_id(record) {
        return Ok(record.to_string());
    }
    let Some((resource_type, fhir_id)) = record.split_once('/') else {
        anyhow::bail!(
            "`{record}` is neither a record id (`r` and 32 hex digits, as `asclepios records` \
             lists them) nor a FHIR reference such as Observation/obs-1"
        );
    };
    Ok(client.record_id(patient, resource_type, fhir_id).await?)
}

/// `asclepios get`: fetch a record and open it with this identity's key.
pub fn get(dir: &Path, who: &AsArg, patient: &str, record: &str) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let mut client = connect(dir, who)?;
        let record_id = stored_id(&client, patient, record).await?;
        let record_id = record_id.as_str();
        client.refresh_key().await?;
        // The patient also checks the record against the writes the audit
        // log holds for it: a rolled-back store is refused.
        let (resource, receipt) = if client.id() == patient {
            client.get_fresh_record(patient, record_id).await?
        } else {
            client.get_record(patient, record_id).await?
        };
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

/// `asclepios search`: matches from the encrypted index, then normal reads.
pub fn search(dir: &Path, who: &AsArg, query: &str, ids_only: bool) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let mut client = connect(dir, who)?;
        let found = client.search(query).await?;
        eprintln!("{} record(s) match `{query}`", found.len());
        if ids_only {
            for m in &found {
                println!("{}/{}", m.patient, m.record_id);
            }
            return Ok(());
        }
        client.refresh_key().await?;
        let mut out = std::io::stdout().lock();
        let mut refused = 0;
        for m in &found {
            let line = match client.get_record(&m.patient, &m.record_id).await {
                Ok((resource, _)) => serde_json::to_string(&resource)?,
                Err(e) => {
                    refused += 1;
                    eprintln!("{}/{}: not readable by you: {e}", m.patient, m.record_id);
                    continue;
                }
            };
            match writeln!(out, "{line}") {
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
                other => other?,
            }
        }
        if refused > 0 {
            eprintln!(
                "{refused} match(es) could not be opened with your key (they are listed above)"
            );
        }
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

/// `asclepios erase`: erase one record, or (`None`) every record of the
/// patient (the patient only).
pub fn erase(dir: &Path, who: &AsArg, patient: &str, record: Option<&str>) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let client = connect(dir, who)?;
        let (what, erased) = match record {
            Some(record) => {
                let record_id = stored_id(&client, patient, record).await?;
                let erased = client.erase_record(patient, &record_id).await?;
                (record_id, erased)
            }
            None => {
                let bar = progress(0, "taking the records out of the search index");
                let erased = client
                    .erase_patient(patient, |done, total| {
                        bar.set_length(total as u64);
                        bar.set_position(done as u64);
                    })
                    .await?;
                bar.finish_and_clear();
                (format!("every record of {patient}"), erased)
            }
        };
        println!(
            "erased {what}: {} record(s), {} version(s) and {} key wrapper(s) destroyed and purged \
             from the store's files; backups keep them until they expire",
            erased.records, erased.versions, erased.wrappers
        );
        Ok(())
    })
}

#[derive(clap::Subcommand, Debug)]
pub enum EmergencyCommand {
    /// Break the glass: a short-lived key for a patient's emergency clause, logged as critical.
    ///
    /// Example: asclepios emergency open --as dr-er --patient pat-00000 --reason "unconscious on arrival"
    Open {
        #[command(flatten)]
        who: AsArg,
        /// The patient's pseudonym.
        #[arg(long)]
        patient: String,
        /// Why (kept, encrypted, in the audit log; the patient will read it).
        #[arg(long)]
        reason: String,
    },
    /// The auditors' review queue: unreviewed break-glass grants; --ack decides on one.
    ///
    /// Goes through the key authority's API as the identity given, which must
    /// hold `role:auditor`; the decision is audited and the patient reads it.
    ///
    /// Example: asclepios emergency review --as auditor-ann --ack GRANT --decision flag --comment "no emergency on file"
    Review {
        #[command(flatten)]
        who: AsArg,
        /// Decide on this grant (see the queue for ids).
        #[arg(long, value_name = "GRANT")]
        ack: Option<String>,
        /// `approve`, or `flag` for follow-up (which needs a --comment).
        #[arg(long, default_value = "approve", value_parser = ["approve", "flag"])]
        decision: String,
        /// Why (sealed in the audit event; the patient reads it).
        #[arg(long, default_value = "")]
        comment: String,
    },
}

pub fn emergency(dir: &Path, command: EmergencyCommand) -> anyhow::Result<()> {
    match command {
        EmergencyCommand::Open { who, patient, reason } => runtime()?.block_on(async {
            let mut client = connect(dir, &who)?;
            let grant = client.break_glass(&patient, &reason).await?;
            client.refresh_key().await?;
            println!(
                "BREAK-GLASS granted: {} until {} (grant {}); logged as critical, visible to the patient, queued for review",
                grant.attribute, grant.expires_at, grant.grant_id
            );
            Ok(())
        }),
        EmergencyCommand::Review {
            who,
            ack,
            decision,
            comment,
        } => runtime()?.block_on(async {
            let client = connect(dir, &who)?;
            let mut queue = client.emergency_reviews().await?;
            if let Some(grant) = ack {
                let pending = queue
                    .iter()
                    .position(|g| g.grant_id == grant)
                    .with_context(|| format!("no unreviewed grant `{grant}` in the queue"))?;
                let g = queue.remove(pending);
                client
                    .review_emergency(&g.patient, &grant, &decision, &comment)
                    .await?;
                let done = if decision == "flag" { "flagged" } else { "approved" };
                println!("grant {grant} {done} by {}", who.identity);
            }
            println!("{} unreviewed break-glass grant(s)", queue.len());
            for g in queue {
                println!(
                    "{}  patient {}  by {}  issued {}  expires {}",
                    g.grant_id, g.patient, g.clinician, g.issued_at, g.expires_at
                );
            }
            Ok(())
        }),
    }
}

/// `asclepios audit`: the audit events this identity may read.
pub fn audit(dir: &Path, who: &AsArg, fhir: bool) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let mut client = connect(dir, who)?;
        client.refresh_key().await?;
        let events = client.audit_events().await?;
        for e in &events {
            if fhir {
                println!("{}", serde_json::to_string(&e.to_fhir())?);
            } else {
                println!(
                    "{}  {:<16} {:?} {:?} {} {}{}",
                    e.time,
                    e.actor,
                    e.action,
                    e.outcome,
                    e.resource,
                    e.purpose,
                    if e.emergency { "  EMERGENCY" } else { "" }
                );
            }
        }
        eprintln!("{} event(s) readable by {}", events.len(), client.id());
        Ok(())
    })
}

#[derive(clap::Subcommand, Debug)]
pub enum ConsentCommand {
    /// Grant a party access to your records (as a patient).
    ///
    /// Example: asclepios consent grant --as pat-00000 --to dr-er --purpose TREAT --types Observation,Condition --days 30
    Grant {
        #[command(flatten)]
        who: AsArg,
        /// The identity receiving access.
        #[arg(long)]
        to: String,
        /// Purpose of use (HL7 v3-ActReason code).
        #[arg(long, default_value = "TREAT")]
        purpose: String,
        /// FHIR resource types covered, comma-separated, or * for all.
        #[arg(long, default_value = "*", value_delimiter = ',')]
        types: Vec<String>,
        /// Days until it ends by itself (none: until withdrawn).
        #[arg(long)]
        days: Option<u32>,
    },
    /// Withdraw a consent: the party's access ends as a revocation does.
    Withdraw {
        #[command(flatten)]
        who: AsArg,
        /// The consent id (see `consent list`).
        consent: String,
    },
    /// Your consents; --fhir prints them as FHIR Consent resources.
    List {
        #[command(flatten)]
        who: AsArg,
        /// Print FHIR Consent JSON lines.
        #[arg(long)]
        fhir: bool,
    },
}

pub fn consent(dir: &Path, command: ConsentCommand) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        match command {
            ConsentCommand::Grant {
                who,
                to,
                purpose,
                types,
                days,
            } => {
                let client = connect(dir, &who)?;
                let expires_at =
                    days.map(|d| asclepios_net::server::unix_now() as i64 + i64::from(d) * 86_400);
                let c = client
                    .grant_consent(&asclepios_authority::consent::ConsentGrant {
                        grantee: to,
                        purpose,
                        resource_types: types,
                        expires_at,
                    })
                    .await?;
                println!(
                    "{} granted to {} ({})",
                    c.consent_id, c.grant.grantee, c.grant.purpose
                );
            }
            ConsentCommand::Withdraw { who, consent } => {
                let client = connect(dir, &who)?;
                let c = client.withdraw_consent(&consent).await?;
                println!(
                    "{} withdrawn; {} no longer opens your records",
                    c.consent_id, c.grant.grantee
                );
            }
            ConsentCommand::List { who, fhir } => {
                let client = connect(dir, &who)?;
                for c in client.consents().await? {
                    if fhir {
                        println!("{}", serde_json::to_string(&c.fhir)?);
                    } else {
                        println!(
                            "{}  {:<9} to {:<16} {} {}",
                            c.consent_id,
                            c.status,
                            c.grant.grantee,
                            c.grant.purpose,
                            c.grant.resource_types.join(",")
                        );
                    }
                }
            }
        }
        Ok(())
    })
}

/// The resources of a FHIR R4 Bundle (transaction, batch or collection) or
/// of an NDJSON file (FHIR Bulk Data: one resource per line).
/// A progress bar for `len` items of `work` (e.g. "reading"), with rate and
/// time left.
pub(crate) fn progress(len: usize, work: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{{spinner}} {work} {{pos}}/{{len}} [{{bar:40}}] {{per_sec}} {{eta}}"
        ))
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar
}

pub(crate) fn read_resources(path: &Path) -> anyhow::Result<Vec<serde_json::Value>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let is_ndjson = path.extension().is_some_and(|e| e == "ndjson");
    if is_ndjson {
        return text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                serde_json::from_str(l)
                    .with_context(|| format!("{}:{}: not a JSON resource", path.display(), i + 1))
            })
            .collect();
    }
    let value: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    if value["resourceType"] != "Bundle" {
        return Ok(vec![value]);
    }
    let kind = value["type"].as_str().unwrap_or_default();
    anyhow::ensure!(
        matches!(kind, "transaction" | "batch" | "collection" | "searchset"),
        "{}: a Bundle of type `{kind}` is not importable (transaction, batch, collection or searchset)",
        path.display()
    );
    Ok(value["entry"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .filter_map(|e| e.get("resource").cloned())
                .collect()
        })
        .unwrap_or_default())
}

/// The patient a resource is about: a Patient's own id, else its subject or patient reference.
pub(crate) fn patient_of(view: &asclepios_fhir::ResourceView) -> Option<String> {
    if view.resource_type() == "Patient" {
        return view.id().map(str::to_string);
    }
    view.subject()
        .and_then(|r| r.strip_prefix("Patient/").map(str::to_string))
}

/// `asclepios import`: seal and store every resource of Bundles and NDJSON files.
pub fn import(dir: &Path, who: &AsArg, files: &[PathBuf]) -> anyhow::Result<()> {
    let mut resources = Vec::new();
    for f in files {
        resources.extend(read_resources(f)?);
    }
    let config = Config::load(dir)?;
    runtime()?.block_on(async {
        let client = connect(dir, who)?;
        let bar = progress(resources.len(), "sealing and storing");
        let mut policies: std::collections::HashMap<String, asclepios_crypto::Policy> =
            Default::default();
        let (mut stored, mut existing) = (0usize, 0usize);
        let (mut skipped, mut failed) = (Vec::new(), Vec::new());
        for resource in resources {
            bar.inc(1);
            let view = match asclepios_fhir::ResourceView::from_value(resource.clone()) {
                Ok(v) => v,
                Err(e) => {
                    skipped.push(format!("not a FHIR resource: {e}"));
                    continue;
                }
            };
            let (Some(id), Some(patient)) = (view.id().map(str::to_string), patient_of(&view))
            else {
                skipped.push(format!(
                    "{} without an id or a patient",
                    view.resource_type()
                ));
                continue;
            };
            if !policies.contains_key(&patient) {
                let policy = client
                    .resolve_policy(&config.default_policy(&patient))
                    .await?;
                policies.insert(patient.clone(), policy);
            }
            let record_id = match client.record_id_for(&patient, &resource).await {
                Ok(record_id) => record_id,
                Err(e) => {
                    skipped.push(format!("{} {id}: {e}", view.resource_type()));
                    continue;
                }
            };
            // A conflict is a record already stored, or a policy that a
            // revocation made stale since it was resolved: resolve it again
            // and retry, and call the record stored only if it is there.
            let mut attempts = 0;
            let outcome = loop {
                attempts += 1;
                match client
                    .put_record_resolved(&patient, &record_id, 1, &resource, &policies[&patient])
                    .await
                {
                    Ok(_) => break Imported::Stored,
                    Err(asclepios_client::ClientError::Refused {
                        status: 409,
                        message,
                        ..
                    }) => {
                        let fresh = client
                            .resolve_policy(&config.default_policy(&patient))
                            .await?;
                        if fresh != policies[&patient] && attempts < 3 {
                            policies.insert(patient.clone(), fresh);
                            continue;
                        }
                        match client.record_versions(&patient, &record_id).await {
                            Ok(v) if !v.is_empty() => break Imported::Existing,
                            _ => break Imported::Failed(message),
                        }
                    }
                    Err(e) => break Imported::Failed(e.to_string()),
                }
            };
            match outcome {
                Imported::Stored => stored += 1,
                Imported::Existing => existing += 1,
                Imported::Failed(e) => failed.push(format!("{} {id}: {e}", view.resource_type())),
            }
        }
        bar.finish_and_clear();
        println!(
            "imported {stored} resource(s); {existing} already stored; {} skipped; {} failed",
            skipped.len(),
            failed.len()
        );
        for s in skipped.iter().take(10) {
            println!("  skipped: {s}");
        }
        for f in failed.iter().take(10) {
            println!("  failed: {f}");
        }
        if !failed.is_empty() || !skipped.is_empty() {
            anyhow::bail!(
                "{} resource(s) were not imported (see above); run the import again to retry them",
                failed.len() + skipped.len()
            );
        }
        Ok(())
    })
}

/// What became of one resource in an import.
enum Imported {
    Stored,
    Existing,
    Failed(String),
}

/// `asclepios portal`: the local web app for one identity, until Ctrl-C.
pub fn portal(dir: &Path, identity: String, port: u16) -> anyhow::Result<()> {
    let who = AsArg { identity };
    let client = connect(dir, &who)?;
    runtime()?.block_on(async {
        let portal = asclepios_portal::Portal::new(client).await?;
        // Loopback only: the portal holds this identity's keys.
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .with_context(|| format!("listening on 127.0.0.1:{port}"))?;
        let addr = listener.local_addr()?;
        println!("asclepios portal for {} (loopback only)", who.identity);
        println!("open: http://{addr}{}", portal.launch_path());
        println!("Ctrl-C stops it");
        std::io::stdout().flush()?;
        asclepios_portal::serve(listener, portal, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .context("serving the portal")?;
        Ok(())
    })
}
