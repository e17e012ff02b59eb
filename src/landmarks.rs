//! Landmark refinement: a second small network looks again at each detected
//! face, cut from the frame at full resolution into a square crop around the
//! detector's box, and places the five landmarks. The detector reads them
//! from coarse feature maps (a face the size of LFW's is decoded from its
//! stride-32 level); alignment, and with it the embedder's accuracy, rests
//! on these points. Training cuts its crops with the same functions.

use std::path::Path;

use anyhow::{bail, Context, Result};
use image::RgbImage;
use normgate_core::align::{warp_rgb8, Landmarks, Similarity};

use crate::card::{check_model, ModelCard};
use crate::detector::{DetectParams, Detector, Face};
use crate::runtime::Network;

/// The square part of a frame a refiner sees: top-left corner and side, in frame pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Region {
    /// Left edge.
    pub x: f32,
    /// Top edge.
    pub y: f32,
    /// Side.
    pub side: f32,
}

impl Region {
    /// The square centred on a box, `expand` times its longer side.
    pub fn around(bbox: [f32; 4], expand: f32) -> Self {
        let [x1, y1, x2, y2] = bbox;
        let side = (x2 - x1).max(y2 - y1) * expand;
        Self {
            x: (x1 + x2 - side) / 2.0,
            y: (y1 + y2 - side) / 2.0,
            side,
        }
    }

    /// The region resampled (bilinear) to `size x size`; outside the frame is black.
    pub fn crop(&self, image: &RgbImage, size: u32) -> Result<RgbImage> {
        if !(self.side > 0.0 && self.side.is_finite()) || size == 0 {
            bail!("cannot crop a region of side {} to {size} px", self.side);
        }
        let scale = self.side / size as f32;
        // Output pixel centres map onto the region's pixel centres.
        let to_image = Similarity {
            a: scale,
            b: 0.0,
            tx: self.x + 0.5 * scale - 0.5,
            ty: self.y + 0.5 * scale - 0.5,
        };
        let mut out = vec![0u8; (size * size * 3) as usize];
        warp_rgb8(
            image.as_raw(),
            image.width(),
            image.height(),
            &to_image,
            &mut out,
            size,
            size,
        )?;
        Ok(RgbImage::from_raw(size, size, out).expect("buffer of the crop's size"))
    }

    /// A frame point as shares of the region's side (what a refiner outputs).
    pub fn to_shares(&self, [x, y]: [f32; 2]) -> [f32; 2] {
        [(x - self.x) / self.side, (y - self.y) / self.side]
    }

    /// Shares of the region's side back to a frame point.
    pub fn from_shares(&self, [u, v]: [f32; 2]) -> [f32; 2] {
        [self.x + u * self.side, self.y + v * self.side]
    }
}

/// Landmark order under a horizontal flip: the eyes and the mouth corners
/// swap (point `k` of a mirrored face is point `MIRRORED[k]` of the face).
pub const MIRRORED: [usize; 5] = [1, 0, 2, 4, 3];

/// A loaded landmark refiner.
pub struct Refiner {
    network: Network,
    card: ModelCard,
    expand: f32,
    mirror: bool,
}

impl Refiner {
    /// Loads a model and its card (a `[refiner]` section).
    pub fn load(model: &Path, card: &Path) -> Result<Self> {
        let card = ModelCard::load(card)?;
        let Some(r) = card.refiner.clone() else {
            bail!("{} is not a landmark refiner's card", model.display());
        };
        let network = Network::load(model, &card, 1, &[r.output.as_str()])
            .with_context(|| format!("landmark refiner {}", model.display()))?;
        Ok(Self {
            network,
            card,
            expand: r.expand,
            mirror: r.mirror,
        })
    }

    /// The crop a face's landmarks are read from.
    pub fn region(&self, face: &Face) -> Region {
        Region::around(face.bbox, self.expand)
    }

