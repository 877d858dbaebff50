//! Administration of the directory: identities, their keys and attributes,
//! auditors. These are the only writes to the authority's directory, and
//! they happen here, in the authority: over its API (signed requests from
//! an identity holding `role:admin`, each audited) once it runs, and from
//! `init` while it bootstraps a deployment. Taking an attribute away bumps
//! its version and re-wraps every record whose policy names it.

use crate::admin;
use crate::blocking;
pub use asclepios_api::admin::{
    AttributeSet, AuditorKey, ChangeOut, MemberOut, Registration, Revocation,
};
use asclepios_audit::{Action, AuditEvent};
use asclepios_crypto::abe::MasterSecretKey;
use asclepios_net::server::json_body;
use asclepios_net::server::ApiError;
use asclepios_net::server::Caller;
use asclepios_net::signature::Verified;
use asclepios_store::{Identity, IdentityStatus, Store};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Extension;
use axum::Json;
use std::sync::Arc;

use crate::record_access::RecordAccess;
use crate::rewrap::{rewrap_stale_for_request, rewrap_stale_within};
use crate::{KeyAuthority, WithReceipt};
use asclepios_service::store_error;

/// The role that administers the directory.
pub const ADMIN_ROLE: &str = "role:admin";

/// An identity with its current attributes.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Member {
    /// The directory entry.
    pub identity: Identity,
    /// Its attributes, with the version each was granted at.
    pub attributes: Vec<(String, u64)>,
}

impl From<&Member> for MemberOut {
    fn from(m: &Member) -> Self {
        MemberOut {
            id: m.identity.id.clone(),
            kind: m.identity.kind.clone(),
            display_name: m.identity.display_name.clone(),
            active: m.identity.status == IdentityStatus::Active,
            attributes: m.attributes.clone(),
        }
    }
}

fn invalid(m: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, m)
}

/// An attribute is `namespace:value` of letters, digits, `-`, `_`, `.`.
pub fn check_attribute(a: &str) -> Result<(), ApiError> {
    let ok = !a.is_empty()
        && a.len() <= 256
        && a.contains(':')
        && a.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "attribute `{a}`: write it as namespace:value with letters, digits, '-', '_', '.' (e.g. role:doctor)"
        )))
    }
}

/// One identity with its attributes.
pub fn member(store: &Store, id: &str) -> Result<Member, ApiError> {
    let identity = store.identity(id).map_err(store_error)?.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no identity `{id}`; `asclepios user list` shows them"),
        )
    })?;
    let attributes = store
        .identity_attributes(id)
        .map_err(store_error)?
        .into_iter()
        .map(|g| (g.attribute, g.granted_version))
        .collect();
    Ok(Member {
        identity,
        attributes,
    })
}

/// Every identity.
pub fn members(store: &Store) -> Result<Vec<Member>, ApiError> {
    store
        .identities()
        .map_err(store_error)?
        .into_iter()
        .map(|i| member(store, &i.id))
        .collect()
}

/// Adds an identity with its key and attributes.
pub fn register(store: &Store, r: &Registration) -> Result<Member, ApiError> {
    asclepios_net::pki::check_identity_id(&r.id).map_err(|e| invalid(e.to_string()))?;
    asclepios_service::check_name("kind", &r.kind)?;
    if r.display_name.is_empty()
        || r.display_name.len() > 200
        || r.display_name.chars().any(char::is_control)
    {
        return Err(invalid(
            "display_name: 1 to 200 characters, no control characters",
        ));
    }
    for a in &r.attributes {
        check_attribute(a)?;
    }
    let public_key: [u8; 32] = hex::decode(&r.public_key)
        .ok()
        .and_then(|k| k.try_into().ok())
        .ok_or_else(|| invalid("public_key: an Ed25519 public key, 64 hex digits"))?;
    if store.identity(&r.id).map_err(store_error)?.is_some() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("identity `{}` exists; use `asclepios user set-attrs`", r.id),
        ));
    }
    // One key, one identity: a key vouched for twice would make one
    // person's signatures count as another's.
    if let Some(other) = store
        .identities()
        .map_err(store_error)?
        .into_iter()
        .find(|i| i.public_key.as_deref() == Some(public_key.as_slice()))
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("that public key is `{}`'s already", other.id),
        ));
    }
    // The entry and its attributes in one transaction: never one without
    // the other.
    store
        .add_identity(
            &Identity {
                id: r.id.clone(),
                kind: r.kind.clone(),
                display_name: r.display_name.clone(),
                public_key: Some(public_key.to_vec()),
                status: IdentityStatus::Active,
            },
            &r.attributes,
        )
        .map_err(store_error)?;
    member(store, &r.id)
}

