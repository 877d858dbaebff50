//! Inner-product functional encryption over ristretto255: a key for a
//! vector `y` opens an encryption of `x` to `<x, y>` and nothing else.
//!
//! * [`Ipfe`]: single-input IPFE, the DDH scheme of Agrawal, Libert and
//!   Stehlé (CRYPTO 2016, §3), which is adaptively secure, rather than the
//!   selectively secure Abdalla–Bourse–De Caro–Pointcheval (PKC 2015) scheme:
//!   it costs one more fixed-base multiplication per ciphertext and two per
//!   decryption, and a key holder cannot choose its function after seeing
//!   the ciphertexts' public key material to break it.
//!   `mpk: h_i = s_i·G + t_i·H`; `Enc(x) = (r·G, r·H, x_i·G + r·h_i)`;
//!   `sk_y = (<s,y>, <t,y>)`; `Dec = Σ y_i·E_i − <s,y>·C − <t,y>·D = <x,y>·G`.
//! * [`Mcfe`]: the multi-client scheme of Chotard, Dufour Sans, Gay, Phan and
//!   Pointcheval (ASIACRYPT 2018, §4, DDH in the random-oracle model). Slot
//!   `i` (one patient's value at one data provider) has its own key
//!   `s_i ∈ Z_p²`; under a label `ℓ` (study and period) it encrypts
//!   `c_i = s_i,1·U1 + s_i,2·U2 + x_i·G` with `(U1, U2) = H(ℓ)`; the key for `y`
//!   is `d = Σ y_i·s_i`, and `Σ y_i·c_i − d_1·U1 − d_2·U2 = <x,y>·G`. Providers
//!   encrypt independently; a slot must encrypt at most one value per label.
//!
//!   In the paper a functional key works under every label. Here a key is
//!   bound to one label: a slot encrypts under label `ℓ` with its key for
//!   that label, `s_i(ℓ) = H(s_i, ℓ)` ([`SlotKey::for_label`], SHA-512 to two
//!   scalars, a random oracle as the paper's `H(ℓ)`), and a key for `ℓ` sums
//!   those. Each label is then an instance of the scheme with slot keys of its
//!   own, independent of every other label's: a key asked for one label (a
//!   count) opens no other (the values). The centralised key generator holds
//!   the `s_i`, so it derives the per-label keys as the providers do.
//! * [`DlogTable`]: the bounded discrete logarithm by baby-step giant-step
//!   over a precomputed table, signed results in `[-bound, bound]`, an error
//!   (never a wrong number) beyond.
//!
//! Values are integers; fixed-point values are scaled before encryption
//! ([`scale`]) and the inner product divided back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use curve25519_dalek::constants::{RISTRETTO_BASEPOINT_POINT as G, RISTRETTO_BASEPOINT_TABLE};
use curve25519_dalek::ristretto::{RistrettoBasepointTable, RistrettoPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::{Identity, VartimeMultiscalarMul};
use rand_core::{CryptoRng, RngCore};
use sha2::{Digest, Sha512};
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};
use zeroize::Zeroize;

/// Errors of the functional-encryption schemes.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FeError {
    /// A vector whose length is not the scheme's.
    #[error("expected a vector of length {expected}, got {got}")]
    Length {
        /// The scheme's length.
        expected: usize,
        /// The vector's.
        got: usize,
    },
    /// The inner product is outside what the discrete-log table covers.
    #[error("the result is outside [-{bound}, {bound}]: ask for a smaller aggregate or use a larger bound")]
    OutOfRange {
        /// The bound searched.
        bound: u64,
    },
    /// A fixed-point value that does not fit.
    #[error("{0} does not fit the fixed-point scale")]
    Scale(f64),
    /// A value of 2^32 or more in magnitude.
    #[error("{0} is too large to encrypt: values must lie strictly between -2^32 and 2^32")]
    TooLarge(i64),
}

/// A fixed-base multiplication (constant time).
fn mul(table: &RistrettoBasepointTable, s: &Scalar) -> RistrettoPoint {
    table * s
}

