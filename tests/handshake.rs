//! Handshakes that fail or look odd are still logged with the views that
//! happened, forwarded as they came, and answered with the upstream's real
//! answer; negotiated permessage-deflate passes untouched.

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use wstap::proto::deflate::Deflater;
use wstap::proto::event::Dir;
use wstap::proto::frame::{encode_frame, Opcode};

/// An upstream that records the request head it got and answers `reply`.
async fn answering(reply: &'static [u8]) -> (std::net::SocketAddr, Arc<Mutex<Vec<Vec<u8>>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let store = seen.clone();
    let addr = scripted_upstream(move |mut s| {
        let store = store.clone();
        async move {
            let head = read_head(&mut s).await;
            store.lock().unwrap().push(head);
            send(&mut s, reply).await;
        }
    })
    .await;
    (addr, seen)
}

#[tokio::test]
async fn a_refused_upgrade_is_logged_with_all_four_views_and_the_body() {
    let reply = b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 19\r\nConnection: close\r\n\r\norigin not allowed\n";
    let (up, _) = answering(reply).await;
    let proxy = TestProxy::start(&format!("ws://{up}")).await;
    let mut c = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    send(&mut c, b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nOrigin: https://evil.example\r\n\r\n").await;
    assert_eq!(
        read_all(&mut c).await,
        reply,
        "the upstream's answer passes back byte for byte"
    );
    let evs = proxy.wait_closes(1).await;
    let hs = &handshakes(&evs)[0];
    assert!(hs.client_request.is_some() && hs.upstream_request.is_some());
    let up = hs.upstream_response.as_ref().unwrap();
    assert_eq!((up.status, up.reason.as_str()), (403, "Forbidden"));
    assert_eq!(up.body_preview.as_deref(), Some("origin not allowed\n"));
    assert_eq!(hs.client_response.as_ref().unwrap().status, 403);
    assert!(frames(&evs).is_empty());
    assert!(!closes(&evs)[0].websocket);
}

#[tokio::test]
async fn an_unreachable_upstream_still_logs_the_handshake() {
    let (_held, port) = closed_port();
    let proxy = TestProxy::start(&format!("ws://127.0.0.1:{port}")).await;
    let mut c = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    send(&mut c, b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").await;
    let resp = String::from_utf8(read_all(&mut c).await).unwrap();
    assert!(resp.starts_with("HTTP/1.1 502"), "{resp}");
    let evs = proxy.wait_closes(1).await;
    let hs = &handshakes(&evs)[0];
    assert!(hs.client_request.is_some());
    assert!(hs.upstream_request.is_none(), "nothing was sent upstream");
    assert!(hs.upstream_response.is_none());
    assert_eq!(hs.client_response.as_ref().unwrap().status, 502);
    assert_eq!(closes(&evs)[0].reason, "upstream-failed");
}

#[tokio::test]
async fn a_stripped_http10_handshake_is_forwarded_as_it_came() {
    let reply = b"HTTP/1.1 505 HTTP Version Not Supported\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    let (up, seen) = answering(reply).await;
    let proxy = TestProxy::start(&format!("ws://{up}")).await;
    let request = b"GET /ws HTTP/1.0\r\nHost: backend\r\nConnection: close\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    let mut c = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    send(&mut c, request).await;
    assert_eq!(read_all(&mut c).await, reply);
    assert_eq!(seen.lock().unwrap()[0], request, "forwarded unchanged");
    let evs = proxy.wait_closes(1).await;
    let hs = &handshakes(&evs)[0];
    assert_eq!(hs.client_request.as_ref().unwrap().version, "HTTP/1.0");
    assert_eq!(hs.upstream_response.as_ref().unwrap().status, 505);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permessage_deflate_frames_pass_untouched_and_previews_inflate() {
    let texts: Vec<String> = (0..20)
        .map(|i| format!("compressed message {i}: {}", "abc ".repeat(i * 5)))
        .collect();
    // the server's compressed replies, fragmented at the end
    let mut server_wire = Vec::new();
    let mut d = Deflater::new(false);
    for t in &texts {
        encode_frame(
            &mut server_wire,
            true,
            true,
            Opcode::Text,
            None,
            &d.compress(t.as_bytes()),
        );
    }
    let c = d.compress(b"a fragmented compressed reply");
    let (a, b) = c.split_at(c.len() / 2);
    encode_frame(&mut server_wire, false, true, Opcode::Text, None, a);
    encode_frame(&mut server_wire, true, false, Opcode::Continuation, None, b);
    let server_wire = Arc::new(server_wire);

    let received = Arc::new(Mutex::new(Vec::new()));
    let (store, reply) = (received.clone(), server_wire.clone());
    let up = scripted_upstream(move |mut s| {
        let (store, reply) = (store.clone(), reply.clone());
        async move {
            read_head(&mut s).await;
            send(&mut s, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Extensions: permessage-deflate; client_no_context_takeover\r\n\r\n").await;
            send(&mut s, &reply).await;
            *store.lock().unwrap() = read_all(&mut s).await;
        }
    })
    .await;
    let proxy = TestProxy::start(&format!("ws://{up}")).await;

    // the client compresses without context takeover, as negotiated
    let mut client_wire = Vec::new();
    let mut d = Deflater::new(true);
    for (i, t) in texts.iter().enumerate() {
        let mask = [i as u8, 0x5a, 0xa5, 0x11];
        encode_frame(
            &mut client_wire,
            true,
            true,
            Opcode::Text,
            Some(mask),
            &d.compress(t.as_bytes()),
        );
    }
    let mut c = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    send(&mut c, b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Extensions: permessage-deflate; client_no_context_takeover\r\n\r\n").await;
    read_head(&mut c).await;
    assert_eq!(
        read_n(&mut c, server_wire.len()).await,
        *server_wire,
        "server bytes arrive unchanged"
    );
    send(&mut c, &client_wire).await;
    c.shutdown().await.unwrap();
    let evs = proxy.wait_closes(1).await;
    drop(c);
    assert_eq!(
        *received.lock().unwrap(),
        client_wire,
        "client bytes arrive unchanged"
    );

    let fr = frames(&evs);
    let client: Vec<_> = fr
        .iter()
        .filter(|f| f.from == Dir::ClientToServer)
        .collect();
    let server: Vec<_> = fr
        .iter()
        .filter(|f| f.from == Dir::ServerToClient)
        .collect();
    assert_eq!(client.len(), texts.len());
    for (f, t) in client.iter().zip(&texts) {
        assert!(f.compressed && f.rsv1);
        let shown = &t[..t.len().min(256)];
        assert_eq!(f.preview, shown);
    }
    for (f, t) in server.iter().zip(&texts) {
        assert!(f.compressed);
        assert_eq!(&f.preview, &t[..t.len().min(256)]);
    }
    let n = server.len();
    assert_eq!(
        format!("{}{}", server[n - 2].preview, server[n - 1].preview),
        "a fragmented compressed reply"
    );
    assert!(
        finding_codes(&evs)
            .iter()
            .all(|c| c != "protocol-violation"),
        "{}",
        dump(&evs)
    );
}

use tokio::io::AsyncWriteExt;
