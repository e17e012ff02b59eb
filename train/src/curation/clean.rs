//! `normgate-train clean`: the wrong-example report of a labelled set (seed
//! §5) from the device's features: per image its leave-one-out own-centre
//! cosine, nearest other class, score and suggestion (core `clean`); and,
//! for a list whose labels were corrupted on purpose, how well the flags
//! find the corrupted images.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use normgate_core::clean::{reviews, Action, Centres, CleanConfig};
use serde::Serialize;

use crate::curation::features::SetFeatures;
use crate::data::datasets::LabelledSet;

/// How the flags compare with the true labels.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Agreement {
    /// Measured images whose label is wrong.
    pub wrong: usize,
    /// Flagged images whose label is wrong.
    pub caught: usize,
    /// caught / flagged.
    pub precision: f64,
    /// caught / wrong.
    pub recall: f64,
    /// Harmonic mean of the two.
    pub f1: f64,
    /// Wrong images flagged for relabelling to their true class.
    pub relabelled_right: usize,
}

impl Agreement {
    /// Scores `flagged` against `wrong` (one flag per measured image).
    pub fn score(flagged: &[bool], wrong: &[bool], relabelled_right: usize) -> Self {
        let caught = flagged.iter().zip(wrong).filter(|(f, w)| **f && **w).count();
        let (n_flagged, n_wrong) = (
            flagged.iter().filter(|f| **f).count(),
            wrong.iter().filter(|w| **w).count(),
        );
        let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        let (precision, recall) = (ratio(caught, n_flagged), ratio(caught, n_wrong));
        let f1 = if precision + recall > 0.0 {
            2.0 * precision * recall / (precision + recall)
        } else {
            0.0
        };
        Self {
            wrong: n_wrong,
            caught,
            precision,
            recall,
            f1,
            relabelled_right,
        }
    }
}

/// What `clean` found.
#[derive(Debug, Clone, Serialize)]
pub struct CleanReport {
    /// Images in the set.
    pub images: usize,
    /// Images without a feature (listed in report.tsv as `unmeasured`).
    pub unmeasured: usize,
    /// Images alone in their class among the measured (cannot be judged).
    pub alone: usize,
    /// Images flagged (remove + relabel).
    pub flagged: usize,
    /// Flagged for removal.
    pub remove: usize,
    /// Flagged for relabelling.
    pub relabel: usize,
    /// The thresholds used.
    pub own_below: f32,
    /// See [`CleanConfig::relabel_above`].
    pub relabel_above: f32,
    /// Against the list's true labels, when it has them.
    pub truth: Option<Agreement>,
}