fn scalar_of(v: i64) -> Scalar {
    let s = Scalar::from(v.unsigned_abs());
    if v < 0 {
        -s
    } else {
        s
    }
}

/// `value · 10^decimals` as an integer, e.g. one decimal: 7.3 → 73.
pub fn scale(value: f64, decimals: u32) -> Result<i64, FeError> {
    let scaled = (value * 10f64.powi(decimals as i32)).round();
    if scaled.is_finite() && scaled.abs() < (1u64 << 52) as f64 {
        Ok(scaled as i64)
    } else {
        Err(FeError::Scale(value))
    }
}

/// Largest magnitude of an encrypted value (exclusive): values are at most
/// 32 bits, so `x·G` takes eight constant-time lookups ([`small_mul`]).
pub const MAX_VALUE: u64 = 1 << 32;

/// `d · 16^k · G` for `k < 8`, `d < 16`: the digits of a 32-bit value.
fn small_table() -> &'static [[RistrettoPoint; 16]; 8] {
    static TABLE: OnceLock<Box<[[RistrettoPoint; 16]; 8]>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut rows = Box::new([[RistrettoPoint::identity(); 16]; 8]);
        let mut base = G;
        for row in rows.iter_mut() {
            for d in 1..16 {
                row[d] = row[d - 1] + base;
            }
            base = row[15] + base;
        }
        rows
    })
}

/// `x·G` for `|x| < 2^32` in constant time: per 4-bit digit, a constant-time
/// selection among 16 precomputed points (a fixed-base comb over the
/// group's own addition and selection), then a conditional negation. Eight
/// additions instead of a full 253-bit fixed-base multiplication.
fn small_mul(x: i64) -> Result<RistrettoPoint, FeError> {
    let magnitude = x.unsigned_abs();
    if magnitude >= MAX_VALUE {
        return Err(FeError::TooLarge(x));
    }
    let mut acc = RistrettoPoint::identity();
    for (k, row) in small_table().iter().enumerate() {
        let digit = ((magnitude >> (4 * k)) & 15) as u8;
        let mut selected = RistrettoPoint::identity();
        for (d, point) in row.iter().enumerate() {
            selected.conditional_assign(point, (d as u8).ct_eq(&digit));
        }
        acc += selected;
    }
    let negative = Choice::from(u8::from(x < 0));
    Ok(RistrettoPoint::conditional_select(&acc, &-acc, negative))
}

/// The second generator, with no known discrete log to `G`.
fn generator_h() -> RistrettoPoint {
    RistrettoPoint::hash_from_bytes::<Sha512>(b"asclepios ipfe v1 generator H")
}

/// A table for discrete logs of `v·G` with `|v| ≤ bound`: `m` baby steps kept
/// as 8-byte prefixes of `compress(2·i·G)`, and `2·bound / m` giant steps, each
/// one point subtraction and a share of one batched inversion.
pub struct DlogTable {
    baby: HashMap<u64, u32>,
    m: u64,
    giant: RistrettoPoint,
}

impl std::fmt::Debug for DlogTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DlogTable({} baby steps)", self.m)
    }
}

/// Points compressed per batched inversion.
const BATCH: usize = 512;

fn prefix(c: &curve25519_dalek::ristretto::CompressedRistretto) -> u64 {
    u64::from_le_bytes(c.as_bytes()[..8].try_into().expect("8 bytes"))
}

impl DlogTable {
    /// A table of `baby_steps` entries (rounded up to a power of two, at
    /// least 2^8, at most 2^26): about 24 bytes each.
    pub fn new(baby_steps: u64) -> Self {
        let m = baby_steps.clamp(1 << 8, 1 << 26).next_power_of_two();
        let mut baby = HashMap::with_capacity(m as usize);
        let mut point = RistrettoPoint::identity();
        let mut chunk = Vec::with_capacity(BATCH);
        let mut i = 0u64;
        while i < m {
            chunk.clear();
            while chunk.len() < BATCH && i + (chunk.len() as u64) < m {
                chunk.push(point);
                point += G;
            }
            for (k, c) in RistrettoPoint::double_and_compress_batch(&chunk)
                .iter()
                .enumerate()
            {
                // A prefix collision keeps the smaller index; lookups verify.
                baby.entry(prefix(c)).or_insert((i + k as u64) as u32);
            }
            i += chunk.len() as u64;
        }
        DlogTable {
            baby,
            m,
            giant: point,
        }
    }

