//! RFC 9162 §2.1 Merkle trees: hashing, proofs from stored subtree hashes, and
//! verifiers.
//!
//! A tree of `n` leaves is addressed by its *complete, aligned subtrees*: the
//! node at `(level, index)` covers leaves `[index·2^level, (index+1)·2^level)`.
//! Only those nodes are ever stored. Any hash the RFC defines (a tree head, a
//! proof element `MTH(D[a:b])`) is the right-to-left fold of the complete
//! subtrees that tile `[a, b)`, so a proof for a tree of a million leaves needs
//! about `2·log2(n)` stored nodes and no leaf is re-hashed.
//!
//! Sizes and indices are `u64` throughout; the verifiers accept any size a real
//! log reaches (up to 2^64 - 1) without overflow.

use sha2::{Digest, Sha256};

/// A SHA-256 output.
pub type Hash = [u8; 32];

/// Prefix of a leaf hash (RFC 9162 §2.1.1).
const LEAF_PREFIX: u8 = 0x00;
/// Prefix of an interior node hash.
const NODE_PREFIX: u8 = 0x01;

/// The hash of the empty tree, `SHA-256()`.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// `SHA-256(0x00 || entry)`.
pub fn leaf_hash(entry: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([LEAF_PREFIX]);
    h.update(entry);
    h.finalize().into()
}

/// `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &[u8], right: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([NODE_PREFIX]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// A complete, aligned subtree: leaves `[index·2^level, (index+1)·2^level)`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct NodeId {
    /// Height above the leaves (0 = a leaf).
    pub level: u8,
    /// Position among the nodes of this level.
    pub index: u64,
}

impl NodeId {
    /// A node id.
    pub const fn new(level: u8, index: u64) -> Self {
        NodeId { level, index }
    }
}

/// Why a proof did not verify. Every variant means "does not hold"; malformed
/// input (bad encodings) is the caller's to report before verifying.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
pub enum ProofError {
    /// The leaf index is not inside the tree.
    #[error("leaf index {index} is outside a tree of size {size}")]
    IndexOutOfRange {
        /// The index.
        index: u64,
        /// The tree size.
        size: u64,
    },
    /// The second tree is smaller than the first.
    #[error("the new size {new} is smaller than the old size {old}")]
    SizesReversed {
        /// Old size.
        old: u64,
        /// New size.
        new: u64,
    },
    /// The proof has the wrong number of hashes for these sizes.
    #[error("the proof has {got} hashes where these sizes need {want}")]
    WrongLength {
        /// Hashes given.
        got: usize,
        /// Hashes needed.
        want: usize,
    },
    /// The recomputed root differs from the one claimed.
    #[error(
        "the proof leads to root {} instead of {}",
        hex::encode(computed),
        hex::encode(expected)
    )]
    RootMismatch {
        /// Root the proof leads to.
        computed: Hash,
        /// Root that was claimed.
        expected: Hash,
    },
}

/// Largest power of two strictly below `n` (n >= 2).
fn split_point(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1u64 << (63 - (n - 1).leading_zeros())
}

/// The complete subtrees tiling `[start, end)`, left to right, for ranges that
/// arise in RFC 9162's recursion (and any range whose start is aligned to its
/// first subtree).
pub fn tiling(start: u64, end: u64) -> Vec<NodeId> {
    let mut out = Vec::new();
    tiling_into(start, end, &mut out);
    out
}

fn tiling_into(start: u64, end: u64, out: &mut Vec<NodeId>) {
    let mut at = start;
    while at < end {
        let remaining = end - at;
        // Largest level such that the subtree fits and `at` is aligned to it.
        let mut level = 63 - remaining.leading_zeros();
        if at != 0 {
            level = level.min(at.trailing_zeros());
        }
        out.push(NodeId::new(level as u8, at >> level));
        at += 1u64 << level;
    }
}

/// Folds the hashes of a tiling (left to right) into the range's RFC 9162 hash.
fn fold_tiling(hashes: &[Hash]) -> Hash {
    let mut iter = hashes.iter().rev();
    let Some(last) = iter.next() else {
        return empty_root();
    };
    iter.fold(*last, |acc, h| node_hash(h, &acc))
}

/// The ranges whose hashes form the inclusion proof of leaf `index` in a tree
/// of `size` leaves, in proof order (leaf side first). `PATH(m, D[n])` of
/// RFC 9162 §2.1.3.1.
pub fn inclusion_ranges(index: u64, size: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let (mut lo, mut hi) = (0u64, size);
    while hi - lo > 1 {
        let k = split_point(hi - lo);
        if index < lo + k {
            out.push((lo + k, hi));
            hi = lo + k;
        } else {
            out.push((lo, lo + k));
            lo += k;
        }
    }
    out.reverse();
    out
}

