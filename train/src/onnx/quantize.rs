//! Static int8 quantization of an exported ONNX graph. Weights get one
//! symmetric int8 scale per output channel; activations get one asymmetric
//! int8 range each, calibrated by running the float model with tract on
//! aligned training crops (min/max, or percentiles that ignore outliers).
//! The scales and rounding are the core's `quant`, exactly ONNX's
//! QuantizeLinear. Two graph forms come out of the same calibration:
//! QDQ (QuantizeLinear/DequantizeLinear around the float Conv and Gemm) and
//! QOperator (QLinearConv and QLinearMatMul with int32 bias).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use image::RgbImage;
use normgate::card::{ModelCard, Precision};
use normgate::runtime::Network;
use normgate_core::quant::{self, QParams, Scheme};
use tract_onnx::pb::tensor_proto::DataType;
use tract_onnx::pb::{AttributeProto, ModelProto, NodeProto, TensorProto};

use crate::onnx::graph::{floats_of, int, read_model, write};

/// How activation ranges are read from the calibration run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Calibration {
    /// The smallest and largest value seen.
    MinMax,
    /// The given percentile of the values at each end (e.g. 99.99), so rare outliers do not stretch the scale.
    Percentile(f64),
}

/// The form of the quantized graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum Format {
    /// Float operators between QuantizeLinear/DequantizeLinear pairs.
    Qdq,
    /// QLinearConv and QLinearMatMul: integer arithmetic.
    Qoperator,
}

/// A Conv or Gemm whose weight is an initializer: what quantization rewrites.
struct Target {
    node: usize,
    input: String,
    output: String,
}

fn targets(model: &ModelProto) -> Result<Vec<Target>> {
    let graph = model.graph.as_ref().context("the model has no graph")?;
    let weights: Vec<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let found: Vec<Target> = graph
        .node
        .iter()
        .enumerate()
        .filter(|(_, n)| matches!(n.op_type.as_str(), "Conv" | "Gemm"))
        .filter(|(_, n)| n.input.get(1).is_some_and(|w| weights.contains(&w.as_str())))
        .map(|(i, n)| Target {
            node: i,
            input: n.input[0].clone(),
            output: n.output[0].clone(),
        })
        .collect();
    if found.is_empty() {
        bail!("the model has no Conv or Gemm with constant weights to quantize");
    }
    Ok(found)
}

/// Names of the tensors whose ranges `format` needs (graph input included).
pub fn calibration_tensors(model: &ModelProto, format: Format) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for t in targets(model)? {
        names.push(t.input);
        if format == Format::Qoperator {
            names.push(t.output);
        }
    }
    names.sort();
    names.dedup();
    Ok(names)
}

/// Values kept per tensor for percentiles; larger tensors are subsampled evenly.
const SAMPLE: usize = 1 << 20;

/// Activation ranges of `names` over `crops`, run through the float model with tract.
pub fn calibrate(
    model: &Path,
    card: &ModelCard,
    crops: &[RgbImage],
    names: &[String],
    method: Calibration,
) -> Result<HashMap<String, (f32, f32)>> {
    if crops.is_empty() {
        bail!("calibration needs at least one crop");
    }
    let input_name = card.input.clone();
    let outputs: Vec<&str> = names.iter().map(String::as_str).filter(|n| *n != input_name).collect();
    // A model with a fixed batch (the card says which) runs one batch of that size.
    let batch = match card.batch {
        0 => 16.min(crops.len()),
        fixed => fixed,
    };
    let network = Network::load(model, card, batch, &outputs)?;
    let mut values: HashMap<String, Vec<f32>> = HashMap::new();
    let mut ranges: HashMap<String, (f32, f32)> = HashMap::new();
    for chunk in crops.chunks(batch) {
        let mut inputs: Vec<Vec<f32>> = chunk.iter().map(|c| card.input_tensor(c)).collect();
        let real = inputs.len();
        inputs.resize(batch, inputs[0].clone());
        let mut results = network.run(&inputs)?;
        let per_image = |v: &Vec<f32>| v.len() / batch;
        let mut seen: Vec<(String, Vec<f32>)> = Vec::new();
        if names.contains(&input_name) {
            seen.push((input_name.clone(), inputs[..real].concat()));
        }
        for (name, v) in outputs.iter().zip(results.iter_mut()) {
            let keep = per_image(v) * real;
            v.truncate(keep);
            seen.push((name.to_string(), std::mem::take(v)));
        }
        for (name, v) in seen {
            let r = ranges.entry(name.clone()).or_insert((f32::INFINITY, f32::NEG_INFINITY));
            for &x in &v {
                r.0 = r.0.min(x);
                r.1 = r.1.max(x);
            }
            if let Calibration::Percentile(_) = method {
                let stride = (v.len() * crops.len() / real / SAMPLE).max(1);
                values.entry(name).or_default().extend(v.iter().step_by(stride));
            }
        }
    }
    if let Calibration::Percentile(p) = method {
        for (name, v) in &mut values {
            let mut at = |q: f64| {
                let k = ((v.len() - 1) as f64 * q).round() as usize;
                *v.select_nth_unstable_by(k, f32::total_cmp).1
            };
            let (lo, hi) = (at(1.0 - p / 100.0), at(p / 100.0));
            ranges.insert(name.clone(), (lo, hi));
        }
    }
    Ok(ranges)
}

