//! Attacks by a database administrator on the key authority's state, on
//! SQLite and PostgreSQL: each edit, insert, deletion or rollback done with
//! raw SQL behind the authority's back must be caught, the alarm must stick,
//! and another honest holder of the key must not trip it.

mod common;

use asclepios_store::{Identity, IdentityStatus, SseBatch, StateWrite, Store, StoreError};
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
    a_rolled_back_keyword_counter_is_caught,
    a_deleted_statistics_release_is_caught,
    a_repointed_statistics_slot_is_caught,
    a_trigger_cannot_slip_a_row_into_an_authority_write,
    a_trigger_cannot_undo_a_revocation,
    a_malformed_head_is_an_alarm_not_an_error,
    concurrent_honest_writers_raise_no_alarm,
    an_identity_is_added_with_its_attributes_at_once,
    a_consent_ends_with_its_attribute_or_not_at_all,
    attributes_are_set_all_at_once_or_not_at_all,
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
    // Deleting the anchor as well does not help: a state that has changed
    // without its anchor could hide a rollback.
    std::fs::remove_file(h.anchor_path()).unwrap();
    assert_integrity(h.open_protected(), "anchor is missing");
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

/// A keyword's sealed counter put back to an older value would make the
/// authority hand out index addresses it used before (and break forward
/// privacy): caught at the next read of the state.
fn a_rolled_back_keyword_counter_is_caught(h: &Harness) {
    let s = h.open_protected().unwrap();
    let row = vec![1u8; 16];
    let write = |expect: Option<&[u8]>, new: &[u8], addr: u8| SseBatch {
        state: vec![StateWrite {
            row: row.clone(),
            expect: expect.map(<[u8]>::to_vec),
            new: Some(new.to_vec()),
        }],
        put: vec![(vec![addr; 16], vec![0; 8])],
        delete: Vec::new(),
    };
    s.sse_apply(&write(None, b"sealed counter 1", 1)).unwrap();
    snapshot(h, &["sse_state"]);
    s.sse_apply(&write(Some(b"sealed counter 1"), b"sealed counter 2", 2))
        .unwrap();
    assert_eq!(
        s.sse_state(std::slice::from_ref(&row)).unwrap(),
        [Some(b"sealed counter 2".to_vec())]
    );
    restore(h, &["sse_state"]);
    assert_integrity(s.sse_state(std::slice::from_ref(&row)), "sse_state");
}

/// Deleting the releases keys were issued for would let a researcher be
/// given keys for two cohorts that differ by one patient, and refill every
/// person's privacy budget; re-pointing a slot at another patient would
/// let a provider fill someone else's.
fn a_deleted_statistics_release_is_caught(h: &Harness) {
    let s = h.open_protected().unwrap();
    let release = asclepios_store::ReleaseRow {
        release_id: "r1".into(),
        study: "bp".into(),
        label: "p/f/present".into(),
        patients: vec!["p1".into(), "p2".into()],
        epsilon_micro: 1_000_000,
    };
    s.fe_add_release(&release, &mut |_| Ok::<_, ()>(()))
        .unwrap()
        .unwrap();
    assert_eq!(s.fe_releases().unwrap().len(), 1);
    h.raw("DELETE FROM fe_releases");
    assert_integrity(s.fe_releases(), "fe_releases");
}

fn a_repointed_statistics_slot_is_caught(h: &Harness) {
    let s = h.open_protected().unwrap();
    s.fe_assign_slots("bp", "lab-a", &["p1".to_string()], &mut |_, _| vec![1; 4])
        .unwrap();
    h.raw("UPDATE fe_people SET patient = 'p9'");
    assert_integrity(s.fe_people("bp"), "fe_people");
}

/// A trigger that adds `patient:pat-1` to dr-b whenever the authority writes
/// dr-b's attributes. (PostgreSQL needs a function for the trigger body.)
fn plant_trigger(h: &Harness, on: &str, body: &str) {
    match h.kind() {
        asclepios_store::BackendKind::Sqlite => h.raw(&format!(
            "CREATE TRIGGER planted {on} FOR EACH ROW BEGIN {body}; END;"
        )),
        asclepios_store::BackendKind::Postgres => h.raw(&format!(
            "CREATE FUNCTION planted() RETURNS trigger AS $$ BEGIN {body}; RETURN NULL; END $$ LANGUAGE plpgsql; \
             CREATE TRIGGER planted {on} FOR EACH ROW EXECUTE FUNCTION planted();"
        )),
    }
}

