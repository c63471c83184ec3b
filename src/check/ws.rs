//! The upper layers of a check over an open connection: a real upgrade
//! request judged by `proto::analysis`, then a ping, an optional message,
//! an optional idle hold and a clean close, with the server's frames read
//! through the proxy's own stream tap (violations become findings).

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use tokio::io::AsyncWriteExt;

use super::{CheckOptions, Exchange, Failed, IdleOutcome, Target, Walk, WsOutcome};
use crate::proto::analysis;
use crate::proto::close_code;
use crate::proto::event::{
    ConnId, Dir, Event, EventKind, Finding, FrameEvent, Handshake, Severity,
};
use crate::proto::failure::UpstreamFailure;
use crate::proto::frame::Opcode;
use crate::proto::handshake::{accept_key, Negotiated};
use crate::proto::http::{
    parse_response_head, response_body, BodyKind, Header, Headers, RequestHead, ResponseHead,
    Version,
};
use crate::proto::inject;
use crate::proto::preview;
use crate::proto::session::{human, idle_finding};
use crate::proto::stream::{StreamTap, TapConfig};
use crate::proxy::body::{copy_body, Capture};
use crate::proxy::io::{BoxIo, Inbound, ReadHeadError};
use crate::proxy::relay::random_mask;

/// Body bytes of a refused upgrade kept for the explanation (as the proxy).
const BODY_PREVIEW: usize = 512;
/// Payload bytes of a server message kept for the report.
const KEEP: usize = 64 * 1024;
/// Characters of a reply shown in the checklist line.
const SHOWN: usize = 120;

