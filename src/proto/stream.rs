//! One direction of a WebSocket connection, observed: feed it the bytes the
//! relay forwarded and it emits a `frame` event per frame, with previews,
//! close details and protocol-violation findings. It never changes or holds
//! the bytes: a frame header, a preview and counters are all it keeps.

use std::time::SystemTime;

use super::close_code;
use super::decoder::{FrameDecoder, Piece};
use super::deflate::Inflater;
use super::event::{ConnId, Dir, Encoding, Event, EventKind, FrameEvent};
use super::frame::{apply_mask, FrameHeader, Opcode};
use super::handshake::Negotiated;
use super::preview;
use super::utf8::Utf8Validator;
use super::violation::Violation;

/// Unmasking works through a buffer of this size, not the whole payload.
const SCRATCH: usize = 16 * 1024;
/// Inflated bytes per message beyond which inflation is abandoned: the
/// cost is CPU, not memory, but a deflate bomb should not pin a core.
const MAX_INFLATED_PER_MESSAGE: u64 = 256 * 1024 * 1024;

/// What a direction needs to know from the handshake and the command line.
#[derive(Debug, Clone, Default)]
pub struct TapConfig {
    pub max_preview: usize,
    /// Payload bytes per frame to attach to events for sinks that keep
    /// messages (HAR); 0 attaches none.
    pub capture: usize,
    pub negotiated: Negotiated,
    /// No output lists frames (`--quiet` and no file or live view): frames
    /// are decoded, checked and counted, but no frame events are made and
    /// no payload is kept for them.
    pub frames_unwanted: bool,
}

impl TapConfig {
    /// Bytes of each payload kept while a frame is read.
    fn keep(&self) -> usize {
        if self.frames_unwanted {
            0
        } else {
            self.max_preview.max(self.capture)
        }
    }
}

/// Counters for the close summary.
#[derive(Debug, Clone, Default)]
pub struct StreamStats {
    pub frames: u64,
    pub messages: u64,
    /// Bytes on the wire, headers included.
    pub bytes: u64,
    pub violations: u64,
    pub first_frame_at: Option<SystemTime>,
    pub last_frame_at: Option<SystemTime>,
}

/// The first close frame this direction's sender sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseSeen {
    pub code: Option<u16>,
    pub reason: String,
    pub at: SystemTime,
}

#[derive(Debug, Clone, Copy)]
struct Message {
    text: bool,
    compressed: bool,
    /// Inflation was abandoned for this message (see `note`).
    inflate_skipped: bool,
    inflated: u64,
}

#[derive(Debug, Clone)]
struct Current {
    header: FrameHeader,
    /// The frame belongs to a text message (previews and UTF-8 checks).
    text: bool,
    compressed: bool,
    /// Inflated bytes this frame produced (compressed frames).
    inflated: u64,
    note: Option<String>,
}

/// Where [`StreamTap::feed_until`] stops early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    Never,
    /// After the first frame that ends.
    FrameEnd,
    /// After the first frame that ends outside a fragmented message.
    MessageEnd,
}

/// Takes a tap's frame events as it makes them, in place of an [`Event`]
/// each: the NDJSON log encodes them where they were read (see
/// [`StreamTap::feed_until_lines`]).
pub trait FrameLines {
    fn frame(&mut self, ts: SystemTime, conn: ConnId, frame: &FrameEvent);
}

/// How far one [`StreamTap::feed_until`] may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedOpts {
    pub stop: Stop,
    /// Stop after a frame once this feed made this many events (lines
    /// included): a read full of tiny frames is handed on in bounded
    /// batches.
    pub max_events: usize,
    /// Stop right after the piece that broke the protocol (`--strict`), so
    /// nothing past it is logged as if forwarded.
    pub stop_at_violation: bool,
}

impl Default for FeedOpts {
    fn default() -> Self {
        FeedOpts {
            stop: Stop::Never,
            max_events: usize::MAX,
            stop_at_violation: false,
        }
    }
}

/// What one feed did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fed {
    /// Bytes of the input taken (all of it unless a stop point was reached).
    pub consumed: usize,
    /// Where the first frame that broke the protocol starts, if one did.
    pub violation_at: Option<usize>,
    /// That frame began in an earlier chunk: part of it was forwarded
    /// already, so nothing can be inserted cleanly before it.
    pub violation_mid_frame: bool,
}

/// Observes one direction; see the module docs.
#[derive(Debug)]
pub struct StreamTap {
    conn: ConnId,
    dir: Dir,
    cfg: TapConfig,
    decoder: FrameDecoder,
    current: Option<Current>,
    message: Option<Message>,
    preview: Vec<u8>,
    control: Vec<u8>,
    utf8: Utf8Validator,
    /// The rest of the current message's UTF-8 is not checked: it was
    /// found invalid already (and reported), or it is not judged at all
    /// (see `unknown_extension`).
    skip_utf8: bool,
    /// An extension other than permessage-deflate was agreed. Its meaning
    /// is unknown to the tap: it may define the RSV bits and may transform
    /// payloads (x-webkit-deflate-frame compresses them, with or without
    /// RSV1), so neither RSV bits nor text payloads can be judged.
    unknown_extension: bool,
    inflater: Option<Inflater>,
    /// Set once inflation cannot continue for this direction.
    inflate_dead: Option<String>,
    scratch: Vec<u8>,
    close: Option<CloseSeen>,
    stats: StreamStats,
    reported: u32,
    /// Frame start offset (within the chunk being fed) of the current frame.
    current_start: usize,
    /// The current frame's first byte is in the chunk being fed.
    current_started_here: bool,
    violation_at: Option<usize>,
    violation_mid_frame: bool,
}

impl StreamTap {
    pub fn new(conn: ConnId, dir: Dir, cfg: TapConfig) -> Self {
        let unknown_extension = cfg.negotiated.has_unknown_extension();
        let inflater = cfg.negotiated.deflate.map(|d| {
            Inflater::new(match dir {
                Dir::ClientToServer => d.client_no_context_takeover,
                Dir::ServerToClient => d.server_no_context_takeover,
            })
        });
        StreamTap {
            conn,
            dir,
            cfg,
            decoder: FrameDecoder::new(),
            current: None,
            message: None,
            preview: Vec::new(),
            control: Vec::new(),
            utf8: Utf8Validator::new(),
            skip_utf8: false,
            unknown_extension,
            inflater,
            inflate_dead: None,
            scratch: Vec::new(),
            close: None,
            stats: StreamStats::default(),
            reported: 0,
            current_start: 0,
            current_started_here: true,
            violation_at: None,
            violation_mid_frame: false,
        }
    }

