//! A short API conformance run in the default tests: schemathesis against
//! both services' served /openapi.json, over mutual TLS with signed
//! requests, as four identities (`scripts/api-conformance.sh`; the long run
//! is that script with more examples). No 5xx, no undeclared status or
//! content type, no body that breaks its schema.

use std::process::Command;

#[test]
fn schemathesis_finds_no_server_error_or_schema_violation() {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../scripts/api-conformance.sh"
    );
    let out = Command::new("bash")
        .arg(script)
        .arg("10")
        .env("ASCLEPIOS_BIN", env!("CARGO_BIN_EXE_asclepios"))
        .env("ASCLEPIOS_DERANDOMIZE", "1")
        .output()
        .expect("bash runs the conformance script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "API conformance failed (needs Python 3 with schemathesis, cryptography and pytest: \
         `python3 -m pip install schemathesis cryptography pytest`):\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(" passed"), "{stdout}");
    assert!(!stdout.contains("failed"), "{stdout}");
}