fn attribute<'a>(node: &'a NodeProto, name: &str) -> Option<&'a AttributeProto> {
    node.attribute.iter().find(|a| a.name == name)
}

fn tensor(name: &str, dims: &[usize], data_type: DataType, raw: Vec<u8>) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: data_type as i32,
        raw_data: raw,
        ..Default::default()
    }
}

fn f32s(name: &str, dims: &[usize], values: &[f32]) -> TensorProto {
    tensor(
        name,
        dims,
        DataType::Float,
        values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    )
}

fn i8s(name: &str, dims: &[usize], values: &[i8]) -> TensorProto {
    tensor(name, dims, DataType::Int8, values.iter().map(|&v| v as u8).collect())
}

fn node(op: &str, name: String, inputs: Vec<String>, output: String, attribute: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        name,
        op_type: op.into(),
        input: inputs,
        output: vec![output],
        attribute,
        ..Default::default()
    }
}

/// Rewrites the graph as it is being rebuilt: new initializers and nodes.
struct Rewriter {
    initializers: HashMap<String, TensorProto>,
    added: Vec<TensorProto>,
    ranges: HashMap<String, (f32, f32)>,
    /// Activations already quantized: name -> (quantized name, scale name, zero-point name).
    quantized: HashMap<String, [String; 3]>,
}

impl Rewriter {
    fn range(&self, name: &str) -> Result<QParams> {
        let &(lo, hi) = self
            .ranges
            .get(name)
            .with_context(|| format!("no calibrated range for {name}"))?;
        Ok(QParams::from_range(lo, hi, Scheme::Asymmetric)?)
    }

    /// Scale and zero-point initializers of an activation (added once); returns their names.
    fn activation_params(&mut self, name: &str) -> Result<(QParams, String, String)> {
        let p = self.range(name)?;
        let [_, scale, zp] = q_names(name);
        if !self.added.iter().any(|t| t.name == scale) {
            self.added.push(f32s(&scale, &[], &[p.scale]));
            self.added.push(i8s(&zp, &[], &[p.zero_point]));
        }
        Ok((p, scale, zp))
    }

    /// `QuantizeLinear(x)` once per activation; returns (int8 name, scale, zero point).
    fn quantize_activation(&mut self, x: &str, nodes: &mut Vec<NodeProto>) -> Result<[String; 3]> {
        if let Some(q) = self.quantized.get(x) {
            return Ok(q.clone());
        }
        let (_, scale, zp) = self.activation_params(x)?;
        let q = q_names(x)[0].clone();
        nodes.push(node(
            "QuantizeLinear",
            format!("{x}_QuantizeLinear"),
            vec![x.into(), scale.clone(), zp.clone()],
            q.clone(),
            vec![],
        ));
        let entry = [q, scale, zp];
        self.quantized.insert(x.into(), entry.clone());
        Ok(entry)
    }

