//! The default test run exercises each benchmark suite briefly (`--quick`) and
//! checks its output follows the project's conventions: one JSON object per
//! line on stdout, with the identifying fields and the figures.

use std::process::Command;

/// Runs a suite with `--quick --json`; its stdout and one JSON value per line.
fn quick_json(suite: &str) -> (String, Vec<serde_json::Value>) {
    let out = Command::new(env!("CARGO_BIN_EXE_asclepios-bench"))
        .args([suite, "--quick", "--json"])
        .output()
        .expect("the bench binary runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let rows = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect();
    (stdout, rows)
}

#[test]
fn abe_suite_quick_prints_one_json_line_per_case() {
    let (stdout, rows) = quick_json("abe");
    // keygen, encrypt, decrypt × and/or × 2 quick sizes.
    assert_eq!(rows.len(), 12, "{stdout}");
    for row in &rows {
        assert_eq!(row["suite"], "abe");
        assert!(["keygen", "encrypt", "decrypt"].contains(&row["op"].as_str().unwrap()));
        assert!(["and", "or"].contains(&row["policy"].as_str().unwrap()));
        assert_eq!(row["peer"], "rabe-ac17");
        for field in ["attrs", "ours_us", "peer_us", "speedup", "bound_us"] {
            let v = row[field]
                .as_f64()
                .unwrap_or_else(|| panic!("{field} missing in {row}"));
            assert!(v > 0.0, "{field} = {v} in {row}");
        }
    }
}

#[test]
fn unknown_suite_is_refused_with_the_list() {
    let out = Command::new(env!("CARGO_BIN_EXE_asclepios-bench"))
        .args(["nope"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("abe"));
}

#[test]
fn audit_suite_quick_prints_every_case_on_both_backends() {
    let (stdout, rows) = quick_json("audit");
    let positive = |row: &serde_json::Value, field: &str| {
        let v = row[field]
            .as_f64()
            .unwrap_or_else(|| panic!("{field} missing in {row}"));
        assert!(v > 0.0, "{field} = {v} in {row}");
    };
    // append and append-witnessed: 2 backends × 2 quick batches each; cosign: 1;
    // proofs: 2 backends × 4 ops; memory: 2.
    assert_eq!(rows.len(), 19, "{stdout}");
    for row in &rows {
        assert_eq!(row["suite"], "audit");
        match row["op"].as_str().unwrap() {
            "append" | "append-witnessed" => {
                assert!(["sqlite", "postgres"].contains(&row["backend"].as_str().unwrap()));
                ["batch", "per_s", "floor_per_s", "ratio"]
                    .iter()
                    .for_each(|f| positive(row, f));
            }
            "prove-inclusion" | "prove-consistency" | "verify-inclusion" | "verify-consistency" => {
                assert!(row["backend"].is_string());
                ["leaves", "ours_us"].iter().for_each(|f| positive(row, f));
            }
            "cosign" => {
                ["leaves", "ours_us"].iter().for_each(|f| positive(row, f));
            }
            "memory-root" | "memory-prove" => {
                assert_eq!(row["peer"], "ct-merkle");
                ["leaves", "ours_us", "peer_us", "speedup"]
                    .iter()
                    .for_each(|f| positive(row, f));
            }
            other => panic!("unexpected op {other}"),
        }
    }
}

#[test]
fn e2e_suite_quick_prints_every_case() {
    let (stdout, rows) = quick_json("e2e");
    // write, read, read-service for 1 and 4 clients, one read split, the
    // patient's audit view, key issuance with and without integrity checks
    // on both backends, and erasing a patient.
    assert_eq!(rows.len(), 11, "{stdout}");
    for row in &rows {
        assert_eq!(row["suite"], "e2e");
        let op = row["op"].as_str().unwrap();
        if op == "authority-integrity" {
            assert!(["sqlite", "postgres"].contains(&row["backend"].as_str().unwrap()));
            for f in [
                "identities",
                "ours_us",
                "floor_us",
                "ratio",
                "full_verify_us",
            ] {
                assert!(row[f].as_f64().is_some_and(|v| v > 0.0), "{f} in {row}");
            }
            continue;
        }
        if op == "erase" {
            assert_eq!(row["records"], 100, "{row}");
            for f in ["ours_us", "per_record_us"] {
                assert!(row[f].as_f64().is_some_and(|v| v > 0.0), "{f} in {row}");
            }
            continue;
        }
        if op == "audit-view" {
            assert!(row["events"].as_u64().unwrap() >= 300, "{row}");
            for f in ["ours_us", "ratio"] {
                assert!(row[f].as_f64().is_some_and(|v| v > 0.0), "{f} in {row}");
            }
            continue;
        }
        assert!(row["clients"].as_u64().unwrap() >= 1);
        let fields: &[&str] = match op {
            "write" | "read" => &["per_s", "ours_us"],
            "read-service" => &["per_s"],
            "read-split" => &["service_us", "abe_us", "aead_us", "ours_us", "ratio"],
            other => panic!("unexpected op {other}"),
        };
        for f in fields {
            assert!(row[*f].as_f64().is_some_and(|v| v > 0.0), "{f} in {row}");
        }
    }
}

#[test]
fn sse_suite_quick_prints_every_case_on_every_backend() {
    let (stdout, rows) = quick_json("sse");
    let positive = |row: &serde_json::Value, field: &str| {
        let v = row[field]
            .as_f64()
            .unwrap_or_else(|| panic!("{field} missing in {row}"));
        assert!(v > 0.0, "{field} = {v} in {row}");
    };
    // memory: update + 3 sizes × (search_first, search); sqlite and postgres:
    // update + 3 searches + 3 circle searches each.
    assert_eq!(rows.len(), 21, "{stdout}");
    for row in &rows {
        assert_eq!(row["suite"], "sse");
        let backend = row["backend"].as_str().unwrap();
        assert!(["memory", "sqlite", "postgres"].contains(&backend), "{row}");
        match (row["op"].as_str().unwrap(), backend) {
            ("update", "memory") => {
                assert_eq!(row["peer"], "findex");
                ["per_s", "peer_per_s", "speedup", "floor_per_s"]
                    .iter()
                    .for_each(|f| positive(row, f));
            }
            ("update", _) => positive(row, "per_s"),
            ("search" | "search_first", "memory") => {
                assert_eq!(row["peer"], "findex");
                [
                    "results", "matches", "ours_us", "peer_us", "speedup", "floor_us",
                ]
                .iter()
                .for_each(|f| positive(row, f));
            }
            ("search", _) => ["results", "matches", "ours_us"]
                .iter()
                .for_each(|f| positive(row, f)),
            ("search-circle", "sqlite" | "postgres") => [
                "patients",
                "matches",
                "reached",
                "ours_us",
                "tokens_us",
                "unscoped_us",
                "ratio",
                "audit_us",
            ]
            .iter()
            .for_each(|f| positive(row, f)),
            (other, b) => panic!("unexpected op {other} on {b}"),
        }
    }
}

#[test]
fn fe_suite_quick_prints_every_op_with_its_bound() {
    let (stdout, rows) = quick_json("fe");
    // setup, encrypt, keygen, decrypt at two quick sizes; the noise share;
    // accuracy at two sizes.
    assert_eq!(rows.len(), 11, "{stdout}");
    let noise = &rows[8];
    assert_eq!(noise["op"], "noise-share", "{stdout}");
    assert!(noise["ours_us"].as_f64().unwrap() > 0.0, "{noise}");
    for row in &rows[9..] {
        assert_eq!(row["op"], "accuracy", "{row}");
        let (err, sd) = (
            row["mean_abs_error"].as_f64().unwrap(),
            row["stated_sd"].as_f64().unwrap(),
        );
        // The mean absolute error of Laplace-like noise is below its sd.
        assert!(err > 0.0 && err < 2.0 * sd, "{row}");
    }
    for row in &rows[..8] {
        assert_eq!(row["suite"], "fe");
        assert!(["setup", "encrypt", "keygen", "decrypt"].contains(&row["op"].as_str().unwrap()));
        for field in ["n", "ours_us", "bound_us", "bound_ratio", "floor_us"] {
            let v = row[field]
                .as_f64()
                .unwrap_or_else(|| panic!("{field} missing in {row}"));
            assert!(v >= 0.0, "{field} = {v} in {row}");
        }
    }
}

#[test]
fn deid_suite_quick_prints_both_profiles_against_the_floor() {
    let (stdout, rows) = quick_json("deid");
    assert_eq!(rows.len(), 2, "{stdout}");
    for (row, op) in rows.iter().zip(["safe-harbor", "research-pseudonymised"]) {
        assert_eq!(row["suite"], "deid");
        assert_eq!(row["op"], op);
        for field in ["per_s", "floor_per_s", "ratio", "resources"] {
            let v = row[field]
                .as_f64()
                .unwrap_or_else(|| panic!("{field} missing in {row}"));
            assert!(v > 0.0, "{field} = {v} in {row}");
        }
    }
}

#[test]
fn attest_suite_quick_prints_every_case() {
    let (stdout, rows) = quick_json("attest");
    // Two sample quotes, then the RA-TLS certificate check.
    assert_eq!(rows.len(), 3, "{stdout}");
    for row in &rows[..2] {
        assert_eq!(row["op"], "dcap-appraise");
        assert_eq!(row["peer"], "dcap-qvl");
        for field in ["ours_us", "peer_us", "speedup"] {
            assert!(row[field].as_f64().unwrap_or(0.0) > 0.0, "{field} in {row}");
        }
    }
    assert_eq!(rows[2]["op"], "ratls-verify");
    for field in ["ours_us", "floor_us", "ratio"] {
        assert!(
            rows[2][field].as_f64().unwrap_or(0.0) > 0.0,
            "{field} in {rows:?}"
        );
    }
}

#[test]
fn load_suite_quick_reports_every_op_at_both_paces_without_errors() {
    let out = Command::new(env!("CARGO_BIN_EXE_asclepios-bench"))
        .args([
            "load",
            "--quick",
            "--json",
            "--clients",
            "8",
            "--seconds",
            "2",
        ])
        .output()
        .expect("the bench binary runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let rows: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // mixed, read, write, search, key; without and with think time.
    assert_eq!(rows.len(), 10, "{rows:?}");
    for row in &rows {
        assert_eq!(row["suite"], "load");
        assert_eq!(row["clients"], 8);
        assert_eq!(row["errors"], 0, "{row}\n{stderr}");
        // Deliberate 429s are counted, apart from errors.
        assert!(row["throttled"].as_u64().is_some(), "{row}");
        for field in ["per_s", "p50_ms", "p99_ms", "p999_ms", "peak_rss_mib"] {
            let v = row[field]
                .as_f64()
                .unwrap_or_else(|| panic!("{field} in {row}"));
            assert!(v > 0.0, "{field} = {v} in {row}");
        }
        assert!(row["p50_ms"].as_f64() <= row["p99_ms"].as_f64());
    }
    let ops: Vec<&str> = rows.iter().map(|r| r["op"].as_str().unwrap()).collect();
    for op in ["mixed", "read", "write", "search", "key"] {
        assert_eq!(ops.iter().filter(|o| **o == op).count(), 2, "{op}");
    }
}
