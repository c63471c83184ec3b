//! The canonical record: one JSON object per line, gathered in a large
//! buffer (a syscall per frame would cost the relay) and written out when
//! it is full or the dispatcher says so. `diff` reads these files back.
//!
//! The buffer ([`SharedLog`]) can also take frame lines from the relay
//! threads themselves (see `bus::EventTx::with_frame_lines` and
//! `send_all`): when the log is the only output, a read's frames are
//! cheaper to encode where they were read than to hand to the sink thread
//! as events. Each relay thread has a buffer of its own, so relays never
//! wait on each other.

use std::cell::{Cell, RefCell};
use std::fs::File;
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Instant, SystemTime};

use tokio::sync::Notify;

use super::frame_json::FrameEncoder;
use super::{Sink, FLUSH_EVERY};
use crate::proto::event::{ConnId, Event, EventKind, FrameEvent};
use crate::proto::stream::FrameLines;

/// Bytes gathered before they are written out. Each time a buffer fills,
/// a relay wakes the sink thread, on a machine the relays keep busy; at
/// 64 KiB that was a thousand wake-ups a second at 100k echoes a second.
const BUF: usize = 256 * 1024;
/// Bytes waiting to be written past which relays stop adding lines (they
/// queue events instead, and wait when the queue is full): the bound on
/// this buffer while the file is slow.
const HELD_MAX: usize = 1024 * 1024;

/// The log's buffer and file, shared by the sink thread and, when the log
/// is the only output, the relay threads. Relays only add lines; the file
/// is written by the sink thread (or whoever flushes), never by a relay.
pub struct SharedLog {
    /// Lines in the order they are written: the sink thread's, and those
    /// of senders on threads that are not pinned relay threads.
    lines: Mutex<Lines>,
    /// A buffer per pinned relay thread that wrote here: its lines come
    /// after everything in `lines` (see [`Self::push`]).
    relays: Mutex<Vec<Arc<Mutex<Lines>>>>,
    /// Tells this log apart in the threads' lists of their buffers.
    id: usize,
    out: Mutex<Out>,
    /// Writing failed: relays stop adding lines (the dispatcher reports
    /// the failure and switches the sink off).
    failed: AtomicBool,
    /// Wakes the dispatcher when relays added the first lines since the
    /// last write, or filled the buffer; set when relays are let in.
    wake: OnceLock<Arc<Notify>>,
}

struct Lines {
    /// Lines not yet written: each event is encoded straight in here (a
    /// `BufWriter` would take every line through one more copy).
    buf: Vec<u8>,
    frames: FrameEncoder,
    /// When `buf` last went from empty to holding lines.
    since: Option<Instant>,
    /// Frame events senders encoded into this buffer themselves.
    from_relays: u64,
}

/// A relay's frame events, encoded as they are made.
impl FrameLines for Lines {
    fn frame(&mut self, ts: SystemTime, conn: ConnId, frame: &FrameEvent) {
        self.relay_frame(ts, Some(conn), frame);
    }
}

impl Lines {
    fn new(capacity: usize) -> Self {
        Lines {
            buf: Vec::with_capacity(capacity),
            frames: FrameEncoder::new(),
            since: None,
            from_relays: 0,
        }
    }

    /// A frame event's line, written by a relay.
    fn relay_frame(&mut self, ts: SystemTime, conn: Option<ConnId>, frame: &FrameEvent) {
        self.frames.encode_frame(&mut self.buf, ts, conn, frame);
        self.buf.push(b'\n');
        self.from_relays += 1;
    }
}

static NEXT_ID: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// A relay thread: each connection on it stays on it for its whole
    /// life, so its lines may wait in the thread's own buffer without
    /// another thread's lines of the same connection overtaking them.
    static PINNED: Cell<bool> = const { Cell::new(false) };
    /// This thread's buffer in each log it wrote into (there is one log;
    /// tests make many).
    static MINE: RefCell<Vec<(usize, Arc<Mutex<Lines>>)>> = const { RefCell::new(Vec::new()) };
}

/// Marks the calling thread as a relay thread whose connections never
/// move to another thread (a current-thread runtime's).
pub fn pin_thread() {
    PINNED.set(true);
}

struct Out {
    w: Box<dyn Write + Send>,
    /// The buffer being written: swapped with `Lines::buf`, so relays can
    /// add lines while the sink thread writes.
    spare: Vec<u8>,
}

