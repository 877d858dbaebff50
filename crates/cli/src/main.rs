//! `asclepios`: the command-line tool of the asclepios e-health records platform.

#![forbid(unsafe_code)]

mod admin;
mod attest_cmd;
mod deid_cmd;
mod demo;
mod demo_platform;
mod log_cmd;
mod platform;
mod stats_cmd;
mod witness_cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

const ABOUT: &str =
    "asclepios keeps health records confidential even from the people who run its servers.";

const LONG_ABOUT: &str = "\
asclepios keeps health records confidential even from the people who run its servers.

Records are FHIR R4 resources, sealed on the client under a fresh data key; the data key
is wrapped under an access policy with ciphertext-policy attribute-based encryption
(FAME over BLS12-381), so only people whose attributes satisfy the policy can open them,
and the storage service only ever holds ciphertext.

Policies are written over namespaced attributes, for example:

    (role:doctor and dept:cardiology) or patient:7f3a or 2 of (role:nurse, ward:icu, shift:night)

Start with `asclepios demo`: sealing a record and who can open it, then the whole platform
over mutual TLS (revocation, consent, break-glass, the audit log). Then run your own:

    asclepios init --dir d && asclepios serve --dir d &
    asclepios synth --patients 2 > sample.ndjson
    asclepios import --dir d --as lab-central sample.ndjson
    asclepios records --dir d --as dr-heart --patient pat-00000
    asclepios get --dir d --as pat-00000 --patient pat-00000 <record id>";

