//! TLS through a real proxy on 127.0.0.1:0: wss:// upstreams behind a CA
//! made in the test (trusted, untrusted, wrong name, not TLS at all,
//! --insecure), the TLS listener (wss:// and https:// clients, and clients
//! that refuse its certificate), and `wstap ca` through the binary.

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use wstap::demo::echo::EchoOptions;
use wstap::proto::event::{Dir, EventKind, Severity};
use wstap::proto::frame::Opcode;
use wstap::tls::client::TrustOptions;
use wstap::tls::server::ListenerTls;

fn trusting(ca_file: std::path::PathBuf) -> TrustOptions {
    TrustOptions {
        extra_roots: vec![ca_file],
        insecure: false,
    }
}

/// Sends a text and a binary message, checks the echoes, closes.
async fn exchange<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    for m in [
        Message::text("hello over TLS"),
        Message::binary(vec![0u8, 1, 2, 254, 255]),
    ] {
        within("send", ws.send(m.clone())).await.unwrap();
        let back = within("echo", ws.next())
            .await
            .expect("stream ended")
            .expect("read");
        assert_eq!(back, m);
    }
    within("close", ws.close(None)).await.unwrap();
    while let Some(Ok(_)) = within("close reply", ws.next()).await {}
}

/// The frames of one exchange: text and binary each way, then the closes.
fn assert_exchange_logged(evs: &[wstap::proto::event::Event]) {
    let fr = frames(evs);
    for dir in [Dir::ClientToServer, Dir::ServerToClient] {
        let ops: Vec<_> = fr
            .iter()
            .filter(|f| f.from == dir)
            .map(|f| f.opcode)
            .collect();
        assert_eq!(
            ops,
            [Opcode::Text, Opcode::Binary, Opcode::Close],
            "{dir:?}\n{}",
            dump(evs)
        );
    }
    let text = fr
        .iter()
        .find(|f| f.from == Dir::ServerToClient && f.opcode == Opcode::Text)
        .unwrap();
    assert_eq!(text.preview, "hello over TLS");
    let hs = &handshakes(evs)[0];
    assert_eq!(hs.upstream_response.as_ref().map(|r| r.status), Some(101));
}

#[tokio::test]
async fn wss_upstream_trusted_through_upstream_ca_relays_and_logs() {
    let tmp = TempDir::new("wss-ok");
    let ca = TestCa::new("wstap test CA");
    let echo = echo_server_tls(ca.server_config(&["127.0.0.1"]), EchoOptions::default()).await;
    let proxy = TestProxy::start_full(
        &format!("wss://{echo}"),
        |_| {},
        trusting(ca.write(&tmp, "ca.pem")),
    )
    .await;
    let (mut ws, _) = ws_client(proxy.addr, "/echo", &[]).await;
    exchange(&mut ws).await;
    let evs = proxy.wait_closes(1).await;
    assert_exchange_logged(&evs);
    assert!(finding_codes(&evs).is_empty(), "{:?}", findings(&evs));
}

/// Starts a proxy in front of `upstream`, sends one upgrade, and returns
/// the status the client got and the one upstream-tls-failed finding.
async fn failing_upgrade(
    upstream: &str,
    trust: TrustOptions,
) -> (u16, wstap::proto::event::Finding) {
    let proxy = TestProxy::start_full(upstream, |_| {}, trust).await;
    let (status, _) = upgrade_status(proxy.addr, "/echo").await;
    let evs = proxy.wait_closes(1).await;
    let fs = findings(&evs);
    assert_eq!(fs.len(), 1, "{}", dump(&evs));
    assert_eq!(fs[0].code, "upstream-tls-failed");
    assert_eq!(fs[0].severity, Severity::Error);
    (status, fs[0].clone())
}

#[tokio::test]
async fn wss_upstream_with_a_certificate_for_another_name_is_a_name_mismatch() {
    let tmp = TempDir::new("wss-name");
    let ca = TestCa::new("wstap test CA");
    // trusted issuer, but the leaf names localhost and we connect to 127.0.0.1
    let echo = echo_server_tls(ca.server_config(&["localhost"]), EchoOptions::default()).await;
    let (status, f) =
        failing_upgrade(&format!("wss://{echo}"), trusting(ca.write(&tmp, "ca.pem"))).await;
    assert_eq!(status, 502);
    assert!(
        f.message.contains("is not valid for that name"),
        "{}",
        f.message
    );
    assert!(f.hint.contains("SAN"), "{}", f.hint);
}

