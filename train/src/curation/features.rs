//! Features of labelled images through the device's own models
//! ([`normgate::still`]): what the curation commands (`heads`, `clean`,
//! `mine`) and `norms` measure, so their findings hold for the features the
//! gate sees. Images without a usable face are kept aside with the reason,
//! never silently dropped.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use image::RgbImage;
use normgate::embedder::Embedder;
use normgate::landmarks::Locator;
use normgate::still::aligned_main_face;
use rayon::prelude::*;

use crate::data::datasets::{read_rgb, LabelledSet};

/// The device's embedder and, unless the images are aligned crops, its detector.
pub struct FaceModels {
    /// The embedder.
    pub embedder: Embedder,
    /// The detector; `None` for crops already on the embedder's template.
    pub detector: Option<Locator>,
    /// Margin added on every side before detection, as a share of the
    /// image's size: a face that fills a tight crop has no context for the
    /// detector to find it in.
    pub pad: f32,
}

impl FaceModels {
    /// Loads the models (each `.onnx` with its card beside it).
    /// A `refiner` of `none` aligns from the detector's landmarks.
    pub fn load(model: &Path, detector: &Path, refiner: &Path, aligned: bool) -> Result<Self> {
        Ok(Self {
            embedder: normgate::pipeline::load_embedder(model, 1)?,
            detector: if aligned {
                None
            } else {
                Some(Locator::load(detector, refiner)?)
            },
            pad: 0.0,
        })
    }

    /// Pads images by `pad` (see [`FaceModels::pad`]) before detection.
    pub fn with_pad(self, pad: f32) -> Result<Self> {
        if !(0.0..=2.0).contains(&pad) {
            bail!("the padding {pad} must be a share of the image size in [0, 2]");
        }
        Ok(Self { pad, ..self })
    }

    /// The image to detect in: `image` on a mid-grey canvas `pad` larger on every side.
    fn padded(&self, image: RgbImage) -> RgbImage {
        if self.pad == 0.0 || self.detector.is_none() {
            return image;
        }
        let (w, h) = image.dimensions();
        let (dx, dy) = (
            (w as f32 * self.pad).round() as u32,
            (h as f32 * self.pad).round() as u32,
        );
        let mut canvas = RgbImage::from_pixel(w + 2 * dx, h + 2 * dy, image::Rgb([127; 3]));
        image::imageops::replace(&mut canvas, &image, i64::from(dx), i64::from(dy));
        canvas
    }

    /// The image's main face aligned to the embedder's template, found on
    /// the padded image (see [`aligned_main_face`]).
    pub fn aligned(&self, image: RgbImage) -> Result<RgbImage> {
        Ok(aligned_main_face(self.padded(image), self.detector.as_ref(), &self.embedder)?.0)
    }

    /// The feature of each image's main face, or why there is none (in
    /// parallel on the current thread pool; `tick` after each image).
    pub fn features(&self, images: &[PathBuf], tick: &(dyn Fn() + Sync)) -> Vec<std::result::Result<Vec<f32>, String>> {
        images
            .par_iter()
            .map(|path| {
                let feature = read_rgb(path)
                    .and_then(|image| self.aligned(image))
                    .and_then(|crop| Ok(self.embedder.embed(&[crop])?.remove(0)))
                    .map_err(|e| format!("{e:#}"));
                tick();
                feature
            })
            .collect()
    }
}

/// The features of a labelled set: the images that gave one, and the rest.
#[derive(Debug, Clone)]
pub struct SetFeatures {
    /// Indices into the set's images of the rows of `values`.
    pub rows: Vec<usize>,
    /// Features, one row per entry of `rows`.
    pub values: Vec<f32>,
    /// Values per feature.
    pub dim: usize,
    /// Images without a feature, with the reason.
    pub failed: Vec<(PathBuf, String)>,
}

impl SetFeatures {
    /// Measures every image of `set` (progress bar on stderr).
    pub fn measure(set: &LabelledSet, models: &FaceModels) -> Result<Self> {
        let paths: Vec<PathBuf> = set.images.iter().map(|i| i.path.clone()).collect();
        let bar = crate::data::prepare::progress(paths.len(), "images");
        let features = models.features(&paths, &|| bar.inc(1));
        bar.finish_and_clear();
        Self::collect(&paths, features)
    }

    /// Splits per-image outcomes into feature rows and failures.
    pub fn collect(paths: &[PathBuf], features: Vec<std::result::Result<Vec<f32>, String>>) -> Result<Self> {
        let (mut rows, mut values, mut failed, mut dim) = (Vec::new(), Vec::new(), Vec::new(), 0);
        for (n, (path, feature)) in paths.iter().zip(features).enumerate() {
            match feature {
                Ok(f) => {
                    dim = f.len();
                    rows.push(n);
                    values.extend(f);
                }
                Err(why) => failed.push((path.clone(), why)),
            }
        }
        if rows.is_empty() {
            let first = failed
                .first()
                .map(|(p, why)| format!(" (first: {}: {why})", p.display()));
            bail!("no image gave a feature{}", first.unwrap_or_default());
        }
        Ok(Self {
            rows,
            values,
            dim,
            failed,
        })
    }

    /// The labels of the feature rows.
    pub fn labels(&self, set: &LabelledSet) -> Vec<u32> {
        self.rows.iter().map(|&i| set.images[i].label).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_centres_the_image_on_grey_and_is_bounded() {
        let dir = std::env::temp_dir().join(format!("normgate-features-pad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let model = crate::testing::tiny_embedder(&dir);
        let mut models = FaceModels::load(&model, Path::new("unused"), Path::new(""), true).unwrap();
        let image = RgbImage::from_pixel(10, 20, image::Rgb([9; 3]));
        assert_eq!(models.padded(image.clone()), image, "aligned crops are never padded");
        models.detector = Some(Locator::load(&normgate_detector(), Path::new("")).unwrap());
        let models = models.with_pad(0.5).unwrap();
        let padded = models.padded(image);
        assert_eq!(padded.dimensions(), (20, 40));
        assert_eq!(
            (padded.get_pixel(0, 0).0, padded.get_pixel(5, 10).0),
            ([127; 3], [9; 3])
        );
        assert!(models.with_pad(3.0).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// The shipped detector (in the repository, so no shared data is needed).
    fn normgate_detector() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/detector.onnx")
    }

    #[test]
    fn failures_are_kept_apart_with_their_reason() {
        let paths: Vec<PathBuf> = ["a", "b", "c"].iter().map(PathBuf::from).collect();
        let f = SetFeatures::collect(
            &paths,
            vec![Ok(vec![1.0, 2.0]), Err("no face found".into()), Ok(vec![3.0, 4.0])],
        )
        .unwrap();
        assert_eq!(f.rows, [0, 2]);
        assert_eq!(f.values, [1.0, 2.0, 3.0, 4.0]);
        assert_eq!(f.failed, [(PathBuf::from("b"), "no face found".to_string())]);
        let e = SetFeatures::collect(&paths[..1], vec![Err("cannot read a".into())]).unwrap_err();
        assert!(e.to_string().contains("cannot read a"), "{e}");
    }
}
