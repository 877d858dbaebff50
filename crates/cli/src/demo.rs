//! `asclepios demo`: the crypto story, told step by step. Every step states
//! what should happen and checks it; any surprise makes the command fail.

use anyhow::{bail, Context};
use asclepios_crypto::abe::{setup, UserKey};
use asclepios_crypto::envelope::{open, seal, Envelope, RecordContext};
use asclepios_crypto::{Error, Policy};
use asclepios_fhir::synth::Generator;
use asclepios_fhir::ResourceView;
use rand_core::OsRng;

struct Story {
    failures: usize,
}

impl Story {
    fn section(&self, title: &str) {
        println!("\n== {title}");
    }

    fn note(&self, text: &str) {
        println!("   {text}");
    }

    fn expect(&mut self, ok: bool, what: &str) {
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

    println!();
    if story.failures > 0 {
        bail!("{} expectation(s) failed", story.failures);
    }
    println!("All expectations held.");
    Ok(())
}
