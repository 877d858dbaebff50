//! Who may call: the caller must be in the directory and active, connect
//! with the key the directory vouches for and, where required, hold a
//! current attestation. Both services judge callers by these rules.

use asclepios_api::directory::ComponentFact;
use asclepios_api::directory::Member;
use asclepios_net::server::ApiError;
use axum::http::StatusCode;
use sha2::Digest;
use sha2::Sha256;

/// The attribute namespaces that put their holder in a patient's circle:
/// `patient:<p>` (the patient), `care-team:<p>`, `consent:<p>` and
/// `emergency:<p>` (a live break-glass grant).
const CIRCLE_NAMESPACES: [&str; 4] = ["patient", "care-team", "consent", "emergency"];

/// Whether attributes `held` put their holder in `patient`'s circle: the
/// patient, the care team, a consented party, an emergency grant, or one of
/// `also` (e.g. `role:lab`). Versions are ignored; whole attributes compare.
pub fn in_circle(held: &[String], patient: &str, also: &[&str]) -> bool {
    held.iter().any(|a| {
        let a = asclepios_crypto::policy::attribute_name(a);
        also.contains(&a)
            || CIRCLE_NAMESPACES
                .iter()
                .any(|ns| a == format!("{ns}:{patient}"))
    })
}

/// The patients whose circle attributes `held` put their holder in (see
/// [`in_circle`]; roles such as `role:lab` do not count), each with whether
/// only a break-glass grant puts it there. Values that are not pseudonyms
/// are left out.
pub fn circle_patients(held: &[String]) -> std::collections::BTreeMap<String, bool> {
    let mut out = std::collections::BTreeMap::new();
    for a in held {
        let Some((ns, patient)) = asclepios_crypto::policy::attribute_name(a).split_once(':')
        else {
            continue;
        };
        if CIRCLE_NAMESPACES.contains(&ns) && asclepios_net::pki::check_identity_id(patient).is_ok()
        {
            let emergency_only = out.entry(patient.to_string()).or_insert(true);
            *emergency_only &= ns == "emergency";
        }
    }
    out
}

/// The caller must be in the directory and active (403 otherwise).
pub fn require_active(member: Option<&Member>, caller: &str) -> Result<(), ApiError> {
    match member {
        Some(m) if m.active => Ok(()),
        Some(_) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("identity `{caller}` is disabled"),
        )),
        None => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("identity `{caller}` is not in the directory"),
        )),
    }
}

/// The caller as handlers see it.
pub type PeerCaller = asclepios_net::pki::PeerIdentity;

/// The caller's certificate must carry the key the directory vouches for
/// (403 otherwise): a certificate for the same id with another key (minted
/// with a stolen CA key, or issued to an id before it was registered)
/// speaks for nobody.
pub fn require_registered_key(
    member: Option<&Member>,
    caller: &PeerCaller,
) -> Result<(), ApiError> {
    if asclepios_api::directory::same_key(
        member.and_then(|m| m.public_key.as_deref()),
        &caller.public_key,
    ) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "the certificate of `{}` does not carry the key the directory vouches for",
                caller.id
            ),
        ))
    }
}

/// SHA-256 of the caller's certificate key as SubjectPublicKeyInfo: what a
/// component's registration is bound to.
pub fn identity_key_sha256(peer: &PeerCaller) -> [u8; 32] {
    Sha256::digest(asclepios_attest::ratls::ed25519_spki(&peer.public_key)).into()
}

/// Refuses a caller of one of `kinds` (directory kinds that are components)
/// without a current, not contraindicated registration for the very key it
/// connects with. Both services apply it: the authority before it releases
/// keys, tokens or policies, the record service before it stores a version.
pub fn check_attested(
    member: Option<&Member>,
    component: Option<&ComponentFact>,
    caller: &PeerCaller,
    kinds: &[String],
) -> Result<(), ApiError> {
    if kinds.is_empty() {
        return Ok(());
    }
    if !member.is_some_and(|m| kinds.contains(&m.kind)) {
        return Ok(());
    }
    let refuse = |why: String| {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "component `{}` {why}: attest first (`asclepios attest register --as {}`)",
                caller.id, caller.id
            ),
        ))
    };
    let contraindicated = asclepios_attest::policy::Trust::Contraindicated.to_string();
    match component {
        None => refuse("has not attested".into()),
        Some(c) if c.trust == contraindicated => {
            refuse(format!("failed its last attestation ({})", c.appraisal))
        }
        Some(c) if c.expires_at <= asclepios_attest::unix_now() => {
            refuse("has an expired attestation".into())
        }
        Some(c) if c.key_sha256 != hex::encode(identity_key_sha256(caller)) => {
            refuse("attested with another certificate key".into())
        }
        Some(_) => Ok(()),
    }
}
