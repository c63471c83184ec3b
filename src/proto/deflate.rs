//! permessage-deflate (RFC 7692) inflation for previews. One raw-deflate
//! context per direction; output goes through a fixed buffer to a callback,
//! so memory stays at the 32 KiB window plus that buffer whatever the size.

use flate2::{Decompress, FlushDecompress, Status};

/// RFC 7692 §7.2.2: the sender removed this tail from every message.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];
const OUT_BUF: usize = 16 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("payload does not inflate: {0}")]
pub struct InflateError(String);

/// Inflates the messages of one direction.
pub struct Inflater {
    d: Decompress,
    /// `*_no_context_takeover`: the sender resets its context per message.
    reset_per_message: bool,
    out: Box<[u8]>,
}

impl std::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inflater")
            .field("reset_per_message", &self.reset_per_message)
            .finish()
    }
}

impl Inflater {
    /// `max_window_bits` needs no setting: a 32 KiB-window inflater reads
    /// streams made with any smaller window.
    pub fn new(no_context_takeover: bool) -> Self {
        Inflater {
            d: Decompress::new(false),
            reset_per_message: no_context_takeover,
            out: vec![0u8; OUT_BUF].into_boxed_slice(),
        }
    }

    /// Inflates compressed payload bytes of the current message, handing
    /// the output to `sink` in pieces.
    pub fn feed(
        &mut self,
        mut input: &[u8],
        sink: &mut dyn FnMut(&[u8]),
    ) -> Result<(), InflateError> {
        // A call that filled the buffer may have left output for this input
        // inside the inflater: it is drained now, not handed over with the
        // next input, so what `sink` sees per call does not depend on how
        // fragments or reads split the stream.
        let mut full = false;
        while !input.is_empty() || full {
            let before_in = self.d.total_in();
            let before_out = self.d.total_out();
            let result = self
                .d
                .decompress(input, &mut self.out, FlushDecompress::Sync);
            let used = (self.d.total_in() - before_in) as usize;
            let made = (self.d.total_out() - before_out) as usize;
            input = &input[used.min(input.len())..];
            // Output made before an error is handed on too, so what a
            // caller sees does not depend on how the input was split.
            if made > 0 {
                sink(&self.out[..made]);
            }
            let status = result.map_err(|e| InflateError(e.to_string()))?;
            full = made == self.out.len();
            if status == Status::StreamEnd {
                // A BFINAL block ended the stream; what follows starts anew
                // (RFC 7692 §7.2.3.3 allows a sender to do this).
                self.d.reset(false);
            } else if used == 0 && made == 0 && !input.is_empty() {
                return Err(InflateError("inflater made no progress".into()));
            }
        }
        Ok(())
    }

    /// Ends a message: feeds the elided tail, flushes what it releases, and
    /// resets the context when the sender does not keep it.
    pub fn end_message(&mut self, sink: &mut dyn FnMut(&[u8])) -> Result<(), InflateError> {
        self.feed(&TAIL, sink)?;
        // drain anything still held back
        loop {
            let before_out = self.d.total_out();
            self.d
                .decompress(&[], &mut self.out, FlushDecompress::Sync)
                .map_err(|e| InflateError(e.to_string()))?;
            let made = (self.d.total_out() - before_out) as usize;
            if made == 0 {
                break;
            }
            sink(&self.out[..made]);
        }
        if self.reset_per_message {
            self.d.reset(false);
        }
        Ok(())
    }

    /// Starts over, e.g. after a message whose inflation was abandoned.
    pub fn reset(&mut self) {
        self.d.reset(false);
    }

    pub fn resets_per_message(&self) -> bool {
        self.reset_per_message
    }
}

/// Compresses messages the way a permessage-deflate sender does; used by
/// tests and the demo to produce real compressed frames.
pub struct Deflater {
    c: flate2::Compress,
    no_context_takeover: bool,
}

impl Deflater {
    pub fn new(no_context_takeover: bool) -> Self {
        Deflater {
            c: flate2::Compress::new(flate2::Compression::default(), false),
            no_context_takeover,
        }
    }

    /// One message's compressed payload, with the trailing `00 00 ff ff`
    /// removed (RFC 7692 §7.2.1).
    pub fn compress(&mut self, msg: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(msg.len() / 2 + 64);
        let mut input = msg;
        loop {
            out.reserve(4096);
            let before_in = self.c.total_in();
            // compress_vec only writes into spare capacity
            let _ = self
                .c
                .compress_vec(input, &mut out, flate2::FlushCompress::Sync);
            input = &input[(self.c.total_in() - before_in) as usize..];
            if input.is_empty() && out.ends_with(&TAIL) {
                break;
            }
        }
        out.truncate(out.len() - TAIL.len());
        if self.no_context_takeover {
            self.c.reset();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inflate_all(inf: &mut Inflater, parts: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in parts {
            inf.feed(p, &mut |b| out.extend_from_slice(b)).unwrap();
        }
        inf.end_message(&mut |b| out.extend_from_slice(b)).unwrap();
        out
    }

    #[test]
    fn messages_round_trip_with_and_without_context_takeover() {
        for no_ctx in [false, true] {
            let mut def = Deflater::new(no_ctx);
            let mut inf = Inflater::new(no_ctx);
            for i in 0..20 {
                let msg = format!("message {i}: {}", "the same words again ".repeat(i * 10));
                let wire = def.compress(msg.as_bytes());
                // fed in awkward pieces, as fragments and reads would cut it
                let parts: Vec<&[u8]> = wire.chunks(7).collect();
                assert_eq!(
                    inflate_all(&mut inf, &parts),
                    msg.as_bytes(),
                    "no_ctx={no_ctx} i={i}"
                );
            }
        }
    }

    #[test]
    fn large_output_passes_through_the_fixed_buffer() {
        let msg = vec![b'a'; 5 * 1024 * 1024];
        let wire = Deflater::new(false).compress(&msg);
        assert!(wire.len() < 64 * 1024);
        let mut inf = Inflater::new(false);
        let mut n = 0usize;
        inf.feed(&wire, &mut |b| n += b.len()).unwrap();
        inf.end_message(&mut |b| n += b.len()).unwrap();
        assert_eq!(n, msg.len());
    }

    #[test]
    fn a_feed_hands_on_all_the_output_its_input_allows() {
        let msg = vec![b'a'; 1024 * 1024];
        let wire = Deflater::new(false).compress(&msg);
        let mut inf = Inflater::new(false);
        let mut n = 0usize;
        inf.feed(&wire, &mut |b| n += b.len()).unwrap();
        // not held back for the next fragment (or the message's end)
        assert_eq!(n, msg.len());
    }

    #[test]
    fn garbage_is_an_error() {
        let mut inf = Inflater::new(false);
        assert!(inf.feed(&[0xff; 32], &mut |_| {}).is_err());
    }
}
