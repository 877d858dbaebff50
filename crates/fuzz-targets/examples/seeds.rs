//! Writes valid inputs for each decoder target into `fuzz/corpus/<target>`,
//! so that a campaign starts from real encodings rather than from nothing:
//! `cargo run -p asclepios-fuzz-targets --example seeds`. Deterministic (fixed
//! RNG seeds), so rerunning it rewrites the same files. The HTTP target's
//! seeds (one well-formed request per route) are written by hand.

use std::path::{Path, PathBuf};

use asclepios_attest::evidence::{Body, Quote};
use asclepios_attest::{software, Binding, Evidence, Freshness};
use asclepios_audit::merkle::MemoryTree;
use asclepios_audit::note::{Checkpoint, NoteSigner};
use asclepios_audit::{Action, AuditEvent, AuditorSecretKey, Outcome, SealedEvent};
use asclepios_crypto::abe::setup;
use asclepios_crypto::envelope::{seal, RecordContext};
use asclepios_crypto::ipfe::{self, Label, Mcfe, SlotKey};
use asclepios_crypto::sse::{self, KeywordState, Mitra, SseKey};
use asclepios_crypto::Policy;
use asclepios_net::signature::RequestSigner;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

const OBSERVATION: &str = r#"{"resourceType":"Observation","id":"bp-1","status":"final","subject":{"reference":"Patient/pat-00000"},"effectiveDateTime":"2026-03-04T10:00:00Z","code":{"coding":[{"system":"http://loinc.org","code":"8480-6","display":"Systolic blood pressure"}]},"valueQuantity":{"value":128,"unit":"mm[Hg]"}}"#;
const PATIENT: &str = r#"{"resourceType":"Patient","id":"pat-00000","name":[{"family":"Lee","given":["Ann"]}],"gender":"female","birthDate":"1961-07-14","address":[{"line":["12 Harbour St"],"city":"Leeds","postalCode":"LS1 4AP"}],"telecom":[{"system":"phone","value":"+44 113 496 0000"}],"identifier":[{"system":"urn:oid:2.16.840.1.113883.2.1.4.1","value":"943 476 5919"}]}"#;

