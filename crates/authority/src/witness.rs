//! The authority's witness of the audit logs (C2SP `tlog-witness`'s
//! `add-checkpoint`, over the authority's signed mutual TLS).
//!
//! The authority cosigns the record service's log, and its own, only as
//! consistent extensions of what it cosigned before (see
//! [`asclepios_audit::witness`]). Its state lives in the authority's data
//! directory, which the record service's operator cannot write. A
//! submission that shows a log forked, rolled back or rewritten is refused,
//! kept as evidence, and logged as an integrity alarm for the auditors.

use std::sync::Arc;

use asclepios_audit::{Action, AuditEvent, Outcome, WitnessError};
use asclepios_net::server::ApiError;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::KeyAuthority;

/// `POST /v1/witness/add-checkpoint`: the body and answers of
/// `tlog-witness` (200 with the cosignature line; 409 with the latest size
/// as `text/x.tlog.size`; 400, 403, 404, 422 as the protocol says).
pub(crate) async fn add_checkpoint(
    State(s): State<Arc<KeyAuthority>>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let witness = s.witness.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "this authority runs no witness".to_string(),
        )
    })?;
    let authority = s.clone();
    let answer = asclepios_service::blocking(move || {
        let answer = witness.add_checkpoint(&body);
        if let Err(e) = &answer {
            if e.is_misbehaviour() {
                authority.witness_alarm(e);
            }
        }
        Ok(answer)
    })
    .await?;
    // A 409 is how a log learns the witness's size (routine), and a refusal
    // for misbehaviour is logged above as an integrity alarm: neither is
    // logged again as a refused request. Malformed submissions, unknown
    // keys and logs are, by the refusal layer.
    let logged = match &answer {
        Err(e) => matches!(e, WitnessError::Conflict { .. }) || e.is_misbehaviour(),
        Ok(_) => false,
    };
    let mut response = match answer {
        Ok(lines) => ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], lines).into_response(),
        Err(WitnessError::Conflict { latest, .. }) => (
            StatusCode::CONFLICT,
            [(header::CONTENT_TYPE, "text/x.tlog.size")],
            format!("{latest}\n"),
        )
            .into_response(),
        Err(e) => (
            StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST),
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("{e}\n"),
        )
            .into_response(),
    };
    if logged {
        response
            .extensions_mut()
            .insert(asclepios_net::server::Audited);
    }
    Ok(response)
}

impl KeyAuthority {
    /// Logs that a log submitted a checkpoint contradicting what the
    /// authority's witness cosigned. Blocks.
    fn witness_alarm(&self, e: &WitnessError) {
        tracing::error!("WITNESS ALARM: {e}");
        let event = AuditEvent::new(
            "authority",
            Action::IntegrityAlarm,
            format!("audit-log: {e}"),
            None,
            Outcome::Denied,
            None,
        );
        let hash = <sha2::Sha256 as sha2::Digest>::digest(e.to_string().as_bytes()).into();
        if let Err(e) = self.trail.record(&event, &hash, 409) {
            tracing::error!("the witness alarm could not be logged: {e}");
        }
    }

    /// Runs `witness` for the audit logs, answering at
    /// `/v1/witness/add-checkpoint`.
    pub fn with_witness(mut self, witness: Arc<asclepios_audit::Witness>) -> Self {
        self.witness = Some(witness);
        self
    }
}
