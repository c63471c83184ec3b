//! Protocol violations produced by raw TCP peers through a real proxy: each
//! becomes a `protocol-violation` finding saying what was seen; the bytes
//! are still relayed, unless `--strict` closes the connection with 1002.
//! Also the connection-level findings: abnormal closure, idle timeouts,
//! upstream timeouts.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use wstap::proto::frame::{encode_frame, Opcode};

const M: Option<[u8; 4]> = Some([0x37, 0xfa, 0x21, 0x3d]);
const HANDSHAKE: &[u8] = b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
const SWITCH: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";

fn frame(op: Opcode, fin: bool, mask: Option<[u8; 4]>, payload: &[u8]) -> Vec<u8> {
    let mut w = Vec::new();
    encode_frame(&mut w, fin, false, op, mask, payload);
    w
}

/// An upstream that answers 101, writes `server_bytes`, then records what
/// it receives until the client side closes.
async fn ws_upstream(server_bytes: Vec<u8>) -> (std::net::SocketAddr, Arc<Mutex<Vec<u8>>>) {
    let got = Arc::new(Mutex::new(Vec::new()));
    let store = got.clone();
    let server_bytes = Arc::new(server_bytes);
    let addr = scripted_upstream(move |mut s| {
        let (store, bytes) = (store.clone(), server_bytes.clone());
        async move {
            read_head(&mut s).await;
            send(&mut s, SWITCH).await;
            send(&mut s, &bytes).await;
            let all = read_all(&mut s).await;
            *store.lock().unwrap() = all;
        }
    })
    .await;
    (addr, got)
}