fn corpus(target: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(target: &str, name: &str, bytes: &[u8]) {
    std::fs::write(corpus(target).join(format!("seed-{name}")), bytes).unwrap();
}

fn main() {
    let mut rng = ChaCha20Rng::seed_from_u64(2026);

    for (i, p) in [
        "role:doctor or patient:pat-00000",
        "(role:doctor and dept:cardiology) or (role:nurse and dept:cardiology and shift:day) or patient:pat-00001",
        "role:emergency and not-a-word or",
        "2 of (role:a, role:b, role:c)",
    ]
    .iter()
    .enumerate()
    {
        write("policy_parse", &i.to_string(), p.as_bytes());
    }

    let (mpk, msk) = setup(&mut rng);
    let key = msk
        .keygen(&["role:doctor", "dept:cardiology"], &mut rng)
        .unwrap();
    let policy = Policy::parse("role:doctor and dept:cardiology or patient:pat-00000").unwrap();
    let context = RecordContext {
        record_id: "bp-1".into(),
        version: 1,
    };
    let env = seal(&mpk, &policy, &context, OBSERVATION.as_bytes(), &mut rng).unwrap();
    write("abe_decoders", "public-key", &mpk.to_bytes());
    write("abe_decoders", "master-key", &msk.to_bytes()[..]);
    write("abe_decoders", "user-key", &key.to_bytes()[..]);
    write("envelope_decoders", "envelope", &env.to_bytes());
    write("envelope_decoders", "body", &env.body.to_bytes());
    write("envelope_decoders", "wrapper", &env.wrapper.to_bytes());

    let mitra = Mitra::new(&SseKey::from_bytes([1; 32]));
    let row = mitra.state_row("type:Observation");
    let state = KeywordState {
        first: 0,
        compacted: 2,
        next: 5,
    };
    write(
        "sse_decoders",
        "state",
        &mitra.seal_state(&row, &state, &mut rng),
    );
    write(
        "sse_decoders",
        "keywords",
        &mitra.seal_keywords(
            &row,
            &["type:Observation".into(), "code:8480-6".into()],
            &mut rng,
        ),
    );
    write(
        "sse_decoders",
        "tokens",
        &sse::encode_tokens(&mitra.tokens("type:Observation", &state)),
    );

    let label = Label::new("fuzz/2026-Q4/systolic");
    let slots: Vec<SlotKey> = (0..3).map(|_| SlotKey::generate(&mut rng)).collect();
    let refs: Vec<&SlotKey> = slots.iter().collect();
    let aggregate = Mcfe::keygen(&refs, &[1, 0, -1], &label).unwrap();
    let mut fe = aggregate.to_bytes().to_vec();
    for (s, x) in slots.iter().zip([120, 135, 128]) {
        fe.extend_from_slice(&ipfe::point_to_bytes(&s.encrypt(&label, x).unwrap()));
    }
    write("fe_decoders", "aggregate-and-points", &fe);
    let mut keys = vec![0u8; 64];
    for s in &slots {
        keys.extend_from_slice(&s.to_bytes()[..]);
    }
    write("fe_decoders", "slot-keys", &keys);

    let (_, auditor) = AuditorSecretKey::generate(&mut rng);
    let event = AuditEvent {
        id: "ev-1".into(),
        actor: "dr-heart".into(),
        action: Action::Read,
        resource: "Observation/bp-1".into(),
        patient: Some("pat-00000".into()),
        time: 1_790_000_000,
        outcome: Outcome::Success,
        purpose: "TREAT".into(),
        emergency: false,
        request_signature: Some("c2lnbmF0dXJl".into()),
        written: None,
    };
    let sealed = SealedEvent::seal(&event, &[auditor], &mpk, &mut rng).unwrap();
    write("audit_decoders", "entry", &sealed.to_bytes());
    let signer = NoteSigner::from_seed("audit.asclepios.example", &[3; 32]).unwrap();
    let mut tree = MemoryTree::new();
    for i in 0..13u32 {
        tree.push(&i.to_be_bytes());
    }
    let checkpoint = Checkpoint {
        origin: "audit.asclepios.example".into(),
        size: tree.size(),
        root: tree.root(),
        extensions: Vec::new(),
    };
    write(
        "audit_decoders",
        "checkpoint",
        checkpoint.sign(&signer).unwrap().as_bytes(),
    );
    write(
        "audit_decoders",
        "verifier",
        signer.verifier().to_string().as_bytes(),
    );
    for (name, a, b, proof, first, second) in [
        (
            "inclusion",
            5u64,
            13u64,
            tree.prove_inclusion(5, 13),
            asclepios_audit::merkle::leaf_hash(&5u32.to_be_bytes()),
            tree.root(),
        ),
        (
            "consistency",
            6,
            13,
            tree.prove_consistency(6, 13),
            tree.root_at(6),
            tree.root(),
        ),
    ] {
        let mut bytes = a.to_le_bytes().to_vec();
        bytes.extend_from_slice(&b.to_le_bytes());
        bytes.extend_from_slice(&first);
        bytes.extend_from_slice(&second);
        for h in proof {
            bytes.extend_from_slice(&h);
        }
        write("audit_decoders", name, &bytes);
    }

    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../attest/tests/data/dcap-qvl");
    for (name, tdx) in [("sgx_quote", false), ("tdx_quote", true)] {
        let quote = std::fs::read(data.join(name)).unwrap();
        write("attest_decoders", name, &quote);
        let q = Quote {
            quote,
            collateral: None,
        };
        let evidence = Evidence {
            freshness: Freshness::Nonce([4; 32]),
            body: if tdx {
                Body::TdxDcap(q)
            } else {
                Body::SgxDcap(q)
            },
        };
        write(
            "attest_decoders",
            &format!("{name}-envelope"),
            &evidence.to_bytes(),
        );
    }
    let dev_key = ed25519_dalek::SigningKey::from_bytes(&[6; 32]);
    let binding = Binding::new(b"spki", Freshness::IssuedAt(1_751_328_000));
    write(
        "attest_decoders",
        "insecure-software",
        &software::sign(&dev_key, [1; 32], [2; 32], &binding).to_bytes(),
    );

    let pem = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIAcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcH\n-----END PRIVATE KEY-----\n";
    let request_signer = RequestSigner::from_pem("dr-heart", pem).unwrap();
    let body = br#"{"patient":"pat-00000"}"#;
    let h = request_signer
        .sign(
            "POST",
            "records.asclepios.internal",
            "/v1/records",
            body,
            1_790_000_000,
            "n-1",
        )
        .unwrap();
    let mut bytes = format!(
        "{}\n{}\n{}\n",
        h.content_digest, h.signature_input, h.signature
    )
    .into_bytes();
    bytes.extend_from_slice(body);
    write("request_signature", "signed", &bytes);

    write("deid_input", "observation", OBSERVATION.as_bytes());
    write("deid_input", "patient", PATIENT.as_bytes());
    let bundle = format!(
        r#"{{"resourceType":"Bundle","type":"collection","entry":[{{"resource":{PATIENT}}},{{"resource":{OBSERVATION}}}]}}"#
    );
    write("deid_input", "bundle", bundle.as_bytes());
    println!("seeds written under fuzz/corpus/");
}
