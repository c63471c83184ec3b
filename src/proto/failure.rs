//! Upstream failures, classified by layer (dns, tcp, tls), and what each
//! tells the user: the finding, and the plain-text answer a client gets in
//! place of the upstream's, so a browser user sees the cause too.

use std::time::Duration;

use super::event::{Finding, Severity};

/// Why a TLS handshake with the upstream failed, as far as it can be named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsFailure {
    /// The peer answered with something that is not TLS (ws:// vs wss://).
    NotTls,
    /// The chain does not lead to a trusted root.
    Untrusted,
    /// The certificate does not name the host we connected to.
    NameMismatch,
    Expired,
    /// The peer closed the connection during the handshake.
    ClosedDuringHandshake,
    Other,
}

/// A failure to reach the upstream, with the target and the raw error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamFailure {
    Unresolved {
        host: String,
        detail: String,
    },
    Refused {
        addr: String,
    },
    Timeout {
        addr: String,
        after: Duration,
    },
    Unreachable {
        addr: String,
        detail: String,
    },
    Tcp {
        addr: String,
        detail: String,
    },
    Tls {
        addr: String,
        kind: TlsFailure,
        detail: String,
    },
    /// Connected, but the upstream never answered the request head.
    NoResponse {
        addr: String,
        after: Duration,
    },
    /// Connected, but the connection ended or broke before a response head.
    Dropped {
        addr: String,
        detail: String,
    },
}