    /// A process-wide table of `baby_steps` entries, built on first use.
    pub fn shared(baby_steps: u64) -> Arc<DlogTable> {
        static TABLES: OnceLock<Mutex<HashMap<u64, Arc<DlogTable>>>> = OnceLock::new();
        let m = baby_steps.clamp(1 << 8, 1 << 26).next_power_of_two();
        let tables = TABLES.get_or_init(Default::default);
        if let Some(t) = tables.lock().unwrap_or_else(|p| p.into_inner()).get(&m) {
            return t.clone();
        }
        let table = Arc::new(DlogTable::new(m));
        tables
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(m)
            .or_insert(table)
            .clone()
    }

    /// Baby steps in the table.
    pub fn baby_steps(&self) -> u64 {
        self.m
    }

    /// `v` with `v·G = point` and `|v| ≤ bound`, or [`FeError::OutOfRange`].
    /// Non-negative results are searched first (counts and sums are), in
    /// batches that start small, so the cost follows `|v| / baby_steps`; a
    /// negative result costs a full sweep of the non-negative side first.
    pub fn solve(&self, point: &RistrettoPoint, bound: u64) -> Result<i64, FeError> {
        let bound = bound.min(i64::MAX as u64);
        if let Some(v) = self.search(point, bound) {
            return Ok(v as i64);
        }
        if let Some(v) = self.search(&-point, bound) {
            return Ok(-(v as i64));
        }
        Err(FeError::OutOfRange { bound })
    }

    /// Giant steps of [`DlogTable::solve`] for a result `v` (for benchmarks'
    /// arithmetic bound).
    pub fn giant_steps(&self, v: i64, bound: u64) -> u64 {
        let steps = |w: u64| w / self.m + 1;
        if v >= 0 {
            steps(v as u64)
        } else {
            steps(bound) + steps(v.unsigned_abs())
        }
    }

    /// `w ∈ [0, bound]` with `w·G = point`.
    fn search(&self, point: &RistrettoPoint, bound: u64) -> Option<u64> {
        let giants = bound / self.m + 1;
        let mut candidate = *point;
        let mut j = 0u64;
        let mut batch = 16;
        let mut chunk = Vec::with_capacity(BATCH);
        while j < giants {
            chunk.clear();
            let first = j;
            while chunk.len() < batch && j < giants {
                chunk.push(candidate);
                candidate -= self.giant;
                j += 1;
            }
            batch = (batch * 2).min(BATCH);
            for (k, c) in RistrettoPoint::double_and_compress_batch(&chunk)
                .iter()
                .enumerate()
            {
                if let Some(&i) = self.baby.get(&prefix(c)) {
                    let w = (first + k as u64) * self.m + u64::from(i);
                    // A prefix match is checked against the full point.
                    if w <= bound && mul(RISTRETTO_BASEPOINT_TABLE, &Scalar::from(w)) == *point {
                        return Some(w);
                    }
                }
            }
        }
        None
    }
}

/// Single-input IPFE (ALS16, DDH) for vectors of length `n`: the master
/// public key with a fixed-base table per `h_i`.
pub struct Ipfe {
    h_table: RistrettoBasepointTable,
    mpk: Vec<RistrettoPoint>,
    mpk_tables: Vec<RistrettoBasepointTable>,
}

impl std::fmt::Debug for Ipfe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ipfe(n = {})", self.mpk.len())
    }
}

/// The master secret `(s, t)`.
pub struct IpfeMasterKey {
    s: Vec<Scalar>,
    t: Vec<Scalar>,
}

impl Drop for IpfeMasterKey {
    fn drop(&mut self) {
        self.s.zeroize();
        self.t.zeroize();
    }
}

