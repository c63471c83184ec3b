//! The live view's routes: the page and its assets, the JSON API (list,
//! frames, inject, replay, close) and the server-sent event stream. Frames
//! go to the relay through the proxy's control handles, so they are
//! inserted at frame boundaries, masked toward the server, uncompressed and
//! logged as `injected` like every frame wstap adds.

use std::convert::Infallible;
use std::sync::{Arc, Weak};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::HeaderValue;
use hyper::{Method, Request, Response, StatusCode};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, oneshot};

use super::http::{self, ApiError, Body, MAX_MESSAGE};
use super::store::{FrameFilter, Live, Store, StoredFrame};
use crate::proto::close_code;
use crate::proto::event::{ConnId, Dir, Encoding, FrameEvent};
use crate::proto::frame::Opcode;
use crate::proto::inject;
use crate::proto::preview;
use crate::proxy::relay::{self, Control, Controls};
use crate::proxy::Shared;

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

/// Frames per page of `GET .../frames` unless `limit` says otherwise.
const DEFAULT_LIMIT: usize = 100;
/// The most frames one page returns.
const MAX_LIMIT: usize = 1000;
/// How long an inject or close request waits to see its frame written
/// before answering 202 (queued) instead of 200.
const WAIT_WRITTEN: Duration = Duration::from_secs(5);
/// A comment line on idle event streams, so dead subscribers are noticed.
const KEEPALIVE: Duration = Duration::from_secs(15);
/// Live events sent in one chunk at most.
const SSE_BATCH: usize = 256;

/// What every request handler can reach. The proxy is held weakly: its
/// shared state owns the event sender, and the sinks (this view's store
/// among them) only finish once every sender is gone.
pub struct Ctx {
    pub store: Arc<Store>,
    pub proxy: Weak<Shared>,
    /// Event streams still open: stopping waits for them to say `end`.
    pub streams: Arc<std::sync::atomic::AtomicUsize>,
    /// How long a request body may take to arrive in full.
    pub body_timeout: Duration,
}

/// Counts an open event stream for as long as it lives.
struct StreamCount(Arc<std::sync::atomic::AtomicUsize>);

impl StreamCount {
    fn new(n: &Arc<std::sync::atomic::AtomicUsize>) -> Self {
        n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        StreamCount(n.clone())
    }
}

impl Drop for StreamCount {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Answers one request that passed the guard.
pub async fn route(ctx: Arc<Ctx>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let segs: Vec<&str> = path.split('/').skip(1).collect();
    let method = req.method().clone();
    let result = match (segs.as_slice(), &method) {
        ([""], &Method::GET) | (["index.html"], &Method::GET) => {
            Ok(asset(INDEX_HTML, "text/html; charset=utf-8"))
        }
        (["app.js"], &Method::GET) => Ok(asset(APP_JS, "text/javascript; charset=utf-8")),
        (["app.css"], &Method::GET) => Ok(asset(APP_CSS, "text/css; charset=utf-8")),
        (["api", "connections"], &Method::GET) => {
            Ok(http::json(StatusCode::OK, &ctx.store.connections()))
        }
        (["api", "connections", id], &Method::GET) => connection(&ctx, id),
        (["api", "connections", id, "frames"], &Method::GET) => frames(&ctx, id, &query),
        (["api", "connections", id, "inject"], &Method::POST) => inject_route(&ctx, id, req).await,
        (["api", "connections", id, "close"], &Method::POST) => close_route(&ctx, id, req).await,
        (["api", "connections", id, "frames", n, "replay"], &Method::POST) => {
            replay_route(&ctx, id, n, req).await
        }
        (["api", "events"], &Method::GET) => Ok(events(&ctx)),
        _ => Err(not_routed(&segs, &method)),
    };
    result.unwrap_or_else(ApiError::into_response)
}

fn not_routed(segs: &[&str], method: &Method) -> ApiError {
    let allow = match segs {
        [""] | ["index.html"] | ["app.js"] | ["app.css"] | ["api", "events"] => Some("GET"),
        ["api", "connections"] | ["api", "connections", _] => Some("GET"),
        ["api", "connections", _, "frames"] => Some("GET"),
        ["api", "connections", _, "inject" | "close"] => Some("POST"),
        ["api", "connections", _, "frames", _, "replay"] => Some("POST"),
        _ => None,
    };
    match allow {
        Some(a) => ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} is not allowed here; use {a}"),
        ),
        None => ApiError::new(StatusCode::NOT_FOUND, "no such page or API route"),
    }
}

