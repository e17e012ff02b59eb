//! What the status page shows of each camera, kept in memory with fixed
//! bounds: the latest frame (at most two a second are kept, as a JPEG) with
//! its faces' decisions, a ring of recent crops (thumbnails) with their
//! norm, reason, time and track, the threshold's recent history and the
//! norms judged lately. The camera threads write it, the HTTP thread reads it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use image::imageops::FilterType;
use image::RgbImage;
use serde::Serialize;

use crate::calibrate::judged;
use crate::pipeline::{crop_region, jpeg};
use crate::record::FaceRecord;
use crate::source::Frame;

/// Recent crops kept per camera.
pub const RECENT_CROPS: usize = 24;
/// Threshold samples kept per camera (one a second at most: five minutes).
const THRESHOLD_SAMPLES: usize = 300;
/// Judged norms kept per camera for the histogram.
const RECENT_NORMS: usize = 2000;
/// Thumbnails of held crops kept for the tracks that may still send them.
const HELD_THUMBNAILS: usize = 64;
/// Shortest time between two kept frames.
const FRAME_EVERY: Duration = Duration::from_millis(500);
/// Side of a crop's thumbnail, pixels.
const THUMBNAIL: u32 = 96;

/// One face of the latest frame.
#[derive(Debug, Clone, Serialize)]
pub struct FaceView {
    /// Its box `[x1, y1, x2, y2]`.
    pub bbox: [f32; 4],
    /// Feature norm (0 when not embedded).
    pub norm: f32,
    /// Whether it passed the gate.
    pub pass: bool,
    /// The decision's reason.
    pub reason: String,
    /// Its track, with tracking.
    pub track: Option<u64>,
}

/// The latest frame kept of a camera.
#[derive(Debug, Clone, Serialize)]
pub struct FrameView {
    /// Its number within the source.
    pub index: u64,
    /// Its file or stream name.
    pub name: String,
    /// Pixels wide and high.
    pub size: [u32; 2],
    /// When it was kept (RFC 3339).
    pub time: String,
    /// Its faces.
    pub faces: Vec<FaceView>,
    #[serde(skip)]
    jpeg: Vec<u8>,
}

/// A recent face crop.
#[derive(Debug, Clone, Serialize)]
pub struct CropView {
    /// Unique within the run; its thumbnail is `/api/crops/{id}.jpg`.
    pub id: u64,
    /// When it was decided (RFC 3339).
    pub time: String,
    /// Its frame.
    pub frame: u64,
    /// Feature norm (0 when not embedded).
    pub norm: f32,
    /// Threshold it was judged against.
    pub threshold: f32,
    /// Whether it was sent (or passed, frame by frame).
    pub pass: bool,
    /// The decision's reason.
    pub reason: String,
    /// Its track, with tracking.
    pub track: Option<u64>,
    #[serde(skip)]
    jpeg: Vec<u8>,
}

/// One camera's view.
#[derive(Debug, Default)]
struct CameraView {
    frame: Option<FrameView>,
    frame_kept: Option<Instant>,
    crops: VecDeque<CropView>,
    held: HashMap<u64, Vec<u8>>,
    thresholds: VecDeque<(f64, f32)>,
    threshold_kept: Option<Instant>,
    norms: VecDeque<f32>,
    frame_times: VecDeque<Instant>,
}

/// What a reader gets of one camera.
#[derive(Debug, Clone, Serialize)]
pub struct CameraStatus {
    /// Camera id.
    pub id: String,
    /// Frames per second over the last frames.
    pub fps: f64,
    /// The threshold in force (before hysteresis).
    pub threshold: Option<f32>,
    /// `(seconds since start, threshold)`, oldest first.
    pub thresholds: Vec<(f64, f32)>,
    /// Norms judged lately, for the histogram.
    pub norms: Vec<f32>,
    /// The latest frame kept.
    pub frame: Option<FrameView>,
    /// Recent crops, newest first.
    pub crops: Vec<CropView>,
}

/// Every camera's view.
#[derive(Debug)]
pub struct StatusBoard {
    started: Instant,
    next_crop: AtomicU64,
    cameras: Mutex<BTreeMap<String, CameraView>>,
}

impl Default for StatusBoard {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            next_crop: AtomicU64::new(1),
            cameras: Mutex::default(),
        }
    }
}

