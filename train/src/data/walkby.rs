//! A synthetic walk-by: people crossing a camera's view, with the truth of
//! who is where in every frame, for measuring what a camera uploads per
//! person (`eval walkby`).
//!
//! Each person is an LFW image of someone from `pairs.txt` (held out of every
//! training step), the face and its surroundings cut out with a soft oval
//! edge and pasted onto a face-free background from `samples/`. People walk
//! in from a side edge, growing as they approach; some pause, some walk in
//! pairs, some cross each other's paths. A quarter of the frames are motion
//! blurred or dark. The person's other LFW images are their gallery.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use image::imageops::{resize, FilterType};
use image::{Rgb, RgbImage};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::data::datasets::read_rgb;

/// Frame size.
pub const WIDTH: u32 = 640;
/// Frame size.
pub const HEIGHT: u32 = 480;
/// The frame rate the walk-by is timed at.
pub const FPS: u32 = 15;
/// The part of a 250x250 LFW image that is pasted: the face with some hair,
/// neck and background around it, `[x, y, w, h]`.
const CUTOUT: [u32; 4] = [60, 40, 130, 170];
/// Width of the oval's soft edge, as a share of its radius.
const OVAL_EDGE: f32 = 0.15;

/// How people move through the scene.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Walk {
    /// Alone, straight across.
    Alone,
    /// Alone, stopping for a while on the way.
    Pausing,
    /// Two people side by side.
    Pair,
    /// Two people from opposite sides, passing each other.
    Crossing,
}

/// One person of the walk-by.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Person {
    /// LFW name.
    pub name: String,
    /// The image that walks (relative to the data folder).
    pub image: String,
    /// Their other images (relative to the data folder).
    pub gallery: Vec<String>,
    /// How they walk.
    pub walk: Walk,
    /// Frames they are in view.
    pub frames: usize,
}

/// One face's place in a frame.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Placed {
    /// Index into [`Truth::people`].
    pub person: usize,
    /// The pasted cutout `[x1, y1, x2, y2]`, clipped to the frame.
    pub bbox: [f32; 4],
    /// The same, unclipped: where its oval lies.
    pub cutout: [f32; 4],
}

impl Placed {
    /// Whether the cutout's oval shows at `(x, y)` more than its
    /// background does (the blend's alpha above one half, [`paste_oval`]).
    fn shows(&self, x: f32, y: f32) -> bool {
        let [x1, y1, x2, y2] = self.cutout;
        let dx = (x - x1) / (x2 - x1) * 2.0 - 1.0;
        let dy = (y - y1) / (y2 - y1) * 2.0 - 1.0;
        (dx * dx + dy * dy).sqrt() < 1.0 - OVAL_EDGE / 2.0
    }
}

/// What the walk-by shows, frame by frame.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Truth {
    /// The seed it was made with.
    pub seed: u64,
    /// Frame rate it is timed at.
    pub fps: u32,
    /// The people.
    pub people: Vec<Person>,
    /// Per frame (file `frames/NNNNNN.jpg`), the faces in view.
    pub frames: Vec<Vec<Placed>>,
    /// Per frame, how it was degraded: `""`, `motion_blur` or `dark`.
    pub degraded: Vec<String>,
}

impl Truth {
    /// Reads `dir/truth.json`.
    pub fn load(dir: &Path) -> Result<Self> {
        let file = dir.join("truth.json");
        let text = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{} is not a walk-by's truth", file.display()))
    }

    /// The frame file of frame `i`.
    pub fn frame_name(i: usize) -> String {
        format!("{i:06}.jpg")
    }

    /// The person a detection shows: the one whose oval is on top at the
    /// detection's centre (faces are pasted in order, so the last that shows
    /// there hides the others); failing that, the one whose cutout holds the
    /// centre, the nearest cutout centre when several do.
    pub fn person_at(&self, frame: usize, bbox: &[f32; 4]) -> Option<usize> {
        let (cx, cy) = ((bbox[0] + bbox[2]) / 2.0, (bbox[1] + bbox[3]) / 2.0);
        let placed = self.frames.get(frame)?;
        if let Some(top) = placed.iter().rev().find(|p| p.shows(cx, cy)) {
            return Some(top.person);
        }
        placed
            .iter()
            .filter(|p| p.bbox[0] <= cx && cx <= p.bbox[2] && p.bbox[1] <= cy && cy <= p.bbox[3])
            .min_by(|a, b| {
                let d = |p: &Placed| {
                    ((p.bbox[0] + p.bbox[2]) / 2.0 - cx).powi(2) + ((p.bbox[1] + p.bbox[3]) / 2.0 - cy).powi(2)
                };
                d(a).total_cmp(&d(b))
            })
            .map(|p| p.person)
    }
}

