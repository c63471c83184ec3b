//! Outputs of the event stream. Each sink is push-style (begin, event,
//! flush, finish) and runs on the dispatcher thread, off the relay path; a
//! failing sink is reported once and switched off, never taking others down.
//! The dispatcher also hides credentials in each event before any sink sees
//! it (`proto::redact`, unless `--show-secrets`) and, in `--lossy-log` mode,
//! writes how many events were dropped as `dropped` events.

pub mod collect;
pub mod frame_json;
pub mod har;
#[cfg(test)]
pub(crate) mod memory;
pub mod ndjson;
pub mod terminal;

use std::io;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use std::time::SystemTime;

use crate::bus::EventRx;
use crate::proto::event::{Dropped, Event, EventKind};
use crate::proto::redact;

/// One output of the event stream.
pub trait Sink: Send {
    fn begin(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn event(&mut self, ev: &Event) -> io::Result<()>;

    /// Several events, in order (a sink with a lock to take can take it
    /// once for them).
    fn events(&mut self, evs: &[Event]) -> io::Result<()> {
        evs.iter().try_for_each(|ev| self.event(ev))
    }

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

/// How long the dispatcher lets events gather after handling a batch...
const GATHER: Duration = Duration::from_millis(1);
/// ...when it got fewer events than this (else it is busy and goes on).
const GATHER_BELOW: usize = 512;

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

/// What the dispatcher does to events besides passing them on.
#[derive(Debug, Clone, Copy)]
pub struct DispatchOptions {
    /// Hide credentials (`proto::redact`); off with `--show-secrets`.
    pub redact: bool,
}

impl Default for DispatchOptions {
    fn default() -> Self {
        DispatchOptions { redact: true }
    }
}

/// Starts the dispatcher with the defaults (credentials hidden).
pub fn spawn_dispatcher(
    rx: EventRx,
    sinks: Vec<Box<dyn Sink>>,
) -> io::Result<JoinHandle<DispatchReport>> {
    spawn_dispatcher_with(rx, sinks, DispatchOptions::default())
}

/// A `dropped` event when more were lost since `reported`; `force` makes
/// one even when none were (the closing total in lossy mode).
fn dropped_event(rx: &EventRx, reported: &mut u64, force: bool) -> Option<Event> {
    let total = rx.dropped();
    if total == *reported && !force {
        return None;
    }
    let count = total - *reported;
    *reported = total;
    Some(Event::new(
        SystemTime::now(),
        None,
        EventKind::Dropped(Dropped { count, total }),
    ))
}

/// Starts the dispatcher thread: it feeds every event to every sink,
/// flushes within [`FLUSH_EVERY`] of an event and at once when a connection
/// ends, and finishes the sinks when every sender is gone.
pub fn spawn_dispatcher_with(
    mut rx: EventRx,
    sinks: Vec<Box<dyn Sink>>,
    opts: DispatchOptions,
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
            // the drop total the last `dropped` event reported
            let mut reported = 0u64;
            rt.block_on(async {
                // as the relay sent them: flattening would move every event
                let mut batches: Vec<Vec<Event>> = Vec::with_capacity(256);
                // When the oldest unflushed event arrived.
                let mut dirty: Option<Instant> = None;
                let wake = rx.waker();
                loop {
                    batches.clear();
                    let due = slots
                        .iter()
                        .filter(|s| !s.failed)
                        .filter_map(|s| s.sink.flush_due())
                        .chain(dirty.map(|since| since + FLUSH_EVERY))
                        .min();
                    let deadline = due.map(tokio::time::Instant::from_std);
                    let timeout = async {
                        match deadline {
                            Some(d) => tokio::time::sleep_until(d).await,
                            None => std::future::pending().await,
                        }
                    };
                    let got = tokio::select! {
                        n = rx.recv_batches(&mut batches, 256) => n,
                        _ = timeout => {
                            for s in &mut slots {
                                s.run("flush", |k| k.flush());
                            }
                            dirty = None;
                            continue;
                        }
                        // relays wrote into the log: look at when it is due
                        _ = wake.notified() => continue,
                    };
                    if got == 0 {
                        break;
                    }
                    let mut urgent = false;
                    for batch in batches.iter_mut() {
                        for ev in batch.iter_mut() {
                            report.events += 1;
                            if opts.redact {
                                redact::event(ev);
                            }
                            urgent |=
                                matches!(ev.kind, EventKind::Close(_) | EventKind::Listening(_));
                        }
                        for s in &mut slots {
                            s.run("write", |k| k.events(batch));
                        }
                    }
                    rx.handled(batches.len());
                    if let Some(ev) = dropped_event(&rx, &mut reported, false) {
                        for s in &mut slots {
                            s.run("write", |k| k.event(&ev));
                        }
                        urgent = true;
                    }
                    let now = Instant::now();
                    let since = *dirty.get_or_insert(now);
                    if urgent || now.duration_since(since) >= FLUSH_EVERY {
                        for s in &mut slots {
                            s.run("flush", |k| k.flush());
                        }
                        dirty = None;
                    }
                    // Caught up: let events gather for a moment instead of
                    // being woken by every send, so the relay never pays for
                    // waking this thread (measured: 3-4 futex calls per
                    // 64-byte round trip without this, near 0 with it). Not
                    // when busy: then the queue is drained without waiting.
                    if got < GATHER_BELOW {
                        tokio::select! {
                            _ = tokio::time::sleep(GATHER) => {}
                            // many connections can fill the queue within
                            // the pause: then the relay would wait on it
                            _ = wake.notified() => {}
                        }
                    }
                }
            });
            report.events += rx.written_by_senders();
            report.dropped = rx.dropped();
            // lossy mode: the log ends with the total, even when it is 0
            if let Some(ev) = dropped_event(&rx, &mut reported, rx.is_lossy()) {
                for s in &mut slots {
                    s.run("write", |k| k.event(&ev));
                }
            }
            for s in &mut slots {
                s.run("finish", |k| k.finish(report.dropped));
            }
            report
        })
}

