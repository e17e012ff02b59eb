//! A model loaded with tract, typed and optimised once at start, with its
//! inputs and outputs chosen by name from the model card.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use tract_onnx::prelude::*;

use crate::card::ModelCard;
use crate::embedded;

/// An optimised, runnable network.
pub struct Network {
    plan: Arc<TypedRunnableModel>,
    input_shape: [usize; 4],
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
        let mut graph = tract_onnx::onnx()
            .with_ignore_value_info(true)
            .model_for_read(&mut &bytes[..])
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
