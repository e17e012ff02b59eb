//! 2-D convolution for candle's CPU backend as custom ops, with a backward
//! that is one matrix multiply per image for each gradient:
//!
//! - forward: `Y_b = W · im2col(X_b)`;
//! - weight gradient: `dW = Σ_b dY_b · im2col(X_b)ᵀ`;
//! - input gradient: `dX_b = col2im(Wᵀ · dY_b)`, skipped when the input
//!   needs none (the network's input image).
//!
//! candle's built-in CPU backward runs the input gradient through a naive
//! transposed convolution and the weight gradient as a convolution with a
//! feature-map-sized kernel; this op replaces both. When candle records the
//! op for a backward pass, the forward keeps its column matrices for the
//! weight gradient instead of the backward building them again (about 7 %
//! of the detector's step); otherwise they live in per-thread buffers that are
//! reused across layers and steps. Images of a batch are spread over rayon's
//! threads (`RAYON_NUM_THREADS`).

use std::cell::RefCell;
use std::sync::Mutex;

use candle_core::{bail, CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::nn::cpu::{contiguous, with_slice};
use crate::nn::gemm::{matmul, Operand};
use crate::nn::im2col::{col2im, im2col, ConvGeometry};

/// Stride and zero padding of a convolution (the same in both directions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvParams {
    /// Stride.
    pub stride: usize,
    /// Zero padding on every side.
    pub pad: usize,
}

/// `conv2d(x [B, Cin, H, W], w [Cout, Cin, kh, kw])` with the fast backward.
pub fn conv2d(x: &Tensor, w: &Tensor, params: ConvParams) -> Result<Tensor> {
    // candle keeps the op for a backward pass exactly when an operand is tracked.
    let recorded = x.track_op() || w.track_op();
    x.contiguous()?.apply_op2(
        &w.contiguous()?,
        Conv2d {
            params,
            kept_columns: recorded.then(|| Mutex::new(Vec::new())),
        },
    )
}

