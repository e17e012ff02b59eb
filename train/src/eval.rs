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

use crate::datasets;
use crate::prepare::{Cache, CROP};
use crate::train::{load_backbone, student_input};
use crate::verify::{cosine, lfw_report, LfwReport, Scored};

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

    /// Features of every crop of a cache, and of their mirror images when `flip`
    /// (summed with the plain ones, as is usual on LFW).
    pub fn features(&self, cache: &Cache, flip: bool) -> Result<Vec<Vec<f32>>> {
        let n = cache.len();
        let plain = |mirror: bool| -> Result<Vec<Vec<f32>>> {
            match self {
                Model::Teacher => {
                    let t = if mirror { &cache.teacher_flip } else { &cache.teacher };
                    Ok(t.chunks(cache.dim).map(<[f32]>::to_vec).collect())
                }
                Model::Checkpoint(dir) => {
                    let (net, _, _) = load_backbone(dir)?;
                    let mut out = Vec::with_capacity(n);
                    for start in (0..n).step_by(64) {
                        let end = (start + 64).min(n);
                        let x: Vec<f32> = (start..end).flat_map(|i| student_input(cache, i, mirror)).collect();
                        let x = Tensor::from_vec(x, (end - start, 3, CROP, 96), &Device::Cpu)?;
                        let f = net.forward(&x)?.to_vec2::<f32>()?;
                        out.extend(f);
                    }
                    Ok(out)
                }
                Model::Onnx(model, card) => {
                    let embedder = Embedder::load(model, card, 16)?;
                    let t = embedder.template();
                    let crops: Vec<RgbImage> = (0..n)
                        .map(|i| {
                            let c = cache.crop(i);
                            let c = if mirror {
                                image::imageops::flip_horizontal(&c)
                            } else {
                                c
                            };
                            // The cache holds 112x112 crops on the ArcFace template; the
                            // SphereFace template is its middle 96 columns.
                            match (t.width, t.height) {
                                (112, 112) => Ok(c),
                                (96, 112) => Ok(image::imageops::crop_imm(&c, 8, 0, 96, 112).to_image()),
                                (w, h) => bail!("no cached crops for a {w}x{h} template"),
                            }
                        })
                        .collect::<Result<_>>()?;
                    let mut out = Vec::with_capacity(n);
                    for chunk in crops.chunks(256) {
                        out.extend(embedder.embed(chunk)?);
                    }
                    Ok(out)
                }
            }
        };
        let mut features = plain(false)?;
        if flip {
            for (f, g) in features.iter_mut().zip(plain(true)?) {
                f.iter_mut().zip(g).for_each(|(a, b)| *a += b);
            }
        }
        Ok(features)
    }
}

/// The pairs of `pairs.txt`, scored by cosine of the model's features.
pub fn lfw_scores(
    model: &Model,
    data: &Path,
    cache_dir: &Path,
    flip: bool,
) -> Result<(Vec<Scored>, Cache, Vec<Vec<f32>>)> {
    let pairs_file = data.join("lfw/pairs.txt");
    let pairs = datasets::lfw_pairs(
        &std::fs::read_to_string(&pairs_file).with_context(|| format!("cannot read {}", pairs_file.display()))?,
    )?;
    let cache = Cache::load(cache_dir, "lfw_pairs")?;
    let index: HashMap<&str, usize> = cache
        .paths
        .iter()
        .enumerate()
        .map(|(i, p)| (p.split('\t').next().unwrap_or(p).trim_start_matches("lfw/"), i))
        .collect();
    let features = model.features(&cache, flip)?;
    let scored = pairs
        .iter()
        .map(|p| {
            let [a, b] = [&p.images[0], &p.images[1]].map(|im| index.get(im.as_str()).copied());
            match (a, b) {
                (Some(a), Some(b)) => Ok(Scored {
                    fold: p.fold,
                    same: p.same,
                    score: cosine(&features[a], &features[b]),
                }),
                _ => bail!("pair {:?} has an image missing from the lfw_pairs cache", p.images),
            }
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((scored, cache, features))
}

/// LFW 10-fold verification of a model.
pub fn lfw(model: &Model, data: &Path, cache_dir: &Path, flip: bool) -> Result<LfwReport> {
    Ok(lfw_report(&lfw_scores(model, data, cache_dir, flip)?.0))
}
