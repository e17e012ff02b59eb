//! A passing crop with a made-up record, for tests and benchmarks of the
//! sinks that need no model (`benches/uplink.rs` includes this file too).

use normgate::record::{content_key, Crop, FaceRecord};

/// Crop number `n` of camera `door` holding `jpeg`, keyed by its content.
pub fn crop(n: u32, jpeg: Vec<u8>) -> Crop {
    Crop {
        record: FaceRecord {
            time: "2026-12-07T00:00:00.000Z".into(),
            camera: "door".into(),
            frame: u64::from(n),
            source: "test".into(),
            face: 0,
            bbox: [0.0; 4],
            landmarks: [[0.0; 2]; 5],
            detector_score: 0.9,
            norm: 20.0,
            threshold: 10.0,
            pass: true,
            reason: "passed".into(),
            key: Some(content_key(&jpeg)),
            crop_region: None,
            track: None,
            track_frames: None,
        },
        jpeg,
    }
}
