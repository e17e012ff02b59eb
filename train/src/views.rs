//! Augmented views of the cached aligned crops, each with the teacher's
//! feature of that very view, made live during the backbone's training.
//!
//! The cache holds the teacher's features of each crop and its mirror image
//! only, and the student learnt those two views by heart: its distillation
//! loss `1 - cos` fell to 0.26 on training crops but was 0.41 on LFW's
//! (models/MODELS.md). A view moves, turns and rescales the crop a little
//! (as alignments from other landmarks would) and changes its colour,
//! contrast, sharpness and JPEG quality, grey more often than the detector's
//! augmentation (LFW is grey). Running the teacher on the view gives an
//! exact target for it, direction and norm, so the student also learns how
//! the teacher's norm answers each change.

use std::path::Path;

use anyhow::Result;
use image::imageops::flip_horizontal;
use image::RgbImage;
use normgate::embedder::Embedder;
use normgate_core::align::{warp_rgb8, Similarity};
use rand::Rng;
use rayon::prelude::*;

use crate::detector_data::photometric_with_grey;
use crate::prepare::load_teacher;

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
        views
            .par_iter()
            .map(|v| Ok(self.teacher.embed(std::slice::from_ref(v))?.remove(0)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
