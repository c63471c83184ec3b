//! One client connection, from accept to close: reads each request head
//! raw, forwards it to the upstream, passes the real answer back, and on a
//! 101 to a WebSocket handshake hands both sockets to the relay. Every
//! request goes through the same path, so any of them can be an upgrade.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;

use super::body::{copy_body, BodyCopy, BodyError, Capture};
use super::io::{linger_close, write_flush, BoxIo, Inbound, ReadHeadError, READ_CAPACITY};
use super::relay::{self, RelayOptions, Sides};
use super::splice::relay_side;
use super::upstream::{authority, Connected, Endpoint, UpstreamUrl};
use super::Shared;
use super::{forward, Mode};
use crate::proto::analysis;
use crate::proto::event::{
    millis, CloseSummary, ConnId, Dir, ErrorEvent, Event, EventKind, Finding, Handshake,
    HttpExchange, RequestView, ResponseView, Severity,
};
use crate::proto::failure::{verification_disabled, ClientTlsFailure, UpstreamFailure};
use crate::proto::handshake::{self, Negotiated};
use crate::proto::http::{
    parse_request_head, parse_response_head, request_body, response_body, BodyKind, Header,
    RequestHead, ResponseHead, Version,
};
use crate::proto::preview;
use crate::proto::rewrite::Context;
use crate::proto::session::{summarize, EndContext};
use crate::proto::simulate;
use crate::proto::stream::{StreamTap, TapConfig};

/// Bytes of a refused upgrade's body kept for the log.
const BODY_PREVIEW: usize = 512;

type Rd = ReadHalf<BoxIo>;
type Wr = WriteHalf<BoxIo>;

struct UpstreamConn {
    rd: Inbound<Rd>,
    wr: Wr,
    addr: SocketAddr,
    /// Served an earlier request: a failure may be a stale keep-alive.
    reused: bool,
}

impl UpstreamConn {
    /// Whether a kept-alive connection can carry the next request. An
    /// upstream that closed it while idle (its keep-alive timeout, 5 s in
    /// Node) has sent its FIN already: a request sent there fails, and one
    /// that may not go twice (a POST) would get a 502. Bytes it sent unasked
    /// (a 408 before closing) would be taken for the next request's answer.
    /// Both show without waiting, in a read that finds the socket not ready.
    fn idle_and_open(&mut self) -> bool {
        use futures_util::FutureExt;
        self.rd.buffered().is_empty() && self.rd.fill().now_or_never().is_none()
    }
}

/// The close reason of a connection the end of the grace period cut.
const SHUTDOWN: &str = "shutdown";

/// How a connection ended, for its `close` event.
pub(super) struct End {
    reason: &'static str,
    detail: String,
}

impl End {
    pub(super) fn new(reason: &'static str, detail: impl Into<String>) -> Self {
        End {
            reason,
            detail: detail.into(),
        }
    }
}

pub(super) enum Step {
    Next,
    Done(End),
    /// A 101 answered a WebSocket handshake: relay from here on.
    Upgrade(ResponseHead, Box<Live>),
    /// A forward proxy's client asked for a tunnel.
    Connect(RequestHead),
}

pub(super) struct Conn {
    pub(super) shared: Arc<Shared>,
    pub(super) id: ConnId,
    pub(super) accepted: SystemTime,
    pub(super) client_rd: Inbound<Rd>,
    pub(super) client_wr: Wr,
    upstream: Option<UpstreamConn>,
    /// Bytes read from earlier upstream connections of this client.
    upstream_bytes: u64,
    /// `tls-verification-disabled` was sent for this connection.
    insecure_reported: bool,
    /// The `simulated-hop` note was sent for this connection.
    simulation_reported: bool,
    /// Where every request goes (reverse mode, or inside an intercepted
    /// CONNECT); `None` for a forward proxy's own connection, where each
    /// request names its upstream.
    pub(super) fixed: Option<UpstreamUrl>,
    /// The upstream the open upstream connection leads to.
    current: Option<UpstreamUrl>,
    /// This exchange's request as a simulated hop handed it on, before the
    /// rewrite rules ran (`fix-verified` judges the rules against it).
    after_hop: Option<RequestView>,
    /// The client's side was closed with a lingering close (or the client
    /// was found gone): the end need not linger again.
    lingered: bool,
}

/// Serves one accepted client connection to its end.
pub async fn serve(shared: Arc<Shared>, io: BoxIo, peer: SocketAddr, id: ConnId) {
    serve_from(shared, io, peer, id, SystemTime::now()).await
}

/// Serves one connection accepted on the TLS listener: the handshake
/// within the header timeout, then the same path as a plain connection.
pub async fn serve_tls(shared: Arc<Shared>, sock: TcpStream, peer: SocketAddr, id: ConnId) {
    let accepted = SystemTime::now();
    let Some(tls) = shared.cfg.listener_tls.as_ref() else {
        return serve_from(shared, Box::new(sock), peer, id, accepted).await;
    };
    match tls.accept(sock, shared.cfg.header_timeout).await {
        Ok(stream) => {
            tracing::debug!(
                version = ?stream.get_ref().1.protocol_version(),
                "TLS handshake with the client done"
            );
            serve_from(shared, Box::new(stream), peer, id, accepted).await
        }
        Err(f) => client_tls_failed(&shared, id, accepted, &f, &tls.trust_hint).await,
    }
}

