//! One camera's pipeline: frame -> faces -> aligned crops -> features ->
//! gate decisions -> sink, with every decision logged and counted. Faces the
//! gate drops whatever their norm (too small, too uncertain) are not embedded;
//! with tracking, neither are the faces of a track that holds a clearly good
//! crop, and a passing crop waits on its track (`tracking`).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use image::RgbImage;
use normgate_core::gate::{Candidate, Gate, GateConfig, Reason};
use normgate_core::norm::l2_norm;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::card::{check_model, ModelCard};
use crate::config::ModelsSection;
use crate::detector::{DetectParams, Detector, Face};
use crate::embedder::Embedder;
use crate::feed::{Feed, Next};
use crate::landmarks::Locator;
use crate::metrics::{CameraLabel, DropLabel, Metrics, TRACKED_REASONS};
use crate::record::{content_key, now_rfc3339, Crop, DecisionLog, FaceRecord};
use crate::sink::spool::Spool;
use crate::sink::Sink;
use crate::source::{Frame, Item};
use crate::status::StatusBoard;
use crate::tracking::{CameraTracks, Observed, Release};
use crate::variant;

/// How much larger than the face box the uploaded crop is, per side.
const CROP_SCALE: f32 = 1.5;
/// JPEG quality of uploaded crops.
const JPEG_QUALITY: u8 = 90;

/// The models every camera shares.
pub struct Models {
    /// Face detector, with the landmark refiner when one is configured.
    pub locator: Locator,
    /// Face embedder.
    pub embedder: Embedder,
}
impl Models {
    /// Loads the models, refusing a missing file or card with a message that
    /// says what to fix; of a model with variants, the one the section picks.
    pub fn load(section: &ModelsSection, detect: &DetectParams) -> Result<Self> {
        check_model(&section.detector, "face detector", "detector")?;
        let detector = variant::pick(
            "detector",
            &section.detector,
            section.detector_variant,
            &section.variant_cache,
            &mut |file, runs| {
                let detector = Detector::load(file, &ModelCard::path_for(file))?;
                let frame = RgbImage::from_pixel(640, 480, image::Rgb([128; 3]));
                variant::median_time(runs, &mut || detector.detect(&frame, detect).map(drop))
            },
        )?;
        let locator = Locator::load(&detector, &section.refiner)?;
        check_model(&section.embedder, "face embedder", "embedder")?;
        let embedder = variant::pick(
            "embedder",
            &section.embedder,
            section.embedder_variant,
            &section.variant_cache,
            &mut |file, runs| {
                let embedder = Embedder::load(file, &ModelCard::path_for(file), section.batch)?;
                let card = embedder.card();
                let crops = vec![RgbImage::from_pixel(card.width, card.height, image::Rgb([128; 3])); section.batch];
                variant::median_time(runs, &mut || embedder.embed(&crops).map(drop))
            },
        )?;
        let embedder = Embedder::load(&embedder, &ModelCard::path_for(&embedder), section.batch)?;
        Ok(Self { locator, embedder })
    }
}

/// Kept samples of dropped crops.
pub struct Audit {
    /// Where they go.
    pub spool: Spool,
    /// Share kept.
    pub sample_rate: f32,
}

/// The square region around a face box, `scale` times its longer side,
/// shifted (not cut) to lie inside the frame: `[x, y, w, h]`. Crops are
/// cut at [`CROP_SCALE`], the status page's thumbnails at 1.
pub fn crop_region(bbox: &[f32; 4], scale: f32, width: u32, height: u32) -> [u32; 4] {
    let [x1, y1, x2, y2] = *bbox;
    let side = ((x2 - x1).max(y2 - y1) * scale).min(width.min(height) as f32).max(1.0);
    let x = ((x1 + x2 - side) / 2.0).clamp(0.0, width as f32 - side);
    let y = ((y1 + y2 - side) / 2.0).clamp(0.0, height as f32 - side);
    [x as u32, y as u32, side as u32, side as u32]
}

/// The image as a JPEG of `quality`.
pub fn jpeg(image: &RgbImage, quality: u8) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality).encode_image(image)?;
    Ok(out)
}

/// What every camera's pipeline shares.
pub struct Shared {
    /// The models.
    pub models: Models,
    /// Detection thresholds.
    pub detect: DetectParams,
    /// Where sampled dropped crops go.
    pub audit: Option<Audit>,
    /// The decision log.
    pub log: DecisionLog,
    /// The run's metrics.
    pub metrics: Arc<Metrics>,
    /// What the status page shows.
    pub board: Arc<StatusBoard>,
}

