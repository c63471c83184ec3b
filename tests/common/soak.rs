//! The soak run, shared by the CI test (`tests/soak.rs`, short) and the
//! example (`examples/soak.rs`, as long and wide as its flags say): the
//! wstap binary as a child process in front of an echo upstream, many
//! concurrent WebSocket clients exchanging messages of mixed sizes until a
//! deadline, every echo compared byte for byte, the NDJSON log's frame
//! counts compared with what was sent, and the child's memory and file
//! descriptors sampled from /proc.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use super::proc_stats::{fd_count, hwm_kib, raise_nofile, rss_kib};

/// Longest any single network step may take before the run fails.
const STEP: Duration = Duration::from_secs(60);

pub struct SoakConfig {
    /// The wstap binary.
    pub wstap: PathBuf,
    pub conns: usize,
    /// How long each connection keeps sending.
    pub duration: Duration,
    /// Message sizes, used in turn (text for even positions, binary for odd).
    pub sizes: Vec<usize>,
    /// Where the NDJSON log goes.
    pub json: PathBuf,
}

#[derive(Debug, Default)]
pub struct SoakReport {
    pub conns: usize,
    pub messages: u64,
    pub payload_bytes: u64,
    /// Data frames in the log, each direction (close frames aside).
    pub logged_from_client: u64,
    pub logged_from_server: u64,
    pub close_events: usize,
    pub fds_idle: usize,
    pub fds_after: usize,
    pub rss_idle_kib: u64,
    /// RSS once every connection was open, before traffic.
    pub rss_connected_kib: u64,
    /// RSS after one largest message each way on every connection.
    pub rss_warm_kib: u64,
    /// Highest RSS sampled in the first and second half of the traffic.
    pub rss_first_half_kib: u64,
    pub rss_second_half_kib: u64,
    pub rss_end_kib: u64,
    pub hwm_kib: u64,
    pub elapsed: Duration,
    pub exit_ok: bool,
}

impl std::fmt::Display for SoakReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "soak: {} connections, {} messages ({} payload bytes) echoed and verified in {:.1}s; \
             log: {} client / {} server data frames, {} close events; \
             wstap fds {} idle -> {} after; VmRSS {} KiB idle, {} KiB connected, {} KiB warm, \
             peak {} KiB first half / {} KiB second half, {} KiB at the end; VmHWM {} KiB",
            self.conns,
            self.messages,
            self.payload_bytes,
            self.elapsed.as_secs_f64(),
            self.logged_from_client,
            self.logged_from_server,
            self.close_events,
            self.fds_idle,
            self.fds_after,
            self.rss_idle_kib,
            self.rss_connected_kib,
            self.rss_warm_kib,
            self.rss_first_half_kib,
            self.rss_second_half_kib,
            self.rss_end_kib,
            self.hwm_kib
        )
    }
}

fn payload(len: usize, conn: usize, i: u64) -> Vec<u8> {
    let seed = (conn as u64).wrapping_mul(31).wrapping_add(i) as u8;
    (0..len)
        .map(|j| (j as u8).wrapping_mul(7).wrapping_add(seed))
        .collect()
}

fn message(len: usize, conn: usize, i: u64) -> Message {
    if i % 2 == 0 {
        // text: ASCII letters, so any length is valid UTF-8
        let p: String = payload(len, conn, i)
            .into_iter()
            .map(|b| (b'a' + b % 26) as char)
            .collect();
        Message::text(p)
    } else {
        Message::binary(payload(len, conn, i))
    }
}

async fn step<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(STEP, f)
        .await
        .unwrap_or_else(|_| panic!("soak: timed out waiting for {what}"))
}

struct Child {
    child: tokio::process::Child,
    addr: SocketAddr,
}

