//! The deployment's service keys, made by `init` and loaded by the services:
//!
//! ```text
//! authority/abe-public.key     FAME master public key (shared with every client)
//! authority/abe-master.sealed  FAME master secret key, sealed (XChaCha20-Poly1305)
//! authority/sse-master.sealed  the search index's Mitra key, sealed likewise
//! authority/stats-master.sealed the key sealing statistics slot keys at rest
//! authority/integrity.sealed   the key authenticating the authority's rows
//! authority/naming.sealed      the secret patients' record-naming keys derive from
//! <seal key file>              the sealing key: outside the data directory
//!                              (`[seal] key_file`, by default `<dir>.seal.key`
//!                              beside it), so a copy of the directory or of
//!                              a backup of it opens none of the sealed secrets;
//!                              in a TEE it comes from sealing to the measurement
//! <seal key file>.anchor       beside it: the latest change of the authority's
//!                              state seen (`.anchor` instead of `.key`)
//! pki/audit-log.key, .pub      the audit log's checkpoint signer (C2SP note key)
//! pki/witness.key, .pub        the authority's witness's cosigning key (C2SP
//!                              cosignature/v1); its state in witness/
//! identities/<id>.audit.key    an auditor's HPKE secret key (the public key is in
//!                              the directory: `user add --auditor`)
//! ```

use std::path::Path;

use asclepios_audit::{
    AuditorPublicKey, AuditorSecretKey, CosignatureVerifier, Cosigner, NoteSigner, NoteVerifier,
};
use asclepios_crypto::abe::{self, MasterSecretKey, PublicKey};
use asclepios_crypto::sse::SseKey;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand_core::{OsRng, RngCore};
use zeroize::Zeroizing;

use crate::{read_file, write_new_file, Error};

const SEAL_AAD: &[u8] = b"asclepios abe master secret v1";
const SSE_SEAL_AAD: &[u8] = b"asclepios sse master secret v1";
const SSE_SEALED: &str = "authority/sse-master.sealed";
const STATS_SEAL_AAD: &[u8] = b"asclepios stats master secret v1";
const STATS_SEALED: &str = "authority/stats-master.sealed";
const INTEGRITY_SEAL_AAD: &[u8] = b"asclepios integrity key v1";
const INTEGRITY_SEALED: &str = "authority/integrity.sealed";
const NAMING_SEAL_AAD: &[u8] = b"asclepios record naming secret v1";
const NAMING_SEALED: &str = "authority/naming.sealed";

fn write_new_bytes(path: &Path, bytes: &[u8], secret: bool) -> Result<(), Error> {
    write_new_file(path, &hex::encode(bytes), secret)
}

fn read_hex(path: &Path) -> Result<Zeroizing<Vec<u8>>, Error> {
    let text = Zeroizing::new(read_file(path)?);
    hex::decode(text.trim())
        .map(Zeroizing::new)
        .map_err(|_| Error::Io(format!("{} is not hex", path.display())))
}

/// Makes the service keys of a new deployment (the sealing key in the file
/// `config` names, which must not exist yet).
pub fn create(dir: &Path, config: &crate::Config) -> Result<(), Error> {
    let origin = &config.audit.origin;
    crate::create_private_dir(&dir.join("authority"))?;
    let (mpk, msk) = abe::setup(&mut OsRng);
    write_new_bytes(
        &dir.join("authority/abe-public.key"),
        &mpk.to_bytes(),
        false,
    )?;
    let mut seal_key = Zeroizing::new([0u8; 32]);
    OsRng.fill_bytes(seal_key.as_mut());
    let seal_path = config.seal_key_file(dir)?;
    write_new_bytes(&seal_path, seal_key.as_ref(), true).map_err(|e| {
        Error::Invalid(format!(
            "{e}; the sealing key of this data directory goes to {} (outside it), which must not exist yet: \
             move an old one away, or set [seal] key_file",
            seal_path.display()
        ))
    })?;
    seal_secret(
        dir,
        "authority/abe-master.sealed",
        SEAL_AAD,
        &msk.to_bytes(),
    )?;
    sse_key(dir)?;
    stats_key(dir)?;
    integrity_key(dir)?;
    naming_secret(dir)?;
    let signer = NoteSigner::generate(origin)?;
    write_new_file(
        &dir.join("pki/audit-log.key"),
        &signer.to_secret_string(),
        true,
    )?;
    write_new_file(
        &dir.join("pki/audit-log.pub"),
        &format!("{}\n", signer.verifier()),
        false,
    )?;
    witness_cosigner(dir, origin)?;
    Ok(())
}

