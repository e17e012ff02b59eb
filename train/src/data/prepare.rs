//! `normgate-train prepare`: turns the shared face data into aligned crops
//! with the teacher's features, cached so that training and evaluation start
//! in seconds. Faces are found with the teacher detector and aligned with the
//! device's own code (`normgate::embedder`, the core's `align`) to the 112x112
//! template; the student's 112x96 crop is its columns 8..104.
//!
//! Each cache is `<out>/<name>.safetensors` (`crops` u8 `[N, 112, 112, 3]`,
//! `labels` u32 `[N]`, `teacher` and `teacher_flip` f32 `[N, D]`) beside
//! `<name>.paths.txt` (one source path per crop). Existing caches are kept
//! unless `--force`, so an interrupted run resumes where it stopped.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use image::RgbImage;
use indicatif::{ParallelProgressIterator, ProgressBar, ProgressStyle};
use normgate::detector::{DetectParams, Detector, Face};
use normgate::embedder::Embedder;
use normgate_core::align::Template;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use serde::Serialize;

use crate::data::datasets::{self, Labelled};
use crate::data::degrade::Degradation;
use crate::data::heldout::HeldOut;

/// Marks crops without a class (distillation-only data).
pub const UNLABELLED: u32 = u32::MAX;

/// Where everything is.
pub struct Inputs {
    /// The shared data folder.
    pub data: PathBuf,
    /// At most this many images per data set (quick checks).
    pub limit: Option<usize>,
    /// The teacher detector and its card.
    pub detector: (PathBuf, PathBuf),
    /// The teacher embedder and its card.
    pub embedder: (PathBuf, PathBuf),
}

/// What one cache holds.
#[derive(Debug, Clone, Serialize)]
pub struct CacheSummary {
    /// Cache name.
    pub name: String,
    /// Crops written.
    pub crops: usize,
    /// Images in which the detector found no face (skipped, or aligned by the fallback).
    pub no_face: usize,
    /// Images that could not be read.
    pub unreadable: usize,
    /// Whether an existing cache was kept.
    pub reused: bool,
}

/// One aligned crop and where it came from.
struct Crop {
    image: RgbImage,
    label: u32,
    path: String,
}

/// The teacher's view of a crop: its feature and its mirror image's.
struct Target {
    feature: Vec<f32>,
    flipped: Vec<f32>,
}

