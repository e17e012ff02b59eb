//! Face tracks across one camera's frames, so that a person becomes one track
//! rather than one crop per frame.
//!
//! Each track carries a constant-velocity Kalman filter over its box (centre,
//! size and their rates). Every frame the filters predict where their faces
//! went, detections are matched to those predictions greedily by overlap
//! (best IoU first), matched tracks are corrected, unmatched detections open
//! tentative tracks, and unmatched tracks coast. A tentative track becomes
//! confirmed after `confirm_hits` matches and ends at its first miss (a false
//! detection leaves no lasting track); a confirmed track is lost while it
//! misses and ends after more than `max_missed` frames without a match.
//!
//! A detection that two confirmed tracks both match best, about equally
//! and with as many misses, is contested (one face where two people were: they cross, one hides the
//! other): no track takes it and both coast, as a guess would put two
//! people in one track.
//!
//! A lost track whose predicted box is mostly outside the frame ends at once:
//! its person left, and a newcomer at that edge must not inherit it.
//!
//! Embedding directions check what motion alone cannot ([`Tracker::identify`]):
//! a face that reappears where the filter did not expect it (a long
//! occlusion, a turn) opens a new track, which is folded back into the lost
//! one when their directions agree, within the lost track's `max_missed`
//! frames; and a match whose face's direction contradicts the track's (two
//! people crossed) is undone, the face going to the track it agrees with.

use alloc::vec::Vec;

use nalgebra::{SMatrix, SVector};

use crate::norm::cosine;
use crate::{Error, Result};

/// A box `[x1, y1, x2, y2]` in frame pixels.
pub type BoxXyxy = [f32; 4];

/// A detection that two confirmed tracks match best is contested when the
/// runner-up overlaps it at least this share of the best's overlap: the
/// filters cannot tell whose face it is (people crossing, one hiding the
/// other), and a wrong guess would put two people in one track.
pub const CONTESTED: f32 = 0.5;

/// How tracks are formed and ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrackerConfig {
    /// Smallest IoU between a track's predicted box and a detection that may match them.
    pub min_iou: f32,
    /// Matches (the first detection included) after which a track is confirmed.
    pub confirm_hits: u32,
    /// Frames a confirmed track may go unmatched before it ends.
    pub max_missed: u32,
    /// Most open tracks; when full, the longest-lost track ends early to make
    /// room, and a detection without room stays untracked.
    pub max_tracks: usize,
    /// Cosine between embedding directions at or above which a new track is
    /// the same person as a lost one ([`Tracker::identify`]); above 1 disables it.
    pub reassociate_cosine: f32,
    /// Cosine below which a face's direction contradicts its track's and the
    /// match is undone ([`Tracker::identify`]); -1 disables it. Lower than
    /// `reassociate_cosine`: the same face moved, blurred or turned still
    /// agrees more than two people do.
    pub split_cosine: f32,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        Self {
            min_iou: 0.2,
            confirm_hits: 2,
            max_missed: 10,
            max_tracks: 32,
            reassociate_cosine: 0.6,
            split_cosine: 0.3,
        }
    }
}

impl TrackerConfig {
    /// Checks every field's range; the message names the field to fix.
    pub fn validate(&self) -> Result<()> {
        let bad = |name, reason| Err(Error::InvalidParameter { name, reason });
        if !(self.min_iou > 0.0 && self.min_iou <= 1.0) {
            return bad("min_iou", "must be in (0, 1]");
        }
        if self.confirm_hits == 0 {
            return bad("confirm_hits", "must be at least 1");
        }
        if self.max_tracks == 0 {
            return bad("max_tracks", "must be at least 1");
        }
        if !(self.reassociate_cosine.is_finite() && self.reassociate_cosine > -1.0) {
            return bad("reassociate_cosine", "must be finite and above -1");
        }
        if !(self.split_cosine.is_finite() && self.split_cosine <= self.reassociate_cosine.min(1.0)) {
            return bad("split_cosine", "must be finite and at most reassociate_cosine (and 1)");
        }
        Ok(())
    }
}

/// Where a track stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrackState {
    /// Seen fewer than `confirm_hits` times; ends at its first miss.
    Tentative,
    /// Matched in the latest frame, with enough matches.
    Confirmed,
    /// Confirmed, but unmatched for `missed` frames.
    Lost,
}

