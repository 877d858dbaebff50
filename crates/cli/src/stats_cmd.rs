//! `asclepios stats`: publish encrypted values as a data provider, ask for
//! aggregates as a researcher.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use asclepios_crypto::ipfe::SlotKey;

use crate::platform::{connect, patient_of, read_resources, runtime, AsArg};

/// Which measure: a study, a period and a feature.
#[derive(clap::Args, Debug)]
pub struct Measure {
    /// The study.
    #[arg(long)]
    study: String,
    /// The period: a prefix of the observations' dates (2024, 2024-03).
    #[arg(long)]
    period: String,
    /// A name for the measure (letters, digits, - _ .).
    #[arg(long)]
    feature: String,
}

#[derive(clap::Subcommand, Debug)]
pub enum StatsCommand {
    /// As a data provider: encrypt one value per patient (the latest matching observation
    /// in the period) from FHIR files and publish it for a study, with a noise share added.
    /// A slot is a person: every patient must be in the directory, and the authority assigns
    /// each one slot per study (kept with its key in <dir>/identities/<id>.stats/<study>.json
    /// from period to period); patients without a value this period publish "no value",
    /// which stays hidden.
    ///
    /// Example: asclepios stats publish --as lab-central --study bp --period 2024
    ///   --feature systolic --code 'http://loinc.org|8480-6' --range 0..300 --buckets 120,140 sample.ndjson
    Publish {
        #[command(flatten)]
        who: AsArg,
        #[command(flatten)]
        measure: Measure,
        /// The observation code, system|code.
        #[arg(long)]
        code: String,
        /// The range values are clipped to, lo..hi (e.g. 0..300 for a blood pressure): it
        /// fixes how much one person can move a sum, and so the noise each value carries.
        #[arg(long, value_parser = asclepios_client::stats::parse_range)]
        range: (f64, f64),
        /// Histogram bucket edges, e.g. 120,140.
        #[arg(long, value_delimiter = ',')]
        buckets: Vec<f64>,
        /// Bundle (.json) or NDJSON (.ndjson) files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// As a researcher: noisy count, mean, variance and histogram of a feature over a
    /// cohort, each with the standard deviation of its noise. The authority issues a key
    /// per aggregate only for cohorts of 10 or more people that, with every key already
    /// released (in any study, and after any one provider subtracts what it published),
    /// single nobody out, and only while each person's privacy budget lasts (ε 1 per new
    /// aggregate; [stats] study_budget and population_budget).
    ///
    /// Example: asclepios stats query --as researcher-rita --study bp --period 2024 --feature systolic
    Query {
        #[command(flatten)]
        who: AsArg,
        #[command(flatten)]
        measure: Measure,
        /// `all`, `provider:<id>` or `slots:<n>,<n>,...`.
        #[arg(long, default_value = "all")]
        cohort: String,
    },
}

pub fn run(dir: &Path, command: StatsCommand) -> anyhow::Result<()> {
    match command {
        StatsCommand::Publish {
            who,
            measure,
            code,
            range,
            buckets,
            files,
        } => publish(dir, &who, &measure, (&code, range), &buckets, &files),
        StatsCommand::Query {
            who,
            measure:
                Measure {
                    study,
                    period,
                    feature,
                },
            cohort,
        } => runtime()?.block_on(async {
            let client = connect(dir, &who)?;
            let s = client
                .stats_summary(&study, &period, &feature, &cohort)
                .await?;
            println!(
                "study {study}, {period}, {feature}, cohort {cohort} ({} people)",
                s.slots
            );
            println!("count     {}  (noise sd {:.1})", s.count, s.count_sd);
            match (s.mean, s.mean_sd, s.variance) {
                (Some(m), Some(sd), Some(v)) => {
                    println!("mean      {m:.2}  (noise sd about {sd:.2})");
                    println!("variance  {v:.2}  (sd {:.2})", v.max(0.0).sqrt());
                }
                _ => println!("no values"),
            }
            for (bucket, n) in &s.histogram {
                println!("bucket {bucket:<12} {n}  (noise sd {:.1})", s.count_sd);
            }
            let b = &s.budget;
            eprintln!(
                "each aggregate came from its own function key, over noisy values; no value was decrypted.\n\
                 privacy: this summary spent ε {} per person; the most spent on anyone in the cohort is \
                 now ε {} of {} in this study and ε {} of {} in all studies",
                b.epsilon, b.study_spent, b.study_budget, b.population_spent, b.population_budget
            );
            Ok(())
        }),
    }
}

/// The provider's slots of a study: patient -> (slot, key).
fn slots_file(dir: &Path, who: &AsArg, study: &str) -> PathBuf {
    dir.join("identities")
        .join(format!("{}.stats", who.identity))
        .join(format!("{study}.json"))
}

fn publish(
    dir: &Path,
    who: &AsArg,
    measure: &Measure,
    (code, range): (&str, (f64, f64)),
    buckets: &[f64],
    files: &[PathBuf],
) -> anyhow::Result<()> {
    let Measure {
        study,
        period,
        feature,
    } = measure;
    anyhow::ensure!(
        buckets.windows(2).all(|w| w[0] < w[1]),
        "bucket edges must increase"
    );
    let (system, code) = code
        .split_once('|')
        .context("--code is system|code, e.g. 'http://loinc.org|8480-6'")?;
    // The latest matching value per patient in the period.
    let mut latest: BTreeMap<String, (String, f64)> = BTreeMap::new();
    for f in files {
        for resource in read_resources(f)? {
            let Ok(view) = asclepios_fhir::ResourceView::from_value(resource) else {
                continue;
            };
            let matches = view.resource_type() == "Observation"
                && view
                    .codings()
                    .iter()
                    .any(|c| c.system == system && c.code == code);
            let when = view.json()["effectiveDateTime"]
                .as_str()
                .unwrap_or_default();
            let value = view.json()["valueQuantity"]["value"].as_f64();
            if let (true, true, Some(value), Some(patient)) =
                (matches, when.starts_with(period), value, patient_of(&view))
            {
                let entry = latest.entry(patient).or_insert((String::new(), value));
                if when >= entry.0.as_str() {
                    *entry = (when.to_string(), value);
                }
            }
        }
    }
    let path = slots_file(dir, who, study);
    let mut slots: BTreeMap<String, (u64, String)> = match std::fs::read_to_string(&path) {
        Ok(text) => {
            serde_json::from_str(&text).with_context(|| format!("{} is damaged", path.display()))?
        }
        Err(_) => BTreeMap::new(),
    };
    runtime()?.block_on(async {
        let client = connect(dir, who)?;
        let new: Vec<String> = latest
            .keys()
            .filter(|p| !slots.contains_key(*p))
            .cloned()
            .collect();
        if !new.is_empty() {
            for (patient, slot, key) in client.stats_slots(study, &new).await? {
                slots.insert(patient, (slot, hex::encode(key.to_bytes().as_ref())));
            }
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            asclepios_deploy::write_file(&path, &serde_json::to_string(&slots)?, true)?;
        }
        let keys: Vec<(u64, SlotKey, Option<f64>)> = slots
            .iter()
            .map(|(patient, (slot, key))| {
                let bytes: [u8; 64] = hex::decode(key)
                    .ok()
                    .and_then(|b| b.try_into().ok())
                    .context("a damaged slot key")?;
                let key = SlotKey::from_bytes(&bytes).context("a damaged slot key")?;
                Ok((*slot, key, latest.get(patient).map(|(_, v)| *v)))
            })
            .collect::<anyhow::Result<_>>()?;
        let rows: Vec<(u64, &SlotKey, Option<f64>)> =
            keys.iter().map(|(s, k, v)| (*s, k, *v)).collect();
        let n = client
            .stats_publish(study, (period, feature), range, buckets, &rows)
            .await?;
        println!(
            "published {} patient(s) ({} with a value) as {n} encrypted, noisy values for {study}/{period}/{feature}",
            rows.len(),
            latest.len()
        );
        Ok(())
    })
}
