//! The device's configuration: a TOML file whose every field has a default,
//! so an empty file (or none) runs the embedded default on the samples.
//! Unknown keys are errors, so a typo is caught at start, not in the field.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use normgate_core::gate::{GateConfig, Policy};
use serde::{Deserialize, Serialize};

use crate::source::SourceSpec;

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Gate thresholds shared by every camera unless a camera overrides them.
    pub gate: GateSection,
    /// Where passing crops go.
    pub sink: SinkSection,
    /// One section per camera (`[[camera]]`); none means the embedded default.
    #[serde(rename = "camera")]
    pub cameras: Vec<CameraSection>,
}

/// Thresholds of the gate (see `normgate_core::gate`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GateSection {
    /// The norm threshold policy.
    pub policy: PolicySection,
    /// Half-width of the hysteresis band, in norm units.
    pub hysteresis: f32,
    /// Smallest face (shorter box side, pixels) that is judged.
    pub min_face_px: f32,
    /// Smallest detector score that is judged.
    pub min_detector_score: f32,
}

impl Default for GateSection {
    fn default() -> Self {
        Self {
            policy: PolicySection::default(),
            hysteresis: 0.0,
            min_face_px: 32.0,
            min_detector_score: 0.6,
        }
    }
}

/// `[gate.policy]`: `kind` selects the policy, the other keys are its parameters.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum PolicySection {
    /// A fixed norm threshold.
    Fixed {
        /// Crops with a smaller norm are dropped.
        threshold: f32,
    },
    /// `factor` times an exponential average of the norms seen.
    RunningAverage {
        /// Weight of the newest norm, in (0, 1].
        weight: f32,
        /// Multiplier of the average.
        factor: f32,
        /// Lowest threshold ever used.
        #[serde(default)]
        floor: f32,
    },
    /// Drop about `rate` of the crops (streaming quantile).
    DropRate {
        /// Target share of dropped crops, in (0, 1).
        rate: f32,
        /// Lowest threshold ever used.
        #[serde(default)]
        floor: f32,
    },
}

impl Default for PolicySection {
    /// The seed's NormSelect threshold.
    fn default() -> Self {
        PolicySection::Fixed { threshold: 5.0 }
    }
}

impl GateSection {
    /// The core's gate configuration, validated.
    pub fn to_core(&self) -> Result<GateConfig> {
        let policy = match self.policy {
            PolicySection::Fixed { threshold } => Policy::Fixed { threshold },
            PolicySection::RunningAverage { weight, factor, floor } => Policy::RunningAverage { weight, factor, floor },
            PolicySection::DropRate { rate, floor } => Policy::DropRate { rate, floor },
        };
        let config = GateConfig {
            policy,
            hysteresis: self.hysteresis,
            min_face_px: self.min_face_px,
            min_detector_score: self.min_detector_score,
        };
        config.validate()?;
        Ok(config)
    }
}

/// `[sink]`: where passing crops are written.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SinkSection {
    /// Local spool directory (the embedded default).
    pub spool: PathBuf,
}

impl Default for SinkSection {
    fn default() -> Self {
        Self { spool: "spool".into() }
    }
}

/// `[[camera]]`: one frame source and, optionally, its own gate.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CameraSection {
    /// A name that appears in logs, metrics and crop metadata.
    pub id: String,
    /// Where frames come from (see `SourceSpec`).
    pub source: String,
    /// Overrides `[gate]` for this camera.
    pub gate: Option<GateSection>,
}

/// The camera used when the file names none: the bundled sample images.
pub const DEFAULT_SOURCE: &str = "samples";

impl Config {
    /// Reads and validates a TOML file.
    pub fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read config file {}", path.display()))?;
        let config: Config = toml::from_str(&text)
            .with_context(|| format!("config file {} is not valid (fix the key named below)", path.display()))?;
        config
            .validate()
            .with_context(|| format!("config file {} is not valid", path.display()))?;
        Ok(config)
    }

    /// The cameras to run: those configured, or the embedded default.
    pub fn cameras(&self) -> Vec<CameraSection> {
        if self.cameras.is_empty() {
            vec![CameraSection {
                id: "default".into(),
                source: DEFAULT_SOURCE.into(),
                gate: None,
            }]
        } else {
            self.cameras.clone()
        }
    }

    /// The gate configuration of one camera.
    pub fn gate_for(&self, camera: &CameraSection) -> Result<GateConfig> {
        camera.gate.as_ref().unwrap_or(&self.gate).to_core()
    }

    /// Checks what serde cannot: value ranges, unique camera ids, parseable sources.
    pub fn validate(&self) -> Result<()> {
        self.gate.to_core().context("[gate]")?;
        let mut ids = HashSet::new();
        for camera in &self.cameras {
            if camera.id.is_empty()
                || !camera
                    .id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                bail!(
                    "camera id {:?}: use letters, digits, '-', '_' or '.' (it names files and metrics)",
                    camera.id
                );
            }
            if !ids.insert(&camera.id) {
                bail!("camera id {:?} appears twice; ids must be unique", camera.id);
            }
            self.gate_for(camera)
                .with_context(|| format!("[camera] {:?}: gate", camera.id))?;
            SourceSpec::parse(&camera.source).with_context(|| format!("[camera] {:?}: source", camera.id))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config> {
        let config: Config = toml::from_str(text)?;
        config.validate()?;
        Ok(config)
    }

    #[test]
    fn empty_file_is_the_embedded_default() {
        let c = parse("").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.cameras()[0].source, DEFAULT_SOURCE);
        assert_eq!(c.gate.to_core().unwrap().policy, Policy::Fixed { threshold: 5.0 });
    }

    #[test]
    fn policies_and_camera_overrides_parse() {
        let c = parse(
            r#"
            [gate]
            hysteresis = 0.5
            [gate.policy]
            kind = "drop_rate"
            rate = 0.3
            floor = 4.0

            [[camera]]
            id = "door"
            source = "samples"
            [camera.gate.policy]
            kind = "running_average"
            weight = 0.1
            factor = 0.8
            "#,
        )
        .unwrap();
        assert_eq!(
            c.gate.to_core().unwrap().policy,
            Policy::DropRate { rate: 0.3, floor: 4.0 }
        );
        let door = c.gate_for(&c.cameras()[0]).unwrap();
        assert_eq!(
            door.policy,
            Policy::RunningAverage {
                weight: 0.1,
                factor: 0.8,
                floor: 0.0
            }
        );
        assert_eq!(door.min_face_px, 32.0);
    }

    #[test]
    fn mistakes_are_named() {
        let err = |text: &str| format!("{:#}", parse(text).unwrap_err());
        assert!(err("[gate]\nhysterisis = 1.0").contains("hysterisis"));
        assert!(err("[gate.policy]\nkind = \"drop_rate\"\nrate = 1.5").contains("rate"));
        assert!(err("[gate.policy]\nkind = \"median\"").contains("median"));
        let twice = "[[camera]]\nid = \"a\"\nsource = \"samples\"\n[[camera]]\nid = \"a\"\nsource = \"samples\"";
        assert!(err(twice).contains("twice"));
        assert!(err("[[camera]]\nid = \"a b\"\nsource = \"samples\"").contains("letters"));
    }
}
