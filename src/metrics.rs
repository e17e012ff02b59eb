//! Prometheus metrics of a run, rendered in the OpenMetrics text format
//! (served by `http`). The same counters feed the run's summary, so the
//! endpoint, the summary and the decision log can be checked against each
//! other.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Label of per-camera series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CameraLabel {
    /// The camera id.
    pub camera: String,
}

/// Label of dropped crops and of tracked faces.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabel {
    /// The camera id.
    pub camera: String,
    /// The gate's reason, `queue_full`, or a tracked face's ([`TRACKED_REASONS`]).
    pub reason: String,
}

/// Label of upload attempts.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `success`, `failure` (will be retried) or `rejected` (the server refused it for good).
    pub outcome: String,
}

/// Label of failed upload attempts.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CauseLabel {
    /// What failed (`sink::upload::Cause`), e.g. `unknown_issuer` or `http_5xx`.
    pub cause: String,
}

/// Label of the stores that retention sweeps.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreLabel {
    /// `spool`, `audit` or `rejected`.
    pub store: String,
}

/// Label of latency histograms.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabel {
    /// `detect`, `align`, `embed` or `sink`.
    pub stage: String,
}

/// Every reason a crop is dropped: the gate's, then the sink's.
pub const DROP_REASONS: [&str; 6] = [
    "low_norm",
    "small_face",
    "low_detector_score",
    "invalid_norm",
    "queue_full",
    "sink_error",
];

/// What happens to a tracked face's crop instead of going out at once.
pub const TRACKED_REASONS: [&str; 4] = ["held", "not_best", "not_embedded", "contested"];

fn uploads_histogram() -> Histogram {
    Histogram::new([0.0, 1.0, 2.0, 3.0, 5.0, 10.0])
}

fn track_histogram() -> Histogram {
    // 0.1 s .. about 7 minutes.
    Histogram::new(exponential_buckets(0.1, 2.0, 13))
}

fn stage_histogram() -> Histogram {
    // 0.5 ms .. about 4 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 14))
}