/// A progress bar on stderr labelled `what`.
pub fn progress(len: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        ProgressStyle::with_template("{msg:>14} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

/// The face an image is about: the largest whose centre lies in the middle
/// half of the frame, else the largest.
pub(crate) fn main_face(faces: &[Face], width: u32, height: u32) -> Option<Face> {
    let central = |f: &&Face| {
        let (cx, cy) = ((f.bbox[0] + f.bbox[2]) / 2.0, (f.bbox[1] + f.bbox[3]) / 2.0);
        (cx - width as f32 / 2.0).abs() < width as f32 / 4.0 && (cy - height as f32 / 2.0).abs() < height as f32 / 4.0
    };
    let largest = |a: &&Face, b: &&Face| a.area().total_cmp(&b.area());
    faces
        .iter()
        .filter(central)
        .max_by(largest)
        .or_else(|| faces.iter().max_by(largest))
        .copied()
}

/// The template's landmarks scaled to a frame, for images without a detection:
/// LFW's funneled images hold one roughly centred face.
pub(crate) fn fallback_landmarks(t: &Template, width: u32, height: u32) -> [[f32; 2]; 5] {
    let (dx, dy) = (
        (width as f32 - t.width as f32) / 2.0,
        (height as f32 - t.height as f32) / 2.0,
    );
    t.points.map(|[x, y]| [x + dx, y + dy])
}

struct Stages<'a> {
    detector: &'a Detector,
    embedder: &'a Embedder,
    data: &'a Path,
}

impl Stages<'_> {
    /// Detects and aligns the main face of each image; `fallback` aligns
    /// face-less images by the template instead of skipping them.
    fn align(&self, images: &[Labelled], fallback: bool, what: &str) -> (Vec<Crop>, usize, usize) {
        let results: Vec<Result<Option<Crop>, ()>> = images
            .par_iter()
            .progress_with(progress(images.len(), what))
            .map(|item| {
                let failed = |e: &dyn std::fmt::Display| log::warn!("{}: {e}", item.path.display());
                let image = image::open(&item.path).map_err(|e| failed(&e))?.to_rgb8();
                let faces = self
                    .detector
                    .detect(&image, &DetectParams::default())
                    .map_err(|e| failed(&e))?;
                let landmarks = match main_face(&faces, image.width(), image.height()) {
                    Some(face) => face.landmarks,
                    None if fallback => fallback_landmarks(self.embedder.template(), image.width(), image.height()),
                    None => return Ok(None),
                };
                let crop = self.embedder.align(&image, &landmarks).map_err(|e| failed(&e))?;
                let path = item
                    .path
                    .strip_prefix(self.data)
                    .unwrap_or(&item.path)
                    .display()
                    .to_string();
                Ok(Some(Crop {
                    image: crop,
                    label: item.label,
                    path: if faces.is_empty() {
                        format!("{path}\tfallback")
                    } else {
                        path
                    },
                }))
            })
            .collect();
        let unreadable = results.iter().filter(|r| r.is_err()).count();
        let crops: Vec<Crop> = results.into_iter().flatten().flatten().collect();
        let no_face =
            crops.iter().filter(|c| c.path.ends_with("\tfallback")).count() + (images.len() - unreadable - crops.len());
        (crops, no_face, unreadable)
    }

    fn targets(&self, crops: &[Crop], what: &str) -> Result<Vec<Target>> {
        crops
            .par_iter()
            .progress_with(progress(crops.len(), what))
            .map(|c| {
                let flipped = image::imageops::flip_horizontal(&c.image);
                let mut f = self.embedder.embed(&[c.image.clone(), flipped])?;
                let flipped = f.pop().expect("two features");
                Ok(Target {
                    feature: f.pop().expect("two features"),
                    flipped,
                })
            })
            .collect()
    }
}

/// Keeps at most `limit` items, evenly spread so every class stays represented.
fn spread_limit<T>(items: &mut Vec<T>, limit: Option<usize>) {
    if let Some(limit) = limit.filter(|&l| l < items.len()) {
        let step = items.len() as f64 / limit.max(1) as f64;
        let mut i = 0usize;
        items.retain(|_| {
            let keep = ((i as f64 / step).floor() as usize) != (((i + 1) as f64) / step).floor() as usize;
            i += 1;
            keep
        });
    }
}

fn save(out: &Path, name: &str, crops: &[Crop], targets: &[Target]) -> Result<()> {
    let n = crops.len();
    if n == 0 {
        bail!("cache {name} would be empty");
    }
    let (w, h) = crops[0].image.dimensions();
    let dim = targets[0].feature.len();
    let pixels: Vec<u8> = crops.iter().flat_map(|c| c.image.as_raw().iter().copied()).collect();
    let tensors: HashMap<String, Tensor> = HashMap::from([
        (
            "crops".into(),
            Tensor::from_vec(pixels, (n, h as usize, w as usize, 3), &Device::Cpu)?,
        ),
        (
            "labels".into(),
            Tensor::from_vec(crops.iter().map(|c| c.label).collect::<Vec<u32>>(), n, &Device::Cpu)?,
        ),
        (
            "teacher".into(),
            Tensor::from_vec(
                targets.iter().flat_map(|t| t.feature.clone()).collect::<Vec<f32>>(),
                (n, dim),
                &Device::Cpu,
            )?,
        ),
        (
            "teacher_flip".into(),
            Tensor::from_vec(
                targets.iter().flat_map(|t| t.flipped.clone()).collect::<Vec<f32>>(),
                (n, dim),
                &Device::Cpu,
            )?,
        ),
    ]);
    let tmp = out.join(format!("{name}.safetensors.tmp"));
    candle_core::safetensors::save(&tensors, &tmp)?;
    let paths: String = crops.iter().map(|c| format!("{}\n", c.path)).collect();
    std::fs::write(out.join(format!("{name}.paths.txt")), paths)?;
    std::fs::rename(&tmp, out.join(format!("{name}.safetensors")))?;
    Ok(())
}

