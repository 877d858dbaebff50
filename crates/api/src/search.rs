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
    /// In the order asked.
    pub lists: Vec<KeywordTokens>,
}

/// Keywords to search for.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// The keywords (`kind:value`).
    pub keywords: Vec<String>,
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
