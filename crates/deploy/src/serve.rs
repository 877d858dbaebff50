//! Starting a deployment's services: the key authority and the record
//! service, each over mutual TLS with its own certificate, both on the
//! deployment's store and audit log.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use asclepios_audit::AuditorPublicKey;
use asclepios_audit::{AuditTrail, Log};
use asclepios_authority::KeyAuthority;
use asclepios_net::server::{self, SignatureCheck};
use asclepios_net::tls;
use asclepios_records::{DirectoryView, RecordService};
use asclepios_store::Store;
use ed25519_dalek::pkcs8::DecodePrivateKey;
use ed25519_dalek::SigningKey;
use tokio::net::TcpListener;
use zeroize::Zeroizing;

use crate::attestation::{self, AttestedCertificate};
use crate::directory::Layout;
use crate::init::{AUTHORITY_SERVICE_IDENTITY, RECORD_SERVICE_IDENTITY};
use crate::{keys, read_file, Config, Error};
use asclepios_authority::record_access::RecordAccess;
use asclepios_authority::record_access::RemoteRecords;
use asclepios_authority::{ComponentGate, EvidenceSource};
use asclepios_net::client::SignedClient;
use asclepios_records::directory::PolledFacts;

/// How often expired break-glass grants are ended, in seconds.
pub const SWEEP_SECONDS: u64 = 2;

/// Consecutive failed sweeps after which the authority fails closed.
pub const SWEEPS_BEFORE_ALARM: u32 = 3;

/// How often the authority verifies its whole state again, in seconds (rows
/// that requests read are checked at each read).
pub const INTEGRITY_CHECK_SECONDS: u64 = 30;

/// The log every service appends to.
pub const AUDIT_LOG_ID: &str = "audit";

/// Running services; dropping this stops them.
#[derive(Debug)]
pub struct Services {
    /// Where the authority listens.
    pub authority: SocketAddr,
    /// Where the record service listens.
    pub records: SocketAddr,
    _stop: Stop,
}

/// Tells the services started with it to stop when dropped.
#[derive(Debug)]
struct Stop(tokio::sync::watch::Sender<bool>);

impl Drop for Stop {
    fn drop(&mut self) {
        let _ = self.0.send(true);
    }
}

/// Where each service listens (overriding the configuration, e.g. port 0).
#[derive(Clone, Debug, Default)]
pub struct Listen {
    /// The authority's address.
    pub authority: Option<String>,
    /// The record service's address.
    pub records: Option<String>,
}

fn open_store(dir: &Path, config: &Config) -> Result<Store, Error> {
    config.open_store(dir)
}

struct ServiceKeys {
    tls: Option<Arc<rustls::ServerConfig>>,
    receipt: SigningKey,
}

/// A service's receipt key and, if `serves_its_certificate`, its TLS
/// configuration (the authority mints its TLS certificates instead).
fn service_keys(
    layout: &Layout,
    name: &str,
    serves_its_certificate: bool,
) -> Result<ServiceKeys, Error> {
    let ca = read_file(&layout.ca_cert())?;
    let (cert_path, key_path) = layout.service(name);
    let cert = read_file(&cert_path)?;
    let key = Zeroizing::new(read_file(&key_path)?);
    Ok(ServiceKeys {
        tls: if serves_its_certificate {
            Some(tls::server_config(&ca, &cert, &key)?)
        } else {
            None
        },
        receipt: SigningKey::from_pkcs8_pem(&key)
            .map_err(|e| Error::Invalid(format!("{}: {e}", key_path.display())))?,
    })
}

/// The witnesses a log asks to cosign its checkpoints.
type Witnesses = Vec<(
    asclepios_audit::CosignatureVerifier,
    Box<dyn asclepios_audit::WitnessClient>,
)>;