/// Reports a client's failed TLS handshake and ends its connection: an
/// `error` event, `client-tls-failed` when the client refused the
/// certificate (`trust_hint` says how to trust it), and the `close`.
pub async fn client_tls_failed(
    shared: &Shared,
    id: ConnId,
    accepted: SystemTime,
    f: &ClientTlsFailure,
    trust_hint: &str,
) {
    let now = SystemTime::now();
    let mut events = Vec::new();
    let reason = if f.is_client_gone() {
        // A pre-connect, a spare connection or a probe: not an error, like
        // a plain connection closed before its request.
        "client-closed"
    } else {
        events.push(Event::conn(
            now,
            id,
            EventKind::Error(ErrorEvent {
                message: f.message(),
            }),
        ));
        if let Some(finding) = f.finding(trust_hint) {
            events.push(Event::conn(now, id, EventKind::Finding(finding)));
        }
        "client-tls-failed"
    };
    events.push(Event::conn(
        now,
        id,
        // no application bytes were exchanged
        EventKind::Close(CloseSummary::without_traffic(
            reason,
            f.message(),
            millis(now.duration_since(accepted).unwrap_or_default()),
        )),
    ));
    shared.events.send_all(&mut events).await;
}

async fn serve_from(
    shared: Arc<Shared>,
    io: BoxIo,
    peer: SocketAddr,
    id: ConnId,
    accepted: SystemTime,
) {
    tracing::debug!(%peer, conn = id.0, "accepted");
    let fixed = match &shared.cfg.mode {
        Mode::Reverse(u) => Some(u.clone()),
        Mode::Forward(_) => None,
    };
    Conn::new(shared, id, accepted, io, fixed).run().await;
}

impl Conn {
    pub(super) fn new(
        shared: Arc<Shared>,
        id: ConnId,
        accepted: SystemTime,
        io: BoxIo,
        fixed: Option<UpstreamUrl>,
    ) -> Conn {
        let (rd, wr) = tokio::io::split(io);
        Conn {
            shared,
            id,
            accepted,
            client_rd: Inbound::new(rd),
            client_wr: wr,
            upstream: None,
            upstream_bytes: 0,
            insecure_reported: false,
            simulation_reported: false,
            fixed,
            current: None,
            after_hop: None,
            lingered: false,
        }
    }
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        502 => "Bad Gateway",
        504 => "Gateway Timeout",
        _ => "Error",
    }
}

/// A short plain-text response wstap writes itself.
fn own_response(status: u16, body: &str) -> (ResponseHead, Vec<u8>) {
    let head = ResponseHead {
        version: crate::proto::http::Version::Http11,
        status,
        reason: reason_phrase(status).to_string(),
        headers: vec![
            Header::new("Content-Type", "text/plain; charset=utf-8"),
            Header::new("Content-Length", body.len().to_string()),
            Header::new("Connection", "close"),
        ],
    };
    let mut bytes = head.to_bytes();
    bytes.extend_from_slice(body.as_bytes());
    (head, bytes)
}

impl Conn {
    pub(super) async fn emit(&self, kind: EventKind) {
        self.shared
            .events
            .send(Event::conn(SystemTime::now(), self.id, kind))
            .await;
    }

    async fn emit_finding(&self, f: Finding) {
        self.emit(EventKind::Finding(f)).await;
    }

    /// The handshake event, then what the analysis makes of it.
    async fn emit_handshake(&mut self, hs: Handshake, rewrites: &[String]) {
        let mut findings = analysis::analyze(&hs);
        if let Some(arrived) = self.after_hop.take() {
            if !findings.iter().any(|f| f.code == "fix-verified") {
                findings.extend(analysis::fix_verified_after_hop(&arrived, &hs));
            }
        }
        if !rewrites.is_empty() {
            findings.insert(
                0,
                Finding::new(
                    "header-rewritten",
                    Severity::Info,
                    format!("wstap rewrote the handshake: {}", rewrites.join("; ")),
                    "Your rewrite rules (--set-request-header and friends, --rules) made these changes; the handshake event shows each view before and after.",
                )
                .view("wstap"),
            );
        }
        self.emit(EventKind::Handshake(Box::new(hs))).await;
        if let Some(f) = self.simulation_note() {
            self.emit_finding(f).await;
        }
        for f in findings {
            self.emit_finding(f).await;
        }
    }

    /// The `simulated-hop` finding, once per connection a simulation touches.
    fn simulation_note(&mut self) -> Option<Finding> {
        if self.simulation_reported {
            return None;
        }
        let f = match (self.shared.cfg.simulate, &self.shared.cfg.idle_cut) {
            (Some(hop), _) => hop.finding(),
            (None, Some(idle)) => simulate::idle_cut_finding(idle.after),
            (None, None) => return None,
        };
        self.simulation_reported = true;
        Some(f)
    }

