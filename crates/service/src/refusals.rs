//! Refusals no handler logged: a request without a valid signature, too
//! large, malformed before its handler could read it, or for no route.
//! Handlers log their own refusals (marked [`Audited`]); this layer logs
//! the rest, so that every refused request lands in the audit log.
//!
//! To keep one peer from flooding the log, refusals are counted per peer
//! and status in windows ([`WINDOW`] in the services): the first of a window is
//! logged at once, the others as one event with their count when the
//! window ends (at the peer's next refusal or at the periodic flush).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use asclepios_audit::{Action, AuditEvent, AuditTrail, Outcome};
use asclepios_net::server::{Audited, Caller};
use asclepios_store::Store;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use sha2::{Digest, Sha256};

use crate::shown;

/// The aggregation window of the services.
pub const WINDOW: Duration = Duration::from_secs(60);

/// Refusals counted in the current window of one peer and status.
struct Window {
    started: Instant,
    /// Refusals after the first (which was logged when it happened).
    more: u64,
    /// The last refused request, as `METHOD path`.
    last: String,
}

/// The per-peer windows, apart from any log: what to write, and when.
#[derive(Default)]
struct Windows {
    length: Duration,
    open: HashMap<(String, u16), Window>,
}

impl Windows {
    /// Counts one refusal at `now`; returns the events to log now: the
    /// refusal itself if it opens a window, after the count of the window
    /// it closes.
    fn count(&mut self, now: Instant, peer: &str, status: u16, what: String) -> Vec<AuditEvent> {
        let key = (peer.to_string(), status);
        let mut events = Vec::new();
        if let Some(w) = self.open.get_mut(&key) {
            if now.duration_since(w.started) < self.length {
                w.more += 1;
                w.last = what;
                return events;
            }
            if w.more > 0 {
                events.push(summary(peer, status, w, self.length));
            }
        }
        events.push(refusal_event(peer, format!("{what} refused ({status})")));
        self.open.insert(
            key,
            Window {
                started: now,
                more: 0,
                last: String::new(),
            },
        );
        events
    }

    /// Ends every window older than its length at `now`; their counts.
    fn ended(&mut self, now: Instant) -> Vec<AuditEvent> {
        let length = self.length;
        let mut events = Vec::new();
        self.open.retain(|(peer, status), w| {
            if now.duration_since(w.started) < length {
                return true;
            }
            if w.more > 0 {
                events.push(summary(peer, *status, w, length));
            }
            false
        });
        events
    }
}

fn summary(peer: &str, status: u16, w: &Window, length: Duration) -> AuditEvent {
    refusal_event(
        peer,
        format!(
            "{} more request(s) refused ({status}) within {} s; the last: {}",
            w.more,
            length.as_secs(),
            w.last
        ),
    )
}

/// The refusal counters of one service, over its audit trail.
pub struct RefusalLog {
    trail: Arc<AuditTrail<Store>>,
    windows: Mutex<Windows>,
}

impl std::fmt::Debug for RefusalLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RefusalLog").finish_non_exhaustive()
    }
}

impl RefusalLog {
    /// Counts refusals over `trail` in windows of `window`, and (inside a
    /// Tokio runtime) flushes ended windows periodically.
    pub fn new(trail: Arc<AuditTrail<Store>>, window: Duration) -> Arc<Self> {
        let log = Arc::new(RefusalLog {
            trail,
            windows: Mutex::new(Windows {
                length: window,
                open: HashMap::new(),
            }),
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let weak = Arc::downgrade(&log);
            runtime.spawn(flush_periodically(weak, window));
        }
        log
    }

    fn windows(&self) -> std::sync::MutexGuard<'_, Windows> {
        self.windows.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes `events`; an audit log that cannot be written is reported to
    /// the operator (the refusal itself stands).
    async fn write(&self, events: Vec<AuditEvent>) {
        if events.is_empty() {
            return;
        }
        let trail = self.trail.clone();
        let written = tokio::task::spawn_blocking(move || {
            for event in &events {
                let request = Sha256::digest(event.resource.as_bytes()).into();
                trail.record(event, &request, 400)?;
            }
            Ok::<_, asclepios_audit::Error>(())
        })
        .await;
        if !matches!(written, Ok(Ok(()))) {
            tracing::error!("a refused request could not be logged");
        }
    }
}

fn refusal_event(peer: &str, resource: String) -> AuditEvent {
    let mut event = AuditEvent::new(
        peer,
        Action::RequestRefused,
        resource,
        None,
        Outcome::Denied,
        None,
    );
    event.purpose = "SECURITY".into();
    event
}

async fn flush_periodically(log: Weak<RefusalLog>, window: Duration) {
    let mut tick = tokio::time::interval(window.max(Duration::from_secs(1)));
    loop {
        tick.tick().await;
        let Some(log) = log.upgrade() else { return };
        let events = log.windows().ended(Instant::now());
        log.write(events).await;
    }
}

/// Middleware: logs each refusal (4xx) its handler did not log.
pub async fn log_refusals(
    State(log): State<Arc<RefusalLog>>,
    req: Request,
    next: Next,
) -> Response {
    let peer = req
        .extensions()
        .get::<Caller>()
        .map_or_else(|| "unidentified".to_string(), |c| c.0.id.clone());
    let what = format!("{} {}", req.method(), shown(req.uri().path()));
    let response = next.run(req).await;
    let status = response.status();
    if status.is_client_error() && response.extensions().get::<Audited>().is_none() {
        let events = log
            .windows()
            .count(Instant::now(), &peer, status.as_u16(), what);
        log.write(events).await;
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_from_one_peer_is_one_event_per_window() {
        let mut w = Windows {
            length: Duration::from_secs(60),
            open: HashMap::new(),
        };
        let t0 = Instant::now();
        // The first refusal is logged at once.
        let first = w.count(t0, "mallory", 401, "GET /v1/records".into());
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].action, Action::RequestRefused);
        assert_eq!(first[0].actor, "mallory");
        assert!(first[0].resource.contains("401"), "{}", first[0].resource);
        // A thousand more in the window: nothing now.
        for i in 0..1000 {
            let at = t0 + Duration::from_millis(i);
            assert!(w
                .count(at, "mallory", 401, format!("GET /x/{i}"))
                .is_empty());
        }
        // Another peer, or another status, has a window of its own.
        assert_eq!(w.count(t0, "eve", 401, "GET /".into()).len(), 1);
        assert_eq!(w.count(t0, "mallory", 413, "POST /".into()).len(), 1);
        // The window ends: one event with the count.
        assert!(w.ended(t0 + Duration::from_secs(59)).is_empty());
        let ended = w.ended(t0 + Duration::from_secs(61));
        assert_eq!(ended.len(), 1, "only mallory's 401 window counted more");
        assert!(
            ended[0].resource.starts_with("1000 more"),
            "{}",
            ended[0].resource
        );
        assert!(ended[0].resource.contains("GET /x/999"));
        // A refusal after a window that ended unflushed logs both.
        w.count(t0 + Duration::from_secs(100), "eve", 401, "GET /a".into());
        w.count(t0 + Duration::from_secs(101), "eve", 401, "GET /b".into());
        let next = w.count(t0 + Duration::from_secs(200), "eve", 401, "GET /c".into());
        assert_eq!(next.len(), 2);
        assert!(next[0].resource.starts_with("1 more"));
        assert!(next[1].resource.starts_with("GET /c"));
    }
}
