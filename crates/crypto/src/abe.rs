//! FAME: fast attribute-based message encryption, ciphertext-policy variant
//! (Agrawal and Chase, CCS 2017, eprint 2017/807, §3 and Appendix), over
//! BLS12-381 with `G = G1` (hashed attributes, key and ciphertext rows) and
//! `H = G2` (`h`, `ct_0`, `sk_0`). Used as a key-encapsulation mechanism: the
//! encapsulated key is `HKDF-SHA256(T_1^{s_1} · T_2^{s_2})`.
//!
//! Notation follows the paper; `H(y ℓ t)` hashes attribute `y` and `H(0 j ℓ t)`
//! the span program's column `j` into `G1` (hash-to-curve, RFC 9380, with our own
//! domain separation tag), so the attribute universe is unbounded.
//!
//! **Repeated attributes.** FAME's security needs each span-program row to carry
//! its own label: two rows with the same `H(y ℓ t)` divide out to a public
//! combination of column hashes, which lets a key without `y` use the
//! difference of the two rows. The `k`-th occurrence of `y` in a policy is
//! therefore labelled `(y, k)`, and keys hold independent components for
//! `(y, 1) … (y, MAX_REPETITIONS)` (the standard attribute-copies technique;
//! [`crate::policy::MAX_REPETITIONS`] bounds the repetitions a policy may use).
//!
//! **Malleability.** Like the paper's scheme, the KEM is only CPA-secure: a
//! ciphertext can be edited (e.g. an OR branch dropped) and still decapsulate
//! to the same key. The envelope authenticates the whole ciphertext as AEAD
//! associated data; use the KEM through it, not bare.
//!
//! * Setup: `a_1, a_2, b_1, b_2, d_1, d_2, d_3 ← Z_p`;
//!   `mpk = (h^{a_1}, h^{a_2}, T_1 = e(g,h)^{d_1 a_1 + d_3}, T_2 = e(g,h)^{d_2 a_2 + d_3})`,
//!   `msk = (a_1, a_2, b_1, b_2, g^{d_1}, g^{d_2}, g^{d_3})`.
//! * KeyGen(S): `r_1, r_2 ← Z_p`; `sk_0 = (h^{b_1 r_1}, h^{b_2 r_2}, h^{r_1 + r_2})`;
//!   for `y ∈ S`, `σ_y ← Z_p`, `t ∈ {1,2}`:
//!   `sk_{y,t} = H(y1t)^{b_1 r_1/a_t} · H(y2t)^{b_2 r_2/a_t} · H(y3t)^{(r_1+r_2)/a_t} · g^{σ_y/a_t}`,
//!   `sk_{y,3} = g^{−σ_y}`; with `σ' ← Z_p`:
//!   `sk'_t = g^{d_t} · H(011t)^{b_1 r_1/a_t} · H(012t)^{b_2 r_2/a_t} · H(013t)^{(r_1+r_2)/a_t} · g^{σ'/a_t}`,
//!   `sk'_3 = g^{d_3} · g^{−σ'}`.
//! * Encrypt(M, π): `s_1, s_2 ← Z_p`; `ct_0 = (H_1^{s_1}, H_2^{s_2}, h^{s_1+s_2})`;
//!   `ct_{i,ℓ} = H(π(i)ℓ1)^{s_1} · H(π(i)ℓ2)^{s_2} · Π_j [H(0jℓ1)^{s_1} · H(0jℓ2)^{s_2}]^{M_{i,j}}`.
//!   We compute it as `A^{s_1} · B^{s_2}` with `A = H(π(i)ℓ1) · Π_j H(0jℓ1)^{M_{i,j}}`
//!   (and `B` likewise): span-program entries are public and mostly `±1`, so the
//!   inner products are point additions and each row costs six constant-time
//!   scalar multiplications. `T_1^{s_1} T_2^{s_2}` uses fixed-base tables.
//! * Decrypt: with `Σ γ_i M_i = (1, 0, …, 0)` over rows whose attribute the key
//!   holds, `T_1^{s_1} T_2^{s_2} = Π_t e(sk'_t · Π_i sk_{π(i),t}^{γ_i}, ct_{0,t})
//!   / Π_ℓ e(Π_i ct_{i,ℓ}^{γ_i}, sk_{0,ℓ})`: six pairings in one multi-Miller loop
//!   and one final exponentiation.
//!
//! Side channels: scalar multiplications by secret values use blst's
//! constant-time ladder; the fixed-base target-group tables are read with a
//! constant-time scan. Decryption coefficients `γ` are public (they follow from
//! the public policy), so decryption may branch on them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{OnceLock, RwLock};

use blstrs::{Fp12, G1Affine, G1Projective, G2Affine, G2Projective, Gt, Scalar};
use ff::Field;
use group::{prime::PrimeCurveAffine, Curve, Group};
use hkdf::Hkdf;
use rand_core::{CryptoRng, RngCore};
use sha2::Sha256;
use subtle::{ConditionallySelectable, ConstantTimeEq};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::format::{gt_to_bytes, DecodeError, Kind, Reader, Writer};
use crate::lsss::{reconstruction, SpanProgram};
use crate::policy::{
    check_attribute, Policy, MAX_ATTRIBUTE_BYTES, MAX_POLICY_BYTES, MAX_REPETITIONS,
};
use crate::Error;