/// A fresh `Sec-WebSocket-Key`: 16 random bytes, base64 (RFC 6455 §4.1).
fn fresh_key() -> String {
    let mut b = [0u8; 16];
    for chunk in b.chunks_mut(4) {
        chunk.copy_from_slice(&random_mask());
    }
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// The upgrade request: the headers a browser sends, then `--header`
/// values, which replace a default of the same name.
pub(super) fn build_request(target: &Target, opts: &CheckOptions, key: &str) -> RequestHead {
    let mut headers = vec![
        Header::new("Host", target.host_header()),
        Header::new("Upgrade", "websocket"),
        Header::new("Connection", "Upgrade"),
        Header::new("Sec-WebSocket-Key", key),
        Header::new("Sec-WebSocket-Version", "13"),
    ];
    if let Some(o) = &opts.origin {
        headers.push(Header::new("Origin", o.as_str()));
    }
    if !opts.subprotocols.is_empty() {
        headers.push(Header::new(
            "Sec-WebSocket-Protocol",
            opts.subprotocols.join(", "),
        ));
    }
    headers.push(Header::new(
        "User-Agent",
        concat!("wstap-check/", env!("CARGO_PKG_VERSION")),
    ));
    // a --header replaces the default of its name; repeated ones add up
    let defaults = headers.len();
    let mut replaced = vec![false; defaults];
    for (name, value) in &opts.headers {
        let slot =
            (0..defaults).find(|&i| !replaced[i] && headers[i].name.eq_ignore_ascii_case(name));
        match slot {
            Some(i) => {
                headers[i] = Header::new(name.as_str(), value.as_str());
                replaced[i] = true;
            }
            None => headers.push(Header::new(name.as_str(), value.as_str())),
        }
    }
    RequestHead {
        method: "GET".into(),
        target: target.target.clone(),
        version: Version::Http11,
        headers,
    }
}

/// How reading from the server stopped.
#[derive(Debug)]
enum Ended {
    /// The server closed the TCP connection.
    Eof,
    /// Reading failed (a reset).
    Broken(String),
    /// Nothing came by the deadline.
    Timeout,
}

impl Ended {
    fn words(&self) -> String {
        match self {
            Ended::Eof => {
                "the server closed the TCP connection without a close frame (clients see 1006)"
                    .into()
            }
            Ended::Broken(e) => format!("the connection failed ({e}); clients see 1006"),
            Ended::Timeout => "nothing arrived".into(),
        }
    }

    /// Why a write failed, as the I/O error said it.
    fn cause(&self) -> String {
        match self {
            Ended::Broken(e) => e.clone(),
            e => e.words(),
        }
    }
}

/// The open WebSocket, from the client's side.
struct Conn {
    io: Inbound<BoxIo>,
    tap: StreamTap,
    queue: VecDeque<FrameEvent>,
    findings: Vec<Finding>,
    /// When the last frame arrived or left, and the one before it.
    last_frame: Instant,
    prev_frame: Instant,
    pings_answered: u32,
}

impl Conn {
    async fn send(
        &mut self,
        opcode: Opcode,
        payload: &[u8],
        deadline: Instant,
    ) -> Result<(), Ended> {
        let f = inject::frame(Dir::ClientToServer, opcode, payload, random_mask(), 0);
        self.write(&f.wire, deadline).await
    }

    /// Writes by `deadline`, as reads are bounded: a server that sends
    /// without reading fills the socket buffers and would block a write
    /// for ever. An expired write is [`Ended::Timeout`], as a read is.
    async fn write(&mut self, bytes: &[u8], deadline: Instant) -> Result<(), Ended> {
        let w = self.io.get_mut();
        let written = async {
            w.write_all(bytes).await?;
            w.flush().await
        };
        match tokio::time::timeout_at(deadline.into(), written).await {
            Err(_) => return Err(Ended::Timeout),
            Ok(Err(e)) => return Err(Ended::Broken(e.to_string())),
            Ok(Ok(())) => {}
        }
        self.last_frame = Instant::now();
        Ok(())
    }

    /// Runs the buffered bytes through the tap.
    fn feed(&mut self) {
        let mut out: Vec<Event> = Vec::new();
        let n = self.io.buffered().len();
        self.tap
            .feed(self.io.buffered(), SystemTime::now(), &mut out);
        self.io.consume(n);
        for ev in out {
            match ev.kind {
                EventKind::Frame(f) => self.queue.push_back(f),
                EventKind::Finding(f) => self.findings.push(f),
                _ => {}
            }
        }
    }

    /// The next frame from the server by `deadline`. Pings are answered
    /// on the way (RFC 6455 §5.5.2), so a server's keepalive never fails a
    /// check.
    async fn next(&mut self, deadline: Instant) -> Result<FrameEvent, Ended> {
        loop {
            // checked first: a server that never stops sending must not
            // keep a step going past its deadline
            if Instant::now() >= deadline {
                return Err(Ended::Timeout);
            }
            if let Some(f) = self.queue.pop_front() {
                self.prev_frame = self.last_frame;
                self.last_frame = Instant::now();
                if f.opcode == Opcode::Ping {
                    let payload = f.payload.clone().unwrap_or_default();
                    self.send(Opcode::Pong, &payload, deadline).await?;
                    self.pings_answered += 1;
                    continue;
                }
                return Ok(f);
            }
            if !self.io.buffered().is_empty() {
                self.feed();
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.io.fill()).await {
                Err(_) => return Err(Ended::Timeout),
                Ok(Ok(0)) => return Err(Ended::Eof),
                Ok(Ok(_)) => self.feed(),
                Ok(Err(e)) => return Err(Ended::Broken(e.to_string())),
            }
        }
    }
}

/// Unsolicited frames described in the report; the rest are only counted,
/// so a chatty server cannot grow it.
const UNSOLICITED_SHOWN: usize = 5;

impl WsOutcome {
    fn note_unsolicited(&mut self, f: &FrameEvent) {
        self.unsolicited_total += 1;
        if self.unsolicited.len() < UNSOLICITED_SHOWN {
            self.unsolicited.push(describe_frame(f));
        }
    }
}

/// A frame for the report: `text "hi"`, `binary 12 bytes`, `close 1000`.
fn describe_frame(f: &FrameEvent) -> String {
    match f.opcode {
        Opcode::Close => describe_close(f),
        Opcode::Text => format!("text {:?}", shorten(&f.preview)),
        op => format!("{op} ({} bytes)", f.len),
    }
}

fn describe_close(f: &FrameEvent) -> String {
    match f.close_code {
        Some(code) => {
            let reason = f
                .close_reason
                .as_deref()
                .filter(|r| !r.is_empty())
                .map(|r| format!(" {r:?}"))
                .unwrap_or_default();
            format!("{code} ({}){reason}", close_code::name(code))
        }
        None => "an empty close frame".into(),
    }
}

fn shorten(s: &str) -> String {
    if s.chars().count() > SHOWN {
        let cut: String = s.chars().take(SHOWN).collect();
        format!("{cut}…")
    } else {
        s.to_string()
    }
}

/// The bytes the server answered with, when they are not HTTP.
fn not_http(buffered: &[u8], why: &str) -> Failed {
    // a TLS record (alert 0x15 or handshake 0x16, version 3.x): a TLS port
    if buffered.len() >= 2 && matches!(buffered[0], 0x15 | 0x16) && buffered[1] == 3 {
        return Failed::new(
            "the server answered in TLS, not plain HTTP (ws:// vs wss://?)",
            "This port speaks TLS: use wss:// (or https://) for it.",
        );
    }
    let (shown, _) = preview::render(&buffered[..buffered.len().min(64)], false, true);
    Failed::new(
        format!("the answer is not an HTTP response ({why}): {shown:?}"),
        "Something other than an HTTP server listens on this port (a database, SSH, another protocol), or the URL's port is wrong.",
    )
}

pub(super) async fn walk_websocket(
    walk: &mut Walk,
    io: BoxIo,
    target: &Target,
    opts: &CheckOptions,
) {
    let addr = walk
        .report
        .connected_to
        .clone()
        .unwrap_or_else(|| target.url.authority());
    let mut io = Inbound::new(io);

    // http-upgrade
    let started = Instant::now();
    let key = fresh_key();
    let req = build_request(target, opts, &key);
    walk.report.handshake = Some(Exchange {
        request: req.view(),
        response: None,
    });
    let dropped = |detail: String| {
        Failed::from(&UpstreamFailure::Dropped {
            addr: addr.clone(),
            detail,
        })
    };
    let written = async {
        let w = io.get_mut();
        w.write_all(&req.to_bytes()).await?;
        w.flush().await
    };
    // bounded as the answer is: a peer that never reads must not hang the check
    match tokio::time::timeout_at((started + opts.timeout).into(), written).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            walk.fail("http-upgrade", dropped(e.to_string()), started);
            return;
        }
        Err(_) => {
            let f = UpstreamFailure::NoResponse {
                addr: addr.clone(),
                after: opts.timeout,
            };
            walk.fail("http-upgrade", Failed::from(&f), started);
            return;
        }
    }
    let res = match io.read_head_within(parse_response_head, opts.timeout).await {
        Ok(Some((head, _))) => head,
        Ok(None) => {
            walk.fail(
                "http-upgrade",
                dropped("it ended the connection before answering".into()),
                started,
            );
            return;
        }
        Err(ReadHeadError::Timeout(..)) => {
            let f = UpstreamFailure::NoResponse {
                addr: addr.clone(),
                after: opts.timeout,
            };
            walk.fail("http-upgrade", Failed::from(&f), started);
            return;
        }
        Err(ReadHeadError::Head(e)) => {
            walk.fail(
                "http-upgrade",
                not_http(io.buffered(), &e.to_string()),
                started,
            );
            return;
        }
        Err(ReadHeadError::Truncated(n)) => {
            let f = dropped(format!("the response head ended after {n} bytes"));
            walk.fail("http-upgrade", f, started);
            return;
        }
        Err(ReadHeadError::Io(e)) => {
            walk.fail("http-upgrade", dropped(e.to_string()), started);
            return;
        }
    };
    let mut res_view = res.view();
    if res.status != 101 {
        res_view.body_preview = read_body_preview(&mut io, &res, opts.timeout).await;
    }
    let hs = Handshake {
        client_request: Some(req.view()),
        upstream_response: Some(res_view.clone()),
        ..Default::default()
    };
    let findings = analysis::analyze(&hs);
    walk.report.handshake = Some(Exchange {
        request: req.view(),
        response: Some(res_view),
    });
    let first_error = findings
        .iter()
        .find(|f| f.severity == Severity::Error)
        .cloned();
    walk.report.findings.extend(findings);
    if let Some(f) = first_error {
        // the status leads the line already
        let what = f
            .message
            .strip_prefix("the upgrade was not accepted: ")
            .unwrap_or(&f.message);
        let mut detail = format!("{} {}: {what}", res.status, res.reason);
        if let (300..=399, Some(to)) = (res.status, res.header("Location")) {
            detail.push_str(&format!(" (Location: {to})"));
        }
        walk.fail("http-upgrade", Failed::new(detail, f.hint), started);
        return;
    }
    let negotiated = Negotiated::from_response(&res);
    walk.pass(
        "http-upgrade",
        describe_upgrade(&res, &key, &negotiated, opts, started.elapsed()),
        started,
    );

    // websocket
    let started = Instant::now();
    let tap = StreamTap::new(
        ConnId(0),
        Dir::ServerToClient,
        TapConfig {
            max_preview: KEEP,
            capture: KEEP,
            negotiated,
            frames_unwanted: false,
        },
    );
    let mut conn = Conn {
        io,
        tap,
        queue: VecDeque::new(),
        findings: Vec::new(),
        last_frame: Instant::now(),
        prev_frame: Instant::now(),
        pings_answered: 0,
    };
    let mut out = WsOutcome::default();
    let result = exchange(&mut conn, opts, &mut out).await;
    walk.report.findings.append(&mut conn.findings);
    if let Err(f) = result {
        walk.report.websocket = Some(out);
        walk.fail("websocket", f, started);
        return;
    }
    let ws_ms = started;

    // idle hold (before the close, on the same connection: hops time out
    // connections, not requests)
    let mut hold = None;
    if let Some(idle) = opts.idle {
        let started = Instant::now();
        let (outcome, failed) = hold_idle(&mut conn, idle, &mut out).await;
        walk.report.findings.append(&mut conn.findings);
        hold = Some((outcome, failed, started));
    }
    let cut = hold.as_ref().is_some_and(|(o, _, _)| o.cut);

    let closed = if cut {
        out.close = Some("not closed: the connection was cut during the idle hold".into());
        Ok(())
    } else {
        close(&mut conn, opts.timeout, &mut out).await
    };
    walk.report.findings.append(&mut conn.findings);
    let detail = describe_ws(&out, conn.pings_answered);
    walk.report.websocket = Some(out);
    match closed {
        Ok(()) => walk.pass("websocket", detail, ws_ms),
        // the hold, if any, ran and is reported below; the close came after it
        Err(f) => walk.fail_only("websocket", f, ws_ms),
    }
    if let Some((outcome, failed, started)) = hold {
        let detail = describe_idle(&outcome);
        walk.report.idle = Some(outcome);
        match failed {
            None => walk.pass("idle", detail, started),
            Some(f) => walk.fail("idle", f, started),
        }
    }
}