    pub(super) async fn run(mut self) {
        let mut first = true;
        // hardening: the end of the shutdown grace period ends the wait for
        // a request (an idle keep-alive) or an exchange, with a close event
        let mut stop = self.shared.hard_stop.subscribe();
        let end = loop {
            let head = tokio::select! {
                h = self
                    .client_rd
                    .read_head_within(parse_request_head, self.shared.cfg.header_timeout) => h,
                _ = stop.wait_for(|s| *s) => break End::new(
                    SHUTDOWN,
                    "wstap shut down while waiting for the client's next request",
                ),
            };
            let (req, raw) = match head {
                Ok(Some(h)) => h,
                Ok(None) => {
                    break End::new(
                        "client-closed",
                        if first {
                            "the client closed the connection without sending a request"
                        } else {
                            "the client closed the keep-alive connection"
                        },
                    )
                }
                Err(ReadHeadError::Timeout(_, 0)) if !first => {
                    break End::new(
                        "idle-keepalive",
                        "no further request on the keep-alive connection",
                    )
                }
                Err(e) => break self.reject(e).await,
            };
            first = false;
            let step = tokio::select! {
                step = self.exchange(req, raw) => step,
                _ = stop.wait_for(|s| *s) => break End::new(
                    SHUTDOWN,
                    "wstap shut down in the middle of an HTTP exchange (the grace period ended)",
                ),
            };
            match step {
                Step::Next => continue,
                Step::Done(end) => break end,
                Step::Upgrade(resp, live) => return self.websocket(resp, *live).await,
                Step::Connect(req) => {
                    if forward::intercepts(&self.shared, &req) {
                        return forward::intercept(self, req).await;
                    }
                    // a tunnel lives outside any exchange: without this the
                    // end of the grace period aborted it with no close event
                    break tokio::select! {
                        end = forward::tunnel(&mut self, req) => end,
                        _ = stop.wait_for(|s| *s) => End::new(
                            SHUTDOWN,
                            "wstap shut down while the CONNECT tunnel was open (the grace period ended)",
                        ),
                    };
                }
            }
        };
        self.finish(end).await;
    }

    /// Ends a connection that did not become a WebSocket: closes the
    /// client's side and sends the `close` event, which every connection
    /// gets exactly once.
    pub(super) async fn finish(mut self, end: End) {
        if end.reason == SHUTDOWN {
            // the grace period is over: no lingering
            let _ = self.client_wr.shutdown().await;
        } else {
            // the client may have sent more (a pipelined request) that
            // nobody will read: closing on it would reset the connection and
            // take with it the end of the response still on its way
            self.linger().await;
        }
        let ended = SystemTime::now();
        let up_total = self.upstream_bytes + self.upstream.as_ref().map_or(0, |u| u.rd.total);
        self.emit(EventKind::Close(CloseSummary {
            reason: end.reason.to_string(),
            detail: end.detail,
            duration_ms: millis(ended.duration_since(self.accepted).unwrap_or_default()),
            frames_from_client: 0,
            frames_from_server: 0,
            bytes_from_client: self.client_rd.total,
            bytes_from_server: up_total,
            websocket: false,
        }))
        .await;
    }

    /// Answers a request head that could not be read (400/408/431).
    async fn reject(&mut self, e: ReadHeadError) -> End {
        let status = match &e {
            ReadHeadError::Head(h) => h.status(),
            ReadHeadError::Timeout(..) => 408,
            ReadHeadError::Truncated(_) | ReadHeadError::Io(_) => 0,
        };
        let message = format!("bad request from the client: {e}");
        self.emit(EventKind::Error(ErrorEvent {
            message: message.clone(),
        }))
        .await;
        if status != 0 {
            let (_, bytes) = own_response(status, &format!("wstap: {message}\n"));
            self.answer_and_close(&bytes).await;
        }
        End::new("bad-request", message)
    }

    /// Makes sure an upstream connection to `url` is open.
    pub(super) async fn ensure_upstream(
        &mut self,
        url: &UpstreamUrl,
    ) -> Result<(), UpstreamFailure> {
        let ep = Endpoint::from(url);
        if let Some(up) = self.upstream.as_mut() {
            if self.current.as_ref().map(Endpoint::from).as_ref() == Some(&ep) {
                if up.idle_and_open() {
                    return Ok(());
                }
                tracing::debug!(
                    "the idle upstream connection closed or spoke unasked; opening a new one"
                );
            }
            // a forward proxy's client moved on to another host, or the
            // kept-alive connection cannot carry another request
            self.drop_upstream();
        }
        self.current = Some(url.clone());
        let Connected { io, addr, tls, .. } = self.shared.connector.connect(&ep).await?;
        // Once per client connection, even if it reconnects upstream.
        if tls.is_some() && self.shared.cfg.insecure && !self.insecure_reported {
            self.insecure_reported = true;
            self.emit_finding(verification_disabled(&authority(&ep.host, ep.port)))
                .await;
        }
        let (rd, wr) = tokio::io::split(io);
        self.upstream = Some(UpstreamConn {
            rd: Inbound::new(rd),
            wr,
            addr,
            reused: false,
        });
        Ok(())
    }

    fn drop_upstream(&mut self) {
        if let Some(u) = self.upstream.take() {
            self.upstream_bytes += u.rd.total;
        }
    }

