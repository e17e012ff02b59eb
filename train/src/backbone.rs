//! The project's SphereFace-family backbone: 3x3 convolutions with PReLU,
//! each stage a stride-2 convolution followed by residual units
//! (`x + prelu(conv(prelu(conv(x))))`), then a linear `fc5` whose
//! un-normalised output is the feature the gate measures the norm of.

use candle_core::{Module, Result, Tensor, Var};
use candle_nn::{Init, Linear, PReLU, VarBuilder};

use crate::activation::bias_prelu;
use crate::conv::{conv2d, ConvParams};

/// Which implementation of convolution, bias and PReLU the network runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ConvImpl {
    /// This crate's ops: im2col + matrix multiply convolution ([`crate::conv`])
    /// and the fused bias + PReLU ([`crate::activation`]).
    Fast,
    /// candle's own `conv2d`, broadcast add and PReLU, with their backward.
    Builtin,
}

/// Depth and width of the backbone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct BackboneConfig {
    /// Input height (SphereFace crops are 112 x 96).
    pub height: usize,
    /// Input width.
    pub width: usize,
    /// Channels of the stride-2 stem.
    pub stem: usize,
    /// Channels of the three stages.
    pub widths: [usize; 3],
    /// Residual units per stage.
    pub units: [usize; 3],
    /// Length of the fc5 feature.
    pub feature_dim: usize,
    /// Batch normalisation after every convolution while training, folded
    /// into the convolution's weights and bias on export (the exported graph
    /// is the same Conv + PReLU).
    pub batch_norm: bool,
}

impl BackboneConfig {
    /// The architecture the project ships: 112x96 input, stem 32, stages
    /// 64/128/256 with one residual unit each, a 128-d fc5 (the length of the
    /// teacher's feature, so that distillation compares like with like).
    pub const SHIPPED: Self = Self {
        height: 112,
        width: 96,
        stem: 32,
        widths: [64, 128, 256],
        units: [1, 1, 1],
        feature_dim: 128,
        batch_norm: false,
    };

    /// Every convolution as (c_in, c_out, output height, output width).
    fn convolutions(&self) -> Vec<(usize, usize, usize, usize)> {
        let (mut h, mut w) = (self.height.div_ceil(2), self.width.div_ceil(2));
        let mut out = vec![(3, self.stem, h, w)];
        let mut c = self.stem;
        for (&width, &units) in self.widths.iter().zip(&self.units) {
            (h, w) = (h.div_ceil(2), w.div_ceil(2));
            out.push((c, width, h, w));
            out.extend(std::iter::repeat_n((width, width, h, w), 2 * units));
            c = width;
        }
        out
    }

    /// Spatial size of the last stage, which fc5 flattens.
    fn flattened(&self) -> usize {
        let &(_, c, h, w) = self.convolutions().last().expect("at least the stem");
        c * h * w
    }

    /// Values the training stores: weights, biases, PReLU slopes and, with
    /// batch normalisation, its scales and running statistics (3 per
    /// channel; folded away on export).
    pub fn parameters(&self) -> usize {
        let per_channel = if self.batch_norm { 5 } else { 2 };
        let convs: usize = self
            .convolutions()
            .iter()
            .map(|&(ci, co, _, _)| co * ci * 9 + per_channel * co)
            .sum();
        convs + self.flattened() * self.feature_dim + self.feature_dim
    }

    /// Floating-point operations of one forward pass (a multiply-add counts 2).
    pub fn forward_flops(&self) -> u64 {
        let convs: usize = self
            .convolutions()
            .iter()
            .map(|&(ci, co, h, w)| 2 * co * ci * 9 * h * w)
            .sum();
        (convs + 2 * self.flattened() * self.feature_dim) as u64
    }
}

/// A 3x3 convolution, optionally batch-normalised, with bias and PReLU.
pub(crate) struct ConvUnit {
    weight: Tensor,
    bias: Tensor,
    slope: Tensor,
    params: ConvParams,
    norm: Option<BatchNorm>,
}

/// Batch normalisation of a convolution's output (before the unit's bias,
/// which serves as its shift): per channel `(y - mean) / sqrt(var + eps) * scale`.
struct BatchNorm {
    scale: Tensor,
    /// Running statistics: variables without gradients, so the optimiser
    /// leaves them alone and checkpoints carry them.
    running_mean: Var,
    running_var: Var,
}

/// Added to the variance before the square root.
pub const BATCH_NORM_EPS: f64 = 1e-5;

/// Weight of a batch's statistics in the running ones.
const BATCH_NORM_MOMENTUM: f64 = 0.1;

