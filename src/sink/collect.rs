//! Keeps every event in memory: what tests assert on, and the demo's
//! source for its summary. Not for long-running use.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::Sink;
use crate::proto::event::Event;

/// A shared, growing list of events.
#[derive(Clone, Default)]
pub struct Collected(Arc<Mutex<Vec<Event>>>);

impl Collected {
    pub fn snapshot(&self) -> Vec<Event> {
        self.0.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// Waits until `done` holds for the events so far, or `limit` passes;
    /// returns the events either way.
    pub async fn wait_for(&self, limit: Duration, done: impl Fn(&[Event]) -> bool) -> Vec<Event> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let evs = self.snapshot();
            if done(&evs) || tokio::time::Instant::now() >= deadline {
                return evs;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The sink that fills a [`Collected`].
pub struct CollectSink(pub Collected);

impl Sink for CollectSink {
    fn event(&mut self, ev: &Event) -> io::Result<()> {
        if let Ok(mut v) = self.0 .0.lock() {
            v.push(ev.clone());
        }
        Ok(())
    }

    fn name(&self) -> &str {
        "collector"
    }
}
