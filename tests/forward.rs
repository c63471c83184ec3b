//! Forward-proxy mode: absolute-form requests, CONNECT intercepted with
//! the local CA (WebSocket and HTTPS inside, logged as in reverse mode), a
//! client that does not trust the CA, and `--no-intercept` tunnels.

mod common;

use std::sync::Arc;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use wstap::demo::echo::EchoOptions;
use wstap::proxy::{ForwardOptions, Mode};
use wstap::tls::ca::LocalCa;
use wstap::tls::client::TrustOptions;
use wstap::tls::leaf::LeafMinter;
use wstap::tls::server::Interceptor;

struct Setup {
    proxy: TestProxy,
    /// The wstap CA, as a client config that trusts it.
    wstap_ca: Arc<rustls::ClientConfig>,
    _dirs: (TempDir, TempDir),
}

async fn forward_proxy(upstream_ca: &TestCa, no_intercept: Vec<String>) -> Setup {
    let ca_dir = TempDir::new("fwd-ca");
    let (ca, _) = LocalCa::load_or_create(&ca_dir.0).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert_der().clone()).unwrap();
    let mut client = rustls::ClientConfig::builder_with_provider(wstap::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = vec![b"http/1.1".to_vec()];
    let interceptor = Arc::new(Interceptor::new(Arc::new(LeafMinter::new(ca))));
    let pem_dir = TempDir::new("fwd-up");
    let upstream_pem = upstream_ca.write(&pem_dir, "upstream-ca.pem");
    let proxy = TestProxy::start_full(
        "ws://127.0.0.1:1",
        |c| {
            c.mode = Mode::Forward(ForwardOptions {
                interceptor,
                no_intercept,
            })
        },
        TrustOptions {
            extra_roots: vec![upstream_pem],
            insecure: false,
        },
    )
    .await;
    Setup {
        proxy,
        wstap_ca: Arc::new(client),
        _dirs: (ca_dir, pem_dir),
    }
}

/// Opens a CONNECT tunnel through the proxy; returns the stream after the 200.
async fn connect(proxy: std::net::SocketAddr, target: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    send(
        &mut s,
        format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes(),
    )
    .await;
    let head = String::from_utf8(read_head(&mut s).await).unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    s
}

