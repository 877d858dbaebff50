//! Consents as patients grant them and the authority reports them.

use serde::{Deserialize, Serialize};

/// A consent on record.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentOut {
    /// Its id.
    pub consent_id: String,
    /// Its version.
    pub version: u64,
    /// `active` or `withdrawn`.
    pub status: String,
    /// What was granted.
    pub grant: ConsentGrant,
    /// As a FHIR R4 Consent resource.
    pub fhir: serde_json::Value,
}

/// A consent as the patient gives it.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentGrant {
    /// Who receives access (an identity id).
    pub grantee: String,
    /// Purpose of use (HL7 v3-ActReason: TREAT, HRESCH, ...).
    pub purpose: String,
    /// FHIR resource types covered, or `*`.
    pub resource_types: Vec<String>,
    /// When it ends (Unix seconds), if it does.
    pub expires_at: Option<i64>,
}
