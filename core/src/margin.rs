//! SphereFace's A-Softmax loss (the "MarginInnerProduct" layer), forward and backward.
//!
//! Class weights are normalised inside the layer and there is no bias, so the
//! logit of class `j` is `|x| cos θ_j`. The target class gets the angular
//! margin: `|x| (λ cos θ_y + ψ(θ_y)) / (1 + λ)` with
//! `ψ(θ) = (-1)^k cos(mθ) - 2k` for `θ ∈ [kπ/m, (k+1)π/m]`, where `cos(mθ)` is
//! the Chebyshev polynomial `T_m(cos θ)`, so no `acos` is needed. λ starts large
//! (plain softmax) and decays to `lambda_min` by [`LambdaSchedule`]. The
//! backward pass ([`ASoftmax::backward`]) differentiates through the weight
//! normalisation exactly.

use crate::error::{check_len, rows_of};
use crate::norm::{dot, l2_norm};
use crate::{Error, Result};

/// The angular margin `m` (1 to 4; SphereFace uses 4).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Margin {
    m: u8,
    /// `cos(jπ/m)` for `j = 1..m`, the bounds between the pieces of ψ.
    bounds: [f32; 3],
}

impl Margin {
    /// A margin of `m` in 1..=4.
    pub fn new(m: u8) -> Result<Self> {
        if !(1..=4).contains(&m) {
            return Err(Error::InvalidParameter {
                name: "margin m",
                reason: "must be 1, 2, 3 or 4",
            });
        }
        let bounds = core::array::from_fn(|j| libm::cos((j + 1) as f64 * core::f64::consts::PI / f64::from(m)) as f32);
        Ok(Self { m, bounds })
    }

    /// The margin `m`.
    pub fn m(&self) -> u8 {
        self.m
    }

    /// `cos(mθ)` and its derivative with respect to `cos θ`, as Chebyshev polynomials of `c = cos θ`.
    pub fn cos_m_theta(&self, c: f32) -> (f32, f32) {
        let c2 = c * c;
        match self.m {
            1 => (c, 1.0),
            2 => (2.0 * c2 - 1.0, 4.0 * c),
            3 => ((4.0 * c2 - 3.0) * c, 12.0 * c2 - 3.0),
            _ => (8.0 * c2 * c2 - 8.0 * c2 + 1.0, (32.0 * c2 - 16.0) * c),
        }
    }

    /// The piece `k` with `θ ∈ [kπ/m, (k+1)π/m]`, from `c = cos θ`.
    pub fn k(&self, c: f32) -> u8 {
        self.bounds[..usize::from(self.m - 1)]
            .iter()
            .filter(|&&b| c <= b)
            .count() as u8
    }

    /// `ψ(θ)` and `dψ/dc`, from `c = cos θ`.
    pub fn psi(&self, c: f32) -> (f32, f32) {
        let k = self.k(c);
        let (t, dt) = self.cos_m_theta(c);
        let sign = if k % 2 == 0 { 1.0 } else { -1.0 };
        (sign * t - 2.0 * f32::from(k), sign * dt)
    }

    /// The target logit's factor `g(c) = (λc + ψ)/(1 + λ)` and `dg/dc`.
    pub fn target_factor(&self, c: f32, lambda: f32) -> (f32, f32) {
        let (psi, dpsi) = self.psi(c);
        ((lambda * c + psi) / (1.0 + lambda), (lambda + dpsi) / (1.0 + lambda))
    }
}

/// `λ = max(lambda_min, base (1 + gamma · iter)^(-power))`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LambdaSchedule {
    /// λ at iteration 0.
    pub base: f32,
    /// Decay rate per iteration.
    pub gamma: f32,
    /// Decay exponent.
    pub power: f32,
    /// The floor λ decays to.
    pub lambda_min: f32,
}

impl LambdaSchedule {
    /// The official SphereFace training: base 1000, gamma 0.12, power 1, lambda_min 5.
    pub const SPHEREFACE: Self = Self {
        base: 1000.0,
        gamma: 0.12,
        power: 1.0,
        lambda_min: 5.0,
    };

    /// λ at an iteration.
    pub fn at(&self, iter: u64) -> f32 {
        let decayed = self.base * libm::powf(1.0 + self.gamma * iter as f32, -self.power);
        decayed.max(self.lambda_min)
    }
}

