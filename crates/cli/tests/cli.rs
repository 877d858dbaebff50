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
