//! Landmark refinement: a second small network looks again at each detected
//! face, cut from the frame at full resolution into a square crop around the
//! detector's box, and places the five landmarks. The detector reads them
//! from coarse feature maps (a face the size of LFW's is decoded from its
//! stride-32 level); alignment, and with it the embedder's accuracy, rests
//! on these points. Training cuts its crops with the same functions.

use std::path::Path;

use anyhow::{bail, Context, Result};
use image::RgbImage;
use normgate_core::align::{estimate_similarity, warp_rgb8, Landmarks, Similarity};

use crate::card::{check_model, ModelCard, RefinerCrop};
use crate::detector::{DetectParams, Detector, Face};
use crate::runtime::Network;

/// Where a pose-normalised crop ([`Region::on_landmarks`]) puts the five
/// points, as shares of its side: the eyes 0.35 apart, mouth corners and
/// nose in SphereFace's template proportions, mirror-symmetric so that a
/// mirrored crop is again such a crop, with a margin for points that stray.
pub const ALIGNED_SHARES: Landmarks = [
    [0.325, 0.36],
    [0.675, 0.36],
    [0.5, 0.56],
    [0.355, 0.765],
    [0.645, 0.765],
];

/// The square part of a frame a refiner sees: the map from shares of the
/// crop's side (`[0, 1]` on each axis) to frame pixels. A box region is
/// axis-aligned; a landmark region is turned and scaled to the face's pose.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Region {
    to_frame: Similarity,
}

impl Region {
    /// The square centred on a box, `expand` times its longer side.
    pub fn around(bbox: [f32; 4], expand: f32) -> Self {
        let [x1, y1, x2, y2] = bbox;
        let side = (x2 - x1).max(y2 - y1) * expand;
        Self {
            to_frame: Similarity {
                a: side,
                b: 0.0,
                tx: (x1 + x2 - side) / 2.0,
                ty: (y1 + y2 - side) / 2.0,
            },
        }
    }

    /// The square that puts `points` where [`ALIGNED_SHARES`] are (least
    /// squares), so a second reading sees every face upright and at one scale.
    pub fn on_landmarks(points: &Landmarks) -> Result<Self> {
        let to_frame = estimate_similarity(&ALIGNED_SHARES, points).context("no crop on these landmarks")?;
        Ok(Self { to_frame })
    }

    /// The same square turned by `angle` radians about its centre: a crop
    /// of it shows the frame turned the other way (training cuts rolled
    /// faces this way).
    pub fn turned(&self, angle: f32) -> Self {
        // Shares turned about the square's centre, then mapped to the frame.
        let turn = Similarity::about([0.5, 0.5], angle.cos(), angle.sin());
        Self {
            to_frame: self.to_frame.after(&turn),
        }
    }

    /// The same square scaled by `factor` about its centre: below 1 a
    /// crop of it shows the face larger (more pixels between the eyes at
    /// one input size), above 1 with more of its surroundings.
    pub fn scaled(&self, factor: f32) -> Self {
        Self {
            to_frame: self.to_frame.after(&Similarity::about([0.5, 0.5], factor, 0.0)),
        }
    }

    /// The region's side in frame pixels.
    pub fn side(&self) -> f32 {
        self.to_frame.scale()
    }

