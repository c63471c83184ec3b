//! Streams one HTTP message body from a reader to a writer, byte for byte,
//! stopping exactly where the framing says the message ends. Nothing is
//! decoded or held beyond the read buffer; a chunked body stays chunked.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::io::Inbound;
use crate::proto::http::{BodyKind, ChunkedScanner, FramingError};

#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("reading the body failed: {0}")]
    Read(#[source] io::Error),
    #[error("forwarding the body failed: {0}")]
    Write(#[source] io::Error),
    #[error(transparent)]
    Framing(#[from] FramingError),
    #[error("the body ended after {got} bytes; {expected} were announced")]
    Truncated { expected: String, got: u64 },
    #[error("no more of the body for {after:?} ({got} bytes had come)")]
    Stalled { after: Duration, got: u64 },
}

/// Up to `limit` first bytes of a body, kept for the log.
pub struct Capture<'a> {
    pub buf: &'a mut Vec<u8>,
    pub limit: usize,
}

/// Copies one body; returns the bytes copied. With `idle`, a wait that
/// long for the next bytes ends it ([`BodyError::Stalled`]).
pub async fn copy_body<R, W>(
    src: &mut Inbound<R>,
    dst: &mut W,
    kind: BodyKind,
    capture: Option<Capture<'_>>,
    idle: Option<Duration>,
) -> Result<u64, BodyError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    BodyCopy::new(kind).run(src, dst, capture, idle).await
}

/// Where the copy of one body stands, kept outside the copying future so
/// that a copy stopped at any await goes on later from where it was: a
/// request body the upstream answered before it was all sent goes on
/// beside the answer (a server may stream its answer as it reads).
pub struct BodyCopy {
    kind: BodyKind,
    scanner: ChunkedScanner,
    /// Of a `Length` body, the bytes not yet scanned.
    remaining: u64,
    copied: u64,
    /// Bytes at the front of the source's buffer that were scanned as
    /// body and not yet written.
    pending: usize,
    /// What was written is still to be flushed.
    unflushed: bool,
    done: bool,
}

