//! Signed requests, as HTTP Message Signatures (RFC 9421) with one fixed
//! profile: label `sig1`, Ed25519, covering `@method`, `@authority`,
//! `@path` and `content-digest` (RFC 9530, SHA-256 of the body), with the
//! parameters `created` (Unix seconds), `keyid` (the caller's identity) and
//! `nonce`.
//!
//! ```text
//! Content-Digest:  sha-256=:<base64>:
//! Signature-Input: sig1=("@method" "@authority" "@path" "content-digest");created=1790000000;keyid="dr-heart";nonce="...";alg="ed25519"
//! Signature:       sig1=:<base64 Ed25519 signature of the signature base>:
//! ```
//!
//! `@authority` is the target service's TLS name (the name the client
//! checks the server's certificate against, e.g.
//! `records.asclepios.internal`), not the address dialled: RFC 9421 derives
//! it from the request target, but a service behind a proxy, on another
//! port or at an IP address is still the same service, and two services on
//! one host are not. The verifier puts its own name there, so a request
//! signed for one service does not verify at another.
//!
//! The key is the one in the caller's TLS client certificate, so a signature
//! binds the request to the authenticated identity and can be shown later to
//! a third party (non-repudiation). Verifiers refuse stale or future
//! `created` values and nonces seen before ([`NonceStore`]).

use std::collections::HashMap;
use std::sync::Mutex;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ed25519_dalek::pkcs8::DecodePrivateKey;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::Error;

/// The covered components, in order.
const COMPONENTS: &str = r#"("@method" "@authority" "@path" "content-digest")"#;
/// How far `created` may be from the verifier's clock, in seconds. Short, so
/// the replay guard remembers few nonces (clocks are kept by NTP).
pub const MAX_SKEW_SECS: u64 = 120;
/// Longest nonce accepted.
const MAX_NONCE: usize = 64;

fn sig_err(why: impl Into<String>) -> Error {
    Error::Signature(why.into())
}

/// The `Content-Digest` value of a body.
pub fn content_digest(body: &[u8]) -> String {
    format!("sha-256=:{}:", B64.encode(Sha256::digest(body)))
}

/// The three headers of a signed request (and, for the signer, the hash
/// receipts name it by).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SignedHeaders {
    /// `Content-Digest`.
    pub content_digest: String,
    /// `Signature-Input`.
    pub signature_input: String,
    /// `Signature`.
    pub signature: String,
    /// SHA-256 of the signature base: how receipts name the request (not sent).
    pub request_hash: [u8; 32],
}

fn signature_base(method: &str, authority: &str, path: &str, digest: &str, params: &str) -> String {
    format!(
        "\"@method\": {}\n\"@authority\": {}\n\"@path\": {path}\n\"content-digest\": {digest}\n\"@signature-params\": {params}",
        method.to_ascii_uppercase(),
        authority.to_ascii_lowercase()
    )
}

fn check_token(what: &str, s: &str, max: usize) -> Result<(), Error> {
    if s.is_empty()
        || s.len() > max
        || !s
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
    {
        return Err(sig_err(format!(
            "{what} must be 1 to {max} printable characters without quotes"
        )));
    }
    Ok(())
}

/// Signs requests for one identity.
pub struct RequestSigner {
    key: SigningKey,
    keyid: String,
}

impl std::fmt::Debug for RequestSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestSigner")
            .field("keyid", &self.keyid)
            .finish_non_exhaustive()
    }
}

impl RequestSigner {
    /// A signer from the identity's PKCS#8 PEM key (its TLS client key).
    pub fn from_pem(keyid: &str, key_pem: &str) -> Result<Self, Error> {
        check_token("keyid", keyid, 128)?;
        let key = SigningKey::from_pkcs8_pem(key_pem)
            .map_err(|e| Error::Certificate(format!("an Ed25519 PKCS#8 key was expected: {e}")))?;
        Ok(RequestSigner {
            key,
            keyid: keyid.to_string(),
        })
    }

