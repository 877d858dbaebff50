//! Routes for the key authority alone, when the services run apart (the
//! caller is checked before its body is read): the
//! wrappers it re-wraps after a revocation, the record versions whose
//! authors it checks, the encrypted index it updates and compacts. The
//! caller must be the authority's service identity as the directory facts
//! name it; everyone else is refused.

use std::sync::Arc;

use asclepios_api::internal::{
    FactsChanged, IndexGet, IndexWrite, StoredVersion, VersionQuery, WrapperKey, WrapperOut,
    WrapperReplacement, WrapperScan, MAX_INDEX_BATCH, MAX_SCAN,
};
use asclepios_net::server::{json_body, ApiError, Caller};
use asclepios_store::{Wrapper, WrapperRow};
use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;

use crate::{bad_request, blocking, check_name, store_error, RecordService};

impl RecordService {
    /// Refuses anyone but the authority's service identity.
    fn require_authority(&self, caller: &str) -> Result<(), ApiError> {
        let facts = self.directory.facts()?;
        let is_authority = self.authority_identity.as_deref() == Some(caller)
            && facts
                .member(caller)
                .is_some_and(|m| m.active && m.kind == SERVICE_KIND);
        if is_authority {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "only the key authority's service identity may call this",
            ))
        }
    }
}

/// The directory kind of the deployment's own services.
const SERVICE_KIND: &str = "service";

fn decoded(what: &str, s: &str) -> Result<Vec<u8>, ApiError> {
    B64.decode(s)
        .map_err(|_| bad_request(format!("{what} is not base64")))
}

fn check_key(k: &WrapperKey) -> Result<(), ApiError> {
    check_name("patient", &k.patient)?;
    check_name("record_id", &k.record_id)?;
    if k.slot.is_empty() || k.slot.len() > 64 {
        return Err(bad_request("slot: 1 to 64 bytes"));
    }
    Ok(())
}

/// Runs `work` for the authority off the async threads.
async fn for_authority<T: Send + 'static>(
    s: Arc<RecordService>,
    caller: String,
    work: impl FnOnce(&RecordService) -> Result<T, ApiError> + Send + 'static,
) -> Result<Json<T>, ApiError> {
    blocking(move || {
        s.require_authority(&caller)?;
        work(&s)
    })
    .await
    .map(Json)
}

pub(crate) async fn scan_wrappers(
    State(s): State<Arc<RecordService>>,
    Extension(Caller(caller)): Extension<Caller>,
    body: axum::body::Bytes,
) -> Result<Json<Vec<WrapperOut>>, ApiError> {
    for_authority(s, caller.id, move |s| {
        let req: WrapperScan = json_body(&body)?;
        if !(1..=MAX_SCAN).contains(&req.limit) {
            return Err(bad_request(format!("limit: 1 to {MAX_SCAN}")));
        }
        let after = match &req.after {
            Some(k) => {
                check_key(k)?;
                Some(WrapperRow {
                    patient: k.patient.clone(),
                    record_id: k.record_id.clone(),
                    version: k.version,
                    wrapper: Wrapper {
                        slot: k.slot.clone(),
                        bytes: Vec::new(),
                        epoch: 0,
                        updated_at: 0,
                    },
                })
            }
            None => None,
        };
        Ok(s.store
            .scan_wrappers(after.as_ref(), req.limit)
            .map_err(store_error)?
            .into_iter()
            .map(|row| WrapperOut {
                key: WrapperKey {
                    patient: row.patient,
                    record_id: row.record_id,
                    version: row.version,
                    slot: row.wrapper.slot,
                },
                wrapper: B64.encode(row.wrapper.bytes),
                epoch: row.wrapper.epoch,
                updated_at: row.wrapper.updated_at,
            })
            .collect())
    })
    .await
}

pub(crate) async fn record_version(
    State(s): State<Arc<RecordService>>,
    Extension(Caller(caller)): Extension<Caller>,
    body: axum::body::Bytes,
) -> Result<Json<Option<StoredVersion>>, ApiError> {
    for_authority(s, caller.id, move |s| {
        let req: VersionQuery = json_body(&body)?;
        check_name("patient", &req.patient)?;
        check_name("record_id", &req.record_id)?;
        Ok(s.store
            .record_version(&req.patient, &req.record_id, req.version)
            .map_err(store_error)?
            .map(|v| StoredVersion {
                patient: v.patient,
                record_id: v.record_id,
                version: v.version,
                body: B64.encode(v.body),
                created_at: v.created_at,
            }))
    })
    .await
}

