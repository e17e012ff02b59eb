//! Synthetic detector samples: aligned Glint24 faces pasted at random sizes
//! (log-uniform, so small faces are as common as large ones), positions and
//! counts onto non-face backgrounds: crops of non-face photographs, face-free
//! regions of labelled images, noise and colour gradients. An aligned face's
//! landmarks are the template's points; its box is the teacher's box
//! convention carried into template coordinates ([`template_box`]), so
//! composites and pseudo-labels teach the same box.

use image::imageops::{crop_imm, resize, FilterType};
use image::{Rgb, RgbImage};
use normgate::detector::{iou, Face};
use normgate_core::align::{estimate_similarity, ARCFACE_112X112};
use rand::Rng;

use crate::data::detector_samples::mirror;

/// The teacher's average face box in the 112x112 ArcFace template's
/// coordinates: each face's box centre and size carried through the
/// similarity that aligns its landmarks, averaged over `faces`.
pub fn template_box(faces: &[Face]) -> Option<[f32; 4]> {
    let mut sum = [0.0f64; 4];
    let mut n = 0usize;
    for f in faces {
        let Ok(sim) = estimate_similarity(&f.landmarks, &ARCFACE_112X112.points) else {
            continue;
        };
        let [x1, y1, x2, y2] = f.bbox;
        let [cx, cy] = sim.apply([(x1 + x2) / 2.0, (y1 + y2) / 2.0]);
        let s = sim.scale();
        for (acc, v) in sum.iter_mut().zip([cx, cy, (x2 - x1) * s, (y2 - y1) * s]) {
            *acc += f64::from(v);
        }
        n += 1;
    }
    if n == 0 {
        return None;
    }
    let [cx, cy, w, h] = sum.map(|v| (v / n as f64) as f32);
    Some([cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0])
}

/// What composites are made of.
pub struct Ingredients<'a> {
    /// Aligned 112x112 face crops.
    pub faces: &'a [RgbImage],
    /// The face box in template coordinates.
    pub face_box: [f32; 4],
    /// Non-face photographs.
    pub backgrounds: &'a [RgbImage],
    /// Labelled images whose face-free regions serve as backgrounds, with their faces.
    pub scenes: &'a [(RgbImage, Vec<Face>)],
}

/// Smallest pasted face height, pixels.
pub const MIN_FACE: f32 = 12.0;
/// Largest pasted face height, as a share of the canvas.
pub const MAX_FACE_SHARE: f32 = 0.8;
/// Most faces on one composite.
pub const MAX_FACES: usize = 5;

/// A random background of `side x side`.
pub fn background(ingredients: &Ingredients, side: u32, rng: &mut impl Rng) -> RgbImage {
    match rng.random_range(0..4) {
        0 if !ingredients.backgrounds.is_empty() => {
            let photo = &ingredients.backgrounds[rng.random_range(0..ingredients.backgrounds.len())];
            random_region(photo, side, rng)
        }
        1 if !ingredients.scenes.is_empty() => {
            face_free_region(ingredients.scenes, side, rng).unwrap_or_else(|| noise(side, rng))
        }
        2 => noise(side, rng),
        _ => gradient(side, rng),
    }
}

/// A random square region of `photo` (at least a quarter of its shorter side), resized to `side`.
fn random_region(photo: &RgbImage, side: u32, rng: &mut impl Rng) -> RgbImage {
    let (w, h) = photo.dimensions();
    let short = w.min(h);
    let size = rng.random_range((short / 4).max(1)..=short);
    let (x, y) = (rng.random_range(0..=w - size), rng.random_range(0..=h - size));
    resize(
        &crop_imm(photo, x, y, size, size).to_image(),
        side,
        side,
        FilterType::Triangle,
    )
}

/// A square region of a labelled image that overlaps none of its faces
/// (boxes grown by a quarter), resized to `side`; `None` after a few misses.
pub(crate) fn face_free_region(scenes: &[(RgbImage, Vec<Face>)], side: u32, rng: &mut impl Rng) -> Option<RgbImage> {
    for _ in 0..10 {
        let (image, faces) = &scenes[rng.random_range(0..scenes.len())];
        let (w, h) = image.dimensions();
        let short = w.min(h);
        if short < 64 {
            continue;
        }
        let size = rng.random_range(32..=short / 2);
        let (x, y) = (rng.random_range(0..=w - size), rng.random_range(0..=h - size));
        let region = [x as f32, y as f32, (x + size) as f32, (y + size) as f32];
        let clear = faces.iter().all(|f| {
            let [x1, y1, x2, y2] = f.bbox;
            let (gw, gh) = ((x2 - x1) / 4.0, (y2 - y1) / 4.0);
            iou(&region, &[x1 - gw, y1 - gh, x2 + gw, y2 + gh]) == 0.0
        });
        if clear {
            return Some(resize(
                &crop_imm(image, x, y, size, size).to_image(),
                side,
                side,
                FilterType::Triangle,
            ));
        }
    }
    None
}

