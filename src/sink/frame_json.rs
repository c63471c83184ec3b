//! A hand-written JSON encoder for `frame` events, the one event kind that
//! comes at wire speed: byte-for-byte what serde writes for them (a test
//! holds it to that), at a fraction of the cost (no flatten, no tag
//! buffering, and the timestamp's date part formatted once per second).

use std::time::{SystemTime, UNIX_EPOCH};

use crate::proto::event::{ConnId, Dir, Encoding, Event, EventKind, FrameEvent};

/// Remembers the formatted date and time of the last second seen, and
/// holds the runs of fields that only take a few values, written out once.
pub struct FrameEncoder {
    second: u64,
    /// `{"ts":"2026-11-25T18:25:22`, the line's start up to the
    /// fraction, for `second`.
    prefix: String,
    /// `","fin":…,"rsv1":…,"rsv2":…,"rsv3":…,"masked":…,"len":` for each
    /// of the 32 combinations (see [`flags_index`]): the opcode's closing
    /// quote to the length's key. The runs are written whole, each one
    /// call, rather than field by field.
    flags: Vec<Vec<u8>>,
    /// `,"encoding":…,"truncated":…,"compressed":…` for each of the 8
    /// combinations (see [`tail_index`]).
    tail: Vec<Vec<u8>>,
}

impl Default for FrameEncoder {
    fn default() -> Self {
        Self::new()
    }
}

fn flags_index(f: &FrameEvent) -> usize {
    f.fin as usize
        | (f.rsv1 as usize) << 1
        | (f.rsv2 as usize) << 2
        | (f.rsv3 as usize) << 3
        | (f.masked as usize) << 4
}

fn tail_index(f: &FrameEvent) -> usize {
    (f.encoding == Encoding::Hex) as usize
        | (f.truncated as usize) << 1
        | (f.compressed as usize) << 2
}

fn push_bool(out: &mut Vec<u8>, key: &[u8], v: bool) {
    out.extend_from_slice(key);
    out.extend_from_slice(if v { b"true" } else { b"false" });
}

fn push_str(out: &mut Vec<u8>, key: &[u8], v: &str) {
    out.extend_from_slice(key);
    push_escaped(out, v.as_bytes());
}

/// Serde_json escapes these bytes in a string.
#[inline]
fn needs_escape(x: u8) -> bool {
    x < 0x20 || x == b'"' || x == b'\\'
}

