//! The best shot of a track: of the crops that passed the gate, the one with
//! the highest norm is held (one per track, so memory is bounded by the
//! tracker's cap) and released when the track ends or, for a person who
//! stays, when a window of time closes. Once the held crop is clearly good,
//! later frames of the track need no embedding unless the face has grown.

use crate::{Error, Result};

/// When a track's crop is released, and when its faces need embedding.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ShotConfig {
    /// A person who stays gets the best crop of each window of this many
    /// seconds; 0 releases only at the track's end.
    pub window_s: f32,
    /// Norm above the threshold that makes a held crop good enough to stop
    /// embedding every frame (NaN: embed every frame).
    pub skip_margin: f32,
    /// With a good crop held, embed one frame in this many.
    pub embed_every: u32,
    /// With a good crop held, embed a face this many times larger than the held one's.
    pub regrow: f32,
}

impl Default for ShotConfig {
    fn default() -> Self {
        Self {
            window_s: 10.0,
            skip_margin: 1.0,
            embed_every: 5,
            regrow: 1.25,
        }
    }
}

impl ShotConfig {
    /// Checks every field's range; the message names the field to fix.
    pub fn validate(&self) -> Result<()> {
        let bad = |name, reason| Err(Error::InvalidParameter { name, reason });
        if !(self.window_s.is_finite() && self.window_s >= 0.0) {
            return bad("window_s", "must be finite and at least 0");
        }
        if self.embed_every == 0 {
            return bad("embed_every", "must be at least 1");
        }
        if !(self.regrow.is_finite() && self.regrow >= 1.0) {
            return bad("regrow", "must be finite and at least 1");
        }
        if self.skip_margin.is_infinite() {
            return bad("skip_margin", "must be finite");
        }
        Ok(())
    }
}

/// A crop that passed the gate, as a track holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Shot<T> {
    /// Its feature norm.
    pub norm: f32,
    /// The frame it came from.
    pub frame: u64,
    /// Its face's shorter side, pixels.
    pub face_px: f32,
    /// What the caller keeps with it (the encoded crop).
    pub payload: T,
}

/// One track's held crop and embedding schedule.
#[derive(Debug, Clone)]
pub struct BestShot<T> {
    held: Option<Shot<T>>,
    window_start_s: f64,
    last_embedded: Option<u64>,
}

impl<T> BestShot<T> {
    /// A track seen first at `now_s`.
    pub fn new(now_s: f64) -> Self {
        Self {
            held: None,
            window_start_s: now_s,
            last_embedded: None,
        }
    }

    /// The crop held now.
    pub fn held(&self) -> Option<&Shot<T>> {
        self.held.as_ref()
    }

    /// Whether a passing crop of this norm would replace the held one (ties keep the earlier).
    pub fn improves(&self, norm: f32) -> bool {
        self.held.as_ref().is_none_or(|h| norm > h.norm)
    }

    /// Holds `shot` if it is better than the held crop; returns whether it is held.
    pub fn offer(&mut self, shot: Shot<T>) -> bool {
        let better = self.improves(shot.norm);
        if better {
            self.held = Some(shot);
        }
        better
    }

    /// Notes that the track's face was embedded in `frame`.
    pub fn embedded(&mut self, frame: u64) {
        self.last_embedded = Some(frame);
    }

    /// Whether the track's face in `frame` (shorter side `face_px`) needs
    /// embedding: always, unless the held crop beats `threshold` by the
    /// margin; then only every `embed_every` frames or when the face has
    /// grown by `regrow` over the held one.
    pub fn needs_embedding(&self, frame: u64, face_px: f32, threshold: f32, config: &ShotConfig) -> bool {
        let Some(held) = &self.held else {
            return true;
        };
        // Written so that a NaN margin reads as "never good enough".
        let good = held.norm - threshold >= config.skip_margin;
        if !good {
            return true;
        }
        let due = self
            .last_embedded
            .is_none_or(|last| frame.saturating_sub(last) >= u64::from(config.embed_every));
        due || face_px >= held.face_px * config.regrow
    }

    /// Whether the window that began at the last release has closed at `now_s`.
    pub fn window_closed(&self, now_s: f64, config: &ShotConfig) -> bool {
        config.window_s > 0.0 && now_s - self.window_start_s >= f64::from(config.window_s)
    }

    /// Releases the held crop (if any) and starts a new window at `now_s`.
    pub fn release(&mut self, now_s: f64) -> Option<Shot<T>> {
        self.window_start_s = now_s;
        self.held.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shot(norm: f32, frame: u64, face_px: f32) -> Shot<u64> {
        Shot {
            norm,
            frame,
            face_px,
            payload: frame,
        }
    }

    #[test]
    fn the_highest_norm_is_held_and_released_once() {
        let mut b = BestShot::new(0.0);
        assert!(b.offer(shot(6.0, 1, 50.0)));
        assert!(!b.offer(shot(5.5, 2, 50.0)));
        assert!(!b.offer(shot(6.0, 3, 50.0)));
        assert!(b.offer(shot(7.0, 4, 50.0)));
        assert_eq!(b.release(1.0).map(|s| s.payload), Some(4));
        assert_eq!(b.release(1.0), None);
    }

    #[test]
    fn a_window_closes_after_its_seconds_and_restarts_at_release() {
        let config = ShotConfig {
            window_s: 10.0,
            ..ShotConfig::default()
        };
        let mut b: BestShot<u64> = BestShot::new(2.0);
        assert!(!b.window_closed(11.9, &config));
        assert!(b.window_closed(12.0, &config));
        b.release(12.0);
        assert!(!b.window_closed(21.0, &config));
        let never = ShotConfig {
            window_s: 0.0,
            ..config
        };
        assert!(!b.window_closed(1e9, &never));
    }

    #[test]
    fn a_clearly_good_crop_thins_the_embeddings_until_the_face_grows() {
        let config = ShotConfig {
            skip_margin: 2.0,
            embed_every: 5,
            regrow: 1.25,
            ..ShotConfig::default()
        };
        let mut b = BestShot::new(0.0);
        assert!(b.needs_embedding(0, 40.0, 5.0, &config));
        b.embedded(0);
        b.offer(shot(6.0, 0, 40.0));
        // Passing but not by the margin: every frame.
        assert!(b.needs_embedding(1, 40.0, 5.0, &config));
        b.embedded(1);
        b.offer(shot(7.5, 1, 40.0));
        let embedded: std::vec::Vec<u64> = (2..12)
            .filter(|&f| {
                let needed = b.needs_embedding(f, 40.0, 5.0, &config);
                if needed {
                    b.embedded(f);
                }
                needed
            })
            .collect();
        assert_eq!(embedded, [6, 11]);
        // Grown by a quarter: embedded at once.
        assert!(b.needs_embedding(12, 50.0, 5.0, &config));
        // A NaN margin never stops embedding.
        let nan = ShotConfig {
            skip_margin: f32::NAN,
            ..config
        };
        assert!(b.needs_embedding(12, 40.0, 5.0, &nan));
    }

    #[test]
    fn bad_configurations_name_the_field() {
        for (config, name) in [
            (
                ShotConfig {
                    window_s: -1.0,
                    ..ShotConfig::default()
                },
                "window_s",
            ),
            (
                ShotConfig {
                    embed_every: 0,
                    ..ShotConfig::default()
                },
                "embed_every",
            ),
            (
                ShotConfig {
                    regrow: 0.5,
                    ..ShotConfig::default()
                },
                "regrow",
            ),
        ] {
            assert!(matches!(config.validate(), Err(Error::InvalidParameter { name: n, .. }) if n == name));
        }
    }
}
