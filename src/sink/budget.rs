//! The uplink budget of a cellular device: a rate limit (a token bucket
//! that holds one second of the rate, so bursts stay bounded) and an
//! optional cap on the bytes sent per UTC day, kept in the queue directory
//! so a restart does not reset it. A crop waits in the durable queue until
//! the budget lets it go; the queue's own bounds decide what waits. Every
//! attempt counts, failed ones included: they used the link too.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::durable::write_atomic;

/// File in the queue directory that holds the bytes sent today.
const DAY_FILE: &str = "uplink-day.json";
const SECONDS_PER_DAY: u64 = 86_400;

/// The budget's settings.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct BudgetSettings {
    /// Most bytes per second on average; `None`: no rate limit.
    pub bytes_per_s: Option<f64>,
    /// Most bytes per UTC day; `None`: no daily cap.
    pub bytes_per_day: Option<u64>,
}

/// Bytes sent on one UTC day.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq)]
struct DayCount {
    /// Days since 1970-01-01, UTC.
    day: u64,
    bytes: u64,
}

/// Why an upload must wait.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Wait {
    /// The rate limit: this long.
    Rate(Duration),
    /// The daily cap: until the next UTC day, this long from now.
    Daily(Duration),
}

/// The budget of one uploader.
pub struct Budget {
    settings: BudgetSettings,
    tokens: f64,
    refilled: Instant,
    today: DayCount,
    day_file: Option<PathBuf>,
}

fn day_of(wall: SystemTime) -> u64 {
    wall.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
        / SECONDS_PER_DAY
}

impl Budget {
    /// A budget with a full bucket, taking today's count from `queue_dir` when there is a daily cap.
    pub fn new(settings: BudgetSettings, queue_dir: Option<&Path>, now: Instant) -> Result<Self> {
        let day_file = settings.bytes_per_day.and(queue_dir).map(|dir| dir.join(DAY_FILE));
        let today = match &day_file {
            Some(path) if path.exists() => {
                let text = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
                serde_json::from_slice(&text).unwrap_or_else(|e| {
                    log::warn!(
                        "{} is unreadable ({e}); today's upload count starts at 0",
                        path.display()
                    );
                    DayCount::default()
                })
            }
            _ => DayCount::default(),
        };
        Ok(Self {
            settings,
            tokens: settings.bytes_per_s.unwrap_or(0.0),
            refilled: now,
            today,
            day_file,
        })
    }

    /// Takes `size` bytes from the budget if it allows them now; else says how long to wait.
    pub fn take(&mut self, size: u64, now: Instant, wall: SystemTime) -> Result<Option<Wait>> {
        let day = day_of(wall);
        if self.today.day != day {
            self.today = DayCount { day, bytes: 0 };
        }
        if let Some(cap) = self.settings.bytes_per_day {
            // The first crop of a day always goes, however large, so no crop waits for ever.
            if self.today.bytes > 0 && self.today.bytes + size > cap {
                let next_day = SystemTime::UNIX_EPOCH + Duration::from_secs((day + 1) * SECONDS_PER_DAY);
                let left = next_day.duration_since(wall).unwrap_or_default();
                return Ok(Some(Wait::Daily(left)));
            }
        }
        if let Some(rate) = self.settings.bytes_per_s {
            let burst = rate;
            let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
            self.tokens = (self.tokens + elapsed * rate).min(burst);
            self.refilled = now;
            // A crop larger than the bucket goes once the bucket is full and leaves it in debt.
            let need = (size as f64).min(burst);
            if self.tokens < need {
                return Ok(Some(Wait::Rate(Duration::from_secs_f64((need - self.tokens) / rate))));
            }
            self.tokens -= size as f64;
        }
        if self.settings.bytes_per_day.is_some() {
            self.today.bytes += size;
            if let Some(path) = &self.day_file {
                let dir = path.parent().expect("a file in the queue directory");
                write_atomic(dir, DAY_FILE, &serde_json::to_vec(&self.today)?)?;
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_holds_over_many_crops_and_bursts_stay_within_a_second() {
        let start = Instant::now();
        let wall = SystemTime::now();
        let settings = BudgetSettings {
            bytes_per_s: Some(1000.0),
            bytes_per_day: None,
        };
        let mut budget = Budget::new(settings, None, start).unwrap();
        // Simulated clock: each crop goes as soon as the budget allows.
        let mut now = start;
        let mut sent = 0u64;
        for i in 0..200u64 {
            let size = 300 + (i * 37) % 400;
            while let Some(Wait::Rate(d)) = budget.take(size, now, wall).unwrap() {
                now += d;
            }
            sent += size;
        }
        // The full bucket at the start (one second, 1000 bytes) is the only
        // excess over 1000 bytes/s.
        let expected = (sent - 1000) as f64 / 1000.0;
        assert!(
            ((now - start).as_secs_f64() - expected).abs() < 1e-3,
            "{now:?} {expected}"
        );
        // After a long idle time, at most one second's worth goes at once.
        let later = now + Duration::from_secs(3600);
        assert_eq!(budget.take(600, later, wall).unwrap(), None);
        assert!(budget.take(600, later, wall).unwrap().is_some());
    }

    #[test]
    fn the_daily_cap_waits_for_the_next_utc_day_and_survives_a_restart() {
        let dir = std::env::temp_dir().join(format!("normgate-budget-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let settings = BudgetSettings {
            bytes_per_s: None,
            bytes_per_day: Some(1000),
        };
        let now = Instant::now();
        // 23:00 UTC on some day.
        let evening = SystemTime::UNIX_EPOCH + Duration::from_secs(20_000 * SECONDS_PER_DAY + 23 * 3600);
        let mut budget = Budget::new(settings, Some(&dir), now).unwrap();
        assert_eq!(budget.take(600, now, evening).unwrap(), None);
        assert_eq!(budget.take(300, now, evening).unwrap(), None);
        let mut restarted = Budget::new(settings, Some(&dir), now).unwrap();
        assert_eq!(
            restarted.take(200, now, evening).unwrap(),
            Some(Wait::Daily(Duration::from_secs(3600)))
        );
        let midnight = evening + Duration::from_secs(3600);
        assert_eq!(restarted.take(200, now, midnight).unwrap(), None);
        // The first crop of a day goes even when it alone exceeds the cap.
        let next = midnight + Duration::from_secs(SECONDS_PER_DAY);
        assert_eq!(restarted.take(5000, now, next).unwrap(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
