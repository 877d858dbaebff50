//! A deterministic generator of synthetic FHIR R4 records: patients with
//! encounters, vital-sign and laboratory observations (LOINC), conditions
//! (SNOMED CT) and medication requests (RxNorm). Every person is invented; the
//! same seed always gives the same data, so demos, tests and benchmarks agree.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde_json::{json, Value};

const GIVEN: [&str; 16] = [
    "Ada", "Bram", "Chloe", "Dmitri", "Elif", "Femi", "Greta", "Hiro", "Ines", "Jonas", "Kavya",
    "Lars", "Mina", "Noah", "Olga", "Pedro",
];
const FAMILY: [&str; 12] = [
    "Andersson",
    "Brennan",
    "Costa",
    "Dubois",
    "Eriksen",
    "Fischer",
    "Garcia",
    "Haddad",
    "Ivanova",
    "Jansen",
    "Kowalski",
    "Larsen",
];
const CITIES: [(&str, &str); 4] = [
    ("Lund", "22100"),
    ("Uppsala", "75105"),
    ("Malmo", "21120"),
    ("Goteborg", "41101"),
];

/// A vital sign or lab test: LOINC code, display, unit, typical mean and spread.
struct Measure {
    code: &'static str,
    display: &'static str,
    unit: &'static str,
    mean: f64,
    spread: f64,
    decimals: i32,
}

const MEASURES: [Measure; 7] = [
    Measure {
        code: "8480-6",
        display: "Systolic blood pressure",
        unit: "mm[Hg]",
        mean: 128.0,
        spread: 16.0,
        decimals: 0,
    },
    Measure {
        code: "8462-4",
        display: "Diastolic blood pressure",
        unit: "mm[Hg]",
        mean: 81.0,
        spread: 10.0,
        decimals: 0,
    },
    Measure {
        code: "8867-4",
        display: "Heart rate",
        unit: "/min",
        mean: 74.0,
        spread: 11.0,
        decimals: 0,
    },
    Measure {
        code: "29463-7",
        display: "Body weight",
        unit: "kg",
        mean: 79.0,
        spread: 14.0,
        decimals: 1,
    },
    Measure {
        code: "4548-4",
        display: "Hemoglobin A1c/Hemoglobin.total in Blood",
        unit: "%",
        mean: 6.1,
        spread: 0.9,
        decimals: 1,
    },
    Measure {
        code: "2339-0",
        display: "Glucose [Mass/volume] in Blood",
        unit: "mg/dL",
        mean: 104.0,
        spread: 22.0,
        decimals: 0,
    },
    Measure {
        code: "2093-3",
        display: "Cholesterol [Mass/volume] in Serum or Plasma",
        unit: "mg/dL",
        mean: 192.0,
        spread: 35.0,
        decimals: 0,
    },
];

const CONDITIONS: [(&str, &str); 6] = [
    ("38341003", "Hypertensive disorder, systemic arterial"),
    ("44054006", "Diabetes mellitus type 2"),
    ("49436004", "Atrial fibrillation"),
    ("53741008", "Coronary arteriosclerosis"),
    ("195967001", "Asthma"),
    ("13645005", "Chronic obstructive lung disease"),
];

const MEDICATIONS: [(&str, &str); 6] = [
    ("314076", "lisinopril 10 MG Oral Tablet"),
    (
        "860975",
        "metformin hydrochloride 500 MG Extended Release Oral Tablet",
    ),
    ("197361", "amlodipine 5 MG Oral Tablet"),
    ("617312", "atorvastatin 40 MG Oral Tablet"),
    ("855332", "warfarin sodium 5 MG Oral Tablet"),
    ("745679", "albuterol 0.09 MG/ACTUAT Metered Dose Inhaler"),
];

/// The organisation and practitioners the generated records refer to.
pub const ORGANIZATION: &str = "Organization/st-mary";
/// Practitioners: (reference, department).
pub const PRACTITIONERS: [(&str, &str); 3] = [
    ("Practitioner/dr-heart", "cardiology"),
    ("Practitioner/dr-lung", "pulmonology"),
    ("Practitioner/dr-gp", "general-practice"),
];

