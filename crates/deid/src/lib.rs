//! FHIR R4 de-identification: a profile of rules, each a selector and a
//! method, applied to resources as JSON, and a k-anonymity report.
//!
//! **Selectors.** `Type.path.to.element` (`Type` a resource type, or
//! `Resource` for any), or `nodesByType('T')` optionally followed by a path
//! below it (`nodesByType('Address').postalCode`). Arrays are transparent.
//! The types are recognised by shape, since resources are handled as JSON:
//! `HumanName` (objects with `family`/`given`/`text`/`prefix`/`suffix` under
//! a `name`), `ContactPoint` (under `telecom`), `Address` (under `address`),
//! `Identifier` (under `identifier`), `Attachment` (under `photo`,
//! `attachment`, `content`), `Narrative` (a `text` object with a `div`),
//! `Extension` (items of `extension`/`modifierExtension`), `Reference`
//! (objects with a `reference` string, or only reference fields and a
//! `display`) and `dateTime` (values of the FHIR
//! types date, dateTime and instant: strings shaped `YYYY-MM-DD...`, or
//! `YYYY`/`YYYY-MM` under an element named like a date).
//!
//! **Methods.** `redact`, `keep` (the element and everything below it as it
//! is), `cryptoHash` (HMAC-SHA256 under the profile key: stable, not
//! reversible without the key), `encrypt` (AES-SIV, deterministic and
//! reversible with the key), `dateShift` (a keyed per-patient offset of up to
//! `days`, so intervals within a patient are kept), `generalize` (`to =
//! "year"` with optional `collapse_over` for ages, `"prefix:N"`,
//! `"bucket:W"`), `perturb` (uniform noise within `bound`), `substitute`
//! (`value`). The first rule that matches an element decides; unmatched
//! elements follow the profile's `default` (`keep` or `redact`, the
//! resource's `resourceType` always kept). References follow the method of
//! the `Resource.id` rule, so links between exported resources stay
//! consistent.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod kanon;

use aes_siv::aead::{Aead, KeyInit};
use aes_siv::Aes256SivAead;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand_core::{OsRng, RngCore};
use serde::Deserialize;
use serde_json::Value;
use sha2::Sha256;
use zeroize::Zeroizing;

/// Why a profile or a resource was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DeidError {
    /// A profile that does not load.
    #[error("profile: {0}")]
    Profile(String),
    /// A resource that is not usable FHIR.
    #[error("{path}: {message}")]
    Resource {
        /// Where (e.g. `entry[3]` or a file line).
        path: String,
        /// What is wrong.
        message: String,
    },
    /// A profile that needs the project key, used without one.
    #[error("profile `{0}` uses keyed methods with the project key: give the key (--key-file)")]
    NeedsKey(String),
}

/// The shipped Safe Harbor profile.
pub const SAFE_HARBOR: &str = include_str!("../profiles/safe-harbor.toml");
/// The shipped pseudonymised research profile.
pub const RESEARCH_PSEUDONYMISED: &str = include_str!("../profiles/research-pseudonymised.toml");

/// A shipped profile by name.
pub fn shipped(name: &str) -> Option<&'static str> {
    match name {
        "safe-harbor" => Some(SAFE_HARBOR),
        "research-pseudonymised" => Some(RESEARCH_PSEUDONYMISED),
        _ => None,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileFile {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default = "default_keep")]
    default: String,
    #[serde(default = "default_project")]
    key: String,
    #[serde(default, rename = "rule")]
    rules: Vec<RuleFile>,
}

fn default_keep() -> String {
    "keep".into()
}
fn default_project() -> String {
    "project".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    select: String,
    method: String,
    to: Option<String>,
    collapse_over: Option<u32>,
    days: Option<u32>,
    bound: Option<f64>,
    value: Option<String>,
}

/// The types `nodesByType` knows.
const TYPES: &[&str] = &[
    "HumanName",
    "ContactPoint",
    "Address",
    "Identifier",
    "Attachment",
    "Narrative",
    "Extension",
    "Reference",
    "dateTime",
];

