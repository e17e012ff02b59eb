//! The status page against a live `normgate run`: its routes and JSON, and
//! the page as headless Chromium renders it (skipped, with the reason
//! printed, where no Chromium is installed; `.ci/run` installs one).

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{command, jpeg, model_flags, sample, scratch};
use image::RgbImage;
use serde_json::Value;

/// Status line, headers and body of a GET.
fn get(port: u16, path: &str) -> (u16, String, Vec<u8>) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a header") + 4;
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status = head[9..12].parse().unwrap();
    (status, head, raw[split..].to_vec())
}

/// A frame with the astronaut's face large and, beside it, at a third of
/// the size: the large one passes, the small one is dropped for its size.
fn two_faces() -> Vec<u8> {
    let face = image::imageops::crop_imm(&sample("astronaut.png"), 96, 0, 256, 320).to_image();
    let small = image::imageops::resize(&face, 85, 106, image::imageops::FilterType::Triangle);
    let mut frame = RgbImage::from_pixel(640, 480, image::Rgb([128, 128, 128]));
    image::imageops::overlay(&mut frame, &face, 40, 60);
    image::imageops::overlay(&mut frame, &small, 420, 180);
    jpeg(&frame)
}

struct Live {
    child: Child,
    stdin: Option<std::process::ChildStdin>,
    port: u16,
}

impl Live {
    /// `normgate run` on stdin, frame by frame, the status page on a free loopback port.
    fn start(dir: &Path) -> Self {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let config = dir.join("normgate.toml");
        let text = "[gate]\nmin_face_px = 50.0\n[gate.policy]\nkind = \"fixed\"\nthreshold = 0.5\n[tracking]\npolicy = \"per_frame\"\n";
        std::fs::write(&config, text).unwrap();
        let mut child = command()
            .args(["run", "--source", "-", "--metrics", &format!("127.0.0.1:{port}")])
            .args(model_flags())
            .args(["--config", &config.display().to_string()])
            .args(["--sink", &dir.join("spool").display().to_string()])
            .args(["--decisions", &dir.join("decisions.jsonl").display().to_string()])
            .stdin(Stdio::piped())
            // Nothing reads its output while it runs: a full pipe would stall it.
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the binary starts");
        let stdin = child.stdin.take();
        Self { child, stdin, port }
    }

    fn feed(&mut self, frames: usize) {
        let stdin = self.stdin.as_mut().unwrap();
        for _ in 0..frames {
            stdin.write_all(&two_faces()).unwrap();
        }
        stdin.flush().unwrap();
    }

