//! Byte plumbing for the raw path: a boxed stream type for TCP and TLS
//! alike, and a fixed-capacity read buffer that can hand back what it read
//! past a message head (the relay starts from those bytes).

use std::any::Any;
use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;

use super::splice::TcpSide;
use crate::proto::frame::Parsed;
use crate::proto::http::{HeadError, MAX_HEAD_BYTES};

/// Any duplex byte stream: plain TCP or TLS, client or upstream side.
pub trait Io: AsyncRead + AsyncWrite + Send + Sync + Unpin + 'static {
    /// The plain TCP socket this is, or the stream back: the relay moves
    /// large payloads between two plain sockets without copying them.
    fn into_tcp(self: Box<Self>) -> Result<TcpStream, BoxIo>;
}

impl<T: AsyncRead + AsyncWrite + Send + Sync + Unpin + 'static> Io for T {
    fn into_tcp(self: Box<Self>) -> Result<TcpStream, BoxIo> {
        if !(&*self as &dyn Any).is::<TcpStream>() {
            return Err(self);
        }
        let any: Box<dyn Any> = self;
        match any.downcast::<TcpStream>() {
            Ok(tcp) => Ok(*tcp),
            // `is` said it was one
            Err(_) => unreachable!("a TcpStream that is not one"),
        }
    }
}

pub type BoxIo = Box<dyn Io>;

/// Writes all of `bytes` and flushes (a no-op on TCP; TLS streams may hold
/// records back until flushed).
pub async fn write_flush<W: AsyncWrite + Unpin>(w: &mut W, bytes: &[u8]) -> io::Result<()> {
    use tokio::io::AsyncWriteExt;
    w.write_all(bytes).await?;
    w.flush().await
}

/// How much, and how long, a lingering close reads and drops.
pub const LINGER_BYTES: u64 = 1024 * 1024;
pub const LINGER_TIME: Duration = Duration::from_secs(2);

/// Closes the way RFC 9112 §9.6 asks of a server that closes while the
/// client may still be sending (a request wstap refused before its body
/// was read, a request pipelined behind the last answer): shuts down the
/// write half so the client sees the answer and a FIN, then reads and
/// drops what the client still sends, until it closes, [`LINGER_BYTES`]
/// or [`LINGER_TIME`]. Closing with input unread makes the kernel reset
/// the connection: the client's next send fails, the end of the answer
/// still queued is lost, and many clients report the reset instead.
pub async fn linger_close<R, W>(rd: &mut Inbound<R>, wr: &mut W)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    shutdown_and_drain(rd, wr, LINGER_BYTES, LINGER_TIME).await;
}

/// Shuts down the write half, then reads and drops input until the peer
/// closes, `max_bytes` or `limit`: closing with input unread would make the
/// kernel reset the connection and destroy what the peer has yet to read.
pub async fn shutdown_and_drain<R, W>(
    rd: &mut Inbound<R>,
    wr: &mut W,
    max_bytes: u64,
    limit: Duration,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    use tokio::io::AsyncWriteExt;
    let _ = wr.shutdown().await;
    rd.discard(max_bytes, limit).await;
}

/// Read buffer capacity: a whole loopback TCP read, and more than the
/// largest head accepted, so a head always fits.
pub const READ_CAPACITY: usize = 80 * 1024;
const _: () = assert!(READ_CAPACITY > MAX_HEAD_BYTES);