/// One face followed across frames.
#[derive(Debug, Clone)]
pub struct Track {
    /// Unique within the tracker, from 1, never reused.
    pub id: u64,
    /// Where it stands.
    pub state: TrackState,
    /// Frames it was matched in.
    pub hits: u32,
    /// Frames since its last match.
    pub missed: u32,
    /// Frame of its first detection.
    pub first_frame: u64,
    /// Frame of its latest match.
    pub last_frame: u64,
    /// Its latest detection.
    pub last_box: BoxXyxy,
    filter: BoxFilter,
    direction: Option<Vec<f32>>,
    /// The track as it stood before this frame's match, so that a match the
    /// face's direction contradicts can be undone ([`Tracker::identify`]).
    before_match: Option<Snapshot>,
}

/// What a match changes in a track.
#[derive(Debug, Clone)]
struct Snapshot {
    filter: BoxFilter,
    missed: u32,
    state: TrackState,
    last_frame: u64,
    last_box: BoxXyxy,
}

/// Whose face an embedded face is ([`Tracker::identify`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Identified {
    /// The track the face belongs to.
    pub id: u64,
    /// Tracks ended to make room for a new one.
    pub ended: Vec<Ended>,
}

impl Track {
    /// Where the filter expects the face in the next (or, after an update, this) frame.
    pub fn predicted_box(&self) -> BoxXyxy {
        self.filter.box_xyxy()
    }

    /// Whether it was ever confirmed.
    pub fn confirmed(&self) -> bool {
        self.state != TrackState::Tentative
    }
}

/// A track that ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ended {
    /// Its id.
    pub id: u64,
    /// Whether it was ever confirmed (a tentative track is a passing detection).
    pub confirmed: bool,
    /// Frame of its first detection.
    pub first_frame: u64,
    /// Frame of its latest match.
    pub last_frame: u64,
}

impl From<&Track> for Ended {
    fn from(t: &Track) -> Self {
        Self {
            id: t.id,
            confirmed: t.confirmed(),
            first_frame: t.first_frame,
            last_frame: t.last_frame,
        }
    }
}

/// What one frame did to the tracks.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FrameTracks {
    /// The track of each detection, in the detections' order (`None`: no
    /// room, or contested).
    pub assigned: Vec<Option<u64>>,
    /// Detections that two confirmed tracks claimed alike ([`CONTESTED`]):
    /// one face where two people were, so motion cannot say whose it is;
    /// no track takes them, and the tracks coast until the faces part.
    pub contested: Vec<bool>,
    /// Tracks that ended with this frame.
    pub ended: Vec<Ended>,
}

/// The tracks of one camera.
#[derive(Debug, Clone)]
pub struct Tracker {
    config: TrackerConfig,
    tracks: Vec<Track>,
    next_id: u64,
}

