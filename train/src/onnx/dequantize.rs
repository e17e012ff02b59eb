//! The float form of an int8 QOperator file that `quantize` wrote: each
//! `QLinearConv` and `QLinearMatMul`, with the `QuantizeLinear` before it and
//! the `DequantizeLinear` after it, becomes the float `Conv` or `Gemm` it
//! came from, with the int8 weights times their scales (and the int32 bias
//! times its scale) as float weights. The result computes what the int8
//! file computes without rounding the activations: the fp32 variant of a
//! shipped int8 model whose float run is gone, for CPUs whose float kernels
//! are faster than their int8 ones.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use anyhow::{bail, Context, Result};
use normgate::card::{ModelCard, Precision};
use tract_onnx::pb::tensor_proto::DataType;
use tract_onnx::pb::{ModelProto, NodeProto, TensorProto};

use crate::onnx::graph::{floats_of, int, read_model, write};
use crate::onnx::quantize::sibling;

fn raw_of(t: &TensorProto, data_type: DataType) -> Result<&[u8]> {
    if t.data_type != data_type as i32 || t.raw_data.is_empty() {
        bail!("initializer {} is not {data_type:?} raw data", t.name);
    }
    Ok(&t.raw_data)
}

fn i8s_of(t: &TensorProto) -> Result<Vec<i8>> {
    Ok(raw_of(t, DataType::Int8)?.iter().map(|&b| b as i8).collect())
}

fn i32s_of(t: &TensorProto) -> Result<Vec<i32>> {
    Ok(raw_of(t, DataType::Int32)?
        .chunks_exact(4)
        .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

fn floats(name: &str, dims: &[i64], values: &[f32]) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: DataType::Float as i32,
        raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

/// The name `quantize` derived `derived` from (`w_quantized` -> `w`).
fn original(derived: &str, suffix: &str) -> String {
    derived.strip_suffix(suffix).unwrap_or(derived).to_string()
}

struct Graph<'a> {
    initializers: HashMap<&'a str, &'a TensorProto>,
    /// Float input of each `QuantizeLinear` output.
    quantized_from: HashMap<&'a str, &'a str>,
    /// Float output of each `DequantizeLinear` input.
    dequantized_to: HashMap<&'a str, &'a str>,
}

impl<'a> Graph<'a> {
    fn init(&self, name: &str) -> Result<&'a TensorProto> {
        self.initializers
            .get(name)
            .copied()
            .with_context(|| format!("initializer {name} not found"))
    }

    fn scalar(&self, name: &str) -> Result<f32> {
        floats_of(self.init(name)?)?
            .first()
            .copied()
            .with_context(|| format!("{name} is empty"))
    }

    /// The float input and output of a QLinear node.
    fn ends(&self, n: &NodeProto) -> Result<(String, String)> {
        let x = self
            .quantized_from
            .get(n.input[0].as_str())
            .with_context(|| format!("{}: its input is not quantized by QuantizeLinear", n.name))?;
        let y = self
            .dequantized_to
            .get(n.output[0].as_str())
            .with_context(|| format!("{}: its output is not dequantized by DequantizeLinear", n.name))?;
        Ok((x.to_string(), y.to_string()))
    }

    /// Per-output-channel weights `(q - zero point) * scale`, channel `c` of element `i` given by `channel`.
    fn weights(&self, n: &NodeProto, first: usize, channel: impl Fn(usize) -> usize) -> Result<Vec<f32>> {
        let q = i8s_of(self.init(&n.input[first])?)?;
        let scales = floats_of(self.init(&n.input[first + 1])?)?;
        let zero_points = i8s_of(self.init(&n.input[first + 2])?)?;
        Ok(q.iter()
            .enumerate()
            .map(|(i, &v)| {
                let c = channel(i);
                (f32::from(v) - f32::from(zero_points[c])) * scales[c]
            })
            .collect())
    }
}

