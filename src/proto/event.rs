//! The event model: what wstap observed, as data. Every output (terminal,
//! NDJSON, HAR, live view) renders these; `diff` reads them back from NDJSON.
//! Field names are the contract in `shared/interface.md`: add, never rename.

use std::fmt;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::frame::Opcode;

/// A connection's number, unique within one wstap process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ConnId(pub u64);

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// Which way bytes travel. Serialized as the sender: `client` or `server`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Dir {
    #[serde(rename = "client")]
    ClientToServer,
    #[serde(rename = "server")]
    ServerToClient,
}

impl Dir {
    /// The side that sends in this direction.
    pub fn sender(self) -> &'static str {
        match self {
            Dir::ClientToServer => "client",
            Dir::ServerToClient => "server",
        }
    }

    /// The other way.
    pub fn opposite(self) -> Dir {
        match self {
            Dir::ClientToServer => Dir::ServerToClient,
            Dir::ServerToClient => Dir::ClientToServer,
        }
    }

    /// The side that receives in this direction.
    pub fn receiver(self) -> &'static str {
        match self {
            Dir::ClientToServer => "server",
            Dir::ServerToClient => "client",
        }
    }
}

/// One observation, stamped with wall-clock time and its connection.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    #[serde(with = "rfc3339")]
    pub ts: SystemTime,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conn: Option<ConnId>,
    #[serde(flatten)]
    pub kind: EventKind,
}

impl Event {
    pub fn new(ts: SystemTime, conn: Option<ConnId>, kind: EventKind) -> Self {
        Event { ts, conn, kind }
    }

    pub fn conn(ts: SystemTime, conn: ConnId, kind: EventKind) -> Self {
        Event {
            ts,
            conn: Some(conn),
            kind,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum EventKind {
    Listening(Listening),
    Handshake(Box<Handshake>),
    Frame(FrameEvent),
    Finding(Finding),
    Http(HttpExchange),
    Close(CloseSummary),
    Error(ErrorEvent),
    Dropped(Dropped),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Listening {
    pub addr: String,
    /// What the proxy is in front of (`ws://host:port`, or `forward`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
}

/// The four views of an upgrade. A view that did not happen is `null`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Handshake {
    pub client_request: Option<RequestView>,
    pub upstream_request: Option<RequestView>,
    pub upstream_response: Option<ResponseView>,
    pub client_response: Option<ResponseView>,
    /// From the client's request head to the upstream's answer (and, for a
    /// refused upgrade, its body) passed back, when timed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<f64>,
    /// The upstream address (`ip:port`) the request went to, when connected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_addr: Option<String>,
}

/// A request head as it was on the wire: header order, case and duplicates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestView {
    pub method: String,
    pub target: String,
    pub version: String,
    pub headers: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseView {
    pub status: u16,
    pub reason: String,
    pub version: String,
    pub headers: Vec<(String, String)>,
    /// The first bytes of the body of a refused upgrade (never of a 101).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_preview: Option<String>,
}

/// Looks a header up by name, ignoring case; the first of duplicates.
pub fn view_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    Utf8,
    Hex,
}

/// One WebSocket frame as it crossed the proxy.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FrameEvent {
    pub from: Dir,
    #[serde(with = "opcode_name")]
    pub opcode: Opcode,
    pub fin: bool,
    pub rsv1: bool,
    pub rsv2: bool,
    pub rsv3: bool,
    pub masked: bool,
    /// Payload bytes on the wire.
    pub len: u64,
    pub preview: String,
    pub encoding: Encoding,
    /// The preview holds fewer bytes than the (inflated) payload.
    pub truncated: bool,
    /// The payload is permessage-deflate compressed; `preview` is inflated.
    pub compressed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub close_code: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub close_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub close_reason: Option<String>,
    /// Inserted by wstap (live view), not sent by the peer.
    #[serde(default, skip_serializing_if = "is_false")]
    pub injected: bool,
    /// Why the preview is partial or missing, when it is (e.g. inflation skipped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The first payload bytes (unmasked, inflated), up to the tap's
    /// `capture` limit, for sinks that keep messages (HAR). Never in NDJSON.
    #[serde(skip)]
    pub payload: Option<Vec<u8>>,
}

impl FrameEvent {
    /// A final frame of `len` bytes, masked when it comes from the client,
    /// with no preview and every other flag clear; set the rest with
    /// struct-update syntax.
    pub fn new(from: Dir, opcode: Opcode, len: u64) -> Self {
        FrameEvent {
            from,
            opcode,
            fin: true,
            rsv1: false,
            rsv2: false,
            rsv3: false,
            masked: from == Dir::ClientToServer,
            len,
            preview: String::new(),
            encoding: Encoding::Utf8,
            truncated: false,
            compressed: false,
            close_code: None,
            close_name: None,
            close_reason: None,
            injected: false,
            note: None,
            payload: None,
        }
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Error,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
        })
    }
}

