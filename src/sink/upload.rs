//! Delivery of queued crops to an HTTP server. The oldest crop goes first;
//! it leaves the queue only after a 2xx answer. Network and TLS errors,
//! timeouts, 408, 429 and 5xx (and 401/403, which a fixed token cures) are
//! retried with exponential backoff and jitter; any other 4xx means the
//! server will never take this crop, so it is set aside in the queue's
//! `rejected/` folder. Every request carries the crop's content hash as
//! `Idempotency-Key`, which makes the at-least-once delivery safe for the
//! server. Each cause of failure is logged once, with what to fix, until a
//! crop goes through; the uplink budget decides when the next crop may go.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::camera::sleep_unless;
use crate::metrics::Metrics;
use crate::record::Crop;
use crate::sink::budget::{Budget, BudgetSettings, Wait};
use crate::sink::cause::{self, Cause};
use crate::sink::queue::Queue;
use crate::sink::tls::TlsFiles;

/// How crops are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// `multipart/form-data` POST to the URL: a `metadata` JSON part and a `crop` JPEG part.
    Post,
    /// PUT of the JPEG to the URL with `{key}` and `{camera}` filled in; the
    /// record goes in the `X-Normgate-Metadata` header.
    Put,
}

/// Settings of an uploader.
#[derive(Debug, Clone)]
pub struct UploadSettings {
    /// Target URL (a template for PUT).
    pub url: String,
    /// POST or PUT.
    pub method: Method,
    /// Bearer token; never logged.
    pub token: Option<String>,
    /// Limit of one request, connection included.
    pub timeout: Duration,
    /// First retry delay.
    pub retry_initial: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// Whom to trust, and the client certificate.
    pub tls: TlsFiles,
    /// HTTP CONNECT proxy URL; `None`: `HTTPS_PROXY` / `ALL_PROXY` / `HTTP_PROXY` and `NO_PROXY`.
    pub proxy: Option<String>,
    /// The uplink budget.
    pub budget: BudgetSettings,
}

/// How a run ends for an uploader: at once (a signal), or once the queue is
/// empty or a deadline passed (a finite source has ended).
#[derive(Default)]
pub struct Shutdown {
    stop: AtomicBool,
    drain_until: Mutex<Option<Instant>>,
}

impl Shutdown {
    /// Stop after the request in flight.
    pub fn stop_now(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Stop when the queue is empty or at `deadline`, whichever comes first.
    pub fn drain_until(&self, deadline: Instant) {
        *self.drain_until.lock().unwrap() = Some(deadline);
    }

    fn should_stop(&self, queue: &Queue) -> bool {
        self.stop.load(Ordering::Relaxed)
            || self
                .drain_until
                .lock()
                .unwrap()
                .is_some_and(|d| queue.is_empty() || Instant::now() >= d)
    }

    fn flag(&self) -> &AtomicBool {
        &self.stop
    }
}

enum Failure {
    /// Try again later.
    Retry(Cause, String),
    /// The server will never take it.
    Refused(Cause, String),
}

/// The connection side of the settings, rebuilt on SIGHUP: the agent
/// (TLS and proxy) and the request's target and token.
struct Link {
    settings: UploadSettings,
    agent: ureq::Agent,
}

impl Link {
    fn new(settings: UploadSettings) -> Result<Self> {
        let scheme_ok = settings.url.starts_with("http://") || settings.url.starts_with("https://");
        let uri = match settings.url.parse::<ureq::http::Uri>() {
            Ok(uri) if scheme_ok => uri,
            _ => bail!("upload url {:?} is not an http:// or https:// URL", settings.url),
        };
        let proxy = match &settings.proxy {
            Some(url) => Some(
                ureq::Proxy::new(url)
                    .with_context(|| format!("upload proxy {url:?} is not a proxy URL (http://host:port)"))?,
            ),
            None => ureq::Proxy::try_from_env(),
        };
        if let Some(proxy) = proxy.as_ref().filter(|p| !p.is_no_proxy(&uri)) {
            if settings.token.is_some() && settings.url.starts_with("http://") {
                bail!(
                    "the upload token would cross the proxy {}:{} in clear: use an https:// url (or exempt the host with NO_PROXY)",
                    proxy.host(),
                    proxy.port()
                );
            }
        }
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(settings.timeout))
            .http_status_as_error(false)
            .user_agent(concat!("normgate/", env!("CARGO_PKG_VERSION")))
            .tls_config(settings.tls.load(SystemTime::now())?)
            .proxy(proxy)
            .build()
            .into();
        Ok(Self { settings, agent })
    }

