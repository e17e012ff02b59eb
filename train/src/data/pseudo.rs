//! Pseudo-labels for training the project's own face detector: the teacher
//! detector's faces (box, score, five landmarks) on every LFW and CelebA
//! image, cached as JSON lines so later training runs start at once. Each
//! identity falls in the training or the validation split by a hash of its
//! name, so validation faces belong to people training never saw.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use anyhow::{Context, Result};
use normgate::detector::{DetectParams, Detector};
use serde::{Deserialize, Serialize};

use crate::data::datasets::{celeba, folder_tree};

/// Share of identities held out for validation.
pub const VALIDATION_SHARE: f64 = 0.1;
/// Lowest teacher score kept as a pseudo-label (evaluation uses its own, higher cut).
pub const MIN_SCORE: f32 = 0.5;
/// File name of the cache.
pub const FILE: &str = "detector_labels.jsonl";

/// One face the teacher found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PseudoFace {
    /// Box `[x1, y1, x2, y2]`, image pixels.
    pub bbox: [f32; 4],
    /// Teacher score.
    pub score: f32,
    /// Left eye, right eye, nose, left and right mouth corner.
    pub landmarks: [[f32; 2]; 5],
}

impl PseudoFace {
    /// The face as the device's detector reports one.
    pub fn face(&self) -> normgate::detector::Face {
        normgate::detector::Face {
            bbox: self.bbox,
            score: self.score,
            landmarks: self.landmarks,
        }
    }
}

/// One image's pseudo-labels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabelledImage {
    /// Path relative to the data folder.
    pub path: String,
    /// `lfw` or `celeba`.
    pub set: String,
    /// Identity name (LFW) or number (CelebA).
    pub identity: String,
    /// Whether the image is in the validation split.
    pub validation: bool,
    /// Image width and height.
    pub size: [u32; 2],
    /// Faces, best score first.
    pub faces: Vec<PseudoFace>,
}

/// Whether an identity is held out: FNV-1a of its set and name, per mille.
pub fn is_validation(set: &str, identity: &str) -> bool {
    let hash = format!("{set}/{identity}")
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
    (hash % 1000) < (VALIDATION_SHARE * 1000.0) as u64
}

/// What `run` did.
#[derive(Debug, Serialize)]
pub struct PseudoSummary {
    /// Images labelled.
    pub images: usize,
    /// Images that could not be read.
    pub unreadable: usize,
    /// Faces kept.
    pub faces: usize,
    /// Images in the validation split.
    pub validation_images: usize,
    /// Images without any face.
    pub without_face: usize,
    /// Wall time, seconds.
    pub seconds: f64,
}

/// The images to label: (path, set, identity).
fn sources(data: &Path) -> Result<Vec<(PathBuf, &'static str, String)>> {
    let (lfw, names) = folder_tree(&data.join("lfw"))?;
    let (celeb, ids) = celeba(&data.join("celeba_wild"))?;
    Ok(lfw
        .into_iter()
        .map(|l| (l.path, "lfw", names[l.label as usize].clone()))
        .chain(
            celeb
                .into_iter()
                .map(|l| (l.path, "celeba", ids[l.label as usize].to_string())),
        )
        .collect())
}