/// The authority's witness's secret key file.
pub const WITNESS_KEY: &str = "pki/witness.key";
/// The authority's witness's public key (C2SP vkey, type 0x04), for clients
/// and for the record service.
pub use asclepios_api::layout::WITNESS_VERIFIER;

/// The authority's witness's cosigning key, made on first use (directories
/// made before witnessing existed get one at their first start) and named
/// `<origin>/witness`.
pub fn witness_cosigner(dir: &Path, origin: &str) -> Result<Cosigner, Error> {
    let path = dir.join(WITNESS_KEY);
    if !path.exists() {
        let cosigner = Cosigner::generate(&format!("{origin}/witness"))?;
        write_new_file(&path, &cosigner.to_secret_string(), true)?;
        write_new_file(
            &dir.join(WITNESS_VERIFIER),
            &format!("{}\n", cosigner.verifier()),
            false,
        )?;
    }
    let text = Zeroizing::new(read_file(&path)?);
    Ok(Cosigner::parse(&text)?)
}

/// The authority's witness's public key.
pub fn witness_verifier(dir: &Path) -> Result<CosignatureVerifier, Error> {
    Ok(CosignatureVerifier::parse(&read_file(
        &dir.join(WITNESS_VERIFIER),
    )?)?)
}

/// Makes an auditor's HPKE key pair: the secret goes to
/// `identities/<id>.audit.key` (a new file, 0600), the public key is
/// returned for the directory, which seals every later event to it while
/// the identity is active and holds the auditor role.
pub fn create_auditor_key(dir: &Path, id: &str) -> Result<AuditorPublicKey, Error> {
    let (sk, pk) = AuditorSecretKey::generate(&mut OsRng);
    write_new_bytes(
        &dir.join(format!("identities/{id}.audit.key")),
        sk.to_bytes().as_ref(),
        true,
    )?;
    Ok(pk)
}

/// The FAME master public key.
pub fn abe_public_key(dir: &Path) -> Result<PublicKey, Error> {
    let bytes = read_hex(&dir.join("authority/abe-public.key"))?;
    PublicKey::from_bytes(&bytes).map_err(|e| Error::Invalid(format!("abe-public.key: {e}")))
}

/// The sealing key, from the file the configuration names (outside the
/// data directory).
fn seal_key(dir: &Path) -> Result<Zeroizing<Vec<u8>>, Error> {
    let path = crate::Config::load(dir)?.seal_key_file(dir)?;
    if !path.exists() {
        return Err(Error::Invalid(format!(
            "the authority's sealing key {} is missing: it is kept outside the data directory \
             ([seal] key_file in the configuration); restore it, or point key_file at it",
            path.display()
        )));
    }
    let key = read_hex(&path)?;
    if key.len() != 32 {
        return Err(Error::Invalid(format!("{} is damaged", path.display())));
    }
    Ok(key)
}

/// Seals `secret` under the sealing key into `name`.
fn seal_secret(dir: &Path, name: &str, aad: &[u8], secret: &[u8]) -> Result<(), Error> {
    let key = seal_key(dir)?;
    let mut nonce = [0u8; 24];
    OsRng.fill_bytes(&mut nonce);
    let sealed = XChaCha20Poly1305::new(key.as_slice().into())
        .encrypt(XNonce::from_slice(&nonce), Payload { msg: secret, aad })
        .map_err(|_| Error::Invalid(format!("sealing {name} failed")))?;
    // Sealed secrets are made once: a file planted at the name is refused.
    write_new_bytes(&dir.join(name), &[nonce.as_slice(), &sealed].concat(), true)
}

