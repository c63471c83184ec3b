//! Zero-copy forwarding of payload the tap does not need to see: between
//! two plain TCP sockets, `splice(2)` moves bytes from one socket into a
//! pipe and from the pipe into the other inside the kernel, so a large
//! binary frame crosses wstap without being copied through user space.
//! Also the relay's view of its sockets: plain TCP halves where it can
//! splice, the boxed stream (TLS, forward mode) where it cannot.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use super::io::{BoxIo, Inbound};

/// Fewer payload bytes than this ahead go the ordinary way: a splice
/// round moves one frame's payload for two syscalls, where one read and
/// one write can carry many small frames at once.
pub const SPLICE_MIN: u64 = 16 * 1024;

/// The pipe's capacity, asked for when it is made (Linux gives 64 KiB by
/// default; larger rounds mean fewer syscalls per frame). Bytes sit in it
/// only within one round.
#[cfg(target_os = "linux")]
const PIPE_SIZE: usize = 1024 * 1024;

/// Bytes a splice round may move per unit of tokio's cooperative budget
/// it spends: about what one read and its write move when the relay
/// copies.
#[cfg(target_os = "linux")]
const BYTES_PER_BUDGET_UNIT: usize = 64 * 1024;

/// Bytes spliced by this process so far (tests check the path is taken).
static SPLICED: AtomicU64 = AtomicU64::new(0);

pub fn spliced_total() -> u64 {
    SPLICED.load(Ordering::Relaxed)
}

/// A side's reading half as the relay holds it.
pub enum RelayRd {
    Tcp(OwnedReadHalf),
    Other(ReadHalf<BoxIo>),
}

/// A side's writing half as the relay holds it.
pub enum RelayWr {
    Tcp(OwnedWriteHalf),
    Other(WriteHalf<BoxIo>),
}

/// Halves that may be plain TCP sockets.
pub trait TcpSide {
    fn tcp(&self) -> Option<&TcpStream>;
}

impl TcpSide for RelayRd {
    fn tcp(&self) -> Option<&TcpStream> {
        match self {
            RelayRd::Tcp(h) => Some(h.as_ref()),
            RelayRd::Other(_) => None,
        }
    }
}

impl TcpSide for RelayWr {
    fn tcp(&self) -> Option<&TcpStream> {
        match self {
            RelayWr::Tcp(h) => Some(h.as_ref()),
            RelayWr::Other(_) => None,
        }
    }
}

/// Re-splits a side for the relay: into lock-free TCP halves when it is a
/// plain socket, as it was otherwise. Bytes already read stay buffered.
pub fn relay_side(
    rd: Inbound<ReadHalf<BoxIo>>,
    wr: WriteHalf<BoxIo>,
) -> (Inbound<RelayRd>, RelayWr) {
    if !rd.get_ref().is_pair_of(&wr) {
        return rd.map_io(|r| (RelayRd::Other(r), RelayWr::Other(wr)));
    }
    rd.map_io(|r| match r.unsplit(wr).into_tcp() {
        Ok(tcp) => {
            let (r, w) = tcp.into_split();
            (RelayRd::Tcp(r), RelayWr::Tcp(w))
        }
        Err(io) => {
            let (r, w) = tokio::io::split(io);
            (RelayRd::Other(r), RelayWr::Other(w))
        }
    })
}

impl AsyncRead for RelayRd {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            RelayRd::Tcp(h) => Pin::new(h).poll_read(cx, buf),
            RelayRd::Other(h) => Pin::new(h).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for RelayWr {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            RelayWr::Tcp(h) => Pin::new(h).poll_write(cx, buf),
            RelayWr::Other(h) => Pin::new(h).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            RelayWr::Tcp(h) => Pin::new(h).poll_flush(cx),
            RelayWr::Other(h) => Pin::new(h).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            RelayWr::Tcp(h) => Pin::new(h).poll_shutdown(cx),
            RelayWr::Other(h) => Pin::new(h).poll_shutdown(cx),
        }
    }
}

/// What a splice round could not do.
#[derive(Debug, thiserror::Error)]
pub enum SpliceError {
    /// Reading from the sending socket failed.
    #[error("{0}")]
    Read(io::Error),
    /// Writing to the receiving socket failed; bytes may be lost.
    #[error("{0}")]
    Write(io::Error),
    /// Splicing is not available here; nothing was moved.
    #[error("splice is not available: {0}")]
    Unsupported(io::Error),
}

/// Errors by which `splice` says it cannot do this (old kernels, sandboxes
/// such as gVisor, seccomp filters), not that the connection failed.
#[cfg(target_os = "linux")]
fn unsupported(e: &io::Error) -> bool {
    use rustix::io::Errno;
    [Errno::INVAL, Errno::NOSYS, Errno::OPNOTSUPP, Errno::PERM]
        .iter()
        .any(|n| e.raw_os_error() == Some(n.raw_os_error()))
}