#[derive(Clone, Debug, PartialEq)]
enum Base {
    /// The resource root of this type (`Resource`: any).
    Root(String),
    /// Any node of this type (its bit in [`TYPES`]).
    Type(u16),
}

#[derive(Clone, Debug, PartialEq)]
enum Generalize {
    Year { collapse_over: Option<u32> },
    Prefix(usize),
    Bucket(f64),
}

#[derive(Clone, Debug, PartialEq)]
enum Method {
    Redact,
    Keep,
    CryptoHash,
    Encrypt,
    DateShift { days: u32 },
    Generalize(Generalize),
    Perturb { bound: f64 },
    Substitute(Value),
}

#[derive(Clone, Debug)]
struct Rule {
    base: Base,
    suffix: Vec<String>,
    /// `suffix` as ids in the profile's key vocabulary.
    suffix_ids: Vec<u16>,
    method: Method,
}

/// The key id of an element no rule names.
const OTHER_KEY: u16 = u16::MAX;

/// A loaded profile.
#[derive(Debug)]
pub struct Profile {
    /// Its name.
    pub name: String,
    /// What it does.
    pub description: String,
    default_redact: bool,
    ephemeral_key: bool,
    rules: Vec<Rule>,
    /// Every element name the rules' paths mention; its index is its id (a
    /// dozen names: a scan beats hashing).
    vocabulary: Vec<String>,
}