    /// Sends the request head upstream, reconnecting once when a reused
    /// keep-alive connection turns out to be closed. Safe for any method:
    /// a write that fails never delivered the whole head, so the upstream
    /// cannot have acted on it (a stale connection usually takes the write
    /// and fails at the read instead, where `exchange` decides).
    async fn send_head(&mut self, bytes: &[u8], url: &UpstreamUrl) -> Result<(), UpstreamFailure> {
        for attempt in 0..2 {
            self.ensure_upstream(url).await?;
            let Some(up) = self.upstream.as_mut() else {
                continue;
            };
            match write_flush(&mut up.wr, bytes).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    let reused = up.reused;
                    let addr = up.addr.to_string();
                    self.drop_upstream();
                    if !reused || attempt == 1 {
                        return Err(UpstreamFailure::Dropped {
                            addr,
                            detail: e.to_string(),
                        });
                    }
                }
            }
        }
        Err(UpstreamFailure::Dropped {
            addr: url.authority(),
            detail: "could not send the request".into(),
        })
    }

    /// Where a request goes, and the target to send there.
    fn route(&self, req: &RequestHead) -> Result<(UpstreamUrl, String), String> {
        if let Some(u) = &self.fixed {
            return Ok((u.clone(), u.map_target(&req.target)));
        }
        forward::absolute_form(&req.target).ok_or_else(|| {
            format!(
                "wstap runs as a forward proxy (--forward): it takes absolute-form requests (GET http://host/path) and CONNECT, not {:?}; set it as the client's HTTP proxy",
                req.target
            )
        })
    }

    /// Answers a request the proxy cannot route (400) and ends.
    pub(super) async fn refuse_route(&mut self, message: String) -> Step {
        self.emit(EventKind::Error(ErrorEvent {
            message: message.clone(),
        }))
        .await;
        let (_, bytes) = own_response(400, &format!("wstap: {message}\n"));
        self.answer_and_close(&bytes).await;
        Step::Done(End::new("bad-request", message))
    }

    /// Sends an answer of wstap's own after which the connection ends,
    /// with a lingering close: the client may still be sending the request
    /// (its body), and closing on unread bytes would reset the connection.
    async fn answer_and_close(&mut self, response: &[u8]) {
        if write_flush(&mut self.client_wr, response).await.is_err() {
            // the client is gone: nobody is left to read the answer
            self.lingered = true;
            return;
        }
        self.linger().await;
    }

    /// Shuts the client's side down and reads and drops what it still
    /// sends until it closes, `LINGER_BYTES` or `LINGER_TIME` (a
    /// lingering close, RFC 9112 §9.6): closing with input unread makes the
    /// kernel reset the connection, and the client may lose the end of the
    /// answer. Once per connection, and only until the grace period ends,
    /// after which every connection must end and send its close.
    async fn linger(&mut self) {
        if std::mem::replace(&mut self.lingered, true) {
            return;
        }
        let mut stop = self.shared.hard_stop.subscribe();
        let stopped = tokio::select! {
            _ = linger_close(&mut self.client_rd, &mut self.client_wr) => false,
            _ = stop.wait_for(|s| *s) => true,
        };
        if stopped {
            let _ = self.client_wr.shutdown().await;
        }
    }

    async fn exchange(&mut self, req: RequestHead, raw: Vec<u8>) -> Step {
        let started = Instant::now();
        // methods are case-sensitive (RFC 9110 §9.1): `connect` is not CONNECT
        if self.fixed.is_none() && req.method == "CONNECT" {
            return Step::Connect(req);
        }
        let attempt = handshake::is_attempt(&req);
        let framing = match request_body(&req) {
            Ok(k) => k,
            Err(e) => {
                let message = format!("bad request from the client: {e}");
                self.emit(EventKind::Error(ErrorEvent {
                    message: message.clone(),
                }))
                .await;
                let (_, bytes) = own_response(400, &format!("wstap: {message}\n"));
                self.answer_and_close(&bytes).await;
                return Step::Done(End::new("bad-request", message));
            }
        };

        let (url, up_target) = match self.route(&req) {
            Ok(r) => r,
            Err(step) => return self.refuse_route(step).await,
        };
        let cfg = &self.shared.cfg;
        let upstream_authority = url.authority();
        let mut up_req = match cfg.simulate {
            Some(hop) => hop.forward(&req, &url.host, url.port, url.scheme.is_tls()),
            None => req.clone(),
        };
        up_req.target = up_target;
        let shared = self.shared.clone();
        let ctx = Context {
            incoming: &req,
            upstream: &upstream_authority,
        };
        let after_hop = cfg.simulate.map(|_| up_req.view());
        let mut rewrites = shared.cfg.rules.apply_request(&mut up_req, &ctx);
        self.after_hop = after_hop.filter(|_| !rewrites.is_empty());
        // unchanged heads go upstream byte for byte
        let up_raw = if up_req == req {
            raw
        } else {
            up_req.to_bytes()
        };
        let mut hs = Handshake {
            client_request: Some(req.view()),
            ..Default::default()
        };

        // A request may go again on a fresh connection when a reused one
        // turns out stale (see `ExchangeError::Upstream`), and only if
        // sending it twice is harmless: a safe method without a body (RFC
        // 9112 §9.3.1: no automatic retry of a non-idempotent request; the
        // upstream may have acted on it before it closed).
        let resendable =
            matches!(req.method.as_str(), "GET" | "HEAD" | "OPTIONS") && framing == BodyKind::Empty;
        let mut tries = if resendable { 2 } else { 1 };
        let Answer {
            head: resp,
            raw: resp_raw,
            mut body_cut,
            half_closed,
            mut rest,
        } = loop {
            tries -= 1;
            if let Err(f) = self.send_head(&up_raw, &url).await {
                return self
                    .upstream_failed(&req, hs, f, started, &rewrites, &url)
                    .await;
            }
            hs.upstream_request = Some(up_req.view());
            let timeout = attempt.then_some(self.shared.cfg.handshake_timeout);
            match self
                .forward_body_and_read_response(framing, req.version, timeout)
                .await
            {
                Ok(r) => break r,
                Err(ExchangeError::Client(e)) => return self.client_body_failed(e, false).await,
                Err(ExchangeError::ClientReset(e)) => {
                    self.drop_upstream();
                    self.lingered = true;
                    return Step::Done(End::new(
                        "client-closed",
                        format!(
                            "the client reset the connection while it waited for the answer: {e}"
                        ),
                    ));
                }
                Err(ExchangeError::HalfClosed) => {
                    self.drop_upstream();
                    return Step::Done(End::new(
                        "client-closed",
                        "the client ended its side before the answer came; the upstream, told so, closed without one",
                    ));
                }
                Err(ExchangeError::Upstream(f, stale)) => {
                    self.drop_upstream();
                    if !(stale && tries > 0) {
                        return self
                            .upstream_failed(&req, hs, f, started, &rewrites, &url)
                            .await;
                    }
                }
            }
        };
        // a new protocol starts after the request: its body first
        if let (101, Some(copy), Some(up)) = (resp.status, rest.as_mut(), self.upstream.as_mut()) {
            let stall = body_stall(&self.shared);
            match copy.run(&mut self.client_rd, &mut up.wr, None, stall).await {
                Ok(_) => rest = None,
                Err(e @ BodyError::Write(_)) => body_cut = Some(e),
                Err(e) => return self.client_body_failed(e, false).await,
            }
        }
        if let Some(e) = &body_cut {
            self.emit(EventKind::Error(ErrorEvent {
                message: format!(
                    "the upstream stopped taking the request body ({e}); the connection ends after its answer"
                ),
            }))
            .await;
        }
        if let Some(up) = self.upstream.as_mut() {
            up.reused = true;
        }

        let mut client_resp = resp.clone();
        rewrites.extend(shared.cfg.rules.apply_response(&mut client_resp, &ctx));
        let client_resp_raw = if client_resp == resp {
            resp_raw
        } else {
            client_resp.to_bytes()
        };
        hs.upstream_response = Some(resp.view());
        hs.client_response = Some(client_resp.view());
        hs.upstream_addr = self.upstream.as_ref().map(|u| u.addr.to_string());
        hs.duration_ms = Some(millis(started.elapsed()));
        if let Err(e) = write_flush(&mut self.client_wr, &client_resp_raw).await {
            self.drop_upstream();
            if attempt {
                self.emit_handshake(hs, &rewrites).await;
            }
            return Step::Done(End::new(
                "client-closed",
                format!("the client went away before the response reached it: {e}"),
            ));
        }

        if resp.status == 101 {
            if attempt {
                // registered before the handshake event, so whoever sees
                // the WebSocket open (the live view) can inject into it
                let live = Live::register(&shared.open, self.id);
                self.emit_handshake(hs, &rewrites).await;
                return Step::Upgrade(client_resp, Box::new(live));
            }
            return self.tunnel(&req, hs.client_response.take(), started).await;
        }

        let resp_framing = match response_body(&req.method, &resp) {
            Ok(k) => k,
            Err(e) => {
                self.emit(EventKind::Error(ErrorEvent {
                    message: format!(
                        "the upstream's response cannot be framed: {e}; relaying until it closes"
                    ),
                }))
                .await;
                BodyKind::UntilClose
            }
        };
        let mut captured = Vec::new();
        let stall = body_stall(&self.shared);
        let (body, request) = {
            let Some(up) = self.upstream.as_mut() else {
                return Step::Done(End::new("error", "upstream connection lost"));
            };
            let capture = attempt.then_some(Capture {
                buf: &mut captured,
                limit: BODY_PREVIEW,
            });
            let answer = copy_body(&mut up.rd, &mut self.client_wr, resp_framing, capture, None);
            match rest.as_mut() {
                None => (answer.await, Ok(0)),
                Some(copy) => {
                    let request = copy.run(&mut self.client_rd, &mut up.wr, None, stall);
                    tokio::join!(answer, request)
                }
            }
        };
        if attempt {
            hs.duration_ms = Some(millis(started.elapsed()));
            if !captured.is_empty() {
                let (text, _) = preview::render(&captured, false, true);
                for view in [&mut hs.upstream_response, &mut hs.client_response] {
                    if let Some(ResponseView { body_preview, .. }) = view.as_mut() {
                        *body_preview = Some(text.clone());
                    }
                }
            }
            self.emit_handshake(hs, &rewrites).await;
        } else {
            let response_bytes = *body.as_ref().unwrap_or(&0);
            self.emit(EventKind::Http(HttpExchange {
                response_bytes,
                client_response: hs.client_response.take(),
                upstream_addr: hs.upstream_addr.take(),
                rewrites,
                ..HttpExchange::of(&req, resp.status, started.elapsed())
            }))
            .await;
        }
        match body {
            Err(BodyError::Write(e)) => {
                self.drop_upstream();
                return Step::Done(End::new(
                    "client-closed",
                    format!("the client went away during the response: {e}"),
                ));
            }
            Err(e) => {
                self.drop_upstream();
                self.emit(EventKind::Error(ErrorEvent {
                    message: format!("the upstream's response body failed: {e}"),
                }))
                .await;
                return Step::Done(End::new("server-closed", e.to_string()));
            }
            Ok(_) => {}
        }
        match request {
            Ok(_) => {}
            Err(e @ BodyError::Write(_)) => {
                self.emit(EventKind::Error(ErrorEvent {
                    message: format!(
                        "the upstream stopped taking the request body ({e}) after it answered; the connection ends"
                    ),
                }))
                .await;
                body_cut = Some(e);
            }
            Err(e) => return self.client_body_failed(e, true).await,
        }
        if let Some(e) = body_cut {
            // The upstream connection took only part of the body: it cannot
            // carry another request. The rest of the body is still on its
            // way from the client, where it cannot be told from a next
            // request: drain it and end (a lingering close).
            self.drop_upstream();
            self.linger().await;
            return Step::Done(End::new(
                "server-closed",
                format!("the upstream stopped taking the request body: {e}"),
            ));
        }
        if resp_framing == BodyKind::UntilClose
            || !resp.keep_alive()
            || !up_req.keep_alive()
            || half_closed
        {
            self.drop_upstream();
        }
        if resp_framing == BodyKind::UntilClose || !client_resp.keep_alive() {
            return Step::Done(End::new(
                "server-closed",
                "the upstream ended the connection after its response",
            ));
        }
        if !req.keep_alive() {
            self.drop_upstream();
            return Step::Done(End::new(
                "client-closed",
                "the client asked to close after the response",
            ));
        }
        Step::Next
    }

    /// Ends an exchange whose request body failed on the client's side.
    /// Unless the upstream's answer has gone out already, the client is
    /// told when it is there to hear it (it stalled, or its chunked framing
    /// is broken).
    async fn client_body_failed(&mut self, e: BodyError, answered: bool) -> Step {
        self.drop_upstream();
        let message = format!("the client's request body failed: {e}");
        self.emit(EventKind::Error(ErrorEvent {
            message: message.clone(),
        }))
        .await;
        let status = match e {
            BodyError::Stalled { .. } => Some(408),
            BodyError::Framing(_) => Some(400),
            _ => None,
        };
        match status {
            Some(status) if !answered => {
                let (_, bytes) = own_response(status, &format!("wstap: {message}\n"));
                self.answer_and_close(&bytes).await;
                Step::Done(End::new("bad-request", message))
            }
            Some(_) => Step::Done(End::new("bad-request", message)),
            None => Step::Done(End::new("client-closed", message)),
        }
    }

    /// Sends the request body while reading the response head: a server may
    /// answer (100 Continue, or early) before the body is complete. The
    /// rest of a body the answer came before goes on beside the answer's
    /// own body ([`Answer::rest`]).
    async fn forward_body_and_read_response(
        &mut self,
        framing: BodyKind,
        version: Version,
        timeout: Option<Duration>,
    ) -> Result<Answer, ExchangeError> {
        let Some(up) = self.upstream.as_mut() else {
            return Err(ExchangeError::Upstream(
                UpstreamFailure::Dropped {
                    addr: self
                        .current
                        .as_ref()
                        .map(|u| u.authority())
                        .unwrap_or_default(),
                    detail: "no upstream connection".into(),
                },
                false,
            ));
        };
        let reused = up.reused;
        let addr = up.addr.to_string();
        let read_before = up.rd.total;
        // RFC 9110 §15.2: no 1xx to an HTTP/1.0 client
        let interim = version == Version::Http11;
        let stall = body_stall(&self.shared);
        let mut half_closed = false;
        let mut copy = BodyCopy::new(framing);
        let (body, head) = {
            // boxed, to be dropped once done: the client's input is then
            // watched while the answer is awaited, or the copy goes on
            // beside the answer
            let mut body = Box::pin(copy.run(&mut self.client_rd, &mut up.wr, None, stall));
            let head = read_final_head(&mut up.rd, &mut self.client_wr, timeout, &addr, interim);
            tokio::pin!(head);
            tokio::select! {
                h = &mut head => match h {
                    // no answer (a timeout, say): the client gets that now,
                    // not after a body it may never finish
                    Err(f) => (Ok(0), Err(f)),
                    Ok(h) => (Ok(0), Ok(h)),
                },
                b = &mut body => match b {
                    // the client's side failed (stalled, ended early): the
                    // answer is not waited for (without a handshake timeout
                    // that wait has no end)
                    Err(e) if !matches!(e, BodyError::Write(_)) => {
                        return Err(ExchangeError::Client(e))
                    }
                    b => {
                        drop(body);
                        let h = tokio::select! {
                            h = &mut head => h,
                            left = client_leaves(&mut self.client_rd) => match left {
                                Some(e) => return Err(ExchangeError::ClientReset(e)),
                                None => {
                                    // a half-close, as the client made it:
                                    // the upstream sees it and decides
                                    let _ = up.wr.shutdown().await;
                                    half_closed = true;
                                    head.await
                                }
                            },
                        };
                        (b, h)
                    }
                },
            }
        };
        let (head, raw) = head.map_err(|f| {
            if half_closed && matches!(f, UpstreamFailure::Dropped { .. }) {
                return ExchangeError::HalfClosed;
            }
            let silent = up.rd.total == read_before && up.rd.buffered().is_empty();
            let stale = reused && silent && matches!(f, UpstreamFailure::Dropped { .. });
            ExchangeError::Upstream(f, stale)
        })?;
        let rest = (!copy.is_done()).then_some(copy);
        match body {
            Ok(_) => Ok(Answer {
                head,
                raw,
                body_cut: None,
                half_closed,
                rest,
            }),
            // the upstream answered without taking the whole body (an
            // early 413, say): relay the answer, then end
            Err(e @ BodyError::Write(_)) => Ok(Answer {
                head,
                raw,
                body_cut: Some(e),
                half_closed,
                rest: None,
            }),
            Err(e) => Err(ExchangeError::Client(e)),
        }
    }

    pub(super) async fn upstream_failed(
        &mut self,
        req: &RequestHead,
        mut hs: Handshake,
        f: UpstreamFailure,
        started: Instant,
        rewrites: &[String],
        url: &UpstreamUrl,
    ) -> Step {
        let upstream = url.to_string();
        let (head, bytes) = own_response(f.status(), &f.client_body(&upstream));
        if handshake::is_attempt(req) {
            let mut view = head.view();
            view.body_preview = Some(f.message());
            hs.client_response = Some(view);
            hs.duration_ms = Some(millis(started.elapsed()));
            self.emit_handshake(hs, rewrites).await;
        } else {
            self.emit(EventKind::Http(HttpExchange {
                client_response: Some(head.view()),
                rewrites: rewrites.to_vec(),
                ..HttpExchange::of(req, f.status(), started.elapsed())
            }))
            .await;
        }
        self.emit_finding(f.finding()).await;
        // after the events: the lingering close may take a while
        self.answer_and_close(&bytes).await;
        Step::Done(End::new("upstream-failed", f.message()))
    }

    /// A 101 to something other than a WebSocket (h2c, ...), or a CONNECT
    /// that is not intercepted: bytes pass both ways undecoded.
    pub(super) async fn tunnel(
        &mut self,
        req: &RequestHead,
        client_response: Option<ResponseView>,
        started: Instant,
    ) -> Step {
        let upstream_addr = self.upstream.as_ref().map(|u| u.addr.to_string());
        let status = client_response.as_ref().map_or(101, |r| r.status);
        self.emit(EventKind::Http(HttpExchange {
            client_response,
            upstream_addr,
            ..HttpExchange::of(req, status, started.elapsed())
        }))
        .await;
        let Some(up) = self.upstream.as_mut() else {
            return Step::Done(End::new("error", "upstream connection lost"));
        };
        let r = tunnel_pair(
            &mut self.client_rd,
            &mut up.wr,
            &mut up.rd,
            &mut self.client_wr,
        )
        .await;
        self.drop_upstream();
        Step::Done(End::new("tunnel-closed", r))
    }

    /// Runs the relay on an upgraded connection and sends its summary.
    async fn websocket(self, client_resp: ResponseHead, live: Live) {
        let Conn {
            shared,
            id,
            accepted,
            client_rd,
            client_wr,
            upstream,
            upstream_bytes,
            insecure_reported: _,
            simulation_reported: _,
            fixed,
            current,
            after_hop,
            lingered: _,
        } = self;
        let Some(up) = upstream else {
            return;
        };
        let opened = SystemTime::now();
        let cfg = TapConfig {
            max_preview: shared.cfg.max_preview,
            capture: shared.cfg.capture,
            negotiated: Negotiated::from_response(&client_resp),
            frames_unwanted: shared.events.frames_unwanted(),
        };
        // what only the handshake needed is freed before the relay, which
        // may idle for hours (unbound fields would live until it ends)
        drop((client_resp, fixed, current, after_hop));
        let mut c2s = StreamTap::new(id, Dir::ClientToServer, cfg.clone());
        let mut s2c = StreamTap::new(id, Dir::ServerToClient, cfg);
        let (client_rd, client_wr) = relay_side(client_rd, client_wr);
        let (up_rd, up_wr) = relay_side(up.rd, up.wr);
        let mut sides = Sides {
            client_rd,
            client_wr,
            up_rd,
            up_wr,
        };
        let Live {
            controls,
            inboxes,
            registered,
        } = live;
        let opts = RelayOptions {
            hard_stop: Some(shared.hard_stop.subscribe()),
            strict: shared.cfg.strict,
            max_preview: shared.cfg.max_preview,
            idle_cut: shared.cfg.idle_cut.clone(),
        };
        let (end, dropped_at) = relay::relay(
            id,
            &mut sides,
            &mut c2s,
            &mut s2c,
            &shared.events,
            &opts,
            &controls,
            inboxes,
        )
        .await;
        drop(registered);
        let ended = SystemTime::now();
        let ctx = EndContext {
            opened_at: opened,
            dropped_at,
            ended_at: ended,
            accepted_at: accepted,
            bytes_from_client: sides.client_rd.total,
            bytes_from_server: upstream_bytes + sides.up_rd.total,
            expected_idle: &shared.cfg.expected_idle,
        };
        let (summary, findings) = summarize(&c2s, &s2c, &end, &ctx);
        let mut events: Vec<Event> = findings
            .into_iter()
            .map(|f| Event::conn(ended, id, EventKind::Finding(f)))
            .collect();
        events.push(Event::conn(ended, id, EventKind::Close(summary)));
        shared.events.send_all(&mut events).await;
        // hardening: close without resetting bytes the peers have not read yet
        let drain = (shared.cfg.grace / 2).min(relay::DRAIN);
        relay::close_gently(&mut sides, drain).await;
    }
}

