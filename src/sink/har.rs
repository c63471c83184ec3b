//! `--har FILE`: HAR 1.2 as Chrome DevTools exports it, so a capture opens
//! in the Network panel (Import HAR). One entry per ordinary HTTP request
//! and per WebSocket handshake; WebSocket entries carry Chrome's
//! `_resourceType: "websocket"` and `_webSocketMessages`, one per message,
//! reassembled from the frames' captured payloads.
//!
//! The file is rewritten whole (temp file in the same directory, then
//! rename, so a reader never sees half a file) when connections end, at
//! most every [`HarOptions::min_interval`], and always at finish. Memory is
//! bounded: message data is kept up to [`HarOptions::max_payload`] bytes
//! per message, at most [`HarOptions::max_messages_per_entry`] messages per
//! entry, [`HarOptions::max_entries`] entries, and
//! [`HarOptions::data_budget`] bytes of message data in all; the oldest go
//! first and what was dropped is counted in the file (`_wstapDropped`,
//! `_wstapDroppedMessages`). This sink never holds more than that and
//! never touches the relay: it only reads events.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

use super::Sink;
use crate::proto::event::{
    view_header, ConnId, Dir, Event, EventKind, FrameEvent, Handshake, HttpExchange, RequestView,
    ResponseView,
};
use crate::proto::frame::Opcode;

/// `--har-max-payload` default: bytes kept per message.
pub const DEFAULT_MAX_PAYLOAD: usize = 64 * 1024;
/// The largest `--har-max-payload` accepted: each open connection's taps
/// hold this much per direction while a frame passes.
pub const MAX_PAYLOAD_LIMIT: usize = 16 * 1024 * 1024;

/// The per-frame capture (`ProxyConfig::capture`) a HAR keeping
/// `max_payload` bytes per message needs. One byte more than the limit:
/// a frame whose captured payload exceeds the limit is then known to be
/// truncated even when it was compressed and its inflated size is unknown.
pub fn capture_for(max_payload: usize) -> usize {
    max_payload.min(MAX_PAYLOAD_LIMIT) + 1
}

/// Limits and pacing of the HAR sink.
#[derive(Debug, Clone)]
pub struct HarOptions {
    /// Bytes of payload kept per message; longer ones are cut and marked
    /// `_truncated: true` (with `_length` when the full length is known).
    pub max_payload: usize,
    /// Entries kept; beyond it the oldest finished entry goes.
    pub max_entries: usize,
    /// Messages kept per WebSocket entry; beyond it the oldest go.
    pub max_messages_per_entry: usize,
    /// Message bytes kept in memory across all entries; beyond it the
    /// oldest messages (of any entry) go.
    pub data_budget: usize,
    /// The shortest time between two rewrites of the file.
    pub min_interval: Duration,
    /// Clients reach wstap over TLS: URLs are `https://`/`wss://`.
    pub client_tls: bool,
}

impl HarOptions {
    pub fn new(max_payload: usize) -> Self {
        HarOptions {
            max_payload: max_payload.min(MAX_PAYLOAD_LIMIT),
            max_entries: 2_000,
            max_messages_per_entry: 10_000,
            data_budget: 64 * 1024 * 1024,
            min_interval: Duration::from_millis(250),
            client_tls: false,
        }
    }
}

impl Default for HarOptions {
    fn default() -> Self {
        HarOptions::new(DEFAULT_MAX_PAYLOAD)
    }
}

/// Rewrites never come closer than this multiple of the last write's
/// duration, so a large file cannot keep the sink thread busy (the relay
/// waits on it when the event channel is full)...
const WRITE_COST_FACTOR: u32 = 4;
/// ...but a connection's end still reaches the disk this soon after the
/// last write, unless a single write takes longer.
const MAX_INTERVAL: Duration = Duration::from_secs(1);

/// The sink: the in-memory log plus the file it is rewritten to.
pub struct HarSink {
    log: HarLog,
    path: PathBuf,
    tmp: PathBuf,
    name: String,
    /// A connection ended since the last write.
    dirty: bool,
    last_write: Option<Instant>,
    interval: Duration,
}

impl HarSink {
    /// Writes an empty HAR to `path` at once, so a path that cannot be
    /// written fails at startup rather than at the first connection's end.
    pub fn create(path: &Path, opts: HarOptions) -> io::Result<Self> {
        let name = format!("HAR {}", path.display());
        // A symlink is followed, so the capture lands where it points; a
        // node that is not a regular file is refused: writing a temp file
        // and renaming it over the path would replace a device such as
        // /dev/null (or a socket, a FIFO) with a plain file.
        let path = &match std::fs::canonicalize(path) {
            Ok(real) if std::fs::metadata(&real)?.is_file() => real,
            Ok(_) => return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file (the HAR is written to a temporary file and renamed over it)",
            )),
            Err(e) if e.kind() == io::ErrorKind::NotFound => path.to_path_buf(),
            Err(e) => return Err(e),
        };
        let file_name = path.file_name().ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "the HAR path names no file")
        })?;
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        // same directory: a rename across file systems would not be atomic
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(file_name);
        tmp_name.push(format!(".wstap-{}.tmp", std::process::id()));
        let interval = opts.min_interval;
        let mut sink = HarSink {
            log: HarLog::new(opts),
            path: path.to_path_buf(),
            tmp: dir.join(tmp_name),
            name,
            dirty: false,
            last_write: None,
            interval,
        };
        sink.write(false)?;
        Ok(sink)
    }

    /// The in-memory log (what the next write will contain).
    pub fn log(&self) -> &HarLog {
        &self.log
    }

    fn write(&mut self, sync: bool) -> io::Result<()> {
        let started = Instant::now();
        let result = self
            .write_tmp(sync)
            .and_then(|()| std::fs::rename(&self.tmp, &self.path));
        if result.is_err() {
            let _ = std::fs::remove_file(&self.tmp);
        }
        result?;
        let took = started.elapsed();
        self.interval = self
            .log
            .opts
            .min_interval
            .max((took * WRITE_COST_FACTOR).min(MAX_INTERVAL));
        self.last_write = Some(Instant::now());
        self.dirty = false;
        Ok(())
    }

    fn write_tmp(&self, sync: bool) -> io::Result<()> {
        let file = File::create(&self.tmp)?;
        let mut out = BufWriter::with_capacity(256 * 1024, file);
        self.log.write_json(&mut out)?;
        out.write_all(b"\n")?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        if sync {
            file.sync_all()?;
        }
        Ok(())
    }

    fn next_write_at(&self) -> Option<Instant> {
        if !self.dirty {
            return None;
        }
        Some(match self.last_write {
            Some(t) => t + self.interval,
            None => Instant::now(),
        })
    }
}

