//! One camera's face tracks and the crop each track holds: the `[tracking]`
//! section, and the glue between the pipeline and the core's tracker
//! (`normgate_core::track`) and best-shot rules (`normgate_core::shot`).
//!
//! With `best_per_track` (the default) a person becomes one track and sends
//! one crop: the highest-norm crop that passed the gate, released when the
//! track ends or when a window of `window_s` closes for a person who stays.
//! Held crops live in memory only: a crash loses the open tracks' held
//! crops, never a crop already handed to the sink.

use std::collections::HashMap;

use anyhow::{Context, Result};
use normgate_core::shot::{BestShot, Shot, ShotConfig};
use normgate_core::track::{BoxXyxy, Ended, Tracker, TrackerConfig};
use serde::{Deserialize, Serialize};

use crate::record::Crop;

/// Which crops a camera sends.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CapturePolicy {
    /// The best crop of each track (of each window, for a person who stays).
    BestPerTrack,
    /// Every crop that passes the gate, frame by frame.
    PerFrame,
}

/// `[tracking]`: how faces become tracks and which of their crops are sent.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TrackingSection {
    /// `best_per_track` or `per_frame`.
    pub policy: CapturePolicy,
    /// Smallest overlap (IoU) of a face with a track's predicted box that continues the track.
    pub min_iou: f32,
    /// Frames a track must be seen in before it counts as a person.
    pub confirm_hits: u32,
    /// Frames a person may go unseen before their track ends and its crop is sent.
    pub max_missed: u32,
    /// Most open tracks per camera (one held crop each).
    pub max_tracks: usize,
    /// Cosine of embedding directions at which two faces are the same person:
    /// a face that reappeared away from its lost track rejoins it; above 1 disables it.
    pub reassociate_cosine: f32,
    /// Cosine below which a good crop's direction says it is not its track's
    /// person (people who crossed) and leaves the track; -1 disables it.
    pub split_cosine: f32,
    /// A person who stays sends the best crop of each window of this many
    /// seconds (frame numbers over the camera's `capture.fps`); 0: only at the end.
    pub window_s: f32,
    /// Norm above the threshold at which a track's held crop is good enough
    /// to stop embedding its face every frame.
    pub skip_margin: f32,
    /// With a good crop held, embed the track's face one frame in this many.
    pub embed_every: u32,
    /// With a good crop held, embed a face that has grown this many times over the held one.
    pub regrow: f32,
}

impl Default for TrackingSection {
    fn default() -> Self {
        let (track, shot) = (TrackerConfig::default(), ShotConfig::default());
        Self {
            policy: CapturePolicy::BestPerTrack,
            min_iou: track.min_iou,
            confirm_hits: track.confirm_hits,
            max_missed: track.max_missed,
            max_tracks: track.max_tracks,
            reassociate_cosine: track.reassociate_cosine,
            split_cosine: track.split_cosine,
            window_s: shot.window_s,
            skip_margin: shot.skip_margin,
            embed_every: shot.embed_every,
            regrow: shot.regrow,
        }
    }
}

impl TrackingSection {
    fn tracker(&self) -> TrackerConfig {
        TrackerConfig {
            min_iou: self.min_iou,
            confirm_hits: self.confirm_hits,
            max_missed: self.max_missed,
            max_tracks: self.max_tracks,
            reassociate_cosine: self.reassociate_cosine,
            split_cosine: self.split_cosine,
        }
    }

    fn shot(&self) -> ShotConfig {
        ShotConfig {
            window_s: self.window_s,
            skip_margin: self.skip_margin,
            embed_every: self.embed_every,
            regrow: self.regrow,
        }
    }

    /// Checks every value's range; the message names the key to fix.
    pub fn validate(&self) -> Result<()> {
        self.tracker().validate()?;
        self.shot().validate()?;
        Ok(())
    }
}

/// A track's crop handed back for the sink, or a track that ended.
#[derive(Debug)]
pub struct Release {
    /// The track.
    pub track: u64,
    /// Its first frame and its latest frame with a match.
    pub frames: [u64; 2],
    /// The best crop of the track (or of the window) that passed the gate.
    pub crop: Option<Crop>,
    /// Set when the track ended: crops it released over its life, this one included.
    pub ended_after: Option<u32>,
    /// The track ended before it was confirmed (seen in fewer than
    /// `confirm_hits` frames): a passing detection, a face half-hidden for a
    /// frame or a split-off fragment of someone's track; its crop is not sent.
    pub unconfirmed: bool,
}

