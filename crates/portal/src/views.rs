//! The three views and their forms. Every page is built from what this
//! process opened with the identity's keys; nothing decrypted leaves it
//! except to the browser on loopback.

use std::collections::HashMap;
use std::sync::Arc;

use asclepios_audit::{Action, AuditEvent, Outcome};
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{Response, StatusCode};
use axum::response::{IntoResponse, Redirect};
use axum::Form;
use serde_json::Value;

use crate::html::{alert, csrf_field, date, date_time, esc, line_chart, table};
use crate::Portal;

/// Most records a patient page opens.
const MAX_RECORDS: usize = 300;
/// Most audit events a page lists.
const MAX_EVENTS: usize = 500;
/// LOINC systolic blood pressure: the vital sign charted.
const SYSTOLIC: &str = "8480-6";

type Params = HashMap<String, String>;

/// Fixed texts for the notices a redirect may ask for (never echoed input).
fn notice(q: &Params) -> String {
    let text = match q.get("notice").map(String::as_str) {
        Some("granted") => "Consent granted.",
        Some("withdrawn") => {
            "Consent withdrawn: the grantee's key no longer opens your records, which were re-wrapped."
        }
        Some("erased") => "Record erased: its keys were destroyed (crypto-shredding).",
        Some("reviewed") => "Review recorded in the audit log.",
        _ => return String::new(),
    };
    format!("<p class=\"notice\" role=\"status\">{text}</p>")
}

fn action_name(a: Action) -> String {
    serde_json::to_value(a)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{a:?}"))
}

fn outcome_name(o: Outcome) -> &'static str {
    match o {
        Outcome::Success => "success",
        Outcome::Denied => "refused",
        Outcome::Failed => "failed",
    }
}

fn text_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut v = v;
    for p in path {
        v = match p.parse::<usize>() {
            Ok(i) => v.get(i)?,
            Err(_) => v.get(p)?,
        };
    }
    v.as_str()
}

fn coding_display(v: &Value, field: &str) -> String {
    text_at(v, &[field, "coding", "0", "display"])
        .or_else(|| text_at(v, &[field, "text"]))
        .or_else(|| text_at(v, &[field, "coding", "0", "code"]))
        .unwrap_or("")
        .to_string()
}

fn unix(date_text: &str) -> Option<i64> {
    let d = date_text.get(..10)?;
    let mut parts = d.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (parts.next()??, parts.next()??, parts.next()??);
    let month = time::Month::try_from(u8::try_from(m).ok()?).ok()?;
    let date =
        time::Date::from_calendar_date(i32::try_from(y).ok()?, month, u8::try_from(day).ok()?)
            .ok()?;
    Some(date.midnight().assume_utc().unix_timestamp())
}

/// (type, what, when) of a FHIR resource, for people; and a systolic value.
fn summary(r: &Value) -> (String, String, String, Option<(i64, f64)>) {
    let kind = text_at(r, &["resourceType"]).unwrap_or("?").to_string();
    let (what, when) = match kind.as_str() {
        "Observation" => {
            let value = r
                .get("valueQuantity")
                .map(|q| {
                    format!(
                        "{} {}",
                        q.get("value").map(|v| v.to_string()).unwrap_or_default(),
                        text_at(q, &["unit"]).unwrap_or("")
                    )
                })
                .unwrap_or_default();
            (
                format!("{}: {value}", coding_display(r, "code")),
                text_at(r, &["effectiveDateTime"]).unwrap_or(""),
            )
        }
        "Condition" => (
            format!(
                "{} ({})",
                coding_display(r, "code"),
                coding_display(r, "clinicalStatus")
            ),
            text_at(r, &["onsetDateTime"])
                .or_else(|| text_at(r, &["recordedDate"]))
                .unwrap_or(""),
        ),
        "MedicationRequest" => (
            format!(
                "{} ({})",
                coding_display(r, "medicationCodeableConcept"),
                text_at(r, &["status"]).unwrap_or("")
            ),
            text_at(r, &["authoredOn"]).unwrap_or(""),
        ),
        "Encounter" => (
            coding_display(r, "type")
                .is_empty()
                .then(|| text_at(r, &["class", "display"]).unwrap_or("encounter"))
                .map(str::to_string)
                .unwrap_or_else(|| coding_display(r, "type")),
            text_at(r, &["period", "start"]).unwrap_or(""),
        ),
        "Patient" => (
            format!(
                "{} {}",
                text_at(r, &["name", "0", "given", "0"]).unwrap_or(""),
                text_at(r, &["name", "0", "family"]).unwrap_or("")
            ),
            text_at(r, &["birthDate"]).unwrap_or(""),
        ),
        _ => (String::new(), ""),
    };
    let systolic = (kind == "Observation"
        && text_at(r, &["code", "coding", "0", "code"]) == Some(SYSTOLIC))
    .then(|| {
        Some((
            unix(text_at(r, &["effectiveDateTime"])?)?,
            r.get("valueQuantity")?.get("value")?.as_f64()?,
        ))
    })
    .flatten();
    (
        kind,
        what,
        when.get(..10).unwrap_or(when).to_string(),
        systolic,
    )
}