impl std::fmt::Debug for IpfeMasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IpfeMasterKey(<redacted>)")
    }
}

/// A function key for `y`.
#[derive(Clone)]
pub struct IpfeKey {
    y: Vec<i64>,
    s_y: Scalar,
    t_y: Scalar,
}

impl Drop for IpfeKey {
    fn drop(&mut self) {
        self.s_y.zeroize();
        self.t_y.zeroize();
    }
}

impl std::fmt::Debug for IpfeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IpfeKey(y of length {}, <key redacted>)", self.y.len())
    }
}

/// An encrypted vector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpfeCiphertext {
    c: RistrettoPoint,
    d: RistrettoPoint,
    e: Vec<RistrettoPoint>,
}

fn check_len(expected: usize, got: usize) -> Result<(), FeError> {
    if expected == got {
        Ok(())
    } else {
        Err(FeError::Length { expected, got })
    }
}

impl Ipfe {
    /// Setup for vectors of length `n`.
    pub fn setup(n: usize, rng: &mut (impl RngCore + CryptoRng)) -> (Ipfe, IpfeMasterKey) {
        let h = generator_h();
        let h_table = RistrettoBasepointTable::create(&h);
        let s: Vec<Scalar> = (0..n).map(|_| Scalar::random(rng)).collect();
        let t: Vec<Scalar> = (0..n).map(|_| Scalar::random(rng)).collect();
        let mpk: Vec<RistrettoPoint> = s
            .iter()
            .zip(&t)
            .map(|(s, t)| mul(RISTRETTO_BASEPOINT_TABLE, s) + mul(&h_table, t))
            .collect();
        let ipfe = Ipfe::from_public(mpk, h_table);
        (ipfe, IpfeMasterKey { s, t })
    }

    fn from_public(mpk: Vec<RistrettoPoint>, h_table: RistrettoBasepointTable) -> Ipfe {
        let mpk_tables = mpk.iter().map(RistrettoBasepointTable::create).collect();
        Ipfe {
            h_table,
            mpk,
            mpk_tables,
        }
    }

    /// The vector length.
    pub fn len(&self) -> usize {
        self.mpk.len()
    }

    /// Whether the length is zero.
    pub fn is_empty(&self) -> bool {
        self.mpk.is_empty()
    }

    /// Encrypts `x` (`|x_i| < 2^32`): `2 + n` fixed-base multiplications and
    /// `n` short ones, constant time in `x` and `r`.
    pub fn encrypt(
        &self,
        x: &[i64],
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<IpfeCiphertext, FeError> {
        check_len(self.len(), x.len())?;
        let mut r = Scalar::random(rng);
        let c = mul(RISTRETTO_BASEPOINT_TABLE, &r);
        let d = mul(&self.h_table, &r);
        let e = x
            .iter()
            .zip(&self.mpk_tables)
            .map(|(&xi, table)| Ok(small_mul(xi)? + mul(table, &r)))
            .collect::<Result<Vec<_>, FeError>>();
        r.zeroize();
        Ok(IpfeCiphertext { c, d, e: e? })
    }

    /// The function key for `y`.
    pub fn keygen(&self, msk: &IpfeMasterKey, y: &[i64]) -> Result<IpfeKey, FeError> {
        check_len(self.len(), y.len())?;
        let dot =
            |v: &[Scalar]| -> Scalar { v.iter().zip(y).map(|(a, &b)| a * scalar_of(b)).sum() };
        Ok(IpfeKey {
            y: y.to_vec(),
            s_y: dot(&msk.s),
            t_y: dot(&msk.t),
        })
    }

    /// `<x, y>`, if it lies in `[-bound, bound]`.
    pub fn decrypt(
        &self,
        key: &IpfeKey,
        ct: &IpfeCiphertext,
        table: &DlogTable,
        bound: u64,
    ) -> Result<i64, FeError> {
        check_len(self.len(), ct.e.len())?;
        check_len(self.len(), key.y.len())?;
        // `y` and the ciphertext are public: variable time is fine there.
        let weighted =
            RistrettoPoint::vartime_multiscalar_mul(key.y.iter().map(|&v| scalar_of(v)), &ct.e);
        // The key's scalars are secret: constant-time multiplications.
        let mask = ct.c * key.s_y + ct.d * key.t_y;
        table.solve(&(weighted - mask), bound)
    }
}

/// Multi-client IPFE (Chotard et al. 2018, DDH): one key per slot, labels.
#[derive(Debug)]
pub struct Mcfe;

/// A slot's encryption key `s_i ∈ Z_p²` (held by the data provider).
#[derive(Clone)]
pub struct SlotKey([Scalar; 2]);

impl Drop for SlotKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl std::fmt::Debug for SlotKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SlotKey(<redacted>)")
    }
}

