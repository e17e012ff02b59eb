//! Threshold policies that turn a stream of feature norms into pass/drop decisions.
//!
//! A crop passes when its face is large enough, the detector is confident
//! enough, and its norm reaches the threshold in force. The threshold is fixed,
//! or follows the stream: a factor times a running average of norms, or the
//! quantile that drops a target share of crops. Adaptive thresholds never fall
//! below a floor, so a camera that only ever sees bad crops does not start to
//! upload them. Optional hysteresis keeps a steady face from flickering
//! between pass and drop when its norm sits at the threshold.

use crate::quantile::P2Quantile;
use crate::{Error, Result};

/// How the norm threshold is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Policy {
    /// A fixed norm threshold.
    Fixed {
        /// Crops with a smaller norm are dropped.
        threshold: f32,
    },
    /// `factor` times an exponential average of the norms seen so far.
    RunningAverage {
        /// Weight of the newest norm in the average, in (0, 1].
        weight: f32,
        /// Multiplier applied to the average, > 0.
        factor: f32,
        /// The threshold never falls below this, and is this before any norm was seen.
        floor: f32,
    },
    /// The streaming `rate`-quantile of the norms seen so far, so that about
    /// that share of crops is dropped.
    DropRate {
        /// Target share of dropped crops, in (0, 1).
        rate: f32,
        /// The threshold never falls below this, and is this before any norm was seen.
        floor: f32,
    },
}

/// Everything that decides whether a crop passes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GateConfig {
    /// The norm threshold policy.
    pub policy: Policy,
    /// Half-width of the hysteresis band in norm units (0 disables it): after a
    /// pass the next crop needs `threshold - hysteresis`, after a drop
    /// `threshold + hysteresis`.
    pub hysteresis: f32,
    /// Smallest face (shorter box side, pixels) that is judged at all.
    pub min_face_px: f32,
    /// Smallest detector score that is judged at all.
    pub min_detector_score: f32,
}

impl GateConfig {
    /// A fixed-threshold gate with no hysteresis and no size or score limits.
    pub fn fixed(threshold: f32) -> Self {
        Self {
            policy: Policy::Fixed { threshold },
            hysteresis: 0.0,
            min_face_px: 0.0,
            min_detector_score: 0.0,
        }
    }

    /// Checks every field's range; the message names the field to fix.
    pub fn validate(&self) -> Result<()> {
        let bad = |name, reason| Err(Error::InvalidParameter { name, reason });
        let non_negative = |v: f32| v.is_finite() && v >= 0.0;
        match self.policy {
            Policy::Fixed { threshold } if !non_negative(threshold) => {
                return bad("threshold", "must be finite and at least 0")
            }
            Policy::RunningAverage { weight, .. } if !(weight > 0.0 && weight <= 1.0) => {
                return bad("weight", "must be in (0, 1]")
            }
            Policy::RunningAverage { factor, .. } if !(factor > 0.0 && factor.is_finite()) => {
                return bad("factor", "must be finite and greater than 0")
            }
            Policy::DropRate { rate, .. } if !(rate > 0.0 && rate < 1.0) => return bad("rate", "must be in (0, 1)"),
            Policy::RunningAverage { floor, .. } | Policy::DropRate { floor, .. } if !non_negative(floor) => {
                return bad("floor", "must be finite and at least 0")
            }
            _ => {}
        }
        if !non_negative(self.hysteresis) {
            return bad("hysteresis", "must be finite and at least 0");
        }
        if !non_negative(self.min_face_px) {
            return bad("min_face_px", "must be finite and at least 0");
        }
        if !(0.0..=1.0).contains(&self.min_detector_score) {
            return bad("min_detector_score", "must be in [0, 1]");
        }
        Ok(())
    }
}

/// What the gate knows about one crop.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    /// L2 norm of the crop's un-normalised feature.
    pub norm: f32,
    /// Shorter side of the detected face box, in pixels.
    pub face_px: f32,
    /// Detector confidence in [0, 1].
    pub detector_score: f32,
}

/// Why a crop passed or was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Norm at or above the threshold.
    Passed,
    /// Norm below the threshold.
    LowNorm,
    /// Face smaller than `min_face_px`.
    SmallFace,
    /// Detector score below `min_detector_score`.
    LowDetectorScore,
    /// The norm was NaN or infinite (a broken model or input).
    InvalidNorm,
}

impl Reason {
    /// A stable snake_case name for logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Passed => "passed",
            Reason::LowNorm => "low_norm",
            Reason::SmallFace => "small_face",
            Reason::LowDetectorScore => "low_detector_score",
            Reason::InvalidNorm => "invalid_norm",
        }
    }
}

/// The gate's verdict on one crop.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    /// Whether the crop goes on to the sink.
    pub pass: bool,
    /// Why.
    pub reason: Reason,
    /// The crop's norm.
    pub norm: f32,
    /// The norm threshold in force for this crop (hysteresis included).
    pub threshold: f32,
}

