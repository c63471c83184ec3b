//! Misconfigured hops wstap can imitate to reproduce a failure locally:
//! nginx with a plain `proxy_pass`, and the idle limits of AWS ALB and
//! Cloudflare. Pure: the request transformation and the words; the I/O
//! shell applies the idle cut.

use std::time::Duration;

use super::event::{Finding, Severity};
use super::http::{Header, RequestHead, Version};

/// A hop to imitate (`--simulate NAME`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hop {
    /// nginx with `proxy_pass` and nothing else.
    NginxDefault,
    /// AWS Application Load Balancer defaults.
    Alb,
    /// Cloudflare's proxy on free and pro plans.
    Cloudflare,
}

/// When a simulated hop cuts an idle WebSocket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdleRule {
    pub after: Duration,
    /// Client traffic counts as activity (false: only upstream data does,
    /// as with nginx's `proxy_read_timeout`).
    pub count_client: bool,
    pub label: String,
}

/// Request headers nginx drops by default (ngx_http_proxy_module's
/// default header table sets them to empty) besides Host and Connection,
/// which it replaces.
const NGINX_DROPPED: &[&str] = &[
    "Host",
    "Connection",
    "Upgrade",
    "TE",
    "Keep-Alive",
    "Expect",
];

impl Hop {
    pub const NAMES: &'static [&'static str] = &["nginx-default", "alb", "cloudflare"];

    pub fn parse(name: &str) -> Option<Hop> {
        match name {
            "nginx-default" => Some(Hop::NginxDefault),
            "alb" => Some(Hop::Alb),
            "cloudflare" => Some(Hop::Cloudflare),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Hop::NginxDefault => "nginx-default",
            Hop::Alb => "alb",
            Hop::Cloudflare => "cloudflare",
        }
    }

    /// What the hop does, in one sentence.
    pub fn describe(self) -> &'static str {
        match self {
            Hop::NginxDefault => "nginx with a plain proxy_pass: the request goes upstream as HTTP/1.0 without Upgrade, with `Connection: close` and `Host` set to the upstream, and a WebSocket is cut after 60 s without data from the upstream (proxy_read_timeout)",
            Hop::Alb => "an AWS ALB with its default 60 s idle timeout: a WebSocket without traffic either way for 60 s is cut, with no close frame",
            Hop::Cloudflare => "Cloudflare's 100 s idle limit: a WebSocket without traffic either way for 100 s is cut, with no close frame",
        }
    }

    pub fn idle_rule(self) -> IdleRule {
        match self {
            Hop::NginxDefault => IdleRule {
                after: Duration::from_secs(60),
                count_client: false,
                label: "simulated nginx proxy_read_timeout 60s".into(),
            },
            Hop::Alb => IdleRule {
                after: Duration::from_secs(60),
                count_client: true,
                label: "simulated AWS ALB idle timeout 60s".into(),
            },
            Hop::Cloudflare => IdleRule {
                after: Duration::from_secs(100),
                count_client: true,
                label: "simulated Cloudflare idle limit 100s".into(),
            },
        }
    }

    /// The request as this hop forwards it. `upstream_host` is the
    /// upstream's host and `port` its port (nginx's `$proxy_host` leaves out
    /// a default port).
    pub fn forward(
        self,
        req: &RequestHead,
        upstream_host: &str,
        port: u16,
        tls: bool,
    ) -> RequestHead {
        match self {
            Hop::NginxDefault => {
                let default_port = if tls { 443 } else { 80 };
                let host = if port == default_port {
                    upstream_host.to_string()
                } else if upstream_host.contains(':') {
                    format!("[{upstream_host}]:{port}")
                } else {
                    format!("{upstream_host}:{port}")
                };
                let mut headers = vec![
                    Header::new("Host", host),
                    Header::new("Connection", "close"),
                ];
                headers.extend(
                    req.headers
                        .iter()
                        .filter(|h| !NGINX_DROPPED.iter().any(|d| h.name.eq_ignore_ascii_case(d)))
                        .cloned(),
                );
                RequestHead {
                    method: req.method.clone(),
                    target: req.target.clone(),
                    version: Version::Http10,
                    headers,
                }
            }
            Hop::Alb | Hop::Cloudflare => req.clone(),
        }
    }

    /// The info finding each affected connection gets, so nobody leaves a
    /// simulation on by accident.
    pub fn finding(self) -> Finding {
        Finding::new(
            "simulated-hop",
            Severity::Info,
            format!("wstap is simulating {} (--simulate {})", self.describe(), self.name()),
            "This connection is deliberately broken to reproduce a failure; drop --simulate to relay normally.",
        )
        .view("wstap")
    }
}

/// The info finding for a bare `--idle-timeout`.
pub fn idle_cut_finding(after: Duration) -> Finding {
    Finding::new(
        "simulated-hop",
        Severity::Info,
        format!(
            "wstap cuts this WebSocket after {} without traffic either way (--idle-timeout), as a load balancer does",
            humantime::format_duration(after)
        ),
        "This connection is deliberately broken to reproduce a failure; drop --idle-timeout to relay normally.",
    )
    .view("wstap")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::frame::Parsed;
    use crate::proto::http::parse_request_head;

    #[test]
    fn nginx_default_forwards_like_nginx_does() {
        // what nginx 1.22 sent upstream for this request, captured from a
        // real nginx with `proxy_pass http://127.0.0.1:38127;`
        let client = b"GET /chat?x=1 HTTP/1.1\r\nHost: app.example:9000\r\nUser-Agent: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nOrigin: http://app.example\r\nTE: trailers\r\nKeep-Alive: 300\r\nExpect: 100-continue\r\nX-Dup: 1\r\nX-Dup: 2\r\n\r\n";
        let nginx = b"GET /chat?x=1 HTTP/1.0\r\nHost: 127.0.0.1:38127\r\nConnection: close\r\nUser-Agent: t\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nOrigin: http://app.example\r\nX-Dup: 1\r\nX-Dup: 2\r\n\r\n";
        let Ok(Parsed::Done(req, _)) = parse_request_head(client) else {
            panic!()
        };
        let out = Hop::NginxDefault.forward(&req, "127.0.0.1", 38127, false);
        assert_eq!(
            String::from_utf8_lossy(&out.to_bytes()),
            String::from_utf8_lossy(nginx)
        );
        assert_eq!(
            Hop::NginxDefault
                .forward(&req, "example.com", 80, false)
                .headers[0]
                .value,
            b"example.com"
        );
    }

    #[test]
    fn presets() {
        assert_eq!(
            Hop::parse("alb").unwrap().idle_rule().after,
            Duration::from_secs(60)
        );
        assert!(Hop::parse("alb").unwrap().idle_rule().count_client);
        assert_eq!(
            Hop::parse("cloudflare").unwrap().idle_rule().after,
            Duration::from_secs(100)
        );
        assert!(!Hop::NginxDefault.idle_rule().count_client);
        assert!(Hop::parse("haproxy").is_none());
        for n in Hop::NAMES {
            assert_eq!(Hop::parse(n).unwrap().name(), *n);
        }
    }
}
