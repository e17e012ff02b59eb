//! Where model files and cards are read from: the file system, or the
//! shipped models compiled into the binary (cargo feature `embedded-models`,
//! on by default) so that one file deploys and runs from any directory.
//!
//! An embedded model is named like a file in a folder called `embedded:`
//! (`embedded:detector.onnx`, its card `embedded:detector.toml`), so every
//! place that takes a model path takes an embedded one too, and a card's
//! relative `next` resolves inside the same store.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// The prefix that names the embedded store.
pub const PREFIX: &str = "embedded:";

/// One file compiled into the binary.
#[derive(Debug, Clone, Copy)]
pub struct EmbeddedFile {
    /// Its name inside the store (`detector.onnx`).
    pub name: &'static str,
    /// Its bytes.
    pub bytes: &'static [u8],
}

macro_rules! shipped {
    ($($name:literal),* $(,)?) => {
        &[$(EmbeddedFile {
            name: $name,
            bytes: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/models/", $name)),
        }),*]
    };
}

/// The shipped models and their cards.
#[cfg(feature = "embedded-models")]
pub const FILES: &[EmbeddedFile] = shipped!(
    "detector.onnx",
    "detector.toml",
    "detector-fp32.onnx",
    "detector-fp32.toml",
    "refiner.onnx",
    "refiner.toml",
    "refiner-aligned.onnx",
    "refiner-aligned.toml",
    "backbone.onnx",
    "backbone.toml",
    "backbone-fp32.onnx",
    "backbone-fp32.toml",
);

/// This build embeds no models (built without the `embedded-models` feature).
#[cfg(not(feature = "embedded-models"))]
pub const FILES: &[EmbeddedFile] = shipped!();

/// The default path of a shipped model: `embedded:NAME`.
pub fn default_path(name: &str) -> PathBuf {
    PathBuf::from(format!("{PREFIX}{name}"))
}

/// The store name of an embedded path (`embedded:detector.onnx` -> `detector.onnx`).
fn embedded_name(path: &Path) -> Option<&str> {
    path.to_str()?.strip_prefix(PREFIX)
}

fn find(name: &str) -> Option<&'static EmbeddedFile> {
    FILES.iter().find(|f| f.name == name)
}

/// Whether the file exists, in the store or on disk.
pub fn exists(path: &Path) -> bool {
    match embedded_name(path) {
        Some(name) => find(name).is_some(),
        None => path.is_file(),
    }
}

/// A file's bytes, from the store (borrowed) or from disk.
pub fn read(path: &Path) -> Result<Cow<'static, [u8]>> {
    match embedded_name(path) {
        Some(name) => match find(name) {
            Some(file) => Ok(Cow::Borrowed(file.bytes)),
            None if FILES.is_empty() => bail!(
                "{}: this build embeds no models (built without the `embedded-models` feature); name a model file instead",
                path.display()
            ),
            None => bail!(
                "{}: no such embedded file (embedded: {})",
                path.display(),
                FILES.iter().map(|f| f.name).collect::<Vec<_>>().join(", ")
            ),
        },
        None => Ok(Cow::Owned(
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?,
        )),
    }
}

/// A file's text (model cards).
pub fn read_text(path: &Path) -> Result<String> {
    String::from_utf8(read(path)?.into_owned()).with_context(|| format!("{} is not UTF-8 text", path.display()))
}

/// `name` taken relative to the folder of `file`, in the same store: a
/// card's `next` refiner beside it.
pub fn sibling(file: &Path, name: &Path) -> PathBuf {
    if embedded_name(file).is_some() && name.is_relative() {
        return PathBuf::from(format!("{PREFIX}{}", name.display()));
    }
    file.parent().unwrap_or(Path::new(".")).join(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_paths_resolve_in_the_store_and_other_paths_on_disk() {
        let card = Path::new("embedded:refiner.toml");
        assert_eq!(
            sibling(card, Path::new("refiner-aligned.onnx")),
            Path::new("embedded:refiner-aligned.onnx")
        );
        assert_eq!(
            sibling(Path::new("m/refiner.toml"), Path::new("next.onnx")),
            Path::new("m/next.onnx")
        );
        assert!(!exists(Path::new("embedded:no-such.onnx")));
        let err = format!("{:#}", read(Path::new("embedded:no-such.onnx")).unwrap_err());
        assert!(err.contains("embedded"), "{err}");
        assert!(read(Path::new("no/such/file.onnx")).is_err());
    }

    /// A model added to `models/` must be added to the store too.
    #[cfg(feature = "embedded-models")]
    #[test]
    fn every_shipped_model_and_card_is_embedded_as_it_is_on_disk() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
        let mut shipped: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".onnx") || n.ends_with(".toml"))
            .collect();
        shipped.sort();
        let mut embedded: Vec<String> = FILES.iter().map(|f| f.name.to_string()).collect();
        embedded.sort();
        assert_eq!(embedded, shipped);
        for file in FILES {
            let on_disk = std::fs::read(dir.join(file.name)).unwrap();
            assert_eq!(
                read(&default_path(file.name)).unwrap().as_ref(),
                on_disk.as_slice(),
                "{}",
                file.name
            );
        }
    }
}
