//! `normgate-train bench embed`: the device's per-crop embedding time of
//! several model files (e.g. fp32, QDQ and QOperator), interleaved in one run.
//!
//! `normgate-train bench step`: training steps of the shipped backbone with
//! this crate's convolution ops and with candle's built-in ones, side by side
//! in one run (interleaved, so machine noise hits both), at several thread
//! counts. Each thread count runs in a child process with `RAYON_NUM_THREADS`
//! set, because candle and rayon read it once per process.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use candle_nn::{Optimizer, VarMap, SGD};
use serde::Serialize;

use crate::backbone::{Backbone, BackboneConfig, ConvImpl};
use crate::vars::SeededVars;

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

struct Trainer {
    net: Backbone,
    optimizer: SGD,
}

impl Trainer {
    /// Same seed, same initial weights for both paths.
    fn new(conv: ConvImpl, config: BackboneConfig) -> Result<Self> {
        let vars = VarMap::new();
        let net = Backbone::new(config, conv, SeededVars::builder(&vars, 7, &Device::Cpu))?;
        let optimizer = SGD::new(vars.all_vars(), 1e-3)?;
        Ok(Self { net, optimizer })
    }

    /// One step of feature regression (the distillation loss's shape), returning seconds.
    fn step(&mut self, x: &Tensor, target: &Tensor) -> Result<f64> {
        let start = Instant::now();
        let loss = (self.net.forward(x)? - target)?.sqr()?.mean_all()?;
        self.optimizer.backward_step(&loss)?;
        Ok(start.elapsed().as_secs_f64())
    }

    fn forward(&self, x: &Tensor) -> Result<f64> {
        let start = Instant::now();
        self.net.forward(x)?.sum_all()?.to_scalar::<f32>()?;
        Ok(start.elapsed().as_secs_f64())
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs the comparison in this process (RAYON_NUM_THREADS already set).
pub fn worker(batch: usize, rounds: usize) -> Result<StepBench> {
    let config = BackboneConfig::SHIPPED;
    let x = Tensor::randn(0f32, 1.0, (batch, 3, config.height, config.width), &Device::Cpu)?;
    let target = Tensor::randn(0f32, 1.0, (batch, config.feature_dim), &Device::Cpu)?;
    let mut paths = [
        Trainer::new(ConvImpl::Fast, config)?,
        Trainer::new(ConvImpl::Builtin, config)?,
    ];
    let mut steps = [Vec::new(), Vec::new()];
    let mut forwards = [Vec::new(), Vec::new()];
    for _ in 0..rounds {
        for (i, p) in paths.iter_mut().enumerate() {
            // Untimed: after the other path ran, caches and the allocator's
            // pages are cold, which back-to-back training steps never see.
            p.step(&x, &target)?;
            forwards[i].push(p.forward(&x)?);
            steps[i].push(p.step(&x, &target)?);
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
        forward_gflops: config.forward_flops() as f64 * fast.forward_img_per_s / 1e9,
        fast,
        builtin,
    })
}

/// Runs one worker process per thread count and collects their results.
pub fn run(threads: &[usize], batch: usize, rounds: usize) -> Result<Vec<StepBench>> {
    let exe = std::env::current_exe().context("cannot find this program to run the workers")?;
    let mut out = Vec::new();
    for &t in threads {
        log::info!("bench step: {t} thread(s), batch {batch}, {rounds} rounds per path");
        let output = std::process::Command::new(&exe)
            .args([
                "bench",
                "step",
                "--worker",
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
