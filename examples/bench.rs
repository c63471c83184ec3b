//! The end-to-end benchmark (issue 6): direct vs through a bare relay vs
//! through wstap vs through nginx, same run, same machine, as ratios.
//!
//! ```text
//! cargo build --release && cargo run --release --example bench            # about 6 minutes
//! cargo run --release --example bench -- --quick                          # about a minute
//! cargo run --release --example bench -- --only rt-64B,pipe --targets direct,wstap-json
//! ```
//!
//! It starts, as separate processes: a WebSocket echo server (this same
//! binary re-run with `--serve-echo`: `wstap::demo::echo`, by default in
//! its lean frame-by-frame mode), `target/release/wstap` (built with
//! `cargo build --release` first when run through cargo), and nginx with
//! the standard WebSocket proxy config when `nginx` is installed (in the
//! foreground, its prefix, pid file, temp dirs and error log in a temp dir,
//! on 127.0.0.1), and a bare relay (this binary re-run with `--serve-bare`:
//! tokio's `copy_bidirectional` on wstap's relay threads, no decoding,
//! no log): what relaying alone costs on the machine; and, asked for with
//! `--targets ...,floor`, the log floor (`bench/floor.rs`: the bare relay
//! plus the least that logging every frame can cost) and, with `spin`, the
//! spin relay (`bench/spin.rs`: a thread per connection that never sleeps,
//! the least latency a relay adds; one-connection round trips only). The
//! load client runs in this process (`wstap::demo::load`): it verifies
//! every echoed byte, so a fast wrong answer fails the run, and with
//! `--json` it checks that the log holds exactly the frames that crossed.
//!
//! Each case runs every target in turn (direct first: the ratios' base),
//! round after round (3 rounds of 2 s by default; each target's median
//! round is its row, so one disturbed measurement does not make the
//! table), wstap and the bare relay fresh for each: `wstap` is `--quiet`
//! with no sinks, `wstap-json` is `--quiet --json FILE` (every frame
//! logged). It prints a table as it goes, then one JSON line per case.
//! Under the one-connection round trips of up to 4 KiB it also times the
//! two loopback hops any relay adds to them (`bench/hops.rs`), the floor
//! beneath their p50 ratio.
//! Timing is reported, never asserted: correctness under load is for the
//! tests (tests/bench_client.rs).

use std::io::{self, BufRead};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinSet;
use wstap::demo::echo::{self, EchoMode, EchoOptions};
use wstap::demo::load::{self, Limit, LoadConn, Report, Workload};
use wstap::proto::frame::Opcode;

#[path = "bench/floor.rs"]
mod floor;
#[path = "bench/hops.rs"]
mod hops;
#[path = "bench/spin.rs"]
mod spin;

#[derive(Debug, Parser)]
#[command(
    about = "wstap's end-to-end benchmark: direct vs a bare relay vs wstap vs nginx, same run"
)]
struct Args {
    /// One round of about a second per measurement.
    #[arg(long)]
    quick: bool,
    /// Seconds measured per case, target and round (default 2, 1 with --quick).
    #[arg(long, value_name = "SECS")]
    seconds: Option<f64>,
    /// Rounds per load case: the targets take turns, round after round,
    /// and the table shows each target's median round (default 3, 1 with
    /// --quick). On a shared 2-core VM one measurement can be 20% off the
    /// next; the median of interleaved rounds is not moved by one outlier
    /// or by a drift that would favour whichever target ran first.
    #[arg(long, value_name = "N")]
    rounds: Option<usize>,
    /// Seconds of warm-up before measuring (default 0.5, 0.2 with --quick).
    #[arg(long, value_name = "SECS")]
    warmup: Option<f64>,
    /// Run only cases whose name starts with one of these (comma-separated:
    /// rt, pipe, mem, idle, or names like rt-64B-1c); see --list.
    #[arg(long, value_delimiter = ',', value_name = "PREFIXES")]
    only: Vec<String>,
    /// Targets to run (comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "direct,bare,wstap,wstap-json,nginx"
    )]
    targets: Vec<TargetKind>,
    /// How the echo server echoes: frame by frame (lean, streaming) or
    /// whole messages through tokio-tungstenite.
    #[arg(long, value_enum, default_value = "frames")]
    echo: EchoArg,
    /// Send text messages instead of binary (wstap then checks UTF-8).
    #[arg(long)]
    text: bool,
    /// The wstap binary (default: target/release/wstap beside this example).
    #[arg(long, value_name = "PATH")]
    wstap: Option<PathBuf>,
    /// Do not run `cargo build --release --bin wstap` first.
    #[arg(long)]
    no_build: bool,
    /// Idle connections held open through wstap.
    #[arg(long, default_value_t = 10_000, value_name = "N")]
    idle: usize,
    /// Size of the big message in the memory cases, MiB.
    #[arg(long, default_value_t = 1024, value_name = "MIB")]
    big_mib: usize,
    /// Keep the --json logs (in a temp dir, printed at the end) instead
    /// of deleting each after its check.
    #[arg(long)]
    keep_logs: bool,
    /// List the cases and exit.
    #[arg(long)]
    list: bool,
    /// Take the load client's keys (masks, where payloads start in the
    /// pattern) from this seed instead of at random, so two runs send the
    /// same bytes: for instruction counts (benches/callgrind.sh).
    #[arg(long, value_name = "N")]
    seed: Option<u64>,
    /// Internal: be the echo server on ADDR (prints `listening on ADDR`).
    #[arg(long, hide = true, value_name = "ADDR")]
    serve_echo: Option<String>,
    /// Internal: be the bare relay in front of the echo server at ADDR
    /// (prints `listening on ADDR`).
    #[arg(long, hide = true, value_name = "ADDR")]
    serve_bare: Option<SocketAddr>,
    /// Internal: with --serve-bare, be the log floor, logging to PATH.
    #[arg(long, hide = true, value_name = "PATH", requires = "serve_bare")]
    floor_log: Option<PathBuf>,
    /// Internal: be the spin relay in front of the echo server at ADDR
    /// (prints `listening on ADDR`).
    #[arg(long, hide = true, value_name = "ADDR")]
    serve_spin: Option<SocketAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum EchoArg {
    Frames,
    Messages,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TargetKind {
    Direct,
    /// A bare byte relay (no decoding, no log): what relaying alone costs.
    Bare,
    /// wstap --quiet, no sinks.
    Wstap,
    /// wstap --quiet --json FILE.
    WstapJson,
    /// The bare relay plus the least a frame log can cost (`bench/floor.rs`).
    /// Not run by default: it is a yardstick for `--json`, asked for by name.
    Floor,
    /// A relay thread per connection that never sleeps (`bench/spin.rs`):
    /// the least latency a relay adds. Asked for by name; one-connection
    /// round trips only.
    Spin,
    Nginx,
}

impl TargetKind {
    fn name(self) -> &'static str {
        match self {
            TargetKind::Direct => "direct",
            TargetKind::Bare => "bare relay",
            TargetKind::Wstap => "wstap --quiet",
            TargetKind::WstapJson => "wstap --json",
            TargetKind::Floor => "log floor",
            TargetKind::Spin => "spin relay",
            TargetKind::Nginx => "nginx",
        }
    }

    fn key(self) -> &'static str {
        match self {
            TargetKind::Direct => "direct",
            TargetKind::Bare => "bare",
            TargetKind::Wstap => "wstap",
            TargetKind::WstapJson => "wstap-json",
            TargetKind::Floor => "floor",
            TargetKind::Spin => "spin",
            TargetKind::Nginx => "nginx",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    RoundTrip,
    Pipelined,
}

#[derive(Debug, Clone)]
struct Case {
    name: String,
    kind: Kind,
    size: usize,
    conns: usize,
    window: usize,
}

fn human(size: usize) -> String {
    match size {
        s if s >= 1 << 30 && s % (1 << 30) == 0 => format!("{}GiB", s >> 30),
        s if s >= 1 << 20 && s % (1 << 20) == 0 => format!("{}MiB", s >> 20),
        s if s >= 1 << 10 && s % (1 << 10) == 0 => format!("{}KiB", s >> 10),
        s => format!("{s}B"),
    }
}

fn load_cases() -> Vec<Case> {
    let mut v = Vec::new();
    for conns in [1usize, 100] {
        for size in [64usize, 4096, 65536] {
            v.push(Case {
                name: format!("rt-{}-{conns}c", human(size)),
                kind: Kind::RoundTrip,
                size,
                conns,
                window: 1,
            });
        }
    }
    for size in [64usize, 4096, 1 << 20] {
        v.push(Case {
            name: format!("pipe-{}-w32", human(size)),
            kind: Kind::Pipelined,
            size,
            conns: 1,
            window: 32,
        });
    }
    v
}

fn mem_case_names(big: usize, idle: usize) -> Vec<String> {
    vec![
        format!("mem-{}-1MiB-frames", human(big)),
        format!("mem-{}-one-frame", human(big)),
        format!("idle-{idle}"),
    ]
}

fn selected(only: &[String], name: &str) -> bool {
    only.is_empty() || only.iter().any(|p| name.starts_with(p.as_str()))
}

// ---------------------------------------------------------------- processes

/// A child process the benchmark started, with its captured output lines.
struct Proc {
    name: String,
    child: Child,
    pid: u32,
    addr: SocketAddr,
    lines: Arc<Mutex<Vec<String>>>,
    /// Open descriptors once it listened: what it holds with no connection.
    fds_at_start: usize,
}

/// Collects lines from `rd`; sends the address after the first
/// `listening on ` to `found`.
fn watch_lines<R: AsyncRead + Unpin + Send + 'static>(
    rd: R,
    lines: Arc<Mutex<Vec<String>>>,
    found: Option<tokio::sync::oneshot::Sender<String>>,
) {
    tokio::spawn(async move {
        let mut found = found;
        let mut rd = BufReader::new(rd).lines();
        while let Ok(Some(line)) = rd.next_line().await {
            if let Some(rest) = line.split("listening on ").nth(1) {
                if let Some(tx) = found.take() {
                    let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_string());
                }
            }
            if let Ok(mut l) = lines.lock() {
                if l.len() < 1000 {
                    l.push(line);
                }
            }
        }
    });
}

