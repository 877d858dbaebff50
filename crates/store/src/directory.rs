//! The key authority's state: identities, attributes with versions, consents
//! (versioned history) and emergency (break-glass) grants.

use crate::db::{int, Row, Value};
use crate::integrity::{
    ATTRIBUTE_VERSIONS, AUDITOR_KEYS, CONSENTS, EMERGENCY_GRANTS, IDENTITIES, IDENTITY_ATTRIBUTES,
};
use crate::{now, Store, StoreError};

pub use asclepios_crypto::policy::versioned_attribute;

/// The authority's directory at one change of its state (see
/// [`Store::directory_state`]).
#[derive(Clone, Debug, Default)]
pub struct DirectoryState {
    /// The change it was read at (0 without integrity protection).
    pub change: u64,
    /// Every identity.
    pub identities: Vec<Identity>,
    /// `(identity, attribute)` for every attribute held now (unversioned).
    pub held: Vec<(String, String)>,
    /// Every attribute version ever raised.
    pub versions: Vec<(String, u64)>,
    /// `(identity, HPKE public key)` of every auditor sealing key.
    pub auditor_keys: Vec<(String, Vec<u8>)>,
    /// Every component's latest attestation.
    pub components: Vec<crate::Component>,
    /// Every break-glass grant.
    pub grants: Vec<EmergencyGrant>,
    /// `(study, slot, provider)` of every statistics slot, by study and slot.
    pub slots: Vec<(String, u64, String)>,
}

/// Whether an identity may act.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum IdentityStatus {
    /// May act.
    Active,
    /// Revoked: refused everywhere.
    Revoked,
}

impl IdentityStatus {
    fn as_str(self) -> &'static str {
        match self {
            IdentityStatus::Active => "active",
            IdentityStatus::Revoked => "revoked",
        }
    }
    fn parse(s: &str) -> Result<Self, StoreError> {
        match s {
            "active" => Ok(IdentityStatus::Active),
            "revoked" => Ok(IdentityStatus::Revoked),
            _ => Err(StoreError::Corrupt(format!("identity status `{s}`"))),
        }
    }
}

/// A user, device or service known to the authority.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Identity {
    /// Stable id (a pseudonym for patients).
    pub id: String,
    /// `clinician`, `patient`, `researcher`, `auditor`, `service`, ...
    pub kind: String,
    /// Name shown to people.
    pub display_name: String,
    /// Its signature public key, if registered.
    pub public_key: Option<Vec<u8>>,
    /// Whether it may act.
    pub status: IdentityStatus,
}

/// An attribute held by an identity.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct AttributeGrant {
    /// The attribute, e.g. `role:doctor`.
    pub attribute: String,
    /// The attribute's version when it was granted.
    pub granted_version: u64,
    /// When it was granted (Unix seconds).
    pub granted_at: i64,
}

/// Whether a consent is in force.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ConsentStatus {
    /// In force.
    Active,
    /// Withdrawn by the patient.
    Withdrawn,
}

impl ConsentStatus {
    fn as_str(self) -> &'static str {
        match self {
            ConsentStatus::Active => "active",
            ConsentStatus::Withdrawn => "withdrawn",
        }
    }
    fn parse(s: &str) -> Result<Self, StoreError> {
        match s {
            "active" => Ok(ConsentStatus::Active),
            "withdrawn" => Ok(ConsentStatus::Withdrawn),
            _ => Err(StoreError::Corrupt(format!("consent status `{s}`"))),
        }
    }
}

/// One version of a patient's consent.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Consent {
    /// Pseudonym of the patient.
    pub patient: String,
    /// The consent's id (stable across versions).
    pub consent_id: String,
    /// Version, from 1; assigned by [`Store::put_consent`].
    pub version: u64,
    /// Who it is granted to (an identity or an attribute).
    pub grantee: String,
    /// What it covers (e.g. a resource type, or `*`).
    pub scope: String,
    /// In force or withdrawn.
    pub status: ConsentStatus,
    /// The FHIR Consent resource, if kept (JSON bytes; may be encrypted).
    pub document: Option<Vec<u8>>,
    /// When this version was written (Unix seconds).
    pub updated_at: i64,
}

