//! The shipped profiles on the project's synthetic patients: Safe Harbor
//! leaves no identifier value anywhere in the output; the research profile
//! keeps each patient's date intervals, and its pseudonyms are stable under
//! one key and different under another; references stay consistent.

use std::collections::BTreeMap;

use asclepios_deid::{strings, Profile, RESEARCH_PSEUDONYMISED, SAFE_HARBOR};
use asclepios_fhir::synth::Generator;
use serde_json::{json, Value};

fn cohort() -> Vec<Value> {
    let mut g = Generator::new(21);
    (0..6)
        .flat_map(|_| g.patient(2).all().cloned().collect::<Vec<_>>())
        .collect()
}

/// Values of the Safe Harbor identifier elements in the input.
fn identifiers(resources: &[Value]) -> Vec<String> {
    let mut out = Vec::new();
    for r in resources {
        for name in r["name"].as_array().into_iter().flatten() {
            strings(name, &mut out);
        }
        for key in ["telecom", "identifier", "photo"] {
            for t in r[key].as_array().into_iter().flatten() {
                if let Some(v) = t["value"].as_str() {
                    out.push(v.to_string());
                }
            }
        }
        for a in r["address"].as_array().into_iter().flatten() {
            for key in ["line", "city", "district", "postalCode", "text"] {
                strings(&a[key], &mut out);
            }
        }
        let mut all = Vec::new();
        strings(r, &mut all);
        // Every full date (day precision) is an identifier under Safe Harbor.
        out.extend(
            all.into_iter()
                .filter(|s| {
                    s.len() >= 10
                        && s.as_bytes()[4] == b'-'
                        && s.as_bytes()[7] == b'-'
                        && s[..4].bytes().all(|b| b.is_ascii_digit())
                })
                .map(|s| s[..10].to_string()),
        );
    }
    out.retain(|s| s.len() >= 3 && s != "SE");
    out.sort();
    out.dedup();
    out
}

#[test]
fn safe_harbor_leaves_no_identifier() {
    let input = cohort();
    let profile = Profile::from_toml(SAFE_HARBOR).unwrap();
    let deid = profile.deidentifier(None).unwrap();
    let output: Vec<Value> = input
        .iter()
        .enumerate()
        .map(|(i, r)| deid.apply(r, &format!("resource {i}")).unwrap())
        .collect();
    // Same resource types, in order.
    for (a, b) in input.iter().zip(&output) {
        assert_eq!(a["resourceType"], b["resourceType"]);
        assert_ne!(a["id"], b["id"], "ids are replaced");
    }
    let secrets = identifiers(&input);
    assert!(secrets.len() > 30, "{secrets:?}");
    let mut texts = Vec::new();
    for r in &output {
        strings(r, &mut texts);
        texts.push(r.to_string());
    }
    for s in &secrets {
        assert!(
            !texts.iter().any(|t| t.contains(s.as_str())),
            "`{s}` survived"
        );
    }
    // Birth years kept (or collapsed), ZIP codes to three digits.
    let patient = output
        .iter()
        .find(|r| r["resourceType"] == "Patient")
        .unwrap();
    assert_eq!(patient["birthDate"].as_str().unwrap().len(), 4);
    assert_eq!(
        patient["address"][0]["postalCode"].as_str().unwrap().len(),
        3
    );
    // References follow the ids.
    let ids: Vec<String> = output
        .iter()
        .filter(|r| r["resourceType"] == "Patient")
        .map(|r| format!("Patient/{}", r["id"].as_str().unwrap()))
        .collect();
    for r in output.iter().filter(|r| r["resourceType"] == "Observation") {
        assert!(
            ids.contains(&r["subject"]["reference"].as_str().unwrap().to_string()),
            "{r}"
        );
    }
}

#[test]
fn ages_over_89_are_collapsed() {
    let profile = Profile::from_toml(SAFE_HARBOR).unwrap();
    let deid = profile.deidentifier(None).unwrap();
    let old = json!({"resourceType": "Patient", "id": "x", "birthDate": "1921-04-02"});
    let out = deid.apply(&old, "old").unwrap();
    let year: i64 = out["birthDate"].as_str().unwrap().parse().unwrap();
    // Collapsed to "90 or older": at least 1935 from 2026 on.
    assert!(year >= 1935, "{year}");
}

fn days(date: &str) -> i64 {
    let y: i64 = date[..4].parse().unwrap();
    let m: i64 = date[5..7].parse().unwrap();
    let d: i64 = date[8..10].parse().unwrap();
    // Days since year 0 (good enough for differences).
    let y2 = if m <= 2 { y - 1 } else { y };
    365 * y2 + y2 / 4 - y2 / 100 + y2 / 400 + (153 * ((m + 9) % 12) + 2) / 5 + d
}

#[test]
fn research_profile_keeps_intervals_and_stable_pseudonyms() {
    let input = cohort();
    let profile = Profile::from_toml(RESEARCH_PSEUDONYMISED).unwrap();
    assert!(profile.deidentifier(None).is_err(), "needs the project key");
    let key = [7u8; 32];
    let run = |key: &[u8; 32]| -> Vec<Value> {
        let deid = profile.deidentifier(Some(key)).unwrap();
        input.iter().map(|r| deid.apply(r, "r").unwrap()).collect()
    };
    let (a, b, other) = (run(&key), run(&key), run(&[8u8; 32]));
    assert_eq!(a, b, "the same key gives the same export");
    assert_ne!(
        a[0]["id"], other[0]["id"],
        "another key gives other pseudonyms"
    );
    // Per patient: every interval between two of its dates is unchanged.
    let mut before: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let mut after: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for (i, o) in input.iter().zip(&a) {
        let (Some(d0), Some(d1)) = (
            i["effectiveDateTime"].as_str(),
            o["effectiveDateTime"].as_str(),
        ) else {
            continue;
        };
        let p0 = i["subject"]["reference"].as_str().unwrap().to_string();
        before.entry(p0.clone()).or_default().push(days(d0));
        after.entry(p0).or_default().push(days(d1));
        assert_ne!(d0, d1, "dates are shifted");
        assert_eq!(&d0[10..], &d1[10..], "the time of day is kept");
    }
    assert!(before.len() >= 3);
    for (p, ds) in &before {
        let shifted = &after[p];
        for w in 0..ds.len() {
            assert_eq!(ds[w] - ds[0], shifted[w] - shifted[0], "{p}");
        }
    }
    // Identifiers are encrypted, names gone.
    let patient = a.iter().find(|r| r["resourceType"] == "Patient").unwrap();
    assert!(patient.get("name").is_none());
    assert!(patient["identifier"][0]["value"]
        .as_str()
        .unwrap()
        .starts_with("enc."));
}

#[test]
fn malformed_resources_name_where_they_are() {
    let profile = Profile::from_toml(SAFE_HARBOR).unwrap();
    let deid = profile.deidentifier(None).unwrap();
    for bad in [
        json!([]),
        json!({"id": "x"}),
        json!({"resourceType": "Patient", "id": "bad id"}),
    ] {
        let e = deid
            .apply(&bad, "bundle.json entry 3")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("bundle.json entry 3: "), "{e}");
    }
}
