//! HTTP request bodies, paths and queries against both services' real
//! routers, on a development deployment created once per process.
//!
//! The input picks a route and a caller (first two bytes); the rest becomes
//! the path suffix (up to the first newline, for routes that take one) and
//! the body. Requests are signed correctly by the chosen identity, so the
//! bytes reach the handlers rather than stop at the signature check. The
//! property: every answer is below 500, whatever the bytes.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use asclepios_deploy::init::{init, SAMPLE_ORGANISATION};
use asclepios_deploy::serve::{routers, Routers};
use asclepios_deploy::Config;
use asclepios_net::pki::PeerIdentity;
use asclepios_net::server::Caller;
use asclepios_net::signature::RequestSigner;
use axum::body::Body;
use axum::http::{Method, Request};
use tower::ServiceExt;

/// Which service a route belongs to.
#[derive(Clone, Copy, Debug)]
enum Service {
    Authority,
    Records,
}

/// Routes: a template ending in `/` or `?` takes a suffix from the input.
const ROUTES: &[(Service, Method, &str)] = &[
    (Service::Records, Method::POST, "/v1/records"),
    (Service::Records, Method::POST, "/v1/search"),
    (Service::Records, Method::POST, "/v1/exports"),
    (Service::Records, Method::POST, "/v1/stats/values"),
    (Service::Records, Method::POST, "/v1/attestation/verdicts"),
    (Service::Records, Method::GET, "/v1/records/"),
    (Service::Records, Method::DELETE, "/v1/records/"),
    (Service::Records, Method::GET, "/v1/patients/"),
    (Service::Records, Method::GET, "/v1/stats/values?"),
    (Service::Records, Method::GET, "/v1/audit/entries?"),
    (Service::Authority, Method::POST, "/v1/keys"),
    (Service::Authority, Method::POST, "/v1/policy/resolve"),
    (Service::Authority, Method::POST, "/v1/emergency"),
    (Service::Authority, Method::POST, "/v1/emergency/reviews"),
    (Service::Authority, Method::GET, "/v1/emergency/reviews?"),
    (Service::Authority, Method::POST, "/v1/consents"),
    (Service::Authority, Method::GET, "/v1/consents?"),
    (Service::Authority, Method::POST, "/v1/consents/"),
    (Service::Authority, Method::GET, "/v1/identities/"),
    (Service::Authority, Method::POST, "/v1/search/tokens"),
    (Service::Authority, Method::POST, "/v1/search/index"),
    (Service::Authority, Method::POST, "/v1/stats/slots"),
    (Service::Authority, Method::POST, "/v1/stats/keys"),
    (Service::Authority, Method::GET, "/v1/attestation/evidence?"),
    (
        Service::Authority,
        Method::POST,
        "/v1/attestation/challenge",
    ),
    (Service::Authority, Method::POST, "/v1/components/register"),
];

struct Harness {
    runtime: tokio::runtime::Runtime,
    routers: Routers,
    callers: Vec<(Caller, RequestSigner)>,
    nonces: AtomicU64,
    _dir: tempfile::TempDir,
}

/// A scratch directory in memory where there is one: the services fsync
/// every audit append, which a disk makes the bottleneck of fuzzing.
fn scratch() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    let made = if shm.is_dir() {
        tempfile::Builder::new()
            .prefix("asclepios-fuzz-")
            .tempdir_in(shm)
    } else {
        tempfile::tempdir()
    };
    made.expect("a scratch directory for the fuzz deployment")
}

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        // The TLS configurations the services build need a process-wide provider.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let dir = scratch();
        let deployment = dir.path().join("deployment");
        init(&deployment, &Config::development()).expect("init a development deployment");
        let routers = routers(&deployment).expect("open the deployment's services");
        let callers = SAMPLE_ORGANISATION
            .iter()
            .map(|s| {
                let pem = std::fs::read_to_string(
                    deployment.join("identities").join(format!("{}.key", s.id)),
                )
                .expect("a sample identity's key");
                let signer = RequestSigner::from_pem(s.id, &pem).expect("an Ed25519 key");
                let identity = PeerIdentity {
                    id: s.id.to_string(),
                    public_key: signer.public_key(),
                };
                (Caller(identity), signer)
            })
            .collect();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        Harness {
            runtime,
            routers,
            callers,
            nonces: AtomicU64::new(0),
            _dir: dir,
        }
    })
}

/// Percent-encodes what cannot stand in a URI; keeps `%`, `/`, `?`, `=` and
/// `&` so that the input can still form broken escapes and extra segments.
fn uri_suffix(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~%/?=&:".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// See the module documentation.
pub fn http_bodies(data: &[u8]) {
    let _ = send(data);
}

/// Sends the request `data` describes (see the module documentation) and
/// returns the answer's status; `None` if the bytes make no request (too
/// short, or a path that is not a URI). Panics on a 5xx answer.
pub fn send(data: &[u8]) -> Option<axum::http::StatusCode> {
    let [route, who, rest @ ..] = data else {
        return None;
    };
    let h = harness();
    let (service, method, template) = &ROUTES[usize::from(*route) % ROUTES.len()];
    let (caller, signer) = &h.callers[usize::from(*who) % h.callers.len()];
    let (path, body) = if template.ends_with('/') || template.ends_with('?') {
        let cut = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
        let body = rest.get(cut + 1..).unwrap_or_default();
        (format!("{template}{}", uri_suffix(&rest[..cut])), body)
    } else {
        (template.to_string(), rest)
    };
    let created = asclepios_net::server::unix_now();
    let nonce = format!("fuzz-{}", h.nonces.fetch_add(1, Ordering::Relaxed));
    let audience = match service {
        Service::Authority => asclepios_deploy::config::AUTHORITY_TLS_NAME,
        Service::Records => asclepios_deploy::config::RECORDS_TLS_NAME,
    };
    let Ok(signed) = signer.sign(method.as_str(), audience, &path, body, created, &nonce) else {
        return None; // a path the client would not sign
    };
    let Ok(request) = Request::builder()
        .method(method.clone())
        .uri(&path)
        .header("content-type", "application/json")
        .header("content-digest", &signed.content_digest)
        .header("signature-input", &signed.signature_input)
        .header("signature", &signed.signature)
        .extension(caller.clone())
        .body(Body::from(body.to_vec()))
    else {
        return None; // not a URI
    };
    let router = match service {
        Service::Authority => h.routers.authority.clone(),
        Service::Records => h.routers.records.clone(),
    };
    let response = h
        .runtime
        .block_on(router.oneshot(request))
        .expect("routers are infallible");
    let status = response.status();
    if status.is_server_error() {
        let text = h
            .runtime
            .block_on(axum::body::to_bytes(response.into_body(), 1 << 16))
            .unwrap_or_default();
        panic!(
            "{method} {path} as {} answered {status}: {}\nbody sent: {}",
            caller.0.id,
            String::from_utf8_lossy(&text),
            String::from_utf8_lossy(body)
        );
    }
    Some(status)
}
