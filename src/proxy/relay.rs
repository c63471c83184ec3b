//! The WebSocket relay after a 101: two pumps, one per direction, each
//! writing every byte it reads to the peer unchanged and showing a copy to
//! its direction's tap (after the write, unless the pump must stop at a
//! frame boundary). Between plain TCP sockets, large payload the tap does
//! not need is spliced past it (`splice`). A fixed buffer per direction; a
//! full event channel or a slow reader makes the pump wait, never buffer
//! more. Frames wstap adds itself (strict-mode and shutdown closes,
//! live-view messages) go in only at frame boundaries, through each pump's
//! control inbox.

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};

use super::io::{shutdown_and_drain, write_flush, Inbound, LINGER_BYTES};
use super::splice::{Pipe, SpliceError, TcpSide, SPLICE_MIN};
use super::woken::WokenOnly;
use crate::bus::EventTx;
use crate::bus::MAX_BATCH;
use crate::proto::event::{ConnId, Dir, Event, EventKind};
use crate::proto::inject::{self, Injected};
use crate::proto::session::{RelayEnd, StreamEnd};
use crate::proto::simulate::IdleRule;
use crate::proto::stream::{FeedOpts, Stop, StreamTap};

/// Once one side has closed its half, the other gets this long without
/// sending anything before wstap closes the connection: a peer that never
/// closes must not hold the sockets forever.
pub const LINGER: Duration = Duration::from_secs(3);

/// Longest wait, once the relay is over, for the peers to close after
/// wstap shut its sides down (see [`close_gently`]).
pub const DRAIN: Duration = Duration::from_secs(1);

/// How long a pump may take to deliver a close wstap asked it to send.
const CLOSE_DELIVERY: Duration = Duration::from_secs(2);

/// Something for a pump to do besides relaying.
#[derive(Debug)]
pub enum Control {
    /// Insert a frame at the next boundary; `done` hears whether it was written.
    Inject {
        frame: Injected,
        done: Option<oneshot::Sender<Result<(), String>>>,
    },
    /// Send this close frame at the next boundary, then stop relaying.
    CloseAndEnd {
        frame: Injected,
        reason: &'static str,
        detail: String,
    },
}

impl Control {
    fn frame(&self) -> &Injected {
        match self {
            Control::Inject { frame, .. } | Control::CloseAndEnd { frame, .. } => frame,
        }
    }
}

/// Senders into a connection's two pumps.
#[derive(Debug, Clone)]
pub struct Controls {
    /// Frames that travel to the server (written by the client-to-server pump).
    pub to_server: mpsc::Sender<Box<Control>>,
    /// Frames that travel to the client.
    pub to_client: mpsc::Sender<Box<Control>>,
}

impl Controls {
    pub fn toward(&self, dir: Dir) -> &mpsc::Sender<Box<Control>> {
        match dir {
            Dir::ClientToServer => &self.to_server,
            Dir::ServerToClient => &self.to_client,
        }
    }
}

/// The receiving ends, consumed by [`relay`].
pub struct Inboxes {
    to_server: mpsc::Receiver<Box<Control>>,
    to_client: mpsc::Receiver<Box<Control>>,
}

/// A new pair of control channels for one connection.
pub fn controls() -> (Controls, Inboxes) {
    let (ts, tr) = mpsc::channel(16);
    let (cs, cr) = mpsc::channel(16);
    (
        Controls {
            to_server: ts,
            to_client: cs,
        },
        Inboxes {
            to_server: tr,
            to_client: cr,
        },
    )
}

/// A pump's control inbox. Waiting on it leaves the pump's waker with
/// the channel, which keeps it until a control comes; so the channel is
/// polled again only after one came (or the waker changed), not on every
/// wait: polling an empty channel each time the socket ran dry cost some
/// 3% of a 64-byte round trip's instructions.
struct Inbox {
    rx: mpsc::Receiver<Box<Control>>,
    /// The waker the channel holds since its last `Pending`, while it does.
    armed: Option<Waker>,
}

