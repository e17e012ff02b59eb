//! The sidecar card of a model: what its input must look like and how to read
//! its output. It sits next to the `.onnx` file (`model.onnx` -> `model.toml`),
//! and a model without a valid card is refused at start.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use normgate_core::align::{Template, ARCFACE_112X112, SPHEREFACE_112X96};
use serde::{Deserialize, Serialize};

/// Colour order of the input tensor's channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelOrder {
    /// Red, green, blue.
    Rgb,
    /// Blue, green, red (Caffe and OpenCV models).
    Bgr,
}

/// Numeric precision of a model file's weights and arithmetic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// 32-bit floats.
    #[default]
    Fp32,
    /// 8-bit integers (weights and activations quantized).
    Int8,
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::Fp32 => "fp32",
            Precision::Int8 => "int8",
        })
    }
}

/// A card: the shared input description and one section for the model's kind.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelCard {
    /// Name of the input tensor.
    pub input: String,
    /// Input width in pixels.
    pub width: u32,
    /// Input height in pixels.
    pub height: u32,
    /// Fixed batch size of the graph, or 0 when the batch dimension is free.
    pub batch: usize,
    /// Channel order.
    pub channels: ChannelOrder,
    /// Per-channel mean subtracted from 0..255 pixel values (in `channels` order).
    pub mean: [f32; 3],
    /// Per-channel divisor applied after the mean.
    pub std: [f32; 3],
    /// This file's precision (`fp32` when absent).
    #[serde(default)]
    pub precision: Precision,
    /// The same network in other precisions: files beside this one, each
    /// with its card (`[models] detector_variant` / `embedder_variant`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub variants: BTreeMap<Precision, PathBuf>,
    /// Present for face embedders.
    pub embedder: Option<EmbedderCard>,
    /// Present for face detectors.
    pub detector: Option<DetectorCard>,
    /// Present for landmark refiners.
    #[serde(default)]
    pub refiner: Option<RefinerCard>,
}

/// How to read a landmark refiner ([`crate::landmarks`]).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RefinerCard {
    /// Name of the output `[batch, 10]`: the five points (x, y) as shares of the crop side.
    pub output: String,
    /// What the crop is cut around.
    #[serde(default)]
    pub crop: RefinerCrop,
    /// Box crops: side of the square crop as a multiple of the detected
    /// box's longer side. Landmark crops: side as a multiple of the aligned
    /// square's (absent: 1, the eyes 0.35 of the side apart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expand: Option<f32>,
    /// Also read the mirrored crop and average the two readings (twice the
    /// compute; the gain is measured in docs/MODEL_HISTORY.md).
    #[serde(default)]
    pub mirror: bool,
    /// A refiner (path relative to this card's folder) that reads the face
    /// again around this one's points; it must cut landmark crops, and may
    /// name a next one in turn (four readings at most).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<PathBuf>,
}

/// The sides a landmark refiner's crop may have (the card's `expand`), as
/// multiples of the aligned square's: the device reads and training cuts
/// within the same bounds.
pub const ALIGNED_SIDES: std::ops::RangeInclusive<f32> = 0.5..=2.0;

/// What a landmark refiner's crop is cut around.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RefinerCrop {
    /// A square around the detected box (`expand` times its longer side).
    #[default]
    Box,
    /// The square that puts the points found so far at fixed places
    /// ([`crate::landmarks::ALIGNED_SHARES`]): upright, one scale (the
    /// square scaled by `expand` when the card gives one).
    Landmarks,
}

/// How to read an embedder.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EmbedderCard {
    /// Name of the un-normalised feature output.
    pub output: String,
    /// The alignment template crops must be warped to: `sphereface_112x96` or `arcface_112x112`.
    pub template: String,
    /// The norm threshold the model's evaluation recommends for the gate, if any.
    pub recommended_threshold: Option<f32>,
}

/// How to read a detector.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DetectorCard {
    /// Output layout; `retinaface` (anchor priors, loc/conf/landmark regressions).
    pub layout: String,
    /// Box regression output `[1, anchors, 4]`.
    pub loc: String,
    /// Softmaxed class scores `[1, anchors, 2]`, index 1 = face.
    pub scores: String,
    /// Landmark regression output `[1, anchors, 10]`.
    pub landmarks: String,
    /// Feature-map strides, in anchor order.
    pub strides: Vec<u32>,
    /// Anchor sizes (pixels) per stride.
    pub anchor_sizes: Vec<Vec<f32>>,
    /// Regression variances (centre, size).
    pub variance: [f32; 2],
}

