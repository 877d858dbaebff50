//! Serving an axum router over mutual TLS.
//!
//! Each connection's TLS handshake must present a client certificate issued
//! by the deployment CA; one that does not never reaches a handler. The
//! verified identity is attached to every request as a [`Caller`]. Routes
//! that change or read records also pass [`require_signature`], which checks
//! the RFC 9421 signature with the certificate's key and refuses replays.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json, Router};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::pki::{peer_identity, PeerIdentity};
use crate::signature::{self, ReplayGuard, SignedHeaders, Verified};

/// The authenticated caller of a request (from its client certificate).
#[derive(Clone, Debug)]
pub struct Caller(pub PeerIdentity);

/// A JSON error response: `{"error": "..."}` with a status.
#[derive(Debug)]
pub struct ApiError {
    /// The HTTP status (4xx for anything the caller can fix).
    pub status: StatusCode,
    /// What was wrong, for the caller.
    pub message: String,
    /// Whether the refusal is already in the audit log (its handler logged
    /// it): the response then carries [`Audited`], and a layer that logs
    /// the refusals handlers never saw leaves it alone.
    pub audited: bool,
}

/// A response extension: this refusal was logged by its handler.
#[derive(Clone, Copy, Debug)]
pub struct Audited;

impl ApiError {
    /// An error with a status and message.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            audited: false,
        }
    }

    /// The same error, marked as logged.
    pub fn logged(mut self) -> Self {
        self.audited = true;
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response();
        if self.audited {
            response.extensions_mut().insert(Audited);
        }
        response
    }
}

/// Response middleware: every error answer is JSON `{"error": "..."}`, also
/// the ones axum's extractors and router make themselves (a malformed path
/// or query, an unknown route, a method not allowed), which are plain text
/// or empty. Clients and the OpenAPI document see one error shape.
pub async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let message = match String::from_utf8_lossy(&text).trim() {
        "" => status
            .canonical_reason()
            .unwrap_or("request refused")
            .to_lowercase(),
        t => t.to_string(),
    };
    let mut json = ApiError::new(status, message).into_response();
    // Keep what the router added (e.g. `Allow` on a 405).
    for (name, value) in &parts.headers {
        if name != axum::http::header::CONTENT_TYPE && name != axum::http::header::CONTENT_LENGTH {
            json.headers_mut().append(name.clone(), value.clone());
        }
    }
    json
}

/// Most concurrent connections per service.
pub const MAX_CONNECTIONS: usize = 4096;

/// A JSON request body, or a 400 naming what is wrong with it.
pub fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("malformed request: {e}")))
}

/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` over mutual TLS until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    app: Router,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let acceptor = TlsAcceptor::from(tls);
    // At most this many connections at once; further ones wait in the
    // kernel's backlog instead of exhausting descriptors.
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    // Told to every open connection when the service stops: a stopped
    // service must not go on answering over connections kept alive.
    let (closing, closed) = tokio::sync::watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return Ok(());
        };
        let (tcp, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                // Out of descriptors or a reset before accept: wait a little
                // and keep serving rather than stop.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => {
                let _ = closing.send(true);
                return Ok(());
            }
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        let mut closed = closed.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let Ok(Ok(stream)) =
                tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
            else {
                return; // no valid client certificate: the handshake failed
            };
            let identity = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| certs.first())
                .map(|der| peer_identity(der.as_ref()));
            let Some(Ok(identity)) = identity else {
                return; // a CA-issued certificate that names no identity
            };
            let service = TowerToHyperService::new(app.layer(Extension(Caller(identity))));
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                // Stopping (or the server gone): finish what is in flight,
                // take nothing new, close.
                () = async {
                    let _ = closed.wait_for(|c| *c).await;
                } => {
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(5), connection).await;
                }
            }
        });
    }
}

/// Per-service state for [`require_signature`].
#[derive(Debug)]
pub struct SignatureCheck {
    /// Remembered nonces.
    pub replays: ReplayGuard,
    /// Largest body accepted.
    pub max_body_bytes: usize,
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn header<'a>(req: &'a Request, name: &str) -> Result<&'a str, ApiError> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                format!("the `{name}` header is required (signed requests, RFC 9421)"),
            )
        })
}

/// Middleware: the body within the limit, signed by the caller's certificate
/// key, fresh, never seen before. Adds the [`Verified`] signature to the
/// request's extensions.
pub async fn require_signature(
    State(check): State<Arc<SignatureCheck>>,
    Extension(Caller(caller)): Extension<Caller>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let headers = SignedHeaders {
        content_digest: header(&req, "content-digest")?.to_string(),
        signature_input: header(&req, "signature-input")?.to_string(),
        signature: header(&req, "signature")?.to_string(),
        request_hash: [0; 32],
    };
    let method = req.method().as_str().to_string();
    let path = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path().to_string(), |p| p.as_str().to_string());
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, check.max_body_bytes)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body exceeds {} bytes", check.max_body_bytes),
            )
        })?;
    let now = unix_now();
    let verified: Verified =
        signature::verify(&method, &path, &bytes, &headers, &caller.public_key, now)
            .map_err(|e| ApiError::new(StatusCode::UNAUTHORIZED, e.to_string()))?;
    if verified.keyid != caller.id {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            format!(
                "the signature's keyid `{}` is not the certificate's identity `{}`",
                verified.keyid, caller.id
            ),
        ));
    }
    check
        .replays
        .check(&verified, now)
        .map_err(|e| ApiError::new(StatusCode::UNAUTHORIZED, e.to_string()))?;
    let mut req = Request::from_parts(parts, Body::from(bytes));
    req.extensions_mut().insert(verified);
    Ok(next.run(req).await)
}
