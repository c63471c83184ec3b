//! wstap (the binary, as a child process) holds no more than it must: a
//! storm of 1 000 connections that end in every way a connection can
//! (close handshake, reset, upstream death, silent upstream, garbage,
//! slowloris, half-close...) leaves its open file descriptors where they
//! were, each with its `close` event; and a peer that stops reading makes
//! the sender wait instead of wstap buffering, while 1 GiB goes through.

mod common;
#[path = "common/proc_stats.rs"]
mod proc_stats;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use proc_stats::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;
use wstap::demo::echo;
use wstap::proto::event::{Event, EventKind};
use wstap::proto::frame::{encode_frame, Opcode};

fn frame(opcode: Opcode, mask: Option<[u8; 4]>, payload: &[u8]) -> Vec<u8> {
    let mut w = Vec::new();
    encode_frame(&mut w, true, false, opcode, mask, payload);
    w
}

/// An upstream whose behaviour the request path picks.
async fn storm_upstream() -> SocketAddr {
    scripted_upstream(|mut s| async move {
        let head = String::from_utf8_lossy(&read_head(&mut s).await).into_owned();
        let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
        match path.as_str() {
            "/echo" => {
                let _ = s.write_all(switching().as_bytes()).await;
                let ws = WebSocketStream::from_raw_socket(s, Role::Server, Some(echo::unlimited()))
                    .await;
                echo::echo(ws).await;
            }
            "/die" => {
                let _ = s.write_all(switching().as_bytes()).await;
                let _ = s.write_all(&[0x82, 126, 0x03, 0xe8, 1, 2, 3]).await;
            }
            "/silent" => {
                // say nothing; let go once wstap does
                let mut sink = Vec::new();
                let _ = tokio::time::timeout(STEP, s.read_to_end(&mut sink)).await;
            }
            "/half" => {
                let _ = s.write_all(switching().as_bytes()).await;
                let mut sink = Vec::new();
                let _ = tokio::time::timeout(STEP, s.read_to_end(&mut sink)).await;
                let _ = s.write_all(&frame(Opcode::Text, None, b"bye")).await;
            }
            _ => {
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await;
            }
        }
    })
    .await
}

/// The ways a connection ends in the storm, and the `close` reason each gets.
const KINDS: &[(&str, &str)] = &[
    ("close handshake", "close-handshake"),
    ("client reset", "client-reset"),
    ("upstream dies mid-message", "server-closed"),
    ("upstream never answers", "upstream-failed"),
    ("garbage", "bad-request"),
    ("head cut short", "bad-request"),
    ("client half-close", "client-closed"),
    ("slowloris", "bad-request"),
    ("plain HTTP", "client-closed"),
    ("connect and leave", "client-closed"),
];