impl Proc {
    /// Spawns `cmd` and waits for its `listening on ADDR` line (on stdout
    /// or stderr).
    async fn spawn(name: &str, mut cmd: Command) -> Result<Proc> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        let pid = child.id().context("no pid")?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (tx2, rx2) = tokio::sync::oneshot::channel();
        if let Some(out) = child.stdout.take() {
            watch_lines(out, lines.clone(), Some(tx));
        }
        if let Some(err) = child.stderr.take() {
            watch_lines(err, lines.clone(), Some(tx2));
        }
        let addr = tokio::select! {
            Ok(a) = rx => a,
            Ok(a) = rx2 => a,
            _ = tokio::time::sleep(Duration::from_secs(20)) => {
                let out = lines.lock().map(|l| l.join("\n")).unwrap_or_default();
                bail!("{name} did not report its address within 20 s; output:\n{out}");
            }
        };
        let addr = addr
            .parse()
            .with_context(|| format!("{name} reported {addr:?}"))?;
        Ok(Proc {
            name: name.to_string(),
            child,
            pid,
            addr,
            lines,
            fds_at_start: open_fds(pid),
        })
    }

    fn output(&self) -> String {
        self.lines.lock().map(|l| l.join("\n")).unwrap_or_default()
    }

    /// Waits (up to 10 s) until it holds no more descriptors than when it
    /// started, i.e. every proxied connection has ended on its side too.
    /// Stopping before that would make wstap close the rest itself.
    async fn wait_drained(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let open = open_fds(self.pid);
            if open <= self.fds_at_start {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} still holds {open} descriptors (it started with {}) 10 s after the clients closed",
                    self.name,
                    self.fds_at_start
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until drained, then SIGTERM and the exit (SIGKILL after 15 s).
    async fn stop(mut self) -> Result<()> {
        let drained = self.wait_drained().await;
        signal(self.pid, "TERM");
        match tokio::time::timeout(Duration::from_secs(15), self.child.wait()).await {
            Ok(Ok(status)) if status.success() => drained,
            Ok(Ok(status)) => bail!(
                "{} exited with {status}; output:\n{}",
                self.name,
                self.output()
            ),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => {
                let _ = self.child.kill().await;
                bail!("{} did not exit within 15 s of SIGTERM", self.name)
            }
        }
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// A field of /proc/PID/status in KiB (VmRSS, VmHWM).
fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// User + system CPU time of a process (all its threads), in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let (user, system) = cpu_ticks_split(pid);
    user + system
}

/// User and system CPU time of `pid` so far, in clock ticks.
fn cpu_ticks_split(pid: u32) -> (u64, u64) {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return (0, 0);
    };
    let Some(rest) = s.rsplit_once(')').map(|(_, r)| r) else {
        return (0, 0);
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // fields 14 and 15 of stat; `rest` starts at field 3
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (get(11), get(12))
}

fn clock_ticks_per_sec() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

fn max_open_files(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Max open files"))
                .map(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    format!(
                        "soft {} hard {}",
                        f.get(3).unwrap_or(&"?"),
                        f.get(4).unwrap_or(&"?")
                    )
                })
        })
        .unwrap_or_else(|| "unknown".into())
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Process ids whose parent is `parent` (nginx's workers).
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    let rest = s.rsplit_once(')')?.1.to_string();
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(parent)
        })
        .collect()
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// A free loopback port for nginx, which cannot report one it picked.
/// (Bind, read, release: a small race, acceptable here, never in tests.)
fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

