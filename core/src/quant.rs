//! int8 quantization exactly as ONNX `QuantizeLinear`/`DequantizeLinear` define it:
//! `q = saturate(round_half_even(x / scale) + zero_point)`, `x = (q - zero_point) * scale`.
//!
//! Symmetric parameters (zero point 0, range `[-127, 127]` so that negation
//! is exact) suit weights; asymmetric ones use all 256 levels over a range
//! stretched to include 0 (so that 0, e.g. padding, is exact) and suit
//! activations. Per-channel parameters give each output channel (axis 0) its own scale.

use crate::error::check_len;
use crate::{Error, Result};

/// Symmetric or asymmetric int8 range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Zero point 0, scale `max|x| / 127`.
    Symmetric,
    /// Zero point chosen so that `[min(x, 0), max(x, 0)]` maps onto `[-128, 127]`.
    Asymmetric,
}

/// Scale and zero point of one int8 tensor or channel.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QParams {
    /// Real value of one quantization step, > 0.
    pub scale: f32,
    /// The int8 value that represents 0.0.
    pub zero_point: i8,
}

impl QParams {
    /// Parameters for values in `[min, max]`. A range of zero width gives scale 1
    /// (as ONNX Runtime does), so zeros stay exact.
    pub fn from_range(min: f32, max: f32, scheme: Scheme) -> Result<Self> {
        if !(min.is_finite() && max.is_finite()) {
            return Err(Error::NonFinite("quantization range"));
        }
        if min > max {
            return Err(Error::InvalidParameter {
                name: "quantization range",
                reason: "min must not exceed max",
            });
        }
        let (scale, zero_point) = match scheme {
            Scheme::Symmetric => (min.abs().max(max.abs()) / 127.0, 0),
            Scheme::Asymmetric => {
                let (lo, hi) = (min.min(0.0), max.max(0.0));
                let scale = (hi - lo) / 255.0;
                let zp = if scale > 0.0 {
                    libm::rintf(-128.0 - lo / scale)
                } else {
                    0.0
                };
                (scale, zp.clamp(-128.0, 127.0) as i8)
            }
        };
        Ok(Self {
            scale: if scale > 0.0 { scale } else { 1.0 },
            zero_point,
        })
    }

    /// `saturate(round_half_even(x / scale) + zero_point)`.
    pub fn quantize(&self, x: f32) -> i8 {
        (libm::rintf(x / self.scale) + f32::from(self.zero_point)).clamp(-128.0, 127.0) as i8
    }

    /// `(q - zero_point) * scale`.
    pub fn dequantize(&self, q: i8) -> f32 {
        (i32::from(q) - i32::from(self.zero_point)) as f32 * self.scale
    }
}

/// Parameters covering every value of `data`.
pub fn per_tensor(data: &[f32], scheme: Scheme) -> Result<QParams> {
    let (min, max) = min_max(data)?;
    QParams::from_range(min, max, scheme)
}

/// Per-channel parameters along axis 0: `data` is `out.len()` equal,
/// contiguous channels (e.g. a conv weight `[out_ch, in_ch, kh, kw]`).
pub fn per_channel(data: &[f32], scheme: Scheme, out: &mut [QParams]) -> Result<()> {
    let channels = out.len();
    if channels == 0 || data.len() % channels != 0 || data.is_empty() {
        return Err(Error::ShapeMismatch {
            what: "per-channel data",
            expected: channels.max(1) * (data.len() / channels.max(1)).max(1),
            got: data.len(),
        });
    }
    for (chunk, p) in data.chunks_exact(data.len() / channels).zip(out) {
        *p = per_tensor(chunk, scheme)?;
    }
    Ok(())
}

fn min_max(data: &[f32]) -> Result<(f32, f32)> {
    if data.iter().any(|v| !v.is_finite()) {
        return Err(Error::NonFinite("tensor to quantize"));
    }
    let min = data.iter().cloned().fold(f32::INFINITY, f32::min);
    let max = data.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    if data.is_empty() {
        return Ok((0.0, 0.0));
    }
    Ok((min, max))
}

