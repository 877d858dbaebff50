//! Inner-product functional encryption (ALS16, DDH, ristretto255): setup,
//! encrypt, keygen and decrypt (discrete log of results up to 2^32 included)
//! for vectors of 10 to 10 000 values. `bound_us` is the same-run cost of the
//! group operations each step needs, performed bare; `floor_us` a plaintext
//! inner product.
//!
//! Anchor (published for Cosmian's dmcfe on BLS12-381 at n = 100): encrypt
//! 123.7 ms, decrypt 62.3 ms without the discrete log.
//!
//! The statistics' differential privacy: `op=noise-share` is a provider's
//! cost per value for the noise shares of its parts (present, value, square,
//! three buckets), against encrypting those parts (`bound_us`) and making
//! them without noise (`floor_us`); `op=accuracy` is the absolute error of a
//! mean against cohort size at the default ε, sampled from the noise shares
//! (encryption is exact, so the noise is the whole error), beside the error
//! the client states.

use asclepios_crypto::ipfe::{DlogTable, Ipfe};
use curve25519_dalek::constants::{RISTRETTO_BASEPOINT_POINT, RISTRETTO_BASEPOINT_TABLE};
use curve25519_dalek::ristretto::{RistrettoBasepointTable, RistrettoPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::VartimeMultiscalarMul;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde_json::{json, Value};

use crate::timing::{self, Budget};

/// Results are decrypted up to this bound.
const BOUND: u64 = 1 << 32;

fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Runs the suite.
pub fn run(quick: bool, budget: Budget) -> anyhow::Result<Vec<Value>> {
    let sizes: &[usize] = if quick {
        &[10, 100]
    } else {
        &[10, 100, 1000, 10_000]
    };
    // 2^22 baby steps: ~100 MB, a few seconds once; a result near 2^32 then
    // takes about a thousand giant steps.
    let baby = if quick { 1 << 16 } else { 1 << 22 };
    eprintln!("fe: building a discrete-log table of {baby} baby steps");
    let started = std::time::Instant::now();
    let table = DlogTable::shared(baby);
    eprintln!(
        "fe: table built in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let mut rng = ChaCha20Rng::seed_from_u64(8);
    let mut rows = Vec::new();
    for &n in sizes {
        eprintln!("fe: n = {n}");
        // Values such that <x, y> (all-ones y) is a random number below 2^32.
        let target = rng.next_u64() % BOUND;
        let mut x: Vec<i64> = vec![(target / n as u64) as i64; n];
        x[0] += (target % n as u64) as i64;
        let y = vec![1i64; n];
        let expected: i64 = x.iter().sum();
        // The floor of every step: the plaintext inner product.
        let floor = timing::single(budget, || {
            let dot: i64 = x.iter().zip(&y).map(|(a, b)| a * b).sum();
            std::hint::black_box(dot);
        });

        // setup
        let setup_budget = Budget {
            min_iters: if n >= 1000 { 3 } else { budget.min_iters },
            ..budget
        };
        let mut held = None;
        let setup_us = timing::single(setup_budget, || {
            held = Some(Ipfe::setup(n, &mut rng));
        });
        let (ipfe, msk) = held.expect("set up");
        let points: Vec<RistrettoPoint> =
            (0..n).map(|_| RistrettoPoint::random(&mut rng)).collect();
        let scalars: Vec<Scalar> = (0..2 * n).map(|_| Scalar::random(&mut rng)).collect();
        let setup_bound = timing::single(setup_budget, || {
            for (i, p) in points.iter().enumerate() {
                let h = RISTRETTO_BASEPOINT_TABLE * &scalars[2 * i]
                    + RISTRETTO_BASEPOINT_TABLE * &scalars[2 * i + 1];
                std::hint::black_box((h, RistrettoBasepointTable::create(p)));
            }
        });
        rows.push(json!({
            "suite": "fe", "op": "setup", "n": n, "ours_us": round(setup_us),
            "bound_us": round(setup_bound), "bound_ratio": round(setup_us / setup_bound),
            "floor_us": round(floor),
        }));

        // encrypt: 2 + n fixed-base multiplications and, per value, the
        // eight point additions of its short multiplication.
        let tables: Vec<RistrettoBasepointTable> = points
            .iter()
            .take(n.min(64))
            .map(RistrettoBasepointTable::create)
            .collect();
        let r = Scalar::random(&mut rng);
        let mut ct = None;
        let mut enc_rng = ChaCha20Rng::seed_from_u64(9);
        let us = timing::interleaved(
            budget,
            &mut [
                &mut || ct = Some(ipfe.encrypt(&x, &mut enc_rng).expect("length")),
                &mut || {
                    let mut acc = RISTRETTO_BASEPOINT_TABLE * &r + &tables[0] * &r;
                    for i in 0..n {
                        let mut short = points[i];
                        for k in 1..8 {
                            short += points[(i + k) % n];
                        }
                        acc += short + &tables[i % tables.len()] * &r;
                    }
                    std::hint::black_box(acc);
                },
            ],
        );
        let ct = ct.expect("encrypted");
        rows.push(json!({
            "suite": "fe", "op": "encrypt", "n": n, "ours_us": round(us[0]),
            "bound_us": round(us[1]), "bound_ratio": round(us[0] / us[1]), "floor_us": round(floor),
        }));

        // keygen: two inner products of scalars.
        let mut key = None;
        let us = timing::interleaved(
            budget,
            &mut [
                &mut || key = Some(ipfe.keygen(&msk, &y).expect("length")),
                &mut || {
                    let a: Scalar = scalars[..n].iter().map(|s| s * Scalar::ONE).sum();
                    let b: Scalar = scalars[n..].iter().map(|s| s * Scalar::ONE).sum();
                    std::hint::black_box((a, b));
                },
            ],
        );
        let key = key.expect("a key");
        rows.push(json!({
            "suite": "fe", "op": "keygen", "n": n, "ours_us": round(us[0]),
            "bound_us": round(us[1]), "bound_ratio": round(us[0] / us[1]), "floor_us": round(floor),
        }));

        // decrypt: a multiscalar multiplication over n points, two
        // multiplications, and the giant steps of the discrete log.
        let steps = table.giant_steps(expected, BOUND) as usize;
        let ys: Vec<Scalar> = y.iter().map(|&v| Scalar::from(v as u64)).collect();
        let step = RISTRETTO_BASEPOINT_POINT * Scalar::from(baby);
        let mut got = None;
        let us = timing::interleaved(
            budget,
            &mut [
                &mut || got = Some(ipfe.decrypt(&key, &ct, &table, BOUND)),
                &mut || {
                    let w = RistrettoPoint::vartime_multiscalar_mul(&ys, &points);
                    let mut c = w - (points[0] * r + points[1 % n] * r);
                    let mut candidates = Vec::with_capacity(steps);
                    for _ in 0..steps {
                        candidates.push(c);
                        c -= step;
                    }
                    std::hint::black_box(RistrettoPoint::double_and_compress_batch(&candidates));
                    std::hint::black_box(RISTRETTO_BASEPOINT_TABLE * &r);
                },
            ],
        );
        match got {
            Some(Ok(v)) if v == expected => {}
            other => anyhow::bail!("decrypt at n = {n}: expected {expected}, got {other:?}"),
        }
        rows.push(json!({
            "suite": "fe", "op": "decrypt", "n": n, "result": expected, "giant_steps": steps,
            "ours_us": round(us[0]), "bound_us": round(us[1]), "bound_ratio": round(us[0] / us[1]),
            "floor_us": round(floor),
        }));
    }
    rows.extend(privacy(quick, budget)?);
    Ok(rows)
}

/// `op=noise-share` and `op=accuracy`.
fn privacy(quick: bool, budget: Budget) -> anyhow::Result<Vec<Value>> {
    use asclepios_client::stats::{feature_parts, mean_estimate, noise_sd, noisy_parts};
    use asclepios_crypto::ipfe::{Label, SlotKey};
    let mut rng = ChaCha20Rng::seed_from_u64(10);
    let range = (80.0, 200.0);
    let buckets = [120.0, 140.0];
    let key = SlotKey::generate(&mut rng);
    let labels: Vec<Label> = feature_parts(Some(128.4), range, &buckets)?
        .iter()
        .map(|(p, _)| Label::new(&format!("2026/systolic/{}", p.name())))
        .collect();
    let mut noise_rng = ChaCha20Rng::seed_from_u64(11);
    let us = timing::interleaved(
        budget,
        &mut [
            &mut || {
                std::hint::black_box(noisy_parts(Some(128.4), range, &buckets, &mut noise_rng))
                    .ok();
            },
            &mut || {
                for (l, x) in labels.iter().zip([1i64, 484, 234_256, 0, 1, 0]) {
                    std::hint::black_box(key.encrypt(l, x).ok());
                }
            },
            &mut || {
                std::hint::black_box(feature_parts(Some(128.4), range, &buckets)).ok();
            },
        ],
    );
    let mut rows = vec![json!({
        "suite": "fe", "op": "noise-share", "parts": labels.len(), "epsilon": asclepios_client::stats::RELEASE_EPSILON,
        "ours_us": round(us[0]), "bound_us": round(us[1]), "ratio": round(us[0] / us[1]),
        "floor_us": round(us[2]),
    })];
    let (sizes, trials): (&[usize], usize) = if quick {
        (&[10, 100], 40)
    } else {
        (&[10, 100, 1000, 10_000], 400)
    };
    let present = "2026/systolic/present";
    let value = "2026/systolic/value:80..200";
    for &n in sizes {
        eprintln!("fe: accuracy at n = {n}, {trials} trials");
        let mut errors = Vec::with_capacity(trials);
        let mut stated = 0.0;
        for t in 0..trials {
            let values: Vec<f64> = (0..n)
                .map(|i| 100.0 + ((i * 37 + t) % 60) as f64 + 0.1 * (i % 10) as f64)
                .collect();
            let (mut count, mut shifted) = (0i64, 0i64);
            for v in &values {
                let parts = noisy_parts(Some(*v), range, &[], &mut rng)?;
                count += parts[0].1;
                shifted += parts[1].1;
            }
            let (mean, sd) = mean_estimate(
                (count, noise_sd(present, n)?),
                (shifted, noise_sd(value, n)?),
                range.0,
            )
            .unwrap_or((f64::NAN, f64::NAN));
            let truth = values.iter().sum::<f64>() / n as f64;
            errors.push((mean - truth).abs());
            stated = sd;
        }
        errors.sort_by(|a, b| a.total_cmp(b));
        let mean_error = errors.iter().sum::<f64>() / errors.len() as f64;
        let p95 = errors[(errors.len() * 95 / 100).min(errors.len() - 1)];
        rows.push(json!({
            "suite": "fe", "op": "accuracy", "n": n, "epsilon": asclepios_client::stats::RELEASE_EPSILON,
            "range": "80..200", "trials": trials, "mean_abs_error": round(mean_error),
            "p95_abs_error": round(p95), "stated_sd": round(stated),
        }));
    }
    Ok(rows)
}
