//! `wstap proxy`: flags, their validation into a `ProxyConfig` and outputs,
//! and the run loop that ties the proxy, the bus and the sinks together.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{ArgMatches, Args};

use crate::proto::rewrite::{parse_rules_toml, Op, Rule, RuleError, Rules, Scope};
use crate::proto::simulate::{Hop, IdleRule};

use crate::bus;
use crate::proxy::upstream::UpstreamUrl;
use crate::proxy::{ForwardOptions, Mode, Proxy, ProxyConfig};
use crate::sink::har::{self, HarOptions, HarSink};
use crate::sink::ndjson::{NdjsonSink, SharedLog};
use crate::sink::terminal::TerminalSink;
use crate::sink::{spawn_dispatcher_with, DispatchOptions, Sink};
use crate::tls::ca::{default_dir, LocalCa, Origin};
use crate::tls::client::{client_config, TrustOptions};
use crate::tls::leaf::LeafMinter;
use crate::tls::server::Interceptor;
use crate::tls::server::ListenerTls;
use crate::ui;

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
    #[arg(
        long,
        value_name = "URL",
        required_unless_present = "forward",
        conflicts_with = "forward"
    )]
    pub upstream: Option<String>,
    /// Run as an HTTP proxy instead: absolute-form requests are forwarded and
    /// CONNECT tunnels are intercepted with the local CA (see `wstap ca`).
    #[arg(long)]
    pub forward: bool,
    /// Where the interception CA lives (forward mode); created if absent.
    /// Default: $XDG_DATA_HOME/wstap (or ~/.local/share/wstap).
    #[arg(long, value_name = "DIR", requires = "forward")]
    pub ca_dir: Option<PathBuf>,
    /// Tunnel CONNECTs to these hosts untouched, without interception
    /// (repeatable; globs like *.example.com).
    #[arg(long, value_name = "HOST", requires = "forward")]
    pub no_intercept: Vec<String>,
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
    #[arg(long, default_value = "10s", value_parser = super::duration, value_name = "DURATION")]
    pub connect_timeout: Duration,
    /// How long a client may take to send its request head (and the
    /// longest pause allowed inside its request body).
    #[arg(long, default_value = "30s", value_parser = super::duration, value_name = "DURATION")]
    pub header_timeout: Duration,
    /// How long the upstream may take to answer an upgrade request.
    #[arg(long, default_value = "10s", value_parser = super::duration, value_name = "DURATION")]
    pub handshake_timeout: Duration,
    /// An idle limit you suspect on a hop (repeatable); silences of that
    /// length before a drop are named, besides the well-known 60 s, 100 s, 3600 s.
    #[arg(long, value_parser = super::duration, value_name = "DURATION")]
    pub expect_idle_timeout: Vec<Duration>,
    /// Replace a request header before it goes upstream: 'Name: value'
    /// (repeatable; rules apply in command-line order). Values may use
    /// {header:NAME} (the incoming value), {host} and {upstream}; an empty
    /// value removes the header.
    #[arg(long, value_name = "'NAME: VALUE'")]
    pub set_request_header: Vec<String>,
    /// Remove a request header before it goes upstream (repeatable).
    #[arg(long, value_name = "NAME")]
    pub remove_request_header: Vec<String>,
    /// Replace a response header before it goes to the client (repeatable).
    #[arg(long, value_name = "'NAME: VALUE'")]
    pub set_response_header: Vec<String>,
    /// Remove a response header before it goes to the client (repeatable).
    #[arg(long, value_name = "NAME")]
    pub remove_response_header: Vec<String>,
    /// Send requests upstream as HTTP/1.0 or HTTP/1.1.
    #[arg(long, value_name = "1.0|1.1")]
    pub upstream_http_version: Vec<String>,
    /// A TOML file of rewrite rules, optionally scoped by path prefix and
    /// host (see examples/rules.toml); refused at start-up if any rule is bad.
    #[arg(long, value_name = "FILE")]
    pub rules: Vec<PathBuf>,
    /// Behave like a misconfigured hop, to reproduce a failure locally:
    /// nginx-default (plain proxy_pass), alb (60 s idle cut), cloudflare (100 s).
    #[arg(long, value_name = "NAME", value_parser = clap::builder::PossibleValuesParser::new(Hop::NAMES))]
    pub simulate: Option<String>,
    /// Cut a WebSocket after this long without traffic either way, as a
    /// load balancer does (no close frame: the client sees 1006).
    #[arg(long, value_parser = super::duration, value_name = "DURATION")]
    pub idle_timeout: Option<Duration>,
    /// Close a connection with 1002 on a protocol violation instead of
    /// reporting it and relaying on.
    #[arg(long)]
    pub strict: bool,
    /// How long open connections get to finish at shutdown.
    #[arg(long, default_value = "5s", value_parser = super::duration, value_name = "DURATION")]
    pub grace: Duration,
    /// Serve TLS (wss://, https://) on the listener with this certificate chain (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key for --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Trust the CA certificates in FILE (PEM) for wss:// and https:// upstreams, besides the web PKI roots (repeatable).
    #[arg(long, value_name = "FILE")]
    pub upstream_ca: Vec<PathBuf>,
    /// Do not verify upstream certificates (for debugging only; each connection gets a tls-verification-disabled finding).
    #[arg(long)]
    pub insecure: bool,
    /// Serve the live view (a page and its HTTP API) on ADDR, e.g.
    /// 127.0.0.1:9001; port 0 picks a free one (printed on stderr).
    #[arg(long, value_name = "ADDR")]
    pub ui: Option<String>,
    /// Let --ui listen beyond loopback. Whoever reaches it reads the traffic
    /// and can inject frames and close connections: trusted networks only.
    #[arg(long, requires = "ui")]
    pub ui_allow_remote: bool,
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
    /// Output files, created only once the listeners are bound: a start
    /// that fails (the port is taken) must not truncate the files of an
    /// instance already running with the same command line.
    pub files: Vec<FileOutput>,
    pub trust: TrustOptions,
    /// `--lossy-log` and `--show-secrets`.
    pub outputs: Outputs,
    /// `--ui`: where to serve the live view, and its store (already a sink).
    pub ui: Option<UiPlan>,
}

