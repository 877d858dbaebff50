//! The encrypted index: sealed values at the addresses a search token
//! names, nothing else.

use crate::audit_outcome;
use crate::bad_request;
use crate::blocking;
use crate::store_error;
use crate::IndexLookup;
use crate::IndexValues;
use crate::RecordService;
use crate::WithReceipt;
use crate::MAX_LOOKUP;
use asclepios_audit::Action;
use asclepios_net::server::json_body;
use asclepios_net::server::ApiError;
use asclepios_net::server::Caller;
use asclepios_net::signature::Verified;
use axum::extract::State;
use axum::Extension;
use axum::Json;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use std::sync::Arc;

pub(crate) async fn search_index(
    State(s): State<Arc<RecordService>>,
    Extension(Caller(caller)): Extension<Caller>,
    Extension(v): Extension<Verified>,
    body: axum::body::Bytes,
) -> Result<Json<WithReceipt<IndexValues>>, ApiError> {
    let req: IndexLookup = json_body(&body)?;
    blocking(move || {
        let lookup = || -> Result<IndexValues, ApiError> {
            s.check_caller(&caller.id)?;
            if req.addrs.len() > MAX_LOOKUP {
                return Err(bad_request(format!(
                    "at most {MAX_LOOKUP} addresses per lookup"
                )));
            }
            let addrs = req
                .addrs
                .iter()
                .map(|a| {
                    B64.decode(a)
                        .ok()
                        .filter(|a| a.len() == asclepios_crypto::sse::ADDR_LEN)
                        .ok_or_else(|| bad_request("addresses are 16 bytes, base64"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let values = s.store.sse_get(&addrs).map_err(store_error)?;
            Ok(IndexValues {
                values: values
                    .into_iter()
                    .map(|v| v.map(|v| B64.encode(v)))
                    .collect(),
            })
        };
        let resource = format!("index lookup: {} addresses", req.addrs.len());
        audit_outcome(
            &s.trail,
            &v,
            &caller.id,
            (Action::Search, None),
            resource,
            lookup(),
        )
    })
    .await
    .map(Json)
}
