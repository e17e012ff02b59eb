//! Image degradations of the evaluation protocol (DESIGN.md, degradation
//! ranking), also used to teach the student how its norm must fall with
//! quality: blur, downscaling, noise, darkening and occlusion.

use image::{imageops, Rgb, RgbImage};
use rand::rngs::StdRng;
use rand::Rng;
use rand_distr::{Distribution, Normal};

/// One degradation and its severity.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub enum Degradation {
    /// Gaussian blur of this sigma (pixels).
    Blur(f32),
    /// Downscale so the longer side has this many pixels, then back up (bilinear).
    Downscale(u32),
    /// Additive Gaussian noise of this sigma (0..255 scale).
    Noise(f32),
    /// Multiply every pixel by this factor.
    Darken(f32),
    /// Paint the lower half grey.
    OccludeLowerHalf,
}

impl Degradation {
    /// The protocol's families, each from mild to severe (the order the norm must follow).
    pub fn protocol() -> Vec<(&'static str, Vec<Degradation>)> {
        use Degradation::*;
        vec![
            ("blur", vec![Blur(1.0), Blur(2.0), Blur(4.0)]),
            ("downscale", vec![Downscale(28), Downscale(14)]),
            ("noise", vec![Noise(25.0)]),
            ("darken", vec![Darken(0.25), Darken(0.1)]),
            ("occlusion", vec![OccludeLowerHalf]),
        ]
    }

    /// A random degradation for training, spread over every family and a
    /// wider range of severities than the protocol's.
    pub fn random(rng: &mut StdRng) -> Self {
        match rng.random_range(0..5) {
            0 => Degradation::Blur(rng.random_range(0.7..5.0)),
            1 => Degradation::Downscale(rng.random_range(10..48)),
            2 => Degradation::Noise(rng.random_range(8.0..40.0)),
            3 => Degradation::Darken(rng.random_range(0.05..0.5)),
            _ => Degradation::OccludeLowerHalf,
        }
    }

    /// The degraded image (same size).
    pub fn apply(self, image: &RgbImage, rng: &mut StdRng) -> RgbImage {
        let (w, h) = image.dimensions();
        match self {
            Degradation::Blur(sigma) => imageops::blur(image, sigma),
            Degradation::Downscale(side) => {
                let scale = side as f32 / w.max(h) as f32;
                let (sw, sh) = (
                    ((w as f32 * scale).round() as u32).max(1),
                    ((h as f32 * scale).round() as u32).max(1),
                );
                let small = imageops::resize(image, sw, sh, imageops::FilterType::Triangle);
                imageops::resize(&small, w, h, imageops::FilterType::Triangle)
            }
            Degradation::Noise(sigma) => {
                let normal = Normal::new(0.0f32, sigma).expect("finite sigma");
                let mut out = image.clone();
                out.pixels_mut().for_each(|p| {
                    p.0.iter_mut()
                        .for_each(|v| *v = (f32::from(*v) + normal.sample(rng)).round().clamp(0.0, 255.0) as u8)
                });
                out
            }
            Degradation::Darken(factor) => {
                let mut out = image.clone();
                out.pixels_mut()
                    .for_each(|p| p.0.iter_mut().for_each(|v| *v = (f32::from(*v) * factor).round() as u8));
                out
            }
            Degradation::OccludeLowerHalf => {
                let mut out = image.clone();
                for y in h / 2..h {
                    for x in 0..w {
                        out.put_pixel(x, y, Rgb([128, 128, 128]));
                    }
                }
                out
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn checker() -> RgbImage {
        RgbImage::from_fn(32, 32, |x, y| {
            if (x + y) % 2 == 0 {
                Rgb([200, 200, 200])
            } else {
                Rgb([20, 20, 20])
            }
        })
    }

    /// Sum of absolute differences between horizontal neighbours: detail.
    fn detail(img: &RgbImage) -> u64 {
        (0..img.height())
            .flat_map(|y| (1..img.width()).map(move |x| (x, y)))
            .map(|(x, y)| u64::from(img.get_pixel(x, y)[0].abs_diff(img.get_pixel(x - 1, y)[0])))
            .sum()
    }

    #[test]
    fn each_degradation_does_what_it_says() {
        let mut rng = StdRng::seed_from_u64(1);
        let img = checker();
        let base = detail(&img);
        assert!(detail(&Degradation::Blur(2.0).apply(&img, &mut rng)) < base / 4);
        assert!(detail(&Degradation::Downscale(8).apply(&img, &mut rng)) < base / 4);
        let dark = Degradation::Darken(0.25).apply(&img, &mut rng);
        assert_eq!((dark.get_pixel(0, 0)[0], dark.get_pixel(1, 0)[0]), (50, 5));
        let occluded = Degradation::OccludeLowerHalf.apply(&img, &mut rng);
        assert_eq!(
            (occluded.get_pixel(3, 15), occluded.get_pixel(3, 16)),
            (img.get_pixel(3, 15), &Rgb([128; 3]))
        );
        let noisy = Degradation::Noise(25.0).apply(&RgbImage::from_pixel(64, 64, Rgb([128; 3])), &mut rng);
        let spread = noisy.pixels().map(|p| (f32::from(p[0]) - 128.0).powi(2)).sum::<f32>() / (64.0 * 64.0);
        assert!((spread.sqrt() - 25.0).abs() < 2.0, "{}", spread.sqrt());
    }

    #[test]
    fn the_same_seed_degrades_the_same_way() {
        let img = checker();
        let run = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            let d = Degradation::random(&mut rng);
            d.apply(&img, &mut rng)
        };
        assert_eq!(run(5), run(5));
    }
}