/// Quantizes a slice into `out` (same length).
pub fn quantize_slice(x: &[f32], p: &QParams, out: &mut [i8]) -> Result<()> {
    check_len("quantized output", x.len(), out.len())?;
    out.iter_mut().zip(x).for_each(|(q, &v)| *q = p.quantize(v));
    Ok(())
}

/// Dequantizes a slice into `out` (same length).
pub fn dequantize_slice(q: &[i8], p: &QParams, out: &mut [f32]) -> Result<()> {
    check_len("dequantized output", q.len(), out.len())?;
    out.iter_mut().zip(q).for_each(|(x, &v)| *x = p.dequantize(v));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rounds_half_to_even_and_saturates() {
        let p = QParams {
            scale: 0.5,
            zero_point: 0,
        };
        assert_eq!([1.25, 1.75, -1.25, 0.75].map(|x| p.quantize(x)), [2, 4, -2, 2]);
        assert_eq!((p.quantize(1000.0), p.quantize(-1000.0)), (127, -128));
        let shifted = QParams {
            scale: 0.5,
            zero_point: 10,
        };
        assert_eq!(shifted.quantize(1.0), 12);
        assert_eq!(shifted.dequantize(12), 1.0);
    }

    #[test]
    fn parameters_by_hand() {
        let s = QParams::from_range(-0.5, 2.54, Scheme::Symmetric).unwrap();
        assert_eq!(s.zero_point, 0);
        assert!((s.scale - 0.02).abs() < 1e-7);
        // [-1, 2]: scale 3/255, zero point round(-128 + 85) = -43.
        let a = QParams::from_range(-1.0, 2.0, Scheme::Asymmetric).unwrap();
        assert!((a.scale - 3.0 / 255.0).abs() < 1e-8);
        assert_eq!(a.zero_point, -43);
        // All positive: the range is stretched to include 0, which maps to -128.
        let pos = QParams::from_range(1.0, 2.55, Scheme::Asymmetric).unwrap();
        assert_eq!((pos.zero_point, pos.quantize(0.0)), (-128, -128));
        assert_eq!(QParams::from_range(0.0, 0.0, Scheme::Asymmetric).unwrap().scale, 1.0);
    }

    #[test]
    fn per_channel_gives_each_channel_its_scale() {
        let w = [1.0, -2.0, 0.5, 0.25];
        let mut p = [QParams {
            scale: 0.0,
            zero_point: 0,
        }; 2];
        per_channel(&w, Scheme::Symmetric, &mut p).unwrap();
        assert!((p[0].scale - 2.0 / 127.0).abs() < 1e-8 && (p[1].scale - 0.5 / 127.0).abs() < 1e-8);
        assert!(per_channel(&w, Scheme::Symmetric, &mut [p[0]; 3]).is_err());
        assert!(per_tensor(&[1.0, f32::NAN], Scheme::Symmetric).is_err());
        assert!(QParams::from_range(1.0, 0.0, Scheme::Symmetric).is_err());
    }

    #[test]
    fn slices_round_trip_within_half_a_step() {
        let x = [-1.0, -0.3, 0.0, 0.7, 2.0];
        let p = per_tensor(&x, Scheme::Asymmetric).unwrap();
        let mut q = [0i8; 5];
        let mut back = [0.0f32; 5];
        quantize_slice(&x, &p, &mut q).unwrap();
        dequantize_slice(&q, &p, &mut back).unwrap();
        for (a, b) in x.iter().zip(back) {
            assert!((a - b).abs() <= p.scale / 2.0 + 1e-6);
        }
        assert!(quantize_slice(&x, &p, &mut [0; 4]).is_err());
    }

    proptest! {
        #[test]
        fn error_is_at_most_half_a_step_and_zero_is_exact(
            lo in -100.0f32..0.0, width in 0.001f32..200.0, t in 0.0f32..1.0, sym in any::<bool>(),
        ) {
            let scheme = if sym { Scheme::Symmetric } else { Scheme::Asymmetric };
            let hi = lo + width;
            let p = QParams::from_range(lo, hi, scheme).unwrap();
            let x = lo + t * width;
            prop_assert!((p.dequantize(p.quantize(x)) - x).abs() <= p.scale * 0.5 + 1e-5 * (1.0 + x.abs()));
            prop_assert_eq!(p.dequantize(p.quantize(0.0)), 0.0);
        }
    }
}
