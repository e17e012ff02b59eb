//! `eval walkby`: the device's whole run (`normgate::runner`) over the
//! synthetic walk-by (`data::walkby`) with each capture policy, scored
//! against the walk-by's truth: uploads per person, people with an upload,
//! identity switches, embeddings per frame, and what the uploaded crops are
//! worth to the server (the teacher recognizer against each person's gallery).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use normgate::config::{CameraSection, Config, ModelsSection};
use normgate::record::FaceRecord;
use normgate::runner::Summary;
use normgate::tracking::{CapturePolicy, TrackingSection};
use normgate_core::align::{align_rgb8, ARCFACE_112X112};
use normgate_core::norm::cosine;
use serde::Serialize;

use crate::data::datasets::read_rgb;
use crate::data::heldout::HeldOut;
use crate::data::prepare::{Cache, CROP};
use crate::data::walkby::{self, Truth};
use crate::eval::embedder::Model;

/// What `eval walkby` needs.
pub struct Inputs {
    /// The shared data folder.
    pub data: PathBuf,
    /// The project's samples folder (backgrounds).
    pub samples: PathBuf,
    /// The prepared caches (`lfw_pairs`: the galleries' teacher features).
    pub cache: PathBuf,
    /// Where the walk-by and the runs go.
    pub out: PathBuf,
    /// People in the walk-by.
    pub people: usize,
    /// Its seed.
    pub seed: u64,
    /// The device's models.
    pub models: ModelsSection,
    /// The tracking settings (the policy is set per run).
    pub tracking: TrackingSection,
    /// The teacher recognizer (model, card): the server.
    pub teacher: Model,
}

/// How well the uploads of one policy serve the server.
#[derive(Debug, Clone, Serialize)]
pub struct Worth {
    /// Crops scored.
    pub crops: usize,
    /// Share whose teacher feature matches the person's gallery at the
    /// teacher's threshold for a false match rate of 1e-2.
    pub verified: f64,
    /// Mean cosine to the person's gallery.
    pub mean_cosine: f64,
}

/// One policy's run over the walk-by.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyReport {
    /// `per_frame` or `best_per_track`.
    pub policy: String,
    /// Crops sent to the sink.
    pub uploads: usize,
    /// Crops sent per person, over everyone.
    pub uploads_per_person: f64,
    /// The same for people in view 2 s or less.
    pub uploads_per_person_short: f64,
    /// The same for people in view longer.
    pub uploads_per_person_long: f64,
    /// Share of people with at least one crop sent.
    pub person_recall: f64,
    /// Crops sent that show nobody of the walk-by (a false detection).
    pub uploads_of_nobody: usize,
    /// Tracks with at least one face of the walk-by.
    pub tracks: usize,
    /// Tracks that held faces of two people or more, and crops sent whose
    /// person is not their track's main one.
    pub identity_switches: usize,
    /// `identity_switches` over `tracks` (0 without tracks).
    pub identity_switch_rate: f64,
    /// Faces embedded per frame.
    pub embeds_per_frame: f64,
    /// Frames per second of the run (this machine, both cores).
    pub frames_per_s: f64,
    /// The sent crops against each person's gallery.
    pub sent: Worth,
    /// A gate-passing frame drawn at random from each track that sent a
    /// crop, against the gallery, as the expectation over all of them
    /// (tracking runs only): what the best shot is measured against.
    pub random_passing_frame: Option<Worth>,
}

/// Both policies side by side.
#[derive(Debug, Clone, Serialize)]
pub struct WalkbyReport {
    /// People in the walk-by.
    pub people: usize,
    /// People in view 2 s or less.
    pub people_short: usize,
    /// Frames.
    pub frames: usize,
    /// Frames per second the walk-by is timed at.
    pub fps: u32,
    /// The teacher's cosine threshold at a false match rate of 1e-2 (over
    /// sent crops against other people's galleries).
    pub teacher_threshold: f64,
    /// Each policy.
    pub policies: Vec<PolicyReport>,
}

/// The walk-by's people: held-out LFW people no training saw (not Glint24's)
/// with two images or more in the `lfw_pairs` cache; their first image
/// walks, the others are the gallery.
fn candidates(data: &Path, cache: &Cache) -> Result<Vec<(String, String, Vec<String>)>> {
    let split = HeldOut::load(data)?;
    let mut by_person: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for p in &cache.paths {
        let rel = p.split('\t').next().unwrap_or(p);
        if p.contains('\t') {
            continue; // aligned by the fallback: no face found by the teacher
        }
        if let Some(name) = rel.split('/').nth(1) {
            if split.unseen_lfw(name) {
                by_person.entry(name.to_string()).or_default().push(rel.to_string());
            }
        }
    }
    Ok(by_person
        .into_iter()
        .filter(|(_, images)| images.len() >= 2)
        .map(|(name, mut images)| {
            images.sort();
            let walking = images.remove(0);
            (name, walking, images)
        })
        .collect())
}

