//! The crate graph mirrors the trust domains (docs/design.md, Layering). Read
//! from `cargo metadata`, these rules must hold, and any workspace edge that
//! breaks one is named:
//!
//! * `asclepios-client` and `asclepios-portal` (the user's side) never
//!   depend, directly or through another crate, on the store, the services
//!   or the deployment internals;
//! * the key authority and the record service never depend on each other;
//! * `asclepios-crypto` depends on no workspace crate;
//! * the lower layers never depend on the layers above them.
//!
//! `KNOWN` lists the edges that break a rule today and are being removed;
//! it is empty now (the wire types live in `asclepios-api`, the handler
//! machinery both services share in `asclepios-service`). It can only
//! shrink: a new breaking edge fails, and so does a listed edge that is gone.

use std::collections::{BTreeMap, BTreeSet};

const USER_SIDE: &[&str] = &["asclepios-client", "asclepios-portal"];
const SERVER_SIDE: &[&str] = &[
    "asclepios-store",
    "asclepios-service",
    "asclepios-deploy",
    "asclepios-authority",
    "asclepios-records",
];
const LOWER: &[&str] = &[
    "asclepios-api",
    "asclepios-crypto",
    "asclepios-fhir",
    "asclepios-audit",
    "asclepios-net",
    "asclepios-store",
    "asclepios-service",
    "asclepios-attest",
    "asclepios-deid",
];
const UPPER: &[&str] = &[
    "asclepios-authority",
    "asclepios-records",
    "asclepios-client",
    "asclepios-portal",
    "asclepios-deploy",
    "asclepios-cli",
];

/// Edges that break a rule today, each with what removes it.
const KNOWN: &[(&str, &str, &str)] = &[];

/// Workspace crates and their normal (non-dev, non-build) workspace edges.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../../Cargo.toml");
    let out = std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
            "--manifest-path",
            manifest,
        ])
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metadata: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let packages = metadata["packages"].as_array().unwrap();
    let names: BTreeSet<String> = packages
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect();
    packages
        .iter()
        .map(|p| {
            let deps = p["dependencies"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| d["kind"].is_null())
                .map(|d| d["name"].as_str().unwrap().to_string())
                .filter(|d| names.contains(d))
                .collect();
            (p["name"].as_str().unwrap().to_string(), deps)
        })
        .collect()
}

fn is_known(from: &str, to: &str) -> bool {
    KNOWN.iter().any(|(f, t, _)| *f == from && *t == to)
}

/// Every edge that breaks a rule, with the rule.
fn breaking_edges(
    g: &BTreeMap<String, BTreeSet<String>>,
) -> BTreeMap<(String, String), &'static str> {
    let mut found = BTreeMap::new();
    for (from, deps) in g {
        for to in deps {
            let (f, t) = (from.as_str(), to.as_str());
            let rule = if USER_SIDE.contains(&f) && SERVER_SIDE.contains(&t) {
                Some("the user's side depends on the server side")
            } else if matches!(
                (f, t),
                ("asclepios-authority", "asclepios-records")
                    | ("asclepios-records", "asclepios-authority")
            ) {
                Some("one trust domain depends on the other")
            } else if f == "asclepios-crypto" {
                Some("crypto depends on a workspace crate")
            } else if LOWER.contains(&f) && UPPER.contains(&t) {
                Some("a lower layer depends on a higher one")
            } else {
                None
            };
            if let Some(rule) = rule {
                found.insert((from.clone(), to.clone()), rule);
            }
        }
    }
    // The user's side must not reach the server side through another crate
    // either (counting only edges that are not already known to break).
    for start in USER_SIDE {
        let mut seen = BTreeSet::new();
        let mut stack = vec![(start.to_string(), Vec::<String>::new())];
        while let Some((at, path)) = stack.pop() {
            for next in g.get(&at).into_iter().flatten() {
                if is_known(&at, next) || !seen.insert(next.clone()) {
                    continue;
                }
                let mut via = path.clone();
                via.push(next.clone());
                if SERVER_SIDE.contains(&next.as_str()) && via.len() > 1 {
                    found.insert(
                        (start.to_string(), via.join(" -> ")),
                        "the user's side reaches the server side through another crate",
                    );
                }
                stack.push((next.clone(), via));
            }
        }
    }
    found
}

#[test]
fn the_crate_graph_mirrors_the_trust_domains() {
    let g = graph();
    assert!(g.contains_key("asclepios-client") && g.contains_key("asclepios-authority"));
    let breaking = breaking_edges(&g);
    let new: Vec<String> = breaking
        .iter()
        .filter(|((f, t), _)| !is_known(f, t))
        .map(|((f, t), rule)| format!("{f} -> {t}: {rule}"))
        .collect();
    assert!(
        new.is_empty(),
        "edges that break the layering:\n{}",
        new.join("\n")
    );
    let gone: Vec<String> = KNOWN
        .iter()
        .filter(|(f, t, _)| !breaking.contains_key(&(f.to_string(), t.to_string())))
        .map(|(f, t, _)| format!("{f} -> {t}"))
        .collect();
    assert!(
        gone.is_empty(),
        "these edges are gone: remove them from KNOWN so they cannot come back:\n{}",
        gone.join("\n")
    );
}

/// The rules themselves catch what they should.
#[test]
fn the_rules_name_a_forbidden_edge() {
    let mut g = graph();
    g.get_mut("asclepios-records")
        .unwrap()
        .insert("asclepios-authority".into());
    g.get_mut("asclepios-crypto")
        .unwrap()
        .insert("asclepios-fhir".into());
    g.get_mut("asclepios-portal")
        .unwrap()
        .insert("asclepios-deid".into());
    g.get_mut("asclepios-deid")
        .unwrap()
        .insert("asclepios-store".into());
    let breaking = breaking_edges(&g);
    let key = |f: &str, t: &str| (f.to_string(), t.to_string());
    assert!(breaking.contains_key(&key("asclepios-records", "asclepios-authority")));
    assert!(breaking.contains_key(&key("asclepios-crypto", "asclepios-fhir")));
    assert!(breaking.contains_key(&key(
        "asclepios-portal",
        "asclepios-deid -> asclepios-store"
    )));
}
