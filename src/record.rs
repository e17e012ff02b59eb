//! What the gate decided about one face: a line of the decision log, and the
//! metadata that travels with a passing crop.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Mutex;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One face's record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaceRecord {
    /// When the decision was made, RFC 3339 UTC.
    pub time: String,
    /// Camera id.
    pub camera: String,
    /// Frame number within the camera's source.
    pub frame: u64,
    /// File name or stream position of the frame.
    pub source: String,
    /// Index of the face within its frame, best detector score first.
    pub face: usize,
    /// Box `[x1, y1, x2, y2]` in frame pixels.
    pub bbox: [f32; 4],
    /// Left eye, right eye, nose, left and right mouth corner, frame pixels.
    pub landmarks: [[f32; 2]; 5],
    /// Detector confidence.
    pub detector_score: f32,
    /// Feature norm (0 when the face was not embedded).
    pub norm: f32,
    /// The threshold the norm was compared with.
    pub threshold: f32,
    /// Whether the crop passed.
    pub pass: bool,
    /// Why: `passed`, `low_norm`, `small_face`, `low_detector_score`,
    /// `queue_full`, ...; with tracking also `held` (the track's best crop so
    /// far), `not_best` (the track holds a better one), `not_embedded` (the
    /// track holds a good crop and the face was not embedded), `contested`
    /// (two tracks claimed the face alike: people crossing) and
    /// `best_of_track` (a held crop sent when its track ended or its window closed).
    pub reason: String,
    /// Idempotency key of the uploaded crop (SHA-256 of its JPEG), for passing crops.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Region of the frame `[x, y, width, height]` that the crop shows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crop_region: Option<[u32; 4]>,
    /// The face's track, when the camera tracks faces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track: Option<u64>,
    /// On a `best_of_track` record: the track's first frame and its latest
    /// frame with the face (`frame` is the chosen one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_frames: Option<[u64; 2]>,
}

/// A passing crop: its JPEG and its record.
#[derive(Debug, Clone)]
pub struct Crop {
    /// The record, with `key` set.
    pub record: FaceRecord,
    /// JPEG bytes.
    pub jpeg: Vec<u8>,
}

/// Hex SHA-256 of the bytes: the idempotency key that makes retries safe.
pub fn content_key(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// The current time in RFC 3339 with milliseconds.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

/// The JSON-lines decision log, shared by every camera.
pub struct DecisionLog {
    out: Mutex<BufWriter<File>>,
}

impl DecisionLog {
    /// Opens `path` for appending.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            crate::durable::ensure_dir(dir)?;
        }
        let file = crate::durable::open_private(path, true)
            .with_context(|| format!("cannot open decision log {}", path.display()))?;
        Ok(Self {
            out: Mutex::new(BufWriter::new(file)),
        })
    }

    /// Appends the records of one frame and flushes them.
    pub fn write(&self, records: &[FaceRecord]) -> Result<()> {
        let mut out = self.out.lock().unwrap();
        for r in records {
            serde_json::to_writer(&mut *out, r)?;
            out.write_all(b"\n")?;
        }
        out.flush().context("cannot write the decision log")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_sha256_hex() {
        assert_eq!(
            content_key(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
