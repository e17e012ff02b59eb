//! Loopback servers for the upload tests: an HTTPS server whose certificate
//! (and whose demand for a client certificate and a token) can be rotated
//! mid-run, certificate authorities made in the test, and an HTTP CONNECT
//! proxy that records what it relays.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, SanType};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

/// A certificate authority made for one test.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    /// Its certificate, PEM.
    pub pem: String,
}

/// A certificate and its key, PEM.
pub struct Identity {
    /// Certificate chain, leaf first.
    pub cert: String,
    /// Private key.
    pub key: String,
}

impl Identity {
    /// Writes `NAME.crt` and `NAME.key` into `dir`.
    pub fn write(&self, dir: &Path, name: &str) {
        std::fs::write(dir.join(format!("{name}.crt")), &self.cert).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), &self.key).unwrap();
    }
}

impl Ca {
    /// A new CA called `name`.
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Self {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A server certificate for 127.0.0.1 and localhost.
    pub fn server(&self) -> Identity {
        let mut params = CertificateParams::new(vec!["localhost".into()]).unwrap();
        params
            .subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params)
    }

    /// A client certificate for a device.
    pub fn client(&self) -> Identity {
        let mut params = CertificateParams::new(vec!["camera-1".into()]).unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params)
    }

    fn issue(&self, params: CertificateParams) -> Identity {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Identity {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

/// How the server answers: its certificate, the client CA it demands (if
/// any) and the token it accepts.
pub struct Policy {
    /// The server's certificate.
    pub identity: Identity,
    /// Clients must present a certificate this CA signed.
    pub client_ca: Option<String>,
    /// `Authorization: Bearer TOKEN` required.
    pub token: String,
}

fn server_config(policy: &Policy) -> Arc<ServerConfig> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(policy.identity.cert.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(policy.identity.key.as_bytes()).unwrap();
    let builder = ServerConfig::builder();
    let builder = match &policy.client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
                roots.add(cert.unwrap()).unwrap();
            }
            builder.with_client_cert_verifier(WebPkiClientVerifier::builder(Arc::new(roots)).build().unwrap())
        }
        None => builder.with_no_client_auth(),
    };
    Arc::new(builder.with_single_cert(chain, key).unwrap())
}

/// One request that reached the server (its TLS handshake succeeded).
#[derive(Debug, Clone)]
pub struct Request {
    /// `Idempotency-Key`.
    pub key: String,
    /// Whether the token was right (answered 200, else 401).
    pub accepted: bool,
}

struct State {
    config: Arc<ServerConfig>,
    token: String,
}

/// A loopback HTTPS server, one request per connection.
pub struct TlsServer {
    /// `https://127.0.0.1:PORT/crops`.
    pub url: String,
    state: Arc<Mutex<State>>,
    requests: Arc<Mutex<Vec<Request>>>,
    /// Connections whose handshake failed.
    pub failed_handshakes: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    addr: SocketAddr,
    thread: Option<JoinHandle<()>>,
}

/// The value of header `name` in a request head.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|line| {
        let (field, value) = line.split_once(':')?;
        field.trim().eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

/// Reads one HTTP request (head and body); `None` when the stream ended.
fn read_request(stream: &mut impl Read) -> Option<String> {
    let mut reader = BufReader::new(stream);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    let length: usize = header(&head, "Content-Length").map_or(0, |v| v.parse().unwrap());
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some(head)
}

