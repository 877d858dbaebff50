//! k-anonymity over quasi-identifiers of the exported patients: the size of
//! the smallest group of patients that share all their quasi-identifier
//! values, and, with a `k`, the suppression of patients (and everything that
//! refers to them) in groups smaller than `k`.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

/// What a k-anonymity pass found and did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// The quasi-identifiers (paths below Patient, e.g. `address.postalCode`).
    pub quasi_identifiers: Vec<String>,
    /// Patients considered.
    pub patients: usize,
    /// Groups of patients sharing every quasi-identifier value.
    pub classes: usize,
    /// The smallest group before suppression (`None` without patients).
    pub smallest: Option<usize>,
    /// Patients suppressed (in groups under `k`).
    pub suppressed_patients: usize,
    /// Resources suppressed with them.
    pub suppressed_resources: usize,
}

/// The values at `path` (dot-separated, arrays flattened) as one string.
fn values_at(v: &Value, path: &str) -> String {
    let mut current = vec![v];
    for part in path.split('.') {
        let mut next = Vec::new();
        for c in current {
            match c.get(part) {
                Some(Value::Array(items)) => next.extend(items.iter()),
                Some(x) => next.push(x),
                None => {}
            }
        }
        current = next;
    }
    let mut parts: Vec<String> = current.iter().map(|x| x.to_string()).collect();
    parts.sort();
    parts.join("|")
}

fn patient_ref(r: &Value) -> Option<String> {
    if r["resourceType"] == "Patient" {
        return r["id"].as_str().map(|id| format!("Patient/{id}"));
    }
    ["subject", "patient", "beneficiary"]
        .iter()
        .find_map(|k| r.get(k)?.get("reference")?.as_str())
        .map(str::to_string)
}

/// Groups the patients of `resources` by their quasi-identifiers; with `k`,
/// removes the patients of groups under `k` and every resource about them.
pub fn apply(
    resources: Vec<Value>,
    quasi_identifiers: &[String],
    k: Option<usize>,
) -> (Vec<Value>, Report) {
    let mut classes: BTreeMap<Vec<String>, Vec<String>> = BTreeMap::new();
    for r in resources.iter().filter(|r| r["resourceType"] == "Patient") {
        let key: Vec<String> = quasi_identifiers.iter().map(|q| values_at(r, q)).collect();
        if let Some(id) = patient_ref(r) {
            classes.entry(key).or_default().push(id);
        }
    }
    let patients = classes.values().map(Vec::len).sum();
    let smallest = classes.values().map(Vec::len).min();
    let drop: BTreeSet<String> = match k {
        Some(k) => classes
            .values()
            .filter(|ids| ids.len() < k)
            .flatten()
            .cloned()
            .collect(),
        None => BTreeSet::new(),
    };
    let before = resources.len();
    let kept: Vec<Value> = resources
        .into_iter()
        .filter(|r| patient_ref(r).is_none_or(|p| !drop.contains(&p)))
        .collect();
    let report = Report {
        quasi_identifiers: quasi_identifiers.to_vec(),
        patients,
        classes: classes.len(),
        smallest,
        suppressed_patients: drop.len(),
        suppressed_resources: before - kept.len(),
    };
    (kept, report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn small_groups_are_suppressed_with_their_resources() {
        let mut rs = Vec::new();
        for (i, (year, gender)) in [
            ("1950", "female"),
            ("1950", "female"),
            ("1950", "female"),
            ("1961", "male"),
        ]
        .iter()
        .enumerate()
        {
            rs.push(json!({"resourceType": "Patient", "id": format!("p{i}"), "birthDate": year, "gender": gender}));
            rs.push(json!({"resourceType": "Observation", "id": format!("o{i}"), "subject": {"reference": format!("Patient/p{i}")}}));
        }
        let qis = vec!["birthDate".to_string(), "gender".to_string()];
        let (_, report) = apply(rs.clone(), &qis, None);
        assert_eq!(
            (report.patients, report.classes, report.smallest),
            (4, 2, Some(1))
        );
        let (kept, report) = apply(rs, &qis, Some(2));
        assert_eq!(
            (report.suppressed_patients, report.suppressed_resources),
            (1, 2)
        );
        assert_eq!(kept.len(), 6);
        assert!(kept.iter().all(|r| r["id"] != "p3" && r["id"] != "o3"));
    }
}
