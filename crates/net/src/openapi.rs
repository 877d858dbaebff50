//! Small builders for the services' OpenAPI 3.1 documents (served at
//! `/openapi.json`, checked by `scripts/api-conformance.sh` with
//! schemathesis). Every operation documents the statuses the shared layers
//! can answer (bad request, bad signature, forbidden, unknown, too large,
//! audit log unavailable) and the JSON error body they carry, so a client
//! generated from the document handles each.

use serde_json::{json, Map, Value};

/// A string.
pub fn string() -> Value {
    json!({"type": "string"})
}

/// Base64 bytes (standard alphabet, padded).
pub fn base64() -> Value {
    json!({"type": "string", "contentEncoding": "base64"})
}

/// A non-negative integer.
pub fn uint() -> Value {
    json!({"type": "integer", "minimum": 0})
}

/// An array of `items`, with at most `max` of them.
pub fn array(items: Value, max: usize) -> Value {
    json!({"type": "array", "items": items, "maxItems": max})
}

/// A closed object (`deny_unknown_fields` on the server): `required` fields
/// and optional ones.
pub fn object(required: &[(&str, Value)], optional: &[(&str, Value)]) -> Value {
    let mut properties = Map::new();
    for (name, schema) in required.iter().chain(optional) {
        properties.insert((*name).to_string(), schema.clone());
    }
    json!({
        "type": "object",
        "properties": properties,
        "required": required.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        "additionalProperties": false,
    })
}

/// The error body every failure carries.
fn error_body() -> Value {
    json!({"application/json": {"schema": object(&[("error", string())], &[])}})
}

/// A route that speaks plain text (a C2SP protocol) rather than JSON: `op`
/// with its 200 and its `statuses` answering `text/plain` (or
/// `text/x.tlog.size` for 409) besides the JSON errors of the shared
/// layers.
pub fn text_operation(mut op: Value, statuses: &[u16]) -> Value {
    let text = json!({"schema": {"type": "string"}});
    op["responses"]["200"]["content"] = json!({"text/plain": text.clone()});
    op["requestBody"] = json!({"required": true, "content": {"text/plain": text.clone()}});
    for status in statuses {
        let key = status.to_string();
        if op["responses"].get(&key).is_none() {
            op["responses"][&key] = json!({"description": "refused", "content": error_body()});
        }
        let kind = if *status == 409 {
            "text/x.tlog.size"
        } else {
            "text/plain"
        };
        op["responses"][&key]["content"][kind] = text.clone();
    }
    op
}

/// The statuses every signed route may answer besides its own.
const SHARED: &[(u16, &str)] = &[
    (400, "malformed request: the error says what is wrong"),
    (401, "missing, invalid, stale or replayed request signature"),
    (403, "the identity is disabled or may not do this"),
    (404, "unknown resource"),
    (405, "method not allowed"),
    (409, "conflicts with what is stored"),
    (413, "body too large"),
    (
        429,
        "too many requests from this identity, or too much expensive work waiting: retry after the Retry-After header's seconds",
    ),
    (503, "the audit log cannot be written: retry later"),
];

/// Where a parameter is.
#[derive(Clone, Copy, Debug)]
pub enum In {
    /// A path segment.
    Path,
    /// A query parameter.
    Query,
}

/// One operation: its summary, parameters `(name, where, required)`, its
/// JSON request body (if any) and the schema of its 200 answer.
pub fn operation(
    summary: &str,
    parameters: &[(&str, In, bool)],
    body: Option<Value>,
    ok: Value,
) -> Value {
    let mut responses = Map::new();
    responses.insert(
        "200".into(),
        json!({"description": "done", "content": {"application/json": {"schema": ok}}}),
    );
    for (status, why) in SHARED {
        let mut response = json!({"description": why, "content": error_body()});
        if *status == 429 {
            response["headers"] = json!({"Retry-After": {
                "description": "seconds to wait before sending again",
                "schema": {"type": "integer", "minimum": 1},
            }});
        }
        responses.insert(status.to_string(), response);
    }
    let mut op = json!({
        "summary": summary,
        "parameters": parameters.iter().map(|(name, place, required)| json!({
            "name": name,
            "in": match place { In::Path => "path", In::Query => "query" },
            "required": *required || matches!(place, In::Path),
            "schema": string(),
        })).collect::<Vec<_>>(),
        "responses": responses,
    });
    if let Some(schema) = body {
        op["requestBody"] = json!({
            "required": true,
            "content": {"application/json": {"schema": schema}},
        });
    }
    op
}

/// A 200 answer: a JSON object or array (each answer's fields are documented
/// on its type in the service's crate).
pub fn answer() -> Value {
    json!({"type": ["object", "array"]})
}

/// The operators' routes every service serves (unsigned; see
/// `asclepios_service::operations`).
fn operations_paths() -> Map<String, Value> {
    let plain = |summary: &str, content: Value| {
        json!({"get": {
            "summary": summary,
            "security": [{"mtls": []}],
            "responses": {
                "200": {"description": "answered", "content": content},
                "429": {"description": "too many requests from this identity", "content": error_body()},
                "503": {"description": "not ready: the error says why", "content": error_body()},
            },
        }})
    };
    let status = json!({"application/json": {"schema": object(&[("status", string())], &[])}});
    let mut paths = Map::new();
    paths.insert(
        "/healthz".into(),
        plain("Liveness: 200 while the process answers.", status.clone()),
    );
    paths.insert(
        "/readyz".into(),
        plain(
            "Readiness: 200 when the service can do its work, else 503 with the reason.",
            status,
        ),
    );
    let mut metrics = plain(
        "Prometheus text exposition (version 0.0.4): requests, latencies, 429s, refused connections, audit log size and the service's gauges; for the identities the configuration lists under metrics_readers.",
        json!({"text/plain": {"schema": {"type": "string"}}}),
    );
    metrics["get"]["responses"]["403"] = json!({
        "description": "not among the configuration's metrics_readers",
        "content": error_body(),
    });
    paths.insert("/metrics".into(), metrics);
    paths
}

/// The whole document: `paths` maps each path to its methods; the
/// operators' routes are added.
pub fn document(title: &str, version: &str, mut paths: Value) -> Value {
    if let Some(map) = paths.as_object_mut() {
        map.extend(operations_paths());
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "components": {"securitySchemes": {"mtls": {"type": "mutualTLS"}}},
        "security": [{"mtls": []}],
        "paths": paths,
    })
}
