//! The live view's memory: a [`Sink`] that keeps, per connection, the
//! handshake, the findings, the close summary and the frames, within fixed
//! limits, and republishes every event to the live stream. It runs on the
//! dispatcher thread, so it must stay cheap: one short lock per event,
//! never a wait. Readers (the HTTP API) copy what they need under the lock
//! (reference-counted chunks of frames) and filter outside it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use serde::Serialize;
use tokio::sync::broadcast;

use crate::proto::event::{
    millis, CloseSummary, Dir, Event, EventKind, Finding, FrameEvent, Handshake, Severity,
};
use crate::proto::frame::Opcode;
use crate::sink::Sink;

/// How much the live view keeps. When a limit is reached the oldest data
/// goes first; nothing ever waits for room.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections listed; beyond it the oldest closed one (or, when all
    /// are open, the oldest) is forgotten.
    pub connections: usize,
    /// Frames kept per connection; older ones are trimmed in chunks.
    pub frames_per_connection: usize,
    /// An estimate of the bytes all kept frames take; beyond it frames are
    /// trimmed from the connection that holds the most.
    pub bytes: usize,
    /// Events the live stream buffers for a slow subscriber before it
    /// lags (and is told to resync).
    pub live_buffer: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connections: 500,
            frames_per_connection: 100_000,
            bytes: 256 << 20,
            live_buffer: 4096,
        }
    }
}

/// Findings kept per connection; later ones are only counted. A keep-alive
/// client can try one refused upgrade after another on one connection,
/// each with its findings, for as long as it likes.
const FINDINGS_KEPT: usize = 64;

/// Frames are stored in sealed chunks of this many, so a reader copies a
/// few pointers under the lock instead of every frame.
const CHUNK: usize = 1024;

/// Connections seen only through plain HTTP so far, remembered so that a
/// later finding can name its target. Cleared when it grows past this.
const HTTP_MEMORY: usize = 4096;

/// One logged frame, numbered within its connection (`n` from 0).
#[derive(Debug)]
pub struct StoredFrame {
    pub n: u64,
    pub ts: SystemTime,
    pub frame: FrameEvent,
    /// Codes of the findings that point at this frame (protocol violations).
    pub findings: Vec<String>,
}

impl StoredFrame {
    fn cost(&self) -> usize {
        std::mem::size_of::<Self>()
            + std::mem::size_of::<Arc<Self>>()
            + self.frame.preview.len()
            + self.frame.close_reason.as_ref().map_or(0, String::len)
            + self.frame.close_name.as_ref().map_or(0, String::len)
            + self.frame.note.as_ref().map_or(0, String::len)
            + self.findings.iter().map(|f| f.len() + 24).sum::<usize>()
    }
}

/// The frames of one connection: sealed chunks and a growing tail.
#[derive(Debug, Default)]
struct FrameLog {
    chunks: VecDeque<Arc<[Arc<StoredFrame>]>>,
    tail: Vec<Arc<StoredFrame>>,
    kept: usize,
    cost: usize,
}

impl FrameLog {
    fn push(&mut self, f: Arc<StoredFrame>) {
        self.cost += f.cost();
        self.kept += 1;
        self.tail.push(f);
        if self.tail.len() >= CHUNK {
            let sealed: Arc<[Arc<StoredFrame>]> = std::mem::take(&mut self.tail).into();
            self.chunks.push_back(sealed);
        }
    }

    /// Drops the oldest chunk (or, without one, the older half of the
    /// tail); returns the bytes freed.
    fn trim_oldest(&mut self) -> usize {
        let dropped: Vec<Arc<StoredFrame>> = match self.chunks.pop_front() {
            Some(c) => c.to_vec(),
            None => {
                let k = self.tail.len().div_ceil(2);
                self.tail.drain(..k).collect()
            }
        };
        let freed: usize = dropped.iter().map(|f| f.cost()).sum();
        self.kept -= dropped.len();
        self.cost -= freed;
        freed
    }

    fn snapshot(&self) -> FramesSnapshot {
        FramesSnapshot {
            chunks: self.chunks.iter().cloned().collect(),
            tail: self.tail.clone(),
        }
    }

