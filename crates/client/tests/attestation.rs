//! Remote attestation end to end, on a deployment that requires it: clients
//! appraise the key authority's RA-TLS certificate and challenge it before
//! any key request, a device gets keys only after attesting, and every
//! verdict is in the audit log.

mod common;

use std::sync::Mutex;

use asclepios_attest::attester::{Attester, InsecureSoftwareAttester};
use asclepios_attest::evidence::{Binding, Evidence, Format};
use asclepios_attest::Trust;
use asclepios_audit::Action;
use asclepios_client::ClientError;
use common::{client, deploy_with, Deployment};

async fn requiring() -> Deployment {
    deploy_with(false, |c| {
        c.attestation.require = true;
        c.attestation.require_components = true;
    })
    .await
}

fn refused_status(e: &ClientError) -> Option<u16> {
    match e {
        ClientError::Refused { status, .. } => Some(*status),
        _ => None,
    }
}

/// Hands out the first evidence it made, whatever it is asked to bind.
struct Replaying {
    inner: InsecureSoftwareAttester,
    first: Mutex<Option<Evidence>>,
}

impl Attester for Replaying {
    fn format(&self) -> Format {
        Format::InsecureSoftware
    }
    fn evidence(&self, binding: &Binding) -> Result<Evidence, asclepios_attest::Error> {
        let mut first = self.first.lock().unwrap();
        Ok(first
            .get_or_insert_with(|| self.inner.evidence(binding).unwrap())
            .clone())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_check_the_authority_and_devices_attest_before_keys() {
    let d = requiring().await;

    // A clinician: the authority's certificate and a fresh challenge are
    // appraised before the first key request; development evidence is a
    // warning, never affirming.
    let mut doctor = client(&d, "dr-heart");
    doctor.refresh_key().await.unwrap();
    let cert = doctor.authority_certificate_appraisal().unwrap();
    assert_eq!(cert.trust, Trust::Warning, "{cert}");
    let verdict = doctor.attest_authority().await.unwrap();
    assert_eq!(verdict.trust, Trust::Warning, "{verdict}");
    assert!(verdict.summary().contains("insecure-software"));

    // A device gets nothing before it attests.
    let mut lab = client(&d, "lab-central");
    let e = lab.refresh_key().await.unwrap_err();
    assert_eq!(refused_status(&e), Some(403), "{e}");
    assert!(e.to_string().contains("has not attested"), "{e}");
    // Nor a policy to seal a record under (M6): an unattested device cannot
    // write through the authority's resolution.
    let e = lab
        .resolve_policy("patient:pat-00000 or emergency:pat-00000")
        .await
        .unwrap_err();
    assert_eq!(refused_status(&e), Some(403), "{e}");
    // Nor can it store a version sealed under a policy it versioned itself
    // (every attribute is at version 0 here): the record service refuses it.
    let policy =
        asclepios_crypto::Policy::parse("patient:pat-00000 or emergency:pat-00000").unwrap();
    let reading = serde_json::json!({
        "resourceType": "Observation", "id": "obs-unattested-1", "status": "final",
        "subject": {"reference": "Patient/pat-00000"},
        "valueQuantity": {"value": 250, "unit": "mm[Hg]"}
    });
    // It gets no naming key either, so it cannot tell which id a resource
    // is stored under.
    let e = lab.record_id_for("pat-00000", &reading).await.unwrap_err();
    assert_eq!(refused_status(&e), Some(403), "{e}");
    let guessed = "r22222222222222222222222222222222";
    let e = lab
        .put_record_resolved("pat-00000", guessed, 1, &reading, &policy)
        .await
        .unwrap_err();
    assert_eq!(refused_status(&e), Some(403), "{e}");
    assert!(e.to_string().contains("has not attested"), "{e}");

    let attester = asclepios_deploy::attestation::development_attester(&d.dir).unwrap();
    let registered = lab.register_component(&attester).await.unwrap();
    assert_eq!(registered.trust, Trust::Warning);
    lab.refresh_key().await.unwrap();
    lab.resolve_policy("patient:pat-00000 or emergency:pat-00000")
        .await
        .unwrap();
    let record_id = lab.record_id_for("pat-00000", &reading).await.unwrap();
    lab.put_record_resolved("pat-00000", &record_id, 1, &reading, &policy)
        .await
        .unwrap();

    // A replayed answer (its nonce used up) is refused, and so is evidence
    // of another build; a failed attestation withdraws the approval.
    let replaying = Replaying {
        inner: asclepios_deploy::attestation::development_attester(&d.dir).unwrap(),
        first: Mutex::new(None),
    };
    lab.register_component(&replaying).await.unwrap();
    let e = lab.register_component(&replaying).await.unwrap_err();
    assert_eq!(refused_status(&e), Some(403), "{e}");
    assert!(e.to_string().contains("replay"), "{e}");

    let other_build = InsecureSoftwareAttester::new(
        ed25519_dalek::SigningKey::from_bytes(&[5; 32]),
        [1; 32],
        [2; 32],
    );
    let e = lab.register_component(&other_build).await.unwrap_err();
    assert_eq!(refused_status(&e), Some(403), "{e}");
    assert!(e.to_string().contains("not among"), "{e}");
    let e = lab.refresh_key().await.unwrap_err();
    assert!(e.to_string().contains("failed its last attestation"), "{e}");

    // Every verdict is audited: the clients' on the authority, the
    // authority's on the device.
    let mut auditor = client(&d, "auditor-ann");
    auditor.refresh_key().await.unwrap();
    let events = auditor.audit_events().await.unwrap();
    let verdicts: Vec<_> = events
        .iter()
        .filter(|e| e.action == Action::Attestation)
        .collect();
    assert!(
        verdicts
            .iter()
            .filter(|e| e.resource.starts_with("attestation of authority"))
            .count()
            >= 2,
        "{verdicts:#?}"
    );
    assert!(verdicts
        .iter()
        .any(|e| e.resource.starts_with("component/lab-central")
            && e.outcome == asclepios_audit::Outcome::Denied));
    drop(lab);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_refuse_an_authority_their_policy_does_not_accept() {
    let d = requiring().await;
    let policy_path = d.dir.join("attestation-policy.toml");
    let original = std::fs::read_to_string(&policy_path).unwrap();

    // Reference values for another build: the handshake itself fails.
    let mut other = asclepios_attest::Policy::from_toml(&original).unwrap();
    other.reference[0].measurement = "ab".repeat(32);
    let other = other.to_toml().unwrap();
    std::fs::write(&policy_path, &other).unwrap();
    let mut c = client(&d, "dr-heart");
    let e = c.refresh_key().await.unwrap_err();
    assert!(matches!(e, ClientError::Attestation(_)), "{e}");
    assert!(e.to_string().contains("not among"), "{e}");
    let seen = c.authority_certificate_appraisal().unwrap();
    assert_eq!(seen.trust, Trust::Contraindicated);
    assert!(seen.summary().contains("not among"), "{seen}");

    // A hardware policy refuses development evidence outright.
    std::fs::write(&policy_path, "formats = [\"sgx-dcap\", \"tdx-dcap\"]\n").unwrap();
    let mut c = client(&d, "dr-heart");
    assert!(c.refresh_key().await.is_err());
    let seen = c.authority_certificate_appraisal().unwrap();
    assert!(seen.summary().contains("requires hardware"), "{seen}");

    // The deployment's own reference values accept it again.
    std::fs::write(&policy_path, &original).unwrap();
    let mut c = client(&d, "dr-heart");
    c.refresh_key().await.unwrap();
}
