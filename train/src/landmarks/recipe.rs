//! The landmark refiner recipe's settings and samples: what defines a run
//! ([`RefinerTrainConfig`], its network and point loss) and how a training
//! crop and its target points are cut from a teacher face (moved boxes,
//! moved starting points, mirrored, photometric changes).

use std::path::PathBuf;

use anyhow::{bail, Result};
use candle_core::Tensor;
use image::imageops::flip_horizontal;
use image::RgbImage;
use normgate::card::{RefinerCrop, ALIGNED_SIDES};
use normgate::detector::Face;
use normgate::landmarks::Region;
use normgate_core::align::Landmarks;
use rand::Rng;
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};

use crate::backbone::network::BackboneConfig;
use crate::data::detector_samples::{mirror_landmarks, photometric};
use crate::landmarks::device_starts::DeviceStarts;
use crate::nn::optim::Schedule;

/// Everything that defines a refiner run; saved beside its checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RefinerTrainConfig {
    /// Steps, learning rate and checkpoint interval.
    #[serde(flatten)]
    pub schedule: Schedule,
    /// Crops per step.
    pub batch: usize,
    /// Seed of the initial weights and of the batches.
    pub seed: u64,
    /// Crop side as a multiple of the box's longer side (the card's `expand`).
    pub expand: f32,
    /// Largest move of the box centre, as a share of its longer side (each axis).
    pub box_shift: f32,
    /// Largest relative change of the box size.
    pub box_scale: f32,
    /// What the crop is cut around (older runs: the box).
    #[serde(default)]
    pub crop: RefinerCrop,
    /// Landmark crops: the standard deviation of how far the starting
    /// points stray from the teacher's, as a share of the eyes' distance
    /// (each point, and the whole face's shift, turn in radians and scale).
    #[serde(default = "default_start_noise")]
    pub start_noise: f32,
    /// Landmark crops: the aligned square scaled by this ([`Region::scaled`];
    /// below 1 the face fills more of the input; the card's `expand`).
    #[serde(default = "default_aligned_side")]
    pub aligned_side: f32,
    /// Share of crops cut at a low resolution (16 to 56 px across) and
    /// scaled up to the input, as small faces reach the refiner.
    #[serde(default)]
    pub low_res: f32,
    /// Box crops: half of them are turned about the box's centre by up to
    /// this many degrees either way, as faces rolled in the frame reach the
    /// first reading inside an upright box (0: none; older runs: none).
    #[serde(default)]
    pub roll: f32,
    /// Each non-frontal teacher face ([`is_non_frontal`]) enters the draw
    /// this many times: turned faces are rare, and a refiner that seldom
    /// sees them places a frontal face's points on them (older runs: 1).
    #[serde(default = "default_pose_balance")]
    pub pose_balance: usize,
    /// The loss on the points' errors (older runs: smooth-L1).
    #[serde(default)]
    pub loss: PointLoss,
    /// A finished refiner run of the same network, or a model file that
    /// `export` wrote of one, whose weights this run starts from, its
    /// schedule begun afresh (a warm restart: more steps for a trained
    /// network without training it again from scratch).
    #[serde(default)]
    pub warm_start: Option<PathBuf>,
    /// Landmark crops: the device's chain before this reading, whose points
    /// on the training faces start a share of the crops (older runs: none).
    #[serde(default)]
    pub device_starts: Option<DeviceStarts>,
    /// Teacher faces below this score are not trained on.
    pub min_score: f32,
    /// Teacher faces with a shorter side below this (pixels) are not trained on.
    pub min_side: f32,
    /// The network.
    pub network: RefinerSpec,
}

/// The refiner's architecture: the backbone's, square input, 10 outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefinerSpec {
    /// Input side in pixels.
    pub input: usize,
    /// Stem channels.
    pub stem: usize,
    /// Stage widths.
    pub widths: [usize; 3],
    /// Residual units per stage.
    pub units: [usize; 3],
}