    /// The public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    /// Signs a request to the service named `authority` (its TLS name),
    /// made at `created` with a fresh `nonce`.
    pub fn sign(
        &self,
        method: &str,
        authority: &str,
        path: &str,
        body: &[u8],
        created: u64,
        nonce: &str,
    ) -> Result<SignedHeaders, Error> {
        check_token("nonce", nonce, MAX_NONCE)?;
        check_token("path", path, 8192)?;
        check_token("authority", authority, 255)?;
        let digest = content_digest(body);
        let params = format!(
            "{COMPONENTS};created={created};keyid=\"{}\";nonce=\"{nonce}\";alg=\"ed25519\"",
            self.keyid
        );
        let base = signature_base(method, authority, path, &digest, &params);
        let sig = self.key.sign(base.as_bytes());
        Ok(SignedHeaders {
            content_digest: digest,
            signature_input: format!("sig1={params}"),
            signature: format!("sig1=:{}:", B64.encode(sig.to_bytes())),
            request_hash: Sha256::digest(base.as_bytes()).into(),
        })
    }
}

/// What a verified signature said.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Verified {
    /// The signer's identity.
    pub keyid: String,
    /// When it was signed (Unix seconds).
    pub created: u64,
    /// Its nonce.
    pub nonce: String,
    /// SHA-256 of the signature base: names the request in receipts and the
    /// audit log.
    pub request_hash: [u8; 32],
    /// The signature (base64), kept for non-repudiation.
    pub signature: String,
}

fn parse_params(input: &str) -> Result<(String, u64, String, String), Error> {
    let params = input
        .strip_prefix("sig1=")
        .ok_or_else(|| sig_err("Signature-Input must hold one signature labelled sig1"))?;
    let rest = params
        .strip_prefix(COMPONENTS)
        .ok_or_else(|| sig_err(format!("the signature must cover exactly {COMPONENTS}")))?;
    let mut fields: HashMap<&str, &str> = HashMap::new();
    for part in rest.split(';').skip(1) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| sig_err(format!("malformed parameter `{part}`")))?;
        if fields.insert(k, v).is_some() {
            return Err(sig_err(format!("parameter `{k}` given twice")));
        }
    }
    if !rest.is_empty() && !rest.starts_with(';') {
        return Err(sig_err("malformed Signature-Input"));
    }
    let quoted = |k: &str| -> Result<String, Error> {
        fields
            .get(k)
            .and_then(|v| v.strip_prefix('"')?.strip_suffix('"'))
            .map(str::to_string)
            .ok_or_else(|| sig_err(format!("parameter `{k}` (a quoted string) is required")))
    };
    if fields.len() != 4 || quoted("alg")? != "ed25519" {
        return Err(sig_err(
            "parameters must be exactly created, keyid, nonce and alg=\"ed25519\"",
        ));
    }
    let created = fields
        .get("created")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| sig_err("parameter `created` (Unix seconds) is required"))?;
    let keyid = quoted("keyid")?;
    let nonce = quoted("nonce")?;
    check_token("keyid", &keyid, 128)?;
    check_token("nonce", &nonce, MAX_NONCE)?;
    Ok((params.to_string(), created, keyid, nonce))
}

