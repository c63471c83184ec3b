//! Malformed HTTP from a client: garbage, an oversized request line,
//! headers past the count and size limits, a line without a colon, bare LF,
//! NUL bytes, a TLS ClientHello on the plain port and a slowloris client.
//! Each gets a clear 400/408/431, an `error` event naming what was wrong and
//! a `close` event, while a healthy WebSocket on the same proxy keeps
//! echoing.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use wstap::demo::echo::EchoOptions;
use wstap::proto::event::{Event, EventKind};

/// One hostile client: what it sends, the status it must get, and words
/// its `error` event must contain.
struct Case {
    name: &'static str,
    bytes: Vec<u8>,
    status: u16,
    names: &'static str,
}

fn cases() -> Vec<Case> {
    let mut long_line = b"GET /".to_vec();
    long_line.extend(std::iter::repeat_n(b'a', 100 * 1024));
    long_line.extend_from_slice(b" HTTP/1.1\r\nHost: a\r\n\r\n");

    let mut many = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
    for i in 0..300 {
        many.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");

    let mut huge = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
    for _ in 0..70 {
        huge.extend_from_slice(b"X-Big: ");
        huge.extend(std::iter::repeat_n(b'v', 1000));
        huge.extend_from_slice(b"\r\n");
    }
    huge.extend_from_slice(b"\r\n");

    vec![
        Case {
            name: "garbage",
            bytes: b"\x01\x02 hello there\r\n\r\n".to_vec(),
            status: 400,
            names: "invalid method",
        },
        Case {
            name: "100 KiB request line",
            bytes: long_line,
            status: 431,
            names: "request line longer than",
        },
        Case {
            name: "too many headers",
            bytes: many,
            status: 431,
            names: "more than 128 header lines",
        },
        Case {
            name: "headers too large",
            bytes: huge,
            status: 431,
            names: "head larger than",
        },
        Case {
            name: "header without colon",
            bytes: b"GET / HTTP/1.1\r\nHost: a\r\nNoColonHere\r\n\r\n".to_vec(),
            status: 400,
            names: "without a colon",
        },
        Case {
            name: "bare LF",
            bytes: b"GET / HTTP/1.1\nHost: a\n\n".to_vec(),
            status: 400,
            names: "bare LF",
        },
        Case {
            name: "NUL byte",
            bytes: b"GET / HTTP/1.1\r\nHost: a\r\nX-Y: a\0b\r\n\r\n".to_vec(),
            status: 400,
            names: "NUL byte",
        },
        Case {
            name: "TLS on the plain port",
            bytes: b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03".to_vec(),
            status: 400,
            names: "TLS handshake",
        },
    ]
}

/// Sends `bytes` (ignoring a write refused once wstap has answered) and
/// returns everything wstap sent back before closing.
async fn hostile(addr: std::net::SocketAddr, bytes: Vec<u8>) -> Vec<u8> {
    let mut s = within("connect", TcpStream::connect(addr)).await.unwrap();
    let (mut rd, mut wr) = s.split();
    let write = async {
        let _ = wr.write_all(&bytes).await;
    };
    let mut got = Vec::new();
    let read = async {
        let _ = rd.read_to_end(&mut got).await;
    };
    within("the answer to a hostile request", async {
        tokio::join!(write, read)
    })
    .await;
    got
}

/// A client that sends one byte of a valid-looking head per interval and
/// never finishes; returns what it got back.
async fn slowloris(addr: std::net::SocketAddr) -> Vec<u8> {
    let mut s = within("connect", TcpStream::connect(addr)).await.unwrap();
    let head = b"GET /slow HTTP/1.1\r\nHost: a\r\nX-Slow: ";
    let mut got = Vec::new();
    within("the slowloris answer", async {
        for b in head.iter().chain(std::iter::repeat(&b'z')) {
            if s.write_all(&[*b]).await.is_err() {
                break;
            }
            // wstap answers while the client is still dribbling
            let mut buf = [0u8; 4096];
            match tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => {
                    got.extend_from_slice(&buf[..n]);
                    break;
                }
                Err(_) => {}
            }
        }
        let _ = s.read_to_end(&mut got).await;
    })
    .await;
    got
}

