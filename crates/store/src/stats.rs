//! Functional-encryption statistics: the slots of a study (one per patient,
//! filled by one data provider, its key sealed by the authority), the
//! encrypted values published under labels, and the releases function keys
//! were issued for, over the whole population (the authority's rule and
//! privacy budget read them back).

use crate::db::{int, Row, Value};
use crate::integrity::{FE_PEOPLE, FE_RELEASES, FE_SLOTS};
use crate::{Store, StoreError};

/// A study's slot: one patient's values at one data provider.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PersonSlot {
    /// Its number in the study.
    pub slot: u64,
    /// The patient (directory pseudonym) it holds values of.
    pub patient: String,
    /// The data provider that fills it.
    pub provider: String,
    /// Its key, sealed by the authority.
    pub sealed_key: Vec<u8>,
}

impl PersonSlot {
    fn from_row(r: &Row) -> Result<Self, StoreError> {
        Ok(PersonSlot {
            slot: r.uint(1)?,
            patient: r.text(2)?,
            provider: r.text(3)?,
            sealed_key: r.bytes(4)?,
        })
    }
}

/// An aggregate released: a key for one label over a set of people.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReleaseRow {
    /// Its id (a digest of study, label and people).
    pub release_id: String,
    /// The study.
    pub study: String,
    /// The label.
    pub label: String,
    /// The people it sums, sorted.
    pub patients: Vec<String>,
    /// The ε it spent, in millionths.
    pub epsilon_micro: u64,
}

/// The one population releases are kept for (every study draws on the
/// directory's patients).
const POPULATION: &str = "directory";

impl Store {
    /// The slots of `patients` in `study` for `provider`, in the order
    /// given: a patient's existing slot if `provider` fills it, a new one
    /// (numbered after the last, its sealed key from `seal(slot, patient)`)
    /// if nobody does. A patient another provider fills is a conflict, and
    /// nothing is written.
    pub fn fe_assign_slots(
        &self,
        study: &str,
        provider: &str,
        patients: &[String],
        seal: &mut dyn FnMut(u64, &str) -> Vec<u8>,
    ) -> Result<Vec<PersonSlot>, StoreError> {
        self.protected_transaction(&[(&FE_PEOPLE, study)], |tx, before| {
            let mut existing = std::collections::HashMap::new();
            let mut next = 0;
            for r in &before[0] {
                let slot = PersonSlot::from_row(r)?;
                next = next.max(slot.slot + 1);
                existing.insert(slot.patient.clone(), slot);
            }
            let mut out = Vec::with_capacity(patients.len());
            let mut rows = Vec::new();
            for patient in patients {
                match existing.get(patient) {
                    Some(s) if s.provider == provider => out.push(s.clone()),
                    Some(_) => {
                        return Err(StoreError::Conflict(format!(
                            "{patient} already has a slot in `{study}`, filled by another provider"
                        )))
                    }
                    None => {
                        let slot = PersonSlot {
                            slot: next,
                            patient: patient.clone(),
                            provider: provider.to_string(),
                            sealed_key: seal(next, patient),
                        };
                        next += 1;
                        rows.push(vec![
                            study.into(),
                            int(slot.slot)?,
                            slot.patient.as_str().into(),
                            provider.into(),
                            Value::Bytes(slot.sealed_key.clone()),
                        ]);
                        existing.insert(patient.clone(), slot.clone());
                        out.push(slot);
                    }
                }
            }
            for chunk in rows.chunks(256) {
                tx.insert_many(
                    "fe_people",
                    &["study", "slot", "patient", "provider", "sealed_key"],
                    chunk,
                )?;
            }
            let mut after = before[0].clone();
            after.extend(rows.into_iter().map(Row));
            Ok((out, vec![after]))
        })
    }

    /// Every slot of `study`, in order.
    pub fn fe_people(&self, study: &str) -> Result<Vec<PersonSlot>, StoreError> {
        self.partition(&FE_PEOPLE, study)?
            .iter()
            .map(PersonSlot::from_row)
            .collect()
    }

    /// `(study, slot)` of every slot of every study, with its patient and
    /// provider.
    pub fn fe_all_people(&self) -> Result<Vec<(String, PersonSlot)>, StoreError> {
        self.protected_table(&FE_PEOPLE)?
            .iter()
            .map(|r| Ok((r.text(0)?, PersonSlot::from_row(r)?)))
            .collect()
    }

    /// Whether `study` has numbered slots of before schema 8 (slots that
    /// named no person): such a study takes no new slots.
    pub fn fe_legacy_study(&self, study: &str) -> Result<bool, StoreError> {
        Ok(!self.partition(&FE_SLOTS, study)?.is_empty())
    }

    /// Every release, by id.
    pub fn fe_releases(&self) -> Result<Vec<ReleaseRow>, StoreError> {
        self.partition(&FE_RELEASES, POPULATION)?
            .iter()
            .map(release_from_row)
            .collect()
    }

    /// Records a release unless one with its id is recorded; `check` sees
    /// every release recorded before (read in the same transaction) and may
    /// refuse. Returns whether it was new.
    pub fn fe_add_release<E>(
        &self,
        release: &ReleaseRow,
        check: &mut dyn FnMut(&[ReleaseRow]) -> Result<(), E>,
    ) -> Result<Result<bool, E>, StoreError> {
        self.protected_transaction(&[(&FE_RELEASES, POPULATION)], |tx, before| {
            let all = before[0]
                .iter()
                .map(release_from_row)
                .collect::<Result<Vec<_>, _>>()?;
            if all.iter().any(|r| r.release_id == release.release_id) {
                return Ok((Ok(false), vec![before[0].clone()]));
            }
            if let Err(e) = check(&all) {
                return Ok((Err(e), vec![before[0].clone()]));
            }
            let row = vec![
                POPULATION.into(),
                release.release_id.as_str().into(),
                release.study.as_str().into(),
                release.label.as_str().into(),
                Value::Bytes(release.patients.join("\n").into_bytes()),
                int(release.epsilon_micro)?,
            ];
            tx.insert_many(
                "fe_releases",
                &[
                    "population",
                    "release_id",
                    "study",
                    "label",
                    "patients",
                    "epsilon_micro",
                ],
                std::slice::from_ref(&row),
            )?;
            let mut after = before[0].clone();
            after.push(Row(row));
            Ok((Ok(true), vec![after]))
        })
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
        Ok(self
            .fe_all_people()?
            .into_iter()
            .map(|(study, s)| (study, s.slot, s.provider))
            .collect())
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
}

fn release_from_row(r: &Row) -> Result<ReleaseRow, StoreError> {
    let patients = String::from_utf8(r.bytes(4)?)
        .map_err(|_| StoreError::Invalid("fe_releases: patients are not text".into()))?;
    Ok(ReleaseRow {
        release_id: r.text(1)?,
        study: r.text(2)?,
        label: r.text(3)?,
        patients: patients
            .split('\n')
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect(),
        epsilon_micro: r.uint(5)?,
    })
}
