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

use crate::metrics::{Metrics, Refused};
use crate::pki::{peer_identity, PeerIdentity};
use crate::signature::{self, NonceStore, ReplayGuard, SignedHeaders, Verified};

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

/// What one listener admits, against connection floods (review finding
/// H11): a flood of silent connections, or of idle authenticated ones,
/// must not keep an honest client out.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// Connections still in their TLS handshake; a new one beyond this
    /// drops the oldest (an honest handshake takes milliseconds, a silent
    /// one sits until it is dropped).
    pub handshakes: usize,
    /// Of those, from one source address (the oldest of that address goes).
    pub handshakes_per_address: usize,
    /// How long a handshake may take.
    pub handshake_timeout: Duration,
    /// Established connections; one beyond this is closed after its
    /// handshake.
    pub connections: usize,
    /// Established connections of one identity; a further one is closed
    /// after its handshake.
    pub connections_per_identity: usize,
    /// How long an HTTP/1.1 connection may take to send a request's
    /// headers, also between requests.
    pub header_timeout: Duration,
    /// How long a connection may go without a byte read or written before
    /// it is closed (an abandoned or silent one, on HTTP/2 too).
    pub idle_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            handshakes: 512,
            handshakes_per_address: 256,
            handshake_timeout: Duration::from_secs(3),
            connections: MAX_CONNECTIONS,
            connections_per_identity: 64,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
        }
    }
}

/// When a connection last read or wrote a byte.
struct Activity {
    started: std::time::Instant,
    /// Milliseconds since `started`.
    last: std::sync::atomic::AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity {
            started: std::time::Instant::now(),
            last: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(now, std::sync::atomic::Ordering::Relaxed);
    }

    /// Completes once nothing moved for `limit`.
    async fn idle_for(&self, limit: Duration) {
        loop {
            let last = Duration::from_millis(self.last.load(std::sync::atomic::Ordering::Relaxed));
            let quiet = self.started.elapsed().saturating_sub(last);
            if quiet >= limit {
                return;
            }
            tokio::time::sleep(limit - quiet).await;
        }
    }
}

/// A stream that notes its activity.
struct Watched<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Watched<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, std::task::Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, std::task::Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The source a connection is counted against: its IPv4 address, or the
/// /64 network of an IPv6 one (one host usually holds a whole /64, so
/// counting single IPv6 addresses would bound nothing).
fn source_of(addr: std::net::IpAddr) -> std::net::IpAddr {
    match addr {
        std::net::IpAddr::V4(_) => addr,
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => std::net::IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                std::net::IpAddr::V6(segments.into())
            }
        },
    }
}

/// Connections in their handshake, oldest first, each with what drops it.
#[derive(Default)]
struct Handshakes {
    next: u64,
    order: std::collections::VecDeque<(u64, std::net::IpAddr)>,
    drops: std::collections::HashMap<u64, tokio::sync::oneshot::Sender<()>>,
    per_address: std::collections::HashMap<std::net::IpAddr, usize>,
}

impl Handshakes {
    /// Registers a new handshake from `addr`, dropping the oldest ones over
    /// the limits; its id and what tells it it was dropped.
    fn admit(
        &mut self,
        addr: std::net::IpAddr,
        limits: &ConnectionLimits,
    ) -> (u64, tokio::sync::oneshot::Receiver<()>) {
        let addr = source_of(addr);
        if self.per_address.get(&addr).copied().unwrap_or(0) >= limits.handshakes_per_address {
            self.drop_oldest_of(addr);
        }
        // Full: the source holding the most handshakes loses its oldest,
        // so a flood from one network cannot push out everyone else's.
        while self.order.len() >= limits.handshakes.max(1) {
            let Some((&busiest, _)) = self.per_address.iter().max_by_key(|(_, n)| **n) else {
                break;
            };
            self.drop_oldest_of(busiest);
        }
        let id = self.next;
        self.next += 1;
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.order.push_back((id, addr));
        self.drops.insert(id, tx);
        *self.per_address.entry(addr).or_default() += 1;
        (id, rx)
    }