/// Verifies a signed request to the service named `authority` (the
/// verifier's own TLS name) against the caller's certificate key, at time
/// `now` (Unix seconds). Does not check replays: see [`NonceStore`].
pub fn verify(
    method: &str,
    authority: &str,
    path: &str,
    body: &[u8],
    headers: &SignedHeaders,
    public_key: &[u8; 32],
    now: u64,
) -> Result<Verified, Error> {
    if headers.content_digest != content_digest(body) {
        return Err(sig_err("Content-Digest does not match the body"));
    }
    let (params, created, keyid, nonce) = parse_params(&headers.signature_input)?;
    if created.abs_diff(now) > MAX_SKEW_SECS {
        return Err(sig_err(format!(
            "signature created at {created}, {} s from the server's clock (at most {MAX_SKEW_SECS} s)",
            created.abs_diff(now)
        )));
    }
    let sig_b64 = headers
        .signature
        .strip_prefix("sig1=:")
        .and_then(|s| s.strip_suffix(':'))
        .ok_or_else(|| sig_err("Signature must be `sig1=:<base64>:`"))?;
    let sig = B64
        .decode(sig_b64)
        .ok()
        .and_then(|b| Signature::from_slice(&b).ok())
        .ok_or_else(|| sig_err("Signature is not a base64 Ed25519 signature"))?;
    let key = VerifyingKey::from_bytes(public_key).map_err(|_| sig_err("bad public key"))?;
    let base = signature_base(method, authority, path, &headers.content_digest, &params);
    key.verify_strict(base.as_bytes(), &sig)
        .map_err(|_| sig_err("the signature does not verify with the caller's certificate key"))?;
    Ok(Verified {
        keyid,
        created,
        nonce,
        request_hash: Sha256::digest(base.as_bytes()).into(),
        signature: sig_b64.to_string(),
    })
}

/// Where a service remembers the nonces it accepted, for as long as their
/// signatures would verify: a captured request cannot be replayed. A
/// deployment keeps them in its store, shared by every replica and kept
/// across restarts; [`ReplayGuard`] keeps them in memory (tests, tools).
pub trait NonceStore: Send + Sync + std::fmt::Debug {
    /// Remembers `(keyid, nonce)` until `expires_at` (Unix seconds); `false`
    /// if it is remembered already (a replay). Blocks.
    fn remember(&self, keyid: &str, nonce: &str, expires_at: u64, now: u64)
        -> Result<bool, String>;
}

/// Until when a nonce of a request signed at `created` must be remembered:
/// after that the signature check refuses the request anyway.
pub fn nonce_expiry(created: u64) -> u64 {
    created.saturating_add(MAX_SKEW_SECS + 1)
}

/// Nonces in process memory: forgotten at a restart and not shared with
/// other replicas, so only for tests and single-process tools. Expired pairs
/// leave in arrival order at every check (no scans). Bounded: when full it
/// refuses new requests rather than forget (fail closed).
#[derive(Debug, Default)]
pub struct ReplayGuard {
    inner: Mutex<Seen>,
}

#[derive(Debug, Default)]
struct Seen {
    keys: std::collections::HashSet<(String, String)>,
    order: std::collections::VecDeque<(u64, (String, String))>,
}

/// Most remembered nonces (a window of `2 * MAX_SKEW_SECS` at 4 000
/// requests per second fits).
const REPLAY_CAPACITY: usize = 1 << 21;

impl ReplayGuard {
    /// An empty guard.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records the request's nonce; an error if it was seen before.
    pub fn check(&self, verified: &Verified, now: u64) -> Result<(), Error> {
        match self.remember(
            &verified.keyid,
            &verified.nonce,
            nonce_expiry(verified.created),
            now,
        ) {
            Ok(true) => Ok(()),
            Ok(false) => Err(sig_err("this request was already received (replay)")),
            Err(e) => Err(sig_err(e)),
        }
    }
}