/// The upstream's final response head, as parsed and as read.
struct Answer {
    head: ResponseHead,
    raw: Vec<u8>,
    /// Writing the request body upstream failed part way.
    body_cut: Option<BodyError>,
    /// The client ended its side while the answer was awaited, and the
    /// upstream's side was shut down the same way.
    half_closed: bool,
    /// The rest of a request body the answer came before: it goes on
    /// beside the answer's body, since the upstream may read it as it
    /// answers (a full-duplex stream: waiting for the one before relaying
    /// the other would leave both sides waiting for ever).
    rest: Option<BodyCopy>,
}

enum ExchangeError {
    Client(BodyError),
    /// The failure, and whether it looks like a stale keep-alive
    /// connection: a reused one the upstream closed (or reset) before a
    /// byte of answer. A timeout is not: the upstream may be working on
    /// the request.
    Upstream(UpstreamFailure, bool),
    /// The client ended its side before the answer, and the upstream,
    /// told so, closed without one: as it would have done to the client.
    HalfClosed,
    /// Reading from the client failed while the answer was awaited: it
    /// reset the connection.
    ClientReset(std::io::Error),
}

/// An open WebSocket's entry in the registry of control handles
/// (`Shared::open`), removed however the relay ends: a panic in it, or the
/// task aborted at the end of shutdown, would otherwise leave it behind.
struct Registered {
    open: Arc<Mutex<HashMap<ConnId, relay::Controls>>>,
    id: ConnId,
}

