//! The I/O shell: the listener and its accept loop, the upstream connector,
//! HTTP forwarding, the upgrade and the relay. It reports what it sees as
//! events on the bus and never calls a sink; all judging is in `proto`.

pub mod allow;
pub mod body;
pub mod busy_poll;
pub mod conn;
pub mod forward;
pub mod io;
pub mod pacing;
pub mod pool;
pub mod relay;
pub mod shards;
pub mod splice;
pub mod upstream;
pub mod woken;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::bus::EventTx;
use crate::proto::event::{ConnId, Dir, Event, EventKind, Listening};
use crate::proto::glob;
use crate::proto::inject;
use crate::proto::rewrite::Rules;
use crate::proto::simulate::{Hop, IdleRule};
use crate::tls::server::Interceptor;
use crate::tls::server::ListenerTls;
use shards::Shards;
use upstream::{Connector, UpstreamUrl};

/// What the proxy sits in front of.
#[derive(Debug, Clone)]
pub enum Mode {
    /// A reverse proxy for one upstream (`--upstream URL`).
    Reverse(UpstreamUrl),
    /// An HTTP proxy (`--forward`): absolute-form requests are forwarded,
    /// CONNECT tunnels are intercepted with the local CA.
    Forward(ForwardOptions),
}

/// Forward-mode settings.
#[derive(Debug, Clone)]
pub struct ForwardOptions {
    /// Mints the certificates intercepted clients see.
    pub interceptor: Arc<Interceptor>,
    /// Hosts (globs) whose CONNECT tunnels pass untouched (`--no-intercept`).
    pub no_intercept: Vec<String>,
}

impl ForwardOptions {
    pub fn intercepts(&self, host: &str) -> bool {
        !self.no_intercept.iter().any(|p| glob::matches(p, host))
    }
}

impl Mode {
    /// For the `listening` event and the start-up line.
    pub fn label(&self) -> String {
        match self {
            Mode::Reverse(u) => u.to_string(),
            Mode::Forward(_) => "forward proxy (absolute-form and CONNECT)".into(),
        }
    }
}

/// Everything the proxy needs to run, validated.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub listen: SocketAddr,
    /// `--allow`: who may connect; empty lets everyone (see `allow`).
    pub allow: Vec<ipnet::IpNet>,
    pub mode: Mode,
    pub max_preview: usize,
    /// Payload bytes per frame attached to events for the HAR sink (0: none).
    pub capture: usize,
    pub connect_timeout: Duration,
    /// How long a client may take to send a complete request head; also
    /// the longest pause inside a request body.
    pub header_timeout: Duration,
    /// How long the upstream may take to answer an upgrade request.
    pub handshake_timeout: Duration,
    /// How long open connections get to finish at shutdown.
    pub grace: Duration,
    /// `--expect-idle-timeout` values.
    pub expected_idle: Vec<Duration>,
    /// `--strict`: close with 1002 on a protocol violation.
    pub strict: bool,
    /// Cut idle WebSockets like a load balancer (`--idle-timeout`, `--simulate`).
    pub idle_cut: Option<IdleRule>,
    /// Rewrite rules for heads passing through (`--set-request-header`, `--rules`, ...).
    pub rules: Rules,
    /// `--simulate`: forward like a misconfigured hop.
    pub simulate: Option<Hop>,
    /// Serve TLS on the listener (`--tls-cert/--tls-key`); `None`: plain.
    pub listener_tls: Option<ListenerTls>,
    /// Upstream certificates are not verified (`--insecure`): every TLS
    /// upstream connection gets a `tls-verification-disabled` finding.
    /// Set it together with a client config made with `insecure`.
    pub insecure: bool,
    /// Threads that relay connections, each with its own event loop
    /// (`--threads`; see `shards`); 0 runs them on the caller's runtime.
    pub relay_threads: usize,
    /// How long a relay thread polls after work before it sleeps, at
    /// most (`--busy-poll`; see `busy_poll`); zero: it sleeps at once.
    pub busy_poll: Duration,
}

impl ProxyConfig {
    /// Defaults from the interface contract, in front of `upstream`.
    pub fn new(listen: SocketAddr, upstream: UpstreamUrl) -> Self {
        Self::with_mode(listen, Mode::Reverse(upstream))
    }

    /// Defaults from the interface contract, in either mode.
    pub fn with_mode(listen: SocketAddr, mode: Mode) -> Self {
        ProxyConfig {
            listen,
            allow: Vec::new(),
            mode,
            max_preview: 256,
            capture: 0,
            connect_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            grace: Duration::from_secs(5),
            expected_idle: Vec::new(),
            strict: false,
            idle_cut: None,
            rules: Rules::default(),
            simulate: None,
            listener_tls: None,
            insecure: false,
            relay_threads: 0,
            busy_poll: Duration::ZERO,
        }
    }
}

