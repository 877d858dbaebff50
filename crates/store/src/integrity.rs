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
//!   host (outside the database and the data directory); a head older than
//!   the anchor is a rollback, and a missing anchor beside a state that has
//!   changed is refused too (it could hide one).
//! * **Writes are checked after, too.** A write computes, from the
//!   partitions it read and checked, exactly what they must hold afterwards,
//!   and tags that; if the database then holds anything else (a trigger, a
//!   rule, a row slipped in by another session), the write is rolled back and
//!   the alarm raised. Authority writes take the head's row lock first, so
//!   they never interleave with one another.
//! * **Failure is sticky.** The first mismatch, and any malformed value where
//!   authority data should be, raises an alarm: from then on every protected
//!   read and write fails with [`StoreError::Integrity`] until an operator has
//!   looked and restarted the authority.
//!
//! Another process holding the key (the administration CLI while the service
//! runs) may write too: when a partition disagrees with memory but the head
//! is authentic and newer than what this process saw, the store verifies
//! everything again and carries on; a forged or older head raises the alarm.
//!
//! Protected: identities, identity attributes, attribute versions, auditor
//! keys, components, consents, emergency grants, the search index client's
//! keyword states, and the statistics slots and cohorts. Not prevented:
//! a database administrator can always refuse service or delete everything;
//! that is detected, and the authority then issues nothing.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::db::{int, placeholders, Row, Tx, Value};
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
    /// The partition column holds bytes (named in hex here) rather than text.
    pub(crate) bytes_partition: bool,
}

pub(crate) const IDENTITIES: Protected = Protected {
    table: "identities",
    partition: "identity_id",
    columns: "identity_id, kind, display_name, public_key, status, created_at, updated_at",
    order: "identity_id",
    bytes_partition: false,
};
pub(crate) const IDENTITY_ATTRIBUTES: Protected = Protected {
    table: "identity_attributes",
    partition: "identity_id",
    columns: "attribute, granted_version, granted_at, revoked_at, identity_id",
    order: "attribute",
    bytes_partition: false,
};
pub(crate) const ATTRIBUTE_VERSIONS: Protected = Protected {
    table: "attribute_versions",
    partition: "attribute",
    columns: "version, attribute",
    order: "attribute",
    bytes_partition: false,
};
pub(crate) const AUDITOR_KEYS: Protected = Protected {
    table: "auditor_keys",
    partition: "identity_id",
    columns: "identity_id, public_key, created_at",
    order: "identity_id",
    bytes_partition: false,
};
pub(crate) const COMPONENTS: Protected = Protected {
    table: "components",
    partition: "identity_id",
    columns:
        "identity_id, format, measurement, trust, appraisal, key_sha256, attested_at, expires_at",
    order: "identity_id",
    bytes_partition: false,
};
pub(crate) const CONSENTS: Protected = Protected {
    table: "consents",
    partition: "patient",
    columns: "patient, consent_id, version, grantee, scope, status, document, updated_at",
    order: "consent_id, version",
    bytes_partition: false,
};
pub(crate) const EMERGENCY_GRANTS: Protected = Protected {
    table: "emergency_grants",
    partition: "patient",
    columns:
        "patient, grant_id, clinician, reason, issued_at, expires_at, reviewed_by, reviewed_at",
    order: "grant_id",
    bytes_partition: false,
};

/// The search index client's sealed keyword counters and record keyword
/// lists: one row each, under a pseudorandom row id.
pub(crate) const SSE_STATE: Protected = Protected {
    table: "sse_state",
    partition: "row_id",
    columns: "row_id, sealed",
    order: "row_id",
    bytes_partition: true,
};
pub(crate) const FE_SLOTS: Protected = Protected {
    table: "fe_slots",
    partition: "study",
    columns: "study, slot, provider, sealed_key",
    order: "slot",
    bytes_partition: false,
};
pub(crate) const FE_COHORTS: Protected = Protected {
    table: "fe_cohorts",
    partition: "study",
    columns: "study, cohort_id, slots",
    order: "cohort_id",
    bytes_partition: false,
};
/// A study's slots, one per patient (schema 8; `fe_slots` and `fe_cohorts`
/// are the numbered slots of earlier studies, kept so their tags verify).
pub(crate) const FE_PEOPLE: Protected = Protected {
    table: "fe_people",
    partition: "study",
    columns: "study, slot, patient, provider, sealed_key",
    order: "slot",
    bytes_partition: false,
};
/// Every aggregate released, over the whole population (one partition).
pub(crate) const FE_RELEASES: Protected = Protected {
    table: "fe_releases",
    partition: "population",
    columns: "population, release_id, study, label, patients, epsilon_micro",
    order: "release_id",
    bytes_partition: false,
};

