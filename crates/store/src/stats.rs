//! Functional-encryption statistics: the slots of a study (each a patient
//! value at one data provider, its key sealed by the authority), the
//! encrypted values published under labels, and the cohorts function keys
//! were issued for (the authority's differencing rule reads them back).

use crate::db::{int, Row, Value};
use crate::integrity::{FE_COHORTS, FE_SLOTS};
use crate::{Store, StoreError};

/// A slot of a study.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotRow {
    /// Its number in the study.
    pub slot: u64,
    /// The data provider that owns it.
    pub provider: String,
    /// Its key, sealed by the authority.
    pub sealed_key: Vec<u8>,
}

impl Store {
    /// Allocates `keys.len()` new slots of `study` for `provider`, numbered
    /// after the last one; `seal(slot)` gives each slot's sealed key. Returns
    /// the first slot number.
    pub fn fe_add_slots(
        &self,
        study: &str,
        provider: &str,
        count: usize,
        seal: &mut dyn FnMut(u64) -> Vec<u8>,
    ) -> Result<u64, StoreError> {
        self.protected_transaction(&[(&FE_SLOTS, study)], |tx, before| {
            let mut next = 0;
            for r in &before[0] {
                next = next.max(r.uint(1)? + 1);
            }
            let rows = (next..next + count as u64)
                .map(|slot| {
                    Ok(vec![
                        study.into(),
                        int(slot)?,
                        provider.into(),
                        Value::Bytes(seal(slot)),
                    ])
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            for chunk in rows.chunks(256) {
                tx.insert_many(
                    "fe_slots",
                    &["study", "slot", "provider", "sealed_key"],
                    chunk,
                )?;
            }
            let mut after = before[0].clone();
            after.extend(rows.into_iter().map(Row));
            Ok((next, vec![after]))
        })
    }

    /// Every slot of `study`, in order.
    pub fn fe_slots(&self, study: &str) -> Result<Vec<SlotRow>, StoreError> {
        self.partition(&FE_SLOTS, study)?
            .iter()
            .map(|r| {
                Ok(SlotRow {
                    slot: r.uint(1)?,
                    provider: r.text(2)?,
                    sealed_key: r.bytes(3)?,
                })
            })
            .collect()
    }

    /// Publishes encrypted values under `label`; a slot publishes at most
    /// once per label (a second value is a conflict, and nothing is written).
    pub fn fe_put_values(
        &self,
        study: &str,
        label: &str,
        values: &[(u64, Vec<u8>)],
    ) -> Result<(), StoreError> {
        let rows = values
            .iter()
            .map(|(slot, ct)| {
                Ok(vec![
                    study.into(),
                    label.into(),
                    int(*slot)?,
                    ct.as_slice().into(),
                ])
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        self.transaction(|tx| {
            for chunk in rows.chunks(256) {
                tx.insert_many(
                    "fe_values",
                    &["study", "label", "slot", "ciphertext"],
                    chunk,
                )?;
            }
            Ok(())
        })
        .map_err(|e| match e {
            e if crate::sse::is_duplicate(&e) => {
                StoreError::Conflict("a slot already published a value under this label".into())
            }
            e => e,
        })
    }

    /// The values published under `label`, by slot.
    pub fn fe_values(&self, study: &str, label: &str) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        self.read(|tx| {
            tx.query(
                "SELECT slot, ciphertext FROM fe_values WHERE study = $1 AND label = $2 ORDER BY slot",
                &[study.into(), label.into()],
            )?
            .iter()
            .map(|r| Ok((r.uint(0)?, r.bytes(1)?)))
            .collect()
        })
    }

    /// `(study, slot, provider)` of every slot, by study and slot.
    pub fn fe_all_slots(&self) -> Result<Vec<(String, u64, String)>, StoreError> {
        self.protected_table(&FE_SLOTS)?
            .iter()
            .map(|r| Ok((r.text(0)?, r.uint(1)?, r.text(2)?)))
            .collect()
    }

    /// The labels values were published under in `study`.
    pub fn fe_labels(&self, study: &str) -> Result<Vec<String>, StoreError> {
        self.read(|tx| {
            tx.query(
                "SELECT DISTINCT label FROM fe_values WHERE study = $1 ORDER BY label",
                &[study.into()],
            )?
            .iter()
            .map(|r| r.text(0))
            .collect()
        })
    }

    /// Records a cohort a key was issued for (idempotent).
    pub fn fe_add_cohort(
        &self,
        study: &str,
        cohort_id: &str,
        slots: &[u8],
    ) -> Result<(), StoreError> {
        self.protected_transaction(&[(&FE_COHORTS, study)], |tx, before| {
            let mut after = before[0].clone();
            if !before[0]
                .iter()
                .any(|r| r.text(1).is_ok_and(|c| c == cohort_id))
            {
                let row = vec![study.into(), cohort_id.into(), slots.into()];
                tx.insert_many(
                    "fe_cohorts",
                    &["study", "cohort_id", "slots"],
                    std::slice::from_ref(&row),
                )?;
                after.push(Row(row));
            }
            Ok(((), vec![after]))
        })
    }

    /// The cohorts keys were issued for in `study`.
    pub fn fe_cohorts(&self, study: &str) -> Result<Vec<Vec<u8>>, StoreError> {
        self.partition(&FE_COHORTS, study)?
            .iter()
            .map(|r| r.bytes(2))
            .collect()
    }
}