/// Reads up to [`BODY_PREVIEW`] bytes of a refused upgrade's body (a page
/// handler's HTML tells a wrong path from a stripped header).
async fn read_body_preview(
    io: &mut Inbound<BoxIo>,
    res: &ResponseHead,
    timeout: Duration,
) -> Option<String> {
    let framing = response_body("GET", res).unwrap_or(BodyKind::UntilClose);
    let mut captured = Vec::new();
    let mut discard = tokio::io::sink();
    let limit = timeout.min(Duration::from_secs(2));
    let copy = copy_body(
        io,
        &mut discard,
        framing,
        Some(Capture {
            buf: &mut captured,
            limit: BODY_PREVIEW,
        }),
        None,
    );
    // a body that never ends is cut by the limit; what came is enough
    let _ = tokio::time::timeout(limit, copy).await;
    (!captured.is_empty()).then(|| preview::render(&captured, false, true).0)
}

fn describe_upgrade(
    res: &ResponseHead,
    key: &str,
    n: &Negotiated,
    opts: &CheckOptions,
    took: Duration,
) -> String {
    let accept = accept_key(key);
    let mut parts = vec![format!(
        "{} {} in {}; Sec-WebSocket-Accept matches the key ({accept})",
        res.status,
        res.reason,
        super::took(took)
    )];
    parts.push(match (&n.subprotocol, opts.subprotocols.is_empty()) {
        (Some(p), _) => format!("subprotocol {p}"),
        (None, true) => "no subprotocol".into(),
        (None, false) => format!(
            "no subprotocol chosen (offered {})",
            opts.subprotocols.join(", ")
        ),
    });
    if n.extensions.is_empty() {
        parts.push("no extensions".into());
    } else {
        let names: Vec<_> = n.extensions.iter().map(|e| e.name.as_str()).collect();
        parts.push(format!("extensions {}", names.join(", ")));
    }
    parts.join("; ")
}