/// A break-glass grant: short-lived emergency access to a patient's records.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct EmergencyGrant {
    /// Pseudonym of the patient.
    pub patient: String,
    /// The grant's id.
    pub grant_id: String,
    /// Who declared the emergency.
    pub clinician: String,
    /// Why, in their words.
    pub reason: String,
    /// When it was issued (Unix seconds).
    pub issued_at: i64,
    /// When it stops working (Unix seconds).
    pub expires_at: i64,
    /// The auditor who reviewed it, once reviewed.
    pub reviewed_by: Option<String>,
    /// When it was reviewed.
    pub reviewed_at: Option<i64>,
}

fn identity(row: &Row) -> Result<Identity, StoreError> {
    Ok(Identity {
        id: row.text(0)?,
        kind: row.text(1)?,
        display_name: row.text(2)?,
        public_key: row.opt_bytes(3)?,
        status: IdentityStatus::parse(&row.text(4)?)?,
    })
}

fn consent(row: &Row) -> Result<Consent, StoreError> {
    Ok(Consent {
        patient: row.text(0)?,
        consent_id: row.text(1)?,
        version: row.uint(2)?,
        grantee: row.text(3)?,
        scope: row.text(4)?,
        status: ConsentStatus::parse(&row.text(5)?)?,
        document: row.opt_bytes(6)?,
        updated_at: row.int(7)?,
    })
}

fn grant(row: &Row) -> Result<EmergencyGrant, StoreError> {
    Ok(EmergencyGrant {
        patient: row.text(0)?,
        grant_id: row.text(1)?,
        clinician: row.text(2)?,
        reason: row.text(3)?,
        issued_at: row.int(4)?,
        expires_at: row.int(5)?,
        reviewed_by: row.opt_text(6)?,
        reviewed_at: row.opt_int(7)?,
    })
}

const CONSENT_COLUMNS: &str =
    "patient, consent_id, version, grantee, scope, status, document, updated_at";
const GRANT_COLUMNS: &str =
    "patient, grant_id, clinician, reason, issued_at, expires_at, reviewed_by, reviewed_at";

impl Store {
    /// Creates or updates an identity.
    pub fn put_identity(&self, identity: &Identity) -> Result<(), StoreError> {
        let at = now();
        self.protected_transaction(&[(&IDENTITIES, &identity.id)], |tx, before| {
            // created_at stays; the rest is what is written.
            let created = before[0]
                .first()
                .map_or(Ok(at), |r| r.int(5))?;
            let after = identity_row(identity, created, at);
            tx.exec(
                "INSERT INTO identities (identity_id, kind, display_name, public_key, status, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $6) \
                 ON CONFLICT (identity_id) DO UPDATE SET kind = excluded.kind, display_name = excluded.display_name, public_key = excluded.public_key, status = excluded.status, updated_at = excluded.updated_at",
                &[
                    identity.id.as_str().into(),
                    identity.kind.as_str().into(),
                    identity.display_name.as_str().into(),
                    identity.public_key.clone().into(),
                    identity.status.as_str().into(),
                    Value::Int(at),
                ],
            )?;
            Ok(((), vec![vec![after]]))
        })
    }

    /// Adds a new identity with its attributes (each at its current
    /// version), all in one transaction: a conflict if the id exists.
    pub fn add_identity(
        &self,
        identity: &Identity,
        attributes: &[String],
    ) -> Result<(), StoreError> {
        let at = now();
        let mut distinct = attributes.to_vec();
        distinct.sort();
        distinct.dedup();
        let mut touched = vec![
            (&IDENTITIES, identity.id.as_str()),
            (&IDENTITY_ATTRIBUTES, identity.id.as_str()),
        ];
        touched.extend(distinct.iter().map(|a| (&ATTRIBUTE_VERSIONS, a.as_str())));
        self.protected_transaction(&touched, |tx, before| {
            if !before[0].is_empty() {
                return Err(StoreError::Conflict(format!("identity {} exists", identity.id)));
            }
            let row = identity_row(identity, at, at);
            tx.exec(
                "INSERT INTO identities (identity_id, kind, display_name, public_key, status, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &row.0,
            )?;
            let mut held = Vec::new();
            for (i, a) in distinct.iter().enumerate() {
                let version = before[2 + i].first().map_or(Ok(0), |r| r.uint(0))?;
                tx.exec(
                    "INSERT INTO identity_attributes (identity_id, attribute, granted_version, granted_at, revoked_at) VALUES ($1, $2, $3, $4, NULL)",
                    &[identity.id.as_str().into(), a.as_str().into(), int(version)?, Value::Int(at)],
                )?;
                held.push(Row(vec![
                    a.as_str().into(),
                    int(version)?,
                    Value::Int(at),
                    Value::Null,
                    identity.id.as_str().into(),
                ]));
            }
            let mut after = vec![vec![row], held];
            after.extend(before[2..].iter().cloned());
            Ok(((), after))
        })
    }

