//! The benchmark's "log floor" relay: the bare relay plus the least that
//! logging every frame can cost. It is the yardstick for wstap `--json`,
//! not a design: it knows the bench's traffic and writes fixed lines.
//!
//! Each direction forwards a read first (as wstap does), then finds the
//! frames in it with wstap's own decoder and appends one line per frame,
//! the size of wstap's line for that frame (its fields, the preview's
//! bytes, a timestamp), to a 64 KiB buffer that the relay thread writes to
//! the file itself. No events, no channel, no sink thread, no clock, no
//! escaping: whatever wstap `--json` costs above this row is its design,
//! and what this row costs above the bare relay is the log's bytes alone.
//! Its socket wrapper, which tells the relay thread's busy-polling about
//! reads as wstap's reads do, serves the bare relay too.

use std::io::Write;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use wstap::proto::decoder::{FrameDecoder, Piece};

/// A frame line as wstap writes it for the bench's messages, around the
/// sender, the length and the preview.
const HEAD: &[u8] = br#"{"ts":"2026-11-26T10:19:33.886346Z","conn":1,"event":"frame","from":""#;
const MID: &[u8] =
    br#"","opcode":"binary","fin":true,"rsv1":false,"rsv2":false,"rsv3":false,"masked":true,"len":"#;
const PREVIEW: &[u8] = br#","preview":""#;
const TAIL: &[u8] = br#"","encoding":"utf8","truncated":false,"compressed":false}"#;
/// wstap's default preview limit.
const PREVIEW_MAX: u64 = 256;
const FLUSH_AT: usize = 64 * 1024;

/// Relays between `client` and `up` both ways until both are done,
/// logging each frame to `log`.
pub async fn relay(client: TcpStream, up: TcpStream, log: Arc<std::fs::File>) {
    let (cr, cw) = client.into_split();
    let (ur, uw) = up.into_split();
    tokio::join!(
        pump(Noted(cr), uw, log.clone(), "client"),
        pump(Noted(ur), cw, log, "server")
    );
}

async fn pump(
    mut rd: Noted<OwnedReadHalf>,
    mut wr: OwnedWriteHalf,
    log: Arc<std::fs::File>,
    from: &str,
) {
    let mut buf = vec![0u8; wstap::proxy::io::READ_CAPACITY];
    let mut out: Vec<u8> = Vec::with_capacity(FLUSH_AT + 2 * 1024);
    let preview = [b'0'; PREVIEW_MAX as usize];
    let mut frames = FrameDecoder::new();
    // the last four bytes seen while the upgrade head passes
    let mut head_end = [0u8; 4];
    let mut in_head = true;
    loop {
        let n = match rd.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if wr.write_all(&buf[..n]).await.is_err() {
            break;
        }
        let mut input = &buf[..n];
        while in_head {
            let Some((&b, rest)) = input.split_first() else {
                break;
            };
            input = rest;
            head_end = [head_end[1], head_end[2], head_end[3], b];
            in_head = &head_end != b"\r\n\r\n";
        }
        while let Some(piece) = frames.next(&mut input) {
            if let Piece::Header(h) = piece {
                out.extend_from_slice(HEAD);
                out.extend_from_slice(from.as_bytes());
                out.extend_from_slice(MID);
                out.extend_from_slice(itoa::Buffer::new().format(h.len).as_bytes());
                out.extend_from_slice(PREVIEW);
                out.extend_from_slice(&preview[..h.len.min(PREVIEW_MAX) as usize]);
                out.extend_from_slice(TAIL);
                out.push(b'\n');
            }
        }
        if out.len() >= FLUSH_AT {
            write_out(&log, &mut out);
        }
    }
    write_out(&log, &mut out);
    let _ = wr.shutdown().await;
}

fn write_out(log: &std::fs::File, out: &mut Vec<u8>) {
    if let Err(e) = (&*log).write_all(out) {
        eprintln!("log floor: writing the log: {e}");
    }
    out.clear();
}

/// A socket (or its read half) that counts each read that returned data
/// for the relay thread's busy-polling, as wstap's own reads do; the bare
/// relay's `copy_bidirectional` and the floor's pumps read through it.
pub struct Noted<T>(pub T);

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Noted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.0).poll_read(cx, buf);
        if buf.filled().len() > before {
            wstap::proxy::busy_poll::note_work();
        }
        r
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Noted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