/// One batch for the A-Softmax layer: `n` features of `dim` values, one
/// weight row per class with its norm (from [`weight_norms`]), one label per feature.
#[derive(Debug, Clone, Copy)]
pub struct Batch<'a> {
    /// Features, `n x dim`, row-major.
    pub x: &'a [f32],
    /// Class weights, `classes x dim`, row-major, not necessarily normalised.
    pub weights: &'a [f32],
    /// The norm of each weight row.
    pub weight_norms: &'a [f32],
    /// The target class of each feature.
    pub labels: &'a [u32],
    /// Values per feature.
    pub dim: usize,
}

impl Batch<'_> {
    /// `(n, classes)` of the batch, after checking every length and label.
    fn shape(&self) -> Result<(usize, usize)> {
        let n = rows_of("x", self.x.len(), self.dim)?;
        let classes = rows_of("weights", self.weights.len(), self.dim)?;
        check_len("labels", n, self.labels.len())?;
        check_len("weight_norms", classes, self.weight_norms.len())?;
        if let Some(&bad) = self.labels.iter().find(|&&l| l as usize >= classes) {
            return Err(Error::OutOfRange {
                what: "label",
                index: bad as usize,
                count: classes,
            });
        }
        Ok((n, classes))
    }

    fn weight_row(&self, class: usize) -> &[f32] {
        &self.weights[class * self.dim..][..self.dim]
    }
}

/// Fills `weight_norms` with the L2 norm of each class row; zero rows are an error.
pub fn weight_norms(weights: &[f32], dim: usize, weight_norms: &mut [f32]) -> Result<()> {
    let classes = rows_of("weights", weights.len(), dim)?;
    check_len("weight_norms", classes, weight_norms.len())?;
    for (row, norm) in weights.chunks_exact(dim).zip(weight_norms.iter_mut()) {
        *norm = l2_norm(row);
        if !(*norm > 0.0 && norm.is_finite()) {
            return Err(Error::InvalidParameter {
                name: "weights",
                reason: "every class row needs a finite, non-zero norm",
            });
        }
    }
    Ok(())
}

/// `cos θ_y` of a sample against its target row (0 for a zero feature).
fn target_cosine(x: &[f32], w_y: &[f32], w_norm: f32, x_norm: f32) -> f32 {
    if x_norm > 0.0 {
        (dot(x, w_y) / (w_norm * x_norm)).clamp(-1.0, 1.0)
    } else {
        0.0
    }
}

/// Log-sum-exp of a row of logits, shifted by the maximum for stability.
fn log_sum_exp(row: &[f32]) -> f32 {
    let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    max + libm::logf(row.iter().map(|&v| libm::expf(v - max)).sum())
}

/// The A-Softmax layer at one point of its lambda schedule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ASoftmax {
    /// The angular margin.
    pub margin: Margin,
    /// The current λ (see [`LambdaSchedule`]).
    pub lambda: f32,
}

impl ASoftmax {
    /// Forward pass: writes `n x classes` logits and each sample's softmax
    /// cross-entropy into `losses`; returns the mean loss.
    pub fn forward(&self, batch: &Batch, logits: &mut [f32], losses: &mut [f32]) -> Result<f32> {
        let (n, classes) = batch.shape()?;
        check_len("logits", n * classes, logits.len())?;
        check_len("losses", n, losses.len())?;
        for (((xi, &y), row), loss) in batch
            .x
            .chunks_exact(batch.dim)
            .zip(batch.labels)
            .zip(logits.chunks_exact_mut(classes))
            .zip(losses.iter_mut())
        {
            let x_norm = l2_norm(xi);
            for ((w, &wn), logit) in batch
                .weights
                .chunks_exact(batch.dim)
                .zip(batch.weight_norms)
                .zip(row.iter_mut())
            {
                *logit = dot(xi, w) / wn;
            }
            let y = y as usize;
            let c = target_cosine(xi, batch.weight_row(y), batch.weight_norms[y], x_norm);
            row[y] = x_norm * self.margin.target_factor(c, self.lambda).0;
            *loss = log_sum_exp(row) - row[y];
        }
        Ok(losses.iter().sum::<f32>() / n.max(1) as f32)
    }

