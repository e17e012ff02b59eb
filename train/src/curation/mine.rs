//! `normgate-train mine`: the hard examples of a labelled set under a
//! classifier head (seed §4): each image's A-Softmax loss against the head
//! (core `margin`), the hardest images (core `hem::hardest`), and per image
//! the classes that still beat its own after an additive angular margin
//! (core `hem::hard_negatives`), tallied into the set's most confused class pairs.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{bail, Context, Result};
use normgate_core::hem::{hard_negatives, hardest};
use normgate_core::margin::{weight_norms, ASoftmax, Batch};
use rayon::prelude::*;
use serde::Serialize;

use crate::curation::dedup::Matrix;
use crate::curation::features::SetFeatures;
use crate::curation::frozen_heads::cosines;
use crate::data::datasets::LabelledSet;

/// How images are scored.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MineConfig {
    /// The head's A-Softmax layer (its margin and λ).
    pub layer: ASoftmax,
    /// Additive angular margin of the hard-negative rule, radians.
    pub negative_margin: f32,
    /// Hardest images to list.
    pub top: usize,
}

/// A pair of classes and how many images of the first have the second as a hard negative.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Confusion {
    /// The images' class.
    pub class: String,
    /// The class that beats it.
    pub negative: String,
    /// Images of `class` with `negative` among their hard negatives.
    pub images: usize,
}

/// What `mine` found.
#[derive(Debug, Clone, Serialize)]
pub struct MineReport {
    /// Images in the set.
    pub images: usize,
    /// Images without a feature (not scored).
    pub unmeasured: usize,
    /// Mean A-Softmax loss of the measured images.
    pub mean_loss: f64,
    /// Images listed in hard.tsv.
    pub hard: usize,
    /// Images with at least one hard-negative class.
    pub with_hard_negatives: usize,
    /// The ten most frequent class pairs.
    pub top_confusions: Vec<Confusion>,
    /// Against a list's true classes, when it has them.
    pub truth: Option<MinedTruth>,
}

/// How many mislabelled images the hardest list holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MinedTruth {
    /// Measured images whose label is wrong.
    pub wrong: usize,
    /// Of the listed hardest images, those whose label is wrong.
    pub wrong_listed: usize,
}

/// The head row of each of the set's classes, by name.
fn rows_for(set: &LabelledSet, head: &Matrix) -> Result<Vec<usize>> {
    let index: BTreeMap<&str, usize> = head.names.iter().enumerate().map(|(i, n)| (n.as_str(), i)).collect();
    set.classes
        .iter()
        .map(|c| {
            index.get(c.as_str()).copied().with_context(|| {
                format!(
                    "class {c:?} of the set is not a class of the head ({} classes, e.g. {:?}); \
                     give the head's class names (--names) that match the set's folders",
                    head.rows(),
                    head.names.first().map(String::as_str).unwrap_or_default()
                )
            })
        })
        .collect()
}

