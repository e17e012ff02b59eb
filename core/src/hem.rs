//! Hard example mining (seed §4, which leaves the method open).
//!
//! Two standard rules, both allocation-free:
//! - online hard example mining: train only on the samples of a batch with the
//!   highest loss (e.g. the per-sample A-Softmax losses from [`crate::margin`]);
//! - margin-based hard negatives (as in MV-Softmax): a non-target class `j` is
//!   hard for a sample when `cos θ_j > cos(θ_y + m)`, i.e. it would still beat
//!   the target after an additive angular margin `m`.

use crate::error::check_len;
use crate::{Error, Result};

/// Fills `out` with the indices of the `out.len()` largest finite losses,
/// largest first (ties: lower index first). Returns how many were filled,
/// fewer when the batch has fewer finite losses. NaN losses are never picked.
pub fn hardest(losses: &[f32], out: &mut [usize]) -> usize {
    let k = out.len();
    let mut filled = 0;
    for (i, &loss) in losses.iter().enumerate() {
        if !loss.is_finite() {
            continue;
        }
        let at = out[..filled].partition_point(|&j| losses[j] >= loss);
        if at >= k {
            continue;
        }
        let end = (filled + 1).min(k);
        out.copy_within(at..end - 1, at + 1);
        out[at] = i;
        filled = end;
    }
    filled
}

/// How many of `batch` samples to keep: `ceil(keep_ratio * batch)`, at least
/// `min_keep` and at most `batch`.
pub fn keep_count(batch: usize, keep_ratio: f32, min_keep: usize) -> Result<usize> {
    if !(keep_ratio > 0.0 && keep_ratio <= 1.0) {
        return Err(Error::InvalidParameter {
            name: "keep_ratio",
            reason: "must be in (0, 1]",
        });
    }
    let k = libm::ceilf(keep_ratio * batch as f32) as usize;
    Ok(k.max(min_keep).min(batch))
}

/// Marks in `mask` the non-target classes that are hard negatives for a
/// sample, given its cosines to every class, its label and an additive angular
/// margin `m` (radians). When `θ_y + m` exceeds π every other class is hard.
/// Returns the number marked.
pub fn hard_negatives(cosines: &[f32], label: usize, m: f32, mask: &mut [bool]) -> Result<usize> {
    check_len("mask", cosines.len(), mask.len())?;
    if label >= cosines.len() {
        return Err(Error::OutOfRange {
            what: "label",
            index: label,
            count: cosines.len(),
        });
    }
    if !(m >= 0.0 && m.is_finite()) {
        return Err(Error::InvalidParameter {
            name: "margin",
            reason: "must be finite and at least 0",
        });
    }
    let theta = libm::acosf(cosines[label].clamp(-1.0, 1.0));
    let bound = if theta + m >= core::f32::consts::PI {
        -1.0
    } else {
        libm::cosf(theta + m)
    };
    let mut count = 0;
    for (j, (&c, hard)) in cosines.iter().zip(mask.iter_mut()).enumerate() {
        *hard = j != label && c > bound;
        count += usize::from(*hard);
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::{vec, vec::Vec};

    #[test]
    fn hardest_picks_the_largest_losses_in_order() {
        let losses = [0.5, 3.0, f32::NAN, 1.0, 3.0, 0.1];
        let mut out = [0; 3];
        assert_eq!(hardest(&losses, &mut out), 3);
        assert_eq!(out, [1, 4, 3]);
        let mut many = [0; 10];
        assert_eq!(hardest(&losses, &mut many), 5);
        assert_eq!(&many[..5], [1, 4, 3, 0, 5]);
    }

    #[test]
    fn keep_count_rounds_up_and_clamps() {
        assert_eq!(keep_count(64, 0.5, 0).unwrap(), 32);
        assert_eq!(keep_count(10, 0.25, 0).unwrap(), 3);
        assert_eq!(keep_count(10, 0.1, 4).unwrap(), 4);
        assert_eq!(keep_count(3, 0.5, 8).unwrap(), 3);
        assert!(keep_count(10, 0.0, 0).is_err());
    }

    #[test]
    fn hard_negatives_by_hand() {
        // θ_y = 60° (cos 0.5); with m = 30° the bound is cos 90° = 0.
        let cos = [0.5, 0.2, -0.1, 0.6, -0.01];
        let mut mask = [false; 5];
        let n = hard_negatives(&cos, 0, core::f32::consts::FRAC_PI_6, &mut mask).unwrap();
        assert_eq!(mask, [false, true, false, true, false]);
        assert_eq!(n, 2);
        // No margin: only classes that already beat the target.
        hard_negatives(&cos, 0, 0.0, &mut mask).unwrap();
        assert_eq!(mask, [false, false, false, true, false]);
        // θ_y + m beyond π: everything but the target.
        hard_negatives(&[-0.9, -0.95, 0.3], 0, 1.0, &mut mask[..3]).unwrap();
        assert_eq!(&mask[..3], [false, true, true]);
        assert!(hard_negatives(&cos, 5, 0.1, &mut mask).is_err());
        assert!(hard_negatives(&cos, 0, -0.1, &mut mask).is_err());
    }

    proptest! {
        #[test]
        fn hardest_agrees_with_a_full_sort(losses in prop::collection::vec(-10.0f32..10.0, 0..50), k in 0usize..20) {
            let mut out = vec![0; k];
            let n = hardest(&losses, &mut out);
            let mut order: Vec<usize> = (0..losses.len()).collect();
            order.sort_by(|&a, &b| losses[b].total_cmp(&losses[a]).then(a.cmp(&b)));
            prop_assert_eq!(&out[..n], &order[..n.min(order.len())]);
            prop_assert_eq!(n, k.min(losses.len()));
        }

        #[test]
        fn a_larger_margin_marks_a_superset(cos in prop::collection::vec(-1.0f32..1.0, 2..20), m in 0.0f32..1.0, extra in 0.0f32..1.0) {
            let mut small = vec![false; cos.len()];
            let mut large = vec![false; cos.len()];
            hard_negatives(&cos, 0, m, &mut small).unwrap();
            hard_negatives(&cos, 0, m + extra, &mut large).unwrap();
            for (s, l) in small.iter().zip(&large) { prop_assert!(!s || *l); }
        }
    }
}
