//! What bad input gets from the services: a 4xx with a JSON error naming the
//! problem, never a 5xx, nothing written; refused accesses are audited.

mod common;

use asclepios_deploy::Config;
use asclepios_net::client::SignedClient;
use reqwest::Method;

/// (service, method, path, body, expected status, what the error must say)
type Case<'a> = (&'a SignedClient, Method, &'a str, Vec<u8>, u16, &'a str);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_4xx_json_errors() {
    let d = common::deploy(false).await;
    let dir = d.dir.clone();
    let read = |p: &str| std::fs::read_to_string(dir.join(p)).unwrap();
    let records = SignedClient::new(
        &d.records_url,
        asclepios_deploy::config::RECORDS_TLS_NAME,
        "dr-heart",
        &read("pki/ca.pem"),
        &read("identities/dr-heart.pem"),
        &read("identities/dr-heart.key"),
    )
    .unwrap();
    let authority = SignedClient::new(
        &d.authority_url,
        asclepios_deploy::config::AUTHORITY_TLS_NAME,
        "dr-heart",
        &read("pki/ca.pem"),
        &read("identities/dr-heart.pem"),
        &read("identities/dr-heart.key"),
    )
    .unwrap();
    let valid_put = serde_json::json!({
        "patient": "pat-00000", "record_id": "r0123456789abcdef0123456789abcdef", "version": 1,
        "body": "AAAA", "wrapper": "AAAA", "author_signature": "AAAA"
    });
    // A record id that says what the record is (a FHIR id) is refused.
    let mut clear_id = valid_put.clone();
    clear_id["record_id"] = serde_json::json!("obs-00000-1-2");
    let mut unknown_field = valid_put.clone();
    unknown_field["extra"] = serde_json::json!(1);
    let cases: Vec<Case> = vec![
        (
            &records,
            Method::POST,
            "/v1/records",
            b"{not json".to_vec(),
            400,
            "malformed request",
        ),
        (
            &records,
            Method::POST,
            "/v1/records",
            serde_json::to_vec(&unknown_field).unwrap(),
            400,
            "unknown field",
        ),
        (
            &records,
            Method::POST,
            "/v1/records",
            serde_json::to_vec(&valid_put).unwrap(),
            400,
            "body",
        ),
        (
            &records,
            Method::POST,
            "/v1/records",
            serde_json::to_vec(&clear_id).unwrap(),
            400,
            "opaque id",
        ),
        (
            &records,
            Method::POST,
            "/v1/records",
            vec![b'x'; 9 << 20],
            413,
            "exceeds",
        ),
        (
            &records,
            Method::GET,
            "/v1/records/pat-00000/nope",
            vec![],
            404,
            "no record",
        ),
        (
            &records,
            Method::GET,
            "/v1/records/pat-00000/nope?version=abc",
            vec![],
            400,
            "query",
        ),
        (
            &records,
            Method::GET,
            "/v1/audit/entries?start=-1",
            vec![],
            400,
            "query",
        ),
        (
            &authority,
            Method::POST,
            "/v1/policy/resolve",
            br#"{"policy": "a and"}"#.to_vec(),
            400,
            "expected",
        ),
        (
            &authority,
            Method::POST,
            "/v1/emergency",
            b"[]".to_vec(),
            400,
            "malformed",
        ),
        (
            &authority,
            Method::POST,
            "/v1/consents",
            br#"{"grantee": "x"}"#.to_vec(),
            400,
            "malformed",
        ),
        (
            &authority,
            Method::POST,
            "/v1/directory/identities",
            b"{not json".to_vec(),
            400,
            "malformed",
        ),
        (
            &authority,
            Method::PUT,
            "/v1/directory/identities/nurse-ward/attributes",
            br#"{"attributes": "role:admin"}"#.to_vec(),
            400,
            "malformed",
        ),
    ];
    for (client, method, path, body, want, says) in cases {
        let response = client.send(method.clone(), path, body).await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        assert_eq!(status, want, "{method} {path}: {text}");
        if !says.is_empty() {
            assert!(text.contains(says), "{method} {path}: {text}");
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert!(v["error"].is_string(), "{text}");
        }
    }
    // Nothing was written, and the refusals are in the record service's
    // audit log.
    let r = d.records_dir.clone();
    let (records_count, log_size) = tokio::task::spawn_blocking(move || {
        let store = Config::load(&r).unwrap().open_store(&r).unwrap();
        let n = store.patient_records("pat-00000").unwrap().len();
        let size = asclepios_audit::LogStore::log_size(&store, "audit").unwrap();
        (n, size)
    })
    .await
    .unwrap();
    assert_eq!(records_count, 0);
    assert!(
        log_size >= 2,
        "refused accesses are audited ({log_size} entries)"
    );
    // Malformed directory changes too, in the authority's log, for the
    // auditors.
    let a = dir.clone();
    let refused = tokio::task::spawn_blocking(move || {
        let store = Config::load(&a).unwrap().open_store(&a).unwrap();
        let key = asclepios_deploy::keys::auditor_secret(&a, "auditor-ann").unwrap();
        let size = asclepios_audit::LogStore::log_size(&store, "audit").unwrap();
        asclepios_audit::LogStore::log_entries(&store, "audit", 0..size)
            .unwrap()
            .iter()
            .filter_map(|e| {
                asclepios_audit::SealedEvent::from_bytes(e)
                    .ok()?
                    .open_as_auditor(&key)
                    .ok()
            })
            .filter(|e| {
                e.action == asclepios_audit::Action::DirectoryChange
                    && e.resource.contains("a malformed request")
                    && e.actor == "dr-heart"
            })
            .count()
    })
    .await
    .unwrap();
    assert_eq!(refused, 2, "malformed directory changes are audited");
}
