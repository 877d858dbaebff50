//! `asclepios init` and `asclepios user ...`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use asclepios_authority::admin::{MemberOut, Registration};
use asclepios_deploy::directory::issue_identity_files;
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

/// Who administers the directory: an identity holding `role:admin`.
#[derive(clap::Args, Debug)]
pub struct AdminArg {
    /// The administrator to act as: an identity holding role:admin (`init` makes admin-ada).
    /// Directory changes go through the running key authority, signed and audited.
    #[arg(long = "as", global = true, value_name = "ID")]
    identity: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Add an identity: a client certificate and key under identities/, and its attributes.
    ///
    /// Example: asclepios user add dr-kim --as admin-ada --kind clinician --name "Dr. Kim" --attr role:doctor --attr dept:oncology
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

fn print_member(m: &MemberOut) {
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
    let status = if m.active { "active" } else { "DISABLED" };
    println!(
        "{:<18} {:<11} {:<9} {:<40} {}",
        m.id,
        m.kind,
        status,
        m.display_name,
        attrs.join(", ")
    );
}

fn print_revocation(r: &asclepios_authority::admin::Revocation) {
    if !r.revoked.is_empty() {
        println!(
            "revoked: {} (new versions; other holders get fresh keys at their next key fetch)",
            r.revoked.join(", ")
        );
        println!(
            "re-wrapped {} record key(s) under the new versions",
            r.rewrapped
        );
        if r.continues_in_background {
            println!("the authority re-wraps the rest in the background (the record service refuses the revoked holders already)");
        }
    }
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

pub fn run_init(
    dir: &Path,
    postgres: Option<String>,
    records_dir: Option<&Path>,
) -> anyhow::Result<()> {
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
        print_member(&MemberOut::from(m));
    }
    println!();
    for w in asclepios_deploy::attestation::warnings(&config) {
        eprintln!("WARNING: {w}");
    }
    match records_dir {
        Some(records) => {
            asclepios_deploy::split::write_records_dir(dir, records)
                .with_context(|| format!("writing {}", records.display()))?;
            println!(
                "The record service's own directory is ready in {}: its TLS and client \
                 certificates, its audit log's key, the public keys it checks; nothing that \
                 opens a record or speaks for the authority.",
                records.display()
            );
            println!(
                "Next: asclepios serve authority --dir {} & asclepios serve records --dir {}",
                dir.display(),
                records.display()
            );
        }
        None => println!("Next: asclepios serve --dir {}", dir.display()),
    }
    Ok(())
}

/// `asclepios user ...`: through the key authority's API, as an
/// administrator; nothing here writes to a store.
pub fn run_user(dir: &Path, admin: AdminArg, command: UserCommand) -> anyhow::Result<()> {
    let Some(identity) = admin.identity else {
        anyhow::bail!(
            "`asclepios user` changes the directory through the running key authority, as an \
             administrator: add --as ID of an identity holding role:admin (`init` makes admin-ada)"
        );
    };
    let who = crate::platform::AsArg { identity };
    crate::platform::runtime()?.block_on(async {
        let client = crate::platform::connect(dir, &who)?;
        match command {
            UserCommand::Add {
                id,
                kind,
                name,
                attrs,
                auditor,
            } => {
                // The certificate comes from the deployment CA, here; the
                // directory entry from the authority.
                let public_key = issue_identity_files(dir, &id)?;
                let registered = client
                    .register_identity(&Registration {
                        display_name: name.unwrap_or_else(|| id.clone()),
                        id: id.clone(),
                        kind,
                        public_key: hex::encode(public_key),
                        attributes: attrs,
                    })
                    .await;
                let done = match registered {
                    Ok(done) => done,
                    Err(e) => {
                        // A refused registration leaves no certificate behind.
                        let layout = asclepios_deploy::directory::Layout::new(dir);
                        let (cert, key) = layout.identity(&id);
                        let _ = std::fs::remove_file(cert);
                        let _ = std::fs::remove_file(key);
                        return Err(anyhow::Error::new(e).context(format!("registering {id}")));
                    }
                };
                print_member(&done.member);
                println!(
                    "certificate and key: {}/identities/{id}.pem, .key",
                    dir.display()
                );
                if auditor {
                    let public = asclepios_deploy::keys::create_auditor_key(dir, &id)?;
                    client.set_auditor_key(&id, &public.to_bytes()).await?;
                    println!(
                        "audit-log key: {}/identities/{id}.audit.key (events are sealed to it while {id} is active and holds role:auditor)",
                        dir.display()
                    );
                }
            }
            UserCommand::List => {
                for m in client.directory_members().await? {
                    print_member(&m);
                }
            }
            UserCommand::SetAttrs { id, attrs } => {
                let done = client.set_identity_attributes(&id, &attrs).await?;
                print_member(&done.member);
                print_revocation(&done.revocation);
            }
            UserCommand::Disable { id } => {
                let done = client.disable_identity(&id).await?;
                print_member(&done.member);
                println!(
                    "disabled; revoked attributes: {}; re-wrapped {} record key(s)",
                    done.revocation.revoked.join(", "),
                    done.revocation.rewrapped
                );
            }
        }
        Ok(())
    })
}
