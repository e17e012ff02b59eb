//! Face alignment: five-point templates, the least-squares similarity transform
//! (Umeyama, 1991) from detected landmarks to a template, and a bilinear warp
//! into a caller-provided buffer.
//!
//! Coordinates are in pixels with integer values at pixel centres (the
//! convention of OpenCV's `warpAffine` and of the RetinaFace landmarks).
//! Landmark order everywhere: left eye, right eye, nose tip, left mouth corner,
//! right mouth corner, left and right as seen in the image.

use nalgebra::{Matrix2, Vector2};

use crate::error::check_len;
use crate::{Error, Result};

/// Five landmarks, `[x, y]` each.
pub type Landmarks = [[f32; 2]; 5];

/// An aligned crop's size and where the five landmarks must land.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Template {
    /// Crop width in pixels.
    pub width: u32,
    /// Crop height in pixels.
    pub height: u32,
    /// Target landmark positions.
    pub points: Landmarks,
}

/// SphereFace's 96 x 112 (width x height) template.
pub const SPHEREFACE_112X96: Template = Template {
    width: 96,
    height: 112,
    points: [
        [30.2946, 51.6963],
        [65.5318, 51.5014],
        [48.0252, 71.7366],
        [33.5493, 92.3655],
        [62.7299, 92.2041],
    ],
};

/// The common 112 x 112 template (ArcFace): SphereFace's points shifted by +8 in x.
pub const ARCFACE_112X112: Template = Template {
    width: 112,
    height: 112,
    points: [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
};

/// A similarity transform `p' = s R p + t`, stored as
/// `x' = a x - b y + tx`, `y' = b x + a y + ty` with `a = s cos θ`, `b = s sin θ`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Similarity {
    /// `s cos θ`.
    pub a: f32,
    /// `s sin θ`.
    pub b: f32,
    /// Translation in x.
    pub tx: f32,
    /// Translation in y.
    pub ty: f32,
}

impl Similarity {
    /// Maps one point.
    pub fn apply(&self, [x, y]: [f32; 2]) -> [f32; 2] {
        [self.a * x - self.b * y + self.tx, self.b * x + self.a * y + self.ty]
    }

    /// The transform with linear part `a`, `b` that leaves `centre` where
    /// it is: a turn and rescaling about that point.
    pub fn about(centre: [f32; 2], a: f32, b: f32) -> Self {
        let [cx, cy] = centre;
        Self {
            a,
            b,
            tx: cx - (a * cx - b * cy),
            ty: cy - (b * cx + a * cy),
        }
    }

    /// `self` applied after `first`: maps `p` to `self.apply(first.apply(p))`.
    pub fn after(&self, first: &Self) -> Self {
        let [tx, ty] = self.apply([first.tx, first.ty]);
        Self {
            a: self.a * first.a - self.b * first.b,
            b: self.a * first.b + self.b * first.a,
            tx,
            ty,
        }
    }

    /// The scale factor `s`.
    pub fn scale(&self) -> f32 {
        libm::hypotf(self.a, self.b)
    }

    /// The inverse transform; `None` for a zero scale.
    pub fn inverse(&self) -> Option<Self> {
        let s2 = self.a * self.a + self.b * self.b;
        if !(s2 > 0.0 && s2.is_finite()) {
            return None;
        }
        let (a, b) = (self.a / s2, -self.b / s2);
        Some(Self {
            a,
            b,
            tx: -(a * self.tx - b * self.ty),
            ty: -(b * self.tx + a * self.ty),
        })
    }
}

