//! `normgate-train eval heldout`: the device's whole chain (detector,
//! landmark reading, alignment, backbone) against the teacher's chain on
//! the held-out split (`heldout`), measured as the product is judged
//! (DESIGN.md, "the gate's job"): the server verifies the pairs with the
//! teacher recognizer at its FMR 1e-2 threshold, and the gate drops the
//! pairs with the lowest device norms. An image where the device finds no
//! face would never be uploaded: its norm counts as 0, dropped first.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use normgate::card::ModelCard;
use normgate::detector::DetectParams;
use normgate::landmarks::Locator;
use serde::Serialize;

use crate::data::datasets::{self, Pair};
use crate::data::heldout::{celeba_pairs, HeldOut, SplitSummary};
use crate::data::prepare::Cache;
use crate::eval::detector::device_crops;
use crate::eval::embedder::{pair_scores, LfwScores, Model};
use crate::eval::quality::{edc, laplacian_variance, Edc};
use crate::eval::verify::{lfw_report, Scored};

/// Shares of pairs dropped at which the report reads the curves.
pub const DISCARDS: [u32; 3] = [10, 20, 30];

/// The share of the server's failures a discard order removes.
#[derive(Debug, Clone, Serialize)]
pub struct Removed {
    /// Share of pairs dropped, percent.
    pub discard_percent: u32,
    /// Dropping by the chain's norm.
    pub by_norm: f64,
    /// Dropping at random (mean of 100 orders).
    pub by_random: f64,
    /// Dropping by the blur baseline (Laplacian variance of the chain's crops).
    pub by_blur: f64,
}

/// One chain's figures on one set of pairs.
#[derive(Debug, Clone, Serialize)]
pub struct ChainFigures {
    /// The chain's own 10-fold verification accuracy.
    pub accuracy: f64,
    /// Its standard deviation over folds.
    pub std: f64,
    /// The server's FNMR before dropping anything.
    pub server_fnmr: f64,
    /// The server's failures removed by dropping pairs on this chain's norms.
    pub server_failures_removed: Vec<Removed>,
    /// The full server EDC (0..50 %).
    pub server_edc: Edc,
}

/// One evaluation set.
#[derive(Debug, Clone, Serialize)]
pub struct SetReport {
    /// `celeba`, `lfw` (pairs.txt without Glint24's people) or `all`.
    pub set: String,
    /// Pairs (half matched).
    pub pairs: usize,
    /// Images in the pairs.
    pub images: usize,
    /// Images where the teacher detector found a face.
    pub teacher_found: usize,
    /// Of those, images where the device's chain found one too.
    pub device_found_where_teacher_found: usize,
    /// The teacher chain (RetinaFace + the teacher recognizer, its own norm).
    pub teacher: ChainFigures,
    /// The device chain.
    pub device: ChainFigures,
}

/// Everything `eval heldout` measures.
#[derive(Debug, Clone, Serialize)]
pub struct HeldOutReport {
    /// The split's size.
    pub split: SplitSummary,
    /// The device's models.
    pub detector: String,
    /// The landmark reading after the detector (`none`).
    pub refiner: String,
    /// The backbone.
    pub backbone: String,
    /// CelebA's held-out people, LFW's unseen pairs, and both together.
    pub sets: Vec<SetReport>,
}

/// Both chains' scores of one set's pairs, and what the gate sees.
struct Scores {
    teacher: LfwScores,
    device: LfwScores,
    device_found: Vec<bool>,
    /// What orders the pairs for dropping: worked out once, as both the
    /// set's own report and the joined one read it.
    qualities: PairQualities,
}

impl Scores {
    fn measure(
        set: &str,
        pairs: &[Pair],
        teacher_crops: Cache,
        chain: (&Chain, &Model),
        dirs: [&Path; 2],
    ) -> Result<Self> {
        let (chain, backbone) = chain;
        let (device_cache, device_found) = chain.crops(set, dirs, &teacher_crops)?;
        let teacher = pair_scores(&Model::Teacher, pairs, teacher_crops, false)?;
        let device = pair_scores(backbone, pairs, device_cache, false)?;
        let qualities = pair_qualities(&teacher, &device, &device_found);
        Ok(Self {
            teacher,
            device,
            device_found,
            qualities,
        })
    }