// ---------------------------------------------------------------- nginx

struct Nginx {
    child: Child,
    pid: u32,
    addr: SocketAddr,
    workers: Vec<u32>,
    version: String,
    prefix: PathBuf,
}

impl Nginx {
    async fn start(dir: &Path, echo: SocketAddr) -> Result<Option<Nginx>> {
        let Some(bin) = which("nginx") else {
            return Ok(None);
        };
        let version = std::process::Command::new(&bin)
            .arg("-v")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_string())
            .unwrap_or_default();
        let prefix = dir.join("nginx");
        for sub in ["", "client_body", "proxy", "fastcgi", "uwsgi", "scgi"] {
            std::fs::create_dir_all(prefix.join(sub))?;
        }
        let port = free_port()?;
        let p = prefix.display();
        // The standard WebSocket proxy config; no access log.
        let conf = format!(
            r#"daemon off;
master_process on;
worker_processes auto;
pid {p}/nginx.pid;
error_log {p}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {p}/client_body;
    proxy_temp_path {p}/proxy;
    fastcgi_temp_path {p}/fastcgi;
    uwsgi_temp_path {p}/uwsgi;
    scgi_temp_path {p}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://{echo};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
        }}
    }}
}}
"#
        );
        let conf_path = prefix.join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        let mut cmd = Command::new(&bin);
        cmd.arg("-p")
            .arg(&prefix)
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(prefix.join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().context("starting nginx")?;
        let pid = child.id().context("nginx has no pid")?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        // ready when a WebSocket handshake through it succeeds
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(prefix.join("error.log")).unwrap_or_default();
                bail!("nginx exited at start ({status}): {log}");
            }
            if let Ok(c) = load::connect(addr, "/echo", Duration::from_secs(2)).await {
                let _ = c.close(Duration::from_secs(2)).await;
                break;
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(prefix.join("error.log")).unwrap_or_default();
                bail!("nginx did not proxy a handshake within 10 s: {log}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let workers = children_of(pid);
        Ok(Some(Nginx {
            child,
            pid,
            addr,
            workers,
            version,
            prefix,
        }))
    }

    fn pids(&self) -> Vec<u32> {
        let mut v = vec![self.pid];
        v.extend(&self.workers);
        v
    }

    async fn stop(mut self) {
        signal(self.pid, "TERM");
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            eprintln!(
                "nginx did not stop; its log: {}",
                self.prefix.join("error.log").display()
            );
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM (not the SIGKILL of kill_on_drop) so the workers go too
        signal(self.pid, "TERM");
    }
}

fn which(name: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

// ---------------------------------------------------------------- the run

struct Bench {
    args: Args,
    dir: tempfile::TempDir,
    wstap: PathBuf,
    echo: Proc,
    nginx: Option<Nginx>,
    ticks: f64,
    seconds: f64,
    warmup: f64,
    rounds: usize,
    opcode: Opcode,
    failures: Vec<String>,
    json_lines: Vec<String>,
    /// Idle connections the fd limit allows (at most --idle).
    idle_n: usize,
}

/// One target's numbers for one load case.
#[derive(Debug, Clone, Default)]
struct Row {
    msgs_per_s: f64,
    mb_per_s: f64,
    p50_us: Option<f64>,
    p99_us: Option<f64>,
    /// CPU use over the measured span, % of one core.
    cpu_proxy: Option<f64>,
    /// The part of `cpu_proxy` spent in user space: the proxy's own code,
    /// where the kernel's part is mostly the sockets every proxy pays for.
    cpu_proxy_user: Option<f64>,
    cpu_echo: f64,
    cpu_client: f64,
    report: Report,
    logged: Option<(u64, u64)>,
}

impl Row {
    /// The proxy's CPU time per message echoed (both directions), in µs:
    /// what the proxy costs, less sensitive to other load than msgs/s.
    fn proxy_us_per_msg(&self, seconds: f64) -> Option<f64> {
        self.us_per_msg(self.cpu_proxy?, seconds)
    }

    /// The user-space part of [`Row::proxy_us_per_msg`].
    fn proxy_user_us_per_msg(&self, seconds: f64) -> Option<f64> {
        self.us_per_msg(self.cpu_proxy_user?, seconds)
    }

    fn us_per_msg(&self, pct: f64, seconds: f64) -> Option<f64> {
        (self.report.measured > 0)
            .then(|| pct / 100.0 * seconds * 1e6 / self.report.measured as f64)
    }
}

/// How far apart the rounds were: (max - min) / median, as `±x%` of half
/// that; `-` for a single round.
fn spread(all: &[f64], median: f64) -> String {
    if all.len() < 2 || median <= 0.0 {
        return "-".into();
    }
    let max = all.iter().copied().fold(f64::MIN, f64::max);
    let min = all.iter().copied().fold(f64::MAX, f64::min);
    format!("±{:.0}%", (max - min) / median / 2.0 * 100.0)
}

fn percentile(sorted: &[u64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() as f64 * p) as usize).min(sorted.len() - 1);
    Some(sorted[i] as f64 / 1000.0)
}

/// One verified echo of `size` bytes on each connection, 256 at a time.
async fn echo_each(conns: Vec<LoadConn>, size: usize) -> Result<Vec<LoadConn>> {
    let mut set = JoinSet::new();
    let permits = Arc::new(tokio::sync::Semaphore::new(256));
    let n = conns.len();
    for mut c in conns {
        let permits = permits.clone();
        set.spawn(async move {
            let p = permits.acquire_owned().await;
            c.run(&Workload::count(size, 1)).await?;
            drop(p);
            Ok::<LoadConn, load::LoadError>(c)
        });
    }
    let mut back = Vec::with_capacity(n);
    while let Some(r) = set.join_next().await {
        back.push(r?.with_context(|| format!("a {size}-byte echo on an idle connection"))?);
    }
    Ok(back)
}

async fn connect_all(addr: SocketAddr, n: usize) -> Result<Vec<LoadConn>> {
    let permits = Arc::new(tokio::sync::Semaphore::new(256));
    let mut set = JoinSet::new();
    for i in 0..n {
        let permits = permits.clone();
        set.spawn(async move {
            let _p = permits.acquire_owned().await;
            let c = load::connect(addr, "/echo", Duration::from_secs(30)).await;
            (i, c)
        });
    }
    let mut conns: Vec<Option<LoadConn>> = (0..n).map(|_| None).collect();
    while let Some(r) = set.join_next().await {
        let (i, c) = r?;
        conns[i] = Some(c.with_context(|| format!("connection {i} of {n} to {addr}"))?);
    }
    Ok(conns.into_iter().flatten().collect())
}

