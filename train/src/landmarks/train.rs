//! `normgate-train train-landmarks`: the landmark refiner
//! ([`normgate::landmarks`]), distilled from the teacher detector's five
//! points on the pseudo-labelled training images. Each sample is a teacher
//! face cut from the image with the device's own [`Region`] code: for a
//! box refiner around its box moved and rescaled at random (as far as the
//! project's detector's boxes stray), for a landmark refiner (the second
//! reading) around its points moved at random (as far as the first
//! reading's points stray). Sometimes mirrored, with the detector's
//! photometric augmentation; the target is the five points as shares of the
//! crop side, the loss smooth-L1 (or wing) in crop pixels. The network is the backbone's
//! ([`crate::backbone::network`]) at a small input with a 10-value output. Optimiser,
//! schedule, checkpoints and exact resume are the other recipes'.
//!
//! The settings and the samples are in [`crate::landmarks::recipe`].

use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use image::RgbImage;
use normgate::detector::Face;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::backbone::network::{Backbone, ConvImpl};
use crate::detector::train::chw;
use crate::landmarks::device_starts::Starts;
use crate::landmarks::recipe::{is_non_frontal, training_crop, RefinerSpec, RefinerTrainConfig};
use crate::nn::optim::{load_weights, read_config, Progress, Sgd, Training};
use crate::nn::vars::SeededVars;
use crate::onnx::graph::import_weights;

/// One step's loss, as logged.
#[derive(Debug, Clone, Serialize)]
pub struct RefinerStepLog {
    /// Step number (from 0).
    pub step: u64,
    /// The loss per coordinate ([`PointLoss`]), in input pixels.
    pub loss: f32,
    /// Mean distance of a point from its target, in input pixels.
    pub point_error: f32,
    /// Learning rate.
    pub lr: f64,
}

/// A refiner training run over the training split's teacher faces.
pub struct RefinerTrainer {
    config: RefinerTrainConfig,
    scenes: Vec<(RgbImage, Vec<Face>)>,
    /// (scene, face) pairs that qualify for training, each as many times as it is drawn.
    faces: Vec<(usize, usize)>,
    /// The device's points per scene and face (empty without device starts).
    starts: Starts,
    net: Backbone,
    sgd: Sgd,
    step: u64,
}

impl RefinerTrainer {
    /// Builds the network, from `dir`'s checkpoint if it has one.
    pub fn new(config: RefinerTrainConfig, scenes: Vec<(RgbImage, Vec<Face>)>, dir: &Path) -> Result<Self> {
        let pose_balance = config.pose_balance;
        let faces: Vec<(usize, usize)> = scenes
            .iter()
            .enumerate()
            .flat_map(|(s, (_, faces))| {
                faces
                    .iter()
                    .enumerate()
                    .filter(|(_, f)| f.score >= config.min_score && f.short_side() >= config.min_side)
                    .flat_map(move |(i, f)| {
                        let draws = if is_non_frontal(f) { pose_balance } else { 1 };
                        std::iter::repeat_n((s, i), draws)
                    })
            })
            .collect();
        if faces.is_empty() {
            bail!(
                "no teacher face with score >= {} and a side >= {} px to train on",
                config.min_score,
                config.min_side
            );
        }
        let map = VarMap::new();
        let vb = SeededVars::builder(&map, config.seed, &Device::Cpu);
        let net = Backbone::new(config.network.config(), ConvImpl::Fast, vb.pp("refiner"))?;
        let mut sgd = Sgd::new(&map)?;
        let step = sgd.resume(dir, &config)?;
        if let (0, Some(source)) = (step, &config.warm_start) {
            let weights = if source.is_file() {
                // A model file: its weights' shapes say whether it is this network.
                import_weights(&map, "refiner", source)
                    .with_context(|| format!("--warm-start {}", source.display()))?;
                source.clone()
            } else {
                warm_start_from_run(&map, source, &config.network)?;
                crate::nn::optim::checkpoint_path(source)
            };
            record_warm_start(&weights, dir)?;
            log::info!("starting from the weights of {}", source.display());
        }
        let starts = match &config.device_starts {
            Some(d) => d.load_or_find(&scenes, dir)?,
            None => Vec::new(),
        };
        Ok(Self {
            config,
            scenes,
            faces,
            starts,
            net,
            sgd,
            step,
        })
    }

    /// Faces that qualify for training, and how many of them are non-frontal.
    pub fn faces(&self) -> (usize, usize) {
        let mut distinct = self.faces.clone();
        distinct.dedup();
        let non_frontal = distinct
            .iter()
            .filter(|&&(s, f)| is_non_frontal(&self.scenes[s].1[f]))
            .count();
        (distinct.len(), non_frontal)
    }