fn event_row(e: &AuditEvent, badge: String) -> (Option<&'static str>, Vec<String>) {
    let action = if e.emergency {
        format!(
            "<span class=\"badge alert\">EMERGENCY ACCESS</span> {}",
            esc(&action_name(e.action))
        )
    } else {
        esc(&action_name(e.action))
    };
    (
        e.emergency.then_some("emergency"),
        vec![
            esc(&date_time(e.time as i64)),
            esc(&e.actor),
            action,
            esc(&e.resource),
            esc(&e.purpose),
            esc(outcome_name(e.outcome)),
            badge,
        ],
    )
}

fn included_badge(included: bool, index: u64, size: u64) -> String {
    if included {
        format!(
            "<span class=\"badge ok\">in the log: entry {index} of {size}, inclusion proof verified</span>"
        )
    } else {
        "<span class=\"badge bad\">inclusion proof FAILED</span>".into()
    }
}

const EVENT_HEADERS: [&str; 7] = ["When", "Who", "What", "On", "Purpose", "Outcome", "Proof"];

/// The patient's page.
pub(crate) async fn patient(
    State(p): State<Arc<Portal>>,
    Query(q): Query<Params>,
) -> Response<Body> {
    let Some(pid) = p.roles.patient.clone() else {
        return p.error_page(StatusCode::FORBIDDEN, "This identity is not a patient.");
    };
    let client = p.client().await;
    let mut body = notice(&q);

    // My records, opened here.
    let listed = match client.list_records(&pid).await {
        Ok(l) => l,
        Err(e) => return p.error_page(StatusCode::BAD_GATEWAY, &e.to_string()),
    };
    // The latest write the audit log holds per record: a listed version
    // older than it was rolled back by the store.
    let view = client.audit_view().await;
    let mut logged: std::collections::HashMap<&str, u64> = Default::default();
    if let Ok(view) = &view {
        for w in asclepios_client::logged_writes(&view.events, &pid) {
            let at = logged.entry(w.record_id.as_str()).or_default();
            *at = (*at).max(w.version);
        }
    }
    let mut rows = Vec::new();
    let mut points = Vec::new();
    for (id, version) in listed.iter().take(MAX_RECORDS) {
        let stale = match logged.get(id.as_str()) {
            Some(latest) if latest > version => format!(
                "<br><span class=\"badge bad\" role=\"alert\">the service served v{version}, \
                 but the audit log holds a write of v{latest}: rolled back</span>"
            ),
            _ => String::new(),
        };
        // Ids are opaque: the button names the record by what it is, once
        // opened (its FHIR reference), else by its id.
        let erase = |label: &str| {
            format!(
                "<form class=\"inline\" method=\"post\" action=\"/patient/records/erase\">{}\
                 <input type=\"hidden\" name=\"record\" value=\"{}\">\
                 <button type=\"submit\" aria-label=\"Erase record {}\">Erase</button></form>",
                csrf_field(p.csrf()),
                esc(id),
                esc(label)
            )
        };
        match client.get_record(&pid, id).await {
            Ok((resource, _)) => {
                let (kind, what, when, systolic) = summary(&resource);
                let reference = format!(
                    "{}/{}",
                    resource["resourceType"].as_str().unwrap_or("?"),
                    resource["id"].as_str().unwrap_or("?")
                );
                points.extend(systolic);
                rows.push((
                    None,
                    vec![
                        esc(&kind),
                        esc(&what),
                        esc(&when),
                        format!(
                            "{} (v{version})<br><small>stored as {}</small>{stale}",
                            esc(&reference),
                            esc(id)
                        ),
                        erase(&reference),
                    ],
                ));
            }
            Err(e) => rows.push((
                None,
                vec![
                    "?".into(),
                    format!(
                        "cannot be opened with your key here: {}",
                        esc(&e.to_string())
                    ),
                    String::new(),
                    format!("{} (v{version}){stale}", esc(id)),
                    erase(id),
                ],
            )),
        }
    }
    points.sort_by_key(|(t, _)| *t);
    body.push_str("<h2>Blood pressure over time</h2>");
    body.push_str(&line_chart("Systolic blood pressure", "mm[Hg]", &points));
    body.push_str("<h2>My records</h2>");
    body.push_str(&format!(
        "<p>{} record(s), opened on this device with your key.</p>",
        listed.len()
    ));
    body.push_str(&table(
        "My records",
        &["Type", "Summary", "Date", "Record", "Erase"],
        &rows,
    ));

    // Who accessed my records.
    body.push_str("<h2>Who accessed my records</h2>");
    match view {
        Ok(view) => {
            let emergencies = view.events.iter().filter(|e| e.event.emergency).count();
            if emergencies > 0 {
                body.push_str(&format!(
                    "<p class=\"error\" role=\"alert\"><strong>{emergencies} emergency \
                     access event(s)</strong> (break-glass) on your records: they are marked \
                     below and reviewed by auditors.</p>"
                ));
            }
            body.push_str(&format!(
                "<p>Checked against the audit log's signed checkpoint of {} entries.</p>",
                view.checkpoint.size
            ));
            let mut events: Vec<_> = view.events.iter().collect();
            events.sort_by_key(|e| std::cmp::Reverse((e.event.time, e.index)));
            let rows: Vec<_> = events
                .iter()
                .take(MAX_EVENTS)
                .map(|e| {
                    event_row(
                        &e.event,
                        included_badge(e.included, e.index, e.checkpoint_size),
                    )
                })
                .collect();
            body.push_str(&table("Accesses to my records", &EVENT_HEADERS, &rows));
            let erasures: Vec<_> = events
                .iter()
                .filter(|e| e.event.action == Action::Delete)
                .map(|e| {
                    (
                        None,
                        vec![
                            esc(&date_time(e.event.time as i64)),
                            esc(&e.event.actor),
                            esc(&e.event.resource),
                            esc(outcome_name(e.event.outcome)),
                        ],
                    )
                })
                .collect();
            body.push_str("<h2>My erasure requests</h2>");
            body.push_str(&table(
                "Erasures of my records",
                &["When", "By", "Record", "Outcome"],
                &erasures,
            ));
        }
        Err(e) => body.push_str(&alert(&format!("The audit log could not be checked: {e}"))),
    }

    // My consents.
    body.push_str("<h2>My consents</h2>");
    match client.consents().await {
        Ok(consents) => {
            let rows: Vec<_> = consents
                .iter()
                .map(|c| {
                    let action = if c.status == "active" {
                        format!(
                            "<form class=\"inline\" method=\"post\" action=\"/patient/consents/withdraw\">{}\
                             <input type=\"hidden\" name=\"consent\" value=\"{}\">\
                             <button type=\"submit\" aria-label=\"Withdraw consent for {}\">Withdraw</button></form>",
                            csrf_field(p.csrf()),
                            esc(&c.consent_id),
                            esc(&c.grant.grantee)
                        )
                    } else {
                        String::new()
                    };
                    (
                        None,
                        vec![
                            esc(&c.grant.grantee),
                            esc(&c.grant.purpose),
                            esc(&c.grant.resource_types.join(", ")),
                            esc(&c.status),
                            c.grant.expires_at.map(date).unwrap_or_else(|| "-".into()),
                            action,
                        ],
                    )
                })
                .collect();
            body.push_str(&table(
                "My consents",
                &[
                    "Grantee",
                    "Purpose",
                    "Resources",
                    "Status",
                    "Until",
                    "Action",
                ],
                &rows,
            ));
        }
        Err(e) => body.push_str(&alert(&e.to_string())),
    }
    body.push_str(&format!(
        "<h3>Grant a consent</h3><form method=\"post\" action=\"/patient/consents\">{}\
         <label for=\"grantee\">Who (identity)</label>\
         <input id=\"grantee\" name=\"grantee\" required maxlength=\"128\">\
         <label for=\"purpose\">Purpose</label>\
         <select id=\"purpose\" name=\"purpose\"><option value=\"TREAT\">treatment</option>\
         <option value=\"HRESCH\">research</option></select>\
         <label for=\"days\">Days</label>\
         <input id=\"days\" name=\"days\" type=\"number\" min=\"1\" max=\"3650\" value=\"30\">\
         <button type=\"submit\">Grant</button></form>",
        csrf_field(p.csrf())
    ));
    drop(client);
    p.page(&format!("My records ({pid})"), "/patient", &body)
}

