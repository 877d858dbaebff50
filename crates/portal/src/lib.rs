//! The asclepios portal: a web app on this device, for one identity, using
//! that identity's own keys through the client SDK. The browser talks only
//! to this process, on loopback; this process talks to the deployment over
//! mutual TLS. Records and audit events are opened here, never elsewhere.
//!
//! Security of the local server:
//! * bound to a loopback address by the caller (the CLI refuses others),
//!   and requests naming another `Host` are refused (DNS rebinding);
//! * a per-launch secret in the launch URL, good for one sign-in, exchanged
//!   for a session cookie (`HttpOnly`, `SameSite=Strict`), compared in
//!   constant time; the session ends after 15 minutes unused or 8 hours;
//! * the identity's ABE key is fetched again when older than a minute, so
//!   a revoked attribute leaves the page;
//! * every form carries a CSRF token tied to the launch, and a cross-site
//!   `Origin` or `Sec-Fetch-Site` is refused;
//! * a strict Content Security Policy (`default-src 'none'`, styles from
//!   this origin only, no script), no caching, no framing, no referrer
//!   outside this origin (`no-referrer` would make browsers send
//!   `Origin: null` on our own form posts).
//!
//! Views, chosen by the identity's attributes: patients (`patient:<p>`),
//! auditors (`role:auditor`), clinicians (`role:doctor`, `role:nurse`,
//! `role:lab`).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod html;
mod views;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use asclepios_client::Client;
use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderValue, Response, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect};
use axum::routing::{get, post};
use axum::Router;
use subtle::ConstantTimeEq;

/// The session cookie's name.
pub const COOKIE: &str = "asclepios_portal";

/// The Content Security Policy of every page.
pub const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; \
                       form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Why the portal could not start.
#[derive(Debug, thiserror::Error)]
pub enum PortalError {
    /// The identity's keys or the deployment.
    #[error(transparent)]
    Client(#[from] asclepios_client::ClientError),
    /// The identity can use no view.
    #[error("identity `{0}` holds no attribute the portal has a view for (patient:, role:auditor, role:doctor, role:nurse, role:lab)")]
    NoView(String),
}

/// What the identity may see.
#[derive(Clone, Debug, Default)]
pub struct Roles {
    /// The patient pseudonym, for a patient.
    pub patient: Option<String>,
    /// An auditor.
    pub auditor: bool,
    /// A clinician or lab (search and records).
    pub clinician: bool,
}

/// The portal's state: one identity's client, its launch secret, session and
/// CSRF token.
pub struct Portal {
    client: tokio::sync::Mutex<Client>,
    /// When the client's ABE key was last fetched.
    key_fetched: Mutex<Instant>,
    identity: String,
    roles: Roles,
    launch_token: String,
    /// Whether the launch link was used (it signs in one browser, once).
    launched: std::sync::atomic::AtomicBool,
    /// The signed-in browser's session, once the link was used.
    session: Mutex<Option<Session>>,
    csrf: String,
    /// The last checkpoint an auditor's page verified, to prove the next
    /// one consistent with it.
    last_checkpoint: Mutex<Option<asclepios_audit::Checkpoint>>,
    /// The key authority's attestation as appraised when the key was fetched.
    attestation: String,
}

impl std::fmt::Debug for Portal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Portal")
            .field("identity", &self.identity)
            .field("roles", &self.roles)
            .finish_non_exhaustive()
    }
}

/// A browser's session: its cookie value, and when it began and was last
/// used.
struct Session {
    value: String,
    began: Instant,
    last_used: Instant,
}

impl Session {
    /// Whether it is still good: used within [`SESSION_IDLE`] and begun
    /// within [`SESSION_LIFETIME`].
    fn live(&self) -> bool {
        self.last_used.elapsed() < SESSION_IDLE && self.began.elapsed() < SESSION_LIFETIME
    }
}

/// A session unused this long ends (the browser must be launched again).
pub const SESSION_IDLE: Duration = Duration::from_secs(15 * 60);
/// A session ends this long after it began, used or not.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(8 * 60 * 60);
/// How old the portal's ABE key may get before it is fetched again: a
/// revoked attribute leaves the page within this, and a new one arrives.
pub const KEY_MAX_AGE: Duration = Duration::from_secs(60);

fn random_hex() -> String {
    let mut b = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut b);
    hex::encode(b)
}

fn attribute_name(a: &str) -> &str {
    a.split_once('@').map_or(a, |(name, _)| name)
}

