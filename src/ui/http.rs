//! HTTP plumbing for the live view: the DNS-rebinding guard (`Host` and
//! `Origin` must name the view's own address), responses, query strings
//! and size-limited JSON bodies. Everything here treats the request as
//! untrusted input: no panics, clear 4xx answers.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{HeaderMap, Request, Response, StatusCode};
use serde::Serialize;

pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Largest request body the API reads: an injected message of
/// [`MAX_MESSAGE`] bytes in base64, with room for the JSON around it.
pub const MAX_BODY: usize = 2 << 20;

/// Largest message the API injects (payload bytes).
pub const MAX_MESSAGE: usize = 1 << 20;

/// Which `Host` (and `Origin`) values name this server. A page on another
/// site that resolves its own name to 127.0.0.1 (DNS rebinding) sends its
/// own name, so it is refused even though it reaches the socket.
#[derive(Debug, Clone)]
pub struct Guard {
    ip: IpAddr,
    port: u16,
}

impl Guard {
    pub fn new(bound: SocketAddr) -> Guard {
        Guard {
            ip: bound.ip(),
            port: bound.port(),
        }
    }

    /// Whether a `Host` header value names this server: its IP address
    /// (any IP literal when bound to every interface, which no rebinding
    /// page can send) or, on loopback, `localhost`; with its port.
    pub fn host_ok(&self, host: &str) -> bool {
        let Some((name, port)) = split_host_port(host) else {
            return false;
        };
        if port.unwrap_or(80) != self.port {
            return false;
        }
        if name.eq_ignore_ascii_case("localhost") {
            return self.ip.is_loopback() || self.ip.is_unspecified();
        }
        match name.parse::<IpAddr>() {
            Ok(ip) => self.ip.is_unspecified() || ip == self.ip,
            Err(_) => false,
        }
    }

    /// Whether an `Origin` header value is this server's own origin.
    pub fn origin_ok(&self, origin: &str) -> bool {
        origin
            .strip_prefix("http://")
            .is_some_and(|rest| !rest.contains('/') && self.host_ok(rest))
    }

    /// `None` when the request may go on, else why it is refused.
    pub fn check(&self, headers: &HeaderMap) -> Option<String> {
        let hosts: Vec<&HeaderValue> = headers.get_all(hyper::header::HOST).iter().collect();
        let host = match hosts.as_slice() {
            [one] => one.to_str().ok(),
            _ => None,
        };
        match host {
            Some(h) if self.host_ok(h) => {}
            Some(h) => return Some(format!("Host {h:?} is not this server's address")),
            None => return Some("a single Host header naming this server is required".into()),
        }
        for o in headers.get_all(hyper::header::ORIGIN) {
            match o.to_str() {
                Ok(o) if self.origin_ok(o) => {}
                Ok(o) => return Some(format!("Origin {o:?} is not this server")),
                Err(_) => return Some("unreadable Origin header".into()),
            }
        }
        None
    }
}

/// `host[:port]` or `[v6][:port]`; `None` when malformed.
fn split_host_port(s: &str) -> Option<(&str, Option<u16>)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        return match after {
            "" => Some((ip, None)),
            p => Some((ip, Some(p.strip_prefix(':')?.parse().ok()?))),
        };
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => Some((h, Some(p.parse().ok()?))),
        Some(_) => None,
        None => Some((s, None)),
    }
}

fn boxed(b: Full<Bytes>) -> Body {
    b.boxed_unsync()
}

/// Headers every answer carries: no caching of live data, no framing by
/// other sites (the page has buttons that act on connections).
fn harden(r: &mut Response<Body>) {
    let h = r.headers_mut();
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        ),
    );
    if !h.contains_key(CACHE_CONTROL) {
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
}