/// The float graph of a QOperator `model`.
pub fn dequantize(model: &ModelProto) -> Result<ModelProto> {
    let graph = model.graph.as_ref().context("the model has no graph")?;
    let is_qlinear = |n: &NodeProto| matches!(n.op_type.as_str(), "QLinearConv" | "QLinearMatMul");
    let qlinear_outputs: HashSet<&str> = graph
        .node
        .iter()
        .filter(|n| is_qlinear(n))
        .map(|n| n.output[0].as_str())
        .collect();
    if qlinear_outputs.is_empty() {
        bail!("no QLinearConv or QLinearMatMul: not a QOperator file");
    }
    let g = Graph {
        initializers: graph.initializer.iter().map(|t| (t.name.as_str(), t)).collect(),
        quantized_from: graph
            .node
            .iter()
            .filter(|n| n.op_type == "QuantizeLinear")
            .map(|n| (n.output[0].as_str(), n.input[0].as_str()))
            .collect(),
        dequantized_to: graph
            .node
            .iter()
            .filter(|n| n.op_type == "DequantizeLinear" && qlinear_outputs.contains(n.input[0].as_str()))
            .map(|n| (n.input[0].as_str(), n.output[0].as_str()))
            .collect(),
    };
    let mut nodes = Vec::new();
    let mut added = Vec::new();
    for n in &graph.node {
        match n.op_type.as_str() {
            "QuantizeLinear" => {}
            "DequantizeLinear" if g.dequantized_to.contains_key(n.input[0].as_str()) => {}
            "QLinearConv" => {
                let (x, y) = g.ends(n)?;
                let w = g.init(&n.input[3])?;
                let per = w.dims.iter().skip(1).product::<i64>() as usize;
                let weight = original(&n.input[3], "_quantized");
                added.push(floats(&weight, &w.dims, &g.weights(n, 3, |i| i / per)?));
                let mut inputs = vec![x, weight];
                if let Some(b) = n.input.get(8) {
                    let x_scale = g.scalar(&n.input[1])?;
                    let w_scales = floats_of(g.init(&n.input[4])?)?;
                    let bias: Vec<f32> = i32s_of(g.init(b)?)?
                        .iter()
                        .zip(&w_scales)
                        .map(|(&v, s)| v as f32 * x_scale * s)
                        .collect();
                    let name = original(b, "_int32");
                    added.push(floats(&name, &[bias.len() as i64], &bias));
                    inputs.push(name);
                }
                nodes.push(NodeProto {
                    name: original(&n.name, "_quantized"),
                    op_type: "Conv".into(),
                    input: inputs,
                    output: vec![y],
                    attribute: n.attribute.clone(),
                    ..Default::default()
                });
            }
            "QLinearMatMul" => {
                let (x, y) = g.ends(n)?;
                let b = g.init(&n.input[3])?;
                let (k, m) = (b.dims[0] as usize, b.dims[1] as usize);
                // B is [k, m] with one scale per column; Gemm takes it as [m, k] with transB.
                let kxm = g.weights(n, 3, |i| i % m)?;
                let mxk: Vec<f32> = (0..m * k).map(|i| kxm[(i % k) * m + i / k]).collect();
                let weight = original(&n.input[3], "_quantized");
                added.push(floats(&weight, &[m as i64, k as i64], &mxk));
                nodes.push(NodeProto {
                    name: original(&n.name, "_quantized"),
                    op_type: "Gemm".into(),
                    input: vec![x, weight],
                    output: vec![y],
                    attribute: vec![int("transB", 1)],
                    ..Default::default()
                });
            }
            "DequantizeLinear" => bail!(
                "{}: a DequantizeLinear of a QDQ file; only QOperator files are read",
                n.name
            ),
            _ => nodes.push(n.clone()),
        }
    }
    let used: HashSet<&str> = nodes.iter().flat_map(|n| n.input.iter().map(String::as_str)).collect();
    let mut initializer: Vec<TensorProto> = graph
        .initializer
        .iter()
        .filter(|t| used.contains(t.name.as_str()) && !added.iter().any(|a| a.name == t.name))
        .cloned()
        .collect();
    initializer.extend(added);
    let mut out = model.clone();
    let og = out.graph.as_mut().expect("checked above");
    og.node = nodes;
    og.initializer = initializer;
    out.producer_name = "normgate-train dequantize".into();
    Ok(out)
}

