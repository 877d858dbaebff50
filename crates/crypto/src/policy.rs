//! Access policies: a small, human-readable language over namespaced attributes.
//!
//! ```text
//! (role:doctor and dept:cardiology) or patient:7f3a or 2 of (role:nurse, ward:icu, shift:night)
//! ```
//!
//! Grammar (keywords are case-insensitive, `and` binds tighter than `or`):
//!
//! ```text
//! policy    := or_expr
//! or_expr   := and_expr ("or" and_expr)*
//! and_expr  := term ("and" term)*
//! term      := "(" or_expr ")" | threshold | attribute
//! threshold := NUMBER "of" "(" or_expr ("," or_expr)* ")"
//! attribute := [A-Za-z0-9:._@/-]+ | '"' (any char, with \" and \\ escaped) '"'
//! ```
//!
//! A chain `a and b and c` becomes one n-ary gate; a parenthesised group stays a
//! node of its own, so [`Policy::to_string`] followed by [`Policy::parse`] gives back
//! exactly the same tree. Attributes are compared byte for byte (case-sensitive).

use std::fmt;

/// Longest accepted policy text, in bytes.
pub const MAX_POLICY_BYTES: usize = 64 * 1024;
/// Most attribute occurrences (leaves) in one policy. Each leaf is one LSSS row,
/// which costs six hashes and six scalar multiplications at encryption.
pub const MAX_LEAVES: usize = 256;
/// Deepest nesting of gates.
pub const MAX_DEPTH: usize = 16;
/// Longest attribute, in bytes.
pub const MAX_ATTRIBUTE_BYTES: usize = 256;
/// Most occurrences of one attribute in a policy. FAME is only secure when each
/// span-program row has its own attribute label (two rows with the same label
/// leak the difference of their rows), so the `k`-th occurrence of `y` is
/// encrypted under the label `(y, k)` and user keys carry components for
/// `k = 1..=MAX_REPETITIONS` (the standard "attribute copies" technique).
pub const MAX_REPETITIONS: usize = 4;

/// An attribute as keys and policies carry it at `version`: the bare name at
/// version 0, `name@vN` after N revocations of it.
pub fn versioned_attribute(attribute: &str, version: u64) -> String {
    if version == 0 {
        attribute.to_string()
    } else {
        format!("{attribute}@v{version}")
    }
}

/// An attribute's name without its version suffix (`role:doctor@v2` ->
/// `role:doctor`).
pub fn attribute_name(attribute: &str) -> &str {
    attribute
        .split_once("@v")
        .map_or(attribute, |(name, _)| name)
}

/// The version of a versioned attribute (`care-team:pat-1@v3` → 3); 0 for
/// an attribute without one (never revoked).
pub fn attribute_version(attribute: &str) -> u64 {
    attribute
        .split_once("@v")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// A node of a policy tree.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum Node {
    /// An attribute the key must hold.
    Attr(String),
    /// All children must be satisfied (at least two children).
    And(Vec<Node>),
    /// At least one child must be satisfied (at least two children).
    Or(Vec<Node>),
    /// At least `k` of the children must be satisfied (`1 <= k <= n`).
    Threshold(usize, Vec<Node>),
}

/// A validated access policy.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Policy {
    root: Node,
}

/// Why a policy was refused.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
pub enum PolicyError {
    /// The text does not follow the grammar.
    #[error("policy syntax error at column {column}: expected {expected}, found {found}")]
    Syntax {
        /// 1-based column (in characters) where the problem starts.
        column: usize,
        /// What the parser was looking for.
        expected: String,
        /// What it found instead.
        found: String,
    },
    /// A structural rule is broken (threshold out of range, gate too small, ...).
    #[error("invalid policy: {0}")]
    Invalid(String),
    /// A size limit is exceeded.
    #[error("policy too large: {0}")]
    TooLarge(String),
}