pub fn with_body(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Body> {
    let mut r = Response::new(boxed(Full::new(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    harden(&mut r);
    r
}

pub fn streaming(status: StatusCode, content_type: &'static str, body: Body) -> Response<Body> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    harden(&mut r);
    r
}

pub fn json<T: Serialize>(status: StatusCode, v: &T) -> Response<Body> {
    match serde_json::to_vec(v) {
        Ok(b) => with_body(status, "application/json", Bytes::from(b)),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot serialize the answer: {e}"),
        ),
    }
}

/// `{"error": "..."}` with `status`.
pub fn error(status: StatusCode, message: impl Into<String>) -> Response<Body> {
    #[derive(Serialize)]
    struct E {
        error: String,
        status: u16,
    }
    let body = serde_json::to_vec(&E {
        error: message.into(),
        status: status.as_u16(),
    })
    .unwrap_or_default();
    with_body(status, "application/json", Bytes::from(body))
}

/// An API failure: the status and what to tell the caller.
#[derive(Debug)]
pub struct ApiError(pub StatusCode, pub String);

impl ApiError {
    pub fn new(status: StatusCode, m: impl Into<String>) -> Self {
        ApiError(status, m.into())
    }
    pub fn bad(m: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, m)
    }
    pub fn into_response(self) -> Response<Body> {
        error(self.0, self.1)
    }
}

/// Reads a JSON request body: `415` unless `Content-Type` is JSON, `413`
/// past [`MAX_BODY`], `408` unless all of it arrives within `timeout`,
/// `400` when it does not parse as `T`. With `optional`, an empty body
/// (any content type) is `None`.
pub async fn read_json<T: serde::de::DeserializeOwned>(
    req: Request<Incoming>,
    optional: bool,
    timeout: Duration,
) -> Result<Option<T>, ApiError> {
    let is_json = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim())
        .is_some_and(|m| m.eq_ignore_ascii_case("application/json"));
    let declared = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if !optional && !is_json {
        return Err(not_json());
    }
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(too_large_body());
    }
    // hyper's header timeout ends at the head: a client that declares a
    // length and then stalls would hold one of the view's few client slots
    // for ever. A deadline on the whole body (not per read) also stops one
    // that trickles a byte at a time.
    let read = Limited::new(req.into_body(), MAX_BODY).collect();
    let Ok(read) = tokio::time::timeout(timeout, read).await else {
        return Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request body did not arrive within {} s",
                timeout.as_secs_f64()
            ),
        ));
    };
    let body = match read {
        Ok(c) => c.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large_body()),
        Err(e) => return Err(ApiError::bad(format!("cannot read the request body: {e}"))),
    };
    if optional && body.is_empty() {
        return Ok(None);
    }
    if !is_json {
        return Err(not_json());
    }
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|e| ApiError::bad(format!("malformed JSON body: {e}")))
}

fn not_json() -> ApiError {
    ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "send the body as JSON with Content-Type: application/json",
    )
}

fn too_large_body() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "request body over {} bytes; messages are limited to {} bytes",
            MAX_BODY, MAX_MESSAGE
        ),
    )
}

/// Query parameters, percent-decoded (`+` is a space); `None` when the
/// encoding is broken.
pub fn parse_query(q: &str) -> Option<Vec<(String, String)>> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            Some((percent_decode(k)?, percent_decode(v)?))
        })
        .collect()
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_rules() {
        let g = Guard::new("127.0.0.1:9001".parse().unwrap());
        assert!(g.host_ok("127.0.0.1:9001"));
        assert!(g.host_ok("localhost:9001"));
        assert!(g.host_ok("LOCALHOST:9001"));
        assert!(!g.host_ok("127.0.0.1:9002"));
        assert!(!g.host_ok("127.0.0.1"));
        assert!(!g.host_ok("evil.example:9001"));
        assert!(!g.host_ok("127.0.0.2:9001"));
        assert!(!g.host_ok("127.0.0.1:9001:1"));
        assert!(!g.host_ok("[::1]:9001"));
        assert!(g.origin_ok("http://localhost:9001"));
        assert!(!g.origin_ok("https://localhost:9001"));
        assert!(!g.origin_ok("http://localhost:9001/x"));
        assert!(!g.origin_ok("null"));

        let v6 = Guard::new("[::1]:80".parse().unwrap());
        assert!(v6.host_ok("[::1]"));
        assert!(v6.host_ok("[::1]:80"));
        assert!(v6.host_ok("localhost"));
        assert!(!v6.host_ok("[::1]:81"));

        let any = Guard::new("0.0.0.0:9001".parse().unwrap());
        assert!(any.host_ok("192.0.2.7:9001"));
        assert!(!any.host_ok("rebind.example:9001"));

        let lan = Guard::new("192.0.2.7:9001".parse().unwrap());
        assert!(lan.host_ok("192.0.2.7:9001"));
        assert!(!lan.host_ok("localhost:9001"));
    }

    #[test]
    fn queries_decode() {
        assert_eq!(
            parse_query("q=a+b%21&from=client&&x"),
            Some(vec![
                ("q".into(), "a b!".into()),
                ("from".into(), "client".into()),
                ("x".into(), "".into())
            ])
        );
        assert_eq!(parse_query("q=%zz"), None);
        assert_eq!(parse_query("q=%e9"), None, "not UTF-8");
        assert_eq!(parse_query("q=%"), None);
    }
}