    /// The region resampled (bilinear) to `size x size`; outside the frame is black.
    pub fn crop(&self, image: &RgbImage, size: u32) -> Result<RgbImage> {
        let side = self.side();
        if !(side > 0.0 && side.is_finite()) || size == 0 {
            bail!("cannot crop a region of side {side} to {size} px");
        }
        // Output pixel centres map onto the region's pixel centres (pixel
        // `o` spans shares `[o, o + 1] / size`; frame pixel `i` spans `[i, i + 1]`).
        let Similarity { a, b, tx, ty } = self.to_frame;
        let n = size as f32;
        let to_image = Similarity {
            a: a / n,
            b: b / n,
            tx: tx + 0.5 * (a - b) / n - 0.5,
            ty: ty + 0.5 * (a + b) / n - 0.5,
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
    pub fn to_shares(&self, p: [f32; 2]) -> [f32; 2] {
        // A region of zero side has no shares (its crop is refused too).
        self.to_frame.inverse().map_or([f32::NAN; 2], |t| t.apply(p))
    }

    /// Shares of the region's side back to a frame point.
    pub fn from_shares(&self, s: [f32; 2]) -> [f32; 2] {
        self.to_frame.apply(s)
    }
}

/// Landmark order under a horizontal flip: the eyes and the mouth corners
/// swap (point `k` of a mirrored face is point `MIRRORED[k]` of the face).
pub const MIRRORED: [usize; 5] = [1, 0, 2, 4, 3];

/// Where a loaded refiner cuts its crop: the card's `crop` with its `expand`.
#[derive(Debug, Clone, Copy, PartialEq)]
enum CropRule {
    /// Around the detected box, `expand` times its longer side.
    Box { expand: f32 },
    /// Around the points found so far ([`Region::on_landmarks`]), the
    /// square scaled by `side` ([`Region::scaled`]).
    Landmarks { side: f32 },
}

/// A loaded landmark refiner, with the refiner that reads its points again, if any.
pub struct Refiner {
    network: Network,
    card: ModelCard,
    crop: CropRule,
    mirror: bool,
    next: Option<Box<Refiner>>,
}

impl Refiner {
    /// Loads a model and its card (a `[refiner]` section), and the chain of
    /// refiners its card names as `next` (each must cut landmark crops).
    pub fn load(model: &Path, card: &Path) -> Result<Self> {
        Self::load_chain(model, card, 1)
    }

    /// The longest chain of readings a card may name (a loop of `next` stops here).
    const MAX_READINGS: usize = 4;

    fn load_chain(model: &Path, card: &Path, position: usize) -> Result<Self> {
        let mut refiner = Self::load_alone(model, card)?;
        let Some(next) = refiner.card.refiner.as_ref().and_then(|r| r.next.clone()) else {
            return Ok(refiner);
        };
        if position == Self::MAX_READINGS {
            bail!(
                "{}: more than {} refiners in a chain (does a card's next lead back?)",
                card.display(),
                Self::MAX_READINGS
            );
        }
        let next = crate::embedded::sibling(card, &next);
        check_model(&next, "next landmark refiner", "refiner")
            .with_context(|| format!("the next refiner of {}", card.display()))?;
        let second = Self::load_chain(&next, &ModelCard::path_for(&next), position + 1)?;
        if !matches!(second.crop, CropRule::Landmarks { .. }) {
            bail!(
                "{}: a next refiner must cut landmark crops (crop = \"landmarks\")",
                next.display()
            );
        }
        refiner.next = Some(Box::new(second));
        Ok(refiner)
    }

    /// Loads a model and its card without the refiners its card names as
    /// `next`: one reading alone, e.g. a chain's first reading, whose points
    /// the reading after it is trained to correct.
    pub fn load_alone(model: &Path, card: &Path) -> Result<Self> {
        let card = ModelCard::load(card)?;
        let Some(r) = card.refiner.clone() else {
            bail!("{} is not a landmark refiner's card", model.display());
        };
        let network = Network::load(model, &card, 1, &[r.output.as_str()])
            .with_context(|| format!("landmark refiner {}", model.display()))?;
        Ok(Self {
            network,
            card,
            crop: match (r.crop, r.expand) {
                (RefinerCrop::Box, Some(expand)) => CropRule::Box { expand },
                (RefinerCrop::Box, None) => bail!("{}: a box refiner's card needs expand", model.display()),
                (RefinerCrop::Landmarks, side) => CropRule::Landmarks {
                    side: side.unwrap_or(1.0),
                },
            },
            mirror: r.mirror,
            next: None,
        })
    }

    /// The crop a face's landmarks are read from (for landmark crops, around the face's current points).
    pub fn region(&self, face: &Face) -> Result<Region> {
        match self.crop {
            CropRule::Box { expand } => Ok(Region::around(face.bbox, expand)),
            CropRule::Landmarks { side } => Ok(Region::on_landmarks(&face.landmarks)?.scaled(side)),
        }
    }

    /// The five landmarks of the face in `face`'s box (read again by the next refiner, if any).
    pub fn landmarks(&self, image: &RgbImage, face: &Face) -> Result<Landmarks> {
        let region = self.region(face)?;
        let crop = region.crop(image, self.card.width)?;
        let mut shares = self.shares(&crop)?;
        if self.mirror {
            let mirrored = self.shares(&image::imageops::flip_horizontal(&crop))?;
            for (k, s) in shares.iter_mut().enumerate() {
                let [u, v] = mirrored[MIRRORED[k]];
                *s = [(s[0] + 1.0 - u) / 2.0, (s[1] + v) / 2.0];
            }
        }
        let points = shares.map(|s| region.from_shares(s));
        match &self.next {
            Some(next) => next.landmarks(
                image,
                &Face {
                    landmarks: points,
                    ..*face
                },
            ),
            None => Ok(points),
        }
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
        let second = locator.refiner.as_ref().and_then(|r| r.next.as_deref());
        assert!(
            matches!(second.map(|r| r.crop), Some(CropRule::Landmarks { .. })),
            "the shipped card chains the second reading"
        );
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
    fn a_next_refiner_reads_the_points_again_and_must_cut_landmark_crops() {
        // The shipped network stands in for both stages: only the chaining is under test.
        let dir = std::env::temp_dir().join(format!("normgate-refiner-chain-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // The shipped first reading's card without its own next and crop rule (box, the default).
        let card: String = std::fs::read_to_string(shipped("refiner.toml"))
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with("next") && !l.starts_with("crop"))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::copy(shipped("refiner.onnx"), dir.join("first.onnx")).unwrap();
        std::fs::copy(shipped("refiner.onnx"), dir.join("second.onnx")).unwrap();
        std::fs::write(dir.join("first.toml"), format!("{card}next = \"second.onnx\"\n")).unwrap();
        let landmark_card = card.replace("expand = 1.25", "crop = \"landmarks\"");
        std::fs::write(dir.join("second.toml"), &landmark_card).unwrap();
        let image = image::open(Path::new(env!("CARGO_MANIFEST_DIR")).join("samples/astronaut.png"))
            .unwrap()
            .to_rgb8();
        let face = Face {
            bbox: [180.0, 40.0, 320.0, 220.0],
            score: 1.0,
            landmarks: [[0.0; 2]; 5],
        };
        std::fs::write(dir.join("alone.toml"), &card).unwrap();
        let first_alone = Refiner::load(&dir.join("first.onnx"), &dir.join("alone.toml")).unwrap();
        let second_alone = Refiner::load(&dir.join("second.onnx"), &dir.join("second.toml")).unwrap();
        let chain = Refiner::load(&dir.join("first.onnx"), &dir.join("first.toml")).unwrap();
        let first = first_alone.landmarks(&image, &face).unwrap();
        let expected = second_alone
            .landmarks(
                &image,
                &Face {
                    landmarks: first,
                    ..face
                },
            )
            .unwrap();
        assert_eq!(chain.landmarks(&image, &face).unwrap(), expected);
        assert_ne!(expected, first);
        // A landmark card's expand scales the aligned square.
        std::fs::write(dir.join("zoomed.toml"), format!("{landmark_card}expand = 0.8\n")).unwrap();
        let zoomed = Refiner::load(&dir.join("second.onnx"), &dir.join("zoomed.toml")).unwrap();
        let at_first = Face {
            landmarks: first,
            ..face
        };
        let aligned = Region::on_landmarks(&first).unwrap();
        assert_eq!(second_alone.region(&at_first).unwrap(), aligned);
        assert_eq!(zoomed.region(&at_first).unwrap(), aligned.scaled(0.8));
        // A loop of next refiners, a box refiner as the next one, and a missing one are refused at load.
        std::fs::write(
            dir.join("second.toml"),
            format!("{landmark_card}next = \"second.onnx\"\n"),
        )
        .unwrap();
        let err = Refiner::load(&dir.join("first.onnx"), &dir.join("first.toml"))
            .err()
            .unwrap();
        assert!(format!("{err:#}").contains("more than 4 refiners"), "{err:#}");
        std::fs::write(dir.join("second.toml"), &card).unwrap();
        let err = Refiner::load(&dir.join("first.onnx"), &dir.join("first.toml"))
            .err()
            .unwrap();
        assert!(format!("{err:#}").contains("must cut landmark crops"), "{err:#}");
        std::fs::remove_file(dir.join("second.onnx")).unwrap();
        let err = Refiner::load(&dir.join("first.onnx"), &dir.join("first.toml"))
            .err()
            .unwrap();
        assert!(format!("{err:#}").contains("not found"), "{err:#}");
        std::fs::remove_dir_all(dir).unwrap();
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
        assert_eq!(r.side(), 120.0);
        assert_eq!(r.from_shares([0.5, 0.5]), [30.0, 60.0]);
        let p = [37.5, 81.0];
        let back = r.from_shares(r.to_shares(p));
        assert!((back[0] - p[0]).abs() < 1e-4 && (back[1] - p[1]).abs() < 1e-4);
    }

    #[test]
    fn a_turned_region_keeps_its_centre_and_side_and_turns_its_edges() {
        let r = Region::around([10.0, 20.0, 50.0, 100.0], 1.5);
        let t = r.turned(90f32.to_radians());
        let close = |p: [f32; 2], q: [f32; 2]| (p[0] - q[0]).abs() < 1e-3 && (p[1] - q[1]).abs() < 1e-3;
        assert!((t.side() - 120.0).abs() < 1e-3);
        assert!(close(t.from_shares([0.5, 0.5]), [30.0, 60.0]));
        // The middle of the crop's right edge lies a half side below the centre in the frame.
        assert!(close(t.from_shares([1.0, 0.5]), [30.0, 120.0]));
        assert!(close(t.to_shares([30.0, 120.0]), [1.0, 0.5]));
        assert!(close(r.turned(0.0).from_shares([0.2, 0.9]), r.from_shares([0.2, 0.9])));
    }

    #[test]
    fn a_scaled_region_keeps_its_centre_and_moves_the_points_apart_in_its_crop() {
        let r = Region::around([10.0, 20.0, 50.0, 100.0], 1.5).turned(0.3);
        let zoomed = r.scaled(0.8);
        assert!((zoomed.side() - 0.8 * r.side()).abs() < 1e-3);
        let centre = r.from_shares([0.5, 0.5]);
        let moved = zoomed.from_shares([0.5, 0.5]);
        assert!((centre[0] - moved[0]).abs() < 1e-3 && (centre[1] - moved[1]).abs() < 1e-3);
        // A frame point a quarter side from the centre is 0.25 / 0.8 of the zoomed crop's side away.
        let [u, v] = zoomed.to_shares(r.from_shares([0.75, 0.5]));
        assert!(
            (u - (0.5 + 0.25 / 0.8)).abs() < 1e-4 && (v - 0.5).abs() < 1e-4,
            "{u} {v}"
        );
    }

    #[test]
    fn a_landmark_region_puts_the_points_where_the_aligned_crop_wants_them() {
        // A face turned by 30 degrees, eyes 40 px apart: its own points land on the shares.
        let (angle, scale) = (30f32.to_radians(), 40.0 / 0.35);
        let turn = Similarity {
            a: scale * angle.cos(),
            b: scale * angle.sin(),
            tx: 200.0,
            ty: 150.0,
        };
        let points = ALIGNED_SHARES.map(|s| turn.apply(s));
        let r = Region::on_landmarks(&points).unwrap();
        assert!((r.side() - scale).abs() < 1e-2);
        for (p, s) in points.iter().zip(ALIGNED_SHARES) {
            let u = r.to_shares(*p);
            assert!(
                (u[0] - s[0]).abs() < 1e-5 && (u[1] - s[1]).abs() < 1e-5,
                "{u:?} against {s:?}"
            );
        }
        // A bright dot at the left eye shows in the crop where the share says.
        let [ex, ey] = points[0];
        let image = RgbImage::from_fn(400, 300, |x, y| {
            let near = (x as f32 - ex).abs() <= 2.0 && (y as f32 - ey).abs() <= 2.0;
            image::Rgb([if near { 255 } else { 0 }; 3])
        });
        let crop = r.crop(&image, 64).unwrap();
        let [u, v] = ALIGNED_SHARES[0].map(|s| (s * 64.0) as u32);
        assert!(crop.get_pixel(u, v)[0] > 100, "{:?}", crop.get_pixel(u, v));
        assert!(Region::on_landmarks(&[[1.0, 1.0]; 5]).is_err());
    }

    #[test]
    fn a_crop_samples_the_region_at_its_pixel_centres() {
        // A horizontal ramp: value = 2 x column.
        let image = RgbImage::from_fn(100, 60, |x, _| image::Rgb([(2 * x) as u8, 0, 0]));
        let region = Region::around([20.0, 10.0, 60.0, 50.0], 1.0);
        let crop = region.crop(&image, 20).unwrap();
        // Output pixel 0 covers frame columns 20 and 21 (their mean: 41), pixel 19 columns 58 and 59 (117).
        assert_eq!(crop.get_pixel(0, 5)[0], 41);
        assert_eq!(crop.get_pixel(19, 5)[0], 117);
        // Outside the frame is black.
        let off = Region::around([-50.0, 0.0, -10.0, 40.0], 1.0);
        assert_eq!(off.crop(&image, 10).unwrap().get_pixel(0, 0)[0], 0);
        assert!(Region::around([20.0, 10.0, 20.0, 10.0], 1.0).crop(&image, 8).is_err());
    }
}
