//! Search through the authority: it holds the Mitra secret and every
//! keyword's counters (sealed, in the store), turns an authorised user's
//! keywords into tokens, and turns a writer's record keywords into index
//! entries. The record service only ever sees addresses and sealed values.
//!
//! * `POST /v1/search/tokens`: for each keyword, its tokens (addresses and
//!   value keys). A keyword whose list has grown since its last compaction is
//!   compacted first, so the tokens follow the live result set.
//! * `POST /v1/search/index`: the keywords a record is now indexed under.
//!   The authority remembers (sealed) each record's keywords, so it writes
//!   adds for new ones and deletes for dropped ones; an empty list removes
//!   the record from the index (after an erasure).
//!
//! The keyword states live in the authority's store, the entries in the
//! record service's ([`RecordAccess`]). An update writes its entries first
//! and then swaps the states (a compare-and-swap, [`Store::sse_apply`]),
//! under one lock: no two updates compute the same addresses, and a crash
//! between the two halves leaves only entries no state reaches, which the
//! next update writes over. A compaction removes the entries it replaced
//! after the swap.

use crate::blocking;
use crate::search;
use crate::store_error;
use crate::KeyAuthority;
use crate::WithReceipt;
pub use asclepios_api::search::{
    IndexOutcome, IndexRequest, KeywordTokens, TokenLists, TokenRequest,
};
use asclepios_audit::Action;
use asclepios_audit::AuditEvent;
use asclepios_crypto::policy::attribute_name;
use asclepios_net::server::json_body;
use asclepios_net::server::Caller;
use asclepios_net::signature::Verified;
use axum::extract::State;
use axum::Extension;
use axum::Json;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use crate::record_access::RecordAccess;
use std::sync::Arc;

use asclepios_crypto::sse::{self, KeywordState, Mitra, Op, Replay};
use asclepios_fhir::keywords::{check_keyword, MAX_QUERY_KEYWORDS};
use asclepios_store::{SseBatch, StateWrite, Store, StoreError};
use axum::http::StatusCode;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use rand_core::{OsRng, RngCore};
use zeroize::Zeroizing;

use asclepios_net::server::ApiError;

/// Addresses read from the store per statement batch while compacting.
const PAGE: u64 = 4096;
/// Attempts of an update or compaction that lost a race.
const ATTEMPTS: usize = 32;
/// Most keywords one record is indexed under.
pub const MAX_RECORD_KEYWORDS: usize = 256;

/// The authority's side of the index: keyword states in its store, entries
/// in the record service's.
pub struct SearchIndex<'a> {
    mitra: &'a Mitra,
    store: &'a Store,
    records: &'a dyn RecordAccess,
    /// Held from reading the states to swapping them (see
    /// [`SearchIndex::new`]).
    lock: &'a Mutex<()>,
}

impl std::fmt::Debug for SearchIndex<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SearchIndex(<keys redacted>)")
    }
}

/// A store failure or a lost race, while indexing.
#[derive(Debug)]
enum Failure {
    Raced,
    Api(ApiError),
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(_) => Failure::Raced,
            e => Failure::Api(asclepios_service::store_error(e)),
        }
    }
}

fn unreachable_records(e: String) -> Failure {
    Failure::Api(ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("the record service's index: {e}"),
    ))
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> Failure {
    // Sealed rows that do not open mean another key or tampering: the
    // details stay in the server log, the caller gets a 503.
    eprintln!("search index: {what}: {e}");
    Failure::Api(ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "the search index's state does not open under this authority's key",
    ))
}

fn retried<T>(mut attempt: impl FnMut() -> Result<T, Failure>) -> Result<T, ApiError> {
    for _ in 0..ATTEMPTS {
        match attempt() {
            Ok(t) => return Ok(t),
            Err(Failure::Raced) => {
                // A short random pause, so racing writers fall out of step.
                let pause = OsRng.next_u32() % 2000;
                std::thread::sleep(std::time::Duration::from_micros(u64::from(pause)));
            }
            Err(Failure::Api(e)) => return Err(e),
        }
    }
    Err(ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "the search index is busy with concurrent updates: try again",
    ))
}

/// Checks a list of keywords from a request.
pub fn check_keywords(keywords: &[String], max: usize) -> Result<(), ApiError> {
    if keywords.len() > max {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("at most {max} keywords per request"),
        ));
    }
    for k in keywords {
        check_keyword(k).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
    }
    Ok(())
}

