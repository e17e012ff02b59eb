//! LFW verification (DESIGN.md): cosine similarity of each pair, 10 folds;
//! for each fold the threshold that maximises accuracy on the other nine is
//! applied to it. Reports the mean and standard deviation (population, over
//! folds) of the fold accuracies, and the ROC AUC over all pairs.

use serde::Serialize;

/// One scored pair.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    /// Fold of the pair.
    pub fold: usize,
    /// Same person?
    pub same: bool,
    /// Cosine similarity.
    pub score: f32,
}

/// The verification figures.
#[derive(Debug, Clone, Serialize)]
pub struct LfwReport {
    /// Mean fold accuracy.
    pub accuracy: f64,
    /// Standard deviation of the fold accuracies.
    pub std: f64,
    /// Number of pairs.
    pub pairs: usize,
    /// Area under the ROC curve over all pairs.
    pub auc: f64,
    /// The threshold chosen on all pairs (for reference).
    pub threshold: f32,
}

fn accuracy(pairs: &[&Scored], threshold: f32) -> f64 {
    let right = pairs.iter().filter(|p| (p.score >= threshold) == p.same).count();
    right as f64 / pairs.len().max(1) as f64
}

/// The threshold with the best accuracy on `pairs`: one between every two
/// neighbouring scores, and below and above all of them.
pub fn best_threshold(pairs: &[&Scored]) -> f32 {
    let mut scores: Vec<f32> = pairs.iter().map(|p| p.score).collect();
    scores.sort_by(f32::total_cmp);
    let mut candidates = vec![scores.first().map_or(0.0, |s| s - 1e-3)];
    candidates.extend(scores.windows(2).map(|w| (w[0] + w[1]) / 2.0));
    candidates.push(scores.last().map_or(0.0, |s| s + 1e-3));
    let mut best = (f64::MIN, 0.0f32);
    for t in candidates {
        let a = accuracy(pairs, t);
        if a > best.0 {
            best = (a, t);
        }
    }
    best.1
}

/// Area under the ROC curve: the chance that a random same pair outscores a
/// random different pair (ties count half).
pub fn auc(pairs: &[Scored]) -> f64 {
    let mut sorted: Vec<&Scored> = pairs.iter().collect();
    sorted.sort_by(|a, b| a.score.total_cmp(&b.score));
    let (mut negatives_below, mut total) = (0.0f64, 0.0f64);
    let mut i = 0;
    while i < sorted.len() {
        let mut j = i;
        while j < sorted.len() && sorted[j].score == sorted[i].score {
            j += 1;
        }
        let (pos, neg) = sorted[i..j]
            .iter()
            .fold((0.0, 0.0), |(p, n), s| if s.same { (p + 1.0, n) } else { (p, n + 1.0) });
        total += pos * (negatives_below + neg / 2.0);
        negatives_below += neg;
        i = j;
    }
    let positives = pairs.iter().filter(|p| p.same).count() as f64;
    let negatives = pairs.len() as f64 - positives;
    total / (positives * negatives).max(1.0)
}

/// The 10-fold protocol over scored pairs.
pub fn lfw_report(pairs: &[Scored]) -> LfwReport {
    let folds = pairs.iter().map(|p| p.fold + 1).max().unwrap_or(0);
    let accuracies: Vec<f64> = (0..folds)
        .map(|k| {
            let train: Vec<&Scored> = pairs.iter().filter(|p| p.fold != k).collect();
            let test: Vec<&Scored> = pairs.iter().filter(|p| p.fold == k).collect();
            accuracy(&test, best_threshold(&train))
        })
        .collect();
    let mean = accuracies.iter().sum::<f64>() / folds.max(1) as f64;
    let var = accuracies.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / folds.max(1) as f64;
    let all: Vec<&Scored> = pairs.iter().collect();
    LfwReport {
        accuracy: mean,
        std: var.sqrt(),
        pairs: pairs.len(),
        auc: auc(pairs),
        threshold: best_threshold(&all),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(fold: usize, same: bool, score: f32) -> Scored {
        Scored { fold, same, score }
    }

    #[test]
    fn separable_scores_give_full_accuracy_and_auc() {
        let pairs: Vec<Scored> = (0..10)
            .flat_map(|k| {
                [
                    pair(k, true, 0.8),
                    pair(k, true, 0.6),
                    pair(k, false, 0.2),
                    pair(k, false, 0.1),
                ]
            })
            .collect();
        let r = lfw_report(&pairs);
        assert_eq!((r.accuracy, r.std, r.auc, r.pairs), (1.0, 0.0, 1.0, 40));
        assert!(r.threshold > 0.2 && r.threshold < 0.6);
    }

    #[test]
    fn the_threshold_comes_from_the_other_folds() {
        // Folds 0-8 separate at 0.5; fold 9's same pair scores 0.45 and fails the learned threshold.
        let mut pairs: Vec<Scored> = (0..9).flat_map(|k| [pair(k, true, 0.7), pair(k, false, 0.3)]).collect();
        pairs.extend([pair(9, true, 0.45), pair(9, false, 0.3)]);
        let r = lfw_report(&pairs);
        assert!((r.accuracy - 0.95).abs() < 1e-12, "{r:?}");
        assert!((r.std - 0.15).abs() < 1e-12, "{r:?}");
    }

    #[test]
    fn auc_counts_ties_as_half() {
        let pairs = [
            pair(0, true, 0.5),
            pair(0, false, 0.5),
            pair(0, true, 0.9),
            pair(0, false, 0.1),
        ];
        // Same pairs {0.5, 0.9} against different {0.5, 0.1}: 0.5 + 1 + 1 + 1 = 3.5 of 4.
        assert!((auc(&pairs) - 0.875).abs() < 1e-12);
    }
}