/// One camera's pipeline state.
pub struct CameraPipeline {
    /// Camera id.
    pub id: String,
    gate: Gate,
    /// A new gate configuration to take before the next frame (SIGHUP).
    pub pending_gate: Arc<Mutex<Option<GateConfig>>>,
    sink: Arc<Sink>,
    shared: Arc<Shared>,
    /// The camera's face tracks; `None` sends crops frame by frame.
    tracks: Option<CameraTracks>,
    /// Whether an unconfirmed track has been reported at info level.
    unconfirmed_noted: AtomicBool,
}

impl CameraPipeline {
    /// Wires one camera.
    pub fn new(
        id: String,
        gate: GateConfig,
        tracks: Option<CameraTracks>,
        sink: Arc<Sink>,
        shared: Arc<Shared>,
    ) -> Result<Self> {
        Ok(Self {
            id,
            gate: Gate::new(gate)?,
            pending_gate: Arc::default(),
            sink,
            shared,
            tracks,
            unconfirmed_noted: AtomicBool::new(false),
        })
    }

    fn label(&self) -> CameraLabel {
        CameraLabel {
            camera: self.id.clone(),
        }
    }

    /// Counts a face under `reason` in a per-camera, per-reason family.
    fn count_reason(&self, family: &Family<DropLabel, Counter>, reason: &str) {
        family
            .get_or_create(&DropLabel {
                camera: self.id.clone(),
                reason: reason.into(),
            })
            .inc();
    }

    /// The tracks of this frame's faces (all `None` without tracking), and
    /// the crops of tracks that ended or whose window closed.
    fn track(&mut self, frame: &Frame, faces: &[Face]) -> Observed {
        let Some(tracks) = &mut self.tracks else {
            return Observed {
                tracks: vec![None; faces.len()],
                contested: vec![false; faces.len()],
                releases: Vec::new(),
            };
        };
        let boxes: Vec<[f32; 4]> = faces.iter().map(|f| f.bbox).collect();
        let bounds = [frame.image.width() as f32, frame.image.height() as f32];
        tracks.observe(frame.index, &boxes, bounds)
    }

    /// Hands a passing crop to the sink; a full or failing sink turns the
    /// record into a drop.
    fn deliver(&self, crop: &Crop, record: &mut FaceRecord) {
        let started = Instant::now();
        let accepted = self.sink.accept(crop);
        self.shared.metrics.observe("sink", started.elapsed());
        match accepted {
            Ok(true) => {}
            Ok(false) => {
                record.pass = false;
                record.reason = "queue_full".into();
            }
            Err(e) => {
                log::error!("{}: cannot store a passing crop: {e:#}", self.id);
                record.pass = false;
                record.reason = "sink_error".into();
            }
        }
    }

    /// Sends a track's released crop and counts the track's end.
    fn release(&self, release: Release, records: &mut Vec<FaceRecord>) {
        let label = self.label();
        if let (Some(sent), Some(tracks)) = (release.ended_after, &self.tracks) {
            let metrics = &self.shared.metrics;
            metrics.tracks_ended.get_or_create(&label).inc();
            metrics.track_uploads.get_or_create(&label).observe(f64::from(sent));
            metrics
                .track_seconds
                .get_or_create(&label)
                .observe(tracks.duration_s(release.frames));
            if release.unconfirmed {
                self.note_unconfirmed(&release, tracks.confirm_hits());
            } else if sent == 0 {
                log::info!(
                    "{}: track {} (frames {}-{}) ended without a crop that passed the gate",
                    self.id,
                    release.track,
                    release.frames[0],
                    release.frames[1]
                );
            }
        }
        let Some(crop) = release.crop else {
            return;
        };
        let mut crop = crop;
        crop.record.pass = true;
        crop.record.reason = "best_of_track".into();
        crop.record.track_frames = Some(release.frames);
        let mut record = crop.record.clone();
        self.deliver(&crop, &mut record);
        self.count_outcome(&record);
        records.push(record);
    }

    /// Says why a track's crop was not sent: once at info level with the
    /// fix for still images (each a track of one frame), then at debug level.
    fn note_unconfirmed(&self, release: &Release, confirm_hits: u32) {
        let first = !self.unconfirmed_noted.swap(true, Ordering::Relaxed);
        let level = if first { log::Level::Info } else { log::Level::Debug };
        log::log!(
            level,
            "{}: track {} (frames {}-{}) ended before it was seen in {confirm_hits} frames: taken for a passing detection, its crop is not sent{}",
            self.id,
            release.track,
            release.frames[0],
            release.frames[1],
            if first {
                " (for a source of unrelated still images, set [tracking] policy = \"per_frame\")"
            } else {
                ""
            }
        );
    }

    fn count_outcome(&self, record: &FaceRecord) {
        if record.pass {
            self.shared.metrics.passed.get_or_create(&self.label()).inc();
        } else if TRACKED_REASONS.contains(&record.reason.as_str()) {
            self.count_reason(&self.shared.metrics.tracked_faces, &record.reason);
        } else {
            self.count_reason(&self.shared.metrics.dropped, &record.reason);
        }
    }