/// Scores every measured image against `head` and writes `hard.tsv` (the
/// hardest images) and `confusions.tsv` (class pairs) into `out`.
pub fn mine(
    set: &LabelledSet,
    features: &SetFeatures,
    head: &Matrix,
    config: &MineConfig,
    out: &Path,
) -> Result<MineReport> {
    if head.dim != features.dim {
        bail!(
            "the head's rows have {} values but the embedder's features {}; use the head trained on this embedder",
            head.dim,
            features.dim
        );
    }
    let rows = rows_for(set, head)?;
    let labels: Vec<u32> = features.labels(set).iter().map(|&l| rows[l as usize] as u32).collect();
    let classes = head.rows();
    let mut norms = vec![0.0; classes];
    weight_norms(&head.data, head.dim, &mut norms)?;
    let dim = features.dim;
    let losses: Vec<f32> = features
        .values
        .par_chunks(64 * dim)
        .zip(labels.par_chunks(64))
        .map(|(x, y)| {
            let batch = Batch {
                x,
                weights: &head.data,
                weight_norms: &norms,
                labels: y,
                dim,
            };
            let (mut logits, mut losses) = (vec![0.0; y.len() * classes], vec![0.0; y.len()]);
            config.layer.forward(&batch, &mut logits, &mut losses)?;
            Ok(losses)
        })
        .collect::<std::result::Result<Vec<_>, normgate_core::Error>>()?
        .concat();
    let cos = cosines(&features.values, &head.data, dim);
    let mut negatives: Vec<Vec<usize>> = Vec::with_capacity(labels.len());
    let mut mask = vec![false; classes];
    for (row, &label) in cos.chunks_exact(classes).zip(&labels) {
        hard_negatives(row, label as usize, config.negative_margin, &mut mask)?;
        negatives.push((0..classes).filter(|&j| mask[j]).collect());
    }
    let mut order = vec![0; config.top.min(losses.len())];
    let listed = hardest(&losses, &mut order);
    let mut tsv = String::from("rank\tpath\tclass\tloss\ttarget_cosine\thard_negatives\n");
    for (rank, &k) in order[..listed].iter().enumerate() {
        let names: Vec<&str> = negatives[k].iter().map(|&j| head.names[j].as_str()).collect();
        writeln!(
            tsv,
            "{}\t{}\t{}\t{:.4}\t{:.4}\t{}",
            rank + 1,
            set.images[features.rows[k]].path.display(),
            head.names[labels[k] as usize],
            losses[k],
            cos[k * classes + labels[k] as usize],
            names.join(",")
        )?;
    }
    let truth = set.truth.as_ref().map(|truth| {
        let wrong = |k: usize| {
            let image = &set.images[features.rows[k]];
            truth[features.rows[k]] != set.classes[image.label as usize]
        };
        MinedTruth {
            wrong: (0..labels.len()).filter(|&k| wrong(k)).count(),
            wrong_listed: order[..listed].iter().filter(|&&k| wrong(k)).count(),
        }
    });
    let mut pairs: BTreeMap<(usize, usize), usize> = BTreeMap::new();
    for (negs, &label) in negatives.iter().zip(&labels) {
        for &j in negs {
            *pairs.entry((label as usize, j)).or_default() += 1;
        }
    }
    let mut confusions: Vec<Confusion> = pairs
        .into_iter()
        .map(|((c, j), images)| Confusion {
            class: head.names[c].clone(),
            negative: head.names[j].clone(),
            images,
        })
        .collect();
    confusions.sort_by(|a, b| {
        b.images
            .cmp(&a.images)
            .then(a.class.cmp(&b.class))
            .then(a.negative.cmp(&b.negative))
    });
    let mut pairs_tsv = String::from("class\thard_negative\timages\n");
    for c in &confusions {
        writeln!(pairs_tsv, "{}\t{}\t{}", c.class, c.negative, c.images)?;
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    for (name, text) in [("hard.tsv", tsv), ("confusions.tsv", pairs_tsv)] {
        let file = out.join(name);
        std::fs::write(&file, text).with_context(|| format!("cannot write {}", file.display()))?;
    }
    Ok(MineReport {
        images: set.images.len(),
        unmeasured: features.failed.len(),
        mean_loss: losses.iter().map(|&l| f64::from(l)).sum::<f64>() / losses.len() as f64,
        hard: listed,
        with_hard_negatives: negatives.iter().filter(|n| !n.is_empty()).count(),
        top_confusions: confusions.into_iter().take(10).collect(),
        truth,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::datasets::Labelled;
    use normgate_core::margin::Margin;
    use std::path::PathBuf;

    fn set() -> (LabelledSet, SetFeatures) {
        let set = LabelledSet {
            images: [0, 0, 1, 1]
                .iter()
                .enumerate()
                .map(|(i, &label)| Labelled {
                    path: PathBuf::from(format!("{i}.png")),
                    label,
                })
                .collect(),
            classes: vec!["ann".into(), "bob".into()],
            truth: Some(["ann", "bob", "bob", "bob"].map(String::from).to_vec()),
        };
        let paths: Vec<PathBuf> = set.images.iter().map(|i| i.path.clone()).collect();
        // Image 1 (ann) points at bob's row: the hardest, with bob as a hard negative.
        let features = SetFeatures::collect(
            &paths,
            vec![
                Ok(vec![3.0, 0.2, 0.0]),
                Ok(vec![0.3, 3.0, 0.0]),
                Ok(vec![0.1, 3.0, 0.0]),
                Ok(vec![0.0, 3.0, 0.3]),
            ],
        )
        .unwrap();
        (set, features)
    }

    fn config() -> MineConfig {
        MineConfig {
            layer: ASoftmax {
                margin: Margin::new(4).unwrap(),
                lambda: 5.0,
            },
            negative_margin: 0.35,
            top: 2,
        }
    }

    #[test]
    fn the_misplaced_image_is_the_hardest_and_its_confusion_is_counted() {
        let (set, features) = set();
        // The head's rows are in another order than the set's classes: matched by name.
        let head = Matrix {
            data: vec![0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0],
            dim: 3,
            names: vec!["bob".into(), "ann".into(), "cyd".into()],
        };
        let out = std::env::temp_dir().join(format!("normgate-mine-{}", std::process::id()));
        let report = mine(&set, &features, &head, &config(), &out).unwrap();
        assert_eq!(report.hard, 2);
        // Image 1 is truly bob's: the one wrong label, and it is listed.
        assert_eq!(
            report.truth,
            Some(MinedTruth {
                wrong: 1,
                wrong_listed: 1
            })
        );
        assert_eq!(
            report.top_confusions[0],
            Confusion {
                class: "ann".into(),
                negative: "bob".into(),
                images: 1
            }
        );
        let hard = std::fs::read_to_string(out.join("hard.tsv")).unwrap();
        let first: Vec<&str> = hard.lines().nth(1).unwrap().split('\t').collect();
        // Its own row is 84° away, so with the 20° margin even the unrelated
        // cyd (90°) beats it.
        assert_eq!(
            [first[0], first[1], first[2], first[5]],
            ["1", "1.png", "ann", "bob,cyd"]
        );
        std::fs::remove_dir_all(out).unwrap();
    }

    #[test]
    fn a_head_without_the_sets_classes_or_of_another_width_is_refused() {
        let (set, features) = set();
        let out = std::env::temp_dir().join("normgate-mine-unused");
        let other = Matrix {
            data: vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
            dim: 3,
            names: vec!["ann".into(), "cyd".into()],
        };
        let e = mine(&set, &features, &other, &config(), &out).unwrap_err();
        assert!(format!("{e:#}").contains("\"bob\""), "{e:#}");
        let narrow = Matrix {
            data: vec![1.0, 0.0, 0.0, 1.0],
            dim: 2,
            names: vec!["ann".into(), "bob".into()],
        };
        assert!(mine(&set, &features, &narrow, &config(), &out).is_err());
    }
}