fn asset(body: &'static str, content_type: &'static str) -> Response<Body> {
    let mut r = http::with_body(
        StatusCode::OK,
        content_type,
        Bytes::from_static(body.as_bytes()),
    );
    r.headers_mut()
        .insert("cache-control", HeaderValue::from_static("no-cache"));
    r
}

fn parse_id(id: &str) -> Result<u64, ApiError> {
    id.parse()
        .map_err(|_| ApiError::new(StatusCode::NOT_FOUND, format!("no connection {id:?}")))
}

fn connection(ctx: &Ctx, id: &str) -> Result<Response<Body>, ApiError> {
    let id = parse_id(id)?;
    match ctx.store.connection(id) {
        Some(c) => Ok(http::json(StatusCode::OK, &c)),
        None => Err(unknown(id)),
    }
}

fn unknown(id: u64) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!(
            "no connection {id} (never seen, or forgotten to stay within the live view's limits)"
        ),
    )
}

/// A frame as the API returns it: the frame event with its number.
#[derive(Serialize)]
struct FrameOut<'a> {
    n: u64,
    ts: String,
    conn: u64,
    event: &'static str,
    #[serde(flatten)]
    frame: &'a FrameEvent,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    findings: &'a [String],
}

fn frame_filter(query: &str) -> Result<(FrameFilter, usize, usize), ApiError> {
    let params = http::parse_query(query).ok_or_else(|| ApiError::bad("malformed query string"))?;
    let mut f = FrameFilter::default();
    let mut offset = 0usize;
    let mut limit = DEFAULT_LIMIT;
    let flag = |k: &str, v: &str| -> Result<bool, ApiError> {
        match v {
            "" | "1" | "true" | "yes" => Ok(true),
            "0" | "false" | "no" => Ok(false),
            _ => Err(ApiError::bad(format!("{k}={v:?}: expected 1 or 0"))),
        }
    };
    for (k, v) in &params {
        match k.as_str() {
            "offset" => {
                offset = v
                    .parse()
                    .map_err(|_| ApiError::bad(format!("offset={v:?}: expected a number")))?
            }
            "limit" => {
                let l: usize = v
                    .parse()
                    .map_err(|_| ApiError::bad(format!("limit={v:?}: expected a number")))?;
                limit = l.min(MAX_LIMIT);
            }
            "from" | "direction" => {
                f.from = match v.as_str() {
                    "client" => Some(Dir::ClientToServer),
                    "server" => Some(Dir::ServerToClient),
                    "" | "any" => None,
                    _ => {
                        return Err(ApiError::bad(format!(
                            "{k}={v:?}: expected client or server"
                        )))
                    }
                }
            }
            "opcode" => {
                if !v.is_empty() {
                    let ops = v
                        .split(',')
                        .map(|o| {
                            Opcode::parse_name(o.trim())
                                .ok_or_else(|| ApiError::bad(format!("opcode {o:?} is not an opcode name (text, binary, close, ping, pong, continuation, reserved-N)")))
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    f.opcodes = Some(ops);
                }
            }
            "q" => f.text = (!v.is_empty()).then(|| v.clone()),
            "findings" => f.findings_only = flag(k, v)?,
            "injected" => f.injected_only = flag(k, v)?,
            _ => return Err(ApiError::bad(format!("unknown parameter {k:?}"))),
        }
    }
    Ok((f, offset, limit))
}

fn frames(ctx: &Ctx, id: &str, query: &str) -> Result<Response<Body>, ApiError> {
    let id = parse_id(id)?;
    let (filter, offset, limit) = frame_filter(query)?;
    let snap = ctx.store.frames(id).ok_or_else(|| unknown(id))?;
    // filtering runs on the snapshot, outside the store's lock
    let mut total = 0usize;
    let mut page: Vec<&Arc<StoredFrame>> = Vec::with_capacity(limit.min(256));
    let mut first = None;
    for f in snap.iter() {
        first.get_or_insert(f.n);
        if !filter.matches(f) {
            continue;
        }
        if total >= offset && page.len() < limit {
            page.push(f);
        }
        total += 1;
    }
    let out: Vec<FrameOut> = page
        .iter()
        .map(|f| FrameOut {
            n: f.n,
            ts: humantime::format_rfc3339_micros(f.ts).to_string(),
            conn: id,
            event: "frame",
            frame: &f.frame,
            findings: &f.findings,
        })
        .collect();
    let mut r = http::json(StatusCode::OK, &out);
    let h = r.headers_mut();
    h.insert("x-total-count", HeaderValue::from(total as u64));
    if let Some(first) = first {
        h.insert("x-first-frame", HeaderValue::from(first));
    }
    Ok(r)
}

/// Which side an injected frame goes to.
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
enum Side {
    Server,
    Client,
}

impl Side {
    fn dir(self) -> Dir {
        match self {
            Side::Server => Dir::ClientToServer,
            Side::Client => Dir::ServerToClient,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum InjectOpcode {
    Text,
    Binary,
    Ping,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InjectReq {
    to: Side,
    opcode: InjectOpcode,
    #[serde(default)]
    data: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CloseReq {
    #[serde(default = "normal_closure")]
    code: u16,
    #[serde(default)]
    reason: String,
}

fn normal_closure() -> u16 {
    1000
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayReq {
    to: Option<Side>,
}

/// The control handles of an open WebSocket and the preview size for the
/// frames sent through them: `404` for a connection never seen, `409` for
/// one that is not (or no longer) an open WebSocket.
fn open_controls(ctx: &Ctx, id: u64) -> Result<(Controls, usize), ApiError> {
    let open = ctx.proxy.upgrade().and_then(|p| {
        let c = p.open.lock().ok()?.get(&ConnId(id)).cloned()?;
        Some((c, p.cfg.max_preview))
    });
    if let Some(c) = open {
        return Ok(c);
    }
    match ctx.store.status(id) {
        None => Err(unknown(id)),
        Some(true) => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("connection {id} is closed"),
        )),
        Some(false) => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("connection {id} is not an open WebSocket"),
        )),
    }
}

fn still_open(ctx: &Ctx, id: u64) -> bool {
    ctx.proxy
        .upgrade()
        .and_then(|p| p.open.lock().ok().map(|m| m.contains_key(&ConnId(id))))
        .unwrap_or(false)
}

#[derive(Serialize)]
struct Sent {
    written: bool,
    to: Side,
    opcode: &'static str,
    len: usize,
}

async fn inject_route(
    ctx: &Ctx,
    id: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let id = parse_id(id)?;
    let (controls, max_preview) = open_controls(ctx, id)?;
    let Some(body) = http::read_json::<InjectReq>(req, false, ctx.body_timeout).await? else {
        return Err(ApiError::bad("a JSON body is required"));
    };
    let (opcode, payload) = match body.opcode {
        InjectOpcode::Text => (Opcode::Text, body.data.into_bytes()),
        InjectOpcode::Ping => (Opcode::Ping, body.data.into_bytes()),
        InjectOpcode::Binary => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(body.data.trim())
                .map_err(|e| ApiError::bad(format!("binary data must be base64: {e}")))?;
            (Opcode::Binary, bytes)
        }
    };
    send_frame(&controls, max_preview, body.to, opcode, payload).await
}

/// Checks the size, hands the frame to the pump and waits (a little) to
/// hear that it was written.
async fn send_frame(
    controls: &Controls,
    max_preview: usize,
    to: Side,
    opcode: Opcode,
    payload: Vec<u8>,
) -> Result<Response<Body>, ApiError> {
    if opcode.is_control() && payload.len() > 125 {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "a {} carries at most 125 bytes (RFC 6455 §5.5); this one has {}",
                opcode.name(),
                payload.len()
            ),
        ));
    }
    if payload.len() > MAX_MESSAGE {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "message of {} bytes; the live view injects at most {MAX_MESSAGE}",
                payload.len()
            ),
        ));
    }
    let dir = to.dir();
    let len = payload.len();
    let frame = inject::frame(dir, opcode, &payload, relay::random_mask(), max_preview);
    let (done, written) = oneshot::channel();
    hand_over(
        controls.toward(dir),
        Control::Inject {
            frame,
            done: Some(done),
        },
    )?;
    let sent = |written| Sent {
        written,
        to,
        opcode: opcode.name(),
        len,
    };
    match tokio::time::timeout(WAIT_WRITTEN, written).await {
        Ok(Ok(Ok(()))) => Ok(http::json(StatusCode::OK, &sent(true))),
        Ok(Ok(Err(e))) => Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            format!("writing the frame to the {} failed: {e}", dir.receiver()),
        )),
        Ok(Err(_)) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "the connection ended before the frame could be written",
        )),
        // still waiting for a message boundary: it goes out when one comes
        Err(_) => Ok(http::json(StatusCode::ACCEPTED, &sent(false))),
    }
}