/// Makes the walk-by in `out` unless one of this seed and size is there.
fn walkby(inputs: &Inputs, cache: &Cache) -> Result<Truth> {
    if let Ok(truth) = Truth::load(&inputs.out) {
        if truth.seed == inputs.seed && truth.people.len() == inputs.people {
            return Ok(truth);
        }
    }
    let candidates = candidates(&inputs.data, cache)?;
    let (truth, walkers) = walkby::make(&candidates, inputs.people, inputs.seed)?;
    walkby::render(&truth, &walkers, &inputs.data, &inputs.samples, &inputs.out)?;
    Ok(truth)
}

/// Runs the device over the frames with `policy`; its decisions.
fn run(inputs: &Inputs, truth: &Truth, policy: CapturePolicy) -> Result<(Summary, Vec<FaceRecord>)> {
    let name = policy_name(policy);
    let dir = inputs.out.join(name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("cannot clear {}", dir.display()))?;
    }
    let mut camera = CameraSection::new("walkby", &inputs.out.join("frames").display().to_string());
    camera.capture.fps = truth.fps;
    let mut config = Config {
        models: inputs.models.clone(),
        cameras: vec![camera],
        ..Config::default()
    };
    config.tracking = TrackingSection {
        policy,
        ..inputs.tracking
    };
    config.sink.spool = dir.join("spool");
    config.log.decisions = dir.join("decisions.jsonl");
    config.metrics.listen = "off".into();
    let summary = normgate::runner::run(&config, None)?;
    let text = std::fs::read_to_string(&config.log.decisions)?;
    let records = text
        .lines()
        .map(|l| serde_json::from_str(l).context("a decision log line"))
        .collect::<Result<_>>()?;
    Ok((summary, records))
}

fn policy_name(policy: CapturePolicy) -> &'static str {
    match policy {
        CapturePolicy::PerFrame => "per_frame",
        CapturePolicy::BestPerTrack => "best_per_track",
    }
}

/// Teacher features of the faces of `records`, aligned from their landmarks on their frames.
fn teacher_features(inputs: &Inputs, records: &[&FaceRecord]) -> Result<Vec<Vec<f32>>> {
    let mut crops = Vec::with_capacity(records.len() * CROP * CROP * 3);
    for r in records {
        // `source` is the frame's path as the run opened it; the file name is the frame's.
        let name = Path::new(&r.source).file_name().unwrap_or_default();
        let frame = read_rgb(&inputs.out.join("frames").join(name))?;
        let mut crop = vec![0u8; CROP * CROP * 3];
        align_rgb8(
            frame.as_raw(),
            frame.width(),
            frame.height(),
            &r.landmarks,
            &ARCFACE_112X112,
            &mut crop,
        )
        .with_context(|| format!("cannot align a face of {}", r.source))?;
        crops.extend(crop);
    }
    let cache = Cache {
        crops,
        labels: vec![0; records.len()],
        teacher: Vec::new(),
        teacher_flip: Vec::new(),
        dim: 0,
        paths: records.iter().map(|r| r.source.clone()).collect(),
    };
    inputs.teacher.features(&cache, false)
}

/// Each person's gallery: the mean of their gallery images' teacher features.
fn galleries(truth: &Truth, cache: &Cache) -> Result<Vec<Vec<f32>>> {
    let index: HashMap<&str, usize> = cache.paths.iter().enumerate().map(|(i, p)| (p.as_str(), i)).collect();
    truth
        .people
        .iter()
        .map(|p| {
            let mut mean = vec![0.0f32; cache.dim];
            for image in &p.gallery {
                let i = *index
                    .get(image.as_str())
                    .with_context(|| format!("{image} is not in the lfw_pairs cache"))?;
                let f = &cache.teacher[i * cache.dim..(i + 1) * cache.dim];
                let n = normgate_core::norm::l2_norm(f).max(1e-12);
                mean.iter_mut().zip(f).for_each(|(m, v)| *m += v / n);
            }
            Ok(mean)
        })
        .collect()
}

/// How many of the crops verify against their person's gallery at `threshold`.
fn worth(features: &[Vec<f32>], people: &[usize], galleries: &[Vec<f32>], threshold: f64) -> Worth {
    // Each crop its own group: the expectation over one crop is the crop.
    let own: Vec<usize> = (0..features.len()).collect();
    expected_worth(features, people, &own, galleries, threshold)
}

