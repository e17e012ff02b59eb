//! Feature norms, the quality signal of the gate, and the seed's NormSelect layer.
//!
//! The L2 norm of a margin-trained network's un-normalised feature rises with
//! image quality. NormSelect (seed §3) zeroes the features whose norm is below a
//! threshold, so that low-quality samples carry no class information (a zero
//! feature gives every class probability 1/C), and passes gradient only where a
//! feature was kept.

use crate::error::{check_len, rows_of};
use crate::{Error, Result};

/// Dot product of two equally long vectors.
///
/// # Panics
/// When the lengths differ: that is a programming error, not bad input.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot of vectors with different lengths");
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Euclidean (L2) norm.
pub fn l2_norm(x: &[f32]) -> f32 {
    libm::sqrtf(x.iter().map(|v| v * v).sum())
}

/// Scales `x` to unit length in place and returns its former norm.
/// A zero vector stays zero (there is no direction to keep).
pub fn normalize(x: &mut [f32]) -> f32 {
    let n = l2_norm(x);
    if n > 0.0 && n.is_finite() {
        x.iter_mut().for_each(|v| *v /= n);
    }
    n
}

/// Cosine similarity, clamped to [-1, 1]; 0 when either vector is zero.
///
/// # Panics
/// When the lengths differ.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let denom = l2_norm(a) * l2_norm(b);
    if denom > 0.0 {
        (dot(a, b) / denom).clamp(-1.0, 1.0)
    } else {
        0.0
    }
}

/// Where NormSelect's threshold comes from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SelectMode {
    /// A fixed threshold (the seed's network used 5.0).
    Fixed(f32),
    /// An exponential average of batch mean norms:
    /// `avg = (1 - weight) * avg + weight * batch_mean`. The seed's Python
    /// variant `avg = (avg + batch_mean) / 2` is `weight = 0.5`.
    RunningAverage {
        /// Weight of the newest batch, in (0, 1].
        weight: f32,
    },
}

/// The NormSelect layer: zero the features whose norm is below the threshold.
#[derive(Debug, Clone, PartialEq)]
pub struct NormSelect {
    mode: SelectMode,
    average: Option<f32>,
}

impl NormSelect {
    /// A layer in the given mode; rejects a negative or non-finite threshold
    /// and an EMA weight outside (0, 1].
    pub fn new(mode: SelectMode) -> Result<Self> {
        match mode {
            SelectMode::Fixed(t) if !(t.is_finite() && t >= 0.0) => Err(Error::InvalidParameter {
                name: "threshold",
                reason: "must be finite and at least 0",
            }),
            SelectMode::RunningAverage { weight } if !(weight > 0.0 && weight <= 1.0) => Err(Error::InvalidParameter {
                name: "weight",
                reason: "must be in (0, 1]",
            }),
            _ => Ok(Self { mode, average: None }),
        }
    }

    /// The threshold that the last `forward` applied (the fixed one before any batch
    /// in fixed mode; `None` in running-average mode before the first batch).
    pub fn threshold(&self) -> Option<f32> {
        match self.mode {
            SelectMode::Fixed(t) => Some(t),
            SelectMode::RunningAverage { .. } => self.average,
        }
    }

    /// Restores a running average that [`NormSelect::threshold`] read before
    /// (a training checkpoint), so a resumed run thresholds its next batch as
    /// an uninterrupted one would. The fixed mode has no state and ignores it.
    pub fn restore_average(&mut self, average: f32) -> Result<()> {
        if !average.is_finite() {
            return Err(Error::NonFinite("average"));
        }
        if let SelectMode::RunningAverage { .. } = self.mode {
            self.average = Some(average);
        }
        Ok(())
    }

