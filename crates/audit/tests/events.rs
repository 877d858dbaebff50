//! Confidential audit events: who can read them, and what the log shows.

use asclepios_audit::{Action, AuditEvent, AuditorSecretKey, Outcome, SealedEvent};
use asclepios_crypto::abe;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

fn event(emergency: bool) -> AuditEvent {
    AuditEvent {
        id: "ev-1".into(),
        actor: "dr-er-7".into(),
        action: if emergency {
            Action::EmergencyAccess
        } else {
            Action::Read
        },
        resource: "Observation/obs-42".into(),
        patient: Some("pt-0c1f".into()),
        time: 1_790_000_000,
        outcome: Outcome::Success,
        purpose: if emergency {
            "ETREAT".into()
        } else {
            "TREAT".into()
        },
        emergency,
        request_signature: Some("c2lnbmF0dXJl".into()),
        written: None,
    }
}

#[test]
fn auditors_and_the_patient_read_events_others_do_not() {
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let (mpk, msk) = abe::setup(&mut rng);
    let (auditor_sk, auditor_pk) = AuditorSecretKey::generate(&mut rng);
    let (_, other_pk) = AuditorSecretKey::generate(&mut rng);
    let (stranger_sk, _) = AuditorSecretKey::generate(&mut rng);
    let ev = event(true);
    let sealed = SealedEvent::seal(&ev, &[auditor_pk, other_pk], &mpk, &mut rng).unwrap();
    let bytes = sealed.to_bytes();
    let parsed = SealedEvent::from_bytes(&bytes).unwrap();
    assert_eq!(parsed.open_as_auditor(&auditor_sk).unwrap(), ev);
    assert!(parsed.open_as_auditor(&stranger_sk).is_err());
    let patient = msk.keygen(&["patient:pt-0c1f"], &mut rng).unwrap();
    assert_eq!(parsed.open_with_abe(&patient).unwrap(), ev);
    let other_patient = msk.keygen(&["patient:pt-9999"], &mut rng).unwrap();
    assert!(parsed.open_with_abe(&other_patient).is_err());
    let auditor_abe = msk.keygen(&["role:auditor"], &mut rng).unwrap();
    assert_eq!(parsed.open_with_abe(&auditor_abe).unwrap(), ev);
    // The entry holds no event field in clear.
    for secret in ["dr-er-7", "Observation/obs-42", "ETREAT", "c2lnbmF0dXJl"] {
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{secret}"
        );
    }
    // With one auditor, any flipped bit is refused (decode or authentication).
    let single = SealedEvent::seal(&ev, &[auditor_sk_public(&auditor_sk)], &mpk, &mut rng)
        .unwrap()
        .to_bytes();
    for i in (0..single.len()).step_by(7) {
        let mut t = single.clone();
        t[i] ^= 1;
        let ok = SealedEvent::from_bytes(&t).is_ok_and(|s| s.open_as_auditor(&auditor_sk).is_ok());
        assert!(!ok, "bit flip at byte {i} went unnoticed");
    }
    for n in (0..bytes.len()).step_by(13) {
        assert!(SealedEvent::from_bytes(&bytes[..n]).is_err());
    }
}

#[test]
fn break_glass_exports_as_the_hl7_emergency_override() {
    let fhir = event(true).to_fhir();
    assert_eq!(fhir["resourceType"], "AuditEvent");
    assert_eq!(fhir["type"]["code"], "110113");
    assert_eq!(fhir["subtype"][0]["code"], "110127");
    assert_eq!(fhir["subtype"][0]["display"], "Emergency Override Started");
    assert_eq!(fhir["purposeOfEvent"][0]["coding"][0]["code"], "ETREAT");
    assert_eq!(fhir["recorded"], "2026-09-21T14:13:20Z");
    assert_eq!(fhir["entity"][1]["role"]["display"], "Patient");
    let routine = event(false).to_fhir();
    assert_eq!(routine["type"]["code"], "110110");
    assert_eq!(routine["action"], "R");
    assert!(routine.get("subtype").is_none());
}

fn auditor_sk_public(sk: &AuditorSecretKey) -> asclepios_audit::AuditorPublicKey {
    AuditorSecretKey::from_bytes(sk.to_bytes().as_slice())
        .unwrap()
        .1
}
