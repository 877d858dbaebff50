//! One conformance suite, run against SQLite and PostgreSQL.

mod common;

use asclepios_audit::log::audit_entries;
use asclepios_audit::merkle::{self, MemoryTree};
use asclepios_audit::{Checkpoint, Cosigner, LinkedLeaf, Log, LogStore, NoteSigner, Witness};
use asclepios_store::{
    Consent, ConsentStatus, EmergencyGrant, Identity, IdentityStatus, SseBatch, StateWrite,
    StoreError,
};
use common::Harness;

conformance!(
    migrations_are_idempotent,
    record_history_is_append_only,
    wrappers_are_replaceable_and_shreddable,
    attribute_floors_refuse_revoked_versions,
    nonces_refuse_replays_within_their_window_in_any_batch,
    invalid_record_input_is_refused,
    sse_index_batches_and_refuses_overwrites,
    sse_state_swaps_atomically_with_the_index,
    statistics_slots_values_and_cohorts,
    component_appraisals_are_replaced,
    directory_tracks_attribute_versions,
    consents_keep_their_history,
    emergency_grants_queue_for_review,
    log_proofs_match_an_in_memory_tree,
    log_survives_reopening,
    entries_about_a_subject_are_chained_and_served_alone,
    two_writers_may_sign_the_same_checkpoint,
    two_trails_record_concurrently,
    tampered_entries_are_caught_against_a_checkpoint,
    tampered_nodes_stop_the_next_checkpoint,
    forged_checkpoints_are_refused,
    concurrent_writers_never_fork_the_log,
    tampered_subtree_hashes_are_caught_by_the_audit,
    deleting_checkpoints_does_not_let_history_be_rewritten,
    a_stale_writer_catches_up_before_signing,
    tampered_upper_hashes_are_refused_at_open,
    wrapper_scans_page_through_everything_once,
    witnessed_checkpoints_carry_cosignatures,
    a_rewritten_history_is_refused_by_the_witness_after_a_restart,
);

fn migrations_are_idempotent(h: &Harness) {
    let store = h.open();
    store.put_identity(&identity("dr-a")).unwrap();
    drop(store);
    // Reopening applies nothing twice and keeps the data.
    let store = h.open();
    assert_eq!(
        store.identity("dr-a").unwrap().unwrap().display_name,
        "Dr dr-a"
    );
}

fn identity(id: &str) -> Identity {
    Identity {
        id: id.into(),
        kind: "clinician".into(),
        display_name: format!("Dr {id}"),
        public_key: Some(vec![1, 2, 3]),
        status: IdentityStatus::Active,
    }
}

fn record_history_is_append_only(h: &Harness) {
    let s = h.open();
    s.put_record_version("p1", "r1", 1, b"body-1", &[("main", b"w1", 0)])
        .unwrap();
    s.put_record_version("p1", "r1", 2, b"body-2", &[("main", b"w2", 0)])
        .unwrap();
    s.put_record_version("p1", "r2", 1, b"other", &[]).unwrap();
    s.put_record_version("p2", "r1", 1, b"p2 body", &[])
        .unwrap();
    // Existing and skipped versions are conflicts, and change nothing.
    for v in [1, 2, 4, 0] {
        let e = s.put_record_version("p1", "r1", v, b"x", &[]).unwrap_err();
        assert!(matches!(e, StoreError::Conflict(_)), "{v}: {e}");
    }
    assert_eq!(s.record_versions("p1", "r1").unwrap(), vec![1, 2]);
    let latest = s.record_version("p1", "r1", None).unwrap().unwrap();
    assert_eq!(
        (latest.version, latest.body.as_slice()),
        (2, &b"body-2"[..])
    );
    let first = s.record_version("p1", "r1", Some(1)).unwrap().unwrap();
    assert_eq!(first.body, b"body-1");
    assert!(s.record_version("p1", "r1", Some(3)).unwrap().is_none());
    assert!(s.record_version("p3", "r1", None).unwrap().is_none());
    assert_eq!(
        s.patient_records("p1").unwrap(),
        vec![("r1".to_string(), 2), ("r2".to_string(), 1)]
    );
    // A duplicate wrapper slot is refused before anything is written.
    let e = s
        .put_record_version(
            "p1",
            "r2",
            2,
            b"v2",
            &[("main", b"a", 0), ("main", b"b", 0)],
        )
        .unwrap_err();
    assert!(matches!(e, StoreError::Invalid(_)), "{e}");
    assert_eq!(s.record_versions("p1", "r2").unwrap(), vec![1]);
}

fn wrappers_are_replaceable_and_shreddable(h: &Harness) {
    let s = h.open();
    s.put_record_version("p1", "r1", 1, b"b1", &[("main", b"w1", 0)])
        .unwrap();
    s.put_record_version(
        "p1",
        "r1",
        2,
        b"b2",
        &[("main", b"w2", 0), ("emergency", b"e2", 0)],
    )
    .unwrap();
    s.put_wrapper("p1", "r1", 1, "main", b"w1-rewrapped", 7)
        .unwrap();
    let w = s.wrappers("p1", "r1", 1).unwrap();
    assert_eq!(w.len(), 1);
    assert_eq!(
        (w[0].bytes.as_slice(), w[0].epoch),
        (&b"w1-rewrapped"[..], 7)
    );
    let slots: Vec<_> = s
        .wrappers("p1", "r1", 2)
        .unwrap()
        .into_iter()
        .map(|w| w.slot)
        .collect();
    assert_eq!(slots, ["emergency", "main"]);
    let e = s.put_wrapper("p1", "r1", 3, "main", b"x", 0).unwrap_err();
    assert!(matches!(e, StoreError::NotFound(_)), "{e}");
    let erased = s.erase("p1", Some("r1")).unwrap();
    assert_eq!(
        (erased.records, erased.versions, erased.wrappers),
        (1, 2, 3)
    );
    assert!(s.wrappers("p1", "r1", 1).unwrap().is_empty());
    assert!(s.wrappers("p1", "r1", 2).unwrap().is_empty());
    // The bodies go too, and nothing of another record or patient.
    assert!(s.record_version("p1", "r1", None).unwrap().is_none());
    assert_eq!(s.erase("p1", Some("r1")).unwrap(), Default::default());
    s.put_record_version("p1", "r2", 1, b"b", &[("main", b"w", 0)])
        .unwrap();
    s.put_record_version("p2", "r1", 1, b"b", &[("main", b"w", 0)])
        .unwrap();
    let erased = s.erase("p1", None).unwrap();
    assert_eq!(
        (erased.records, erased.versions, erased.wrappers),
        (1, 1, 1)
    );
    assert!(s.patient_records("p1").unwrap().is_empty());
    assert_eq!(s.patient_records("p2").unwrap().len(), 1);
}