/// Sets the HPKE key audit events are sealed to while `id` is an active
/// auditor.
pub fn set_auditor_key(store: &Store, id: &str, public_key: &[u8]) -> Result<(), ApiError> {
    member(store, id)?;
    asclepios_audit::AuditorPublicKey::from_bytes(public_key)
        .map_err(|e| invalid(format!("public_key: {e}")))?;
    store.put_auditor_key(id, public_key).map_err(store_error)
}

fn rewrap(
    store: &Store,
    records: &dyn RecordAccess,
    master: &MasterSecretKey,
    revoked: Vec<String>,
    budget: Option<std::time::Duration>,
) -> Result<Revocation, ApiError> {
    if revoked.is_empty() {
        return Ok(Revocation::default());
    }
    let done = match budget {
        Some(budget) => rewrap_stale_for_request(store, records, master, budget),
        None => rewrap_stale_within(store, records, master, None),
    };
    let (rewrapped, finished) = done.map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the revocation took effect, but re-wrapping after it did not finish (it is \
                     retried until it does): {e}"
            ),
        )
    })?;
    Ok(Revocation {
        revoked,
        rewrapped,
        continues_in_background: !finished,
    })
}

/// Sets an identity's attributes to exactly `attributes`; those taken away
/// are revoked (new versions, records re-wrapped).
pub fn set_attributes(
    store: &Store,
    records: &dyn RecordAccess,
    master: &MasterSecretKey,
    id: &str,
    attributes: &[String],
) -> Result<Revocation, ApiError> {
    let removed = change_attributes(store, id, attributes)?;
    rewrap(store, records, master, removed, None)
}

/// [`set_attributes`] without the re-wrap: the attributes taken away.
fn change_attributes(
    store: &Store,
    id: &str,
    attributes: &[String],
) -> Result<Vec<String>, ApiError> {
    for a in attributes {
        check_attribute(a)?;
    }
    member(store, id)?;
    // Taken away and granted in one transaction: never half of it.
    store
        .set_identity_attributes(id, attributes, false)
        .map_err(store_error)
}

/// Disables an identity: refused everywhere, every attribute revoked.
pub fn disable(
    store: &Store,
    records: &dyn RecordAccess,
    master: &MasterSecretKey,
    id: &str,
) -> Result<Revocation, ApiError> {
    let revoked = disable_rows(store, id)?;
    rewrap(store, records, master, revoked, None)
}

/// [`disable`] without the re-wrap: the attributes revoked.
fn disable_rows(store: &Store, id: &str) -> Result<Vec<String>, ApiError> {
    member(store, id)?;
    // Refused everywhere and every attribute revoked, in one transaction.
    store
        .set_identity_attributes(id, &[], true)
        .map_err(store_error)
}

/// What an administrator asks of the directory.
#[derive(Debug)]
pub(crate) enum Change {
    Register(Registration),
    SetAttributes(String, AttributeSet),
    Disable(String),
    AuditorKey(String, AuditorKey),
}

