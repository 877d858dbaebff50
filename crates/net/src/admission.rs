//! Admission: which requests a service takes now, and which it asks to come
//! back later (429 with `Retry-After`), so that one identity's burst or a
//! flood of expensive work cannot starve everyone else's reads (review
//! finding H11, the request half; [`crate::server::ConnectionLimits`] is the
//! connection half).
//!
//! Three rules, checked before the signature (a refused request costs a map
//! lookup, not an Ed25519 verification and a nonce write), keyed by the
//! identity of the caller's TLS certificate, which only the holder of its
//! key can present:
//!
//! 1. **Concurrency per identity**: at most
//!    [`AdmissionLimits::in_flight_per_identity`] requests of one identity
//!    at a time.
//! 2. **Rate per identity**: a token bucket of
//!    [`AdmissionLimits::rate_per_identity`] requests per second with a
//!    burst of [`AdmissionLimits::burst_per_identity`].
//! 3. **Heavy work waits its turn**: requests the service weighs as
//!    [`Weight::Heavy`] (key generation, writes, re-wraps) run at most
//!    [`AdmissionLimits::heavy_slots`] at a time, the others queue (at most
//!    [`AdmissionLimits::heavy_queue`], and [`HEAVY_WAITING_PER_IDENTITY`]
//!    of one identity, then 429). A request keeps its place and its slot
//!    until its work ends, even if its client hangs up. Light requests (reads)
//!    never queue behind them, so a saturating mix of heavy work leaves the
//!    remaining cores to reads.
//!
//! The services' own identities (the key authority calling the record
//! service, and back) are exempt: their calls carry revocations and
//! re-wraps, which must not be shed.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Extension;

use crate::metrics::Metrics;
use crate::server::{ApiError, Caller};

/// How much of a service's capacity a request takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Weight {
    /// Reads and other cheap work: admitted at once.
    Light,
    /// Key generation, writes, re-wraps: at most
    /// [`AdmissionLimits::heavy_slots`] at a time.
    Heavy,
}

/// How a service weighs its routes: the method and the route template (e.g.
/// `/v1/records/{patient}/{record_id}`).
pub type Weigh = fn(&Method, &str) -> Weight;

/// A service's admission limits (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdmissionLimits {
    /// Requests one identity may have in flight.
    pub in_flight_per_identity: usize,
    /// Requests per second one identity may send, sustained.
    pub rate_per_identity: f64,
    /// Requests one identity may send at once after a quiet spell.
    pub burst_per_identity: f64,
    /// Heavy requests running at once.
    pub heavy_slots: usize,
    /// Heavy requests waiting for a slot; one more is refused.
    pub heavy_queue: usize,
}

impl Default for AdmissionLimits {
    /// 32 requests in flight and 200 per second (bursts of 400) per
    /// identity: far above a person at a screen, enough for an
    /// integration engine importing in parallel. Heavy work on half the
    /// cores (at least one), 256 waiting.
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        AdmissionLimits {
            in_flight_per_identity: 32,
            rate_per_identity: 200.0,
            burst_per_identity: 400.0,
            heavy_slots: (cores / 2).max(1),
            heavy_queue: 256,
        }
    }
}

/// One identity's budget.
#[derive(Debug)]
struct Budget {
    tokens: f64,
    refilled: Instant,
    in_flight: usize,
    /// Of those, heavy requests waiting for a slot.
    heavy_waiting: usize,
}

/// Heavy requests one identity may have waiting: the queue is shared, so a
/// few identities must not fill it for everyone.
pub const HEAVY_WAITING_PER_IDENTITY: usize = 4;

/// Most identities whose budgets are kept; past it, budgets that are full
/// and idle are forgotten (they would start full again anyway).
const MAX_BUDGETS: usize = 65_536;

/// A service's admission state, shared by its connections.
#[derive(Debug)]
pub struct Admission {
    limits: AdmissionLimits,
    weigh: Weigh,
    exempt: HashSet<String>,
    budgets: Mutex<HashMap<String, Budget>>,
    heavy: Arc<tokio::sync::Semaphore>,
    waiting: AtomicUsize,
    metrics: Option<Arc<Metrics>>,
}

/// Why a request was asked to come back later (the `reason` label of
/// `asclepios_throttled_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Throttle {
    /// The identity has its limit of requests in flight.
    InFlight,
    /// The identity spent its rate budget.
    Rate,
    /// Too much heavy work is already waiting.
    HeavyQueue,
}

