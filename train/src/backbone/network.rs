//! The project's SphereFace-family backbone: 3x3 convolutions with PReLU,
//! each stage a stride-2 convolution followed by residual units
//! (`x + prelu(conv(prelu(conv(x))))`), then a linear `fc5` whose
//! un-normalised output is the feature the gate measures the norm of.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Init, Linear, PReLU, VarBuilder};

use crate::nn::activation::bias_prelu;
use crate::nn::conv::{conv2d, ConvParams};

/// Which implementation of convolution, bias and PReLU the network runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ConvImpl {
    /// This crate's ops: im2col + matrix multiply convolution ([`crate::nn::conv`])
    /// and the fused bias + PReLU ([`crate::nn::activation`]).
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

    /// Trainable parameters (weights, biases, PReLU slopes).
    pub fn parameters(&self) -> usize {
        let convs: usize = self
            .convolutions()
            .iter()
            .map(|&(ci, co, _, _)| co * ci * 9 + 2 * co)
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

/// A 3x3 convolution with bias and PReLU.
pub(crate) struct ConvUnit {
    weight: Tensor,
    bias: Tensor,
    slope: Tensor,
    params: ConvParams,
}

impl ConvUnit {
    pub(crate) fn new(c_in: usize, c_out: usize, stride: usize, vb: VarBuilder) -> Result<Self> {
        Self::with_gain(c_in, c_out, stride, 1.0, vb)
    }

    /// A unit whose initial weights are `gain` times He's.
    fn with_gain(c_in: usize, c_out: usize, stride: usize, gain: f64, vb: VarBuilder) -> Result<Self> {
        // He initialisation for PReLU with slope 0.25.
        let std = gain * (2.0 / (9.0 * c_in as f64 * (1.0 + 0.25 * 0.25))).sqrt();
        let weight = vb.get_with_hints((c_out, c_in, 3, 3), "weight", Init::Randn { mean: 0.0, stdev: std })?;
        let bias = vb.get_with_hints(c_out, "bias", Init::Const(0.0))?;
        let slope = vb.pp("prelu").get_with_hints(c_out, "weight", Init::Const(0.25))?;
        Ok(Self {
            weight,
            bias,
            slope,
            params: ConvParams { stride, pad: 1 },
        })
    }

    pub(crate) fn forward(&self, x: &Tensor, conv: ConvImpl) -> Result<Tensor> {
        match conv {
            ConvImpl::Fast => bias_prelu(&conv2d(x, &self.weight, self.params)?, &self.bias, &self.slope),
            ConvImpl::Builtin => {
                let y = x.conv2d(&self.weight, self.params.pad, self.params.stride, 1, 1)?;
                let y = y.broadcast_add(&self.bias.reshape((1, (), 1, 1))?)?;
                PReLU::new(self.slope.clone(), false).forward(&y)
            }
        }
    }
}

/// A stage's residual units, each `x + b(a(x))` with two 3x3 convs (PReLU
/// after both); the backbone, detector and refiner share them.
pub(crate) struct ResidualUnits(Vec<(ConvUnit, ConvUnit)>);

impl ResidualUnits {
    /// `units` units of `width` channels, named `unit{u}.a` and `unit{u}.b`
    /// under `vb`; each branch's last conv starts at `branch_gain` times
    /// He's scale.
    pub(crate) fn new(width: usize, units: usize, branch_gain: f64, vb: &VarBuilder) -> Result<Self> {
        let units = (0..units)
            .map(|u| {
                let vu = vb.pp(format!("unit{u}"));
                Ok((
                    ConvUnit::new(width, width, 1, vu.pp("a"))?,
                    ConvUnit::with_gain(width, width, 1, branch_gain, vu.pp("b"))?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self(units))
    }

    pub(crate) fn forward(&self, x: &Tensor, conv: ConvImpl) -> Result<Tensor> {
        let mut x = x.clone();
        for (a, b) in &self.0 {
            x = (&x + b.forward(&a.forward(&x, conv)?, conv)?)?;
        }
        Ok(x)
    }
}

/// The backbone: input `[B, 3, height, width]`, output `[B, feature_dim]`.
pub struct Backbone {
    config: BackboneConfig,
    /// Stem and each stage's stride-2 convolution, followed by that stage's residual units.
    stages: Vec<(ConvUnit, ResidualUnits)>,
    fc5: Linear,
    conv: ConvImpl,
}

impl Backbone {
    /// Builds (or loads, through `vb`) the network.
    pub fn new(config: BackboneConfig, conv: ConvImpl, vb: VarBuilder) -> Result<Self> {
        let stem = ConvUnit::new(3, config.stem, 2, vb.pp("stem"))?;
        let mut stages = vec![(stem, ResidualUnits(Vec::new()))];
        let mut c = config.stem;
        for (s, (&width, &units)) in config.widths.iter().zip(&config.units).enumerate() {
            let vs = vb.pp(format!("stage{s}"));
            let down = ConvUnit::new(c, width, 2, vs.pp("down"))?;
            // Each residual unit adds its branch's variance to the stage's;
            // scaling the branch's last conv by 1/sqrt(units) keeps a deeper
            // stage's output scale at init near a one-unit stage's. One unit:
            // gain 1 (the shipped network's init is unchanged).
            let branch_gain = 1.0 / (units.max(1) as f64).sqrt();
            let residual = ResidualUnits::new(width, units, branch_gain, &vs)?;
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

    /// Un-normalised features of a batch of crops.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = x.clone();
        for (down, units) in &self.stages {
            x = units.forward(&down.forward(&x, self.conv)?, self.conv)?;
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
    let vb = crate::nn::vars::SeededVars::builder(&map, seed, &candle_core::Device::Cpu);
    let net = Backbone::new(config, ConvImpl::Fast, vb.pp(prefix))?;
    crate::nn::optim::load_weights(&map, dir)?;
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

    /// Mean feature norm of a freshly built network on fixed random crops.
    fn initial_feature_norm(units: [usize; 3]) -> f32 {
        let config = tiny_backbone([16, 16, 16], units, 8);
        let vars = VarMap::new();
        let vb = crate::nn::vars::SeededVars::builder(&vars, 3, &Device::Cpu);
        let net = Backbone::new(config, ConvImpl::Fast, vb).unwrap();
        let x = Tensor::randn(0f32, 1.0, (8, 3, 28, 24), &Device::Cpu).unwrap();
        let f = net.forward(&x).unwrap();
        f.sqr()
            .unwrap()
            .sum(1)
            .unwrap()
            .sqrt()
            .unwrap()
            .mean_all()
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    #[test]
    fn deeper_stages_start_at_the_scale_of_one_unit() {
        // At He scale every unit doubles the variance: four units per stage
        // started 7.6 times larger in norm than one unit here.
        let (one, four) = (initial_feature_norm([1, 1, 1]), initial_feature_norm([4, 4, 4]));
        assert!(four / one < 3.0, "one unit {one}, four units {four}");
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