impl StatusBoard {
    /// Names a camera, so that it shows before its first frame.
    pub fn add_camera(&self, id: &str) {
        self.cameras.lock().unwrap().entry(id.into()).or_default();
    }

    /// Takes one frame's decisions (`threshold`: the one in force).
    pub fn observe(&self, camera: &str, frame: &Frame, records: &[FaceRecord], threshold: f32) {
        let now = Instant::now();
        let keep_frame = {
            let cameras = self.cameras.lock().unwrap();
            cameras
                .get(camera)
                .and_then(|c| c.frame_kept)
                .is_none_or(|kept| now - kept >= FRAME_EVERY)
        };
        // Thumbnails and the frame's JPEG are made outside the lock.
        let mut crops = Vec::new();
        let mut held = Vec::new();
        for r in records {
            let shown = keep_frame || r.pass || r.reason == "held";
            if r.reason == "best_of_track" || !shown {
                continue;
            }
            let Some(jpeg) = thumbnail(&frame.image, &r.bbox) else {
                continue;
            };
            if r.reason == "held" {
                if let Some(track) = r.track {
                    held.push((track, jpeg.clone()));
                }
            }
            crops.push((r, jpeg));
        }
        let frame_view = keep_frame.then(|| FrameView {
            index: frame.index,
            name: frame.name.clone(),
            size: [frame.image.width(), frame.image.height()],
            time: crate::record::now_rfc3339(),
            faces: records
                .iter()
                .filter(|r| r.reason != "best_of_track")
                .map(|r| FaceView {
                    bbox: r.bbox,
                    norm: r.norm,
                    pass: r.pass,
                    reason: r.reason.clone(),
                    track: r.track,
                })
                .collect(),
            jpeg: jpeg(&frame.image, 80).unwrap_or_default(),
        });

        let mut cameras = self.cameras.lock().unwrap();
        let view = cameras.entry(camera.into()).or_default();
        push_bounded(&mut view.frame_times, now, 30);
        if let Some(f) = frame_view {
            view.frame = Some(f);
            view.frame_kept = Some(now);
        }
        if view.threshold_kept.is_none_or(|t| now - t >= Duration::from_secs(1)) {
            let t = (now - self.started).as_secs_f64();
            push_bounded(&mut view.thresholds, (t, threshold), THRESHOLD_SAMPLES);
            view.threshold_kept = Some(now);
        }
        for r in records.iter().filter(|r| judged(r)) {
            push_bounded(&mut view.norms, r.norm, RECENT_NORMS);
        }
        for (track, jpeg) in held {
            if view.held.len() >= HELD_THUMBNAILS && !view.held.contains_key(&track) {
                // The oldest track's held crop makes room (ids grow with time).
                if let Some(&oldest) = view.held.keys().min() {
                    view.held.remove(&oldest);
                }
            }
            view.held.insert(track, jpeg);
        }
        let mut add = |r: &FaceRecord, jpeg: Vec<u8>| {
            let crop = CropView {
                id: self.next_crop.fetch_add(1, Ordering::Relaxed),
                time: r.time.clone(),
                frame: r.frame,
                norm: r.norm,
                threshold: r.threshold,
                pass: r.pass,
                reason: r.reason.clone(),
                track: r.track,
                jpeg,
            };
            push_bounded(&mut view.crops, crop, RECENT_CROPS);
        };
        for (r, jpeg) in crops {
            add(r, jpeg);
        }
        // A track's sent crop shows with the thumbnail of the crop it held.
        for r in records.iter().filter(|r| r.reason == "best_of_track") {
            if let Some(jpeg) = r.track.and_then(|t| view.held.remove(&t)) {
                add(r, jpeg);
            }
        }
    }

    /// Every camera's view now.
    pub fn snapshot(&self) -> Vec<CameraStatus> {
        let cameras = self.cameras.lock().unwrap();
        cameras
            .iter()
            .map(|(id, v)| {
                let fps = match (v.frame_times.front(), v.frame_times.back()) {
                    (Some(first), Some(last)) if v.frame_times.len() > 1 && last > first => {
                        (v.frame_times.len() - 1) as f64 / (*last - *first).as_secs_f64()
                    }
                    _ => 0.0,
                };
                CameraStatus {
                    id: id.clone(),
                    fps,
                    threshold: v.thresholds.back().map(|t| t.1),
                    thresholds: v.thresholds.iter().copied().collect(),
                    norms: v.norms.iter().copied().collect(),
                    frame: v.frame.clone(),
                    crops: v.crops.iter().rev().cloned().collect(),
                }
            })
            .collect()
    }