impl Sink for HarSink {
    fn event(&mut self, ev: &Event) -> io::Result<()> {
        self.log.event(ev);
        if matches!(ev.kind, EventKind::Close(_)) {
            self.dirty = true;
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.next_write_at() {
            Some(at) if at <= Instant::now() => self.write(false),
            _ => Ok(()),
        }
    }

    fn flush_due(&self) -> Option<Instant> {
        self.next_write_at()
    }

    fn finish(&mut self, dropped: u64) -> io::Result<()> {
        self.log.dropped_events = dropped;
        self.write(true)
    }

    fn name(&self) -> &str {
        &self.name
    }
}

/// Data, opcode and timing of one WebSocket message.
#[derive(Debug, Clone)]
struct Message {
    /// Arrival order across the whole log, for budget eviction.
    seq: u64,
    dir: Dir,
    at: SystemTime,
    opcode: u8,
    data: Vec<u8>,
    /// The full payload length; unknown once a frame was compressed.
    len: Option<u64>,
    truncated: bool,
    /// The connection ended (or wstap exited) before its last fragment.
    incomplete: bool,
    close: Option<(Option<u16>, String)>,
}

/// A fragmented message whose last frame has not been seen yet.
#[derive(Debug, Clone)]
struct Partial {
    opcode: u8,
    data: Vec<u8>,
    len: Option<u64>,
    truncated: bool,
    at: SystemTime,
}

#[derive(Debug, Default)]
struct WsLog {
    messages: VecDeque<Message>,
    dropped: u64,
    open: bool,
    /// Per direction: client to server, server to client.
    partial: [Option<Partial>; 2],
}

fn dir_index(d: Dir) -> usize {
    match d {
        Dir::ClientToServer => 0,
        Dir::ServerToClient => 1,
    }
}

#[derive(Debug)]
struct Entry {
    /// Creation order; entries are stored sorted by it.
    id: u64,
    conn: Option<ConnId>,
    started: SystemTime,
    duration_ms: Option<f64>,
    request: Option<RequestView>,
    /// From `http` events, which may lack the request view.
    method: String,
    target: String,
    response: Option<ResponseView>,
    /// The status when no response view exists (`http` events).
    status: u16,
    /// Response body bytes, when counted.
    response_body: Option<u64>,
    server_addr: Option<String>,
    ws: Option<WsLog>,
}

/// The HAR as kept in memory; fed events, written as JSON.
#[derive(Debug)]
pub struct HarLog {
    opts: HarOptions,
    entries: VecDeque<Entry>,
    next_id: u64,
    next_seq: u64,
    /// Open WebSocket connections and their entries.
    open: HashMap<ConnId, u64>,
    /// Message arrival order `(entry id, seq)`; may hold entries already
    /// dropped another way (skipped when met, compacted when many).
    order: VecDeque<(u64, u64)>,
    messages: usize,
    bytes: usize,
    dropped_entries: u64,
    dropped_messages: u64,
    dropped_events: u64,
    listen: Option<String>,
}

impl HarLog {
    pub fn new(mut opts: HarOptions) -> Self {
        opts.max_payload = opts.max_payload.min(MAX_PAYLOAD_LIMIT);
        // one message must always fit, with room to spare
        opts.data_budget = opts.data_budget.max(2 * opts.max_payload);
        opts.max_entries = opts.max_entries.max(1);
        opts.max_messages_per_entry = opts.max_messages_per_entry.max(1);
        HarLog {
            opts,
            entries: VecDeque::new(),
            next_id: 0,
            next_seq: 0,
            open: HashMap::new(),
            order: VecDeque::new(),
            messages: 0,
            bytes: 0,
            dropped_entries: 0,
            dropped_messages: 0,
            dropped_events: 0,
            listen: None,
        }
    }

    /// Message bytes held in memory now.
    pub fn data_bytes(&self) -> usize {
        self.bytes
    }

    pub fn event(&mut self, ev: &Event) {
        match &ev.kind {
            EventKind::Listening(l) => self.listen = Some(l.addr.clone()),
            EventKind::Handshake(h) => self.on_handshake(ev.ts, ev.conn, h),
            EventKind::Http(h) => self.on_http(ev.ts, ev.conn, h),
            EventKind::Frame(f) => {
                if let Some(conn) = ev.conn {
                    self.on_frame(ev.ts, conn, f);
                }
            }
            EventKind::Close(_) => {
                if let Some(conn) = ev.conn {
                    self.on_close(conn);
                }
            }
            EventKind::Finding(_) | EventKind::Error(_) | EventKind::Dropped(_) => {}
        }
    }

    fn on_handshake(&mut self, ts: SystemTime, conn: Option<ConnId>, h: &Handshake) {
        let upgraded = h.client_response.as_ref().is_some_and(|r| r.status == 101);
        let request = h.client_request.clone();
        let (method, target) = request
            .as_ref()
            .map(|r| (r.method.clone(), r.target.clone()))
            .unwrap_or_default();
        let response = h.client_response.clone();
        let status = response.as_ref().map_or(0, |r| r.status);
        let id = self.push_entry(Entry {
            id: 0,
            conn,
            started: started_at(ts, h.duration_ms),
            duration_ms: h.duration_ms,
            request,
            method,
            target,
            response_body: if upgraded { Some(0) } else { None },
            response,
            status,
            server_addr: h.upstream_addr.clone(),
            ws: Some(WsLog {
                open: upgraded,
                ..Default::default()
            }),
        });
        if let (true, Some(conn)) = (upgraded, conn) {
            self.open.insert(conn, id);
        }
    }

