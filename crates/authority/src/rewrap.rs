//! Re-wrapping after a revocation: the data keys of every record whose
//! policy names a revoked attribute are wrapped again under the policy at
//! the attributes' current versions, so keys issued before the revocation
//! stop opening them.
//!
//! A write racing the revocation cannot slip past the scan: the authority
//! first raises the record service's attribute floors ([`fence`]), which
//! waits for writes in flight and refuses later ones under the old version,
//! and then scans until a scan finds nothing stale. A re-wrap that failed
//! is retried by the sweeper until no wrapper names an old version.
use crate::record_access::RecordAccess;
use crate::resolve_with;
use crate::KeyAuthority;
use asclepios_crypto::abe::MasterSecretKey;
use asclepios_crypto::policy::{attribute_name, attribute_version};
use asclepios_store::Store;

impl KeyAuthority {
    /// Re-wraps what expiries and earlier failures left under old attribute
    /// versions, if anything may be, for at most [`REWRAP_TIME_PER_TICK`]
    /// (the sweeper calls it every few seconds and goes on where the time
    /// ran out). Blocks.
    pub fn reconcile_rewraps(&self) -> Result<usize, String> {
        use std::sync::atomic::Ordering;
        if !self.rewrap_pending.swap(false, Ordering::SeqCst) {
            return Ok(0);
        }
        match rewrap_stale_within(
            &self.store,
            &*self.records,
            &self.master,
            Some(REWRAP_TIME_PER_TICK),
        ) {
            Ok((count, true)) => Ok(count),
            Ok((count, false)) => {
                self.rewrap_pending.store(true, Ordering::SeqCst);
                Ok(count)
            }
            Err(e) => {
                self.rewrap_pending.store(true, Ordering::SeqCst);
                Err(e)
            }
        }
    }

    /// Re-wraps after a revocation; if that fails (the record service
    /// unreachable), the revocation stands and the sweeper re-wraps later
    /// ([`KeyAuthority::reconcile_rewraps`]).
    /// Bounded by [`SYNC_REWRAP_TIME`]: what is left goes to the sweeper.
    pub(crate) fn rewrap_or_defer(&self) {
        match rewrap_stale_for_request(&self.store, &*self.records, &self.master, SYNC_REWRAP_TIME)
        {
            Ok((_, true)) => {}
            Ok((_, false)) => self.rewrap_may_be_pending(),
            Err(e) => {
                tracing::warn!("re-wrapping deferred: {e}");
                self.rewrap_may_be_pending();
            }
        }
    }

