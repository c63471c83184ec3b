//! The benchmark's load client and echo, bounded and in-process: every echo
//! through a real proxy on 127.0.0.1:0 is verified and the proxy logs
//! exactly the frames sent; an echo that corrupts, drops, repeats or cuts
//! a message makes the client fail, so a fast wrong answer cannot pass.
//! No timing assertions: speed is the benchmark's business.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wstap::demo::echo::{EchoMode, EchoOptions};
use wstap::demo::load::{self, LoadConn, LoadError, Report, Workload};
use wstap::proto::decoder::{FrameDecoder, Piece};
use wstap::proto::event::Dir;
use wstap::proto::frame::push_header;
use wstap::proto::frame::{apply_mask, Opcode};
use wstap::proto::handshake::accept_key;

async fn open(addr: SocketAddr) -> LoadConn {
    within(
        "load client handshake",
        load::connect(addr, "/echo", Duration::from_secs(10)),
    )
    .await
    .expect("handshake")
}

async fn run(conn: &mut LoadConn, w: &Workload) -> Result<Report, LoadError> {
    within("a load run", conn.run(w)).await
}

/// Runs four workloads on one connection through the proxy and checks
/// the client's counts and the proxy's frame events against each other.
async fn verified_through_proxy(mode: EchoMode) {
    let echo = echo_server(EchoOptions {
        mode,
        ..Default::default()
    })
    .await;
    let proxy = TestProxy::start(&format!("ws://{echo}")).await;
    let mut conn = open(proxy.addr).await;

    let small = Workload {
        window: 8,
        ..Workload::count(64, 300)
    };
    let big_text = Workload {
        opcode: Opcode::Text,
        frame_size: Some(16 * 1024),
        window: 4,
        ..Workload::count(70_000, 12)
    };
    let large = Workload {
        frame_size: Some(1 << 20),
        ..Workload::count(5 << 20, 2)
    };
    // one frame, streamed in chunks, an odd length so masks wrap mid-word
    let one_frame = Workload::count((5 << 20) + 3, 1);
    let mut total = Report::default();
    for w in [&small, &big_text, &large, &one_frame] {
        let rep = run(&mut conn, w).await.expect("every echo verified");
        let n = match w.limit {
            load::Limit::Messages(n) => n,
            load::Limit::Until(_) => unreachable!(),
        };
        assert_eq!((rep.sent, rep.verified, rep.measured), (n, n, n));
        assert_eq!(rep.bytes_verified, n * w.size as u64);
        assert_eq!(rep.frames_sent, n * w.frames_per_message());
        // the frame echo sends fragments back as they came; tungstenite
        // reassembles each message into one frame
        let back = match mode {
            EchoMode::Frames => n * w.frames_per_message(),
            EchoMode::Messages => n,
        };
        assert_eq!(rep.frames_received, back);
        total.merge(rep);
    }
    within("close", conn.close(Duration::from_secs(10)))
        .await
        .expect("close handshake");

    let evs = proxy.wait_closes(1).await;
    let fr = frames(&evs);
    let from_client = fr.iter().filter(|f| f.from == Dir::ClientToServer).count() as u64;
    let from_server = fr.iter().filter(|f| f.from == Dir::ServerToClient).count() as u64;
    // plus one close frame each way
    assert_eq!(from_client, total.frames_sent + 1, "{}", dump(&evs));
    assert_eq!(from_server, total.frames_received + 1);
    let payload: u64 = fr
        .iter()
        .filter(|f| f.from == Dir::ClientToServer && f.opcode != Opcode::Close)
        .map(|f| f.len)
        .sum();
    assert_eq!(payload, total.bytes_verified);
    let text = fr
        .iter()
        .filter(|f| f.from == Dir::ClientToServer && f.opcode == Opcode::Text)
        .count();
    assert_eq!(text, 12);
    assert!(finding_codes(&evs).is_empty(), "{:?}", finding_codes(&evs));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_echo_is_verified_through_the_proxy_frame_echo() {
    verified_through_proxy(EchoMode::Frames).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_echo_is_verified_through_the_proxy_message_echo() {
    verified_through_proxy(EchoMode::Messages).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_connections_with_a_time_limit_all_verify() {
    let echo = echo_server(EchoOptions {
        mode: EchoMode::Frames,
        ..Default::default()
    })
    .await;
    let proxy = TestProxy::start(&format!("ws://{echo}")).await;
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let mut conn = open(proxy.addr).await;
        tasks.push(tokio::spawn(async move {
            let w = Workload {
                window: 4,
                limit: load::Limit::Until(std::time::Instant::now() + Duration::from_millis(300)),
                latencies: true,
                ..Workload::count(4096, 0)
            };
            let rep = conn.run(&w).await?;
            conn.close(Duration::from_secs(10)).await?;
            Ok::<Report, LoadError>(rep)
        }));
    }
    let mut total = Report::default();
    for t in tasks {
        let rep = within("a connection's run", t)
            .await
            .expect("task")
            .expect("run");
        assert!(rep.sent > 0, "each connection sent something");
        assert_eq!(rep.verified, rep.sent);
        assert_eq!(rep.latencies_ns.len() as u64, rep.measured);
        total.merge(rep);
    }
    let evs = proxy.wait_closes(20).await;
    let from_client = frames(&evs)
        .iter()
        .filter(|f| f.from == Dir::ClientToServer)
        .count() as u64;
    assert_eq!(from_client, total.sent + 20);
}

/// How a broken echo misbehaves, on message `k` (0-based).
#[derive(Clone, Copy, Debug)]
enum Fault {
    Flip(u64),
    Drop(u64),
    Repeat(u64),
    Hangup(u64),
}

/// A raw upstream that answers the handshake, then echoes whole
/// single-frame messages with one fault.
async fn faulty_echo(fault: Fault) -> SocketAddr {
    scripted_upstream(move |mut s: TcpStream| async move {
        let head = read_head(&mut s).await;
        let head = String::from_utf8_lossy(&head);
        let key = head
            .lines()
            .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
            .unwrap_or_default()
            .to_string();
        let resp = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
            accept_key(&key)
        );
        send(&mut s, resp.as_bytes()).await;
        let mut dec = FrameDecoder::new();
        let mut msg = 0u64;
        let mut cur = None;
        let mut payload = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match within("echo read", s.read(&mut buf)).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let mut input = &buf[..n];
            let mut out = Vec::new();
            while let Some(p) = dec.next(&mut input) {
                match p {
                    Piece::Header(h) => {
                        cur = Some(h);
                        payload.clear();
                    }
                    Piece::Payload { data, offset } => {
                        let s0 = payload.len();
                        payload.extend_from_slice(data);
                        if let Some(m) = cur.and_then(|h| h.mask) {
                            apply_mask(&mut payload[s0..], m, offset);
                        }
                    }
                    Piece::End => {
                        let Some(h) = cur.take() else { return };
                        let copies = match fault {
                            Fault::Drop(k) if k == msg => 0,
                            Fault::Repeat(k) if k == msg => 2,
                            Fault::Hangup(k) if k == msg => return,
                            _ => 1,
                        };
                        if let Fault::Flip(k) = fault {
                            if k == msg {
                                let last = payload.len() - 1;
                                payload[last] ^= 0x01;
                            }
                        }
                        for _ in 0..copies {
                            push_header(&mut out, true, false, h.opcode, None, h.len);
                            out.extend_from_slice(&payload);
                        }
                        msg += 1;
                    }
                }
            }
            if s.write_all(&out).await.is_err() {
                return;
            }
        }
    })
    .await
}

