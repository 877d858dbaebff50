//! The deployment's files, and the directory's bootstrap. Identities get a
//! certificate from the deployment CA (written under `identities/`, the
//! CA's key staying with whoever administers the deployment); their entries
//! and attributes are the key authority's, written by its own code
//! ([`asclepios_authority::admin`]): here while `init` bootstraps the
//! deployment (and in tests), over the authority's API (`asclepios user`,
//! as an identity with `role:admin`) once it runs.

use std::path::Path;

use asclepios_authority::admin;
pub use asclepios_authority::admin::{Member, Revocation};
use asclepios_net::pki::{self, CertificateAuthority};
use asclepios_store::Store;

use crate::{read_file, Config, Error};

pub use asclepios_api::layout::Layout;

/// The directory of a deployment, administered in-process with the
/// authority's key (bootstrap and tests; a running deployment is
/// administered through the authority's API).
#[derive(Debug)]
pub struct Directory {
    layout: Layout,
    store: Store,
}

fn api(e: asclepios_net::server::ApiError) -> Error {
    Error::Invalid(e.message)
}

/// Issues `id` a client certificate from the deployment CA and writes it
/// with its key under `identities/` (new files, the key 0600). Returns the
/// certificate's Ed25519 public key, which the directory must vouch for.
pub fn issue_identity_files(dir: &Path, id: &str) -> Result<[u8; 32], Error> {
    pki::check_identity_id(id)?;
    let layout = Layout::new(dir);
    let cert = read_file(&layout.ca_cert())?;
    let key = zeroize::Zeroizing::new(read_file(&layout.ca_key())?);
    let ca = CertificateAuthority::from_pem(&cert, &key)?;
    let issued = ca.issue_identity(id)?;
    let (cert_path, key_path) = layout.identity(id);
    if let Some(parent) = cert_path.parent() {
        crate::create_private_dir(parent)?;
    }
    crate::write_new_file(&key_path, &issued.key_pem, true)?;
    crate::write_new_file(&cert_path, &issued.cert_pem, false)?;
    let der = asclepios_net::tls::certs_from_pem(&issued.cert_pem)?;
    Ok(pki::peer_identity(&der[0])?.public_key)
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

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The record service's data as offline administration reaches it: the
    /// same store (a development deployment, both services on one store).
    fn records(&self) -> asclepios_authority::record_access::LocalRecords {
        asclepios_authority::record_access::LocalRecords(self.store.clone())
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
        for a in attributes {
            admin::check_attribute(a).map_err(api)?;
        }
        if self.store.identity(id)?.is_some() {
            return Err(Error::Invalid(format!(
                "identity `{id}` exists; use `asclepios user set-attrs`"
            )));
        }
        let public_key = issue_identity_files(&self.layout.dir, id)?;
        admin::register(
            &self.store,
            &admin::Registration {
                id: id.into(),
                kind: kind.into(),
                display_name: display_name.into(),
                public_key: hex::encode(public_key),
                attributes: attributes.to_vec(),
            },
        )
        .map_err(api)
    }

    /// Makes `id` a reader of the audit log: an HPKE key pair whose secret
    /// goes to `identities/<id>.audit.key` and whose public key the directory
    /// keeps. Events are sealed to it while the identity is active and holds
    /// `role:auditor`; disabling it or taking the role away stops that for
    /// every later event.
    pub fn make_auditor(&self, id: &str) -> Result<(), Error> {
        self.member(id)?;
        let public = crate::keys::create_auditor_key(&self.layout.dir, id)?;
        admin::set_auditor_key(&self.store, id, &public.to_bytes()).map_err(api)
    }

    /// One identity with its attributes.
    pub fn member(&self, id: &str) -> Result<Member, Error> {
        admin::member(&self.store, id).map_err(api)
    }

    /// Every identity.
    pub fn list(&self) -> Result<Vec<Member>, Error> {
        admin::members(&self.store).map_err(api)
    }

    /// Sets an identity's attributes to exactly `attributes`. Attributes
    /// taken away are revoked: their versions bump and every record whose
    /// policy names them is re-wrapped.
    pub fn set_attributes(&self, id: &str, attributes: &[String]) -> Result<Revocation, Error> {
        let master = crate::keys::abe_master_key(&self.layout.dir)?;
        admin::set_attributes(&self.store, &self.records(), &master, id, attributes).map_err(api)
    }

    /// Disables an identity: refused everywhere, every attribute revoked
    /// (each bumped to a new version, the records naming them re-wrapped).
    pub fn disable(&self, id: &str) -> Result<Revocation, Error> {
        let master = crate::keys::abe_master_key(&self.layout.dir)?;
        admin::disable(&self.store, &self.records(), &master, id).map_err(api)
    }
}