impl Inbox {
    fn new(rx: mpsc::Receiver<Box<Control>>) -> Self {
        Inbox { rx, armed: None }
    }

    /// A control that is already there, without waiting.
    fn try_take(&mut self) -> Option<Box<Control>> {
        if self.rx.is_empty() {
            return None;
        }
        // something was sent: the channel woke its waker and let go of it
        self.armed = None;
        self.rx.try_recv().ok()
    }

    /// The next control; `None` once every sender is gone (unless the
    /// channel still held the waker then: the inbox then just stays
    /// quiet, which is all a closed one can do).
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Box<Control>>> {
        if let Some(w) = &self.armed {
            if w.will_wake(cx.waker()) && self.rx.is_empty() {
                return Poll::Pending;
            }
        }
        // Out of tokio's cooperative budget, the channel answers `Pending`
        // (and has the task polled again) without taking the waker: only
        // a `Pending` with budget left leaves the waker with the channel.
        let registers = tokio::task::coop::has_budget_remaining();
        let r = self.rx.poll_recv(cx);
        self.armed = (r.is_pending() && registers).then(|| cx.waker().clone());
        r
    }
}

/// Relay behaviour beyond forwarding.
#[derive(Debug, Clone, Default)]
pub struct RelayOptions {
    /// Turns true when the shutdown grace period is over: the relay stops
    /// wherever it is (even in a write to a peer that does not read) and
    /// the connection is summed up as `shutdown`.
    pub hard_stop: Option<watch::Receiver<bool>>,
    /// Close with 1002 on a protocol violation instead of relaying on.
    pub strict: bool,
    pub max_preview: usize,
    /// Cut the connection (no close frame, as a load balancer does) after
    /// a silence.
    pub idle_cut: Option<IdleRule>,
}

/// Both sides of an upgraded connection.
pub struct Sides<CR, CW, UR, UW> {
    pub client_rd: Inbound<CR>,
    pub client_wr: CW,
    pub up_rd: Inbound<UR>,
    pub up_wr: UW,
}

/// A random masking key (RFC 6455 §5.3 wants it unpredictable).
pub fn random_mask() -> [u8; 4] {
    use ring::rand::SecureRandom;
    let mut m = [0u8; 4];
    if ring::rand::SystemRandom::new().fill(&mut m).is_err() {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        m = (t.subsec_nanos() ^ 0x5a5a_a5a5).to_le_bytes();
    }
    m
}

/// What both pumps share.
struct Shared<'a> {
    conn: ConnId,
    events: &'a EventTx,
    opts: &'a RelayOptions,
    /// When the relay started: with an idle cut, activity is kept as
    /// milliseconds since then, on the monotonic clock (a wall-clock step
    /// must not cut).
    started: Instant,
    /// Each side's activity stamp (see [`Shared::touch`]).
    last_client: AtomicU64,
    last_server: AtomicU64,
    /// Bytes of each side's stream written on to the other side so far:
    /// a write to a slow reader is progress too (see [`linger`]).
    written_client: AtomicU64,
    written_server: AtomicU64,
}

impl Shared<'_> {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// The activity stamp of the sender of `dir`.
    fn last_seen(&self, dir: Dir) -> &AtomicU64 {
        match dir {
            Dir::ClientToServer => &self.last_client,
            Dir::ServerToClient => &self.last_server,
        }
    }

    /// Bytes of the sender of `dir` written on so far.
    fn written(&self, dir: Dir) -> &AtomicU64 {
        match dir {
            Dir::ClientToServer => &self.written_client,
            Dir::ServerToClient => &self.written_server,
        }
    }

    /// Notes that the sender of `dir` sent something. The stamp is the
    /// time (milliseconds since `started`) only when an idle cut must
    /// measure silence; otherwise it counts, since the linger only asks
    /// whether it moved, and a clock read per read is not free (about 3%
    /// of a 64-byte round trip's instructions).
    fn touch(&self, dir: Dir) {
        let stamp = self.last_seen(dir);
        if self.opts.idle_cut.is_some() {
            stamp.store(self.now_ms(), Ordering::Relaxed);
        } else {
            add_own(stamp, 1);
        }
    }
}