impl Tracker {
    /// A tracker with a validated configuration.
    pub fn new(config: TrackerConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            config,
            tracks: Vec::new(),
            next_id: 1,
        })
    }

    /// How it forms and ends tracks.
    pub fn config(&self) -> &TrackerConfig {
        &self.config
    }

    /// The open tracks.
    pub fn tracks(&self) -> &[Track] {
        &self.tracks
    }

    /// The open track `id`.
    pub fn get(&self, id: u64) -> Option<&Track> {
        self.tracks.iter().find(|t| t.id == id)
    }

    /// Takes one frame's detections (the frame `bounds` wide and high):
    /// predicts every track, matches, corrects, opens tracks for unmatched
    /// detections, and ends the tracks that missed too often or whose face
    /// left the frame (a lost track predicted less than half inside it).
    pub fn update(&mut self, frame: u64, detections: &[BoxXyxy], bounds: [f32; 2]) -> FrameTracks {
        for t in &mut self.tracks {
            t.before_match = None;
            t.filter.predict();
        }
        let mut pairs: Vec<(f32, usize, usize)> = Vec::new();
        for (ti, t) in self.tracks.iter().enumerate() {
            let predicted = t.predicted_box();
            for (di, d) in detections.iter().enumerate() {
                let overlap = iou(&predicted, d);
                if overlap >= self.config.min_iou {
                    pairs.push((overlap, ti, di));
                }
            }
        }
        let contested = self.contested(&pairs, detections.len());
        pairs.retain(|&(_, _, di)| !contested[di]);
        // Best overlap first; ties by index, so the result never depends on sort stability.
        pairs.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        let mut assigned: Vec<Option<u64>> = alloc::vec![None; detections.len()];
        let mut matched = alloc::vec![false; self.tracks.len()];
        for (_, ti, di) in pairs {
            if matched[ti] || assigned[di].is_some() {
                continue;
            }
            matched[ti] = true;
            let t = &mut self.tracks[ti];
            t.before_match = Some(Snapshot {
                filter: t.filter.clone(),
                missed: t.missed,
                state: t.state,
                last_frame: t.last_frame,
                last_box: t.last_box,
            });
            t.filter.correct(&detections[di]);
            t.hits += 1;
            t.missed = 0;
            t.last_frame = frame;
            t.last_box = detections[di];
            if t.hits >= self.config.confirm_hits {
                t.state = TrackState::Confirmed;
            }
            assigned[di] = Some(t.id);
        }
        let mut ended = Vec::new();
        for (t, was_matched) in self.tracks.iter_mut().zip(&matched) {
            if !was_matched {
                t.missed += 1;
                if t.state == TrackState::Confirmed {
                    t.state = TrackState::Lost;
                }
            }
        }
        let max_missed = self.config.max_missed;
        self.tracks.retain(|t| {
            let over = match t.state {
                TrackState::Tentative => t.missed > 0,
                _ => t.missed > max_missed || (t.missed > 0 && !mostly_inside(&t.predicted_box(), bounds)),
            };
            if over {
                ended.push(Ended::from(t));
            }
            !over
        });
        for (di, d) in detections.iter().enumerate() {
            if assigned[di].is_none() && !contested[di] {
                assigned[di] = self.open(frame, d, &mut ended);
            }
        }
        FrameTracks {
            assigned,
            contested,
            ended,
        }
    }

    /// Which detections are contested: the best match of two confirmed
    /// tracks or more, of those matched most recently (a lost track parked
    /// where someone else now stands does not contest the face of a track
    /// that just saw it), the runner-up's overlap at least [`CONTESTED`] of
    /// the best's (`pairs`: overlap, track index, detection index).
    fn contested(&self, pairs: &[(f32, usize, usize)], detections: usize) -> Vec<bool> {
        // Per detection, the claims (misses, overlap) of the confirmed tracks that match it best.
        let mut claims: Vec<Vec<(u32, f32)>> = alloc::vec![Vec::new(); detections];
        for (ti, t) in self.tracks.iter().enumerate() {
            if !t.confirmed() {
                continue;
            }
            let best = pairs
                .iter()
                .filter(|p| p.1 == ti)
                .max_by(|a, b| a.0.total_cmp(&b.0).then(b.2.cmp(&a.2)));
            if let Some(&(overlap, _, di)) = best {
                claims[di].push((t.missed, overlap));
            }
        }
        claims
            .iter_mut()
            .map(|c| {
                let fewest = c.iter().map(|&(missed, _)| missed).min().unwrap_or(0);
                c.retain(|&(missed, _)| missed == fewest);
                c.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
                c.len() >= 2 && c[1].1 >= CONTESTED * c[0].1
            })
            .collect()
    }

    /// A new track for an unmatched detection, ending the longest-lost track
    /// when the tracker is full; `None` when no track can make room.
    fn open(&mut self, frame: u64, detection: &BoxXyxy, ended: &mut Vec<Ended>) -> Option<u64> {
        if self.tracks.len() >= self.config.max_tracks {
            let victim = self
                .tracks
                .iter()
                .enumerate()
                .filter(|(_, t)| t.missed > 0)
                .max_by_key(|(_, t)| (t.missed, core::cmp::Reverse(t.id)))
                .map(|(i, _)| i)?;
            ended.push(Ended::from(&self.tracks.swap_remove(victim)));
        }
        let id = self.next_id;
        self.next_id += 1;
        let state = if self.config.confirm_hits <= 1 {
            TrackState::Confirmed
        } else {
            TrackState::Tentative
        };
        self.tracks.push(Track {
            id,
            state,
            hits: 1,
            missed: 0,
            first_frame: frame,
            last_frame: frame,
            last_box: *detection,
            filter: BoxFilter::new(detection),
            direction: None,
            before_match: None,
        });
        Some(id)
    }

    /// The lost track (not `except`) whose last direction agrees best with
    /// `direction`, at least `reassociate_cosine`.
    fn lost_like(&self, direction: &[f32], except: usize) -> Option<usize> {
        self.tracks
            .iter()
            .enumerate()
            .filter(|(i, t)| *i != except && t.missed > 0 && t.confirmed())
            .filter_map(|(i, t)| Some((i, cosine(t.direction.as_deref()?, direction))))
            .filter(|&(_, c)| c >= self.config.reassociate_cosine)
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(i, _)| i)
    }

    /// Moves the face that track `from` (at index `from`) was matched to in
    /// this frame into the lost track at index `into`, which continues from
    /// its box; returns the id of `into`.
    fn take_over(&mut self, into: usize, face: BoxXyxy, frame: u64, hits: u32, direction: &[f32]) -> u64 {
        let t = &mut self.tracks[into];
        t.filter = BoxFilter::new(&face);
        t.hits += hits;
        t.missed = 0;
        t.last_frame = frame;
        t.last_box = face;
        t.state = TrackState::Confirmed;
        t.direction = Some(direction.to_vec());
        t.id
    }

    /// Records the embedding direction of track `id`'s face in this frame and
    /// says whose face it is:
    /// - the track's first direction: when a lost track's last direction
    ///   agrees (cosine at least `reassociate_cosine`), the new track is
    ///   folded into that one, which continues from the new box;
    /// - a direction that contradicts the track's last one: the face is
    ///   someone else's (two people crossed, or one left and another came
    ///   in where the filter expected the first), so the track's match of
    ///   this frame is undone and the face goes to the lost track it agrees
    ///   with, or to a new track.
    ///
    /// Directions agree at `reassociate_cosine` and contradict below `split_cosine`.
    pub fn identify(&mut self, id: u64, direction: &[f32]) -> Identified {
        let mut out = Identified { id, ended: Vec::new() };
        let Some(index) = self.tracks.iter().position(|t| t.id == id) else {
            return out;
        };
        let (agree, contradict) = (self.config.reassociate_cosine, self.config.split_cosine);
        let t = &mut self.tracks[index];
        let previous = t.direction.replace(direction.to_vec());
        let (face, frame) = (t.last_box, t.last_frame);
        match previous {
            None if agree > 1.0 => {}
            None => {
                if let Some(into) = self.lost_like(direction, index) {
                    let new = self.tracks.swap_remove(index);
                    let into = if into == self.tracks.len() { index } else { into };
                    out.id = self.take_over(into, face, frame, new.hits, direction);
                }
            }
            Some(previous) if cosine(&previous, direction) < contradict => {
                let Some(before) = t.before_match.take() else {
                    // Not matched in this frame: nothing to undo.
                    t.direction = Some(previous);
                    return out;
                };
                t.filter = before.filter;
                t.hits -= 1;
                t.missed = before.missed + 1;
                t.state = if before.state == TrackState::Tentative {
                    TrackState::Tentative
                } else {
                    TrackState::Lost
                };
                t.last_frame = before.last_frame;
                t.last_box = before.last_box;
                t.direction = Some(previous);
                out.id = match self.lost_like(direction, index) {
                    Some(into) => self.take_over(into, face, frame, 1, direction),
                    // A new track without a direction: its next embedding
                    // may fold it into a track that is matched elsewhere now.
                    None => self.open(frame, &face, &mut out.ended).unwrap_or(id),
                };
            }
            Some(_) => {}
        }
        out
    }

    /// Ends every open track (the source ended), oldest first.
    pub fn finish(&mut self) -> Vec<Ended> {
        let mut ended: Vec<Ended> = self.tracks.drain(..).map(|t| Ended::from(&t)).collect();
        ended.sort_unstable_by_key(|e| e.id);
        ended
    }
}