/// Domain separation tag for hashing attributes and columns to G1 (RFC 9380).
pub const HASH_DST: &[u8] = b"ASCLEPIOS-V01-CS01-with-BLS12381G1_XMD:SHA-256_SSWU_RO_FAME_";
const KEM_SALT: &[u8] = b"asclepios/fame-kem/v1";
/// Most attributes in one user key.
pub const MAX_KEY_ATTRIBUTES: usize = 1024;

/// Hash input for attribute `y`, index `ℓ` and `t`. The leading byte separates
/// attribute hashes (1) from column hashes (0), so no attribute name can collide
/// with a column.
fn hash_attribute(y: &str, occurrence: usize, l: u8, t: u8) -> G1Projective {
    let mut msg = Vec::with_capacity(5 + y.len());
    msg.extend_from_slice(&[1, l, t]);
    msg.extend_from_slice(&(occurrence as u16).to_be_bytes());
    msg.extend_from_slice(y.as_bytes());
    G1Projective::hash_to_curve(&msg, HASH_DST, &[])
}

fn hash_column(j: usize, l: u8, t: u8) -> G1Affine {
    let mut msg = vec![0, l, t];
    msg.extend_from_slice(&(j as u32).to_be_bytes());
    G1Projective::hash_to_curve(&msg, HASH_DST, &[]).to_affine()
}

/// `H((y, k) ℓ t)` for ℓ ∈ {1,2,3}, t ∈ {1,2}, indexed `[ℓ-1][t-1]`.
///
/// Hashing to the curve is ~40% of encryption. The values are public and
/// deterministic, and a process seals records and issues keys for the same
/// attributes again and again, so the most recent
/// [`ATTRIBUTE_CACHE_ENTRIES`] are kept (the cache is emptied when full:
/// bounded memory, no bookkeeping). A hit reveals only that an attribute of a
/// public policy was used recently.
fn attribute_hashes(y: &str, occurrence: usize) -> [[G1Projective; 2]; 3] {
    let key = (y.to_string(), occurrence);
    let cached = ATTRIBUTE_HASHES
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(&key)
        .copied();
    let affine = cached.unwrap_or_else(|| {
        let fresh = [1u8, 2, 3].map(|l| [1u8, 2].map(|t| hash_attribute(y, occurrence, l, t)));
        let mut flat = [G1Affine::identity(); 6];
        G1Projective::batch_normalize(fresh.as_flattened(), &mut flat);
        let affine = [0, 1, 2].map(|l| [flat[2 * l], flat[2 * l + 1]]);
        let mut cache = ATTRIBUTE_HASHES.write().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= ATTRIBUTE_CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(key, affine);
        affine
    });
    affine.map(|l| l.map(G1Projective::from))
}

/// Most (attribute, occurrence) hash sets kept in memory (576 bytes each).
pub const ATTRIBUTE_CACHE_ENTRIES: usize = 4096;
type AttributeHashes = [[G1Affine; 2]; 3];
static ATTRIBUTE_HASHES: RwLock<BTreeMap<(String, usize), AttributeHashes>> =
    RwLock::new(BTreeMap::new());

/// Column hashes `H(0 j ℓ t)` depend on nothing secret or deployment-specific,
/// so they are computed once per process and shared, growing as wider policies
/// appear. Indexed `[j][ℓ-1][t-1]`.
type ColumnHashes = [[G1Affine; 2]; 3];
static COLUMN_HASHES: RwLock<Vec<ColumnHashes>> = RwLock::new(Vec::new());

fn column_hashes(columns: usize) -> Vec<ColumnHashes> {
    {
        let cache = COLUMN_HASHES.read().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= columns {
            return cache[..columns].to_vec();
        }
    }
    let mut cache = COLUMN_HASHES.write().unwrap_or_else(|e| e.into_inner());
    while cache.len() < columns {
        let j = cache.len();
        cache.push([1u8, 2, 3].map(|l| [1u8, 2].map(|t| hash_column(j, l, t))));
    }
    cache[..columns].to_vec()
}

/// A fixed-base table for exponentiations of one target-group element:
/// `entries[w][d] = base^{d · 16^w}` for 64 windows of 4 bits, read with a
/// constant-time scan so the secret exponent does not steer memory accesses.
struct GtTable {
    windows: Vec<[Fp12; 16]>,
}

impl GtTable {
    fn new(base: &Gt) -> Self {
        let mut windows = Vec::with_capacity(64);
        let mut b = *base;
        for _ in 0..64 {
            let mut row = [Fp12::from(Gt::identity()); 16];
            let mut acc = Gt::identity();
            for entry in row.iter_mut().skip(1) {
                acc += b;
                *entry = Fp12::from(acc);
            }
            b = acc + b; // base^{16^{w+1}}
            windows.push(row);
        }
        GtTable { windows }
    }

    fn pow(&self, s: &Scalar) -> Gt {
        let bytes = s.to_bytes_le();
        let mut acc = Gt::identity();
        for (w, row) in self.windows.iter().enumerate() {
            let digit = (bytes[w / 2] >> (4 * (w % 2))) & 0x0f;
            let mut pick = row[0];
            for (d, entry) in row.iter().enumerate().skip(1) {
                pick = Fp12::conditional_select(&pick, entry, (d as u8).ct_eq(&digit));
            }
            acc += Gt::from(pick);
        }
        acc
    }
}

