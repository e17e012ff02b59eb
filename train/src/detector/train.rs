//! `normgate-train train-detector`: distils the teacher detector into the
//! project's `FaceNet`. Each batch mixes the teacher's pseudo-labels on the
//! training split of LFW and CelebA (scaled, placed and mirrored at random)
//! with composites of aligned Glint24 faces on non-face backgrounds
//! ([`crate::data::composite`]), all with photometric augmentation; the loss is
//! RetinaFace's ([`crate::detector::loss`]). Optimiser, schedule,
//! checkpoints and resume are the backbone's ([`crate::nn::optim`]); batches
//! come from a generator seeded by (seed, step), so a resumed run continues
//! exactly as an uninterrupted one would.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use image::RgbImage;
use normgate::card::ModelCard;
use normgate::detector::{letterbox, pad_colour, priors, Face};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::backbone::network::ConvImpl;
use crate::data::composite::{composite, template_box, Ingredients};
use crate::data::datasets::read_rgb;
use crate::data::detector_samples::{photometric, sample, Augment};
use crate::data::heldout::HeldOut;
use crate::data::prepare::Cache;
use crate::data::pseudo::{is_validation, LabelledImage};
use crate::detector::anchors::Matching;
use crate::detector::loss::{detection_loss, image_targets};
use crate::detector::network::{DetectorConfig, FaceNet};
use crate::nn::optim::{load_weights, read_config, Progress, Schedule, Sgd, Training};
use crate::nn::vars::SeededVars;

/// Strides of the three output levels.
pub const STRIDES: [u32; 3] = [8, 16, 32];
/// Box and landmark encoding variances (RetinaFace's).
pub const VARIANCE: [f32; 2] = [0.1, 0.2];

/// Everything that defines a detector run; saved beside its checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetectorTrainConfig {
    /// Steps, learning rate and checkpoint interval.
    #[serde(flatten)]
    pub schedule: Schedule,
    /// Images per step.
    pub batch: usize,
    /// Side of the square training canvas (the network is fully
    /// convolutional, so it runs at its export size afterwards).
    pub canvas: u32,
    /// Share of each batch that is composites.
    pub composite_share: f64,
    /// Seed of the initial weights and of the batches.
    pub seed: u64,
    /// The architecture.
    pub network: DetectorConfig,
    /// Anchor sizes per level, pixels.
    pub anchor_sizes: Vec<Vec<f32>>,
}

impl Default for DetectorTrainConfig {
    fn default() -> Self {
        Self {
            // A peak learning rate of 0.02 diverged within the warm-up (no
            // batch norm to tame it).
            schedule: Schedule::new(6000, 0.005, 300),
            batch: 16,
            canvas: 256,
            composite_share: 0.35,
            seed: 1,
            network: DetectorConfig::SHIPPED,
            // The teacher's sizes at its 640 px input, halved like the frames.
            anchor_sizes: vec![vec![8.0, 16.0], vec![32.0, 64.0], vec![128.0, 256.0]],
        }
    }
}

/// The training images and composite ingredients, in memory.
pub struct DetectorSet {
    /// Pseudo-labelled training images with their faces.
    pub scenes: Vec<(RgbImage, Vec<Face>)>,
    /// Aligned Glint24 crops of training identities.
    pub faces: Vec<RgbImage>,
    /// The teacher's face box in template coordinates.
    pub face_box: [f32; 4],
    /// Non-face photographs.
    pub backgrounds: Vec<RgbImage>,
}

/// The sample images that hold no face (for backgrounds).
pub const NON_FACE_SAMPLES: [&str; 7] = [
    "brick.png",
    "chelsea.png",
    "coffee.png",
    "grass.png",
    "gravel.png",
    "hubble_deep_field.jpg",
    "rocket.jpg",
];

