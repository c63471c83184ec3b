//! The benchmark's load client: lean WebSocket client connections built on
//! the project's own frame encoder and decoder (no message API, no
//! allocation per message), so the client is not what limits a benchmark.
//! Every echoed byte is checked against what was sent: a fast wrong answer
//! fails the run.
//!
//! A message's payload is its sequence number (16 hex digits) followed by
//! a stretch of a fixed pattern that starts at a per-connection offset.
//! The pattern's period (65 521 bytes, a prime) divides no frame or
//! message size, so a dropped, repeated, reordered or corrupted chunk
//! shows. Payloads are ASCII, so text messages are valid UTF-8.
//!
//! Small messages are encoded once into a masked template and only their
//! sequence number is patched per message; large ones (the 1 GiB case) are
//! generated and verified in chunks, so the client never holds a whole
//! message. It does not judge wall-clock time: the caller says when to
//! stop sending and which completions count.

use std::collections::VecDeque;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::WriteHalf;
use tokio::net::TcpStream;
use tokio::sync::{Notify, Semaphore};

use crate::proto::decoder::{FrameDecoder, Piece};
use crate::proto::frame::{apply_mask, push_header, Opcode, Parsed};
use crate::proto::handshake::accept_key;
use crate::proto::http::{parse_response_head, Headers};

/// Bytes of a payload taken by the sequence number.
pub const SEQ_LEN: usize = 16;
/// The pattern's period: a prime, so it divides no frame size.
const PERIOD: usize = 65_521;
/// Messages up to this size are encoded once and patched per message.
const TEMPLATE_MAX: usize = 4 * 1024 * 1024;
/// Small messages are batched into one write up to this many bytes.
const BATCH: usize = 64 * 1024;
/// Bytes read per syscall.
const READ_BUF: usize = 256 * 1024;
/// `finished` before the writer has stopped.
const NOT_FINISHED: u64 = u64::MAX;
/// Largest response head accepted in the handshake.
const MAX_HEAD: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("the handshake failed: {0}")]
    Handshake(String),
    #[error("echo of message {seq} differs: {detail}")]
    Mismatch { seq: u64, detail: String },
    #[error("the connection ended with {0} messages unanswered")]
    Ended(u64),
    #[error("no progress for {0:?} while {1}")]
    Stalled(Duration, &'static str),
    #[error("invalid workload: {0}")]
    Workload(&'static str),
}

/// When a connection stops sending new messages.
#[derive(Debug, Clone, Copy)]
pub enum Limit {
    /// After this many messages.
    Messages(u64),
    /// At this instant (messages in flight are still awaited and verified).
    Until(Instant),
}

/// What one connection sends, and how.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Payload bytes per message (at least [`SEQ_LEN`]).
    pub size: usize,
    /// Split each message into frames of at most this many payload bytes
    /// (at least [`SEQ_LEN`]); `None` sends each message as one frame.
    pub frame_size: Option<usize>,
    /// [`Opcode::Text`] or [`Opcode::Binary`].
    pub opcode: Opcode,
    /// Messages in flight at most: 1 is a round trip at a time.
    pub window: usize,
    pub limit: Limit,
    /// Completions inside this span are counted as `measured` (and their
    /// latency kept when `latencies`); `None` counts every completion.
    pub measure: Option<(Instant, Instant)>,
    pub latencies: bool,
    /// A wait for bytes longer than this fails the run.
    pub stall: Duration,
}

impl Workload {
    /// `n` binary messages of `size` bytes, one in flight.
    pub fn count(size: usize, n: u64) -> Self {
        Workload {
            size,
            frame_size: None,
            opcode: Opcode::Binary,
            window: 1,
            limit: Limit::Messages(n),
            measure: None,
            latencies: false,
            stall: Duration::from_secs(10),
        }
    }