    pub fn dir(&self) -> Dir {
        self.dir
    }

    /// Whether this direction's payloads are inflated for previews
    /// (permessage-deflate): a feed may then take long (up to
    /// `MAX_INFLATED_PER_MESSAGE` of output).
    pub fn inflates(&self) -> bool {
        self.inflater.is_some()
    }

    pub fn stats(&self) -> &StreamStats {
        &self.stats
    }

    pub fn close_seen(&self) -> Option<&CloseSeen> {
        self.close.as_ref()
    }

    /// Between frames: a frame may be inserted here.
    pub fn at_frame_boundary(&self) -> bool {
        self.decoder.at_boundary()
    }

    /// Between frames and outside a fragmented message: a data frame may be
    /// inserted here without breaking §5.4.
    pub fn at_message_boundary(&self) -> bool {
        self.decoder.at_boundary() && self.message.is_none()
    }

    /// The frame the stream stopped inside, if any: (header, payload bytes
    /// received), or the bytes of an unfinished header.
    pub fn unfinished(&self) -> Option<String> {
        if let Some((h, got)) = self.decoder.current() {
            return Some(format!(
                "{} frame cut after {got} of {} payload bytes",
                h.opcode, h.len
            ));
        }
        let p = self.decoder.partial_header_len();
        (p > 0).then(|| format!("frame header cut after {p} bytes"))
    }

    /// Payload bytes of the current frame that the tap would not look at:
    /// a data frame that is neither text to validate nor compressed to
    /// inflate, whose preview (and capture) is complete. The relay may
    /// pass them on unseen and [`skip`](Self::skip) them.
    pub fn opaque_ahead(&self) -> u64 {
        let (Some(cur), Some((_, got))) = (&self.current, self.decoder.current()) else {
            return 0;
        };
        let h = cur.header;
        let inflate = cur.compressed && self.inflate_dead.is_none();
        let validate = cur.text && !cur.compressed && !self.skip_utf8;
        let seen_enough = cur.compressed || self.preview.len() >= self.cfg.keep();
        if h.opcode.is_control() || inflate || validate || !seen_enough {
            return 0;
        }
        h.len - got
    }

    /// Counts `n` bytes (at most [`opaque_ahead`](Self::opaque_ahead))
    /// that crossed without being shown to the tap; events of the frame's
    /// end go to `out`. Returns how many were taken.
    pub fn skip(&mut self, n: u64, now: SystemTime, out: &mut Vec<Event>) -> u64 {
        let n = self.decoder.skip_payload(n.min(self.opaque_ahead()));
        self.stats.bytes += n;
        // a frame that ended here is finished like any other
        self.feed_until(&[], now, out, FeedOpts::default());
        n
    }

    /// Feeds bytes that crossed the proxy in this direction; events go to
    /// `out`. Returns the offset in `data` where the first frame that broke
    /// the protocol starts (0 when it began in an earlier chunk), so a
    /// strict relay can stop before forwarding it.
    pub fn feed(&mut self, data: &[u8], now: SystemTime, out: &mut Vec<Event>) -> Option<usize> {
        self.feed_until(data, now, out, FeedOpts::default())
            .violation_at
    }

    /// Like [`feed`](Self::feed), but stops early where `opts` says: right
    /// after the first frame (or message) that ends inside `data`, so the
    /// caller can insert a frame there; after a batch of events; at a
    /// violation. Bytes after `consumed` were not looked at.
    pub fn feed_until(
        &mut self,
        data: &[u8],
        now: SystemTime,
        out: &mut Vec<Event>,
        opts: FeedOpts,
    ) -> Fed {
        self.feed_until_lines(data, now, out, opts, None)
    }

    /// [`feed_until`](Self::feed_until), with frame events going to
    /// `lines` instead of `out` while `out` is empty: once this feed made
    /// another event (a finding), the frames after it follow it in `out`,
    /// so whoever writes `out` after `lines` keeps their order.
    pub fn feed_until_lines(
        &mut self,
        data: &[u8],
        now: SystemTime,
        out: &mut Vec<Event>,
        opts: FeedOpts,
        mut lines: Option<&mut dyn FrameLines>,
    ) -> Fed {
        // frame events that went to `lines`
        let mut written = 0usize;
        self.violation_at = None;
        self.violation_mid_frame = false;
        self.current_start = 0;
        // a frame (or header) in progress began in an earlier chunk
        self.current_started_here =
            self.decoder.current().is_none() && self.decoder.partial_header_len() == 0;
        let mut input = data;
        loop {
            let pos = data.len() - input.len();
            let partial = self.decoder.partial_header_len();
            match self.decoder.next(&mut input) {
                None => break,
                Some(Piece::Header(h)) => {
                    self.current_start = pos.saturating_sub(partial);
                    self.current_started_here = partial == 0;
                    self.on_header(h, now, out);
                }
                Some(Piece::Payload { data, offset }) => self.on_payload(data, offset, now, out),
                Some(Piece::End) => {
                    written += usize::from(self.on_end(now, out, lines.as_deref_mut()));
                    let here = match opts.stop {
                        Stop::Never => false,
                        Stop::FrameEnd => true,
                        Stop::MessageEnd => self.message.is_none(),
                    };
                    if here || out.len() + written >= opts.max_events {
                        break;
                    }
                }
            }
            if opts.stop_at_violation && self.violation_at.is_some() {
                break;
            }
        }
        let consumed = data.len() - input.len();
        self.stats.bytes += consumed as u64;
        Fed {
            consumed,
            violation_at: self.violation_at,
            violation_mid_frame: self.violation_mid_frame,
        }
    }

    fn violate(&mut self, v: Violation, now: SystemTime, out: &mut Vec<Event>) {
        self.stats.violations += 1;
        if self.violation_at.is_none() {
            self.violation_at = Some(self.current_start);
            self.violation_mid_frame = !self.current_started_here;
        }
        let bit = 1u32 << v.kind();
        if self.reported & bit == 0 {
            self.reported |= bit;
            out.push(Event::conn(
                now,
                self.conn,
                EventKind::Finding(v.finding(self.dir, self.stats.frames + 1)),
            ));
        }
    }