    /// Sets an identity's attributes to exactly `attributes` and, with
    /// `disable`, marks it revoked, in one transaction: attributes taken
    /// away are revoked (each bumps its version), new ones granted at their
    /// current version. Returns the attributes revoked.
    pub fn set_identity_attributes(
        &self,
        id: &str,
        attributes: &[String],
        disable: bool,
    ) -> Result<Vec<String>, StoreError> {
        let at = now();
        let held: Vec<String> = self
            .identity_attributes(id)?
            .into_iter()
            .map(|g| g.attribute)
            .collect();
        let mut names: Vec<String> = held.iter().chain(attributes).cloned().collect();
        names.sort();
        names.dedup();
        let mut touched = vec![(&IDENTITIES, id), (&IDENTITY_ATTRIBUTES, id)];
        touched.extend(names.iter().map(|a| (&ATTRIBUTE_VERSIONS, a.as_str())));
        self.protected_transaction(&touched, |tx, before| {
            let Some(identity) = before[0].first() else {
                return Err(StoreError::NotFound(format!("identity {id}")));
            };
            let mut identity = identity.clone();
            if identity.text(4)? == IdentityStatus::Revoked.as_str() && !disable {
                return Err(StoreError::Conflict(format!("identity {id} is disabled")));
            }
            let mut rows = before[1].clone();
            let mut versions: Vec<Vec<Row>> = before[2..].to_vec();
            let mut revoked = Vec::new();
            let live = |r: &Row| r.opt_int(3).is_ok_and(|x| x.is_none());
            // Rows must match what was read before the transaction began.
            for r in rows.iter().filter(|r| live(r)) {
                if !names.contains(&r.text(0)?) {
                    return Err(StoreError::Conflict(format!(
                        "the attributes of {id} changed meanwhile; try again"
                    )));
                }
            }
            for (i, name) in names.iter().enumerate() {
                let holds = rows.iter().any(|r| live(r) && r.text(0).is_ok_and(|a| a == *name));
                let keep = attributes.contains(name) && !disable;
                if holds && !keep {
                    let (_, after, version) = write_revocation(tx, &rows, &versions[i], id, name, at)?;
                    rows = after;
                    versions[i] = version;
                    revoked.push(name.clone());
                } else if !holds && keep {
                    let version = versions[i].first().map_or(Ok(0), |r| r.uint(0))?;
                    tx.exec(
                        "INSERT INTO identity_attributes (identity_id, attribute, granted_version, granted_at, revoked_at) VALUES ($1, $2, $3, $4, NULL) \
                         ON CONFLICT (identity_id, attribute) DO UPDATE SET granted_version = excluded.granted_version, granted_at = excluded.granted_at, revoked_at = NULL",
                        &[id.into(), name.as_str().into(), int(version)?, Value::Int(at)],
                    )?;
                    rows.retain(|r| r.text(0).map_or(true, |a| a != *name));
                    rows.push(Row(vec![
                        name.as_str().into(),
                        int(version)?,
                        Value::Int(at),
                        Value::Null,
                        id.into(),
                    ]));
                }
            }
            if disable {
                identity.0[4] = IdentityStatus::Revoked.as_str().into();
                identity.0[6] = Value::Int(at);
                tx.exec(
                    "UPDATE identities SET status = $1, updated_at = $2 WHERE identity_id = $3",
                    &[IdentityStatus::Revoked.as_str().into(), Value::Int(at), id.into()],
                )?;
            }
            let mut after = vec![vec![identity], rows];
            after.extend(versions);
            Ok((revoked, after))
        })
    }

    /// An identity by id.
    pub fn identity(&self, id: &str) -> Result<Option<Identity>, StoreError> {
        self.partition(&IDENTITIES, id)?
            .first()
            .map(identity)
            .transpose()
    }