/// The refusal of a form without this launch's CSRF token, if it has none.
fn forged(p: &Portal, form: &Params) -> Option<Response<Body>> {
    (!p.check_csrf(form.get("csrf"))).then(|| {
        p.error_page(
            StatusCode::FORBIDDEN,
            "This form is not from this portal launch (CSRF check failed). Reload the page.",
        )
    })
}

fn field<'a>(form: &'a Params, name: &str) -> &'a str {
    form.get(name).map(String::as_str).unwrap_or("")
}

/// The answer to a form the deployment carried out: back to the page with
/// its notice, or the deployment's refusal.
fn answered<T>(
    p: &Portal,
    result: Result<T, asclepios_client::ClientError>,
    back_to: &str,
) -> Response<Body> {
    match result {
        Ok(_) => Redirect::to(back_to).into_response(),
        Err(e) => p.error_page(StatusCode::BAD_REQUEST, &e.to_string()),
    }
}

/// Grants a consent.
pub(crate) async fn grant_consent(
    State(p): State<Arc<Portal>>,
    Form(form): Form<Params>,
) -> Response<Body> {
    if let Some(refusal) = forged(&p, &form) {
        return refusal;
    }
    let days: i64 = field(&form, "days").parse().unwrap_or(30).clamp(1, 3650);
    let grant = asclepios_api::consent::ConsentGrant {
        grantee: field(&form, "grantee").trim().to_string(),
        purpose: field(&form, "purpose").to_string(),
        resource_types: vec!["*".into()],
        expires_at: Some(time::OffsetDateTime::now_utc().unix_timestamp() + days * 86_400),
    };
    let client = p.client().await;
    answered(
        &p,
        client.grant_consent(&grant).await,
        "/patient?notice=granted",
    )
}

