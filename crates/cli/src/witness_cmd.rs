//! `asclepios witness`: an independent witness of a deployment's audit logs.

use std::path::PathBuf;

use anyhow::Context;
use asclepios_deploy::standalone_witness;

#[derive(clap::Subcommand, Debug)]
pub enum WitnessCommand {
    /// Make a witness in a new directory: its cosigning key and witness.toml.
    ///
    /// Example: asclepios witness init --dir w --name witness.example.org/w1
    Init {
        /// The witness's directory (created; private).
        #[arg(long)]
        dir: PathBuf,
        /// Its name, a schema-less URL that identifies it.
        #[arg(long)]
        name: String,
        /// Where it listens.
        #[arg(long, default_value = "127.0.0.1:7380")]
        listen: String,
    },
    /// Witness a log, given its checkpoint key (the deployment's
    /// pki/audit-log.pub, and pki/records-log.pub when the services run apart).
    ///
    /// Example: asclepios witness add-log --dir w --key authority-data/pki/audit-log.pub
    AddLog {
        /// The witness's directory.
        #[arg(long)]
        dir: PathBuf,
        /// The log's checkpoint key file.
        #[arg(long)]
        key: PathBuf,
    },
    /// Serve the witness (C2SP tlog-witness: POST /add-checkpoint) until Ctrl-C.
    ///
    /// Then name it in each service's asclepios.toml, so that every checkpoint
    /// carries its cosignature and clients require it:
    ///   [[audit.witnesses]]
    ///   url = "http://127.0.0.1:7380"
    ///   key = "<the witness.pub line>"
    Serve {
        /// The witness's directory.
        #[arg(long)]
        dir: PathBuf,
        /// Where to listen, instead of the configured address.
        #[arg(long)]
        listen: Option<String>,
    },
}

pub fn run(command: WitnessCommand) -> anyhow::Result<()> {
    match command {
        WitnessCommand::Init { dir, name, listen } => {
            let public = standalone_witness::init(&dir, &name, &listen)?;
            println!("witness `{name}` made in {}", dir.display());
            println!("its key (give it to the deployment, [[audit.witnesses]] key):");
            print!("{public}");
            println!(
                "next: asclepios witness add-log --dir {} --key <log's .pub>",
                dir.display()
            );
        }
        WitnessCommand::AddLog { dir, key } => {
            let text = std::fs::read_to_string(&key)
                .with_context(|| format!("reading {}", key.display()))?;
            let origin = standalone_witness::add_log(&dir, &text)?;
            println!("witnessing the log `{origin}`");
        }
        WitnessCommand::Serve { dir, listen } => {
            crate::platform::runtime()?.block_on(async {
                let (addr, _task) = standalone_witness::serve(&dir, listen.as_deref()).await?;
                println!("witness of {} listening on http://{addr}", dir.display());
                tokio::signal::ctrl_c()
                    .await
                    .context("waiting for Ctrl-C")?;
                anyhow::Ok(())
            })?;
        }
    }
    Ok(())
}
