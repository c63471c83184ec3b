//! A small HTTPS + WebSocket server for browser tests, written by hand
//! because tokio-tungstenite has no permessage-deflate and browsers offer
//! it: the point is to see wstap inflate a real browser's compressed frames.
//!
//! On 127.0.0.1:0 behind rustls, it reads HTTP heads raw (keep-alive), and
//! - answers a `GET` with `Sec-WebSocket-Key` with a 101 that accepts
//!   permessage-deflate when offered (parameters from the path's `pmd=`
//!   query: `server_no_context_takeover`, `client_no_context_takeover`,
//!   comma-separated), then echoes every message compressed (RSV1, one
//!   unmasked frame), pings with pongs, and a close with the same close;
//! - records the body of `POST /done` (the page's report) for the test;
//! - serves the page at `/` and 404 for anything else (favicon).
//!
//! Frames are cut with wstap's own decoder and compressed with its
//! `Deflater`/`Inflater`; what the server saw is kept in a log the test
//! prints when it fails.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use wstap::proto::decoder::{FrameDecoder, Piece};
use wstap::proto::deflate::{Deflater, Inflater};
use wstap::proto::frame::{apply_mask, encode_frame, FrameHeader, Opcode};
use wstap::proto::handshake::accept_key;

/// A running server.
pub struct DeflateEcho {
    pub addr: SocketAddr,
    /// One line per request, upgrade and message, for failure output.
    pub log: Arc<Mutex<Vec<String>>>,
    /// Bodies of `POST /done`, in arrival order.
    pub reports: mpsc::UnboundedReceiver<String>,
}

impl DeflateEcho {
    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

/// Longest head or message the server accepts: the test's pages are small,
/// and a runaway peer should fail the test, not eat memory.
const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 1024 * 1024;
const MAX_MESSAGE: usize = 4 * 1024 * 1024;
/// A connection silent this long is dropped (Chromium keeps idle
/// keep-alive connections open for minutes).
const IDLE: Duration = Duration::from_secs(60);

/// Starts the server; `page` is the HTML served at `/`.
pub async fn start(tls: Arc<rustls::ServerConfig>, page: String) -> DeflateEcho {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let (tx, reports) = mpsc::unbounded_channel();
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let page = Arc::new(page);
    let shared_log = log.clone();
    tokio::spawn(async move {
        let mut n = 0u32;
        while let Ok((tcp, peer)) = l.accept().await {
            n += 1;
            let (acceptor, page, tx, log) = (
                acceptor.clone(),
                page.clone(),
                tx.clone(),
                shared_log.clone(),
            );
            let c = Conn { n, log };
            tokio::spawn(async move {
                c.note(format!("accepted from {peer}"));
                match tokio::time::timeout(IDLE, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => c.serve(tls, &page, &tx).await,
                    Ok(Err(e)) => c.note(format!("TLS handshake failed: {e}")),
                    Err(_) => c.note("TLS handshake timed out".into()),
                }
            });
        }
    });
    DeflateEcho { addr, log, reports }
}

/// The permessage-deflate parameters a connection agreed on.
#[derive(Debug, Clone, Copy, Default)]
struct Pmd {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
}

impl Pmd {
    fn response(&self) -> String {
        let mut s = "permessage-deflate".to_string();
        if self.server_no_context_takeover {
            s.push_str("; server_no_context_takeover");
        }
        if self.client_no_context_takeover {
            s.push_str("; client_no_context_takeover");
        }
        s
    }
}

struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn query(&self, key: &str) -> Option<&str> {
        let (_, q) = self.path.split_once('?')?;
        q.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (k == key).then_some(v)
        })
    }
}

struct Conn {
    n: u32,
    log: Arc<Mutex<Vec<String>>>,
}

impl Conn {
    fn note(&self, line: String) {
        self.log.lock().unwrap().push(format!("#{} {line}", self.n));
    }

