//! Wire types that cross a trust boundary, with the checks that make them
//! safe to rely on.
//!
//! The key authority decides who is who, what they hold and which devices
//! have attested; the record service and the clients act on those
//! decisions without holding the authority's keys or reading its store.
//! What crosses between them is here, signed by the authority and verified
//! by whoever receives it.

#![forbid(unsafe_code)]

pub mod admin;
pub mod attestation;
pub mod consent;
pub mod directory;
pub mod internal;
pub mod keys;
pub mod layout;
pub mod records;
pub mod review;
pub mod search;
pub mod stats;

pub use directory::{DirectoryFacts, FactsError, FactsSource, SignedFacts};
