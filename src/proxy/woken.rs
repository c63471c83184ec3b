//! A future that is polled only when something it waits on woke it. A
//! task that selects over several futures polls all of them whenever any
//! one is woken; wrapped, the others answer `Pending` without looking.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

/// What the inner future's waker reaches.
#[derive(Default)]
struct Signal {
    /// Set by the inner future's waker, cleared when it is polled.
    woken: AtomicBool,
    /// The task that polls the wrapper.
    task: AtomicWaker,
}

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

pin_project_lite::pin_project! {
    /// See the module docs. The inner future stays in place (not boxed):
    /// every open connection holds two of these, idle or not.
    pub struct WokenOnly<F> {
        #[pin]
        inner: F,
        signal: Arc<Signal>,
        // the inner future's waker, made once
        waker: Waker,
    }
}

impl<F: Future> WokenOnly<F> {
    pub fn new(inner: F) -> Self {
        let signal = Arc::new(Signal {
            // the first poll always reaches the inner future
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        WokenOnly {
            inner,
            waker: Waker::from(signal.clone()),
            signal,
        }
    }
}

impl<F: Future> Future for WokenOnly<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        // registered before the flag is read: a wake in between is seen
        // now or wakes the task again, never lost
        this.signal.task.register(cx.waker());
        if !this.signal.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let mut inner_cx = Context::from_waker(this.waker);
        this.inner.poll(&mut inner_cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    /// Counts its polls; ready once `open` is set, and wakes itself only
    /// through the waker it stored.
    struct Gate {
        polls: Arc<AtomicUsize>,
        open: Arc<AtomicBool>,
        waker: Arc<std::sync::Mutex<Option<Waker>>>,
    }

    impl Future for Gate {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::SeqCst);
            if self.open.load(Ordering::SeqCst) {
                return Poll::Ready(());
            }
            *self.waker.lock().unwrap() = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    #[tokio::test]
    async fn a_sibling_wake_does_not_poll_it_and_its_own_wake_does() {
        let polls = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicBool::new(false));
        let waker = Arc::new(std::sync::Mutex::new(None::<Waker>));
        let gate = WokenOnly::new(Gate {
            polls: polls.clone(),
            open: open.clone(),
            waker: waker.clone(),
        });
        tokio::pin!(gate);
        // a sibling that wakes the task ten times
        let mut ticks = 0;
        let sibling = std::future::poll_fn(|cx| {
            ticks += 1;
            if ticks > 10 {
                return Poll::Ready(());
            }
            cx.waker().wake_by_ref();
            Poll::Pending
        });
        tokio::pin!(sibling);
        tokio::select! {
            biased;
            _ = &mut gate => panic!("the gate is closed"),
            _ = &mut sibling => {}
        }
        assert_eq!(
            polls.load(Ordering::SeqCst),
            1,
            "polled once, then only on its own wake"
        );

        // its own waker, fired from another thread, brings it back
        let w = waker
            .lock()
            .unwrap()
            .clone()
            .expect("the gate stored its waker");
        let o = open.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            o.store(true, Ordering::SeqCst);
            w.wake();
        });
        tokio::time::timeout(Duration::from_secs(5), &mut gate)
            .await
            .expect("the wake reached the task");
        assert_eq!(polls.load(Ordering::SeqCst), 2);
    }
}