/// One synthetic patient and everything recorded about them.
#[derive(Clone, Debug)]
pub struct PatientBundle {
    /// The Patient resource.
    pub patient: Value,
    /// Encounters, observations, conditions and medication requests.
    pub resources: Vec<Value>,
}

impl PatientBundle {
    /// The patient's id.
    pub fn patient_id(&self) -> &str {
        self.patient["id"].as_str().unwrap_or_default()
    }

    /// The patient and all their resources.
    pub fn all(&self) -> impl Iterator<Item = &Value> {
        std::iter::once(&self.patient).chain(&self.resources)
    }
}

/// Deterministic generator.
#[derive(Debug)]
pub struct Generator {
    rng: ChaCha20Rng,
    next_patient: usize,
}

impl Generator {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Generator {
            rng: ChaCha20Rng::seed_from_u64(seed),
            next_patient: 0,
        }
    }

    fn normal(&mut self, mean: f64, sd: f64) -> f64 {
        // Box-Muller; plenty for synthetic vitals.
        let u1: f64 = self.rng.gen_range(f64::EPSILON..1.0);
        let u2: f64 = self.rng.gen();
        mean + sd * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    fn date(&mut self, from_year: i32, to_year: i32) -> (i32, u32, u32) {
        (
            self.rng.gen_range(from_year..=to_year),
            self.rng.gen_range(1..=12),
            self.rng.gen_range(1..=28),
        )
    }

    /// A patient with `encounters` visits, each with observations and, now and
    /// then, a condition and a prescription.
    pub fn patient(&mut self, encounters: usize) -> PatientBundle {
        let n = self.next_patient;
        self.next_patient += 1;
        let pid = format!("pat-{n:05}");
        let given = GIVEN[self.rng.gen_range(0..GIVEN.len())];
        let family = FAMILY[self.rng.gen_range(0..FAMILY.len())];
        let (city, postal) = CITIES[self.rng.gen_range(0..CITIES.len())];
        let gender = if self.rng.gen_bool(0.5) {
            "female"
        } else {
            "male"
        };
        let (by, bm, bd) = self.date(1930, 2015);
        let patient = json!({
            "resourceType": "Patient",
            "id": pid,
            "identifier": [{"system": "urn:oid:1.2.752.129.2.1.3.1", "value": format!("{by}{bm:02}{bd:02}-{:04}", 1000 + n % 9000)}],
            "name": [{"use": "official", "family": family, "given": [given]}],
            "telecom": [{"system": "phone", "value": format!("+46-70-{:07}", self.rng.gen_range(0..10_000_000))}],
            "gender": gender,
            "birthDate": format!("{by}-{bm:02}-{bd:02}"),
            "address": [{"line": [format!("{} Storgatan", self.rng.gen_range(1..120))], "city": city, "postalCode": postal, "country": "SE"}],
            "managingOrganization": {"reference": ORGANIZATION},
        });
        let subject = json!({"reference": format!("Patient/{pid}")});
        let mut resources = Vec::new();
        for e in 0..encounters {
            let (y, m, d) = self.date(2019, 2025);
            let (practitioner, _) = PRACTITIONERS[self.rng.gen_range(0..PRACTITIONERS.len())];
            let enc_id = format!("enc-{n:05}-{e}");
            let when = format!(
                "{y}-{m:02}-{d:02}T{:02}:{:02}:00Z",
                self.rng.gen_range(8..17),
                self.rng.gen_range(0..60)
            );
            resources.push(json!({
                "resourceType": "Encounter",
                "id": enc_id,
                "status": "finished",
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB", "display": "ambulatory"},
                "type": [{"coding": [{"system": "http://snomed.info/sct", "code": "185349003", "display": "Encounter for check up"}]}],
                "subject": subject,
                "participant": [{"individual": {"reference": practitioner}}],
                "period": {"start": when, "end": when},
                "serviceProvider": {"reference": ORGANIZATION},
            }));
            for (i, m) in MEASURES.iter().enumerate() {
                if i > 2 && self.rng.gen_bool(0.5) {
                    continue;
                }
                let scale = 10f64.powi(m.decimals);
                let value = (self.normal(m.mean, m.spread) * scale).round() / scale;
                let category = if i < 4 { "vital-signs" } else { "laboratory" };
                resources.push(json!({
                    "resourceType": "Observation",
                    "id": format!("obs-{n:05}-{e}-{i}"),
                    "status": "final",
                    "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": category}]}],
                    "code": {"coding": [{"system": "http://loinc.org", "code": m.code, "display": m.display}]},
                    "subject": subject,
                    "encounter": {"reference": format!("Encounter/{enc_id}")},
                    "performer": [{"reference": practitioner}],
                    "effectiveDateTime": when,
                    "valueQuantity": {"value": value, "unit": m.unit, "system": "http://unitsofmeasure.org", "code": m.unit},
                }));
            }
            if self.rng.gen_bool(0.3) {
                let (code, display) = CONDITIONS[self.rng.gen_range(0..CONDITIONS.len())];
                resources.push(json!({
                    "resourceType": "Condition",
                    "id": format!("cond-{n:05}-{e}"),
                    "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
                    "code": {"coding": [{"system": "http://snomed.info/sct", "code": code, "display": display}]},
                    "subject": subject,
                    "encounter": {"reference": format!("Encounter/{enc_id}")},
                    "onsetDateTime": when,
                    "recorder": {"reference": practitioner},
                }));
                let (rx, rx_display) = MEDICATIONS[self.rng.gen_range(0..MEDICATIONS.len())];
                resources.push(json!({
                    "resourceType": "MedicationRequest",
                    "id": format!("med-{n:05}-{e}"),
                    "status": "active",
                    "intent": "order",
                    "medicationCodeableConcept": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": rx, "display": rx_display}]},
                    "subject": subject,
                    "encounter": {"reference": format!("Encounter/{enc_id}")},
                    "authoredOn": when,
                    "requester": {"reference": practitioner},
                    "dosageInstruction": [{"text": "1 tablet daily"}],
                }));
            }
        }
        PatientBundle { patient, resources }
    }

    /// A systolic blood-pressure Observation for `patient_id`: the small
    /// resource the demo and benchmarks seal.
    pub fn blood_pressure(&mut self, patient_id: &str) -> Value {
        let value = self.normal(128.0, 16.0).round();
        let (y, m, d) = self.date(2023, 2025);
        json!({
            "resourceType": "Observation",
            "id": format!("bp-{patient_id}-{y}{m:02}{d:02}"),
            "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6", "display": "Systolic blood pressure"}]},
            "subject": {"reference": format!("Patient/{patient_id}")},
            "performer": [{"reference": PRACTITIONERS[0].0}],
            "effectiveDateTime": format!("{y}-{m:02}-{d:02}T09:30:00Z"),
            "valueQuantity": {"value": value, "unit": "mm[Hg]", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"},
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ResourceView;

    #[test]
    fn deterministic_and_valid() {
        let a = Generator::new(1).patient(3);
        let b = Generator::new(1).patient(3);
        assert_eq!(a.patient, b.patient);
        assert_eq!(a.resources, b.resources);
        let mut types = std::collections::BTreeSet::new();
        for r in a.all() {
            let v = ResourceView::from_value(r.clone()).unwrap();
            types.insert(v.resource_type().to_string());
            assert_eq!(
                v.subject().as_deref(),
                Some(&*format!("Patient/{}", a.patient_id()))
            );
        }
        assert!(types.contains("Encounter") && types.contains("Observation"));
    }

    #[test]
    fn many_patients_cover_every_resource_type() {
        let mut g = Generator::new(7);
        let mut types = std::collections::BTreeSet::new();
        for _ in 0..20 {
            for r in g.patient(4).all() {
                types.insert(r["resourceType"].as_str().unwrap().to_string());
            }
        }
        let expected = [
            "Condition",
            "Encounter",
            "MedicationRequest",
            "Observation",
            "Patient",
        ];
        assert_eq!(types.into_iter().collect::<Vec<_>>(), expected);
    }
}