thread_local! {
    /// Two column matrices of the image in hand (im2col of the input, and the
    /// input gradient before col2im); they grow to the largest layer and stay.
    static COLUMNS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Column matrices that a backward pass is done with, for the next forward:
/// allocated once for every layer instead of anew (and zeroed) each step.
static SPARE_COLUMNS: Mutex<Vec<Vec<f32>>> = Mutex::new(Vec::new());

/// The smallest spare buffer that holds `len` values (a new one if none
/// does), cut to `len`; its values are stale, `im2col` overwrites them all.
fn spare_columns(len: usize) -> Vec<f32> {
    let mut spare = lock(&SPARE_COLUMNS);
    let fit = (0..spare.len())
        .filter(|&i| spare[i].capacity() >= len)
        .min_by_key(|&i| spare[i].capacity());
    let mut columns = fit.map(|i| spare.swap_remove(i)).unwrap_or_default();
    columns.resize(len, 0.0);
    columns
}

fn with_columns<R>(len: usize, f: impl FnOnce(&mut [f32], &mut [f32]) -> R) -> R {
    COLUMNS.with(|cell| {
        let mut buf = cell.borrow_mut();
        if buf.len() < 2 * len {
            buf.resize(2 * len, 0.0);
        }
        let (a, b) = buf[..2 * len].split_at_mut(len);
        f(a, b)
    })
}

fn geometry(x: (usize, usize, usize, usize), w: (usize, usize, usize, usize), p: ConvParams) -> Result<ConvGeometry> {
    let (_, c_in, h, width) = x;
    let (c_out, w_in, kh, kw) = w;
    if c_in != w_in {
        bail!("conv2d: input has {c_in} channels, kernel expects {w_in}");
    }
    if p.stride == 0 || h + 2 * p.pad < kh || width + 2 * p.pad < kw {
        bail!(
            "conv2d: kernel {kh}x{kw} does not fit {h}x{width} with padding {}",
            p.pad
        );
    }
    Ok(ConvGeometry {
        c_in,
        h,
        w: width,
        c_out,
        kh,
        kw,
        stride: p.stride,
        pad: p.pad,
    })
}

/// Runs `per_image(image index, output chunk, its kept columns if any, gemm
/// threads)` over a batch: images in parallel when there are several,
/// otherwise the matrix multiply itself in parallel.
fn for_each_image(
    out: &mut [f32],
    out_chunk: usize,
    kept: Option<(&mut [f32], usize)>,
    per_image: impl Fn(usize, &mut [f32], Option<&mut [f32]>, usize) + Sync,
) {
    let threads = rayon::current_num_threads();
    let images = out.len() / out_chunk.max(1);
    let kept: Vec<Option<&mut [f32]>> = match kept {
        Some((columns, len)) => columns.chunks_mut(len.max(1)).map(Some).collect(),
        None => (0..images).map(|_| None).collect(),
    };
    if images >= 2 && threads > 1 {
        out.par_chunks_mut(out_chunk.max(1))
            .zip(kept)
            .enumerate()
            .for_each(|(b, (o, c))| per_image(b, o, c, 1));
    } else {
        out.chunks_mut(out_chunk.max(1))
            .zip(kept)
            .enumerate()
            .for_each(|(b, (o, c))| per_image(b, o, c, threads));
    }
}

/// The convolution op; its backward computes both gradients in one pass ([`backward`]).
struct Conv2d {
    params: ConvParams,
    /// Present when candle records the op: the forward's column matrices of
    /// every image, taken by the backward.
    kept_columns: Option<Mutex<Vec<f32>>>,
}

impl CustomOp2 for Conv2d {
    fn name(&self) -> &'static str {
        "normgate-conv2d"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = geometry(l1.shape().dims4()?, l2.shape().dims4()?, self.params)?;
        let (x, w) = (
            contiguous(s1, l1, "conv2d input")?,
            contiguous(s2, l2, "conv2d kernel")?,
        );
        let batch = l1.shape().dims4()?.0;
        let columns_len = g.k() * g.out_pixels();
        let mut out = vec![0.0f32; batch * g.out_len()];
        let convolve = |b: usize, y: &mut [f32], cols: &mut [f32], threads: usize| {
            im2col(&g, &x[b * g.in_len()..][..g.in_len()], cols);
            let (kernel, columns) = (
                Operand::plain(w, g.c_out, g.k()),
                Operand::plain(cols, g.k(), g.out_pixels()),
            );
            matmul(kernel, columns, y, false, threads);
        };
        let per_image = |b: usize, y: &mut [f32], kept: Option<&mut [f32]>, threads: usize| match kept {
            Some(cols) => convolve(b, y, cols, threads),
            // One image's columns at a time, in this thread's reused buffer.
            None => with_columns(columns_len, |cols, _| convolve(b, y, cols, threads)),
        };
        match &self.kept_columns {
            Some(kept) => {
                let mut columns = spare_columns(batch * columns_len);
                for_each_image(&mut out, g.out_len(), Some((&mut columns, columns_len)), per_image);
                *lock(kept) = columns;
            }
            None => for_each_image(&mut out, g.out_len(), None, per_image),
        }
        Ok((
            CpuStorage::F32(out),
            Shape::from((batch, g.c_out, g.h_out(), g.w_out())),
        ))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let g = geometry(x.dims4()?, w.dims4()?, self.params)?;
        let batch = x.dims4()?.0;
        let need_dx = x.track_op();
        let kept = self.kept_columns.as_ref().map(|k| std::mem::take(&mut *lock(k)));
        let kept = kept.filter(|k| k.len() == batch * g.k() * g.out_pixels());
        let (dx, dw) = with_slice(x, "conv2d input", |xs| {
            with_slice(w, "conv2d kernel", |ws| {
                with_slice(&grad, "conv2d output gradient", |gs| {
                    Ok(backward(&g, batch, xs, ws, gs, need_dx, kept.as_deref()))
                })
            })
        })?;
        if let Some(columns) = kept {
            lock(&SPARE_COLUMNS).push(columns);
        }
        let dx = match dx {
            Some(dx) => Some(Tensor::from_vec(dx, x.shape(), x.device())?),
            None => None,
        };
        Ok((dx, Some(Tensor::from_vec(dw, w.shape(), w.device())?)))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The buffers are valid whatever a panicking holder left in them.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Both gradients of a batch: each thread takes a contiguous run of images,
/// writes their input gradients and sums their weight gradients; the
/// per-thread sums are added at the end. `kept`: the forward's column
/// matrices of the whole batch; without them each image's are built again.
fn backward(
    g: &ConvGeometry,
    batch: usize,
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    need_dx: bool,
    kept: Option<&[f32]>,
) -> (Option<Vec<f32>>, Vec<f32>) {
    let threads = rayon::current_num_threads().min(batch).max(1);
    let per_thread = batch.div_ceil(threads);
    // One thread: let the matrix multiplies use every core instead.
    let gemm_threads = if threads == 1 { rayon::current_num_threads() } else { 1 };
    let mut dx = if need_dx {
        vec![0.0f32; batch * g.in_len()]
    } else {
        Vec::new()
    };
    let chunk = if need_dx { per_thread * g.in_len() } else { 1 };
    let mut dx_chunks: Vec<&mut [f32]> = dx.chunks_mut(chunk).collect();
    dx_chunks.resize_with(threads, Default::default);
    let partials: Vec<Vec<f32>> = dx_chunks
        .into_par_iter()
        .enumerate()
        .map(|(t, dx_run)| {
            let mut dw = vec![0.0f32; g.c_out * g.k()];
            let columns_len = g.k() * g.out_pixels();
            with_columns(columns_len, |scratch, dcols| {
                for (i, b) in (t * per_thread..((t + 1) * per_thread).min(batch)).enumerate() {
                    let cols: &[f32] = match kept {
                        Some(kept) => &kept[b * columns_len..][..columns_len],
                        None => {
                            im2col(g, &x[b * g.in_len()..][..g.in_len()], scratch);
                            scratch
                        }
                    };
                    let dy_b = Operand::plain(&dy[b * g.out_len()..][..g.out_len()], g.c_out, g.out_pixels());
                    let cols_t = Operand::transposed(cols, g.out_pixels(), g.k());
                    matmul(dy_b, cols_t, &mut dw, i > 0, gemm_threads);
                    if need_dx {
                        matmul(Operand::transposed(w, g.k(), g.c_out), dy_b, dcols, false, gemm_threads);
                        col2im(g, dcols, &mut dx_run[i * g.in_len()..][..g.in_len()]);
                    }
                }
            });
            dw
        })
        .collect();
    let dw = partials
        .into_iter()
        .reduce(|mut acc, p| {
            acc.iter_mut().zip(&p).for_each(|(a, v)| *a += v);
            acc
        })
        .unwrap_or_else(|| vec![0.0; g.c_out * g.k()]);
    (need_dx.then_some(dx), dw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{max_abs, max_abs_diff};
    use candle_core::{Device, Var};

    fn random(shape: &[usize], seed: u64) -> Tensor {
        let n: usize = shape.iter().product();
        let mut s = seed;
        let values: Vec<f32> = (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect();
        Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
    }

    /// max |a - b| / max |b|.
    fn relative_error(a: &Tensor, b: &Tensor) -> f32 {
        max_abs_diff(a, b) / max_abs(b).max(1e-12)
    }

    /// Output and both gradients of `sum(conv(x, w) * r)`, by this op or candle's.
    fn run(x: &Tensor, w: &Tensor, r: &Tensor, p: ConvParams, custom: bool) -> (Tensor, Tensor, Tensor) {
        let (xv, wv) = (Var::from_tensor(x).unwrap(), Var::from_tensor(w).unwrap());
        let y = if custom {
            conv2d(xv.as_tensor(), wv.as_tensor(), p).unwrap()
        } else {
            xv.as_tensor().conv2d(wv.as_tensor(), p.pad, p.stride, 1, 1).unwrap()
        };
        let grads = (&y * r).unwrap().sum_all().unwrap().backward().unwrap();
        (
            y,
            grads.get(xv.as_tensor()).unwrap().clone(),
            grads.get(wv.as_tensor()).unwrap().clone(),
        )
    }

    #[test]
    fn output_and_gradients_equal_candles_own_convolution() {
        // (batch, c_in, h, w, c_out, k, stride, pad): stride 1 and 2, padding, odd sizes, batch 1 and 64.
        let cases = [
            (1, 3, 112, 96, 8, 3, 2, 1),
            (64, 8, 14, 12, 16, 3, 1, 1),
            (64, 4, 9, 7, 5, 3, 2, 1),
            (2, 3, 11, 13, 4, 3, 1, 0),
            (3, 2, 8, 8, 3, 1, 1, 0),
            (1, 5, 7, 9, 6, 3, 2, 2),
        ];
        for (i, &(b, c_in, h, w, c_out, k, stride, pad)) in cases.iter().enumerate() {
            let x = random(&[b, c_in, h, w], i as u64);
            let wt = random(&[c_out, c_in, k, k], 100 + i as u64);
            let p = ConvParams { stride, pad };
            let probe_shape = x.conv2d(&wt, pad, stride, 1, 1).unwrap().dims().to_vec();
            let r = random(&probe_shape, 200 + i as u64);
            let (y1, gx1, gw1) = run(&x, &wt, &r, p, true);
            let (y0, gx0, gw0) = run(&x, &wt, &r, p, false);
            for (what, a, e) in [
                ("output", &y1, &y0),
                ("input grad", &gx1, &gx0),
                ("weight grad", &gw1, &gw0),
            ] {
                let err = relative_error(a, e);
                assert!(err < 1e-5, "case {i} {what}: relative error {err}");
            }
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        // The loss is linear in x and in w, so central differences are exact up to rounding.
        let (x, w, r) = (
            random(&[1, 2, 5, 4], 1),
            random(&[3, 2, 3, 3], 2),
            random(&[1, 3, 3, 2], 3),
        );
        let p = ConvParams { stride: 2, pad: 1 };
        let (_, gx, gw) = run(&x, &w, &r, p, true);
        let loss = |x: &Tensor, w: &Tensor| -> f64 {
            let y = conv2d(x, w, p).unwrap();
            f64::from((&y * &r).unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap())
        };
        let eps = 1e-2;
        for (t, g, is_x) in [(&x, &gx, true), (&w, &gw, false)] {
            let base = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let analytic = g.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for i in 0..base.len() {
                let shifted = |d: f32| {
                    let mut v = base.clone();
                    v[i] += d;
                    Tensor::from_vec(v, t.dims(), &Device::Cpu).unwrap()
                };
                let (plus, minus) = (shifted(eps), shifted(-eps));
                let numeric = if is_x {
                    (loss(&plus, &w) - loss(&minus, &w)) / (2.0 * f64::from(eps))
                } else {
                    (loss(&x, &plus) - loss(&x, &minus)) / (2.0 * f64::from(eps))
                };
                assert!(
                    (numeric - f64::from(analytic[i])).abs() < 1e-3,
                    "{i}: {numeric} vs {}",
                    analytic[i]
                );
            }
        }
    }

    #[test]
    fn untracked_inputs_give_the_same_output() {
        // Plain tensors: candle records nothing, so no columns are kept.
        let (x, w) = (random(&[4, 3, 9, 8], 5), random(&[6, 3, 3, 3], 6));
        let p = ConvParams { stride: 2, pad: 1 };
        let plain = conv2d(&x, &w, p).unwrap();
        let (tracked, _, _) = run(&x, &w, &plain.ones_like().unwrap(), p, true);
        assert_eq!(max_abs_diff(&plain, &tracked), 0.0);
    }

    #[test]
    fn a_second_backward_builds_the_columns_again() {
        let (xv, wv) = (
            Var::from_tensor(&random(&[3, 2, 7, 6], 7)).unwrap(),
            Var::from_tensor(&random(&[4, 2, 3, 3], 8)).unwrap(),
        );
        let y = conv2d(xv.as_tensor(), wv.as_tensor(), ConvParams { stride: 1, pad: 1 }).unwrap();
        let loss = (&y * &random(y.dims(), 9)).unwrap().sum_all().unwrap();
        let (first, second) = (loss.backward().unwrap(), loss.backward().unwrap());
        for v in [xv.as_tensor(), wv.as_tensor()] {
            assert_eq!(max_abs_diff(first.get(v).unwrap(), second.get(v).unwrap()), 0.0);
        }
    }

    #[test]
    fn mismatched_channels_are_an_error() {
        let err = conv2d(
            &random(&[1, 3, 5, 5], 1),
            &random(&[2, 4, 3, 3], 2),
            ConvParams { stride: 1, pad: 1 },
        );
        assert!(err.unwrap_err().to_string().contains("channels"));
    }
}
