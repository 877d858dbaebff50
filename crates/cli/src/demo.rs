//! `asclepios demo`: the crypto story, told step by step. Every step states
//! what should happen and checks it; any surprise makes the command fail.

use anyhow::{bail, Context};
use asclepios_audit::log::audit_entries;
use asclepios_audit::merkle;
use asclepios_audit::{
    Action, AuditEvent, AuditorSecretKey, Checkpoint, Log, NoteSigner, Outcome, SealedEvent,
};
use asclepios_crypto::abe::{setup, UserKey};
use asclepios_crypto::abe::{MasterSecretKey, PublicKey};
use asclepios_crypto::envelope::{open, seal, Envelope, RecordContext};
use asclepios_crypto::{Error, Policy};
use asclepios_fhir::synth::Generator;
use asclepios_fhir::ResourceView;
use asclepios_store::Store;
use rand_core::OsRng;

pub(crate) struct Story {
    pub(crate) failures: usize,
}

impl Story {
    pub(crate) fn section(&self, title: &str) {
        println!("\n== {title}");
    }

    pub(crate) fn note(&self, text: &str) {
        println!("   {text}");
    }

    pub(crate) fn expect(&mut self, ok: bool, what: &str) {
        if ok {
            println!("   ok    {what}");
        } else {
            println!("   FAIL  {what}");
            self.failures += 1;
        }
    }
}

fn try_open(key: &UserKey, bytes: &[u8]) -> Result<Vec<u8>, Error> {
    let env = Envelope::from_bytes(bytes)?;
    Ok(open(key, &env)?.payload.to_vec())
}

