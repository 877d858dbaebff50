//! The record service's guard: every signed request comes from a
//! certificate whose key the authority's directory facts vouch for.

use crate::blocking;
use crate::DirectoryView;
use asclepios_service::require_registered_key;
use std::sync::Arc;

/// Middleware of the record service: every signed request comes from a
/// certificate whose key the authority's directory vouches for.
pub async fn registered_key_guard(
    axum::extract::State(directory): axum::extract::State<Arc<DirectoryView>>,
    axum::Extension(asclepios_net::server::Caller(caller)): axum::Extension<
        asclepios_net::server::Caller,
    >,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let checked = blocking(move || {
        let facts = directory.facts()?;
        require_registered_key(facts.member(&caller.id), &caller)
    });
    match checked.await {
        Ok(()) => next.run(request).await,
        Err(e) => e.into_response(),
    }
}
