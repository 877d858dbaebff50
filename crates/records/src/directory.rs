//! The record service's view of the directory: the facts the key authority
//! signed, never rows of a store.
//!
//! Every request reads one [`DirectoryFacts`] snapshot: who the caller is,
//! whether it is active, the key its certificate must carry, the attributes
//! it holds and their versions, its attestation, live break-glass grants and
//! statistics slots' owners. The view asks its [`FactsSource`] for newer
//! facts at each request, verifies the authority's signature and refuses to
//! move back to an older change. If the authority cannot vouch (it is
//! unreachable or in integrity alarm), requests fail closed with 503.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use asclepios_api::{DirectoryFacts, FactsSource, SignedFacts};
use asclepios_crypto::Policy;
use asclepios_net::client::SignedClient;
use asclepios_net::server::ApiError;
use axum::http::StatusCode;
use ed25519_dalek::VerifyingKey;

/// Verified directory facts, kept fresh from a source.
pub struct DirectoryView {
    authority: VerifyingKey,
    source: Arc<dyn FactsSource>,
    current: RwLock<Option<Arc<DirectoryFacts>>>,
    refreshing: Mutex<()>,
}

impl std::fmt::Debug for DirectoryView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectoryView")
            .field("change", &self.last().map(|f| f.change))
            .finish_non_exhaustive()
    }
}

fn unavailable(why: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("the key authority cannot vouch for the directory now: {why}"),
    )
}

impl DirectoryView {
    /// A view of the facts `authority` (its Ed25519 key) signs, from `source`.
    pub fn new(authority: VerifyingKey, source: Arc<dyn FactsSource>) -> Self {
        DirectoryView {
            authority,
            source,
            current: RwLock::new(None),
            refreshing: Mutex::new(()),
        }
    }

    /// The current facts: newer ones from the source if there are any,
    /// verified and not older than those held (503 otherwise). Blocks.
    ///
    /// One request at a time asks the source; a request that comes while
    /// another is asking acts on the facts held (at most that one fetch
    /// behind) instead of queueing behind it, so a burst of directory
    /// changes (each makes the authority rebuild its facts) cannot stall
    /// the service.
    pub fn facts(&self) -> Result<Arc<DirectoryFacts>, ApiError> {
        let _one_at_a_time = match self.refreshing.try_lock() {
            Ok(guard) => guard,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => match self.last() {
                Some(held) => return Ok(held),
                None => self.refreshing.lock().unwrap_or_else(|p| p.into_inner()),
            },
        };
        let held = self.last();
        let known = held.as_ref().map(|f| f.change);
        match self.source.fetch(known).map_err(unavailable)? {
            None => held.ok_or_else(|| unavailable("no facts yet")),
            Some(signed) => {
                let facts = Arc::new(
                    signed
                        .verify_after(&self.authority, known.unwrap_or(0))
                        .map_err(unavailable)?,
                );
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(facts.clone());
                Ok(facts)
            }
        }
    }

    /// Asks the authority for newer facts now; whether there were any (then
    /// they are held). Blocks.
    pub fn refresh_now(&self) -> Result<bool, ApiError> {
        let _one_at_a_time = self.refreshing.lock().unwrap_or_else(|p| p.into_inner());
        let known = self.last().map(|f| f.change);
        match self.source.fetch_now(known).map_err(unavailable)? {
            None => Ok(false),
            Some(signed) => {
                let facts = signed
                    .verify_after(&self.authority, known.unwrap_or(0))
                    .map_err(unavailable)?;
                let newer = Some(facts.change) != known;
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(facts));
                Ok(newer)
            }
        }
    }

    /// Asks the source to fetch newer facts soon.
    pub fn wake(&self) {
        self.source.wake();
    }

    /// The facts last verified, without asking the source: what the audit
    /// trail seals to while the authority cannot vouch (its events must
    /// still be written).
    pub fn last(&self) -> Option<Arc<DirectoryFacts>> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// The authority's facts as a poller last fetched them over mutual TLS:
/// the record service in a process of its own. A background task asks
/// `GET /v1/directory/facts` every `every`; [`FactsSource::fetch`] answers
/// from what it got, and fails (so requests fail closed) when no answer
/// came for `max_age`. Revocations thus reach the record service within one
/// poll; the keys' attribute versions revoke at once regardless.
#[derive(Debug)]
pub struct PolledFacts {
    polled: RwLock<Polled>,
    max_age: Duration,
    wake: Arc<tokio::sync::Notify>,
    client: Option<Arc<SignedClient>>,
}

#[derive(Debug, Default)]
struct Polled {
    latest: Option<(u64, SignedFacts)>,
    answered_at: Option<Instant>,
    error: Option<String>,
}

