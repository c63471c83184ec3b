//! HTTP/1.x message heads and body framing (RFC 9112), for a relay that
//! forwards bytes as they came. Heads keep wire order, case and duplicates;
//! bodies are never held: framing only says where a message ends.

use std::borrow::Cow;
use std::fmt;

use super::event::{RequestView, ResponseView};
use super::frame::Parsed;

/// Largest request or response head accepted (request line plus headers).
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most header lines accepted in one head.
pub const MAX_HEADERS: usize = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

impl Version {
    pub fn as_str(self) -> &'static str {
        match self {
            Version::Http10 => "HTTP/1.0",
            Version::Http11 => "HTTP/1.1",
        }
    }

    fn from_minor(minor: u8) -> Self {
        if minor == 0 {
            Version::Http10
        } else {
            Version::Http11
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One header line; the value is raw bytes (obs-text is legal on the wire).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: Vec<u8>,
}

impl Header {
    pub fn new(name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        Header {
            name: name.into(),
            value: value.into(),
        }
    }

    pub fn value_str(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.value)
    }
}

/// Header lookups shared by requests and responses.
pub trait Headers {
    fn headers(&self) -> &[Header];

    /// The first value of `name` (case-insensitive).
    fn header(&self, name: &str) -> Option<std::borrow::Cow<'_, str>> {
        self.headers()
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value_str())
    }

    fn has_header(&self, name: &str) -> bool {
        self.headers()
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case(name))
    }

    /// True when any `name` header lists `token` in its comma-separated
    /// values (case-insensitive), as `Connection: keep-alive, Upgrade` does.
    fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers()
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .any(|h| {
                h.value_str()
                    .split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case(token))
            })
    }

    fn views(&self) -> Vec<(String, String)> {
        self.headers()
            .iter()
            .map(|h| (h.name.clone(), h.value_str().into_owned()))
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    pub target: String,
    pub version: Version,
    pub headers: Vec<Header>,
}

impl Headers for RequestHead {
    fn headers(&self) -> &[Header] {
        &self.headers
    }
}

/// An absolute-form request target (`scheme://authority/path?query`, RFC
/// 9112 §3.2.2), as a proxy receives it, split into its scheme, authority
/// and origin-form (`/path?query`; `/` when only the authority is given);
/// `None` for any other form.
pub fn split_absolute_form(target: &str) -> Option<(&str, &str, Cow<'_, str>)> {
    let (scheme, rest) = target.split_once("://")?;
    // a scheme as RFC 3986 §3.1 spells it, which also keeps an origin-form
    // target with `://` in its query (`/go?to=http://x`) from passing for one
    let mut chars = scheme.chars();
    if !chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    {
        return None;
    }
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let path = if path.starts_with('?') {
        Cow::Owned(format!("/{path}"))
    } else {
        Cow::Borrowed(path)
    };
    Some((scheme, authority, path))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    pub version: Version,
    pub status: u16,
    pub reason: String,
    pub headers: Vec<Header>,
}

impl Headers for ResponseHead {
    fn headers(&self) -> &[Header] {
        &self.headers
    }
}

/// Why a head could not be read. Each maps to the status a client gets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("head larger than {MAX_HEAD_BYTES} bytes")]
    TooLarge,
    #[error("request line longer than {MAX_HEAD_BYTES} bytes")]
    LineTooLong,
    #[error("more than {MAX_HEADERS} header lines")]
    TooManyHeaders,
    #[error("malformed HTTP head: {0}")]
    Malformed(String),
}

impl HeadError {
    /// The status to answer a client whose request head failed this way.
    pub fn status(&self) -> u16 {
        match self {
            // a request line over the limit could be 414 (URI Too Long);
            // 431 keeps one answer for "the head is too big", and the
            // message says which part was
            HeadError::TooLarge | HeadError::LineTooLong | HeadError::TooManyHeaders => 431,
            HeadError::Malformed(_) => 400,
        }
    }
}

fn describe(e: httparse::Error) -> String {
    match e {
        httparse::Error::HeaderName => {
            "invalid character in a header name (or a line without a colon)".into()
        }
        httparse::Error::HeaderValue => "invalid character in a header value".into(),
        httparse::Error::NewLine => "invalid line ending".into(),
        httparse::Error::Status => "invalid status code".into(),
        httparse::Error::Token => "invalid method or token".into(),
        httparse::Error::Version => "invalid HTTP version".into(),
        httparse::Error::TooManyHeaders => "too many headers".into(),
    }
}

