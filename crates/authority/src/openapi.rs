//! The key authority's OpenAPI document: every route, what it takes and
//! who may call it (the API conformance test drives the service from it).
use crate::search;

/// The key authority's OpenAPI 3.1 document (served at `/openapi.json`).
pub fn openapi_document() -> serde_json::Value {
    use asclepios_net::openapi::{
        answer, array, base64, document, object, operation, string, text_operation, In,
    };
    let strings = |max| array(string(), max);
    document(
        "asclepios key authority",
        env!("CARGO_PKG_VERSION"),
        serde_json::json!({
            "/v1/keys": {"post": operation(
                "This identity's FAME key for its current attributes, sealed to its certificate key.",
                &[], None, answer(),
            )},
            "/v1/policy/resolve": {"post": operation(
                "A policy with each attribute at its current version.",
                &[], Some(object(&[("policy", string())], &[])), answer(),
            )},
            "/v1/records/naming-key": {"post": operation(
                "A patient's record-naming key, for the patient's circle and labs (audited).",
                &[], Some(object(&[("patient", string())], &[])), answer(),
            )},
            "/v1/emergency": {"post": operation(
                "Break the glass: a short emergency grant for a patient (loudly logged, reviewed later).",
                &[], Some(object(&[("patient", string()), ("reason", string())], &[])), answer(),
            )},
            "/v1/emergency/reviews": {
                "get": operation("Emergency grants awaiting review (auditors).", &[], None, answer()),
                "post": operation(
                    "Review an emergency grant (auditors).",
                    &[],
                    Some(object(&[
                        ("patient", string()), ("grant_id", string()),
                        ("decision", string()), ("comment", string()),
                    ], &[])),
                    answer(),
                ),
            },
            "/v1/consents": {
                "get": operation("This patient's consents.", &[], None, answer()),
                "post": operation(
                    "As a patient: grant access to one's records.",
                    &[],
                    Some(object(
                        &[("grantee", string()), ("purpose", string()), ("resource_types", strings(64))],
                        &[("expires_at", serde_json::json!({"type": ["integer", "null"]}))],
                    )),
                    answer(),
                ),
            },
            "/v1/consents/{consent_id}/withdraw": {"post": operation(
                "Withdraw a consent: the grantee loses access to the records it covered.",
                &[("consent_id", In::Path, true)], None, answer(),
            )},
            "/v1/abe/public-key": {"get": operation("The FAME public key.", &[], None, answer())},
            "/v1/identities/{id}": {"get": operation(
                "An identity's signing key and status as a directory entry signed by the authority.",
                &[("id", In::Path, true)], None, answer(),
            )},
            "/v1/search/tokens": {"post": operation(
                "Search tokens for a query (groups of keywords: every group must match, any \
                 keyword of a group may), over the searcher's circle (search roles only).",
                &[],
                Some(object(&[(
                    "groups",
                    array(strings(search::MAX_TOKEN_KEYWORDS), search::MAX_TOKEN_KEYWORDS),
                )], &[])),
                answer(),
            )},
            "/v1/search/index": {"post": operation(
                "Index a record under keywords (its latest author or its patient).",
                &[],
                Some(object(&[
                    ("patient", string()), ("record_id", string()),
                    ("keywords", strings(search::MAX_RECORD_KEYWORDS)),
                ], &[])),
                answer(),
            )},
            "/v1/stats/slots": {"post": operation(
                "The slots of directory patients in a study for a data provider (one per patient; existing ones it fills, new ones for patients nobody fills), with their keys sealed to it.",
                &[], Some(object(&[("study", string()), ("patients", array(string(), 100_000))], &[])), answer(),
            )},
            "/v1/stats/keys": {"post": operation(
                "An aggregate key for a label over a cohort (researchers), if no combination of released keys would isolate fewer than 10 people and everyone's privacy budget allows it; answers the budget after the release.",
                &[],
                Some(object(&[("study", string()), ("label", string()), ("cohort", string())], &[])),
                answer(),
            )},
            "/v1/attestation/evidence": {"get": operation(
                "Fresh attestation evidence binding the current TLS key and a 32-byte hex nonce.",
                &[("nonce", In::Query, true)], None, answer(),
            )},
            "/v1/attestation/challenge": {"post": operation(
                "A single-use nonce for a component's attestation.",
                &[], None, answer(),
            )},
            "/v1/components/register": {"post": operation(
                "Register a component with evidence answering its challenge.",
                &[], Some(object(&[("evidence", base64())], &[])), answer(),
            )},
            "/v1/audit/entries": {"get": operation(
                "The authority's own audit log: encrypted entries from ?start= (at most 512) and the latest checkpoint; a patient gets only their own entries, each with its inclusion proof in the tree of ?size= leaves (default: the latest checkpoint) (patients and auditors).",
                &[("start", In::Query, false), ("size", In::Query, false)], None, answer(),
            )},
            "/v1/audit/consistency": {"get": operation(
                "RFC 9162 consistency proof between sizes ?old= and ?new= of the authority's audit log (any active identity).",
                &[("old", In::Query, true), ("new", In::Query, true)], None, answer(),
            )},
            "/v1/witness/add-checkpoint": {"post": text_operation(operation(
                "C2SP tlog-witness add-checkpoint: `old <size>`, consistency proof lines, a blank line, the signed checkpoint; answers the cosignature line (409 with the latest size as text/x.tlog.size).",
                &[], None, answer(),
            ), &[400, 403, 404, 409, 422, 500])},
            "/v1/directory/facts": {"get": operation(
                "The directory as the authority vouches for it, signed (the record service; unchanged since `known`: 204).",
                &[("known", In::Query, false)], None, answer(),
            )},
            "/v1/directory/identities": {
                "get": operation("The directory's members (administrators and auditors).", &[], None, answer()),
                "post": operation(
                    "Add an identity with its certificate key and attributes (administrators; audited).",
                    &[],
                    Some(object(&[
                        ("id", string()), ("kind", string()), ("display_name", string()),
                        ("public_key", string()), ("attributes", strings(256)),
                    ], &[])),
                    answer(),
                ),
            },
            "/v1/directory/identities/{id}/attributes": {"put": operation(
                "Set an identity's attributes to exactly these; the others are revoked (administrators; audited).",
                &[("id", In::Path, true)], Some(object(&[("attributes", strings(256))], &[])), answer(),
            )},
            "/v1/directory/identities/{id}/disable": {"post": operation(
                "Disable an identity and revoke its attributes (administrators; audited).",
                &[("id", In::Path, true)], None, answer(),
            )},
            "/v1/directory/identities/{id}/auditor-key": {"put": operation(
                "Set the HPKE key audit events are sealed to for an auditor (administrators; audited).",
                &[("id", In::Path, true)], Some(object(&[("public_key", string())], &[])), answer(),
            )},
        }),
    )
}
