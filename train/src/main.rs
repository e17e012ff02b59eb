//! `normgate-train`: host tools of normgate.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use normgate_train::backbone::BackboneConfig;
use normgate_train::bench;
use normgate_train::eval;
use normgate_train::prepare;
use normgate_train::train::{TrainConfig, Trainer};

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
        /// Calibration crops, spread evenly over the Glint24 training cache.
        #[arg(long, default_value_t = 256)]
        crops: usize,
        /// Folder of the caches `prepare` wrote.
        #[arg(long, default_value = "cache")]
        cache: PathBuf,
        /// Print one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Export a training run's backbone to ONNX (with its card) and check the
    /// file against the training framework on cached crops.
    Export {
        /// The training run folder.
        #[arg(long)]
        run: PathBuf,
        /// The .onnx file to write (the card goes beside it).
        #[arg(long)]
        out: PathBuf,
        /// Folder of the caches `prepare` wrote (crops for the check).
        #[arg(long, default_value = "cache")]
        cache: PathBuf,
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
        (
            self.models.join("retinaface_mnet025_opset13.onnx"),
            self.cards.join("retinaface_mnet025.toml"),
        )
    }
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
    #[arg(long, default_value_t = TrainConfig::default().steps)]
    steps: u64,
    /// Peak learning rate.
    #[arg(long, default_value_t = TrainConfig::default().lr)]
    lr: f64,
    /// Weight of the A-Softmax heads (0: distillation only).
    #[arg(long, default_value_t = TrainConfig::default().head_weight)]
    head_weight: f64,
    /// NormSelect before the heads (seed §3).
    #[arg(long)]
    norm_select: bool,
    /// Hard example mining: share of each head's rows kept (1 = off).
    #[arg(long, default_value_t = 1.0)]
    hem_keep: f32,
    /// Seed of weights, batches and flips.
    #[arg(long, default_value_t = 1)]
    seed: u64,
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

#[derive(Subcommand, Debug)]
enum EvalCommand {
    /// Quality protocols: EDC on LFW (norm against random and blur
    /// discard), degradation ranking, face versus non-face AUROC. Prints JSON.
    Quality {
        #[command(flatten)]
        on: ModelArgs,
        /// Glint24 crops to degrade.
        #[arg(long, default_value_t = 200)]
        images: usize,
        /// Write the measured recommended threshold into the .onnx model's card.
        #[arg(long)]
        update_card: bool,
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
    /// Training steps of the shipped backbone: this crate's convolution ops
    /// against candle's built-in ones, interleaved, per thread count.
    Step {
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

fn bench_step(batch: usize, rounds: usize, threads: &[usize], json: bool, worker: bool) -> Result<()> {
    if worker {
        println!("{}", serde_json::to_string(&bench::worker(batch, rounds)?)?);
        return Ok(());
    }
    let results = bench::run(threads, batch, rounds)?;
    let config = BackboneConfig::SHIPPED;
    let first = &results[0];
    if json {
        let out = serde_json::json!({
            "img_per_s": first.fast.img_per_s,
            "baseline_img_per_s": first.builtin.img_per_s,
            "forward_gflops": first.forward_gflops,
            "threads": first.threads,
            "batch": batch,
            "architecture": config,
            "parameters": config.parameters(),
            "forward_flops_per_image": config.forward_flops(),
            "runs": results,
        });
        println!("{out}");
    } else {
        println!(
            "backbone: {} parameters, {:.3} GFLOP per image; batch {batch}",
            config.parameters(),
            config.forward_flops() as f64 / 1e9
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
    let config = TrainConfig {
        steps: args.steps,
        lr: args.lr,
        head_weight: args.head_weight,
        norm_select: args.norm_select,
        hem_keep: args.hem_keep,
        seed: args.seed,
        ..TrainConfig::default()
    };
    let start = std::time::Instant::now();
    let mut trainer = Trainer::new(config, &args.cache, &args.out)?;
    let first = trainer.step();
    trainer.run(&args.out)?;
    eprintln!(
        "trained steps {first}..{} in {:.0} s; checkpoint in {}",
        trainer.step(),
        start.elapsed().as_secs_f64(),
        args.out.display()
    );
    Ok(())
}

fn export(run: &std::path::Path, out: &std::path::Path, cache: &std::path::Path, json: bool) -> Result<()> {
    let crops = normgate_train::prepare::Cache::load(cache, "lfw_train")?;
    let check = normgate_train::export::export_run(run, out, &crops, 256)?;
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
    json: bool,
) -> Result<()> {
    use normgate_train::quantize::{quantize_file, Calibration};
    let method = match percentile {
        None => Calibration::MinMax,
        Some(p) if p > 50.0 && p <= 100.0 => Calibration::Percentile(p),
        Some(p) => anyhow::bail!("--percentile {p}: give a value in (50, 100], e.g. 99.99"),
    };
    let r = quantize_file(model, out, format, method, &training_crops(cache, crops)?)?;
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
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let result = match Cli::parse().command {
        Command::Prepare(args) => prepare_data(args),
        Command::Train(args) => train(args),
        Command::Export { run, out, cache, json } => export(&run, &out, &cache, json),
        Command::Dedup(args) => dedup(args),
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
            json,
        } => quantize(&model, &out, format, percentile, crops, &cache, json),
        Command::Eval {
            what:
                EvalCommand::Quality {
                    on,
                    images,
                    update_card,
                },
        } => eval::Model::parse(&on.model, on.card).and_then(|m| {
            let r = eval::quality(&m, &on.data, &on.cache, images)?;
            if update_card {
                eval::set_recommended_threshold(&m, r.recommended_threshold as f32)?;
            }
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
                    batch,
                    rounds,
                    threads,
                    json,
                    worker,
                },
        } => bench_step(batch, rounds, &threads, json, worker),
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