/// Overwrites a secret value that does not implement `Zeroize` (blstrs types)
/// and passes the slot through `black_box` so the store is not elided.
fn wipe<T: Copy>(slot: &mut T, zero: T) {
    *slot = zero;
    std::hint::black_box(slot);
}

fn random_nonzero(rng: &mut (impl RngCore + CryptoRng)) -> Scalar {
    loop {
        let s = Scalar::random(&mut *rng);
        if !bool::from(s.is_zero()) {
            return s;
        }
    }
}

/// The master public key: `(h^{a_1}, h^{a_2}, T_1, T_2)` with `h` the G2 generator.
pub struct PublicKey {
    h_a: [G2Affine; 2],
    t: [Gt; 2],
    /// Fixed-base tables for `T_1`, `T_2`, built on first encryption (about
    /// 1 MiB; saves ~1.5 ms per encryption).
    tables: OnceLock<[GtTable; 2]>,
}

impl Clone for PublicKey {
    fn clone(&self) -> Self {
        PublicKey {
            h_a: self.h_a,
            t: self.t,
            tables: OnceLock::new(),
        }
    }
}

impl PartialEq for PublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.h_a == other.h_a && self.t == other.t
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicKey")
            .field("fingerprint", &hex_prefix(&self.to_bytes()))
            .finish()
    }
}

fn hex_prefix(bytes: &[u8]) -> String {
    use sha2::Digest;
    Sha256::digest(bytes)[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The master secret key. Zeroized on drop; `Debug` shows nothing secret.
pub struct MasterSecretKey {
    a: [Scalar; 2],
    b: [Scalar; 2],
    g_d: [G1Affine; 3],
}

impl Drop for MasterSecretKey {
    fn drop(&mut self) {
        for s in self.a.iter_mut().chain(self.b.iter_mut()) {
            wipe(s, Scalar::ZERO);
        }
        for p in self.g_d.iter_mut() {
            wipe(p, G1Affine::identity());
        }
    }
}

impl fmt::Debug for MasterSecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterSecretKey(<redacted>)")
    }
}

/// A user's decryption key for a set of attributes. Zeroized on drop.
pub struct UserKey {
    sk0: [G2Affine; 3],
    sk_prime: [G1Affine; 3],
    /// Per attribute, the components for occurrences 1, 2, … (index k - 1).
    attrs: BTreeMap<String, Vec<[G1Affine; 3]>>,
}

impl Drop for UserKey {
    fn drop(&mut self) {
        for p in self.sk0.iter_mut() {
            wipe(p, G2Affine::identity());
        }
        for p in self
            .sk_prime
            .iter_mut()
            .chain(self.attrs.values_mut().flatten().flatten())
        {
            wipe(p, G1Affine::identity());
        }
    }
}

impl fmt::Debug for UserKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserKey")
            .field("attributes", &self.attrs.keys().collect::<Vec<_>>())
            .field("components", &"<redacted>")
            .finish()
    }
}

/// An encapsulation: the policy, `ct_0` and one row of three G1 points per leaf.
#[derive(Clone, PartialEq)]
pub struct Ciphertext {
    policy: Policy,
    ct0: [G2Affine; 3],
    rows: Vec<[G1Affine; 3]>,
}

impl fmt::Debug for Ciphertext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ciphertext")
            .field("policy", &self.policy.to_string())
            .field("rows", &self.rows.len())
            .finish()
    }
}

/// The 32-byte key a ciphertext encapsulates. Zeroized on drop.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct KemKey([u8; 32]);

impl KemKey {
    /// The key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    fn derive(shared: &Gt) -> Self {
        let mut ikm = gt_to_bytes(shared);
        let mut out = [0u8; 32];
        Hkdf::<Sha256>::new(Some(KEM_SALT), &ikm)
            .expand(b"key", &mut out)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        ikm.zeroize();
        KemKey(out)
    }
}

impl fmt::Debug for KemKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KemKey(<redacted>)")
    }
}

/// Generates a fresh master key pair.
pub fn setup(rng: &mut (impl RngCore + CryptoRng)) -> (PublicKey, MasterSecretKey) {
    loop {
        let msk = MasterSecretKey {
            a: [random_nonzero(rng), random_nonzero(rng)],
            b: [random_nonzero(rng), random_nonzero(rng)],
            g_d: [0; 3].map(|_| (G1Affine::generator() * random_nonzero(rng)).to_affine()),
        };
        let mpk = msk.public_key();
        // T_t = 1 happens only if d_t a_t + d_3 = 0 (probability 2/p); the
        // public key could then not be encoded, so draw again.
        if !mpk.t.iter().any(|t| bool::from(t.is_identity())) {
            return (mpk, msk);
        }
    }
}

impl MasterSecretKey {
    /// Derives the matching public key:
    /// `T_t = e(g, h)^{d_t a_t + d_3} = e(g^{d_t · a_t} · g^{d_3}, h)`.
    pub fn public_key(&self) -> PublicKey {
        let h = G2Affine::generator();
        let h_a = self.a.map(|a| (h * a).to_affine());
        let t = [0, 1].map(|i| {
            let p = (self.g_d[i] * self.a[i] + self.g_d[2]).to_affine();
            blstrs::pairing(&p, &h)
        });
        PublicKey {
            h_a,
            t,
            tables: OnceLock::new(),
        }
    }

