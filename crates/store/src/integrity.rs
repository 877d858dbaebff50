//! The key authority's state, authenticated and rollback-protected against
//! whoever administers the database.
//!
//! The authority's tables (identities, their attributes, attribute versions,
//! auditor keys, components, consents, emergency grants) decide who gets which
//! key. A database administrator who could insert `patient:pat-00000` for
//! themselves, swap a clinician's public key or put back a revoked attribute's
//! old version would own every record. So, when a store is opened
//! [`Store::with_integrity`] (the authority's stores are):
//!
//! * **Every partition is tagged.** A protected table is split into
//!   partitions by one column (an identity's attributes, a patient's
//!   consents, ...). A partition's tag is HMAC-SHA256 under the authority's
//!   integrity key over the table, the partition and a canonical encoding of
//!   all its rows. Tags live in `integrity_tags`.
//! * **The set of tags is committed by a head.** `integrity_head` holds a
//!   sequence number, the number of tags and their sum modulo 2^256 (an
//!   additive multiset hash of keyed, pseudorandom values), under the same
//!   key. Every authority write bumps the sequence in the transaction that
//!   changes the rows.
//! * **The authority trusts its memory, not the database.** On open, the
//!   store reads every tag, checks their sum and count against the head, and
//!   checks every partition's rows against its tag (a full verification);
//!   from then on it keeps the expected tag of each partition in memory and
//!   checks each partition it reads against that. An edit, an insert, a
//!   deletion or an old copy of a partition (a rollback) is caught at the
//!   read that would have used it, whatever the database answers.
//! * **Rollback of the whole database is caught at start.** The head's
//!   sequence number is also written to an anchor file on the authority's
//!   host (outside the database); a head older than the anchor is a rollback.
//! * **Failure is sticky.** The first mismatch raises an alarm: from then on
//!   every protected read and write fails with [`StoreError::Integrity`]
//!   until an operator has looked and restarted the authority.
//!
//! Another process holding the key (the administration CLI while the service
//! runs) may write too: when a partition disagrees with memory but the head
//! is authentic and newer than what this process saw, the store verifies
//! everything again and carries on; a forged or older head raises the alarm.
//!
//! What this does not cover yet: the searchable-encryption keyword states and
//! the statistics slots (their rows are sealed per row by the authority but
//! can be rolled back one by one), and availability (a database administrator
//! can always delete everything: that is detected, not prevented).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::db::{int, Row, Tx, Value};
use crate::{Store, StoreError};

type HmacSha256 = Hmac<Sha256>;

/// One protected table: its partition column and the columns its tag covers,
/// in the canonical order the rows are read and encoded in.
#[derive(Debug)]
pub(crate) struct Protected {
    pub(crate) table: &'static str,
    pub(crate) partition: &'static str,
    pub(crate) columns: &'static str,
    pub(crate) order: &'static str,
}

pub(crate) const IDENTITIES: Protected = Protected {
    table: "identities",
    partition: "identity_id",
    columns: "identity_id, kind, display_name, public_key, status, created_at, updated_at",
    order: "identity_id",
};
pub(crate) const IDENTITY_ATTRIBUTES: Protected = Protected {
    table: "identity_attributes",
    partition: "identity_id",
    columns: "attribute, granted_version, granted_at, revoked_at, identity_id",
    order: "attribute",
};
pub(crate) const ATTRIBUTE_VERSIONS: Protected = Protected {
    table: "attribute_versions",
    partition: "attribute",
    columns: "version, attribute",
    order: "attribute",
};
pub(crate) const AUDITOR_KEYS: Protected = Protected {
    table: "auditor_keys",
    partition: "identity_id",
    columns: "identity_id, public_key, created_at",
    order: "identity_id",
};
pub(crate) const COMPONENTS: Protected = Protected {
    table: "components",
    partition: "identity_id",
    columns:
        "identity_id, format, measurement, trust, appraisal, key_sha256, attested_at, expires_at",
    order: "identity_id",
};
pub(crate) const CONSENTS: Protected = Protected {
    table: "consents",
    partition: "patient",
    columns: "patient, consent_id, version, grantee, scope, status, document, updated_at",
    order: "consent_id, version",
};
pub(crate) const EMERGENCY_GRANTS: Protected = Protected {
    table: "emergency_grants",
    partition: "patient",
    columns:
        "patient, grant_id, clinician, reason, issued_at, expires_at, reviewed_by, reviewed_at",
    order: "grant_id",
};