/// Every protected table.
pub(crate) const PROTECTED: [&Protected; 12] = [
    &IDENTITIES,
    &IDENTITY_ATTRIBUTES,
    &ATTRIBUTE_VERSIONS,
    &AUDITOR_KEYS,
    &COMPONENTS,
    &CONSENTS,
    &EMERGENCY_GRANTS,
    &SSE_STATE,
    &FE_SLOTS,
    &FE_COHORTS,
    &FE_PEOPLE,
    &FE_RELEASES,
];

impl Protected {
    /// A partition's name as a query parameter.
    fn parameter(&self, part: &str) -> Result<Value, StoreError> {
        if self.bytes_partition {
            hex::decode(part).map(Value::Bytes).map_err(|_| {
                StoreError::Invalid(format!("{}: a partition name is hex", self.table))
            })
        } else {
            Ok(part.into())
        }
    }

    /// Puts a partition's rows in canonical order: by the order columns, then
    /// by every column, compared as bytes (whatever the database's collation).
    fn sort(&self, rows: &mut [Row]) {
        let names: Vec<&str> = self.columns.split(',').map(str::trim).collect();
        let keys: Vec<usize> = self
            .order
            .split(',')
            .filter_map(|c| names.iter().position(|n| *n == c.trim()))
            .chain(0..names.len())
            .collect();
        rows.sort_by(|a, b| {
            keys.iter()
                .map(|&i| compare(a.0.get(i), b.0.get(i)))
                .find(|o| o.is_ne())
                .unwrap_or(std::cmp::Ordering::Equal)
        });
    }

    /// The partition a row (in canonical column order) belongs to.
    fn partition_of(&self, row: &Row) -> Result<String, StoreError> {
        let at = self
            .columns
            .split(',')
            .position(|c| c.trim() == self.partition)
            .ok_or_else(|| StoreError::Invalid(format!("{}: no partition column", self.table)))?;
        if self.bytes_partition {
            Ok(hex::encode(row.bytes(at)?))
        } else {
            row.text(at)
        }
    }
}

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

/// A row lock on the head (PostgreSQL only). Writers take it for update
/// before anything else; a full verification takes it shared, so that every
/// statement of the verification sees the state one writer left.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Lock {
    None,
    Share,
    Update,
}

