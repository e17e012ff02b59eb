//! `normgate`: the edge face-quality gate a camera device runs.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

use normgate::card::ModelCard;
use normgate::config::{CameraSection, Config, PolicySection, SinkSection, UploadSection};
use normgate::landmarks::Locator;
use normgate::pipeline::load_embedder;
use normgate::record::content_key;
use normgate::runner::{self, Summary};
use normgate::sink::upload::check as check_upload;
use normgate::still::embed_main_face;
use normgate::tracking::CapturePolicy;
use normgate::{calibrate, durable, embedded};
use normgate_core::norm::l2_norm;

/// Edge face-quality gate: uploads only the face crops whose feature norm says they are worth it.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Settings of `run` that override the configuration file (flags win over
/// environment variables, which win over the file).
#[derive(Args, Debug, Clone, Default)]
struct Overrides {
    /// Replace the configured cameras by one source: a directory, an image,
    /// a glob, an .mjpeg file, mjpeg:PATH, - for an MJPEG stream on stdin,
    /// or a camera (v4l2:/dev/video0, v4l2:0).
    #[arg(long, env = "NORMGATE_SOURCE")]
    source: Option<String>,
    /// Where passing crops go: a spool directory, or an http(s):// URL to upload to.
    #[arg(long, env = "NORMGATE_SINK")]
    sink: Option<String>,
    /// Directory of the durable upload queue.
    #[arg(long, env = "NORMGATE_QUEUE")]
    queue: Option<PathBuf>,
    /// Face detector ONNX model (its card .toml beside it).
    #[arg(long, env = "NORMGATE_DETECTOR")]
    detector: Option<PathBuf>,
    /// Face embedder ONNX model (its card .toml beside it).
    #[arg(long, env = "NORMGATE_EMBEDDER")]
    embedder: Option<PathBuf>,
    /// Landmark refiner ONNX model (its card .toml beside it); "none" uses the detector's landmarks.
    #[arg(long, env = "NORMGATE_REFINER")]
    refiner: Option<PathBuf>,
    /// Address of the Prometheus endpoint, or "off".
    #[arg(long, env = "NORMGATE_METRICS")]
    metrics: Option<String>,
    /// JSON-lines decision log.
    #[arg(long, env = "NORMGATE_DECISIONS")]
    decisions: Option<PathBuf>,
}

