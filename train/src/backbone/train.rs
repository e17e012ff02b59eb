//! `normgate-train train`: the backbone recipe.
//!
//! - **Concat training** (seed §1): one backbone, one A-Softmax head per
//!   labelled data set (Glint24, CelebA); each batch holds a fixed number of
//!   crops of every source, in source order, and each head sees only its rows.
//! - **Distillation** from the teacher's un-normalised feature on every crop
//!   (the unlabelled LFW crops and the degraded crops too):
//!   `(1 - cos(s, t)) + beta (ln|s| - ln|t|)²` carries both the direction and
//!   the norm, so the student's norm learns the teacher's response to quality.
//! - Augmented views (`augment`): a share of the crops is seen as a random
//!   view with the teacher's feature of that view, computed live
//!   ([`crate::data::views`]); the rest as the cached crop or its mirror image.
//! - Options: NormSelect before the heads (seed §3, running-average mode) and
//!   online hard example mining (seed §4, the hardest share of each head's rows).
//! - SGD with momentum and weight decay, warm-up then cosine decay;
//!   checkpoints (weights, momentum, step) every `checkpoint_every` steps;
//!   a run resumes from its checkpoint. Batches are drawn from a generator
//!   seeded by (seed, step), so a resumed run continues exactly as an
//!   uninterrupted one would.
//!
//! The settings and the targets' factors are in [`crate::backbone::recipe`].

use std::path::Path;

use anyhow::{bail, Result};
use candle_core::{Device, Tensor, Var, D};
use candle_nn::{Init, VarMap};
use normgate_core::margin::{ASoftmax, LambdaSchedule, Margin};
use normgate_core::norm::NormSelect;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::backbone::network::{Backbone, ConvImpl};
use crate::backbone::recipe::{
    degraded_norm_gains, feature, flipped, moved_gain, student_input, student_pixels, TrainConfig, DEGRADED,
    DEGRADED_RAMP_STEPS, SOURCES,
};
use crate::data::prepare::{Cache, CROP};
use crate::data::views::{mixed_view, TeacherViews, ViewBank};
use crate::nn::heads::{a_softmax_loss, a_softmax_losses, hardest_rows, norm_select_mask, seed_norm_select};
use crate::nn::optim::{read_config, Progress, Sgd, Training};
use crate::nn::vars::SeededVars;

/// λ at a step.
fn lambda(config: &TrainConfig, step: u64) -> f32 {
    LambdaSchedule {
        base: config.lambda_base,
        gamma: config.lambda_gamma,
        power: 1.0,
        lambda_min: config.lambda_min,
    }
    .at(step)
}

/// One step's losses and statistics, as logged.
#[derive(Debug, Clone, Serialize)]
pub struct StepLog {
    /// Step number (from 0).
    pub step: u64,
    /// Total loss.
    pub loss: f32,
    /// Mean (1 - cosine) to the teacher.
    pub direction: f32,
    /// Mean squared log-norm difference to the teacher.
    pub norm: f32,
    /// Mean A-Softmax loss of the heads (0 without heads).
    pub heads: f32,
    /// Mean student feature norm.
    pub student_norm: f32,
    /// Mean teacher feature norm.
    pub teacher_norm: f32,
    /// Learning rate.
    pub lr: f64,
}

/// A training run over the prepared caches.
pub struct Trainer {
    config: TrainConfig,
    caches: Vec<Cache>,
    /// The teacher for augmented views; only with `augment` > 0.
    teacher: Option<TeacherViews>,
    /// The banked views; only with `view_bank` > 0.
    bank: Option<ViewBank>,
    /// [`degraded_norm_gains`] of the degraded crops; empty with `degraded_drop` 1.
    degraded_gains: Vec<f32>,
    net: Backbone,
    heads: [Tensor; 2],
    sgd: Sgd,
    selects: [NormSelect; 2],
    /// The NormSelect running averages as variables without gradients (NaN
    /// before the first batch), so checkpoints carry them; only with NormSelect.
    select_averages: Option<[Var; 2]>,
    step: u64,
}

impl Trainer {
    /// Loads the caches and builds the network, from `dir`'s checkpoint if
    /// it has one; `teacher` makes the augmented views' targets (needed when
    /// `config.augment` > 0), for a bank kept in `dir` with `config.view_bank`.
    pub fn new(config: TrainConfig, cache_dir: &Path, dir: &Path, teacher: Option<TeacherViews>) -> Result<Self> {
        Self::with_conv(config, cache_dir, dir, teacher, ConvImpl::Fast)
    }