/// Adds `n` to a count only the calling direction's pump writes: no
/// atomic add (a locked instruction) needed on the per-read path.
fn add_own(count: &AtomicU64, n: u64) {
    count.store(
        count.load(Ordering::Relaxed).wrapping_add(n),
        Ordering::Relaxed,
    );
}

/// Relays until both directions end, one fails, or wstap cuts the
/// connection. Returns how it ended and when the first direction ended
/// (the moment a drop happened, before any linger); the taps hold the rest.
#[allow(clippy::too_many_arguments)] // the two sides, two taps and two channels belong together
pub async fn relay<CR, CW, UR, UW>(
    conn: ConnId,
    sides: &mut Sides<CR, CW, UR, UW>,
    c2s: &mut StreamTap,
    s2c: &mut StreamTap,
    events: &EventTx,
    opts: &RelayOptions,
    controls: &Controls,
    inboxes: Inboxes,
) -> (RelayEnd, SystemTime)
where
    CR: AsyncRead + TcpSide + Unpin,
    CW: AsyncWrite + TcpSide + Unpin,
    UR: AsyncRead + TcpSide + Unpin,
    UW: AsyncWrite + TcpSide + Unpin,
{
    let Sides {
        client_rd,
        client_wr,
        up_rd,
        up_wr,
    } = sides;
    let shared = Shared {
        conn,
        events,
        opts,
        started: Instant::now(),
        last_client: AtomicU64::new(0),
        last_server: AtomicU64::new(0),
        written_client: AtomicU64::new(0),
        written_server: AtomicU64::new(0),
    };
    // Each pump is polled only when its own socket or inbox woke the
    // task: bytes in one direction then cost nothing in the other.
    let up = WokenOnly::new(pump(
        client_rd,
        up_wr,
        c2s,
        &shared,
        inboxes.to_server,
        &controls.to_client,
    ));
    let down = WokenOnly::new(pump(
        up_rd,
        client_wr,
        s2c,
        &shared,
        inboxes.to_client,
        &controls.to_server,
    ));
    let idle = idle_watch(&shared);
    let run = async {
        tokio::pin!(up, down, idle);
        // biased: the wrapped pumps skip polls that are not theirs anyway,
        // and picking a random start costs a random number per wake-up
        tokio::select! {
            biased;
            end = &mut up => {
                let at = SystemTime::now();
                (after_first(Dir::ClientToServer, end, down, &shared, Dir::ServerToClient).await, at)
            }
            end = &mut down => {
                let at = SystemTime::now();
                (after_first(Dir::ServerToClient, end, up, &shared, Dir::ClientToServer).await, at)
            }
            cut = &mut idle => (cut, SystemTime::now()),
        }
    };
    // the grace period's end stops everything above, wherever it waits
    // (a write to a peer that does not read, the linger, a close delivery)
    tokio::select! {
        biased;
        ended = run => ended,
        cut = WokenOnly::new(hard_stop(opts.hard_stop.clone())) => (cut, SystemTime::now()),
    }
}

/// Decides what happens to the other direction once one has ended.
async fn after_first<F: Future<Output = StreamEnd>>(
    dir: Dir,
    end: StreamEnd,
    other: F,
    shared: &Shared<'_>,
    other_dir: Dir,
) -> RelayEnd {
    let (other_seen, other_written) = (shared.last_seen(other_dir), shared.written(other_dir));
    match end {
        StreamEnd::Eof => {
            linger(other, other_seen, other_written).await;
            RelayEnd::Peer(dir, StreamEnd::Eof)
        }
        StreamEnd::Cut { reason, detail } => {
            // the other pump was asked to send its close too
            let _ = tokio::time::timeout(CLOSE_DELIVERY, other).await;
            RelayEnd::Cut {
                reason: reason.to_string(),
                detail,
            }
        }
        failed => {
            // the other direction may still hold what its peer needs (a
            // close frame already read): let it finish, as after a FIN
            linger(other, other_seen, other_written).await;
            RelayEnd::Peer(dir, failed)
        }
    }
}

