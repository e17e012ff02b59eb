//! Frame sources: a V4L2 camera, an image directory, a glob, a single image,
//! or an MJPEG stream from a file or stdin. A frame that fails to decode
//! becomes a `Corrupt` item that the pipeline counts and skips; only a source
//! that cannot be opened at all is an error (a camera is retried instead).

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use image::RgbImage;

use crate::mjpeg::JpegFrames;

/// File extensions read from image directories and globs.
pub const IMAGE_EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];
/// File extensions read as MJPEG streams.
pub const STREAM_EXTENSIONS: [&str; 2] = ["mjpeg", "mjpg"];

/// Where frames come from, as written in a config file or on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSpec {
    /// A directory of images, a single image, or an `.mjpeg` file.
    Path(PathBuf),
    /// A glob pattern over image files, e.g. `shots/*.jpg`.
    Glob(String),
    /// An MJPEG stream from a file (`mjpeg:PATH`) or stdin (`-` or `mjpeg:-`).
    Mjpeg(Option<PathBuf>),
    /// A V4L2 camera: `v4l2:/dev/video0`, `v4l2:0`, or a `/dev/video*` path.
    Camera(String),
}

impl SourceSpec {
    /// Parses a source spec. Existence is checked when the source is opened.
    pub fn parse(spec: &str) -> Result<Self> {
        let spec = spec.trim();
        if spec.is_empty() {
            bail!("empty source; give a directory, an image, a glob, an .mjpeg file, mjpeg:PATH or - for stdin");
        }
        if spec == "-" || spec == "mjpeg:-" {
            return Ok(SourceSpec::Mjpeg(None));
        }
        if let Some(device) = spec.strip_prefix("v4l2:") {
            if device.is_empty() {
                bail!("source {spec:?}: name the camera, e.g. v4l2:/dev/video0 or v4l2:0");
            }
            return Ok(SourceSpec::Camera(device.into()));
        }
        if spec.starts_with("/dev/video") {
            return Ok(SourceSpec::Camera(spec.into()));
        }
        if let Some(path) = spec.strip_prefix("mjpeg:") {
            return Ok(SourceSpec::Mjpeg(Some(path.into())));
        }
        if spec.contains(['*', '?', '[']) {
            glob::Pattern::new(spec).with_context(|| format!("source {spec:?} is not a valid glob pattern"))?;
            return Ok(SourceSpec::Glob(spec.into()));
        }
        Ok(SourceSpec::Path(spec.into()))
    }
}

/// A decoded frame.
#[derive(Debug, Clone)]
pub struct Frame {
    /// Running number within its source, from 0, counting corrupt frames too.
    pub index: u64,
    /// File name, or `stream#N` for stream frames.
    pub name: String,
    /// The pixels.
    pub image: RgbImage,
}

/// One item of a source.
#[derive(Debug)]
pub enum Item {
    /// A decoded frame.
    Frame(Frame),
    /// A frame that could not be read or decoded; counted and skipped.
    Corrupt {
        /// Running number, as for frames.
        index: u64,
        /// File name or stream position.
        name: String,
        /// What was wrong.
        error: String,
    },
    /// Frames a live source overwrote because inference was behind.
    Skipped {
        /// How many.
        count: u64,
    },
    /// A camera failed or could not be opened; it is being reopened.
    Lost {
        /// What went wrong.
        error: String,
    },
    /// A lost camera is back.
    Reconnected,
}

/// An open source: an iterator of frames and corrupt-frame reports.
pub struct Source {
    items: Box<dyn Iterator<Item = Item> + Send>,
}

impl Iterator for Source {
    type Item = Item;

    fn next(&mut self) -> Option<Item> {
        self.items.next()
    }
}

fn has_extension(path: &Path, extensions: &[&str]) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| extensions.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

/// Largest frame side decoded: a corrupt header that claims more is refused
/// before anything is allocated for it.
pub const MAX_FRAME_SIDE: u32 = 8192;
/// Most memory one frame's decoding may take (an 8192 x 8192 RGB frame plus the decoder's own).
const MAX_FRAME_DECODE_BYTES: u64 = 256 << 20;

/// Decodes one encoded frame (JPEG, PNG, ...) to RGB8, within bounded memory.
pub fn decode_frame(bytes: &[u8], format: Option<image::ImageFormat>) -> Result<RgbImage, String> {
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes));
    match format {
        Some(format) => reader.set_format(format),
        None => reader = reader.with_guessed_format().map_err(|e| e.to_string())?,
    }
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_FRAME_SIDE);
    limits.max_image_height = Some(MAX_FRAME_SIDE);
    limits.max_alloc = Some(MAX_FRAME_DECODE_BYTES);
    reader.limits(limits);
    reader.decode().map(|i| i.to_rgb8()).map_err(|e| e.to_string())
}

fn decode(index: u64, name: String, bytes: Result<Vec<u8>, String>) -> Item {
    match bytes.and_then(|b| decode_frame(&b, None)) {
        Ok(image) => Item::Frame(Frame { index, name, image }),
        Err(error) => Item::Corrupt { index, name, error },
    }
}

fn files(paths: Vec<PathBuf>) -> Source {
    let items = paths.into_iter().zip(0u64..).map(|(path, index)| {
        let name = path.display().to_string();
        decode(index, name, std::fs::read(&path).map_err(|e| e.to_string()))
    });
    Source { items: Box::new(items) }
}

