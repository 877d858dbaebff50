//! What the key authority needs of the record service's store, and nothing
//! more: scanning and replacing key wrappers (re-wraps after a revocation),
//! reading a record version (who authored it), and reading and writing the
//! encrypted index (search updates and compactions).
//!
//! In one process this is the record service's store itself
//! ([`LocalRecords`]); with the services apart it is the record service's
//! API over mutual TLS. Either way the authority never reads another table
//! of the record service, and the record service never reads one of the
//! authority's.

use asclepios_store::{RecordVersion, Store, WrapperRow};

/// The record service's data, as the authority reaches it.
pub trait RecordAccess: Send + Sync {
    /// Up to `limit` wrappers after `after`, in a stable order.
    fn scan_wrappers(
        &self,
        after: Option<&WrapperRow>,
        limit: usize,
    ) -> Result<Vec<WrapperRow>, String>;

    /// A record version (the latest if `version` is `None`).
    fn record_version(
        &self,
        patient: &str,
        record_id: &str,
        version: Option<u64>,
    ) -> Result<Option<RecordVersion>, String>;

    /// Replaces a wrapper if it is still at `expected_epoch`; whether it was.
    #[allow(clippy::too_many_arguments)]
    fn replace_wrapper(
        &self,
        patient: &str,
        record_id: &str,
        version: u64,
        slot: &str,
        expected_epoch: u64,
        bytes: &[u8],
        new_epoch: u64,
    ) -> Result<bool, String>;

    /// The index values at `addrs` (`None` where there is nothing).
    fn index_get(&self, addrs: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, String>;

    /// Writes index entries (over what an address held) and deletes
    /// addresses.
    fn index_write(&self, put: &[(Vec<u8>, Vec<u8>)], delete: &[Vec<u8>]) -> Result<(), String>;

    /// Tells the record service that the directory moved to `change`, with
    /// every revoked attribute at `versions`, and returns once it judges by
    /// facts at least that recent and has raised its attribute floors to
    /// them: from then on it stores nothing under an older version, and
    /// every write that checked against an older one has committed. Waits
    /// at most `limit` for the record service.
    fn directory_changed(
        &self,
        change: u64,
        versions: &[(String, u64)],
        limit: std::time::Duration,
    ) -> Result<(), String>;
}

/// The record service's store, in the same process.
#[derive(Clone, Debug)]
pub struct LocalRecords(pub Store);

impl RecordAccess for LocalRecords {
    fn scan_wrappers(
        &self,
        after: Option<&WrapperRow>,
        limit: usize,
    ) -> Result<Vec<WrapperRow>, String> {
        self.0
            .scan_wrappers(after, limit)
            .map_err(|e| e.to_string())
    }

    fn record_version(
        &self,
        patient: &str,
        record_id: &str,
        version: Option<u64>,
    ) -> Result<Option<RecordVersion>, String> {
        self.0
            .record_version(patient, record_id, version)
            .map_err(|e| e.to_string())
    }

    fn replace_wrapper(
        &self,
        patient: &str,
        record_id: &str,
        version: u64,
        slot: &str,
        expected_epoch: u64,
        bytes: &[u8],
        new_epoch: u64,
    ) -> Result<bool, String> {
        self.0
            .replace_wrapper(
                patient,
                record_id,
                version,
                slot,
                expected_epoch,
                bytes,
                new_epoch,
            )
            .map_err(|e| e.to_string())
    }

    fn index_get(&self, addrs: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, String> {
        self.0.sse_get(addrs).map_err(|e| e.to_string())
    }

    fn index_write(&self, put: &[(Vec<u8>, Vec<u8>)], delete: &[Vec<u8>]) -> Result<(), String> {
        self.0
            .sse_index_write(put, delete)
            .map_err(|e| e.to_string())
    }

    /// In one process the record service reads the authority's state
    /// itself: only the floors need raising.
    fn directory_changed(
        &self,
        _change: u64,
        versions: &[(String, u64)],
        _limit: std::time::Duration,
    ) -> Result<(), String> {
        self.0
            .raise_attribute_floors(versions)
            .map_err(|e| e.to_string())
    }
}

/// The record service's API over mutual TLS, as the authority's service
/// identity (the services in processes of their own). Calls block the
/// calling thread (a blocking one: handlers and the sweeper run there).
#[derive(Debug)]
pub struct RemoteRecords {
    client: asclepios_net::client::SignedClient,
    runtime: tokio::runtime::Handle,
}

/// How long the authority waits for the record service to take a directory
/// change before answering its caller anyway.
pub const FACTS_PUSH_LIMIT: std::time::Duration = std::time::Duration::from_secs(2);

/// How long a re-wrap waits for the record service to raise its attribute
/// floors: the re-wrap cannot start without it, so it waits out a busy
/// record service rather than give up (and retry) after a push's limit.
pub const FENCE_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Entries per index write request: large imports go in several.
const INDEX_CHUNK: usize = 4096;

/// Largest answer read from the record service: it is not trusted to be
/// reasonable.
const MAX_ANSWER_BYTES: usize = 32 << 20;

impl RemoteRecords {
    /// Calls through `client` on `runtime`.
    pub fn new(
        client: asclepios_net::client::SignedClient,
        runtime: tokio::runtime::Handle,
    ) -> Self {
        RemoteRecords { client, runtime }
    }

