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
    // Part 2 runs the platform over mutual TLS and ends with the log verified.
    assert!(
        stdout.contains("entries re-hashed: they match the signed checkpoint"),
        "{stdout}"
    );
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
fn init_then_user_administration() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("deployment");
    let dir = dir.to_str().unwrap();
    let out = asclepios(&["init", "--dir", dir]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let again = asclepios(&["init", "--dir", dir]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds a deployment"));
    let add = asclepios(&[
        "user",
        "add",
        "dr-kim",
        "--attr",
        "role:doctor",
        "--dir",
        dir,
    ]);
    assert!(
        add.status.success(),
        "{}",
        String::from_utf8_lossy(&add.stderr)
    );
    let set = asclepios(&[
        "user",
        "set-attrs",
        "dr-kim",
        "--attr",
        "role:nurse",
        "--dir",
        dir,
    ]);
    assert!(String::from_utf8_lossy(&set.stdout).contains("revoked: role:doctor"));
    assert!(asclepios(&["user", "disable", "dr-kim", "--dir", dir])
        .status
        .success());
    let list = String::from_utf8(asclepios(&["user", "list", "--dir", dir]).stdout).unwrap();
    assert!(
        list.lines()
            .any(|l| l.starts_with("dr-kim") && l.contains("DISABLED")),
        "{list}"
    );
    assert!(list
        .lines()
        .any(|l| l.starts_with("pat-00001") && l.contains("patient:pat-00001")));
    let bad = asclepios(&["user", "add", "bad id!", "--dir", dir]);
    assert!(!bad.status.success());
    let missing = asclepios(&[
        "user",
        "list",
        "--dir",
        tmp.path().join("none").to_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("asclepios init"));
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