/// Refuses a missing model file with what to set: `role` names the model
/// ("face detector"), `key` its `[models]` key and command-line flag.
pub fn check_model(path: &Path, role: &str, key: &str) -> Result<()> {
    if !crate::embedded::exists(path) {
        bail!(
            "{role} model {} not found: set [models] {key} in the config (or --{key}) to an ONNX model with its card {} beside it; see models/README.md",
            path.display(),
            ModelCard::path_for(path).display()
        );
    }
    Ok(())
}

impl ModelCard {
    /// The card path of a model: the same path with the extension `toml`.
    pub fn path_for(model: &Path) -> PathBuf {
        model.with_extension("toml")
    }

    /// Reads and checks a card.
    pub fn load(path: &Path) -> Result<Self> {
        let text = crate::embedded::read_text(path).with_context(|| {
            format!(
                "cannot read model card {} (every model needs its card next to it)",
                path.display()
            )
        })?;
        Self::parse(&text).with_context(|| format!("model card {}", path.display()))
    }

    /// Parses and checks a card's text.
    pub fn parse(text: &str) -> Result<Self> {
        let card: Self = toml::from_str(text).context("not a valid card")?;
        card.validate()?;
        Ok(card)
    }

    /// Checks values that the format cannot.
    pub fn validate(&self) -> Result<()> {
        if self.width == 0 || self.height == 0 {
            bail!("width and height must be at least 1");
        }
        if self.std.iter().any(|s| *s == 0.0 || !s.is_finite()) || self.mean.iter().any(|m| !m.is_finite()) {
            bail!("mean must be finite and std finite and non-zero");
        }
        match (&self.embedder, &self.detector, &self.refiner) {
            (Some(e), None, None) => {
                let t = self.template_named(&e.template)?;
                if (t.width, t.height) != (self.width, self.height) {
                    bail!(
                        "template {} is {}x{} but the input is {}x{}",
                        e.template,
                        t.width,
                        t.height,
                        self.width,
                        self.height
                    );
                }
            }
            (None, Some(d), None) => {
                if d.layout != "retinaface" {
                    bail!(
                        "detector layout {:?} is not supported (supported: retinaface)",
                        d.layout
                    );
                }
                if d.strides.is_empty() || d.strides.len() != d.anchor_sizes.len() || d.strides.contains(&0) {
                    bail!("detector needs one list of anchor sizes per non-zero stride");
                }
            }
            (None, None, Some(r)) => {
                if self.width != self.height {
                    bail!("a refiner's input must be square, not {}x{}", self.width, self.height);
                }
                match (r.crop, r.expand) {
                    (RefinerCrop::Box, Some(e)) if (1.0..=4.0).contains(&e) => {}
                    (RefinerCrop::Box, e) => bail!("a box refiner needs expand in [1, 4], not {e:?}"),
                    (RefinerCrop::Landmarks, None) => {}
                    (RefinerCrop::Landmarks, Some(e)) if ALIGNED_SIDES.contains(&e) => {}
                    (RefinerCrop::Landmarks, Some(e)) => bail!(
                        "a landmark refiner's expand (its crop's side against the aligned square's) must be in [{}, {}], not {e}",
                        ALIGNED_SIDES.start(),
                        ALIGNED_SIDES.end()
                    ),
                }
            }
            _ => bail!("a card needs exactly one of the sections [embedder], [detector] and [refiner]"),
        }
        Ok(())
    }

    fn template_named(&self, name: &str) -> Result<Template> {
        match name {
            "sphereface_112x96" => Ok(SPHEREFACE_112X96),
            "arcface_112x112" => Ok(ARCFACE_112X112),
            other => bail!("unknown template {other:?} (known: sphereface_112x96, arcface_112x112)"),
        }
    }

    /// The embedder's alignment template.
    pub fn template(&self) -> Result<Template> {
        match &self.embedder {
            Some(e) => self.template_named(&e.template),
            None => bail!("not an embedder card"),
        }
    }

