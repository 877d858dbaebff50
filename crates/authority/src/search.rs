//! Search through the authority: it holds the Mitra secret and every
//! keyword's counters (sealed, in its own store), turns an authorised
//! user's query into tokens, and turns a writer's record keywords into index
//! entries. The record service only ever sees addresses and sealed values.
//!
//! * `POST /v1/search/tokens`: a query's tokens (addresses and value keys)
//!   for the patients the searcher may search. A list that has grown since
//!   its last compaction is compacted first, so the tokens follow the live
//!   result set.
//! * `POST /v1/search/index`: the keywords a record is now indexed under.
//!   The authority remembers (sealed) each record's keywords, so it writes
//!   adds for new ones and deletes for dropped ones; an empty list removes
//!   the record from the index (after an erasure).
//!
//! # The index is keyed per patient
//!
//! A record of patient `p` is filed under [`scoped_keyword`]`(p, k)` for
//! each of its keywords `k`: every (patient, keyword) pair is a Mitra list
//! of its own, with its own counters and its own addresses. A token opens
//! one patient's list and nothing else, so the authority decides, patient by
//! patient, whose records a search can reach:
//!
//! * the searcher's circle: the patients it holds `patient:`, `care-team:`,
//!   `consent:` or live `emergency:` attributes for, at the time of the
//!   request;
//! * every patient in the directory, for a holder of one of the configured
//!   cross-patient roles (a registry);
//! * a query that names patients (`patient:<p>`) must name patients of
//!   that scope only (403 otherwise, whatever else it names), and then
//!   covers those patients alone.
//!
//! Tokens go only to the patients of that scope with an entry for every
//! group of the query, and each of them finds the search in their access
//! list (one audit event per patient reached, in one batch).
//!
//! What each party learns:
//!
//! * the authority: the query's keywords, who searched and which patients
//!   the search could reach (it is trusted with all three);
//! * the record service: per search, the set of addresses read, in sorted
//!   order (not grouped by keyword or patient), and which of them it wrote
//!   when (so, by timing, which write each one came from: the access
//!   pattern every SSE scheme leaks); never a keyword or a record id;
//! * the searcher: the ids of matching records of patients in its scope,
//!   not their content (its ABE key decides that).
//!
//! The keyword states and the Mitra key live in the authority's store and
//! key files alone, the entries in the record service's
//! ([`RecordAccess`]). An update writes its entries first and then swaps the
//! states (a compare-and-swap, [`Store::sse_apply`]), under one lock: no two
//! updates compute the same addresses, and a crash between the two halves
//! leaves only entries no state reaches, which the next update writes over.
//! A compaction removes the entries it replaced after the swap.

use crate::blocking;
use crate::search;
use crate::store_error;
use crate::KeyAuthority;
use crate::WithReceipt;
pub use asclepios_api::search::{
    distinct_keywords, IndexOutcome, IndexRequest, KeywordTokens, TokenLists, TokenRequest,
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
    tracing::error!("search index: {what}: {e}");
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

/// The keyword a record of `patient` is filed under in the index for its
/// keyword `keyword`: the index is keyed per patient (see the module docs).
/// Patient pseudonyms hold no `/`, so the first one splits the two.
pub fn scoped_keyword(patient: &str, keyword: &str) -> String {
    format!("{patient}/{keyword}")
}

/// The keywords a record of `patient` is filed under.
pub fn scoped_keywords(patient: &str, keywords: &[String]) -> Vec<String> {
    keywords
        .iter()
        .map(|k| scoped_keyword(patient, k))
        .collect()
}

/// A query's tokens (see [`SearchIndex::query_tokens`]).
pub struct QueryTokens {
    /// Each distinct keyword (sorted) and its tokens, encoded.
    pub lists: Vec<(String, Zeroizing<Vec<u8>>)>,
    /// The patients whose lists gave tokens, sorted.
    pub reached: Vec<String>,
}

impl std::fmt::Debug for QueryTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "QueryTokens(<tokens redacted>, {} reached)",
            self.reached.len()
        )
    }
}