/// Only the change number, read before the signature is checked (the view
/// checks it): which copy is newer.
#[derive(serde::Deserialize)]
struct Change {
    change: u64,
}

impl PolledFacts {
    /// Starts polling the authority through `client` (a service identity's
    /// connection) on the current Tokio runtime; the task ends when the
    /// returned source is dropped.
    pub fn spawn(client: SignedClient, every: Duration, max_age: Duration) -> Arc<Self> {
        let wake = Arc::new(tokio::sync::Notify::new());
        let client = Arc::new(client);
        let source = Arc::new(PolledFacts {
            polled: RwLock::new(Polled::default()),
            max_age,
            wake: wake.clone(),
            client: Some(client.clone()),
        });
        let weak = Arc::downgrade(&source);
        tokio::spawn(async move {
            while let Some(source) = weak.upgrade() {
                let known = source
                    .polled
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .latest
                    .as_ref()
                    .map(|(c, _)| *c);
                let answer = poll(&client, known).await;
                source.record(answer);
                drop(source);
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = wake.notified() => {}
                }
            }
        });
        source
    }

    fn record(&self, answer: Result<Option<(u64, SignedFacts)>, String>) {
        let mut polled = self.polled.write().unwrap_or_else(|p| p.into_inner());
        match answer {
            Ok(newer) => {
                polled.answered_at = Some(Instant::now());
                polled.error = None;
                if let Some(newer) = newer {
                    polled.latest = Some(newer);
                }
            }
            Err(e) => polled.error = Some(e),
        }
    }

    /// Waits until the first answer came (for start-up), at most `limit`.
    pub async fn first_answer(&self, limit: Duration) -> Result<(), String> {
        let start = Instant::now();
        loop {
            {
                let polled = self.polled.read().unwrap_or_else(|p| p.into_inner());
                if polled.latest.is_some() {
                    return Ok(());
                }
                if start.elapsed() > limit {
                    return Err(polled
                        .error
                        .clone()
                        .unwrap_or_else(|| "the key authority did not answer".into()));
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn poll(
    client: &SignedClient,
    known: Option<u64>,
) -> Result<Option<(u64, SignedFacts)>, String> {
    let path = match known {
        Some(c) => format!("/v1/directory/facts?known={c}"),
        None => "/v1/directory/facts".to_string(),
    };
    let response = client
        .send(reqwest::Method::GET, &path, Vec::new())
        .await
        .map_err(|e| format!("the key authority: {e}"))?;
    let status = response.status();
    if status == reqwest::StatusCode::NO_CONTENT {
        return Ok(None);
    }
    let body = response
        .bytes()
        .await
        .map_err(|e| format!("the key authority: {e}"))?;
    if !status.is_success() {
        return Err(format!(
            "the key authority answered {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(512)])
        ));
    }
    let signed: SignedFacts = serde_json::from_slice(&body)
        .map_err(|e| format!("the key authority's facts are malformed: {e}"))?;
    let change = serde_json::from_str::<Change>(&signed.facts)
        .map_err(|e| format!("the key authority's facts are malformed: {e}"))?
        .change;
    Ok(Some((change, signed)))
}

impl FactsSource for PolledFacts {
    fn wake(&self) {
        self.wake.notify_one();
    }

    fn fetch_now(&self, known: Option<u64>) -> Result<Option<SignedFacts>, String> {
        let (Some(client), Ok(runtime)) = (&self.client, tokio::runtime::Handle::try_current())
        else {
            return self.fetch(known);
        };
        let answer = runtime.block_on(poll(client, known));
        let newer = answer.clone();
        self.record(answer);
        newer.map(|n| n.map(|(_, signed)| signed))
    }

    fn fetch(&self, known: Option<u64>) -> Result<Option<SignedFacts>, String> {
        let polled = self.polled.read().unwrap_or_else(|p| p.into_inner());
        let fresh = polled
            .answered_at
            .is_some_and(|at| at.elapsed() <= self.max_age);
        if !fresh {
            return Err(polled.error.clone().unwrap_or_else(|| {
                format!(
                    "no answer from the key authority for {} s",
                    self.max_age.as_secs()
                )
            }));
        }
        Ok(match &polled.latest {
            Some((change, signed)) if Some(*change) != known => Some(signed.clone()),
            _ => None,
        })
    }
}

/// `policy` with every attribute at its current version in `facts`.
pub fn resolve(facts: &DirectoryFacts, policy: &Policy) -> Result<Policy, String> {
    policy
        .at_versions(&|name| facts.attribute_version(name))
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use asclepios_api::directory::Member;
    use ed25519_dalek::{Signer, SigningKey};

    /// A source that answers what the test queued, as a service in between
    /// (or a stolen copy of old answers) could.
    #[derive(Default)]
    struct Queued(Mutex<Vec<Result<Option<SignedFacts>, String>>>);

    impl FactsSource for Queued {
        fn fetch(&self, _known: Option<u64>) -> Result<Option<SignedFacts>, String> {
            self.0.lock().unwrap().remove(0)
        }
    }

    fn authority() -> SigningKey {
        SigningKey::from_bytes(&[9; 32])
    }

    fn facts(change: u64, nurse_holds: &str) -> DirectoryFacts {
        let mut f = DirectoryFacts {
            change,
            ..Default::default()
        };
        f.members.insert(
            "nurse-1".into(),
            Member {
                kind: "clinician".into(),
                public_key: None,
                active: true,
                attributes: vec![nurse_holds.into()],
            },
        );
        f
    }

    fn signed(f: &DirectoryFacts, key: &SigningKey) -> SignedFacts {
        f.signed_with(|m| key.sign(m))
    }

    fn view(answers: Vec<Result<Option<SignedFacts>, String>>) -> DirectoryView {
        DirectoryView::new(
            authority().verifying_key(),
            Arc::new(Queued(Mutex::new(answers))),
        )
    }

    #[test]
    fn facts_are_taken_from_the_authority_and_kept_until_they_change() {
        let v = view(vec![
            Ok(Some(signed(&facts(1, "care-team:pat-1"), &authority()))),
            Ok(None),
            Ok(Some(signed(&facts(2, "role:nurse"), &authority()))),
        ]);
        assert_eq!(v.facts().unwrap().change, 1);
        assert_eq!(
            v.facts().unwrap().current_attributes("nurse-1"),
            ["care-team:pat-1"]
        );
        assert_eq!(
            v.facts().unwrap().current_attributes("nurse-1"),
            ["role:nurse"]
        );
    }

    #[test]
    fn facts_signed_by_anyone_else_are_refused() {
        let forged = signed(
            &facts(5, "patient:pat-1"),
            &SigningKey::from_bytes(&[1; 32]),
        );
        let v = view(vec![
            Ok(Some(signed(&facts(1, "care-team:pat-1"), &authority()))),
            Ok(Some(forged)),
        ]);
        v.facts().unwrap();
        let e = v.facts().unwrap_err();
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            e.message.contains("not signed by the key authority"),
            "{}",
            e.message
        );
        // What was verified before stays; nothing of the forgery is kept.
        assert_eq!(v.last().unwrap().change, 1);
        assert_eq!(
            v.last().unwrap().current_attributes("nurse-1"),
            ["care-team:pat-1"]
        );
    }

    #[test]
    fn an_older_authentic_copy_is_a_rollback() {
        let old = signed(&facts(1, "care-team:pat-1"), &authority());
        let v = view(vec![
            Ok(Some(signed(&facts(2, "role:nurse"), &authority()))),
            Ok(Some(old)),
        ]);
        v.facts().unwrap();
        let e = v.facts().unwrap_err();
        assert!(e.message.contains("rollback"), "{}", e.message);
        assert_eq!(v.last().unwrap().change, 2);
    }

    #[test]
    fn without_the_authority_requests_fail_closed() {
        let v = view(vec![Ok(None), Err("connection refused".into())]);
        assert_eq!(
            v.facts().unwrap_err().status,
            StatusCode::SERVICE_UNAVAILABLE
        );
        let e = v.facts().unwrap_err();
        assert!(e.message.contains("connection refused"), "{}", e.message);
    }

    #[test]
    fn polled_facts_answer_only_while_the_authority_answers() {
        let polled = |max_age| PolledFacts {
            polled: RwLock::new(Polled::default()),
            max_age,
            wake: Default::default(),
            client: None,
        };
        let fresh = polled(Duration::from_secs(60));
        assert!(fresh.fetch(None).is_err(), "nothing polled yet");
        let one = signed(&facts(1, "role:nurse"), &authority());
        fresh.record(Ok(Some((1, one.clone()))));
        assert_eq!(fresh.fetch(None).unwrap(), Some(one.clone()));
        assert_eq!(fresh.fetch(Some(1)).unwrap(), None);
        // A failed poll keeps the last answer until it is too old.
        fresh.record(Err("connection reset".into()));
        assert_eq!(fresh.fetch(None).unwrap(), Some(one.clone()));

        let stale = polled(Duration::ZERO);
        stale.record(Ok(Some((1, one))));
        stale.record(Err("connection reset".into()));
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(stale.fetch(None).unwrap_err(), "connection reset");
    }
}
