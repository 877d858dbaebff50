//! Distributed differential privacy for the statistics: every data provider
//! adds a noise share to each value it publishes, and the shares of a cohort
//! sum to discrete Laplace noise, so an aggregate comes out noisy although no
//! single party chose the noise.
//!
//! **The mechanism.** The discrete Laplace distribution `DLap(α)`,
//! `P(k) ∝ α^|k|`, is the difference of two geometric variables, and a
//! geometric variable is the sum of `h` Pólya (negative binomial) variables of
//! shape `1/h` (the distributed geometric mechanism). A share is
//! `Pólya(1/h, α) − Pólya(1/h, α)`; any `h` or more shares sum to `DLap(α)`
//! plus independent noise, and `DLap(α)` added to a sum whose sensitivity is
//! `Δ` is `ε`-differentially private (δ = 0) for `α = exp(−ε/Δ)`. Extra noise
//! never weakens that (post-processing), so the guarantee holds whenever at
//! least `h` honest shares are in a released sum; the shares of providers that
//! omit theirs, or collude with the researcher, do not count towards `h`.
//!
//! A Pólya variable is sampled as a Poisson variable whose rate is a Gamma
//! variable (`rand_distr`). Those samplers use floating point; the value that
//! leaves a provider is an integer sum of integer draws, not a rounded float,
//! which is what the known floating-point attacks on Laplace noise exploit.

use rand::Rng;
use rand_distr::{Distribution, Gamma, Poisson};

/// Why noise parameters were refused.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum NoiseError {
    /// ε, the sensitivity or the share count is not positive and finite.
    #[error("noise needs a positive ε, sensitivity and share count (got ε {epsilon}, Δ {sensitivity}, h {shares})")]
    Parameters {
        /// The ε asked for.
        epsilon: f64,
        /// The sensitivity.
        sensitivity: u64,
        /// Honest shares per sum.
        shares: f64,
    },
}

/// One provider's noise share for a sum of sensitivity `Δ`: any `h` shares of
/// a sum carry `DLap(exp(−ε/Δ))`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NoiseShare {
    alpha: f64,
    shape: f64,
}

impl NoiseShare {
    /// Shares such that any `honest_shares` of them make a sum of
    /// sensitivity `sensitivity` `epsilon`-differentially private.
    pub fn new(epsilon: f64, sensitivity: u64, honest_shares: f64) -> Result<Self, NoiseError> {
        let bad = || NoiseError::Parameters {
            epsilon,
            sensitivity,
            shares: honest_shares,
        };
        if !(epsilon.is_finite() && epsilon > 0.0 && honest_shares.is_finite())
            || honest_shares < 1.0
            || sensitivity == 0
        {
            return Err(bad());
        }
        let alpha = (-epsilon / sensitivity as f64).exp();
        if !(alpha > 0.0 && alpha < 1.0) {
            return Err(bad());
        }
        Ok(NoiseShare {
            alpha,
            shape: 1.0 / honest_shares,
        })
    }

    /// `α` of the discrete Laplace noise `h` shares add up to.
    pub fn alpha(&self) -> f64 {
        self.alpha
    }

    /// A share: the difference of two Pólya draws.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> i64 {
        self.polya(rng) - self.polya(rng)
    }

    /// `Pólya(shape, α)`: Poisson with a Gamma(shape, α/(1−α)) rate.
    fn polya<R: Rng + ?Sized>(&self, rng: &mut R) -> i64 {
        let scale = self.alpha / (1.0 - self.alpha);
        let rate = Gamma::new(self.shape, scale)
            .expect("shape and scale are positive and finite")
            .sample(rng);
        if !(rate > 0.0 && rate.is_finite()) {
            return 0;
        }
        match Poisson::new(rate) {
            // A Poisson draw is a non-negative integer held in an f64.
            Ok(p) => {
                let draw: f64 = p.sample(rng);
                draw.min(i64::MAX as f64 / 4.0) as i64
            }
            Err(_) => 0,
        }
    }

    /// The standard deviation of the sum of `shares` shares:
    /// `sqrt(2·n·shape·α) / (1 − α)`.
    pub fn sum_sd(&self, shares: usize) -> f64 {
        (2.0 * shares as f64 * self.shape * self.alpha).sqrt() / (1.0 - self.alpha)
    }

    /// The standard deviation of the noise `h` shares (the guarantee's
    /// minimum) add up to: that of `DLap(α)`, `sqrt(2α)/(1−α)`.
    pub fn target_sd(&self) -> f64 {
        (2.0 * self.alpha).sqrt() / (1.0 - self.alpha)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::SeedableRng;

    fn rng() -> rand_chacha::ChaCha20Rng {
        rand_chacha::ChaCha20Rng::seed_from_u64(7)
    }

    #[test]
    fn parameters_are_checked() {
        assert!(NoiseShare::new(0.0, 1, 10.0).is_err());
        assert!(NoiseShare::new(f64::NAN, 1, 10.0).is_err());
        assert!(NoiseShare::new(1.0, 0, 10.0).is_err());
        assert!(NoiseShare::new(1.0, 1, 0.5).is_err());
        assert!(NoiseShare::new(1.0, 1, 10.0).is_ok());
    }

    /// `h` shares sum to discrete Laplace: centred, with its variance, and
    /// with its probability at zero, `(1−α)/(1+α)`.
    #[test]
    fn shares_sum_to_discrete_laplace() {
        let noise = NoiseShare::new(1.0, 1, 5.0).unwrap();
        let mut r = rng();
        let trials = 40_000;
        let sums: Vec<i64> = (0..trials)
            .map(|_| (0..5).map(|_| noise.sample(&mut r)).sum())
            .collect();
        let mean = sums.iter().sum::<i64>() as f64 / trials as f64;
        let var = sums.iter().map(|&s| (s as f64 - mean).powi(2)).sum::<f64>() / trials as f64;
        let alpha = noise.alpha();
        let expected_var = 2.0 * alpha / (1.0 - alpha).powi(2);
        assert!(mean.abs() < 0.05, "mean {mean}");
        assert!(
            (var / expected_var - 1.0).abs() < 0.05,
            "variance {var}, expected {expected_var}"
        );
        assert!((noise.target_sd().powi(2) / expected_var - 1.0).abs() < 1e-12);
        let zeros = sums.iter().filter(|&&s| s == 0).count() as f64 / trials as f64;
        let p0 = (1.0 - alpha) / (1.0 + alpha);
        assert!((zeros - p0).abs() < 0.01, "P(0) {zeros}, expected {p0}");
    }

    /// More shares add noise; the stated standard deviation follows.
    #[test]
    fn the_sum_sd_matches_sampling() {
        let noise = NoiseShare::new(0.5, 2500, 6.0).unwrap();
        let mut r = rng();
        let trials = 4_000;
        let n = 100;
        let sums: Vec<f64> = (0..trials)
            .map(|_| (0..n).map(|_| noise.sample(&mut r)).sum::<i64>() as f64)
            .collect();
        let mean = sums.iter().sum::<f64>() / trials as f64;
        let sd = (sums.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / trials as f64).sqrt();
        let expected = noise.sum_sd(n);
        assert!(
            (sd / expected - 1.0).abs() < 0.06,
            "sd {sd}, expected {expected}"
        );
        assert!(noise.sum_sd(6) > noise.target_sd() * 0.99);
    }
}
