//! The device's HTTP endpoint: `/metrics` for Prometheus, the status page
//! (`/`) and the JSON API behind it (`/api/status`,
//! `/api/cameras/{id}/frame.jpg`, `/api/crops/{id}.jpg`).
//!
//! The page and the API show faces, so off loopback they need the bearer
//! token of `[metrics] token_file`: in an `Authorization: Bearer` header, or
//! in the cookie that `/?token=...` sets for a browser. Without a token
//! file they answer 403 there. `/metrics` (counters, no faces) stays open,
//! as Prometheus scrapes it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, Result};
use serde::Serialize;
use tiny_http::{Header, Method, Request, Response};

use crate::metrics::Metrics;
use crate::runner::{summarise, Summary};
use crate::status::{CameraStatus, StatusBoard};

/// What the endpoint serves from.
pub struct Endpoint {
    /// The run's counters.
    pub metrics: Arc<Metrics>,
    /// What the cameras saw lately.
    pub board: Arc<StatusBoard>,
    /// The cameras' ids, in the configuration's order.
    pub cameras: Vec<String>,
    /// The token the page and the API need off loopback (`None`: none configured).
    pub token: Option<String>,
}

/// `/api/status`: the cameras' views and the run's counters.
#[derive(Debug, Serialize)]
pub struct Status {
    /// The binary's version.
    pub version: &'static str,
    /// Per camera, in id order.
    pub cameras: Vec<CameraStatus>,
    /// Counters so far (the run's summary).
    pub summary: Summary,
}

type Reply = Response<std::io::Cursor<Vec<u8>>>;

/// Serves the endpoint on `addr` from a thread of its own; returns the bound address.
pub fn serve(addr: &str, endpoint: Endpoint) -> Result<SocketAddr> {
    let server = tiny_http::Server::http(addr).map_err(|e| {
        anyhow!("cannot serve metrics on {addr}: {e} (choose another address with [metrics] listen or --metrics, or \"off\")")
    })?;
    let bound = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| anyhow!("metrics address {addr} is not an IP socket"))?;
    let private = bound.ip().is_loopback();
    if !private && endpoint.token.is_none() {
        log::warn!(
            "the status page on {bound} answers 403 off loopback until [metrics] token_file names a bearer token"
        );
    }
    let started = Instant::now();
    std::thread::Builder::new().name("http".into()).spawn(move || {
        for request in server.incoming_requests() {
            // One request per connection: a browser's idle keep-alive
            // connections then never wait on this single-threaded server.
            let response = route(&endpoint, &request, private, started).with_header(header("Connection: close"));
            if let Err(e) = request.respond(response) {
                log::debug!("http response failed: {e}");
            }
        }
    })?;
    Ok(bound)
}

fn header(text: &str) -> Header {
    text.parse().expect("a valid header")
}

fn text(status: u16, body: &str) -> Reply {
    Response::from_string(body)
        .with_status_code(status)
        .with_header(header("Content-Type: text/plain; charset=utf-8"))
}

fn bytes(content_type: &str, body: Vec<u8>) -> Reply {
    Response::from_data(body)
        .with_header(header(&format!("Content-Type: {content_type}")))
        .with_header(header("Cache-Control: no-store"))
}

fn route(endpoint: &Endpoint, request: &Request, private: bool, started: Instant) -> Reply {
    let url = request.url();
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    if *request.method() != Method::Get && *request.method() != Method::Head {
        return text(405, "only GET\n").with_header(header("Allow: GET, HEAD"));
    }
    if path == "/metrics" {
        return bytes(
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            endpoint.metrics.render().into_bytes(),
        );
    }
    if !private {
        let Some(token) = &endpoint.token else {
            return text(
                403,
                "the status page shows faces: set [metrics] token_file to see it from other hosts\n",
            );
        };
        if path == "/" {
            if let Some(given) = query.split('&').find_map(|p| p.strip_prefix("token=")) {
                if same(given, token) {
                    // The browser keeps the token as a cookie; the URL loses it.
                    return text(303, "")
                        .with_header(header("Location: /"))
                        .with_header(header(&format!(
                            "Set-Cookie: normgate_token={token}; HttpOnly; SameSite=Strict; Path=/"
                        )));
                }
            }
        }
        if !authorized(request, token) {
            return text(401, "give the bearer token of [metrics] token_file\n")
                .with_header(header("WWW-Authenticate: Bearer"));
        }
    }
    let status = || Status {
        version: env!("CARGO_PKG_VERSION"),
        cameras: endpoint.board.snapshot(),
        summary: summarise(
            &endpoint.metrics,
            &endpoint.cameras,
            false,
            started.elapsed().as_secs_f64(),
        ),
    };
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match segments.as_slice() {
        [""] => bytes("text/html; charset=utf-8", crate::page::render(&status()).into_bytes()),
        ["api", "status"] => match serde_json::to_vec(&status()) {
            Ok(json) => bytes("application/json", json),
            Err(e) => text(500, &format!("{e}\n")),
        },
        ["api", "cameras", id, "frame.jpg"] => match endpoint.board.frame_jpeg(id) {
            Some(jpeg) => bytes("image/jpeg", jpeg),
            None => text(404, "no such camera, or no frame yet\n"),
        },
        ["api", "crops", file] => {
            let id = file.strip_suffix(".jpg").and_then(|n| n.parse::<u64>().ok());
            match id.and_then(|id| endpoint.board.crop_jpeg(id)) {
                Some(jpeg) => bytes("image/jpeg", jpeg),
                None => text(404, "no such crop (the page keeps the recent ones only)\n"),
            }
        }
        _ => text(404, "see / (the status page), /api/status or /metrics\n"),
    }
}