/// Ping, then the optional message.
async fn exchange(conn: &mut Conn, opts: &CheckOptions, out: &mut WsOutcome) -> Result<(), Failed> {
    let m = random_mask();
    let token = format!(
        "wstap-check {:02x}{:02x}{:02x}{:02x}",
        m[0], m[1], m[2], m[3]
    );
    let sent_at = Instant::now();
    let deadline = sent_at + opts.timeout;
    match conn.send(Opcode::Ping, token.as_bytes(), deadline).await {
        Ok(()) => {}
        Err(Ended::Timeout) => return Err(no_pong(opts.timeout)),
        Err(e) => return Err(gone("sending a ping", &e.cause())),
    }
    loop {
        match conn.next(deadline).await {
            Ok(f) if f.opcode == Opcode::Pong => {
                if f.payload.as_deref() == Some(token.as_bytes()) {
                    out.rtt_ms = Some(crate::proto::event::millis(sent_at.elapsed()));
                    break;
                }
                // an unsolicited pong (RFC 6455 §5.5.3): keep waiting
            }
            Ok(f) if f.opcode == Opcode::Close => {
                answer_close(conn, &f, deadline).await;
                return Err(Failed::new(
                    format!(
                        "the server closed with {} instead of answering the ping",
                        describe_close(&f)
                    ),
                    format!(
                        "{} Check the server's logs for why it closes new connections.",
                        close_code::meaning(f.close_code.unwrap_or(1005))
                    ),
                ));
            }
            Ok(f) => out.note_unsolicited(&f),
            Err(Ended::Timeout) => return Err(no_pong(opts.timeout)),
            Err(e) => return Err(gone("waiting for the pong", &e.words())),
        }
    }
    if let Some(text) = &opts.send {
        out.sent = Some(text.clone());
        let sent_at = Instant::now();
        let deadline = sent_at + opts.timeout;
        match conn.send(Opcode::Text, text.as_bytes(), deadline).await {
            Ok(()) => {}
            // as when nothing came back in time: reported without a reply
            Err(Ended::Timeout) => return Ok(()),
            Err(e) => return Err(gone("sending the message", &e.cause())),
        }
        let mut message: Option<(bool, Vec<u8>)> = None;
        loop {
            match conn.next(deadline).await {
                Ok(f) if f.opcode == Opcode::Close => {
                    answer_close(conn, &f, deadline).await;
                    return Err(Failed::new(
                        format!("the server closed with {} after the message", describe_close(&f)),
                        format!("{} The server rejected what was sent: check what it expects (format, authentication first, a subprotocol).", close_code::meaning(f.close_code.unwrap_or(1005))),
                    ));
                }
                Ok(f)
                    if matches!(
                        f.opcode,
                        Opcode::Text | Opcode::Binary | Opcode::Continuation
                    ) =>
                {
                    let m = message.get_or_insert_with(|| (f.opcode != Opcode::Binary, Vec::new()));
                    if let Some(p) = &f.payload {
                        let room = KEEP.saturating_sub(m.1.len());
                        m.1.extend_from_slice(&p[..p.len().min(room)]);
                    }
                    if f.fin {
                        break;
                    }
                }
                Ok(_) => {}
                Err(Ended::Timeout) => break,
                Err(e) => return Err(gone("waiting for the reply", &e.words())),
            }
        }
        if let Some((text, bytes)) = message {
            let (shown, enc) = preview::render(&bytes, text, false);
            out.reply = Some(match enc {
                crate::proto::event::Encoding::Utf8 => shown,
                crate::proto::event::Encoding::Hex => {
                    format!("binary {} bytes: {shown}", bytes.len())
                }
            });
            out.reply_ms = Some(crate::proto::event::millis(sent_at.elapsed()));
        }
    }
    Ok(())
}

