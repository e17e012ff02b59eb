//! The faster variant of a model on this device's CPU. A model's card may
//! name its other variants (`[variants] fp32 = "backbone-fp32.onnx"`, files
//! beside it): the same network in fp32 and in int8. Which one runs faster
//! depends on the CPU's kernels, not on its architecture's name (on one
//! x86_64 the int8 QOperator files ran tens of times slower than fp32), so
//! with `variant = "auto"` the device times a few runs of each at start,
//! keeps the faster, logs both times, and caches the choice in a file keyed
//! by the CPU, the binary and the model files, so later starts are instant
//! and a new binary, CPU or model is timed again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::card::{ModelCard, Precision};
use crate::durable::write_atomic;
use crate::embedded;
use crate::record::content_key;

/// Timed runs of each contending variant (after one warm-up).
const TIMED_RUNS: usize = 5;
/// A variant whose first run is this many times the fastest's is not timed further.
const SLOWER: f64 = 2.0;

/// Which variant of a model to run (`[models] detector_variant`, `embedder_variant`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Choice {
    /// The faster on this CPU, timed at the first start and cached.
    #[default]
    Auto,
    /// The fp32 file.
    Fp32,
    /// The int8 file.
    Int8,
}

/// A model's variants: its precision and file, the configured file first.
pub fn variants(path: &Path, card: &ModelCard) -> Vec<(Precision, PathBuf)> {
    let mut out = vec![(card.precision, path.to_path_buf())];
    for (precision, file) in &card.variants {
        if *precision != card.precision {
            out.push((*precision, embedded::sibling(path, file)));
        }
    }
    out
}

/// Median time of `runs` calls of `run` after one warm-up call; with
/// `runs` 0, the warm-up call's time.
pub fn median_time(runs: usize, run: &mut dyn FnMut() -> Result<()>) -> Result<Duration> {
    let start = Instant::now();
    run()?;
    if runs == 0 {
        return Ok(start.elapsed());
    }
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            run().map(|()| start.elapsed())
        })
        .collect::<Result<_>>()?;
    times.sort();
    Ok(times[times.len() / 2])
}

/// What identifies a timing: the CPU, this binary, and the files timed.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Key {
    /// The CPU's model and features (`/proc/cpuinfo`) and core count.
    pub cpu: String,
    /// This binary: version, size and modification time.
    pub binary: String,
    /// SHA-256 of each variant's file, in the order timed.
    pub files: Vec<String>,
}

/// The CPU as `/proc/cpuinfo` describes its first core, and the core count.
pub fn cpu_identity() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let fields = [
        "model name",
        "flags",
        "Features",
        "CPU implementer",
        "CPU part",
        "CPU variant",
    ];
    let first_core: Vec<&str> = info
        .split("\n\n")
        .next()
        .unwrap_or_default()
        .lines()
        .filter(|l| fields.iter().any(|f| l.starts_with(f)))
        .collect();
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    content_key(format!("{}|{cores}", first_core.join("|")).as_bytes())
}

/// This binary: its version and its file's size and modification time.
pub fn binary_identity() -> String {
    let file = std::env::current_exe()
        .and_then(std::fs::metadata)
        .map(|m| {
            let modified = m
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            format!("{} bytes, modified {modified}", m.len())
        })
        .unwrap_or_default();
    format!("{} {file}", env!("CARGO_PKG_VERSION"))
}

/// One model's cached choice.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct Entry {
    /// What was timed.
    pub key: Key,
    /// The faster variant.
    pub chosen: Precision,
    /// Median milliseconds per run of each variant.
    pub ms: BTreeMap<Precision, f64>,
}

/// The cache file: one entry per model role (`detector`, `embedder`).
#[derive(Debug, Default, Deserialize, Serialize)]
pub struct Cache {
    #[serde(default)]
    entries: BTreeMap<String, Entry>,
}