    fn check(&self) -> Result<(), LoadError> {
        if self.size < SEQ_LEN {
            return Err(LoadError::Workload("messages must be at least 16 bytes"));
        }
        if self.frame_size.is_some_and(|f| f < SEQ_LEN) {
            return Err(LoadError::Workload("frames must be at least 16 bytes"));
        }
        if !matches!(self.opcode, Opcode::Text | Opcode::Binary) {
            return Err(LoadError::Workload("messages are text or binary"));
        }
        if self.window == 0 {
            return Err(LoadError::Workload("the window must be at least 1"));
        }
        Ok(())
    }

    /// Frames per message.
    pub fn frames_per_message(&self) -> u64 {
        match self.frame_size {
            Some(f) if f < self.size => self.size.div_ceil(f) as u64,
            _ => 1,
        }
    }
}

/// What a connection did; [`Report::merge`] sums connections.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Messages sent.
    pub sent: u64,
    /// Messages echoed and verified byte for byte (all of them, or the
    /// run fails).
    pub verified: u64,
    pub frames_sent: u64,
    pub frames_received: u64,
    /// Payload bytes verified.
    pub bytes_verified: u64,
    /// Verified messages that completed inside the measuring span.
    pub measured: u64,
    /// Round-trip times of measured messages, in nanoseconds (when asked).
    pub latencies_ns: Vec<u64>,
}

impl Report {
    pub fn merge(&mut self, other: Report) {
        self.sent += other.sent;
        self.verified += other.verified;
        self.frames_sent += other.frames_sent;
        self.frames_received += other.frames_received;
        self.bytes_verified += other.bytes_verified;
        self.measured += other.measured;
        self.latencies_ns.extend(other.latencies_ns);
    }
}

/// The shared pattern: printable ASCII from a xorshift generator.
fn pattern() -> &'static [u8] {
    static P: OnceLock<Vec<u8>> = OnceLock::new();
    P.get_or_init(|| {
        let mut x: u32 = 0x9e37_79b9;
        (0..PERIOD)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                b'!' + (x % 94) as u8
            })
            .collect()
    })
}

/// Set by [`fix_keys`].
static FIXED_KEYS: OnceLock<u64> = OnceLock::new();

/// Makes the keys of the connections opened from now on (mask, where the
/// payload pattern starts, `Sec-WebSocket-Key`) a function of `seed`
/// instead of random: the n-th connection of a process always gets the
/// same ones, so two runs send the same bytes and an instruction count
/// (`benches/callgrind.sh`) compares builds, not payloads. Connections
/// opened at once may take the keys in another order, but as a set they
/// are the same. The first call wins.
pub fn fix_keys(seed: u64) {
    let _ = FIXED_KEYS.set(seed);
}

/// Two random u64s for the next connection.
fn connection_keys() -> (u64, u64) {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    keys_from(FIXED_KEYS.get().copied(), n)
}

/// Connection `n`'s keys: from the seed when there is one, else random
/// without a dependency (std's per-process hash keys).
fn keys_from(seed: Option<u64>, n: u64) -> (u64, u64) {
    let one = |i: u64| match seed {
        Some(s) => splitmix64(s ^ splitmix64(i)),
        None => {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(i);
            h.finish()
        }
    };
    (one(2 * n), one(2 * n + 1))
}

/// SplitMix64's mixing step: consecutive inputs give unrelated outputs.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn seq_hex(seq: u64) -> [u8; SEQ_LEN] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; SEQ_LEN];
    for (i, b) in out.iter_mut().enumerate() {
        *b = HEX[((seq >> (60 - 4 * i)) & 0xf) as usize];
    }
    out
}

