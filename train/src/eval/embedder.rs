//! `normgate-train eval`: measures a model on the prepared evaluation crops
//! with the protocols of DESIGN.md. A model is the teacher (its cached
//! features), a training run's checkpoint, or an ONNX file with its card
//! (run by tract exactly as on the device).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use image::RgbImage;
use normgate::embedder::Embedder;

use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::Serialize;

use crate::backbone::network::Backbone;
use crate::backbone::recipe::student_input;
use crate::backbone::train::load_backbone;
use crate::data::datasets::{self, Pair};
use crate::data::degrade::Degradation;
use crate::data::prepare::{Cache, CROP};
use crate::eval::quality::{edc, laplacian_variance, mean_within_item_spearman, pooled_spearman, spearman, Edc};
use crate::eval::verify::{auc, lfw_report, LfwReport, Scored};
use normgate_core::norm::cosine;

/// Where features come from.
pub enum Model {
    /// The teacher's features stored in the cache.
    Teacher,
    /// A training run folder.
    Checkpoint(PathBuf),
    /// An ONNX model and its card.
    Onnx(PathBuf, PathBuf),
}

impl Model {
    /// `teacher`, a run folder (holds config.json), or a `.onnx` file (card beside it unless given).
    pub fn parse(spec: &str, card: Option<PathBuf>) -> Result<Self> {
        let path = PathBuf::from(spec);
        if spec == "teacher" {
            Ok(Model::Teacher)
        } else if path.join("config.json").is_file() {
            Ok(Model::Checkpoint(path))
        } else if path.extension().is_some_and(|e| e == "onnx") {
            let card = card.unwrap_or_else(|| normgate::card::ModelCard::path_for(&path));
            Ok(Model::Onnx(path, card))
        } else {
            bail!("model {spec:?}: expected `teacher`, a training run folder or an .onnx file")
        }
    }

    /// The model as a report names it: `teacher` or its path.
    pub fn name(&self) -> String {
        match self {
            Model::Onnx(path, _) => path.display().to_string(),
            Model::Checkpoint(dir) => dir.display().to_string(),
            Model::Teacher => "teacher".into(),
        }
    }

    /// Features of every crop of a cache, and of their mirror images when `flip`
    /// (summed with the plain ones, as is usual on LFW).
    pub fn features(&self, cache: &Cache, flip: bool) -> Result<Vec<Vec<f32>>> {
        let loaded = match self {
            Model::Teacher => Loaded::Teacher,
            Model::Checkpoint(dir) => Loaded::Checkpoint(Box::new(load_backbone(dir)?.0)),
            Model::Onnx(model, card) => Loaded::Onnx(Box::new(Embedder::load(model, card, 16)?)),
        };
        let mut features = loaded.features(cache, false)?;
        if flip {
            for (f, g) in features.iter_mut().zip(loaded.features(cache, true)?) {
                f.iter_mut().zip(g).for_each(|(a, b)| *a += b);
            }
        }
        Ok(features)
    }
}

/// A model ready to run.
enum Loaded {
    Teacher,
    Checkpoint(Box<Backbone>),
    Onnx(Box<Embedder>),
}

