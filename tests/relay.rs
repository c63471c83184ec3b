//! The relay through a real proxy on 127.0.0.1:0 with tokio-tungstenite
//! peers: messages arrive byte-identical, the log holds exactly the frames
//! sent, in order, and the handshake keeps its wire form.

mod common;

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{CloseFrame, Frame};
use tokio_tungstenite::tungstenite::Message;
use wstap::demo::echo::EchoOptions;
use wstap::proto::event::{view_header, Dir, Encoding, FrameEvent};
use wstap::proto::frame::{push_header, Opcode};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_of_every_size_arrive_identical_and_are_logged_in_order() {
    let echo = echo_server(EchoOptions::default()).await;
    let proxy = TestProxy::start(&format!("ws://{echo}")).await;
    let (mut ws, _) = ws_client(proxy.addr, "/echo", &[]).await;

    let spliced_before = wstap::proxy::splice::spliced_total();
    let sizes = [0usize, 1, 125, 126, 65535, 65536, 1 << 20, 16 << 20];
    let mut sent = Vec::new();
    for (i, &len) in sizes.iter().enumerate() {
        let binary = Message::binary(pattern(len, i as u8));
        let text = Message::text("é".repeat(len / 2) + if len % 2 == 1 { "x" } else { "" });
        for m in [binary, text] {
            within("send", ws.send(m.clone())).await.unwrap();
            let back = next_msg(&mut ws).await;
            assert!(
                back == m,
                "echo of a {len}-byte {} message differs",
                if m.is_text() { "text" } else { "binary" }
            );
            sent.push(m);
        }
    }
    within("close", ws.close(None)).await.unwrap();
    while let Some(Ok(_)) = within("close reply", ws.next()).await {}
    drop(ws);

    let evs = proxy.wait_closes(1).await;
    let fr = frames(&evs);
    let from_client: Vec<_> = fr
        .iter()
        .filter(|f| f.from == Dir::ClientToServer)
        .collect();
    let from_server: Vec<_> = fr
        .iter()
        .filter(|f| f.from == Dir::ServerToClient)
        .collect();
    // every message was one frame each way, plus the close frames
    assert_eq!(from_client.len(), sent.len() + 1, "{}", dump(&evs));
    assert_eq!(from_server.len(), sent.len() + 1);
    for (m, (c, s)) in sent.iter().zip(from_client.iter().zip(&from_server)) {
        let (op, len) = match m {
            Message::Text(t) => (Opcode::Text, t.len()),
            Message::Binary(b) => (Opcode::Binary, b.len()),
            _ => unreachable!(),
        };
        // the preview is the first 256 payload bytes: text as text, binary
        // as hex
        let want = match m {
            Message::Text(t) => t.as_str()[..len.min(256)].to_string(),
            Message::Binary(b) => b[..len.min(256)]
                .iter()
                .map(|x| format!("{x:02x}"))
                .collect(),
            _ => unreachable!(),
        };
        for f in [c, s] {
            assert_eq!((f.opcode, f.len, f.fin), (op, len as u64, true));
            assert_eq!(f.preview, want, "preview of a {len}-byte message");
            assert_eq!(f.truncated, len > 256);
        }
        assert!(c.masked && !s.masked);
    }
    assert_eq!(from_client.last().unwrap().opcode, Opcode::Close);
    let summary = &closes(&evs)[0];
    assert_eq!(summary.reason, "close-handshake");
    assert_eq!(summary.frames_from_client as usize, sent.len() + 1);
    // the byte counts hold every frame on the wire, spliced payload
    // included, plus the handshake before them (a request and a 101, each
    // well under 2 KiB)
    let wire = |fs: &[&FrameEvent]| -> u64 {
        fs.iter()
            .map(|f| {
                let mut head = Vec::new();
                let mask = f.masked.then_some([0; 4]);
                push_header(&mut head, f.fin, f.rsv1, f.opcode, mask, f.len);
                head.len() as u64 + f.len
            })
            .sum()
    };
    for (total, frames) in [
        (summary.bytes_from_client, wire(&from_client)),
        (summary.bytes_from_server, wire(&from_server)),
    ] {
        assert!(
            total > frames && total - frames < 2048,
            "{total} bytes counted for {frames} bytes of frames"
        );
    }
    assert!(finding_codes(&evs).is_empty(), "{:?}", findings(&evs));
    // the 1 MiB and 16 MiB binary messages crossed mostly by splice(2)
    // both ways; text is validated, so it never is
    if cfg!(target_os = "linux") {
        let spliced = wstap::proxy::splice::spliced_total() - spliced_before;
        assert!(
            spliced >= 2 * (16 << 20) - 2 * (1 << 20),
            "only {spliced} bytes were spliced"
        );
    }
}