/// The deployment's audit log, opened once per process and shared by the
/// services' trails; every checkpoint cosigned by the configured quorum of
/// `witnesses` (by default all of them).
///
/// At start the stored log is submitted to every witness: one that saw a
/// longer log, or another history, refuses, and the service does not start
/// (a rewritten or rolled-back store). A witness that cannot be reached
/// is only reported: no checkpoint is served until it cosigns.
fn audit_log(dir: &Path, config: &Config, witnesses: Witnesses) -> Result<Arc<Log<Store>>, Error> {
    let quorum = config
        .audit
        .witness_quorum(witnesses.len())
        .map_err(Error::Invalid)?;
    let log = Log::open(
        open_store(dir, config)?,
        AUDIT_LOG_ID,
        &config.audit.origin,
        keys::log_signer(dir)?,
    )
    .map_err(|e| Error::Invalid(format!("audit log: {e}")))?
    .with_witnesses(witnesses, quorum);
    // A new log signs its empty tree at once, so that clients can verify
    // "nothing here yet" as they verify every later view; a log that
    // exists is checked against its witnesses.
    match log.check_witnesses() {
        Ok(_) => {}
        Err(asclepios_audit::Error::Witness(e)) => {
            tracing::warn!("audit log `{}`: not cosigned yet: {e}", config.audit.origin);
        }
        Err(e) => {
            return Err(Error::Invalid(format!(
                "AUDIT LOG ALARM: refusing to serve: {e}"
            )))
        }
    }
    Ok(Arc::new(log))
}

/// The independent witnesses the configuration names, reached over HTTP.
fn configured_witnesses(config: &Config) -> Result<Witnesses, Error> {
    config
        .audit
        .witnesses
        .iter()
        .map(|w| {
            let key = asclepios_audit::CosignatureVerifier::parse(&w.key)?;
            let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
                Error::Invalid("independent witnesses need the services' runtime".into())
            })?;
            let client = crate::witnesses::HttpWitness::new(&w.url, runtime)?;
            Ok((
                key,
                Box::new(client) as Box<dyn asclepios_audit::WitnessClient>,
            ))
        })
        .collect()
}

/// The key authority's witness, over the authority's own log and, in a
/// split deployment, the record service's.
fn authority_witness(dir: &Path, config: &Config) -> Result<Arc<asclepios_audit::Witness>, Error> {
    let mut logs = vec![keys::log_verifier(dir)?];
    let records = dir.join(crate::split::RECORDS_LOG_VERIFIER);
    if records.exists() {
        logs.push(asclepios_audit::NoteVerifier::parse(&read_file(&records)?)?);
    }
    let witness = asclepios_audit::Witness::open(
        &dir.join("witness"),
        keys::witness_cosigner(dir, &config.audit.origin)?,
        logs.into_iter().map(|v| (v.name().to_string(), v)),
    )
    .map_err(|e| Error::Invalid(format!("the authority's witness: {e}")))?;
    Ok(Arc::new(witness))
}

/// The store as the key authority uses it: its state authenticated and
/// anchored (see [`asclepios_store::Store::with_integrity`]). Tampering found
/// at start does not stop the process: the store opens with the alarm raised
/// and the authority answers 503 with it (and logs it) until an operator has
/// looked and restarted it.
fn authority_store(dir: &Path, config: &Config) -> Result<Store, Error> {
    Ok(open_store(dir, config)?.with_integrity_or_alarm(
        keys::integrity_key(dir)?,
        Some(config.integrity_anchor_file(dir)?),
    )?)
}

/// A service's audit trail: events sealed under ABE at the directory's
/// current attribute versions and to its current auditors. Under an
/// integrity alarm the directory cannot be read, yet the alarm itself (and
/// what fails after it) must be logged: those events go to the auditors and
/// versions last read from a verified directory.
fn trail(
    dir: &Path,
    directory: &Store,
    log: Arc<Log<Store>>,
    name: &str,
    receipt: SigningKey,
) -> Result<AuditTrail<Store>, Error> {
    let versions = directory.clone();
    let auditors = directory.clone();
    let last_auditors = std::sync::Mutex::new(Vec::new());
    Ok(
        AuditTrail::new(log, keys::abe_public_key(dir)?, Vec::new(), name, receipt)
            .with_policy_versions(
                move |p| match asclepios_authority::resolve_with(&versions, p) {
                    Err(_) if versions.integrity_alarm().is_some() => Ok(p.clone()),
                    other => other,
                },
            )
            .with_current_auditors(move || {
                let mut last = last_auditors.lock().unwrap_or_else(|p| p.into_inner());
                match keys::current_auditors(&auditors) {
                    Ok(current) => {
                        last.clone_from(&current);
                        Ok(current)
                    }
                    Err(_) if auditors.integrity_alarm().is_some() => Ok(last.clone()),
                    Err(e) => Err(e),
                }
            }),
    )
}

