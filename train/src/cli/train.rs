//! `train`, `train-detector` and `train-landmarks`: the three recipes,
//! each resumed from its run folder's checkpoint.

use std::path::PathBuf;

use anyhow::Result;
use normgate_train::backbone::network::ConvImpl;
use normgate_train::backbone::recipe::{BackboneSpec, TrainConfig};
use normgate_train::backbone::train::Trainer;
use normgate_train::data::views::TeacherViews;
use normgate_train::detector::train::{training_scenes, DetectorSet, DetectorTrainConfig, DetectorTrainer};
use normgate_train::landmarks::device_starts::DeviceStarts;
use normgate_train::landmarks::recipe::{PointLoss, RefinerSpec, RefinerTrainConfig};
use normgate_train::landmarks::train::RefinerTrainer;
use normgate_train::nn::optim::{Schedule, Training};

use super::threads;

#[derive(clap::Args, Debug)]
pub(crate) struct TrainArgs {
    /// Folder of the caches `prepare` wrote.
    #[arg(long, default_value = "cache")]
    cache: PathBuf,
    /// Run folder: checkpoint, config.json, log.jsonl.
    #[arg(long)]
    out: PathBuf,
    /// Optimisation steps.
    #[arg(long, default_value_t = TrainConfig::default().schedule.steps)]
    steps: u64,
    /// Peak learning rate.
    #[arg(long, default_value_t = TrainConfig::default().schedule.lr)]
    lr: f64,
    /// Weight of the A-Softmax heads (0: distillation only).
    #[arg(long, default_value_t = TrainConfig::default().head_weight)]
    head_weight: f64,
    /// Weight of the norm term of the distillation loss, `(ln|s| - ln|t|)²`.
    #[arg(long, default_value_t = TrainConfig::default().beta)]
    beta: f64,
    /// NormSelect before the heads (seed §3).
    #[arg(long)]
    norm_select: bool,
    /// Hard example mining: share of each head's rows kept (1 = off).
    #[arg(long, default_value_t = 1.0)]
    hem_keep: f32,
    /// Seed of weights, batches and flips.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Residual units of the three stages, e.g. 1,2,2 (default 1,1,1).
    #[arg(long, value_delimiter = ',')]
    units: Option<Vec<usize>>,
    /// Convolution ops: this crate's (fast) or candle's own (builtin, only to
    /// measure what the fast ones save).
    #[arg(long, value_enum, default_value = "fast")]
    conv: ConvImpl,
    /// Share of the crops seen as augmented views (moved, turned, rescaled,
    /// recoloured, blurred, JPEG), each with the teacher's live feature of it.
    #[arg(long, default_value_t = TrainConfig::default().augment)]
    augment: f64,
    /// The teacher embedder for augmented views.
    #[arg(long, default_value = "../shared/models/mobilefacenet_foamliu_fp32.onnx")]
    teacher: PathBuf,
    /// The teacher embedder's card.
    #[arg(long, default_value = "train/teachers/mobilefacenet.toml")]
    teacher_card: PathBuf,
    /// Keep this many fixed views per crop, their teacher features computed
    /// once before the first step (into the run folder), instead of a new
    /// view with a live teacher feature each time (0). Default: the recipe's
    /// bank with `--augment` above 0, none without.
    #[arg(long)]
    view_bank: Option<usize>,
    /// How many times as far as the teacher's (in log) a degraded crop's
    /// norm target falls below its clean crop's (1: the teacher's targets).
    #[arg(long, default_value_t = TrainConfig::default().degraded_drop)]
    degraded_drop: f64,
    /// Chance that an augmented view is blended with a view of another crop
    /// of its class (any crop of the unlabelled sets), the teacher's feature
    /// of the blend its target. Default: the recipe's with `--augment`
    /// above 0, none without.
    #[arg(long)]
    mixup: Option<f64>,
    /// Chance that an augmented view is also degraded (blur, downscaling,
    /// noise, darkening or occlusion of a random severity), the teacher's
    /// feature of the degraded view its target.
    #[arg(long, default_value_t = TrainConfig::default().view_degrade)]
    view_degrade: f64,
    /// Exponent on the cosine between the teacher's feature of an augmented
    /// view (or degraded crop) and of its crop (clean crop): the view's norm
    /// target is scaled by that power, so views the damage moved far fall
    /// low (0: the teacher's targets).
    #[arg(long, default_value_t = TrainConfig::default().moved_drop)]
    moved_drop: f64,
}