/// Lets the remaining direction run while it keeps sending, or keeps
/// delivering what it sent to a reader that takes it slowly.
async fn linger<F: Future>(pump: F, last: &AtomicU64, written: &AtomicU64) {
    tokio::pin!(pump);
    let moved = || {
        (
            last.load(Ordering::Relaxed),
            written.load(Ordering::Relaxed),
        )
    };
    loop {
        let before = moved();
        tokio::select! {
            _ = &mut pump => return,
            _ = tokio::time::sleep(LINGER) => {
                if moved() == before {
                    tracing::debug!("the other side did not close within {LINGER:?}; closing");
                    return;
                }
            }
        }
    }
}

/// Resolves when the grace period is over; never without a receiver.
async fn hard_stop(rx: Option<watch::Receiver<bool>>) -> RelayEnd {
    let Some(mut rx) = rx else {
        return std::future::pending().await;
    };
    if rx.wait_for(|stop| *stop).await.is_err() {
        // the proxy is gone without a stop: nothing will ask again
        return std::future::pending().await;
    }
    RelayEnd::Cut {
        reason: "shutdown".into(),
        detail: "wstap shut down; the grace period ended before the connection finished (a peer was not reading)".into(),
    }
}

/// Resolves when the simulated idle limit is reached; never without one.
async fn idle_watch(shared: &Shared<'_>) -> RelayEnd {
    let Some(cut) = &shared.opts.idle_cut else {
        return std::future::pending().await;
    };
    let after = u64::try_from(cut.after.as_millis()).unwrap_or(u64::MAX);
    loop {
        let mut last = shared.last_server.load(Ordering::Relaxed);
        if cut.count_client {
            last = last.max(shared.last_client.load(Ordering::Relaxed));
        }
        let now = shared.now_ms();
        if now >= last.saturating_add(after) {
            return RelayEnd::Cut {
                reason: "idle-timeout".into(),
                detail: format!(
                    "wstap cut the connection after {} without {} ({}), as that hop would, with no close frame",
                    humantime::format_duration(cut.after),
                    if cut.count_client { "traffic" } else { "data from the upstream" },
                    cut.label
                ),
            };
        }
        tokio::time::sleep(Duration::from_millis(last.saturating_add(after) - now)).await;
    }
}

