//! Helpers shared by this crate's unit tests.

use candle_core::Tensor;

use crate::backbone::network::BackboneConfig;
use crate::nn::optim::Sgd;

/// Every weight an optimiser steps, variable by variable (to compare runs).
pub fn sgd_weights(sgd: &Sgd) -> Vec<Vec<f32>> {
    sgd.vars
        .iter()
        .map(|(_, v)| v.flatten_all().unwrap().to_vec1::<f32>().unwrap())
        .collect()
}

/// The largest absolute value of a tensor.
pub fn max_abs(t: &Tensor) -> f32 {
    t.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
}

/// The largest absolute difference of two equally shaped tensors.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    max_abs(&(a - b).unwrap())
}

/// A backbone small enough for unit tests: 28x24 input, stem 4.
pub fn tiny_backbone(widths: [usize; 3], units: [usize; 3], feature_dim: usize) -> BackboneConfig {
    BackboneConfig {
        height: 28,
        width: 24,
        stem: 4,
        widths,
        units,
        feature_dim,
    }
}

/// A detector small enough for unit tests: 64x64 input, two anchors per cell.
pub fn tiny_detector() -> crate::detector::network::DetectorConfig {
    crate::detector::network::DetectorConfig {
        input: 64,
        widths: [4, 6, 8, 8, 8],
        units: [0, 1, 0, 0, 0],
        anchors: 2,
    }
}

/// A face box with plausible landmarks inside it (eyes, nose, mouth corners).
pub fn synthetic_face(bbox: [f32; 4]) -> normgate::detector::Face {
    let [x1, y1, x2, y2] = bbox;
    let (w, h) = (x2 - x1, y2 - y1);
    normgate::detector::Face {
        bbox,
        score: 1.0,
        landmarks: [
            [x1 + 0.3 * w, y1 + 0.4 * h],
            [x1 + 0.7 * w, y1 + 0.4 * h],
            [x1 + 0.5 * w, y1 + 0.6 * h],
            [x1 + 0.35 * w, y1 + 0.8 * h],
            [x1 + 0.65 * w, y1 + 0.8 * h],
        ],
    }
}

/// A random network of `config` (seeded, its variables under `prefix`),
/// exported to `path` with `card`: the candle network and the ONNX model,
/// for tests that compare the two or transform the model further.
pub fn exported_backbone(
    config: BackboneConfig,
    seed: u64,
    prefix: &str,
    card: &normgate::card::ModelCard,
    path: &std::path::Path,
) -> (crate::backbone::network::Backbone, tract_onnx::pb::ModelProto) {
    use crate::backbone::network::{Backbone, ConvImpl};
    use crate::onnx::export::{backbone_model, collect_weights};
    use crate::onnx::graph::write;
    let map = candle_nn::VarMap::new();
    let vb = crate::nn::vars::SeededVars::builder(&map, seed, &candle_core::Device::Cpu);
    let net = Backbone::new(config, ConvImpl::Fast, vb.pp(prefix)).unwrap();
    let model = backbone_model(&config, &collect_weights(&map, prefix).unwrap()).unwrap();
    write(&model, card, path).unwrap();
    (net, model)
}

/// A tiny random SphereFace-shaped embedder (112x96 input, 4-d feature)
/// exported to `dir/tiny.onnx` with its card, for tests of the curation
/// commands on aligned crops.
pub fn tiny_embedder(dir: &std::path::Path) -> std::path::PathBuf {
    let mut config = tiny_backbone([4, 4, 4], [0, 0, 0], 4);
    (config.height, config.width) = (112, 96);
    let model = dir.join("tiny.onnx");
    let card = crate::onnx::export::backbone_card(&config, None);
    exported_backbone(config, 1, "backbone", &card, &model);
    model
}