impl Portal {
    /// A portal for `client`'s identity: fetches its key, finds its views.
    pub async fn new(mut client: Client) -> Result<Arc<Self>, PortalError> {
        let attributes = client.refresh_key().await?.to_vec();
        let mut roles = Roles::default();
        for a in &attributes {
            let name = attribute_name(a);
            if let Some(p) = name.strip_prefix("patient:") {
                roles.patient = Some(p.to_string());
            }
            roles.auditor |= name == "role:auditor";
            roles.clinician |= matches!(name, "role:doctor" | "role:nurse" | "role:lab");
        }
        let identity = client.id().to_string();
        let attestation = match client.authority_certificate_appraisal() {
            Some(a) => format!("Key authority attestation: {}", a.summary()),
            None => "Key authority attestation: not checked (no attestation policy)".into(),
        };
        if roles.patient.is_none() && !roles.auditor && !roles.clinician {
            return Err(PortalError::NoView(identity));
        }
        Ok(Arc::new(Portal {
            client: tokio::sync::Mutex::new(client),
            key_fetched: Mutex::new(Instant::now()),
            identity,
            roles,
            launch_token: random_hex(),
            launched: std::sync::atomic::AtomicBool::new(false),
            session: Mutex::new(None),
            csrf: random_hex(),
            last_checkpoint: Mutex::new(None),
            attestation,
        }))
    }

    /// The identity's client, its ABE key fetched again first if older
    /// than [`KEY_MAX_AGE`] (review finding L6: a key fetched once at launch
    /// kept revoked attributes for as long as the portal ran). If the
    /// authority cannot be reached the old key serves; the services judge
    /// every request anyway.
    pub(crate) async fn client(&self) -> tokio::sync::MutexGuard<'_, Client> {
        let mut client = self.client.lock().await;
        let stale = self
            .key_fetched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
            >= KEY_MAX_AGE;
        if stale && client.refresh_key().await.is_ok() {
            *self.key_fetched.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        }
        client
    }

    /// The path (with the per-launch secret) that signs a browser in.
    pub fn launch_path(&self) -> String {
        format!("/login?token={}", self.launch_token)
    }

    /// The views this identity may use.
    pub fn roles(&self) -> &Roles {
        &self.roles
    }

    fn nav(&self) -> Vec<html::NavItem> {
        let mut nav = Vec::new();
        if self.roles.patient.is_some() {
            nav.push(("/patient", "My records"));
        }
        if self.roles.auditor {
            nav.push(("/auditor", "Audit"));
        }
        if self.roles.clinician {
            nav.push(("/clinician", "Search records"));
        }
        nav
    }

    fn home(&self) -> &'static str {
        self.nav().first().map(|(p, _)| *p).unwrap_or("/")
    }

    pub(crate) fn page(&self, title: &str, current: &str, body: &str) -> Response<Body> {
        html_response(
            StatusCode::OK,
            html::page(
                title,
                &self.identity,
                &self.nav(),
                current,
                body,
                &self.attestation,
            ),
        )
    }

    pub(crate) fn error_page(&self, status: StatusCode, message: &str) -> Response<Body> {
        html_response(
            status,
            html::page(
                "Something went wrong",
                &self.identity,
                &self.nav(),
                "",
                &html::alert(message),
                &self.attestation,
            ),
        )
    }

    pub(crate) fn csrf(&self) -> &str {
        &self.csrf
    }

    /// Checks a form's CSRF token.
    pub(crate) fn check_csrf(&self, token: Option<&String>) -> bool {
        token.is_some_and(|t| t.as_bytes().ct_eq(self.csrf.as_bytes()).into())
    }

    /// The routes.
    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route("/", get(home))
            .route("/login", get(login))
            .route("/static/portal.css", get(stylesheet))
            .route("/patient", get(views::patient))
            .route("/patient/consents", post(views::grant_consent))
            .route("/patient/consents/withdraw", post(views::withdraw_consent))
            .route("/patient/records/erase", post(views::erase_record))
            .route("/auditor", get(views::auditor))
            .route("/auditor/reviews", post(views::review))
            .route("/clinician", get(views::clinician))
            .route("/clinician/record", get(views::clinician_record))
            .layer(axum::middleware::from_fn_with_state(self.clone(), guard))
            .with_state(self)
    }
}

fn html_response(status: StatusCode, body: String) -> Response<Body> {
    let mut r = (status, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}

fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    (status, text).into_response()
}

