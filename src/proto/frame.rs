//! RFC 6455 §5.2 frame headers: a lossless parser, an encoder and masking.
//! Reserved opcodes and bits are recorded, never rejected: judging them is
//! the session's job, and the relay forwards them whatever they are.

use std::fmt;

/// A frame's opcode, including the reserved values (RFC 6455 §5.2, §11.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Opcode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
    /// 0x3-0x7 (data) and 0xB-0xF (control) are reserved for future use.
    Reserved(u8),
}

impl Opcode {
    pub fn from_bits(bits: u8) -> Self {
        match bits & 0x0f {
            0x0 => Opcode::Continuation,
            0x1 => Opcode::Text,
            0x2 => Opcode::Binary,
            0x8 => Opcode::Close,
            0x9 => Opcode::Ping,
            0xA => Opcode::Pong,
            other => Opcode::Reserved(other),
        }
    }

    pub fn bits(self) -> u8 {
        match self {
            Opcode::Continuation => 0x0,
            Opcode::Text => 0x1,
            Opcode::Binary => 0x2,
            Opcode::Close => 0x8,
            Opcode::Ping => 0x9,
            Opcode::Pong => 0xA,
            Opcode::Reserved(b) => b & 0x0f,
        }
    }

    /// Control frames have the high bit of the opcode set (§5.5), reserved
    /// control opcodes included.
    pub fn is_control(self) -> bool {
        self.bits() & 0x8 != 0
    }

    /// The name used in events: `text`, `close`, `reserved-3`, ...
    pub fn name(self) -> &'static str {
        const RESERVED: [&str; 16] = [
            "reserved-0",
            "reserved-1",
            "reserved-2",
            "reserved-3",
            "reserved-4",
            "reserved-5",
            "reserved-6",
            "reserved-7",
            "reserved-8",
            "reserved-9",
            "reserved-10",
            "reserved-11",
            "reserved-12",
            "reserved-13",
            "reserved-14",
            "reserved-15",
        ];
        match self {
            Opcode::Continuation => "continuation",
            Opcode::Text => "text",
            Opcode::Binary => "binary",
            Opcode::Close => "close",
            Opcode::Ping => "ping",
            Opcode::Pong => "pong",
            Opcode::Reserved(b) => RESERVED[(b & 0x0f) as usize],
        }
    }

    /// Inverse of [`Opcode::name`], for reading logs back.
    pub fn parse_name(name: &str) -> Option<Self> {
        Some(match name {
            "continuation" => Opcode::Continuation,
            "text" => Opcode::Text,
            "binary" => Opcode::Binary,
            "close" => Opcode::Close,
            "ping" => Opcode::Ping,
            "pong" => Opcode::Pong,
            other => {
                let n: u8 = other.strip_prefix("reserved-")?.parse().ok()?;
                if n > 15 {
                    return None;
                }
                Opcode::Reserved(n)
            }
        })
    }
}

impl fmt::Display for Opcode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A decoded frame header, exactly as it was on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub fin: bool,
    pub rsv1: bool,
    pub rsv2: bool,
    pub rsv3: bool,
    pub opcode: Opcode,
    pub mask: Option<[u8; 4]>,
    /// Payload length in bytes.
    pub len: u64,
    /// The length used more bytes than needed (§5.2 requires the minimal
    /// encoding) or the 64-bit length had its top bit set.
    pub nonminimal_len: bool,
    /// Bytes this header occupied on the wire (2 to 14).
    pub header_len: u8,
}

/// Result of a `parse_*` function over a byte prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed<T> {
    /// More bytes are needed; nothing was consumed.
    Incomplete,
    /// A value and how many bytes it used.
    Done(T, usize),
}

/// Longest possible header: 2 + 8 (64-bit length) + 4 (mask).
pub const MAX_HEADER_LEN: usize = 14;

/// Parses a frame header from the start of `buf`. Every byte sequence is a
/// header or a prefix of one: the wire format has no invalid headers, only
/// headers that break rules (reported later by the session).
pub fn parse_header(buf: &[u8]) -> Parsed<FrameHeader> {
    if buf.len() < 2 {
        return Parsed::Incomplete;
    }
    let b0 = buf[0];
    let b1 = buf[1];
    let masked = b1 & 0x80 != 0;
    let len7 = b1 & 0x7f;
    let ext = match len7 {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let header_len = 2 + ext + if masked { 4 } else { 0 };
    if buf.len() < header_len {
        return Parsed::Incomplete;
    }
    let (len, nonminimal_len) = match len7 {
        126 => {
            let l = u16::from_be_bytes([buf[2], buf[3]]) as u64;
            (l, l < 126)
        }
        127 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            let l = u64::from_be_bytes(b);
            (l, l <= 0xffff || l >> 63 != 0)
        }
        n => (n as u64, false),
    };
    let mask = if masked {
        let m = &buf[2 + ext..2 + ext + 4];
        Some([m[0], m[1], m[2], m[3]])
    } else {
        None
    };
    Parsed::Done(
        FrameHeader {
            fin: b0 & 0x80 != 0,
            rsv1: b0 & 0x40 != 0,
            rsv2: b0 & 0x20 != 0,
            rsv3: b0 & 0x10 != 0,
            opcode: Opcode::from_bits(b0),
            mask,
            len,
            nonminimal_len,
            header_len: header_len as u8,
        },
        header_len,
    )
}