#[tokio::test]
async fn wss_upstream_signed_by_an_untrusted_root_is_named() {
    let tmp = TempDir::new("wss-untrusted");
    let ca = TestCa::new("wstap test CA");
    let stranger = TestCa::new("someone else's CA");
    let echo = echo_server_tls(
        stranger.server_config(&["127.0.0.1"]),
        EchoOptions::default(),
    )
    .await;
    let (status, f) =
        failing_upgrade(&format!("wss://{echo}"), trusting(ca.write(&tmp, "ca.pem"))).await;
    assert_eq!(status, 502);
    assert!(f.message.contains("is not trusted"), "{}", f.message);
    assert!(f.hint.contains("--upstream-ca"), "{}", f.hint);
}

#[tokio::test]
async fn wss_to_a_plain_server_says_it_is_not_speaking_tls() {
    let echo = echo_server(EchoOptions::default()).await;
    let (status, f) = failing_upgrade(&format!("wss://{echo}"), TrustOptions::default()).await;
    assert_eq!(status, 502);
    assert!(
        f.message.contains("not speaking TLS (ws:// vs wss://?)"),
        "{}",
        f.message
    );
}

#[tokio::test]
async fn wss_to_a_server_that_closes_at_once_is_not_tls_either() {
    // A raw TCP peer that reads the ClientHello and hangs up, as many
    // non-TLS services do on bytes they do not understand.
    let peer = scripted_upstream(|mut s| async move {
        let mut buf = [0u8; 512];
        let _ = s.read(&mut buf).await;
    })
    .await;
    let (_, f) = failing_upgrade(&format!("wss://{peer}"), TrustOptions::default()).await;
    assert!(
        f.message
            .contains("closed the connection during the TLS handshake"),
        "{}",
        f.message
    );
}

#[tokio::test]
async fn insecure_lets_an_untrusted_upstream_through_and_says_so() {
    let stranger = TestCa::new("someone else's CA");
    let echo = echo_server_tls(
        stranger.server_config(&["127.0.0.1"]),
        EchoOptions::default(),
    )
    .await;
    let proxy = TestProxy::start_full(
        &format!("wss://{echo}"),
        |_| {},
        TrustOptions {
            extra_roots: vec![],
            insecure: true,
        },
    )
    .await;
    let (mut ws, _) = ws_client(proxy.addr, "/echo", &[]).await;
    exchange(&mut ws).await;
    let evs = proxy.wait_closes(1).await;
    assert_exchange_logged(&evs);
    let fs = findings(&evs);
    assert_eq!(fs.len(), 1, "{fs:?}");
    assert_eq!(fs[0].code, "tls-verification-disabled");
    assert_eq!(fs[0].severity, Severity::Warning);
    assert!(
        fs[0].message.contains(&echo.to_string()),
        "{}",
        fs[0].message
    );
    assert!(fs[0].hint.contains("debugging only"), "{}", fs[0].hint);
}

#[tokio::test]
async fn insecure_with_a_plain_upstream_raises_nothing() {
    let echo = echo_server(EchoOptions::default()).await;
    let proxy = TestProxy::start_full(
        &format!("ws://{echo}"),
        |_| {},
        TrustOptions {
            extra_roots: vec![],
            insecure: true,
        },
    )
    .await;
    let (mut ws, _) = ws_client(proxy.addr, "/echo", &[]).await;
    exchange(&mut ws).await;
    let evs = proxy.wait_closes(1).await;
    assert!(finding_codes(&evs).is_empty(), "{:?}", findings(&evs));
}

fn listener_tls(ca: &TestCa) -> ListenerTls {
    ListenerTls::new(
        ca.server_config(&["127.0.0.1"]),
        "trust the test CA in the client",
    )
}

