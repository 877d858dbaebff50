//! The platform end to end over real mutual TLS on localhost, on SQLite and
//! on PostgreSQL: sealing on the client, who can read, what the service
//! refuses, receipts, erasure, and what the database holds.

mod common;

use asclepios_client::ClientError;
use asclepios_deploy::Config;
use asclepios_fhir::synth::Generator;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use common::{client, contains, deploy, Deployment, Domain};

/// An opaque id no writer derived.
const PLANTED: &str = "r00000000000000000000000000000000";

async fn scenario(d: Deployment) {
    let mut generator = Generator::new(7);
    let bundle = generator.patient(1);
    let pid = bundle.patient_id().to_string();
    assert_eq!(pid, "pat-00000");
    let family = bundle.patient["name"][0]["family"]
        .as_str()
        .unwrap()
        .to_string();
    let observation = generator.blood_pressure(&pid);
    let fhir_id = observation["id"].as_str().unwrap().to_string();
    let policy = Config::load(&d.dir).unwrap().default_policy(&pid);

    let mut heart = client(&d, "dr-heart");
    // Stored under an opaque id, the same for every writer in the circle.
    let record_id = heart.record_id_for(&pid, &observation).await.unwrap();
    assert!(
        !record_id.contains(&fhir_id) && record_id.len() == 33,
        "{record_id}"
    );
    let attrs = heart.refresh_key().await.unwrap().to_vec();
    assert!(attrs.contains(&"role:doctor".to_string()), "{attrs:?}");
    let receipt = heart
        .put_record(&pid, &record_id, 1, &observation, &policy)
        .await
        .unwrap();
    assert_eq!(receipt.status, 200);
    let (patient_record, _) = heart
        .put_resource(&pid, 1, &bundle.patient, &policy)
        .await
        .unwrap();
    // Sizes do not tell the kinds apart: payloads are padded to 1 KiB.
    let size = |r: asclepios_api::records::RecordOut| r.body.len();
    assert_eq!(
        size(heart.get_sealed(&pid, &record_id).await.unwrap().0),
        size(heart.get_sealed(&pid, &patient_record).await.unwrap().0),
        "a Patient and an Observation sealed to different sizes"
    );

    // The patient reads their record; the receipt was checked by the client.
    let mut patient = client(&d, &pid);
    patient.refresh_key().await.unwrap();
    let (read, receipt) = patient.get_record(&pid, &record_id).await.unwrap();
    assert_eq!(read, observation);
    assert!(receipt.leaf_index > 0);
    // The care-team nurse reads it; the researcher is refused by the service
    // (second layer) and could not open the ciphertext anyway (first layer).
    let mut nurse = client(&d, "nurse-ward");
    nurse.refresh_key().await.unwrap();
    assert_eq!(
        nurse.get_record(&pid, &record_id).await.unwrap().0,
        observation
    );
    let mut researcher = client(&d, "researcher-rita");
    researcher.refresh_key().await.unwrap();
    let err = researcher.get_record(&pid, &record_id).await.unwrap_err();
    assert!(
        matches!(err, ClientError::Refused { status: 403, .. }),
        "{err}"
    );
    let (ciphertext, _) = heart.get_sealed(&pid, &record_id).await.unwrap();
    let err = researcher.open(&ciphertext).unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Crypto(asclepios_crypto::Error::NotSatisfied { .. })
        ),
        "{err}"
    );

    // Outside the circle there is no naming key: a researcher cannot even
    // tell which id a known resource would be stored under.
    let err = researcher
        .record_id_for(&pid, &observation)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::Refused { status: 403, .. }),
        "{err}"
    );

    // Only the patient's circle writes the patient's records, under a policy
    // that the patient alone and an emergency alone each satisfy.
    let err = researcher
        .put_record(&pid, PLANTED, 1, &observation, &policy)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::Refused { status: 403, .. }),
        "{err}"
    );
    let err = heart
        .put_record(
            &pid,
            PLANTED,
            1,
            &observation,
            "patient:pat-00000 or role:doctor",
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::Refused { status: 403, .. }),
        "{err}"
    );
    // Ids and versions are metadata: outside the circle, no listing; the
    // audit log is for patients and auditors.
    let err = researcher.list_records(&pid).await.unwrap_err();
    assert!(
        matches!(err, ClientError::Refused { status: 403, .. }),
        "{err}"
    );
    let err = researcher.audit_events().await.unwrap_err();
    assert!(
        matches!(err, ClientError::Refused { status: 403, .. }),
        "{err}"
    );
    // A name that cannot be a pseudonym is refused before anything is logged.
    let err = heart.get_sealed("pat%20x", &record_id).await.unwrap_err();
    assert!(
        matches!(err, ClientError::Refused { status: 400, .. }),
        "{err}"
    );

    // A tampered body or wrapper is rejected by the client.
    let (sealed, _) = heart.get_sealed(&pid, &record_id).await.unwrap();
    for field in ["body", "wrapper"] {
        let mut t = sealed.clone();
        let slot = if field == "body" {
            &mut t.body
        } else {
            t.wrapper.as_mut().unwrap()
        };
        let mut bytes = B64.decode(&*slot).unwrap();
        let at = bytes.len() - 5;
        bytes[at] ^= 1;
        *slot = B64.encode(bytes);
        assert!(heart.open(&t).is_err(), "tampered {field} opened");
    }

    // The author's signature is checked against the directory's key: a record
    // passed off as someone else's is refused.
    heart.check_author(&sealed).await.unwrap();
    let mut passed_off = sealed.clone();
    passed_off.author = "nurse-ward".into();
    assert!(heart.check_author(&passed_off).await.is_err());

    // Revocation: the nurse leaves the care team and the cardiology ward.
    let done = client(&d, "admin-ada")
        .set_identity_attributes("nurse-ward", &["role:nurse".to_string()])
        .await
        .unwrap()
        .revocation;
    assert_eq!(done.revoked, ["care-team:pat-00000", "dept:cardiology"]);
    assert_eq!(done.rewrapped, 2, "both records name the care team");
    // Neither her old key nor a fresh one opens the re-wrapped record.
    assert!(nurse.get_record(&pid, &record_id).await.is_err());
    nurse.refresh_key().await.unwrap();
    assert_eq!(nurse.attributes(), ["role:nurse"]);
    assert!(nurse.get_record(&pid, &record_id).await.is_err());
    // The cardiologist stays on the care team: her old key is stale, a fresh
    // one (care-team:pat-00000@v1) opens the record again.
    assert!(heart.get_record(&pid, &record_id).await.is_err());
    let attrs = heart.refresh_key().await.unwrap().to_vec();
    assert!(
        attrs.contains(&"care-team:pat-00000@v1".to_string()),
        "{attrs:?}"
    );
    assert_eq!(
        heart.get_record(&pid, &record_id).await.unwrap().0,
        observation
    );
    // Records written afterwards carry the new versions too.
    let later = generator.blood_pressure(&pid);
    let later_id = heart.record_id_for(&pid, &later).await.unwrap();
    heart
        .put_record(&pid, &later_id, 1, &later, &policy)
        .await
        .unwrap();
    assert!(nurse.get_record(&pid, &later_id).await.is_err());
    assert_eq!(patient.get_record(&pid, &later_id).await.unwrap().0, later);

    // Break-glass: the emergency physician cannot read, breaks the glass, can.
    let mut er = client(&d, "dr-er");
    er.refresh_key().await.unwrap();
    assert!(er.get_record(&pid, &later_id).await.is_err());
    let grant = er
        .break_glass(&pid, "unconscious, suspected overdose")
        .await
        .unwrap();
    assert_eq!(grant.attribute, format!("emergency:{pid}"));
    er.refresh_key().await.unwrap();
    assert_eq!(er.get_record(&pid, &later_id).await.unwrap().0, later);
    // Only the emergency role may break the glass.
    let err = heart.break_glass(&pid, "curious").await.unwrap_err();
    assert!(
        matches!(err, ClientError::Refused { status: 403, .. }),
        "{err}"
    );
    // The patient sees the break-glass, and every access to their records.
    let events = patient.audit_events().await.unwrap();
    let glass: Vec<_> = events
        .iter()
        .filter(|e| {
            e.action == asclepios_audit::Action::EmergencyAccess
                && e.outcome == asclepios_audit::Outcome::Success
        })
        .collect();
    // The refused attempt is there too, for the patient to see.
    assert!(events.iter().any(|e| e.actor == "dr-heart"
        && e.action == asclepios_audit::Action::EmergencyAccess
        && e.outcome == asclepios_audit::Outcome::Denied));
    assert!(
        events.iter().any(|e| e.actor == "dr-er"
            && e.action == asclepios_audit::Action::Read
            && e.emergency
            && e.purpose == "ETREAT"),
        "the emergency read is logged as such"
    );
    assert_eq!(glass.len(), 1, "{events:?}");
    assert_eq!(glass[0].actor, "dr-er");
    assert!(glass[0].resource.contains("suspected overdose"));
    assert_eq!(glass[0].to_fhir()["subtype"][0]["code"], "110127");
    assert!(events.iter().any(|e| e.actor == "researcher-rita"
        && e.action == asclepios_audit::Action::Read
        && e.outcome == asclepios_audit::Outcome::Denied));
    // The grant expires: the authority revokes the attribute and re-wraps,
    // so the emergency key stops working.
    tokio::time::sleep(std::time::Duration::from_secs(
        3 + asclepios_deploy::serve::SWEEP_SECONDS + 2,
    ))
    .await;
    assert!(
        er.get_record(&pid, &later_id).await.is_err(),
        "expired grant still opens"
    );
    er.refresh_key().await.unwrap();
    assert!(!er.attributes().iter().any(|a| a.starts_with("emergency:")));
    assert!(er.get_record(&pid, &later_id).await.is_err());

    // Consent: the patient lets the emergency physician (a doctor) in, then withdraws.
    let consent = patient
        .grant_consent(&asclepios_authority::consent::ConsentGrant {
            grantee: "dr-er".into(),
            purpose: "TREAT".into(),
            resource_types: vec!["Observation".into()],
            expires_at: None,
        })
        .await
        .unwrap();
    assert_eq!(consent.fhir["resourceType"], "Consent");
    assert_eq!(consent.fhir["provision"]["class"][0]["code"], "Observation");
    er.refresh_key().await.unwrap();
    assert_eq!(er.get_record(&pid, &later_id).await.unwrap().0, later);
    let err = heart
        .grant_consent(&asclepios_authority::consent::ConsentGrant {
            grantee: "dr-heart".into(),
            purpose: "TREAT".into(),
            resource_types: vec!["*".into()],
            expires_at: None,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::Refused { status: 403, .. }),
        "only patients consent: {err}"
    );
    let withdrawn = patient.withdraw_consent(&consent.consent_id).await.unwrap();
    assert_eq!(withdrawn.status, "withdrawn");
    assert_eq!(withdrawn.fhir["status"], "inactive");
    assert!(
        er.get_record(&pid, &later_id).await.is_err(),
        "withdrawn consent still opens"
    );
    er.refresh_key().await.unwrap();
    assert!(er.get_record(&pid, &later_id).await.is_err());
    assert_eq!(patient.consents().await.unwrap().len(), 1);
    assert_eq!(patient.consents().await.unwrap()[0].status, "withdrawn");
    // A consent with an expiry ends by itself.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    patient
        .grant_consent(&asclepios_authority::consent::ConsentGrant {
            grantee: "dr-er".into(),
            purpose: "TREAT".into(),
            resource_types: vec!["*".into()],
            expires_at: Some(now + 2),
        })
        .await
        .unwrap();
    er.refresh_key().await.unwrap();
    assert_eq!(er.get_record(&pid, &later_id).await.unwrap().0, later);
    tokio::time::sleep(std::time::Duration::from_secs(
        2 + asclepios_deploy::serve::SWEEP_SECONDS + 2,
    ))
    .await;
    assert!(
        er.get_record(&pid, &later_id).await.is_err(),
        "expired consent still opens"
    );
    assert!(patient
        .consents()
        .await
        .unwrap()
        .iter()
        .all(|c| c.status == "withdrawn"));
    // The patient's own access and the care team's are untouched.
    assert_eq!(patient.get_record(&pid, &later_id).await.unwrap().0, later);

    // History is append-only: writing version 1 again is a conflict.
    let err = heart
        .put_record(&pid, &record_id, 1, &observation, &policy)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::Refused { status: 409, .. }),
        "{err}"
    );
    heart
        .put_record(&pid, &record_id, 2, &observation, &policy)
        .await
        .unwrap();
    assert_eq!(
        heart.record_versions(&pid, &record_id).await.unwrap(),
        [1, 2]
    );
    let mut listed = heart.list_records(&pid).await.unwrap();
    listed.sort();
    assert_eq!(listed.len(), 3);

    // A disabled identity is refused by both services.
    client(&d, "admin-ada")
        .disable_identity("researcher-rita")
        .await
        .unwrap();
    let err = researcher.get_sealed(&pid, &record_id).await.unwrap_err();
    assert!(
        matches!(err, ClientError::Refused { status: 403, .. }),
        "{err}"
    );
    let err = researcher.refresh_key().await.unwrap_err();
    assert!(
        matches!(err, ClientError::Refused { status: 403, .. }),
        "{err}"
    );

    // Only the patient may erase; afterwards nobody can open the record.
    let err = heart.erase_record(&pid, &record_id).await.unwrap_err();
    assert!(
        matches!(err, ClientError::Refused { status: 403, .. }),
        "{err}"
    );
    // Both versions, bodies and wrappers, are destroyed.
    let erased = patient.erase_record(&pid, &record_id).await.unwrap();
    assert_eq!(
        (erased.records, erased.versions, erased.wrappers),
        (1, 2, 2)
    );
    assert!(heart.get_record(&pid, &record_id).await.is_err());
    // What is left of it (author, signature) is not for outsiders.
    let outsider = client(&d, "pat-00001");
    match outsider.get_sealed(&pid, &record_id).await {
        Err(ClientError::Refused { status: 403, .. }) => {}
        other => panic!("an outsider read an erased record's remains: {other:?}"),
    }

    // A writer in the circle cannot pass one resource off under another's
    // id: the reader recomputes the id from what it opened.
    let other = generator.blood_pressure(&pid);
    let decoy_id = heart
        .record_id(&pid, "Observation", "decoy-1")
        .await
        .unwrap();
    heart
        .put_record(&pid, &decoy_id, 1, &other, &policy)
        .await
        .unwrap();
    let err = patient.get_record(&pid, &decoy_id).await.unwrap_err();
    assert!(err.to_string().contains("under the wrong id"), "{err}");

    // The store holds no name, code, unit or value of the patient in clear.
    let raw = d.raw_bytes().await;
    let systolic = observation["valueQuantity"]["value"].to_string();
    assert!(systolic.parse::<f64>().is_ok(), "{systolic}");
    for needle in [
        family.as_str(),
        "8480-6",
        "Systolic",
        "mm[Hg]",
        "resourceType",
        fhir_id.as_str(),
        systolic.as_str(),
    ] {
        assert!(
            !contains(&raw, needle.as_bytes()),
            "`{needle}` found in the raw store"
        );
    }
    // Nor does the record service's store say what kind of resource a
    // record is: its ids are opaque. (The authority's keeps a consent's
    // scope, `Observation` here, in its protected state.)
    let records_store = d.raw_bytes_of(Domain::Records).await;
    assert!(
        !contains(&records_store, b"Observation"),
        "a resource type in the record service's store"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn platform_end_to_end_on_sqlite() {
    scenario(deploy(false).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn platform_end_to_end_on_postgres() {
    scenario(deploy(true).await).await;
}