    /// Issues a key for `attributes` (duplicates are ignored).
    pub fn keygen<S: AsRef<str>>(
        &self,
        attributes: &[S],
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<UserKey, Error> {
        let set: BTreeSet<&str> = attributes.iter().map(AsRef::as_ref).collect();
        if set.len() > MAX_KEY_ATTRIBUTES {
            return Err(Error::Invalid(format!(
                "a key may hold at most {MAX_KEY_ATTRIBUTES} attributes, {} requested",
                set.len()
            )));
        }
        for a in &set {
            check_attribute(a)?;
        }
        let h = G2Projective::generator();
        let g = G1Projective::generator();
        let (r1, r2) = (random_nonzero(rng), random_nonzero(rng));
        let sk0 = [h * (self.b[0] * r1), h * (self.b[1] * r2), h * (r1 + r2)];

        // Per t: the exponents (b_1 r_1 / a_t, b_2 r_2 / a_t, (r_1 + r_2) / a_t)
        // and 1 / a_t, shared by every attribute.
        let inv_a = self
            .a
            .map(|a| Option::<Scalar>::from(a.invert()).expect("a_t is non-zero"));
        let exps = inv_a.map(|ia| [self.b[0] * r1 * ia, self.b[1] * r2 * ia, (r1 + r2) * ia]);

        // Σ_ℓ H_ℓt^{exps[t][ℓ]} + g^{σ/a_t}, the common shape of sk_{y,t} and sk'_t.
        let component = |hashes: &[[G1Projective; 2]; 3], t: usize, sigma: &Scalar| {
            hashes[0][t] * exps[t][0]
                + hashes[1][t] * exps[t][1]
                + hashes[2][t] * exps[t][2]
                + g * (*sigma * inv_a[t])
        };

        let mut attrs = BTreeMap::new();
        for y in set {
            let copies = (1..=MAX_REPETITIONS)
                .map(|k| {
                    let hashes = attribute_hashes(y, k);
                    let mut sigma = random_nonzero(rng);
                    let parts = [
                        component(&hashes, 0, &sigma),
                        component(&hashes, 1, &sigma),
                        -(g * sigma),
                    ];
                    wipe(&mut sigma, Scalar::ZERO);
                    to_affine3(&parts)
                })
                .collect();
            attrs.insert(y.to_string(), copies);
        }

        let col = column_hashes(1)[0].map(|l| l.map(G1Projective::from));
        let mut sigma = random_nonzero(rng);
        let sk_prime = [
            component(&col, 0, &sigma) + self.g_d[0],
            component(&col, 1, &sigma) + self.g_d[1],
            G1Projective::from(self.g_d[2]) - g * sigma,
        ];
        // Whoever learns a key's randomness can strip the key down to its
        // master-key terms: wipe it.
        wipe(&mut sigma, Scalar::ZERO);
        let (mut r1, mut r2, mut exps, mut inv_a) = (r1, r2, exps, inv_a);
        wipe(&mut r1, Scalar::ZERO);
        wipe(&mut r2, Scalar::ZERO);
        wipe(&mut exps, [[Scalar::ZERO; 3]; 2]);
        wipe(&mut inv_a, [Scalar::ZERO; 2]);
        let mut sk0_affine = [G2Affine::identity(); 3];
        G2Projective::batch_normalize(&sk0, &mut sk0_affine);
        Ok(UserKey {
            sk0: sk0_affine,
            sk_prime: to_affine3(&sk_prime),
            attrs,
        })
    }

    /// Serializes the master secret key (handle the bytes as a secret).
    pub fn to_bytes(&self) -> zeroize::Zeroizing<Vec<u8>> {
        let mut w = Writer::new(Kind::AbeMasterSecretKey);
        for s in self.a.iter().chain(self.b.iter()) {
            w.scalar(s);
        }
        for p in &self.g_d {
            w.g1(p);
        }
        zeroize::Zeroizing::new(w.finish())
    }

    /// Parses a master secret key.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes, Kind::AbeMasterSecretKey)?;
        let a = [r.scalar("a_1")?, r.scalar("a_2")?];
        let b = [r.scalar("b_1")?, r.scalar("b_2")?];
        let g_d = [r.g1("g^d_1")?, r.g1("g^d_2")?, r.g1("g^d_3")?];
        r.finish()?;
        Ok(MasterSecretKey { a, b, g_d })
    }
}

fn to_affine3(points: &[G1Projective; 3]) -> [G1Affine; 3] {
    let mut out = [G1Affine::identity(); 3];
    G1Projective::batch_normalize(points, &mut out);
    out
}

impl PublicKey {
    fn tables(&self) -> &[GtTable; 2] {
        self.tables
            .get_or_init(|| [GtTable::new(&self.t[0]), GtTable::new(&self.t[1])])
    }