/// One direction: read, show the tap, forward unchanged, queue the events;
/// between frames, write what the control inbox asks for.
async fn pump<R, W>(
    rd: &mut Inbound<R>,
    wr: &mut W,
    tap: &mut StreamTap,
    shared: &Shared<'_>,
    inbox: mpsc::Receiver<Box<Control>>,
    other: &mpsc::Sender<Box<Control>>,
) -> StreamEnd
where
    R: AsyncRead + TcpSide + Unpin,
    W: AsyncWrite + TcpSide + Unpin,
{
    let dir = tap.dir();
    let mut out: Vec<Event> = Vec::new();
    // events in the last batch (see `reserve_batch`)
    let mut last_batch = 0usize;
    // The control being waited for: one at most, taken from the inbox only
    // when this is empty, so the inbox's bound is the bound on what waits
    // (a peer that never ends a message would otherwise let injected frames
    // pile up here without limit, and the live view could not say 503).
    let mut pending: Option<Box<Control>> = None;
    let mut inbox = Inbox::new(inbox);
    let mut inbox_open = true;
    // made when this direction first splices; `None` after that failed
    let mut pipe: Option<Option<Pipe>> = None;
    loop {
        // what wstap wants to insert, as soon as the stream allows it
        loop {
            // A glance, not a wait: a busy socket never leaves the read
            // below for the inbox (see there).
            if pending.is_none() && inbox_open {
                pending = inbox.try_take();
            }
            let Some(c) = pending.as_ref() else { break };
            let ready = if c.frame().needs_message_boundary() {
                tap.at_message_boundary()
            } else {
                tap.at_frame_boundary()
            };
            if !ready {
                break;
            }
            let Some(c) = pending.take() else { break };
            // This direction's sender already closed (its close frame went
            // through): a second close would be noise, so just end.
            let redundant = matches!(*c, Control::CloseAndEnd { .. }) && tap.close_seen().is_some();
            let written = if redundant {
                Ok(())
            } else {
                write_flush(wr, &c.frame().wire).await
            };
            if written.is_ok() && !redundant {
                let ev = Event::conn(
                    SystemTime::now(),
                    shared.conn,
                    EventKind::Frame(c.frame().event.clone()),
                );
                shared.events.send(ev).await;
            }
            match *c {
                Control::Inject { done, .. } => {
                    if let Some(done) = done {
                        let _ = done.send(written.as_ref().map(|_| ()).map_err(|e| e.to_string()));
                    }
                    if let Err(e) = written {
                        return StreamEnd::WriteFailed(e.to_string());
                    }
                }
                Control::CloseAndEnd { reason, detail, .. } => {
                    let _ = wr.shutdown().await;
                    return StreamEnd::Cut { reason, detail };
                }
            }
        }

        let ahead = if rd.buffered().is_empty()
            && pending.is_none()
            && !shared.opts.strict
            && !matches!(pipe, Some(None))
        {
            tap.opaque_ahead()
        } else {
            0
        };
        if ahead >= SPLICE_MIN && rd.get_ref().tcp().is_some() && wr.tcp().is_some() {
            // boxed: a round's state should not size every connection's
            // future (a round moves up to a MiB; one allocation is nothing)
            let round = splice_round(rd, wr, tap, shared, &mut pipe, ahead, &mut out);
            match Box::pin(round).await {
                Spliced::Not => {}
                Spliced::Moved => continue,
                Spliced::End(end) => return end,
            }
        }
        if rd.buffered().is_empty() {
            // no buffer held while waiting (see `pool`)
            rd.release();
            // The socket first: the glance at the top of the loop finds
            // controls that come while it keeps having something.
            tokio::select! {
                biased;
                r = rd.fill_lean() => match r {
                    Ok(0) => {
                        // Pass the half-close on: the peer learns no more is coming.
                        let _ = wr.shutdown().await;
                        return StreamEnd::Eof;
                    }
                    Ok(_) => {}
                    Err(e) => return StreamEnd::Reset(e.to_string()),
                },
                c = std::future::poll_fn(|cx| inbox.poll_next(cx)), if inbox_open && pending.is_none() => {
                    match c {
                        Some(c) => pending = Some(c),
                        None => inbox_open = false,
                    }
                    continue;
                }
            }
        }

        let data = rd.buffered();
        if pending.is_none() && !shared.opts.strict {
            // Nothing to stop for: the bytes go out before the tap looks
            // at them, so decoding and logging add no latency to the hop.
            // stamped when read: a slow reader must not move the frames later
            let now = SystemTime::now();
            shared.touch(dir);
            let written = write_noting(wr, data, shared.written(dir)).await;
            let batch = FeedOpts {
                max_events: MAX_BATCH,
                ..FeedOpts::default()
            };
            let mut off = 0;
            while off < data.len() {
                reserve_batch(&mut out, last_batch);
                let rest = &data[off..];
                // Frames straight into the log, which stays locked for the
                // feed; not while inflating, which can take long enough to
                // hold up the sink thread's writing.
                let fed = if tap.inflates() {
                    tap.feed_until(rest, now, &mut out, batch)
                } else {
                    shared.events.with_frame_lines(|lines| {
                        tap.feed_until_lines(rest, now, &mut out, batch, lines)
                    })
                };
                off += fed.consumed;
                if !out.is_empty() {
                    last_batch = out.len();
                    shared.events.send_all(&mut out).await;
                }
                if fed.consumed == 0 {
                    break;
                }
            }
            let n = data.len();
            rd.consume(n);
            if let Err(e) = written {
                return StreamEnd::WriteFailed(e.to_string());
            }
            continue;
        }
        let stop = match pending.as_ref() {
            None => Stop::Never,
            Some(c) if c.frame().needs_message_boundary() => Stop::MessageEnd,
            Some(_) => Stop::FrameEnd,
        };
        let opts = FeedOpts {
            stop,
            max_events: MAX_BATCH,
            stop_at_violation: shared.opts.strict,
        };
        reserve_batch(&mut out, last_batch);
        let fed = tap.feed_until(data, SystemTime::now(), &mut out, opts);
        let violation = fed.violation_at.filter(|_| shared.opts.strict);
        let n = violation.unwrap_or(fed.consumed).min(fed.consumed);
        shared.touch(dir);
        let written = if n > 0 {
            write_noting(wr, &data[..n], shared.written(dir)).await
        } else {
            Ok(())
        };
        rd.consume(n);
        if !out.is_empty() {
            last_batch = out.len();
            shared.events.send_all(&mut out).await;
        }
        if let Err(e) = written {
            return StreamEnd::WriteFailed(e.to_string());
        }
        if violation.is_some() {
            // boxed: a rare path should not size every connection's future
            return Box::pin(strict_close(
                wr,
                tap,
                fed.violation_mid_frame,
                shared,
                other,
            ))
            .await;
        }
    }
}

