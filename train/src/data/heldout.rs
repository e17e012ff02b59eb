//! The held-out split (DESIGN.md, "unseen means unseen"): the identities
//! none of whose images enters any training step (backbone crops,
//! distillation and view banks, detector and landmark pseudo-labels), on
//! which every figure that decides a model is measured.
//!
//! - CelebA: every third identity number in ascending order, the first
//!   included (50 of `celeba_wild`'s 150).
//! - LFW: every person named in `pairs.txt`; LFW images of anyone else may
//!   still teach (unlabelled).
//! - LFW pairs stay "unseen" only where neither person is one of Glint24's
//!   (`glint24_lfw_overlap.csv`): those people are trained on through Glint24.
//!
//! CelebA has no verification list, so [`celeba_pairs`] draws one with the
//! layout of LFW's: 10 folds, each of its own identities, as many matched as
//! mismatched pairs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context, Result};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::data::datasets::{self, Pair};

/// Every `CELEBA_EVERY`-th CelebA identity (ascending numbers) is held out.
pub const CELEBA_EVERY: usize = 3;
/// Folds of the drawn CelebA pairs (as LFW's).
pub const FOLDS: usize = 10;
/// At most this many matched pairs per held-out CelebA identity.
pub const MATCHED_PER_IDENTITY: usize = 12;
/// Seed of the drawn CelebA pairs: the list is part of the protocol.
pub const PAIRS_SEED: u64 = 36;

/// Who is held out.
#[derive(Debug, Clone, Default)]
pub struct HeldOut {
    celeba: BTreeSet<u32>,
    lfw: BTreeSet<String>,
    glint24_people: BTreeSet<String>,
}

/// How large the split is (for reports and the cache's record).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SplitSummary {
    /// Held-out CelebA identities.
    pub celeba_identities: usize,
    /// Held-out LFW people (those of pairs.txt).
    pub lfw_people: usize,
    /// Glint24 people who are also in LFW (their LFW pairs are not unseen).
    pub glint24_in_lfw: usize,
}

impl HeldOut {
    /// The split of the shared data folder.
    pub fn load(data: &Path) -> Result<Self> {
        let (_, celeba_ids) = datasets::celeba(&data.join("celeba_wild"))?;
        let pairs_file = data.join("lfw/pairs.txt");
        let pairs_text =
            std::fs::read_to_string(&pairs_file).with_context(|| format!("cannot read {}", pairs_file.display()))?;
        let overlap = datasets::read_columns(&data.join("glint24_lfw_overlap.csv"), &["lfw_name"])?;
        Ok(Self::new(
            &celeba_ids,
            &datasets::lfw_pairs(&pairs_text)?,
            overlap.into_iter().flatten(),
        ))
    }

    /// The split of CelebA's identity numbers (any order), LFW's pairs and
    /// the LFW names of Glint24's people.
    pub fn new(celeba_ids: &[u32], lfw_pairs: &[Pair], glint24_people: impl IntoIterator<Item = String>) -> Self {
        let sorted: BTreeSet<u32> = celeba_ids.iter().copied().collect();
        Self {
            celeba: sorted.into_iter().step_by(CELEBA_EVERY).collect(),
            lfw: lfw_pairs
                .iter()
                .flat_map(|p| p.images.iter().map(|i| lfw_person(i).to_string()))
                .collect(),
            glint24_people: glint24_people.into_iter().collect(),
        }
    }

    /// Whether a CelebA identity number is held out.
    pub fn celeba(&self, identity: u32) -> bool {
        self.celeba.contains(&identity)
    }

    /// Whether an LFW person is held out.
    pub fn lfw(&self, name: &str) -> bool {
        self.lfw.contains(name)
    }

    /// Whether an image of `set` (`lfw` or `celeba`, as the pseudo-labels
    /// name them) showing `identity` is held out.
    pub fn covers(&self, set: &str, identity: &str) -> bool {
        match set {
            "lfw" => self.lfw(identity),
            "celeba" => identity.parse().is_ok_and(|id| self.celeba(id)),
            _ => false,
        }
    }

    /// Whether an LFW pair shows nobody any training saw.
    pub fn unseen_lfw_pair(&self, pair: &Pair) -> bool {
        pair.images.iter().all(|i| !self.glint24_people.contains(lfw_person(i)))
    }

    /// Whether an LFW person is held out and was never seen by any training
    /// (not one of Glint24's people).
    pub fn unseen_lfw(&self, name: &str) -> bool {
        self.lfw(name) && !self.glint24_people.contains(name)
    }

    /// The split's size.
    pub fn summary(&self) -> SplitSummary {
        SplitSummary {
            celeba_identities: self.celeba.len(),
            lfw_people: self.lfw.len(),
            glint24_in_lfw: self.glint24_people.len(),
        }
    }
}

/// The person of an LFW image path (`Name/Name_0001.jpg`).
fn lfw_person(image: &str) -> &str {
    image.split('/').next().unwrap_or(image)
}

