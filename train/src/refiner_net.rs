//! The landmark refiner's networks. Both read a square face crop and give
//! the five points as shares of its side, so the device runs either the same
//! way. `Regression` is the backbone with a 10-value fc5: it must turn the
//! face's position in the crop into numbers through one dense layer.
//! `Heatmap` keeps the position spatial (integral regression): the three
//! stages are merged top-down to stride 4, one map per landmark is
//! soft-maxed over the cells, and each point is the expected cell centre,
//! which moves with the face in the crop and is exact below a cell.

use candle_core::{Device, Result, Tensor, D};
use candle_nn::{Init, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::backbone::{Backbone, BackboneConfig, ConvImpl, ConvUnit, Trunk};
use crate::conv::{conv2d, ConvParams};

/// How the refiner turns features into points.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RefinerHead {
    /// A dense layer over the last stage (the first refiners).
    #[default]
    Regression,
    /// Soft-argmax over per-landmark maps at stride 4.
    Heatmap,
}

/// Channels of the heatmap head's merged feature maps.
pub const HEAD_CHANNELS: usize = 64;

/// Landmarks per face.
const POINTS: usize = 5;

/// A refiner network.
pub enum RefinerNet {
    /// Backbone with a 10-value fc5.
    Regression(Backbone),
    /// Trunk, top-down merge and soft-argmax.
    Heatmap(Trunk, HeatmapHead),
}

impl RefinerNet {
    /// Builds (or loads, through `vb`) the network for `config` (its
    /// `feature_dim` is 10) with the given head.
    pub fn new(config: BackboneConfig, head: RefinerHead, vb: VarBuilder) -> Result<Self> {
        Ok(match head {
            RefinerHead::Regression => Self::Regression(Backbone::new(config, ConvImpl::Fast, vb)?),
            RefinerHead::Heatmap => Self::Heatmap(
                Trunk::new(config, ConvImpl::Fast, vb.clone())?,
                HeatmapHead::new(config, vb.pp("head"))?,
            ),
        })
    }

    /// The five points of each crop, `[B, 10]` as (x, y) shares of the side.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Regression(net) => net.forward(x),
            Self::Heatmap(trunk, head) => head.forward(&trunk.stage_outputs(x)?),
        }
    }
}

/// Top-down merge of the stages to stride 4 and one map per landmark.
pub struct HeatmapHead {
    /// Lateral 3x3 conv + PReLU of stages 0, 1, 2 to [`HEAD_CHANNELS`].
    laterals: [ConvUnit; 3],
    /// The maps: 3x3 conv with bias, no activation.
    weight: Tensor,
    bias: Tensor,
    /// Cell centres `[cells, 2]` as shares of the side, row by row.
    grid: Tensor,
}

impl HeatmapHead {
    fn new(config: BackboneConfig, vb: VarBuilder) -> Result<Self> {
        let laterals =
            [0, 1, 2].map(|s| ConvUnit::new(config.widths[s], HEAD_CHANNELS, 1, vb.pp(format!("lateral{s}"))));
        let [a, b, c] = laterals;
        let std = (1.0 / (9.0 * HEAD_CHANNELS as f64)).sqrt();
        let weight = vb.pp("out").get_with_hints(
            (POINTS, HEAD_CHANNELS, 3, 3),
            "weight",
            Init::Randn { mean: 0.0, stdev: std },
        )?;
        let bias = vb.pp("out").get_with_hints(POINTS, "bias", Init::Const(0.0))?;
        let (h, w) = map_size(&config);
        let grid = Tensor::from_vec(cell_centres(h, w), (h * w, 2), &Device::Cpu)?;
        Ok(Self {
            laterals: [a?, b?, c?],
            weight,
            bias,
            grid,
        })
    }

    /// `stages`: the trunk's outputs (stem, stage 0, 1, 2).
    fn forward(&self, stages: &[Tensor]) -> Result<Tensor> {
        let lateral = |s: usize| self.laterals[s].forward(&stages[s + 1], ConvImpl::Fast);
        let mut merged = lateral(2)?;
        for s in [1, 0] {
            let (_, _, h, w) = merged.dims4()?;
            merged = (merged.upsample_nearest2d(2 * h, 2 * w)? + lateral(s)?)?;
        }
        let maps = conv2d(&merged, &self.weight, ConvParams { stride: 1, pad: 1 })?
            .broadcast_add(&self.bias.reshape((1, POINTS, 1, 1))?)?;
        let (batch, _, h, w) = maps.dims4()?;
        let weights = candle_nn::ops::softmax(&maps.reshape((batch, POINTS, h * w))?, D::Minus1)?;
        weights.broadcast_matmul(&self.grid)?.reshape((batch, 2 * POINTS))
    }
}

