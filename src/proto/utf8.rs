//! Incremental UTF-8 validation across arbitrary splits (frames, fragments,
//! reads), as RFC 6455 §8.1 asks of text messages. Holds at most 3 bytes.

/// Validates a byte stream fed in pieces.
#[derive(Debug, Clone, Default)]
pub struct Utf8Validator {
    carry: [u8; 4],
    carry_len: usize,
}

/// Width of a UTF-8 sequence from its lead byte; 0 for an invalid lead.
fn width(lead: u8) -> usize {
    match lead {
        0x00..=0x7f => 1,
        0xc2..=0xdf => 2,
        0xe0..=0xef => 3,
        0xf0..=0xf4 => 4,
        _ => 0,
    }
}

impl Utf8Validator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds the next bytes; `false` once the stream cannot be valid UTF-8.
    pub fn feed(&mut self, mut data: &[u8]) -> bool {
        if self.carry_len > 0 {
            let need = width(self.carry[0]);
            while self.carry_len < need && !data.is_empty() {
                self.carry[self.carry_len] = data[0];
                self.carry_len += 1;
                data = &data[1..];
                // reject as soon as the partial sequence is impossible
                if let Err(e) = std::str::from_utf8(&self.carry[..self.carry_len]) {
                    if e.error_len().is_some() {
                        return false;
                    }
                }
            }
            if self.carry_len < need {
                return true;
            }
            if std::str::from_utf8(&self.carry[..need]).is_err() {
                return false;
            }
            self.carry_len = 0;
        }
        match std::str::from_utf8(data) {
            Ok(_) => true,
            Err(e) if e.error_len().is_none() => {
                let tail = &data[e.valid_up_to()..];
                self.carry[..tail.len()].copy_from_slice(tail);
                self.carry_len = tail.len();
                true
            }
            Err(_) => false,
        }
    }

    /// True when the stream so far ends on a character boundary.
    pub fn is_complete(&self) -> bool {
        self.carry_len == 0
    }

    pub fn reset(&mut self) {
        self.carry_len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_all_splits(bytes: &[u8]) -> bool {
        let whole = std::str::from_utf8(bytes).is_ok();
        for cut in 0..=bytes.len() {
            for cut2 in cut..=bytes.len() {
                let mut v = Utf8Validator::new();
                let ok = v.feed(&bytes[..cut])
                    && v.feed(&bytes[cut..cut2])
                    && v.feed(&bytes[cut2..])
                    && v.is_complete();
                assert_eq!(ok, whole, "{bytes:?} cut {cut}/{cut2}");
            }
        }
        whole
    }

    #[test]
    fn agrees_with_std_at_every_split() {
        assert!(check_all_splits("héllo €𝄞 wörld".as_bytes()));
        assert!(!check_all_splits(b"ab\xc3"));
        assert!(!check_all_splits(b"\xed\xa0\x80")); // surrogate
        assert!(!check_all_splits(b"\xf4\x90\x80\x80")); // > U+10FFFF
        assert!(!check_all_splits(b"a\xffb"));
        assert!(!check_all_splits(b"\xe2\x82"));
    }
}
