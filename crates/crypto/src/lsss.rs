//! Policies as linear secret-sharing schemes (monotone span programs).
//!
//! Each attribute occurrence (leaf, left to right) becomes one row of a matrix `M`
//! over `Z_p`; a set of rows can reconstruct the secret iff some coefficients `γ`
//! give `Σ γ_i M_i = (1, 0, …, 0)`. Rows are sparse: entries are stored as
//! `(column, value)` pairs.
//!
//! Gates are converted recursively, starting with the root vector `(1)`:
//!
//! * **OR** (and `1 of n`): every child gets the parent's vector, no new column.
//! * **AND** (and `n of n`): Lewko–Waters style, as a telescoping chain over `n - 1`
//!   fresh columns `c_1 … c_{n-1}`: child 1 gets `v + e_{c_1}`, child `m` gets
//!   `-e_{c_{m-1}} + e_{c_m}`, child `n` gets `-e_{c_{n-1}}`. All entries are `±1`,
//!   every child's coefficient is 1, and each row has at most two new entries.
//! * **k of n** (`1 < k < n`), natively as Shamir sharing: child `i` (1-based) gets
//!   `v + Σ_{e=1}^{k-1} i^e · e_{c_e}` over `k - 1` fresh columns (Vandermonde
//!   rows). Any `k` children reconstruct with Lagrange coefficients at 0; fewer
//!   learn nothing. No expansion: the matrix has one row per leaf and
//!   `1 + Σ_AND (n-1) + Σ_threshold (k-1)` columns.

use blstrs::Scalar;
use ff::Field;

use crate::policy::{Node, Policy};

/// One row of the span program: the sparse entries for leaf `leaf`.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// Index of the attribute occurrence in [`Policy::leaves`].
    pub leaf: usize,
    /// Non-zero entries, as `(column, value)`; column 0 is the secret's column.
    pub entries: Vec<(usize, Scalar)>,
}

/// A monotone span program for a policy.
#[derive(Clone, Debug, PartialEq)]
pub struct SpanProgram {
    /// One row per leaf, in leaf order.
    pub rows: Vec<Row>,
    /// Number of columns.
    pub columns: usize,
}

impl SpanProgram {
    /// Converts a policy to its span program.
    pub fn from_policy(policy: &Policy) -> Self {
        let mut builder = Builder {
            rows: Vec::with_capacity(policy.leaf_count()),
            columns: 1,
        };
        builder.node(policy.root(), vec![(0, Scalar::ONE)]);
        SpanProgram {
            rows: builder.rows,
            columns: builder.columns,
        }
    }

    /// Checks `Σ γ_i M_i = (1, 0, …, 0)` for the given coefficients.
    pub fn reconstructs(&self, coefficients: &[(usize, Scalar)]) -> bool {
        let mut sum = vec![Scalar::ZERO; self.columns];
        for (row, gamma) in coefficients {
            let Some(row) = self.rows.get(*row) else {
                return false;
            };
            for (col, v) in &row.entries {
                sum[*col] += *gamma * v;
            }
        }
        sum.iter()
            .enumerate()
            .all(|(i, v)| *v == if i == 0 { Scalar::ONE } else { Scalar::ZERO })
    }
}

struct Builder {
    rows: Vec<Row>,
    columns: usize,
}

impl Builder {
    fn fresh_columns(&mut self, n: usize) -> usize {
        let first = self.columns;
        self.columns += n;
        first
    }

    fn node(&mut self, node: &Node, v: Vec<(usize, Scalar)>) {
        match node {
            Node::Attr(_) => {
                let leaf = self.rows.len();
                self.rows.push(Row { leaf, entries: v });
            }
            Node::Or(children) => self.or(children, v),
            Node::And(children) => self.and(children, v),
            Node::Threshold(k, children) if *k == 1 => self.or(children, v),
            Node::Threshold(k, children) if *k == children.len() => self.and(children, v),
            Node::Threshold(k, children) => {
                let first = self.fresh_columns(k - 1);
                for (i, child) in children.iter().enumerate() {
                    let x = Scalar::from((i + 1) as u64);
                    let mut row = v.clone();
                    let mut power = x;
                    for e in 0..k - 1 {
                        row.push((first + e, power));
                        power *= x;
                    }
                    self.node(child, row);
                }
            }
        }
    }

    fn or(&mut self, children: &[Node], v: Vec<(usize, Scalar)>) {
        for child in children {
            self.node(child, v.clone());
        }
    }

    fn and(&mut self, children: &[Node], v: Vec<(usize, Scalar)>) {
        let n = children.len();
        let first = self.fresh_columns(n - 1);
        for (m, child) in children.iter().enumerate() {
            let mut row = if m == 0 { v.clone() } else { Vec::new() };
            if m > 0 {
                row.push((first + m - 1, -Scalar::ONE));
            }
            if m + 1 < n {
                row.push((first + m, Scalar::ONE));
            }
            self.node(child, row);
        }
    }
}

/// Chooses a cheapest satisfying set of rows and their reconstruction
/// coefficients, or `None` when the leaves for which `has_leaf(leaf index)` is
/// true do not satisfy the policy.
///
/// The cost is the number of rows used (each costs two point additions or
/// multiplications at decryption); every coefficient is 1 unless a `k of n`
/// gate with `1 < k < n` is on the path, where Lagrange coefficients appear.
pub fn reconstruction(
    policy: &Policy,
    has_leaf: &dyn Fn(usize) -> bool,
) -> Option<Vec<(usize, Scalar)>> {
    let mut next_leaf = 0;
    plan(policy.root(), has_leaf, &mut next_leaf)
}

