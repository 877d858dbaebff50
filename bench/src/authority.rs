//! What authenticating the key authority's state costs on key issuance
//! (`op=authority-integrity`): the directory reads an issuance makes (the
//! caller's identity, its attributes, each attribute's version) and the
//! FAME key generation for them, once through a store that checks every
//! partition it reads against the authority's memory of it, and once
//! through a plain handle on the same database, interleaved.

use asclepios_crypto::abe;
use asclepios_store::{BackendKind, Identity, IdentityStatus, IntegrityKey, Store};
use rand_core::OsRng;
use serde_json::{json, Value};

use crate::audit::Scratch;
use crate::timing::{self, Budget};

/// A directory of `n` clinicians, each with four attributes; every tenth
/// care-team attribute was revoked once (so it has a version row).
fn populate(store: &Store, n: usize) -> anyhow::Result<Vec<String>> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let id = format!("dr-{i:05}");
        store.put_identity(&Identity {
            id: id.clone(),
            kind: "clinician".into(),
            display_name: id.clone(),
            public_key: Some(vec![7; 32]),
            status: IdentityStatus::Active,
        })?;
        let care_team = format!("care-team:pat-{i:05}");
        for attribute in [
            "role:doctor",
            &format!("dept:d{}", i % 20),
            &care_team,
            &format!("site:s{}", i % 3),
        ] {
            store.grant_attribute(&id, attribute)?;
        }
        if i % 10 == 0 {
            store.revoke_attribute(&id, &care_team)?;
            store.grant_attribute(&id, &care_team)?;
        }
        ids.push(id);
    }
    Ok(ids)
}

/// One issuance's directory work and key generation.
fn issue(store: &Store, msk: &abe::MasterSecretKey, id: &str) {
    let identity = store.identity(id).expect("readable").expect("present");
    assert_eq!(identity.status, IdentityStatus::Active);
    let attributes = store.current_attributes(id).expect("readable");
    msk.keygen(&attributes, &mut OsRng).expect("a key");
}

pub fn run(quick: bool, budget: Budget) -> anyhow::Result<Vec<Value>> {
    let n = if quick { 50 } else { 1000 };
    let (_, msk) = abe::setup(&mut OsRng);
    let mut rows = Vec::new();
    for kind in [BackendKind::Sqlite, BackendKind::Postgres] {
        eprintln!("authority-integrity on {}: {n} identities", kind.name());
        let scratch = Scratch::new(kind, "integrity")?;
        let plain = scratch.store().clone();
        let checked = scratch
            .store()
            .clone()
            .with_integrity(IntegrityKey::from_bytes(&[9; 32])?, None)?;
        let ids = populate(&checked, n)?;
        let (mut a, mut b) = (0usize, 0usize);
        let medians = timing::interleaved(
            budget,
            &mut [
                &mut || {
                    issue(&checked, &msk, &ids[a % ids.len()]);
                    a += 7;
                },
                &mut || {
                    issue(&plain, &msk, &ids[b % ids.len()]);
                    b += 7;
                },
            ],
        );
        let verify_us = timing::single(budget, || checked.verify_integrity().expect("intact"));
        let (ours_us, floor_us) = (medians[0], medians[1]);
        rows.push(json!({
            "suite": "e2e", "op": "authority-integrity", "backend": kind.name(), "identities": n,
            "ours_us": ours_us.round(), "floor_us": floor_us.round(),
            "ratio": (ours_us / floor_us * 1000.0).round() / 1000.0,
            "full_verify_us": verify_us.round(),
        }));
    }
    Ok(rows)
}