    /// [`Trainer::new`] on a chosen convolution implementation (candle's
    /// built-in one only serves to measure what the fast ops save).
    pub fn with_conv(
        config: TrainConfig,
        cache_dir: &Path,
        dir: &Path,
        teacher: Option<TeacherViews>,
        conv: ConvImpl,
    ) -> Result<Self> {
        if !(0.0..=1.0).contains(&config.augment) {
            bail!("the share of augmented views must lie in 0..=1, not {}", config.augment);
        }
        if !(0.0..=1.0).contains(&config.mixup) {
            bail!("the chance of a mixed view must lie in 0..=1, not {}", config.mixup);
        }
        if config.mixup > 0.0 && config.augment == 0.0 {
            bail!("mixed views are augmented views: --mixup needs --augment above 0");
        }
        if !(0.0..=1.0).contains(&config.view_degrade) {
            bail!(
                "the chance of a degraded view must lie in 0..=1, not {}",
                config.view_degrade
            );
        }
        if config.view_degrade > 0.0 && config.augment == 0.0 {
            bail!("degraded views are augmented views: --view-degrade needs --augment above 0");
        }
        let teacher = teacher.filter(|_| config.augment > 0.0);
        if config.augment > 0.0 && teacher.is_none() {
            bail!("augmented views need the teacher embedder to compute their targets");
        }
        crate::data::prepare::require_split(cache_dir)?;
        let caches = SOURCES
            .iter()
            .map(|s| Cache::load(cache_dir, s))
            .collect::<Result<Vec<_>>>()?;
        for (c, n) in caches.iter().zip(SOURCES) {
            if c.dim != config.backbone.feature_dim {
                bail!(
                    "cache {n} holds {}-d teacher features, the backbone makes {}-d ones",
                    c.dim,
                    config.backbone.feature_dim
                );
            }
        }
        if let Some(teacher) = &teacher {
            let dim = teacher.features(&[caches[0].crop(0)])?[0].len();
            if dim != config.backbone.feature_dim {
                bail!(
                    "the teacher for augmented views gives {dim}-d features, the backbone makes {}-d ones",
                    config.backbone.feature_dim
                );
            }
        }
        if config.view_bank > 0 && teacher.is_none() {
            bail!("a view bank needs augmented views (--augment above 0)");
        }
        if !(config.degraded_drop >= 1.0 && config.degraded_drop.is_finite()) {
            bail!(
                "the degraded crops' norm drop is a factor of at least 1 on the teacher's, not {}",
                config.degraded_drop
            );
        }
        if !(config.moved_drop >= 0.0 && config.moved_drop.is_finite()) {
            bail!("the moved-drop exponent must be 0 or more, not {}", config.moved_drop);
        }
        let degraded_gains = if config.degraded_drop == 1.0 && config.moved_drop == 0.0 {
            Vec::new()
        } else {
            degraded_norm_gains(
                &caches[DEGRADED],
                &[&caches[0], &caches[1]],
                config.degraded_drop,
                config.moved_drop,
            )?
        };
        let classes = [0, 1].map(|i| caches[i].labels.iter().map(|&l| l as usize + 1).max().unwrap_or(0));
        let map = VarMap::new();
        let vb = SeededVars::builder(&map, config.seed, &Device::Cpu);
        let net = Backbone::new(config.backbone.config(), conv, vb.pp("backbone"))?;
        let init = Init::Randn { mean: 0.0, stdev: 0.1 };
        let heads = [
            vb.get_with_hints((classes[0], config.backbone.feature_dim), "head.glint24", init)?,
            vb.get_with_hints((classes[1], config.backbone.feature_dim), "head.celeba", init)?,
        ];
        let select_averages = if config.norm_select {
            let average =
                |name| -> Result<Var> { Ok(Var::from_tensor(&vb.get_with_hints(1, name, Init::Const(f64::NAN))?)?) };
            Some([average("norm_select.glint24")?, average("norm_select.celeba")?])
        } else {
            None
        };
        let sgd = Sgd::new(&map)?;
        let mut trainer = Self {
            config,
            caches,
            teacher,
            bank: None,
            degraded_gains,
            net,
            heads,
            sgd,
            selects: [seed_norm_select(), seed_norm_select()],
            select_averages,
            step: 0,
        };
        // The checkpoint's config is checked first: a bank takes minutes to build.
        trainer.resume(dir)?;
        if let (Some(teacher), per_crop @ 1..) = (&trainer.teacher, trainer.config.view_bank) {
            std::fs::create_dir_all(dir)?;
            let file = dir.join("view-bank.safetensors");
            let bank = ViewBank::load_or_build(
                &file,
                &trainer.caches,
                teacher,
                per_crop,
                trainer.config.seed,
                trainer.config.view_recipe(),
            )?;
            trainer.bank = Some(bank);
        }
        Ok(trainer)
    }

