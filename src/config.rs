//! The device's configuration: a TOML file whose every field has a default,
//! so an empty file (or none) runs the embedded default on the samples.
//! Unknown keys are errors, so a typo is caught at start, not in the field.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use normgate_core::gate::{GateConfig, Policy};
use serde::{Deserialize, Serialize};

use crate::camera::CaptureSettings;
use crate::detector::DetectParams;
use crate::embedded;
use crate::retention::Rule;
use crate::sink::budget::BudgetSettings;
use crate::sink::queue::{Limits, WhenFull};
use crate::sink::tls::{TlsFiles, Trust};
use crate::sink::upload::{Method, UploadSettings};
use crate::source::SourceSpec;
use crate::tracking::{CapturePolicy, TrackingSection};
use crate::variant::Choice;

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The detector and embedder.
    pub models: ModelsSection,
    /// Detection thresholds.
    pub detector: DetectorSection,
    /// Gate thresholds shared by every camera unless a camera overrides them.
    pub gate: GateSection,
    /// Face tracks and which crops are sent, unless a camera overrides it.
    pub tracking: TrackingSection,
    /// Where passing crops go, unless a camera says otherwise.
    pub sink: SinkSection,
    /// Where a sample of the dropped crops is kept for inspection.
    pub audit: Option<AuditSection>,
    /// How long face crops stay on disk.
    pub retention: RetentionSection,
    /// The Prometheus endpoint.
    pub metrics: MetricsSection,
    /// The decision log.
    pub log: LogSection,
    /// One section per camera (`[[camera]]`); none means the embedded default.
    #[serde(rename = "camera")]
    pub cameras: Vec<CameraSection>,
}

/// `[models]`: ONNX files, each with its card (`model.toml`) beside it.
/// Relative paths are taken from the working directory; `embedded:NAME`
/// names a model compiled into the binary (the defaults, `normgate models`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ModelsSection {
    /// The face detector.
    pub detector: PathBuf,
    /// The face embedder (the backbone whose feature norm is judged).
    pub embedder: PathBuf,
    /// The landmark refiner run on every detected face before alignment;
    /// `none` (or an empty path) aligns from the detector's own landmarks.
    pub refiner: PathBuf,
    /// Crops embedded per run when the model's batch is free. A short last
    /// batch is padded, so raise this only where frames often hold several faces.
    pub batch: usize,
    /// Which of the detector's variants runs: `auto` (the faster on this
    /// CPU, timed at the first start), `fp32` or `int8`.
    pub detector_variant: Choice,
    /// Which of the embedder's variants runs, as `detector_variant`.
    pub embedder_variant: Choice,
    /// Where `auto` keeps its timings (keyed by CPU, binary and model files).
    pub variant_cache: PathBuf,
}

impl Default for ModelsSection {
    fn default() -> Self {
        Self {
            detector: embedded::default_path("detector.onnx"),
            embedder: embedded::default_path("backbone.onnx"),
            refiner: embedded::default_path("refiner.onnx"),
            batch: 1,
            detector_variant: Choice::Auto,
            embedder_variant: Choice::Auto,
            variant_cache: "variant-cache.json".into(),
        }
    }
}

/// `[detector]`: which detections count as faces.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DetectorSection {
    /// Smallest detector score kept.
    pub score_threshold: f32,
    /// IoU above which the weaker of two boxes is suppressed.
    pub nms_iou: f32,
}

impl Default for DetectorSection {
    fn default() -> Self {
        let d = DetectParams::default();
        Self {
            score_threshold: d.score_threshold,
            nms_iou: d.nms_iou,
        }
    }
}

impl DetectorSection {
    /// The detector's parameters, validated.
    pub fn to_params(self) -> Result<DetectParams> {
        if !(0.0..=1.0).contains(&self.score_threshold) || !(0.0..=1.0).contains(&self.nms_iou) {
            bail!("[detector] score_threshold and nms_iou must be in [0, 1]");
        }
        Ok(DetectParams {
            score_threshold: self.score_threshold,
            nms_iou: self.nms_iou,
        })
    }
}