impl Cache {
    /// Reads the cache; a missing or unreadable file is an empty cache.
    pub fn load(path: &Path) -> Self {
        let Ok(bytes) = std::fs::read(path) else {
            return Self::default();
        };
        serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            log::warn!("variant cache {} is unreadable ({e}); timing again", path.display());
            Self::default()
        })
    }

    /// The cached entry of `role` if it was timed under `key`.
    pub fn get(&self, role: &str, key: &Key) -> Option<&Entry> {
        self.entries.get(role).filter(|e| &e.key == key)
    }

    /// Records an entry and writes the file.
    pub fn put(&mut self, role: &str, entry: Entry, path: &Path) -> Result<()> {
        self.entries.insert(role.into(), entry);
        let dir = match path.parent().filter(|d| !d.as_os_str().is_empty()) {
            Some(dir) => {
                crate::durable::ensure_dir(dir)?;
                dir
            }
            None => Path::new("."),
        };
        let name = path.file_name().context("the variant cache needs a file name")?;
        write_atomic(dir, &name.to_string_lossy(), &serde_json::to_vec_pretty(self)?)?;
        Ok(())
    }
}

/// Picks the file to run for `role` (`detector`, `embedder`): the variant
/// `choice` names, or with `auto` the faster of the card's variants as
/// `time(file, runs)` measures each file (see [`median_time`]; cached in
/// `cache_path`).
pub fn pick(
    role: &str,
    path: &Path,
    choice: Choice,
    cache_path: &Path,
    time: &mut dyn FnMut(&Path, usize) -> Result<Duration>,
) -> Result<PathBuf> {
    let card = ModelCard::load(&ModelCard::path_for(path))?;
    let all = variants(path, &card);
    let wanted = match choice {
        Choice::Auto if all.len() == 1 => return Ok(path.to_path_buf()),
        Choice::Auto => None,
        Choice::Fp32 => Some(Precision::Fp32),
        Choice::Int8 => Some(Precision::Int8),
    };
    if let Some(wanted) = wanted {
        return match all.iter().find(|(p, _)| *p == wanted) {
            Some((_, file)) => Ok(file.clone()),
            None => bail!(
                "{role}_variant = \"{wanted}\": the {role} {} has no {wanted} variant (its card lists {}); use \"auto\"",
                path.display(),
                all.iter()
                    .map(|(p, _)| p.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
    }
    let key = Key {
        cpu: cpu_identity(),
        binary: binary_identity(),
        files: all
            .iter()
            .map(|(_, file)| embedded::read(file).map(|bytes| content_key(&bytes)))
            .collect::<Result<_>>()?,
    };
    pick_timed(role, all, key, cache_path, time)
}

/// The faster of `all` under `key`: from the cache, or timed and cached.
fn pick_timed(
    role: &str,
    all: Vec<(Precision, PathBuf)>,
    key: Key,
    cache_path: &Path,
    time: &mut dyn FnMut(&Path, usize) -> Result<Duration>,
) -> Result<PathBuf> {
    let mut cache = Cache::load(cache_path);
    if let Some(entry) = cache.get(role, &key) {
        log::info!(
            "{role}: {} variant (timed earlier on this CPU, cached in {})",
            entry.chosen,
            cache_path.display()
        );
        return Ok(all
            .into_iter()
            .find(|(p, _)| *p == entry.chosen)
            .expect("a timed variant")
            .1);
    }
    let started = Instant::now();
    let mut timed =
        |file: &Path, runs| time(file, runs).with_context(|| format!("timing the {role} variant {}", file.display()));
    // One run of each first; a variant more than SLOWER times slower than
    // the fastest is not timed further (its one run is its time), so a
    // first start does not wait for many runs of a clearly slow file.
    let first: Vec<Duration> = all.iter().map(|(_, file)| timed(file, 0)).collect::<Result<_>>()?;
    let fastest = *first.iter().min().expect("at least one variant");
    let mut ms = BTreeMap::new();
    for ((precision, file), once) in all.iter().zip(&first) {
        let t = if *once > fastest.mul_f64(SLOWER) {
            *once
        } else {
            timed(file, TIMED_RUNS)?
        };
        ms.insert(*precision, t.as_secs_f64() * 1e3);
    }
    let chosen = *ms
        .iter()
        .min_by(|a, b| a.1.total_cmp(b.1))
        .map(|(p, _)| p)
        .expect("at least one variant");
    let times: Vec<String> = ms.iter().map(|(p, t)| format!("{p} {t:.1} ms")).collect();
    log::info!(
        "{role}: timed its variants on this CPU ({}), chose {chosen}; timing took {:.1} s, cached in {}",
        times.join(", "),
        started.elapsed().as_secs_f32(),
        cache_path.display()
    );
    if let Err(e) = cache.put(role, Entry { key, chosen, ms }, cache_path) {
        log::warn!("cannot cache the {role} variant choice: {e:#}");
    }
    Ok(all.into_iter().find(|(p, _)| *p == chosen).expect("a timed variant").1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CARD: &str = "input = \"input\"\nwidth = 96\nheight = 112\nbatch = 0\nchannels = \"rgb\"\nmean = [127.5, 127.5, 127.5]\nstd = [128.0, 128.0, 128.0]\n";
    const EMBEDDER: &str = "[embedder]\noutput = \"fc5\"\ntemplate = \"sphereface_112x96\"\n";

    /// An int8 model with an fp32 sibling in a fresh folder; returns the int8 path.
    fn pair(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("normgate-variant-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("m.onnx"), "int8 bytes").unwrap();
        std::fs::write(
            dir.join("m.toml"),
            format!("{CARD}precision = \"int8\"\n[variants]\nfp32 = \"m-fp32.onnx\"\n{EMBEDDER}"),
        )
        .unwrap();
        std::fs::write(dir.join("m-fp32.onnx"), "fp32 bytes").unwrap();
        std::fs::write(dir.join("m-fp32.toml"), format!("{CARD}{EMBEDDER}")).unwrap();
        dir.join("m.onnx")
    }

    /// Times read from the file name: int8 slow, fp32 fast; counts calls.
    fn fake_times(calls: &mut usize) -> impl FnMut(&Path, usize) -> Result<Duration> + '_ {
        move |file: &Path, _runs| {
            *calls += 1;
            let slow = !file.to_string_lossy().contains("fp32");
            Ok(Duration::from_millis(if slow { 40 } else { 4 }))
        }
    }

    #[test]
    fn the_slow_variant_loses_and_the_choice_is_cached_until_the_cpu_or_binary_changes() {
        let int8 = pair("auto");
        let dir = int8.parent().unwrap().to_path_buf();
        let cache = dir.join("cache.json");
        let card = ModelCard::load(&ModelCard::path_for(&int8)).unwrap();
        let all = variants(&int8, &card);
        let key = Key {
            cpu: "cpu A".into(),
            binary: "normgate 1".into(),
            files: vec!["a".into(), "b".into()],
        };
        // Times the variants under `key` (or takes the cache); returns the choice and the timings run.
        let timed = |key: Key| {
            let mut calls = 0;
            let chosen = pick_timed("embedder", all.clone(), key, &cache, &mut fake_times(&mut calls)).unwrap();
            (chosen, calls)
        };
        // Both run once; the int8 file, ten times slower, is not timed further.
        assert_eq!(timed(key.clone()), (dir.join("m-fp32.onnx"), 3), "the slow one lost");
        let entry = Cache::load(&cache).get("embedder", &key).cloned().unwrap();
        assert_eq!((entry.chosen, entry.ms[&Precision::Int8]), (Precision::Fp32, 40.0));
        // The same CPU and binary: no timing.
        assert_eq!(timed(key.clone()).1, 0);
        // Another CPU, or another binary: timed again.
        assert_eq!(
            timed(Key {
                cpu: "cpu B".into(),
                ..key.clone()
            })
            .1,
            3
        );
        assert_eq!(
            timed(Key {
                binary: "normgate 2".into(),
                ..key.clone()
            })
            .1,
            3
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_forced_variant_is_taken_without_timing_and_a_missing_one_is_an_error() {
        let int8 = pair("forced");
        let dir = int8.parent().unwrap().to_path_buf();
        let cache = dir.join("cache.json");
        let mut never = |_: &Path, _| -> Result<Duration> { panic!("a forced variant is not timed") };
        assert_eq!(
            pick("embedder", &int8, Choice::Fp32, &cache, &mut never).unwrap(),
            dir.join("m-fp32.onnx")
        );
        assert_eq!(pick("embedder", &int8, Choice::Int8, &cache, &mut never).unwrap(), int8);
        // The fp32 file's card names no sibling: auto runs it, int8 is an error.
        let fp32 = dir.join("m-fp32.onnx");
        assert_eq!(pick("embedder", &fp32, Choice::Auto, &cache, &mut never).unwrap(), fp32);
        let err = pick("embedder", &fp32, Choice::Int8, &cache, &mut never)
            .unwrap_err()
            .to_string();
        assert!(err.contains("has no int8 variant"), "{err}");
        assert!(!cache.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