/// Withdraws a consent.
pub(crate) async fn withdraw_consent(
    State(p): State<Arc<Portal>>,
    Form(form): Form<Params>,
) -> Response<Body> {
    if let Some(refusal) = forged(&p, &form) {
        return refusal;
    }
    let client = p.client().await;
    answered(
        &p,
        client.withdraw_consent(field(&form, "consent")).await,
        "/patient?notice=withdrawn",
    )
}

/// Erases one of the patient's records.
pub(crate) async fn erase_record(
    State(p): State<Arc<Portal>>,
    Form(form): Form<Params>,
) -> Response<Body> {
    if let Some(refusal) = forged(&p, &form) {
        return refusal;
    }
    let Some(pid) = p.roles.patient.clone() else {
        return p.error_page(StatusCode::FORBIDDEN, "This identity is not a patient.");
    };
    let client = p.client().await;
    answered(
        &p,
        client.erase_record(&pid, field(&form, "record")).await,
        "/patient?notice=erased",
    )
}

const ACTIONS: [Action; 14] = [
    Action::Create,
    Action::Read,
    Action::Update,
    Action::Delete,
    Action::Search,
    Action::KeyIssue,
    Action::ConsentChange,
    Action::Revoke,
    Action::EmergencyAccess,
    Action::Export,
    Action::Attestation,
    Action::IntegrityAlarm,
    Action::DirectoryChange,
    Action::RequestRefused,
];

fn input(id: &str, label: &str, kind: &str, q: &Params) -> String {
    format!(
        "<label for=\"{id}\">{label}</label><input id=\"{id}\" name=\"{id}\" type=\"{kind}\" value=\"{}\">",
        esc(q.get(id).map(String::as_str).unwrap_or(""))
    )
}