fn parse_selector(s: &str) -> Result<(Base, Vec<String>), String> {
    let (base, rest) = if let Some(tail) = s.strip_prefix("nodesByType('") {
        let (t, rest) = tail
            .split_once("')")
            .ok_or_else(|| format!("`{s}`: nodesByType('T') is not closed"))?;
        let t = TYPES
            .iter()
            .find(|x| **x == t)
            .ok_or_else(|| format!("`{s}`: unknown type `{t}`; known: {}", TYPES.join(", ")))?;
        (Base::Type(type_bit(t)), rest)
    } else {
        let (root, rest) = s.split_once('.').map_or((s, ""), |(a, b)| (a, b));
        if root.is_empty()
            || !root.chars().all(|c| c.is_ascii_alphabetic())
            || !root.starts_with(|c: char| c.is_ascii_uppercase())
        {
            return Err(format!(
                "`{s}`: a selector starts with a resource type (or Resource) or nodesByType('T')"
            ));
        }
        (
            Base::Root(root.to_string()),
            if rest.is_empty() { "" } else { rest },
        )
    };
    let rest = rest.strip_prefix('.').unwrap_or(rest);
    let suffix: Vec<String> = if rest.is_empty() {
        Vec::new()
    } else {
        rest.split('.').map(str::to_string).collect()
    };
    if suffix
        .iter()
        .any(|p| p.is_empty() || !p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
    {
        return Err(format!("`{s}`: path segments are element names"));
    }
    if matches!(base, Base::Root(_)) && suffix.is_empty() {
        return Err(format!("`{s}`: name an element below the resource"));
    }
    Ok((base, suffix))
}

fn parse_method(r: &RuleFile) -> Result<Method, String> {
    let need = |what: &str| format!("method `{}` needs `{what}`", r.method);
    Ok(match r.method.as_str() {
        "redact" => Method::Redact,
        "keep" => Method::Keep,
        "cryptoHash" => Method::CryptoHash,
        "encrypt" => Method::Encrypt,
        "dateShift" => Method::DateShift {
            days: r.days.ok_or_else(|| need("days"))?,
        },
        "generalize" => {
            let to = r.to.as_deref().ok_or_else(|| need("to"))?;
            Method::Generalize(if to == "year" {
                Generalize::Year {
                    collapse_over: r.collapse_over,
                }
            } else if let Some(n) = to.strip_prefix("prefix:") {
                Generalize::Prefix(n.parse().map_err(|_| format!("`to = {to}`: prefix:N"))?)
            } else if let Some(w) = to.strip_prefix("bucket:") {
                let w: f64 = w.parse().map_err(|_| format!("`to = {to}`: bucket:W"))?;
                if !(w > 0.0 && w.is_finite()) {
                    return Err(format!("`to = {to}`: a positive width"));
                }
                Generalize::Bucket(w)
            } else {
                return Err(format!("`to = {to}`: year, prefix:N or bucket:W"));
            })
        }
        "perturb" => {
            let bound = r.bound.ok_or_else(|| need("bound"))?;
            if !(bound > 0.0 && bound.is_finite()) {
                return Err("`bound` must be positive".into());
            }
            Method::Perturb { bound }
        }
        "substitute" => Method::Substitute(Value::String(
            r.value.clone().ok_or_else(|| need("value"))?,
        )),
        other => {
            return Err(format!(
                "unknown method `{other}`; methods: redact, keep, cryptoHash, encrypt, dateShift, generalize, perturb, substitute"
            ))
        }
    })
}

impl Profile {
    /// Loads a profile from TOML; unknown methods, bad selectors and missing
    /// parameters are refused with the rule's number.
    pub fn from_toml(text: &str) -> Result<Profile, DeidError> {
        let file: ProfileFile =
            toml::from_str(text).map_err(|e| DeidError::Profile(e.to_string()))?;
        let default_redact = match file.default.as_str() {
            "keep" => false,
            "redact" => true,
            other => {
                return Err(DeidError::Profile(format!(
                    "default must be keep or redact, not `{other}`"
                )))
            }
        };
        let ephemeral_key = match file.key.as_str() {
            "project" => false,
            "ephemeral" => true,
            other => {
                return Err(DeidError::Profile(format!(
                    "key must be project or ephemeral, not `{other}`"
                )))
            }
        };
        let rules = file
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let (base, suffix) = parse_selector(&r.select)?;
                Ok(Rule {
                    base,
                    suffix,
                    suffix_ids: Vec::new(),
                    method: parse_method(r)?,
                })
                .map_err(|e: String| format!("rule {}: {e}", i + 1))
            })
            .collect::<Result<Vec<_>, String>>()
            .map_err(DeidError::Profile)?;
        let mut vocabulary: Vec<String> = Vec::new();
        let mut rules = rules;
        for r in &mut rules {
            r.suffix_ids = r
                .suffix
                .iter()
                .map(|k| match vocabulary.iter().position(|v| v == k) {
                    Some(i) => i as u16,
                    None => {
                        vocabulary.push(k.clone());
                        (vocabulary.len() - 1) as u16
                    }
                })
                .collect();
        }
        Ok(Profile {
            name: file.name,
            description: file.description,
            default_redact,
            ephemeral_key,
            rules,
            vocabulary,
        })
    }

    fn keyed(&self) -> bool {
        self.rules.iter().any(|r| {
            matches!(
                r.method,
                Method::CryptoHash | Method::Encrypt | Method::DateShift { .. }
            )
        })
    }

    /// A de-identifier for this profile: `key` is the project key (32
    /// bytes); an ephemeral profile makes its own.
    pub fn deidentifier(&self, key: Option<&[u8; 32]>) -> Result<Deidentifier<'_>, DeidError> {
        let key = match (self.ephemeral_key, key) {
            (true, _) => {
                let mut k = Zeroizing::new([0u8; 32]);
                OsRng.fill_bytes(k.as_mut());
                k
            }
            (false, Some(k)) => Zeroizing::new(*k),
            (false, None) if !self.keyed() => Zeroizing::new([0u8; 32]),
            (false, None) => return Err(DeidError::NeedsKey(self.name.clone())),
        };
        let sub = |label: &[u8]| -> Zeroizing<Vec<u8>> {
            let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key.as_ref()).expect("any key");
            mac.update(b"asclepios deid v1 ");
            mac.update(label);
            Zeroizing::new(mac.finalize().into_bytes().to_vec())
        };
        let mut siv_key = Zeroizing::new([0u8; 64]);
        siv_key[..32].copy_from_slice(&sub(b"siv 1"));
        siv_key[32..].copy_from_slice(&sub(b"siv 2"));
        let id_method = self
            .rules
            .iter()
            .find(|r| r.base == Base::Root("Resource".into()) && r.suffix == ["id"])
            .map(|r| r.method.clone());
        Ok(Deidentifier {
            profile: self,
            hash_mac: <Hmac<Sha256> as Mac>::new_from_slice(&sub(b"hash")).expect("any key"),
            shift_mac: <Hmac<Sha256> as Mac>::new_from_slice(&sub(b"shift")).expect("any key"),
            pseudonyms: Default::default(),
            siv: Aes256SivAead::new_from_slice(siv_key.as_ref()).expect("64-byte key"),
            id_method,
        })
    }
}

