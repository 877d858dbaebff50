//! `asclepios init`: a working development deployment in a data directory.
//!
//! ```text
//! asclepios.toml            the configuration (every option at its default)
//! pki/ca.pem, ca.key        the deployment CA (the key is a secret: keep it offline in production)
//! pki/authority.pem, .key   the key authority's issuer: a CA certificate constrained to its
//!                           names, from which it mints its attested TLS certificates
//! pki/records.pem, .key     the record service's TLS certificate
//! identities/<id>.pem, .key each sample identity's client certificate and key
//! asclepios.db              the SQLite store with the directory
//! authority/, pki/audit-log.*  service keys (see [`crate::keys`])
//! pki/attestation-dev.key   the insecure-software attestation signer (development)
//! attestation-policy.toml   reference values for the authority (development: insecure-software)
//! component-policy.toml     reference values for components (likewise)
//! ```

use std::path::Path;

use asclepios_net::pki::CertificateAuthority;

use crate::config::CONFIG_FILE;
use crate::directory::{Directory, Layout, Member};
use crate::{create_private_dir, write_new_file, Config, Error};

/// The identity the record service speaks to the key authority as.
pub const RECORD_SERVICE_IDENTITY: &str = "svc-records";

/// The identity the key authority speaks to the record service as.
pub const AUTHORITY_SERVICE_IDENTITY: &str = "svc-authority";

/// The services that get TLS certificates.
pub const SERVICES: [&str; 2] = ["authority", "records"];

/// One identity of the sample organisation.
#[derive(Clone, Copy, Debug)]
pub struct SampleIdentity {
    /// Identity id (a pseudonym for patients).
    pub id: &'static str,
    /// What it is.
    pub kind: &'static str,
    /// Its name.
    pub display_name: &'static str,
    /// Its attributes.
    pub attributes: &'static [&'static str],
}

/// The sample organisation: a small hospital's people, a lab, and two
/// patients whose pseudonyms match the synthetic data generator's.
pub const SAMPLE_ORGANISATION: &[SampleIdentity] = &[
    SampleIdentity {
        id: "dr-heart",
        kind: "clinician",
        display_name: "Dr. Ada Heart, cardiologist",
        attributes: &["role:doctor", "dept:cardiology", "care-team:pat-00000"],
    },
    SampleIdentity {
        id: "nurse-ward",
        kind: "clinician",
        display_name: "Nurse Ben Ward, cardiology ward",
        attributes: &["role:nurse", "dept:cardiology", "care-team:pat-00000"],
    },
    SampleIdentity {
        id: "dr-er",
        kind: "clinician",
        display_name: "Dr. Cy Rush, emergency physician",
        attributes: &["role:doctor", "role:emergency", "dept:emergency"],
    },
    SampleIdentity {
        id: "lab-central",
        kind: "device",
        display_name: "Central laboratory analyser",
        attributes: &["role:lab"],
    },
    SampleIdentity {
        id: "auditor-ann",
        kind: "auditor",
        display_name: "Ann Lee, privacy officer",
        attributes: &["role:auditor"],
    },
    SampleIdentity {
        id: "admin-ada",
        kind: "admin",
        display_name: "Ada Park, directory administrator",
        attributes: &["role:admin"],
    },
    SampleIdentity {
        id: "researcher-rita",
        kind: "researcher",
        display_name: "Rita Stat, epidemiologist",
        attributes: &["role:researcher"],
    },
    SampleIdentity {
        id: "pat-00000",
        kind: "patient",
        display_name: "patient pat-00000",
        attributes: &["patient:pat-00000"],
    },
    SampleIdentity {
        id: "pat-00001",
        kind: "patient",
        display_name: "patient pat-00001",
        attributes: &["patient:pat-00001"],
    },
];

