//! `export`, `quantize` and `dequantize`: a run's checkpoint as an ONNX
//! file with its card, its int8 form, and an int8 file's float form.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use normgate::card::{ModelCard, RefinerCrop};
use normgate_train::data::prepare::Cache;
use normgate_train::detector::train::{calibration_frames, DetectorTrainConfig};
use normgate_train::landmarks::recipe::RefinerTrainConfig;
use normgate_train::nn::optim::read_config;
use normgate_train::onnx::dequantize::dequantize_file;
use normgate_train::onnx::export::{detector_card, export_detector_run, export_refiner_run, export_run, refiner_card};
use normgate_train::onnx::quantize::{quantize_file, Calibration};

use super::print_report;

#[derive(clap::Args, Debug)]
pub(crate) struct ExportArgs {
    /// The training run folder.
    #[arg(long)]
    pub(crate) run: PathBuf,
    /// The .onnx file to write (the card goes beside it).
    #[arg(long)]
    pub(crate) out: PathBuf,
    /// Folder of the caches `prepare` and `pseudo-label` wrote (inputs for the check).
    #[arg(long, default_value = "cache")]
    pub(crate) cache: PathBuf,
    /// The shared data folder (a detector's check frames).
    #[arg(long, default_value = "../shared/data")]
    pub(crate) data: PathBuf,
    /// A box refiner's card names this landmark refiner (a file beside
    /// it) as the one that reads its points again (the card's `next`).
    #[arg(long)]
    pub(crate) next: Option<PathBuf>,
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(clap::Args, Debug)]
pub(crate) struct DequantizeArgs {
    /// The int8 QOperator .onnx (its card beside it).
    #[arg(long)]
    pub(crate) model: PathBuf,
    /// The float .onnx to write (the card is copied beside it).
    #[arg(long)]
    pub(crate) out: PathBuf,
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(clap::Args, Debug)]
pub(crate) struct QuantizeArgs {
    /// The float .onnx (its card beside it).
    #[arg(long)]
    pub(crate) model: PathBuf,
    /// The int8 .onnx to write (the card is copied beside it).
    #[arg(long)]
    pub(crate) out: PathBuf,
    /// Graph form: qdq or qoperator.
    #[arg(long, value_enum, default_value = "qdq")]
    pub(crate) format: normgate_train::onnx::quantize::Format,
    /// Activation ranges from min/max, or from this percentile at each end (e.g. 99.99).
    #[arg(long)]
    pub(crate) percentile: Option<f64>,
    /// Calibration inputs: crops spread evenly over the Glint24 training
    /// cache (a backbone), or frames over the detector's training split (a detector).
    #[arg(long, default_value_t = 256)]
    pub(crate) crops: usize,
    /// Folder of the caches `prepare` and `pseudo-label` wrote.
    #[arg(long, default_value = "cache")]
    pub(crate) cache: PathBuf,
    /// The shared data folder (a detector's calibration frames).
    #[arg(long, default_value = "../shared/data")]
    pub(crate) data: PathBuf,
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub(crate) json: bool,
}

pub(crate) fn export(args: ExportArgs) -> Result<()> {
    let ExportArgs {
        run,
        out,
        cache,
        data,
        next,
        json,
    } = args;
    let (run, out, cache, data) = (run.as_path(), out.as_path(), cache.as_path(), data.as_path());
    let refiner = read_config::<RefinerTrainConfig>(run).ok();
    if next.is_some() && refiner.as_ref().is_none_or(|c| c.crop != RefinerCrop::Box) {
        bail!("--next is for box refiner runs: {} is not one", run.display());
    }
    let check = if let Ok(config) = read_config::<DetectorTrainConfig>(run) {
        let card = detector_card(&config.network, config.anchor_sizes);
        export_detector_run(run, out, &calibration_frames(data, cache, 16, &card)?)?
    } else if let Some(config) = refiner {
        let card = refiner_card(&config.network.config(), config.crop, config.card_expand());
        export_refiner_run(run, out, &calibration_frames(data, cache, 16, &card)?, next)?
    } else {
        export_run(run, out, &Cache::load(cache, "lfw_train")?, 256)?
    };
    if check.max_rel_diff > 1e-4 {
        bail!(
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

/// `n` aligned 112x96 crops spread evenly over the Glint24 training cache.
pub(crate) fn training_crops(cache: &Path, n: usize) -> Result<Vec<image::RgbImage>> {
    let glint = Cache::load(cache, "glint24")?;
    Ok(glint.spread(n).map(|i| glint.sphereface_crop(i)).collect())
}

pub(crate) fn dequantize(args: DequantizeArgs) -> Result<()> {
    let r = dequantize_file(&args.model, &args.out)?;
    print_report(args.json, &r, |r| {
        format!("{}: {} -> {} bytes", args.out.display(), r.int8_bytes, r.float_bytes)
    })
}

pub(crate) fn quantize(args: QuantizeArgs) -> Result<()> {
    let QuantizeArgs {
        model,
        out,
        format,
        percentile,
        crops,
        cache,
        data,
        json,
    } = args;
    let (model, out, cache, data) = (model.as_path(), out.as_path(), cache.as_path(), data.as_path());
    let method = match percentile {
        None => Calibration::MinMax,
        Some(p) if p > 50.0 && p <= 100.0 => Calibration::Percentile(p),
        Some(p) => bail!("--percentile {p}: give a value in (50, 100], e.g. 99.99"),
    };
    let card = ModelCard::load(&ModelCard::path_for(model))?;
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
