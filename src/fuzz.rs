//! The device's input parsers as fuzzing drives them (`fuzz/`), one
//! function each: every one must return for any input, never panic, hang or
//! allocate without bound. The replay test (`tests/fuzz_corpora.rs`) runs
//! the same functions over the kept corpora in every test run.

use std::io::Cursor;

use crate::card::{ModelCard, SPHEREFACE_EMBEDDER};
use crate::config::Config;
use crate::runtime::Network;
use crate::sink::queue;
use crate::source;

/// An MJPEG stream from a file, stdin or a camera: split into frames and each decoded.
pub fn mjpeg_stream(data: &[u8]) {
    source::stream(Cursor::new(data.to_vec())).for_each(drop);
}

/// A configuration file.
pub fn config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Config::parse(text);
    }
}

/// A model card.
pub fn model_card(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = ModelCard::parse(text);
    }
}

/// A model file, loaded and optimised as the device loads its models.
pub fn onnx_model(data: &[u8]) {
    let card = ModelCard::parse(SPHEREFACE_EMBEDDER).expect("a valid card");
    let _ = Network::from_bytes(data, "fuzz input", &card, 1, &["fc5"]);
}

/// An entry file of the durable upload queue.
pub fn queue_entry(data: &[u8]) {
    let _ = queue::decode(data);
}

/// A parser as fuzzing drives it.
pub type Target = fn(&[u8]);

/// Every target by the name of its `fuzz/fuzz_targets/` file and corpus folder.
pub const TARGETS: &[(&str, Target)] = &[
    ("mjpeg_stream", mjpeg_stream),
    ("config", config),
    ("model_card", model_card),
    ("onnx_model", onnx_model),
    ("queue_entry", queue_entry),
];