impl Policy {
    /// Parses the policy text, enforcing the grammar and the size limits.
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        if text.len() > MAX_POLICY_BYTES {
            return Err(PolicyError::TooLarge(format!(
                "{} bytes of text, at most {MAX_POLICY_BYTES} allowed",
                text.len()
            )));
        }
        let tokens = lex(text)?;
        let mut parser = Parser {
            tokens,
            pos: 0,
            end_column: text.chars().count() + 1,
        };
        let root = parser.or_expr(1)?;
        if let Some(tok) = parser.peek() {
            return Err(PolicyError::Syntax {
                column: tok.column,
                expected: "`and`, `or` or the end of the policy".into(),
                found: tok.kind.describe(),
            });
        }
        Self::new(root)
    }

    /// Builds a policy from a tree, checking the structural rules and limits.
    pub fn new(root: Node) -> Result<Self, PolicyError> {
        let mut leaves = 0;
        validate(&root, 1, &mut leaves)?;
        let policy = Self { root };
        if let Some((a, _)) = policy
            .occurrences()
            .into_iter()
            .find(|(_, k)| *k > MAX_REPETITIONS)
        {
            return Err(PolicyError::TooLarge(format!(
                "attribute `{a}` appears more than {MAX_REPETITIONS} times"
            )));
        }
        Ok(policy)
    }

    /// A policy from a tree, checked like parsed text (it is printed and
    /// parsed again, so every rule and limit applies).
    pub fn from_root(root: Node) -> Result<Self, PolicyError> {
        Policy::parse(&Policy { root }.to_string())
    }

    /// The root of the policy tree.
    pub fn root(&self) -> &Node {
        &self.root
    }

    /// This policy with every attribute at the version `version_of` gives
    /// for its name (`name@vN`, or the bare name at version 0): how a policy
    /// is resolved against a directory before sealing or checking.
    pub fn at_versions(&self, version_of: &dyn Fn(&str) -> u64) -> Result<Policy, PolicyError> {
        fn walk(node: &Node, version_of: &dyn Fn(&str) -> u64) -> Node {
            let all = |c: &[Node]| c.iter().map(|n| walk(n, version_of)).collect();
            match node {
                Node::Attr(a) => {
                    let name = attribute_name(a);
                    Node::Attr(versioned_attribute(name, version_of(name)))
                }
                Node::And(c) => Node::And(all(c)),
                Node::Or(c) => Node::Or(all(c)),
                Node::Threshold(k, c) => Node::Threshold(*k, all(c)),
            }
        }
        Policy::from_root(walk(&self.root, version_of))
    }

    /// Number of attribute occurrences (LSSS rows).
    pub fn leaf_count(&self) -> usize {
        count_leaves(&self.root)
    }

    /// Attribute occurrences in left-to-right order; index `i` is LSSS row `i`.
    pub fn leaves(&self) -> Vec<&str> {
        let mut out = Vec::new();
        collect_leaves(&self.root, &mut out);
        out
    }

    /// For each leaf, its attribute and occurrence number (1-based: the
    /// `k`-th time this attribute appears, left to right).
    pub fn occurrences(&self) -> Vec<(&str, usize)> {
        let mut seen: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
        self.leaves()
            .into_iter()
            .map(|a| {
                let k = seen.entry(a).or_insert(0);
                *k += 1;
                (a, *k)
            })
            .collect()
    }

    /// Plain boolean evaluation: does a holder of `has` satisfy the policy?
    pub fn is_satisfied_by(&self, has: &dyn Fn(&str) -> bool) -> bool {
        eval(&self.root, has)
    }
}

fn count_leaves(node: &Node) -> usize {
    match node {
        Node::Attr(_) => 1,
        Node::And(c) | Node::Or(c) | Node::Threshold(_, c) => c.iter().map(count_leaves).sum(),
    }
}

fn collect_leaves<'a>(node: &'a Node, out: &mut Vec<&'a str>) {
    match node {
        Node::Attr(a) => out.push(a),
        Node::And(c) | Node::Or(c) | Node::Threshold(_, c) => {
            c.iter().for_each(|n| collect_leaves(n, out))
        }
    }
}