    /// The backbone.
    pub fn backbone(&self) -> &Backbone {
        &self.net
    }

    fn resume(&mut self, dir: &Path) -> Result<()> {
        self.step = self.sgd.resume(dir, &self.config)?;
        if let Some(averages) = &self.select_averages {
            for (select, average) in self.selects.iter_mut().zip(averages) {
                let value = average.as_tensor().to_vec1::<f32>()?[0];
                if value.is_finite() {
                    select.restore_average(value).map_err(crate::nn::heads::core_error)?;
                }
            }
        }
        Ok(())
    }

    /// Draws this step's batch: inputs, teacher targets, and the head rows' labels.
    fn batch(&self) -> Result<(Tensor, Tensor, [Vec<u32>; 2])> {
        let mut rng = StdRng::seed_from_u64(self.config.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ self.step);
        let dim = self.config.backbone.feature_dim;
        let (mut inputs, mut targets) = (Vec::new(), Vec::new());
        let mut labels = [Vec::new(), Vec::new()];
        // Augmented views and their rows; their targets come from the teacher below.
        let (mut views, mut view_rows) = (Vec::new(), Vec::new());
        // Rows whose targets are scaled and their factors (degraded crops,
        // views that moved), applied once every target is in.
        let mut scaled_rows = Vec::new();
        // Every augmented row with its source and crop, for the moved factor.
        let mut augmented_rows = Vec::new();
        for (s, (cache, &n)) in self.caches.iter().zip(&self.config.per_source).enumerate() {
            for _ in 0..n {
                let i = rng.random_range(0..cache.len());
                // Drawn only when augmenting, so runs without views keep their batches.
                if self.config.augment > 0.0 && rng.random_bool(self.config.augment) {
                    augmented_rows.push((targets.len() / dim, s, i));
                    if let Some(bank) = &self.bank {
                        let k = rng.random_range(0..bank.per_crop());
                        inputs.extend(student_pixels(bank.view(s, cache, i, k).as_raw(), false));
                        targets.extend_from_slice(bank.feature(s, i, k));
                    } else {
                        let view = mixed_view(cache, i, self.config.view_recipe(), &mut rng);
                        inputs.extend(student_pixels(view.as_raw(), false));
                        view_rows.push(targets.len() / dim);
                        targets.extend(std::iter::repeat_n(0.0, dim));
                        views.push(view);
                    }
                } else {
                    let flip = rng.random_bool(0.5);
                    inputs.extend(student_input(cache, i, flip));
                    let t = if flip { &cache.teacher_flip } else { &cache.teacher };
                    targets.extend_from_slice(&t[i * cache.dim..][..cache.dim]);
                }
                if let (DEGRADED, Some(&gain)) = (s, self.degraded_gains.get(i)) {
                    scaled_rows.push((targets.len() / dim - 1, gain));
                }
                if s < 2 {
                    labels[s].push(cache.labels[i]);
                }
            }
        }
        if let Some(teacher) = &self.teacher {
            for (row, feature) in view_rows.into_iter().zip(teacher.features(&views)?) {
                targets[row * dim..][..dim].copy_from_slice(&feature);
            }
        }
        if self.config.moved_drop > 0.0 {
            for (row, s, i) in augmented_rows {
                let c = &self.caches[s];
                let target = &targets[row * dim..][..dim];
                scaled_rows.push((
                    row,
                    moved_gain(target, [feature(c, i), flipped(c, i)], self.config.moved_drop),
                ));
            }
        }
        let ramp = (self.step as f32 / DEGRADED_RAMP_STEPS as f32).min(1.0);
        for (row, gain) in scaled_rows {
            let factor = gain.powf(ramp);
            targets[row * dim..][..dim].iter_mut().for_each(|v| *v *= factor);
        }
        let n: usize = self.config.per_source.iter().sum();
        let x = Tensor::from_vec(inputs, (n, 3, CROP, 96), &Device::Cpu)?;
        let t = Tensor::from_vec(targets, (n, dim), &Device::Cpu)?;
        Ok((x, t, labels))
    }