    /// All identities, by id.
    pub fn identities(&self) -> Result<Vec<Identity>, StoreError> {
        self.protected_table(&IDENTITIES)?
            .iter()
            .map(identity)
            .collect()
    }

    /// The current version of an attribute (0 if never revoked from anyone).
    pub fn attribute_version(&self, attribute: &str) -> Result<u64, StoreError> {
        self.partition(&ATTRIBUTE_VERSIONS, attribute)?
            .first()
            .map_or(Ok(0), |r| r.uint(0))
    }

    /// Every attribute that was ever revoked, with its current version.
    pub fn attribute_versions(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.protected_table(&ATTRIBUTE_VERSIONS)?
            .iter()
            .map(|r| Ok((r.text(1)?, r.uint(0)?)))
            .collect()
    }

    /// Grants an attribute to an identity at the attribute's current version.
    pub fn grant_attribute(&self, identity_id: &str, attribute: &str) -> Result<u64, StoreError> {
        let at = now();
        let touched = [
            (&IDENTITY_ATTRIBUTES, identity_id),
            (&IDENTITIES, identity_id),
            (&ATTRIBUTE_VERSIONS, attribute),
        ];
        self.protected_transaction(&touched, |tx, before| {
            // What the identity and the version are, from the checked rows.
            if before[1].is_empty() {
                return Err(StoreError::NotFound(format!("identity {identity_id}")));
            }
            let version = before[2].first().map_or(Ok(0), |r| r.uint(0))?;
            let mut attributes: Vec<Row> = before[0]
                .iter()
                .filter(|r| r.text(0).map_or(true, |a| a != attribute))
                .cloned()
                .collect();
            attributes.push(Row(vec![
                attribute.into(),
                int(version)?,
                Value::Int(at),
                Value::Null,
                identity_id.into(),
            ]));
            tx.exec(
                "INSERT INTO identity_attributes (identity_id, attribute, granted_version, granted_at, revoked_at) VALUES ($1, $2, $3, $4, NULL) \
                 ON CONFLICT (identity_id, attribute) DO UPDATE SET granted_version = excluded.granted_version, granted_at = excluded.granted_at, revoked_at = NULL",
                &[identity_id.into(), attribute.into(), int(version)?, Value::Int(at)],
            )?;
            Ok((version, vec![attributes, before[1].clone(), before[2].clone()]))
        })
    }

    /// Revokes an attribute from an identity and bumps the attribute's
    /// version (remaining holders need fresh keys). Returns the new version.
    pub fn revoke_attribute(&self, identity_id: &str, attribute: &str) -> Result<u64, StoreError> {
        let at = now();
        let touched = [
            (&IDENTITY_ATTRIBUTES, identity_id),
            (&ATTRIBUTE_VERSIONS, attribute),
        ];
        self.protected_transaction(&touched, |tx, before| {
            let (version, attributes, versions) =
                write_revocation(tx, &before[0], &before[1], identity_id, attribute, at)?;
            Ok((version, vec![attributes, versions]))
        })
    }

    /// The attributes an identity holds now.
    pub fn identity_attributes(
        &self,
        identity_id: &str,
    ) -> Result<Vec<AttributeGrant>, StoreError> {
        let mut held = Vec::new();
        for r in self.partition(&IDENTITY_ATTRIBUTES, identity_id)? {
            if r.opt_int(3)?.is_none() {
                held.push(AttributeGrant {
                    attribute: r.text(0)?,
                    granted_version: r.uint(1)?,
                    granted_at: r.int(2)?,
                });
            }
        }
        Ok(held)
    }

    /// The attributes an identity holds now, each at its current version
    /// (the form keys and policies carry them in).
    pub fn current_attributes(&self, identity_id: &str) -> Result<Vec<String>, StoreError> {
        self.identity_attributes(identity_id)?
            .into_iter()
            .map(|g| {
                Ok(versioned_attribute(
                    &g.attribute,
                    self.attribute_version(&g.attribute)?,
                ))
            })
            .collect()
    }

