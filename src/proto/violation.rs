//! The ways a frame stream can break RFC 6455 / RFC 7692, and the finding
//! each becomes. Detection lives in `stream`; this module only names them.

use super::event::{Dir, Finding, Severity};
use super::frame::Opcode;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    ClientUnmasked,
    ServerMasked,
    /// RSV bits set that no negotiated extension defines.
    ReservedBits {
        rsv1: bool,
        rsv2: bool,
        rsv3: bool,
    },
    /// RSV1 (permessage-deflate) on a control or continuation frame.
    Rsv1Misplaced(Opcode),
    ControlTooLong(Opcode, u64),
    ControlFragmented(Opcode),
    ReservedOpcode(u8),
    OrphanContinuation,
    InterleavedMessage(Opcode),
    InvalidUtf8,
    CloseOneByte,
    InvalidCloseCode(u16),
    CloseReasonNotUtf8,
    DataAfterClose(Opcode),
    NonMinimalLength(u64),
    InflateFailed,
}

impl Violation {
    /// A small number per kind, so each kind is reported once per direction.
    pub fn kind(&self) -> u32 {
        match self {
            Violation::ClientUnmasked => 0,
            Violation::ServerMasked => 1,
            Violation::ReservedBits { .. } => 2,
            Violation::Rsv1Misplaced(_) => 3,
            Violation::ControlTooLong(..) => 4,
            Violation::ControlFragmented(_) => 5,
            Violation::ReservedOpcode(_) => 6,
            Violation::OrphanContinuation => 7,
            Violation::InterleavedMessage(_) => 8,
            Violation::InvalidUtf8 => 9,
            Violation::CloseOneByte => 10,
            Violation::InvalidCloseCode(_) => 11,
            Violation::CloseReasonNotUtf8 => 12,
            Violation::DataAfterClose(_) => 13,
            Violation::NonMinimalLength(_) => 14,
            Violation::InflateFailed => 15,
        }
    }

    /// What was seen, for the finding's `observed` field.
    pub fn observed(&self) -> String {
        match self {
            Violation::ClientUnmasked => "unmasked client frame".into(),
            Violation::ServerMasked => "masked server frame".into(),
            Violation::ReservedBits { rsv1, rsv2, rsv3 } => {
                let bits: Vec<&str> = [(*rsv1, "RSV1"), (*rsv2, "RSV2"), (*rsv3, "RSV3")]
                    .iter()
                    .filter(|(on, _)| *on)
                    .map(|(_, n)| *n)
                    .collect();
                format!("{} set without a negotiated extension", bits.join("+"))
            }
            Violation::Rsv1Misplaced(op) => format!("RSV1 set on a {op} frame"),
            Violation::ControlTooLong(op, len) => {
                format!("{op} frame of {len} bytes: control frame longer than 125 bytes")
            }
            Violation::ControlFragmented(op) => format!("fragmented {op} frame (FIN clear)"),
            Violation::ReservedOpcode(b) => format!("reserved opcode 0x{b:x}"),
            Violation::OrphanContinuation => {
                "continuation frame without a message to continue".into()
            }
            Violation::InterleavedMessage(op) => {
                format!("new {op} message before the previous fragmented message finished")
            }
            Violation::InvalidUtf8 => "invalid UTF-8 in a text message".into(),
            Violation::CloseOneByte => "close frame with a 1-byte payload".into(),
            Violation::InvalidCloseCode(c) => format!("invalid close code {c}"),
            Violation::CloseReasonNotUtf8 => "close reason is not valid UTF-8".into(),
            Violation::DataAfterClose(op) => format!("{op} frame after its sender's close frame"),
            Violation::NonMinimalLength(len) => {
                format!("payload length {len} not in its shortest encoding")
            }
            Violation::InflateFailed => "permessage-deflate payload does not inflate".into(),
        }
    }

    /// The rule and what to do, citing the RFC section.
    pub fn hint(&self) -> &'static str {
        match self {
            Violation::ClientUnmasked => "RFC 6455 §5.1: a client must mask every frame and a server must close with 1002 when it does not. The sender is not a conforming WebSocket client (a raw socket writer, or a hop that re-frames the stream).",
            Violation::ServerMasked => "RFC 6455 §5.1: a server must not mask its frames and a client must fail the connection when it does. Check the server library, or a hop that re-frames the stream.",
            Violation::ReservedBits { .. } => "RFC 6455 §5.2: RSV bits must be 0 unless a negotiated extension defines them. If the sender compresses, the handshake did not agree on permessage-deflate (a hop may have stripped Sec-WebSocket-Extensions).",
            Violation::Rsv1Misplaced(_) => "RFC 7692 §6.1: RSV1 marks a compressed message on its first frame only, never on continuation or control frames.",
            Violation::ControlTooLong(..) => "RFC 6455 §5.5: ping, pong and close frames carry at most 125 bytes. Send larger payloads as data messages.",
            Violation::ControlFragmented(_) => "RFC 6455 §5.5: control frames must not be fragmented (FIN must be set).",
            Violation::ReservedOpcode(_) => "RFC 6455 §5.2: opcodes 0x3-0x7 and 0xB-0xF are reserved; a receiver must fail the connection.",
            Violation::OrphanContinuation => "RFC 6455 §5.4: a continuation frame must follow a text or binary frame that had FIN clear.",
            Violation::InterleavedMessage(_) => "RFC 6455 §5.4: fragments of one message must not be interleaved with another message; finish the first with FIN.",
            Violation::InvalidUtf8 => "RFC 6455 §8.1: text messages must be valid UTF-8 and receivers close with 1007 otherwise. Send arbitrary bytes as binary messages.",
            Violation::CloseOneByte => "RFC 6455 §5.5.1: a close payload is empty or starts with a 2-byte status code.",
            Violation::InvalidCloseCode(_) => "RFC 6455 §7.4: 1005, 1006 and 1015 are for APIs only and never sent; 1004 and 1016-2999 are unassigned. Use 1000-1003, 1007-1014, or 3000-4999.",
            Violation::CloseReasonNotUtf8 => "RFC 6455 §5.5.1: the close reason must be UTF-8.",
            Violation::DataAfterClose(_) => "RFC 6455 §5.5.1: after sending a close frame an endpoint must not send more data frames.",
            Violation::NonMinimalLength(_) => "RFC 6455 §5.2: the payload length must use the shortest encoding (and a 64-bit length has its top bit clear).",
            Violation::InflateFailed => "RFC 7692 §7.2.2: a compressed message must inflate with the agreed parameters; the receiver fails the connection. Check that both ends agree on context takeover and window bits.",
        }
    }

    pub fn finding(&self, dir: Dir, frame_no: u64) -> Finding {
        Finding::new(
            "protocol-violation",
            Severity::Error,
            format!("{} sent {}", dir.sender(), self.observed()),
            self.hint(),
        )
        .observed(format!(
            "frame {frame_no} from the {}: {}",
            dir.sender(),
            self.observed()
        ))
        .view(dir.sender())
    }
}