    /// The five landmarks of the face in `face`'s box.
    pub fn landmarks(&self, image: &RgbImage, face: &Face) -> Result<Landmarks> {
        let region = self.region(face);
        let crop = region.crop(image, self.card.width)?;
        let mut shares = self.shares(&crop)?;
        if self.mirror {
            let mirrored = self.shares(&image::imageops::flip_horizontal(&crop))?;
            for (k, s) in shares.iter_mut().enumerate() {
                let [u, v] = mirrored[MIRRORED[k]];
                *s = [(s[0] + 1.0 - u) / 2.0, (s[1] + v) / 2.0];
            }
        }
        Ok(shares.map(|s| region.from_shares(s)))
    }

    /// The network's five points on a crop, as shares of its side.
    fn shares(&self, crop: &RgbImage) -> Result<[[f32; 2]; 5]> {
        let out = self.network.run(&[self.card.input_tensor(crop)])?.remove(0);
        if out.len() != 10 || out.iter().any(|v| !v.is_finite()) {
            bail!("the refiner gave {} values (or non-finite ones), not 10", out.len());
        }
        Ok(std::array::from_fn(|k| [out[2 * k], out[2 * k + 1]]))
    }

    /// Replaces the landmarks of every face with the refined ones.
    pub fn refine(&self, image: &RgbImage, faces: &mut [Face]) -> Result<()> {
        for face in faces {
            face.landmarks = self.landmarks(image, face)?;
        }
        Ok(())
    }
}

/// Whether a configured refiner path means "align from the detector's own
/// points": `none` or an empty path.
pub fn no_refiner(path: &Path) -> bool {
    path.as_os_str().is_empty() || path == Path::new("none")
}

/// Finds faces: the detector, then the refiner's landmarks when there is one.
pub struct Locator {
    /// The face detector.
    pub detector: Detector,
    /// The landmark refiner, if configured.
    pub refiner: Option<Refiner>,
}

impl Locator {
    /// Loads the detector and, unless `refiner` says none ([`no_refiner`]),
    /// the refiner (each `.onnx` with its card beside it).
    pub fn load(detector: &Path, refiner: &Path) -> Result<Self> {
        check_model(detector, "face detector", "detector")?;
        if !no_refiner(refiner) {
            check_model(refiner, "landmark refiner", "refiner")?;
        }
        Ok(Self {
            detector: Detector::load(detector, &ModelCard::path_for(detector))?,
            refiner: if no_refiner(refiner) {
                None
            } else {
                Some(Refiner::load(refiner, &ModelCard::path_for(refiner))?)
            },
        })
    }

    /// The faces in a frame, with refined landmarks when a refiner is loaded.
    pub fn detect(&self, image: &RgbImage, params: &DetectParams) -> Result<Vec<Face>> {
        let mut faces = self.detector.detect(image, params)?;
        if let Some(refiner) = &self.refiner {
            refiner.refine(image, &mut faces)?;
        }
        Ok(faces)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("models").join(name)
    }

    #[test]
    fn the_shipped_refiner_places_the_points_on_the_sample_face() {
        let locator = Locator::load(&shipped("detector.onnx"), &shipped("refiner.onnx")).unwrap();
        let image = image::open(Path::new(env!("CARGO_MANIFEST_DIR")).join("samples/astronaut.png"))
            .unwrap()
            .to_rgb8();
        let params = DetectParams::default();
        let plain = locator.detector.detect(&image, &params).unwrap();
        let refined = locator.detect(&image, &params).unwrap();
        assert_eq!(plain.len(), refined.len());
        let (p, r) = (plain[0], refined[0]);
        assert_eq!(p.bbox, r.bbox, "the refiner moves only the landmarks");
        assert_ne!(p.landmarks, r.landmarks);
        let [x1, y1, x2, y2] = r.bbox;
        let ocular = (p.landmarks[1][0] - p.landmarks[0][0]).hypot(p.landmarks[1][1] - p.landmarks[0][1]);
        for (k, ([x, y], q)) in r.landmarks.iter().zip(p.landmarks).enumerate() {
            assert!(
                (x1..=x2).contains(x) && (y1..=y2).contains(y),
                "point {k} outside the box"
            );
            // Both place each point on the same part of the face.
            let moved = (x - q[0]).hypot(y - q[1]);
            assert!(
                moved < 0.3 * ocular,
                "point {k} moved {moved} px (eyes {ocular} px apart)"
            );
        }
        let [le, re, nose, lm, rm] = r.landmarks;
        assert!(le[0] < re[0] && lm[0] < rm[0], "left points left of right ones");
        assert!(
            le[1].max(re[1]) < nose[1] && nose[1] < lm[1].min(rm[1]),
            "eyes, nose, mouth from top down"
        );
        let detector_only = Locator::load(&shipped("detector.onnx"), Path::new("none")).unwrap();
        assert!(detector_only.refiner.is_none());
        assert_eq!(detector_only.detect(&image, &params).unwrap()[0].landmarks, p.landmarks);
        let err = Refiner::load(&shipped("detector.onnx"), &shipped("detector.toml"))
            .err()
            .unwrap();
        assert!(format!("{err:#}").contains("not a landmark refiner"), "{err:#}");
    }

