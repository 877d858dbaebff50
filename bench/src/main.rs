//! `asclepios-bench`: side-by-side benchmarks of asclepios against peer crates.
//!
//! ```text
//! cargo run --release -p asclepios-bench -- SUITE [--quick] [--json]
//! ```
//!
//! Without `--json` a table is printed; with it, one JSON object per line on
//! stdout and nothing else (progress goes to stderr).

#![forbid(unsafe_code)]

mod abe;
mod attest;
mod audit;
mod authority;
mod deid;
mod e2e;
mod fe;
mod load;
mod sse;
mod timing;

use anyhow::{bail, Context};

const SUITES: &[(&str, &str)] = &[
    (
        "attest",
        "attestation appraisal: Intel SGX/TDX sample quotes vs bare dcap-qvl; RA-TLS certificate check vs the chain alone",
    ),
    (
        "abe",
        "FAME CP-ABE keygen/encrypt/decrypt vs rabe AC17 (AND/OR of 2, 10, 50 attributes)",
    ),
    (
        "e2e",
        "records written and read over mutual TLS by 1, 4, 16 clients; the service path alone; one read split; key issuance with and without the authority's integrity checks",
    ),
    (
        "deid",
        "FHIR de-identification (safe-harbor, research-pseudonymised) vs JSON parse+serialise, 100000 resources",
    ),
    (
        "fe",
        "inner-product functional encryption (ALS16 on ristretto255): setup, encrypt, keygen, decrypt with discrete log to 2^32, n = 10..10000",
    ),
    (
        "sse",
        "Mitra searchable encryption vs Cosmian Findex and a plaintext index: updates and searches (10, 1000, 100000 results) on 10^6 Zipf pairs",
    ),
    (
        "load",
        "64 concurrent mTLS clients (--clients N, --seconds S) mixing reads, writes, searches and key fetches against `serve` in its own process: p50/p99/p999, errors, peak RSS",
    ),
    (
        "audit",
        "audit log: durable appends vs raw inserts (SQLite, PostgreSQL), proofs at 10^6 leaves, in-memory hashing vs ct-merkle",
    ),
];

fn usage() -> String {
    let mut s = String::from(
        "usage: asclepios-bench SUITE [--quick] [--json]\n\n  --quick  smaller sizes and fewer samples (a smoke run)\n  --json   one JSON object per line on stdout\n  --clients N, --seconds S   the load suite's clients (64) and duration (30 s; --quick: 3 s)\n\nsuites:\n",
    );
    for (name, what) in SUITES {
        s.push_str(&format!("  {name:<6} {what}\n"));
    }
    s
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // The load suite's services run in a child process: this binary again.
    if let [mode, dir] = args.as_slice() {
        if let Some(which) = mode.strip_prefix("__serve-") {
            return load::serve_child(which, std::path::Path::new(dir));
        }
    }
    if args.iter().any(|a| a == "-h" || a == "--help") {
        print!("{}", usage());
        return Ok(());
    }
    let quick = args.iter().any(|a| a == "--quick");
    let as_json = args.iter().any(|a| a == "--json");
    // Options that take a value (the load suite's `--clients N --seconds S`).
    let mut suites: Vec<&String> = Vec::new();
    let mut load_options = load::Options::default();
    let mut rest = args.iter();
    while let Some(a) = rest.next() {
        let slot = match a.as_str() {
            "--clients" => &mut load_options.clients,
            "--seconds" => &mut load_options.seconds,
            _ => {
                if !a.starts_with("--") {
                    suites.push(a);
                }
                continue;
            }
        };
        let value = rest.next().and_then(|v| v.parse().ok());
        *slot = Some(value.with_context(|| format!("{a} takes a number"))?);
    }
    let [suite] = suites.as_slice() else {
        bail!("name exactly one suite\n\n{}", usage());
    };
    let budget = if quick {
        timing::Budget::quick()
    } else {
        timing::Budget::full()
    };
    let rows = match suite.as_str() {
        "abe" => abe::run(quick, budget)?,
        "audit" => audit::run(quick, budget)?,
        "e2e" => {
            let mut rows = e2e::run(quick, budget)?;
            rows.extend(authority::run(quick, budget)?);
            rows
        }
        "sse" => sse::run(quick, budget)?,
        "fe" => fe::run(quick, budget)?,
        "deid" => deid::run(quick, budget)?,
        "attest" => attest::run(quick, budget)?,
        "load" => load::run(quick, load_options)?,
        other => bail!("unknown suite `{other}`\n\n{}", usage()),
    };
    if as_json {
        for row in &rows {
            println!("{row}");
        }
    } else {
        print_table(&rows);
    }
    Ok(())
}

/// A readable table: the identifying fields, then the figures.
fn print_table(rows: &[serde_json::Value]) {
    // Every field any row has, in the order they first appear.
    let mut keys: Vec<&String> = Vec::new();
    for row in rows {
        for k in row.as_object().into_iter().flat_map(|o| o.keys()) {
            if k != "suite" && !keys.contains(&k) {
                keys.push(k);
            }
        }
    }
    let cell = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".into(),
        other => other.to_string(),
    };
    let widths: Vec<usize> = keys
        .iter()
        .map(|k| {
            rows.iter()
                .map(|r| cell(&r[k.as_str()]).len())
                .chain([k.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:>w$}"))
            .collect::<Vec<_>>()
            .join("  ")
    };
    println!("{}", line(keys.iter().map(|k| k.to_string()).collect()));
    for r in rows {
        println!(
            "{}",
            line(keys.iter().map(|k| cell(&r[k.as_str()])).collect())
        );
    }
}