async fn storm_client(proxy: SocketAddr, kind: usize) {
    let mut c = within("connect", TcpStream::connect(proxy)).await.unwrap();
    let mut sink = Vec::new();
    match kind {
        0 => {
            send(&mut c, upgrade_request("/echo").as_bytes()).await;
            read_head(&mut c).await;
            send(&mut c, &frame(Opcode::Text, Some([1, 2, 3, 4]), b"ping me")).await;
            let echoed = read_n(&mut c, 2 + 7).await;
            assert_eq!(&echoed[2..], b"ping me");
            send(
                &mut c,
                &frame(Opcode::Close, Some([1, 2, 3, 4]), &[0x03, 0xe8]),
            )
            .await;
            let _ = within("close reply", c.read_to_end(&mut sink)).await;
        }
        1 => {
            send(&mut c, upgrade_request("/echo").as_bytes()).await;
            read_head(&mut c).await;
            c.set_zero_linger().unwrap();
        }
        2 => {
            send(&mut c, upgrade_request("/die").as_bytes()).await;
            let _ = within("EOF", c.read_to_end(&mut sink)).await;
        }
        3 => {
            send(&mut c, upgrade_request("/silent").as_bytes()).await;
            let _ = within("504", c.read_to_end(&mut sink)).await;
            assert!(sink.starts_with(b"HTTP/1.1 504"));
        }
        4 => {
            send(&mut c, b"\x00\x01garbage\r\n\r\n").await;
            let _ = within("400", c.read_to_end(&mut sink)).await;
            assert!(sink.starts_with(b"HTTP/1.1 400"));
        }
        5 => {
            send(&mut c, b"GET /cut HTTP/1.1\r\nHo").await;
            c.shutdown().await.unwrap();
            let _ = within("EOF", c.read_to_end(&mut sink)).await;
        }
        6 => {
            send(&mut c, upgrade_request("/half").as_bytes()).await;
            read_head(&mut c).await;
            send(&mut c, &frame(Opcode::Text, Some([0; 4]), b"last")).await;
            c.shutdown().await.unwrap();
            let _ = within("EOF", c.read_to_end(&mut sink)).await;
        }
        7 => {
            send(&mut c, b"GET /slow HTTP/1.1\r\n").await;
            let _ = within("408", c.read_to_end(&mut sink)).await;
            assert!(sink.starts_with(b"HTTP/1.1 408"));
        }
        8 => {
            send(
                &mut c,
                b"GET /http HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            )
            .await;
            let _ = within("200", c.read_to_end(&mut sink)).await;
            assert!(sink.starts_with(b"HTTP/1.1 200"));
        }
        _ => {}
    }
}

fn read_events(path: &std::path::Path) -> Vec<Event> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l:?}: {e}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_failing_connections_leaves_no_fd_behind() {
    raise_nofile();
    let up = storm_upstream().await;
    let upstream = format!("ws://{up}");
    let (proxy, log) = BinProxy::reverse_with_log(
        &upstream,
        &[
            "--quiet",
            "--header-timeout",
            "1s",
            "--handshake-timeout",
            "1s",
        ],
    )
    .await;
    let pid = proxy.child.id().unwrap();
    let fds_before = fd_count(pid);
    let rss_before = rss_kib(pid);

    const N: usize = 1000;
    let addr = proxy.addr;
    futures_util::stream::iter(0..N)
        .map(|i| storm_client(addr, i % KINDS.len()))
        .buffer_unordered(200)
        .collect::<Vec<()>>()
        .await;

    // every connection ends with its close event...
    let mut evs = Vec::new();
    for _ in 0..200 {
        evs = read_events(&log);
        if closes(&evs).len() >= N {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cl = closes(&evs);
    assert_eq!(cl.len(), N, "close events");
    for (kind, (name, reason)) in KINDS.iter().enumerate() {
        let want = (0..N).filter(|i| i % KINDS.len() == kind).count();
        let got = cl.iter().filter(|c| c.reason == *reason).count();
        let same: usize = KINDS
            .iter()
            .enumerate()
            .filter(|(_, (_, r))| r == reason)
            .map(|(k, _)| (0..N).filter(|i| i % KINDS.len() == k).count())
            .sum();
        assert_eq!(
            got, same,
            "{name}: {reason} closes (this kind alone: {want})"
        );
    }
    let timeouts = findings(&evs)
        .iter()
        .filter(|f| f.code == "upstream-timeout")
        .count();
    assert_eq!(timeouts, N / KINDS.len());

    // ...and wstap's descriptors come back to where they were
    let mut fds_after = fd_count(pid);
    for _ in 0..100 {
        if fds_after <= fds_before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        fds_after = fd_count(pid);
    }
    let rss_after = rss_kib(pid);
    eprintln!(
        "storm of {N}: wstap fds {fds_before} -> {fds_after}; VmRSS {rss_before} KiB -> {rss_after} KiB, VmHWM {} KiB",
        hwm_kib(pid)
    );
    assert_eq!(fds_after, fds_before, "open descriptors after the storm");
    let (status, stderr) = proxy.terminate().await;
    assert!(status.success(), "{stderr}");
    let evs = read_events(&log);
    assert!(evs.iter().all(|e| !matches!(e.kind, EventKind::Dropped(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_does_not_read_makes_the_sender_wait_while_1_gib_goes_through() {
    const TOTAL: u64 = 1 << 30;
    let (go_tx, go_rx) = tokio::sync::watch::channel(false);
    let received = Arc::new(AtomicU64::new(0));
    let counter = received.clone();
    let up = scripted_upstream(move |mut s| {
        let mut go = go_rx.clone();
        let counter = counter.clone();
        async move {
            read_head(&mut s).await;
            s.write_all(switching().as_bytes()).await.unwrap();
            // a reader that does not read, until told to
            let _ = go.wait_for(|g| *g).await;
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        counter.fetch_add(n as u64, Ordering::Relaxed);
                    }
                }
            }
        }
    })
    .await;
    let upstream = format!("ws://{up}");
    let proxy = BinProxy::reverse(&upstream, &["--quiet"]).await;
    let pid = proxy.child.id().unwrap();

    let mut c = within("connect", TcpStream::connect(proxy.addr))
        .await
        .unwrap();
    send(&mut c, upgrade_request("/push").as_bytes()).await;
    read_head(&mut c).await;
    let rss_base = rss_kib(pid);

    // one 1 GiB binary frame; a zero mask keeps the payload as written
    let mut header = Vec::new();
    encode_frame(&mut header, true, false, Opcode::Binary, Some([0; 4]), &[]);
    header[1] = 0x80 | 127;
    header.splice(2..2, TOTAL.to_be_bytes());
    let wire_total = header.len() as u64 + TOTAL;
    let sent = Arc::new(AtomicU64::new(0));
    let sent_by_writer = sent.clone();
    let writer = tokio::spawn(async move {
        c.write_all(&header).await.unwrap();
        sent_by_writer.fetch_add(header.len() as u64, Ordering::Relaxed);
        let chunk = vec![0x5au8; 256 * 1024];
        let mut left = TOTAL;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            c.write_all(&chunk[..n]).await.unwrap();
            sent_by_writer.fetch_add(n as u64, Ordering::Relaxed);
            left -= n as u64;
        }
        c
    });

    // wait until the sender is stuck: nothing more goes out for a while
    let mut last = 0;
    let mut still = 0;
    while still < 10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = sent.load(Ordering::Relaxed);
        still = if now == last { still + 1 } else { 0 };
        last = now;
        assert!(
            now < wire_total,
            "the whole GiB went out to a reader that reads nothing"
        );
    }
    let stalled_at = sent.load(Ordering::Relaxed);
    let rss_stalled = rss_kib(pid);
    // socket buffers on both sides of wstap and its two read buffers: a
    // few MiB, nowhere near the gigabyte
    assert!(
        stalled_at < 64 << 20,
        "the sender got {stalled_at} bytes out before having to wait"
    );

    // now the reader reads: the whole GiB goes through, memory stays flat
    go_tx.send(true).unwrap();
    let mut rss_peak = rss_stalled;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    while received.load(Ordering::Relaxed) < wire_total {
        assert!(
            tokio::time::Instant::now() < deadline,
            "1 GiB did not get through"
        );
        rss_peak = rss_peak.max(rss_kib(pid));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let c = within("the writer", writer).await.unwrap();
    drop(c);
    let hwm = hwm_kib(pid);
    eprintln!(
        "backpressure: sender stalled after {stalled_at} bytes; wstap VmRSS {rss_base} KiB at the start, {rss_stalled} KiB stalled, {rss_peak} KiB peak while 1 GiB passed; VmHWM {hwm} KiB"
    );
    assert_eq!(received.load(Ordering::Relaxed), wire_total);
    // generous: the point is "megabytes, not a gigabyte"
    assert!(
        rss_peak < rss_base + 32 * 1024,
        "wstap grew from {rss_base} KiB to {rss_peak} KiB"
    );
    assert!(
        hwm < rss_base + 32 * 1024,
        "peak {hwm} KiB from {rss_base} KiB"
    );
    let (status, stderr) = proxy.terminate().await;
    assert!(status.success(), "{stderr}");
}