/// The ranges whose hashes form the consistency proof between sizes `old` and
/// `new` (0 < old < new), in proof order. `SUBPROOF` of RFC 9162 §2.1.4.1.
pub fn consistency_ranges(old: u64, new: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    if old == 0 || old >= new {
        return out;
    }
    let (mut lo, mut hi) = (0u64, new);
    let mut whole = true;
    loop {
        if old == hi {
            if !whole {
                out.push((lo, hi));
            }
            break;
        }
        let k = split_point(hi - lo);
        if old <= lo + k {
            out.push((lo + k, hi));
            hi = lo + k;
        } else {
            out.push((lo, lo + k));
            lo += k;
            whole = false;
        }
    }
    out.reverse();
    out
}

/// Where complete-subtree hashes come from: memory, or a database.
pub trait NodeSource {
    /// Why nodes could not be read.
    type Error;
    /// The hashes of `ids`, in order. Every id is a complete subtree of the
    /// tree the caller asks about.
    fn nodes(&self, ids: &[NodeId]) -> Result<Vec<Hash>, Self::Error>;
}

/// Hashes of several ranges with one batched read of their tilings.
pub fn range_hashes<S: NodeSource>(
    source: &S,
    ranges: &[(u64, u64)],
) -> Result<Vec<Hash>, S::Error> {
    // One flat list of node ids for all ranges (one batched read), and where
    // each range's tiling ends in it.
    let mut ids = Vec::with_capacity(ranges.len() + 8);
    let mut ends = Vec::with_capacity(ranges.len());
    for &(a, b) in ranges {
        tiling_into(a, b, &mut ids);
        ends.push(ids.len());
    }
    let hashes = source.nodes(&ids)?;
    let mut out = Vec::with_capacity(ranges.len());
    let mut start = 0;
    for end in ends {
        out.push(fold_tiling(&hashes[start..end]));
        start = end;
    }
    Ok(out)
}

/// The root of the first `size` leaves.
pub fn root<S: NodeSource>(source: &S, size: u64) -> Result<Hash, S::Error> {
    Ok(range_hashes(source, &[(0, size)])?[0])
}

/// The inclusion proof of leaf `index` in the tree of `size` leaves
/// (`index < size`, checked by the caller).
pub fn prove_inclusion<S: NodeSource>(
    source: &S,
    index: u64,
    size: u64,
) -> Result<Vec<Hash>, S::Error> {
    range_hashes(source, &inclusion_ranges(index, size))
}

/// The consistency proof from `old` to `new` leaves (`old <= new`, checked by
/// the caller).
pub fn prove_consistency<S: NodeSource>(
    source: &S,
    old: u64,
    new: u64,
) -> Result<Vec<Hash>, S::Error> {
    range_hashes(source, &consistency_ranges(old, new))
}

/// Checks that `leaf` is at `index` in the tree of `size` leaves with `root`
/// (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(
    index: u64,
    size: u64,
    leaf: &Hash,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    let computed = root_from_inclusion(index, size, leaf, proof)?;
    if &computed != root {
        return Err(ProofError::RootMismatch {
            computed,
            expected: *root,
        });
    }
    Ok(())
}

/// The root an inclusion proof leads to.
pub fn root_from_inclusion(
    index: u64,
    size: u64,
    leaf: &Hash,
    proof: &[Hash],
) -> Result<Hash, ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    // Below the level where the paths to `index` and to `size - 1` meet, the
    // proof climbs a perfect subtree ("inner"); above it, the proof only has
    // left siblings on the right border ("border").
    let inner = (64 - (index ^ (size - 1)).leading_zeros()) as usize;
    // `inner` reaches 64 when the paths split at the root of a 2^64 tree.
    let border = index.checked_shr(inner as u32).unwrap_or(0).count_ones() as usize;
    if proof.len() != inner + border {
        return Err(ProofError::WrongLength {
            got: proof.len(),
            want: inner + border,
        });
    }
    let mut acc = *leaf;
    for (i, p) in proof[..inner].iter().enumerate() {
        acc = if (index >> i) & 1 == 0 {
            node_hash(&acc, p)
        } else {
            node_hash(p, &acc)
        };
    }
    for p in &proof[inner..] {
        acc = node_hash(p, &acc);
    }
    Ok(acc)
}