/// The content of message `seq` of a connection whose pattern starts at
/// `start`: fills `out` with the payload bytes from `offset` on.
fn fill_payload(start: usize, seq: u64, offset: u64, out: &mut [u8]) {
    let pat = pattern();
    let mut o = offset;
    let mut rest = out;
    if o < SEQ_LEN as u64 {
        let hex = seq_hex(seq);
        let n = (SEQ_LEN - o as usize).min(rest.len());
        rest[..n].copy_from_slice(&hex[o as usize..o as usize + n]);
        o += n as u64;
        rest = &mut rest[n..];
    }
    while !rest.is_empty() {
        let p = ((start as u64 + o) % PERIOD as u64) as usize;
        let n = (PERIOD - p).min(rest.len());
        rest[..n].copy_from_slice(&pat[p..p + n]);
        o += n as u64;
        rest = &mut rest[n..];
    }
}

/// Where `data` (payload bytes from `offset` of message `seq`) first
/// differs from what was sent, if anywhere.
fn first_difference(start: usize, seq: u64, offset: u64, data: &[u8]) -> Option<u64> {
    let pat = pattern();
    let mut o = offset;
    let mut rest = data;
    if o < SEQ_LEN as u64 {
        let hex = seq_hex(seq);
        let n = (SEQ_LEN - o as usize).min(rest.len());
        if let Some(i) = rest[..n]
            .iter()
            .zip(&hex[o as usize..o as usize + n])
            .position(|(a, b)| a != b)
        {
            return Some(o + i as u64);
        }
        o += n as u64;
        rest = &rest[n..];
    }
    while !rest.is_empty() {
        let p = ((start as u64 + o) % PERIOD as u64) as usize;
        let n = (PERIOD - p).min(rest.len());
        if rest[..n] != pat[p..p + n] {
            let i = rest[..n]
                .iter()
                .zip(&pat[p..p + n])
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            return Some(o + i as u64);
        }
        o += n as u64;
        rest = &rest[n..];
    }
    None
}

/// One client connection after a successful handshake.
#[derive(Debug)]
pub struct LoadConn {
    stream: TcpStream,
    /// Bytes read past the 101's head.
    leftover: Vec<u8>,
    keys: Keys,
    /// Messages sent so far (sequence numbers continue across runs).
    next_seq: u64,
}

/// What makes a connection's bytes its own.
#[derive(Debug, Clone, Copy)]
struct Keys {
    mask: [u8; 4],
    /// Where this connection's messages start in the pattern.
    start: usize,
}

/// Connects to `addr` and upgrades `path`, within `timeout`. The request
/// is what a browser sends, minus the optional headers.
pub async fn connect(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<LoadConn, LoadError> {
    match tokio::time::timeout(timeout, handshake(addr, path)).await {
        Ok(r) => r,
        Err(_) => Err(LoadError::Stalled(timeout, "connecting and upgrading")),
    }
}

async fn handshake(addr: SocketAddr, path: &str) -> Result<LoadConn, LoadError> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (r, r2) = connection_keys();
    let key = base64::engine::general_purpose::STANDARD
        .encode([r.to_le_bytes(), r2.to_le_bytes()].concat());
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(req.as_bytes()).await?;
    let mut buf = Vec::with_capacity(1024);
    let (head, used) = loop {
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(LoadError::Handshake(format!(
                "the server closed the connection after {} bytes of response",
                buf.len()
            )));
        }
        buf.extend_from_slice(&chunk[..n]);
        match parse_response_head(&buf) {
            Ok(Parsed::Done(head, used)) => break (head, used),
            Ok(Parsed::Incomplete) if buf.len() < MAX_HEAD => {}
            Ok(Parsed::Incomplete) => {
                return Err(LoadError::Handshake("response head too large".into()))
            }
            Err(e) => return Err(LoadError::Handshake(e.to_string())),
        }
    };
    if head.status != 101 {
        return Err(LoadError::Handshake(format!(
            "status {} {}",
            head.status, head.reason
        )));
    }
    let want = accept_key(&key);
    match head.header("Sec-WebSocket-Accept") {
        Some(got) if got.trim() == want => {}
        other => {
            return Err(LoadError::Handshake(format!(
                "Sec-WebSocket-Accept {other:?}, expected {want:?}"
            )))
        }
    }
    let mask = (r as u32 | 0x0101_0101).to_le_bytes();
    Ok(LoadConn {
        stream,
        leftover: buf[used..].to_vec(),
        keys: Keys {
            mask,
            start: (r >> 32) as usize % PERIOD,
        },
        next_seq: 0,
    })
}

