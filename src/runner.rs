//! `normgate run`: wires the configured cameras, models, sinks, uploaders,
//! metrics and signals, runs until the sources end or a signal arrives, and
//! reports what happened. Everything that can be wrong in a configuration
//! (models, sources, sinks, addresses) fails here, before the first frame.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use normgate_core::gate::GateConfig;
use serde::Serialize;

use crate::config::{Config, SinkSection, DEFAULT_SOURCE};
use crate::durable::sync_dir;
use crate::feed::Feed;
use crate::http::{self, Endpoint};
use crate::metrics::Metrics;
use crate::pipeline::{Audit, CameraPipeline, Models, Shared};
use crate::record::DecisionLog;
use crate::retention::{sweep_until, Store};
use crate::sink::queue::{Queue, REJECTED_DIR};
use crate::sink::spool::Spool;
use crate::sink::upload::{Shutdown, Uploader};
use crate::sink::Sink;
use crate::source::SourceSpec;
use crate::status::StatusBoard;
use crate::tracking::CameraTracks;

/// One camera's counts.
#[derive(Debug, Serialize)]
pub struct CameraSummary {
    /// Camera id.
    pub id: String,
    /// Frames decoded.
    pub frames: u64,
    /// Frames that did not decode.
    pub decode_errors: u64,
    /// Frames overwritten while inference was behind.
    pub frames_skipped: u64,
    /// Faces detected.
    pub faces: u64,
    /// Crops accepted by the sink.
    pub passed: u64,
    /// Dropped crops by reason.
    pub dropped: BTreeMap<String, u64>,
    /// Faces whose crop waited on their track, by reason (`held`, `not_best`, `not_embedded`, `contested`).
    pub tracked: BTreeMap<String, u64>,
    /// Face tracks opened.
    pub tracks_started: u64,
    /// Face tracks ended.
    pub tracks_ended: u64,
}

/// Upload counts of the run.
#[derive(Debug, Default, Serialize)]
pub struct UploadSummary {
    /// Crops the server took.
    pub delivered: u64,
    /// Attempts that failed and will be retried.
    pub failed_attempts: u64,
    /// Attempts that repeated a failed one.
    pub retries: u64,
    /// Crops the server refused for good (kept in the queue's `rejected/`).
    pub rejected: u64,
    /// Crops still queued at exit (sent by the next run).
    pub queued: i64,
    /// Oldest crops evicted from a full queue.
    pub evicted: u64,
}

/// What a run did.
#[derive(Debug, Serialize)]
pub struct Summary {
    /// Per camera.
    pub cameras: Vec<CameraSummary>,
    /// Uploads, when a camera uploads.
    pub uploads: UploadSummary,
    /// Whether a signal ended the run.
    pub interrupted: bool,
    /// Seconds from the first frame to the last camera's end.
    pub seconds: f64,
    /// Frames of all cameras per second over `seconds`.
    pub frames_per_s: f64,
    /// Mean latency per stage, milliseconds (`embed` and `align` per crop).
    pub stage_ms: BTreeMap<String, f64>,
}

/// Opens the sinks, sharing one spool or queue among cameras that name the same directory.
struct Sinks {
    spools: HashMap<PathBuf, Arc<Sink>>,
    queues: HashMap<PathBuf, Arc<Sink>>,
    uploaders: Vec<Arc<Uploader>>,
    metrics: Arc<Metrics>,
}

impl Sinks {
    fn open(&mut self, section: &SinkSection) -> Result<Arc<Sink>> {
        match &section.upload {
            None => {
                if let Some(sink) = self.spools.get(&section.spool) {
                    return Ok(sink.clone());
                }
                let sink = Arc::new(Sink::Spool(Spool::open(&section.spool)?));
                self.spools.insert(section.spool.clone(), sink.clone());
                Ok(sink)
            }
            Some(upload) => {
                if let Some(sink) = self.queues.get(&upload.queue) {
                    return Ok(sink.clone());
                }
                let queue = Arc::new(
                    Queue::open(&upload.queue, upload.limits(), self.metrics.clone())
                        .with_context(|| format!("upload queue {}", upload.queue.display()))?,
                );
                let uploader = Uploader::new(queue.clone(), upload.settings()?, self.metrics.clone())
                    .with_context(|| format!("upload to {}", upload.url))?;
                self.uploaders.push(Arc::new(uploader));
                let sink = Arc::new(Sink::Upload(queue));
                self.queues.insert(upload.queue.clone(), sink.clone());
                Ok(sink)
            }
        }
    }
}

/// Process-wide signal flags.
struct Signals {
    terminate: Arc<AtomicBool>,
    reload: Arc<AtomicBool>,
}

impl Signals {
    fn register() -> Result<Self> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let terminate = Arc::new(AtomicBool::new(false));
        let reload = Arc::new(AtomicBool::new(false));
        for signal in [SIGINT, SIGTERM] {
            // A second signal while shutting down exits at once.
            signal_hook::flag::register_conditional_shutdown(signal, 1, terminate.clone())?;
            signal_hook::flag::register(signal, terminate.clone())?;
        }
        signal_hook::flag::register(SIGHUP, reload.clone())?;
        Ok(Self { terminate, reload })
    }
}

