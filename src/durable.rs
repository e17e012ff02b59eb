//! Writes that survive a crash or a power loss, and stay private: a file is
//! written under a temporary name, flushed to disk, renamed into place and
//! its directory flushed, so a reader sees either nothing or the whole file.
//! Face crops are biometric data, so every file is created 0600 and every
//! directory 0700 whatever the process umask.

use std::fs::{DirBuilder, File, OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Suffix of files being written; leftovers from a crash are removed by their owners.
pub const TEMP_SUFFIX: &str = ".tmp";

/// Mode of every file the device writes: its owner reads and writes it, nobody else.
pub const FILE_MODE: u32 = 0o600;
/// Mode of every directory the device creates.
pub const DIR_MODE: u32 = 0o700;

/// Opens a new or existing file for writing with [`FILE_MODE`]; an existing
/// file keeps its content (`append`) or is truncated.
pub fn open_private(path: &Path, append: bool) -> std::io::Result<File> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .append(append)
        .truncate(!append)
        .mode(FILE_MODE)
        .open(path)?;
    // `mode` applies only to a new file and is narrowed by the umask: set it outright.
    file.set_permissions(Permissions::from_mode(FILE_MODE))?;
    Ok(file)
}

/// Atomically writes `bytes` to `dir/name`.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf> {
    let path = dir.join(name);
    let temp = dir.join(format!("{name}{TEMP_SUFFIX}"));
    let mut file = open_private(&temp, false).with_context(|| format!("cannot create {}", temp.display()))?;
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

/// Creates a directory that the process must be able to write, and each
/// missing parent, with [`DIR_MODE`]. A directory that already exists keeps
/// its mode (it may be shared, like `/tmp`); one that others can read gets a
/// warning, as the files in it are still private.
pub fn ensure_dir(dir: &Path) -> Result<()> {
    let mut missing = Vec::new();
    let mut probe = Some(dir);
    while let Some(d) = probe.filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        missing.push(d);
        probe = d.parent();
    }
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .with_context(|| format!("cannot create directory {}", dir.display()))?;
    for d in &missing {
        std::fs::set_permissions(d, Permissions::from_mode(DIR_MODE))
            .with_context(|| format!("cannot make directory {} private", d.display()))?;
    }
    if missing.is_empty() {
        let mode = std::fs::metadata(dir)
            .with_context(|| format!("cannot read directory {}", dir.display()))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            log::warn!(
                "directory {} can be listed by other users (mode {:o}); its files are private (0600), run `chmod 700 {}` to hide their names too",
                dir.display(),
                mode & 0o777,
                dir.display()
            );
        }
    }
    Ok(())
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

    #[test]
    fn new_directories_and_files_are_private() {
        let root = std::env::temp_dir().join(format!("normgate-private-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let dir = root.join("a/b");
        ensure_dir(&dir).unwrap();
        let file = write_atomic(&dir, "x", b"1").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!([mode(&root), mode(&root.join("a")), mode(&dir)], [DIR_MODE; 3]);
        assert_eq!(mode(&file), FILE_MODE);
        // An existing file opened for appending is made private too.
        std::fs::set_permissions(&file, Permissions::from_mode(0o644)).unwrap();
        open_private(&file, true).unwrap();
        assert_eq!(mode(&file), FILE_MODE);
        assert_eq!(std::fs::read(&file).unwrap(), b"1");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
