//! `eval`: the protocols of DESIGN.md for embedders, detectors and the
//! whole chain on the held-out split.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;
use normgate_train::eval::embedder::{self, Model};
use normgate_train::eval::heldout::{Chain, ChainFigures};

use super::{print_report, teacher_detector};

/// Runs an `eval` command.
pub(crate) fn run(what: EvalCommand) -> Result<()> {
    match what {
        EvalCommand::Dedup(args) => super::curation::eval_dedup(args),
        EvalCommand::Quality {
            on,
            images,
            degrade_from,
        } => Model::parse(&on.model, on.card).and_then(|m| {
            let r = embedder::quality(&m, &on.data, &on.cache, &degrade_from, images)?;
            println!("{}", serde_json::to_string(&r)?);
            Ok(())
        }),
        EvalCommand::Compare { on, reference } => Model::parse(&on.model, on.card).and_then(|m| {
            let r = embedder::agreement(&m, &Model::parse(&reference, None)?, &on.cache)?;
            println!("{}", serde_json::to_string(&r)?);
            Ok(())
        }),
        EvalCommand::Detector(args) => detector(args),
        EvalCommand::Heldout(args) => heldout(args),
        EvalCommand::Walkby(args) => walkby(args),
        EvalCommand::Lfw { on, flip, json } => Model::parse(&on.model, on.card).and_then(|m| {
            let r = embedder::lfw(&m, &on.data, &on.cache, flip)?;
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
    }
}

/// Which model to evaluate, and on what.
#[derive(clap::Args, Debug)]
pub(crate) struct ModelArgs {
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
pub(crate) struct EvalDetectorArgs {
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
pub(crate) struct EvalHeldoutArgs {
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

/// `eval walkby`'s arguments.
#[derive(clap::Args, Debug)]
pub(crate) struct EvalWalkbyArgs {
    /// Where the walk-by's frames and truth and each policy's run go (made
    /// once per seed and size, then reused).
    #[arg(long, default_value = "walkby")]
    dir: PathBuf,
    /// People who walk by.
    #[arg(long, default_value_t = 40)]
    people: usize,
    /// Seed of the walk-by.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The device's detector (default: the embedded one).
    #[arg(long)]
    detector: Option<PathBuf>,
    /// The device's landmark refiner (default: the embedded one; `none`: the detector's landmarks).
    #[arg(long)]
    refiner: Option<PathBuf>,
    /// The device's backbone .onnx (default: the embedded one).
    #[arg(long)]
    backbone: Option<PathBuf>,
    /// The project's samples (the backgrounds).
    #[arg(long, default_value = "samples")]
    samples: PathBuf,
    /// A TOML file of `[tracking]` keys (as in the device's configuration)
    /// to run with instead of the defaults; `policy` is set per run.
    #[arg(long)]
    tracking: Option<PathBuf>,
    #[command(flatten)]
    teacher: super::TeacherArgs,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand, Debug)]
pub(crate) enum EvalCommand {
    /// The device's runs over a synthetic walk-by of people no training saw
    /// (LFW's held-out people on face-free backgrounds), with crops sent per
    /// frame and per track: uploads per person, people with an upload,
    /// identity switches, embeddings per frame, and the sent crops' worth to
    /// the server (the teacher against each person's gallery) beside a random
    /// passing frame of the same track.
    Walkby(EvalWalkbyArgs),
    /// The device's whole chain beside the teacher's on the held-out split
    /// (CelebA's held-out people, LFW's pairs without Glint24's people):
    /// the server's failures removed by dropping pairs on each chain's norm,
    /// against random and blur dropping; each chain's own accuracy; faces
    /// found where the teacher finds one.
    Heldout(EvalHeldoutArgs),
    /// A dedup result against known duplicate identities: precision and
    /// recall over thresholds, average precision, a PR curve PNG.
    Dedup(super::curation::EvalDedupArgs),
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

fn heldout(args: EvalHeldoutArgs) -> Result<()> {
    let backbone = Model::parse(&args.backbone, None)?;
    let locator = normgate::landmarks::Locator::load(&args.detector, &args.refiner)?;
    let mut files = Chain::files_of(&args.detector)?;
    files.extend(Chain::files_of(&args.refiner)?);
    let chain = Chain {
        locator: &locator,
        names: [&args.detector, &args.refiner].map(|p| p.display().to_string()),
        files,
    };
    let r = normgate_train::eval::heldout::evaluate(&chain, &backbone, &args.data, &args.cache)?;
    print_report(args.json, &r, |r| {
        let lines: Vec<String> = r
            .sets
            .iter()
            .map(|s| {
                let removed = |c: &ChainFigures| {
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

fn walkby(args: EvalWalkbyArgs) -> Result<()> {
    let mut models = normgate::config::ModelsSection::default();
    models.detector = args.detector.unwrap_or(models.detector);
    models.refiner = args.refiner.unwrap_or(models.refiner);
    models.embedder = args.backbone.unwrap_or(models.embedder);
    let teacher = Model::Onnx(
        args.teacher.models.join("mobilefacenet_foamliu_fp32.onnx"),
        args.teacher.cards.join("mobilefacenet.toml"),
    );
    let tracking = match &args.tracking {
        Some(file) => {
            let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
            let section: normgate::tracking::TrackingSection =
                toml::from_str(&text).with_context(|| format!("{} holds no valid [tracking] keys", file.display()))?;
            section.validate().with_context(|| file.display().to_string())?;
            section
        }
        None => Default::default(),
    };
    let inputs = normgate_train::eval::walkby::Inputs {
        data: args.teacher.data,
        samples: args.samples,
        cache: args.teacher.out,
        out: args.dir,
        people: args.people,
        seed: args.seed,
        models,
        tracking,
        teacher,
    };
    let r = normgate_train::eval::walkby::evaluate(&inputs)?;
    print_report(args.json, &r, |r| {
        let mut lines = vec![format!(
            "{} people ({} in view 2 s or less), {} frames at {} fps; teacher threshold {:.3}",
            r.people, r.people_short, r.frames, r.fps, r.teacher_threshold
        )];
        for p in &r.policies {
            lines.push(format!(
                "{}: {} uploads, {:.2} per person ({:.2} in view <= 2 s, {:.2} longer), recall {:.3}, {} of nobody, identity switches {}/{} tracks, {:.2} embeds per frame, {:.1} frames/s, sent verified {:.3} (mean cosine {:.3}){}",
                p.policy,
                p.uploads,
                p.uploads_per_person,
                p.uploads_per_person_short,
                p.uploads_per_person_long,
                p.person_recall,
                p.uploads_of_nobody,
                p.identity_switches,
                p.tracks,
                p.embeds_per_frame,
                p.frames_per_s,
                p.sent.verified,
                p.sent.mean_cosine,
                p.random_passing_frame.as_ref().map_or(String::new(), |w| format!(
                    ", a random passing frame of the track verified {:.3} (mean cosine {:.3})",
                    w.verified, w.mean_cosine
                ))
            ));
        }
        lines.join("\n")
    })
}

fn detector(args: EvalDetectorArgs) -> Result<()> {
    let backbone = match args.backbone.as_str() {
        "none" => None,
        spec => Some(Model::parse(spec, None)?),
    };
    if args.update_card && !matches!(backbone, Some(Model::Onnx(..))) {
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
    let (r, faces) = normgate_train::eval::detector::evaluate(
        &detector,
        &args.data,
        &args.cache,
        &params,
        backbone.as_ref(),
        args.shift,
        teacher.as_ref(),
    )?;
    if let (true, Some(model), Some(e)) = (args.update_card, &backbone, &r.end_to_end) {
        embedder::set_recommended_threshold(model, e.recommended_threshold as f32)?;
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