impl RefinerHead {
    /// Trainable parameters of a refiner with this head on `config`.
    pub fn parameters(self, config: &BackboneConfig) -> usize {
        match self {
            Self::Regression => config.parameters(),
            Self::Heatmap => {
                let laterals: usize = config.widths.iter().map(|&c| HEAD_CHANNELS * (c * 9 + 2)).sum();
                config.trunk_parameters() + laterals + POINTS * (HEAD_CHANNELS * 9 + 1)
            }
        }
    }

    /// Floating-point operations of reading one crop (a multiply-add counts 2;
    /// the soft-argmax is left out, a few thousand).
    pub fn forward_flops(self, config: &BackboneConfig) -> u64 {
        match self {
            Self::Regression => config.forward_flops(),
            Self::Heatmap => {
                let (h, w) = map_size(config);
                // Stage s's maps are (h, w) halved s times.
                let laterals: usize = (0..3)
                    .map(|s| 2 * HEAD_CHANNELS * config.widths[s] * 9 * (h >> s) * (w >> s))
                    .sum();
                config.trunk_flops() + (laterals + 2 * POINTS * HEAD_CHANNELS * 9 * h * w) as u64
            }
        }
    }
}

/// Side of the heatmaps: the stride-4 stage's (input / 4, rounded up per stride).
pub fn map_size(config: &BackboneConfig) -> (usize, usize) {
    let down = |n: usize| n.div_ceil(2).div_ceil(2);
    (down(config.height), down(config.width))
}

/// The centre of each of `h x w` cells as (x, y) shares of the side, row by row.
pub fn cell_centres(h: usize, w: usize) -> Vec<f32> {
    (0..h)
        .flat_map(|i| (0..w).flat_map(move |j| [(j as f32 + 0.5) / w as f32, (i as f32 + 0.5) / h as f32]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::tiny_backbone;
    use candle_core::DType;
    use candle_nn::VarMap;

    #[test]
    fn a_peaked_map_puts_the_point_on_its_cell_centre() {
        // Five maps over 4x4 cells, each with one dominant cell.
        let cells = [(0, 0), (1, 3), (2, 2), (3, 0), (3, 3)];
        let mut maps = vec![0f32; POINTS * 16];
        for (k, &(i, j)) in cells.iter().enumerate() {
            maps[k * 16 + i * 4 + j] = 30.0;
        }
        let maps = Tensor::from_vec(maps, (1, POINTS, 16), &Device::Cpu).unwrap();
        let grid = Tensor::from_vec(cell_centres(4, 4), (16, 2), &Device::Cpu).unwrap();
        let weights = candle_nn::ops::softmax(&maps, D::Minus1).unwrap();
        let points = weights
            .broadcast_matmul(&grid)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for (k, &(i, j)) in cells.iter().enumerate() {
            let expected = [(j as f32 + 0.5) / 4.0, (i as f32 + 0.5) / 4.0];
            assert!((points[2 * k] - expected[0]).abs() < 1e-4, "{k}: {points:?}");
            assert!((points[2 * k + 1] - expected[1]).abs() < 1e-4, "{k}: {points:?}");
        }
    }

    #[test]
    fn the_heatmap_refiner_gives_points_inside_the_crop_and_trains() {
        let mut config = tiny_backbone([4, 6, 8], [1, 0, 1], 10);
        (config.height, config.width) = (32, 32);
        let vars = VarMap::new();
        let net = RefinerNet::new(
            config,
            RefinerHead::Heatmap,
            VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu),
        )
        .unwrap();
        let x = Tensor::randn(0f32, 1.0, (2, 3, 32, 32), &Device::Cpu).unwrap();
        let points = net.forward(&x).unwrap();
        assert_eq!(points.dims(), [2, 10]);
        let built: usize = vars.all_vars().iter().map(|v| v.elem_count()).sum();
        assert_eq!(built, RefinerHead::Heatmap.parameters(&config));
        // Trunk at 32x32: stem 3->4 at 16x16, 4->4 at 8x8 (+1 unit), 4->6 at 4x4, 6->8 at 2x2 (+1 unit);
        // laterals 4, 6, 8 -> 64 at 8x8, 4x4, 2x2; maps 64->5 at 8x8.
        let trunk = 2 * 9 * (4 * 3 * 256 + 4 * 4 * 64 + 2 * 4 * 4 * 64 + 6 * 4 * 16 + 8 * 6 * 4 + 2 * 8 * 8 * 4);
        let head = 2 * 9 * 64 * (4 * 64 + 6 * 16 + 8 * 4) + 2 * 9 * 5 * 64 * 64;
        assert_eq!(RefinerHead::Heatmap.forward_flops(&config), (trunk + head) as u64);
        let values = points.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(values.iter().all(|v| (0.0..=1.0).contains(v)), "{values:?}");
        // Every variable gets a gradient: the head is wired to the trunk.
        let grads = points.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        for var in vars.all_vars() {
            assert!(grads.get(var.as_tensor()).is_some(), "a variable without a gradient");
        }
    }
}
