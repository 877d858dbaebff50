//! The demo's second part: the whole platform over real mutual TLS on
//! localhost, the key authority and the record service as two processes,
//! each with its own directory and SQLite store.

use anyhow::Context;
use asclepios_audit::{Action, Checkpoint};
use asclepios_client::{Client, ClientError};
use asclepios_deploy::serve::AUDIT_LOG_ID;
use asclepios_deploy::{init::init, keys, Config};
use asclepios_fhir::synth::Generator;

use crate::demo::Story;

fn refused(e: &ClientError) -> String {
    match e {
        ClientError::Refused {
            status, message, ..
        } => format!("{status}: {message}"),
        other => other.to_string(),
    }
}

pub fn run(story: &mut Story, seed: u64) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(play(story, seed))
}

async fn play(story: &mut Story, seed: u64) -> anyhow::Result<()> {
    println!("\nasclepios demo, part 2: the platform over mutual TLS");
    story.section("8. A deployment: CA, certificates, a sample hospital, services on localhost");
    let tmp = std::env::temp_dir().join(format!("asclepios-demo-platform-{}", std::process::id()));
    let _cleanup = Remove(tmp.clone());
    let dir = tmp.join("authority");
    let records_dir = tmp.join("records");
    let mut config = Config::development();
    config.authority.listen = format!("127.0.0.1:{}", free_port()?);
    config.records.listen = format!("127.0.0.1:{}", free_port()?);
    let (d, r, c) = (dir.clone(), records_dir.clone(), config.clone());
    let members = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let members = init(&d, &c)?;
        asclepios_deploy::split::write_records_dir(&d, &r)?;
        Ok(members)
    })
    .await??;
    for m in &members {
        let attrs: Vec<&str> = m.attributes.iter().map(|(a, _)| a.as_str()).collect();
        story.note(&format!("{:<16} {}", m.identity.id, attrs.join(", ")));
    }
    // Two processes, two directories: the record service's holds no secret
    // of the authority's.
    let services = Children(vec![
        serve("authority", &dir)?,
        serve("records", &records_dir)?,
    ]);
    for listen in [&config.authority.listen, &config.records.listen] {
        wait_for(listen).await?;
    }
    // The record service serves once it holds the authority's first facts.
    tokio::time::sleep(std::time::Duration::from_millis(
        2 * asclepios_deploy::serve::FACTS_POLL_MILLIS,
    ))
    .await;
    let authority_url = asclepios_deploy::serve::local_url(&config.authority.listen);
    let records_url = asclepios_deploy::serve::local_url(&config.records.listen);
    story.note(&format!(
        "key authority {authority_url} (process {}) and record service {records_url} (process {}): \
         TLS 1.3, client certificates required, each on its own store",
        services.0[0].id(),
        services.0[1].id()
    ));
    let connect = |id: &str| Client::connect(&dir, id, &authority_url, &records_url);
    let admin = connect("admin-ada")?;

    story.section("9. The lab imports synthetic records, sealed on its side");
    let mut generator = Generator::new(seed);
    let bundles = [generator.patient(2), generator.patient(1)];
    let mut lab = connect("lab-central")?;
    lab.refresh_key().await?;
    let config = Config::load(&dir)?;
    let mut imported = 0;
    for bundle in &bundles {
        let pid = bundle.patient_id();
        let policy = lab.resolve_policy(&config.default_policy(pid)).await?;
        for resource in bundle.all() {
            // Stored under an opaque id: a MAC of the FHIR reference under
            // the patient's naming key (the store never sees the FHIR id).
            let record_id = lab.record_id_for(pid, resource).await?;
            lab.put_record_resolved(pid, &record_id, 1, resource, &policy)
                .await?;
            imported += 1;
        }
    }
    let pid = bundles[0].patient_id().to_string();
    let observation = bundles[0]
        .resources
        .iter()
        .find(|r| r["resourceType"] == "Observation")
        .context("an observation")?
        .clone();
    let record = lab.record_id_for(&pid, &observation).await?;
    story.expect(
        imported > 10,
        &format!(
            "{imported} resources for {} patients stored, each with a checked receipt",
            bundles.len()
        ),
    );
    story.note(&format!(
        "policy of {pid}'s records: {}",
        config.default_policy(&pid)
    ));
    story.note(&format!(
        "Observation/{} is stored as record {record}: the store learns neither the FHIR id \
         nor the resource type",
        observation["id"].as_str().unwrap_or_default()
    ));

    story.section("10. Who can read what");
    let mut heart = connect("dr-heart")?;
    heart.refresh_key().await?;
    let read = heart.get_record(&pid, &record).await;
    story.expect(
        read.as_ref().is_ok_and(|(r, _)| r == &observation),
        "Dr. Heart (care team) reads the observation",
    );
    let mut patient = connect(&pid)?;
    patient.refresh_key().await?;
    story.expect(
        patient.get_record(&pid, &record).await.is_ok(),
        &format!("{pid} reads their own record"),
    );
    let mut rita = connect("researcher-rita")?;
    rita.refresh_key().await?;
    match rita.get_record(&pid, &record).await {
        Err(e) => story.expect(
            true,
            &format!("the researcher is refused by the service ({})", refused(&e)),
        ),
        Ok(_) => story.expect(false, "the researcher read the record"),
    }
    let (sealed, _) = heart.get_sealed(&pid, &record).await?;
    match rita.open(&sealed) {
        Err(e) => story.expect(
            true,
            &format!("and could not open the ciphertext anyway: {e}"),
        ),
        Ok(_) => story.expect(false, "the researcher opened the ciphertext"),
    }

    story.section("11. Search over encrypted records");
    let systolic = "code:http://loinc.org|8480-6";
    let query = format!("{systolic} and patient:{pid}");
    let found = heart.search(&query).await?;
    let expected = bundles[0]
        .all()
        .filter(|r| r["code"]["coding"][0]["code"] == "8480-6")
        .count();
    story.expect(
        found.len() == expected && expected > 0,
        &format!(
            "Dr. Heart searches `{query}`: {} matches, as many as the patient has; \
             the record service saw only addresses",
            found.len()
        ),
    );
    let opened = match found.first() {
        Some(m) => heart.get_record(&m.patient, &m.record_id).await.is_ok(),
        None => false,
    };
    story.expect(
        opened,
        "the matches are read like any record (the key decides)",
    );
    match rita.search(systolic).await {
        Err(e) => story.expect(
            true,
            &format!("the researcher may not search ({})", refused(&e)),
        ),
        Ok(_) => story.expect(false, "the researcher searched"),
    }
    // A search covers the searcher's circle: the nurse is on the first
    // patient's care team only.
    let other = bundles[1].patient_id().to_string();
    let mut nurse = connect("nurse-ward")?;
    nurse.refresh_key().await?;
    let found = nurse.search("type:Condition").await?;
    story.expect(
        found.iter().all(|m| m.patient == pid),
        &format!(
            "the nurse searches `type:Condition`: {} matches, all of her own patient's, none of {other}'s",
            found.len()
        ),
    );
    match nurse
        .search(&format!("patient:{other} and type:Condition"))
        .await
    {
        Err(e) => story.expect(
            true,
            &format!(
                "naming a patient outside her circle is refused ({}), and {other} sees the attempt",
                refused(&e)
            ),
        ),
        Ok(_) => story.expect(false, "the nurse searched another patient's records"),
    }

    story.section("12. Revocation: the nurse leaves the care team");
    story.expect(
        nurse.get_record(&pid, &record).await.is_ok(),
        "before: the nurse reads it",
    );
    let done = admin
        .set_identity_attributes("nurse-ward", &["role:nurse".to_string()])
        .await?;
    story.note(&format!(
        "an administrator revokes {}; the authority re-wraps {} record keys at the record service",
        done.revocation.revoked.join(", "),
        done.revocation.rewrapped
    ));
    // The record service learns of it within a poll of the directory.
    tokio::time::sleep(std::time::Duration::from_millis(
        2 * asclepios_deploy::serve::FACTS_POLL_MILLIS,
    ))
    .await;
    nurse.refresh_key().await?;
    story.expect(
        nurse.get_record(&pid, &record).await.is_err(),
        "after: neither her old key nor a fresh one opens it",
    );
    heart.refresh_key().await?;
    story.expect(
        heart.get_record(&pid, &record).await.is_ok(),
        "Dr. Heart, still on the team, reads it with a fresh key",
    );

    story.section("13. Consent: the patient lets the emergency physician in, then withdraws");
    let consent = patient
        .grant_consent(&asclepios_authority::consent::ConsentGrant {
            grantee: "dr-er".into(),
            purpose: "TREAT".into(),
            resource_types: vec!["Observation".into()],
            expires_at: None,
        })
        .await?;
    let mut er = connect("dr-er")?;
    er.refresh_key().await?;
    story.expect(
        er.get_record(&pid, &record).await.is_ok(),
        &format!("{} lets Dr. Rush read ({})", pid, consent.consent_id),
    );
    patient.withdraw_consent(&consent.consent_id).await?;
    er.refresh_key().await?;
    story.expect(
        er.get_record(&pid, &record).await.is_err(),
        "withdrawn: Dr. Rush is locked out again",
    );
    story.note(&format!(
        "as FHIR: Consent/{} status {}",
        consent.consent_id, "inactive"
    ));

    story.section("14. Break-glass for an unconscious patient");
    let grant = er
        .break_glass(&pid, "unconscious on arrival, no ID")
        .await?;
    er.refresh_key().await?;
    story.expect(
        er.get_record(&pid, &record).await.is_ok(),
        &format!(
            "Dr. Rush breaks the glass: {} until {}",
            grant.attribute, grant.expires_at
        ),
    );
    match heart.break_glass(&pid, "curious").await {
        Err(e) => story.expect(
            true,
            &format!(
                "a doctor without the emergency role is refused ({})",
                refused(&e)
            ),
        ),
        Ok(_) => story.expect(false, "the glass broke for the wrong person"),
    }
    let queue = connect("auditor-ann")?.emergency_reviews().await?;
    story.expect(
        queue.len() == 1,
        "the grant waits in the auditors' review queue",
    );

    story.section("15. The patient reads who accessed their records");
    let events = patient.audit_events().await?;
    for e in events.iter().filter(|e| e.actor != "lab-central").take(12) {
        story.note(&format!(
            "{:<16} {:<16} {:<8} {}{}",
            e.actor,
            format!("{:?}", e.action),
            format!("{:?}", e.outcome),
            e.purpose,
            if e.emergency { "  EMERGENCY" } else { "" }
        ));
    }
    story.expect(
        events
            .iter()
            .any(|e| e.action == Action::EmergencyAccess && e.actor == "dr-er"),
        &format!(
            "{} events readable by {pid}, the break-glass among them",
            events.len()
        ),
    );

    story.section("16. Research statistics without seeing a value");
    // The lab's cohort: systolic readings of 24 synthetic patients, each a
    // patient of the directory (a slot is a person).
    let mut cohort_gen = Generator::new(seed + 100);
    let mut cohort: Vec<String> = Vec::new();
    let mut readings: Vec<f64> = Vec::new();
    for i in 0..24 {
        let id = format!("pat-r{i:03}");
        let (d, owned) = (dir.to_path_buf(), id.clone());
        let public_key = tokio::task::spawn_blocking(move || {
            asclepios_deploy::directory::issue_identity_files(&d, &owned)
        })
        .await??;
        admin
            .register_identity(&asclepios_authority::admin::Registration {
                id: id.clone(),
                kind: "patient".into(),
                display_name: format!("patient {id}"),
                public_key: hex::encode(public_key),
                attributes: vec![format!("patient:{id}")],
            })
            .await?;
        let bp = cohort_gen.blood_pressure(&id);
        readings.push(bp["valueQuantity"]["value"].as_f64().unwrap_or(120.0));
        cohort.push(id);
    }
    let slots = lab.stats_slots("bp-study", &cohort).await?;
    let rows: Vec<_> = slots
        .iter()
        .zip(&readings)
        .map(|((_, slot, k), v)| (*slot, k, Some(*v)))
        .collect();
    let published = lab
        .stats_publish(
            "bp-study",
            ("2025", "systolic"),
            (80.0, 200.0),
            &[120.0, 140.0],
            &rows,
        )
        .await?;
    story.note(&format!(
        "the lab encrypts {} readings of {} directory patients in their slots, each with a noise share \
         ({published} ciphertexts: value, square, presence, buckets)",
        readings.len(),
        cohort.len()
    ));
    let summary = rita
        .stats_summary("bp-study", "2025", "systolic", "all")
        .await?;
    let mean = readings.iter().sum::<f64>() / readings.len() as f64;
    let within = |got: f64, want: f64, sd: f64| (got - want).abs() <= 6.0 * sd + 1e-9;
    story.expect(
        within(summary.count as f64, 24.0, summary.count_sd)
            && summary
                .mean
                .zip(summary.mean_sd)
                .is_some_and(|(m, sd)| within(m, mean, sd)),
        &format!(
            "the researcher learns a noisy count {} (noise sd {:.1}), mean {:.1} (true {mean:.1}, noise sd {:.1}), \
             histogram {:?}, and no single value; ε {} spent per person",
            summary.count,
            summary.count_sd,
            summary.mean.unwrap_or_default(),
            summary.mean_sd.unwrap_or_default(),
            summary.histogram,
            summary.budget.epsilon
        ),
    );
    let everyone_but_one: Vec<String> = slots[1..].iter().map(|(_, s, _)| s.to_string()).collect();
    match rita
        .stats_sum(
            "bp-study",
            "2025/systolic/value:80..200",
            &format!("slots:{}", everyone_but_one.join(",")),
        )
        .await
    {
        Err(e) => story.expect(
            true,
            &format!(
                "\"everyone but one\" after \"everyone\" is refused ({})",
                refused(&e)
            ),
        ),
        Ok(_) => story.expect(false, "a differencing query was answered"),
    }

    story.section("17. Erasure and disabled identities");
    match heart.erase_record(&pid, &record).await {
        Err(e) => story.expect(
            true,
            &format!("only the patient may erase ({})", refused(&e)),
        ),
        Ok(_) => story.expect(false, "a doctor erased a record"),
    }
    let erased = patient.erase_record(&pid, &record).await?;
    story.expect(
        heart.get_record(&pid, &record).await.is_err(),
        &format!(
            "{pid} erases it: {} version(s) and {} key wrapper(s) destroyed, nobody can open it",
            erased.versions, erased.wrappers
        ),
    );
    admin.disable_identity("researcher-rita").await?;
    tokio::time::sleep(std::time::Duration::from_millis(
        2 * asclepios_deploy::serve::FACTS_POLL_MILLIS,
    ))
    .await;
    match rita.list_records(&pid).await {
        Err(e) => story.expect(
            true,
            &format!("the disabled researcher is refused ({})", refused(&e)),
        ),
        Ok(_) => story.expect(false, "a disabled identity was served"),
    }

    story.section("18. Remote attestation: the key authority and a lab device prove what they run");
    let doctor = connect("dr-heart")?;
    let verdict = doctor.attest_authority().await?;
    story.note(&format!(
        "the authority's RA-TLS certificate and a fresh challenge: {}",
        verdict.summary()
    ));
    story.expect(
        verdict.trust == asclepios_attest::Trust::Warning,
        "development evidence (insecure-software) is at best a warning, and says so",
    );
    let attester = asclepios_deploy::attestation::development_attester(&dir)?;
    let lab = connect("lab-central")?;
    let registered = lab.register_component(&attester).await?;
    story.expect(
        registered.trust == asclepios_attest::Trust::Warning,
        "the lab device answered a challenge with evidence bound to its certificate key",
    );
    let other_build = asclepios_attest::attester::InsecureSoftwareAttester::new(
        ed25519_dalek::SigningKey::from_bytes(&[7; 32]),
        [0; 32],
        [0; 32],
    );
    match lab.register_component(&other_build).await {
        Err(e) => story.expect(
            e.to_string().contains("attestation refused"),
            "evidence of an unknown build from an unknown signer is refused (and audited)",
        ),
        Ok(_) => story.expect(false, "evidence of an unknown build was accepted"),
    }
    story.note(
        "production: attestation.evidence = sgx-dcap or tdx-dcap and require = true; \
         `asclepios attest verify https://...` prints the same appraisal",
    );

    story.section("19. An auditor verifies both audit logs, each under its own key");
    for (name, d) in [
        ("key authority", dir.clone()),
        ("record service", records_dir.clone()),
    ] {
        let (size, verified) =
            tokio::task::spawn_blocking(move || -> anyhow::Result<(u64, bool)> {
                let config = Config::load(&d)?;
                let store = config.open_store(&d)?;
                let verifier = keys::log_verifier(&d)?;
                let note = asclepios_audit::LogStore::log_latest_checkpoint(&store, AUDIT_LOG_ID)?
                    .context("a checkpoint")?
                    .1;
                let cp = Checkpoint::verify(&note, &verifier)?;
                let ok = asclepios_audit::log::audit_entries(
                    &store,
                    AUDIT_LOG_ID,
                    &config.audit.origin,
                    &note,
                    &verifier,
                )
                .is_ok();
                Ok((cp.size, ok))
            })
            .await??;
        story.expect(
            verified,
            &format!(
                "the {name}'s log: {size} entries re-hashed, they match its signed checkpoint"
            ),
        );
    }
    drop(services);
    Ok(())
}

/// A port free now on localhost.
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// `asclepios serve <which> --dir <dir>` as a child process.
fn serve(which: &str, dir: &std::path::Path) -> anyhow::Result<std::process::Child> {
    std::process::Command::new(std::env::current_exe().context("finding this program")?)
        .args(["serve", which, "--dir"])
        .arg(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .with_context(|| format!("starting `asclepios serve {which}`"))
}

/// Waits until something listens on `addr`.
async fn wait_for(addr: &str) -> anyhow::Result<()> {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    anyhow::bail!("nothing listens on {addr} after 10 s")
}

/// Child processes, killed when dropped.
struct Children(Vec<std::process::Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

struct Remove(std::path::PathBuf);

impl Drop for Remove {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