    fn on_http(&mut self, ts: SystemTime, conn: Option<ConnId>, h: &HttpExchange) {
        self.push_entry(Entry {
            id: 0,
            conn,
            started: started_at(ts, Some(h.duration_ms)),
            duration_ms: Some(h.duration_ms),
            request: h.client_request.clone(),
            method: h.method.clone(),
            target: h.target.clone(),
            response: h.client_response.clone(),
            status: h.status,
            response_body: (h.status != 0).then_some(h.response_bytes),
            server_addr: h.upstream_addr.clone(),
            ws: None,
        });
    }

    fn push_entry(&mut self, mut e: Entry) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        e.id = id;
        self.entries.push_back(e);
        if self.entries.len() > self.opts.max_entries {
            // an open connection is likely the one being debugged: drop
            // the oldest finished entry, an open one only if all are open
            let victim = self
                .entries
                .iter()
                .position(|e| !e.ws.as_ref().is_some_and(|w| w.open))
                .unwrap_or(0);
            if let Some(gone) = self.entries.remove(victim) {
                self.dropped_entries += 1;
                if let Some(ws) = gone.ws {
                    self.messages -= ws.messages.len();
                    self.bytes -= ws.messages.iter().map(|m| m.data.len()).sum::<usize>();
                }
                if let Some(conn) = gone.conn {
                    if self.open.get(&conn) == Some(&gone.id) {
                        self.open.remove(&conn);
                    }
                }
            }
            self.compact_order();
        }
        id
    }

    fn entry_mut(&mut self, id: u64) -> Option<&mut Entry> {
        find_entry(&mut self.entries, id)
    }

    fn on_frame(&mut self, ts: SystemTime, conn: ConnId, f: &FrameEvent) {
        let Some(&id) = self.open.get(&conn) else {
            return;
        };
        let limit = self.opts.max_payload;
        let Some(ws) = self.entry_mut(id).and_then(|e| e.ws.as_mut()) else {
            return;
        };
        let slot = &mut ws.partial[dir_index(f.from)];
        let mut done = Vec::new();
        if f.opcode.is_control() {
            let mut m = Partial::new(f.opcode.bits(), ts);
            m.append(f, limit);
            let close = (f.opcode == Opcode::Close)
                .then(|| (f.close_code, f.close_reason.clone().unwrap_or_default()));
            done.push(m.finish(f.from, ts, false, close));
        } else {
            if f.opcode != Opcode::Continuation {
                // a new message while one is open breaks RFC 6455 §5.4;
                // keep what the earlier one had
                if let Some(old) = slot.take() {
                    done.push(old.finish(f.from, ts, true, None));
                }
            }
            let m = slot.get_or_insert_with(|| Partial::new(f.opcode.bits(), ts));
            m.append(f, limit);
            if f.fin {
                if let Some(m) = slot.take() {
                    done.push(m.finish(f.from, ts, false, None));
                }
            }
        }
        for m in done {
            self.push_message(id, m);
        }
    }

    fn on_close(&mut self, conn: ConnId) {
        let Some(id) = self.open.remove(&conn) else {
            return;
        };
        let mut done = Vec::new();
        if let Some(ws) = self.entry_mut(id).and_then(|e| e.ws.as_mut()) {
            ws.open = false;
            for (i, p) in ws.partial.iter_mut().enumerate() {
                if let Some(p) = p.take() {
                    let dir = if i == 0 {
                        Dir::ClientToServer
                    } else {
                        Dir::ServerToClient
                    };
                    let at = p.at;
                    done.push(p.finish(dir, at, true, None));
                }
            }
        }
        for m in done {
            self.push_message(id, m);
        }
    }

    fn push_message(&mut self, id: u64, mut m: Message) {
        m.seq = self.next_seq;
        self.next_seq += 1;
        let size = m.data.len();
        let max_messages = self.opts.max_messages_per_entry;
        let Some(ws) = find_entry(&mut self.entries, id).and_then(|e| e.ws.as_mut()) else {
            return;
        };
        self.order.push_back((id, m.seq));
        ws.messages.push_back(m);
        let mut freed = 0;
        let mut dropped = 0;
        while ws.messages.len() > max_messages {
            if let Some(old) = ws.messages.pop_front() {
                freed += old.data.len();
                dropped += 1;
            }
        }
        ws.dropped += dropped;
        self.dropped_messages += dropped;
        self.messages = self.messages + 1 - dropped as usize;
        self.bytes = self.bytes + size - freed;
        while self.bytes > self.opts.data_budget {
            if !self.evict_oldest_message() {
                break;
            }
        }
        self.compact_order();
    }

    /// Drops the oldest message still held; false when there is none.
    fn evict_oldest_message(&mut self) -> bool {
        while let Some((id, seq)) = self.order.pop_front() {
            let Some(ws) = self.entry_mut(id).and_then(|e| e.ws.as_mut()) else {
                continue;
            };
            if ws.messages.front().map(|m| m.seq) != Some(seq) {
                continue;
            }
            if let Some(m) = ws.messages.pop_front() {
                ws.dropped += 1;
                self.dropped_messages += 1;
                self.messages -= 1;
                self.bytes -= m.data.len();
                return true;
            }
        }
        false
    }

    /// Removes stale `order` items once they outnumber the live ones, so
    /// the queue stays proportional to the messages held.
    fn compact_order(&mut self) {
        if self.order.len() <= 2 * self.messages + 1024 {
            return;
        }
        let live: HashMap<u64, u64> = self
            .entries
            .iter()
            .filter_map(|e| {
                let front = e.ws.as_ref()?.messages.front()?;
                Some((e.id, front.seq))
            })
            .collect();
        self.order
            .retain(|(id, seq)| live.get(id).is_some_and(|front| seq >= front));
    }

    /// Writes the log as HAR 1.2 JSON (indented, as DevTools exports it).
    pub fn write_json(&self, w: &mut impl Write) -> io::Result<()> {
        let mut ser = serde_json::Serializer::pretty(w);
        self.render().serialize(&mut ser).map_err(io::Error::other)
    }

