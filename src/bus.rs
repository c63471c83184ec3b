//! The bounded event channel between the I/O shell and the sinks. Events
//! travel in batches (a relay chunk's frames go as one message), so the
//! channel costs per read, not per frame. By default a full channel makes
//! the relay wait (the log is the product); in lossy mode events are
//! dropped and counted instead. When the NDJSON log is the only output,
//! frame events skip the channel: the sender encodes them into the log's
//! buffer itself, as its tap makes them (see [`EventTx::with_frame_lines`])
//! or as a batch (see [`EventTx::send_all`]); when no output lists frames,
//! relays send none.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::sync::{mpsc, Notify};

use crate::proto::event::{Event, EventKind};
use crate::proto::stream::FrameLines;
use crate::sink::ndjson::SharedLog;

/// Batches queued between the relay and the sinks before senders wait.
pub const DEFAULT_CAPACITY: usize = 128;
/// Most events in one batch: bounds the channel's memory (capacity times
/// this) whatever a single read holds.
pub const MAX_BATCH: usize = 256;

/// The sending side, cloned into every connection task.
#[derive(Clone, Debug)]
pub struct EventTx {
    tx: mpsc::Sender<Vec<Event>>,
    lossy: bool,
    dropped: Arc<AtomicU64>,
    full: Arc<Notify>,
    /// Batches queued and not yet handled by the dispatcher. A sender
    /// encodes into the log only while this is 0: everything it queued
    /// before is then in the log, so each connection's lines keep their
    /// order.
    pending: Arc<AtomicUsize>,
    log: Arc<OnceLock<Arc<SharedLog>>>,
    /// No output takes frame events (`--quiet` and no file, no live
    /// view): senders leave them out instead of waking a thread to drop them.
    frames_unwanted: Arc<AtomicBool>,
}

/// The receiving side, owned by the sink dispatcher.
pub struct EventRx {
    rx: mpsc::Receiver<Vec<Event>>,
    dropped: Arc<AtomicU64>,
    lossy: bool,
    batches: Vec<Vec<Event>>,
    full: Arc<Notify>,
    pending: Arc<AtomicUsize>,
    log: Arc<OnceLock<Arc<SharedLog>>>,
    frames_unwanted: Arc<AtomicBool>,
}

impl EventRx {
    /// Tells senders that no output wants frame events: they keep the
    /// rest (connections, findings, closes) and send no frames.
    pub fn frames_unwanted(&self) {
        self.frames_unwanted.store(true, Ordering::Relaxed);
    }

    /// Lets senders encode their batches of frame events into `log`
    /// themselves. Only when `log` is the only output: other sinks would
    /// not see those events.
    pub fn write_frames_to(&self, log: Arc<SharedLog>) {
        log.open_to_relays(self.full.clone());
        let _ = self.log.set(log);
    }

    /// The dispatcher has handed `batches` received batches to every sink.
    pub fn handled(&self, batches: usize) {
        self.pending.fetch_sub(batches, Ordering::Release);
    }

    /// Frame events senders encoded into the log themselves.
    pub fn written_by_senders(&self) -> u64 {
        self.log.get().map_or(0, |l| l.from_relays())
    }

    /// Whether senders drop events rather than wait (`--lossy-log`).
    pub fn is_lossy(&self) -> bool {
        self.lossy
    }

    /// Events dropped so far in lossy mode.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Notified when a sender found the channel full (a dispatcher that
    /// lets events gather stops waiting then, so a burst from many
    /// connections is not held up by the pause), or when senders wrote
    /// into the log and it wants writing out. A handle of its own, so it
    /// can be waited on while receiving.
    pub fn waker(&self) -> Arc<Notify> {
        self.full.clone()
    }

    /// Appends the events of up to `limit` ready batches to `buf`, waiting
    /// for at least one; 0 once every sender is gone.
    pub async fn recv_many(&mut self, buf: &mut Vec<Event>, limit: usize) -> usize {
        let mut batches = std::mem::take(&mut self.batches);
        batches.clear();
        let got = self.recv_batches(&mut batches, limit).await;
        for b in batches.drain(..) {
            buf.extend(b);
        }
        self.batches = batches;
        got
    }

    /// Appends up to `limit` ready batches to `batches` as they came
    /// (no event is moved: an event is a few hundred bytes), waiting for
    /// at least one; returns the number of events, 0 once every sender is
    /// gone.
    pub async fn recv_batches(&mut self, batches: &mut Vec<Vec<Event>>, limit: usize) -> usize {
        let before = batches.len();
        if self.rx.recv_many(batches, limit.max(1)).await == 0 {
            return 0;
        }
        batches[before..].iter().map(Vec::len).sum()
    }
}