/// What `dequantize_file` did.
#[derive(Debug, serde::Serialize)]
pub struct DequantizeReport {
    /// Size of the int8 model, bytes.
    pub int8_bytes: u64,
    /// Size of the float model, bytes.
    pub float_bytes: u64,
}

/// Writes the float form of the QOperator file `model` (card beside it) to `out`, its card copied beside it.
pub fn dequantize_file(model: &Path, out: &Path) -> Result<DequantizeReport> {
    let card = ModelCard {
        precision: Precision::Fp32,
        variants: sibling(model, out, Precision::Int8),
        ..ModelCard::load(&ModelCard::path_for(model))?
    };
    write(&dequantize(&read_model(model)?)?, &card, out)?;
    Ok(DequantizeReport {
        int8_bytes: std::fs::metadata(model)?.len(),
        float_bytes: std::fs::metadata(out)?.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::export::backbone_card;
    use crate::onnx::quantize::{calibrate, calibration_tensors, quantize, Calibration, Format};
    use crate::testing::{exported_backbone, tiny_backbone};
    use image::RgbImage;
    use normgate::embedder::Embedder;
    use normgate_core::norm::{cosine, l2_norm};

    #[test]
    fn the_float_form_of_a_qoperator_file_keeps_its_weights_and_outputs() {
        let mut config = tiny_backbone([8, 8, 16], [1, 1, 1], 16);
        (config.height, config.width) = (112, 96);
        let dir = std::env::temp_dir().join(format!("normgate-dequantize-{}", std::process::id()));
        let float_path = dir.join("float.onnx");
        let card = backbone_card(&config, None);
        let (_, model) = exported_backbone(config, 5, "backbone", &card, &float_path);
        let crops: Vec<RgbImage> = (0..12u32)
            .map(|k| {
                RgbImage::from_fn(96, 112, |x, y| {
                    image::Rgb([((x * 7 + y * k) % 256) as u8, (y * 3) as u8, k as u8 * 9])
                })
            })
            .collect();
        let names = calibration_tensors(&model, Format::Qoperator).unwrap();
        let ranges = calibrate(&float_path, &card, &crops, &names, Calibration::MinMax).unwrap();
        let int8_path = dir.join("int8.onnx");
        write(&quantize(&model, ranges, Format::Qoperator).unwrap(), &card, &int8_path).unwrap();
        let back_path = dir.join("back.onnx");
        dequantize_file(&int8_path, &back_path).unwrap();

        // Same initializer names and shapes as the float export; values within half a step.
        let back = read_model(&back_path).unwrap();
        let original: HashMap<String, TensorProto> = model
            .graph
            .as_ref()
            .unwrap()
            .initializer
            .iter()
            .map(|t| (t.name.clone(), t.clone()))
            .collect();
        let restored = &back.graph.as_ref().unwrap().initializer;
        assert_eq!(restored.len(), original.len());
        for t in restored {
            let o = &original[&t.name];
            assert_eq!(t.dims, o.dims, "{}", t.name);
            let (a, b) = (floats_of(t).unwrap(), floats_of(o).unwrap());
            let largest = b.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let worst = a.iter().zip(&b).fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(worst <= largest / 127.0, "{}: {worst} vs {largest}", t.name);
        }
        assert!(back
            .graph
            .as_ref()
            .unwrap()
            .node
            .iter()
            .all(|n| !n.op_type.contains("Quantize")));

        let embed = |path: &Path| {
            Embedder::load(path, &ModelCard::path_for(path), 6)
                .unwrap()
                .embed(&crops[..6])
                .unwrap()
        };
        for (a, b) in embed(&back_path).iter().zip(&embed(&float_path)) {
            assert!(cosine(a, b) > 0.995, "cosine {}", cosine(a, b));
            assert!((l2_norm(a) / l2_norm(b) - 1.0).abs() < 0.02);
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}