pub fn run(seed: u64) -> anyhow::Result<()> {
    let mut rng = OsRng;
    let mut story = Story { failures: 0 };
    println!("asclepios demo: a record sealed so that only the right people can open it");

    story.section("1. The key authority sets up FAME (CP-ABE over BLS12-381)");
    let (mpk, msk) = setup(&mut rng);
    story.note(&format!(
        "master public key: {} bytes (shared with every client); master secret stays with the authority",
        mpk.to_bytes().len()
    ));

    story.section("2. Keys are issued for each person's attributes");
    let mut generator = Generator::new(seed);
    let patient = generator.patient(0);
    let pid = patient.patient_id().to_string();
    let people: [(&str, Vec<String>); 3] = [
        (
            "Dr. Heart, cardiologist",
            vec!["role:doctor".into(), "dept:cardiology".into()],
        ),
        (
            "Nurse Ward, emergency nurse",
            vec!["role:nurse".into(), "ward:emergency".into()],
        ),
        ("the patient", vec![format!("patient:{pid}")]),
    ];
    let mut keys = Vec::new();
    for (who, attrs) in &people {
        let key = msk.keygen(attrs, &mut rng)?;
        story.note(&format!(
            "{who:<28} holds {:<40} ({} bytes of key)",
            attrs.join(", "),
            key.to_bytes().len()
        ));
        keys.push(key);
    }

    story.section("3. A blood-pressure Observation is sealed on the client");
    let observation = generator.blood_pressure(&pid);
    let view = ResourceView::from_value(observation.clone())?;
    let payload = serde_json::to_vec(&observation)?;
    let policy_text = format!(
        "(role:doctor and dept:cardiology) or patient:{pid} or 2 of (role:nurse, ward:icu, shift:night)"
    );
    let policy = Policy::parse(&policy_text)?;
    let context = RecordContext {
        record_id: view
            .id()
            .context("generated resources have ids")?
            .to_string(),
        version: 1,
    };
    let envelope = seal(&mpk, &policy, &context, &payload, &mut rng)?;
    let sealed = envelope.to_bytes();
    story.note(&format!(
        "{} {} for {}: {} bytes of FHIR JSON",
        view.resource_type(),
        context.record_id,
        view.subject().unwrap_or_default(),
        payload.len()
    ));
    story.note(&format!("policy: {policy}"));
    story.note(&format!(
        "sealed: {} bytes = body {} + key wrapper {} (+ framing)",
        sealed.len(),
        envelope.body.to_bytes().len(),
        envelope.wrapper.to_bytes().len()
    ));
    let leaks = ["8480-6", "mm[Hg]", "resourceType", "Systolic"]
        .iter()
        .filter(|needle| sealed.windows(needle.len()).any(|w| w == needle.as_bytes()))
        .count();
    story.expect(
        leaks == 0,
        "the stored bytes hold no clinical content (only the policy, which is public metadata)",
    );

    story.section("4. Who can open it?");
    let expectations = [true, false, true];
    for ((who, attrs), (key, should)) in people.iter().zip(keys.iter().zip(expectations)) {
        match try_open(key, &sealed) {
            Ok(plain) => {
                story.expect(
                    should && plain == payload,
                    &format!("{who} opens it ({})", attrs.join(", ")),
                );
            }
            Err(Error::NotSatisfied { .. }) => {
                story.expect(
                    !should,
                    &format!(
                        "{who} is refused: {} does not satisfy the policy",
                        attrs.join(", ")
                    ),
                );
            }
            Err(e) => story.expect(false, &format!("{who}: unexpected error {e}")),
        }
    }

    story.section("5. What one flipped bit does");
    let body_len = envelope.body.to_bytes().len();
    for (label, at) in [
        ("a bit in the sealed body", 10 + body_len / 2),
        ("a bit in the key wrapper", sealed.len() - 20),
        (
            "a bit in the ABE ciphertext's group elements",
            body_len + 200,
        ),
    ] {
        let mut tampered = sealed.clone();
        tampered[at] ^= 0x01;
        match try_open(&keys[0], &tampered) {
            Ok(_) => story.expect(false, &format!("{label}: tampering went unnoticed")),
            Err(e) => story.expect(true, &format!("{label}: refused ({e})")),
        }
    }

    story.section("6. A consent change: the record's key is re-wrapped, the body is untouched");
    let new_policy = Policy::parse(&format!("{policy} or role:nurse"))
        .or_else(|_| Policy::parse(&format!("({policy}) or role:nurse")))?;
    let wrapper = envelope
        .wrapper
        .rewrap(&keys[0], &envelope.body, &mpk, &new_policy, &mut rng)?;
    let rewrapped = Envelope {
        body: envelope.body.clone(),
        wrapper,
    };
    story.note(&format!("new policy: {new_policy}"));
    match open(&keys[1], &rewrapped) {
        Ok(o) => story.expect(
            o.payload.as_slice() == payload && !o.policy_is_original,
            "the nurse now opens it; the result says the policy is no longer the original",
        ),
        Err(e) => story.expect(false, &format!("the nurse still cannot open it: {e}")),
    }

    audit_section(&mut story, &mpk, &msk, &pid, &context.record_id)?;
    crate::demo_platform::run(&mut story, seed)?;

    println!();
    if story.failures > 0 {
        bail!("{} expectation(s) failed", story.failures);
    }
    println!("All expectations held.");
    Ok(())
}

