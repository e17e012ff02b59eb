//! The quality protocols of DESIGN.md, for any model `eval` can run:
//!
//! - EDC (error versus discard): pair quality = min of the two norms; the
//!   threshold is fixed at FMR 1e-2 on all pairs; FNMR after discarding the
//!   lowest 0..50 % of pairs, against random discard and a blur baseline
//!   (variance of the Laplacian).
//! - Degradation ranking: Spearman correlation of severity and norm, pooled
//!   over images, per degradation family.
//! - Face versus non-face: ROC AUC of the norm.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Serialize;

use crate::eval::verify::Scored;

/// Ranks (1-based, ties get their average rank).
pub fn ranks(values: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let mut out = vec![0.0; values.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && values[order[j + 1]] == values[order[i]] {
            j += 1;
        }
        let rank = (i + j) as f64 / 2.0 + 1.0;
        order[i..=j].iter().for_each(|&k| out[k] = rank);
        i = j + 1;
    }
    out
}

/// Spearman rank correlation (Pearson correlation of the ranks).
pub fn spearman(x: &[f64], y: &[f64]) -> f64 {
    let (rx, ry) = (ranks(x), ranks(y));
    let n = x.len() as f64;
    let (mx, my) = (rx.iter().sum::<f64>() / n, ry.iter().sum::<f64>() / n);
    let cov: f64 = rx.iter().zip(&ry).map(|(a, b)| (a - mx) * (b - my)).sum();
    let vx: f64 = rx.iter().map(|a| (a - mx).powi(2)).sum();
    let vy: f64 = ry.iter().map(|b| (b - my).powi(2)).sum();
    cov / (vx * vy).sqrt().max(f64::MIN_POSITIVE)
}

/// Spearman of severity against value over every (item, severity), where
/// `by_severity[k]` holds every item's value at severity `k` (0 = clean).
pub fn pooled_spearman(by_severity: &[Vec<f64>]) -> f64 {
    let (severity, values): (Vec<f64>, Vec<f64>) = by_severity
        .iter()
        .enumerate()
        .flat_map(|(k, level)| level.iter().map(move |&v| (k as f64, v)))
        .unzip();
    spearman(&severity, &values)
}

/// Mean over items of the Spearman correlation of severity against value,
/// where `by_severity[k][i]` is item `i`'s value at severity `k` (0 =
/// clean): how reliably a worse copy of the same face ranks lower, apart
/// from how faces differ from each other, which the pooled figure also
/// counts. An item whose values are all equal counts 0.
pub fn mean_within_item_spearman(by_severity: &[Vec<f64>]) -> f64 {
    let items = by_severity.first().map_or(0, Vec::len);
    let severity: Vec<f64> = (0..by_severity.len()).map(|k| k as f64).collect();
    let total: f64 = (0..items)
        .map(|i| {
            let values: Vec<f64> = by_severity.iter().map(|level| level[i]).collect();
            spearman(&severity, &values)
        })
        .sum();
    total / items.max(1) as f64
}

/// One point of an EDC curve.
#[derive(Debug, Clone, Serialize)]
pub struct EdcPoint {
    /// Share of pairs discarded, in percent.
    pub discard_percent: u32,
    /// FNMR at the fixed threshold, discarding by the model's norm.
    pub fnmr_norm: f64,
    /// The same, discarding at random (mean of 100 orders).
    pub fnmr_random: f64,
    /// The same, discarding by the blur baseline.
    pub fnmr_blur: f64,
}

/// The EDC report.
#[derive(Debug, Clone, Serialize)]
pub struct Edc {
    /// Cosine threshold at FMR 1e-2 over all pairs.
    pub threshold: f32,
    /// FNMR before discarding.
    pub fnmr: f64,
    /// The curve, 0..50 % in steps of 5.
    pub points: Vec<EdcPoint>,
}

/// The threshold at which `fmr` of the different-person pairs score at or above it.
pub fn threshold_at_fmr(pairs: &[Scored], fmr: f64) -> f32 {
    let mut impostors: Vec<f32> = pairs.iter().filter(|p| !p.same).map(|p| p.score).collect();
    impostors.sort_by(|a, b| b.total_cmp(a));
    let k = ((fmr * impostors.len() as f64).floor() as usize).min(impostors.len().saturating_sub(1));
    // Just above the (k+1)-th highest impostor score: exactly k impostors accepted.
    impostors.get(k).map_or(0.0, |s| s + 1e-6)
}

/// FNMR of the pairs kept after discarding the `percent` lowest by `quality`.
fn fnmr_after(pairs: &[Scored], order: &[usize], percent: u32, threshold: f32) -> f64 {
    let drop = pairs.len() * percent as usize / 100;
    let kept = &order[drop..];
    let genuine: Vec<&Scored> = kept.iter().map(|&i| &pairs[i]).filter(|p| p.same).collect();
    genuine.iter().filter(|p| p.score < threshold).count() as f64 / genuine.len().max(1) as f64
}

fn order_by(quality: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..quality.len()).collect();
    order.sort_by(|&a, &b| quality[a].total_cmp(&quality[b]));
    order
}