/// Review follow-up: the authority used to tag whatever a partition held
/// after its write, so rows a trigger added got tagged as its own.
fn a_trigger_cannot_slip_a_row_into_an_authority_write(h: &Harness) {
    let s = directory(h);
    plant_trigger(
        h,
        "AFTER INSERT ON identity_attributes",
        "INSERT INTO identity_attributes (identity_id, attribute, granted_version, granted_at, revoked_at) \
         SELECT 'dr-b', 'patient:pat-1', 0, 1, NULL WHERE NOT EXISTS \
         (SELECT 1 FROM identity_attributes WHERE identity_id = 'dr-b' AND attribute = 'patient:pat-1')",
    );
    assert_integrity(
        s.grant_attribute("dr-b", "role:doctor"),
        "changed under the authority's write",
    );
    // Nothing was written, and nothing was tagged.
    drop(s);
    h.raw(match h.kind() {
        asclepios_store::BackendKind::Sqlite => "DROP TRIGGER planted",
        asclepios_store::BackendKind::Postgres => "DROP TRIGGER planted ON identity_attributes",
    });
    assert_eq!(
        h.open_protected()
            .unwrap()
            .current_attributes("dr-b")
            .unwrap(),
        Vec::<String>::new()
    );
}

fn a_trigger_cannot_undo_a_revocation(h: &Harness) {
    let s = directory(h);
    let (on, body) = match h.kind() {
        asclepios_store::BackendKind::Sqlite => (
            "AFTER UPDATE OF revoked_at ON identity_attributes",
            "UPDATE identity_attributes SET revoked_at = NULL WHERE identity_id = NEW.identity_id AND attribute = NEW.attribute",
        ),
        asclepios_store::BackendKind::Postgres => (
            "AFTER UPDATE ON identity_attributes",
            "IF NEW.revoked_at IS NOT NULL THEN UPDATE identity_attributes SET revoked_at = NULL WHERE identity_id = NEW.identity_id AND attribute = NEW.attribute; END IF",
        ),
    };
    plant_trigger(h, on, body);
    assert_integrity(
        s.revoke_attribute("dr-a", "care-team:pat-1"),
        "changed under the authority's write",
    );
}

/// Values the store cannot even read where the head should be: an alarm
/// (and a start in alarm), not an error that leaves issuance running.
fn a_malformed_head_is_an_alarm_not_an_error(h: &Harness) {
    let s = directory(h);
    h.raw("UPDATE integrity_head SET seq = -seq");
    assert_integrity(s.grant_attribute("dr-b", "role:doctor"), "malformed");
    assert_integrity(s.identity("dr-a"), "malformed");
    drop(s);
    assert_integrity(h.open_protected(), "malformed");
    let key = asclepios_store::IntegrityKey::from_bytes(&[0x5a; 32]).unwrap();
    let alarmed = h
        .open()
        .with_integrity_or_alarm(key, Some(h.anchor_path()))
        .expect("opens, with the alarm raised");
    assert!(alarmed.integrity_alarm().unwrap().contains("malformed"));
}