    /// The loss of one head on its rows, with NormSelect and mining as configured.
    fn head_loss(&mut self, head: usize, features: &Tensor, labels: &[u32]) -> Result<Option<Tensor>> {
        let layer = ASoftmax {
            margin: Margin::new(self.config.margin)?,
            lambda: lambda(&self.config, self.step),
        };
        let mut f = features.clone();
        let mut labels = labels.to_vec();
        if self.config.norm_select {
            let (mask, kept) = norm_select_mask(&f, &mut self.selects[head])?;
            if let (Some(averages), Some(average)) = (&self.select_averages, self.selects[head].threshold()) {
                averages[head].set(&Tensor::new(&[average], &Device::Cpu)?)?;
            }
            if kept == 0 {
                return Ok(None);
            }
            f = f.broadcast_mul(&mask)?;
        }
        if self.config.hem_keep < 1.0 {
            let losses = a_softmax_losses(&f, &self.heads[head], &labels, layer)?;
            let keep = ((labels.len() as f32 * self.config.hem_keep).ceil() as usize).max(1);
            let rows = hardest_rows(&losses, keep);
            let index = Tensor::from_vec(
                rows.iter().map(|&r| r as u32).collect::<Vec<_>>(),
                rows.len(),
                &Device::Cpu,
            )?;
            f = f.index_select(&index, 0)?;
            labels = rows.iter().map(|&r| labels[r]).collect();
        }
        Ok(Some(a_softmax_loss(&f, &self.heads[head], &labels, layer)?))
    }
}

impl Training for Trainer {
    type Log = StepLog;

    fn progress(&self) -> Progress {
        self.config
            .schedule
            .progress(self.step, self.config.per_source.iter().sum())
    }

    fn train_step(&mut self) -> Result<StepLog> {
        let (x, t, labels) = self.batch()?;
        let s = self.net.forward(&x)?;
        let (s_norm, t_norm) = (
            s.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?,
            t.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?,
        );
        let cos = ((&s * &t)?.sum_keepdim(D::Minus1)? / (&s_norm * &t_norm)?.clamp(1e-6, f64::MAX)?)?;
        let direction = (1.0 - cos)?.mean_all()?;
        let log_ratio = (s_norm.clamp(1e-6, f64::MAX)?.log()? - t_norm.log()?)?;
        let norm = log_ratio.sqr()?.mean_all()?;
        let mut loss = (&direction + (&norm * self.config.beta)?)?;
        let [g, c] = [self.config.per_source[0], self.config.per_source[1]];
        let mut head_total = 0.0f32;
        if self.config.head_weight > 0.0 {
            let slices = [s.narrow(0, 0, g)?, s.narrow(0, g, c)?];
            let mut losses = Vec::new();
            for (h, rows) in slices.iter().enumerate() {
                if let Some(l) = self.head_loss(h, rows, &labels[h])? {
                    losses.push(l);
                }
            }
            if !losses.is_empty() {
                let count = losses.len() as f64;
                let heads = (Tensor::stack(&losses, 0)?.sum_all()? / count)?;
                head_total = heads.to_scalar::<f32>()?;
                loss = (loss + (heads * self.config.head_weight)?)?;
            }
        }
        let grads = loss.backward()?;
        let lr = self.sgd.step(&grads, &self.config.schedule, self.step)?;
        let log = StepLog {
            step: self.step,
            loss: loss.to_scalar::<f32>()?,
            direction: direction.to_scalar::<f32>()?,
            norm: norm.to_scalar::<f32>()?,
            heads: head_total,
            student_norm: s_norm.mean_all()?.to_scalar::<f32>()?,
            teacher_norm: t_norm.mean_all()?.to_scalar::<f32>()?,
            lr,
        };
        self.step += 1;
        Ok(log)
    }

    fn loss(log: &StepLog) -> f32 {
        log.loss
    }