/// The first index at or after `i` whose byte [`needs_escape`], or
/// `v.len()`; eight bytes at a time, as one `u64` each. In a word, the
/// masks below flag every byte that needs escaping and may flag bytes
/// above one (a borrow runs upward), never below: so the lowest flag,
/// the only one used, is exact.
#[inline]
fn find_escape(v: &[u8], mut i: usize) -> usize {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGH: u64 = ONES << 7;
    // the bytes of `x` that are 0
    let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    while let Some(c) = v.get(i..).and_then(<[u8]>::first_chunk::<8>) {
        let w = u64::from_le_bytes(*c);
        let below_space = w.wrapping_sub(0x20 * ONES) & !w & HIGH;
        let hit = below_space | zero(w ^ (b'"' as u64 * ONES)) | zero(w ^ (b'\\' as u64 * ONES));
        if hit != 0 {
            return i + (hit.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < v.len() && !needs_escape(v[i]) {
        i += 1;
    }
    i
}

/// `v` as a JSON string, escaped exactly as serde_json escapes it (tests
/// hold it to that for every character): `"` and `\` with a backslash,
/// the control characters below 0x20 as `\b \t \n \f \r` or `\u00xx`
/// (lowercase hex), every other byte (0x7f and non-ASCII included) as it is.
/// Runs with nothing to escape are found a word at a time and copied whole.
fn push_escaped(out: &mut Vec<u8>, v: &[u8]) {
    out.push(b'"');
    push_escaped_rest(out, v);
}

/// [`push_escaped`] after its opening quote, which the caller wrote.
fn push_escaped_rest(out: &mut Vec<u8>, v: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.reserve(v.len() + 1);
    // start of the bytes not yet copied
    let mut from = 0;
    loop {
        let i = find_escape(v, from);
        let Some(&x) = v.get(i) else { break };
        out.extend_from_slice(&v[from..i]);
        match x {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            _ => {
                out.extend_from_slice(b"\\u00");
                out.push(HEX[(x >> 4) as usize]);
                out.push(HEX[(x & 0xf) as usize]);
            }
        }
        from = i + 1;
    }
    out.extend_from_slice(&v[from..]);
    out.push(b'"');
}

fn push_u64(out: &mut Vec<u8>, key: &[u8], v: u64) {
    out.extend_from_slice(key);
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

impl FrameEncoder {
    pub fn new() -> Self {
        let bit = |i: usize, b: usize| i & (1 << b) != 0;
        let flags = (0..32)
            .map(|i| {
                let mut v = b"\"".to_vec();
                push_bool(&mut v, b",\"fin\":", bit(i, 0));
                push_bool(&mut v, b",\"rsv1\":", bit(i, 1));
                push_bool(&mut v, b",\"rsv2\":", bit(i, 2));
                push_bool(&mut v, b",\"rsv3\":", bit(i, 3));
                push_bool(&mut v, b",\"masked\":", bit(i, 4));
                v.extend_from_slice(b",\"len\":");
                v
            })
            .collect();
        let tail = (0..8)
            .map(|i| {
                let mut v = Vec::new();
                v.extend_from_slice(if bit(i, 0) {
                    b",\"encoding\":\"hex\""
                } else {
                    b",\"encoding\":\"utf8\""
                });
                push_bool(&mut v, b",\"truncated\":", bit(i, 1));
                push_bool(&mut v, b",\"compressed\":", bit(i, 2));
                v
            })
            .collect();
        FrameEncoder {
            second: 0,
            prefix: String::new(),
            flags,
            tail,
        }
    }

    /// Starts the line: `{"ts":"…"`, the timestamp to the microsecond.
    fn push_ts(&mut self, out: &mut Vec<u8>, ts: SystemTime) {
        let d = ts.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = d.as_secs();
        if self.prefix.is_empty() || secs != self.second {
            let whole = UNIX_EPOCH + std::time::Duration::from_secs(secs);
            // "2026-11-25T18:25:22Z" without the Z
            let s = humantime::format_rfc3339_seconds(whole).to_string();
            self.prefix = format!("{{\"ts\":\"{}", s.trim_end_matches('Z'));
            self.second = secs;
        }
        out.extend_from_slice(self.prefix.as_bytes());
        // `.123456Z"`
        let mut digits = *b".000000Z\"";
        let mut m = d.subsec_micros();
        for i in (1..7).rev() {
            digits[i] = b'0' + (m % 10) as u8;
            m /= 10;
        }
        out.extend_from_slice(&digits);
    }

    /// Appends the event as JSON if it is a frame event; `false` (nothing
    /// written) for other kinds, which go through serde.
    pub fn encode(&mut self, out: &mut Vec<u8>, ev: &Event) -> bool {
        let EventKind::Frame(f) = &ev.kind else {
            return false;
        };
        self.encode_frame(out, ev.ts, ev.conn, f);
        true
    }

    /// Appends the frame event of `conn` made at `ts`, as [`Self::encode`]
    /// writes its `Event`.
    pub fn encode_frame(
        &mut self,
        out: &mut Vec<u8>,
        ts: SystemTime,
        conn: Option<ConnId>,
        f: &FrameEvent,
    ) {
        self.push_ts(out, ts);
        if let Some(c) = conn {
            push_u64(out, b",\"conn\":", c.0);
        }
        self.frame_fields(out, f);
        out.push(b'}');
    }
}

impl FrameEncoder {
    fn frame_fields(&self, out: &mut Vec<u8>, f: &FrameEvent) {
        out.extend_from_slice(match f.from {
            Dir::ClientToServer => b",\"event\":\"frame\",\"from\":\"client\",\"opcode\":\"",
            Dir::ServerToClient => b",\"event\":\"frame\",\"from\":\"server\",\"opcode\":\"",
        });
        // no opcode's name needs escaping
        out.extend_from_slice(f.opcode.name().as_bytes());
        out.extend_from_slice(&self.flags[flags_index(f)]);
        out.extend_from_slice(itoa::Buffer::new().format(f.len).as_bytes());
        out.extend_from_slice(b",\"preview\":\"");
        push_escaped_rest(out, f.preview.as_bytes());
        out.extend_from_slice(&self.tail[tail_index(f)]);
        if let Some(c) = f.close_code {
            push_u64(out, b",\"close_code\":", c as u64);
        }
        if let Some(n) = &f.close_name {
            push_str(out, b",\"close_name\":", n);
        }
        if let Some(r) = &f.close_reason {
            push_str(out, b",\"close_reason\":", r);
        }
        if f.injected {
            push_bool(out, b",\"injected\":", true);
        }
        if let Some(n) = &f.note {
            push_str(out, b",\"note\":", n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::frame::Opcode;
    use proptest::prelude::*;
    use std::time::Duration;

    fn arb_frame() -> impl Strategy<Value = (u64, Option<u64>, FrameEvent)> {
        (
            (
                0u64..4_000_000_000_000_000,
                proptest::option::of(0u64..u64::MAX),
            ),
            (any::<bool>(), 0u8..16, any::<[bool; 8]>(), any::<u64>()),
            (
                ".*",
                proptest::option::of(any::<u16>()),
                proptest::option::of(".*"),
                proptest::option::of(".*"),
                proptest::option::of(".*"),
            ),
        )
            .prop_map(
                |((micros, conn), (server, op, b, len), (preview, code, name, reason, note))| {
                    let f = FrameEvent {
                        from: if server {
                            Dir::ServerToClient
                        } else {
                            Dir::ClientToServer
                        },
                        opcode: Opcode::from_bits(op),
                        fin: b[0],
                        rsv1: b[1],
                        rsv2: b[2],
                        rsv3: b[3],
                        masked: b[4],
                        len,
                        preview,
                        encoding: if b[5] { Encoding::Hex } else { Encoding::Utf8 },
                        truncated: b[6],
                        compressed: b[7],
                        close_code: code,
                        close_name: name,
                        close_reason: reason,
                        injected: len % 3 == 0,
                        note,
                        payload: None,
                    };
                    (micros, conn, f)
                },
            )
    }

    proptest! {
        #[test]
        fn matches_serde_byte_for_byte(cases in proptest::collection::vec(arb_frame(), 1..20)) {
            let mut enc = FrameEncoder::new();
            for (micros, conn, f) in cases {
                let ev = Event {
                    ts: UNIX_EPOCH + Duration::from_micros(micros),
                    conn: conn.map(ConnId),
                    kind: EventKind::Frame(f),
                };
                let mut fast = Vec::new();
                prop_assert!(enc.encode(&mut fast, &ev));
                let slow = serde_json::to_vec(&ev).unwrap();
                prop_assert_eq!(String::from_utf8(fast).unwrap(), String::from_utf8(slow).unwrap());
            }
        }
    }

    proptest! {
        #[test]
        fn strings_match_serde(s in any::<String>()) {
            let mut fast = Vec::new();
            push_str(&mut fast, b"", &s);
            prop_assert_eq!(fast, serde_json::to_vec(&s).unwrap());
        }
    }

    proptest! {
        #[test]
        fn ascii_strings_match_serde(s in "[ -~\t\n\x00-\x1f]{0,100}") {
            let mut fast = Vec::new();
            push_str(&mut fast, b"", &s);
            prop_assert_eq!(fast, serde_json::to_vec(&s).unwrap());
        }
    }

    proptest! {
        #[test]
        fn find_escape_finds_the_first(v in proptest::collection::vec(any::<u8>(), 0..40), from in 0usize..40) {
            let from = from.min(v.len());
            let first = v[from..].iter().position(|&x| needs_escape(x)).map_or(v.len(), |p| from + p);
            prop_assert_eq!(find_escape(&v, from), first);
        }
    }

    #[test]
    fn no_opcode_name_needs_escaping() {
        for bits in 0..16 {
            let name = Opcode::from_bits(bits).name();
            assert!(!name.bytes().any(needs_escape), "{name}");
        }
    }

    #[test]
    fn every_byte_at_every_place_of_a_chunk() {
        for b in 0..=255u8 {
            for at in 0..16 {
                for fill in [b'a', 0xff, 0x20, 0x00, b'"'] {
                    let mut c = [fill; 16];
                    c[at] = b;
                    let first = c.iter().position(|&x| needs_escape(x)).unwrap_or(16);
                    assert_eq!(find_escape(&c, 0), first, "{c:?}");
                    // whole words and a tail: the word loop, then the byte loop
                    let s = [&c[..], &c[..], &c[..at]].concat();
                    let mut fast = Vec::new();
                    push_escaped(&mut fast, &s);
                    let text = String::from_utf8_lossy(&s);
                    if text.as_bytes() == s.as_slice() {
                        assert_eq!(fast, serde_json::to_vec(&*text).unwrap(), "{c:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn every_char_is_written_as_serde_writes_it() {
        for c in (0..=0x10ffffu32).filter_map(char::from_u32) {
            // inside a 16-byte chunk, and in the tail
            for s in [format!("abcdefg{c}hijklmnopq"), format!("a{c}b")] {
                let mut fast = Vec::new();
                push_str(&mut fast, b"", &s);
                assert_eq!(fast, serde_json::to_vec(&s).unwrap(), "{c:?}");
            }
        }
    }

    #[test]
    fn other_events_are_left_to_serde() {
        let ev = Event::new(
            SystemTime::now(),
            None,
            EventKind::Error(crate::proto::event::ErrorEvent {
                message: "x".into(),
            }),
        );
        let mut out = Vec::new();
        assert!(!FrameEncoder::new().encode(&mut out, &ev));
        assert!(out.is_empty());
    }
}
