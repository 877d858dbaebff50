//! `asclepios deid`: de-identify FHIR files with a profile, standalone.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use asclepios_deid::{kanon, Profile};

use crate::platform::read_resources;

/// Options shared by `deid` and `export`.
#[derive(clap::Args, Debug)]
pub struct DeidArgs {
    /// `safe-harbor`, `research-pseudonymised`, or a profile file (TOML).
    #[arg(long, default_value = "safe-harbor")]
    pub profile: String,
    /// The project key (32 bytes, hex) for keyed pseudonyms, encryption and date shifts.
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// Quasi-identifiers of patients for the k-anonymity report (paths below Patient).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "birthDate,gender,address.postalCode"
    )]
    pub qi: Vec<String>,
    /// Suppress patients (and their resources) in groups smaller than this.
    #[arg(long)]
    pub k: Option<usize>,
}

/// Loads the profile and key named by `args`.
pub fn load(args: &DeidArgs) -> anyhow::Result<(Profile, Option<[u8; 32]>)> {
    let text = match asclepios_deid::shipped(&args.profile) {
        Some(t) => t.to_string(),
        None => std::fs::read_to_string(&args.profile).with_context(|| {
            format!(
                "`{}` is neither a shipped profile (safe-harbor, research-pseudonymised) nor a readable file",
                args.profile
            )
        })?,
    };
    let profile = Profile::from_toml(&text)?;
    let key = match &args.key_file {
        None => None,
        Some(path) => {
            let hex_text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let bytes = hex::decode(hex_text.trim())
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .with_context(|| format!("{} must hold 32 bytes in hex", path.display()))?;
            Some(bytes)
        }
    };
    Ok((profile, key))
}

/// De-identifies `resources` (named by `origin` in errors), with a progress
/// bar, then applies k-anonymity; the kept resources and the report.
pub fn run_profile(
    args: &DeidArgs,
    resources: Vec<(String, serde_json::Value)>,
) -> anyhow::Result<(Vec<serde_json::Value>, kanon::Report, String)> {
    let (profile, key) = load(args)?;
    let deid = profile.deidentifier(key.as_ref())?;
    let bar = crate::platform::progress(resources.len(), "de-identifying");
    let mut out = Vec::with_capacity(resources.len());
    for (origin, mut r) in resources {
        bar.inc(1);
        deid.apply_in_place(&mut r, &origin)?;
        out.push(r);
    }
    bar.finish_and_clear();
    let (kept, report) = kanon::apply(out, &args.qi, args.k);
    Ok((kept, report, profile.name.clone()))
}

/// Prints a k-anonymity report.
pub fn print_report(report: &kanon::Report, k: Option<usize>) {
    println!(
        "k-anonymity over {}: {} patient(s) in {} group(s), the smallest of {}",
        report.quasi_identifiers.join(", "),
        report.patients,
        report.classes,
        report.smallest.map_or("-".into(), |s| s.to_string())
    );
    if let Some(k) = k {
        println!(
            "suppressed for k = {k}: {} patient(s), {} resource(s)",
            report.suppressed_patients, report.suppressed_resources
        );
    }
}

/// Writes resources as NDJSON.
pub fn write_ndjson(path: &Path, resources: &[serde_json::Value]) -> anyhow::Result<()> {
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
    );
    for r in resources {
        writeln!(f, "{}", serde_json::to_string(r)?)?;
    }
    f.flush()?;
    Ok(())
}

/// `asclepios deid`.
pub fn run(args: &DeidArgs, input: &Path, output: &Path) -> anyhow::Result<()> {
    let resources: Vec<(String, serde_json::Value)> = read_resources(input)?
        .into_iter()
        .enumerate()
        .map(|(i, r)| (format!("{} resource {}", input.display(), i + 1), r))
        .collect();
    let n = resources.len();
    let (kept, report, name) = run_profile(args, resources)?;
    write_ndjson(output, &kept)?;
    println!(
        "{n} resource(s) de-identified with `{name}`, {} written to {}",
        kept.len(),
        output.display()
    );
    print_report(&report, args.k);
    Ok(())
}

/// `asclepios export`: the records this identity can read (a patient's, or
/// a search's matches), decrypted here, de-identified here, written to `out`;
/// the export is logged in the audit trail.
pub fn export(
    dir: &Path,
    who: &crate::platform::AsArg,
    args: &DeidArgs,
    patients: &[String],
    query: Option<&str>,
    recipient: &str,
    out: &Path,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        !patients.is_empty() || query.is_some(),
        "say what to export: --patient P (repeatable) or --query 'type:Observation and ...'"
    );
    // Fail on a bad profile or key before reading anything.
    load(args)?;
    crate::platform::runtime()?.block_on(async {
        let mut client = crate::platform::connect(dir, who)?;
        client.refresh_key().await?;
        let mut refs: Vec<(String, String)> = Vec::new();
        for p in patients {
            for (id, _) in client.list_records(p).await? {
                refs.push((p.clone(), id));
            }
        }
        if let Some(q) = query {
            for m in client.search(q).await? {
                refs.push((m.patient, m.record_id));
            }
        }
        refs.sort();
        refs.dedup();
        let bar = crate::platform::progress(refs.len(), "reading");
        let mut resources = Vec::new();
        let mut unreadable = 0;
        for (patient, id) in &refs {
            bar.inc(1);
            match client.get_record(patient, id).await {
                Ok((resource, _)) => resources.push((format!("{patient}/{id}"), resource)),
                Err(_) => unreadable += 1,
            }
        }
        bar.finish_and_clear();
        let read = resources.len();
        let (kept, report, name) = run_profile(args, resources)?;
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
        let file = out.join("resources.ndjson");
        write_ndjson(&file, &kept)?;
        let receipt = client
            .record_export(&asclepios_client::ExportNotice {
                profile: name.clone(),
                resources: kept.len() as u64,
                records_read: read as u64,
                recipient: recipient.to_string(),
            })
            .await?;
        println!(
            "exported {} resource(s) de-identified with `{name}` to {} ({read} read, {unreadable} not readable with your key)",
            kept.len(),
            file.display()
        );
        print_report(&report, args.k);
        println!(
            "the export is in the audit log (leaf {}) for {recipient}",
            receipt.leaf_index
        );
        Ok(())
    })
}
