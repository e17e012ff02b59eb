//! `normgate calibrate`: the fixed norm threshold that drops a chosen share
//! of the faces a camera sees, from the norms in a decision log (or of a
//! run made for it), with the histogram as a PNG so the installer sees
//! where the threshold falls.
//!
//! Only faces the gate judges by their norm count: those embedded (norm
//! above 0) and not already dropped for their size or detector score.

use std::path::Path;

use anyhow::{bail, Context, Result};
use image::{Rgb, RgbImage};
use serde::Serialize;

use crate::record::FaceRecord;

/// One bar of the histogram.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Bin {
    /// Lowest norm of the bar.
    pub from: f32,
    /// Norm where the next bar starts.
    pub to: f32,
    /// Faces whose norm falls in `[from, to)` (the last bar includes `to`).
    pub faces: usize,
}

/// The threshold for a drop rate, and what it does to the faces measured.
#[derive(Debug, Clone, Serialize)]
pub struct Calibration {
    /// Faces judged by norm.
    pub faces: usize,
    /// Share of them asked to be dropped.
    pub drop_rate: f64,
    /// The threshold: faces below it are dropped.
    pub threshold: f32,
    /// Faces below the threshold.
    pub dropped: usize,
    /// Lowest and highest norm seen.
    pub range: [f32; 2],
    /// The histogram of the norms.
    pub bins: Vec<Bin>,
    /// The configuration lines that set this threshold.
    pub config: String,
}

/// Bars of the histogram.
const BINS: usize = 40;

/// Whether the gate judged this face by its norm: embedded, not dropped for
/// its size or detector score, and not a track's sent crop (which repeats a
/// face already logged).
pub fn judged(record: &FaceRecord) -> bool {
    let judged = !matches!(
        record.reason.as_str(),
        "best_of_track" | "small_face" | "low_detector_score"
    );
    judged && record.norm > 0.0 && record.norm.is_finite()
}

/// The norms the gate judged in a decision log (`camera`: only that camera's).
pub fn norms_from_log(text: &str, camera: Option<&str>) -> Result<Vec<f32>> {
    let mut norms = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let record: FaceRecord =
            serde_json::from_str(line).with_context(|| format!("line {} is not a decision record", i + 1))?;
        if camera.is_some_and(|c| c != record.camera) {
            continue;
        }
        if judged(&record) {
            norms.push(record.norm);
        }
    }
    Ok(norms)
}

/// The threshold below which `drop_rate` of `norms` fall: halfway between
/// the highest norm dropped and the lowest kept, so that exactly
/// `round(drop_rate * faces)` are below it.
pub fn calibrate(norms: &[f32], drop_rate: f64) -> Result<Calibration> {
    let mut sorted = norms.to_vec();
    sorted.sort_by(f32::total_cmp);
    calibrate_sorted(&sorted, drop_rate)
}

/// [`calibrate`] on norms already sorted ascending (the status page asks
/// for several drop rates of one set).
pub fn calibrate_sorted(sorted: &[f32], drop_rate: f64) -> Result<Calibration> {
    if !(0.0..1.0).contains(&drop_rate) {
        bail!("--drop-rate {drop_rate}: give a share in [0, 1), e.g. 0.2 to drop a fifth of the faces");
    }
    if sorted.is_empty() {
        bail!("no face was judged by its norm: point --source at frames with faces, or --decisions at a log of a run that saw some");
    }
    let n = sorted.len();
    let dropped = ((drop_rate * n as f64).round() as usize).min(n - 1);
    let threshold = if dropped == 0 {
        sorted[0]
    } else {
        (sorted[dropped - 1] + sorted[dropped]) / 2.0
    };
    let range = [sorted[0], sorted[n - 1]];
    Ok(Calibration {
        faces: n,
        drop_rate,
        threshold,
        dropped: sorted.iter().filter(|&&x| x < threshold).count(),
        range,
        bins: histogram(sorted, range),
        config: format!("[gate.policy]\nkind = \"fixed\"\nthreshold = {threshold:.3}\n"),
    })
}

