//! Wrong-label detection (seed §5, which leaves the method open).
//!
//! A mislabelled sample sits far from its own class centre and near another
//! one. Centres are means of L2-normalised features; a sample's own centre is
//! taken without the sample itself (leave one out), so small classes do not
//! vouch for their own outliers. A flagged sample whose nearest other centre is
//! close enough is suggested for relabelling, the rest for removal.

use alloc::vec;
use alloc::vec::Vec;

use crate::error::{check_len, rows_of};
use crate::norm::{dot, l2_norm};
use crate::{Error, Result};

/// Per-class sums of normalised features, from which centres are derived.
#[derive(Debug, Clone, PartialEq)]
pub struct Centres {
    dim: usize,
    sums: Vec<f32>,
    counts: Vec<u32>,
}

/// Normalises a feature into `out`; false for a zero or non-finite feature.
fn unit(feature: &[f32], out: &mut [f32]) -> bool {
    let n = l2_norm(feature);
    if !(n > 0.0 && n.is_finite()) {
        return false;
    }
    out.iter_mut().zip(feature).for_each(|(o, v)| *o = v / n);
    true
}

impl Centres {
    /// Accumulates `features` (`n x dim`) by their `labels` into `classes` centres.
    /// Zero or non-finite features are an error: they have no direction.
    pub fn new(features: &[f32], labels: &[u32], classes: usize, dim: usize) -> Result<Self> {
        let n = rows_of("features", features.len(), dim)?;
        check_len("labels", n, labels.len())?;
        let mut sums = vec![0.0; classes * dim];
        let mut counts = vec![0; classes];
        let mut u = vec![0.0; dim];
        for (f, &label) in features.chunks_exact(dim).zip(labels) {
            let l = label as usize;
            if l >= classes {
                return Err(Error::OutOfRange {
                    what: "label",
                    index: l,
                    count: classes,
                });
            }
            if !unit(f, &mut u) {
                return Err(Error::NonFinite("features (or a zero feature)"));
            }
            sums[l * dim..][..dim].iter_mut().zip(&u).for_each(|(s, v)| *s += v);
            counts[l] += 1;
        }
        Ok(Self { dim, sums, counts })
    }

    /// Number of classes.
    pub fn classes(&self) -> usize {
        self.counts.len()
    }

    /// Samples per class.
    pub fn counts(&self) -> &[u32] {
        &self.counts
    }

    /// The normalised centre of a class (zero for an empty class).
    pub fn centre(&self, class: usize) -> Vec<f32> {
        let mut c = self.sums[class * self.dim..][..self.dim].to_vec();
        crate::norm::normalize(&mut c);
        c
    }
}

/// What to do with a sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// It fits its own class: nothing to do.
    Keep,
    /// Its nearest other class fits well: give it that label.
    Relabel,
    /// It fits no class well: drop it.
    Remove,
}

/// One sample judged against the class centres.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Review {
    /// Index of the sample.
    pub sample: usize,
    /// Its current label.
    pub label: u32,
    /// Cosine to its own class centre, without itself.
    pub own_cosine: f32,
    /// The closest other class.
    pub nearest_class: u32,
    /// Cosine to that class's centre.
    pub nearest_cosine: f32,
    /// `nearest_cosine - own_cosine`; larger is more surely wrong.
    pub score: f32,
    /// The suggestion.
    pub action: Action,
}

/// When a sample is flagged and what is suggested.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CleanConfig {
    /// Flag samples whose own-centre cosine is below this (and below the nearest other's).
    pub own_below: f32,
    /// Suggest relabelling when the nearest other centre's cosine is at least this.
    pub relabel_above: f32,
}

impl Default for CleanConfig {
    fn default() -> Self {
        Self {
            own_below: 0.3,
            relabel_above: 0.5,
        }
    }
}

/// Judges every sample against the centres, in sample order. Samples that
/// are alone in their class (no centre without them) or have no other class
/// to compare with cannot be judged and are left out.
pub fn reviews(features: &[f32], labels: &[u32], centres: &Centres, config: &CleanConfig) -> Result<Vec<Review>> {
    let dim = centres.dim;
    let n = rows_of("features", features.len(), dim)?;
    check_len("labels", n, labels.len())?;
    let sum_norms: Vec<f32> = centres.sums.chunks_exact(dim).map(l2_norm).collect();
    let mut u = vec![0.0; dim];
    let mut out = Vec::new();
    for (sample, (f, &label)) in features.chunks_exact(dim).zip(labels).enumerate() {
        let own = label as usize;
        if own >= centres.classes() {
            return Err(Error::OutOfRange {
                what: "label",
                index: own,
                count: centres.classes(),
            });
        }
        if !unit(f, &mut u) {
            return Err(Error::NonFinite("features (or a zero feature)"));
        }
        if centres.counts[own] < 2 {
            continue;
        }
        // Leave one out: (S - u)·u / |S - u| with |S - u|² = |S|² - 2 S·u + 1.
        let s_dot_u = dot(&centres.sums[own * dim..][..dim], &u);
        let rest = libm::sqrtf((sum_norms[own] * sum_norms[own] - 2.0 * s_dot_u + 1.0).max(0.0));
        let own_cosine = if rest > 1e-6 { (s_dot_u - 1.0) / rest } else { 0.0 };
        let nearest = (0..centres.classes())
            .filter(|&c| c != own && sum_norms[c] > 0.0)
            .map(|c| (c, dot(&centres.sums[c * dim..][..dim], &u) / sum_norms[c]))
            .max_by(|a, b| a.1.total_cmp(&b.1));
        let Some((nearest_class, nearest_cosine)) = nearest else {
            continue;
        };
        let action = if own_cosine >= config.own_below || nearest_cosine <= own_cosine {
            Action::Keep
        } else if nearest_cosine >= config.relabel_above {
            Action::Relabel
        } else {
            Action::Remove
        };
        out.push(Review {
            sample,
            label,
            own_cosine,
            nearest_class: nearest_class as u32,
            nearest_cosine,
            score: nearest_cosine - own_cosine,
            action,
        });
    }
    Ok(out)
}