#[tokio::test]
async fn tls_listener_serves_wss_and_https() {
    let ca = TestCa::new("wstap test CA");
    let echo = echo_server(EchoOptions::default()).await;
    let tls = listener_tls(&ca);
    let proxy = TestProxy::start_with(&format!("ws://{echo}"), move |cfg| {
        cfg.listener_tls = Some(tls);
    })
    .await;

    let mut ws = wss_client(proxy.addr, "127.0.0.1", ca.client_config(), "/echo").await;
    exchange(&mut ws).await;
    drop(ws);
    let evs = proxy.wait_closes(1).await;
    assert_exchange_logged(&evs);

    // an ordinary HTTPS request on the same listener
    let mut s = tls_connect(proxy.addr, "127.0.0.1", ca.client_config())
        .await
        .unwrap();
    within(
        "request",
        s.write_all(b"GET /page HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"),
    )
    .await
    .unwrap();
    let mut resp = Vec::new();
    within("response", s.read_to_end(&mut resp)).await.unwrap();
    let resp = String::from_utf8_lossy(&resp);
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("wstap echo upstream"), "{resp}");
    let evs = proxy.wait_closes(2).await;
    let h = https(&evs);
    assert_eq!((h[0].target.as_str(), h[0].status), ("/page", 200));
    assert!(finding_codes(&evs).is_empty(), "{:?}", findings(&evs));
}

#[tokio::test]
async fn tls_listener_names_a_client_that_refuses_its_certificate() {
    let ca = TestCa::new("wstap test CA");
    let stranger = TestCa::new("someone else's CA");
    let echo = echo_server(EchoOptions::default()).await;
    let tls = listener_tls(&ca);
    let proxy = TestProxy::start_with(&format!("ws://{echo}"), move |cfg| {
        cfg.listener_tls = Some(tls);
    })
    .await;

    // trusts another CA: it refuses ours with unknown_ca
    let refused = tls_connect(proxy.addr, "127.0.0.1", stranger.client_config()).await;
    assert!(refused.is_err());
    let evs = proxy.wait_closes(1).await;
    let fs = findings(&evs);
    assert_eq!(fs.len(), 1, "{}", dump(&evs));
    assert_eq!(fs[0].code, "client-tls-failed");
    assert!(fs[0].message.contains("unknown_ca"), "{}", fs[0].message);
    assert_eq!(fs[0].hint, "trust the test CA in the client");
    assert!(evs.iter().any(|e| matches!(&e.kind, EventKind::Error(er) if er.message.contains("refused wstap's certificate"))));
    assert_eq!(closes(&evs)[0].reason, "client-tls-failed");

    // plain HTTP to the TLS port: an error naming the mix-up, no finding
    let (status, _) = upgrade_status(proxy.addr, "/echo").await;
    assert_eq!(status, 0, "a TLS listener sends no HTTP answer");
    let evs = proxy.wait_closes(2).await;
    assert_eq!(findings(&evs).len(), 1, "{}", dump(&evs));
    assert!(
        evs.iter().any(
            |e| matches!(&e.kind, EventKind::Error(er) if er.message.contains("did not speak TLS"))
        ),
        "{}",
        dump(&evs)
    );

    // and the listener still serves clients that trust it
    let mut ws = wss_client(proxy.addr, "127.0.0.1", ca.client_config(), "/echo").await;
    exchange(&mut ws).await;
    proxy.wait_closes(3).await;
}

#[tokio::test]
async fn the_binary_serves_tls_from_pem_files_and_logs_frames() {
    let tmp = TempDir::new("bin-tls");
    let ca = TestCa::new("wstap test CA");
    let leaf = ca.leaf(&["127.0.0.1"]);
    let (cert, key, log) = (
        tmp.path("cert.pem"),
        tmp.path("key.pem"),
        tmp.path("log.ndjson"),
    );
    std::fs::write(&cert, &leaf.cert_pem).unwrap();
    std::fs::write(&key, &leaf.key_pem).unwrap();
    let echo = echo_server(EchoOptions::default()).await;
    let bin = BinProxy::start(&[
        "proxy",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        &format!("ws://{echo}"),
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--json",
        log.to_str().unwrap(),
        "--quiet",
    ])
    .await;
    let mut ws = wss_client(bin.addr, "127.0.0.1", ca.client_config(), "/echo").await;
    exchange(&mut ws).await;
    drop(ws);
    let (status, stderr) = bin.terminate().await;
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("TLS"), "{stderr}");
    let evs = read_ndjson(&log);
    assert_exchange_logged(&evs);
}