#[cfg(test)]
mod tests {
    use super::collect::{CollectSink, Collected};
    use super::*;
    use crate::bus;
    use crate::proto::event::{ConnId, HttpExchange, RequestView};

    fn http_with_token(conn: u64) -> Event {
        Event::conn(
            SystemTime::now(),
            ConnId(conn),
            EventKind::Http(HttpExchange {
                method: "GET".into(),
                target: "/a?token=abc".into(),
                status: 200,
                duration_ms: 1.0,
                request_bytes: 0,
                response_bytes: 0,
                client_request: Some(RequestView {
                    method: "GET".into(),
                    target: "/a?token=abc".into(),
                    version: "HTTP/1.1".into(),
                    headers: vec![("Cookie".into(), "sid=xyz".into())],
                }),
                client_response: None,
                upstream_addr: None,
                rewrites: Vec::new(),
            }),
        )
    }

    fn run(
        opts: DispatchOptions,
        lossy: bool,
        capacity: usize,
        sink: Box<dyn Sink>,
        n: u64,
    ) -> DispatchReport {
        let (tx, rx) = bus::channel(capacity, lossy);
        let handle = spawn_dispatcher_with(rx, vec![sink], opts).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            for i in 0..n {
                tx.send(http_with_token(i)).await;
            }
        });
        drop(tx);
        handle.join().unwrap()
    }

    #[test]
    fn every_sink_sees_redacted_events_unless_secrets_are_shown() {
        let got = Collected::default();
        run(
            DispatchOptions::default(),
            false,
            16,
            Box::new(CollectSink(got.clone())),
            1,
        );
        let line = serde_json::to_string(&got.snapshot()[0]).unwrap();
        assert!(line.contains("token=<redacted 3 bytes>"), "{line}");
        assert!(line.contains("sid=<redacted 3 bytes>"), "{line}");
        assert!(!line.contains("abc") && !line.contains("xyz"), "{line}");

        let got = Collected::default();
        run(
            DispatchOptions { redact: false },
            false,
            16,
            Box::new(CollectSink(got.clone())),
            1,
        );
        let line = serde_json::to_string(&got.snapshot()[0]).unwrap();
        assert!(
            line.contains("token=abc") && line.contains("sid=xyz"),
            "{line}"
        );
    }

    /// A sink slower than the senders.
    struct Slow(Collected);
    impl Sink for Slow {
        fn event(&mut self, ev: &Event) -> io::Result<()> {
            if !matches!(ev.kind, EventKind::Dropped(_)) {
                std::thread::sleep(Duration::from_micros(200));
            }
            CollectSink(self.0.clone()).event(ev)
        }
        fn name(&self) -> &str {
            "slow"
        }
    }

    #[test]
    fn lossy_mode_counts_every_drop_in_the_log() {
        let got = Collected::default();
        let sent = 5_000;
        let report = run(
            DispatchOptions::default(),
            true,
            4,
            Box::new(Slow(got.clone())),
            sent,
        );
        let evs = got.snapshot();
        let drops: Vec<Dropped> = evs
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::Dropped(d) => Some(d.clone()),
                _ => None,
            })
            .collect();
        let delivered = evs.len() as u64 - drops.len() as u64;
        assert!(report.dropped > 0, "the slow sink made senders drop");
        assert_eq!(
            delivered + report.dropped,
            sent,
            "delivered or counted, none lost silently"
        );
        // the reports add up, and the last event is the closing total
        assert_eq!(drops.iter().map(|d| d.count).sum::<u64>(), report.dropped);
        assert!(
            matches!(&evs.last().unwrap().kind, EventKind::Dropped(d) if d.total == report.dropped)
        );
        assert!(drops.windows(2).all(|w| w[0].total <= w[1].total));
    }

    #[test]
    fn without_lossy_mode_nothing_is_dropped_and_no_dropped_event_is_written() {
        let got = Collected::default();
        let report = run(
            DispatchOptions::default(),
            false,
            4,
            Box::new(Slow(got.clone())),
            500,
        );
        assert_eq!(report.dropped, 0);
        let evs = got.snapshot();
        assert_eq!(evs.len(), 500);
        assert!(!evs.iter().any(|e| matches!(e.kind, EventKind::Dropped(_))));
    }
}