/// The record service's audit trail: events sealed at the attribute
/// versions and to the auditors of the authority's signed facts (the last
/// verified ones while the authority cannot vouch: the events must still be
/// written).
fn records_trail(
    dir: &Path,
    view: &Arc<DirectoryView>,
    log: Arc<Log<Store>>,
    receipt: SigningKey,
) -> Result<AuditTrail<Store>, Error> {
    let facts = {
        let view = view.clone();
        move || -> Result<Arc<asclepios_api::DirectoryFacts>, String> {
            match view.facts() {
                Ok(f) => Ok(f),
                Err(e) => view.last().ok_or(e.message),
            }
        }
    };
    let versions = facts.clone();
    Ok(AuditTrail::new(
        log,
        keys::abe_public_key(dir)?,
        Vec::new(),
        "records",
        receipt,
    )
    .with_policy_versions(move |p| asclepios_records::directory::resolve(&*versions()?, p))
    .with_current_auditors(move || {
        facts()?
            .auditors
            .iter()
            .map(|(id, key)| {
                hex::decode(key)
                    .ok()
                    .and_then(|k| AuditorPublicKey::from_bytes(&k).ok())
                    .ok_or_else(|| {
                        format!("the directory's sealing key of auditor `{id}` is malformed")
                    })
            })
            .collect()
    }))
}

/// Both services of a deployment, opened but not yet listening.
struct Opened {
    authority: Arc<KeyAuthority>,
    authority_tls: Arc<rustls::ServerConfig>,
    records: Arc<RecordService>,
    records_tls: Arc<rustls::ServerConfig>,
    certificate: Arc<AttestedCertificate>,
}

/// The key authority, opened but not yet listening.
struct AuthorityOpened {
    authority: Arc<KeyAuthority>,
    tls: Arc<rustls::ServerConfig>,
    certificate: Arc<AttestedCertificate>,
    directory: Store,
    log: Arc<Log<Store>>,
}

/// Opens the authority's store, unseals its keys and builds it; it reaches
/// the record service's data through `records` (its own store if `None`).
/// Blocks.
fn open_authority(
    dir: &Path,
    cfg: &Config,
    records: Option<Arc<dyn RecordAccess>>,
) -> Result<AuthorityOpened, Error> {
    let layout = Layout::new(dir);
    let authority_keys = service_keys(&layout, "authority", false)?;
    let witness = authority_witness(dir, cfg)?;
    let mut witnesses: Witnesses = vec![(witness.verifier(), Box::new(witness.clone()))];
    witnesses.extend(configured_witnesses(cfg)?);
    let log = audit_log(dir, cfg, witnesses)?;
    // One authenticated view of the authority's state for the process:
    // every reader checks against the same memory of what was written.
    let directory = authority_store(dir, cfg)?;
    let certificate = Arc::new(AttestedCertificate::new(dir, cfg)?);
    let authority_tls =
        tls::server_config_with_resolver(&read_file(&layout.ca_cert())?, certificate.clone())?;
    let gate = ComponentGate {
        required: cfg.attestation.require_components,
        kinds: cfg.attestation.component_kinds.clone(),
        policy: match attestation::component_policy(dir, cfg) {
            Ok(p) => Some(p),
            Err(e) if cfg.attestation.require_components => return Err(e),
            Err(_) => None,
        },
        registration_seconds: cfg.attestation.registration_seconds,
    };
    let source: Option<Arc<dyn EvidenceSource>> = certificate
        .format()
        .map(|_| certificate.clone() as Arc<dyn EvidenceSource>);
    let authority = KeyAuthority::new(
        directory.clone(),
        trail(
            dir,
            &directory,
            log.clone(),
            "authority",
            authority_keys.receipt,
        )?,
        keys::abe_master_key(dir)?,
        &keys::sse_key(dir)?,
        &*keys::stats_key(dir)?,
        cfg.emergency.grant_seconds,
        cfg.search.roles.clone(),
    )
    .with_cross_patient_search(cfg.search.cross_patient_roles.clone())
    .with_stats_budgets(asclepios_authority::stats::Budgets {
        study: f64::from(cfg.stats.study_budget),
        population: f64::from(cfg.stats.population_budget),
    })
    .with_attestation(source, gate)
    .with_naming_secret(keys::naming_secret(dir)?)
    .with_witness(witness)
    .serving_facts_to(RECORD_SERVICE_IDENTITY);
    let authority = match records {
        Some(records) => authority.with_records(records),
        None => authority,
    };
    Ok(AuthorityOpened {
        authority: Arc::new(authority),
        tls: authority_tls,
        certificate,
        directory,
        log,
    })
}