    /// Drops the oldest handshake from `source`.
    fn drop_oldest_of(&mut self, source: std::net::IpAddr) {
        if let Some(&(id, _)) = self.order.iter().find(|(_, a)| *a == source) {
            self.drop_one(id);
        }
    }

    /// Forgets handshake `id` (done, failed or dropped), telling it if it
    /// is still going.
    fn drop_one(&mut self, id: u64) {
        if let Some(i) = self.order.iter().position(|(x, _)| *x == id) {
            if let Some((_, addr)) = self.order.remove(i) {
                if let Some(n) = self.per_address.get_mut(&addr) {
                    *n -= 1;
                    if *n == 0 {
                        self.per_address.remove(&addr);
                    }
                }
            }
        }
        if let Some(tx) = self.drops.remove(&id) {
            let _ = tx.send(());
        }
    }
}

/// Established connections, per identity.
#[derive(Default)]
struct Established {
    total: usize,
    per_identity: std::collections::HashMap<String, usize>,
}

/// A place among the established connections, given back on drop.
struct Place {
    established: Arc<std::sync::Mutex<Established>>,
    identity: String,
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut e = self.established.lock().unwrap_or_else(|p| p.into_inner());
        e.total -= 1;
        if let Some(n) = e.per_identity.get_mut(&self.identity) {
            *n -= 1;
            if *n == 0 {
                e.per_identity.remove(&self.identity);
            }
        }
    }
}

fn place(
    established: &Arc<std::sync::Mutex<Established>>,
    identity: &str,
    limits: &ConnectionLimits,
) -> Option<Place> {
    let mut e = established.lock().unwrap_or_else(|p| p.into_inner());
    let mine = e.per_identity.get(identity).copied().unwrap_or(0);
    if e.total >= limits.connections || mine >= limits.connections_per_identity {
        return None;
    }
    e.total += 1;
    *e.per_identity.entry(identity.to_string()).or_default() += 1;
    Some(Place {
        established: established.clone(),
        identity: identity.to_string(),
    })
}

/// Serves `app` on `listener` over mutual TLS until `shutdown` completes,
/// with the default [`ConnectionLimits`].
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    app: Router,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    serve_with(
        listener,
        tls,
        app,
        ConnectionLimits::default(),
        None,
        shutdown,
    )
    .await
}