/// `BINS` bars from `low` to `high` over `norms`.
fn histogram(norms: &[f32], [low, high]: [f32; 2]) -> Vec<Bin> {
    let width = ((high - low) / BINS as f32).max(f32::EPSILON);
    let mut bins: Vec<Bin> = (0..BINS)
        .map(|i| Bin {
            from: low + width * i as f32,
            to: low + width * (i + 1) as f32,
            faces: 0,
        })
        .collect();
    for &x in norms {
        let i = (((x - low) / width) as usize).min(BINS - 1);
        bins[i].faces += 1;
    }
    bins
}

/// Draws the histogram: bars of dropped norms red, kept ones green, the
/// threshold a black line, the norm axis labelled at five ticks.
pub fn draw(c: &Calibration, path: &Path) -> Result<()> {
    const W: u32 = 640;
    const H: u32 = 360;
    const LEFT: u32 = 20;
    const BOTTOM: u32 = 40;
    let mut img = RgbImage::from_pixel(W, H, Rgb([255, 255, 255]));
    let plot_w = W - 2 * LEFT;
    let plot_h = H - BOTTOM - 20;
    let tallest = c.bins.iter().map(|b| b.faces).max().unwrap_or(1).max(1);
    let bar_w = plot_w / c.bins.len() as u32;
    let [low, high] = c.range;
    let x_of = |norm: f32| LEFT + ((norm - low) / (high - low).max(f32::EPSILON) * plot_w as f32) as u32;
    for (i, bin) in c.bins.iter().enumerate() {
        let h = (bin.faces as f32 / tallest as f32 * plot_h as f32).round() as u32;
        let colour = if bin.to <= c.threshold {
            Rgb([214, 69, 65])
        } else {
            Rgb([46, 160, 67])
        };
        let x0 = LEFT + i as u32 * bar_w;
        fill(
            &mut img,
            x0 + 1,
            H - BOTTOM - h,
            bar_w.saturating_sub(2).max(1),
            h,
            colour,
        );
    }
    fill(&mut img, LEFT, H - BOTTOM, plot_w, 1, Rgb([0, 0, 0]));
    let t = x_of(c.threshold).min(W - LEFT);
    fill(&mut img, t.saturating_sub(1), 10, 3, H - BOTTOM - 10, Rgb([0, 0, 0]));
    for k in 0..5 {
        let norm = low + (high - low) * k as f32 / 4.0;
        let x = x_of(norm);
        fill(&mut img, x, H - BOTTOM, 1, 6, Rgb([0, 0, 0]));
        let label = format!("{norm:.1}");
        let width = digits::width(&label);
        digits::draw(
            &mut img,
            &label,
            x.saturating_sub(width / 2).min(W - width),
            H - BOTTOM + 12,
        );
    }
    let label = format!("{:.2}", c.threshold);
    digits::draw(&mut img, &label, (t + 6).min(W - digits::width(&label)), 14);
    img.save(path)
        .with_context(|| format!("cannot write the histogram {}", path.display()))
}

fn fill(img: &mut RgbImage, x: u32, y: u32, w: u32, h: u32, colour: Rgb<u8>) {
    for yy in y..(y + h).min(img.height()) {
        for xx in x..(x + w).min(img.width()) {
            img.put_pixel(xx, yy, colour);
        }
    }
}

/// A 3x5 pixel font of the characters a norm is written with, drawn at
/// three times its size: labels without a font file or a text crate.
mod digits {
    use image::{Rgb, RgbImage};

    const SCALE: u32 = 3;

    /// Rows of each glyph, top first, three bits a row (left bit first).
    fn glyph(c: char) -> [u8; 5] {
        match c {
            '0' => [7, 5, 5, 5, 7],
            '1' => [2, 6, 2, 2, 7],
            '2' => [7, 1, 7, 4, 7],
            '3' => [7, 1, 7, 1, 7],
            '4' => [5, 5, 7, 1, 1],
            '5' => [7, 4, 7, 1, 7],
            '6' => [7, 4, 7, 5, 7],
            '7' => [7, 1, 1, 1, 1],
            '8' => [7, 5, 7, 5, 7],
            '9' => [7, 5, 7, 1, 7],
            '.' => [0, 0, 0, 0, 2],
            '-' => [0, 0, 7, 0, 0],
            _ => [0; 5],
        }
    }