/// Checks that the tree of `old` leaves with `old_root` is a prefix of the tree
/// of `new` leaves with `new_root` (RFC 9162 §2.1.4.2).
pub fn verify_consistency(
    old: u64,
    new: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if new < old {
        return Err(ProofError::SizesReversed { old, new });
    }
    if old == new || old == 0 {
        // Nothing to prove: equal trees must have equal roots, and the empty
        // tree is a prefix of every tree.
        if !proof.is_empty() {
            return Err(ProofError::WrongLength {
                got: proof.len(),
                want: 0,
            });
        }
        if old == new && old_root != new_root {
            return Err(ProofError::RootMismatch {
                computed: *old_root,
                expected: *new_root,
            });
        }
        return Ok(());
    }
    // The levels below the largest perfect subtree that ends where the old
    // tree ends are shared by both trees and need no proof.
    let shift = old.trailing_zeros();
    // Positions, counted in subtrees of 2^shift leaves, of the old tree's last
    // subtree (the seed) and of the new tree's last leaf.
    let seed_index = (old - 1) >> shift;
    let last_new = (new - 1) >> shift;
    let start_is_given = seed_index == 0; // the old tree is itself that perfect subtree
    let inner = (64 - (seed_index ^ last_new).leading_zeros()) as usize;
    let border = seed_index
        .checked_shr(inner as u32)
        .unwrap_or(0)
        .count_ones() as usize;
    let want = inner + border + usize::from(!start_is_given);
    if proof.len() != want {
        return Err(ProofError::WrongLength {
            got: proof.len(),
            want,
        });
    }
    let (seed, rest) = if start_is_given {
        (*old_root, proof)
    } else {
        (proof[0], &proof[1..])
    };
    // Rebuild both roots from the seed: the old root uses only the left
    // siblings; the new root uses every sibling.
    let mut old_acc = seed;
    let mut new_acc = seed;
    for (i, p) in rest[..inner].iter().enumerate() {
        if (seed_index >> i) & 1 == 1 {
            old_acc = node_hash(p, &old_acc);
            new_acc = node_hash(p, &new_acc);
        } else {
            new_acc = node_hash(&new_acc, p);
        }
    }
    for p in &rest[inner..] {
        old_acc = node_hash(p, &old_acc);
        new_acc = node_hash(p, &new_acc);
    }
    if &old_acc != old_root {
        return Err(ProofError::RootMismatch {
            computed: old_acc,
            expected: *old_root,
        });
    }
    if &new_acc != new_root {
        return Err(ProofError::RootMismatch {
            computed: new_acc,
            expected: *new_root,
        });
    }
    Ok(())
}

/// The complete subtrees on the right border of a tree of `size` leaves, from
/// the largest (leftmost) to the smallest: the only nodes an append combines
/// with.
pub fn frontier(size: u64) -> Vec<NodeId> {
    tiling(0, size)
}

/// Appends leaf hashes to a tree whose frontier hashes are `frontier_hashes`
/// (exactly as many as [`frontier`] of `size` lists), returning every complete
/// node the appends create (leaves included) and the new frontier hashes.
pub fn append_nodes(
    size: u64,
    frontier_hashes: &[Hash],
    leaves: &[Hash],
) -> (Vec<(NodeId, Hash)>, Vec<Hash>) {
    debug_assert_eq!(frontier(size).len(), frontier_hashes.len());
    // Stack of (level, hash) along the right border, smallest on top.
    let mut stack: Vec<(u8, Hash)> = frontier(size)
        .iter()
        .zip(frontier_hashes)
        .map(|(id, h)| (id.level, *h))
        .collect();
    let mut created = Vec::with_capacity(leaves.len() * 2);
    for (n, leaf) in (size..).zip(leaves) {
        created.push((NodeId::new(0, n), *leaf));
        let mut hash = *leaf;
        let mut level = 0u8;
        // Each trailing one bit of `n` is a left sibling of equal level to merge.
        while let Some(&(top_level, top_hash)) = stack.last() {
            if top_level != level {
                break;
            }
            stack.pop();
            hash = node_hash(&top_hash, &hash);
            level += 1;
            created.push((NodeId::new(level, n >> level), hash));
        }
        stack.push((level, hash));
    }
    (created, stack.into_iter().map(|(_, h)| h).collect())
}

/// A Merkle tree held in memory: every complete subtree hash, level by level.
#[derive(Clone, Default, Debug)]
pub struct MemoryTree {
    levels: Vec<Vec<Hash>>,
}