impl Loaded {
    /// Features of every crop, or of its mirror image.
    fn features(&self, cache: &Cache, mirror: bool) -> Result<Vec<Vec<f32>>> {
        let n = cache.len();
        match self {
            Loaded::Teacher => {
                if cache.dim == 0 || cache.teacher.len() != n * cache.dim {
                    bail!("the teacher's features are cached for prepared crops only; pass the teacher's .onnx file");
                }
                let t = if mirror { &cache.teacher_flip } else { &cache.teacher };
                Ok(t.chunks(cache.dim).map(<[f32]>::to_vec).collect())
            }
            Loaded::Checkpoint(net) => {
                let mut out = Vec::with_capacity(n);
                for start in (0..n).step_by(64) {
                    let end = (start + 64).min(n);
                    let x: Vec<f32> = (start..end).flat_map(|i| student_input(cache, i, mirror)).collect();
                    let x = Tensor::from_vec(x, (end - start, 3, CROP, 96), &Device::Cpu)?;
                    out.extend(net.forward(&x)?.to_vec2::<f32>()?);
                }
                Ok(out)
            }
            Loaded::Onnx(embedder) => {
                let t = embedder.template();
                let crops: Vec<RgbImage> = (0..n)
                    .map(|i| {
                        // The cache holds crops on the ArcFace template; the
                        // SphereFace one is their middle 96 columns.
                        let c = match (t.width, t.height) {
                            (112, 112) => cache.crop(i),
                            (96, 112) => cache.sphereface_crop(i),
                            (w, h) => bail!("no cached crops for a {w}x{h} template"),
                        };
                        Ok(if mirror {
                            image::imageops::flip_horizontal(&c)
                        } else {
                            c
                        })
                    })
                    .collect::<Result<_>>()?;
                let mut out = Vec::with_capacity(n);
                for chunk in crops.chunks(256) {
                    out.extend(embedder.embed(chunk)?);
                }
                Ok(out)
            }
        }
    }
}

/// Verification pairs (LFW's or held-out ones) scored by a model, with what
/// produced the scores.
pub struct LfwScores {
    /// Every pair with its cosine.
    pub pairs: Vec<Scored>,
    /// The two crops of each pair.
    pub crops: Vec<[usize; 2]>,
    /// The cache of the pairs' crops.
    pub cache: Cache,
    /// The model's feature of each crop.
    pub features: Vec<Vec<f32>>,
}

impl LfwScores {
    /// The feature norm of each crop.
    pub fn norms(&self) -> Vec<f64> {
        self.features.iter().map(|f| norm(f)).collect()
    }

    /// 10th, 50th and 90th percentile of the crops' feature norms.
    pub fn norm_percentiles(&self) -> [f64; 3] {
        let norms = self.norms();
        [0.1, 0.5, 0.9].map(|p| percentile(&norms, p))
    }
}

/// The pairs of `pairs.txt`, scored by cosine of the model's features.
pub fn lfw_scores(model: &Model, data: &Path, cache_dir: &Path, flip: bool) -> Result<LfwScores> {
    let pairs_file = data.join("lfw/pairs.txt");
    let text = std::fs::read_to_string(&pairs_file).with_context(|| format!("cannot read {}", pairs_file.display()))?;
    lfw_scores_on(model, &text, Cache::load(cache_dir, "lfw_pairs")?, flip)
}

/// The pairs of `pairs_text`, scored on the crops of `cache` (one per
/// image of the pairs, as the lfw_pairs cache holds them).
pub fn lfw_scores_on(model: &Model, pairs_text: &str, cache: Cache, flip: bool) -> Result<LfwScores> {
    pair_scores(model, &datasets::lfw_pairs(pairs_text)?, cache, flip)
}

/// `pairs` scored on the crops of `cache`, which holds every image of
/// them: a pair's image is a cache path, less a leading `lfw/`.
pub fn pair_scores(model: &Model, pairs: &[Pair], cache: Cache, flip: bool) -> Result<LfwScores> {
    let index: HashMap<&str, usize> = cache
        .paths
        .iter()
        .enumerate()
        .map(|(i, p)| (p.split('\t').next().unwrap_or(p).trim_start_matches("lfw/"), i))
        .collect();
    let crops = pairs
        .iter()
        .map(
            |p| match [&p.images[0], &p.images[1]].map(|im| index.get(im.as_str()).copied()) {
                [Some(a), Some(b)] => Ok([a, b]),
                _ => bail!("pair {:?} has an image missing from the cache of its crops", p.images),
            },
        )
        .collect::<Result<Vec<_>>>()?;
    let features = model.features(&cache, flip)?;
    let scored = pairs
        .iter()
        .zip(&crops)
        .map(|(p, &[a, b])| Scored {
            fold: p.fold,
            same: p.same,
            score: cosine(&features[a], &features[b]),
        })
        .collect();
    Ok(LfwScores {
        pairs: scored,
        crops,
        cache,
        features,
    })
}