/// Runs `w` on every connection at once, then closes them; sums reports.
async fn run_all(conns: Vec<LoadConn>, w: &Workload) -> Result<Report> {
    let mut set = JoinSet::new();
    for mut c in conns {
        let w = w.clone();
        set.spawn(async move {
            let rep = c.run(&w).await?;
            c.close(Duration::from_secs(20)).await?;
            Ok::<Report, load::LoadError>(rep)
        });
    }
    let mut total = Report::default();
    while let Some(r) = set.join_next().await {
        total.merge(r?.context("a load connection failed")?);
    }
    Ok(total)
}

/// Counts the frame events in an NDJSON log, by sender. Frames wstap
/// inserted itself (`"injected":true`, e.g. closes at shutdown) count
/// too: the checks expect none.
fn logged_frames(path: &Path) -> Result<(u64, u64)> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut rd = std::io::BufReader::with_capacity(1 << 20, f);
    let mut line = Vec::new();
    let (mut client, mut server) = (0u64, 0u64);
    let has = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    while rd.read_until(b'\n', &mut line)? > 0 {
        let head = &line[..line.len().min(200)];
        if has(head, br#""event":"frame","from":"client""#) {
            client += 1;
        } else if has(head, br#""event":"frame","from":"server""#) {
            server += 1;
        }
        line.clear();
    }
    Ok((client, server))
}

impl Bench {
    /// Deletes a checked log unless --keep-logs.
    fn discard(&self, path: &Path) {
        if !self.args.keep_logs {
            let _ = std::fs::remove_file(path);
        }
    }

    async fn start_wstap(&self, json: Option<&Path>) -> Result<Proc> {
        let mut cmd = Command::new(&self.wstap);
        cmd.args(["proxy", "--listen", "127.0.0.1:0", "--upstream"])
            .arg(format!("ws://{}", self.echo.addr))
            .args(["--quiet", "--grace", "2s"]);
        if let Some(p) = json {
            cmd.arg("--json").arg(p);
        }
        Proc::spawn("wstap", cmd).await
    }

    /// The bare relay, or with a log path the log floor.
    async fn start_bare(&self, log: Option<&Path>) -> Result<Proc> {
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.arg("--serve-bare").arg(self.echo.addr.to_string());
        if let Some(p) = log {
            cmd.arg("--floor-log").arg(p);
        }
        let name = if log.is_some() {
            "log floor"
        } else {
            "bare relay"
        };
        Proc::spawn(name, cmd).await
    }

    async fn start_spin(&self) -> Result<Proc> {
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.arg("--serve-spin").arg(self.echo.addr.to_string());
        Proc::spawn("spin relay", cmd).await
    }

    fn json_path(&self, case: &str, target: TargetKind) -> PathBuf {
        self.dir
            .path()
            .join(format!("{case}-{}.ndjson", target.key()))
    }

    async fn load_case(&mut self, case: &Case, target: TargetKind) -> Result<Row> {
        let logs = matches!(target, TargetKind::WstapJson | TargetKind::Floor);
        let json = logs.then(|| self.json_path(&case.name, target));
        let proxy = match target {
            TargetKind::Wstap | TargetKind::WstapJson => {
                Some(self.start_wstap(json.as_deref()).await?)
            }
            TargetKind::Bare | TargetKind::Floor => Some(self.start_bare(json.as_deref()).await?),
            TargetKind::Spin => Some(self.start_spin().await?),
            _ => None,
        };
        let (addr, proxy_pids) = match (target, &proxy, &self.nginx) {
            (TargetKind::Direct, _, _) => (self.echo.addr, vec![]),
            (TargetKind::Nginx, _, Some(n)) => (n.addr, n.pids()),
            (_, Some(p), _) => (p.addr, vec![p.pid]),
            _ => bail!("target {} is not running", target.name()),
        };
        let conns = connect_all(addr, case.conns).await?;
        let start = Instant::now() + Duration::from_secs_f64(self.warmup);
        let end = start + Duration::from_secs_f64(self.seconds);
        let w = Workload {
            size: case.size,
            frame_size: None,
            opcode: self.opcode,
            window: case.window,
            limit: Limit::Until(end),
            measure: Some((start, end)),
            latencies: case.kind == Kind::RoundTrip,
            stall: Duration::from_secs(20),
        };
        let echo_pid = self.echo.pid;
        let me = std::process::id();
        let sampler = tokio::spawn(async move {
            // (proxy, echo, client, the proxy's user time)
            let snap = |pids: &[u32]| -> (u64, u64, u64, u64) {
                let proxy = pids.iter().map(|p| cpu_ticks_split(*p));
                let (user, system) = proxy.fold((0, 0), |(u, s), (pu, ps)| (u + pu, s + ps));
                (user + system, cpu_ticks(echo_pid), cpu_ticks(me), user)
            };
            tokio::time::sleep_until(start.into()).await;
            let a = snap(&proxy_pids);
            tokio::time::sleep_until(end.into()).await;
            let b = snap(&proxy_pids);
            (a, b, !proxy_pids.is_empty())
        });
        let mut rep = run_all(conns, &w).await?;
        let (a, b, has_proxy) = sampler.await?;
        let pct = |x: u64, y: u64| (y.saturating_sub(x)) as f64 / self.ticks / self.seconds * 100.0;

        let mut logged = None;
        if let Some(p) = proxy {
            p.stop().await?;
        }
        if let Some(path) = &json {
            let (c, s) = logged_frames(path)?;
            let want = (
                rep.frames_sent + case.conns as u64,
                rep.frames_received + case.conns as u64,
            );
            if (c, s) != want {
                self.failures.push(format!(
                    "{} {}: the JSON log holds {c} client and {s} server frames, expected {} and {} (messages plus one close frame each way per connection)",
                    case.name, target.name(), want.0, want.1
                ));
            }
            logged = Some((c, s));
            self.discard(path);
        }
        rep.latencies_ns.sort_unstable();
        let msgs = rep.measured as f64 / self.seconds;
        Ok(Row {
            msgs_per_s: msgs,
            mb_per_s: msgs * case.size as f64 / 1e6,
            p50_us: percentile(&rep.latencies_ns, 0.50),
            p99_us: percentile(&rep.latencies_ns, 0.99),
            cpu_proxy: has_proxy.then(|| pct(a.0, b.0)),
            cpu_proxy_user: has_proxy.then(|| pct(a.3, b.3)),
            cpu_echo: pct(a.1, b.1),
            cpu_client: pct(a.2, b.2),
            report: rep,
            logged,
        })
    }

    fn targets(&self) -> Vec<TargetKind> {
        let mut t: Vec<TargetKind> = [
            TargetKind::Direct,
            TargetKind::Bare,
            TargetKind::Wstap,
            TargetKind::WstapJson,
            TargetKind::Floor,
            TargetKind::Spin,
            TargetKind::Nginx,
        ]
        .into_iter()
        .filter(|k| self.args.targets.contains(k))
        .collect();
        if self.nginx.is_none() {
            t.retain(|k| *k != TargetKind::Nginx);
        }
        t
    }

