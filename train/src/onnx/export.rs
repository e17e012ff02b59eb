//! Writes the trained backbone as an ONNX graph (through the protobuf types
//! that tract-onnx exposes) and its model card, so that the device runs it
//! with tract like any other model: Conv + PRelu per unit, Add for residuals,
//! Flatten and Gemm for fc5, with the weights as initializers.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result};
use candle_nn::VarMap;
use normgate::card::{ChannelOrder, DetectorCard, EmbedderCard, ModelCard, RefinerCrop};
use tract_onnx::pb::tensor_proto::DataType;
use tract_onnx::pb::tensor_shape_proto::{dimension, Dimension};
use tract_onnx::pb::type_proto::{self, Value};
use tract_onnx::pb::{
    attribute_proto::AttributeType, AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};

use crate::backbone::network::BackboneConfig;
use crate::onnx::graph::{int, write};

/// Name of the graph's input.
pub const INPUT: &str = "input";
/// Name of the feature output.
pub const OUTPUT: &str = "fc5";

/// Named weights: shape and values.
pub type Weights = HashMap<String, (Vec<usize>, Vec<f32>)>;

/// Builds a graph node by node, naming every intermediate value.
struct Builder<'a> {
    weights: &'a Weights,
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    count: usize,
}

fn ints(name: &str, values: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Ints as i32,
        ints: values.to_vec(),
        ..Default::default()
    }
}

impl Builder<'_> {
    fn node(&mut self, op: &str, inputs: &[&str], attributes: Vec<AttributeProto>, output: Option<&str>) -> String {
        self.count += 1;
        let out = output.map_or_else(|| format!("{}_{}", op.to_lowercase(), self.count), String::from);
        self.nodes.push(NodeProto {
            name: format!("{op}_{}", self.count),
            op_type: op.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.clone()],
            attribute: attributes,
            ..Default::default()
        });
        out
    }

    /// Adds a weight as an initializer, optionally reshaped; returns its name.
    fn weight(&mut self, name: &str, shape: Option<Vec<usize>>) -> Result<String> {
        let (dims, values) = self
            .weights
            .get(name)
            .with_context(|| format!("the checkpoint lacks {name}"))?;
        self.initializers.push(TensorProto {
            name: name.into(),
            dims: shape.as_ref().unwrap_or(dims).iter().map(|&d| d as i64).collect(),
            data_type: DataType::Float as i32,
            raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        });
        Ok(name.into())
    }

    /// 3x3 convolution with bias, padding 1.
    fn conv(&mut self, prefix: &str, x: &str, stride: i64) -> Result<String> {
        let w = self.weight(&format!("{prefix}.weight"), None)?;
        let b = self.weight(&format!("{prefix}.bias"), None)?;
        let attrs = vec![
            ints("kernel_shape", &[3, 3]),
            ints("pads", &[1, 1, 1, 1]),
            ints("strides", &[stride, stride]),
        ];
        Ok(self.node("Conv", &[x, &w, &b], attrs, None))
    }

    /// 3x3 convolution with bias, then PReLU.
    fn unit(&mut self, prefix: &str, x: &str, stride: i64) -> Result<String> {
        let y = self.conv(prefix, x, stride)?;
        let channels = self.weights[&format!("{prefix}.bias")].1.len();
        let slope = self.weight(&format!("{prefix}.prelu.weight"), Some(vec![channels, 1, 1]))?;
        Ok(self.node("PRelu", &[&y, &slope], vec![], None))
    }

    /// `units` residual units `x + unit_b(unit_a(x))` named `{prefix}.unit{u}.a|b`.
    fn residual_units(&mut self, prefix: &str, mut x: String, units: usize) -> Result<String> {
        for u in 0..units {
            let a = self.unit(&format!("{prefix}.unit{u}.a"), &x, 1)?;
            let c = self.unit(&format!("{prefix}.unit{u}.b"), &a, 1)?;
            x = self.node("Add", &[&x, &c], vec![], None);
        }
        Ok(x)
    }

    /// An int64 constant (e.g. a shape for Reshape); returns its name.
    fn int64s(&mut self, name: &str, values: &[i64]) -> String {
        self.initializers.push(TensorProto {
            name: name.into(),
            dims: vec![values.len() as i64],
            data_type: DataType::Int64 as i32,
            raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        });
        name.into()
    }
}