fn too_many() -> Failure {
    Failure::Api(ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "this keyword matches too many records to search for on its own: add a narrower term",
    ))
}

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
        Ok((self.open_state(&row, sealed.as_deref())?, sealed))
    }

    /// The keyword state sealed in `row` (none: a keyword never indexed).
    fn open_state(&self, row: &[u8; 16], sealed: Option<&[u8]>) -> Result<KeywordState, Failure> {
        match sealed {
            Some(bytes) => self
                .mitra
                .open_state(row, bytes)
                .map_err(|e| corrupt("keyword state", e)),
            None => Ok(KeywordState::default()),
        }
    }

    /// Tokens for `keyword` (as filed: see [`scoped_keyword`]), compacting
    /// it first when its list calls for it.
    pub fn tokens(&self, keyword: &str) -> Result<Zeroizing<Vec<u8>>, ApiError> {
        retried(|| {
            let _one_at_a_time = self.exclusive();
            let (mut state, sealed) = self.read_state(keyword)?;
            if state.should_compact() {
                self.compact(keyword, &mut state, sealed)?;
            }
            if state.entries() > sse::MAX_TOKENS as u64 {
                return Err(too_many());
            }
            Ok(sse::encode_tokens(&self.mitra.tokens(keyword, &state)))
        })
    }

    /// The tokens of a query (`groups`: see [`TokenRequest`]) over the
    /// patients of `scope`. A patient is reached when each group has a
    /// keyword with entries in that patient's lists; only reached patients'
    /// lists give tokens. One keyword's tokens are its lists of the reached
    /// patients, one after the other (their ids differ, so a replay of the
    /// whole gives the union).
    pub fn query_tokens(
        &self,
        groups: &[Vec<String>],
        scope: &BTreeSet<String>,
    ) -> Result<QueryTokens, ApiError> {
        let keywords: Vec<&str> = distinct_keywords(groups).into_iter().collect();
        retried(|| {
            let _one_at_a_time = self.exclusive();
            let rows: Vec<[u8; 16]> = scope
                .iter()
                .flat_map(|p| {
                    keywords
                        .iter()
                        .map(move |k| self.mitra.state_row(&scoped_keyword(p, k)))
                })
                .collect();
            let mut sealed = self
                .store
                .sse_state(&rows.iter().map(|r| r.to_vec()).collect::<Vec<_>>())?
                .into_iter();
            let mut lists: Vec<Vec<sse::Token>> = vec![Vec::new(); keywords.len()];
            let mut reached = Vec::new();
            for (patient, rows) in scope.iter().zip(rows.chunks(keywords.len())) {
                let mut states = Vec::with_capacity(keywords.len());
                for row in rows {
                    let sealed = sealed.next().flatten();
                    states.push((self.open_state(row, sealed.as_deref())?, sealed));
                }
                let has = |k: &String| {
                    keywords
                        .binary_search(&k.as_str())
                        .is_ok_and(|i| states[i].0.entries() > 0)
                };
                if !groups.iter().all(|g| g.iter().any(has)) {
                    continue;
                }
                reached.push(patient.clone());
                for ((keyword, (state, sealed)), list) in
                    keywords.iter().zip(states).zip(&mut lists)
                {
                    let mut state = state;
                    if state.entries() == 0 {
                        continue;
                    }
                    let filed = scoped_keyword(patient, keyword);
                    if state.should_compact() {
                        self.compact(&filed, &mut state, sealed)?;
                    }
                    list.extend(self.mitra.tokens(&filed, &state));
                    if list.len() > sse::MAX_TOKENS {
                        return Err(too_many());
                    }
                }
            }
            Ok(QueryTokens {
                lists: keywords
                    .iter()
                    .zip(&lists)
                    .map(|(k, tokens)| (k.to_string(), sse::encode_tokens(tokens)))
                    .collect(),
                reached,
            })
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
            tracing::warn!("search index: compacted entries left behind: {e}");
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
            let mut state = self.open_state(&row16, sealed.as_deref())?;
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

/// Checks a query's shape: at least one group, no empty group, at most
/// [`MAX_TOKEN_KEYWORDS`] keywords in all, each well formed, and every
/// patient it names a well-formed pseudonym.
pub fn check_query(groups: &[Vec<String>]) -> Result<(), ApiError> {
    if groups.is_empty() || groups.iter().any(Vec::is_empty) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "a query needs at least one group, and no group may be empty",
        ));
    }
    if groups.len() > MAX_TOKEN_KEYWORDS {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("at most {MAX_TOKEN_KEYWORDS} keywords per request"),
        ));
    }
    let keywords: Vec<String> = groups.iter().flatten().cloned().collect();
    check_keywords(&keywords, MAX_TOKEN_KEYWORDS)?;
    if let Some(p) = named_patients(groups)
        .into_iter()
        .find(|p| asclepios_net::pki::check_identity_id(p).is_err())
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "`patient:{}` names no pseudonym (1 to 128 letters, digits, '-', '_' or '.')",
                asclepios_service::shown(p)
            ),
        ));
    }
    Ok(())
}