    fn first(&self) -> Option<u64> {
        self.chunks
            .front()
            .and_then(|c| c.first())
            .or_else(|| self.tail.first())
            .map(|f| f.n)
    }

    fn get(&self, n: u64) -> Option<Arc<StoredFrame>> {
        let first = self.first()?;
        let i = usize::try_from(n.checked_sub(first)?).ok()?;
        let sealed = self.chunks.len() * CHUNK;
        if i < sealed {
            self.chunks.get(i / CHUNK)?.get(i % CHUNK).cloned()
        } else {
            self.tail.get(i - sealed).cloned()
        }
    }
}

/// A reader's copy of a connection's frames, taken under the lock in
/// O(chunks) and read without it.
pub struct FramesSnapshot {
    chunks: Vec<Arc<[Arc<StoredFrame>]>>,
    tail: Vec<Arc<StoredFrame>>,
}

impl FramesSnapshot {
    pub fn iter(&self) -> impl Iterator<Item = &Arc<StoredFrame>> {
        self.chunks
            .iter()
            .flat_map(|c| c.iter())
            .chain(self.tail.iter())
    }
}

/// What the store knows about one connection.
#[derive(Debug)]
struct ConnState {
    id: u64,
    started: SystemTime,
    target: String,
    handshake: Option<Arc<Handshake>>,
    findings: Vec<Finding>,
    /// Findings past [`FINDINGS_KEPT`].
    findings_not_kept: u64,
    /// The worst severity of all findings, kept or not.
    severity: Option<Severity>,
    errors: Vec<String>,
    close: Option<CloseSummary>,
    frames: FrameLog,
    frames_seen: u64,
    from_client: u64,
    from_server: u64,
    payload_bytes: u64,
    /// Violation findings waiting for the frame they describe: the decoder
    /// reports a violation at the frame's header, before its frame event.
    awaiting: [Vec<String>; 2],
}

impl ConnState {
    fn new(id: u64, started: SystemTime, target: String) -> Self {
        ConnState {
            id,
            started,
            target,
            handshake: None,
            findings: Vec::new(),
            findings_not_kept: 0,
            severity: None,
            errors: Vec::new(),
            close: None,
            frames: FrameLog::default(),
            frames_seen: 0,
            from_client: 0,
            from_server: 0,
            payload_bytes: 0,
            awaiting: [Vec::new(), Vec::new()],
        }
    }

    fn summary(&self, now: SystemTime) -> ConnSummary {
        let status = self
            .handshake
            .as_ref()
            .and_then(|h| h.client_response.as_ref().map(|r| r.status));
        let duration_ms = match &self.close {
            Some(c) => c.duration_ms,
            None => millis(now.duration_since(self.started).unwrap_or_default()),
        };
        ConnSummary {
            id: self.id,
            target: self.target.clone(),
            path: self
                .target
                .split(['?', '#'])
                .next()
                .unwrap_or_default()
                .to_string(),
            status,
            open: self.close.is_none(),
            websocket: status == Some(101),
            frames: self.frames_seen,
            frames_from_client: self.from_client,
            frames_from_server: self.from_server,
            frames_kept: self.frames.kept as u64,
            bytes: self.payload_bytes,
            findings: self.findings.clone(),
            findings_not_kept: self.findings_not_kept,
            severity: self.severity,
            errors: self.errors.clone(),
            started: humantime::format_rfc3339_millis(self.started).to_string(),
            duration_ms,
            close: self.close.clone(),
        }
    }
}

/// A connection as `GET /api/connections` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct ConnSummary {
    /// The events' `conn`.
    pub id: u64,
    /// The request target the client asked for (path and query).
    pub target: String,
    pub path: String,
    /// The status the client got for its upgrade; `null` before (or without) one.
    pub status: Option<u16>,
    /// The connection has not ended yet.
    pub open: bool,
    /// The upgrade succeeded (101).
    pub websocket: bool,
    /// Frames seen, both directions (including any trimmed from memory).
    pub frames: u64,
    pub frames_from_client: u64,
    pub frames_from_server: u64,
    /// Frames still held in memory (the rest were trimmed).
    pub frames_kept: u64,
    /// Payload bytes of the frames seen, both directions.
    pub bytes: u64,
    /// The first findings (64 at most).
    pub findings: Vec<Finding>,
    /// Findings after those, counted but not kept.
    #[serde(skip_serializing_if = "is_zero")]
    pub findings_not_kept: u64,
    /// The worst finding's severity, of all of them.
    pub severity: Option<Severity>,
    pub errors: Vec<String>,
    pub started: String,
    /// Until now while open; the whole connection once closed.
    pub duration_ms: f64,
    pub close: Option<CloseSummary>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One connection with its handshake, for `GET /api/connections/{id}`.
