//! Attested components: for each component identity (a device, a service
//! replica), the authority's latest appraisal of its attestation evidence.
//! Key release to a component reads this row; a new registration replaces
//! it, so a contraindicated one also withdraws an earlier approval.

use crate::db::{int, Value};
use crate::integrity::COMPONENTS;
use crate::{Store, StoreError};

/// A component's latest attestation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Component {
    /// Its identity.
    pub identity_id: String,
    /// The evidence format (`sgx-dcap`, `tdx-dcap`, `insecure-software`).
    pub format: String,
    /// The measurement, hex.
    pub measurement: String,
    /// The appraisal tier (`affirming`, `warning`, `contraindicated`).
    pub trust: String,
    /// The appraisal's reasons, one line.
    pub appraisal: String,
    /// SHA-256 of the key the evidence bound (the component's certificate key).
    pub key_sha256: Vec<u8>,
    /// When it was appraised (seconds since the epoch).
    pub attested_at: u64,
    /// Until when the registration holds.
    pub expires_at: u64,
}

impl Store {
    /// Records a component's latest appraisal (replacing any earlier one).
    pub fn put_component(&self, c: &Component) -> Result<(), StoreError> {
        let row = [
            c.identity_id.as_str().into(),
            c.format.as_str().into(),
            c.measurement.as_str().into(),
            c.trust.as_str().into(),
            c.appraisal.as_str().into(),
            Value::Bytes(c.key_sha256.clone()),
            int(c.attested_at)?,
            int(c.expires_at)?,
        ];
        self.protected_transaction(&[(&COMPONENTS, &c.identity_id)], |tx, _| {
            tx.exec(
                "INSERT INTO components (identity_id, format, measurement, trust, appraisal, key_sha256, attested_at, expires_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                 ON CONFLICT (identity_id) DO UPDATE SET format = excluded.format, measurement = excluded.measurement, \
                 trust = excluded.trust, appraisal = excluded.appraisal, key_sha256 = excluded.key_sha256, \
                 attested_at = excluded.attested_at, expires_at = excluded.expires_at",
                &row,
            )?;
            Ok(((), vec![vec![crate::db::Row(row.to_vec())]]))
        })
    }

    /// A component's latest appraisal, if it ever registered.
    pub fn component(&self, identity_id: &str) -> Result<Option<Component>, StoreError> {
        self.partition(&COMPONENTS, identity_id)?
            .first()
            .map(component)
            .transpose()
    }

    /// Every component's latest attestation.
    pub fn components(&self) -> Result<Vec<Component>, StoreError> {
        self.protected_table(&COMPONENTS)?
            .iter()
            .map(component)
            .collect()
    }
}

fn component(r: &crate::db::Row) -> Result<Component, StoreError> {
    Ok(Component {
        identity_id: r.text(0)?,
        format: r.text(1)?,
        measurement: r.text(2)?,
        trust: r.text(3)?,
        appraisal: r.text(4)?,
        key_sha256: r.bytes(5)?,
        attested_at: r.uint(6)?,
        expires_at: r.uint(7)?,
    })
}
