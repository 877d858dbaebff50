//! The record service's OpenAPI document (served at `/openapi.json`).

use crate::MAX_LOOKUP;
use crate::MAX_STATS_VALUES;
use axum::Json;

pub(crate) async fn openapi() -> Json<serde_json::Value> {
    Json(openapi_document())
}

/// The service's OpenAPI 3.1 document (served at `/openapi.json`).
pub fn openapi_document() -> serde_json::Value {
    use asclepios_net::openapi::{
        answer, array, base64, document, object, operation, string, uint, In,
    };
    let record = [("patient", In::Path, true), ("record_id", In::Path, true)];
    let wrapper_key = object(
        &[
            ("patient", string()),
            ("record_id", string()),
            ("version", uint()),
            ("slot", string()),
        ],
        &[],
    );
    document(
        "asclepios record service",
        env!("CARGO_PKG_VERSION"),
        serde_json::json!({
            "/v1/records": {"post": operation(
                "Store a sealed record version (signed request), with receipt.",
                &[],
                Some(object(&[
                    ("patient", string()), ("record_id", string()), ("version", uint()),
                    ("body", base64()), ("wrapper", base64()), ("author_signature", base64()),
                ], &[])),
                answer(),
            )},
            "/v1/records/{patient}/{record_id}": {
                "get": operation(
                    "A sealed record version (latest, or ?version=N), with receipt.",
                    &[record[0], record[1], ("version", In::Query, false)],
                    None,
                    answer(),
                ),
                "delete": operation(
                    "Erase a record (every version's body and key wrapper, purged from the store's files): the patient only.",
                    &record,
                    None,
                    answer(),
                ),
            },
            "/v1/records/{patient}/{record_id}/versions": {"get": operation(
                "The versions of a record (its history), with receipt.",
                &record,
                None,
                answer(),
            )},
            "/v1/patients/{patient}/records": {
                "get": operation(
                    "A patient's record ids and latest versions.",
                    &[("patient", In::Path, true)],
                    None,
                    answer(),
                ),
                "delete": operation(
                    "Erase every record of the patient (every version's body and key wrapper, purged from the store's files): the patient only.",
                    &[("patient", In::Path, true)],
                    None,
                    answer(),
                ),
            },
            "/v1/search": {"post": operation(
                "Sealed index values at the given addresses (from search tokens the key authority issued), with receipt.",
                &[],
                Some(object(&[("addrs", array(base64(), MAX_LOOKUP))], &[])),
                answer(),
            )},
            "/v1/exports": {"post": operation(
                "Log a de-identified export (profile, counts, recipient), with receipt.",
                &[],
                Some(object(&[
                    ("profile", string()), ("resources", uint()),
                    ("records_read", uint()), ("recipient", string()),
                ], &[])),
                answer(),
            )},
            "/v1/stats/values": {
                "post": operation(
                    "Publish encrypted statistics values (slot, ristretto255 point), with receipt.",
                    &[],
                    Some(object(&[
                        ("study", string()), ("label", string()),
                        ("values", array(serde_json::json!({
                            "type": "array", "prefixItems": [uint(), base64()],
                            "minItems": 2, "maxItems": 2,
                        }), MAX_STATS_VALUES)),
                    ], &[])),
                    answer(),
                ),
                "get": operation(
                    "The published values of a label (or, without one, the study's labels), with receipt.",
                    &[("study", In::Query, true), ("label", In::Query, false)],
                    None,
                    answer(),
                ),
            },
            "/v1/audit/entries": {"get": operation(
                "Encrypted audit entries from ?start= (at most 512) and the latest checkpoint; a patient gets only their own entries, each with its inclusion proof in the tree of ?size= leaves (default: the latest checkpoint).",
                &[("start", In::Query, false), ("size", In::Query, false)],
                None,
                answer(),
            )},
            "/v1/audit/consistency": {"get": operation(
                "RFC 9162 consistency proof between sizes ?old= and ?new= of the audit log (any active identity).",
                &[("old", In::Query, true), ("new", In::Query, true)],
                None,
                answer(),
            )},
            "/v1/attestation/verdicts": {"post": operation(
                "Log a client's verdict on the key authority's attestation (audited; a refusal is logged as denied), with receipt.",
                &[],
                Some(object(&[("subject", string()), ("trust", string()), ("summary", string())], &[])),
                answer(),
            )},
            "/v1/internal/wrappers/scan": {"post": operation(
                "Key wrappers after a given one (the key authority's service identity only).",
                &[],
                Some(object(&[("limit", uint())], &[("after", wrapper_key.clone())])),
                answer(),
            )},
            "/v1/internal/wrappers/replace": {"post": operation(
                "Replace a key wrapper still at an epoch with its re-wrap (the key authority only).",
                &[],
                Some(object(&[
                    ("key", wrapper_key.clone()), ("expected_epoch", uint()),
                    ("wrapper", base64()), ("new_epoch", uint()),
                ], &[])),
                answer(),
            )},
            "/v1/internal/records/version": {"post": operation(
                "A stored record version as held, the latest without `version` (the key authority only).",
                &[],
                Some(object(&[("patient", string()), ("record_id", string())], &[("version", uint())])),
                answer(),
            )},
            "/v1/internal/index/get": {"post": operation(
                "Index values at addresses (the key authority only).",
                &[],
                Some(object(&[("addrs", array(base64(), 65_536))], &[])),
                answer(),
            )},
            "/v1/internal/index/write": {"post": operation(
                "Write index entries over what addresses held and delete addresses (the key authority only).",
                &[],
                Some(object(&[
                    ("put", array(array(base64(), 2), 65_536)), ("delete", array(base64(), 65_536)),
                ], &[])),
                answer(),
            )},
            "/v1/internal/facts/changed": {"post": operation(
                "The directory moved: fetch the key authority's facts now; answers the change held (the key authority only).",
                &[],
                Some(object(&[("change", uint())], &[])),
                answer(),
            )},
        }),
    )
}
