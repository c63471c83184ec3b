//! The relay threads: each runs its own current-thread runtime, and an
//! accepted connection lives on the least busy one for its whole life, so
//! its two directions never wake another thread (nginx's worker model).

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio::task::JoinSet;

use super::busy_poll;

/// One relay thread.
struct Shard {
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// One relay thread per CPU the process may use, like nginx's
/// `worker_processes auto`: the default of `--threads`.
pub fn one_per_cpu() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The relay threads; none means connections run on the caller's runtime.
pub struct Shards {
    shards: Vec<Shard>,
    /// Where the search for the least busy thread starts, so ties rotate.
    next: AtomicUsize,
}

impl Shards {
    /// Starts `n` relay threads (none for `n == 0`), each polling for up
    /// to `window` after work before it sleeps (`busy_poll`; zero: it
    /// sleeps at once).
    pub fn start(n: usize, window: Duration) -> std::io::Result<Shards> {
        let mut shards = Vec::with_capacity(n);
        for i in 0..n {
            let mut rt = tokio::runtime::Builder::new_current_thread();
            rt.enable_all();
            if !window.is_zero() {
                rt.on_thread_park(busy_poll::before_park);
            }
            let rt = rt.build()?;
            let handle = rt.handle().clone();
            let (stop, stopped) = oneshot::channel::<()>();
            let thread = std::thread::Builder::new()
                .name(format!("wstap-relay-{i}"))
                .spawn(move || {
                    // Until the proxy drops its `Shards`; a sender dropped
                    // without sending ends it the same way. The park hook
                    // wakes this future to keep the thread polling.
                    busy_poll::set_window(window);
                    // connections never leave this thread: frame lines may
                    // wait in its own log buffer
                    crate::sink::ndjson::pin_thread();
                    let mut stopped = stopped;
                    let _ = rt.block_on(std::future::poll_fn(move |cx| {
                        busy_poll::keep_waker(cx.waker());
                        std::pin::Pin::new(&mut stopped).poll(cx)
                    }));
                })?;
            shards.push(Shard {
                handle,
                stop: Some(stop),
                thread: Some(thread),
            });
        }
        Ok(Shards {
            shards,
            next: AtomicUsize::new(0),
        })
    }

    /// Runs `serve(sock)` in `tasks`: on the least busy relay thread, or on
    /// the caller's runtime when there are none. The socket moves to that
    /// thread's reactor; if it cannot (the kernel refuses the
    /// registration), the connection is dropped and the error logged.
    pub fn spawn<F, Fut>(&self, tasks: &mut JoinSet<()>, sock: TcpStream, serve: F)
    where
        F: FnOnce(TcpStream) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Some(shard) = self.pick() else {
            tasks.spawn(serve(sock));
            return;
        };
        // Registered from here, so the task itself is just `serve`: a
        // wrapper future would add to every idle connection's memory.
        let moved = sock.into_std().and_then(|std| {
            let _in = shard.handle.enter();
            TcpStream::from_std(std)
        });
        match moved {
            Ok(sock) => {
                tasks.spawn_on(serve(sock), &shard.handle);
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot hand a connection to a relay thread");
            }
        }
    }

    /// The thread with the fewest tasks (a task per connection), ties
    /// taken in turn.
    fn pick(&self) -> Option<&Shard> {
        let loads: Vec<usize> = self.shards.iter().map(Shard::load).collect();
        let i = least_busy(&loads, self.next.fetch_add(1, Ordering::Relaxed))?;
        self.shards.get(i)
    }
}

impl Shard {
    fn load(&self) -> usize {
        self.handle.metrics().num_alive_tasks()
    }
}

/// Index of the smallest of `loads`, searching from `start` (modulo the
/// length) so that equal loads are served in turn.
fn least_busy(loads: &[usize], start: usize) -> Option<usize> {
    let n = loads.len();
    // the closure only runs when n > 0; `start % n` first so that a
    // counter near usize::MAX cannot overflow the sum
    (0..n)
        .map(|k| (start % n + k) % n)
        .min_by_key(|&i| loads[i])
}

impl Drop for Shards {
    fn drop(&mut self) {
        for s in &mut self.shards {
            if let Some(stop) = s.stop.take() {
                let _ = stop.send(());
            }
        }
        for s in &mut self.shards {
            if let Some(t) = s.thread.take() {
                // A relay thread only panics on a bug; its tasks' panics
                // stay in their join handles.
                if t.join().is_err() {
                    tracing::error!("a relay thread panicked");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_busy_takes_the_emptiest_and_rotates_ties() {
        assert_eq!(least_busy(&[], 0), None);
        assert_eq!(least_busy(&[3, 1, 2], 0), Some(1));
        assert_eq!(least_busy(&[3, 1, 2], 2), Some(1));
        assert_eq!(least_busy(&[0, 0, 0], 0), Some(0));
        assert_eq!(least_busy(&[0, 0, 0], 1), Some(1));
        assert_eq!(least_busy(&[0, 0, 0], 5), Some(2));
        assert_eq!(least_busy(&[1, 0, 0], 0), Some(1));
        assert_eq!(least_busy(&[1, 0, 0], 2), Some(2));
        // the turn counter wraps without overflowing the search
        assert_eq!(least_busy(&[0, 0, 0], usize::MAX), Some(usize::MAX % 3));
    }

    #[tokio::test]
    async fn connections_spread_over_the_threads_and_work_there() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let shards = Shards::start(2, Duration::ZERO).expect("threads");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut tasks = JoinSet::new();
        let (names_tx, mut names_rx) = tokio::sync::mpsc::unbounded_channel();
        let mut clients = Vec::new();
        for _ in 0..4 {
            clients.push(TcpStream::connect(addr).await.expect("connect"));
            let (sock, _) = listener.accept().await.expect("accept");
            let names = names_tx.clone();
            shards.spawn(&mut tasks, sock, move |mut sock| async move {
                let name = std::thread::current().name().map(str::to_owned);
                let _ = names.send(name);
                // echoes until the client closes, so the load counts
                let mut buf = [0u8; 16];
                while let Ok(n @ 1..) = sock.read(&mut buf).await {
                    if sock.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
        let mut names = Vec::new();
        for _ in 0..4 {
            names.push(names_rx.recv().await.flatten().unwrap_or_default());
        }
        names.sort();
        assert_eq!(
            names,
            [
                "wstap-relay-0",
                "wstap-relay-0",
                "wstap-relay-1",
                "wstap-relay-1"
            ]
        );
        assert_eq!(
            shards.shards.iter().map(Shard::load).collect::<Vec<_>>(),
            [2, 2]
        );
        // the sockets answer on the threads they moved to
        for (i, c) in clients.iter_mut().enumerate() {
            let msg = [i as u8; 3];
            c.write_all(&msg).await.expect("write");
            let mut back = [0u8; 3];
            c.read_exact(&mut back).await.expect("echo");
            assert_eq!(back, msg);
        }
        drop(clients);
        while tasks.join_next().await.is_some() {}
        // a task leaves the count just after its join handle is told
        let mut waited = 0;
        while shards.shards.iter().any(|s| s.load() != 0) && waited < 100 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            waited += 1;
        }
        assert!(shards.shards.iter().all(|s| s.load() == 0));
    }
}
