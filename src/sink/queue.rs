//! The durable upload queue: one file per crop in a directory, named by a
//! sequence number, written atomically before the crop counts as accepted
//! and removed only after the server took it. The directory is the index, so
//! a crash or power loss loses nothing that was accepted; a restart picks up
//! where the last run stopped. The queue is bounded in crops and bytes, and
//! a full queue either refuses new crops or evicts the oldest, as configured.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::durable::{ensure_dir, sync_dir, write_atomic, TEMP_SUFFIX};
use crate::metrics::Metrics;
use crate::record::{Crop, FaceRecord};

/// Marks an entry file of this format.
const MAGIC: &[u8; 4] = b"NGQ1";
/// Extension of entry files.
const EXTENSION: &str = "crop";
/// Subdirectory for entries the server refused for good or that cannot be read.
pub const REJECTED_DIR: &str = "rejected";

/// What a full queue does with a new crop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Refuse the new crop (counted as dropped with reason `queue_full`).
    Reject,
    /// Evict the oldest crops until the new one fits (each eviction counted and logged).
    DropOldest,
}

/// Bounds of a queue.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Most crops held.
    pub max_items: usize,
    /// Most bytes held.
    pub max_bytes: u64,
    /// Policy when a new crop does not fit.
    pub when_full: WhenFull,
}

/// The outcome of a push.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    /// On disk; the keys of crops evicted to make room.
    Accepted {
        /// Evicted crops' keys.
        evicted: Vec<String>,
    },
    /// Refused: the queue is full and the policy is `reject`, or the crop alone exceeds `max_bytes`.
    Full,
}

struct Entry {
    seq: u64,
    bytes: u64,
    key: String,
}

struct State {
    entries: VecDeque<Entry>,
    bytes: u64,
    next_seq: u64,
}

/// A durable queue in a directory.
pub struct Queue {
    dir: PathBuf,
    limits: Limits,
    state: Mutex<State>,
    changed: Condvar,
    metrics: Arc<Metrics>,
}

fn encode(crop: &Crop) -> Result<Vec<u8>> {
    let meta = serde_json::to_vec(&crop.record)?;
    let mut out = Vec::with_capacity(8 + meta.len() + crop.jpeg.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&u32::try_from(meta.len())?.to_le_bytes());
    out.extend_from_slice(&meta);
    out.extend_from_slice(&crop.jpeg);
    Ok(out)
}

/// Reads a queue entry file's bytes back into its crop; anything else is an error.
pub fn decode(bytes: &[u8]) -> Result<Crop> {
    if bytes.len() < 8 || &bytes[..4] != MAGIC {
        bail!("not a queue entry");
    }
    let len = u32::from_le_bytes(bytes[4..8].try_into()?) as usize;
    let end = len.checked_add(8).context("truncated queue entry")?;
    let meta = bytes.get(8..end).context("truncated queue entry")?;
    let record: FaceRecord = serde_json::from_slice(meta).context("queue entry metadata")?;
    Ok(Crop {
        record,
        jpeg: bytes[end..].to_vec(),
    })
}

fn entry_name(seq: u64) -> String {
    format!("{seq:020}.{EXTENSION}")
}