/// Whether at least half of `b`'s area lies inside a frame of `bounds`.
fn mostly_inside(b: &BoxXyxy, bounds: [f32; 2]) -> bool {
    let inside = [b[0].max(0.0), b[1].max(0.0), b[2].min(bounds[0]), b[3].min(bounds[1])];
    let area = |r: &BoxXyxy| (r[2] - r[0]).max(0.0) * (r[3] - r[1]).max(0.0);
    area(&inside) * 2.0 >= area(b)
}

/// Intersection over union of two boxes; 0 when either is empty.
pub fn iou(a: &BoxXyxy, b: &BoxXyxy) -> f32 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    let area = |r: &BoxXyxy| (r[2] - r[0]).max(0.0) * (r[3] - r[1]).max(0.0);
    let union = area(a) + area(b) - inter;
    if union > 0.0 {
        inter / union
    } else {
        0.0
    }
}

type State = SVector<f32, 8>;
type Covariance = SMatrix<f32, 8, 8>;

/// Constant-velocity Kalman filter over `[cx, cy, w, h]` and their rates per
/// frame. Noise scales with the face's height, as faces near the camera move
/// more pixels per frame than distant ones.
#[derive(Debug, Clone)]
struct BoxFilter {
    x: State,
    p: Covariance,
}