impl RefinerSpec {
    /// The network: five (x, y) points out.
    pub fn config(&self) -> BackboneConfig {
        BackboneConfig {
            height: self.input,
            width: self.input,
            stem: self.stem,
            widths: self.widths,
            units: self.units,
            feature_dim: 10,
        }
    }
}

/// About the first reading's error on the validation faces (NME 7.8 %,
/// so a standard deviation near 6 % per axis), with room to spare.
fn default_start_noise() -> f32 {
    0.07
}

/// The aligned square as the device cut it before the side could be set.
fn default_aligned_side() -> f32 {
    1.0
}

/// The loss on each coordinate's error, in input pixels.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PointLoss {
    /// Quadratic below one pixel, linear above.
    #[default]
    SmoothL1,
    /// Feng et al.'s wing loss: `width * ln(1 + |e| / epsilon)` below
    /// `width` pixels, linear above. Its gradient grows as the error
    /// shrinks, so the last pixels of error weigh more than under L1.
    Wing { width: f32, epsilon: f32 },
}

impl PointLoss {
    /// The mean loss over the errors `diff` (input pixels).
    pub(crate) fn mean(&self, diff: &Tensor) -> candle_core::Result<Tensor> {
        let abs = diff.abs()?;
        let per_coordinate = match *self {
            Self::SmoothL1 => {
                let quadratic = (abs.clamp(0.0, 1.0)?.sqr()? * 0.5)?;
                (quadratic + (abs.clamp(1.0, f64::MAX)? - 1.0)?)?
            }
            Self::Wing { width, epsilon } => {
                let (w, e) = (f64::from(width), f64::from(epsilon));
                // Below the width the logarithm; above it the logarithm stops
                // at its value at the width and the error adds linearly.
                let log = (((abs.clamp(0.0, w)? / e)? + 1.0)?.log()? * w)?;
                (log + (abs.clamp(w, f64::MAX)? - w)?)?
            }
        };
        per_coordinate.mean_all()
    }

    /// Refuses parameters without a meaning.
    fn check(&self) -> Result<()> {
        if let Self::Wing { width, epsilon } = *self {
            if !(width > 0.0 && epsilon > 0.0 && width.is_finite() && epsilon.is_finite()) {
                bail!("--wing {width},{epsilon}: the width and epsilon must be positive pixels");
            }
        }
        Ok(())
    }
}

fn default_pose_balance() -> usize {
    1
}

/// Eyes closer than this share of the box's width mark a face turned well
/// away from the camera (frontal faces sit near 0.45; the share falls
/// towards 0 as a face turns to profile).
pub const NON_FRONTAL_EYES: f32 = 0.4;

/// Whether a teacher face is turned well away from the camera (its eyes
/// closer than [`NON_FRONTAL_EYES`] of its box's width).
pub fn is_non_frontal(face: &Face) -> bool {
    let [l, r] = [face.landmarks[0], face.landmarks[1]];
    (r[0] - l[0]).hypot(r[1] - l[1]) < NON_FRONTAL_EYES * (face.bbox[2] - face.bbox[0])
}

impl Default for RefinerTrainConfig {
    fn default() -> Self {
        Self {
            // A peak learning rate of 0.002 diverged within the warm-up (the
            // loss is in pixels).
            schedule: Schedule::new(12000, 0.001, 300),
            batch: 64,
            seed: 1,
            expand: 1.25,
            box_shift: 0.1,
            box_scale: 0.1,
            crop: RefinerCrop::Box,
            start_noise: default_start_noise(),
            aligned_side: default_aligned_side(),
            low_res: 0.0,
            roll: 0.0,
            pose_balance: default_pose_balance(),
            loss: PointLoss::SmoothL1,
            warm_start: None,
            device_starts: None,
            min_score: 0.8,
            min_side: 16.0,
            network: RefinerSpec {
                input: 64,
                stem: 16,
                widths: [32, 64, 128],
                units: [1, 1, 1],
            },
        }
    }
}