    /// Width of `text` in pixels.
    pub fn width(text: &str) -> u32 {
        text.chars().count() as u32 * 4 * SCALE
    }

    /// Draws `text` in black with its top-left corner at `(x, y)`.
    pub fn draw(img: &mut RgbImage, text: &str, x: u32, y: u32) {
        for (i, c) in text.chars().enumerate() {
            for (row, bits) in glyph(c).iter().enumerate() {
                for col in 0..3u32 {
                    if bits & (4 >> col) == 0 {
                        continue;
                    }
                    let (px, py) = (x + (i as u32 * 4 + col) * SCALE, y + row as u32 * SCALE);
                    super::fill(img, px, py, SCALE, SCALE, Rgb([0, 0, 0]));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_threshold_drops_the_share_asked_for() {
        let norms: Vec<f32> = (0..100).map(|i| i as f32 / 10.0).collect();
        let c = calibrate(&norms, 0.2).unwrap();
        assert_eq!((c.faces, c.dropped), (100, 20));
        assert!((c.threshold - 1.95).abs() < 1e-5, "{}", c.threshold);
        assert_eq!(c.bins.iter().map(|b| b.faces).sum::<usize>(), 100);
        assert_eq!(c.range, [0.0, 9.9]);
        assert!(c.config.contains("kind = \"fixed\"") && c.config.contains("threshold = 1.950"));
        // Nothing dropped at 0; never everything.
        assert_eq!(calibrate(&norms, 0.0).unwrap().dropped, 0);
        assert_eq!(calibrate(&norms, 0.999).unwrap().dropped, 99);
        assert!(calibrate(&norms, 1.0).is_err());
        assert!(calibrate(&[], 0.2).is_err());
    }

    #[test]
    fn only_faces_judged_by_their_norm_are_read_from_a_log() {
        let line = |camera: &str, reason: &str, norm: f32| {
            let mut r: FaceRecord = serde_json::from_str(
                r#"{"time":"t","camera":"a","frame":0,"source":"s","face":0,"bbox":[0,0,1,1],
                "landmarks":[[0,0],[0,0],[0,0],[0,0],[0,0]],"detector_score":0.9,"norm":0,
                "threshold":5,"pass":false,"reason":"low_norm"}"#,
            )
            .unwrap();
            (r.camera, r.reason, r.norm) = (camera.into(), reason.into(), norm);
            serde_json::to_string(&r).unwrap()
        };
        let log = [
            line("a", "passed", 9.0),
            line("a", "low_norm", 3.0),
            line("a", "small_face", 0.0),
            line("a", "not_embedded", 0.0),
            line("a", "best_of_track", 9.0),
            line("b", "held", 7.0),
        ]
        .join("\n");
        assert_eq!(norms_from_log(&log, None).unwrap(), [9.0, 3.0, 7.0]);
        assert_eq!(norms_from_log(&log, Some("b")).unwrap(), [7.0]);
        assert!(norms_from_log("{not json", None)
            .unwrap_err()
            .to_string()
            .contains("line 1"));
    }

    #[test]
    fn the_histogram_is_drawn() {
        let norms: Vec<f32> = (0..50).map(|i| 5.0 + i as f32 / 5.0).collect();
        let c = calibrate(&norms, 0.3).unwrap();
        let path = std::env::temp_dir().join(format!("normgate-histogram-{}.png", std::process::id()));
        draw(&c, &path).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        std::fs::remove_file(&path).unwrap();
        let count = |colour: [u8; 3]| img.pixels().filter(|p| p.0 == colour).count();
        assert!(count([214, 69, 65]) > 0 && count([46, 160, 67]) > 0);
        // More kept than dropped: more green than red.
        assert!(count([46, 160, 67]) > count([214, 69, 65]));
    }
}