/// Whether a forward pass trains (batch statistics, running ones updated)
/// or evaluates (running statistics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// A training step.
    Train,
    /// Evaluation and export.
    Eval,
}

impl BatchNorm {
    fn new(channels: usize, vb: VarBuilder) -> Result<Self> {
        let scale = vb.get_with_hints(channels, "scale", Init::Const(1.0))?;
        let running_mean = Var::from_tensor(&vb.get_with_hints(channels, "running_mean", Init::Const(0.0))?)?;
        let running_var = Var::from_tensor(&vb.get_with_hints(channels, "running_var", Init::Const(1.0))?)?;
        Ok(Self {
            scale,
            running_mean,
            running_var,
        })
    }

    fn forward(&self, y: &Tensor, pass: Pass) -> Result<Tensor> {
        let c = self.scale.dim(0)?;
        let per_channel = |t: &Tensor| t.mean_keepdim(3)?.mean_keepdim(2)?.mean_keepdim(0);
        let (mean, var) = match pass {
            Pass::Train => {
                let mean = per_channel(y)?;
                let var = per_channel(&y.broadcast_sub(&mean)?.sqr()?)?;
                let keep = 1.0 - BATCH_NORM_MOMENTUM;
                let update = |running: &Var, batch: &Tensor| -> Result<()> {
                    let batch = batch.detach().flatten_all()?;
                    running.set(&((running.as_tensor() * keep)? + (batch * BATCH_NORM_MOMENTUM)?)?)
                };
                update(&self.running_mean, &mean)?;
                update(&self.running_var, &var)?;
                (mean, var)
            }
            Pass::Eval => (
                self.running_mean.as_tensor().detach().reshape((1, c, 1, 1))?,
                self.running_var.as_tensor().detach().reshape((1, c, 1, 1))?,
            ),
        };
        let gain = (var + BATCH_NORM_EPS)?
            .sqrt()?
            .recip()?
            .broadcast_mul(&self.scale.reshape((1, c, 1, 1))?)?;
        y.broadcast_sub(&mean)?.broadcast_mul(&gain)
    }
}

impl ConvUnit {
    pub(crate) fn new(c_in: usize, c_out: usize, stride: usize, vb: VarBuilder) -> Result<Self> {
        Self::with_norm(c_in, c_out, stride, false, vb)
    }