/// A profile with its keys, ready to apply.
pub struct Deidentifier<'p> {
    profile: &'p Profile,
    /// HMAC-SHA256 keyed once (cloned per use: the key is not hashed again).
    hash_mac: Hmac<Sha256>,
    shift_mac: Hmac<Sha256>,
    /// Pseudonyms already made: ids recur in every reference to them.
    pseudonyms: std::cell::RefCell<std::collections::HashMap<String, String>>,
    siv: Aes256SivAead,
    id_method: Option<Method>,
}

impl std::fmt::Debug for Deidentifier<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Deidentifier({}, <keys redacted>)", self.profile.name)
    }
}

/// What one node is, for matching: its key (as a vocabulary id) and its
/// types (bits in [`TYPES`]).
#[derive(Clone, Copy)]
struct Node {
    key: u16,
    types: u16,
}

fn type_bit(t: &str) -> u16 {
    TYPES.iter().position(|x| *x == t).map_or(0, |i| 1 << i)
}

fn is_date_shape(s: &str, key: &str) -> bool {
    let b = s.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|x| x.iter().all(u8::is_ascii_digit));
    let full = b.len() >= 10
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10);
    let partial = (b.len() == 4 && digits(0..4))
        || (b.len() == 7 && digits(0..4) && b[4] == b'-' && digits(5..7));
    let date_key = key.ends_with("Date")
        || key.ends_with("DateTime")
        || key == "date"
        || key == "start"
        || key == "end"
        || key == "issued"
        || key == "recorded";
    full || (partial && date_key)
}

fn types_of(key: &str, v: &Value, in_extension_array: bool) -> u16 {
    let mut bits = 0u16;
    let mut t = |name: &str| bits |= type_bit(name);
    match v {
        Value::Object(o) => {
            let has = |k: &str| o.contains_key(k);
            if key == "name"
                && ["family", "given", "text", "prefix", "suffix"]
                    .iter()
                    .any(|k| has(k))
            {
                t("HumanName");
            }
            if key == "telecom" {
                t("ContactPoint");
            }
            if key == "address" {
                t("Address");
            }
            if key == "identifier" {
                t("Identifier");
            }
            if ["photo", "attachment", "content"].contains(&key)
                && ["contentType", "data", "url", "title"]
                    .iter()
                    .any(|k| has(k))
            {
                t("Attachment");
            }
            if key == "text" && has("div") {
                t("Narrative");
            }
            if in_extension_array {
                t("Extension");
            }
            // A Reference: a `reference` string, or only reference fields
            // with a `display` (e.g. `{"display": "Grahame's Laptop"}`).
            let reference_fields = [
                "reference",
                "display",
                "identifier",
                "type",
                "id",
                "extension",
            ];
            if o.get("reference").is_some_and(Value::is_string)
                || (has("display") && o.keys().all(|k| reference_fields.contains(&k.as_str())))
            {
                t("Reference");
            }
        }
        Value::String(s) if is_date_shape(s, key) => t("dateTime"),
        _ => {}
    }
    bits
}