    /// The latest frame of `camera` as a JPEG.
    pub fn frame_jpeg(&self, camera: &str) -> Option<Vec<u8>> {
        let cameras = self.cameras.lock().unwrap();
        cameras.get(camera)?.frame.as_ref().map(|f| f.jpeg.clone())
    }

    /// The thumbnail of recent crop `id`.
    pub fn crop_jpeg(&self, id: u64) -> Option<Vec<u8>> {
        let cameras = self.cameras.lock().unwrap();
        cameras
            .values()
            .flat_map(|v| v.crops.iter())
            .find(|c| c.id == id)
            .map(|c| c.jpeg.clone())
    }
}

fn push_bounded<T>(ring: &mut VecDeque<T>, item: T, cap: usize) {
    if ring.len() == cap {
        ring.pop_front();
    }
    ring.push_back(item);
}

/// The face's square (shifted inside the frame, as the uploaded crop's
/// is), as a small JPEG.
fn thumbnail(image: &RgbImage, bbox: &[f32; 4]) -> Option<Vec<u8>> {
    let [x, y, w, h] = crop_region(bbox, 1.0, image.width(), image.height());
    let crop = image::imageops::crop_imm(image, x, y, w, h).to_image();
    let small = image::imageops::resize(&crop, THUMBNAIL, THUMBNAIL, FilterType::Triangle);
    jpeg(&small, 85).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(frame: u64, reason: &str, pass: bool, norm: f32, track: Option<u64>) -> FaceRecord {
        let mut r: FaceRecord = serde_json::from_str(
            r#"{"time":"t","camera":"a","frame":0,"source":"s","face":0,"bbox":[10,10,50,50],
            "landmarks":[[0,0],[0,0],[0,0],[0,0],[0,0]],"detector_score":0.9,"norm":0,
            "threshold":5,"pass":false,"reason":"low_norm"}"#,
        )
        .unwrap();
        (r.frame, r.reason, r.pass, r.norm, r.track) = (frame, reason.into(), pass, norm, track);
        r
    }

    fn frame(index: u64) -> Frame {
        Frame {
            index,
            name: format!("f{index}"),
            image: RgbImage::from_pixel(64, 48, image::Rgb([90, 90, 90])),
        }
    }

    #[test]
    fn the_board_keeps_a_bounded_ring_of_recent_crops_and_the_latest_frame() {
        let board = StatusBoard::default();
        board.add_camera("a");
        for i in 0..(RECENT_CROPS as u64 + 10) {
            board.observe("a", &frame(i), &[record(i, "passed", true, 9.0, None)], 5.0);
        }
        let s = &board.snapshot()[0];
        assert_eq!(s.crops.len(), RECENT_CROPS);
        // Newest first; the first frame was kept, later ones within half a second were not.
        assert_eq!(s.crops[0].frame, RECENT_CROPS as u64 + 9);
        assert_eq!(s.frame.as_ref().unwrap().index, 0);
        assert_eq!(s.threshold, Some(5.0));
        assert_eq!(s.norms.len(), RECENT_CROPS + 10);
        assert!(board
            .frame_jpeg("a")
            .is_some_and(|j| image::load_from_memory(&j).is_ok()));
        assert!(board.frame_jpeg("b").is_none());
        let id = s.crops[0].id;
        assert!(board.crop_jpeg(id).is_some());
        assert!(board.crop_jpeg(1).is_none(), "pushed out of the ring");
    }

    #[test]
    fn a_tracks_sent_crop_shows_with_the_thumbnail_it_held() {
        let board = StatusBoard::default();
        board.observe("a", &frame(0), &[record(0, "held", false, 9.0, Some(7))], 5.0);
        // Frame 1 is not kept (too soon), and its face is not held: not shown.
        board.observe("a", &frame(1), &[record(1, "not_best", false, 8.0, Some(7))], 5.0);
        board.observe("a", &frame(2), &[record(0, "best_of_track", true, 9.0, Some(7))], 5.0);
        let s = &board.snapshot()[0];
        let reasons: Vec<&str> = s.crops.iter().map(|c| c.reason.as_str()).collect();
        assert_eq!(reasons, ["best_of_track", "held"]);
        assert_eq!(board.crop_jpeg(s.crops[0].id), board.crop_jpeg(s.crops[1].id));
    }
}