    /// Applies the layer to a batch of row-major features (`dim` values per row).
    ///
    /// In running-average mode the batch's mean norm is folded into the average
    /// first and the updated average is the threshold for this batch. Rows with
    /// norm `< threshold` are set to zero and get `mask = false`. Returns the
    /// threshold applied.
    pub fn forward(&mut self, features: &mut [f32], dim: usize, mask: &mut [bool]) -> Result<f32> {
        let rows = rows_of("features", features.len(), dim)?;
        check_len("mask", rows, mask.len())?;
        if features.iter().any(|v| !v.is_finite()) {
            return Err(Error::NonFinite("features"));
        }
        let threshold = match self.mode {
            SelectMode::Fixed(t) => t,
            SelectMode::RunningAverage { weight } => {
                if rows == 0 {
                    return self.average.ok_or(Error::InvalidParameter {
                        name: "features",
                        reason: "the first batch of a running average must not be empty",
                    });
                }
                let mean = features.chunks_exact(dim).map(l2_norm).sum::<f32>() / rows as f32;
                let avg = match self.average {
                    Some(avg) => (1.0 - weight) * avg + weight * mean,
                    None => mean,
                };
                self.average = Some(avg);
                avg
            }
        };
        for (row, keep) in features.chunks_exact_mut(dim).zip(mask.iter_mut()) {
            *keep = l2_norm(row) >= threshold;
            if !*keep {
                row.fill(0.0);
            }
        }
        Ok(threshold)
    }

