//! End to end: records written and read over mutual TLS by 1, 4 and 16
//! concurrent clients (services in-process on localhost, SQLite store), the
//! read path without the client's decryption, and one read split into its
//! parts: service path, ABE decapsulation, AEAD opening.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use asclepios_client::Client;
use asclepios_crypto::envelope::{KeyWrapper, SealedBody};
use asclepios_deploy::serve::{start_authority, start_records, Service};
use asclepios_deploy::{init::init, Config};
use asclepios_fhir::synth::Generator;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::{json, Value};

use crate::timing::{self, Budget};

const PATIENT: &str = "pat-00000";

/// The two services apart, each on its own directory and store, talking
/// over mutual TLS as in production.
struct Bench {
    _tmp: tempfile::TempDir,
    dir: std::path::PathBuf,
    _services: Running,
    ports: [u16; 2],
}

/// The services as the run starts them.
#[allow(dead_code)] // held only to keep them running
enum Running {
    /// Apart, each on its own directory and store (the default).
    Apart(Service, Service),
    /// Both in one process on one store (`ASCLEPIOS_E2E_COMBINED=1`: the
    /// development shape, for comparison in the same session).
    Combined(asclepios_deploy::serve::Services),
}

impl Bench {
    fn client(&self, id: &str) -> anyhow::Result<Client> {
        Ok(Client::connect(
            &self.dir,
            id,
            &format!("https://localhost:{}", self.ports[0]),
            &format!("https://localhost:{}", self.ports[1]),
        )?)
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Runs `op` on `clients` concurrent tasks for the budget's time; returns
/// operations per second and the median latency in microseconds.
async fn throughput<F, Fut>(
    clients: &[Arc<Client>],
    budget: Budget,
    op: F,
) -> anyhow::Result<(f64, f64)>
where
    F: Fn(Arc<Client>, u64) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let deadline = Instant::now() + budget.min_time;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (i, c) in clients.iter().enumerate() {
        let (c, op) = (c.clone(), op.clone());
        let min = budget.min_iters;
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut n = 0u64;
            while Instant::now() < deadline || samples.len() < min {
                let t = Instant::now();
                op(c.clone(), (i as u64) << 32 | n).await?;
                samples.push(t.elapsed().as_secs_f64() * 1e6);
                n += 1;
            }
            Ok::<_, anyhow::Error>(samples)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok((all.len() as f64 / elapsed, timing::median(&mut all)))
}

pub fn run(quick: bool, budget: Budget) -> anyhow::Result<Vec<Value>> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run_async(quick, budget))
}