#[derive(Parser, Debug)]
#[command(name = "asclepios", version, about = ABOUT, long_about = LONG_ABOUT)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the end-to-end story: keys for a cardiologist, a nurse and a patient, a
    /// sealed Observation, who can open it, what tampering does, a consent change.
    ///
    /// Exits non-zero if any step does not behave as expected.
    Demo {
        /// Seed for the synthetic patient data (keys are always fresh).
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Check an access policy: print its canonical form, attributes and the size
    /// of its secret-sharing matrix, or say exactly what is wrong with it.
    Policy {
        /// The policy text, e.g. 'role:doctor and dept:cardiology'.
        policy: String,
    },
    /// Verify the audit log's proofs and checkpoints, as a monitor or auditor.
    ///
    /// Works for any RFC 9162 log (SHA-256, C2SP checkpoints), not only asclepios'.
    /// Exit status: 0 when the claim holds, 1 when it does not, 2 on malformed input.
    #[command(subcommand)]
    Log(log_cmd::LogCommand),
    /// Run an independent witness of the audit logs: it cosigns a log's checkpoints only as
    /// consistent extensions of what it cosigned before, from its own directory and state.
    ///
    /// Example: asclepios witness init --dir w --name witness.example.org/w1
    #[command(subcommand)]
    Witness(witness_cmd::WitnessCommand),
    /// Write a working development deployment into a data directory: a CA, service and
    /// identity certificates, a sample organisation (cardiologist, nurse, emergency
    /// physician, lab, auditor, researcher, two patients) and asclepios.toml.
    Init {
        #[command(flatten)]
        dir: admin::DirArg,
        /// Keep the store in PostgreSQL at this URL instead of SQLite in the directory.
        #[arg(long, value_name = "URL")]
        postgres: Option<String>,
        /// Also write the record service's own data directory here, holding only what it
        /// needs (no master secret, no sealing key, no other identity's key), for
        /// `asclepios serve records --dir DIR`.
        #[arg(long, value_name = "DIR")]
        records_dir: Option<std::path::PathBuf>,
    },
    /// Administer the directory of identities and their attributes, through the running key
    /// authority as an identity holding role:admin (--as admin-ada in a new deployment).
    User {
        #[command(flatten)]
        dir: admin::DirArg,
        #[command(flatten)]
        admin: admin::AdminArg,
        #[command(subcommand)]
        command: admin::UserCommand,
    },
    /// Run the services of a deployment over mutual TLS: `serve authority` and `serve records`
    /// each run one trust domain from its own directory (production shape); plain `serve`
    /// runs both in one process on one store, for development only.
    ///
    /// Example: asclepios init --dir a --records-dir r
    ///          asclepios serve authority --dir a &  asclepios serve records --dir r &
    Serve {
        #[command(flatten)]
        dir: admin::DirArg,
        /// Use PostgreSQL at this URL (saved in asclepios.toml). It must hold the deployment's
        /// directory: make such a deployment with `asclepios init --postgres URL`.
        #[arg(long, value_name = "URL")]
        postgres: Option<String>,
        #[command(subcommand)]
        only: Option<platform::ServeOnly>,
    },
    /// Seal a FHIR R4 resource (JSON file) on this machine and store it.
    ///
    /// Example: asclepios put --as dr-heart --patient pat-00000 observation.json
    Put {
        #[command(flatten)]
        dir: admin::DirArg,
        #[command(flatten)]
        who: platform::AsArg,
        /// The patient's pseudonym.
        #[arg(long)]
        patient: String,
        /// The access policy; by default the configured one, with the emergency clause.
        #[arg(long)]
        policy: Option<String>,
        /// The record version (1 for a new record).
        #[arg(long, default_value_t = 1)]
        version: u64,
        /// The FHIR resource (JSON).
        file: std::path::PathBuf,
    },
    /// Import FHIR R4 Bundles (transaction, batch, collection) and NDJSON files (FHIR Bulk
    /// Data): every resource is sealed here, under its patient's default policy, and stored.
    ///
    /// Example: asclepios import --as lab-central results.ndjson bundle.json
    Import {
        #[command(flatten)]
        dir: admin::DirArg,
        #[command(flatten)]
        who: platform::AsArg,
        /// Bundle (.json) or NDJSON (.ndjson) files.
        #[arg(required = true)]
        files: Vec<std::path::PathBuf>,
    },
    /// Write synthetic FHIR R4 data (patients with encounters, observations, conditions,
    /// medications; LOINC, SNOMED CT and RxNorm codes) as NDJSON on stdout.
    ///
    /// Example: asclepios synth --patients 2 --encounters 3 > sample.ndjson
    Synth {
        /// How many patients (pseudonyms pat-00000, pat-00001, ...).
        #[arg(long, default_value_t = 2)]
        patients: usize,
        /// Encounters per patient.
        #[arg(long, default_value_t = 3)]
        encounters: usize,
        /// Seed (the same seed gives the same data).
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Fetch a record and open it with your ABE key (the service never can).
    Get {
        #[command(flatten)]
        dir: admin::DirArg,
        #[command(flatten)]
        who: platform::AsArg,
        /// The patient's pseudonym.
        #[arg(long)]
        patient: String,
        /// The record: its id as `asclepios records` lists it, or its FHIR reference
        /// (e.g. Observation/obs-1), which your naming key for the patient turns into the id.
        record: String,
    },
    /// Search the encrypted index, then read what matched (your key decides what opens).
    ///
    /// Terms are keywords joined by `and`: type:Observation, patient:pat-00000,
    /// code:http://loinc.org|8480-6, date:2024-03-15, month:2024-03, practitioner:dr-heart,
    /// organization:st-mary; a date range date:2024-01..2024-03 (or with days) matches any
    /// day in it. The record service sees neither the keywords nor the results.
    ///
    /// A search covers your circle only: the patients you are, care for, were consented to by
    /// or broke the glass for (or every patient, for a role the deployment lists under
    /// [search] cross_patient_roles). Naming a patient outside it is refused. Each patient a
    /// search reaches sees it in their access list (`asclepios audit --as <patient>`).
    ///
    /// Example: asclepios search --as dr-heart 'code:http://loinc.org|8480-6 and date:2024-01..2024-06'
    Search {
        #[command(flatten)]
        dir: admin::DirArg,
        #[command(flatten)]
        who: platform::AsArg,
        /// List the matching records without reading them.
        #[arg(long)]
        ids_only: bool,
        /// The query (several arguments are joined with `and`).
        #[arg(required = true)]
        query: Vec<String>,
    },
    /// List a patient's records.
    Records {
        #[command(flatten)]
        dir: admin::DirArg,
        #[command(flatten)]
        who: platform::AsArg,
        /// The patient's pseudonym.
        #[arg(long)]
        patient: String,
    },
    /// Break-glass emergency access, and the auditors' review queue.
    Emergency {
        #[command(flatten)]
        dir: admin::DirArg,
        #[command(subcommand)]
        command: platform::EmergencyCommand,
    },
    /// Patients' consents: grant, withdraw, list (as FHIR Consent with --fhir).
    Consent {
        #[command(flatten)]
        dir: admin::DirArg,
        #[command(subcommand)]
        command: platform::ConsentCommand,
    },
    /// The audit events you may read: for a patient, every access to their records.
    Audit {
        #[command(flatten)]
        dir: admin::DirArg,
        #[command(flatten)]
        who: platform::AsArg,
        /// Print each event as a FHIR AuditEvent (JSON lines).
        #[arg(long)]
        fhir: bool,
    },
    /// Statistics without seeing the data: providers publish encrypted values, researchers
    /// get aggregates (count, mean, variance, histogram) over cohorts that single nobody out.
    Stats {
        #[command(flatten)]
        dir: admin::DirArg,
        #[command(subcommand)]
        command: stats_cmd::StatsCommand,
    },
    /// Open the web portal for one identity on this device: patients see their records
    /// (with a blood-pressure chart), who accessed them (each event's inclusion proof
    /// verified), emergency accesses, consents and erasures; auditors review break-glass
    /// grants, check the log's health and search events; clinicians search and open records.
    ///
    /// The portal is served on 127.0.0.1 only and opens records with this identity's own
    /// keys, here: the browser talks to this process, this process to the deployment over
    /// mutual TLS. Open the printed launch link (it holds a secret made for this launch).
    ///
    /// Example: asclepios portal --dir d --identity pat-00000 --port 8080
    Portal {
        #[command(flatten)]
        dir: admin::DirArg,
        /// The identity to act as (its certificate and key are in <dir>/identities/)
        #[arg(long, visible_alias = "as", value_name = "ID")]
        identity: String,
        /// The local port (0 picks a free one).
        #[arg(long, default_value_t = 0)]
        port: u16,
    },
    /// Remote attestation: appraise evidence or a running key authority against reference
    /// values, register a component (device) with the authority, write development
    /// reference values.
    ///
    /// Example: asclepios attest verify --dir d https://localhost:7443
    Attest {
        #[command(flatten)]
        dir: admin::DirArg,
        #[command(subcommand)]
        command: attest_cmd::AttestCommand,
    },
    /// De-identify FHIR files (Bundle or NDJSON) with a profile, on this machine, and
    /// report k-anonymity over patients' quasi-identifiers. Output is NDJSON.
    ///
    /// Profiles: safe-harbor (HIPAA's 18 identifiers removed, dates to the year, ages over 89
    /// collapsed, ZIP to 3 digits; ids become codes of this export only), research-pseudonymised
    /// (keyed pseudonyms and per-patient date shifts: needs --key-file), or a TOML file.
    ///
    /// Example: asclepios deid --profile safe-harbor --k 5 sample.ndjson deidentified.ndjson
    Deid {
        #[command(flatten)]
        args: deid_cmd::DeidArgs,
        /// Input: a Bundle (.json) or NDJSON (.ndjson).
        input: std::path::PathBuf,
        /// Output NDJSON file.
        output: std::path::PathBuf,
    },
    /// Export the records you can read, de-identified on this machine, for a third party:
    /// a patient's records (--patient) or a search's matches (--query). The export (profile,
    /// count, recipient) is logged in the audit trail.
    ///
    /// Example: asclepios export --as dr-heart --patient pat-00000 --profile safe-harbor --k 5 --out export/
    Export {
        #[command(flatten)]
        dir: admin::DirArg,
        #[command(flatten)]
        who: platform::AsArg,
        #[command(flatten)]
        args: deid_cmd::DeidArgs,
        /// A patient whose records to export (repeatable).
        #[arg(long)]
        patient: Vec<String>,
        /// A search whose matches to export.
        #[arg(long)]
        query: Option<String>,
        /// Who receives the export (logged).
        #[arg(long, default_value = "third-party")]
        to: String,
        /// The directory to write resources.ndjson into.
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// Erase a record, or all of a patient's records (the patient only; GDPR art. 17).
    ///
    /// Every version's sealed body and every key wrapper is deleted and purged from the
    /// record service's store files (SQLite: zeroed and checkpointed; PostgreSQL: vacuumed),
    /// and the records leave the search index. Backups keep them until they expire (see
    /// README, "Erasure").
    ///
    /// Examples:
    ///   asclepios erase --dir d --as pat-00000 --patient pat-00000 Observation/obs-1
    ///   asclepios erase --dir d --as pat-00000 --patient pat-00000 --all
    Erase {
        #[command(flatten)]
        dir: admin::DirArg,
        #[command(flatten)]
        who: platform::AsArg,
        /// The patient's pseudonym.
        #[arg(long)]
        patient: String,
        /// Erase every record of the patient.
        #[arg(long, conflicts_with = "record")]
        all: bool,
        /// The record: its id as `asclepios records` lists it, or its FHIR reference
        /// (e.g. Observation/obs-1), which your naming key for the patient turns into the id.
        #[arg(required_unless_present = "all")]
        record: Option<String>,
    },
}

/// Structured logs on stderr: the services' events (one per request, with
/// route template, status and time; warnings and alarms). `ASCLEPIOS_LOG`
/// filters (`info` for `serve` and `witness serve`, else `warn`; e.g.
/// `ASCLEPIOS_LOG=debug`, `ASCLEPIOS_LOG=asclepios::request=off`);
/// `ASCLEPIOS_LOG_FORMAT=json` writes one JSON object per line.
fn init_logging(serving: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("ASCLEPIOS_LOG")
        .unwrap_or_else(|_| EnvFilter::new(if serving { "info" } else { "warn" }));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if std::env::var("ASCLEPIOS_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(matches!(
        cli.command,
        Command::Serve { .. } | Command::Portal { .. } | Command::Witness(_)
    ));
    let result = match cli.command {
        Command::Log(command) => return log_cmd::run(command),
        Command::Witness(command) => witness_cmd::run(command),
        Command::Attest { dir, command } => return attest_cmd::run(&dir.path(), command),
        Command::Portal {
            dir,
            identity,
            port,
        } => platform::portal(&dir.path(), identity, port),
        Command::Init {
            dir,
            postgres,
            records_dir,
        } => admin::run_init(&dir.path(), postgres, records_dir.as_deref()),
        Command::User {
            dir,
            admin,
            command,
        } => admin::run_user(&dir.path(), admin, command),
        Command::Serve {
            dir,
            postgres,
            only: None,
        } => platform::serve(&dir.path(), postgres),
        Command::Serve {
            dir,
            only: Some(only),
            ..
        } => platform::serve_one(&dir.path(), only),
        Command::Put {
            dir,
            who,
            patient,
            policy,
            version,
            file,
        } => platform::put(&dir.path(), &who, &patient, &file, policy, version),
        Command::Get {
            dir,
            who,
            patient,
            record,
        } => platform::get(&dir.path(), &who, &patient, &record),
        Command::Records { dir, who, patient } => platform::list(&dir.path(), &who, &patient),
        Command::Search {
            dir,
            who,
            ids_only,
            query,
        } => platform::search(&dir.path(), &who, &query.join(" and "), ids_only),
        Command::Import { dir, who, files } => platform::import(&dir.path(), &who, &files),
        Command::Synth {
            patients,
            encounters,
            seed,
        } => synth(patients, encounters, seed),
        Command::Emergency { dir, command } => platform::emergency(&dir.path(), command),
        Command::Consent { dir, command } => platform::consent(&dir.path(), command),
        Command::Audit { dir, who, fhir } => platform::audit(&dir.path(), &who, fhir),
        Command::Erase {
            dir,
            who,
            patient,
            all: _,
            record,
        } => platform::erase(&dir.path(), &who, &patient, record.as_deref()),
        Command::Stats { dir, command } => stats_cmd::run(&dir.path(), command),
        Command::Deid {
            args,
            input,
            output,
        } => deid_cmd::run(&args, &input, &output),
        Command::Export {
            dir,
            who,
            args,
            patient,
            query,
            to,
            out,
        } => deid_cmd::export(
            &dir.path(),
            &who,
            &args,
            &patient,
            query.as_deref(),
            &to,
            &out,
        ),
        Command::Demo { seed } => demo::run(seed),
        Command::Policy { policy } => check_policy(&policy),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn synth(patients: usize, encounters: usize, seed: u64) -> anyhow::Result<()> {
    use std::io::Write;
    let mut generator = asclepios_fhir::synth::Generator::new(seed);
    let mut out = std::io::stdout().lock();
    for _ in 0..patients {
        for resource in generator.patient(encounters).all() {
            match writeln!(out, "{}", serde_json::to_string(resource)?) {
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
                other => other?,
            }
        }
    }
    Ok(())
}

fn check_policy(text: &str) -> anyhow::Result<()> {
    use asclepios_crypto::lsss::SpanProgram;
    use asclepios_crypto::Policy;
    let policy = Policy::parse(text).map_err(|e| {
        let column = match &e {
            asclepios_crypto::PolicyError::Syntax { column, .. } => Some(*column),
            _ => None,
        };
        match column {
            Some(c) => anyhow::anyhow!("{e}\n  {text}\n  {}^", " ".repeat(c.saturating_sub(1))),
            None => anyhow::anyhow!("{e}"),
        }
    })?;
    let msp = SpanProgram::from_policy(&policy);
    println!("canonical:  {policy}");
    let mut attrs = policy.leaves();
    attrs.sort_unstable();
    attrs.dedup();
    println!("attributes: {}", attrs.join(", "));
    println!(
        "matrix:     {} rows x {} columns (one row per attribute occurrence)",
        msp.rows.len(),
        msp.columns
    );
    Ok(())
}