fn collect_headers(raw: &[httparse::Header<'_>]) -> Vec<Header> {
    raw.iter()
        .map(|h| Header::new(h.name, h.value.to_vec()))
        .collect()
}

/// The bytes of `buf` that can belong to a head: up to and including the
/// first empty line, or all of it when no empty line came yet.
fn head_region(buf: &[u8]) -> &[u8] {
    let mut prev_lf = false;
    for (i, &b) in buf.iter().enumerate() {
        match b {
            b'\n' if prev_lf => return &buf[..=i],
            b'\n' => prev_lf = true,
            b'\r' => {}
            _ => prev_lf = false,
        }
    }
    buf
}

/// What httparse lets through but a request head must not carry.
///
/// Bare LF: RFC 9112 §2.2 lets a recipient accept a lone LF as a line end,
/// but wstap forwards the head as it came, and a hop or server that reads
/// the same bytes differently is how requests get smuggled. So a request
/// line or header ending in a lone LF is refused with 400, saying where.
/// NUL: never valid in a head (RFC 9110 §5.5); named, as it usually means
/// a binary protocol talking to an HTTP port.
fn check_request_bytes(head: &[u8]) -> Result<(), HeadError> {
    for (i, &b) in head.iter().enumerate() {
        if b == 0 {
            return Err(HeadError::Malformed(format!(
                "NUL byte at offset {i} of the request head"
            )));
        }
        if b == b'\n' && (i == 0 || head[i - 1] != b'\r') {
            return Err(HeadError::Malformed(format!(
                "bare LF line ending at offset {i} (HTTP/1.1 lines end in CRLF; wstap does not accept a lone LF)"
            )));
        }
    }
    Ok(())
}

/// Parses a request head from the start of `buf`.
pub fn parse_request_head(buf: &[u8]) -> Result<Parsed<RequestHead>, HeadError> {
    // 0x16 0x03 opens a TLS record; no method starts with 0x16
    if buf.len() >= 2 && buf[0] == 0x16 && buf[1] == 0x03 {
        return Err(HeadError::Malformed(
            "a TLS handshake (ClientHello) on a plain-HTTP listener: the client speaks https/wss here".into(),
        ));
    }
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut storage);
    let parsed = req.parse(buf);
    if !matches!(parsed, Ok(httparse::Status::Complete(_))) {
        check_request_bytes(head_region(&buf[..buf.len().min(MAX_HEAD_BYTES)]))?;
    }
    match parsed {
        Ok(httparse::Status::Complete(n)) => {
            if n > MAX_HEAD_BYTES {
                return Err(HeadError::TooLarge);
            }
            check_request_bytes(&buf[..n])?;
            Ok(Parsed::Done(
                RequestHead {
                    method: req.method.unwrap_or_default().to_string(),
                    target: req.path.unwrap_or_default().to_string(),
                    version: Version::from_minor(req.version.unwrap_or(1)),
                    headers: collect_headers(req.headers),
                },
                n,
            ))
        }
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_BYTES => {
            if buf[..MAX_HEAD_BYTES].contains(&b'\n') {
                Err(HeadError::TooLarge)
            } else {
                Err(HeadError::LineTooLong)
            }
        }
        Ok(httparse::Status::Partial) => Ok(Parsed::Incomplete),
        Err(httparse::Error::TooManyHeaders) => Err(HeadError::TooManyHeaders),
        Err(e) => Err(HeadError::Malformed(describe(e))),
    }
}

/// Parses a response head from the start of `buf`.
pub fn parse_response_head(buf: &[u8]) -> Result<Parsed<ResponseHead>, HeadError> {
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut storage);
    match res.parse(buf) {
        Ok(httparse::Status::Complete(n)) => {
            if n > MAX_HEAD_BYTES {
                return Err(HeadError::TooLarge);
            }
            Ok(Parsed::Done(
                ResponseHead {
                    version: Version::from_minor(res.version.unwrap_or(1)),
                    status: res.code.unwrap_or_default(),
                    reason: res.reason.unwrap_or_default().to_string(),
                    headers: collect_headers(res.headers),
                },
                n,
            ))
        }
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_BYTES => Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => Ok(Parsed::Incomplete),
        Err(httparse::Error::TooManyHeaders) => Err(HeadError::TooManyHeaders),
        Err(e) => Err(HeadError::Malformed(describe(e))),
    }
}

