//! `asclepios init` and `asclepios user ...`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use asclepios_deploy::directory::{Directory, Member};
use asclepios_deploy::init::init;
use asclepios_deploy::Config;
use clap::Subcommand;

/// The data directory: `--dir`, else `$ASCLEPIOS_DIR`, else `./asclepios-data`.
#[derive(clap::Args, Debug)]
pub struct DirArg {
    /// The deployment's data directory [default: $ASCLEPIOS_DIR or ./asclepios-data]
    #[arg(long, global = true)]
    dir: Option<PathBuf>,
}

impl DirArg {
    pub fn path(&self) -> PathBuf {
        self.dir
            .clone()
            .or_else(|| std::env::var_os("ASCLEPIOS_DIR").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("asclepios-data"))
    }
}

#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Add an identity: a client certificate and key under identities/, and its attributes.
    ///
    /// Example: asclepios user add dr-kim --kind clinician --name "Dr. Kim" --attr role:doctor --attr dept:oncology
    Add {
        /// Identity id (letters, digits, '-', '_', '.'); a pseudonym for patients.
        id: String,
        /// What it is: clinician, patient, auditor, researcher, device, service.
        #[arg(long, default_value = "clinician")]
        kind: String,
        /// Its display name.
        #[arg(long)]
        name: Option<String>,
        /// An attribute, namespace:value (repeatable).
        #[arg(long = "attr")]
        attrs: Vec<String>,
        /// Also make it a reader of the audit log: an HPKE key (identities/<id>.audit.key)
        /// that later events are sealed to while it is active and holds role:auditor.
        #[arg(long)]
        auditor: bool,
    },
    /// List identities, their status and attributes (with the version each was granted at).
    List,
    /// Set an identity's attributes to exactly these; removed ones are revoked (their version bumps).
    SetAttrs {
        /// Identity id.
        id: String,
        /// An attribute, namespace:value (repeatable; none removes all).
        #[arg(long = "attr")]
        attrs: Vec<String>,
    },
    /// Disable an identity: refused by every service, all attributes revoked.
    Disable {
        /// Identity id.
        id: String,
    },
}

fn print_member(m: &Member) {
    let attrs: Vec<String> = m
        .attributes
        .iter()
        .map(|(a, v)| {
            if *v == 0 {
                a.clone()
            } else {
                format!("{a}@v{v}")
            }
        })
        .collect();
    let status = match m.identity.status {
        asclepios_store::IdentityStatus::Active => "active",
        asclepios_store::IdentityStatus::Revoked => "DISABLED",
    };
    println!(
        "{:<18} {:<11} {:<9} {:<40} {}",
        m.identity.id,
        m.identity.kind,
        status,
        m.identity.display_name,
        attrs.join(", ")
    );
}

/// A `--postgres` value: a `postgres://` or `postgresql://` URL. Anything
/// else (a libpq keyword string, a typo) is refused rather than taken for a
/// SQLite file name.
pub(crate) fn postgres_url(url: String) -> anyhow::Result<String> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(url)
    } else {
        anyhow::bail!(
            "--postgres takes a URL such as postgres://user@127.0.0.1:5432/db, not `{}`",
            asclepios_store::redact_url(&url)
        )
    }
}

pub fn run_init(dir: &Path, postgres: Option<String>) -> anyhow::Result<()> {
    let mut config = Config::development();
    if let Some(url) = postgres {
        config.store.url = postgres_url(url)?;
    }
    let members = init(dir, &config).with_context(|| format!("initialising {}", dir.display()))?;
    println!("A development deployment is ready in {}:", dir.display());
    println!("  asclepios.toml           configuration (defaults, development attestation)");
    println!("  pki/ca.pem, pki/ca.key   the deployment CA (keep ca.key offline in production)");
    println!(
        "  pki/authority.*, pki/records.*   service certificates for localhost (the authority's"
    );
    println!("                           is an issuer for its attested TLS certificates)");
    println!("  attestation-policy.toml, component-policy.toml   development reference values");
    println!("  identities/<id>.*        client certificates and keys of the sample organisation");
    println!("  store                    {}", config.store.shown());
    println!(
        "  {}   the authority's sealing key: outside the data directory, so a copy of it opens nothing",
        config.seal_key_file(dir)?.display()
    );
    println!();
    for m in &members {
        print_member(m);
    }
    println!();
    for w in asclepios_deploy::attestation::warnings(&config) {
        eprintln!("WARNING: {w}");
    }
    println!("Next: asclepios serve --dir {}", dir.display());
    Ok(())
}

pub fn run_user(dir: &Path, command: UserCommand) -> anyhow::Result<()> {
    let directory = Directory::open(dir)?;
    match command {
        UserCommand::Add {
            id,
            kind,
            name,
            attrs,
            auditor,
        } => {
            let name = name.unwrap_or_else(|| id.clone());
            let m = directory.add(&id, &kind, &name, &attrs)?;
            print_member(&m);
            println!(
                "certificate and key: {}/identities/{id}.pem, .key",
                dir.display()
            );
            if auditor {
                directory.make_auditor(&id)?;
                println!(
                    "audit-log key: {}/identities/{id}.audit.key (events are sealed to it while {id} is active and holds role:auditor)",
                    dir.display()
                );
            }
        }
        UserCommand::List => {
            for m in directory.list()? {
                print_member(&m);
            }
        }
        UserCommand::SetAttrs { id, attrs } => {
            let done = directory.set_attributes(&id, &attrs)?;
            print_member(&directory.member(&id)?);
            if !done.revoked.is_empty() {
                println!(
                    "revoked: {} (new versions; other holders get fresh keys at their next key fetch)",
                    done.revoked.join(", ")
                );
                println!(
                    "re-wrapped {} record key(s) under the new versions",
                    done.rewrapped
                );
            }
        }
        UserCommand::Disable { id } => {
            let done = directory.disable(&id)?;
            print_member(&directory.member(&id)?);
            println!(
                "disabled; revoked attributes: {}; re-wrapped {} record key(s)",
                done.revoked.join(", "),
                done.rewrapped
            );
        }
    }
    Ok(())
}
