//! `wstap proxy`: flags, their validation into a `ProxyConfig` and outputs,
//! and the run loop that ties the proxy, the bus and the sinks together.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;

use crate::bus;
use crate::proxy::upstream::UpstreamUrl;
use crate::proxy::{Proxy, ProxyConfig};
use crate::sink::har::{self, HarOptions, HarSink};
use crate::sink::ndjson::NdjsonSink;
use crate::sink::terminal::TerminalSink;
use crate::sink::{spawn_dispatcher_with, DispatchOptions, Sink};
use crate::tls::client::{client_config, TrustOptions};

#[derive(Debug, Args)]
pub struct ProxyArgs {
    /// Address to listen on; port 0 picks a free one (printed on stderr).
    #[arg(long, default_value = "127.0.0.1:9000", value_name = "ADDR")]
    pub listen: String,
    // --- hardening (issue 7) ---
    /// Let outputs drop events (counted in `dropped` events) rather than
    /// slow the relay when they cannot keep up.
    #[arg(long)]
    pub lossy_log: bool,
    /// Show credentials (Authorization, cookies, API keys, secret query
    /// parameters) in every output instead of `<redacted N bytes>`.
    #[arg(long)]
    pub show_secrets: bool,
    /// Who may connect (repeatable): a CIDR range or an address. Others are
    /// closed at accept and logged. When given, loopback needs an entry too.
    #[arg(long, value_parser = crate::proxy::allow::parse_allow, value_name = "CIDR")]
    pub allow: Vec<ipnet::IpNet>,
    // --- end hardening ---
    /// The real server: ws://, wss://, http:// or https:// host:port, optional path prefix.
    #[arg(long, value_name = "URL")]
    pub upstream: String,
    /// Write the event stream as NDJSON to FILE (`-` for stdout).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write a HAR 1.2 file (Chrome's format, WebSocket messages included)
    /// to FILE at exit and as connections end.
    #[arg(long, value_name = "FILE")]
    pub har: Option<PathBuf>,
    /// Payload bytes kept per WebSocket message in the HAR; longer
    /// messages are cut and marked `_truncated`.
    #[arg(long, default_value_t = har::DEFAULT_MAX_PAYLOAD, value_name = "BYTES")]
    pub har_max_payload: usize,
    /// No human log on stderr.
    #[arg(long)]
    pub quiet: bool,
    /// Payload bytes shown per frame.
    #[arg(long, default_value_t = 256, value_name = "BYTES")]
    pub max_preview: usize,
    /// How long connecting to the upstream (DNS, TCP, TLS) may take.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub connect_timeout: Duration,
    /// How long a client may take to send its request head.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub header_timeout: Duration,
    /// How long the upstream may take to answer an upgrade request.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub handshake_timeout: Duration,
    /// An idle limit you suspect on a hop (repeatable); silences of that
    /// length before a drop are named, besides the well-known 60 s, 100 s, 3600 s.
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub expect_idle_timeout: Vec<Duration>,
    /// Close a connection with 1002 on a protocol violation instead of
    /// reporting it and relaying on.
    #[arg(long)]
    pub strict: bool,
    /// How long open connections get to finish at shutdown.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub grace: Duration,
}

/// Turns `--listen` into one address (names like `localhost:9000` resolve).
pub fn parse_listen(s: &str) -> anyhow::Result<SocketAddr> {
    if let Ok(a) = s.parse() {
        return Ok(a);
    }
    s.to_socket_addrs()
        .with_context(|| format!("--listen {s:?}: expected an address like 127.0.0.1:9000"))?
        .next()
        .with_context(|| format!("--listen {s:?} resolves to no address"))
}

/// A validated proxy run: the config and the outputs, files already open.
pub struct ProxyRun {
    pub config: ProxyConfig,
    pub sinks: Vec<Box<dyn Sink>>,
    pub trust: TrustOptions,
    /// `--lossy-log` and `--show-secrets`.
    pub outputs: Outputs,
}

