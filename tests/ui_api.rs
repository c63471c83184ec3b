//! The live view's HTTP API, in-process: a real echo upstream, the proxy,
//! the UI server on 127.0.0.1:0, and a tokio-tungstenite client. Listing,
//! paging, filters, inject, replay, close, the event stream, bad input and
//! the DNS-rebinding guard.

mod common;

use std::time::Duration;

use base64::Engine;
use common::ui::{http, raw, recording_echo, Sse, UiProxy};
use common::{echo_server, within, ws_client, Ws};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use wstap::demo::echo::EchoOptions;

async fn send_text(ws: &mut Ws, t: &str) {
    within("send", ws.send(Message::text(t))).await.unwrap();
}

/// The next data or ping message the client reads (pongs are skipped).
async fn next_msg(ws: &mut Ws) -> Message {
    loop {
        let m = within("a message at the client", ws.next())
            .await
            .expect("stream open")
            .expect("message");
        if !m.is_pong() {
            return m;
        }
    }
}

async fn echo_conn(p: &UiProxy, path: &str) -> (Ws, u64) {
    let (ws, _) = ws_client(p.addr, path, &[]).await;
    let list = p
        .wait_conns("the connection", |l| {
            l.iter().any(|c| c["target"] == path && c["status"] == 101)
        })
        .await;
    let id = list
        .iter()
        .find(|c| c["target"] == path)
        .and_then(|c| c["id"].as_u64())
        .unwrap();
    (ws, id)
}

async fn wait_frames(p: &UiProxy, id: u64, n: u64) -> Value {
    let list = p
        .wait_conns(&format!("{n} frames on connection {id}"), |l| {
            l.iter()
                .any(|c| c["id"] == id && c["frames"].as_u64() >= Some(n))
        })
        .await;
    list.into_iter().find(|c| c["id"] == id).unwrap()
}