/// What this process knows the authority state to be.
#[derive(Debug)]
struct Known {
    head: Head,
    tags: HashMap<(&'static str, String), [u8; 32]>,
    /// The change at which this process last saw each table change (the
    /// head's at load: nothing older is known).
    changed: HashMap<&'static str, u64>,
}

impl Known {
    fn changed_at(&self, table: &str) -> u64 {
        self.changed.get(table).copied().unwrap_or(self.head.seq)
    }
}

/// The tables whose state the authority vouches for to other services (see
/// [`Store::directory_state`]).
const DIRECTORY_TABLES: &[&Protected] = &[
    &IDENTITIES,
    &IDENTITY_ATTRIBUTES,
    &ATTRIBUTE_VERSIONS,
    &AUDITOR_KEYS,
    &COMPONENTS,
    &EMERGENCY_GRANTS,
    &FE_SLOTS,
    &FE_PEOPLE,
];

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

/// Values in canonical order: NULL, integers, bytes, text; bytewise within.
fn compare(a: Option<&Value>, b: Option<&Value>) -> std::cmp::Ordering {
    fn rank(v: Option<&Value>) -> u8 {
        match v {
            None => 0,
            Some(Value::Null) => 1,
            Some(Value::Int(_)) => 2,
            Some(Value::Bytes(_)) => 3,
            Some(Value::Text(_)) => 4,
        }
    }
    match (a, b) {
        (Some(Value::Int(x)), Some(Value::Int(y))) => x.cmp(y),
        (Some(Value::Bytes(x)), Some(Value::Bytes(y))) => x.cmp(y),
        (Some(Value::Text(x)), Some(Value::Text(y))) => x.as_bytes().cmp(y.as_bytes()),
        _ => rank(a).cmp(&rank(b)),
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

    /// What is wrong with a partition's rows as read, against the tag this
    /// process remembers for it (none: no rows may be there).
    fn check_partition(
        &self,
        known: &Known,
        t: &Protected,
        part: &str,
        rows: &[Row],
    ) -> Option<String> {
        let expected = known.tags.get(&(t.table, part.to_string()));
        let matches = match expected {
            None => rows.is_empty(),
            Some(tag) => !rows.is_empty() && *tag == self.tag(t.table, part, rows),
        };
        (!matches).then(|| mismatch(t, part, expected.is_some(), !rows.is_empty()))
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

    /// The head as stored, if its MAC verifies (an alarm otherwise, as for
    /// any malformed value), with PostgreSQL's row `lock` (SQLite's write
    /// transactions are exclusive already).
    fn read_head(&self, tx: &mut dyn Tx, lock: Lock) -> Result<Option<Head>, StoreError> {
        let sql = format!(
            "SELECT seq, tag_count, tag_sum, mac FROM integrity_head WHERE id = 1{}",
            match lock {
                Lock::None => "",
                Lock::Share => " FOR SHARE",
                Lock::Update => " FOR UPDATE",
            }
        );
        let Some(row) = tx.query_opt(&sql, &[])? else {
            return Ok(None);
        };
        let malformed = |_| self.raise("the authority state's head is malformed".into());
        let head = Head {
            seq: row.uint(0).map_err(malformed)?,
            count: row.uint(1).map_err(malformed)?,
            sum: row
                .bytes(2)
                .map_err(malformed)?
                .try_into()
                .map_err(|_| self.raise("the authority state's head is malformed".into()))?,
        };
        if row.bytes(3).map_err(malformed)? != self.head_mac(&head) {
            return Err(self.raise(
                "the authority state's head does not verify: it was written without the authority's key".into(),
            ));
        }
        Ok(Some(head))
    }

    /// The change number in the anchor file: `None` if there is none.
    fn anchored_seq(&self) -> Result<Option<u64>, StoreError> {
        let Some(path) = &self.anchor else {
            return Ok(None);
        };
        // Writers replace it by a rename: it is whole, old or new.
        match std::fs::read_to_string(path) {
            Ok(s) => s.trim().parse().map(Some).map_err(|_| {
                self.raise(format!(
                    "the integrity anchor {} is not a change number: it was damaged",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::Unavailable(format!(
                "cannot read the integrity anchor {}: {e}",
                path.display()
            ))),
        }
    }

    /// Records `seq` in the anchor file if it is newer than what is there,
    /// under an exclusive lock on the file (writers in several processes
    /// never move it back). A failure is reported, not returned: the write
    /// it follows has committed.
    fn anchor(&self, seq: u64) {
        let Some(path) = &self.anchor else {
            return;
        };
        if let Err(e) = write_anchor(path, seq) {
            tracing::error!(
                "cannot record change {seq} in the integrity anchor {}: {e}; \
                 a rollback of the authority's store to before it would go unnoticed at restart",
                path.display()
            );
        }
    }

    /// Reads and verifies the whole authority state: the head, every tag
    /// against it, every partition against its tag, the head against the
    /// anchor. Writes the genesis head into a store that has none and no
    /// authority rows.
    fn load(&self, store: &Store) -> Result<Known, StoreError> {
        let anchored = self.anchored_seq()?;
        let lock = if store.kind() == crate::BackendKind::Postgres {
            Lock::Share
        } else {
            Lock::None
        };
        let known = store.transaction(|tx| {
            let head = match self.read_head(tx, lock)? {
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
                    if anchored.is_some_and(|a| a > 0) {
                        return Err(self.raise(format!(
                            "the authority state is empty but this authority had seen change {}: the database was wiped or replaced",
                            anchored.unwrap_or(0)
                        )));
                    }
                    let head = Head { seq: 0, count: 0, sum: [0; 32] };
                    write_head(tx, self, &head, None)?;
                    head
                }
            };
            match anchored {
                Some(anchored) if head.seq < anchored => {
                    return Err(self.raise(format!(
                        "the authority state was rolled back: the database is at change {} but this authority had seen change {anchored}",
                        head.seq
                    )));
                }
                None if self.anchor.is_some() && head.seq > 0 => {
                    return Err(self.raise(format!(
                        "the integrity anchor is missing while the authority state is at change {}: a rollback cannot be ruled out; \
                         restore the anchor file from the authority's host",
                        head.seq
                    )));
                }
                _ => {}
            }
            let malformed = |_| self.raise("an integrity tag is malformed".into());
            let mut tags = HashMap::new();
            let mut sum = [0u8; 32];
            for row in tx.query("SELECT tbl, part, tag FROM integrity_tags", &[])? {
                let table = row.text(0).map_err(malformed)?;
                let Some(t) = PROTECTED.iter().find(|t| t.table == table) else {
                    return Err(self.raise(format!("an integrity tag names an unknown table `{table}`")));
                };
                let tag: [u8; 32] = row
                    .bytes(2)
                    .map_err(malformed)?
                    .try_into()
                    .map_err(|_| self.raise("an integrity tag is malformed".into()))?;
                sum = add_mod(&sum, &tag, false);
                if tags.insert((t.table, row.text(1).map_err(malformed)?), tag).is_some() {
                    return Err(self.raise("an integrity tag is repeated".into()));
                }
            }
            if tags.len() as u64 != head.count || sum != head.sum {
                return Err(self.raise(
                    "the authority state's tags do not add up to its head: tags were added, removed or rolled back".into(),
                ));
            }
            for t in PROTECTED {
                let mut rows = tx.query(
                    &format!("SELECT {} FROM {} ORDER BY {}", t.columns, t.table, t.partition),
                    &[],
                )?;
                if let Some(problem) = check_table(self, &tags, t, &mut rows) {
                    return Err(self.raise(problem));
                }
            }
            Ok(Known {
                head,
                tags,
                changed: HashMap::new(),
            })
        })?;
        self.anchor(known.head.seq);
        Ok(known)
    }
}

/// Writes `seq` into the anchor file unless it holds a larger one. Crash-safe
/// and monotonic: writers take an exclusive lock on `<anchor>.lock` (several
/// processes may hold the key), write a fresh file beside the anchor, sync
/// it and rename it over the anchor, so a reader (or a restart after a kill)
/// sees the old number or the new one, never a torn file. New files are
/// 0600 and never opened through a symbolic link.
fn write_anchor(path: &std::path::Path, seq: u64) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let private = |p: &std::path::Path, truncate: bool| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(truncate)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(p)
    };
    let mut lock_name = path.as_os_str().to_owned();
    lock_name.push(".lock");
    let lock = private(std::path::Path::new(&lock_name), false)?;
    // Released when `lock` closes.
    lock.lock()?;
    match std::fs::read_to_string(path) {
        Ok(text) if text.trim().parse::<u64>().is_ok_and(|have| have >= seq) => return Ok(()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = std::path::PathBuf::from(tmp_name);
    let mut file = private(&tmp, true)?;
    file.write_all(format!("{seq}\n").as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    // The rename itself survives a crash once the directory is synced.
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Checks every partition of a whole table read against `tags`: returns
/// what is wrong, if anything.
fn check_table(
    integrity: &Integrity,
    tags: &HashMap<(&'static str, String), [u8; 32]>,
    t: &Protected,
    rows: &mut [Row],
) -> Option<String> {
    let mut seen = std::collections::HashSet::new();
    let mut i = 0;
    while i < rows.len() {
        let Ok(part) = t.partition_of(&rows[i]) else {
            return Some(format!(
                "a row of {} has a malformed partition key",
                t.table
            ));
        };
        let mut j = i + 1;
        while j < rows.len() && t.partition_of(&rows[j]).is_ok_and(|p| p == part) {
            j += 1;
        }
        t.sort(&mut rows[i..j]);
        let expected = tags.get(&(t.table, part.clone()));
        if !seen.insert(part.clone())
            || expected != Some(&integrity.tag(t.table, &part, &rows[i..j]))
        {
            return Some(mismatch(t, &part, expected.is_some(), true));
        }
        i = j;
    }
    let tagged = tags.keys().filter(|(table, _)| *table == t.table).count();
    if seen.len() != tagged {
        return Some(format!(
            "rows of {} were deleted outside the authority",
            t.table
        ));
    }
    None
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

/// Partition names per `IN` query of [`partitions_rows`].
const PARTITIONS_PER_QUERY: usize = 256;

/// The rows of each of `parts`, each in canonical order, read with `IN`
/// queries (the partition column must be among the columns read).
fn partitions_rows(
    tx: &mut dyn Tx,
    t: &Protected,
    parts: &[String],
) -> Result<Vec<Vec<Row>>, StoreError> {
    let at = t
        .columns
        .split(',')
        .position(|c| c.trim() == t.partition)
        .ok_or_else(|| {
            StoreError::Invalid(format!("{}: the partition column is not read", t.table))
        })?;
    let mut grouped: HashMap<String, Vec<Row>> = HashMap::new();
    for chunk in parts.chunks(PARTITIONS_PER_QUERY) {
        let params = chunk
            .iter()
            .map(|p| t.parameter(p))
            .collect::<Result<Vec<_>, _>>()?;
        let rows = tx.query(
            &format!(
                "SELECT {} FROM {} WHERE {} IN ({})",
                t.columns,
                t.table,
                t.partition,
                placeholders(1, chunk.len())
            ),
            &params,
        )?;
        for row in rows {
            let name = match (row.0.get(at), t.bytes_partition) {
                (Some(Value::Bytes(b)), true) => hex::encode(b),
                (Some(Value::Text(s)), false) => s.clone(),
                _ => {
                    return Err(StoreError::Corrupt(format!(
                        "{}: a row's partition column has the wrong type",
                        t.table
                    )))
                }
            };
            grouped.entry(name).or_default().push(row);
        }
    }
    Ok(parts
        .iter()
        .map(|p| {
            let mut rows = grouped.get(p).cloned().unwrap_or_default();
            t.sort(&mut rows);
            rows
        })
        .collect())
}

fn partition_rows(tx: &mut dyn Tx, t: &Protected, part: &str) -> Result<Vec<Row>, StoreError> {
    let mut rows = tx.query(
        &format!(
            "SELECT {} FROM {} WHERE {} = $1",
            t.columns, t.table, t.partition
        ),
        &[t.parameter(part)?],
    )?;
    t.sort(&mut rows);
    Ok(rows)
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
                changed: HashMap::new(),
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

    /// Raises the integrity alarm for a reason found outside the store (a
    /// revocation the database keeps refusing): the authority fails closed.
    pub fn raise_alarm(&self, reason: &str) {
        if let Some(integrity) = &self.integrity {
            integrity.raise(reason.to_string());
        }
    }

    /// Whether this store checks the authority's state.
    pub(crate) fn is_protected(&self) -> bool {
        self.integrity.is_some()
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

    /// The change at which the tables the authority vouches for to other
    /// services (identities, attributes, versions, auditors, components,
    /// emergency grants, statistics slots) last changed: it moves with every
    /// write to them and with nothing else (`None` without integrity).
    pub fn directory_change(&self) -> Option<u64> {
        self.integrity.as_ref().map(|i| {
            let known = i.known.read().unwrap_or_else(|p| p.into_inner());
            DIRECTORY_TABLES
                .iter()
                .map(|t| known.changed_at(t.table))
                .max()
                .unwrap_or(0)
        })
    }

    /// Verifies the whole authority state again, as at open (for periodic
    /// checks and benchmarks).
    pub fn verify_integrity(&self) -> Result<(), StoreError> {
        let Some(integrity) = &self.integrity else {
            return Ok(());
        };
        integrity.check_alarm()?;
        // Held across the load: this process's writes cannot move memory on
        // while the database is read.
        let mut current = integrity.known.write().unwrap_or_else(|p| p.into_inner());
        let known = integrity.load(self)?;
        if known.head.seq < current.head.seq {
            return Err(integrity.raise(format!(
                "the authority state was rolled back from change {} to {}",
                current.head.seq, known.head.seq
            )));
        }
        *current = known;
        Ok(())
    }

    /// [`Store::partition`] for many partitions of `t` in one read
    /// transaction (a few `IN` queries), each checked alike.
    pub(crate) fn partitions(
        &self,
        t: &Protected,
        parts: &[String],
    ) -> Result<Vec<Vec<Row>>, StoreError> {
        let Some(integrity) = &self.integrity else {
            return self.read(|tx| partitions_rows(tx, t, parts));
        };
        self.checked(integrity, |tx, known| {
            let all = partitions_rows(tx, t, parts)?;
            for (part, rows) in parts.iter().zip(&all) {
                if let Some(problem) = integrity.check_partition(known, t, part, rows) {
                    return Ok(Err(problem));
                }
            }
            Ok(Ok(all))
        })
    }

    /// The rows of one partition of a protected table, in canonical column
    /// order, checked against what the authority last wrote.
    pub(crate) fn partition(&self, t: &Protected, part: &str) -> Result<Vec<Row>, StoreError> {
        let Some(integrity) = &self.integrity else {
            return self.read(|tx| partition_rows(tx, t, part));
        };
        self.checked(integrity, |tx, known| {
            let rows = partition_rows(tx, t, part)?;
            Ok(match integrity.check_partition(known, t, part, &rows) {
                None => Ok(rows),
                Some(problem) => Err(problem),
            })
        })
    }

    /// Every row of a protected table, each partition checked as in
    /// [`Store::partition`], in one read (grouped by partition, each in
    /// canonical order).
    pub(crate) fn protected_table(&self, t: &Protected) -> Result<Vec<Row>, StoreError> {
        let read_all = |tx: &mut dyn Tx| {
            tx.query(
                &format!(
                    "SELECT {} FROM {} ORDER BY {}",
                    t.columns, t.table, t.partition
                ),
                &[],
            )
        };
        let Some(integrity) = &self.integrity else {
            let mut rows = self.read(read_all)?;
            let mut i = 0;
            while i < rows.len() {
                let part = t.partition_of(&rows[i])?;
                let mut j = i + 1;
                while j < rows.len() && t.partition_of(&rows[j])? == part {
                    j += 1;
                }
                t.sort(&mut rows[i..j]);
                i = j;
            }
            return Ok(rows);
        };
        self.checked(integrity, |tx, known| {
            let mut rows = read_all(tx)?;
            Ok(match check_table(integrity, &known.tags, t, &mut rows) {
                None => Ok(rows),
                Some(problem) => Err(problem),
            })
        })
    }

    /// Runs a checked read: `read` answers the rows, or what is wrong with
    /// them. A mismatch while the stored head is authentic and newer than
    /// what this process knows (another holder of the key wrote) is checked
    /// once more after verifying everything again; otherwise it is an alarm.
    fn checked<T>(
        &self,
        integrity: &Integrity,
        mut read: impl FnMut(&mut dyn Tx, &Known) -> Result<Result<T, String>, StoreError>,
    ) -> Result<T, StoreError> {
        integrity.check_alarm()?;
        for attempt in 0..2 {
            {
                let known = integrity.known.read().unwrap_or_else(|p| p.into_inner());
                let problem = match self.read(|tx| read(tx, &known))? {
                    Ok(rows) => return Ok(rows),
                    Err(problem) => problem,
                };
                let newer = self
                    .read(|tx| integrity.read_head(tx, Lock::None))?
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
    /// (distinct; and only those). `f` gets their rows as they are (checked
    /// against the authority's memory) and returns, with its result, what
    /// each must hold afterwards: that is what gets tagged, and the write is
    /// refused, with the alarm, if the database then holds anything else.
    /// Without integrity protection, a plain transaction.
    pub(crate) fn protected_transaction<T>(
        &self,
        touched: &[(&Protected, &str)],
        mut f: impl FnMut(&mut dyn Tx, &[Vec<Row>]) -> Result<(T, Vec<Vec<Row>>), StoreError>,
    ) -> Result<T, StoreError> {
        let Some(integrity) = &self.integrity else {
            return self.transaction(|tx| {
                let before = touched
                    .iter()
                    .map(|(t, part)| partition_rows(tx, t, part))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(f(tx, &before)?.0)
            });
        };
        integrity.check_alarm()?;
        // Another holder of the key writing at the same time makes this one
        // verify and start again; in a deployment the authority is the only
        // writer, so a few rounds suffice.
        for attempt in 0..20u64 {
            if attempt > 0 {
                std::thread::sleep(std::time::Duration::from_millis(attempt * 2));
            }
            let mut known = integrity.known.write().unwrap_or_else(|p| p.into_inner());
            let outcome = self.transaction(|tx| {
                // The head's row lock first: authority writes never interleave.
                let stored = integrity
                    .read_head(
                        tx,
                        if self.kind() == crate::BackendKind::Postgres {
                            Lock::Update
                        } else {
                            Lock::None
                        },
                    )?
                    .ok_or_else(|| integrity.raise("the authority state's head was deleted".into()))?;
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
                let mut before = Vec::with_capacity(touched.len());
                for (t, part) in touched {
                    let rows = partition_rows(tx, t, part)?;
                    if let Some(problem) = integrity.check_partition(&known, t, part, &rows) {
                        return Err(integrity.raise(problem));
                    }
                    before.push(rows);
                }
                let (out, mut after) = f(tx, &before)?;
                if after.len() != touched.len() {
                    return Err(StoreError::Invalid(
                        "a protected write must say what each partition it touches holds afterwards".into(),
                    ));
                }
                let mut head = known.head;
                let mut changes = Vec::new();
                for ((t, part), expected) in touched.iter().zip(after.iter_mut()) {
                    t.sort(expected);
                    let stored = partition_rows(tx, t, part)?;
                    if stored != *expected {
                        return Err(integrity.raise(format!(
                            "the rows of {} for `{part}` changed under the authority's write: \
                             a trigger, a rule or another session edits the authority's tables",
                            t.table
                        )));
                    }
                    let key = (t.table, part.to_string());
                    let new = (!expected.is_empty()).then(|| integrity.tag(t.table, part, expected));
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
                        known.changed.insert(key.0, head.seq);
                        match tag {
                            Some(tag) => known.tags.insert(key, tag),
                            None => known.tags.remove(&key),
                        };
                    }
                    drop(known);
                    integrity.anchor(head.seq);
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
    use super::{add_mod, write_anchor};

    /// Many writers at once: the anchor only moves forward, ends at the
    /// largest number, and is never seen torn or empty by a reader.
    #[test]
    fn the_anchor_only_moves_forward_and_is_never_torn() {
        let dir = std::env::temp_dir().join(format!("asclepios-anchor-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("d.seal.anchor");
        let writers: Vec<_> = (0..4u64)
            .map(|t| {
                let path = path.clone();
                std::thread::spawn(move || {
                    for i in 0..50u64 {
                        write_anchor(&path, i * 4 + t).unwrap();
                    }
                })
            })
            .collect();
        let reader = {
            let path = path.clone();
            std::thread::spawn(move || {
                let mut last = 0u64;
                for _ in 0..400 {
                    if let Ok(text) = std::fs::read_to_string(&path) {
                        let n: u64 = text.trim().parse().expect("a whole number, never torn");
                        assert!(n >= last, "the anchor went back from {last} to {n}");
                        last = n;
                    }
                }
            })
        };
        for w in writers {
            w.join().unwrap();
        }
        reader.join().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap().trim(), "199");
        std::fs::remove_dir_all(&dir).unwrap();
    }

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
