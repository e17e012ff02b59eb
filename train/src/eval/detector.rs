//! `normgate-train eval detector`: a detector model file measured against
//! the teacher's pseudo-labels (score >= 0.8) on the validation split, on
//! non-face images, and end to end: LFW verification and EDC of a backbone
//! when crops are aligned from this detector's landmarks instead of the
//! teacher's; optionally against the teacher's points averaged over four
//! placements of each image, to tell its jitter from the detector's error.

use std::path::Path;

use anyhow::{Context, Result};
use image::RgbImage;
use normgate::detector::{DetectParams, Face};
use normgate::landmarks::Locator;
use normgate_core::align::{align_rgb8, Landmarks, ARCFACE_112X112};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rayon::prelude::*;
use serde::Serialize;

use crate::data::composite::face_free_region;
use crate::data::datasets::images_under;
use crate::data::datasets::read_rgb;
use crate::data::prepare::{fallback_landmarks, main_face, Cache, CROP};
use crate::detector::matching::{match_faces, Outcome};
use crate::eval::embedder::{lfw_edc, lfw_scores_on, percentile, LfwScores, Model};
use crate::eval::verify::lfw_report;
use crate::landmarks::recipe::is_non_frontal;

/// Teacher score from which a pseudo-label counts as a face to find.
pub const REFERENCE_SCORE: f32 = 0.8;
/// Short side (pixels) from which recall is held to the target.
pub const RECALL_MIN_SIDE: f32 = 32.0;
/// Face-free regions of validation images added to the non-face set.
pub const FACE_FREE_REGIONS: usize = 200;
/// Pixels each validation image is moved for the teacher's further readings
/// of an averaged reference (besides its reading of the image as it is):
/// with its finest stride of 8, these put a face at four places on its grid.
pub const AVERAGED_SHIFTS: [u32; 3] = [2, 4, 6];

/// Recall among reference faces of one size range.
#[derive(Debug, Clone, Serialize)]
pub struct SizeBucket {
    /// Short side range, pixels, e.g. `32-64` or `>=128`.
    pub short_side: String,
    /// Reference faces in the range.
    pub faces: usize,
    /// Those found.
    pub found: usize,
    /// `found / faces` (0 without faces).
    pub recall: f64,
    /// Mean landmark error of the found faces (0 without any).
    pub nme: f64,
    /// Their median: far below the mean when a few faces are far off.
    pub nme_median: f64,
}

/// Landmark error among the reference faces (>= 32 px) of one pose: the
/// inter-ocular distance that normalises the error shrinks as a face turns
/// away, so a few turned faces weigh on the mean far beyond their number.
#[derive(Debug, Clone, Serialize)]
pub struct PoseGroup {
    /// `frontal`, or `non-frontal`: the teacher's eyes closer than
    /// [`crate::landmarks::train::NON_FRONTAL_EYES`] of its box's width.
    pub pose: String,
    /// Reference faces of this pose.
    pub faces: usize,
    /// Those found.
    pub found: usize,
    /// Mean landmark error of the found faces (0 without any).
    pub nme: f64,
    /// Their median.
    pub nme_median: f64,
}

/// LFW through one set of landmarks.
#[derive(Debug, Clone, Serialize)]
pub struct Verification {
    /// 10-fold accuracy.
    pub accuracy: f64,
    /// Its standard deviation.
    pub std: f64,
    /// FNMR at FMR 1e-2 before discarding.
    pub fnmr: f64,
    /// FNMR after discarding 20 % of pairs by norm.
    pub fnmr_norm_20: f64,
    /// 10th, 50th and 90th percentile of the crops' feature norms.
    pub norm_percentiles: [f64; 3],
}

