//! How a service's audit log reaches its witnesses: the key authority's
//! witness in the same process, or over the authority's signed mutual TLS
//! (`POST /v1/witness/add-checkpoint`, the C2SP `tlog-witness` exchange).

use asclepios_audit::WitnessError;
use asclepios_net::client::SignedClient;

/// How long one cosignature request may take before the witness counts as
/// unreachable for that checkpoint.
pub const WITNESS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The authority's witness, reached from another process. Calls block:
/// the log calls it from blocking threads.
pub struct RemoteWitness {
    client: SignedClient,
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for RemoteWitness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteWitness").finish_non_exhaustive()
    }
}

impl RemoteWitness {
    /// The witness behind `client` (the authority), driven on `runtime`.
    pub fn new(client: SignedClient, runtime: tokio::runtime::Handle) -> Self {
        RemoteWitness { client, runtime }
    }
}

impl asclepios_audit::WitnessClient for RemoteWitness {
    fn add_checkpoint(&self, body: &str) -> Result<String, WitnessError> {
        exchange(
            &self.runtime,
            self.client.send(
                axum::http::Method::POST,
                "/v1/witness/add-checkpoint",
                body.as_bytes().to_vec(),
            ),
        )
    }
}

/// Sends one `add-checkpoint` request (`send`) on `runtime`, waiting at most
/// [`WITNESS_TIMEOUT`], and reads the witness's answer.
fn exchange<E: std::fmt::Display>(
    runtime: &tokio::runtime::Handle,
    send: impl std::future::Future<Output = Result<reqwest::Response, E>>,
) -> Result<String, WitnessError> {
    let unreachable = |e: String| WitnessError::Storage(format!("the witness: {e}"));
    let call = async {
        let response = send.await.map_err(|e| unreachable(e.to_string()))?;
        let status = response.status().as_u16();
        let text = response
            .text()
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        Ok::<_, WitnessError>((status, text))
    };
    let (status, text) = runtime
        .block_on(async { tokio::time::timeout(WITNESS_TIMEOUT, call).await })
        .map_err(|_| unreachable("no answer in time".into()))??;
    answer(status, text)
}

/// A `tlog-witness` answer as the error the witness would have returned.
/// The authority's error layer wraps refusals as `{"error": "<text>"}`:
/// the text is taken from there.
fn answer(status: u16, text: String) -> Result<String, WitnessError> {
    let text = match status {
        200 => text,
        _ => serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
            .unwrap_or(text),
    };
    let text_short = || text.chars().take(300).collect::<String>();
    match status {
        200 => Ok(text),
        409 => {
            let latest = text.trim_end_matches('\n').parse().map_err(|_| {
                WitnessError::Malformed(format!("a 409 without a size: {}", text_short()))
            })?;
            // The log tells a fork (a 409 for the size it just proved
            // from) from a stale size.
            Err(WitnessError::Conflict {
                latest,
                fork: false,
            })
        }
        422 => Err(WitnessError::Inconsistent {
            old: 0,
            why: text_short(),
        }),
        400 => Err(WitnessError::Malformed(text_short())),
        403 => Err(WitnessError::NotSigned),
        404 => Err(WitnessError::UnknownLog(text_short())),
        other => Err(WitnessError::Storage(format!(
            "the witness answered {other}: {}",
            text_short()
        ))),
    }
}

/// An independent witness, reached over `tlog-witness` HTTP at its
/// submission prefix (`<url>/add-checkpoint`). Calls block.
pub struct HttpWitness {
    url: String,
    http: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for HttpWitness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpWitness")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl HttpWitness {
    /// The witness at `url`, driven on `runtime`.
    pub fn new(url: &str, runtime: tokio::runtime::Handle) -> Result<Self, crate::Error> {
        // reqwest's TLS needs a process-wide provider even for plain HTTP:
        // the one the rest of the deployment uses (a no-op if one is set).
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(WITNESS_TIMEOUT)
            .build()
            .map_err(|e| crate::Error::Invalid(format!("the witness at {url}: {e}")))?;
        Ok(HttpWitness {
            url: url.trim_end_matches('/').to_string(),
            http,
            runtime,
        })
    }
}

impl asclepios_audit::WitnessClient for HttpWitness {
    fn add_checkpoint(&self, body: &str) -> Result<String, WitnessError> {
        exchange(
            &self.runtime,
            self.http
                .post(format!("{}/add-checkpoint", self.url))
                .body(body.to_string())
                .send(),
        )
    }
}