    /// Encapsulates a fresh key under `policy`.
    pub fn encapsulate(
        &self,
        policy: &Policy,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> (Ciphertext, KemKey) {
        let (s1, s2) = (random_nonzero(rng), random_nonzero(rng));
        let h = G2Projective::generator();
        let ct0 = [self.h_a[0] * s1, self.h_a[1] * s2, h * (s1 + s2)];

        let msp = SpanProgram::from_policy(policy);
        let columns = column_hashes(msp.columns);
        let occurrences = policy.occurrences();
        let mut rows_proj = Vec::with_capacity(msp.rows.len() * 3);
        for row in &msp.rows {
            let (y, k) = occurrences[row.leaf];
            let mut ab = attribute_hashes(y, k);
            for (j, m) in &row.entries {
                for (l, ab_l) in ab.iter_mut().enumerate() {
                    for (t, p) in ab_l.iter_mut().enumerate() {
                        *p += scale_public(&columns[*j][l][t], m);
                    }
                }
            }
            for [a, b] in ab {
                rows_proj.push(a * s1 + b * s2);
            }
        }
        let mut rows_affine = vec![G1Affine::identity(); rows_proj.len()];
        G1Projective::batch_normalize(&rows_proj, &mut rows_affine);
        let rows = rows_affine
            .chunks_exact(3)
            .map(|c| [c[0], c[1], c[2]])
            .collect();

        let [t1, t2] = self.tables();
        let mut shared = t1.pow(&s1) + t2.pow(&s2);
        let key = KemKey::derive(&shared);
        let (mut s1, mut s2) = (s1, s2);
        wipe(&mut s1, Scalar::ZERO);
        wipe(&mut s2, Scalar::ZERO);
        wipe(&mut shared, Gt::identity());
        let mut ct0_affine = [G2Affine::identity(); 3];
        G2Projective::batch_normalize(&ct0, &mut ct0_affine);
        let ct = Ciphertext {
            policy: policy.clone(),
            ct0: ct0_affine,
            rows,
        };
        (ct, key)
    }

    /// Serializes the public key.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::new(Kind::AbePublicKey);
        w.g2(&self.h_a[0]);
        w.g2(&self.h_a[1]);
        w.gt(&self.t[0]);
        w.gt(&self.t[1]);
        w.finish()
    }

    /// Parses a public key.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes, Kind::AbePublicKey)?;
        let h_a = [r.g2("h^a_1")?, r.g2("h^a_2")?];
        let t = [r.gt("T_1")?, r.gt("T_2")?];
        r.finish()?;
        Ok(PublicKey {
            h_a,
            t,
            tables: OnceLock::new(),
        })
    }
}

/// `m · P` for a public span-program entry `m`: `±1` (the common case) is a
/// point addition or subtraction.
fn scale_public(p: &G1Affine, m: &Scalar) -> G1Projective {
    if *m == Scalar::ONE {
        G1Projective::from(p)
    } else if *m == -Scalar::ONE {
        -G1Projective::from(p)
    } else {
        p * m
    }
}

/// `Σ γ_i · P_i` for public coefficients.
fn combine<'a>(terms: impl Iterator<Item = (&'a G1Affine, &'a Scalar)>) -> G1Projective {
    terms.fold(G1Projective::identity(), |acc, (p, g)| {
        acc + scale_public(p, g)
    })
}

impl UserKey {
    /// The attributes this key holds.
    pub fn attributes(&self) -> impl Iterator<Item = &str> {
        self.attrs.keys().map(String::as_str)
    }

    /// Recovers the key encapsulated in `ct`, or [`Error::NotSatisfied`].
    pub fn decapsulate(&self, ct: &Ciphertext) -> Result<KemKey, Error> {
        let occurrences = ct.policy.occurrences();
        let component = |leaf: usize| {
            let (y, k) = occurrences[leaf];
            self.attrs.get(y).and_then(|copies| copies.get(k - 1))
        };
        let coefficients = reconstruction(&ct.policy, &|leaf| component(leaf).is_some())
            .ok_or_else(|| Error::NotSatisfied {
                policy: ct.policy.to_string(),
            })?;
        // `reconstruction` only returns rows whose component the key holds.
        let key_rows: Vec<&[G1Affine; 3]> = coefficients
            .iter()
            .filter_map(|(row, _)| component(*row))
            .collect();
        let mut den = [G1Projective::identity(); 3];
        let mut num = [G1Projective::identity(); 3];
        for l in 0..3 {
            num[l] = combine(
                coefficients
                    .iter()
                    .map(|(row, gamma)| (&ct.rows[*row][l], gamma)),
            );
            den[l] = combine(
                key_rows
                    .iter()
                    .zip(&coefficients)
                    .map(|(k, (_, gamma))| (&k[l], gamma)),
            ) + self.sk_prime[l];
        }
        Ok(self.key_from_sums(&den, &num, &ct.ct0))
    }

    /// FAME's decryption equation, given the combined key sums
    /// `den_ℓ = sk'_ℓ · Π sk_{π(i),ℓ}^{γ_i}` and ciphertext sums
    /// `num_ℓ = Π ct_{i,ℓ}^{γ_i}`:
    /// `Π_ℓ e(den_ℓ, ct_{0,ℓ}) / Π_ℓ e(num_ℓ, sk_{0,ℓ})`, through the KDF.
    fn key_from_sums(
        &self,
        den: &[G1Projective; 3],
        num: &[G1Projective; 3],
        ct0: &[G2Affine; 3],
    ) -> KemKey {
        let points = [den[0], den[1], den[2], -num[0], -num[1], -num[2]];
        let mut g1 = [G1Affine::identity(); 6];
        G1Projective::batch_normalize(&points, &mut g1);
        let g2 = [
            ct0[0],
            ct0[1],
            ct0[2],
            self.sk0[0],
            self.sk0[1],
            self.sk0[2],
        ];
        let mut shared = pairing_product(&g1, &g2);
        let key = KemKey::derive(&shared);
        wipe(&mut shared, Gt::identity());
        wipe(&mut g1, [G1Affine::identity(); 6]);
        key
    }