    /// Runs one frame through the pipeline and logs its decisions.
    pub fn process(&mut self, frame: &Frame) -> Result<Vec<FaceRecord>> {
        let started = Instant::now();
        let locator = &self.shared.models.locator;
        let mut faces = locator.detector.detect(&frame.image, &self.shared.detect)?;
        self.shared.metrics.observe("detect", started.elapsed());
        self.shared
            .metrics
            .faces
            .get_or_create(&self.label())
            .inc_by(faces.len() as u64);

        let prechecks: Vec<Option<Reason>> = faces
            .iter()
            .map(|f| self.gate.precheck(f.short_side(), f.score))
            .collect();
        let Observed {
            mut tracks,
            contested,
            mut releases,
        } = self.track(frame, &faces);
        // A face is embedded when the gate will judge it, no two tracks
        // contest it, and its track (if any) still needs a better crop
        // ([`CameraTracks::needs_embedding`]).
        let threshold = self.gate.base_threshold();
        let embed: Vec<bool> = faces
            .iter()
            .zip(&prechecks)
            .zip(&tracks)
            .zip(&contested)
            .map(|(((face, precheck), track), contested)| {
                precheck.is_none()
                    && !contested
                    && match (track, &self.tracks) {
                        (Some(id), Some(t)) => t.needs_embedding(*id, frame.index, face.short_side(), threshold),
                        _ => true,
                    }
            })
            .collect();
        // Only faces that will be aligned get the refiner's landmarks; the
        // others keep the detector's in the decision log.
        let locator = &self.shared.models.locator;
        if let Some(refiner) = &locator.refiner {
            for (face, _) in faces.iter_mut().zip(&embed).filter(|(_, e)| **e) {
                let started = Instant::now();
                face.landmarks = refiner.landmarks(&frame.image, face)?;
                self.shared.metrics.observe("refine", started.elapsed());
            }
        }
        let mut aligned = Vec::new();
        for (face, _) in faces.iter().zip(&embed).filter(|(_, e)| **e) {
            let started = Instant::now();
            aligned.push(self.shared.models.embedder.align(&frame.image, &face.landmarks)?);
            self.shared.metrics.observe("align", started.elapsed());
        }
        let started = Instant::now();
        let features = self.shared.models.embedder.embed(&aligned)?;
        if !features.is_empty() {
            let per_crop = started.elapsed() / features.len() as u32;
            for _ in &features {
                self.shared.metrics.observe("embed", per_crop);
            }
        }

        let mut features = features.into_iter();
        let time = now_rfc3339();
        let mut records = Vec::with_capacity(faces.len() + releases.len());
        for (index, face) in faces.iter().enumerate() {
            let mut record = FaceRecord {
                time: time.clone(),
                camera: self.id.clone(),
                frame: frame.index,
                source: frame.name.clone(),
                face: index,
                bbox: face.bbox,
                landmarks: face.landmarks,
                detector_score: face.score,
                norm: 0.0,
                threshold,
                pass: false,
                reason: if contested[index] { "contested" } else { "not_embedded" }.into(),
                key: None,
                crop_region: None,
                track: tracks[index],
                track_frames: None,
            };
            let skipped = prechecks[index].is_none() && !embed[index];
            if skipped {
                self.count_outcome(&record);
                records.push(record);
                continue;
            }
            if embed[index] {
                let feature = features.next().unwrap_or_default();
                record.norm = l2_norm(&feature);
                if let (Some(id), Some(t)) = (tracks[index], &mut self.tracks) {
                    let (id, ended) = t.embedded(id, frame.index, &feature, record.norm >= threshold);
                    tracks[index] = Some(id);
                    record.track = Some(id);
                    releases.extend(ended);
                }
            }
            let decision = self.gate.decide(&Candidate {
                norm: record.norm,
                face_px: face.short_side(),
                detector_score: face.score,
            });
            (record.threshold, record.pass, record.reason) =
                (decision.threshold, decision.pass, decision.reason.as_str().into());
            let held_by = match (tracks[index], &self.tracks) {
                (Some(id), Some(t)) if decision.pass => Some((id, t.improves(id, record.norm))),
                _ => None,
            };
            let keep_for_audit = self
                .shared
                .audit
                .as_ref()
                .is_some_and(|a| !decision.pass && fastrand::f32() < a.sample_rate);
            let cut = match held_by {
                Some((_, better)) => better,
                None => decision.pass || keep_for_audit,
            };
            let crop = if cut {
                let region = crop_region(&face.bbox, CROP_SCALE, frame.image.width(), frame.image.height());
                let [x, y, w, h] = region;
                let bytes = jpeg(
                    &image::imageops::crop_imm(&frame.image, x, y, w, h).to_image(),
                    JPEG_QUALITY,
                )?;
                record.key = Some(content_key(&bytes));
                record.crop_region = Some(region);
                Some(Crop {
                    record: record.clone(),
                    jpeg: bytes,
                })
            } else {
                None
            };
            match (held_by, crop) {
                (Some((id, better)), crop) => {
                    record.pass = false;
                    record.reason = if better { "held" } else { "not_best" }.into();
                    if let (Some(crop), Some(t)) = (crop, &mut self.tracks) {
                        t.hold(id, crop, face.short_side());
                    }
                }
                (None, Some(crop)) if decision.pass => self.deliver(&crop, &mut record),
                (None, Some(crop)) => {
                    if let Some(audit) = &self.shared.audit {
                        if let Err(e) = audit.spool.write(&crop) {
                            log::warn!("{}: cannot write an audit crop: {e:#}", self.id);
                        }
                    }
                }
                (None, None) => {}
            }
            self.count_outcome(&record);
            records.push(record);
        }
        for release in releases {
            self.release(release, &mut records);
        }
        let started = self.tracks.as_mut().map_or(0, CameraTracks::take_started);
        self.shared
            .metrics
            .tracks_started
            .get_or_create(&self.label())
            .inc_by(started as u64);
        self.shared.log.write(&records)?;
        Ok(records)
    }