    /// Per-output-channel symmetric int8 weights (channels along axis 0 of
    /// `values`), added as initializers shaped `dims` after `arrange` reorders
    /// them; returns the quantized, scale and zero-point names and the parameters.
    fn weights(
        &mut self,
        name: &str,
        values: &[f32],
        channels: usize,
        dims: &[usize],
        arrange: impl Fn(Vec<i8>) -> Vec<i8>,
    ) -> Result<([String; 3], Vec<QParams>)> {
        let mut params = vec![
            QParams {
                scale: 1.0,
                zero_point: 0
            };
            channels
        ];
        quant::per_channel(values, Scheme::Symmetric, &mut params)
            .with_context(|| format!("quantizing weight {name}"))?;
        let per = values.len() / channels;
        let mut q = vec![0i8; values.len()];
        for (c, p) in params.iter().enumerate() {
            quant::quantize_slice(&values[c * per..(c + 1) * per], p, &mut q[c * per..(c + 1) * per])?;
        }
        let names = q_names(name);
        self.added.push(i8s(&names[0], dims, &arrange(q)));
        let scales: Vec<f32> = params.iter().map(|p| p.scale).collect();
        self.added.push(f32s(&names[1], &[channels], &scales));
        self.added.push(i8s(&names[2], &[channels], &vec![0; channels]));
        Ok((names, params))
    }

    fn initializer(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let t = self
            .initializers
            .get(name)
            .with_context(|| format!("initializer {name} not found"))?;
        Ok((t.dims.iter().map(|&d| d as usize).collect(), floats_of(t)?))
    }

    fn qdq(&mut self, n: &NodeProto, nodes: &mut Vec<NodeProto>) -> Result<()> {
        let x_names = self.quantize_activation(&n.input[0], nodes)?;
        let x = format!("{}_dequantized", n.input[0]);
        if !nodes.iter().any(|m| m.output[0] == x) {
            nodes.push(node(
                "DequantizeLinear",
                format!("{x}_node"),
                x_names.to_vec(),
                x.clone(),
                vec![],
            ));
        }
        let w = &n.input[1];
        let (dims, values) = self.initializer(w)?;
        let (w_names, _) = self.weights(w, &values, dims[0], &dims, |q| q)?;
        let w_dq = format!("{w}_dequantized");
        nodes.push(node(
            "DequantizeLinear",
            format!("{w_dq}_node"),
            w_names.to_vec(),
            w_dq.clone(),
            vec![int("axis", 0)],
        ));
        let mut n = n.clone();
        n.input[0] = x;
        n.input[1] = w_dq;
        nodes.push(n);
        Ok(())
    }