/// A message encoded once, its sequence number patched per message.
struct Template {
    wire: Vec<u8>,
    /// Offset of the first frame's payload (mask offset 0) in `wire`.
    seq_at: usize,
}

impl Keys {
    fn template(self, w: &Workload) -> Template {
        let mut payload = vec![0u8; w.size];
        fill_payload(self.start, 0, 0, &mut payload);
        let mut wire = Vec::with_capacity(w.size + 14 * w.frames_per_message() as usize);
        let mut seq_at = 0;
        frames(w, |fin, opcode, off, len| {
            push_header(&mut wire, fin, false, opcode, Some(self.mask), len as u64);
            if off == 0 {
                seq_at = wire.len();
            }
            let s = wire.len();
            wire.extend_from_slice(&payload[off..off + len]);
            apply_mask(&mut wire[s..], self.mask, 0);
        });
        Template { wire, seq_at }
    }

    /// Writes message `seq` when it is too large for a template: frame by
    /// frame, payload generated and masked in chunks.
    async fn write_large(
        self,
        wr: &mut WriteHalf<'_>,
        w: &Workload,
        seq: u64,
        chunk: &mut Vec<u8>,
    ) -> Result<(), LoadError> {
        let mut plan = Vec::new();
        frames(w, |fin, op, off, len| plan.push((fin, op, off, len)));
        for (fin, op, off, len) in plan {
            let mut head = Vec::with_capacity(14);
            push_header(&mut head, fin, false, op, Some(self.mask), len as u64);
            write_within(wr, &head, w.stall).await?;
            let mut done = 0usize;
            while done < len {
                let n = (len - done).min(1 << 20);
                chunk.resize(n, 0);
                fill_payload(self.start, seq, (off + done) as u64, chunk);
                apply_mask(chunk, self.mask, done as u64);
                write_within(wr, chunk, w.stall).await?;
                done += n;
            }
        }
        Ok(())
    }
}

/// Calls `f(fin, opcode, offset, len)` for each frame of a message.
fn frames(w: &Workload, mut f: impl FnMut(bool, Opcode, usize, usize)) {
    let step = w.frame_size.unwrap_or(w.size).min(w.size).max(1);
    let mut off = 0;
    loop {
        let len = step.min(w.size - off);
        let fin = off + len == w.size;
        let op = if off == 0 {
            w.opcode
        } else {
            Opcode::Continuation
        };
        f(fin, op, off, len);
        off += len;
        if fin {
            break;
        }
    }
}

