//! Frames wstap itself puts on the wire (closes in strict mode and at
//! shutdown, messages from the live view): their bytes and their events.
//! Masked toward the server, never compressed (RSV1 clear), so the
//! peers' permessage-deflate contexts stay intact.

use super::close_code;
use super::event::{Dir, FrameEvent};
use super::frame::{encode_frame, Opcode};
use super::preview;

/// A frame ready to write into direction `dir`, and the event that logs it.
#[derive(Debug, Clone)]
pub struct Injected {
    pub dir: Dir,
    pub wire: Vec<u8>,
    pub event: FrameEvent,
}

impl Injected {
    /// A data frame may only go between messages (RFC 6455 §5.4); control
    /// frames may go between any two frames.
    pub fn needs_message_boundary(&self) -> bool {
        !self.event.opcode.is_control()
    }
}

/// Builds a single-frame message or control frame. `mask` is used when the
/// frame travels to the server (clients must mask, RFC 6455 §5.3).
pub fn frame(
    dir: Dir,
    opcode: Opcode,
    payload: &[u8],
    mask: [u8; 4],
    max_preview: usize,
) -> Injected {
    let masked = dir == Dir::ClientToServer;
    let mut wire = Vec::with_capacity(payload.len() + 14);
    encode_frame(
        &mut wire,
        true,
        false,
        opcode,
        masked.then_some(mask),
        payload,
    );
    let shown = &payload[..payload.len().min(max_preview)];
    let (text, encoding) = if shown.is_empty() {
        (String::new(), super::event::Encoding::Utf8)
    } else {
        preview::render(shown, opcode == Opcode::Text, shown.len() < payload.len())
    };
    let mut event = FrameEvent {
        preview: text,
        encoding,
        truncated: shown.len() < payload.len(),
        injected: true,
        ..FrameEvent::new(dir, opcode, payload.len() as u64)
    };
    if opcode == Opcode::Close && payload.len() >= 2 {
        let code = u16::from_be_bytes([payload[0], payload[1]]);
        event.close_code = Some(code);
        event.close_name = Some(close_code::name(code).to_string());
        event.close_reason = Some(String::from_utf8_lossy(&payload[2..]).into_owned());
    }
    Injected { dir, wire, event }
}

/// A close frame with `code` and `reason` (the reason is cut to fit the
/// 125-byte control frame limit at a character boundary).
pub fn close(dir: Dir, code: u16, reason: &str, mask: [u8; 4], max_preview: usize) -> Injected {
    let mut cut = reason.len().min(123);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(&reason.as_bytes()[..cut]);
    frame(dir, Opcode::Close, &payload, mask, max_preview)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::event::ConnId;
    use crate::proto::stream::{StreamTap, TapConfig};

    #[test]
    fn injected_frames_decode_as_what_they_say() {
        for dir in [Dir::ClientToServer, Dir::ServerToClient] {
            let c = close(dir, 1001, &"é".repeat(100), [1, 2, 3, 4], 256);
            assert!(c.wire.len() <= 2 + 4 + 125);
            let mut tap = StreamTap::new(
                ConnId(1),
                dir,
                TapConfig {
                    max_preview: 256,
                    ..Default::default()
                },
            );
            let mut out = Vec::new();
            tap.feed(&c.wire, std::time::SystemTime::UNIX_EPOCH, &mut out);
            assert_eq!(out.len(), 1, "no violation: {out:?}");
            assert_eq!(c.event.close_code, Some(1001));
            assert_eq!(c.event.masked, dir == Dir::ClientToServer);
            let t = frame(dir, Opcode::Text, b"hi", [9, 9, 9, 9], 256);
            assert!(t.needs_message_boundary() && !c.needs_message_boundary());
            assert_eq!(t.event.preview, "hi");
        }
    }
}
