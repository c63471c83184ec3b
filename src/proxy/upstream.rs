//! Reaching the upstream: its URL, and a connector that walks DNS, TCP and
//! TLS with a deadline and tags every failure with its layer, so "refused",
//! "timed out" and "not TLS" are told apart.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use super::io::BoxIo;
use crate::proto::failure::{TlsFailure, UpstreamFailure};
use crate::tls::client::server_name;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Ws,
    Wss,
    Http,
    Https,
}

impl Scheme {
    pub fn is_tls(self) -> bool {
        matches!(self, Scheme::Wss | Scheme::Https)
    }

    fn default_port(self) -> u16 {
        if self.is_tls() {
            443
        } else {
            80
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Scheme::Ws => "ws",
            Scheme::Wss => "wss",
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// `ws://`, `wss://`, `http://` or `https://` host:port with an optional
/// path prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamUrl {
    pub scheme: Scheme,
    /// Without brackets for IPv6.
    pub host: String,
    pub port: u16,
    /// Prefix for every request target; empty or starting with `/`.
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid upstream URL {url:?}: {why}")]
pub struct UrlError {
    pub url: String,
    pub why: &'static str,
}

impl FromStr for UpstreamUrl {
    type Err = UrlError;

    fn from_str(url: &str) -> Result<Self, UrlError> {
        let err = |why| UrlError {
            url: url.to_string(),
            why,
        };
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| err("expected ws://, wss://, http:// or https://"))?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "ws" => Scheme::Ws,
            "wss" => Scheme::Wss,
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            _ => return Err(err("expected ws://, wss://, http:// or https://")),
        };
        let (authority, path) = match rest.find(['/', '?', '#']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if path.contains(['?', '#']) {
            return Err(err(
                "only a path prefix may follow the host (no query or fragment)",
            ));
        }
        if authority.contains('@') {
            return Err(err(
                "credentials in the URL are not supported; use --set-request-header",
            ));
        }
        let (host, port) = split_host_port(authority).ok_or_else(|| err("bad host or port"))?;
        if host.is_empty() {
            return Err(err("missing host"));
        }
        Ok(UpstreamUrl {
            scheme,
            host: host.to_string(),
            port: port.unwrap_or(scheme.default_port()),
            path: path.trim_end_matches('/').to_string(),
        })
    }
}

/// Splits `host[:port]` or `[v6][:port]`.
pub fn split_host_port(authority: &str) -> Option<(&str, Option<u16>)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse().ok()?),
            None if after.is_empty() => None,
            None => return None,
        };
        return Some((host, port));
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => Some((h, Some(p.parse().ok()?))),
        Some(_) => None,
        None => Some((authority, None)),
    }
}

impl UpstreamUrl {
    /// `host:port`, IPv6 in brackets.
    pub fn authority(&self) -> String {
        authority(&self.host, self.port)
    }

    /// The target sent upstream for a client's request target.
    pub fn map_target(&self, target: &str) -> String {
        if self.path.is_empty() || !target.starts_with('/') {
            target.to_string()
        } else {
            format!("{}{}", self.path, target)
        }
    }
}

pub fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

impl fmt::Display for UpstreamUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}://{}{}",
            self.scheme.as_str(),
            self.authority(),
            self.path
        )
    }
}

/// Where to connect, as the connector needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

impl From<&UpstreamUrl> for Endpoint {
    fn from(u: &UpstreamUrl) -> Self {
        Endpoint {
            host: u.host.clone(),
            port: u.port,
            tls: u.scheme.is_tls(),
        }
    }
}

/// An open upstream connection.
pub struct Connected {
    pub io: BoxIo,
    pub addr: SocketAddr,
    /// The resolved addresses (for `check`'s dns layer).
    pub resolved: Vec<SocketAddr>,
    pub tls: Option<TlsInfo>,
}

/// What the TLS handshake settled, for reports.
#[derive(Debug, Clone)]
pub struct TlsInfo {
    pub version: String,
    pub alpn: Option<String>,
    pub peer_certs: Vec<rustls::pki_types::CertificateDer<'static>>,
}

/// Opens connections to upstreams with one deadline for DNS, TCP and TLS.
#[derive(Clone)]
pub struct Connector {
    pub timeout: Duration,
    pub tls: Arc<rustls::ClientConfig>,
}

impl Connector {
    pub async fn connect(&self, ep: &Endpoint) -> Result<Connected, UpstreamFailure> {
        let deadline = Instant::now() + self.timeout;
        let addrs = self.resolve(ep, deadline).await?;
        let (tcp, addr) = self.tcp(&addrs, ep, deadline).await?;
        let _ = tcp.set_nodelay(true);
        if !ep.tls {
            return Ok(Connected {
                io: Box::new(tcp),
                addr,
                resolved: addrs,
                tls: None,
            });
        }
        let (io, info) = self.tls_handshake(tcp, ep, deadline).await?;
        Ok(Connected {
            io,
            addr,
            resolved: addrs,
            tls: Some(info),
        })
    }