fn status_of(resp: &[u8]) -> Option<u16> {
    let text = String::from_utf8_lossy(resp);
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

fn error_messages(evs: &[Event]) -> Vec<String> {
    evs.iter()
        .filter_map(|e| match &e.kind {
            EventKind::Error(x) => Some(x.message.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_clear_answers_and_a_websocket_keeps_echoing() {
    let echo = echo_server(EchoOptions::default()).await;
    let proxy = TestProxy::start_with(&format!("ws://{echo}"), |c| {
        c.header_timeout = Duration::from_secs(1);
    })
    .await;

    // the healthy neighbour: echoes verified the whole time the hostile
    // clients run, and after
    let (mut ws, _) = ws_client(proxy.addr, "/echo", &[]).await;
    let done = Arc::new(AtomicBool::new(false));
    let flag = done.clone();
    let healthy = tokio::spawn(async move {
        let mut n = 0u32;
        loop {
            let stop = flag.load(Ordering::Relaxed);
            let msg = format!("still here {n}");
            within("healthy send", ws.send(Message::text(msg.clone())))
                .await
                .unwrap();
            let back = within("healthy echo", ws.next()).await.unwrap().unwrap();
            assert_eq!(back, Message::text(msg), "echo {n} differs");
            n += 1;
            if stop {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        within("close", ws.close(None)).await.unwrap();
        n
    });

    let cases = cases();
    let runs = cases.iter().map(|c| hostile(proxy.addr, c.bytes.clone()));
    let (answers, slow) = tokio::join!(futures_util::future::join_all(runs), slowloris(proxy.addr));
    done.store(true, Ordering::Relaxed);
    let echoed = within("the healthy client", healthy).await.unwrap();
    assert!(echoed > 0);

    for (case, resp) in cases.iter().zip(&answers) {
        assert_eq!(
            status_of(resp),
            Some(case.status),
            "{}: got {:?}",
            case.name,
            String::from_utf8_lossy(resp)
        );
        let body = String::from_utf8_lossy(resp);
        assert!(
            body.contains(case.names),
            "{}: the answer's body names the problem: {body}",
            case.name
        );
    }
    assert_eq!(
        status_of(&slow),
        Some(408),
        "slowloris: {:?}",
        String::from_utf8_lossy(&slow)
    );

    // one error and one close per hostile connection, plus the websocket's close
    let n = cases.len() + 1;
    let evs = proxy.wait_closes(n + 1).await;
    let errors = error_messages(&evs);
    assert_eq!(errors.len(), n, "{errors:#?}");
    for case in &cases {
        assert_eq!(
            errors.iter().filter(|m| m.contains(case.names)).count(),
            1,
            "{}: {errors:#?}",
            case.name
        );
    }
    assert!(
        errors
            .iter()
            .any(|m| m.contains("no complete message head after 1s")),
        "{errors:#?}"
    );
    let cl = closes(&evs);
    assert_eq!(cl.iter().filter(|c| c.reason == "bad-request").count(), n);
    let ws_close: Vec<_> = cl.iter().filter(|c| c.websocket).collect();
    assert_eq!(ws_close.len(), 1);
    assert_eq!(ws_close[0].reason, "close-handshake");
    assert_eq!(ws_close[0].frames_from_client as u32, echoed + 1);
}

#[tokio::test]
async fn an_idle_connection_that_never_sends_gets_408() {
    let echo = echo_server(EchoOptions::default()).await;
    let proxy = TestProxy::start_with(&format!("ws://{echo}"), |c| {
        c.header_timeout = Duration::from_millis(300);
    })
    .await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let resp = read_all(&mut s).await;
    assert_eq!(status_of(&resp), Some(408));
    drop(s);
    let evs = proxy.wait_closes(1).await;
    assert_eq!(error_messages(&evs).len(), 1, "{}", dump(&evs));
    assert_eq!(closes(&evs)[0].reason, "bad-request");
}

/// A client that sends a head announcing a body, a byte of it, and then
/// nothing: cut like a slowloris head (it used to hold its socket and the
/// upstream connection until shutdown).
#[tokio::test]
async fn a_stalled_request_body_gets_408() {
    // an upstream that reads the whole body before it answers (one that
    // answers first has its answer relayed as it comes)
    let up = scripted_upstream(|mut s| async move {
        read_head(&mut s).await;
        read_n(&mut s, 100).await;
    })
    .await;
    let proxy = TestProxy::start_with(&format!("http://{up}"), |c| {
        c.header_timeout = Duration::from_millis(300);
    })
    .await;
    let mut s = within("connect", TcpStream::connect(proxy.addr))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    within(
        "the head and a byte",
        s.write_all(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nx"),
    )
    .await
    .unwrap();
    let resp = read_all(&mut s).await;
    let text = String::from_utf8_lossy(&resp);
    assert_eq!(status_of(&resp), Some(408), "{text}");
    assert!(
        text.contains("no more of the body for 300ms (1 bytes had come)"),
        "{text}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    let evs = proxy.wait_closes(1).await;
    assert_eq!(closes(&evs)[0].reason, "bad-request", "{}", dump(&evs));
}

/// A body wstap never reads (it answers first), sent in pieces that take
/// longer than wstap needs to answer.
const PIECES: usize = 3;
const PIECE: usize = 64 * 1024;

#[tokio::test]
async fn a_client_still_sending_a_body_reads_the_502_for_a_dead_upstream() {
    let (_held, port) = closed_port();
    let proxy = TestProxy::start(&format!("http://127.0.0.1:{port}")).await;
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n",
        PIECES * PIECE
    );
    let resp = upload_in_pieces(proxy.addr, head.as_bytes(), PIECES, PIECE)
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&resp);
    assert_eq!(status_of(&resp), Some(502), "{text}");
    assert!(text.ends_with('\n'), "the whole answer arrived: {text}");
    let evs = proxy.wait_closes(1).await;
    assert_eq!(closes(&evs)[0].reason, "upstream-failed", "{}", dump(&evs));
}

#[tokio::test]
async fn a_client_still_sending_a_body_reads_the_400_for_an_unframeable_request() {
    let echo = echo_server(EchoOptions::default()).await;
    let proxy = TestProxy::start(&format!("http://{echo}")).await;
    // a Transfer-Encoding that does not end in chunked: the length is unknowable
    let head = b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n";
    let resp = upload_in_pieces(proxy.addr, head, PIECES, PIECE)
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&resp);
    assert_eq!(status_of(&resp), Some(400), "{text}");
    assert!(text.contains("does not end in chunked"), "{text}");
    let evs = proxy.wait_closes(1).await;
    assert_eq!(error_messages(&evs).len(), 1, "{}", dump(&evs));
    assert_eq!(closes(&evs)[0].reason, "bad-request");
}

#[tokio::test]
async fn a_broken_chunk_size_in_a_request_body_gets_a_400() {
    // the client is there to be told, and the fault is its own framing
    let up = scripted_upstream(|mut s| async move {
        read_head(&mut s).await;
        tokio::time::sleep(Duration::from_secs(30)).await;
    })
    .await;
    let proxy = TestProxy::start(&format!("http://{up}")).await;
    let mut c = TcpStream::connect(proxy.addr).await.unwrap();
    send(
        &mut c,
        b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    let resp = read_all(&mut c).await;
    let text = String::from_utf8_lossy(&resp);
    assert_eq!(status_of(&resp), Some(400), "{text}");
    let evs = proxy.wait_closes(1).await;
    assert_eq!(closes(&evs)[0].reason, "bad-request", "{}", dump(&evs));
}

#[tokio::test]
async fn a_refused_request_lingers_once() {
    // the answer's own lingering close is the connection's last: the end
    // does not drain the client for another LINGER_TIME
    let up = scripted_upstream(|mut s| async move {
        read_all(&mut s).await;
    })
    .await;
    let proxy = TestProxy::start(&format!("http://{up}")).await;
    let mut c = TcpStream::connect(proxy.addr).await.unwrap();
    send(&mut c, b"GET / HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n").await;
    let got = read_all(&mut c).await;
    assert_eq!(status_of(&got), Some(400));
    // the client holds its side open: each linger waits its full 2 s
    let since = std::time::Instant::now();
    proxy.wait_closes(1).await;
    let waited = since.elapsed();
    drop(c);
    assert!(
        waited < Duration::from_millis(3000),
        "close after {waited:?}"
    );
}
