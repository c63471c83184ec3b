//! SIGTERM in the middle of traffic: wstap stops accepting, closes open
//! WebSockets with 1001 on both sides, flushes the log and exits 0; the
//! NDJSON holds every frame that was relayed before the signal (checked
//! against what both peers actually saw), and every line parses.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use wstap::demo::echo;
use wstap::proto::event::{Dir, Event, EventKind};
use wstap::proto::frame::Opcode;

/// An echo upstream that records every text message it received.
async fn recording_echo() -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let store = seen.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let store = store.clone();
            tokio::spawn(async move {
                let Ok(mut ws) =
                    tokio_tungstenite::accept_async_with_config(s, Some(echo::unlimited())).await
                else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    match m {
                        Message::Text(t) => {
                            store.lock().unwrap().push(t.to_string());
                            if ws.send(Message::Text(t)).await.is_err() {
                                break;
                            }
                        }
                        Message::Close(_) => break,
                        _ => {}
                    }
                }
            });
        }
    });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_traffic_loses_no_relayed_frame() {
    let (up, server_saw) = recording_echo().await;
    let upstream = format!("ws://{up}");
    let (proxy, log) = BinProxy::reverse_with_log(&upstream, &["--quiet", "--grace", "3s"]).await;

    // several connections, each with many messages in flight
    const CONNS: usize = 6;
    let client_got = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut tasks = Vec::new();
    for c in 0..CONNS {
        let (ws, _) = ws_client(proxy.addr, "/echo", &[]).await;
        let (mut tx, mut rx) = ws.split();
        let got = client_got.clone();
        let reader = tokio::spawn(async move {
            let mut close_code = None;
            while let Ok(Some(Ok(m))) = tokio::time::timeout(STEP, rx.next()).await {
                match m {
                    Message::Text(t) => got.lock().unwrap().push(t.to_string()),
                    Message::Close(f) => close_code = f.map(|f| u16::from(f.code)),
                    _ => {}
                }
            }
            close_code
        });
        let writer = tokio::spawn(async move {
            for i in 0..1_000_000u32 {
                let m = Message::text(format!("c{c}-m{i}"));
                match tokio::time::timeout(STEP, tx.send(m)).await {
                    Ok(Ok(())) => {}
                    _ => break,
                }
                if i % 64 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        });
        tasks.push((reader, writer));
    }

    // let traffic build up, then signal
    within("traffic", async {
        while client_got.lock().unwrap().len() < 3000 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let (status, stderr) = proxy.terminate().await;
    assert!(status.success(), "exit {status:?}\n{stderr}");
    let mut codes = Vec::new();
    for (reader, writer) in tasks {
        codes.push(within("a reader", reader).await.unwrap());
        writer.abort();
    }
    assert_eq!(codes, vec![Some(1001); CONNS], "every client got a 1001");

    let text = std::fs::read_to_string(&log).unwrap();
    let evs: Vec<Event> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad NDJSON line {l:?}: {e}")))
        .collect();
    assert!(text.ends_with('\n'), "the last line is complete");
    let logged = |from: Dir| -> HashSet<String> {
        frames(&evs)
            .into_iter()
            .filter(|f| f.from == from && f.opcode == Opcode::Text && !f.injected)
            .map(|f| f.preview)
            .collect()
    };
    let from_client = logged(Dir::ClientToServer);
    let from_server = logged(Dir::ServerToClient);
    let client_got = client_got.lock().unwrap().clone();
    let server_saw = server_saw.lock().unwrap().clone();
    assert!(client_got.len() >= 3000);
    // what the upstream received went through wstap client -> server
    for m in &server_saw {
        assert!(
            from_client.contains(m),
            "{m} reached the upstream but is not in the log"
        );
    }
    // what came back went through both ways
    for m in &client_got {
        assert!(
            from_server.contains(m),
            "{m} reached the client but is not in the log"
        );
        assert!(
            from_client.contains(m),
            "{m} was echoed but its request is not in the log"
        );
    }
    // and nothing is in the log that no peer received
    assert_eq!(from_client.len(), server_saw.len());
    assert_eq!(from_server.len(), client_got.len());
    let cl = closes(&evs);
    assert_eq!(cl.len(), CONNS, "one close event per connection");
    let fr = frames(&evs);
    // Each server and each client got one 1001: wstap's, or the other
    // side's answer to the 1001 wstap sent it, when that answer came
    // through before the pump took wstap's close (wstap then sends no
    // second close of its own).
    for (toward, whom) in [
        (Dir::ClientToServer, "server"),
        (Dir::ServerToClient, "client"),
    ] {
        let codes = fr
            .iter()
            .filter(|f| f.from == toward && f.opcode == Opcode::Close)
            .map(|f| f.close_code)
            .collect::<Vec<_>>();
        assert_eq!(codes, vec![Some(1001); CONNS], "one 1001 to each {whom}");
    }
    assert!(!evs.iter().any(|e| matches!(e.kind, EventKind::Dropped(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_stuck_on_a_reader_that_does_not_read_still_gets_its_close_event() {
    // an upstream that accepts the upgrade and never reads
    let (held_tx, mut held_rx) = tokio::sync::mpsc::unbounded_channel::<tokio::net::TcpStream>();
    let up = scripted_upstream(move |mut s| {
        let held = held_tx.clone();
        async move {
            let head = String::from_utf8_lossy(&read_head(&mut s).await).into_owned();
            let key = head
                .lines()
                .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
                .unwrap_or("")
                .trim()
                .to_string();
            let resp = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                wstap::proto::handshake::accept_key(&key)
            );
            send(&mut s, resp.as_bytes()).await;
            let _ = held.send(s);
        }
    })
    .await;
    let upstream = format!("ws://{up}");
    let (proxy, log) =
        BinProxy::reverse_with_log(&upstream, &["--quiet", "--grace", "500ms"]).await;
    let (ws, _) = ws_client(proxy.addr, "/stuck", &[]).await;
    let _held = within("the upstream socket", held_rx.recv()).await.unwrap();
    let mut tcp = ws.into_inner();
    // one endless binary frame: wstap relays until the upstream's buffers
    // are full, then its pump waits on a write that never completes
    let mut header = vec![0x82, 0x80 | 127];
    header.extend_from_slice(&(1u64 << 40).to_be_bytes());
    header.extend_from_slice(&[0, 0, 0, 0]);
    send(&mut tcp, &header).await;
    let pushed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = pushed.clone();
    let pusher = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let chunk = vec![0u8; 64 * 1024];
        while tcp.write_all(&chunk).await.is_ok() {
            counter.fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
    });
    // wait until the push has stalled
    within("the stall", async {
        let mut last = u64::MAX;
        loop {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let now = pushed.load(std::sync::atomic::Ordering::Relaxed);
            if now == last && now > 0 {
                break;
            }
            last = now;
        }
    })
    .await;

    let (status, stderr) = proxy.terminate().await;
    assert!(status.success(), "exit {status:?}\n{stderr}");
    pusher.abort();
    let evs: Vec<Event> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let cl = closes(&evs);
    assert_eq!(
        cl.len(),
        1,
        "the stuck connection has its close event:\n{}",
        dump(&evs)
    );
    assert_eq!(cl[0].reason, "shutdown", "{}", dump(&evs));
    assert!(cl[0].websocket);
    assert!(cl[0].bytes_from_client > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keepalive_and_unanswered_requests_get_close_events_at_shutdown() {
    // `/slow` is never answered; anything else gets a keep-alive 200
    let up = scripted_upstream(|mut s| async move {
        loop {
            let head = read_head(&mut s).await;
            if head.is_empty() {
                return;
            }
            if String::from_utf8_lossy(&head).contains("/slow") {
                let _ = tokio::time::timeout(STEP, read_all(&mut s)).await;
                return;
            }
            send(&mut s, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
        }
    })
    .await;
    let upstream = format!("http://{up}");
    let (proxy, log) =
        BinProxy::reverse_with_log(&upstream, &["--quiet", "--grace", "300ms"]).await;
    // a browser-like keep-alive connection, idle after one request
    let mut idle = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    send(&mut idle, b"GET /page HTTP/1.1\r\nHost: a\r\n\r\n").await;
    let head = read_head(&mut idle).await;
    assert!(head.starts_with(b"HTTP/1.1 200"));
    assert_eq!(read_n(&mut idle, 2).await, b"ok");
    // a request the upstream never answers (no handshake timeout applies)
    let mut waiting = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    send(&mut waiting, b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n").await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let (status, stderr) = proxy.terminate().await;
    assert!(status.success(), "exit {status:?}\n{stderr}");
    let evs: Vec<Event> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let cl = closes(&evs);
    assert_eq!(cl.len(), 2, "{}", dump(&evs));
    assert!(cl.iter().all(|c| c.reason == "shutdown"), "{}", dump(&evs));
    assert_eq!(https(&evs).len(), 1, "the answered request is logged");
    drop((idle, waiting));
}

#[tokio::test]
async fn a_connection_lingering_at_shutdown_still_gets_its_close_event() {
    // its client keeps its side open after the answer, so the lingering
    // close would outlast the grace period: the end of it ends the linger
    let up = scripted_upstream(|mut s| async move {
        read_head(&mut s).await;
        send(
            &mut s,
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
        )
        .await;
    })
    .await;
    let proxy = TestProxy::start_with(&format!("http://{up}"), |c| {
        c.grace = Duration::from_millis(100);
    })
    .await;
    let mut c = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    send(&mut c, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    let got = read_all(&mut c).await;
    assert!(got.ends_with(b"ok"));
    let evs = proxy.stop().await;
    drop(c);
    assert_eq!(closes(&evs).len(), 1, "{}", dump(&evs));
}