/// Every protected table.
pub(crate) const PROTECTED: [&Protected; 7] = [
    &IDENTITIES,
    &IDENTITY_ATTRIBUTES,
    &ATTRIBUTE_VERSIONS,
    &AUDITOR_KEYS,
    &COMPONENTS,
    &CONSENTS,
    &EMERGENCY_GRANTS,
];

/// The key that authenticates the authority's state (32 random bytes, sealed
/// with the authority's other secrets). Zeroized on drop, never printed.
#[derive(Clone)]
pub struct IntegrityKey(Zeroizing<[u8; 32]>);

impl IntegrityKey {
    /// A key from its 32 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, StoreError> {
        let key: [u8; 32] = bytes
            .try_into()
            .map_err(|_| StoreError::Invalid("an integrity key is 32 bytes".into()))?;
        Ok(IntegrityKey(Zeroizing::new(key)))
    }

    fn mac(&self) -> HmacSha256 {
        <HmacSha256 as Mac>::new_from_slice(&*self.0).expect("HMAC takes any key length")
    }
}

impl std::fmt::Debug for IntegrityKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IntegrityKey(..)")
    }
}

/// The authenticated head: what the authority last committed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Head {
    seq: u64,
    count: u64,
    sum: [u8; 32],
}

/// What this process knows the authority state to be.
#[derive(Debug)]
struct Known {
    head: Head,
    tags: HashMap<(&'static str, String), [u8; 32]>,
}

/// The integrity state a store carries when opened with a key.
pub(crate) struct Integrity {
    key: IntegrityKey,
    anchor: Option<PathBuf>,
    known: RwLock<Known>,
    alarm: Mutex<Option<String>>,
}

impl std::fmt::Debug for Integrity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Integrity")
            .field("anchor", &self.anchor)
            .finish_non_exhaustive()
    }
}

/// A partition's canonical encoding: the row count, then each value with
/// its type and length, so no two different partitions encode alike.
fn encode_rows(rows: &[Row]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(rows.len() as u64).to_be_bytes());
    for row in rows {
        out.extend_from_slice(&(row.0.len() as u64).to_be_bytes());
        for value in &row.0 {
            match value {
                Value::Null => out.push(0),
                Value::Int(x) => {
                    out.push(1);
                    out.extend_from_slice(&x.to_be_bytes());
                }
                Value::Bytes(b) => {
                    out.push(2);
                    out.extend_from_slice(&(b.len() as u64).to_be_bytes());
                    out.extend_from_slice(b);
                }
                Value::Text(s) => {
                    out.push(3);
                    out.extend_from_slice(&(s.len() as u64).to_be_bytes());
                    out.extend_from_slice(s.as_bytes());
                }
            }
        }
    }
    out
}

fn length_prefixed(mac: &mut HmacSha256, bytes: &[u8]) {
    mac.update(&(bytes.len() as u64).to_be_bytes());
    mac.update(bytes);
}

/// `a + b` or `a - b` modulo 2^256, little-endian.
fn add_mod(a: &[u8; 32], b: &[u8; 32], subtract: bool) -> [u8; 32] {
    let mut out = [0u8; 32];
    let mut carry: i16 = 0;
    for i in 0..32 {
        let v = if subtract {
            a[i] as i16 - b[i] as i16 + carry
        } else {
            a[i] as i16 + b[i] as i16 + carry
        };
        out[i] = v.rem_euclid(256) as u8;
        carry = v.div_euclid(256);
    }
    out
}

impl Integrity {
    fn tag(&self, table: &str, partition: &str, rows: &[Row]) -> [u8; 32] {
        let mut mac = self.key.mac();
        mac.update(b"asclepios-integrity-partition-v1");
        length_prefixed(&mut mac, table.as_bytes());
        length_prefixed(&mut mac, partition.as_bytes());
        mac.update(&encode_rows(rows));
        mac.finalize().into_bytes().into()
    }

    fn head_mac(&self, head: &Head) -> [u8; 32] {
        let mut mac = self.key.mac();
        mac.update(b"asclepios-integrity-head-v1");
        mac.update(&head.seq.to_be_bytes());
        mac.update(&head.count.to_be_bytes());
        mac.update(&head.sum);
        mac.finalize().into_bytes().into()
    }

    /// Raises the alarm (keeping the first reason) and returns it as an error.
    fn raise(&self, reason: String) -> StoreError {
        let mut alarm = self.alarm.lock().unwrap_or_else(|p| p.into_inner());
        let reason = alarm.get_or_insert(reason).clone();
        StoreError::Integrity(reason)
    }

