//! Ages out the face crops the device keeps on disk: the spool, the audit
//! samples and the crops the server refused (`queue/rejected/`). Each store
//! has a maximum age and a size cap; a sweep removes what is too old, then
//! the oldest until the store fits its cap. The files of one crop (`NAME.jpg`
//! and `NAME.json`) share a stem and go together. The upload queue itself is
//! not swept: its own bounds decide what waits (`sink::queue`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};

use crate::camera::sleep_unless;
use crate::durable::TEMP_SUFFIX;
use crate::metrics::Metrics;

/// How long and how much one store keeps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rule {
    /// Crops older than this are removed; `None` keeps them whatever their age.
    pub max_age: Option<Duration>,
    /// The oldest crops are removed while the store holds more; `None`: no cap.
    pub max_bytes: Option<u64>,
}

/// What one sweep removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    /// Files removed.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// The files of one crop.
struct Item {
    newest: SystemTime,
    bytes: u64,
    files: Vec<PathBuf>,
}

/// The crops in `dir`, oldest first; files being written are left out.
fn items(dir: &Path) -> Result<Vec<Item>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot list {}", dir.display())),
    };
    let mut by_stem: HashMap<String, Item> = HashMap::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let meta = entry.metadata()?;
        if !meta.is_file() || name.ends_with(TEMP_SUFFIX) {
            continue;
        }
        let stem = name.split('.').next().unwrap_or_default().to_string();
        let modified = meta.modified()?;
        let item = by_stem.entry(stem).or_insert(Item {
            newest: SystemTime::UNIX_EPOCH,
            bytes: 0,
            files: Vec::new(),
        });
        item.newest = item.newest.max(modified);
        item.bytes += meta.len();
        item.files.push(entry.path());
    }
    let mut items: Vec<Item> = by_stem.into_values().collect();
    items.sort_by_key(|i| i.newest);
    Ok(items)
}

/// Removes from `dir` the crops that `rule` no longer keeps at time `now`.
pub fn sweep(dir: &Path, rule: Rule, now: SystemTime) -> Result<Swept> {
    let items = items(dir)?;
    let mut held: u64 = items.iter().map(|i| i.bytes).sum();
    let mut swept = Swept::default();
    for item in items {
        let too_old = rule
            .max_age
            .is_some_and(|age| now.duration_since(item.newest).unwrap_or_default() > age);
        let over_cap = rule.max_bytes.is_some_and(|cap| held > cap);
        if !(too_old || over_cap) {
            // Oldest first: the rest are younger, and the store fits its cap.
            break;
        }
        for file in &item.files {
            match std::fs::remove_file(file) {
                Ok(()) => swept.files += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("cannot remove {}", file.display())),
            }
        }
        held -= item.bytes;
        swept.bytes += item.bytes;
    }
    Ok(swept)
}

/// One store to sweep: its kind (a metrics label), directory and rule.
#[derive(Debug, Clone)]
pub struct Store {
    /// `spool`, `audit` or `rejected`.
    pub kind: &'static str,
    /// The directory.
    pub dir: PathBuf,
    /// What it keeps.
    pub rule: Rule,
}

/// Sweeps `stores` now and then every `every` until `stop`, counting what
/// it removes; an error is logged and the next sweep tries again.
pub fn sweep_until(stores: &[Store], every: Duration, metrics: &Metrics, stop: &Arc<AtomicBool>) {
    loop {
        for store in stores {
            match sweep(&store.dir, store.rule, SystemTime::now()) {
                Ok(swept) if swept.files > 0 => {
                    log::info!(
                        "retention: removed {} files ({} bytes) from {} {}",
                        swept.files,
                        swept.bytes,
                        store.kind,
                        store.dir.display()
                    );
                    metrics.retention_removed(store.kind, swept.files, swept.bytes);
                }
                Ok(_) => {}
                Err(e) => log::warn!("retention: cannot sweep {}: {e:#}", store.dir.display()),
            }
        }
        sleep_unless(stop, every);
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::FileTimes;

    fn write(dir: &Path, name: &str, bytes: usize, age_s: u64, now: SystemTime) {
        let path = dir.join(name);
        std::fs::write(&path, vec![0u8; bytes]).unwrap();
        let file = std::fs::File::options().write(true).open(&path).unwrap();
        file.set_times(FileTimes::new().set_modified(now - Duration::from_secs(age_s)))
            .unwrap();
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn old_crops_go_with_their_records_then_the_oldest_until_the_cap_holds() {
        let dir = std::env::temp_dir().join(format!("normgate-retention-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let now = SystemTime::now();
        let day = 86_400;
        for (stem, age) in [("a", 10 * day), ("b", 3 * day), ("c", 2 * day), ("d", 60)] {
            write(&dir, &format!("{stem}.jpg"), 1000, age, now);
            write(&dir, &format!("{stem}.json"), 100, age, now);
        }
        write(&dir, "e.jpg.tmp", 5000, 20 * day, now);

        let week = Rule {
            max_age: Some(Duration::from_secs(7 * day)),
            max_bytes: None,
        };
        let swept = sweep(&dir, week, now).unwrap();
        assert_eq!(swept, Swept { files: 2, bytes: 1100 });
        assert_eq!(names(&dir)[0], "b.jpg");

        // A cap of two crops: the oldest of the three left goes.
        let cap = Rule {
            max_age: None,
            max_bytes: Some(2200),
        };
        assert_eq!(sweep(&dir, cap, now).unwrap(), Swept { files: 2, bytes: 1100 });
        let expected = ["c.jpg", "c.json", "d.jpg", "d.json", "e.jpg.tmp"];
        assert_eq!(names(&dir), expected, "a file being written is never swept");
        // Nothing more to do.
        assert_eq!(sweep(&dir, cap, now).unwrap(), Swept::default());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_store_not_created_yet_is_empty() {
        let rule = Rule {
            max_age: Some(Duration::ZERO),
            max_bytes: Some(0),
        };
        let missing = std::env::temp_dir().join("normgate-retention-never-created");
        assert_eq!(sweep(&missing, rule, SystemTime::now()).unwrap(), Swept::default());
    }
}
