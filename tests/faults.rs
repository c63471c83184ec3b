//! Peers that misbehave: an upstream that dies in the middle of a message,
//! a client that resets, an upstream that accepts TCP and never answers
//! the handshake, and half-closes in each direction (on a WebSocket and on
//! a plain tunnel after a non-WebSocket 101). Each ends with the
//! right `close` event and finding, and wstap keeps serving.

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use wstap::demo::echo::EchoOptions;
use wstap::proto::event::{CloseSummary, Event};

/// A masked client frame (zero mask: the payload bytes stay readable).
fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut w = Vec::new();
    wstap::proto::frame::encode_frame(
        &mut w,
        true,
        false,
        wstap::proto::frame::Opcode::from_bits(opcode),
        Some([0, 0, 0, 0]),
        payload,
    );
    w
}

fn server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut w = Vec::new();
    wstap::proto::frame::encode_frame(
        &mut w,
        true,
        false,
        wstap::proto::frame::Opcode::from_bits(opcode),
        None,
        payload,
    );
    w
}

fn only_close(evs: &[Event]) -> CloseSummary {
    let c = closes(evs);
    assert_eq!(c.len(), 1, "{}", dump(evs));
    c[0].clone()
}

/// What the one `abnormal-closure` finding observed.
fn abnormal_closure_seen(evs: &[Event]) -> String {
    let abnormal: Vec<_> = findings(evs)
        .into_iter()
        .filter(|f| f.code == "abnormal-closure")
        .collect();
    assert_eq!(abnormal.len(), 1, "{}", dump(evs));
    abnormal[0].observed.clone().unwrap_or_default()
}

#[tokio::test]
async fn upstream_dies_in_the_middle_of_a_message() {
    let up = scripted_upstream(|mut s| async move {
        read_head(&mut s).await;
        send(&mut s, switching().as_bytes()).await;
        // a 1000-byte binary frame, cut after 100 payload bytes
        let mut part = vec![0x82, 126, 0x03, 0xe8];
        part.extend(std::iter::repeat_n(7u8, 100));
        send(&mut s, &part).await;
        // the process dies: no close frame, no more bytes
    })
    .await;
    let proxy = TestProxy::start(&format!("ws://{up}")).await;
    let mut c = raw_ws(proxy.addr, "/die").await;
    let rest = read_all(&mut c).await;
    assert_eq!(rest.len(), 104, "every byte the upstream sent was relayed");
    let evs = proxy.wait_closes(1).await;
    let close = only_close(&evs);
    assert_eq!(close.reason, "server-closed", "{}", dump(&evs));
    assert!(close.websocket);
    let seen = abnormal_closure_seen(&evs);
    assert!(
        seen.contains("cut after 100 of 1000 payload bytes"),
        "the finding says where the message was cut: {seen}"
    );
}

