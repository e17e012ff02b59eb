//! `normgate-train bench embed`: the device's per-crop embedding time of
//! several model files (e.g. fp32, QDQ and QOperator), interleaved in one run.
//!
//! `normgate-train bench step`: training steps of the shipped backbone (or
//! detector) with this crate's convolution ops and with candle's built-in ones, side by side
//! in one run (interleaved, so machine noise hits both), at several thread
//! counts. Each thread count runs in a child process with `RAYON_NUM_THREADS`
//! set, because candle and rayon read it once per process.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use candle_nn::{Optimizer, VarMap, SGD};
use clap::ValueEnum;
use serde::Serialize;

use crate::backbone::network::{Backbone, BackboneConfig, ConvImpl};
use crate::detector::network::{DetectorConfig, FaceNet};
use crate::detector::train::DetectorTrainConfig;
use crate::nn::vars::SeededVars;

/// Timings of one implementation at one thread count.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct PathTiming {
    /// Full training steps (forward, backward, SGD update) per second, in images.
    pub img_per_s: f64,
    /// Forward passes per second, in images.
    pub forward_img_per_s: f64,
    /// Backward and update time over forward time.
    pub backward_over_forward: f64,
}

/// Both paths at one thread count.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct StepBench {
    /// Threads (RAYON_NUM_THREADS).
    pub threads: usize,
    /// With this crate's convolution ops.
    pub fast: PathTiming,
    /// With candle's built-in convolution.
    pub builtin: PathTiming,
    /// fast.img_per_s / builtin.img_per_s.
    pub speedup: f64,
    /// Forward GFLOP/s of the fast path.
    pub forward_gflops: f64,
}

/// Which shipped architecture a step trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// The backbone on 112x96 crops.
    Backbone,
    /// The detector on its training canvas.
    Detector,
}

impl Network {
    /// Input `[C, H, W]` of one image.
    fn input(self) -> (usize, usize, usize) {
        match self {
            Network::Backbone => (3, BackboneConfig::SHIPPED.height, BackboneConfig::SHIPPED.width),
            Network::Detector => {
                let side = DetectorTrainConfig::default().canvas as usize;
                (3, side, side)
            }
        }
    }

    /// Forward FLOPs of one image.
    pub fn forward_flops(self) -> u64 {
        match self {
            Network::Backbone => BackboneConfig::SHIPPED.forward_flops(),
            Network::Detector => self.detector_config().forward_flops(),
        }
    }

    /// The detector at its training canvas size.
    fn detector_config(self) -> DetectorConfig {
        DetectorConfig {
            input: DetectorTrainConfig::default().canvas as usize,
            ..DetectorConfig::SHIPPED
        }
    }
}

enum Net {
    Backbone(Backbone),
    Detector(FaceNet),
}

struct Trainer {
    net: Net,
    optimizer: SGD,
}

impl Trainer {
    /// Same seed, same initial weights for both paths.
    fn new(conv: ConvImpl, network: Network) -> Result<Self> {
        let vars = VarMap::new();
        let vb = SeededVars::builder(&vars, 7, &Device::Cpu);
        let net = match network {
            Network::Backbone => Net::Backbone(Backbone::new(BackboneConfig::SHIPPED, conv, vb)?),
            Network::Detector => Net::Detector(FaceNet::with_conv(network.detector_config(), conv, vb)?),
        };
        let optimizer = SGD::new(vars.all_vars(), 1e-3)?;
        Ok(Self { net, optimizer })
    }

    /// Every output of the network, flattened per image.
    fn outputs(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        Ok(match &self.net {
            Net::Backbone(n) => vec![n.forward(x)?],
            Net::Detector(n) => n.forward(x)?.to_vec(),
        })
    }

    /// One step of regression of every output to zero (the losses' shape), returning seconds.
    fn step(&mut self, x: &Tensor) -> Result<f64> {
        let start = Instant::now();
        let losses = self
            .outputs(x)?
            .iter()
            .map(|o| o.sqr()?.mean_all())
            .collect::<candle_core::Result<Vec<_>>>()?;
        let loss = Tensor::stack(&losses, 0)?.sum_all()?;
        self.optimizer.backward_step(&loss)?;
        Ok(start.elapsed().as_secs_f64())
    }

