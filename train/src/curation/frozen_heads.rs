//! A-Softmax heads fitted to a frozen backbone's features (seed §1-2 without
//! retraining the backbone): one head per data set, its weight rows the
//! class directions that `dedup` compares and `mine` scores against. With the
//! backbone frozen, concat training's heads do not interact, so each is fitted
//! on its own set. The margin math is the core's (`margin`), the optimiser
//! plain SGD with momentum; sub-batches run on the thread pool and their
//! gradients are summed in a fixed order, so a seed gives the same head on
//! any number of threads.

use anyhow::{bail, Result};
use normgate_core::margin::{weight_norms, ASoftmax, Batch, LambdaSchedule, Margin};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use serde::Serialize;

/// How a head is fitted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HeadFitConfig {
    /// SGD steps.
    pub steps: u64,
    /// Features per step.
    pub batch: usize,
    /// Learning rate (constant; λ's decay is the schedule).
    pub lr: f32,
    /// SGD momentum.
    pub momentum: f32,
    /// The angular margin m.
    pub m: u8,
    /// λ over the steps.
    pub lambda: LambdaSchedule,
    /// Seed of the initial weights and the batch order.
    pub seed: u64,
}

impl Default for HeadFitConfig {
    fn default() -> Self {
        Self {
            steps: 3000,
            batch: 256,
            lr: 0.1,
            momentum: 0.9,
            m: 4,
            lambda: LambdaSchedule::SPHEREFACE,
            seed: 1,
        }
    }
}

/// A fitted head and how well it fits its training features.
#[derive(Debug, Clone, Serialize)]
pub struct FittedHead {
    /// `classes x dim` weight rows.
    #[serde(skip)]
    pub weights: Vec<f32>,
    /// Mean A-Softmax loss over all features at the final λ.
    pub loss: f32,
    /// Share of features whose nearest weight row (by cosine) is their class.
    pub accuracy: f32,
}

/// Features per sub-batch handed to one thread.
const CHUNK: usize = 64;

/// The mean loss and weight gradient of one batch (rows `picks`).
fn loss_and_gradient(
    layer: &ASoftmax,
    features: &[f32],
    labels: &[u32],
    picks: &[usize],
    weights: &[f32],
    dim: usize,
) -> Result<(f32, Vec<f32>)> {
    let classes = weights.len() / dim;
    let mut norms = vec![0.0; classes];
    weight_norms(weights, dim, &mut norms)?;
    let parts = picks
        .par_chunks(CHUNK)
        .map(|chunk| {
            let x: Vec<f32> = chunk
                .iter()
                .flat_map(|&i| &features[i * dim..][..dim])
                .copied()
                .collect();
            let y: Vec<u32> = chunk.iter().map(|&i| labels[i]).collect();
            let batch = Batch {
                x: &x,
                weights,
                weight_norms: &norms,
                labels: &y,
                dim,
            };
            let mut logits = vec![0.0; chunk.len() * classes];
            let mut losses = vec![0.0; chunk.len()];
            let loss = layer.forward(&batch, &mut logits, &mut losses)?;
            let (mut gx, mut gw) = (vec![0.0; x.len()], vec![0.0; weights.len()]);
            layer.backward(&batch, &logits, &mut gx, &mut gw)?;
            Ok((chunk.len(), loss, gw))
        })
        .collect::<std::result::Result<Vec<_>, normgate_core::Error>>()?;
    let total = picks.len() as f32;
    let mut grad = vec![0.0; weights.len()];
    let mut loss = 0.0;
    for (n, l, gw) in parts {
        let share = n as f32 / total;
        loss += share * l;
        grad.iter_mut().zip(&gw).for_each(|(g, v)| *g += share * v);
    }
    Ok((loss, grad))
}