/// Unseals what [`seal_secret`] wrote to `name`.
fn unseal_secret(dir: &Path, name: &str, aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, Error> {
    let key = seal_key(dir)?;
    let sealed = read_hex(&dir.join(name))?;
    if sealed.len() < 24 {
        return Err(Error::Invalid(format!(
            "{name} or its sealing key is damaged"
        )));
    }
    XChaCha20Poly1305::new(key.as_slice().into())
        .decrypt(
            XNonce::from_slice(&sealed[..24]),
            Payload {
                msg: &sealed[24..],
                aad,
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| {
            Error::Invalid(format!(
                "{name} does not unseal with the configured sealing key"
            ))
        })
}

/// Unseals the FAME master secret key (the authority only).
pub fn abe_master_key(dir: &Path) -> Result<MasterSecretKey, Error> {
    let plain = unseal_secret(dir, "authority/abe-master.sealed", SEAL_AAD)?;
    MasterSecretKey::from_bytes(&plain).map_err(|e| Error::Invalid(format!("master secret: {e}")))
}

/// A 32-byte authority secret sealed in `name`, made on first use (a data
/// directory from before the feature gets one then, and starts empty).
fn secret_32(dir: &Path, name: &str, aad: &[u8]) -> Result<Zeroizing<[u8; 32]>, Error> {
    if !dir.join(name).exists() {
        let mut fresh = Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(fresh.as_mut());
        seal_secret(dir, name, aad, fresh.as_ref())?;
    }
    let plain = unseal_secret(dir, name, aad)?;
    let bytes: [u8; 32] = plain
        .as_slice()
        .try_into()
        .map_err(|_| Error::Invalid(format!("{name} holds no 32-byte key")))?;
    Ok(Zeroizing::new(bytes))
}

/// Unseals the search index's key (the authority only).
pub fn sse_key(dir: &Path) -> Result<SseKey, Error> {
    Ok(SseKey::from_bytes(*secret_32(
        dir,
        SSE_SEALED,
        SSE_SEAL_AAD,
    )?))
}

/// Unseals the key the authority seals statistics slot keys with at rest.
pub fn stats_key(dir: &Path) -> Result<Zeroizing<[u8; 32]>, Error> {
    secret_32(dir, STATS_SEALED, STATS_SEAL_AAD)
}

/// Unseals the secret patients' record-naming keys derive from (the
/// authority only; made on first use in a deployment from before it).
pub fn naming_secret(dir: &Path) -> Result<asclepios_crypto::naming::NamingSecret, Error> {
    Ok(asclepios_crypto::naming::NamingSecret::from_bytes(
        *secret_32(dir, NAMING_SEALED, NAMING_SEAL_AAD)?,
    ))
}

/// Unseals the key that authenticates the authority's state in its store.
pub fn integrity_key(dir: &Path) -> Result<asclepios_store::IntegrityKey, Error> {
    Ok(asclepios_store::IntegrityKey::from_bytes(
        secret_32(dir, INTEGRITY_SEALED, INTEGRITY_SEAL_AAD)?.as_ref(),
    )?)
}

/// The audit log's checkpoint signer.
pub fn log_signer(dir: &Path) -> Result<NoteSigner, Error> {
    let text = Zeroizing::new(read_file(&dir.join("pki/audit-log.key"))?);
    Ok(NoteSigner::parse(&text)?)
}

/// The audit log's checkpoint verifier key.
pub fn log_verifier(dir: &Path) -> Result<NoteVerifier, Error> {
    Ok(NoteVerifier::parse(&read_file(
        &dir.join("pki/audit-log.pub"),
    )?)?)
}

/// The auditors the directory in `store` seals events to now (see
/// [`asclepios_store::Store::auditor_keys`]).
pub fn current_auditors(store: &asclepios_store::Store) -> Result<Vec<AuditorPublicKey>, String> {
    store
        .auditor_keys(asclepios_records::AUDITOR_ROLE)
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|(id, key)| {
            AuditorPublicKey::from_bytes(&key)
                .map_err(|e| format!("the directory's sealing key of auditor `{id}`: {e}"))
        })
        .collect()
}

/// An auditor's secret key.
pub fn auditor_secret(dir: &Path, id: &str) -> Result<AuditorSecretKey, Error> {
    let bytes = read_hex(&dir.join(format!("identities/{id}.audit.key")))?;
    Ok(AuditorSecretKey::from_bytes(&bytes)
        .map_err(|e| Error::Invalid(e.to_string()))?
        .0)
}