    fn qoperator(&mut self, n: &NodeProto, nodes: &mut Vec<NodeProto>) -> Result<()> {
        let x_names = self.quantize_activation(&n.input[0], nodes)?;
        let x_params = self.range(&n.input[0])?;
        let w = &n.input[1];
        let (dims, values) = self.initializer(w)?;
        let out = n.output[0].clone();
        let bias = match n.input.get(2) {
            Some(b) => Some(self.initializer(b)?.1),
            None => None,
        };
        match n.op_type.as_str() {
            "Conv" => {
                let (w_names, params) = self.weights(w, &values, dims[0], &dims, |q| q)?;
                let (_, y_scale, y_zp) = self.activation_params(&out)?;
                let y_q = q_names(&out)[0].clone();
                let mut inputs = [x_names, w_names].concat();
                inputs.extend([y_scale.clone(), y_zp.clone()]);
                if let Some(b) = bias {
                    // int32 bias at the accumulator's scale: x_scale * w_scale[c].
                    let q: Vec<u8> = b
                        .iter()
                        .zip(&params)
                        .flat_map(|(v, p)| ((v / (x_params.scale * p.scale)).round_ties_even() as i32).to_le_bytes())
                        .collect();
                    let name = format!("{}_int32", n.input[2]);
                    self.added.push(tensor(&name, &[b.len()], DataType::Int32, q));
                    inputs.push(name);
                }
                let mut conv = node(
                    "QLinearConv",
                    format!("{}_quantized", n.name),
                    inputs,
                    y_q.clone(),
                    vec![],
                );
                conv.attribute = n.attribute.clone();
                nodes.push(conv);
                nodes.push(node(
                    "DequantizeLinear",
                    format!("{out}_DequantizeLinear"),
                    vec![y_q, y_scale, y_zp],
                    out,
                    vec![],
                ));
            }
            "Gemm" => {
                let trans_b = attribute(n, "transB").is_some_and(|a| a.i == 1);
                if !trans_b || dims.len() != 2 {
                    bail!("Gemm {}: only transB = 1 with 2-D weights is supported", n.name);
                }
                let (m, k) = (dims[0], dims[1]);
                // QLinearMatMul takes B as [k, m], one scale per column.
                let transpose = |q: Vec<i8>| (0..k * m).map(|i| q[(i % m) * k + i / m]).collect();
                let (w_names, _) = self.weights(w, &values, m, &[k, m], transpose)?;
                // The matmul's range is the output's without the bias.
                let (lo, hi) = self.ranges[&out];
                let b = bias.clone().unwrap_or_default();
                let (bmin, bmax) = b.iter().fold((0.0f32, 0.0f32), |(a, z), v| (a.min(*v), z.max(*v)));
                let mm = format!("{out}_matmul");
                self.ranges.insert(mm.clone(), (lo - bmax, hi - bmin));
                let (_, mm_scale, mm_zp) = self.activation_params(&mm)?;
                let mm_q = q_names(&mm)[0].clone();
                let mut inputs = [x_names, w_names].concat();
                inputs.extend([mm_scale.clone(), mm_zp.clone()]);
                nodes.push(node(
                    "QLinearMatMul",
                    format!("{}_quantized", n.name),
                    inputs,
                    mm_q.clone(),
                    vec![],
                ));
                let dq = if bias.is_some() {
                    format!("{mm}_dequantized")
                } else {
                    out.clone()
                };
                nodes.push(node(
                    "DequantizeLinear",
                    format!("{mm}_DequantizeLinear"),
                    vec![mm_q, mm_scale, mm_zp],
                    dq.clone(),
                    vec![],
                ));
                if let Some(b) = n.input.get(2) {
                    nodes.push(node(
                        "Add",
                        format!("{}_bias", n.name),
                        vec![dq, b.clone()],
                        out,
                        vec![],
                    ));
                }
            }
            other => bail!("cannot quantize {other}"),
        }
        Ok(())
    }
}

/// Names of a quantized tensor, its scale and its zero point.
fn q_names(name: &str) -> [String; 3] {
    [
        format!("{name}_quantized"),
        format!("{name}_scale"),
        format!("{name}_zero_point"),
    ]
}

/// The quantized form of `model` with these activation ranges.
pub fn quantize(model: &ModelProto, ranges: HashMap<String, (f32, f32)>, format: Format) -> Result<ModelProto> {
    let targets = targets(model)?;
    let graph = model.graph.as_ref().context("the model has no graph")?;
    let mut rewriter = Rewriter {
        initializers: graph.initializer.iter().map(|t| (t.name.clone(), t.clone())).collect(),
        added: Vec::new(),
        ranges,
        quantized: HashMap::new(),
    };
    let mut nodes = Vec::new();
    let mut replaced = Vec::new();
    for (i, n) in graph.node.iter().enumerate() {
        if !targets.iter().any(|t| t.node == i) {
            nodes.push(n.clone());
            continue;
        }
        replaced.push(n.input[1].clone());
        if format == Format::Qoperator {
            replaced.extend(n.input.get(2).cloned());
            rewriter.qoperator(n, &mut nodes)?;
        } else {
            rewriter.qdq(n, &mut nodes)?;
        }
    }
    let still_used = |name: &str| nodes.iter().any(|n| n.input.iter().any(|i| i == name));
    let mut initializer: Vec<TensorProto> = graph
        .initializer
        .iter()
        .filter(|t| !replaced.contains(&t.name) || still_used(&t.name))
        .cloned()
        .collect();
    initializer.extend(rewriter.added);
    let mut out = model.clone();
    let g = out.graph.as_mut().expect("checked above");
    g.node = nodes;
    g.initializer = initializer;
    out.producer_name = "normgate-train quantize".into();
    Ok(out)
}

/// The card's `variants` of a file written to `out` from `source` of
/// precision `precision`: the source, when the two files sit side by side.
pub fn sibling(source: &Path, out: &Path, precision: Precision) -> std::collections::BTreeMap<Precision, PathBuf> {
    match (source.parent() == out.parent(), source.file_name()) {
        (true, Some(name)) => [(precision, PathBuf::from(name))].into(),
        _ => Default::default(),
    }
}

