//! Measuring models with the protocols of DESIGN.md: embedders on the
//! prepared crops (verification, quality, EDC), detectors against the
//! teacher, the whole device chain on the held-out split, the device's uploads on
//! a walk-by, and speed.
//! Uses every recipe and `onnx`; nothing but `curation` and the CLI uses it.

pub mod bench;
pub mod detector;
pub mod embedder;
pub mod heldout;
pub mod quality;
pub mod verify;
pub mod walkby;
