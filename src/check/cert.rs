//! The server certificate as `check` shows it: subject, issuer, validity
//! and SANs read with x509-parser, and a verifier wrapper that keeps the
//! certificate even when verification fails (to say *which* one failed).

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde::Serialize;
use x509_parser::extensions::GeneralName;

/// What a person wants to know about a server certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertSummary {
    /// RFC 4514 form, e.g. `CN=example.com`.
    pub subject: String,
    pub issuer: String,
    /// RFC 3339, UTC.
    pub not_before: String,
    pub not_after: String,
    /// Whole days until `not_after` (negative once expired).
    pub expires_in_days: i64,
    /// `DNS:name` and `IP:address` entries, in certificate order.
    pub sans: Vec<String>,
    pub self_signed: bool,
}

impl CertSummary {
    /// One line for the checklist.
    pub fn describe(&self) -> String {
        let when = if self.expires_in_days < 0 {
            format!(
                "expired {} ({} days ago)",
                self.not_after, -self.expires_in_days
            )
        } else {
            format!(
                "valid until {} (in {} days)",
                self.not_after, self.expires_in_days
            )
        };
        let sans = if self.sans.is_empty() {
            "no SANs".to_string()
        } else {
            format!("SANs {}", self.sans.join(", "))
        };
        let issuer = if self.self_signed {
            "self-signed".to_string()
        } else {
            format!("issued by {}", self.issuer)
        };
        format!("certificate {}, {issuer}, {when}, {sans}", self.subject)
    }
}

/// RFC 3339 in UTC for any second count. Certificates carry dates from
/// before 1970 to 9999 and beyond; humantime panics outside its range, so
/// this is the civil-from-days algorithm (H. Hinnant) on plain integers.
fn rfc3339(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// Reads a DER certificate; `None` when it does not parse (a broken
/// certificate is rustls' to reject, not ours to crash on).
pub fn summarize(der: &[u8], now: SystemTime) -> Option<CertSummary> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let validity = cert.validity();
    let not_after = validity.not_after.timestamp();
    let now_unix = match now.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(_) => 0,
    };
    let sans = match cert.subject_alternative_name() {
        Ok(Some(ext)) => ext
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some(format!("DNS:{d}")),
                GeneralName::IPAddress(b) => ip(b).map(|a| format!("IP:{a}")),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    let subject = cert.subject().to_string();
    let issuer = cert.issuer().to_string();
    Some(CertSummary {
        self_signed: subject == issuer,
        subject,
        issuer,
        not_before: rfc3339(validity.not_before.timestamp()),
        not_after: rfc3339(not_after),
        expires_in_days: (not_after - now_unix).div_euclid(86_400),
        sans,
    })
}

fn ip(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => <[u8; 4]>::try_from(b).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(b).ok().map(IpAddr::from),
        _ => None,
    }
}

/// Wraps the real verifier and remembers the end-entity certificate it
/// was shown, so a failed handshake can still say whose certificate it was.
#[derive(Debug)]
pub struct Recorder {
    inner: Arc<dyn ServerCertVerifier>,
    seen: Mutex<Option<CertificateDer<'static>>>,
}

impl Recorder {
    pub fn new(inner: Arc<dyn ServerCertVerifier>) -> Arc<Recorder> {
        Arc::new(Recorder {
            inner,
            seen: Mutex::new(None),
        })
    }

    /// The last end-entity certificate presented, if any.
    pub fn seen(&self) -> Option<CertificateDer<'static>> {
        self.seen
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self
            .seen
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) =
            Some(end_entity.clone().into_owned());
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.inner.requires_raw_public_keys()
    }

    fn root_hint_subjects(&self) -> Option<&[rustls::DistinguishedName]> {
        self.inner.root_hint_subjects()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_not_a_certificate() {
        assert_eq!(summarize(b"not DER at all", SystemTime::now()), None);
        assert_eq!(summarize(&[], SystemTime::now()), None);
    }

    #[test]
    fn ip_sans_are_four_or_sixteen_bytes() {
        assert_eq!(ip(&[127, 0, 0, 1]), Some("127.0.0.1".parse().unwrap()));
        assert_eq!(ip(&[0; 16]), Some("::".parse().unwrap()));
        assert_eq!(ip(&[1, 2, 3]), None);
    }

    #[test]
    fn dates_before_and_after_the_epoch() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(86_400), "1970-01-02T00:00:00Z");
        assert_eq!(rfc3339(-86_400), "1969-12-31T00:00:00Z");
        assert_eq!(rfc3339(951_782_400 + 3_723), "2000-02-29T01:02:03Z");
        assert_eq!(rfc3339(253_402_300_799), "9999-12-31T23:59:59Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}