/// The samples that look mislabelled (see [`reviews`]), most surely wrong first.
pub fn suggestions(features: &[f32], labels: &[u32], centres: &Centres, config: &CleanConfig) -> Result<Vec<Review>> {
    let mut out = reviews(features, labels, centres, config)?;
    out.retain(|r| r.action != Action::Keep);
    out.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.sample.cmp(&b.sample)));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Three classes along the axes of R^3, each with three samples; sample
    /// 3 is labelled class 0 but lies on class 1's axis; sample 9 (class 2)
    /// lies between every class.
    fn data() -> (Vec<f32>, Vec<u32>) {
        let f = vec![
            1.0, 0.05, 0.0, 2.0, 0.0, 0.1, 1.0, -0.05, 0.0, 0.0, 3.0, 0.1, // class 0 (last one wrong)
            0.1, 1.0, 0.0, 0.0, 1.0, 0.1, -0.1, 2.0, 0.0, // class 1
            0.0, 0.1, 1.0, 0.1, 0.0, 1.0, -1.0, 0.0, 0.0, // class 2 (last one odd)
        ];
        (f, vec![0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
    }

    #[test]
    fn centres_are_normalised_means() {
        let c = Centres::new(&[2.0, 0.0, 0.0, 1.0], &[0, 0], 2, 2).unwrap();
        let expected = core::f32::consts::FRAC_1_SQRT_2;
        assert!(c.centre(0).iter().all(|v| (v - expected).abs() < 1e-6));
        assert_eq!(c.centre(1), [0.0, 0.0]);
        assert_eq!(c.counts(), [2, 0]);
    }

    #[test]
    fn flags_the_planted_wrong_label_for_relabel_and_the_odd_one_for_removal() {
        let (f, l) = data();
        let c = Centres::new(&f, &l, 3, 3).unwrap();
        let s = suggestions(&f, &l, &c, &CleanConfig::default()).unwrap();
        assert_eq!(s.len(), 2, "{s:?}");
        assert_eq!((s[0].sample, s[0].nearest_class, s[0].action), (3, 1, Action::Relabel));
        assert!(s[0].own_cosine < 0.1 && s[0].nearest_cosine > 0.99);
        assert_eq!((s[1].sample, s[1].action), (9, Action::Remove));
        assert!(s[0].score > s[1].score);
    }

    #[test]
    fn leave_one_out_cosine_matches_a_recomputed_centre() {
        let (f, l) = data();
        let c = Centres::new(&f, &l, 3, 3).unwrap();
        let all = suggestions(
            &f,
            &l,
            &c,
            &CleanConfig {
                own_below: 2.0,
                relabel_above: 0.5,
            },
        )
        .unwrap();
        let s = all.iter().find(|s| s.sample == 3).unwrap();
        let others: Vec<u32> = vec![0, 0, 0];
        let rest = Centres::new(&f[..9], &others, 1, 3).unwrap();
        let expected = crate::norm::cosine(&rest.centre(0), &f[9..12]);
        assert!((s.own_cosine - expected).abs() < 1e-5);
    }

    #[test]
    fn every_sample_with_company_is_reviewed_and_only_the_flagged_are_suggested() {
        let (f, l) = data();
        let c = Centres::new(&f, &l, 3, 3).unwrap();
        let all = reviews(&f, &l, &c, &CleanConfig::default()).unwrap();
        assert_eq!(
            all.iter().map(|r| r.sample).collect::<Vec<_>>(),
            (0..10).collect::<Vec<_>>()
        );
        let flagged: Vec<usize> = all
            .iter()
            .filter(|r| r.action != Action::Keep)
            .map(|r| r.sample)
            .collect();
        assert_eq!(flagged, [3, 9]);
        // A class of one cannot be judged.
        let alone = Centres::new(&f[..6], &[0, 1], 2, 3).unwrap();
        assert!(reviews(&f[..6], &[0, 1], &alone, &CleanConfig::default())
            .unwrap()
            .is_empty());
    }

    #[test]
    fn bad_input_is_rejected() {
        assert!(Centres::new(&[0.0, 0.0], &[0], 1, 2).is_err());
        assert!(Centres::new(&[1.0, 0.0], &[3], 1, 2).is_err());
        assert!(Centres::new(&[1.0, 0.0, 1.0], &[0], 1, 2).is_err());
        let c = Centres::new(&[1.0, 0.0], &[0], 1, 2).unwrap();
        assert!(suggestions(&[1.0, 0.0], &[1], &c, &CleanConfig::default()).is_err());
    }

    proptest! {
        #[test]
        fn flagged_samples_fit_another_class_better(
            f in prop::collection::vec(-1.0f32..1.0, 4 * 30),
            l in prop::collection::vec(0u32..4, 30),
        ) {
            prop_assume!(f.chunks(4).all(|r| l2_norm(r) > 1e-3));
            let c = Centres::new(&f, &l, 4, 4).unwrap();
            let cfg = CleanConfig::default();
            for s in suggestions(&f, &l, &c, &cfg).unwrap() {
                prop_assert!(s.own_cosine < cfg.own_below);
                prop_assert!(s.nearest_cosine > s.own_cosine);
                prop_assert!(s.nearest_class != s.label);
                prop_assert_eq!(s.action == Action::Relabel, s.nearest_cosine >= cfg.relabel_above);
            }
        }
    }
}