/// A decryption key for weights `y` over some slots.
#[derive(Clone)]
pub struct McfeKey {
    d: [Scalar; 2],
}

impl Drop for McfeKey {
    fn drop(&mut self) {
        self.d.zeroize();
    }
}

impl std::fmt::Debug for McfeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("McfeKey(<redacted>)")
    }
}

/// The label's two points `(U1, U2) = H(ℓ)`, with fixed-base tables (a
/// provider encrypting many values under one label builds them once), and
/// the digest slot keys for it are derived with.
pub struct Label {
    u: [RistrettoPoint; 2],
    tables: [RistrettoBasepointTable; 2],
    binding: [u8; 64],
}

impl std::fmt::Debug for Label {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Label")
    }
}

impl Label {
    /// The label for `name` (e.g. `study-17/2026-Q3/systolic`).
    pub fn new(name: &str) -> Label {
        let point = |i: u8| {
            let mut input = b"asclepios mcfe v1 label ".to_vec();
            input.push(i);
            input.extend_from_slice(name.as_bytes());
            RistrettoPoint::hash_from_bytes::<Sha512>(&input)
        };
        let u = [point(1), point(2)];
        let mut binding = Sha512::new();
        binding.update(b"asclepios mcfe v1 label binding ");
        binding.update(name.as_bytes());
        Label {
            tables: [
                RistrettoBasepointTable::create(&u[0]),
                RistrettoBasepointTable::create(&u[1]),
            ],
            u,
            binding: binding.finalize().into(),
        }
    }
}

impl SlotKey {
    /// A fresh slot key.
    pub fn generate(rng: &mut (impl RngCore + CryptoRng)) -> SlotKey {
        SlotKey([Scalar::random(rng), Scalar::random(rng)])
    }

    /// Its 64 bytes (to be sealed to the provider).
    pub fn to_bytes(&self) -> zeroize::Zeroizing<[u8; 64]> {
        pair_bytes(&self.0)
    }

    /// The key from its bytes; `None` if a scalar is not canonical.
    pub fn from_bytes(bytes: &[u8; 64]) -> Option<SlotKey> {
        scalar_pair(bytes).map(SlotKey)
    }

    /// This slot's key for `label` alone, `H(s_i, ℓ)` (see the module
    /// docs): what [`SlotKey::encrypt`] encrypts under `label` with, and
    /// what [`Mcfe::keygen`] sums for `label`.
    pub fn for_label(&self, label: &Label) -> SlotKey {
        let derive = |i: u8| {
            let mut h = Sha512::new();
            h.update(b"asclepios mcfe v1 slot key for label ");
            h.update([i]);
            h.update(self.0[0].as_bytes());
            h.update(self.0[1].as_bytes());
            h.update(label.binding);
            let mut wide: [u8; 64] = h.finalize().into();
            let scalar = Scalar::from_bytes_mod_order_wide(&wide);
            wide.zeroize();
            scalar
        };
        SlotKey([derive(1), derive(2)])
    }

    /// Encrypts this slot's value (`|x| < 2^32`) under `label`, with its key
    /// for that label: two fixed-base multiplications and a short one,
    /// constant time in the value and the key.
    pub fn encrypt(&self, label: &Label, x: i64) -> Result<RistrettoPoint, FeError> {
        let key = self.for_label(label);
        Ok(mul(&label.tables[0], &key.0[0]) + mul(&label.tables[1], &key.0[1]) + small_mul(x)?)
    }
}