impl Registered {
    fn new(
        open: &Arc<Mutex<HashMap<ConnId, relay::Controls>>>,
        id: ConnId,
        controls: relay::Controls,
    ) -> Self {
        if let Ok(mut m) = open.lock() {
            m.insert(id, controls);
        }
        Registered {
            open: open.clone(),
            id,
        }
    }
}

/// An upgraded connection's control handles, registered from the moment
/// the 101 is known until its relay ends.
pub(super) struct Live {
    controls: relay::Controls,
    inboxes: relay::Inboxes,
    registered: Registered,
}

impl Live {
    fn register(open: &Arc<Mutex<HashMap<ConnId, relay::Controls>>>, id: ConnId) -> Self {
        let (controls, inboxes) = relay::controls();
        let registered = Registered::new(open, id, controls.clone());
        Live {
            controls,
            inboxes,
            registered,
        }
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        if let Ok(mut m) = self.open.lock() {
            m.remove(&self.id);
        }
    }
}

/// How long a request body may wait for the client's next bytes: a client
/// that stops sending its body is cut like one that stops sending its head
/// (an upload that keeps moving is not).
fn body_stall(shared: &Shared) -> Option<Duration> {
    Some(shared.cfg.header_timeout)
}

/// Waits, while the answer is awaited, for the client's end of stream
/// (`None`) or a failed read (it reset the connection). What it sends
/// meanwhile (a pipelined request) stays buffered for its turn; past a
/// full buffer it is no longer watched.
async fn client_leaves<R: AsyncRead + Unpin>(rd: &mut Inbound<R>) -> Option<std::io::Error> {
    loop {
        if rd.buffered().len() >= READ_CAPACITY {
            return std::future::pending().await;
        }
        match rd.fill().await {
            Ok(0) => return None,
            Ok(_) => {}
            Err(e) => return Some(e),
        }
    }
}