/// Fits a head for `classes` classes to `features` (`n x dim`) and their `labels`.
pub fn fit(
    features: &[f32],
    labels: &[u32],
    classes: usize,
    dim: usize,
    config: &HeadFitConfig,
    tick: &dyn Fn(u64, f32),
) -> Result<FittedHead> {
    let n = labels.len();
    if dim == 0 || features.len() != n * dim {
        bail!("{} feature values do not make {n} rows of {dim}", features.len());
    }
    if features.iter().any(|v| !v.is_finite()) {
        bail!("a feature holds NaN or infinity");
    }
    if let Some(&bad) = labels.iter().find(|&&l| l as usize >= classes) {
        bail!("label {bad} is out of range for {classes} classes");
    }
    if classes < 2 || config.batch == 0 {
        bail!("a head needs at least two classes and a non-empty batch");
    }
    let margin = Margin::new(config.m)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(config.seed);
    let scale = (1.0 / dim as f32).sqrt();
    let mut weights: Vec<f32> = (0..classes * dim)
        .map(|_| scale * rng.sample::<f32, _>(rand_distr::StandardNormal))
        .collect();
    let mut velocity = vec![0.0; weights.len()];
    let mut order: Vec<usize> = (0..n).collect();
    let mut at = n;
    for step in 0..config.steps {
        let layer = ASoftmax {
            margin,
            lambda: config.lambda.at(step),
        };
        let mut picks = Vec::with_capacity(config.batch);
        while picks.len() < config.batch.min(n) {
            if at == n {
                order.shuffle(&mut rng);
                at = 0;
            }
            let take = (config.batch - picks.len()).min(n - at);
            picks.extend_from_slice(&order[at..at + take]);
            at += take;
        }
        let (loss, grad) = loss_and_gradient(&layer, features, labels, &picks, &weights, dim)?;
        for ((w, v), g) in weights.iter_mut().zip(&mut velocity).zip(&grad) {
            *v = config.momentum * *v + g;
            *w -= config.lr * *v;
        }
        tick(step, loss);
    }
    let layer = ASoftmax {
        margin,
        lambda: config.lambda.at(config.steps),
    };
    let all: Vec<usize> = (0..n).collect();
    let (loss, _) = loss_and_gradient(&layer, features, labels, &all, &weights, dim)?;
    let accuracy = nearest_rows(features, &weights, dim)
        .iter()
        .zip(labels)
        .filter(|(p, &l)| **p == l as usize)
        .count() as f32
        / n as f32;
    Ok(FittedHead {
        weights,
        loss,
        accuracy,
    })
}

/// One data set's fitted head, as `heads` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct SetHead {
    /// The set's name (the tensor's name in heads.safetensors).
    pub name: String,
    /// Images in the set (after `--min-images`).
    pub images: usize,
    /// Images that gave a feature.
    pub measured: usize,
    /// Classes (rows of the head).
    pub classes: usize,
    /// The fit.
    #[serde(flatten)]
    pub head: FittedHead,
    /// Seconds to measure and fit.
    pub seconds: f64,
    /// Class names in row order.
    #[serde(skip)]
    pub class_names: Vec<String>,
    /// Images without a feature, with the reason.
    #[serde(skip)]
    pub unmeasured: Vec<(std::path::PathBuf, String)>,
}

/// Writes `heads.safetensors` (one `classes x dim` tensor per set, named
/// after it), `<set>.names` (its class names in row order) and, for images
/// without a feature, `<set>.unmeasured.tsv` into `out`.
pub fn write_heads(out: &std::path::Path, heads: &[SetHead], dim: usize) -> Result<()> {
    use anyhow::Context;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut tensors = std::collections::HashMap::new();
    for set in heads {
        let t = candle_core::Tensor::from_slice(&set.head.weights, (set.classes, dim), &candle_core::Device::Cpu)?;
        tensors.insert(set.name.clone(), t);
        let file = out.join(format!("{}.names", set.name));
        std::fs::write(&file, set.class_names.join("\n") + "\n")
            .with_context(|| format!("cannot write {}", file.display()))?;
        if !set.unmeasured.is_empty() {
            let tsv: String = set
                .unmeasured
                .iter()
                .map(|(p, why)| format!("{}\t{why}\n", p.display()))
                .collect();
            let file = out.join(format!("{}.unmeasured.tsv", set.name));
            std::fs::write(&file, tsv).with_context(|| format!("cannot write {}", file.display()))?;
        }
    }
    candle_core::safetensors::save(&tensors, out.join("heads.safetensors"))?;
    Ok(())
}