#[tokio::test]
async fn fragments_ping_pong_and_close_code_are_logged() {
    let echo = echo_server(EchoOptions::default()).await;
    let proxy = TestProxy::start(&format!("ws://{echo}")).await;
    let (mut ws, _) = ws_client(proxy.addr, "/echo", &[]).await;

    ws.send(Message::Frame(Frame::message(
        Bytes::from_static(b"hello "),
        OpCode::Data(Data::Text),
        false,
    )))
    .await
    .unwrap();
    ws.send(Message::Frame(Frame::message(
        Bytes::from_static(b"fragmented "),
        OpCode::Data(Data::Continue),
        false,
    )))
    .await
    .unwrap();
    ws.send(Message::Frame(Frame::message(
        Bytes::from_static(b"world"),
        OpCode::Data(Data::Continue),
        true,
    )))
    .await
    .unwrap();
    assert_eq!(
        next_msg(&mut ws).await,
        Message::text("hello fragmented world")
    );
    ws.send(Message::Ping(Bytes::from_static(b"p1")))
        .await
        .unwrap();
    assert_eq!(
        next_msg(&mut ws).await,
        Message::Pong(Bytes::from_static(b"p1"))
    );
    ws.send(Message::Close(Some(CloseFrame {
        code: CloseCode::from(4001),
        reason: "done here".into(),
    })))
    .await
    .unwrap();
    match next_msg(&mut ws).await {
        Message::Close(Some(c)) => assert_eq!(u16::from(c.code), 4001),
        other => panic!("{other:?}"),
    }
    drop(ws);

    let evs = proxy.wait_closes(1).await;
    let fr = frames(&evs);
    let client: Vec<_> = fr
        .iter()
        .filter(|f| f.from == Dir::ClientToServer)
        .collect();
    let shape: Vec<_> = client
        .iter()
        .map(|f| (f.opcode.name(), f.fin, f.preview.as_str()))
        .collect();
    assert_eq!(
        shape,
        [
            ("text", false, "hello "),
            ("continuation", false, "fragmented "),
            ("continuation", true, "world"),
            ("ping", true, "p1"),
            // 4001 (0x0fa1) then "done here", in hex: a close payload
            // is not text
            ("close", true, "0fa1646f6e652068657265"),
        ]
    );
    let close = client[4];
    assert_eq!(close.close_code, Some(4001));
    assert_eq!(close.close_name.as_deref(), Some("Private Use"));
    assert_eq!(close.close_reason.as_deref(), Some("done here"));
    let server: Vec<_> = fr
        .iter()
        .filter(|f| f.from == Dir::ServerToClient)
        .map(|f| f.opcode.name())
        .collect();
    assert_eq!(server, ["text", "pong", "close"]);
    let c = &closes(&evs)[0];
    assert_eq!(c.reason, "close-handshake");
    assert!(
        c.detail
            .contains("client closed with 4001 (Private Use) \"done here\""),
        "{}",
        c.detail
    );
}

