//! The two trust domains apart: the key authority serves from its data
//! directory (everything `init` writes), the record service from a
//! directory of its own that holds only what it needs:
//!
//! ```text
//! asclepios.toml               its configuration (its own store: SQLite in this
//!                              directory, or its own PostgreSQL schema)
//! pki/ca.pem                   the deployment root (public)
//! pki/records.pem, .key        its TLS certificate and key
//! pki/authority.pem            the authority's issuer certificate: whose key signs
//!                              the directory facts (public)
//! pki/audit-log.key, .pub      the signing key of its own audit log
//! identities/svc-records.*     its client identity towards the authority
//! authority/abe-public.key     the ABE public key audit events are sealed under
//! pki/witness.pub              the authority's witness, which cosigns its log
//! ```
//!
//! No master secret, search or statistics key, sealing key, issuer key,
//! integrity key or other identity's private key: whoever runs the record
//! service's host has nothing that opens a record or speaks for the
//! authority. The authority keeps its own log; the record service's log
//! verifier is copied to the authority's directory
//! (`pki/records-log.pub`) for clients.

use std::path::Path;

use asclepios_audit::NoteSigner;

use crate::directory::Layout;
use crate::init::RECORD_SERVICE_IDENTITY;
use crate::{create_private_dir, read_file, write_new_file, Config, Error};

pub use asclepios_api::layout::RECORDS_LOG_VERIFIER;

/// Writes the record service's own data directory `records_dir` from the
/// deployment `authority_dir` that `init` wrote. The record service's
/// client identity moves there (its private key leaves the authority's
/// directory). Refuses a `records_dir` that holds a deployment already.
pub fn write_records_dir(authority_dir: &Path, records_dir: &Path) -> Result<(), Error> {
    let config = Config::load(authority_dir)?;
    let from = Layout::new(authority_dir);
    let to = Layout::new(records_dir);
    if records_dir.join(crate::config::CONFIG_FILE).exists() {
        return Err(Error::Invalid(format!(
            "{} already holds a deployment; choose another --records-dir or remove it",
            records_dir.display()
        )));
    }
    let mut own = config.clone();
    let postgres = !own.store.url.starts_with("sqlite://");
    // Its own store: a SQLite file in its directory, or its own schema (a
    // fresh one if none is named, so that deployments sharing a server
    // never collide on the role's name).
    own.store.schema = own
        .store
        .schema
        .as_ref()
        .map(|s| format!("{s}_records"))
        .or_else(|| postgres.then(|| format!("asclepios_records_{}", *random_hex(4))));
    own.seal = Default::default();
    if let Some(schema) = own.store.schema.clone().filter(|_| postgres) {
        // Its own PostgreSQL role, owning its own schema and granted
        // nothing else: its credentials open none of the authority's
        // tables. (The authority keeps the administrator's URL.)
        let password = random_hex(16);
        asclepios_store::create_postgres_service_role(
            &config.store_location(authority_dir),
            &schema,
            &schema,
            &password,
        )?;
        own.store.url = with_credentials(&own.store.url, &schema, &password)?;
    }
    // Written only once its store exists: a refused role leaves no
    // half-made directory.
    create_private_dir(records_dir)?;
    for sub in ["pki", "identities", "authority"] {
        create_private_dir(&records_dir.join(sub))?;
    }
    own.audit.origin = format!("{}/records", config.audit.origin);
    let copy = |src: &Path, dst: &Path, secret: bool| -> Result<(), Error> {
        write_new_file(dst, &read_file(src)?, secret)
    };
    copy(&from.ca_cert(), &to.ca_cert(), false)?;
    let (cert, key) = from.service("records");
    let (to_cert, to_key) = to.service("records");
    copy(&cert, &to_cert, false)?;
    copy(&key, &to_key, true)?;
    copy(
        &from.service("authority").0,
        &to.service("authority").0,
        false,
    )?;
    copy(
        &authority_dir.join(crate::keys::WITNESS_VERIFIER),
        &records_dir.join(crate::keys::WITNESS_VERIFIER),
        false,
    )?;
    copy(
        &authority_dir.join("authority/abe-public.key"),
        &records_dir.join("authority/abe-public.key"),
        false,
    )?;
    let (id_cert, id_key) = from.identity(RECORD_SERVICE_IDENTITY);
    let (to_id_cert, to_id_key) = to.identity(RECORD_SERVICE_IDENTITY);
    copy(&id_cert, &to_id_cert, false)?;
    copy(&id_key, &to_id_key, true)?;
    let signer = NoteSigner::generate(&own.audit.origin)?;
    write_new_file(
        &records_dir.join("pki/audit-log.key"),
        &signer.to_secret_string(),
        true,
    )?;
    let verifier = format!("{}\n", signer.verifier());
    write_new_file(&records_dir.join("pki/audit-log.pub"), &verifier, false)?;
    write_new_file(&authority_dir.join(RECORDS_LOG_VERIFIER), &verifier, false)?;
    write_new_file(
        &records_dir.join(crate::config::CONFIG_FILE),
        &own.to_toml()?,
        true,
    )?;
    // Only the record service holds its identity's key from now on.
    std::fs::remove_file(&id_key)
        .map_err(|e| Error::Io(format!("cannot remove {}: {e}", id_key.display())))?;
    Ok(())
}

/// `bytes` random bytes, in hex.
fn random_hex(bytes: usize) -> zeroize::Zeroizing<String> {
    let mut raw = zeroize::Zeroizing::new(vec![0u8; bytes]);
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut raw);
    zeroize::Zeroizing::new(hex::encode(&*raw))
}

/// `url` logging in as `user` with `password` instead of its own
/// credentials.
fn with_credentials(url: &str, user: &str, password: &str) -> Result<String, Error> {
    let start = url.find("://").map(|i| i + 3).ok_or_else(|| {
        Error::Invalid(format!(
            "{}: not a postgres:// URL",
            asclepios_store::redact_url(url)
        ))
    })?;
    let end = url[start..]
        .find(['/', '?'])
        .map_or(url.len(), |i| start + i);
    let host = match url[start..end].rfind('@') {
        Some(at) => start + at + 1,
        None => start,
    };
    Ok(format!(
        "{}{user}:{password}@{}",
        &url[..start],
        &url[host..]
    ))
}

#[cfg(test)]
mod tests {
    use super::with_credentials;

    #[test]
    fn credentials_replace_the_administrators() {
        assert_eq!(
            with_credentials("postgres://postgres@127.0.0.1:5432/test", "r", "p").unwrap(),
            "postgres://r:p@127.0.0.1:5432/test"
        );
        assert_eq!(
            with_credentials("postgresql://a:b@db/x?sslmode=disable", "r", "p").unwrap(),
            "postgresql://r:p@db/x?sslmode=disable"
        );
        assert_eq!(
            with_credentials("postgres://db:5432/x", "r", "p").unwrap(),
            "postgres://r:p@db:5432/x"
        );
        assert!(with_credentials("db:5432", "r", "p").is_err());
    }
}