/// `[audit]`: a sample of dropped crops, written like the spool.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuditSection {
    /// Directory of the kept crops.
    pub dir: PathBuf,
    /// Share of dropped crops kept, in (0, 1].
    pub sample_rate: f32,
}

/// `[retention]`: how long and how much of the face crops the device keeps
/// on disk (biometric data: keep no more than you need). It applies to each
/// spool directory, the audit samples and each queue's `rejected/`; the
/// upload queue has its own bounds (`[sink.upload]`).
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionSection {
    /// Crops older than this are removed, days; 0: no age limit.
    pub days: f32,
    /// Most megabytes in each spool directory (oldest removed first); 0: no cap.
    pub spool_mb: f32,
    /// Most megabytes of audit samples; 0: no cap.
    pub audit_mb: f32,
    /// Most megabytes in each queue's `rejected/`; 0: no cap.
    pub rejected_mb: f32,
    /// Seconds between sweeps (one runs at start).
    pub sweep_every_s: f32,
}

impl Default for RetentionSection {
    fn default() -> Self {
        Self {
            days: 30.0,
            spool_mb: 1000.0,
            audit_mb: 200.0,
            rejected_mb: 100.0,
            sweep_every_s: 600.0,
        }
    }
}

impl RetentionSection {
    /// Checks value ranges.
    pub fn validate(&self) -> Result<()> {
        let limits = [self.days, self.spool_mb, self.audit_mb, self.rejected_mb];
        if !limits.iter().all(|v| v.is_finite() && *v >= 0.0) {
            bail!("days, spool_mb, audit_mb and rejected_mb must be positive, or 0 for no limit");
        }
        if !(self.sweep_every_s.is_finite() && self.sweep_every_s > 0.0) {
            bail!("sweep_every_s must be positive");
        }
        Ok(())
    }

    /// The rule of a store whose cap is `mb`.
    pub fn rule(&self, mb: f32) -> Rule {
        Rule {
            max_age: (self.days > 0.0).then(|| Duration::from_secs_f64(f64::from(self.days) * 86_400.0)),
            max_bytes: (mb > 0.0).then(|| (f64::from(mb) * 1e6) as u64),
        }
    }
}

/// `[metrics]`: the Prometheus endpoint and the status page.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    /// `host:port` to serve `/metrics` and the status page on, or `off`.
    /// Loopback by default: expose it to a network only on purpose.
    pub listen: String,
    /// File holding the bearer token that the status page and its API
    /// (they show faces) need when `listen` is not a loopback address.
    pub token_file: Option<PathBuf>,
}

impl Default for MetricsSection {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9464".into(),
            token_file: None,
        }
    }
}

impl MetricsSection {
    /// The status page's token, read from `token_file` (trimmed).
    pub fn token(&self) -> Result<Option<String>> {
        let Some(file) = &self.token_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("[metrics] token_file {}: cannot read it", file.display()))?;
        let token = text.trim();
        if token.is_empty() || token.chars().any(|c| c.is_whitespace() || c == ';') {
            bail!(
                "[metrics] token_file {}: write one token (no spaces or ';') into it",
                file.display()
            );
        }
        Ok(Some(token.to_string()))
    }
}

/// `[log]`: the decision log.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// JSON-lines file that every decision is appended to.
    pub decisions: PathBuf,
}

impl Default for LogSection {
    fn default() -> Self {
        Self {
            decisions: "decisions.jsonl".into(),
        }
    }
}

/// Thresholds of the gate (see `normgate_core::gate`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GateSection {
    /// The norm threshold policy; without one, a fixed threshold at the
    /// embedder card's recommended value (the seed's 5.0 when it has none).
    pub policy: Option<PolicySection>,
    /// Half-width of the hysteresis band, in norm units.
    pub hysteresis: f32,
    /// Smallest face (shorter box side, pixels) that is judged.
    pub min_face_px: f32,
    /// Smallest detector score that is judged.
    pub min_detector_score: f32,
}

impl Default for GateSection {
    fn default() -> Self {
        Self {
            policy: None,
            hysteresis: 0.0,
            min_face_px: 32.0,
            min_detector_score: 0.6,
        }
    }
}