#[tokio::test]
async fn subprotocol_is_negotiated_end_to_end_unchanged() {
    let echo = echo_server(EchoOptions {
        subprotocols: vec!["chat.v1".into()],
        ..Default::default()
    })
    .await;
    let proxy = TestProxy::start(&format!("ws://{echo}")).await;
    let (mut ws, resp) = ws_client(proxy.addr, "/echo", &["chat.v2", "chat.v1"]).await;
    assert_eq!(resp.headers()["sec-websocket-protocol"], "chat.v1");
    ws.send(Message::text("x")).await.unwrap();
    next_msg(&mut ws).await;
    drop(ws);
    let evs = proxy.wait_closes(1).await;
    let hs = &handshakes(&evs)[0];
    let cr = hs.client_request.as_ref().unwrap();
    let ur = hs.upstream_request.as_ref().unwrap();
    assert_eq!(
        view_header(&cr.headers, "sec-websocket-protocol"),
        Some("chat.v2, chat.v1")
    );
    assert_eq!(cr, ur);
    let up = hs.upstream_response.as_ref().unwrap();
    assert_eq!(up.status, 101);
    assert_eq!(
        view_header(&up.headers, "sec-websocket-protocol"),
        Some("chat.v1")
    );
    assert_eq!(hs.client_response.as_ref(), Some(up));
}

#[tokio::test]
async fn handshake_views_keep_wire_order_case_and_duplicates() {
    let request = b"GET /chat?room=1 HTTP/1.1\r\nhost: example.test\r\nX-Trace: a\r\nUPGRADE: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nx-trace: b\r\n\r\n";
    let (seen_tx, seen_rx) = tokio::sync::oneshot::channel();
    let seen_tx = std::sync::Arc::new(std::sync::Mutex::new(Some(seen_tx)));
    let upstream = scripted_upstream(move |mut s| {
        let seen_tx = seen_tx.clone();
        async move {
            let head = read_head(&mut s).await;
            if let Some(tx) = seen_tx.lock().unwrap().take() {
                let _ = tx.send(head);
            }
            // 101 with a frame right behind it, in the same write
            let mut out = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nX-Dup: 1\r\nx-dup: 2\r\n\r\n".to_vec();
            out.extend_from_slice(&[0x81, 0x02, b'h', b'i']);
            send(&mut s, &out).await;
            let _ = read_all(&mut s).await;
        }
    })
    .await;
    let proxy = TestProxy::start(&format!("ws://{upstream}")).await;
    let mut c = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    send(&mut c, request).await;
    let head = read_head(&mut c).await;
    assert!(head.starts_with(b"HTTP/1.1 101"));
    assert!(std::str::from_utf8(&head)
        .unwrap()
        .contains("X-Dup: 1\r\nx-dup: 2\r\n"));
    assert_eq!(read_n(&mut c, 4).await, [0x81, 0x02, b'h', b'i']);
    // the upstream received exactly the client's bytes
    assert_eq!(within("upstream head", seen_rx).await.unwrap(), request);
    drop(c);

    let evs = proxy.wait_closes(1).await;
    let hs = &handshakes(&evs)[0];
    let cr = hs.client_request.as_ref().unwrap();
    let names: Vec<_> = cr.headers.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "host",
            "X-Trace",
            "UPGRADE",
            "Connection",
            "Sec-WebSocket-Key",
            "Sec-WebSocket-Version",
            "x-trace"
        ]
    );
    assert_eq!(
        (cr.method.as_str(), cr.target.as_str(), cr.version.as_str()),
        ("GET", "/chat?room=1", "HTTP/1.1")
    );
    assert_eq!(hs.upstream_request.as_ref(), Some(cr));
    let resp = hs.upstream_response.as_ref().unwrap();
    assert_eq!(
        &resp.headers[3..],
        [
            ("X-Dup".to_string(), "1".to_string()),
            ("x-dup".to_string(), "2".to_string())
        ]
    );
    let fr = frames(&evs);
    assert_eq!(fr.len(), 1);
    assert_eq!(
        (fr[0].from, fr[0].preview.as_str(), fr[0].encoding),
        (Dir::ServerToClient, "hi", Encoding::Utf8)
    );
}