    /// The log as a JSON value (tests, small logs).
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::to_value(self.render()).unwrap_or_default()
    }

    fn render(&self) -> Har<'_> {
        let mut entries: Vec<&Entry> = self.entries.iter().collect();
        // DevTools lists by start; `http` events arrive at their end
        entries.sort_by_key(|e| e.started);
        let dropped = Dropped {
            entries: self.dropped_entries,
            messages: self.dropped_messages,
            events: self.dropped_events,
        };
        Har {
            log: LogOut {
                version: "1.2",
                creator: Creator {
                    name: "wstap",
                    version: env!("CARGO_PKG_VERSION"),
                },
                pages: [],
                entries: entries.into_iter().map(|e| self.render_entry(e)).collect(),
                dropped: (dropped.entries + dropped.messages + dropped.events > 0)
                    .then_some(dropped),
            },
        }
    }

    fn render_entry<'a>(&'a self, e: &'a Entry) -> EntryOut<'a> {
        let headers: &[(String, String)] = e.request.as_ref().map_or(&[], |r| &r.headers);
        let version = e
            .request
            .as_ref()
            .map_or("HTTP/1.1", |r| r.version.as_str());
        let url = absolute_url(
            &e.method,
            &e.target,
            view_header(headers, "host").or(self.listen.as_deref()),
            e.ws.is_some(),
            self.opts.client_tls,
        );
        let request = RequestOut {
            method: &e.method,
            url,
            http_version: version,
            headers: name_values(headers),
            query_string: query_string(&e.target),
            cookies: [],
            headers_size: e.request.as_ref().map_or(-1, |r| {
                head_size(&r.method, &r.target, &r.version, &r.headers)
            }),
            body_size: body_size(headers, e.request.is_some()),
        };
        let response = match &e.response {
            Some(r) => {
                let declared = view_header(&r.headers, "content-length")
                    .and_then(|v| v.trim().parse::<i64>().ok());
                // Content-Length is exact where present; wstap's own error
                // responses are not counted in `response_bytes`
                let body = declared.or(e.response_body.map(|b| b as i64)).unwrap_or(-1);
                ResponseOut {
                    status: r.status,
                    status_text: &r.reason,
                    http_version: &r.version,
                    headers: name_values(&r.headers),
                    cookies: [],
                    content: Content {
                        size: body.max(0),
                        mime_type: view_header(&r.headers, "content-type")
                            .unwrap_or(if e.ws.is_some() { "x-unknown" } else { "" }),
                        text: r.body_preview.as_deref(),
                    },
                    redirect_url: view_header(&r.headers, "location").unwrap_or(""),
                    headers_size: head_size(
                        &r.version,
                        &r.status.to_string(),
                        &r.reason,
                        &r.headers,
                    ),
                    body_size: body,
                }
            }
            None => ResponseOut {
                status: e.status,
                status_text: "",
                http_version: if e.status == 0 { "" } else { "HTTP/1.1" },
                headers: Vec::new(),
                cookies: [],
                content: Content {
                    size: e.response_body.unwrap_or(0) as i64,
                    mime_type: "",
                    text: None,
                },
                redirect_url: "",
                headers_size: -1,
                body_size: e.response_body.map_or(-1, |b| b as i64),
            },
        };
        // wstap times the exchange as a whole; HAR 1.2 forbids -1 for
        // send, wait and receive, so the whole of it is "wait"
        let total = e.duration_ms.unwrap_or(0.0).max(0.0);
        let ws = e.ws.as_ref();
        EntryOut {
            started_date_time: humantime::format_rfc3339_millis(e.started).to_string(),
            time: total,
            request,
            response,
            cache: Empty {},
            timings: Timings {
                blocked: -1,
                dns: -1,
                connect: -1,
                ssl: -1,
                send: 0.0,
                wait: total,
                receive: 0.0,
            },
            server_ip_address: e.server_addr.as_deref().map(|a| {
                a.parse::<SocketAddr>()
                    .map_or(a.to_string(), |s| s.ip().to_string())
            }),
            connection: e.conn.map(|c| c.0.to_string()).unwrap_or_default(),
            resource_type: ws.map(|_| "websocket"),
            messages: ws.map(Messages),
            dropped_messages: ws.map_or(0, |w| w.dropped),
            open: ws.is_some_and(|w| w.open),
        }
    }
}

impl Partial {
    fn new(opcode: u8, at: SystemTime) -> Self {
        Partial {
            opcode,
            data: Vec::new(),
            len: Some(0),
            truncated: false,
            at,
        }
    }

    /// Adds a frame's captured payload, up to `limit` bytes in all.
    fn append(&mut self, f: &FrameEvent, limit: usize) {
        self.len = match (self.len, f.compressed) {
            (Some(n), false) => Some(n + f.len),
            _ => None,
        };
        if self.truncated {
            // a gap would follow the cut: keep the message's head only
            return;
        }
        let Some(p) = &f.payload else {
            self.truncated |= f.len > 0;
            return;
        };
        let room = limit.saturating_sub(self.data.len());
        let take = p.len().min(room);
        self.data.extend_from_slice(&p[..take]);
        let cut_by_tap = !f.compressed && (p.len() as u64) < f.len;
        self.truncated = take < p.len() || cut_by_tap;
    }

    fn finish(
        self,
        dir: Dir,
        at: SystemTime,
        incomplete: bool,
        close: Option<(Option<u16>, String)>,
    ) -> Message {
        Message {
            seq: 0,
            dir,
            at,
            opcode: self.opcode,
            data: self.data,
            len: self.len,
            truncated: self.truncated,
            incomplete,
            close,
        }
    }
}

/// Entries are stored in id order.
fn find_entry(entries: &mut VecDeque<Entry>, id: u64) -> Option<&mut Entry> {
    let i = entries.binary_search_by_key(&id, |e| e.id).ok()?;
    entries.get_mut(i)
}

fn started_at(ts: SystemTime, duration_ms: Option<f64>) -> SystemTime {
    let back = Duration::try_from_secs_f64(duration_ms.unwrap_or(0.0).max(0.0) / 1000.0)
        .unwrap_or_default();
    ts.checked_sub(back).unwrap_or(ts)
}

