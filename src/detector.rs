//! Face detection with an ONNX model run by tract: the frame is scaled so its
//! longer side fits the model's square input and padded, the RetinaFace
//! output layout (anchor priors with box, score and five-landmark
//! regressions) is decoded, and overlapping boxes are merged by
//! non-maximum suppression. Results are in frame pixels.

use std::path::Path;

use anyhow::{bail, Context, Result};
use fast_image_resize::{FilterType, ResizeAlg, ResizeOptions, Resizer};
use image::RgbImage;
use normgate_core::align::Landmarks;

use crate::card::{DetectorCard, ModelCard};
use crate::runtime::Network;

/// One detected face.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Face {
    /// Box `[x1, y1, x2, y2]` in frame pixels.
    pub bbox: [f32; 4],
    /// Detector confidence in [0, 1].
    pub score: f32,
    /// Left eye, right eye, nose tip, left and right mouth corners.
    pub landmarks: Landmarks,
}

impl Face {
    /// Shorter side of the box.
    pub fn short_side(&self) -> f32 {
        (self.bbox[2] - self.bbox[0]).min(self.bbox[3] - self.bbox[1])
    }

    /// Box area.
    pub fn area(&self) -> f32 {
        (self.bbox[2] - self.bbox[0]).max(0.0) * (self.bbox[3] - self.bbox[1]).max(0.0)
    }

    /// The face with its box corners and landmarks sent through `point`: a
    /// move or a scaling that keeps the axes' directions (a mirror does not:
    /// it swaps corners and sides).
    pub fn mapped(&self, point: impl Fn([f32; 2]) -> [f32; 2]) -> Face {
        let ([x1, y1], [x2, y2]) = (point([self.bbox[0], self.bbox[1]]), point([self.bbox[2], self.bbox[3]]));
        Face {
            bbox: [x1, y1, x2, y2],
            score: self.score,
            landmarks: self.landmarks.map(point),
        }
    }
}

/// Intersection over union of two boxes.
pub fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    let union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter;
    if union > 0.0 {
        inter / union
    } else {
        0.0
    }
}

/// Greedy non-maximum suppression: the best-scoring face wins, faces that
/// overlap it by more than `threshold` IoU go.
pub fn nms(mut faces: Vec<Face>, threshold: f32) -> Vec<Face> {
    faces.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut kept: Vec<Face> = Vec::new();
    for f in faces {
        if kept.iter().all(|k| iou(&k.bbox, &f.bbox) <= threshold) {
            kept.push(f);
        }
    }
    kept
}

/// Anchor priors `[cx, cy, w, h]` in input pixels: for each stride, cells
/// row by row, and per cell one square anchor per size.
pub fn priors(input: u32, strides: &[u32], anchor_sizes: &[Vec<f32>]) -> Vec<[f32; 4]> {
    let mut out = Vec::new();
    for (&stride, sizes) in strides.iter().zip(anchor_sizes) {
        let cells = input.div_ceil(stride);
        for i in 0..cells {
            for j in 0..cells {
                let (cx, cy) = ((j as f32 + 0.5) * stride as f32, (i as f32 + 0.5) * stride as f32);
                out.extend(sizes.iter().map(|&s| [cx, cy, s, s]));
            }
        }
    }
    out
}

/// Decodes every anchor whose face score reaches `threshold`.
pub fn decode(
    loc: &[f32],
    scores: &[f32],
    landmarks: &[f32],
    priors: &[[f32; 4]],
    variance: [f32; 2],
    threshold: f32,
) -> Vec<Face> {
    let mut faces = Vec::new();
    for (a, p) in priors.iter().enumerate() {
        let score = scores[a * 2 + 1];
        if score < threshold {
            continue;
        }
        let l = &loc[a * 4..][..4];
        let (cx, cy) = (p[0] + l[0] * variance[0] * p[2], p[1] + l[1] * variance[0] * p[3]);
        let (w, h) = (p[2] * (l[2] * variance[1]).exp(), p[3] * (l[3] * variance[1]).exp());
        let m = &landmarks[a * 10..][..10];
        let landmarks = std::array::from_fn(|k| {
            [
                p[0] + m[2 * k] * variance[0] * p[2],
                p[1] + m[2 * k + 1] * variance[0] * p[3],
            ]
        });
        faces.push(Face {
            bbox: [cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0],
            score,
            landmarks,
        });
    }
    faces
}