impl MemoryTree {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// The number of leaves.
    pub fn size(&self) -> u64 {
        self.levels.first().map_or(0, |l| l.len() as u64)
    }

    /// Appends an entry (hashed as a leaf).
    pub fn push(&mut self, entry: &[u8]) {
        self.push_leaf_hash(leaf_hash(entry));
    }

    /// Appends an already-computed leaf hash.
    pub fn push_leaf_hash(&mut self, leaf: Hash) {
        let mut hash = leaf;
        let mut level = 0;
        loop {
            if self.levels.len() == level {
                self.levels.push(Vec::new());
            }
            let row = &mut self.levels[level];
            row.push(hash);
            if row.len() % 2 == 1 {
                break;
            }
            hash = node_hash(&row[row.len() - 2], &row[row.len() - 1]);
            level += 1;
        }
    }

    /// The root of the whole tree.
    pub fn root(&self) -> Hash {
        self.root_at(self.size())
    }

    /// The root of the first `size` leaves (`size <= self.size()`).
    pub fn root_at(&self, size: u64) -> Hash {
        match root(self, size) {
            Ok(h) => h,
            Err(never) => match never {},
        }
    }

    /// The inclusion proof of leaf `index` in the first `size` leaves.
    pub fn prove_inclusion(&self, index: u64, size: u64) -> Vec<Hash> {
        match prove_inclusion(self, index, size) {
            Ok(p) => p,
            Err(never) => match never {},
        }
    }

    /// The consistency proof between the first `old` and `new` leaves.
    pub fn prove_consistency(&self, old: u64, new: u64) -> Vec<Hash> {
        match prove_consistency(self, old, new) {
            Ok(p) => p,
            Err(never) => match never {},
        }
    }
}

