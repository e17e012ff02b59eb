//! The column matrix of a 2-D convolution: one row per (input channel, kernel
//! row, kernel column), one column per output pixel, so that the convolution
//! is one matrix multiply. `col2im` scatters such a matrix back onto the input
//! grid (accumulating where windows overlap), which gives the input gradient.

/// The shape of one convolution: square stride and symmetric zero padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConvGeometry {
    /// Input channels.
    pub c_in: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Output channels.
    pub c_out: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Stride in both directions.
    pub stride: usize,
    /// Zero padding on every side.
    pub pad: usize,
}

impl ConvGeometry {
    /// Output height.
    pub fn h_out(&self) -> usize {
        (self.h + 2 * self.pad - self.kh) / self.stride + 1
    }

    /// Output width.
    pub fn w_out(&self) -> usize {
        (self.w + 2 * self.pad - self.kw) / self.stride + 1
    }

    /// Rows of the column matrix: `c_in * kh * kw`.
    pub fn k(&self) -> usize {
        self.c_in * self.kh * self.kw
    }

    /// Output pixels per channel: columns of the column matrix.
    pub fn out_pixels(&self) -> usize {
        self.h_out() * self.w_out()
    }

    /// Values of one input image.
    pub fn in_len(&self) -> usize {
        self.c_in * self.h * self.w
    }

    /// Values of one output image.
    pub fn out_len(&self) -> usize {
        self.c_out * self.out_pixels()
    }

    /// For kernel offset `kk` along an axis of input size `size`: the range
    /// of output positions whose input position `o * stride + kk - pad` is inside.
    fn valid(&self, kk: usize, size: usize, out: usize) -> (usize, usize) {
        let lo = self.pad.saturating_sub(kk).div_ceil(self.stride);
        // o * stride + kk - pad <= size - 1  <=>  o <= (size - 1 + pad - kk) / stride
        let hi = if size + self.pad > kk {
            ((size - 1 + self.pad - kk) / self.stride + 1).min(out)
        } else {
            0
        };
        (lo.min(hi), hi)
    }
}

/// Fills `cols` (`k() x out_pixels()`) from one input image (`in_len()` values).
pub fn im2col(g: &ConvGeometry, image: &[f32], cols: &mut [f32]) {
    let (ho, wo) = (g.h_out(), g.w_out());
    assert_eq!(image.len(), g.in_len());
    assert_eq!(cols.len(), g.k() * ho * wo);
    let mut rows = cols.chunks_exact_mut(ho * wo);
    for c in 0..g.c_in {
        let plane = &image[c * g.h * g.w..][..g.h * g.w];
        for ky in 0..g.kh {
            let (oy0, oy1) = g.valid(ky, g.h, ho);
            for kx in 0..g.kw {
                let (ox0, ox1) = g.valid(kx, g.w, wo);
                let row = rows.next().expect("k() rows");
                for oy in 0..ho {
                    let out = &mut row[oy * wo..][..wo];
                    if oy < oy0 || oy >= oy1 || ox0 >= ox1 {
                        out.fill(0.0);
                        continue;
                    }
                    let iy = oy * g.stride + ky - g.pad;
                    let src = &plane[iy * g.w..][..g.w];
                    out[..ox0].fill(0.0);
                    out[ox1..].fill(0.0);
                    let ix0 = ox0 * g.stride + kx - g.pad;
                    let n = ox1 - ox0;
                    gather(&mut out[ox0..ox1], &src[ix0..ix0 + (n - 1) * g.stride + 1], g.stride);
                }
            }
        }
    }
}

/// Adds every value of `cols` (`k() x out_pixels()`) onto the input position
/// it was taken from; `image` (`in_len()` values) must start zeroed for a plain gradient.
pub fn col2im(g: &ConvGeometry, cols: &[f32], image: &mut [f32]) {
    let (ho, wo) = (g.h_out(), g.w_out());
    assert_eq!(image.len(), g.in_len());
    assert_eq!(cols.len(), g.k() * ho * wo);
    let mut rows = cols.chunks_exact(ho * wo);
    for c in 0..g.c_in {
        let plane = &mut image[c * g.h * g.w..][..g.h * g.w];
        for ky in 0..g.kh {
            let (oy0, oy1) = g.valid(ky, g.h, ho);
            for kx in 0..g.kw {
                let (ox0, ox1) = g.valid(kx, g.w, wo);
                let row = rows.next().expect("k() rows");
                if ox0 >= ox1 {
                    continue;
                }
                for oy in oy0..oy1 {
                    let iy = oy * g.stride + ky - g.pad;
                    let dst = &mut plane[iy * g.w..][..g.w];
                    let ix0 = ox0 * g.stride + kx - g.pad;
                    let src = &row[oy * wo + ox0..oy * wo + ox1];
                    scatter_add(&mut dst[ix0..ix0 + (src.len() - 1) * g.stride + 1], src, g.stride);
                }
            }
        }
    }
}

