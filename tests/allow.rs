//! `--allow CIDR`: peers outside the list are closed at accept and logged
//! (an `error` and a `close` with reason `not-allowed`); peers inside it
//! are proxied as usual. Loopback needs an entry like any other address,
//! which is what lets this test use two loopback source addresses.

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use wstap::demo::echo::{self, EchoOptions};
use wstap::proto::event::{Event, EventKind};

async fn connect_from(src: &str, to: std::net::SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(format!("{src}:0").parse().unwrap()).unwrap();
    within("connect", s.connect(to)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_listed_peers_get_through_and_refusals_are_logged() {
    let echo = echo_server(EchoOptions::default()).await;
    let upstream = format!("ws://{echo}");
    let (proxy, log) = BinProxy::reverse_with_log(
        &upstream,
        &["--allow", "127.0.0.2/32", "--allow", "10.0.0.0/8"],
    )
    .await;
    assert!(
        !proxy.stderr().contains("beyond loopback"),
        "a loopback listener gives no exposure warning:\n{}",
        proxy.stderr()
    );

    // 127.0.0.1 is not listed: closed before any answer
    let mut denied = connect_from("127.0.0.1", proxy.addr).await;
    // the write may already meet the closed socket
    let _ = denied.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    let mut got = Vec::new();
    let _ = within("the refusal", denied.read_to_end(&mut got)).await;
    assert!(got.is_empty(), "a refused peer gets no bytes: {got:?}");

    // 127.0.0.2 is listed: a WebSocket works through
    let tcp = connect_from("127.0.0.2", proxy.addr).await;
    let req = format!("ws://{}/echo", proxy.addr)
        .into_client_request()
        .unwrap();
    let (mut ws, _) = within(
        "handshake",
        tokio_tungstenite::client_async_with_config(req, tcp, Some(echo::unlimited())),
    )
    .await
    .unwrap();
    ws.send(Message::text("allowed")).await.unwrap();
    let back = within("echo", ws.next()).await.unwrap().unwrap();
    assert_eq!(back, Message::text("allowed"));
    within("close", ws.close(None)).await.unwrap();
    drop(ws);

    let (status, stderr) = proxy.terminate().await;
    assert!(status.success(), "{stderr}");
    let evs: Vec<Event> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let errors: Vec<_> = evs
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Error(x) => Some((e.conn, x.message.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(errors.len(), 1, "{}", dump(&evs));
    assert!(
        errors[0].1.contains("from 127.0.0.1:")
            && errors[0]
                .1
                .contains("not in --allow (127.0.0.2/32, 10.0.0.0/8)"),
        "{}",
        errors[0].1
    );
    let cl = closes(&evs);
    assert_eq!(cl.len(), 2);
    let refused: Vec<_> = cl.iter().filter(|c| c.reason == "not-allowed").collect();
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].bytes_from_client, 0, "nothing was read from it");
    assert!(cl.iter().any(|c| c.websocket));
    assert!(frames(&evs).iter().any(|f| f.preview == "allowed"));
}

#[test]
fn a_bad_allow_value_is_a_usage_error() {
    let (_, _, err) = run_bin(
        &[
            "proxy",
            "--upstream",
            "ws://127.0.0.1:1",
            "--allow",
            "10.0.0.0/40",
        ],
        Some(2),
    );
    assert!(err.contains("not a CIDR range"), "{err}");
}