/// Verification pairs over held-out CelebA images, `images` being each
/// image's path and identity number. Identity `k` of the sorted held-out ones
/// falls in fold `k % FOLDS`; each fold has up to [`MATCHED_PER_IDENTITY`]
/// matched pairs per identity and as many mismatched pairs of two of its
/// identities, drawn with a fixed seed (the same images give the same list).
pub fn celeba_pairs(images: &[(String, u32)]) -> Vec<Pair> {
    let mut by_identity: BTreeMap<u32, Vec<&str>> = BTreeMap::new();
    for (path, id) in images {
        by_identity.entry(*id).or_default().push(path);
    }
    by_identity.values_mut().for_each(|v| v.sort_unstable());
    let identities: Vec<(&u32, &Vec<&str>)> = by_identity.iter().collect();
    let mut rng = StdRng::seed_from_u64(PAIRS_SEED);
    let mut pairs = Vec::new();
    for fold in 0..FOLDS {
        let members: Vec<&Vec<&str>> = identities.iter().skip(fold).step_by(FOLDS).map(|(_, v)| *v).collect();
        let mut matched = Vec::new();
        for images in &members {
            let mut all: Vec<[&str; 2]> = (0..images.len())
                .flat_map(|a| (a + 1..images.len()).map(move |b| [images[a], images[b]]))
                .collect();
            all.shuffle(&mut rng);
            matched.extend(all.into_iter().take(MATCHED_PER_IDENTITY));
        }
        let mut mismatched = BTreeSet::new();
        let people = members.iter().filter(|v| !v.is_empty()).count();
        while people >= 2 && mismatched.len() < matched.len() {
            let (a, b) = (rng.random_range(0..members.len()), rng.random_range(0..members.len()));
            if a == b || members[a].is_empty() || members[b].is_empty() {
                continue;
            }
            let pick = |v: &Vec<&str>, r: &mut StdRng| v[r.random_range(0..v.len())].to_string();
            let pair = [pick(members[a], &mut rng), pick(members[b], &mut rng)];
            mismatched.insert(if pair[0] < pair[1] {
                pair
            } else {
                [pair[1].clone(), pair[0].clone()]
            });
        }
        let same = matched.into_iter().map(|[a, b]| (true, [a.to_string(), b.to_string()]));
        pairs.extend(
            same.chain(mismatched.into_iter().map(|p| (false, p)))
                .map(|(same, images)| Pair { fold, same, images }),
        );
    }
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lfw_pair(a: &str, b: &str, same: bool) -> Pair {
        Pair {
            fold: 0,
            same,
            images: [format!("{a}/{a}_0001.jpg"), format!("{b}/{b}_0002.jpg")],
        }
    }

    #[test]
    fn every_third_celeba_identity_and_every_pairs_person_is_held_out() {
        let ids: Vec<u32> = (0..9).rev().map(|i| 7201 + 2 * i).collect();
        let pairs = [lfw_pair("Ann", "Ann", true), lfw_pair("Bob", "Kate_Winslet", false)];
        let split = HeldOut::new(&ids, &pairs, ["Kate_Winslet".to_string()]);
        let held: Vec<u32> = ids.iter().copied().filter(|&i| split.celeba(i)).collect();
        assert_eq!(held, vec![7213, 7207, 7201]);
        assert!(split.lfw("Ann") && split.lfw("Bob") && split.lfw("Kate_Winslet") && !split.lfw("Carl"));
        assert!(split.covers("celeba", "7207") && !split.covers("celeba", "7203"));
        assert!(split.covers("lfw", "Ann") && !split.covers("lfw", "Carl") && !split.covers("glint24", "Ann"));
        assert!(split.unseen_lfw_pair(&pairs[0]));
        assert!(!split.unseen_lfw_pair(&pairs[1]), "Glint24 trains on Kate Winslet");
        assert_eq!(
            split.summary(),
            SplitSummary {
                celeba_identities: 3,
                lfw_people: 3,
                glint24_in_lfw: 1
            }
        );
    }

    #[test]
    fn celeba_pairs_keep_folds_apart_balanced_and_fixed() {
        let images: Vec<(String, u32)> = (0..40u32)
            .flat_map(|id| (0..(3 + id % 5)).map(move |k| (format!("celeba_wild/{id}_{k}.jpg"), id)))
            .collect();
        let pairs = celeba_pairs(&images);
        let identity: BTreeMap<&str, u32> = images.iter().map(|(p, id)| (p.as_str(), *id)).collect();
        for fold in 0..FOLDS {
            let in_fold: Vec<&Pair> = pairs.iter().filter(|p| p.fold == fold).collect();
            let matched = in_fold.iter().filter(|p| p.same).count();
            assert!(matched > 0 && matched == in_fold.len() - matched, "fold {fold}");
            for p in &in_fold {
                let [a, b] = [&p.images[0], &p.images[1]].map(|i| identity[i.as_str()]);
                assert_eq!(a == b, p.same);
                assert_ne!(p.images[0], p.images[1]);
                assert_eq!(
                    a as usize % FOLDS,
                    fold,
                    "identity {a} belongs to fold {}",
                    a as usize % FOLDS
                );
            }
        }
        let mut shuffled = images.clone();
        shuffled.reverse();
        assert_eq!(celeba_pairs(&shuffled), pairs, "the list depends on the images only");
    }
}