fn value_info(name: &str, dims: &[Option<i64>]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Some(v) => dimension::Value::DimValue(*v),
                None => dimension::Value::DimParam("batch".into()),
            }),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(Value::TensorType(type_proto::Tensor {
                elem_type: DataType::Float as i32,
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The variables under `prefix.` (all of them for an empty prefix) with their shapes and values.
pub fn collect_weights(map: &VarMap, prefix: &str) -> Result<Weights> {
    let data = map.data().lock().expect("var map");
    let under = if prefix.is_empty() {
        String::new()
    } else {
        format!("{prefix}.")
    };
    data.iter()
        .filter_map(|(k, v)| k.strip_prefix(&under).map(|short| (short.to_string(), v)))
        .map(|(k, v)| Ok((k, (v.dims().to_vec(), v.flatten_all()?.to_vec1::<f32>()?))))
        .collect()
}

/// The ONNX model of a backbone with these weights (names as the backbone creates them).
pub fn backbone_model(
    config: &BackboneConfig,
    weights: &HashMap<String, (Vec<usize>, Vec<f32>)>,
) -> Result<ModelProto> {
    let mut b = Builder {
        weights,
        nodes: Vec::new(),
        initializers: Vec::new(),
        count: 0,
    };
    let mut x = b.unit("stem", INPUT, 2)?;
    for (s, &units) in config.units.iter().enumerate() {
        x = b.unit(&format!("stage{s}.down"), &x, 2)?;
        x = b.residual_units(&format!("stage{s}"), x, units)?;
    }
    let flat = b.node("Flatten", &[&x], vec![int("axis", 1)], None);
    let (w, bias) = (b.weight("fc5.weight", None)?, b.weight("fc5.bias", None)?);
    b.node("Gemm", &[&flat, &w, &bias], vec![int("transB", 1)], Some(OUTPUT));
    let (h, w) = (config.height as i64, config.width as i64);
    let input = value_info(INPUT, &[None, Some(3), Some(h), Some(w)]);
    let output = value_info(OUTPUT, &[None, Some(config.feature_dim as i64)]);
    Ok(model_proto("normgate-backbone", b, input, vec![output]))
}

/// Shared header of an exported graph.
fn model_proto(name: &str, b: Builder, input: ValueInfoProto, output: Vec<ValueInfoProto>) -> ModelProto {
    ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: 13,
        }],
        producer_name: "normgate-train".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        graph: Some(GraphProto {
            name: name.into(),
            node: b.nodes,
            initializer: b.initializers,
            input: vec![input],
            output,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The ONNX model of a face detector with these weights (names as
/// `FaceNet` creates them), batch 1, outputs `loc`, `conf` (softmaxed) and
/// `landmarks` in RetinaFace's layout.
pub fn detector_model(config: &crate::detector::network::DetectorConfig, weights: &Weights) -> Result<ModelProto> {
    let mut b = Builder {
        weights,
        nodes: Vec::new(),
        initializers: Vec::new(),
        count: 0,
    };
    let mut x = INPUT.to_string();
    let mut levels = Vec::new();
    for (i, &units) in config.units.iter().enumerate() {
        x = b.unit(&format!("down{i}"), &x, 2)?;
        x = b.residual_units(&format!("stage{i}"), x, units)?;
        if i >= 2 {
            levels.push(x.clone());
        }
    }
    let mut outputs = Vec::new();
    for (name, per_anchor) in crate::detector::network::HEADS {
        let shape = b.int64s(&format!("{name}_shape"), &[1, -1, per_anchor as i64]);
        let parts: Vec<String> = levels
            .iter()
            .enumerate()
            .map(|(level, feature)| {
                let y = b.conv(&format!("level{level}.{name}"), feature, 1)?;
                let t = b.node("Transpose", &[&y], vec![ints("perm", &[0, 2, 3, 1])], None);
                Ok(b.node("Reshape", &[&t, &shape], vec![], None))
            })
            .collect::<Result<_>>()?;
        let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
        let joined = if name == "conf" {
            let logits = b.node("Concat", &refs, vec![int("axis", 1)], None);
            b.node("Softmax", &[&logits], vec![int("axis", -1)], Some(name))
        } else {
            b.node("Concat", &refs, vec![int("axis", 1)], Some(name))
        };
        let anchors = config.total_anchors() as i64;
        outputs.push(value_info(&joined, &[Some(1), Some(anchors), Some(per_anchor as i64)]));
    }
    let side = config.input as i64;
    let input = value_info(INPUT, &[Some(1), Some(3), Some(side), Some(side)]);
    Ok(model_proto("normgate-detector", b, input, outputs))
}

/// A card for RGB input normalised as `(x - 127.5) / 128`, with neither kind's section yet.
fn rgb_card(width: usize, height: usize, batch: usize) -> ModelCard {
    ModelCard {
        input: INPUT.into(),
        width: width as u32,
        height: height as u32,
        batch,
        channels: ChannelOrder::Rgb,
        mean: [127.5; 3],
        std: [128.0; 3],
        precision: normgate::card::Precision::Fp32,
        variants: Default::default(),
        embedder: None,
        detector: None,
        refiner: None,
    }
}

/// The card of an exported detector (square input, batch 1, anchors of
/// `anchor_sizes` per level at strides 8, 16, 32).
pub fn detector_card(config: &crate::detector::network::DetectorConfig, anchor_sizes: Vec<Vec<f32>>) -> ModelCard {
    ModelCard {
        detector: Some(DetectorCard {
            layout: "retinaface".into(),
            loc: "loc".into(),
            scores: "conf".into(),
            landmarks: "landmarks".into(),
            strides: vec![8, 16, 32],
            anchor_sizes,
            variance: [0.1, 0.2],
        }),
        ..rgb_card(config.input, config.input, 1)
    }
}

/// The card of an exported backbone (112x96 SphereFace crops, free batch).
pub fn backbone_card(config: &BackboneConfig, recommended_threshold: Option<f32>) -> ModelCard {
    ModelCard {
        embedder: Some(EmbedderCard {
            output: OUTPUT.into(),
            template: "sphereface_112x96".into(),
            recommended_threshold,
        }),
        ..rgb_card(config.width, config.height, 0)
    }
}

/// The card of an exported landmark refiner (square input, free batch). It
/// asks for the mirrored reading too: trained on mirrored crops, the refiner
/// errs differently on the mirror image, and the average cut the landmark
/// error from 7.97 % to 7.67 % (docs/MODEL_HISTORY.md) for a second 36-MFLOP run.
pub fn refiner_card(config: &BackboneConfig, crop: RefinerCrop, expand: f32) -> ModelCard {
    ModelCard {
        refiner: Some(normgate::card::RefinerCard {
            output: OUTPUT.into(),
            crop,
            // An aligned square of side 1 is the default and stays unwritten.
            expand: (crop == RefinerCrop::Box || expand != 1.0).then_some(expand),
            mirror: true,
            next: None,
        }),
        ..rgb_card(config.width, config.height, 0)
    }
}

/// Largest absolute and relative (to the largest feature value) difference
/// between tract on an exported file and candle on the same crops.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct ExportCheck {
    /// Crops compared.
    pub crops: usize,
    /// max |tract - candle|.
    pub max_abs_diff: f32,
    /// max |tract - candle| / max |candle|.
    pub max_rel_diff: f32,
}

/// Running maximum of |tract - candle| and of |candle| over compared outputs.
#[derive(Default)]
struct Divergence {
    max_abs: f32,
    scale: f32,
}

impl Divergence {
    fn add(&mut self, tract: &[f32], candle: &[f32]) {
        for (x, y) in tract.iter().zip(candle) {
            self.max_abs = self.max_abs.max((x - y).abs());
            self.scale = self.scale.max(y.abs());
        }
    }

    fn check(self, crops: usize) -> ExportCheck {
        ExportCheck {
            crops,
            max_abs_diff: self.max_abs,
            max_rel_diff: self.max_abs / self.scale.max(f32::MIN_POSITIVE),
        }
    }
}

/// Exports a training run's backbone to `path` (and its card) and checks the
/// written file against candle on the first `n` crops of a cache.
pub fn export_run(run: &Path, path: &Path, cache: &crate::data::prepare::Cache, n: usize) -> Result<ExportCheck> {
    use candle_core::{Device, Tensor};
    let (net, map, config) = crate::backbone::train::load_backbone(run)?;
    let backbone = config.backbone.config();
    write(
        &backbone_model(&backbone, &collect_weights(&map, "backbone")?)?,
        &backbone_card(&backbone, None),
        path,
    )?;
    let embedder = normgate::embedder::Embedder::load(path, &ModelCard::path_for(path), 16)?;
    let n = n.min(cache.len());
    let crops: Vec<image::RgbImage> = (0..n).map(|i| cache.sphereface_crop(i)).collect();
    let tract = embedder.embed(&crops)?;
    let input: Vec<f32> = (0..n)
        .flat_map(|i| crate::backbone::recipe::student_input(cache, i, false))
        .collect();
    let candle = net
        .forward(&Tensor::from_vec(input, (n, 3, 112, 96), &Device::Cpu)?)?
        .to_vec2::<f32>()?;
    let mut divergence = Divergence::default();
    for (a, b) in tract.iter().zip(&candle) {
        divergence.add(a, b);
    }
    Ok(divergence.check(n))
}

/// Exports a detector training run to `path` (and its card) and checks the
/// written file against candle on `frames` (at the network's input size).
pub fn export_detector_run(run: &Path, path: &Path, frames: &[image::RgbImage]) -> Result<ExportCheck> {
    use candle_core::{Device, Tensor};
    let (net, map, config) = crate::detector::train::load_detector(run)?;
    let network = config.network;
    write(
        &detector_model(&network, &collect_weights(&map, "")?)?,
        &detector_card(&network, config.anchor_sizes.clone()),
        path,
    )?;
    let card = ModelCard::load(&ModelCard::path_for(path))?;
    let tract = normgate::runtime::Network::load(path, &card, 1, &["loc", "conf", "landmarks"])?;
    let mut divergence = Divergence::default();
    let side = network.input;
    for frame in frames {
        let outputs = tract.run(&[card.input_tensor(frame)])?;
        let x = Tensor::from_vec(crate::detector::train::chw(frame), (1, 3, side, side), &Device::Cpu)?;
        let [loc, conf, landmarks] = net.forward(&x)?;
        let conf = crate::detector::network::FaceNet::probabilities(&conf)?;
        for (t, c) in outputs.iter().zip([loc, conf, landmarks]) {
            divergence.add(t, &c.flatten_all()?.to_vec1::<f32>()?);
        }
    }
    Ok(divergence.check(frames.len()))
}

/// Exports a landmark refiner run to `path` (and its card, naming `next`
/// as the refiner that reads its points again) and checks the written file
/// against candle on the middle square of each of `frames`.
pub fn export_refiner_run(
    run: &Path,
    path: &Path,
    frames: &[image::RgbImage],
    next: Option<std::path::PathBuf>,
) -> Result<ExportCheck> {
    use candle_core::{Device, Tensor};
    let (net, map, config) = crate::landmarks::train::load_refiner(run)?;
    let network = config.network.config();
    let mut card = refiner_card(&network, config.crop, config.card_expand());
    if let Some(r) = card.refiner.as_mut() {
        r.next = next;
    }
    write(
        &backbone_model(&network, &collect_weights(&map, "refiner")?)?,
        &card,
        path,
    )?;
    let card = ModelCard::load(&ModelCard::path_for(path))?;
    let tract = normgate::runtime::Network::load(path, &card, 1, &[OUTPUT])?;
    let mut divergence = Divergence::default();
    let side = network.width;
    for frame in frames {
        let (w, h) = (frame.width() as f32, frame.height() as f32);
        let region = normgate::landmarks::Region::around([0.0, 0.0, w, h], 1.0);
        let crop = region.crop(frame, side as u32)?;
        let outputs = tract.run(&[card.input_tensor(&crop)])?;
        let x = Tensor::from_vec(crate::detector::train::chw(&crop), (1, 3, side, side), &Device::Cpu)?;
        divergence.add(&outputs[0], &net.forward(&x)?.flatten_all()?.to_vec1::<f32>()?);
    }
    Ok(divergence.check(frames.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::vars::SeededVars;
    use crate::onnx::graph::{import_weights, write_card};
    use crate::testing::{exported_backbone, tiny_backbone};
    use candle_core::{Device, Tensor};
    use normgate::embedder::Embedder;

    #[test]
    fn a_written_card_holds_short_decimals_in_field_order_and_reads_back_the_same() {
        let square = BackboneConfig {
            height: 24,
            ..tiny_backbone([4, 8, 8], [1, 1, 1], 10)
        };
        let mut card = refiner_card(&square, RefinerCrop::Landmarks, 0.8);
        card.mean = [127.5, 0.1, 0.3];
        let dir = std::env::temp_dir().join(format!("normgate-card-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("refiner.toml");
        write_card(&card, &path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("expand = 0.8\n"), "{text}");
        assert!(text.contains("mean = [127.5, 0.1, 0.3]"), "{text}");
        assert!(text.starts_with("input = "), "the card's own order, not sorted: {text}");
        assert_eq!(ModelCard::load(&path).unwrap(), card);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn tract_runs_the_exported_detector_like_candle() {
        use crate::detector::network::FaceNet;
        let config = crate::testing::tiny_detector();
        let map = VarMap::new();
        let net = FaceNet::new(config, SeededVars::builder(&map, 4, &Device::Cpu).pp("detector")).unwrap();
        let path = std::env::temp_dir().join(format!("normgate-export-det-{}/det.onnx", std::process::id()));
        let model = detector_model(&config, &collect_weights(&map, "detector").unwrap()).unwrap();
        let sizes = vec![vec![8.0, 16.0], vec![32.0, 48.0], vec![64.0, 96.0]];
        write(&model, &detector_card(&config, sizes), &path).unwrap();
        let card = ModelCard::load(&ModelCard::path_for(&path)).unwrap();
        let network = normgate::runtime::Network::load(&path, &card, 1, &["loc", "conf", "landmarks"]).unwrap();
        let image = image::RgbImage::from_fn(64, 64, |x, y| {
            image::Rgb([(x * 4) as u8, (y * 4) as u8, ((x + y) * 2) as u8])
        });
        let input = card.input_tensor(&image);
        let tract = network.run(std::slice::from_ref(&input)).unwrap();
        let x = Tensor::from_vec(input, (1, 3, 64, 64), &Device::Cpu).unwrap();
        let [loc, conf, ldm] = net.forward(&x).unwrap();
        let conf = FaceNet::probabilities(&conf).unwrap();
        for (t, c) in tract.iter().zip([loc, conf, ldm]) {
            let c = c.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(t.len(), c.len());
            let scale = c.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let diff = t.iter().zip(&c).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(diff <= 1e-4 * scale.max(1e-6), "max difference {diff} at scale {scale}");
        }
        // The device's detector loads it with its card.
        assert!(normgate::detector::Detector::load(&path, &ModelCard::path_for(&path)).is_ok());
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn the_device_runs_an_exported_refiner_like_candle() {
        use normgate::detector::Face;
        use normgate::landmarks::{Refiner, Region};
        let mut config = tiny_backbone([4, 6, 8], [1, 0, 1], 10);
        (config.height, config.width) = (32, 32);
        let path = std::env::temp_dir().join(format!("normgate-export-ref-{}/refiner.onnx", std::process::id()));
        let (net, _) = exported_backbone(
            config,
            5,
            "refiner",
            &refiner_card(&config, RefinerCrop::Box, 1.25),
            &path,
        );
        let refiner = Refiner::load(&path, &ModelCard::path_for(&path)).unwrap();
        let frame = image::RgbImage::from_fn(120, 90, |x, y| {
            image::Rgb([(x * 2) as u8, (y * 2) as u8, (x + y) as u8])
        });
        let face = Face {
            bbox: [30.0, 20.0, 70.0, 70.0],
            score: 0.9,
            landmarks: [[0.0; 2]; 5],
        };
        let refined = refiner.landmarks(&frame, &face).unwrap();
        // candle on the same crop and on its mirror image (the card asks for
        // both readings), mapped back to the frame and averaged.
        let region = Region::around(face.bbox, 1.25);
        let crop = region.crop(&frame, 32).unwrap();
        let read = |crop: &image::RgbImage| {
            let x = Tensor::from_vec(crate::detector::train::chw(crop), (1, 3, 32, 32), &Device::Cpu).unwrap();
            net.forward(&x)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        let (plain, mirrored) = (read(&crop), read(&image::imageops::flip_horizontal(&crop)));
        for (k, point) in refined.iter().enumerate() {
            let m = normgate::landmarks::MIRRORED[k];
            let expected = region.from_shares([
                (plain[2 * k] + 1.0 - mirrored[2 * m]) / 2.0,
                (plain[2 * k + 1] + mirrored[2 * m + 1]) / 2.0,
            ]);
            assert!(
                (point[0] - expected[0]).abs() < 1e-3 && (point[1] - expected[1]).abs() < 1e-3,
                "point {k}: {point:?} vs {expected:?}"
            );
        }
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn tract_runs_the_exported_graph_like_candle() {
        let mut config = tiny_backbone([4, 6, 8], [1, 0, 2], 5);
        (config.height, config.width) = (112, 96);
        let path = std::env::temp_dir().join(format!("normgate-export-{}/tiny.onnx", std::process::id()));
        let (net, _) = exported_backbone(config, 3, "backbone", &backbone_card(&config, None), &path);
        let embedder = Embedder::load(&path, &ModelCard::path_for(&path), 2).unwrap();
        let crops: Vec<image::RgbImage> = (0..3u32)
            .map(|k| {
                image::RgbImage::from_fn(96, 112, |x, y| {
                    image::Rgb([(x * 2 + k) as u8, (y * 2) as u8, ((x + y) * k) as u8])
                })
            })
            .collect();
        let tract = embedder.embed(&crops).unwrap();
        let input: Vec<f32> = crops.iter().flat_map(|c| embedder.card().input_tensor(c)).collect();
        let x = Tensor::from_vec(input, (3, 3, 112, 96), &Device::Cpu).unwrap();
        let candle = net.forward(&x).unwrap().to_vec2::<f32>().unwrap();
        for (a, b) in tract.iter().zip(&candle) {
            let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let diff = a.iter().zip(b).fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(diff <= 1e-4 * scale.max(1e-6), "max difference {diff} at scale {scale}");
        }
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn an_imported_model_file_gives_back_the_exported_network_and_refuses_another() {
        let config = tiny_backbone([4, 6, 8], [1, 0, 1], 10);
        let path = std::env::temp_dir().join(format!("normgate-import-{}/tiny.onnx", std::process::id()));
        let (exported, _) = exported_backbone(config, 3, "refiner", &backbone_card(&config, None), &path);
        // Another seed: other weights until the file's are imported.
        let build = |config, seed| {
            let map = VarMap::new();
            let vb = SeededVars::builder(&map, seed, &Device::Cpu);
            let net = crate::backbone::network::Backbone::new(
                config,
                crate::backbone::network::ConvImpl::Fast,
                vb.pp("refiner"),
            )
            .unwrap();
            (net, map)
        };
        let (net, map) = build(config, 4);
        let x = Tensor::rand(0f32, 1.0, (2, 3, 28, 24), &Device::Cpu).unwrap();
        let outputs = |n: &crate::backbone::network::Backbone| {
            n.forward(&x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
        };
        assert_ne!(outputs(&net), outputs(&exported));
        import_weights(&map, "refiner", &path).unwrap();
        assert_eq!(outputs(&net), outputs(&exported));
        // A wider or a deeper network is not this file's.
        for other in [
            tiny_backbone([4, 8, 8], [1, 0, 1], 10),
            tiny_backbone([4, 6, 8], [1, 1, 1], 10),
        ] {
            let err = import_weights(&build(other, 4).1, "refiner", &path)
                .unwrap_err()
                .to_string();
            assert!(err.contains("not this network"), "{err}");
        }
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }
}
