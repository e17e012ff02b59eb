//! Splits a stream of concatenated JPEG images (MJPEG as written by
//! `ffmpeg -f mjpeg`, `gst-launch ... ! multifilesink` or `cat *.jpg`) into
//! frames by walking the JPEG marker segments, so that an embedded EXIF
//! thumbnail (a JPEG inside an APP1 segment) does not end a frame early.
//! Damage is reported per frame and the splitter resynchronises on the next
//! start-of-image marker.

use std::io::{BufRead, ErrorKind};

/// Largest accepted frame; a longer one is garbage (or a lost end marker).
pub const MAX_FRAME_BYTES: usize = 64 << 20;

/// Why a frame could not be cut out of the stream.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StreamError {
    /// The stream ended inside a frame.
    #[error("stream ended inside a JPEG frame ({0} bytes read)")]
    Truncated(usize),
    /// A new start-of-image marker appeared before the frame ended.
    #[error("frame interrupted by the next frame's start marker after {0} bytes")]
    Interrupted(usize),
    /// A byte that should start a marker does not.
    #[error("no JPEG marker where one must be, after {0} bytes")]
    BadMarker(usize),
    /// No end marker within `MAX_FRAME_BYTES`.
    #[error("frame longer than {MAX_FRAME_BYTES} bytes without an end marker")]
    TooLarge,
    /// Bytes between frames that are no JPEG.
    #[error("{0} bytes of garbage before the next frame")]
    Garbage(usize),
    /// The underlying reader failed.
    #[error("read error: {0}")]
    Io(String),
}

/// Iterator over the frames of a JPEG stream.
pub struct JpegFrames<R> {
    reader: R,
    /// The previous frame was cut short by this frame's start marker, already consumed.
    started: bool,
    done: bool,
}

impl<R: BufRead> JpegFrames<R> {
    /// Frames from `reader`.
    pub fn new(reader: R) -> Self {
        Self {
            reader,
            started: false,
            done: false,
        }
    }

    fn byte(&mut self) -> Result<Option<u8>, StreamError> {
        loop {
            let buf = match self.reader.fill_buf() {
                Ok(buf) => buf,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(StreamError::Io(e.to_string())),
            };
            let Some(&b) = buf.first() else { return Ok(None) };
            self.reader.consume(1);
            return Ok(Some(b));
        }
    }

    /// Skips to the next start-of-image marker; returns the number of bytes skipped,
    /// or `None` at the end of the stream.
    fn seek_start(&mut self) -> Result<Option<usize>, StreamError> {
        let mut skipped = 0;
        let mut last = 0u8;
        while let Some(b) = self.byte()? {
            if last == 0xFF && b == 0xD8 {
                return Ok(Some(skipped - 1));
            }
            skipped += 1;
            last = b;
        }
        Ok(None)
    }

    /// Reads one frame after its start marker; `frame` already holds `FF D8`.
    fn read_frame(&mut self, frame: &mut Vec<u8>) -> Result<(), StreamError> {
        let need = |this: &mut Self, frame: &mut Vec<u8>| -> Result<u8, StreamError> {
            let b = this.byte()?.ok_or(StreamError::Truncated(frame.len()))?;
            frame.push(b);
            if frame.len() > MAX_FRAME_BYTES {
                return Err(StreamError::TooLarge);
            }
            Ok(b)
        };
        // Position: expecting a marker.
        let mut code = None;
        loop {
            let marker = match code.take() {
                Some(c) => c,
                None => {
                    if need(self, frame)? != 0xFF {
                        return Err(StreamError::BadMarker(frame.len() - 1));
                    }
                    let mut c = need(self, frame)?;
                    while c == 0xFF {
                        c = need(self, frame)?;
                    }
                    c
                }
            };
            match marker {
                0xD9 => return Ok(()),
                0xD8 => {
                    self.started = true;
                    return Err(StreamError::Interrupted(frame.len() - 2));
                }
                0x01 | 0xD0..=0xD7 => {}
                _ => {
                    let len = (usize::from(need(self, frame)?) << 8) | usize::from(need(self, frame)?);
                    for _ in 2..len.max(2) {
                        need(self, frame)?;
                    }
                    if marker == 0xDA {
                        // Entropy-coded data: runs until a marker other than stuffing or restart.
                        loop {
                            if need(self, frame)? != 0xFF {
                                continue;
                            }
                            let mut next = need(self, frame)?;
                            while next == 0xFF {
                                next = need(self, frame)?;
                            }
                            if next != 0x00 && !(0xD0..=0xD7).contains(&next) {
                                code = Some(next);
                                break;
                            }
                        }
                    }
                }
            }
        }
    }
}