async fn tls_over(
    s: TcpStream,
    cfg: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1".to_string()).unwrap();
    within(
        "TLS through the tunnel",
        tokio_rustls::TlsConnector::from(cfg).connect(name, s),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_is_intercepted_and_logged_like_reverse_mode() {
    let up_ca = TestCa::new("upstream");
    let echo = echo_server_tls(up_ca.server_config(&["127.0.0.1"]), EchoOptions::default()).await;
    let s = forward_proxy(&up_ca, vec![]).await;

    // a WebSocket through CONNECT, trusting wstap's CA
    let tunnel = connect(s.proxy.addr, echo).await;
    let tls = tls_over(tunnel, s.wstap_ca.clone())
        .await
        .expect("the client trusts wstap's leaf");
    let req = format!("wss://127.0.0.1:{}/echo", echo.port())
        .into_client_request()
        .unwrap();
    let (mut ws, _) = within("handshake", tokio_tungstenite::client_async(req, tls))
        .await
        .unwrap();
    ws.send(Message::text("through CONNECT")).await.unwrap();
    assert_eq!(
        within("echo", ws.next()).await.unwrap().unwrap(),
        Message::text("through CONNECT")
    );
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = within("close", ws.next()).await {}
    drop(ws);

    // an ordinary HTTPS GET through the same proxy
    let tunnel = connect(s.proxy.addr, echo).await;
    let mut tls = tls_over(tunnel, s.wstap_ca.clone()).await.unwrap();
    tls.write_all(
        format!(
            "GET /page HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
            echo.port()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut page = Vec::new();
    within("the page", tls.read_to_end(&mut page))
        .await
        .unwrap();
    let page = String::from_utf8_lossy(&page);
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.contains("wstap echo upstream"));

    let evs = s.proxy.wait_closes(2).await;
    let hs = handshakes(&evs);
    assert_eq!(hs.len(), 1, "{}", dump(&evs));
    assert_eq!(hs[0].upstream_response.as_ref().unwrap().status, 101);
    let previews: Vec<_> = frames(&evs)
        .into_iter()
        .filter(|f| f.opcode.name() == "text")
        .map(|f| f.preview)
        .collect();
    assert_eq!(previews, ["through CONNECT", "through CONNECT"]);
    let http = https(&evs);
    let connects = http
        .iter()
        .filter(|h| h.method == "CONNECT" && h.status == 200)
        .count();
    assert_eq!(connects, 2);
    assert!(http
        .iter()
        .any(|h| h.method == "GET" && h.target == "/page" && h.status == 200));
    assert!(finding_codes(&evs).is_empty(), "{:?}", findings(&evs));
}

#[tokio::test]
async fn absolute_form_requests_are_forwarded() {
    let echo = echo_server(EchoOptions::default()).await;
    let s = forward_proxy(&TestCa::new("unused"), vec![]).await;
    let mut c = TcpStream::connect(s.proxy.addr).await.unwrap();
    send(
        &mut c,
        format!(
            "GET http://{echo}/index.html HTTP/1.1\r\nHost: {echo}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    let resp = String::from_utf8(read_all(&mut c).await).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let evs = s.proxy.wait_closes(1).await;
    let h = &https(&evs)[0];
    assert_eq!(
        (h.status, h.target.clone()),
        (200, format!("http://{echo}/index.html"))
    );

    // a request without a URL is told what a forward proxy needs
    let mut c = TcpStream::connect(s.proxy.addr).await.unwrap();
    send(&mut c, b"GET /relative HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let resp = String::from_utf8(read_all(&mut c).await).unwrap();
    assert!(
        resp.starts_with("HTTP/1.1 400") && resp.contains("forward proxy"),
        "{resp}"
    );
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_ca_is_named() {
    let up_ca = TestCa::new("upstream");
    let echo = echo_server_tls(up_ca.server_config(&["127.0.0.1"]), EchoOptions::default()).await;
    let s = forward_proxy(&up_ca, vec![]).await;
    let tunnel = connect(s.proxy.addr, echo).await;
    // this client trusts only the upstream's own CA, not wstap's
    assert!(tls_over(tunnel, up_ca.client_config()).await.is_err());
    let evs = s.proxy.wait_closes(1).await;
    let f = findings(&evs)
        .into_iter()
        .find(|f| f.code == "client-tls-failed");
    assert!(f.is_some(), "{}", dump(&evs));
    assert!(
        f.unwrap().hint.contains("Trust the wstap CA"),
        "the hint says how to trust the CA"
    );
}

#[tokio::test]
async fn no_intercept_hosts_are_tunnelled_untouched() {
    let up_ca = TestCa::new("upstream");
    let echo = echo_server_tls(up_ca.server_config(&["127.0.0.1"]), EchoOptions::default()).await;
    let s = forward_proxy(&up_ca, vec!["127.0.0.*".into()]).await;
    let tunnel = connect(s.proxy.addr, echo).await;
    // the client sees the upstream's own certificate: nothing in between
    let mut tls = tls_over(tunnel, up_ca.client_config())
        .await
        .expect("the real certificate");
    tls.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut page = Vec::new();
    within("the page", tls.read_to_end(&mut page))
        .await
        .unwrap();
    assert!(page.starts_with(b"HTTP/1.1 200"));
    drop(tls);
    let evs = s.proxy.wait_closes(1).await;
    assert!(handshakes(&evs).is_empty());
    let h = https(&evs);
    assert_eq!(h.len(), 1, "only the CONNECT is seen: {}", dump(&evs));
    assert_eq!((h[0].method.as_str(), h[0].status), ("CONNECT", 200));
    assert_eq!(closes(&evs)[0].reason, "tunnel-closed");
}

/// A tunnel still open when the grace period ends is closed and logged
/// like any other connection (it used to be aborted without a close event).
#[tokio::test]
async fn a_tunnel_open_at_shutdown_gets_its_close() {
    let up_ca = TestCa::new("upstream");
    let echo = echo_server_tls(up_ca.server_config(&["127.0.0.1"]), EchoOptions::default()).await;
    let s = forward_proxy(&up_ca, vec!["127.0.0.*".into()]).await;
    let tunnel = connect(s.proxy.addr, echo).await;
    let _tls = tls_over(tunnel, up_ca.client_config())
        .await
        .expect("the real certificate");
    s.proxy.wait("the CONNECT", |e| !https(e).is_empty()).await;
    let evs = s.proxy.stop().await;
    let cl = closes(&evs);
    assert_eq!(cl.len(), 1, "{}", dump(&evs));
    assert_eq!(cl[0].reason, "shutdown");
}

#[tokio::test]
async fn a_lowercase_connect_is_not_a_tunnel() {
    // methods are case-sensitive (RFC 9110 §9.1): `connect` is an unknown
    // method with an authority-form target, which a forward proxy refuses
    let s = forward_proxy(&TestCa::new("unused"), vec![]).await;
    let mut c = TcpStream::connect(s.proxy.addr).await.unwrap();
    send(
        &mut c,
        b"connect 127.0.0.1:443 HTTP/1.1\r\nHost: 127.0.0.1:443\r\n\r\n",
    )
    .await;
    let resp = String::from_utf8_lossy(&read_all(&mut c).await).into_owned();
    assert!(
        resp.starts_with("HTTP/1.1 400") && resp.contains("forward proxy"),
        "{resp}"
    );
    let evs = s.proxy.wait_closes(1).await;
    assert!(
        https(&evs).iter().all(|h| h.method != "CONNECT"),
        "{}",
        dump(&evs)
    );
}

#[tokio::test]
async fn a_refused_request_still_sending_its_body_gets_the_answer() {
    // wstap refuses the request at its head and never reads the body
    let s = forward_proxy(&TestCa::new("unused"), vec![]).await;
    let (pieces, piece) = (3, 64 * 1024);
    let head = format!(
        "POST /relative HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        pieces * piece
    );
    let resp = upload_in_pieces(s.proxy.addr, head.as_bytes(), pieces, piece)
        .await
        .unwrap();
    let resp = String::from_utf8_lossy(&resp);
    assert!(
        resp.starts_with("HTTP/1.1 400") && resp.contains("forward proxy"),
        "{resp}"
    );
}

#[tokio::test]
async fn an_intercepted_connect_whose_client_is_gone_still_gets_a_close() {
    // the client resets right after asking: wstap's 200 cannot be written
    let s = forward_proxy(&TestCa::new("unused"), vec![]).await;
    let mut c = TcpStream::connect(s.proxy.addr).await.unwrap();
    send(
        &mut c,
        b"CONNECT 127.0.0.1:443 HTTP/1.1\r\nHost: 127.0.0.1:443\r\n\r\n",
    )
    .await;
    // SO_LINGER 0: close() sends RST; no await in between, so wstap (on
    // this test's one thread) reads the request only after the reset
    c.set_zero_linger().unwrap();
    drop(c);
    let evs = s.proxy.wait_closes(1).await;
    let cl = closes(&evs);
    assert_eq!(cl.len(), 1, "{}", dump(&evs));
    assert_eq!(cl[0].reason, "client-closed", "{}", dump(&evs));
}

#[tokio::test]
async fn an_intercepted_connect_to_a_dead_upstream_gets_a_502_and_a_close() {
    let (_held, port) = closed_port();
    let s = forward_proxy(&TestCa::new("unused"), vec![]).await;
    let target: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let tunnel = connect(s.proxy.addr, target).await;
    let mut tls = tls_over(tunnel, s.wstap_ca.clone()).await.unwrap();
    tls.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut resp = Vec::new();
    let _ = within("the answer", tls.read_to_end(&mut resp)).await;
    let resp = String::from_utf8_lossy(&resp);
    assert!(resp.starts_with("HTTP/1.1 502"), "{resp}");
    let evs = s.proxy.wait_closes(1).await;
    let cl = closes(&evs);
    assert_eq!(cl.len(), 1, "{}", dump(&evs));
    assert_eq!(cl[0].reason, "upstream-failed");
    assert_eq!(finding_codes(&evs), ["upstream-refused"]);
}

#[tokio::test]
async fn a_connect_without_a_host_gets_a_400() {
    let s = forward_proxy(&TestCa::new("unused"), vec![]).await;
    let mut c = TcpStream::connect(s.proxy.addr).await.unwrap();
    send(&mut c, b"CONNECT :443 HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let resp = String::from_utf8_lossy(&read_all(&mut c).await).into_owned();
    drop(c);
    assert!(
        resp.starts_with("HTTP/1.1 400") && resp.contains("CONNECT needs host:port"),
        "{resp}"
    );
    let evs = s.proxy.wait_closes(1).await;
    assert_eq!(closes(&evs)[0].reason, "bad-request");
}
