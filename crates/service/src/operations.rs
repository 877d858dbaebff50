//! What makes a service operable, shared by both: admission (429 with
//! `Retry-After`, heavy work behind reads), request metrics and the request
//! log, and the operators' routes.
//!
//! - `GET /healthz`: 200 while the process answers (liveness).
//! - `GET /readyz`: 200 when the service can do its work (its store answers,
//!   no integrity alarm, the record service holds the authority's facts),
//!   503 with the reason otherwise (readiness: a load balancer stops sending).
//! - `GET /metrics`: Prometheus text (see [`asclepios_net::metrics`]).
//!
//! They are served on the service's mutual-TLS listener like every other
//! route, unsigned and unaudited. `/healthz` and `/readyz` answer any
//! holder of a deployment certificate, with fixed reasons. `/metrics`
//! answers only the identities the configuration names (a scraper gets a
//! certificate with `asclepios user add`): its counts per route template
//! carry no path, patient or attribute, but their timing would tell any
//! patient when someone broke the glass or was revoked.

use std::sync::Arc;

use asclepios_audit::AuditTrail;
use asclepios_net::admission::{admit, Admission, AdmissionLimits, Weigh};
use asclepios_net::metrics::{observe, Gauge, Gauges, Metrics};
use asclepios_net::server::{json_errors, ApiError, Caller};
use asclepios_store::Store;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

/// Whether a service can do its work now; the reason if not. May block.
pub type Readiness = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// A service's operations side.
#[derive(Clone)]
pub struct Operations {
    /// Its counters.
    pub metrics: Arc<Metrics>,
    /// Its admission limits and state.
    pub admission: Arc<Admission>,
    /// Values read at each scrape.
    pub gauges: Gauges,
    /// Its readiness check.
    pub ready: Readiness,
    /// Identities that may read `/metrics`.
    pub metrics_readers: Arc<Vec<String>>,
}

/// What a service adds to the operations every service has.
#[derive(Debug)]
pub struct ServiceOperations<G, R> {
    /// Its name, the `service` label of its metrics (`authority`, `records`).
    pub service: &'static str,
    /// Its admission limits.
    pub limits: AdmissionLimits,
    /// How it weighs its routes.
    pub weigh: Weigh,
    /// Identities never throttled (the other service's).
    pub exempt: Vec<String>,
    /// Identities that may read `/metrics`.
    pub metrics_readers: Vec<String>,
    /// Its gauges besides the audit log's size.
    pub gauges: G,
    /// Its readiness conditions, checked before the audit log's.
    pub ready: R,
}

impl Operations {
    /// A service's operations: admission counted in its metrics, the audit
    /// log's size (`asclepios_audit_log_entries`) before the service's own
    /// gauges, and readiness as the service judges it and then the audit
    /// log not in alarm. Reasons are fixed texts: the details (which rows,
    /// whose) are for the auditors, in the audit log, not for every
    /// certificate holder.
    pub fn new<G, R>(trail: Arc<AuditTrail<Store>>, service: ServiceOperations<G, R>) -> Self
    where
        G: Fn() -> Vec<Gauge> + Send + Sync + 'static,
        R: Fn() -> Result<(), String> + Send + Sync + 'static,
    {
        let metrics = Metrics::new(service.service);
        let admission = Admission::new(service.limits, service.weigh, Some(metrics.clone()))
            .exempting(service.exempt);
        let (own_gauges, own_ready) = (service.gauges, service.ready);
        let gauged = trail.clone();
        Operations {
            metrics,
            admission: Arc::new(admission),
            metrics_readers: Arc::new(service.metrics_readers),
            gauges: Arc::new(move || {
                let mut all = vec![Gauge {
                    name: "asclepios_audit_log_entries",
                    help: "Entries in the audit log this service appends to.",
                    value: gauged.log().head().0 as f64,
                }];
                all.extend(own_gauges());
                all
            }),
            ready: Arc::new(move || {
                own_ready()?;
                match trail.log().alarm() {
                    Some(_) => Err("audit log alarm (a witness refused the log)".into()),
                    None => Ok(()),
                }
            }),
        }
    }
}

/// Whether `store` answers, with the fixed reason readiness gives if not.
pub fn store_answers(store: &Store) -> Result<(), String> {
    store
        .ping()
        .map_err(|_| "the store does not answer".to_string())
}

impl std::fmt::Debug for Operations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Operations")
            .field("admission", &self.admission)
            .finish_non_exhaustive()
    }
}

/// `router` with the operators' routes, behind admission, observed by the
/// metrics and the request log.
pub fn operable(router: Router, ops: Operations) -> Router {
    let metrics = ops.metrics.clone();
    let gauges = ops.gauges.clone();
    let ready = ops.ready.clone();
    let readers = ops.metrics_readers.clone();
    router
        .route(
            "/healthz",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
        .route(
            "/readyz",
            get(move || {
                let ready = ready.clone();
                async move {
                    match crate::blocking(move || Ok(ready())).await {
                        Ok(Ok(())) => Json(serde_json::json!({"status": "ready"})).into_response(),
                        Ok(Err(why)) => ApiError::new(
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("not ready: {why}"),
                        )
                        .into_response(),
                        Err(e) => e.into_response(),
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move |caller: Option<axum::Extension<Caller>>| {
                let (metrics, gauges) = (metrics.clone(), gauges.clone());
                // In-process routers (no TLS, no caller) are the operator's.
                let allowed = caller.is_none_or(|c| readers.contains(&c.0 .0.id));
                async move {
                    if allowed {
                        exposition(metrics, gauges).await
                    } else {
                        ApiError::new(
                            StatusCode::FORBIDDEN,
                            "only the identities under `metrics_readers` in the service's \
                             configuration read /metrics",
                        )
                        .into_response()
                    }
                }
            }),
        )
        .layer(axum::middleware::from_fn_with_state(ops.admission, admit))
        .layer(axum::middleware::from_fn_with_state(ops.metrics, observe))
        .layer(axum::middleware::map_response(json_errors))
}

async fn exposition(metrics: Arc<Metrics>, gauges: Gauges) -> Response {
    match crate::blocking(move || Ok(metrics.render(&gauges()))).await {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}
