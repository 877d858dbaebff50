//! Targets over one decoder family each.

use std::sync::OnceLock;

use asclepios_attest::dcap;
use asclepios_attest::policy::{appraise, Expected, Policy as AttestationPolicy};
use asclepios_attest::{ratls, Evidence, Format};
use asclepios_audit::merkle::{verify_consistency, verify_inclusion};
use asclepios_audit::note::{Checkpoint, NoteVerifier, SignedNote};
use asclepios_audit::{Hash, SealedEvent};
use asclepios_crypto::abe::{Ciphertext, MasterSecretKey, PublicKey, UserKey};
use asclepios_crypto::envelope::{Envelope, KeyWrapper, SealedBody};
use asclepios_crypto::ipfe::{self, DlogTable, Label, Mcfe, McfeKey, SlotKey};
use asclepios_crypto::lsss::SpanProgram;
use asclepios_crypto::sse::{self, KeywordState, Mitra, SseKey};
use asclepios_crypto::Policy;
use asclepios_deid::{kanon, Profile};
use asclepios_net::signature::{verify, SignedHeaders};

/// Policy text: whatever parses prints to a canonical form that parses back
/// to the same policy, and its span program has one row per leaf.
pub fn policy_parse(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(policy) = Policy::parse(text) {
        let printed = policy.to_string();
        assert_eq!(Policy::parse(&printed).as_ref(), Ok(&policy));
        let msp = SpanProgram::from_policy(&policy);
        assert_eq!(msp.rows.len(), policy.leaf_count());
    }
}

/// FAME public keys, master keys, user keys and ciphertexts.
pub fn abe_decoders(data: &[u8]) {
    if let Ok(pk) = PublicKey::from_bytes(data) {
        assert_eq!(pk.to_bytes(), data);
    }
    if let Ok(ct) = Ciphertext::from_bytes(data) {
        assert_eq!(ct.to_bytes(), data);
    }
    if let Ok(key) = UserKey::from_bytes(data) {
        assert_eq!(&key.to_bytes()[..], data);
    }
    if let Ok(msk) = MasterSecretKey::from_bytes(data) {
        assert_eq!(&msk.to_bytes()[..], data);
    }
}

/// Sealed envelopes, sealed bodies and key wrappers.
pub fn envelope_decoders(data: &[u8]) {
    if let Ok(env) = Envelope::from_bytes(data) {
        assert_eq!(env.to_bytes(), data);
    }
    if let Ok(body) = SealedBody::from_bytes(data) {
        assert_eq!(body.to_bytes(), data);
    }
    if let Ok(wrapper) = KeyWrapper::from_bytes(data) {
        assert_eq!(wrapper.to_bytes(), data);
    }
}

/// Search token lists (what a searcher receives), sealed state rows (what
/// the store returns to the authority) and index values (what the record
/// service returns).
pub fn sse_decoders(data: &[u8]) {
    if let Ok(tokens) = sse::decode_tokens(data) {
        assert_eq!(sse::encode_tokens(&tokens).as_slice(), data);
    }
    let mitra = Mitra::new(&SseKey::from_bytes([1; 32]));
    let row = mitra.state_row("type:Observation");
    let _ = mitra.open_state(&row, data);
    let _ = mitra.open_keywords(&row, data);
    // Values for three tokens, cut from the input.
    let state = KeywordState {
        first: 0,
        compacted: 0,
        next: 3,
    };
    let tokens = mitra.tokens("type:Observation", &state);
    let third = data.len() / 3;
    // An odd length also leaves one address empty, as a lossy server would.
    let middle = data
        .len()
        .is_multiple_of(2)
        .then(|| data[third..2 * third].to_vec());
    let values = vec![
        Some(data[..third].to_vec()),
        middle,
        Some(data[2 * third..].to_vec()),
    ];
    let _ = sse::open_results(&tokens, &values);
}

/// A small discrete-log table: enough for the bounds used here.
fn dlog_table() -> &'static DlogTable {
    static T: OnceLock<DlogTable> = OnceLock::new();
    T.get_or_init(|| DlogTable::new(1 << 8))
}

/// One label (building its tables costs more than the rest of an input).
fn label() -> &'static Label {
    static L: OnceLock<Label> = OnceLock::new();
    L.get_or_init(|| Label::new("fuzz/2026-Q4/systolic"))
}

