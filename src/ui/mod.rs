//! The live view (`--ui ADDR`): a page served by wstap itself that shows
//! connections, handshakes, findings and frames as they happen, and an
//! HTTP API (the page's own) to inject, replay and close.
//!
//! ```text
//! bus ──> dispatcher ──> UiSink ──> Store (bounded) ──┬──> JSON API ──> page
//!                                                     └──> /api/events (SSE, lagging subscribers resync)
//! page / scripts ──> POST inject|close|replay ──> proxy::Shared.open ──> relay control inbox
//! ```
//!
//! The store is fed by the same event stream as every other sink and
//! never makes the dispatcher wait: one short lock per event, bounded
//! memory, a broadcast channel that drops for slow readers. The server
//! listens on loopback unless the user opts in, and refuses requests whose
//! `Host` or `Origin` is not its own address (DNS rebinding). It must not
//! change frames in flight: it only asks the relay to insert its own.

mod api;
pub mod http;
pub mod store;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

pub use api::replayable;
pub use store::{Limits, Store, UiSink};

use crate::proxy::Shared;

/// Browsers, scripts and SSE streams served at once; more are turned away.
const MAX_CLIENTS: usize = 64;
/// How long a client may take to send a request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send a request body once its head is in
/// (answered with 408 past it). The same allowance as for the head: bodies
/// are at most 2 MiB and come from a page or a script, not a slow link.
pub const BODY_TIMEOUT: Duration = HEADER_TIMEOUT;

#[derive(Debug, thiserror::Error)]
pub enum UiError {
    #[error(
        "--ui {0}: the live view can inject frames into and close live connections, so it listens on loopback only; pass --ui-allow-remote to serve it on {0} anyway"
    )]
    NotLoopback(SocketAddr),
    #[error("cannot listen on {addr} for the live view: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Refuses an address off loopback unless `allow_remote`.
pub fn check_addr(addr: SocketAddr, allow_remote: bool) -> Result<(), UiError> {
    if addr.ip().is_loopback() || allow_remote {
        Ok(())
    } else {
        Err(UiError::NotLoopback(addr))
    }
}

/// Binds the live view's listener (after [`check_addr`]).
pub async fn bind(addr: SocketAddr, allow_remote: bool) -> Result<TcpListener, UiError> {
    check_addr(addr, allow_remote)?;
    TcpListener::bind(addr)
        .await
        .map_err(|source| UiError::Bind { addr, source })
}

/// The live view's server, running until stopped or dropped.
pub struct LiveView {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
    streams: Arc<std::sync::atomic::AtomicUsize>,
}

impl LiveView {
    /// Serves the page and the API on `listener`, reading `store` and
    /// acting on `proxy`'s open connections. It keeps only a weak handle on
    /// the proxy, so the event stream can end (and the store hear of it)
    /// while the view still serves.
    pub fn start(listener: TcpListener, store: Arc<Store>, proxy: &Arc<Shared>) -> LiveView {
        Self::start_with_body_timeout(listener, store, proxy, BODY_TIMEOUT)
    }

    /// [`LiveView::start`] with another wait for request bodies than
    /// [`BODY_TIMEOUT`] (tests use a short one).
    pub fn start_with_body_timeout(
        listener: TcpListener,
        store: Arc<Store>,
        proxy: &Arc<Shared>,
        body_timeout: Duration,
    ) -> LiveView {
        let addr = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
        let guard = http::Guard::new(addr);
        let streams = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let ctx = Arc::new(api::Ctx {
            store,
            proxy: Arc::downgrade(proxy),
            streams: streams.clone(),
            body_timeout,
        });
        let task = tokio::spawn(accept_loop(listener, guard, ctx));
        LiveView {
            addr,
            task,
            streams,
        }
    }

    /// Where the page is: `http://ADDR/`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting and ends every open request. Event streams first
    /// get a moment (up to a second) to send their `end`, which they do
    /// once the event stream has ended.
    pub async fn stop(self) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(1);
        while self.streams.load(std::sync::atomic::Ordering::SeqCst) > 0
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        self.task.abort();
    }
}

impl Drop for LiveView {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, guard: http::Guard, ctx: Arc<api::Ctx>) {
    // Connection tasks live in this set, so aborting the loop ends them.
    let mut clients = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((sock, _peer)) => {
                    if clients.len() >= MAX_CLIENTS {
                        tracing::warn!("live view: {MAX_CLIENTS} clients already; refusing one");
                        continue;
                    }
                    let _ = sock.set_nodelay(true);
                    let (guard, ctx) = (guard.clone(), ctx.clone());
                    clients.spawn(async move {
                        let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                            let (guard, ctx) = (guard.clone(), ctx.clone());
                            async move {
                                let resp = match guard.check(req.headers()) {
                                    Some(why) => http::error(hyper::StatusCode::FORBIDDEN, why),
                                    None => api::route(ctx, req).await,
                                };
                                Ok::<_, std::convert::Infallible>(resp)
                            }
                        });
                        let _ = http1::Builder::new()
                            .timer(TokioTimer::new())
                            .header_read_timeout(HEADER_TIMEOUT)
                            .serve_connection(TokioIo::new(sock), svc)
                            .await;
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "live view: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = clients.join_next(), if !clients.is_empty() => {}
        }
    }
}