/// Builds the record service over `store` and `log`, judging callers by
/// the facts `source` brings, signed with `authority_key`. Blocks.
fn open_records(
    dir: &Path,
    cfg: &Config,
    store: Store,
    log: Arc<Log<Store>>,
    authority_key: ed25519_dalek::VerifyingKey,
    source: Arc<dyn asclepios_api::FactsSource>,
) -> Result<(Arc<RecordService>, Arc<rustls::ServerConfig>), Error> {
    let records_keys = service_keys(&Layout::new(dir), "records", true)?;
    // The record service judges callers by the facts the authority signs,
    // verified with the authority's key, never by the store's rows.
    let view = Arc::new(DirectoryView::new(authority_key, source));
    let records = Arc::new(
        RecordService::new(
            store,
            records_trail(dir, &view, log, records_keys.receipt)?,
            view,
        )
        .serving_authority(AUTHORITY_SERVICE_IDENTITY)
        .requiring_attested(if cfg.attestation.require_components {
            cfg.attestation.component_kinds.clone()
        } else {
            Vec::new()
        }),
    );
    let records_tls = records_keys
        .tls
        .ok_or_else(|| Error::Invalid("the record service has no TLS configuration".into()))?;
    Ok((records, records_tls))
}

/// Opens the stores, unseals the keys and builds both services, in one
/// process on one store (development). Blocks (PostgreSQL's client runs its
/// own runtime): call it off async threads.
fn open(dir: &Path, cfg: &Config) -> Result<Opened, Error> {
    let a = open_authority(dir, cfg, None)?;
    let (records, records_tls) = open_records(
        dir,
        cfg,
        open_store(dir, cfg)?.sharing_integrity_of(&a.directory),
        a.log.clone(),
        a.authority.verifying_key(),
        asclepios_authority::facts::in_process(&a.authority),
    )?;
    Ok(Opened {
        authority: a.authority,
        authority_tls: a.tls,
        records,
        records_tls,
        certificate: a.certificate,
    })
}

/// A service's signature check: requests must name it by its TLS name
/// (`@authority`), and their nonces are remembered in its store, shared by
/// every replica and kept across restarts (review finding M7).
fn signature_check(
    store: &asclepios_store::Store,
    service: &'static str,
    config: &crate::config::ServiceConfig,
) -> Arc<SignatureCheck> {
    Arc::new(SignatureCheck {
        authority: config.tls_name.clone(),
        replays: Arc::new(asclepios_service::StoredNonces::new(store.clone(), service)),
        max_body_bytes: config.max_body_bytes,
    })
}

/// The authority's router: its routes behind its signature check, made
/// operable (admission, metrics, `/healthz`, `/readyz`, `/metrics`); and
/// its counters, which also count the connections its listener refuses.
fn authority_router(
    authority: &Arc<KeyAuthority>,
    config: &Config,
) -> (axum::Router, Arc<asclepios_net::metrics::Metrics>) {
    let ops = authority.operations(
        config.authority.limits.admission(),
        vec![RECORD_SERVICE_IDENTITY.to_string()],
        config.authority.metrics_readers.clone(),
    );
    let metrics = ops.metrics.clone();
    let router = authority.clone().router(signature_check(
        authority.store(),
        "authority",
        &config.authority,
    ));
    (asclepios_service::operable(router, ops), metrics)
}

