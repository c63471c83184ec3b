//! The binary as users and scripts run it: flags from the contract, the
//! listening line, the NDJSON log on disk while running and at exit, the
//! demo, and usage errors.

mod common;
#[cfg(target_os = "linux")]
#[path = "common/proc_stats.rs"]
mod proc_stats;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
#[cfg(target_os = "linux")]
use proc_stats::{relay_cpu_ticks, relay_tasks};
use tokio_tungstenite::tungstenite::Message;
use wstap::demo::echo::EchoOptions;
use wstap::proto::event::{Dir, Event, EventKind};
use wstap::proto::frame::Opcode;

fn parse_lines(text: &str) -> Vec<Event> {
    text.lines()
        .map(|l| {
            serde_json::from_str::<Event>(l)
                .unwrap_or_else(|e| panic!("bad NDJSON line {l:?}: {e}"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_is_on_disk_while_running_and_complete_at_sigterm() {
    let echo = echo_server(EchoOptions::default()).await;
    let upstream = format!("ws://{echo}");
    let (proxy, log) = BinProxy::reverse_with_log(&upstream, &["--quiet"]).await;
    assert!(
        proxy
            .stderr()
            .contains(&format!("listening on {}", proxy.addr)),
        "{}",
        proxy.stderr()
    );

    let (mut ws, _) = ws_client(proxy.addr, "/echo", &[]).await;
    ws.send(Message::text("first")).await.unwrap();
    within("echo", ws.next()).await.unwrap().unwrap();
    // the frame reaches the file without the proxy exiting
    let mut seen = false;
    for _ in 0..100 {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("\"preview\":\"first\"") {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(seen, "the frame never reached {}", log.display());
    ws.send(Message::text("second")).await.unwrap();
    within("echo", ws.next()).await.unwrap().unwrap();

    let (status, stderr) = proxy.terminate().await;
    assert!(status.success(), "exit {status:?}\n{stderr}");
    let evs = parse_lines(&std::fs::read_to_string(&log).unwrap());
    assert!(
        matches!(evs[0].kind, EventKind::Listening(_)),
        "the first event is listening"
    );
    assert!(evs[0].conn.is_none());
    let fr = frames(&evs);
    let texts: Vec<_> = fr
        .iter()
        .filter(|f| f.opcode == Opcode::Text)
        .map(|f| (f.injected, f.preview.as_str()))
        .collect();
    assert_eq!(
        texts,
        [
            (false, "first"),
            (false, "first"),
            (false, "second"),
            (false, "second")
        ]
    );
    // At shutdown wstap sent 1001 to the server, and the client got a 1001
    // too: wstap's, or the server's answer when it came through first
    // (wstap then sends no second close of its own).
    let closes: Vec<_> = fr
        .iter()
        .filter(|f| f.opcode == Opcode::Close)
        .map(|f| (f.from, f.injected, f.close_code))
        .collect();
    let to_server: Vec<_> = closes
        .iter()
        .filter(|c| c.0 == Dir::ClientToServer)
        .collect();
    let to_client: Vec<_> = closes
        .iter()
        .filter(|c| c.0 == Dir::ServerToClient)
        .collect();
    assert_eq!(
        to_server,
        [&(Dir::ClientToServer, true, Some(1001))],
        "{}",
        dump(&evs)
    );
    assert_eq!(to_client.len(), 1, "{}", dump(&evs));
    assert_eq!(to_client[0].2, Some(1001), "{}", dump(&evs));
    assert_eq!(handshakes(&evs).len(), 1);
    assert!(evs.iter().skip(1).all(|e| e.conn.is_some()));
}

/// A verdict does not change when the reader of stdout has left (`| head`):
/// under `set -o pipefail` a diff that found nothing must still fail (a
/// closed stdout used to turn every exit code into 0).
#[test]
fn a_closed_stdout_keeps_the_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    let e = empty.to_str().unwrap();
    // no pairs; nothing listens on port 1
    for args in [
        vec!["diff", e, e],
        vec!["check", "ws://127.0.0.1:1/", "--timeout", "2s"],
    ] {
        let mut child = std::process::Command::new(bin_path())
            .args(&args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // the reader leaves before wstap writes its report
        drop(child.stdout.take());
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(1), "{args:?}");
    }
}

/// A second start with the same command line fails on the taken port and
/// leaves the running instance's files alone (it used to truncate the log
/// and replace the HAR before it tried to bind).
#[tokio::test]
async fn a_start_that_cannot_bind_leaves_the_outputs_alone() {
    let echo = echo_server(EchoOptions::default()).await;
    let upstream = format!("ws://{echo}");
    let dir = tempfile::tempdir().unwrap();
    let har = dir.path().join("capture.har");
    let (proxy, log) =
        BinProxy::reverse_with_log(&upstream, &["--quiet", "--har", har.to_str().unwrap()]).await;
    let mut before = String::new();
    for _ in 0..100 {
        before = std::fs::read_to_string(&log).unwrap_or_default();
        if before.contains("\"listening\"") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(before.contains("\"listening\""), "{before:?}");
    let har_before = std::fs::read(&har).unwrap();

    let addr = proxy.addr.to_string();
    let second = within(
        "the second start",
        tokio::process::Command::new(bin_path())
            .args([
                "proxy",
                "--listen",
                &addr,
                "--upstream",
                &upstream,
                "--quiet",
            ])
            .args([
                "--json",
                log.to_str().unwrap(),
                "--har",
                har.to_str().unwrap(),
            ])
            .output(),
    )
    .await
    .unwrap();
    let err = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(2), "{err}");
    assert!(err.contains("in use"), "{err}");
    assert_eq!(std::fs::read_to_string(&log).unwrap(), before);
    assert_eq!(std::fs::read(&har).unwrap(), har_before);
    let (status, stderr) = proxy.terminate().await;
    assert!(status.success(), "{stderr}");
}

#[tokio::test]
async fn json_to_stdout_and_quiet_stderr() {
    let echo = echo_server(EchoOptions::default()).await;
    let upstream = format!("ws://{echo}");
    let proxy = BinProxy::reverse(&upstream, &["--json", "-", "--quiet"]).await;
    let (mut ws, _) = ws_client(proxy.addr, "/echo", &[]).await;
    ws.send(Message::text("to stdout")).await.unwrap();
    within("echo", ws.next()).await.unwrap().unwrap();
    drop(ws);
    let mut child = proxy.child;
    let mut stdout = child.stdout.take().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .arg("-INT")
            .arg(pid.to_string())
            .status();
    }
    let status = within("exit after SIGINT", child.wait()).await.unwrap();
    assert!(status.success());
    let mut out = String::new();
    use tokio::io::AsyncReadExt;
    stdout.read_to_string(&mut out).await.unwrap();
    let evs = parse_lines(&out);
    assert!(frames(&evs).iter().any(|f| f.preview == "to stdout"));
    let stderr = proxy.stderr_lines.lock().unwrap().join("\n");
    assert!(
        !stderr.contains("to stdout"),
        "--quiet keeps frames off stderr:\n{stderr}"
    );
}

/// `--threads 3` starts three relay threads, and WebSockets dealt out to
/// them echo and are logged like any other: each connection's frames in
/// order, in both directions, and one close each.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_threads_serve_connections_in_full() {
    let echo = echo_server(EchoOptions::default()).await;
    let upstream = format!("ws://{echo}");
    let (proxy, log) = BinProxy::reverse_with_log(&upstream, &["--quiet", "--threads", "3"]).await;
    let pid = proxy.child.id().expect("pid");
    let relay_threads = || {
        let mut names: Vec<String> = relay_tasks(pid).into_iter().map(|(n, _)| n).collect();
        names.sort();
        names
    };
    // a thread takes its name once it first runs, which on a loaded
    // machine can be after the listening line
    let mut names = relay_threads();
    for _ in 0..100 {
        if names.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        names = relay_threads();
    }
    assert_eq!(names, ["wstap-relay-0", "wstap-relay-1", "wstap-relay-2"]);

    let mut clients = Vec::new();
    for _ in 0..6 {
        clients.push(ws_client(proxy.addr, "/echo", &[]).await.0);
    }
    for round in 0..5 {
        for (i, ws) in clients.iter_mut().enumerate() {
            ws.send(Message::text(format!("c{i} m{round}")))
                .await
                .unwrap();
        }
        for (i, ws) in clients.iter_mut().enumerate() {
            let back = within("echo", ws.next()).await.unwrap().unwrap();
            assert_eq!(back, Message::text(format!("c{i} m{round}")));
        }
    }
    for ws in &mut clients {
        ws.close(None).await.unwrap();
        while let Some(Ok(_)) = within("close", ws.next()).await {}
    }
    let (status, stderr) = proxy.terminate().await;
    assert!(status.success(), "exit {status:?}\n{stderr}");

    let evs = parse_lines(&std::fs::read_to_string(&log).unwrap());
    let mut texts: std::collections::BTreeMap<_, Vec<(Dir, String)>> = Default::default();
    let mut closes: std::collections::BTreeMap<_, usize> = Default::default();
    for e in &evs {
        match &e.kind {
            EventKind::Frame(f) if f.opcode == Opcode::Text => {
                texts
                    .entry(e.conn)
                    .or_default()
                    .push((f.from, f.preview.clone()));
            }
            EventKind::Close(_) => *closes.entry(e.conn).or_default() += 1,
            _ => {}
        }
    }
    assert_eq!(texts.len(), 6, "{}", dump(&evs));
    let mut seen = Vec::new();
    for frames in texts.values() {
        let who = frames[0].1.split(' ').next().unwrap_or_default().to_owned();
        for dir in [Dir::ClientToServer, Dir::ServerToClient] {
            let got: Vec<&str> = frames
                .iter()
                .filter(|(d, _)| *d == dir)
                .map(|(_, p)| p.as_str())
                .collect();
            let want: Vec<String> = (0..5).map(|r| format!("{who} m{r}")).collect();
            assert_eq!(got, want, "{dir:?} of {who}");
        }
        seen.push(who);
    }
    seen.sort();
    assert_eq!(seen, ["c0", "c1", "c2", "c3", "c4", "c5"]);
    assert_eq!(closes.len(), 6, "{}", dump(&evs));
    assert!(closes.values().all(|&n| n == 1), "{}", dump(&evs));
    // Each connection's lines are in its order: the handshake before its
    // frames, the close after them. The relay threads write a read's frame
    // lines into the log themselves here (`--quiet --json`), the sink
    // thread writes the rest.
    for conn in texts.keys() {
        let kinds: Vec<&str> = evs
            .iter()
            .filter(|e| e.conn == *conn)
            .filter_map(|e| match &e.kind {
                EventKind::Handshake(_) => Some("handshake"),
                EventKind::Frame(_) => Some("frame"),
                EventKind::Close(_) => Some("close"),
                _ => None,
            })
            .collect();
        assert_eq!(kinds.first(), Some(&"handshake"), "{conn:?}: {kinds:?}");
        assert_eq!(kinds.last(), Some(&"close"), "{conn:?}: {kinds:?}");
        assert_eq!(
            kinds.iter().filter(|k| **k != "frame").count(),
            2,
            "{conn:?}: {kinds:?}"
        );
    }
}

/// Busy-polling (on by default) polls only after work: a relay thread
/// that served a steady exchange polls in its gaps, and once the traffic
/// stops, on an open but silent WebSocket, it sleeps, with the longest
/// window `--busy-poll` takes, which is where a window that never closed
/// would show most.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_polling_sleeps_once_the_traffic_stops() {
    let echo = echo_server(EchoOptions::default()).await;
    let upstream = format!("ws://{echo}");
    let proxy = BinProxy::reverse(
        &upstream,
        &["--quiet", "--threads", "1", "--busy-poll", "10ms"],
    )
    .await;
    let pid = proxy.child.id().expect("pid");
    let (mut ws, _) = ws_client(proxy.addr, "/echo", &[]).await;
    let busy = relay_cpu_ticks(pid);
    for i in 0..2000 {
        ws.send(Message::binary(vec![i as u8; 64])).await.unwrap();
        let back = within("echo", ws.next()).await.unwrap().unwrap();
        assert_eq!(back, Message::binary(vec![i as u8; 64]));
    }
    let served = relay_cpu_ticks(pid) - busy;
    // the window's end, then a second of silence with the socket open
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = relay_cpu_ticks(pid);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = relay_cpu_ticks(pid) - before;
    // a tick is 10 ms: a thread that polled on would show about 100
    assert!(
        idle <= 10,
        "the relay thread used {idle} ticks in a silent second (it used {served} serving)"
    );
    ws.send(Message::text("still there")).await.unwrap();
    let back = within("echo", ws.next()).await.unwrap().unwrap();
    assert_eq!(back, Message::text("still there"));
    let (status, stderr) = proxy.terminate().await;
    assert!(status.success(), "exit {status:?}\n{stderr}");
}

#[test]
fn demo_shows_a_handshake_frames_and_exits_zero() {
    let (_, _, stderr) = run_bin(&["demo"], Some(0));
    assert!(
        stderr.contains("handshake GET /echo → 101 Switching Protocols"),
        "{stderr}"
    );
    for needle in [
        "→ text",
        "← text",
        "→ binary",
        "← binary",
        "→ continuation",
        "→ ping",
        "← pong",
        "→ close",
        "4001 Private Use",
        "http GET / → 200",
        "verdict: healthy",
        // the second, broken handshake shows what a finding looks like
        "! error upgrade-header-missing",
        "! error http-version-downgrade",
    ] {
        assert!(stderr.contains(needle), "missing {needle:?} in:\n{stderr}");
    }
}

#[test]
fn usage_errors_exit_2_with_a_reason() {
    let (_, _, err) = run_bin(&["proxy"], Some(2));
    assert!(err.contains("--upstream"), "{err}");
    let (_, _, err) = run_bin(&["proxy", "--upstream", "ftp://x"], Some(2));
    assert!(err.contains("ws://, wss://, http:// or https://"), "{err}");
    let (_, _, err) = run_bin(
        &[
            "proxy",
            "--upstream",
            "ws://127.0.0.1:1",
            "--listen",
            "nonsense",
        ],
        Some(2),
    );
    assert!(err.contains("--listen"), "{err}");
    let (_, _, err) = run_bin(
        &["proxy", "--upstream", "ws://127.0.0.1:1", "--threads", "0"],
        Some(2),
    );
    assert!(err.contains("--threads"), "{err}");
    for (flag, value, says) in [
        ("--busy-poll", "20ms", "at most 10ms"),
        ("--busy-poll", "soon", "0 for off"),
        // a duration no deadline can hold (it panicked on every connection)
        (
            "--connect-timeout",
            "18446744073709551615s",
            "at most 365 days",
        ),
    ] {
        let (_, _, err) = run_bin(
            &["proxy", "--upstream", "ws://127.0.0.1:1", flag, value],
            Some(2),
        );
        assert!(
            err.contains(flag) && err.contains(says),
            "{flag} {value}: {err}"
        );
    }
    let (_, out, _) = run_bin(&["proxy", "--help"], Some(0));
    assert!(
        out.contains("[default: 127.0.0.1:9000]"),
        "the default listener is loopback:\n{out}"
    );
}