/// A walker's path: where their cutout's centre is and how tall it is, per frame of theirs.
pub struct Walker {
    person: usize,
    start: usize,
    /// `(cx, cy, height)` per frame.
    steps: Vec<(f32, f32, f32)>,
}

/// One walker of a group: from which side, at what height, whether and
/// when they pause (`(at frame, for frames)`), how far behind the first.
struct Leg {
    from_left: bool,
    y: f32,
    pause: Option<(usize, usize)>,
    behind: f32,
}

fn straight(
    rng: &mut StdRng,
    from_left: bool,
    y: f32,
    frames: usize,
    pause: Option<(usize, usize)>,
) -> Vec<(f32, f32, f32)> {
    let (h0, h1) = (rng.random_range(90.0..130.0), rng.random_range(150.0..230.0));
    let (x0, x1) = if from_left {
        (-40.0, WIDTH as f32 + 40.0)
    } else {
        (WIDTH as f32 + 40.0, -40.0)
    };
    let moving = frames - pause.map_or(0, |(_, n)| n);
    let mut steps = Vec::with_capacity(frames);
    let mut k = 0usize;
    for f in 0..frames {
        let paused = pause.is_some_and(|(at, n)| f >= at && f < at + n);
        let t = k as f32 / (moving - 1).max(1) as f32;
        if !paused {
            k += 1;
        }
        steps.push((x0 + (x1 - x0) * t, y, h0 + (h1 - h0) * t));
    }
    steps
}

