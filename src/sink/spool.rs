//! The local spool: each passing crop becomes `NAME.jpg` plus `NAME.json`
//! (its record), both written atomically, the JSON last, so a consumer that
//! picks up `.json` files always finds the complete JPEG beside it.

use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::durable::{ensure_dir, write_atomic};
use crate::record::Crop;

/// A spool directory.
pub struct Spool {
    dir: PathBuf,
}

impl Spool {
    /// Creates the directory when needed.
    pub fn open(dir: &Path) -> Result<Self> {
        ensure_dir(dir)?;
        Ok(Self { dir: dir.to_path_buf() })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes a crop; returns the JPEG's path.
    pub fn write(&self, crop: &Crop) -> Result<PathBuf> {
        let r = &crop.record;
        let key = r.key.as_deref().unwrap_or("nokey");
        let stem = format!("{}-{:08}-{}-{}", r.camera, r.frame, r.face, &key[..key.len().min(12)]);
        let jpeg = write_atomic(&self.dir, &format!("{stem}.jpg"), &crop.jpeg)?;
        write_atomic(&self.dir, &format!("{stem}.json"), &serde_json::to_vec_pretty(r)?)?;
        Ok(jpeg)
    }
}