    /// The request body of a crop and the request, ready to send.
    fn request(&self, crop: &Crop) -> Result<(Vec<u8>, ureq::RequestBuilder<ureq::typestate::WithBody>)> {
        let key = crop.record.key.clone().unwrap_or_default();
        let metadata = serde_json::to_string(&crop.record)?;
        let (body, request) = match self.settings.method {
            Method::Post => (
                multipart(crop, &metadata),
                self.agent
                    .post(&self.settings.url)
                    .header("Content-Type", format!("multipart/form-data; boundary={BOUNDARY}")),
            ),
            Method::Put => {
                let url = self
                    .settings
                    .url
                    .replace("{key}", &key)
                    .replace("{camera}", &crop.record.camera);
                let request = self
                    .agent
                    .put(url)
                    .header("Content-Type", "image/jpeg")
                    .header("X-Normgate-Metadata", ascii_json(&metadata));
                (crop.jpeg.clone(), request)
            }
        };
        let mut request = request.header("Idempotency-Key", &key);
        if let Some(token) = &self.settings.token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        Ok((body, request))
    }
}

/// Checks upload settings as an uploader's start would: the URL, the
/// proxy, the token's path to the server, the TLS files.
pub fn check(settings: UploadSettings) -> Result<()> {
    Link::new(settings).map(drop)
}

/// Sends one request and sorts its outcome.
fn send(body: Vec<u8>, request: ureq::RequestBuilder<ureq::typestate::WithBody>) -> Result<(), Failure> {
    let response = request
        .send(body)
        .map_err(|e| Failure::Retry(cause::of_error(&e), e.to_string()))?;
    match response.status().as_u16() {
        200..=299 => Ok(()),
        s if retryable(s) => Err(Failure::Retry(cause::of_status(s), format!("HTTP {s}"))),
        s => Err(Failure::Refused(cause::of_status(s), format!("HTTP {s}"))),
    }
}

/// Sends the crops of one queue.
pub struct Uploader {
    queue: Arc<Queue>,
    link: Mutex<Arc<Link>>,
    budget: Mutex<Budget>,
    metrics: Arc<Metrics>,
}

const BOUNDARY: &str = "normgate-crop-boundary-7d1c2f";

/// The multipart body of a POST.
fn multipart(crop: &Crop, metadata: &str) -> Vec<u8> {
    let key = crop.record.key.as_deref().unwrap_or("crop");
    let mut body = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"metadata\"\r\nContent-Type: application/json\r\n\r\n{metadata}\r\n\
         --{BOUNDARY}\r\nContent-Disposition: form-data; name=\"crop\"; filename=\"{key}.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(&crop.jpeg);
    body.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    body
}

