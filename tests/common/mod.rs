//! Helpers shared by the integration tests: the binary (behind the qemu
//! runner when cross-testing), scratch directories, sample images, and the
//! models a run needs.

#![allow(dead_code)] // Each test crate uses its own share of these helpers.

pub mod crops;
pub mod tls;

use std::path::{Path, PathBuf};
use std::process::Command;

use image::RgbImage;

/// The package root.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The binary (`NORMGATE_TEST_BIN` when set: another build of it, e.g. the
/// aarch64 release build), behind `NORMGATE_TEST_RUNNER` when set: under
/// qemu-user without binfmt_misc a test cannot exec a foreign binary
/// directly (cross/test-aarch64.sh).
pub fn command() -> Command {
    let exe = std::env::var("NORMGATE_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_normgate").into());
    let mut cmd = match std::env::var("NORMGATE_TEST_RUNNER") {
        Ok(runner) if !runner.trim().is_empty() => {
            let mut words = runner.split_whitespace();
            let mut cmd = Command::new(words.next().unwrap());
            cmd.args(words).arg(&exe).env_remove("LD_LIBRARY_PATH");
            cmd
        }
        _ => Command::new(exe),
    };
    cmd.current_dir(root());
    for var in [
        "NORMGATE_CONFIG",
        "NORMGATE_SOURCE",
        "NORMGATE_SINK",
        "NORMGATE_QUEUE",
        "NORMGATE_DETECTOR",
        "NORMGATE_EMBEDDER",
        "NORMGATE_METRICS",
        "NORMGATE_DECISIONS",
        "NORMGATE_TOKEN",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// A fresh scratch directory for one test.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("normgate-it-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A bundled sample as RGB.
pub fn sample(name: &str) -> RgbImage {
    image::open(root().join("samples").join(name)).unwrap().to_rgb8()
}

/// An image as JPEG bytes.
pub fn jpeg(image: &RgbImage) -> Vec<u8> {
    let mut out = Vec::new();
    image
        .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Jpeg)
        .unwrap();
    out
}

/// `../shared` (or `NORMGATE_SHARED`), where the teacher models live.
pub fn shared() -> PathBuf {
    std::env::var_os("NORMGATE_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("../shared"))
}

/// A teacher model in `../shared/models`; `None` (with the reason printed) when absent.
pub fn teacher(file: &str) -> Option<PathBuf> {
    let path = shared().join("models").join(file);
    if path.is_file() {
        Some(path)
    } else {
        eprintln!("skipped: teacher model {} is not present", path.display());
        None
    }
}

/// `--detector` and `--embedder` flags naming the models the project ships.
pub fn model_flags() -> Vec<String> {
    let shipped = |name: &str| root().join("models").join(name).display().to_string();
    vec![
        "--detector".into(),
        shipped("detector.onnx"),
        "--embedder".into(),
        shipped("backbone.onnx"),
    ]
}