/// Runs one exchange: the client sends `client_bytes` after the handshake
/// and closes its side; returns the events.
async fn exchange(client_bytes: &[u8], server_bytes: Vec<u8>) -> Vec<wstap::proto::event::Event> {
    let (up, _) = ws_upstream(server_bytes).await;
    let proxy = TestProxy::start(&format!("ws://{up}")).await;
    let mut c = TcpStream::connect(proxy.addr).await.unwrap();
    send(&mut c, HANDSHAKE).await;
    read_head(&mut c).await;
    send(&mut c, client_bytes).await;
    c.shutdown().await.unwrap();
    let _ = read_all(&mut c).await;
    proxy.wait_closes(1).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_violation_is_reported_with_what_was_seen() {
    let close_1000 = 1000u16.to_be_bytes();
    let cases: Vec<(&str, Vec<u8>, Vec<u8>, &str)> = vec![
        (
            "unmasked client frame",
            frame(Opcode::Text, true, None, b"hi"),
            vec![],
            "unmasked client frame",
        ),
        (
            "masked server frame",
            vec![],
            frame(Opcode::Text, true, M, b"hi"),
            "masked server frame",
        ),
        (
            "RSV1 without extension",
            {
                let mut f = frame(Opcode::Text, true, M, b"hi");
                f[0] |= 0x40;
                f
            },
            vec![],
            "RSV1 set without a negotiated extension",
        ),
        (
            "long control",
            frame(Opcode::Ping, true, M, &[0u8; 126]),
            vec![],
            "control frame longer than 125 bytes",
        ),
        (
            "fragmented control",
            frame(Opcode::Pong, false, M, b"x"),
            vec![],
            "fragmented pong frame",
        ),
        (
            "reserved opcode",
            frame(Opcode::Reserved(0xB), true, M, b""),
            vec![],
            "reserved opcode 0xb",
        ),
        (
            "orphan continuation",
            frame(Opcode::Continuation, true, M, b"x"),
            vec![],
            "continuation frame without a message",
        ),
        (
            "interleaved message",
            [
                frame(Opcode::Text, false, M, b"a"),
                frame(Opcode::Text, true, M, b"b"),
            ]
            .concat(),
            vec![],
            "new text message before the previous fragmented message finished",
        ),
        (
            "invalid UTF-8 across fragments",
            [
                frame(Opcode::Text, false, M, b"ok \xe2\x82"),
                frame(Opcode::Continuation, true, M, b"\x41"),
            ]
            .concat(),
            vec![],
            "invalid UTF-8 in a text message",
        ),
        (
            "1-byte close",
            frame(Opcode::Close, true, M, &[3]),
            vec![],
            "close frame with a 1-byte payload",
        ),
        (
            "invalid close code",
            frame(Opcode::Close, true, M, &1006u16.to_be_bytes()),
            vec![],
            "invalid close code 1006",
        ),
        (
            "data after close",
            vec![],
            [
                frame(Opcode::Close, true, None, &close_1000),
                frame(Opcode::Binary, true, None, b"late"),
            ]
            .concat(),
            "binary frame after its sender's close frame",
        ),
    ];
    for (name, client, server, want) in cases {
        let evs = exchange(&client, server).await;
        let f = findings(&evs);
        let hit = f.iter().find(|f| {
            f.code == "protocol-violation" && f.observed.as_deref().unwrap_or("").contains(want)
        });
        assert!(
            hit.is_some(),
            "{name}: no finding with {want:?} in\n{}",
            dump(&evs)
        );
        let hit = hit.unwrap();
        assert!(hit.hint.contains("RFC"), "{name}: the hint cites the RFC");
        // relayed anyway: the frames were logged
        assert!(!frames(&evs).is_empty(), "{name}");
    }
}

#[tokio::test]
async fn strict_mode_closes_both_sides_with_1002_before_the_bad_frame() {
    let (up, got) = ws_upstream(vec![]).await;
    let proxy = TestProxy::start_with(&format!("ws://{up}"), |c| c.strict = true).await;
    let mut c = TcpStream::connect(proxy.addr).await.unwrap();
    send(&mut c, HANDSHAKE).await;
    read_head(&mut c).await;
    let good = frame(Opcode::Text, true, M, b"fine");
    let bad = frame(Opcode::Text, true, None, b"unmasked");
    send(&mut c, &[good.clone(), bad].concat()).await;
    // the client receives an (unmasked) close 1002 and then the end
    let back = read_all(&mut c).await;
    assert_eq!(back[0], 0x88, "a close frame: {back:?}");
    assert_eq!(&back[2..4], &1002u16.to_be_bytes());
    let evs = proxy.wait_closes(1).await;
    // the upstream stores what it got once its side has closed
    let mut server_got = Vec::new();
    for _ in 0..200 {
        server_got = got.lock().unwrap().clone();
        if !server_got.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        server_got.starts_with(&good),
        "the good frame was forwarded"
    );
    assert!(
        !server_got.windows(8).any(|w| w == b"unmasked"),
        "the bad frame was not forwarded"
    );
    // and a masked close 1002 followed it
    let rest = &server_got[good.len()..];
    assert_eq!(rest[0], 0x88);
    assert!(rest[1] & 0x80 != 0, "masked toward the server");
    let close = &closes(&evs)[0];
    assert_eq!(close.reason, "protocol-violation", "{}", dump(&evs));
    let injected: Vec<_> = frames(&evs).into_iter().filter(|f| f.injected).collect();
    assert_eq!(injected.len(), 2);
    assert!(injected.iter().all(|f| f.close_code == Some(1002)));
}

#[tokio::test]
async fn a_drop_without_close_frame_is_an_abnormal_closure() {
    let up = scripted_upstream(|mut s| async move {
        read_head(&mut s).await;
        send(&mut s, SWITCH).await;
        send(&mut s, &frame(Opcode::Text, true, None, b"hello")).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        // gone, no close frame
    })
    .await;
    let proxy = TestProxy::start(&format!("ws://{up}")).await;
    let mut c = TcpStream::connect(proxy.addr).await.unwrap();
    send(&mut c, HANDSHAKE).await;
    read_head(&mut c).await;
    let _ = read_all(&mut c).await;
    drop(c);
    let evs = proxy.wait_closes(1).await;
    let f: Vec<_> = findings(&evs)
        .into_iter()
        .filter(|f| f.code == "abnormal-closure")
        .collect();
    assert_eq!(f.len(), 1, "{}", dump(&evs));
    assert!(
        f[0].message.contains("the server ended the connection"),
        "{}",
        f[0].message
    );
    assert!(f[0].message.contains("1006"));
    assert_eq!(closes(&evs)[0].reason, "server-closed");
}

#[tokio::test]
async fn a_cut_after_a_named_idle_limit_is_suspected() {
    // the server drops the connection after one second of silence
    let up = scripted_upstream(|mut s| async move {
        read_head(&mut s).await;
        send(&mut s, SWITCH).await;
        tokio::time::sleep(Duration::from_millis(1000)).await;
    })
    .await;
    let proxy = TestProxy::start_with(&format!("ws://{up}"), |c| {
        c.expected_idle = vec![Duration::from_secs(1)]
    })
    .await;
    let mut c = TcpStream::connect(proxy.addr).await.unwrap();
    send(&mut c, HANDSHAKE).await;
    read_head(&mut c).await;
    let _ = read_all(&mut c).await;
    drop(c);
    let evs = proxy.wait_closes(1).await;
    let f = findings(&evs);
    let idle = f.iter().find(|f| f.code == "idle-timeout-suspected");
    assert!(idle.is_some(), "{}", dump(&evs));
    assert!(idle.unwrap().message.contains("you named"));
}

#[tokio::test]
async fn an_upstream_that_never_accepts_times_out() {
    // a listener with a full backlog: further SYNs are dropped, as a
    // firewall would, so connecting hangs until the timeout
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = sock.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        if let Ok(Ok(c)) = tokio::time::timeout(Duration::from_millis(300), s.connect(addr)).await {
            fillers.push(c);
        }
    }
    let proxy = TestProxy::start_with(&format!("ws://{addr}"), |c| {
        c.connect_timeout = Duration::from_secs(1)
    })
    .await;
    let mut c = TcpStream::connect(proxy.addr).await.unwrap();
    send(&mut c, HANDSHAKE).await;
    let resp = String::from_utf8(read_all(&mut c).await).unwrap();
    assert!(resp.starts_with("HTTP/1.1 504"), "{resp}");
    let evs = proxy.wait_closes(1).await;
    let f = findings(&evs)
        .into_iter()
        .find(|f| f.code == "upstream-timeout");
    assert!(f.is_some(), "{}", dump(&evs));
    // the TCP connect timed out, not the later wait for an answer
    let f = f.unwrap();
    assert!(
        f.message.contains("the connection attempt timed out"),
        "{}",
        f.message
    );
    assert_eq!(f.observed.as_deref(), Some("tcp layer failed"));
    drop(listener);
}
