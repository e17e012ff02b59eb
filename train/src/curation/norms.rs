//! `normgate-train norms`: the feature norm of the main face of every image
//! in a folder tree, measured with the device's own detector, aligner and
//! embedder ([`normgate::still`]), the thresholds that drop given shares of
//! them, and a histogram PNG — what a NormSelect threshold (seed §3) would
//! do to a data set, before training on it.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use normgate_core::norm::l2_norm;

use crate::curation::features::FaceModels;
use serde::Serialize;

/// One image's outcome.
#[derive(Debug, Clone)]
pub struct Measured {
    /// The image, relative to the tree's root.
    pub path: PathBuf,
    /// Its main face's norm, or why there is none.
    pub norm: std::result::Result<f32, String>,
}

/// Measures every image (in parallel; `tick` after each).
pub fn measure(root: &Path, images: &[PathBuf], models: &FaceModels, tick: &(dyn Fn() + Sync)) -> Vec<Measured> {
    images
        .iter()
        .zip(models.features(images, tick))
        .map(|(path, feature)| Measured {
            path: path.strip_prefix(root).unwrap_or(path).to_path_buf(),
            norm: feature.map(|f| l2_norm(&f)),
        })
        .collect()
}

/// A drop rate and the norm below which that share of the faces falls.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Threshold {
    /// Share of faces dropped, in [0, 1).
    pub drop_rate: f64,
    /// The norm threshold (faces strictly below it are dropped).
    pub threshold: f32,
}

/// For each drop rate, the smallest norm that keeps `1 - rate` of `norms`:
/// the value at rank `floor(rate * n)` of the sorted norms.
pub fn thresholds(norms: &[f32], drop_rates: &[f64]) -> Result<Vec<Threshold>> {
    if norms.is_empty() {
        bail!("no face was measured, so no threshold can be set");
    }
    let mut sorted = norms.to_vec();
    sorted.sort_by(f32::total_cmp);
    drop_rates
        .iter()
        .map(|&rate| {
            if !(0.0..1.0).contains(&rate) {
                bail!("drop rate {rate} must be in [0, 1)");
            }
            let rank = ((rate * sorted.len() as f64).floor() as usize).min(sorted.len() - 1);
            Ok(Threshold {
                drop_rate: rate,
                threshold: sorted[rank],
            })
        })
        .collect()
}

/// Makes `font` the charts' "sans-serif" (plotters keeps it for the process).
pub fn register_font(font: &Path) -> Result<()> {
    let bytes = std::fs::read(font).with_context(|| format!("cannot read font {}", font.display()))?;
    plotters::style::register_font(
        "sans-serif",
        plotters::style::FontStyle::Normal,
        Box::leak(bytes.into_boxed_slice()),
    )
    .map_err(|_| anyhow::anyhow!("{} is not a TrueType font", font.display()))
}

/// Draws a histogram of `norms` with each threshold as a red line. Axis
/// labels need a TrueType font; without `font` the chart has none.
pub fn histogram_png(norms: &[f32], marks: &[Threshold], font: Option<&Path>, out: &Path) -> Result<()> {
    use plotters::prelude::*;
    let lo = norms.iter().copied().fold(f32::INFINITY, f32::min);
    let hi = norms.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !(lo.is_finite() && hi.is_finite()) {
        bail!("no norms to draw");
    }
    let bins = 40usize;
    let width = ((hi - lo) / bins as f32).max(1e-6);
    let mut counts = vec![0u32; bins];
    for &n in norms {
        counts[(((n - lo) / width) as usize).min(bins - 1)] += 1;
    }
    let top = counts.iter().copied().max().unwrap_or(1);
    if let Some(font) = font {
        register_font(font)?;
    }
    let root = BitMapBackend::new(out, (800, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut builder = ChartBuilder::on(&root);
    builder.margin(20);
    if font.is_some() {
        builder
            .caption(format!("feature norms of {} faces", norms.len()), ("sans-serif", 22))
            .x_label_area_size(40)
            .y_label_area_size(50);
    }
    let mut chart = builder.build_cartesian_2d(lo..hi + width, 0u32..top + top / 10 + 1)?;
    if font.is_some() {
        chart.configure_mesh().x_desc("norm").y_desc("faces").draw()?;
    }
    chart.draw_series(counts.iter().enumerate().map(|(i, &c)| {
        let x0 = lo + i as f32 * width;
        Rectangle::new([(x0, 0), (x0 + width * 0.9, c)], BLUE.mix(0.7).filled())
    }))?;
    for m in marks {
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(m.threshold, 0), (m.threshold, top)],
            RED.stroke_width(2),
        )))?;
    }
    root.present()
        .with_context(|| format!("cannot write {}", out.display()))?;
    Ok(())
}

