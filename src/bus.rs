//! The bounded event channel between the I/O shell and the sinks. By
//! default a full channel makes the relay wait (the log is the product);
//! in lossy mode events are dropped and counted instead.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::proto::event::Event;

/// Events queued between the relay and the sinks before senders wait.
pub const DEFAULT_CAPACITY: usize = 8192;

/// The sending side, cloned into every connection task.
#[derive(Clone, Debug)]
pub struct EventTx {
    tx: mpsc::Sender<Event>,
    lossy: bool,
    dropped: Arc<AtomicU64>,
}

/// The receiving side, owned by the sink dispatcher.
pub struct EventRx {
    pub(crate) rx: mpsc::Receiver<Event>,
    pub(crate) dropped: Arc<AtomicU64>,
    lossy: bool,
}

impl EventRx {
    /// Whether senders drop events rather than wait (`--lossy-log`).
    pub fn is_lossy(&self) -> bool {
        self.lossy
    }

    /// Events dropped so far in lossy mode.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Waits for the next event; `None` once every sender is gone.
    pub async fn recv(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// Appends up to `limit` ready events to `buf`, waiting for at least one;
    /// 0 once every sender is gone.
    pub async fn recv_many(&mut self, buf: &mut Vec<Event>, limit: usize) -> usize {
        self.rx.recv_many(buf, limit).await
    }

    pub fn try_recv(&mut self) -> Option<Event> {
        self.rx.try_recv().ok()
    }
}

/// A new channel; `lossy` drops events rather than wait when it is full.
pub fn channel(capacity: usize, lossy: bool) -> (EventTx, EventRx) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let dropped = Arc::new(AtomicU64::new(0));
    (
        EventTx {
            tx,
            lossy,
            dropped: dropped.clone(),
        },
        EventRx { rx, dropped, lossy },
    )
}

impl EventTx {
    /// Queues an event. Waits while the channel is full unless lossy.
    /// Once the sinks are gone (shutdown) events are discarded.
    pub async fn send(&self, ev: Event) {
        if self.lossy {
            if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(ev) {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        } else {
            let _ = self.tx.send(ev).await;
        }
    }

    /// Queues every event of `evs`, leaving it empty.
    pub async fn send_all(&self, evs: &mut Vec<Event>) {
        for ev in evs.drain(..) {
            self.send(ev).await;
        }
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}