fn no_pong(timeout: Duration) -> Failed {
    Failed::new(
        format!("no pong within {}", human(timeout)),
        "RFC 6455 §5.5.2 requires a pong for every ping. A server (or a hop) that buffers or drops control frames cannot be kept alive with pings; check the server's WebSocket library and any hop in between.",
    )
}

fn gone(when: &str, how: &str) -> Failed {
    Failed::new(
        format!("the connection ended while {when}: {how}"),
        "The server accepted the upgrade and then dropped the connection: check its logs (a crash, an authentication step, a limit on connections); a hop may also cut upgraded connections it does not support.",
    )
}

/// Answers a server's close frame (RFC 6455 §5.5.1) with its code, by
/// `deadline`.
async fn answer_close(conn: &mut Conn, f: &FrameEvent, deadline: Instant) {
    let payload = f
        .close_code
        .map(|c| c.to_be_bytes().to_vec())
        .unwrap_or_default();
    let _ = conn.send(Opcode::Close, &payload, deadline).await;
}

/// Holds the connection silent for `idle`; returns what happened and, when
/// it was cut, the layer's failure.
async fn hold_idle(
    conn: &mut Conn,
    idle: Duration,
    out: &mut WsOutcome,
) -> (IdleOutcome, Option<Failed>) {
    let until = Instant::now() + idle;
    conn.last_frame = Instant::now();
    let (how, silence) = loop {
        match conn.next(until).await {
            Ok(f) if f.opcode == Opcode::Close => {
                // the silence ended with the close frame, not our answer
                let silence = conn.last_frame.duration_since(conn.prev_frame);
                answer_close(conn, &f, until).await;
                break (
                    Some(format!("the server closed with {}", describe_close(&f))),
                    silence,
                );
            }
            Ok(f) => out.note_unsolicited(&f),
            Err(Ended::Timeout) => break (None, conn.last_frame.elapsed()),
            Err(e) => break (Some(e.words()), conn.last_frame.elapsed()),
        }
    };
    let Some(how) = how else {
        return (
            IdleOutcome {
                requested_ms: crate::proto::event::millis(idle),
                cut: false,
                silence_ms: crate::proto::event::millis(silence),
                how: None,
            },
            None,
        );
    };
    let outcome = IdleOutcome {
        requested_ms: crate::proto::event::millis(idle),
        cut: true,
        silence_ms: crate::proto::event::millis(silence),
        how: Some(how.clone()),
    };
    let (failed, finding) = idle_cut(silence, &how);
    conn.findings.extend(finding);
    (outcome, Some(failed))
}

