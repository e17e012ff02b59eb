//! Augmented views of the cached aligned crops, each with the teacher's
//! feature of that very view, made live during the backbone's training.
//!
//! The cache holds the teacher's features of each crop and its mirror image
//! only, and the student learnt those two views by heart: its distillation
//! loss `1 - cos` fell to 0.26 on training crops but was 0.41 on LFW's
//! (docs/MODEL_HISTORY.md). A view moves, turns and rescales the crop a little
//! (as alignments from other landmarks would) and changes its colour,
//! contrast, sharpness and JPEG quality, grey more often than the detector's
//! augmentation (LFW is grey). Running the teacher on the view gives an
//! exact target for it, direction and norm, so the student also learns how
//! the teacher's norm answers each change.
//!
//! A share of the views can be mixed ([`mixed_view`]): blended with a view
//! of another crop of the same class (any crop of an unlabelled set), so
//! the student also sees images between the faces it has, each with the
//! teacher's exact target. With some twenty thousand training faces the
//! student learns its teacher's function only where it has seen it; the
//! mix is the cheapest source of new inputs (Beyer et al., "Knowledge
//! distillation: a good teacher is patient and consistent", 2022).
//!
//! The teacher runs on each view either live, in the step that draws it, or
//! once before training for a fixed bank of views per crop ([`ViewBank`]);
//! a banked view is made again from its own seed when drawn, so the bank
//! keeps only the features.

use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use image::imageops::flip_horizontal;
use image::RgbImage;
use indicatif::ParallelProgressIterator;
use normgate::embedder::Embedder;
use normgate_core::align::{warp_rgb8, Similarity};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

use crate::data::degrade::Degradation;
use crate::data::detector_samples::photometric_with_grey;
use crate::data::prepare::{load_teacher, progress, Cache};

/// Largest turn of a view, in degrees.
const MAX_TURN_DEGREES: f32 = 8.0;
/// Largest relative change of a view's scale.
const MAX_SCALE_CHANGE: f32 = 0.08;
/// Largest shift of a view, in pixels of the 112x112 crop.
const MAX_SHIFT: f32 = 3.0;
/// Chance that a view is grey.
const GREY_CHANCE: f64 = 0.3;

/// A random view of an aligned 112x112 crop: mirrored half of the time,
/// turned, rescaled and shifted about the crop's centre (pixels from
/// outside the crop are black), then [`photometric_with_grey`].
pub fn augmented_view(crop: &RgbImage, rng: &mut impl Rng) -> RgbImage {
    let source = if rng.random_bool(0.5) {
        flip_horizontal(crop)
    } else {
        crop.clone()
    };
    let turn = rng.random_range(-MAX_TURN_DEGREES..=MAX_TURN_DEGREES).to_radians();
    let scale = 1.0 + rng.random_range(-MAX_SCALE_CHANGE..=MAX_SCALE_CHANGE);
    let shift: [f32; 2] = std::array::from_fn(|_| rng.random_range(-MAX_SHIFT..=MAX_SHIFT));
    let (w, h) = source.dimensions();
    let centre = [w as f32 / 2.0, h as f32 / 2.0];
    let (a, b) = (scale * turn.cos(), scale * turn.sin());
    // View pixel p samples the crop at centre + s R (p - centre) + shift.
    let mut to_crop = Similarity::about(centre, a, b);
    to_crop.tx += shift[0];
    to_crop.ty += shift[1];
    let mut pixels = vec![0u8; source.as_raw().len()];
    warp_rgb8(source.as_raw(), w, h, &to_crop, &mut pixels, w, h).expect("view and crop have one size");
    let mut view = RgbImage::from_raw(w, h, pixels).expect("buffer of the crop's size");
    photometric_with_grey(&mut view, rng, GREY_CHANCE);
    view
}

/// Largest share of the partner in a mixed view: the crop stays the larger
/// part, and since either crop can draw the other, every share from 0 to 1
/// between two crops is reachable.
const MAX_PARTNER_SHARE: f32 = 0.5;

/// What a view of a crop may be besides augmented: the chances that it is
/// mixed with a crop of its class, and that it is then degraded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ViewRecipe {
    /// Chance of a blend with a same-class crop ([`mixed_view`]).
    pub mixup: f64,
    /// Chance of one [`Degradation::random`] on the (mixed) view: the
    /// teacher's feature of the degraded view is its target, so the student
    /// learns how far each kind of damage moves a face, on every crop.
    pub degrade: f64,
}