impl LoadConn {
    /// Sends messages as `w` says and verifies every echo. Fails on the
    /// first difference, a stall, or a connection that ends early.
    pub async fn run(&mut self, w: &Workload) -> Result<Report, LoadError> {
        w.check()?;
        let keys = self.keys;
        let template = (w.size <= TEMPLATE_MAX).then(|| keys.template(w));
        let permits = Semaphore::new(w.window);
        // Shared by the writer and the reader, which run concurrently in
        // this task (never in parallel): the locks are never contended.
        let sent_at: Mutex<VecDeque<Instant>> = Mutex::new(VecDeque::new());
        let finished = AtomicU64::new(NOT_FINISHED);
        let done = Notify::new();
        let first_seq = self.next_seq;
        let leftover = std::mem::take(&mut self.leftover);
        let (mut rd, mut wr) = self.stream.split();
        let fpm = w.frames_per_message();

        let writer = async {
            let mut out: Vec<u8> = Vec::with_capacity(BATCH * 2);
            let mut chunk = Vec::new();
            let mut seq = first_seq;
            let limit_hit = |seq: u64| match w.limit {
                Limit::Messages(n) => seq - first_seq >= n,
                Limit::Until(t) => Instant::now() >= t,
            };
            'send: loop {
                match permits.acquire().await {
                    Ok(p) => p.forget(),
                    Err(_) => break,
                }
                let mut have_permit = true;
                while have_permit {
                    if limit_hit(seq) {
                        // the permit goes unused: nothing more to send
                        if !out.is_empty() {
                            write_within(&mut wr, &out, w.stall).await?;
                        }
                        break 'send;
                    }
                    if w.latencies {
                        if let Ok(mut q) = sent_at.lock() {
                            q.push_back(Instant::now());
                        }
                    }
                    match &template {
                        Some(t) if t.wire.len() <= BATCH => {
                            let base = out.len();
                            out.extend_from_slice(&t.wire);
                            patch_seq(&mut out[base + t.seq_at..], seq, keys.mask);
                        }
                        Some(t) => {
                            if !out.is_empty() {
                                write_within(&mut wr, &out, w.stall).await?;
                                out.clear();
                            }
                            out.extend_from_slice(&t.wire[..t.seq_at + SEQ_LEN]);
                            patch_seq(&mut out[t.seq_at..], seq, keys.mask);
                            write_within(&mut wr, &out, w.stall).await?;
                            out.clear();
                            write_within(&mut wr, &t.wire[t.seq_at + SEQ_LEN..], w.stall).await?;
                        }
                        None => {
                            if !out.is_empty() {
                                write_within(&mut wr, &out, w.stall).await?;
                                out.clear();
                            }
                            keys.write_large(&mut wr, w, seq, &mut chunk).await?;
                        }
                    }
                    seq += 1;
                    have_permit = out.len() < BATCH
                        && match permits.try_acquire() {
                            Ok(p) => {
                                p.forget();
                                true
                            }
                            Err(_) => false,
                        };
                }
                if !out.is_empty() {
                    write_within(&mut wr, &out, w.stall).await?;
                    out.clear();
                }
            }
            finished.store(seq, Ordering::Release);
            done.notify_one();
            Ok::<u64, LoadError>(seq)
        };

        let reader = async {
            let mut rep = Report::default();
            let mut st = ReadState {
                decoder: FrameDecoder::new(),
                seq: first_seq,
                in_message: false,
                fin: false,
                control: false,
                msg_offset: 0,
            };
            let mut buf = vec![0u8; READ_BUF];
            let mut pending: &[u8] = &leftover;
            loop {
                let completed = st.process(pending, keys.start, w, &mut rep)?;
                for _ in 0..completed {
                    let now = Instant::now();
                    let sent = if w.latencies {
                        sent_at.lock().ok().and_then(|mut q| q.pop_front())
                    } else {
                        None
                    };
                    let inside = w.measure.is_none_or(|(a, b)| now >= a && now < b);
                    if inside {
                        rep.measured += 1;
                        if let Some(t) = sent {
                            rep.latencies_ns
                                .push(now.duration_since(t).as_nanos() as u64);
                        }
                    }
                }
                if completed > 0 {
                    permits.add_permits(completed as usize);
                }
                if finished.load(Ordering::Acquire) == st.seq {
                    break;
                }
                let n = tokio::select! {
                    r = tokio::time::timeout(w.stall, rd.read(&mut buf)) => match r {
                        Ok(r) => r?,
                        Err(_) => return Err(LoadError::Stalled(w.stall, "waiting for echoes")),
                    },
                    _ = done.notified() => {
                        pending = &[];
                        continue;
                    }
                };
                if n == 0 {
                    let sent = finished.load(Ordering::Acquire);
                    return Err(LoadError::Ended(sent.saturating_sub(st.seq)));
                }
                pending = &buf[..n];
            }
            if !st.decoder.at_boundary() || st.in_message {
                return Err(LoadError::Mismatch {
                    seq: st.seq,
                    detail: "bytes beyond the last expected echo".into(),
                });
            }
            Ok::<Report, LoadError>(rep)
        };

