//! Statistics values: data providers publish encrypted values into the
//! slots the authority allocated to them; labs and researchers read them.

use crate::audit_outcome;
use crate::bad_request;
use crate::blocking;
use crate::check_stats_name;
use crate::shown;
use crate::store_error;
use crate::RecordService;
use crate::StatsValues;
use crate::StatsValuesOut;
use crate::WithReceipt;
use asclepios_audit::Action;
use asclepios_crypto::policy::attribute_name;
use asclepios_net::server::json_body;
use asclepios_net::server::ApiError;
use asclepios_net::server::Caller;
use asclepios_net::signature::Verified;
use axum::extract::Query;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Extension;
use axum::Json;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Which values to fetch.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatsQuery {
    /// The study.
    pub study: String,
    /// The label; absent: list the labels instead.
    pub label: Option<String>,
}

/// Roles that may read encrypted statistics values (providers, researchers).
pub const STATS_READERS: &[&str] = &["role:lab", "role:researcher"];

/// Most values one publication may carry.
pub const MAX_STATS_VALUES: usize = 100_000;

/// A data provider publishes encrypted values for slots it owns; each slot
/// publishes once per label. The service stores points it cannot open.
pub(crate) async fn publish_stats(
    State(s): State<Arc<RecordService>>,
    Extension(Caller(caller)): Extension<Caller>,
    Extension(v): Extension<Verified>,
    body: axum::body::Bytes,
) -> Result<Json<WithReceipt<usize>>, ApiError> {
    let req: StatsValues = json_body(&body)?;
    blocking(move || {
        let work = || -> Result<usize, ApiError> {
            s.check_caller(&caller.id)?;
            check_stats_name("study", &req.study)?;
            check_stats_name("label", &req.label)?;
            asclepios_api::stats::PartLabel::parse(&req.label).map_err(bad_request)?;
            if req.values.is_empty() || req.values.len() > MAX_STATS_VALUES {
                return Err(bad_request(format!(
                    "publish 1 to {MAX_STATS_VALUES} values at a time"
                )));
            }
            let mut facts = s.directory.facts()?;
            let owns_all = |f: &asclepios_api::DirectoryFacts| {
                req.values
                    .iter()
                    .all(|(slot, _)| f.slot_owner(&req.study, *slot) == Some(caller.id.as_str()))
            };
            // Slots just allocated may be newer than the facts held: refuse
            // only on the authority's current ones.
            if !owns_all(&facts) && s.directory.refresh_now()? {
                facts = s.directory.facts()?;
            }
            let mut rows = Vec::with_capacity(req.values.len());
            for (slot, ct) in &req.values {
                if facts.slot_owner(&req.study, *slot) != Some(caller.id.as_str()) {
                    return Err(ApiError::new(
                        StatusCode::FORBIDDEN,
                        format!("slot {slot} of `{}` is not yours", req.study),
                    ));
                }
                let bytes = B64
                    .decode(ct)
                    .ok()
                    .filter(|b| asclepios_crypto::ipfe::point_from_bytes(b).is_some())
                    .ok_or_else(|| {
                        bad_request("values are ristretto255 points (32 bytes, base64)")
                    })?;
                rows.push((*slot, bytes));
            }
            s.store
                .fe_put_values(&req.study, &req.label, &rows)
                .map_err(store_error)?;
            Ok(rows.len())
        };
        let resource = format!(
            "stats/{}/{}: {} values",
            shown(&req.study),
            shown(&req.label),
            req.values.len()
        );
        audit_outcome(
            &s.trail,
            &v,
            &caller.id,
            (Action::Create, Some("HRESCH")),
            resource,
            work(),
        )
    })
    .await
    .map(Json)
}

/// A study's encrypted values under a label (or its labels), for providers
/// and researchers: points nobody can open without an aggregate key.
pub(crate) async fn stats_values(
    State(s): State<Arc<RecordService>>,
    Extension(Caller(caller)): Extension<Caller>,
    Extension(v): Extension<Verified>,
    Query(q): Query<StatsQuery>,
) -> Result<Json<WithReceipt<StatsValuesOut>>, ApiError> {
    blocking(move || {
        let work = || -> Result<StatsValuesOut, ApiError> {
            s.check_caller(&caller.id)?;
            check_stats_name("study", &q.study)?;
            let held = s.current_attributes(&caller.id)?;
            if !held
                .iter()
                .any(|a| STATS_READERS.contains(&attribute_name(a)))
            {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    format!(
                        "reading statistics needs one of: {}",
                        STATS_READERS.join(", ")
                    ),
                ));
            }
            match &q.label {
                None => Ok(StatsValuesOut {
                    labels: s.store.fe_labels(&q.study).map_err(store_error)?,
                    values: Vec::new(),
                }),
                Some(label) => {
                    check_stats_name("label", label)?;
                    Ok(StatsValuesOut {
                        labels: vec![label.clone()],
                        values: s
                            .store
                            .fe_values(&q.study, label)
                            .map_err(store_error)?
                            .into_iter()
                            .map(|(slot, ct)| (slot, B64.encode(ct)))
                            .collect(),
                    })
                }
            }
        };
        let resource = format!(
            "stats/{}/{}",
            shown(&q.study),
            shown(q.label.as_deref().unwrap_or("*"))
        );
        audit_outcome(
            &s.trail,
            &v,
            &caller.id,
            (Action::Read, Some("HRESCH")),
            resource,
            work(),
        )
    })
    .await
    .map(Json)
}
