//! Ordinary HTTP through the proxy: any method, streamed bodies with
//! Content-Length and chunked framing, keep-alive reuse, large downloads,
//! each logged as an `http` event.

mod common;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed()
}

fn byte_at(i: u64) -> u8 {
    (i % 251) as u8
}

async fn handle(req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let method = req.method().to_string();
    Ok(match path.as_str() {
        "/hello" => Response::new(full("hello world")),
        "/echo" => {
            // collect, then answer with the length and the bytes
            let body = req
                .into_body()
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            let mut r = Response::new(full(body));
            r.headers_mut().insert("x-method", method.parse().unwrap());
            r
        }
        "/big" => {
            let total: u64 = 64 << 20;
            let chunk = 64 * 1024u64;
            let stream = futures_util::stream::iter((0..total / chunk).map(move |c| {
                let data: Vec<u8> = (c * chunk..(c + 1) * chunk).map(byte_at).collect();
                Ok::<_, Infallible>(Frame::data(Bytes::from(data)))
            }));
            Response::new(StreamBody::new(stream).boxed())
        }
        _ => {
            let mut r = Response::new(full("not found"));
            *r.status_mut() = hyper::StatusCode::NOT_FOUND;
            r
        }
    })
}

/// A hyper HTTP/1.1 server; returns its address and a count of accepted connections.
async fn http_server() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), hyper::service::service_fn(handle))
                    .await;
            });
        }
    });
    (addr, accepted)
}