/// A reader with a fixed buffer. Bytes are read into the buffer's spare
/// capacity, so an idle connection keeps only the pages it has touched.
pub struct Inbound<R> {
    io: R,
    buf: Vec<u8>,
    start: usize,
    /// Total bytes read from `io`.
    pub total: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ReadHeadError {
    #[error(transparent)]
    Head(#[from] HeadError),
    #[error("connection closed in the middle of a message head ({0} bytes received)")]
    Truncated(usize),
    #[error("no complete message head after {0:?} ({1} bytes received)")]
    Timeout(Duration, usize),
    #[error("read failed: {0}")]
    Io(#[from] io::Error),
}

impl<R: AsyncRead + Unpin> Inbound<R> {
    pub fn new(io: R) -> Self {
        Inbound {
            io,
            buf: Vec::new(),
            start: 0,
            total: 0,
        }
    }

    /// Bytes read but not yet consumed.
    pub fn buffered(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    pub fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.buf.len());
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
    }

    /// Reads more bytes into the buffer; `Ok(0)` is end of stream (or a
    /// full buffer, which callers prevent by consuming).
    pub async fn fill(&mut self) -> io::Result<usize> {
        if self.buf.capacity() == 0 {
            self.buf.reserve_exact(READ_CAPACITY);
        }
        if self.buf.len() == self.buf.capacity() && self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        let spare = self.buf.capacity() - self.buf.len();
        if spare == 0 {
            return Ok(0);
        }
        // `take` keeps read_buf from growing the Vec past its capacity.
        let n = (&mut self.io)
            .take(spare as u64)
            .read_buf(&mut self.buf)
            .await?;
        self.total += n as u64;
        super::busy_poll::note_work();
        Ok(n)
    }

    /// Gives the buffer back to this thread's spares when nothing is
    /// buffered and the input is a plain socket, which [`Self::fill_lean`]
    /// can wait on without one. Other inputs keep theirs.
    pub fn release(&mut self)
    where
        R: TcpSide,
    {
        if self.start == self.buf.len() && self.buf.capacity() > 0 && self.io.tcp().is_some() {
            super::pool::give(std::mem::take(&mut self.buf));
            self.start = 0;
        }
    }

    /// [`Self::fill`], but without a buffer while waiting when it has none
    /// and the input is a plain socket: it waits for the socket to be
    /// readable, then takes a spare buffer for the read.
    pub async fn fill_lean(&mut self) -> io::Result<usize>
    where
        R: TcpSide,
    {
        use futures_util::FutureExt;
        if self.buf.capacity() == 0 && self.io.tcp().is_some() {
            loop {
                // the socket's own reader waker, as `poll_read` uses:
                // `readable()` would queue a waiter under a lock
                std::future::poll_fn(|cx| match self.io.tcp() {
                    Some(tcp) => tcp.poll_read_ready(cx),
                    // not reached: a side's socket does not change
                    None => std::task::Poll::Ready(Ok(())),
                })
                .await?;
                let mut buf = super::pool::take();
                // One poll, through `poll_read` (which, unlike `try_read`,
                // knows a short read drained the socket and saves the next
                // read's syscall). Stale readiness: back to waiting, and
                // the wait above puts this task's waker back.
                match self.io.read_buf(&mut buf).now_or_never() {
                    Some(Ok(n)) => {
                        self.buf = buf;
                        self.start = 0;
                        self.total += n as u64;
                        super::busy_poll::note_work();
                        return Ok(n);
                    }
                    Some(Err(e)) => {
                        super::pool::give(buf);
                        return Err(e);
                    }
                    None => super::pool::give(buf),
                }
            }
        }
        self.fill().await
    }

    /// Reads one head with `parse`. `Ok(None)`: the stream ended cleanly
    /// before any byte of a new head. The head's bytes are returned as
    /// they were on the wire; bytes after the head stay buffered.
    pub async fn read_head<T>(
        &mut self,
        parse: fn(&[u8]) -> Result<Parsed<T>, HeadError>,
    ) -> Result<Option<(T, Vec<u8>)>, ReadHeadError> {
        // Bytes left from an earlier read may already hold a whole head.
        let mut parse_now = !self.buffered().is_empty();
        loop {
            if parse_now {
                if let Parsed::Done(head, n) = parse(self.buffered())? {
                    let raw = self.buffered()[..n].to_vec();
                    self.consume(n);
                    return Ok(Some((head, raw)));
                }
            }
            let before = self.buffered().len();
            let n = match self.fill().await {
                Ok(n) => n,
                // A TLS peer that ends without close_notify: browsers do so
                // when they drop an idle keep-alive connection. Between
                // messages that is as clean as a TCP FIN (no message was
                // cut short); inside a head it is a truncation, as a FIN is.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => 0,
                Err(e) => return Err(e.into()),
            };
            if n == 0 {
                return if before == 0 {
                    Ok(None)
                } else {
                    Err(ReadHeadError::Truncated(before))
                };
            }
            // A head only completes at a line end, so parsing again is
            // useful only when the new bytes hold a LF: re-parsing the
            // whole buffer on every read would be quadratic in a head that
            // trickles in. The first bytes are parsed at once (a TLS
            // ClientHello or a bad method is refused without waiting for a
            // line end), and so is a buffer at the size limit (a line
            // longer than that never ends).
            let buffered = self.buffered();
            parse_now = before == 0
                || buffered[before..].contains(&b'\n')
                || buffered.len() >= MAX_HEAD_BYTES;
        }
    }

    /// Like [`read_head`](Self::read_head) with a deadline for the whole head.
    pub async fn read_head_within<T>(
        &mut self,
        parse: fn(&[u8]) -> Result<Parsed<T>, HeadError>,
        limit: Duration,
    ) -> Result<Option<(T, Vec<u8>)>, ReadHeadError> {
        match tokio::time::timeout(limit, self.read_head(parse)).await {
            Ok(r) => r,
            Err(_) => Err(ReadHeadError::Timeout(limit, self.buffered().len())),
        }
    }

    /// Reads and throws away what the peer still sends, until it closes,
    /// `max_bytes` have gone by or `limit` passes. Called after answering
    /// a request wstap refused: closing a socket with unread input makes
    /// the kernel send RST, which can destroy the answer before the client
    /// reads it (the "lingering close" of RFC 9112 §9.6).
    pub async fn discard(&mut self, max_bytes: u64, limit: Duration) {
        self.buf.clear();
        self.start = 0;
        let mut left = max_bytes;
        let _ = tokio::time::timeout(limit, async {
            while left > 0 {
                match self.fill().await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        left = left.saturating_sub(n as u64);
                        self.buf.clear();
                        self.start = 0;
                    }
                }
            }
        })
        .await;
    }

