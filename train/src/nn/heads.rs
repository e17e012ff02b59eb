//! A-Softmax classification heads for candle, computed by the core's `margin`
//! (the same forward and backward the core tests against finite differences),
//! plus the two training options of the seed that act on a head's batch:
//! NormSelect (§3) and hard example mining (§4).

use candle_core::{bail, CpuStorage, CustomOp2, Device, Layout, Result, Shape, Tensor};
use normgate_core::hem;
use normgate_core::margin::{weight_norms, ASoftmax, Batch};
use normgate_core::norm::{NormSelect, SelectMode};

use crate::nn::cpu::{contiguous, with_slice};

/// The mean A-Softmax loss of `features [n, d]` against `weights [classes, d]`.
pub fn a_softmax_loss(features: &Tensor, weights: &Tensor, labels: &[u32], layer: ASoftmax) -> Result<Tensor> {
    if features.dim(0)? != labels.len() {
        bail!(
            "a_softmax_loss: {} features but {} labels",
            features.dim(0)?,
            labels.len()
        );
    }
    features.contiguous()?.apply_op2(
        &weights.contiguous()?,
        ASoftmaxOp {
            labels: labels.to_vec(),
            layer,
        },
    )
}

/// Each sample's A-Softmax loss (no gradient), to rank hard examples.
pub fn a_softmax_losses(features: &Tensor, weights: &Tensor, labels: &[u32], layer: ASoftmax) -> Result<Vec<f32>> {
    let dim = features.dims2()?.1;
    let (f, w) = (
        features.flatten_all()?.to_vec1::<f32>()?,
        weights.flatten_all()?.to_vec1::<f32>()?,
    );
    let op = ASoftmaxOp {
        labels: labels.to_vec(),
        layer,
    };
    Ok(op.forward(&f, &w, dim)?.losses)
}

pub(crate) fn core_error(e: normgate_core::Error) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}

struct ASoftmaxOp {
    labels: Vec<u32>,
    layer: ASoftmax,
}

/// What the forward pass computes, kept for the backward pass.
struct Forward {
    norms: Vec<f32>,
    logits: Vec<f32>,
    losses: Vec<f32>,
    mean: f32,
}

impl ASoftmaxOp {
    fn batch<'a>(&'a self, f: &'a [f32], w: &'a [f32], norms: &'a [f32], dim: usize) -> Batch<'a> {
        Batch {
            x: f,
            weights: w,
            weight_norms: norms,
            labels: &self.labels,
            dim,
        }
    }

    fn forward(&self, f: &[f32], w: &[f32], dim: usize) -> Result<Forward> {
        let mut norms = vec![0.0; w.len() / dim];
        weight_norms(w, dim, &mut norms).map_err(core_error)?;
        let mut logits = vec![0.0; self.labels.len() * norms.len()];
        let mut losses = vec![0.0; self.labels.len()];
        let mean = self
            .layer
            .forward(&self.batch(f, w, &norms, dim), &mut logits, &mut losses)
            .map_err(core_error)?;
        Ok(Forward {
            norms,
            logits,
            losses,
            mean,
        })
    }
}

impl CustomOp2 for ASoftmaxOp {
    fn name(&self) -> &'static str {
        "normgate-a-softmax"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let dim = l1.shape().dims2()?.1;
        let (f, w) = (contiguous(s1, l1, "features")?, contiguous(s2, l2, "head weights")?);
        let mean = self.forward(f, w, dim)?.mean;
        Ok((CpuStorage::F32(vec![mean]), Shape::from(())))
    }

    fn bwd(
        &self,
        features: &Tensor,
        weights: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let scale = grad.to_scalar::<f32>()?;
        let dim = features.dim(1)?;
        let (gx, gw) = with_slice(features, "features", |f| {
            with_slice(weights, "head weights", |w| {
                let fwd = self.forward(f, w, dim)?;
                let (mut gx, mut gw) = (vec![0.0; f.len()], vec![0.0; w.len()]);
                let batch = self.batch(f, w, &fwd.norms, dim);
                self.layer
                    .backward(&batch, &fwd.logits, &mut gx, &mut gw)
                    .map_err(core_error)?;
                gx.iter_mut().chain(gw.iter_mut()).for_each(|g| *g *= scale);
                Ok((gx, gw))
            })
        })?;
        Ok((
            Some(Tensor::from_vec(gx, features.shape(), features.device())?),
            Some(Tensor::from_vec(gw, weights.shape(), weights.device())?),
        ))
    }
}