impl RefinerTrainConfig {
    /// The card's `expand`: the box crop's, or the aligned square's side.
    pub fn card_expand(&self) -> f32 {
        match self.crop {
            RefinerCrop::Box => self.expand,
            RefinerCrop::Landmarks => self.aligned_side,
        }
    }

    /// Refuses settings that cannot train, or that would be silently ignored.
    pub fn check(&self) -> Result<()> {
        let input = self.network.input;
        if input == 0 || input % 16 != 0 {
            bail!("--input {input} must be a positive multiple of 16 (four stride-2 stages)");
        }
        if !(0.0..=1.0).contains(&self.low_res) {
            bail!("--low-res {} must be a share in [0, 1]", self.low_res);
        }
        if !(0.0..=180.0).contains(&self.roll) {
            bail!("--roll {} must be an angle in degrees in [0, 180]", self.roll);
        }
        if self.roll > 0.0 && self.crop == RefinerCrop::Landmarks {
            bail!("--roll turns box crops (a first reading); landmark crops are upright by construction: drop --roll or use --crop box");
        }
        self.loss.check()?;
        if self.pose_balance == 0 {
            bail!("--pose-balance 0 would draw no turned face: use 1 to draw every face alike");
        }
        if !ALIGNED_SIDES.contains(&self.aligned_side) {
            bail!(
                "--aligned-side {} must be in [{}, {}]",
                self.aligned_side,
                ALIGNED_SIDES.start(),
                ALIGNED_SIDES.end()
            );
        }
        if self.aligned_side != 1.0 && self.crop == RefinerCrop::Box {
            bail!("--aligned-side scales landmark crops (a second reading): drop it or use --crop landmarks");
        }
        if !(self.start_noise >= 0.0 && self.start_noise.is_finite()) {
            bail!("--start-noise {} must be a finite share >= 0", self.start_noise);
        }
        if let Some(starts) = &self.device_starts {
            if self.crop == RefinerCrop::Box {
                bail!("--start-reading starts landmark crops (a second reading): drop it or use --crop landmarks");
            }
            starts.check()?;
        }
        Ok(())
    }
}

/// One training crop: the input image and the five points as shares of its
/// side. `start`: the device's points for this face before this reading, if
/// the run has them ([`DeviceStarts`]) and the chain found the face.
pub fn training_crop(
    image: &RgbImage,
    face: &Face,
    start: Option<&Landmarks>,
    config: &RefinerTrainConfig,
    rng: &mut impl Rng,
) -> Result<(RgbImage, [[f32; 2]; 5])> {
    let region = match config.crop {
        RefinerCrop::Box => {
            let region = Region::around(moved_box(face, config, rng), config.expand);
            if config.roll > 0.0 && rng.random_bool(0.5) {
                region.turned(rng.random_range(-config.roll..=config.roll).to_radians())
            } else {
                region
            }
        }
        RefinerCrop::Landmarks => {
            // Runs without device starts draw nothing here, so they repeat.
            let from = match (start, &config.device_starts) {
                (Some(start), Some(d)) if rng.random_bool(f64::from(d.share)) => start,
                _ => &face.landmarks,
            };
            Region::on_landmarks(&starting_points(from, face, config.start_noise, rng))?.scaled(config.aligned_side)
        }
    };
    let size = config.network.input as u32;
    let mut crop = if config.low_res > 0.0 && rng.random_bool(f64::from(config.low_res)) {
        let small = rng.random_range(16..=56).min(size);
        let coarse = region.crop(image, small)?;
        image::imageops::resize(&coarse, size, size, image::imageops::FilterType::Triangle)
    } else {
        region.crop(image, size)?
    };
    let mut points = face.landmarks.map(|p| region.to_shares(p));
    if rng.random_bool(0.5) {
        crop = flip_horizontal(&crop);
        points = mirror_landmarks(&points, 1.0);
    }
    photometric(&mut crop, rng);
    Ok((crop, points))
}

