//! Which detection found which reference face: greedy matching by box
//! overlap, and each found face's landmark error. Shared by the detector's
//! evaluation and by the landmark recipe (where the device's chain places
//! a training face's points).

use normgate::detector::{iou, Face};

/// IoU at which a detection finds a reference face.
pub const MATCH_IOU: f32 = 0.5;

/// One reference face's outcome.
pub(crate) struct Outcome {
    pub(crate) reference: Face,
    /// The detection matched to it, if any.
    pub(crate) detected: Option<Face>,
}

impl Outcome {
    pub(crate) fn short_side(&self) -> f32 {
        self.reference.short_side()
    }

    /// Normalised signed offset (x, y) of each landmark when found.
    pub(crate) fn offsets(&self) -> Option<[[f64; 2]; 5]> {
        self.detected.as_ref().map(|d| landmark_offsets(&self.reference, d))
    }

    /// Normalised distance of each landmark when found.
    pub(crate) fn errors(&self) -> Option<[f64; 5]> {
        self.offsets().map(|o| o.map(|[x, y]| x.hypot(y)))
    }

    /// Mean normalised landmark error when found.
    pub(crate) fn nme(&self) -> Option<f64> {
        self.errors().map(|e| e.iter().sum::<f64>() / 5.0)
    }
}

/// Greedy matching by IoU (best pairs first): each reference face's outcome.
pub(crate) fn match_faces(reference: &[Face], detected: &[Face]) -> Vec<Outcome> {
    let mut pairs: Vec<(f32, usize, usize)> = Vec::new();
    for (r, a) in reference.iter().enumerate() {
        for (d, b) in detected.iter().enumerate() {
            let o = iou(&a.bbox, &b.bbox);
            if o >= MATCH_IOU {
                pairs.push((o, r, d));
            }
        }
    }
    pairs.sort_by(|a, b| b.0.total_cmp(&a.0));
    let (mut used_r, mut used_d) = (vec![None; reference.len()], vec![false; detected.len()]);
    for (_, r, d) in pairs {
        if used_r[r].is_none() && !used_d[d] {
            used_r[r] = Some(d);
            used_d[d] = true;
        }
    }
    reference
        .iter()
        .zip(used_r)
        .map(|(r, d)| Outcome {
            reference: *r,
            detected: d.map(|d| detected[d]),
        })
        .collect()
}

/// Offset of each of the five landmarks from the reference's over the
/// reference's inter-ocular distance.
fn landmark_offsets(reference: &Face, detected: &Face) -> [[f64; 2]; 5] {
    let [l, r] = [reference.landmarks[0], reference.landmarks[1]];
    let ocular = f64::from((l[0] - r[0]).hypot(l[1] - r[1])).max(1.0);
    std::array::from_fn(|k| {
        let (a, b) = (reference.landmarks[k], detected.landmarks[k]);
        [f64::from(b[0] - a[0]) / ocular, f64::from(b[1] - a[1]) / ocular]
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::synthetic_face;

    #[test]
    fn matching_pairs_best_overlaps_once_and_measures_landmarks() {
        let a = synthetic_face([0.0, 0.0, 40.0, 40.0]);
        let b = synthetic_face([100.0, 0.0, 120.0, 20.0]);
        // One detection shifted by 2 px (IoU 0.82), one far from anything, none for b.
        let mut shifted = synthetic_face([2.0, 0.0, 42.0, 40.0]);
        shifted.score = 0.9;
        let far = synthetic_face([300.0, 300.0, 340.0, 340.0]);
        let out = match_faces(&[a, b], &[far, shifted]);
        assert_eq!(out.len(), 2);
        // Every landmark 2 px off, eyes 16 px apart.
        assert!((out[0].nme().unwrap() - 2.0 / 16.0).abs() < 1e-6);
        assert!(out[0].errors().unwrap().iter().all(|e| (e - 2.0 / 16.0).abs() < 1e-6));
        // The detection is shifted right: +2 px in x, nothing in y, on every landmark.
        assert!(out[0]
            .offsets()
            .unwrap()
            .iter()
            .all(|&[x, y]| (x - 2.0 / 16.0).abs() < 1e-6 && y == 0.0));
        assert!(out[1].nme().is_none());
        assert_eq!((out[0].short_side(), out[1].short_side()), (40.0, 20.0));
        // Two references over one detection: only one is found.
        let twice = match_faces(&[a, a], &[shifted]);
        assert_eq!(twice.iter().filter(|o| o.nme().is_some()).count(), 1);
    }
}