/// The record service's router (as [`authority_router`]).
fn records_router(
    records: &Arc<RecordService>,
    config: &Config,
) -> (axum::Router, Arc<asclepios_net::metrics::Metrics>) {
    let ops = records.operations(
        config.records.limits.admission(),
        config.records.metrics_readers.clone(),
    );
    let metrics = ops.metrics.clone();
    let router =
        records
            .clone()
            .router(signature_check(records.store(), "records", &config.records));
    (asclepios_service::operable(router, ops), metrics)
}

impl Opened {
    /// Both services' routers, each behind its own signature check.
    fn routers(&self, config: &Config) -> Routers {
        let (authority, authority_metrics) = authority_router(&self.authority, config);
        let (records, records_metrics) = records_router(&self.records, config);
        Routers {
            authority,
            records,
            authority_metrics,
            records_metrics,
        }
    }
}

/// Both services' HTTP routers, without TLS or listeners: for in-process
/// harnesses such as the HTTP fuzz target. Each request needs the
/// [`asclepios_net::server::Caller`] extension that the TLS layer of
/// [`start`] adds from the client certificate. Blocks, like opening a store.
#[derive(Debug)]
pub struct Routers {
    /// The key authority's routes.
    pub authority: axum::Router,
    /// The record service's routes.
    pub records: axum::Router,
    /// The authority's counters (its `/metrics`).
    pub authority_metrics: Arc<asclepios_net::metrics::Metrics>,
    /// The record service's counters.
    pub records_metrics: Arc<asclepios_net::metrics::Metrics>,
}

/// Opens the deployment in `dir` and returns its routers (see [`Routers`]).
pub fn routers(dir: &Path) -> Result<Routers, Error> {
    let config = Config::load(dir)?;
    Ok(open(dir, &config)?.routers(&config))
}

/// Starts both services of the deployment in `dir`.
pub async fn start(dir: &Path, listen: &Listen) -> Result<Services, Error> {
    let config = Config::load(dir)?;
    if dir.join(crate::split::RECORDS_LOG_VERIFIER).exists() {
        return Err(Error::Invalid(format!(
            "{} is the key authority's directory of a deployment whose record service has a \
             directory of its own (`init --records-dir`): run `asclepios serve authority --dir {}` \
             and `asclepios serve records --dir <its directory>`",
            dir.display(),
            dir.display()
        )));
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);

    let owned = dir.to_path_buf();
    let cfg = config.clone();
    let opened = tokio::task::spawn_blocking(move || open(&owned, &cfg))
        .await
        .map_err(|e| Error::Invalid(format!("starting services: {e}")))??;
    let routers = opened.routers(&config);
    let Opened {
        authority,
        authority_tls,
        records_tls,
        certificate,
        ..
    } = opened;

    let bind = |addr: String| async move {
        TcpListener::bind(&addr)
            .await
            .map_err(|e| Error::Io(format!("cannot listen on {addr}: {e}")))
    };
    let authority_listener = bind(
        listen
            .authority
            .clone()
            .unwrap_or(config.authority.listen.clone()),
    )
    .await?;
    let records_listener = bind(
        listen
            .records
            .clone()
            .unwrap_or(config.records.listen.clone()),
    )
    .await?;
    let authority_addr = authority_listener
        .local_addr()
        .map_err(|e| Error::Io(e.to_string()))?;
    let records_addr = records_listener
        .local_addr()
        .map_err(|e| Error::Io(e.to_string()))?;

    spawn_authority_tasks(authority, certificate, stopped.clone());
    tokio::spawn(server::serve_with(
        authority_listener,
        authority_tls,
        routers.authority,
        server::ConnectionLimits::default(),
        Some(routers.authority_metrics),
        until_stopped(stopped.clone()),
    ));
    tokio::spawn(server::serve_with(
        records_listener,
        records_tls,
        routers.records,
        server::ConnectionLimits::default(),
        Some(routers.records_metrics),
        until_stopped(stopped),
    ));
    Ok(Services {
        authority: authority_addr,
        records: records_addr,
        _stop: Stop(stop),
    })
}