/// Each LFW pair's quality under a model: the lower of its two crops'
/// feature norms, and for the blur baseline the lower of their Laplacian
/// variances. Computed once, it serves every EDC drawn on the same pairs.
pub struct PairQuality {
    norm: Vec<f64>,
    blur: Vec<f64>,
}

impl PairQuality {
    /// The qualities of `lfw`'s pairs under its model.
    pub fn of(lfw: &LfwScores) -> Self {
        let norms = lfw.norms();
        let blur: Vec<f64> = (0..lfw.cache.len())
            .map(|i| laplacian_variance(&lfw.cache.crop(i)))
            .collect();
        let pair_min = |q: &[f64]| -> Vec<f64> { lfw.crops.iter().map(|&[a, b]| q[a].min(q[b])).collect() };
        Self {
            norm: pair_min(&norms),
            blur: pair_min(&blur),
        }
    }

    /// The EDC of `pairs` (the same LFW pairs, scored by any model),
    /// discarding by these qualities.
    pub fn edc(&self, pairs: &[Scored]) -> Edc {
        edc(pairs, &self.norm, &self.blur)
    }
}

/// The EDC of scored LFW pairs: each pair's quality is the lower of its two
/// crops' feature norms (blur baseline: their Laplacian variance).
pub fn lfw_edc(lfw: &LfwScores) -> Edc {
    PairQuality::of(lfw).edc(&lfw.pairs)
}

/// The EDC of the teacher's verification on the same pairs, discarding by
/// the model's norms (`quality`, [`PairQuality::of`] `lfw`): what the gate's
/// discarding buys a server that matches with a stronger recognizer (the
/// teacher standing in for it). None when the cache holds no teacher features.
pub fn server_edc(lfw: &LfwScores, quality: &PairQuality) -> Option<Edc> {
    let (t, dim) = (&lfw.cache.teacher, lfw.cache.dim);
    if dim == 0 || t.len() != lfw.cache.len() * dim {
        return None;
    }
    let feature = |i: usize| &t[i * dim..][..dim];
    let pairs: Vec<Scored> = lfw
        .pairs
        .iter()
        .zip(&lfw.crops)
        .map(|(p, &[a, b])| Scored {
            score: cosine(feature(a), feature(b)),
            ..*p
        })
        .collect();
    Some(quality.edc(&pairs))
}

/// LFW 10-fold verification of a model.
pub fn lfw(model: &Model, data: &Path, cache_dir: &Path, flip: bool) -> Result<LfwReport> {
    Ok(lfw_report(&lfw_scores(model, data, cache_dir, flip)?.pairs))
}

/// One degradation family's result.
#[derive(Debug, Clone, Serialize)]
pub struct FamilyReport {
    /// Family name.
    pub family: String,
    /// Mean norm of the clean crops, then of each severity.
    pub mean_norms: Vec<f64>,
    /// Spearman of severity (0 = clean) against norm, pooled over images.
    pub spearman: f64,
    /// Mean over images of each image's own Spearman of severity against
    /// norm: whether a worse copy of the same face gets a lower norm, as a
    /// gate choosing among one person's frames needs.
    pub within_face_spearman: f64,
}

/// Everything `eval quality` measures.
#[derive(Debug, Clone, Serialize)]
pub struct QualityReport {
    /// Error versus discard on LFW.
    pub edc: Edc,
    /// Error versus discard of the teacher's verification, pairs discarded by
    /// this model's norms (see [`server_edc`]).
    pub server_edc: Option<Edc>,
    /// The cache whose crops were degraded (the protocol's: glint24).
    pub degraded_from: String,
    /// Degradation ranking per family.
    pub degradation: Vec<FamilyReport>,
    /// ROC AUC of the norm, faces against non-faces.
    pub face_nonface_auroc: f64,
    /// 10th, 50th and 90th percentile of the norms of the LFW images
    /// (crops aligned from the teacher's landmarks; the card's threshold
    /// comes from the device's own alignment: `eval detector --update-card`).
    pub lfw_norm_percentiles: [f64; 3],
}

