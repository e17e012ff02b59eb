//! The command-line side of the curation commands that measure labelled
//! sets: `dedup`, `norms`, `classmap`, `heads`, `clean`, `mine`,
//! `corrupt-labels` and `eval dedup`. The work is in the library modules
//! of the same names (`normgate_train::curation`); this file parses,
//! reports and prints.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use normgate_core::clean::CleanConfig;
use normgate_core::margin::{ASoftmax, LambdaSchedule, Margin};
use normgate_train::curation::features::{FaceModels, SetFeatures};
use normgate_train::data::datasets::LabelledSet;

use normgate_train::data::prepare::progress;

use super::{parse_set, print_report, threads};

/// The device models that measure faces.
#[derive(clap::Args, Debug)]
pub struct ModelFlags {
    /// The embedder .onnx (card beside it).
    #[arg(long, default_value = "models/backbone.onnx")]
    pub model: PathBuf,
    /// The detector .onnx (card beside it); unused for aligned images.
    #[arg(long, default_value = "models/detector.onnx")]
    pub detector: PathBuf,
    /// The landmark refiner .onnx run after the detector ("none": the detector's landmarks).
    #[arg(long, default_value = "models/refiner.onnx")]
    pub refiner: PathBuf,
}

impl ModelFlags {
    /// Loads the embedder, and the detector unless the images are `aligned`.
    pub fn load(&self, aligned: bool) -> Result<FaceModels> {
        FaceModels::load(&self.model, &self.detector, &self.refiner, aligned)
    }
}