/// NormSelect as a 0/1 row mask from the core's layer: multiplying the
/// features by it zeroes the dropped rows forward and their gradient backward.
pub fn norm_select_mask(features: &Tensor, select: &mut NormSelect) -> Result<(Tensor, usize)> {
    let (n, d) = features.dims2()?;
    let mut values = features.flatten_all()?.to_vec1::<f32>()?;
    let mut mask = vec![false; n];
    select.forward(&mut values, d, &mut mask).map_err(core_error)?;
    let kept = mask.iter().filter(|&&k| k).count();
    let mask: Vec<f32> = mask.iter().map(|&k| if k { 1.0 } else { 0.0 }).collect();
    Ok((Tensor::from_vec(mask, (n, 1), &Device::Cpu)?, kept))
}

/// A NormSelect layer in the seed's running-average mode (`avg = (avg + batch_mean) / 2`).
pub fn seed_norm_select() -> NormSelect {
    NormSelect::new(SelectMode::RunningAverage { weight: 0.5 }).expect("valid weight")
}

/// Rows of the `keep` hardest samples by loss (online hard example mining), in order.
pub fn hardest_rows(losses: &[f32], keep: usize) -> Vec<usize> {
    let mut rows = vec![0; keep.min(losses.len())];
    let n = hem::hardest(losses, &mut rows);
    rows.truncate(n);
    rows.sort_unstable();
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;
    use normgate_core::margin::Margin;

    #[test]
    fn the_op_gives_the_cores_loss_and_finite_difference_gradients() {
        let dev = Device::Cpu;
        let f = Var::from_tensor(&Tensor::randn(0f32, 2.0, (4, 6), &dev).unwrap()).unwrap();
        let w = Var::from_tensor(&Tensor::randn(0f32, 1.0, (5, 6), &dev).unwrap()).unwrap();
        let labels = [0u32, 4, 2, 2];
        let layer = ASoftmax {
            margin: Margin::new(4).unwrap(),
            lambda: 5.0,
        };
        let loss = a_softmax_loss(f.as_tensor(), w.as_tensor(), &labels, layer).unwrap();
        let per_sample = a_softmax_losses(f.as_tensor(), w.as_tensor(), &labels, layer).unwrap();
        let mean = per_sample.iter().sum::<f32>() / 4.0;
        assert!((loss.to_scalar::<f32>().unwrap() - mean).abs() < 1e-5);
        let scaled = (loss * 3.0).unwrap();
        let grads = scaled.backward().unwrap();
        let gx = grads
            .get(f.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let base = f.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let eps = 1e-2;
        for i in [0, 7, 23] {
            let at = |d: f32| {
                let mut v = base.clone();
                v[i] += d;
                let t = Tensor::from_vec(v, (4, 6), &dev).unwrap();
                3.0 * a_softmax_losses(&t, w.as_tensor(), &labels, layer)
                    .unwrap()
                    .iter()
                    .sum::<f32>()
                    / 4.0
            };
            let numeric = (at(eps) - at(-eps)) / (2.0 * eps);
            assert!(
                (numeric - gx[i]).abs() < 2e-2 * (1.0 + numeric.abs()),
                "{i}: {numeric} vs {}",
                gx[i]
            );
        }
        assert!(grads.get(w.as_tensor()).is_some());
    }

    #[test]
    fn norm_select_masks_low_norm_rows() {
        let f = Tensor::new(&[[3.0f32, 4.0], [0.3, 0.4], [6.0, 8.0]], &Device::Cpu).unwrap();
        let mut select = NormSelect::new(SelectMode::Fixed(1.0)).unwrap();
        let (mask, kept) = norm_select_mask(&f, &mut select).unwrap();
        assert_eq!(kept, 2);
        assert_eq!(mask.flatten_all().unwrap().to_vec1::<f32>().unwrap(), [1.0, 0.0, 1.0]);
    }

    #[test]
    fn hardest_rows_come_back_in_batch_order() {
        assert_eq!(hardest_rows(&[0.1, 5.0, 2.0, 9.0], 2), [1, 3]);
        assert_eq!(hardest_rows(&[1.0], 4), [0]);
    }
}