    /// This step's crops (normalised CHW) and targets (shares).
    fn batch(&self) -> Result<(Tensor, Tensor)> {
        let mut rng = StdRng::seed_from_u64(self.config.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ self.step);
        let side = self.config.network.input;
        let (mut pixels, mut targets): (Vec<f32>, Vec<f32>) = (Vec::new(), Vec::new());
        for _ in 0..self.config.batch {
            let (s, f) = self.faces[rng.random_range(0..self.faces.len())];
            let (image, faces) = &self.scenes[s];
            let start = self.starts.get(s).and_then(|faces| faces[f].as_ref());
            let (crop, points) = training_crop(image, &faces[f], start, &self.config, &mut rng)?;
            pixels.extend(chw(&crop));
            targets.extend(points.iter().flatten());
        }
        let n = self.config.batch;
        Ok((
            Tensor::from_vec(pixels, (n, 3, side, side), &Device::Cpu)?,
            Tensor::from_vec(targets, (n, 10), &Device::Cpu)?,
        ))
    }
}

impl Training for RefinerTrainer {
    type Log = RefinerStepLog;

    fn progress(&self) -> Progress {
        self.config.schedule.progress(self.step, self.config.batch)
    }

    fn train_step(&mut self) -> Result<RefinerStepLog> {
        let (x, target) = self.batch()?;
        let side = self.config.network.input as f64;
        // Errors in input pixels.
        let diff = ((self.net.forward(&x)? - &target)? * side)?;
        let loss = self.config.loss.mean(&diff)?;
        let grads = loss.backward()?;
        let lr = self.sgd.step(&grads, &self.config.schedule, self.step)?;
        let point_error = diff
            .reshape((self.config.batch, 5, 2))?
            .sqr()?
            .sum(2)?
            .sqrt()?
            .mean_all()?
            .to_scalar::<f32>()?;
        let log = RefinerStepLog {
            step: self.step,
            loss: loss.to_scalar::<f32>()?,
            point_error,
            lr,
        };
        self.step += 1;
        Ok(log)
    }

    fn loss(log: &RefinerStepLog) -> f32 {
        log.loss
    }

    fn describe(log: &RefinerStepLog) -> String {
        format!("loss {:.3} point error {:.2} px", log.loss, log.point_error)
    }

    fn save(&self, dir: &Path) -> Result<()> {
        self.sgd.save(dir, self.step, &self.config)
    }
}

/// Sets `map` from the checkpoint of the finished run `source`, which must
/// have trained the same network.
fn warm_start_from_run(map: &VarMap, source: &Path, network: &RefinerSpec) -> Result<()> {
    let trained: RefinerTrainConfig = read_config(source)?;
    if trained.network != *network {
        bail!(
            "--warm-start {}: its network ({:?}) is not this run's ({:?}); use the same --input and --units",
            source.display(),
            trained.network,
            network
        );
    }
    load_weights(map, source).with_context(|| format!("--warm-start {}", source.display()))
}

/// Name of the file in a warm-started run's folder that says which weights it started from.
pub const WARM_START_RECORD: &str = "warm_start.sha256";

/// Writes the SHA-256 and path of the file whose weights a warm start
/// read into `dir` (`sha256sum -c` checks it): the path alone does not
/// say which weights a run began from once a newer file replaces it.
fn record_warm_start(weights: &Path, dir: &Path) -> Result<()> {
    let bytes = std::fs::read(weights).with_context(|| format!("cannot read {}", weights.display()))?;
    std::fs::create_dir_all(dir)?;
    let line = format!("{}  {}\n", normgate::record::content_key(&bytes), weights.display());
    let path = dir.join(WARM_START_RECORD);
    std::fs::write(&path, line).with_context(|| format!("cannot write {}", path.display()))
}