/// Writes `threshold` as the recommended gate threshold into an ONNX model's card.
pub fn set_recommended_threshold(model: &Model, threshold: f32) -> Result<()> {
    let Model::Onnx(_, card_path) = model else {
        bail!("only an .onnx model has a card to update");
    };
    let mut card = normgate::card::ModelCard::load(card_path)?;
    let Some(embedder) = card.embedder.as_mut() else {
        bail!("{} is not an embedder's card", card_path.display());
    };
    embedder.recommended_threshold = Some(threshold);
    crate::onnx::graph::write_card(&card, card_path)
}

/// How closely one model follows another on the same crops.
#[derive(Debug, Serialize)]
pub struct Agreement {
    /// Crops compared (the LFW pair images).
    pub crops: usize,
    /// Mean cosine between the two models' features of each crop.
    pub mean_cosine: f64,
    /// Smallest of those cosines.
    pub min_cosine: f64,
    /// Spearman rank correlation of the two models' norms.
    pub norm_spearman: f64,
    /// Mean ratio of the model's norm to the reference's.
    pub mean_norm_ratio: f64,
}

/// Features of `model` against `reference` on the LFW crops (e.g. int8 against fp32).
pub fn agreement(model: &Model, reference: &Model, cache_dir: &Path) -> Result<Agreement> {
    let cache = Cache::load(cache_dir, "lfw_pairs")?;
    let a = model.features(&cache, false)?;
    let b = reference.features(&cache, false)?;
    let cosines: Vec<f64> = a.iter().zip(&b).map(|(x, y)| f64::from(cosine(x, y))).collect();
    let (na, nb): (Vec<f64>, Vec<f64>) = a.iter().zip(&b).map(|(x, y)| (norm(x), norm(y))).unzip();
    let n = cosines.len() as f64;
    Ok(Agreement {
        crops: cosines.len(),
        mean_cosine: cosines.iter().sum::<f64>() / n,
        min_cosine: cosines.iter().copied().fold(f64::INFINITY, f64::min),
        norm_spearman: spearman(&na, &nb),
        mean_norm_ratio: na.iter().zip(&nb).map(|(x, y)| x / y).sum::<f64>() / n,
    })
}

/// The `p`-quantile (0..=1) of `values` by the nearest rank (0 when empty).
pub(crate) fn percentile(values: &[f64], p: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n => sorted[((n - 1) as f64 * p).round() as usize],
    }
}

fn norm(v: &[f32]) -> f64 {
    f64::from(normgate_core::norm::l2_norm(v))
}

/// A cache of arbitrary 112x112 crops (no teacher features).
fn crops_cache(crops: &[RgbImage]) -> Cache {
    Cache {
        crops: crops.iter().flat_map(|c| c.as_raw().iter().copied()).collect(),
        labels: vec![0; crops.len()],
        teacher: Vec::new(),
        teacher_flip: Vec::new(),
        dim: 0,
        paths: vec![String::new(); crops.len()],
    }
}