#[derive(clap::Args, Debug)]
pub(crate) struct TrainDetectorArgs {
    /// The shared data folder (the pseudo-labelled images).
    #[arg(long, default_value = "../shared/data")]
    data: PathBuf,
    /// The shared samples folder (non-face backgrounds).
    #[arg(long, default_value = "../shared/samples")]
    samples: PathBuf,
    /// Folder of the caches (`detector_labels.jsonl`, `glint24`).
    #[arg(long, default_value = "cache")]
    cache: PathBuf,
    /// Run folder: checkpoint, config.json, log.jsonl.
    #[arg(long)]
    out: PathBuf,
    /// Optimisation steps.
    #[arg(long, default_value_t = DetectorTrainConfig::default().schedule.steps)]
    steps: u64,
    /// Images per step.
    #[arg(long, default_value_t = DetectorTrainConfig::default().batch)]
    batch: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = DetectorTrainConfig::default().schedule.lr)]
    lr: f64,
    /// Seed of weights and batches.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Threads that decode the images at start (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Convolution ops: this crate's (fast) or candle's own (builtin, only to
    /// measure what the fast ones save).
    #[arg(long, value_enum, default_value = "fast")]
    conv: ConvImpl,
}

#[derive(clap::Args, Debug)]
pub(crate) struct TrainLandmarksArgs {
    /// The shared data folder (the pseudo-labelled images).
    #[arg(long, default_value = "../shared/data")]
    data: PathBuf,
    /// Folder of the caches (`detector_labels.jsonl`).
    #[arg(long, default_value = "cache")]
    cache: PathBuf,
    /// Run folder: checkpoint, config.json, log.jsonl.
    #[arg(long)]
    out: PathBuf,
    /// Optimisation steps.
    #[arg(long, default_value_t = RefinerTrainConfig::default().schedule.steps)]
    steps: u64,
    /// Crops per step.
    #[arg(long, default_value_t = RefinerTrainConfig::default().batch)]
    batch: usize,
    /// Side of the square input crop, pixels (a multiple of 16).
    #[arg(long, default_value_t = RefinerTrainConfig::default().network.input)]
    input: usize,
    /// Residual units of the three stages, e.g. 2,2,2 (default 1,1,1).
    #[arg(long, value_delimiter = ',')]
    units: Option<Vec<usize>>,
    /// Peak learning rate.
    #[arg(long, default_value_t = RefinerTrainConfig::default().schedule.lr)]
    lr: f64,
    /// What the crop is cut around: the detected box (a first reading) or
    /// the points found so far (a second reading, the card's `next`).
    #[arg(long, value_enum, default_value = "box")]
    crop: normgate::card::RefinerCrop,
    /// Landmark crops: how far the starting points stray, as a share of the eyes' distance.
    #[arg(long, default_value_t = RefinerTrainConfig::default().start_noise)]
    start_noise: f32,
    /// Landmark crops: scale the aligned square by this (below 1: the face
    /// fills more of the input, the eyes 0.35 / S of the side apart).
    #[arg(long, default_value_t = RefinerTrainConfig::default().aligned_side)]
    aligned_side: f32,
    /// Share of crops cut at a low resolution and scaled up (as small faces look).
    #[arg(long, default_value_t = RefinerTrainConfig::default().low_res)]
    low_res: f32,
    /// Box crops: turn half of them by up to this many degrees either way
    /// about the box's centre, for faces rolled in the frame.
    #[arg(long, default_value_t = RefinerTrainConfig::default().roll)]
    roll: f32,
    /// Draw each non-frontal face (eyes closer than 0.4 of the box's width)
    /// this many times as often as a frontal one.
    #[arg(long, default_value_t = RefinerTrainConfig::default().pose_balance)]
    pose_balance: usize,
    /// Wing loss on the points (width,epsilon in input pixels, e.g. 4,1)
    /// instead of smooth-L1.
    #[arg(long, value_delimiter = ',')]
    wing: Option<Vec<f32>>,
    /// Start from this finished refiner run's weights, or from a refiner
    /// model file `export` wrote (same --input and --units), with a fresh
    /// schedule of --steps: a warm restart.
    #[arg(long)]
    warm_start: Option<PathBuf>,
    /// Landmark crops: the reading before this one (e.g. models/refiner.onnx;
    /// its card's next is not followed). With the start detector it runs on
    /// every training image once, and its points on each face start a share
    /// of the crops, so this reading learns to correct the errors it makes.
    #[arg(long)]
    start_reading: Option<PathBuf>,
    /// The detector whose boxes the start reading reads [default: models/detector.onnx].
    #[arg(long, requires = "start_reading")]
    start_detector: Option<PathBuf>,
    /// Share of the crops cut around the start reading's points [default: 0.5].
    #[arg(long, requires = "start_reading")]
    device_start_share: Option<f32>,
    /// Seed of weights and batches.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Threads that decode the images at start (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
}