    /// A unit with batch normalisation when `batch_norm` (variables under `bn`).
    pub(crate) fn with_norm(
        c_in: usize,
        c_out: usize,
        stride: usize,
        batch_norm: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        // He initialisation for PReLU with slope 0.25.
        let std = (2.0 / (9.0 * c_in as f64 * (1.0 + 0.25 * 0.25))).sqrt();
        let weight = vb.get_with_hints((c_out, c_in, 3, 3), "weight", Init::Randn { mean: 0.0, stdev: std })?;
        let bias = vb.get_with_hints(c_out, "bias", Init::Const(0.0))?;
        let slope = vb.pp("prelu").get_with_hints(c_out, "weight", Init::Const(0.25))?;
        let norm = if batch_norm {
            Some(BatchNorm::new(c_out, vb.pp("bn"))?)
        } else {
            None
        };
        Ok(Self {
            weight,
            bias,
            slope,
            params: ConvParams { stride, pad: 1 },
            norm,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor, conv: ConvImpl) -> Result<Tensor> {
        self.forward_pass(x, conv, Pass::Eval)
    }

    fn forward_pass(&self, x: &Tensor, conv: ConvImpl, pass: Pass) -> Result<Tensor> {
        let y = match conv {
            ConvImpl::Fast => conv2d(x, &self.weight, self.params)?,
            ConvImpl::Builtin => x.conv2d(&self.weight, self.params.pad, self.params.stride, 1, 1)?,
        };
        let y = match &self.norm {
            Some(norm) => norm.forward(&y, pass)?,
            None => y,
        };
        match conv {
            ConvImpl::Fast => bias_prelu(&y, &self.bias, &self.slope),
            ConvImpl::Builtin => {
                let y = y.broadcast_add(&self.bias.reshape((1, (), 1, 1))?)?;
                PReLU::new(self.slope.clone(), false).forward(&y)
            }
        }
    }
}

/// The backbone: input `[B, 3, height, width]`, output `[B, feature_dim]`.
pub struct Backbone {
    config: BackboneConfig,
    /// Stem and each stage's stride-2 convolution, followed by that stage's residual units.
    stages: Vec<(ConvUnit, Vec<(ConvUnit, ConvUnit)>)>,
    fc5: Linear,
    conv: ConvImpl,
}

impl Backbone {
    /// Builds (or loads, through `vb`) the network.
    pub fn new(config: BackboneConfig, conv: ConvImpl, vb: VarBuilder) -> Result<Self> {
        let unit = |c_in, c_out, stride, vb| ConvUnit::with_norm(c_in, c_out, stride, config.batch_norm, vb);
        let mut stages = vec![(unit(3, config.stem, 2, vb.pp("stem"))?, Vec::new())];
        let mut c = config.stem;
        for (s, (&width, &units)) in config.widths.iter().zip(&config.units).enumerate() {
            let vs = vb.pp(format!("stage{s}"));
            let down = unit(c, width, 2, vs.pp("down"))?;
            let residual = (0..units)
                .map(|u| {
                    let vu = vs.pp(format!("unit{u}"));
                    Ok((unit(width, width, 1, vu.pp("a"))?, unit(width, width, 1, vu.pp("b"))?))
                })
                .collect::<Result<Vec<_>>>()?;
            stages.push((down, residual));
            c = width;
        }
        let fc5 = candle_nn::linear(config.flattened(), config.feature_dim, vb.pp("fc5"))?;
        Ok(Self {
            config,
            stages,
            fc5,
            conv,
        })
    }

    /// The architecture.
    pub fn config(&self) -> &BackboneConfig {
        &self.config
    }

    /// Un-normalised features of a batch of crops (evaluation: batch
    /// normalisation, if any, from its running statistics).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_pass(x, Pass::Eval)
    }

    /// The features in a `pass`: a training step normalises with the
    /// batch's statistics and updates the running ones.
    pub fn forward_pass(&self, x: &Tensor, pass: Pass) -> Result<Tensor> {
        let mut x = x.clone();
        for (down, units) in &self.stages {
            x = down.forward_pass(&x, self.conv, pass)?;
            for (a, b) in units {
                let branch = b.forward_pass(&a.forward_pass(&x, self.conv, pass)?, self.conv, pass)?;
                x = (&x + branch)?;
            }
        }
        self.fc5.forward(&x.flatten_from(1)?)
    }
}

/// A network of a run folder's checkpoint: built with the run's `seed`
/// under `prefix`, then given the checkpoint's weights.
pub fn load_checkpoint(
    dir: &std::path::Path,
    config: BackboneConfig,
    seed: u64,
    prefix: &str,
) -> anyhow::Result<(Backbone, candle_nn::VarMap)> {
    let map = candle_nn::VarMap::new();
    let vb = crate::vars::SeededVars::builder(&map, seed, &candle_core::Device::Cpu);
    let net = Backbone::new(config, ConvImpl::Fast, vb.pp(prefix))?;
    crate::optim::load_weights(&map, dir)?;
    Ok((net, map))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{max_abs_diff, tiny_backbone};
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    #[test]
    fn counts_match_the_built_network() {
        let config = tiny_backbone([8, 8, 16], [1, 0, 2], 10);
        let vars = VarMap::new();
        let vb = VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu);
        let net = Backbone::new(config, ConvImpl::Fast, vb).unwrap();
        let built: usize = vars.all_vars().iter().map(|v| v.elem_count()).sum();
        assert_eq!(built, config.parameters());
        let x = Tensor::zeros((2, 3, 28, 24), DType::F32, &Device::Cpu).unwrap();
        assert_eq!(net.forward(&x).unwrap().dims(), [2, 10]);
        // Stem 3->4 at 14x12, 4->8 at 7x6 (+2 units), 8->8 at 4x3, 8->16 at 2x2 (+4 units), fc 64->10.
        let expected = 2
            * (4 * 27 * 168 + 8 * 36 * 42 + 2 * 8 * 72 * 42 + 8 * 72 * 12 + 16 * 72 * 4 + 4 * 16 * 144 * 4)
            + 2 * 64 * 10;
        assert_eq!(config.forward_flops(), expected as u64);
    }

    #[test]
    fn fast_and_builtin_convolutions_compute_the_same_network() {
        let config = tiny_backbone([8, 8, 8], [1, 1, 1], 6);
        let vars = VarMap::new();
        let vb = VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu);
        let fast = Backbone::new(config, ConvImpl::Fast, vb.clone()).unwrap();
        let builtin = Backbone::new(config, ConvImpl::Builtin, vb).unwrap();
        let x = Tensor::randn(0f32, 1.0, (3, 3, 28, 24), &Device::Cpu).unwrap();
        let (a, b) = (fast.forward(&x).unwrap(), builtin.forward(&x).unwrap());
        let diff = max_abs_diff(&a, &b);
        assert!(diff < 1e-4, "{diff}");
    }
}