/// Labels every LFW and CelebA image under `data` with `detector` on
/// `threads` threads and writes `out/detector_labels.jsonl`; `limit` takes
/// only the first images (a quick check).
pub fn run(
    data: &Path,
    detector: &Detector,
    out: &Path,
    threads: usize,
    limit: Option<usize>,
    progress: &(dyn Fn() + Sync),
) -> Result<PseudoSummary> {
    let start = std::time::Instant::now();
    let mut images = sources(data)?;
    if let Some(n) = limit {
        images.truncate(n);
    }
    let params = DetectParams {
        score_threshold: MIN_SCORE,
        ..DetectParams::default()
    };
    let next = AtomicUsize::new(0);
    let labelled = Mutex::new(Vec::new());
    let unreadable = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((path, set, identity)) = images.get(i) else {
                    break;
                };
                let detected = image::open(path).map_err(anyhow::Error::from).and_then(|img| {
                    let rgb = img.to_rgb8();
                    Ok((rgb.dimensions(), detector.detect(&rgb, &params)?))
                });
                match detected {
                    Ok(((w, h), faces)) => labelled.lock().unwrap().push((
                        i,
                        LabelledImage {
                            path: path.strip_prefix(data).unwrap_or(path).display().to_string(),
                            set: set.to_string(),
                            identity: identity.clone(),
                            validation: is_validation(set, identity),
                            size: [w, h],
                            faces: faces
                                .iter()
                                .map(|f| PseudoFace {
                                    bbox: f.bbox,
                                    score: f.score,
                                    landmarks: f.landmarks,
                                })
                                .collect(),
                        },
                    )),
                    Err(e) => {
                        log::warn!("{}: {e:#}", path.display());
                        unreadable.fetch_add(1, Ordering::Relaxed);
                    }
                }
                progress();
            });
        }
    });
    let mut labelled = labelled.into_inner().unwrap();
    labelled.sort_by_key(|(i, _)| *i);
    std::fs::create_dir_all(out)?;
    let mut text = Vec::new();
    for (_, l) in &labelled {
        serde_json::to_writer(&mut text, l)?;
        text.push(b'\n');
    }
    let path = out.join(FILE);
    std::fs::File::create(&path)
        .and_then(|mut f| f.write_all(&text))
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(PseudoSummary {
        images: labelled.len(),
        unreadable: unreadable.into_inner(),
        faces: labelled.iter().map(|(_, l)| l.faces.len()).sum(),
        validation_images: labelled.iter().filter(|(_, l)| l.validation).count(),
        without_face: labelled.iter().filter(|(_, l)| l.faces.is_empty()).count(),
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Reads a cache that `run` wrote.
pub fn load(dir: &Path) -> Result<Vec<LabelledImage>> {
    let path = dir.join(FILE);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {} (run normgate-train pseudo-label first)", path.display()))?;
    text.lines()
        .enumerate()
        .map(|(n, l)| serde_json::from_str(l).with_context(|| format!("{} line {}", path.display(), n + 1)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_split_is_by_identity_stable_and_about_one_in_ten() {
        assert_eq!(
            is_validation("lfw", "Aaron_Eckhart"),
            is_validation("lfw", "Aaron_Eckhart")
        );
        let held = (0..5000).filter(|i| is_validation("celeba", &i.to_string())).count();
        assert!((400..600).contains(&held), "{held} of 5000");
    }

    #[test]
    fn teacher_labels_of_real_images_round_trip() {
        // Beside the checkout, as for the device's tests, or NORMGATE_SHARED.
        let shared = std::env::var_os("NORMGATE_SHARED")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared"));
        let (model, data) = (
            shared.join("models/retinaface_mnet025_opset13.onnx"),
            shared.join("data"),
        );
        if !model.is_file() || !data.join("lfw").is_dir() {
            eprintln!(
                "skipped: the teacher detector or the LFW data is not in {}",
                shared.display()
            );
            return;
        }
        let card = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("teachers/retinaface_mnet025.toml");
        let detector = Detector::load(&model, &card).unwrap();
        let out = std::env::temp_dir().join(format!("normgate-pseudo-{}", std::process::id()));
        let summary = run(&data, &detector, &out, 2, Some(6), &|| {}).unwrap();
        assert_eq!(summary.images, 6);
        let labels = load(&out).unwrap();
        assert_eq!(labels.len(), 6);
        for l in &labels {
            assert_eq!(l.set, "lfw");
            assert_eq!(l.size, [250, 250]);
            // LFW images are centred on one face.
            let f = &l.faces[0];
            let centre = [(f.bbox[0] + f.bbox[2]) / 2.0, (f.bbox[1] + f.bbox[3]) / 2.0];
            assert!(
                (centre[0] - 125.0).abs() < 40.0 && (centre[1] - 125.0).abs() < 50.0,
                "{l:?}"
            );
        }
        std::fs::remove_dir_all(out).unwrap();
    }
}