/// Judges every measured image and writes `report.tsv` into `out` (flagged
/// images first, most surely wrong first; then kept, alone, unmeasured).
pub fn clean(set: &LabelledSet, features: &SetFeatures, config: &CleanConfig, out: &Path) -> Result<CleanReport> {
    let labels = features.labels(set);
    let centres = Centres::new(&features.values, &labels, set.classes.len(), features.dim)?;
    let mut judged = reviews(&features.values, &labels, &centres, config)?;
    let flagged_rows: Vec<bool> = {
        let mut f = vec![false; labels.len()];
        judged
            .iter()
            .filter(|r| r.action != Action::Keep)
            .for_each(|r| f[r.sample] = true);
        f
    };
    let truth = set.truth.as_ref().map(|truth| {
        let true_name = |row: usize| truth[features.rows[row]].as_str();
        let wrong: Vec<bool> = (0..labels.len())
            .map(|row| true_name(row) != set.classes[labels[row] as usize])
            .collect();
        let relabelled_right = judged
            .iter()
            .filter(|r| r.action == Action::Relabel && wrong[r.sample])
            .filter(|r| set.classes[r.nearest_class as usize] == true_name(r.sample))
            .count();
        Agreement::score(&flagged_rows, &wrong, relabelled_right)
    });
    judged.sort_by(|a, b| {
        (a.action == Action::Keep)
            .cmp(&(b.action == Action::Keep))
            .then(b.score.total_cmp(&a.score))
            .then(a.sample.cmp(&b.sample))
    });
    let mut tsv = String::from("path\tclass\town_cosine\tnearest_class\tnearest_cosine\tscore\tsuggestion\n");
    let mut seen = vec![false; labels.len()];
    for r in &judged {
        seen[r.sample] = true;
        let suggestion = match r.action {
            Action::Keep => "keep",
            Action::Relabel => "relabel",
            Action::Remove => "remove",
        };
        writeln!(
            tsv,
            "{}\t{}\t{:.4}\t{}\t{:.4}\t{:.4}\t{suggestion}",
            set.images[features.rows[r.sample]].path.display(),
            set.classes[r.label as usize],
            r.own_cosine,
            set.classes[r.nearest_class as usize],
            r.nearest_cosine,
            r.score
        )?;
    }
    let alone: Vec<usize> = (0..labels.len()).filter(|&row| !seen[row]).collect();
    for &row in &alone {
        let image = &set.images[features.rows[row]];
        writeln!(
            tsv,
            "{}\t{}\t\t\t\t\talone",
            image.path.display(),
            set.classes[image.label as usize]
        )?;
    }
    for (path, why) in &features.failed {
        writeln!(tsv, "{}\t\t\t\t\t\tunmeasured: {why}", path.display())?;
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let file = out.join("report.tsv");
    std::fs::write(&file, tsv).with_context(|| format!("cannot write {}", file.display()))?;
    let count = |a: Action| judged.iter().filter(|r| r.action == a).count();
    Ok(CleanReport {
        images: set.images.len(),
        unmeasured: features.failed.len(),
        alone: alone.len(),
        flagged: count(Action::Remove) + count(Action::Relabel),
        remove: count(Action::Remove),
        relabel: count(Action::Relabel),
        own_below: config.own_below,
        relabel_above: config.relabel_above,
        truth,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::datasets::Labelled;
    use std::path::PathBuf;

    #[test]
    fn agreement_counts_the_overlap() {
        let a = Agreement::score(&[true, true, false, false], &[true, false, true, false], 1);
        assert_eq!((a.wrong, a.caught), (2, 1));
        assert_eq!((a.precision, a.recall, a.f1), (0.5, 0.5, 0.5));
        let none = Agreement::score(&[false, false], &[false, false], 0);
        assert_eq!((none.precision, none.recall, none.f1), (0.0, 0.0, 0.0));
    }

    /// Two classes on two axes; image 2 is labelled `a` but lies on `b`'s
    /// axis and truly is `b`; image 5 failed to give a feature.
    #[test]
    fn the_report_flags_the_planted_error_and_scores_it_against_the_truth() {
        let labels = [0, 0, 0, 1, 1, 2];
        let set = LabelledSet {
            images: (0..6)
                .map(|i| Labelled {
                    path: PathBuf::from(format!("{i}.png")),
                    label: labels[i],
                })
                .collect(),
            classes: ["a", "b", "c"].map(String::from).to_vec(),
            truth: Some(["a", "a", "b", "b", "b", "c"].map(String::from).to_vec()),
        };
        let paths: Vec<PathBuf> = set.images.iter().map(|i| i.path.clone()).collect();
        let features = SetFeatures::collect(
            &paths,
            vec![
                Ok(vec![1.0, 0.1]),
                Ok(vec![1.0, -0.1]),
                Ok(vec![0.05, 1.0]),
                Ok(vec![0.1, 1.0]),
                Ok(vec![-0.1, 1.0]),
                Err("no face found".into()),
            ],
        )
        .unwrap();
        let out = std::env::temp_dir().join(format!("normgate-clean-{}", std::process::id()));
        let report = clean(&set, &features, &CleanConfig::default(), &out).unwrap();
        assert_eq!((report.flagged, report.relabel, report.unmeasured), (1, 1, 1));
        let truth = report.truth.unwrap();
        assert_eq!((truth.wrong, truth.caught, truth.relabelled_right), (1, 1, 1));
        assert_eq!(truth.f1, 1.0);
        let tsv = std::fs::read_to_string(out.join("report.tsv")).unwrap();
        let lines: Vec<&str> = tsv.lines().collect();
        assert_eq!(lines.len(), 1 + 6);
        let first: Vec<&str> = lines[1].split('\t').collect();
        assert_eq!([first[0], first[1], first[3], first[6]], ["2.png", "a", "b", "relabel"]);
        // Own centre (1, 0) without the image itself; b's centre (0, 1).
        let own: f32 = first[2].parse().unwrap();
        assert!((own - 0.05 / (0.05f32 * 0.05 + 1.0).sqrt()).abs() < 1e-3, "{own}");
        assert!(lines[6].starts_with("5.png") && lines[6].ends_with("unmeasured: no face found"));
        std::fs::remove_dir_all(out).unwrap();
    }
}