/// A diagnosis: what went wrong (or right), in words, with the fix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub code: String,
    pub severity: Severity,
    pub message: String,
    pub hint: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed: Option<String>,
    /// Which view or side the finding is about (`client_request`,
    /// `upstream_request`, `client`, `server`...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub view: Option<String>,
}

impl Finding {
    pub fn new(
        code: &str,
        severity: Severity,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        Finding {
            code: code.to_string(),
            severity,
            message: message.into(),
            hint: hint.into(),
            header: None,
            expected: None,
            observed: None,
            view: None,
        }
    }

    pub fn header(mut self, h: impl Into<String>) -> Self {
        self.header = Some(h.into());
        self
    }

    pub fn expected(mut self, e: impl Into<String>) -> Self {
        self.expected = Some(e.into());
        self
    }

    pub fn observed(mut self, o: impl Into<String>) -> Self {
        self.observed = Some(o.into());
        self
    }

    pub fn view(mut self, v: impl Into<String>) -> Self {
        self.view = Some(v.into());
        self
    }
}

/// An ordinary (non-upgrade) request that passed through.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HttpExchange {
    pub method: String,
    pub target: String,
    /// 0 when no response came back (see the accompanying error/finding).
    pub status: u16,
    pub duration_ms: f64,
    #[serde(default)]
    pub request_bytes: u64,
    #[serde(default)]
    pub response_bytes: u64,
    /// The request head as the client sent it (HAR needs its headers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_request: Option<RequestView>,
    /// The response head as the client got it; `null` when none came back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_response: Option<ResponseView>,
    /// The upstream address (`ip:port`) the request went to, when connected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_addr: Option<String>,
    /// What the rewrite rules changed in this request and its response.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rewrites: Vec<String>,
}

impl HttpExchange {
    /// The exchange of `req`, answered `status` after `duration`; the
    /// caller adds the response view, byte counts and rewrites it has.
    pub fn of(req: &super::http::RequestHead, status: u16, duration: Duration) -> Self {
        HttpExchange {
            method: req.method.clone(),
            target: req.target.clone(),
            status,
            duration_ms: millis(duration),
            request_bytes: 0,
            response_bytes: 0,
            client_request: Some(req.view()),
            client_response: None,
            upstream_addr: None,
            rewrites: Vec::new(),
        }
    }
}

/// How a connection ended; one per connection, its last event.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CloseSummary {
    /// A stable token: `close-handshake`, `client-closed`, `server-closed`,
    /// `client-reset`, `server-reset`, `upstream-failed`, `error`, ...
    pub reason: String,
    /// The same in words.
    #[serde(default)]
    pub detail: String,
    pub duration_ms: f64,
    pub frames_from_client: u64,
    pub frames_from_server: u64,
    pub bytes_from_client: u64,
    pub bytes_from_server: u64,
    /// Whether the connection was upgraded to a WebSocket.
    #[serde(default)]
    pub websocket: bool,
}