/// Loads the teacher embedder (one crop per run); it must take the caches'
/// 112x112 crops, since the student's crop is cut from them.
pub(crate) fn load_teacher(model: &Path, card: &Path) -> Result<Embedder> {
    let teacher = Embedder::load(model, card, 1)?;
    let t = teacher.template();
    if (t.width, t.height) != (CROP as u32, CROP as u32) {
        bail!(
            "the teacher embedder {} takes {}x{} crops; it must use the {CROP}x{CROP} template (the student crop is cut from it)",
            model.display(),
            t.width,
            t.height
        );
    }
    Ok(teacher)
}

/// Builds every cache that is missing (all with `force`).
pub fn run(inputs: &Inputs, out: &Path, force: bool, seed: u64) -> Result<Vec<CacheSummary>> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let detector = Detector::load(&inputs.detector.0, &inputs.detector.1)?;
    let embedder = load_teacher(&inputs.embedder.0, &inputs.embedder.1)?;
    let stages = Stages {
        detector: &detector,
        embedder: &embedder,
        data: &inputs.data,
    };
    let data = &inputs.data;
    let held_out = HeldOut::load(data)?;
    let stale = !split_recorded(out, &held_out)?;
    let exists = |name: &str| {
        let rebuilt = force || (stale && SPLIT_DEPENDENT.contains(&name));
        !rebuilt && out.join(format!("{name}.safetensors")).is_file()
    };
    let mut summaries = Vec::new();
    let mut finish = |name: &str, crops: Vec<Crop>, no_face, unreadable| -> Result<()> {
        let targets = stages.targets(&crops, &format!("{name} teacher"))?;
        save(out, name, &crops, &targets)?;
        summaries.push(CacheSummary {
            name: name.into(),
            crops: crops.len(),
            no_face,
            unreadable,
            reused: false,
        });
        Ok(())
    };

    // Glint24 is aligned to the 112x112 template already.
    if !exists("glint24") {
        let (mut images, _) = datasets::folder_tree(&data.join("glint24"))?;
        spread_limit(&mut images, inputs.limit);
        let crops: Vec<Option<Crop>> = images
            .par_iter()
            .progress_with(progress(images.len(), "glint24"))
            .map(|i| {
                let img = image::open(&i.path).ok()?.to_rgb8();
                (img.dimensions() == (112, 112)).then(|| Crop {
                    image: img,
                    label: i.label,
                    path: i.path.strip_prefix(data).unwrap_or(&i.path).display().to_string(),
                })
            })
            .collect();
        let unreadable = crops.iter().filter(|c| c.is_none()).count();
        finish("glint24", crops.into_iter().flatten().collect(), 0, unreadable)?;
    }
    // Aligns the main face of each image into cache `name` unless it is there;
    // `fallback` keeps face-less images (evaluation sets keep every image).
    let mut aligned = |name: &str, mut images: Vec<Labelled>, fallback: bool| -> Result<()> {
        if exists(name) {
            return Ok(());
        }
        spread_limit(&mut images, inputs.limit);
        let (crops, no_face, unreadable) = stages.align(&images, fallback, name);
        finish(name, crops, no_face, unreadable)
    };
    // CelebA: the held-out identities are evaluation data (labelled by
    // identity number); the others train, numbered 0.. in identity order.
    if !exists("celeba") || !exists("celeba_heldout") {
        let (images, ids) = datasets::celeba(&data.join("celeba_wild"))?;
        let (eval, train) = split_celeba(images, &ids, &held_out);
        aligned("celeba", train, false)?;
        aligned("celeba_heldout", eval, true)?;
    }
    // LFW: the images of pairs.txt are evaluation data; images of people
    // pairs.txt does not name may teach (unlabelled use).
    let lfw = data.join("lfw");
    let pairs_text = std::fs::read_to_string(lfw.join("pairs.txt")).context("cannot read lfw/pairs.txt")?;
    let pair_images: BTreeSet<String> = datasets::lfw_pairs(&pairs_text)?
        .into_iter()
        .flat_map(|p| p.images)
        .collect();
    if !exists("lfw_pairs") || !exists("lfw_train") {
        let (images, names) = datasets::folder_tree(&lfw)?;
        let (eval, rest): (Vec<Labelled>, Vec<Labelled>) = images.into_iter().partition(|i| {
            let rel = i.path.strip_prefix(&lfw).unwrap_or(&i.path).display().to_string();
            pair_images.contains(&rel)
        });
        if eval.len() != pair_images.len() {
            bail!("pairs.txt names {} images, {} exist", pair_images.len(), eval.len());
        }
        let train = rest
            .into_iter()
            .filter(|i| !held_out.lfw(&names[i.label as usize]))
            .collect();
        aligned("lfw_pairs", eval, true)?;
        aligned("lfw_train", train, false)?;
    }
    // One random degradation of about half the labelled crops, with the
    // teacher's feature of the degraded crop: how the norm must fall.
    if !exists("degraded") {
        let mut labelled_crops = load_crops(out, "glint24")?;
        labelled_crops.extend(load_crops(out, "celeba")?);
        let mut rng = StdRng::seed_from_u64(seed);
        let mut degraded = Vec::new();
        for c in &labelled_crops {
            if rng.random_bool(0.5) {
                let d = Degradation::random(&mut rng);
                degraded.push(Crop {
                    image: d.apply(&c.image, &mut rng),
                    label: c.label,
                    path: format!("{}\t{d:?}", c.path),
                });
            }
        }
        finish("degraded", degraded, 0, 0)?;
    }
    record_split(out, &held_out)?;
    for name in CACHES {
        if !summaries.iter().any(|s: &CacheSummary| s.name == name) {
            summaries.push(CacheSummary {
                name: name.into(),
                // One line per crop: no need to read the crops themselves.
                crops: std::fs::read_to_string(out.join(format!("{name}.paths.txt")))
                    .with_context(|| format!("cache {name} has no path list; rebuild it with --force"))?
                    .lines()
                    .count(),
                no_face: 0,
                unreadable: 0,
                reused: true,
            });
        }
    }
    Ok(summaries)
}