/// [`augmented_view`] of crop `i`, blended with a chance of `mixup` with an
/// augmented view of a partner crop of the same class (labels equal;
/// unlabelled crops all share [`crate::data::prepare::UNLABELLED`]) at a share
/// drawn from 0 to [`MAX_PARTNER_SHARE`], so a head's label still fits the
/// mix, then degraded with a chance of `degrade`. With both 0 it draws
/// nothing more than [`augmented_view`], and with `degrade` 0 nothing more
/// than before degrading existed: the views of earlier runs stay as they were.
pub fn mixed_view(cache: &Cache, i: usize, recipe: ViewRecipe, rng: &mut impl Rng) -> RgbImage {
    let view = blended_view(cache, i, recipe.mixup, rng);
    if recipe.degrade > 0.0 && rng.random_bool(recipe.degrade) {
        let mut degrade_rng = StdRng::seed_from_u64(rng.random());
        Degradation::random(&mut degrade_rng).apply(&view, &mut degrade_rng)
    } else {
        view
    }
}

fn blended_view(cache: &Cache, i: usize, mixup: f64, rng: &mut impl Rng) -> RgbImage {
    let mut view = augmented_view(&cache.crop(i), rng);
    if mixup > 0.0 && rng.random_bool(mixup) {
        let partner = same_class_partner(&cache.labels, i, rng);
        let other = augmented_view(&cache.crop(partner), rng);
        let share = rng.random_range(0.0..=MAX_PARTNER_SHARE);
        for (v, o) in view.as_mut().iter_mut().zip(other.as_raw()) {
            *v = ((1.0 - share) * f32::from(*v) + share * f32::from(*o)).round() as u8;
        }
    }
    view
}

/// A random crop with crop `i`'s label (possibly `i` itself), drawn until
/// one fits: a class of `c` crops among `n` takes `n / c` draws on average,
/// at most a few thousand cheap comparisons on the caches.
fn same_class_partner(labels: &[u32], i: usize, rng: &mut impl Rng) -> usize {
    loop {
        let j = rng.random_range(0..labels.len());
        if labels[j] == labels[i] {
            return j;
        }
    }
}

/// The teacher embedder that gives each view its target.
pub struct TeacherViews {
    teacher: Embedder,
}

impl TeacherViews {
    /// Loads the teacher; it must take the cache's 112x112 crops.
    pub fn load(model: &Path, card: &Path) -> Result<Self> {
        Ok(Self {
            teacher: load_teacher(model, card)?,
        })
    }

    /// The teacher's un-normalised feature of each view, in order (the views
    /// run in parallel, one per call, so the result does not depend on the
    /// thread count).
    pub fn features(&self, views: &[RgbImage]) -> Result<Vec<Vec<f32>>> {
        views.par_iter().map(|v| self.feature(v)).collect()
    }

    /// The teacher's un-normalised feature of one view.
    fn feature(&self, view: &RgbImage) -> Result<Vec<f32>> {
        Ok(self.teacher.embed(std::slice::from_ref(view))?.remove(0))
    }
}

/// Most views a bank keeps per crop.
pub const MAX_BANKED_VIEWS: usize = 256;

/// A fixed number of views of every cached crop with the teacher's feature
/// of each, computed once (and kept in the run folder) instead of in every
/// step: the steps then run without the teacher.
pub struct ViewBank {
    per_crop: usize,
    seed: u64,
    /// What a view may be besides augmented ([`mixed_view`]).
    recipe: ViewRecipe,
    dim: usize,
    /// Per source, `[crops x per_crop, dim]` values, crop-major.
    features: Vec<Vec<f32>>,
}