/// The frames of an MJPEG stream (concatenated JPEG images), decoded.
pub fn stream(reader: impl Read + Send + 'static) -> Source {
    let items = JpegFrames::new(BufReader::new(reader))
        .zip(0u64..)
        .map(|(bytes, index)| decode(index, format!("stream#{index}"), bytes.map_err(|e| e.to_string())));
    Source { items: Box::new(items) }
}

impl Source {
    /// Opens a file or stream source. A missing path, an empty directory or a
    /// glob without matches is an error that says what to fix. Cameras are
    /// not opened here but captured by `camera::capture` in a feed.
    pub fn open(spec: &SourceSpec) -> Result<Self> {
        match spec {
            SourceSpec::Camera(device) => bail!("camera {device} is captured by a feed, not opened as a file source"),
            SourceSpec::Mjpeg(None) => Ok(stream(std::io::stdin())),
            SourceSpec::Mjpeg(Some(path)) => {
                Ok(stream(File::open(path).with_context(|| {
                    format!("cannot open MJPEG stream {}", path.display())
                })?))
            }
            SourceSpec::Glob(pattern) => {
                let mut paths: Vec<PathBuf> = glob::glob(pattern)?
                    .filter_map(|p| p.ok())
                    .filter(|p| p.is_file())
                    .collect();
                paths.sort();
                if paths.is_empty() {
                    bail!("source {pattern:?}: the pattern matches no file");
                }
                Ok(files(paths))
            }
            SourceSpec::Path(path) => {
                let meta = std::fs::metadata(path)
                    .with_context(|| format!("source {}: no such file or directory", path.display()))?;
                if meta.is_dir() {
                    let mut paths: Vec<PathBuf> = std::fs::read_dir(path)
                        .with_context(|| format!("cannot list source directory {}", path.display()))?
                        .filter_map(|e| e.ok().map(|e| e.path()))
                        .filter(|p| p.is_file() && has_extension(p, &IMAGE_EXTENSIONS))
                        .collect();
                    paths.sort();
                    if paths.is_empty() {
                        bail!(
                            "source directory {} holds no images ({})",
                            path.display(),
                            IMAGE_EXTENSIONS.join(", ")
                        );
                    }
                    Ok(files(paths))
                } else if has_extension(path, &STREAM_EXTENSIONS) {
                    Ok(stream(
                        File::open(path).with_context(|| format!("cannot open {}", path.display()))?,
                    ))
                } else {
                    Ok(files(vec![path.clone()]))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse() {
        assert_eq!(SourceSpec::parse("-").unwrap(), SourceSpec::Mjpeg(None));
        assert_eq!(
            SourceSpec::parse("mjpeg:/tmp/a.mjpeg").unwrap(),
            SourceSpec::Mjpeg(Some("/tmp/a.mjpeg".into()))
        );
        assert_eq!(
            SourceSpec::parse("x/*.jpg").unwrap(),
            SourceSpec::Glob("x/*.jpg".into())
        );
        assert_eq!(
            SourceSpec::parse("samples").unwrap(),
            SourceSpec::Path("samples".into())
        );
        assert_eq!(SourceSpec::parse("v4l2:0").unwrap(), SourceSpec::Camera("0".into()));
        assert_eq!(
            SourceSpec::parse("/dev/video2").unwrap(),
            SourceSpec::Camera("/dev/video2".into())
        );
        assert!(SourceSpec::parse("v4l2:").is_err());
        assert!(SourceSpec::parse("  ").is_err());
        assert!(SourceSpec::parse("x/[.jpg").is_err());
    }

    #[test]
    fn directory_frames_are_decoded_and_corrupt_files_reported() {
        let dir = std::env::temp_dir().join(format!("normgate-source-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        image::RgbImage::from_pixel(4, 3, image::Rgb([1, 2, 3]))
            .save(dir.join("a.png"))
            .unwrap();
        std::fs::write(dir.join("b.jpg"), b"not a jpeg").unwrap();
        std::fs::write(dir.join("notes.txt"), b"ignored").unwrap();
        let items: Vec<Item> = Source::open(&SourceSpec::Path(dir.clone())).unwrap().collect();
        assert_eq!(items.len(), 2);
        assert!(matches!(&items[0], Item::Frame(f) if f.image.dimensions() == (4, 3) && f.index == 0));
        assert!(matches!(&items[1], Item::Corrupt { index: 1, .. }));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A small file that claims a huge frame must not make the device allocate it.
    #[test]
    fn frames_beyond_the_largest_side_are_refused_before_decoding() {
        let png = |width: u32| {
            let mut out = Vec::new();
            image::GrayImage::new(width, 1)
                .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
                .unwrap();
            out
        };
        let widest = png(MAX_FRAME_SIDE);
        assert_eq!(decode_frame(&widest, None).unwrap().dimensions(), (MAX_FRAME_SIDE, 1));
        let too_wide = png(MAX_FRAME_SIDE + 1);
        assert!(too_wide.len() < 1000);
        let err = decode_frame(&too_wide, None).unwrap_err();
        assert!(err.contains("limit"), "{err}");
    }

    #[test]
    fn unusable_sources_are_errors_that_say_why() {
        let dir = std::env::temp_dir().join(format!("normgate-empty-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let err = |spec: SourceSpec| format!("{:#}", Source::open(&spec).err().unwrap());
        assert!(err(SourceSpec::Path(dir.clone())).contains("holds no images"));
        assert!(err(SourceSpec::Path(dir.join("missing"))).contains("no such file"));
        assert!(err(SourceSpec::Glob(format!("{}/*.jpg", dir.display()))).contains("matches no file"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
