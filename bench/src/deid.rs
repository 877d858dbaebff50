//! De-identification throughput: the shipped profiles over a synthetic
//! bundle of 100 000 resources (parse, de-identify, serialise), next to
//! parsing and serialising the same bundle in the same run.

use asclepios_deid::Profile;
use asclepios_fhir::synth::Generator;
use serde_json::{json, Value};

use crate::timing::{self, Budget};

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Runs the suite.
pub fn run(quick: bool, budget: Budget) -> anyhow::Result<Vec<Value>> {
    let target = if quick { 5_000 } else { 100_000 };
    let mut generator = Generator::new(17);
    let mut lines: Vec<String> = Vec::with_capacity(target + 64);
    while lines.len() < target {
        for r in generator.patient(5).all() {
            lines.push(serde_json::to_string(r)?);
        }
    }
    lines.truncate(target);
    eprintln!(
        "deid: {} resources, {} MB of JSON",
        lines.len(),
        lines.iter().map(String::len).sum::<usize>() >> 20
    );
    let key = [3u8; 32];
    let mut rows = Vec::new();
    for name in ["safe-harbor", "research-pseudonymised"] {
        let profile = Profile::from_toml(asclepios_deid::shipped(name).expect("shipped"))?;
        let deid = profile.deidentifier(Some(&key))?;
        let mut failure = None;
        let mut ours = || {
            let mut bytes = 0usize;
            for (i, l) in lines.iter().enumerate() {
                let mut v: Value = serde_json::from_str(l).expect("generated JSON");
                match deid.apply_in_place(&mut v, "bench") {
                    Ok(()) => bytes += serde_json::to_string(&v).map_or(0, |s| s.len()),
                    Err(e) => {
                        failure.get_or_insert(format!("resource {i}: {e}"));
                    }
                }
            }
            std::hint::black_box(bytes);
        };
        let mut floor = || {
            let mut bytes = 0usize;
            for l in &lines {
                let v: Value = serde_json::from_str(l).expect("generated JSON");
                bytes += serde_json::to_string(&v).map_or(0, |s| s.len());
            }
            std::hint::black_box(bytes);
        };
        let us = timing::interleaved(budget, &mut [&mut ours, &mut floor]);
        if let Some(e) = failure {
            anyhow::bail!("{name}: {e}");
        }
        let per_s = lines.len() as f64 / (us[0] / 1e6);
        let floor_per_s = lines.len() as f64 / (us[1] / 1e6);
        rows.push(json!({
            "suite": "deid", "op": name, "resources": lines.len(),
            "per_s": per_s.round(), "floor_per_s": floor_per_s.round(),
            "ratio": round(per_s / floor_per_s),
        }));
    }
    Ok(rows)
}