/// `[gate.policy]`: `kind` selects the policy, the other keys are its parameters.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum PolicySection {
    /// A fixed norm threshold.
    Fixed {
        /// Crops with a smaller norm are dropped.
        threshold: f32,
    },
    /// `factor` times an exponential average of the norms seen.
    RunningAverage {
        /// Weight of the newest norm, in (0, 1].
        weight: f32,
        /// Multiplier of the average.
        factor: f32,
        /// Lowest threshold ever used.
        #[serde(default)]
        floor: f32,
    },
    /// Drop about `rate` of the crops (streaming quantile).
    DropRate {
        /// Target share of dropped crops, in (0, 1).
        rate: f32,
        /// Lowest threshold ever used.
        #[serde(default)]
        floor: f32,
    },
}

/// The seed's NormSelect threshold, for an embedder whose card recommends none.
pub const SEED_THRESHOLD: f32 = 5.0;

impl GateSection {
    /// The core's gate configuration, validated; `recommended` is the
    /// embedder card's threshold, used when no policy is configured.
    pub fn to_core(&self, recommended: Option<f32>) -> Result<GateConfig> {
        let fixed = PolicySection::Fixed {
            threshold: recommended.unwrap_or(SEED_THRESHOLD),
        };
        let policy = match self.policy.unwrap_or(fixed) {
            PolicySection::Fixed { threshold } => Policy::Fixed { threshold },
            PolicySection::RunningAverage { weight, factor, floor } => Policy::RunningAverage { weight, factor, floor },
            PolicySection::DropRate { rate, floor } => Policy::DropRate { rate, floor },
        };
        let config = GateConfig {
            policy,
            hysteresis: self.hysteresis,
            min_face_px: self.min_face_px,
            min_detector_score: self.min_detector_score,
        };
        config.validate()?;
        Ok(config)
    }
}

/// `[sink]`: where passing crops go: the spool directory, or an HTTP server
/// when `[sink.upload]` is present.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SinkSection {
    /// Local spool directory (the embedded default).
    pub spool: PathBuf,
    /// Upload to a server instead, through a durable queue.
    pub upload: Option<UploadSection>,
}

impl Default for SinkSection {
    fn default() -> Self {
        Self {
            spool: "spool".into(),
            upload: None,
        }
    }
}

/// `[sink.upload]`: HTTP delivery through a durable on-disk queue.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UploadSection {
    /// `http://` or `https://` URL; for `put`, `{key}` and `{camera}` are filled in.
    pub url: String,
    /// `post` (multipart: metadata + crop) or `put` (the JPEG, metadata in a header).
    #[serde(default = "default_method")]
    pub method: Method,
    /// File holding the bearer token (first line).
    pub token_file: Option<PathBuf>,
    /// Environment variable holding the bearer token.
    #[serde(default = "default_token_env")]
    pub token_env: String,
    /// Limit of one request, seconds.
    #[serde(default = "default_timeout")]
    pub timeout_s: f32,
    /// The queue directory.
    #[serde(default = "default_queue")]
    pub queue: PathBuf,
    /// Most crops the queue holds.
    #[serde(default = "default_max_items")]
    pub max_items: usize,
    /// Most megabytes the queue holds.
    #[serde(default = "default_max_mb")]
    pub max_mb: f32,
    /// What a full queue does: `reject` new crops or `drop_oldest`.
    #[serde(default = "default_when_full")]
    pub when_full: WhenFull,
    /// First retry delay, seconds.
    #[serde(default = "default_retry_initial")]
    pub retry_initial_s: f32,
    /// Longest retry delay, seconds.
    #[serde(default = "default_retry_max")]
    pub retry_max_s: f32,
    /// How long a run whose sources have ended keeps sending before it exits
    /// (what is left stays queued for the next run), seconds.
    #[serde(default = "default_drain")]
    pub drain_timeout_s: f32,
    /// Roots that vouch for the server: `bundled` (Mozilla's, the default),
    /// `system` (the OS store) or `file` (`ca_file`, the default when it is set).
    pub trust: Option<Trust>,
    /// PEM bundle of the CAs to trust (a fleet's private CA).
    pub ca_file: Option<PathBuf>,
    /// PEM certificate chain for servers that require mutual TLS.
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert`.
    pub client_key: Option<PathBuf>,
    /// HTTP CONNECT proxy, `http://host:port`; unset: `HTTPS_PROXY` (or
    /// `ALL_PROXY`, `HTTP_PROXY`) and `NO_PROXY` from the environment.
    pub proxy: Option<String>,
    /// Most kilobits per second sent on average (bursts of at most one
    /// second of it); 0: no limit.
    #[serde(default)]
    pub max_kbps: f32,
    /// Most megabytes sent per UTC day; 0: no cap. What waits stays queued.
    #[serde(default)]
    pub daily_mb: f32,
}

