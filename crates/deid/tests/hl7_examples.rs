//! Both profiles on the HL7 FHIR R4 example resources (tests/data/hl7-r4,
//! CC0): the output is JSON of the same resource type, and under Safe Harbor
//! no value of an identifier element of the input survives anywhere in the
//! output (narratives and extensions included).

use asclepios_deid::{strings, Profile, RESEARCH_PSEUDONYMISED, SAFE_HARBOR};
use serde_json::Value;

const EXAMPLES: &[&str] = &[
    "Patient-example",
    "Practitioner-example",
    "Observation-example",
    "Condition-example",
    "Encounter-example",
    "MedicationRequest-medrx0301",
    "AuditEvent-example",
    "Consent-consent-example-basic",
];

fn example(name: &str) -> Value {
    let path = format!(
        "{}/tests/data/hl7-r4/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Values of identifier elements anywhere in `v`.
fn identifier_values(v: &Value, key: &str, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            let identifying = matches!(
                key,
                "name" | "telecom" | "address" | "identifier" | "photo" | "network" | "altId"
            ) || (key == "text" && o.contains_key("div"));
            if identifying && key != "name"
                || (key == "name" && (o.contains_key("family") || o.contains_key("given")))
            {
                strings(v, out);
            }
            // The display of a reference to a person is that person's name.
            if let (Some(Value::String(d)), Some(Value::String(r))) =
                (o.get("display"), o.get("reference"))
            {
                if ["Patient/", "Practitioner/", "RelatedPerson/", "Person/"]
                    .iter()
                    .any(|t| r.starts_with(t))
                {
                    out.push(d.clone());
                }
            }
            for (k, child) in o {
                identifier_values(child, k, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|i| identifier_values(i, key, out)),
        Value::String(s) => {
            let b = s.as_bytes();
            let full_date = b.len() >= 10
                && b[4] == b'-'
                && b[7] == b'-'
                && b[..4].iter().all(u8::is_ascii_digit);
            if full_date {
                out.push(s[..10].to_string());
            }
            if matches!(key, "birthDate" | "altId") {
                out.push(s.clone());
            }
        }
        _ => {}
    }
}

/// Whether `secret` occurs in `output` other than by chance inside a
/// generated code: Safe Harbor replaces ids with random hex codes (a key per
/// export), and a short all-digit secret such as `2014` turns up inside one
/// of them now and then.
fn leaks(output: &str, secret: &str) -> bool {
    let b = output.as_bytes();
    output.match_indices(secret).any(|(i, _)| {
        let mut start = i;
        while start > 0 && b[start - 1].is_ascii_hexdigit() {
            start -= 1;
        }
        let mut end = i + secret.len();
        while end < b.len() && b[end].is_ascii_hexdigit() {
            end += 1;
        }
        let inside_code = secret.bytes().all(|c| c.is_ascii_hexdigit()) && end - start >= 16;
        !inside_code
    })
}

#[test]
fn the_leak_check_ignores_chance_matches_inside_codes_only() {
    assert!(!leaks("id-3f2014aa9c0b11de77", "2014"));
    assert!(leaks("born 2014", "2014"));
    assert!(leaks("2014", "2014"));
    assert!(leaks("ab2014", "2014"));
}

#[test]
fn safe_harbor_on_hl7_examples() {
    let profile = Profile::from_toml(SAFE_HARBOR).unwrap();
    let deid = profile.deidentifier(None).unwrap();
    let mut checked = 0;
    for name in EXAMPLES {
        let input = example(name);
        let output = deid.apply(&input, name).unwrap();
        assert_eq!(input["resourceType"], output["resourceType"], "{name}");
        let text = serde_json::to_string(&output).unwrap();
        let _: Value = serde_json::from_str(&text).unwrap();
        let mut secrets = Vec::new();
        identifier_values(&input, "", &mut secrets);
        // Codes and states that also occur as identifiers' parts (e.g. a
        // telecom's "use": "work") are not identifying on their own.
        secrets.retain(|s| {
            s.len() >= 4
                && !matches!(
                    s.as_str(),
                    "work"
                        | "home"
                        | "phone"
                        | "email"
                        | "official"
                        | "usual"
                        | "generated"
                        | "both"
                        | "postal"
                        | "true"
                        | "false"
                        | "mobile"
                        | "temp"
                        | "old"
                )
        });
        let mut out_strings = Vec::new();
        strings(&output, &mut out_strings);
        for s in &secrets {
            assert!(
                !out_strings.iter().any(|o| leaks(o, s)),
                "{name}: `{s}` survived Safe Harbor"
            );
            checked += 1;
        }
    }
    assert!(checked > 40, "only {checked} identifier values checked");
}

#[test]
fn research_profile_on_hl7_examples() {
    let profile = Profile::from_toml(RESEARCH_PSEUDONYMISED).unwrap();
    let deid = profile.deidentifier(Some(&[9u8; 32])).unwrap();
    for name in EXAMPLES {
        let input = example(name);
        let output = deid.apply(&input, name).unwrap();
        assert_eq!(input["resourceType"], output["resourceType"], "{name}");
        assert_ne!(input["id"], output["id"], "{name}: the id is pseudonymised");
        let mut out_strings = Vec::new();
        strings(&output, &mut out_strings);
        for family in ["Chalmers", "Careful"] {
            assert!(
                !out_strings.iter().any(|s| s.contains(family)),
                "{name}: {family}"
            );
        }
    }
}
