//! The detector's training loss, as RetinaFace trains: cross-entropy of the
//! face score on positive anchors and on the hardest background anchors
//! (a fixed number per positive, so the easy sky and wall do not swamp the
//! faces), plus smooth-L1 regressions of box and landmarks on positives.

use candle_core::{Result, Tensor, D};
use normgate::detector::Face;

use crate::detector::anchors::{encode, match_anchors, Matching, Target};

/// Background anchors kept per positive anchor.
pub const NEGATIVES_PER_POSITIVE: usize = 3;
/// Weight of the box regression against the score and landmark terms.
pub const BOX_WEIGHT: f64 = 2.0;

/// One image's targets over all anchors.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageTargets {
    /// Per anchor: what it learns.
    pub targets: Vec<Target>,
    /// Per anchor, 4 box regressions (zero unless a face).
    pub boxes: Vec<f32>,
    /// Per anchor, 10 landmark regressions (zero unless a face).
    pub landmarks: Vec<f32>,
}

/// Matches the anchors to `faces` and encodes the regressions of the matched ones.
pub fn image_targets(priors: &[[f32; 4]], faces: &[Face], matching: Matching, variance: [f32; 2]) -> ImageTargets {
    let boxes_of: Vec<[f32; 4]> = faces.iter().map(|f| f.bbox).collect();
    let targets = match_anchors(priors, &boxes_of, matching);
    let mut boxes = vec![0.0; priors.len() * 4];
    let mut landmarks = vec![0.0; priors.len() * 10];
    for (a, t) in targets.iter().enumerate() {
        if let Target::Face(f) = t {
            let (b, l) = encode(&faces[*f], &priors[a], variance);
            boxes[a * 4..a * 4 + 4].copy_from_slice(&b);
            landmarks[a * 10..a * 10 + 10].copy_from_slice(&l);
        }
    }
    ImageTargets {
        targets,
        boxes,
        landmarks,
    }
}

/// The loss of a batch and its parts.
pub struct DetectionLoss {
    /// What to minimise.
    pub total: Tensor,
    /// Score cross-entropy per positive.
    pub score: f32,
    /// Box smooth-L1 per positive.
    pub boxes: f32,
    /// Landmark smooth-L1 per positive.
    pub landmarks: f32,
    /// Positive anchors in the batch.
    pub positives: usize,
}

/// `0.5 min(|d|, 1)² + (|d| - min(|d|, 1))`: quadratic near zero, linear beyond 1.
fn smooth_l1(d: &Tensor) -> Result<Tensor> {
    let a = d.abs()?;
    let m = a.clamp(0.0, 1.0)?;
    (m.sqr()? * 0.5)? + (a - m)?
}