/// Reads response heads until a final one, passing 1xx interim responses
/// (other than 101) straight to the client, if `interim`.
async fn read_final_head<R, W>(
    rd: &mut Inbound<R>,
    client: &mut W,
    timeout: Option<Duration>,
    addr: &str,
    interim: bool,
) -> Result<(ResponseHead, Vec<u8>), UpstreamFailure>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    // one deadline for all of them: an upstream sending 100 Continue
    // every half second must not hold the wait open for ever
    let deadline = timeout.map(|t| (t, Instant::now() + t));
    loop {
        let head = match deadline {
            Some((_, at)) => {
                let left = at.saturating_duration_since(Instant::now());
                rd.read_head_within(parse_response_head, left).await
            }
            None => rd.read_head(parse_response_head).await,
        };
        let (h, raw) = match head {
            Ok(Some(x)) => x,
            Ok(None) => {
                return Err(UpstreamFailure::Dropped {
                    addr: addr.to_string(),
                    detail: "it closed the connection".into(),
                })
            }
            Err(ReadHeadError::Timeout(after, _)) => {
                return Err(UpstreamFailure::NoResponse {
                    addr: addr.to_string(),
                    after: deadline.map_or(after, |(t, _)| t),
                })
            }
            Err(e) => {
                return Err(UpstreamFailure::Dropped {
                    addr: addr.to_string(),
                    detail: e.to_string(),
                })
            }
        };
        if (100..200).contains(&h.status) && h.status != 101 {
            if interim {
                let _ = write_flush(client, &raw).await;
            }
            continue;
        }
        return Ok((h, raw));
    }
}