/// A mutex whose holder panicked still guards whole lines (each line is
/// encoded and then kept or cut off before the lock is released).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl std::fmt::Debug for SharedLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedLog")
            .field("failed", &self.failed)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl SharedLog {
    fn new(w: Box<dyn Write + Send>) -> Self {
        SharedLog {
            lines: Mutex::new(Lines::new(BUF + 4096)),
            relays: Mutex::new(Vec::new()),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            out: Mutex::new(Out {
                w,
                spare: Vec::with_capacity(BUF + 4096),
            }),
            failed: AtomicBool::new(false),
            wake: OnceLock::new(),
        }
    }

    /// Runs `f` on the calling thread's buffer: its own on a
    /// [pinned](pin_thread) relay thread (made on its first call), the
    /// shared one elsewhere.
    fn with_lines<R>(&self, f: impl FnOnce(&Mutex<Lines>) -> R) -> R {
        if !PINNED.get() {
            return f(&self.lines);
        }
        MINE.with_borrow_mut(|mine| {
            if let Some((_, l)) = mine.iter().find(|(id, _)| *id == self.id) {
                return f(l);
            }
            // buffers only this thread still holds are of logs now gone
            mine.retain(|(_, l)| Arc::strong_count(l) > 1);
            let l = Arc::new(Mutex::new(Lines::new(BUF + 4096)));
            lock(&self.relays).push(l.clone());
            mine.push((self.id, l.clone()));
            f(&l)
        })
    }

    fn relay_lines(&self) -> Vec<Arc<Mutex<Lines>>> {
        lock(&self.relays).clone()
    }

    /// The shared buffer, then `relays`: the order their lines go out in.
    fn in_order<'a>(
        &'a self,
        relays: &'a [Arc<Mutex<Lines>>],
    ) -> impl Iterator<Item = &'a Mutex<Lines>> {
        std::iter::once(&self.lines).chain(relays.iter().map(|r| &**r))
    }

    /// Lets relays add frame lines ([`Self::take_frames`]); `wake` is
    /// notified when the dispatcher should look at [`Self::due`].
    pub fn open_to_relays(&self, wake: Arc<Notify>) {
        let _ = self.wake.set(wake);
    }

    /// Frame events relays wrote here themselves.
    pub fn from_relays(&self) -> u64 {
        let relays = self.relay_lines();
        self.in_order(&relays).map(|l| lock(l).from_relays).sum()
    }

    /// Encodes `evs` here if they are all frame events and the buffer has
    /// room; `false` (nothing taken) otherwise. Called by the relays.
    pub fn take_frames(&self, evs: &[Event]) -> bool {
        if !evs.iter().all(|e| matches!(e.kind, EventKind::Frame(_))) {
            return false;
        }
        self.add_lines(|l| {
            let Some(l) = l else { return false };
            for ev in evs {
                if let EventKind::Frame(f) = &ev.kind {
                    l.relay_frame(ev.ts, ev.conn, f);
                }
            }
            true
        })
    }

    /// Runs `f` with this thread's buffer to write frame lines into
    /// (through [`FrameLines`]) when relays may add lines now, else with
    /// `None`. Called by the relays, around a feed of their tap.
    pub fn with_frame_lines<R>(&self, f: impl FnOnce(Option<&mut dyn FrameLines>) -> R) -> R {
        self.add_lines(|l| f(l.map(|l| l as &mut dyn FrameLines)))
    }

    /// Runs `f` on the calling thread's buffer, locked, when relays may
    /// add lines (the log works, and the buffer is not over [`HELD_MAX`]),
    /// else on `None`; then wakes the dispatcher if the lines added are
    /// the first since the last write or filled the buffer.
    fn add_lines<R>(&self, f: impl FnOnce(Option<&mut Lines>) -> R) -> R {
        let Some(wake) = self.wake.get() else {
            return f(None);
        };
        if self.failed.load(Ordering::Relaxed) {
            return f(None);
        }
        self.with_lines(|l| {
            let mut l = lock(l);
            let before = l.buf.len();
            if before >= HELD_MAX {
                drop(l);
                return f(None);
            }
            let r = f(Some(&mut l));
            let after = l.buf.len();
            if before == 0 && after > 0 {
                l.since = Some(Instant::now());
            }
            drop(l);
            if (before == 0 && after > 0) || (before < BUF && after >= BUF) {
                wake.notify_one();
            }
            r
        })
    }

    /// Appends events of any kind (the sink thread), under one lock. The
    /// relay threads' lines so far go first: a connection's event that
    /// came through the queue follows its frame lines a relay wrote before
    /// sending it, and the relay writes lines again only once the queue
    /// is empty, so after it.
    fn push(&self, evs: &[Event]) -> io::Result<()> {
        let relays = self.relay_lines();
        let mut guard = lock(&self.lines);
        for r in &relays {
            let mut r = lock(r);
            if !r.buf.is_empty() {
                guard.since = guard.since.into_iter().chain(r.since).min();
                guard.buf.extend_from_slice(&r.buf);
                r.buf.clear();
                r.since = None;
            }
        }
        for ev in evs {
            let l: &mut Lines = &mut guard;
            let start = l.buf.len();
            if start == 0 {
                l.since = Some(Instant::now());
            }
            // frames come at wire speed: they take the hand-written encoder
            if !l.frames.encode(&mut l.buf, ev) {
                if let Err(e) = serde_json::to_writer(&mut l.buf, ev) {
                    // no half line in the log
                    l.buf.truncate(start);
                    // the sink is switched off: relays must not go on
                    // filling a buffer no one writes out
                    self.failed.store(true, Ordering::Relaxed);
                    return Err(io::Error::other(e));
                }
            }
            l.buf.push(b'\n');
            if l.buf.len() >= BUF {
                drop(guard);
                self.write_out()?;
                guard = lock(&self.lines);
            }
        }
        Ok(())
    }

    /// When the lines gathered so far should be written: now once the
    /// buffer is full, else [`FLUSH_EVERY`] after the oldest was added.
    fn due(&self) -> Option<Instant> {
        let relays = self.relay_lines();
        let mut oldest: Option<Instant> = None;
        for l in self.in_order(&relays) {
            let l = lock(l);
            if l.buf.len() >= BUF {
                return Some(Instant::now());
            }
            oldest = oldest.into_iter().chain(l.since).min();
        }
        oldest.map(|s| s + FLUSH_EVERY)
    }

    /// Hands the gathered lines to the file: the shared buffer's, then
    /// each relay thread's (which came after them, see [`Self::push`]).
    /// The file's lock is taken first and held while writing, so buffers
    /// reach the file in the order they were filled; a buffer's lock only
    /// for the swap.
    fn write_out(&self) -> io::Result<()> {
        let relays = self.relay_lines();
        let mut o = lock(&self.out);
        let Out { w, spare } = &mut *o;
        for l in self.in_order(&relays) {
            {
                let mut l = lock(l);
                std::mem::swap(&mut l.buf, spare);
                l.since = None;
            }
            if spare.is_empty() {
                continue;
            }
            let r = w.write_all(spare);
            spare.clear();
            if r.is_err() {
                self.failed.store(true, Ordering::Relaxed);
                return r;
            }
        }
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        self.write_out()?;
        lock(&self.out).w.flush()
    }
}