impl BodyCopy {
    pub fn new(kind: BodyKind) -> Self {
        BodyCopy {
            kind,
            scanner: ChunkedScanner::new(),
            remaining: match kind {
                BodyKind::Length(n) => n,
                _ => u64::MAX,
            },
            copied: 0,
            pending: 0,
            unflushed: false,
            done: kind == BodyKind::Empty,
        }
    }

    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Copies on until the body ends; returns the bytes copied in all.
    /// Dropping the future at an await loses nothing: each write is one
    /// `write` whose count is taken at once, and a flush still owed is
    /// made first when the copy goes on.
    pub async fn run<R, W>(
        &mut self,
        src: &mut Inbound<R>,
        dst: &mut W,
        mut capture: Option<Capture<'_>>,
        idle: Option<Duration>,
    ) -> Result<u64, BodyError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        loop {
            if self.unflushed {
                // Each read goes on at once: a streamed body (server-sent
                // events, a chunked progress report) must reach the peer as
                // it comes, not wait in a TLS writer until the message
                // ends. On TCP a no-op.
                dst.flush().await.map_err(BodyError::Write)?;
                self.unflushed = false;
            }
            if self.done {
                return Ok(self.copied);
            }
            if self.pending == 0 {
                if src.buffered().is_empty() {
                    let n = match idle {
                        None => src.fill().await,
                        Some(after) => {
                            tokio::time::timeout(after, src.fill()).await.map_err(|_| {
                                BodyError::Stalled {
                                    after,
                                    got: self.copied,
                                }
                            })?
                        }
                    }
                    .map_err(BodyError::Read)?;
                    if n == 0 {
                        self.at_end()?;
                        continue;
                    }
                }
                let data = src.buffered();
                let take = match self.kind {
                    BodyKind::Chunked => self.scanner.scan(data)?,
                    BodyKind::Length(_) => (self.remaining.min(data.len() as u64)) as usize,
                    _ => data.len(),
                };
                if let Some(c) = capture.as_mut() {
                    let room = c.limit.saturating_sub(c.buf.len());
                    c.buf.extend_from_slice(&data[..take.min(room)]);
                }
                if let BodyKind::Length(_) = self.kind {
                    self.remaining -= take as u64;
                }
                self.pending = take;
            }
            let n = dst
                .write(&src.buffered()[..self.pending])
                .await
                .map_err(BodyError::Write)?;
            if n == 0 {
                return Err(BodyError::Write(io::ErrorKind::WriteZero.into()));
            }
            src.consume(n);
            self.pending -= n;
            self.copied += n as u64;
            if self.pending == 0 {
                self.unflushed = true;
                self.done = match self.kind {
                    BodyKind::Chunked => self.scanner.is_done(),
                    BodyKind::Length(_) => self.remaining == 0,
                    _ => false,
                };
            }
        }
    }

    /// The source ended: the end of an until-close body, early for others.
    fn at_end(&mut self) -> Result<(), BodyError> {
        match self.kind {
            BodyKind::UntilClose => {
                self.unflushed = true;
                self.done = true;
                Ok(())
            }
            BodyKind::Length(n) => Err(BodyError::Truncated {
                expected: n.to_string(),
                got: self.copied,
            }),
            _ => Err(BodyError::Truncated {
                expected: "a final zero-length chunk".into(),
                got: self.copied,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn run(input: &[u8], kind: BodyKind) -> (Result<u64, BodyError>, Vec<u8>, Vec<u8>) {
        let mut src = Inbound::new(input);
        let mut out = Vec::new();
        let r = copy_body(&mut src, &mut out, kind, None, None).await;
        let rest = src.buffered().to_vec();
        (r, out, rest)
    }

    #[tokio::test]
    async fn stops_at_the_end_of_each_framing() {
        let (r, out, rest) = run(b"helloNEXT", BodyKind::Length(5)).await;
        assert_eq!(
            (r.unwrap(), out.as_slice(), rest.as_slice()),
            (5, &b"hello"[..], &b"NEXT"[..])
        );
        let body = b"3\r\nabc\r\n0\r\n\r\n";
        let mut input = body.to_vec();
        input.extend_from_slice(b"NEXT");
        let (r, out, rest) = run(&input, BodyKind::Chunked).await;
        assert_eq!(r.unwrap(), body.len() as u64);
        assert_eq!(out, body);
        assert_eq!(rest, b"NEXT");
        let (r, out, _) = run(b"all of it", BodyKind::UntilClose).await;
        assert_eq!((r.unwrap(), out.as_slice()), (9, &b"all of it"[..]));
    }

    #[tokio::test]
    async fn each_part_of_a_streamed_body_is_flushed_as_it_comes() {
        // the sender writes the first chunk, then waits (an event stream)
        let (mut sender, src) = tokio::io::duplex(1024);
        sender.write_all(b"5\r\nfirst\r\n").await.unwrap();
        // a writer that holds bytes until flushed, as a TLS stream may
        let (out, mut peer) = tokio::io::duplex(1024);
        let mut dst = tokio::io::BufWriter::new(out);
        let mut src = Inbound::new(src);
        let copy = copy_body(&mut src, &mut dst, BodyKind::Chunked, None, None);
        let read = async {
            use tokio::io::AsyncReadExt;
            let mut got = [0u8; 10];
            let r =
                tokio::time::timeout(std::time::Duration::from_secs(5), peer.read_exact(&mut got))
                    .await;
            drop(sender);
            (r, got)
        };
        let (_, (r, got)) = tokio::join!(copy, read);
        assert!(r.is_ok(), "the first chunk did not reach the peer");
        assert_eq!(&got, b"5\r\nfirst\r\n");
    }

    /// A writer whose every other write (`stall_writes`: and then takes at
    /// most 3 bytes) or flush (`stall_flushes`) is not done yet: where a
    /// copy polled once at a time stops.
    #[derive(Default)]
    struct Fickle {
        got: Vec<u8>,
        stall_writes: bool,
        stall_flushes: bool,
        writes: usize,
        flushes: usize,
    }

    impl AsyncWrite for Fickle {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<io::Result<usize>> {
            self.writes += 1;
            let n = if self.stall_writes {
                if self.writes % 2 == 1 {
                    cx.waker().wake_by_ref();
                    return std::task::Poll::Pending;
                }
                buf.len().min(3)
            } else {
                buf.len()
            };
            self.got.extend_from_slice(&buf[..n]);
            std::task::Poll::Ready(Ok(n))
        }

        fn poll_flush(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            self.flushes += 1;
            if self.stall_flushes && self.flushes % 2 == 1 {
                cx.waker().wake_by_ref();
                return std::task::Poll::Pending;
            }
            std::task::Poll::Ready(Ok(()))
        }

        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    /// Copies `body` followed by `NEXT` as `kind` into `dst`, polling the
    /// copy once and dropping it, again and again, until it ends; checks
    /// that the body, all of it and only it, went through.
    fn copy_in_drops(body: &[u8], kind: BodyKind, dst: &mut Fickle) {
        use futures_util::FutureExt;
        let mut input = body.to_vec();
        input.extend_from_slice(b"NEXT");
        let mut src = Inbound::new(&input[..]);
        let mut copy = BodyCopy::new(kind);
        let r = loop {
            if let Some(r) = copy.run(&mut src, dst, None, None).now_or_never() {
                break r;
            }
        };
        assert_eq!(r.unwrap(), body.len() as u64, "{kind:?}");
        assert!(copy.is_done());
        assert_eq!(dst.got, body);
        assert_eq!(src.buffered(), b"NEXT");
    }

    #[tokio::test]
    async fn a_copy_dropped_at_any_await_goes_on_where_it_stopped() {
        let body = b"5\r\nfirst\r\nb\r\nsecond part\r\n0\r\n\r\n";
        for kind in [BodyKind::Chunked, BodyKind::Length(body.len() as u64)] {
            let mut dst = Fickle {
                stall_writes: true,
                ..Default::default()
            };
            copy_in_drops(body, kind, &mut dst);
        }
    }

    #[tokio::test]
    async fn a_copy_dropped_at_its_last_flush_ends_there() {
        // a TLS writer's flush may wait; the copy must not start on the
        // next message when it goes on
        let body = b"5\r\nfirst\r\n0\r\n\r\n";
        for kind in [BodyKind::Chunked, BodyKind::Length(body.len() as u64)] {
            let mut dst = Fickle {
                stall_flushes: true,
                ..Default::default()
            };
            copy_in_drops(body, kind, &mut dst);
            assert_eq!(dst.flushes % 2, 0, "the last flush was made");
        }
    }

    #[tokio::test]
    async fn short_bodies_are_errors() {
        let (r, out, _) = run(b"abc", BodyKind::Length(10)).await;
        assert!(matches!(r, Err(BodyError::Truncated { got: 3, .. })));
        assert_eq!(out, b"abc");
        let (r, _, _) = run(b"3\r\nabc\r\n", BodyKind::Chunked).await;
        assert!(matches!(r, Err(BodyError::Truncated { .. })));
    }
}