impl Overrides {
    fn apply(&self, config: &mut Config) -> Result<()> {
        if let Some(spec) = &self.source {
            config.cameras = vec![CameraSection::new("cli", spec)];
        }
        if let Some(sink) = &self.sink {
            if sink.starts_with("http://") || sink.starts_with("https://") {
                match &mut config.sink.upload {
                    Some(upload) => upload.url = sink.clone(),
                    None => config.sink.upload = Some(UploadSection::to(sink)),
                }
            } else if sink.contains("://") {
                bail!("--sink {sink}: give a spool directory or an http:// or https:// URL");
            } else {
                config.sink.upload = None;
                config.sink.spool = sink.into();
            }
        }
        if let Some(queue) = &self.queue {
            match &mut config.sink.upload {
                Some(upload) => upload.queue = queue.clone(),
                None => bail!("--queue needs an upload sink (--sink URL or [sink.upload])"),
            }
        }
        if let Some(path) = &self.detector {
            config.models.detector = path.clone();
        }
        if let Some(path) = &self.embedder {
            config.models.embedder = path.clone();
        }
        if let Some(path) = &self.refiner {
            config.models.refiner = path.clone();
        }
        if let Some(addr) = &self.metrics {
            config.metrics.listen = addr.clone();
        }
        if let Some(path) = &self.decisions {
            config.log.decisions = path.clone();
        }
        config.validate()
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the gate on every configured camera (default: the bundled samples).
    Run {
        /// TOML configuration; without one, the embedded default runs. SIGHUP re-reads its thresholds.
        #[arg(long, env = "NORMGATE_CONFIG")]
        config: Option<PathBuf>,
        #[command(flatten)]
        overrides: Overrides,
        /// Print the run's summary as one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Print the feature norm of the main face of each image.
    Embed {
        /// Face embedder ONNX model (its card .toml beside it).
        #[arg(long, env = "NORMGATE_EMBEDDER", default_value = "embedded:backbone.onnx")]
        model: PathBuf,
        /// Face detector ONNX model, used unless --aligned.
        #[arg(long, env = "NORMGATE_DETECTOR", default_value = "embedded:detector.onnx")]
        detector: PathBuf,
        /// Landmark refiner ONNX model run after the detector ("none": the detector's landmarks).
        #[arg(long, env = "NORMGATE_REFINER", default_value = "embedded:refiner.onnx")]
        refiner: PathBuf,
        /// The images are crops already aligned to the model's template: no detection.
        #[arg(long)]
        aligned: bool,
        /// One JSON object per image on stdout, with the feature.
        #[arg(long)]
        json: bool,
        /// Images.
        #[arg(required = true)]
        images: Vec<PathBuf>,
    },
    /// List the models compiled into this binary, with their cards and SHA-256.
    Models {
        /// Print one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Print the fixed threshold that drops a share of the faces a camera
    /// sees, from a decision log or from a run over a source made for it,
    /// with the norm histogram as a PNG and the configuration lines to use.
    Calibrate {
        /// The configuration whose models and gate limits to use (and cameras, without --source).
        #[arg(long, env = "NORMGATE_CONFIG")]
        config: Option<PathBuf>,
        /// Frames to measure: a folder, an image, an .mjpeg file, v4l2:/dev/videoN.
        #[arg(long, conflicts_with = "decisions")]
        source: Option<String>,
        /// A decision log to read the norms from instead of running.
        #[arg(long)]
        decisions: Option<PathBuf>,
        /// Only this camera's faces (of the log or the configuration).
        #[arg(long)]
        camera: Option<String>,
        /// Share of the faces to drop, in [0, 1).
        #[arg(long)]
        drop_rate: f64,
        /// Where to write the histogram.
        #[arg(long, default_value = "norm-histogram.png")]
        histogram: PathBuf,
        /// Print one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Validate a configuration file and print what it configures.
    CheckConfig {
        /// The TOML file.
        file: PathBuf,
        /// Print the summary as one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
}

fn load_config(file: Option<&Path>, overrides: &Overrides) -> Result<Config> {
    let mut config = match file {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    overrides.apply(&mut config)?;
    Ok(config)
}

fn run(file: Option<PathBuf>, overrides: Overrides, json: bool) -> Result<()> {
    let config = load_config(file.as_deref(), &overrides)?;
    let reload = || load_config(file.as_deref(), &overrides);
    let summary: Summary = runner::run(&config, file.is_some().then_some(&reload as _))?;
    if json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        for c in &summary.cameras {
            let dropped: u64 = c.dropped.values().sum();
            println!(
                "camera {}: {} frames ({} corrupt, {} skipped), {} faces, {} passed, {} dropped {:?}",
                c.id, c.frames, c.decode_errors, c.frames_skipped, c.faces, c.passed, dropped, c.dropped
            );
        }
        let u = &summary.uploads;
        if u.delivered + u.failed_attempts + u.rejected > 0 || u.queued > 0 {
            println!(
                "uploads: {} delivered, {} failed attempts, {} rejected, {} still queued",
                u.delivered, u.failed_attempts, u.rejected, u.queued
            );
        }
    }
    Ok(())
}

fn calibrate(
    file: Option<PathBuf>,
    source: Option<String>,
    decisions: Option<PathBuf>,
    camera: Option<String>,
    drop_rate: f64,
    histogram: &Path,
    json: bool,
) -> Result<()> {
    let text = match decisions {
        Some(log) => std::fs::read_to_string(&log).with_context(|| format!("cannot read {}", log.display()))?,
        None => measure_norms(file.as_deref(), source)?,
    };
    let norms = calibrate::norms_from_log(&text, camera.as_deref())?;
    let c = calibrate::calibrate(&norms, drop_rate)?;
    calibrate::draw(&c, histogram)?;
    if json {
        let mut v = serde_json::to_value(&c)?;
        v["histogram"] = histogram.display().to_string().into();
        println!("{v}");
    } else {
        println!(
            "{} faces judged by norm (norms {:.2} to {:.2}); dropping {:.1} % of them: threshold {:.3} ({} below it)",
            c.faces,
            c.range[0],
            c.range[1],
            100.0 * c.drop_rate,
            c.threshold,
            c.dropped
        );
        println!("histogram: {}", histogram.display());
        println!("configuration:\n{}", c.config);
    }
    Ok(())
}

/// Runs the gate over the source (or the configured cameras) with nothing
/// passing, so that every face judged is embedded and logged but no crop is
/// stored; the decision log's text.
fn measure_norms(file: Option<&Path>, source: Option<String>) -> Result<String> {
    let overrides = Overrides {
        source,
        ..Overrides::default()
    };
    let mut config = load_config(file, &overrides)?;
    let scratch = std::env::temp_dir().join(format!("normgate-calibrate-{}", std::process::id()));
    durable::ensure_dir(&scratch)?;
    config.sink = SinkSection {
        spool: scratch.join("spool"),
        ..SinkSection::default()
    };
    config.log.decisions = scratch.join("decisions.jsonl");
    config.metrics.listen = "off".into();
    config.audit = None;
    // Nothing passes, and every face is embedded (no track skips one); a
    // camera keeps its own size and detector-score limits.
    let nothing_passes = Some(PolicySection::Fixed { threshold: f32::MAX });
    config.gate.policy = nothing_passes;
    config.tracking.policy = CapturePolicy::PerFrame;
    for camera in &mut config.cameras {
        if let Some(gate) = &mut camera.gate {
            gate.policy = nothing_passes;
        }
        if let Some(t) = &mut camera.tracking {
            t.policy = CapturePolicy::PerFrame;
        }
        camera.sink = None;
    }
    let ran = runner::run(&config, None);
    let text = std::fs::read_to_string(&config.log.decisions);
    std::fs::remove_dir_all(&scratch).with_context(|| format!("cannot remove {}", scratch.display()))?;
    ran?;
    Ok(text.unwrap_or_default())
}

fn embed(
    model: PathBuf,
    detector: PathBuf,
    refiner: PathBuf,
    aligned: bool,
    json: bool,
    images: Vec<PathBuf>,
) -> Result<()> {
    let embedder = load_embedder(&model, 1)?;
    let detector = if aligned {
        None
    } else {
        if !embedded::exists(&detector) {
            bail!(
                "face detector {} not found: pass --detector MODEL, or --aligned for crops already aligned",
                detector.display()
            );
        }
        Some(Locator::load(&detector, &refiner)?)
    };
    let mut failed = 0;
    for path in &images {
        let result = image::open(path)
            .map_err(anyhow::Error::from)
            .and_then(|image| embed_main_face(image.to_rgb8(), detector.as_ref(), &embedder));
        let name = path.display().to_string();
        match result {
            Ok((feature, face)) => {
                let norm = l2_norm(&feature);
                if json {
                    let v = serde_json::json!({
                        "image": name, "norm": norm, "feature": feature,
                        "bbox": face.map(|f| f.bbox), "detector_score": face.map(|f| f.score),
                    });
                    println!("{v}");
                } else {
                    println!("{norm:.3}\t{name}");
                }
            }
            Err(e) => {
                failed += 1;
                if json {
                    println!(
                        "{}",
                        serde_json::json!({ "image": name, "norm": null, "error": format!("{e:#}") })
                    );
                }
                eprintln!("{name}: {e:#}");
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} images gave no norm", images.len());
    }
    Ok(())
}

fn check_config(file: PathBuf, json: bool) -> Result<()> {
    let config = Config::load(&file)?;
    let cameras = config.cameras();
    // The files an upload needs (token, CA, client certificate) are read and
    // checked as a start would.
    for c in &cameras {
        if let Some(upload) = &config.sink_for(c).upload {
            upload
                .settings()
                .and_then(check_upload)
                .with_context(|| format!("camera {:?}: upload to {}", c.id, upload.url))?;
        }
    }
    if json {
        let cams: Vec<_> = cameras
            .iter()
            .map(|c| serde_json::json!({ "id": c.id, "source": c.source, "sink": config.sink_for(c) }))
            .collect();
        let out = serde_json::json!({
            "valid": true, "cameras": cams, "gate": config.gate, "sink": config.sink,
            "models": config.models, "metrics": config.metrics,
        });
        println!("{out}");
    } else {
        println!("{}: valid", file.display());
        let refiner = match normgate::landmarks::no_refiner(&config.models.refiner) {
            true => "none (the detector's landmarks)".to_string(),
            false => config.models.refiner.display().to_string(),
        };
        println!(
            "  models: detector {}, landmark refiner {refiner}, embedder {}",
            config.models.detector.display(),
            config.models.embedder.display()
        );
        for c in &cameras {
            let sink = config.sink_for(c);
            let to = match &sink.upload {
                Some(u) => format!("upload {} via queue {}", u.url, u.queue.display()),
                None => format!("spool {}", sink.spool.display()),
            };
            let policy = match c.gate.as_ref().unwrap_or(&config.gate).policy {
                Some(p) => format!("{p:?}"),
                None => "fixed at the embedder card's recommended threshold".into(),
            };
            println!("  camera {} <- {}  gate: {policy}  -> {to}", c.id, c.source);
        }
    }
    Ok(())
}

fn list_models(json: bool) -> Result<()> {
    let mut models = Vec::new();
    for file in embedded::FILES.iter().filter(|f| f.name.ends_with(".onnx")) {
        let path = embedded::default_path(file.name);
        let card = ModelCard::load(&ModelCard::path_for(&path))?;
        let kind = match (&card.detector, &card.refiner, &card.embedder) {
            (Some(_), _, _) => "face detector",
            (_, Some(_), _) => "landmark refiner",
            _ => "face embedder",
        };
        models.push(serde_json::json!({
            "path": path, "kind": kind, "bytes": file.bytes.len(),
            "sha256": content_key(file.bytes), "card": card,
        }));
    }
    if json {
        println!("{}", serde_json::json!({ "models": models }));
        return Ok(());
    }
    if models.is_empty() {
        println!("this build embeds no models (built without the `embedded-models` feature)");
    }
    for m in &models {
        let card = &m["card"];
        println!(
            "{}  {}, input {}x{}, {} bytes\n  sha256 {}",
            m["path"].as_str().unwrap_or_default(),
            m["kind"].as_str().unwrap_or_default(),
            card["width"],
            card["height"],
            m["bytes"],
            m["sha256"].as_str().unwrap_or_default()
        );
        if let Some(t) = card["embedder"]["recommended_threshold"].as_f64() {
            println!("  recommended gate threshold {t:.3}");
        }
        if let Some(next) = card["refiner"]["next"].as_str() {
            println!("  reads again with {}{next}", embedded::PREFIX);
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run {
            config,
            overrides,
            json,
        } => run(config, overrides, json),
        Command::Embed {
            model,
            detector,
            refiner,
            aligned,
            json,
            images,
        } => embed(model, detector, refiner, aligned, json, images),
        Command::Calibrate {
            config,
            source,
            decisions,
            camera,
            drop_rate,
            histogram,
            json,
        } => calibrate(config, source, decisions, camera, drop_rate, &histogram, json),
        Command::Models { json } => list_models(json),
        Command::CheckConfig { file, json } => check_config(file, json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
