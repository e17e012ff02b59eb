//! `normgate run` end to end against a real HTTP server on loopback: what
//! is uploaded, what is dropped, what survives a server outage and a
//! SIGKILL, and how signals are handled. Runs on the project's models when
//! it ships them, else on the teachers in ../shared (skipped without them).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::tls::{Ca, Policy, TlsServer};
use common::{command, jpeg, model_flags, sample, scratch};
use image::imageops::{blur, flip_horizontal, resize, FilterType};
use image::RgbImage;
use serde_json::Value;

/// One request the test server received.
#[derive(Debug, Clone)]
struct Received {
    key: String,
    authorization: Option<String>,
    body: Vec<u8>,
}

/// A loopback HTTP server that records uploads; `hold` makes it keep
/// requests unanswered (a server that hangs), `status` is what it answers.
struct Server {
    url: String,
    received: Arc<Mutex<Vec<Received>>>,
    hold: Arc<AtomicBool>,
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start_on(addr: &str) -> Self {
        let server = Arc::new(tiny_http::Server::http(addr).unwrap());
        let url = format!("http://{}/crops", server.server_addr().to_ip().unwrap());
        let received = Arc::new(Mutex::new(Vec::new()));
        let hold = Arc::new(AtomicBool::new(false));
        let thread = {
            let (server, received, hold) = (server.clone(), received.clone(), hold.clone());
            std::thread::spawn(move || {
                for mut request in server.incoming_requests() {
                    let header = |name: &'static str| {
                        request
                            .headers()
                            .iter()
                            .find(|h| h.field.equiv(name))
                            .map(|h| h.value.to_string())
                    };
                    let key = header("Idempotency-Key").unwrap_or_default();
                    let authorization = header("Authorization");
                    let mut body = Vec::new();
                    request.as_reader().read_to_end(&mut body).unwrap();
                    received.lock().unwrap().push(Received {
                        key,
                        authorization,
                        body,
                    });
                    if hold.load(Ordering::Relaxed) {
                        // Never answer: the client is killed while waiting.
                        std::mem::forget(request);
                        continue;
                    }
                    let _ = request.respond(tiny_http::Response::from_string("stored"));
                }
            })
        };
        Self {
            url,
            received,
            hold,
            server,
            thread: Some(thread),
        }
    }

    fn start() -> Self {
        Self::start_on("127.0.0.1:0")
    }

    fn keys(&self) -> Vec<String> {
        self.received.lock().unwrap().iter().map(|r| r.key.clone()).collect()
    }

    /// The keys the server stored, each once (the server deduplicates by key).
    fn distinct_keys(&self) -> BTreeSet<String> {
        self.keys().into_iter().collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A free loopback port (bound and released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Degraded versions of a frame, from mild to severe, named.
fn degraded(frame: &RgbImage) -> Vec<(&'static str, RgbImage)> {
    let (w, h) = frame.dimensions();
    let mut dark = frame.clone();
    dark.pixels_mut()
        .for_each(|p| p.0 = p.0.map(|c| (c as f32 * 0.1) as u8));
    let mut noisy = frame.clone();
    let mut state = 12345u32;
    noisy.pixels_mut().for_each(|p| {
        p.0 = p.0.map(|c| {
            // Uniform noise of standard deviation about 100.
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let u = (state >> 8) as f32 / (1u32 << 24) as f32 - 0.5;
            (c as f32 + u * 350.0).clamp(0.0, 255.0) as u8
        })
    });
    // The astronaut's eyes are a fifth of the way down the frame: cover what is below.
    let mut occluded = frame.clone();
    for y in h / 5..h {
        for x in 0..w {
            occluded.put_pixel(x, y, image::Rgb([20, 20, 20]));
        }
    }
    let tiny = resize(frame, w / 16, h / 16, FilterType::Triangle);
    vec![
        ("blur sigma 8", blur(frame, 8.0)),
        ("downscaled 16x", resize(&tiny, w, h, FilterType::Triangle)),
        ("dark x0.1", dark),
        ("heavy noise", noisy),
        ("lower face occluded", occluded),
    ]
}

/// The frames of the main test stream: the sharp face, its degradations, and the non-faces.
fn test_stream() -> (Vec<u8>, Vec<String>) {
    let face = sample("astronaut.png");
    let mut frames = vec![("sharp face".to_string(), face.clone())];
    frames.extend(degraded(&face).into_iter().map(|(n, f)| (n.to_string(), f)));
    for name in normgate::config::FACE_FREE_SAMPLES {
        frames.push((format!("non-face {name}"), sample(name)));
    }
    let names = frames.iter().map(|(n, _)| n.clone()).collect();
    (frames.iter().flat_map(|(_, f)| jpeg(f)).collect(), names)
}

struct Run {
    dir: PathBuf,
    args: Vec<String>,
}

impl Run {
    /// A run of the shipped models reading stdin into `dir`, uploading to `url`.
    fn new(dir: &Path, url: &str, config: &str) -> Self {
        let config_file = dir.join("normgate.toml");
        std::fs::write(&config_file, config).unwrap();
        let mut args: Vec<String> = ["run", "--json", "--source", "-"].map(String::from).to_vec();
        args.extend(model_flags());
        for (flag, value) in [
            ("--config", config_file.display().to_string()),
            ("--sink", url.to_string()),
            ("--queue", dir.join("queue").display().to_string()),
            ("--decisions", dir.join("decisions.jsonl").display().to_string()),
        ] {
            args.extend([flag.to_string(), value]);
        }
        Self {
            dir: dir.to_path_buf(),
            args,
        }
    }

    fn spawn(&self, metrics: &str) -> (Child, ChildStdin) {
        let mut child = command()
            .args(&self.args)
            .args(["--metrics", metrics])
            .env("NORMGATE_TOKEN", "test-token")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary starts");
        let stdin = child.stdin.take().unwrap();
        (child, stdin)
    }

    fn run(&self, stream: &[u8]) -> Value {
        let (child, mut stdin) = self.spawn("off");
        stdin.write_all(stream).unwrap();
        drop(stdin);
        summary(child.wait_with_output().unwrap())
    }

    fn decisions(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.join("decisions.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn passed_keys(&self) -> BTreeSet<String> {
        self.decisions()
            .iter()
            .filter(|d| d["pass"] == true)
            .map(|d| d["key"].as_str().unwrap().to_string())
            .collect()
    }
}

fn summary(out: Output) -> Value {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}: {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {stderr}"))
}

const FAST_RETRY: &str = "[sink.upload]\nurl = \"http://unused\"\nretry_initial_s = 0.1\nretry_max_s = 0.5\n";

/// The tests of the gate's and the queue's work per crop send every passing
/// crop; the tracking tests below send one per track.
const PER_FRAME: &str = "[tracking]\npolicy = \"per_frame\"\n";

/// The delivery tests pass every face: what they test is the queue, not
/// where the model's recommended threshold falls on the sample face.
fn fast_retry_every_face() -> String {
    format!("{FAST_RETRY}{PER_FRAME}[gate.policy]\nkind = \"fixed\"\nthreshold = 0.5\n")
}

#[test]
fn the_sharp_face_is_uploaded_and_degraded_faces_and_non_faces_are_not() {
    let dir = scratch("upload");
    let server = Server::start();
    let audit = dir.join("audit");
    let config = format!(
        "{FAST_RETRY}{PER_FRAME}[audit]\ndir = \"{}\"\nsample_rate = 1.0\n",
        audit.display()
    );
    let run = Run::new(&dir, &server.url, &config);
    let (stream, names) = test_stream();
    let summary = run.run(&stream);
    let decisions = run.decisions();
    let mut passed_frames = BTreeMap::new();
    for d in &decisions {
        eprintln!(
            "{:<28} face {} score {:.2} norm {:6.2} threshold {:.2} {}",
            names[d["frame"].as_u64().unwrap() as usize],
            d["face"],
            d["detector_score"].as_f64().unwrap(),
            d["norm"].as_f64().unwrap(),
            d["threshold"].as_f64().unwrap(),
            d["reason"]
        );
        if d["pass"] == true {
            *passed_frames.entry(d["frame"].as_u64().unwrap()).or_insert(0) += 1;
        }
    }
    assert_eq!(passed_frames, BTreeMap::from([(0, 1)]), "only the sharp face passes");

    // The server holds exactly the passing crop, as a JPEG, with the token.
    let received = server.received.lock().unwrap().clone();
    assert_eq!(server.distinct_keys(), run.passed_keys());
    assert_eq!(received.len(), 1, "one request for one crop");
    assert_eq!(received[0].authorization.as_deref(), Some("Bearer test-token"));
    assert!(received[0].body.windows(2).any(|w| w == [0xff, 0xd8]), "a JPEG part");

    // The summary (the metrics' counters) agrees with the decision log.
    let camera = &summary["cameras"][0];
    assert_eq!(camera["frames"], names.len() as u64);
    assert_eq!(camera["faces"], decisions.len() as u64);
    assert_eq!(camera["passed"], 1);
    let mut dropped: BTreeMap<String, u64> = BTreeMap::new();
    for d in decisions.iter().filter(|d| d["pass"] == false) {
        *dropped.entry(d["reason"].as_str().unwrap().into()).or_default() += 1;
    }
    let reported: BTreeMap<String, u64> = serde_json::from_value(camera["dropped"].clone()).unwrap();
    assert_eq!(reported, dropped);
    assert_eq!(summary["uploads"]["delivered"], 1);
    assert_eq!(summary["uploads"]["queued"], 0);
    // The shipped refiner re-read the landmarks of the faces that were aligned.
    assert!(summary["stage_ms"]["refine"].as_f64().unwrap() > 0.0, "{summary}");

    // Every dropped face was sampled into the audit folder (rate 1), with its record.
    let audited = std::fs::read_dir(&audit)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "json"))
        .count();
    assert_eq!(audited as u64, dropped.values().sum::<u64>());
    std::fs::remove_dir_all(dir).unwrap();
}

/// Several distinct passing frames (JPEG each): the sharp face, mirrored and brightened.
fn sharp_frames(n: usize) -> Vec<Vec<u8>> {
    // The astronaut's face with some context and no other face-like region
    // (a badge below and an object to the right score 0.6-0.7 with the
    // shipped detector), so each frame yields exactly one crop.
    let face = image::imageops::crop_imm(&sample("astronaut.png"), 96, 0, 256, 320).to_image();
    (0..n)
        .map(|i| {
            let mut frame = if i % 2 == 1 {
                flip_horizontal(&face)
            } else {
                face.clone()
            };
            // A one-pixel brightness step per frame makes every crop's bytes differ.
            frame
                .pixels_mut()
                .for_each(|p| p.0 = p.0.map(|c| c.saturating_add((i / 2) as u8)));
            jpeg(&frame)
        })
        .collect()
}

fn sharp_variants(n: usize) -> Vec<u8> {
    sharp_frames(n).concat()
}

/// The metrics text, or empty while the endpoint is not up yet.
fn scrape(addr: &str) -> String {
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
        return String::new();
    };
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    text
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
}