/// The end-to-end effect of the detector's landmarks on a backbone.
#[derive(Debug, Clone, Serialize)]
pub struct EndToEnd {
    /// The backbone.
    pub backbone: String,
    /// Crops aligned from the teacher's landmarks (the prepared cache).
    pub teacher_landmarks: Verification,
    /// Crops aligned from this detector's landmarks.
    pub detector_landmarks: Verification,
    /// Accuracy with this detector minus with the teacher, points.
    pub accuracy_difference: f64,
    /// LFW images in which this detector found no face (aligned by the template fallback, as prepare does).
    pub no_face: usize,
    /// The gate threshold for the backbone's card: the 10th percentile of
    /// the norms of the crops this detector aligned (as the device aligns
    /// them), so the gate keeps nine in ten faces of LFW's quality.
    pub recommended_threshold: f64,
}

/// The report.
#[derive(Debug, Clone, Serialize)]
pub struct DetectorReport {
    /// Recall at IoU >= 0.5 of reference faces with a short side >= 32 px.
    pub recall: f64,
    /// Mean landmark error over found faces (>= 32 px), normalised by the reference's inter-ocular distance.
    pub nme: f64,
    /// The median of those errors (a few lost faces weigh on the mean).
    pub nme_median: f64,
    /// Their 90th percentile: how long the tail that weighs on the mean is.
    pub nme_p90: f64,
    /// Mean normalised error per landmark: left eye, right eye, nose, mouth corners.
    pub nme_per_landmark: [f64; 5],
    /// Mean signed offset (x, y) per landmark over the inter-ocular distance:
    /// a systematic shift (decoding, letterboxing) shows here, noise does not.
    pub landmark_bias: [[f64; 2]; 5],
    /// Detections per non-face image.
    pub fp_per_image: f64,
    /// Recall per short-side range.
    pub buckets: Vec<SizeBucket>,
    /// Landmark error of frontal and of non-frontal faces (>= 32 px).
    pub poses: Vec<PoseGroup>,
    /// Validation images.
    pub validation_images: usize,
    /// Reference faces (all sizes).
    pub reference_faces: usize,
    /// Non-face images: the shared non-face patches and face-free regions of validation images.
    pub non_face_images: usize,
    /// Detections on them.
    pub false_positives: usize,
    /// Pixels each validation image was moved right and down before detection (0: none).
    pub shift: u32,
    /// The device's detection thresholds used.
    pub score_threshold: f32,
    /// NMS IoU.
    pub nms_iou: f32,
    /// Mean detection time per validation image, ms (this machine, one thread per image).
    pub ms_per_image: f64,
    /// LFW with this detector's landmarks against the teacher's, when a backbone was given.
    pub end_to_end: Option<EndToEnd>,
    /// The same landmarks against the teacher's points averaged over four
    /// placements of each image, when a teacher was given for it.
    pub averaged_reference: Option<AveragedReference>,
}

/// Landmark error against a steadier reference: the teacher's points of
/// each face averaged over its readings of the image moved 0, 2, 4 and 6 px.
/// The teacher's points move with the face's place on its anchor grid; what
/// remains against their average is the detector's own error.
#[derive(Debug, Clone, Serialize)]
pub struct AveragedReference {
    /// Mean NME over found faces (>= 32 px), over the averaged points' inter-ocular distance.
    pub nme: f64,
    /// Its median.
    pub nme_median: f64,
    /// Mean number of the teacher's readings averaged per face (at most 4).
    pub readings: f64,
}

/// One reference face of the validation split and what the detector made
/// of it: `eval detector --faces` lists them to find where the landmark
/// error's tail comes from.
#[derive(Debug, Clone, Serialize)]
pub struct FaceOutcome {
    /// Image path relative to the data folder.
    pub image: String,
    /// The reference's shorter box side, pixels.
    pub short_side: f32,
    /// The teacher's box.
    pub reference_box: [f32; 4],
    /// The teacher's five points.
    pub reference_landmarks: Landmarks,
    /// The matched detection's box (absent: missed).
    pub detected_box: Option<[f32; 4]>,
    /// The matched detection's five points, as the device reads them.
    pub detected_landmarks: Option<Landmarks>,
    /// Its mean landmark error over the reference's inter-ocular distance.
    pub nme: Option<f64>,
}