    pub fn get_mut(&mut self) -> &mut R {
        &mut self.io
    }

    pub fn get_ref(&self) -> &R {
        &self.io
    }

    /// The same buffer over another reader (the same stream, re-wrapped);
    /// `f` may hand something else back beside it.
    pub fn map_io<S, X>(self, f: impl FnOnce(R) -> (S, X)) -> (Inbound<S>, X) {
        let (io, extra) = f(self.io);
        let inbound = Inbound {
            io,
            buf: self.buf,
            start: self.start,
            total: self.total,
        };
        (inbound, extra)
    }

    /// The reader and the bytes read but not consumed, to hand the
    /// connection to another protocol (TLS after CONNECT).
    pub fn into_parts(self) -> (R, Vec<u8>) {
        let rest = self.buf[self.start..].to_vec();
        (self.io, rest)
    }
}

/// A stream that first yields bytes already read from it.
pub struct Prefixed<IO> {
    prefix: Vec<u8>,
    pos: usize,
    io: IO,
}

impl<IO> Prefixed<IO> {
    pub fn new(prefix: Vec<u8>, io: IO) -> Self {
        Prefixed { prefix, pos: 0, io }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Prefixed<IO> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        if self.pos < self.prefix.len() {
            let n = (self.prefix.len() - self.pos).min(buf.remaining());
            let start = self.pos;
            buf.put_slice(&self.prefix[start..start + n]);
            self.pos += n;
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Prefixed<IO> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::http::parse_request_head;

    /// A relay side on a plain socket holds a buffer only while it has
    /// bytes: waiting, it holds none, and the buffer goes back to the
    /// thread's spares for the next read (idle connections used to keep
    /// every page a large message had touched).
    #[tokio::test]
    async fn a_plain_socket_is_waited_on_without_a_buffer() {
        use super::super::pool;
        use super::super::splice::RelayRd;
        use tokio::io::AsyncWriteExt;

        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut tx = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (rx, _) = l.accept().await.unwrap();
        let (r, _w) = rx.into_split();
        let mut rd = Inbound::new(RelayRd::Tcp(r));
        let step = Duration::from_secs(10);

        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        tx.write_all(&big).await.unwrap();
        let mut got = Vec::new();
        while got.len() < big.len() {
            rd.release();
            let n = tokio::time::timeout(step, rd.fill_lean())
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0 && n <= READ_CAPACITY);
            got.extend_from_slice(rd.buffered());
            rd.consume(n);
        }
        assert!(got == big, "the bytes came through changed");
        assert_eq!(rd.total, big.len() as u64);

        rd.release();
        assert_eq!(rd.buf.capacity(), 0);
        let spare = pool::spare();
        assert!(spare >= 1);
        // nothing to read: it waits, holding no buffer
        let waited = tokio::time::timeout(Duration::from_millis(100), rd.fill_lean()).await;
        assert!(waited.is_err(), "there was nothing to read");
        assert_eq!(rd.buf.capacity(), 0);
        assert_eq!(pool::spare(), spare, "a wait takes no buffer");

        // bytes come: a spare buffer takes them
        tx.write_all(b"after the wait").await.unwrap();
        let n = tokio::time::timeout(step, rd.fill_lean())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(rd.buffered(), &b"after the wait"[..n]);
        assert_eq!(pool::spare(), spare - 1);

        // the peer leaves: end of stream, as from `fill`
        rd.consume(n);
        drop(tx);
        rd.release();
        let mut end = tokio::time::timeout(step, rd.fill_lean())
            .await
            .unwrap()
            .unwrap();
        while end > 0 {
            rd.consume(end);
            end = tokio::time::timeout(step, rd.fill_lean())
                .await
                .unwrap()
                .unwrap();
        }
    }

    #[tokio::test]
    async fn head_then_leftover() {
        let data: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\x81\x00rest";
        let mut r = Inbound::new(data);
        let (h, raw) = r.read_head(parse_request_head).await.unwrap().unwrap();
        assert_eq!(h.target, "/");
        assert_eq!(raw, &data[..raw.len()]);
        assert_eq!(r.buffered(), b"\x81\x00rest");
    }

    #[tokio::test]
    async fn prefixed_streams_yield_the_prefix_first() {
        let mut p = Prefixed::new(b"ab".to_vec(), &b"cd"[..]);
        let mut out = Vec::new();
        p.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, b"abcd");
    }

