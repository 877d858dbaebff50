//! Overload does not lock out honest users (review finding H11). Against
//! `asclepios serve` in a process of its own, one host opens 9 000 bare TCP
//! connections to the record service that never start TLS, and 4 096
//! mutual-TLS connections from one certificate that then send nothing.
//! Meanwhile an honest client's reads, each on a fresh connection, still
//! succeed; their p99 is printed.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use asclepios_deploy::directory::Layout;
use asclepios_deploy::{init::init, Config};
use common::free_port;

const BARE: usize = 9_000;
const IDLE_TLS: usize = 4_096;
const READS: usize = 30;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn read(p: std::path::PathBuf) -> String {
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// One honest read on a fresh connection; how long it took.
async fn honest_read(dir: &std::path::Path, authority: &str, records: &str) -> Duration {
    let started = Instant::now();
    let client = asclepios_client::Client::connect(dir, "pat-00000", authority, records).unwrap();
    client
        .list_records("pat-00000")
        .await
        .unwrap_or_else(|e| panic!("an honest read failed under the flood: {e}"));
    started.elapsed()
}

#[test]
fn a_connection_flood_does_not_lock_out_honest_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    let mut config = Config::development();
    let (authority_port, records_port) = (free_port(), free_port());
    config.authority.listen = format!("127.0.0.1:{authority_port}");
    config.records.listen = format!("127.0.0.1:{records_port}");
    init(&dir, &config).unwrap();
    let log = std::fs::File::create(tmp.path().join("serve.log")).unwrap();
    let _serve = Killed(
        Command::new(env!("CARGO_BIN_EXE_asclepios"))
            .args(["serve", "--dir"])
            .arg(&dir)
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap(),
    );
    let authority = format!("https://localhost:{authority_port}");
    let records = format!("https://localhost:{records_port}");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        // Ready: an honest read works before the flood.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let client =
                asclepios_client::Client::connect(&dir, "pat-00000", &authority, &records).unwrap();
            if client.list_records("pat-00000").await.is_ok() {
                break;
            }
            assert!(Instant::now() < deadline, "the services never answered");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        // 9 000 connections that never say a word.
        let target = format!("127.0.0.1:{records_port}");
        let mut bare = Vec::with_capacity(BARE);
        for _ in 0..BARE {
            match tokio::net::TcpStream::connect(&target).await {
                Ok(s) => bare.push(s),
                // The kernel's queue full: the flood is as large as it gets.
                Err(_) => break,
            }
        }
        let opened_bare = bare.len();

        // 4 096 mutual-TLS connections from one certificate, then silence.
        let layout = Layout::new(&dir);
        let (cert, key) = layout.identity("researcher-rita");
        let tls = asclepios_net::tls::client_config(&read(layout.ca_cert()), &read(cert), &read(key))
            .unwrap();
        let connector = tokio_rustls::TlsConnector::from(Arc::clone(&tls));
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut idle = Vec::with_capacity(IDLE_TLS);
        let flood_started = Instant::now();
        for _ in 0..IDLE_TLS {
            let Ok(tcp) = tokio::net::TcpStream::connect(&target).await else {
                continue;
            };
            if let Ok(Ok(s)) = tokio::time::timeout(
                Duration::from_secs(5),
                connector.connect(name.clone(), tcp),
            )
            .await
            {
                idle.push(s);
            }
        }
        eprintln!(
            "flood: {opened_bare} bare TCP connections, {} idle mutual-TLS handshakes completed in {:?}",
            idle.len(),
            flood_started.elapsed()
        );

        // Honest reads, each on a fresh connection, while all of it is open.
        let mut took = Vec::with_capacity(READS);
        for _ in 0..READS {
            took.push(honest_read(&dir, &authority, &records).await);
        }
        took.sort();
        let p99 = took[(took.len() * 99).div_ceil(100) - 1];
        eprintln!(
            "honest reads under the flood: {READS} of {READS} succeeded, p50 {:?}, p99 {p99:?}",
            took[took.len() / 2]
        );
        assert!(
            p99 < Duration::from_secs(5),
            "honest reads took up to {p99:?} under the flood"
        );
        drop((bare, idle));
    });
}
