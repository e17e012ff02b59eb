//! Training targets of an anchor-based face detector in the RetinaFace
//! output layout that the device decodes (`normgate::detector::decode`):
//! each anchor is matched to a face by overlap, and a matched anchor's box
//! and landmarks are encoded relative to it with the same variances, so the
//! device's decoder inverts exactly what training learned.

use normgate::detector::{iou, Face};

/// What an anchor learns.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    /// Background: its score should say "no face".
    Background,
    /// Overlaps a face too little to be background and too much to be no face: no loss.
    Ignore,
    /// Matched to this face: score "face", plus box and landmark regressions.
    Face(usize),
}

/// Overlap thresholds of the matching.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Matching {
    /// IoU at or above which an anchor is a face.
    pub positive: f32,
    /// IoU below which an anchor is background.
    pub negative: f32,
}

impl Default for Matching {
    /// RetinaFace's thresholds.
    fn default() -> Self {
        Self {
            positive: 0.35,
            negative: 0.35,
        }
    }
}

/// The corners of an anchor `[cx, cy, w, h]`.
fn corners(p: &[f32; 4]) -> [f32; 4] {
    [
        p[0] - p[2] / 2.0,
        p[1] - p[3] / 2.0,
        p[0] + p[2] / 2.0,
        p[1] + p[3] / 2.0,
    ]
}

/// Matches every anchor to at most one face: the face it overlaps most, if
/// by at least `positive`; and every face gets at least its best anchor, so
/// small faces between anchor sizes still learn.
pub fn match_anchors(priors: &[[f32; 4]], faces: &[[f32; 4]], m: Matching) -> Vec<Target> {
    let mut best_face = vec![(0.0f32, usize::MAX); priors.len()];
    let mut best_anchor = vec![(0.0f32, usize::MAX); faces.len()];
    for (a, p) in priors.iter().enumerate() {
        let anchor = corners(p);
        for (f, face) in faces.iter().enumerate() {
            let o = iou(&anchor, face);
            if o > best_face[a].0 {
                best_face[a] = (o, f);
            }
            if o > best_anchor[f].0 {
                best_anchor[f] = (o, a);
            }
        }
    }
    let mut targets: Vec<Target> = best_face
        .iter()
        .map(|&(o, f)| {
            if o >= m.positive {
                Target::Face(f)
            } else if o < m.negative {
                Target::Background
            } else {
                Target::Ignore
            }
        })
        .collect();
    for (f, &(o, a)) in best_anchor.iter().enumerate() {
        if o > 0.0 {
            targets[a] = Target::Face(f);
        }
    }
    targets
}

/// The box and landmark regressions of `face` relative to `prior`, the inverse of the device's decoder.
pub fn encode(face: &Face, prior: &[f32; 4], variance: [f32; 2]) -> ([f32; 4], [f32; 10]) {
    let [x1, y1, x2, y2] = face.bbox;
    let (cx, cy, w, h) = ((x1 + x2) / 2.0, (y1 + y2) / 2.0, x2 - x1, y2 - y1);
    let centre = |v: f32, c: f32, size: f32| (v - c) / (variance[0] * size);
    let loc = [
        centre(cx, prior[0], prior[2]),
        centre(cy, prior[1], prior[3]),
        (w / prior[2]).ln() / variance[1],
        (h / prior[3]).ln() / variance[1],
    ];
    let landmarks = std::array::from_fn(|k| {
        let [x, y] = face.landmarks[k / 2];
        if k % 2 == 0 {
            centre(x, prior[0], prior[2])
        } else {
            centre(y, prior[1], prior[3])
        }
    });
    (loc, landmarks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::synthetic_face as face;
    use normgate::detector::{decode, priors};

    #[test]
    fn the_device_decoder_inverts_the_encoding() {
        let variance = [0.1, 0.2];
        let prior = [100.0, 80.0, 64.0, 64.0];
        let f = face([70.0, 40.0, 140.0, 130.0]);
        let (loc, ldm) = encode(&f, &prior, variance);
        let decoded = decode(&loc, &[0.0, 1.0], &ldm, &[prior], variance, 0.5);
        assert_eq!(decoded.len(), 1);
        let d = decoded[0];
        for (a, b) in d.bbox.iter().zip(&f.bbox) {
            assert!((a - b).abs() < 1e-3, "{d:?} vs {f:?}");
        }
        for (a, b) in d.landmarks.iter().flatten().zip(f.landmarks.iter().flatten()) {
            assert!((a - b).abs() < 1e-3, "{d:?} vs {f:?}");
        }
    }

    #[test]
    fn anchors_match_by_overlap_and_every_face_gets_one() {
        let priors = priors(64, &[16, 32], &[vec![16.0], vec![32.0]]);
        // A face exactly on the stride-32 anchor at (16, 16), and a tiny one that fits no anchor well.
        let faces = [[0.0, 0.0, 32.0, 32.0], [40.0, 40.0, 46.0, 46.0]];
        let targets = match_anchors(&priors, &faces, Matching::default());
        let exact = priors.iter().position(|p| *p == [16.0, 16.0, 32.0, 32.0]).unwrap();
        assert_eq!(targets[exact], Target::Face(0));
        assert!(targets.contains(&Target::Face(1)), "the tiny face got its best anchor");
        let far = priors.iter().position(|p| *p == [56.0, 8.0, 16.0, 16.0]).unwrap();
        assert_eq!(targets[far], Target::Background);
        let none = match_anchors(&priors, &[], Matching::default());
        assert!(none.iter().all(|t| *t == Target::Background));
    }
}