impl DetectorSet {
    /// Loads the training split of the pseudo-labels (images from `data`),
    /// the Glint24 cache's training identities and the non-face samples.
    pub fn load(data: &Path, cache_dir: &Path, samples: &Path, threads: usize) -> Result<Self> {
        let scenes = training_scenes(data, cache_dir, threads)?;
        let confident: Vec<Face> = scenes
            .iter()
            .flat_map(|(_, faces)| faces.iter().filter(|f| f.score >= 0.9).copied())
            .collect();
        let face_box = template_box(&confident).context("no confident teacher face to place the template box")?;
        let glint = Cache::load(cache_dir, "glint24")?;
        let faces = (0..glint.len())
            .filter(|&i| {
                let identity = glint.paths[i].split('/').nth(1).unwrap_or_default();
                !is_validation("glint24", identity)
            })
            .map(|i| glint.crop(i))
            .collect();
        let backgrounds = NON_FACE_SAMPLES
            .iter()
            .map(|n| read_rgb(&samples.join(n)))
            .collect::<Result<_>>()?;
        Ok(Self {
            scenes,
            faces,
            face_box,
            backgrounds,
        })
    }

    fn ingredients(&self) -> Ingredients<'_> {
        Ingredients {
            faces: &self.faces,
            face_box: self.face_box,
            backgrounds: &self.backgrounds,
            scenes: &self.scenes,
        }
    }
}

/// The training split's pseudo-labelled images (from `data`), decoded on
/// `threads` threads, with the teacher's faces.
pub fn training_scenes(data: &Path, cache_dir: &Path, threads: usize) -> Result<Vec<(RgbImage, Vec<Face>)>> {
    let labels = training_labels(data, cache_dir)?;
    if labels.is_empty() {
        bail!("the pseudo-labels hold no training image");
    }
    load_scenes(data, &labels, threads)
}

/// Decodes the labelled images on `threads` threads, keeping the list's order.
fn load_scenes(data: &Path, labels: &[LabelledImage], threads: usize) -> Result<Vec<(RgbImage, Vec<Face>)>> {
    let next = AtomicUsize::new(0);
    let slots: Mutex<Vec<Option<Result<RgbImage>>>> = Mutex::new((0..labels.len()).map(|_| None).collect());
    let bar = crate::data::prepare::progress(labels.len(), "images");
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(l) = labels.get(i) else { break };
                let image = read_rgb(&data.join(&l.path));
                slots.lock().expect("no panics while loading")[i] = Some(image);
                bar.inc(1);
            });
        }
    });
    bar.finish_and_clear();
    slots
        .into_inner()
        .expect("no panics while loading")
        .into_iter()
        .zip(labels)
        .map(|(image, l)| {
            Ok((
                image.expect("every slot filled")?,
                l.faces.iter().map(|f| f.face()).collect(),
            ))
        })
        .collect()
}

/// One step's losses, as logged.
#[derive(Debug, Clone, Serialize)]
pub struct DetectorStepLog {
    /// Step number (from 0).
    pub step: u64,
    /// Total loss.
    pub loss: f32,
    /// Score cross-entropy per positive anchor.
    pub score: f32,
    /// Box smooth-L1 per positive anchor.
    pub boxes: f32,
    /// Landmark smooth-L1 per positive anchor.
    pub landmarks: f32,
    /// Positive anchors in the batch.
    pub positives: usize,
    /// Learning rate.
    pub lr: f64,
}

/// A detector training run.
pub struct DetectorTrainer {
    config: DetectorTrainConfig,
    set: DetectorSet,
    net: FaceNet,
    sgd: Sgd,
    priors: Vec<[f32; 4]>,
    step: u64,
}

impl DetectorTrainer {
    /// Builds the network, from `dir`'s checkpoint if it has one.
    pub fn new(config: DetectorTrainConfig, set: DetectorSet, dir: &Path) -> Result<Self> {
        Self::with_conv(config, set, dir, ConvImpl::Fast)
    }

    /// [`DetectorTrainer::new`] on a chosen convolution implementation
    /// (candle's built-in one only serves to measure what the fast ops save).
    pub fn with_conv(config: DetectorTrainConfig, set: DetectorSet, dir: &Path, conv: ConvImpl) -> Result<Self> {
        if config.anchor_sizes.len() != 3 || config.anchor_sizes.iter().any(|s| s.len() != config.network.anchors) {
            bail!(
                "anchor_sizes needs three levels of {} sizes each",
                config.network.anchors
            );
        }
        let map = VarMap::new();
        let net = FaceNet::with_conv(
            config.network,
            conv,
            SeededVars::builder(&map, config.seed, &Device::Cpu),
        )?;
        let mut sgd = Sgd::new(&map)?;
        let step = sgd.resume(dir, &config)?;
        let priors = priors(config.canvas, &STRIDES, &config.anchor_sizes);
        Ok(Self {
            config,
            set,
            net,
            sgd,
            priors,
            step,
        })
    }