/// Appends a frame header (RFC 6455 §5.2) with the minimal length encoding.
pub fn push_header(
    out: &mut Vec<u8>,
    fin: bool,
    rsv1: bool,
    opcode: Opcode,
    mask: Option<[u8; 4]>,
    len: u64,
) {
    out.push((if fin { 0x80 } else { 0 }) | (if rsv1 { 0x40 } else { 0 }) | opcode.bits());
    let mbit = if mask.is_some() { 0x80 } else { 0 };
    if len < 126 {
        out.push(mbit | len as u8);
    } else if len <= 0xffff {
        out.push(mbit | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(mbit | 127);
        out.extend_from_slice(&len.to_be_bytes());
    }
    if let Some(m) = mask {
        out.extend_from_slice(&m);
    }
}

/// Appends the wire form of a frame (header, then the payload masked with
/// `mask` when given) to `out`, using the minimal length encoding.
pub fn encode_frame(
    out: &mut Vec<u8>,
    fin: bool,
    rsv1: bool,
    opcode: Opcode,
    mask: Option<[u8; 4]>,
    payload: &[u8],
) {
    push_header(out, fin, rsv1, opcode, mask, payload.len() as u64);
    match mask {
        Some(m) => {
            let start = out.len();
            out.extend_from_slice(payload);
            apply_mask(&mut out[start..], m, 0);
        }
        None => out.extend_from_slice(payload),
    }
}

/// XORs `buf` with the masking key (§5.3), where `buf` starts at byte
/// `offset` of the payload. Masking is its own inverse.
pub fn apply_mask(buf: &mut [u8], mask: [u8; 4], offset: u64) {
    let rot = (offset % 4) as usize;
    let key = [
        mask[rot],
        mask[(rot + 1) % 4],
        mask[(rot + 2) % 4],
        mask[(rot + 3) % 4],
    ];
    // Word-at-a-time: the text-frame UTF-8 check and inflation unmask every
    // payload byte, so this is on the hot path for those frames.
    let k64 = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut chunks = buf.chunks_exact_mut(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        let v = u64::from_ne_bytes(w) ^ k64;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= key[i % 4];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opcode_names_round_trip() {
        for bits in 0u8..16 {
            let op = Opcode::from_bits(bits);
            assert_eq!(op.bits(), bits);
            assert_eq!(Opcode::parse_name(op.name()), Some(op));
        }
        assert!(Opcode::Reserved(0xB).is_control());
        assert!(!Opcode::Reserved(0x3).is_control());
        assert_eq!(Opcode::parse_name("reserved-16"), None);
    }

    #[test]
    fn lengths_use_each_encoding() {
        for len in [0usize, 125, 126, 65535, 65536, 1 << 20] {
            let payload = vec![7u8; len];
            for mask in [None, Some([1, 2, 3, 4])] {
                let mut wire = Vec::new();
                encode_frame(&mut wire, true, false, Opcode::Binary, mask, &payload);
                let Parsed::Done(h, n) = parse_header(&wire) else {
                    panic!("incomplete header for len {len}");
                };
                assert_eq!(h.len, len as u64);
                assert_eq!(h.mask, mask);
                assert!(!h.nonminimal_len);
                assert_eq!(n, wire.len() - len);
                assert_eq!(h.header_len as usize, n);
                // every strict prefix of the header is incomplete
                for cut in 0..n {
                    assert_eq!(parse_header(&wire[..cut]), Parsed::Incomplete);
                }
                let mut body = wire[n..].to_vec();
                if let Some(m) = mask {
                    apply_mask(&mut body, m, 0);
                }
                assert_eq!(body, payload);
            }
        }
    }

    #[test]
    fn nonminimal_and_top_bit_lengths_are_flagged() {
        let Parsed::Done(h, _) = parse_header(&[0x82, 126, 0, 5]) else {
            panic!()
        };
        assert!(h.nonminimal_len);
        assert_eq!(h.len, 5);
        let Parsed::Done(h, _) = parse_header(&[0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 1]) else {
            panic!()
        };
        assert!(h.nonminimal_len);
    }

    #[test]
    fn reserved_bits_and_opcodes_are_kept() {
        let Parsed::Done(h, _) = parse_header(&[0x73, 0x00]) else {
            panic!()
        };
        assert!(!h.fin && h.rsv1 && h.rsv2 && h.rsv3);
        assert_eq!(h.opcode, Opcode::Reserved(3));
    }

    #[test]
    fn mask_at_any_offset_matches_bytewise() {
        let mask = [0xa1, 0xb2, 0xc3, 0xd4];
        let data: Vec<u8> = (0..100u8).collect();
        for offset in 0..9u64 {
            let mut fast = data.clone();
            apply_mask(&mut fast, mask, offset);
            let slow: Vec<u8> = data
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ mask[((offset as usize) + i) % 4])
                .collect();
            assert_eq!(fast, slow, "offset {offset}");
        }
    }
}