impl Throttle {
    /// The label value.
    pub fn name(self) -> &'static str {
        match self {
            Throttle::InFlight => "in_flight",
            Throttle::Rate => "rate",
            Throttle::HeavyQueue => "heavy_queue",
        }
    }
}

impl Admission {
    /// Admission with `limits`, weighing routes with `weigh`, counting
    /// refusals in `metrics`.
    pub fn new(limits: AdmissionLimits, weigh: Weigh, metrics: Option<Arc<Metrics>>) -> Self {
        Admission {
            limits,
            weigh,
            exempt: HashSet::new(),
            budgets: Mutex::new(HashMap::new()),
            heavy: Arc::new(tokio::sync::Semaphore::new(limits.heavy_slots.max(1))),
            waiting: AtomicUsize::new(0),
            metrics,
        }
    }

    /// Identities never throttled (the deployment's services).
    pub fn exempting(mut self, identities: impl IntoIterator<Item = String>) -> Self {
        self.exempt.extend(identities);
        self
    }

    /// Takes a place for one request of `identity` now, or says why not and
    /// after how long to retry.
    fn take(self: &Arc<Self>, identity: &str) -> Result<InFlight, (Throttle, Duration)> {
        let mut budgets = self.budgets.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if budgets.len() >= MAX_BUDGETS && !budgets.contains_key(identity) {
            let (rate, burst) = (
                self.limits.rate_per_identity,
                self.limits.burst_per_identity,
            );
            budgets.retain(|_, b| {
                b.in_flight > 0
                    || b.tokens + rate * now.duration_since(b.refilled).as_secs_f64() < burst
            });
        }
        let budget = budgets
            .entry(identity.to_string())
            .or_insert_with(|| Budget {
                tokens: self.limits.burst_per_identity,
                refilled: now,
                in_flight: 0,
                heavy_waiting: 0,
            });
        let rate = self.limits.rate_per_identity.max(f64::MIN_POSITIVE);
        budget.tokens = (budget.tokens + rate * now.duration_since(budget.refilled).as_secs_f64())
            .min(self.limits.burst_per_identity);
        budget.refilled = now;
        if budget.in_flight >= self.limits.in_flight_per_identity {
            return Err((Throttle::InFlight, Duration::from_secs(1)));
        }
        if budget.tokens < 1.0 {
            let wait = Duration::from_secs_f64(((1.0 - budget.tokens) / rate).min(3600.0));
            return Err((Throttle::Rate, wait));
        }
        budget.tokens -= 1.0;
        budget.in_flight += 1;
        Ok(InFlight {
            admission: self.clone(),
            identity: identity.to_string(),
        })
    }

    fn refuse(&self, why: Throttle, retry_after: Duration, identity: &str) -> Response {
        if let Some(m) = &self.metrics {
            m.throttled(why);
        }
        let seconds = retry_after.as_secs_f64().ceil().max(1.0) as u64;
        let message = match why {
            Throttle::InFlight => format!(
                "`{identity}` has {} requests in flight already; retry after {seconds} s",
                self.limits.in_flight_per_identity
            ),
            Throttle::Rate => format!(
                "`{identity}` sent more than {} requests per second; retry after {seconds} s",
                self.limits.rate_per_identity
            ),
            Throttle::HeavyQueue => format!(
                "too many expensive requests are waiting (at most {} in all, {} of `{identity}`); \
                 retry after {seconds} s",
                self.limits.heavy_queue, HEAVY_WAITING_PER_IDENTITY
            ),
        };
        let mut response = ApiError::new(StatusCode::TOO_MANY_REQUESTS, message).into_response();
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        response
    }
}

/// A request's place in its identity's budget, given back on drop.
struct InFlight {
    admission: Arc<Admission>,
    identity: String,
}

impl InFlight {
    /// Queues for a heavy slot, within this identity's share of the queue
    /// and the whole queue's length.
    async fn heavy_slot(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Response> {
        let a = &self.admission;
        {
            let mut budgets = a.budgets.lock().unwrap_or_else(|p| p.into_inner());
            let mine = budgets
                .get_mut(&self.identity)
                .map(|b| &mut b.heavy_waiting);
            let full = a.waiting.load(Ordering::SeqCst) >= a.limits.heavy_queue;
            match mine {
                Some(n) if *n < HEAVY_WAITING_PER_IDENTITY && !full => *n += 1,
                _ => {
                    return Err(a.refuse(
                        Throttle::HeavyQueue,
                        Duration::from_secs(1),
                        &self.identity,
                    ))
                }
            }
            a.waiting.fetch_add(1, Ordering::SeqCst);
        }
        let acquired = a.heavy.clone().acquire_owned().await;
        a.waiting.fetch_sub(1, Ordering::SeqCst);
        if let Some(b) = a
            .budgets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&self.identity)
        {
            b.heavy_waiting = b.heavy_waiting.saturating_sub(1);
        }
        acquired.map_err(|_| {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the service is stopping")
                .into_response()
        })
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut budgets = self
            .admission
            .budgets
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(b) = budgets.get_mut(&self.identity) {
            b.in_flight = b.in_flight.saturating_sub(1);
        }
    }
}