async fn until_stopped(mut rx: tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// The authority's background work: renewing its attested certificate,
/// ending expired grants and consents, re-wrapping, verifying its state.
fn spawn_authority_tasks(
    authority: Arc<KeyAuthority>,
    certificate: Arc<AttestedCertificate>,
    stopped: tokio::sync::watch::Receiver<bool>,
) {
    // Renew the authority's attested certificate (fresh key, fresh evidence).
    let mut renew_stop = stopped.clone();
    tokio::spawn(async move {
        let every = std::time::Duration::from_secs(certificate.renew_every().max(60));
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = renew_stop.wait_for(|stop| *stop) => return,
            }
            let c = certificate.clone();
            let _ = tokio::task::spawn_blocking(move || c.renew()).await;
        }
    });
    // End expired break-glass grants and consents every few seconds, and
    // verify the authority's whole state now and then; an alarm either
    // raises is logged at once.
    let sweeper = authority.clone();
    let mut sweep_stop = stopped.clone();
    tokio::spawn(async move {
        let mut last_check = std::time::Instant::now();
        let mut failed_sweeps = 0u32;
        loop {
            let s = sweeper.clone();
            let verify = last_check.elapsed().as_secs() >= INTEGRITY_CHECK_SECONDS;
            if verify {
                last_check = std::time::Instant::now();
            }
            let swept = tokio::task::spawn_blocking(move || {
                if verify {
                    s.verify_state();
                }
                if s.integrity_alarm().is_some() {
                    return Ok(false);
                }
                let now = asclepios_net::server::unix_now() as i64;
                // Expiries first, every one of them (each only revokes: a
                // failure is logged and holds up no other), then re-wraps
                // for at most REWRAP_TIME_PER_TICK; the next sweep goes on.
                let grants = s.expire_emergency_grants(now);
                let consents = s.expire_consents(now);
                let result = grants.and(consents).map(|_| ());
                // Re-wraps wait for the record service when it is away: the
                // revocations stand meanwhile, and the next sweep retries.
                // One that made progress and ran out of time goes on at the
                // next sweep, which then comes at once; one that made none
                // waits for the next tick like a failure.
                let more = match s.reconcile_rewraps() {
                    Ok(count) => count > 0 && s.rewraps_pending(),
                    Err(e) => {
                        tracing::warn!("re-wrapping deferred: {e}");
                        false
                    }
                };
                s.integrity_alarm();
                result.map(|()| more)
            })
            .await;
            // An expiry the database keeps refusing leaves access that
            // should have ended: after a few sweeps, fail closed.
            match swept {
                Ok(Err(e)) => {
                    failed_sweeps += 1;
                    tracing::error!("ending expired grants and consents failed: {e}");
                    if failed_sweeps >= SWEEPS_BEFORE_ALARM {
                        let s = sweeper.clone();
                        let reason = format!("expired grants or consents cannot be ended: {e}");
                        let _ = tokio::task::spawn_blocking(move || s.raise_alarm(&reason)).await;
                    }
                }
                Ok(Ok(true)) if !*sweep_stop.borrow() => {
                    failed_sweeps = 0;
                    continue;
                }
                _ => failed_sweeps = 0,
            }
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_secs(SWEEP_SECONDS)) => {}
                _ = sweep_stop.wait_for(|stop| *stop) => return,
            }
        }
    });
}

/// How often the record service asks the authority for newer directory
/// facts: revocations reach it within this.
pub const FACTS_POLL_MILLIS: u64 = 500;

/// How long the record service acts on facts without an answer from the
/// authority; after that it refuses every request until one comes.
pub const FACTS_MAX_AGE_SECONDS: u64 = 10;

/// One service running on its own; dropping this stops it.
#[derive(Debug)]
pub struct Service {
    /// Where it listens.
    pub addr: SocketAddr,
    _stop: Stop,
}

/// `https://localhost:<port>` for a listening address: how a service on the
/// same host reaches another (every certificate carries `localhost`).
pub fn local_url(listen: &str) -> String {
    let port = listen.rsplit(':').next().unwrap_or(listen);
    format!("https://localhost:{port}")
}

/// A service identity's mutual-TLS connection to the service at `url`.
fn service_client(
    dir: &Path,
    id: &str,
    url: &str,
    service: &crate::config::ServiceConfig,
) -> Result<SignedClient, Error> {
    let layout = Layout::new(dir);
    let (cert, key) = layout.identity(id);
    Ok(SignedClient::new(
        url,
        &service.tls_name,
        id,
        &read_file(&layout.ca_cert())?,
        &read_file(&cert)?,
        &Zeroizing::new(read_file(&key)?),
    )?)
}