#[derive(Debug, Clone, Serialize)]
pub struct ConnDetail {
    #[serde(flatten)]
    pub summary: ConnSummary,
    pub handshake: Option<Handshake>,
    /// The number of the oldest frame still kept.
    pub first_frame: Option<u64>,
}

/// A message on the live stream.
#[derive(Debug, Clone)]
pub enum Live {
    /// An event as JSON (with `n` for frames), numbered in arrival order.
    Event(u64, Arc<str>),
    /// The event stream ended (the proxy stopped).
    End,
}

#[derive(Default)]
struct Inner {
    conns: BTreeMap<u64, ConnState>,
    /// Targets of connections seen only as plain HTTP so far.
    http_targets: HashMap<u64, String>,
    cost: usize,
    forgotten: u64,
    ended: bool,
}

/// The shared store: written by [`UiSink`], read by the HTTP API.
pub struct Store {
    inner: Mutex<Inner>,
    live: broadcast::Sender<Live>,
    /// Numbers live events (the SSE `id`).
    seq: AtomicU64,
    limits: Limits,
}

/// Serializes a live event with the frame's number beside its fields.
#[derive(Serialize)]
struct LiveEvent<'a> {
    #[serde(flatten)]
    ev: &'a Event,
    #[serde(skip_serializing_if = "Option::is_none")]
    n: Option<u64>,
}