/// The patients a query names (`patient:<p>` keywords).
fn named_patients(groups: &[Vec<String>]) -> BTreeSet<&str> {
    groups
        .iter()
        .flatten()
        .filter_map(|k| k.strip_prefix("patient:"))
        .collect()
}

/// Most (patient, keyword) lists one search may look at: a circle of 1,000
/// patients with 200 keywords (a date range of a few years), or a registry
/// over 100,000 patients with two.
pub const MAX_SEARCH_LISTS: usize = 200_000;

/// Most patients one search may reach: each gets an audit event, all in one
/// batch.
pub const MAX_REACHED: usize = 20_000;

/// A query as an audit event shows it: groups joined by `and`, a group's
/// keywords by `or`; for the event of patient `to`, another patient a
/// query names shows as `patient:(another)`. At most 1,000 characters.
fn shown_query(groups: &[Vec<String>], to: Option<&str>) -> String {
    let mut out = String::new();
    for (i, group) in groups.iter().enumerate() {
        for (j, k) in group.iter().enumerate() {
            if out.len() > 1000 {
                break;
            }
            out.push_str(match (i, j) {
                (0, 0) => "",
                (_, 0) => " and ",
                _ => " or ",
            });
            match (k.strip_prefix("patient:"), to) {
                (Some(p), Some(to)) if p != to => out.push_str("patient:(another)"),
                _ => out.push_str(k),
            }
        }
    }
    out.chars().take(1000).collect()
}

/// Whose records a searcher may search.
#[derive(Debug)]
enum SearchCircle {
    /// The patients of its circle attributes, each with whether only a
    /// break-glass grant puts it there.
    Patients(BTreeMap<String, bool>),
    /// Every patient (a cross-patient role).
    Everyone,
}

impl SearchCircle {
    fn contains(&self, patient: &str) -> bool {
        match self {
            SearchCircle::Patients(p) => p.contains_key(patient),
            SearchCircle::Everyone => true,
        }
    }

    /// Whether only a break-glass grant puts `patient` in it.
    fn by_emergency(&self, patient: &str) -> bool {
        match self {
            SearchCircle::Patients(p) => p.get(patient).copied().unwrap_or(false),
            SearchCircle::Everyone => false,
        }
    }
}

/// What the audit events of a search are made from.
#[derive(Default)]
struct SearchFacts {
    /// The caller may search and the query is well formed: patients it
    /// names hear of it even if it is refused.
    vetted: bool,
    /// The patients a well-formed query names that the directory knows.
    named: Vec<String>,
    circle: Option<SearchCircle>,
}