/// What tracking made of one frame's faces.
#[derive(Debug, Default)]
pub struct Observed {
    /// The track of each face (`None`: contested, or no room left: the face
    /// goes frame by frame).
    pub tracks: Vec<Option<u64>>,
    /// Faces that two tracks claimed alike (`Tracker::update`): they belong
    /// to no track and are neither embedded nor sent.
    pub contested: Vec<bool>,
    /// Crops of the tracks that ended and of the windows that closed.
    pub releases: Vec<Release>,
}

struct Held {
    best: BestShot<Crop>,
    released: u32,
}

/// The tracks of one camera and the crop each holds.
pub struct CameraTracks {
    tracker: Tracker,
    held: HashMap<u64, Held>,
    shot: ShotConfig,
    seconds_per_frame: f64,
    started: usize,
}

impl CameraTracks {
    /// Tracks for a camera whose frames come `fps` a second; `None` for `per_frame`.
    pub fn new(section: &TrackingSection, fps: u32) -> Result<Option<Self>> {
        section.validate().context("[tracking]")?;
        if section.policy == CapturePolicy::PerFrame {
            return Ok(None);
        }
        Ok(Some(Self {
            tracker: Tracker::new(section.tracker())?,
            held: HashMap::new(),
            shot: section.shot(),
            seconds_per_frame: 1.0 / f64::from(fps.max(1)),
            started: 0,
        }))
    }

    fn seconds(&self, frame: u64) -> f64 {
        frame as f64 * self.seconds_per_frame
    }

    /// Takes a frame's face boxes (the frame `bounds` wide and high): the
    /// track of each, and the crops of the tracks that ended and of the
    /// windows that closed.
    pub fn observe(&mut self, frame: u64, boxes: &[BoxXyxy], bounds: [f32; 2]) -> Observed {
        let update = self.tracker.update(frame, boxes, bounds);
        let mut releases: Vec<Release> = update.ended.iter().map(|e| self.end(e)).collect();
        let now = self.seconds(frame);
        for id in update.assigned.iter().flatten() {
            self.start(*id, now);
        }
        for track in self.tracker.tracks() {
            let Some(held) = self.held.get_mut(&track.id) else {
                continue;
            };
            if track.confirmed() && held.best.window_closed(now, &self.shot) {
                if let Some(shot) = held.best.release(now) {
                    held.released += 1;
                    releases.push(Release {
                        track: track.id,
                        frames: [track.first_frame, track.last_frame],
                        crop: Some(shot.payload),
                        ended_after: None,
                        unconfirmed: false,
                    });
                }
            }
        }
        Observed {
            tracks: update.assigned,
            contested: update.contested,
            releases,
        }
    }

    /// Opens the held-crop slot of a track seen for the first time.
    fn start(&mut self, id: u64, now: f64) {
        let started = &mut self.started;
        self.held.entry(id).or_insert_with(|| {
            *started += 1;
            Held {
                best: BestShot::new(now),
                released: 0,
            }
        });
    }

    /// Tracks opened since the last call.
    pub fn take_started(&mut self) -> usize {
        std::mem::take(&mut self.started)
    }

    fn end(&mut self, ended: &Ended) -> Release {
        let mut held = self.held.remove(&ended.id);
        let crop = held
            .as_mut()
            .and_then(|h| h.best.release(0.0))
            .map(|s| s.payload)
            .filter(|_| ended.confirmed);
        let before = held.map_or(0, |h| h.released);
        Release {
            track: ended.id,
            frames: [ended.first_frame, ended.last_frame],
            ended_after: Some(before + u32::from(crop.is_some())),
            crop,
            unconfirmed: !ended.confirmed,
        }
    }

    /// Whether `track`'s face in `frame` (shorter side `face_px`) needs
    /// embedding, given the gate's `threshold` ([`BestShot::needs_embedding`]).
    pub fn needs_embedding(&self, track: u64, frame: u64, face_px: f32, threshold: f32) -> bool {
        self.held
            .get(&track)
            .is_none_or(|h| h.best.needs_embedding(frame, face_px, threshold, &self.shot))
    }