/// The caches `prepare` writes.
pub const CACHES: [&str; 6] = [
    "glint24",
    "celeba",
    "celeba_heldout",
    "lfw_pairs",
    "lfw_train",
    "degraded",
];
/// The caches whose content depends on the held-out split.
const SPLIT_DEPENDENT: [&str; 4] = ["celeba", "celeba_heldout", "lfw_train", "degraded"];
/// The record of the held-out split the caches were made with.
const SPLIT_FILE: &str = "split.json";

/// CelebA's images split into the held-out ones (labelled by identity
/// number) and the training ones (labelled 0.. in identity order).
fn split_celeba(images: Vec<Labelled>, ids: &[u32], held_out: &HeldOut) -> (Vec<Labelled>, Vec<Labelled>) {
    let training: Vec<u32> = ids.iter().copied().filter(|&id| !held_out.celeba(id)).collect();
    let (mut eval, mut train) = (Vec::new(), Vec::new());
    for image in images {
        let id = ids[image.label as usize];
        match training.binary_search(&id) {
            Ok(label) => train.push(Labelled {
                label: label as u32,
                ..image
            }),
            Err(_) => eval.push(Labelled { label: id, ..image }),
        }
    }
    (eval, train)
}

/// Whether the caches in `out` were made with this held-out split: caches
/// of before it (no record) or of another split are made again.
fn split_recorded(out: &Path, held_out: &HeldOut) -> Result<bool> {
    let file = out.join(SPLIT_FILE);
    Ok(file.is_file() && std::fs::read_to_string(&file)? == serde_json::to_string_pretty(&held_out.summary())?)
}

fn record_split(out: &Path, held_out: &HeldOut) -> Result<()> {
    let file = out.join(SPLIT_FILE);
    std::fs::write(&file, serde_json::to_string_pretty(&held_out.summary())?)
        .with_context(|| format!("cannot write {}", file.display()))
}