#[test]
fn a_server_outage_loses_nothing_and_duplicates_nothing() {
    let dir = scratch("outage");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/crops");
    let run = Run::new(&dir, &url, &fast_retry_every_face());
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let (child, mut stdin) = run.spawn(&metrics_addr);
    stdin.write_all(&sharp_variants(4)).unwrap();
    drop(stdin);
    // While the server is down, crops wait in the queue and attempts fail.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut text;
    loop {
        std::thread::sleep(Duration::from_millis(200));
        text = scrape(&metrics_addr);
        let depth = metric(&text, "normgate_queue_depth").unwrap_or(0.0);
        if depth >= 4.0 && text.contains("outcome=\"failure\"") {
            break;
        }
        assert!(Instant::now() < deadline, "crops never queued: {text}");
    }
    assert!(run.dir.join("queue").read_dir().unwrap().count() >= 4);
    let server = Server::start_on(&format!("127.0.0.1:{port}"));
    let summary = summary(child.wait_with_output().unwrap());
    assert_eq!(run.passed_keys().len(), 4);
    assert_eq!(server.distinct_keys(), run.passed_keys(), "every accepted crop arrived");
    assert_eq!(server.keys().len(), 4, "and each once");
    assert_eq!(summary["uploads"]["delivered"], 4);
    assert!(summary["uploads"]["failed_attempts"].as_u64().unwrap() > 0);
    assert!(summary["uploads"]["retries"].as_u64().unwrap() > 0);
    assert_eq!(summary["uploads"]["queued"], 0);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_sigkill_mid_upload_loses_nothing_after_a_restart() {
    let dir = scratch("kill");
    let server = Server::start();
    server.hold.store(true, Ordering::Relaxed);
    let run = Run::new(&dir, &server.url, &fast_retry_every_face());
    let (mut child, mut stdin) = run.spawn("off");
    stdin.write_all(&sharp_variants(3)).unwrap();
    // Keep stdin open: the process waits for more frames while its upload hangs.
    let deadline = Instant::now() + Duration::from_secs(120);
    while server.keys().is_empty() || run.passed_keys().len() < 3 {
        std::thread::sleep(Duration::from_millis(100));
        assert!(Instant::now() < deadline, "no upload started");
    }
    child.kill().unwrap();
    child.wait().unwrap();
    drop(stdin);
    let accepted = run.passed_keys();
    assert_eq!(accepted.len(), 3);

    // Restart on the same queue with a source without faces: the queue drains.
    server.hold.store(false, Ordering::Relaxed);
    let summary = run.run(&jpeg(&sample("brick.png")));
    assert_eq!(server.distinct_keys(), accepted, "every accepted crop arrived");
    assert_eq!(summary["uploads"]["queued"], 0);
    std::fs::remove_dir_all(dir).unwrap();
}

fn wait_for_decisions(run: &Run, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while run.decisions().len() < n {
        std::thread::sleep(Duration::from_millis(100));
        assert!(Instant::now() < deadline, "only {} decisions", run.decisions().len());
    }
}

#[test]
fn sighup_reloads_the_threshold_and_sigterm_exits_cleanly() {
    let dir = scratch("signals");
    let server = Server::start();
    let strict = format!("{FAST_RETRY}{PER_FRAME}[gate.policy]\nkind = \"fixed\"\nthreshold = 1000.0\n");
    let run = Run::new(&dir, &server.url, &strict);
    let (child, mut stdin) = run.spawn("off");
    let frames = sharp_frames(2);
    stdin.write_all(&frames[0]).unwrap();
    wait_for_decisions(&run, 1);
    assert_eq!(run.decisions()[0]["reason"], "low_norm");

    std::fs::write(
        dir.join("normgate.toml"),
        format!("{FAST_RETRY}{PER_FRAME}[gate.policy]\nkind = \"fixed\"\nthreshold = 0.5\n"),
    )
    .unwrap();
    let pid = child.id().to_string();
    assert!(command_kill("-HUP", &pid));
    // The reload is picked up between frames; give the main loop a moment.
    std::thread::sleep(Duration::from_millis(500));
    stdin.write_all(&frames[1]).unwrap();
    wait_for_decisions(&run, 2);
    assert_eq!(run.decisions()[1]["pass"], true, "{:?}", run.decisions()[1]);

    assert!(command_kill("-TERM", &pid));
    let summary = summary(child.wait_with_output().unwrap());
    assert_eq!(summary["interrupted"], true);
    drop(stdin);
    std::fs::remove_dir_all(dir).unwrap();
}

fn command_kill(signal: &str, pid: &str) -> bool {
    std::process::Command::new("kill")
        .args([signal, pid])
        .status()
        .unwrap()
        .success()
}

/// A person walking across a grey frame: the astronaut's face (as in
/// [`sharp_frames`]) shifted 8 px a frame, `n` frames from `start`.
fn walking(start: usize, n: usize) -> Vec<Vec<u8>> {
    let face = image::imageops::crop_imm(&sample("astronaut.png"), 96, 0, 256, 320).to_image();
    (start..start + n)
        .map(|i| {
            let mut frame = RgbImage::from_pixel(480, 360, image::Rgb([128, 128, 128]));
            image::imageops::overlay(&mut frame, &face, 20 + 8 * i as i64, 20);
            jpeg(&frame)
        })
        .collect()
}

/// Frames without a face, as large as [`walking`]'s.
fn empty_frames(n: usize) -> Vec<Vec<u8>> {
    let brick = resize(&sample("brick.png"), 480, 360, FilterType::Triangle);
    vec![jpeg(&brick); n]
}

/// Every face passes, and a track ends after two frames without its face.
fn tracking_every_face() -> String {
    format!("{FAST_RETRY}[gate.policy]\nkind = \"fixed\"\nthreshold = 0.5\n[tracking]\nmax_missed = 2\n")
}

fn best_of_track(decisions: &[Value]) -> Vec<&Value> {
    decisions.iter().filter(|d| d["reason"] == "best_of_track").collect()
}

#[test]
fn each_person_sends_one_crop_when_their_track_ends() {
    let dir = scratch("tracks");
    let server = Server::start();
    let run = Run::new(&dir, &server.url, &tracking_every_face());
    // One person, three empty frames (their track ends), another person.
    let stream = [walking(0, 6), empty_frames(3), walking(0, 6)].concat().concat();
    let summary = run.run(&stream);
    let decisions = run.decisions();
    let sent = best_of_track(&decisions);
    assert_eq!(sent.len(), 2, "{decisions:#?}");
    let spans: Vec<Value> = sent.iter().map(|d| d["track_frames"].clone()).collect();
    assert_eq!(spans, [serde_json::json!([0, 5]), serde_json::json!([9, 14])]);
    assert_ne!(sent[0]["track"], sent[1]["track"]);
    for d in &sent {
        // The chosen crop is the track's highest norm among its embedded faces.
        let track = &d["track"];
        let best = decisions
            .iter()
            .filter(|f| &f["track"] == track && f["reason"] != "best_of_track")
            .map(|f| f["norm"].as_f64().unwrap())
            .fold(0.0, f64::max);
        assert_eq!(d["norm"].as_f64().unwrap(), best);
        assert_eq!(d["pass"], true);
    }
    assert_eq!(server.distinct_keys(), run.passed_keys());
    assert_eq!(server.keys().len(), 2);

    let camera = &summary["cameras"][0];
    assert_eq!(camera["passed"], 2);
    assert_eq!(
        (camera["tracks_started"].as_u64(), camera["tracks_ended"].as_u64()),
        (Some(2), Some(2))
    );
    let per_face = decisions.len() - sent.len();
    assert_eq!(camera["faces"], per_face as u64);
    let tracked: BTreeMap<String, u64> = serde_json::from_value(camera["tracked"].clone()).unwrap();
    assert_eq!(tracked.values().sum::<u64>(), per_face as u64, "{tracked:?}");
    // Once a clearly good crop is held, most frames are not embedded.
    assert!(tracked.get("not_embedded").copied().unwrap_or(0) >= 6, "{tracked:?}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_face_in_a_single_frame_is_taken_for_a_passing_detection_and_not_sent() {
    let dir = scratch("tracks-single");
    let server = Server::start();
    let run = Run::new(&dir, &server.url, &tracking_every_face());
    let (child, mut stdin) = run.spawn("off");
    let stream = [empty_frames(2), walking(0, 1), empty_frames(4)].concat().concat();
    stdin.write_all(&stream).unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let summary = summary(out);
    // The face passed the gate and was held, but its track never reached `confirm_hits`.
    let decisions = run.decisions();
    assert_eq!(decisions.len(), 1, "{decisions:#?}");
    assert_eq!(decisions[0]["reason"], "held");
    assert_eq!(summary["cameras"][0]["tracks_ended"], 1);
    assert_eq!(summary["cameras"][0]["passed"], 0);
    assert!(stderr.contains("taken for a passing detection"), "{stderr}");
    assert!(stderr.contains("policy = \"per_frame\""), "{stderr}");
    assert!(server.keys().is_empty());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_track_whose_crops_never_pass_sends_nothing_and_says_so() {
    let dir = scratch("tracks-none");
    let server = Server::start();
    let strict = format!("{FAST_RETRY}[gate.policy]\nkind = \"fixed\"\nthreshold = 1000.0\n");
    let run = Run::new(&dir, &server.url, &strict);
    let (child, mut stdin) = run.spawn("off");
    stdin.write_all(&walking(0, 3).concat()).unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let summary = summary(out);
    assert!(run.decisions().iter().all(|d| d["reason"] == "low_norm"));
    assert_eq!(summary["cameras"][0]["tracks_ended"], 1);
    assert_eq!(summary["cameras"][0]["passed"], 0);
    assert!(stderr.contains("ended without a crop that passed the gate"), "{stderr}");
    assert!(server.keys().is_empty());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_sigkill_loses_only_the_crops_open_tracks_hold() {
    let dir = scratch("tracks-kill");
    let server = Server::start();
    let run = Run::new(&dir, &server.url, &tracking_every_face());
    let (mut child, mut stdin) = run.spawn("off");
    // The first person's track ends and sends; the second's is open when the process dies.
    stdin
        .write_all(&[walking(0, 4), empty_frames(3), walking(0, 4)].concat().concat())
        .unwrap();
    // Eleven frames through the whole chain: under qemu (cross/test-aarch64.sh) that takes minutes.
    let deadline = Instant::now() + Duration::from_secs(600);
    while run.decisions().iter().filter(|d| d["track"] == 2).count() < 4 || server.keys().is_empty() {
        std::thread::sleep(Duration::from_millis(100));
        assert!(Instant::now() < deadline, "{:#?}", run.decisions());
    }
    child.kill().unwrap();
    child.wait().unwrap();
    drop(stdin);
    let decisions = run.decisions();
    let sent = best_of_track(&decisions);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["track"], 1);
    // What died with the process: the one crop the open track held.
    let held_open = decisions
        .iter()
        .filter(|d| d["track"] == 2 && d["reason"] == "held")
        .count();
    assert!(held_open >= 1);

    // A restart delivers nothing twice and finds nothing else to send.
    let summary = run.run(&empty_frames(1).concat());
    assert_eq!(server.keys().len(), 1, "delivered exactly once");
    assert_eq!(server.distinct_keys(), run.passed_keys());
    assert_eq!(summary["uploads"]["queued"], 0);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn sighup_rotates_the_upload_certificate_and_token_and_no_crop_is_lost_or_sent_twice() {
    let dir = scratch("rotation");
    let (old_ca, new_ca) = (Ca::new("CA 2026"), Ca::new("CA 2027"));
    let policy = |ca: &Ca, token: &str| Policy {
        identity: ca.server(),
        client_ca: None,
        token: token.into(),
    };
    let server = TlsServer::start(&policy(&old_ca, "old-token"));
    std::fs::write(dir.join("ca.pem"), &old_ca.pem).unwrap();
    std::fs::write(dir.join("token"), "old-token").unwrap();
    let files = format!(
        "ca_file = \"{}\"\ntoken_file = \"{}\"\n",
        dir.join("ca.pem").display(),
        dir.join("token").display()
    );
    let run = Run::new(
        &dir,
        &server.url,
        &format!("{FAST_RETRY}{files}{PER_FRAME}[gate.policy]\nkind = \"fixed\"\nthreshold = 0.5\n"),
    );
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let (child, mut stdin) = run.spawn(&metrics_addr);
    let frames = sharp_frames(6);
    let wait_until = |done: &dyn Fn() -> bool, what: &str| {
        let deadline = Instant::now() + Duration::from_secs(300);
        while !done() {
            assert!(Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    stdin.write_all(&frames[..2].concat()).unwrap();
    wait_until(&|| server.accepted_keys().len() == 2, "the first crops arrive");

    // The server moves to a new CA and token: the next crops wait, failing the handshake.
    server.rotate(&policy(&new_ca, "new-token"));
    stdin.write_all(&frames[2..4].concat()).unwrap();
    let unknown_issuer = "normgate_upload_errors_total{cause=\"unknown_issuer\"}";
    wait_until(
        &|| metric(&scrape(&metrics_addr), unknown_issuer).unwrap_or(0.0) >= 1.0,
        "the old CA fails and the cause is counted",
    );
    std::fs::write(dir.join("ca.pem"), &new_ca.pem).unwrap();
    std::fs::write(dir.join("token"), "new-token").unwrap();
    assert!(command_kill("-HUP", &child.id().to_string()));
    stdin.write_all(&frames[4..].concat()).unwrap();
    drop(stdin);
    let summary = summary(child.wait_with_output().unwrap());
    let accepted = server.accepted_keys();
    assert_eq!(accepted.len(), 6, "each crop once: {accepted:?}");
    assert_eq!(accepted.into_iter().collect::<BTreeSet<_>>(), run.passed_keys());
    assert_eq!(summary["uploads"]["delivered"], 6);
    assert_eq!(summary["uploads"]["queued"], 0);
    std::fs::remove_dir_all(dir).unwrap();
}

/// `inner` run by `sh` under `umask`, with its arguments, environment and directory.
fn with_umask(inner: std::process::Command, umask: &str) -> std::process::Command {
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c")
        .arg(format!("umask {umask} && exec \"$0\" \"$@\""))
        .arg(inner.get_program())
        .args(inner.get_args());
    for (key, value) in inner.get_envs() {
        match value {
            Some(value) => cmd.env(key, value),
            None => cmd.env_remove(key),
        };
    }
    if let Some(dir) = inner.get_current_dir() {
        cmd.current_dir(dir);
    }
    cmd
}

#[test]
fn crops_on_disk_are_private_under_a_permissive_umask_and_old_ones_age_out() {
    use std::os::unix::fs::PermissionsExt;
    let dir = scratch("private");
    let state = dir.join("state");
    // A crop an earlier run left 40 days ago; the default retention is 30 days.
    let spool = state.join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    let forty_days_ago = std::time::SystemTime::now() - Duration::from_secs(40 * 86_400);
    for name in ["old.jpg", "old.json"] {
        let file = std::fs::File::create(spool.join(name)).unwrap();
        file.set_modified(forty_days_ago).unwrap();
    }
    let config = dir.join("normgate.toml");
    std::fs::write(
        &config,
        format!(
            "{PER_FRAME}[audit]\ndir = \"{}\"\nsample_rate = 1.0\n[log]\ndecisions = \"{}\"\n",
            state.join("audit").display(),
            state.join("log/decisions.jsonl").display()
        ),
    )
    .unwrap();
    let mut inner = command();
    inner
        .args(["run", "--json", "--metrics", "off", "--source", "-", "--config"])
        .arg(&config)
        .arg("--sink")
        .arg(&spool)
        .args(model_flags());
    let mut child = with_umask(inner, "000")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let face = sample("astronaut.png");
    let dark = degraded(&face)
        .into_iter()
        .find(|(name, _)| *name == "dark x0.1")
        .unwrap()
        .1;
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&[jpeg(&face), jpeg(&dark)].concat()).unwrap();
    drop(stdin);
    summary(child.wait_with_output().unwrap());

    let names = |d: &Path| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    assert!(
        !names(&spool).iter().any(|n| n.starts_with("old.")),
        "{:?}",
        names(&spool)
    );
    assert!(
        names(&spool).iter().any(|n| n.ends_with(".jpg")),
        "the new crop is kept"
    );
    assert!(names(&state.join("audit")).iter().any(|n| n.ends_with(".jpg")));
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    for sub in ["audit", "log"] {
        let d = state.join(sub);
        assert_eq!(mode(&d), 0o700, "{}", d.display());
        for name in names(&d) {
            assert_eq!(mode(&d.join(&name)), 0o600, "{sub}/{name}");
        }
    }
    for name in names(&spool) {
        assert_eq!(mode(&spool.join(&name)), 0o600, "spool/{name}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}