/// Rows (with coefficients) that reconstruct the vector of `node`.
fn plan(
    node: &Node,
    has: &dyn Fn(usize) -> bool,
    next_leaf: &mut usize,
) -> Option<Vec<(usize, Scalar)>> {
    match node {
        Node::Attr(_) => {
            let leaf = *next_leaf;
            *next_leaf += 1;
            has(leaf).then(|| vec![(leaf, Scalar::ONE)])
        }
        Node::And(children) => all_of(children, has, next_leaf),
        Node::Or(children) => cheapest_of(children, has, next_leaf),
        Node::Threshold(k, children) if *k == 1 => cheapest_of(children, has, next_leaf),
        Node::Threshold(k, children) if *k == children.len() => all_of(children, has, next_leaf),
        Node::Threshold(k, children) => {
            let mut plans: Vec<(u64, Vec<(usize, Scalar)>)> = Vec::new();
            for (i, child) in children.iter().enumerate() {
                if let Some(p) = plan(child, has, next_leaf) {
                    plans.push(((i + 1) as u64, p));
                }
            }
            if plans.len() < *k {
                return None;
            }
            plans.sort_by_key(|(_, p)| p.len());
            plans.truncate(*k);
            let xs: Vec<u64> = plans.iter().map(|(x, _)| *x).collect();
            let mut out = Vec::new();
            for (x, rows) in plans {
                let lambda = lagrange_at_zero(x, &xs);
                out.extend(rows.into_iter().map(|(r, g)| (r, g * lambda)));
            }
            Some(out)
        }
    }
}

fn all_of(
    children: &[Node],
    has: &dyn Fn(usize) -> bool,
    next_leaf: &mut usize,
) -> Option<Vec<(usize, Scalar)>> {
    let mut out = Vec::new();
    let mut ok = true;
    for child in children {
        // Keep walking after a failure so leaf numbering stays right.
        match plan(child, has, next_leaf) {
            Some(p) if ok => out.extend(p),
            _ => ok = false,
        }
    }
    ok.then_some(out)
}

fn cheapest_of(
    children: &[Node],
    has: &dyn Fn(usize) -> bool,
    next_leaf: &mut usize,
) -> Option<Vec<(usize, Scalar)>> {
    children
        .iter()
        .filter_map(|child| plan(child, has, next_leaf))
        .collect::<Vec<_>>()
        .into_iter()
        .min_by_key(Vec::len)
}

/// `λ_x = Π_{j ∈ xs, j ≠ x} j / (j − x)`, the Lagrange coefficient at 0.
fn lagrange_at_zero(x: u64, xs: &[u64]) -> Scalar {
    let mut num = Scalar::ONE;
    let mut den = Scalar::ONE;
    for &j in xs.iter().filter(|&&j| j != x) {
        num *= Scalar::from(j);
        den *= Scalar::from(j) - Scalar::from(x);
    }
    // xs are distinct positions, so `den` is a product of non-zero values.
    num * den.invert().expect("distinct Lagrange points")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(policy: &str, attrs: &[&str], expect: bool) {
        let p = Policy::parse(policy).unwrap();
        let msp = SpanProgram::from_policy(&p);
        assert_eq!(msp.rows.len(), p.leaf_count());
        let has = |a: &str| attrs.contains(&a);
        let leaves = p.leaves();
        let got = reconstruction(&p, &|leaf| has(leaves[leaf]));
        assert_eq!(got.is_some(), expect, "{policy} with {attrs:?}");
        assert_eq!(p.is_satisfied_by(&has), expect);
        if let Some(coeffs) = got {
            assert!(msp.reconstructs(&coeffs), "{policy} with {attrs:?}");
            assert!(coeffs.iter().all(|(r, _)| attrs.contains(&leaves[*r])));
        }
    }

    #[test]
    fn gates() {
        check("a and b and c", &["a", "b", "c"], true);
        check("a and b and c", &["a", "c"], false);
        check("a or b or c", &["b"], true);
        check("2 of (a, b, c)", &["a", "c"], true);
        check("2 of (a, b, c)", &["c"], false);
        check("3 of (a, b, c, d, e)", &["b", "d", "e"], true);
        check("(a and b) or 2 of (c, d and e, f)", &["c", "d", "e"], true);
        check("(a and b) or 2 of (c, d and e, f)", &["c", "d"], false);
        check("a and a", &["a"], true);
        check("1 of (a)", &["a"], true);
    }

    #[test]
    fn column_count_matches_the_documented_size() {
        let p = Policy::parse("(a and b and c) or 3 of (d, e, f, g)").unwrap();
        // 1 + (3 - 1) for the AND + (3 - 1) for the threshold.
        assert_eq!(SpanProgram::from_policy(&p).columns, 5);
    }

    #[test]
    fn unsatisfied_rows_do_not_reconstruct() {
        // The rows of an AND minus one child span nothing containing e_1.
        let p = Policy::parse("a and b and c").unwrap();
        let msp = SpanProgram::from_policy(&p);
        let ones = [(0, Scalar::ONE), (1, Scalar::ONE)];
        assert!(!msp.reconstructs(&ones));
    }
}