/// Each feature's cosines to every weight row (`n x classes`).
pub fn cosines(features: &[f32], weights: &[f32], dim: usize) -> Vec<f32> {
    let rows: Vec<Vec<f32>> = weights
        .chunks_exact(dim)
        .map(|w| {
            let mut w = w.to_vec();
            normgate_core::norm::normalize(&mut w);
            w
        })
        .collect();
    features
        .par_chunks_exact(dim)
        .flat_map_iter(|f| {
            let norm = normgate_core::norm::l2_norm(f).max(f32::MIN_POSITIVE);
            rows.iter()
                .map(move |w| normgate_core::norm::dot(f, w) / norm)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Each feature's most similar weight row.
fn nearest_rows(features: &[f32], weights: &[f32], dim: usize) -> Vec<usize> {
    let classes = weights.len() / dim;
    cosines(features, weights, dim)
        .chunks_exact(classes)
        .map(|row| (0..classes).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap_or(0))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three well separated classes in 4-d with noise, 20 samples each.
    fn clusters(seed: u64) -> (Vec<f32>, Vec<u32>) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let centres = [[5.0, 0.0, 0.0, 1.0], [0.0, 5.0, 0.0, 1.0], [0.0, 0.0, 5.0, 1.0]];
        let (mut f, mut l) = (Vec::new(), Vec::new());
        for i in 0..60 {
            let c = i % 3;
            f.extend(centres[c].iter().map(|v| v + rng.random_range(-0.5..0.5)));
            l.push(c as u32);
        }
        (f, l)
    }

    fn quick() -> HeadFitConfig {
        HeadFitConfig {
            steps: 200,
            batch: 32,
            ..HeadFitConfig::default()
        }
    }

    #[test]
    fn a_head_learns_separable_classes_and_its_rows_point_at_them() {
        let (f, l) = clusters(3);
        let head = fit(&f, &l, 3, 4, &quick(), &|_, _| {}).unwrap();
        assert_eq!(head.accuracy, 1.0);
        assert!(head.loss.is_finite());
        // Each row is closest to its own class's mean direction.
        let means: Vec<f32> = (0..3)
            .flat_map(|c| {
                let rows: Vec<&[f32]> = f.chunks(4).zip(&l).filter(|(_, &y)| y == c).map(|(r, _)| r).collect();
                (0..4).map(move |k| rows.iter().map(|r| r[k]).sum::<f32>())
            })
            .collect();
        let cos = cosines(&means, &head.weights, 4);
        for c in 0..3 {
            let row = &cos[c * 3..][..3];
            assert_eq!((0..3).max_by(|&a, &b| row[a].total_cmp(&row[b])), Some(c), "{row:?}");
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_head_on_any_thread_count() {
        let (f, l) = clusters(4);
        let run = |threads| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| fit(&f, &l, 3, 4, &quick(), &|_, _| {}).unwrap().weights)
        };
        assert_eq!(run(1), run(3));
    }

    #[test]
    fn written_heads_load_back_for_dedup_with_their_names() {
        let (f, l) = clusters(6);
        let head = fit(&f, &l, 3, 4, &quick(), &|_, _| {}).unwrap();
        let set = SetHead {
            name: "toy".into(),
            images: 61,
            measured: 60,
            classes: 3,
            head: head.clone(),
            seconds: 0.0,
            class_names: ["x", "y", "z"].map(String::from).to_vec(),
            unmeasured: vec![(std::path::PathBuf::from("bad.jpg"), "no face found".to_string())],
        };
        let out = std::env::temp_dir().join(format!("normgate-heads-{}", std::process::id()));
        write_heads(&out, std::slice::from_ref(&set), 4).unwrap();
        let m = crate::curation::dedup::load_matrix(
            &out.join("heads.safetensors"),
            Some("toy"),
            Some(&out.join("toy.names")),
            "",
        )
        .unwrap();
        assert_eq!((m.names, m.data), (set.class_names, head.weights));
        assert!(std::fs::read_to_string(out.join("toy.unmeasured.tsv"))
            .unwrap()
            .contains("bad.jpg\tno face found"));
        std::fs::remove_dir_all(out).unwrap();
    }

    #[test]
    fn bad_inputs_are_refused() {
        let (f, l) = clusters(5);
        let none = &|_, _| {};
        assert!(fit(&f[..7], &l, 3, 4, &quick(), none).is_err());
        assert!(fit(&f, &l, 2, 4, &quick(), none).is_err(), "label 2 with two classes");
        let mut nan = f.clone();
        nan[3] = f32::NAN;
        assert!(fit(&nan, &l, 3, 4, &quick(), none).is_err());
        let bad_m = HeadFitConfig { m: 7, ..quick() };
        assert!(fit(&f, &l, 3, 4, &bad_m, none).is_err());
    }
}