/// Runs the quality protocols (EDC on LFW, degradations of `degraded_images`
/// crops of the cache `degraded_from`, faces against non-faces). The
/// protocol degrades Glint24 crops, which the backbone trains on; the LFW
/// crops of `pairs.txt` (`lfw_pairs`) check the ranking on faces it never saw.
pub fn quality(
    model: &Model,
    data: &Path,
    cache_dir: &Path,
    degraded_from: &str,
    degraded_images: usize,
) -> Result<QualityReport> {
    let lfw = lfw_scores(model, data, cache_dir, false)?;
    let pair_quality = PairQuality::of(&lfw);
    let (edc, server_edc) = (pair_quality.edc(&lfw.pairs), server_edc(&lfw, &pair_quality));

    let source = Cache::load(cache_dir, degraded_from)?;
    let clean: Vec<RgbImage> = source.spread(degraded_images).map(|i| source.crop(i)).collect();
    let clean_norms: Vec<f64> = model
        .features(&crops_cache(&clean), false)?
        .iter()
        .map(|f| norm(f))
        .collect();
    let mut rng = StdRng::seed_from_u64(7);
    let mut degradation = Vec::new();
    for (family, levels) in Degradation::protocol() {
        let mut by_severity = vec![clean_norms.clone()];
        for d in &levels {
            let crops: Vec<RgbImage> = clean.iter().map(|c| d.apply(c, &mut rng)).collect();
            by_severity.push(
                model
                    .features(&crops_cache(&crops), false)?
                    .iter()
                    .map(|f| norm(f))
                    .collect(),
            );
        }
        degradation.push(FamilyReport {
            family: family.into(),
            mean_norms: by_severity
                .iter()
                .map(|n| n.iter().sum::<f64>() / n.len() as f64)
                .collect(),
            spearman: pooled_spearman(&by_severity),
            within_face_spearman: mean_within_item_spearman(&by_severity),
        });
    }

    let mut patches = Vec::new();
    let mut is_face = Vec::new();
    for (folder, face) in [("face", true), ("nonface", false)] {
        for f in crate::data::datasets::images_under(&data.join("faces_nonfaces").join(folder))? {
            patches.push(image::imageops::resize(
                &crate::data::datasets::read_rgb(&f)?,
                CROP as u32,
                CROP as u32,
                image::imageops::FilterType::Triangle,
            ));
            is_face.push(face);
        }
    }
    let patch_norms = model.features(&crops_cache(&patches), false)?;
    let scored: Vec<Scored> = patch_norms
        .iter()
        .zip(&is_face)
        .map(|(f, &same)| Scored {
            fold: 0,
            same,
            score: norm(f) as f32,
        })
        .collect();
    Ok(QualityReport {
        edc,
        server_edc,
        degraded_from: degraded_from.into(),
        degradation,
        face_nonface_auroc: auc(&scored),
        lfw_norm_percentiles: lfw.norm_percentiles(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_edc_scores_pairs_by_the_teacher_and_discards_by_the_model() {
        // Ten pairs of two crops: five genuine, five impostors. The teacher
        // (2-d features) fails genuine pair 0 only; the model passes every
        // pair but gives pair 0's second crop the lowest norm.
        let teacher: Vec<[f32; 2]> = (0..10)
            .flat_map(|p| match p {
                0 => [[1.0, 0.0], [0.0, 1.0]],
                1..5 => [[1.0, 0.0], [1.0, 0.0]],
                _ => [[1.0, 0.0], [0.2, 0.98]],
            })
            .collect();
        let cache = Cache {
            crops: vec![0; 20 * CROP * CROP * 3],
            labels: vec![0; 20],
            teacher: teacher.iter().flatten().copied().collect(),
            teacher_flip: Vec::new(),
            dim: 2,
            paths: vec![String::new(); 20],
        };
        let features: Vec<Vec<f32>> = (0..20).map(|i| vec![if i == 1 { 1.0 } else { 5.0 }, 0.0]).collect();
        let lfw = LfwScores {
            pairs: (0..10)
                .map(|p| Scored {
                    fold: 0,
                    same: p < 5,
                    score: if p < 5 { 1.0 } else { 0.0 },
                })
                .collect(),
            crops: (0..10).map(|p| [2 * p, 2 * p + 1]).collect(),
            cache,
            features,
        };
        assert_eq!(lfw_edc(&lfw).fnmr, 0.0);
        let server = server_edc(&lfw, &PairQuality::of(&lfw)).unwrap();
        assert!((server.fnmr - 0.2).abs() < 1e-9, "{}", server.fnmr);
        // Discarding 10 % (pair 0, the lowest norm) removes the teacher's failure.
        let at10 = server.points.iter().find(|p| p.discard_percent == 10).unwrap();
        assert_eq!(at10.fnmr_norm, 0.0);
        let no_teacher = LfwScores {
            cache: Cache {
                dim: 0,
                teacher: Vec::new(),
                ..lfw.cache
            },
            ..lfw
        };
        assert!(server_edc(&no_teacher, &PairQuality::of(&no_teacher)).is_none());
    }

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let v: Vec<f64> = (0..=10).rev().map(f64::from).collect();
        assert_eq!(percentile(&v, 0.1), 1.0);
        assert_eq!(percentile(&v, 0.5), 5.0);
        assert_eq!(percentile(&v, 1.0), 10.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }
}