/// The EDC of pairs with per-pair qualities by norm and by the blur baseline.
pub fn edc(pairs: &[Scored], norm_quality: &[f64], blur_quality: &[f64]) -> Edc {
    let threshold = threshold_at_fmr(pairs, 1e-2);
    let (by_norm, by_blur) = (order_by(norm_quality), order_by(blur_quality));
    let mut rng = StdRng::seed_from_u64(1);
    let random_orders: Vec<Vec<usize>> = (0..100)
        .map(|_| {
            let mut o: Vec<usize> = (0..pairs.len()).collect();
            o.shuffle(&mut rng);
            o
        })
        .collect();
    let points = (0..=10)
        .map(|k| {
            let p = 5 * k;
            EdcPoint {
                discard_percent: p,
                fnmr_norm: fnmr_after(pairs, &by_norm, p, threshold),
                fnmr_random: random_orders
                    .iter()
                    .map(|o| fnmr_after(pairs, o, p, threshold))
                    .sum::<f64>()
                    / 100.0,
                fnmr_blur: fnmr_after(pairs, &by_blur, p, threshold),
            }
        })
        .collect();
    Edc {
        threshold,
        fnmr: fnmr_after(pairs, &by_norm, 0, threshold),
        points,
    }
}

/// Variance of the 4-neighbour Laplacian of an image's luma: the blur baseline.
pub fn laplacian_variance(image: &image::RgbImage) -> f64 {
    let gray = image::imageops::grayscale(image);
    let (w, h) = gray.dimensions();
    let at = |x: u32, y: u32| f64::from(gray.get_pixel(x, y)[0]);
    let values: Vec<f64> = (1..h.saturating_sub(1))
        .flat_map(|y| (1..w.saturating_sub(1)).map(move |x| (x, y)))
        .map(|(x, y)| at(x - 1, y) + at(x + 1, y) + at(x, y - 1) + at(x, y + 1) - 4.0 * at(x, y))
        .collect();
    let mean = values.iter().sum::<f64>() / values.len().max(1) as f64;
    values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / values.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spearman_by_hand() {
        assert!((spearman(&[1.0, 2.0, 3.0, 4.0], &[10.0, 20.0, 30.0, 40.0]) - 1.0).abs() < 1e-12);
        assert!((spearman(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
        assert_eq!(ranks(&[5.0, 1.0, 5.0, 3.0]), [3.5, 1.0, 3.5, 2.0]);
        // Ranks x (1,2,3,4), y (1,3,2,4): 1 - 6·2 / (4·15) = 0.8.
        assert!((spearman(&[1.0, 2.0, 3.0, 4.0], &[1.0, 3.0, 2.0, 4.0]) - 0.8).abs() < 1e-12);
    }

    #[test]
    fn within_item_spearman_ignores_how_items_differ() {
        // Each item falls with severity, but the items' levels overlap, so
        // the pooled figure is weak and the within-item one is -1.
        let by_severity = vec![vec![10.0, 20.0], vec![9.0, 19.0], vec![8.0, 18.0]];
        assert!((mean_within_item_spearman(&by_severity) + 1.0).abs() < 1e-12);
        // Pooled ranks by hand: severity deviations -2,-2,0,0,2,2 against
        // value-rank deviations -0.5,2.5,-1.5,1.5,-2.5,0.5.
        assert!((pooled_spearman(&by_severity) + 8.0 / 280f64.sqrt()).abs() < 1e-12);
        // One item rises, one falls, one stays: the mean is 0.
        let mixed = vec![vec![1.0, 2.0, 5.0], vec![2.0, 1.0, 5.0]];
        assert!(mean_within_item_spearman(&mixed).abs() < 1e-12);
    }

    #[test]
    fn edc_by_hand() {
        let p = |same, score| Scored { fold: 0, same, score };
        // 100 impostors at 0.0..0.99; FMR 1e-2 accepts exactly one (0.99).
        let mut pairs: Vec<Scored> = (0..100).map(|i| p(false, i as f32 / 100.0)).collect();
        // 10 genuine pairs: two below the threshold, and they have the lowest quality.
        pairs.extend((0..10).map(|i| p(true, if i < 2 { 0.5 } else { 0.995 })));
        let mut quality: Vec<f64> = vec![10.0; 100];
        quality.extend((0..10).map(|i| if i < 2 { 0.0 } else { 5.0 }));
        let blur = vec![1.0; 110];
        let e = edc(&pairs, &quality, &blur);
        assert!(e.threshold > 0.98 && e.threshold < 0.99, "{}", e.threshold);
        assert!((e.fnmr - 0.2).abs() < 1e-12);
        // Discarding 5 % (5 pairs) by quality removes both failing genuine pairs first.
        assert_eq!(e.points[1].fnmr_norm, 0.0);
        assert!(e.points[1].fnmr_random > 0.1);
    }

    #[test]
    fn blur_lowers_the_laplacian_variance() {
        let img = image::RgbImage::from_fn(32, 32, |x, y| image::Rgb([((x * 37 + y * 91) % 256) as u8; 3]));
        assert!(laplacian_variance(&image::imageops::blur(&img, 2.0)) < laplacian_variance(&img) / 4.0);
    }
}
