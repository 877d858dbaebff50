//! Administration of the directory of identities: what `asclepios user`
//! does. Identities get a certificate from the deployment CA (written under
//! `identities/`) and attributes in the store. Taking an attribute away bumps
//! its version, so keys issued for the old version stop being renewed.

use std::path::{Path, PathBuf};

use asclepios_net::pki::{self, CertificateAuthority};
use asclepios_store::{Identity, IdentityStatus, Store};

use crate::{read_file, Config, Error};

/// Where the deployment's files are.
#[derive(Clone, Debug)]
pub struct Layout {
    /// The data directory.
    pub dir: PathBuf,
}

impl Layout {
    /// The layout of `dir`.
    pub fn new(dir: &Path) -> Self {
        Layout {
            dir: dir.to_path_buf(),
        }
    }
    /// The CA certificate.
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("pki/ca.pem")
    }
    /// The CA key (a secret).
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("pki/ca.key")
    }
    /// A service's certificate and key.
    pub fn service(&self, name: &str) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("pki/{name}.pem")),
            self.dir.join(format!("pki/{name}.key")),
        )
    }
    /// An identity's certificate and key.
    pub fn identity(&self, id: &str) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("identities/{id}.pem")),
            self.dir.join(format!("identities/{id}.key")),
        )
    }
}

/// What a revocation did.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct Revocation {
    /// Attributes taken away (each now at a new version).
    pub revoked: Vec<String>,
    /// Data-key wrappers re-wrapped so keys from before no longer open them.
    pub rewrapped: usize,
}

/// An identity with its current attributes.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Member {
    /// The directory entry.
    pub identity: Identity,
    /// Its attributes, with the version each was granted at.
    pub attributes: Vec<(String, u64)>,
}

/// The directory of a deployment.
#[derive(Debug)]
pub struct Directory {
    layout: Layout,
    store: Store,
}

fn check_attribute(a: &str) -> Result<(), Error> {
    let ok = !a.is_empty()
        && a.len() <= 256
        && a.contains(':')
        && a.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'-' | b'_' | b'.'));
    if !ok {
        return Err(Error::Invalid(format!(
            "attribute `{a}`: write it as namespace:value with letters, digits, '-', '_', '.' (e.g. role:doctor)"
        )));
    }
    Ok(())
}

impl Directory {
    /// Opens the directory of the deployment in `dir`.
    pub fn open(dir: &Path) -> Result<Self, Error> {
        let config = Config::load(dir)?;
        let store = config.open_authority_store(dir)?;
        Ok(Directory {
            layout: Layout::new(dir),
            store,
        })
    }