    /// Sets the HPKE public key that audit events are sealed to for the
    /// auditor `identity_id` (replacing an earlier one).
    pub fn put_auditor_key(&self, identity_id: &str, public_key: &[u8]) -> Result<(), StoreError> {
        let at = now();
        self.protected_transaction(&[(&AUDITOR_KEYS, identity_id)], |tx, _| {
            let after = Row(vec![identity_id.into(), public_key.to_vec().into(), Value::Int(at)]);
            tx.exec(
                "INSERT INTO auditor_keys (identity_id, public_key, created_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (identity_id) DO UPDATE SET public_key = excluded.public_key, created_at = excluded.created_at",
                &[identity_id.into(), public_key.to_vec().into(), Value::Int(at)],
            )?;
            Ok(((), vec![vec![after]]))
        })
    }

    /// The sealing keys of the auditors who may read events written now:
    /// active identities that hold `role` (not revoked) and have a key. A
    /// disabled auditor, or one whose role was taken away, is not among
    /// them from that moment on.
    pub fn auditor_keys(&self, role: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let mut keys = Vec::new();
        for r in self.protected_table(&AUDITOR_KEYS)? {
            let id = r.text(0)?;
            let active = self
                .identity(&id)?
                .is_some_and(|i| i.status == IdentityStatus::Active);
            if active
                && self
                    .identity_attributes(&id)?
                    .iter()
                    .any(|a| a.attribute == role)
            {
                keys.push((id, r.bytes(1)?));
            }
        }
        Ok(keys)
    }

    /// Everything the authority vouches for to other services, read at one
    /// change of its authenticated state (re-read if a write landed in
    /// between), every partition checked.
    pub fn directory_state(&self) -> Result<DirectoryState, StoreError> {
        loop {
            let seq = self.directory_change();
            let identities = self.identities()?;
            let mut held = Vec::new();
            for r in self.protected_table(&IDENTITY_ATTRIBUTES)? {
                if r.opt_int(3)?.is_none() {
                    held.push((r.text(4)?, r.text(0)?));
                }
            }
            let versions = self
                .protected_table(&ATTRIBUTE_VERSIONS)?
                .iter()
                .map(|r| Ok((r.text(1)?, r.uint(0)?)))
                .collect::<Result<_, StoreError>>()?;
            let auditor_keys = self
                .protected_table(&AUDITOR_KEYS)?
                .iter()
                .map(|r| Ok((r.text(0)?, r.bytes(1)?)))
                .collect::<Result<_, StoreError>>()?;
            let components = self.components()?;
            let grants = self.all_grants(|_| true)?;
            let slots = self.fe_all_slots()?;
            if self.directory_change() == seq {
                return Ok(DirectoryState {
                    change: seq.unwrap_or(0),
                    identities,
                    held,
                    versions,
                    auditor_keys,
                    components,
                    grants,
                    slots,
                });
            }
        }
    }

    /// The identities holding an attribute now.
    pub fn attribute_holders(&self, attribute: &str) -> Result<Vec<String>, StoreError> {
        let mut holders = Vec::new();
        for r in self.protected_table(&IDENTITY_ATTRIBUTES)? {
            if r.text(0)? == attribute && r.opt_int(3)?.is_none() {
                holders.push(r.text(4)?);
            }
        }
        Ok(holders)
    }

    /// Writes a new version of a consent (its `version` field is ignored and
    /// assigned: one more than the latest). Returns the version written.
    pub fn put_consent(&self, c: &Consent) -> Result<u64, StoreError> {
        let at = now();
        self.protected_transaction(&[(&CONSENTS, &c.patient)], |tx, before| {
            let (version, after) = write_consent(tx, &before[0], c, at)?;
            Ok((version, vec![after]))
        })
    }

    /// Writes a consent's new version (withdrawn, expired) and, in the same
    /// transaction, revokes `revoke` = (grantee, attribute): the consent is
    /// never recorded as ended while its grantee keeps the attribute.
    /// Returns the consent version written.
    pub fn end_consent(
        &self,
        c: &Consent,
        revoke: Option<(&str, &str)>,
    ) -> Result<u64, StoreError> {
        let at = now();
        let mut touched = vec![(&CONSENTS, c.patient.as_str())];
        if let Some((grantee, attribute)) = revoke {
            touched.push((&IDENTITY_ATTRIBUTES, grantee));
            touched.push((&ATTRIBUTE_VERSIONS, attribute));
        }
        self.protected_transaction(&touched, |tx, before| {
            let (version, consents) = write_consent(tx, &before[0], c, at)?;
            let mut after = vec![consents];
            if let Some((grantee, attribute)) = revoke {
                let (_, attributes, versions) =
                    write_revocation(tx, &before[1], &before[2], grantee, attribute, at)?;
                after.push(attributes);
                after.push(versions);
            }
            Ok((version, after))
        })
    }

