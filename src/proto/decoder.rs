//! The incremental frame splitter: cuts a byte stream, split anywhere, into
//! frame headers and payload slices without copying or holding payloads.
//! It only finds boundaries; unmasking, previews and rules live in `stream`.

use super::frame::{parse_header, FrameHeader, Parsed, MAX_HEADER_LEN};

/// One step of the stream, borrowed from the input.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece<'a> {
    /// A complete frame header.
    Header(FrameHeader),
    /// Payload bytes as on the wire (still masked), starting at `offset`
    /// within the current frame's payload.
    Payload { data: &'a [u8], offset: u64 },
    /// The current frame's payload is complete.
    End,
}

#[derive(Debug, Clone)]
struct Current {
    header: FrameHeader,
    received: u64,
}

/// Splits one direction of a WebSocket stream into frames. Holds at most a
/// partial header (14 bytes): never a payload.
#[derive(Debug, Clone, Default)]
pub struct FrameDecoder {
    partial: [u8; MAX_HEADER_LEN],
    partial_len: usize,
    current: Option<Current>,
}

impl FrameDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// True between frames: no partial header buffered, no payload pending.
    /// Frames can be inserted into the stream only here.
    pub fn at_boundary(&self) -> bool {
        self.partial_len == 0 && self.current.is_none()
    }

    /// The frame being received, if its header is complete.
    pub fn current(&self) -> Option<(&FrameHeader, u64)> {
        self.current.as_ref().map(|c| (&c.header, c.received))
    }

    /// Bytes of a header received so far when the stream stopped inside one.
    pub fn partial_header_len(&self) -> usize {
        self.partial_len
    }

    /// Counts up to `n` payload bytes of the current frame as received
    /// without being given them (they went past the tap); returns how many.
    pub fn skip_payload(&mut self, n: u64) -> u64 {
        let Some(cur) = &mut self.current else {
            return 0;
        };
        let n = n.min(cur.header.len - cur.received);
        cur.received += n;
        n
    }

    /// Takes the next piece from the front of `input`, advancing it.
    /// `None` means `input` is exhausted (any partial header is kept).
    pub fn next<'a>(&mut self, input: &mut &'a [u8]) -> Option<Piece<'a>> {
        if let Some(cur) = &mut self.current {
            let remaining = cur.header.len - cur.received;
            if remaining == 0 {
                self.current = None;
                return Some(Piece::End);
            }
            if input.is_empty() {
                return None;
            }
            let n = remaining.min(input.len() as u64) as usize;
            let (data, rest) = input.split_at(n);
            *input = rest;
            let offset = cur.received;
            cur.received += n as u64;
            return Some(Piece::Payload { data, offset });
        }
        if input.is_empty() {
            return None;
        }
        if self.partial_len == 0 {
            match parse_header(input) {
                Parsed::Done(header, used) => {
                    *input = &input[used..];
                    self.current = Some(Current {
                        header,
                        received: 0,
                    });
                    Some(Piece::Header(header))
                }
                Parsed::Incomplete => {
                    self.partial[..input.len()].copy_from_slice(input);
                    self.partial_len = input.len();
                    *input = &[];
                    None
                }
            }
        } else {
            let take = (MAX_HEADER_LEN - self.partial_len).min(input.len());
            self.partial[self.partial_len..self.partial_len + take].copy_from_slice(&input[..take]);
            match parse_header(&self.partial[..self.partial_len + take]) {
                Parsed::Done(header, used) => {
                    *input = &input[used - self.partial_len..];
                    self.partial_len = 0;
                    self.current = Some(Current {
                        header,
                        received: 0,
                    });
                    Some(Piece::Header(header))
                }
                Parsed::Incomplete => {
                    self.partial_len += take;
                    *input = &input[take..];
                    None
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::frame::{apply_mask, encode_frame, Opcode};

    /// Runs the decoder over `wire` cut into the given chunk sizes and
    /// returns (header, unmasked payload) per frame.
    fn decode(wire: &[u8], cuts: &[usize]) -> Vec<(FrameHeader, Vec<u8>)> {
        let mut d = FrameDecoder::new();
        let mut frames = Vec::new();
        let mut cur: Option<(FrameHeader, Vec<u8>)> = None;
        let mut pos = 0;
        let mut i = 0;
        while pos < wire.len() {
            let n = cuts[i % cuts.len()].max(1).min(wire.len() - pos);
            i += 1;
            let mut input = &wire[pos..pos + n];
            pos += n;
            while let Some(p) = d.next(&mut input) {
                match p {
                    Piece::Header(h) => cur = Some((h, Vec::new())),
                    Piece::Payload { data, offset } => {
                        let (h, buf) = cur.as_mut().expect("payload before header");
                        assert_eq!(offset, buf.len() as u64);
                        let mut chunk = data.to_vec();
                        if let Some(m) = h.mask {
                            apply_mask(&mut chunk, m, offset);
                        }
                        buf.extend_from_slice(&chunk);
                    }
                    Piece::End => frames.push(cur.take().expect("end before header")),
                }
            }
            assert!(input.is_empty());
        }
        // a zero-length final frame ends on the next call even with no input
        let mut empty: &[u8] = &[];
        while let Some(p) = d.next(&mut empty) {
            if p == Piece::End {
                frames.push(cur.take().expect("end before header"));
            }
        }
        assert!(d.at_boundary());
        frames
    }

    /// A frame to encode: opcode, payload, mask.
    type Spec = (Opcode, Vec<u8>, Option<[u8; 4]>);

    fn sample() -> (Vec<u8>, Vec<Spec>) {
        let specs = vec![
            (Opcode::Text, b"hello".to_vec(), Some([1, 2, 3, 4])),
            (Opcode::Binary, vec![], None),
            (Opcode::Ping, b"p".to_vec(), None),
            (Opcode::Binary, vec![9u8; 126], Some([9, 9, 9, 9])),
            (Opcode::Pong, vec![], Some([5, 6, 7, 8])),
            (Opcode::Binary, vec![3u8; 65536], None),
            (Opcode::Close, vec![0x03, 0xe8], None),
        ];
        let mut wire = Vec::new();
        for (op, p, m) in &specs {
            encode_frame(&mut wire, true, false, *op, *m, p);
        }
        (wire, specs)
    }

    #[test]
    fn every_split_yields_the_same_frames() {
        let (wire, specs) = sample();
        for cuts in [
            vec![1],
            vec![2],
            vec![3, 7],
            vec![13],
            vec![1500],
            vec![wire.len()],
        ] {
            let frames = decode(&wire, &cuts);
            assert_eq!(frames.len(), specs.len(), "cuts {cuts:?}");
            for ((h, payload), (op, p, m)) in frames.iter().zip(&specs) {
                assert_eq!(h.opcode, *op);
                assert_eq!(h.mask, *m);
                assert_eq!(payload, p);
            }
        }
    }

    #[test]
    fn split_at_every_byte_boundary() {
        let mut wire = Vec::new();
        encode_frame(
            &mut wire,
            false,
            false,
            Opcode::Text,
            Some([7, 7, 7, 7]),
            b"frag",
        );
        encode_frame(
            &mut wire,
            true,
            false,
            Opcode::Continuation,
            None,
            &[1; 300],
        );
        for cut in 1..wire.len() {
            let mut d = FrameDecoder::new();
            let mut payload_bytes = 0u64;
            let mut ends = 0;
            for part in [&wire[..cut], &wire[cut..]] {
                let mut input = part;
                while let Some(p) = d.next(&mut input) {
                    match p {
                        Piece::Payload { data, .. } => payload_bytes += data.len() as u64,
                        Piece::End => ends += 1,
                        Piece::Header(_) => {}
                    }
                }
            }
            let mut empty: &[u8] = &[];
            while let Some(p) = d.next(&mut empty) {
                if p == Piece::End {
                    ends += 1;
                }
            }
            assert_eq!((payload_bytes, ends), (304, 2), "cut at {cut}");
        }
    }

    #[test]
    fn boundary_tracking() {
        let mut d = FrameDecoder::new();
        assert!(d.at_boundary());
        let mut input: &[u8] = &[0x81];
        assert_eq!(d.next(&mut input), None);
        assert!(!d.at_boundary());
        assert_eq!(d.partial_header_len(), 1);
        let mut input: &[u8] = &[0x02, b'o'];
        assert!(matches!(d.next(&mut input), Some(Piece::Header(_))));
        assert!(matches!(d.next(&mut input), Some(Piece::Payload { .. })));
        assert!(!d.at_boundary());
        assert_eq!(d.next(&mut input), None);
        let mut input: &[u8] = b"k";
        assert!(matches!(d.next(&mut input), Some(Piece::Payload { .. })));
        assert_eq!(d.next(&mut input), Some(Piece::End));
        assert!(d.at_boundary());
    }
}
