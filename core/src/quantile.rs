//! Streaming quantile estimate in fixed memory: the P² algorithm
//! (Jain and Chlamtac, 1985). Five markers track the minimum, the p/2, p and
//! (1+p)/2 quantiles and the maximum; each new value moves them by a piecewise
//! parabolic prediction. The gate uses it to hold a target drop rate without
//! storing the stream.

use crate::{Error, Result};

/// P² estimator of the `p`-quantile of a stream.
#[derive(Debug, Clone, PartialEq)]
pub struct P2Quantile {
    p: f64,
    /// The first five values, until the markers can be set up.
    warmup: heapless::Vec<f64, 5>,
    /// Marker heights.
    q: [f64; 5],
    /// Marker positions (1-based ranks).
    n: [f64; 5],
    /// Desired marker positions.
    desired: [f64; 5],
    /// Increments of the desired positions per value.
    step: [f64; 5],
    count: u64,
}

impl P2Quantile {
    /// An estimator for the quantile `p` in (0, 1).
    pub fn new(p: f64) -> Result<Self> {
        if !(p > 0.0 && p < 1.0) {
            return Err(Error::InvalidParameter {
                name: "quantile",
                reason: "must be in (0, 1)",
            });
        }
        Ok(Self {
            p,
            warmup: heapless::Vec::new(),
            q: [0.0; 5],
            n: [1.0, 2.0, 3.0, 4.0, 5.0],
            desired: [1.0, 1.0 + 2.0 * p, 1.0 + 4.0 * p, 3.0 + 2.0 * p, 5.0],
            step: [0.0, p / 2.0, p, (1.0 + p) / 2.0, 1.0],
            count: 0,
        })
    }

    /// Number of values seen. Non-finite values are ignored and not counted.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Adds one value to the stream.
    pub fn push(&mut self, x: f64) {
        if !x.is_finite() {
            return;
        }
        self.count += 1;
        if self.count <= 5 {
            // Cannot overflow: at most five values are pushed here.
            let _ = self.warmup.push(x);
            if self.count == 5 {
                self.warmup.sort_unstable_by(f64::total_cmp);
                self.q.copy_from_slice(&self.warmup);
            }
            return;
        }
        let k = if x < self.q[0] {
            self.q[0] = x;
            0
        } else if x >= self.q[4] {
            self.q[4] = x;
            3
        } else {
            (0..4).find(|&i| x < self.q[i + 1]).unwrap_or(3)
        };
        self.n[k + 1..].iter_mut().for_each(|n| *n += 1.0);
        for (d, s) in self.desired.iter_mut().zip(self.step) {
            *d += s;
        }
        for i in 1..4 {
            let d = self.desired[i] - self.n[i];
            if (d >= 1.0 && self.n[i + 1] - self.n[i] > 1.0) || (d <= -1.0 && self.n[i - 1] - self.n[i] < -1.0) {
                let s = d.signum();
                let parabolic = self.parabolic(i, s);
                self.q[i] = if self.q[i - 1] < parabolic && parabolic < self.q[i + 1] {
                    parabolic
                } else {
                    self.linear(i, s)
                };
                self.n[i] += s;
            }
        }
    }

    fn parabolic(&self, i: usize, d: f64) -> f64 {
        let (q, n) = (&self.q, &self.n);
        q[i] + d / (n[i + 1] - n[i - 1])
            * ((n[i] - n[i - 1] + d) * (q[i + 1] - q[i]) / (n[i + 1] - n[i])
                + (n[i + 1] - n[i] - d) * (q[i] - q[i - 1]) / (n[i] - n[i - 1]))
    }

    fn linear(&self, i: usize, d: f64) -> f64 {
        let j = if d > 0.0 { i + 1 } else { i - 1 };
        self.q[i] + d * (self.q[j] - self.q[i]) / (self.n[j] - self.n[i])
    }

    /// The current estimate; `None` before the first value. With fewer than
    /// five values it is the exact quantile, interpolated between ranks.
    pub fn estimate(&self) -> Option<f64> {
        match self.count {
            0 => None,
            1..=4 => {
                let mut sorted = self.warmup.clone();
                sorted.sort_unstable_by(f64::total_cmp);
                let rank = self.p * (sorted.len() - 1) as f64;
                let lo = libm::floor(rank) as usize;
                let hi = (lo + 1).min(sorted.len() - 1);
                Some(sorted[lo] + (rank - lo as f64) * (sorted[hi] - sorted[lo]))
            }
            _ => Some(self.q[2]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::vec::Vec;

    /// A small deterministic generator, so the tests need no RNG crate.
    fn lcg(seed: &mut u64) -> f64 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (*seed >> 11) as f64 / (1u64 << 53) as f64
    }

    fn exact(values: &mut [f64], p: f64) -> f64 {
        values.sort_unstable_by(f64::total_cmp);
        values[((values.len() - 1) as f64 * p).round() as usize]
    }

    #[test]
    fn exact_before_five_values() {
        let mut q = P2Quantile::new(0.5).unwrap();
        assert_eq!(q.estimate(), None);
        for x in [4.0, 1.0, 3.0] {
            q.push(x);
        }
        assert_eq!(q.estimate(), Some(3.0));
        q.push(2.0);
        assert_eq!(q.estimate(), Some(2.5));
    }

    #[test]
    fn tracks_quantiles_of_long_streams() {
        for p in [0.1, 0.2, 0.5, 0.9] {
            let mut seed = 7;
            let mut q = P2Quantile::new(p).unwrap();
            let mut all = Vec::new();
            for _ in 0..20_000 {
                // A skewed distribution (squared uniform) on [0, 30], like norms.
                let u = lcg(&mut seed);
                let x = 30.0 * u * u;
                q.push(x);
                all.push(x);
            }
            let truth = exact(&mut all, p);
            let est = q.estimate().unwrap();
            assert!((est - truth).abs() < 0.3, "p={p}: estimate {est}, exact {truth}");
        }
    }

    #[test]
    fn ignores_non_finite_values_and_rejects_bad_p() {
        let mut q = P2Quantile::new(0.5).unwrap();
        q.push(f64::NAN);
        q.push(f64::INFINITY);
        assert_eq!(q.count(), 0);
        assert!(P2Quantile::new(0.0).is_err());
        assert!(P2Quantile::new(1.0).is_err());
    }

    proptest! {
        #[test]
        fn estimate_stays_within_the_observed_range(
            values in prop::collection::vec(-1e3f64..1e3, 1..300),
            p in 0.01f64..0.99,
        ) {
            let mut q = P2Quantile::new(p).unwrap();
            for &v in &values { q.push(v); }
            let est = q.estimate().unwrap();
            let min = values.iter().cloned().fold(f64::INFINITY, f64::min);
            let max = values.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            prop_assert!(est >= min && est <= max, "{est} outside [{min}, {max}]");
        }
    }
}
