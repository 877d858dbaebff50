//! Load: N concurrent mutual-TLS clients (default 64) against `serve`
//! running in its own process, mixing reads, writes, searches and key
//! fetches for a fixed time. Reports throughput, latency percentiles and
//! errors per operation, and the service process's peak resident memory
//! (`VmHWM`), which is why the services run in a child process: this bench
//! binary re-executed as `__serve DIR`.
//!
//! Each client is a [`Client`] of its own identity (a clinician on the
//! patient's care team), with its own TLS connections, and runs closed
//! loop (a request, its answer, the next request), so 64 clients keep up to
//! 64 requests in flight. The operations:
//!
//! - `read`: fetch a sealed record and check its signed receipt (service
//!   signature, checkpoint, inclusion proof): the service's read path. The
//!   client's ABE decryption is client CPU and is left out here (`e2e`
//!   measures it).
//! - `write`: seal an Observation (FAME encrypt, author signature), store it,
//!   and index its keywords at the authority.
//! - `search`: one keyword (the date of a stored record): tokens from the
//!   authority, values from the record service, opened.
//! - `key`: fetch this identity's ABE key (FAME key generation at the
//!   authority).
//!
//! Clients, services and the store share this machine's cores.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use asclepios_client::Client;
use asclepios_deploy::serve::{start_authority, start_records};
use asclepios_deploy::{init::init, Config};
use asclepios_fhir::synth::Generator;
use rand_core::RngCore;
use serde_json::{json, Value};

const PATIENT: &str = "pat-00000";
/// The identity that stores the records read and searched.
const AUTHOR: &str = "dr-heart";

/// Client `i`'s identity: each client is a clinician of its own on the
/// patient's care team (64 people at their screens, not two systems with
/// 32 connections each, which the per-identity limits would throttle).
fn clinician(i: usize) -> String {
    format!("clin-{i:03}")
}
/// Records stored before the clock starts, for reads and searches (fewer
/// with `--quick`).
const PRELOAD: usize = 200;
const PRELOAD_QUICK: usize = 20;

/// Pauses between one client's requests: none (saturation: every client
/// sends its next request as soon as the last is answered, so latency is
/// mostly queueing behind the other 63), then a paced load (a person or a
/// system sending a request every ~250 ms per connection, 64 of them
/// together about a quarter of what this machine serves at saturation).
const THINK_MS: [u64; 2] = [0, 250];

/// The mix, in percent.
const MIX: [(Op, u32); 4] = [
    (Op::Read, 70),
    (Op::Write, 10),
    (Op::Search, 10),
    (Op::Key, 10),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Read,
    Write,
    Search,
    Key,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Write => "write",
            Op::Search => "search",
            Op::Key => "key",
        }
    }

    fn pick(roll: u32) -> Op {
        let mut acc = 0;
        for (op, share) in MIX {
            acc += share;
            if roll % 100 < acc {
                return op;
            }
        }
        Op::Read
    }
}

/// The hidden `__serve DIR` mode: the deployment's services until killed.
/// `__serve-authority DIR` or `__serve-records DIR`: one service in this
/// process, reaching the other at its configured port.
pub fn serve_child(which: &str, dir: &Path) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        use asclepios_deploy::serve::local_url;
        let config = Config::load(dir)?;
        let _service = if which == "authority" {
            start_authority(dir, None, &local_url(&config.records.listen)).await?
        } else {
            start_records(dir, None, &local_url(&config.authority.listen)).await?
        };
        std::future::pending::<()>().await;
        Ok(())
    })
}

/// The two services as two processes, each from its own directory.
struct Served {
    children: Vec<Child>,
}