/// Standard deviation of position noise per frame, as a share of the face height.
const POSITION_NOISE: f32 = 1.0 / 20.0;
/// Standard deviation of velocity noise per frame, as a share of the face height.
const VELOCITY_NOISE: f32 = 1.0 / 160.0;

impl BoxFilter {
    fn new(b: &BoxXyxy) -> Self {
        let z = measurement(b);
        let h = z[3].max(1.0);
        let mut x = State::zeros();
        x.fixed_rows_mut::<4>(0).copy_from(&z);
        let mut p = Covariance::zeros();
        for i in 0..4 {
            p[(i, i)] = squared(2.0 * POSITION_NOISE * h);
            p[(i + 4, i + 4)] = squared(10.0 * VELOCITY_NOISE * h);
        }
        Self { x, p }
    }

    fn transition() -> Covariance {
        let mut f = Covariance::identity();
        for i in 0..4 {
            f[(i, i + 4)] = 1.0;
        }
        f
    }

    fn predict(&mut self) {
        let f = Self::transition();
        let h = self.x[3].max(1.0);
        let mut q = Covariance::zeros();
        for i in 0..4 {
            q[(i, i)] = squared(POSITION_NOISE * h);
            q[(i + 4, i + 4)] = squared(VELOCITY_NOISE * h);
        }
        self.x = f * self.x;
        // A box never shrinks below a pixel, however fast it was shrinking.
        self.x[2] = self.x[2].max(1.0);
        self.x[3] = self.x[3].max(1.0);
        self.p = f * self.p * f.transpose() + q;
    }

    fn correct(&mut self, b: &BoxXyxy) {
        let z = measurement(b);
        let mut hm = SMatrix::<f32, 4, 8>::zeros();
        for i in 0..4 {
            hm[(i, i)] = 1.0;
        }
        let r = SMatrix::<f32, 4, 4>::from_diagonal_element(squared(POSITION_NOISE * z[3].max(1.0)));
        let s = hm * self.p * hm.transpose() + r;
        let Some(s_inv) = s.try_inverse() else {
            *self = Self::new(b);
            return;
        };
        let k = self.p * hm.transpose() * s_inv;
        self.x += k * (z - hm * self.x);
        self.p = (Covariance::identity() - k * hm) * self.p;
    }

    fn box_xyxy(&self) -> BoxXyxy {
        let (cx, cy, w, h) = (self.x[0], self.x[1], self.x[2], self.x[3]);
        [cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0]
    }
}

fn squared(x: f32) -> f32 {
    x * x
}