    async fn run_load_cases(&mut self) -> Result<()> {
        let cases: Vec<Case> = load_cases()
            .into_iter()
            .filter(|c| selected(&self.args.only, &c.name))
            .collect();
        if cases.is_empty() {
            return Ok(());
        }
        println!();
        println!(
            "{:<16} {:<14} {:>10} {:>7} {:>9} {:>9} {:>9} {:>8} {:>8}  {:>14} {:>9} {:>7}",
            "case",
            "target",
            "msgs/s",
            "spread",
            "MB/s",
            "p50 µs",
            "p99 µs",
            "x direct",
            "p50 x",
            "cpu% px/ec/cl",
            "px µs/msg",
            "of user"
        );
        for case in cases {
            // every round of every target, then each target's median
            let mut runs: Vec<(TargetKind, Vec<Row>)> = self
                .targets()
                .into_iter()
                // a spinning thread per connection is a yardstick for one
                .filter(|t| {
                    *t != TargetKind::Spin || (case.conns == 1 && case.kind == Kind::RoundTrip)
                })
                .map(|t| (t, Vec::new()))
                .collect();
            for _ in 0..self.rounds {
                for (target, done) in runs.iter_mut() {
                    match self.load_case(&case, *target).await {
                        Ok(r) => done.push(r),
                        Err(e) => {
                            self.failures
                                .push(format!("{} {}: {e:#}", case.name, target.name()));
                            println!("{:<16} {:<14} FAILED: {e:#}", case.name, target.name());
                        }
                    }
                }
            }
            let mut rows: Vec<(TargetKind, Row, Vec<f64>)> = Vec::new();
            for (target, mut done) in runs {
                if done.is_empty() {
                    continue;
                }
                let all: Vec<f64> = done.iter().map(|r| r.msgs_per_s).collect();
                done.sort_by(|a, b| a.msgs_per_s.total_cmp(&b.msgs_per_s));
                // the lower median for an even count: never an average of
                // two runs, so every number in a row comes from one run
                let row = done.swap_remove((done.len() - 1) / 2);
                let base = rows.iter().find(|(t, _, _)| *t == TargetKind::Direct);
                let ratio = base.map(|(_, b, _)| row.msgs_per_s / b.msgs_per_s);
                let p50_ratio = base.and_then(|(_, b, _)| Some(row.p50_us? / b.p50_us?));
                let opt = |v: Option<f64>, prec: usize| {
                    v.map(|x| format!("{x:.prec$}"))
                        .unwrap_or_else(|| "-".into())
                };
                println!(
                    "{:<16} {:<14} {:>10.0} {:>7} {:>9.1} {:>9} {:>9} {:>8} {:>8}  {:>14} {:>9} {:>7}",
                    case.name,
                    target.name(),
                    row.msgs_per_s,
                    spread(&all, row.msgs_per_s),
                    row.mb_per_s,
                    opt(row.p50_us, 1),
                    opt(row.p99_us, 1),
                    opt(ratio, 2),
                    opt(p50_ratio, 2),
                    format!(
                        "{}/{:.0}/{:.0}",
                        opt(row.cpu_proxy, 0),
                        row.cpu_echo,
                        row.cpu_client
                    ),
                    opt(row.proxy_us_per_msg(self.seconds), 2),
                    opt(row.proxy_user_us_per_msg(self.seconds), 2),
                );
                rows.push((target, row, all));
            }
            let base = rows
                .iter()
                .find(|(t, _, _)| *t == TargetKind::Direct)
                .map(|(_, r, _)| r.clone());
            let hop_floor =
                if case.kind == Kind::RoundTrip && case.conns == 1 && case.size <= hops::MAX_SIZE {
                    self.hop_floor(&case, base.as_ref()).await
                } else {
                    None
                };
            let results: Vec<Value> = rows
                .iter()
                .map(|(t, r, all)| {
                    let ratio = base.as_ref().map(|b| r.msgs_per_s / b.msgs_per_s);
                    let p50_ratio = base
                        .as_ref()
                        .and_then(|b| Some(r.p50_us? / b.p50_us?));
                    let p99_ratio = base
                        .as_ref()
                        .and_then(|b| Some(r.p99_us? / b.p99_us?));
                    json!({
                        "target": t.key(),
                        "msgs_per_s": r.msgs_per_s.round(),
                        "msgs_per_s_rounds": all.iter().map(|x| x.round()).collect::<Vec<_>>(),
                        "mb_per_s": (r.mb_per_s * 10.0).round() / 10.0,
                        "p50_us": r.p50_us,
                        "p99_us": r.p99_us,
                        "ratio": ratio.map(round3),
                        "p50_ratio": p50_ratio.map(round3),
                        "p99_ratio": p99_ratio.map(round3),
                        "messages_verified": r.report.verified,
                        "frames_logged": r.logged.map(|(c, s)| json!({"client": c, "server": s})),
                        "cpu_pct": {"proxy": r.cpu_proxy.map(|x| x.round()), "echo": r.cpu_echo.round(), "client": r.cpu_client.round()},
                        "proxy_cpu_us_per_msg": r.proxy_us_per_msg(self.seconds).map(|x| (x * 100.0).round() / 100.0),
                        "proxy_user_us_per_msg": r.proxy_user_us_per_msg(self.seconds).map(|x| (x * 100.0).round() / 100.0),
                    })
                })
                .collect();
            self.json_lines.push(
                json!({
                    "case": case.name,
                    "kind": match case.kind { Kind::RoundTrip => "round-trip", Kind::Pipelined => "pipelined" },
                    "size": case.size,
                    "conns": case.conns,
                    "window": case.window,
                    "opcode": self.opcode.name(),
                    "seconds": self.seconds,
                    "rounds": self.rounds,
                    "two_hops_p50_us": hop_floor,
                    "results": results,
                })
                .to_string(),
            );
        }
        Ok(())
    }

    /// Times the two loopback hops a relay adds to this round trip (see
    /// `bench/hops.rs`) and prints them under the case's rows, with the
    /// p50 ratio a relay that cost nothing else would reach.
    async fn hop_floor(&mut self, case: &Case, direct: Option<&Row>) -> Option<f64> {
        let size = case.size;
        let timed = tokio::task::spawn_blocking(move || hops::two_hops_p50_us(size, 100_000)).await;
        let us = match timed.map_err(io::Error::other).and_then(|r| r) {
            Ok(us) => us,
            Err(e) => {
                self.failures
                    .push(format!("{} two-hop floor: {e}", case.name));
                return None;
            }
        };
        let best = direct
            .and_then(|d| d.p50_us)
            .map(|p| format!("; direct's p50 plus them: {:.2}x direct, the least a relay in user space can reach", (p + us) / p))
            .unwrap_or_default();
        println!(
            "{:<16} two loopback hops of {} (a send and a receive each way, one thread, no wake-up): p50 {us:.2} µs{best}",
            case.name,
            human(size)
        );
        Some(round3(us))
    }