impl KeyAuthority {
    /// Lists the directory: for administrators and auditors.
    pub(crate) fn list_members(
        &self,
        caller: &str,
        v: &Verified,
    ) -> Result<WithReceipt<Vec<MemberOut>>, ApiError> {
        let checks = || {
            self.active(caller)?;
            if !self.holds_role(caller, &[ADMIN_ROLE, asclepios_service::AUDITOR_ROLE])? {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    format!("`{caller}` holds neither {ADMIN_ROLE} nor role:auditor"),
                ));
            }
            Ok(members(&self.store)?.iter().map(MemberOut::from).collect())
        };
        asclepios_service::log_outcome(&self.trail, v, checks(), |outcome| {
            AuditEvent::new(
                caller,
                Action::Read,
                "directory".into(),
                None,
                outcome,
                Some(v.signature.clone()),
            )
        })
    }

    /// Audits a directory change refused before it could be read (a body
    /// that does not parse) and returns the refusal.
    pub(crate) fn refused_change(
        &self,
        caller: &str,
        v: &Verified,
        target: &str,
        refused: ApiError,
    ) -> Result<(), ApiError> {
        let shown: String = target
            .chars()
            .filter(|c| !c.is_control())
            .take(128)
            .collect();
        asclepios_service::log_outcome(&self.trail, v, Err::<(), _>(refused), |outcome| {
            AuditEvent::new(
                caller,
                Action::DirectoryChange,
                format!("directory/{shown}: a malformed request"),
                None,
                outcome,
                Some(v.signature.clone()),
            )
        })
        .map(|_| ())
    }

    /// Applies an administrator's change to the directory, audited.
    pub(crate) fn change(
        &self,
        caller: &str,
        v: &Verified,
        change: Change,
    ) -> Result<WithReceipt<ChangeOut>, ApiError> {
        let (target, what) = match &change {
            Change::Register(r) => (
                r.id.clone(),
                format!("added with {}", r.attributes.join(" ")),
            ),
            Change::SetAttributes(id, s) => (
                id.clone(),
                format!("attributes set to {}", s.attributes.join(" ")),
            ),
            Change::Disable(id) => (id.clone(), "disabled".into()),
            Change::AuditorKey(id, _) => (id.clone(), "audit-log key set".into()),
        };
        asclepios_service::check_name("identity", &target)?;
        let apply = || -> Result<ChangeOut, ApiError> {
            let _one_at_a_time = self.admin_lock.lock().unwrap_or_else(|p| p.into_inner());
            self.active(caller)?;
            if !self.holds_role(caller, &[ADMIN_ROLE])? {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    format!("`{caller}` does not hold {ADMIN_ROLE}"),
                ));
            }
            // The services' own identities are made by `init` and hold
            // nothing: an attribute on the record service's identity would
            // let whoever runs its host open records.
            let service = crate::facts::SERVICE_KIND;
            match &change {
                Change::Register(r) if r.kind == service => {
                    return Err(ApiError::new(
                        StatusCode::FORBIDDEN,
                        "identities of kind `service` are the deployment's own services, made by `init`",
                    ));
                }
                Change::SetAttributes(id, _) | Change::AuditorKey(id, _)
                    if crate::facts::member(&self.store, id)?
                        .is_some_and(|m| m.kind == service) =>
                {
                    return Err(ApiError::new(
                        StatusCode::CONFLICT,
                        format!("`{id}` is a service identity: it holds no attributes and reads no audit events"),
                    ));
                }
                _ => {}
            }
            // The directory keeps an administrator: nobody can lock it out.
            let removes_admin = match &change {
                Change::Disable(id) => Some(id),
                Change::SetAttributes(id, s) if !s.attributes.iter().any(|a| a == ADMIN_ROLE) => {
                    Some(id)
                }
                _ => None,
            };
            if let Some(id) = removes_admin {
                let admins: Vec<String> = members(&self.store)?
                    .into_iter()
                    .filter(|m| {
                        m.identity.status == IdentityStatus::Active
                            && m.attributes.iter().any(|(a, _)| a == ADMIN_ROLE)
                    })
                    .map(|m| m.identity.id)
                    .collect();
                if admins.len() == 1 && admins[0] == *id {
                    return Err(ApiError::new(
                        StatusCode::CONFLICT,
                        format!("`{id}` is the last administrator: make another one first"),
                    ));
                }
            }
            let revoked = match change {
                Change::Register(r) => {
                    register(&self.store, &r)?;
                    Vec::new()
                }
                Change::SetAttributes(id, s) => change_attributes(&self.store, &id, &s.attributes)?,
                Change::Disable(id) => disable_rows(&self.store, &id)?,
                Change::AuditorKey(id, k) => {
                    let key = hex::decode(&k.public_key).map_err(|_| invalid("public_key: hex"))?;
                    set_auditor_key(&self.store, &id, &key)?;
                    Vec::new()
                }
            };
            drop(_one_at_a_time);
            // The re-wrap runs outside the lock: a slow or hostile record
            // service holds up this change only. One that fails (the record
            // service unreachable) is retried by the sweeper until nothing
            // names an old version.
            // Bounded: a revocation over many records (or a backlog) answers
            // within about SYNC_REWRAP_TIME and leaves the rest to the sweeper.
            let revocation = rewrap(
                &self.store,
                &*self.records,
                &self.master,
                revoked,
                Some(crate::rewrap::SYNC_REWRAP_TIME),
            )
            .inspect_err(|_| self.rewrap_may_be_pending())?;
            if revocation.continues_in_background {
                self.rewrap_may_be_pending();
            }
            Ok(ChangeOut {
                member: MemberOut::from(&member(&self.store, &target)?),
                revocation,
            })
        };
        let result = apply();
        if result.is_err() {
            // A change refused half-way may have revoked without re-wrapping.
            self.rewrap_may_be_pending();
        }
        asclepios_service::log_outcome(&self.trail, v, result, |outcome| {
            AuditEvent::new(
                caller,
                Action::DirectoryChange,
                format!("directory/{target}: {what}"),
                None,
                outcome,
                Some(v.signature.clone()),
            )
        })
    }
}