impl ViewBank {
    /// The bank in `file` if it is there and fits the caches, else built
    /// with the teacher and written there.
    pub fn load_or_build(
        file: &Path,
        caches: &[Cache],
        teacher: &TeacherViews,
        per_crop: usize,
        seed: u64,
        recipe: ViewRecipe,
    ) -> Result<Self> {
        if !(1..=MAX_BANKED_VIEWS).contains(&per_crop) {
            bail!("a view bank keeps 1 to {MAX_BANKED_VIEWS} views per crop, not {per_crop}");
        }
        let dim = caches.first().map_or(0, |c| c.dim);
        let shapes: Vec<(usize, usize)> = caches.iter().map(|c| (c.len() * per_crop, dim)).collect();
        if file.is_file() {
            let tensors = candle_core::safetensors::load(file, &Device::Cpu)
                .with_context(|| format!("cannot read the view bank {}", file.display()))?;
            let features = (0..caches.len())
                .map(|s| {
                    let t = tensors
                        .get(&s.to_string())
                        .with_context(|| format!("{} lacks source {s}", file.display()))?;
                    if t.dims2()? != shapes[s] {
                        bail!(
                            "the view bank {} does not fit the caches (source {s}: {:?}, expected {:?}); delete it to build it again",
                            file.display(),
                            t.dims(),
                            shapes[s]
                        );
                    }
                    Ok(t.flatten_all()?.to_vec1::<f32>()?)
                })
                .collect::<Result<Vec<_>>>()?;
            return Ok(Self {
                per_crop,
                seed,
                recipe,
                dim,
                features,
            });
        }
        let mut bank = Self {
            per_crop,
            seed,
            recipe,
            dim,
            features: Vec::new(),
        };
        for (s, cache) in caches.iter().enumerate() {
            let n = cache.len() * per_crop;
            let bar = progress(n, &format!("views of source {s}"));
            let rows: Vec<Vec<f32>> = (0..n)
                .into_par_iter()
                .progress_with(bar)
                .map(|j| teacher.feature(&bank.view(s, cache, j / per_crop, j % per_crop)))
                .collect::<Result<_>>()?;
            bank.features.push(rows.concat());
        }
        let tensors = bank
            .features
            .iter()
            .zip(&shapes)
            .enumerate()
            .map(|(s, (f, &shape))| Ok((s.to_string(), Tensor::from_slice(f, shape, &Device::Cpu)?)))
            .collect::<Result<std::collections::HashMap<_, _>>>()?;
        // Written whole, then renamed: a run stopped while writing leaves no half bank.
        let partial = file.with_extension("partial");
        candle_core::safetensors::save(&tensors, &partial)
            .and_then(|()| Ok(std::fs::rename(&partial, file)?))
            .with_context(|| format!("cannot write the view bank {}", file.display()))?;
        Ok(bank)
    }

    /// Views kept per crop.
    pub fn per_crop(&self) -> usize {
        self.per_crop
    }

    /// View `k` of crop `i` of source `source`: the same image every time.
    pub fn view(&self, source: usize, cache: &Cache, i: usize, k: usize) -> RgbImage {
        let which = ((source as u64) << 48) | ((i as u64) << 8) | k as u64;
        let mut rng = StdRng::seed_from_u64(self.seed.wrapping_mul(0xD1B5_4A32_D192_ED03) ^ which);
        mixed_view(cache, i, self.recipe, &mut rng)
    }