/// Ranges of the size buckets, pixels.
const BUCKETS: [(f32, f32, &str); 4] = [
    (16.0, 32.0, "16-32"),
    (32.0, 64.0, "32-64"),
    (64.0, 128.0, "64-128"),
    (128.0, f32::INFINITY, ">=128"),
];

/// The non-face images: the shared non-face patches and face-free regions of validation images.
fn non_face_images(data: &Path, validation: &[(RgbImage, Vec<Face>)]) -> Result<Vec<RgbImage>> {
    let files = images_under(&data.join("faces_nonfaces/nonface"))?;
    let mut images = files.iter().map(|f| read_rgb(f)).collect::<Result<Vec<_>>>()?;
    let mut rng = StdRng::seed_from_u64(11);
    images.extend((0..FACE_FREE_REGIONS).filter_map(|_| face_free_region(validation, 160, &mut rng)));
    Ok(images)
}

/// The reference faces' points averaged with `teacher`'s readings of
/// `image` moved by each of [`AVERAGED_SHIFTS`].
fn averaged_reference(
    teacher: &Locator,
    image: &RgbImage,
    reference: &[Face],
    params: &DetectParams,
) -> Result<Vec<(Face, usize)>> {
    let readings = AVERAGED_SHIFTS
        .iter()
        .map(|&shift| Ok(match_faces(reference, &detect_shifted(teacher, image, params, shift)?)))
        .collect::<Result<Vec<_>>>()?;
    Ok(average_readings(reference, &readings))
}

/// Each reference face with its points averaged with those of the further
/// `readings` that found it (each reading: one outcome per reference face),
/// and how many readings that makes, itself included.
fn average_readings(reference: &[Face], readings: &[Vec<Outcome>]) -> Vec<(Face, usize)> {
    reference
        .iter()
        .enumerate()
        .map(|(i, face)| {
            let found: Vec<&Face> = readings.iter().filter_map(|r| r[i].detected.as_ref()).collect();
            let count = found.len() + 1;
            let mut averaged = *face;
            averaged.landmarks = std::array::from_fn(|k| {
                std::array::from_fn(|c| {
                    (face.landmarks[k][c] + found.iter().map(|f| f.landmarks[k][c]).sum::<f32>()) / count as f32
                })
            });
            (averaged, count)
        })
        .collect()
}