/// Statistics inputs: published ciphertext points (what the record service
/// returns to a researcher), aggregate and slot keys (after unsealing), and
/// fixed-point scaling. Points decode only if canonical and re-encode the
/// same; a decryption over arbitrary points answers a value within the bound
/// or a typed error; slot keys taken from the input encrypt values that the
/// matching aggregate key decrypts to their exact sum.
pub fn fe_decoders(data: &[u8]) {
    const BOUND: u64 = 1 << 12;
    let (head, rest) = data.split_at(data.len().min(64));
    let key = <&[u8; 64]>::try_from(head)
        .ok()
        .and_then(McfeKey::from_bytes);
    if let Some(k) = &key {
        assert_eq!(&k.to_bytes()[..], head);
    }
    let mut points = Vec::new();
    for chunk in rest.chunks(32) {
        match ipfe::point_from_bytes(chunk) {
            Some(p) => {
                assert_eq!(ipfe::point_to_bytes(&p), chunk);
                points.push(p);
            }
            None => break,
        }
    }
    let label = label();
    if let (Some(k), false) = (&key, points.is_empty()) {
        let y: Vec<i64> = (0..points.len()).map(|i| (i as i64 % 3) - 1).collect();
        if let Ok(v) = Mcfe::decrypt(k, &y, label, &points, dlog_table(), BOUND) {
            assert!(v.unsigned_abs() <= BOUND);
        }
    }
    // Slot keys from the input: the aggregate of their encryptions is exact.
    let slots: Vec<SlotKey> = rest
        .chunks_exact(64)
        .filter_map(|c| <&[u8; 64]>::try_from(c).ok().and_then(SlotKey::from_bytes))
        .take(4)
        .collect();
    if !slots.is_empty() {
        let values: Vec<i64> = (0..slots.len())
            .map(|i| i64::from(data[i % data.len()]) - 128)
            .collect();
        let cts: Vec<_> = slots
            .iter()
            .zip(&values)
            .map(|(s, &x)| s.encrypt(label, x).expect("a small value encrypts"))
            .collect();
        let refs: Vec<&SlotKey> = slots.iter().collect();
        let y = vec![1i64; slots.len()];
        let aggregate = Mcfe::keygen(&refs, &y, label).expect("weights of one");
        let sum = Mcfe::decrypt(&aggregate, &y, label, &cts, dlog_table(), BOUND)
            .expect("the sum of slot values is within the bound");
        assert_eq!(sum, values.iter().sum::<i64>());
    }
    if let Some(raw) = data.get(..8) {
        let value = f64::from_le_bytes(raw.try_into().expect("eight bytes"));
        let _ = ipfe::scale(value, u32::from(data[0] % 12));
    }
}

fn hashes(bytes: &[u8]) -> Vec<Hash> {
    bytes
        .chunks_exact(32)
        .map(|c| c.try_into().expect("32 bytes"))
        .collect()
}

/// Audit-log inputs from untrusted sources: encrypted entries, signed notes,
/// checkpoints, note verifier keys, and RFC 9162 inclusion and consistency
/// proofs with arbitrary sizes and hashes (which must verify or fail with a
/// typed error, never overflow or index out of range).
pub fn audit_decoders(data: &[u8]) {
    if let Ok(entry) = SealedEvent::from_bytes(data) {
        assert_eq!(entry.to_bytes(), data);
    }
    if data.len() >= 16 {
        let a = u64::from_le_bytes(data[..8].try_into().expect("eight bytes"));
        let b = u64::from_le_bytes(data[8..16].try_into().expect("eight bytes"));
        let list = hashes(&data[16..]);
        if let [first, second, proof @ ..] = list.as_slice() {
            let _ = verify_inclusion(a, b, first, proof, second);
            let _ = verify_consistency(a, b, first, second, proof);
            // Small sizes reach the proof walks rather than the range checks.
            let _ = verify_inclusion(a % 64, b % 65, first, proof, second);
            let _ = verify_consistency(a % 64, b % 65, first, second, proof);
        }
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(note) = SignedNote::parse(text) {
        if let Ok(cp) = Checkpoint::from_text(&note.text) {
            assert_eq!(cp.to_text(), note.text);
        }
    }
    if let Ok(key) = NoteVerifier::parse(text) {
        assert_eq!(key.to_string(), text.trim_end_matches(['\n', '\r']));
    }
    if let Ok(key) = asclepios_audit::CosignatureVerifier::parse(text) {
        assert_eq!(key.to_string(), text.trim_end_matches(['\n', '\r']));
    }
    // A witness's add-checkpoint body: what parses re-encodes the same, and
    // the witness answers it with a typed refusal, never a panic.
    if let Ok(request) = asclepios_audit::witness::AddCheckpoint::parse(data) {
        assert_eq!(request.to_body().as_bytes(), data);
        if let Ok(note) = SignedNote::parse(&request.checkpoint) {
            let _ = fuzz_cosigner().verify(&note);
        }
    }
}

/// A fixed witness key, to check cosignature lines of fuzzed notes against.
fn fuzz_cosigner() -> &'static asclepios_audit::CosignatureVerifier {
    static K: OnceLock<asclepios_audit::CosignatureVerifier> = OnceLock::new();
    K.get_or_init(|| {
        asclepios_audit::Cosigner::from_seed("fuzz.example/witness", &[7; 32])
            .expect("a valid name")
            .verifier()
    })
}

