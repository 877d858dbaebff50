//! The `abe` suite: FAME key generation, encryption and decryption against the
//! `rabe` crate's AC17 (the same FAME scheme, on BN254), for an AND and an OR of
//! N attributes.
//!
//! `bound_us` adds up the same-run median cost of the group operations each case
//! performs in our implementation: hashes to G1, constant-time G1 and G2
//! scalar multiplications, fixed-base target-group exponentiations and the
//! six-pairing product (one multi-Miller loop and one final exponentiation).
//! Point additions, span-program work and the KDF are the difference.
//!
//! Attribute hashes are cached in the process (public, deterministic values);
//! `ours_us` is the steady state with them cached, `ours_cold_us` empties the
//! cache before every operation (its bound, `bound_cold_us`, adds the hashes
//! to G1). Both run interleaved with the peer, which never caches.

use asclepios_crypto::abe::{primitives, setup, Ciphertext, MasterSecretKey, PublicKey, UserKey};
use asclepios_crypto::policy::MAX_REPETITIONS;
use asclepios_crypto::Policy;
use blstrs::{G1Affine, G1Projective, G2Affine, G2Projective, Scalar};
use ff::Field;
use group::{Curve, Group};
use rabe::schemes::ac17;
use rabe::utils::policy::pest::PolicyLanguage;
use rand_core::OsRng;
use serde_json::json;

use crate::timing::{interleaved, single, Budget};

/// Median microseconds of the primitive operations, measured in this run.
struct Primitives {
    hash_g1: f64,
    mul_g1: f64,
    mul_g2: f64,
    gt_pow: f64,
    pairing6: f64,
}

impl Primitives {
    fn measure(budget: Budget, mpk: &PublicKey) -> Self {
        let mut rng = OsRng;
        let p = G1Projective::random(&mut rng);
        let q = G2Projective::random(&mut rng);
        let s = Scalar::random(&mut rng);
        let g1: Vec<G1Affine> = (0..6)
            .map(|_| G1Projective::random(&mut rng).to_affine())
            .collect();
        let g2: Vec<G2Affine> = (0..6)
            .map(|_| G2Projective::random(&mut rng).to_affine())
            .collect();
        let mut i = 0u64;
        Primitives {
            hash_g1: single(budget, || {
                i += 1;
                std::hint::black_box(primitives::hash_attribute(&format!("role:doctor-{i}")));
            }),
            mul_g1: single(budget, || {
                std::hint::black_box(p * s);
            }),
            mul_g2: single(budget, || {
                std::hint::black_box(q * s);
            }),
            gt_pow: single(budget, || {
                std::hint::black_box(primitives::gt_fixed_base_pow(mpk, &s));
            }),
            pairing6: single(budget, || {
                std::hint::black_box(primitives::pairing_product(&g1, &g2));
            }),
        }
    }

    /// Key for `attrs` attributes: per attribute and occurrence copy (see
    /// `MAX_REPETITIONS`) 6 hashes and 9 G1 multiplications; `sk'` 9 G1
    /// multiplications; `sk_0` 3 G2 multiplications.
    /// Returns (hashes cached, hashes computed).
    fn keygen(&self, attrs: usize) -> (f64, f64) {
        let copies = (attrs * MAX_REPETITIONS) as f64;
        let cached = copies * 9.0 * self.mul_g1 + 9.0 * self.mul_g1 + 3.0 * self.mul_g2;
        (cached, cached + copies * 6.0 * self.hash_g1)
    }

    /// Encryption with `rows` rows: per row 6 hashes and 6 G1 multiplications;
    /// `ct_0` 3 G2 multiplications; 2 fixed-base GT exponentiations.
    /// Returns (hashes cached, hashes computed).
    fn encrypt(&self, rows: usize) -> (f64, f64) {
        let cached = rows as f64 * 6.0 * self.mul_g1 + 3.0 * self.mul_g2 + 2.0 * self.gt_pow;
        (cached, cached + rows as f64 * 6.0 * self.hash_g1)
    }

    /// Decryption: one six-pairing product, whatever the policy.
    fn decrypt(&self) -> f64 {
        self.pairing6
    }
}

/// Our policy text and rabe's for an AND or OR of `n` attributes. rabe 0.4.2's
/// human-policy parser panics on a flat AND of three or more terms, so its
/// policies nest binary gates: `("a0" and ("a1" and "a2"))`.
fn policies(kind: &str, n: usize) -> (String, String) {
    let names: Vec<String> = (0..n).map(|i| format!("attr:a{i}")).collect();
    let ours = names.join(&format!(" {kind} "));
    let mut peer = format!("\"{}\"", names[n - 1]);
    for name in names[..n - 1].iter().rev() {
        peer = format!("(\"{name}\" {kind} {peer})");
    }
    (ours, peer)
}

