//! Attacks by a database administrator on the key authority's state, on
//! SQLite and PostgreSQL: each edit, insert, deletion or rollback done with
//! raw SQL behind the authority's back must be caught, the alarm must stick,
//! and another honest holder of the key must not trip it.

mod common;

use asclepios_store::{Identity, IdentityStatus, Store, StoreError};
use common::Harness;

conformance!(
    an_inserted_attribute_is_caught,
    a_swapped_public_key_is_caught,
    a_deleted_attribute_version_is_caught,
    an_old_copy_of_a_partition_is_caught_in_use_and_at_open,
    a_rolled_back_database_is_refused_at_open,
    a_forged_head_is_refused_at_open,
    rows_without_a_head_are_refused,
    the_alarm_sticks_and_stops_writes,
    another_holder_of_the_key_may_write,
);

fn identity(id: &str) -> Identity {
    Identity {
        id: id.into(),
        kind: "clinician".into(),
        display_name: id.into(),
        public_key: Some(vec![1; 32]),
        status: IdentityStatus::Active,
    }
}

/// A directory with two clinicians and a patient.
fn directory(h: &Harness) -> Store {
    let s = h.open_protected().expect("a fresh store verifies");
    for id in ["dr-a", "dr-b", "pat-1"] {
        s.put_identity(&identity(id)).unwrap();
    }
    s.grant_attribute("dr-a", "care-team:pat-1").unwrap();
    s.grant_attribute("pat-1", "patient:pat-1").unwrap();
    s
}

fn assert_integrity<T: std::fmt::Debug>(r: Result<T, StoreError>, about: &str) {
    match r {
        Err(StoreError::Integrity(m)) => {
            assert!(m.contains(about), "alarm `{m}` does not name `{about}`")
        }
        other => panic!("expected an integrity alarm about {about}, got {other:?}"),
    }
}

/// Review C1: the DB admin grants themselves a patient's attribute.
fn an_inserted_attribute_is_caught(h: &Harness) {
    let s = directory(h);
    h.raw("INSERT INTO identity_attributes (identity_id, attribute, granted_version, granted_at, revoked_at) VALUES ('dr-b', 'patient:pat-1', 0, 1, NULL)");
    assert_integrity(s.current_attributes("dr-b"), "identity_attributes");
    assert!(s.integrity_alarm().is_some());
    // And a fresh start refuses the state too.
    drop(s);
    assert_integrity(h.open_protected(), "identity_attributes");
}

/// Review H1: the DB admin swaps a clinician's public key.
fn a_swapped_public_key_is_caught(h: &Harness) {
    let s = directory(h);
    assert_eq!(
        s.identity("dr-a").unwrap().unwrap().public_key,
        Some(vec![1; 32])
    );
    h.raw("UPDATE identities SET public_key = NULL WHERE identity_id = 'dr-a'");
    assert_integrity(s.identity("dr-a"), "identities");
}

/// Deleting an attribute's version row would put a revoked key back in use.
fn a_deleted_attribute_version_is_caught(h: &Harness) {
    let s = directory(h);
    s.grant_attribute("dr-b", "care-team:pat-1").unwrap();
    assert_eq!(s.revoke_attribute("dr-b", "care-team:pat-1").unwrap(), 1);
    h.raw("DELETE FROM attribute_versions WHERE attribute = 'care-team:pat-1'");
    h.raw("DELETE FROM integrity_tags WHERE part = 'care-team:pat-1'");
    assert_integrity(s.attribute_version("care-team:pat-1"), "deleted");
}

const TABLES: [&str; 9] = [
    "identities",
    "identity_attributes",
    "attribute_versions",
    "auditor_keys",
    "components",
    "consents",
    "emergency_grants",
    "integrity_tags",
    "integrity_head",
];

fn snapshot(h: &Harness, tables: &[&str]) {
    for t in tables {
        h.raw(&format!(
            "DROP TABLE IF EXISTS copy_{t}; CREATE TABLE copy_{t} AS SELECT * FROM {t}"
        ));
    }
}

fn restore(h: &Harness, tables: &[&str]) {
    for t in tables {
        h.raw(&format!(
            "DELETE FROM {t}; INSERT INTO {t} SELECT * FROM copy_{t}"
        ));
    }
}

/// The DB admin keeps an authentic old copy of one identity's attributes
/// (with its authentic tag) and puts it back after a revocation.
fn an_old_copy_of_a_partition_is_caught_in_use_and_at_open(h: &Harness) {
    let s = directory(h);
    snapshot(h, &["identity_attributes", "integrity_tags"]);
    s.revoke_attribute("dr-a", "care-team:pat-1").unwrap();
    assert!(s.current_attributes("dr-a").unwrap().is_empty());
    restore(h, &["identity_attributes", "integrity_tags"]);
    assert_integrity(s.current_attributes("dr-a"), "identity_attributes");
    drop(s);
    assert_integrity(h.open_protected(), "do not add up");
}

/// The DB admin restores a whole, self-consistent copy of the database
/// taken before a revocation.
fn a_rolled_back_database_is_refused_at_open(h: &Harness) {
    let s = directory(h);
    snapshot(h, &TABLES);
    s.revoke_attribute("dr-a", "care-team:pat-1").unwrap();
    drop(s);
    restore(h, &TABLES);
    assert_integrity(h.open_protected(), "rolled back");
    // Without the anchor (a fresh authority host), the copy is consistent:
    // that is what the anchor is for.
    std::fs::remove_file(h.anchor_path()).unwrap();
    let s = h.open_protected().unwrap();
    assert_eq!(s.current_attributes("dr-a").unwrap(), ["care-team:pat-1"]);
}

fn a_forged_head_is_refused_at_open(h: &Harness) {
    let s = directory(h);
    drop(s);
    h.raw("UPDATE integrity_head SET seq = seq + 100");
    assert_integrity(h.open_protected(), "head does not verify");
}

fn rows_without_a_head_are_refused(h: &Harness) {
    let s = h.open();
    s.put_identity(&identity("dr-a")).unwrap();
    drop(s);
    assert_integrity(h.open_protected(), "no authenticated head");
}

fn the_alarm_sticks_and_stops_writes(h: &Harness) {
    let s = directory(h);
    h.raw("UPDATE identities SET display_name = 'Mallory' WHERE identity_id = 'dr-b'");
    // A write to the tampered partition is refused before it seals anything.
    assert_integrity(s.put_identity(&identity("dr-b")), "identities");
    // From then on, everything protected is refused, even what is intact.
    assert_integrity(s.identity("pat-1"), "identities");
    assert_integrity(s.grant_attribute("pat-1", "role:x"), "identities");
    assert!(s.integrity_alarm().unwrap().contains("dr-b"));
}

/// An administration command holding the key writes while the service
/// runs: the service verifies the newer state and carries on.
fn another_holder_of_the_key_may_write(h: &Harness) {
    let service = directory(h);
    let admin = h.open_protected().unwrap();
    admin.grant_attribute("dr-b", "care-team:pat-1").unwrap();
    admin.revoke_attribute("dr-a", "care-team:pat-1").unwrap();
    assert_eq!(
        service.current_attributes("dr-b").unwrap(),
        ["care-team:pat-1@v1"]
    );
    assert!(service.current_attributes("dr-a").unwrap().is_empty());
    service.grant_attribute("dr-a", "role:clinician").unwrap();
    assert_eq!(
        admin.current_attributes("dr-a").unwrap(),
        ["role:clinician"]
    );
    assert!(service.integrity_alarm().is_none() && admin.integrity_alarm().is_none());
    assert_eq!(service.integrity_seq(), admin.integrity_seq());
}
