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
    let bar = indicatif::ProgressBar::new(resources.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} de-identifying {pos}/{len} [{bar:40}] {per_sec}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
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
