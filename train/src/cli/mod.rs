//! The command line of `normgate-train`: one file per command group, each
//! parsing its arguments, calling the library and printing the report.
//! This file holds the command tree and what the groups share.

mod bench;
mod curation;
mod data;
mod eval;
mod onnx;
mod train;

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::{Parser, Subcommand};

/// Host tools of normgate: training, export, quantization, curation, evaluation.
#[derive(Parser, Debug)]
#[command(version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// Detect, align and label the shared face data and cache it with the
    /// teacher's features (resumes: existing caches are kept unless --force).
    Prepare(data::PrepareArgs),
    /// Train the backbone (concat A-Softmax heads + distillation); resumes
    /// from the run folder's checkpoint.
    Train(train::TrainArgs),
    /// Train the face detector on the teacher's pseudo-labels and Glint24
    /// composites; resumes from the run folder's checkpoint.
    TrainDetector(train::TrainDetectorArgs),
    /// Train the landmark refiner on the teacher's five points (crops
    /// around moved teacher boxes); resumes from the run folder's checkpoint.
    TrainLandmarks(train::TrainLandmarksArgs),
    /// Pseudo-labels for the detector: the teacher detector's faces on every
    /// LFW and CelebA image, with a validation split by identity.
    PseudoLabel(data::PseudoLabelArgs),
    /// Duplicate identities between two classifier heads (or within one)
    /// from their weight rows: pairs.tsv, groups.tsv and a merged classmap.tsv.
    Dedup(curation::DedupArgs),
    /// Feature norms of the main face of every image in a folder tree (the
    /// device's detector, aligner and embedder): norms.tsv, histogram.png,
    /// thresholds for drop rates, and optionally the images below a threshold.
    Norms(curation::NormsArgs),
    /// The label maps of concat training for several <class>/<image> data
    /// sets, with identities merged from a dedup pairs.tsv: classmap.tsv.
    Classmap(curation::ClassmapArgs),
    #[command(flatten)]
    Curation(curation::Curation),
    /// Quantize an exported float model to int8 (per-channel weights,
    /// activation ranges calibrated on aligned training crops).
    Quantize(onnx::QuantizeArgs),
    /// The float form of an int8 QOperator file (its weights dequantized):
    /// the fp32 variant of a shipped model whose float export is gone.
    Dequantize(onnx::DequantizeArgs),
    /// Export a training run's backbone or detector to ONNX (with its card)
    /// and check the file against the training framework on cached crops or frames.
    Export(onnx::ExportArgs),
    /// Measure a model with the evaluation protocols.
    Eval {
        #[command(subcommand)]
        what: eval::EvalCommand,
    },
    /// Benchmarks (results on stdout, progress on stderr).
    Bench {
        #[command(subcommand)]
        what: bench::BenchCommand,
    },
}

impl Cli {
    /// Runs the command.
    pub fn run(self) -> Result<()> {
        match self.command {
            Command::Prepare(args) => data::prepare(args),
            Command::Train(args) => train::backbone(args),
            Command::TrainDetector(args) => train::detector(args),
            Command::TrainLandmarks(args) => train::landmarks(args),
            Command::PseudoLabel(args) => data::pseudo_label(args),
            Command::Dedup(args) => curation::dedup(args),
            Command::Norms(args) => curation::norms(args),
            Command::Classmap(args) => curation::classmap(args),
            Command::Curation(command) => curation::run(command),
            Command::Quantize(args) => onnx::quantize(args),
            Command::Dequantize(args) => onnx::dequantize(args),
            Command::Export(args) => onnx::export(args),
            Command::Eval { what } => eval::run(what),
            Command::Bench { what } => bench::run(what),
        }
    }
}

/// The shared data, the teacher models and their cards, and where caches go.
#[derive(clap::Args, Debug)]
pub(crate) struct TeacherArgs {
    /// The shared data folder (glint24, celeba_wild, lfw).
    #[arg(long, default_value = "../shared/data")]
    pub(crate) data: PathBuf,
    /// Folder of the teacher models.
    #[arg(long, default_value = "../shared/models")]
    pub(crate) models: PathBuf,
    /// Folder of the teacher model cards.
    #[arg(long, default_value = "train/teachers")]
    pub(crate) cards: PathBuf,
    /// Where the caches go.
    #[arg(long, default_value = "cache")]
    pub(crate) out: PathBuf,
}

impl TeacherArgs {
    /// The teacher detector's model and card.
    pub(crate) fn detector(&self) -> (PathBuf, PathBuf) {
        teacher_detector(&self.models, &self.cards)
    }
}

/// The teacher detector's model and card in these folders.
pub(crate) fn teacher_detector(models: &Path, cards: &Path) -> (PathBuf, PathBuf) {
    (
        models.join("retinaface_mnet025_opset13.onnx"),
        cards.join("retinaface_mnet025.toml"),
    )
}

pub(crate) fn parse_set(spec: &str) -> std::result::Result<(String, PathBuf), String> {
    match spec.split_once('=') {
        Some((name, dir)) if !name.is_empty() && !dir.is_empty() => Ok((name.into(), dir.into())),
        _ => Err(format!("{spec:?}: give a data set as NAME=PATH")),
    }
}

pub(crate) fn threads(requested: Option<usize>) -> usize {
    requested.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Prints a command's report: one JSON object with `--json`, else `text`.
pub(crate) fn print_report<T: serde::Serialize>(json: bool, report: &T, text: impl FnOnce(&T) -> String) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(report)?);
    } else {
        println!("{}", text(report));
    }
    Ok(())
}