    /// The input tensor (`[1, 3, height, width]`, NCHW) of an RGB image of the card's size.
    pub fn input_tensor(&self, image: &image::RgbImage) -> Vec<f32> {
        let (w, h) = (self.width as usize, self.height as usize);
        let mut out = vec![0.0f32; 3 * w * h];
        for (x, y, p) in image.enumerate_pixels() {
            let (x, y) = (x as usize, y as usize);
            if x >= w || y >= h {
                continue;
            }
            for c in 0..3 {
                let v = f32::from(match self.channels {
                    ChannelOrder::Rgb => p[c],
                    ChannelOrder::Bgr => p[2 - c],
                });
                out[c * w * h + y * w + x] = (v - self.mean[c]) / self.std[c];
            }
        }
        out
    }
}

/// The card of a SphereFace 112x96 embedder (input `input`, un-normalised
/// feature `fc5`): the shape the project's backbones have, for tests and fuzzing.
pub const SPHEREFACE_EMBEDDER: &str = r#"
input = "input"
width = 96
height = 112
batch = 0
channels = "rgb"
mean = [127.5, 127.5, 127.5]
std = [128.0, 128.0, 128.0]
[embedder]
output = "fc5"
template = "sphereface_112x96"
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_embedder_card_parses_and_normalises_pixels() {
        let card: ModelCard = toml::from_str(SPHEREFACE_EMBEDDER).unwrap();
        card.validate().unwrap();
        assert_eq!(card.template().unwrap(), SPHEREFACE_112X96);
        let img = image::RgbImage::from_pixel(96, 112, image::Rgb([255, 127, 0]));
        let t = card.input_tensor(&img);
        let plane = 96 * 112;
        assert_eq!(
            (t[0], t[plane], t[2 * plane]),
            (127.5 / 128.0, -0.5 / 128.0, -127.5 / 128.0)
        );
    }

    #[test]
    fn wrong_cards_say_what_is_wrong() {
        let err = |text: &str| {
            let card: Result<ModelCard, _> = toml::from_str(text);
            match card {
                Ok(c) => format!("{:#}", c.validate().unwrap_err()),
                Err(e) => e.to_string(),
            }
        };
        assert!(
            err(&SPHEREFACE_EMBEDDER.replace("sphereface_112x96", "arcface_112x112"))
                .contains("is 112x112 but the input is 96x112")
        );
        assert!(err(&SPHEREFACE_EMBEDDER.replace("sphereface_112x96", "square")).contains("unknown template"));
        assert!(err(&SPHEREFACE_EMBEDDER.replace("[128.0, 128.0, 128.0]", "[0.0, 1.0, 1.0]")).contains("std"));
        assert!(err(&SPHEREFACE_EMBEDDER.replace("batch = 0", "batch = 0\ncolour = 1")).contains("colour"));
        let no_section = SPHEREFACE_EMBEDDER.split("[embedder]").next().unwrap();
        assert!(err(no_section).contains("exactly one"));
        let refiner = |side: &str, expand: &str| {
            format!("{no_section}[refiner]\noutput = \"fc5\"\nexpand = {expand}\n").replace("height = 112", side)
        };
        let square: ModelCard = toml::from_str(&refiner("height = 96", "1.25")).unwrap();
        square.validate().unwrap();
        assert!(err(&refiner("height = 112", "1.25")).contains("must be square"));
        assert!(err(&refiner("height = 96", "0.5")).contains("needs expand in [1, 4]"));
        let landmarks = refiner("height = 96", "1.25").replace("expand = 1.25", "crop = \"landmarks\"");
        let aligned: ModelCard = toml::from_str(&landmarks).unwrap();
        aligned.validate().unwrap();
        assert_eq!(aligned.refiner.unwrap().crop, RefinerCrop::Landmarks);
        let zoomed: ModelCard = toml::from_str(&format!("{landmarks}expand = 0.8\n")).unwrap();
        zoomed.validate().unwrap();
        assert!(err(&format!("{landmarks}expand = 2.5\n")).contains("must be in [0.5, 2], not 2.5"));
        assert!(err(&landmarks.replace("\ncrop = \"landmarks\"", "")).contains("needs expand"));
        assert!(err(&format!(
            "{SPHEREFACE_EMBEDDER}[refiner]\noutput = \"x\"\nexpand = 1.2\n"
        ))
        .contains("exactly one"));
    }
}