    #[test]
    fn the_mirrored_reading_makes_the_points_of_a_mirrored_frame_mirrored() {
        let refiner = Refiner::load(&shipped("refiner.onnx"), &shipped("refiner.toml")).unwrap();
        assert!(refiner.mirror, "the shipped card asks for the mirrored reading");
        let image = image::open(Path::new(env!("CARGO_MANIFEST_DIR")).join("samples/astronaut.png"))
            .unwrap()
            .to_rgb8();
        let width = image.width() as f32;
        let face = Face {
            bbox: [180.0, 40.0, 320.0, 220.0],
            score: 1.0,
            landmarks: [[0.0; 2]; 5],
        };
        let flip = |[x, y]: [f32; 2]| [width - x, y];
        let mirrored_face = Face {
            bbox: [width - 320.0, 40.0, width - 180.0, 220.0],
            ..face
        };
        let points = refiner.landmarks(&image, &face).unwrap();
        let mirrored = refiner
            .landmarks(&image::imageops::flip_horizontal(&image), &mirrored_face)
            .unwrap();
        for (k, &m) in MIRRORED.iter().enumerate() {
            let [x, y] = flip(mirrored[m]);
            let off = (x - points[k][0]).hypot(y - points[k][1]);
            assert!(off < 0.05, "point {k}: {:?} against {:?}", points[k], [x, y]);
        }
    }

    #[test]
    fn a_missing_model_says_what_to_set() {
        let missing = Path::new("no/such.onnx");
        let err = Locator::load(missing, Path::new("none")).err().unwrap().to_string();
        assert!(err.contains("set [models] detector"), "{err}");
        let err = Locator::load(&shipped("detector.onnx"), missing)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("set [models] refiner"), "{err}");
    }

    #[test]
    fn a_region_is_a_square_centred_on_the_box() {
        let r = Region::around([10.0, 20.0, 50.0, 100.0], 1.5);
        assert_eq!(r.side, 120.0);
        assert_eq!((r.x + r.side / 2.0, r.y + r.side / 2.0), (30.0, 60.0));
        let p = [37.5, 81.0];
        let back = r.from_shares(r.to_shares(p));
        assert!((back[0] - p[0]).abs() < 1e-4 && (back[1] - p[1]).abs() < 1e-4);
    }

    #[test]
    fn a_crop_samples_the_region_at_its_pixel_centres() {
        // A horizontal ramp: value = 2 x column.
        let image = RgbImage::from_fn(100, 60, |x, _| image::Rgb([(2 * x) as u8, 0, 0]));
        let region = Region {
            x: 20.0,
            y: 10.0,
            side: 40.0,
        };
        let crop = region.crop(&image, 20).unwrap();
        // Output pixel 0 covers frame columns 20 and 21 (their mean: 41), pixel 19 columns 58 and 59 (117).
        assert_eq!(crop.get_pixel(0, 5)[0], 41);
        assert_eq!(crop.get_pixel(19, 5)[0], 117);
        // Outside the frame is black.
        let off = Region {
            x: -50.0,
            y: 0.0,
            side: 40.0,
        };
        assert_eq!(off.crop(&image, 10).unwrap().get_pixel(0, 0)[0], 0);
        assert!(Region { side: 0.0, ..region }.crop(&image, 8).is_err());
    }
}
