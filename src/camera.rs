//! A V4L2 camera as a frame source. The device is opened by path or index,
//! MJPEG is preferred and YUYV taken when the camera offers no MJPEG, and a
//! read waits at most `timeout`. When the device errors or disappears, the
//! capture loop reports it and reopens it with exponential backoff until it
//! returns, so a replugged camera resumes without a restart.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use image::RgbImage;
use linuxvideo::format::{PixFormat, PixelFormat};
use linuxvideo::stream::ReadStream;
use linuxvideo::{BufType, Device, Fract};
use rustix::event::{poll, PollFd, PollFlags, Timespec};
use serde::{Deserialize, Serialize};

use crate::source::{decode_frame, Frame, Item};

/// Capture settings of a camera (`[camera.capture]`).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CaptureSettings {
    /// Requested frame width; the driver may pick the nearest it supports.
    pub width: u32,
    /// Requested frame height.
    pub height: u32,
    /// Requested frames per second.
    pub fps: u32,
    /// Longest wait for one frame before the device counts as failed, seconds.
    pub timeout_s: f32,
    /// Longest pause between two attempts to reopen a failed device, seconds.
    pub max_backoff_s: f32,
}

impl Default for CaptureSettings {
    fn default() -> Self {
        Self {
            width: 640,
            height: 480,
            fps: 15,
            timeout_s: 2.0,
            max_backoff_s: 30.0,
        }
    }
}

impl CaptureSettings {
    /// Checks value ranges.
    pub fn validate(&self) -> Result<()> {
        if self.width == 0 || self.height == 0 || self.fps == 0 {
            bail!("capture width, height and fps must be at least 1");
        }
        if !(self.timeout_s > 0.0 && self.max_backoff_s > 0.0) {
            bail!("capture timeout_s and max_backoff_s must be positive");
        }
        Ok(())
    }
}

/// Pixel formats this capture can convert, best first.
fn choose_format(offered: &[PixelFormat]) -> Option<PixelFormat> {
    [PixelFormat::MJPG, PixelFormat::YUYV]
        .into_iter()
        .find(|f| offered.contains(f))
}

/// Converts packed YUYV 4:2:2 (BT.601, limited range) to RGB8. Rows are
/// `stride` bytes apart (drivers may pad them); 0 means packed rows.
pub fn yuyv_to_rgb(data: &[u8], width: u32, height: u32, stride: u32) -> Result<RgbImage> {
    let row = width as usize * 2;
    let stride = (stride as usize).max(row);
    let needed = (height as usize).saturating_sub(1) * stride + row;
    if height == 0 || data.len() < needed {
        bail!("YUYV frame has {} bytes, {width}x{height} needs {needed}", data.len());
    }
    let mut rgb = Vec::with_capacity(width as usize * height as usize * 3);
    let rows = data.chunks(stride).take(height as usize);
    for quad in rows.flat_map(|r| r[..row].chunks_exact(4)) {
        let (y0, u, y1, v) = (
            quad[0] as f32,
            quad[1] as f32 - 128.0,
            quad[2] as f32,
            quad[3] as f32 - 128.0,
        );
        for y in [y0, y1] {
            let c = 1.164 * (y - 16.0);
            rgb.push((c + 1.596 * v).round().clamp(0.0, 255.0) as u8);
            rgb.push((c - 0.392 * u - 0.813 * v).round().clamp(0.0, 255.0) as u8);
            rgb.push((c + 2.017 * u).round().clamp(0.0, 255.0) as u8);
        }
    }
    Ok(RgbImage::from_raw(width, height, rgb).expect("buffer of the frame's size"))
}

/// An open, streaming camera.
struct OpenCamera {
    stream: ReadStream,
    format: PixelFormat,
    width: u32,
    height: u32,
    /// Bytes from one row's start to the next's.
    stride: u32,
    timeout: Duration,
}

fn device_path(device: &str) -> String {
    match device.parse::<usize>() {
        Ok(index) => format!("/dev/video{index}"),
        Err(_) => device.to_string(),
    }
}