    fn forward(&self, x: &Tensor) -> Result<f64> {
        let start = Instant::now();
        for o in self.outputs(x)? {
            o.sum_all()?.to_scalar::<f32>()?;
        }
        Ok(start.elapsed().as_secs_f64())
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs the comparison in this process (RAYON_NUM_THREADS already set).
pub fn worker(network: Network, batch: usize, rounds: usize) -> Result<StepBench> {
    let (c, h, w) = network.input();
    let x = Tensor::randn(0f32, 1.0, (batch, c, h, w), &Device::Cpu)?;
    let mut paths = [
        Trainer::new(ConvImpl::Fast, network)?,
        Trainer::new(ConvImpl::Builtin, network)?,
    ];
    let mut steps = [Vec::new(), Vec::new()];
    let mut forwards = [Vec::new(), Vec::new()];
    for _ in 0..rounds {
        for (i, p) in paths.iter_mut().enumerate() {
            // Untimed: after the other path ran, caches and the allocator's
            // pages are cold, which back-to-back training steps never see.
            p.step(&x)?;
            forwards[i].push(p.forward(&x)?);
            steps[i].push(p.step(&x)?);
        }
    }
    let timing = |i: usize| {
        let (step, fwd) = (median(steps[i].clone()), median(forwards[i].clone()));
        PathTiming {
            img_per_s: batch as f64 / step,
            forward_img_per_s: batch as f64 / fwd,
            backward_over_forward: (step - fwd) / fwd,
        }
    };
    let (fast, builtin) = (timing(0), timing(1));
    Ok(StepBench {
        threads: rayon::current_num_threads(),
        speedup: fast.img_per_s / builtin.img_per_s,
        forward_gflops: network.forward_flops() as f64 * fast.forward_img_per_s / 1e9,
        fast,
        builtin,
    })
}

/// Runs one worker process per thread count and collects their results.
pub fn run(network: Network, threads: &[usize], batch: usize, rounds: usize) -> Result<Vec<StepBench>> {
    let exe = std::env::current_exe().context("cannot find this program to run the workers")?;
    let mut out = Vec::new();
    for &t in threads {
        log::info!("bench step: {t} thread(s), batch {batch}, {rounds} rounds per path");
        let output = std::process::Command::new(&exe)
            .args([
                "bench",
                "step",
                "--worker",
                "--network",
                network
                    .to_possible_value()
                    .expect("every network is a value")
                    .get_name(),
                "--batch",
                &batch.to_string(),
                "--rounds",
                &rounds.to_string(),
            ])
            .env("RAYON_NUM_THREADS", t.to_string())
            .stderr(std::process::Stdio::inherit())
            .output()
            .context("cannot start a bench worker")?;
        if !output.status.success() {
            bail!("bench worker with {t} thread(s) failed");
        }
        out.push(serde_json::from_slice(&output.stdout).context("bench worker printed no result")?);
    }
    Ok(out)
}

/// Embedding time of one model file.
#[derive(Debug, Clone, Serialize)]
pub struct EmbedTiming {
    /// The model.
    pub model: String,
    /// File size, bytes.
    pub bytes: u64,
    /// Median milliseconds per crop.
    pub ms_per_crop: f64,
    /// This model's time over the first model's.
    pub relative: f64,
}

/// Times each model on the same crops, `batch` crops per run, the models
/// interleaved round by round; the median round is reported.
pub fn embed(
    models: &[std::path::PathBuf],
    crops: &[image::RgbImage],
    batch: usize,
    rounds: usize,
) -> Result<Vec<EmbedTiming>> {
    use normgate::card::ModelCard;
    use normgate::embedder::Embedder;
    if models.is_empty() || crops.is_empty() || rounds == 0 {
        bail!("bench embed needs at least one model, one crop and one round");
    }
    let embedders: Vec<Embedder> = models
        .iter()
        .map(|m| Embedder::load(m, &ModelCard::path_for(m), batch))
        .collect::<Result<_>>()?;
    let mut times = vec![Vec::new(); models.len()];
    for round in 0..=rounds {
        for (e, t) in embedders.iter().zip(&mut times) {
            let start = Instant::now();
            e.embed(crops)?;
            // Round 0 warms caches and is not counted.
            if round > 0 {
                t.push(start.elapsed().as_secs_f64() * 1e3 / crops.len() as f64);
            }
        }
    }
    let medians: Vec<f64> = times.into_iter().map(median).collect();
    models
        .iter()
        .zip(&medians)
        .map(|(m, &ms)| {
            Ok(EmbedTiming {
                model: m.display().to_string(),
                bytes: std::fs::metadata(m)?.len(),
                ms_per_crop: ms,
                relative: ms / medians[0],
            })
        })
        .collect()
}