    /// Serializes the key (handle the bytes as a secret).
    pub fn to_bytes(&self) -> zeroize::Zeroizing<Vec<u8>> {
        let mut w = Writer::new(Kind::AbeUserKey);
        self.sk0.iter().for_each(|p| w.g2(p));
        self.sk_prime.iter().for_each(|p| w.g1(p));
        w.u32(self.attrs.len() as u32);
        for (name, copies) in &self.attrs {
            w.bytes16(name.as_bytes());
            w.u16(copies.len() as u16);
            copies.iter().flatten().for_each(|p| w.g1(p));
        }
        zeroize::Zeroizing::new(w.finish())
    }

    /// Parses a user key.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes, Kind::AbeUserKey)?;
        let sk0 = [r.g2("sk_0")?, r.g2("sk_0")?, r.g2("sk_0")?];
        let sk_prime = [r.g1("sk'")?, r.g1("sk'")?, r.g1("sk'")?];
        let n = r.count("attribute count", MAX_KEY_ATTRIBUTES, 2 + 1 + 2 + 3 * 48)?;
        let mut attrs: BTreeMap<String, Vec<[G1Affine; 3]>> = BTreeMap::new();
        for _ in 0..n {
            let name = r.str16("attribute", MAX_ATTRIBUTE_BYTES)?;
            check_attribute(name).map_err(|e| DecodeError::Invalid {
                what: "attribute",
                why: e.to_string(),
            })?;
            // One encoding per key: attributes in ascending order, as
            // `to_bytes` writes them (and so, no attribute twice).
            if attrs
                .keys()
                .next_back()
                .is_some_and(|last| last.as_str() >= name)
            {
                return Err(DecodeError::Invalid {
                    what: "attribute",
                    why: format!("`{name}` is out of order or repeated (attributes are sorted)"),
                });
            }
            let copies = r.u16("occurrence count")? as usize;
            if copies == 0 || copies > MAX_REPETITIONS {
                return Err(DecodeError::Invalid {
                    what: "occurrence count",
                    why: format!("{copies}, expected 1 to {MAX_REPETITIONS}"),
                });
            }
            let mut parts = Vec::with_capacity(copies);
            for _ in 0..copies {
                parts.push([r.g1("sk_y")?, r.g1("sk_y")?, r.g1("sk_y")?]);
            }
            attrs.insert(name.to_string(), parts);
        }
        r.finish()?;
        Ok(UserKey {
            sk0,
            sk_prime,
            attrs,
        })
    }
}

/// `Π e(g1_i, g2_i)`: one multi-Miller loop (shared squarings) and one final
/// exponentiation. Identity points contribute 1 (blst's loop expects none).
pub(crate) fn pairing_product(g1: &[G1Affine], g2: &[G2Affine]) -> Gt {
    use blst::{blst_fp12, blst_p1_affine, blst_p2_affine};
    let (ps, qs): (Vec<blst_p1_affine>, Vec<blst_p2_affine>) = g1
        .iter()
        .zip(g2)
        .filter(|(p, q)| !bool::from(p.is_identity() | q.is_identity()))
        .map(|(p, q)| (*p.as_ref(), *q.as_ref()))
        .unzip();
    if ps.is_empty() {
        return Gt::identity();
    }
    let ml = blst_fp12::miller_loop_n(&qs, &ps);
    Gt::from(Fp12::from(ml.final_exp()))
}

impl Ciphertext {
    /// The policy this ciphertext was made for.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Serializes the ciphertext.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::new(Kind::AbeCiphertext);
        w.bytes32(self.policy.to_string().as_bytes());
        self.ct0.iter().for_each(|p| w.g2(p));
        w.u32(self.rows.len() as u32);
        for row in &self.rows {
            row.iter().for_each(|p| w.g1(p));
        }
        w.finish()
    }

    /// Reads only the policy of an encoded ciphertext (no group elements are
    /// decoded): for services that check who may ask for a ciphertext without
    /// paying for its full validation.
    pub fn peek_policy(bytes: &[u8]) -> Result<Policy, DecodeError> {
        let mut r = Reader::new(bytes, Kind::AbeCiphertext)?;
        let text = std::str::from_utf8(r.bytes32("policy", MAX_POLICY_BYTES)?)
            .map_err(|_| DecodeError::InvalidUtf8("policy"))?;
        Policy::parse(text).map_err(|e| DecodeError::Invalid {
            what: "policy",
            why: e.to_string(),
        })
    }

    /// Parses a ciphertext. The policy must be in canonical form and have exactly
    /// one row per attribute occurrence.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes, Kind::AbeCiphertext)?;
        let text = std::str::from_utf8(r.bytes32("policy", MAX_POLICY_BYTES)?)
            .map_err(|_| DecodeError::InvalidUtf8("policy"))?;
        let policy = Policy::parse(text).map_err(|e| DecodeError::Invalid {
            what: "policy",
            why: e.to_string(),
        })?;
        if policy.to_string() != text {
            return Err(DecodeError::Invalid {
                what: "policy",
                why: "not in canonical form".into(),
            });
        }
        let ct0 = [r.g2("ct_0")?, r.g2("ct_0")?, r.g2("ct_0")?];
        let n = r.count("row count", policy.leaf_count(), 3 * 48)?;
        if n != policy.leaf_count() {
            return Err(DecodeError::Invalid {
                what: "row count",
                why: format!("{n} rows for a policy with {} leaves", policy.leaf_count()),
            });
        }
        let mut rows = Vec::with_capacity(n);
        for _ in 0..n {
            rows.push([r.g1("ct_i")?, r.g1("ct_i")?, r.g1("ct_i")?]);
        }
        r.finish()?;
        Ok(Ciphertext { policy, ct0, rows })
    }
}

