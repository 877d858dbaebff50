//! The `asclepios` binary as a user runs it.

use std::process::Command;

fn asclepios(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_asclepios"))
        .args(args)
        .output()
        .expect("the asclepios binary runs")
}

#[test]
fn demo_runs_and_every_expectation_holds() {
    let out = asclepios(&["demo"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("All expectations held."), "{stdout}");
    assert!(!stdout.contains("FAIL"), "{stdout}");
    assert!(stdout.contains("is refused"), "{stdout}");
    assert!(stdout.contains("Emergency Override Started"), "{stdout}");
    // Part 2 runs the platform over mutual TLS, the two services as two
    // processes, and ends with both logs verified.
    assert!(stdout.contains("(process "), "{stdout}");
    for log in ["the key authority's log", "the record service's log"] {
        assert!(
            stdout.contains(&format!("{log}: "))
                && stdout.contains("they match its signed checkpoint"),
            "{log}: {stdout}"
        );
    }
    assert!(stdout.contains("re-wrapped"), "{stdout}");
}

#[test]
fn policy_check_prints_the_canonical_form() {
    let out = asclepios(&["policy", "a AND (b Or c)"]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("canonical:  a and (b or c)"), "{stdout}");
    assert!(stdout.contains("3 rows x 2 columns"), "{stdout}");
}

#[test]
fn policy_errors_point_at_the_column() {
    let out = asclepios(&["policy", "role:doctor and (dept:x or"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("column 27"), "{stderr}");
    assert!(stderr.contains("^"), "{stderr}");
}

#[test]
fn help_teaches_the_policy_language() {
    let out = asclepios(&["--help"]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("2 of (role:nurse, ward:icu, shift:night)"),
        "{stdout}"
    );
    assert!(stdout.contains("demo"), "{stdout}");
}

#[test]
fn init_then_user_administration_needs_an_administrator() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("deployment");
    let dir = dir.to_str().unwrap();
    let out = asclepios(&["init", "--dir", dir]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("admin-ada") && stdout.contains("role:admin"),
        "{stdout}"
    );
    assert!(stdout.contains("deployment.seal.key"), "{stdout}");
    let again = asclepios(&["init", "--dir", dir]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds a deployment"));
    // Directory changes go through the authority, as an administrator
    // (the whole round trip is in platform_cli.rs).
    let anonymous = asclepios(&[
        "user",
        "add",
        "dr-kim",
        "--attr",
        "role:doctor",
        "--dir",
        dir,
    ]);
    assert!(!anonymous.status.success());
    let stderr = String::from_utf8_lossy(&anonymous.stderr);
    assert!(
        stderr.contains("--as") && stderr.contains("role:admin"),
        "{stderr}"
    );
    let missing = asclepios(&[
        "user",
        "list",
        "--as",
        "admin-ada",
        "--dir",
        tmp.path().join("none").to_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("asclepios init"));
}

/// The README's quick start: a relative `--dir`, the sealing key and the
/// integrity anchor beside the directory, not in it.
#[test]
fn init_with_a_relative_directory_keeps_the_sealing_key_beside_it() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_asclepios"))
        .args(["init", "--dir", "demo-data"])
        .current_dir(tmp.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(tmp.path().join("demo-data/asclepios.toml").is_file());
    assert!(tmp.path().join("demo-data.seal.key").is_file());
    assert!(tmp.path().join("demo-data.seal.anchor").is_file());
    assert!(!tmp.path().join("demo-data/authority/seal.key").exists());
    // Again into a fresh directory beside it: the sealing key there is
    // another deployment's, and nothing is written.
    std::fs::rename(tmp.path().join("demo-data"), tmp.path().join("moved")).unwrap();
    let again = Command::new(env!("CARGO_BIN_EXE_asclepios"))
        .args(["init", "--dir", "demo-data"])
        .current_dir(tmp.path())
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("sealing key of another deployment"));
    assert!(
        !tmp.path().join("demo-data").exists(),
        "nothing half-written"
    );
}

#[test]
fn deid_removes_names_and_reports_k_anonymity() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.ndjson");
    let output = dir.path().join("out.ndjson");
    let synth = asclepios(&[
        "synth",
        "--patients",
        "8",
        "--encounters",
        "1",
        "--seed",
        "3",
    ]);
    assert!(synth.status.success());
    std::fs::write(&input, &synth.stdout).unwrap();
    let families: Vec<String> = String::from_utf8_lossy(&synth.stdout)
        .lines()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            v["name"][0]["family"].as_str().map(str::to_string)
        })
        .collect();
    assert_eq!(families.len(), 8);
    let out = asclepios(&[
        "deid",
        "--profile",
        "safe-harbor",
        "--qi",
        "gender",
        "--k",
        "2",
        input.to_str().unwrap(),
        output.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("k-anonymity over gender: 8 patient(s)"),
        "{stdout}"
    );
    let written = std::fs::read_to_string(&output).unwrap();
    assert!(written.lines().count() > 8);
    for f in &families {
        assert!(!written.contains(f.as_str()), "{f} survived");
    }
    // The research profile needs the project key.
    let keyless = asclepios(&[
        "deid",
        "--profile",
        "research-pseudonymised",
        input.to_str().unwrap(),
        output.to_str().unwrap(),
    ]);
    assert!(!keyless.status.success());
    assert!(String::from_utf8_lossy(&keyless.stderr).contains("--key-file"));
}
