//! Training samples for the detector: an image scaled by a random factor,
//! placed at a random position on a square canvas of the network's input
//! size (the rest filled with the normalisation mean, as the device pads),
//! and mirrored half of the time, with its faces moved to match (a mirrored
//! face swaps its left and right landmarks); then photometric changes a
//! camera brings: contrast, brightness, colour cast, grey, blur and JPEG.

use image::imageops::{flip_horizontal, replace, resize, FilterType};
use image::{Rgb, RgbImage};
use normgate::detector::Face;
use normgate::landmarks::MIRRORED;
use normgate_core::align::Landmarks;
use rand::Rng;

/// The grey the device pads frames with, `(127.5 - 127.5) / 128 = 0` after normalisation.
const PAD: Rgb<u8> = Rgb([128, 128, 128]);

/// Range of the image's longer side on the canvas, as a share of the canvas side.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Augment {
    /// Smallest share.
    pub min_scale: f32,
    /// Largest share.
    pub max_scale: f32,
    /// Whether to mirror half of the samples.
    pub flip: bool,
}

impl Default for Augment {
    fn default() -> Self {
        Self {
            min_scale: 0.25,
            max_scale: 1.0,
            flip: true,
        }
    }
}

/// Mirrors a face in an image of width `width`.
pub fn mirror(face: &Face, width: f32) -> Face {
    let [x1, y1, x2, y2] = face.bbox;
    Face {
        bbox: [width - x2, y1, width - x1, y2],
        score: face.score,
        landmarks: mirror_landmarks(&face.landmarks, width),
    }
}

/// Mirrors five landmarks in an image of width `width`: left eye <-> right
/// eye, nose stays, left mouth corner <-> right mouth corner.
pub fn mirror_landmarks(l: &Landmarks, width: f32) -> Landmarks {
    std::array::from_fn(|k| {
        let [x, y] = l[MIRRORED[k]];
        [width - x, y]
    })
}

/// One augmented sample of `image` with `faces` on a `side x side` canvas.
pub fn sample(
    image: &RgbImage,
    faces: &[Face],
    side: u32,
    augment: Augment,
    rng: &mut impl Rng,
) -> (RgbImage, Vec<Face>) {
    let (w, h) = image.dimensions();
    let longer = w.max(h) as f32;
    let share = rng.random_range(augment.min_scale..=augment.max_scale);
    let scale = share * side as f32 / longer;
    let (nw, nh) = (
        ((w as f32 * scale).round() as u32).clamp(1, side),
        ((h as f32 * scale).round() as u32).clamp(1, side),
    );
    let mut scaled = resize(image, nw, nh, FilterType::Triangle);
    let mut moved: Vec<Face> = faces.to_vec();
    if augment.flip && rng.random_bool(0.5) {
        scaled = flip_horizontal(&scaled);
        moved = moved.iter().map(|f| mirror(f, w as f32)).collect();
    }
    let (ox, oy) = (rng.random_range(0..=side - nw), rng.random_range(0..=side - nh));
    let mut canvas = RgbImage::from_pixel(side, side, PAD);
    replace(&mut canvas, &scaled, i64::from(ox), i64::from(oy));
    let (sx, sy) = (nw as f32 / w as f32, nh as f32 / h as f32);
    let place = |[x, y]: [f32; 2]| [x * sx + ox as f32, y * sy + oy as f32];
    let placed = moved.iter().map(|f| f.mapped(place)).collect();
    (canvas, placed)
}

/// Random contrast, brightness and colour cast, sometimes (one in ten) grey,
/// blurred or re-encoded as a low-quality JPEG; labels are unchanged.
pub fn photometric(image: &mut RgbImage, rng: &mut impl Rng) {
    photometric_with_grey(image, rng, 0.1);
}

/// [`photometric`] with another chance of turning the image grey.
pub fn photometric_with_grey(image: &mut RgbImage, rng: &mut impl Rng, grey_chance: f64) {
    let contrast = rng.random_range(0.6..1.4f32);
    let brightness = rng.random_range(-40.0..40.0f32);
    let gain: [f32; 3] = std::array::from_fn(|_| rng.random_range(0.85..1.15f32));
    let grey = rng.random_bool(grey_chance);
    for p in image.pixels_mut() {
        let v = p.0.map(f32::from);
        let luma = 0.299 * v[0] + 0.587 * v[1] + 0.114 * v[2];
        for c in 0..3 {
            let x = if grey { luma } else { v[c] * gain[c] };
            p.0[c] = ((x - 128.0) * contrast + 128.0 + brightness).clamp(0.0, 255.0) as u8;
        }
    }
    if rng.random_bool(0.2) {
        *image = image::imageops::blur(image, rng.random_range(0.5..2.0));
    }
    if rng.random_bool(0.3) {
        let quality = rng.random_range(20..90u8);
        let mut bytes = Vec::new();
        let encoded = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, quality).encode_image(&*image);
        if let Ok(decoded) = encoded.and_then(|()| image::load_from_memory(&bytes)) {
            *image = decoded.to_rgb8();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::synthetic_face;
    use rand::SeedableRng;

    #[test]
    fn mirroring_twice_is_the_identity_and_keeps_left_left() {
        let f = synthetic_face([10.0, 20.0, 50.0, 70.0]);
        let m = mirror(&f, 100.0);
        assert_eq!(m.bbox, [50.0, 20.0, 90.0, 70.0]);
        // The subject's left eye is still on the image's left after mirroring.
        assert!(m.landmarks[0][0] < m.landmarks[1][0] && m.landmarks[3][0] < m.landmarks[4][0]);
        assert_eq!(mirror(&m, 100.0), f);
    }

    #[test]
    fn faces_follow_their_pixels_onto_the_canvas() {
        // A white square "face" on black; after any augmentation its box still covers white pixels.
        let mut image = RgbImage::new(200, 100);
        for y in 30..70 {
            for x in 120..160 {
                image.put_pixel(x, y, Rgb([255, 255, 255]));
            }
        }
        let face = synthetic_face([120.0, 30.0, 160.0, 70.0]);
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for _ in 0..20 {
            let (canvas, faces) = sample(&image, &[face], 128, Augment::default(), &mut rng);
            assert_eq!(canvas.dimensions(), (128, 128));
            let [x1, y1, x2, y2] = faces[0].bbox;
            assert!(x1 >= 0.0 && y1 >= 0.0 && x2 <= 128.0 && y2 <= 128.0, "{faces:?}");
            let centre = canvas.get_pixel(((x1 + x2) / 2.0) as u32, ((y1 + y2) / 2.0) as u32);
            assert!(centre.0[0] > 200, "box centre falls on {centre:?}: {faces:?}");
            assert!(faces[0].landmarks[0][0] < faces[0].landmarks[1][0]);
        }
    }

    #[test]
    fn photometric_changes_keep_the_size_and_change_the_pixels() {
        let image = RgbImage::from_fn(64, 48, |x, y| Rgb([(x * 4) as u8, (y * 5) as u8, 90]));
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut changed = 0;
        for _ in 0..10 {
            let mut out = image.clone();
            photometric(&mut out, &mut rng);
            assert_eq!(out.dimensions(), image.dimensions());
            changed += usize::from(out != image);
        }
        assert!(changed >= 9, "{changed} of 10 changed");
    }
}