/// Measures `detector` on the validation split under `data` (pseudo-labels
/// in `cache_dir`), also against `teacher`'s averaged points when given;
/// also every reference face's outcome, the worst found first, then the
/// missed.
pub fn evaluate(
    detector: &Locator,
    data: &Path,
    cache_dir: &Path,
    params: &DetectParams,
    backbone: Option<&Model>,
    shift: u32,
    teacher: Option<&Locator>,
) -> Result<(DetectorReport, Vec<FaceOutcome>)> {
    let labels: Vec<_> = crate::data::pseudo::load(cache_dir)?
        .into_iter()
        .filter(|l| l.validation)
        .collect();
    let validation: Vec<(RgbImage, Vec<Face>)> = labels
        .par_iter()
        .map(|l| {
            Ok((
                read_rgb(&data.join(&l.path))?,
                l.faces.iter().map(|f| f.face()).collect(),
            ))
        })
        .collect::<Result<_>>()?;
    let start = std::time::Instant::now();
    let per_image: Vec<Vec<Outcome>> = validation
        .par_iter()
        .map(|(image, faces)| {
            let reference: Vec<Face> = faces.iter().filter(|f| f.score >= REFERENCE_SCORE).copied().collect();
            Ok(match_faces(
                &reference,
                &detect_shifted(detector, image, params, shift)?,
            ))
        })
        .collect::<Result<_>>()?;
    let outcomes: Vec<&Outcome> = per_image.iter().flatten().collect();
    let ms_per_image =
        start.elapsed().as_secs_f64() * 1e3 * rayon::current_num_threads() as f64 / validation.len().max(1) as f64;
    let averaged = teacher
        .map(|teacher| against_averaged_reference(teacher, &validation, &per_image, params))
        .transpose()?;
    let buckets = BUCKETS
        .iter()
        .map(|&(lo, hi, name)| {
            let inside: Vec<&Outcome> = outcomes
                .iter()
                .copied()
                .filter(|o| (lo..hi).contains(&o.short_side()))
                .collect();
            let errors = found_errors(&inside);
            SizeBucket {
                short_side: name.into(),
                faces: inside.len(),
                found: errors.len(),
                recall: ratio(errors.len(), inside.len()),
                nme: mean(&errors),
                nme_median: percentile(&errors, 0.5),
            }
        })
        .collect();
    let large: Vec<&Outcome> = outcomes
        .iter()
        .copied()
        .filter(|o| o.short_side() >= RECALL_MIN_SIDE)
        .collect();
    let poses = [("frontal", false), ("non-frontal", true)]
        .into_iter()
        .map(|(name, turned)| {
            let inside: Vec<&Outcome> = large
                .iter()
                .copied()
                .filter(|o| is_non_frontal(&o.reference) == turned)
                .collect();
            let errors = found_errors(&inside);
            PoseGroup {
                pose: name.into(),
                faces: inside.len(),
                found: errors.len(),
                nme: mean(&errors),
                nme_median: percentile(&errors, 0.5),
            }
        })
        .collect();
    let per_landmark: Vec<[f64; 5]> = large.iter().filter_map(|o| o.errors()).collect();
    let offsets: Vec<[[f64; 2]; 5]> = large.iter().filter_map(|o| o.offsets()).collect();
    let errors = found_errors(&large);
    let count = per_landmark.len().max(1) as f64;
    let non_faces = non_face_images(data, &validation)?;
    let false_positives: usize = non_faces
        .par_iter()
        .map(|image| Ok(detector.detect(image, params)?.len()))
        .collect::<Result<Vec<_>>>()?
        .iter()
        .sum();
    let end_to_end = backbone
        .map(|model| end_to_end(detector, model, data, cache_dir, params))
        .transpose()?;
    let mut faces: Vec<FaceOutcome> = labels
        .iter()
        .zip(&per_image)
        .flat_map(|(label, outcomes)| {
            outcomes.iter().map(|o| FaceOutcome {
                image: label.path.clone(),
                short_side: o.short_side(),
                reference_box: o.reference.bbox,
                reference_landmarks: o.reference.landmarks,
                detected_box: o.detected.map(|d| d.bbox),
                detected_landmarks: o.detected.map(|d| d.landmarks),
                nme: o.nme(),
            })
        })
        .collect();
    sort_worst_first(&mut faces);
    let report = DetectorReport {
        recall: ratio(errors.len(), large.len()),
        nme: mean(&errors),
        nme_median: percentile(&errors, 0.5),
        nme_p90: percentile(&errors, 0.9),
        nme_per_landmark: std::array::from_fn(|k| per_landmark.iter().map(|e| e[k]).sum::<f64>() / count),
        landmark_bias: std::array::from_fn(|k| {
            std::array::from_fn(|c| offsets.iter().map(|o| o[k][c]).sum::<f64>() / count)
        }),
        fp_per_image: ratio(false_positives, non_faces.len()),
        buckets,
        poses,
        validation_images: validation.len(),
        reference_faces: outcomes.len(),
        non_face_images: non_faces.len(),
        false_positives,
        shift,
        score_threshold: params.score_threshold,
        nms_iou: params.nms_iou,
        ms_per_image,
        end_to_end,
        averaged_reference: averaged,
    };
    Ok((report, faces))
}