impl TlsServer {
    /// Starts serving with `policy`.
    pub fn start(policy: &Policy) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            config: server_config(policy),
            token: policy.token.clone(),
        }));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let failed_handshakes = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (state, requests, failed, stop) =
                (state.clone(), requests.clone(), failed_handshakes.clone(), stop.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    let (config, token) = {
                        let s = state.lock().unwrap();
                        (s.config.clone(), s.token.clone())
                    };
                    serve(stream, config, &token, &requests, &failed);
                }
            })
        };
        Self {
            url: format!("https://{addr}/crops"),
            state,
            requests,
            failed_handshakes,
            stop,
            addr,
            thread: Some(thread),
        }
    }

    /// Serves new connections with `policy` from now on.
    pub fn rotate(&self, policy: &Policy) {
        let mut state = self.state.lock().unwrap();
        state.config = server_config(policy);
        state.token = policy.token.clone();
    }

    /// Every request that reached the server.
    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }

    /// The keys the server accepted, in order (a key twice is a duplicate).
    pub fn accepted_keys(&self) -> Vec<String> {
        self.requests()
            .into_iter()
            .filter(|r| r.accepted)
            .map(|r| r.key)
            .collect()
    }
}

fn serve(
    stream: TcpStream,
    config: Arc<ServerConfig>,
    token: &str,
    requests: &Mutex<Vec<Request>>,
    failed: &AtomicUsize,
) {
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let connection = rustls::ServerConnection::new(config).unwrap();
    let mut tls = rustls::StreamOwned::new(connection, stream);
    let Some(head) = read_request(&mut tls) else {
        failed.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let accepted = header(&head, "Authorization") == Some(&format!("Bearer {token}"));
    requests.lock().unwrap().push(Request {
        key: header(&head, "Idempotency-Key").unwrap_or_default().to_string(),
        accepted,
    });
    let status = if accepted { "200 OK" } else { "401 Unauthorized" };
    let _ = write!(
        tls,
        "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    tls.conn.send_close_notify();
    let _ = tls.flush();
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop.
        let _ = TcpStream::connect(self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A loopback HTTP CONNECT proxy that records each tunnel's target and every
/// byte it relays from the client.
pub struct ConnectProxy {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// The targets of the CONNECT requests.
    pub targets: Arc<Mutex<Vec<String>>>,
    /// Everything the client sent, CONNECT requests included.
    pub from_client: Arc<Mutex<Vec<u8>>>,
}

impl ConnectProxy {
    /// Starts the proxy.
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let targets = Arc::new(Mutex::new(Vec::new()));
        let from_client = Arc::new(Mutex::new(Vec::new()));
        {
            let (targets, from_client) = (targets.clone(), from_client.clone());
            std::thread::spawn(move || {
                for client in listener.incoming().flatten() {
                    let (targets, from_client) = (targets.clone(), from_client.clone());
                    std::thread::spawn(move || tunnel(client, &targets, &from_client));
                }
            });
        }
        Self {
            url,
            targets,
            from_client,
        }
    }
}

fn tunnel(mut client: TcpStream, targets: &Mutex<Vec<String>>, from_client: &Arc<Mutex<Vec<u8>>>) {
    let Some(head) = read_request(&mut client) else { return };
    from_client.lock().unwrap().extend_from_slice(head.as_bytes());
    let target = head.split_whitespace().nth(1).unwrap_or_default().to_string();
    targets.lock().unwrap().push(target.clone());
    let Ok(upstream) = TcpStream::connect(&target) else {
        let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n");
        return;
    };
    client
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .unwrap();
    let (mut client_read, mut upstream_write) = (client.try_clone().unwrap(), upstream.try_clone().unwrap());
    let recorded = from_client.clone();
    let up = std::thread::spawn(move || {
        let mut buffer = [0u8; 4096];
        while let Ok(n) = client_read.read(&mut buffer) {
            if n == 0 || upstream_write.write_all(&buffer[..n]).is_err() {
                break;
            }
            recorded.lock().unwrap().extend_from_slice(&buffer[..n]);
        }
        let _ = upstream_write.shutdown(std::net::Shutdown::Write);
    });
    let (mut upstream_read, mut client_write) = (upstream, client);
    let _ = std::io::copy(&mut upstream_read, &mut client_write);
    let _ = client_write.shutdown(std::net::Shutdown::Write);
    let _ = up.join();
}
