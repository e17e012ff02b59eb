//! `normgate-train corrupt-labels`: ground truth by construction for the
//! curation experiments. A labelled set's list with some labels flipped to
//! another class (for `clean`), or some classes split into two ids each (for
//! `dedup` within a head); each line keeps the image's true class, so the
//! commands can score themselves against it.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{bail, Context, Result};
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::data::datasets::LabelledSet;

/// How to corrupt the labels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Corruption {
    /// Give this share of the images a different class, drawn at random.
    Flip(f64),
    /// Split this many classes, drawn at random, into `<name>#1` and
    /// `<name>#2`, each image to either half at random.
    Split(usize),
}

/// What was corrupted.
#[derive(Debug, Clone, Serialize)]
pub struct Corrupted {
    /// Images listed.
    pub images: usize,
    /// Images whose label differs from their true class.
    pub flipped: usize,
    /// Classes split in two.
    pub split: Vec<String>,
}

/// Writes `list.tsv` (`path, label, true class`) and, for splits,
/// `truth_pairs.csv` (the two ids of each split class) into `out`.
pub fn corrupt(set: &LabelledSet, corruption: Corruption, seed: u64, out: &Path) -> Result<Corrupted> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let truth: Vec<&str> = set
        .images
        .iter()
        .map(|i| set.classes[i.label as usize].as_str())
        .collect();
    let mut labels: Vec<String> = truth.iter().map(|t| t.to_string()).collect();
    let mut split = Vec::new();
    match corruption {
        Corruption::Flip(share) => {
            if !(0.0..=1.0).contains(&share) || set.classes.len() < 2 {
                bail!("flip a share in [0, 1] of a set with two or more classes");
            }
            let count = (share * labels.len() as f64).round() as usize;
            let mut order: Vec<usize> = (0..labels.len()).collect();
            order.shuffle(&mut rng);
            for &i in &order[..count] {
                let own = set.images[i].label as usize;
                let other = (own + rng.random_range(1..set.classes.len())) % set.classes.len();
                labels[i] = set.classes[other].clone();
            }
        }
        Corruption::Split(n) => {
            if n == 0 || n > set.classes.len() {
                bail!("split between 1 and {} classes (asked {n})", set.classes.len());
            }
            split = set.classes.choose_multiple(&mut rng, n).cloned().collect();
            split.sort();
            for (label, truth) in labels.iter_mut().zip(&truth) {
                if split.iter().any(|s| s == truth) {
                    *label = format!("{truth}#{}", rng.random_range(1..=2));
                }
            }
        }
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut list = String::new();
    for ((image, label), truth) in set.images.iter().zip(&labels).zip(&truth) {
        let path = image
            .path
            .canonicalize()
            .or_else(|_| std::path::absolute(&image.path))?;
        writeln!(list, "{}\t{label}\t{truth}", path.display())?;
    }
    std::fs::write(out.join("list.tsv"), list).context("cannot write list.tsv")?;
    if !split.is_empty() {
        let pairs: String = split.iter().map(|s| format!("{s}#1,{s}#2\n")).collect();
        std::fs::write(out.join("truth_pairs.csv"), format!("name_a,name_b\n{pairs}"))
            .context("cannot write truth_pairs.csv")?;
    }
    Ok(Corrupted {
        images: labels.len(),
        flipped: labels.iter().zip(&truth).filter(|(l, t)| l != t).count(),
        split,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::datasets::Labelled;

    fn set() -> LabelledSet {
        LabelledSet {
            images: (0..100)
                .map(|i| Labelled {
                    path: format!("/data/{}/{i}.jpg", i % 4).into(),
                    label: (i % 4) as u32,
                })
                .collect(),
            classes: (0..4).map(|c| c.to_string()).collect(),
            truth: None,
        }
    }

    fn scratch(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("normgate-noise-{name}-{}", std::process::id()))
    }

    #[test]
    fn a_flip_changes_the_asked_share_and_keeps_the_truth() {
        let out = scratch("flip");
        let c = corrupt(&set(), Corruption::Flip(0.05), 7, &out).unwrap();
        assert_eq!(c.flipped, 5);
        let read = LabelledSet::load(&out.join("list.tsv"), 1).unwrap();
        let truth = read.truth.unwrap();
        let wrong = read
            .images
            .iter()
            .zip(&truth)
            .filter(|(i, t)| read.classes[i.label as usize] != **t)
            .count();
        assert_eq!(wrong, 5);
        // The same seed writes the same list.
        let again = scratch("flip-again");
        corrupt(&set(), Corruption::Flip(0.05), 7, &again).unwrap();
        assert_eq!(
            std::fs::read(out.join("list.tsv")).unwrap(),
            std::fs::read(again.join("list.tsv")).unwrap()
        );
        for d in [out, again] {
            std::fs::remove_dir_all(d).unwrap();
        }
    }

    #[test]
    fn a_split_makes_two_ids_per_chosen_class_and_names_them_as_truth() {
        let out = scratch("split");
        let c = corrupt(&set(), Corruption::Split(2), 3, &out).unwrap();
        assert_eq!(c.split.len(), 2);
        let read = LabelledSet::load(&out.join("list.tsv"), 1).unwrap();
        assert_eq!(read.classes.len(), 6);
        let pairs = std::fs::read_to_string(out.join("truth_pairs.csv")).unwrap();
        assert_eq!(pairs.lines().count(), 3);
        assert!(pairs.contains(&format!("{0}#1,{0}#2", c.split[0])));
        assert!(corrupt(&set(), Corruption::Split(5), 3, &out).is_err());
        assert!(corrupt(&set(), Corruption::Flip(1.5), 3, &out).is_err());
        std::fs::remove_dir_all(out).unwrap();
    }
}