/// Runs the gate. `reload` re-reads the configuration on SIGHUP (`None`: no file to re-read).
pub fn run(config: &Config, reload: Option<&dyn Fn() -> Result<Config>>) -> Result<Summary> {
    config.validate()?;
    // Sources first: they are quick to check, the models take seconds to load.
    let stop = Arc::new(AtomicBool::new(false));
    let mut feeds = Vec::new();
    for camera in config.cameras() {
        let spec = SourceSpec::parse(&camera.source)?;
        let feed = Feed::spawn(&spec, camera.capture, stop.clone()).with_context(|| {
            if config.cameras.is_empty() {
                format!(
                    "no camera is configured, and the bundled samples (./{DEFAULT_SOURCE}) that run by default are not in this directory: pass --source (v4l2:/dev/video0, a folder of images, an .mjpeg file) or --config FILE"
                )
            } else {
                format!("camera {:?}", camera.id)
            }
        })?;
        feeds.push((camera, feed));
    }
    let detect = config.detector.to_params()?;
    let models = Models::load(&config.models, &detect)?;
    let recommended = models.embedder.recommended_threshold();
    let metrics = Arc::new(Metrics::default());
    let shared = Arc::new(Shared {
        models,
        detect,
        audit: match &config.audit {
            Some(a) => Some(Audit {
                spool: Spool::open(&a.dir)?,
                sample_rate: a.sample_rate,
            }),
            None => None,
        },
        log: DecisionLog::open(&config.log.decisions)?,
        metrics: metrics.clone(),
        board: Arc::new(StatusBoard::default()),
    });
    let mut sinks = Sinks {
        spools: HashMap::new(),
        queues: HashMap::new(),
        uploaders: Vec::new(),
        metrics: metrics.clone(),
    };
    let mut cameras = Vec::new();
    for (camera, feed) in feeds {
        let tracks = CameraTracks::new(&config.tracking_for(&camera), camera.capture.fps)
            .with_context(|| format!("camera {:?}", camera.id))?;
        let pipeline = CameraPipeline::new(
            camera.id.clone(),
            config.gate_for(&camera, recommended)?,
            tracks,
            sinks.open(config.sink_for(&camera))?,
            shared.clone(),
        )?;
        shared.board.add_camera(&camera.id);
        cameras.push((pipeline, feed));
    }
    let ids: Vec<String> = cameras.iter().map(|(p, _)| p.id.clone()).collect();
    if config.metrics.listen != "off" {
        let endpoint = Endpoint {
            metrics: metrics.clone(),
            board: shared.board.clone(),
            cameras: ids.clone(),
            token: config.metrics.token()?,
        };
        let addr = http::serve(&config.metrics.listen, endpoint)?;
        log::info!("status page on http://{addr}/, metrics on http://{addr}/metrics");
    }
    let signals = Signals::register()?;

    let retention = spawn_retention(config, &sinks, metrics.clone())?;
    let shutdown = Arc::new(Shutdown::default());
    let uploader_handles = std::mem::take(&mut sinks.uploaders);
    let uploaders: Vec<JoinHandle<()>> = uploader_handles
        .iter()
        .cloned()
        .map(|uploader| {
            let shutdown = shutdown.clone();
            std::thread::Builder::new()
                .name("upload".into())
                .spawn(move || {
                    if let Err(e) = uploader.run(&shutdown) {
                        log::error!("uploader stopped: {e:#}");
                    }
                })
                .context("cannot start an uploader")
        })
        .collect::<Result<_>>()?;

    let mut pending: Vec<(String, Arc<Mutex<Option<GateConfig>>>)> = Vec::new();
    let mut workers = Vec::new();
    for (pipeline, feed) in cameras {
        pending.push((pipeline.id.clone(), pipeline.pending_gate.clone()));
        let stop = stop.clone();
        workers.push(
            std::thread::Builder::new()
                .name(format!("camera {}", pipeline.id))
                .spawn(move || pipeline.run(feed, &stop))?,
        );
    }

    let started = Instant::now();
    let mut interrupted = false;
    while !workers.iter().all(JoinHandle::is_finished) {
        if signals.terminate.load(Ordering::Relaxed) {
            log::info!("signal received: finishing the frames in hand");
            interrupted = true;
            stop.store(true, Ordering::Relaxed);
            shutdown.stop_now();
            break;
        }
        if signals.reload.swap(false, Ordering::Relaxed) {
            match reload.map(|reload| reload()) {
                None => log::info!("SIGHUP: no configuration file to re-read"),
                Some(Err(e)) => log::error!("SIGHUP: configuration not reloaded: {e:#}"),
                Some(Ok(new)) => {
                    reload_gates(&new, recommended, &pending);
                    reload_uploads(&new, &uploader_handles);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for worker in workers {
        let _ = worker.join();
    }
    let seconds = started.elapsed().as_secs_f64();
    let drain = config
        .cameras()
        .iter()
        .filter_map(|c| config.sink_for(c).upload.as_ref().map(|u| u.drain_timeout_s))
        .fold(0.0f32, f32::max);
    shutdown.drain_until(Instant::now() + Duration::from_secs_f32(drain));
    for uploader in uploaders {
        let _ = uploader.join();
    }
    retention.stop();
    for sink in sinks.queues.values() {
        if let Sink::Upload(queue) = sink.as_ref() {
            sync_dir(queue.dir())?;
        }
    }
    Ok(summarise(&metrics, &ids, interrupted, seconds))
}

/// Hands each camera its gate from the re-read configuration; a camera
/// whose gate is invalid keeps its old one.
fn reload_gates(config: &Config, recommended: Option<f32>, pending: &[(String, Arc<Mutex<Option<GateConfig>>>)]) {
    for (id, slot) in pending {
        let camera = config.cameras().into_iter().find(|c| &c.id == id);
        let gate = match &camera {
            Some(camera) => config.gate_for(camera, recommended),
            None => config.gate.to_core(recommended),
        };
        match gate {
            Ok(gate) => *slot.lock().unwrap() = Some(gate),
            Err(e) => log::error!("SIGHUP: camera {id}: gate not reloaded: {e:#}"),
        }
    }
    log::info!("SIGHUP: gate thresholds reloaded");
}

/// Re-reads each uploader's token and TLS files (rotation without a
/// restart) from the re-read configuration's section of the same queue; an
/// uploader whose new files are wrong keeps the old ones.
fn reload_uploads(config: &Config, uploaders: &[Arc<Uploader>]) {
    let cameras = config.cameras();
    for uploader in uploaders {
        let dir = uploader.queue().dir();
        let section = cameras
            .iter()
            .filter_map(|c| config.sink_for(c).upload.as_ref())
            .find(|u| u.queue == dir);
        let Some(section) = section else {
            log::error!(
                "SIGHUP: no upload section uses the queue {} any more; its uploader keeps its settings (restart to change queues)",
                dir.display()
            );
            continue;
        };
        match section.settings().and_then(|s| uploader.reload(s)) {
            Ok(()) => log::info!(
                "SIGHUP: upload to {} reloaded (token, certificates, proxy)",
                section.url
            ),
            Err(e) => log::error!("SIGHUP: upload to {}: kept the old settings: {e:#}", section.url),
        }
    }
}

/// The retention sweeper's thread.
struct RetentionThread {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl RetentionThread {
    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }
}

/// Starts sweeping the spools, the audit samples and the queues' `rejected/`.
fn spawn_retention(config: &Config, sinks: &Sinks, metrics: Arc<Metrics>) -> Result<RetentionThread> {
    let r = &config.retention;
    let mut stores: Vec<Store> = sinks
        .spools
        .keys()
        .map(|dir| Store {
            kind: "spool",
            dir: dir.clone(),
            rule: r.rule(r.spool_mb),
        })
        .collect();
    stores.extend(sinks.queues.keys().map(|dir| Store {
        kind: "rejected",
        dir: dir.join(REJECTED_DIR),
        rule: r.rule(r.rejected_mb),
    }));
    stores.extend(config.audit.as_ref().map(|a| Store {
        kind: "audit",
        dir: a.dir.clone(),
        rule: r.rule(r.audit_mb),
    }));
    let stop = Arc::new(AtomicBool::new(false));
    let every = Duration::from_secs_f32(r.sweep_every_s);
    let thread = {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("retention".into())
            .spawn(move || sweep_until(&stores, every, &metrics, &stop))
            .context("cannot start the retention sweeper")?
    };
    Ok(RetentionThread { stop, thread })
}

/// The run's counters as a summary (`seconds`: how long it has run).
pub fn summarise(metrics: &Metrics, ids: &[String], interrupted: bool, seconds: f64) -> Summary {
    let count = |family, id: &str| Metrics::camera_count(family, id);
    let cameras = ids
        .iter()
        .map(|id| CameraSummary {
            id: id.clone(),
            frames: count(&metrics.frames, id),
            decode_errors: count(&metrics.decode_errors, id),
            frames_skipped: count(&metrics.frames_skipped, id),
            faces: count(&metrics.faces, id),
            passed: count(&metrics.passed, id),
            dropped: metrics.dropped_by_reason(id),
            tracked: metrics.tracked_by_reason(id),
            tracks_started: count(&metrics.tracks_started, id),
            tracks_ended: count(&metrics.tracks_ended, id),
        })
        .collect::<Vec<CameraSummary>>();
    let frames: u64 = cameras.iter().map(|c| c.frames).sum();
    Summary {
        cameras,
        uploads: UploadSummary {
            delivered: metrics.upload_count("success"),
            failed_attempts: metrics.upload_count("failure"),
            retries: metrics.upload_retries.get(),
            rejected: metrics.upload_count("rejected"),
            queued: metrics.queue_depth.get(),
            evicted: metrics.queue_evicted.get(),
        },
        interrupted,
        seconds,
        frames_per_s: frames as f64 / seconds.max(1e-9),
        stage_ms: metrics.mean_stage_ms(),
    }
}