fn eval(node: &Node, has: &dyn Fn(&str) -> bool) -> bool {
    match node {
        Node::Attr(a) => has(a),
        Node::And(c) => c.iter().all(|n| eval(n, has)),
        Node::Or(c) => c.iter().any(|n| eval(n, has)),
        Node::Threshold(k, c) => c.iter().filter(|n| eval(n, has)).count() >= *k,
    }
}

fn validate(node: &Node, depth: usize, leaves: &mut usize) -> Result<(), PolicyError> {
    if depth > MAX_DEPTH {
        return Err(PolicyError::TooLarge(format!(
            "nesting deeper than {MAX_DEPTH} levels"
        )));
    }
    match node {
        Node::Attr(a) => {
            *leaves += 1;
            if *leaves > MAX_LEAVES {
                return Err(PolicyError::TooLarge(format!(
                    "more than {MAX_LEAVES} attribute occurrences"
                )));
            }
            check_attribute(a)
        }
        Node::And(c) | Node::Or(c) => {
            if c.len() < 2 {
                return Err(PolicyError::Invalid(
                    "`and` and `or` need at least two operands".into(),
                ));
            }
            c.iter().try_for_each(|n| validate(n, depth + 1, leaves))
        }
        Node::Threshold(k, c) => {
            if c.is_empty() || *k == 0 || *k > c.len() {
                return Err(PolicyError::Invalid(format!(
                    "threshold `{k} of` a list of {}: k must be between 1 and the list's length",
                    c.len()
                )));
            }
            c.iter().try_for_each(|n| validate(n, depth + 1, leaves))
        }
    }
}

/// Checks one attribute name against the length limit. Any non-empty string
/// without control characters is allowed (the quoted form carries the rest).
pub fn check_attribute(a: &str) -> Result<(), PolicyError> {
    if a.is_empty() {
        return Err(PolicyError::Invalid("empty attribute".into()));
    }
    if a.len() > MAX_ATTRIBUTE_BYTES {
        return Err(PolicyError::TooLarge(format!(
            "attribute of {} bytes, at most {MAX_ATTRIBUTE_BYTES} allowed",
            a.len()
        )));
    }
    if a.chars().any(char::is_control) {
        return Err(PolicyError::Invalid(
            "attributes may not contain control characters".into(),
        ));
    }
    Ok(())
}

fn is_bare_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, ':' | '.' | '_' | '@' | '/' | '-')
}

fn is_keyword(word: &str) -> bool {
    ["and", "or", "of"]
        .iter()
        .any(|k| word.eq_ignore_ascii_case(k))
}

/// Writes an attribute bare when it can be read back bare, quoted otherwise.
fn write_attr(f: &mut fmt::Formatter<'_>, a: &str) -> fmt::Result {
    if a.chars().all(is_bare_char) && !a.is_empty() && !is_keyword(a) {
        f.write_str(a)
    } else {
        f.write_str("\"")?;
        for c in a.chars() {
            if c == '"' || c == '\\' {
                f.write_str("\\")?;
            }
            write!(f, "{c}")?;
        }
        f.write_str("\"")
    }
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Compound operands of `and`/`or` are always parenthesised: that keeps the
        // tree shape on a round trip and never relies on precedence when read.
        fn operand(f: &mut fmt::Formatter<'_>, n: &Node) -> fmt::Result {
            match n {
                Node::And(_) | Node::Or(_) => write!(f, "({n})"),
                _ => write!(f, "{n}"),
            }
        }
        match self {
            Node::Attr(a) => write_attr(f, a),
            Node::And(c) | Node::Or(c) => {
                let op = if matches!(self, Node::And(_)) {
                    " and "
                } else {
                    " or "
                };
                for (i, n) in c.iter().enumerate() {
                    if i > 0 {
                        f.write_str(op)?;
                    }
                    operand(f, n)?;
                }
                Ok(())
            }
            Node::Threshold(k, c) => {
                write!(f, "{k} of (")?;
                for (i, n) in c.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{n}")?;
                }
                f.write_str(")")
            }
        }
    }
}