/// State every connection task shares.
pub struct Shared {
    pub cfg: ProxyConfig,
    pub events: EventTx,
    pub connector: Connector,
    /// Control handles of the open WebSockets, for shutdown and the live view.
    pub open: Arc<Mutex<HashMap<ConnId, relay::Controls>>>,
    /// Set when the shutdown grace period is over: relays stop at once and
    /// still report their `close` events.
    pub hard_stop: tokio::sync::watch::Sender<bool>,
    next_id: AtomicU64,
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("cannot start the relay threads: {0}")]
    Threads(#[source] std::io::Error),
}

impl Shared {
    /// Asks every open WebSocket to send `code` to both sides and stop.
    pub fn close_all(&self, code: u16, reason: &str) {
        let open: Vec<relay::Controls> = match self.open.lock() {
            Ok(m) => m.values().cloned().collect(),
            Err(_) => return,
        };
        for c in open {
            for dir in [Dir::ClientToServer, Dir::ServerToClient] {
                let frame = inject::close(
                    dir,
                    code,
                    reason,
                    relay::random_mask(),
                    self.cfg.max_preview,
                );
                let _ = c
                    .toward(dir)
                    .try_send(Box::new(relay::Control::CloseAndEnd {
                        frame,
                        reason: "shutdown",
                        detail: format!("wstap sent {code} ({reason}) to both sides"),
                    }));
            }
        }
    }
}

/// After the grace period, how long stopped relays get to report.
const HARD_STOP_WAIT: Duration = Duration::from_secs(1);

/// A bound, not yet running proxy.
pub struct Proxy {
    listener: TcpListener,
    shards: Shards,
    shared: Arc<Shared>,
    addr: SocketAddr,
}

impl Proxy {
    /// Binds the listener and announces it with a `listening` event.
    pub async fn bind(
        cfg: ProxyConfig,
        tls: Arc<rustls::ClientConfig>,
        events: EventTx,
    ) -> Result<Proxy, ProxyError> {
        let listener = pacing::listen(cfg.listen).map_err(|source| ProxyError::Bind {
            addr: cfg.listen,
            source,
        })?;
        let addr = listener.local_addr().map_err(|source| ProxyError::Bind {
            addr: cfg.listen,
            source,
        })?;
        let shards =
            Shards::start(cfg.relay_threads, cfg.busy_poll).map_err(ProxyError::Threads)?;
        let connector = Connector {
            timeout: cfg.connect_timeout,
            tls,
        };
        events
            .send(Event::new(
                SystemTime::now(),
                None,
                EventKind::Listening(Listening {
                    addr: addr.to_string(),
                    upstream: Some(cfg.mode.label()),
                }),
            ))
            .await;
        Ok(Proxy {
            listener,
            shards,
            shared: Arc::new(Shared {
                cfg,
                events,
                connector,
                open: Arc::new(Mutex::new(HashMap::new())),
                hard_stop: tokio::sync::watch::Sender::new(false),
                next_id: AtomicU64::new(1),
            }),
            addr,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The state the connection tasks share: the live view reaches open
    /// WebSockets' control handles through it.
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Accepts connections until `shutdown` resolves, then gives open
    /// connections the grace period before dropping them.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let mut tasks = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((sock, peer)) => {
                        let id = ConnId(self.shared.next_id.fetch_add(1, Ordering::Relaxed));
                        let shared = self.shared.clone();
                        if !allow::allows(&shared.cfg.allow, peer.ip()) {
                            drop(sock);
                            tasks.spawn(allow::refused(shared, peer, id));
                            continue;
                        }
                        let _ = sock.set_nodelay(true);
                        let span = tracing::debug_span!("conn", id = id.0, %peer);
                        // The TLS handshake runs in the connection's own
                        // task, so a slow client never holds up the accept
                        // loop; the plain path stays as it was.
                        if self.shared.cfg.listener_tls.is_some() {
                            self.shards.spawn(&mut tasks, sock, move |sock| {
                                conn::serve_tls(shared, sock, peer, id).instrument(span)
                            });
                        } else {
                            self.shards.spawn(&mut tasks, sock, move |sock| {
                                conn::serve(shared, Box::new(sock), peer, id).instrument(span)
                            });
                        }
                    }
                    Err(e) => {
                        // Out of file descriptors and similar: back off
                        // instead of spinning on the error.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        }
        drop(self.listener);
        self.shared.close_all(1001, "wstap is shutting down");
        let grace = self.shared.cfg.grace;
        let drained =
            tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            tracing::info!(
                open = tasks.len(),
                "grace period over; closing open connections"
            );
            // relays stop where they are and send their close events; what
            // is still running after that is dropped
            self.shared.hard_stop.send_replace(true);
            let _ = tokio::time::timeout(HARD_STOP_WAIT, async {
                while tasks.join_next().await.is_some() {}
            })
            .await;
            tasks.shutdown().await;
        }
    }
}