fn ns(frames: &Value) -> Vec<u64> {
    frames
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["n"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn lists_connections_pages_and_filters_frames() {
    let echo = echo_server(EchoOptions::default()).await;
    let p = UiProxy::start(&format!("ws://{echo}")).await;
    let (mut ws, id) = echo_conn(&p, "/chat?room=1").await;
    let mut sent_bytes = 0u64;
    for i in 0..30 {
        let t = format!("msg {i}");
        sent_bytes += t.len() as u64;
        send_text(&mut ws, &t).await;
        assert_eq!(next_msg(&mut ws).await, Message::text(t));
    }
    within(
        "ping",
        ws.send(Message::Ping(b"are you there".to_vec().into())),
    )
    .await
    .unwrap();
    // the ping and the echo server's pong
    let c = wait_frames(&p, id, 62).await;
    assert_eq!(c["path"], "/chat");
    assert_eq!(c["target"], "/chat?room=1");
    assert_eq!(c["status"], 101);
    assert_eq!(c["open"], true);
    assert_eq!(c["frames"], 62);
    assert_eq!(c["bytes"], 2 * sent_bytes + 2 * 13);
    assert_eq!(c["findings"], json!([]));

    // paging: in order, numbered, the total in a header
    let r = p
        .get(&format!("/api/connections/{id}/frames?offset=10&limit=5"))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-total-count"), Some("62"));
    assert_eq!(r.header("x-first-frame"), Some("0"));
    let page = r.json();
    assert_eq!(ns(&page), vec![10, 11, 12, 13, 14]);
    assert_eq!(page[0]["event"], "frame");
    assert_eq!(page[0]["conn"], id);
    assert_eq!(page[0]["from"], "client");
    assert_eq!(page[0]["preview"], "msg 5");
    assert_eq!(page[0]["masked"], true);
    assert_eq!(page[1]["from"], "server");
    assert_eq!(page[1]["preview"], "msg 5");
    let tail = p
        .get(&format!("/api/connections/{id}/frames?offset=60&limit=100"))
        .await
        .json();
    assert_eq!(ns(&tail), vec![60, 61]);
    assert_eq!(tail[0]["opcode"], "ping");
    assert_eq!(tail[1]["opcode"], "pong");

    // filters narrow, and the total counts the matches
    let r = p
        .get(&format!(
            "/api/connections/{id}/frames?from=server&limit=1000"
        ))
        .await;
    assert_eq!(r.header("x-total-count"), Some("31"));
    assert!(r
        .json()
        .as_array()
        .unwrap()
        .iter()
        .all(|f| f["from"] == "server"));
    let r = p
        .get(&format!("/api/connections/{id}/frames?q=MSG+2&limit=1000"))
        .await;
    let hits = r.json();
    // "msg 2" and "msg 20".."msg 29", each way
    assert_eq!(r.header("x-total-count"), Some("22"));
    assert!(hits
        .as_array()
        .unwrap()
        .iter()
        .all(|f| f["preview"].as_str().unwrap().starts_with("msg 2")));
    let r = p
        .get(&format!(
            "/api/connections/{id}/frames?q=msg%202&from=client&offset=1&limit=2"
        ))
        .await;
    assert_eq!(r.header("x-total-count"), Some("11"));
    let two = r.json();
    assert_eq!(two[0]["preview"], "msg 20");
    assert_eq!(two[1]["preview"], "msg 21");
    let r = p
        .get(&format!("/api/connections/{id}/frames?opcode=ping,pong"))
        .await;
    assert_eq!(ns(&r.json()), vec![60, 61]);
    let r = p
        .get(&format!("/api/connections/{id}/frames?findings=1"))
        .await;
    assert_eq!(r.header("x-total-count"), Some("0"));

    // one connection in detail: the four views of the handshake
    let d = p.get(&format!("/api/connections/{id}")).await.json();
    assert_eq!(d["handshake"]["client_request"]["target"], "/chat?room=1");
    assert_eq!(d["handshake"]["upstream_response"]["status"], 101);
    assert!(d["handshake"]["upstream_request"]["headers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|h| h[0]
            .as_str()
            .unwrap()
            .eq_ignore_ascii_case("sec-websocket-key")));
    assert_eq!(d["first_frame"], 0);

    within("close", ws.close(None)).await.unwrap();
    let list = p
        .wait_conns("the connection to end", |l| {
            l.iter().any(|c| c["id"] == id && c["open"] == false)
        })
        .await;
    let c = list.iter().find(|c| c["id"] == id).unwrap();
    assert_eq!(c["close"]["reason"], "close-handshake");
    assert_eq!(c["status"], 101);
    p.stop().await;
}

#[tokio::test]
async fn inject_reaches_either_side() {
    let echo = echo_server(EchoOptions::default()).await;
    let p = UiProxy::start(&format!("ws://{echo}")).await;
    let (mut ws, id) = echo_conn(&p, "/ws").await;
    let path = format!("/api/connections/{id}/inject");

    // to the server: the echo server sends it back to the client
    let r = p
        .post_json(
            &path,
            &json!({"to": "server", "opcode": "text", "data": "from the api"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["written"], true);
    assert_eq!(next_msg(&mut ws).await, Message::text("from the api"));

    // to the client: straight there
    let r = p
        .post_json(
            &path,
            &json!({"to": "client", "opcode": "text", "data": "only for you"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(next_msg(&mut ws).await, Message::text("only for you"));

    // binary data is base64; it comes back byte for byte
    let bin = vec![0u8, 159, 146, 150, 255];
    let b64 = base64::engine::general_purpose::STANDARD.encode(&bin);
    let r = p
        .post_json(
            &path,
            &json!({"to": "server", "opcode": "binary", "data": b64}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(next_msg(&mut ws).await, Message::binary(bin.clone()));

    // a ping to the client
    let r = p
        .post_json(
            &path,
            &json!({"to": "client", "opcode": "ping", "data": "hi"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        next_msg(&mut ws).await,
        Message::Ping(b"hi".to_vec().into())
    );

    // the client still talks normally afterwards
    send_text(&mut ws, "still fine").await;
    assert_eq!(next_msg(&mut ws).await, Message::text("still fine"));

    // the log shows what wstap inserted, masked toward the server only
    wait_frames(&p, id, 8).await;
    let inj = p
        .get(&format!("/api/connections/{id}/frames?injected=1"))
        .await
        .json();
    let inj = inj.as_array().unwrap();
    let seen: Vec<(String, String, bool)> = inj
        .iter()
        .map(|f| {
            (
                f["from"].as_str().unwrap().to_string(),
                f["opcode"].as_str().unwrap().to_string(),
                f["masked"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            ("client".into(), "text".into(), true),
            ("server".into(), "text".into(), false),
            ("client".into(), "binary".into(), true),
            ("server".into(), "ping".into(), false),
        ]
    );
    assert!(inj
        .iter()
        .all(|f| f["injected"] == true && f["rsv1"] == false));
    assert_eq!(inj[2]["encoding"], "hex");
    assert_eq!(inj[2]["preview"], "009f9296ff");
    p.stop().await;
}

/// A client stuck in the middle of a fragmented message: injected data
/// frames wait for the message to end, and only as many as the
/// connection's queue holds; the rest are answered 503 at once instead of
/// being kept (they used to pile up without limit).
#[tokio::test]
async fn injects_behind_an_unfinished_message_are_bounded() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use wstap::proto::frame::{encode_frame, Opcode};

    let echo = echo_server(EchoOptions::default()).await;
    let p = UiProxy::start(&format!("ws://{echo}")).await;
    let (ws, id) = echo_conn(&p, "/stuck").await;
    let mut tcp = ws.into_inner();
    async fn fragment(tcp: &mut tokio::net::TcpStream, fin: bool, op: Opcode, payload: &[u8]) {
        let mut f = Vec::new();
        encode_frame(&mut f, fin, false, op, Some([1, 2, 3, 4]), payload);
        within("a fragment", tcp.write_all(&f)).await.unwrap();
    }
    fragment(&mut tcp, false, Opcode::Text, b"ab").await;
    wait_frames(&p, id, 1).await;

    const TRIES: usize = 40;
    let path = format!("/api/connections/{id}/inject");
    let answers = futures_util::future::join_all((0..TRIES).map(|i| {
        let body = json!({"to": "server", "opcode": "text", "data": format!("inj-{i:02}")});
        let (p, path) = (&p, &path);
        async move { p.post_json(path, &body).await.status }
    }))
    .await;
    let waiting = answers.iter().filter(|s| **s == 202).count();
    let refused = answers.iter().filter(|s| **s == 503).count();
    assert_eq!(waiting + refused, TRIES, "answers: {answers:?}");
    // the inbox holds 16, the pump one more
    assert!(
        (16..=17).contains(&waiting),
        "{waiting} accepted: {answers:?}"
    );

    // the message ends: the ones accepted go out, in order, and come back
    fragment(&mut tcp, true, Opcode::Continuation, b"c").await;
    let mut seen = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    within("the injected frames' echoes", async {
        while seen.windows(4).filter(|w| *w == b"inj-").count() < waiting {
            let n = tcp.read(&mut buf).await.unwrap();
            assert!(n > 0, "the connection ended early");
            seen.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    let text = String::from_utf8_lossy(&seen);
    assert!(text.contains("abc"), "the client's message came back first");
    assert_eq!(text.matches("inj-").count(), waiting);
    p.stop().await;
}

/// A client that never stops sending keeps its socket readable every time
/// the relay looks: an inject must still get in between two frames.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inject_gets_in_while_the_client_keeps_sending() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    use wstap::proto::frame::{encode_frame, Opcode};

    const MARK: &[u8] = b"INJECTED-WHILE-BUSY";
    let echo = echo_server(EchoOptions::default()).await;
    let p = UiProxy::start_with(
        &format!("ws://{echo}"),
        |c| c.max_preview = 16,
        Default::default(),
    )
    .await;
    let (ws, id) = echo_conn(&p, "/busy").await;
    // the client writes and reads from threads of its own (blocking
    // sockets), so that it keeps writing whatever the runtime the relay
    // shares with this test is doing
    let tcp = ws.into_inner().into_std().unwrap();
    tcp.set_nonblocking(false).unwrap();
    let mut rd = tcp.try_clone().unwrap();
    let mut wr = tcp;

    // 4096 text frames of 64 bytes, masked (with a zero key: the payload
    // stays as it is), written again and again as fast as the socket
    // takes them: the relay's work per frame (events, the live view's
    // store) keeps it the slower side, so the socket is seldom empty
    let mut frame = Vec::new();
    encode_frame(
        &mut frame,
        true,
        false,
        Opcode::Text,
        Some([0; 4]),
        &[b'a'; 64],
    );
    let burst = frame.repeat(4096);
    let stop = Arc::new(AtomicBool::new(false));
    let writing = Arc::new(AtomicBool::new(true));
    let writer = {
        let (stop, writing) = (stop.clone(), writing.clone());
        std::thread::spawn(move || {
            use std::io::Write;
            let until = std::time::Instant::now() + Duration::from_secs(10);
            while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < until {
                if wr.write_all(&burst).is_err() {
                    break;
                }
            }
            writing.store(false, Ordering::Relaxed);
        })
    };
    // the client reads every echo (or the echo server would stop reading,
    // and so would the relay) and looks for the injected text
    let got = Arc::new(AtomicU64::new(0));
    let found = Arc::new(AtomicBool::new(false));
    let reader = {
        let (got, found) = (got.clone(), found.clone());
        std::thread::spawn(move || {
            use std::io::Read;
            let mut buf = vec![0u8; 256 * 1024];
            let mut tail: Vec<u8> = Vec::new();
            while let Ok(n @ 1..) = rd.read(&mut buf) {
                got.fetch_add(n as u64, Ordering::Relaxed);
                if found.load(Ordering::Relaxed) {
                    continue;
                }
                tail.extend_from_slice(&buf[..n]);
                if tail.windows(MARK.len()).any(|w| w == MARK) {
                    found.store(true, Ordering::Relaxed);
                }
                let keep = tail.len().saturating_sub(MARK.len());
                tail.drain(..keep);
            }
        })
    };
    within("the echoes to flow", async {
        while got.load(Ordering::Relaxed) < 256 * 1024 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;

    let path = format!("/api/connections/{id}/inject");
    let body = json!({"to": "server", "opcode": "text", "data": "INJECTED-WHILE-BUSY"});
    let post = p.post_json(&path, &body);
    // a liveness bound, not a speed one: the inject goes in at the next
    // frame boundary, milliseconds away; a relay that only looks at its
    // inbox when the socket has nothing waits for a moment when it
    // happens to be empty (without the glance at the inbox this failed in
    // about half the runs)
    let r = tokio::time::timeout(Duration::from_secs(2), post)
        .await
        .expect("the inject was written while the client kept sending");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["written"], true);
    assert!(
        writing.load(Ordering::Relaxed),
        "the client was still sending when the inject went through"
    );
    // the echo of the injected frame comes after the backlog of the flood
    stop.store(true, Ordering::Relaxed);
    within("the injected text back at the client", async {
        while !found.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    within(
        "the writer",
        tokio::task::spawn_blocking(move || writer.join()),
    )
    .await
    .unwrap()
    .unwrap();
    p.stop().await;
    // the proxy closed the connection: the reader sees its end
    within(
        "the reader",
        tokio::task::spawn_blocking(move || reader.join()),
    )
    .await
    .unwrap()
    .unwrap();
}

#[tokio::test]
async fn replay_resends_whole_logged_messages_and_refuses_partial_ones() {
    let echo = echo_server(EchoOptions::default()).await;
    let p = UiProxy::start_with(
        &format!("ws://{echo}"),
        |c| c.max_preview = 32,
        Default::default(),
    )
    .await;
    let (mut ws, id) = echo_conn(&p, "/replay").await;
    send_text(&mut ws, "replay me").await;
    assert_eq!(next_msg(&mut ws).await, Message::text("replay me"));
    let long = "x".repeat(100);
    send_text(&mut ws, &long).await;
    assert_eq!(next_msg(&mut ws).await, Message::text(long.clone()));
    wait_frames(&p, id, 4).await;
    let found = p
        .get(&format!(
            "/api/connections/{id}/frames?from=client&q=replay"
        ))
        .await
        .json();
    let n = found[0]["n"].as_u64().unwrap();

    // to its original receiver (the server), which echoes it to the client
    let r = raw_post(
        &p,
        &format!("/api/connections/{id}/frames/{n}/replay"),
        b"",
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["to"], "server");
    assert_eq!(next_msg(&mut ws).await, Message::text("replay me"));
    // or to the other side
    let r = p
        .post_json(
            &format!("/api/connections/{id}/frames/{n}/replay"),
            &json!({"to": "client"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(next_msg(&mut ws).await, Message::text("replay me"));

    // a message longer than --max-preview is not fully known
    let cut = p
        .get(&format!("/api/connections/{id}/frames?from=client&q=xxxx"))
        .await
        .json();
    assert_eq!(cut[0]["truncated"], true);
    let cn = cut[0]["n"].as_u64().unwrap();
    let r = p
        .post_json(
            &format!("/api/connections/{id}/frames/{cn}/replay"),
            &json!({}),
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(r.error().contains("--max-preview"), "{}", r.error());
    // a frame never logged
    let r = p
        .post_json(
            &format!("/api/connections/{id}/frames/9999/replay"),
            &json!({}),
        )
        .await;
    assert_eq!(r.status, 404, "{}", r.text());
    p.stop().await;
}

async fn raw_post(p: &UiProxy, path: &str, body: &[u8], ct: &str) -> common::ui::HttpResp {
    http(p.ui, "POST", path, &[], Some((ct, body))).await
}

#[tokio::test]
async fn close_sends_the_code_to_both_sides() {
    let (up, mut seen_by_server) = recording_echo().await;
    let p = UiProxy::start(&format!("ws://{up}")).await;
    let (mut ws, id) = echo_conn(&p, "/bye").await;
    let r = p
        .post_json(
            &format!("/api/connections/{id}/close"),
            &json!({"code": 4001, "reason": "enough"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"closed": true, "code": 4001}));
    match next_msg(&mut ws).await {
        Message::Close(Some(f)) => {
            assert_eq!(f.code, CloseCode::from(4001));
            assert_eq!(f.reason.as_str(), "enough");
        }
        other => panic!("client got {other:?}"),
    }
    let at_server = within("the server's close", seen_by_server.recv())
        .await
        .unwrap();
    match at_server {
        Message::Close(Some(f)) => {
            assert_eq!(f.code, CloseCode::from(4001));
            assert_eq!(f.reason.as_str(), "enough");
        }
        other => panic!("server got {other:?}"),
    }
    let list = p
        .wait_conns("the closed connection", |l| {
            l.iter().any(|c| c["id"] == id && c["open"] == false)
        })
        .await;
    let c = list.iter().find(|c| c["id"] == id).unwrap();
    assert_eq!(c["close"]["reason"], "closed-from-live-view");
    let closes = p
        .get(&format!("/api/connections/{id}/frames?opcode=close"))
        .await
        .json();
    let codes: Vec<(&str, u64, bool)> = closes
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["from"].as_str().unwrap(),
                f["close_code"].as_u64().unwrap(),
                f["injected"] == true,
            )
        })
        .collect();
    // Toward the server, wstap's close. Toward the client, wstap's close,
    // unless the echo server's answer (the same code and reason) got there
    // first: then that one crossed, logged as the server's, and wstap sent
    // no second close (a loaded machine can order it either way).
    assert!(codes.contains(&("client", 4001, true)), "{closes}");
    let to_client: Vec<_> = codes.iter().filter(|c| c.0 == "server").collect();
    assert!(
        to_client == [&("server", 4001, true)] || to_client == [&("server", 4001, false)],
        "{closes}"
    );
    p.stop().await;
}

#[tokio::test]
async fn bad_input_gets_clear_4xx() {
    let echo = echo_server(EchoOptions::default()).await;
    let p = UiProxy::start(&format!("ws://{echo}")).await;
    let (mut ws, id) = echo_conn(&p, "/bad").await;
    let inject = format!("/api/connections/{id}/inject");
    let ok_body = br#"{"to":"server","opcode":"text","data":"x"}"#;

    // unknown connection
    for (m, path) in [
        ("POST", "/api/connections/999/inject"),
        ("POST", "/api/connections/999/close"),
        ("GET", "/api/connections/999/frames"),
        ("GET", "/api/connections/999"),
        ("GET", "/api/connections/abc"),
        ("POST", "/api/connections/999/frames/0/replay"),
    ] {
        let r = http(p.ui, m, path, &[], Some(("application/json", ok_body))).await;
        assert_eq!(r.status, 404, "{m} {path}: {}", r.text());
        assert!(!r.error().is_empty());
    }
    // wrong content type, or none
    for ct in ["text/plain", "application/x-www-form-urlencoded", ""] {
        let r = raw_post(&p, &inject, ok_body, ct).await;
        assert_eq!(r.status, 415, "{ct:?}: {}", r.text());
        assert!(r.error().contains("application/json"));
    }
    // charset parameters are fine
    let r = raw_post(&p, &inject, ok_body, "application/json; charset=utf-8").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(next_msg(&mut ws).await, Message::text("x"));
    // malformed JSON and fields
    for body in [
        &br#"{"to":"server","opcode":"text","data":"x""#[..],
        br#"not json"#,
        br#"{"to":"middle","opcode":"text","data":"x"}"#,
        br#"{"to":"server","opcode":"close","data":"x"}"#,
        br#"{"to":"server","data":"x"}"#,
        br#"{"to":"server","opcode":"text","data":"x","extra":1}"#,
        br#"{"to":"server","opcode":"binary","data":"not base64!"}"#,
        br#"[]"#,
    ] {
        let r = raw_post(&p, &inject, body, "application/json").await;
        assert_eq!(
            r.status,
            400,
            "{}: {}",
            String::from_utf8_lossy(body),
            r.text()
        );
        assert!(!r.error().is_empty());
    }
    // oversized: a message over 1 MiB, a body over 2 MiB, a ping over 125 bytes
    let big = json!({"to": "server", "opcode": "text", "data": "y".repeat((1 << 20) + 1)});
    let r = p.post_json(&inject, &big).await;
    assert_eq!(r.status, 413, "{}", r.error());
    let huge = json!({"to": "server", "opcode": "text", "data": "y".repeat(3 << 20)});
    let r = p.post_json(&inject, &huge).await;
    assert_eq!(r.status, 413, "{}", r.error());
    let r = p
        .post_json(
            &inject,
            &json!({"to": "client", "opcode": "ping", "data": "p".repeat(126)}),
        )
        .await;
    assert_eq!(r.status, 413, "{}", r.error());
    assert!(r.error().contains("125"));
    // close codes that may not go on the wire, and a reason too long
    let close = format!("/api/connections/{id}/close");
    for code in [1005, 1006, 1015, 1004, 999, 2000, 5000, 70000, -1] {
        let r = p.post_json(&close, &json!({"code": code})).await;
        assert_eq!(r.status, 400, "{code}: {}", r.text());
    }
    let r = p
        .post_json(&close, &json!({"code": 1000, "reason": "r".repeat(124)}))
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    // queries the API does not understand
    for q in [
        "from=nowhere",
        "opcode=texty",
        "limit=-1",
        "offset=x",
        "sort=asc",
    ] {
        let r = p.get(&format!("/api/connections/{id}/frames?{q}")).await;
        assert_eq!(r.status, 400, "{q}: {}", r.text());
    }
    // wrong method, unknown route
    let r = p.get(&inject).await;
    assert_eq!(r.status, 405, "{}", r.text());
    let r = p.get("/api/nothing").await;
    assert_eq!(r.status, 404, "{}", r.text());

    // the connection is still fine after all that
    send_text(&mut ws, "alive").await;
    assert_eq!(next_msg(&mut ws).await, Message::text("alive"));

    // closed connection
    within("close", ws.close(None)).await.unwrap();
    p.wait_conns("the end", |l| {
        l.iter().any(|c| c["id"] == id && c["open"] == false)
    })
    .await;
    let r = raw_post(&p, &inject, ok_body, "application/json").await;
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.error().contains("closed"), "{}", r.error());
    let r = p.post_json(&close, &json!({"code": 1000})).await;
    assert_eq!(r.status, 409, "{}", r.text());
    let r = p
        .post_json(
            &format!("/api/connections/{id}/frames/0/replay"),
            &json!({}),
        )
        .await;
    assert_eq!(r.status, 409, "{}", r.text());
    p.stop().await;
}

/// A client that declares a body and never sends it all gets 408 once the
/// body wait is over, and its connection ends: such clients cannot hold
/// the live view's client slots (64) and lock everyone else out.
#[tokio::test]
async fn a_stalled_request_body_gets_408_and_frees_its_slot() {
    // the default is the same 10 s as for heads; the test waits less
    assert_eq!(wstap::ui::BODY_TIMEOUT, Duration::from_secs(10));
    let wait = Duration::from_millis(500);
    // the wait, plus room for a loaded test machine
    let bound = wait + Duration::from_secs(5);
    let echo = echo_server(EchoOptions::default()).await;
    let p = UiProxy::start_full(
        &format!("ws://{echo}"),
        |_| {},
        wstap::ui::Limits::default(),
        wait,
    )
    .await;
    let (mut ws, id) = echo_conn(&p, "/stall").await;
    let inject = format!("/api/connections/{id}/inject");
    // 50 bytes declared, 8 sent; no `Connection: close`, so the server
    // must end the connection itself
    let head = format!(
        "POST {inject} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: 50\r\n\r\n",
        p.ui
    );
    let started = tokio::time::Instant::now();
    // as many at once as the view serves (MAX_CLIENTS in src/ui/mod.rs)
    let stalled: Vec<_> = (0..64)
        .map(|_| {
            let (ui, head) = (p.ui, head.clone());
            tokio::spawn(async move {
                tokio::time::timeout(bound, raw(ui, head.as_bytes(), br#"{"to":"#))
                    .await
                    .unwrap_or_else(|_| panic!("no answer to a stalled body within {bound:?}"))
            })
        })
        .collect();
    for t in stalled {
        let r = within("a stalled request", t).await.unwrap();
        assert_eq!(r.status, 408, "{}", r.text());
        assert_eq!(r.json()["status"], 408);
        assert!(r.error().contains("did not arrive within"), "{}", r.error());
    }
    let took = started.elapsed();
    assert!(took >= wait, "answered after {took:?}, before the wait");
    assert!(took < bound, "answered after {took:?}");

    // the slots are free again, and nothing half-sent was injected
    let r = p.get("/api/connections").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = raw_post(
        &p,
        &inject,
        br#"{"to":"server","opcode":"text","data":"after"}"#,
        "application/json",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(next_msg(&mut ws).await, Message::text("after"));
    p.stop().await;
}

#[tokio::test]
async fn host_and_origin_must_be_the_live_view_itself() {
    let echo = echo_server(EchoOptions::default()).await;
    let p = UiProxy::start(&format!("ws://{echo}")).await;
    let (mut ws, id) = echo_conn(&p, "/guard").await;
    let port = p.ui.port();
    let own = p.ui.to_string();
    let localhost = format!("localhost:{port}");
    let other_port = format!("127.0.0.1:{}", port.wrapping_add(1).max(1));
    for host in [
        "rebind.example:".to_string() + &port.to_string(),
        other_port,
        "127.0.0.1".into(),
    ] {
        let r = http(p.ui, "GET", "/api/connections", &[("Host", &host)], None).await;
        assert_eq!(r.status, 403, "Host {host}: {}", r.text());
        assert!(r.error().contains("Host"));
        let r = http(p.ui, "GET", "/", &[("Host", &host)], None).await;
        assert_eq!(r.status, 403, "page with Host {host}");
    }
    for host in [&own, &localhost] {
        let r = http(p.ui, "GET", "/api/connections", &[("Host", host)], None).await;
        assert_eq!(r.status, 200, "Host {host}: {}", r.text());
    }
    // no Host at all (HTTP/1.0)
    let r = raw(p.ui, b"GET /api/connections HTTP/1.0\r\n\r\n", b"").await;
    assert_eq!(r.status, 403, "{}", r.text());

    let own_origin = format!("http://{own}");
    let r = http(
        p.ui,
        "GET",
        "/api/connections",
        &[("Origin", &own_origin)],
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let body = br#"{"to":"server","opcode":"text","data":"csrf"}"#;
    for origin in [
        format!("http://rebind.example:{port}"),
        format!("https://{own}"),
        "null".to_string(),
    ] {
        let r = http(
            p.ui,
            "POST",
            &format!("/api/connections/{id}/inject"),
            &[("Origin", &origin)],
            Some(("application/json", body)),
        )
        .await;
        assert_eq!(r.status, 403, "Origin {origin}: {}", r.text());
        assert!(r.error().contains("Origin"));
    }
    // nothing was injected: the next thing the client reads is its own echo
    send_text(&mut ws, "mine").await;
    assert_eq!(next_msg(&mut ws).await, Message::text("mine"));
    let inj = p
        .get(&format!("/api/connections/{id}/frames?injected=1"))
        .await;
    assert_eq!(inj.header("x-total-count"), Some("0"));
    // the page carries headers that keep other sites from framing it
    let page = p.get("/").await;
    assert_eq!(page.status, 200);
    assert_eq!(page.header("x-frame-options"), Some("DENY"));
    assert!(page
        .header("content-security-policy")
        .unwrap()
        .contains("frame-ancestors 'none'"));
    p.stop().await;
}

#[tokio::test]
async fn events_stream_as_sse_and_end_with_the_proxy() {
    let echo = echo_server(EchoOptions::default()).await;
    let p = UiProxy::start(&format!("ws://{echo}")).await;
    let mut sse = Sse::open(p.ui).await;
    assert!(sse.text.starts_with("HTTP/1.1 200"), "{}", sse.text);
    assert!(sse
        .text
        .to_ascii_lowercase()
        .contains("content-type: text/event-stream"));
    let (mut ws, id) = echo_conn(&p, "/live").await;
    send_text(&mut ws, "over sse").await;
    assert_eq!(next_msg(&mut ws).await, Message::text("over sse"));
    sse.read_until("the handshake and both frames", |t| {
        t.contains(r#""event":"handshake""#) && t.matches(r#""preview":"over sse""#).count() >= 2
    })
    .await;
    let frames: Vec<Value> = sse
        .text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter(|v| v["event"] == "frame")
        .collect();
    assert_eq!(frames[0]["conn"], id);
    assert_eq!(frames[0]["n"], 0);
    assert_eq!(frames[1]["n"], 1);
    assert!(sse.text.contains("\nid: "));
    within("close", ws.close(None)).await.unwrap();
    p.stop().await;
    sse.read_until("the end of the stream", |t| t.contains("event: end"))
        .await;
}

#[tokio::test]
async fn a_stalled_live_view_never_slows_the_relay() {
    let echo = echo_server(EchoOptions::default()).await;
    // whole 4000-byte previews: ~26 MB of events, more than the loopback
    // socket buffers between the view and the stalled reader hold
    let p = UiProxy::start_with(
        &format!("ws://{echo}"),
        |c| c.max_preview = 4096,
        wstap::ui::Limits {
            live_buffer: 64,
            ..Default::default()
        },
    )
    .await;
    // a subscriber that never reads: its socket buffers fill, then it lags
    let mut stalled = Sse::open(p.ui).await;
    let (mut ws, id) = echo_conn(&p, "/busy").await;
    let msg = "z".repeat(4000);
    let started = std::time::Instant::now();
    for _ in 0..3000 {
        send_text(&mut ws, &msg).await;
        assert_eq!(next_msg(&mut ws).await, Message::text(msg.clone()));
    }
    let spent = started.elapsed();
    assert!(spent < Duration::from_secs(15), "relay took {spent:?}");
    // the store kept up although the stream did not
    let c = wait_frames(&p, id, 6000).await;
    assert_eq!(c["frames"], 6000);
    assert_eq!(c["bytes"], 6000 * 4000);
    // the stalled reader, reading at last, is told to resync
    stalled.read_until_marker("event: resync").await;
    within("close", ws.close(None)).await.unwrap();
    p.stop().await;
}

#[tokio::test]
async fn the_binary_serves_the_live_view_on_loopback_only() {
    use common::{run_bin, BinProxy};
    let echo = echo_server(EchoOptions::default()).await;
    let up = format!("ws://{echo}");
    let (code, _, err) = run_bin(
        &[
            "proxy",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &up,
            "--ui",
            "0.0.0.0:0",
        ],
        Some(2),
    );
    assert_eq!(code, 2);
    assert!(err.contains("--ui-allow-remote"), "{err}");

    let bin = BinProxy::reverse(&up, &["--ui", "127.0.0.1:0"]).await;
    let deadline = tokio::time::Instant::now() + common::STEP;
    let ui: std::net::SocketAddr = loop {
        let err = bin.stderr();
        if let Some(a) = err
            .split("live view on http://")
            .nth(1)
            .and_then(|r| r.split('/').next())
        {
            break a.parse().expect("UI address");
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no live view line:\n{err}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let page = http(ui, "GET", "/", &[], None).await;
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    assert!(page.text().contains("wstap live view"));
    let js = http(ui, "GET", "/app.js", &[], None).await;
    assert_eq!(js.status, 200);
    assert!(js.text().contains("/api/events"));
    let (mut ws, _) = ws_client(bin.addr, "/via-binary", &[]).await;
    send_text(&mut ws, "hello").await;
    assert_eq!(next_msg(&mut ws).await, Message::text("hello"));
    let deadline = tokio::time::Instant::now() + common::STEP;
    loop {
        let list = http(ui, "GET", "/api/connections", &[], None).await.json();
        if list
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["target"] == "/via-binary" && c["frames"] == 2)
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{list}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, _) = bin.terminate().await;
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn findings_point_at_the_offending_frame() {
    use common::{read_head, scripted_upstream, send};
    // an upstream that masks its frame (servers must not, RFC 6455 §5.1)
    let up = scripted_upstream(|mut s| async move {
        let head = String::from_utf8_lossy(&read_head(&mut s).await).into_owned();
        let key = head
            .lines()
            .find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.trim()
                    .eq_ignore_ascii_case("sec-websocket-key")
                    .then(|| v.trim().to_string())
            })
            .unwrap_or_default();
        let resp = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
            wstap::proto::handshake::accept_key(&key)
        );
        send(&mut s, resp.as_bytes()).await;
        send(&mut s, &[0x81, 0x02, b'o', b'k']).await;
        let mask = [1u8, 2, 3, 4];
        let mut frame = vec![0x81, 0x80 | 5, 1, 2, 3, 4];
        frame.extend(b"hello".iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        send(&mut s, &frame).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
    })
    .await;
    let p = UiProxy::start(&format!("ws://{up}")).await;
    let (_ws, id) = echo_conn(&p, "/masked").await;
    let c = wait_frames(&p, id, 2).await;
    assert_eq!(c["severity"], "error");
    assert!(c["findings"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["code"] == "protocol-violation"
            && f["hint"].as_str().is_some_and(|h| !h.is_empty())));
    let r = p
        .get(&format!("/api/connections/{id}/frames?findings=1"))
        .await;
    assert_eq!(r.header("x-total-count"), Some("1"), "{}", r.text());
    let flagged = r.json();
    assert_eq!(flagged[0]["n"], 1);
    assert_eq!(flagged[0]["preview"], "hello");
    assert_eq!(flagged[0]["masked"], true);
    assert_eq!(flagged[0]["findings"], json!(["protocol-violation"]));
    let all = p.get(&format!("/api/connections/{id}/frames")).await.json();
    assert!(all[0].get("findings").is_none(), "{all}");
    p.stop().await;
}