fn open(device: &str, settings: &CaptureSettings) -> Result<OpenCamera> {
    let path = device_path(device);
    let dev = Device::open(&path).with_context(|| format!("cannot open camera {path}"))?;
    let offered = dev
        .formats(BufType::VIDEO_CAPTURE)
        .map(|desc| desc.map(|d| d.pixel_format()))
        .collect::<std::io::Result<Vec<_>>>()
        .with_context(|| format!("camera {path}: cannot list its pixel formats"))?;
    let Some(wanted) = choose_format(&offered) else {
        bail!("camera {path} offers neither MJPEG nor YUYV (it offers {offered:?})");
    };
    let capture = dev
        .video_capture(PixFormat::new(settings.width, settings.height, wanted))
        .with_context(|| {
            format!(
                "camera {path}: cannot set {wanted} at {}x{}",
                settings.width, settings.height
            )
        })?;
    let format = capture.format();
    let (pixel_format, width, height, stride) = (
        format.pixel_format(),
        format.width(),
        format.height(),
        format.bytes_per_line(),
    );
    if pixel_format != wanted {
        bail!("camera {path} refused pixel format {wanted}");
    }
    // Not every driver supports frame-rate control; the camera then runs at its own rate.
    if let Err(e) = capture.set_frame_interval(Fract::new(1, settings.fps)) {
        log::warn!("camera {path}: cannot set {} fps: {e}", settings.fps);
    }
    let stream = capture
        .into_stream()
        .with_context(|| format!("camera {path}: cannot start streaming"))?;
    log::info!("camera {path}: {width}x{height} {wanted} at up to {} fps", settings.fps);
    Ok(OpenCamera {
        stream,
        format: wanted,
        width,
        height,
        stride,
        timeout: Duration::from_secs_f32(settings.timeout_s),
    })
}

impl OpenCamera {
    /// The next frame's pixels; `Ok(Err(_))` is a frame that did not decode.
    /// A frame that does not arrive within the timeout is a device failure.
    fn read(&mut self) -> Result<Result<RgbImage, String>> {
        let timeout = Timespec::try_from(self.timeout).expect("a timeout of seconds");
        let mut fds = [PollFd::new(&self.stream, PollFlags::IN)];
        if poll(&mut fds, Some(&timeout)).map_err(|e| anyhow!("poll failed: {e}"))? == 0 {
            bail!("no frame within {:.1} s", self.timeout.as_secs_f32());
        }
        let (format, width, height, stride) = (self.format, self.width, self.height, self.stride);
        let decoded = self
            .stream
            .dequeue(|buffer| {
                Ok(if buffer.is_error() {
                    Err("the driver flagged the frame as corrupt".to_string())
                } else if format == PixelFormat::MJPG {
                    decode_frame(&buffer, Some(image::ImageFormat::Jpeg))
                } else {
                    yuyv_to_rgb(&buffer, width, height, stride).map_err(|e| e.to_string())
                })
            })
            .map_err(|e| anyhow!("read failed: {e}"))?;
        Ok(decoded)
    }
}

/// Captures from `device` until `stop` is set, handing every event to `emit`;
/// `emit` returning false ends the capture too.
pub fn capture(device: &str, settings: &CaptureSettings, stop: &AtomicBool, mut emit: impl FnMut(Item) -> bool) {
    let mut index = 0u64;
    let mut backoff = Duration::from_millis(250);
    let max_backoff = Duration::from_secs_f32(settings.max_backoff_s);
    let mut opened_before = false;
    while !stop.load(Ordering::Relaxed) {
        let error = match open(device, settings) {
            Ok(mut camera) => {
                if opened_before && !emit(Item::Reconnected) {
                    return;
                }
                opened_before = true;
                backoff = Duration::from_millis(250);
                loop {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    match camera.read() {
                        Ok(decoded) => {
                            let name = format!("{device}#{index}");
                            let item = match decoded {
                                Ok(image) => Item::Frame(Frame { index, name, image }),
                                Err(error) => Item::Corrupt { index, name, error },
                            };
                            index += 1;
                            if !emit(item) {
                                return;
                            }
                        }
                        Err(e) => break e,
                    }
                }
            }
            Err(e) => e,
        };
        log::warn!(
            "camera {device}: {error:#}; reopening in {:.1} s",
            backoff.as_secs_f32()
        );
        if !emit(Item::Lost {
            error: format!("{error:#}"),
        }) {
            return;
        }
        sleep_unless(stop, backoff);
        backoff = (backoff * 2).min(max_backoff);
    }
}