/// An output file, not yet created.
pub enum FileOutput {
    Json(PathBuf),
    Har(PathBuf, HarOptions),
}

/// An output file, opened.
struct Opened {
    sink: Box<dyn Sink>,
    /// For a JSON log file, the buffer relays may write frame lines to.
    log: Option<Arc<SharedLog>>,
}

impl FileOutput {
    fn create(self) -> anyhow::Result<Opened> {
        Ok(match self {
            FileOutput::Json(path) => {
                let sink = NdjsonSink::create(&path)
                    .with_context(|| format!("--json {}", path.display()))?;
                Opened {
                    log: sink.is_file().then(|| sink.shared()),
                    sink: Box::new(sink),
                }
            }
            FileOutput::Har(path, opts) => Opened {
                sink: Box::new(
                    HarSink::create(&path, opts)
                        .with_context(|| format!("--har {}", path.display()))?,
                ),
                log: None,
            },
        })
    }
}

/// How events reach the outputs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Outputs {
    pub lossy: bool,
    pub show_secrets: bool,
}

/// The live view to start with the proxy.
pub struct UiPlan {
    pub addr: SocketAddr,
    pub allow_remote: bool,
    pub store: Arc<ui::Store>,
}

impl UiPlan {
    /// Checks `--ui ADDR`, makes the store and adds its sink to `sinks`.
    fn new(addr: &str, allow_remote: bool, sinks: &mut Vec<Box<dyn Sink>>) -> anyhow::Result<Self> {
        let addr: SocketAddr = match addr.parse() {
            Ok(a) => a,
            Err(_) => addr
                .to_socket_addrs()
                .ok()
                .and_then(|mut a| a.next())
                .with_context(|| {
                    format!("--ui {addr:?}: expected an address like 127.0.0.1:9001")
                })?,
        };
        ui::check_addr(addr, allow_remote)?;
        let store = ui::Store::new(ui::Limits::default());
        sinks.push(Box::new(ui::UiSink(store.clone())));
        Ok(UiPlan {
            addr,
            allow_remote,
            store,
        })
    }
}