/// The primitive operations of this module, exposed so benchmarks can time
/// them in the same run as the scheme and report how close it comes to them.
#[doc(hidden)]
pub mod primitives {
    use super::*;

    /// `H(y ℓ t)`: one hash to G1 with the scheme's tag.
    pub fn hash_attribute(y: &str) -> G1Projective {
        super::hash_attribute(y, 1, 1, 1)
    }

    /// Empties the attribute-hash cache, to time the cold path.
    pub fn clear_attribute_hash_cache() {
        ATTRIBUTE_HASHES
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// `T_1^s` with the public key's fixed-base table, as encryption does it.
    pub fn gt_fixed_base_pow(mpk: &PublicKey, s: &Scalar) -> Gt {
        mpk.tables()[0].pow(s)
    }

    /// A product of pairings, as decryption computes it.
    pub fn pairing_product(g1: &[G1Affine], g2: &[G2Affine]) -> Gt {
        super::pairing_product(g1, g2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    fn rng() -> ChaCha20Rng {
        ChaCha20Rng::seed_from_u64(7)
    }

    #[test]
    fn cached_attribute_hashes_equal_fresh_ones() {
        let fresh = [1u8, 2, 3].map(|l| [1u8, 2].map(|t| hash_attribute("role:x", 2, l, t)));
        primitives::clear_attribute_hash_cache();
        assert_eq!(attribute_hashes("role:x", 2), fresh); // miss
        assert_eq!(attribute_hashes("role:x", 2), fresh); // hit
        assert_ne!(attribute_hashes("role:x", 1), fresh);
    }

    #[test]
    fn gt_table_matches_plain_exponentiation() {
        let mut rng = rng();
        let base = Gt::random(&mut rng);
        let table = GtTable::new(&base);
        for s in [
            Scalar::ZERO,
            Scalar::ONE,
            -Scalar::ONE,
            Scalar::random(&mut rng),
        ] {
            assert_eq!(table.pow(&s), base * s);
        }
    }

    #[test]
    fn public_key_matches_setup_values() {
        let mut rng = rng();
        let (mpk, msk) = setup(&mut rng);
        let g = G1Affine::generator();
        let h = G2Affine::generator();
        // T_1 = e(g,h)^{d_1 a_1 + d_3}, computed the long way.
        let d3 = blstrs::pairing(&msk.g_d[2], &h);
        let d1 = blstrs::pairing(&msk.g_d[0], &h);
        assert_eq!(mpk.t[0], d1 * msk.a[0] + d3);
        assert_eq!(mpk.h_a[0], (h * msk.a[0]).to_affine());
        assert!(!bool::from(g.is_identity()));
    }

    #[test]
    fn pairing_product_matches_separate_pairings() {
        let mut rng = rng();
        let g1: Vec<G1Affine> = (0..4)
            .map(|_| G1Projective::random(&mut rng).to_affine())
            .collect();
        let g2: Vec<G2Affine> = (0..4)
            .map(|_| G2Projective::random(&mut rng).to_affine())
            .collect();
        let expect: Gt = g1.iter().zip(&g2).map(|(p, q)| blstrs::pairing(p, q)).sum();
        assert_eq!(pairing_product(&g1, &g2), expect);
        let mut with_identity = g1.clone();
        with_identity[1] = G1Affine::identity();
        let expect: Gt = [0, 2, 3]
            .iter()
            .map(|&i| blstrs::pairing(&g1[i], &g2[i]))
            .sum();
        assert_eq!(pairing_product(&with_identity, &g2), expect);
    }

    #[test]
    fn round_trip_and_refusal() {
        let mut rng = rng();
        let (mpk, msk) = setup(&mut rng);
        let policy = Policy::parse("(role:doctor and dept:cardiology) or patient:7f3a or 2 of (role:nurse, ward:icu, shift:night)").unwrap();
        let (ct, k) = mpk.encapsulate(&policy, &mut rng);
        for attrs in [
            &["role:doctor", "dept:cardiology"][..],
            &["patient:7f3a"],
            &["ward:icu", "shift:night", "role:clerk"],
        ] {
            let key = msk.keygen(attrs, &mut rng).unwrap();
            assert_eq!(key.decapsulate(&ct).unwrap(), k, "{attrs:?}");
        }
        for attrs in [&["role:doctor"][..], &["ward:icu", "dept:cardiology"], &[]] {
            let key = msk.keygen(attrs, &mut rng).unwrap();
            assert!(matches!(
                key.decapsulate(&ct),
                Err(Error::NotSatisfied { .. })
            ));
        }
    }

    /// Two users whose attributes each fall short of the policy, but together
    /// satisfy it, try every obvious way of combining their key components.
    #[test]
    fn colluding_users_cannot_combine_keys() {
        let mut rng = rng();
        let (mpk, msk) = setup(&mut rng);
        let policy = Policy::parse("role:doctor and dept:cardiology").unwrap();
        let (ct, k) = mpk.encapsulate(&policy, &mut rng);
        let alice = msk.keygen(&["role:doctor"], &mut rng).unwrap();
        let bob = msk.keygen(&["dept:cardiology"], &mut rng).unwrap();
        assert!(alice.decapsulate(&ct).is_err() && bob.decapsulate(&ct).is_err());

        let mix = |base: &UserKey, sk0: [G2Affine; 3], sk_prime: [G1Affine; 3]| {
            let mut attrs = base.attrs.clone();
            attrs.extend(alice.attrs.clone());
            attrs.extend(bob.attrs.clone());
            UserKey {
                sk0,
                sk_prime,
                attrs,
            }
        };
        let attempts = [
            mix(&alice, alice.sk0, alice.sk_prime),
            mix(&bob, bob.sk0, bob.sk_prime),
            mix(&alice, alice.sk0, bob.sk_prime),
            mix(&alice, bob.sk0, alice.sk_prime),
            // Averages of both users' common parts.
            mix(
                &alice,
                [0, 1, 2].map(|i| {
                    ((G2Projective::from(alice.sk0[i]) + bob.sk0[i])
                        * Scalar::from(2).invert().unwrap())
                    .to_affine()
                }),
                [0, 1, 2].map(|i| {
                    ((G1Projective::from(alice.sk_prime[i]) + bob.sk_prime[i])
                        * Scalar::from(2).invert().unwrap())
                    .to_affine()
                }),
            ),
        ];
        for (i, key) in attempts.iter().enumerate() {
            let got = key
                .decapsulate(&ct)
                .expect("the mixed key names both attributes");
            assert_ne!(got, k, "mixing attempt {i} recovered the key");
        }
        // Sanity: a genuine key with both attributes works.
        let carol = msk
            .keygen(&["role:doctor", "dept:cardiology"], &mut rng)
            .unwrap();
        assert_eq!(carol.decapsulate(&ct).unwrap(), k);
    }

    /// Regression: with one label per attribute, a key holding only `z` could
    /// open `y and (z or y)` by combining 2·row(z) + row(y₁) − row(y₂) = e₁,
    /// since the two `y` rows' hashes cancel. Occurrence labels stop that.
    #[test]
    fn repeated_attribute_rows_cannot_be_cancelled() {
        let mut rng = rng();
        let (mpk, msk) = setup(&mut rng);
        let policy = Policy::parse("y and (z or y)").unwrap();
        let (ct, k) = mpk.encapsulate(&policy, &mut rng);
        let z_only = msk.keygen(&["z"], &mut rng).unwrap();
        assert!(z_only.decapsulate(&ct).is_err());
        // Rows: y#1 = (1, 1), z = (0, -1), y#2 = (0, -1).
        let two = Scalar::from(2);
        let zk = &z_only.attrs["z"][0];
        let num = [0, 1, 2].map(|l| ct.rows[1][l] * two + ct.rows[0][l] - ct.rows[2][l]);
        let den = [0, 1, 2].map(|l| zk[l] * two + z_only.sk_prime[l]);
        assert_ne!(z_only.key_from_sums(&den, &num, &ct.ct0), k);
        // Holders of y (through either occurrence) still decrypt.
        let y_and_z = msk.keygen(&["y", "z"], &mut rng).unwrap();
        assert_eq!(y_and_z.decapsulate(&ct).unwrap(), k);
        let y_only = msk.keygen(&["y"], &mut rng).unwrap();
        assert_eq!(y_only.decapsulate(&ct).unwrap(), k);
    }

    #[test]
    fn serialization_round_trips() {
        let mut rng = rng();
        let (mpk, msk) = setup(&mut rng);
        let key = msk.keygen(&["a", "b c"], &mut rng).unwrap();
        let policy = Policy::parse("a and \"b c\"").unwrap();
        let (ct, k) = mpk.encapsulate(&policy, &mut rng);

        let mpk2 = PublicKey::from_bytes(&mpk.to_bytes()).unwrap();
        assert_eq!(mpk2, mpk);
        let msk2 = MasterSecretKey::from_bytes(&msk.to_bytes()).unwrap();
        assert_eq!(msk2.public_key(), mpk);
        let key2 = UserKey::from_bytes(&key.to_bytes()).unwrap();
        let ct2 = Ciphertext::from_bytes(&ct.to_bytes()).unwrap();
        assert_eq!(ct2, ct);
        assert_eq!(key2.decapsulate(&ct2).unwrap(), k);
        // A key from the re-read master key also works.
        let key3 = msk2.keygen(&["a", "b c"], &mut rng).unwrap();
        assert_eq!(key3.decapsulate(&ct).unwrap(), k);
    }

    #[test]
    fn debug_output_hides_secrets() {
        let mut rng = rng();
        let (_, msk) = setup(&mut rng);
        let key = msk.keygen(&["a"], &mut rng).unwrap();
        assert_eq!(format!("{msk:?}"), "MasterSecretKey(<redacted>)");
        assert!(format!("{key:?}").contains("<redacted>"));
    }
}
