//! What a service exposes to its operators: request counts and latencies per
//! route and status, requests shed (429), connections refused, and the
//! gauges a service adds at scrape time (audit log size, re-wrap backlog),
//! in Prometheus' text format (version 0.0.4) at `/metrics`; and one
//! structured `tracing` event per request.
//!
//! Labels are route *templates* (`/v1/records/{patient}/{record_id}`),
//! methods and statuses: never a path, a patient, a keyword or an
//! attribute, so neither the metrics nor the request log carry health
//! data or who asked about whom.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;

use crate::admission::Throttle;

/// Upper bounds of the latency histogram's buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0,
];

/// A value a service reports at scrape time.
#[derive(Clone, Debug, PartialEq)]
pub struct Gauge {
    /// Metric name (`asclepios_` and letters, digits, `_`).
    pub name: &'static str,
    /// What it measures.
    pub help: &'static str,
    /// Its value now.
    pub value: f64,
}

/// The gauges of a service, read at each scrape (may block briefly).
pub type Gauges = Arc<dyn Fn() -> Vec<Gauge> + Send + Sync>;

#[derive(Debug, Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

#[derive(Debug, Default)]
struct Counts {
    /// (route, method, status) → requests.
    requests: BTreeMap<(String, String, u16), u64>,
    /// (route, method) → latency.
    latency: BTreeMap<(String, String), Histogram>,
    /// reason → requests answered 429.
    throttled: BTreeMap<&'static str, u64>,
    /// reason → connections closed before serving.
    refused: BTreeMap<&'static str, u64>,
}

/// One service's counters.
#[derive(Debug)]
pub struct Metrics {
    service: &'static str,
    counts: Mutex<Counts>,
}

/// Why a connection was closed before it was served (the `reason` label of
/// `asclepios_connections_refused_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Dropped during its handshake for newer ones (handshake limits).
    Evicted,
    /// Its handshake took too long or failed.
    Handshake,
    /// Its identity, or everyone, held enough connections.
    Full,
}

impl Refused {
    fn name(self) -> &'static str {
        match self {
            Refused::Evicted => "evicted",
            Refused::Handshake => "handshake",
            Refused::Full => "full",
        }
    }
}