/// Host check, session check (but for the login and the stylesheet), CSRF
/// origin checks on posts, and the security headers on every answer.
async fn guard(State(p): State<Arc<Portal>>, req: Request, next: Next) -> Response<Body> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
        .to_string();
    let loopback = ["127.0.0.1:", "localhost:", "[::1]:"]
        .iter()
        .any(|p| host.starts_with(p));
    let mut response = if !loopback {
        plain(
            StatusCode::MISDIRECTED_REQUEST,
            "this portal answers on loopback only",
        )
    } else if req.method() == axum::http::Method::POST && cross_site(&req, &host) {
        plain(StatusCode::FORBIDDEN, "cross-site form posts are refused")
    } else {
        let path = req.uri().path();
        if path == "/login" || path == "/static/portal.css" || has_session(&p, &req) {
            next.run(req).await
        } else {
            html_response(
                StatusCode::UNAUTHORIZED,
                html::page(
                    "Open the launch link",
                    &p.identity,
                    &[],
                    "",
                    "<p class=\"error\" role=\"alert\">This portal only answers the browser \
                     that opened the link printed by <code>asclepios portal</code>. Open that \
                     link (it holds a secret made for this launch).</p>",
                    "",
                ),
            )
        }
    };
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn cross_site(req: &Request, host: &str) -> bool {
    let h = req.headers();
    let bad_origin = h
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .is_some_and(|o| o != format!("http://{host}"));
    let bad_site = h
        .get("sec-fetch-site")
        .and_then(|s| s.to_str().ok())
        .is_some_and(|s| s != "same-origin" && s != "none");
    bad_origin || bad_site
}

/// Whether the request carries the live session's cookie; a session past
/// [`SESSION_IDLE`] or [`SESSION_LIFETIME`] ends here.
fn has_session(p: &Portal, req: &Request) -> bool {
    let mut session = p.session.lock().unwrap_or_else(|e| e.into_inner());
    let Some(live) = session.as_mut() else {
        return false;
    };
    if !live.live() {
        *session = None;
        return false;
    }
    let presented = req
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .any(|(k, v)| k == COOKIE && bool::from(v.as_bytes().ct_eq(live.value.as_bytes())));
    if presented {
        live.last_used = Instant::now();
    }
    presented
}

#[derive(serde::Deserialize)]
struct LoginQuery {
    token: String,
}

async fn login(State(p): State<Arc<Portal>>, Query(q): Query<LoginQuery>) -> Response<Body> {
    if !bool::from(q.token.as_bytes().ct_eq(p.launch_token.as_bytes())) {
        return p.error_page(
            StatusCode::UNAUTHORIZED,
            "This launch link is not valid: use the one asclepios portal printed.",
        );
    }
    // Single use (review finding L5): a link seen in a history, a log or
    // over a shoulder signs no second browser in.
    if p.launched.swap(true, std::sync::atomic::Ordering::SeqCst) {
        return p.error_page(
            StatusCode::UNAUTHORIZED,
            "This launch link was used already. Run asclepios portal again for a new one.",
        );
    }
    let value = random_hex();
    let now = Instant::now();
    *p.session.lock().unwrap_or_else(|e| e.into_inner()) = Some(Session {
        value: value.clone(),
        began: now,
        last_used: now,
    });
    let mut r = Redirect::to(p.home()).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{COOKIE}={value}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        SESSION_LIFETIME.as_secs()
    )) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

async fn home(State(p): State<Arc<Portal>>) -> Redirect {
    Redirect::to(p.home())
}

async fn stylesheet() -> Response<Body> {
    let mut r = include_str!("../static/portal.css").into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/css; charset=utf-8"),
    );
    r
}

/// Serves the portal on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    portal: Arc<Portal>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, portal.router())
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(began_ago: Duration, used_ago: Duration) -> Option<Session> {
        let now = Instant::now();
        Some(Session {
            value: String::new(),
            began: now.checked_sub(began_ago)?,
            last_used: now.checked_sub(used_ago)?,
        })
    }

    #[test]
    fn sessions_end_when_idle_or_old() {
        let minute = Duration::from_secs(60);
        // (A machine up for less than 8 hours cannot go back that far.)
        let Some(fresh) = session(minute, minute) else {
            return;
        };
        assert!(fresh.live());
        if let Some(idle) = session(SESSION_IDLE + minute, SESSION_IDLE + minute) {
            assert!(!idle.live(), "unused for longer than SESSION_IDLE");
        }
        if let Some(old) = session(SESSION_LIFETIME + minute, minute) {
            assert!(
                !old.live(),
                "in use, but begun longer than SESSION_LIFETIME ago"
            );
        }
    }
}