/// A contact sheet: the aligned main faces of the `n` lowest-norm images
/// (top rows) and of the `n` highest (bottom rows), `per_row` to a row, in
/// norm order, so one can see what a NormSelect threshold would drop.
pub fn contact_sheet(root: &Path, measured: &[Measured], n: usize, models: &FaceModels) -> Result<image::RgbImage> {
    let mut ranked: Vec<(&Measured, f32)> = measured
        .iter()
        .filter_map(|m| m.norm.as_ref().ok().map(|&v| (m, v)))
        .collect();
    ranked.sort_by(|a, b| a.1.total_cmp(&b.1));
    let n = n.min(ranked.len() / 2);
    if n == 0 {
        bail!("a contact sheet needs at least two measured faces");
    }
    let chosen: Vec<&Measured> = ranked[..n]
        .iter()
        .chain(&ranked[ranked.len() - n..])
        .map(|(m, _)| *m)
        .collect();
    let crops = chosen
        .iter()
        .map(|m| models.aligned(crate::data::datasets::read_rgb(&root.join(&m.path))?))
        .collect::<Result<Vec<_>>>()?;
    let (w, h) = crops[0].dimensions();
    let per_row = n.min(12) as u32;
    let rows_per_half = (n as u32).div_ceil(per_row);
    let gap = 8;
    let mut sheet = image::RgbImage::from_pixel(per_row * w, 2 * rows_per_half * h + gap, image::Rgb([255, 255, 255]));
    for (i, crop) in crops.iter().enumerate() {
        let (half, k) = ((i / n) as u32, (i % n) as u32);
        let x = (k % per_row) * w;
        let y = half * (rows_per_half * h + gap) + (k / per_row) * h;
        image::imageops::replace(&mut sheet, crop, i64::from(x), i64::from(y));
    }
    Ok(sheet)
}

/// What `write_outputs` wrote and found.
#[derive(Debug, Clone, Serialize)]
pub struct NormsSummary {
    /// Images found.
    pub images: usize,
    /// Faces measured.
    pub faces: usize,
    /// Images without a norm (unreadable, no face, wrong crop size).
    pub failed: usize,
    /// Mean norm of the faces.
    pub mean_norm: f64,
    /// Thresholds for the asked drop rates.
    pub thresholds: Vec<Threshold>,
    /// Faces below `--list-below`, when given.
    pub below: Option<usize>,
}