impl CloseSummary {
    /// The end of a connection that carried no WebSocket and no counted
    /// traffic (refused at accept, failed TLS, ...).
    pub fn without_traffic(reason: &str, detail: impl Into<String>, duration_ms: f64) -> Self {
        CloseSummary {
            reason: reason.to_string(),
            detail: detail.into(),
            duration_ms,
            frames_from_client: 0,
            frames_from_server: 0,
            bytes_from_client: 0,
            bytes_from_server: 0,
            websocket: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorEvent {
    pub message: String,
}

/// `--lossy-log` only: events the outputs did not get because they could
/// not keep up. Written by the sink thread (no `conn`) soon after drops
/// happen, and once more as the last event, with the final total.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dropped {
    /// Events lost since the previous `dropped` event.
    pub count: u64,
    /// Events lost since wstap started.
    pub total: u64,
}

/// Milliseconds with microsecond resolution, as event durations use.
pub fn millis(d: Duration) -> f64 {
    (d.as_micros() as f64) / 1000.0
}

mod rfc3339 {
    use super::*;

    pub fn serialize<S: Serializer>(ts: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_micros(*ts))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_rfc3339_weak(&s).map_err(serde::de::Error::custom)
    }
}

mod opcode_name {
    use super::*;

    pub fn serialize<S: Serializer>(op: &Opcode, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(op.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Opcode, D::Error> {
        let s = String::deserialize(d)?;
        Opcode::parse_name(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown opcode {s:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_event_has_the_contract_fields() {
        let ev = Event::conn(
            SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            ConnId(3),
            EventKind::Frame(FrameEvent {
                from: Dir::ClientToServer,
                opcode: Opcode::Reserved(3),
                fin: true,
                rsv1: false,
                rsv2: false,
                rsv3: false,
                masked: true,
                len: 5,
                preview: "hello".into(),
                encoding: Encoding::Utf8,
                truncated: false,
                compressed: false,
                close_code: None,
                close_name: None,
                close_reason: None,
                injected: false,
                note: None,
                payload: Some(b"hello".to_vec()),
            }),
        );
        let v: serde_json::Value = serde_json::to_value(&ev).unwrap();
        assert_eq!(v["event"], "frame");
        assert_eq!(v["conn"], 3);
        assert_eq!(v["from"], "client");
        assert_eq!(v["opcode"], "reserved-3");
        assert_eq!(v["encoding"], "utf8");
        assert_eq!(v["ts"], "2023-11-14T22:13:20.123000Z");
        assert!(v.get("close_code").is_none());
        assert!(v.get("payload").is_none());
        let back: Event = serde_json::from_value(v).unwrap();
        assert!(matches!(back.kind, EventKind::Frame(f) if f.opcode == Opcode::Reserved(3)));
    }

    #[test]
    fn handshake_views_serialize_headers_as_pairs() {
        let hs = Handshake {
            client_request: Some(RequestView {
                method: "GET".into(),
                target: "/ws".into(),
                version: "HTTP/1.1".into(),
                headers: vec![("Host".into(), "a".into()), ("X".into(), "1".into())],
            }),
            ..Default::default()
        };
        let ev = Event::conn(
            SystemTime::now(),
            ConnId(1),
            EventKind::Handshake(Box::new(hs)),
        );
        let v: serde_json::Value = serde_json::to_value(&ev).unwrap();
        assert_eq!(
            v["client_request"]["headers"][1],
            serde_json::json!(["X", "1"])
        );
        assert!(v["upstream_response"].is_null());
    }

    #[test]
    fn listening_has_no_conn() {
        let ev = Event::new(
            SystemTime::now(),
            None,
            EventKind::Listening(Listening {
                addr: "127.0.0.1:1".into(),
                upstream: None,
            }),
        );
        let s = serde_json::to_string(&ev).unwrap();
        assert!(!s.contains("conn"), "{s}");
        assert!(s.contains(r#""event":"listening""#), "{s}");
    }
}