/// Coloured noise around a random base colour, sometimes coarse.
fn noise(side: u32, rng: &mut impl Rng) -> RgbImage {
    let base: [i32; 3] = std::array::from_fn(|_| rng.random_range(0..256));
    let spread = rng.random_range(10..100);
    let cell = rng.random_range(1..9u32);
    let coarse = RgbImage::from_fn(side.div_ceil(cell), side.div_ceil(cell), |_, _| {
        Rgb(base.map(|b| (b + rng.random_range(-spread..=spread)).clamp(0, 255) as u8))
    });
    resize(&coarse, side, side, FilterType::Triangle)
}

/// A linear gradient between two random colours in a random direction.
fn gradient(side: u32, rng: &mut impl Rng) -> RgbImage {
    let (a, b): ([f32; 3], [f32; 3]) = (
        std::array::from_fn(|_| rng.random_range(0.0..255.0)),
        std::array::from_fn(|_| rng.random_range(0.0..255.0)),
    );
    let angle: f32 = rng.random_range(0.0..std::f32::consts::TAU);
    let (dx, dy) = (angle.cos(), angle.sin());
    let s = side as f32;
    RgbImage::from_fn(side, side, |x, y| {
        let t =
            (((x as f32 / s - 0.5) * dx + (y as f32 / s - 0.5) * dy) / std::f32::consts::SQRT_2 + 0.5).clamp(0.0, 1.0);
        Rgb(std::array::from_fn(|c| (a[c] + (b[c] - a[c]) * t) as u8))
    })
}

/// Pastes `crop` (an aligned face, scaled by `scale`) with its top-left at
/// `(ox, oy)`, fading it out towards an ellipse's rim so that no hard crop
/// edge tells the network where a face is.
fn paste_feathered(canvas: &mut RgbImage, crop: &RgbImage, ox: i64, oy: i64) {
    let (cw, ch) = crop.dimensions();
    let (rx, ry) = (cw as f32 / 2.0, ch as f32 / 2.0);
    for (x, y, p) in crop.enumerate_pixels() {
        let (tx, ty) = (ox + i64::from(x), oy + i64::from(y));
        if tx < 0 || ty < 0 || tx >= i64::from(canvas.width()) || ty >= i64::from(canvas.height()) {
            continue;
        }
        let (u, v) = ((x as f32 + 0.5 - rx) / rx, (y as f32 + 0.5 - ry) / ry);
        let alpha = ((1.0 - (u * u + v * v)) / 0.3).clamp(0.0, 1.0);
        if alpha == 0.0 {
            continue;
        }
        let dst = canvas.get_pixel_mut(tx as u32, ty as u32);
        for c in 0..3 {
            dst.0[c] = (f32::from(dst.0[c]) * (1.0 - alpha) + f32::from(p.0[c]) * alpha).round() as u8;
        }
    }
}

/// `face` moved right by `dx`.
fn shift(face: &Face, dx: f32) -> Face {
    face.mapped(|[x, y]| [x + dx, y])
}