/// The auditor's page: review queue, log health, event search.
pub(crate) async fn auditor(
    State(p): State<Arc<Portal>>,
    Query(q): Query<Params>,
) -> Response<Body> {
    if !p.roles.auditor {
        return p.error_page(StatusCode::FORBIDDEN, "This identity is not an auditor.");
    }
    let client = p.client().await;
    let mut body = notice(&q);

    body.push_str("<h2>Break-glass review queue</h2>");
    match client.emergency_reviews().await {
        Ok(pending) if pending.is_empty() => {
            body.push_str("<p>No break-glass grant is waiting for review.</p>")
        }
        Ok(pending) => {
            let rows: Vec<_> = pending
                .iter()
                .enumerate()
                .map(|(i, g)| {
                    (
                        Some("emergency"),
                        vec![
                            esc(&g.clinician),
                            esc(&g.patient),
                            esc(&date_time(g.issued_at)),
                            esc(&date_time(g.expires_at)),
                            format!(
                                "<form method=\"post\" action=\"/auditor/reviews\">{}\
                                 <input type=\"hidden\" name=\"patient\" value=\"{}\">\
                                 <input type=\"hidden\" name=\"grant\" value=\"{}\">\
                                 <label for=\"comment-{i}\">Comment</label>\
                                 <textarea id=\"comment-{i}\" name=\"comment\" rows=\"2\" maxlength=\"2000\"></textarea>\
                                 <button type=\"submit\" name=\"decision\" value=\"approve\">Approve</button>\
                                 <button type=\"submit\" name=\"decision\" value=\"flag\">Flag</button></form>",
                                csrf_field(p.csrf()),
                                esc(&g.patient),
                                esc(&g.grant_id)
                            ),
                        ],
                    )
                })
                .collect();
            body.push_str(&table(
                "Break-glass grants to review",
                &["Clinician", "Patient", "Issued", "Until", "Decision"],
                &rows,
            ));
        }
        Err(e) => body.push_str(&alert(&e.to_string())),
    }

    body.push_str("<h2>Log health</h2>");
    match client.audit_view().await {
        Ok(view) => {
            let cp = &view.checkpoint;
            let previous = p.last_checkpoint.lock().ok().and_then(|l| l.clone());
            let consistency = match &previous {
                None => "<span class=\"badge ok\">first checkpoint seen by this portal</span>".to_string(),
                Some(old) if view.consistent_with(old) => format!(
                    "<span class=\"badge ok\">consistent with the previous checkpoint ({} entries): proof verified</span>",
                    old.size
                ),
                Some(old) => format!(
                    "<span class=\"badge bad\">NOT consistent with the previous checkpoint ({} entries): the log was rewritten</span>",
                    old.size
                ),
            };
            if previous
                .as_ref()
                .is_none_or(|old| view.consistent_with(old))
            {
                if let Ok(mut last) = p.last_checkpoint.lock() {
                    *last = Some(cp.clone());
                }
            }
            body.push_str(&format!(
                "<dl><dt>Latest checkpoint</dt><dd>{} entries, root {} \
                 <span class=\"badge ok\">signature verified</span></dd>\
                 <dt>Consistency</dt><dd>{consistency}</dd>\
                 <dt>Entries re-hashed</dt><dd>{} (every entry read and hashed into the tree)</dd></dl>",
                cp.size,
                hex::encode(cp.root),
                view.tree.as_ref().map_or(0, |t| t.size())
            ));

            body.push_str("<h2>Search audit events</h2>");
            let mut options = String::from("<option value=\"\">any</option>");
            for a in ACTIONS {
                let name = action_name(a);
                let selected = if q.get("action") == Some(&name) {
                    " selected"
                } else {
                    ""
                };
                options.push_str(&format!(
                    "<option value=\"{0}\"{selected}>{0}</option>",
                    esc(&name)
                ));
            }
            body.push_str(&format!(
                "<form method=\"get\" action=\"/auditor\" role=\"search\">{}{}\
                 <label for=\"action\">Action</label><select id=\"action\" name=\"action\">{options}</select>\
                 {}{}<button type=\"submit\">Search</button></form>",
                input("actor", "Actor", "text", &q),
                input("patient", "Patient", "text", &q),
                input("from", "From", "date", &q),
                input("to", "To", "date", &q),
            ));
            let want = |key: &str| q.get(key).map(String::as_str).filter(|s| !s.is_empty());
            let from = want("from").and_then(unix);
            let to = want("to").and_then(unix).map(|t| t + 86_400);
            let mut found: Vec<_> = view
                .events
                .iter()
                .filter(|e| want("actor").is_none_or(|a| e.event.actor == a))
                .filter(|e| want("patient").is_none_or(|pt| e.event.patient.as_deref() == Some(pt)))
                .filter(|e| want("action").is_none_or(|a| action_name(e.event.action) == a))
                .filter(|e| from.is_none_or(|f| e.event.time as i64 >= f))
                .filter(|e| to.is_none_or(|t| (e.event.time as i64) < t))
                .collect();
            found.sort_by_key(|e| std::cmp::Reverse((e.event.time, e.index)));
            body.push_str(&format!("<p>{} matching event(s).</p>", found.len()));
            let rows: Vec<_> = found
                .iter()
                .take(MAX_EVENTS)
                .map(|e| {
                    event_row(
                        &e.event,
                        included_badge(e.included, e.index, e.checkpoint_size),
                    )
                })
                .collect();
            body.push_str(&table("Audit events", &EVENT_HEADERS, &rows));
        }
        Err(e) => body.push_str(&alert(&format!("The audit log did not check out: {e}"))),
    }
    drop(client);
    p.page("Audit", "/auditor", &body)
}