/// [`worth`] of one frame drawn at random from each group (`owners`: the
/// group of each feature), as its expectation: each group's share and mean
/// cosine, averaged over the groups.
fn expected_worth(
    features: &[Vec<f32>],
    people: &[usize],
    owners: &[usize],
    galleries: &[Vec<f32>],
    threshold: f64,
) -> Worth {
    let mut groups: BTreeMap<usize, (f64, f64, usize)> = BTreeMap::new();
    for ((f, &p), &owner) in features.iter().zip(people).zip(owners) {
        let c = f64::from(cosine(f, &galleries[p]));
        let g = groups.entry(owner).or_default();
        g.0 += f64::from(u8::from(c >= threshold));
        g.1 += c;
        g.2 += 1;
    }
    let n = groups.len().max(1) as f64;
    Worth {
        crops: groups.len(),
        verified: groups.values().map(|g| g.0 / g.2 as f64).sum::<f64>() / n,
        mean_cosine: groups.values().map(|g| g.1 / g.2 as f64).sum::<f64>() / n,
    }
}

/// The cosine that 1 % of impostor comparisons reach.
fn threshold_at_fmr(features: &[Vec<f32>], people: &[usize], galleries: &[Vec<f32>]) -> f64 {
    let mut impostors: Vec<f64> = features
        .iter()
        .zip(people)
        .flat_map(|(f, &p)| {
            galleries
                .iter()
                .enumerate()
                .filter(move |(q, _)| *q != p)
                .map(move |(_, g)| f64::from(cosine(f, g)))
        })
        .collect();
    impostors.sort_by(|a, b| b.total_cmp(a));
    impostors.get(impostors.len() / 100).copied().unwrap_or(1.0)
}

/// Runs both policies over the walk-by and scores them.
pub fn evaluate(inputs: &Inputs) -> Result<WalkbyReport> {
    let cache = Cache::load(&inputs.cache, "lfw_pairs")?;
    let truth = walkby(inputs, &cache)?;
    let galleries = galleries(&truth, &cache)?;
    let in_view: Vec<usize> = (0..truth.people.len())
        .map(|p| truth.frames.iter().filter(|f| f.iter().any(|x| x.person == p)).count())
        .collect();
    let short: Vec<bool> = in_view
        .iter()
        .map(|&n| n as f64 <= 2.0 * f64::from(truth.fps))
        .collect();
    let runs = [CapturePolicy::PerFrame, CapturePolicy::BestPerTrack]
        .into_iter()
        .map(|policy| Ok((policy, run(inputs, &truth, policy)?)))
        .collect::<Result<Vec<_>>>()?;
    // One threshold for both: every crop the per-frame run sent, against the other people's galleries.
    let per_frame_sent: Vec<&FaceRecord> = runs[0].1 .1.iter().filter(|r| r.pass).collect();
    let (sent_people, sent_records): (Vec<usize>, Vec<&FaceRecord>) = per_frame_sent
        .iter()
        .filter_map(|r| Some((truth.person_at(r.frame as usize, &r.bbox)?, *r)))
        .unzip();
    let threshold = threshold_at_fmr(&teacher_features(inputs, &sent_records)?, &sent_people, &galleries);
    let mut policies = Vec::new();
    for (policy, (summary, records)) in &runs {
        policies.push(score(
            inputs, &truth, &galleries, threshold, &short, *policy, summary, records,
        )?);
    }
    Ok(WalkbyReport {
        people: truth.people.len(),
        people_short: short.iter().filter(|s| **s).count(),
        frames: truth.frames.len(),
        fps: truth.fps,
        teacher_threshold: threshold,
        policies,
    })
}

