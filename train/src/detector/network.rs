//! The project's face detector network: five stride-2 3x3 convolutions with
//! PReLU (the backbone's `ConvUnit`s), each optionally followed by residual
//! units that widen the receptive field cheaply, and, at strides 8, 16 and 32, three 3x3
//! heads per level in RetinaFace's layout (box, score, five landmarks for
//! `anchors` square anchors per cell), so the device decodes it with the
//! same code as the teacher. Outputs: `[B, A, 4]`, `[B, A, 2]` (logits; the
//! exported graph applies the softmax) and `[B, A, 10]`, anchors ordered like
//! `normgate::detector::priors`.

use candle_core::{Result, Tensor, D};
use candle_nn::{Init, VarBuilder};

use crate::backbone::network::{ConvImpl, ConvUnit, ResidualUnits};
use crate::nn::conv::{conv2d, ConvParams};

/// Depth and width of the detector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DetectorConfig {
    /// Square input side, a multiple of 32.
    pub input: usize,
    /// Channels of the stride-2, -4, -8, -16 and -32 layers.
    pub widths: [usize; 5],
    /// Residual units after each stride-2 layer.
    pub units: [usize; 5],
    /// Anchors per cell (one per anchor size of the level).
    pub anchors: usize,
}

impl DetectorConfig {
    /// The architecture the project ships: a 320x320 input (a 640x480 frame
    /// at half scale), so a 32 px face in the frame is 16 px at stride 8.
    pub const SHIPPED: Self = Self {
        input: 320,
        widths: [16, 32, 48, 64, 96],
        units: [0, 0, 1, 1, 1],
        anchors: 2,
    };

    /// Every 3x3 convolution as (c_in, c_out, output side), heads included.
    fn convolutions(&self) -> Vec<(usize, usize, usize)> {
        let mut out = Vec::new();
        let (mut c, mut side) = (3, self.input);
        for (&w, &units) in self.widths.iter().zip(&self.units) {
            side = side.div_ceil(2);
            out.push((c, w, side));
            out.extend(std::iter::repeat_n((w, w, side), 2 * units));
            c = w;
        }
        let per_anchor: usize = HEADS.iter().map(|(_, n)| n).sum();
        for level in 0..3 {
            out.push((
                self.widths[2 + level],
                self.anchors * per_anchor,
                self.input.div_ceil(8 << level),
            ));
        }
        out
    }

    /// Trainable parameters (weights, biases, PReLU slopes).
    pub fn parameters(&self) -> usize {
        let heads = 3;
        let convs = self.convolutions();
        let body = convs.len() - heads;
        convs
            .iter()
            .enumerate()
            .map(|(i, &(ci, co, _))| co * ci * 9 + if i < body { 2 * co } else { co })
            .sum()
    }

    /// Floating-point operations of one forward pass (a multiply-add counts 2).
    pub fn forward_flops(&self) -> u64 {
        self.convolutions()
            .iter()
            .map(|&(ci, co, side)| (2 * co * ci * 9 * side * side) as u64)
            .sum()
    }

    /// Anchors over all three levels.
    pub fn total_anchors(&self) -> usize {
        [8, 16, 32].iter().map(|s| (self.input / s).pow(2) * self.anchors).sum()
    }
}

/// Values per anchor of the three heads.
pub const HEADS: [(&str, usize); 3] = [("loc", 4), ("conf", 2), ("landmarks", 10)];

/// The weights of one head: a 3x3 convolution with bias and no activation.
struct Head {
    weight: Tensor,
    bias: Tensor,
}

impl Head {
    fn new(c_in: usize, c_out: usize, vb: VarBuilder) -> Result<Self> {
        let std = (1.0 / (9.0 * c_in as f64)).sqrt();
        Ok(Self {
            weight: vb.get_with_hints((c_out, c_in, 3, 3), "weight", Init::Randn { mean: 0.0, stdev: std })?,
            bias: vb.get_with_hints(c_out, "bias", Init::Const(0.0))?,
        })
    }
}

/// The loc, conf and landmark heads of one level (in [`HEADS`] order). They
/// read the same feature map, so they run as one convolution with their
/// kernels stacked: one column matrix and one input gradient instead of three.
struct LevelHeads {
    heads: [Head; 3],
    anchors: usize,
}

impl LevelHeads {
    /// `[B, C, H, W]` -> per head `[B, H * W * anchors, per_anchor]`, cells row by row.
    fn forward(&self, x: &Tensor, conv: ConvImpl) -> Result<[Tensor; 3]> {
        let weight = Tensor::cat(&self.heads.each_ref().map(|h| &h.weight), 0)?;
        let bias = Tensor::cat(&self.heads.each_ref().map(|h| &h.bias), 0)?;
        let y = match conv {
            ConvImpl::Fast => conv2d(x, &weight, ConvParams { stride: 1, pad: 1 })?,
            ConvImpl::Builtin => x.conv2d(&weight, 1, 1, 1, 1)?,
        };
        let y = y.broadcast_add(&bias.reshape((1, (), 1, 1))?)?;
        let b = y.dim(0)?;
        let cells_last = y.permute((0, 2, 3, 1))?.contiguous()?;
        let mut start = 0;
        let outputs = HEADS.map(|(_, per_anchor)| {
            let channels = self.anchors * per_anchor;
            let out = cells_last
                .narrow(3, start, channels)?
                .contiguous()?
                .reshape((b, (), per_anchor));
            start += channels;
            out
        });
        let [loc, conf, landmarks] = outputs;
        Ok([loc?, conf?, landmarks?])
    }
}