impl Store {
    pub fn new(limits: Limits) -> Arc<Store> {
        let (live, _) = broadcast::channel(limits.live_buffer.max(16));
        Arc::new(Store {
            inner: Mutex::new(Inner::default()),
            live,
            seq: AtomicU64::new(0),
            limits,
        })
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere while holding the lock leaves data that is
        // still consistent enough to show; keep serving it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Subscribes to the live stream.
    pub fn subscribe(&self) -> broadcast::Receiver<Live> {
        self.live.subscribe()
    }

    /// Whether the event stream has ended.
    pub fn ended(&self) -> bool {
        self.lock().ended
    }

    /// Takes one event in; returns the frame's number for frame events.
    pub fn record(&self, ev: &Event) -> Option<u64> {
        let id = ev.conn.map(|c| c.0)?;
        let mut g = self.lock();
        let inner = &mut *g;
        let mut n = None;
        match &ev.kind {
            EventKind::Handshake(h) => {
                let target = h
                    .client_request
                    .as_ref()
                    .map(|r| r.target.clone())
                    .unwrap_or_default();
                inner.http_targets.remove(&id);
                let c = inner
                    .conns
                    .entry(id)
                    .or_insert_with(|| ConnState::new(id, ev.ts, String::new()));
                c.target = target;
                c.handshake = Some(Arc::new((**h).clone()));
                self.make_room(inner);
            }
            EventKind::Http(x) => {
                if !inner.conns.contains_key(&id) {
                    if inner.http_targets.len() >= HTTP_MEMORY {
                        inner.http_targets.clear();
                    }
                    inner.http_targets.insert(id, x.target.clone());
                }
            }
            EventKind::Finding(f) => {
                if !inner.conns.contains_key(&id) {
                    let target = inner.http_targets.remove(&id).unwrap_or_default();
                    inner.conns.insert(id, ConnState::new(id, ev.ts, target));
                    self.make_room(inner);
                }
                if let Some(c) = inner.conns.get_mut(&id) {
                    let during_stream = c.close.is_none()
                        && c.handshake
                            .as_ref()
                            .and_then(|h| h.client_response.as_ref())
                            .is_some_and(|r| r.status == 101);
                    if during_stream && f.code == "protocol-violation" {
                        match f.view.as_deref() {
                            Some("client") => c.awaiting[0].push(f.code.clone()),
                            Some("server") => c.awaiting[1].push(f.code.clone()),
                            _ => {}
                        }
                    }
                    c.severity = c.severity.max(Some(f.severity));
                    if c.findings.len() < FINDINGS_KEPT {
                        c.findings.push(f.clone());
                    } else {
                        c.findings_not_kept += 1;
                    }
                }
            }
            EventKind::Error(e) => {
                if let Some(c) = inner.conns.get_mut(&id) {
                    if c.errors.len() < 32 {
                        c.errors.push(e.message.clone());
                    }
                }
            }
            EventKind::Close(s) => {
                inner.http_targets.remove(&id);
                if let Some(c) = inner.conns.get_mut(&id) {
                    c.close = Some(s.clone());
                }
            }
            EventKind::Frame(f) => {
                if let Some(c) = inner.conns.get_mut(&id) {
                    let side = match f.from {
                        Dir::ClientToServer => 0,
                        Dir::ServerToClient => 1,
                    };
                    let mut frame = f.clone();
                    // the HAR's copy of the payload is not for the view
                    frame.payload = None;
                    let stored = Arc::new(StoredFrame {
                        n: c.frames_seen,
                        ts: ev.ts,
                        frame,
                        findings: std::mem::take(&mut c.awaiting[side]),
                    });
                    n = Some(c.frames_seen);
                    c.frames_seen += 1;
                    if side == 0 {
                        c.from_client += 1;
                    } else {
                        c.from_server += 1;
                    }
                    c.payload_bytes += f.len;
                    inner.cost += stored.cost();
                    c.frames.push(stored);
                    if c.frames.kept > self.limits.frames_per_connection {
                        inner.cost -= c.frames.trim_oldest();
                    }
                    if inner.cost > self.limits.bytes {
                        self.trim_largest(inner);
                    }
                }
            }
            EventKind::Listening(_) | EventKind::Dropped(_) => {}
        }
        n
    }

    /// Forgets connections beyond the limit: the oldest closed first.
    fn make_room(&self, inner: &mut Inner) {
        while inner.conns.len() > self.limits.connections.max(1) {
            let victim = inner
                .conns
                .values()
                .find(|c| c.close.is_some())
                .or_else(|| inner.conns.values().next())
                .map(|c| c.id);
            let Some(v) = victim else { break };
            if let Some(c) = inner.conns.remove(&v) {
                inner.cost -= c.frames.cost;
                inner.forgotten += 1;
            }
        }
    }

    /// Trims frames until the byte estimate is under its limit, taking
    /// from whichever connection holds the most.
    fn trim_largest(&self, inner: &mut Inner) {
        while inner.cost > self.limits.bytes {
            let Some(c) = inner
                .conns
                .values_mut()
                .filter(|c| c.frames.kept > 0)
                .max_by_key(|c| c.frames.cost)
            else {
                break;
            };
            inner.cost -= c.frames.trim_oldest();
        }
    }

    /// Every listed connection, oldest first.
    pub fn connections(&self) -> Vec<ConnSummary> {
        let now = SystemTime::now();
        let g = self.lock();
        g.conns.values().map(|c| c.summary(now)).collect()
    }

    /// One connection with its handshake.
    pub fn connection(&self, id: u64) -> Option<ConnDetail> {
        let now = SystemTime::now();
        let g = self.lock();
        let c = g.conns.get(&id)?;
        Some(ConnDetail {
            summary: c.summary(now),
            handshake: c.handshake.as_deref().cloned(),
            first_frame: c.frames.first(),
        })
    }

    /// Whether the connection is listed, and whether it has ended.
    pub fn status(&self, id: u64) -> Option<bool> {
        self.lock().conns.get(&id).map(|c| c.close.is_some())
    }

    /// A copy of a connection's kept frames, to read without the lock.
    pub fn frames(&self, id: u64) -> Option<FramesSnapshot> {
        self.lock().conns.get(&id).map(|c| c.frames.snapshot())
    }

    /// One kept frame by its number.
    pub fn frame(&self, id: u64, n: u64) -> Option<Arc<StoredFrame>> {
        self.lock().conns.get(&id)?.frames.get(n)
    }

    /// Connections forgotten to stay within the limit.
    pub fn forgotten(&self) -> u64 {
        self.lock().forgotten
    }

    fn publish(&self, ev: &Event, n: Option<u64>) {
        // Serializing costs the dispatcher time: only when someone listens.
        if self.live.receiver_count() == 0 {
            return;
        }
        let Ok(json) = serde_json::to_string(&LiveEvent { ev, n }) else {
            return;
        };
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        // A full channel makes slow subscribers lag; it never blocks.
        let _ = self.live.send(Live::Event(seq, json.into()));
    }

    fn end(&self) {
        self.lock().ended = true;
        let _ = self.live.send(Live::End);
    }
}

/// The sink that fills a [`Store`]; give it to the dispatcher.
pub struct UiSink(pub Arc<Store>);

impl Sink for UiSink {
    fn event(&mut self, ev: &Event) -> io::Result<()> {
        let n = self.0.record(ev);
        self.0.publish(ev, n);
        Ok(())
    }