impl Metrics {
    /// Counters for `service` (`authority`, `records`).
    pub fn new(service: &'static str) -> Arc<Self> {
        Arc::new(Metrics {
            service,
            counts: Mutex::new(Counts::default()),
        })
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts one answered request.
    pub fn request(&self, route: &str, method: &str, status: u16, seconds: f64) {
        let mut c = self.counts();
        *c.requests
            .entry((route.to_string(), method.to_string(), status))
            .or_default() += 1;
        let h = c
            .latency
            .entry((route.to_string(), method.to_string()))
            .or_default();
        for (i, bound) in BUCKETS.iter().enumerate() {
            if seconds <= *bound {
                h.counts[i] += 1;
            }
        }
        h.sum += seconds;
        h.count += 1;
    }

    /// Counts one request shed with 429.
    pub fn throttled(&self, why: Throttle) {
        *self.counts().throttled.entry(why.name()).or_default() += 1;
    }

    /// Counts one connection closed before it was served.
    pub fn refused(&self, why: Refused) {
        *self.counts().refused.entry(why.name()).or_default() += 1;
    }

    /// Requests answered 429 so far, all reasons.
    pub fn throttled_total(&self) -> u64 {
        self.counts().throttled.values().sum()
    }

    /// The exposition: every counter, then `gauges`.
    pub fn render(&self, gauges: &[Gauge]) -> String {
        let c = self.counts();
        let service = self.service;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP asclepios_requests_total Requests answered, per route template, method and status.\n# TYPE asclepios_requests_total counter"
        );
        for ((route, method, status), n) in &c.requests {
            let _ = writeln!(
                out,
                "asclepios_requests_total{{service=\"{service}\",route=\"{}\",method=\"{}\",status=\"{status}\"}} {n}",
                escape(route),
                escape(method)
            );
        }
        let _ = writeln!(
            out,
            "# HELP asclepios_request_duration_seconds Time from a request's admission to its answer, per route template and method.\n# TYPE asclepios_request_duration_seconds histogram"
        );
        for ((route, method), h) in &c.latency {
            let labels = format!(
                "service=\"{service}\",route=\"{}\",method=\"{}\"",
                escape(route),
                escape(method)
            );
            for (bound, n) in BUCKETS.iter().zip(h.counts) {
                let _ = writeln!(
                    out,
                    "asclepios_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {n}"
                );
            }
            let _ = writeln!(
                out,
                "asclepios_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}\nasclepios_request_duration_seconds_sum{{{labels}}} {}\nasclepios_request_duration_seconds_count{{{labels}}} {}",
                h.count, h.sum, h.count
            );
        }
        let _ = writeln!(
            out,
            "# HELP asclepios_throttled_total Requests answered 429 (Retry-After), per reason.\n# TYPE asclepios_throttled_total counter"
        );
        for why in [Throttle::InFlight, Throttle::Rate, Throttle::HeavyQueue] {
            let n = c.throttled.get(why.name()).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "asclepios_throttled_total{{service=\"{service}\",reason=\"{}\"}} {n}",
                why.name()
            );
        }
        let _ = writeln!(
            out,
            "# HELP asclepios_connections_refused_total Connections closed before they were served, per reason.\n# TYPE asclepios_connections_refused_total counter"
        );
        for why in [Refused::Evicted, Refused::Handshake, Refused::Full] {
            let n = c.refused.get(why.name()).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "asclepios_connections_refused_total{{service=\"{service}\",reason=\"{}\"}} {n}",
                why.name()
            );
        }
        for g in gauges {
            let _ = writeln!(
                out,
                "# HELP {} {}\n# TYPE {} gauge\n{}{{service=\"{service}\"}} {}",
                g.name, g.help, g.name, g.name, g.value
            );
        }
        out
    }
}

/// A label value with `\`, `"` and newlines escaped.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Middleware: counts and times every request, and logs it as one
/// `tracing` event (route template, method, status, milliseconds; no path,
/// no caller, no body).
pub async fn observe(
    State(metrics): State<Arc<Metrics>>,
    route: Option<MatchedPath>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    // Standard methods only: any other would be a new series per name a
    // client makes up.
    let method = match request.method().as_str() {
        m @ ("GET" | "POST" | "PUT" | "DELETE" | "HEAD" | "OPTIONS" | "PATCH") => m,
        _ => "other",
    }
    .to_string();
    let route = route.map_or_else(|| "unmatched".to_string(), |r| r.as_str().to_string());
    let response = next.run(request).await;
    let elapsed = started.elapsed().as_secs_f64();
    let status = response.status().as_u16();
    metrics.request(&route, &method, status, elapsed);
    tracing::info!(
        target: "asclepios::request",
        service = metrics.service,
        route = %route,
        method = %method,
        status,
        ms = (elapsed * 1e4).round() / 10.0,
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_counts_and_buckets() {
        let m = Metrics::new("records");
        m.request("/v1/records/{patient}/{record_id}", "GET", 200, 0.003);
        m.request("/v1/records/{patient}/{record_id}", "GET", 404, 0.5);
        m.throttled(Throttle::Rate);
        let text = m.render(&[Gauge {
            name: "asclepios_audit_log_entries",
            help: "Entries in the audit log.",
            value: 7.0,
        }]);
        assert!(text.contains("asclepios_requests_total{service=\"records\",route=\"/v1/records/{patient}/{record_id}\",method=\"GET\",status=\"404\"} 1"), "{text}");
        assert!(text.contains("le=\"0.002\"} 0"), "{text}");
        assert!(text.contains("le=\"0.005\"} 1"), "{text}");
        assert!(text.contains("le=\"+Inf\"} 2"), "{text}");
        assert!(text.contains("asclepios_throttled_total{service=\"records\",reason=\"rate\"} 1"));
        assert!(text.contains("asclepios_audit_log_entries{service=\"records\"} 7"));
        assert_eq!(m.throttled_total(), 1);
    }
}