    /// Whether re-wraps may be left (the sweeper goes on at once if the
    /// last round made progress and ran out of time, rather than failed).
    pub fn rewraps_pending(&self) -> bool {
        self.rewrap_pending
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Notes that a re-wrap may not have completed.
    pub(crate) fn rewrap_may_be_pending(&self) {
        self.rewrap_pending
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// How long the sweeper re-wraps per tick: a patient with many records (or
/// records under huge policies) spreads over several ticks instead of
/// holding up every other expiry. One wrapper may overrun it.
pub const REWRAP_TIME_PER_TICK: std::time::Duration = std::time::Duration::from_secs(1);

/// How long a request that revokes (a withdrawal, an administrator's
/// change) re-wraps before it answers; the sweeper finishes the rest. It
/// also holds one of the authority's heavy slots meanwhile, so it must not
/// run unbounded. The record service refuses the revoked holders from the
/// fence on, whatever is left.
pub const SYNC_REWRAP_TIME: std::time::Duration = std::time::Duration::from_secs(10);

/// Most scans one re-wrap makes before it leaves the rest to the sweeper:
/// a scan finds more only if wrappers changed under it (another re-wrap).
const MAX_SCANS: usize = 8;

/// What one scan found.
#[derive(Debug, Default)]
struct Scan {
    /// Wrappers naming an attribute below its current version.
    stale: usize,
    /// Of those, how many this scan replaced.
    rewrapped: usize,
    /// Whether the time ran out before the scan ended.
    cut_short: bool,
    /// Those that could not be re-wrapped, and why.
    failures: Vec<String>,
}

/// Tells the record service every attribute's current version and waits
/// until it refuses writes under older ones (its attribute floors,
/// [`asclepios_store::Store::raise_attribute_floors`]): after this returns
/// no stale wrapper can be stored, so a scan that then finds none is done.
pub fn fence(store: &Store, records: &dyn RecordAccess) -> Result<(), String> {
    let change = store.directory_change().unwrap_or(0);
    let versions = store.attribute_versions().map_err(|e| e.to_string())?;
    records.directory_changed(change, &versions, crate::record_access::FENCE_LIMIT)
}

/// Re-wraps every wrapper whose policy names an attribute at an older
/// version than its current one, under the same policy at the current
/// versions: after a revocation, and what a revocation whose re-wrap failed
/// (a crash, a record service that was down) left behind. Keys issued
/// before the revocation no longer open these records; holders that keep
/// the attribute get fresh keys at their next fetch.
///
/// First [`fence`]s (no record can be written under the old versions from
/// then on), then scans until a scan finds nothing stale. Returns how many
/// wrappers were re-wrapped; an error leaves the rest for a retry.
pub fn rewrap_stale(
    store: &Store,
    records: &dyn RecordAccess,
    master: &MasterSecretKey,
) -> Result<usize, String> {
    rewrap_stale_within(store, records, master, None).map(|(count, _)| count)
}

/// [`rewrap_stale`] that starts no further re-wrap once `budget` has
/// passed since the fence (the fence itself, which waits for the record
/// service, does not count), and always makes at least one: the count, and
/// whether it finished (a scan found nothing stale).
pub fn rewrap_stale_within(
    store: &Store,
    records: &dyn RecordAccess,
    master: &MasterSecretKey,
    budget: Option<std::time::Duration>,
) -> Result<(usize, bool), String> {
    rewrap_stale_bounded(store, records, master, budget, false)
}

/// [`rewrap_stale_within`] for a request that revokes (a withdrawal, an
/// administrator's change), which must answer within about `budget`: the
/// time is also checked between pages of the scan, so a long scan that
/// finds little stops too, and the sweeper (whose rounds always make
/// progress) finishes. The count, and whether it finished.
pub fn rewrap_stale_for_request(
    store: &Store,
    records: &dyn RecordAccess,
    master: &MasterSecretKey,
    budget: std::time::Duration,
) -> Result<(usize, bool), String> {
    rewrap_stale_bounded(store, records, master, Some(budget), true)
}

fn rewrap_stale_bounded(
    store: &Store,
    records: &dyn RecordAccess,
    master: &MasterSecretKey,
    budget: Option<std::time::Duration>,
    stop_between_pages: bool,
) -> Result<(usize, bool), String> {
    fence(store, records)?;
    let until = budget.map(|b| std::time::Instant::now() + b);
    let mut total = 0;
    for _ in 0..MAX_SCANS {
        let scan = scan_and_rewrap(store, records, master, until, stop_between_pages)?;
        total += scan.rewrapped;
        if let Some(first) = scan.failures.first() {
            return Err(format!(
                "{total} re-wrapped; {} wrapper(s) still name old attribute versions (first: {first})",
                scan.failures.len()
            ));
        }
        // Cut short first: a scan stopped between pages may have found
        // nothing stale yet and still not have seen everything.
        if scan.cut_short {
            return Ok((total, false));
        }
        if scan.stale == 0 {
            return Ok((total, true));
        }
    }
    Err(format!(
        "{total} re-wrapped; wrappers were still stale after {MAX_SCANS} scans"
    ))
}

/// One pass over every wrapper, re-wrapping the stale ones.
fn scan_and_rewrap(
    store: &Store,
    records: &dyn RecordAccess,
    master: &MasterSecretKey,
    until: Option<std::time::Instant>,
    stop_between_pages: bool,
) -> Result<Scan, String> {
    use asclepios_crypto::envelope::KeyWrapper;
    let mpk = master.public_key();
    let mut current: std::collections::HashMap<String, u64> = Default::default();
    let mut after = None;
    let mut scan = Scan::default();
    loop {
        if stop_between_pages && until.is_some_and(|t| std::time::Instant::now() >= t) {
            scan.cut_short = true;
            return Ok(scan);
        }
        let page = records.scan_wrappers(after.as_ref(), 256)?;
        let Some(last) = page.last() else { break };
        after = Some(last.clone());
        for row in &page {
            let Ok(wrapper) = KeyWrapper::from_bytes(&row.wrapper.bytes) else {
                // Record ids only: failures reach the operator's log,
                // which names no patient.
                scan.failures
                    .push(format!("record {}: an unreadable wrapper", row.record_id));
                continue;
            };
            let mut stale = false;
            for leaf in wrapper.policy().leaves() {
                let name = attribute_name(leaf).to_string();
                let version = attribute_version(leaf);
                let now = match current.get(&name) {
                    Some(v) => *v,
                    None => {
                        let v = store.attribute_version(&name).map_err(|e| e.to_string())?;
                        current.insert(name.clone(), v);
                        v
                    }
                };
                stale |= version < now;
            }
            if !stale {
                continue;
            }
            scan.stale += 1;
            // At least one re-wrap per round, however long the scan took
            // to find it: a round that only scanned would make no progress.
            if scan.rewrapped > 0 && until.is_some_and(|t| std::time::Instant::now() >= t) {
                scan.cut_short = true;
                return Ok(scan);
            }
            match rewrap_row(store, records, master, &mpk, row, &wrapper) {
                Ok(true) => scan.rewrapped += 1,
                // Replaced meanwhile: the next scan looks again.
                Ok(false) => {}
                Err(e) => scan
                    .failures
                    .push(format!("record {} v{}: {e}", row.record_id, row.version)),
            }
        }
    }
    Ok(scan)
}

/// Re-wraps one wrapper under its policy at the current versions. Returns
/// whether it was replaced (not if it changed since it was read).
pub(crate) fn rewrap_row(
    store: &Store,
    records: &dyn RecordAccess,
    master: &MasterSecretKey,
    mpk: &asclepios_crypto::abe::PublicKey,
    row: &asclepios_store::WrapperRow,
    wrapper: &asclepios_crypto::envelope::KeyWrapper,
) -> Result<bool, String> {
    let attributes: Vec<String> = wrapper
        .policy()
        .leaves()
        .iter()
        .map(|a| a.to_string())
        .collect();
    let stored = records
        .record_version(&row.patient, &row.record_id, Some(row.version))?
        .ok_or("a wrapper without its record")?;
    let body = asclepios_service::stored_sealed_body(&stored.body)?;
    // A key for exactly the policy's attributes, made and dropped here.
    let mut unique = attributes.clone();
    unique.sort();
    unique.dedup();
    let key = master
        .keygen(&unique, &mut rand_core::OsRng)
        .map_err(|e| e.to_string())?;
    let policy = resolve_with(store, wrapper.policy())?;
    let rewrapped = wrapper
        .rewrap(&key, &body, mpk, &policy, &mut rand_core::OsRng)
        .map_err(|e| e.to_string())?;
    records.replace_wrapper(
        &row.patient,
        &row.record_id,
        row.version,
        &row.wrapper.slot,
        row.wrapper.epoch,
        &rewrapped.to_bytes(),
        row.wrapper
            .epoch
            .checked_add(1)
            .ok_or("a wrapper at the last epoch")?,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request's re-wrap stops between pages once its time is up, and
    /// says it did not finish even though it found nothing stale (it did
    /// not look everywhere): the sweeper then finishes.
    #[test]
    fn a_request_stops_between_pages_and_does_not_claim_it_finished() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(&dir.path().join("s.db")).unwrap();
        for i in 0..3 {
            store
                .put_record_version("pat-1", &format!("r{i}"), 1, b"body", &[("main", b"w", 0)])
                .unwrap();
        }
        let records = crate::record_access::LocalRecords(store.clone());
        let (_, master) = asclepios_crypto::abe::setup(&mut rand_core::OsRng);
        let cut = rewrap_stale_for_request(&store, &records, &master, std::time::Duration::ZERO);
        assert_eq!(cut, Ok((0, false)));
        // With time, the same scan reads the (unreadable) wrappers.
        let scanned = rewrap_stale_for_request(
            &store,
            &records,
            &master,
            std::time::Duration::from_secs(10),
        );
        assert!(
            scanned
                .as_ref()
                .is_err_and(|e| e.contains("unreadable wrapper")),
            "{scanned:?}"
        );
    }
}