    /// `/api/status` once the camera has judged `frames` frames.
    fn status_after(&self, frames: u64) -> Value {
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                let (code, _, body) = get(self.port, "/api/status");
                assert_eq!(code, 200);
                let v: Value = serde_json::from_slice(&body).unwrap();
                if v["summary"]["cameras"][0]["frames"].as_u64() >= Some(frames)
                    && !v["cameras"][0]["crops"].as_array().unwrap().is_empty()
                {
                    return v;
                }
            }
            assert!(Instant::now() < deadline, "the run did not get through {frames} frames");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

#[test]
fn the_status_page_shows_a_live_runs_camera_with_a_passed_and_a_dropped_face() {
    let dir = scratch("status");
    let mut live = Live::start(&dir);
    live.feed(3);
    let v = live.status_after(3);
    let port = live.port;

    // The API: the camera, its latest frame with both faces, recent crops of both kinds.
    let camera = &v["cameras"][0];
    assert_eq!(camera["id"], "cli");
    assert_eq!(camera["threshold"], 0.5);
    let faces = camera["frame"]["faces"].as_array().unwrap();
    let reasons: Vec<&str> = faces.iter().map(|f| f["reason"].as_str().unwrap()).collect();
    assert!(
        reasons.contains(&"passed") && reasons.contains(&"small_face"),
        "{reasons:?}"
    );
    assert_eq!(camera["frame"]["size"], serde_json::json!([640, 480]));
    let crops = camera["crops"].as_array().unwrap();
    assert!(crops.iter().any(|c| c["pass"] == true) && crops.iter().any(|c| c["pass"] == false));
    assert!(!camera["norms"].as_array().unwrap().is_empty());
    assert!(!camera["thresholds"].as_array().unwrap().is_empty());
    assert!(v["summary"]["stage_ms"]["detect"].as_f64() > Some(0.0), "{v}");
    assert!(v["summary"]["uploads"]["queued"].is_u64());

    // The images behind it, and bad paths.
    let (code, head, jpeg) = get(port, "/api/cameras/cli/frame.jpg");
    assert_eq!(code, 200);
    assert!(head.contains("image/jpeg"));
    assert_eq!(image::load_from_memory(&jpeg).unwrap().width(), 640);
    let crop = crops[0]["id"].as_u64().unwrap();
    let (code, _, thumbnail) = get(port, &format!("/api/crops/{crop}.jpg"));
    assert_eq!(code, 200);
    assert!(image::load_from_memory(&thumbnail).is_ok());
    assert_eq!(get(port, "/api/cameras/nobody/frame.jpg").0, 404);
    assert_eq!(get(port, "/api/crops/0.jpg").0, 404);
    assert_eq!(get(port, "/api/crops/../../etc/passwd").0, 404);
    assert_eq!(get(port, "/nothing/here").0, 404);
    let (code, _, metrics) = get(port, "/metrics");
    assert_eq!(code, 200);
    assert!(String::from_utf8_lossy(&metrics).contains("normgate_frames_total{camera=\"cli\"}"));

    // The page, server-rendered.
    let (code, head, html) = get(port, "/");
    assert_eq!(code, 200);
    assert!(head.contains("text/html"));
    let html = String::from_utf8(html).unwrap();
    assert!(
        html.contains("Camera cli") && html.contains("class='face passed'"),
        "{html}"
    );
    assert!(html.contains("class='face small_face'"), "{html}");
    assert!(html.contains("Fixed threshold dropping 10 %: "), "{html}");

    // The page as a browser renders it.
    match chromium() {
        None => {
            eprintln!("skipped: no headless Chromium (chromium-headless-shell, chromium; or set NORMGATE_CHROMIUM)")
        }
        Some(browser) => {
            let url = format!("http://127.0.0.1:{port}/");
            let dom = browse(&browser, &["--dump-dom", &url]);
            assert!(dom.contains("Camera cli"), "{dom}");
            assert!(
                dom.contains("class=\"face passed\"") && dom.contains("class=\"face small_face\""),
                "{dom}"
            );
            let shot = dir.join("status.png");
            browse(
                &browser,
                &[
                    &format!("--screenshot={}", shot.display()),
                    "--window-size=1280,1100",
                    &url,
                ],
            );
            let png = image::open(&shot).unwrap().to_rgb8();
            // The passed crop's green border and the dropped one's red border are drawn.
            let count = |c: [u8; 3]| png.pixels().filter(|p| p.0 == c).count();
            assert!(count([0x2e, 0xa0, 0x43]) > 100, "no green in the screenshot");
            assert!(count([0xd6, 0x45, 0x41]) > 100, "no red in the screenshot");
            if let Some(keep) = std::env::var_os("NORMGATE_SCREENSHOT") {
                std::fs::copy(&shot, keep).unwrap();
            }
        }
    }
    drop(live);
    std::fs::remove_dir_all(dir).unwrap();
}

/// The headless Chromium to render with, if any.
fn chromium() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("NORMGATE_CHROMIUM") {
        return Some(path.into());
    }
    ["chromium-headless-shell", "chromium", "chromium-browser"]
        .iter()
        .find_map(|name| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|p| p.join(name))
                    .find(|p| p.is_file())
            })
        })
}

/// Runs the browser headless on `args`; its stdout. A browser still busy
/// after a minute is killed and fails the test rather than hanging the run.
fn browse(browser: &Path, args: &[&str]) -> String {
    let mut child = std::process::Command::new(browser)
        // `--timeout`: stop loading after 10 s and render what is there
        // (a subresource was seen to stall a load for minutes, cause not yet found).
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--timeout=10000",
        ])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the browser starts");
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        stdout.read_to_string(&mut text).map(|_| text)
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the browser did not finish {args:?} in 60 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "the browser failed on {args:?}");
    reader.join().unwrap().unwrap()
}