    fn call<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &impl serde::Serialize,
    ) -> Result<T, String> {
        self.call_within(path, body, None)
    }

    /// [`RemoteRecords::call`], given up after `limit` if one is set (the
    /// client's own timeout applies otherwise).
    fn call_within<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &impl serde::Serialize,
        limit: Option<std::time::Duration>,
    ) -> Result<T, String> {
        let body = serde_json::to_vec(body).map_err(|e| e.to_string())?;
        let call = async {
            let response = self
                .client
                .send(reqwest::Method::POST, path, body)
                .await
                .map_err(|e| format!("the record service: {e}"))?;
            let status = response.status();
            let mut response = response;
            let mut bytes = Vec::new();
            while let Some(chunk) = response
                .chunk()
                .await
                .map_err(|e| format!("the record service: {e}"))?
            {
                if bytes.len() + chunk.len() > MAX_ANSWER_BYTES {
                    return Err(format!(
                        "the record service answered more than {} MiB",
                        MAX_ANSWER_BYTES >> 20
                    ));
                }
                bytes.extend_from_slice(&chunk);
            }
            if !status.is_success() {
                return Err(format!(
                    "the record service answered {status}: {}",
                    String::from_utf8_lossy(&bytes[..bytes.len().min(512)])
                ));
            }
            serde_json::from_slice(&bytes)
                .map_err(|e| format!("the record service's answer is malformed: {e}"))
        };
        self.runtime.block_on(async {
            match limit {
                None => call.await,
                Some(limit) => tokio::time::timeout(limit, call).await.unwrap_or_else(|_| {
                    Err(format!(
                        "the record service did not answer within {limit:?}"
                    ))
                }),
            }
        })
    }
}

fn decoded(s: &str) -> Result<Vec<u8>, String> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|_| "the record service sent bytes that are not base64".to_string())
}