/// A pipe of one direction, made the first time that direction splices.
#[cfg(target_os = "linux")]
pub struct Pipe {
    rd: std::os::fd::OwnedFd,
    wr: std::os::fd::OwnedFd,
    /// What the pipe holds: no round moves more.
    capacity: usize,
}

#[cfg(target_os = "linux")]
impl Pipe {
    pub fn new() -> io::Result<Pipe> {
        use rustix::pipe::{fcntl_setpipe_size, pipe_with, PipeFlags};
        let (rd, wr) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
        // a smaller pipe still works (the default 64 KiB, or what
        // /proc/sys/fs/pipe-max-size allows): only more rounds
        let capacity = fcntl_setpipe_size(&wr, PIPE_SIZE).unwrap_or(64 * 1024);
        Ok(Pipe { rd, wr, capacity })
    }

    /// Moves up to `max` bytes from `src` to `dst` through the pipe: waits
    /// for `src` to have data, takes what is there, then waits until all
    /// of it is written. `Ok(0)`: `src` reached its end.
    /// Each write's bytes are added to `written` as they go (a round to a
    /// slow reader takes many).
    pub async fn round(
        &self,
        src: &TcpStream,
        dst: &TcpStream,
        max: usize,
        written: &AtomicU64,
    ) -> Result<usize, SpliceError> {
        use rustix::pipe::{splice, SpliceFlags};
        use tokio::io::Interest;
        let flags = SpliceFlags::MOVE | SpliceFlags::NONBLOCK;
        let max = max.min(self.capacity);
        // Readiness checks and `try_io` spend none of the task's budget:
        // spent here as copying would spend it, or a long frame between two
        // fast peers holds the relay thread, and every other connection on
        // it, until it ends. Before any byte moves, so that a round dropped
        // while it yields has moved nothing.
        for _ in 0..max.div_ceil(BYTES_PER_BUDGET_UNIT).max(1) {
            tokio::task::coop::consume_budget().await;
        }
        let got = loop {
            src.readable().await.map_err(SpliceError::Read)?;
            match src.try_io(Interest::READABLE, || {
                splice(src, None, &self.wr, None, max, flags).map_err(io::Error::from)
            }) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                // a kernel or sandbox without splice for sockets: no byte
                // moved, so the relay can go on by copying
                Err(e) if unsupported(&e) => return Err(SpliceError::Unsupported(e)),
                Err(e) => return Err(SpliceError::Read(e)),
            }
        };
        let mut left = got;
        while left > 0 {
            dst.writable().await.map_err(SpliceError::Write)?;
            match dst.try_io(Interest::WRITABLE, || {
                splice(&self.rd, None, dst, None, left, flags).map_err(io::Error::from)
            }) {
                Ok(0) => {
                    return Err(SpliceError::Write(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "the socket took no bytes",
                    )))
                }
                Ok(n) => {
                    left -= n;
                    // once per write of up to a MiB: an atomic add is nothing
                    written.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(SpliceError::Write(e)),
            }
        }
        SPLICED.fetch_add(got as u64, Ordering::Relaxed);
        super::busy_poll::note_work();
        Ok(got)
    }
}

/// Elsewhere there is no splice: the relay copies.
#[cfg(not(target_os = "linux"))]
pub struct Pipe;

#[cfg(not(target_os = "linux"))]
impl Pipe {
    pub fn new() -> io::Result<Pipe> {
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }

    pub async fn round(
        &self,
        _src: &TcpStream,
        _dst: &TcpStream,
        _max: usize,
        _written: &AtomicU64,
    ) -> Result<usize, SpliceError> {
        Err(SpliceError::Read(io::Error::from(
            io::ErrorKind::Unsupported,
        )))
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    async fn pair() -> (std::net::TcpStream, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().await.unwrap();
        (peer, s)
    }

    /// Rounds whose source always has bytes never wait on a socket; they
    /// must still let the other tasks of the relay thread run.
    #[tokio::test]
    async fn rounds_give_the_thread_to_other_tasks_while_bytes_keep_coming() {
        let (mut feed, src) = pair().await;
        let (_sink, dst) = pair().await;
        let pipe = Pipe::new().unwrap();
        let other_ran = Arc::new(AtomicBool::new(false));
        let flag = other_ran.clone();
        tokio::spawn(async move { flag.store(true, Ordering::Relaxed) });
        let mut rounds = 0;
        while !other_ran.load(Ordering::Relaxed) && rounds < 1000 {
            // the next byte is there before the round looks
            feed.write_all(&[rounds as u8]).unwrap();
            let written = AtomicU64::new(0);
            assert_eq!(
                pipe.round(&src, &dst, usize::MAX, &written).await.unwrap(),
                1
            );
            assert_eq!(written.load(Ordering::Relaxed), 1);
            rounds += 1;
        }
        assert!(
            other_ran.load(Ordering::Relaxed),
            "another task ran within {rounds} rounds"
        );
    }
}