fn attribute_floors_refuse_revoked_versions(h: &Harness) {
    let s = h.open();
    let named = |v| [("care-team:p1", v), ("patient:p1", 0)];
    s.put_record_version_above_floors("p1", "r1", 1, b"b1", &[("main", b"w", 0)], &named(0))
        .unwrap();
    s.raise_attribute_floors(&[("care-team:p1".into(), 2)])
        .unwrap();
    assert_eq!(s.attribute_floor("care-team:p1").unwrap(), 2);
    for stale in [0, 1] {
        let e = s
            .put_record_version_above_floors(
                "p1",
                "r1",
                2,
                b"b2",
                &[("main", b"w", 0)],
                &named(stale),
            )
            .unwrap_err();
        assert!(
            matches!(e, StoreError::Conflict(ref m) if m.contains("revoked")),
            "{e}"
        );
    }
    // Nothing of a refused write was stored.
    assert_eq!(s.record_versions("p1", "r1").unwrap(), [1]);
    s.put_record_version_above_floors("p1", "r1", 2, b"b2", &[("main", b"w", 0)], &named(2))
        .unwrap();
    // Floors never go down, and other attributes have none.
    s.raise_attribute_floors(&[("care-team:p1".into(), 1)])
        .unwrap();
    assert_eq!(s.attribute_floor("care-team:p1").unwrap(), 2);
    assert_eq!(s.attribute_floor("care-team:p2").unwrap(), 0);
}

/// Replay protection's store: a nonce is remembered until its expiry,
/// judged at the time each request's own signature was checked, whatever
/// else shares its batch (a late request in the same commit must not make
/// an earlier one's row count as expired).
fn nonces_refuse_replays_within_their_window_in_any_batch(h: &Harness) {
    let s = h.open();
    let created = 1_000_000;
    let expires = created + 121;
    assert_eq!(
        s.remember_nonces("records", &[("dr-heart", "n1", expires, created)])
            .unwrap(),
        [true]
    );
    // The replay, checked at the last second its signature is accepted,
    // shares a commit with a request checked two seconds later.
    let fresh = s
        .remember_nonces(
            "records",
            &[
                ("dr-heart", "n1", expires, created + 120),
                ("dr-heart", "n2", created + 2 + 121, created + 122),
            ],
        )
        .unwrap();
    assert_eq!(fresh, [false, true]);
    // Twice in one batch: new once. Another service's nonces are its own.
    assert_eq!(
        s.remember_nonces(
            "records",
            &[
                ("nurse-ward", "n3", expires, created),
                ("nurse-ward", "n3", expires, created)
            ]
        )
        .unwrap(),
        [true, false]
    );
    assert!(s
        .remember_nonce("authority", "dr-heart", "n1", expires, created)
        .unwrap());
    // Past its expiry a pair may come again (its signature no longer
    // verifies, so only a fresh request can bring it).
    assert!(s
        .remember_nonce("records", "dr-heart", "n1", created + 500, created + 379)
        .unwrap());
}

fn invalid_record_input_is_refused(h: &Harness) {
    let s = h.open();
    let long = "x".repeat(300);
    for (p, r, body) in [
        ("", "r", &b"b"[..]),
        ("p", "", b"b"),
        (&long[..], "r", b"b"),
        ("p", "r", b""),
    ] {
        let e = s.put_record_version(p, r, 1, body, &[]).unwrap_err();
        assert!(matches!(e, StoreError::Invalid(_)), "{e}");
    }
    let e = s
        .put_record_version("p", "r", u64::MAX, b"b", &[])
        .unwrap_err();
    assert!(
        matches!(e, StoreError::Conflict(_) | StoreError::Invalid(_)),
        "{e}"
    );
}

fn sse_index_batches_and_refuses_overwrites(h: &Harness) {
    // As the key authority opens it: with its state authenticated.
    let s = h.open_protected().unwrap();
    let batch: Vec<(Vec<u8>, Vec<u8>)> = (0u32..1000)
        .map(|i| (i.to_be_bytes().to_vec(), format!("v{i}").into_bytes()))
        .collect();
    s.sse_put(&batch).unwrap();
    let addrs: Vec<Vec<u8>> = vec![
        5u32.to_be_bytes().to_vec(),
        5000u32.to_be_bytes().to_vec(),
        999u32.to_be_bytes().to_vec(),
    ];
    assert_eq!(
        s.sse_get(&addrs).unwrap(),
        vec![Some(b"v5".to_vec()), None, Some(b"v999".to_vec())]
    );
    let all: Vec<Vec<u8>> = batch.iter().map(|(a, _)| a.clone()).collect();
    assert!(s.sse_get(&all).unwrap().iter().all(Option::is_some));
    // A batch touching an existing address writes nothing.
    let e = s
        .sse_put(&[
            (vec![9, 9, 9], b"new".to_vec()),
            (0u32.to_be_bytes().to_vec(), b"again".to_vec()),
        ])
        .unwrap_err();
    assert!(matches!(e, StoreError::Conflict(_)), "{e}");
    assert_eq!(s.sse_get(&[vec![9, 9, 9]]).unwrap(), vec![None]);
    assert!(matches!(
        s.sse_put(&[(vec![], vec![1])]),
        Err(StoreError::Invalid(_))
    ));
}

