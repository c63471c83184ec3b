//! Turns payload bytes into an event preview: UTF-8 when it is text a person
//! can read, hex otherwise. Never lossy: a preview is either the exact text
//! or the exact bytes. Preview strings are reused per thread (see
//! [`recycle`]): a frame event's one allocation otherwise.

use std::cell::RefCell;

use super::event::{Encoding, Event, EventKind};

/// Renders `bytes` (already unmasked/inflated). `text` says the payload
/// belongs to a text message; `cut` that `bytes` stops before the payload
/// ends, so a character split at the cut may be dropped.
pub fn render(bytes: &[u8], text: bool, cut: bool) -> (String, Encoding) {
    let mut out = String::new();
    let encoding = render_into(bytes, text, cut, &mut out);
    (out, encoding)
}

/// [`render`] into `out` (cleared first).
fn render_into(bytes: &[u8], text: bool, cut: bool, out: &mut String) -> Encoding {
    out.clear();
    let s = match std::str::from_utf8(bytes) {
        Ok(s) => Some(s),
        Err(e) if cut && e.error_len().is_none() => {
            // the preview window ended inside a multi-byte character
            std::str::from_utf8(&bytes[..e.valid_up_to()]).ok()
        }
        Err(_) => None,
    };
    match s {
        Some(s) if text || readable(s) => {
            out.push_str(s);
            Encoding::Utf8
        }
        _ => {
            hex_into(bytes, out);
            Encoding::Hex
        }
    }
}

/// Preview strings a thread keeps for its next frames, at most; and the
/// largest one kept: the hex of a default (256-byte) preview, so a pooled
/// string never holds more room than a default preview needs. Bounds the
/// pool at 128 KiB per thread.
const KEEP: usize = 256;
const KEEP_CAPACITY: usize = 512;

thread_local! {
    static SPARE: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

/// [`render`] into a string this thread used before, when it has one.
/// Small frames come at wire speed in batches of hundreds, more than the
/// allocator's per-thread cache holds, so each one's preview cost a trip
/// into the allocator's shared lists.
pub fn render_pooled(bytes: &[u8], text: bool, cut: bool) -> (String, Encoding) {
    let mut out = SPARE.with(|s| s.borrow_mut().pop()).unwrap_or_default();
    let encoding = render_into(bytes, text, cut, &mut out);
    (out, encoding)
}

/// Empties `evs`, keeping the frame events' preview strings for
/// [`render_pooled`] on this thread. For events that end here, once
/// encoded; events handed to another thread are dropped there as usual.
pub fn recycle(evs: &mut Vec<Event>) {
    SPARE.with(|s| {
        let mut s = s.borrow_mut();
        // in place: an event is a few hundred bytes to move
        for ev in evs.iter_mut() {
            if s.len() >= KEEP {
                break;
            }
            if let EventKind::Frame(f) = &mut ev.kind {
                if worth_keeping(&f.preview) {
                    s.push(std::mem::take(&mut f.preview));
                }
            }
        }
    });
    evs.clear();
}

fn worth_keeping(s: &String) -> bool {
    (1..=KEEP_CAPACITY).contains(&s.capacity())
}

/// Keeps a preview string from [`render_pooled`] for this thread's next
/// frames, once its event is written.
pub fn give_back(s: String) {
    if worth_keeping(&s) {
        SPARE.with(|spare| {
            let mut spare = spare.borrow_mut();
            if spare.len() < KEEP {
                spare.push(s);
            }
        });
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
    let mut out = String::new();
    hex_into(bytes, &mut out);
    out
}

/// Appends `bytes` in lowercase hex to `out`.
fn hex_into(bytes: &[u8], out: &mut String) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    out.reserve(bytes.len() * 2);
    // bytes, not chars: every binary frame's preview comes through here
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 0xf) as usize] as char);
    }
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

    fn frame_with(preview: String) -> Event {
        use super::super::event::{ConnId, Dir, FrameEvent};
        use super::super::frame::Opcode;
        let mut f = FrameEvent::new(Dir::ClientToServer, Opcode::Text, 1);
        f.preview = preview;
        Event::conn(std::time::SystemTime::now(), ConnId(1), EventKind::Frame(f))
    }

    #[test]
    fn recycled_previews_are_reused_and_the_pool_is_bounded() {
        // a thread of its own: the pool is per thread
        std::thread::spawn(|| {
            let (first, _) = render_pooled(b"hello", true, false);
            let at = first.as_ptr();
            let mut evs = vec![frame_with(first)];
            recycle(&mut evs);
            assert!(evs.is_empty());
            let (again, enc) = render_pooled(b"bye", true, false);
            assert_eq!((again.as_str(), enc), ("bye", Encoding::Utf8));
            assert_eq!(again.as_ptr(), at, "the recycled string is used again");
            // too large to keep, and never more than KEEP
            let mut evs: Vec<Event> = [frame_with(String::with_capacity(KEEP_CAPACITY + 1))]
                .into_iter()
                .chain((0..KEEP + 10).map(|_| frame_with(String::with_capacity(64))))
                .collect();
            recycle(&mut evs);
            let kept = SPARE.with(|s| s.borrow().len());
            assert_eq!(kept, KEEP);
            assert!(SPARE.with(|s| s.borrow().iter().all(|p| p.capacity() <= KEEP_CAPACITY)));
            // a pooled string holding older text renders only the new
            let (hex, enc) = render_pooled(&[0, 0xff], false, false);
            assert_eq!((hex.as_str(), enc), ("00ff", Encoding::Hex));
        })
        .join()
        .unwrap();
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
