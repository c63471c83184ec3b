//! Outputs of the event stream. Each sink is push-style (begin, event,
//! flush, finish) and runs on the dispatcher thread, off the relay path; a
//! failing sink is reported once and switched off, never taking others down.

pub mod collect;
pub mod frame_json;
pub mod har;
pub mod ndjson;
pub mod terminal;

use std::io;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::bus::EventRx;
use crate::proto::event::{Event, EventKind};

/// One output of the event stream.
pub trait Sink: Send {
    fn begin(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn event(&mut self, ev: &Event) -> io::Result<()>;

    /// Make everything so far visible (on disk, on screen).
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }

    /// When the sink needs `flush` called even if no event comes by then:
    /// a sink that throttles its writes (HAR) defers one this way. `None`
    /// when nothing is pending.
    fn flush_due(&self) -> Option<Instant> {
        None
    }

    /// The stream ended; `dropped` events were lost in lossy mode.
    fn finish(&mut self, dropped: u64) -> io::Result<()> {
        let _ = dropped;
        self.flush()
    }

    /// For error messages.
    fn name(&self) -> &str;
}

/// Longest time an event waits in a sink's buffer before a flush.
pub const FLUSH_EVERY: Duration = Duration::from_millis(50);

/// What the dispatcher reports when the stream ends.
#[derive(Debug, Default, Clone)]
pub struct DispatchReport {
    pub events: u64,
    pub dropped: u64,
}

struct Slot {
    sink: Box<dyn Sink>,
    failed: bool,
}

impl Slot {
    fn run(&mut self, what: &str, f: impl FnOnce(&mut dyn Sink) -> io::Result<()>) {
        if self.failed {
            return;
        }
        if let Err(e) = f(self.sink.as_mut()) {
            self.failed = true;
            tracing::error!(sink = self.sink.name(), error = %e, "output failed during {what}; it is switched off");
            eprintln!(
                "wstap: {} output failed ({e}); it is switched off",
                self.sink.name()
            );
        }
    }
}

/// Starts the dispatcher thread: it feeds every event to every sink,
/// flushes within [`FLUSH_EVERY`] of an event and at once when a connection
/// ends, and finishes the sinks when every sender is gone.
pub fn spawn_dispatcher(
    mut rx: EventRx,
    sinks: Vec<Box<dyn Sink>>,
) -> io::Result<JoinHandle<DispatchReport>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()?;
    std::thread::Builder::new()
        .name("wstap-sinks".into())
        .spawn(move || {
            let mut slots: Vec<Slot> = sinks
                .into_iter()
                .map(|sink| Slot {
                    sink,
                    failed: false,
                })
                .collect();
            for s in &mut slots {
                s.run("start", |k| k.begin());
            }
            let mut report = DispatchReport::default();
            rt.block_on(async {
                let mut batch = Vec::with_capacity(256);
                // When the oldest unflushed event arrived.
                let mut dirty: Option<Instant> = None;
                loop {
                    batch.clear();
                    let due = slots
                        .iter()
                        .filter(|s| !s.failed)
                        .filter_map(|s| s.sink.flush_due())
                        .chain(dirty.map(|since| since + FLUSH_EVERY))
                        .min();
                    let got = match due {
                        None => rx.recv_many(&mut batch, 256).await,
                        Some(due) => {
                            let deadline = tokio::time::Instant::from_std(due);
                            match tokio::time::timeout_at(deadline, rx.recv_many(&mut batch, 256))
                                .await
                            {
                                Ok(n) => n,
                                Err(_) => {
                                    for s in &mut slots {
                                        s.run("flush", |k| k.flush());
                                    }
                                    dirty = None;
                                    continue;
                                }
                            }
                        }
                    };
                    if got == 0 {
                        break;
                    }
                    let mut urgent = false;
                    for ev in &batch {
                        report.events += 1;
                        for s in &mut slots {
                            s.run("write", |k| k.event(ev));
                        }
                        urgent |= matches!(ev.kind, EventKind::Close(_) | EventKind::Listening(_));
                    }
                    let now = Instant::now();
                    let since = *dirty.get_or_insert(now);
                    if urgent || now.duration_since(since) >= FLUSH_EVERY {
                        for s in &mut slots {
                            s.run("flush", |k| k.flush());
                        }
                        dirty = None;
                    }
                }
            });
            report.dropped = rx.dropped();
            for s in &mut slots {
                s.run("finish", |k| k.finish(report.dropped));
            }
            report
        })
}