/// The refiner of a run folder's checkpoint, for evaluation and export.
pub fn load_refiner(dir: &Path) -> Result<(Backbone, VarMap, RefinerTrainConfig)> {
    let config: RefinerTrainConfig = read_config(dir)?;
    let (net, map) = crate::backbone::network::load_checkpoint(dir, config.network.config(), config.seed, "refiner")?;
    Ok((net, map, config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::landmarks::recipe::tests::face;
    use crate::nn::optim::Schedule;
    use crate::testing::sgd_weights;

    /// A network small enough for a test to build and train in a moment.
    fn tiny_network() -> RefinerSpec {
        RefinerSpec {
            input: 16,
            stem: 2,
            widths: [2, 2, 2],
            units: [0, 0, 0],
        }
    }

    #[test]
    fn non_frontal_faces_enter_the_draw_as_often_as_asked() {
        let frontal = face();
        assert!(!is_non_frontal(&frontal), "eyes 26 px apart in a 50 px box");
        // The same face turned towards profile: the eyes 12 px apart.
        let mut turned = face();
        turned.landmarks[1] = [64.0, 55.0];
        assert!(is_non_frontal(&turned));
        let image = RgbImage::new(160, 140);
        let scenes = vec![(image.clone(), vec![frontal, turned]), (image, vec![turned])];
        let config = RefinerTrainConfig {
            pose_balance: 3,
            network: tiny_network(),
            ..RefinerTrainConfig::default()
        };
        let dir = std::env::temp_dir().join(format!("normgate-pose-{}", std::process::id()));
        let trainer = RefinerTrainer::new(config, scenes, &dir).unwrap();
        assert_eq!(trainer.faces(), (3, 2));
        assert_eq!(trainer.faces, [(0, 0), (0, 1), (0, 1), (0, 1), (1, 0), (1, 0), (1, 0)]);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_resumed_run_continues_exactly_and_no_usable_face_is_an_error() {
        let image = RgbImage::from_fn(160, 140, |x, y| image::Rgb([(x + y) as u8, x as u8, y as u8]));
        let scenes = vec![(image, vec![face()])];
        let config = RefinerTrainConfig {
            schedule: Schedule {
                checkpoint_every: 1000,
                ..Schedule::new(4, 0.001, 1)
            },
            batch: 4,
            network: tiny_network(),
            ..RefinerTrainConfig::default()
        };
        let root = std::env::temp_dir().join(format!("normgate-refiner-{}", std::process::id()));
        let run = |dir: &Path| {
            let mut t = RefinerTrainer::new(config.clone(), scenes.clone(), dir).unwrap();
            crate::nn::optim::drive(&mut t, dir).unwrap();
            sgd_weights(&t.sgd)
        };
        let straight = run(&root.join("a"));
        let mut first = RefinerTrainer::new(config.clone(), scenes.clone(), &root.join("b")).unwrap();
        first.train_step().unwrap();
        first.train_step().unwrap();
        first.save(&root.join("b")).unwrap();
        assert_eq!(straight, run(&root.join("b")));
        let strict = RefinerTrainConfig {
            min_score: 2.0,
            ..config
        };
        let err = RefinerTrainer::new(strict, scenes, &root.join("c")).err().unwrap();
        assert!(err.to_string().contains("no teacher face"), "{err}");
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_warm_start_begins_from_the_trained_weights_and_refuses_another_network() {
        let image = RgbImage::from_fn(160, 140, |x, y| image::Rgb([(x * y) as u8, y as u8, x as u8]));
        let scenes = vec![(image, vec![face()])];
        let config = RefinerTrainConfig {
            schedule: Schedule::new(3, 0.001, 1),
            batch: 4,
            network: tiny_network(),
            ..RefinerTrainConfig::default()
        };
        let root = std::env::temp_dir().join(format!("normgate-warm-{}", std::process::id()));
        let mut source = RefinerTrainer::new(config.clone(), scenes.clone(), &root.join("source")).unwrap();
        crate::nn::optim::drive(&mut source, &root.join("source")).unwrap();
        let warm = RefinerTrainConfig {
            seed: 2,
            warm_start: Some(root.join("source")),
            ..config.clone()
        };
        let restarted = RefinerTrainer::new(warm.clone(), scenes.clone(), &root.join("warm")).unwrap();
        assert_eq!(restarted.step, 0, "the schedule begins afresh");
        assert_eq!(sgd_weights(&restarted.sgd), sgd_weights(&source.sgd));
        // The model file exported from the run gives the same start.
        let file = root.join("source.onnx");
        crate::onnx::export::export_refiner_run(&root.join("source"), &file, &[scenes[0].0.clone()], None).unwrap();
        let from_file = RefinerTrainConfig {
            warm_start: Some(file),
            ..warm.clone()
        };
        let restarted = RefinerTrainer::new(from_file.clone(), scenes.clone(), &root.join("file")).unwrap();
        assert_eq!(sgd_weights(&restarted.sgd), sgd_weights(&source.sgd));
        // Each warm-started run names the bytes it began from.
        for (run, weights) in [
            ("warm", crate::nn::optim::checkpoint_path(&root.join("source"))),
            ("file", root.join("source.onnx")),
        ] {
            let record = std::fs::read_to_string(root.join(run).join(WARM_START_RECORD)).unwrap();
            let key = normgate::record::content_key(&std::fs::read(&weights).unwrap());
            assert_eq!(record, format!("{key}  {}\n", weights.display()));
        }
        let fresh = RefinerTrainer::new(
            RefinerTrainConfig {
                warm_start: None,
                ..warm.clone()
            },
            scenes.clone(),
            &root.join("fresh"),
        )
        .unwrap();
        assert_ne!(
            sgd_weights(&fresh.sgd),
            sgd_weights(&source.sgd),
            "seed 2 alone starts elsewhere"
        );
        let other = RefinerTrainConfig {
            network: RefinerSpec {
                input: 32,
                ..tiny_network()
            },
            ..warm
        };
        let err = RefinerTrainer::new(other.clone(), scenes.clone(), &root.join("other"))
            .err()
            .unwrap();
        assert!(err.to_string().contains("is not this run's"), "{err}");
        let other_from_file = RefinerTrainConfig {
            warm_start: from_file.warm_start,
            ..other
        };
        let err = RefinerTrainer::new(other_from_file, scenes, &root.join("other-file"))
            .err()
            .unwrap();
        assert!(format!("{err:#}").contains("not this network"), "{err:#}");
        std::fs::remove_dir_all(root).unwrap();
    }
}