/// Records an auditor's decision on a break-glass grant.
pub(crate) async fn review(
    State(p): State<Arc<Portal>>,
    Form(form): Form<Params>,
) -> Response<Body> {
    if let Some(refusal) = forged(&p, &form) {
        return refusal;
    }
    let client = p.client().await;
    let result = client
        .review_emergency(
            field(&form, "patient"),
            field(&form, "grant"),
            field(&form, "decision"),
            field(&form, "comment"),
        )
        .await;
    answered(&p, result, "/auditor?notice=reviewed")
}

/// The clinician's page: search the encrypted index.
pub(crate) async fn clinician(
    State(p): State<Arc<Portal>>,
    Query(q): Query<Params>,
) -> Response<Body> {
    if !p.roles.clinician {
        return p.error_page(StatusCode::FORBIDDEN, "This identity has no clinical role.");
    }
    let query = q
        .get("q")
        .map(String::as_str)
        .unwrap_or("")
        .trim()
        .to_string();
    let mut body = format!(
        "<form method=\"get\" action=\"/clinician\" role=\"search\">\
         <label for=\"q\">Search</label><input id=\"q\" name=\"q\" size=\"60\" value=\"{}\" \
         placeholder=\"type:Observation and patient:pat-00000\">\
         <button type=\"submit\">Search</button></form>\
         <p>Keywords joined by <code>and</code>: type:, patient:, code:system|code, date:, month:, \
         date ranges like date:2024-01..2024-03. The services see neither the keywords nor the results.</p>",
        esc(&query)
    );
    if !query.is_empty() {
        let client = p.client().await;
        match client.search(&query).await {
            Ok(matches) => {
                body.push_str(&format!(
                    "<h2>Results</h2><p>{} match(es).</p>",
                    matches.len()
                ));
                let rows: Vec<_> = matches
                    .iter()
                    .take(MAX_RECORDS)
                    .map(|m| {
                        (
                            None,
                            vec![
                                esc(&m.patient),
                                format!(
                                    "<a href=\"/clinician/record?patient={}&amp;id={}\">{}</a>",
                                    esc(&m.patient),
                                    esc(&m.record_id),
                                    esc(&m.record_id)
                                ),
                            ],
                        )
                    })
                    .collect();
                body.push_str(&table("Matching records", &["Patient", "Record"], &rows));
            }
            Err(e) => body.push_str(&alert(&e.to_string())),
        }
    }
    p.page("Search records", "/clinician", &body)
}

/// One record, opened here, with its version history.
pub(crate) async fn clinician_record(
    State(p): State<Arc<Portal>>,
    Query(q): Query<Params>,
) -> Response<Body> {
    if !p.roles.clinician {
        return p.error_page(StatusCode::FORBIDDEN, "This identity has no clinical role.");
    }
    let (patient, id) = (field(&q, "patient"), field(&q, "id"));
    let client = p.client().await;
    let mut body = String::new();
    match client.get_record(patient, id).await {
        Ok((resource, _)) => {
            let (kind, what, when, _) = summary(&resource);
            body.push_str(&format!(
                "<p>{} on {}: {}</p><h2>Resource</h2><pre>{}</pre>",
                esc(&kind),
                esc(&when),
                esc(&what),
                esc(&serde_json::to_string_pretty(&resource).unwrap_or_default())
            ));
        }
        Err(e) => body.push_str(&alert(&e.to_string())),
    }
    body.push_str("<h2>History</h2>");
    match client.record_versions(patient, id).await {
        Ok(versions) => body.push_str(&format!(
            "<p>Versions: {}</p>",
            versions
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        )),
        Err(e) => body.push_str(&alert(&e.to_string())),
    }
    drop(client);
    p.page(&format!("Record {id} of {patient}"), "/clinician", &body)
}