    /// Opens it over an already opened store.
    pub fn with_store(dir: &Path, store: Store) -> Self {
        Directory {
            layout: Layout::new(dir),
            store,
        }
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    fn ca(&self) -> Result<CertificateAuthority, Error> {
        let cert = read_file(&self.layout.ca_cert())?;
        let key = zeroize::Zeroizing::new(read_file(&self.layout.ca_key())?);
        Ok(CertificateAuthority::from_pem(&cert, &key)?)
    }

    /// Adds an identity: a certificate and key under `identities/`, an entry
    /// in the directory, its attributes.
    pub fn add(
        &self,
        id: &str,
        kind: &str,
        display_name: &str,
        attributes: &[String],
    ) -> Result<Member, Error> {
        pki::check_identity_id(id)?;
        for a in attributes {
            check_attribute(a)?;
        }
        if self.store.identity(id)?.is_some() {
            return Err(Error::Invalid(format!(
                "identity `{id}` exists; use `asclepios user set-attrs`"
            )));
        }
        let issued = self.ca()?.issue_identity(id)?;
        let (cert_path, key_path) = self.layout.identity(id);
        if let Some(parent) = cert_path.parent() {
            crate::create_private_dir(parent)?;
        }
        crate::write_new_file(&key_path, &issued.key_pem, true)?;
        crate::write_new_file(&cert_path, &issued.cert_pem, false)?;
        let der = asclepios_net::tls::certs_from_pem(&issued.cert_pem)?;
        let peer = pki::peer_identity(&der[0])?;
        self.store.put_identity(&Identity {
            id: id.into(),
            kind: kind.into(),
            display_name: display_name.into(),
            public_key: Some(peer.public_key.to_vec()),
            status: IdentityStatus::Active,
        })?;
        for a in attributes {
            self.store.grant_attribute(id, a)?;
        }
        self.member(id)
    }

    /// Makes `id` a reader of the audit log: an HPKE key pair whose secret
    /// goes to `identities/<id>.audit.key` and whose public key the directory
    /// keeps. Events are sealed to it while the identity is active and holds
    /// `role:auditor`; disabling it or taking the role away stops that for
    /// every later event.
    pub fn make_auditor(&self, id: &str) -> Result<(), Error> {
        self.member(id)?;
        let public = crate::keys::create_auditor_key(&self.layout.dir, id)?;
        self.store.put_auditor_key(id, &public.to_bytes())?;
        Ok(())
    }

    /// One identity with its attributes.
    pub fn member(&self, id: &str) -> Result<Member, Error> {
        let identity = self.store.identity(id)?.ok_or_else(|| {
            Error::Invalid(format!(
                "no identity `{id}`; `asclepios user list` shows them"
            ))
        })?;
        let attributes = self
            .store
            .identity_attributes(id)?
            .into_iter()
            .map(|g| (g.attribute, g.granted_version))
            .collect();
        Ok(Member {
            identity,
            attributes,
        })
    }

    /// Every identity.
    pub fn list(&self) -> Result<Vec<Member>, Error> {
        self.store
            .identities()?
            .into_iter()
            .map(|i| self.member(&i.id))
            .collect()
    }

    /// Re-wraps the records that name revoked attributes (the authority's
    /// job, done here with its master key from the data directory).
    fn rewrap(&self, revoked: Vec<String>) -> Result<Revocation, Error> {
        if revoked.is_empty() {
            return Ok(Revocation::default());
        }
        let master = crate::keys::abe_master_key(&self.layout.dir)?;
        let rewrapped =
            asclepios_authority::rewrap_after_revocation(&self.store, &master, &revoked)
                .map_err(|e| Error::Invalid(format!("re-wrapping after the revocation: {e}")))?;
        Ok(Revocation { revoked, rewrapped })
    }

    /// Sets an identity's attributes to exactly `attributes`. Attributes
    /// taken away are revoked: their versions bump and every record whose
    /// policy names them is re-wrapped.
    pub fn set_attributes(&self, id: &str, attributes: &[String]) -> Result<Revocation, Error> {
        for a in attributes {
            check_attribute(a)?;
        }
        let current = self.member(id)?;
        if current.identity.status == IdentityStatus::Revoked {
            return Err(Error::Invalid(format!("identity `{id}` is disabled")));
        }
        let mut removed = Vec::new();
        for (a, _) in &current.attributes {
            if !attributes.contains(a) {
                self.store.revoke_attribute(id, a)?;
                removed.push(a.clone());
            }
        }
        for a in attributes {
            if !current.attributes.iter().any(|(have, _)| have == a) {
                self.store.grant_attribute(id, a)?;
            }
        }
        self.rewrap(removed)
    }

    /// Disables an identity: refused everywhere, every attribute revoked
    /// (each bumped to a new version, the records naming them re-wrapped).
    pub fn disable(&self, id: &str) -> Result<Revocation, Error> {
        let current = self.member(id)?;
        // Refused everywhere first; then the attributes, then the re-wrap.
        let mut identity = current.identity;
        identity.status = IdentityStatus::Revoked;
        self.store.put_identity(&identity)?;
        let mut revoked = Vec::new();
        for (a, _) in &current.attributes {
            self.store.revoke_attribute(id, a)?;
            revoked.push(a.clone());
        }
        self.rewrap(revoked)
    }
}