    fn finish(&mut self, _dropped: u64) -> io::Result<()> {
        self.0.end();
        Ok(())
    }

    fn name(&self) -> &str {
        "live view"
    }
}

/// Filters for a frame listing; `None` fields match everything.
#[derive(Debug, Default, Clone)]
pub struct FrameFilter {
    pub from: Option<Dir>,
    pub opcodes: Option<Vec<Opcode>>,
    /// Case-insensitive (ASCII) text in the preview or close reason.
    pub text: Option<String>,
    /// Only frames a finding points at.
    pub findings_only: bool,
    /// Only frames wstap inserted.
    pub injected_only: bool,
}

impl FrameFilter {
    pub fn is_empty(&self) -> bool {
        self.from.is_none()
            && self.opcodes.is_none()
            && self.text.is_none()
            && !self.findings_only
            && !self.injected_only
    }

    pub fn matches(&self, f: &StoredFrame) -> bool {
        if self.from.is_some_and(|d| d != f.frame.from) {
            return false;
        }
        if let Some(ops) = &self.opcodes {
            if !ops.contains(&f.frame.opcode) {
                return false;
            }
        }
        if self.findings_only && f.findings.is_empty() {
            return false;
        }
        if self.injected_only && !f.frame.injected {
            return false;
        }
        if let Some(t) = &self.text {
            let reason = f.frame.close_reason.as_deref().unwrap_or("");
            if !contains_ignore_ascii_case(&f.frame.preview, t)
                && !contains_ignore_ascii_case(reason, t)
            {
                return false;
            }
        }
        true
    }
}

/// Substring search ignoring ASCII case, without allocating.
pub fn contains_ignore_ascii_case(hay: &str, needle: &str) -> bool {
    let (h, n) = (hay.as_bytes(), needle.as_bytes());
    if n.is_empty() {
        return true;
    }
    h.windows(n.len()).any(|w| w.eq_ignore_ascii_case(n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::event::{ConnId, RequestView, ResponseView};
    use std::time::Duration;

    fn handshake(id: u64, target: &str) -> Event {
        Event::conn(
            SystemTime::now(),
            ConnId(id),
            EventKind::Handshake(Box::new(Handshake {
                client_request: Some(RequestView {
                    method: "GET".into(),
                    target: target.into(),
                    version: "HTTP/1.1".into(),
                    headers: vec![],
                }),
                client_response: Some(ResponseView {
                    status: 101,
                    reason: "Switching Protocols".into(),
                    version: "HTTP/1.1".into(),
                    headers: vec![],
                    body_preview: None,
                }),
                ..Default::default()
            })),
        )
    }

    fn frame(id: u64, from: Dir, text: &str) -> Event {
        Event::conn(
            SystemTime::now(),
            ConnId(id),
            EventKind::Frame(FrameEvent {
                preview: text.into(),
                payload: Some(text.as_bytes().to_vec()),
                ..FrameEvent::new(from, Opcode::Text, text.len() as u64)
            }),
        )
    }

    fn close(id: u64) -> Event {
        Event::conn(
            SystemTime::now(),
            ConnId(id),
            EventKind::Close(CloseSummary {
                reason: "close-handshake".into(),
                detail: String::new(),
                duration_ms: 1.0,
                frames_from_client: 0,
                frames_from_server: 0,
                bytes_from_client: 0,
                bytes_from_server: 0,
                websocket: true,
            }),
        )
    }

    #[test]
    fn frames_are_numbered_trimmed_in_chunks_and_found_by_number() {
        let store = Store::new(Limits {
            frames_per_connection: 3 * CHUNK,
            ..Limits::default()
        });
        store.record(&handshake(1, "/ws?x=1"));
        for i in 0..(4 * CHUNK + 10) {
            store.record(&frame(1, Dir::ClientToServer, &format!("m{i}")));
        }
        let c = store.connection(1).unwrap();
        assert_eq!(c.summary.path, "/ws");
        assert_eq!(c.summary.frames, (4 * CHUNK + 10) as u64);
        // whole chunks are trimmed: between limit - CHUNK and limit stay
        let kept = c.summary.frames_kept as usize;
        assert!(kept <= 3 * CHUNK && kept > 2 * CHUNK, "{kept}");
        assert_eq!(c.first_frame, Some((4 * CHUNK + 10 - kept) as u64));
        assert_eq!(c.first_frame.map(|f| f as usize % CHUNK), Some(0));
        let f = store.frame(1, (2 * CHUNK + 5) as u64).unwrap();
        assert_eq!(f.frame.preview, format!("m{}", 2 * CHUNK + 5));
        assert!(f.frame.payload.is_none());
        assert!(store.frame(1, 3).is_none(), "trimmed");
        let snap = store.frames(1).unwrap();
        let ns: Vec<u64> = snap.iter().map(|f| f.n).collect();
        assert_eq!(ns.len(), kept);
        assert!(ns.windows(2).all(|w| w[1] == w[0] + 1));
    }

    #[test]
    fn byte_budget_trims_the_largest_connection() {
        let store = Store::new(Limits {
            bytes: 64 * 1024,
            ..Limits::default()
        });
        store.record(&handshake(1, "/big"));
        store.record(&handshake(2, "/small"));
        store.record(&frame(2, Dir::ServerToClient, "keep me"));
        let big = "x".repeat(1000);
        for _ in 0..500 {
            store.record(&frame(1, Dir::ClientToServer, &big));
        }
        let g = store.lock();
        assert!(g.cost <= 64 * 1024, "{}", g.cost);
        drop(g);
        assert_eq!(store.connection(2).unwrap().summary.frames_kept, 1);
        let c1 = store.connection(1).unwrap().summary;
        assert_eq!(c1.frames, 500);
        assert!(c1.frames_kept < 70, "{}", c1.frames_kept);
    }

    #[test]
    fn oldest_closed_connection_is_forgotten_first() {
        let store = Store::new(Limits {
            connections: 2,
            ..Limits::default()
        });
        store.record(&handshake(1, "/a"));
        store.record(&handshake(2, "/b"));
        store.record(&close(2));
        store.record(&handshake(3, "/c"));
        let ids: Vec<u64> = store.connections().iter().map(|c| c.id).collect();
        assert_eq!(ids, vec![1, 3]);
        assert_eq!(store.forgotten(), 1);
    }

    #[test]
    fn violations_point_at_the_next_frame_from_that_side() {
        let store = Store::new(Limits::default());
        store.record(&handshake(1, "/"));
        store.record(&frame(1, Dir::ServerToClient, "fine"));
        let f = Finding::new(
            "protocol-violation",
            Severity::Error,
            "client sent an unmasked frame",
            "mask",
        )
        .view("client");
        store.record(&Event::conn(
            SystemTime::now(),
            ConnId(1),
            EventKind::Finding(f),
        ));
        store.record(&frame(1, Dir::ServerToClient, "still fine"));
        store.record(&frame(1, Dir::ClientToServer, "bad"));
        let flagged: Vec<u64> = store
            .frames(1)
            .unwrap()
            .iter()
            .filter(|f| !f.findings.is_empty())
            .map(|f| f.n)
            .collect();
        assert_eq!(flagged, vec![2]);
        let filter = FrameFilter {
            findings_only: true,
            ..Default::default()
        };
        assert!(filter.matches(&store.frame(1, 2).unwrap()));
        assert!(!filter.matches(&store.frame(1, 1).unwrap()));
    }

    #[test]
    fn plain_http_connections_are_listed_only_with_a_finding() {
        let store = Store::new(Limits::default());
        let http = |id| {
            Event::conn(
                SystemTime::now(),
                ConnId(id),
                EventKind::Http(crate::proto::event::HttpExchange {
                    method: "GET".into(),
                    target: "/page".into(),
                    status: 502,
                    duration_ms: 1.0,
                    request_bytes: 0,
                    response_bytes: 0,
                    client_request: None,
                    client_response: None,
                    upstream_addr: None,
                    rewrites: vec![],
                }),
            )
        };
        store.record(&http(1));
        store.record(&http(2));
        store.record(&Event::conn(
            SystemTime::now(),
            ConnId(2),
            EventKind::Finding(Finding::new("upstream-refused", Severity::Error, "m", "h")),
        ));
        let list = store.connections();
        assert_eq!(list.len(), 1);
        assert_eq!((list[0].id, list[0].target.as_str()), (2, "/page"));
        assert_eq!(list[0].severity, Some(Severity::Error));
    }

    #[test]
    fn findings_past_the_limit_are_counted_not_kept() {
        let store = Store::new(Limits::default());
        let finding = |sev, code: &str| {
            Event::conn(
                SystemTime::now(),
                ConnId(1),
                EventKind::Finding(Finding::new(code, sev, "m", "h")),
            )
        };
        // one keep-alive connection, one refused upgrade after another
        for i in 0..1000 {
            store.record(&finding(Severity::Warning, &format!("w{i}")));
        }
        store.record(&finding(Severity::Error, "late"));
        let c = &store.connections()[0];
        assert_eq!(c.findings.len(), FINDINGS_KEPT);
        assert_eq!(c.findings[0].code, "w0");
        assert_eq!(c.findings_not_kept, 1001 - FINDINGS_KEPT as u64);
        // the worst of all of them, not of those kept
        assert_eq!(c.severity, Some(Severity::Error));
        let json = serde_json::to_value(c).unwrap();
        assert_eq!(json["findings_not_kept"], 1001 - FINDINGS_KEPT as u64);
        // and none of that on a connection within the limit
        store.record(&Event::conn(
            SystemTime::now(),
            ConnId(2),
            EventKind::Finding(Finding::new("x", Severity::Info, "m", "h")),
        ));
        let two = store.connections().into_iter().find(|c| c.id == 2).unwrap();
        assert!(serde_json::to_value(&two)
            .unwrap()
            .get("findings_not_kept")
            .is_none());
    }

    #[test]
    fn live_stream_numbers_frames_and_lags_instead_of_blocking() {
        let store = Store::new(Limits {
            live_buffer: 16,
            ..Limits::default()
        });
        let mut rx = store.subscribe();
        let mut sink = UiSink(store.clone());
        sink.event(&handshake(1, "/")).unwrap();
        sink.event(&frame(1, Dir::ClientToServer, "hello")).unwrap();
        let Ok(Live::Event(_, first)) = rx.try_recv() else {
            panic!("no handshake on the live stream")
        };
        assert!(first.contains(r#""event":"handshake""#), "{first}");
        let Ok(Live::Event(_, json)) = rx.try_recv() else {
            panic!("no frame on the live stream")
        };
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(
            (v["n"].as_u64(), v["preview"].as_str()),
            (Some(0), Some("hello"))
        );
        // nobody reads: the sink goes on, the reader learns it lagged
        let t = std::time::Instant::now();
        for i in 0..1000 {
            sink.event(&frame(1, Dir::ServerToClient, &format!("{i}")))
                .unwrap();
        }
        assert!(t.elapsed() < Duration::from_secs(5));
        assert!(matches!(
            rx.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(_))
        ));
        sink.finish(0).unwrap();
        assert!(store.ended());
    }

    #[test]
    fn text_search_ignores_ascii_case() {
        assert!(contains_ignore_ascii_case("Hello World", "wORLD"));
        assert!(!contains_ignore_ascii_case("Hello", "hello!"));
        assert!(contains_ignore_ascii_case("", ""));
    }
}