pub(crate) fn backbone(args: TrainArgs) -> Result<()> {
    let defaults = TrainConfig::default();
    let config = TrainConfig {
        schedule: steps_and_rate(defaults.schedule, args.steps, args.lr),
        head_weight: args.head_weight,
        beta: args.beta,
        norm_select: args.norm_select,
        hem_keep: args.hem_keep,
        seed: args.seed,
        augment: args.augment,
        view_bank: TrainConfig::view_bank_for(args.augment, args.view_bank),
        degraded_drop: args.degraded_drop,
        mixup: TrainConfig::mixup_for(args.augment, args.mixup),
        view_degrade: args.view_degrade,
        moved_drop: args.moved_drop,
        backbone: BackboneSpec {
            units: stage_units(args.units.as_deref(), defaults.backbone.units)?,
            ..defaults.backbone
        },
        ..defaults
    };
    let teacher = if args.augment > 0.0 {
        Some(TeacherViews::load(&args.teacher, &args.teacher_card)?)
    } else {
        None
    };
    let start = std::time::Instant::now();
    drive_to_end(
        &mut Trainer::with_conv(config, &args.cache, &args.out, teacher, args.conv)?,
        &args.out,
        start,
    )
}

/// A recipe's schedule with the run's number of steps and peak learning rate.
fn steps_and_rate(recipe: Schedule, steps: u64, lr: f64) -> Schedule {
    Schedule { steps, lr, ..recipe }
}

/// The `--units` option: three residual-unit counts, or the recipe's.
fn stage_units(given: Option<&[usize]>, default: [usize; 3]) -> Result<[usize; 3]> {
    match given {
        Some(&[a, b, c]) => Ok([a, b, c]),
        Some(other) => anyhow::bail!("--units takes three counts, not {other:?}"),
        None => Ok(default),
    }
}

/// Runs a training to its end and says what it did.
fn drive_to_end(run: &mut impl Training, out: &std::path::Path, start: std::time::Instant) -> Result<()> {
    let first = run.progress().position;
    normgate_train::nn::optim::drive(run, out)?;
    eprintln!(
        "trained steps {first}..{} in {:.0} s; checkpoint in {}",
        run.progress().position,
        start.elapsed().as_secs_f64(),
        out.display()
    );
    Ok(())
}

pub(crate) fn detector(args: TrainDetectorArgs) -> Result<()> {
    let start = std::time::Instant::now();
    let set = DetectorSet::load(&args.data, &args.cache, &args.samples, threads(args.threads))?;
    eprintln!(
        "{} training images, {} Glint24 faces, {} backgrounds loaded in {:.0} s",
        set.scenes.len(),
        set.faces.len(),
        set.backgrounds.len(),
        start.elapsed().as_secs_f64()
    );
    let defaults = DetectorTrainConfig::default();
    let config = DetectorTrainConfig {
        schedule: steps_and_rate(defaults.schedule, args.steps, args.lr),
        batch: args.batch,
        seed: args.seed,
        ..defaults
    };
    drive_to_end(
        &mut DetectorTrainer::with_conv(config, set, &args.out, args.conv)?,
        &args.out,
        start,
    )
}

pub(crate) fn landmarks(args: TrainLandmarksArgs) -> Result<()> {
    let start = std::time::Instant::now();
    let defaults = RefinerTrainConfig::default();
    let config = RefinerTrainConfig {
        network: RefinerSpec {
            input: args.input,
            units: stage_units(args.units.as_deref(), defaults.network.units)?,
            ..defaults.network
        },
        schedule: steps_and_rate(defaults.schedule, args.steps, args.lr),
        batch: args.batch,
        seed: args.seed,
        crop: args.crop,
        start_noise: args.start_noise,
        aligned_side: args.aligned_side,
        low_res: args.low_res,
        roll: args.roll,
        pose_balance: args.pose_balance,
        loss: match args.wing.as_deref() {
            Some(&[width, epsilon]) => PointLoss::Wing { width, epsilon },
            Some(_) => anyhow::bail!("--wing takes two values: width,epsilon"),
            None => PointLoss::SmoothL1,
        },
        warm_start: args.warm_start,
        device_starts: args.start_reading.map(|reading| DeviceStarts {
            detector: args.start_detector.unwrap_or_else(|| "models/detector.onnx".into()),
            reading,
            share: args.device_start_share.unwrap_or(0.5),
        }),
        ..defaults
    };
    config.check()?;
    let scenes = training_scenes(&args.data, &args.cache, threads(args.threads))?;
    let mut trainer = RefinerTrainer::new(config, scenes, &args.out)?;
    let (faces, non_frontal) = trainer.faces();
    eprintln!(
        "{faces} teacher faces to train on ({non_frontal} non-frontal, each drawn {}x), loaded in {:.0} s",
        args.pose_balance,
        start.elapsed().as_secs_f64()
    );
    drive_to_end(&mut trainer, &args.out, start)
}