/// How events reach the outputs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Outputs {
    pub lossy: bool,
    pub show_secrets: bool,
}

pub fn validate(args: ProxyArgs) -> anyhow::Result<ProxyRun> {
    let listen = parse_listen(&args.listen)?;
    let upstream: UpstreamUrl = args.upstream.parse().context("--upstream")?;
    if args.max_preview > 16 * 1024 * 1024 {
        bail!(
            "--max-preview {} is more than 16 MiB; previews are for reading",
            args.max_preview
        );
    }
    if args.har_max_payload > har::MAX_PAYLOAD_LIMIT {
        bail!(
            "--har-max-payload {} is more than {} MiB; every open connection holds that much per direction",
            args.har_max_payload,
            har::MAX_PAYLOAD_LIMIT >> 20
        );
    }
    let mut config = ProxyConfig::new(listen, upstream);
    config.allow = args.allow;
    config.max_preview = args.max_preview;
    config.connect_timeout = args.connect_timeout;
    config.header_timeout = args.header_timeout;
    config.handshake_timeout = args.handshake_timeout;
    config.grace = args.grace;
    config.expected_idle = args.expect_idle_timeout;
    config.strict = args.strict;
    let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
    if !args.quiet {
        sinks.push(Box::new(TerminalSink::stderr()));
    }
    if let Some(path) = &args.json {
        let sink =
            NdjsonSink::create(path).with_context(|| format!("--json {}", path.display()))?;
        sinks.push(Box::new(sink));
    }
    if let Some(path) = &args.har {
        let sink = HarSink::create(path, HarOptions::new(args.har_max_payload))
            .with_context(|| format!("--har {}", path.display()))?;
        sinks.push(Box::new(sink));
        // the taps attach each frame's payload to its event for the HAR
        config.capture = har::capture_for(args.har_max_payload);
    }
    Ok(ProxyRun {
        outputs: Outputs {
            lossy: args.lossy_log,
            show_secrets: args.show_secrets,
        },
        config,
        sinks,
        trust: TrustOptions::default(),
    })
}

pub async fn run(args: ProxyArgs) -> anyhow::Result<ExitCode> {
    let running = start(validate(args)?).await?;
    crate::cli::shutdown_signal().await;
    running.stop().await?;
    Ok(ExitCode::SUCCESS)
}

/// A proxy running in the background, with its outputs.
pub struct Running {
    pub addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Binds and starts a validated proxy; it runs until [`Running::stop`].
pub async fn start(run: ProxyRun) -> anyhow::Result<Running> {
    let (tx, rx) = bus::channel(bus::DEFAULT_CAPACITY, run.outputs.lossy);
    let opts = DispatchOptions {
        redact: !run.outputs.show_secrets,
    };
    let dispatcher =
        spawn_dispatcher_with(rx, run.sinks, opts).context("starting the output thread")?;
    let tls = client_config(&run.trust)?;
    let upstream = run.config.upstream.to_string();
    let allow = run.config.allow.clone();
    let proxy = Proxy::bind(run.config, tls, tx).await?;
    let addr = proxy.local_addr();
    eprintln!("wstap: listening on {addr} -> {upstream}");
    if let Some(w) = crate::proxy::allow::exposure_warning(addr, &allow) {
        eprintln!("wstap: {w}");
    }
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        proxy
            .run(async {
                let _ = stopped.await;
            })
            .await;
        // every sender is gone once the proxy and its connections are: the
        // dispatcher drains, flushes and returns
        let joined = tokio::task::spawn_blocking(move || dispatcher.join())
            .await
            .context("waiting for the output thread")?;
        if joined.is_err() {
            bail!("the output thread panicked");
        }
        Ok(())
    });
    Ok(Running { addr, stop, task })
}

impl Running {
    /// Stops accepting, lets connections finish within the grace period,
    /// and flushes every output.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.task.await.context("the proxy task failed")?
    }
}
