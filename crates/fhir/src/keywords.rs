//! The search vocabulary: the keywords a resource is indexed under, and the
//! query language that names them.
//!
//! A keyword is `kind:value`:
//!
//! | kind | value | from |
//! |---|---|---|
//! | `type` | resource type | `resourceType` |
//! | `patient` | the platform's patient pseudonym | where the record is filed |
//! | `code` | `system|code` | every `Coding` |
//! | `date` | `YYYY-MM-DD` | the resource's dates ([`ResourceView::dates`]) |
//! | `month` | `YYYY-MM` | the same dates, at month precision |
//! | `practitioner` | id | references `Practitioner/<id>` |
//! | `organization` | id | references `Organization/<id>` |
//!
//! A query is terms joined by `and`; a term is a keyword, or a date range
//! `date:FROM..TO` (days or months, inclusive), which stands for the union of
//! the month keywords it covers, with day keywords for partial months at its
//! ends. `code:http://loinc.org|8480-6 and month:2024-03`.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::{FhirError, ResourceView};

/// The kinds of keyword.
pub const KINDS: &[&str] = &[
    "type",
    "patient",
    "code",
    "date",
    "month",
    "practitioner",
    "organization",
];

/// Longest keyword accepted, in bytes.
pub const MAX_KEYWORD_LEN: usize = 256;

/// Most keywords one query may expand to (a long day range is the usual way
/// to reach it).
pub const MAX_QUERY_KEYWORDS: usize = 512;

/// Checks a keyword's shape: a known kind, a value of 1 or more printable
/// characters without spaces, at most [`MAX_KEYWORD_LEN`] bytes in all.
pub fn check_keyword(keyword: &str) -> Result<(), FhirError> {
    let bad = |why: &str| {
        Err(FhirError::Structure(format!(
            "keyword {:?}: {why}",
            keyword.chars().take(80).collect::<String>()
        )))
    };
    let Some((kind, value)) = keyword.split_once(':') else {
        return bad("expected kind:value, e.g. type:Observation");
    };
    if !KINDS.contains(&kind) {
        return bad(&format!(
            "unknown kind `{kind}`; kinds are {}",
            KINDS.join(", ")
        ));
    }
    if value.is_empty() || keyword.len() > MAX_KEYWORD_LEN {
        return bad(&format!("the value must be 1 to {MAX_KEYWORD_LEN} bytes"));
    }
    if !value.chars().all(|c| c.is_ascii_graphic()) {
        return bad("the value must be printable ASCII without spaces");
    }
    let dated = match kind {
        "date" => parse_day(value).is_some(),
        "month" => parse_month(value).is_some(),
        _ => true,
    };
    if !dated {
        return bad("dates are YYYY-MM-DD, months YYYY-MM");
    }
    Ok(())
}

/// The keywords of `resource`, filed under patient pseudonym `patient`.
/// Values that would not make a valid keyword (a code with spaces, say) are
/// left out rather than refused: the record is still stored and found by its
/// other keywords.
pub fn keywords(resource: &ResourceView, patient: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut add = |k: String| {
        if check_keyword(&k).is_ok() {
            out.insert(k);
        }
    };
    add(format!("type:{}", resource.resource_type()));
    add(format!("patient:{patient}"));
    for c in resource.codings() {
        add(format!("code:{}|{}", c.system, c.code));
    }
    for d in resource.dates() {
        if let Some((y, m, day)) = d.get(..10).and_then(parse_day) {
            add(format!("date:{y:04}-{m:02}-{day:02}"));
            add(format!("month:{y:04}-{m:02}"));
        }
    }
    let mut refs = Vec::new();
    collect_references(resource.json(), &mut refs, 0);
    for r in refs {
        if let Some(id) = r.strip_prefix("Practitioner/") {
            add(format!("practitioner:{id}"));
        } else if let Some(id) = r.strip_prefix("Organization/") {
            add(format!("organization:{id}"));
        }
    }
    out
}

fn collect_references<'a>(v: &'a Value, out: &mut Vec<&'a str>, depth: usize) {
    if depth > 64 {
        return;
    }
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                match (k.as_str(), child) {
                    ("reference", Value::String(s)) => out.push(s),
                    _ => collect_references(child, out, depth + 1),
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                collect_references(item, out, depth + 1);
            }
        }
        _ => {}
    }
}

fn parse_day(s: &str) -> Option<(u32, u32, u32)> {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let (y, m) = parse_month(&s[..7])?;
    let d: u32 = s[8..]
        .parse()
        .ok()
        .filter(|_| b[8..].iter().all(u8::is_ascii_digit))?;
    (1..=days_in_month(y, m)).contains(&d).then_some((y, m, d))
}

fn parse_month(s: &str) -> Option<(u32, u32)> {
    let b = s.as_bytes();
    if b.len() != 7 || b[4] != b'-' || !b[..4].iter().chain(&b[5..]).all(u8::is_ascii_digit) {
        return None;
    }
    let y: u32 = s[..4].parse().ok()?;
    let m: u32 = s[5..].parse().ok()?;
    (1..=12).contains(&m).then_some((y, m))
}

fn days_in_month(y: u32, m: u32) -> u32 {
    match m {
        4 | 6 | 9 | 11 => 30,
        2 if (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400) => 29,
        2 => 28,
        _ => 31,
    }
}

/// A parsed query: every group must match (intersection); a group matches
/// when any of its keywords does (union).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Query {
    /// The groups, in the order written.
    pub groups: Vec<BTreeSet<String>>,
}