fn measurement(b: &BoxXyxy) -> SVector<f32, 4> {
    SVector::<f32, 4>::new(
        (b[0] + b[2]) / 2.0,
        (b[1] + b[3]) / 2.0,
        (b[2] - b[0]).max(1.0),
        (b[3] - b[1]).max(1.0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use proptest::prelude::*;

    fn face_at(cx: f32, cy: f32, side: f32) -> BoxXyxy {
        [cx - side / 2.0, cy - side / 2.0, cx + side / 2.0, cy + side / 2.0]
    }

    const FRAME: [f32; 2] = [640.0, 480.0];

    fn tracker() -> Tracker {
        Tracker::new(TrackerConfig::default()).unwrap()
    }

    #[test]
    fn a_face_moving_steadily_keeps_one_track_and_ends_after_max_missed() {
        let mut t = tracker();
        let mut ids = Vec::new();
        for frame in 0..30 {
            let update = t.update(frame, &[face_at(50.0 + 12.0 * frame as f32, 200.0, 60.0)], FRAME);
            assert!(update.ended.is_empty());
            ids.push(update.assigned[0].unwrap());
        }
        assert!(ids.iter().all(|&id| id == ids[0]));
        assert_eq!(t.get(ids[0]).unwrap().state, TrackState::Confirmed);
        for frame in 30..40 {
            assert!(t.update(frame, &[], FRAME).ended.is_empty());
            assert_eq!(t.get(ids[0]).unwrap().state, TrackState::Lost);
        }
        let ended = t.update(40, &[], FRAME).ended;
        assert_eq!(
            ended,
            vec![Ended {
                id: ids[0],
                confirmed: true,
                first_frame: 0,
                last_frame: 29
            }]
        );
        assert!(t.tracks().is_empty());
    }

    #[test]
    fn the_filter_carries_a_fast_face_across_an_occlusion_gap() {
        // 25 px per frame with a 40 px face: the last box and the box after a
        // five-frame gap do not overlap at all; the predicted one does.
        let mut t = tracker();
        let mut first = None;
        for frame in 0..10u64 {
            let id = t
                .update(frame, &[face_at(40.0 + 25.0 * frame as f32, 100.0, 40.0)], FRAME)
                .assigned[0];
            first = first.or(id);
        }
        for frame in 10..15u64 {
            t.update(frame, &[], FRAME);
        }
        let back = t.update(15, &[face_at(40.0 + 25.0 * 15.0, 100.0, 40.0)], FRAME);
        assert_eq!(back.assigned[0], first);
    }

    #[test]
    fn a_single_false_detection_ends_unconfirmed_at_its_first_miss() {
        let mut t = tracker();
        let id = t.update(0, &[face_at(100.0, 100.0, 30.0)], FRAME).assigned[0].unwrap();
        let ended = t.update(1, &[], FRAME).ended;
        assert_eq!(ended.len(), 1);
        assert_eq!(ended[0].id, id);
        assert!(!ended[0].confirmed);
    }

    #[test]
    fn two_people_side_by_side_keep_their_own_tracks() {
        let mut t = tracker();
        let (mut left, mut right) = (Vec::new(), Vec::new());
        for frame in 0..40u64 {
            let x = 100.0 + 8.0 * frame as f32;
            let a = t
                .update(frame, &[face_at(x + 70.0, 240.0, 64.0), face_at(x, 240.0, 64.0)], FRAME)
                .assigned;
            right.push(a[0].unwrap());
            left.push(a[1].unwrap());
        }
        assert!(left.iter().all(|&id| id == left[0]));
        assert!(right.iter().all(|&id| id == right[0]));
        assert_ne!(left[0], right[0]);
    }

    #[test]
    fn crossing_paths_keep_identities_by_their_motion() {
        // Two faces walk towards each other on the same line and pass; the
        // detector sees only the front one for the frames they overlap most.
        // That face is contested (both filters expect a face there), so
        // neither track takes it; both coast and pick up their own faces.
        let mut t = tracker();
        let (mut a_ids, mut b_ids) = (Vec::new(), Vec::new());
        let mut contested = 0;
        for frame in 0..50u64 {
            let f = frame as f32;
            let (a, b) = (
                face_at(60.0 + 11.0 * f, 200.0, 60.0),
                face_at(600.0 - 11.0 * f, 210.0, 60.0),
            );
            if iou(&a, &b) > 0.3 {
                let update = t.update(frame, &[a], FRAME);
                match update.assigned[0] {
                    Some(id) => a_ids.push(id),
                    None => {
                        assert!(update.contested[0]);
                        contested += 1;
                    }
                }
                continue;
            }
            let assigned = t.update(frame, &[a, b], FRAME).assigned;
            a_ids.push(assigned[0].unwrap());
            b_ids.push(assigned[1].unwrap());
        }
        assert!(a_ids.iter().all(|&id| id == a_ids[0]), "{a_ids:?}");
        assert!(b_ids.iter().all(|&id| id == b_ids[0]), "{b_ids:?}");
        assert_ne!(a_ids[0], b_ids[0]);
        assert!(contested > 0);
    }

    #[test]
    fn faces_entering_and_leaving_at_the_borders_open_and_end_tracks() {
        let mut t = tracker();
        let mut ended = Vec::new();
        let mut seen = Vec::new();
        // A face slides in from the left edge, crosses and leaves right;
        // then a second one enters from the top.
        for frame in 0..80u64 {
            let f = frame as f32;
            let mut boxes = Vec::new();
            let x = -30.0 + 16.0 * f;
            if x < 630.0 {
                boxes.push([x.max(0.0), 200.0, (x + 60.0).min(640.0), 260.0]);
            }
            if frame >= 50 {
                let y = -40.0 + 10.0 * (f - 50.0);
                boxes.push([300.0, y.max(0.0), 360.0, y + 60.0]);
            }
            let update = t.update(frame, &boxes, FRAME);
            seen.extend(update.assigned.iter().flatten().copied());
            ended.extend(update.ended);
        }
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert_eq!(ended.len(), 1);
        assert_eq!(ended[0].id, seen[0]);
        assert_eq!(t.finish().iter().map(|e| e.id).collect::<Vec<_>>(), vec![seen[1]]);
    }

    #[test]
    fn a_face_back_far_from_its_prediction_is_folded_in_by_its_direction() {
        let mut t = tracker();
        let me = [1.0, 0.0, 0.0];
        let someone_else = [0.0, 1.0, 0.0];
        let id = t.update(0, &[face_at(100.0, 100.0, 50.0)], FRAME).assigned[0].unwrap();
        t.update(1, &[face_at(100.0, 100.0, 50.0)], FRAME);
        assert_eq!(t.identify(id, &me).id, id);
        t.update(2, &[], FRAME);
        // Someone else appears elsewhere: not folded in.
        let other = t.update(3, &[face_at(400.0, 300.0, 50.0)], FRAME).assigned[0].unwrap();
        assert_eq!(t.identify(other, &someone_else).id, other);
        // The same person turns up far from where they were: folded in.
        let update = t.update(4, &[face_at(400.0, 300.0, 50.0), face_at(500.0, 100.0, 50.0)], FRAME);
        let back = update.assigned[1].unwrap();
        assert_ne!(back, id);
        assert_eq!(t.identify(back, &[0.9, 0.1, 0.0]).id, id);
        assert!(t.get(back).is_none());
        let track = t.get(id).unwrap();
        assert_eq!(
            (track.state, track.missed, track.last_frame),
            (TrackState::Confirmed, 0, 4)
        );
        // Matched by overlap from there on.
        assert_eq!(t.update(5, &[face_at(500.0, 100.0, 50.0)], FRAME).assigned[0], Some(id));
    }

    #[test]
    fn a_newcomer_where_someone_left_the_frame_gets_a_track_of_their_own() {
        // Someone walks out to the right; a few frames later someone else
        // walks in at that edge, where the first one's filter would be.
        let mut t = tracker();
        let mut ended = Vec::new();
        let mut leaver = None;
        for frame in 0..12u64 {
            let x = 400.0 + 20.0 * frame as f32;
            let boxes: Vec<BoxXyxy> = [[x, 200.0, (x + 60.0).min(640.0), 260.0]]
                .into_iter()
                .filter(|b| b[2] - b[0] > 20.0)
                .collect();
            let update = t.update(frame, &boxes, FRAME);
            leaver = leaver.or(update.assigned.first().copied().flatten());
            ended.extend(update.ended);
        }
        assert_eq!(ended.iter().map(|e| e.id).collect::<Vec<_>>(), vec![leaver.unwrap()]);
        let newcomer = t.update(12, &[[590.0, 200.0, 640.0, 260.0]], FRAME).assigned[0];
        assert_ne!(newcomer, leaver);
    }

    #[test]
    fn a_match_the_faces_direction_contradicts_is_undone() {
        let (a_dir, b_dir) = ([1.0, 0.0], [0.0, 1.0]);
        let mut t = tracker();
        // Two people a little apart, standing still, each embedded.
        let (a_box, b_box) = (face_at(200.0, 200.0, 80.0), face_at(260.0, 200.0, 80.0));
        let mut ids = [0u64; 2];
        for frame in 0..3 {
            let assigned = t.update(frame, &[a_box, b_box], FRAME).assigned;
            ids = [assigned[0].unwrap(), assigned[1].unwrap()];
            assert_eq!(t.identify(ids[0], &a_dir).id, ids[0]);
            assert_eq!(t.identify(ids[1], &b_dir).id, ids[1]);
        }
        // They swap places in one frame: overlap alone hands each track the other's face.
        let assigned = t.update(3, &[a_box, b_box], FRAME).assigned;
        assert_eq!(assigned, [Some(ids[0]), Some(ids[1])]);
        // B's face in A's track: A's match is undone, B's face gets a new track for now.
        let first = t.identify(ids[0], &b_dir).id;
        assert!(!ids.contains(&first));
        // A's face in B's track: undone too, and back to A, which lost its match.
        assert_eq!(t.identify(ids[1], &a_dir).id, ids[0]);
        assert_eq!(t.get(ids[0]).unwrap().last_box, b_box);
        // Next frame the new track's first embedding folds it into B.
        let assigned = t.update(4, &[a_box, b_box], FRAME).assigned;
        assert_eq!(assigned, [Some(first), Some(ids[0])]);
        assert_eq!(t.identify(first, &b_dir).id, ids[1]);
        assert_eq!(t.identify(ids[0], &a_dir).id, ids[0]);
        assert!(t.get(first).is_none());
    }

    #[test]
    fn a_full_tracker_ends_its_longest_lost_track_to_make_room() {
        let config = TrackerConfig {
            max_tracks: 2,
            confirm_hits: 1,
            ..TrackerConfig::default()
        };
        let mut t = Tracker::new(config).unwrap();
        let a = t
            .update(0, &[face_at(100.0, 100.0, 40.0), face_at(300.0, 100.0, 40.0)], FRAME)
            .assigned;
        t.update(1, &[face_at(300.0, 100.0, 40.0)], FRAME);
        let update = t.update(2, &[face_at(300.0, 100.0, 40.0), face_at(500.0, 300.0, 40.0)], FRAME);
        assert_eq!(
            update.ended.iter().map(|e| e.id).collect::<Vec<_>>(),
            vec![a[0].unwrap()]
        );
        assert!(update.assigned[1].is_some());
        // Nobody lost: a third face stays untracked.
        let update = t.update(
            3,
            &[
                face_at(300.0, 100.0, 40.0),
                face_at(500.0, 300.0, 40.0),
                face_at(100.0, 400.0, 40.0),
            ],
            FRAME,
        );
        assert_eq!(update.assigned[2], None);
        assert_eq!(t.tracks().len(), 2);
    }

    #[test]
    fn bad_configurations_name_the_field() {
        for (config, name) in [
            (
                TrackerConfig {
                    min_iou: 0.0,
                    ..TrackerConfig::default()
                },
                "min_iou",
            ),
            (
                TrackerConfig {
                    confirm_hits: 0,
                    ..TrackerConfig::default()
                },
                "confirm_hits",
            ),
            (
                TrackerConfig {
                    max_tracks: 0,
                    ..TrackerConfig::default()
                },
                "max_tracks",
            ),
            (
                TrackerConfig {
                    reassociate_cosine: f32::NAN,
                    ..TrackerConfig::default()
                },
                "reassociate_cosine",
            ),
            (
                TrackerConfig {
                    split_cosine: 0.9,
                    ..TrackerConfig::default()
                },
                "split_cosine",
            ),
        ] {
            assert!(matches!(Tracker::new(config), Err(Error::InvalidParameter { name: n, .. }) if n == name));
        }
    }

    proptest! {
        /// Whatever the detections, ids are never shared within a frame, the
        /// cap holds, and every ended id was assigned before and never returns.
        #[test]
        fn tracks_stay_consistent(frames in proptest::collection::vec(
            proptest::collection::vec((0.0f32..600.0, 0.0f32..440.0, 8.0f32..120.0), 0..6), 1..40)) {
            let config = TrackerConfig { max_tracks: 4, ..TrackerConfig::default() };
            let mut t = Tracker::new(config).unwrap();
            let mut ended_ids = Vec::new();
            let mut seen = Vec::new();
            for (frame, faces) in frames.iter().enumerate() {
                let boxes: Vec<BoxXyxy> = faces.iter().map(|&(x, y, s)| [x, y, x + s, y + s]).collect();
                let update = t.update(frame as u64, &boxes, FRAME);
                prop_assert_eq!(update.assigned.len(), boxes.len());
                let mut ids: Vec<u64> = update.assigned.iter().flatten().copied().collect();
                let n = ids.len();
                ids.sort_unstable();
                ids.dedup();
                prop_assert_eq!(ids.len(), n);
                prop_assert!(t.tracks().len() <= 4);
                for id in &ids {
                    prop_assert!(!ended_ids.contains(id));
                }
                seen.extend(ids);
                for e in update.ended {
                    prop_assert!(seen.contains(&e.id));
                    ended_ids.push(e.id);
                }
            }
        }
    }
}