impl McfeKey {
    /// Its 64 bytes (to be sealed to the researcher).
    pub fn to_bytes(&self) -> zeroize::Zeroizing<[u8; 64]> {
        pair_bytes(&self.d)
    }

    /// The key from its bytes; `None` if a scalar is not canonical.
    pub fn from_bytes(bytes: &[u8; 64]) -> Option<McfeKey> {
        scalar_pair(bytes).map(|d| McfeKey { d })
    }
}

impl Mcfe {
    /// The key for weights `y` over slots whose keys are `keys`, under
    /// `label` alone (the sum of their keys for it).
    pub fn keygen(keys: &[&SlotKey], y: &[i64], label: &Label) -> Result<McfeKey, FeError> {
        check_len(keys.len(), y.len())?;
        let mut d = [Scalar::ZERO; 2];
        for (k, &w) in keys.iter().zip(y) {
            let k = k.for_label(label);
            let w = scalar_of(w);
            d[0] += k.0[0] * w;
            d[1] += k.0[1] * w;
        }
        Ok(McfeKey { d })
    }

    /// `<x, y>` from the slots' ciphertexts under `label`, in the key's order.
    pub fn decrypt(
        key: &McfeKey,
        y: &[i64],
        label: &Label,
        cts: &[RistrettoPoint],
        table: &DlogTable,
        bound: u64,
    ) -> Result<i64, FeError> {
        check_len(y.len(), cts.len())?;
        let weighted =
            RistrettoPoint::vartime_multiscalar_mul(y.iter().map(|&v| scalar_of(v)), cts);
        let mask = label.u[0] * key.d[0] + label.u[1] * key.d[1];
        table.solve(&(weighted - mask), bound)
    }
}

/// Two scalars as 64 bytes.
fn pair_bytes(pair: &[Scalar; 2]) -> zeroize::Zeroizing<[u8; 64]> {
    let mut out = zeroize::Zeroizing::new([0u8; 64]);
    out[..32].copy_from_slice(pair[0].as_bytes());
    out[32..].copy_from_slice(pair[1].as_bytes());
    out
}

/// Two canonical scalars from 64 bytes.
fn scalar_pair(bytes: &[u8; 64]) -> Option<[Scalar; 2]> {
    let scalar = |half: &[u8]| {
        let b: [u8; 32] = half.try_into().ok()?;
        Option::<Scalar>::from(Scalar::from_canonical_bytes(b))
    };
    Some([scalar(&bytes[..32])?, scalar(&bytes[32..])?])
}

/// Serializes a ciphertext point (32 bytes).
pub fn point_to_bytes(p: &RistrettoPoint) -> [u8; 32] {
    p.compress().to_bytes()
}