#[tokio::test]
async fn the_binary_trusts_upstream_ca_files_and_warns_about_insecure() {
    let tmp = TempDir::new("bin-wss");
    let ca = TestCa::new("wstap test CA");
    let ca_file = ca.write(&tmp, "ca.pem");
    let echo = echo_server_tls(ca.server_config(&["127.0.0.1"]), EchoOptions::default()).await;
    let upstream = format!("wss://{echo}");

    let log = tmp.path("trusted.ndjson");
    let bin = BinProxy::reverse(
        &upstream,
        &[
            "--upstream-ca",
            ca_file.to_str().unwrap(),
            "--json",
            log.to_str().unwrap(),
            "--quiet",
        ],
    )
    .await;
    let (mut ws, _) = ws_client(bin.addr, "/echo", &[]).await;
    exchange(&mut ws).await;
    drop(ws);
    let (status, stderr) = bin.terminate().await;
    assert!(status.success(), "{stderr}");
    assert!(!stderr.contains("--insecure"), "{stderr}");
    let evs = read_ndjson(&log);
    assert_exchange_logged(&evs);
    assert!(finding_codes(&evs).is_empty(), "{:?}", findings(&evs));

    // without the CA the same upstream is refused; with --insecure it
    // passes, with a warning at start and a finding per connection
    let log = tmp.path("insecure.ndjson");
    let bin = BinProxy::reverse(
        &upstream,
        &["--insecure", "--json", log.to_str().unwrap(), "--quiet"],
    )
    .await;
    for _ in 0..2 {
        let (mut ws, _) = ws_client(bin.addr, "/echo", &[]).await;
        exchange(&mut ws).await;
    }
    let (status, stderr) = bin.terminate().await;
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: --insecure") && stderr.contains("debugging only"),
        "{stderr}"
    );
    let evs = read_ndjson(&log);
    let codes = finding_codes(&evs);
    assert_eq!(
        codes,
        ["tls-verification-disabled", "tls-verification-disabled"],
        "{}",
        dump(&evs)
    );

    // a missing --upstream-ca file is a usage error naming the file
    let missing = tmp.path("nope.pem");
    let (_, _, err) = run_bin(
        &[
            "proxy",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &upstream,
            "--upstream-ca",
            missing.to_str().unwrap(),
        ],
        Some(2),
    );
    assert!(err.contains("nope.pem"), "{err}");
}

#[tokio::test]
async fn ca_init_creates_a_private_key_once_and_ca_path_finds_it() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = TempDir::new("bin-ca");
    let dir = tmp.path("ca");
    let dir_s = dir.to_str().unwrap();

    let (_, out, err) = run_bin(&["ca", "path", "--dir", dir_s], Some(2));
    assert!(out.is_empty(), "{out}");
    assert!(err.contains("wstap ca init"), "{err}");

    let (_, out1, err1) = run_bin(&["ca", "init", "--dir", dir_s], Some(0));
    let cert = dir.join("wstap-ca.pem");
    let key = dir.join("wstap-ca-key.pem");
    assert!(out1.contains(cert.to_str().unwrap()), "{out1}");
    assert!(out1.contains("Trust the wstap CA"), "{out1}");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "key mode {mode:o}");
    let cert_bytes = std::fs::read(&cert).unwrap();
    let key_bytes = std::fs::read(&key).unwrap();
    let key_meta = std::fs::metadata(&key).unwrap();
    assert!(String::from_utf8_lossy(&cert_bytes).contains("BEGIN CERTIFICATE"));

    let (_, out2, err2) = run_bin(&["ca", "init", "--dir", dir_s], Some(0));
    assert!(out2.contains("already exists"), "{out2}");
    assert_eq!(std::fs::read(&cert).unwrap(), cert_bytes);
    assert_eq!(std::fs::read(&key).unwrap(), key_bytes);
    assert_eq!(
        std::fs::metadata(&key).unwrap().modified().unwrap(),
        key_meta.modified().unwrap()
    );

    let (_, out3, err3) = run_bin(&["ca", "path", "--dir", dir_s], Some(0));
    assert_eq!(out3.trim_end(), cert.to_str().unwrap());

    // the key's body never shows up in any output
    let key_text = String::from_utf8(key_bytes).unwrap();
    let body: Vec<&str> = key_text
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    assert!(!body.is_empty());
    for text in [&out1, &err1, &out2, &err2, &out3, &err3] {
        assert!(!text.contains("PRIVATE KEY"), "{text}");
        for line in &body {
            assert!(!text.contains(line), "key material in output: {text}");
        }
    }

    // the CA it made signs what the proxy needs: a leaf that verifies
    let ca = wstap::tls::ca::LocalCa::load(&dir).unwrap();
    let minter = wstap::tls::leaf::LeafMinter::new(ca);
    minter.leaf("127.0.0.1").unwrap();
}
