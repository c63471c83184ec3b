//! The opening handshake (RFC 6455 §4): what makes a request an upgrade
//! attempt, the accept key, and what a 101 negotiated (subprotocol,
//! extensions, permessage-deflate parameters per RFC 7692 §7).

use base64::Engine;
use sha1::{Digest, Sha1};

use super::http::{Headers, RequestHead, ResponseHead};

/// RFC 6455 §1.3's GUID, appended to the key before hashing.
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// A request is a handshake attempt when it carries `Sec-WebSocket-Key`,
/// even if a hop stripped `Upgrade`/`Connection`, or when it asks for
/// `Upgrade: websocket` at all.
pub fn is_attempt(req: &RequestHead) -> bool {
    req.has_header("Sec-WebSocket-Key") || req.has_token("Upgrade", "websocket")
}

/// `Sec-WebSocket-Accept` for a key: base64(SHA-1(key + GUID)).
pub fn accept_key(key: &str) -> String {
    let mut h = Sha1::new();
    h.update(key.trim().as_bytes());
    h.update(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// One entry of a `Sec-WebSocket-Extensions` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extension {
    pub name: String,
    pub params: Vec<(String, Option<String>)>,
}

/// Parses `Sec-WebSocket-Extensions` values (all header lines together).
pub fn parse_extensions<'a>(values: impl IntoIterator<Item = &'a str>) -> Vec<Extension> {
    let mut out = Vec::new();
    for value in values {
        for ext in value.split(',') {
            let mut parts = ext.split(';').map(str::trim);
            let Some(name) = parts.next().filter(|n| !n.is_empty()) else {
                continue;
            };
            let params = parts
                .filter(|p| !p.is_empty())
                .map(|p| match p.split_once('=') {
                    Some((k, v)) => (
                        k.trim().to_ascii_lowercase(),
                        Some(v.trim().trim_matches('"').to_string()),
                    ),
                    None => (p.to_ascii_lowercase(), None),
                })
                .collect();
            out.push(Extension {
                name: name.to_ascii_lowercase(),
                params,
            });
        }
    }
    out
}

/// Parameters of a negotiated permessage-deflate (RFC 7692 §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeflateParams {
    pub server_no_context_takeover: bool,
    pub client_no_context_takeover: bool,
    pub server_max_window_bits: Option<u8>,
    pub client_max_window_bits: Option<u8>,
}

impl DeflateParams {
    fn from_extension(e: &Extension) -> Self {
        let mut p = DeflateParams {
            server_no_context_takeover: false,
            client_no_context_takeover: false,
            server_max_window_bits: None,
            client_max_window_bits: None,
        };
        for (k, v) in &e.params {
            let bits = v.as_deref().and_then(|v| v.parse::<u8>().ok());
            match k.as_str() {
                "server_no_context_takeover" => p.server_no_context_takeover = true,
                "client_no_context_takeover" => p.client_no_context_takeover = true,
                "server_max_window_bits" => p.server_max_window_bits = bits.or(Some(15)),
                "client_max_window_bits" => p.client_max_window_bits = bits.or(Some(15)),
                _ => {}
            }
        }
        p
    }
}

/// What a 101 response settled for the connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Negotiated {
    pub subprotocol: Option<String>,
    pub extensions: Vec<Extension>,
    pub deflate: Option<DeflateParams>,
}

impl Negotiated {
    /// Reads the negotiation from the response the client received.
    pub fn from_response(res: &ResponseHead) -> Self {
        let values: Vec<String> = header_values(res, "Sec-WebSocket-Extensions");
        let extensions = parse_extensions(values.iter().map(String::as_str));
        let deflate = extensions
            .iter()
            .find(|e| e.name == "permessage-deflate")
            .map(DeflateParams::from_extension);
        Negotiated {
            subprotocol: res
                .header("Sec-WebSocket-Protocol")
                .map(|s| s.trim().to_string()),
            extensions,
            deflate,
        }
    }

    /// True when an extension other than permessage-deflate was agreed:
    /// its use of RSV bits is then unknown and not judged.
    pub fn has_unknown_extension(&self) -> bool {
        self.extensions
            .iter()
            .any(|e| e.name != "permessage-deflate")
    }
}

/// Every value of a header, in order (duplicates are separate entries).
pub fn header_values(h: &impl Headers, name: &str) -> Vec<String> {
    h.headers()
        .iter()
        .filter(|x| x.name.eq_ignore_ascii_case(name))
        .map(|x| x.value_str().into_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::frame::Parsed;
    use crate::proto::http::{parse_request_head, parse_response_head};

    #[test]
    fn rfc_example_accept_key() {
        // RFC 6455 §1.3
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn attempts_are_recognised_even_when_stripped() {
        let p = |raw: &[u8]| match parse_request_head(raw) {
            Ok(Parsed::Done(h, _)) => h,
            other => panic!("{other:?}"),
        };
        assert!(is_attempt(&p(
            b"GET / HTTP/1.0\r\nSec-WebSocket-Key: x\r\n\r\n"
        )));
        assert!(is_attempt(&p(
            b"GET / HTTP/1.1\r\nUpgrade: WebSocket\r\n\r\n"
        )));
        assert!(!is_attempt(&p(b"GET / HTTP/1.1\r\nUpgrade: h2c\r\n\r\n")));
    }

    #[test]
    fn deflate_parameters() {
        let raw = b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits=10; server_no_context_takeover\r\nSec-WebSocket-Protocol: chat\r\n\r\n";
        let Ok(Parsed::Done(res, _)) = parse_response_head(raw) else {
            panic!()
        };
        let n = Negotiated::from_response(&res);
        assert_eq!(n.subprotocol.as_deref(), Some("chat"));
        let d = n.deflate.unwrap();
        assert!(d.server_no_context_takeover && !d.client_no_context_takeover);
        assert_eq!(d.client_max_window_bits, Some(10));
        assert_eq!(d.server_max_window_bits, None);
        assert!(!n.has_unknown_extension());
    }

    #[test]
    fn extension_lists() {
        let e = parse_extensions([
            "permessage-deflate; client_max_window_bits, x-foo",
            "bar; a=\"1\"",
        ]);
        let names: Vec<_> = e.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["permessage-deflate", "x-foo", "bar"]);
        assert_eq!(e[2].params, vec![("a".to_string(), Some("1".to_string()))]);
    }
}
