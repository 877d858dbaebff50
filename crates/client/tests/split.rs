//! The two trust domains apart: the key authority serves from its data
//! directory, the record service from a directory of its own, each on its
//! own store, talking over mutual TLS as their service identities. Records
//! are written, read, searched and revoked; the patient reads both logs;
//! and the record service's directory holds no secret of the authority's.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use asclepios_client::ClientError;
use asclepios_deploy::{keys, Config};
use asclepios_fhir::synth::Generator;
use common::{client, connection, contains, deploy, Domain};

/// Retries `f` while the record service still waits for the authority's
/// first facts (503), for at most a few seconds.
async fn once_up<T, F: std::future::Future<Output = Result<T, ClientError>>>(
    mut f: impl FnMut() -> F,
) -> Result<T, ClientError> {
    for _ in 0..100 {
        match f().await {
            Err(ClientError::Refused { status: 503, .. }) => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            other => return other,
        }
    }
    f().await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_services_apart_play_every_part_on_sqlite() {
    the_services_apart_play_every_part(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_services_apart_play_every_part_on_postgres() {
    the_services_apart_play_every_part(true).await;
}

async fn the_services_apart_play_every_part(postgres: bool) {
    let s = deploy(postgres).await;
    let mut generator = Generator::new(7);
    let bundle = generator.patient(1);
    let pid = bundle.patient_id().to_string();
    let observation = generator.blood_pressure(&pid);
    let policy = Config::load(&s.dir).unwrap().default_policy(&pid);

    let mut heart = client(&s, "dr-heart");
    heart.refresh_key().await.unwrap();
    let record_id = heart.record_id_for(&pid, &observation).await.unwrap();
    heart
        .put_record(&pid, &record_id, 1, &observation, &policy)
        .await
        .expect("the record service takes a record");

    let mut patient = client(&s, &pid);
    patient.refresh_key().await.unwrap();
    let (read, _) = patient.get_record(&pid, &record_id).await.unwrap();
    assert_eq!(read, observation);

    // Search: the authority wrote the index into the record service's store.
    let found = heart.search("type:Observation").await.unwrap();
    assert!(found.iter().any(|m| m.record_id == record_id), "{found:?}");

    // The nurse reads, then is taken off the care team: the authority
    // re-wraps through the record service, whose view of the directory
    // follows within a poll.
    let mut nurse = client(&s, "nurse-ward");
    nurse.refresh_key().await.unwrap();
    nurse.get_record(&pid, &record_id).await.unwrap();
    let (stale_wrapper, _) = nurse.get_sealed(&pid, &record_id).await.unwrap();
    let admin = client(&s, "admin-ada");
    let change = admin
        .set_identity_attributes(
            "nurse-ward",
            &["role:nurse".into(), "dept:cardiology".into()],
        )
        .await
        .unwrap();
    assert!(change.revocation.rewrapped >= 1, "{change:?}");
    let mut refused = false;
    for _ in 0..50 {
        match nurse.get_record(&pid, &record_id).await {
            Err(ClientError::Refused { status: 403, .. }) => {
                refused = true;
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert!(refused, "the record service still serves the revoked nurse");
    // Until its facts catch up with the re-wrapped policy, the record
    // service answers 503 rather than refuse the care team.
    let (rewrapped, _) = once_up(|| heart.get_sealed(&pid, &record_id))
        .await
        .unwrap();
    assert_ne!(
        rewrapped.wrapper, stale_wrapper.wrapper,
        "the wrapper was re-wrapped"
    );
    assert!(
        nurse.open(&rewrapped).is_err(),
        "the nurse's old key opens the re-wrapped record"
    );

    // Break-glass is logged by the authority, in its own log, and the
    // patient reads it there as well as the reads in the record service's.
    let mut er = client(&s, "dr-er");
    er.refresh_key().await.unwrap();
    er.break_glass(&pid, "unconscious").await.unwrap();
    let views = patient.audit_views().await.unwrap();
    assert_eq!(views.len(), 2, "two logs, each under its own key");
    assert_ne!(views[0].checkpoint.origin, views[1].checkpoint.origin);
    let events = patient.audit_events().await.unwrap();
    assert!(events.iter().any(|e| e.emergency), "{events:?}");
    assert!(
        events
            .iter()
            .any(|e| e.actor == "dr-heart" && e.resource.contains(&record_id)),
        "{events:?}"
    );

    // On PostgreSQL the record service logs in as a role of its own, which
    // owns its schema and may read nothing of the authority's.
    if postgres {
        let records_url = Config::load(&s.records_dir).unwrap().store.url;
        let authority_schema = s.pg_schema.clone().unwrap();
        assert!(
            !records_url.contains("postgres@"),
            "the administrator's role"
        );
        let (own, theirs) = tokio::task::spawn_blocking(move || {
            let mut c = postgres::Client::connect(&records_url, postgres::NoTls).unwrap();
            let own = c
                .query_one(
                    &format!("SELECT count(*) FROM {authority_schema}_records.record_versions"),
                    &[],
                )
                .map(|r| r.get::<_, i64>(0));
            let theirs = c
                .query_one(
                    &format!("SELECT count(*) FROM {authority_schema}.identities"),
                    &[],
                )
                .map(|_| ())
                .map_err(|e| format!("{e:?}"));
            (own, theirs)
        })
        .await
        .unwrap();
        assert!(own.unwrap() >= 1, "the record service reads its own tables");
        let refused =
            theirs.expect_err("the record service's role read the authority's identities");
        assert!(refused.contains("permission denied"), "{refused}");
    }
}

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// A secret, as raw bytes and as the text encodings it could be written in.
fn forms(secret: &[u8]) -> Vec<Vec<u8>> {
    use base64::Engine;
    vec![
        secret.to_vec(),
        hex::encode(secret).into_bytes(),
        base64::engine::general_purpose::STANDARD
            .encode(secret)
            .into_bytes(),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn the_record_service_directory_holds_no_authority_secret() {
    let s = deploy(false).await;
    // Exercise it first: whatever the record service writes while working
    // is scanned too (its store, its log).
    let mut generator = Generator::new(3);
    let bundle = generator.patient(1);
    let pid = bundle.patient_id().to_string();
    let policy = Config::load(&s.dir).unwrap().default_policy(&pid);
    let mut heart = client(&s, "dr-heart");
    heart.refresh_key().await.unwrap();
    heart
        .put_resource(&pid, 1, &bundle.patient, &policy)
        .await
        .unwrap();

    let a = s.dir.clone();
    let mut secrets: Vec<(String, Vec<u8>)> = vec![
        (
            "the ABE master secret".into(),
            keys::abe_master_key(&a).unwrap().to_bytes().to_vec(),
        ),
        (
            "the search key".into(),
            keys::sse_key(&a).unwrap().to_bytes().to_vec(),
        ),
        (
            "the statistics key".into(),
            keys::stats_key(&a).unwrap().to_vec(),
        ),
        (
            "the sealing key".into(),
            std::fs::read(Config::load(&a).unwrap().seal_key_file(&a).unwrap()).unwrap(),
        ),
    ];
    // Every private key file the authority's directory holds: the CA, the
    // authority's issuer, its log's signer, every identity's.
    for path in files(&a) {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        // (The record service's own TLS key is its own, not the authority's.)
        if name.ends_with(".key") && name != "abe-public.key" && name != "records.key" {
            secrets.push((path.display().to_string(), std::fs::read(&path).unwrap()));
        }
        if name.ends_with(".sealed") {
            secrets.push((path.display().to_string(), std::fs::read(&path).unwrap()));
        }
    }
    assert!(secrets.len() > 12, "the scan found the authority's keys");
    let scanned = files(&s.records_dir);
    assert!(
        scanned
            .iter()
            .any(|p| p.extension().is_some_and(|e| e == "db")),
        "the record service's own store is in its directory: {scanned:?}"
    );
    for file in &scanned {
        let bytes = std::fs::read(file).unwrap();
        for (what, secret) in &secrets {
            for form in forms(secret) {
                assert!(!contains(&bytes, &form), "{} holds {what}", file.display());
            }
        }
    }
    // Nor does it hold the record service's identity key twice: it left the
    // authority's directory.
    assert!(!a.join("identities/svc-records.key").exists());
    // Once split, the authority's directory no longer serves both in one
    // process (clients would check the record service's log under the
    // wrong key): `serve` says what to run instead.
    let refused = asclepios_deploy::serve::start(&a, &Default::default())
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("serve authority"), "{refused}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_identity_authors_nothing() {
    let s = deploy(false).await;
    let mut patient = client(&s, "pat-00000");
    patient.refresh_key().await.unwrap();
    // A version "by" the record service's identity is its operator's plant:
    // the authority vouches for no service key as an author's, so the
    // client refuses it whatever its signature.
    let planted = asclepios_api::records::RecordOut {
        patient: "pat-00000".into(),
        record_id: "planted".into(),
        version: 1,
        author: "svc-records".into(),
        body: String::new(),
        wrapper: None,
        author_signature: String::new(),
    };
    let refused = patient.check_author(&planted).await.unwrap_err();
    assert!(
        refused.to_string().contains("service identity"),
        "{refused}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_record_service_cannot_pass_its_log_off_as_the_authoritys() {
    let mut s = deploy(false).await;
    let mut generator = Generator::new(5);
    let bundle = generator.patient(1);
    let pid = bundle.patient_id().to_string();
    let policy = Config::load(&s.dir).unwrap().default_policy(&pid);
    let mut heart = client(&s, "dr-heart");
    heart.refresh_key().await.unwrap();
    heart
        .put_resource(&pid, 1, &bundle.patient, &policy)
        .await
        .unwrap();
    let mut patient = client(&s, &pid);
    patient.refresh_key().await.unwrap();
    assert_eq!(patient.audit_views().await.unwrap().len(), 2);

    // The operator restarts the record service with the authority's log
    // origin and fresh checkpoints under its own key: the client, which
    // tells the two logs apart by key, refuses a checkpoint whose origin
    // is not its key's log.
    drop(s.records.take());
    let config_file = s.records_dir.join("asclepios.toml");
    let authority_origin = Config::load(&s.dir).unwrap().audit.origin;
    let text = std::fs::read_to_string(&config_file).unwrap();
    let forged = text.replace(&format!("{authority_origin}/records"), &authority_origin);
    assert_ne!(forged, text);
    std::fs::write(&config_file, forged).unwrap();
    rusqlite::Connection::open(s.records_dir.join("asclepios.db"))
        .unwrap()
        .execute("DELETE FROM audit_checkpoints", [])
        .unwrap();
    let mut restarted = false;
    for _ in 0..50 {
        match s.start_records().await {
            Ok(()) => {
                restarted = true;
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert!(restarted, "the record service restarts");
    // Something to log, so the restarted service signs a checkpoint.
    let _ = once_up(|| heart.list_records(&pid)).await;
    let refused = match once_up(|| patient.audit_views()).await {
        Err(e) => Some(e.to_string()),
        Ok(views) => panic!(
            "accepted {:?}",
            views
                .iter()
                .map(|v| (v.checkpoint.origin.clone(), v.checkpoint.size))
                .collect::<Vec<_>>()
        ),
    };
    let refused = refused.expect("the client refuses the forged log");
    // The authority's witness refuses to cosign a checkpoint of its own
    // log's origin under the record service's key, so none is served; had
    // one been, the client would refuse the origin its key does not name.
    assert!(
        refused.contains("names the log") || refused.contains("not signed by the log's key"),
        "{refused}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_internal_routes_are_the_authoritys_alone() {
    let s = deploy(false).await;
    let write = |put: Vec<(&str, &str)>| {
        serde_json::to_vec(&serde_json::json!({
            "put": put.iter().map(|(a, v)| [a, v]).collect::<Vec<_>>(),
            "delete": [],
        }))
        .unwrap()
    };
    let entry = ("AAAA", "AQID");
    // A clinician, an administrator and the record service's own identity
    // are refused every internal route.
    for id in ["dr-heart", "admin-ada"] {
        for path in [
            "/v1/internal/index/write",
            "/v1/internal/index/get",
            "/v1/internal/wrappers/scan",
            "/v1/internal/wrappers/replace",
            "/v1/internal/records/version",
        ] {
            let mut status = 503;
            for _ in 0..50 {
                status = connection(&s, Domain::Records, id)
                    .send(reqwest::Method::POST, path, write(vec![entry]))
                    .await
                    .unwrap()
                    .status()
                    .as_u16();
                if status != 503 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert_eq!(status, 403, "{id} on {path}");
        }
    }
    // The authority itself: one write whose address appears twice is the
    // caller's mistake (400), not a storage failure.
    let authority = connection(
        &s,
        Domain::Records,
        asclepios_deploy::init::AUTHORITY_SERVICE_IDENTITY,
    );
    let answer = authority
        .send(
            reqwest::Method::POST,
            "/v1/internal/index/write",
            write(vec![entry, entry]),
        )
        .await
        .unwrap();
    assert_eq!(answer.status(), 400);
    let answer = authority
        .send(
            reqwest::Method::POST,
            "/v1/internal/index/write",
            write(vec![entry]),
        )
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
}

/// A record service that takes connections and never answers (its
/// operator stalling on purpose) holds up no one at the authority for
/// long: a consent and a break-glass grant still answer within the
/// authority's bounded wait for the record service, and key issuance, which
/// changes nothing, does not wait at all.
#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_record_service_does_not_stall_the_authority() {
    let mut s = deploy(false).await;
    drop(s.records.take());
    let mut stalled = None;
    for _ in 0..50 {
        match tokio::net::TcpListener::bind(("127.0.0.1", s.records_port)).await {
            Ok(l) => {
                stalled = Some(l);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let listener = stalled.expect("the record service's port frees");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let limit = Duration::from_secs(10);
    let mut patient = client(&s, "pat-00000");
    patient.refresh_key().await.unwrap();
    let started = std::time::Instant::now();
    patient
        .grant_consent(&asclepios_api::consent::ConsentGrant {
            grantee: "dr-er".into(),
            purpose: "TREAT".into(),
            resource_types: vec!["*".into()],
            expires_at: None,
        })
        .await
        .unwrap();
    assert!(
        started.elapsed() < limit,
        "consent: {:?}",
        started.elapsed()
    );
    let started = std::time::Instant::now();
    let mut heart = client(&s, "dr-heart");
    heart.refresh_key().await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "key issuance: {:?}",
        started.elapsed()
    );
    let mut er = client(&s, "dr-er");
    let started = std::time::Instant::now();
    er.break_glass("pat-00001", "unconscious").await.unwrap();
    er.refresh_key().await.unwrap();
    assert!(
        started.elapsed() < limit,
        "break-glass: {:?}",
        started.elapsed()
    );
}
