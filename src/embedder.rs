//! Face embedding: a crop aligned to the model's template (with the core's
//! `align`, the same code in training and on the device) goes through the
//! backbone; the norm of the un-normalised feature is the gate's signal.

use std::path::Path;

use anyhow::{bail, Context, Result};
use image::RgbImage;
use normgate_core::align::{align_rgb8, Landmarks, Template};

use crate::card::ModelCard;
use crate::runtime::Network;

/// A loaded embedder.
pub struct Embedder {
    network: Network,
    card: ModelCard,
    template: Template,
}

impl Embedder {
    /// Loads a model and its card, for runs of `batch` crops when the graph allows it.
    pub fn load(model: &Path, card: &Path, batch: usize) -> Result<Self> {
        let card = ModelCard::load(card)?;
        let Some(e) = card.embedder.clone() else {
            bail!("{} is not an embedder's card", model.display());
        };
        let template = card.template()?;
        let network = Network::load(model, &card, batch, &[e.output.as_str()])
            .with_context(|| format!("embedder {}", model.display()))?;
        Ok(Self {
            network,
            card,
            template,
        })
    }

    /// The alignment template crops must be warped to.
    pub fn template(&self) -> &Template {
        &self.template
    }

    /// The card.
    pub fn card(&self) -> &ModelCard {
        &self.card
    }

    /// The gate threshold the model's evaluation recommends, if its card gives one.
    pub fn recommended_threshold(&self) -> Option<f32> {
        self.card.embedder.as_ref().and_then(|e| e.recommended_threshold)
    }

    /// Warps the face with these landmarks onto the template.
    pub fn align(&self, image: &RgbImage, landmarks: &Landmarks) -> Result<RgbImage> {
        let t = &self.template;
        let mut out = vec![0u8; (t.width * t.height * 3) as usize];
        align_rgb8(image.as_raw(), image.width(), image.height(), landmarks, t, &mut out)?;
        Ok(RgbImage::from_raw(t.width, t.height, out).expect("buffer of the template's size"))
    }

    /// Un-normalised features of aligned crops, in order.
    pub fn embed(&self, crops: &[RgbImage]) -> Result<Vec<Vec<f32>>> {
        let batch = self.network.batch();
        let mut features = Vec::with_capacity(crops.len());
        for chunk in crops.chunks(batch) {
            let mut inputs: Vec<Vec<f32>> = chunk.iter().map(|c| self.card.input_tensor(c)).collect();
            // Pad a short last batch; its extra outputs are dropped.
            inputs.resize(batch, inputs[0].clone());
            let out = self.network.run(&inputs)?.remove(0);
            let dim = out.len() / batch;
            features.extend(out.chunks(dim).take(chunk.len()).map(<[f32]>::to_vec));
        }
        Ok(features)
    }
}