fn default_method() -> Method {
    Method::Post
}
fn default_token_env() -> String {
    "NORMGATE_TOKEN".into()
}
fn default_timeout() -> f32 {
    10.0
}
fn default_queue() -> PathBuf {
    "queue".into()
}
fn default_max_items() -> usize {
    10_000
}
fn default_max_mb() -> f32 {
    256.0
}
fn default_when_full() -> WhenFull {
    WhenFull::DropOldest
}
fn default_retry_initial() -> f32 {
    0.5
}
fn default_retry_max() -> f32 {
    60.0
}
fn default_drain() -> f32 {
    30.0
}

impl UploadSection {
    /// An upload section with every default, for `url`.
    pub fn to(url: &str) -> Self {
        Self {
            url: url.into(),
            method: default_method(),
            token_file: None,
            token_env: default_token_env(),
            timeout_s: default_timeout(),
            queue: default_queue(),
            max_items: default_max_items(),
            max_mb: default_max_mb(),
            when_full: default_when_full(),
            retry_initial_s: default_retry_initial(),
            retry_max_s: default_retry_max(),
            drain_timeout_s: default_drain(),
            trust: None,
            ca_file: None,
            client_cert: None,
            client_key: None,
            proxy: None,
            max_kbps: 0.0,
            daily_mb: 0.0,
        }
    }

    /// The TLS files.
    pub fn tls(&self) -> TlsFiles {
        TlsFiles {
            trust: self.trust,
            ca_file: self.ca_file.clone(),
            client_cert: self.client_cert.clone(),
            client_key: self.client_key.clone(),
        }
    }

    /// Checks value ranges.
    pub fn validate(&self) -> Result<()> {
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            bail!("upload url {:?} must start with http:// or https://", self.url);
        }
        let durations = [self.timeout_s, self.retry_initial_s, self.retry_max_s];
        let positive = |d: f32| d.is_finite() && d > 0.0;
        let drain_ok = self.drain_timeout_s.is_finite() && self.drain_timeout_s >= 0.0;
        if !durations.into_iter().all(positive) || !drain_ok {
            bail!("upload timeout_s, retry_initial_s and retry_max_s must be positive, drain_timeout_s not negative");
        }
        if self.max_items == 0 || !positive(self.max_mb) {
            bail!("upload max_items and max_mb must be positive");
        }
        let unlimited_or_positive = |v: f32| v.is_finite() && v >= 0.0;
        if !unlimited_or_positive(self.max_kbps) || !unlimited_or_positive(self.daily_mb) {
            bail!("upload max_kbps and daily_mb must be positive, or 0 for no limit");
        }
        self.tls().validate()
    }

    /// The bearer token, from the file or else the environment variable.
    pub fn token(&self) -> Result<Option<String>> {
        if let Some(file) = &self.token_file {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read the upload token file {}", file.display()))?;
            let token = text.lines().next().unwrap_or_default().trim().to_string();
            if token.is_empty() {
                bail!("the upload token file {} is empty", file.display());
            }
            return Ok(Some(token));
        }
        Ok(std::env::var(&self.token_env).ok().filter(|t| !t.trim().is_empty()))
    }

    /// The uploader's settings (the token read now).
    pub fn settings(&self) -> Result<UploadSettings> {
        Ok(UploadSettings {
            url: self.url.clone(),
            method: self.method,
            token: self.token()?,
            timeout: Duration::from_secs_f32(self.timeout_s),
            retry_initial: Duration::from_secs_f32(self.retry_initial_s),
            retry_max: Duration::from_secs_f32(self.retry_max_s),
            tls: self.tls(),
            proxy: self.proxy.clone(),
            budget: BudgetSettings {
                bytes_per_s: (self.max_kbps > 0.0).then(|| f64::from(self.max_kbps) * 1000.0 / 8.0),
                bytes_per_day: (self.daily_mb > 0.0).then(|| (f64::from(self.daily_mb) * 1e6) as u64),
            },
        })
    }

    /// The queue's bounds.
    pub fn limits(&self) -> Limits {
        Limits {
            max_items: self.max_items,
            max_bytes: (f64::from(self.max_mb) * 1e6) as u64,
            when_full: self.when_full,
        }
    }
}