    /// Backward pass of the mean loss that [`ASoftmax::forward`] returned, from
    /// the `logits` it wrote; overwrites `grad_x` (`n x dim`) and
    /// `grad_weights` (`classes x dim`).
    pub fn backward(&self, batch: &Batch, logits: &[f32], grad_x: &mut [f32], grad_weights: &mut [f32]) -> Result<()> {
        let (n, classes) = batch.shape()?;
        let dim = batch.dim;
        check_len("logits", n * classes, logits.len())?;
        check_len("grad_x", batch.x.len(), grad_x.len())?;
        check_len("grad_weights", batch.weights.len(), grad_weights.len())?;
        grad_weights.fill(0.0);
        let scale = 1.0 / n.max(1) as f32;
        for (((xi, &y), row), gx) in batch
            .x
            .chunks_exact(dim)
            .zip(batch.labels)
            .zip(logits.chunks_exact(classes))
            .zip(grad_x.chunks_exact_mut(dim))
        {
            let y = y as usize;
            let lse = log_sum_exp(row);
            let x_norm = l2_norm(xi);
            gx.fill(0.0);
            for (j, ((w, &wn), gw)) in batch
                .weights
                .chunks_exact(dim)
                .zip(batch.weight_norms)
                .zip(grad_weights.chunks_exact_mut(dim))
                .enumerate()
            {
                if j == y {
                    continue;
                }
                // f_j = ŵ_j·x: d/dx = ŵ_j, d/dW_j = (x - f_j ŵ_j) / |W_j|.
                let g = libm::expf(row[j] - lse) * scale;
                let f = row[j];
                for ((gxv, gwv), (&xv, &wv)) in gx.iter_mut().zip(gw.iter_mut()).zip(xi.iter().zip(w)) {
                    let w_hat = wv / wn;
                    *gxv += g * w_hat;
                    *gwv += g * (xv - f * w_hat) / wn;
                }
            }
            // f_y = |x| g(c) with c = ŵ_y·x / |x|:
            // d/dx = g(c) x̂ + g'(c) (ŵ_y - c x̂), d/dW_y = g'(c) (x - (ŵ_y·x) ŵ_y) / |W_y|.
            let w = batch.weight_row(y);
            let wn = batch.weight_norms[y];
            let c = target_cosine(xi, w, wn, x_norm);
            let (factor, dfactor) = self.margin.target_factor(c, self.lambda);
            let g = (libm::expf(row[y] - lse) - 1.0) * scale;
            let proj = dot(xi, w) / wn;
            let inv_x = if x_norm > 0.0 { 1.0 / x_norm } else { 0.0 };
            let gw = &mut grad_weights[y * dim..][..dim];
            for ((gxv, gwv), (&xv, &wv)) in gx.iter_mut().zip(gw.iter_mut()).zip(xi.iter().zip(w)) {
                let (x_hat, w_hat) = (xv * inv_x, wv / wn);
                *gxv += g * (factor * x_hat + dfactor * (w_hat - c * x_hat));
                *gwv += g * dfactor * (xv - proj * w_hat) / wn;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::{vec, vec::Vec};

    fn lcg_values(seed: u64, n: usize) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn chebyshev_matches_cos_of_m_theta() {
        for m in 1..=4u8 {
            let margin = Margin::new(m).unwrap();
            for i in 0..=200 {
                let c = -1.0 + i as f32 / 100.0;
                let direct = libm::cos(f64::from(m) * libm::acos(f64::from(c))) as f32;
                assert!((margin.cos_m_theta(c).0 - direct).abs() < 1e-5, "m={m} c={c}");
            }
        }
    }

    #[test]
    fn psi_matches_its_definition_in_theta_and_decreases() {
        for m in 1..=4u8 {
            let margin = Margin::new(m).unwrap();
            let mut last = f32::INFINITY;
            for i in 0..=1000 {
                let theta = core::f64::consts::PI * f64::from(i) / 1000.0;
                let k = libm::floor(theta * f64::from(m) / core::f64::consts::PI).min(f64::from(m) - 1.0);
                let sign = if k as i32 % 2 == 0 { 1.0 } else { -1.0 };
                let expected = (sign * libm::cos(f64::from(m) * theta) - 2.0 * k) as f32;
                let psi = margin.psi(libm::cos(theta) as f32).0;
                assert!((psi - expected).abs() < 2e-3, "m={m} θ={theta}: {psi} vs {expected}");
                assert!(psi <= last + 1e-5, "ψ must fall with θ");
                last = psi;
            }
            assert!((margin.psi(-1.0).0 - (-2.0 * f32::from(m) + 1.0)).abs() < 1e-5);
        }
    }

    #[test]
    fn lambda_schedule_of_the_official_training() {
        let s = LambdaSchedule::SPHEREFACE;
        assert_eq!(s.at(0), 1000.0);
        assert!((s.at(100) - 1000.0 / 13.0).abs() < 1e-3);
        // 1000 / (1 + 0.12 i) = 5 at i = 1658.3: the floor is reached after about 1,660 iterations.
        assert!(s.at(1658) > 5.0 && s.at(1659) == 5.0);
        assert_eq!(s.at(1_000_000), 5.0);
    }

    #[test]
    fn zero_feature_gives_loss_ln_c() {
        let (dim, classes) = (4, 7);
        let w = lcg_values(3, dim * classes);
        let mut norms = vec![0.0; classes];
        weight_norms(&w, dim, &mut norms).unwrap();
        let mut logits = vec![0.0; classes];
        let mut loss = [0.0];
        let layer = ASoftmax {
            margin: Margin::new(4).unwrap(),
            lambda: 5.0,
        };
        let batch = Batch {
            x: &[0.0; 4],
            weights: &w,
            weight_norms: &norms,
            labels: &[2],
            dim,
        };
        let mean = layer.forward(&batch, &mut logits, &mut loss).unwrap();
        assert!((mean - libm::logf(classes as f32)).abs() < 1e-6);
        assert!(logits.iter().all(|&l| l == 0.0));
    }

    #[test]
    fn m1_without_lambda_is_plain_normalised_softmax() {
        let (dim, classes) = (5, 3);
        let x = lcg_values(1, dim * 2);
        let w = lcg_values(2, dim * classes);
        let mut norms = vec![0.0; classes];
        weight_norms(&w, dim, &mut norms).unwrap();
        let mut logits = vec![0.0; 2 * classes];
        let mut losses = [0.0; 2];
        let layer = ASoftmax {
            margin: Margin::new(1).unwrap(),
            lambda: 0.0,
        };
        let batch = Batch {
            x: &x,
            weights: &w,
            weight_norms: &norms,
            labels: &[0, 2],
            dim,
        };
        layer.forward(&batch, &mut logits, &mut losses).unwrap();
        for i in 0..2 {
            for j in 0..classes {
                let expected = dot(&x[i * dim..][..dim], &w[j * dim..][..dim]) / norms[j];
                assert!((logits[i * classes + j] - expected).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn margin_lowers_the_target_logit() {
        let (dim, classes) = (6, 4);
        let x = lcg_values(5, dim);
        let w = lcg_values(6, dim * classes);
        let mut norms = vec![0.0; classes];
        weight_norms(&w, dim, &mut norms).unwrap();
        let mut plain = vec![0.0; classes];
        let mut with_margin = vec![0.0; classes];
        let mut loss = [0.0];
        let margin = Margin::new(4).unwrap();
        let batch = Batch {
            x: &x,
            weights: &w,
            weight_norms: &norms,
            labels: &[1],
            dim,
        };
        ASoftmax { margin, lambda: 1e9 }
            .forward(&batch, &mut plain, &mut loss)
            .unwrap();
        let plain_loss = loss[0];
        ASoftmax { margin, lambda: 0.0 }
            .forward(&batch, &mut with_margin, &mut loss)
            .unwrap();
        assert!(with_margin[1] < plain[1]);
        assert!(loss[0] > plain_loss);
        assert_eq!((plain[0], plain[2]), (with_margin[0], with_margin[2]));
    }

    fn mean_loss(x: &[f32], w: &[f32], labels: &[u32], dim: usize, layer: &ASoftmax) -> f64 {
        let classes = w.len() / dim;
        let mut norms = vec![0.0; classes];
        weight_norms(w, dim, &mut norms).unwrap();
        let mut logits = vec![0.0; labels.len() * classes];
        let mut losses = vec![0.0; labels.len()];
        let batch = Batch {
            x,
            weights: w,
            weight_norms: &norms,
            labels,
            dim,
        };
        layer.forward(&batch, &mut logits, &mut losses).unwrap();
        losses.iter().map(|&l| f64::from(l)).sum::<f64>() / labels.len() as f64
    }

    /// Central finite differences of the mean loss against `backward`, for x and W.
    fn gradient_check(m: u8, lambda: f32, seed: u64) {
        let (n, dim, classes) = (3, 5, 4);
        let x: Vec<f32> = lcg_values(seed, n * dim).iter().map(|v| v * 3.0).collect();
        let w = lcg_values(seed + 100, classes * dim);
        let labels = [0u32, 3, 1];
        let layer = ASoftmax {
            margin: Margin::new(m).unwrap(),
            lambda,
        };
        let mut norms = vec![0.0; classes];
        weight_norms(&w, dim, &mut norms).unwrap();
        let mut logits = vec![0.0; n * classes];
        let mut losses = vec![0.0; n];
        let batch = Batch {
            x: &x,
            weights: &w,
            weight_norms: &norms,
            labels: &labels,
            dim,
        };
        layer.forward(&batch, &mut logits, &mut losses).unwrap();
        let mut gx = vec![0.0; x.len()];
        let mut gw = vec![0.0; w.len()];
        layer.backward(&batch, &logits, &mut gx, &mut gw).unwrap();
        let check = |analytic: &[f32], numeric: Vec<f64>, what: &str| {
            for (a, n) in analytic.iter().zip(numeric) {
                let err = (f64::from(*a) - n).abs();
                assert!(
                    err < 2e-3 * (1.0 + n.abs()),
                    "m={m} λ={lambda} {what}: analytic {a}, numeric {n}"
                );
            }
        };
        check(
            &gx,
            numeric_gradient(&x, |x| mean_loss(x, &w, &labels, dim, &layer)),
            "dx",
        );
        check(
            &gw,
            numeric_gradient(&w, |w| mean_loss(&x, w, &labels, dim, &layer)),
            "dW",
        );
    }

    /// Central finite differences of `loss` at `values`, one coordinate at a time.
    fn numeric_gradient(values: &[f32], loss: impl Fn(&[f32]) -> f64) -> Vec<f64> {
        let eps = 1e-3f32;
        (0..values.len())
            .map(|i| {
                let (mut plus, mut minus) = (values.to_vec(), values.to_vec());
                plus[i] += eps;
                minus[i] -= eps;
                (loss(&plus) - loss(&minus)) / (2.0 * f64::from(eps))
            })
            .collect()
    }

    #[test]
    fn backward_passes_finite_difference_checks() {
        for m in 1..=4 {
            for lambda in [0.0, 1.0, 5.0, 1000.0] {
                for seed in [1, 2, 3] {
                    gradient_check(m, lambda, seed);
                }
            }
        }
    }

    #[test]
    fn bad_shapes_and_labels_are_rejected() {
        assert!(Margin::new(0).is_err() && Margin::new(5).is_err());
        let layer = ASoftmax {
            margin: Margin::new(4).unwrap(),
            lambda: 1.0,
        };
        let w = [1.0, 0.0, 0.0, 1.0];
        let norms = [1.0, 1.0];
        let mut logits = [0.0; 2];
        let mut loss = [0.0];
        let batch = Batch {
            x: &[1.0, 1.0],
            weights: &w,
            weight_norms: &norms,
            labels: &[2],
            dim: 2,
        };
        let err = layer.forward(&batch, &mut logits, &mut loss).unwrap_err();
        assert!(matches!(
            err,
            Error::OutOfRange {
                what: "label",
                index: 2,
                count: 2
            }
        ));
        let odd = Batch {
            x: &[1.0; 3],
            labels: &[0],
            ..batch
        };
        assert!(layer.forward(&odd, &mut logits, &mut loss).is_err());
        let mut n = [0.0; 2];
        assert!(weight_norms(&[0.0, 0.0, 1.0, 0.0], 2, &mut n).is_err());
    }

    proptest! {
        #[test]
        fn losses_are_finite_and_at_least_zero(
            x in prop::collection::vec(-50.0f32..50.0, 8),
            w in prop::collection::vec(0.1f32..1.0, 12),
            label in 0u32..3,
            m in 1u8..=4,
            lambda in 0.0f32..1000.0,
        ) {
            let mut norms = [0.0; 3];
            weight_norms(&w, 4, &mut norms).unwrap();
            let mut logits = [0.0; 6];
            let mut losses = [0.0; 2];
            let batch = Batch { x: &x, weights: &w, weight_norms: &norms, labels: &[label, label], dim: 4 };
            ASoftmax { margin: Margin::new(m).unwrap(), lambda }.forward(&batch, &mut logits, &mut losses).unwrap();
            for l in losses {
                prop_assert!(l.is_finite() && l >= -1e-5);
            }
        }
    }
}
