//! Searching the encrypted index: keywords go to the authority (which checks
//! the caller may search and answers with tokens), the tokens' addresses go
//! to the record service (which answers with sealed values), and the values
//! are opened here. Neither service sees both the keyword and the result.

use std::collections::BTreeSet;

use asclepios_api::records::{parse_search_ref, IndexLookup, IndexValues, MAX_LOOKUP};
use asclepios_api::search::{IndexOutcome, IndexRequest, TokenLists, TokenRequest};
use asclepios_crypto::sse::{self, SseError, Token};
use asclepios_fhir::keywords::{keywords, Query};
use asclepios_fhir::ResourceView;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use reqwest::Method;

use crate::{to_json, Client, ClientError};

/// Attempts of a search whose tokens a concurrent compaction made stale.
const ATTEMPTS: usize = 3;

/// A record a search matched.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub struct Match {
    /// The patient's pseudonym.
    pub patient: String,
    /// The record's id.
    pub record_id: String,
}

/// The keywords a resource filed under `patient` is indexed under. A value
/// that is not a FHIR resource is indexed under its patient only.
pub fn record_keywords(patient: &str, resource: &serde_json::Value) -> Vec<String> {
    match ResourceView::from_value(resource.clone()) {
        Ok(view) => keywords(&view, patient).into_iter().collect(),
        Err(_) => vec![format!("patient:{patient}")],
    }
}

impl Client {
    /// Indexes a record under `keywords` (none: removes it from the index).
    /// The authority lets the author of its latest version, or its patient.
    pub async fn index_record(
        &self,
        patient: &str,
        record_id: &str,
        keywords: Vec<String>,
    ) -> Result<IndexOutcome, ClientError> {
        let body = to_json(&IndexRequest {
            patient: patient.to_string(),
            record_id: record_id.to_string(),
            keywords,
        })?;
        Ok(self
            .call_with_receipt("authority", Method::POST, "/v1/search/index", body)
            .await?
            .0)
    }

    /// The records matching `query` (e.g. `code:http://loinc.org|8480-6 and
    /// date:2024-01..2024-03`), sorted. The search covers the patients of
    /// this identity's circle (or those the query names, who must be in
    /// it); each patient it reaches sees it in their access list. Matching
    /// says nothing of whether this identity's key opens them: read them to
    /// find out.
    pub async fn search(&self, query: &str) -> Result<Vec<Match>, ClientError> {
        let query = Query::parse(query).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let request = TokenRequest {
            groups: query
                .groups
                .iter()
                .map(|g| g.iter().cloned().collect())
                .collect(),
        };
        let keywords: Vec<String> = request.keywords().into_iter().map(String::from).collect();
        let mut attempt = 0;
        let found = loop {
            attempt += 1;
            match self.search_keywords(&request, &keywords).await {
                Err(ClientError::Search(SseError::Missing(_))) if attempt < ATTEMPTS => continue,
                other => break other?,
            }
        };
        let mut result: Option<BTreeSet<Vec<u8>>> = None;
        for group in &query.groups {
            let union: BTreeSet<Vec<u8>> = keywords
                .iter()
                .zip(&found)
                .filter(|(k, _)| group.contains(*k))
                .flat_map(|(_, ids)| ids.iter().cloned())
                .collect();
            result = Some(match result {
                None => union,
                Some(acc) => acc.intersection(&union).cloned().collect(),
            });
        }
        result
            .unwrap_or_default()
            .into_iter()
            .map(|r| {
                parse_search_ref(&r)
                    .map(|(patient, record_id)| Match { patient, record_id })
                    .ok_or_else(|| {
                        ClientError::Protocol("the index holds a malformed record reference".into())
                    })
            })
            .collect()
    }

    /// The ids each of `keywords` (the request's, sorted) matches, in that
    /// order.
    async fn search_keywords(
        &self,
        request: &TokenRequest,
        keywords: &[String],
    ) -> Result<Vec<Vec<Vec<u8>>>, ClientError> {
        let (lists, _): (TokenLists, _) = self
            .call_with_receipt(
                "authority",
                Method::POST,
                "/v1/search/tokens",
                to_json(request)?,
            )
            .await?;
        if lists.lists.len() != keywords.len()
            || lists
                .lists
                .iter()
                .zip(keywords)
                .any(|(l, k)| &l.keyword != k)
        {
            return Err(ClientError::Protocol(
                "the authority answered for other keywords".into(),
            ));
        }
        let mut per_keyword: Vec<Vec<Token>> = Vec::with_capacity(keywords.len());
        for list in &lists.lists {
            let bytes = zeroize::Zeroizing::new(
                B64.decode(&list.tokens)
                    .map_err(|_| ClientError::Protocol("tokens are not base64".into()))?,
            );
            per_keyword.push(sse::decode_tokens(&bytes)?);
        }
        // The record service gets the addresses sorted, once each: not in
        // lists by keyword or patient, which their order would show.
        let addrs: BTreeSet<[u8; sse::ADDR_LEN]> =
            per_keyword.iter().flatten().map(|t| t.addr).collect();
        let addrs: Vec<[u8; sse::ADDR_LEN]> = addrs.into_iter().collect();
        let mut values: Vec<Option<Vec<u8>>> = Vec::with_capacity(addrs.len());
        for page in addrs.chunks(MAX_LOOKUP) {
            let body = to_json(&IndexLookup {
                addrs: page.iter().map(|a| B64.encode(a)).collect(),
            })?;
            let (answer, _): (IndexValues, _) = self
                .call_with_receipt("records", Method::POST, "/v1/search", body)
                .await?;
            if answer.values.len() != page.len() {
                return Err(ClientError::Protocol(
                    "the record service answered for other addresses".into(),
                ));
            }
            for v in answer.values {
                values.push(
                    v.map(|v| B64.decode(v))
                        .transpose()
                        .map_err(|_| ClientError::Protocol("a value is not base64".into()))?,
                );
            }
        }
        let mut out = Vec::with_capacity(keywords.len());
        for tokens in &per_keyword {
            let mine: Vec<Option<&[u8]>> = tokens
                .iter()
                .map(|t| {
                    let at = addrs
                        .binary_search(&t.addr)
                        .expect("every address was asked");
                    values[at].as_deref()
                })
                .collect();
            out.push(sse::open_results(tokens, &mine)?.ids);
        }
        Ok(out)
    }
}
