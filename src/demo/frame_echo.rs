//! A lean, streaming WebSocket echo for after the 101: every frame goes
//! back as it came (same FIN, RSV1 and opcode, payload unmasked as a
//! server must send it), pings are answered with pongs, and a close frame
//! is echoed and ends the connection. Fragmented messages come back
//! fragmented the same way.
//!
//! It is the benchmark's upstream: it reads with one large buffer and
//! writes the echoes of a whole read in one syscall, so it costs less than
//! the proxy it measures, and it never holds a payload (a 1 GiB message
//! streams through a buffer of one read). It does not judge the protocol:
//! an unmasked client frame is echoed as it is. The handshake is done by
//! [`super::echo`].

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::proto::decoder::{FrameDecoder, Piece};
use crate::proto::frame::{apply_mask, push_header, FrameHeader, Opcode};

/// Bytes read per syscall.
const READ_BUF: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum FrameEchoError {
    #[error("echo I/O failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the peer closed the connection in the middle of a frame")]
    Truncated,
}

/// Echoes frames on `io` until the peer closes (a close frame, or EOF
/// between frames). `already` holds bytes read past the handshake.
pub async fn serve_frames<S>(mut io: S, already: &[u8]) -> Result<(), FrameEchoError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut decoder = FrameDecoder::new();
    let mut current: Option<FrameHeader> = None;
    let mut out: Vec<u8> = Vec::with_capacity(READ_BUF + 1024);
    let mut buf = vec![0u8; READ_BUF];
    let mut closing = echo_chunk(already, &mut decoder, &mut current, &mut out);
    loop {
        if !out.is_empty() {
            io.write_all(&out).await?;
            out.clear();
        }
        if closing {
            io.shutdown().await?;
            return Ok(());
        }
        let n = io.read(&mut buf).await?;
        if n == 0 {
            return if decoder.at_boundary() {
                Ok(())
            } else {
                Err(FrameEchoError::Truncated)
            };
        }
        closing = echo_chunk(&buf[..n], &mut decoder, &mut current, &mut out);
    }
}

/// Appends the echo of `input` to `out`; true once a close frame ended.
fn echo_chunk(
    mut input: &[u8],
    decoder: &mut FrameDecoder,
    current: &mut Option<FrameHeader>,
    out: &mut Vec<u8>,
) -> bool {
    while let Some(piece) = decoder.next(&mut input) {
        match piece {
            Piece::Header(h) => {
                let opcode = if h.opcode == Opcode::Ping {
                    Opcode::Pong
                } else {
                    h.opcode
                };
                push_header(out, h.fin, h.rsv1, opcode, None, h.len);
                *current = Some(h);
            }
            Piece::Payload { data, offset } => {
                let start = out.len();
                out.extend_from_slice(data);
                if let Some(m) = current.as_ref().and_then(|h| h.mask) {
                    apply_mask(&mut out[start..], m, offset);
                }
            }
            Piece::End => {
                if current.take().is_some_and(|h| h.opcode == Opcode::Close) {
                    return true;
                }
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::frame::encode_frame;

    fn decode_all(wire: &[u8]) -> Vec<(FrameHeader, Vec<u8>)> {
        let mut d = FrameDecoder::new();
        let mut frames = Vec::new();
        let mut input = wire;
        let mut cur: Option<(FrameHeader, Vec<u8>)> = None;
        while let Some(p) = d.next(&mut input) {
            match p {
                Piece::Header(h) => cur = Some((h, Vec::new())),
                Piece::Payload { data, .. } => cur.as_mut().expect("header").1.extend(data),
                Piece::End => frames.push(cur.take().expect("header")),
            }
        }
        frames
    }

    #[test]
    fn frames_come_back_unmasked_split_anywhere() {
        let mut wire = Vec::new();
        let mask = Some([0x11, 0x22, 0x33, 0x44]);
        encode_frame(&mut wire, false, false, Opcode::Text, mask, b"hello ");
        encode_frame(&mut wire, true, false, Opcode::Continuation, mask, b"world");
        encode_frame(&mut wire, true, false, Opcode::Ping, mask, b"p");
        encode_frame(&mut wire, true, true, Opcode::Binary, mask, &[7u8; 70_000]);
        encode_frame(&mut wire, true, false, Opcode::Close, mask, &[0x03, 0xe8]);
        for chunk in [1usize, 3, 1500, wire.len()] {
            let mut d = FrameDecoder::new();
            let mut cur = None;
            let mut out = Vec::new();
            let mut closed = false;
            for part in wire.chunks(chunk) {
                assert!(!closed, "closed before the last chunk");
                closed = echo_chunk(part, &mut d, &mut cur, &mut out);
            }
            assert!(closed, "chunk {chunk}");
            let frames = decode_all(&out);
            let summary: Vec<_> = frames
                .iter()
                .map(|(h, p)| (h.opcode, h.fin, h.rsv1, h.mask, p.len()))
                .collect();
            assert_eq!(
                summary,
                vec![
                    (Opcode::Text, false, false, None, 6),
                    (Opcode::Continuation, true, false, None, 5),
                    (Opcode::Pong, true, false, None, 1),
                    (Opcode::Binary, true, true, None, 70_000),
                    (Opcode::Close, true, false, None, 2),
                ],
                "chunk {chunk}"
            );
            assert_eq!(frames[0].1, b"hello ");
            assert_eq!(frames[1].1, b"world");
            assert!(frames[3].1.iter().all(|&b| b == 7));
            assert_eq!(frames[4].1, [0x03, 0xe8]);
        }
    }
}