    async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        mut s: S,
        page: &str,
        reports: &mpsc::UnboundedSender<String>,
    ) {
        // bytes read past the current head (a pipelined request, a body)
        let mut buf = Vec::new();
        loop {
            let req = match self.read_head(&mut s, &mut buf).await {
                Ok(Some(r)) => r,
                Ok(None) => return self.note("closed by the client".into()),
                Err(e) => return self.note(format!("read failed: {e}")),
            };
            self.note(format!("{} {}", req.method, req.path));
            if req.header("sec-websocket-key").is_some() {
                return self.websocket(s, req, buf).await;
            }
            let len: usize = req
                .header("content-length")
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if len > MAX_BODY {
                return self.note(format!("body of {len} bytes refused"));
            }
            while buf.len() < len {
                if !self.fill(&mut s, &mut buf).await {
                    return self.note("closed inside a body".into());
                }
            }
            let body: Vec<u8> = buf.drain(..len).collect();
            let path = req.path.split('?').next().unwrap_or("");
            let (status, ctype, content) = match (req.method.as_str(), path) {
                ("POST", "/done") => {
                    let text = String::from_utf8_lossy(&body).into_owned();
                    self.note(format!("report: {text}"));
                    let _ = reports.send(text);
                    ("200 OK", "text/plain", "thanks\n".to_string())
                }
                ("GET", "/") => ("200 OK", "text/html; charset=utf-8", page.to_string()),
                _ => ("404 Not Found", "text/plain", "not here\n".to_string()),
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nCache-Control: no-store\r\n\r\n{content}",
                content.len()
            );
            if s.write_all(resp.as_bytes()).await.is_err() || s.flush().await.is_err() {
                return self.note("write failed".into());
            }
        }
    }

    /// Reads more bytes into `buf`; false at EOF, on an error or when idle.
    async fn fill<S: AsyncRead + Unpin>(&self, s: &mut S, buf: &mut Vec<u8>) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        match tokio::time::timeout(IDLE, s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => {
                buf.extend_from_slice(&chunk[..n]);
                true
            }
            _ => false,
        }
    }

    /// The next request head from `buf` and the stream; `None` at a clean
    /// EOF between requests.
    async fn read_head<S: AsyncRead + Unpin>(
        &self,
        s: &mut S,
        buf: &mut Vec<u8>,
    ) -> Result<Option<Request>, String> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut r = httparse::Request::new(&mut headers);
            match r.parse(buf) {
                Ok(httparse::Status::Complete(used)) => {
                    let req = Request {
                        method: r.method.unwrap_or("").to_string(),
                        path: r.path.unwrap_or("").to_string(),
                        headers: r
                            .headers
                            .iter()
                            .map(|h| {
                                (
                                    h.name.to_string(),
                                    String::from_utf8_lossy(h.value).into_owned(),
                                )
                            })
                            .collect(),
                    };
                    buf.drain(..used);
                    return Ok(Some(req));
                }
                Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {}
                Ok(httparse::Status::Partial) => return Err("head too long".into()),
                Err(e) => return Err(format!("bad head: {e}")),
            }
            if !self.fill(s, buf).await {
                return if buf.is_empty() {
                    Ok(None)
                } else {
                    Err("closed inside a head".into())
                };
            }
        }
    }

    async fn websocket<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        mut s: S,
        req: Request,
        mut pending: Vec<u8>,
    ) {
        let key = req.header("sec-websocket-key").unwrap_or("").to_string();
        let offer = req.header("sec-websocket-extensions").unwrap_or("");
        self.note(format!("upgrade; extensions offered: {offer:?}"));
        // accept permessage-deflate only when offered, as a real server does
        let pmd = offer
            .split(',')
            .any(|e| e.split(';').next().unwrap_or("").trim() == "permessage-deflate")
            .then(|| {
                let want = req.query("pmd").unwrap_or("");
                Pmd {
                    server_no_context_takeover: want.contains("server_no_context_takeover"),
                    client_no_context_takeover: want.contains("client_no_context_takeover"),
                }
            });
        let mut resp = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n",
            accept_key(&key)
        );
        if let Some(p) = &pmd {
            resp.push_str(&format!("Sec-WebSocket-Extensions: {}\r\n", p.response()));
        }
        resp.push_str("\r\n");
        self.note(format!(
            "101; extensions accepted: {:?}",
            pmd.map(|p| p.response())
        ));
        if s.write_all(resp.as_bytes()).await.is_err() || s.flush().await.is_err() {
            return self.note("write of the 101 failed".into());
        }
        let mut inflater = pmd.map(|p| Inflater::new(p.client_no_context_takeover));
        let mut deflater = pmd.map(|p| Deflater::new(p.server_no_context_takeover));
        let mut dec = FrameDecoder::new();
        // the frame being read, its unmasked payload, and the message so far
        let mut frame: Option<(FrameHeader, Vec<u8>)> = None;
        let mut message: Option<(Opcode, bool, Vec<u8>)> = None;
        loop {
            let mut input: &[u8] = &pending;
            let mut out = Vec::new();
            let mut closed = false;
            while let Some(piece) = dec.next(&mut input) {
                match piece {
                    Piece::Header(h) => frame = Some((h, Vec::new())),
                    Piece::Payload { data, offset } => {
                        let Some((h, payload)) = frame.as_mut() else {
                            return self.note("payload before a header".into());
                        };
                        let start = payload.len();
                        payload.extend_from_slice(data);
                        if let Some(m) = h.mask {
                            apply_mask(&mut payload[start..], m, offset);
                        }
                        if payload.len() > MAX_MESSAGE {
                            return self.note("frame too long".into());
                        }
                    }
                    Piece::End => {
                        let Some((h, payload)) = frame.take() else {
                            return self.note("frame end before a header".into());
                        };
                        if h.mask.is_none() {
                            self.note(format!("unmasked {} frame from the client", h.opcode));
                        }
                        match h.opcode {
                            Opcode::Ping => {
                                encode_frame(&mut out, true, false, Opcode::Pong, None, &payload)
                            }
                            Opcode::Pong => {}
                            Opcode::Close => {
                                self.note(format!("close {:02x?}", payload));
                                encode_frame(&mut out, true, false, Opcode::Close, None, &payload);
                                closed = true;
                            }
                            Opcode::Text | Opcode::Binary | Opcode::Continuation => {
                                let m = match (h.opcode, message.take()) {
                                    (Opcode::Continuation, Some((op, rsv1, mut data))) => {
                                        data.extend_from_slice(&payload);
                                        (op, rsv1, data)
                                    }
                                    (Opcode::Continuation, None) => {
                                        return self.note("continuation without a message".into())
                                    }
                                    (op, _) => (op, h.rsv1, payload),
                                };
                                if m.2.len() > MAX_MESSAGE {
                                    return self.note("message too long".into());
                                }
                                if !h.fin {
                                    message = Some(m);
                                    continue;
                                }
                                let (op, compressed, data) = m;
                                let plain = if compressed {
                                    let Some(inf) = inflater.as_mut() else {
                                        return self.note("RSV1 without permessage-deflate".into());
                                    };
                                    let mut plain = Vec::new();
                                    let mut sink = |b: &[u8]| plain.extend_from_slice(b);
                                    if let Err(e) = inf
                                        .feed(&data, &mut sink)
                                        .and_then(|_| inf.end_message(&mut sink))
                                    {
                                        return self.note(format!("inflate failed: {e}"));
                                    }
                                    plain
                                } else {
                                    data.clone()
                                };
                                self.note(format!(
                                    "{op} {} B (wire {} B{}): {:?}",
                                    plain.len(),
                                    data.len(),
                                    if compressed { ", deflate" } else { "" },
                                    String::from_utf8_lossy(&plain[..plain.len().min(80)])
                                ));
                                match deflater.as_mut() {
                                    Some(d) => {
                                        let wire = d.compress(&plain);
                                        encode_frame(&mut out, true, true, op, None, &wire)
                                    }
                                    None => encode_frame(&mut out, true, false, op, None, &plain),
                                }
                            }
                            Opcode::Reserved(b) => {
                                return self.note(format!("reserved opcode {b}"))
                            }
                        }
                    }
                }
            }
            pending.clear();
            if !out.is_empty() && (s.write_all(&out).await.is_err() || s.flush().await.is_err()) {
                return self.note("write failed".into());
            }
            if closed {
                // RFC 6455 §7.1.1: after the close handshake the server
                // closes the TCP connection first
                let _ = s.shutdown().await;
                return self.note("closed after the close handshake".into());
            }
            if !self.fill(&mut s, &mut pending).await {
                return self.note("connection ended without a close frame".into());
            }
        }
    }
}
