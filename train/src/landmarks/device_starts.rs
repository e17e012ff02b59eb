//! Where the device's chain places each training face's points before the
//! reading being trained: the detector and the reading before it run on
//! every training image, and each teacher face gets the points of the
//! detection matched to it. A second reading trained only on the teacher's
//! points moved at random never sees the first reading's systematic errors
//! (on turned faces it places frontal points, far beyond the random
//! moves), so it cannot learn to undo them: the classic cascade trains
//! each stage on the stage before it. Found once per run and kept in the
//! run folder, so a resumed run cuts the same crops.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use image::RgbImage;
use normgate::card::ModelCard;
use normgate::detector::{DetectParams, Detector, Face};
use normgate::landmarks::{Locator, Refiner};
use normgate_core::align::Landmarks;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::detector::matching::match_faces;

/// The chain before the reading being trained, and how often its points start a crop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceStarts {
    /// The face detector (card beside it).
    pub detector: PathBuf,
    /// The reading before this one (card beside it; its `next` is not followed).
    pub reading: PathBuf,
    /// Share of the crops cut around these points (the others around the
    /// teacher's points moved at random, as without them).
    pub share: f32,
}

/// Each training scene's faces with the chain's points for each, when it found the face.
pub type Starts = Vec<Vec<Option<Landmarks>>>;

/// File in the run folder that keeps the starts found.
const FILE: &str = "device_starts.json";

impl DeviceStarts {
    /// Refuses a share without a meaning and model files that are not there.
    pub fn check(&self) -> Result<()> {
        if !(self.share > 0.0 && self.share <= 1.0) {
            bail!("--device-start-share {} must be a share in (0, 1]", self.share);
        }
        for (path, what) in [(&self.detector, "--start-detector"), (&self.reading, "--start-reading")] {
            if !path.is_file() || !ModelCard::path_for(path).is_file() {
                bail!("{what} {}: no such model file with its card beside it", path.display());
            }
        }
        Ok(())
    }

    /// The starts of `scenes`' faces: read from `run` when a run found them
    /// before, else found with the chain and written there.
    pub fn load_or_find(&self, scenes: &[(RgbImage, Vec<Face>)], run: &Path) -> Result<Starts> {
        let path = run.join(FILE);
        if path.is_file() {
            let text = std::fs::read_to_string(&path)?;
            let starts: Starts =
                serde_json::from_str(&text).with_context(|| format!("{} is unreadable", path.display()))?;
            if starts.len() != scenes.len() || starts.iter().zip(scenes).any(|(s, (_, f))| s.len() != f.len()) {
                bail!(
                    "{} was found on other training images: start a new run folder",
                    path.display()
                );
            }
            return Ok(starts);
        }
        let started = std::time::Instant::now();
        let starts = self.find(scenes)?;
        std::fs::create_dir_all(run)?;
        std::fs::write(&path, serde_json::to_string(&starts)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        let found: usize = starts.iter().flatten().filter(|s| s.is_some()).count();
        let faces: usize = starts.iter().map(Vec::len).sum();
        log::info!(
            "the device's chain found {found} of {faces} teacher faces in {:.0} s",
            started.elapsed().as_secs_f64()
        );
        Ok(starts)
    }

    /// Runs the detector and the reading on every scene; each teacher face
    /// gets the points of the detection matched to it (IoU >= 0.5, best pairs first).
    fn find(&self, scenes: &[(RgbImage, Vec<Face>)]) -> Result<Starts> {
        let locator = Locator {
            detector: Detector::load(&self.detector, &ModelCard::path_for(&self.detector))?,
            refiner: Some(Refiner::load_alone(&self.reading, &ModelCard::path_for(&self.reading))?),
        };
        let params = DetectParams::default();
        scenes
            .par_iter()
            .map(|(image, faces)| {
                let detected = locator.detect(image, &params)?;
                Ok(match_faces(faces, &detected)
                    .into_iter()
                    .map(|o| o.detected.map(|d| d.landmarks))
                    .collect())
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../models").join(name)
    }

    fn chain(share: f32) -> DeviceStarts {
        DeviceStarts {
            detector: shipped("detector.onnx"),
            reading: shipped("refiner.onnx"),
            share,
        }
    }

    #[test]
    fn each_face_the_chain_finds_gets_its_points_and_a_run_keeps_them() {
        let image = image::open(shipped("../samples/astronaut.png")).unwrap().to_rgb8();
        let found = Locator::load(&shipped("detector.onnx"), Path::new("none"))
            .unwrap()
            .detect(&image, &DetectParams::default())
            .unwrap();
        assert_eq!(found.len(), 1, "the sample holds one face");
        // A teacher face where the face is, and one where nothing is.
        let nowhere = Face {
            bbox: [0.0, 0.0, 8.0, 8.0],
            ..found[0]
        };
        let scenes = vec![(image.clone(), vec![found[0], nowhere])];
        let run = std::env::temp_dir().join(format!("normgate-starts-{}", std::process::id()));
        let starts = chain(0.5).load_or_find(&scenes, &run).unwrap();
        let points = starts[0][0].expect("the face is found");
        assert!(starts[0][1].is_none(), "nothing is found in the empty corner");
        // The first reading's points, not the detector's, and on the face.
        assert_ne!(points, found[0].landmarks);
        let [x1, y1, x2, y2] = found[0].bbox;
        assert!(points
            .iter()
            .all(|&[x, y]| (x1..x2).contains(&x) && (y1..y2).contains(&y)));
        // The run folder keeps them; other scenes are refused.
        assert_eq!(starts, chain(0.5).load_or_find(&scenes, &run).unwrap());
        let other = vec![(image, vec![found[0]])];
        let err = chain(0.5).load_or_find(&other, &run).unwrap_err().to_string();
        assert!(err.contains("other training images"), "{err}");
        std::fs::remove_dir_all(&run).unwrap();
    }

    #[test]
    fn a_share_outside_the_unit_range_or_a_missing_model_is_refused() {
        for share in [0.0, 1.5, f32::NAN] {
            let err = chain(share).check().unwrap_err().to_string();
            assert!(err.contains("--device-start-share"), "{err}");
        }
        chain(1.0).check().unwrap();
        let missing = DeviceStarts {
            reading: shipped("no-such.onnx"),
            ..chain(0.5)
        };
        assert!(missing.check().unwrap_err().to_string().contains("--start-reading"));
    }
}