    fn on_header(&mut self, h: FrameHeader, now: SystemTime, out: &mut Vec<Event>) {
        match (self.dir, h.mask.is_some()) {
            (Dir::ClientToServer, false) => self.violate(Violation::ClientUnmasked, now, out),
            (Dir::ServerToClient, true) => self.violate(Violation::ServerMasked, now, out),
            _ => {}
        }
        if h.nonminimal_len {
            self.violate(Violation::NonMinimalLength(h.len), now, out);
        }
        let control = h.opcode.is_control();
        if let Opcode::Reserved(b) = h.opcode {
            self.violate(Violation::ReservedOpcode(b), now, out);
        }
        if control {
            if h.len > 125 {
                self.violate(Violation::ControlTooLong(h.opcode, h.len), now, out);
            }
            if !h.fin {
                self.violate(Violation::ControlFragmented(h.opcode), now, out);
            }
        } else if self.close.is_some() {
            self.violate(Violation::DataAfterClose(h.opcode), now, out);
        }
        if !self.unknown_extension {
            let deflate = self.cfg.negotiated.deflate.is_some();
            let starts_message = matches!(h.opcode, Opcode::Text | Opcode::Binary);
            if h.rsv2 || h.rsv3 || (h.rsv1 && !deflate) {
                self.violate(
                    Violation::ReservedBits {
                        rsv1: h.rsv1 && !deflate,
                        rsv2: h.rsv2,
                        rsv3: h.rsv3,
                    },
                    now,
                    out,
                );
            } else if h.rsv1 && !starts_message {
                self.violate(Violation::Rsv1Misplaced(h.opcode), now, out);
            }
        }

        let mut text = false;
        let mut compressed = false;
        match h.opcode {
            Opcode::Text | Opcode::Binary => {
                if self.message.is_some() {
                    self.violate(Violation::InterleavedMessage(h.opcode), now, out);
                }
                let m = Message {
                    text: h.opcode == Opcode::Text,
                    compressed: h.rsv1 && self.cfg.negotiated.deflate.is_some(),
                    inflate_skipped: false,
                    inflated: 0,
                };
                self.message = Some(m);
                self.utf8.reset();
                self.skip_utf8 = self.unknown_extension;
                text = m.text;
                compressed = m.compressed;
            }
            Opcode::Continuation => match self.message {
                Some(m) => {
                    text = m.text;
                    compressed = m.compressed;
                }
                None => self.violate(Violation::OrphanContinuation, now, out),
            },
            _ => {}
        }
        self.preview.clear();
        self.control.clear();
        self.current = Some(Current {
            header: h,
            text,
            compressed,
            inflated: 0,
            note: None,
        });
    }

    fn on_payload(&mut self, data: &[u8], offset: u64, now: SystemTime, out: &mut Vec<Event>) {
        let Some(cur) = &self.current else { return };
        let h = cur.header;
        let control = h.opcode.is_control();
        let inflate = cur.compressed && self.inflate_dead.is_none();
        let validate = cur.text && !cur.compressed && !self.skip_utf8;
        let max = self.cfg.keep();
        // Only payloads that must be read whole (text to validate, compressed
        // to inflate) are unmasked in full; others just their preview.
        let need = if inflate || validate {
            data.len()
        } else if control {
            data.len().min(125usize.saturating_sub(self.control.len()))
        } else {
            data.len().min(max.saturating_sub(self.preview.len()))
        };
        if need == 0 {
            return;
        }
        let Some(m) = h.mask else {
            // server frames are unmasked: read them where they lie
            self.consume_plain(&data[..need], inflate, validate, control, now, out);
            return;
        };
        // grown to what payloads have needed, up to SCRATCH: a connection
        // of small frames keeps a small buffer
        let mut scratch = std::mem::take(&mut self.scratch);
        let want = need.min(SCRATCH);
        if scratch.len() < want {
            scratch.resize(want, 0);
        }
        let mut done = 0;
        while done < need {
            let n = (need - done).min(SCRATCH);
            let buf = &mut scratch[..n];
            buf.copy_from_slice(&data[done..done + n]);
            apply_mask(buf, m, offset + done as u64);
            self.consume_plain(buf, inflate, validate, control, now, out);
            done += n;
        }
        self.scratch = scratch;
    }

    /// Handles unmasked payload bytes of the current frame.
    fn consume_plain(
        &mut self,
        buf: &[u8],
        inflate: bool,
        validate: bool,
        control: bool,
        now: SystemTime,
        out: &mut Vec<Event>,
    ) {
        let max = self.cfg.keep();
        if control {
            let room = 125usize.saturating_sub(self.control.len());
            self.control.extend_from_slice(&buf[..buf.len().min(room)]);
        }
        if self.current.as_ref().is_some_and(|c| c.compressed) {
            // compressed bytes are never shown raw: inflated, or not at all
            if inflate {
                self.inflate(buf, false, now, out);
            }
            return;
        }
        let room = max.saturating_sub(self.preview.len());
        self.preview.extend_from_slice(&buf[..buf.len().min(room)]);
        if validate && !self.utf8.feed(buf) {
            self.skip_utf8 = true;
            self.violate(Violation::InvalidUtf8, now, out);
        }
    }

    /// Runs compressed bytes (or, with `end`, the message tail) through the
    /// inflater, keeping a preview and checking UTF-8 of text on the way.
    fn inflate(&mut self, buf: &[u8], end: bool, now: SystemTime, out: &mut Vec<Event>) {
        let max = self.cfg.keep();
        let (Some(inflater), Some(cur), Some(msg)) = (
            self.inflater.as_mut(),
            self.current.as_mut(),
            self.message.as_mut(),
        ) else {
            return;
        };
        if msg.inflate_skipped {
            return;
        }
        let preview = &mut self.preview;
        let utf8 = &mut self.utf8;
        let check_utf8 = msg.text && !self.skip_utf8;
        let mut bad_utf8 = false;
        let mut produced = 0u64;
        let mut sink = |b: &[u8]| {
            produced += b.len() as u64;
            let room = max.saturating_sub(preview.len());
            preview.extend_from_slice(&b[..b.len().min(room)]);
            if check_utf8 && !bad_utf8 && !utf8.feed(b) {
                bad_utf8 = true;
            }
        };
        let result = if end {
            inflater.end_message(&mut sink)
        } else {
            inflater.feed(buf, &mut sink)
        };
        cur.inflated += produced;
        msg.inflated += produced;
        if end && check_utf8 && !bad_utf8 && !utf8.is_complete() {
            bad_utf8 = true;
        }
        let failed = match result {
            Err(e) => {
                let why = format!("preview unavailable: {e}; later compressed messages in this direction are not inflated");
                cur.note = Some(why.clone());
                self.inflate_dead = Some(why);
                true
            }
            Ok(()) if msg.inflated > MAX_INFLATED_PER_MESSAGE => {
                msg.inflate_skipped = true;
                let keeps_context = !inflater.resets_per_message();
                inflater.reset();
                cur.note = Some(format!(
                    "inflation stopped after {} MiB of this message",
                    MAX_INFLATED_PER_MESSAGE >> 20
                ));
                if keeps_context {
                    // the sender's window now holds bytes we never saw
                    self.inflate_dead = Some(
                        "preview unavailable: an earlier message was too large to inflate and the compression context was lost".into(),
                    );
                }
                false
            }
            Ok(()) => false,
        };
        // the output's verdict first, then the failure: the order a split
        // stream produces too
        if bad_utf8 {
            self.skip_utf8 = true;
            self.violate(Violation::InvalidUtf8, now, out);
        }
        if failed {
            self.violate(Violation::InflateFailed, now, out);
        }
    }

