//! Search tokens and index updates as the authority issues them.

use serde::{Deserialize, Serialize};

/// What an index request changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexOutcome {
    /// Keywords added.
    pub added: usize,
    /// Keywords removed.
    pub removed: usize,
}

/// A record's keywords, as its writer derived them.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexRequest {
    /// The patient's pseudonym.
    pub patient: String,
    /// The record's id.
    pub record_id: String,
    /// Every keyword the record matches now (empty: remove it).
    pub keywords: Vec<String>,
}

/// The tokens of a search.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenLists {
    /// One per distinct keyword of the query, in sorted order: the tokens
    /// of that keyword for every patient the search reached.
    pub lists: Vec<KeywordTokens>,
    /// How many patients the search reached (each of them sees it in their
    /// access list).
    pub reached: usize,
}

/// A query to search for: every group must match (intersection), a group
/// matches when any of its keywords (`kind:value`) does (union). The search
/// covers the searcher's circle only, or the patients a group made of
/// `patient:` keywords names (who must be in it).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// The groups.
    pub groups: Vec<Vec<String>>,
}

impl TokenRequest {
    /// Every keyword the query names, once each, sorted.
    pub fn keywords(&self) -> std::collections::BTreeSet<&str> {
        distinct_keywords(&self.groups)
    }
}

/// Every keyword of a query's `groups`, once each, sorted: the order the
/// authority answers in ([`TokenLists`]).
pub fn distinct_keywords(groups: &[Vec<String>]) -> std::collections::BTreeSet<&str> {
    groups.iter().flatten().map(String::as_str).collect()
}

/// One keyword's tokens.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeywordTokens {
    /// The keyword.
    pub keyword: String,
    /// Its tokens, encoded by [`sse::encode_tokens`] (base64).
    pub tokens: String,
}