/// Whether the request carries the token, as a bearer header or the page's cookie.
fn authorized(request: &Request, token: &str) -> bool {
    request.headers().iter().any(|h| {
        let value = h.value.as_str();
        if h.field.equiv("Authorization") {
            value
                .strip_prefix("Bearer ")
                .is_some_and(|given| same(given.trim(), token))
        } else if h.field.equiv("Cookie") {
            value
                .split(';')
                .filter_map(|c| c.trim().strip_prefix("normgate_token="))
                .any(|given| same(given, token))
        } else {
            false
        }
    })
}

/// Compares in time that does not depend on where the strings differ.
fn same(given: &str, token: &str) -> bool {
    given.len() == token.len() && given.bytes().zip(token.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{CameraLabel, DropLabel};
    use std::io::{Read, Write};
    use std::time::Duration;

    fn get(addr: SocketAddr, path: &str, extra: &str) -> String {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: x\r\n{extra}Connection: close\r\n\r\n"
        )
        .unwrap();
        let mut body = String::new();
        stream.read_to_string(&mut body).unwrap();
        body
    }

    fn endpoint(token: Option<&str>) -> Endpoint {
        Endpoint {
            metrics: Arc::new(Metrics::default()),
            board: Arc::new(StatusBoard::default()),
            cameras: vec!["door".into()],
            token: token.map(String::from),
        }
    }

    #[test]
    fn the_endpoint_serves_what_was_counted() {
        let e = endpoint(None);
        let metrics = e.metrics.clone();
        metrics
            .frames
            .get_or_create(&CameraLabel { camera: "door".into() })
            .inc();
        metrics
            .dropped
            .get_or_create(&DropLabel {
                camera: "door".into(),
                reason: "low_norm".into(),
            })
            .inc_by(3);
        metrics.observe("embed", Duration::from_millis(3));
        let addr = serve("127.0.0.1:0", e).unwrap();
        let body = get(addr, "/metrics", "");
        assert!(body.starts_with("HTTP/1.1 200"), "{body}");
        assert!(body.contains("normgate_frames_total{camera=\"door\"} 1"), "{body}");
        assert!(
            body.contains("normgate_dropped_total{camera=\"door\",reason=\"low_norm\"} 3"),
            "{body}"
        );
        assert!(
            body.contains("normgate_stage_seconds_count{stage=\"embed\"} 1"),
            "{body}"
        );
        assert_eq!(Metrics::camera_count(&metrics.frames, "door"), 1);
        assert!((metrics.mean_stage_ms()["embed"] - 3.0).abs() < 1e-9);
        // On loopback the page and the API need no token.
        assert!(get(addr, "/api/status", "").starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/", "").starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/nope", "").starts_with("HTTP/1.1 404"));
        assert!(get(addr, "/api/cameras/door/frame.jpg", "").starts_with("HTTP/1.1 404"));
        assert!(get(addr, "/api/crops/x.jpg", "").starts_with("HTTP/1.1 404"));
    }

    #[test]
    fn a_taken_address_is_a_clear_error() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap().to_string();
        let err = serve(&addr, endpoint(None)).unwrap_err().to_string();
        assert!(err.contains("--metrics"), "{err}");
    }

    #[test]
    fn off_loopback_the_page_and_the_api_need_the_token_and_metrics_stay_open() {
        let addr = serve("0.0.0.0:0", endpoint(Some("s3cret"))).unwrap();
        let local = SocketAddr::from(([127, 0, 0, 1], addr.port()));
        assert!(get(local, "/metrics", "").starts_with("HTTP/1.1 200"));
        assert!(get(local, "/api/status", "").starts_with("HTTP/1.1 401"));
        assert!(get(local, "/", "").starts_with("HTTP/1.1 401"));
        assert!(get(local, "/api/status", "Authorization: Bearer wrong\r\n").starts_with("HTTP/1.1 401"));
        let ok = get(local, "/api/status", "Authorization: Bearer s3cret\r\n");
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        assert!(ok.contains("\"cameras\":[]") && ok.contains("\"summary\""), "{ok}");
        // A browser trades the token in the URL for a cookie.
        let login = get(local, "/?token=s3cret", "");
        assert!(login.starts_with("HTTP/1.1 303"), "{login}");
        assert!(login.contains("Set-Cookie: normgate_token=s3cret; HttpOnly"), "{login}");
        assert!(get(local, "/", "Cookie: a=b; normgate_token=s3cret\r\n").starts_with("HTTP/1.1 200"));
        assert!(get(local, "/?token=nope", "").starts_with("HTTP/1.1 401"));

        let open = serve("0.0.0.0:0", endpoint(None)).unwrap();
        let local = SocketAddr::from(([127, 0, 0, 1], open.port()));
        let refused = get(local, "/api/status", "");
        assert!(
            refused.starts_with("HTTP/1.1 403") && refused.contains("token_file"),
            "{refused}"
        );
        assert!(get(local, "/metrics", "").starts_with("HTTP/1.1 200"));
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same("abc", "abc"));
        assert!(!same("abd", "abc") && !same("ab", "abc") && !same("", "abc"));
    }
}