/// A composite: a background with 0 to [`MAX_FACES`] faces that do not overlap.
pub fn composite(ingredients: &Ingredients, side: u32, rng: &mut impl Rng) -> (RgbImage, Vec<Face>) {
    let mut canvas = background(ingredients, side, rng);
    let mut placed: Vec<Face> = Vec::new();
    let count = rng.random_range(0..=MAX_FACES);
    let [bx1, by1, bx2, by2] = ingredients.face_box;
    let (log_min, log_max) = (MIN_FACE.ln(), (MAX_FACE_SHARE * side as f32).ln());
    for _ in 0..count {
        let crop = &ingredients.faces[rng.random_range(0..ingredients.faces.len())];
        let height = rng.random_range(log_min..=log_max).exp();
        let scale = height / (by2 - by1);
        let (fw, fh) = ((bx2 - bx1) * scale, height);
        if fw >= side as f32 || fh >= side as f32 {
            continue;
        }
        let (fx, fy) = (
            rng.random_range(0.0..side as f32 - fw),
            rng.random_range(0.0..side as f32 - fh),
        );
        let size = ((112.0 * scale).round() as u32).max(1);
        let s = size as f32 / 112.0;
        let (ox, oy) = ((fx - bx1 * s).round(), (fy - by1 * s).round());
        let mut face = Face {
            bbox: [ox + bx1 * s, oy + by1 * s, ox + bx2 * s, oy + by2 * s],
            score: 1.0,
            landmarks: ARCFACE_112X112.points.map(|[x, y]| [ox + x * s, oy + y * s]),
        };
        let flip = rng.random_bool(0.5);
        if flip {
            // Mirrored within the crop's own frame.
            face = shift(&mirror(&shift(&face, -ox), size as f32), ox);
        }
        let [x1, y1, x2, y2] = face.bbox;
        let outside = x1 < 0.0 || y1 < 0.0 || x2 > side as f32 || y2 > side as f32;
        if outside || placed.iter().any(|f| iou(&f.bbox, &face.bbox) > 0.0) {
            continue;
        }
        let mut scaled = resize(crop, size, size, FilterType::Triangle);
        if flip {
            scaled = image::imageops::flip_horizontal(&scaled);
        }
        paste_feathered(&mut canvas, &scaled, ox as i64, oy as i64);
        placed.push(face);
    }
    (canvas, placed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::synthetic_face;
    use rand::SeedableRng;

    #[test]
    fn the_template_box_of_aligned_faces_is_their_box() {
        // Faces whose landmarks are the template at another scale and place:
        // the template box is their box brought back to template coordinates.
        let make = |s: f32, dx: f32, dy: f32| Face {
            bbox: [20.0 * s + dx, 30.0 * s + dy, 90.0 * s + dx, 110.0 * s + dy],
            score: 1.0,
            landmarks: ARCFACE_112X112.points.map(|[x, y]| [x * s + dx, y * s + dy]),
        };
        let b = template_box(&[make(2.0, 5.0, 7.0), make(0.5, 100.0, 3.0)]).unwrap();
        for (v, want) in b.iter().zip([20.0, 30.0, 90.0, 110.0]) {
            assert!((v - want).abs() < 1e-2, "{b:?}");
        }
        assert_eq!(template_box(&[]), None);
    }

    #[test]
    fn pasted_faces_sit_where_their_labels_say_and_keep_left_left() {
        // A crop that is black except a white block over the template's face box.
        let face_box = [25.0, 30.0, 87.0, 105.0];
        let crop = RgbImage::from_fn(112, 112, |x, y| {
            let inside = (30..82).contains(&x) && (40..100).contains(&y);
            Rgb(if inside { [255; 3] } else { [0; 3] })
        });
        let scene = (
            RgbImage::from_pixel(100, 100, Rgb([0, 0, 0])),
            vec![synthetic_face([0.0, 0.0, 20.0, 20.0])],
        );
        let scenes = [scene];
        let backgrounds = [RgbImage::from_pixel(64, 64, Rgb([0, 0, 0]))];
        let ingredients = Ingredients {
            faces: &[crop],
            face_box,
            backgrounds: &backgrounds,
            scenes: &scenes,
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let mut seen = 0;
        for _ in 0..40 {
            let (canvas, faces) = composite(&ingredients, 128, &mut rng);
            assert_eq!(canvas.dimensions(), (128, 128));
            assert!(faces.len() <= MAX_FACES);
            for (i, f) in faces.iter().enumerate() {
                let [x1, y1, x2, y2] = f.bbox;
                assert!(x1 >= 0.0 && y1 >= 0.0 && x2 <= 128.0 && y2 <= 128.0, "{f:?}");
                assert!(f.landmarks[0][0] < f.landmarks[1][0], "left eye stays left: {f:?}");
                assert!(faces[..i].iter().all(|g| iou(&g.bbox, &f.bbox) == 0.0));
                if y2 - y1 >= 24.0 {
                    let p = canvas.get_pixel(((x1 + x2) / 2.0) as u32, ((y1 + y2) / 2.0) as u32);
                    assert!(p.0[0] > 200, "face centre is white: {f:?}");
                    seen += 1;
                }
            }
        }
        assert!(seen > 5, "{seen} large faces checked");
    }
}