/// The rewrite flags and rules files, in the order they were given.
fn ordered_rules(args: &ProxyArgs, matches: Option<&ArgMatches>) -> anyhow::Result<Rules> {
    type Make = fn(&str) -> Result<Op, RuleError>;
    let flags: [(&str, &[String], Make); 5] = [
        (
            "set_request_header",
            &args.set_request_header,
            Op::set_request,
        ),
        (
            "remove_request_header",
            &args.remove_request_header,
            Op::remove_request,
        ),
        (
            "set_response_header",
            &args.set_response_header,
            Op::set_response,
        ),
        (
            "remove_response_header",
            &args.remove_response_header,
            Op::remove_response,
        ),
        (
            "upstream_http_version",
            &args.upstream_http_version,
            Op::version,
        ),
    ];
    let position = |id: &str, i: usize| -> usize {
        matches
            .and_then(|m| m.indices_of(id))
            .and_then(|mut ix| ix.nth(i))
            .unwrap_or(usize::MAX)
    };
    let mut items: Vec<(usize, Vec<Rule>)> = Vec::new();
    for (id, values, make) in flags {
        let flag = format!("--{}", id.replace('_', "-"));
        for (i, v) in values.iter().enumerate() {
            let op = make(v).with_context(|| format!("{flag} {v:?}"))?;
            items.push((
                position(id, i),
                vec![Rule {
                    op,
                    scope: Scope::default(),
                }],
            ));
        }
    }
    for (i, path) in args.rules.iter().enumerate() {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("--rules {}", path.display()))?;
        let rules =
            parse_rules_toml(&text).with_context(|| format!("--rules {}", path.display()))?;
        items.push((position("rules", i), rules.0));
    }
    // stable: without indices (tests) the order above stands
    items.sort_by_key(|(pos, _)| *pos);
    Ok(Rules(items.into_iter().flat_map(|(_, r)| r).collect()))
}

pub fn validate(args: ProxyArgs, matches: Option<&ArgMatches>) -> anyhow::Result<ProxyRun> {
    let listen = parse_listen(&args.listen)?;
    let mode = match &args.upstream {
        Some(u) => Mode::Reverse(u.parse::<UpstreamUrl>().context("--upstream")?),
        None => {
            let dir = match &args.ca_dir {
                Some(d) => d.clone(),
                None => default_dir().context("--ca-dir")?,
            };
            let (ca, origin) = LocalCa::load_or_create(&dir)
                .with_context(|| format!("the interception CA in {}", dir.display()))?;
            if matches!(origin, Origin::Created) {
                eprintln!(
                    "wstap: created the interception CA {}; trust it in your client (README: Trust the wstap CA)",
                    ca.cert_path().display()
                );
            }
            Mode::Forward(ForwardOptions {
                interceptor: Arc::new(Interceptor::new(Arc::new(LeafMinter::new(ca)))),
                no_intercept: args.no_intercept.clone(),
            })
        }
    };
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
    let mut config = ProxyConfig::with_mode(listen, mode);
    config.allow = args.allow.clone();
    config.max_preview = args.max_preview;
    config.connect_timeout = args.connect_timeout;
    config.header_timeout = args.header_timeout;
    config.handshake_timeout = args.handshake_timeout;
    config.grace = args.grace;
    config.expected_idle = args.expect_idle_timeout.clone();
    config.rules = ordered_rules(&args, matches)?;
    config.simulate = args.simulate.as_deref().and_then(Hop::parse);
    config.idle_cut = match (config.simulate, args.idle_timeout) {
        (_, Some(after)) => Some(IdleRule {
            after,
            count_client: true,
            label: "--idle-timeout".into(),
        }),
        (Some(hop), None) => Some(hop.idle_rule()),
        (None, None) => None,
    };
    config.strict = args.strict;
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        config.listener_tls =
            Some(ListenerTls::from_files(cert, key).context("--tls-cert/--tls-key")?);
    }
    config.insecure = args.insecure;
    let trust = TrustOptions {
        extra_roots: args.upstream_ca.clone(),
        insecure: args.insecure,
    };
    let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
    if !args.quiet {
        sinks.push(Box::new(TerminalSink::stderr()));
    }
    let mut files = Vec::new();
    if let Some(path) = &args.json {
        files.push(FileOutput::Json(path.clone()));
    }
    if let Some(path) = &args.har {
        let opts = HarOptions {
            client_tls: config.listener_tls.is_some(),
            ..HarOptions::new(args.har_max_payload)
        };
        files.push(FileOutput::Har(path.clone(), opts));
        // the taps attach each frame's payload to its event for the HAR
        config.capture = har::capture_for(args.har_max_payload);
    }
    let ui = match &args.ui {
        Some(addr) => Some(UiPlan::new(addr, args.ui_allow_remote, &mut sinks)?),
        None => None,
    };
    Ok(ProxyRun {
        files,
        outputs: Outputs {
            lossy: args.lossy_log,
            show_secrets: args.show_secrets,
        },
        config,
        sinks,
        trust,
        ui,
    })
}

