//! The detector and embedder on real models: the teachers in `../shared/models`
//! when present (skipped with a printed reason otherwise).

mod common;

use std::path::Path;

use common::{root, sample, teacher};
use normgate::detector::{DetectParams, Detector};
use normgate::embedder::Embedder;
use normgate_core::norm::{cosine, l2_norm};

fn detector() -> Option<Detector> {
    let model = teacher("retinaface_mnet025_opset13.onnx")?;
    Some(Detector::load(&model, &root().join("train/teachers/retinaface_mnet025.toml")).unwrap())
}

#[test]
fn the_astronaut_has_one_face_with_plausible_landmarks_and_textures_none() {
    let Some(detector) = detector() else { return };
    let faces = detector
        .detect(&sample("astronaut.png"), &DetectParams::default())
        .unwrap();
    assert_eq!(faces.len(), 1, "{faces:?}");
    let f = faces[0];
    assert!(f.score > 0.9, "{f:?}");
    let [le, re, nose, lm, rm] = f.landmarks;
    assert!(le[0] < re[0] && lm[0] < rm[0], "left/right order: {f:?}");
    assert!(
        le[1].max(re[1]) < nose[1] && nose[1] < lm[1].min(rm[1]),
        "eyes above nose above mouth: {f:?}"
    );
    for [x, y] in f.landmarks {
        assert!(
            x > f.bbox[0] && x < f.bbox[2] && y > f.bbox[1] && y < f.bbox[3],
            "{f:?}"
        );
    }
    assert!(f.short_side() > 60.0 && f.short_side() < 300.0, "{f:?}");
    for texture in ["brick.png", "grass.png", "gravel.png"] {
        let faces = detector.detect(&sample(texture), &DetectParams::default()).unwrap();
        assert!(faces.is_empty(), "{texture}: {faces:?}");
    }
}

#[test]
fn the_norm_of_the_aligned_face_falls_with_blur_and_flip_keeps_identity() {
    let Some(detector) = detector() else { return };
    let Some(model) = teacher("mobilefacenet_foamliu_fp32.onnx") else {
        return;
    };
    let embedder = Embedder::load(&model, &root().join("train/teachers/mobilefacenet.toml"), 1).unwrap();
    let image = sample("astronaut.png");
    let face = detector.detect(&image, &DetectParams::default()).unwrap()[0];
    let crop = embedder.align(&image, &face.landmarks).unwrap();
    assert_eq!(crop.dimensions(), (112, 112));
    let blurred = image::imageops::blur(&crop, 4.0);
    let flipped = image::imageops::flip_horizontal(&crop);
    let f = embedder.embed(&[crop, blurred, flipped]).unwrap();
    let (clean, blur) = (l2_norm(&f[0]), l2_norm(&f[1]));
    assert!(clean > blur * 1.15, "clean {clean}, blurred {blur}");
    let cosine = cosine(&f[0], &f[2]);
    assert!(cosine > 0.7, "flip cosine {cosine}");
}

#[test]
fn a_missing_model_or_a_wrong_card_is_refused_with_a_message() {
    let card = root().join("train/teachers/mobilefacenet.toml");
    let err = Embedder::load(Path::new("models/none.onnx"), &card, 1).err().unwrap();
    assert!(format!("{err:#}").contains("not found"), "{err:#}");
    let Some(model) = teacher("mobilefacenet_foamliu_fp32.onnx") else {
        return;
    };
    let detector_card = root().join("train/teachers/retinaface_mnet025.toml");
    let err = Embedder::load(&model, &detector_card, 1).err().unwrap();
    assert!(format!("{err:#}").contains("not an embedder"), "{err:#}");
    let err = Detector::load(&model, &detector_card).err().unwrap();
    assert!(format!("{err:#}").contains("outputs"), "{err:#}");
}
