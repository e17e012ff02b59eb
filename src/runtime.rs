//! A model loaded with tract, typed and optimised once at start, with its
//! inputs and outputs chosen by name from the model card.

use std::collections::HashSet;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use tract_onnx::pb::{GraphProto, TensorProto};
use tract_onnx::prelude::*;

use crate::card::ModelCard;
use crate::embedded;

/// An optimised, runnable network.
pub struct Network {
    plan: Arc<TypedRunnableModel>,
    input_shape: [usize; 4],
}

/// The ONNX operators that take no inputs.
const SOURCE_OPS: [&str; 3] = ["Constant", "RandomNormal", "RandomUniform"];

/// The ONNX data types whose `raw_data` tract can read (float, u8, i8, u16,
/// i16, i32, i64, bool, f16, f64, u32, u64).
const RAW_READABLE_TYPES: [i32; 12] = [1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13];

/// Refuses a tensor whose raw bytes tract would not read (it panics on them).
fn check_tensor(tensor: &TensorProto) -> Result<()> {
    if !tensor.raw_data.is_empty() && !RAW_READABLE_TYPES.contains(&tensor.data_type) {
        bail!(
            "tensor {:?} stores raw data of ONNX data type {}, which cannot be read",
            tensor.name,
            tensor.data_type
        );
    }
    Ok(())
}

/// Refuses what tract takes for granted without checking: it panics (and
/// the device's release build aborts) on a graph output that no input,
/// initializer or node defines, on an operator node without inputs, and on
/// raw tensor data of a type it cannot read.
/// Subgraphs (If, Loop, Scan bodies) may use the names of the graphs around
/// them. All found by fuzzing (`fuzz/regressions/onnx_model/`).
fn check_graph<'a>(graph: &'a GraphProto, outer: &HashSet<&'a str>) -> Result<()> {
    if let Some(node) = graph
        .node
        .iter()
        .find(|n| n.input.iter().all(String::is_empty) && !SOURCE_OPS.contains(&n.op_type.as_str()))
    {
        bail!("node {:?} ({}) has no inputs", node.name, node.op_type);
    }
    graph.initializer.iter().try_for_each(check_tensor)?;
    let attributes = graph.node.iter().flat_map(|n| &n.attribute);
    attributes
        .flat_map(|a| a.t.iter().chain(&a.tensors))
        .try_for_each(check_tensor)?;
    let mut defined = outer.clone();
    defined.extend(graph.input.iter().map(|i| i.name.as_str()));
    defined.extend(graph.initializer.iter().map(|t| t.name.as_str()));
    for node in &graph.node {
        // An undefined node input becomes a graph input in tract (and is refused there).
        defined.extend(node.input.iter().chain(&node.output).map(String::as_str));
    }
    if let Some(output) = graph.output.iter().find(|o| !defined.contains(o.name.as_str())) {
        bail!(
            "graph output {:?} is defined by no input, initializer or node",
            output.name
        );
    }
    for attribute in graph.node.iter().flat_map(|n| &n.attribute) {
        for body in attribute.g.iter().chain(&attribute.graphs) {
            check_graph(body, &defined)?;
        }
    }
    Ok(())
}

impl Network {
    /// Loads `model` for inputs of `batch` images of the card's size (the
    /// card's own batch size wins when the graph fixes it) and the named outputs.
    pub fn load(model: &Path, card: &ModelCard, batch: usize, outputs: &[&str]) -> Result<Self> {
        if !embedded::exists(model) {
            bail!("model file {} not found", model.display());
        }
        let bytes = embedded::read(model)?;
        Self::from_bytes(&bytes, &model.display().to_string(), card, batch, outputs)
    }

    /// Loads a model from its file's bytes (`name` for messages).
    pub fn from_bytes(bytes: &[u8], name: &str, card: &ModelCard, batch: usize, outputs: &[&str]) -> Result<Self> {
        let batch = if card.batch == 0 { batch } else { card.batch };
        let shape = [batch, 3, card.height as usize, card.width as usize];
        let onnx = tract_onnx::onnx().with_ignore_value_info(true);
        let proto = onnx
            .proto_model_for_read(&mut &bytes[..])
            .map_err(|e| anyhow!("{name} is not an ONNX model: {e}"))?;
        let graph = proto
            .graph
            .as_ref()
            .with_context(|| format!("{name} is an ONNX file without a graph"))?;
        check_graph(graph, &HashSet::new()).with_context(|| format!("{name} is not a valid ONNX model"))?;
        let mut graph = onnx
            .model_for_proto_model(&proto)
            .map_err(|e| anyhow!("{name} is not a loadable ONNX model: {e}"))?;
        graph
            .select_inputs_by_name([card.input.as_str()])
            .with_context(|| format!("the card's input {:?} is not in the model", card.input))?;
        graph.set_input_fact(0, f32::fact(shape).into())?;
        graph
            .select_outputs_by_name(outputs)
            .with_context(|| format!("the card's outputs {outputs:?} are not all in the model"))?;
        let plan = graph
            .into_optimized()
            .and_then(|m| m.into_runnable())
            .map_err(|e| anyhow!("{name} cannot run with input {shape:?}: {e}"))?;
        Ok(Self {
            plan,
            input_shape: shape,
        })
    }

    /// Images per run.
    pub fn batch(&self) -> usize {
        self.input_shape[0]
    }

    /// Runs one batch (`batch()` images, each `3 x height x width` values
    /// concatenated) and returns each output's values.
    pub fn run(&self, images: &[Vec<f32>]) -> Result<Vec<Vec<f32>>> {
        let per_image: usize = self.input_shape[1..].iter().product();
        if images.len() != self.input_shape[0] || images.iter().any(|i| i.len() != per_image) {
            bail!("a run takes {} images of {per_image} values", self.input_shape[0]);
        }
        let data: Vec<f32> = images.concat();
        let input = Tensor::from_shape(&self.input_shape, &data)?;
        let outputs = self.plan.run(tvec!(input.into_tvalue()))?;
        outputs
            .iter()
            .map(|o| Ok(o.to_plain_array_view::<f32>()?.iter().copied().collect()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::card::SPHEREFACE_EMBEDDER;

    /// Fuzzing's findings: models on which tract panics, each refused with what is wrong.
    #[test]
    fn malformed_graphs_are_errors_not_panics() {
        let card = ModelCard::parse(SPHEREFACE_EMBEDDER).unwrap();
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions/onnx_model");
        for (file, expected) in [
            // Its graph output `fc4` is made by nothing (the node makes `fc5`).
            (
                "graph-output-defined-by-nothing",
                "graph output \"fc4\" is defined by no",
            ),
            // Its Flatten node lost its input.
            ("node-without-inputs", "(Flatten) has no inputs"),
            // Its weight's data type became one tract cannot read from raw bytes.
            ("raw-data-of-an-unreadable-type", "which cannot be read"),
        ] {
            let bytes = std::fs::read(dir.join(file)).unwrap();
            let err = Network::from_bytes(&bytes, "bad.onnx", &card, 1, &["fc5"])
                .err()
                .unwrap();
            let err = format!("{err:#}");
            assert!(
                err.contains("bad.onnx is not a valid ONNX model: ") && err.contains(expected),
                "{file}: {err}"
            );
        }
    }
}