    #[tokio::test]
    async fn eof_before_and_inside_a_head() {
        let mut r = Inbound::new(&b""[..]);
        assert!(r.read_head(parse_request_head).await.unwrap().is_none());
        let mut r = Inbound::new(&b"GET / HT"[..]);
        assert!(matches!(
            r.read_head(parse_request_head).await,
            Err(ReadHeadError::Truncated(8))
        ));
    }

    /// Ends like rustls does when the peer closes without close_notify.
    struct NoCloseNotify(&'static [u8]);

    impl AsyncRead for NoCloseNotify {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            if self.0.is_empty() {
                return std::task::Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "peer closed connection without sending TLS close_notify",
                )));
            }
            let n = self.0.len().min(buf.remaining());
            buf.put_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn tls_end_without_close_notify_is_a_close() {
        let mut r = Inbound::new(NoCloseNotify(b"GET / HTTP/1.1\r\n\r\n"));
        assert!(r.read_head(parse_request_head).await.unwrap().is_some());
        // between requests: the connection simply ended
        assert!(r.read_head(parse_request_head).await.unwrap().is_none());
        // inside a head: cut short, as with a FIN
        let mut r = Inbound::new(NoCloseNotify(b"GET / HT"));
        assert!(matches!(
            r.read_head(parse_request_head).await,
            Err(ReadHeadError::Truncated(8))
        ));
    }

    /// Yields one byte per read, like a client that dribbles its head.
    struct OneByteAtATime(&'static [u8]);

    impl AsyncRead for OneByteAtATime {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            if let Some((&b, rest)) = self.0.split_first() {
                buf.put_slice(&[b]);
                self.0 = rest;
            }
            std::task::Poll::Ready(Ok(()))
        }
    }

    static PARSES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

    fn counted_parse(buf: &[u8]) -> Result<Parsed<crate::proto::http::RequestHead>, HeadError> {
        PARSES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        parse_request_head(buf)
    }

    #[tokio::test]
    async fn a_dribbled_head_is_parsed_once_per_line_not_per_byte() {
        let head: &'static [u8] =
            b"GET /slow HTTP/1.1\r\nHost: a\r\nX-Long: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\nNEXT";
        let mut r = Inbound::new(OneByteAtATime(head));
        let (h, raw) = r.read_head(counted_parse).await.unwrap().unwrap();
        assert_eq!((h.target.as_str(), raw.len()), ("/slow", head.len() - 4));
        // the first byte, then once per LF (four lines)
        let parses = PARSES.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(parses, 1 + 4, "{parses} parses for {} bytes", raw.len());
    }

    #[tokio::test]
    async fn a_dribbled_bad_start_is_still_refused_at_once() {
        // a TLS ClientHello has no LF to wait for: refused at its first byte
        let mut r = Inbound::new(OneByteAtATime(b"\x16\x03\x01\x00\xa5\x01"));
        let e = r.read_head(parse_request_head).await.unwrap_err();
        assert!(
            matches!(e, ReadHeadError::Head(HeadError::Malformed(_))),
            "{e:?}"
        );
    }

    #[tokio::test]
    async fn oversized_head_is_refused() {
        let mut big = b"GET /".to_vec();
        big.extend(std::iter::repeat_n(b'a', MAX_HEAD_BYTES + 10));
        let mut r = Inbound::new(&big[..]);
        let e = r.read_head(parse_request_head).await.unwrap_err();
        assert!(
            matches!(e, ReadHeadError::Head(HeadError::LineTooLong)),
            "{e:?}"
        );
    }
}