impl Query {
    /// Parses `term and term ...` (see the module docs).
    pub fn parse(text: &str) -> Result<Query, FhirError> {
        let bad = |why: String| FhirError::Structure(why);
        let words: Vec<&str> = text.split_whitespace().collect();
        let mut groups = Vec::new();
        for (i, term) in words.split(|w| w.eq_ignore_ascii_case("and")).enumerate() {
            match term {
                [one] => groups.push(Self::term(one)?),
                [] => {
                    return Err(bad(format!(
                        "term {} of the query is empty: write `kw and kw`",
                        i + 1
                    )))
                }
                many => {
                    return Err(bad(format!(
                        "`{}`: join terms with `and` (keywords have no spaces)",
                        many.join(" ")
                    )))
                }
            }
        }
        if groups.is_empty() {
            return Err(bad(
                "an empty query; e.g. `type:Observation and month:2024-03`".into(),
            ));
        }
        let total: usize = groups.iter().map(BTreeSet::len).sum();
        if total > MAX_QUERY_KEYWORDS {
            return Err(bad(format!(
                "the query stands for {total} keywords, more than {MAX_QUERY_KEYWORDS}: narrow the date range"
            )));
        }
        Ok(Query { groups })
    }

    /// Every keyword the query names.
    pub fn keywords(&self) -> BTreeSet<&str> {
        self.groups.iter().flatten().map(String::as_str).collect()
    }

    fn term(term: &str) -> Result<BTreeSet<String>, FhirError> {
        if let Some((from, to)) = term.strip_prefix("date:").and_then(|r| r.split_once("..")) {
            return date_range(from, to);
        }
        check_keyword(term)?;
        Ok(BTreeSet::from([term.to_string()]))
    }
}

/// The keywords that cover days `from..=to` (each a day or a month): whole
/// months as `month:` keywords, the partial months at either end as days.
fn date_range(from: &str, to: &str) -> Result<BTreeSet<String>, FhirError> {
    let bad = || {
        FhirError::Structure(format!(
            "date range {from}..{to}: ends are YYYY-MM-DD or YYYY-MM, the first not after the second"
        ))
    };
    let start = parse_day(from)
        .or_else(|| parse_month(from).map(|(y, m)| (y, m, 1)))
        .ok_or_else(bad)?;
    let end = parse_day(to)
        .or_else(|| parse_month(to).map(|(y, m)| (y, m, days_in_month(y, m))))
        .ok_or_else(bad)?;
    if start > end {
        return Err(bad());
    }
    let mut out = BTreeSet::new();
    let (mut y, mut m) = (start.0, start.1);
    loop {
        let first = if (y, m) == (start.0, start.1) {
            start.2
        } else {
            1
        };
        let last = if (y, m) == (end.0, end.1) {
            end.2
        } else {
            days_in_month(y, m)
        };
        if first == 1 && last == days_in_month(y, m) {
            out.insert(format!("month:{y:04}-{m:02}"));
        } else {
            for d in first..=last {
                out.insert(format!("date:{y:04}-{m:02}-{d:02}"));
            }
        }
        if out.len() > MAX_QUERY_KEYWORDS {
            return Err(FhirError::Structure(format!(
                "date range {from}..{to} needs more than {MAX_QUERY_KEYWORDS} keywords"
            )));
        }
        if (y, m) == (end.0, end.1) {
            break;
        }
        (y, m) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_observation_gets_its_keywords() {
        let mut synth = crate::synth::Generator::new(1);
        let bp = ResourceView::from_value(synth.blood_pressure("pat-00001")).unwrap();
        let kws = keywords(&bp, "pat-00001");
        for k in [
            "type:Observation",
            "patient:pat-00001",
            "code:http://loinc.org|8480-6",
            "code:http://terminology.hl7.org/CodeSystem/observation-category|vital-signs",
            "practitioner:dr-heart",
        ] {
            assert!(kws.contains(k), "{k} missing from {kws:?}");
        }
        assert_eq!(kws.iter().filter(|k| k.starts_with("date:")).count(), 1);
        assert_eq!(kws.iter().filter(|k| k.starts_with("month:")).count(), 1);
        for k in &kws {
            check_keyword(k).unwrap();
        }
    }

    #[test]
    fn encounters_name_their_organization() {
        let mut synth = crate::synth::Generator::new(2);
        let p = synth.patient(1);
        let enc = p
            .resources
            .iter()
            .find(|r| r["resourceType"] == "Encounter")
            .unwrap();
        let kws = keywords(&ResourceView::from_value(enc.clone()).unwrap(), "pat-x");
        assert!(
            kws.iter().any(|k| k.starts_with("organization:")),
            "{kws:?}"
        );
        assert!(
            kws.iter().any(|k| k.starts_with("practitioner:")),
            "{kws:?}"
        );
    }

    #[test]
    fn queries_parse_and_ranges_expand() {
        let q = Query::parse("code:http://loinc.org|8480-6 AND type:Observation").unwrap();
        assert_eq!(q.groups.len(), 2);
        let q = Query::parse("date:2024-01-30..2024-03").unwrap();
        assert_eq!(
            q.groups[0],
            BTreeSet::from([
                "date:2024-01-30".to_string(),
                "date:2024-01-31".to_string(),
                "month:2024-02".to_string(),
                "month:2024-03".to_string(),
            ])
        );
        let leap = Query::parse("date:2024-02-28..2024-03-01").unwrap();
        assert_eq!(leap.groups[0].len(), 3);
        let years = Query::parse("date:2019-01..2025-12").unwrap();
        assert_eq!(years.groups[0].len(), 84);
        for bad in [
            "",
            "and",
            "type:Observation and",
            "type:Observation month:2024-01",
            "color:red",
            "date:2024-02-30",
            "month:2024-13",
            "date:2024-05..2024-01",
            "date:1900-01-01..2024-01-01",
            "type:",
        ] {
            assert!(Query::parse(bad).is_err(), "{bad}");
        }
    }
}