    /// The teacher's feature of that view.
    pub fn feature(&self, source: usize, i: usize, k: usize) -> &[f32] {
        &self.features[source][(i * self.per_crop + k) * self.dim..][..self.dim]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::prepare::UNLABELLED;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn a_teacher_for_other_crops_than_the_caches_is_refused() {
        let dir = std::env::temp_dir().join(format!("normgate-views-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sphereface = crate::testing::tiny_embedder(&dir);
        let err = TeacherViews::load(&sphereface, &sphereface.with_extension("toml"))
            .err()
            .unwrap();
        assert!(err.to_string().contains("takes 96x112 crops"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// Four flat crops: 0 and 1 black, 2 and 3 white, labelled as given.
    fn dark_and_bright(labels: [u32; 4]) -> Cache {
        let size = crate::data::prepare::CROP * crate::data::prepare::CROP * 3;
        let crops = [0u8, 0, 255, 255].iter().flat_map(|&v| vec![v; size]).collect();
        Cache {
            crops,
            labels: labels.to_vec(),
            teacher: vec![0.0; 8],
            teacher_flip: vec![0.0; 8],
            dim: 2,
            paths: (0..4).map(|i| format!("{i}.jpg")).collect(),
        }
    }

    fn mixing(mixup: f64) -> ViewRecipe {
        ViewRecipe { mixup, degrade: 0.0 }
    }

    #[test]
    fn a_degraded_view_is_a_damaged_copy_of_the_same_view_and_repeats() {
        let cache = dark_and_bright([0, 0, 1, 1]);
        let degrading = ViewRecipe {
            mixup: 0.0,
            degrade: 1.0,
        };
        let mut differ = 0;
        for seed in 0..20 {
            let rng = || StdRng::seed_from_u64(seed);
            let degraded = mixed_view(&cache, 3, degrading, &mut rng());
            assert_eq!(degraded, mixed_view(&cache, 3, degrading, &mut rng()), "seed {seed}");
            assert_eq!(degraded.dimensions(), cache.crop(3).dimensions());
            differ += usize::from(degraded != mixed_view(&cache, 3, mixing(0.0), &mut rng()));
        }
        assert!(differ >= 19, "every degradation changes a bright crop: {differ} of 20");
    }

    fn mean(image: &RgbImage) -> f64 {
        image.as_raw().iter().map(|&v| f64::from(v)).sum::<f64>() / image.as_raw().len() as f64
    }

    #[test]
    fn without_mixing_a_view_is_the_plain_augmented_view() {
        let cache = dark_and_bright([0, 0, 1, 1]);
        for seed in 0..10 {
            let rng = || StdRng::seed_from_u64(seed);
            assert_eq!(
                mixed_view(&cache, 2, mixing(0.0), &mut rng()),
                augmented_view(&cache.crop(2), &mut rng())
            );
        }
    }

    #[test]
    fn a_mixed_view_blends_in_a_crop_of_the_same_class_only() {
        // Classes by brightness: a view of a black crop stays below 92 and
        // one of a white crop above 150 whatever its colour change, so a
        // partner from the other class would move them towards each other.
        let cache = dark_and_bright([0, 0, 1, 1]);
        let mut changed = 0;
        for seed in 0..40 {
            let rng = || StdRng::seed_from_u64(seed);
            let (dark, bright) = (
                mixed_view(&cache, 0, mixing(1.0), &mut rng()),
                mixed_view(&cache, 3, mixing(1.0), &mut rng()),
            );
            assert!(
                mean(&dark) < 92.0 && mean(&bright) > 150.0,
                "seed {seed}: {} {}",
                mean(&dark),
                mean(&bright)
            );
            changed += usize::from(bright != augmented_view(&cache.crop(3), &mut rng()));
        }
        assert!(changed >= 35, "mixed views differ from plain ones: {changed} of 40");
        // Unlabelled crops are one class: every crop is a partner.
        let unlabelled = [UNLABELLED; 4];
        let mut rng = StdRng::seed_from_u64(1);
        let mut drawn = [0; 4];
        for _ in 0..200 {
            drawn[same_class_partner(&unlabelled, 0, &mut rng)] += 1;
            assert!([2, 3].contains(&same_class_partner(&[0, 0, 1, 1], 2, &mut rng)));
        }
        assert!(drawn.iter().all(|&n| n > 20), "{drawn:?}");
    }

    #[test]
    fn a_view_keeps_the_size_repeats_under_its_seed_and_stays_near_the_crop() {
        // A face-like pattern that is not symmetric top to bottom: dark
        // eyes and mouth on a skin tone that brightens downwards.
        let crop = RgbImage::from_fn(112, 112, |x, y| {
            let dark = |cx: u32, cy: u32, rx: u32, ry: u32| x.abs_diff(cx) <= rx && y.abs_diff(cy) <= ry;
            if dark(38, 52, 6, 3) || dark(74, 52, 6, 3) || dark(56, 92, 14, 2) {
                image::Rgb([30, 20, 20])
            } else {
                let v = 120 + y as u8;
                image::Rgb([v, v - 20, v - 40])
            }
        });
        let view = |seed| augmented_view(&crop, &mut StdRng::seed_from_u64(seed));
        let first = view(3);
        assert_eq!(first.dimensions(), (112, 112));
        assert_eq!(first, view(3), "same seed, same view");
        assert_ne!(first, view(4), "another seed, another view");
        // A view is the same face moved by a few pixels: far closer to the
        // crop (or its mirror image) than to the crop turned upside down.
        let distance = |a: &RgbImage, b: &RgbImage| -> f64 {
            let grey = |p: &image::Rgb<u8>| p.0.iter().map(|&v| f64::from(v)).sum::<f64>() / 3.0;
            let (ma, mb) = (
                a.pixels().map(grey).sum::<f64>() / 12544.0,
                b.pixels().map(grey).sum::<f64>() / 12544.0,
            );
            a.pixels()
                .zip(b.pixels())
                .map(|(p, q)| ((grey(p) - ma) - (grey(q) - mb)).abs())
                .sum::<f64>()
        };
        let upside_down = image::imageops::flip_vertical(&crop);
        for seed in 0..20 {
            let v = view(seed);
            let near = distance(&v, &crop).min(distance(&v, &flip_horizontal(&crop)));
            assert!(near < distance(&v, &upside_down), "seed {seed}");
        }
    }
}
