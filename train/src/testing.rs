//! Helpers shared by this crate's unit tests.

use candle_core::Tensor;

use crate::backbone::BackboneConfig;

/// The largest absolute value of a tensor.
pub fn max_abs(t: &Tensor) -> f32 {
    t.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
}

/// The largest absolute difference of two equally shaped tensors.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    max_abs(&(a - b).unwrap())
}

/// A backbone small enough for unit tests: 28x24 input, stem 4.
pub fn tiny_backbone(widths: [usize; 3], units: [usize; 3], feature_dim: usize) -> BackboneConfig {
    BackboneConfig {
        height: 28,
        width: 24,
        stem: 4,
        widths,
        units,
        feature_dim,
    }
}

/// A detector small enough for unit tests: 64x64 input, two anchors per cell.
pub fn tiny_detector() -> crate::facenet::DetectorConfig {
    crate::facenet::DetectorConfig {
        input: 64,
        widths: [4, 6, 8, 8, 8],
        anchors: 2,
    }
}
