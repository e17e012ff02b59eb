//! One still image's main face, aligned and embedded exactly as the camera
//! pipeline does it: what `normgate embed` prints and what the host
//! curation tools measure, so both see the device's own numbers.

use anyhow::{bail, Result};
use image::RgbImage;

use crate::detector::{DetectParams, Face};
use crate::embedder::Embedder;
use crate::landmarks::Locator;

/// The face an image is about: the largest.
pub fn main_face(faces: &[Face]) -> Option<&Face> {
    faces.iter().max_by(|a, b| a.area().total_cmp(&b.area()))
}

/// The feature of the image's main face (with the face), or of the image
/// itself when `detector` is `None` (see [`aligned_main_face`]).
pub fn embed_main_face(
    image: RgbImage,
    detector: Option<&Locator>,
    embedder: &Embedder,
) -> Result<(Vec<f32>, Option<Face>)> {
    let (crop, face) = aligned_main_face(image, detector, embedder)?;
    Ok((embedder.embed(&[crop])?.remove(0), face))
}

/// The image's main face aligned to the embedder's template (with the
/// face), or the image itself when `detector` is `None`: a crop already on
/// the embedder's template, or on the ArcFace 112x112 one for a SphereFace
/// 112x96 embedder.
pub fn aligned_main_face(
    image: RgbImage,
    detector: Option<&Locator>,
    embedder: &Embedder,
) -> Result<(RgbImage, Option<Face>)> {
    Ok(match detector {
        None => {
            let t = embedder.template();
            let crop = match (image.dimensions(), (t.width, t.height)) {
                (given, wanted) if given == wanted => image,
                // The ArcFace 112x112 template is SphereFace's shifted by 8 px.
                ((112, 112), (96, 112)) => image::imageops::crop_imm(&image, 8, 0, 96, 112).to_image(),
                _ => bail!(
                    "an aligned crop must be {}x{} (or 112x112 on the ArcFace template)",
                    t.width,
                    t.height
                ),
            };
            (crop, None)
        }
        Some(d) => {
            let faces = d.detect(&image, &DetectParams::default())?;
            let Some(face) = main_face(&faces).copied() else {
                bail!("no face found");
            };
            (embedder.align(&image, &face.landmarks)?, Some(face))
        }
    })
}