impl Deidentifier<'_> {
    /// De-identifies one resource; `where_` names it in errors.
    pub fn apply(&self, resource: &Value, where_: &str) -> Result<Value, DeidError> {
        let mut out = resource.clone();
        self.apply_in_place(&mut out, where_)?;
        Ok(out)
    }

    /// De-identifies one resource in place (no copy of what stays).
    pub fn apply_in_place(&self, resource: &mut Value, where_: &str) -> Result<(), DeidError> {
        asclepios_fhir::ResourceView::check(resource).map_err(|e| DeidError::Resource {
            path: where_.to_string(),
            message: e.to_string(),
        })?;
        let rtype = resource["resourceType"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let patient: Option<String> = match rtype.as_str() {
            "Patient" => resource["id"].as_str().map(str::to_string),
            _ => ["subject", "patient", "beneficiary"]
                .iter()
                .find_map(|k| resource.get(k)?.get("reference")?.as_str())
                .and_then(|r| r.rsplit('/').next())
                .map(str::to_string),
        };
        let ctx = Ctx {
            rtype: &rtype,
            patient: patient.as_deref(),
        };
        let obj = resource.as_object_mut().expect("checked above");
        let mut removed = Vec::new();
        let mut stack = Vec::with_capacity(16);
        for (k, v) in obj.iter_mut() {
            if k == "resourceType" {
                continue;
            }
            stack.clear();
            stack.push(Node {
                key: self.key_id(k),
                types: types_of(k, v, false),
            });
            if !self.visit(v, k, &mut stack, &ctx) {
                removed.push(k.clone());
            }
        }
        for k in removed {
            obj.remove(&k);
        }
        Ok(())
    }

    fn key_id(&self, k: &str) -> u16 {
        self.profile
            .vocabulary
            .iter()
            .position(|v| v == k)
            .map_or(OTHER_KEY, |i| i as u16)
    }

    /// The first rule matching the node on top of `stack`.
    fn rule_for(&self, stack: &[Node], ctx: &Ctx<'_>) -> Option<&Rule> {
        // Every rule ends in a named element or a type: a node with neither
        // (most of them) matches none.
        let top = stack.last()?;
        if top.key == OTHER_KEY && top.types == 0 {
            return None;
        }
        self.profile.rules.iter().find(|r| {
            let k = r.suffix_ids.len();
            let depth = stack.len();
            let keys_match =
                |nodes: &[Node]| nodes.iter().zip(&r.suffix_ids).all(|(n, s)| n.key == *s);
            match &r.base {
                Base::Root(t) => {
                    (t == "Resource" || t == ctx.rtype) && depth == k && keys_match(stack)
                }
                Base::Type(t) => {
                    depth > k
                        && stack[depth - 1 - k].types & t != 0
                        && keys_match(&stack[depth - k..])
                }
            }
        })
    }

    /// Applies the first matching rule to `v`, or visits below it; whether
    /// `v` stays.
    fn visit(&self, v: &mut Value, key: &str, stack: &mut Vec<Node>, ctx: &Ctx<'_>) -> bool {
        match self.rule_for(stack, ctx) {
            Some(rule) => self.transform(&rule.method, v, key, ctx),
            None => self.visit_children(v, key, stack, ctx),
        }
    }

    /// Below a node no rule matched.
    fn visit_children(
        &self,
        v: &mut Value,
        key: &str,
        stack: &mut Vec<Node>,
        ctx: &Ctx<'_>,
    ) -> bool {
        match v {
            Value::Object(o) => {
                let mut removed = Vec::new();
                for (k, child) in o.iter_mut() {
                    stack.push(Node {
                        key: self.key_id(k),
                        types: types_of(k, child, false),
                    });
                    let keep = match self.rule_for(stack, ctx) {
                        Some(rule) => self.transform(&rule.method, child, k, ctx),
                        // A reference's target follows the id rule.
                        None if k == "reference" && child.is_string() => {
                            match self.reference(child) {
                                Some(nv) => {
                                    *child = nv;
                                    true
                                }
                                None => false,
                            }
                        }
                        None => self.visit_children(child, k, stack, ctx),
                    };
                    stack.pop();
                    if !keep {
                        removed.push(k.clone());
                    }
                }
                for k in removed {
                    o.remove(&k);
                }
                !o.is_empty()
            }
            Value::Array(items) => {
                let top = stack.pop().expect("an array has a key");
                let extension = key == "extension" || key == "modifierExtension";
                items.retain_mut(|item| {
                    // Array items stand in their array's place.
                    stack.push(Node {
                        key: top.key,
                        types: types_of(key, item, extension),
                    });
                    let keep = self.visit(item, key, stack, ctx);
                    stack.pop();
                    keep
                });
                stack.push(top);
                !items.is_empty()
            }
            _ => !self.profile.default_redact,
        }
    }

    /// Applies a method to a node in place; whether it stays.
    fn transform(&self, m: &Method, v: &mut Value, key: &str, ctx: &Ctx<'_>) -> bool {
        match m {
            Method::Redact => false,
            Method::Keep => true,
            _ => match self.method(m, v, key, ctx) {
                Some(nv) => {
                    *v = nv;
                    true
                }
                None => false,
            },
        }
    }

    /// `Type/id` with the id transformed as the `Resource.id` rule says.
    fn reference(&self, v: &Value) -> Option<Value> {
        let s = v.as_str()?;
        match &self.id_method {
            None | Some(Method::Keep) => Some(v.clone()),
            Some(Method::Redact) => None,
            Some(m) => {
                if s.starts_with('#') {
                    return Some(v.clone());
                }
                let (prefix, id) = s.rsplit_once('/')?;
                let new_id = self.method(
                    m,
                    &Value::String(id.to_string()),
                    "id",
                    &Ctx {
                        rtype: "",
                        patient: None,
                    },
                )?;
                Some(Value::String(format!("{prefix}/{}", new_id.as_str()?)))
            }
        }
    }

    fn pseudonym(&self, s: &str) -> String {
        if let Some(p) = self.pseudonyms.borrow().get(s) {
            return p.clone();
        }
        let p = self.make_pseudonym(s);
        let mut cache = self.pseudonyms.borrow_mut();
        if cache.len() < 1 << 20 {
            cache.insert(s.to_string(), p.clone());
        }
        p
    }

    fn make_pseudonym(&self, s: &str) -> String {
        let mut mac = self.hash_mac.clone();
        mac.update(s.as_bytes());
        // 128 bits in hex: within FHIR's id alphabet, one allocation.
        hex::encode(&mac.finalize().into_bytes()[..16])
    }

    fn method(&self, m: &Method, v: &Value, key: &str, ctx: &Ctx<'_>) -> Option<Value> {
        match (m, v) {
            (Method::Redact, _) => None,
            (Method::Keep, _) => Some(v.clone()),
            (Method::CryptoHash, Value::String(s)) => Some(Value::String(self.pseudonym(s))),
            (Method::Encrypt, Value::String(s)) => {
                let ct = self.siv.encrypt(&Default::default(), s.as_bytes()).ok()?;
                Some(Value::String(format!("enc.{}", B64URL.encode(ct))))
            }
            (Method::CryptoHash | Method::Encrypt, Value::Object(o)) => {
                // An Identifier or ContactPoint: its value.
                let mut o = o.clone();
                let inner = o.get("value").cloned()?;
                o.insert("value".into(), self.method(m, &inner, "value", ctx)?);
                Some(Value::Object(o))
            }
            (Method::DateShift { days }, Value::String(s)) => {
                let offset = self.offset(ctx.patient, *days);
                Some(Value::String(shift_date(s, offset)?))
            }
            (Method::Generalize(g), _) => generalize(g, v, key),
            (Method::Perturb { bound }, Value::Number(n)) => {
                let x = n.as_f64()?;
                let u = (OsRng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
                let noisy = x + (2.0 * u - 1.0) * bound;
                serde_json::Number::from_f64((noisy * 1e6).round() / 1e6).map(Value::Number)
            }
            (Method::Substitute(value), _) => Some(value.clone()),
            // A method that does not apply to this kind of value removes it:
            // never pass through what a rule meant to change.
            _ => None,
        }
    }

    /// The patient's date offset in days, in `[-days, days]`, never 0.
    fn offset(&self, patient: Option<&str>, days: u32) -> i64 {
        let mut mac = self.shift_mac.clone();
        mac.update(patient.unwrap_or("").as_bytes());
        let h = u64::from_be_bytes(
            mac.finalize().into_bytes()[..8]
                .try_into()
                .expect("8 bytes"),
        );
        let days = i64::from(days.max(1));
        let o = (h % (2 * days as u64 + 1)) as i64 - days;
        if o == 0 {
            days
        } else {
            o
        }
    }
}

struct Ctx<'a> {
    rtype: &'a str,
    patient: Option<&'a str>,
}