#[tokio::test]
async fn a_101_split_across_writes_and_frames_split_anywhere_pass() {
    let upstream = scripted_upstream(|mut s| async move {
        read_head(&mut s).await;
        let mut wire = switching().into_bytes();
        // a 300-byte binary frame, then a close
        wire.extend_from_slice(&[0x82, 126, 0x01, 0x2c]);
        wire.extend(std::iter::repeat_n(7u8, 300));
        wire.extend_from_slice(&[0x88, 0x02, 0x03, 0xe8]);
        for chunk in wire.chunks(7) {
            send(&mut s, chunk).await;
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        let _ = read_all(&mut s).await;
    })
    .await;
    let proxy = TestProxy::start(&format!("ws://{upstream}")).await;
    let mut c = raw_ws(proxy.addr, "/").await;
    let body = read_n(&mut c, 4 + 300 + 4).await;
    assert_eq!(&body[..4], &[0x82, 126, 0x01, 0x2c]);
    drop(c);
    let evs = proxy.wait_closes(1).await;
    let fr = frames(&evs);
    assert_eq!(fr.len(), 2, "{}", dump(&evs));
    assert_eq!((fr[0].opcode, fr[0].len), (Opcode::Binary, 300));
    assert_eq!(fr[1].close_code, Some(1000));
}

#[tokio::test]
async fn a_read_holding_more_frames_than_a_batch_is_forwarded_and_logged_whole() {
    // 1000 tiny frames in one write: the relay forwards the read at once
    // and logs it in several event batches, every frame in order.
    const N: usize = 1000;
    let upstream = scripted_upstream(|mut s| async move {
        read_head(&mut s).await;
        let mut wire = switching().into_bytes();
        for i in 0..N {
            wire.extend_from_slice(&[0x82, 0x02]);
            wire.extend_from_slice(&(i as u16).to_be_bytes());
        }
        send(&mut s, &wire).await;
        let _ = read_all(&mut s).await;
    })
    .await;
    let proxy = TestProxy::start(&format!("ws://{upstream}")).await;
    let mut c = raw_ws(proxy.addr, "/").await;
    let body = read_n(&mut c, 4 * N).await;
    for (i, f) in body.chunks(4).enumerate() {
        assert_eq!(f[..2], [0x82, 0x02], "frame {i} header");
        assert_eq!(
            u16::from_be_bytes([f[2], f[3]]) as usize,
            i,
            "frame {i} payload"
        );
    }
    drop(c);
    let evs = proxy.wait_closes(1).await;
    let fr = frames(&evs);
    assert_eq!(fr.len(), N, "{}", dump(&evs));
    for (i, f) in fr.iter().enumerate() {
        assert_eq!(
            (f.from, f.opcode, f.len, f.preview.as_str(), f.encoding),
            (
                Dir::ServerToClient,
                Opcode::Binary,
                2,
                format!("{i:04x}").as_str(),
                Encoding::Hex
            ),
            "frame {i}"
        );
    }
}

#[tokio::test]
async fn client_and_server_drops_end_the_connection_with_a_summary() {
    let echo = echo_server(EchoOptions::default()).await;
    let proxy = TestProxy::start(&format!("ws://{echo}")).await;
    let (mut ws, _) = ws_client(proxy.addr, "/echo", &[]).await;
    ws.send(Message::text("bye")).await.unwrap();
    next_msg(&mut ws).await;
    // drop the TCP connection without a close frame
    drop(ws);
    let evs = proxy.wait_closes(1).await;
    let c = &closes(&evs)[0];
    assert_eq!(c.reason, "client-closed", "{}", dump(&evs));
    assert!(c.websocket);
    assert_eq!((c.frames_from_client, c.frames_from_server), (1, 1));
    assert!(c.bytes_from_client > 0 && c.bytes_from_server > 0);
}