fn hand_over(tx: &mpsc::Sender<Box<Control>>, c: Control) -> Result<(), ApiError> {
    tx.try_send(Box::new(c)).map_err(|e| match e {
        mpsc::error::TrySendError::Full(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many frames are already waiting for this connection; try again",
        ),
        mpsc::error::TrySendError::Closed(_) => {
            ApiError::new(StatusCode::CONFLICT, "the connection is closing")
        }
    })
}

async fn close_route(
    ctx: &Ctx,
    id: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let id = parse_id(id)?;
    let (controls, max_preview) = open_controls(ctx, id)?;
    let body = http::read_json::<CloseReq>(req, true, ctx.body_timeout)
        .await?
        .unwrap_or(CloseReq {
            code: normal_closure(),
            reason: String::new(),
        });
    if !close_code::valid_on_wire(body.code) {
        return Err(ApiError::bad(format!(
            "close code {} may not be sent in a close frame ({}); use 1000-1003, 1007-1014 or 3000-4999",
            body.code,
            close_code::meaning(body.code)
        )));
    }
    if body.reason.len() > 123 {
        return Err(ApiError::bad(format!(
            "close reason of {} bytes; a close frame holds at most 123 (RFC 6455 §5.5)",
            body.reason.len()
        )));
    }
    for dir in [Dir::ClientToServer, Dir::ServerToClient] {
        let frame = inject::close(
            dir,
            body.code,
            &body.reason,
            relay::random_mask(),
            max_preview,
        );
        hand_over(
            controls.toward(dir),
            Control::CloseAndEnd {
                frame,
                reason: "closed-from-live-view",
                detail: format!(
                    "wstap sent {} ({}) to both sides from the live view",
                    body.code, body.reason
                ),
            },
        )?;
    }
    #[derive(Serialize)]
    struct Closed {
        closed: bool,
        code: u16,
    }
    // The relay takes the connection out of the open set when both sides
    // are done; answer once it has, or 202 if that takes long.
    let deadline = tokio::time::Instant::now() + WAIT_WRITTEN;
    loop {
        if !still_open(ctx, id) {
            return Ok(http::json(
                StatusCode::OK,
                &Closed {
                    closed: true,
                    code: body.code,
                },
            ));
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(http::json(
                StatusCode::ACCEPTED,
                &Closed {
                    closed: false,
                    code: body.code,
                },
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The whole payload of a logged single-frame message, when the log holds
/// all of it; else why not.
pub fn replayable(f: &FrameEvent) -> Result<Vec<u8>, String> {
    if !matches!(f.opcode, Opcode::Text | Opcode::Binary | Opcode::Ping) {
        return Err(format!(
            "a {} frame cannot be replayed (text, binary and ping can; use close to close)",
            f.opcode.name()
        ));
    }
    if !f.fin {
        return Err(
            "this frame starts a fragmented message; replay takes single-frame messages".into(),
        );
    }
    if f.truncated {
        return Err(format!(
            "only part of this {}-byte message was logged (--max-preview); replay needs all of it",
            f.len
        ));
    }
    if let Some(note) = &f.note {
        return Err(format!(
            "the logged preview is not the whole message: {note}"
        ));
    }
    let bytes = match f.encoding {
        Encoding::Utf8 => f.preview.as_bytes().to_vec(),
        Encoding::Hex => {
            preview::unhex(&f.preview).ok_or("the logged hex preview does not decode")?
        }
    };
    if !f.compressed && bytes.len() as u64 != f.len {
        return Err(format!(
            "the log holds {} of the {} payload bytes",
            bytes.len(),
            f.len
        ));
    }
    Ok(bytes)
}

async fn replay_route(
    ctx: &Ctx,
    id: &str,
    n: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let id = parse_id(id)?;
    let n: u64 = n
        .parse()
        .map_err(|_| ApiError::new(StatusCode::NOT_FOUND, format!("no frame {n:?}")))?;
    let stored = match ctx.store.frame(id, n) {
        Some(f) => f,
        None if ctx.store.status(id).is_none() => return Err(unknown(id)),
        None => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("frame {n} of connection {id} is not kept (not seen yet, or trimmed)"),
            ))
        }
    };
    let (controls, max_preview) = open_controls(ctx, id)?;
    let body = http::read_json::<ReplayReq>(req, true, ctx.body_timeout)
        .await?
        .unwrap_or_default();
    let payload = replayable(&stored.frame)
        .map_err(|m| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, m))?;
    let to = body.to.unwrap_or(match stored.frame.from {
        Dir::ClientToServer => Side::Server,
        Dir::ServerToClient => Side::Client,
    });
    send_frame(&controls, max_preview, to, stored.frame.opcode, payload).await
}

/// `GET /api/events`: every event as it happens, one SSE message each
/// (`id` numbers them, `data` is the event's JSON, frames with `n`). A
/// subscriber that falls behind gets `event: resync` and should reload
/// through the API; `event: end` when the proxy stops.
fn events(ctx: &Ctx) -> Response<Body> {
    struct St {
        rx: broadcast::Receiver<Live>,
        started: bool,
        done: bool,
        _count: StreamCount,
    }
    let st = St {
        rx: ctx.store.subscribe(),
        started: false,
        done: ctx.store.ended(),
        _count: StreamCount::new(&ctx.streams),
    };
    let stream = futures_util::stream::unfold(st, |mut st| async move {
        if !st.started {
            st.started = true;
            let hello: &'static [u8] = if st.done {
                b"retry: 2000\n\nevent: end\ndata: {}\n\n"
            } else {
                b"retry: 2000\n: wstap live events\n\n"
            };
            return Some((
                Ok::<_, Infallible>(Frame::data(Bytes::from_static(hello))),
                st,
            ));
        }
        if st.done {
            // dropping `st` here uncounts the stream
            return None;
        }
        let mut out = String::new();
        let first = tokio::select! {
            r = st.rx.recv() => Some(r),
            _ = tokio::time::sleep(KEEPALIVE) => None,
        };
        match first {
            None => out.push_str(": keepalive\n\n"),
            Some(r) => {
                let mut next = Some(r);
                let mut n = 0;
                while let Some(r) = next.take() {
                    match r {
                        Ok(Live::Event(seq, json)) => {
                            out.push_str(&format!("id: {seq}\ndata: {json}\n\n"));
                        }
                        Ok(Live::End) | Err(broadcast::error::RecvError::Closed) => {
                            out.push_str("event: end\ndata: {}\n\n");
                            st.done = true;
                            break;
                        }
                        Err(broadcast::error::RecvError::Lagged(missed)) => {
                            out.push_str(&format!(
                                "event: resync\ndata: {{\"missed\":{missed}}}\n\n"
                            ));
                        }
                    }
                    n += 1;
                    if n < SSE_BATCH {
                        next = match st.rx.try_recv() {
                            Ok(m) => Some(Ok(m)),
                            Err(broadcast::error::TryRecvError::Lagged(k)) => {
                                Some(Err(broadcast::error::RecvError::Lagged(k)))
                            }
                            Err(_) => None,
                        };
                    }
                }
            }
        }
        Some((Ok(Frame::data(Bytes::from(out))), st))
    });
    let mut r = http::streaming(
        StatusCode::OK,
        "text/event-stream",
        StreamBody::new(stream).boxed_unsync(),
    );
    r.headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(preview: &str, len: u64) -> FrameEvent {
        FrameEvent {
            preview: preview.into(),
            ..FrameEvent::new(Dir::ClientToServer, Opcode::Text, len)
        }
    }

    #[test]
    fn only_whole_single_frame_messages_replay() {
        assert_eq!(replayable(&text("hello", 5)).unwrap(), b"hello");
        let mut bin = text("00ff10", 3);
        bin.opcode = Opcode::Binary;
        bin.encoding = Encoding::Hex;
        assert_eq!(replayable(&bin).unwrap(), vec![0, 0xff, 0x10]);
        let mut cut = text("hel", 5);
        cut.truncated = true;
        assert!(replayable(&cut).unwrap_err().contains("--max-preview"));
        let mut frag = text("hel", 3);
        frag.fin = false;
        assert!(replayable(&frag).unwrap_err().contains("fragmented"));
        let mut close = text("", 0);
        close.opcode = Opcode::Close;
        assert!(replayable(&close).is_err());
        assert!(replayable(&text("hel", 5)).is_err(), "length mismatch");
    }

    #[test]
    fn frame_filters_parse_and_refuse_nonsense() {
        let (f, off, lim) =
            frame_filter("from=server&opcode=text,ping&q=a+b&findings=1&offset=5&limit=5000")
                .unwrap();
        assert_eq!(f.from, Some(Dir::ServerToClient));
        assert_eq!(f.opcodes, Some(vec![Opcode::Text, Opcode::Ping]));
        assert_eq!(f.text.as_deref(), Some("a b"));
        assert!(f.findings_only);
        assert_eq!((off, lim), (5, MAX_LIMIT));
        for bad in [
            "from=middle",
            "opcode=texty",
            "offset=-1",
            "limit=x",
            "findings=maybe",
            "color=red",
            "q=%zz",
        ] {
            let e = frame_filter(bad).unwrap_err();
            assert_eq!(e.0, StatusCode::BAD_REQUEST, "{bad}");
        }
    }
}