/// A new channel of `capacity` batches; `lossy` drops events rather than
/// wait when it is full.
pub fn channel(capacity: usize, lossy: bool) -> (EventTx, EventRx) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let dropped = Arc::new(AtomicU64::new(0));
    let full = Arc::new(Notify::new());
    let pending = Arc::new(AtomicUsize::new(0));
    let log = Arc::new(OnceLock::new());
    let frames_unwanted = Arc::new(AtomicBool::new(false));
    (
        EventTx {
            tx,
            lossy,
            dropped: dropped.clone(),
            full: full.clone(),
            pending: pending.clone(),
            log: log.clone(),
            frames_unwanted: frames_unwanted.clone(),
        },
        EventRx {
            rx,
            dropped,
            lossy,
            batches: Vec::new(),
            full,
            pending,
            log,
            frames_unwanted,
        },
    )
}

/// A batch counted in `pending` that has not reached the queue: dropped
/// without [`Unqueued::queued`] (not sent, or the sending future dropped
/// while it waited for room, as a relay ending a connection does), it
/// takes the count back, or the log would wait for a batch that never
/// comes and take no frame lines from the senders again.
struct Unqueued<'a>(Option<&'a AtomicUsize>);

impl<'a> Unqueued<'a> {
    fn new(pending: &'a AtomicUsize) -> Self {
        // counted before it can be received, so never below 0
        pending.fetch_add(1, Ordering::Relaxed);
        Unqueued(Some(pending))
    }

    /// In the queue: the dispatcher takes the count back once it is handled.
    fn queued(mut self) {
        self.0 = None;
    }
}

impl Drop for Unqueued<'_> {
    fn drop(&mut self) {
        if let Some(p) = self.0 {
            p.fetch_sub(1, Ordering::Release);
        }
    }
}

impl EventTx {
    async fn send_batch(&self, batch: Vec<Event>) {
        let count = Unqueued::new(&self.pending);
        match self.tx.try_send(batch) {
            Ok(()) => count.queued(),
            // once the sinks are gone (shutdown) events are discarded
            Err(mpsc::error::TrySendError::Closed(_)) => {}
            Err(mpsc::error::TrySendError::Full(b)) => {
                // the dispatcher may be letting events gather: wake it
                self.full.notify_one();
                if self.lossy {
                    self.dropped.fetch_add(b.len() as u64, Ordering::Relaxed);
                } else {
                    // boxed: waiting is rare, and the wait's state would
                    // otherwise take room in every connection's future
                    if Box::pin(self.tx.send(b)).await.is_ok() {
                        count.queued();
                    }
                }
            }
        }
    }

    /// Encodes `evs` into the log here when that keeps each connection's
    /// lines in order (nothing queued is still unhandled). Pipelined reads'
    /// long batches too: handing them to the sink thread to encode cost
    /// more than encoding them (measured: pipelined 64 B 463k-478k msgs/s
    /// against 412k-436k, 4 KiB 279k-286k against 231k-237k).
    fn write_here(&self, evs: &[Event]) -> bool {
        if evs.is_empty() || evs.len() > MAX_BATCH {
            return false;
        }
        self.log_in_order().is_some_and(|log| log.take_frames(evs))
    }

    /// The log, when frame lines written into it now cannot overtake a
    /// connection's events still queued: it lets senders in and nothing
    /// queued is unhandled.
    fn log_in_order(&self) -> Option<&SharedLog> {
        let log = self.log.get()?;
        (self.pending.load(Ordering::Acquire) == 0).then_some(&**log)
    }

    /// Runs `f` with somewhere to encode frame events straight into the
    /// log when that keeps each connection's lines in order (as
    /// `write_here`), else with `None`. A relay feeds its tap inside `f`:
    /// its frames then make no `Event` at all.
    pub fn with_frame_lines<R>(&self, f: impl FnOnce(Option<&mut dyn FrameLines>) -> R) -> R {
        match self.log_in_order() {
            Some(log) => log.with_frame_lines(f),
            None => f(None),
        }
    }

    /// Whether no output takes frame events: a tap then makes none.
    pub fn frames_unwanted(&self) -> bool {
        self.frames_unwanted.load(Ordering::Relaxed)
    }

    /// Queues an event. Waits while the channel is full unless lossy.
    pub async fn send(&self, ev: Event) {
        self.send_batch(vec![ev]).await;
    }