/// JSON with every non-ASCII character escaped, so it fits an HTTP header.
fn ascii_json(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

/// Backoff before retry number `attempt` (1-based): doubling from `initial`
/// up to `max`, then a random point in its upper half so that many devices
/// that failed together do not retry together.
pub fn backoff(attempt: u32, initial: Duration, max: Duration, unit_random: f64) -> Duration {
    let base = initial
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
        .min(max);
    base.mul_f64(0.5 + 0.5 * unit_random.clamp(0.0, 1.0))
}

fn retryable(status: u16) -> bool {
    matches!(status, 401 | 403 | 408 | 425 | 429) || status >= 500
}

impl Uploader {
    /// An uploader of `queue`; checks the URL, reads the TLS files and the
    /// day's upload count.
    pub fn new(queue: Arc<Queue>, settings: UploadSettings, metrics: Arc<Metrics>) -> Result<Self> {
        let budget = Budget::new(settings.budget, Some(queue.dir()), Instant::now())?;
        Ok(Self {
            link: Mutex::new(Arc::new(Link::new(settings)?)),
            budget: Mutex::new(budget),
            queue,
            metrics,
        })
    }

    /// The queue it sends.
    pub fn queue(&self) -> &Arc<Queue> {
        &self.queue
    }

    /// Takes new connection settings (SIGHUP: a rotated token or
    /// certificate) from the next request on; on an error the old ones stay.
    pub fn reload(&self, settings: UploadSettings) -> Result<()> {
        let link = Link::new(settings)?;
        *self.link.lock().unwrap() = Arc::new(link);
        Ok(())
    }

    /// Waits until the budget lets `size` bytes go; false when told to stop first.
    fn wait_for_budget(&self, size: u64, shutdown: &Shutdown, logged_daily: &mut bool) -> Result<bool> {
        loop {
            let wait = self
                .budget
                .lock()
                .unwrap()
                .take(size, Instant::now(), SystemTime::now())?;
            let delay = match wait {
                None => return Ok(true),
                Some(Wait::Rate(d)) => d,
                Some(Wait::Daily(d)) => {
                    if !std::mem::replace(logged_daily, true) {
                        log::warn!(
                            "daily upload cap reached: {} crops wait in the queue for the next UTC day ({:.1} h)",
                            self.queue.len(),
                            d.as_secs_f32() / 3600.0
                        );
                    }
                    d
                }
            };
            // Wake often enough to notice a stop or the end of a drain.
            let started = Instant::now();
            sleep_unless(shutdown.flag(), delay.min(Duration::from_millis(500)));
            self.metrics.upload_budget_wait.inc_by(started.elapsed().as_secs_f64());
            if shutdown.should_stop(&self.queue) {
                return Ok(false);
            }
        }
    }

    /// Sends until `shutdown` says to stop.
    pub fn run(&self, shutdown: &Shutdown) -> Result<()> {
        let mut failures = 0u32;
        let mut logged: HashSet<&'static str> = HashSet::new();
        let mut logged_daily = false;
        while !shutdown.should_stop(&self.queue) {
            let Some((seq, crop)) = self.queue.oldest(Duration::from_millis(200))? else {
                continue;
            };
            let link = self.link.lock().unwrap().clone();
            let key = crop.record.key.as_deref().unwrap_or_default();
            let (body, request) = match link.request(&crop) {
                Ok(r) => r,
                Err(e) => {
                    self.queue.set_aside(seq, &format!("cannot build its request: {e:#}"))?;
                    continue;
                }
            };
            if !self.wait_for_budget(body.len() as u64, shutdown, &mut logged_daily)? {
                break;
            }
            logged_daily = false;
            if failures > 0 {
                self.metrics.upload_retries.inc();
            }
            self.metrics.upload_bytes.inc_by(body.len() as u64);
            match send(body, request) {
                Ok(()) => {
                    self.queue.remove(seq).context("removing a delivered crop")?;
                    self.metrics.upload("success");
                    log::debug!("uploaded {key}");
                    if failures > 0 {
                        log::info!("upload works again after {failures} failed attempts");
                    }
                    failures = 0;
                    logged.clear();
                }
                Err(Failure::Retry(cause, why)) => {
                    self.metrics.upload("failure");
                    self.metrics.upload_error(cause.label);
                    failures += 1;
                    let delay = backoff(
                        failures,
                        link.settings.retry_initial,
                        link.settings.retry_max,
                        fastrand::f64(),
                    );
                    if logged.insert(cause.label) {
                        log::warn!(
                            "upload of {key} failed ({why}): {}. Retrying with backoff; this cause is logged once until an upload succeeds",
                            cause.fix
                        );
                    } else {
                        log::debug!(
                            "upload of {key} failed ({why}); retry {failures} in {:.1} s",
                            delay.as_secs_f32()
                        );
                    }
                    sleep_unless(shutdown.flag(), delay);
                }
                Err(Failure::Refused(cause, why)) => {
                    self.metrics.upload("rejected");
                    self.metrics.upload_error(cause.label);
                    self.queue.set_aside(seq, &format!("the server refused it: {why}"))?;
                    failures = 0;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{content_key, FaceRecord};
    use crate::sink::queue::{Limits, WhenFull};

    fn crop(camera: &str, jpeg: &[u8]) -> Crop {
        Crop {
            record: FaceRecord {
                time: "2026-11-28T00:00:00.000Z".into(),
                camera: camera.into(),
                frame: 7,
                source: "café.jpg".into(),
                face: 0,
                bbox: [1.0, 2.0, 3.0, 4.0],
                landmarks: [[0.0; 2]; 5],
                detector_score: 0.9,
                norm: 14.0,
                threshold: 12.0,
                pass: true,
                reason: "passed".into(),
                key: Some(content_key(jpeg)),
                crop_region: None,
                track: None,
                track_frames: None,
            },
            jpeg: jpeg.to_vec(),
        }
    }

    /// Method, URL and metadata header of one request.
    type Seen = (String, String, String);

    /// A server that answers each request with the next status and records what it saw.
    fn server(statuses: Vec<u16>) -> (String, std::thread::JoinHandle<Vec<Seen>>) {
        let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
        let url = format!("http://{}", server.server_addr().to_ip().unwrap());
        let handle = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for status in statuses {
                let mut request = server.recv().unwrap();
                let meta = request
                    .headers()
                    .iter()
                    .find(|h| h.field.equiv("X-Normgate-Metadata"))
                    .map(|h| h.value.to_string())
                    .unwrap_or_default();
                let mut body = Vec::new();
                request.as_reader().read_to_end(&mut body).unwrap();
                seen.push((request.method().to_string(), request.url().to_string(), meta));
                request.respond(tiny_http::Response::empty(status)).unwrap();
            }
            seen
        });
        (url, handle)
    }

    #[test]
    fn put_fills_the_url_template_and_a_refused_crop_is_set_aside() {
        let dir = std::env::temp_dir().join(format!("normgate-upload-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let metrics = Arc::new(Metrics::default());
        let limits = Limits {
            max_items: 10,
            max_bytes: 1 << 20,
            when_full: WhenFull::Reject,
        };
        let queue = Arc::new(Queue::open(&dir, limits, metrics.clone()).unwrap());
        let (first, second) = (crop("door", b"first"), crop("door", b"second"));
        queue.push(&first).unwrap();
        queue.push(&second).unwrap();
        // 503 then 204 for the first crop, 400 for the second.
        let (url, handle) = server(vec![503, 204, 400]);
        let settings = UploadSettings {
            url: format!("{url}/{{camera}}/{{key}}.jpg"),
            method: Method::Put,
            token: None,
            timeout: Duration::from_secs(5),
            retry_initial: Duration::from_millis(10),
            retry_max: Duration::from_millis(20),
            tls: TlsFiles::default(),
            proxy: None,
            budget: BudgetSettings::default(),
        };
        let uploader = Uploader::new(queue.clone(), settings, metrics.clone()).unwrap();
        let shutdown = Shutdown::default();
        shutdown.drain_until(Instant::now() + Duration::from_secs(30));
        uploader.run(&shutdown).unwrap();
        let seen = handle.join().unwrap();
        let key = first.record.key.as_deref().unwrap();
        assert_eq!(seen[0].0, "PUT");
        assert_eq!(seen[0].1, format!("/door/{key}.jpg"));
        let meta: FaceRecord = serde_json::from_str(&seen[1].2).unwrap();
        assert_eq!(meta, first.record);
        assert!(queue.is_empty());
        assert_eq!(
            std::fs::read_dir(dir.join(crate::sink::queue::REJECTED_DIR))
                .unwrap()
                .count(),
            1
        );
        assert_eq!(
            (
                metrics.upload_count("success"),
                metrics.upload_count("failure"),
                metrics.upload_count("rejected")
            ),
            (1, 1, 1)
        );
        assert_eq!(metrics.upload_retries.get(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_url_that_is_not_http_is_refused() {
        let dir = std::env::temp_dir().join(format!("normgate-upload-url-{}", std::process::id()));
        let metrics = Arc::new(Metrics::default());
        let limits = Limits {
            max_items: 1,
            max_bytes: 1,
            when_full: WhenFull::Reject,
        };
        let queue = Arc::new(Queue::open(&dir, limits, metrics.clone()).unwrap());
        let settings = UploadSettings {
            url: "ftp://example.org/x".into(),
            method: Method::Post,
            token: None,
            timeout: Duration::from_secs(1),
            retry_initial: Duration::from_millis(10),
            retry_max: Duration::from_millis(20),
            tls: TlsFiles::default(),
            proxy: None,
            budget: BudgetSettings::default(),
        };
        assert!(Uploader::new(queue, settings, metrics).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter_in_the_upper_half() {
        let (i, m) = (Duration::from_millis(100), Duration::from_secs(2));
        assert_eq!(backoff(1, i, m, 1.0), Duration::from_millis(100));
        assert_eq!(backoff(3, i, m, 1.0), Duration::from_millis(400));
        assert_eq!(backoff(3, i, m, 0.0), Duration::from_millis(200));
        assert_eq!(backoff(40, i, m, 1.0), m);
    }

    #[test]
    fn only_transient_statuses_are_retried() {
        for s in [401, 408, 429, 500, 503] {
            assert!(retryable(s), "{s}");
        }
        for s in [400, 404, 413, 422] {
            assert!(!retryable(s), "{s}");
        }
    }

    #[test]
    fn header_json_is_ascii_and_still_json() {
        let json = serde_json::to_string(&serde_json::json!({"source": "café 😀.jpg"})).unwrap();
        let ascii = ascii_json(&json);
        assert!(ascii.is_ascii());
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&ascii).unwrap()["source"],
            "café 😀.jpg"
        );
    }
}