/// Where a command writes, on how many threads, and how it reports.
#[derive(clap::Args, Debug)]
pub struct OutputFlags {
    /// Output folder.
    #[arg(long)]
    pub out: PathBuf,
    /// Threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

impl OutputFlags {
    /// A thread pool of the asked size.
    pub fn pool(&self) -> Result<rayon::ThreadPool> {
        Ok(rayon::ThreadPoolBuilder::new()
            .num_threads(threads(self.threads))
            .build()?)
    }
}

/// A labelled set and how to measure it.
#[derive(clap::Args, Debug)]
pub struct SetFlags {
    /// A `<class>/<image>` folder tree, or a list file of
    /// `path<TAB>class[<TAB>true class]` lines (see `corrupt-labels`).
    pub data: PathBuf,
    #[command(flatten)]
    pub models: ModelFlags,
    /// The images are crops already on the embedder's template (or ArcFace
    /// 112x112 crops for a SphereFace embedder): no detection.
    #[arg(long)]
    pub aligned: bool,
    /// Keep only the classes with at least this many images.
    #[arg(long, default_value_t = 1)]
    pub min_images: usize,
    /// Tight crops: detect on a grey canvas this share of the image larger on every side.
    #[arg(long, default_value_t = 0.0)]
    pub pad: f32,
}

impl SetFlags {
    /// Reads the set and measures its images.
    fn measure(&self) -> Result<(LabelledSet, SetFeatures)> {
        let set = LabelledSet::load(&self.data, self.min_images)?;
        let features = SetFeatures::measure(&set, &self.models.load(self.aligned)?.with_pad(self.pad)?)?;
        Ok((set, features))
    }
}

#[derive(clap::Subcommand, Debug)]
pub enum Curation {
    /// A-Softmax heads fitted to the device backbone's features, one per
    /// data set (the backbone frozen): heads.safetensors and <set>.names,
    /// ready for `dedup` and `mine`.
    Heads {
        /// A data set as NAME=FOLDER or NAME=LIST (repeat).
        #[arg(long = "set", required = true, value_parser = parse_set)]
        sets: Vec<(String, PathBuf)>,
        #[command(flatten)]
        models: ModelFlags,
        /// Sets whose images are aligned crops (no detection), by name.
        #[arg(long, value_delimiter = ',')]
        aligned: Vec<String>,
        /// Keep only the classes with at least this many images.
        #[arg(long, default_value_t = 1)]
        min_images: usize,
        /// Tight crops: detect on a grey canvas this share of the image larger on every side.
        #[arg(long, default_value_t = 0.0)]
        pad: f32,
        /// SGD steps per head.
        #[arg(long, default_value_t = normgate_train::curation::frozen_heads::HeadFitConfig::default().steps)]
        steps: u64,
        /// Seed of the weights and the batch order.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[command(flatten)]
        output: OutputFlags,
    },
    /// Wrong-example report of a labelled set: per image its leave-one-out
    /// own-centre cosine, nearest other class, score and suggestion
    /// (keep/relabel/remove) in report.tsv; scored against a list's true labels.
    Clean {
        #[command(flatten)]
        set: SetFlags,
        /// Flag images whose own-centre cosine is below this.
        #[arg(long, default_value_t = CleanConfig::default().own_below)]
        own_below: f32,
        /// Suggest relabelling when the nearest other centre is at least this close.
        #[arg(long, default_value_t = CleanConfig::default().relabel_above)]
        relabel_above: f32,
        #[command(flatten)]
        output: OutputFlags,
    },
    /// Hard examples of a labelled set under a classifier head: the images
    /// with the highest A-Softmax loss (hard.tsv) and the classes that beat
    /// their own by an angular margin (confusions.tsv).
    Mine {
        #[command(flatten)]
        set: SetFlags,
        /// The head: .npy, .safetensors (e.g. `heads`' heads.safetensors) or a training run folder.
        #[arg(long)]
        head: PathBuf,
        /// The head's tensor, when the file holds several (a `heads` set name).
        #[arg(long)]
        tensor: Option<String>,
        /// The head's class names, one per line (default: <tensor>.names beside the head).
        #[arg(long)]
        names: Option<PathBuf>,
        /// The head's margin m.
        #[arg(long, default_value_t = 4)]
        m: u8,
        /// λ of the A-Softmax loss (the schedule's floor by default).
        #[arg(long, default_value_t = LambdaSchedule::SPHEREFACE.lambda_min)]
        lambda: f32,
        /// Additive angular margin (radians) of the hard-negative rule.
        #[arg(long, default_value_t = 0.35)]
        negative_margin: f32,
        /// Hardest images to list.
        #[arg(long, default_value_t = 100)]
        top: usize,
        #[command(flatten)]
        output: OutputFlags,
    },
    /// Ground truth by construction: a list of a labelled set with a share
    /// of labels flipped (--flip) or some classes split in two (--split),
    /// each line keeping the true class.
    CorruptLabels {
        /// A `<class>/<image>` folder tree or a list file.
        data: PathBuf,
        /// Share of images to give another class.
        #[arg(long, conflicts_with = "split", required_unless_present = "split")]
        flip: Option<f64>,
        /// Classes to split into two ids each.
        #[arg(long)]
        split: Option<usize>,
        /// Seed of the choice.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Output folder (list.tsv, and truth_pairs.csv for a split).
        #[arg(long)]
        out: PathBuf,
        /// Print one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
}

/// `eval dedup`'s arguments.
#[derive(clap::Args, Debug)]
pub struct EvalDedupArgs {
    /// The `pairs.tsv` of a dedup run (run it at a low --threshold to see the whole curve).
    pairs: PathBuf,
    /// Known duplicates: a CSV or TSV whose first two columns name a pair.
    #[arg(long)]
    truth: PathBuf,
    /// Class names of the first head, one per line.
    #[arg(long)]
    names_a: PathBuf,
    /// Class names of the second head (default: within the first).
    #[arg(long)]
    names_b: Option<PathBuf>,
    /// Thresholds to report precision and recall at.
    #[arg(long, value_delimiter = ',', default_value = "0.3,0.4,0.5,0.6,0.7")]
    thresholds: Vec<f32>,
    /// Write the precision-recall curve to this PNG.
    #[arg(long)]
    png: Option<PathBuf>,
    /// TrueType font for the chart's labels (none drawn when absent).
    #[arg(long, default_value = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")]
    font: PathBuf,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

/// Runs one curation command.
pub fn run(command: Curation) -> Result<()> {
    match command {
        Curation::Heads {
            sets,
            models,
            aligned,
            min_images,
            pad,
            steps,
            seed,
            output,
        } => output.pool()?.install(|| {
            let config = normgate_train::curation::frozen_heads::HeadFitConfig {
                steps,
                seed,
                ..Default::default()
            };
            heads(&sets, &models, &aligned, (min_images, pad), &config, &output)
        }),
        Curation::Clean {
            set,
            own_below,
            relabel_above,
            output,
        } => output.pool()?.install(|| {
            let (data, features) = set.measure()?;
            let config = CleanConfig {
                own_below,
                relabel_above,
            };
            let r = normgate_train::curation::clean::clean(&data, &features, &config, &output.out)?;
            print_report(output.json, &r, |r| {
                let truth = r.truth.map_or(String::new(), |t| {
                    format!(
                        "; against the true labels: precision {:.3}, recall {:.3}, F1 {:.3}",
                        t.precision, t.recall, t.f1
                    )
                });
                format!(
                    "{} images: {} flagged ({} remove, {} relabel), {} alone in their class, {} unmeasured{truth}; {}",
                    r.images,
                    r.flagged,
                    r.remove,
                    r.relabel,
                    r.alone,
                    r.unmeasured,
                    output.out.join("report.tsv").display()
                )
            })
        }),
        Curation::Mine {
            set,
            head,
            tensor,
            names,
            m,
            lambda,
            negative_margin,
            top,
            output,
        } => output.pool()?.install(|| {
            let names = names.or_else(|| {
                let beside = head.parent()?.join(format!("{}.names", tensor.as_deref()?));
                beside.is_file().then_some(beside)
            });
            let matrix = normgate_train::curation::dedup::load_matrix(&head, tensor.as_deref(), names.as_deref(), "")?;
            let (data, features) = set.measure()?;
            let config = normgate_train::curation::mine::MineConfig {
                layer: ASoftmax {
                    margin: Margin::new(m)?,
                    lambda,
                },
                negative_margin,
                top,
            };
            let r = normgate_train::curation::mine::mine(&data, &features, &matrix, &config, &output.out)?;
            print_report(output.json, &r, |r| {
                let truth = r.truth.map_or(String::new(), |t| {
                    format!(" ({} of them mislabelled, of {} in all)", t.wrong_listed, t.wrong)
                });
                format!(
                    "{} images ({} unmeasured): mean loss {:.3}, {} with hard negatives; {} hardest{truth} in {}",
                    r.images,
                    r.unmeasured,
                    r.mean_loss,
                    r.with_hard_negatives,
                    r.hard,
                    output.out.join("hard.tsv").display()
                )
            })
        }),
        Curation::CorruptLabels {
            data,
            flip,
            split,
            seed,
            out,
            json,
        } => {
            use normgate_train::curation::label_noise::{corrupt, Corruption};
            let how = match (flip, split) {
                (Some(share), None) => Corruption::Flip(share),
                (None, Some(n)) => Corruption::Split(n),
                _ => bail!("give one of --flip and --split"),
            };
            let r = corrupt(&LabelledSet::load(&data, 1)?, how, seed, &out)?;
            print_report(json, &r, |r| {
                format!(
                    "{} images, {} labels changed, {} classes split; {}",
                    r.images,
                    r.flipped,
                    r.split.len(),
                    out.join("list.tsv").display()
                )
            })
        }
    }
}

/// Measures each set (classes with `min_images`, detection on images padded
/// by `pad`), fits its head and writes them all.
fn heads(
    sets: &[(String, PathBuf)],
    models: &ModelFlags,
    aligned: &[String],
    (min_images, pad): (usize, f32),
    config: &normgate_train::curation::frozen_heads::HeadFitConfig,
    output: &OutputFlags,
) -> Result<()> {
    use normgate_train::curation::frozen_heads::{fit, write_heads, SetHead};
    let (out, json) = (output.out.as_path(), output.json);
    if let Some(unknown) = aligned.iter().find(|a| !sets.iter().any(|(n, _)| n == *a)) {
        bail!("--aligned names {unknown:?}, which is not a --set");
    }
    let mut fitted = Vec::new();
    let mut dim = None;
    for (name, spec) in sets {
        let start = std::time::Instant::now();
        let set = LabelledSet::load(spec, min_images)?;
        let features = SetFeatures::measure(&set, &models.load(aligned.contains(name))?.with_pad(pad)?)?;
        if dim.is_some_and(|d| d != features.dim) {
            bail!("the sets' features differ in width");
        }
        dim = Some(features.dim);
        let bar = progress(config.steps as usize, "steps");
        let head = fit(
            &features.values,
            &features.labels(&set),
            set.classes.len(),
            features.dim,
            config,
            &|_, _| bar.inc(1),
        )?;
        bar.finish_and_clear();
        let report = SetHead {
            name: name.clone(),
            images: set.images.len(),
            measured: features.rows.len(),
            classes: set.classes.len(),
            head,
            seconds: start.elapsed().as_secs_f64(),
            class_names: set.classes,
            unmeasured: features.failed,
        };
        fitted.push(report);
    }
    write_heads(out, &fitted, dim.unwrap_or_default())?;
    print_report(json, &serde_json::json!({ "sets": fitted }), |_| {
        let lines: Vec<String> = fitted
            .iter()
            .map(|r| {
                format!(
                    "{}: {} classes, {} of {} images measured, training accuracy {:.3}, loss {:.3}",
                    r.name, r.classes, r.measured, r.images, r.head.accuracy, r.head.loss
                )
            })
            .collect();
        format!(
            "{}\nheads in {}",
            lines.join("\n"),
            out.join("heads.safetensors").display()
        )
    })
}

/// `eval dedup`: precision and recall of a dedup result against known duplicates.
pub fn eval_dedup(args: EvalDedupArgs) -> Result<()> {
    use normgate_train::curation::dedup_eval::{evaluate, pr_png, read_names};
    let names_a = read_names(&args.names_a)?;
    let names_b = match &args.names_b {
        Some(p) => read_names(p)?,
        None => names_a.clone(),
    };
    let e = evaluate(&args.pairs, &args.truth, &names_a, &names_b, &args.thresholds)?;
    if let Some(png) = &args.png {
        pr_png(&e, Some(args.font.as_path()).filter(|f| f.is_file()), png)?;
    }
    print_report(args.json, &e, |e| {
        let at: Vec<String> =
            e.at.iter()
                .map(|p| {
                    format!(
                        "above {:.2}: precision {:.3}, recall {:.3} ({} true, {} false)",
                        p.threshold, p.precision, p.recall, p.true_pairs, p.false_pairs
                    )
                })
                .collect();
        format!(
            "{} known duplicates in the heads ({} absent); average precision {:.3}\n{}",
            e.truth_pairs,
            e.truth_pairs_absent,
            e.average_precision,
            at.join("\n")
        )
    })
}

#[derive(clap::Args, Debug)]
pub(crate) struct NormsArgs {
    /// The folder tree of images (jpg, png).
    root: PathBuf,
    #[command(flatten)]
    models: ModelFlags,
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
    output: OutputFlags,
}

#[derive(clap::Args, Debug)]
pub(crate) struct DedupArgs {
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

pub(crate) fn norms(args: NormsArgs) -> Result<()> {
    use normgate_train::curation::norms;
    let models = args.models.load(args.aligned)?;
    let images = normgate_train::data::datasets::images_under(&args.root)?;
    if images.is_empty() {
        anyhow::bail!("{} holds no jpg or png image", args.root.display());
    }
    let bar = progress(images.len(), "images");
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

pub(crate) fn classmap(args: ClassmapArgs) -> Result<()> {
    let ClassmapArgs {
        sets: specs,
        pairs,
        between,
        out,
        json,
    } = args;
    let (pairs, between, out) = (pairs.as_deref(), between.as_deref(), out.as_path());
    use normgate_train::curation::classmap;
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

pub(crate) fn dedup(args: DedupArgs) -> Result<()> {
    use normgate_train::curation::dedup::{dedup, load_matrix};
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
    let bar = progress(a.rows(), "rows");
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

#[derive(clap::Args, Debug)]
pub(crate) struct ClassmapArgs {
    /// A data set as NAME=FOLDER (repeat, in head order).
    #[arg(long = "set", required = true, value_parser = parse_set)]
    pub(crate) sets: Vec<(String, PathBuf)>,
    /// A dedup pairs.tsv whose name_a/name_b columns name classes of two sets.
    #[arg(long)]
    pub(crate) pairs: Option<PathBuf>,
    /// The sets the pairs' name_a and name_b belong to (default: the
    /// first two sets, or the only one for duplicates within a set).
    #[arg(long, value_delimiter = ',')]
    pub(crate) between: Option<Vec<String>>,
    /// The classmap.tsv to write.
    #[arg(long)]
    pub(crate) out: PathBuf,
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub(crate) json: bool,
}