/// A silence in seconds to a tenth: timers are not more precise than that.
fn tenths(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

/// The idle layer's failure for a cut after `silence`: a known limit
/// (60 s, 100 s, 3600 s) is named with its fix, as the proxy names it.
fn idle_cut(silence: Duration, how: &str) -> (Failed, Option<Finding>) {
    match idle_finding(silence, &[], "server side") {
        Some(f) => (Failed::new(format!("{}: {how}", f.message), f.hint.clone()), Some(f)),
        None => (
            Failed::new(
                format!("cut after {} of silence: {how}", tenths(silence)),
                format!(
                    "Something between here and the server, or the server itself, ends connections idle for about {}: raise that idle/read timeout above your longest silence (nginx `proxy_read_timeout`, HAProxy `timeout tunnel`, a load balancer's idle timeout), or send pings more often than that.",
                    tenths(silence)
                ),
            ),
            None,
        ),
    }
}

fn describe_idle(o: &IdleOutcome) -> String {
    let held = human(Duration::from_secs_f64(o.requested_ms / 1000.0));
    format!("stayed open through {held} of silence")
}

/// Sends a close frame and waits for the server's.
async fn close(conn: &mut Conn, timeout: Duration, out: &mut WsOutcome) -> Result<(), Failed> {
    let sent = inject::close(
        Dir::ClientToServer,
        1000,
        "wstap check done",
        random_mask(),
        0,
    );
    let deadline = Instant::now() + timeout;
    match conn.write(&sent.wire, deadline).await {
        Ok(()) => {}
        Err(Ended::Timeout) => return Err(unanswered_close(timeout)),
        Err(e) => return Err(gone("sending the close frame", &e.cause())),
    }
    loop {
        match conn.next(deadline).await {
            Ok(f) if f.opcode == Opcode::Close => {
                out.close = Some(format!(
                    "closed cleanly: sent 1000 (Normal Closure), the server answered {}",
                    describe_close(&f)
                ));
                // the server closes TCP first (RFC 6455 §7.1.1); give it a moment
                let grace = Instant::now() + timeout.min(Duration::from_secs(1));
                while conn.next(grace).await.is_ok() {}
                let _ = tokio::time::timeout_at(grace.into(), conn.io.get_mut().shutdown()).await;
                return Ok(());
            }
            Ok(_) => {}
            Err(Ended::Timeout) => return Err(unanswered_close(timeout)),
            Err(e) => {
                return Err(Failed::new(
                    format!("the close frame was not answered: {}", e.words()),
                    "RFC 6455 §5.5.1: an endpoint answers a close frame with one before closing TCP; without it clients report 1006 (Abnormal Closure) instead of the close code. Check the server's WebSocket library or the hop in between.",
                ))
            }
        }
    }
}

fn unanswered_close(timeout: Duration) -> Failed {
    Failed::new(
        format!("the server did not answer the close frame within {}", human(timeout)),
        "RFC 6455 §5.5.1: an endpoint answers a close frame with one. Clients wait, then report 1006 instead of the close code; check the server's WebSocket library.",
    )
}

fn describe_ws(out: &WsOutcome, pings_answered: u32) -> String {
    let mut parts = Vec::new();
    if let Some(rtt) = out.rtt_ms {
        parts.push(format!(
            "pong in {}",
            super::took(Duration::from_secs_f64(rtt / 1000.0))
        ));
    }
    if let Some(sent) = &out.sent {
        match &out.reply {
            Some(r) => parts.push(format!(
                "sent {:?}, reply {:?}{}",
                shorten(sent),
                shorten(r),
                out.reply_ms
                    .map(|ms| format!(" in {}", super::took(Duration::from_secs_f64(ms / 1000.0))))
                    .unwrap_or_default()
            )),
            None => parts.push(format!(
                "sent {:?}, no reply (the server may not answer this message)",
                shorten(sent)
            )),
        }
    }
    if !out.unsolicited.is_empty() {
        let more = out.unsolicited_total - out.unsolicited.len() as u64;
        let more = if more > 0 {
            format!(" and {more} more frames")
        } else {
            String::new()
        };
        parts.push(format!(
            "the server also sent {}{more}",
            out.unsolicited.join(", ")
        ));
    }
    if pings_answered > 0 {
        parts.push(format!("answered {pings_answered} ping(s) from the server"));
    }
    if let Some(c) = &out.close {
        parts.push(c.clone());
    }
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::http::Headers;

    fn target(url: &str) -> Target {
        Target::parse(url).unwrap()
    }

    #[test]
    fn the_request_is_what_a_browser_sends() {
        let mut opts = CheckOptions::new("wss://example.com/ws?x=1");
        opts.origin = Some("https://app.example.com".into());
        opts.subprotocols = vec!["chat".into(), "v2".into()];
        let key = fresh_key();
        let req = build_request(&target(&opts.url), &opts, &key);
        assert_eq!(req.target, "/ws?x=1");
        assert_eq!(req.version, Version::Http11);
        let names: Vec<_> = req.headers.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "Host",
                "Upgrade",
                "Connection",
                "Sec-WebSocket-Key",
                "Sec-WebSocket-Version",
                "Origin",
                "Sec-WebSocket-Protocol",
                "User-Agent"
            ]
        );
        assert_eq!(req.header("Host").as_deref(), Some("example.com"));
        assert_eq!(
            req.header("Sec-WebSocket-Protocol").as_deref(),
            Some("chat, v2")
        );
        // the analysis finds nothing wrong with it
        assert!(analysis::judge_request(&req.view(), "client_request").is_empty());
        assert_ne!(fresh_key(), key);
    }

    #[test]
    fn header_flags_replace_defaults_and_add_the_rest() {
        let mut opts = CheckOptions::new("ws://127.0.0.1:1/");
        opts.headers = vec![
            ("host".into(), "app.example.com".into()),
            ("Cookie".into(), "a=1".into()),
            ("Cookie".into(), "b=2".into()),
            ("Sec-WebSocket-Version".into(), "8".into()),
        ];
        let req = build_request(&target(&opts.url), &opts, "k");
        let hosts: Vec<_> = req
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("host"))
            .collect();
        assert_eq!(hosts.len(), 1);
        assert_eq!(hosts[0].value_str(), "app.example.com");
        assert_eq!(req.headers[0].name, "host", "replaced in place, as written");
        let cookies: Vec<_> = req
            .headers
            .iter()
            .filter(|h| h.name == "Cookie")
            .map(|h| h.value_str().into_owned())
            .collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
        let f = analysis::judge_request(&req.view(), "client_request");
        assert_eq!(f[0].code, "websocket-version-unsupported");
    }

    #[test]
    fn answers_that_are_not_http_are_named() {
        // a TLS alert record
        let f = not_http(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x32], "malformed");
        assert!(f.detail.contains("answered in TLS"), "{}", f.detail);
        let f = not_http(b"SSH-2.0-OpenSSH_9.2\r\n", "invalid HTTP version");
        assert!(f.detail.contains("SSH-2.0-OpenSSH_9.2"), "{}", f.detail);
        assert!(f.hint.contains("port"));
        // never panics on short or empty input
        let _ = not_http(&[], "x");
        let _ = not_http(&[0x16], "x");
    }

    #[test]
    fn idle_cuts_at_known_limits_are_named() {
        let (f, finding) = idle_cut(Duration::from_millis(60_300), "the server closed");
        assert!(
            f.detail.contains("matches nginx proxy_read_timeout"),
            "{}",
            f.detail
        );
        assert!(f.detail.ends_with(": the server closed"), "{}", f.detail);
        assert!(f.hint.contains("proxy_read_timeout"));
        assert_eq!(
            finding.map(|f| f.code),
            Some("idle-timeout-suspected".into())
        );
        let (f, _) = idle_cut(Duration::from_millis(100_200), "x");
        assert!(f.detail.contains("Cloudflare"), "{}", f.detail);
        let (f, finding) = idle_cut(Duration::from_millis(1_020), "x");
        assert_eq!(f.detail, "cut after 1.0s of silence: x");
        assert!(f.hint.contains("idle for about 1.0s"), "{}", f.hint);
        assert!(finding.is_none());
    }

    #[test]
    fn frames_in_words() {
        let mut f = inject::close(Dir::ServerToClient, 1001, "bye", [0; 4], 64).event;
        assert_eq!(describe_frame(&f), "1001 (Going Away) \"bye\"");
        f.close_code = None;
        assert_eq!(describe_close(&f), "an empty close frame");
        let t = inject::frame(
            Dir::ServerToClient,
            Opcode::Text,
            "é".repeat(200).as_bytes(),
            [0; 4],
            1024,
        )
        .event;
        let d = describe_frame(&t);
        assert!(d.starts_with("text \"éé") && d.ends_with("…\""), "{d}");
        let b = inject::frame(Dir::ServerToClient, Opcode::Binary, &[0, 1, 2], [0; 4], 64).event;
        assert_eq!(describe_frame(&b), "binary (3 bytes)");
    }
}