    /// Ends the current frame; `true` when its event went to `lines`.
    fn on_end<'l>(
        &mut self,
        now: SystemTime,
        out: &mut Vec<Event>,
        lines: Option<&mut (dyn FrameLines + 'l)>,
    ) -> bool {
        let Some(cur) = self.current.clone() else {
            return false;
        };
        let h = cur.header;
        let mut close_code = None;
        let mut close_name = None;
        let mut close_reason = None;
        if h.opcode == Opcode::Close {
            let p = std::mem::take(&mut self.control);
            let (code, reason) = match p.len() {
                0 => (None, String::new()),
                1 => {
                    self.violate(Violation::CloseOneByte, now, out);
                    (None, String::new())
                }
                _ => {
                    let code = u16::from_be_bytes([p[0], p[1]]);
                    if !close_code::valid_on_wire(code) {
                        self.violate(Violation::InvalidCloseCode(code), now, out);
                    }
                    let reason = match close_reason_text(&p[2..], (p.len() as u64) < h.len) {
                        Some(s) => s.to_string(),
                        None => {
                            self.violate(Violation::CloseReasonNotUtf8, now, out);
                            preview::hex(&p[2..])
                        }
                    };
                    (Some(code), reason)
                }
            };
            if let Some(c) = code {
                close_code = Some(c);
                close_name = Some(close_code::name(c).to_string());
            }
            close_reason = Some(reason.clone());
            if self.close.is_none() {
                self.close = Some(CloseSeen {
                    code,
                    reason,
                    at: now,
                });
            }
            self.control = p;
        }
        // a reserved data opcode (0x3-0x7) was reported; what it means is
        // unknown, so it does not end the message it interrupts
        let ends_message = h.fin
            && matches!(
                h.opcode,
                Opcode::Text | Opcode::Binary | Opcode::Continuation
            );
        let mut note = cur.note.clone();
        if ends_message {
            if let Some(m) = self.message {
                if m.compressed && self.inflate_dead.is_none() {
                    self.inflate(&[], true, now, out);
                    if let Some(c) = &self.current {
                        note = c.note.clone();
                    }
                } else if m.text && !m.compressed && !self.skip_utf8 && !self.utf8.is_complete() {
                    self.skip_utf8 = true;
                    self.violate(Violation::InvalidUtf8, now, out);
                }
            }
        }
        let cur = self.current.take().unwrap_or(cur);
        if cur.compressed && note.is_none() {
            note = self.inflate_dead.clone();
        }
        if ends_message {
            self.message = None;
            self.stats.messages += 1;
        }
        self.stats.frames += 1;
        self.stats.first_frame_at.get_or_insert(now);
        self.stats.last_frame_at = Some(now);
        if self.cfg.frames_unwanted {
            return false;
        }
        let kept = &self.preview[..self.preview.len().min(self.cfg.max_preview)];
        let shown = kept.len() as u64;
        let total = if cur.compressed { cur.inflated } else { h.len };
        let unavailable = note.is_some() && cur.compressed && cur.inflated == 0;
        let (preview, encoding) = if kept.is_empty() || unavailable {
            (String::new(), Encoding::Utf8)
        } else {
            preview::render_pooled(kept, cur.text, shown < total)
        };
        let truncated = shown < total || (cur.compressed && note.is_some());
        let payload = (self.cfg.capture > 0 && !unavailable)
            .then(|| self.preview[..self.preview.len().min(self.cfg.capture)].to_vec());
        let from = self.dir;
        // made where it goes: built first and then moved into an `Event`,
        // a small frame cost some 10% more (`cargo bench --bench decoder`)
        let frame = move || FrameEvent {
            from,
            opcode: h.opcode,
            fin: h.fin,
            rsv1: h.rsv1,
            rsv2: h.rsv2,
            rsv3: h.rsv3,
            masked: h.mask.is_some(),
            len: h.len,
            preview,
            encoding,
            truncated,
            compressed: cur.compressed,
            close_code,
            close_name,
            close_reason,
            injected: false,
            note,
            payload,
        };
        match lines {
            // a finding this feed made waits in `out`: the frame follows it
            Some(lines) if out.is_empty() => {
                let frame = frame();
                lines.frame(now, self.conn, &frame);
                preview::give_back(frame.preview);
                true
            }
            _ => {
                out.push(Event::conn(now, self.conn, EventKind::Frame(frame())));
                false
            }
        }
    }
}

