//! Per-channel bias followed by PReLU, fused into one op with a one-pass
//! backward. candle builds PReLU from `maximum`, `minimum` and a broadcast
//! multiply, and the bias from a broadcast add; their backward passes cost
//! several times the convolution they follow. Here each `(image, channel)`
//! plane is one parallel task, forward and backward.

use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::nn::cpu::{contiguous, with_slice};

/// `prelu(x + bias)` per channel of `x [B, C, H, W]`, with `bias [C]` and `slope [C]`.
pub fn bias_prelu(x: &Tensor, bias: &Tensor, slope: &Tensor) -> Result<Tensor> {
    x.contiguous()?
        .apply_op3(&bias.contiguous()?, &slope.contiguous()?, BiasPrelu)
}

struct BiasPrelu;

fn plane_size(l: &Layout, channels: usize) -> Result<usize> {
    let (_, c, h, w) = l.shape().dims4()?;
    if c != channels {
        bail!("bias_prelu: input has {c} channels, bias and slope have {channels}");
    }
    Ok(h * w)
}

impl CustomOp3 for BiasPrelu {
    fn name(&self) -> &'static str {
        "normgate-bias-prelu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, bias, slope) = (
            contiguous(s1, l1, "input")?,
            contiguous(s2, l2, "bias")?,
            contiguous(s3, l3, "slope")?,
        );
        if bias.len() != slope.len() {
            bail!("bias_prelu: {} biases but {} slopes", bias.len(), slope.len());
        }
        let hw = plane_size(l1, bias.len())?;
        let mut out = vec![0.0f32; x.len()];
        out.par_chunks_mut(hw.max(1))
            .zip(x.par_chunks(hw.max(1)))
            .enumerate()
            .for_each(|(i, (o, xs))| {
                let (b, a) = (bias[i % bias.len()], slope[i % bias.len()]);
                for (o, &v) in o.iter_mut().zip(xs) {
                    let z = v + b;
                    *o = if z > 0.0 { z } else { a * z };
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        bias: &Tensor,
        slope: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let channels = bias.elem_count();
        let hw = x.dims4()?.2 * x.dims4()?.3;
        let (b_vals, a_vals) = (bias.to_vec1::<f32>()?, slope.to_vec1::<f32>()?);
        let (dx, sums) = with_slice(x, "input", |xs| {
            with_slice(&grad, "output gradient", |gs| {
                let mut dx = vec![0.0f32; xs.len()];
                // Per plane: (d bias, d slope) partial sums.
                let sums: Vec<(f32, f32)> = dx
                    .par_chunks_mut(hw.max(1))
                    .zip(xs.par_chunks(hw.max(1)).zip(gs.par_chunks(hw.max(1))))
                    .enumerate()
                    .map(|(i, (d, (xp, gp)))| plane_backward(d, xp, gp, b_vals[i % channels], a_vals[i % channels]))
                    .collect();
                Ok((dx, sums))
            })
        })?;
        let (mut db, mut da) = (vec![0.0f32; channels], vec![0.0f32; channels]);
        for (i, (pb, pa)) in sums.into_iter().enumerate() {
            db[i % channels] += pb;
            da[i % channels] += pa;
        }
        let device = x.device();
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), device)?),
            Some(Tensor::from_vec(db, channels, device)?),
            Some(Tensor::from_vec(da, channels, device)?),
        ))
    }
}

/// Values summed side by side in [`plane_backward`]: one vector register's
/// worth, so that the sums vectorize (a single running sum cannot, as float
/// addition does not reassociate).
const LANES: usize = 8;

/// The input gradient of one `(image, channel)` plane into `dx`, and the
/// plane's shares of the bias and slope gradients.
fn plane_backward(dx: &mut [f32], x: &[f32], grad: &[f32], bias: f32, slope: f32) -> (f32, f32) {
    let (mut db, mut da) = ([0.0f32; LANES], [0.0f32; LANES]);
    let blocks = dx.len() / LANES * LANES;
    let (body, tail) = dx.split_at_mut(blocks);
    for ((d, x), g) in body
        .chunks_exact_mut(LANES)
        .zip(x.chunks_exact(LANES))
        .zip(grad.chunks_exact(LANES))
    {
        let (d, x, g): (&mut [f32; LANES], &[f32; LANES], &[f32; LANES]) = (
            d.try_into().expect("lanes"),
            x.try_into().expect("lanes"),
            g.try_into().expect("lanes"),
        );
        for l in 0..LANES {
            let (dx, dslope) = value_backward(x[l] + bias, g[l], slope);
            d[l] = dx;
            da[l] += dslope;
            db[l] += dx;
        }
    }
    let (mut db, mut da) = (db.iter().sum::<f32>(), da.iter().sum::<f32>());
    for ((d, &x), &g) in tail.iter_mut().zip(&x[blocks..]).zip(&grad[blocks..]) {
        let (dx, dslope) = value_backward(x + bias, g, slope);
        *d = dx;
        da += dslope;
        db += dx;
    }
    (db, da)
}

/// For one value `z = x + bias` with output gradient `g`: the input
/// gradient (also the bias gradient) and the slope gradient.
#[inline(always)]
fn value_backward(z: f32, g: f32, slope: f32) -> (f32, f32) {
    if z > 0.0 {
        (g, 0.0)
    } else {
        (slope * g, g * z)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::max_abs_diff;
    use candle_core::{Device, Module, Var};

    #[test]
    fn matches_candles_bias_add_and_prelu_with_gradients() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (3, 4, 5, 6), &dev).unwrap()).unwrap();
        let b = Var::from_tensor(&Tensor::new(&[0.1f32, -0.2, 0.3, 0.0], &dev).unwrap()).unwrap();
        let a = Var::from_tensor(&Tensor::new(&[0.25f32, 0.1, -0.3, 1.5], &dev).unwrap()).unwrap();
        let r = Tensor::randn(0f32, 1.0, (3, 4, 5, 6), &dev).unwrap();
        let fused = bias_prelu(x.as_tensor(), b.as_tensor(), a.as_tensor()).unwrap();
        let shifted = x
            .as_tensor()
            .broadcast_add(&b.as_tensor().reshape((1, 4, 1, 1)).unwrap())
            .unwrap();
        let plain = candle_nn::PReLU::new(a.as_tensor().clone(), false)
            .forward(&shifted)
            .unwrap();
        let close = |p: &Tensor, q: &Tensor, what: &str| {
            let d = max_abs_diff(p, q);
            assert!(d < 1e-5, "{what}: {d}");
        };
        close(&fused, &plain, "output");
        let g1 = (&fused * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let g0 = (&plain * &r).unwrap().sum_all().unwrap().backward().unwrap();
        for (v, what) in [(&x, "d input"), (&b, "d bias"), (&a, "d slope")] {
            close(g1.get(v.as_tensor()).unwrap(), g0.get(v.as_tensor()).unwrap(), what);
        }
    }

    #[test]
    fn channel_mismatch_is_an_error() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((1, 3, 2, 2), candle_core::DType::F32, &dev).unwrap();
        let v = Tensor::zeros(2, candle_core::DType::F32, &dev).unwrap();
        assert!(bias_prelu(&x, &v, &v).is_err());
    }
}