    /// Processes the feed until it ends or `stop` is set; the frame in hand is finished first.
    pub fn run(mut self, feed: Feed, stop: &AtomicBool) {
        let label = self.label();
        while !stop.load(Ordering::Relaxed) {
            if let Some(config) = self.pending_gate.lock().unwrap().take() {
                match self.gate.reconfigure(config) {
                    Ok(()) => log::info!("{}: gate reconfigured: {:?}", self.id, config.policy),
                    Err(e) => log::error!("{}: gate configuration refused: {e}", self.id),
                }
            }
            match feed.next(Duration::from_millis(200)) {
                Next::Item(Item::Frame(frame)) => {
                    self.shared.metrics.frames.get_or_create(&label).inc();
                    match self.process(&frame) {
                        Ok(records) => {
                            let threshold = self.gate.base_threshold();
                            self.shared.board.observe(&self.id, &frame, &records, threshold);
                        }
                        Err(e) => log::error!("{}: frame {} ({}): {e:#}", self.id, frame.index, frame.name),
                    }
                }
                Next::Item(Item::Corrupt { index, name, error }) => {
                    self.shared.metrics.decode_errors.get_or_create(&label).inc();
                    log::warn!("{}: skipped corrupt frame {index} ({name}): {error}", self.id);
                }
                Next::Item(Item::Skipped { count }) => {
                    self.shared.metrics.frames_skipped.get_or_create(&label).inc_by(count);
                }
                Next::Item(Item::Lost { error }) => {
                    self.shared.metrics.camera_failures.get_or_create(&label).inc();
                    log::warn!("{}: camera lost: {error}", self.id);
                }
                Next::Item(Item::Reconnected) => {
                    self.shared.metrics.camera_reconnects.get_or_create(&label).inc();
                    log::info!("{}: camera back", self.id);
                }
                Next::Idle => {}
                Next::Ended => break,
            }
        }
        self.finish_tracks();
    }

    /// Sends the crops the open tracks hold (the source ended or the run
    /// stops); only a crash loses them.
    fn finish_tracks(&mut self) {
        let Some(tracks) = &mut self.tracks else {
            return;
        };
        let mut records = Vec::new();
        for release in tracks.finish() {
            self.release(release, &mut records);
        }
        if let Err(e) = self.shared.log.write(&records) {
            log::error!("{}: cannot log the tracks' last crops: {e:#}", self.id);
        }
    }
}

/// Loads an embedder and its card, refusing a missing file with a message that says what to fix.
pub fn load_embedder(model: &Path, batch: usize) -> Result<Embedder> {
    check_model(model, "face embedder", "embedder")?;
    Embedder::load(model, &ModelCard::path_for(model), batch).context("loading the embedder")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crop_regions_are_squares_inside_the_frame() {
        assert_eq!(
            crop_region(&[100.0, 100.0, 140.0, 160.0], CROP_SCALE, 640, 480),
            [75, 85, 90, 90]
        );
        // Near a corner the square is shifted in, not cut.
        assert_eq!(
            crop_region(&[0.0, 0.0, 40.0, 40.0], CROP_SCALE, 640, 480),
            [0, 0, 60, 60]
        );
        // Larger than the frame: as large as the frame allows.
        assert_eq!(
            crop_region(&[0.0, 0.0, 600.0, 470.0], CROP_SCALE, 640, 480),
            [60, 0, 480, 480]
        );
    }
}