    /// One big message through wstap (fresh, so VmHWM is this case's peak)
    /// and, for the time, directly and through nginx.
    async fn big_message(&mut self, name: &str, frame_size: Option<usize>) -> Result<()> {
        let size = self.args.big_mib << 20;
        let w = Workload {
            size,
            frame_size,
            opcode: self.opcode,
            window: 1,
            limit: Limit::Messages(1),
            measure: None,
            latencies: false,
            stall: Duration::from_secs(30),
        };
        let mut results = Vec::new();
        for target in self.targets() {
            if matches!(
                target,
                TargetKind::Bare | TargetKind::Floor | TargetKind::Spin
            ) {
                // references for speed: their memory is not the question
                continue;
            }
            if target == TargetKind::Wstap && self.args.targets.contains(&TargetKind::WstapJson) {
                // one wstap row is enough for memory: the logging one
                continue;
            }
            let json = (target == TargetKind::WstapJson).then(|| self.json_path(name, target));
            let proxy = match target {
                TargetKind::Wstap | TargetKind::WstapJson => {
                    Some(self.start_wstap(json.as_deref()).await?)
                }
                _ => None,
            };
            let addr = match (target, &proxy, &self.nginx) {
                (TargetKind::Direct, _, _) => self.echo.addr,
                (TargetKind::Nginx, _, Some(n)) => n.addr,
                (_, Some(p), _) => p.addr,
                _ => bail!("target {} is not running", target.name()),
            };
            let before = proxy.as_ref().and_then(|p| status_kib(p.pid, "VmRSS"));
            let t0 = Instant::now();
            let rep = run_all(connect_all(addr, 1).await?, &w).await?;
            let secs = t0.elapsed().as_secs_f64();
            let hwm = proxy.as_ref().and_then(|p| status_kib(p.pid, "VmHWM"));
            if let Some(p) = proxy {
                p.stop().await?;
            }
            if let Some(path) = &json {
                let (c, s) = logged_frames(path)?;
                let want = (rep.frames_sent + 1, rep.frames_received + 1);
                if (c, s) != want {
                    self.failures.push(format!(
                        "{name}: the JSON log holds {c}/{s} frames, expected {}/{}",
                        want.0, want.1
                    ));
                }
                self.discard(path);
            }
            let mib = |k: Option<u64>| k.map(|k| format!("{:.1}", k as f64 / 1024.0));
            println!(
                "{:<26} {:<14} {:>12} {:>12} {:>8.2} {:>9.0}",
                name,
                target.name(),
                mib(hwm).unwrap_or_else(|| "-".into()),
                mib(before).unwrap_or_else(|| "-".into()),
                secs,
                size as f64 / secs / 1e6,
            );
            results.push(json!({
                "target": target.key(),
                "peak_rss_mib": hwm.map(|k| (k as f64 / 1024.0 * 10.0).round() / 10.0),
                "rss_at_start_mib": before.map(|k| (k as f64 / 1024.0 * 10.0).round() / 10.0),
                "seconds": (secs * 1000.0).round() / 1000.0,
                "mb_per_s": (size as f64 / secs / 1e6).round(),
                "bytes_verified": rep.bytes_verified,
                "frames_each_way": rep.frames_sent,
            }));
        }
        self.json_lines.push(
            json!({
                "case": name,
                "kind": "memory",
                "size": size,
                "frame_size": frame_size.unwrap_or(size),
                "results": results,
            })
            .to_string(),
        );
        Ok(())
    }

    /// N idle connections held open through a fresh wstap; RSS per
    /// connection, then one verified echo on each, then RSS again, then
    /// one 64 KiB echo each and RSS again.
    async fn idle(&mut self, name: &str) -> Result<()> {
        let n = self.idle_n;
        let with_json = self.args.targets.contains(&TargetKind::WstapJson);
        let json = with_json.then(|| self.json_path(name, TargetKind::WstapJson));
        let p = self.start_wstap(json.as_deref()).await?;
        let limit = max_open_files(p.pid);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let rss0 = status_kib(p.pid, "VmRSS").unwrap_or(0);
        let t0 = Instant::now();
        let conns = match connect_all(p.addr, n).await {
            Ok(c) => c,
            Err(e) => {
                let out = p.output();
                let _ = p.stop().await;
                bail!("opening {n} connections through wstap (its fd limit: {limit}): {e:#}\nwstap said:\n{out}");
            }
        };
        let open_secs = t0.elapsed().as_secs_f64();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rss1 = status_kib(p.pid, "VmRSS").unwrap_or(0);
        let fds = open_fds(p.pid);
        // prove they are live: one verified echo each, then idle again
        let conns = echo_each(conns, 64).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rss2 = status_kib(p.pid, "VmRSS").unwrap_or(0);
        // a 64 KiB message each: a relay that kept its read buffer would
        // now hold every page of it while idle
        let conns = echo_each(conns, 64 << 10).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rss3 = status_kib(p.pid, "VmRSS").unwrap_or(0);
        let hwm = status_kib(p.pid, "VmHWM").unwrap_or(0);
        let mut set = JoinSet::new();
        let permits = Arc::new(tokio::sync::Semaphore::new(256));
        for c in conns {
            let permits = permits.clone();
            set.spawn(async move {
                let _p = permits.acquire_owned().await;
                c.close(Duration::from_secs(30)).await
            });
        }
        while let Some(r) = set.join_next().await {
            r?.context("closing an idle connection")?;
        }
        p.stop().await?;
        if let Some(path) = &json {
            let (c, s) = logged_frames(path)?;
            // two echoes and a close each way
            let want = (3 * n as u64, 3 * n as u64);
            if (c, s) != want {
                self.failures.push(format!(
                    "{name}: the JSON log holds {c}/{s} frames, expected {}/{}",
                    want.0, want.1
                ));
            }
            self.discard(path);
        }
        let per = |a: u64, b: u64| (b.saturating_sub(a)) as f64 / n as f64;
        println!(
            "{name:<26} {:<14} rss {:.1} -> {:.1} MiB: {:.1} KiB per idle connection; after one echo each {:.1} MiB ({:.1} KiB per connection); after a 64 KiB echo each {:.1} MiB ({:.1} KiB); peak {:.1} MiB; {fds} fds open; opened in {open_secs:.1} s; wstap's fd limit: {limit}",
            if with_json { "wstap --json" } else { "wstap --quiet" },
            rss0 as f64 / 1024.0,
            rss1 as f64 / 1024.0,
            per(rss0, rss1),
            rss2 as f64 / 1024.0,
            per(rss0, rss2),
            rss3 as f64 / 1024.0,
            per(rss0, rss3),
            hwm as f64 / 1024.0,
        );
        self.json_lines.push(
            json!({
                "case": name,
                "kind": "idle",
                "conns": n,
                "target": if with_json { "wstap-json" } else { "wstap" },
                "rss_start_mib": round1(rss0 as f64 / 1024.0),
                "rss_idle_mib": round1(rss1 as f64 / 1024.0),
                "per_conn_kib": round1(per(rss0, rss1)),
                "rss_after_one_echo_each_mib": round1(rss2 as f64 / 1024.0),
                "per_conn_after_echo_kib": round1(per(rss0, rss2)),
                "rss_after_64k_echo_each_mib": round1(rss3 as f64 / 1024.0),
                "per_conn_after_64k_echo_kib": round1(per(rss0, rss3)),
                "peak_rss_mib": round1(hwm as f64 / 1024.0),
                "fds_open": fds,
                "fd_limit": limit,
                "open_seconds": round1(open_secs),
            })
            .to_string(),
        );
        Ok(())
    }

