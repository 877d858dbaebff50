//! The client side: HTTPS with the identity's certificate, every request
//! signed with the same key.

use std::time::Duration;

use reqwest::Method;

use crate::signature::RequestSigner;
use crate::tls::client_config;
use crate::Error;

/// An identity's connection to one service.
#[derive(Debug)]
pub struct SignedClient {
    http: reqwest::Client,
    base: String,
    /// The service's TLS name, which every signature covers (`@authority`).
    authority: String,
    signer: RequestSigner,
    /// How often a request answered 429 is sent again (after its
    /// `Retry-After`, each time signed afresh).
    throttle_retries: u32,
}

/// Longest `Retry-After` a client waits before sending again; a longer one
/// is returned to the caller as the 429 it is.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(10);

impl SignedClient {
    /// A client for the service named `authority` (its TLS name, which
    /// every signature covers) at `base` (e.g. `https://127.0.0.1:7444`) as
    /// identity `id`, trusting `ca_pem`.
    pub fn new(
        base: &str,
        authority: &str,
        id: &str,
        ca_pem: &str,
        cert_pem: &str,
        key_pem: &str,
    ) -> Result<Self, Error> {
        Self::with_tls(
            base,
            authority,
            id,
            client_config(ca_pem, cert_pem, key_pem)?,
            key_pem,
        )
    }

    /// A client with a TLS configuration of the caller's (e.g. one that
    /// appraises the server's attestation), signing as `id` with `key_pem`
    /// for the service named `authority`.
    pub fn with_tls(
        base: &str,
        authority: &str,
        id: &str,
        tls: std::sync::Arc<rustls::ClientConfig>,
        key_pem: &str,
    ) -> Result<Self, Error> {
        let http = reqwest::Client::builder()
            .use_preconfigured_tls((*tls).clone())
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| Error::Certificate(format!("HTTPS client: {e}")))?;
        Ok(SignedClient {
            http,
            base: base.trim_end_matches('/').to_string(),
            authority: authority.to_string(),
            signer: RequestSigner::from_pem(id, key_pem)?,
            throttle_retries: 5,
        })
    }

    /// How often a request answered 429 (too many requests) is sent again
    /// after the wait its `Retry-After` names (5 by default; 0 returns
    /// every 429 to the caller, e.g. for a load test that counts them).
    pub fn set_throttle_retries(&mut self, retries: u32) {
        self.throttle_retries = retries;
    }

    /// Sends a signed request; the response as it came.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
    ) -> Result<reqwest::Response, Error> {
        Ok(self.send_signed(method, path, body).await?.0)
    }

    /// Sends a signed request; the response and the request's hash (what its
    /// receipt names). A 429 is retried after its `Retry-After` (see
    /// [`SignedClient::set_throttle_retries`]).
    pub async fn send_signed(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
    ) -> Result<(reqwest::Response, [u8; 32]), Error> {
        let mut retries = self.throttle_retries;
        loop {
            let (response, hash) = self.send_once(method.clone(), path, body.clone()).await?;
            let wait = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            match wait {
                Some(wait)
                    if response.status() == reqwest::StatusCode::TOO_MANY_REQUESTS
                        && retries > 0
                        && wait <= MAX_RETRY_AFTER =>
                {
                    retries -= 1;
                    tokio::time::sleep(wait).await;
                }
                _ => return Ok((response, hash)),
            }
        }
    }

    async fn send_once(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
    ) -> Result<(reqwest::Response, [u8; 32]), Error> {
        let mut nonce = [0u8; 16];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut nonce);
        let headers = self.signer.sign(
            method.as_str(),
            &self.authority,
            path,
            &body,
            crate::server::unix_now(),
            &hex::encode(nonce),
        )?;
        let request_hash = headers.request_hash;
        let response = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .header("content-digest", headers.content_digest)
            .header("signature-input", headers.signature_input)
            .header("signature", headers.signature)
            .body(body)
            .send()
            .await
            .map_err(|e| Error::Transport(e.to_string()))?;
        Ok((response, request_hash))
    }
}