/// Sleeps for `duration`, waking early when `stop` is set.
pub fn sleep_unless(stop: &AtomicBool, duration: Duration) {
    let end = Instant::now() + duration;
    while !stop.load(Ordering::Relaxed) {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mjpeg_is_preferred_and_yuyv_is_the_fallback() {
        let f = |s: &[u8; 4]| PixelFormat::from_fourcc(*s);
        assert_eq!(choose_format(&[f(b"YUYV"), f(b"MJPG")]), Some(f(b"MJPG")));
        assert_eq!(choose_format(&[f(b"NV12"), f(b"YUYV")]), Some(f(b"YUYV")));
        assert_eq!(choose_format(&[f(b"NV12")]), None);
    }

    #[test]
    fn yuyv_grey_white_and_red_convert() {
        // Two pixels per quad: (Y0 U Y1 V).
        let grey = yuyv_to_rgb(&[126, 128, 126, 128], 2, 1, 0).unwrap();
        assert!(grey.pixels().all(|p| p.0.iter().all(|&c| (c as i32 - 128).abs() <= 1)));
        let white = yuyv_to_rgb(&[235, 128, 235, 128], 2, 1, 4).unwrap();
        assert!(white.pixels().all(|p| p.0 == [255, 255, 255]));
        // BT.601 red: Y 81, U 90, V 240.
        let red = yuyv_to_rgb(&[81, 90, 81, 240], 2, 1, 0).unwrap();
        let p = red.get_pixel(0, 0).0;
        assert!(p[0] > 250 && p[1] < 5 && p[2] < 5, "{p:?}");
        assert!(yuyv_to_rgb(&[0; 6], 2, 2, 0).is_err());
    }

    #[test]
    fn padded_yuyv_rows_skip_their_padding() {
        // Two rows of one white quad each, padded to 6 bytes with black-ish bytes.
        let data = [235, 128, 235, 128, 0, 0, 16, 128, 16, 128];
        let image = yuyv_to_rgb(&data, 2, 2, 6).unwrap();
        assert_eq!(image.get_pixel(1, 0).0, [255, 255, 255]);
        assert_eq!(image.get_pixel(0, 1).0, [0, 0, 0]);
        assert!(yuyv_to_rgb(&data[..9], 2, 2, 6).is_err());
    }

    /// A device node that is not a camera is a failure to report and retry, not a crash.
    #[test]
    fn a_file_that_is_no_v4l2_device_is_reported_as_such() {
        let stop = AtomicBool::new(false);
        let mut error = String::new();
        capture("/dev/null", &CaptureSettings::default(), &stop, |item| {
            if let Item::Lost { error: e } = item {
                error = e;
            }
            stop.store(true, Ordering::Relaxed);
            true
        });
        assert!(error.contains("cannot open camera /dev/null"), "{error}");
    }

    #[test]
    fn a_missing_camera_is_reported_and_retried_until_stopped() {
        let stop = AtomicBool::new(false);
        let mut lost = 0;
        capture(
            "/dev/normgate-no-such-camera",
            &CaptureSettings::default(),
            &stop,
            |item| {
                assert!(matches!(item, Item::Lost { .. }), "{item:?}");
                lost += 1;
                if lost == 2 {
                    stop.store(true, Ordering::Relaxed);
                }
                true
            },
        );
        assert_eq!(lost, 2);
    }
}
