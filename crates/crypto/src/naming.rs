//! Opaque record ids. The record service stores a record under an id that
//! says nothing of it: not its FHIR id, not its resource type, not which
//! records belong together beyond the patient they are filed under. The
//! writer computes the id as a MAC of the FHIR reference (`Type/id`) under
//! a per-patient *naming key*; the key authority derives each patient's
//! naming key from a secret of its own and gives it to the patient's circle.
//! So the same resource always gets the same id (an import can be repeated,
//! a new version finds its record), whoever in the circle writes it, while
//! the store, its administrator and anyone outside the circle see 128
//! random-looking bits.
//!
//! ```text
//! naming key(p) = HMAC-SHA256(authority secret, "asclepios record naming v1" || 0 || p)
//! record id     = "r" || hex(HMAC-SHA256(naming key(p), "asclepios record id v1" || 0 || Type/id)[..16])
//! ```

use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop};

type HmacSha256 = Hmac<Sha256>;

const NAMING_LABEL: &[u8] = b"asclepios record naming v1";
const ID_LABEL: &[u8] = b"asclepios record id v1";

/// Length of an opaque record id: `r` and 32 hex digits (128 bits).
pub const RECORD_ID_LEN: usize = 33;

/// Whether `id` has the form of an opaque record id (`r` and 32 lowercase
/// hex digits). The record service stores nothing under another id.
pub fn is_opaque_record_id(id: &str) -> bool {
    id.len() == RECORD_ID_LEN
        && id.starts_with('r')
        && id[1..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn mac(key: &[u8], label: &[u8], message: &[u8]) -> [u8; 32] {
    // HMAC takes keys of any length: this cannot fail.
    let mut m = <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC accepts any key length");
    m.update(label);
    m.update(&[0]);
    m.update(message);
    m.finalize().into_bytes().into()
}

/// The key authority's secret the naming keys derive from.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct NamingSecret([u8; 32]);

impl NamingSecret {
    /// From its 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        NamingSecret(bytes)
    }

    /// Patient `patient`'s naming key.
    pub fn patient_key(&self, patient: &str) -> NamingKey {
        NamingKey(mac(&self.0, NAMING_LABEL, patient.as_bytes()))
    }
}

impl std::fmt::Debug for NamingSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NamingSecret(<redacted>)")
    }
}

/// One patient's naming key: turns FHIR references into record ids.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct NamingKey([u8; 32]);

impl NamingKey {
    /// From its 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        NamingKey(bytes)
    }

    /// Its 32 bytes (to send to a member of the patient's circle).
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0
    }

    /// The opaque record id of the resource `resource_type/fhir_id`.
    pub fn record_id(&self, resource_type: &str, fhir_id: &str) -> String {
        let reference = format!("{resource_type}/{fhir_id}");
        let tag = mac(&self.0, ID_LABEL, reference.as_bytes());
        format!("r{}", hex::encode(&tag[..16]))
    }
}

impl std::fmt::Debug for NamingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NamingKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_per_patient_and_opaque() {
        let secret = NamingSecret::from_bytes([7; 32]);
        let a = secret.patient_key("pat-00000");
        let id = a.record_id("Observation", "obs-00000-1-2");
        assert!(is_opaque_record_id(&id), "{id}");
        assert_eq!(id, a.record_id("Observation", "obs-00000-1-2"));
        assert!(!id.contains("obs") && !id.contains("00000"));
        // Another type, another resource, another patient, another
        // deployment: another id.
        assert_ne!(id, a.record_id("Condition", "obs-00000-1-2"));
        assert_ne!(id, a.record_id("Observation", "obs-00000-1-3"));
        let b = secret.patient_key("pat-00001");
        assert_ne!(id, b.record_id("Observation", "obs-00000-1-2"));
        let other = NamingSecret::from_bytes([8; 32]).patient_key("pat-00000");
        assert_ne!(id, other.record_id("Observation", "obs-00000-1-2"));
    }

    #[test]
    fn matches_hmac_sha256_as_specified() {
        // The construction by hand, with the HMAC-SHA256 the crate
        // implements: key = HMAC(secret, label || 0 || patient), id = "r" ||
        // hex of the first 16 bytes of HMAC(key, label || 0 || Type/id).
        let mut m = <HmacSha256 as Mac>::new_from_slice(&[1; 32]).unwrap();
        m.update(b"asclepios record naming v1\0pat-1");
        let expected: [u8; 32] = m.finalize().into_bytes().into();
        let key = NamingSecret::from_bytes([1; 32]).patient_key("pat-1");
        assert_eq!(key.to_bytes(), expected);
        let mut m = <HmacSha256 as Mac>::new_from_slice(&expected).unwrap();
        m.update(b"asclepios record id v1\0Patient/pat-1");
        let tag = m.finalize().into_bytes();
        assert_eq!(
            key.record_id("Patient", "pat-1"),
            format!("r{}", hex::encode(&tag[..16]))
        );
    }

    #[test]
    fn only_the_opaque_form_passes() {
        for bad in [
            "obs-1",
            "",
            "r",
            "R0123456789abcdef0123456789abcdef",
            "r0123456789ABCDEF0123456789abcdef",
            "r0123456789abcdef0123456789abcde",
            "r0123456789abcdef0123456789abcdef0",
            "x0123456789abcdef0123456789abcdef",
        ] {
            assert!(!is_opaque_record_id(bad), "{bad}");
        }
        assert!(is_opaque_record_id("r0123456789abcdef0123456789abcdef"));
    }
}