/// Refuses a cache folder made before the held-out split: training on it
/// would teach the faces the evaluation calls unseen.
pub fn require_split(cache_dir: &Path) -> Result<()> {
    if !cache_dir.join(SPLIT_FILE).is_file() {
        bail!(
            "{} was prepared before the held-out split (no {SPLIT_FILE}): its training caches hold evaluation faces; run `normgate-train prepare` again",
            cache_dir.display()
        );
    }
    Ok(())
}

fn load_crops(out: &Path, name: &str) -> Result<Vec<Crop>> {
    let cache = Cache::load(out, name)?;
    Ok((0..cache.len())
        .map(|i| Crop {
            image: cache.crop(i),
            label: cache.labels[i],
            path: cache.paths[i].clone(),
        })
        .collect())
}

/// A cache loaded into memory.
pub struct Cache {
    /// `[N, 112, 112, 3]` crops, row-major RGB.
    pub crops: Vec<u8>,
    /// Class per crop ([`UNLABELLED`] for none).
    pub labels: Vec<u32>,
    /// Teacher feature per crop, `dim` values each.
    pub teacher: Vec<f32>,
    /// Teacher feature of each mirrored crop.
    pub teacher_flip: Vec<f32>,
    /// Teacher feature length.
    pub dim: usize,
    /// Source path per crop (a tab and a note for fallbacks and degradations).
    pub paths: Vec<String>,
}

/// Side of a cached crop.
pub const CROP: usize = 112;

impl Cache {
    /// Reads `<dir>/<name>.safetensors` and its path list; says how to make them when missing.
    pub fn load(dir: &Path, name: &str) -> Result<Self> {
        let file = dir.join(format!("{name}.safetensors"));
        if !file.is_file() {
            bail!("{} is missing: run `normgate-train prepare` first", file.display());
        }
        let t = candle_core::safetensors::load(&file, &Device::Cpu)?;
        let get = |k: &str| {
            t.get(k)
                .with_context(|| format!("{} has no tensor {k}", file.display()))
        };
        let crops = get("crops")?.flatten_all()?.to_vec1::<u8>()?;
        let labels = get("labels")?.to_vec1::<u32>()?;
        let teacher_t = get("teacher")?;
        let dim = teacher_t.dim(1)?;
        let teacher = teacher_t.flatten_all()?.to_vec1::<f32>()?;
        let teacher_flip = get("teacher_flip")?.flatten_all()?.to_vec1::<f32>()?;
        let paths_file = dir.join(format!("{name}.paths.txt"));
        let paths: Vec<String> = std::fs::read_to_string(&paths_file)
            .with_context(|| format!("cannot read {}", paths_file.display()))?
            .lines()
            .map(String::from)
            .collect();
        let n = labels.len();
        if crops.len() != n * CROP * CROP * 3
            || teacher.len() != n * dim
            || teacher_flip.len() != n * dim
            || paths.len() != n
        {
            bail!(
                "{} is inconsistent (crops, labels, features and paths differ in count); rebuild it with --force",
                file.display()
            );
        }
        Ok(Self {
            crops,
            labels,
            teacher,
            teacher_flip,
            dim,
            paths,
        })
    }

    /// Number of crops.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no crops.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Crop `i` as an image.
    pub fn crop(&self, i: usize) -> RgbImage {
        let size = CROP * CROP * 3;
        RgbImage::from_raw(CROP as u32, CROP as u32, self.crops[i * size..][..size].to_vec()).expect("crop size")
    }

    /// Crop `i` on the SphereFace 112x96 template: the middle 96 columns of
    /// the cached ArcFace 112x112 crop (what the backbone sees).
    pub fn sphereface_crop(&self, i: usize) -> RgbImage {
        image::imageops::crop_imm(&self.crop(i), 8, 0, 96, CROP as u32).to_image()
    }

    /// Indices of `n` crops spread evenly over the cache.
    pub fn spread(&self, n: usize) -> impl Iterator<Item = usize> {
        let step = (self.len() / n.max(1)).max(1);
        (0..self.len()).step_by(step).take(n)
    }
}

