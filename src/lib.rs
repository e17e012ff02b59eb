//! normgate's device-side library: frame sources, model cards, the detector
//! and embedder run with tract, the per-camera pipeline, sinks with a durable
//! upload queue, metrics and the configuration. The `normgate` binary is a
//! thin layer over it, and the host tools reuse the same detection and
//! alignment so that training and the device see identical crops.

pub mod camera;
pub mod card;
pub mod config;
pub mod detector;
pub mod durable;
pub mod embedded;
pub mod embedder;
pub mod feed;
pub mod fuzz;
pub mod landmarks;
pub mod metrics;
pub mod mjpeg;
pub mod pipeline;
pub mod record;
pub mod runner;
pub mod runtime;
pub mod sink;
pub mod source;
pub mod still;