impl KeyAuthority {
    pub(crate) fn index(&self) -> search::SearchIndex<'_> {
        search::SearchIndex::new(&self.mitra, &self.store, &*self.records, &self.index_lock)
    }

    /// Lets holders of `roles` (e.g. `role:registry`) search every
    /// patient's records; each such search is logged to every patient it
    /// reaches.
    pub fn with_cross_patient_search(mut self, roles: Vec<String>) -> Self {
        self.cross_patient_search_roles = roles;
        self
    }

    /// The privacy budgets statistics keys are checked against.
    pub fn with_stats_budgets(mut self, budgets: crate::stats::Budgets) -> Self {
        self.stats_budgets = budgets;
        self
    }

    fn search_circle(&self, held: &[String]) -> SearchCircle {
        if held.iter().any(|a| {
            self.cross_patient_search_roles
                .iter()
                .any(|r| r == attribute_name(a))
        }) {
            SearchCircle::Everyone
        } else {
            SearchCircle::Patients(asclepios_service::circle_patients(held))
        }
    }

    /// Every patient in the directory, for a cross-patient search.
    pub(crate) fn all_patients(&self) -> Result<BTreeSet<String>, ApiError> {
        Ok(self
            .store
            .identities()
            .map_err(store_error)?
            .into_iter()
            .filter(|i| i.kind == crate::facts::PATIENT_KIND)
            .map(|i| i.id)
            .collect())
    }

    /// Which of `names` the directory knows as patients.
    fn known_patients(&self, names: BTreeSet<&str>) -> Result<Vec<String>, ApiError> {
        let mut known = Vec::new();
        for name in names {
            if self
                .store
                .identity(name)
                .map_err(store_error)?
                .is_some_and(|i| i.kind == crate::facts::PATIENT_KIND)
            {
                known.push(name.to_string());
            }
        }
        Ok(known)
    }

    /// The patients a query covers: those its patient-only groups name (all
    /// in the circle, or 403), else the whole circle.
    fn search_scope(
        &self,
        caller: &str,
        circle: &SearchCircle,
        groups: &[Vec<String>],
    ) -> Result<BTreeSet<String>, ApiError> {
        let outside: Vec<&str> = named_patients(groups)
            .into_iter()
            .filter(|p| !circle.contains(p))
            .collect();
        if !outside.is_empty() {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "`{caller}` may not search the records of {}: it is not the patient, on the \
                     care team, consented or in an emergency",
                    asclepios_service::shown(&outside.join(", "))
                ),
            ));
        }
        let mut scope: Option<BTreeSet<String>> = None;
        for group in groups {
            let named: Option<BTreeSet<String>> = group
                .iter()
                .map(|k| k.strip_prefix("patient:").map(str::to_string))
                .collect();
            if let Some(named) = named {
                scope = Some(match scope {
                    None => named,
                    Some(s) => s.intersection(&named).cloned().collect(),
                });
            }
        }
        let scope = match (scope, circle) {
            (Some(named), _) => named,
            (None, SearchCircle::Patients(p)) => p.keys().cloned().collect(),
            (None, SearchCircle::Everyone) => self.all_patients()?,
        };
        let keywords = distinct_keywords(groups).len();
        let lists = scope.len().saturating_mul(keywords);
        if lists > MAX_SEARCH_LISTS {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "this query would read {lists} keyword lists ({} patients x {keywords} \
                     keywords), more than {MAX_SEARCH_LISTS}: name the patient, or narrow the \
                     date range",
                    scope.len()
                ),
            ));
        }
        Ok(scope)
    }

    /// Search tokens for an authorised caller: an active identity holding
    /// one of the search roles, for the patients of its circle (see the
    /// module docs).
    ///
    /// Audit: one event for auditors with the whole query and how many
    /// patients it reached; one for each patient it reached or named (named
    /// patients hear of a refused query too, once the caller is known to
    /// hold a search role and the query is well formed, so that nobody can
    /// fill a patient's access list with malformed requests).
    pub(crate) fn search_tokens(
        &self,
        caller: &asclepios_net::pki::PeerIdentity,
        v: &Verified,
        req: search::TokenRequest,
    ) -> Result<WithReceipt<search::TokenLists>, ApiError> {
        let mut facts = SearchFacts::default();
        let mut checks = || -> Result<(search::TokenLists, Vec<String>), ApiError> {
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
            search::check_query(&req.groups)?;
            facts.vetted = true;
            facts.named = self.known_patients(named_patients(&req.groups))?;
            let circle = facts.circle.insert(self.search_circle(&held));
            let scope = self.search_scope(&caller.id, circle, &req.groups)?;
            let found = self.index().query_tokens(&req.groups, &scope)?;
            if found.reached.len() > MAX_REACHED {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!(
                        "this query reaches {} patients, more than {MAX_REACHED}: narrow it",
                        found.reached.len()
                    ),
                ));
            }
            let lists = search::TokenLists {
                lists: found
                    .lists
                    .iter()
                    .map(|(keyword, tokens)| search::KeywordTokens {
                        keyword: keyword.clone(),
                        tokens: B64.encode(&**tokens),
                    })
                    .collect(),
                reached: found.reached.len(),
            };
            Ok((lists, found.reached))
        };
        let result = checks();
        let logged =
            asclepios_service::log_outcome_to_all(&self.trail, v, result, |outcome, ok| {
                let event = |patient: Option<&str>, detail: &str| {
                    let mut event = AuditEvent::new(
                        &caller.id,
                        Action::Search,
                        format!("search: {}{detail}", shown_query(&req.groups, patient)),
                        patient,
                        outcome,
                        Some(v.signature.clone()),
                    );
                    if let (Some(p), Some(circle)) = (patient, &facts.circle) {
                        if circle.by_emergency(p) {
                            event.emergency = true;
                            event.purpose = "ETREAT".into();
                        }
                    }
                    event
                };
                // For auditors: the whole query, and its reach.
                let reached = ok.map(|(_, r)| r.len());
                let mut events = vec![event(
                    None,
                    &reached.map_or(String::new(), |n| format!(" ({n} patients reached)")),
                )];
                if facts.vetted {
                    let mut concerned: BTreeSet<&str> =
                        facts.named.iter().map(String::as_str).collect();
                    if let Some((_, reached)) = ok {
                        concerned.extend(reached.iter().map(String::as_str));
                    }
                    events.extend(concerned.into_iter().map(|p| event(Some(p), "")));
                }
                events
            })?;
        Ok(WithReceipt {
            result: logged.result.0,
            receipt: logged.receipt,
        })
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
                })?;
            let not_author = || {
                ApiError::new(
                    StatusCode::FORBIDDEN,
                    "only the author of the record's latest version, or its patient, may index it",
                )
            };
            let latest = match latest {
                Some(latest) => latest,
                // An erased record leaves the index at its patient's word.
                None if req.patient == caller.id && req.keywords.is_empty() => return Ok(()),
                None if req.patient == caller.id => {
                    return Err(ApiError::new(
                        StatusCode::NOT_FOUND,
                        format!("no record {}/{}", req.patient, req.record_id),
                    ))
                }
                // Anyone else hears what a record they may not index says:
                // whether it exists is not theirs to learn.
                None => return Err(not_author()),
            };
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
                return Err(not_author());
            }
            Ok(())
        };
        let id = asclepios_api::records::search_ref(&req.patient, &req.record_id);
        let filed = search::scoped_keywords(&req.patient, &req.keywords);
        let result = checks().and_then(|()| self.index().set_keywords(&id, &filed));
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

    #[test]
    fn a_query_reaches_only_its_scope_and_patients_matching_every_group() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(&dir.path().join("s.db")).unwrap();
        let mitra = Mitra::new(&SseKey::from_bytes([5; 32]));
        let records = crate::record_access::LocalRecords(store.clone());
        let lock = Mutex::new(());
        let index = SearchIndex::new(&mitra, &store, &records, &lock);
        // Three patients with a condition each; only pat-b and pat-c have
        // an observation.
        for (patient, kinds) in [
            ("pat-a", &["type:Condition"][..]),
            ("pat-b", &["type:Condition", "type:Observation"][..]),
            ("pat-c", &["type:Condition", "type:Observation"][..]),
        ] {
            for kind in kinds {
                let id = asclepios_api::records::search_ref(patient, kind);
                let kws = vec![kind.to_string(), format!("patient:{patient}")];
                index
                    .set_keywords(&id, &scoped_keywords(patient, &kws))
                    .unwrap();
            }
        }
        let run = |groups: &[&[&str]], scope: &[&str]| {
            let groups: Vec<Vec<String>> = groups
                .iter()
                .map(|g| g.iter().map(|k| k.to_string()).collect())
                .collect();
            let scope: BTreeSet<String> = scope.iter().map(|p| p.to_string()).collect();
            let found = index.query_tokens(&groups, &scope).unwrap();
            let mut ids = Vec::new();
            for (_, bytes) in &found.lists {
                let tokens = sse::decode_tokens(bytes).unwrap();
                let addrs: Vec<Vec<u8>> = tokens.iter().map(|t| t.addr.to_vec()).collect();
                let values = index.records.index_get(&addrs).unwrap();
                ids.extend(sse::open_results(&tokens, &values).unwrap().ids);
            }
            ids.sort();
            ids.dedup();
            let ids: Vec<String> = ids
                .into_iter()
                .map(|id| String::from_utf8(id).unwrap())
                .collect();
            (found.reached, ids)
        };
        // Out of scope, a patient's lists are never touched.
        let (reached, ids) = run(&[&["type:Condition"]], &["pat-a", "pat-b"]);
        assert_eq!(reached, ["pat-a", "pat-b"]);
        assert_eq!(ids.len(), 2);
        assert!(ids.iter().all(|id| !id.contains("pat-c")), "{ids:?}");
        // A patient with nothing for one group is not reached at all.
        let (reached, ids) = run(
            &[&["type:Condition"], &["type:Observation"]],
            &["pat-a", "pat-b", "pat-c"],
        );
        assert_eq!(reached, ["pat-b", "pat-c"]);
        assert_eq!(ids.len(), 4, "{ids:?}");
        // An empty scope reaches nobody; unknown keywords neither.
        assert!(run(&[&["type:Condition"]], &[]).0.is_empty());
        assert!(run(&[&["code:none"]], &["pat-a"]).0.is_empty());
        // The same keyword filed for one patient is not another's.
        let (reached, _) = run(&[&["patient:pat-a"]], &["pat-b"]);
        assert!(reached.is_empty());
    }
}
