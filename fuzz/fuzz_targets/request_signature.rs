//! Signed-request headers from anyone holding a certificate: parsing and
//! verification return typed errors, never a panic.
#![no_main]

use asclepios_net::signature::{verify, SignedHeaders};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(4, '\n');
    let headers = SignedHeaders {
        content_digest: parts.next().unwrap_or_default().to_string(),
        signature_input: parts.next().unwrap_or_default().to_string(),
        signature: parts.next().unwrap_or_default().to_string(),
        request_hash: [0; 32],
    };
    let body = parts.next().unwrap_or_default().as_bytes();
    let _ = verify("POST", "/v1/records", body, &headers, &[7; 32], 1_790_000_000);
});