impl Served {
    fn start(authority_dir: &Path, records_dir: &Path, ports: [u16; 2]) -> anyhow::Result<Served> {
        let mut served = Served {
            children: Vec::new(),
        };
        for (mode, dir) in [
            ("__serve-authority", authority_dir),
            ("__serve-records", records_dir),
        ] {
            served.children.push(
                Command::new(std::env::current_exe()?)
                    .arg(mode)
                    .arg(dir)
                    .stdout(Stdio::null())
                    .stderr(Stdio::inherit())
                    .spawn()
                    .with_context(|| format!("starting {mode}"))?,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while !ports
            .iter()
            .all(|&p| std::net::TcpStream::connect(("127.0.0.1", p)).is_ok())
        {
            for child in &mut served.children {
                if let Some(status) = child.try_wait()? {
                    bail!("a service's process exited with {status}");
                }
            }
            if Instant::now() > deadline {
                bail!("the services did not listen within 60 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // The record service serves once it holds the authority's facts.
        std::thread::sleep(Duration::from_millis(
            2 * asclepios_deploy::serve::FACTS_POLL_MILLIS,
        ));
        Ok(served)
    }

    /// The processes' peak resident sets (`VmHWM`) added up, in MiB.
    fn peak_rss_mib(&self) -> anyhow::Result<f64> {
        let mut total = 0.0;
        for child in &self.children {
            let status = std::fs::read_to_string(format!("/proc/{}/status", child.id()))?;
            let kib: f64 = status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .context("no VmHWM in /proc/PID/status")?;
            total += kib / 1024.0;
        }
        Ok(total)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Settings from the command line (`--clients N`, `--seconds S`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// Concurrent clients (64).
    pub clients: Option<u64>,
    /// Seconds per phase (30; with `--quick`, 3).
    pub seconds: Option<u64>,
}

pub fn run(quick: bool, options: Options) -> anyhow::Result<Vec<Value>> {
    let clients = options.clients.unwrap_or(64) as usize;
    let seconds = options.seconds.unwrap_or(if quick { 3 } else { 30 });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let preload = if quick { PRELOAD_QUICK } else { PRELOAD };
    runtime.block_on(run_async(clients, preload, Duration::from_secs(seconds)))
}

struct Samples {
    op: Op,
    micros: Vec<f64>,
    errors: u64,
    /// Answered 429 (the services shed load on purpose): not errors, and
    /// not in the latencies.
    throttled: u64,
}

/// One empty sample list per operation of the mix.
fn empty_samples() -> Vec<Samples> {
    MIX.iter()
        .map(|&(op, _)| Samples {
            op,
            micros: Vec::new(),
            errors: 0,
            throttled: 0,
        })
        .collect()
}

async fn client_loop(
    mut client: Client,
    seed: u64,
    records: Arc<Vec<(String, String)>>,
    policy: Arc<asclepios_crypto::Policy>,
    think: Duration,
    stop: Arc<AtomicBool>,
) -> (Client, Vec<Samples>) {
    let mut out = empty_samples();
    let mut synth = Generator::new(seed);
    let mut n = 0u64;
    let mut first_error = true;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        // Every client starts with one of each operation, in turn, so that
        // even a short run under a loaded machine measures every one; then
        // the mix decides.
        let op = match MIX.get(n as usize - 1) {
            Some((op, _)) => *op,
            None => Op::pick(rand_core::OsRng.next_u32()),
        };
        let (record_id, date) = &records[rand_core::OsRng.next_u32() as usize % records.len()];
        let t = Instant::now();
        let outcome: Result<(), asclepios_client::ClientError> = match op {
            Op::Read => client.get_sealed(PATIENT, record_id).await.map(|_| ()),
            Op::Write => {
                let mut resource = synth.blood_pressure(PATIENT);
                resource["id"] = format!("load-{seed}-{n}").into();
                // (The naming key is fetched once, then kept.)
                match client.record_id_for(PATIENT, &resource).await {
                    Ok(record_id) => client
                        .put_record_resolved(PATIENT, &record_id, 1, &resource, &policy)
                        .await
                        .map(|_| ()),
                    Err(e) => Err(e),
                }
            }
            Op::Search => client.search(date).await.map(|_| ()),
            Op::Key => client.refresh_key().await.map(|_| ()),
        };
        let elapsed = t.elapsed().as_secs_f64() * 1e6;
        if !think.is_zero() {
            // Uniform in [0.5, 1.5) of the mean, so clients do not march in step.
            let f = 0.5 + f64::from(rand_core::OsRng.next_u32()) / f64::from(u32::MAX);
            tokio::time::sleep(think.mul_f64(f)).await;
        }
        let s = out.iter_mut().find(|s| s.op == op).expect("every op");
        match outcome {
            Ok(()) => s.micros.push(elapsed),
            Err(asclepios_client::ClientError::Refused { status: 429, .. }) => {
                // Back off as the service asks (its Retry-After is 1 s
                // unless a rate budget refills sooner).
                s.throttled += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => {
                s.errors += 1;
                if first_error {
                    eprintln!("load: {} failed: {e}", op.name());
                    first_error = false;
                }
            }
        }
    }
    (client, out)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn row(
    name: &str,
    clients: usize,
    think_ms: u64,
    secs: f64,
    micros: &mut [f64],
    (errors, throttled): (u64, u64),
    rss: f64,
) -> Value {
    micros.sort_by(f64::total_cmp);
    let ms = |p| (percentile(micros, p) / 10.0).round() / 100.0;
    json!({
        "suite": "load",
        "op": name,
        "clients": clients,
        "think_ms": think_ms,
        "per_s": (micros.len() as f64 / secs).round(),
        "p50_ms": ms(50.0),
        "p99_ms": ms(99.0),
        "p999_ms": ms(99.9),
        "errors": errors,
        "throttled": throttled,
        "peak_rss_mib": (rss * 10.0).round() / 10.0,
        "ops": micros.len(),
        "seconds": (secs * 10.0).round() / 10.0,
    })
}

fn client(dir: &Path, id: &str, ports: [u16; 2]) -> anyhow::Result<Client> {
    Ok(Client::connect(
        dir,
        id,
        &format!("https://localhost:{}", ports[0]),
        &format!("https://localhost:{}", ports[1]),
    )?)
}

async fn run_async(
    clients: usize,
    preload: usize,
    duration: Duration,
) -> anyhow::Result<Vec<Value>> {
    let tmp = tempfile::tempdir()?;
    let dir: PathBuf = tmp.path().join("authority");
    let records_dir: PathBuf = tmp.path().join("records");
    let ports = [free_port()?, free_port()?];
    let mut config = Config::development();
    config.authority.listen = format!("127.0.0.1:{}", ports[0]);
    config.records.listen = format!("127.0.0.1:{}", ports[1]);
    let (d, r) = (dir.clone(), records_dir.clone());
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        init(&d, &config)?;
        let directory = asclepios_deploy::directory::Directory::open(&d)?;
        for i in 0..clients {
            let id = clinician(i);
            directory.add(
                &id,
                "clinician",
                &id,
                &["role:doctor".into(), format!("care-team:{PATIENT}")],
            )?;
        }
        drop(directory);
        asclepios_deploy::split::write_records_dir(&d, &r)?;
        Ok(())
    })
    .await??;
    let served = Served::start(&dir, &records_dir, ports)?;
    let config = Config::load(&dir)?;

    eprintln!("load: storing {preload} records to read and search");
    let mut author = client(&dir, AUTHOR, ports)?;
    author.refresh_key().await?;
    let policy = Arc::new(
        author
            .resolve_policy(&config.default_policy(PATIENT))
            .await?,
    );
    let mut synth = Generator::new(7);
    let mut records = Vec::with_capacity(preload);
    for i in 0..preload {
        let mut resource = synth.blood_pressure(PATIENT);
        resource["id"] = format!("preload-{i}").into();
        let record_id = author.record_id_for(PATIENT, &resource).await?;
        author
            .put_record_resolved(PATIENT, &record_id, 1, &resource, &policy)
            .await?;
        let date = asclepios_client::search::record_keywords(PATIENT, &resource)
            .into_iter()
            .find(|k| k.starts_with("date:"))
            .context("a dated observation")?;
        records.push((record_id, date));
    }
    let records = Arc::new(records);

    eprintln!("load: {clients} clients connecting and fetching keys");
    let mut connected = Vec::with_capacity(clients);
    for i in 0..clients {
        let mut c = client(&dir, &clinician(i), ports)?;
        c.refresh_key().await?;
        // A 429 comes back as such and is counted apart from errors.
        c.set_throttle_retries(0);
        connected.push(c);
    }

    let mut rows = Vec::new();
    for think_ms in THINK_MS {
        eprintln!(
            "load: {clients} clients for {} s, {think_ms} ms between requests",
            duration.as_secs()
        );
        let think = Duration::from_millis(think_ms);
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let tasks: Vec<_> = connected
            .drain(..)
            .enumerate()
            .map(|(i, c)| {
                tokio::spawn(client_loop(
                    c,
                    (think_ms << 16) + i as u64,
                    records.clone(),
                    policy.clone(),
                    think,
                    stop.clone(),
                ))
            })
            .collect();
        tokio::time::sleep(duration).await;
        stop.store(true, Ordering::Relaxed);
        let mut per_op = empty_samples();
        for t in tasks {
            let (client, samples) = t.await?;
            connected.push(client);
            for s in samples {
                let slot = per_op.iter_mut().find(|p| p.op == s.op).expect("every op");
                slot.micros.extend(s.micros);
                slot.errors += s.errors;
                slot.throttled += s.throttled;
            }
        }
        let secs = started.elapsed().as_secs_f64();
        let rss = served.peak_rss_mib()?;
        let mut all: Vec<f64> = per_op.iter().flat_map(|s| s.micros.clone()).collect();
        let errors = per_op.iter().map(|s| s.errors).sum();
        let throttled = per_op.iter().map(|s| s.throttled).sum();
        let first = rows.len();
        rows.push(row(
            "mixed",
            clients,
            think_ms,
            secs,
            &mut all,
            (errors, throttled),
            rss,
        ));
        for s in &mut per_op {
            rows.push(row(
                s.op.name(),
                clients,
                think_ms,
                secs,
                &mut s.micros,
                (s.errors, s.throttled),
                rss,
            ));
        }
        eprintln!(
            "load: {think_ms} ms think time: errors {errors} (target 0; besides {throttled} deliberate 429s), read p99 {} ms (target < 50), peak RSS {} MiB (target < 256)",
            rows[first + 1]["p99_ms"], rows[first]["peak_rss_mib"]
        );
    }
    drop(served);
    Ok(rows)
}