/// `out[i] = src[i * stride]`, where `src` ends at the last value taken.
/// Strides 1 and 2 are spelled so that the compiler vectorizes them.
fn gather(out: &mut [f32], src: &[f32], stride: usize) {
    match stride {
        1 => out.copy_from_slice(src),
        2 => {
            let pairs = src.chunks_exact(2);
            let last = pairs.remainder();
            for (o, pair) in out.iter_mut().zip(pairs) {
                *o = pair[0];
            }
            out[out.len() - 1] = last[0];
        }
        _ => out
            .iter_mut()
            .zip(src.iter().step_by(stride))
            .for_each(|(o, v)| *o = *v),
    }
}

/// `dst[i * stride] += src[i]`, where `dst` ends at the last value written;
/// the same shapes as [`gather`].
fn scatter_add(dst: &mut [f32], src: &[f32], stride: usize) {
    match stride {
        1 => dst.iter_mut().zip(src).for_each(|(d, v)| *d += v),
        2 => {
            let n = src.len();
            for (pair, v) in dst.chunks_exact_mut(2).zip(src) {
                // Rewriting the odd value keeps the store group whole, which
                // lets the compiler vectorize it.
                let (even, odd) = (pair[0] + v, pair[1]);
                pair[0] = even;
                pair[1] = odd;
            }
            dst[2 * (n - 1)] += src[n - 1];
        }
        _ => dst.iter_mut().step_by(stride).zip(src).for_each(|(d, v)| *d += v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn geometries() -> impl Strategy<Value = ConvGeometry> {
        (
            1usize..4,
            1usize..9,
            1usize..9,
            1usize..4,
            1usize..4,
            1usize..4,
            0usize..3,
        )
            .prop_filter_map("kernel fits", |(c_in, h, w, kh, kw, stride, pad)| {
                let g = ConvGeometry {
                    c_in,
                    h,
                    w,
                    c_out: 1,
                    kh,
                    kw,
                    stride,
                    pad,
                };
                (h + 2 * pad >= kh && w + 2 * pad >= kw).then_some(g)
            })
    }

    /// The value at column-matrix entry (row, pixel), straight from the definition.
    fn reference(g: &ConvGeometry, image: &[f32], row: usize, pixel: usize) -> f32 {
        let (c, ky, kx) = (row / (g.kh * g.kw), row / g.kw % g.kh, row % g.kw);
        let (oy, ox) = (pixel / g.w_out(), pixel % g.w_out());
        let iy = (oy * g.stride + ky) as isize - g.pad as isize;
        let ix = (ox * g.stride + kx) as isize - g.pad as isize;
        if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
            0.0
        } else {
            image[c * g.h * g.w + iy as usize * g.w + ix as usize]
        }
    }

    proptest! {
        #[test]
        fn im2col_follows_the_definition(g in geometries(), seed in 0u32..1000) {
            let image: Vec<f32> = (0..g.in_len()).map(|i| ((i as u32).wrapping_mul(2654435761) ^ seed) as f32 / u32::MAX as f32).collect();
            let mut cols = vec![f32::NAN; g.k() * g.out_pixels()];
            im2col(&g, &image, &mut cols);
            for row in 0..g.k() {
                for p in 0..g.out_pixels() {
                    prop_assert_eq!(cols[row * g.out_pixels() + p], reference(&g, &image, row, p));
                }
            }
        }

        /// col2im is the adjoint of im2col: <im2col(x), y> = <x, col2im(y)>.
        #[test]
        fn col2im_is_the_adjoint_of_im2col(g in geometries()) {
            let x: Vec<f32> = (0..g.in_len()).map(|i| (i as f32 * 0.7).sin()).collect();
            let y: Vec<f32> = (0..g.k() * g.out_pixels()).map(|i| (i as f32 * 0.3).cos()).collect();
            let mut cols = vec![0.0; y.len()];
            im2col(&g, &x, &mut cols);
            let mut back = vec![0.0; x.len()];
            col2im(&g, &y, &mut back);
            let lhs: f64 = cols.iter().zip(&y).map(|(a, b)| f64::from(a * b)).sum();
            let rhs: f64 = x.iter().zip(&back).map(|(a, b)| f64::from(a * b)).sum();
            prop_assert!((lhs - rhs).abs() < 1e-4 * (1.0 + lhs.abs()));
        }
    }
}