/// `[[camera]]`: one frame source and, optionally, its own gate.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CameraSection {
    /// A name that appears in logs, metrics and crop metadata.
    pub id: String,
    /// Where frames come from (see `SourceSpec`).
    pub source: String,
    /// Overrides `[gate]` for this camera.
    pub gate: Option<GateSection>,
    /// Overrides `[sink]` for this camera.
    pub sink: Option<SinkSection>,
    /// Overrides `[tracking]` for this camera.
    pub tracking: Option<TrackingSection>,
    /// Capture settings of a V4L2 camera.
    #[serde(default)]
    pub capture: CaptureSettings,
}

impl CameraSection {
    /// A camera with the shared gate and sink.
    pub fn new(id: &str, source: &str) -> Self {
        Self {
            id: id.into(),
            source: source.into(),
            gate: None,
            sink: None,
            tracking: None,
            capture: CaptureSettings::default(),
        }
    }
}

/// The camera used when the file names none: the bundled sample images,
/// gated frame by frame.
pub const DEFAULT_SOURCE: &str = "samples";

/// The bundled samples that show no face (tests and the walk-by's backgrounds).
pub const FACE_FREE_SAMPLES: [&str; 6] = [
    "brick.png",
    "grass.png",
    "gravel.png",
    "coffee.png",
    "rocket.jpg",
    "hubble_deep_field.jpg",
];