impl<R: BufRead> Iterator for JpegFrames<R> {
    type Item = Result<Vec<u8>, StreamError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        if !std::mem::take(&mut self.started) {
            match self.seek_start() {
                Ok(Some(0)) => {}
                Ok(Some(skipped)) => {
                    // Report the garbage; the frame after it is read on the next call.
                    self.started = true;
                    return Some(Err(StreamError::Garbage(skipped)));
                }
                Ok(None) => {
                    self.done = true;
                    return None;
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
        let mut frame = Vec::with_capacity(64 << 10);
        frame.extend_from_slice(&[0xFF, 0xD8]);
        match self.read_frame(&mut frame) {
            Ok(()) => Some(Ok(frame)),
            Err(e) => {
                if matches!(e, StreamError::Truncated(_) | StreamError::Io(_)) {
                    self.done = true;
                }
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A textured test JPEG, so that most of its bytes are entropy-coded data.
    fn jpeg(width: u32, shade: u8) -> Vec<u8> {
        let img = image::RgbImage::from_fn(width, width, |x, y| {
            image::Rgb([shade ^ (x * 7 + y * 13) as u8, (x * y) as u8, (x + y * 3) as u8])
        });
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
            .encode_image(&img)
            .unwrap();
        out
    }

    fn split(bytes: &[u8]) -> Vec<Result<Vec<u8>, StreamError>> {
        JpegFrames::new(bytes).collect()
    }

    #[test]
    fn splits_concatenated_jpegs_exactly() {
        let (a, b) = (jpeg(16, 10), jpeg(24, 200));
        let frames = split(&[a.clone(), b.clone()].concat());
        assert_eq!(frames, vec![Ok(a), Ok(b)]);
    }

    #[test]
    fn an_embedded_thumbnail_does_not_end_the_frame() {
        // An APP1 segment whose payload is a complete JPEG, inserted after SOI.
        let (thumb, main) = (jpeg(8, 0), jpeg(16, 255));
        let len = (thumb.len() + 2) as u16;
        let mut with_thumb = vec![0xFF, 0xD8, 0xFF, 0xE1, (len >> 8) as u8, len as u8];
        with_thumb.extend_from_slice(&thumb);
        with_thumb.extend_from_slice(&main[2..]);
        let frames = split(&with_thumb);
        assert_eq!(frames, vec![Ok(with_thumb.clone())]);
        assert!(image::load_from_memory(&with_thumb).is_ok());
    }

    #[test]
    fn damage_is_reported_and_the_stream_resynchronises() {
        let (a, b) = (jpeg(64, 10), jpeg(64, 90));
        let cut = &a[..a.len() / 2];
        let stream = [b"junk".to_vec(), cut.to_vec(), b.clone(), a[..40].to_vec()].concat();
        let frames = split(&stream);
        assert_eq!(frames.len(), 4, "{frames:?}");
        let header_end = a.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap();
        assert!(
            a.len() / 2 > header_end,
            "the cut must fall into the entropy-coded data"
        );
        assert_eq!(frames[0], Err(StreamError::Garbage(4)));
        assert!(matches!(frames[1], Err(StreamError::Interrupted(_))));
        assert_eq!(frames[2], Ok(b));
        assert!(matches!(frames[3], Err(StreamError::Truncated(_))));
    }

    #[test]
    fn a_broken_marker_is_reported_and_the_next_frame_read() {
        let (a, b) = (jpeg(16, 10), jpeg(16, 90));
        // Break the first segment's marker byte right after SOI.
        let mut broken = a.clone();
        broken[2] = 0x00;
        let frames = split(&[broken, b.clone()].concat());
        assert_eq!(frames[0], Err(StreamError::BadMarker(2)));
        assert_eq!(frames.last(), Some(&Ok(b)));
    }

    #[test]
    fn empty_stream_has_no_frames() {
        assert!(split(&[]).is_empty());
    }
}