/// Most keywords one token request may name.
pub const MAX_TOKEN_KEYWORDS: usize = MAX_QUERY_KEYWORDS;

impl<'a> SearchIndex<'a> {
    /// The index with `mitra`'s keys, its keyword states in `store` and its
    /// entries in `records`. Entries are written before the states that
    /// reach them are swapped, so a crash in between leaves only entries
    /// nobody reaches; `lock` serialises updates, so that no two compute
    /// the same addresses.
    pub fn new(
        mitra: &'a Mitra,
        store: &'a Store,
        records: &'a dyn RecordAccess,
        lock: &'a Mutex<()>,
    ) -> Self {
        SearchIndex {
            mitra,
            store,
            records,
            lock,
        }
    }

    fn exclusive(&self) -> std::sync::MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn read_state(&self, keyword: &str) -> Result<(KeywordState, Option<Vec<u8>>), Failure> {
        let row = self.mitra.state_row(keyword);
        let sealed = self.store.sse_state(&[row.to_vec()])?.pop().flatten();
        let state = match &sealed {
            Some(bytes) => self
                .mitra
                .open_state(&row, bytes)
                .map_err(|e| corrupt("keyword state", e))?,
            None => KeywordState::default(),
        };
        Ok((state, sealed))
    }

    /// Tokens for `keyword`, compacting it first when its list calls for it.
    pub fn tokens(&self, keyword: &str) -> Result<Zeroizing<Vec<u8>>, ApiError> {
        retried(|| {
            let _one_at_a_time = self.exclusive();
            let (mut state, sealed) = self.read_state(keyword)?;
            if state.should_compact() {
                self.compact(keyword, &mut state, sealed)?;
            }
            if state.entries() > sse::MAX_TOKENS as u64 {
                return Err(Failure::Api(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "this keyword matches too many records to search for on its own: add a narrower term",
                )));
            }
            Ok(sse::encode_tokens(&self.mitra.tokens(keyword, &state)))
        })
    }

    /// Searches `keyword` directly against the store, re-inserts the live ids
    /// as chunks and deletes the old entries, in one transaction with the
    /// state's compare-and-swap.
    fn compact(
        &self,
        keyword: &str,
        state: &mut KeywordState,
        sealed: Option<Vec<u8>>,
    ) -> Result<(), Failure> {
        let mut replay = Replay::default();
        let mut from = state.first;
        while from < state.next {
            let to = state.next.min(from + PAGE);
            let tokens = self.mitra.tokens_between(keyword, from, to);
            let addrs: Vec<Vec<u8>> = tokens.iter().map(|t| t.addr.to_vec()).collect();
            let values = self
                .records
                .index_get(&addrs)
                .map_err(unreachable_records)?;
            match replay.feed(&tokens, &values) {
                Ok(()) => {}
                // A concurrent compaction replaced the entries: start over.
                Err(sse::SseError::Missing(_)) => return Err(Failure::Raced),
                Err(e) => return Err(corrupt("index entry", e)),
            }
            from = to;
        }
        let live = replay.finish().ids;
        let row = self.mitra.state_row(keyword);
        let compaction = self
            .mitra
            .compact(keyword, state, &live, &mut OsRng)
            .map_err(|e| corrupt("compaction", e))?;
        let put: Vec<(Vec<u8>, Vec<u8>)> = compaction
            .put
            .into_iter()
            .map(|e| (e.addr.to_vec(), e.value))
            .collect();
        self.records
            .index_write(&put, &[])
            .map_err(unreachable_records)?;
        self.store.sse_apply(&SseBatch {
            state: vec![StateWrite {
                row: row.to_vec(),
                expect: sealed,
                new: Some(self.mitra.seal_state(&row, state, &mut OsRng)),
            }],
            ..SseBatch::default()
        })?;
        // The old entries are out of every state's reach now: removing them
        // is tidying, and one that fails leaves garbage nobody reads.
        let old: Vec<Vec<u8>> = compaction.delete.iter().map(|a| a.to_vec()).collect();
        if let Err(e) = self.records.index_write(&[], &old) {
            eprintln!("search index: compacted entries left behind: {e}");
        }
        Ok(())
    }

    /// Indexes record `id` under exactly `keywords`: adds what is new,
    /// deletes what it no longer matches.
    pub fn set_keywords(&self, id: &[u8], keywords: &[String]) -> Result<IndexOutcome, ApiError> {
        let mut out = self.set_keywords_many(&[(id.to_vec(), keywords.to_vec())])?;
        Ok(out.pop().expect("one outcome per record"))
    }

    /// [`SearchIndex::set_keywords`] for many records in one transaction (a
    /// bulk import): every keyword's counters are read and swapped once.
    pub fn set_keywords_many(
        &self,
        records: &[(Vec<u8>, Vec<String>)],
    ) -> Result<Vec<IndexOutcome>, ApiError> {
        let mut seen = BTreeSet::new();
        if !records.iter().all(|(id, _)| seen.insert(id.as_slice())) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "a record appears twice in one index batch",
            ));
        }
        retried(|| {
            let _one_at_a_time = self.exclusive();
            self.try_set_keywords_many(records)
        })
    }

    fn try_set_keywords_many(
        &self,
        records: &[(Vec<u8>, Vec<String>)],
    ) -> Result<Vec<IndexOutcome>, Failure> {
        let doc_rows: Vec<[u8; 16]> = records
            .iter()
            .map(|(id, _)| self.mitra.doc_row(id))
            .collect();
        let sealed_docs = self
            .store
            .sse_state(&doc_rows.iter().map(|r| r.to_vec()).collect::<Vec<_>>())?;
        let mut batch = SseBatch::default();
        let mut outcomes = Vec::with_capacity(records.len());
        // Each keyword's updates, in record order.
        let mut ops: BTreeMap<String, Vec<(Op, &[u8])>> = BTreeMap::new();
        for (((id, keywords), doc_row), sealed_doc) in
            records.iter().zip(&doc_rows).zip(sealed_docs)
        {
            let old: Vec<String> = match &sealed_doc {
                Some(bytes) => self
                    .mitra
                    .open_keywords(doc_row, bytes)
                    .map_err(|e| corrupt("record keywords", e))?,
                None => Vec::new(),
            };
            let wanted: BTreeSet<&str> = keywords.iter().map(String::as_str).collect();
            let old: BTreeSet<&str> = old.iter().map(String::as_str).collect();
            let mut outcome = IndexOutcome {
                added: 0,
                removed: 0,
            };
            for k in wanted.difference(&old) {
                outcome.added += 1;
                ops.entry(k.to_string())
                    .or_default()
                    .push((Op::Add, id.as_slice()));
            }
            for k in old.difference(&wanted) {
                outcome.removed += 1;
                ops.entry(k.to_string())
                    .or_default()
                    .push((Op::Delete, id.as_slice()));
            }
            if outcome.added + outcome.removed > 0 {
                batch.state.push(StateWrite {
                    row: doc_row.to_vec(),
                    expect: sealed_doc,
                    new: (!wanted.is_empty()).then(|| {
                        let list: Vec<String> = wanted.iter().map(|k| k.to_string()).collect();
                        self.mitra.seal_keywords(doc_row, &list, &mut OsRng)
                    }),
                });
            }
            outcomes.push(outcome);
        }
        let rows: Vec<Vec<u8>> = ops
            .keys()
            .map(|k| self.mitra.state_row(k).to_vec())
            .collect();
        let sealed_states = self.store.sse_state(&rows)?;
        for ((keyword, ops), (row, sealed)) in ops.iter().zip(rows.into_iter().zip(sealed_states)) {
            let row16: [u8; 16] = row.as_slice().try_into().expect("row ids are 16 bytes");
            let mut state = match &sealed {
                Some(bytes) => self
                    .mitra
                    .open_state(&row16, bytes)
                    .map_err(|e| corrupt("keyword state", e))?,
                None => KeywordState::default(),
            };
            let entries = self
                .mitra
                .update(keyword, &mut state, ops, &mut OsRng)
                .map_err(|e| Failure::Api(ApiError::new(StatusCode::BAD_REQUEST, e.to_string())))?;
            batch
                .put
                .extend(entries.into_iter().map(|e| (e.addr.to_vec(), e.value)));
            batch.state.push(StateWrite {
                new: Some(self.mitra.seal_state(&row16, &state, &mut OsRng)),
                row,
                expect: sealed,
            });
        }
        if !batch.state.is_empty() {
            // Entries go in a shuffled order, so the batch does not line up
            // with the keywords' sorted order.
            shuffle(&mut batch.put);
            self.records
                .index_write(&std::mem::take(&mut batch.put), &[])
                .map_err(unreachable_records)?;
            self.store.sse_apply(&batch)?;
        }
        Ok(outcomes)
    }
}