    fn describe(log: &StepLog) -> String {
        format!(
            "loss {:.3} dir {:.3} norm {:.3} heads {:.2} |s| {:.1} |t| {:.1}",
            log.loss, log.direction, log.norm, log.heads, log.student_norm, log.teacher_norm
        )
    }

    fn save(&self, dir: &Path) -> Result<()> {
        self.sgd.save(dir, self.step, &self.config)
    }
}

/// The backbone of a run folder's checkpoint, for evaluation and export.
pub fn load_backbone(dir: &Path) -> Result<(Backbone, VarMap, TrainConfig)> {
    let config: TrainConfig = read_config(dir)?;
    let (net, map) = crate::backbone::network::load_checkpoint(dir, config.backbone.config(), config.seed, "backbone")?;
    Ok((net, map, config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backbone::recipe::BackboneSpec;
    use crate::nn::optim::Schedule;

    /// A fresh folder for a test (per process) and its `cache` folder inside.
    fn scratch(name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
        let root = std::env::temp_dir().join(format!("{name}{}", std::process::id()));
        let cache = root.join("cache");
        std::fs::create_dir_all(&cache).unwrap();
        (root, cache)
    }

    /// A tiny network on synthetic caches.
    fn tiny_run(cache: &Path) -> TrainConfig {
        for (s, name) in SOURCES.iter().enumerate() {
            crate::data::prepare::synthetic_cache(cache, name, 12, 3, 8, s as u64);
        }
        TrainConfig {
            schedule: Schedule {
                checkpoint_every: 1000,
                ..Schedule::new(6, 0.01, 2)
            },
            per_source: [2, 2, 1, 1],
            hem_keep: 0.5,
            augment: 0.0,
            view_bank: 0,
            mixup: 0.0,
            norm_select: true,
            backbone: BackboneSpec {
                stem: 2,
                widths: [2, 2, 2],
                units: [1, 0, 0],
                feature_dim: 8,
            },
            ..TrainConfig::default()
        }
    }

    fn weights(t: &Trainer) -> Vec<(String, Vec<f32>)> {
        t.sgd
            .vars
            .iter()
            .map(|(n, v)| (n.clone(), v.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
            .collect()
    }

    #[test]
    fn a_fixed_seed_repeats_a_run_and_a_resumed_run_continues_exactly() {
        let (root, cache) = scratch("normgate-train-");
        let config = tiny_run(&cache);
        let straight = |dir: &Path| {
            let mut t = Trainer::new(config.clone(), &cache, dir, None).unwrap();
            crate::nn::optim::drive(&mut t, dir).unwrap();
            weights(&t)
        };
        let a = straight(&root.join("a"));
        assert_eq!(a, straight(&root.join("b")), "same seed, same weights");
        let mut first = Trainer::new(config.clone(), &cache, &root.join("c"), None).unwrap();
        for _ in 0..3 {
            first.train_step().unwrap();
        }
        first.save(&root.join("c")).unwrap();
        assert!(
            first.sgd.velocity.iter().all(|v| !v.track_op()),
            "velocities must not hold the autograd graph (it would keep every step alive)"
        );
        let mut resumed = Trainer::new(config.clone(), &cache, &root.join("c"), None).unwrap();
        assert_eq!(resumed.progress().position, 3);
        crate::nn::optim::drive(&mut resumed, &root.join("c")).unwrap();
        assert_eq!(a, weights(&resumed), "resumed run ends where the straight one did");
        let other = TrainConfig {
            seed: 2,
            ..config.clone()
        };
        let mut t = Trainer::new(other.clone(), &cache, &root.join("d"), None).unwrap();
        crate::nn::optim::drive(&mut t, &root.join("d")).unwrap();
        assert_ne!(a, weights(&t), "another seed, other weights");
        let err = Trainer::new(
            TrainConfig {
                schedule: Schedule {
                    lr: 0.5,
                    ..config.schedule
                },
                ..config
            },
            &cache,
            &root.join("c"),
            None,
        )
        .err()
        .unwrap();
        assert!(err.to_string().contains("another configuration"), "{err}");
        std::fs::remove_dir_all(root).unwrap();
    }

    /// A tiny random teacher for 112x112 crops (ArcFace template), `dim`-d features.
    fn tiny_teacher(dir: &Path, dim: usize) -> TeacherViews {
        let mut config = crate::testing::tiny_backbone([2, 2, 2], [0, 0, 0], dim);
        (config.height, config.width) = (CROP, CROP);
        let mut card = crate::onnx::export::backbone_card(&config, None);
        card.embedder.as_mut().unwrap().template = "arcface_112x112".into();
        let model = dir.join("teacher.onnx");
        crate::testing::exported_backbone(config, 7, "teacher", &card, &model);
        TeacherViews::load(&model, &model.with_extension("toml")).unwrap()
    }

    #[test]
    fn augmented_views_get_the_live_teachers_targets_and_repeat_under_the_seed() {
        let (root, cache) = scratch("normgate-train-views-");
        let config = TrainConfig {
            augment: 1.0,
            ..tiny_run(&cache)
        };
        let err = Trainer::new(config.clone(), &cache, &root.join("a"), None)
            .err()
            .unwrap();
        assert!(err.to_string().contains("teacher"), "{err}");
        let wrong = Trainer::new(config.clone(), &cache, &root.join("a"), Some(tiny_teacher(&root, 4)))
            .err()
            .unwrap();
        assert!(wrong.to_string().contains("4-d features"), "{wrong}");
        let trainer = Trainer::new(config.clone(), &cache, &root.join("a"), Some(tiny_teacher(&root, 8))).unwrap();
        let (_, targets, _) = trainer.batch().unwrap();
        let cached: Vec<Vec<f32>> = trainer
            .caches
            .iter()
            .flat_map(|c| c.teacher.chunks(8).chain(c.teacher_flip.chunks(8)))
            .map(<[f32]>::to_vec)
            .collect();
        let rows = targets.to_vec2::<f32>().unwrap();
        assert_eq!(rows.len(), 6);
        for row in &rows {
            assert!(
                row.iter().all(|v| v.is_finite()) && row.iter().any(|&v| v != 0.0),
                "{row:?}"
            );
            assert!(!cached.contains(row), "every crop is a view with a live target");
        }
        let half = TrainConfig { augment: 0.5, ..config };
        let run = |dir: &str| {
            let dir = root.join(dir);
            let mut t = Trainer::new(half.clone(), &cache, &dir, Some(tiny_teacher(&root, 8))).unwrap();
            crate::nn::optim::drive(&mut t, &dir).unwrap();
            weights(&t)
        };
        assert_eq!(run("b"), run("c"), "same seed, same views, same weights");
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn banked_views_carry_the_teachers_feature_of_that_view_and_the_bank_is_kept_for_a_resumed_run() {
        let (root, cache) = scratch("normgate-train-bank-");
        // Half the views mixed and half degraded: such views are banked like any other.
        let config = TrainConfig {
            augment: 1.0,
            view_bank: 3,
            mixup: 0.5,
            view_degrade: 0.5,
            ..tiny_run(&cache)
        };
        let teacher = || Some(tiny_teacher(&root, 8));
        let without = TrainConfig {
            augment: 0.0,
            mixup: 0.0,
            view_degrade: 0.0,
            ..config.clone()
        };
        // Each setting of views alone, without augmented views, is refused.
        for (config, says) in [
            (without.clone(), "--augment"),
            (
                TrainConfig {
                    mixup: 0.5,
                    ..without.clone()
                },
                "--mixup needs --augment",
            ),
            (
                TrainConfig {
                    view_degrade: 0.5,
                    ..without.clone()
                },
                "--view-degrade needs --augment",
            ),
        ] {
            let err = Trainer::new(config, &cache, &root.join("x"), teacher()).err().unwrap();
            assert!(err.to_string().contains(says), "{err}");
        }
        let trainer = Trainer::new(config.clone(), &cache, &root.join("a"), teacher()).unwrap();
        let bank = trainer.bank.as_ref().unwrap();
        let check = tiny_teacher(&root, 8);
        for (s, c) in trainer.caches.iter().enumerate() {
            assert_eq!(
                bank.view(s, c, 1, 2),
                bank.view(s, c, 1, 2),
                "a view is made again the same"
            );
            assert_ne!(bank.view(s, c, 1, 2), bank.view(s, c, 1, 1));
            let live = check.features(&[bank.view(s, c, 1, 2)]).unwrap().remove(0);
            assert_eq!(bank.feature(s, 1, 2), live.as_slice(), "source {s}");
        }
        // Every row of a batch is a banked view with its banked feature.
        let (_, targets, _) = trainer.batch().unwrap();
        for row in targets.to_vec2::<f32>().unwrap() {
            let banked = (0..4).any(|s| (0..12).any(|i| (0..3).any(|k| bank.feature(s, i, k) == row.as_slice())));
            assert!(banked, "{row:?}");
        }
        let straight = |dir: &str| {
            let mut t = Trainer::new(config.clone(), &cache, &root.join(dir), teacher()).unwrap();
            crate::nn::optim::drive(&mut t, &root.join(dir)).unwrap();
            weights(&t)
        };
        let a = straight("b");
        // A resumed run reads the bank its first part kept (not rebuilt: same file time).
        let mut first = Trainer::new(config.clone(), &cache, &root.join("c"), teacher()).unwrap();
        for _ in 0..3 {
            first.train_step().unwrap();
        }
        first.save(&root.join("c")).unwrap();
        let file = root.join("c/view-bank.safetensors");
        let written = std::fs::metadata(&file).unwrap().modified().unwrap();
        let mut resumed = Trainer::new(config.clone(), &cache, &root.join("c"), teacher()).unwrap();
        assert_eq!(std::fs::metadata(&file).unwrap().modified().unwrap(), written);
        crate::nn::optim::drive(&mut resumed, &root.join("c")).unwrap();
        assert_eq!(a, weights(&resumed), "the kept bank continues the run exactly");
        // Another view count in a run's folder is another configuration, refused before any bank work.
        let other = TrainConfig {
            view_bank: 2,
            ..config.clone()
        };
        let err = Trainer::new(other, &cache, &root.join("c"), teacher()).err().unwrap();
        assert!(
            err.to_string().contains("another configuration (view_bank: 3 -> 2)"),
            "{err}"
        );
        let live = TrainConfig {
            view_bank: 0,
            ..config.clone()
        };
        let err = Trainer::new(live, &cache, &root.join("c"), teacher()).err().unwrap();
        assert!(err.to_string().contains("(view_bank: 3 -> unset)"), "{err}");
        // A bank that does not fit the caches (another view count) is refused.
        let err = ViewBank::load_or_build(&file, &resumed.caches, &check, 2, config.seed, config.view_recipe())
            .err()
            .unwrap();
        assert!(err.to_string().contains("does not fit"), "{err}");
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_degraded_drop_scales_the_degraded_rows_and_needs_their_clean_crops() {
        let (root, cache) = scratch("normgate-train-drop-");
        let config = tiny_run(&cache);
        for (drop, why) in [(0.5, "at least 1"), (2.0, "names no clean crop")] {
            let wrong = TrainConfig {
                degraded_drop: drop,
                ..config.clone()
            };
            let err = Trainer::new(wrong, &cache, &root.join("a"), None).err().unwrap();
            assert!(err.to_string().contains(why), "{err}");
        }
        // The same batch without and with factors of 1/4, on cached crops and
        // on live views (whose targets the teacher makes after the draw).
        for augment in [0.0, 1.0] {
            let config = TrainConfig {
                augment,
                ..config.clone()
            };
            let teacher = (augment > 0.0).then(|| tiny_teacher(&root, 8));
            let mut trainer = Trainer::new(config, &cache, &root.join(format!("b{augment}")), teacher).unwrap();
            assert!(trainer.degraded_gains.is_empty());
            let crops = trainer.caches[DEGRADED].len();
            // The factor grows from 1 at the first step to its full value.
            for (step, factor) in [
                (0, 1.0),
                (DEGRADED_RAMP_STEPS / 2, 0.5),
                (DEGRADED_RAMP_STEPS * 2, 0.25),
            ] {
                trainer.step = step;
                trainer.degraded_gains.clear();
                let plain = trainer.batch().unwrap().1.to_vec2::<f32>().unwrap();
                trainer.degraded_gains = vec![0.25; crops];
                let scaled = trainer.batch().unwrap().1.to_vec2::<f32>().unwrap();
                // The degraded source's one row is the last; the others stay.
                let (last, others) = scaled.split_last().unwrap();
                assert_eq!(others, &plain[..plain.len() - 1], "augment {augment}, step {step}");
                for (s, p) in last.iter().zip(plain.last().unwrap()) {
                    assert!(
                        (s - p * factor).abs() <= 1e-6 * p.abs().max(1.0),
                        "step {step}: {s} against {p} x {factor}"
                    );
                }
            }
        }
        std::fs::remove_dir_all(root).unwrap();
    }
}