/// Every metric of a run.
pub struct Metrics {
    registry: Registry,
    /// Frames decoded.
    pub frames: Family<CameraLabel, Counter>,
    /// Frames a live camera overwrote because inference was behind.
    pub frames_skipped: Family<CameraLabel, Counter>,
    /// Frames that did not decode.
    pub decode_errors: Family<CameraLabel, Counter>,
    /// Times a lost camera came back.
    pub camera_reconnects: Family<CameraLabel, Counter>,
    /// Times a camera failed or could not be opened.
    pub camera_failures: Family<CameraLabel, Counter>,
    /// Faces the detector found.
    pub faces: Family<CameraLabel, Counter>,
    /// Crops that passed the gate and were accepted by the sink.
    pub passed: Family<CameraLabel, Counter>,
    /// Crops dropped, by reason.
    pub dropped: Family<DropLabel, Counter>,
    /// Upload attempts by outcome.
    pub uploads: Family<OutcomeLabel, Counter>,
    /// Upload attempts that repeated an earlier failed one.
    pub upload_retries: Counter,
    /// Failed upload attempts by cause.
    pub upload_errors: Family<CauseLabel, Counter>,
    /// Bytes of request bodies sent (crops and their metadata).
    pub upload_bytes: Counter,
    /// Time uploads waited for the uplink budget, seconds.
    pub upload_budget_wait: Counter<f64, AtomicU64>,
    /// Files removed by retention, by store.
    pub retention_files: Family<StoreLabel, Counter>,
    /// Bytes removed by retention, by store.
    pub retention_bytes: Family<StoreLabel, Counter>,
    /// Crops waiting in upload queues.
    pub queue_depth: Gauge,
    /// Bytes of the crops waiting in upload queues.
    pub queue_bytes: Gauge,
    /// Oldest crops removed from a full queue.
    pub queue_evicted: Counter,
    /// Latency of each stage, seconds.
    pub stage_seconds: Family<StageLabel, Histogram>,
    /// Face tracks opened.
    pub tracks_started: Family<CameraLabel, Counter>,
    /// Face tracks ended.
    pub tracks_ended: Family<CameraLabel, Counter>,
    /// Faces whose crop waited on their track (`held`, `not_best`, `not_embedded`, `contested`).
    pub tracked_faces: Family<DropLabel, Counter>,
    /// Crops each ended track sent.
    pub track_uploads: Family<CameraLabel, Histogram>,
    /// How long each ended track lasted, seconds.
    pub track_seconds: Family<CameraLabel, Histogram>,
    /// Sum and count of each stage's latencies, for the run's summary
    /// (the histogram does not expose them).
    stage_totals: Mutex<HashMap<&'static str, (f64, u64)>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut m = Self {
            registry: Registry::with_prefix("normgate"),
            frames: Default::default(),
            frames_skipped: Default::default(),
            decode_errors: Default::default(),
            camera_reconnects: Default::default(),
            camera_failures: Default::default(),
            faces: Default::default(),
            passed: Default::default(),
            dropped: Default::default(),
            uploads: Default::default(),
            upload_retries: Default::default(),
            upload_errors: Default::default(),
            upload_bytes: Default::default(),
            upload_budget_wait: Default::default(),
            retention_files: Default::default(),
            retention_bytes: Default::default(),
            queue_depth: Default::default(),
            queue_bytes: Default::default(),
            queue_evicted: Default::default(),
            stage_seconds: Family::new_with_constructor(stage_histogram as fn() -> Histogram),
            tracks_started: Default::default(),
            tracks_ended: Default::default(),
            tracked_faces: Default::default(),
            track_uploads: Family::new_with_constructor(uploads_histogram as fn() -> Histogram),
            track_seconds: Family::new_with_constructor(track_histogram as fn() -> Histogram),
            stage_totals: Mutex::default(),
        };
        let r = &mut m.registry;
        let per_camera = [
            ("frames", "Frames decoded", &m.frames),
            (
                "frames_skipped",
                "Frames overwritten while inference was behind",
                &m.frames_skipped,
            ),
            ("decode_errors", "Frames that did not decode", &m.decode_errors),
            (
                "camera_reconnects",
                "Times a lost camera came back",
                &m.camera_reconnects,
            ),
            (
                "camera_failures",
                "Times a camera failed or could not be opened",
                &m.camera_failures,
            ),
            ("faces", "Faces detected", &m.faces),
            ("passed", "Crops that passed the gate", &m.passed),
            ("tracks_started", "Face tracks opened", &m.tracks_started),
            ("tracks_ended", "Face tracks ended", &m.tracks_ended),
        ];
        for (name, help, family) in per_camera {
            r.register(name, help, family.clone());
        }
        r.register("dropped", "Crops dropped, by reason", m.dropped.clone());
        r.register(
            "tracked_faces",
            "Faces whose crop waited on their track, by reason",
            m.tracked_faces.clone(),
        );
        r.register("track_uploads", "Crops sent per ended track", m.track_uploads.clone());
        r.register("track_seconds", "Duration of ended tracks", m.track_seconds.clone());
        r.register("uploads", "Upload attempts, by outcome", m.uploads.clone());
        r.register(
            "upload_retries",
            "Upload attempts that retried",
            m.upload_retries.clone(),
        );
        r.register(
            "upload_errors",
            "Failed upload attempts, by cause",
            m.upload_errors.clone(),
        );
        r.register("upload_bytes", "Bytes of request bodies sent", m.upload_bytes.clone());
        r.register(
            "upload_budget_wait_seconds",
            "Time uploads waited for the uplink budget",
            m.upload_budget_wait.clone(),
        );
        r.register(
            "retention_removed_files",
            "Files removed by retention, by store",
            m.retention_files.clone(),
        );
        r.register(
            "retention_removed_bytes",
            "Bytes removed by retention, by store",
            m.retention_bytes.clone(),
        );
        for (name, help, gauge) in [
            ("queue_depth", "Crops waiting for upload", &m.queue_depth),
            ("queue_bytes", "Bytes waiting for upload", &m.queue_bytes),
        ] {
            r.register(name, help, gauge.clone());
        }
        r.register(
            "queue_evicted",
            "Oldest crops removed from a full upload queue",
            m.queue_evicted.clone(),
        );
        r.register("stage_seconds", "Latency of each stage", m.stage_seconds.clone());
        m
    }
}