        let (sent_to, mut rep) = tokio::try_join!(writer, reader)?;
        rep.sent = sent_to - first_seq;
        rep.frames_sent = rep.sent * fpm;
        self.next_seq = sent_to;
        Ok(rep)
    }

    /// Sends a close frame (1000) and waits, within `timeout`, for the
    /// echoed close and the end of the stream.
    pub async fn close(mut self, timeout: Duration) -> Result<(), LoadError> {
        let mut frame = Vec::new();
        let payload = [0x03, 0xe8, b'b', b'y', b'e'];
        push_header(
            &mut frame,
            true,
            false,
            Opcode::Close,
            Some(self.keys.mask),
            payload.len() as u64,
        );
        let s = frame.len();
        frame.extend_from_slice(&payload);
        apply_mask(&mut frame[s..], self.keys.mask, 0);
        let leftover = std::mem::take(&mut self.leftover);
        let work = async {
            self.stream.write_all(&frame).await?;
            let mut decoder = FrameDecoder::new();
            let mut got_close = false;
            let mut code = Vec::new();
            let mut current = None;
            let mut buf = vec![0u8; 4096];
            let mut pending: &[u8] = &leftover;
            loop {
                let mut input = pending;
                while let Some(p) = decoder.next(&mut input) {
                    match p {
                        Piece::Header(h) if h.opcode == Opcode::Close => current = Some(h),
                        Piece::Header(h) => {
                            return Err(LoadError::Mismatch {
                                seq: self.next_seq,
                                detail: format!("a {} frame while closing", h.opcode),
                            })
                        }
                        Piece::Payload { data, .. } => code.extend_from_slice(data),
                        Piece::End => got_close = current.take().is_some(),
                    }
                }
                let n = self.stream.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                pending = &buf[..n];
            }
            if !got_close {
                return Err(LoadError::Handshake(
                    "the connection ended without a close reply".into(),
                ));
            }
            if code.len() >= 2 && code[..2] != [0x03, 0xe8] {
                return Err(LoadError::Handshake(format!(
                    "close reply with code {}",
                    u16::from_be_bytes([code[0], code[1]])
                )));
            }
            Ok(())
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(LoadError::Stalled(timeout, "closing")),
        }
    }
}

/// Writes the sequence number over the first [`SEQ_LEN`] payload bytes
/// (mask offset 0) of a masked frame whose payload starts at `at[0]`.
fn patch_seq(at: &mut [u8], seq: u64, mask: [u8; 4]) {
    let hex = seq_hex(seq);
    for (i, (dst, src)) in at.iter_mut().zip(hex).enumerate() {
        *dst = src ^ mask[i % 4];
    }
}

async fn write_within(
    wr: &mut WriteHalf<'_>,
    data: &[u8],
    stall: Duration,
) -> Result<(), LoadError> {
    match tokio::time::timeout(stall, wr.write_all(data)).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(LoadError::Stalled(stall, "sending")),
    }
}

/// The reader's position in the echo stream.
struct ReadState {
    decoder: FrameDecoder,
    /// The message expected next.
    seq: u64,
    in_message: bool,
    /// The current frame ends its message.
    fin: bool,
    control: bool,
    /// Payload bytes of the current message verified so far.
    msg_offset: u64,
}