    /// This step's images (normalised CHW) and faces.
    fn batch(&self) -> Result<(Tensor, Vec<Vec<Face>>)> {
        let mut rng = StdRng::seed_from_u64(self.config.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ self.step);
        let side = self.config.canvas;
        let ingredients = self.set.ingredients();
        let mut pixels = Vec::with_capacity(self.config.batch * 3 * (side * side) as usize);
        let mut faces = Vec::with_capacity(self.config.batch);
        for _ in 0..self.config.batch {
            let (mut image, f) = if rng.random_bool(self.config.composite_share) {
                composite(&ingredients, side, &mut rng)
            } else {
                let (scene, f) = &self.set.scenes[rng.random_range(0..self.set.scenes.len())];
                sample(scene, f, side, Augment::default(), &mut rng)
            };
            photometric(&mut image, &mut rng);
            pixels.extend(chw(&image));
            faces.push(f);
        }
        let s = side as usize;
        Ok((
            Tensor::from_vec(pixels, (self.config.batch, 3, s, s), &Device::Cpu)?,
            faces,
        ))
    }
}

impl Training for DetectorTrainer {
    type Log = DetectorStepLog;

    fn progress(&self) -> Progress {
        self.config.schedule.progress(self.step, self.config.batch)
    }

    fn train_step(&mut self) -> Result<DetectorStepLog> {
        let (x, faces) = self.batch()?;
        let targets: Vec<_> = faces
            .iter()
            .map(|f| image_targets(&self.priors, f, Matching::default(), VARIANCE))
            .collect();
        let outputs = self.net.forward(&x)?;
        let loss = detection_loss(&outputs, &targets)?;
        let grads = loss.total.backward()?;
        let lr = self.sgd.step(&grads, &self.config.schedule, self.step)?;
        let log = DetectorStepLog {
            step: self.step,
            loss: loss.total.to_scalar::<f32>()?,
            score: loss.score,
            boxes: loss.boxes,
            landmarks: loss.landmarks,
            positives: loss.positives,
            lr,
        };
        self.step += 1;
        Ok(log)
    }

    fn loss(log: &DetectorStepLog) -> f32 {
        log.loss
    }

    fn describe(log: &DetectorStepLog) -> String {
        format!(
            "loss {:.3} score {:.3} box {:.3} landmarks {:.3}",
            log.loss, log.score, log.boxes, log.landmarks
        )
    }

    fn save(&self, dir: &Path) -> Result<()> {
        self.sgd.save(dir, self.step, &self.config)
    }
}

/// An image as `(x - 127.5) / 128`, channels first.
pub fn chw(image: &RgbImage) -> Vec<f32> {
    let (w, h) = image.dimensions();
    let n = (w * h) as usize;
    let mut out = vec![0.0f32; 3 * n];
    for (i, p) in image.pixels().enumerate() {
        for c in 0..3 {
            out[c * n + i] = (f32::from(p.0[c]) - 127.5) / 128.0;
        }
    }
    out
}

/// The pseudo-labelled images of the training split, less the people of
/// the held-out split (`heldout`).
fn training_labels(data: &Path, cache_dir: &Path) -> Result<Vec<LabelledImage>> {
    let held_out = HeldOut::load(data)?;
    Ok(crate::data::pseudo::load(cache_dir)?
        .into_iter()
        .filter(|l| !l.validation && !held_out.covers(&l.set, &l.identity))
        .collect())
}

/// `n` training-split images spread evenly over the pseudo-labels,
/// letterboxed to a detector card's input as the device does (for
/// calibrating quantization and checking an export).
pub fn calibration_frames(data: &Path, cache_dir: &Path, n: usize, card: &ModelCard) -> Result<Vec<RgbImage>> {
    let labels = training_labels(data, cache_dir)?;
    let step = (labels.len() / n.max(1)).max(1);
    labels
        .iter()
        .step_by(step)
        .take(n)
        .map(|l| Ok(letterbox(&read_rgb(&data.join(&l.path))?, card.width, pad_colour(card)).0))
        .collect()
}