/// Reads one response with a Content-Length body; returns (head, body).
async fn read_response(c: &mut TcpStream) -> (String, Vec<u8>) {
    let head = String::from_utf8(read_head(c).await).unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or_else(|| panic!("no content-length in {head}"));
    (head, read_n(c, len).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_post_and_keep_alive_reuse_one_upstream_connection() {
    let (up, accepted) = http_server().await;
    let proxy = TestProxy::start(&format!("http://{up}")).await;
    let mut c = TcpStream::connect(proxy.addr).await.unwrap();

    send(&mut c, b"GET /hello HTTP/1.1\r\nHost: a\r\n\r\n").await;
    let (head, body) = read_response(&mut c).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, b"hello world");

    // 10 MiB with Content-Length, on the same connection
    let big: Vec<u8> = (0..10u64 << 20).map(byte_at).collect();
    let mut req = format!(
        "POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n",
        big.len()
    )
    .into_bytes();
    req.extend_from_slice(&big);
    send(&mut c, &req).await;
    let (head, body) = read_response(&mut c).await;
    assert!(head.contains("x-method: POST"), "{head}");
    assert!(body == big, "10 MiB body came back different");

    // chunked request body, still the same connection
    let mut req = b"PUT /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for part in [&b"first;"[..], b"second part;", b"third"] {
        req.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        req.extend_from_slice(part);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    send(&mut c, &req).await;
    let (head, body) = read_response(&mut c).await;
    assert!(head.contains("x-method: PUT"), "{head}");
    assert_eq!(body, b"first;second part;third");

    send(&mut c, b"DELETE /missing HTTP/1.1\r\nHost: a\r\n\r\n").await;
    let (head, _) = read_response(&mut c).await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    drop(c);

    let evs = proxy.wait_closes(1).await;
    let h = https(&evs);
    let seen: Vec<_> = h
        .iter()
        .map(|h| (h.method.as_str(), h.target.as_str(), h.status))
        .collect();
    assert_eq!(
        seen,
        [
            ("GET", "/hello", 200),
            ("POST", "/echo", 200),
            ("PUT", "/echo", 200),
            ("DELETE", "/missing", 404)
        ]
    );
    assert_eq!(h[1].response_bytes, 10 << 20);
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "keep-alive must reuse one upstream connection"
    );
    let close = &closes(&evs)[0];
    assert!(!close.websocket);
    assert!(close.bytes_from_client > 10 << 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_chunked_download_streams_through() {
    let (up, _) = http_server().await;
    let proxy = TestProxy::start(&format!("http://{up}")).await;
    let mut c = TcpStream::connect(proxy.addr).await.unwrap();
    send(
        &mut c,
        b"GET /big HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    let head = String::from_utf8(read_head(&mut c).await).unwrap();
    assert!(
        head.to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{head}"
    );
    // decode the chunked body and check every byte
    let mut raw = Vec::new();
    within("the download", c.read_to_end(&mut raw))
        .await
        .unwrap();
    let mut pos = 0;
    let mut got = 0u64;
    loop {
        let line_end = pos + raw[pos..].windows(2).position(|w| w == b"\r\n").unwrap();
        let size =
            usize::from_str_radix(std::str::from_utf8(&raw[pos..line_end]).unwrap(), 16).unwrap();
        pos = line_end + 2;
        if size == 0 {
            break;
        }
        for (i, b) in raw[pos..pos + size].iter().enumerate() {
            assert_eq!(*b, byte_at(got + i as u64), "byte {}", got + i as u64);
        }
        got += size as u64;
        pos += size + 2;
    }
    assert_eq!(got, 64 << 20);
    let evs = proxy.wait_closes(1).await;
    let h = &https(&evs)[0];
    assert_eq!((h.status, h.target.as_str()), (200, "/big"));
    assert!(h.response_bytes > 64 << 20);
}

#[tokio::test]
async fn a_dead_upstream_gets_a_502_naming_the_cause() {
    let (_held, port) = closed_port();
    let proxy = TestProxy::start(&format!("http://127.0.0.1:{port}")).await;
    let mut c = TcpStream::connect(proxy.addr).await.unwrap();
    send(&mut c, b"GET /page HTTP/1.1\r\nHost: a\r\n\r\n").await;
    let resp = String::from_utf8(read_all(&mut c).await).unwrap();
    assert!(resp.starts_with("HTTP/1.1 502 Bad Gateway"), "{resp}");
    assert!(resp.contains("refused"), "{resp}");
    let evs = proxy.wait_closes(1).await;
    assert_eq!(https(&evs)[0].status, 502);
    assert_eq!(finding_codes(&evs), ["upstream-refused"]);
}

#[tokio::test]
async fn an_upstream_that_stops_taking_the_body_ends_the_connection_after_its_answer() {
    // the upstream reads the head and 1 KiB of the body, answers 413 and
    // closes: wstap's next writes of the body fail
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let up = scripted_upstream(move |mut s| {
        count.fetch_add(1, Ordering::SeqCst);
        async move {
            read_head(&mut s).await;
            read_n(&mut s, 1024).await;
            send(
                &mut s,
                b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 5\r\n\r\nlarge",
            )
            .await;
        }
    })
    .await;
    let proxy = TestProxy::start_with(&format!("http://{up}"), |c| {
        c.header_timeout = std::time::Duration::from_secs(1);
    })
    .await;
    let rest = 256 * 1024;
    let mut c = TcpStream::connect(proxy.addr).await.unwrap();
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n",
        1024 + rest
    );
    send(&mut c, head.as_bytes()).await;
    send(&mut c, &[b'a'; 1024]).await;
    // the upstream has answered and gone when the rest of the body comes
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let _ = c.write_all(&vec![b'b'; rest]).await;
    // the answer, then the end: the rest of the body must not be read as
    // a next request, nor go to a reused upstream connection
    let resp = read_all(&mut c).await;
    assert_eq!(
        String::from_utf8_lossy(&resp),
        "HTTP/1.1 413 Payload Too Large\r\nContent-Length: 5\r\n\r\nlarge"
    );
    drop(c);
    let evs = proxy.wait_closes(1).await;
    let errors: Vec<_> = evs
        .iter()
        .filter_map(|e| match &e.kind {
            wstap::proto::event::EventKind::Error(x) => Some(x.message.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(errors.len(), 1, "{}", dump(&evs));
    assert!(errors[0].contains("request body"), "{errors:?}");
    let h = https(&evs);
    assert_eq!((h.len(), h[0].status), (1, 413), "{}", dump(&evs));
    assert_eq!(closes(&evs)[0].reason, "server-closed");
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

/// What the upstream's first connection does with its second request.
#[derive(Clone, Copy)]
enum OnReuse {
    /// closes without a byte of response (a keep-alive timeout racing the request)
    Close,
    /// says nothing, holding the connection open
    Silence,
}

/// An upstream whose first connection answers one request, then treats the
/// next as `on_reuse` says; later connections answer `retried` and close.
/// Returns its address and a count of accepted connections.
async fn upstream_failing_on_reuse(on_reuse: OnReuse) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let addr = scripted_upstream(move |mut s| {
        let first = count.fetch_add(1, Ordering::SeqCst) == 0;
        async move {
            read_head(&mut s).await;
            if !first {
                send(
                    &mut s,
                    b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nConnection: close\r\n\r\nretried",
                )
                .await;
                return;
            }
            send(&mut s, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
            read_head(&mut s).await;
            if let OnReuse::Silence = on_reuse {
                tokio::time::sleep(std::time::Duration::from_secs(30)).await;
            }
        }
    })
    .await;
    (addr, accepted)
}

/// Sends a first request, then `second` on the same (now reused) upstream
/// connection; returns everything the client got for the second.
async fn second_request(proxy: std::net::SocketAddr, second: &[u8]) -> String {
    let mut c = TcpStream::connect(proxy).await.unwrap();
    send(&mut c, b"GET /first HTTP/1.1\r\nHost: a\r\n\r\n").await;
    let (_, body) = read_response(&mut c).await;
    assert_eq!(body, b"ok");
    send(&mut c, second).await;
    let (head, body) = read_response(&mut c).await;
    format!("{head}{}", String::from_utf8_lossy(&body))
}

#[tokio::test]
async fn a_get_on_a_dropped_keep_alive_connection_is_sent_again() {
    let (up, accepted) = upstream_failing_on_reuse(OnReuse::Close).await;
    let proxy = TestProxy::start(&format!("http://{up}")).await;
    let resp = second_request(proxy.addr, b"GET /second HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert!(
        resp.starts_with("HTTP/1.1 200") && resp.ends_with("retried"),
        "{resp}"
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_post_on_a_dropped_keep_alive_connection_is_not_sent_again() {
    // not idempotent: the upstream may have acted on it before it closed
    let (up, accepted) = upstream_failing_on_reuse(OnReuse::Close).await;
    let proxy = TestProxy::start(&format!("http://{up}")).await;
    let resp = second_request(
        proxy.addr,
        b"POST /second HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 502"), "{resp}");
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    let evs = proxy.wait_closes(1).await;
    assert_eq!(finding_codes(&evs), ["upstream-closed"], "{}", dump(&evs));
}

#[tokio::test]
async fn a_reused_connection_that_times_out_is_not_tried_again() {
    // silence is not a stale connection: the upstream may be working on it
    let (up, accepted) = upstream_failing_on_reuse(OnReuse::Silence).await;
    let proxy = TestProxy::start_with(&format!("http://{up}"), |c| {
        c.handshake_timeout = std::time::Duration::from_millis(300);
    })
    .await;
    let resp = second_request(
        proxy.addr,
        b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 504"), "{resp}");
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

/// An upstream that answers each request with `ok` and, when a keep-alive
/// connection stays idle for 100 ms (Node's keep-alive timeout, shortened),
/// writes `on_idle` and closes it.
async fn upstream_with_idle_close(on_idle: &'static [u8]) -> std::net::SocketAddr {
    scripted_upstream(move |mut s| async move {
        loop {
            let head = read_head(&mut s).await;
            if head.is_empty() {
                return;
            }
            let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
            if let Some(n) = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
            {
                read_n(&mut s, n).await;
            }
            send(&mut s, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
            let mut b = [0u8; 1];
            let idle = std::time::Duration::from_millis(100);
            if tokio::time::timeout(idle, s.peek(&mut b)).await.is_err() {
                let _ = s.write_all(on_idle).await;
                return;
            }
        }
    })
    .await
}

/// Sends a first request, waits past the upstream's keep-alive timeout,
/// then sends `second`; returns the second answer.
async fn after_the_upstream_idled(proxy: std::net::SocketAddr, second: &[u8]) -> String {
    let mut c = TcpStream::connect(proxy).await.unwrap();
    send(&mut c, b"GET /first HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert_eq!(read_response(&mut c).await.1, b"ok");
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    send(&mut c, second).await;
    let (head, body) = read_response(&mut c).await;
    format!("{head}{}", String::from_utf8_lossy(&body))
}

#[tokio::test]
async fn a_post_after_the_upstream_closed_the_idle_connection_goes_on_a_new_one() {
    // its FIN came long before the request: not a race, and no 502
    let up = upstream_with_idle_close(b"").await;
    let proxy = TestProxy::start(&format!("http://{up}")).await;
    let second = b"POST /second HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello";
    let resp = after_the_upstream_idled(proxy.addr, second).await;
    assert!(
        resp.starts_with("HTTP/1.1 200") && resp.ends_with("ok"),
        "{resp}"
    );
}

#[tokio::test]
async fn what_an_upstream_says_unasked_on_an_idle_connection_is_no_ones_answer() {
    // a 408 before closing an idle connection answers no request
    let up = upstream_with_idle_close(
        b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    let proxy = TestProxy::start(&format!("http://{up}")).await;
    let resp =
        after_the_upstream_idled(proxy.addr, b"GET /second HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert!(
        resp.starts_with("HTTP/1.1 200") && resp.ends_with("ok"),
        "{resp}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_after_an_answer_does_not_cut_it_when_a_pipelined_request_is_unread() {
    // closing a socket with unread input resets the connection, which
    // drops the end of the answer still queued for a slow reader
    const N: usize = 8 << 20;
    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {N}\r\nConnection: close\r\n\r\n");
    let answer = head.clone();
    let up = scripted_upstream(move |mut s| {
        let head = answer.clone();
        async move {
            read_head(&mut s).await;
            send(&mut s, head.as_bytes()).await;
            send(&mut s, &vec![b'x'; N]).await;
        }
    })
    .await;
    let proxy = TestProxy::start(&format!("http://{up}")).await;
    let mut c = TcpStream::connect(proxy.addr).await.unwrap();
    send(&mut c, b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n").await;
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    send(&mut c, b"GET /b HTTP/1.1\r\nHost: a\r\n\r\n").await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let mut got = 0;
    let mut buf = vec![0u8; 16 * 1024];
    let err = loop {
        match within("the answer", c.read(&mut buf)).await {
            Ok(0) => break None,
            Ok(n) => got += n,
            Err(e) => break Some(e),
        }
        // a slow reader: the answer's end is still queued when wstap closes
        tokio::time::sleep(std::time::Duration::from_micros(500)).await;
    };
    let total = head.len() + N;
    assert!(
        err.is_none() && got == total,
        "got {got} of {total} bytes, then {err:?}"
    );
}

/// An upstream that reads a request head, then waits for the client's end
/// of stream before it answers `heard the end` and closes.
async fn upstream_answering_at_eof() -> std::net::SocketAddr {
    scripted_upstream(|mut s| async move {
        read_head(&mut s).await;
        read_all(&mut s).await;
        send(
            &mut s,
            b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\nConnection: close\r\n\r\nheard the end",
        )
        .await;
    })
    .await
}

#[tokio::test]
async fn a_client_half_close_while_it_awaits_the_answer_reaches_the_upstream() {
    // `nc -N`: the request, then the end of the client's side; the upstream
    // sees that end as it would without wstap, and answers
    let up = upstream_answering_at_eof().await;
    let proxy = TestProxy::start(&format!("http://{up}")).await;
    let mut c = TcpStream::connect(proxy.addr).await.unwrap();
    send(&mut c, b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n").await;
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    within("shutdown", c.shutdown()).await.unwrap();
    let resp = String::from_utf8(read_all(&mut c).await).unwrap();
    assert!(resp.ends_with("\r\n\r\nheard the end"), "{resp}");
}

#[tokio::test]
async fn a_client_that_leaves_while_the_upstream_thinks_is_let_go() {
    // the upstream learns of it (the end of stream) and closes without an
    // answer; the connection ends as the client's doing, no 502, no finding
    let up = scripted_upstream(|mut s| async move {
        read_head(&mut s).await;
        read_all(&mut s).await;
    })
    .await;
    let proxy = TestProxy::start(&format!("http://{up}")).await;
    let mut c = TcpStream::connect(proxy.addr).await.unwrap();
    send(&mut c, b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n").await;
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    drop(c);
    let evs = proxy.wait_closes(1).await;
    let close = &closes(&evs)[0];
    assert_eq!(close.reason, "client-closed", "{}", dump(&evs));
    assert!(close.detail.contains("before the answer"), "{}", dump(&evs));
    assert!(finding_codes(&evs).is_empty(), "{}", dump(&evs));
}

#[tokio::test]
async fn a_request_pipelined_while_the_answer_is_awaited_keeps_its_turn() {
    // watching for the client's end must not lose what it sends meanwhile
    let up = upstream_with_idle_close(b"").await;
    let proxy = TestProxy::start(&format!("http://{up}")).await;
    let mut c = TcpStream::connect(proxy.addr).await.unwrap();
    send(
        &mut c,
        b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .await;
    assert_eq!(read_response(&mut c).await.1, b"ok");
    assert_eq!(read_response(&mut c).await.1, b"ok");
}

#[tokio::test]
async fn an_http10_client_gets_no_interim_answer() {
    // RFC 9110 §15.2: it would take `100 Continue` for the answer
    let up = scripted_upstream(|mut s| async move {
        read_head(&mut s).await;
        send(&mut s, b"HTTP/1.1 100 Continue\r\n\r\n").await;
        read_n(&mut s, 5).await;
        send(
            &mut s,
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
        )
        .await;
    })
    .await;
    let proxy = TestProxy::start(&format!("http://{up}")).await;
    let mut c = TcpStream::connect(proxy.addr).await.unwrap();
    send(
        &mut c,
        b"POST /up HTTP/1.0\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await;
    let resp = String::from_utf8(read_all(&mut c).await).unwrap();
    assert!(
        resp.starts_with("HTTP/1.1 200") && resp.ends_with("ok"),
        "{resp}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_answers_as_it_reads_a_large_upload_gets_it_all() {
    // a full-duplex stream: the upstream echoes the body as it reads it;
    // holding its answer until the whole body is sent would leave every
    // side waiting on a full socket for ever
    const N: usize = 32 << 20;
    let up = scripted_upstream(|mut s| async move {
        read_head(&mut s).await;
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {N}\r\nConnection: close\r\n\r\n");
        send(&mut s, head.as_bytes()).await;
        let mut buf = vec![0u8; 64 * 1024];
        let mut left = N;
        while left > 0 {
            let n = match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if s.write_all(&buf[..n]).await.is_err() {
                return;
            }
            left -= n;
        }
    })
    .await;
    let proxy = TestProxy::start(&format!("http://{up}")).await;
    let (mut rd, mut wr) = TcpStream::connect(proxy.addr).await.unwrap().into_split();
    let writer = tokio::spawn(async move {
        let head = format!("POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: {N}\r\n\r\n");
        wr.write_all(head.as_bytes()).await.unwrap();
        wr.write_all(&vec![b'u'; N]).await.unwrap();
        wr
    });
    let mut got = Vec::new();
    let read =
        tokio::time::timeout(std::time::Duration::from_secs(20), rd.read_to_end(&mut got)).await;
    assert!(
        read.is_ok(),
        "stuck after {} bytes of the answer",
        got.len()
    );
    let body_at = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(got.len() - body_at, N);
    assert!(got[body_at..].iter().all(|&b| b == b'u'));
    within("the upload", writer).await.unwrap();
    let evs = proxy.wait_closes(1).await;
    let exchanges = https(&evs);
    assert_eq!(exchanges.len(), 1, "{}", dump(&evs));
    assert_eq!(exchanges[0].response_bytes, N as u64);
}