/// What `quantize_file` did.
#[derive(Debug, serde::Serialize)]
pub struct QuantizeReport {
    /// The graph form written.
    pub format: Format,
    /// `minmax` or `percentile P`.
    pub calibration: String,
    /// Crops the ranges came from.
    pub calibration_crops: usize,
    /// Size of the float model, bytes.
    pub float_bytes: u64,
    /// Size of the quantized model, bytes.
    pub int8_bytes: u64,
}

/// Quantizes the float model at `model` (card beside it) to `out` (card copied beside it).
pub fn quantize_file(
    model: &Path,
    out: &Path,
    format: Format,
    method: Calibration,
    crops: &[RgbImage],
) -> Result<QuantizeReport> {
    let card = ModelCard::load(&ModelCard::path_for(model))?;
    let proto = read_model(model)?;
    let names = calibration_tensors(&proto, format)?;
    let ranges = calibrate(model, &card, crops, &names, method)?;
    let quantized = quantize(&proto, ranges, format)?;
    let card = ModelCard {
        precision: Precision::Int8,
        variants: sibling(model, out, Precision::Fp32),
        ..card
    };
    write(&quantized, &card, out)?;
    Ok(QuantizeReport {
        format,
        calibration: match method {
            Calibration::MinMax => "minmax".into(),
            Calibration::Percentile(p) => format!("percentile {p}"),
        },
        calibration_crops: crops.len(),
        float_bytes: std::fs::metadata(model)?.len(),
        int8_bytes: std::fs::metadata(out)?.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::export::backbone_card;
    use crate::testing::{exported_backbone, tiny_backbone};
    use normgate::embedder::Embedder;
    use normgate_core::norm::{cosine, l2_norm};

    fn crops(n: u32) -> Vec<RgbImage> {
        (0..n)
            .map(|k| {
                RgbImage::from_fn(96, 112, |x, y| {
                    let v = |a: u32| ((a * 37 + k * 11) % 256) as u8;
                    image::Rgb([v(x * 3 + y), v(y * 5 + x * k), v(x + y * k)])
                })
            })
            .collect()
    }

    #[test]
    fn both_forms_run_in_tract_and_stay_close_to_the_float_model() {
        let mut config = tiny_backbone([8, 8, 16], [1, 1, 1], 16);
        (config.height, config.width) = (112, 96);
        let dir = std::env::temp_dir().join(format!("normgate-quantize-{}", std::process::id()));
        let float_path = dir.join("float.onnx");
        let card = backbone_card(&config, None);
        let (_, model) = exported_backbone(config, 5, "backbone", &card, &float_path);
        let calibration = crops(24);
        let test = crops(6);
        let float = Embedder::load(&float_path, &ModelCard::path_for(&float_path), 6).unwrap();
        let reference = float.embed(&test).unwrap();
        for format in [Format::Qdq, Format::Qoperator] {
            for method in [Calibration::MinMax, Calibration::Percentile(99.99)] {
                let names = calibration_tensors(&model, format).unwrap();
                let ranges = calibrate(&float_path, &card, &calibration, &names, method).unwrap();
                assert_eq!(ranges.len(), names.len());
                let q = quantize(&model, ranges, format).unwrap();
                let path = dir.join(format!("{format:?}-{method:?}.onnx"));
                write(&q, &card, &path).unwrap();
                let int8 = Embedder::load(&path, &ModelCard::path_for(&path), 6).unwrap();
                for (a, b) in int8.embed(&test).unwrap().iter().zip(&reference) {
                    let c = cosine(a, b);
                    let ratio = l2_norm(a) / l2_norm(b);
                    assert!(c > 0.98, "{format:?} {method:?}: cosine {c}");
                    assert!((ratio - 1.0).abs() < 0.05, "{format:?} {method:?}: norm ratio {ratio}");
                }
                let size = std::fs::metadata(&path).unwrap().len();
                assert!(
                    size * 2 < std::fs::metadata(&float_path).unwrap().len(),
                    "{format:?}: {size} bytes"
                );
            }
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}
