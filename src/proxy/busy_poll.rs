//! Adaptive busy-polling for the relay threads (`--busy-poll`). On a VM, a
//! thread that sleeps in `epoll_wait` and is woken again costs tens of
//! microseconds per wake-up; a relay thread that had work a moment ago
//! polls its sockets for a short window instead, like the kernel's guest
//! halt-polling, and the window adapts to how soon work comes back.

use std::cell::{Cell, RefCell};
use std::task::Waker;
use std::time::{Duration, Instant};

/// Reads between two parks from which the thread does not poll after
/// them: with that many connections busy, a wake-up is shared by many
/// reads and the next work wakes the thread soon anyway, so polling would
/// only take CPU from the peers (measured at 64 B round trips on 100
/// connections: 5% more messages without it, none fewer on one).
const CROWDED: u64 = 8;

/// `--busy-poll`'s default: longer than a loopback round trip through
/// the proxy on a 2-core VM (about 60 µs end to end, so 30 µs between a
/// relay thread's turns), short enough that a thread spends little when
/// traffic stops.
pub const DEFAULT_WINDOW: Duration = Duration::from_micros(50);

thread_local! {
    /// Completed reads (data or end of stream) and splices on this thread:
    /// the relay's sign of work.
    static WORK: Cell<u64> = const { Cell::new(0) };
    static STATE: RefCell<State> = const { RefCell::new(State::new()) };
}

/// Counts a completed read or splice on this thread.
#[inline]
pub fn note_work() {
    WORK.with(|w| w.set(w.get().wrapping_add(1)));
}

/// Sets this thread's polling window to at most `max`; called once, as
/// the relay thread starts.
pub fn set_window(max: Duration) {
    STATE.with(|s| s.borrow_mut().window = Window::new(max));
}

/// Keeps the waker of the future the relay thread blocks on, which the
/// park hook wakes to keep the thread polling instead of sleeping.
pub fn keep_waker(w: &Waker) {
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        if !s.waker.as_ref().is_some_and(|k| k.will_wake(w)) {
            s.waker = Some(w.clone());
        }
    });
}

/// The park hook of a relay thread's runtime, run each time it has
/// nothing left to do: within the window after the last work (unless that
/// work was a crowded turn, see [`CROWDED`]) it wakes the thread's main
/// future, so the runtime polls its sockets without blocking (and without
/// taking the CPU from a process waiting for it: each turn yields the CPU
/// first); past it, the thread sleeps.
pub fn before_park() {
    let now = Instant::now();
    let work = WORK.with(Cell::get);
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        if work != s.seen {
            s.crowded = work.wrapping_sub(s.seen) >= CROWDED;
            s.seen = work;
            if s.blocked {
                if let Some(t) = s.last_work {
                    s.window.woke_after(now.saturating_duration_since(t));
                }
                s.blocked = false;
            }
            s.last_work = Some(now);
        }
        let polling = !s.crowded
            && s.last_work
                .is_some_and(|t| s.window.keeps_polling(now.saturating_duration_since(t)));
        if polling {
            std::thread::yield_now();
            if let Some(w) = &s.waker {
                w.wake_by_ref();
            }
        } else {
            s.blocked = true;
        }
    });
}

struct State {
    window: Window,
    /// `WORK` when the hook last looked.
    seen: u64,
    /// When the hook first saw the latest work.
    last_work: Option<Instant>,
    /// The thread went to sleep since the last work.
    blocked: bool,
    /// The last work came as at least `CROWDED` reads between two parks.
    crowded: bool,
    waker: Option<Waker>,
}

impl State {
    const fn new() -> Self {
        State {
            window: Window::new(Duration::ZERO),
            seen: 0,
            last_work: None,
            blocked: false,
            crowded: false,
            waker: None,
        }
    }
}

/// How long to poll after work, between zero and `max`. It doubles when
/// the thread slept and work came back within twice `max` of the last
/// (sleeping added a wake-up to that gap, so polling might well have
/// caught it), and halves when work came back later (the window was spent
/// for nothing), so a steady exchange keeps the thread polling and sparse
/// traffic makes it sleep at once.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Window {
    max: Duration,
    cur: Duration,
}