/// Writes a cache of `n` random crops with `classes` labels and random
/// `dim`-d teacher features, for tests of the code that reads caches.
#[cfg(test)]
pub(crate) fn synthetic_cache(dir: &Path, name: &str, n: usize, classes: u32, dim: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let crops: Vec<Crop> = (0..n)
        .map(|i| Crop {
            image: RgbImage::from_fn(CROP as u32, CROP as u32, |_, _| {
                image::Rgb([rng.random(), rng.random(), rng.random()])
            }),
            label: i as u32 % classes,
            path: format!("{name}/{i}.jpg"),
        })
        .collect();
    let targets: Vec<Target> = (0..n)
        .map(|_| Target {
            feature: (0..dim).map(|_| rng.random_range(-1.0..1.0)).collect(),
            flipped: (0..dim).map(|_| rng.random_range(-1.0..1.0)).collect(),
        })
        .collect();
    save(dir, name, &crops, &targets).unwrap();
    record_split(dir, &HeldOut::default()).unwrap();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn face(x: f32, y: f32, side: f32) -> Face {
        Face {
            bbox: [x, y, x + side, y + side],
            score: 0.9,
            landmarks: [[0.0; 2]; 5],
        }
    }

    #[test]
    fn a_saved_cache_loads_back_and_a_missing_one_says_what_to_run() {
        let dir = std::env::temp_dir().join(format!("normgate-cache-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let crops: Vec<Crop> = (0..3u8)
            .map(|i| Crop {
                image: RgbImage::from_pixel(112, 112, image::Rgb([i, 2 * i, 3 * i])),
                label: if i == 2 { UNLABELLED } else { u32::from(i) },
                path: format!("set/{i}.jpg"),
            })
            .collect();
        let targets: Vec<Target> = (0..3)
            .map(|i| Target {
                feature: vec![i as f32; 4],
                flipped: vec![-(i as f32); 4],
            })
            .collect();
        save(&dir, "t", &crops, &targets).unwrap();
        let c = Cache::load(&dir, "t").unwrap();
        assert_eq!((c.len(), c.dim), (3, 4));
        assert_eq!(c.labels, [0, 1, UNLABELLED]);
        assert_eq!(c.crop(2).get_pixel(5, 5).0, [2, 4, 6]);
        assert_eq!(&c.teacher[8..12], [2.0; 4]);
        assert_eq!(&c.teacher_flip[4..8], [-1.0; 4]);
        assert_eq!(c.paths[1], "set/1.jpg");
        let err = Cache::load(&dir, "missing").err().unwrap().to_string();
        assert!(err.contains("normgate-train prepare"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn celeba_splits_into_held_out_identity_numbers_and_training_classes() {
        let ids = [7201, 7203, 7205, 7207];
        let images: Vec<Labelled> = (0..8)
            .map(|i| Labelled {
                path: PathBuf::from(format!("{i}.jpg")),
                label: i % 4,
            })
            .collect();
        let split = HeldOut::new(&ids, &[], []);
        let (eval, train) = split_celeba(images, &ids, &split);
        let labels = |v: &[Labelled]| v.iter().map(|l| l.label).collect::<Vec<_>>();
        assert_eq!(
            labels(&eval),
            vec![7201, 7207, 7201, 7207],
            "every third number, the first included"
        );
        assert_eq!(labels(&train), vec![0, 1, 0, 1], "7203 and 7205 numbered 0 and 1");
    }

    #[test]
    fn spread_limit_keeps_an_even_sample() {
        let mut v: Vec<u32> = (0..10).collect();
        spread_limit(&mut v, Some(5));
        assert_eq!(v, [1, 3, 5, 7, 9]);
        let mut w: Vec<u32> = (0..3).collect();
        spread_limit(&mut w, Some(10));
        assert_eq!(w, [0, 1, 2]);
    }

    #[test]
    fn the_main_face_is_the_largest_central_one() {
        let big_corner = face(0.0, 0.0, 90.0);
        let centre = face(100.0, 100.0, 50.0);
        let small_centre = face(110.0, 110.0, 20.0);
        assert_eq!(main_face(&[big_corner, small_centre, centre], 250, 250), Some(centre));
        assert_eq!(
            main_face(&[big_corner, face(200.0, 0.0, 40.0)], 250, 250),
            Some(big_corner)
        );
        assert_eq!(main_face(&[], 250, 250), None);
    }
}