impl NonceStore for ReplayGuard {
    fn remember(
        &self,
        keyid: &str,
        nonce: &str,
        expires_at: u64,
        now: u64,
    ) -> Result<bool, String> {
        let mut seen = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        // A pair can be forgotten once its `created` is out of the window:
        // the signature check refuses it from then on anyway.
        while let Some((expires, _)) = seen.order.front() {
            if *expires > now {
                break;
            }
            if let Some((_, key)) = seen.order.pop_front() {
                seen.keys.remove(&key);
            }
        }
        let key = (keyid.to_string(), nonce.to_string());
        if seen.keys.contains(&key) {
            return Ok(false);
        }
        if seen.keys.len() >= REPLAY_CAPACITY {
            return Err("too many requests in flight; retry shortly".into());
        }
        seen.keys.insert(key.clone());
        seen.order.push_back((expires_at, key));
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::CertificateAuthority;

    fn signer() -> RequestSigner {
        let ca = CertificateAuthority::generate("t").unwrap();
        let issued = ca.issue_identity("dr-heart").unwrap();
        RequestSigner::from_pem("dr-heart", &issued.key_pem).unwrap()
    }

    #[test]
    fn signed_requests_verify_and_changes_do_not() {
        let s = signer();
        let pk = s.public_key();
        let h = s
            .sign(
                "post",
                "records.example",
                "/v1/records",
                b"{\"a\":1}",
                1000,
                "n1",
            )
            .unwrap();
        let v = verify(
            "POST",
            "records.example",
            "/v1/records",
            b"{\"a\":1}",
            &h,
            &pk,
            1010,
        )
        .unwrap();
        assert_eq!((v.keyid.as_str(), v.created), ("dr-heart", 1000));
        assert!(verify(
            "GET",
            "records.example",
            "/v1/records",
            b"{\"a\":1}",
            &h,
            &pk,
            1010
        )
        .is_err());
        assert!(verify(
            "POST",
            "records.example",
            "/v1/records/x",
            b"{\"a\":1}",
            &h,
            &pk,
            1010
        )
        .is_err());
        assert!(verify(
            "POST",
            "records.example",
            "/v1/records",
            b"{\"a\":2}",
            &h,
            &pk,
            1010
        )
        .is_err());
        assert!(verify(
            "POST",
            "records.example",
            "/v1/records",
            b"{\"a\":1}",
            &h,
            &pk,
            2000
        )
        .is_err());
        let other = signer().public_key();
        assert!(verify(
            "POST",
            "records.example",
            "/v1/records",
            b"{\"a\":1}",
            &h,
            &other,
            1010
        )
        .is_err());
        // Signed for the record service: not valid at the authority.
        assert!(verify(
            "POST",
            "authority.example",
            "/v1/records",
            b"{\"a\":1}",
            &h,
            &pk,
            1010
        )
        .is_err());
        let mut forged = h.clone();
        forged.signature_input = forged
            .signature_input
            .replace("created=1000", "created=1001");
        assert!(verify(
            "POST",
            "records.example",
            "/v1/records",
            b"{\"a\":1}",
            &forged,
            &pk,
            1010
        )
        .is_err());
        for bad in ["", "sig1=(\"@method\");created=1", "sig2=x", "sig1=(\"@method\" \"@path\" \"content-digest\");created=1;created=2;keyid=\"a\";nonce=\"b\";alg=\"ed25519\""] {
            let mut t = h.clone();
            t.signature_input = bad.into();
            assert!(verify("POST", "records.example", "/v1/records", b"{\"a\":1}", &t, &pk, 1010).is_err(), "{bad}");
        }
    }

    #[test]
    fn replays_are_refused() {
        let s = signer();
        let h = s
            .sign("GET", "records.example", "/v1/x", b"", 1000, "once")
            .unwrap();
        let v = verify(
            "GET",
            "records.example",
            "/v1/x",
            b"",
            &h,
            &s.public_key(),
            1000,
        )
        .unwrap();
        let guard = ReplayGuard::new();
        guard.check(&v, 1000).unwrap();
        assert!(guard.check(&v, 1001).is_err());
        // Remembered for as long as the signature itself would be accepted.
        assert!(guard.check(&v, 1000 + MAX_SKEW_SECS).is_err());
        assert!(verify(
            "GET",
            "records.example",
            "/v1/x",
            b"",
            &h,
            &s.public_key(),
            1000 + MAX_SKEW_SECS + 1
        )
        .is_err());
    }
}