/// The teacher's box moved and rescaled as a detector's box strays.
fn moved_box(face: &Face, config: &RefinerTrainConfig, rng: &mut impl Rng) -> [f32; 4] {
    let [x1, y1, x2, y2] = face.bbox;
    let longer = (x2 - x1).max(y2 - y1);
    let (shift, scale) = (config.box_shift, config.box_scale);
    let centre = [
        (x1 + x2) / 2.0 + rng.random_range(-shift..=shift) * longer,
        (y1 + y2) / 2.0 + rng.random_range(-shift..=shift) * longer,
    ];
    let half = [(x2 - x1) / 2.0, (y2 - y1) / 2.0].map(|h| h * (1.0 + rng.random_range(-scale..=scale)));
    [
        centre[0] - half[0],
        centre[1] - half[1],
        centre[0] + half[0],
        centre[1] + half[1],
    ]
}

/// Points `from` (the teacher's, or the device's for this face) as a first
/// reading might place them: the face shifted, turned and scaled about its
/// centre, and each point moved, all by normal amounts of standard
/// deviation `noise` (shares of the teacher `face`'s eyes' distance;
/// radians; relative scale).
fn starting_points(from: &Landmarks, face: &Face, noise: f32, rng: &mut impl Rng) -> [[f32; 2]; 5] {
    let t = face.landmarks;
    let eyes = (t[1][0] - t[0][0]).hypot(t[1][1] - t[0][1]).max(1.0);
    let l = *from;
    let mut normal = || noise * rng.sample::<f32, _>(StandardNormal);
    let centre = [0, 1].map(|a| l.iter().map(|p| p[a]).sum::<f32>() / 5.0);
    let (angle, scale) = (normal(), 1.0 + normal());
    let shift = [normal() * eyes, normal() * eyes];
    let (cos, sin) = (scale * angle.cos(), scale * angle.sin());
    l.map(|[x, y]| {
        let (dx, dy) = (x - centre[0], y - centre[1]);
        [
            centre[0] + cos * dx - sin * dy + shift[0] + normal() * eyes,
            centre[1] + sin * dx + cos * dy + shift[1] + normal() * eyes,
        ]
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use candle_core::Device;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    /// A frontal face in a 128-pixel scene.
    pub(crate) fn face() -> Face {
        Face {
            bbox: [40.0, 30.0, 90.0, 100.0],
            score: 0.99,
            landmarks: [[52.0, 55.0], [78.0, 55.0], [65.0, 70.0], [55.0, 85.0], [75.0, 85.0]],
        }
    }

    #[test]
    fn training_targets_land_on_the_marked_points_of_the_crop() {
        // Bright dots at the landmarks on a dark image: each target must point at its dot.
        let f = face();
        let mut image = RgbImage::new(160, 140);
        for [x, y] in f.landmarks {
            for dy in -1..=1 {
                for dx in -1..=1 {
                    image.put_pixel((x as i32 + dx) as u32, (y as i32 + dy) as u32, image::Rgb([255; 3]));
                }
            }
        }
        let mut rng = StdRng::seed_from_u64(5);
        let boxes = RefinerTrainConfig::default();
        let landmarks = RefinerTrainConfig {
            crop: RefinerCrop::Landmarks,
            ..RefinerTrainConfig::default()
        };
        let rolled = RefinerTrainConfig {
            roll: 90.0,
            ..RefinerTrainConfig::default()
        };
        let zoomed = RefinerTrainConfig {
            aligned_side: 0.8,
            ..landmarks.clone()
        };
        // Without start noise the zoomed crop shows the same eyes 1 / 0.8 times as far apart.
        let eyes = |config: &RefinerTrainConfig| {
            let still = RefinerTrainConfig {
                start_noise: 0.0,
                ..config.clone()
            };
            let (_, p) = training_crop(&image, &f, None, &still, &mut StdRng::seed_from_u64(1)).unwrap();
            (p[1][0] - p[0][0]).hypot(p[1][1] - p[0][1])
        };
        assert!((eyes(&zoomed) - eyes(&landmarks) / 0.8).abs() < 1e-4);
        assert_eq!(zoomed.card_expand(), 0.8);
        let configs = [boxes, landmarks, rolled, zoomed].map(|c| std::iter::repeat_n(c, 40));
        for config in configs.into_iter().flatten() {
            let (crop, points) = training_crop(&image, &f, None, &config, &mut rng).unwrap();
            // Left eye left of the right eye, mirrored or not, unless the face was rolled.
            assert!(config.roll > 0.0 || points[0][0] < points[1][0]);
            for [u, v] in points {
                let side = crop.width() as f32;
                let (x, y) = ((u * side) as u32, (v * side) as u32);
                let brightest = (x.saturating_sub(2)..=(x + 2).min(crop.width() - 1))
                    .flat_map(|px| (y.saturating_sub(2)..=(y + 2).min(crop.height() - 1)).map(move |py| (px, py)))
                    .map(|(px, py)| crop.get_pixel(px, py)[0])
                    .max()
                    .unwrap();
                // Photometric changes move the dark background too: compare with a corner.
                let background = crop.get_pixel(0, 0)[0];
                assert!(
                    brightest >= background.saturating_add(20),
                    "no dot near ({x}, {y}): {brightest} on {background}"
                );
            }
        }
    }

    #[test]
    fn settings_that_cannot_apply_are_refused() {
        let ok = RefinerTrainConfig {
            roll: 90.0,
            ..RefinerTrainConfig::default()
        };
        assert!(ok.check().is_ok());
        let refused = |c: RefinerTrainConfig, needle: &str| {
            let e = c.check().unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        };
        let landmarks = RefinerTrainConfig {
            crop: RefinerCrop::Landmarks,
            ..ok.clone()
        };
        refused(landmarks, "--roll turns box crops");
        refused(
            RefinerTrainConfig {
                roll: 200.0,
                ..ok.clone()
            },
            "--roll 200",
        );
        refused(
            RefinerTrainConfig {
                low_res: 1.5,
                ..ok.clone()
            },
            "--low-res",
        );
        refused(
            RefinerTrainConfig {
                start_noise: f32::NAN,
                ..ok.clone()
            },
            "--start-noise",
        );
        refused(
            RefinerTrainConfig {
                pose_balance: 0,
                ..ok.clone()
            },
            "--pose-balance 0",
        );
        refused(
            RefinerTrainConfig {
                aligned_side: 0.8,
                ..ok.clone()
            },
            "--aligned-side scales landmark crops",
        );
        refused(
            RefinerTrainConfig {
                crop: RefinerCrop::Landmarks,
                roll: 0.0,
                aligned_side: 3.0,
                ..ok.clone()
            },
            "--aligned-side 3 must be in [0.5, 2]",
        );
        let device_starts = Some(crate::landmarks::device_starts::DeviceStarts {
            detector: "models/detector.onnx".into(),
            reading: "models/refiner.onnx".into(),
            share: 0.5,
        });
        refused(
            RefinerTrainConfig {
                device_starts: device_starts.clone(),
                ..ok.clone()
            },
            "--start-reading starts landmark crops",
        );
        let mut odd = ok;
        odd.network.input = 72;
        refused(odd, "--input 72");
    }

    #[test]
    fn a_device_start_moves_the_crop_as_often_as_its_share_says() {
        let f = face();
        let image = RgbImage::from_fn(160, 140, |x, y| image::Rgb([(x * y) as u8, y as u8, x as u8]));
        // The device placed the face 10 px right of the teacher's points.
        let start = f.landmarks.map(|[x, y]| [x + 10.0, y]);
        let config = |share| RefinerTrainConfig {
            crop: RefinerCrop::Landmarks,
            start_noise: 0.0,
            device_starts: Some(crate::landmarks::device_starts::DeviceStarts {
                detector: "detector.onnx".into(),
                reading: "refiner.onnx".into(),
                share,
            }),
            ..RefinerTrainConfig::default()
        };
        // How far the teacher's nose sits from the crop's middle column (a
        // mirrored crop moves it to the other side by as much).
        let off_centre = |start: Option<&Landmarks>, config: &RefinerTrainConfig, seed| {
            let (_, p) = training_crop(&image, &f, start, config, &mut StdRng::seed_from_u64(seed)).unwrap();
            (p[2][0] - 0.5).abs()
        };
        let plain = RefinerTrainConfig {
            device_starts: None,
            ..config(1.0)
        };
        let centred = off_centre(None, &plain, 1);
        for seed in 0..20 {
            // Always from the start: the crop is cut 10 px right, the nose off its middle.
            assert!(off_centre(Some(&start), &config(1.0), seed) > centred + 0.05);
            // A face the chain did not find starts from the teacher's points.
            assert!((off_centre(None, &config(1.0), seed) - centred).abs() < 1e-6);
        }
        let moved = (0..400)
            .filter(|&seed| off_centre(Some(&start), &config(0.25), seed) > centred + 0.05)
            .count();
        assert!(
            (60..=140).contains(&moved),
            "{moved} of 400 crops started from the device's points"
        );
    }

    #[test]
    fn the_point_losses_follow_their_formulas() {
        let errors = [0.5f32, -2.0, 6.0];
        let diff = Tensor::new(&errors, &Device::Cpu).unwrap();
        let mean = |loss: PointLoss| loss.mean(&diff).unwrap().to_scalar::<f32>().unwrap();
        // Huber with a one-pixel knee: e^2 / 2 below it, |e| - 1/2 above.
        let smooth = (0.5 * 0.5 * 0.5 + 1.5 + 5.5) / 3.0;
        assert!((mean(PointLoss::SmoothL1) - smooth).abs() < 1e-5);
        // Width 4, epsilon 1: logarithmic below 4 px, then linear and continuous at 4 px.
        let wing = PointLoss::Wing {
            width: 4.0,
            epsilon: 1.0,
        };
        let expected = (4.0 * 1.5f32.ln() + 4.0 * 3.0f32.ln() + 4.0 * 5.0f32.ln() + 2.0) / 3.0;
        assert!((mean(wing) - expected).abs() < 1e-5, "{} vs {expected}", mean(wing));
        let refused = RefinerTrainConfig {
            loss: PointLoss::Wing {
                width: 4.0,
                epsilon: 0.0,
            },
            ..RefinerTrainConfig::default()
        };
        assert!(refused.check().unwrap_err().to_string().contains("--wing 4,0"));
    }

    #[test]
    fn low_resolution_crops_blur_a_sharp_edge() {
        // A vertical black-to-white edge through the face: count the grey pixels across it.
        let image = RgbImage::from_fn(160, 140, |x, _| image::Rgb([if x < 65 { 0 } else { 255 }; 3]));
        let grey_pixels = |low_res: f32| {
            let config = RefinerTrainConfig {
                low_res,
                box_shift: 0.0,
                ..RefinerTrainConfig::default()
            };
            let mut rng = StdRng::seed_from_u64(3);
            (0..20)
                .map(|_| {
                    let (crop, _) = training_crop(&image, &face(), None, &config, &mut rng).unwrap();
                    let row = crop.height() / 2;
                    let values: Vec<u8> = (0..crop.width()).map(|x| crop.get_pixel(x, row)[0]).collect();
                    let (lo, hi) = (*values.iter().min().unwrap(), *values.iter().max().unwrap());
                    let span = u32::from(hi - lo);
                    values
                        .iter()
                        .filter(|&&v| (u32::from(v - lo) * 10 > span) && (u32::from(v - lo) * 10 < 9 * span))
                        .count()
                })
                .sum::<usize>()
        };
        let (sharp, coarse) = (grey_pixels(0.0), grey_pixels(1.0));
        assert!(
            coarse > sharp * 2,
            "{coarse} grey pixels at low resolution, {sharp} at full"
        );
    }
}