/// Runs the suite; returns one JSON object per case.
pub fn run(quick: bool, budget: Budget) -> anyhow::Result<Vec<serde_json::Value>> {
    let sizes: &[usize] = if quick { &[2, 10] } else { &[2, 10, 50] };
    let mut rng = OsRng;
    let (mpk, msk) = setup(&mut rng);
    let (rabe_pk, rabe_msk) = ac17::setup();
    eprintln!("abe: measuring primitive operations");
    let prim = Primitives::measure(budget, &mpk);
    let mut out = Vec::new();
    for kind in ["and", "or"] {
        for &n in sizes {
            eprintln!("abe: {kind} of {n} attributes");
            let (ours_text, peer_text) = policies(kind, n);
            let policy = Policy::parse(&ours_text)?;
            let all: Vec<String> = (0..n).map(|i| format!("attr:a{i}")).collect();
            // AND: the key holds all N attributes; OR: one of them.
            let held: Vec<&str> = if kind == "and" {
                all.iter().map(String::as_str).collect()
            } else {
                vec![all[n / 2].as_str()]
            };

            let t = warm_cold_peer(
                budget,
                || {
                    std::hint::black_box(msk.keygen(&held, &mut OsRng).expect("keygen"));
                },
                || {
                    std::hint::black_box(ac17::cp_keygen(&rabe_msk, &held).expect("rabe keygen"));
                },
            );
            out.push(case("keygen", kind, n, &t, prim.keygen(held.len())));

            let payload = [7u8; 32];
            let t = warm_cold_peer(
                budget,
                || {
                    std::hint::black_box(mpk.encapsulate(&policy, &mut OsRng));
                },
                || {
                    std::hint::black_box(
                        ac17::cp_encrypt(
                            &rabe_pk,
                            &peer_text,
                            &payload,
                            PolicyLanguage::HumanPolicy,
                        )
                        .expect("rabe encrypt"),
                    );
                },
            );
            out.push(case("encrypt", kind, n, &t, prim.encrypt(n)));

            let key: UserKey = msk.keygen(&held, &mut rng)?;
            let (ct, kem_key): (Ciphertext, _) = mpk.encapsulate(&policy, &mut rng);
            let peer_key = ac17::cp_keygen(&rabe_msk, &held).expect("rabe keygen");
            let peer_ct =
                ac17::cp_encrypt(&rabe_pk, &peer_text, &payload, PolicyLanguage::HumanPolicy)
                    .expect("rabe encrypt");
            // Both must really decrypt before they are timed.
            anyhow::ensure!(key.decapsulate(&ct)? == kem_key, "our decryption is wrong");
            anyhow::ensure!(
                ac17::cp_decrypt(&peer_key, &peer_ct).expect("rabe decrypt") == payload,
                "rabe's decryption is wrong"
            );
            // Decryption hashes nothing: there is no cold path to time.
            let t = interleaved(
                budget,
                &mut [
                    &mut || {
                        std::hint::black_box(key.decapsulate(&ct).expect("decrypt"));
                    },
                    &mut || {
                        std::hint::black_box(
                            ac17::cp_decrypt(&peer_key, &peer_ct).expect("rabe decrypt"),
                        );
                    },
                ],
            );
            let bound = prim.decrypt();
            out.push(case(
                "decrypt",
                kind,
                n,
                &[t[0], t[0], t[1]],
                (bound, bound),
            ));
        }
    }
    drop::<MasterSecretKey>(msk);
    Ok(out)
}

/// Times `ours` with attribute hashes cached, `ours` with the cache emptied
/// first, and `peer`, interleaved: `[warm, cold, peer]` median µs.
fn warm_cold_peer(budget: Budget, ours: impl Fn(), mut peer: impl FnMut()) -> Vec<f64> {
    interleaved(
        budget,
        &mut [
            &mut || ours(),
            &mut || {
                primitives::clear_attribute_hash_cache();
                ours()
            },
            &mut peer,
        ],
    )
}

/// One JSON line. `t` = [ours with attribute hashes cached (steady state), ours
/// with the cache emptied before each operation, peer]; `bound` = (cached,
/// cold) bounds.
fn case(op: &str, policy: &str, attrs: usize, t: &[f64], bound: (f64, f64)) -> serde_json::Value {
    let (ours, cold, peer) = (t[0], t[1], t[2]);
    json!({
        "suite": "abe",
        "op": op,
        "policy": policy,
        "attrs": attrs,
        "ours_us": round(ours),
        "peer": "rabe-ac17",
        "peer_us": round(peer),
        "speedup": round(peer / ours),
        "bound_us": round(bound.0),
        "bound_ratio": round(ours / bound.0),
        "ours_cold_us": round(cold),
        "speedup_cold": round(peer / cold),
        "bound_cold_us": round(bound.1),
    })
}

fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