/// The URL the client asked for: absolute-form targets as they are (with
/// a WebSocket scheme for upgrades), origin-form ones on the `Host` header
/// (or, without one, the address wstap listens on).
fn absolute_url(method: &str, target: &str, host: Option<&str>, ws: bool, tls: bool) -> String {
    let lower = target.get(..8).unwrap_or(target).to_ascii_lowercase();
    for (plain, ws_scheme) in [("http://", "ws://"), ("https://", "wss://")] {
        if lower.starts_with(plain) {
            return if ws {
                format!("{ws_scheme}{}", &target[plain.len()..])
            } else {
                target.to_string()
            };
        }
    }
    if lower.starts_with("ws://") || lower.starts_with("wss://") {
        return target.to_string();
    }
    let scheme = match (ws, tls) {
        (true, false) => "ws",
        (true, true) => "wss",
        (false, false) => "http",
        (false, true) => "https",
    };
    if method == "CONNECT" {
        return format!("{scheme}://{target}");
    }
    let host = host
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .unwrap_or("localhost");
    let sep = if target.starts_with('/') { "" } else { "/" };
    let path = if target == "*" { "" } else { target };
    format!("{scheme}://{host}{sep}{path}")
}

/// `name=value` pairs of the target's query, as sent (not decoded).
fn query_string(target: &str) -> Vec<NameValue<'_>> {
    let Some((_, q)) = target.split_once('?') else {
        return Vec::new();
    };
    let q = q.split('#').next().unwrap_or("");
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (name, value) = p.split_once('=').unwrap_or((p, ""));
            NameValue { name, value }
        })
        .collect()
}

fn name_values(h: &[(String, String)]) -> Vec<NameValue<'_>> {
    h.iter()
        .map(|(name, value)| NameValue { name, value })
        .collect()
}

/// A head's size as re-serialized from its view (`Name: value` lines):
/// exact unless the wire had unusual whitespace.
fn head_size(a: &str, b: &str, c: &str, headers: &[(String, String)]) -> i64 {
    let line = a.len() + b.len() + c.len() + 4;
    let fields: usize = headers.iter().map(|(n, v)| n.len() + v.len() + 4).sum();
    (line + fields + 2) as i64
}

/// A request body's size from its framing headers; -1 when chunked.
fn body_size(headers: &[(String, String)], known: bool) -> i64 {
    if !known {
        return -1;
    }
    if let Some(n) = view_header(headers, "content-length").and_then(|v| v.trim().parse().ok()) {
        return n;
    }
    if view_header(headers, "transfer-encoding").is_some() {
        return -1;
    }
    0
}

fn epoch_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A text message's data as a string: a cut inside a multi-byte character
/// loses that character, invalid UTF-8 shows replacement characters.
fn text_data(data: &[u8], truncated: bool) -> Cow<'_, str> {
    match std::str::from_utf8(data) {
        Ok(s) => Cow::Borrowed(s),
        Err(e) if truncated && e.error_len().is_none() => {
            String::from_utf8_lossy(&data[..e.valid_up_to()])
        }
        Err(_) => String::from_utf8_lossy(data),
    }
}

// What is written: HAR 1.2 field names, Chrome's extensions (`_name`).

#[derive(Serialize)]
struct Har<'a> {
    log: LogOut<'a>,
}

#[derive(Serialize)]
struct LogOut<'a> {
    version: &'static str,
    creator: Creator,
    pages: [(); 0],
    entries: Vec<EntryOut<'a>>,
    #[serde(rename = "_wstapDropped", skip_serializing_if = "Option::is_none")]
    dropped: Option<Dropped>,
}

#[derive(Serialize)]
struct Creator {
    name: &'static str,
    version: &'static str,
}

#[derive(Serialize)]
struct Dropped {
    entries: u64,
    messages: u64,
    events: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EntryOut<'a> {
    started_date_time: String,
    time: f64,
    request: RequestOut<'a>,
    response: ResponseOut<'a>,
    cache: Empty,
    timings: Timings,
    #[serde(rename = "serverIPAddress", skip_serializing_if = "Option::is_none")]
    server_ip_address: Option<String>,
    connection: String,
    #[serde(rename = "_resourceType", skip_serializing_if = "Option::is_none")]
    resource_type: Option<&'static str>,
    #[serde(rename = "_webSocketMessages", skip_serializing_if = "Option::is_none")]
    messages: Option<Messages<'a>>,
    #[serde(rename = "_wstapDroppedMessages", skip_serializing_if = "is_zero")]
    dropped_messages: u64,
    /// The connection was still open when the file was written.
    #[serde(rename = "_wstapOpen", skip_serializing_if = "is_false")]
    open: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Serialize)]
struct Empty {}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RequestOut<'a> {
    method: &'a str,
    url: String,
    http_version: &'a str,
    headers: Vec<NameValue<'a>>,
    query_string: Vec<NameValue<'a>>,
    cookies: [(); 0],
    headers_size: i64,
    body_size: i64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ResponseOut<'a> {
    status: u16,
    status_text: &'a str,
    http_version: &'a str,
    headers: Vec<NameValue<'a>>,
    cookies: [(); 0],
    content: Content<'a>,
    #[serde(rename = "redirectURL")]
    redirect_url: &'a str,
    headers_size: i64,
    body_size: i64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Content<'a> {
    size: i64,
    mime_type: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
}

#[derive(Serialize)]
struct NameValue<'a> {
    name: &'a str,
    value: &'a str,
}

#[derive(Serialize)]
struct Timings {
    blocked: i64,
    dns: i64,
    connect: i64,
    ssl: i64,
    send: f64,
    wait: f64,
    receive: f64,
}

/// An entry's messages, each rendered while it is written: only one
/// message's text or base64 exists at a time.
struct Messages<'a>(&'a WsLog);

impl Serialize for Messages<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let pending = self.0.partial.iter().enumerate().filter_map(|(i, p)| {
            let p = p.as_ref()?;
            let dir = if i == 0 {
                Dir::ClientToServer
            } else {
                Dir::ServerToClient
            };
            Some(Cow::Owned(p.clone().finish(dir, p.at, true, None)))
        });
        s.collect_seq(
            self.0
                .messages
                .iter()
                .map(Cow::Borrowed)
                .chain(pending)
                .map(MessageOut),
        )
    }
}

struct MessageOut<'a>(Cow<'a, Message>);