#[allow(clippy::too_many_arguments)]
fn score(
    inputs: &Inputs,
    truth: &Truth,
    galleries: &[Vec<f32>],
    threshold: f64,
    short: &[bool],
    policy: CapturePolicy,
    summary: &Summary,
    records: &[FaceRecord],
) -> Result<PolicyReport> {
    let person = |r: &FaceRecord| truth.person_at(r.frame as usize, &r.bbox);
    let sent: Vec<&FaceRecord> = records.iter().filter(|r| r.pass).collect();
    let per_face: Vec<&FaceRecord> = records.iter().filter(|r| r.reason != "best_of_track").collect();
    let people = truth.people.len();
    let mut uploads = vec![0usize; people];
    for p in sent.iter().filter_map(|r| person(r)) {
        uploads[p] += 1;
    }
    let mean_over = |keep: &dyn Fn(usize) -> bool| {
        let chosen: Vec<usize> = (0..people).filter(|&p| keep(p)).collect();
        chosen.iter().map(|&p| uploads[p] as f64).sum::<f64>() / chosen.len().max(1) as f64
    };
    // Tracks: the people their faces show.
    let mut tracks: BTreeMap<u64, BTreeMap<usize, usize>> = BTreeMap::new();
    for r in &per_face {
        if let (Some(t), Some(p)) = (r.track, person(r)) {
            *tracks.entry(t).or_default().entry(p).or_default() += 1;
        }
    }
    let main_person = |t: u64| {
        tracks
            .get(&t)
            .and_then(|m| m.iter().max_by_key(|(_, n)| **n).map(|(p, _)| *p))
    };
    let wrong_uploads = sent
        .iter()
        .filter(|r| r.track.is_some_and(|t| main_person(t) != person(r)))
        .count();
    let switches = tracks.values().filter(|m| m.len() > 1).count() + wrong_uploads;
    let frames = summary.cameras.iter().map(|c| c.frames).sum::<u64>().max(1) as f64;

    let scored: Vec<(&FaceRecord, usize)> = sent.iter().filter_map(|r| Some((*r, person(r)?))).collect();
    let features = teacher_features(inputs, &scored.iter().map(|(r, _)| *r).collect::<Vec<_>>())?;
    let people_of: Vec<usize> = scored.iter().map(|(_, p)| *p).collect();
    let sent_worth = worth(&features, &people_of, galleries, threshold);
    let random_passing_frame = if policy == CapturePolicy::BestPerTrack {
        // The expectation over every passing frame of each sending track
        // (not one draw: a draw of 40-odd crops is too noisy to rank against).
        let mut frames = Vec::new();
        let mut owners = Vec::new();
        let mut people_of_frames = Vec::new();
        for (k, (r, p)) in scored.iter().enumerate() {
            for f in per_face
                .iter()
                .filter(|f| f.track == r.track && (f.reason == "held" || f.reason == "not_best"))
            {
                frames.push(*f);
                owners.push(k);
                people_of_frames.push(*p);
            }
        }
        let features = teacher_features(inputs, &frames)?;
        Some(expected_worth(
            &features,
            &people_of_frames,
            &owners,
            galleries,
            threshold,
        ))
    } else {
        None
    };
    let track_count = tracks.len();
    Ok(PolicyReport {
        policy: policy_name(policy).into(),
        uploads: sent.len(),
        uploads_per_person: mean_over(&|_| true),
        uploads_per_person_short: mean_over(&|p| short[p]),
        uploads_per_person_long: mean_over(&|p| !short[p]),
        person_recall: uploads.iter().filter(|&&n| n > 0).count() as f64 / people.max(1) as f64,
        uploads_of_nobody: sent.iter().filter(|r| person(r).is_none()).count(),
        tracks: track_count,
        identity_switches: switches,
        identity_switch_rate: if track_count == 0 {
            0.0
        } else {
            switches as f64 / track_count as f64
        },
        embeds_per_frame: per_face.iter().filter(|r| r.norm > 0.0).count() as f64 / frames,
        frames_per_s: summary.frames_per_s,
        sent: sent_worth,
        random_passing_frame,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_threshold_lets_one_impostor_in_a_hundred_through_and_worth_counts_matches() {
        // Two people with orthogonal galleries; crops of person 0 at angles to theirs.
        let galleries = vec![vec![1.0, 0.0, 0.0], vec![0.0, 1.0, 0.0]];
        let features: Vec<Vec<f32>> = (0..200).map(|i| vec![1.0, 0.0, i as f32 / 100.0]).collect();
        let people = vec![0; 200];
        // Every impostor cosine is 0: the threshold is 0.
        assert_eq!(threshold_at_fmr(&features, &people, &galleries), 0.0);
        let w = worth(&features, &people, &galleries, 0.7);
        // cos = 1 / sqrt(1 + (i/100)^2) >= 0.7 for i <= 102.
        assert_eq!(w.crops, 200);
        assert!((w.verified - 103.0 / 200.0).abs() < 1e-9, "{}", w.verified);
        // Two tracks: one verified in 1 frame of 4, one in both of its 2.
        let features = vec![
            vec![1.0, 0.0, 0.0],
            vec![0.0, 0.0, 1.0],
            vec![0.0, 0.0, 1.0],
            vec![0.0, 0.0, 1.0],
            vec![0.0, 1.0, 0.0],
            vec![0.0, 1.0, 0.0],
        ];
        let e = expected_worth(&features, &[0, 0, 0, 0, 1, 1], &[0, 0, 0, 0, 1, 1], &galleries, 0.5);
        assert_eq!(e.crops, 2);
        assert!((e.verified - (0.25 + 1.0) / 2.0).abs() < 1e-9, "{}", e.verified);
        assert!((e.mean_cosine - (0.25 + 1.0) / 2.0).abs() < 1e-9, "{}", e.mean_cosine);
    }
}
