//! wstap around a real nginx (the Debian package), in its default
//! configuration (a plain `proxy_pass`) and in the standard WebSocket one:
//! the findings name what nginx did. Skipped with a notice when nginx is
//! missing, failed under WSTAP_E2E=require.

mod common;

use std::time::Duration;

use common::nginx::{default_config, websocket_config, Nginx};
use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use wstap::demo::echo::EchoOptions;

async fn talk(ws: &mut Ws, text: &str) {
    within("send", ws.send(Message::text(text))).await.unwrap();
    let back = within("echo", ws.next())
        .await
        .expect("stream ended")
        .expect("read");
    assert_eq!(back, Message::text(text));
}

fn header_findings(evs: &[wstap::proto::event::Event]) -> Vec<String> {
    let mut c = finding_codes(evs);
    c.sort();
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_default_nginx_the_stripped_upgrade_is_named() {
    // client -> nginx (plain proxy_pass) -> wstap -> lenient echo
    let echo = lenient_echo().await;
    let proxy = TestProxy::start(&format!("ws://{echo}")).await;
    let Some(nginx) = Nginx::start(&default_config(proxy.addr)).await else {
        return;
    };
    let (mut ws, _) = ws_client(nginx.addr, "/chat", &[]).await;
    talk(&mut ws, "through a default nginx").await;
    within("close", ws.close(None)).await.unwrap();
    while let Some(Ok(_)) = within("close reply", ws.next()).await {}
    drop(ws);
    let evs = proxy.wait_closes(1).await;
    assert_eq!(
        header_findings(&evs),
        [
            "connection-upgrade-missing",
            "http-version-downgrade",
            "upgrade-header-missing"
        ],
        "{}",
        dump(&evs)
    );
    let hs = &handshakes(&evs)[0];
    let req = hs.client_request.as_ref().unwrap();
    assert_eq!(req.version, "HTTP/1.0");
    let f = findings(&evs);
    let up = f
        .iter()
        .find(|f| f.code == "upgrade-header-missing")
        .unwrap();
    assert!(
        up.hint.contains("proxy_set_header Upgrade $http_upgrade"),
        "{}",
        up.hint
    );
    assert_eq!(
        f.iter()
            .find(|f| f.code == "connection-upgrade-missing")
            .unwrap()
            .observed
            .as_deref(),
        Some("\"close\"")
    );
    assert!(frames(&evs)
        .iter()
        .any(|f| f.preview == "through a default nginx"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_standard_nginx_there_are_no_findings() {
    let echo = echo_server(EchoOptions::default()).await;
    let proxy = TestProxy::start(&format!("ws://{echo}")).await;
    let Some(nginx) = Nginx::start(&websocket_config(proxy.addr, "")).await else {
        return;
    };
    let (mut ws, _) = ws_client(nginx.addr, "/chat", &[]).await;
    talk(&mut ws, "through a well-configured nginx").await;
    within("close", ws.close(None)).await.unwrap();
    while let Some(Ok(_)) = within("close reply", ws.next()).await {}
    drop(ws);
    let evs = proxy.wait_closes(1).await;
    assert!(finding_codes(&evs).is_empty(), "{}", dump(&evs));
    assert_eq!(
        frames(&evs)
            .iter()
            .filter(|f| f.opcode.name() == "text")
            .count(),
        2
    );
    assert_eq!(closes(&evs)[0].reason, "close-handshake");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_front_of_default_nginx_the_refusal_is_named() {
    // client -> wstap -> nginx (plain proxy_pass) -> a strict echo server
    let echo = echo_server(EchoOptions::default()).await;
    let Some(nginx) = Nginx::start(&default_config(echo)).await else {
        return;
    };
    let proxy = TestProxy::start(&format!("ws://{}", nginx.addr)).await;
    let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let url = format!("ws://{}/chat", proxy.addr);
    let err = within("handshake", tokio_tungstenite::client_async(url, tcp))
        .await
        .expect_err("nginx defaults break the upgrade");
    let evs = proxy.wait_closes(1).await;
    let f = findings(&evs);
    let refused = f.iter().find(|f| f.code == "upgrade-not-accepted");
    assert!(refused.is_some(), "{err}\n{}", dump(&evs));
    let refused = refused.unwrap();
    assert!(
        refused.observed.as_deref().unwrap().starts_with("505"),
        "{refused:?}"
    );
    assert!(
        refused.hint.contains("proxy_http_version 1.1"),
        "{}",
        refused.hint
    );
    // the client sent a healthy handshake: nothing is blamed on it
    assert_eq!(finding_codes(&evs), ["upgrade-not-accepted"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_nginx_read_timeout_is_suspected_when_named() {
    // client -> wstap -> nginx (standard, proxy_read_timeout 3s) -> echo
    let echo = echo_server(EchoOptions::default()).await;
    let Some(nginx) = Nginx::start(&websocket_config(echo, "proxy_read_timeout 3s;")).await else {
        return;
    };
    let proxy = TestProxy::start_with(&format!("ws://{}", nginx.addr), |c| {
        c.expected_idle = vec![Duration::from_secs(3)]
    })
    .await;
    let (mut ws, _) = ws_client(proxy.addr, "/chat", &[]).await;
    talk(&mut ws, "then silence").await;
    // nginx cuts the idle connection with no close frame
    let end = within("the cut", ws.next()).await;
    assert!(
        !matches!(end, Some(Ok(Message::Close(_)))),
        "nginx sends no close frame: {end:?}"
    );
    drop(ws);
    let evs = proxy.wait_closes(1).await;
    let f = findings(&evs);
    let idle = f.iter().find(|f| f.code == "idle-timeout-suspected");
    assert!(idle.is_some(), "{}", dump(&evs));
    // the limit matched is the one named; the silence itself is measured
    // (nginx's timer may fire a millisecond early: "2s 999ms")
    let idle = idle.unwrap();
    assert_eq!(
        idle.expected.as_deref(),
        Some("a frame at least every 3s"),
        "{idle:?}"
    );
    assert!(
        idle.message.contains("the idle limit you named"),
        "{}",
        idle.message
    );
    assert!(f.iter().any(|f| f.code == "abnormal-closure"));
}