impl Serialize for MessageOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let m = &*self.0;
        let mut map = s.serialize_map(None)?;
        // Chrome's view: the browser is the client
        let kind = match m.dir {
            Dir::ClientToServer => "send",
            Dir::ServerToClient => "receive",
        };
        map.serialize_entry("type", kind)?;
        map.serialize_entry("time", &epoch_seconds(m.at))?;
        map.serialize_entry("opcode", &m.opcode)?;
        if m.opcode == Opcode::Text.bits() {
            map.serialize_entry("data", &text_data(&m.data, m.truncated))?;
        } else {
            let b64 = base64::engine::general_purpose::STANDARD.encode(&m.data);
            map.serialize_entry("data", &b64)?;
        }
        if m.truncated {
            map.serialize_entry("_truncated", &true)?;
            if let Some(len) = m.len {
                map.serialize_entry("_length", &len)?;
            }
        }
        if m.incomplete {
            map.serialize_entry("_incomplete", &true)?;
        }
        if let Some((code, reason)) = &m.close {
            if let Some(code) = code {
                map.serialize_entry("_closeCode", code)?;
            }
            map.serialize_entry("_closeReason", reason)?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::event::{CloseSummary, Listening};
    use serde_json::Value;

    const T0: u64 = 1_700_000_000;

    /// `--har` through a symlink writes where it points and keeps the
    /// link; a path that is not a regular file (a socket here; /dev/null
    /// in the report) is refused, not replaced by the temp-file rename.
    #[cfg(unix)]
    #[test]
    fn a_symlink_is_followed_and_a_node_that_is_not_a_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("real.har");
        std::fs::write(&target, "old").unwrap();
        let link = dir.path().join("link.har");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        HarSink::create(&link, HarOptions::default()).unwrap();
        assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
        let written = std::fs::read_to_string(&target).unwrap();
        assert!(written.contains("\"log\""), "{written}");

        let sock = dir.path().join("socket.har");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let err = HarSink::create(&sock, HarOptions::default())
            .err()
            .expect("a socket is not a file to write a HAR to");
        assert!(err.to_string().contains("not a regular file"), "{err}");
        use std::os::unix::fs::FileTypeExt;
        assert!(std::fs::symlink_metadata(&sock)
            .unwrap()
            .file_type()
            .is_socket());
    }

    fn at(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(T0 * 1000 + ms)
    }

    fn req(target: &str, headers: &[(&str, &str)]) -> RequestView {
        RequestView {
            method: "GET".into(),
            target: target.into(),
            version: "HTTP/1.1".into(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn resp(status: u16, reason: &str, headers: &[(&str, &str)]) -> ResponseView {
        ResponseView {
            status,
            reason: reason.into(),
            version: "HTTP/1.1".into(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            body_preview: None,
        }
    }

    fn handshake(conn: u64, ms: u64, status: u16) -> Event {
        Event::conn(
            at(ms),
            ConnId(conn),
            EventKind::Handshake(Box::new(Handshake {
                client_request: Some(req(
                    "/chat?room=1&x",
                    &[("Host", "example.test:8080"), ("Upgrade", "websocket")],
                )),
                upstream_request: None,
                upstream_response: None,
                client_response: Some(resp(
                    status,
                    if status == 101 {
                        "Switching Protocols"
                    } else {
                        "Forbidden"
                    },
                    &[("Upgrade", "websocket")],
                )),
                duration_ms: Some(12.5),
                upstream_addr: Some("127.0.0.1:4321".into()),
            })),
        )
    }

    /// A frame as the tap reports it with the capture a HAR of `limit` asks.
    fn frame(
        conn: u64,
        ms: u64,
        from: Dir,
        op: Opcode,
        fin: bool,
        body: &[u8],
        limit: usize,
    ) -> Event {
        let cap = capture_for(limit);
        Event::conn(
            at(ms),
            ConnId(conn),
            EventKind::Frame(FrameEvent {
                fin,
                payload: Some(body[..body.len().min(cap)].to_vec()),
                ..FrameEvent::new(from, op, body.len() as u64)
            }),
        )
    }

    fn close(conn: u64, ms: u64) -> Event {
        Event::conn(
            at(ms),
            ConnId(conn),
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

    fn log_of(opts: HarOptions, evs: &[Event]) -> Value {
        let mut log = HarLog::new(opts);
        for e in evs {
            log.event(e);
        }
        log.to_value()
    }

    fn messages(v: &Value, entry: usize) -> Vec<Value> {
        v["log"]["entries"][entry]["_webSocketMessages"]
            .as_array()
            .unwrap_or_else(|| panic!("no messages in {v:#}"))
            .clone()
    }

    use Dir::{ClientToServer as C, ServerToClient as S};

    #[test]
    fn websocket_entry_has_chrome_fields_and_messages_in_order() {
        let l = 1024;
        let v = log_of(
            HarOptions::new(l),
            &[
                handshake(1, 100, 101),
                frame(1, 110, C, Opcode::Text, false, "hé".as_bytes(), l),
                frame(1, 111, C, Opcode::Ping, true, b"p", l),
                frame(1, 112, C, Opcode::Continuation, true, b"llo", l),
                frame(1, 120, S, Opcode::Binary, true, &[0, 1, 2, 255], l),
                frame(1, 130, S, Opcode::Pong, true, b"p", l),
            ],
        );
        let e = &v["log"]["entries"][0];
        assert_eq!(e["_resourceType"], "websocket");
        assert_eq!(e["connection"], "1");
        assert_eq!(e["serverIPAddress"], "127.0.0.1");
        assert_eq!(e["request"]["url"], "ws://example.test:8080/chat?room=1&x");
        assert_eq!(
            e["request"]["queryString"],
            serde_json::json!([{"name": "room", "value": "1"}, {"name": "x", "value": ""}])
        );
        assert_eq!(e["response"]["status"], 101);
        assert_eq!(e["time"], 12.5);
        assert_eq!(e["timings"]["wait"], 12.5);
        // the handshake event comes at its end; the entry starts before
        assert_eq!(e["startedDateTime"], "2023-11-14T22:13:20.087Z");
        let m = messages(&v, 0);
        let shape: Vec<(String, u64, String)> = m
            .iter()
            .map(|m| {
                (
                    m["type"].as_str().unwrap().to_string(),
                    m["opcode"].as_u64().unwrap(),
                    m["data"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(
            shape,
            [
                ("send".into(), 9, "cA==".into()),
                ("send".into(), 1, "héllo".into()),
                ("receive".into(), 2, "AAEC/w==".into()),
                ("receive".into(), 10, "cA==".into()),
            ]
        );
        // the fragmented message is timed by its last fragment
        assert_eq!(m[1]["time"].as_f64().unwrap(), T0 as f64 + 0.112);
        assert!(m.iter().all(|m| m.get("_truncated").is_none()));
    }

    #[test]
    fn long_messages_are_cut_at_the_limit_and_marked() {
        let l = 8;
        let v = log_of(
            HarOptions::new(l),
            &[
                handshake(1, 0, 101),
                // 6 + 6 bytes in two fragments: cut inside the second
                frame(1, 1, C, Opcode::Binary, false, b"abcdef", l),
                frame(1, 2, C, Opcode::Continuation, true, b"ghijkl", l),
                // text cut inside a two-byte character
                frame(1, 3, S, Opcode::Text, true, "1234567é".as_bytes(), l),
                // exactly at the limit: not cut
                frame(1, 4, S, Opcode::Text, true, b"12345678", l),
            ],
        );
        let m = messages(&v, 0);
        assert_eq!(m[0]["data"], "YWJjZGVmZ2g=");
        assert_eq!(m[0]["_truncated"], true);
        assert_eq!(m[0]["_length"], 12);
        assert_eq!(m[1]["data"], "1234567");
        assert_eq!(m[1]["_truncated"], true);
        assert_eq!(m[1]["_length"], 9);
        assert_eq!(m[2]["data"], "12345678");
        assert!(m[2].get("_truncated").is_none());
    }

    #[test]
    fn compressed_messages_are_cut_without_a_known_length() {
        let l = 4;
        let mut ev = frame(1, 1, S, Opcode::Text, true, b"hello world", l);
        if let EventKind::Frame(f) = &mut ev.kind {
            // inflated payload, wire length of the compressed bytes
            f.compressed = true;
            f.len = 7;
        }
        let mut exact = frame(1, 2, S, Opcode::Text, true, b"hell", l);
        if let EventKind::Frame(f) = &mut exact.kind {
            f.compressed = true;
            f.len = 6;
        }
        let v = log_of(HarOptions::new(l), &[handshake(1, 0, 101), ev, exact]);
        let m = messages(&v, 0);
        assert_eq!(
            (m[0]["data"].as_str(), m[0]["_truncated"].as_bool()),
            (Some("hell"), Some(true))
        );
        assert!(m[0].get("_length").is_none());
        assert_eq!(m[1]["data"], "hell");
        assert!(m[1].get("_truncated").is_none());
    }

    #[test]
    fn close_frames_and_unfinished_messages_are_kept() {
        let l = 64;
        let mut cl = frame(1, 5, C, Opcode::Close, true, b"\x03\xe8bye", l);
        if let EventKind::Frame(f) = &mut cl.kind {
            f.close_code = Some(1000);
            f.close_reason = Some("bye".into());
        }
        let evs = [
            handshake(1, 0, 101),
            frame(1, 1, S, Opcode::Text, false, b"part", l),
            cl,
        ];
        let mut log = HarLog::new(HarOptions::new(l));
        for e in &evs {
            log.event(e);
        }
        // still open (wstap exiting): the unfinished message is shown
        let v = log.to_value();
        assert_eq!(v["log"]["entries"][0]["_wstapOpen"], true);
        let m = messages(&v, 0);
        assert_eq!(m.len(), 2);
        assert_eq!(
            (m[0]["opcode"].as_u64(), m[0]["_closeCode"].as_u64()),
            (Some(8), Some(1000))
        );
        assert_eq!(m[0]["_closeReason"], "bye");
        assert_eq!(m[0]["data"], "A+hieWU=");
        assert_eq!(
            (m[1]["data"].as_str(), m[1]["_incomplete"].as_bool()),
            (Some("part"), Some(true))
        );
        // after the close event it is a message of its own, and frames of a
        // later connection with the same id go nowhere
        log.event(&close(1, 6));
        log.event(&frame(1, 7, S, Opcode::Text, true, b"late", l));
        let v = log.to_value();
        assert!(v["log"]["entries"][0].get("_wstapOpen").is_none());
        let m = messages(&v, 0);
        assert_eq!(m.len(), 2);
        assert_eq!(m[1]["_incomplete"], true);
    }

    #[test]
    fn refused_upgrade_is_a_websocket_entry_with_its_status() {
        let mut hs = handshake(2, 10, 403);
        if let EventKind::Handshake(h) = &mut hs.kind {
            if let Some(r) = h.client_response.as_mut() {
                r.headers.push(("Content-Length".into(), "19".into()));
                r.body_preview = Some("origin not allowed\n".into());
            }
        }
        let v = log_of(
            HarOptions::default(),
            &[hs, frame(2, 11, S, Opcode::Text, true, b"x", 10)],
        );
        let e = &v["log"]["entries"][0];
        assert_eq!(e["_resourceType"], "websocket");
        assert_eq!(e["response"]["status"], 403);
        assert_eq!(e["response"]["statusText"], "Forbidden");
        assert_eq!(e["response"]["bodySize"], 19);
        assert_eq!(e["response"]["content"]["text"], "origin not allowed\n");
        assert_eq!(messages(&v, 0).len(), 0);
    }

    #[test]
    fn http_entries_use_host_or_the_listen_address() {
        let http = |conn, target: &str, with_views: bool| {
            Event::conn(
                at(500),
                ConnId(conn),
                EventKind::Http(HttpExchange {
                    method: "GET".into(),
                    target: target.into(),
                    status: 200,
                    duration_ms: 250.0,
                    request_bytes: 0,
                    response_bytes: 5,
                    client_request: with_views.then(|| req(target, &[("Host", "h.test")])),
                    client_response: with_views
                        .then(|| resp(200, "OK", &[("Content-Type", "text/plain")])),
                    upstream_addr: None,
                    rewrites: Vec::new(),
                }),
            )
        };
        let listening = Event::new(
            at(0),
            None,
            EventKind::Listening(Listening {
                addr: "127.0.0.1:9000".into(),
                upstream: None,
            }),
        );
        let v = log_of(
            HarOptions::default(),
            &[
                listening,
                http(1, "/a?b=c", true),
                http(2, "/bare", false),
                http(3, "http://other.test/p", true),
            ],
        );
        let e = v["log"]["entries"].as_array().unwrap();
        assert_eq!(e[0]["request"]["url"], "http://h.test/a?b=c");
        assert_eq!(e[0]["response"]["content"]["mimeType"], "text/plain");
        assert_eq!(e[0]["response"]["bodySize"], 5);
        assert_eq!(e[0]["startedDateTime"], "2023-11-14T22:13:20.250Z");
        assert_eq!(
            e[0]["request"]["headersSize"],
            "GET /a?b=c HTTP/1.1\r\nHost: h.test\r\n\r\n".len()
        );
        assert!(e[0].get("_resourceType").is_none());
        assert_eq!(e[1]["request"]["url"], "http://127.0.0.1:9000/bare");
        assert_eq!(e[1]["request"]["headersSize"], -1);
        assert_eq!(e[1]["response"]["status"], 200);
        assert_eq!(e[2]["request"]["url"], "http://other.test/p");
    }

    #[test]
    fn urls_for_every_target_form() {
        assert_eq!(
            absolute_url("GET", "/x", Some("h:1"), true, true),
            "wss://h:1/x"
        );
        assert_eq!(
            absolute_url("GET", "HTTPS://h/x", None, true, false),
            "wss://h/x"
        );
        assert_eq!(
            absolute_url("GET", "http://h/x", None, false, false),
            "http://h/x"
        );
        assert_eq!(
            absolute_url("CONNECT", "h:443", None, false, false),
            "http://h:443"
        );
        assert_eq!(
            absolute_url("OPTIONS", "*", Some("h"), false, false),
            "http://h/"
        );
        assert_eq!(
            absolute_url("GET", "/", None, false, false),
            "http://localhost/"
        );
    }

    #[test]
    fn memory_is_bounded_and_drops_are_counted() {
        let l = 10;
        let mut opts = HarOptions::new(l);
        opts.max_entries = 3;
        opts.max_messages_per_entry = 4;
        opts.data_budget = 50;
        let mut log = HarLog::new(opts);
        // an open connection first, then finished ones that push it forward
        log.event(&handshake(1, 0, 101));
        for i in 0..6u64 {
            log.event(&frame(1, 1 + i, C, Opcode::Binary, true, &[i as u8; 10], l));
        }
        let v = log.to_value();
        assert_eq!(messages(&v, 0).len(), 4, "per-entry cap");
        assert_eq!(v["log"]["entries"][0]["_wstapDroppedMessages"], 2);
        assert_eq!(
            messages(&v, 0)[0]["data"],
            "AgICAgICAgICAg==",
            "the oldest go first"
        );
        for c in 2..6u64 {
            log.event(&handshake(c, 10 * c, 101));
            log.event(&frame(
                c,
                10 * c + 1,
                S,
                Opcode::Binary,
                true,
                &[c as u8; 10],
                l,
            ));
            log.event(&close(c, 10 * c + 2));
        }
        let v = log.to_value();
        let entries = v["log"]["entries"].as_array().unwrap();
        assert_eq!(entries.len(), 3);
        // the open connection stays; the oldest finished ones went
        let conns: Vec<&str> = entries
            .iter()
            .map(|e| e["connection"].as_str().unwrap())
            .collect();
        assert_eq!(conns, ["1", "4", "5"]);
        assert_eq!(v["log"]["_wstapDropped"]["entries"], 2);
        assert!(log.data_bytes() <= 50, "{}", log.data_bytes());
        // the data budget took the oldest messages across entries
        let held: usize = entries
            .iter()
            .map(|e| e["_webSocketMessages"].as_array().unwrap().len())
            .sum();
        assert_eq!(held * 10, log.data_bytes());
        assert_eq!(messages(&v, 2).len(), 1, "the newest message stays");
        // thousands of messages later, the bookkeeping stays proportional
        for i in 0..5000u64 {
            log.event(&frame(1, 100 + i, C, Opcode::Binary, true, &[1; 10], l));
        }
        assert!(log.order.len() <= 2 * log.messages + 1024);
        assert!(log.data_bytes() <= 50);
    }

    fn scratch_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("wstap-har-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn read(path: &Path) -> Value {
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    }

    #[test]
    fn the_file_is_valid_from_the_start_and_rewrites_are_throttled() {
        let dir = scratch_dir("throttle");
        let path = dir.join("out.har");
        let mut opts = HarOptions::new(64);
        opts.min_interval = Duration::from_millis(200);
        let mut sink = HarSink::create(&path, opts).unwrap();
        assert_eq!(
            read(&path)["log"]["entries"].as_array().map(Vec::len),
            Some(0)
        );
        assert_eq!(sink.flush_due(), None);

        sink.event(&handshake(1, 0, 101)).unwrap();
        sink.flush().unwrap();
        assert_eq!(
            read(&path)["log"]["entries"].as_array().map(Vec::len),
            Some(0),
            "written only when a connection ends"
        );
        sink.event(&close(1, 1)).unwrap();
        // right after the first write: the throttle defers this one
        let due = sink.flush_due().expect("a write is pending");
        sink.flush().unwrap();
        assert!(due > Instant::now());
        assert_eq!(
            read(&path)["log"]["entries"].as_array().map(Vec::len),
            Some(0)
        );
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        sink.flush().unwrap();
        assert_eq!(
            read(&path)["log"]["entries"].as_array().map(Vec::len),
            Some(1)
        );
        assert_eq!(sink.flush_due(), None);

        sink.event(&handshake(2, 5, 101)).unwrap();
        sink.finish(3).unwrap();
        let v = read(&path);
        assert_eq!(
            v["log"]["entries"].as_array().map(Vec::len),
            Some(2),
            "finish writes open connections too"
        );
        assert_eq!(v["log"]["_wstapDropped"]["events"], 3);
        let left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            left,
            [std::ffi::OsString::from("out.har")],
            "no temp file left"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_unwritable_path_fails_at_creation() {
        let dir = scratch_dir("missing");
        let path = dir.join("no-such-dir").join("out.har");
        assert!(HarSink::create(&path, HarOptions::default()).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