fn sse_state_swaps_atomically_with_the_index(h: &Harness) {
    // As the key authority opens it: with its state authenticated.
    let s = h.open_protected().unwrap();
    let row = b"row-1".to_vec();
    let write = |expect: Option<&[u8]>, new: Option<&[u8]>| StateWrite {
        row: row.clone(),
        expect: expect.map(<[u8]>::to_vec),
        new: new.map(<[u8]>::to_vec),
    };
    s.sse_apply(&SseBatch {
        state: vec![write(None, Some(b"s1"))],
        put: vec![
            (b"a1".to_vec(), b"v1".to_vec()),
            (b"a2".to_vec(), b"v2".to_vec()),
        ],
        delete: vec![],
    })
    .unwrap();
    assert_eq!(
        s.sse_state(&[row.clone(), b"none".to_vec()]).unwrap(),
        vec![Some(b"s1".to_vec()), None]
    );
    // A writer that read an older state (or none) changes nothing.
    for stale in [
        write(Some(b"s0"), Some(b"s2")),
        write(None, Some(b"s2")),
        write(None, None),
    ] {
        let e = s
            .sse_apply(&SseBatch {
                state: vec![stale],
                put: vec![(b"a3".to_vec(), b"v3".to_vec())],
                delete: vec![b"a1".to_vec()],
            })
            .unwrap_err();
        assert!(matches!(e, StoreError::Conflict(_)), "{e}");
    }
    assert_eq!(
        s.sse_get(&[b"a1".to_vec(), b"a3".to_vec()]).unwrap(),
        vec![Some(b"v1".to_vec()), None]
    );
    // A compaction: swap the state, delete old entries, write new ones.
    s.sse_apply(&SseBatch {
        state: vec![write(Some(b"s1"), Some(b"s2"))],
        put: vec![(b"a3".to_vec(), b"v3".to_vec())],
        delete: vec![b"a1".to_vec(), b"a2".to_vec()],
    })
    .unwrap();
    assert_eq!(
        s.sse_get(&[b"a1".to_vec(), b"a2".to_vec(), b"a3".to_vec()])
            .unwrap(),
        vec![None, None, Some(b"v3".to_vec())]
    );
    // Two writers racing from the same read: exactly one wins.
    let s = std::sync::Arc::new(s);
    let wins: usize = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4u8)
            .map(|i| {
                let s = s.clone();
                let w = write(Some(b"s2"), Some(&[b's', b'3', i]));
                scope.spawn(move || {
                    s.sse_apply(&SseBatch {
                        state: vec![w],
                        put: vec![(vec![b'r', i], vec![i])],
                        delete: vec![],
                    })
                    .is_ok()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| usize::from(h.join().unwrap()))
            .sum()
    });
    assert_eq!(wins, 1);
    let raced: Vec<Vec<u8>> = (0..4u8).map(|i| vec![b'r', i]).collect();
    assert_eq!(s.sse_get(&raced).unwrap().iter().flatten().count(), 1);
    // Deleting the row.
    let current = s
        .sse_state(std::slice::from_ref(&row))
        .unwrap()
        .remove(0)
        .unwrap();
    s.sse_apply(&SseBatch {
        state: vec![write(Some(&current), None)],
        ..SseBatch::default()
    })
    .unwrap();
    assert_eq!(s.sse_state(&[row]).unwrap(), vec![None]);
}

fn statistics_slots_values_and_cohorts(h: &Harness) {
    // As the key authority opens it: with its state authenticated.
    let s = h.open_protected().unwrap();
    let people = |ids: &[&str]| ids.iter().map(|p| p.to_string()).collect::<Vec<_>>();
    let seal = &mut |slot: u64, _: &str| vec![slot as u8; 4];
    let a = s
        .fe_assign_slots("study", "lab-a", &people(&["p1", "p2", "p3"]), seal)
        .unwrap();
    assert_eq!(a.iter().map(|x| x.slot).collect::<Vec<_>>(), [0, 1, 2]);
    // Asking again gives the same slots; new people get new ones.
    let again = s
        .fe_assign_slots("study", "lab-a", &people(&["p4", "p2"]), seal)
        .unwrap();
    assert_eq!(again[0].slot, 3);
    assert_eq!(again[1], a[1]);
    // A person another provider fills is refused, and nothing is written.
    let e = s
        .fe_assign_slots("study", "lab-b", &people(&["p5", "p1"]), seal)
        .unwrap_err();
    assert!(matches!(e, StoreError::Conflict(_)), "{e}");
    let b = s
        .fe_assign_slots("study", "lab-b", &people(&["p5"]), seal)
        .unwrap();
    assert_eq!(b[0].slot, 4);
    assert_eq!(
        s.fe_assign_slots("other", "lab-a", &people(&["p1"]), seal)
            .unwrap()[0]
            .slot,
        0
    );
    let slots = s.fe_people("study").unwrap();
    assert_eq!(slots.len(), 5);
    assert_eq!(slots[4].provider, "lab-b");
    assert_eq!(slots[4].patient, "p5");
    assert_eq!(slots[4].sealed_key, vec![4u8; 4]);
    assert_eq!(s.fe_all_slots().unwrap().len(), 6);
    assert!(!s.fe_legacy_study("study").unwrap());
    s.fe_put_values("study", "p/f/value", &[(0, vec![1; 32]), (1, vec![2; 32])])
        .unwrap();
    // Once per slot and label: a batch repeating a slot writes nothing.
    let e = s
        .fe_put_values("study", "p/f/value", &[(2, vec![3; 32]), (1, vec![9; 32])])
        .unwrap_err();
    assert!(matches!(e, StoreError::Conflict(_)), "{e}");
    assert_eq!(
        s.fe_values("study", "p/f/value").unwrap(),
        vec![(0, vec![1; 32]), (1, vec![2; 32])]
    );
    s.fe_put_values("study", "p/f/square", &[(0, vec![5; 32])])
        .unwrap();
    assert_eq!(s.fe_labels("study").unwrap(), ["p/f/square", "p/f/value"]);
    // Releases: recorded once by id; the check sees the earlier ones and
    // may refuse.
    let release = |id: &str, patients: &[&str]| asclepios_store::ReleaseRow {
        release_id: id.into(),
        study: "study".into(),
        label: "p/f/value".into(),
        patients: people(patients),
        epsilon_micro: 1_000_000,
    };
    let r1 = release("r1", &["p1", "p2"]);
    let ok = &mut |_: &[asclepios_store::ReleaseRow]| -> Result<(), String> { Ok(()) };
    assert_eq!(s.fe_add_release(&r1, ok).unwrap(), Ok(true));
    assert_eq!(s.fe_add_release(&r1, ok).unwrap(), Ok(false));
    let refuse = &mut |_: &[asclepios_store::ReleaseRow]| Err("no".to_string());
    assert_eq!(
        s.fe_add_release(&release("r2", &["p3"]), refuse).unwrap(),
        Err("no".to_string())
    );
    assert_eq!(s.fe_releases().unwrap(), vec![r1]);
}

