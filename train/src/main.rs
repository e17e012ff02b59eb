//! `normgate-train`: host tools of normgate.

mod curation_cli;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use normgate_train::backbone::{BackboneConfig, ConvImpl};
use normgate_train::bench;
use normgate_train::detector_train::{
    calibration_frames, training_scenes, DetectorSet, DetectorTrainConfig, DetectorTrainer,
};
use normgate_train::device_starts::DeviceStarts;
use normgate_train::eval;
use normgate_train::landmark_train::{PointLoss, RefinerSpec, RefinerTrainConfig, RefinerTrainer};
use normgate_train::optim::{Schedule, Training};
use normgate_train::prepare;
use normgate_train::train::{BackboneSpec, TrainConfig, Trainer};
use normgate_train::views::TeacherViews;

/// Host tools of normgate: training, export, quantization, curation, evaluation.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Detect, align and label the shared face data and cache it with the
    /// teacher's features (resumes: existing caches are kept unless --force).
    Prepare(PrepareArgs),
    /// Train the backbone (concat A-Softmax heads + distillation); resumes
    /// from the run folder's checkpoint.
    Train(TrainArgs),
    /// Train the face detector on the teacher's pseudo-labels and Glint24
    /// composites; resumes from the run folder's checkpoint.
    TrainDetector(TrainDetectorArgs),
    /// Train the landmark refiner on the teacher's five points (crops
    /// around moved teacher boxes); resumes from the run folder's checkpoint.
    TrainLandmarks(TrainLandmarksArgs),
    /// Pseudo-labels for the detector: the teacher detector's faces on every
    /// LFW and CelebA image, with a validation split by identity.
    PseudoLabel {
        #[command(flatten)]
        teacher: TeacherArgs,
        /// Threads (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
        /// Label only the first N images (a quick check; write to another --out).
        #[arg(long)]
        limit: Option<usize>,
        /// Print one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Duplicate identities between two classifier heads (or within one)
    /// from their weight rows: pairs.tsv, groups.tsv and a merged classmap.tsv.
    Dedup(DedupArgs),
    /// Feature norms of the main face of every image in a folder tree (the
    /// device's detector, aligner and embedder): norms.tsv, histogram.png,
    /// thresholds for drop rates, and optionally the images below a threshold.
    Norms(NormsArgs),
    /// The label maps of concat training for several <class>/<image> data
    /// sets, with identities merged from a dedup pairs.tsv: classmap.tsv.
    Classmap {
        /// A data set as NAME=FOLDER (repeat, in head order).
        #[arg(long = "set", required = true, value_parser = parse_set)]
        sets: Vec<(String, PathBuf)>,
        /// A dedup pairs.tsv whose name_a/name_b columns name classes of two sets.
        #[arg(long)]
        pairs: Option<PathBuf>,
        /// The sets the pairs' name_a and name_b belong to (default: the
        /// first two sets, or the only one for duplicates within a set).
        #[arg(long, value_delimiter = ',')]
        between: Option<Vec<String>>,
        /// The classmap.tsv to write.
        #[arg(long)]
        out: PathBuf,
        /// Print one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    #[command(flatten)]
    Curation(curation_cli::Curation),
    /// Quantize an exported float model to int8 (per-channel weights,
    /// activation ranges calibrated on aligned training crops).
    Quantize {
        /// The float .onnx (its card beside it).
        #[arg(long)]
        model: PathBuf,
        /// The int8 .onnx to write (the card is copied beside it).
        #[arg(long)]
        out: PathBuf,
        /// Graph form: qdq or qoperator.
        #[arg(long, value_enum, default_value = "qdq")]
        format: normgate_train::quantize::Format,
        /// Activation ranges from min/max, or from this percentile at each end (e.g. 99.99).
        #[arg(long)]
        percentile: Option<f64>,
        /// Calibration inputs: crops spread evenly over the Glint24 training
        /// cache (a backbone), or frames over the detector's training split (a detector).
        #[arg(long, default_value_t = 256)]
        crops: usize,
        /// Folder of the caches `prepare` and `pseudo-label` wrote.
        #[arg(long, default_value = "cache")]
        cache: PathBuf,
        /// The shared data folder (a detector's calibration frames).
        #[arg(long, default_value = "../shared/data")]
        data: PathBuf,
        /// Print one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Export a training run's backbone or detector to ONNX (with its card)
    /// and check the file against the training framework on cached crops or frames.
    Export {
        /// The training run folder.
        #[arg(long)]
        run: PathBuf,
        /// The .onnx file to write (the card goes beside it).
        #[arg(long)]
        out: PathBuf,
        /// Folder of the caches `prepare` and `pseudo-label` wrote (inputs for the check).
        #[arg(long, default_value = "cache")]
        cache: PathBuf,
        /// The shared data folder (a detector's check frames).
        #[arg(long, default_value = "../shared/data")]
        data: PathBuf,
        /// A box refiner's card names this landmark refiner (a file beside
        /// it) as the one that reads its points again (the card's `next`).
        #[arg(long)]
        next: Option<PathBuf>,
        /// Print one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Measure a model with the evaluation protocols.
    Eval {
        #[command(subcommand)]
        what: EvalCommand,
    },
    /// Benchmarks (results on stdout, progress on stderr).
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
}

/// The shared data, the teacher models and their cards, and where caches go.
#[derive(clap::Args, Debug)]
struct TeacherArgs {
    /// The shared data folder (glint24, celeba_wild, lfw).
    #[arg(long, default_value = "../shared/data")]
    data: PathBuf,
    /// Folder of the teacher models.
    #[arg(long, default_value = "../shared/models")]
    models: PathBuf,
    /// Folder of the teacher model cards.
    #[arg(long, default_value = "train/teachers")]
    cards: PathBuf,
    /// Where the caches go.
    #[arg(long, default_value = "cache")]
    out: PathBuf,
}

impl TeacherArgs {
    /// The teacher detector's model and card.
    fn detector(&self) -> (PathBuf, PathBuf) {
        teacher_detector(&self.models, &self.cards)
    }
}

/// The teacher detector's model and card in these folders.
fn teacher_detector(models: &Path, cards: &Path) -> (PathBuf, PathBuf) {
    (
        models.join("retinaface_mnet025_opset13.onnx"),
        cards.join("retinaface_mnet025.toml"),
    )
}

#[derive(clap::Args, Debug)]
struct PrepareArgs {
    #[command(flatten)]
    teacher: TeacherArgs,
    /// Rebuild caches that exist.
    #[arg(long)]
    force: bool,
    /// Seed of the training degradations.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Use at most this many images per data set (a quick check; write to another --out).
    #[arg(long)]
    limit: Option<usize>,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
struct TrainArgs {
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
struct TrainDetectorArgs {
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
struct TrainLandmarksArgs {
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

#[derive(clap::Args, Debug)]
struct NormsArgs {
    /// The folder tree of images (jpg, png).
    root: PathBuf,
    #[command(flatten)]
    models: curation_cli::ModelFlags,
    /// The images are crops already on the embedder's template (or ArcFace
    /// 112x112 crops for a SphereFace embedder): no detection.
    #[arg(long)]
    aligned: bool,
    /// Shares of faces to drop, each giving a threshold.
    #[arg(long, value_delimiter = ',', default_value = "0.05,0.1,0.2")]
    drop_rates: Vec<f64>,
    /// Also list the images whose norm is below this threshold (below.txt).
    #[arg(long)]
    list_below: Option<f32>,
    /// Also write contact.png: the N lowest-norm faces above, the N highest below.
    #[arg(long)]
    contact_sheet: Option<usize>,
    /// TrueType font for the histogram's labels (none drawn when absent).
    #[arg(long, default_value = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")]
    font: PathBuf,
    #[command(flatten)]
    output: curation_cli::OutputFlags,
}

#[derive(clap::Args, Debug)]
struct DedupArgs {
    /// First weight matrix: .npy, .safetensors, or a training run folder.
    a: PathBuf,
    /// Second weight matrix; without it, duplicates within the first.
    b: Option<PathBuf>,
    /// Tensor of the first file to use, when it holds several.
    #[arg(long)]
    tensor_a: Option<String>,
    /// Tensor of the second file to use, when it holds several.
    #[arg(long)]
    tensor_b: Option<String>,
    /// Class names of the first matrix, one per line.
    #[arg(long)]
    names_a: Option<PathBuf>,
    /// Class names of the second matrix, one per line.
    #[arg(long)]
    names_b: Option<PathBuf>,
    /// Cosine above which two rows are one identity.
    #[arg(long, default_value_t = 0.5)]
    threshold: f32,
    /// Keep only each row's k most similar rows above the threshold.
    #[arg(long)]
    top_k: Option<usize>,
    /// Rows per block (one block x block tile per thread in memory).
    #[arg(long, default_value_t = 256)]
    block: usize,
    /// Threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Output folder.
    #[arg(long)]
    out: PathBuf,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

/// Which model to evaluate, and on what.
#[derive(clap::Args, Debug)]
struct ModelArgs {
    /// `teacher` (LFW only: its cached features), a training run folder, or an .onnx model.
    #[arg(long)]
    model: String,
    /// The .onnx model's card (default: beside the model).
    #[arg(long)]
    card: Option<PathBuf>,
    /// The shared data folder.
    #[arg(long, default_value = "../shared/data")]
    data: PathBuf,
    /// Folder of the caches `prepare` wrote.
    #[arg(long, default_value = "cache")]
    cache: PathBuf,
}

/// `eval detector`'s arguments.
#[derive(clap::Args, Debug)]
struct EvalDetectorArgs {
    /// The detector .onnx (card beside it).
    #[arg(long)]
    model: PathBuf,
    /// The shared data folder.
    #[arg(long, default_value = "../shared/data")]
    data: PathBuf,
    /// Folder of the caches (`detector_labels.jsonl`, `lfw_pairs`).
    #[arg(long, default_value = "cache")]
    cache: PathBuf,
    /// Backbone for the end-to-end LFW comparison (`none` skips it).
    #[arg(long, default_value = "models/backbone.onnx")]
    backbone: String,
    /// Landmark refiner run after the detector (`none`: the detector's landmarks).
    #[arg(long, default_value = "models/refiner.onnx")]
    refiner: PathBuf,
    /// Move each validation image this many pixels right and down on a
    /// grey canvas before detecting (landmarks mapped back): how stable
    /// a detector's landmarks are against the face's place on its anchor grid.
    #[arg(long, default_value_t = 0)]
    shift: u32,
    /// Smallest face score kept (the device's default).
    #[arg(long, default_value_t = normgate::detector::DetectParams::default().score_threshold)]
    score_threshold: f32,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
    /// Write the recommended gate threshold (the 10th percentile of LFW
    /// norms on the crops this detector aligned) into the backbone's card.
    #[arg(long)]
    update_card: bool,
    /// Also write every reference face's outcome to this JSON-lines file
    /// (image, boxes, both sets of points, NME), the worst found first.
    #[arg(long)]
    faces: Option<PathBuf>,
    /// Also measure the landmarks against the teacher detector's points
    /// averaged over four placements of each image (moved 0, 2, 4, 6 px):
    /// how much of the error is the teacher's own jitter on its anchor grid.
    #[arg(long)]
    averaged_reference: bool,
    /// Folder of the teacher models (for --averaged-reference).
    #[arg(long, default_value = "../shared/models")]
    teacher_models: PathBuf,
    /// Folder of the teacher model cards (for --averaged-reference).
    #[arg(long, default_value = "train/teachers")]
    teacher_cards: PathBuf,
}

/// `eval heldout`'s arguments.
#[derive(clap::Args, Debug)]
struct EvalHeldoutArgs {
    /// The device's detector .onnx (card beside it).
    #[arg(long, default_value = "models/detector.onnx")]
    detector: PathBuf,
    /// Landmark refiner run after the detector (`none`: the detector's landmarks).
    #[arg(long, default_value = "models/refiner.onnx")]
    refiner: PathBuf,
    /// The backbone: a training run folder or an .onnx (card beside it).
    #[arg(long, default_value = "models/backbone.onnx")]
    backbone: String,
    /// The shared data folder.
    #[arg(long, default_value = "../shared/data")]
    data: PathBuf,
    /// Folder of the caches `prepare` wrote (`celeba_heldout`, `lfw_pairs`).
    #[arg(long, default_value = "cache")]
    cache: PathBuf,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand, Debug)]
enum EvalCommand {
    /// The device's whole chain beside the teacher's on the held-out split
    /// (CelebA's held-out people, LFW's pairs without Glint24's people):
    /// the server's failures removed by dropping pairs on each chain's norm,
    /// against random and blur dropping; each chain's own accuracy; faces
    /// found where the teacher finds one.
    Heldout(EvalHeldoutArgs),
    /// A dedup result against known duplicate identities: precision and
    /// recall over thresholds, average precision, a PR curve PNG.
    Dedup(curation_cli::EvalDedupArgs),
    /// A detector against the teacher's pseudo-labels on the validation
    /// split (recall by size, landmark NME), false positives on non-face
    /// images, and LFW through its landmarks against the teacher's.
    Detector(EvalDetectorArgs),
    /// Quality protocols: EDC on LFW (norm against random and blur
    /// discard), degradation ranking, face versus non-face AUROC. Prints JSON.
    Quality {
        #[command(flatten)]
        on: ModelArgs,
        /// Crops to degrade.
        #[arg(long, default_value_t = 200)]
        images: usize,
        /// The cache whose crops are degraded: glint24 (the protocol's,
        /// training faces), lfw_pairs or celeba_heldout (faces no training saw).
        #[arg(long, default_value = "glint24", value_parser = ["glint24", "lfw_pairs", "celeba_heldout"])]
        degrade_from: String,
    },
    /// Agreement of a model with a reference on the LFW crops: mean cosine
    /// of features, Spearman of norms (e.g. int8 against its fp32 export). Prints JSON.
    Compare {
        #[command(flatten)]
        on: ModelArgs,
        /// The reference model (a run folder or an .onnx with its card beside it).
        #[arg(long)]
        reference: String,
    },
    /// LFW 10-fold verification: mean accuracy, std, ROC AUC.
    Lfw {
        #[command(flatten)]
        on: ModelArgs,
        /// Sum each image's feature with its mirror image's.
        #[arg(long)]
        flip: bool,
        /// Print one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// Wall time and peak memory of dedup on random unit rows (e.g. the
    /// seed's sizes: 8631 x 78892, or 78892 within one head; 512-d).
    Dedup {
        /// Rows of the first matrix.
        #[arg(long)]
        rows_a: usize,
        /// Rows of the second matrix; without it, within the first.
        #[arg(long)]
        rows_b: Option<usize>,
        /// Values per row.
        #[arg(long, default_value_t = 512)]
        dim: usize,
        /// Threads (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
        /// Print one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Per-crop embedding time of model files with tract, side by side.
    Embed {
        /// The .onnx files (cards beside them); times are relative to the first.
        #[arg(long, value_delimiter = ',', required = true)]
        models: Vec<PathBuf>,
        /// Crops per round, from the Glint24 cache.
        #[arg(long, default_value_t = 64)]
        crops: usize,
        /// Crops per run of the model.
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Timed rounds (the median is reported).
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Folder of the caches `prepare` wrote.
        #[arg(long, default_value = "cache")]
        cache: PathBuf,
        /// Print one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Training steps of the shipped backbone (or detector): this crate's
    /// convolution ops against candle's built-in ones, interleaved, per thread count.
    Step {
        /// The architecture trained.
        #[arg(long, value_enum, default_value = "backbone")]
        network: bench::Network,
        /// Images per step.
        #[arg(long, default_value_t = 64)]
        batch: usize,
        /// Timed steps per path and thread count (the median is reported).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Thread counts to measure, each in its own process.
        #[arg(long, value_delimiter = ',', default_value = "2,1")]
        threads: Vec<usize>,
        /// Print one JSON object on stdout.
        #[arg(long)]
        json: bool,
        /// Internal: measure in this process and print its JSON.
        #[arg(long, hide = true)]
        worker: bool,
    },
}

/// What `bench step` measures.
struct StepArgs<'a> {
    network: bench::Network,
    batch: usize,
    rounds: usize,
    threads: &'a [usize],
    json: bool,
    worker: bool,
}

fn bench_step(a: StepArgs) -> Result<()> {
    let (network, batch, rounds) = (a.network, a.batch, a.rounds);
    if a.worker {
        println!("{}", serde_json::to_string(&bench::worker(network, batch, rounds)?)?);
        return Ok(());
    }
    let results = bench::run(network, a.threads, batch, rounds)?;
    let (architecture, parameters) = match network {
        bench::Network::Backbone => {
            let c = BackboneConfig::SHIPPED;
            (serde_json::to_value(c)?, c.parameters())
        }
        bench::Network::Detector => {
            let c = normgate_train::facenet::DetectorConfig::SHIPPED;
            (serde_json::to_value(c)?, c.parameters())
        }
    };
    let first = &results[0];
    if a.json {
        let out = serde_json::json!({
            "img_per_s": first.fast.img_per_s,
            "baseline_img_per_s": first.builtin.img_per_s,
            "forward_gflops": first.forward_gflops,
            "threads": first.threads,
            "batch": batch,
            "network": network,
            "architecture": architecture,
            "parameters": parameters,
            "forward_flops_per_image": network.forward_flops(),
            "runs": results,
        });
        println!("{out}");
    } else {
        println!(
            "{network:?}: {parameters} parameters, {:.3} GFLOP per training image; batch {batch}",
            network.forward_flops() as f64 / 1e9
        );
        for r in &results {
            println!(
                "{} thread(s): fast {:.1} img/s (backward {:.2}x forward), built-in {:.1} img/s (backward {:.2}x forward): {:.2}x; forward {:.1} GFLOP/s",
                r.threads,
                r.fast.img_per_s,
                r.fast.backward_over_forward,
                r.builtin.img_per_s,
                r.builtin.backward_over_forward,
                r.speedup,
                r.forward_gflops
            );
        }
    }
    Ok(())
}

fn prepare_data(args: PrepareArgs) -> Result<()> {
    let PrepareArgs {
        teacher,
        force,
        seed,
        limit,
        json,
    } = args;
    let inputs = prepare::Inputs {
        detector: teacher.detector(),
        embedder: (
            teacher.models.join("mobilefacenet_foamliu_fp32.onnx"),
            teacher.cards.join("mobilefacenet.toml"),
        ),
        data: teacher.data,
        limit,
    };
    let out = teacher.out;
    let start = std::time::Instant::now();
    let caches = prepare::run(&inputs, &out, force, seed)?;
    let seconds = start.elapsed().as_secs_f64();
    if json {
        println!("{}", serde_json::json!({ "caches": caches, "seconds": seconds }));
    } else {
        for c in &caches {
            let how = if c.reused { "kept" } else { "built" };
            println!(
                "{:<10} {how}: {} crops, {} without a detected face, {} unreadable",
                c.name, c.crops, c.no_face, c.unreadable
            );
        }
        println!("{seconds:.0} s");
    }
    Ok(())
}

fn train(args: TrainArgs) -> Result<()> {
    let defaults = TrainConfig::default();
    let config = TrainConfig {
        schedule: Schedule {
            steps: args.steps,
            lr: args.lr,
            ..defaults.schedule
        },
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
    normgate_train::optim::drive(run, out)?;
    eprintln!(
        "trained steps {first}..{} in {:.0} s; checkpoint in {}",
        run.progress().position,
        start.elapsed().as_secs_f64(),
        out.display()
    );
    Ok(())
}

fn train_detector(args: TrainDetectorArgs) -> Result<()> {
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
        schedule: Schedule {
            steps: args.steps,
            lr: args.lr,
            ..defaults.schedule
        },
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

fn train_landmarks(args: TrainLandmarksArgs) -> Result<()> {
    let start = std::time::Instant::now();
    let defaults = RefinerTrainConfig::default();
    let config = RefinerTrainConfig {
        network: RefinerSpec {
            input: args.input,
            units: stage_units(args.units.as_deref(), defaults.network.units)?,
            ..defaults.network
        },
        schedule: Schedule {
            steps: args.steps,
            lr: args.lr,
            ..defaults.schedule
        },
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

fn export(
    run: &std::path::Path,
    out: &std::path::Path,
    cache: &std::path::Path,
    data: &std::path::Path,
    next: Option<PathBuf>,
    json: bool,
) -> Result<()> {
    use normgate_train::export::{export_detector_run, export_refiner_run, export_run, refiner_card};
    use normgate_train::optim::read_config;
    let refiner = read_config::<RefinerTrainConfig>(run).ok();
    if next.is_some()
        && refiner
            .as_ref()
            .is_none_or(|c| c.crop != normgate::card::RefinerCrop::Box)
    {
        anyhow::bail!("--next is for box refiner runs: {} is not one", run.display());
    }
    let check = if let Ok(config) = read_config::<DetectorTrainConfig>(run) {
        let card = normgate_train::export::detector_card(&config.network, config.anchor_sizes);
        export_detector_run(run, out, &calibration_frames(data, cache, 16, &card)?)?
    } else if let Some(config) = refiner {
        let card = refiner_card(&config.network.config(), config.crop, config.card_expand());
        export_refiner_run(run, out, &calibration_frames(data, cache, 16, &card)?, next)?
    } else {
        export_run(run, out, &prepare::Cache::load(cache, "lfw_train")?, 256)?
    };
    if check.max_rel_diff > 1e-4 {
        anyhow::bail!(
            "tract's output on {} differs from the training framework's: {check:?}",
            out.display()
        );
    }
    print_report(json, &check, |c| {
        format!(
            "{}: tract vs candle on {} crops: max |diff| {:.2e}, relative {:.2e}",
            out.display(),
            c.crops,
            c.max_abs_diff,
            c.max_rel_diff
        )
    })
}

fn eval_heldout(args: EvalHeldoutArgs) -> Result<()> {
    let backbone = eval::Model::parse(&args.backbone, None)?;
    let locator = normgate::landmarks::Locator::load(&args.detector, &args.refiner)?;
    let names = [&args.detector, &args.refiner].map(|p| p.display().to_string());
    let r = normgate_train::heldout_eval::evaluate((&locator, names), &backbone, &args.data, &args.cache)?;
    print_report(args.json, &r, |r| {
        let lines: Vec<String> = r
            .sets
            .iter()
            .map(|s| {
                let removed = |c: &normgate_train::heldout_eval::ChainFigures| {
                    c.server_failures_removed
                        .iter()
                        .map(|p| {
                            format!(
                                "{} % {:.0}/{:.0}/{:.0}",
                                p.discard_percent,
                                100.0 * p.by_norm,
                                100.0 * p.by_random,
                                100.0 * p.by_blur
                            )
                        })
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                format!(
                    "{}: {} pairs, faces found {}/{} where the teacher finds one ({} images); accuracy teacher {:.2} %, device {:.2} %; server failures removed (norm/random/blur), teacher: {}; device: {}",
                    s.set,
                    s.pairs,
                    s.device_found_where_teacher_found,
                    s.teacher_found,
                    s.images,
                    100.0 * s.teacher.accuracy,
                    100.0 * s.device.accuracy,
                    removed(&s.teacher),
                    removed(&s.device)
                )
            })
            .collect();
        lines.join("\n")
    })
}

fn eval_detector(args: EvalDetectorArgs) -> Result<()> {
    let backbone = match args.backbone.as_str() {
        "none" => None,
        spec => Some(eval::Model::parse(spec, None)?),
    };
    if args.update_card && !matches!(backbone, Some(eval::Model::Onnx(..))) {
        anyhow::bail!(
            "--update-card writes the backbone's card: give --backbone an .onnx model with its card beside it"
        );
    }
    let detector = normgate::landmarks::Locator::load(&args.model, &args.refiner)?;
    let params = normgate::detector::DetectParams {
        score_threshold: args.score_threshold,
        ..Default::default()
    };
    let teacher = if args.averaged_reference {
        let (model, card) = teacher_detector(&args.teacher_models, &args.teacher_cards);
        Some(normgate::landmarks::Locator {
            detector: normgate::detector::Detector::load(&model, &card)
                .with_context(|| format!("the teacher detector for --averaged-reference ({})", model.display()))?,
            refiner: None,
        })
    } else {
        None
    };
    let (r, faces) = normgate_train::detector_eval::evaluate(
        &detector,
        &args.data,
        &args.cache,
        &params,
        backbone.as_ref(),
        args.shift,
        teacher.as_ref(),
    )?;
    if let (true, Some(model), Some(e)) = (args.update_card, &backbone, &r.end_to_end) {
        eval::set_recommended_threshold(model, e.recommended_threshold as f32)?;
    }
    if let Some(path) = &args.faces {
        let lines: Vec<String> = faces.iter().map(serde_json::to_string).collect::<Result<_, _>>()?;
        std::fs::write(path, lines.join("\n") + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    print_report(args.json, &r, |r| {
        let buckets: Vec<String> = r
            .buckets
            .iter()
            .map(|b| {
                format!(
                    "{} px {:.3} ({}/{}) NME {:.1} % (median {:.1} %)",
                    b.short_side,
                    b.recall,
                    b.found,
                    b.faces,
                    100.0 * b.nme,
                    100.0 * b.nme_median
                )
            })
            .collect();
        let poses: Vec<String> = r
            .poses
            .iter()
            .map(|p| {
                format!(
                    "{} {}/{} NME {:.1} % (median {:.1} %)",
                    p.pose,
                    p.found,
                    p.faces,
                    100.0 * p.nme,
                    100.0 * p.nme_median
                )
            })
            .collect();
        let mut text = format!(
            "recall (>= 32 px) {:.4}, NME {:.2} % (median {:.2} %, 90th percentile {:.2} %), {:.3} false positives per non-face image ({} images); by size: {}; by pose: {}; {:.1} ms per image",
            r.recall,
            100.0 * r.nme,
            100.0 * r.nme_median,
            100.0 * r.nme_p90,
            r.fp_per_image,
            r.non_face_images,
            buckets.join(", "),
            poses.join(", "),
            r.ms_per_image
        );
        if let Some(e) = &r.end_to_end {
            text.push_str(&format!(
                "\nLFW with {}: teacher landmarks {:.2} %, this detector's {:.2} % ({:+.2} points, {} without a face); FNMR at 20 % norm discard {:.3} vs {:.3}; recommended threshold {:.3}",
                e.backbone,
                100.0 * e.teacher_landmarks.accuracy,
                100.0 * e.detector_landmarks.accuracy,
                e.accuracy_difference,
                e.no_face,
                e.teacher_landmarks.fnmr_norm_20,
                e.detector_landmarks.fnmr_norm_20,
                e.recommended_threshold
            ));
        }
        if let Some(a) = &r.averaged_reference {
            text.push_str(&format!(
                "\nagainst the teacher's points averaged over {:.2} readings: NME {:.2} % (median {:.2} %)",
                a.readings,
                100.0 * a.nme,
                100.0 * a.nme_median
            ));
        }
        text
    })
}

fn norms(args: NormsArgs) -> Result<()> {
    use normgate_train::norms;
    let models = args.models.load(args.aligned)?;
    let images = norms::images_under(&args.root)?;
    if images.is_empty() {
        anyhow::bail!("{} holds no jpg or png image", args.root.display());
    }
    let bar = prepare::progress(images.len(), "images");
    let measured = args
        .output
        .pool()?
        .install(|| norms::measure(&args.root, &images, &models, &|| bar.inc(1)));
    bar.finish_and_clear();
    let font = Some(args.font.as_path()).filter(|f| f.is_file());
    let out = &args.output.out;
    let s = norms::write_outputs(&measured, &args.drop_rates, args.list_below, font, out)?;
    if let Some(n) = args.contact_sheet {
        let sheet = norms::contact_sheet(&args.root, &measured, n, &models)?;
        sheet.save(out.join("contact.png"))?;
    }
    print_report(args.output.json, &s, |s| {
        let marks: Vec<String> = s
            .thresholds
            .iter()
            .map(|t| format!("drop {:.0} %: {:.3}", 100.0 * t.drop_rate, t.threshold))
            .collect();
        format!(
            "{} images, {} faces measured, {} without a norm; mean norm {:.3}; {}; outputs in {}",
            s.images,
            s.faces,
            s.failed,
            s.mean_norm,
            marks.join(", "),
            out.display()
        )
    })
}

fn parse_set(spec: &str) -> std::result::Result<(String, PathBuf), String> {
    match spec.split_once('=') {
        Some((name, dir)) if !name.is_empty() && !dir.is_empty() => Ok((name.into(), dir.into())),
        _ => Err(format!("{spec:?}: give a data set as NAME=PATH")),
    }
}

fn classmap(
    specs: &[(String, PathBuf)],
    pairs: Option<&std::path::Path>,
    between: Option<&[String]>,
    out: &std::path::Path,
    json: bool,
) -> Result<()> {
    use normgate_train::classmap;
    let sets = specs
        .iter()
        .map(|(name, dir)| classmap::load_set(name, dir))
        .collect::<Result<Vec<_>>>()?;
    let position = |name: &str| {
        sets.iter()
            .position(|s| s.name == name)
            .with_context(|| format!("--between names {name:?}, which no --set defines"))
    };
    let between = match between {
        Some([a, b]) => (position(a)?, position(b)?),
        Some(_) => anyhow::bail!("--between takes two set names"),
        None => (0, 1.min(sets.len() - 1)),
    };
    let pairs = pairs.map(classmap::read_pairs).transpose()?.unwrap_or_default();
    let merged = classmap::build(&sets, &pairs, between)?;
    let s = classmap::write(&sets, &merged, pairs.len(), out)?;
    print_report(json, &s, |s| {
        format!(
            "{} classes over {} sets, {} identities after {} duplicate pairs; written to {}",
            s.classes,
            s.sets.len(),
            s.merged_classes,
            s.pairs,
            out.display()
        )
    })
}

fn threads(requested: Option<usize>) -> usize {
    requested.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Prints a command's report: one JSON object with `--json`, else `text`.
fn print_report<T: serde::Serialize>(json: bool, report: &T, text: impl FnOnce(&T) -> String) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(report)?);
    } else {
        println!("{}", text(report));
    }
    Ok(())
}

fn dedup(args: DedupArgs) -> Result<()> {
    use normgate_train::dedup::{dedup, load_matrix};
    let a = load_matrix(&args.a, args.tensor_a.as_deref(), args.names_a.as_deref(), "a")?;
    let b = match &args.b {
        Some(path) => Some(load_matrix(
            path,
            args.tensor_b.as_deref(),
            args.names_b.as_deref(),
            "b",
        )?),
        None => None,
    };
    let config = normgate_core::dedup::ScanConfig {
        threshold: args.threshold,
        top_k: args.top_k,
        block: args.block,
    };
    let bar = prepare::progress(a.rows(), "rows");
    let r = dedup(&a, b.as_ref(), &config, threads(args.threads), &args.out, &|n| {
        bar.inc(n as u64)
    })?;
    bar.finish_and_clear();
    print_report(args.json, &r, |r| {
        format!(
            "{} pairs, {} groups, {} classes after merging ({:.1} s); {}/pairs.tsv, groups.tsv, classmap.tsv",
            r.pairs,
            r.groups,
            r.merged_classes,
            r.seconds,
            args.out.display()
        )
    })
}

fn bench_dedup(
    rows_a: usize,
    rows_b: Option<usize>,
    dim: usize,
    threads_wanted: Option<usize>,
    json: bool,
) -> Result<()> {
    use normgate_core::dedup::{Rows, ScanConfig};
    use normgate_train::dedup::{find_pairs, peak_memory, random_rows};
    let a = random_rows(rows_a, dim, 1);
    let b = rows_b.map(|n| random_rows(n, dim, 2));
    let ra = Rows::new(&a, dim)?;
    let rb = match &b {
        Some(b) => Some(Rows::new(b, dim)?),
        None => None,
    };
    let threads = threads(threads_wanted);
    let bar = prepare::progress(rows_a, "rows");
    let start = std::time::Instant::now();
    let pairs = find_pairs(&ra, rb.as_ref(), &ScanConfig::default(), threads, &|n| {
        bar.inc(n as u64)
    })?;
    let seconds = start.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let products = match rows_b {
        Some(n) => rows_a as f64 * n as f64,
        None => rows_a as f64 * (rows_a as f64 - 1.0) / 2.0,
    };
    let report = serde_json::json!({
        "rows_a": rows_a, "rows_b": rows_b, "dim": dim, "threads": threads, "seconds": seconds,
        "gflop_per_s": 2.0 * products * dim as f64 / seconds / 1e9,
        "peak_memory_bytes": peak_memory(), "pairs_above_0.5": pairs.len(),
    });
    if json {
        println!("{report}");
    } else {
        println!("{report:#}");
    }
    Ok(())
}

fn bench_embed(
    models: &[PathBuf],
    crops: usize,
    batch: usize,
    rounds: usize,
    cache: &std::path::Path,
    json: bool,
) -> Result<()> {
    let crops = training_crops(cache, crops)?;
    let timings = bench::embed(models, &crops, batch, rounds)?;
    if json {
        println!(
            "{}",
            serde_json::json!({ "batch": batch, "crops": crops.len(), "models": timings })
        );
    } else {
        for t in &timings {
            println!(
                "{:>8.3} ms/crop  x{:.2}  {:>9} bytes  {}",
                t.ms_per_crop, t.relative, t.bytes, t.model
            );
        }
    }
    Ok(())
}

/// `n` aligned 112x96 crops spread evenly over the Glint24 training cache.
fn training_crops(cache: &std::path::Path, n: usize) -> Result<Vec<image::RgbImage>> {
    let glint = prepare::Cache::load(cache, "glint24")?;
    Ok(glint.spread(n).map(|i| glint.sphereface_crop(i)).collect())
}

#[allow(clippy::too_many_arguments)]
fn quantize(
    model: &std::path::Path,
    out: &std::path::Path,
    format: normgate_train::quantize::Format,
    percentile: Option<f64>,
    crops: usize,
    cache: &std::path::Path,
    data: &std::path::Path,
    json: bool,
) -> Result<()> {
    use normgate_train::quantize::{quantize_file, Calibration};
    let method = match percentile {
        None => Calibration::MinMax,
        Some(p) if p > 50.0 && p <= 100.0 => Calibration::Percentile(p),
        Some(p) => anyhow::bail!("--percentile {p}: give a value in (50, 100], e.g. 99.99"),
    };
    let card = normgate::card::ModelCard::load(&normgate::card::ModelCard::path_for(model))?;
    let inputs = if card.detector.is_some() {
        calibration_frames(data, cache, crops, &card)?
    } else {
        training_crops(cache, crops)?
    };
    let r = quantize_file(model, out, format, method, &inputs)?;
    print_report(json, &r, |r| {
        format!(
            "{}: {:?}, {} on {} crops, {} -> {} bytes",
            out.display(),
            r.format,
            r.calibration,
            r.calibration_crops,
            r.float_bytes,
            r.int8_bytes
        )
    })
}

fn main() -> ExitCode {
    normgate_train::keep_freed_memory();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let result = match Cli::parse().command {
        Command::Prepare(args) => prepare_data(args),
        Command::Train(args) => train(args),
        Command::TrainDetector(args) => train_detector(args),
        Command::TrainLandmarks(args) => train_landmarks(args),
        Command::Export {
            run,
            out,
            cache,
            data,
            next,
            json,
        } => export(&run, &out, &cache, &data, next, json),
        Command::Dedup(args) => dedup(args),
        Command::Norms(args) => norms(args),
        Command::Curation(command) => curation_cli::run(command),
        Command::Eval {
            what: EvalCommand::Dedup(args),
        } => curation_cli::eval_dedup(args),
        Command::Classmap {
            sets,
            pairs,
            between,
            out,
            json,
        } => classmap(&sets, pairs.as_deref(), between.as_deref(), &out, json),
        Command::PseudoLabel {
            teacher,
            threads: wanted,
            limit,
            json,
        } => (|| {
            let (model, card) = teacher.detector();
            let detector = normgate::detector::Detector::load(&model, &card)?;
            let (data, out) = (&teacher.data, &teacher.out);
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template("{pos} images {elapsed} {per_sec}").expect("a valid template"),
            );
            let r = normgate_train::pseudo::run(data, &detector, out, threads(wanted), limit, &|| bar.inc(1))?;
            bar.finish_and_clear();
            print_report(json, &r, |r| {
                format!(
                    "{} images ({} validation), {} faces, {} without a face, {} unreadable, {:.0} s: {}/{}",
                    r.images,
                    r.validation_images,
                    r.faces,
                    r.without_face,
                    r.unreadable,
                    r.seconds,
                    out.display(),
                    normgate_train::pseudo::FILE
                )
            })
        })(),
        Command::Bench {
            what:
                BenchCommand::Dedup {
                    rows_a,
                    rows_b,
                    dim,
                    threads,
                    json,
                },
        } => bench_dedup(rows_a, rows_b, dim, threads, json),
        Command::Quantize {
            model,
            out,
            format,
            percentile,
            crops,
            cache,
            data,
            json,
        } => quantize(&model, &out, format, percentile, crops, &cache, &data, json),
        Command::Eval {
            what:
                EvalCommand::Quality {
                    on,
                    images,
                    degrade_from,
                },
        } => eval::Model::parse(&on.model, on.card).and_then(|m| {
            let r = eval::quality(&m, &on.data, &on.cache, &degrade_from, images)?;
            println!("{}", serde_json::to_string(&r)?);
            Ok(())
        }),
        Command::Eval {
            what: EvalCommand::Compare { on, reference },
        } => eval::Model::parse(&on.model, on.card).and_then(|m| {
            let r = eval::agreement(&m, &eval::Model::parse(&reference, None)?, &on.cache)?;
            println!("{}", serde_json::to_string(&r)?);
            Ok(())
        }),
        Command::Eval {
            what: EvalCommand::Detector(args),
        } => eval_detector(args),
        Command::Eval {
            what: EvalCommand::Heldout(args),
        } => eval_heldout(args),
        Command::Eval {
            what: EvalCommand::Lfw { on, flip, json },
        } => eval::Model::parse(&on.model, on.card).and_then(|m| {
            let r = eval::lfw(&m, &on.data, &on.cache, flip)?;
            print_report(json, &r, |r| {
                format!(
                    "LFW {} pairs: accuracy {:.2} ± {:.2} %, AUC {:.4}",
                    r.pairs,
                    100.0 * r.accuracy,
                    100.0 * r.std,
                    r.auc
                )
            })
        }),
        Command::Bench {
            what:
                BenchCommand::Step {
                    network,
                    batch,
                    rounds,
                    threads,
                    json,
                    worker,
                },
        } => bench_step(StepArgs {
            network,
            batch,
            rounds,
            threads: &threads,
            json,
            worker,
        }),
        Command::Bench {
            what:
                BenchCommand::Embed {
                    models,
                    crops,
                    batch,
                    rounds,
                    cache,
                    json,
                },
        } => bench_embed(&models, crops, batch, rounds, &cache, json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