#[tokio::test]
async fn a_wrong_echo_fails_the_client() {
    for fault in [
        Fault::Flip(5),
        Fault::Drop(5),
        Fault::Repeat(5),
        Fault::Hangup(5),
    ] {
        let addr = faulty_echo(fault).await;
        let mut conn = open(addr).await;
        let w = Workload {
            window: 4,
            stall: Duration::from_secs(2),
            ..Workload::count(100, 20)
        };
        let err = run(&mut conn, &w)
            .await
            .expect_err(&format!("{fault:?} must fail the run"));
        let ok = match fault {
            Fault::Flip(_) => {
                matches!(&err, LoadError::Mismatch { seq: 5, detail } if detail.contains("byte 99"))
            }
            // the next message arrives where message 5 was due
            Fault::Drop(_) => matches!(err, LoadError::Mismatch { seq: 5, .. }),
            Fault::Repeat(_) => matches!(err, LoadError::Mismatch { seq: 6, .. }),
            // EOF, or a reset when the echo left unread bytes behind
            Fault::Hangup(_) => matches!(err, LoadError::Ended(_) | LoadError::Io(_)),
        };
        assert!(ok, "{fault:?}: {err}");
    }
}

#[tokio::test]
async fn the_same_workload_passes_a_correct_raw_echo() {
    // the control for the test above: the faulty echo without a fault
    let addr = faulty_echo(Fault::Flip(u64::MAX)).await;
    let mut conn = open(addr).await;
    let w = Workload {
        window: 4,
        ..Workload::count(100, 20)
    };
    let rep = run(&mut conn, &w).await.expect("a correct echo passes");
    assert_eq!(rep.verified, 20);
}

#[tokio::test]
async fn a_refused_upgrade_is_a_handshake_error() {
    let addr = scripted_upstream(|mut s: TcpStream| async move {
        read_head(&mut s).await;
        send(
            &mut s,
            b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .await;
    })
    .await;
    let err = within(
        "handshake",
        load::connect(addr, "/echo", Duration::from_secs(5)),
    )
    .await
    .expect_err("403 is not an upgrade");
    assert!(
        matches!(&err, LoadError::Handshake(d) if d.contains("403")),
        "{err}"
    );
}
