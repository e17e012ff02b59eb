//! Writes that survive a crash or a power loss: a file is written under a
//! temporary name, flushed to disk, renamed into place and its directory
//! flushed, so a reader sees either nothing or the whole file.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Suffix of files being written; leftovers from a crash are removed by their owners.
pub const TEMP_SUFFIX: &str = ".tmp";

/// Atomically writes `bytes` to `dir/name`.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf> {
    let path = dir.join(name);
    let temp = dir.join(format!("{name}{TEMP_SUFFIX}"));
    let mut file = File::create(&temp).with_context(|| format!("cannot create {}", temp.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", temp.display()))?;
    drop(file);
    std::fs::rename(&temp, &path).with_context(|| format!("cannot rename {} into place", temp.display()))?;
    sync_dir(dir)?;
    Ok(path)
}

/// Flushes a directory's entries (creations, renames, removals) to disk.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot flush directory {}", dir.display()))
}

/// Creates a directory (and its parents) that the process must be able to write.
pub fn ensure_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create directory {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_atomic_write_leaves_only_the_final_file() {
        let dir = std::env::temp_dir().join(format!("normgate-durable-{}", std::process::id()));
        ensure_dir(&dir).unwrap();
        let path = write_atomic(&dir, "a.bin", b"first").unwrap();
        write_atomic(&dir, "a.bin", b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["a.bin"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