async fn start_wstap(cfg: &SoakConfig, upstream: SocketAddr) -> Child {
    let mut child = tokio::process::Command::new(&cfg.wstap)
        .args([
            "proxy",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &format!("ws://{upstream}"),
            "--json",
            cfg.json.to_str().expect("a UTF-8 path"),
            "--quiet",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("soak: cannot start {}: {e}", cfg.wstap.display()));
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let addr = step("wstap's listening line", async {
        while let Ok(Some(l)) = lines.next_line().await {
            if let Some(rest) = l.split("listening on ").nth(1) {
                let a = rest.split_whitespace().next().unwrap_or("");
                return a.parse().expect("listening address");
            }
        }
        panic!("wstap exited before listening");
    })
    .await;
    // keep draining stderr so wstap never blocks on it
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Child { child, addr }
}

/// Runs the soak; panics on any mismatch.
pub async fn run(cfg: SoakConfig) -> SoakReport {
    let limit = raise_nofile();
    assert!(
        limit as usize > cfg.conns * 2 + 100,
        "RLIMIT_NOFILE {limit} is too low for {} connections (both ends live here)",
        cfg.conns
    );
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = l.local_addr().unwrap();
    let echo = tokio::spawn(wstap::demo::echo::serve(l, Default::default()));
    let mut wstap = start_wstap(&cfg, upstream).await;
    let pid = wstap.child.id().expect("pid");
    let mut report = SoakReport {
        conns: cfg.conns,
        fds_idle: fd_count(pid),
        rss_idle_kib: rss_kib(pid),
        ..Default::default()
    };

    // connect everyone first: the connections are concurrent, not serial
    let addr = wstap.addr;
    let clients: Vec<_> = futures_util::stream::iter(0..cfg.conns)
        .map(|_| async move {
            let tcp = step("connect", TcpStream::connect(addr)).await.unwrap();
            tcp.set_nodelay(true).unwrap();
            let req = format!("ws://{addr}/echo").into_client_request().unwrap();
            let (ws, _) = step(
                "handshake",
                tokio_tungstenite::client_async_with_config(
                    req,
                    tcp,
                    Some(wstap::demo::echo::unlimited()),
                ),
            )
            .await
            .expect("handshake");
            ws
        })
        .buffer_unordered(64)
        .collect()
        .await;
    report.rss_connected_kib = rss_kib(pid);

    // warm up: one binary and one text message of the largest size each
    // way on every connection, so each has touched the pages of its
    // buffers (text is unmasked whole for its UTF-8 check, binary only up
    // to the preview); from here on memory must not grow with the traffic
    let largest = cfg.sizes.iter().copied().max().unwrap_or(0);
    let clients: Vec<_> = futures_util::stream::iter(clients.into_iter().enumerate())
        .map(|(conn, mut ws)| async move {
            for i in [u64::MAX, u64::MAX - 1] {
                let m = message(largest, conn, i);
                step("warm-up send", ws.send(m.clone()))
                    .await
                    .expect("send");
                let back = step("warm-up echo", ws.next())
                    .await
                    .expect("echo")
                    .expect("read");
                assert!(back == m, "connection {conn}: warm-up echo differs");
            }
            ws
        })
        .buffer_unordered(64)
        .collect()
        .await;
    report.rss_warm_kib = rss_kib(pid);

    // sample memory while the traffic runs
    let started = Instant::now();
    let half = cfg.duration / 2;
    let samples = Arc::new(Mutex::new((0u64, 0u64)));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let samples = samples.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let r = rss_kib(pid);
                {
                    let mut s = samples.lock().unwrap();
                    if started.elapsed() < half {
                        s.0 = s.0.max(r);
                    } else {
                        s.1 = s.1.max(r);
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    // the warm-up messages count too: they are in the log
    let messages = Arc::new(AtomicU64::new(2 * cfg.conns as u64));
    let bytes = Arc::new(AtomicU64::new((2 * cfg.conns * largest) as u64));
    let deadline = started + cfg.duration;
    let sizes = Arc::new(cfg.sizes.clone());
    let mut tasks = Vec::new();
    for (conn, mut ws) in clients.into_iter().enumerate() {
        let (messages, bytes, sizes) = (messages.clone(), bytes.clone(), sizes.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while Instant::now() < deadline {
                let len = sizes[(conn + i as usize) % sizes.len()];
                let m = message(len, conn, i);
                step("send", ws.send(m.clone())).await.expect("send");
                let back = step("echo", ws.next())
                    .await
                    .expect("the stream ended")
                    .expect("read");
                assert!(
                    back == m,
                    "connection {conn}: echo {i} ({len} bytes) differs"
                );
                messages.fetch_add(1, Ordering::Relaxed);
                bytes.fetch_add(len as u64, Ordering::Relaxed);
                i += 1;
            }
            step("close", ws.close(None)).await.expect("close");
            while let Some(Ok(_)) = step("close reply", ws.next()).await {}
        }));
    }
    for t in tasks {
        // each runs for the whole duration; a step inside has its own limit
        tokio::time::timeout(deadline.saturating_duration_since(Instant::now()) + STEP, t)
            .await
            .expect("soak: timed out waiting for a client")
            .expect("a client failed");
    }
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.await;
    report.elapsed = started.elapsed();
    report.messages = messages.load(Ordering::Relaxed);
    report.payload_bytes = bytes.load(Ordering::Relaxed);
    let (a, b) = *samples.lock().unwrap();
    report.rss_first_half_kib = a;
    report.rss_second_half_kib = b;

    // the log has every frame once each connection has closed
    let mut evs = String::new();
    for _ in 0..600 {
        evs = std::fs::read_to_string(&cfg.json).unwrap_or_default();
        if evs.matches("\"event\":\"close\"").count() >= cfg.conns {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for line in evs.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("bad NDJSON line: {e}"));
        match (
            v["event"].as_str(),
            v["opcode"].as_str(),
            v["from"].as_str(),
        ) {
            (Some("frame"), Some("text" | "binary"), Some("client")) => {
                report.logged_from_client += 1
            }
            (Some("frame"), Some("text" | "binary"), Some("server")) => {
                report.logged_from_server += 1
            }
            (Some("close"), _, _) => report.close_events += 1,
            _ => {}
        }
    }
    // sockets are released shortly after the close events
    report.fds_after = fd_count(pid);
    for _ in 0..100 {
        if report.fds_after <= report.fds_idle {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        report.fds_after = fd_count(pid);
    }
    report.rss_end_kib = rss_kib(pid);
    report.hwm_kib = hwm_kib(pid);

    let _ = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status();
    let status = step("wstap to exit", wstap.child.wait()).await.unwrap();
    report.exit_ok = status.success();
    echo.abort();
    report
}