/// Honest writers in several threads and two processes' stores at once:
/// every write succeeds or conflicts cleanly, none raises the alarm, and a
/// fresh start verifies everything.
fn concurrent_honest_writers_raise_no_alarm(h: &Harness) {
    let one = std::sync::Arc::new(directory(h));
    let two = std::sync::Arc::new(h.open_protected().unwrap());
    let threads: Vec<_> = (0..6)
        .map(|i| {
            let s = if i % 2 == 0 { one.clone() } else { two.clone() };
            std::thread::spawn(move || {
                for j in 0..5 {
                    let id = format!("u{i}-{j}");
                    s.put_identity(&identity(&id)).unwrap();
                    s.grant_attribute(&id, "role:doctor").unwrap();
                    s.grant_attribute("dr-a", &format!("ward:w{i}-{j}"))
                        .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(one.integrity_alarm().is_none() && two.integrity_alarm().is_none());
    assert_eq!(two.current_attributes("dr-a").unwrap().len(), 31);
    drop((one, two));
    h.open_protected().unwrap().verify_integrity().unwrap();
}

fn an_identity_is_added_with_its_attributes_at_once(h: &Harness) {
    let s = directory(h);
    s.add_identity(
        &identity("dr-c"),
        &["role:doctor".into(), "care-team:pat-1".into()],
    )
    .unwrap();
    assert_eq!(
        s.current_attributes("dr-c").unwrap(),
        ["care-team:pat-1", "role:doctor"]
    );
    assert!(matches!(
        s.add_identity(&identity("dr-c"), &["patient:pat-1".into()]),
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(s.identity_attributes("dr-c").unwrap().len(), 2);
    drop(s);
    h.open_protected().unwrap().verify_integrity().unwrap();
}

/// A withdrawal records the consent as ended and revokes the grantee's
/// attribute in one transaction: a database that refuses the revocation
/// (a trigger, or a failure) leaves the consent active, never withdrawn
/// while the grantee keeps reading.
fn a_consent_ends_with_its_attribute_or_not_at_all(h: &Harness) {
    let s = directory(h);
    s.grant_attribute("dr-b", "consent:pat-1").unwrap();
    let mut c = asclepios_store::Consent {
        patient: "pat-1".into(),
        consent_id: "c1".into(),
        version: 0,
        grantee: "dr-b".into(),
        scope: "{}".into(),
        status: asclepios_store::ConsentStatus::Active,
        document: None,
        updated_at: 0,
    };
    s.put_consent(&c).unwrap();
    c.status = asclepios_store::ConsentStatus::Withdrawn;
    let body = match h.kind() {
        asclepios_store::BackendKind::Sqlite => "SELECT RAISE(ABORT, 'refused')",
        asclepios_store::BackendKind::Postgres => "RAISE EXCEPTION 'refused'",
    };
    plant_trigger(h, "BEFORE UPDATE ON identity_attributes", body);
    assert!(s.end_consent(&c, Some(("dr-b", "consent:pat-1"))).is_err());
    assert_eq!(
        s.consents("pat-1").unwrap()[0].status,
        asclepios_store::ConsentStatus::Active
    );
    assert_eq!(s.current_attributes("dr-b").unwrap(), ["consent:pat-1"]);
    h.raw(match h.kind() {
        asclepios_store::BackendKind::Sqlite => "DROP TRIGGER planted",
        asclepios_store::BackendKind::Postgres => "DROP TRIGGER planted ON identity_attributes",
    });
    s.end_consent(&c, Some(("dr-b", "consent:pat-1"))).unwrap();
    assert_eq!(
        s.consents("pat-1").unwrap()[0].status,
        asclepios_store::ConsentStatus::Withdrawn
    );
    assert!(s.current_attributes("dr-b").unwrap().is_empty());
    assert!(s.integrity_alarm().is_none());
}

/// Setting attributes revokes and grants in one transaction: a database
/// that refuses one of the revocations changes nothing at all.
fn attributes_are_set_all_at_once_or_not_at_all(h: &Harness) {
    let s = directory(h);
    s.grant_attribute("dr-a", "role:doctor").unwrap();
    s.grant_attribute("dr-a", "ward:icu").unwrap();
    // ward:icu has a version row now: revoking it again is an UPDATE.
    s.revoke_attribute("dr-a", "ward:icu").unwrap();
    s.grant_attribute("dr-a", "ward:icu").unwrap();
    let before = s.current_attributes("dr-a").unwrap();
    let body = match h.kind() {
        asclepios_store::BackendKind::Sqlite => "SELECT RAISE(ABORT, 'refused')",
        asclepios_store::BackendKind::Postgres => "RAISE EXCEPTION 'refused'",
    };
    plant_trigger(h, "BEFORE UPDATE ON attribute_versions", body);
    // Three revocations and a grant; the database refuses the last
    // revocation: nothing of it happens.
    assert!(s
        .set_identity_attributes("dr-a", &["role:nurse".into()], false)
        .is_err());
    assert_eq!(s.current_attributes("dr-a").unwrap(), before);
    h.raw(match h.kind() {
        asclepios_store::BackendKind::Sqlite => "DROP TRIGGER planted",
        asclepios_store::BackendKind::Postgres => "DROP TRIGGER planted ON attribute_versions",
    });
    assert_eq!(
        s.set_identity_attributes("dr-a", &["role:nurse".into()], true)
            .unwrap(),
        ["care-team:pat-1", "role:doctor", "ward:icu"]
    );
    assert_eq!(
        s.identity("dr-a").unwrap().unwrap().status,
        IdentityStatus::Revoked
    );
    assert!(s.current_attributes("dr-a").unwrap().is_empty());
    assert!(s.integrity_alarm().is_none());
}
