//! Uploads over TLS that a fleet can trust, against loopback servers with
//! certificates made in the test: a private CA named by `ca_file`, the
//! wrong CA, mutual TLS, an HTTP CONNECT proxy, and certificate and token
//! rotation mid-run. The uploader and its queue run here without models;
//! `tests/gate.rs` drives the same rotation through SIGHUP on the binary.

mod common;

use std::ffi::OsString;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::scratch;
use common::tls::{Ca, ConnectProxy, Policy, TlsServer};
use normgate::config::UploadSection;
use normgate::metrics::Metrics;
use normgate::record::Crop;
use normgate::sink::queue::{Limits, Queue, WhenFull};
use normgate::sink::tls::Trust;
use normgate::sink::upload::{Shutdown, Uploader};

fn crop(n: u32) -> Crop {
    common::crops::crop(n, format!("crop {n}").into_bytes())
}

/// An upload section for `url` with fast retries and the token in a file.
fn section(dir: &Path, url: &str, token: &str) -> UploadSection {
    std::fs::write(dir.join("token"), token).unwrap();
    UploadSection {
        token_file: Some(dir.join("token")),
        queue: dir.join("queue"),
        retry_initial_s: 0.05,
        retry_max_s: 0.2,
        timeout_s: 5.0,
        ..UploadSection::to(url)
    }
}

/// A queue holding `n` crops and its uploader.
fn uploader(section: &UploadSection, n: u32) -> (Arc<Uploader>, Arc<Metrics>, Vec<String>) {
    let metrics = Arc::new(Metrics::default());
    let limits = Limits {
        max_items: 100,
        max_bytes: 1 << 20,
        when_full: WhenFull::Reject,
    };
    let queue = Arc::new(Queue::open(&section.queue, limits, metrics.clone()).unwrap());
    let keys = (0..n)
        .map(|i| {
            let crop = crop(i);
            queue.push(&crop).unwrap();
            crop.record.key.unwrap()
        })
        .collect();
    let uploader = Uploader::new(queue, section.settings().unwrap(), metrics.clone()).unwrap();
    (Arc::new(uploader), metrics, keys)
}

/// Runs the uploader until its queue is empty or `limit` passes; true when it emptied.
fn drain(uploader: &Uploader, limit: Duration) -> bool {
    let shutdown = Shutdown::default();
    shutdown.drain_until(Instant::now() + limit);
    uploader.run(&shutdown).unwrap();
    uploader.queue().is_empty()
}

fn policy(ca: &Ca, token: &str) -> Policy {
    Policy {
        identity: ca.server(),
        client_ca: None,
        token: token.into(),
    }
}