/// The similarity transform that maps `from` onto `to` with the least squared error.
///
/// Rejects non-finite points, points that all coincide, and points on one
/// line (no face has collinear eyes, nose and mouth; such a fit is unstable).
pub fn estimate_similarity(from: &Landmarks, to: &Landmarks) -> Result<Similarity> {
    if from.iter().chain(to).flatten().any(|v| !v.is_finite()) {
        return Err(Error::NonFinite("landmarks"));
    }
    let pts = |l: &Landmarks| l.map(|[x, y]| Vector2::new(f64::from(x), f64::from(y)));
    let (src, dst) = (pts(from), pts(to));
    let n = src.len() as f64;
    let mean_src = src.iter().sum::<Vector2<f64>>() / n;
    let mean_dst = dst.iter().sum::<Vector2<f64>>() / n;
    let mut cov = Matrix2::zeros();
    let mut src_spread = Matrix2::zeros();
    for (s, d) in src.iter().zip(&dst) {
        let (sc, dc) = (s - mean_src, d - mean_dst);
        cov += dc * sc.transpose() / n;
        src_spread += sc * sc.transpose() / n;
    }
    let variance = src_spread.trace();
    if variance.is_nan() || variance <= 1e-12 {
        return Err(Error::DegenerateLandmarks("all points coincide"));
    }
    // The smaller eigenvalue of the 2x2 spread is ~0 exactly when the points lie on a line.
    let det = src_spread.determinant();
    let disc = libm::sqrt((variance * variance / 4.0 - det).max(0.0));
    let smallest = variance / 2.0 - disc;
    if smallest < 1e-4 * variance {
        return Err(Error::DegenerateLandmarks("points lie on one line"));
    }
    let svd = cov.svd(true, true);
    let (u, v_t) = match (svd.u, svd.v_t) {
        (Some(u), Some(v_t)) => (u, v_t),
        _ => return Err(Error::DegenerateLandmarks("no singular value decomposition")),
    };
    // Keep a proper rotation: flip the smaller singular direction if the fit wants a reflection.
    let reflect = u.determinant() * v_t.determinant() < 0.0;
    let d = Matrix2::from_diagonal(&Vector2::new(1.0, if reflect { -1.0 } else { 1.0 }));
    let rotation = u * d * v_t;
    let scale = (svd.singular_values[0] + svd.singular_values[1] * d[(1, 1)]) / variance;
    let t = mean_dst - scale * rotation * mean_src;
    let t = Similarity {
        a: (scale * rotation[(0, 0)]) as f32,
        b: (scale * rotation[(1, 0)]) as f32,
        tx: t.x as f32,
        ty: t.y as f32,
    };
    if !(t.scale() > 0.0 && t.scale().is_finite()) {
        return Err(Error::DegenerateLandmarks("zero scale"));
    }
    Ok(t)
}

/// Warps an RGB8 image (`width * height * 3` bytes, rows top to bottom) so
/// that `landmarks` land on `template`, writing `template.width *
/// template.height * 3` bytes into `out`. Pixels that map outside the source
/// are black. Returns the image-to-crop transform that was used.
pub fn align_rgb8(
    image: &[u8],
    width: u32,
    height: u32,
    landmarks: &Landmarks,
    template: &Template,
    out: &mut [u8],
) -> Result<Similarity> {
    let to_crop = estimate_similarity(landmarks, &template.points)?;
    let to_image = to_crop.inverse().ok_or(Error::DegenerateLandmarks("zero scale"))?;
    warp_rgb8(image, width, height, &to_image, out, template.width, template.height)?;
    Ok(to_crop)
}