/// The loss of network outputs (`loc [B, A, 4]`, score logits `[B, A, 2]`,
/// `landmarks [B, A, 10]`) against the targets of the batch's images.
pub fn detection_loss(outputs: &[Tensor; 3], targets: &[ImageTargets]) -> Result<DetectionLoss> {
    let [loc, logits, landmarks] = outputs;
    let device = loc.device();
    let (b, anchors, _) = logits.dims3()?;
    let log_p = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    // Background loss of every anchor, to pick the hardest negatives.
    let background_loss = log_p.narrow(2, 0, 1)?.neg()?.flatten_all()?.to_vec1::<f32>()?;
    let mut face = vec![0f32; b * anchors];
    let mut background = vec![0f32; b * anchors];
    let mut positives = 0;
    for (i, t) in targets.iter().enumerate() {
        let row = i * anchors;
        let faces: Vec<usize> = (0..anchors)
            .filter(|&a| matches!(t.targets[a], Target::Face(_)))
            .collect();
        positives += faces.len();
        for a in &faces {
            face[row + a] = 1.0;
        }
        let mut negatives: Vec<usize> = (0..anchors).filter(|&a| t.targets[a] == Target::Background).collect();
        let keep = (faces.len() * NEGATIVES_PER_POSITIVE)
            .max(NEGATIVES_PER_POSITIVE)
            .min(negatives.len());
        if keep > 0 && keep < negatives.len() {
            negatives.select_nth_unstable_by(keep - 1, |x, y| {
                background_loss[row + y].total_cmp(&background_loss[row + x])
            });
        }
        for a in &negatives[..keep] {
            background[row + a] = 1.0;
        }
    }
    let per = positives.max(1) as f64;
    let mask = |m: Vec<f32>| Tensor::from_vec(m, (b, anchors, 1), device);
    let face_mask = mask(face)?;
    let score = ((log_p.narrow(2, 1, 1)? * &face_mask)?.sum_all()?
        + (log_p.narrow(2, 0, 1)? * mask(background)?)?.sum_all()?)?
    .neg()?
    .affine(1.0 / per, 0.0)?;
    let regression = |out: &Tensor, target: Vec<f32>, width: usize| -> Result<Tensor> {
        let target = Tensor::from_vec(target, (b, anchors, width), device)?;
        smooth_l1(&(out - target)?.broadcast_mul(&face_mask)?)?
            .sum_all()?
            .affine(1.0 / per, 0.0)
    };
    let boxes = regression(loc, targets.iter().flat_map(|t| t.boxes.iter().copied()).collect(), 4)?;
    let marks = regression(
        landmarks,
        targets.iter().flat_map(|t| t.landmarks.iter().copied()).collect(),
        10,
    )?;
    let total = ((&score + boxes.affine(BOX_WEIGHT, 0.0)?)? + &marks)?;
    Ok(DetectionLoss {
        score: score.to_scalar()?,
        boxes: boxes.to_scalar()?,
        landmarks: marks.to_scalar()?,
        positives,
        total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::synthetic_face as face;
    use candle_core::{Device, Var};
    use normgate::detector::{decode, priors};

    fn setup() -> (Vec<[f32; 4]>, ImageTargets) {
        let priors = priors(64, &[8, 16, 32], &[vec![8.0, 16.0], vec![32.0, 48.0], vec![64.0, 96.0]]);
        let t = image_targets(
            &priors,
            &[face([10.0, 12.0, 42.0, 46.0])],
            Matching::default(),
            [0.1, 0.2],
        );
        (priors, t)
    }

    /// Outputs that say exactly what the targets say, with confident scores.
    fn perfect(t: &ImageTargets, anchors: usize) -> [Tensor; 3] {
        let logits: Vec<f32> = t
            .targets
            .iter()
            .flat_map(|x| {
                if matches!(x, Target::Face(_)) {
                    [-10.0, 10.0]
                } else {
                    [10.0, -10.0]
                }
            })
            .collect();
        let dev = Device::Cpu;
        [
            Tensor::from_vec(t.boxes.clone(), (1, anchors, 4), &dev).unwrap(),
            Tensor::from_vec(logits, (1, anchors, 2), &dev).unwrap(),
            Tensor::from_vec(t.landmarks.clone(), (1, anchors, 10), &dev).unwrap(),
        ]
    }

    #[test]
    fn positive_targets_decode_back_to_their_face() {
        let (priors, t) = setup();
        let scores: Vec<f32> = t
            .targets
            .iter()
            .flat_map(|x| {
                if matches!(x, Target::Face(_)) {
                    [0.0, 1.0]
                } else {
                    [1.0, 0.0]
                }
            })
            .collect();
        let faces = decode(&t.boxes, &scores, &t.landmarks, &priors, [0.1, 0.2], 0.5);
        assert!(!faces.is_empty());
        for f in faces {
            for (a, b) in f.bbox.iter().zip(&[10.0, 12.0, 42.0, 46.0]) {
                assert!((a - b).abs() < 1e-3, "{f:?}");
            }
        }
    }

    #[test]
    fn a_perfect_prediction_costs_almost_nothing_and_a_wrong_one_costs_more() {
        let (priors, t) = setup();
        let out = perfect(&t, priors.len());
        let l = detection_loss(&out, std::slice::from_ref(&t)).unwrap();
        assert!(l.positives > 0);
        assert!(
            l.score < 1e-6 && l.boxes == 0.0 && l.landmarks == 0.0,
            "{} {} {}",
            l.score,
            l.boxes,
            l.landmarks
        );
        let wrong = [
            (&out[0] + 1.0).unwrap(),
            out[1].neg().unwrap(),
            (&out[2] - 2.0).unwrap(),
        ];
        let l = detection_loss(&wrong, std::slice::from_ref(&t)).unwrap();
        assert!(
            l.score > 10.0 && l.boxes > 0.4 && l.landmarks > 14.0,
            "{} {} {}",
            l.score,
            l.boxes,
            l.landmarks
        );
    }

    #[test]
    fn only_the_hardest_negatives_count_and_gradients_reach_the_outputs() {
        let (priors, t) = setup();
        let anchors = priors.len();
        let positives = t.targets.iter().filter(|x| matches!(x, Target::Face(_))).count();
        // Every background anchor is confidently right except three, which are wrong.
        let mut out = perfect(&t, anchors);
        let mut logits = out[1].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let wrong: Vec<usize> = (0..anchors)
            .filter(|&a| t.targets[a] == Target::Background)
            .take(3)
            .collect();
        for &a in &wrong {
            logits[a * 2] = -10.0;
            logits[a * 2 + 1] = 10.0;
        }
        let var = Var::from_tensor(&Tensor::from_vec(logits, (1, anchors, 2), &Device::Cpu).unwrap()).unwrap();
        out[1] = var.as_tensor().clone();
        let l = detection_loss(&out, std::slice::from_ref(&t)).unwrap();
        // The three wrong negatives are among the hardest chosen: each costs about 20.
        assert!(
            (l.score - 60.0 / positives as f32).abs() < 0.1,
            "{} with {positives} positives",
            l.score
        );
        let grads = l.total.backward().unwrap();
        let g = grads
            .get(&var)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for &a in &wrong {
            assert!(g[a * 2 + 1] > 0.0, "pushes the wrong face score down");
        }
    }
}