fn write_headers(out: &mut Vec<u8>, headers: &[Header]) {
    for h in headers {
        out.extend_from_slice(h.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(&h.value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

impl RequestHead {
    /// The head in canonical wire form (`Name: value` lines, CRLF).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(self.method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(self.target.as_bytes());
        out.push(b' ');
        out.extend_from_slice(self.version.as_str().as_bytes());
        out.extend_from_slice(b"\r\n");
        write_headers(&mut out, &self.headers);
        out
    }

    pub fn view(&self) -> RequestView {
        RequestView {
            method: self.method.clone(),
            target: self.target.clone(),
            version: self.version.as_str().to_string(),
            headers: self.views(),
        }
    }

    /// Whether the connection stays open after this request (RFC 9112 §9.3).
    pub fn keep_alive(&self) -> bool {
        keep_alive(self.version, self)
    }
}

impl ResponseHead {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(self.version.as_str().as_bytes());
        out.extend_from_slice(format!(" {} ", self.status).as_bytes());
        out.extend_from_slice(self.reason.as_bytes());
        out.extend_from_slice(b"\r\n");
        write_headers(&mut out, &self.headers);
        out
    }

    pub fn view(&self) -> ResponseView {
        ResponseView {
            status: self.status,
            reason: self.reason.clone(),
            version: self.version.as_str().to_string(),
            headers: self.views(),
            body_preview: None,
        }
    }

    pub fn keep_alive(&self) -> bool {
        keep_alive(self.version, self)
    }
}

fn keep_alive(version: Version, h: &impl Headers) -> bool {
    if h.has_token("Connection", "close") {
        return false;
    }
    match version {
        Version::Http11 => true,
        Version::Http10 => h.has_token("Connection", "keep-alive"),
    }
}

/// How a message body ends (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// No body at all.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`: ends with the zero chunk and trailers.
    Chunked,
    /// Everything until the sender closes the connection (responses only).
    UntilClose,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("invalid Content-Length {0:?}")]
    BadLength(String),
    #[error("conflicting Content-Length values")]
    ConflictingLengths,
    #[error("both Transfer-Encoding and Content-Length (a request smuggling pattern)")]
    LengthAndChunked,
    #[error("request Transfer-Encoding does not end in chunked: its length is unknowable")]
    UnframedRequest,
    #[error("malformed chunked body: {0}")]
    BadChunk(&'static str),
}

fn content_length(h: &impl Headers) -> Result<Option<u64>, FramingError> {
    let mut found: Option<u64> = None;
    for hd in h
        .headers()
        .iter()
        .filter(|hd| hd.name.eq_ignore_ascii_case("Content-Length"))
    {
        // A list like `5, 5` is allowed when all members agree (§6.3 item 5).
        for part in hd.value_str().split(',') {
            let part = part.trim();
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(FramingError::BadLength(part.to_string()));
            }
            let n: u64 = part
                .parse()
                .map_err(|_| FramingError::BadLength(part.to_string()))?;
            match found {
                Some(prev) if prev != n => return Err(FramingError::ConflictingLengths),
                _ => found = Some(n),
            }
        }
    }
    Ok(found)
}

/// Some(true) when Transfer-Encoding is present and ends in chunked.
fn chunked_final(h: &impl Headers) -> Option<bool> {
    let mut last: Option<String> = None;
    for hd in h
        .headers()
        .iter()
        .filter(|hd| hd.name.eq_ignore_ascii_case("Transfer-Encoding"))
    {
        for part in hd.value_str().split(',') {
            let p = part.trim();
            if !p.is_empty() {
                last = Some(p.to_ascii_lowercase());
            }
        }
    }
    last.map(|l| l == "chunked")
}

/// The body framing of a request.
pub fn request_body(req: &RequestHead) -> Result<BodyKind, FramingError> {
    let te = chunked_final(req);
    let cl = content_length(req)?;
    match (te, cl) {
        (Some(_), Some(_)) => Err(FramingError::LengthAndChunked),
        (Some(true), None) => Ok(BodyKind::Chunked),
        (Some(false), None) => Err(FramingError::UnframedRequest),
        (None, Some(0)) | (None, None) => Ok(BodyKind::Empty),
        (None, Some(n)) => Ok(BodyKind::Length(n)),
    }
}

