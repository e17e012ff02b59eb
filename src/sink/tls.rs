//! Whom an uploader trusts and how it proves who it is: the server's
//! certificate is checked against the bundled Mozilla roots, the operating
//! system's trust store, or a PEM file of the fleet's own CA; a client
//! certificate and key (PEM) answer servers that require mutual TLS. Every
//! file is read and checked when the uploader starts and again on SIGHUP
//! (rotation without a restart), so a missing file, a key that does not
//! match its certificate or an expired certificate is an error that names
//! the file, not a handshake that fails in the field.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::{bail, Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use ureq::tls::{ClientCert, RootCerts, TlsConfig};
use x509_cert::der::Decode;

/// Where the roots that vouch for the server come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Trust {
    /// Mozilla's roots, compiled into the binary (public CAs).
    Bundled,
    /// The operating system's store (`/etc/ssl/certs`, `SSL_CERT_FILE`, `SSL_CERT_DIR`).
    System,
    /// Only the CAs in `ca_file` (a fleet's private CA).
    File,
}

/// The TLS files of one upload sink.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TlsFiles {
    /// `None`: `file` when `ca_file` is set, else `bundled`.
    pub trust: Option<Trust>,
    /// PEM bundle of the CAs to trust (`trust = "file"`).
    pub ca_file: Option<PathBuf>,
    /// PEM certificate chain presented to the server, leaf first.
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert`.
    pub client_key: Option<PathBuf>,
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read the {what} {}", path.display()))
}

/// The certificates of a PEM file; none is an error.
fn certificates(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let pem = read(path, what)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("the {what} {} is not valid PEM", path.display()))?;
    if certs.is_empty() {
        bail!(
            "the {what} {} holds no certificate (expected -----BEGIN CERTIFICATE-----)",
            path.display()
        );
    }
    Ok(certs)
}

/// Checks a certificate's validity period at `now`: expired is an error;
/// not valid yet only warns, as a board without a clock battery starts in 1970.
fn check_dates(cert: &CertificateDer, path: &Path, what: &str, now: SystemTime) -> Result<()> {
    let parsed = x509_cert::Certificate::from_der(cert.as_ref())
        .with_context(|| format!("a certificate in the {what} {} does not parse", path.display()))?;
    let validity = parsed.tbs_certificate().validity();
    let not_after = validity.not_after.to_system_time();
    if not_after < now {
        bail!(
            "a certificate in the {what} {} expired on {}: renew it",
            path.display(),
            humantime::format_rfc3339_seconds(not_after)
        );
    }
    let not_before = validity.not_before.to_system_time();
    if not_before > now {
        log::warn!(
            "a certificate in the {what} {} is valid only from {}; is the device's clock right?",
            path.display(),
            humantime::format_rfc3339_seconds(not_before)
        );
    }
    Ok(())
}

impl TlsFiles {
    /// The trust in force (see [`TlsFiles::trust`]).
    pub fn effective_trust(&self) -> Trust {
        self.trust.unwrap_or(if self.ca_file.is_some() {
            Trust::File
        } else {
            Trust::Bundled
        })
    }

    /// Checks what can be checked without reading files.
    pub fn validate(&self) -> Result<()> {
        match (self.effective_trust(), &self.ca_file) {
            (Trust::File, None) => bail!("trust = \"file\" needs ca_file (a PEM bundle of the CAs to trust)"),
            (Trust::Bundled | Trust::System, Some(_)) => {
                bail!("ca_file is used only with trust = \"file\" (drop the trust key, or the ca_file)")
            }
            _ => {}
        }
        if self.client_cert.is_some() != self.client_key.is_some() {
            bail!("client_cert and client_key go together: set both or neither");
        }
        Ok(())
    }

    /// Reads and checks every file and builds the TLS configuration.
    pub fn load(&self, now: SystemTime) -> Result<TlsConfig> {
        self.validate()?;
        let roots = match self.effective_trust() {
            Trust::Bundled => RootCerts::WebPki,
            Trust::System => system_roots()?,
            Trust::File => {
                let path = self.ca_file.as_deref().expect("validated");
                let certs = certificates(path, "ca_file")?;
                for cert in &certs {
                    check_dates(cert, path, "ca_file", now)?;
                }
                RootCerts::Specific(Arc::new(ureq_certificates(&certs)))
            }
        };
        let mut builder = TlsConfig::builder().root_certs(roots);
        if let (Some(cert), Some(key)) = (&self.client_cert, &self.client_key) {
            builder = builder.client_cert(Some(client_identity(cert, key, now)?));
        }
        Ok(builder.build())
    }
}

/// The same certificates in ureq's type.
fn ureq_certificates(certs: &[CertificateDer]) -> Vec<ureq::tls::Certificate<'static>> {
    certs
        .iter()
        .map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned())
        .collect()
}

/// The operating system's trust store; an empty one is an error.
fn system_roots() -> Result<RootCerts> {
    let found = rustls_native_certs::load_native_certs();
    for error in &found.errors {
        log::warn!("system trust store: {error}");
    }
    if found.certs.is_empty() {
        bail!("trust = \"system\" found no CA certificate in the system store (install ca-certificates, or set SSL_CERT_FILE)");
    }
    Ok(RootCerts::Specific(Arc::new(ureq_certificates(&found.certs))))
}

/// The client certificate chain and its key, checked to belong together.
fn client_identity(cert_path: &Path, key_path: &Path, now: SystemTime) -> Result<ClientCert> {
    let chain = certificates(cert_path, "client_cert")?;
    check_dates(&chain[0], cert_path, "client_cert", now)?;
    let key_pem = read(key_path, "client_key")?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).with_context(|| {
        format!(
            "the client_key {} holds no private key in PEM (PKCS#8, PKCS#1 or SEC1)",
            key_path.display()
        )
    })?;
    let provider = rustls::crypto::ring::default_provider();
    rustls::sign::CertifiedKey::from_der(chain.clone(), key, &provider).map_err(|e| {
        anyhow::anyhow!(
            "the client_key {} does not belong to the client_cert {} ({e})",
            key_path.display(),
            cert_path.display()
        )
    })?;
    let key = ureq::tls::PrivateKey::from_pem(&key_pem)
        .with_context(|| format!("the client_key {} is not usable", key_path.display()))?;
    Ok(ClientCert::new_with_certs(&ureq_certificates(&chain), key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("normgate-tls-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A self-signed certificate valid from `from` to `until` days from now, and its key.
    fn certificate(from: i64, until: i64) -> (String, String) {
        let mut params = rcgen::CertificateParams::new(vec!["device".into()]).unwrap();
        let at = |days: i64| time::OffsetDateTime::now_utc() + time::Duration::days(days);
        params.not_before = at(from);
        params.not_after = at(until);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn files(dir: &Path, cert: &str, key: &str) -> TlsFiles {
        std::fs::write(dir.join("cert.pem"), cert).unwrap();
        std::fs::write(dir.join("key.pem"), key).unwrap();
        TlsFiles {
            trust: None,
            ca_file: Some(dir.join("cert.pem")),
            client_cert: Some(dir.join("cert.pem")),
            client_key: Some(dir.join("key.pem")),
        }
    }

    fn error(files: &TlsFiles) -> String {
        format!("{:#}", files.load(SystemTime::now()).unwrap_err())
    }

    #[test]
    fn good_files_load_and_each_bad_one_is_named() {
        let dir = scratch("files");
        let (cert, key) = certificate(-1, 30);
        let good = files(&dir, &cert, &key);
        assert_eq!(good.effective_trust(), Trust::File);
        good.load(SystemTime::now()).unwrap();

        let (_, other_key) = certificate(-1, 30);
        std::fs::write(dir.join("other.pem"), other_key).unwrap();
        let mismatched = TlsFiles {
            client_key: Some(dir.join("other.pem")),
            ..good.clone()
        };
        assert!(error(&mismatched).contains("does not belong"), "{}", error(&mismatched));

        let missing = TlsFiles {
            ca_file: Some(dir.join("nowhere.pem")),
            ..good.clone()
        };
        assert!(error(&missing).contains("cannot read the ca_file"));

        std::fs::write(dir.join("empty.pem"), "not a certificate\n").unwrap();
        let empty = TlsFiles {
            ca_file: Some(dir.join("empty.pem")),
            ..good.clone()
        };
        assert!(error(&empty).contains("holds no certificate"));

        let (old, old_key) = certificate(-60, -1);
        let expired = files(&scratch("expired"), &old, &old_key);
        assert!(error(&expired).contains("expired on"), "{}", error(&expired));

        // A certificate from the future only warns: the clock may be wrong.
        let (future, future_key) = certificate(2, 30);
        files(&scratch("future"), &future, &future_key)
            .load(SystemTime::now())
            .unwrap();
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn contradicting_keys_are_refused() {
        let only_cert = TlsFiles {
            client_cert: Some("c.pem".into()),
            ..TlsFiles::default()
        };
        assert!(only_cert.validate().unwrap_err().to_string().contains("both"));
        let file_without_ca = TlsFiles {
            trust: Some(Trust::File),
            ..TlsFiles::default()
        };
        assert!(file_without_ca.validate().unwrap_err().to_string().contains("ca_file"));
        let system_with_ca = TlsFiles {
            trust: Some(Trust::System),
            ca_file: Some("ca.pem".into()),
            ..TlsFiles::default()
        };
        assert!(system_with_ca.validate().is_err());
        assert_eq!(TlsFiles::default().effective_trust(), Trust::Bundled);
    }
}