/// Parses a ciphertext point; `None` if it is not a canonical ristretto255
/// encoding.
pub fn point_from_bytes(bytes: &[u8]) -> Option<RistrettoPoint> {
    curve25519_dalek::ristretto::CompressedRistretto::from_slice(bytes)
        .ok()?
        .decompress()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::SeedableRng;

    fn rng() -> rand_chacha::ChaCha20Rng {
        rand_chacha::ChaCha20Rng::seed_from_u64(3)
    }

    #[test]
    fn discrete_logs_within_the_bound_and_errors_beyond() {
        let table = DlogTable::new(1 << 10);
        for v in [0i64, 1, -1, 1023, 1024, -4096, 99_999, -100_000] {
            let p = mul(RISTRETTO_BASEPOINT_TABLE, &scalar_of(v));
            assert_eq!(table.solve(&p, 100_000), Ok(v), "{v}");
        }
        let far = mul(RISTRETTO_BASEPOINT_TABLE, &scalar_of(100_001));
        assert_eq!(
            table.solve(&far, 100_000),
            Err(FeError::OutOfRange { bound: 100_000 })
        );
        let random = RistrettoPoint::random(&mut rng());
        assert!(table.solve(&random, 1 << 20).is_err());
    }

    #[test]
    fn ipfe_computes_inner_products_with_negative_values() {
        let mut rng = rng();
        let (ipfe, msk) = Ipfe::setup(5, &mut rng);
        let x = [120, -3, 0, 45, 7];
        let y = [1, 2, -1, 0, 3];
        let ct = ipfe.encrypt(&x, &mut rng).unwrap();
        let key = ipfe.keygen(&msk, &y).unwrap();
        let table = DlogTable::new(1 << 8);
        assert_eq!(ipfe.decrypt(&key, &ct, &table, 1 << 12), Ok(135));
        assert!(matches!(
            ipfe.encrypt(&x[..4], &mut rng),
            Err(FeError::Length { .. })
        ));
        // A key for another function gives its own value, not the first's.
        let other = ipfe.keygen(&msk, &[0, 0, 0, 1, 0]).unwrap();
        assert_eq!(ipfe.decrypt(&other, &ct, &table, 1 << 12), Ok(45));
    }

    #[test]
    fn mcfe_aggregates_across_independent_slots() {
        let mut rng = rng();
        let keys: Vec<SlotKey> = (0..12).map(|_| SlotKey::generate(&mut rng)).collect();
        let label = Label::new("study-1/2026-11/systolic");
        let values: Vec<i64> = (0..12).map(|i| 1150 + 7 * i).collect(); // one decimal
        let cts: Vec<RistrettoPoint> = keys
            .iter()
            .zip(&values)
            .map(|(k, &v)| k.encrypt(&label, v).unwrap())
            .collect();
        let refs: Vec<&SlotKey> = keys.iter().collect();
        let y = vec![1i64; 12];
        let key = Mcfe::keygen(&refs, &y, &label).unwrap();
        let table = DlogTable::new(1 << 10);
        let sum = Mcfe::decrypt(&key, &y, &label, &cts, &table, 1 << 20).unwrap();
        assert_eq!(sum, values.iter().sum::<i64>());
        // The same slots' values under another label: the key for the
        // first label opens nothing there (keys are bound to labels); a key
        // for the second does.
        let other = Label::new("study-1/2026-12/systolic");
        let cts_other: Vec<RistrettoPoint> = keys
            .iter()
            .zip(&values)
            .map(|(k, &v)| k.encrypt(&other, v).unwrap())
            .collect();
        assert!(Mcfe::decrypt(&key, &y, &other, &cts_other, &table, 1 << 20).is_err());
        let key_other = Mcfe::keygen(&refs, &y, &other).unwrap();
        assert_eq!(
            Mcfe::decrypt(&key_other, &y, &other, &cts_other, &table, 1 << 20),
            Ok(values.iter().sum::<i64>())
        );
        // Slot keys round-trip.
        let back = SlotKey::from_bytes(&keys[0].to_bytes()).unwrap();
        assert_eq!(back.encrypt(&label, 5), keys[0].encrypt(&label, 5));
        assert_eq!(
            keys[0].encrypt(&label, 1 << 32),
            Err(FeError::TooLarge(1 << 32))
        );
    }

    #[test]
    fn short_multiplication_matches_the_full_one() {
        for x in [
            0i64,
            1,
            -1,
            15,
            16,
            255,
            -256,
            65_535,
            1 << 31,
            -(1 << 31),
            (1 << 32) - 1,
        ] {
            assert_eq!(
                small_mul(x).unwrap(),
                mul(RISTRETTO_BASEPOINT_TABLE, &scalar_of(x)),
                "{x}"
            );
        }
        assert!(small_mul(1 << 32).is_err());
        assert!(small_mul(-(1 << 32)).is_err());
    }

    #[test]
    fn fixed_point_scaling() {
        assert_eq!(scale(7.3, 1), Ok(73));
        assert_eq!(scale(-0.25, 2), Ok(-25));
        assert!(scale(f64::NAN, 1).is_err());
        assert!(scale(1e300, 1).is_err());
    }
}