/// The body framing of a response to a request with `method`.
///
/// Methods are case-sensitive (RFC 9110 §9.1): `head` is an extension
/// method whose response has a body like any other, and reading it as HEAD
/// would leave that body to be taken for the next response.
pub fn response_body(method: &str, res: &ResponseHead) -> Result<BodyKind, FramingError> {
    if method == "HEAD"
        || (100..200).contains(&res.status)
        || res.status == 204
        || res.status == 304
        || (method == "CONNECT" && (200..300).contains(&res.status))
    {
        return Ok(BodyKind::Empty);
    }
    match chunked_final(res) {
        Some(true) => return Ok(BodyKind::Chunked),
        Some(false) => return Ok(BodyKind::UntilClose),
        None => {}
    }
    Ok(match content_length(res)? {
        Some(0) => BodyKind::Empty,
        Some(n) => BodyKind::Length(n),
        None => BodyKind::UntilClose,
    })
}

const BARE_LF_SIZE: FramingError =
    FramingError::BadChunk("chunk size line not ended by CRLF (bare LF)");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    Size { digits: u8 },
    Ext,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    LineStart,
    Trailer,
    TrailerLf,
    FinalLf,
    Done,
}

/// Finds the end of a chunked body in a byte stream without decoding it:
/// the relay forwards the chunked bytes unchanged and only needs to know
/// where the next message starts.
///
/// Every line of the framing must end in CRLF (RFC 9112 §7.1). A lone LF
/// is refused, as in heads: wstap forwards the bytes as they came, and a
/// hop that reads a bare LF as a line end while the next one does not is
/// how bodies (and the requests hidden in them) get smuggled.
#[derive(Debug, Clone)]
pub struct ChunkedScanner {
    state: ChunkState,
    size: u64,
}

impl Default for ChunkedScanner {
    fn default() -> Self {
        ChunkedScanner {
            state: ChunkState::Size { digits: 0 },
            size: 0,
        }
    }
}