    /// The latest version of each of a patient's consents.
    pub fn consents(&self, patient: &str) -> Result<Vec<Consent>, StoreError> {
        latest_consents(&self.partition(&CONSENTS, patient)?)
    }

    /// The latest version of every consent of every patient (for expiry sweeps).
    pub fn all_consents(&self) -> Result<Vec<Consent>, StoreError> {
        latest_consents(&self.protected_table(&CONSENTS)?)
    }

    /// Every version of one consent, oldest first.
    pub fn consent_history(
        &self,
        patient: &str,
        consent_id: &str,
    ) -> Result<Vec<Consent>, StoreError> {
        let mut history = Vec::new();
        for r in self.partition(&CONSENTS, patient)? {
            let c = consent(&r)?;
            if c.consent_id == consent_id {
                history.push(c);
            }
        }
        Ok(history)
    }

    /// Records an emergency grant (a grant id used before is a conflict).
    pub fn put_emergency_grant(&self, g: &EmergencyGrant) -> Result<(), StoreError> {
        let result = self.protected_transaction(&[(&EMERGENCY_GRANTS, &g.patient)], |tx, before| {
            let row = vec![
                g.patient.as_str().into(),
                g.grant_id.as_str().into(),
                g.clinician.as_str().into(),
                g.reason.as_str().into(),
                Value::Int(g.issued_at),
                Value::Int(g.expires_at),
                Value::Null,
                Value::Null,
            ];
            tx.exec(
                &format!("INSERT INTO emergency_grants ({GRANT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"),
                &row,
            )?;
            let mut after = before[0].clone();
            after.push(Row(row));
            Ok(((), vec![after]))
        });
        match result {
            Err(e) if crate::sse::is_duplicate(&e) => Err(StoreError::Conflict(format!(
                "emergency grant {} exists",
                g.grant_id
            ))),
            other => other,
        }
    }

    /// A patient's emergency grants, newest first.
    pub fn emergency_grants(&self, patient: &str) -> Result<Vec<EmergencyGrant>, StoreError> {
        let mut grants = self
            .partition(&EMERGENCY_GRANTS, patient)?
            .iter()
            .map(grant)
            .collect::<Result<Vec<_>, _>>()?;
        grants.sort_by(|a, b| {
            b.issued_at
                .cmp(&a.issued_at)
                .then_with(|| a.grant_id.cmp(&b.grant_id))
        });
        Ok(grants)
    }

    /// Grants no auditor has reviewed yet, oldest first (the review queue).
    pub fn unreviewed_emergency_grants(&self) -> Result<Vec<EmergencyGrant>, StoreError> {
        let mut grants = self.all_grants(|g| g.reviewed_at.is_none())?;
        grants.sort_by(|a, b| (a.issued_at, &a.grant_id).cmp(&(b.issued_at, &b.grant_id)));
        Ok(grants)
    }

    /// Grants that expired at or before `now` (Unix seconds), oldest first.
    pub fn expired_emergency_grants(&self, now: i64) -> Result<Vec<EmergencyGrant>, StoreError> {
        let mut grants = self.all_grants(|g| g.expires_at <= now)?;
        grants.sort_by(|a, b| (a.expires_at, &a.grant_id).cmp(&(b.expires_at, &b.grant_id)));
        Ok(grants)
    }

    fn all_grants(
        &self,
        keep: impl Fn(&EmergencyGrant) -> bool,
    ) -> Result<Vec<EmergencyGrant>, StoreError> {
        let mut kept = Vec::new();
        for r in self.protected_table(&EMERGENCY_GRANTS)? {
            let g = grant(&r)?;
            if keep(&g) {
                kept.push(g);
            }
        }
        Ok(kept)
    }