/// Writes all of `data` and flushes, adding each partial write to
/// `written` as it goes: a peer that reads slowly takes a large read in
/// many writes, and the linger must see those as progress.
async fn write_noting<W: AsyncWrite + Unpin>(
    wr: &mut W,
    mut data: &[u8],
    written: &AtomicU64,
) -> io::Result<()> {
    while !data.is_empty() {
        let n = wr.write(data).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        add_own(written, n as u64);
        data = &data[n..];
    }
    wr.flush().await
}

/// What [`splice_round`] did.
enum Spliced {
    /// Nothing: no plain sockets, or no pipe.
    Not,
    Moved,
    End(StreamEnd),
}

/// `ahead` bytes of payload the tap will not look at (`opaque_ahead`),
/// between plain sockets: the kernel moves them from one socket to the
/// other and wstap never copies them. One round, as much as is there up
/// to the pipe's size.
async fn splice_round<R, W>(
    rd: &mut Inbound<R>,
    wr: &mut W,
    tap: &mut StreamTap,
    shared: &Shared<'_>,
    pipe: &mut Option<Option<Pipe>>,
    ahead: u64,
    out: &mut Vec<Event>,
) -> Spliced
where
    R: AsyncRead + TcpSide + Unpin,
    W: AsyncWrite + TcpSide + Unpin,
{
    let Some((src, dst)) = rd.get_ref().tcp().zip(wr.tcp()) else {
        return Spliced::Not;
    };
    let made = pipe.get_or_insert_with(|| match Pipe::new() {
        Ok(p) => Some(p),
        Err(e) => {
            tracing::debug!(error = %e, "no pipe for splicing; relaying by copy");
            None
        }
    });
    let Some(p) = made else {
        return Spliced::Not;
    };
    let max = usize::try_from(ahead).unwrap_or(usize::MAX);
    match p.round(src, dst, max, shared.written(tap.dir())).await {
        Ok(0) => {
            // the sender closed: pass the half-close on, as a read would
            let _ = wr.shutdown().await;
            Spliced::End(StreamEnd::Eof)
        }
        Ok(n) => {
            rd.total += n as u64;
            shared.touch(tap.dir());
            tap.skip(n as u64, SystemTime::now(), out);
            if !out.is_empty() {
                shared.events.send_all(out).await;
            }
            Spliced::Moved
        }
        Err(SpliceError::Unsupported(e)) => {
            tracing::debug!(error = %e, "splice refused; relaying by copy");
            *pipe = Some(None);
            Spliced::Not
        }
        Err(SpliceError::Read(e)) => Spliced::End(StreamEnd::Reset(e.to_string())),
        Err(SpliceError::Write(e)) => Spliced::End(StreamEnd::WriteFailed(e.to_string())),
    }
}