impl ChunkedScanner {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Consumes bytes of `buf` that belong to the body; returns how many.
    /// Fewer than `buf.len()` only once the body has ended.
    pub fn scan(&mut self, buf: &[u8]) -> Result<usize, FramingError> {
        let mut i = 0;
        while i < buf.len() {
            let b = buf[i];
            match self.state {
                ChunkState::Done => return Ok(i),
                ChunkState::Data => {
                    let n = self.size.min((buf.len() - i) as u64) as usize;
                    self.size -= n as u64;
                    i += n;
                    if self.size == 0 {
                        self.state = ChunkState::DataCr;
                    }
                    continue;
                }
                ChunkState::Size { digits } => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        if digits >= 16 {
                            return Err(FramingError::BadChunk("chunk size too large"));
                        }
                        let v = (b as char).to_digit(16).unwrap_or(0) as u64;
                        self.size = self.size * 16 + v;
                        self.state = ChunkState::Size { digits: digits + 1 };
                    }
                    b';' | b' ' | b'\t' if digits > 0 => self.state = ChunkState::Ext,
                    b'\r' if digits > 0 => self.state = ChunkState::SizeLf,
                    b'\n' if digits > 0 => return Err(BARE_LF_SIZE),
                    _ => return Err(FramingError::BadChunk("invalid chunk size line")),
                },
                ChunkState::Ext => match b {
                    b'\r' => self.state = ChunkState::SizeLf,
                    b'\n' => return Err(BARE_LF_SIZE),
                    _ => {}
                },
                ChunkState::SizeLf => {
                    if b != b'\n' {
                        return Err(FramingError::BadChunk("chunk size line not ended by CRLF"));
                    }
                    self.after_size();
                }
                ChunkState::DataCr => match b {
                    b'\r' => self.state = ChunkState::DataLf,
                    _ => return Err(FramingError::BadChunk("chunk data not followed by CRLF")),
                },
                ChunkState::DataLf => {
                    if b != b'\n' {
                        return Err(FramingError::BadChunk("chunk data not followed by CRLF"));
                    }
                    self.state = ChunkState::Size { digits: 0 };
                }
                ChunkState::LineStart => match b {
                    b'\r' => self.state = ChunkState::FinalLf,
                    b'\n' => {
                        return Err(FramingError::BadChunk(
                            "chunked body not ended by CRLF (bare LF)",
                        ))
                    }
                    _ => self.state = ChunkState::Trailer,
                },
                ChunkState::Trailer => match b {
                    b'\r' => self.state = ChunkState::TrailerLf,
                    b'\n' => {
                        return Err(FramingError::BadChunk(
                            "trailer line not ended by CRLF (bare LF)",
                        ))
                    }
                    _ => {}
                },
                ChunkState::TrailerLf => {
                    if b != b'\n' {
                        return Err(FramingError::BadChunk("trailer line not ended by CRLF"));
                    }
                    self.state = ChunkState::LineStart;
                }
                ChunkState::FinalLf => {
                    if b != b'\n' {
                        return Err(FramingError::BadChunk("chunked body not ended by CRLF"));
                    }
                    self.state = ChunkState::Done;
                }
            }
            i += 1;
        }
        Ok(i)
    }

    fn after_size(&mut self) {
        if self.size == 0 {
            self.state = ChunkState::LineStart;
        } else {
            self.state = ChunkState::Data;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(raw: &[u8]) -> RequestHead {
        match parse_request_head(raw) {
            Ok(Parsed::Done(h, n)) => {
                assert_eq!(n, raw.len());
                h
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn request_head_keeps_order_case_and_duplicates() {
        let h = req(b"GET /ws?x=1 HTTP/1.1\r\nhost: a\r\nX-Dup: 1\r\nUpgrade: websocket\r\nx-dup: 2\r\n\r\n");
        assert_eq!(h.method, "GET");
        assert_eq!(h.target, "/ws?x=1");
        assert_eq!(h.version, Version::Http11);
        let names: Vec<_> = h.headers.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["host", "X-Dup", "Upgrade", "x-dup"]);
        assert_eq!(h.header("x-DUP").as_deref(), Some("1"));
        assert_eq!(
            h.to_bytes(),
            b"GET /ws?x=1 HTTP/1.1\r\nhost: a\r\nX-Dup: 1\r\nUpgrade: websocket\r\nx-dup: 2\r\n\r\n"
        );
    }

    #[test]
    fn partial_heads_are_incomplete_and_errors_map_to_statuses() {
        assert_eq!(
            parse_request_head(b"GET / HTTP/1.1\r\nHost: a\r\n"),
            Ok(Parsed::Incomplete)
        );
        let e = parse_request_head(b"GET / HTTP/1.1\r\nNoColon\r\n\r\n").unwrap_err();
        assert_eq!(e.status(), 400);
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..200 {
            many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(parse_request_head(&many), Err(HeadError::TooManyHeaders));
        let huge = vec![b'a'; MAX_HEAD_BYTES + 1];
        let mut line = b"GET /".to_vec();
        line.extend_from_slice(&huge);
        assert_eq!(parse_request_head(&line).unwrap_err().status(), 431);
    }

    #[test]
    fn hostile_request_heads_are_named() {
        let err = |raw: &[u8]| parse_request_head(raw).unwrap_err();
        // bare LF, complete or not, anywhere in the head
        for raw in [
            &b"GET / HTTP/1.1\nHost: a\n\n"[..],
            b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\n",
        ] {
            let e = err(raw);
            assert_eq!(e.status(), 400);
            assert!(e.to_string().contains("bare LF"), "{e}");
        }
        // NUL in the target, a header name or a value
        for raw in [
            &b"GET /\0 HTTP/1.1\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nX\0: ab\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: a\0b\r\n",
        ] {
            let e = err(raw);
            assert_eq!(e.status(), 400);
            assert!(e.to_string().contains("NUL byte"), "{e}");
        }
        let e = err(b"\x16\x03\x01\x02\x00\x01\x00");
        assert!(e.to_string().contains("TLS handshake"), "{e}");
        // a body after the head may hold any bytes
        assert!(matches!(
            parse_request_head(b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\n\0\n\0"),
            Ok(Parsed::Done(_, 38))
        ));
        let mut line = b"GET /".to_vec();
        line.extend(std::iter::repeat_n(b'a', 100 * 1024));
        let e = err(&line);
        assert_eq!((e.clone(), e.status()), (HeadError::LineTooLong, 431));
        let mut big = b"GET / HTTP/1.1\r\n".to_vec();
        while big.len() <= MAX_HEAD_BYTES {
            big.extend_from_slice(b"X-Filler: ");
            big.extend(std::iter::repeat_n(b'v', 1000));
            big.extend_from_slice(b"\r\n");
        }
        // fewer lines than MAX_HEADERS would need: size, not count, is over
        assert_eq!(parse_request_head(&big), Err(HeadError::TooLarge));
    }

    #[test]
    fn connection_tokens() {
        let h = req(b"GET / HTTP/1.1\r\nConnection: keep-alive, Upgrade\r\n\r\n");
        assert!(h.has_token("connection", "upgrade"));
        assert!(h.keep_alive());
        let h = req(b"GET / HTTP/1.0\r\n\r\n");
        assert!(!h.keep_alive());
        let h = req(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
        assert!(!h.keep_alive());
    }

    #[test]
    fn body_framing() {
        assert_eq!(
            request_body(&req(b"GET / HTTP/1.1\r\n\r\n")),
            Ok(BodyKind::Empty)
        );
        assert_eq!(
            request_body(&req(b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n")),
            Ok(BodyKind::Length(10))
        );
        assert_eq!(
            request_body(&req(b"POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n")),
            Ok(BodyKind::Length(5))
        );
        assert_eq!(
            request_body(&req(
                b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"
            )),
            Err(FramingError::ConflictingLengths)
        );
        assert_eq!(
            request_body(&req(
                b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
            )),
            Ok(BodyKind::Chunked)
        );
        assert_eq!(
            request_body(&req(
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"
            )),
            Err(FramingError::LengthAndChunked)
        );
        let res = |raw: &[u8]| match parse_response_head(raw) {
            Ok(Parsed::Done(h, _)) => h,
            other => panic!("{other:?}"),
        };
        let ok_len = res(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n");
        assert_eq!(response_body("GET", &ok_len), Ok(BodyKind::Length(3)));
        assert_eq!(response_body("HEAD", &ok_len), Ok(BodyKind::Empty));
        // methods are case-sensitive: these are not HEAD and CONNECT
        assert_eq!(response_body("head", &ok_len), Ok(BodyKind::Length(3)));
        assert_eq!(response_body("Head", &ok_len), Ok(BodyKind::Length(3)));
        assert_eq!(response_body("CONNECT", &ok_len), Ok(BodyKind::Empty));
        assert_eq!(response_body("connect", &ok_len), Ok(BodyKind::Length(3)));
        let no_len = res(b"HTTP/1.0 200 OK\r\n\r\n");
        assert_eq!(response_body("GET", &no_len), Ok(BodyKind::UntilClose));
        let sw = res(b"HTTP/1.1 101 Switching Protocols\r\n\r\n");
        assert_eq!(response_body("GET", &sw), Ok(BodyKind::Empty));
        let nc = res(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n");
        assert_eq!(response_body("GET", &nc), Ok(BodyKind::Empty));
    }

    #[test]
    fn chunked_scanner_finds_the_end_at_any_split() {
        let body = b"5;ext=1\r\nhello\r\n10\r\n0123456789abcdef\r\n0\r\nX-Trailer: t\r\n\r\nNEXT";
        let end = body.len() - 4;
        for cut in 0..body.len() {
            let mut s = ChunkedScanner::new();
            let a = s.scan(&body[..cut]).unwrap();
            let b = s.scan(&body[cut..]).unwrap();
            assert_eq!(a + b, end, "cut {cut}");
            assert!(s.is_done());
        }
        let mut s = ChunkedScanner::new();
        assert_eq!(s.scan(b"0\r\n\r\n").unwrap(), 5);
        assert!(s.is_done());
        assert!(ChunkedScanner::new().scan(b"zz\r\n").is_err());
        assert!(ChunkedScanner::new().scan(b"2\r\nabX").is_err());
    }

    #[test]
    fn chunked_scanner_refuses_a_bare_lf_after_the_size_line() {
        for body in [
            &b"3\nabc\r\n0\r\n\r\n"[..],
            b"3;ext=1\nabc\r\n0\r\n\r\n",
            b"0\n\r\n",
        ] {
            let e = ChunkedScanner::new().scan(body).unwrap_err();
            assert!(e.to_string().contains("CRLF"), "{e}");
        }
    }

    #[test]
    fn chunked_scanner_refuses_a_bare_lf_after_data_and_trailers() {
        for body in [
            // after a chunk's data
            &b"3\r\nabc\n0\r\n\r\n"[..],
            // after a trailer line
            b"0\r\nX-T: 1\n\r\n",
            // as the final empty line
            b"0\r\n\n",
            b"0\r\nX-T: 1\r\n\n",
        ] {
            let e = ChunkedScanner::new().scan(body).unwrap_err();
            assert!(e.to_string().contains("CRLF"), "{e}");
        }
    }
}