/// Days since 1970-01-01 of a civil date (proleptic Gregorian).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Shifts a FHIR date, dateTime or instant by `days`, keeping its precision
/// (a year or a month moves by the nearest whole year or month).
fn shift_date(s: &str, days: i64) -> Option<String> {
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    match s.len() {
        4 => Some(format!(
            "{:04}",
            num(0..4)? + (days as f64 / 365.25).round() as i64
        )),
        7 => {
            let months = num(0..4)? * 12 + num(5..7)? - 1 + (days as f64 / 30.44).round() as i64;
            Some(format!(
                "{:04}-{:02}",
                months.div_euclid(12),
                months.rem_euclid(12) + 1
            ))
        }
        n if n >= 10 => {
            let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
            let (y, m, d) = civil_from_days(days_from_civil(y, m, d) + days);
            Some(format!("{y:04}-{m:02}-{d:02}{}", &s[10..]))
        }
        _ => None,
    }
}

fn generalize(g: &Generalize, v: &Value, key: &str) -> Option<Value> {
    match (g, v) {
        (Generalize::Year { collapse_over }, Value::String(s)) => {
            let year: i64 = s.get(..4)?.parse().ok()?;
            let year = match collapse_over {
                // Safe Harbor: every age over the limit is one group, dated
                // at the limit + 1 years before now.
                Some(limit) if key == "birthDate" => {
                    year.max(current_year() - i64::from(*limit) - 1)
                }
                _ => year,
            };
            Some(Value::String(format!("{year:04}")))
        }
        (Generalize::Prefix(n), Value::String(s)) => {
            Some(Value::String(s.chars().take(*n).collect()))
        }
        (Generalize::Bucket(w), Value::Number(n)) => {
            let x = n.as_f64()?;
            serde_json::Number::from_f64((x / w).floor() * w).map(Value::Number)
        }
        _ => None,
    }
}