/// Sizes an empty event batch from the last one up front: growing a Vec
/// of events step by step copies them several times.
fn reserve_batch(out: &mut Vec<Event>, last_batch: usize) {
    if out.capacity() == 0 && last_batch > 0 {
        out.reserve_exact(last_batch.next_power_of_two().min(MAX_BATCH));
    }
}

/// `--strict`: the sender of `tap`'s direction broke the protocol. Its
/// receiver gets a 1002 close right where the bad frame would have been;
/// the other pump sends the sender one at its next boundary.
async fn strict_close<W: AsyncWrite + Unpin>(
    wr: &mut W,
    tap: &StreamTap,
    mid_frame: bool,
    shared: &Shared<'_>,
    other: &mpsc::Sender<Box<Control>>,
) -> StreamEnd {
    let dir = tap.dir();
    let reason = format!("protocol violation by the {}", dir.sender());
    let detail = if mid_frame {
        format!(
            "--strict: wstap closed the connection after the {} broke RFC 6455 inside a frame it had partly forwarded; the {} got no close frame (one cannot go inside a frame), the {} got 1002",
            dir.sender(),
            dir.receiver(),
            dir.sender()
        )
    } else {
        format!(
            "--strict: wstap closed the connection with 1002 (Protocol Error) after the {} broke RFC 6455; the offending frame was not forwarded",
            dir.sender()
        )
    };
    let to_receiver = inject::close(dir, 1002, &reason, random_mask(), shared.opts.max_preview);
    if !mid_frame && write_flush(wr, &to_receiver.wire).await.is_ok() {
        let ev = Event::conn(
            SystemTime::now(),
            shared.conn,
            EventKind::Frame(to_receiver.event),
        );
        shared.events.send(ev).await;
    }
    let _ = wr.shutdown().await;
    let to_sender = inject::close(
        dir.opposite(),
        1002,
        &reason,
        random_mask(),
        shared.opts.max_preview,
    );
    let _ = other.try_send(Box::new(Control::CloseAndEnd {
        frame: to_sender,
        reason: "protocol-violation",
        detail: detail.clone(),
    }));
    StreamEnd::Cut {
        reason: "protocol-violation",
        detail,
    }
}