/// The found faces' (>= 32 px) error against `teacher`'s averaged points;
/// `per_image` holds each validation image's outcomes, matched against the
/// plain reference.
fn against_averaged_reference(
    teacher: &Locator,
    validation: &[(RgbImage, Vec<Face>)],
    per_image: &[Vec<Outcome>],
    params: &DetectParams,
) -> Result<AveragedReference> {
    let per_face: Vec<Vec<(Outcome, usize)>> = validation
        .par_iter()
        .zip(per_image)
        .map(|((image, _), outcomes)| {
            let reference: Vec<Face> = outcomes.iter().map(|o| o.reference).collect();
            Ok(averaged_reference(teacher, image, &reference, params)?
                .into_iter()
                .zip(outcomes)
                .map(|((face, readings), o)| {
                    let outcome = Outcome {
                        reference: face,
                        detected: o.detected,
                    };
                    (outcome, readings)
                })
                .collect())
        })
        .collect::<Result<_>>()?;
    let large: Vec<&(Outcome, usize)> = per_face
        .iter()
        .flatten()
        .filter(|(o, _)| o.short_side() >= RECALL_MIN_SIDE && o.detected.is_some())
        .collect();
    let errors: Vec<f64> = large.iter().filter_map(|(o, _)| o.nme()).collect();
    Ok(AveragedReference {
        nme: mean(&errors),
        nme_median: percentile(&errors, 0.5),
        readings: large.iter().map(|(_, n)| *n as f64).sum::<f64>() / large.len().max(1) as f64,
    })
}

/// Found faces by falling landmark error, then the missed ones.
fn sort_worst_first(faces: &mut [FaceOutcome]) {
    faces.sort_by(|a, b| match (a.nme, b.nme) {
        (Some(a), Some(b)) => b.total_cmp(&a),
        (a, b) => b.is_some().cmp(&a.is_some()),
    });
}

/// The landmark errors of the found faces among `outcomes`.
fn found_errors(outcomes: &[&Outcome]) -> Vec<f64> {
    outcomes.iter().filter_map(|o| o.nme()).collect()
}

/// Mean of `values` (0 when empty).
fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len().max(1) as f64
}