/// Fills `out` (`out_width * out_height * 3` bytes) by sampling `image` with
/// bilinear interpolation at `to_image(x, y)` for every output pixel.
pub fn warp_rgb8(
    image: &[u8],
    width: u32,
    height: u32,
    to_image: &Similarity,
    out: &mut [u8],
    out_width: u32,
    out_height: u32,
) -> Result<()> {
    let (w, h) = (width as usize, height as usize);
    check_len("image", w * h * 3, image.len())?;
    check_len("out", out_width as usize * out_height as usize * 3, out.len())?;
    let pixel = |x: isize, y: isize| -> [f32; 3] {
        if x < 0 || y < 0 || x as usize >= w || y as usize >= h {
            return [0.0; 3];
        }
        let i = (y as usize * w + x as usize) * 3;
        [image[i].into(), image[i + 1].into(), image[i + 2].into()]
    };
    for (oy, row) in out.chunks_exact_mut(out_width as usize * 3).enumerate() {
        for (ox, dst) in row.chunks_exact_mut(3).enumerate() {
            let [sx, sy] = to_image.apply([ox as f32, oy as f32]);
            let (fx, fy) = (libm::floorf(sx), libm::floorf(sy));
            let (wx, wy) = (sx - fx, sy - fy);
            let (x0, y0) = (fx as isize, fy as isize);
            let (p00, p10, p01, p11) = (
                pixel(x0, y0),
                pixel(x0 + 1, y0),
                pixel(x0, y0 + 1),
                pixel(x0 + 1, y0 + 1),
            );
            for c in 0..3 {
                let top = p00[c] + wx * (p10[c] - p00[c]);
                let bottom = p01[c] + wx * (p11[c] - p01[c]);
                dst[c] = (top + wy * (bottom - top) + 0.5).clamp(0.0, 255.0) as u8;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::vec;

    fn transform(l: &Landmarks, t: &Similarity) -> Landmarks {
        l.map(|p| t.apply(p))
    }

    #[test]
    fn a_transform_about_a_centre_keeps_it_and_composition_applies_in_order() {
        let turn = Similarity::about([3.0, -2.0], 0.0, 2.0);
        assert_eq!(turn.apply([3.0, -2.0]), [3.0, -2.0]);
        // A quarter turn, doubled: one step right of the centre goes two steps down.
        assert_eq!(turn.apply([4.0, -2.0]), [3.0, 0.0]);
        let shift = Similarity {
            a: 1.0,
            b: 0.0,
            tx: 5.0,
            ty: 1.0,
        };
        for p in [[0.0, 0.0], [4.0, -2.0], [-1.5, 7.0]] {
            assert_eq!(shift.after(&turn).apply(p), shift.apply(turn.apply(p)));
            assert_eq!(turn.after(&shift).apply(p), turn.apply(shift.apply(p)));
        }
    }

    #[test]
    fn templates_differ_by_eight_pixels() {
        for (s, a) in SPHEREFACE_112X96.points.iter().zip(&ARCFACE_112X112.points) {
            assert!((a[0] - s[0] - 8.0).abs() < 1e-4 && a[1] == s[1]);
        }
    }

    #[test]
    fn recovers_a_known_transform() {
        // s = 2, θ = 30°, t = (10, -5).
        let (s, th) = (2.0f32, core::f32::consts::PI / 6.0);
        let truth = Similarity {
            a: s * libm::cosf(th),
            b: s * libm::sinf(th),
            tx: 10.0,
            ty: -5.0,
        };
        let from = SPHEREFACE_112X96.points;
        let est = estimate_similarity(&from, &transform(&from, &truth)).unwrap();
        for (x, y) in [
            (est.a, truth.a),
            (est.b, truth.b),
            (est.tx, truth.tx),
            (est.ty, truth.ty),
        ] {
            assert!((x - y).abs() < 1e-4, "{est:?} vs {truth:?}");
        }
    }

    #[test]
    fn least_squares_fit_of_noisy_points_matches_the_closed_form() {
        // For a pure translation of noisy points the best similarity maps means
        // onto means; here the target is the source shifted by (3, 4) plus a
        // zero-mean perturbation that is orthogonal to every similarity.
        let from = [[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0], [5.0, 5.0]];
        let noise = [[1.0, 0.0], [-1.0, 0.0], [-1.0, 0.0], [1.0, 0.0], [0.0, 0.0]];
        let to: Landmarks = core::array::from_fn(|i| [from[i][0] + 3.0 + noise[i][0], from[i][1] + 4.0 + noise[i][1]]);
        let est = estimate_similarity(&from, &to).unwrap();
        assert!((est.a - 1.0).abs() < 1e-5 && est.b.abs() < 1e-5, "{est:?}");
        assert!((est.tx - 3.0).abs() < 1e-4 && (est.ty - 4.0).abs() < 1e-4, "{est:?}");
    }

    #[test]
    fn degenerate_landmarks_are_errors() {
        let to = ARCFACE_112X112.points;
        let same = [[5.0, 5.0]; 5];
        assert!(matches!(
            estimate_similarity(&same, &to),
            Err(Error::DegenerateLandmarks(_))
        ));
        let line = [[0.0, 0.0], [1.0, 1.0], [2.0, 2.0], [3.0, 3.0], [4.0, 4.0]];
        assert!(matches!(
            estimate_similarity(&line, &to),
            Err(Error::DegenerateLandmarks(_))
        ));
        let mut nan = to;
        nan[2][0] = f32::NAN;
        assert!(matches!(estimate_similarity(&nan, &to), Err(Error::NonFinite(_))));
    }

    #[test]
    fn warp_by_whole_pixels_shifts_and_blackens_outside() {
        // 4x3 image whose pixel (x, y) holds (10x + y, 0, 255).
        let (w, h) = (4u32, 3u32);
        let image: vec::Vec<u8> = (0..h)
            .flat_map(|y| (0..w).flat_map(move |x| [(10 * x + y) as u8, 0, 255]))
            .collect();
        let shift = Similarity {
            a: 1.0,
            b: 0.0,
            tx: 1.0,
            ty: 0.0,
        };
        let mut out = vec![0u8; 4 * 3 * 3];
        warp_rgb8(&image, w, h, &shift, &mut out, 4, 3).unwrap();
        for y in 0..3 {
            for x in 0..4 {
                let o = &out[(y * 4 + x) * 3..][..3];
                if x < 3 {
                    assert_eq!(o, [(10 * (x + 1) + y) as u8, 0, 255]);
                } else {
                    assert_eq!(o, [0, 0, 0]);
                }
            }
        }
    }

    #[test]
    fn warp_interpolates_bilinearly() {
        // 2x2 grey image 0, 100 / 200, 40; the centre (0.5, 0.5) is their mean, 85.
        let image = [0, 0, 0, 100, 100, 100, 200, 200, 200, 40, 40, 40];
        let centre = Similarity {
            a: 1.0,
            b: 0.0,
            tx: 0.5,
            ty: 0.5,
        };
        let mut out = [0u8; 3];
        warp_rgb8(&image, 2, 2, &centre, &mut out, 1, 1).unwrap();
        assert_eq!(out, [85; 3]);
        // (0.25, 0): 0.75 * 0 + 0.25 * 100 = 25.
        let quarter = Similarity {
            a: 1.0,
            b: 0.0,
            tx: 0.25,
            ty: 0.0,
        };
        warp_rgb8(&image, 2, 2, &quarter, &mut out, 1, 1).unwrap();
        assert_eq!(out, [25; 3]);
    }

    #[test]
    fn aligning_a_template_image_to_itself_is_the_identity() {
        let t = SPHEREFACE_112X96;
        let image: vec::Vec<u8> = (0..t.width * t.height * 3).map(|i| (i * 7 % 251) as u8).collect();
        let mut out = vec![0u8; image.len()];
        let m = align_rgb8(&image, t.width, t.height, &t.points, &t, &mut out).unwrap();
        assert!((m.a - 1.0).abs() < 1e-5 && m.b.abs() < 1e-5);
        assert_eq!(out, image);
    }

    #[test]
    fn wrong_buffer_sizes_are_errors() {
        let t = ARCFACE_112X112;
        let mut out = vec![0u8; 10];
        assert!(matches!(
            align_rgb8(&[0; 12], 2, 2, &t.points, &t, &mut out),
            Err(Error::ShapeMismatch { what: "out", .. })
        ));
        assert!(matches!(
            align_rgb8(&[0; 11], 2, 2, &t.points, &t, &mut out),
            Err(Error::ShapeMismatch { what: "image", .. })
        ));
    }

    proptest! {
        #[test]
        fn estimate_inverts_random_similarities(
            s in 0.05f32..20.0,
            th in -3.1f32..3.1,
            tx in -500.0f32..500.0,
            ty in -500.0f32..500.0,
        ) {
            let truth = Similarity { a: s * libm::cosf(th), b: s * libm::sinf(th), tx, ty };
            let from = ARCFACE_112X112.points;
            let to = transform(&from, &truth);
            let est = estimate_similarity(&from, &to).unwrap();
            for (p, q) in transform(&from, &est).iter().zip(&to) {
                prop_assert!((p[0] - q[0]).abs() < 2e-3 * (1.0 + s) && (p[1] - q[1]).abs() < 2e-3 * (1.0 + s));
            }
            let inv = est.inverse().unwrap();
            for (p, q) in transform(&to, &inv).iter().zip(&from) {
                prop_assert!((p[0] - q[0]).abs() < 1e-2 && (p[1] - q[1]).abs() < 1e-2);
            }
        }
    }
}