impl NodeSource for MemoryTree {
    type Error = std::convert::Infallible;
    fn nodes(&self, ids: &[NodeId]) -> Result<Vec<Hash>, Self::Error> {
        Ok(ids
            .iter()
            .map(|id| self.levels[id.level as usize][id.index as usize])
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The RFC's recursive definition, straight from the text.
    fn mth(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => empty_root(),
            1 => leaves[0],
            n => {
                let k = split_point(n as u64) as usize;
                node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
            }
        }
    }

    fn path(m: usize, leaves: &[Hash]) -> Vec<Hash> {
        let n = leaves.len();
        if n <= 1 {
            return vec![];
        }
        let k = split_point(n as u64) as usize;
        if m < k {
            let mut p = path(m, &leaves[..k]);
            p.push(mth(&leaves[k..]));
            p
        } else {
            let mut p = path(m - k, &leaves[k..]);
            p.push(mth(&leaves[..k]));
            p
        }
    }

    fn subproof(m: usize, leaves: &[Hash], whole: bool) -> Vec<Hash> {
        let n = leaves.len();
        if m == n {
            return if whole { vec![] } else { vec![mth(leaves)] };
        }
        let k = split_point(n as u64) as usize;
        if m <= k {
            let mut p = subproof(m, &leaves[..k], whole);
            p.push(mth(&leaves[k..]));
            p
        } else {
            let mut p = subproof(m - k, &leaves[k..], false);
            p.push(mth(&leaves[..k]));
            p
        }
    }

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n)
            .map(|i| leaf_hash(&(i as u64).to_be_bytes()))
            .collect()
    }

    #[test]
    fn matches_the_rfc_definitions_for_every_small_tree() {
        let all = leaves(70);
        let mut tree = MemoryTree::new();
        for leaf in &all {
            tree.push_leaf_hash(*leaf);
        }
        for n in 0..=all.len() {
            let root = mth(&all[..n]);
            assert_eq!(tree.root_at(n as u64), root, "root of {n}");
            for m in 0..n {
                let proof = tree.prove_inclusion(m as u64, n as u64);
                assert_eq!(proof, path(m, &all[..n]), "path {m} of {n}");
                verify_inclusion(m as u64, n as u64, &all[m], &proof, &root).unwrap();
            }
            for m in 1..n {
                let proof = tree.prove_consistency(m as u64, n as u64);
                assert_eq!(proof, subproof(m, &all[..n], true), "subproof {m} {n}");
                verify_consistency(m as u64, n as u64, &mth(&all[..m]), &root, &proof).unwrap();
            }
        }
    }

    #[test]
    fn append_nodes_creates_exactly_the_complete_subtrees() {
        let all = leaves(40);
        let mut reference = MemoryTree::new();
        let mut frontier_hashes = Vec::new();
        let mut size = 0u64;
        for chunk in all.chunks(7) {
            let (created, next) = append_nodes(size, &frontier_hashes, chunk);
            for leaf in chunk {
                reference.push_leaf_hash(*leaf);
            }
            size += chunk.len() as u64;
            for (id, hash) in created {
                assert_eq!(reference.nodes(&[id]).unwrap()[0], hash, "{id:?}");
            }
            let want = reference.nodes(&frontier(size)).unwrap();
            assert_eq!(next, want);
            frontier_hashes = next;
        }
    }

    #[test]
    fn verifiers_handle_the_largest_sizes() {
        let leaf = leaf_hash(b"x");
        let size = u64::MAX;
        let index = size - 1;
        // A proof of the right length for the last leaf verifies against the
        // root it leads to, with no overflow on the way.
        let inner = (64 - (index ^ (size - 1)).leading_zeros()) as usize;
        let border = index.checked_shr(inner as u32).unwrap_or(0).count_ones() as usize;
        let proof = vec![[7u8; 32]; inner + border];
        let root = root_from_inclusion(index, size, &leaf, &proof).unwrap();
        verify_inclusion(index, size, &leaf, &proof, &root).unwrap();
        assert!(verify_inclusion(index, size, &leaf, &proof[1..], &root).is_err());
        let ranges = consistency_ranges(1 << 62, (1 << 63) + 5);
        assert!(!ranges.is_empty());
    }

    /// Where the paths split at the top of a tree above 2^63 leaves, the
    /// proof has one hash per level (64) and no border: no shift by 64, and
    /// the length the RFC's algorithm needs.
    #[test]
    fn verifiers_handle_a_split_at_the_top_level() {
        let leaf = leaf_hash(b"x");
        let size = (1u64 << 63) + 1;
        for index in [0u64, 1, (1 << 63) - 1] {
            let proof: Vec<Hash> = (0..64).map(|i| [i as u8; 32]).collect();
            let root = root_from_inclusion(index, size, &leaf, &proof).unwrap();
            verify_inclusion(index, size, &leaf, &proof, &root).unwrap();
            assert!(verify_inclusion(index, size, &leaf, &proof[..63], &root).is_err());
        }
        for old in [1u64, 3, 5] {
            let r = [1u8; 32];
            // A wrong proof of any length fails cleanly, without a panic.
            for len in [0usize, 63, 64, 65, 66] {
                let proof = vec![[2u8; 32]; len];
                assert!(verify_consistency(old, size, &r, &r, &proof).is_err());
            }
        }
    }

    /// RFC 9162's own consistency algorithm (§2.1.4.2), to cross-check the
    /// length rules at sizes no tree here reaches.
    fn rfc_consistency(
        first: u64,
        second: u64,
        first_hash: &Hash,
        second_hash: &Hash,
        path: &[Hash],
    ) -> bool {
        if path.is_empty() {
            return false;
        }
        let mut path = path.to_vec();
        if first.is_power_of_two() {
            path.insert(0, *first_hash);
        }
        let (mut fnn, mut sn) = (first - 1, second - 1);
        while fnn & 1 == 1 {
            fnn >>= 1;
            sn >>= 1;
        }
        let (mut fr, mut sr) = (path[0], path[0]);
        for c in &path[1..] {
            if sn == 0 {
                return false;
            }
            if fnn & 1 == 1 || fnn == sn {
                fr = node_hash(c, &fr);
                sr = node_hash(c, &sr);
                while fnn & 1 == 0 && fnn != 0 {
                    fnn >>= 1;
                    sn >>= 1;
                }
            } else {
                sr = node_hash(&sr, c);
            }
            fnn >>= 1;
            sn >>= 1;
        }
        &fr == first_hash && &sr == second_hash && sn == 0
    }

    #[test]
    fn consistency_agrees_with_the_rfc_algorithm_on_real_trees() {
        let all = leaves(40);
        let mut tree = MemoryTree::new();
        for leaf in &all {
            tree.push_leaf_hash(*leaf);
        }
        for n in 2..=40u64 {
            for m in 1..n {
                let proof = tree.prove_consistency(m, n);
                let (r1, r2) = (tree.root_at(m), tree.root_at(n));
                assert!(rfc_consistency(m, n, &r1, &r2, &proof), "{m} {n}");
                let mut bad = proof.clone();
                bad[0][0] ^= 1;
                assert_eq!(
                    rfc_consistency(m, n, &r1, &r2, &bad),
                    verify_consistency(m, n, &r1, &r2, &bad).is_ok()
                );
            }
        }
    }
}