/// A stateful gate over one camera's stream of crops.
#[derive(Debug, Clone)]
pub struct Gate {
    config: GateConfig,
    average: Option<f32>,
    quantile: Option<P2Quantile>,
    last_passed: bool,
}

impl Gate {
    /// A gate with a validated configuration.
    pub fn new(config: GateConfig) -> Result<Self> {
        config.validate()?;
        let quantile = match config.policy {
            Policy::DropRate { rate, .. } => Some(P2Quantile::new(f64::from(rate))?),
            _ => None,
        };
        Ok(Self {
            config,
            average: None,
            quantile,
            last_passed: false,
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &GateConfig {
        &self.config
    }

    /// Replaces the thresholds without losing the learned statistics, as far
    /// as the new policy can use them (a SIGHUP reload on the device).
    pub fn reconfigure(&mut self, config: GateConfig) -> Result<()> {
        config.validate()?;
        self.quantile = match (config.policy, self.config.policy, self.quantile.take()) {
            (Policy::DropRate { rate: new, .. }, Policy::DropRate { rate: old, .. }, Some(q)) if new == old => Some(q),
            (Policy::DropRate { rate, .. }, ..) => Some(P2Quantile::new(f64::from(rate))?),
            _ => None,
        };
        self.config = config;
        Ok(())
    }

    /// The norm threshold before hysteresis, from the history so far.
    pub fn base_threshold(&self) -> f32 {
        match self.config.policy {
            Policy::Fixed { threshold } => threshold,
            Policy::RunningAverage { factor, floor, .. } => self.average.map_or(floor, |a| (a * factor).max(floor)),
            Policy::DropRate { floor, .. } => self
                .quantile
                .as_ref()
                .and_then(P2Quantile::estimate)
                .map_or(floor, |q| (q as f32).max(floor)),
        }
    }

    /// The reason a face is dropped whatever its norm (too small, too
    /// uncertain), so the device can skip embedding it.
    pub fn precheck(&self, face_px: f32, detector_score: f32) -> Option<Reason> {
        if face_px < self.config.min_face_px {
            Some(Reason::SmallFace)
        } else if detector_score < self.config.min_detector_score {
            Some(Reason::LowDetectorScore)
        } else {
            None
        }
    }

    /// Judges one crop against the history so far, then adds its norm to the
    /// history (crops rejected for size or score do not shape the threshold).
    pub fn decide(&mut self, c: &Candidate) -> Decision {
        let base = self.base_threshold();
        let threshold = if self.last_passed {
            (base - self.config.hysteresis).max(0.0)
        } else {
            base + self.config.hysteresis
        };
        let reason = if !c.norm.is_finite() {
            Reason::InvalidNorm
        } else if let Some(reason) = self.precheck(c.face_px, c.detector_score) {
            reason
        } else {
            self.observe(c.norm);
            if c.norm >= threshold {
                Reason::Passed
            } else {
                Reason::LowNorm
            }
        };
        let pass = reason == Reason::Passed;
        if matches!(reason, Reason::Passed | Reason::LowNorm) {
            self.last_passed = pass;
        }
        Decision {
            pass,
            reason,
            norm: c.norm,
            threshold,
        }
    }

    fn observe(&mut self, norm: f32) {
        if let Policy::RunningAverage { weight, .. } = self.config.policy {
            self.average = Some(self.average.map_or(norm, |a| (1.0 - weight) * a + weight * norm));
        }
        if let Some(q) = &mut self.quantile {
            q.push(f64::from(norm));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn face(norm: f32) -> Candidate {
        Candidate {
            norm,
            face_px: 100.0,
            detector_score: 0.99,
        }
    }

    #[test]
    fn fixed_threshold_passes_at_or_above() {
        let mut g = Gate::new(GateConfig::fixed(5.0)).unwrap();
        let d = g.decide(&face(5.0));
        assert!(d.pass);
        assert_eq!((d.reason, d.norm, d.threshold), (Reason::Passed, 5.0, 5.0));
        let d = g.decide(&face(4.9));
        assert_eq!((d.pass, d.reason), (false, Reason::LowNorm));
    }

    #[test]
    fn size_score_and_nan_come_before_the_norm() {
        let mut cfg = GateConfig::fixed(1.0);
        cfg.min_face_px = 40.0;
        cfg.min_detector_score = 0.8;
        let mut g = Gate::new(cfg).unwrap();
        let small = Candidate {
            face_px: 39.0,
            ..face(20.0)
        };
        assert_eq!(g.decide(&small).reason, Reason::SmallFace);
        let unsure = Candidate {
            detector_score: 0.5,
            ..face(20.0)
        };
        assert_eq!(g.decide(&unsure).reason, Reason::LowDetectorScore);
        assert_eq!(g.decide(&face(f32::NAN)).reason, Reason::InvalidNorm);
        assert_eq!(g.decide(&face(20.0)).reason, Reason::Passed);
        assert_eq!(g.precheck(39.0, 0.9), Some(Reason::SmallFace));
        assert_eq!(g.precheck(40.0, 0.5), Some(Reason::LowDetectorScore));
        assert_eq!(g.precheck(40.0, 0.8), None);
    }

    #[test]
    fn running_average_times_factor_with_floor() {
        let cfg = GateConfig {
            policy: Policy::RunningAverage {
                weight: 0.5,
                factor: 0.5,
                floor: 3.0,
            },
            ..GateConfig::fixed(0.0)
        };
        let mut g = Gate::new(cfg).unwrap();
        // Nothing seen: the floor.
        assert_eq!(g.decide(&face(20.0)).threshold, 3.0);
        // avg = 20 -> 10.
        assert_eq!(g.decide(&face(10.0)).threshold, 10.0);
        // avg = (20 + 10) / 2 = 15 -> 7.5.
        assert_eq!(g.decide(&face(2.0)).threshold, 7.5);
        // avg = (15 + 2) / 2 = 8.5 -> 4.25.
        assert_eq!(g.base_threshold(), 4.25);
    }

    #[test]
    fn drop_rate_policy_drops_about_the_target_share() {
        let cfg = GateConfig {
            policy: Policy::DropRate { rate: 0.3, floor: 0.0 },
            ..GateConfig::fixed(0.0)
        };
        let mut g = Gate::new(cfg).unwrap();
        let mut seed = 11u64;
        let mut dropped = 0;
        let n = 10_000;
        for _ in 0..n {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            let norm = 5.0 + 20.0 * ((seed >> 40) as f32 / (1u64 << 24) as f32);
            dropped += usize::from(!g.decide(&face(norm)).pass);
        }
        let share = dropped as f32 / n as f32;
        assert!((share - 0.3).abs() < 0.02, "dropped {share}");
    }

    #[test]
    fn hysteresis_holds_the_previous_state_inside_the_band() {
        let cfg = GateConfig {
            hysteresis: 1.0,
            ..GateConfig::fixed(10.0)
        };
        let mut g = Gate::new(cfg).unwrap();
        assert!(!g.decide(&face(10.5)).pass); // from drop: needs 11
        let up = g.decide(&face(11.0));
        assert!(up.pass && up.threshold == 11.0);
        let stay = g.decide(&face(9.2)); // from pass: needs 9
        assert!(stay.pass && stay.threshold == 9.0);
        assert!(!g.decide(&face(8.9)).pass);
        assert!(!g.decide(&face(10.9)).pass);
    }

    #[test]
    fn reconfigure_keeps_statistics_of_the_same_policy() {
        let drop_rate = |rate| GateConfig {
            policy: Policy::DropRate { rate, floor: 0.0 },
            ..GateConfig::fixed(0.0)
        };
        let mut g = Gate::new(drop_rate(0.5)).unwrap();
        for n in 1..=9 {
            g.decide(&face(n as f32));
        }
        let before = g.base_threshold();
        g.reconfigure(drop_rate(0.5)).unwrap();
        assert_eq!(g.base_threshold(), before);
        g.reconfigure(drop_rate(0.2)).unwrap();
        assert_eq!(g.base_threshold(), 0.0);
        assert!(g.reconfigure(drop_rate(1.5)).is_err());
        assert_eq!(g.config().policy, Policy::DropRate { rate: 0.2, floor: 0.0 });
    }

    #[test]
    fn invalid_configs_name_the_field() {
        let cases = [
            (Policy::Fixed { threshold: -1.0 }, "threshold"),
            (Policy::DropRate { rate: 1.0, floor: 0.0 }, "rate"),
            (
                Policy::RunningAverage {
                    weight: 2.0,
                    factor: 1.0,
                    floor: 0.0,
                },
                "weight",
            ),
            (
                Policy::RunningAverage {
                    weight: 0.5,
                    factor: 0.0,
                    floor: 0.0,
                },
                "factor",
            ),
            (
                Policy::DropRate {
                    rate: 0.5,
                    floor: f32::NAN,
                },
                "floor",
            ),
        ];
        for (policy, field) in cases {
            let err = Gate::new(GateConfig {
                policy,
                ..GateConfig::fixed(0.0)
            })
            .unwrap_err();
            assert!(
                matches!(err, Error::InvalidParameter { name, .. } if name == field),
                "{err:?}"
            );
        }
    }

    proptest! {
        #[test]
        fn adaptive_thresholds_never_fall_below_the_floor(
            norms in prop::collection::vec(0.0f32..40.0, 1..200),
            floor in 0.0f32..20.0,
            rate in 0.05f32..0.95,
        ) {
            let mut g = Gate::new(GateConfig {
                policy: Policy::DropRate { rate, floor },
                ..GateConfig::fixed(0.0)
            }).unwrap();
            for n in norms {
                let d = g.decide(&face(n));
                prop_assert!(d.threshold >= floor);
                prop_assert_eq!(d.pass, n >= d.threshold);
            }
        }
    }
}