pub(crate) async fn list_members(
    State(s): State<Arc<KeyAuthority>>,
    Extension(Caller(caller)): Extension<Caller>,
    Extension(v): Extension<Verified>,
) -> Result<Json<WithReceipt<Vec<admin::MemberOut>>>, ApiError> {
    blocking(move || s.list_members(&caller.id, &v))
        .await
        .map(Json)
}

/// Runs an administrator's change off the async threads.
pub(crate) async fn directory_change(
    s: Arc<KeyAuthority>,
    caller: asclepios_net::pki::PeerIdentity,
    v: Verified,
    change: admin::Change,
) -> Result<Json<WithReceipt<admin::ChangeOut>>, ApiError> {
    blocking(move || s.change(&caller.id, &v, change))
        .await
        .map(Json)
}

/// A directory change whose body does not parse is refused, and audited
/// like every other attempt.
pub(crate) async fn parsed<T: serde::de::DeserializeOwned>(
    s: &Arc<KeyAuthority>,
    caller: &asclepios_net::pki::PeerIdentity,
    v: &Verified,
    target: &str,
    body: &[u8],
) -> Result<T, ApiError> {
    match json_body(body) {
        Ok(parsed) => Ok(parsed),
        Err(e) => {
            let (s, caller, v, target) =
                (s.clone(), caller.id.clone(), v.clone(), target.to_string());
            let (status, message) = (e.status, e.message.clone());
            let logged = blocking(move || s.refused_change(&caller, &v, &target, e)).await;
            Err(logged.err().unwrap_or(ApiError::new(status, message)))
        }
    }
}

pub(crate) async fn register_identity(
    State(s): State<Arc<KeyAuthority>>,
    Extension(Caller(caller)): Extension<Caller>,
    Extension(v): Extension<Verified>,
    body: axum::body::Bytes,
) -> Result<Json<WithReceipt<admin::ChangeOut>>, ApiError> {
    let change = admin::Change::Register(parsed(&s, &caller, &v, "(new identity)", &body).await?);
    directory_change(s, caller, v, change).await
}

pub(crate) async fn set_identity_attributes(
    State(s): State<Arc<KeyAuthority>>,
    Extension(Caller(caller)): Extension<Caller>,
    Extension(v): Extension<Verified>,
    axum::extract::Path(id): axum::extract::Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<WithReceipt<admin::ChangeOut>>, ApiError> {
    let set = parsed(&s, &caller, &v, &id, &body).await?;
    directory_change(s, caller, v, admin::Change::SetAttributes(id, set)).await
}

pub(crate) async fn disable_identity(
    State(s): State<Arc<KeyAuthority>>,
    Extension(Caller(caller)): Extension<Caller>,
    Extension(v): Extension<Verified>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Json<WithReceipt<admin::ChangeOut>>, ApiError> {
    directory_change(s, caller, v, admin::Change::Disable(id)).await
}

pub(crate) async fn put_auditor_key(
    State(s): State<Arc<KeyAuthority>>,
    Extension(Caller(caller)): Extension<Caller>,
    Extension(v): Extension<Verified>,
    axum::extract::Path(id): axum::extract::Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<WithReceipt<admin::ChangeOut>>, ApiError> {
    let key = parsed(&s, &caller, &v, &id, &body).await?;
    directory_change(s, caller, v, admin::Change::AuditorKey(id, key)).await
}