    /// Of the images in the pairs: how many, how many the teacher found a
    /// face in, and how many of those the device found one in too.
    fn found(&self) -> [usize; 3] {
        let used: BTreeSet<usize> = self.teacher.crops.iter().flatten().copied().collect();
        let teacher = |i: &usize| !self.teacher.cache.paths[*i].ends_with("\tfallback");
        [
            used.len(),
            used.iter().filter(|i| teacher(i)).count(),
            used.iter().filter(|i| teacher(i) && self.device_found[**i]).count(),
        ]
    }
}

/// Per pair: the lower device norm (0 where the device found no face) and
/// teacher norm of its two images, and the lower blur of each chain's crops.
fn pair_qualities(teacher: &LfwScores, device: &LfwScores, device_found: &[bool]) -> PairQualities {
    let device_norms: Vec<f64> = device
        .norms()
        .into_iter()
        .zip(device_found)
        .map(|(n, &found)| if found { n } else { 0.0 })
        .collect();
    let crops = &teacher.crops;
    PairQualities {
        teacher_norm: pair_min(crops, &teacher.norms()),
        teacher_blur: pair_min(crops, &blur(&teacher.cache)),
        device_norm: pair_min(crops, &device_norms),
        device_blur: pair_min(crops, &blur(&device.cache)),
    }
}

/// What orders the pairs for dropping, per chain.
struct PairQualities {
    teacher_norm: Vec<f64>,
    teacher_blur: Vec<f64>,
    device_norm: Vec<f64>,
    device_blur: Vec<f64>,
}

/// The report of sets taken together (their pairs of each fold as one fold).
fn report(set: &str, parts: &[&Scores]) -> SetReport {
    let join = |f: &dyn Fn(&Scores) -> Vec<Scored>| -> Vec<Scored> { parts.iter().flat_map(|s| f(s)).collect() };
    let joined = |f: &dyn Fn(&PairQualities) -> &Vec<f64>| -> Vec<f64> {
        parts.iter().flat_map(|s| f(&s.qualities).iter().copied()).collect()
    };
    let server = join(&|s| s.teacher.pairs.clone());
    let found = parts.iter().fold([0; 3], |acc, s| {
        let f = s.found();
        [acc[0] + f[0], acc[1] + f[1], acc[2] + f[2]]
    });
    SetReport {
        set: set.into(),
        pairs: server.len(),
        images: found[0],
        teacher_found: found[1],
        device_found_where_teacher_found: found[2],
        teacher: chain_figures(
            &server,
            &server,
            &joined(&|q| &q.teacher_norm),
            &joined(&|q| &q.teacher_blur),
        ),
        device: chain_figures(
            &join(&|s| s.device.pairs.clone()),
            &server,
            &joined(&|q| &q.device_norm),
            &joined(&|q| &q.device_blur),
        ),
    }
}

/// The lower of each pair's two per-image values.
fn pair_min(crops: &[[usize; 2]], per_image: &[f64]) -> Vec<f64> {
    crops.iter().map(|&[a, b]| per_image[a].min(per_image[b])).collect()
}

/// The blur baseline of every crop of a cache.
fn blur(cache: &Cache) -> Vec<f64> {
    (0..cache.len()).map(|i| laplacian_variance(&cache.crop(i))).collect()
}

/// A chain's figures: its own verification (`own`), and the server's EDC
/// when the pairs are dropped by the chain's norms or by the blur of its crops.
fn chain_figures(own: &[Scored], server: &[Scored], pair_norm: &[f64], pair_blur: &[f64]) -> ChainFigures {
    let own = lfw_report(own);
    let server_edc = edc(server, pair_norm, pair_blur);
    let removed = |fnmr: f64| {
        if server_edc.fnmr > 0.0 {
            1.0 - fnmr / server_edc.fnmr
        } else {
            0.0
        }
    };
    ChainFigures {
        accuracy: own.accuracy,
        std: own.std,
        server_fnmr: server_edc.fnmr,
        server_failures_removed: server_edc
            .points
            .iter()
            .filter(|p| DISCARDS.contains(&p.discard_percent))
            .map(|p| Removed {
                discard_percent: p.discard_percent,
                by_norm: removed(p.fnmr_norm),
                by_random: removed(p.fnmr_random),
                by_blur: removed(p.fnmr_blur),
            })
            .collect(),
        server_edc,
    }
}

/// The held-out CelebA pairs over the images of the `celeba_heldout` cache.
pub fn celeba_heldout_pairs(cache: &Cache) -> Vec<Pair> {
    let images: Vec<(String, u32)> = cache
        .paths
        .iter()
        .zip(&cache.labels)
        .map(|(p, &id)| (p.split('\t').next().unwrap_or(p).to_string(), id))
        .collect();
    celeba_pairs(&images)
}

