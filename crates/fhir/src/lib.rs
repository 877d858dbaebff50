//! FHIR R4 resources as JSON values, with small typed views of the elements the
//! platform needs, and a deterministic synthetic data generator.
//!
//! Full FHIR model crates take many minutes to build; the platform only needs a
//! few elements (resource type, id, subject, codings, dates), so it reads those
//! through [`ResourceView`], which checks the structure they rely on.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod keywords;
pub mod synth;

use serde_json::Value;

/// Why a JSON document is not a usable FHIR resource.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
pub enum FhirError {
    /// Not valid JSON.
    #[error("not valid JSON: {0}")]
    Json(String),
    /// Valid JSON that breaks a structural rule we rely on.
    #[error("invalid FHIR resource: {0}")]
    Structure(String),
}

/// A parsed resource with checked access to the elements the platform uses.
#[derive(Clone, PartialEq, Debug)]
pub struct ResourceView {
    json: Value,
}

/// A `system|code` pair from a `Coding`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Coding {
    /// The code system URI, e.g. `http://loinc.org`.
    pub system: String,
    /// The code, e.g. `8480-6`.
    pub code: String,
    /// The human-readable display, when present.
    pub display: Option<String>,
}

const ID_MAX: usize = 64;

impl ResourceView {
    /// Parses JSON bytes and checks the structure: an object with a
    /// `resourceType` of letters, an optional `id` matching FHIR's id rule
    /// (`[A-Za-z0-9\-\.]{1,64}`), and well-formed codings where present.
    pub fn parse(bytes: &[u8]) -> Result<Self, FhirError> {
        let json: Value =
            serde_json::from_slice(bytes).map_err(|e| FhirError::Json(e.to_string()))?;
        Self::from_value(json)
    }

    /// Checks an already parsed JSON value.
    pub fn from_value(json: Value) -> Result<Self, FhirError> {
        Self::check(&json)?;
        Ok(ResourceView { json })
    }

    /// The checks of [`ResourceView::from_value`], on a borrowed value.
    pub fn check(json: &Value) -> Result<(), FhirError> {
        let obj = json
            .as_object()
            .ok_or_else(|| FhirError::Structure("a resource must be a JSON object".into()))?;
        let rt = obj
            .get("resourceType")
            .and_then(Value::as_str)
            .ok_or_else(|| FhirError::Structure("`resourceType` (a string) is required".into()))?;
        if rt.is_empty() || !rt.chars().all(|c| c.is_ascii_alphabetic()) {
            return Err(FhirError::Structure(format!(
                "`resourceType` must be letters only, got {rt:?}"
            )));
        }
        if let Some(id) = obj.get("id") {
            let id = id
                .as_str()
                .ok_or_else(|| FhirError::Structure("`id` must be a string".into()))?;
            if !is_valid_id(id) {
                return Err(FhirError::Structure(format!(
                    "`id` must match [A-Za-z0-9-.]{{1,{ID_MAX}}}, got {id:?}"
                )));
            }
        }
        visit_codings(json, 0, &mut |_, _, _| {})
    }

    /// The JSON value.
    pub fn json(&self) -> &Value {
        &self.json
    }

    /// `resourceType`.
    pub fn resource_type(&self) -> &str {
        self.json["resourceType"].as_str().unwrap_or_default()
    }

    /// `id`, if present.
    pub fn id(&self) -> Option<&str> {
        self.json.get("id").and_then(Value::as_str)
    }

    /// The patient this resource is about: `subject.reference` or
    /// `patient.reference` (e.g. `Patient/123`), or the resource itself for a
    /// Patient.
    pub fn subject(&self) -> Option<String> {
        if self.resource_type() == "Patient" {
            return self.id().map(|id| format!("Patient/{id}"));
        }
        ["subject", "patient", "beneficiary"]
            .iter()
            .find_map(|k| self.json.get(k)?.get("reference")?.as_str())
            .map(str::to_string)
    }

    /// Every `Coding` anywhere in the resource (objects with `system` and `code`).
    pub fn codings(&self) -> Vec<Coding> {
        self.try_codings().unwrap_or_default()
    }

    fn try_codings(&self) -> Result<Vec<Coding>, FhirError> {
        let mut out = Vec::new();
        collect_codings(&self.json, &mut out, 0)?;
        Ok(out)
    }

    /// Values of the common date elements (`effectiveDateTime`, `birthDate`,
    /// `period.start`, `onsetDateTime`, `authoredOn`, `recordedDate`), as written.
    pub fn dates(&self) -> Vec<&str> {
        let j = &self.json;
        [
            j.get("effectiveDateTime"),
            j.get("birthDate"),
            j.get("onsetDateTime"),
            j.get("authoredOn"),
            j.get("recordedDate"),
            j.get("period").and_then(|p| p.get("start")),
        ]
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
    }
}

/// FHIR's `id` rule.
pub fn is_valid_id(id: &str) -> bool {
    (1..=ID_MAX).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
}

fn collect_codings(v: &Value, out: &mut Vec<Coding>, depth: usize) -> Result<(), FhirError> {
    visit_codings(v, depth, &mut |system, code, display| {
        out.push(Coding {
            system: system.into(),
            code: code.into(),
            display: display.map(Into::into),
        })
    })
}

/// Checks every `coding` below `v` and calls `f` with each (system, code,
/// display); no allocation when `f` makes none.
fn visit_codings(
    v: &Value,
    depth: usize,
    f: &mut impl FnMut(&str, &str, Option<&str>),
) -> Result<(), FhirError> {
    if depth > 64 {
        return Err(FhirError::Structure("nesting deeper than 64 levels".into()));
    }
    match v {
        Value::Object(map) => {
            if let Some(codings) = map.get("coding") {
                let list = codings
                    .as_array()
                    .ok_or_else(|| FhirError::Structure("`coding` must be an array".into()))?;
                for c in list {
                    let system = c.get("system").and_then(Value::as_str);
                    let code = c.get("code").and_then(Value::as_str);
                    match (system, code) {
                        (Some(system), Some(code)) => {
                            f(system, code, c.get("display").and_then(Value::as_str))
                        }
                        _ if c.is_object() => {}
                        _ => {
                            return Err(FhirError::Structure(
                                "each `coding` entry must be an object".into(),
                            ))
                        }
                    }
                }
            }
            for (k, child) in map {
                if k != "coding" {
                    visit_codings(child, depth + 1, f)?;
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                visit_codings(item, depth + 1, f)?;
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_an_observation() {
        let v = ResourceView::parse(
            br#"{"resourceType":"Observation","id":"o1","subject":{"reference":"Patient/p1"},
                "code":{"coding":[{"system":"http://loinc.org","code":"8480-6","display":"Systolic blood pressure"}]},
                "effectiveDateTime":"2024-03-01T10:00:00Z"}"#,
        )
        .unwrap();
        assert_eq!(v.resource_type(), "Observation");
        assert_eq!(v.subject().as_deref(), Some("Patient/p1"));
        assert_eq!(v.codings()[0].code, "8480-6");
        assert_eq!(v.dates(), vec!["2024-03-01T10:00:00Z"]);
    }

    #[test]
    fn refuses_bad_structure() {
        for bad in [
            &b"[]"[..],
            b"{}",
            b"{\"resourceType\":\"Obs ervation\"}",
            b"{\"resourceType\":\"Patient\",\"id\":\"has space\"}",
            b"{\"resourceType\":\"Patient\",\"code\":{\"coding\":{}}}",
            b"not json",
        ] {
            assert!(
                ResourceView::parse(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