impl fmt::Display for Policy {
    /// The canonical form: `Policy::parse(&p.to_string()) == Ok(p)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.root.fmt(f)
    }
}

impl std::str::FromStr for Policy {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[derive(Clone, Debug, PartialEq)]
enum TokenKind {
    Word(String),
    Quoted(String),
    LParen,
    RParen,
    Comma,
}

impl TokenKind {
    fn describe(&self) -> String {
        match self {
            TokenKind::Word(w) => format!("`{w}`"),
            TokenKind::Quoted(q) => format!("quoted attribute \"{q}\""),
            TokenKind::LParen => "`(`".into(),
            TokenKind::RParen => "`)`".into(),
            TokenKind::Comma => "`,`".into(),
        }
    }

    fn is_keyword(&self, kw: &str) -> bool {
        matches!(self, TokenKind::Word(w) if w.eq_ignore_ascii_case(kw))
    }
}

#[derive(Clone, Debug)]
struct Token {
    kind: TokenKind,
    column: usize,
}

fn lex(text: &str) -> Result<Vec<Token>, PolicyError> {
    let mut tokens = Vec::new();
    let mut chars = text.chars().enumerate().peekable();
    while let Some((i, c)) = chars.next() {
        let column = i + 1;
        let kind = match c {
            c if c.is_whitespace() => continue,
            '(' => TokenKind::LParen,
            ')' => TokenKind::RParen,
            ',' => TokenKind::Comma,
            '"' => {
                let mut s = String::new();
                loop {
                    match chars.next() {
                        None => {
                            return Err(PolicyError::Syntax {
                                column,
                                expected: "a closing `\"` for this quoted attribute".into(),
                                found: "the end of the policy".into(),
                            })
                        }
                        Some((_, '"')) => break,
                        Some((j, '\\')) => match chars.next() {
                            Some((_, e @ ('"' | '\\'))) => s.push(e),
                            other => {
                                return Err(PolicyError::Syntax {
                                    column: j + 1,
                                    expected: "`\\\"` or `\\\\` (the only escapes)".into(),
                                    found: other
                                        .map_or("the end of the policy".into(), |(_, c)| {
                                            format!("`\\{c}`")
                                        }),
                                })
                            }
                        },
                        Some((_, ch)) => s.push(ch),
                    }
                }
                TokenKind::Quoted(s)
            }
            c if is_bare_char(c) => {
                let mut s = String::from(c);
                while let Some(&(_, n)) = chars.peek() {
                    if !is_bare_char(n) {
                        break;
                    }
                    s.push(n);
                    chars.next();
                }
                TokenKind::Word(s)
            }
            other => {
                return Err(PolicyError::Syntax {
                    column,
                    expected: "an attribute, `(`, or a threshold like `2 of (...)`; \
                               quote attributes with other characters"
                        .into(),
                    found: format!("`{other}`"),
                })
            }
        };
        tokens.push(Token { kind, column });
    }
    Ok(tokens)
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    /// Column just past the last character, reported for "unexpected end".
    end_column: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn found(&self) -> (usize, String) {
        match self.peek() {
            Some(t) => (t.column, t.kind.describe()),
            None => (self.end_column, "the end of the policy".into()),
        }
    }

    fn error(&self, expected: &str) -> PolicyError {
        let (column, found) = self.found();
        PolicyError::Syntax {
            column,
            expected: expected.into(),
            found,
        }
    }

    fn eat_keyword(&mut self, kw: &str) -> bool {
        if self.peek().is_some_and(|t| t.kind.is_keyword(kw)) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, kind: &TokenKind, what: &str) -> Result<(), PolicyError> {
        if self.peek().is_some_and(|t| &t.kind == kind) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.error(what))
        }
    }

    fn or_expr(&mut self, depth: usize) -> Result<Node, PolicyError> {
        let mut items = vec![self.and_expr(depth)?];
        while self.eat_keyword("or") {
            items.push(self.and_expr(depth)?);
        }
        Ok(if items.len() == 1 {
            items.pop().expect("one item")
        } else {
            Node::Or(items)
        })
    }

    fn and_expr(&mut self, depth: usize) -> Result<Node, PolicyError> {
        let mut items = vec![self.term(depth)?];
        while self.eat_keyword("and") {
            items.push(self.term(depth)?);
        }
        Ok(if items.len() == 1 {
            items.pop().expect("one item")
        } else {
            Node::And(items)
        })
    }

    fn term(&mut self, depth: usize) -> Result<Node, PolicyError> {
        // Bound recursion before descending: deeply nested input must not
        // overflow the stack.
        if depth > MAX_DEPTH + 1 {
            let (column, _) = self.found();
            return Err(PolicyError::TooLarge(format!(
                "nesting deeper than {MAX_DEPTH} levels at column {column}"
            )));
        }
        let Some(tok) = self.peek().cloned() else {
            return Err(self.error("an attribute, `(` or a threshold like `2 of (...)`"));
        };
        match tok.kind {
            TokenKind::LParen => {
                self.pos += 1;
                let inner = self.or_expr(depth + 1)?;
                self.expect(&TokenKind::RParen, "`)`, `and` or `or`")?;
                Ok(inner)
            }
            TokenKind::Quoted(s) => {
                self.pos += 1;
                Ok(Node::Attr(s))
            }
            TokenKind::Word(w) => {
                let next_is_of = self
                    .tokens
                    .get(self.pos + 1)
                    .is_some_and(|t| t.kind.is_keyword("of"));
                if next_is_of && w.bytes().all(|b| b.is_ascii_digit()) {
                    self.pos += 2;
                    let k: usize = w.parse().map_err(|_| PolicyError::Syntax {
                        column: tok.column,
                        expected: format!("a threshold between 1 and {MAX_LEAVES}"),
                        found: format!("`{w}`"),
                    })?;
                    self.expect(&TokenKind::LParen, "`(` after `of`")?;
                    let mut items = vec![self.or_expr(depth + 1)?];
                    loop {
                        if self.peek().is_some_and(|t| t.kind == TokenKind::Comma) {
                            self.pos += 1;
                            items.push(self.or_expr(depth + 1)?);
                        } else {
                            self.expect(&TokenKind::RParen, "`,` or `)` in the threshold list")?;
                            break;
                        }
                    }
                    if k == 0 || k > items.len() {
                        return Err(PolicyError::Invalid(format!(
                            "threshold at column {}: `{k} of` a list of {} is never satisfiable \
                             or trivial; k must be between 1 and {}",
                            tok.column,
                            items.len(),
                            items.len()
                        )));
                    }
                    Ok(Node::Threshold(k, items))
                } else if is_keyword(&w) {
                    Err(PolicyError::Syntax {
                        column: tok.column,
                        expected: "an attribute (quote it if it really is named like a keyword)"
                            .into(),
                        found: format!("keyword `{w}`"),
                    })
                } else {
                    self.pos += 1;
                    Ok(Node::Attr(w))
                }
            }
            _ => Err(self.error("an attribute, `(` or a threshold like `2 of (...)`")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(a: &str) -> Node {
        Node::Attr(a.into())
    }

    #[test]
    fn parses_the_example() {
        let p = Policy::parse(
            "(role:doctor and dept:cardiology) or patient:7f3a or 2 of (role:nurse, ward:icu, shift:night)",
        )
        .unwrap();
        assert_eq!(
            p.root(),
            &Node::Or(vec![
                Node::And(vec![attr("role:doctor"), attr("dept:cardiology")]),
                attr("patient:7f3a"),
                Node::Threshold(
                    2,
                    vec![attr("role:nurse"), attr("ward:icu"), attr("shift:night")]
                ),
            ])
        );
        assert_eq!(
            p.to_string(),
            "(role:doctor and dept:cardiology) or patient:7f3a or 2 of (role:nurse, ward:icu, shift:night)"
        );
    }

    #[test]
    fn and_binds_tighter_than_or_and_keywords_are_case_insensitive() {
        let p = Policy::parse("a OR b And c").unwrap();
        assert_eq!(
            p.root(),
            &Node::Or(vec![attr("a"), Node::And(vec![attr("b"), attr("c")])])
        );
    }

    #[test]
    fn parentheses_keep_structure() {
        let p = Policy::parse("a and (b and c)").unwrap();
        assert_eq!(
            p.root(),
            &Node::And(vec![attr("a"), Node::And(vec![attr("b"), attr("c")])])
        );
        assert_eq!(Policy::parse(&p.to_string()).unwrap(), p);
    }

    #[test]
    fn quoted_attributes_round_trip() {
        let p = Policy::parse(r#""name:Jane \"J\" Doe" and "and" and "x\\y""#).unwrap();
        assert_eq!(p.leaves(), vec!["name:Jane \"J\" Doe", "and", "x\\y"]);
        assert_eq!(Policy::parse(&p.to_string()).unwrap(), p);
    }

    #[test]
    fn numeric_attribute_is_not_a_threshold() {
        let p = Policy::parse("123 and 2 of (a, b)").unwrap();
        assert_eq!(p.leaves(), vec!["123", "a", "b"]);
    }

    #[test]
    fn errors_name_the_column() {
        let e = Policy::parse("role:doctor and (dept:x or").unwrap_err();
        assert!(matches!(e, PolicyError::Syntax { column: 27, .. }), "{e:?}");
        let e = Policy::parse("a and $b").unwrap_err();
        assert!(matches!(e, PolicyError::Syntax { column: 7, .. }), "{e}");
        let e = Policy::parse("a b").unwrap_err();
        assert!(matches!(e, PolicyError::Syntax { column: 3, .. }), "{e}");
        let e = Policy::parse("3 of (a, b)").unwrap_err();
        assert!(matches!(e, PolicyError::Invalid(_)), "{e}");
        let e = Policy::parse("a and or").unwrap_err();
        assert!(e.to_string().contains("keyword `or`"), "{e}");
        let e = Policy::parse("\"open").unwrap_err();
        assert!(matches!(e, PolicyError::Syntax { column: 1, .. }), "{e}");
        assert!(Policy::parse("").is_err());
    }

    #[test]
    fn limits_are_enforced() {
        let deep = "(".repeat(10_000) + "a" + &")".repeat(10_000);
        assert!(matches!(
            Policy::parse(&deep),
            Err(PolicyError::TooLarge(_))
        ));
        let wide = (0..=MAX_LEAVES)
            .map(|i| format!("a{i}"))
            .collect::<Vec<_>>()
            .join(" or ");
        assert!(matches!(
            Policy::parse(&wide),
            Err(PolicyError::TooLarge(_))
        ));
        let long = "x".repeat(MAX_ATTRIBUTE_BYTES + 1);
        assert!(matches!(
            Policy::parse(&long),
            Err(PolicyError::TooLarge(_))
        ));
        assert!(Policy::parse(&"x".repeat(MAX_ATTRIBUTE_BYTES)).is_ok());
    }

    #[test]
    fn repetitions_are_numbered_and_bounded() {
        let p = Policy::parse("a and (b or a) and 2 of (a, b, c)").unwrap();
        assert_eq!(
            p.occurrences(),
            vec![("a", 1), ("b", 1), ("a", 2), ("a", 3), ("b", 2), ("c", 1)]
        );
        let e = Policy::parse("a or a or a or a or a").unwrap_err();
        assert!(e.to_string().contains("more than 4 times"), "{e}");
    }

    #[test]
    fn evaluation() {
        let p = Policy::parse("(a and b) or 2 of (c, d, e)").unwrap();
        let with = |s: &'static [&'static str]| move |x: &str| s.contains(&x);
        assert!(p.is_satisfied_by(&with(&["a", "b"])));
        assert!(p.is_satisfied_by(&with(&["c", "e"])));
        assert!(!p.is_satisfied_by(&with(&["a", "c"])));
    }
}