fn shuffle<T>(items: &mut [T]) {
    for i in (1..items.len()).rev() {
        let j = (OsRng.next_u64() % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}

/// The tokens of a keyword list, base64 for the JSON answer.
pub fn token_lists(index: &SearchIndex<'_>, keywords: &[String]) -> Result<TokenLists, ApiError> {
    let mut lists = Vec::with_capacity(keywords.len());
    for k in keywords {
        lists.push(KeywordTokens {
            keyword: k.clone(),
            tokens: B64.encode(&*index.tokens(k)?),
        });
    }
    Ok(TokenLists { lists })
}

impl KeyAuthority {
    pub(crate) fn index(&self) -> search::SearchIndex<'_> {
        search::SearchIndex::new(&self.mitra, &self.store, &*self.records, &self.index_lock)
    }

    /// Search tokens for an authorised caller: an active identity holding
    /// one of the search roles. A search result names records (patient and
    /// id) whatever the caller's key opens, so search is a role of its own.
    pub(crate) fn search_tokens(
        &self,
        caller: &asclepios_net::pki::PeerIdentity,
        v: &Verified,
        req: search::TokenRequest,
    ) -> Result<WithReceipt<search::TokenLists>, ApiError> {
        // The audit event names the keywords (it is sealed to auditors); a
        // search for one patient's records is also shown to that patient.
        let shown: String = req.keywords.join(" and ").chars().take(1000).collect();
        let patients: BTreeSet<&str> = req
            .keywords
            .iter()
            .filter_map(|k| k.strip_prefix("patient:"))
            .filter(|p| asclepios_net::pki::check_identity_id(p).is_ok())
            .collect();
        let patient = (patients.len() == 1).then(|| *patients.first().expect("one"));
        let event = |outcome| {
            AuditEvent::new(
                &caller.id,
                Action::Search,
                format!("search: {shown}"),
                patient,
                outcome,
                Some(v.signature.clone()),
            )
        };
        let checks = || -> Result<search::TokenLists, ApiError> {
            self.active(&caller.id)?;
            self.require_attested(caller)?;
            let held = self.current_attributes(&caller.id)?;
            if !held
                .iter()
                .any(|a| self.search_roles.iter().any(|r| r == attribute_name(a)))
            {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    format!("searching needs one of: {}", self.search_roles.join(", ")),
                ));
            }
            search::check_keywords(&req.keywords, search::MAX_TOKEN_KEYWORDS)?;
            search::token_lists(&self.index(), &req.keywords)
        };
        asclepios_service::log_outcome(&self.trail, v, checks(), event)
    }

    /// Indexes a record under the keywords its writer derived. Only the
    /// author of the record's latest version, or its patient, may.
    pub(crate) fn index_record(
        &self,
        caller: &asclepios_net::pki::PeerIdentity,
        v: &Verified,
        req: search::IndexRequest,
    ) -> Result<WithReceipt<search::IndexOutcome>, ApiError> {
        asclepios_service::check_name("patient", &req.patient)?;
        asclepios_service::check_name("record_id", &req.record_id)?;
        let checks = || -> Result<(), ApiError> {
            self.active(&caller.id)?;
            // An unattested device writes nothing into the index (M6).
            self.require_attested(caller)?;
            search::check_keywords(&req.keywords, search::MAX_RECORD_KEYWORDS)?;
            let latest = self
                .records
                .record_version(&req.patient, &req.record_id, None)
                .map_err(|e| {
                    ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("the record service: {e}"),
                    )
                })?
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::NOT_FOUND,
                        format!("no record {}/{}", req.patient, req.record_id),
                    )
                })?;
            // The author as the record's signature proves it, with the key
            // the directory vouches for: the record store's field is not
            // evidence.
            let claimed = asclepios_service::stored_author(&latest.body)
                .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e))?;
            // A service identity authors nothing: a version "by" one is the
            // record service operator's plant.
            let key = self
                .store
                .identity(&claimed)
                .map_err(store_error)?
                .filter(|i| i.kind != crate::facts::SERVICE_KIND)
                .and_then(|i| i.public_key)
                .unwrap_or_default();
            let author = asclepios_service::verified_author(
                &latest.body,
                &req.patient,
                &req.record_id,
                latest.version,
                &key,
            )
            .map_err(|e| ApiError::new(StatusCode::CONFLICT, e))?;
            if author != caller.id && req.patient != caller.id {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "only the author of the record's latest version, or its patient, may index it",
                ));
            }
            Ok(())
        };
        let id = asclepios_api::records::search_ref(&req.patient, &req.record_id);
        let result = checks().and_then(|()| self.index().set_keywords(&id, &req.keywords));
        let detail = result.as_ref().map_or(String::new(), |o| {
            format!(": +{} -{} keywords", o.added, o.removed)
        });
        asclepios_service::log_outcome(&self.trail, v, result, |outcome| {
            AuditEvent::new(
                &caller.id,
                Action::Update,
                format!("search-index/{}/{}{detail}", req.patient, req.record_id),
                Some(&req.patient),
                outcome,
                Some(v.signature.clone()),
            )
        })
    }
}

