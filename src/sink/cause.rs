//! Why an upload attempt failed: a short label for Prometheus
//! (`normgate_upload_errors_total{cause}`) and what the operator can do
//! about it, logged the first time the cause appears.

use rustls::{AlertDescription, CertificateError};

/// One cause of failed attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cause {
    /// The metrics label.
    pub label: &'static str,
    /// What to fix.
    pub fix: &'static str,
}

const fn cause(label: &'static str, fix: &'static str) -> Cause {
    Cause { label, fix }
}

const UNKNOWN_ISSUER: Cause = cause(
    "unknown_issuer",
    "the server's certificate is not signed by a CA this device trusts: set ca_file to your CA's PEM bundle, or trust = \"system\"",
);
const SERVER_CERT_EXPIRED: Cause = cause(
    "server_cert_expired",
    "the server's certificate has expired, or this device's clock is wrong",
);
const SERVER_CERT_NOT_VALID_YET: Cause = cause(
    "server_cert_not_valid_yet",
    "the server's certificate is not valid yet: this device's clock is probably wrong (is NTP running?)",
);
const NAME_MISMATCH: Cause = cause(
    "name_mismatch",
    "the server's certificate does not name the host in the upload url: use the name the certificate was issued for",
);
const SERVER_CERT_INVALID: Cause = cause(
    "server_cert_invalid",
    "the server's certificate was refused; check it with `openssl s_client -connect HOST:PORT`",
);
const CLIENT_CERT_REFUSED: Cause = cause(
    "client_cert_refused",
    "the server wants a client certificate it trusts: set client_cert and client_key to a pair its CA signed",
);
const TLS: Cause = cause("tls", "the TLS handshake failed; the log line above says how");
const PROXY: Cause = cause(
    "proxy",
    "the proxy refused or failed the tunnel: check proxy (or HTTPS_PROXY) and NO_PROXY",
);
const DNS: Cause = cause(
    "dns",
    "the server's name does not resolve: check the url and the device's DNS",
);
const CONNECT: Cause = cause(
    "connect",
    "the server cannot be reached: check the url, the network and the server",
);
const TIMEOUT: Cause = cause("timeout", "the server did not answer within timeout_s");
const UNAUTHORIZED: Cause = cause(
    "unauthorized",
    "the server refused the token: check token_file or the token variable (SIGHUP re-reads the file)",
);
const THROTTLED: Cause = cause(
    "throttled",
    "the server asked to slow down; the device retries with backoff",
);
const SERVER_ERROR: Cause = cause(
    "server_error",
    "the server failed (5xx); the device retries with backoff",
);
const REFUSED: Cause = cause(
    "refused",
    "the server will never take this crop; it is kept in the queue's rejected/",
);
const OTHER: Cause = cause("other", "see the error in this log line");

/// The cause of an HTTP status that is not a success.
pub fn of_status(status: u16) -> Cause {
    match status {
        401 | 403 => UNAUTHORIZED,
        408 | 425 | 429 => THROTTLED,
        s if s >= 500 => SERVER_ERROR,
        _ => REFUSED,
    }
}

fn of_rustls(error: &rustls::Error) -> Cause {
    use rustls::Error as E;
    match error {
        E::InvalidCertificate(CertificateError::UnknownIssuer) => UNKNOWN_ISSUER,
        E::InvalidCertificate(CertificateError::Expired | CertificateError::ExpiredContext { .. }) => {
            SERVER_CERT_EXPIRED
        }
        E::InvalidCertificate(CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. }) => {
            SERVER_CERT_NOT_VALID_YET
        }
        E::InvalidCertificate(CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }) => {
            NAME_MISMATCH
        }
        E::InvalidCertificate(_) => SERVER_CERT_INVALID,
        E::AlertReceived(
            AlertDescription::CertificateRequired
            | AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateUnknown
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateRevoked
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::AccessDenied,
        ) => CLIENT_CERT_REFUSED,
        _ => TLS,
    }
}

/// The cause of a failed request.
pub fn of_error(error: &ureq::Error) -> Cause {
    use ureq::Error as E;
    match error {
        E::Rustls(e) => of_rustls(e),
        E::Io(io) => match io.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
            Some(e) => of_rustls(e),
            None if io.kind() == std::io::ErrorKind::TimedOut => TIMEOUT,
            None => CONNECT,
        },
        E::Tls(_) => TLS,
        E::ConnectProxyFailed(_) | E::InvalidProxyUrl => PROXY,
        E::HostNotFound => DNS,
        E::ConnectionFailed => CONNECT,
        E::Timeout(_) => TIMEOUT,
        E::StatusCode(status) => of_status(*status),
        _ => OTHER,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_failures_name_their_fix() {
        let wrapped = |e: rustls::Error| ureq::Error::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, e));
        let unknown = wrapped(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer));
        assert_eq!(of_error(&unknown).label, "unknown_issuer");
        assert!(of_error(&unknown).fix.contains("ca_file"));
        let refused = wrapped(rustls::Error::AlertReceived(AlertDescription::CertificateRequired));
        assert_eq!(of_error(&refused).label, "client_cert_refused");
        assert_eq!(of_error(&ureq::Error::HostNotFound).label, "dns");
    }

    #[test]
    fn statuses_map_to_what_the_operator_can_do() {
        assert_eq!(of_status(401).label, "unauthorized");
        assert_eq!(of_status(429).label, "throttled");
        assert_eq!(of_status(503).label, "server_error");
        assert_eq!(of_status(404).label, "refused");
    }
}