    /// Backward pass: zeroes the gradient rows of the features that `forward` dropped.
    pub fn backward(grad: &mut [f32], dim: usize, mask: &[bool]) -> Result<()> {
        let rows = rows_of("grad", grad.len(), dim)?;
        check_len("mask", rows, mask.len())?;
        for (row, &keep) in grad.chunks_exact_mut(dim).zip(mask) {
            if !keep {
                row.fill(0.0);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::vec;

    #[test]
    fn norms_and_cosines_by_hand() {
        assert_eq!(l2_norm(&[3.0, 4.0]), 5.0);
        assert_eq!(dot(&[1.0, 2.0, 3.0], &[4.0, -5.0, 6.0]), 12.0);
        let mut v = [3.0, 4.0];
        assert_eq!(normalize(&mut v), 5.0);
        assert_eq!(v, [0.6, 0.8]);
        assert!((cosine(&[1.0, 0.0], &[1.0, 1.0]) - core::f32::consts::FRAC_1_SQRT_2).abs() < 1e-7);
        assert_eq!(cosine(&[1.0, 2.0], &[-2.0, -4.0]), -1.0);
    }

    #[test]
    fn zero_vectors_are_safe() {
        let mut z = [0.0f32; 4];
        assert_eq!(normalize(&mut z), 0.0);
        assert_eq!(z, [0.0; 4]);
        assert_eq!(cosine(&z, &[1.0, 2.0, 3.0, 4.0]), 0.0);
    }

    #[test]
    fn fixed_select_zeroes_low_norm_rows_and_their_gradient() {
        // Norms 5, 1, 13 against threshold 5: the middle row goes.
        let mut f = [3.0, 4.0, 0.6, 0.8, 5.0, 12.0];
        let mut mask = [false; 3];
        let mut layer = NormSelect::new(SelectMode::Fixed(5.0)).unwrap();
        assert_eq!(layer.forward(&mut f, 2, &mut mask).unwrap(), 5.0);
        assert_eq!(mask, [true, false, true]);
        assert_eq!(f, [3.0, 4.0, 0.0, 0.0, 5.0, 12.0]);
        let mut g = [1.0; 6];
        NormSelect::backward(&mut g, 2, &mask).unwrap();
        assert_eq!(g, [1.0, 1.0, 0.0, 0.0, 1.0, 1.0]);
    }

    #[test]
    fn running_average_follows_the_seed_rule() {
        let mut layer = NormSelect::new(SelectMode::RunningAverage { weight: 0.5 }).unwrap();
        assert_eq!(layer.threshold(), None);
        // Batch 1: norms 2 and 6, mean 4 -> avg 4.
        let mut b1 = [2.0, 0.0, 6.0, 0.0];
        let mut m = [false; 2];
        assert_eq!(layer.forward(&mut b1, 2, &mut m).unwrap(), 4.0);
        assert_eq!(m, [false, true]);
        // Batch 2: norms 10 and 10, mean 10 -> avg (4 + 10) / 2 = 7.
        let mut b2 = [10.0, 0.0, 0.0, 10.0];
        assert_eq!(layer.forward(&mut b2, 2, &mut m).unwrap(), 7.0);
        assert_eq!(m, [true, true]);
        assert_eq!(layer.threshold(), Some(7.0));
        // A fresh layer given the saved average continues the same way.
        let mut resumed = NormSelect::new(SelectMode::RunningAverage { weight: 0.5 }).unwrap();
        resumed.restore_average(7.0).unwrap();
        let mut b3 = [1.0, 0.0, 0.0, 1.0];
        let mut b3_again = b3;
        assert_eq!(resumed.forward(&mut b3, 2, &mut m).unwrap(), 4.0);
        assert_eq!(layer.forward(&mut b3_again, 2, &mut m).unwrap(), 4.0);
        assert!(resumed.restore_average(f32::NAN).is_err());
        let mut fixed = NormSelect::new(SelectMode::Fixed(2.0)).unwrap();
        fixed.restore_average(9.0).unwrap();
        assert_eq!(fixed.threshold(), Some(2.0));
    }

    #[test]
    fn bad_input_is_rejected() {
        assert!(NormSelect::new(SelectMode::Fixed(-1.0)).is_err());
        assert!(NormSelect::new(SelectMode::RunningAverage { weight: 0.0 }).is_err());
        let mut layer = NormSelect::new(SelectMode::Fixed(1.0)).unwrap();
        let mut m = [false; 2];
        assert!(matches!(
            layer.forward(&mut [1.0; 5], 2, &mut m),
            Err(Error::ShapeMismatch { .. })
        ));
        assert!(matches!(
            layer.forward(&mut [f32::NAN, 0.0, 1.0, 1.0], 2, &mut m),
            Err(Error::NonFinite(_))
        ));
        let mut ema = NormSelect::new(SelectMode::RunningAverage { weight: 0.5 }).unwrap();
        assert!(ema.forward(&mut [], 2, &mut []).is_err());
    }

    proptest! {
        #[test]
        fn cosine_is_bounded_symmetric_and_scale_free(
            a in prop::collection::vec(-100.0f32..100.0, 8),
            b in prop::collection::vec(-100.0f32..100.0, 8),
            s in 0.01f32..100.0,
        ) {
            let c = cosine(&a, &b);
            prop_assert!((-1.0..=1.0).contains(&c));
            prop_assert!((c - cosine(&b, &a)).abs() < 1e-6);
            let scaled: [f32; 8] = core::array::from_fn(|i| a[i] * s);
            prop_assert!((c - cosine(&scaled, &b)).abs() < 1e-4);
        }

        #[test]
        fn normalize_gives_unit_length(mut v in prop::collection::vec(-1e3f32..1e3, 1..64)) {
            let n = normalize(&mut v);
            if n > 1e-6 {
                prop_assert!((l2_norm(&v) - 1.0).abs() < 1e-5);
            }
        }

        #[test]
        fn select_keeps_exactly_the_rows_at_or_above_threshold(
            f in prop::collection::vec(-10.0f32..10.0, 0..40usize).prop_map(|mut v| { v.truncate(v.len() / 4 * 4); v }),
            t in 0.0f32..15.0,
        ) {
            let mut out = f.clone();
            let mut mask = vec![false; f.len() / 4];
            NormSelect::new(SelectMode::Fixed(t)).unwrap().forward(&mut out, 4, &mut mask).unwrap();
            for ((row, kept), keep) in f.chunks(4).zip(out.chunks(4)).zip(&mask) {
                prop_assert_eq!(*keep, l2_norm(row) >= t);
                if *keep { prop_assert_eq!(row, kept) } else { prop_assert!(kept.iter().all(|v| *v == 0.0)) }
            }
        }
    }
}
