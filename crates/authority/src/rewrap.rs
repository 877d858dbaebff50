//! Re-wrapping after a revocation: the data keys of every record whose
//! policy names a revoked attribute are wrapped again under the policy at
//! the attributes' current versions, so keys issued before the revocation
//! stop opening them. A re-wrap that failed is retried by the sweeper until
//! no wrapper names an old version.
use crate::record_access::RecordAccess;
use crate::resolve_with;
use crate::KeyAuthority;
use asclepios_crypto::abe::MasterSecretKey;
use asclepios_crypto::policy::attribute_name;
use asclepios_store::Store;

impl KeyAuthority {
    /// Re-wraps what an earlier failure left under old attribute versions,
    /// if anything may be (see [`rewrap_stale`]). Blocks.
    pub fn reconcile_rewraps(&self) -> Result<usize, String> {
        use std::sync::atomic::Ordering;
        if !self.rewrap_pending.swap(false, Ordering::SeqCst) {
            return Ok(0);
        }
        rewrap_stale(&self.store, &*self.records, &self.master).inspect_err(|_| {
            self.rewrap_pending.store(true, Ordering::SeqCst);
        })
    }

    /// Re-wraps after `revoked` were revoked; if that fails (the record
    /// service unreachable), the revocation stands and the sweeper re-wraps
    /// later ([`KeyAuthority::reconcile_rewraps`]).
    pub(crate) fn rewrap_or_defer(&self, revoked: &[String]) {
        if let Err(e) = rewrap_after_revocation(&self.store, &*self.records, &self.master, revoked)
        {
            eprintln!("asclepios authority: re-wrapping deferred: {e}");
            self.rewrap_may_be_pending();
        }
    }

    /// Notes that a re-wrap may not have completed.
    pub(crate) fn rewrap_may_be_pending(&self) {
        self.rewrap_pending
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Re-wraps, under their policies with every attribute at its current
/// version, the data keys of every stored record whose wrapper names one of
/// `revoked` (attribute names without versions). The old wrappers are
/// replaced. Keys issued before the revocation no longer open these records;
/// holders that keep the attribute get fresh keys at their next fetch.
/// Returns how many wrappers were re-wrapped.
pub fn rewrap_after_revocation(
    store: &Store,
    records: &dyn RecordAccess,
    master: &MasterSecretKey,
    revoked: &[String],
) -> Result<usize, String> {
    let mpk = master.public_key();
    let mut after = None;
    let mut count = 0;
    let mut failures = Vec::new();
    loop {
        let page = records.scan_wrappers(after.as_ref(), 256)?;
        let Some(last) = page.last() else { break };
        after = Some(last.clone());
        for row in &page {
            match rewrap_row(store, records, master, &mpk, row, revoked) {
                Ok(true) => count += 1,
                Ok(false) => {}
                Err(e) => failures.push(format!(
                    "{}/{} v{}: {e}",
                    row.patient, row.record_id, row.version
                )),
            }
        }
    }
    if let Some(first) = failures.first() {
        return Err(format!(
            "{} re-wrapped; {} wrapper(s) could not be (first: {first}); they keep their old policy until fixed",
            count,
            failures.len()
        ));
    }
    Ok(count)
}

/// Re-wraps every wrapper whose policy names an attribute at an older
/// version than its current one: what a revocation whose re-wrap failed (a
/// crash, a database that refused) left behind. Returns how many.
pub fn rewrap_stale(
    store: &Store,
    records: &dyn RecordAccess,
    master: &MasterSecretKey,
) -> Result<usize, String> {
    use asclepios_crypto::envelope::KeyWrapper;
    let mpk = master.public_key();
    let mut current: std::collections::HashMap<String, u64> = Default::default();
    let mut after = None;
    let mut count = 0;
    let mut failures = Vec::new();
    loop {
        let page = records.scan_wrappers(after.as_ref(), 256)?;
        let Some(last) = page.last() else { break };
        after = Some(last.clone());
        for row in &page {
            let Ok(wrapper) = KeyWrapper::from_bytes(&row.wrapper.bytes) else {
                failures.push(format!(
                    "{}/{}: an unreadable wrapper",
                    row.patient, row.record_id
                ));
                continue;
            };
            let mut stale = Vec::new();
            for leaf in wrapper.policy().leaves() {
                let name = attribute_name(leaf).to_string();
                let version = leaf
                    .rsplit_once("@v")
                    .and_then(|(_, v)| v.parse::<u64>().ok())
                    .unwrap_or(0);
                let now = match current.get(&name) {
                    Some(v) => *v,
                    None => {
                        let v = store.attribute_version(&name).map_err(|e| e.to_string())?;
                        current.insert(name.clone(), v);
                        v
                    }
                };
                if version < now {
                    stale.push(name);
                }
            }
            if stale.is_empty() {
                continue;
            }
            match rewrap_row(store, records, master, &mpk, row, &stale) {
                Ok(true) => count += 1,
                Ok(false) => {}
                Err(e) => failures.push(format!(
                    "{}/{} v{}: {e}",
                    row.patient, row.record_id, row.version
                )),
            }
        }
    }
    match failures.first() {
        Some(first) => Err(format!(
            "{count} re-wrapped; {} wrapper(s) still name old attribute versions (first: {first})",
            failures.len()
        )),
        None => Ok(count),
    }
}

/// Re-wraps one wrapper if its policy names a revoked attribute. Returns
/// whether it was replaced.
pub(crate) fn rewrap_row(
    store: &Store,
    records: &dyn RecordAccess,
    master: &MasterSecretKey,
    mpk: &asclepios_crypto::abe::PublicKey,
    row: &asclepios_store::WrapperRow,
    revoked: &[String],
) -> Result<bool, String> {
    use asclepios_crypto::envelope::KeyWrapper;
    let wrapper = KeyWrapper::from_bytes(&row.wrapper.bytes).map_err(|e| e.to_string())?;
    let attributes: Vec<String> = wrapper
        .policy()
        .leaves()
        .iter()
        .map(|a| a.to_string())
        .collect();
    if !attributes
        .iter()
        .any(|a| revoked.iter().any(|r| r == attribute_name(a)))
    {
        return Ok(false);
    }
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