#[test]
fn a_private_ca_named_by_ca_file_delivers() {
    let dir = scratch("trust-private-ca");
    let ca = Ca::new("fleet CA");
    let server = TlsServer::start(&policy(&ca, "secret"));
    std::fs::write(dir.join("ca.pem"), &ca.pem).unwrap();
    let upload = UploadSection {
        ca_file: Some(dir.join("ca.pem")),
        ..section(&dir, &server.url, "secret")
    };
    let (uploader, metrics, keys) = uploader(&upload, 3);
    assert!(drain(&uploader, Duration::from_secs(60)));
    assert_eq!(server.accepted_keys(), keys);
    assert_eq!(metrics.upload_count("success"), 3);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn the_wrong_ca_never_delivers_and_says_why() {
    let dir = scratch("trust-wrong-ca");
    let server = TlsServer::start(&policy(&Ca::new("fleet CA"), "secret"));
    let other = Ca::new("some other CA");
    std::fs::write(dir.join("other.pem"), &other.pem).unwrap();
    let wrong_file = UploadSection {
        ca_file: Some(dir.join("other.pem")),
        ..section(&dir, &server.url, "secret")
    };
    // The bundled public roots do not know a private CA either.
    let bundled = UploadSection {
        queue: dir.join("queue-bundled"),
        ..section(&dir, &server.url, "secret")
    };
    assert_eq!(bundled.tls().effective_trust(), Trust::Bundled);
    for upload in [wrong_file, bundled] {
        let (uploader, metrics, _) = uploader(&upload, 2);
        assert!(!drain(&uploader, Duration::from_secs(2)), "nothing is delivered");
        assert_eq!(uploader.queue().len(), 2, "and nothing is lost");
        assert_eq!(metrics.upload_count("success"), 0);
        let failures = metrics.upload_count("failure");
        assert!(failures >= 2, "it kept retrying: {failures}");
        assert_eq!(
            metrics.upload_error_count("unknown_issuer"),
            failures,
            "the cause is named"
        );
    }
    assert!(server.requests().is_empty(), "no request got through the handshake");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn mutual_tls_takes_the_configured_client_certificate_and_refuses_a_device_without_one() {
    let dir = scratch("trust-mtls");
    let (server_ca, client_ca) = (Ca::new("server CA"), Ca::new("device CA"));
    let server = TlsServer::start(&Policy {
        client_ca: Some(client_ca.pem.clone()),
        ..policy(&server_ca, "secret")
    });
    std::fs::write(dir.join("ca.pem"), &server_ca.pem).unwrap();
    client_ca.client().write(&dir, "device");
    let without = UploadSection {
        ca_file: Some(dir.join("ca.pem")),
        queue: dir.join("queue-without"),
        ..section(&dir, &server.url, "secret")
    };
    let (uploader_without, metrics, _) = uploader(&without, 1);
    assert!(!drain(&uploader_without, Duration::from_secs(2)));
    assert_eq!(uploader_without.queue().len(), 1);
    assert!(metrics.upload_error_count("client_cert_refused") >= 1);
    assert!(server.requests().is_empty());

    let with = UploadSection {
        client_cert: Some(dir.join("device.crt")),
        client_key: Some(dir.join("device.key")),
        queue: dir.join("queue-with"),
        ..without
    };
    let (uploader_with, _, keys) = uploader(&with, 2);
    assert!(drain(&uploader_with, Duration::from_secs(60)));
    assert_eq!(server.accepted_keys(), keys);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_connect_proxy_carries_the_upload_and_never_sees_the_token() {
    let dir = scratch("trust-proxy");
    let ca = Ca::new("fleet CA");
    let server = TlsServer::start(&policy(&ca, "secret-token-123"));
    let proxy = ConnectProxy::start();
    std::fs::write(dir.join("ca.pem"), &ca.pem).unwrap();
    let upload = UploadSection {
        ca_file: Some(dir.join("ca.pem")),
        proxy: Some(proxy.url.clone()),
        ..section(&dir, &server.url, "secret-token-123")
    };
    let (uploader, _, keys) = uploader(&upload, 2);
    assert!(drain(&uploader, Duration::from_secs(60)));
    assert_eq!(server.accepted_keys(), keys);
    let target = server.url.trim_start_matches("https://").trim_end_matches("/crops");
    assert!(!proxy.targets.lock().unwrap().is_empty());
    assert!(proxy.targets.lock().unwrap().iter().all(|t| t == target));
    let seen = proxy.from_client.lock().unwrap().clone();
    let token = b"secret-token-123";
    assert!(
        !seen.windows(token.len()).any(|w| w == token),
        "the token crossed the proxy"
    );

    // Over plain http the token would cross the proxy in clear: refused at start.
    let plain = UploadSection {
        proxy: Some(proxy.url.clone()),
        ..section(&dir, "http://127.0.0.1:9/crops", "secret-token-123")
    };
    let err = normgate::sink::upload::check(plain.settings().unwrap()).unwrap_err();
    assert!(err.to_string().contains("in clear"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn rotating_the_certificate_and_token_mid_run_loses_nothing_and_duplicates_nothing() {
    let dir = scratch("trust-rotation");
    let (old_ca, new_ca) = (Ca::new("CA 2026"), Ca::new("CA 2027"));
    let server = TlsServer::start(&policy(&old_ca, "old-token"));
    std::fs::write(dir.join("ca.pem"), &old_ca.pem).unwrap();
    let upload = UploadSection {
        ca_file: Some(dir.join("ca.pem")),
        ..section(&dir, &server.url, "old-token")
    };
    let (uploader, metrics, mut keys) = uploader(&upload, 2);
    let shutdown = Arc::new(Shutdown::default());
    let running = {
        let (uploader, shutdown) = (uploader.clone(), shutdown.clone());
        std::thread::spawn(move || uploader.run(&shutdown).unwrap())
    };
    let wait_until = |done: &dyn Fn() -> bool, what: &str| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !done() {
            assert!(Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_until(&|| server.accepted_keys().len() == 2, "the first crops arrive");

    // The server moves to a new CA and token; new crops fail until the device reloads.
    server.rotate(&policy(&new_ca, "new-token"));
    for i in 10..13 {
        let crop = crop(i);
        uploader.queue().push(&crop).unwrap();
        keys.push(crop.record.key.unwrap());
    }
    wait_until(
        &|| metrics.upload_error_count("unknown_issuer") >= 2,
        "the old CA fails",
    );
    std::fs::write(dir.join("ca.pem"), &new_ca.pem).unwrap();
    std::fs::write(dir.join("token"), "new-token").unwrap();
    uploader.reload(upload.settings().unwrap()).unwrap();
    wait_until(&|| uploader.queue().is_empty(), "the rest arrive after the reload");
    shutdown.stop_now();
    running.join().unwrap();
    assert_eq!(server.accepted_keys(), keys, "every crop once, in order");

    // A reload with a broken file keeps the working settings.
    std::fs::write(dir.join("ca.pem"), "garbage").unwrap();
    assert!(uploader.reload(upload.settings().unwrap()).is_err());
    std::fs::remove_dir_all(dir).unwrap();
}

/// Set in the child process of a test that needs process-wide variables:
/// the server to upload to.
const CHILD_URL: &str = "NORMGATE_TEST_CHILD_URL";

/// Runs test `name` of this binary in a child process with `vars` set (they
/// are process-wide, so they must not leak into the tests running beside it).
fn in_child(name: &str, url: &str, vars: &[(&str, OsString)]) {
    let mut child = std::process::Command::new(std::env::current_exe().unwrap());
    child.args(["--exact", name]).env(CHILD_URL, url);
    for var in [
        "SSL_CERT_DIR",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
        "NO_PROXY",
        "no_proxy",
    ] {
        child.env_remove(var);
    }
    for (var, value) in vars {
        child.env(var, value);
    }
    let out = child.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.contains("1 passed"), "{stdout}");
}

#[test]
fn trust_system_reads_the_store_that_ssl_cert_file_names() {
    let Ok(url) = std::env::var(CHILD_URL) else {
        let dir = scratch("trust-system");
        let ca = Ca::new("fleet CA");
        let server = TlsServer::start(&policy(&ca, "secret"));
        std::fs::write(dir.join("ca.pem"), &ca.pem).unwrap();
        let ca_file = dir.join("ca.pem");
        in_child(
            "trust_system_reads_the_store_that_ssl_cert_file_names",
            &server.url,
            &[("SSL_CERT_FILE", ca_file.into())],
        );
        assert_eq!(server.accepted_keys().len(), 1);
        std::fs::remove_dir_all(dir).unwrap();
        return;
    };
    let dir = scratch("trust-system-child");
    let upload = UploadSection {
        trust: Some(Trust::System),
        ..section(&dir, &url, "secret")
    };
    let (uploader, _, _) = uploader(&upload, 1);
    assert!(drain(&uploader, Duration::from_secs(60)));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn https_proxy_from_the_environment_carries_the_upload() {
    let Ok(url) = std::env::var(CHILD_URL) else {
        let dir = scratch("trust-env-proxy");
        let ca = Ca::new("fleet CA");
        let server = TlsServer::start(&policy(&ca, "secret"));
        let proxy = ConnectProxy::start();
        std::fs::write(dir.join("ca.pem"), &ca.pem).unwrap();
        in_child(
            "https_proxy_from_the_environment_carries_the_upload",
            &server.url,
            &[
                ("HTTPS_PROXY", proxy.url.clone().into()),
                ("CA_FILE", dir.join("ca.pem").into()),
            ],
        );
        assert_eq!(server.accepted_keys().len(), 1);
        assert_eq!(proxy.targets.lock().unwrap().len(), 1, "through the proxy");
        std::fs::remove_dir_all(dir).unwrap();
        return;
    };
    let dir = scratch("trust-env-proxy-child");
    let upload = UploadSection {
        ca_file: std::env::var_os("CA_FILE").map(Into::into),
        ..section(&dir, &url, "secret")
    };
    let (uploader, _, _) = uploader(&upload, 1);
    assert!(drain(&uploader, Duration::from_secs(60)));
    std::fs::remove_dir_all(dir).unwrap();
}