    /// The TLS layer over an open TCP connection, by `deadline`; public so
    /// `check` can walk the layers one at a time.
    pub async fn tls_handshake(
        &self,
        tcp: TcpStream,
        ep: &Endpoint,
        deadline: Instant,
    ) -> Result<(BoxIo, TlsInfo), UpstreamFailure> {
        let auth = authority(&ep.host, ep.port);
        let name = server_name(&ep.host).map_err(|detail| UpstreamFailure::Tls {
            addr: auth.clone(),
            kind: TlsFailure::Other,
            detail,
        })?;
        let connector = tokio_rustls::TlsConnector::from(self.tls.clone());
        let left = deadline.saturating_duration_since(Instant::now());
        let stream = match tokio::time::timeout(left, connector.connect(name, tcp)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                let (kind, detail) = classify_tls(&e);
                return Err(UpstreamFailure::Tls {
                    addr: auth,
                    kind,
                    detail,
                });
            }
            Err(_) => {
                return Err(UpstreamFailure::Tls {
                    addr: auth,
                    kind: TlsFailure::NotTls,
                    detail: format!(
                        "no TLS answer within {}",
                        humantime::format_duration(self.timeout)
                    ),
                })
            }
        };
        let (_, conn) = stream.get_ref();
        let info = TlsInfo {
            version: conn
                .protocol_version()
                .map(|v| format!("{v:?}"))
                .unwrap_or_default(),
            alpn: conn
                .alpn_protocol()
                .map(|a| String::from_utf8_lossy(a).into_owned()),
            peer_certs: conn
                .peer_certificates()
                .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
                .unwrap_or_default(),
        };
        Ok((Box::new(stream), info))
    }

    /// The DNS layer: the addresses of `ep` (an IP literal needs no lookup).
    pub async fn resolve(
        &self,
        ep: &Endpoint,
        deadline: Instant,
    ) -> Result<Vec<SocketAddr>, UpstreamFailure> {
        let bare = ep.host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, ep.port)]);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let unresolved = |detail: String| UpstreamFailure::Unresolved {
            host: ep.host.clone(),
            detail,
        };
        match tokio::time::timeout(left, tokio::net::lookup_host((bare, ep.port))).await {
            Ok(Ok(addrs)) => {
                let addrs: Vec<_> = addrs.collect();
                if addrs.is_empty() {
                    Err(unresolved("no addresses".into()))
                } else {
                    Ok(addrs)
                }
            }
            Ok(Err(e)) => Err(unresolved(e.to_string())),
            Err(_) => Err(unresolved(format!(
                "no answer from the resolver within {}",
                humantime::format_duration(self.timeout)
            ))),
        }
    }

    /// The TCP layer: the first of `addrs` that accepts, by `deadline`.
    pub async fn tcp(
        &self,
        addrs: &[SocketAddr],
        ep: &Endpoint,
        deadline: Instant,
    ) -> Result<(TcpStream, SocketAddr), UpstreamFailure> {
        let mut last = None;
        for addr in addrs {
            let left = deadline.saturating_duration_since(Instant::now());
            let a = addr.to_string();
            match tokio::time::timeout(left, super::pacing::connect(*addr)).await {
                Ok(Ok(s)) => return Ok((s, *addr)),
                Ok(Err(e)) => last = Some(classify_tcp(a, &e)),
                Err(_) => {
                    last = Some(UpstreamFailure::Timeout {
                        addr: a,
                        after: self.timeout,
                    });
                    break;
                }
            }
        }
        Err(last.unwrap_or_else(|| UpstreamFailure::Unresolved {
            host: ep.host.clone(),
            detail: "no addresses".into(),
        }))
    }
}

fn classify_tcp(addr: String, e: &std::io::Error) -> UpstreamFailure {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::ConnectionRefused => UpstreamFailure::Refused { addr },
        ErrorKind::TimedOut => UpstreamFailure::Timeout {
            addr,
            after: Duration::ZERO,
        },
        ErrorKind::HostUnreachable | ErrorKind::NetworkUnreachable => {
            UpstreamFailure::Unreachable {
                addr,
                detail: e.to_string(),
            }
        }
        _ => UpstreamFailure::Tcp {
            addr,
            detail: e.to_string(),
        },
    }
}

/// Names the TLS failure from the error rustls reported.
pub fn classify_tls(e: &std::io::Error) -> (TlsFailure, String) {
    use rustls::{CertificateError as C, Error as E};
    let detail = e.to_string();
    if let Some(re) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        let kind = match re {
            E::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => TlsFailure::Untrusted,
            E::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
                TlsFailure::NameMismatch
            }
            E::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => TlsFailure::Expired,
            E::InvalidMessage(_) | E::InappropriateMessage { .. } => TlsFailure::NotTls,
            _ => TlsFailure::Other,
        };
        return (kind, re.to_string());
    }
    match e.kind() {
        std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset => {
            (TlsFailure::ClosedDuringHandshake, detail)
        }
        _ => (TlsFailure::Other, detail),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let u: UpstreamUrl = "ws://127.0.0.1:5173".parse().unwrap();
        assert_eq!(
            (u.scheme, u.host.as_str(), u.port, u.path.as_str()),
            (Scheme::Ws, "127.0.0.1", 5173, "")
        );
        let u: UpstreamUrl = "wss://example.com/api/".parse().unwrap();
        assert_eq!((u.port, u.path.as_str()), (443, "/api"));
        assert_eq!(u.map_target("/ws?x=1"), "/api/ws?x=1");
        assert_eq!(u.to_string(), "wss://example.com:443/api");
        let u: UpstreamUrl = "http://[::1]:8080".parse().unwrap();
        assert_eq!(
            (u.host.as_str(), u.authority()),
            ("::1", "[::1]:8080".to_string())
        );
        for bad in [
            "127.0.0.1:80",
            "ftp://x",
            "ws://",
            "ws://h:99999",
            "ws://u@h",
            "ws://h/p?q",
        ] {
            assert!(bad.parse::<UpstreamUrl>().is_err(), "{bad}");
        }
    }
}
