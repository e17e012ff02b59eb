//! The uplink budget over a measured run: crops of a typical size are
//! uploaded to a loopback server under `max_kbps` (default 800, about 100
//! KB/s; `NORMGATE_BENCH_KBPS` overrides it, `NORMGATE_BENCH_CROPS` the number
//! of crops, default 100), and the rate the server saw is compared with the
//! budget. Prints one JSON object; nothing may be lost.
//!
//! `cargo bench --bench uplink`

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use normgate::config::UploadSection;
use normgate::metrics::Metrics;
use normgate::record::Crop;
use normgate::sink::queue::{Limits, Queue, WhenFull};
use normgate::sink::upload::{Shutdown, Uploader};

fn env_or(name: &str, default: f64) -> f64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[path = "../tests/common/crops.rs"]
mod crops;

/// A crop of about 20 KB, different per `n`.
fn crop(n: u32) -> Crop {
    crops::crop(n, (0..20_000u32).map(|i| (i.wrapping_mul(31) ^ n) as u8).collect())
}

fn main() {
    let kbps = env_or("NORMGATE_BENCH_KBPS", 800.0);
    let crops = env_or("NORMGATE_BENCH_CROPS", 100.0) as u32;
    let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
    let url = format!("http://{}/crops", server.server_addr().to_ip().unwrap());
    // Arrival time and body bytes of each request.
    let seen: Arc<Mutex<Vec<(Instant, usize)>>> = Arc::default();
    {
        let (server, seen) = (server.clone(), seen.clone());
        std::thread::spawn(move || {
            for mut request in server.incoming_requests() {
                let mut body = Vec::new();
                request.as_reader().read_to_end(&mut body).unwrap();
                seen.lock().unwrap().push((Instant::now(), body.len()));
                let _ = request.respond(tiny_http::Response::empty(200));
            }
        });
    }
    let dir = std::env::temp_dir().join(format!("normgate-bench-uplink-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let section = UploadSection {
        queue: dir.join("queue"),
        max_kbps: kbps as f32,
        ..UploadSection::to(&url)
    };
    let metrics = Arc::new(Metrics::default());
    let limits = Limits {
        max_items: 10_000,
        max_bytes: 1 << 30,
        when_full: WhenFull::Reject,
    };
    let queue = Arc::new(Queue::open(&section.queue, limits, metrics.clone()).unwrap());
    for n in 0..crops {
        queue.push(&crop(n)).unwrap();
    }
    let uploader = Uploader::new(queue.clone(), section.settings().unwrap(), metrics.clone()).unwrap();
    let started = Instant::now();
    let shutdown = Shutdown::default();
    shutdown.drain_until(started + Duration::from_secs(3600));
    uploader.run(&shutdown).unwrap();
    let seconds = started.elapsed().as_secs_f64();
    let seen = seen.lock().unwrap().clone();
    let bytes: usize = seen.iter().map(|(_, b)| b).sum();
    let budget = kbps * 1000.0 / 8.0;
    // Without the bucket's first second (it starts full), the steady rate.
    let after_burst: usize = seen
        .iter()
        .filter(|(t, _)| t.duration_since(started) > Duration::from_secs(1))
        .map(|(_, b)| b)
        .sum();
    let report = serde_json::json!({
        "max_kbps": kbps,
        "crops": crops,
        "delivered": seen.len(),
        "lost": queue.len(),
        "bytes": bytes,
        "seconds": seconds,
        "bytes_per_s": bytes as f64 / seconds,
        "ratio_to_budget": bytes as f64 / seconds / budget,
        "steady_ratio_to_budget": after_burst as f64 / (seconds - 1.0) / budget,
        "budget_wait_s": metrics.upload_budget_wait.get(),
    });
    println!("{report}");
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(seen.len() as u32, crops, "every crop delivered once");
}