/// The reason of a close payload as text, or `None` when it is not UTF-8.
/// Past 125 bytes (`cut`) the payload is not kept: a character the cut
/// splits is dropped, not held against the sender (the frame event says
/// `truncated`).
fn close_reason_text(reason: &[u8], cut: bool) -> Option<&str> {
    match std::str::from_utf8(reason) {
        Ok(s) => Some(s),
        Err(e) if cut && e.error_len().is_none() => {
            std::str::from_utf8(&reason[..e.valid_up_to()]).ok()
        }
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::deflate::Deflater;
    use crate::proto::event::Finding;
    use crate::proto::frame::{encode_frame, push_header};
    use crate::proto::handshake::{DeflateParams, Extension};

    const M: Option<[u8; 4]> = Some([0x11, 0x22, 0x33, 0x44]);

    fn tap(dir: Dir) -> StreamTap {
        StreamTap::new(
            ConnId(1),
            dir,
            TapConfig {
                max_preview: 16,
                ..Default::default()
            },
        )
    }

    fn run(t: &mut StreamTap, wire: &[u8]) -> (Vec<FrameEvent>, Vec<Finding>) {
        let mut out = Vec::new();
        t.feed(wire, SystemTime::UNIX_EPOCH, &mut out);
        split(out)
    }

    fn split(out: Vec<Event>) -> (Vec<FrameEvent>, Vec<Finding>) {
        let mut frames = Vec::new();
        let mut findings = Vec::new();
        for e in out {
            match e.kind {
                EventKind::Frame(f) => frames.push(f),
                EventKind::Finding(f) => findings.push(f),
                other => panic!("unexpected {other:?}"),
            }
        }
        (frames, findings)
    }

    fn frame(op: Opcode, fin: bool, mask: Option<[u8; 4]>, payload: &[u8]) -> Vec<u8> {
        let mut w = Vec::new();
        encode_frame(&mut w, fin, false, op, mask, payload);
        w
    }

    #[test]
    fn every_opcode_makes_one_event_with_its_fields() {
        let mut wire = Vec::new();
        for op in [Opcode::Text, Opcode::Binary, Opcode::Ping, Opcode::Pong] {
            wire.extend(frame(op, true, M, b"abc"));
        }
        wire.extend(frame(Opcode::Text, false, M, b"fr"));
        wire.extend(frame(Opcode::Continuation, true, M, b"ag"));
        let mut close = 4001u16.to_be_bytes().to_vec();
        close.extend_from_slice(b"bye");
        wire.extend(frame(Opcode::Close, true, M, &close));
        let (frames, findings) = run(&mut tap(Dir::ClientToServer), &wire);
        assert!(findings.is_empty(), "{findings:?}");
        let ops: Vec<_> = frames.iter().map(|f| f.opcode.name()).collect();
        assert_eq!(
            ops,
            [
                "text",
                "binary",
                "ping",
                "pong",
                "text",
                "continuation",
                "close"
            ]
        );
        assert!(frames.iter().all(|f| f.masked));
        assert_eq!(frames[0].preview, "abc");
        assert!(!frames[4].fin && frames[5].fin);
        assert_eq!(frames[5].preview, "ag");
        let c = &frames[6];
        assert_eq!(c.close_code, Some(4001));
        assert_eq!(c.close_name.as_deref(), Some("Private Use"));
        assert_eq!(c.close_reason.as_deref(), Some("bye"));
    }

    #[test]
    fn previews_are_capped_and_unmasked_at_any_split() {
        let payload: Vec<u8> = (0..70_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        let wire = frame(Opcode::Text, true, M, &payload);
        for chunk in [1usize, 2, 5, 1500, 70_000] {
            let mut t = tap(Dir::ClientToServer);
            let mut out = Vec::new();
            for c in wire.chunks(chunk) {
                t.feed(c, SystemTime::UNIX_EPOCH, &mut out);
            }
            let (frames, findings) = split(out);
            assert!(findings.is_empty());
            assert_eq!(frames.len(), 1);
            assert_eq!(frames[0].len, 70_000);
            assert_eq!(frames[0].preview.as_bytes(), &payload[..16]);
            assert!(frames[0].truncated);
        }
    }

    #[test]
    fn binary_preview_is_hex() {
        let (frames, _) = run(
            &mut tap(Dir::ServerToClient),
            &frame(Opcode::Binary, true, None, &[0, 1, 254]),
        );
        assert_eq!(frames[0].preview, "0001fe");
        assert_eq!(frames[0].encoding, Encoding::Hex);
        assert!(!frames[0].truncated);
    }

    fn violations(dir: Dir, wire: &[u8]) -> Vec<String> {
        let (_, f) = run(&mut tap(dir), wire);
        f.iter()
            .map(|f| f.observed.clone().unwrap_or_default())
            .collect()
    }

    #[test]
    fn each_violation_is_reported() {
        let c = Dir::ClientToServer;
        let s = Dir::ServerToClient;
        let one = |dir, wire: Vec<u8>, want: &str| {
            let v = violations(dir, &wire);
            assert_eq!(v.len(), 1, "{want}: {v:?}");
            assert!(v[0].contains(want), "{want}: {v:?}");
        };
        one(
            c,
            frame(Opcode::Text, true, None, b"x"),
            "unmasked client frame",
        );
        one(s, frame(Opcode::Text, true, M, b"x"), "masked server frame");
        let mut rsv = frame(Opcode::Text, true, None, b"x");
        rsv[0] |= 0x40;
        one(s, rsv, "RSV1 set without a negotiated extension");
        one(
            s,
            frame(Opcode::Ping, true, None, &[0; 126]),
            "control frame longer than 125",
        );
        one(s, frame(Opcode::Ping, false, None, b""), "fragmented ping");
        one(
            s,
            frame(Opcode::Reserved(3), true, None, b""),
            "reserved opcode 0x3",
        );
        one(
            s,
            frame(Opcode::Continuation, true, None, b"x"),
            "continuation frame without",
        );
        let mut inter = frame(Opcode::Text, false, None, b"a");
        inter.extend(frame(Opcode::Binary, true, None, b"b"));
        one(s, inter, "new binary message before");
        one(s, frame(Opcode::Text, true, None, b"\xff"), "invalid UTF-8");
        let mut split_bad = frame(Opcode::Text, false, None, b"\xe2\x82");
        split_bad.extend(frame(Opcode::Continuation, true, None, b"x"));
        one(s, split_bad, "invalid UTF-8");
        one(s, frame(Opcode::Close, true, None, &[3]), "1-byte payload");
        one(
            s,
            frame(Opcode::Close, true, None, &1005u16.to_be_bytes()),
            "invalid close code 1005",
        );
        let mut after = frame(Opcode::Close, true, None, &1000u16.to_be_bytes());
        after.extend(frame(Opcode::Text, true, None, b"late"));
        one(s, after, "text frame after its sender's close");
        one(s, vec![0x82, 126, 0, 1, 9], "shortest encoding");
    }

    #[test]
    fn a_char_split_across_fragments_is_valid() {
        let mut w = frame(Opcode::Text, false, M, b"\xe2\x82");
        w.extend(frame(Opcode::Ping, true, M, b""));
        w.extend(frame(Opcode::Continuation, true, M, b"\xac"));
        assert!(violations(Dir::ClientToServer, &w).is_empty());
    }

    #[test]
    fn each_kind_is_reported_once_but_counted() {
        let mut t = tap(Dir::ClientToServer);
        let mut w = Vec::new();
        for _ in 0..5 {
            w.extend(frame(Opcode::Binary, true, None, b"x"));
        }
        let (frames, findings) = run(&mut t, &w);
        assert_eq!((frames.len(), findings.len()), (5, 1));
        assert_eq!(t.stats().violations, 5);
    }

    #[test]
    fn violation_offset_points_at_the_frame() {
        let mut t = tap(Dir::ClientToServer);
        let mut w = frame(Opcode::Text, true, M, b"ok");
        let at = w.len();
        w.extend(frame(Opcode::Text, true, None, b"bad"));
        let mut out = Vec::new();
        assert_eq!(t.feed(&w, SystemTime::UNIX_EPOCH, &mut out), Some(at));
    }

    #[test]
    fn a_read_of_tiny_frames_is_handed_on_in_batches() {
        let mut t = tap(Dir::ServerToClient);
        let one = frame(Opcode::Binary, true, None, b"x");
        let wire = one.repeat(10);
        let opts = FeedOpts {
            max_events: 4,
            ..FeedOpts::default()
        };
        let mut out = Vec::new();
        let fed = t.feed_until(&wire, SystemTime::UNIX_EPOCH, &mut out, opts);
        assert_eq!((fed.consumed, out.len()), (4 * one.len(), 4));
        // the caller feeds the rest, nothing is lost or seen twice
        let mut rest = Vec::new();
        let fed = t.feed_until(
            &wire[fed.consumed..],
            SystemTime::UNIX_EPOCH,
            &mut rest,
            opts,
        );
        assert_eq!((fed.consumed, rest.len()), (4 * one.len(), 4));
        assert_eq!(t.stats().frames, 8);

        // frames written as lines count towards the batch as events do
        let mut t = tap(Dir::ServerToClient);
        let (mut lines, mut none) = (Lines::default(), Vec::new());
        let now = SystemTime::UNIX_EPOCH;
        let fed = t.feed_until_lines(&wire, now, &mut none, opts, Some(&mut lines));
        assert_eq!((fed.consumed, lines.0.len()), (4 * one.len(), 4));
        assert!(none.is_empty());
    }

    /// Keeps the frame events given to it as lines, as events again.
    #[derive(Default)]
    struct Lines(Vec<Event>);

    impl FrameLines for Lines {
        fn frame(&mut self, ts: SystemTime, conn: ConnId, frame: &FrameEvent) {
            self.0
                .push(Event::conn(ts, conn, EventKind::Frame(frame.clone())));
        }
    }

    fn as_json(evs: &[Event]) -> Vec<String> {
        evs.iter()
            .map(|e| serde_json::to_string(e).expect("events serialize"))
            .collect()
    }

    #[test]
    fn frames_go_to_lines_until_a_finding_and_then_after_it() {
        let mut w = frame(Opcode::Text, true, M, b"one");
        w.extend(frame(Opcode::Binary, true, M, b"two"));
        // unmasked from the client: a finding, then its frame
        w.extend(frame(Opcode::Text, true, None, b"bad"));
        w.extend(frame(Opcode::Text, true, M, b"after"));
        let now = SystemTime::UNIX_EPOCH;
        let mut plain = Vec::new();
        tap(Dir::ClientToServer).feed(&w, now, &mut plain);

        let mut t = tap(Dir::ClientToServer);
        let (mut lines, mut out) = (Lines::default(), Vec::new());
        let fed = t.feed_until_lines(&w, now, &mut out, FeedOpts::default(), Some(&mut lines));
        assert_eq!(fed.consumed, w.len());
        assert_eq!(lines.0.len(), 2, "the frames before the finding");
        assert!(
            matches!(out[0].kind, EventKind::Finding(_)),
            "the finding leads what is left"
        );
        let mut both = lines.0;
        both.extend(out);
        assert_eq!(
            as_json(&both),
            as_json(&plain),
            "the same events in the same order"
        );
        assert_eq!(t.stats().frames, 4);
    }

    #[test]
    fn strict_feeding_stops_at_the_violation() {
        let mut t = tap(Dir::ClientToServer);
        let mut w = frame(Opcode::Text, true, M, b"ok");
        let at = w.len();
        w.extend(frame(Opcode::Text, true, None, b"bad"));
        w.extend(frame(Opcode::Text, true, M, b"after"));
        let opts = FeedOpts {
            stop_at_violation: true,
            ..FeedOpts::default()
        };
        let mut out = Vec::new();
        let fed = t.feed_until(&w, SystemTime::UNIX_EPOCH, &mut out, opts);
        assert_eq!(fed.violation_at, Some(at));
        assert!(!fed.violation_mid_frame);
        assert!(
            fed.consumed < w.len(),
            "the frame after it was not looked at"
        );
        let (frames, _) = split(out);
        assert!(frames.iter().all(|f| f.preview != "after"));
    }

    #[test]
    fn a_violation_inside_a_frame_begun_earlier_is_mid_frame() {
        let mut t = tap(Dir::ServerToClient);
        // invalid UTF-8 in the second chunk of a text frame's payload
        let w = frame(Opcode::Text, true, None, b"abc\xff\xfe");
        let opts = FeedOpts {
            stop_at_violation: true,
            ..FeedOpts::default()
        };
        let mut out = Vec::new();
        let first = t.feed_until(&w[..4], SystemTime::UNIX_EPOCH, &mut out, opts);
        assert_eq!(first.violation_at, None);
        let fed = t.feed_until(&w[4..], SystemTime::UNIX_EPOCH, &mut out, opts);
        assert_eq!(fed.violation_at, Some(0));
        assert!(fed.violation_mid_frame, "{fed:?}");
    }

    fn deflate_tap(dir: Dir, no_ctx: bool) -> StreamTap {
        StreamTap::new(
            ConnId(1),
            dir,
            TapConfig {
                max_preview: 64,
                frames_unwanted: false,
                capture: 0,
                negotiated: Negotiated {
                    deflate: Some(DeflateParams {
                        server_no_context_takeover: no_ctx,
                        client_no_context_takeover: no_ctx,
                        server_max_window_bits: None,
                        client_max_window_bits: None,
                    }),
                    ..Default::default()
                },
            },
        )
    }

    #[test]
    fn compressed_messages_show_inflated_previews() {
        for no_ctx in [false, true] {
            let mut d = Deflater::new(no_ctx);
            let mut t = deflate_tap(Dir::ClientToServer, no_ctx);
            let mut wire = Vec::new();
            let texts: Vec<String> = (0..5)
                .map(|i| format!("hello number {i} hello hello"))
                .collect();
            for text in &texts {
                let c = d.compress(text.as_bytes());
                encode_frame(&mut wire, true, true, Opcode::Text, M, &c);
            }
            // and a fragmented compressed message: RSV1 only on the first frame
            let c = d.compress(b"fragmented and compressed");
            let (a, b) = c.split_at(c.len() / 2);
            encode_frame(&mut wire, false, true, Opcode::Text, M, a);
            encode_frame(&mut wire, true, false, Opcode::Continuation, M, b);
            let mut out = Vec::new();
            for chunk in wire.chunks(3) {
                t.feed(chunk, SystemTime::UNIX_EPOCH, &mut out);
            }
            let (frames, findings) = split(out);
            assert!(findings.is_empty(), "{findings:?}");
            for (f, text) in frames.iter().zip(&texts) {
                assert!(f.compressed);
                assert_eq!(&f.preview, text);
            }
            let joined = format!("{}{}", frames[5].preview, frames[6].preview);
            assert_eq!(joined, "fragmented and compressed");
            assert!(frames[6].compressed);
        }
    }

    #[test]
    fn garbage_compressed_payload_is_a_violation() {
        let mut t = deflate_tap(Dir::ServerToClient, false);
        let mut w = Vec::new();
        encode_frame(&mut w, true, true, Opcode::Text, None, &[0xff; 8]);
        let (frames, findings) = run(&mut t, &w);
        assert_eq!(findings.len(), 1);
        assert!(frames[0].note.is_some());
    }

    /// The relay splices what `opaque_ahead` allows and feeds the rest:
    /// the events and counters must be the ones feeding everything gives.
    #[test]
    fn skipping_opaque_payload_gives_the_events_of_feeding_it() {
        let mut w = Vec::new();
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        encode_frame(&mut w, true, false, Opcode::Binary, M, &big);
        encode_frame(
            &mut w,
            true,
            false,
            Opcode::Text,
            M,
            "é".repeat(40_000).as_bytes(),
        );
        encode_frame(&mut w, false, false, Opcode::Binary, M, &big[..70_000]);
        encode_frame(&mut w, true, false, Opcode::Ping, M, b"p");
        encode_frame(&mut w, true, false, Opcode::Continuation, M, &big[..90_000]);
        encode_frame(&mut w, true, false, Opcode::Binary, M, b"tail");
        let mut whole = tap(Dir::ClientToServer);
        let mut want = Vec::new();
        whole.feed(&w, SystemTime::UNIX_EPOCH, &mut want);

        for chunk in [1usize, 7, 4096, 65536] {
            let mut t = tap(Dir::ClientToServer);
            let mut got = Vec::new();
            let mut skipped = 0u64;
            let mut pos = 0;
            while pos < w.len() {
                let ahead = t.opaque_ahead();
                if ahead > 0 {
                    // the relay moves at most what one round takes
                    let n = t.skip(ahead.min(50_000), SystemTime::UNIX_EPOCH, &mut got);
                    assert!(n > 0);
                    skipped += n;
                    pos += n as usize;
                    continue;
                }
                let end = (pos + chunk).min(w.len());
                t.feed(&w[pos..end], SystemTime::UNIX_EPOCH, &mut got);
                pos = end;
            }
            assert!(
                skipped > 200_000,
                "chunk {chunk}: only {skipped} bytes skipped"
            );
            let json = |evs: &[Event]| -> Vec<String> {
                evs.iter()
                    .map(|e| serde_json::to_string(e).unwrap_or_default())
                    .collect()
            };
            assert_eq!(json(&got), json(&want), "chunk {chunk}");
            assert_eq!(got.len(), 6, "chunk {chunk}");
            assert_eq!(t.stats().bytes, w.len() as u64);
            assert_eq!(t.stats().frames, whole.stats().frames);
            assert!(t.at_message_boundary());
        }
    }

    #[test]
    fn text_compressed_and_control_payload_is_never_opaque() {
        let mut t = tap(Dir::ServerToClient);
        let mut out = Vec::new();
        let mut w = Vec::new();
        push_header(&mut w, true, false, Opcode::Text, None, 1 << 20);
        w.extend_from_slice(&[b'a'; 100]);
        t.feed(&w, SystemTime::UNIX_EPOCH, &mut out);
        assert_eq!(t.opaque_ahead(), 0, "text is validated to its end");
        let mut t = tap(Dir::ServerToClient);
        let mut w = Vec::new();
        push_header(&mut w, true, false, Opcode::Binary, None, 1 << 20);
        w.extend_from_slice(&[0u8; 10]);
        t.feed(&w, SystemTime::UNIX_EPOCH, &mut out);
        assert_eq!(t.opaque_ahead(), 0, "the preview is not complete yet");
        t.feed(&[0u8; 6], SystemTime::UNIX_EPOCH, &mut out);
        assert_eq!(t.opaque_ahead(), (1 << 20) - 16);
    }

    #[test]
    fn with_frames_unwanted_only_findings_are_made_and_frames_still_counted() {
        let mut w = frame(Opcode::Text, true, M, b"fine");
        w.extend(frame(Opcode::Text, true, M, &[0xff, 0xfe]));
        w.extend(frame(Opcode::Close, true, M, &1000u16.to_be_bytes()));
        let cfg = |frames_unwanted| TapConfig {
            max_preview: 16,
            capture: 16,
            negotiated: Negotiated::default(),
            frames_unwanted,
        };
        let mut all = StreamTap::new(ConnId(1), Dir::ClientToServer, cfg(false));
        let (frames, want) = run(&mut all, &w);
        assert_eq!(frames.len(), 3);
        let mut quiet = StreamTap::new(ConnId(1), Dir::ClientToServer, cfg(true));
        let (frames, got) = run(&mut quiet, &w);
        assert!(frames.is_empty(), "{frames:?}");
        assert_eq!(got, want, "the invalid UTF-8 is still found");
        assert_eq!(quiet.stats().frames, 3);
        assert_eq!(quiet.stats().messages, all.stats().messages);
        assert_eq!(quiet.close_seen().and_then(|c| c.code), Some(1000));

        // no preview to fill: a binary frame's payload is opaque at once
        let mut w = Vec::new();
        push_header(&mut w, true, false, Opcode::Binary, None, 1 << 20);
        let mut out = Vec::new();
        quiet.feed(&w, SystemTime::UNIX_EPOCH, &mut out);
        assert_eq!(quiet.opaque_ahead(), 1 << 20);
    }

    #[test]
    fn text_under_an_unknown_extension_is_not_judged_as_utf8() {
        let cfg = TapConfig {
            max_preview: 64,
            negotiated: Negotiated {
                extensions: vec![Extension {
                    name: "x-webkit-deflate-frame".into(),
                    params: vec![],
                }],
                ..Default::default()
            },
            ..Default::default()
        };
        let mut t = StreamTap::new(ConnId(1), Dir::ServerToClient, cfg);
        // "Hello" as x-webkit-deflate-frame sends it: not UTF-8 on the wire
        let deflated = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
        let mut w = Vec::new();
        encode_frame(&mut w, true, true, Opcode::Text, None, &deflated);
        // and a fragmented one cut inside what would be a character
        encode_frame(&mut w, false, false, Opcode::Text, None, b"\xe2\x82");
        encode_frame(&mut w, true, false, Opcode::Continuation, None, b"");
        let (frames, findings) = run(&mut t, &w);
        assert!(findings.is_empty(), "{findings:#?}");
        assert_eq!(
            frames[0].encoding,
            Encoding::Hex,
            "shown as the bytes it is"
        );
        assert_eq!(frames[0].preview, preview::hex(&deflated));
        assert_eq!(t.stats().messages, 2);

        // nothing to check: past its preview a text frame is opaque
        let mut w = Vec::new();
        push_header(&mut w, true, false, Opcode::Text, None, 1 << 20);
        w.extend_from_slice(&[b'a'; 64]);
        t.feed(&w, SystemTime::UNIX_EPOCH, &mut Vec::new());
        assert_eq!(t.opaque_ahead(), (1 << 20) - 64);
    }

    #[test]
    fn compressed_fragment_events_do_not_depend_on_read_splits() {
        let cfg = || TapConfig {
            max_preview: 16,
            capture: 0,
            frames_unwanted: false,
            negotiated: Negotiated {
                deflate: Some(DeflateParams {
                    server_no_context_takeover: false,
                    client_no_context_takeover: false,
                    server_max_window_bits: None,
                    client_max_window_bits: None,
                }),
                ..Default::default()
            },
        };
        // text that inflates to exact multiples of the inflater's buffer at
        // some cuts of its compressed form
        let words = ["h\u{e9}llo ", "\u{20ac}", "abc", "item ", "zz", "q"];
        let mut x = 12345u32;
        let unit: String = (0..20)
            .map(|_| {
                x = x.wrapping_mul(1103515245).wrapping_add(12345);
                words[(x >> 16) as usize % words.len()]
            })
            .collect();
        let text = unit.repeat(300);
        let c = Deflater::new(false).compress(text.as_bytes());
        for cut in 1..c.len() {
            let (a, b) = c.split_at(cut);
            let mut w = Vec::new();
            encode_frame(&mut w, false, true, Opcode::Text, None, a);
            encode_frame(&mut w, true, false, Opcode::Continuation, None, b);
            let events = |chunk: usize| -> Vec<String> {
                let mut t = StreamTap::new(ConnId(1), Dir::ServerToClient, cfg());
                let mut out = Vec::new();
                for part in w.chunks(chunk) {
                    t.feed(part, SystemTime::UNIX_EPOCH, &mut out);
                }
                as_json(&out)
            };
            assert_eq!(events(1), events(w.len()), "fragments cut at {cut}");
        }
    }

    #[test]
    fn a_reserved_data_frame_neither_ends_nor_starts_a_message() {
        let mut w = Vec::new();
        encode_frame(&mut w, false, false, Opcode::Text, None, b"\xe2\x82");
        encode_frame(&mut w, true, false, Opcode::Reserved(3), None, b"");
        encode_frame(&mut w, true, false, Opcode::Continuation, None, b"\xac");
        let mut t = tap(Dir::ServerToClient);
        let (frames, findings) = run(&mut t, &w);
        let observed: Vec<_> = findings.iter().map(|f| f.observed.clone()).collect();
        assert_eq!(observed.len(), 1, "{observed:#?}");
        assert!(observed[0]
            .as_deref()
            .unwrap_or("")
            .contains("reserved opcode 0x3"));
        assert_eq!(frames.len(), 3);
        assert_eq!(t.stats().messages, 1);

        // nor a compressed one: the inflater does not see a message end
        let mut t = deflate_tap(Dir::ServerToClient, true);
        let c = Deflater::new(true).compress(b"split by a reserved frame");
        let (a, b) = c.split_at(c.len() / 2);
        let mut w = Vec::new();
        encode_frame(&mut w, false, true, Opcode::Text, None, a);
        encode_frame(&mut w, true, false, Opcode::Reserved(5), None, b"");
        encode_frame(&mut w, true, false, Opcode::Continuation, None, b);
        let (frames, findings) = run(&mut t, &w);
        assert_eq!(findings.len(), 1, "{findings:#?}");
        let joined = format!("{}{}", frames[0].preview, frames[2].preview);
        assert_eq!(joined, "split by a reserved frame");

        // nor does one outside a message begin one
        let mut w = frame(Opcode::Reserved(4), false, None, b"");
        w.extend(frame(Opcode::Continuation, true, None, b"x"));
        let v = violations(Dir::ServerToClient, &w);
        assert_eq!(v.len(), 2, "{v:#?}");
        assert!(v[1].contains("continuation frame without"), "{v:#?}");
    }

    #[test]
    fn a_long_close_reason_cut_inside_a_character_is_kept_to_its_last_whole_one() {
        let mut p = 1000u16.to_be_bytes().to_vec();
        p.extend("é".repeat(99).as_bytes());
        let mut t = tap(Dir::ServerToClient);
        let (frames, findings) = run(&mut t, &frame(Opcode::Close, true, None, &p));
        assert_eq!(findings.len(), 1, "{findings:#?}");
        assert!(findings[0]
            .observed
            .as_deref()
            .unwrap_or("")
            .contains("longer than 125"));
        // 123 bytes of reason kept: 61 whole characters and half of one
        let reason = "é".repeat(61);
        assert_eq!(frames[0].close_reason.as_deref(), Some(reason.as_str()));
        assert!(frames[0].truncated);
        assert_eq!(
            t.close_seen().map(|c| c.reason.as_str()),
            Some(reason.as_str())
        );

        // invalid UTF-8 before the cut is still a fault
        let mut p = 1000u16.to_be_bytes().to_vec();
        p.push(0xff);
        p.extend("é".repeat(99).as_bytes());
        let v = violations(Dir::ServerToClient, &frame(Opcode::Close, true, None, &p));
        assert_eq!(v.len(), 2, "{v:#?}");
        assert!(v[1].contains("not valid UTF-8"), "{v:#?}");
    }
}