/// Section 7: the accesses above, as confidential events in the audit log on
/// the embedded SQLite store (a scratch file, removed afterwards).
fn audit_section(
    story: &mut Story,
    mpk: &PublicKey,
    msk: &MasterSecretKey,
    pid: &str,
    record_id: &str,
) -> anyhow::Result<()> {
    let mut rng = OsRng;
    story.section("7. Every access lands, encrypted, in a tamper-evident audit log");
    let dir = std::env::temp_dir().join(format!("asclepios-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let _cleanup = RemoveOnDrop(dir.clone());
    let store = Store::open_sqlite(&dir.join("asclepios.db"))?;
    const ORIGIN: &str = "demo.asclepios.local/audit";
    let log = Log::open(store, "audit", ORIGIN, NoteSigner::generate(ORIGIN)?)?;
    let (auditor_key, auditor_public) = AuditorSecretKey::generate(&mut rng);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let event = |n: u32, actor: &str, action, outcome, purpose: &str, emergency| AuditEvent {
        id: format!("demo-event-{n}"),
        actor: actor.into(),
        action,
        resource: format!("Observation/{record_id}"),
        patient: Some(pid.to_string()),
        time: now,
        outcome,
        purpose: purpose.into(),
        emergency,
        request_signature: None,
        written: None,
    };
    let events = [
        event(
            1,
            "dr-heart",
            Action::Create,
            Outcome::Success,
            "TREAT",
            false,
        ),
        event(
            2,
            "dr-heart",
            Action::Read,
            Outcome::Success,
            "TREAT",
            false,
        ),
        event(
            3,
            "nurse-ward",
            Action::Read,
            Outcome::Denied,
            "TREAT",
            false,
        ),
        event(
            4,
            "nurse-ward",
            Action::EmergencyAccess,
            Outcome::Success,
            "ETREAT",
            true,
        ),
    ];
    let sealed: Vec<Vec<u8>> = events
        .iter()
        .map(|e| {
            Ok(
                SealedEvent::seal(e, std::slice::from_ref(&auditor_public), mpk, &mut rng)?
                    .to_bytes(),
            )
        })
        .collect::<anyhow::Result<_>>()?;
    let refs: Vec<&[u8]> = sealed.iter().map(Vec::as_slice).collect();
    let range = log.append(&refs)?;
    let note = log.checkpoint()?;
    let checkpoint = Checkpoint::verify(&note, &log.verifier())?;
    story.note(&format!(
        "{} events appended (entries {}..{}), each about {} bytes; signed checkpoint:",
        events.len(),
        range.start,
        range.end,
        sealed[0].len()
    ));
    for line in note.lines() {
        story.note(&format!("  | {line}"));
    }
    story.expect(
        !sealed
            .iter()
            .any(|e| e.windows(6).any(|w| w == b"ETREAT" || w == b"nurse-")),
        "the stored entries hold no actor, action or purpose in clear (only the ABE policy's patient pseudonym)",
    );
    let index = range.end - 1;
    let proof = log.prove_inclusion(index, checkpoint.size)?;
    story.expect(
        merkle::verify_inclusion(
            index,
            checkpoint.size,
            &merkle::leaf_hash(&sealed[3]),
            &proof,
            &checkpoint.root,
        )
        .is_ok(),
        &format!(
            "the break-glass entry's inclusion proof ({} hashes) checks against the checkpoint",
            proof.len()
        ),
    );
    story.expect(
        audit_entries(log.store(), "audit", ORIGIN, &note, &log.verifier()).is_ok(),
        "an auditor re-hashes the stored log and finds it matches the checkpoint",
    );
    let patient_key = msk.keygen(&[format!("patient:{pid}")], &mut rng)?;
    let stranger_key = msk.keygen(&["patient:someone-else"], &mut rng)?;
    let entries = log.entries(0..checkpoint.size)?;
    let parsed: Vec<SealedEvent> = entries
        .iter()
        .map(|e| SealedEvent::from_bytes(e))
        .collect::<Result<_, _>>()?;
    let patient_reads = parsed
        .iter()
        .filter(|e| e.open_with_abe(&patient_key).is_ok())
        .count();
    story.expect(
        patient_reads == events.len(),
        &format!("the patient reads all {patient_reads} events about their record"),
    );
    story.expect(
        parsed
            .iter()
            .all(|e| e.open_with_abe(&stranger_key).is_err()),
        "another patient reads none of them",
    );
    let emergency = parsed[3].open_as_auditor(&auditor_key)?;
    let fhir = emergency.to_fhir();
    story.expect(
        emergency == events[3] && fhir["subtype"][0]["code"] == "110127",
        &format!(
            "the auditor reads the break-glass event; as FHIR AuditEvent: type {} / subtype {} \"{}\", purpose {}",
            fhir["type"]["code"].as_str().unwrap_or("?"),
            fhir["subtype"][0]["code"].as_str().unwrap_or("?"),
            fhir["subtype"][0]["display"].as_str().unwrap_or("?"),
            fhir["purposeOfEvent"][0]["coding"][0]["code"].as_str().unwrap_or("?"),
        ),
    );
    Ok(())
}

/// Removes the demo's scratch directory however the section ends.
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