/// Writes `norms.tsv` (path, norm or empty, error), `histogram.png`, and
/// with `list_below` the images under that norm to `below.txt`, into `out`.
pub fn write_outputs(
    measured: &[Measured],
    drop_rates: &[f64],
    list_below: Option<f32>,
    font: Option<&Path>,
    out: &Path,
) -> Result<NormsSummary> {
    use std::fmt::Write;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut table = String::from("path\tnorm\terror\n");
    for m in measured {
        match &m.norm {
            Ok(n) => writeln!(table, "{}\t{n:.4}\t", m.path.display())?,
            Err(e) => writeln!(table, "{}\t\t{}", m.path.display(), e.replace(['\t', '\n'], " "))?,
        }
    }
    std::fs::write(out.join("norms.tsv"), table)?;
    let norms: Vec<f32> = measured.iter().filter_map(|m| m.norm.as_ref().ok().copied()).collect();
    let marks = thresholds(&norms, drop_rates)?;
    histogram_png(&norms, &marks, font, &out.join("histogram.png"))?;
    let below = list_below
        .map(|t| -> Result<usize> {
            let listed: Vec<String> = measured
                .iter()
                .filter(|m| m.norm.as_ref().is_ok_and(|&n| n < t))
                .map(|m| format!("{}\n", m.path.display()))
                .collect();
            std::fs::write(out.join("below.txt"), listed.concat())?;
            Ok(listed.len())
        })
        .transpose()?;
    Ok(NormsSummary {
        images: measured.len(),
        faces: norms.len(),
        failed: measured.len() - norms.len(),
        mean_norm: norms.iter().map(|&n| f64::from(n)).sum::<f64>() / norms.len() as f64,
        thresholds: marks,
        below,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_contact_sheet_shows_the_lowest_faces_above_and_the_highest_below() {
        let dir = std::env::temp_dir().join(format!("normgate-norms-sheet-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let model = crate::testing::tiny_embedder(&dir);
        let models = FaceModels::load(&model, Path::new("unused"), Path::new(""), true).unwrap();
        // Five aligned crops of one grey level each; the norms rank them 3, 0, 4, 1, 2.
        let norms = [2.0, 4.0, 5.0, 1.0, 3.0];
        let measured: Vec<Measured> = (0..5u8)
            .map(|i| {
                let name = format!("{i}.png");
                image::RgbImage::from_pixel(96, 112, image::Rgb([i * 50; 3]))
                    .save(dir.join(&name))
                    .unwrap();
                Measured {
                    path: PathBuf::from(name),
                    norm: Ok(norms[i as usize]),
                }
            })
            .collect();
        let sheet = contact_sheet(&dir, &measured, 2, &models).unwrap();
        assert_eq!(sheet.dimensions(), (2 * 96, 2 * 112 + 8));
        let grey = |x: u32, y: u32| sheet.get_pixel(x, y).0[0];
        // Lowest two (images 3 then 0) above; highest two (1 then 2) below.
        assert_eq!([grey(10, 10), grey(106, 10)], [150, 0]);
        assert_eq!([grey(10, 130), grey(106, 130)], [50, 100]);
        assert!(contact_sheet(&dir, &measured[..1], 2, &models).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn thresholds_drop_the_asked_share() {
        let norms: Vec<f32> = (1..=100).map(|v| v as f32).collect();
        let t = thresholds(&norms, &[0.0, 0.1, 0.25]).unwrap();
        assert_eq!(t.iter().map(|t| t.threshold).collect::<Vec<_>>(), [1.0, 11.0, 26.0]);
        for t in &t {
            let dropped = norms.iter().filter(|&&n| n < t.threshold).count();
            assert_eq!(dropped as f64, t.drop_rate * 100.0);
        }
        assert!(thresholds(&norms, &[1.0]).is_err());
        assert!(thresholds(&[], &[0.1]).is_err());
    }

    #[test]
    fn the_histogram_is_a_png_with_or_without_labels() {
        let dir = std::env::temp_dir().join(format!("normgate-norms-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let norms: Vec<f32> = (0..500).map(|i| 10.0 + (i % 37) as f32 * 0.2).collect();
        let marks = thresholds(&norms, &[0.1]).unwrap();
        let font = Path::new("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf");
        for (name, font) in [
            ("plain.png", None),
            ("labelled.png", Some(font).filter(|f| f.is_file())),
        ] {
            let out = dir.join(name);
            histogram_png(&norms, &marks, font, &out).unwrap();
            let png = image::open(&out).unwrap().to_rgb8();
            assert_eq!(png.dimensions(), (800, 480));
            assert!(png.pixels().any(|p| p.0[2] > 150 && p.0[0] < 120), "has blue bars");
        }
        assert!(histogram_png(&[], &[], None, &dir.join("empty.png")).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn outputs_list_every_image_and_those_below_the_threshold() {
        let dir = std::env::temp_dir().join(format!("normgate-norms-out-{}", std::process::id()));
        let measured: Vec<Measured> = (0..10)
            .map(|i| Measured {
                path: PathBuf::from(format!("a/{i}.jpg")),
                norm: if i == 3 {
                    Err("no face found".into())
                } else {
                    Ok(i as f32)
                },
            })
            .collect();
        let s = write_outputs(&measured, &[0.5], Some(4.5), None, &dir).unwrap();
        assert_eq!((s.images, s.faces, s.failed, s.below), (10, 9, 1, Some(4)));
        assert_eq!(s.thresholds[0].threshold, 5.0);
        let tsv = std::fs::read_to_string(dir.join("norms.tsv")).unwrap();
        assert_eq!(tsv.lines().count(), 11);
        assert!(tsv.contains("a/3.jpg\t\tno face found"));
        let below = std::fs::read_to_string(dir.join("below.txt")).unwrap();
        assert_eq!(below, "a/0.jpg\na/1.jpg\na/2.jpg\na/4.jpg\n");
        assert!(dir.join("histogram.png").is_file());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