    /// Marks a grant reviewed by `auditor`.
    pub fn review_emergency_grant(
        &self,
        patient: &str,
        grant_id: &str,
        auditor: &str,
    ) -> Result<(), StoreError> {
        let at = now();
        self.protected_transaction(&[(&EMERGENCY_GRANTS, patient)], |tx, before| {
            let pending =
                |r: &Row| r.text(1).is_ok_and(|g| g == grant_id) && matches!(r.0.get(7), Some(Value::Null));
            if !before[0].iter().any(pending) {
                return Err(StoreError::NotFound(format!(
                    "unreviewed emergency grant {grant_id} of {patient}"
                )));
            }
            let after = before[0]
                .iter()
                .map(|r| {
                    let mut r = r.clone();
                    if pending(&r) {
                        r.0[6] = auditor.into();
                        r.0[7] = Value::Int(at);
                    }
                    r
                })
                .collect();
            tx.exec(
                "UPDATE emergency_grants SET reviewed_by = $1, reviewed_at = $2 WHERE patient = $3 AND grant_id = $4 AND reviewed_at IS NULL",
                &[auditor.into(), Value::Int(at), patient.into(), grant_id.into()],
            )?;
            Ok(((), vec![after]))
        })
    }
}

/// The latest version of each consent among `rows` (ordered by patient,
/// consent id and version, as partitions are read).
fn latest_consents(rows: &[Row]) -> Result<Vec<Consent>, StoreError> {
    let mut latest: Vec<Consent> = Vec::new();
    for r in rows {
        let c = consent(r)?;
        match latest.last_mut() {
            Some(l) if l.patient == c.patient && l.consent_id == c.consent_id => *l = c,
            _ => latest.push(c),
        }
    }
    Ok(latest)
}

/// Inserts a consent's next version; returns it with the partition as it
/// must be afterwards.
fn write_consent(
    tx: &mut dyn crate::db::Tx,
    before: &[Row],
    c: &Consent,
    at: i64,
) -> Result<(u64, Vec<Row>), StoreError> {
    let mut latest = 0;
    for r in before {
        if r.text(1)? == c.consent_id {
            latest = latest.max(r.int(2)?);
        }
    }
    let version = latest + 1;
    let row = vec![
        c.patient.as_str().into(),
        c.consent_id.as_str().into(),
        Value::Int(version),
        c.grantee.as_str().into(),
        c.scope.as_str().into(),
        c.status.as_str().into(),
        c.document.clone().into(),
        Value::Int(at),
    ];
    tx.exec(
        &format!(
            "INSERT INTO consents ({CONSENT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        ),
        &row,
    )?;
    let mut after = before.to_vec();
    after.push(Row(row));
    Ok((version as u64, after))
}

/// Revokes `attribute` from `identity_id` and bumps its version; returns the
/// new version with both partitions as they must be afterwards.
fn write_revocation(
    tx: &mut dyn crate::db::Tx,
    attributes: &[Row],
    versions: &[Row],
    identity_id: &str,
    attribute: &str,
    at: i64,
) -> Result<(u64, Vec<Row>, Vec<Row>), StoreError> {
    let held = |r: &Row| {
        r.text(0).is_ok_and(|a| a == attribute) && r.opt_int(3).is_ok_and(|x| x.is_none())
    };
    if !attributes.iter().any(held) {
        return Err(StoreError::NotFound(format!(
            "identity {identity_id} does not hold {attribute}"
        )));
    }
    let after = attributes
        .iter()
        .map(|r| {
            let mut r = r.clone();
            if held(&r) {
                r.0[3] = Value::Int(at);
            }
            r
        })
        .collect();
    let version = versions.first().map_or(Ok(0), |r| r.uint(0))? + 1;
    tx.exec(
        "UPDATE identity_attributes SET revoked_at = $1 WHERE identity_id = $2 AND attribute = $3 AND revoked_at IS NULL",
        &[Value::Int(at), identity_id.into(), attribute.into()],
    )?;
    tx.exec(
        "INSERT INTO attribute_versions (attribute, version) VALUES ($1, $2) \
         ON CONFLICT (attribute) DO UPDATE SET version = excluded.version",
        &[attribute.into(), int(version)?],
    )?;
    Ok((
        version,
        after,
        vec![Row(vec![int(version)?, attribute.into()])],
    ))
}

/// An identity's row in canonical column order (as the integrity layer
/// reads it back).
fn identity_row(identity: &Identity, created_at: i64, updated_at: i64) -> Row {
    Row(vec![
        identity.id.as_str().into(),
        identity.kind.as_str().into(),
        identity.display_name.as_str().into(),
        identity.public_key.clone().into(),
        identity.status.as_str().into(),
        Value::Int(created_at),
        Value::Int(updated_at),
    ])
}
