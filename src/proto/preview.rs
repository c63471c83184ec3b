//! Turns payload bytes into an event preview: UTF-8 when it is text a person
//! can read, hex otherwise. Never lossy: a preview is either the exact text
//! or the exact bytes.

use super::event::Encoding;

/// Renders `bytes` (already unmasked/inflated). `text` says the payload
/// belongs to a text message; `cut` that `bytes` stops before the payload
/// ends, so a character split at the cut may be dropped.
pub fn render(bytes: &[u8], text: bool, cut: bool) -> (String, Encoding) {
    let s = match std::str::from_utf8(bytes) {
        Ok(s) => Some(s),
        Err(e) if cut && e.error_len().is_none() => {
            // the preview window ended inside a multi-byte character
            std::str::from_utf8(&bytes[..e.valid_up_to()]).ok()
        }
        Err(_) => None,
    };
    match s {
        Some(s) if text || readable(s) => (s.to_string(), Encoding::Utf8),
        _ => (hex(bytes), Encoding::Hex),
    }
}

/// Binary payloads are shown as text only when nothing in them is a
/// control character other than tab and line breaks.
///
/// Byte by byte (every small binary frame comes through here): in valid
/// UTF-8 the control characters (category Cc, what `char::is_control`
/// tests) are the bytes below 0x20 and 0x7f, and U+0080..=U+009F, encoded
/// as 0xc2 followed by 0x80..=0x9f (0xc2 is never a continuation byte).
fn readable(s: &str) -> bool {
    let b = s.as_bytes();
    // Printable ASCII (0x20..0x7f) needs no closer look: skip it 16 bytes
    // at a time (a loop without an early exit, which compiles to SIMD).
    // The skipped bytes are ASCII, so `i` is at a character boundary.
    let mut i = 0;
    for chunk in b.chunks_exact(16) {
        let printable = chunk
            .iter()
            .fold(true, |ok, &x| ok & (x.wrapping_sub(0x20) < 0x5f));
        if !printable {
            break;
        }
        i += 16;
    }
    while i < b.len() {
        match b[i] {
            b'\t' | b'\n' | b'\r' => {}
            0..0x20 | 0x7f => return false,
            0xc2 if matches!(b.get(i + 1), Some(0x80..=0x9f)) => return false,
            _ => {}
        }
        i += 1;
    }
    true
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    // bytes, not chars: every binary frame's preview comes through here
    let mut out = Vec::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.extend_from_slice(&[DIGITS[(b >> 4) as usize], DIGITS[(b & 0xf) as usize]]);
    }
    String::from_utf8(out).unwrap_or_default()
}

/// Inverse of [`hex`], for reading logs back.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition the byte loop stands for.
    fn readable_by_chars(s: &str) -> bool {
        !s.chars()
            .any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
    }

    #[test]
    fn readable_matches_char_is_control() {
        for c in (0..=0x10ffffu32).filter_map(char::from_u32) {
            for s in [c.to_string(), format!("a{c}b"), format!("{c}\u{85}")] {
                assert_eq!(readable(&s), readable_by_chars(&s), "{s:?}");
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn readable_matches_on_any_text(s in ".*", bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            proptest::prop_assert_eq!(readable(&s), readable_by_chars(&s));
            let lossy = String::from_utf8_lossy(&bytes);
            proptest::prop_assert_eq!(readable(&lossy), readable_by_chars(&lossy));
        }
    }

    #[test]
    fn text_binary_and_cut_characters() {
        assert_eq!(render(b"hi", true, false), ("hi".into(), Encoding::Utf8));
        assert_eq!(render(b"hi", false, false), ("hi".into(), Encoding::Utf8));
        assert_eq!(
            render(&[0, 1, 0xff], false, false),
            ("0001ff".into(), Encoding::Hex)
        );
        assert_eq!(
            render(b"a\x01", false, false),
            ("6101".into(), Encoding::Hex)
        );
        assert_eq!(
            render(b"a\x01", true, false),
            ("a\x01".into(), Encoding::Utf8)
        );
        // "é" is c3 a9: cut after c3
        assert_eq!(render(b"ab\xc3", true, true), ("ab".into(), Encoding::Utf8));
        assert_eq!(
            render(b"ab\xc3", true, false),
            ("6162c3".into(), Encoding::Hex)
        );
        assert_eq!(unhex("6162c3"), Some(b"ab\xc3".to_vec()));
        assert_eq!(unhex("6"), None);
    }
}