/// Middleware: admits the request, or answers 429 with `Retry-After` (see
/// the module documentation). A request without a [`Caller`] (an in-process
/// router, no TLS) is admitted.
pub async fn admit(
    State(admission): State<Arc<Admission>>,
    caller: Option<Extension<Caller>>,
    route: Option<MatchedPath>,
    request: Request,
    next: Next,
) -> Response {
    let Some(Extension(Caller(caller))) = caller else {
        return next.run(request).await;
    };
    if admission.exempt.contains(&caller.id) {
        return next.run(request).await;
    }
    let weight = (admission.weigh)(
        request.method(),
        route.as_ref().map_or("", MatchedPath::as_str),
    );
    let place = match admission.take(&caller.id) {
        Ok(place) => place,
        Err((why, wait)) => return admission.refuse(why, wait, &caller.id),
    };
    let slot = match weight {
        Weight::Light => None,
        Weight::Heavy => match place.heavy_slot().await {
            Ok(slot) => Some(slot),
            Err(refused) => return refused,
        },
    };
    // The request runs as a task of its own that keeps its place and its
    // slot until its work is done: a client that hangs up (an HTTP/2 stream
    // reset) stops waiting for the answer, not the work, so it must not
    // get the place back early and start more.
    let work = tokio::spawn(async move {
        let response = next.run(request).await;
        drop((slot, place));
        response
    });
    work.await.unwrap_or_else(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the request was interrupted",
        )
        .into_response()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> AdmissionLimits {
        AdmissionLimits {
            in_flight_per_identity: 2,
            rate_per_identity: 10.0,
            burst_per_identity: 3.0,
            heavy_slots: 1,
            heavy_queue: 1,
        }
    }

    fn light(_: &Method, _: &str) -> Weight {
        Weight::Light
    }

    #[test]
    fn an_identity_gets_its_burst_then_waits_for_tokens() {
        let a = Arc::new(Admission::new(limits(), light, None));
        for _ in 0..3 {
            drop(a.take("dr-heart").unwrap());
        }
        let Err((why, wait)) = a.take("dr-heart").map(drop) else {
            panic!("the fourth request of a burst of three was admitted");
        };
        assert_eq!(why, Throttle::Rate);
        assert!(wait <= Duration::from_millis(100), "{wait:?}");
        // Another identity is not affected.
        drop(a.take("nurse-ward").unwrap());
        std::thread::sleep(Duration::from_millis(120));
        drop(a.take("dr-heart").unwrap());
    }

    #[tokio::test]
    async fn one_identity_holds_a_bounded_share_of_the_heavy_queue() {
        let limits = AdmissionLimits {
            in_flight_per_identity: 64,
            burst_per_identity: 100.0,
            heavy_queue: 100,
            ..limits()
        };
        let a = Arc::new(Admission::new(limits, light, None));
        // The only slot is busy.
        let busy = a.heavy.clone().acquire_owned().await.unwrap();
        let mut waiting = Vec::new();
        for _ in 0..HEAVY_WAITING_PER_IDENTITY {
            let place = a.take("mallory").unwrap();
            waiting.push(tokio::spawn(
                async move { place.heavy_slot().await.is_ok() },
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let extra = a.take("mallory").unwrap();
        assert!(
            extra.heavy_slot().await.is_err(),
            "a fifth heavy request of one identity queued"
        );
        // Another identity still queues.
        let other = a.take("dr-heart").unwrap();
        let other = tokio::spawn(async move { other.heavy_slot().await.is_ok() });
        drop(busy);
        for w in waiting {
            assert!(w.await.unwrap());
        }
        assert!(other.await.unwrap());
    }

    #[test]
    fn an_identity_has_a_bounded_number_of_requests_in_flight() {
        let a = Arc::new(Admission::new(limits(), light, None));
        let first = a.take("dr-heart").unwrap();
        let _second = a.take("dr-heart").unwrap();
        assert_eq!(
            a.take("dr-heart").map(drop).unwrap_err().0,
            Throttle::InFlight
        );
        drop(first);
        drop(a.take("dr-heart").unwrap());
    }
}