/// The detector of a run folder's checkpoint, for export.
pub fn load_detector(dir: &Path) -> Result<(FaceNet, VarMap, DetectorTrainConfig)> {
    let config: DetectorTrainConfig = read_config(dir)?;
    let map = VarMap::new();
    let net = FaceNet::new(config.network, SeededVars::builder(&map, config.seed, &Device::Cpu))?;
    load_weights(&map, dir)?;
    Ok((net, map, config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{sgd_weights, synthetic_face, tiny_detector};
    use image::Rgb;

    fn tiny_set() -> DetectorSet {
        let scene = |k: u32| {
            let image = RgbImage::from_fn(90, 70, |x, y| Rgb([(x * 3 + k) as u8, (y * 4) as u8, 60]));
            (image, vec![synthetic_face([20.0, 10.0, 50.0, 45.0])])
        };
        DetectorSet {
            scenes: (0..3).map(scene).collect(),
            faces: vec![RgbImage::from_fn(112, 112, |x, y| Rgb([x as u8, y as u8, 200]))],
            face_box: [25.0, 30.0, 87.0, 105.0],
            backgrounds: vec![RgbImage::from_pixel(40, 40, Rgb([10, 200, 30]))],
        }
    }

    fn tiny_config() -> DetectorTrainConfig {
        DetectorTrainConfig {
            schedule: Schedule {
                checkpoint_every: 1000,
                ..Schedule::new(4, 0.005, 1)
            },
            batch: 2,
            canvas: 64,
            composite_share: 0.5,
            network: tiny_detector(),
            anchor_sizes: vec![vec![8.0, 16.0], vec![32.0, 48.0], vec![64.0, 96.0]],
            ..DetectorTrainConfig::default()
        }
    }

    fn weights(t: &DetectorTrainer) -> Vec<Vec<f32>> {
        sgd_weights(&t.sgd)
    }

    #[test]
    fn a_resumed_run_ends_where_a_straight_one_does_and_exports() {
        let root = std::env::temp_dir().join(format!("normgate-detector-train-{}", std::process::id()));
        let mut straight = DetectorTrainer::new(tiny_config(), tiny_set(), &root.join("a")).unwrap();
        crate::nn::optim::drive(&mut straight, &root.join("a")).unwrap();
        let mut first = DetectorTrainer::new(tiny_config(), tiny_set(), &root.join("b")).unwrap();
        first.train_step().unwrap();
        first.train_step().unwrap();
        first.save(&root.join("b")).unwrap();
        let mut resumed = DetectorTrainer::new(tiny_config(), tiny_set(), &root.join("b")).unwrap();
        assert_eq!(resumed.progress().position, 2);
        crate::nn::optim::drive(&mut resumed, &root.join("b")).unwrap();
        assert_eq!(weights(&straight), weights(&resumed));
        let config = tiny_config();
        let other = DetectorTrainConfig {
            schedule: Schedule {
                lr: 0.1,
                ..config.schedule
            },
            ..config
        };
        let err = DetectorTrainer::new(other, tiny_set(), &root.join("b")).err().unwrap();
        assert!(err.to_string().contains("another configuration"), "{err}");
        let bad = DetectorTrainConfig {
            anchor_sizes: vec![vec![8.0]],
            ..tiny_config()
        };
        assert!(DetectorTrainer::new(bad, tiny_set(), &root.join("c")).is_err());
        // candle's built-in convolution trains the same network.
        let mut builtin =
            DetectorTrainer::with_conv(tiny_config(), tiny_set(), &root.join("d"), ConvImpl::Builtin).unwrap();
        crate::nn::optim::drive(&mut builtin, &root.join("d")).unwrap();
        for (a, b) in weights(&straight).iter().zip(weights(&builtin)) {
            let diff = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
            assert!(diff < 1e-4, "{diff}");
        }
        // The run exports to a file tract runs like candle.
        let out = root.join("det.onnx");
        let frame = RgbImage::from_fn(64, 64, |x, y| Rgb([(x * 4) as u8, (y * 4) as u8, 9]));
        let check = crate::onnx::export::export_detector_run(&root.join("a"), &out, &[frame]).unwrap();
        assert!(check.max_rel_diff < 1e-4, "{check:?}");
        std::fs::remove_dir_all(root).unwrap();
    }
}