/// The device's detector and landmark readings as `eval heldout` runs them.
pub struct Chain<'a> {
    /// The loaded detector and readings.
    pub locator: &'a Locator,
    /// The detector's and the first reading's paths, as the report names them.
    pub names: [String; 2],
    /// Every file the chain reads: their content names the crops the chain
    /// cut, kept in the cache folder ([`Chain::files_of`]).
    pub files: Vec<PathBuf>,
}

impl Chain<'_> {
    /// A model file, its card, and the files of the reading its card names
    /// as `next` (`none`: no files).
    pub fn files_of(model: &Path) -> Result<Vec<PathBuf>> {
        if model == Path::new("none") {
            return Ok(Vec::new());
        }
        let card_path = ModelCard::path_for(model);
        let card = ModelCard::load(&card_path)?;
        let mut files = vec![model.to_path_buf(), card_path];
        if let Some(next) = card.refiner.and_then(|r| r.next) {
            files.extend(Self::files_of(&model.with_file_name(next))?);
        }
        Ok(files)
    }

    /// The crops the chain cuts from the images of `reference` and whether
    /// it found a face in each ([`device_crops`]): read back from the cache
    /// folder when these very files cut them before (a backbone is
    /// evaluated again in minutes), else cut and kept there.
    fn crops(&self, set: &str, dirs: [&Path; 2], reference: &Cache) -> Result<(Cache, Vec<bool>)> {
        let [data, cache_dir] = dirs;
        let mut content = Vec::new();
        for f in &self.files {
            let bytes = std::fs::read(f).with_context(|| format!("cannot read {}", f.display()))?;
            content.extend((bytes.len() as u64).to_le_bytes());
            content.extend(bytes);
        }
        let key = normgate::record::content_key(&content);
        let file = cache_dir.join(format!("heldout-chain-{set}-{}.safetensors", &key[..16]));
        let kept = |crops: Vec<u8>| Cache {
            crops,
            labels: reference.labels.clone(),
            teacher: Vec::new(),
            teacher_flip: Vec::new(),
            dim: 0,
            paths: reference.paths.clone(),
        };
        if file.is_file() {
            let t = candle_core::safetensors::load(&file, &Device::Cpu)?;
            let get = |k: &str| -> Result<Vec<u8>> {
                Ok(t.get(k)
                    .with_context(|| format!("{} has no tensor {k}", file.display()))?
                    .flatten_all()?
                    .to_vec1::<u8>()?)
            };
            let (crops, found) = (get("crops")?, get("found")?);
            if found.len() == reference.len() && crops.len() == reference.crops.len() {
                return Ok((kept(crops), found.iter().map(|&f| f == 1).collect()));
            }
            log::warn!(
                "{} does not fit the {set} cache; cutting the crops again",
                file.display()
            );
        }
        let (cache, found) = device_crops(self.locator, &DetectParams::default(), data, reference)?;
        let n = found.len();
        let tensors = std::collections::HashMap::from([
            (
                "crops".to_string(),
                Tensor::from_slice(&cache.crops, cache.crops.len(), &Device::Cpu)?,
            ),
            (
                "found".to_string(),
                Tensor::from_vec(found.iter().map(|&f| u8::from(f)).collect::<Vec<u8>>(), n, &Device::Cpu)?,
            ),
        ]);
        let partial = file.with_extension("partial");
        candle_core::safetensors::save(&tensors, &partial)
            .and_then(|()| Ok(std::fs::rename(&partial, &file)?))
            .with_context(|| format!("cannot write {}", file.display()))?;
        Ok((cache, found))
    }
}

