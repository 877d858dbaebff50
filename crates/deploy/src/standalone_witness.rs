//! An independent witness of a deployment's audit logs: its own directory,
//! its own key and its own state, run by a party other than the log
//! operators (`asclepios witness init|add-log|serve`).
//!
//! ```text
//! witness.toml       its name, where it listens, the logs it witnesses
//!                    (origin and checkpoint key of each)
//! witness.key, .pub  its cosigning key (C2SP cosignature/v1)
//! state/, evidence/  the latest cosigned checkpoint per log; refused ones
//! ```
//!
//! It speaks C2SP `tlog-witness` over plain HTTP (`POST /add-checkpoint`):
//! nothing secret crosses (checkpoints are public), the witness checks the
//! log's signature on what it is sent, and readers check the witness's
//! cosignature on what it answers, so the channel adds no trust. Put it
//! behind a TLS-terminating proxy to hide which logs it serves.

use std::path::Path;
use std::sync::Arc;

use asclepios_audit::{Cosigner, NoteVerifier, Witness, WitnessError};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::{create_private_dir, read_file, write_new_file, Error};

/// The witness's configuration file.
pub const WITNESS_CONFIG: &str = "witness.toml";

/// A standalone witness's configuration.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessConfig {
    /// Where it listens.
    pub listen: String,
    /// The logs it witnesses.
    #[serde(default)]
    pub logs: Vec<WitnessedLog>,
}

/// One log a witness knows.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessedLog {
    /// The log's origin line.
    pub origin: String,
    /// Its checkpoint key (C2SP vkey).
    pub key: String,
}

fn load(dir: &Path) -> Result<WitnessConfig, Error> {
    let path = dir.join(WITNESS_CONFIG);
    toml::from_str(&read_file(&path)?)
        .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))
}

fn save(dir: &Path, config: &WitnessConfig) -> Result<(), Error> {
    let path = dir.join(WITNESS_CONFIG);
    let text = toml::to_string(config).map_err(|e| Error::Invalid(e.to_string()))?;
    std::fs::write(&path, text)
        .map_err(|e| Error::Io(format!("cannot write {}: {e}", path.display())))
}

/// Makes a witness named `name` in the new directory `dir`, listening on
/// `listen`; returns its public key (to give to the deployment).
pub fn init(dir: &Path, name: &str, listen: &str) -> Result<String, Error> {
    if dir.join(WITNESS_CONFIG).exists() {
        return Err(Error::Invalid(format!(
            "{} already holds a witness",
            dir.display()
        )));
    }
    create_private_dir(dir)?;
    let cosigner = Cosigner::generate(name)?;
    write_new_file(&dir.join("witness.key"), &cosigner.to_secret_string(), true)?;
    let public = format!("{}\n", cosigner.verifier());
    write_new_file(&dir.join("witness.pub"), &public, false)?;
    save(
        dir,
        &WitnessConfig {
            listen: listen.to_string(),
            logs: Vec::new(),
        },
    )?;
    Ok(public)
}

/// Adds the log whose checkpoint key is `key` (its name is its origin).
pub fn add_log(dir: &Path, key: &str) -> Result<String, Error> {
    let verifier = NoteVerifier::parse(key.trim())?;
    let mut config = load(dir)?;
    config.logs.retain(|l| l.origin != verifier.name());
    config.logs.push(WitnessedLog {
        origin: verifier.name().to_string(),
        key: verifier.to_string(),
    });
    save(dir, &config)?;
    Ok(verifier.name().to_string())
}

/// Opens the witness in `dir`.
pub fn open(dir: &Path) -> Result<(Witness, WitnessConfig), Error> {
    let config = load(dir)?;
    let key = Zeroizing::new(read_file(&dir.join("witness.key"))?);
    let logs = config
        .logs
        .iter()
        .map(|l| Ok((l.origin.clone(), NoteVerifier::parse(&l.key)?)))
        .collect::<Result<Vec<_>, Error>>()?;
    let witness = Witness::open(dir, Cosigner::parse(&key)?, logs)
        .map_err(|e| Error::Invalid(format!("the witness in {}: {e}", dir.display())))?;
    Ok((witness, config))
}

/// The witness's HTTP routes (`POST /add-checkpoint`).
pub fn router(witness: Arc<Witness>) -> axum::Router {
    axum::Router::new()
        .route("/add-checkpoint", axum::routing::post(add_checkpoint))
        .layer(axum::extract::DefaultBodyLimit::max(
            asclepios_audit::witness::MAX_REQUEST_BYTES,
        ))
        .with_state(witness)
}

async fn add_checkpoint(State(witness): State<Arc<Witness>>, body: axum::body::Bytes) -> Response {
    let answer = tokio::task::spawn_blocking(move || witness.add_checkpoint(&body)).await;
    let text = |status: StatusCode, kind: &'static str, body: String| {
        (status, [(header::CONTENT_TYPE, kind)], body).into_response()
    };
    match answer {
        Ok(Ok(lines)) => text(StatusCode::OK, "text/plain; charset=utf-8", lines),
        Ok(Err(WitnessError::Conflict { latest, fork })) => {
            if fork {
                tracing::error!("refused a fork or rollback (evidence kept)");
            }
            text(
                StatusCode::CONFLICT,
                "text/x.tlog.size",
                format!("{latest}\n"),
            )
        }
        Ok(Err(e)) => {
            if e.is_misbehaviour() {
                tracing::error!("{e} (evidence kept)");
            }
            text(
                StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST),
                "text/plain; charset=utf-8",
                format!("{e}\n"),
            )
        }
        Err(_) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain; charset=utf-8",
            "the witness failed\n".into(),
        ),
    }
}

/// Serves the witness in `dir` on `listen` (else its configured address)
/// until the process ends; returns where it listens once it does.
pub async fn serve(
    dir: &Path,
    listen: Option<&str>,
) -> Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>), Error> {
    let owned = dir.to_path_buf();
    let (witness, config) = tokio::task::spawn_blocking(move || open(&owned))
        .await
        .map_err(|e| Error::Invalid(e.to_string()))??;
    let addr = listen.map_or(config.listen.clone(), str::to_string);
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|e| Error::Io(format!("cannot listen on {addr}: {e}")))?;
    let local = listener
        .local_addr()
        .map_err(|e| Error::Io(e.to_string()))?;
    let app = router(Arc::new(witness));
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((local, task))
}