fn encoded(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

impl RecordAccess for RemoteRecords {
    fn scan_wrappers(
        &self,
        after: Option<&WrapperRow>,
        limit: usize,
    ) -> Result<Vec<WrapperRow>, String> {
        use asclepios_api::internal::{WrapperKey, WrapperOut, WrapperScan, MAX_SCAN};
        let page: Vec<WrapperOut> = self.call(
            "/v1/internal/wrappers/scan",
            &WrapperScan {
                after: after.map(|w| WrapperKey {
                    patient: w.patient.clone(),
                    record_id: w.record_id.clone(),
                    version: w.version,
                    slot: w.wrapper.slot.clone(),
                }),
                limit: limit.clamp(1, MAX_SCAN),
            },
        )?;
        check_scan_page(after, &page, limit)?;
        page.into_iter()
            .map(|w| {
                Ok(WrapperRow {
                    patient: w.key.patient,
                    record_id: w.key.record_id,
                    version: w.key.version,
                    wrapper: asclepios_store::Wrapper {
                        slot: w.key.slot,
                        bytes: decoded(&w.wrapper)?,
                        epoch: w.epoch,
                        updated_at: w.updated_at,
                    },
                })
            })
            .collect()
    }

    fn record_version(
        &self,
        patient: &str,
        record_id: &str,
        version: Option<u64>,
    ) -> Result<Option<RecordVersion>, String> {
        use asclepios_api::internal::{StoredVersion, VersionQuery};
        let found: Option<StoredVersion> = self.call(
            "/v1/internal/records/version",
            &VersionQuery {
                patient: patient.into(),
                record_id: record_id.into(),
                version,
            },
        )?;
        found
            .map(|v| {
                Ok(RecordVersion {
                    patient: v.patient,
                    record_id: v.record_id,
                    version: v.version,
                    body: decoded(&v.body)?,
                    created_at: v.created_at,
                })
            })
            .transpose()
    }

    fn replace_wrapper(
        &self,
        patient: &str,
        record_id: &str,
        version: u64,
        slot: &str,
        expected_epoch: u64,
        bytes: &[u8],
        new_epoch: u64,
    ) -> Result<bool, String> {
        use asclepios_api::internal::{WrapperKey, WrapperReplacement};
        self.call(
            "/v1/internal/wrappers/replace",
            &WrapperReplacement {
                key: WrapperKey {
                    patient: patient.into(),
                    record_id: record_id.into(),
                    version,
                    slot: slot.into(),
                },
                expected_epoch,
                wrapper: encoded(bytes),
                new_epoch,
            },
        )
    }

    fn index_get(&self, addrs: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, String> {
        use asclepios_api::internal::IndexGet;
        let mut out = Vec::with_capacity(addrs.len());
        for chunk in addrs.chunks(INDEX_CHUNK) {
            let values: Vec<Option<String>> = self.call(
                "/v1/internal/index/get",
                &IndexGet {
                    addrs: chunk.iter().map(|a| encoded(a)).collect(),
                },
            )?;
            if values.len() != chunk.len() {
                return Err("the record service answered another number of index values".into());
            }
            for v in values {
                out.push(v.as_deref().map(decoded).transpose()?);
            }
        }
        Ok(out)
    }

    fn index_write(&self, put: &[(Vec<u8>, Vec<u8>)], delete: &[Vec<u8>]) -> Result<(), String> {
        use asclepios_api::internal::IndexWrite;
        for chunk in put.chunks(INDEX_CHUNK) {
            let () = self.call(
                "/v1/internal/index/write",
                &IndexWrite {
                    put: chunk
                        .iter()
                        .map(|(a, v)| (encoded(a), encoded(v)))
                        .collect(),
                    delete: Vec::new(),
                },
            )?;
        }
        for chunk in delete.chunks(INDEX_CHUNK) {
            let () = self.call(
                "/v1/internal/index/write",
                &IndexWrite {
                    put: Vec::new(),
                    delete: chunk.iter().map(|a| encoded(a)).collect(),
                },
            )?;
        }
        Ok(())
    }

    /// The record service raises its floors from the facts it verified,
    /// not from `versions`: it takes the authority's signature, not its
    /// word on the wire.
    fn directory_changed(
        &self,
        change: u64,
        _versions: &[(String, u64)],
        limit: std::time::Duration,
    ) -> Result<(), String> {
        // Bounded: a record service that does not answer must not hold up
        // the authority's caller for long (the change reaches it by poll).
        let held: u64 = self.call_within(
            "/v1/internal/facts/changed",
            &asclepios_api::internal::FactsChanged { change },
            Some(limit),
        )?;
        if held < change {
            return Err(format!(
                "the record service holds the directory at change {held}, not yet {change}"
            ));
        }
        Ok(())
    }
}

/// Each page of a wrapper scan must move on, in order, within the limit: a
/// record service that answers the same page again, or pages out of order,
/// must not keep the authority re-wrapping forever.
fn check_scan_page(
    after: Option<&WrapperRow>,
    page: &[asclepios_api::internal::WrapperOut],
    limit: usize,
) -> Result<(), String> {
    if page.len() > limit.clamp(1, asclepios_api::internal::MAX_SCAN) {
        return Err("the record service answered more wrappers than asked for".into());
    }
    let mut previous = after.map(|w| {
        (
            w.patient.as_str(),
            w.record_id.as_str(),
            w.version,
            w.wrapper.slot.as_str(),
        )
    });
    for w in page {
        let k = (
            w.key.patient.as_str(),
            w.key.record_id.as_str(),
            w.key.version,
            w.key.slot.as_str(),
        );
        if previous.is_some_and(|p| p >= k) {
            return Err("the record service answered a wrapper scan out of order".into());
        }
        previous = Some(k);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use asclepios_api::internal::{WrapperKey, WrapperOut};

    fn out(record: &str, version: u64) -> WrapperOut {
        WrapperOut {
            key: WrapperKey {
                patient: "pat-1".into(),
                record_id: record.into(),
                version,
                slot: "main".into(),
            },
            wrapper: String::new(),
            epoch: 0,
            updated_at: 0,
        }
    }

    fn row(record: &str, version: u64) -> WrapperRow {
        WrapperRow {
            patient: "pat-1".into(),
            record_id: record.into(),
            version,
            wrapper: asclepios_store::Wrapper {
                slot: "main".into(),
                bytes: Vec::new(),
                epoch: 0,
                updated_at: 0,
            },
        }
    }

    #[test]
    fn a_hostile_record_service_cannot_keep_a_scan_going() {
        let page = [out("a", 1), out("a", 2), out("b", 1)];
        assert!(check_scan_page(None, &page, 10).is_ok());
        // The same page again, after its own last row: no progress.
        assert!(check_scan_page(Some(&row("b", 1)), &page, 10).is_err());
        // Out of order, repeated, or more than asked for.
        assert!(check_scan_page(None, &[out("b", 1), out("a", 1)], 10).is_err());
        assert!(check_scan_page(None, &[out("a", 1), out("a", 1)], 10).is_err());
        assert!(check_scan_page(None, &page, 2).is_err());
        assert!(check_scan_page(Some(&row("a", 1)), &page[1..], 10).is_ok());
    }
}