pub(crate) async fn replace_wrapper(
    State(s): State<Arc<RecordService>>,
    Extension(Caller(caller)): Extension<Caller>,
    body: axum::body::Bytes,
) -> Result<Json<bool>, ApiError> {
    for_authority(s, caller.id, move |s| {
        let req: WrapperReplacement = json_body(&body)?;
        check_key(&req.key)?;
        let wrapper = decoded("wrapper", &req.wrapper)?;
        asclepios_crypto::envelope::KeyWrapper::from_bytes(&wrapper)
            .map_err(|e| bad_request(format!("wrapper: {e}")))?;
        // A re-wrap follows a revocation: the facts have moved too.
        s.directory.wake();
        s.store
            .replace_wrapper(
                &req.key.patient,
                &req.key.record_id,
                req.key.version,
                &req.key.slot,
                req.expected_epoch,
                &wrapper,
                req.new_epoch,
            )
            .map_err(store_error)
    })
    .await
}

pub(crate) async fn index_get(
    State(s): State<Arc<RecordService>>,
    Extension(Caller(caller)): Extension<Caller>,
    body: axum::body::Bytes,
) -> Result<Json<Vec<Option<String>>>, ApiError> {
    for_authority(s, caller.id, move |s| {
        let req: IndexGet = json_body(&body)?;
        if req.addrs.len() > MAX_INDEX_BATCH {
            return Err(bad_request(format!("at most {MAX_INDEX_BATCH} addresses")));
        }
        let addrs = req
            .addrs
            .iter()
            .map(|a| decoded("an address", a))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(s.store
            .sse_get(&addrs)
            .map_err(store_error)?
            .into_iter()
            .map(|v| v.map(|v| B64.encode(v)))
            .collect())
    })
    .await
}

pub(crate) async fn index_write(
    State(s): State<Arc<RecordService>>,
    Extension(Caller(caller)): Extension<Caller>,
    body: axum::body::Bytes,
) -> Result<Json<()>, ApiError> {
    for_authority(s, caller.id, move |s| {
        let req: IndexWrite = json_body(&body)?;
        if req.put.len() > MAX_INDEX_BATCH || req.delete.len() > MAX_INDEX_BATCH {
            return Err(bad_request(format!(
                "at most {MAX_INDEX_BATCH} entries and addresses"
            )));
        }
        let put = req
            .put
            .iter()
            .map(|(a, v)| Ok((decoded("an address", a)?, decoded("a value", v)?)))
            .collect::<Result<Vec<_>, ApiError>>()?;
        let delete = req
            .delete
            .iter()
            .map(|a| decoded("an address", a))
            .collect::<Result<Vec<_>, _>>()?;
        let mut seen = std::collections::HashSet::new();
        if !put.iter().all(|(a, _)| seen.insert(a.as_slice())) {
            return Err(bad_request("an address appears twice in one write"));
        }
        s.store.sse_index_write(&put, &delete).map_err(store_error)
    })
    .await
}

/// The authority's directory moved: fetch its facts now, raise the
/// attribute floors to their versions (waiting for writes in flight), and
/// answer the change held, so that the authority's caller returns only once
/// this service judges by them and stores nothing under a revoked version.
pub(crate) async fn facts_changed(
    State(s): State<Arc<RecordService>>,
    Extension(Caller(caller)): Extension<Caller>,
    body: axum::body::Bytes,
) -> Result<Json<u64>, ApiError> {
    for_authority(s, caller.id, move |s| {
        let _: FactsChanged = json_body(&body)?;
        s.directory.refresh_now()?;
        let Some(facts) = s.directory.last() else {
            return Ok(0);
        };
        let floors: Vec<(String, u64)> = facts
            .attribute_versions
            .iter()
            .map(|(name, version)| (name.clone(), *version))
            .collect();
        s.store
            .raise_attribute_floors(&floors)
            .map_err(store_error)?;
        Ok(facts.change)
    })
    .await
}