pub(crate) async fn search_tokens(
    State(s): State<Arc<KeyAuthority>>,
    Extension(Caller(caller)): Extension<Caller>,
    Extension(v): Extension<Verified>,
    body: axum::body::Bytes,
) -> Result<Json<WithReceipt<search::TokenLists>>, ApiError> {
    let req: search::TokenRequest = json_body(&body)?;
    blocking(move || s.search_tokens(&caller, &v, req))
        .await
        .map(Json)
}

pub(crate) async fn index_record(
    State(s): State<Arc<KeyAuthority>>,
    Extension(Caller(caller)): Extension<Caller>,
    Extension(v): Extension<Verified>,
    body: axum::body::Bytes,
) -> Result<Json<WithReceipt<search::IndexOutcome>>, ApiError> {
    let req: search::IndexRequest = json_body(&body)?;
    blocking(move || s.index_record(&caller, &v, req))
        .await
        .map(Json)
}

#[cfg(test)]
mod tests {
    use super::*;
    use asclepios_crypto::sse::SseKey;

    fn search(index: &SearchIndex<'_>, keyword: &str) -> Vec<Vec<u8>> {
        let tokens = sse::decode_tokens(&index.tokens(keyword).unwrap()).unwrap();
        let addrs: Vec<Vec<u8>> = tokens.iter().map(|t| t.addr.to_vec()).collect();
        let values = index.records.index_get(&addrs).unwrap();
        let mut ids = sse::open_results(&tokens, &values).unwrap().ids;
        ids.sort();
        ids
    }