impl ReadState {
    /// Verifies the echoes in `input`; returns how many messages completed.
    fn process(
        &mut self,
        mut input: &[u8],
        start: usize,
        w: &Workload,
        rep: &mut Report,
    ) -> Result<u64, LoadError> {
        let mut completed = 0;
        let mismatch = |seq: u64, detail: String| LoadError::Mismatch { seq, detail };
        while let Some(piece) = self.decoder.next(&mut input) {
            match piece {
                Piece::Header(h) => {
                    rep.frames_received += 1;
                    if h.mask.is_some() || h.rsv1 || h.rsv2 || h.rsv3 {
                        return Err(mismatch(self.seq, format!("unexpected frame header {h:?}")));
                    }
                    let want = if self.in_message {
                        Opcode::Continuation
                    } else {
                        w.opcode
                    };
                    if h.opcode != want {
                        return Err(mismatch(
                            self.seq,
                            format!("a {} frame where {} was due", h.opcode, want),
                        ));
                    }
                    if self.msg_offset + h.len > w.size as u64 {
                        return Err(mismatch(
                            self.seq,
                            format!(
                                "a frame of {} bytes at offset {} of a {}-byte message",
                                h.len, self.msg_offset, w.size
                            ),
                        ));
                    }
                    self.in_message = true;
                    self.fin = h.fin;
                    self.control = h.opcode.is_control();
                }
                Piece::Payload { data, .. } => {
                    if let Some(at) = first_difference(start, self.seq, self.msg_offset, data) {
                        return Err(mismatch(self.seq, format!("payload byte {at} differs")));
                    }
                    self.msg_offset += data.len() as u64;
                }
                Piece::End => {
                    if self.fin {
                        if self.msg_offset != w.size as u64 {
                            return Err(mismatch(
                                self.seq,
                                format!("{} of {} bytes came back", self.msg_offset, w.size),
                            ));
                        }
                        rep.verified += 1;
                        rep.bytes_verified += self.msg_offset;
                        completed += 1;
                        self.seq += 1;
                        self.msg_offset = 0;
                        self.in_message = false;
                    }
                }
            }
        }
        Ok(completed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_keys_repeat_and_differ_per_connection_random_ones_do_not_repeat() {
        let fixed: Vec<(u64, u64)> = (0..1000).map(|n| keys_from(Some(7), n)).collect();
        let again: Vec<(u64, u64)> = (0..1000).map(|n| keys_from(Some(7), n)).collect();
        assert_eq!(fixed, again);
        let mut all: Vec<u64> = fixed.iter().flat_map(|&(a, b)| [a, b]).collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 2000, "every key distinct");
        assert_ne!(keys_from(Some(8), 0), keys_from(Some(7), 0));
        assert_ne!(keys_from(None, 0), keys_from(None, 0));
    }

    #[test]
    fn payload_fill_and_check_agree_at_any_offset() {
        let mut whole = vec![0u8; 200_000];
        fill_payload(77, 0xabc, 0, &mut whole);
        assert_eq!(&whole[..SEQ_LEN], b"0000000000000abc");
        assert!(whole.is_ascii());
        for (off, len) in [(0usize, 5usize), (3, 40), (16, 65_521), (70_000, 100_000)] {
            let mut part = vec![0u8; len];
            fill_payload(77, 0xabc, off as u64, &mut part);
            assert_eq!(part, whole[off..off + len]);
            assert_eq!(first_difference(77, 0xabc, off as u64, &part), None);
        }
        // a changed byte, another sequence number, a shifted chunk all show
        let mut bad = whole.clone();
        bad[123_456] ^= 1;
        assert_eq!(first_difference(77, 0xabc, 0, &bad), Some(123_456));
        assert_eq!(first_difference(77, 0xabd, 0, &whole), Some(15));
        assert!(first_difference(77, 0xabc, 1 << 20, &whole[SEQ_LEN..]).is_some());
    }

    #[test]
    fn patched_template_is_the_masked_message() {
        let mask = [1, 2, 3, 4];
        let mut wire = vec![0u8; SEQ_LEN];
        patch_seq(&mut wire, 42, mask);
        apply_mask(&mut wire, mask, 0);
        assert_eq!(&wire, b"000000000000002a");
    }
}