impl Drop for SharedLog {
    /// What is still gathered goes out, as a `BufWriter` would write it;
    /// not after a failed write, which may have left half a line (a full
    /// disk): lines appended to it, should space have come back, would
    /// make one broken line and a gap.
    fn drop(&mut self) {
        if !self.failed.load(Ordering::Relaxed) {
            let _ = self.write_out();
        }
    }
}

pub struct NdjsonSink {
    log: Arc<SharedLog>,
    name: String,
    /// Whether the output is a file (relays may add lines to it) rather
    /// than stdout.
    file: bool,
}

impl NdjsonSink {
    /// Writes to `path`, or to stdout when it is `-`.
    pub fn create(path: &Path) -> io::Result<Self> {
        if path == Path::new("-") {
            return Ok(Self::new(Box::new(io::stdout()), "JSON log (stdout)"));
        }
        let mut sink = Self::new(
            Box::new(File::create(path)?),
            &format!("JSON log {}", path.display()),
        );
        sink.file = true;
        Ok(sink)
    }

    pub fn new(w: Box<dyn Write + Send>, name: &str) -> Self {
        NdjsonSink {
            log: Arc::new(SharedLog::new(w)),
            name: name.to_string(),
            file: false,
        }
    }

    /// The buffer relays may add frame lines to (see `bus`).
    pub fn shared(&self) -> Arc<SharedLog> {
        self.log.clone()
    }

    /// Whether the log is a file rather than stdout. A pipe to stdout
    /// stays with the sink thread: a reader that leaves must not make a
    /// relay see a write fail.
    pub fn is_file(&self) -> bool {
        self.file
    }
}

impl Sink for NdjsonSink {
    fn event(&mut self, ev: &Event) -> io::Result<()> {
        self.log.push(std::slice::from_ref(ev))
    }

    fn events(&mut self, evs: &[Event]) -> io::Result<()> {
        self.log.push(evs)
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.log.flush() {
            // a closed stdout pipe (`| head`) is a reader that left, not a failure
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
            r => r,
        }
    }