/// Measures the device chain (the detector with its landmark readings,
/// then `backbone`) beside the teacher chain on the held-out split.
pub fn evaluate(chain: &Chain, backbone: &Model, data: &Path, cache_dir: &Path) -> Result<HeldOutReport> {
    let split = HeldOut::load(data)?;
    let celeba = Cache::load(cache_dir, "celeba_heldout")?;
    let celeba_pairs = celeba_heldout_pairs(&celeba);
    let pairs_file = data.join("lfw/pairs.txt");
    let text = std::fs::read_to_string(&pairs_file).with_context(|| format!("cannot read {}", pairs_file.display()))?;
    let lfw_pairs: Vec<Pair> = datasets::lfw_pairs(&text)?
        .into_iter()
        .filter(|p| split.unseen_lfw_pair(p))
        .collect();
    let dirs = [data, cache_dir];
    let celeba = Scores::measure("celeba", &celeba_pairs, celeba, (chain, backbone), dirs)?;
    let lfw_crops = Cache::load(cache_dir, "lfw_pairs")?;
    let lfw = Scores::measure("lfw", &lfw_pairs, lfw_crops, (chain, backbone), dirs)?;
    Ok(HeldOutReport {
        split: split.summary(),
        detector: chain.names[0].clone(),
        refiner: chain.names[1].clone(),
        backbone: backbone.name(),
        sets: vec![
            report("celeba", &[&celeba]),
            report("lfw", &[&lfw]),
            report("all", &[&celeba, &lfw]),
        ],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropping_the_low_norm_pairs_removes_the_servers_failures_they_hold() {
        // 20 matched pairs, 2 of them server failures, and 200 mismatched ones;
        // the chain's norm is lowest on the two failures.
        let mut server: Vec<Scored> = (0..20)
            .map(|i| Scored {
                fold: i % 10,
                same: true,
                score: if i < 2 { 0.1 } else { 0.9 },
            })
            .collect();
        server.extend((0..200).map(|i| Scored {
            fold: i % 10,
            same: false,
            score: 0.2 * (i as f32 / 200.0),
        }));
        let norm: Vec<f64> = (0..server.len())
            .map(|i| if i < 2 { 1.0 } else { 10.0 + i as f64 })
            .collect();
        // Blur drops two good matched pairs and then impostors only.
        let blur: Vec<f64> = (0..server.len())
            .map(|i| match i {
                5 | 6 => 0.0,
                0..20 => 1e6,
                _ => i as f64,
            })
            .collect();
        let f = chain_figures(&server, &server, &norm, &blur);
        assert!((f.server_fnmr - 0.1).abs() < 1e-9, "{}", f.server_fnmr);
        let at10 = &f.server_failures_removed[0];
        assert_eq!(at10.discard_percent, 10);
        assert!((at10.by_norm - 1.0).abs() < 1e-9, "{at10:?}");
        assert!(at10.by_blur < 0.0, "dropping two good pairs raises the FNMR: {at10:?}");
        assert!(at10.by_random.abs() < 0.2, "{at10:?}");
        assert!(f.accuracy > 0.99, "{}", f.accuracy);
    }

    #[test]
    fn the_chains_crops_are_kept_by_the_content_of_its_files_and_read_back() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let (models, data) = (root.join("models"), root.join("samples"));
        let cache_dir = std::env::temp_dir().join(format!("normgate-heldout-chain-{}", std::process::id()));
        std::fs::create_dir_all(&cache_dir).unwrap();
        let reference = Cache {
            crops: vec![0; 2 * crate::data::prepare::CROP * crate::data::prepare::CROP * 3],
            labels: vec![0, 1],
            teacher: Vec::new(),
            teacher_flip: Vec::new(),
            dim: 0,
            paths: vec!["astronaut.png".into(), "brick.png".into()],
        };
        let detector = models.join("detector.onnx");
        let locator = Locator::load(&detector, Path::new("none")).unwrap();
        let chain = Chain {
            locator: &locator,
            names: ["d".into(), "none".into()],
            files: Chain::files_of(&detector).unwrap(),
        };
        assert_eq!(chain.files, vec![detector.clone(), models.join("detector.toml")]);
        let kept = || std::fs::read_dir(&cache_dir).unwrap().count();
        let (cut, found) = chain.crops("t", [&data, &cache_dir], &reference).unwrap();
        assert_eq!(found, vec![true, false], "the astronaut's face, no face in the bricks");
        assert_eq!(kept(), 1);
        let (again, found_again) = chain.crops("t", [&data, &cache_dir], &reference).unwrap();
        assert_eq!((again.crops, found_again), (cut.crops.clone(), found), "read back");
        assert_eq!(kept(), 1);
        // Another file in the chain (its first reading names a second): other crops, another file.
        let refiner = models.join("refiner.onnx");
        let files = Chain::files_of(&refiner).unwrap();
        assert_eq!(
            files.len(),
            4,
            "the refiner, its card, the reading it names and its card: {files:?}"
        );
        let read_twice = Locator::load(&detector, &refiner).unwrap();
        let chain = Chain {
            locator: &read_twice,
            files: [chain.files, files].concat(),
            ..chain
        };
        let (refined, _) = chain.crops("t", [&data, &cache_dir], &reference).unwrap();
        assert_eq!(kept(), 2);
        assert_ne!(refined.crops, cut.crops);
        std::fs::remove_dir_all(cache_dir).unwrap();
    }
}