/// Inside the sample collateral's validity window.
const COLLATERAL_TIME: u64 = 1_751_328_000;

fn collateral() -> &'static dcap_qvl::QuoteCollateralV3 {
    static C: OnceLock<dcap_qvl::QuoteCollateralV3> = OnceLock::new();
    C.get_or_init(|| {
        dcap::parse_collateral(include_str!(
            "../../attest/tests/data/dcap-qvl/sgx_quote_collateral.json"
        ))
        .expect("sample collateral")
    })
}

fn attestation_policy() -> &'static AttestationPolicy {
    static P: OnceLock<AttestationPolicy> = OnceLock::new();
    P.get_or_init(|| {
        AttestationPolicy::from_toml(
            "formats = [\"sgx-dcap\", \"tdx-dcap\", \"insecure-software\"]\nallow_debug = true\n",
        )
        .expect("policy")
    })
}

/// Attestation evidence: the evidence envelope, the RA-TLS certificate
/// extension (through a whole certificate parse), the appraisal, and Intel
/// DCAP quotes against real collateral give typed errors or contraindicated
/// verdicts; an envelope that decodes re-encodes the same.
pub fn attest_decoders(data: &[u8]) {
    if let Ok(e) = Evidence::from_bytes(data) {
        assert_eq!(e.to_bytes(), data);
    }
    let _ = ratls::evidence_from_certificate(data);
    let expected = Expected {
        key_sha256: Some([0; 32]),
        nonce: None,
    };
    let _ = appraise(data, &expected, attestation_policy(), COLLATERAL_TIME, None);
    for format in [Format::SgxDcap, Format::TdxDcap] {
        let _ = dcap::verify(data, format, collateral(), COLLATERAL_TIME, true);
    }
}

/// RFC 9421 signature headers from anyone holding a certificate: the input's
/// first three lines are the three headers, the rest the body.
pub fn request_signature(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(4, '\n');
    let headers = SignedHeaders {
        content_digest: parts.next().unwrap_or_default().to_string(),
        signature_input: parts.next().unwrap_or_default().to_string(),
        signature: parts.next().unwrap_or_default().to_string(),
        request_hash: [0; 32],
    };
    let body = parts.next().unwrap_or_default().as_bytes();
    let _ = verify(
        "POST",
        "records.asclepios.internal",
        "/v1/records",
        body,
        &headers,
        &[7; 32],
        1_790_000_000,
    );
}

fn deid_profiles() -> &'static [Profile; 2] {
    static P: OnceLock<[Profile; 2]> = OnceLock::new();
    P.get_or_init(|| {
        [
            Profile::from_toml(asclepios_deid::SAFE_HARBOR).expect("shipped profile"),
            Profile::from_toml(asclepios_deid::RESEARCH_PSEUDONYMISED).expect("shipped profile"),
        ]
    })
}

/// FHIR input to de-identification (a resource, or a Bundle of them) under
/// both shipped profiles, then the k-anonymity pass: typed errors, never a
/// panic; what a profile outputs, the same profile accepts again.
pub fn deid_input(data: &[u8]) {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let resources: Vec<serde_json::Value> = match value["entry"].as_array() {
        Some(entries) => entries.iter().map(|e| e["resource"].clone()).collect(),
        None => vec![value],
    };
    let project_key = [5u8; 32];
    for profile in deid_profiles() {
        let deid = profile
            .deidentifier(Some(&project_key))
            .expect("shipped profiles work with a key");
        let mut out = Vec::new();
        for r in &resources {
            if let Ok(once) = deid.apply(r, "fuzz") {
                deid.apply(&once, "fuzz")
                    .expect("a de-identified resource is accepted again");
                out.push(once);
            }
        }
        let qi = ["birthDate", "gender", "address.postalCode"].map(String::from);
        let _ = kanon::apply(out, &qi, Some(2));
    }
}
