//! normgate's device-side library: frame sources, model cards, the detector
//! and embedder run with tract, the per-camera pipeline, sinks with a durable
//! upload queue, metrics and the configuration. The `normgate` binary is a
//! thin layer over it, and the host tools reuse the same detection and
//! alignment so that training and the device see identical crops.

// Grouped by concern (docs/ARCHITECTURE.md); the modules stay flat so that
// their paths (`normgate::detector`, used by the host tools, benches, fuzz
// targets and tests) read as the concept they hold.

// Frames in: sources, the V4L2 camera, MJPEG streams, the reading thread.
pub mod camera;
pub mod feed;
pub mod mjpeg;
pub mod source;

// Models: cards, the embedded store, tract, and the three networks' wrappers.
pub mod card;
pub mod detector;
pub mod embedded;
pub mod embedder;
pub mod landmarks;
pub mod runtime;
pub mod variant;

// The gate: one camera's pipeline, its face tracks, a still image's path,
// the decision record, and the threshold chosen from recorded norms.
pub mod calibrate;
pub mod pipeline;
pub mod record;
pub mod still;
pub mod tracking;

// Crops out: the spool and the durable upload queue, crash-safe writes.
pub mod durable;
pub mod retention;
pub mod sink;

// Running it: configuration, the runner that wires cameras to sinks,
// metrics, and the HTTP endpoint with the status page and its data.
pub mod config;
pub mod http;
pub mod metrics;
pub mod page;
pub mod runner;
pub mod status;

// Fuzzing entry points over the input parsers (`fuzz/`).
pub mod fuzz;
