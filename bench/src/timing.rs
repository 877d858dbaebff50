//! Interleaved timing: ours and the peer alternate in one loop, so both see the
//! same machine load, and medians are taken over enough runs to be stable.

use std::time::{Duration, Instant};

/// How long and how often to sample a case.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    /// Minimum samples per side.
    pub min_iters: usize,
    /// Keep sampling until this much time has passed (unless `max_iters`).
    pub min_time: Duration,
    /// Stop after this many samples even if `min_time` has not passed.
    pub max_iters: usize,
}

impl Budget {
    /// At least 20 samples or 2 seconds per case (the project's convention).
    pub fn full() -> Self {
        Budget {
            min_iters: 20,
            min_time: Duration::from_secs(2),
            max_iters: 2000,
        }
    }

    /// A smoke run: a few samples.
    pub fn quick() -> Self {
        Budget {
            min_iters: 3,
            min_time: Duration::from_millis(100),
            max_iters: 50,
        }
    }

    fn done(&self, iters: usize, started: Instant) -> bool {
        iters >= self.max_iters
            || (iters >= self.min_iters && started.elapsed() >= self.min_time)
            // Very slow cases: 20 samples would take minutes; 5 and 20 s suffice.
            || (iters >= 5.min(self.min_iters) && started.elapsed() >= self.min_time * 10)
    }
}

fn time_once(f: &mut impl FnMut()) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_secs_f64() * 1e6
}

/// Median of samples, in microseconds.
pub fn median(samples: &mut [f64]) -> f64 {
    samples.sort_by(|a, b| a.total_cmp(b));
    let n = samples.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        samples[n / 2]
    } else {
        (samples[n / 2 - 1] + samples[n / 2]) / 2.0
    }
}

/// Median microseconds of each operation, sampled in turn (one round runs each
/// once), so all of them see the same machine load.
pub fn interleaved(budget: Budget, ops: &mut [&mut dyn FnMut()]) -> Vec<f64> {
    // One warm-up each (lazy tables, caches, page faults).
    ops.iter_mut().for_each(|op| op());
    let mut samples = vec![Vec::new(); ops.len()];
    let started = Instant::now();
    while !budget.done(samples[0].len(), started) {
        for (op, s) in ops.iter_mut().zip(samples.iter_mut()) {
            s.push(time_once(op));
        }
    }
    samples.iter_mut().map(|s| median(s)).collect()
}

/// Median microseconds of one operation.
pub fn single(budget: Budget, mut op: impl FnMut()) -> f64 {
    op();
    let mut a = Vec::new();
    let started = Instant::now();
    while !budget.done(a.len(), started) {
        a.push(time_once(&mut op));
    }
    median(&mut a)
}