/// Copies both ways until both directions have ended; returns how.
///
/// A direction ends at EOF (or a failed read or write); its writer is then
/// shut down, so the peer sees the FIN while the other direction goes on:
/// a half-close, as TCP allows. A peer that answers only after the other
/// side has said all (a request ended by shutdown, `nc -N`) needs it; and a
/// side that failed does not leave the other waiting on a tunnel that can
/// never deliver.
async fn tunnel_pair<A, B, C, D>(
    a_rd: &mut Inbound<A>,
    b_wr: &mut B,
    b_rd: &mut Inbound<C>,
    a_wr: &mut D,
) -> String
where
    A: AsyncRead + Unpin,
    B: AsyncWrite + Unpin,
    C: AsyncRead + Unpin,
    D: AsyncWrite + Unpin,
{
    let up = async {
        let r = copy_body(a_rd, b_wr, BodyKind::UntilClose, None, None).await;
        let _ = b_wr.shutdown().await;
        r
    };
    let down = async {
        let r = copy_body(b_rd, a_wr, BodyKind::UntilClose, None, None).await;
        let _ = a_wr.shutdown().await;
        r
    };
    let (a, b) = tokio::join!(up, down);
    format!(
        "tunnel ended: client side {}, server side {}",
        a.map(|n| format!("{n} bytes"))
            .unwrap_or_else(|e| e.to_string()),
        b.map(|n| format!("{n} bytes"))
            .unwrap_or_else(|e| e.to_string())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_websocket_leaves_the_registry_even_when_its_relay_panics() {
        let open = Arc::new(Mutex::new(HashMap::new()));
        let (controls, _inboxes) = relay::controls();
        let kept = Registered::new(&open, ConnId(1), controls.clone());
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _registered = Registered::new(&open, ConnId(2), controls.clone());
            assert_eq!(open.lock().map(|m| m.len()).unwrap_or(0), 2);
            panic!("a bug in the relay");
        }));
        assert!(r.is_err());
        let ids: Vec<ConnId> = open.lock().unwrap().keys().copied().collect();
        assert_eq!(ids, vec![ConnId(1)]);
        drop(kept);
        assert!(open.lock().unwrap().is_empty());
    }
}
