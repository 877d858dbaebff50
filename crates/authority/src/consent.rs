//! Patients' consents (GDPR): a patient grants a party access to their
//! records for a purpose, for some resource types, until a date; and
//! withdraws it. A grant gives the party the attribute `consent:<patient>`,
//! which record policies name; withdrawal and expiry revoke it as any
//! revocation: the attribute's version bumps and the patient's records are
//! re-wrapped, so the party's keys stop opening them.
//!
//! Resource types and purpose are recorded (and exported as FHIR Consent) but
//! not enforced per type by the cryptography: the attribute is per patient.

pub use asclepios_api::consent::{ConsentGrant, ConsentOut};

/// The attribute a consent gives its grantee.
pub fn consent_attribute(patient: &str) -> String {
    format!("consent:{patient}")
}

/// The FHIR R4 Consent resource for a consent.
pub fn to_fhir(
    patient: &str,
    consent_id: &str,
    active: bool,
    grant: &ConsentGrant,
    updated_at: i64,
) -> serde_json::Value {
    use serde_json::json;
    let rfc3339 = |t: i64| {
        time::OffsetDateTime::from_unix_timestamp(t)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
    };
    let mut provision = json!({
        "type": "permit",
        "actor": [{
            "role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]},
            "reference": {"identifier": {"value": grant.grantee}},
        }],
        "purpose": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": grant.purpose}],
    });
    if !grant.resource_types.iter().any(|t| t == "*") {
        provision["class"] = grant
            .resource_types
            .iter()
            .map(|t| json!({"system": "http://hl7.org/fhir/resource-types", "code": t}))
            .collect();
    }
    if let Some(end) = grant.expires_at.and_then(rfc3339) {
        provision["period"] = json!({"end": end});
    }
    json!({
        "resourceType": "Consent",
        "id": consent_id,
        "status": if active { "active" } else { "inactive" },
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0", "display": "Patient Consent"}]}],
        "patient": {"identifier": {"value": patient}},
        "dateTime": rfc3339(updated_at),
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]},
        "provision": provision,
    })
}
