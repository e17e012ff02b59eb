//! normgate's device-side library: frame sources, model cards, the detector
//! and embedder run with tract, and the configuration. The `normgate` binary
//! is a thin layer over it, and the host tools reuse the same detection and
//! alignment so that training and the device see identical crops.

pub mod card;
pub mod config;
pub mod detector;
pub mod embedder;
pub mod mjpeg;
pub mod runtime;
pub mod source;