impl Config {
    /// Reads and validates a TOML file.
    pub fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read config file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("config file {} is not valid", path.display()))
    }

    /// Parses and validates a configuration's text.
    pub fn parse(text: &str) -> Result<Self> {
        let config: Config = toml::from_str(text).context("fix the key named below")?;
        config.validate()?;
        Ok(config)
    }

    /// The cameras to run: those configured, or the embedded default.
    pub fn cameras(&self) -> Vec<CameraSection> {
        if self.cameras.is_empty() {
            let mut samples = CameraSection::new("default", DEFAULT_SOURCE);
            // Unrelated still images, not a video: each face is gated on its own.
            samples.tracking = Some(TrackingSection {
                policy: CapturePolicy::PerFrame,
                ..self.tracking
            });
            vec![samples]
        } else {
            self.cameras.clone()
        }
    }

    /// The gate configuration of one camera (`recommended`: see `GateSection::to_core`).
    pub fn gate_for(&self, camera: &CameraSection, recommended: Option<f32>) -> Result<GateConfig> {
        camera.gate.as_ref().unwrap_or(&self.gate).to_core(recommended)
    }

    /// The tracking of one camera.
    pub fn tracking_for(&self, camera: &CameraSection) -> TrackingSection {
        camera.tracking.unwrap_or(self.tracking)
    }

    /// The sink of one camera.
    pub fn sink_for<'a>(&'a self, camera: &'a CameraSection) -> &'a SinkSection {
        camera.sink.as_ref().unwrap_or(&self.sink)
    }

    /// Checks what serde cannot: value ranges, unique camera ids, parseable sources.
    pub fn validate(&self) -> Result<()> {
        self.gate.to_core(None).context("[gate]")?;
        self.tracking.validate().context("[tracking]")?;
        self.retention.validate().context("[retention]")?;
        self.detector.to_params()?;
        if self.models.batch == 0 {
            bail!("[models] batch must be at least 1");
        }
        if let Some(audit) = &self.audit {
            if !(audit.sample_rate > 0.0 && audit.sample_rate <= 1.0) {
                bail!("[audit] sample_rate must be in (0, 1]");
            }
        }
        if let Some(upload) = &self.sink.upload {
            upload.validate().context("[sink.upload]")?;
        }
        let mut ids = HashSet::new();
        for camera in &self.cameras {
            if camera.id.is_empty()
                || !camera
                    .id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                bail!(
                    "camera id {:?}: use letters, digits, '-', '_' or '.' (it names files and metrics)",
                    camera.id
                );
            }
            if !ids.insert(&camera.id) {
                bail!("camera id {:?} appears twice; ids must be unique", camera.id);
            }
            self.gate_for(camera, None)
                .with_context(|| format!("[camera] {:?}: gate", camera.id))?;
            self.tracking_for(camera)
                .validate()
                .with_context(|| format!("[camera] {:?}: tracking", camera.id))?;
            SourceSpec::parse(&camera.source).with_context(|| format!("[camera] {:?}: source", camera.id))?;
            camera
                .capture
                .validate()
                .with_context(|| format!("[camera] {:?}: capture", camera.id))?;
            if let Some(upload) = camera.sink.as_ref().and_then(|s| s.upload.as_ref()) {
                upload
                    .validate()
                    .with_context(|| format!("[camera] {:?}: sink.upload", camera.id))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Debian package installs this file as /etc/normgate/normgate.toml.
    #[test]
    fn the_packaged_config_is_valid_and_keeps_state_under_var_lib() {
        let config = Config::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/normgate.toml")).unwrap();
        assert_eq!(config.cameras()[0].source, "v4l2:/dev/video0");
        assert_eq!(config.models, ModelsSection::default());
        assert!(config.sink.spool.starts_with("/var/lib/normgate"));
        assert!(config.log.decisions.starts_with("/var/lib/normgate"));
        assert_eq!(config.metrics.listen, "127.0.0.1:9464");
    }

    /// Dotted paths of every key of a TOML value (arrays of tables by their key).
    fn key_paths(value: &toml::Value, prefix: &str, out: &mut std::collections::BTreeSet<String>) {
        let tables: Vec<&toml::Table> = match value {
            toml::Value::Table(t) => vec![t],
            toml::Value::Array(items) => items.iter().filter_map(toml::Value::as_table).collect(),
            _ => return,
        };
        for table in tables {
            for (key, v) in table {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                key_paths(v, &path, out);
                out.insert(path);
            }
        }
    }

    /// The README's configuration reference parses and names every key of
    /// every section it shows, and every section, so it cannot drift from the types.
    #[test]
    fn the_readme_configuration_reference_is_valid_and_complete() {
        let readme = include_str!("../README.md");
        let section = readme.split("\n## Configuration reference\n").nth(1).unwrap();
        let example = section.split("```toml\n").nth(1).unwrap().split("```").next().unwrap();
        let config = Config::parse(example).unwrap();
        let mut written = std::collections::BTreeSet::new();
        key_paths(&toml::from_str(example).unwrap(), "", &mut written);
        let mut known = std::collections::BTreeSet::new();
        key_paths(&toml::Value::try_from(&config).unwrap(), "", &mut known);
        key_paths(&toml::Value::try_from(Config::default()).unwrap(), "", &mut known);
        // A camera's overrides repeat the top-level sections' keys.
        let missing: Vec<&String> = known
            .difference(&written)
            .filter(|k| {
                !["camera.gate.", "camera.sink", "camera.tracking"]
                    .iter()
                    .any(|p| k.starts_with(p))
            })
            .collect();
        assert!(missing.is_empty(), "README's configuration reference lacks {missing:?}");
        let upload = config.sink.upload.unwrap();
        assert_eq!(upload.tls().effective_trust(), Trust::File);
        assert_eq!(config.retention, RetentionSection::default());
        assert_eq!(config.tracking, TrackingSection::default());
    }

    #[test]
    fn empty_file_is_the_embedded_default() {
        let c = Config::parse("").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.cameras()[0].source, DEFAULT_SOURCE);
        assert_eq!(c.gate.to_core(None).unwrap().policy, Policy::Fixed { threshold: 5.0 });
        assert_eq!(
            c.gate.to_core(Some(9.5)).unwrap().policy,
            Policy::Fixed { threshold: 9.5 }
        );
    }

    #[test]
    fn policies_and_camera_overrides_parse() {
        let c = Config::parse(
            r#"
            [gate]
            hysteresis = 0.5
            [gate.policy]
            kind = "drop_rate"
            rate = 0.3
            floor = 4.0

            [[camera]]
            id = "door"
            source = "samples"
            [camera.gate.policy]
            kind = "running_average"
            weight = 0.1
            factor = 0.8
            "#,
        )
        .unwrap();
        assert_eq!(
            c.gate.to_core(Some(9.5)).unwrap().policy,
            Policy::DropRate { rate: 0.3, floor: 4.0 }
        );
        let door = c.gate_for(&c.cameras()[0], None).unwrap();
        assert_eq!(
            door.policy,
            Policy::RunningAverage {
                weight: 0.1,
                factor: 0.8,
                floor: 0.0
            }
        );
        assert_eq!(door.min_face_px, 32.0);
    }

    #[test]
    fn an_upload_sink_and_camera_overrides_parse_with_defaults() {
        let c = Config::parse(
            r#"
            [sink.upload]
            url = "https://example.org/crops"
            token_file = "/etc/normgate/token"
            when_full = "reject"

            [[camera]]
            id = "gate"
            source = "v4l2:/dev/video0"
            [camera.capture]
            width = 1280
            height = 720
            [camera.sink]
            spool = "/var/spool/gate"
            "#,
        )
        .unwrap();
        let upload = c.sink.upload.as_ref().unwrap();
        assert_eq!(upload.method, Method::Post);
        assert_eq!(upload.limits().when_full, WhenFull::Reject);
        assert_eq!(upload.limits().max_bytes, 256_000_000);
        let camera = &c.cameras()[0];
        assert_eq!(camera.capture.fps, 15);
        assert_eq!(camera.capture.width, 1280);
        assert!(c.sink_for(camera).upload.is_none());
        assert_eq!(c.metrics.listen, "127.0.0.1:9464");
    }

    #[test]
    fn the_token_comes_from_its_file_first() {
        let dir = std::env::temp_dir().join(format!("normgate-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "s3cret\n").unwrap();
        let mut upload = UploadSection::to("http://127.0.0.1:1/");
        upload.token_env = "NORMGATE_TEST_TOKEN_THAT_IS_NOT_SET".into();
        assert_eq!(upload.token().unwrap(), None);
        upload.token_file = Some(file.clone());
        assert_eq!(upload.token().unwrap().as_deref(), Some("s3cret"));
        std::fs::write(&file, "\n").unwrap();
        assert!(format!("{:#}", upload.token().unwrap_err()).contains("empty"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn mistakes_are_named() {
        let err = |text: &str| format!("{:#}", Config::parse(text).unwrap_err());
        assert!(err("[gate]\nhysterisis = 1.0").contains("hysterisis"));
        assert!(err("[gate.policy]\nkind = \"drop_rate\"\nrate = 1.5").contains("rate"));
        assert!(err("[gate.policy]\nkind = \"median\"").contains("median"));
        let twice = "[[camera]]\nid = \"a\"\nsource = \"samples\"\n[[camera]]\nid = \"a\"\nsource = \"samples\"";
        assert!(err(twice).contains("twice"));
        assert!(err("[[camera]]\nid = \"a b\"\nsource = \"samples\"").contains("letters"));
        assert!(err("[sink.upload]\nurl = \"ftp://x\"").contains("http://"));
        assert!(err("[sink.upload]\nurl = \"http://x\"\nwhen_full = \"panic\"").contains("panic"));
        assert!(err("[audit]\ndir = \"a\"\nsample_rate = 0.0").contains("sample_rate"));
        assert!(err("[[camera]]\nid = \"a\"\nsource = \"v4l2:0\"\n[camera.capture]\nfps = 0").contains("fps"));
        assert!(err("[tracking]\npolicy = \"best\"").contains("best"));
        assert!(err("[tracking]\nregrow = 0.5").contains("regrow"));
        assert!(
            err("[[camera]]\nid = \"a\"\nsource = \"samples\"\n[camera.tracking]\nmax_tracks = 0")
                .contains("max_tracks")
        );
    }
}