    fn check_alarm(&self) -> Result<(), StoreError> {
        match &*self.alarm.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(reason) => Err(StoreError::Integrity(reason.clone())),
            None => Ok(()),
        }
    }

    /// The head as stored, if its MAC verifies (an alarm otherwise).
    fn read_head(&self, tx: &mut dyn Tx) -> Result<Option<Head>, StoreError> {
        let Some(row) = tx.query_opt(
            "SELECT seq, tag_count, tag_sum, mac FROM integrity_head WHERE id = 1",
            &[],
        )?
        else {
            return Ok(None);
        };
        let head = Head {
            seq: row.uint(0)?,
            count: row.uint(1)?,
            sum: row
                .bytes(2)?
                .try_into()
                .map_err(|_| self.raise("the authority state's head is malformed".into()))?,
        };
        if row.bytes(3)? != self.head_mac(&head) {
            return Err(self.raise(
                "the authority state's head does not verify: it was written without the authority's key".into(),
            ));
        }
        Ok(Some(head))
    }

    fn anchored_seq(&self) -> Result<u64, StoreError> {
        let Some(path) = &self.anchor else {
            return Ok(0);
        };
        match std::fs::read_to_string(path) {
            Ok(s) => s.trim().parse().map_err(|_| {
                StoreError::Invalid(format!("{}: not an integrity anchor", path.display()))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(StoreError::Unavailable(format!(
                "cannot read the integrity anchor {}: {e}",
                path.display()
            ))),
        }
    }

    /// Records `seq` in the anchor file if it is newer than what is there.
    fn anchor(&self, seq: u64) -> Result<(), StoreError> {
        let Some(path) = &self.anchor else {
            return Ok(());
        };
        if self.anchored_seq()? >= seq {
            return Ok(());
        }
        let tmp = path.with_extension("tmp");
        let write = || -> std::io::Result<()> {
            std::fs::write(&tmp, format!("{seq}\n"))?;
            std::fs::File::open(&tmp)?.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        write().map_err(|e| {
            StoreError::Unavailable(format!(
                "cannot write the integrity anchor {}: {e}",
                path.display()
            ))
        })
    }

    /// Reads and verifies the whole authority state: the head, every tag
    /// against it, every partition against its tag, the head against the
    /// anchor. Writes the genesis head into a store that has none and no
    /// authority rows.
    fn load(&self, store: &Store) -> Result<Known, StoreError> {
        let anchored = self.anchored_seq()?;
        store.transaction(|tx| {
            let head = match self.read_head(tx)? {
                Some(head) => head,
                None => {
                    for t in PROTECTED {
                        if tx
                            .query_opt(&format!("SELECT 1 FROM {} LIMIT 1", t.table), &[])?
                            .is_some()
                        {
                            return Err(self.raise(format!(
                                "the authority state has rows in {} but no authenticated head: it was written without the authority's key",
                                t.table
                            )));
                        }
                    }
                    if anchored > 0 {
                        return Err(self.raise(format!(
                            "the authority state is empty but this authority had seen change {anchored}: the database was wiped or replaced"
                        )));
                    }
                    let head = Head { seq: 0, count: 0, sum: [0; 32] };
                    write_head(tx, self, &head, None)?;
                    head
                }
            };
            if head.seq < anchored {
                return Err(self.raise(format!(
                    "the authority state was rolled back: the database is at change {} but this authority had seen change {anchored}",
                    head.seq
                )));
            }
            let mut tags = HashMap::new();
            let mut sum = [0u8; 32];
            for row in tx.query("SELECT tbl, part, tag FROM integrity_tags", &[])? {
                let table = row.text(0)?;
                let Some(t) = PROTECTED.iter().find(|t| t.table == table) else {
                    return Err(self.raise(format!("an integrity tag names an unknown table `{table}`")));
                };
                let tag: [u8; 32] = row
                    .bytes(2)?
                    .try_into()
                    .map_err(|_| self.raise("an integrity tag is malformed".into()))?;
                sum = add_mod(&sum, &tag, false);
                tags.insert((t.table, row.text(1)?), tag);
            }
            if tags.len() as u64 != head.count || sum != head.sum {
                return Err(self.raise(
                    "the authority state's tags do not add up to its head: tags were added, removed or rolled back".into(),
                ));
            }
            for t in PROTECTED {
                let rows = tx.query(
                    &format!("SELECT {} FROM {} ORDER BY {}, {}", t.columns, t.table, t.partition, t.order),
                    &[],
                )?;
                if let Some(problem) = check_table(self, &tags, t, &rows)? {
                    return Err(self.raise(problem));
                }
            }
            Ok(Known { head, tags })
        })
        .and_then(|known| {
            self.anchor(known.head.seq)?;
            Ok(known)
        })
    }
}

/// Checks every partition of a whole table read against `tags`: returns
/// what is wrong, if anything.
fn check_table(
    integrity: &Integrity,
    tags: &HashMap<(&'static str, String), [u8; 32]>,
    t: &Protected,
    rows: &[Row],
) -> Result<Option<String>, StoreError> {
    let partition_at = t
        .columns
        .split(',')
        .position(|c| c.trim() == t.partition)
        .ok_or_else(|| StoreError::Invalid(format!("{}: no partition column", t.table)))?;
    let mut seen = 0usize;
    let mut i = 0;
    while i < rows.len() {
        let part = rows[i].text(partition_at)?;
        let mut j = i;
        while j < rows.len() && rows[j].text(partition_at)? == part {
            j += 1;
        }
        let expected = tags.get(&(t.table, part.clone()));
        if expected != Some(&integrity.tag(t.table, &part, &rows[i..j])) {
            return Ok(Some(mismatch(t, &part, expected.is_some(), true)));
        }
        seen += 1;
        i = j;
    }
    let tagged = tags.keys().filter(|(table, _)| *table == t.table).count();
    if seen != tagged {
        return Ok(Some(format!(
            "rows of {} were deleted outside the authority",
            t.table
        )));
    }
    Ok(None)
}

fn mismatch(t: &Protected, part: &str, tagged: bool, has_rows: bool) -> String {
    let what = match (tagged, has_rows) {
        (false, true) => "were inserted outside the authority",
        (true, false) => "were deleted outside the authority",
        _ => "were changed outside the authority or rolled back",
    };
    format!("the rows of {} for `{part}` {what}", t.table)
}

fn write_head(
    tx: &mut dyn Tx,
    integrity: &Integrity,
    head: &Head,
    previous: Option<u64>,
) -> Result<(), StoreError> {
    let mac = integrity.head_mac(head).to_vec();
    let values = [
        int(head.seq)?,
        int(head.count)?,
        Value::Bytes(head.sum.to_vec()),
        Value::Bytes(mac),
    ];
    match previous {
        None => {
            tx.exec(
                "INSERT INTO integrity_head (id, seq, tag_count, tag_sum, mac) VALUES (1, $1, $2, $3, $4)",
                &values,
            )?;
        }
        Some(previous) => {
            let mut params = values.to_vec();
            params.push(int(previous)?);
            if tx.exec(
                "UPDATE integrity_head SET seq = $1, tag_count = $2, tag_sum = $3, mac = $4 WHERE id = 1 AND seq = $5",
                &params,
            )? != 1
            {
                return Err(StoreError::Conflict(
                    "the authority state changed underneath this write".into(),
                ));
            }
        }
    }
    Ok(())
}

fn partition_rows(tx: &mut dyn Tx, t: &Protected, part: &str) -> Result<Vec<Row>, StoreError> {
    tx.query(
        &format!(
            "SELECT {} FROM {} WHERE {} = $1 ORDER BY {}",
            t.columns, t.table, t.partition, t.order
        ),
        &[part.into()],
    )
}

impl Store {
    /// This store with the authority's state authenticated under `key`
    /// (see the module documentation): verifies the whole state now and
    /// fails with [`StoreError::Integrity`] if it was tampered with or rolled
    /// back. `anchor` is a file on the authority's host that keeps the
    /// highest change seen, so that an older copy of the database is
    /// refused at start.
    pub fn with_integrity(
        self,
        key: IntegrityKey,
        anchor: Option<PathBuf>,
    ) -> Result<Self, StoreError> {
        self.protect(key, anchor, false)
    }

    /// Like [`Store::with_integrity`], but a state that fails verification
    /// leaves the store open with the alarm raised, so that a service can
    /// keep answering (503, with the alarm) and log it instead of vanishing.
    pub fn with_integrity_or_alarm(
        self,
        key: IntegrityKey,
        anchor: Option<PathBuf>,
    ) -> Result<Self, StoreError> {
        self.protect(key, anchor, true)
    }

    fn protect(
        mut self,
        key: IntegrityKey,
        anchor: Option<PathBuf>,
        keep_on_alarm: bool,
    ) -> Result<Self, StoreError> {
        let integrity = Integrity {
            key,
            anchor,
            known: RwLock::new(Known {
                head: Head {
                    seq: 0,
                    count: 0,
                    sum: [0; 32],
                },
                tags: HashMap::new(),
            }),
            alarm: Mutex::new(None),
        };
        match integrity.load(&self) {
            Ok(known) => *integrity.known.write().unwrap_or_else(|p| p.into_inner()) = known,
            Err(StoreError::Integrity(_)) if keep_on_alarm => {}
            Err(e) => return Err(e),
        }
        self.integrity = Some(Arc::new(integrity));
        Ok(self)
    }

    /// This store (its own connections) checking the authority's state
    /// against `other`'s memory of it: two services of one process that read
    /// the directory share one view, and one alarm.
    pub fn sharing_integrity_of(mut self, other: &Store) -> Self {
        self.integrity.clone_from(&other.integrity);
        self
    }

    /// The integrity alarm, once raised: why the authority's state cannot be
    /// trusted. Every protected read and write fails from then on.
    pub fn integrity_alarm(&self) -> Option<String> {
        self.integrity
            .as_ref()
            .and_then(|i| i.alarm.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }

    /// The change number of the authority state this store last verified
    /// (`None` without integrity protection).
    pub fn integrity_seq(&self) -> Option<u64> {
        self.integrity
            .as_ref()
            .map(|i| i.known.read().unwrap_or_else(|p| p.into_inner()).head.seq)
    }

    /// Verifies the whole authority state again, as at open (for periodic
    /// checks and benchmarks).
    pub fn verify_integrity(&self) -> Result<(), StoreError> {
        let Some(integrity) = &self.integrity else {
            return Ok(());
        };
        integrity.check_alarm()?;
        let known = integrity.load(self)?;
        let mut current = integrity.known.write().unwrap_or_else(|p| p.into_inner());
        if known.head.seq < current.head.seq {
            return Err(integrity.raise(format!(
                "the authority state was rolled back from change {} to {}",
                current.head.seq, known.head.seq
            )));
        }
        *current = known;
        Ok(())
    }

    /// The rows of one partition of a protected table, in canonical column
    /// order, checked against what the authority last wrote.
    pub(crate) fn partition(&self, t: &Protected, part: &str) -> Result<Vec<Row>, StoreError> {
        let Some(integrity) = &self.integrity else {
            return self.read(|tx| partition_rows(tx, t, part));
        };
        integrity.check_alarm()?;
        for attempt in 0..2 {
            {
                let known = integrity.known.read().unwrap_or_else(|p| p.into_inner());
                let rows = self.read(|tx| partition_rows(tx, t, part))?;
                let expected = known.tags.get(&(t.table, part.to_string()));
                let matches = match expected {
                    None => rows.is_empty(),
                    Some(tag) => !rows.is_empty() && *tag == integrity.tag(t.table, part, &rows),
                };
                if matches {
                    return Ok(rows);
                }
                let newer = self
                    .read(|tx| integrity.read_head(tx))?
                    .is_some_and(|h| h.seq > known.head.seq);
                if !newer || attempt == 1 {
                    return Err(integrity.raise(mismatch(
                        t,
                        part,
                        expected.is_some(),
                        !rows.is_empty(),
                    )));
                }
            }
            // Another holder of the key wrote: verify everything again.
            self.verify_integrity()?;
        }
        unreachable!("the loop returns on its second attempt")
    }

    /// Every row of a protected table, each partition checked as in
    /// [`Store::partition`], in one read.
    pub(crate) fn protected_table(&self, t: &Protected) -> Result<Vec<Row>, StoreError> {
        let read_all = |tx: &mut dyn Tx| {
            tx.query(
                &format!(
                    "SELECT {} FROM {} ORDER BY {}, {}",
                    t.columns, t.table, t.partition, t.order
                ),
                &[],
            )
        };
        let Some(integrity) = &self.integrity else {
            return self.read(read_all);
        };
        integrity.check_alarm()?;
        for attempt in 0..2 {
            {
                let known = integrity.known.read().unwrap_or_else(|p| p.into_inner());
                let rows = self.read(read_all)?;
                let problem = check_table(integrity, &known.tags, t, &rows)?;
                let Some(problem) = problem else {
                    return Ok(rows);
                };
                let newer = self
                    .read(|tx| integrity.read_head(tx))?
                    .is_some_and(|h| h.seq > known.head.seq);
                if !newer || attempt == 1 {
                    return Err(integrity.raise(problem));
                }
            }
            self.verify_integrity()?;
        }
        unreachable!("the loop returns on its second attempt")
    }

    /// Runs `f` in one transaction that changes the partitions `touched`
    /// (and only those): checks them first, re-tags them after, and moves the
    /// head on. Without integrity protection, a plain transaction.
    pub(crate) fn protected_transaction<T>(
        &self,
        touched: &[(&Protected, &str)],
        f: impl Fn(&mut dyn Tx) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let Some(integrity) = &self.integrity else {
            return self.transaction(f);
        };
        integrity.check_alarm()?;
        for _ in 0..3 {
            let mut known = integrity.known.write().unwrap_or_else(|p| p.into_inner());
            let outcome = self.transaction(|tx| {
                let stored = integrity.read_head(tx)?.ok_or_else(|| {
                    integrity.raise("the authority state's head was deleted".into())
                })?;
                if stored.seq > known.head.seq {
                    // Another holder of the key wrote: verify, then retry.
                    return Ok(None);
                }
                if stored != known.head {
                    return Err(integrity.raise(format!(
                        "the authority state was rolled back from change {} to {}",
                        known.head.seq, stored.seq
                    )));
                }
                for (t, part) in touched {
                    let rows = partition_rows(tx, t, part)?;
                    let expected = known.tags.get(&(t.table, part.to_string()));
                    let matches = match expected {
                        None => rows.is_empty(),
                        Some(tag) => {
                            !rows.is_empty() && *tag == integrity.tag(t.table, part, &rows)
                        }
                    };
                    if !matches {
                        return Err(integrity.raise(mismatch(
                            t,
                            part,
                            expected.is_some(),
                            !rows.is_empty(),
                        )));
                    }
                }
                let out = f(tx)?;
                let mut head = known.head;
                let mut changes = Vec::new();
                for (t, part) in touched {
                    let key = (t.table, part.to_string());
                    if changes.iter().any(|(k, _)| *k == key) {
                        continue;
                    }
                    let rows = partition_rows(tx, t, part)?;
                    let new = (!rows.is_empty()).then(|| integrity.tag(t.table, part, &rows));
                    let old = known.tags.get(&key).copied();
                    if old == new {
                        continue;
                    }
                    if let Some(old) = old {
                        head.sum = add_mod(&head.sum, &old, true);
                        head.count -= 1;
                        tx.exec(
                            "DELETE FROM integrity_tags WHERE tbl = $1 AND part = $2",
                            &[t.table.into(), (*part).into()],
                        )?;
                    }
                    if let Some(new) = new {
                        head.sum = add_mod(&head.sum, &new, false);
                        head.count += 1;
                        tx.exec(
                            "INSERT INTO integrity_tags (tbl, part, tag) VALUES ($1, $2, $3)",
                            &[t.table.into(), (*part).into(), Value::Bytes(new.to_vec())],
                        )?;
                    }
                    changes.push((key, new));
                }
                head.seq += 1;
                write_head(tx, integrity, &head, Some(known.head.seq))?;
                Ok(Some((out, head, changes)))
            });
            match outcome {
                Ok(Some((out, head, changes))) => {
                    known.head = head;
                    for (key, tag) in changes {
                        match tag {
                            Some(tag) => known.tags.insert(key, tag),
                            None => known.tags.remove(&key),
                        };
                    }
                    drop(known);
                    integrity.anchor(head.seq)?;
                    return Ok(out);
                }
                Ok(None) => {
                    drop(known);
                    self.verify_integrity()?;
                }
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::Unavailable(
            "the authority state kept changing underneath this write; try again".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::add_mod;

    #[test]
    fn sums_wrap_modulo_two_to_the_256() {
        let max = [0xff; 32];
        let one = {
            let mut b = [0u8; 32];
            b[0] = 1;
            b
        };
        assert_eq!(add_mod(&max, &one, false), [0; 32]);
        assert_eq!(add_mod(&[0; 32], &one, true), max);
        let x: [u8; 32] = std::array::from_fn(|i| (i * 37 + 11) as u8);
        let y: [u8; 32] = std::array::from_fn(|i| (i * 91 + 5) as u8);
        assert_eq!(add_mod(&add_mod(&x, &y, false), &y, true), x);
    }
}