impl UpstreamFailure {
    /// The layer that failed: `dns`, `tcp`, `tls` or `http`.
    pub fn layer(&self) -> &'static str {
        match self {
            UpstreamFailure::Unresolved { .. } => "dns",
            UpstreamFailure::Refused { .. }
            | UpstreamFailure::Timeout { .. }
            | UpstreamFailure::Unreachable { .. }
            | UpstreamFailure::Tcp { .. } => "tcp",
            UpstreamFailure::Tls { .. } => "tls",
            UpstreamFailure::NoResponse { .. } | UpstreamFailure::Dropped { .. } => "http",
        }
    }

    /// The status a client gets instead of the upstream's answer.
    pub fn status(&self) -> u16 {
        match self {
            UpstreamFailure::Timeout { .. } | UpstreamFailure::NoResponse { .. } => 504,
            _ => 502,
        }
    }

    /// The finding code (the contract's, plus `upstream-unreachable`,
    /// `upstream-connect-failed` and `upstream-closed`).
    pub fn code(&self) -> &'static str {
        match self {
            UpstreamFailure::Unresolved { .. } => "upstream-unresolved",
            UpstreamFailure::Refused { .. } => "upstream-refused",
            UpstreamFailure::Timeout { .. } | UpstreamFailure::NoResponse { .. } => {
                "upstream-timeout"
            }
            // beyond the contract's codes: each names a different fix
            UpstreamFailure::Unreachable { .. } => "upstream-unreachable",
            UpstreamFailure::Tcp { .. } => "upstream-connect-failed",
            UpstreamFailure::Tls { .. } => "upstream-tls-failed",
            UpstreamFailure::Dropped { .. } => "upstream-closed",
        }
    }

    /// One line: what happened.
    pub fn message(&self) -> String {
        match self {
            UpstreamFailure::Unresolved { host, detail } => {
                format!("the upstream host {host} does not resolve ({detail})")
            }
            UpstreamFailure::Refused { addr } => {
                format!("connection to {addr} refused: nothing is listening there")
            }
            UpstreamFailure::Timeout { addr, after } => format!(
                "no answer from {addr} within {}: the connection attempt timed out",
                humantime::format_duration(*after)
            ),
            UpstreamFailure::Unreachable { addr, detail } => {
                format!("{addr} is unreachable ({detail})")
            }
            UpstreamFailure::Tcp { addr, detail } => format!("cannot connect to {addr}: {detail}"),
            UpstreamFailure::Tls { addr, kind, detail } => match kind {
                TlsFailure::NotTls => format!(
                    "the upstream {addr} is not speaking TLS (ws:// vs wss://?): {detail}"
                ),
                TlsFailure::Untrusted => {
                    format!("the certificate of {addr} is not trusted: {detail}")
                }
                TlsFailure::NameMismatch => {
                    format!("the certificate of {addr} is not valid for that name: {detail}")
                }
                TlsFailure::Expired => format!("the certificate of {addr} has expired: {detail}"),
                TlsFailure::ClosedDuringHandshake => format!(
                    "{addr} closed the connection during the TLS handshake (not TLS, or TLS refused): {detail}"
                ),
                TlsFailure::Other => format!("TLS handshake with {addr} failed: {detail}"),
            },
            UpstreamFailure::NoResponse { addr, after } => format!(
                "{addr} accepted the connection but sent no response within {}",
                humantime::format_duration(*after)
            ),
            UpstreamFailure::Dropped { addr, detail } => {
                format!("{addr} closed the connection without a response ({detail})")
            }
        }
    }

    /// What to check or change.
    pub fn hint(&self) -> &'static str {
        match self {
            UpstreamFailure::Unresolved { .. } => "Check the host name for typos. Inside Docker, other containers are reached by service name (ws://ws-server:8080), and `localhost` is the container itself.",
            UpstreamFailure::Refused { .. } => "Is the server running, on this port? A server bound to 127.0.0.1 inside a container is unreachable through Docker's port mapping: bind 0.0.0.0. Check with `nc -zv host port`.",
            UpstreamFailure::Timeout { .. } => "Packets are silently dropped: a firewall or security group, or a wrong host. (Nothing listening would be refused at once, not time out.)",
            UpstreamFailure::Unreachable { .. } => "There is no route to that address: check the host, VPN and network settings.",
            UpstreamFailure::Tcp { .. } => "The TCP connection could not be made; check the address and the network.",
            UpstreamFailure::Tls { kind, .. } => match kind {
                TlsFailure::NotTls | TlsFailure::ClosedDuringHandshake => "The server speaks plain ws://; use ws:// for it, or terminate TLS in front of it (TLS at the proxy or load balancer, plain ws:// to the backend is the common setup).",
                TlsFailure::Untrusted => "Trust the issuing CA with --upstream-ca FILE (PEM), or use --insecure to look at the traffic anyway (never in production).",
                TlsFailure::NameMismatch => "Connect with the name the certificate was issued for, or issue a certificate whose SAN includes this host (an IP address needs an IP SAN).",
                TlsFailure::Expired => "Renew the server certificate (and check the clocks of both machines).",
                TlsFailure::Other => "Compare with `openssl s_client -connect host:port -servername host`.",
            },
            UpstreamFailure::NoResponse { .. } => "The server accepted TCP but did not answer the request: it may be overloaded, stuck, or not an HTTP server on this port.",
            UpstreamFailure::Dropped { .. } => "The server closed the connection instead of answering: check its logs; it may reject the request outright or not speak HTTP on this port.",
        }
    }

    pub fn finding(&self) -> Finding {
        Finding::new(self.code(), Severity::Error, self.message(), self.hint())
            .observed(format!("{} layer failed", self.layer()))
            .view("upstream")
    }

    /// The plain-text body of the 502/504 the client receives.
    pub fn client_body(&self, upstream: &str) -> String {
        format!(
            "wstap could not get an answer from the upstream {upstream}.\n\n{}\n\n{}\n",
            self.message(),
            self.hint()
        )
    }
}

/// Why a client's TLS handshake with wstap failed (the TLS listener, and
/// interception in forward mode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientTlsFailure {
    /// The client closed before a whole ClientHello arrived: a pre-connect
    /// or a port probe rather than a failed handshake.
    ClosedBeforeHello,
    /// The client's first bytes were not TLS.
    NotTls { detail: String },
    /// The client rejected wstap's certificate: a certificate alert, or an
    /// orderly close right after it received the certificate.
    Refused { detail: String },
    /// The client's connection was reset during the handshake, before it
    /// read wstap's certificate: a browser dropping a spare connection.
    ClosedDuringHandshake { detail: String },
    /// No complete handshake within the limit.
    Timeout { after: Duration },
    /// wstap could not make a certificate for the requested name.
    Certificate { host: String, detail: String },
    /// Anything else (no common protocol version or cipher, a bad message).
    Other { detail: String },
}