/// The detector network.
pub struct FaceNet {
    conv: ConvImpl,
    /// Each stride-2 layer with its residual units.
    layers: Vec<(ConvUnit, ResidualUnits)>,
    /// Per level, the loc, conf and landmark heads.
    heads: Vec<LevelHeads>,
}

impl FaceNet {
    /// Builds (or loads, through `vb`) the network on this crate's fast convolution.
    pub fn new(config: DetectorConfig, vb: VarBuilder) -> Result<Self> {
        Self::with_conv(config, ConvImpl::Fast, vb)
    }

    /// Builds the network on a chosen convolution (candle's own for comparisons).
    pub fn with_conv(config: DetectorConfig, conv: ConvImpl, vb: VarBuilder) -> Result<Self> {
        let mut layers = Vec::new();
        let mut c = 3;
        for (i, (&w, &units)) in config.widths.iter().zip(&config.units).enumerate() {
            // He's scale in every branch (gain 1): the detector's and the
            // refiner's recorded runs were trained from it.
            let residual = ResidualUnits::new(w, units, 1.0, &vb.pp(format!("stage{i}")))?;
            layers.push((ConvUnit::new(c, w, 2, vb.pp(format!("down{i}")))?, residual));
            c = w;
        }
        let heads = (0..3)
            .map(|level| {
                let c_in = config.widths[2 + level];
                let vl = vb.pp(format!("level{level}"));
                let [loc, conf, landmarks] =
                    HEADS.map(|(name, per_anchor)| Head::new(c_in, config.anchors * per_anchor, vl.pp(name)));
                Ok(LevelHeads {
                    heads: [loc?, conf?, landmarks?],
                    anchors: config.anchors,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { conv, layers, heads })
    }

    /// Box regressions, score logits and landmark regressions of every anchor.
    pub fn forward(&self, x: &Tensor) -> Result<[Tensor; 3]> {
        let mut x = x.clone();
        let mut levels = Vec::new();
        for (i, (down, units)) in self.layers.iter().enumerate() {
            x = units.forward(&down.forward(&x, self.conv)?, self.conv)?;
            if i >= 2 {
                levels.push(x.clone());
            }
        }
        let mut outputs: [Vec<Tensor>; 3] = Default::default();
        for (feature, heads) in levels.iter().zip(&self.heads) {
            for (all, one) in outputs.iter_mut().zip(heads.forward(feature, self.conv)?) {
                all.push(one);
            }
        }
        let [loc, conf, landmarks] = outputs;
        Ok([
            Tensor::cat(&loc, 1)?,
            Tensor::cat(&conf, 1)?,
            Tensor::cat(&landmarks, 1)?,
        ])
    }

    /// Face probabilities `[B, A, 2]` from the score logits, as the exported graph gives them.
    pub fn probabilities(conf: &Tensor) -> Result<Tensor> {
        candle_nn::ops::softmax(conf, D::Minus1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::vars::SeededVars;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    #[test]
    fn counts_match_the_built_network() {
        let config = crate::testing::tiny_detector();
        let vars = VarMap::new();
        FaceNet::new(config, SeededVars::builder(&vars, 1, &Device::Cpu)).unwrap();
        let built: usize = vars.all_vars().iter().map(|v| v.elem_count()).sum();
        assert_eq!(built, config.parameters());
        // Layers 3->4 at 32², 4->6 at 16² (+1 unit), 6->8 at 8², 8->8 at 4² and 2²; heads 2x16 outputs.
        let body = 4 * 3 * 1024 + 6 * 4 * 256 + 2 * 6 * 6 * 256 + 8 * 6 * 64 + 8 * 8 * 16 + 8 * 8 * 4;
        let heads = 32 * 8 * (64 + 16 + 4);
        assert_eq!(config.forward_flops(), 18 * (body + heads) as u64);
    }

    #[test]
    fn outputs_have_one_row_per_prior() {
        let config = crate::testing::tiny_detector();
        let net = FaceNet::new(config, SeededVars::builder(&VarMap::new(), 1, &Device::Cpu)).unwrap();
        let x = Tensor::zeros((2, 3, 64, 64), DType::F32, &Device::Cpu).unwrap();
        let [loc, conf, ldm] = net.forward(&x).unwrap();
        let priors =
            normgate::detector::priors(64, &[8, 16, 32], &[vec![8.0, 16.0], vec![32.0, 48.0], vec![64.0, 96.0]]);
        assert_eq!(config.total_anchors(), priors.len());
        assert_eq!(loc.dims(), [2, priors.len(), 4]);
        assert_eq!(conf.dims(), [2, priors.len(), 2]);
        assert_eq!(ldm.dims(), [2, priors.len(), 10]);
        let p = FaceNet::probabilities(&conf).unwrap().sum(D::Minus1).unwrap();
        assert!(p
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .all(|v| (v - 1.0).abs() < 1e-5));
    }
}