#[tokio::test]
async fn upstream_dies_in_the_middle_of_a_large_frame_passed_by_splice() {
    // 2 MiB of a 4 MiB binary frame, then the upstream is gone; the client
    // reads slowly, so the relay waits on it in the middle of the frame
    const SENT: usize = 2 << 20;
    let up = scripted_upstream(|mut s| async move {
        read_head(&mut s).await;
        send(&mut s, switching().as_bytes()).await;
        let mut head = vec![0x82, 127];
        head.extend_from_slice(&(4u64 << 20).to_be_bytes());
        send(&mut s, &head).await;
        let payload: Vec<u8> = (0..SENT).map(|i| (i % 253) as u8).collect();
        send(&mut s, &payload).await;
    })
    .await;
    let proxy = TestProxy::start(&format!("ws://{up}")).await;
    let spliced_before = wstap::proxy::splice::spliced_total();
    let mut c = raw_ws(proxy.addr, "/die").await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let rest = read_all(&mut c).await;
    assert_eq!(
        rest.len(),
        10 + SENT,
        "every byte the upstream sent was relayed"
    );
    assert!(
        rest[10..]
            .iter()
            .enumerate()
            .all(|(i, b)| *b == (i % 253) as u8),
        "the payload arrived unchanged"
    );
    let evs = proxy.wait_closes(1).await;
    let close = only_close(&evs);
    assert_eq!(close.reason, "server-closed", "{}", dump(&evs));
    let seen = abnormal_closure_seen(&evs);
    assert!(
        seen.contains(&format!("cut after {SENT} of {} payload bytes", 4 << 20)),
        "the finding says where the frame was cut: {seen}"
    );
    if cfg!(target_os = "linux") {
        let spliced = wstap::proxy::splice::spliced_total() - spliced_before;
        assert!(
            spliced >= (1 << 20) as u64,
            "only {spliced} bytes were spliced"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reset_ends_the_connection_with_client_reset() {
    let echo = echo_server(EchoOptions::default()).await;
    let proxy = TestProxy::start(&format!("ws://{echo}")).await;
    let (mut ws, _) = ws_client(proxy.addr, "/echo", &[]).await;
    ws.send(Message::text("before the reset")).await.unwrap();
    within("echo", ws.next()).await.unwrap().unwrap();
    let tcp = ws.into_inner();
    // SO_LINGER 0: close() sends RST instead of FIN
    tcp.set_zero_linger().unwrap();
    drop(tcp);
    let evs = proxy.wait_closes(1).await;
    let close = only_close(&evs);
    assert_eq!(close.reason, "client-reset", "{}", dump(&evs));
    assert_eq!(close.frames_from_client, 1);
    assert!(finding_codes(&evs).contains(&"abnormal-closure".to_string()));
    // and the proxy still serves
    let (mut ws, _) = ws_client(proxy.addr, "/echo", &[]).await;
    ws.send(Message::text("after")).await.unwrap();
    assert_eq!(
        within("echo", ws.next()).await.unwrap().unwrap(),
        Message::text("after")
    );
}

/// An upstream that reads a request head and then says nothing, its
/// sockets held open (they come out of the receiver).
async fn silent_upstream() -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<TcpStream>,
) {
    let (held_tx, held_rx) = tokio::sync::mpsc::unbounded_channel::<TcpStream>();
    let up = scripted_upstream(move |mut s| {
        let held = held_tx.clone();
        async move {
            read_head(&mut s).await;
            let _ = held.send(s);
        }
    })
    .await;
    (up, held_rx)
}

#[tokio::test]
async fn an_upstream_that_never_answers_the_handshake_gets_504_and_a_finding() {
    let (up, mut held_rx) = silent_upstream().await;
    let proxy = TestProxy::start_with(&format!("ws://{up}"), |c| {
        c.handshake_timeout = Duration::from_millis(300);
    })
    .await;
    let resp = answer_to(&proxy, &upgrade_request("/silent")).await;
    assert!(resp.starts_with("HTTP/1.1 504"), "{resp}");
    let evs = proxy.wait_closes(1).await;
    assert_eq!(only_close(&evs).reason, "upstream-failed");
    assert!(
        finding_codes(&evs).contains(&"upstream-timeout".to_string()),
        "{}",
        dump(&evs)
    );
    let hs = &handshakes(&evs)[0];
    assert!(hs.upstream_request.is_some() && hs.upstream_response.is_none());
    assert_eq!(hs.client_response.as_ref().unwrap().status, 504);
    // wstap let go of the silent upstream connection
    let mut held = within("the held socket", held_rx.recv()).await.unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(
        within("EOF from wstap", held.read(&mut buf)).await.unwrap(),
        0
    );
}

/// Sends `req` on a new connection through `proxy`; all it got back, as text.
async fn answer_to(proxy: &TestProxy, req: &str) -> String {
    let mut c = within("connect", TcpStream::connect(proxy.addr))
        .await
        .unwrap();
    send(&mut c, req.as_bytes()).await;
    String::from_utf8_lossy(&read_all(&mut c).await).into_owned()
}

/// An upgrade request that announces a body it never sends, to an
/// upstream that never answers: the handshake timeout still holds (the
/// wait for the body used to keep the 504 back for ever).
#[tokio::test]
async fn an_upgrade_with_an_unsent_body_still_times_out() {
    let (up, _held) = silent_upstream().await;
    let proxy = TestProxy::start_with(&format!("ws://{up}"), |c| {
        c.handshake_timeout = Duration::from_millis(300);
        c.header_timeout = Duration::from_secs(60);
    })
    .await;
    let req = upgrade_request("/body").replace("\r\n\r\n", "\r\nContent-Length: 10\r\n\r\n");
    let resp = answer_to(&proxy, &req).await;
    assert!(resp.starts_with("HTTP/1.1 504"), "{resp}");
    let evs = proxy.wait_closes(1).await;
    assert_eq!(only_close(&evs).reason, "upstream-failed", "{}", dump(&evs));
}

/// An upstream that answers an upgrade with 100 Continue again and again:
/// the handshake timeout counts from the request, not from the last
/// interim answer.
#[tokio::test]
async fn interim_answers_do_not_extend_the_handshake_timeout() {
    let up = scripted_upstream(|mut s| async move {
        read_head(&mut s).await;
        for _ in 0..100 {
            if s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let proxy = TestProxy::start_with(&format!("ws://{up}"), |c| {
        c.handshake_timeout = Duration::from_millis(500);
    })
    .await;
    let started = std::time::Instant::now();
    let resp = answer_to(&proxy, &upgrade_request("/interim")).await;
    // the interim answers went through, then the 504
    assert!(resp.starts_with("HTTP/1.1 100 Continue"), "{resp}");
    assert!(resp.contains("HTTP/1.1 504"), "{resp}");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "{took:?}");
    let evs = proxy.wait_closes(1).await;
    assert_eq!(only_close(&evs).reason, "upstream-failed", "{}", dump(&evs));
}

#[tokio::test]
async fn a_client_half_close_reaches_the_upstream_which_can_still_answer() {
    let up = scripted_upstream(|mut s| async move {
        read_head(&mut s).await;
        send(&mut s, switching().as_bytes()).await;
        // read until the client's half-close arrives
        let got = read_all(&mut s).await;
        assert_eq!(got, client_frame(1, b"last words"));
        // then answer on the still-open direction and close
        send(&mut s, &server_frame(1, b"heard you")).await;
    })
    .await;
    let proxy = TestProxy::start(&format!("ws://{up}")).await;
    let mut c = raw_ws(proxy.addr, "/half").await;
    send(&mut c, &client_frame(1, b"last words")).await;
    within("shutdown", c.shutdown()).await.unwrap();
    let back = read_all(&mut c).await;
    assert_eq!(back, server_frame(1, b"heard you"));
    let evs = proxy.wait_closes(1).await;
    let close = only_close(&evs);
    assert_eq!(close.reason, "client-closed", "{}", dump(&evs));
    assert_eq!((close.frames_from_client, close.frames_from_server), (1, 1));
    assert!(finding_codes(&evs).contains(&"abnormal-closure".to_string()));
}

/// An upstream that answers the head with `answer`, sends `last`, closes
/// its half, and keeps listening; the receiver gets what it heard after
/// that. (Checked by the test itself: an assertion inside the script's own
/// task would not fail the test.)
async fn half_closing_upstream(
    answer: Vec<u8>,
    last: Vec<u8>,
) -> (
    std::net::SocketAddr,
    tokio::sync::oneshot::Receiver<Vec<u8>>,
) {
    let (heard_tx, heard_rx) = tokio::sync::oneshot::channel::<Vec<u8>>();
    let heard_tx = std::sync::Arc::new(std::sync::Mutex::new(Some(heard_tx)));
    let up = scripted_upstream(move |mut s| {
        let heard_tx = heard_tx.clone();
        let (answer, last) = (answer.clone(), last.clone());
        async move {
            read_head(&mut s).await;
            send(&mut s, &answer).await;
            send(&mut s, &last).await;
            s.shutdown().await.unwrap();
            let got = read_all(&mut s).await;
            if let Some(tx) = heard_tx.lock().unwrap().take() {
                let _ = tx.send(got);
            }
        }
    })
    .await;
    (up, heard_rx)
}

#[tokio::test]
async fn a_server_half_close_reaches_the_client_which_can_still_send() {
    let (up, heard_rx) =
        half_closing_upstream(switching().into_bytes(), server_frame(1, b"done talking")).await;
    let proxy = TestProxy::start(&format!("ws://{up}")).await;
    let mut c = raw_ws(proxy.addr, "/half").await;
    let (mut rd, mut wr) = c.split();
    let mut got = Vec::new();
    within("the server's half-close", rd.read_to_end(&mut got))
        .await
        .unwrap();
    assert_eq!(got, server_frame(1, b"done talking"));
    within("send", wr.write_all(&client_frame(1, b"one more")))
        .await
        .unwrap();
    within("shutdown", wr.shutdown()).await.unwrap();
    let heard = within("what the upstream heard", heard_rx).await.unwrap();
    assert_eq!(
        heard,
        client_frame(1, b"one more"),
        "the upstream got the client's last frame"
    );
    let evs = proxy.wait_closes(1).await;
    let close = only_close(&evs);
    assert_eq!(close.reason, "server-closed", "{}", dump(&evs));
    assert_eq!((close.frames_from_client, close.frames_from_server), (1, 1));
}

/// A request to switch to a protocol other than WebSocket: a 101 to it
/// makes wstap a plain two-way tunnel.
const OTHER_UPGRADE: &[u8] =
    b"GET /tunnel HTTP/1.1\r\nHost: a\r\nUpgrade: x-test\r\nConnection: Upgrade\r\n\r\n";
const OTHER_SWITCHING: &[u8] =
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x-test\r\nConnection: Upgrade\r\n\r\n";

/// A client connection through wstap, switched to the other protocol.
async fn open_tunnel(proxy: std::net::SocketAddr) -> TcpStream {
    let mut c = within("connect", TcpStream::connect(proxy)).await.unwrap();
    send(&mut c, OTHER_UPGRADE).await;
    let head = String::from_utf8_lossy(&read_head(&mut c).await).into_owned();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    c
}

#[tokio::test]
async fn a_tunnel_passes_the_client_half_close_on_and_the_answer_back() {
    // the upstream answers only once the client has said all (its FIN)
    let up = scripted_upstream(|mut s| async move {
        read_head(&mut s).await;
        send(&mut s, OTHER_SWITCHING).await;
        let got = read_all(&mut s).await;
        send(
            &mut s,
            format!("heard {:?}", String::from_utf8_lossy(&got)).as_bytes(),
        )
        .await;
    })
    .await;
    let proxy = TestProxy::start(&format!("http://{up}")).await;
    let mut c = open_tunnel(proxy.addr).await;
    send(&mut c, b"all I have").await;
    within("shutdown", c.shutdown()).await.unwrap();
    let back = read_all(&mut c).await;
    assert_eq!(String::from_utf8_lossy(&back), "heard \"all I have\"");
    let evs = proxy.wait_closes(1).await;
    assert_eq!(only_close(&evs).reason, "tunnel-closed", "{}", dump(&evs));
}

#[tokio::test]
async fn a_tunnel_passes_the_server_half_close_on_and_the_client_can_still_send() {
    let (up, heard_rx) =
        half_closing_upstream(OTHER_SWITCHING.to_vec(), b"done talking".to_vec()).await;
    let proxy = TestProxy::start(&format!("http://{up}")).await;
    let mut c = open_tunnel(proxy.addr).await;
    let (mut rd, mut wr) = c.split();
    let mut got = Vec::new();
    within("the server's half-close", rd.read_to_end(&mut got))
        .await
        .unwrap();
    assert_eq!(got, b"done talking");
    within("send", wr.write_all(b"one more")).await.unwrap();
    within("shutdown", wr.shutdown()).await.unwrap();
    let heard = within("what the upstream heard", heard_rx).await.unwrap();
    assert_eq!(
        heard, b"one more",
        "the upstream got the client's last bytes"
    );
    let evs = proxy.wait_closes(1).await;
    assert_eq!(only_close(&evs).reason, "tunnel-closed", "{}", dump(&evs));
}