/// Scales a frame so its longer side is `size`, pads it to `size x size`
/// (bottom and right, with the model's mean colour) and returns the scale.
pub fn letterbox(image: &RgbImage, size: u32, pad: [u8; 3]) -> (RgbImage, f32) {
    let (w, h) = image.dimensions();
    let scale = size as f32 / w.max(h).max(1) as f32;
    let (nw, nh) = (
        ((w as f32 * scale).round() as u32).clamp(1, size),
        ((h as f32 * scale).round() as u32).clamp(1, size),
    );
    // The image crate's triangle filter, in SIMD fixed point: with the
    // image crate's own resize a 640x480 frame took twice as long to detect.
    let mut resized = RgbImage::new(nw, nh);
    let bilinear = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
    Resizer::new()
        .resize(image, &mut resized, &bilinear)
        .expect("an RGB image resizes into an RGB image of at least 1x1");
    let mut out = RgbImage::from_pixel(size, size, image::Rgb(pad));
    image::imageops::replace(&mut out, &resized, 0, 0);
    (out, scale)
}

/// The RGB colour a frame is padded with: the model's mean, which normalises to zero.
pub fn pad_colour(card: &ModelCard) -> [u8; 3] {
    let pad = std::array::from_fn(|c| card.mean[c].round().clamp(0.0, 255.0) as u8);
    // The mean is in the model's channel order; padding is drawn in RGB.
    match card.channels {
        crate::card::ChannelOrder::Rgb => pad,
        crate::card::ChannelOrder::Bgr => [pad[2], pad[1], pad[0]],
    }
}

/// Thresholds of detection.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DetectParams {
    /// Smallest face score kept.
    pub score_threshold: f32,
    /// IoU above which the weaker of two boxes is suppressed.
    pub nms_iou: f32,
}

impl Default for DetectParams {
    fn default() -> Self {
        Self {
            score_threshold: 0.6,
            nms_iou: 0.4,
        }
    }
}

/// A loaded detector.
pub struct Detector {
    network: Network,
    card: ModelCard,
    layout: DetectorCard,
    priors: Vec<[f32; 4]>,
}

impl Detector {
    /// Loads a model and its card; refuses a card that is not a square-input detector's.
    pub fn load(model: &Path, card: &Path) -> Result<Self> {
        let card = ModelCard::load(card)?;
        let Some(layout) = card.detector.clone() else {
            bail!("{} is not a detector's card", model.display());
        };
        if card.width != card.height {
            bail!(
                "detector input must be square, the card says {}x{}",
                card.width,
                card.height
            );
        }
        let outputs = [layout.loc.as_str(), layout.scores.as_str(), layout.landmarks.as_str()];
        let network =
            Network::load(model, &card, 1, &outputs).with_context(|| format!("detector {}", model.display()))?;
        let priors = priors(card.width, &layout.strides, &layout.anchor_sizes);
        Ok(Self {
            network,
            card,
            layout,
            priors,
        })
    }