    async fn run_memory_cases(&mut self) -> Result<()> {
        let names = mem_case_names(self.args.big_mib << 20, self.idle_n);
        if !names.iter().any(|n| selected(&self.args.only, n)) {
            return Ok(());
        }
        println!();
        println!(
            "{:<26} {:<14} {:>12} {:>12} {:>8} {:>9}",
            "case", "target", "peak RSS MiB", "RSS at start", "seconds", "MB/s"
        );
        for (i, name) in names.iter().enumerate() {
            if !selected(&self.args.only, name) {
                continue;
            }
            let r = match i {
                0 => self.big_message(name, Some(1 << 20)).await,
                1 => self.big_message(name, None).await,
                _ => self.idle(name).await,
            };
            if let Err(e) = r {
                println!("{name:<26} FAILED: {e:#}");
                self.failures.push(format!("{name}: {e:#}"));
            }
        }
        Ok(())
    }
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Raises RLIMIT_NOFILE for this process and, by inheritance, the echo
/// server, bare relay, wstap and nginx it starts: to `need` where the hard
/// limit can be raised (root with CAP_SYS_RESOURCE), else to the hard
/// limit. Returns the limits before and after.
fn raise_fd_limit(need: u64) -> ((u64, u64), (u64, u64)) {
    let before = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap_or((0, 0));
    let (soft, hard) = before;
    if hard < need && rlimit::setrlimit(rlimit::Resource::NOFILE, need, need).is_ok() {
        return (before, (need, need));
    }
    if soft < hard {
        let _ = rlimit::setrlimit(rlimit::Resource::NOFILE, hard, hard);
    }
    let after = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap_or(before);
    (before, after)
}

/// A relay yardstick's listener on 127.0.0.1, with unpaced sockets as
/// wstap's (`wstap::proxy::pacing`), announced, and its SIGTERM; `None`
/// once it has said why not. Inside a runtime.
fn relay_listener(who: &str) -> Option<(tokio::net::TcpListener, tokio::signal::unix::Signal)> {
    use tokio::signal::unix::{signal, SignalKind};
    let bound = wstap::proxy::pacing::listen(SocketAddr::from(([127, 0, 0, 1], 0)));
    match (bound, signal(SignalKind::terminate())) {
        (Ok(l), Ok(term)) => announce(&l, who).then_some((l, term)),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("{who}: {e}");
            None
        }
    }
}

/// Prints the `listening on ADDR` line the benchmark waits for.
fn announce(l: &tokio::net::TcpListener, who: &str) -> bool {
    match l.local_addr() {
        Ok(a) => {
            println!("listening on {a}");
            true
        }
        Err(e) => {
            eprintln!("{who}: {e}");
            false
        }
    }
}

fn serve_echo(addr: &str, mode: EchoArg) -> ExitCode {
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("echo: {e}");
            return ExitCode::from(2);
        }
    };
    rt.block_on(async {
        let l = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("echo: cannot listen on {addr}: {e}");
                return ExitCode::from(2);
            }
        };
        if !announce(&l, "echo") {
            return ExitCode::from(2);
        }
        let mode = match mode {
            EchoArg::Frames => EchoMode::Frames,
            EchoArg::Messages => EchoMode::Messages,
        };
        echo::serve(
            l,
            EchoOptions {
                mode,
                // `--echo messages` must take the 1 GiB message whole
                max_message: u32::MAX as usize,
                ..Default::default()
            },
        )
        .await;
        ExitCode::SUCCESS
    })
}

/// The bare relay: bytes both ways through tokio's `copy_bidirectional`,
/// on the threads wstap relays on (`wstap::proxy::shards`, one per CPU,
/// and polling after work as long as wstap's default `--busy-poll`), with
/// wstap's read size, TCP_NODELAY on both sides and wstap's unpaced
/// loopback sockets (`wstap::proxy::pacing`), and nothing else.
/// What wstap costs above this row is its decoding, events and log; what
/// this row costs above direct is the second hop itself.
///
/// With `log` it is the log floor instead (`bench/floor.rs`).
fn serve_bare(upstream: SocketAddr, log: Option<&Path>) -> ExitCode {
    let log = match log {
        None => None,
        Some(p) => match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
        {
            Ok(f) => Some(Arc::new(f)),
            Err(e) => {
                eprintln!("log floor: {}: {e}", p.display());
                return ExitCode::from(2);
            }
        },
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bare relay: {e}");
            return ExitCode::from(2);
        }
    };
    let threads = wstap::proxy::shards::one_per_cpu();
    let shards =
        match wstap::proxy::shards::Shards::start(threads, wstap::proxy::busy_poll::DEFAULT_WINDOW)
        {
            Ok(s) => s,
            Err(e) => {
                eprintln!("bare relay: {e}");
                return ExitCode::from(2);
            }
        };
    rt.block_on(async {
        let size = wstap::proxy::io::READ_CAPACITY;
        let Some((l, mut term)) = relay_listener("bare relay") else {
            return ExitCode::from(2);
        };
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                _ = term.recv() => return ExitCode::SUCCESS,
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                accepted = l.accept() => {
                    let Ok((client, _)) = accepted else {
                        // out of descriptors, say: do not spin on it
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    };
                    let log = log.clone();
                    shards.spawn(&mut tasks, client, move |client| async move {
                        let Ok(up) = wstap::proxy::pacing::connect(upstream).await else {
                            return;
                        };
                        let _ = client.set_nodelay(true);
                        let _ = up.set_nodelay(true);
                        if let Some(log) = log {
                            floor::relay(client, up, log).await;
                            return;
                        }
                        let (mut client, mut up) = (floor::Noted(client), floor::Noted(up));
                        let _ = tokio::io::copy_bidirectional_with_sizes(&mut client, &mut up, size, size)
                            .await;
                    });
                }
            }
        }
    })
}