impl ClientTlsFailure {
    /// One line: what happened.
    pub fn message(&self) -> String {
        match self {
            ClientTlsFailure::ClosedBeforeHello => {
                "the client closed the connection before starting TLS".into()
            }
            ClientTlsFailure::NotTls { detail } => format!(
                "the client did not speak TLS to this TLS listener (http:// or ws:// instead of https:// or wss://?): {detail}"
            ),
            ClientTlsFailure::Refused { detail } => {
                format!("the client refused wstap's certificate: {detail}")
            }
            ClientTlsFailure::ClosedDuringHandshake { detail } => format!(
                "the client dropped the connection during the TLS handshake before reading \
                 wstap's certificate (browsers drop spare connections so): {detail}"
            ),
            ClientTlsFailure::Timeout { after } => format!(
                "the client did not complete the TLS handshake within {}",
                humantime::format_duration(*after)
            ),
            ClientTlsFailure::Certificate { host, detail } => {
                format!("wstap could not make a certificate for {host}: {detail}")
            }
            ClientTlsFailure::Other { detail } => {
                format!("the TLS handshake with the client failed: {detail}")
            }
        }
    }

    /// Whether the client saw the certificate and said no.
    pub fn is_refused(&self) -> bool {
        matches!(self, ClientTlsFailure::Refused { .. })
    }

    /// Whether the client just went away (a pre-connect, a spare
    /// connection, a port probe): a close, not an error.
    pub fn is_client_gone(&self) -> bool {
        matches!(
            self,
            ClientTlsFailure::ClosedBeforeHello | ClientTlsFailure::ClosedDuringHandshake { .. }
        )
    }

    /// `client-tls-failed` for a refused certificate; `trust_hint` says how
    /// to make the client trust it (it depends on where the certificate
    /// came from).
    pub fn finding(&self, trust_hint: &str) -> Option<Finding> {
        self.is_refused().then(|| {
            Finding::new(
                "client-tls-failed",
                Severity::Error,
                self.message(),
                trust_hint,
            )
            .observed("tls layer failed")
            .view("client")
        })
    }
}

/// `tls-verification-disabled`: `--insecure` let an upstream's
/// certificate through unchecked.
pub fn verification_disabled(addr: &str) -> Finding {
    Finding::new(
        "tls-verification-disabled",
        Severity::Warning,
        format!(
            "the certificate of the upstream {addr} was not verified (--insecure): \
             anyone on the path could read and change this traffic"
        ),
        "--insecure is for debugging only. Trust the upstream's CA with --upstream-ca FILE (PEM) instead.",
    )
    .view("upstream")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_codes() {
        let r = UpstreamFailure::Refused {
            addr: "127.0.0.1:1".into(),
        };
        assert_eq!(
            (r.status(), r.code(), r.layer()),
            (502, "upstream-refused", "tcp")
        );
        let t = UpstreamFailure::Timeout {
            addr: "127.0.0.1:1".into(),
            after: Duration::from_secs(2),
        };
        assert_eq!((t.status(), t.code()), (504, "upstream-timeout"));
        let tls = UpstreamFailure::Tls {
            addr: "a:1".into(),
            kind: TlsFailure::NotTls,
            detail: "x".into(),
        };
        assert!(tls
            .message()
            .contains("not speaking TLS (ws:// vs wss://?)"));
        assert!(r.client_body("ws://127.0.0.1:1").contains("refused"));
        // a dropped or unroutable upstream is not called refused
        let d = UpstreamFailure::Dropped {
            addr: "a:1".into(),
            detail: "it closed the connection".into(),
        };
        assert_eq!((d.code(), d.status()), ("upstream-closed", 502));
        let u = UpstreamFailure::Unreachable {
            addr: "a:1".into(),
            detail: "no route".into(),
        };
        assert_eq!(u.code(), "upstream-unreachable");
    }

    #[test]
    fn only_a_refused_certificate_is_a_client_tls_finding() {
        let refused = ClientTlsFailure::Refused {
            detail: "it sent the alert unknown_ca".into(),
        };
        let f = refused.finding("trust the CA at /x/wstap-ca.pem").unwrap();
        assert_eq!(
            (f.code.as_str(), f.severity),
            ("client-tls-failed", Severity::Error)
        );
        assert!(f.message.contains("unknown_ca"), "{}", f.message);
        assert_eq!(f.hint, "trust the CA at /x/wstap-ca.pem");
        let not_tls = ClientTlsFailure::NotTls { detail: "x".into() };
        assert!(not_tls.finding("h").is_none());
        assert!(not_tls.message().contains("https://"));
        let w = verification_disabled("example.com:443");
        assert_eq!(
            (w.code.as_str(), w.severity),
            ("tls-verification-disabled", Severity::Warning)
        );
        assert!(w.message.contains("example.com:443") && w.hint.contains("debugging only"));
    }
}