    #[test]
    fn concurrent_writers_share_keywords_without_losing_updates() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(&dir.path().join("s.db")).unwrap();
        let mitra = Mitra::new(&SseKey::from_bytes([4; 32]));
        let records = crate::record_access::LocalRecords(store.clone());
        let lock = Mutex::new(());
        let index = SearchIndex::new(&mitra, &store, &records, &lock);
        // Four writers index records that all share `type:Observation`, so
        // every write races on that keyword's counters.
        std::thread::scope(|scope| {
            for w in 0..4 {
                let index = &index;
                scope.spawn(move || {
                    for r in 0..10 {
                        let id = format!("pat-{w}/obs-{r}").into_bytes();
                        let kws = vec!["type:Observation".to_string(), format!("patient:pat-{w}")];
                        index.set_keywords(&id, &kws).unwrap();
                    }
                });
            }
        });
        let all = search(&index, "type:Observation");
        assert_eq!(all.len(), 40);
        assert_eq!(search(&index, "patient:pat-2").len(), 10);
        // The 40 updates made the next search compact; answers stay the same.
        let again = search(&index, "type:Observation");
        assert_eq!(again, all);

        // Changing a record's keywords deletes the dropped ones.
        let id = b"pat-1/obs-3".to_vec();
        let outcome = index
            .set_keywords(&id, &["type:Condition".to_string()])
            .unwrap();
        assert_eq!(
            outcome,
            IndexOutcome {
                added: 1,
                removed: 2
            }
        );
        assert_eq!(search(&index, "type:Observation").len(), 39);
        assert_eq!(search(&index, "type:Condition"), vec![id.clone()]);
        assert_eq!(search(&index, "patient:pat-1").len(), 9);
        // Removing it entirely, twice: the second time changes nothing.
        for _ in 0..2 {
            index.set_keywords(&id, &[]).unwrap();
            assert!(search(&index, "type:Condition").is_empty());
        }
        assert!(index
            .set_keywords_many(&[(id.clone(), vec![]), (id, vec![])])
            .is_err());
    }
}
