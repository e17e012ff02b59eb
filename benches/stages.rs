//! Per-stage latency of the device pipeline: detection of a 640x480 frame
//! with one face, alignment, and embedding of one crop with each model file
//! named in `NORMGATE_BENCH_EMBEDDERS` (comma-separated; default the shipped
//! `models/backbone.onnx`), so fp32, QDQ and QOperator files can be compared
//! side by side in one run. `NORMGATE_BENCH_DETECTORS` names the detectors
//! the same way (default the shipped `models/detector.onnx`; the first one's
//! face feeds alignment), and `NORMGATE_BENCH_REFINERS` the landmark
//! refiners run on that face (default the shipped `models/refiner.onnx`).
//! Missing models are skipped with a note.
//!
//! `cargo bench --bench stages`; for aarch64 under qemu (a hint only) add
//! `--target aarch64-unknown-linux-gnu` with the runner of cross/test-aarch64.sh.

use std::path::{Path, PathBuf};

use criterion::{criterion_group, criterion_main, Criterion};
use image::RgbImage;
use normgate::card::ModelCard;
use normgate::detector::{letterbox, DetectParams, Detector};
use normgate::embedder::Embedder;
use normgate::landmarks::Refiner;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The astronaut sample scaled into a grey 640x480 frame.
fn frame() -> RgbImage {
    let face = image::open(root().join("samples/astronaut.png")).unwrap().to_rgb8();
    let face = image::imageops::resize(&face, 480, 480, image::imageops::FilterType::Triangle);
    let mut frame = RgbImage::from_pixel(640, 480, image::Rgb([128, 128, 128]));
    image::imageops::replace(&mut frame, &face, 80, 0);
    frame
}

fn present(path: PathBuf) -> Option<PathBuf> {
    if path.is_file() {
        Some(path)
    } else {
        eprintln!("skipped: {} is not present", path.display());
        None
    }
}

fn paths(var: &str, default: &str) -> Vec<PathBuf> {
    std::env::var(var)
        .unwrap_or_else(|_| root().join(default).display().to_string())
        .split(',')
        .filter(|s| !s.is_empty())
        .filter_map(|s| present(PathBuf::from(s)))
        .collect()
}

/// A model's folder and file name: the refiners of different runs share a file name.
fn label(model: &Path) -> String {
    let folder = model.parent().and_then(|p| p.file_name()).unwrap_or_default();
    Path::new(folder)
        .join(model.file_name().unwrap_or_default())
        .display()
        .to_string()
}

fn stages(c: &mut Criterion) {
    let frame = frame();
    let mut group = c.benchmark_group("stage");
    group.sample_size(20);
    let mut face = None;
    for model in paths("NORMGATE_BENCH_DETECTORS", "models/detector.onnx") {
        let d = Detector::load(&model, &ModelCard::path_for(&model)).unwrap();
        let name = model.file_name().unwrap().to_string_lossy().to_string();
        let side = ModelCard::load(&ModelCard::path_for(&model)).unwrap().width;
        group.bench_function(format!("letterbox 640x480 to {side} ({name})"), |b| {
            b.iter(|| letterbox(&frame, side, [128; 3]))
        });
        group.bench_function(format!("detect 640x480 {name}"), |b| {
            b.iter(|| d.detect(&frame, &DetectParams::default()).unwrap())
        });
        if face.is_none() {
            face = d.detect(&frame, &DetectParams::default()).unwrap().first().copied();
        }
    }
    if let Some(f) = &face {
        for model in paths("NORMGATE_BENCH_REFINERS", "models/refiner.onnx") {
            let refiner = Refiner::load(&model, &ModelCard::path_for(&model)).unwrap();
            group.bench_function(format!("refine landmarks of one face ({})", label(&model)), |b| {
                b.iter(|| refiner.landmarks(&frame, f).unwrap())
            });
        }
    }
    for (i, model) in paths("NORMGATE_BENCH_EMBEDDERS", "models/backbone.onnx")
        .iter()
        .enumerate()
    {
        let embedder = Embedder::load(model, &ModelCard::path_for(model), 1).unwrap();
        let t = embedder.template();
        let crop = match &face {
            Some(f) => {
                if i == 0 {
                    group.bench_function("align", |b| b.iter(|| embedder.align(&frame, &f.landmarks).unwrap()));
                }
                embedder.align(&frame, &f.landmarks).unwrap()
            }
            None => image::imageops::resize(&frame, t.width, t.height, image::imageops::FilterType::Triangle),
        };
        let name = model.file_name().unwrap().to_string_lossy().to_string();
        group.bench_function(format!("embed {name}"), |b| {
            b.iter(|| embedder.embed(std::slice::from_ref(&crop)).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, stages);
criterion_main!(benches);