/// Starts the key authority alone, from its data directory `dir`; it
/// reaches the record service at `records_url` (as `svc-authority`) for
/// re-wraps and the index. Listens on `listen` (else the configuration's).
pub async fn start_authority(
    dir: &Path,
    listen: Option<&str>,
    records_url: &str,
) -> Result<Service, Error> {
    let config = Config::load(dir)?;
    let records: Arc<dyn RecordAccess> = Arc::new(RemoteRecords::new(
        service_client(
            dir,
            AUTHORITY_SERVICE_IDENTITY,
            records_url,
            &config.records,
        )?,
        tokio::runtime::Handle::current(),
    ));
    let (owned, cfg) = (dir.to_path_buf(), config.clone());
    let opened = tokio::task::spawn_blocking(move || open_authority(&owned, &cfg, Some(records)))
        .await
        .map_err(|e| Error::Invalid(format!("starting the authority: {e}")))??;
    let (router, metrics) = authority_router(&opened.authority, &config);
    let addr = listen.map_or(config.authority.listen.clone(), str::to_string);
    let listener = TcpListener::bind(&addr)
        .await
        .map_err(|e| Error::Io(format!("cannot listen on {addr}: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Io(e.to_string()))?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    spawn_authority_tasks(opened.authority, opened.certificate, stopped.clone());
    tokio::spawn(server::serve_with(
        listener,
        opened.tls,
        router,
        server::ConnectionLimits::default(),
        Some(metrics),
        until_stopped(stopped),
    ));
    Ok(Service {
        addr,
        _stop: Stop(stop),
    })
}

/// Starts the record service alone, from its own data directory `dir` (see
/// [`crate::split`]); it learns the directory from the authority at
/// `authority_url` (as `svc-records`). Listens on `listen` (else the
/// configuration's). Until the authority answers, requests are refused.
pub async fn start_records(
    dir: &Path,
    listen: Option<&str>,
    authority_url: &str,
) -> Result<Service, Error> {
    let config = Config::load(dir)?;
    let source = PolledFacts::spawn(
        service_client(
            dir,
            RECORD_SERVICE_IDENTITY,
            authority_url,
            &config.authority,
        )?,
        std::time::Duration::from_millis(FACTS_POLL_MILLIS),
        std::time::Duration::from_secs(FACTS_MAX_AGE_SECONDS),
    );
    let authority_key = {
        let layout = Layout::new(dir);
        let pem = read_file(&layout.service("authority").0)?;
        let der = tls::certs_from_pem(&pem)?;
        let key = asclepios_net::pki::public_key(&der[0])?;
        ed25519_dalek::VerifyingKey::from_bytes(&key)
            .map_err(|e| Error::Invalid(format!("the authority's certificate key: {e}")))?
    };
    let witness = crate::witnesses::RemoteWitness::new(
        service_client(
            dir,
            RECORD_SERVICE_IDENTITY,
            authority_url,
            &config.authority,
        )?,
        tokio::runtime::Handle::current(),
    );
    let witness_key = keys::witness_verifier(dir)?;
    let (owned, cfg) = (dir.to_path_buf(), config.clone());
    let (records, records_tls) = tokio::task::spawn_blocking(move || {
        let store = open_store(&owned, &cfg)?;
        let mut witnesses: Witnesses = vec![(witness_key, Box::new(witness))];
        witnesses.extend(configured_witnesses(&cfg)?);
        let log = audit_log(&owned, &cfg, witnesses)?;
        open_records(&owned, &cfg, store, log, authority_key, source)
    })
    .await
    .map_err(|e| Error::Invalid(format!("starting the record service: {e}")))??;
    let (router, metrics) = records_router(&records, &config);
    let addr = listen.map_or(config.records.listen.clone(), str::to_string);
    let listener = TcpListener::bind(&addr)
        .await
        .map_err(|e| Error::Io(format!("cannot listen on {addr}: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Io(e.to_string()))?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(server::serve_with(
        listener,
        records_tls,
        router,
        server::ConnectionLimits::default(),
        Some(metrics),
        until_stopped(stopped),
    ));
    Ok(Service {
        addr,
        _stop: Stop(stop),
    })
}