/// Below this the window is zero: polling shorter than a system call or
/// two catches nothing.
const MIN_WINDOW: Duration = Duration::from_micros(2);

impl Window {
    const fn new(max: Duration) -> Self {
        Window { max, cur: max }
    }

    fn keeps_polling(&self, since_work: Duration) -> bool {
        since_work < self.cur
    }

    /// The thread slept, and the next work came `gap` after the last.
    fn woke_after(&mut self, gap: Duration) {
        self.cur = if gap <= self.max * 2 {
            (self.cur * 2).max(self.max / 8).min(self.max)
        } else {
            self.cur / 2
        };
        if self.cur < MIN_WINDOW {
            self.cur = Duration::ZERO;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::sync::Arc;

    const US: Duration = Duration::from_micros(1);

    struct Count(Arc<AtomicUsize>);
    impl std::task::Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, SeqCst);
        }
    }

    /// Gives this thread's hook a waker that counts its wakes.
    fn keep_counting_waker() -> Arc<AtomicUsize> {
        let woken = Arc::new(AtomicUsize::new(0));
        keep_waker(&Waker::from(Arc::new(Count(woken.clone()))));
        woken
    }

    #[test]
    fn the_window_starts_full_and_polls_only_inside_it() {
        let w = Window::new(50 * US);
        assert!(w.keeps_polling(Duration::ZERO));
        assert!(w.keeps_polling(49 * US));
        assert!(!w.keeps_polling(50 * US));
        assert!(!Window::new(Duration::ZERO).keeps_polling(Duration::ZERO));
    }

    #[test]
    fn sparse_work_closes_the_window_and_a_steady_exchange_reopens_it() {
        let mut w = Window::new(64 * US);
        // work every 10 ms: each sleep was longer than any window
        for _ in 0..6 {
            w.woke_after(10_000 * US);
        }
        assert_eq!(w.cur, Duration::ZERO, "{w:?}");
        assert!(!w.keeps_polling(Duration::ZERO));
        // a gap just past twice the window still closes it
        w.woke_after(129 * US);
        assert_eq!(w.cur, Duration::ZERO);
        // work every 30 µs again: back to polling, never past max
        w.woke_after(30 * US);
        assert_eq!(w.cur, 8 * US);
        w.woke_after(30 * US);
        w.woke_after(30 * US);
        assert_eq!(w.cur, 32 * US);
        for _ in 0..4 {
            w.woke_after(30 * US);
        }
        assert_eq!(w.cur, 64 * US);
        assert!(w.keeps_polling(30 * US));
    }

    #[test]
    fn the_hook_polls_after_work_and_sleeps_once_the_window_passed() {
        // on a thread of its own: the state is per thread
        std::thread::spawn(|| {
            let woken = keep_counting_waker();
            let max = Duration::from_millis(200);
            set_window(max);
            // no work yet: sleep
            before_park();
            assert_eq!(woken.load(SeqCst), 0);
            note_work();
            before_park();
            assert_eq!(woken.load(SeqCst), 1);
            std::thread::sleep(max + Duration::from_millis(50));
            before_park();
            assert_eq!(woken.load(SeqCst), 1);
            STATE.with(|s| assert!(s.borrow().blocked));
        })
        .join()
        .expect("hook thread");
    }

    #[test]
    fn the_hook_sleeps_after_a_crowded_turn_and_polls_after_a_light_one() {
        std::thread::spawn(|| {
            let woken = keep_counting_waker();
            set_window(Duration::from_secs(60));
            let polls = || woken.load(SeqCst);
            for _ in 0..CROWDED {
                note_work();
            }
            before_park();
            assert_eq!(polls(), 0, "many reads in one turn: no polling");
            // and not on the empty turns after it either
            before_park();
            assert_eq!(polls(), 0);
            for _ in 0..CROWDED - 1 {
                note_work();
            }
            before_park();
            assert_eq!(polls(), 1, "a lighter turn polls again");
            before_park();
            assert_eq!(polls(), 2, "and goes on polling inside the window");
        })
        .join()
        .expect("hook thread");
    }
}