impl Metrics {
    /// The metrics in the OpenMetrics text format.
    pub fn render(&self) -> String {
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }

    /// Records one stage's latency.
    pub fn observe(&self, stage: &'static str, elapsed: Duration) {
        let mut totals = self.stage_totals.lock().unwrap();
        let entry = totals.entry(stage).or_default();
        entry.0 += elapsed.as_secs_f64();
        entry.1 += 1;
        drop(totals);
        self.stage_seconds
            .get_or_create(&StageLabel { stage: stage.into() })
            .observe(elapsed.as_secs_f64());
    }

    /// Counts one upload attempt's outcome.
    pub fn upload(&self, outcome: &str) {
        self.uploads
            .get_or_create(&OutcomeLabel {
                outcome: outcome.into(),
            })
            .inc();
    }

    /// Counts one failed upload attempt's cause.
    pub fn upload_error(&self, cause: &str) {
        self.upload_errors
            .get_or_create(&CauseLabel { cause: cause.into() })
            .inc();
    }

    /// Failed attempts with this cause.
    pub fn upload_error_count(&self, cause: &str) -> u64 {
        self.upload_errors
            .get_or_create(&CauseLabel { cause: cause.into() })
            .get()
    }

    /// Counts what one retention sweep removed from a store.
    pub fn retention_removed(&self, store: &str, files: u64, bytes: u64) {
        let label = StoreLabel { store: store.into() };
        self.retention_files.get_or_create(&label).inc_by(files);
        self.retention_bytes.get_or_create(&label).inc_by(bytes);
    }

    /// Attempts with this upload outcome.
    pub fn upload_count(&self, outcome: &str) -> u64 {
        self.uploads
            .get_or_create(&OutcomeLabel {
                outcome: outcome.into(),
            })
            .get()
    }

    /// One camera's dropped crops, for every reason seen.
    pub fn dropped_by_reason(&self, camera: &str) -> BTreeMap<String, u64> {
        Self::by_reason(&self.dropped, &DROP_REASONS, camera)
    }

    /// One camera's faces that waited on their track, for every reason seen.
    pub fn tracked_by_reason(&self, camera: &str) -> BTreeMap<String, u64> {
        Self::by_reason(&self.tracked_faces, &TRACKED_REASONS, camera)
    }

    fn by_reason(family: &Family<DropLabel, Counter>, reasons: &[&str], camera: &str) -> BTreeMap<String, u64> {
        reasons
            .iter()
            .map(|reason| {
                let label = DropLabel {
                    camera: camera.into(),
                    reason: (*reason).into(),
                };
                ((*reason).to_string(), family.get_or_create(&label).get())
            })
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    /// Mean latency of each stage seen so far, milliseconds.
    pub fn mean_stage_ms(&self) -> BTreeMap<String, f64> {
        ["detect", "refine", "align", "embed", "sink"]
            .into_iter()
            .filter_map(|stage| {
                let totals = self.stage_totals.lock().unwrap();
                let &(sum, count) = totals.get(stage)?;
                (count > 0).then(|| (stage.to_string(), sum * 1e3 / count as f64))
            })
            .collect()
    }

    /// A per-camera counter's value.
    pub fn camera_count(family: &Family<CameraLabel, Counter>, camera: &str) -> u64 {
        family.get_or_create(&CameraLabel { camera: camera.into() }).get()
    }
}