    /// Notes that `track`'s face was embedded in `frame`, with `feature`:
    /// the track the face belongs to ([`Tracker::identify`]; only a feature
    /// whose norm reached the gate's threshold is trusted to say whose face
    /// it is, as a dark or blurred crop's direction is noise), and the crops
    /// of tracks ended to make room for a new one.
    pub fn embedded(&mut self, track: u64, frame: u64, feature: &[f32], trusted: bool) -> (u64, Vec<Release>) {
        if !trusted {
            if let Some(h) = self.held.get_mut(&track) {
                h.best.embedded(frame);
            }
            return (track, Vec::new());
        }
        let identified = self.tracker.identify(track, feature);
        let releases = identified.ended.iter().map(|e| self.end(e)).collect();
        if self.tracker.get(track).is_none() {
            // Folded into another track before it held a crop (its first embedding is this one).
            self.held.remove(&track);
        }
        let id = identified.id;
        self.start(id, self.seconds(frame));
        if let Some(h) = self.held.get_mut(&id) {
            h.best.embedded(frame);
        }
        (id, releases)
    }

    /// Whether a passing crop of this norm would become `track`'s held crop.
    pub fn improves(&self, track: u64, norm: f32) -> bool {
        self.held.get(&track).is_some_and(|h| h.best.improves(norm))
    }

    /// Holds `crop` as `track`'s best if it is better than the held one.
    pub fn hold(&mut self, track: u64, crop: Crop, face_px: f32) -> bool {
        let Some(h) = self.held.get_mut(&track) else {
            return false;
        };
        h.best.offer(Shot {
            norm: crop.record.norm,
            frame: crop.record.frame,
            face_px,
            payload: crop,
        })
    }

    /// Ends every open track (the source ended or the run stops) and hands back their crops.
    pub fn finish(&mut self) -> Vec<Release> {
        let ended = self.tracker.finish();
        ended.iter().map(|e| self.end(e)).collect()
    }

    /// Frames a track must be seen in before its crop is sent.
    pub fn confirm_hits(&self) -> u32 {
        self.tracker.config().confirm_hits
    }

    /// Seconds a track of these frames lasted.
    pub fn duration_s(&self, frames: [u64; 2]) -> f64 {
        self.seconds(frames[1].saturating_sub(frames[0]) + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::FaceRecord;

    fn crop(frame: u64, norm: f32) -> Crop {
        Crop {
            record: FaceRecord {
                time: String::new(),
                camera: "c".into(),
                frame,
                source: String::new(),
                face: 0,
                bbox: [0.0; 4],
                landmarks: [[0.0; 2]; 5],
                detector_score: 0.9,
                norm,
                threshold: 5.0,
                pass: true,
                reason: "held".into(),
                key: Some(format!("k{frame}")),
                crop_region: None,
                track: None,
                track_frames: None,
            },
            jpeg: vec![frame as u8],
        }
    }

    const FRAME: [f32; 2] = [640.0, 480.0];

    fn face(x: f32) -> BoxXyxy {
        [x, 100.0, x + 60.0, 160.0]
    }

    #[test]
    fn a_walk_by_sends_its_best_crop_once_when_the_track_ends() {
        let section = TrackingSection {
            max_missed: 2,
            skip_margin: f32::NAN,
            ..TrackingSection::default()
        };
        let mut tracks = CameraTracks::new(&section, 10).unwrap().unwrap();
        let norms = [6.0, 9.0, 7.0, 8.0];
        let mut id = 0;
        for (frame, norm) in norms.iter().enumerate() {
            let frame = frame as u64;
            let Observed {
                tracks: assigned,
                releases,
                ..
            } = tracks.observe(frame, &[face(100.0 + 5.0 * frame as f32)], FRAME);
            assert_eq!(tracks.take_started(), usize::from(frame == 0));
            assert!(releases.is_empty());
            id = assigned[0].unwrap();
            assert!(tracks.needs_embedding(id, frame, 60.0, 5.0));
            assert_eq!(tracks.embedded(id, frame, &[1.0, 0.0], true).0, id);
            if tracks.improves(id, *norm) {
                tracks.hold(id, crop(frame, *norm), 60.0);
            }
        }
        let mut out = Vec::new();
        for frame in 4..8 {
            out.extend(tracks.observe(frame, &[], FRAME).releases);
        }
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].track, id);
        assert_eq!(out[0].frames, [0, 3]);
        assert_eq!(out[0].crop.as_ref().unwrap().record.frame, 1, "the 9.0 crop");
        assert_eq!(out[0].ended_after, Some(1));
        assert!(tracks.finish().is_empty());
    }