    /// Every face in a frame, best first.
    pub fn detect(&self, image: &RgbImage, params: &DetectParams) -> Result<Vec<Face>> {
        let (input, scale) = letterbox(image, self.card.width, pad_colour(&self.card));
        let outputs = self.network.run(&[self.card.input_tensor(&input)])?;
        let n = self.priors.len();
        for (o, width, name) in [
            (&outputs[0], 4, "loc"),
            (&outputs[1], 2, "scores"),
            (&outputs[2], 10, "landmarks"),
        ] {
            if o.len() != n * width {
                bail!(
                    "detector output {name} has {} values, the card's anchors need {}",
                    o.len(),
                    n * width
                );
            }
        }
        let faces = decode(
            &outputs[0],
            &outputs[1],
            &outputs[2],
            &self.priors,
            self.layout.variance,
            params.score_threshold,
        );
        Ok(nms(faces, params.nms_iou)
            .into_iter()
            .map(|f| f.mapped(|[x, y]| [x / scale, y / scale]))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retinaface_priors_follow_the_documented_order() {
        let p = priors(
            640,
            &[8, 16, 32],
            &[vec![16.0, 32.0], vec![64.0, 128.0], vec![256.0, 512.0]],
        );
        assert_eq!(p.len(), 16800);
        assert_eq!(p[0], [4.0, 4.0, 16.0, 16.0]);
        assert_eq!(p[1], [4.0, 4.0, 32.0, 32.0]);
        assert_eq!(p[2], [12.0, 4.0, 16.0, 16.0]); // next column, same row
        assert_eq!(p[160], [4.0, 12.0, 16.0, 16.0]); // next row
        assert_eq!(p[12800], [8.0, 8.0, 64.0, 64.0]); // first stride-16 anchor
        assert_eq!(p[16799], [624.0, 624.0, 512.0, 512.0]);
    }

    #[test]
    fn decoding_applies_the_variances() {
        let priors = [[100.0, 50.0, 20.0, 20.0], [0.0, 0.0, 16.0, 16.0]];
        let loc = [1.0, -1.0, 0.0, (2f32).ln() / 0.2, 0.0, 0.0, 0.0, 0.0];
        let scores = [0.1, 0.9, 0.8, 0.2];
        let landm: Vec<f32> = (0..20).map(|i| if i < 10 { 1.0 } else { 0.0 }).collect();
        let faces = decode(&loc, &scores, &landm, &priors, [0.1, 0.2], 0.5);
        assert_eq!(faces.len(), 1);
        let f = faces[0];
        // Centre (100 + 2, 50 - 2), size (20, 40).
        for (got, want) in f.bbox.iter().zip([92.0, 28.0, 112.0, 68.0]) {
            assert!((got - want).abs() < 1e-4, "{:?}", f.bbox);
        }
        assert_eq!(f.landmarks[0], [102.0, 52.0]);
        assert_eq!(f.score, 0.9);
    }

    #[test]
    fn nms_keeps_the_best_of_overlapping_boxes() {
        let face = |x: f32, score: f32| Face {
            bbox: [x, 0.0, x + 10.0, 10.0],
            score,
            landmarks: [[0.0; 2]; 5],
        };
        let kept = nms(vec![face(0.0, 0.8), face(1.0, 0.9), face(20.0, 0.5)], 0.4);
        assert_eq!(kept.iter().map(|f| f.score).collect::<Vec<_>>(), [0.9, 0.5]);
        assert!((iou(&face(0.0, 0.0).bbox, &face(5.0, 0.0).bbox) - 50.0 / 150.0).abs() < 1e-6);
    }

    #[test]
    fn letterbox_scales_the_longer_side_and_pads() {
        let img = RgbImage::from_pixel(200, 100, image::Rgb([255, 0, 0]));
        let (boxed, scale) = letterbox(&img, 64, [1, 2, 3]);
        assert_eq!((boxed.dimensions(), scale), ((64, 64), 0.32));
        assert_eq!(boxed.get_pixel(10, 10).0, [255, 0, 0]);
        assert_eq!(boxed.get_pixel(10, 40).0, [1, 2, 3]);
    }

    #[test]
    fn a_mapped_face_moves_its_corners_and_landmarks_and_keeps_its_score() {
        let face = Face {
            bbox: [10.0, 20.0, 30.0, 50.0],
            score: 0.7,
            landmarks: [[12.0, 25.0], [28.0, 25.0], [20.0, 35.0], [14.0, 45.0], [26.0, 45.0]],
        };
        let moved = face.mapped(|[x, y]| [2.0 * x + 1.0, y - 5.0]);
        assert_eq!(moved.bbox, [21.0, 15.0, 61.0, 45.0]);
        assert_eq!(moved.landmarks[0], [25.0, 20.0]);
        assert_eq!(moved.landmarks[4], [53.0, 40.0]);
        assert_eq!(moved.score, 0.7);
    }

    #[test]
    fn the_fast_resize_matches_the_image_crates_triangle_filter() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("samples/chelsea.png");
        let photo = image::open(path).unwrap().to_rgb8();
        let (w, h) = photo.dimensions();
        let (boxed, scale) = letterbox(&photo, 160, [0; 3]);
        let (nw, nh) = ((w as f32 * scale).round() as u32, (h as f32 * scale).round() as u32);
        let reference = image::imageops::resize(&photo, nw, nh, image::imageops::FilterType::Triangle);
        let boxed = &boxed;
        let diffs: Vec<i32> = reference
            .enumerate_pixels()
            .flat_map(|(x, y, p)| {
                (0..3).map(move |c| (i32::from(p.0[c]) - i32::from(boxed.get_pixel(x, y).0[c])).abs())
            })
            .collect();
        let mean = diffs.iter().sum::<i32>() as f64 / diffs.len() as f64;
        let max = diffs.iter().copied().max().unwrap();
        // Fixed-point rounding: at most one level off, rarely.
        assert!(mean < 0.25 && max <= 1, "mean {mean}, max {max}");
    }
}