/// The faces found in `image` moved `shift` pixels right and down on a grey
/// canvas, mapped back: how far the landmarks follow the face when it sits
/// elsewhere on the anchor grid (0: the image as it is).
fn detect_shifted(detector: &Locator, image: &RgbImage, params: &DetectParams, shift: u32) -> Result<Vec<Face>> {
    if shift == 0 {
        return detector.detect(image, params);
    }
    let mut canvas = RgbImage::from_pixel(image.width() + shift, image.height() + shift, image::Rgb([128; 3]));
    image::imageops::replace(&mut canvas, image, i64::from(shift), i64::from(shift));
    let back = |[x, y]: [f32; 2]| [x - shift as f32, y - shift as f32];
    Ok(detector
        .detect(&canvas, params)?
        .into_iter()
        .map(|f| f.mapped(back))
        .collect())
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

fn verification(lfw: &LfwScores) -> Verification {
    let report = lfw_report(&lfw.pairs);
    let edc = lfw_edc(lfw);
    Verification {
        accuracy: report.accuracy,
        std: report.std,
        fnmr: edc.fnmr,
        fnmr_norm_20: edc
            .points
            .iter()
            .find(|p| p.discard_percent == 20)
            .map_or(f64::NAN, |p| p.fnmr_norm),
        norm_percentiles: lfw.norm_percentiles(),
    }
}

/// The crops the device's chain cuts from the images of `reference` (a
/// prepared cache: same order, labels and paths): the main face as prepare
/// picks it, aligned from `detector`'s landmarks, or by the template where
/// it finds none; and whether it found one, per image.
pub(crate) fn device_crops(
    detector: &Locator,
    params: &DetectParams,
    data: &Path,
    reference: &Cache,
) -> Result<(Cache, Vec<bool>)> {
    let aligned: Vec<(Vec<u8>, bool)> = reference
        .paths
        .par_iter()
        .map(|p| {
            let rel = p.split('\t').next().unwrap_or(p);
            let image = read_rgb(&data.join(rel))?;
            let found = main_face(&detector.detect(&image, params)?, image.width(), image.height());
            let landmarks = found.map_or_else(
                || fallback_landmarks(&ARCFACE_112X112, image.width(), image.height()),
                |f| f.landmarks,
            );
            let mut crop = vec![0u8; CROP * CROP * 3];
            align_rgb8(
                image.as_raw(),
                image.width(),
                image.height(),
                &landmarks,
                &ARCFACE_112X112,
                &mut crop,
            )
            .with_context(|| format!("cannot align {rel}"))?;
            Ok((crop, found.is_some()))
        })
        .collect::<Result<_>>()?;
    let found = aligned.iter().map(|(_, f)| *f).collect();
    let cache = Cache {
        crops: aligned.into_iter().flat_map(|(c, _)| c).collect(),
        labels: reference.labels.clone(),
        teacher: Vec::new(),
        teacher_flip: Vec::new(),
        dim: 0,
        paths: reference.paths.clone(),
    };
    Ok((cache, found))
}

/// LFW with crops aligned from `detector`'s landmarks (the main face, as
/// prepare picks it) against the prepared teacher-aligned crops.
fn end_to_end(
    detector: &Locator,
    model: &Model,
    data: &Path,
    cache_dir: &Path,
    params: &DetectParams,
) -> Result<EndToEnd> {
    let pairs_file = data.join("lfw/pairs.txt");
    let text = std::fs::read_to_string(&pairs_file).with_context(|| format!("cannot read {}", pairs_file.display()))?;
    let teacher = lfw_scores_on(model, &text, Cache::load(cache_dir, "lfw_pairs")?, false)?;
    let (cache, found) = device_crops(detector, params, data, &teacher.cache)?;
    let no_face = found.iter().filter(|f| !**f).count();
    let ours = lfw_scores_on(model, &text, cache, false)?;
    let (teacher_landmarks, detector_landmarks) = (verification(&teacher), verification(&ours));
    Ok(EndToEnd {
        backbone: model.name(),
        accuracy_difference: 100.0 * (detector_landmarks.accuracy - teacher_landmarks.accuracy),
        recommended_threshold: detector_landmarks.norm_percentiles[0],
        teacher_landmarks,
        detector_landmarks,
        no_face,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::synthetic_face;

    #[test]
    fn an_averaged_reference_counts_only_the_readings_that_found_the_face() {
        let a = synthetic_face([0.0, 0.0, 40.0, 40.0]);
        let b = synthetic_face([100.0, 0.0, 120.0, 20.0]);
        let moved = |dx: f32| a.mapped(|[x, y]| [x + dx, y]);
        // Two further readings find a, 2 px right and 4 px left; neither finds b.
        let readings = [
            match_faces(&[a, b], &[moved(2.0)]),
            match_faces(&[a, b], &[moved(-4.0)]),
        ];
        let averaged = average_readings(&[a, b], &readings);
        assert_eq!((averaged[0].1, averaged[1].1), (3, 1));
        // a's points move by (0 + 2 - 4) / 3 px; b keeps its own; the boxes stay.
        for (avg, own) in averaged[0].0.landmarks.iter().zip(a.landmarks) {
            assert!((avg[0] - (own[0] - 2.0 / 3.0)).abs() < 1e-5 && avg[1] == own[1]);
        }
        assert_eq!(averaged[1].0.landmarks, b.landmarks);
        assert_eq!(averaged[0].0.bbox, a.bbox);
    }

    #[test]
    fn the_face_list_puts_the_worst_found_first_and_the_missed_last() {
        let face = |nme: Option<f64>| FaceOutcome {
            image: String::new(),
            short_side: 40.0,
            reference_box: [0.0; 4],
            reference_landmarks: [[0.0; 2]; 5],
            detected_box: None,
            detected_landmarks: None,
            nme,
        };
        let mut faces = vec![face(Some(0.05)), face(None), face(Some(0.30)), face(Some(0.10))];
        sort_worst_first(&mut faces);
        let order: Vec<Option<f64>> = faces.iter().map(|f| f.nme).collect();
        assert_eq!(order, [Some(0.30), Some(0.10), Some(0.05), None]);
    }
}