impl Queue {
    /// Opens (or creates) a queue, removing half-written files of a crashed run
    /// and setting aside entries that cannot be read.
    pub fn open(dir: &Path, limits: Limits, metrics: Arc<Metrics>) -> Result<Self> {
        if limits.max_items == 0 || limits.max_bytes == 0 {
            bail!("upload queue limits must be at least 1 crop and 1 byte");
        }
        ensure_dir(dir)?;
        let mut entries = Vec::new();
        for item in std::fs::read_dir(dir).with_context(|| format!("cannot list queue {}", dir.display()))? {
            let path = item?.path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string();
            if name.ends_with(TEMP_SUFFIX) {
                std::fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
                continue;
            }
            let Some(seq) = name
                .strip_suffix(&format!(".{EXTENSION}"))
                .and_then(|s| s.parse::<u64>().ok())
            else {
                continue;
            };
            match std::fs::read(&path)
                .map_err(anyhow::Error::from)
                .and_then(|b| decode(&b))
            {
                Ok(crop) => entries.push(Entry {
                    seq,
                    bytes: std::fs::metadata(&path)?.len(),
                    key: crop.record.key.unwrap_or_default(),
                }),
                Err(e) => set_aside(dir, &name, &format!("{e:#}"))?,
            }
        }
        entries.sort_by_key(|e| e.seq);
        let next_seq = entries.last().map_or(0, |e| e.seq + 1);
        let bytes = entries.iter().map(|e| e.bytes).sum();
        if !entries.is_empty() {
            log::info!(
                "upload queue {}: {} crops from an earlier run",
                dir.display(),
                entries.len()
            );
        }
        let queue = Self {
            dir: dir.to_path_buf(),
            limits,
            state: Mutex::new(State {
                entries: entries.into(),
                bytes,
                next_seq,
            }),
            changed: Condvar::new(),
            metrics,
        };
        queue.publish(&queue.state.lock().unwrap(), 0, 0);
        Ok(queue)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Updates the gauges by the change in depth and bytes.
    fn publish(&self, state: &State, old_depth: usize, old_bytes: u64) {
        self.metrics
            .queue_depth
            .inc_by(state.entries.len() as i64 - old_depth as i64);
        self.metrics.queue_bytes.inc_by(state.bytes as i64 - old_bytes as i64);
    }

    /// Puts a crop on disk; once this returns `Accepted`, the crop survives a crash.
    pub fn push(&self, crop: &Crop) -> Result<Pushed> {
        let bytes = encode(crop)?;
        let size = bytes.len() as u64;
        let mut state = self.state.lock().unwrap();
        let (old_depth, old_bytes) = (state.entries.len(), state.bytes);
        let fits = |s: &State| s.entries.len() < self.limits.max_items && s.bytes + size <= self.limits.max_bytes;
        let mut evicted = Vec::new();
        if size > self.limits.max_bytes {
            return Ok(Pushed::Full);
        }
        while !fits(&state) {
            if self.limits.when_full == WhenFull::Reject {
                return Ok(Pushed::Full);
            }
            let oldest = state.entries.pop_front().expect("a full queue has entries");
            state.bytes -= oldest.bytes;
            remove_if_present(&self.dir.join(entry_name(oldest.seq)))?;
            self.metrics.queue_evicted.inc();
            log::warn!("upload queue full: evicted the oldest crop {}", oldest.key);
            evicted.push(oldest.key);
        }
        let seq = state.next_seq;
        write_atomic(&self.dir, &entry_name(seq), &bytes)?;
        state.next_seq += 1;
        state.bytes += size;
        state.entries.push_back(Entry {
            seq,
            bytes: size,
            key: crop.record.key.clone().unwrap_or_default(),
        });
        self.publish(&state, old_depth, old_bytes);
        self.changed.notify_all();
        Ok(Pushed::Accepted { evicted })
    }

    /// The oldest entry's sequence number and crop, waiting at most `wait` for one.
    pub fn oldest(&self, wait: Duration) -> Result<Option<(u64, Crop)>> {
        let mut state = self.state.lock().unwrap();
        if state.entries.is_empty() {
            state = self.changed.wait_timeout(state, wait).unwrap().0;
        }
        let Some(seq) = state.entries.front().map(|e| e.seq) else {
            return Ok(None);
        };
        drop(state);
        let name = entry_name(seq);
        match std::fs::read(self.dir.join(&name)) {
            Ok(bytes) => match decode(&bytes) {
                Ok(crop) => Ok(Some((seq, crop))),
                Err(e) => {
                    self.set_aside(seq, &format!("{e:#}"))?;
                    Ok(None)
                }
            },
            // Evicted while we looked: the next call sees the new oldest.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read queue entry {name}")),
        }
    }

    /// Removes a delivered entry.
    pub fn remove(&self, seq: u64) -> Result<()> {
        let mut state = self.state.lock().unwrap();
        let (old_depth, old_bytes) = (state.entries.len(), state.bytes);
        if let Some(i) = state.entries.iter().position(|e| e.seq == seq) {
            let entry = state.entries.remove(i).expect("index found");
            state.bytes -= entry.bytes;
            remove_if_present(&self.dir.join(entry_name(seq)))?;
            sync_dir(&self.dir)?;
        }
        self.publish(&state, old_depth, old_bytes);
        Ok(())
    }

    /// Moves an entry the server refused for good (or that cannot be read)
    /// to `rejected/`, where it is kept for a person to look at.
    pub fn set_aside(&self, seq: u64, why: &str) -> Result<()> {
        let mut state = self.state.lock().unwrap();
        let (old_depth, old_bytes) = (state.entries.len(), state.bytes);
        if let Some(i) = state.entries.iter().position(|e| e.seq == seq) {
            let entry = state.entries.remove(i).expect("index found");
            state.bytes -= entry.bytes;
            set_aside(&self.dir, &entry_name(seq), why)?;
        }
        self.publish(&state, old_depth, old_bytes);
        Ok(())
    }

    /// Crops waiting.
    pub fn len(&self) -> usize {
        self.state.lock().unwrap().entries.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn remove_if_present(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove {}", path.display()))
        }
        _ => Ok(()),
    }
}

fn set_aside(dir: &Path, name: &str, why: &str) -> Result<()> {
    let rejected = dir.join(REJECTED_DIR);
    ensure_dir(&rejected)?;
    std::fs::rename(dir.join(name), rejected.join(name))
        .with_context(|| format!("cannot move queue entry {name} to {}", rejected.display()))?;
    sync_dir(dir)?;
    log::error!(
        "upload queue {}: set aside {name} in {REJECTED_DIR}/: {why}",
        dir.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::content_key;

    fn crop(n: u8, size: usize) -> Crop {
        let jpeg = vec![n; size];
        Crop {
            record: FaceRecord {
                time: "2026-11-28T00:00:00.000Z".into(),
                camera: "cam".into(),
                frame: n as u64,
                source: format!("f{n}"),
                face: 0,
                bbox: [0.0; 4],
                landmarks: [[0.0; 2]; 5],
                detector_score: 0.9,
                norm: 10.0,
                threshold: 5.0,
                pass: true,
                reason: "pass".into(),
                key: Some(content_key(&jpeg)),
                crop_region: None,
                track: None,
                track_frames: None,
            },
            jpeg,
        }
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("normgate-queue-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn limits(max_items: usize, when_full: WhenFull) -> Limits {
        Limits {
            max_items,
            max_bytes: 1 << 20,
            when_full,
        }
    }

    fn frames_in_order(queue: &Queue) -> Vec<u64> {
        let mut out = Vec::new();
        while let Some((seq, c)) = queue.oldest(Duration::ZERO).unwrap() {
            out.push(c.record.frame);
            queue.remove(seq).unwrap();
        }
        out
    }

    #[test]
    fn entries_survive_a_restart_in_order_and_half_written_files_are_removed() {
        let dir = scratch("restart");
        let metrics = Arc::new(Metrics::default());
        {
            let q = Queue::open(&dir, limits(10, WhenFull::Reject), metrics.clone()).unwrap();
            for n in 1..=3 {
                assert_eq!(q.push(&crop(n, 100)).unwrap(), Pushed::Accepted { evicted: vec![] });
            }
            assert_eq!(metrics.queue_depth.get(), 3);
        }
        std::fs::write(dir.join(format!("{}{TEMP_SUFFIX}", entry_name(9))), b"half").unwrap();
        std::fs::write(dir.join(entry_name(7)), b"garbage").unwrap();
        let q = Queue::open(&dir, limits(10, WhenFull::Reject), Arc::new(Metrics::default())).unwrap();
        assert_eq!(q.len(), 3);
        assert!(dir.join(REJECTED_DIR).join(entry_name(7)).is_file());
        q.push(&crop(4, 100)).unwrap();
        assert_eq!(frames_in_order(&q), [1, 2, 3, 4]);
        assert!(q.is_empty());
        let left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(left, [REJECTED_DIR]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_full_queue_rejects_or_evicts_the_oldest_as_configured() {
        let dir = scratch("full");
        let metrics = Arc::new(Metrics::default());
        let q = Queue::open(&dir, limits(2, WhenFull::Reject), metrics.clone()).unwrap();
        q.push(&crop(1, 10)).unwrap();
        q.push(&crop(2, 10)).unwrap();
        assert_eq!(q.push(&crop(3, 10)).unwrap(), Pushed::Full);
        assert_eq!(frames_in_order(&q), [1, 2]);

        let dir = scratch("evict");
        let q = Queue::open(&dir, limits(2, WhenFull::DropOldest), metrics.clone()).unwrap();
        q.push(&crop(1, 10)).unwrap();
        q.push(&crop(2, 10)).unwrap();
        let evicted = q.push(&crop(3, 10)).unwrap();
        assert_eq!(
            evicted,
            Pushed::Accepted {
                evicted: vec![content_key(&[1; 10])]
            }
        );
        assert_eq!(metrics.queue_evicted.get(), 1);
        assert_eq!(frames_in_order(&q), [2, 3]);

        let dir = scratch("bytes");
        let small = Limits {
            max_items: 10,
            max_bytes: 1200,
            when_full: WhenFull::DropOldest,
        };
        let q = Queue::open(&dir, small, metrics).unwrap();
        q.push(&crop(1, 200)).unwrap();
        q.push(&crop(2, 200)).unwrap();
        assert!(matches!(q.push(&crop(3, 200)).unwrap(), Pushed::Accepted { evicted } if evicted.len() == 1));
        assert_eq!(q.push(&crop(4, 1000)).unwrap(), Pushed::Full);
        assert_eq!(frames_in_order(&q), [2, 3]);
        for name in ["full", "evict", "bytes"] {
            std::fs::remove_dir_all(scratch(name)).ok();
        }
    }

    #[test]
    fn a_refused_entry_is_kept_aside_not_lost() {
        let dir = scratch("aside");
        let q = Queue::open(&dir, limits(10, WhenFull::Reject), Arc::new(Metrics::default())).unwrap();
        q.push(&crop(1, 10)).unwrap();
        let (seq, c) = q.oldest(Duration::ZERO).unwrap().unwrap();
        q.set_aside(seq, "HTTP 400").unwrap();
        assert!(q.is_empty());
        let kept = std::fs::read(dir.join(REJECTED_DIR).join(entry_name(seq))).unwrap();
        assert_eq!(decode(&kept).unwrap().jpeg, c.jpeg);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