/// Finds target/release/wstap beside this example (building it first when
/// run through cargo).
fn find_wstap(args: &Args) -> Result<PathBuf> {
    if let Some(p) = &args.wstap {
        if !p.is_file() {
            bail!("--wstap {}: no such file", p.display());
        }
        return Ok(p.clone());
    }
    let exe = std::env::current_exe()?;
    // target/<profile>/examples/bench -> target
    let target = exe
        .parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .context("cannot find the target directory from this executable's path")?;
    let bin = target.join("release").join("wstap");
    if !args.no_build {
        if let Some(cargo) = std::env::var_os("CARGO") {
            eprintln!("building wstap: cargo build --release --bin wstap");
            let status = std::process::Command::new(cargo)
                .args(["build", "--release", "--bin", "wstap"])
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .env("CARGO_TARGET_DIR", target)
                .status()
                .context("running cargo build --release")?;
            if !status.success() {
                bail!("cargo build --release --bin wstap failed ({status})");
            }
        }
    }
    if !bin.is_file() {
        bail!(
            "{} is missing: build it with `cargo build --release` (or pass --wstap PATH)",
            bin.display()
        );
    }
    Ok(bin)
}

async fn run(args: Args) -> Result<bool> {
    let (seconds, warmup, rounds) = match args.quick {
        true => (
            args.seconds.unwrap_or(1.0),
            args.warmup.unwrap_or(0.2),
            args.rounds.unwrap_or(1),
        ),
        false => (
            args.seconds.unwrap_or(2.0),
            args.warmup.unwrap_or(0.5),
            args.rounds.unwrap_or(3),
        ),
    };
    let rounds = rounds.max(1);
    if cfg!(debug_assertions) {
        eprintln!("warning: the benchmark is a debug build: its load client is slow; use `cargo run --release --example bench`");
    }
    let wstap = find_wstap(&args)?;
    let (fd_before, fd_after) = raise_fd_limit(2 * args.idle as u64 + 1024);
    // wstap holds two sockets per connection (client and upstream), plus
    // its listener, runtime and log files
    let idle_fit = (fd_after.0.saturating_sub(128) / 2) as usize;
    let idle_n = args.idle.min(idle_fit);
    let dir = tempfile::Builder::new().prefix("wstap-bench-").tempdir()?;
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.arg("--serve-echo")
        .arg("127.0.0.1:0")
        .arg("--echo")
        .arg(match args.echo {
            EchoArg::Frames => "frames",
            EchoArg::Messages => "messages",
        });
    let echo = Proc::spawn("echo server", cmd).await?;
    let nginx = if args.targets.contains(&TargetKind::Nginx) {
        Nginx::start(dir.path(), echo.addr).await?
    } else {
        None
    };
    let wstap_version = std::process::Command::new(&wstap)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    println!(
        "wstap benchmark: {wstap_version} (commit {commit}), {}",
        wstap.display()
    );
    println!(
        "machine: {cores} cores, {}; load average at start {}",
        cpu_model(),
        loadavg()
    );
    println!(
        "echo: {} ({}), {} messages; {seconds} s measured per case, target and round after {warmup} s warm-up; {rounds} rounds, the table shows each target's median",
        echo.addr,
        match args.echo {
            EchoArg::Frames => "wstap::demo::echo, frame-by-frame mode",
            EchoArg::Messages => "wstap::demo::echo, tokio-tungstenite messages",
        },
        if args.text { "text" } else { "binary" }
    );
    match &nginx {
        Some(n) => println!(
            "nginx: {} on {} ({} workers, standard WebSocket proxy config, access_log off)",
            n.version,
            n.addr,
            n.workers.len()
        ),
        None if args.targets.contains(&TargetKind::Nginx) => {
            println!("nginx: not installed, no reference row")
        }
        None => {}
    }
    println!(
        "fd limit: soft {} hard {} before; now soft {} hard {} for this process and its children (wstap inherits it, and raises its own soft limit to the hard one)",
        fd_before.0, fd_before.1, fd_after.0, fd_after.1
    );
    if idle_n < args.idle {
        println!(
            "note: {} idle connections need about {} fds in wstap (two per connection) but the limit is {} and the hard limit cannot be raised here (no CAP_SYS_RESOURCE): the idle case holds {idle_n}",
            args.idle,
            2 * args.idle + 128,
            fd_after.0
        );
    }
    println!("every echo is verified byte for byte; `x direct` is msgs/s over direct's, `p50 x` p50 latency over direct's; cpu% is proxy/echo/client, % of one core; `px µs/msg` the proxy's CPU time per message echoed, `of user` the part of it in user space (the proxy's own code; the rest is the kernel's socket work); `spread` how far the rounds were apart (half of max - min, % of the median)");

    let mut bench = Bench {
        ticks: clock_ticks_per_sec(),
        seconds,
        warmup,
        rounds,
        opcode: if args.text {
            Opcode::Text
        } else {
            Opcode::Binary
        },
        args,
        dir,
        wstap,
        echo,
        nginx,
        failures: Vec::new(),
        json_lines: Vec::new(),
        idle_n,
    };
    let started = Instant::now();
    bench.run_load_cases().await?;
    bench.run_memory_cases().await?;
    println!();
    for l in &bench.json_lines {
        println!("{l}");
    }
    println!();
    println!(
        "done in {:.0} s; load average at end {}",
        started.elapsed().as_secs_f64(),
        loadavg()
    );
    if let Some(n) = bench.nginx.take() {
        n.stop().await;
    }
    let echo = bench.echo;
    signal(echo.pid, "TERM");
    drop(echo);
    if bench.args.keep_logs {
        println!("logs kept in {}", bench.dir.keep().display());
    }
    if bench.failures.is_empty() {
        Ok(true)
    } else {
        eprintln!("FAILURES:");
        for f in &bench.failures {
            eprintln!("  {f}");
        }
        Ok(false)
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(addr) = &args.serve_echo {
        return serve_echo(addr, args.echo);
    }
    if let Some(upstream) = args.serve_spin {
        return spin::serve(upstream);
    }
    if let Some(upstream) = args.serve_bare {
        return serve_bare(upstream, args.floor_log.as_deref());
    }
    if let Some(seed) = args.seed {
        load::fix_keys(seed);
    }
    if args.list {
        for c in load_cases() {
            println!("{}", c.name);
        }
        for n in mem_case_names(args.big_mib << 20, args.idle) {
            println!("{n}");
        }
        return ExitCode::SUCCESS;
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("bench: {e:#}");
            ExitCode::from(2)
        }
    }
}