    fn flush_due(&self) -> Option<Instant> {
        self.log.due()
    }

    fn name(&self) -> &str {
        &self.name
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus;
    use crate::proto::event::{ConnId, Dir, ErrorEvent, FrameEvent};
    use crate::proto::frame::Opcode;
    use crate::sink::memory::Memory;
    use crate::sink::spawn_dispatcher;
    use std::time::{Duration, SystemTime};

    /// (connection, sequence number) of each line: a frame's is its
    /// `len`, another event's its error message.
    fn lines(mem: &Memory) -> Vec<(u64, u64)> {
        let text = String::from_utf8(mem.bytes()).expect("UTF-8");
        text.lines()
            .map(|l| {
                let ev: Event = serde_json::from_str(l).expect("a JSON line");
                let conn = ev.conn.map_or(0, |c| c.0);
                let seq = match &ev.kind {
                    EventKind::Frame(f) => f.len,
                    EventKind::Error(e) => e.message.parse().expect("a number"),
                    other => panic!("unexpected {other:?}"),
                };
                (conn, seq)
            })
            .collect()
    }

    fn frame(conn: u64, seq: u64) -> Event {
        Event::conn(
            SystemTime::now(),
            ConnId(conn),
            EventKind::Frame(FrameEvent::new(Dir::ClientToServer, Opcode::Binary, seq)),
        )
    }

    fn other(conn: u64, seq: u64) -> Event {
        Event::conn(
            SystemTime::now(),
            ConnId(conn),
            EventKind::Error(ErrorEvent {
                message: seq.to_string(),
            }),
        )
    }

    fn log_to_memory(
        capacity: usize,
    ) -> (
        bus::EventTx,
        Memory,
        Arc<SharedLog>,
        std::thread::JoinHandle<crate::sink::DispatchReport>,
    ) {
        let (tx, rx) = bus::channel(capacity, false);
        let mem = Memory::default();
        let sink = NdjsonSink::new(Box::new(mem.clone()), "test log");
        let shared = sink.shared();
        rx.write_frames_to(shared.clone());
        let d = spawn_dispatcher(rx, vec![Box::new(sink)]).expect("dispatcher");
        (tx, mem, shared, d)
    }

    #[tokio::test]
    async fn a_short_frame_batch_is_written_by_its_sender_once_nothing_is_queued() {
        let (tx, mem, shared, d) = log_to_memory(16);
        // queued: not a frame
        tx.send(other(1, 0)).await;
        // a frame right behind it must not overtake it
        tx.send_all(&mut vec![frame(1, 1)]).await;
        // once both are in the file the queue is empty...
        for _ in 0..200 {
            if lines(&mem).len() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(lines(&mem), [(1, 0), (1, 1)]);
        let before = shared.from_relays();
        // ...and a one-frame batch is encoded by the sender
        tx.send_all(&mut vec![frame(1, 2)]).await;
        assert_eq!(shared.from_relays(), before + 1);
        // a long batch is queued, and the frame after it waits its turn
        let mut long: Vec<Event> = (3..8).map(|s| frame(1, s)).collect();
        tx.send_all(&mut long).await;
        tx.send_all(&mut vec![frame(1, 8)]).await;
        drop(tx);
        let report = d.join().expect("dispatcher");
        assert_eq!(report.events, 9);
        let want: Vec<(u64, u64)> = (0..9).map(|s| (1, s)).collect();
        assert_eq!(lines(&mem), want);
    }

    const CONNS: u64 = 12;
    const EVENTS: u64 = 3000;

    /// Connection `c` sends its events in batches of 1 to 5, with other
    /// events among the frames.
    async fn send_conn(tx: bus::EventTx, c: u64) {
        let mut seq = 0;
        let mut round = c;
        while seq < EVENTS {
            round = round.wrapping_mul(6364136223846793005).wrapping_add(1);
            let size = (round >> 60) % 5 + 1;
            let mut batch: Vec<Event> = (seq..(seq + size).min(EVENTS))
                .map(|s| {
                    if (round >> 40) % 9 == 0 {
                        other(c, s)
                    } else {
                        frame(c, s)
                    }
                })
                .collect();
            seq += batch.len() as u64;
            if (round >> 30) % 2 == 0 {
                // as a relay's tap does: frames straight into the log until
                // another event comes, which goes with the rest through the
                // queue
                let mut rest = batch.into_iter().peekable();
                tx.with_frame_lines(|lines| {
                    let Some(lines) = lines else { return };
                    while let Some(ev) = rest.next_if(|e| matches!(e.kind, EventKind::Frame(_))) {
                        if let (EventKind::Frame(f), Some(conn)) = (&ev.kind, ev.conn) {
                            lines.frame(ev.ts, conn, f);
                        }
                    }
                });
                batch = rest.collect();
            }
            tx.send_all(&mut batch).await;
            if (round >> 50) % 4 == 0 {
                tokio::task::yield_now().await;
            }
        }
    }

    /// Every connection's lines came out whole and in order.
    fn assert_in_order(mem: &Memory) {
        let mut next = vec![0u64; CONNS as usize + 1];
        for (conn, seq) in lines(mem) {
            assert_eq!(
                seq, next[conn as usize],
                "connection {conn}: a line out of order"
            );
            next[conn as usize] += 1;
        }
        assert!(next[1..].iter().all(|&n| n == EVENTS), "{next:?}");
    }

    /// Senders on a runtime whose tasks move between threads: every
    /// connection's lines come out whole and in order, whichever way each
    /// batch went.
    #[test]
    fn each_connection_keeps_its_order_when_senders_write_lines_themselves() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .expect("runtime");
        // a small queue: senders also wait on it
        let (tx, mem, _shared, d) = log_to_memory(4);
        rt.block_on(async {
            let tasks: Vec<_> = (1..=CONNS)
                .map(|c| tokio::spawn(send_conn(tx.clone(), c)))
                .collect();
            for t in tasks {
                t.await.expect("sender");
            }
        });
        drop(tx);
        let report = d.join().expect("dispatcher");
        assert_eq!(report.events, CONNS * EVENTS);
        assert_in_order(&mem);
    }

    /// Takes `room` bytes, then fails once as a full disk does, then takes
    /// everything again (space came back).
    struct FullOnce {
        mem: Memory,
        room: Option<usize>,
    }

    impl Write for FullOnce {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            match self.room {
                None => self.mem.write(b),
                Some(0) => {
                    self.room = None;
                    Err(io::Error::other("no space left on device"))
                }
                Some(n) => {
                    let k = n.min(b.len());
                    self.room = Some(n - k);
                    self.mem.write(&b[..k])
                }
            }
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn after_a_failed_write_nothing_is_appended_to_the_half_line() {
        let mem = Memory::default();
        let log = SharedLog::new(Box::new(FullOnce {
            mem: mem.clone(),
            room: Some(10),
        }));
        log.open_to_relays(Arc::new(Notify::new()));
        log.push(&[other(1, 0)]).expect("gathered");
        // a relay thread's lines, written after the shared buffer's
        std::thread::scope(|s| {
            s.spawn(|| {
                pin_thread();
                assert!(log.take_frames(&[frame(1, 1), frame(1, 2)]));
            });
        });
        assert!(log.flush().is_err(), "the disk filled up mid-line");
        assert_eq!(mem.bytes().len(), 10);
        drop(log);
        assert_eq!(
            mem.bytes().len(),
            10,
            "the relay's lines were not glued to the half line at exit"
        );
    }

    /// Pinned relay threads, each with connections of its own, keep their
    /// lines in buffers of their own: the lines still come out in each
    /// connection's order, and the timer writes them out while the
    /// senders are still there.
    #[test]
    fn relay_threads_lines_keep_each_connections_order() {
        let (tx, mem, shared, d) = log_to_memory(4);
        let threads: Vec<_> = (0..3u64)
            .map(|t| {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    pin_thread();
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("runtime");
                    rt.block_on(async {
                        let tasks: Vec<_> = (1..=CONNS)
                            .filter(|c| c % 3 == t)
                            .map(|c| tokio::spawn(send_conn(tx.clone(), c)))
                            .collect();
                        for t in tasks {
                            t.await.expect("sender");
                        }
                    });
                })
            })
            .collect();
        for t in threads {
            t.join().expect("relay thread");
        }
        // a buffer per thread that wrote lines itself (a thread may find
        // the queue busy every time)
        let buffers = lock(&shared.relays).len();
        assert!((1..=3).contains(&buffers), "{buffers} buffers");
        assert!(shared.from_relays() > 0);
        // still open: what the threads wrote goes out on the timer
        let mut written = 0;
        for _ in 0..300 {
            written = lines(&mem).len();
            if written as u64 == CONNS * EVENTS {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(written as u64, CONNS * EVENTS);
        drop(tx);
        let report = d.join().expect("dispatcher");
        assert_eq!(report.events, CONNS * EVENTS);
        assert_in_order(&mem);
    }
}