    /// Queues every event of `evs` in as few messages as the batch limit
    /// allows, leaving it empty; a batch of frame events is encoded into
    /// the log here instead when the log lets senders in and that
    /// keeps the order (see `write_here`).
    pub async fn send_all(&self, evs: &mut Vec<Event>) {
        if self.frames_unwanted.load(Ordering::Relaxed) {
            evs.retain(|e| !matches!(e.kind, EventKind::Frame(_)));
        }
        if self.write_here(evs) {
            crate::proto::preview::recycle(evs);
            return;
        }
        if evs.len() <= MAX_BATCH {
            if !evs.is_empty() {
                self.send_batch(std::mem::take(evs)).await;
            }
            return;
        }
        // one pass: splitting off the tail again and again would copy it
        // once per batch
        let mut all = std::mem::take(evs).into_iter();
        loop {
            let batch: Vec<Event> = all.by_ref().take(MAX_BATCH).collect();
            if batch.is_empty() {
                break;
            }
            self.send_batch(batch).await;
        }
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::event::{Dir, ErrorEvent, EventKind, FrameEvent};
    use crate::proto::frame::Opcode;
    use std::time::SystemTime;

    fn ev(i: usize) -> Event {
        Event::new(
            SystemTime::now(),
            None,
            EventKind::Error(ErrorEvent {
                message: i.to_string(),
            }),
        )
    }

    #[tokio::test]
    async fn a_sender_that_finds_the_queue_full_wakes_the_receiver() {
        let (tx, mut rx) = channel(1, false);
        let full = rx.waker();
        tx.send(ev(1)).await;
        // not full yet: nothing to signal
        let quiet =
            tokio::time::timeout(std::time::Duration::from_millis(50), full.notified()).await;
        assert!(quiet.is_err(), "no signal while there was room");
        let waiting = tokio::spawn(async move { tx.send(ev(2)).await });
        tokio::time::timeout(std::time::Duration::from_secs(5), full.notified())
            .await
            .expect("the blocked sender signals");
        let mut got = Vec::new();
        rx.recv_many(&mut got, 8).await;
        waiting.await.unwrap();
        rx.recv_many(&mut got, 8).await;
        assert_eq!(got.len(), 2);
    }

    #[tokio::test]
    async fn a_send_dropped_while_it_waits_for_room_is_not_counted_as_queued() {
        let (tx, mut rx) = channel(1, false);
        tx.send(ev(1)).await;
        assert_eq!(tx.pending.load(Ordering::Acquire), 1);
        // the queue is full: this send waits, and is given up (a relay
        // dropping a pump that was in it)
        let gave_up =
            tokio::time::timeout(std::time::Duration::from_millis(50), tx.send(ev(2))).await;
        assert!(gave_up.is_err(), "the send waited for room");
        let mut got = Vec::new();
        rx.recv_many(&mut got, 8).await;
        rx.handled(1);
        assert_eq!(got.len(), 1);
        assert_eq!(
            tx.pending.load(Ordering::Acquire),
            0,
            "nothing is left counted as queued, so senders may write lines again"
        );
    }

    #[tokio::test]
    async fn batches_arrive_whole_in_order_and_bounded() {
        let (tx, mut rx) = channel(64, false);
        let mut evs: Vec<Event> = (0..(MAX_BATCH * 2 + 7)).map(ev).collect();
        tx.send_all(&mut evs).await;
        assert!(evs.is_empty());
        tx.send(ev(9999)).await;
        drop(tx);
        let mut got = Vec::new();
        while rx.recv_many(&mut got, 16).await > 0 {}
        let names: Vec<String> = got
            .iter()
            .map(|e| match &e.kind {
                EventKind::Error(x) => x.message.clone(),
                _ => String::new(),
            })
            .collect();
        let mut want: Vec<String> = (0..(MAX_BATCH * 2 + 7)).map(|i| i.to_string()).collect();
        want.push("9999".into());
        assert_eq!(names, want);
    }

    #[tokio::test]
    async fn unwanted_frames_are_left_out_and_the_rest_still_sent() {
        let (tx, mut rx) = channel(8, false);
        let frame = || {
            Event::new(
                SystemTime::now(),
                None,
                EventKind::Frame(FrameEvent::new(Dir::ClientToServer, Opcode::Text, 1)),
            )
        };
        let mut before = vec![frame()];
        tx.send_all(&mut before).await;
        rx.frames_unwanted();
        let mut only_frames = vec![frame(), frame()];
        tx.send_all(&mut only_frames).await;
        assert!(only_frames.is_empty());
        let mut mixed = vec![frame(), ev(1), frame()];
        tx.send_all(&mut mixed).await;
        drop(tx);
        let mut got = Vec::new();
        while rx.recv_many(&mut got, 16).await > 0 {}
        let kinds: Vec<&str> = got
            .iter()
            .map(|e| match &e.kind {
                EventKind::Frame(_) => "frame",
                EventKind::Error(_) => "error",
                _ => "other",
            })
            .collect();
        assert_eq!(
            kinds,
            ["frame", "error"],
            "the frame sent before, then only the error"
        );
    }

    #[tokio::test]
    async fn lossy_mode_counts_every_dropped_event() {
        let (tx, mut rx) = channel(1, true);
        let mut a: Vec<Event> = (0..3).map(ev).collect();
        let mut b: Vec<Event> = (0..5).map(ev).collect();
        tx.send_all(&mut a).await;
        tx.send_all(&mut b).await;
        assert_eq!(tx.dropped(), 5);
        drop(tx);
        let mut got = Vec::new();
        while rx.recv_many(&mut got, 16).await > 0 {}
        assert_eq!(got.len(), 3);
        assert_eq!(rx.dropped(), 5);
    }
}