fn current_year() -> i64 {
    let days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64 / 86_400);
    civil_from_days(days).0
}

/// Every string in a JSON value (for leak scans).
pub fn strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
        Value::Object(o) => o.values().for_each(|x| strings(x, out)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip_through_day_numbers() {
        for (y, m, d) in [(1970, 1, 1), (2024, 2, 29), (1900, 3, 1), (2000, 12, 31)] {
            assert_eq!(civil_from_days(days_from_civil(y, m, d)), (y, m, d));
        }
        assert_eq!(shift_date("2024-02-28", 2).as_deref(), Some("2024-03-01"));
        assert_eq!(
            shift_date("2024-03-01T10:00:00Z", -1).as_deref(),
            Some("2024-02-29T10:00:00Z")
        );
        assert_eq!(shift_date("2024-12", 31).as_deref(), Some("2025-01"));
        assert_eq!(shift_date("2024", 400).as_deref(), Some("2025"));
    }

    #[test]
    fn profiles_load_and_bad_ones_are_refused() {
        Profile::from_toml(SAFE_HARBOR).unwrap();
        Profile::from_toml(RESEARCH_PSEUDONYMISED).unwrap();
        for (bad, why) in [
            (
                "name='x'\n[[rule]]\nselect='Patient.name'\nmethod='shred'",
                "unknown method",
            ),
            (
                "name='x'\n[[rule]]\nselect='patient.name'\nmethod='redact'",
                "starts with",
            ),
            (
                "name='x'\n[[rule]]\nselect=\"nodesByType('Foo')\"\nmethod='redact'",
                "unknown type",
            ),
            (
                "name='x'\n[[rule]]\nselect='Patient.birthDate'\nmethod='generalize'",
                "needs `to`",
            ),
            (
                "name='x'\n[[rule]]\nselect='Patient'\nmethod='redact'",
                "name an element",
            ),
            ("name='x'\ndefault='hide'", "default must be"),
            ("name='x'\ncolour='red'", "unknown field"),
        ] {
            let e = Profile::from_toml(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