pub async fn run(
    args: ProxyArgs,
    matches: Option<&ArgMatches>,
    threads: usize,
    busy_poll: Duration,
) -> anyhow::Result<ExitCode> {
    let stop = crate::cli::shutdown_signal();
    let mut run = validate(args, matches)?;
    run.config.relay_threads = threads;
    run.config.busy_poll = busy_poll;
    let running = start(run).await?;
    stop.await;
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
    let tls = client_config(&run.trust).context("--upstream-ca")?;
    let upstream = run.config.mode.label();
    let served = if run.config.listener_tls.is_some() {
        " (TLS: wss://, https://)"
    } else {
        ""
    };
    if run.trust.insecure {
        eprintln!(
            "wstap: warning: --insecure: upstream TLS certificates are not verified; use it for debugging only"
        );
    }
    if let Some(hop) = run.config.simulate {
        eprintln!(
            "wstap: SIMULATING {} (--simulate {}): connections through this proxy are broken on purpose",
            hop.describe(),
            hop.name()
        );
    }
    if let Some(idle) = run
        .config
        .idle_cut
        .as_ref()
        .filter(|_| run.config.simulate.is_none())
    {
        eprintln!(
            "wstap: SIMULATING an idle cut: WebSockets are dropped after {} without traffic ({}), with no close frame",
            humantime::format_duration(idle.after),
            idle.label
        );
    }
    let allow = run.config.allow.clone();
    // the `listening` event waits in the queue until the outputs are open
    let proxy = Proxy::bind(run.config, tls, tx).await?;
    let ui_listener = match &run.ui {
        Some(plan) => Some(ui::bind(plan.addr, plan.allow_remote).await?),
        None => None,
    };
    let mut sinks = run.sinks;
    let only_file = sinks.is_empty() && run.files.len() == 1;
    for f in run.files {
        let opened = f.create()?;
        sinks.push(opened.sink);
        // The log is the only output (`--quiet --json FILE`): relays may
        // write their frame lines into it themselves, which no other
        // output would then see.
        if let Some(log) = opened.log.filter(|_| only_file) {
            rx.write_frames_to(log);
        }
    }
    if sinks.is_empty() {
        // `--quiet` and nothing else: the taps still decode every frame
        // (findings, the close summary), but no output lists frames
        rx.frames_unwanted();
    }
    let dispatcher =
        spawn_dispatcher_with(rx, sinks, opts).context("starting the output thread")?;
    let addr = proxy.local_addr();
    eprintln!("wstap: listening on {addr}{served} -> {upstream}");
    if let Some(w) = crate::proxy::allow::exposure_warning(addr, &allow) {
        eprintln!("wstap: {w}");
    }
    let live = match run.ui.zip(ui_listener) {
        Some((plan, listener)) => {
            let view = ui::LiveView::start(listener, plan.store, &proxy.shared());
            if !view.addr().ip().is_loopback() {
                eprintln!("wstap: warning: the live view listens beyond loopback (--ui-allow-remote): whoever reaches it reads the traffic and can inject frames");
            }
            eprintln!("wstap: live view on http://{}/", view.addr());
            Some(view)
        }
        None => None,
    };
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
        // the live view outlives the proxy until its stream has ended
        if let Some(view) = live {
            view.stop().await;
        }
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