fn component_appraisals_are_replaced(h: &Harness) {
    // As the key authority opens it: with its state authenticated.
    let s = h.open_protected().unwrap();
    assert_eq!(s.component("lab-a").unwrap(), None);
    let mut c = asclepios_store::Component {
        identity_id: "lab-a".into(),
        format: "tdx-dcap".into(),
        measurement: "ab".repeat(48),
        trust: "affirming".into(),
        appraisal: "affirming (tdx-dcap)".into(),
        key_sha256: vec![7; 32],
        attested_at: 100,
        expires_at: 200,
    };
    s.put_component(&c).unwrap();
    assert_eq!(s.component("lab-a").unwrap().as_ref(), Some(&c));
    c.trust = "contraindicated".into();
    c.attested_at = 150;
    s.put_component(&c).unwrap();
    assert_eq!(s.component("lab-a").unwrap(), Some(c));
}

fn directory_tracks_attribute_versions(h: &Harness) {
    // As the key authority opens it: with its state authenticated.
    let s = h.open_protected().unwrap();
    for id in ["dr-a", "dr-b"] {
        s.put_identity(&identity(id)).unwrap();
        assert_eq!(s.grant_attribute(id, "role:doctor").unwrap(), 0);
    }
    assert!(matches!(
        s.grant_attribute("nobody", "role:doctor"),
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(
        s.attribute_holders("role:doctor").unwrap(),
        ["dr-a", "dr-b"]
    );
    assert_eq!(s.revoke_attribute("dr-a", "role:doctor").unwrap(), 1);
    assert!(matches!(
        s.revoke_attribute("dr-a", "role:doctor"),
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(s.attribute_version("role:doctor").unwrap(), 1);
    assert_eq!(s.attribute_holders("role:doctor").unwrap(), ["dr-b"]);
    assert!(s.identity_attributes("dr-a").unwrap().is_empty());
    // Granted again: at the new version.
    assert_eq!(s.grant_attribute("dr-a", "role:doctor").unwrap(), 1);
    let mut revoked = identity("dr-b");
    revoked.status = IdentityStatus::Revoked;
    s.put_identity(&revoked).unwrap();
    assert_eq!(
        s.identity("dr-b").unwrap().unwrap().status,
        IdentityStatus::Revoked
    );
    assert_eq!(s.identities().unwrap().len(), 2);
}

fn consents_keep_their_history(h: &Harness) {
    // As the key authority opens it: with its state authenticated.
    let s = h.open_protected().unwrap();
    let mut c = Consent {
        patient: "p1".into(),
        consent_id: "c1".into(),
        version: 0,
        grantee: "org:cardiology".into(),
        scope: "Observation".into(),
        status: ConsentStatus::Active,
        document: Some(b"{}".to_vec()),
        updated_at: 0,
    };
    assert_eq!(s.put_consent(&c).unwrap(), 1);
    c.status = ConsentStatus::Withdrawn;
    c.document = None;
    assert_eq!(s.put_consent(&c).unwrap(), 2);
    c.consent_id = "c2".into();
    c.status = ConsentStatus::Active;
    assert_eq!(s.put_consent(&c).unwrap(), 1);
    let now = s.consents("p1").unwrap();
    assert_eq!(now.len(), 2);
    assert_eq!(
        (now[0].consent_id.as_str(), now[0].status),
        ("c1", ConsentStatus::Withdrawn)
    );
    assert_eq!(now[0].document, None);
    let history = s.consent_history("p1", "c1").unwrap();
    assert_eq!(
        history.iter().map(|c| c.version).collect::<Vec<_>>(),
        [1, 2]
    );
    assert_eq!(history[0].document.as_deref(), Some(&b"{}"[..]));
    assert!(s.consents("p2").unwrap().is_empty());
}

fn emergency_grants_queue_for_review(h: &Harness) {
    // As the key authority opens it: with its state authenticated.
    let s = h.open_protected().unwrap();
    let g = EmergencyGrant {
        patient: "p1".into(),
        grant_id: "g1".into(),
        clinician: "dr-er".into(),
        reason: "unconscious, suspected overdose".into(),
        issued_at: 1000,
        expires_at: 4600,
        reviewed_by: None,
        reviewed_at: None,
    };
    s.put_emergency_grant(&g).unwrap();
    assert!(matches!(
        s.put_emergency_grant(&g),
        Err(StoreError::Conflict(_))
    ));
    let g2 = EmergencyGrant {
        grant_id: "g2".into(),
        issued_at: 2000,
        ..g.clone()
    };
    s.put_emergency_grant(&g2).unwrap();
    let queue = s.unreviewed_emergency_grants().unwrap();
    assert_eq!(
        queue
            .iter()
            .map(|g| g.grant_id.as_str())
            .collect::<Vec<_>>(),
        ["g1", "g2"]
    );
    s.review_emergency_grant("p1", "g1", "auditor-1").unwrap();
    assert!(matches!(
        s.review_emergency_grant("p1", "g1", "auditor-1"),
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(s.unreviewed_emergency_grants().unwrap().len(), 1);
    let all = s.emergency_grants("p1").unwrap();
    assert_eq!(all[0].grant_id, "g2");
    assert_eq!(all[1].reviewed_by.as_deref(), Some("auditor-1"));
}

fn signer() -> NoteSigner {
    NoteSigner::from_seed("audit.asclepios.test", &[42; 32]).unwrap()
}

fn entry(i: u64) -> Vec<u8> {
    format!("entry {i}").into_bytes()
}

fn append_range(log: &Log<asclepios_store::Store>, range: std::ops::Range<u64>, batch: usize) {
    let entries: Vec<Vec<u8>> = range.map(entry).collect();
    for chunk in entries.chunks(batch) {
        let refs: Vec<&[u8]> = chunk.iter().map(Vec::as_slice).collect();
        log.append(&refs).unwrap();
    }
}

const ORIGIN: &str = "audit.asclepios.test/main";

fn open_log(h: &Harness) -> Log<asclepios_store::Store> {
    Log::open(h.open(), "main", ORIGIN, signer()).unwrap()
}

fn log_proofs_match_an_in_memory_tree(h: &Harness) {
    let log = open_log(h);
    let mut memory = MemoryTree::new();
    let mut appended = 0u64;
    for batch in [1usize, 2, 3, 5, 8, 13, 21, 34] {
        append_range(&log, appended..appended + batch as u64, batch);
        for i in appended..appended + batch as u64 {
            memory.push(&entry(i));
        }
        appended += batch as u64;
        let (size, root) = log.head();
        assert_eq!((size, root), (memory.size(), memory.root()));
    }
    for size in [1, 2, 7, 64, 87] {
        assert_eq!(log.root_at(size).unwrap(), memory.root_at(size));
        for index in [0, size / 2, size - 1] {
            let proof = log.prove_inclusion(index, size).unwrap();
            assert_eq!(proof, memory.prove_inclusion(index, size));
            merkle::verify_inclusion(
                index,
                size,
                &merkle::leaf_hash(&entry(index)),
                &proof,
                &memory.root_at(size),
            )
            .unwrap();
        }
        for old in [0, 1, size / 3, size] {
            let proof = log.prove_consistency(old, size).unwrap();
            merkle::verify_consistency(
                old,
                size,
                &memory.root_at(old),
                &memory.root_at(size),
                &proof,
            )
            .unwrap();
        }
    }
    assert!(log.prove_inclusion(87, 87).is_err());
    assert!(log.prove_inclusion(0, 88).is_err());
    let note = log.checkpoint().unwrap();
    let cp = Checkpoint::verify(&note, &log.verifier()).unwrap();
    assert_eq!((cp.size, cp.root), (87, memory.root()));
    assert_eq!(cp.origin, "audit.asclepios.test/main");
    // Same size: the same checkpoint, not a second signature.
    assert_eq!(log.checkpoint().unwrap(), note);
    assert_eq!(log.entries(10..12).unwrap(), vec![entry(10), entry(11)]);
}

/// The key authority and the record service append to one log; both may
/// reach the same size and sign it at once. The second insert of the same
/// note succeeds; another note for that size is a fork and is refused.
fn two_writers_may_sign_the_same_checkpoint(h: &Harness) {
    let log = open_log(h);
    append_range(&log, 0..10, 5);
    let note = log.checkpoint().unwrap();
    let store = h.open();
    store.log_put_checkpoint("main", 10, &note).unwrap();
    let forked = note.replacen('\n', " \n", 1);
    assert!(matches!(
        store.log_put_checkpoint("main", 10, &forked),
        Err(asclepios_store::StoreError::Conflict(_))
    ));
    assert_eq!(
        store.log_latest_checkpoint("main").unwrap(),
        Some((10, note))
    );
}

/// The services' two trails on one log, each with concurrent callers (group
/// commit in both, racing appends and checkpoints): every event gets its
/// receipt, none is lost.
fn two_trails_record_concurrently(h: &Harness) {
    use asclepios_audit::{Action, AuditEvent, AuditTrail, Outcome};
    use rand_chacha::rand_core::SeedableRng;
    const THREADS: usize = 4;
    const EVENTS: usize = 40;
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(5);
    let (mpk, _) = asclepios_crypto::abe::setup(&mut rng);
    let trails: Vec<AuditTrail<asclepios_store::Store>> = ["authority", "records"]
        .iter()
        .map(|name| {
            AuditTrail::new(
                open_log(h),
                mpk.clone(),
                Vec::new(),
                name,
                ed25519_dalek::SigningKey::from_bytes(&[7; 32]),
            )
        })
        .collect();
    std::thread::scope(|s| {
        for trail in &trails {
            for t in 0..THREADS {
                s.spawn(move || {
                    for i in 0..EVENTS {
                        let event = AuditEvent::new(
                            "dr-a",
                            Action::Read,
                            format!("Observation/{t}-{i}"),
                            Some("pat-1"),
                            Outcome::Success,
                            None,
                        );
                        trail
                            .record(&event, &[0; 32], 200)
                            .unwrap_or_else(|e| panic!("event {t}-{i} not logged: {e}"));
                    }
                });
            }
        }
    });
    let log = open_log(h);
    assert_eq!(log.head().0, (2 * THREADS * EVENTS) as u64);
    Checkpoint::verify(&log.checkpoint().unwrap(), &log.verifier()).unwrap();
}

fn log_survives_reopening(h: &Harness) {
    let log = open_log(h);
    append_range(&log, 0..100, 7);
    let first = log.checkpoint().unwrap();
    drop(log);
    let log = open_log(h);
    assert_eq!(log.head().0, 100);
    append_range(&log, 100..150, 50);
    let second = Checkpoint::verify(&log.checkpoint().unwrap(), &log.verifier()).unwrap();
    let first = Checkpoint::verify(&first, &log.verifier()).unwrap();
    let proof = log.prove_consistency(first.size, second.size).unwrap();
    merkle::verify_consistency(first.size, second.size, &first.root, &second.root, &proof).unwrap();
}

/// Entries about a subject (a patient) are tagged and linked: each names
/// the previous one about the same subject, across batches and writers,
/// and a subject's entries are served without anyone else's.
fn entries_about_a_subject_are_chained_and_served_alone(h: &Harness) {
    let log = open_log(h);
    let (a, b) = (log.subject("pat-a"), log.subject("pat-b"));
    assert_ne!(a, b);
    assert_eq!(a, open_log(h).subject("pat-a"), "one log, one tag per name");
    let batch: Vec<Vec<u8>> = (0..5).map(entry).collect();
    let refs: Vec<&[u8]> = batch.iter().map(Vec::as_slice).collect();
    log.append_about(&refs, &[Some(a), Some(b), Some(a), None, Some(a)])
        .unwrap();
    // Another writer of the same log links to what the first wrote.
    let other = open_log(h);
    let (range, leaves) = other.append_about(&refs[..2], &[Some(b), Some(a)]).unwrap();
    assert_eq!(range, 5..7);
    let about_a = log.entries_about(&a, 0..7, 100).unwrap();
    assert_eq!(
        about_a.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
        [0, 2, 4, 6]
    );
    let links: Vec<Option<u64>> = about_a
        .iter()
        .map(|(_, leaf)| LinkedLeaf::from_bytes(leaf).unwrap().unwrap().previous)
        .collect();
    assert_eq!(links, [None, Some(0), Some(2), Some(4)]);
    assert_eq!(
        LinkedLeaf::from_bytes(&about_a[3].1)
            .unwrap()
            .unwrap()
            .entry,
        entry(1)
    );
    assert_eq!(merkle::leaf_hash(&about_a[3].1), leaves[1]);
    let about_b = log.entries_about(&b, 0..7, 100).unwrap();
    assert_eq!(about_b.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [1, 5]);
    // The last entry about each subject before a bound: a few subjects (a
    // seek each) and many (one query per chunk) agree.
    let store = h.open();
    let last = |subjects: &[[u8; 16]], before| {
        store
            .log_last_about("main", subjects, before)
            .unwrap()
            .into_iter()
            .map(|found| found.map(|(i, _)| i))
            .collect::<Vec<_>>()
    };
    assert_eq!(last(&[a, b], 7), [Some(6), Some(5)]);
    assert_eq!(last(&[a, b], 5), [Some(4), Some(1)]);
    assert_eq!(last(&[a, b], 1), [Some(0), None]);
    let mut many = vec![a, b];
    many.extend((0..30u8).map(|i| [i; 16]));
    let found = last(&many, 7);
    assert_eq!(found[..2], [Some(6), Some(5)]);
    assert!(found[2..].iter().all(Option::is_none));
    assert_eq!(last(&many, 5)[..2], [Some(4), Some(1)]);
    // The entry about nobody is stored as it is, and served to no subject.
    assert_eq!(log.entries(3..4).unwrap(), [entry(3)]);
    assert_eq!(LinkedLeaf::from_bytes(&entry(3)).unwrap(), None);
    // A limit and a range cut the answer.
    assert_eq!(log.entries_about(&a, 1..7, 2).unwrap().len(), 2);
    assert_eq!(log.entries_about(&a, 3..5, 100).unwrap().len(), 1);
    // And the tree still verifies as a whole.
    let cp = Checkpoint::verify(&log.checkpoint().unwrap(), &log.verifier()).unwrap();
    let proof = log.prove_inclusion(6, cp.size).unwrap();
    merkle::verify_inclusion(6, cp.size, &leaves[1], &proof, &cp.root).unwrap();
    // Proofs of many entries in one read are the same proofs.
    let many = log.prove_inclusions(&[0, 2, 4, 6], cp.size).unwrap();
    for (i, index) in [0, 2, 4, 6].into_iter().enumerate() {
        assert_eq!(many[i], log.prove_inclusion(index, cp.size).unwrap());
    }
    assert!(log.prove_inclusions(&[7], cp.size).is_err());

    // The DB admin untags a's last entry: the process that wrote it still
    // links to it.
    h.raw("UPDATE audit_entries SET subject = NULL WHERE idx = 6");
    let (range, _) = other.append_about(&refs[..1], &[Some(a)]).unwrap();
    let linked = |i: u64| {
        LinkedLeaf::from_bytes(&log.entries(i..i + 1).unwrap()[0])
            .unwrap()
            .unwrap()
    };
    assert_eq!(linked(range.start).previous, Some(6));
    // A writer that starts afresh trusts the tags: its link skips the
    // untagged entries, and the full audit of the log says so.
    h.raw("UPDATE audit_entries SET subject = NULL WHERE idx >= 6");
    let fresh = open_log(h);
    let (range, _) = fresh.append_about(&refs[..1], &[Some(a)]).unwrap();
    assert_eq!(linked(range.start).previous, Some(4));
    let note = fresh.checkpoint().unwrap();
    let e = audit_entries(fresh.store(), "main", ORIGIN, &note, &fresh.verifier()).unwrap_err();
    assert!(
        e.to_string().contains("previous entry about its subject"),
        "{e}"
    );
    // A leaf re-tagged with another subject is not linked to.
    h.raw(&format!(
        "UPDATE audit_entries SET subject = (SELECT subject FROM audit_entries WHERE idx = 1) WHERE idx = {}",
        range.start
    ));
    let e = open_log(h)
        .append_about(&refs[..1], &[Some(b)])
        .unwrap_err();
    assert!(e.to_string().contains("does not name"), "{e}");
}

fn tampered_entries_are_caught_against_a_checkpoint(h: &Harness) {
    let tampers = [
        ("change", "UPDATE audit_entries SET entry = (SELECT entry FROM audit_entries WHERE idx = 36) WHERE idx = 37"),
        ("remove", "DELETE FROM audit_entries WHERE idx = 50"),
        (
            "reorder",
            "UPDATE audit_entries SET idx = -1 WHERE idx = 10; UPDATE audit_entries SET idx = 10 WHERE idx = 11; UPDATE audit_entries SET idx = 11 WHERE idx = -1",
        ),
        (
            "insert",
            "UPDATE audit_entries SET idx = -idx - 1000 WHERE idx >= 20; UPDATE audit_entries SET idx = -idx - 999 WHERE idx < 0; \
             INSERT INTO audit_entries (log_id, idx, entry, subtree_hashes) SELECT log_id, 20, entry, subtree_hashes FROM audit_entries WHERE idx = 3",
        ),
    ];
    for (what, sql) in tampers {
        let fresh = Harness::new(h.kind());
        let log = open_log(&fresh);
        append_range(&log, 0..100, 16);
        let note = log.checkpoint().unwrap();
        append_range(&log, 100..120, 16);
        audit_entries(log.store(), "main", ORIGIN, &note, &log.verifier()).unwrap();
        fresh.raw(sql);
        let e = audit_entries(log.store(), "main", ORIGIN, &note, &log.verifier())
            .unwrap_err()
            .to_string();
        // Either the entries no longer hash to the root, or the stored
        // subtree hashes no longer line up with them.
        assert!(
            e.contains("inconsistent") || e.contains("corrupt"),
            "{what}: {e}"
        );
    }
}

fn tampered_nodes_stop_the_next_checkpoint(h: &Harness) {
    let log = open_log(h);
    append_range(&log, 0..64, 64);
    log.checkpoint().unwrap();
    append_range(&log, 64..70, 6);
    // Rewrite history in the stored hashes behind the log's back.
    // Row 63 holds the hashes of the subtrees ending at leaf 63, up to the one
    // of leaves 0..64; give it row 31's instead.
    h.raw("UPDATE audit_entries SET subtree_hashes = (SELECT subtree_hashes FROM audit_entries WHERE idx = 31) WHERE idx = 63");
    let log = Log::open(h.open(), "main", "audit.asclepios.test/main", signer());
    let e = log
        .map_err(|e| e.to_string())
        .and_then(|log| log.checkpoint().map_err(|e| e.to_string()))
        .unwrap_err();
    assert!(e.contains("inconsistent") || e.contains("corrupt"), "{e}");
    assert_eq!(
        LogStore::log_latest_checkpoint(&h.open(), "main")
            .unwrap()
            .unwrap()
            .0,
        64
    );
}

fn forged_checkpoints_are_refused(h: &Harness) {
    let log = open_log(h);
    append_range(&log, 0..10, 10);
    let note = log.checkpoint().unwrap();
    let forged = note.replacen("\n10\n", "\n9\n", 1);
    assert!(audit_entries(log.store(), "main", ORIGIN, &forged, &log.verifier()).is_err());
    let other = NoteSigner::from_seed("audit.asclepios.test", &[1; 32]).unwrap();
    let mut cp = Checkpoint::verify(&note, &log.verifier()).unwrap();
    cp.root = [0; 32];
    let mis_signed = cp.sign(&other).unwrap();
    assert!(audit_entries(log.store(), "main", ORIGIN, &mis_signed, &log.verifier()).is_err());
    // A forged checkpoint stored behind the log's back stops it signing.
    LogStore::log_put_checkpoint(log.store(), "main", 11, &mis_signed).unwrap();
    append_range(&log, 10..12, 2);
    assert!(log.checkpoint().is_err());
}

fn concurrent_writers_never_fork_the_log(h: &Harness) {
    let a = open_log(h);
    let b = open_log(h);
    append_range(&a, 0..5, 5);
    // `b` still believes the log is empty; its append must land after `a`'s.
    let range = b.append(&[b"from b"]).unwrap();
    assert_eq!(range, 5..6);
    append_range(&a, 6..8, 2);
    let log = open_log(h);
    assert_eq!(log.head().0, 8);
    let mut memory = MemoryTree::new();
    for e in log.entries(0..8).unwrap() {
        memory.push(&e);
    }
    assert_eq!(log.head().1, memory.root());
    log.checkpoint().unwrap();
}

fn tampered_subtree_hashes_are_caught_by_the_audit(h: &Harness) {
    let log = open_log(h);
    append_range(&log, 0..100, 10);
    let note = log.checkpoint().unwrap();
    audit_entries(log.store(), "main", ORIGIN, &note, &log.verifier()).unwrap();
    // Rows 62 and 60 each hold one hash (their leaf's): swap in the wrong one.
    h.raw("UPDATE audit_entries SET subtree_hashes = (SELECT subtree_hashes FROM audit_entries WHERE idx = 60) WHERE idx = 62");
    let e = audit_entries(log.store(), "main", ORIGIN, &note, &log.verifier()).unwrap_err();
    assert!(e.to_string().contains("level 0 index 62"), "{e}");
    let e = audit_entries(
        log.store(),
        "main",
        "another/origin",
        &note,
        &log.verifier(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("another/origin"), "{e}");
}

fn deleting_checkpoints_does_not_let_history_be_rewritten(h: &Harness) {
    let log = open_log(h);
    append_range(&log, 0..20, 20);
    let published = log.checkpoint().unwrap();
    // Someone with the database's keys rewrites history and deletes the
    // checkpoint rows, then the service restarts.
    h.raw("DELETE FROM audit_checkpoints; DELETE FROM audit_entries; DELETE FROM audit_logs;");
    drop(log);
    let log = open_log(h);
    append_range(&log, 100..125, 25);
    // Told of the checkpoint it published (kept outside the database), the log
    // refuses to sign the rewritten history.
    log.trust_checkpoint(&published).unwrap();
    let e = log.checkpoint().unwrap_err();
    assert!(e.to_string().contains("inconsistent"), "{e}");
    // In the same process it remembers by itself.
    let h2 = Harness::new(h.kind());
    let log = open_log(&h2);
    append_range(&log, 0..20, 20);
    log.checkpoint().unwrap();
    h2.raw("DELETE FROM audit_checkpoints; DELETE FROM audit_entries; DELETE FROM audit_logs;");
    append_range(&log, 500..530, 10);
    let e = log.checkpoint().unwrap_err();
    assert!(e.to_string().contains("inconsistent"), "{e}");
    let other = NoteSigner::from_seed("audit.asclepios.test", &[1; 32]).unwrap();
    let foreign = Checkpoint::verify(&published, &signer().verifier())
        .unwrap()
        .sign(&other)
        .unwrap();
    assert!(log.trust_checkpoint(&foreign).is_err());
}

fn a_stale_writer_catches_up_before_signing(h: &Harness) {
    let a = open_log(h);
    let b = open_log(h);
    append_range(&a, 0..10, 10);
    a.checkpoint().unwrap();
    // `b` last saw an empty log; it catches up instead of crying tamper.
    let note = b.checkpoint().unwrap();
    assert_eq!(Checkpoint::verify(&note, &b.verifier()).unwrap().size, 10);
    assert_eq!(b.prove_inclusion(3, 10).unwrap().len(), 4);
    assert_eq!(b.entries(9..10).unwrap(), vec![entry(9)]);
}

fn tampered_upper_hashes_are_refused_at_open(h: &Harness) {
    let log = open_log(h);
    append_range(&log, 0..100, 100);
    drop(log);
    // Rows 15 and 47 each end a 16-leaf subtree (levels 0..=4): swap row 47's
    // hashes for row 15's, as someone editing the database might.
    h.raw("UPDATE audit_entries SET subtree_hashes = (SELECT subtree_hashes FROM audit_entries WHERE idx = 15) WHERE idx = 47");
    let e = Log::open(h.open(), "main", ORIGIN, signer()).unwrap_err();
    assert!(e.to_string().contains("does not match its children"), "{e}");
}

fn wrapper_scans_page_through_everything_once(h: &Harness) {
    let s = h.open();
    for (p, r) in [("p2", "b"), ("p1", "z"), ("p1", "a"), ("p3", "a")] {
        s.put_record_version(p, r, 1, b"body", &[("main", b"w", 0), ("extra", b"x", 0)])
            .unwrap();
    }
    s.put_record_version("p1", "a", 2, b"body", &[("main", b"w2", 0)])
        .unwrap();
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = s.scan_wrappers(after.as_ref(), 2).unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last.clone());
        seen.extend(page.into_iter().map(|w| {
            format!(
                "{}/{}/{}/{}",
                w.patient, w.record_id, w.version, w.wrapper.slot
            )
        }));
    }
    assert_eq!(
        seen,
        [
            "p1/a/1/extra",
            "p1/a/1/main",
            "p1/a/2/main",
            "p1/z/1/extra",
            "p1/z/1/main",
            "p2/b/1/extra",
            "p2/b/1/main",
            "p3/a/1/extra",
            "p3/a/1/main"
        ]
    );
}

fn cosigner() -> Cosigner {
    Cosigner::from_seed("witness.asclepios.test/w1", &[43; 32]).unwrap()
}

/// The log with one in-process witness whose state lives in `dir`.
fn open_witnessed_log(h: &Harness, dir: &std::path::Path) -> Log<asclepios_store::Store> {
    let witness =
        Witness::open(dir, cosigner(), [(ORIGIN.to_string(), signer().verifier())]).unwrap();
    Log::open(h.open(), "main", ORIGIN, signer())
        .unwrap()
        .with_witnesses(vec![(cosigner().verifier(), Box::new(witness))], 1)
}

fn witnessed_checkpoints_carry_cosignatures(h: &Harness) {
    let dir = tempfile::tempdir().unwrap();
    let log = open_witnessed_log(h, dir.path());
    append_range(&log, 0..5, 5);
    let note = log.checkpoint().unwrap();
    let (cp, names) = log.witness_policy().verify(&note, &log.verifier()).unwrap();
    assert_eq!((cp.size, names.len()), (5, 1));
    // The stored checkpoint is the cosigned one; asking again at the same
    // size returns it without a second signature.
    assert_eq!(
        log.latest_checkpoint().unwrap().as_deref(),
        Some(note.as_str())
    );
    assert_eq!(log.checkpoint().unwrap(), note);
    append_range(&log, 5..40, 7);
    let later = log.checkpoint().unwrap();
    assert_eq!(
        log.witness_policy()
            .verify(&later, &log.verifier())
            .unwrap()
            .0
            .size,
        40
    );
    // After a restart the witness is asked again from where it stands.
    drop(log);
    let log = open_witnessed_log(h, dir.path());
    let again = log.check_witnesses().unwrap();
    assert_eq!(peek(&again), 40);
    append_range(&log, 40..41, 1);
    assert_eq!(peek(&log.checkpoint().unwrap()), 41);
}

fn peek(note: &str) -> u64 {
    asclepios_audit::log::peek_checkpoint(note).unwrap().size
}

/// H3 of the review, played literally: the database's administrator
/// deletes the log (entries, hashes and checkpoints), writes a history of
/// the same size without an event, and restarts the service.
fn a_rewritten_history_is_refused_by_the_witness_after_a_restart(h: &Harness) {
    let dir = tempfile::tempdir().unwrap();
    let log = open_witnessed_log(h, dir.path());
    append_range(&log, 0..20, 20);
    let published = log.checkpoint().unwrap();
    drop(log);
    h.raw("DELETE FROM audit_checkpoints; DELETE FROM audit_entries; DELETE FROM audit_logs;");
    {
        // The rewritten history, appended without witnesses (as a tool of
        // the administrator's would).
        let forger = open_log(h);
        let mut forged: Vec<Vec<u8>> = (0..20).map(entry).collect();
        forged[7] = b"the break-glass event is gone".to_vec();
        let refs: Vec<&[u8]> = forged.iter().map(Vec::as_slice).collect();
        forger.append(&refs).unwrap();
    }
    h.raw("DELETE FROM audit_checkpoints;");
    let log = open_witnessed_log(h, dir.path());
    let e = log.check_witnesses().unwrap_err();
    assert!(e.to_string().contains("witness"), "{e}");
    assert!(log.alarm().is_some());
    // No fork was stored, and nothing is signed from now on.
    assert_eq!(log.latest_checkpoint().unwrap(), None);
    append_range(&log, 20..21, 1);
    assert!(log.checkpoint().is_err());
    let witness = Witness::open(
        dir.path(),
        cosigner(),
        [(ORIGIN.to_string(), signer().verifier())],
    )
    .unwrap();
    assert_eq!(witness.latest(ORIGIN).map(|(s, _)| s), Some(20));
    assert!(!witness.evidence().is_empty());
    // Truncation (entries deleted, a shorter log) is refused as well.
    drop(log);
    let h2 = Harness::new(h.kind());
    let dir2 = tempfile::tempdir().unwrap();
    let log = open_witnessed_log(&h2, dir2.path());
    append_range(&log, 0..20, 20);
    log.checkpoint().unwrap();
    drop(log);
    h2.raw("DELETE FROM audit_checkpoints; DELETE FROM audit_entries; DELETE FROM audit_logs;");
    let shorter = open_log(&h2);
    append_range(&shorter, 0..12, 12);
    drop(shorter);
    let log = open_witnessed_log(&h2, dir2.path());
    assert!(log.check_witnesses().is_err());
    assert!(log.alarm().is_some());
    let _ = published;
}