    #[test]
    fn a_face_seen_in_one_frame_sends_nothing_and_says_why() {
        let mut tracks = CameraTracks::new(&TrackingSection::default(), 15).unwrap().unwrap();
        let id = tracks.observe(0, &[face(100.0)], FRAME).tracks[0].unwrap();
        tracks.embedded(id, 0, &[1.0], true);
        assert!(tracks.hold(id, crop(0, 9.0), 60.0));
        let ended = tracks.observe(1, &[], FRAME).releases;
        assert_eq!(ended.len(), 1);
        assert!(ended[0].unconfirmed && ended[0].crop.is_none());
        assert_eq!(ended[0].ended_after, Some(0));
        assert_eq!(tracks.confirm_hits(), 2);
    }

    #[test]
    fn a_person_who_stays_sends_one_crop_per_window_and_the_rest_at_the_end() {
        let section = TrackingSection {
            window_s: 2.0,
            skip_margin: f32::NAN,
            ..TrackingSection::default()
        };
        let mut tracks = CameraTracks::new(&section, 5).unwrap().unwrap();
        let mut sent = Vec::new();
        for frame in 0..25u64 {
            let Observed {
                tracks: assigned,
                releases,
                ..
            } = tracks.observe(frame, &[face(200.0)], FRAME);
            sent.extend(releases);
            let id = assigned[0].unwrap();
            tracks.embedded(id, frame, &[1.0], true);
            tracks.hold(id, crop(frame, 6.0 + (frame % 10) as f32 / 10.0), 60.0);
        }
        // Windows of 10 frames close at frames 10 and 20; the end sends frames 20-24's best.
        let windows: Vec<u64> = sent.iter().map(|r| r.crop.as_ref().unwrap().record.frame).collect();
        assert_eq!(windows, [9, 19]);
        let last = tracks.finish();
        assert_eq!(last[0].crop.as_ref().unwrap().record.frame, 24);
        assert_eq!(last[0].ended_after, Some(3));
    }

    #[test]
    fn only_a_trusted_direction_can_take_a_face_from_its_track() {
        let mut tracks = CameraTracks::new(&TrackingSection::default(), 15).unwrap().unwrap();
        let id = tracks.observe(0, &[face(100.0)], FRAME).tracks[0].unwrap();
        assert_eq!(tracks.embedded(id, 0, &[1.0, 0.0], true).0, id);
        // A dark frame's direction disagrees, but its norm says it is noise.
        let again = tracks.observe(1, &[face(100.0)], FRAME).tracks[0].unwrap();
        assert_eq!(tracks.embedded(again, 1, &[0.0, 1.0], false).0, id);
        // A good crop that disagrees is someone else.
        let again = tracks.observe(2, &[face(100.0)], FRAME).tracks[0].unwrap();
        let (other, ended) = tracks.embedded(again, 2, &[0.0, 1.0], true);
        assert_ne!(other, id);
        assert!(ended.is_empty());
        assert_eq!(tracks.take_started(), 2);
    }

    #[test]
    fn per_frame_has_no_tracks_and_bad_keys_are_named() {
        let per_frame = TrackingSection {
            policy: CapturePolicy::PerFrame,
            ..TrackingSection::default()
        };
        assert!(CameraTracks::new(&per_frame, 15).unwrap().is_none());
        let bad = TrackingSection {
            embed_every: 0,
            ..TrackingSection::default()
        };
        let message = format!("{:#}", CameraTracks::new(&bad, 15).err().unwrap());
        assert!(
            message.contains("[tracking]") && message.contains("embed_every"),
            "{message}"
        );
    }
}