/// Writes a development deployment into `dir` (created if needed). Refuses
/// a directory that already holds one.
pub fn init(dir: &Path, config: &Config) -> Result<Vec<Member>, Error> {
    config.check().map_err(Error::Config)?;
    let config_path = dir.join(CONFIG_FILE);
    if config_path.exists() {
        return Err(Error::Invalid(format!(
            "{} already holds a deployment; choose another --dir or remove it",
            dir.display()
        )));
    }
    // Every directory private and no symbolic link; every file new (a file
    // planted beforehand, or a link to one, is refused, not written into),
    // the SQLite store included: a descriptor opened on a planted file
    // before `init` would read everything written into it.
    // The sealing key goes outside the directory, to a file of its own:
    // refuse before writing anything if that cannot be.
    let seal = config.seal_key_file(dir)?;
    if std::fs::symlink_metadata(&seal).is_ok() {
        return Err(Error::Invalid(format!(
            "{} exists already: it is the sealing key of another deployment; move it away or set [seal] key_file",
            seal.display()
        )));
    }
    if let Some(parent) = seal.parent() {
        std::fs::create_dir_all(parent).map_err(|e| {
            Error::Io(format!(
                "cannot make the directory for the sealing key {}: {e}",
                seal.display()
            ))
        })?;
    }
    create_private_dir(dir)?;
    let store = config.store_location(dir);
    if !store.starts_with("postgres") && std::fs::symlink_metadata(&store).is_ok() {
        return Err(Error::Invalid(format!(
            "{store} exists already; refusing to make a store there (remove it, or choose a fresh directory)"
        )));
    }
    for sub in ["pki", "identities", "authority"] {
        create_private_dir(&dir.join(sub))?;
    }
    let layout = Layout::new(dir);
    let ca = CertificateAuthority::generate(&format!("{} deployment CA", config.name))?;
    write_new_file(&layout.ca_key(), &ca.key_pem(), true)?;
    write_new_file(&layout.ca_cert(), &ca.cert_pem(), false)?;
    for service in SERVICES {
        let common_name = format!("asclepios {service}");
        let issued = if service == "authority" {
            // The authority issues its own short-lived, attested TLS
            // certificates; it gets a CA certificate limited to its names.
            ca.issue_service_issuer(&common_name, &config.authority.certificate_names())?
        } else {
            ca.issue_server(&common_name, &config.records.certificate_names())?
        };
        let (cert, key) = layout.service(service);
        write_new_file(&key, &issued.key_pem, true)?;
        write_new_file(&cert, &issued.cert_pem, false)?;
    }
    // 0600: a PostgreSQL URL in it may carry a password. Written before the
    // keys: sealing reads where the sealing key lives from it.
    write_new_file(&config_path, &config.to_toml()?, true)?;
    crate::keys::create(dir, config)?;
    crate::attestation::create_development_key(dir)?;
    crate::attestation::write_development_policies(dir)?;
    let directory = Directory::open(dir)?;
    // The record service's own identity: how it asks the authority for the
    // directory facts (a client certificate from the root, a key the
    // directory vouches for, kind `service`, no attribute).
    directory.add(
        RECORD_SERVICE_IDENTITY,
        asclepios_authority::facts::SERVICE_KIND,
        "asclepios record service",
        &[],
    )?;
    // And the authority's, for what it asks of the record service when the
    // two run apart (re-wraps, the encrypted index).
    directory.add(
        AUTHORITY_SERVICE_IDENTITY,
        asclepios_authority::facts::SERVICE_KIND,
        "asclepios key authority",
        &[],
    )?;
    SAMPLE_ORGANISATION
        .iter()
        .map(|s| {
            let attrs: Vec<String> = s.attributes.iter().map(|a| a.to_string()).collect();
            let member = directory.add(s.id, s.kind, s.display_name, &attrs)?;
            if s.kind == "auditor" {
                directory.make_auditor(s.id)?;
            }
            Ok(member)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file under `dir`, recursively.
    fn files(dir: &Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                out.extend(files(&path));
            } else {
                out.push(path);
            }
        }
        out
    }

    /// H2: whoever copies the data directory (a backup, a shared volume)
    /// gets the sealed secrets without the key that opens them. The sealing
    /// key lies outside it, no file inside holds it, and the master secret
    /// cannot be unsealed without it.
    #[test]
    fn the_sealing_key_stays_outside_the_data_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("deployment");
        init(&dir, &Config::development()).unwrap();
        let config = Config::load(&dir).unwrap();
        let seal = config.seal_key_file(&dir).unwrap();
        assert_eq!(seal, tmp.path().join("deployment.seal.key"));
        let hex_key = std::fs::read_to_string(&seal).unwrap();
        let raw = hex::decode(hex_key.trim()).unwrap();
        for f in files(&dir) {
            let bytes = std::fs::read(&f).unwrap();
            for needle in [hex_key.trim().as_bytes(), &raw] {
                assert!(
                    !bytes.windows(needle.len()).any(|w| w == needle),
                    "{} holds the sealing key",
                    f.display()
                );
            }
        }
        crate::keys::abe_master_key(&dir).unwrap();
        std::fs::rename(&seal, tmp.path().join("elsewhere")).unwrap();
        let e = crate::keys::abe_master_key(&dir).unwrap_err().to_string();
        assert!(e.contains("sealing key") && e.contains("missing"), "{e}");

        // A configuration that puts the key inside the directory is refused.
        let mut inside = Config::development();
        inside.seal.key_file = Some("authority/seal.key".into());
        let e = init(&tmp.path().join("inside"), &inside)
            .unwrap_err()
            .to_string();
        assert!(e.contains("inside the data directory"), "{e}");
    }

    /// L4: a local attacker pre-creates the data directory's files (a link
    /// to a file of theirs where the CA key will go, a world-writable
    /// auditor key file). `init` refuses instead of writing a key through
    /// the link or into the file, and leaves the attacker's file empty.
    #[cfg(unix)]
    #[test]
    fn init_refuses_planted_links_and_files() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let planted = tmp.path().join("attacker-owned");
        std::fs::write(&planted, "").unwrap();
        std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(0o666)).unwrap();

        let linked = tmp.path().join("linked");
        std::fs::create_dir_all(linked.join("pki")).unwrap();
        std::os::unix::fs::symlink(&planted, linked.join("pki/ca.key")).unwrap();
        let e = init(&linked, &Config::development()).unwrap_err();
        assert!(e.to_string().contains("exists already"), "{e}");

        let existing = tmp.path().join("existing");
        std::fs::create_dir_all(existing.join("identities")).unwrap();
        let key = existing.join("identities/auditor-ann.audit.key");
        std::fs::write(&key, "").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert!(init(&existing, &Config::development()).is_err());
        assert_eq!(
            std::fs::read(&key).unwrap(),
            b"",
            "no key went into the planted file"
        );

        let linked_dir = tmp.path().join("linked-dir");
        std::fs::create_dir_all(&linked_dir).unwrap();
        std::os::unix::fs::symlink(tmp.path(), linked_dir.join("pki")).unwrap();
        let e = init(&linked_dir, &Config::development()).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");

        assert_eq!(std::fs::read(&planted).unwrap(), b"");
    }

    #[test]
    fn init_writes_a_deployment_and_the_directory_administers_it() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("dep");
        let members = init(&dir, &Config::development()).unwrap();
        assert_eq!(members.len(), SAMPLE_ORGANISATION.len());
        assert!(
            init(&dir, &Config::development()).is_err(),
            "a second init must refuse"
        );
        let layout = Layout::new(&dir);
        for path in [
            layout.ca_cert(),
            layout.service("records").0,
            layout.identity("dr-heart").1,
        ] {
            assert!(path.exists(), "{}", path.display());
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(layout.identity("dr-heart").1)
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "keys are private to their owner");
            for private in [
                dir.join("asclepios.db"),
                dir.join(CONFIG_FILE),
                dir.join("identities"),
                dir.join("pki"),
            ] {
                let mode = std::fs::metadata(&private).unwrap().permissions().mode();
                assert_eq!(mode & 0o077, 0, "{} is {mode:o}", private.display());
            }
        }
        let directory = Directory::open(&dir).unwrap();
        let added = directory
            .add("dr-new", "clinician", "Dr New", &["role:doctor".into()])
            .unwrap();
        assert_eq!(added.attributes, vec![("role:doctor".to_string(), 0)]);
        assert!(directory.add("dr-new", "clinician", "again", &[]).is_err());
        assert!(directory
            .add("x", "clinician", "bad attr", &["nocolon".into()])
            .is_err());
        let removed = directory
            .set_attributes("nurse-ward", &["role:nurse".into(), "ward:icu".into()])
            .unwrap();
        assert_eq!(removed.revoked, ["care-team:pat-00000", "dept:cardiology"]);
        assert_eq!(
            directory
                .store()
                .attribute_version("dept:cardiology")
                .unwrap(),
            1
        );
        let revoked = directory.disable("dr-new").unwrap();
        assert_eq!(revoked.revoked, ["role:doctor"]);
        assert!(directory.set_attributes("dr-new", &[]).is_err());
        // The organisation, the two services' identities and dr-new.
        assert_eq!(
            directory.list().unwrap().len(),
            SAMPLE_ORGANISATION.len() + 3
        );
    }
}