/// Serves `app` on `listener` over mutual TLS until `shutdown` completes.
/// The accept loop never waits: every connection is taken at once, and the
/// limits decide which ones go (see [`ConnectionLimits`]); those closed
/// before they are served are counted in `metrics`.
pub async fn serve_with(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    app: Router,
    limits: ConnectionLimits,
    metrics: Option<Arc<Metrics>>,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let refused = move |why: Refused| {
        if let Some(m) = &metrics {
            m.refused(why);
        }
    };
    let acceptor = TlsAcceptor::from(tls);
    let handshakes = Arc::new(std::sync::Mutex::new(Handshakes::default()));
    let established = Arc::new(std::sync::Mutex::new(Established::default()));
    // Told to every open connection when the service stops: a stopped
    // service must not go on answering over connections kept alive.
    let (closing, closed) = tokio::sync::watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
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
        let (id, dropped) = handshakes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .admit(peer.ip(), &limits);
        let acceptor = acceptor.clone();
        let app = app.clone();
        let mut closed = closed.clone();
        let (handshakes, established) = (handshakes.clone(), established.clone());
        let refused = refused.clone();
        tokio::spawn(async move {
            let handshake = tokio::select! {
                done = tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)) => done,
                _ = dropped => return refused(Refused::Evicted), // dropped for newer connections
            };
            handshakes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .drop_one(id);
            let Ok(Ok(stream)) = handshake else {
                return refused(Refused::Handshake); // no valid client certificate, or too slow
            };
            let identity = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| certs.first())
                .map(|der| peer_identity(der.as_ref()));
            let Some(Ok(identity)) = identity else {
                return refused(Refused::Handshake); // a CA-issued certificate that names no identity
            };
            let Some(_place) = place(&established, &identity.id, &limits) else {
                return refused(Refused::Full); // this identity, or everyone, holds enough connections
            };
            let service = TowerToHyperService::new(app.layer(Extension(Caller(identity))));
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            // An HTTP/1.1 connection that sends no request headers for a
            // while (idle between requests, or slow) closes.
            builder
                .http1()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.header_timeout);
            let activity = Arc::new(Activity::new());
            let watched = Watched {
                inner: stream,
                activity: activity.clone(),
            };
            let connection = builder.serve_connection(TokioIo::new(watched), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                // Silent for too long (either protocol): closed.
                () = activity.idle_for(limits.idle_timeout) => {}
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

#[cfg(test)]
mod handshake_tests {
    use super::*;

    fn limits(total: usize, per_source: usize) -> ConnectionLimits {
        ConnectionLimits {
            handshakes: total,
            handshakes_per_address: per_source,
            ..ConnectionLimits::default()
        }
    }

    #[test]
    fn a_full_table_sheds_the_busiest_source_and_ipv6_counts_per_64() {
        let mut h = Handshakes::default();
        let honest: std::net::IpAddr = "192.0.2.7".parse().unwrap();
        let (_, mut honest_dropped) = h.admit(honest, &limits(4, 8));
        // A flood from many addresses of one IPv6 /64.
        let mut flood = Vec::new();
        for i in 1..=6u16 {
            let a = std::net::IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, i));
            flood.push(h.admit(a, &limits(4, 8)).1);
        }
        assert!(
            honest_dropped.try_recv().is_err(),
            "the oldest handshake, from another source, was dropped for the flood"
        );
        assert_eq!(h.order.len(), 4);
        assert_eq!(h.per_address.len(), 2, "the /64 counts as one source");
        // Per source: the /64 may hold 2; its oldest go.
        let mut h = Handshakes::default();
        for i in 1..=3u16 {
            let a = std::net::IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 9, 9, 9, i));
            h.admit(a, &limits(100, 2));
        }
        assert_eq!(h.order.len(), 2);
    }
}

/// Per-service state for [`require_signature`].
#[derive(Debug)]
pub struct SignatureCheck {
    /// The service's own TLS name: what a request's `@authority` must be.
    pub authority: String,
    /// Remembered nonces (in the store, for a deployment).
    pub replays: Arc<dyn NonceStore>,
    /// Largest body accepted.
    pub max_body_bytes: usize,
}

impl SignatureCheck {
    /// Checks for the service named `authority`, remembering nonces in
    /// memory only (tests and tools: see [`NonceStore`]).
    pub fn in_memory(authority: &str, max_body_bytes: usize) -> Arc<Self> {
        Arc::new(SignatureCheck {
            authority: authority.to_string(),
            replays: Arc::new(ReplayGuard::new()),
            max_body_bytes,
        })
    }
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
    let verified: Verified = signature::verify(
        &method,
        &check.authority,
        &path,
        &bytes,
        &headers,
        &caller.public_key,
        now,
    )
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
    let (replays, keyid, nonce) = (
        check.replays.clone(),
        verified.keyid.clone(),
        verified.nonce.clone(),
    );
    let expires_at = signature::nonce_expiry(verified.created);
    let fresh =
        tokio::task::spawn_blocking(move || replays.remember(&keyid, &nonce, expires_at, now))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r);
    match fresh {
        Ok(true) => {}
        Ok(false) => {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "this request was already received (replay)",
            ))
        }
        Err(e) => {
            tracing::error!("the replay check failed: {e}");
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "cannot check the request for a replay now; retry later",
            ));
        }
    }
    let mut req = Request::from_parts(parts, Body::from(bytes));
    req.extensions_mut().insert(verified);
    Ok(next.run(req).await)
}