/// Ends an upgraded connection without destroying what was relayed: shuts
/// down both write sides, then reads and drops what the peers still send
/// until they close (or `limit` passes). Dropping a socket that has unread
/// input makes the kernel send RST, and a peer that gets RST loses the
/// bytes still waiting in its own receive queue: frames wstap relayed and
/// logged would then never reach the application (seen at shutdown, where
/// wstap sends 1001 while the peers are still sending).
pub async fn close_gently<CR, CW, UR, UW>(sides: &mut Sides<CR, CW, UR, UW>, limit: Duration)
where
    CR: AsyncRead + Unpin,
    CW: AsyncWrite + Unpin,
    UR: AsyncRead + Unpin,
    UW: AsyncWrite + Unpin,
{
    let Sides {
        client_rd,
        client_wr,
        up_rd,
        up_wr,
    } = sides;
    let _ = tokio::time::timeout(limit, async {
        tokio::join!(
            shutdown_and_drain(client_rd, client_wr, LINGER_BYTES, limit),
            shutdown_and_drain(up_rd, up_wr, LINGER_BYTES, limit)
        )
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;
    use std::task::Wake;

    /// Counts its wake-ups.
    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn control(code: u16) -> Box<Control> {
        Box::new(Control::Inject {
            frame: inject::close(Dir::ServerToClient, code, "", [0; 4], 16),
            done: None,
        })
    }

    fn code(c: &Control) -> Option<u16> {
        c.frame().event.close_code
    }

    #[test]
    fn an_inbox_that_holds_the_waker_still_wakes_for_every_control() {
        let (tx, rx) = mpsc::channel(4);
        let mut inbox = Inbox::new(rx);
        let count = Arc::new(Count::default());
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let wakes = || count.0.load(Ordering::SeqCst);

        assert!(inbox.poll_next(&mut cx).is_pending());
        // polled again with nothing sent: still waiting, and no wake
        assert!(inbox.poll_next(&mut cx).is_pending());
        tx.try_send(control(4001)).unwrap();
        assert_eq!(wakes(), 1, "the first control wakes the pump");
        match inbox.poll_next(&mut cx) {
            Poll::Ready(Some(c)) => assert_eq!(code(&c), Some(4001)),
            other => panic!("expected the control, got {other:?}"),
        }

        // taken by a glance instead of a wait
        assert!(inbox.poll_next(&mut cx).is_pending());
        tx.try_send(control(4002)).unwrap();
        assert_eq!(wakes(), 2);
        assert_eq!(inbox.try_take().as_deref().and_then(code), Some(4002));
        assert!(inbox.try_take().is_none());
        // the wait after a glance must register again, or this one is lost
        assert!(inbox.poll_next(&mut cx).is_pending());
        tx.try_send(control(4003)).unwrap();
        assert_eq!(wakes(), 3, "a control after a glance still wakes the pump");

        // another waker (the pump polled from elsewhere) gets registered
        let other = Arc::new(Count::default());
        let other_waker = Waker::from(other.clone());
        let mut other_cx = Context::from_waker(&other_waker);
        assert!(matches!(
            inbox.poll_next(&mut other_cx),
            Poll::Ready(Some(_))
        ));
        assert!(inbox.poll_next(&mut other_cx).is_pending());
        tx.try_send(control(4004)).unwrap();
        assert_eq!(other.0.load(Ordering::SeqCst), 1);
        assert_eq!(wakes(), 3);
    }

    /// After one direction ended, the other is let run while it moves
    /// bytes: a write that a slow reader takes a piece at a time moves
    /// them though nothing new is read (here for longer than the linger).
    #[tokio::test]
    async fn the_linger_waits_for_a_direction_still_delivering_to_a_slow_reader() {
        use std::sync::atomic::AtomicBool;
        let (last, written) = (AtomicU64::new(0), AtomicU64::new(0));
        let done = AtomicBool::new(false);
        let pump = async {
            for _ in 0..9 {
                tokio::time::sleep(Duration::from_millis(500)).await;
                written.fetch_add(16 * 1024, Ordering::Relaxed);
            }
            done.store(true, Ordering::Relaxed);
        };
        linger(pump, &last, &written).await;
        assert!(
            done.load(Ordering::Relaxed),
            "cut while it was still delivering"
        );
    }

    /// A task out of tokio's cooperative budget gets `Pending` from the
    /// channel without the channel taking its waker; an inbox that took
    /// that for a wait would skip the next one, and the next control would
    /// wake no one (a pump after a long burst of reads, then silence).
    #[tokio::test]
    async fn an_inbox_polled_out_of_budget_still_wakes_for_the_next_control() {
        use std::future::Future;
        let (tx, rx) = mpsc::channel(4);
        let mut inbox = Inbox::new(rx);
        let sender = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            tx.send(control(4005)).await.ok();
            // the channel stays open: a closed one would wake the pump anyway
            tokio::time::sleep(Duration::from_secs(10)).await;
        });
        let mut polls = 0;
        let got = tokio::select! {
            biased;
            _ = tokio::time::sleep(Duration::from_secs(2)) => None,
            c = std::future::poll_fn(|cx| {
                polls += 1;
                if polls == 1 {
                    while tokio::task::coop::has_budget_remaining() {
                        let _ = std::pin::pin!(tokio::task::coop::consume_budget()).poll(cx);
                    }
                }
                inbox.poll_next(cx)
            }) => c,
        };
        sender.abort();
        assert_eq!(
            got.as_deref().and_then(code),
            Some(4005),
            "the control sent after the pump went back to waiting woke it"
        );
        assert!(polls >= 3, "polled out of budget, then waiting, then woken");
    }
}