async fn run_async(quick: bool, budget: Budget) -> anyhow::Result<Vec<Value>> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("authority");
    let records_dir = tmp.path().join("records");
    let combined = std::env::var_os("ASCLEPIOS_E2E_COMBINED").is_some_and(|v| v == "1");
    let (d, r) = (dir.clone(), records_dir.clone());
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        init(&d, &Config::development())?;
        if !combined {
            asclepios_deploy::split::write_records_dir(&d, &r)?;
        }
        Ok(())
    })
    .await??;
    let ports = [free_port()?, free_port()?];
    let running = if combined {
        eprintln!("e2e: both services in one process (ASCLEPIOS_E2E_COMBINED=1)");
        Running::Combined(
            asclepios_deploy::serve::start(
                &dir,
                &asclepios_deploy::serve::Listen {
                    authority: Some(format!("127.0.0.1:{}", ports[0])),
                    records: Some(format!("127.0.0.1:{}", ports[1])),
                },
            )
            .await?,
        )
    } else {
        let records = start_records(
            &records_dir,
            Some(&format!("127.0.0.1:{}", ports[1])),
            &format!("https://localhost:{}", ports[0]),
        )
        .await?;
        let authority = start_authority(
            &dir,
            Some(&format!("127.0.0.1:{}", ports[0])),
            &format!("https://localhost:{}", ports[1]),
        )
        .await?;
        // The record service serves once it holds the authority's first facts.
        tokio::time::sleep(Duration::from_millis(
            2 * asclepios_deploy::serve::FACTS_POLL_MILLIS,
        ))
        .await;
        Running::Apart(authority, records)
    };
    let bench = Bench {
        _tmp: tmp,
        dir,
        _services: running,
        ports,
    };
    let config = Config::load(&bench.dir)?;
    let mut generator = Generator::new(11);
    let observation = generator.blood_pressure(PATIENT);

    let levels: &[usize] = if quick { &[1, 4] } else { &[1, 4, 16] };
    let max = *levels.iter().max().unwrap_or(&1);
    eprintln!("e2e: {max} clients connecting and fetching keys");
    let mut clients = Vec::new();
    for _ in 0..max {
        let mut c = bench.client("dr-heart")?;
        c.refresh_key().await?;
        clients.push(Arc::new(c));
    }
    let policy = Arc::new(
        clients[0]
            .resolve_policy(&config.default_policy(PATIENT))
            .await?,
    );
    // One record to read, under its opaque id.
    let read_id = clients[0].record_id_for(PATIENT, &observation).await?;
    clients[0]
        .put_record_resolved(PATIENT, &read_id, 1, &observation, &policy)
        .await?;
    let observation = Arc::new(observation);
    let mut rows = Vec::new();

    let next_id = Arc::new(std::sync::atomic::AtomicU64::new(0));
    for &n in levels {
        eprintln!("e2e: write with {n} client(s)");
        let (p, o, ids) = (policy.clone(), observation.clone(), next_id.clone());
        let (per_s, us) = throughput(&clients[..n], budget, move |c, _| {
            let (p, o) = (p.clone(), o.clone());
            let k = ids.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            async move {
                let mut o = (*o).clone();
                o["id"] = format!("bench-{k:x}").into();
                // (The naming key is fetched once per client, then kept.)
                let record_id = c.record_id_for(PATIENT, &o).await?;
                c.put_record_resolved(PATIENT, &record_id, 1, &o, &p)
                    .await?;
                Ok(())
            }
        })
        .await?;
        rows.push(json!({"suite": "e2e", "op": "write", "clients": n, "per_s": per_s.round(), "ours_us": us.round()}));
    }
    for &n in levels {
        eprintln!("e2e: read with {n} client(s)");
        let id = read_id.clone();
        let (per_s, us) = throughput(&clients[..n], budget, move |c, _| {
            let id = id.clone();
            async move {
                c.get_record(PATIENT, &id).await?;
                Ok(())
            }
        })
        .await?;
        rows.push(json!({"suite": "e2e", "op": "read", "clients": n, "per_s": per_s.round(), "ours_us": us.round()}));
        eprintln!("e2e: read-service with {n} client(s)");
        let id = read_id.clone();
        let (per_s, us) = throughput(&clients[..n], budget, move |c, _| {
            let id = id.clone();
            async move {
                c.get_sealed(PATIENT, &id).await?;
                Ok(())
            }
        })
        .await?;
        rows.push(json!({"suite": "e2e", "op": "read-service", "clients": n, "per_s": per_s.round(), "ours_us": us.round()}));
    }

    // One read, split: the same client, measured in turn.
    eprintln!("e2e: read split");
    let c = clients[0].clone();
    let (sealed, _) = c.get_sealed(PATIENT, &read_id).await?;
    let body = SealedBody::from_bytes(&B64.decode(&sealed.body)?)?;
    let wrapper =
        KeyWrapper::from_bytes(&B64.decode(sealed.wrapper.as_deref().context("wrapper")?)?)?;
    let key = c.user_key().context("a key")?;
    let dek = wrapper.unwrap_key(key, &body)?;
    let (body_bytes, wrapper_bytes) = (
        B64.decode(&sealed.body)?,
        B64.decode(sealed.wrapper.as_deref().context("wrapper")?)?,
    );
    // Decoding the untrusted sealed parts: point decompression and subgroup
    // checks of the ABE ciphertext (the part of a read the sum leaves out).
    let decode_us = timing::single(budget, || {
        let _ = SealedBody::from_bytes(&body_bytes);
        let _ = KeyWrapper::from_bytes(&wrapper_bytes);
    });
    let abe_us = timing::single(budget, || {
        let _ = wrapper.unwrap_key(key, &body);
    });
    let aead_us = timing::single(budget, || {
        let _ = body.open(&dek);
    });
    let mut service = Vec::new();
    let mut whole = Vec::new();
    let deadline = Instant::now() + budget.min_time.max(Duration::from_millis(200));
    while Instant::now() < deadline || service.len() < budget.min_iters {
        let t = Instant::now();
        c.get_sealed(PATIENT, &read_id).await?;
        service.push(t.elapsed().as_secs_f64() * 1e6);
        let t = Instant::now();
        c.get_record(PATIENT, &read_id).await?;
        whole.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let service_us = timing::median(&mut service);
    let ours_us = timing::median(&mut whole);
    rows.push(json!({
        "suite": "e2e", "op": "read-split", "clients": 1,
        "service_us": service_us.round(), "abe_us": abe_us.round(), "aead_us": (aead_us * 10.0).round() / 10.0,
        "ours_us": ours_us.round(), "decode_us": decode_us.round(),
        "ratio": (ours_us / (service_us + abe_us + aead_us) * 1000.0).round() / 1000.0,
    }));

    // The patient's audit view: every event about them, each proved
    // against one cosigned checkpoint and opened (target: 10,000 events in
    // under 1 s on SQLite). Reads by the doctors top the count up.
    let events = if quick { 300 } else { 10_000 };
    let mut patient = bench.client(PATIENT)?;
    patient.refresh_key().await?;
    let mut have = patient.audit_view().await?.events.len();
    eprintln!("e2e: audit view: {have} events about {PATIENT}; reading to {events}");
    while have < events {
        let reads = (events - have).div_ceil(clients.len());
        let mut tasks = Vec::new();
        for c in &clients {
            let (c, id) = (c.clone(), read_id.clone());
            tasks.push(tokio::spawn(async move {
                for _ in 0..reads {
                    c.get_sealed(PATIENT, &id).await?;
                }
                Ok::<_, anyhow::Error>(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        have = patient.audit_view().await?.events.len();
    }
    let mut times = Vec::new();
    let deadline = Instant::now() + budget.min_time;
    while times.len() < 3 || (Instant::now() < deadline && times.len() < budget.min_iters) {
        let t = Instant::now();
        let view = patient.audit_view().await?;
        times.push(t.elapsed().as_secs_f64() * 1e6);
        have = view.events.len();
    }
    let ours_us = timing::median(&mut times);
    rows.push(json!({
        "suite": "e2e", "op": "audit-view", "backend": "sqlite", "events": have,
        // The ratio is to the 1 s target.
        "ours_us": ours_us.round(), "ratio": (ours_us / 1e6 * 1000.0).round() / 1000.0,
    }));
    rows.push(erase_patient(&bench, &config, if quick { 100 } else { 1000 }).await?);
    drop(bench);
    Ok(rows)
}

/// `op=erase`: a lab stores `records` records for one patient (4 writers),
/// then the patient erases them all: one request that deletes and purges
/// every version and wrapper (a `TRUNCATE` checkpoint on SQLite), and each
/// record's removal from the search index. Timed once (the patient has
/// nothing left to erase after).
async fn erase_patient(bench: &Bench, config: &Config, records: usize) -> anyhow::Result<Value> {
    const ERASED: &str = "pat-00001";
    eprintln!("e2e: erase: storing {records} records of {ERASED}");
    let mut writers = Vec::new();
    for _ in 0..4 {
        let mut lab = bench.client("lab-central")?;
        lab.refresh_key().await?;
        writers.push(Arc::new(lab));
    }
    let policy = Arc::new(
        writers[0]
            .resolve_policy(&config.default_policy(ERASED))
            .await?,
    );
    let mut tasks = Vec::new();
    for (w, lab) in writers.iter().enumerate() {
        let (lab, policy) = (lab.clone(), policy.clone());
        tasks.push(tokio::spawn(async move {
            let mut generator = Generator::new(100 + w as u64);
            for i in (w..records).step_by(4) {
                let mut o = generator.blood_pressure(ERASED);
                o["id"] = format!("erase-{i}").into();
                let id = lab.record_id_for(ERASED, &o).await?;
                lab.put_record_resolved(ERASED, &id, 1, &o, &policy).await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await.context("a writer stopped")??;
    }
    let mut patient = bench.client(ERASED)?;
    patient.refresh_key().await?;
    eprintln!("e2e: erase: {ERASED} erases everything");
    let started = Instant::now();
    let erased = patient.erase_patient(ERASED, |_, _| {}).await?;
    let ours_us = started.elapsed().as_secs_f64() * 1e6;
    anyhow::ensure!(
        erased.records == records as u64,
        "erased {} records of {records}",
        erased.records
    );
    Ok(json!({
        "suite": "e2e", "op": "erase", "backend": "sqlite", "records": records,
        "ours_us": ours_us.round(), "per_record_us": (ours_us / records as f64).round(),
    }))
}