/// Makes the walk-by: `people` people from `candidates` (name, walking
/// image, gallery), in groups that overlap in time.
pub fn make(candidates: &[(String, String, Vec<String>)], people: usize, seed: u64) -> Result<(Truth, Vec<Walker>)> {
    if candidates.len() < people {
        bail!(
            "{} people with two images or more are available, {people} asked",
            candidates.len()
        );
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut chosen: Vec<&(String, String, Vec<String>)> = candidates.iter().collect();
    chosen.shuffle(&mut rng);
    chosen.truncate(people);
    let mut persons = Vec::new();
    let mut paths = Vec::new();
    let mut t = 0usize;
    let mut next = 0usize;
    while next < people {
        let walk = match (rng.random_range(0..10), people - next) {
            (0..=1, n) if n >= 2 => Walk::Pair,
            (2..=3, n) if n >= 2 => Walk::Crossing,
            (4..=5, _) => Walk::Pausing,
            _ => Walk::Alone,
        };
        let frames = rng.random_range(24..=40usize);
        let y = rng.random_range(160.0..300.0);
        let from_left = rng.random_bool(0.5);
        let leg = |from_left, y, pause, behind| Leg {
            from_left,
            y,
            pause,
            behind,
        };
        let group = match walk {
            Walk::Alone => vec![leg(from_left, y, None, 0.0)],
            Walk::Pausing => vec![leg(from_left, y, Some((frames / 3, rng.random_range(20..=45))), 0.0)],
            Walk::Pair => vec![leg(from_left, y, None, 0.0), leg(from_left, y + 20.0, None, 190.0)],
            Walk::Crossing => vec![leg(true, y, None, 0.0), leg(false, y + 30.0, None, 0.0)],
        };
        for Leg {
            from_left: left,
            y,
            pause,
            behind,
        } in group
        {
            let index = next;
            next += 1;
            let length = frames + pause.map_or(0, |(_, n)| n);
            let mut steps = straight(&mut rng, left, y, length, pause);
            // The second of a pair walks a step behind the first.
            let shift = if left { -behind } else { behind };
            steps.iter_mut().for_each(|s| s.0 += shift);
            let (name, image, gallery) = chosen[index].clone();
            persons.push(Person {
                name,
                image,
                gallery,
                walk,
                frames: length,
            });
            paths.push(Walker {
                person: index,
                start: t,
                steps,
            });
        }
        t += frames * 3 / 5;
    }
    let total = paths.iter().map(|p| p.start + p.steps.len()).max().unwrap_or(0);
    let degraded = (0..total)
        .map(|_| match rng.random_range(0..8) {
            0 => "motion_blur",
            1 => "dark",
            _ => "",
        })
        .map(String::from)
        .collect();
    let mut frames = vec![Vec::new(); total];
    for p in &paths {
        for (k, &(cx, cy, h)) in p.steps.iter().enumerate() {
            let w = h * CUTOUT[2] as f32 / CUTOUT[3] as f32;
            let cutout = [cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0];
            let bbox = [
                cutout[0].max(0.0),
                cutout[1].max(0.0),
                cutout[2].min(WIDTH as f32),
                cutout[3].min(HEIGHT as f32),
            ];
            // A cutout less than a third inside the frame shows no face.
            if (bbox[2] - bbox[0]) * 3.0 >= w && bbox[3] > bbox[1] {
                frames[p.start + k].push(Placed {
                    person: p.person,
                    bbox,
                    cutout,
                });
            }
        }
    }
    Ok((
        Truth {
            seed,
            fps: FPS,
            people: persons,
            frames,
            degraded,
        },
        paths,
    ))
}

/// Writes the frames of `truth` into `out/frames` and the truth into `out/truth.json`.
pub fn render(truth: &Truth, paths: &[Walker], data: &Path, samples: &Path, out: &Path) -> Result<PathBuf> {
    let frames_dir = out.join("frames");
    std::fs::create_dir_all(&frames_dir).with_context(|| format!("cannot create {}", frames_dir.display()))?;
    let backgrounds: Vec<RgbImage> = normgate::config::FACE_FREE_SAMPLES
        .iter()
        .map(|b| {
            Ok(resize(
                &read_rgb(&samples.join(b))?,
                WIDTH,
                HEIGHT,
                FilterType::Triangle,
            ))
        })
        .collect::<Result<_>>()?;
    let cutouts: Vec<RgbImage> = truth
        .people
        .iter()
        .map(|p| {
            let image = read_rgb(&data.join(&p.image))?;
            let [x, y, w, h] = CUTOUT;
            Ok(image::imageops::crop_imm(&image, x, y, w, h).to_image())
        })
        .collect::<Result<_>>()?;
    let mut rng = StdRng::seed_from_u64(truth.seed ^ 0x5eed);
    for (i, placed) in truth.frames.iter().enumerate() {
        // The background changes every 150 frames, as if the camera moved.
        let mut frame = backgrounds[(i / 150) % backgrounds.len()].clone();
        for p in placed {
            let path = &paths
                .iter()
                .find(|q| q.person == p.person)
                .context("a placed person has a path")?;
            let (cx, cy, h) = path.steps[i - path.start];
            paste_oval(&mut frame, &cutouts[p.person], cx, cy, h);
        }
        let frame = match truth.degraded[i].as_str() {
            "motion_blur" => motion_blur(&frame, rng.random_range(9..=17)),
            "dark" => darken(&frame, 0.22, &mut rng),
            _ => frame,
        };
        let file = frames_dir.join(Truth::frame_name(i));
        frame
            .save_with_format(&file, image::ImageFormat::Jpeg)
            .with_context(|| format!("cannot write {}", file.display()))?;
    }
    let file = out.join("truth.json");
    std::fs::write(&file, serde_json::to_string(truth)?).with_context(|| format!("cannot write {}", file.display()))?;
    Ok(frames_dir)
}

/// Pastes `cutout` scaled to height `h` centred on `(cx, cy)`, blended in
/// with a soft oval edge so that no rectangle edge looks like a structure.
fn paste_oval(frame: &mut RgbImage, cutout: &RgbImage, cx: f32, cy: f32, h: f32) {
    let w = h * cutout.width() as f32 / cutout.height() as f32;
    let scaled = resize(
        cutout,
        w.round().max(1.0) as u32,
        h.round().max(1.0) as u32,
        FilterType::Triangle,
    );
    let (x0, y0) = ((cx - w / 2.0).round() as i64, (cy - h / 2.0).round() as i64);
    let (sw, sh) = (scaled.width() as f32, scaled.height() as f32);
    for (x, y, px) in scaled.enumerate_pixels() {
        let (fx, fy) = (x0 + i64::from(x), y0 + i64::from(y));
        if fx < 0 || fy < 0 || fx >= i64::from(frame.width()) || fy >= i64::from(frame.height()) {
            continue;
        }
        let dx = (x as f32 + 0.5) / sw * 2.0 - 1.0;
        let dy = (y as f32 + 0.5) / sh * 2.0 - 1.0;
        let r = (dx * dx + dy * dy).sqrt();
        let alpha = ((1.0 - r) / OVAL_EDGE).clamp(0.0, 1.0);
        let dst = frame.get_pixel_mut(fx as u32, fy as u32);
        for c in 0..3 {
            dst.0[c] = (alpha * f32::from(px.0[c]) + (1.0 - alpha) * f32::from(dst.0[c])).round() as u8;
        }
    }
}

/// A horizontal box blur of `length` pixels: the camera's exposure while a person walks.
fn motion_blur(frame: &RgbImage, length: u32) -> RgbImage {
    let (w, h) = frame.dimensions();
    let half = (length / 2) as i64;
    RgbImage::from_fn(w, h, |x, y| {
        let mut sum = [0u32; 3];
        let mut n = 0u32;
        for dx in -half..=half {
            let sx = (i64::from(x) + dx).clamp(0, i64::from(w) - 1) as u32;
            for (s, v) in sum.iter_mut().zip(frame.get_pixel(sx, y).0) {
                *s += u32::from(v);
            }
            n += 1;
        }
        Rgb(sum.map(|s| (s / n) as u8))
    })
}

/// Under-exposure: scaled down with sensor noise.
fn darken(frame: &RgbImage, gain: f32, rng: &mut StdRng) -> RgbImage {
    let mut out = frame.clone();
    for p in out.pixels_mut() {
        let noise: f32 = rng.random_range(-6.0..6.0);
        p.0 = p.0.map(|c| (f32::from(c) * gain + noise).clamp(0.0, 255.0) as u8);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidates(n: usize) -> Vec<(String, String, Vec<String>)> {
        (0..n)
            .map(|i| {
                (
                    format!("P{i}"),
                    format!("lfw/P{i}/P{i}_0001.jpg"),
                    vec![format!("lfw/P{i}/P{i}_0002.jpg")],
                )
            })
            .collect()
    }

    #[test]
    fn everyone_walks_through_and_the_truth_finds_them() {
        let (truth, paths) = make(&candidates(50), 40, 3).unwrap();
        assert_eq!(truth.people.len(), 40);
        assert_eq!(paths.len(), 40);
        let mut seen = vec![0usize; 40];
        for placed in &truth.frames {
            for p in placed {
                seen[p.person] += 1;
                assert!(p.bbox[0] >= 0.0 && p.bbox[2] <= WIDTH as f32 && p.bbox[1] < p.bbox[3]);
            }
        }
        // Everyone is in view for most of their walk (the second of a pair
        // walks in later than the first).
        for (person, n) in seen.iter().enumerate() {
            assert!(*n * 3 >= truth.people[person].frames * 2, "{person}: {n}");
        }
        let walks: std::collections::BTreeSet<_> = truth.people.iter().map(|p| format!("{:?}", p.walk)).collect();
        assert_eq!(walks.len(), 4, "{walks:?}");
        let blurred = truth.degraded.iter().filter(|d| !d.is_empty()).count() as f64 / truth.degraded.len() as f64;
        assert!((0.15..0.35).contains(&blurred), "{blurred}");
        // A detection on someone's cutout is theirs.
        let (frame, placed) = truth.frames.iter().enumerate().find(|(_, f)| !f.is_empty()).unwrap();
        let p = placed[0];
        let centre = [p.bbox[0] + 10.0, p.bbox[1] + 10.0, p.bbox[2] - 10.0, p.bbox[3] - 10.0];
        assert_eq!(truth.person_at(frame, &centre), Some(p.person));
        assert_eq!(truth.person_at(frame, &[0.0, 0.0, 1.0, 1.0]), None);
        // The same seed makes the same walk-by.
        let again = make(&candidates(50), 40, 3).unwrap().0;
        assert_eq!(
            serde_json::to_string(&again).unwrap(),
            serde_json::to_string(&truth).unwrap()
        );
    }

    #[test]
    fn a_detection_where_two_cutouts_overlap_shows_the_one_on_top() {
        let at = |person, x: f32| Placed {
            person,
            bbox: [x, 100.0, x + 100.0, 230.0],
            cutout: [x, 100.0, x + 100.0, 230.0],
        };
        let truth = Truth {
            seed: 0,
            fps: FPS,
            people: Vec::new(),
            // Person 1 is pasted last, over person 0.
            frames: vec![vec![at(0, 100.0), at(1, 140.0)]],
            degraded: vec![String::new()],
        };
        // Nearer person 0's centre (150) than person 1's (190), but on person 1's oval.
        assert_eq!(truth.person_at(0, &[135.0, 140.0, 195.0, 190.0]), Some(1));
        // Left of person 1's oval only person 0 shows.
        assert_eq!(truth.person_at(0, &[110.0, 140.0, 150.0, 190.0]), Some(0));
    }
}
