//! Rewrites and simulated hops through a real proxy: every operation on
//! requests and responses, their order, scopes and references; a fix tested
//! before deploying it (Origin, nginx defaults); nginx's defaults
//! reproduced with --simulate and compared with a real nginx.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::nginx::{default_config, Nginx};
use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use wstap::demo::echo::EchoOptions;
use wstap::proto::event::view_header;
use wstap::proto::rewrite::{parse_rules_toml, Op, Rule, Rules, Scope};
use wstap::proto::simulate::Hop;
use wstap::proxy::{ForwardOptions, Mode};
use wstap::tls::ca::LocalCa;
use wstap::tls::leaf::LeafMinter;
use wstap::tls::server::Interceptor;

/// An upstream that records each request head and answers `reply`.
async fn recording(reply: &'static [u8]) -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let store = seen.clone();
    let addr = scripted_upstream(move |mut s| {
        let store = store.clone();
        async move {
            loop {
                let head = read_head(&mut s).await;
                if head.is_empty() {
                    return;
                }
                store
                    .lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&head).into_owned());
                send(&mut s, reply).await;
            }
        }
    })
    .await;
    (addr, seen)
}

fn rules(ops: Vec<Op>) -> Rules {
    Rules(
        ops.into_iter()
            .map(|op| Rule {
                op,
                scope: Scope::default(),
            })
            .collect(),
    )
}

#[tokio::test]
async fn request_and_response_operations_apply_in_order_with_references() {
    let (up, seen) = recording(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nServer: upstream\r\nSet-Cookie: s=1\r\n\r\nok",
    )
    .await;
    let r = rules(vec![
        Op::set_request("X-Forwarded-Host: {host}").unwrap(),
        Op::set_request("X-Copy: {header:x-source}!").unwrap(),
        Op::remove_request("Cookie").unwrap(),
        Op::set_request("X-Copy: second wins").unwrap(),
        Op::version("1.0").unwrap(),
        Op::set_response("Server: wstap-rewritten").unwrap(),
        Op::remove_response("Set-Cookie").unwrap(),
    ]);
    let proxy = TestProxy::start_with(&format!("http://{up}"), |c| c.rules = r).await;
    let mut c = TcpStream::connect(proxy.addr).await.unwrap();
    send(&mut c, b"GET /page HTTP/1.1\r\nHost: app.test:9000\r\nCookie: secret=1\r\nX-Source: from-client\r\nConnection: close\r\n\r\n").await;
    let resp = String::from_utf8(read_all(&mut c).await).unwrap();
    assert!(resp.contains("Server: wstap-rewritten\r\n"), "{resp}");
    assert!(!resp.contains("Set-Cookie"), "{resp}");
    let evs = proxy.wait_closes(1).await;
    let head = seen.lock().unwrap()[0].clone();
    assert!(head.starts_with("GET /page HTTP/1.0\r\n"), "{head}");
    assert!(
        head.contains("X-Forwarded-Host: app.test:9000\r\n"),
        "{head}"
    );
    assert!(head.contains("X-Copy: second wins\r\n"), "{head}");
    assert!(!head.contains("Cookie"), "{head}");
    let http = &https(&evs)[0];
    assert!(
        http.rewrites.iter().any(|r| r.contains("removed Cookie")),
        "{:?}",
        http.rewrites
    );
    assert!(http
        .rewrites
        .iter()
        .any(|r| r.contains("HTTP/1.1 -> HTTP/1.0")));
    assert!(http
        .rewrites
        .iter()
        .any(|r| r.contains("response: removed Set-Cookie")));
}

#[tokio::test]
async fn scopes_limit_rules_to_a_path_prefix_and_a_host() {
    let (up, seen) = recording(b"HTTP/1.1 204 No Content\r\n\r\n").await;
    let r = parse_rules_toml(
        r#"
[[rule]]
path = "/api"
set_request_header = "X-Scoped: path"

[[rule]]
host = "admin.test"
set_request_header = "X-Host: admin"
"#,
    )
    .unwrap();
    let proxy = TestProxy::start_with(&format!("http://{up}"), |c| c.rules = r).await;
    let mut c = TcpStream::connect(proxy.addr).await.unwrap();
    for (target, host) in [
        ("/api/users", "www.test"),
        ("/other", "admin.test:8080"),
        ("/apix", "www.test"),
    ] {
        send(
            &mut c,
            format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes(),
        )
        .await;
        read_head(&mut c).await;
    }
    drop(c);
    proxy.wait_closes(1).await;
    let heads = seen.lock().unwrap().clone();
    assert!(
        heads[0].contains("X-Scoped: path") && !heads[0].contains("X-Host"),
        "{}",
        heads[0]
    );
    assert!(
        heads[1].contains("X-Host: admin") && !heads[1].contains("X-Scoped"),
        "{}",
        heads[1]
    );
    // "/apix" starts with "/api" too: prefixes are plain string prefixes
    assert!(heads[2].contains("X-Scoped: path"), "{}", heads[2]);
}

#[tokio::test]
async fn path_scoped_rules_apply_in_forward_mode() {
    let (up, seen) = recording(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n").await;
    let rules = parse_rules_toml(
        r#"
[[rule]]
path = "/api"
set_request_header = "X-Scoped: yes"

[[rule]]
path = "/api"
set_response_header = "X-Scoped-Response: yes"
"#,
    )
    .unwrap();
    let ca_dir = TempDir::new("rw-fwd-ca");
    let (ca, _) = LocalCa::load_or_create(&ca_dir.0).unwrap();
    let interceptor = Arc::new(Interceptor::new(Arc::new(LeafMinter::new(ca))));
    let proxy = TestProxy::start_with("ws://127.0.0.1:1", |c| {
        c.mode = Mode::Forward(ForwardOptions {
            interceptor,
            no_intercept: vec![],
        });
        c.rules = rules;
    })
    .await;
    // a forward proxy's request names a URL, not a path
    let mut c = TcpStream::connect(proxy.addr).await.unwrap();
    send(
        &mut c,
        format!("GET http://{up}/api/x HTTP/1.1\r\nHost: {up}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await;
    let resp = String::from_utf8(read_all(&mut c).await).unwrap();
    assert!(resp.starts_with("HTTP/1.1 204"), "{resp}");
    assert!(resp.contains("X-Scoped-Response: yes\r\n"), "{resp}");
    let head = seen.lock().unwrap()[0].clone();
    assert!(head.starts_with("GET /api/x HTTP/1.1\r\n"), "{head}");
    assert!(head.contains("X-Scoped: yes\r\n"), "{head}");
}

#[test]
fn a_malformed_rules_file_is_refused_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.toml");
    std::fs::write(&path, "# fine\n[[rule]]\nset_request_header = \"Upgrade: websocket\"\n\n[[rule]]\nset_request_header = \"missing colon\"\n").unwrap();
    let (_, _, err) = run_bin(
        &[
            "proxy",
            "--upstream",
            "ws://127.0.0.1:1",
            "--listen",
            "127.0.0.1:0",
            "--rules",
            path.to_str().unwrap(),
        ],
        Some(2),
    );
    assert!(err.contains("line 6"), "the line of the bad value: {err}");
    assert!(err.contains("Name: value"), "{err}");
    let (_, _, err) = run_bin(
        &[
            "proxy",
            "--upstream",
            "ws://127.0.0.1:1",
            "--set-request-header",
            "{bad}: x",
        ],
        Some(2),
    );
    assert!(err.contains("--set-request-header"), "{err}");
}

#[tokio::test]
async fn the_example_rules_file_parses() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/rules.toml"))
        .unwrap();
    let r = parse_rules_toml(&text).unwrap();
    assert!(r.0.len() >= 3);
}

#[tokio::test]
async fn an_origin_check_fails_then_passes_with_the_header_set() {
    let echo = echo_server(EchoOptions {
        require_origin: Some("https://app.example".into()),
        ..Default::default()
    })
    .await;
    let proxy = TestProxy::start(&format!("ws://{echo}")).await;
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let r = within(
        "handshake",
        tokio_tungstenite::client_async(format!("ws://{}/ws", proxy.addr), tcp),
    )
    .await;
    assert!(r.is_err());
    let evs = proxy.wait_closes(1).await;
    let refused = findings(&evs)
        .into_iter()
        .find(|f| f.code == "upgrade-not-accepted")
        .expect("refused");
    assert!(refused.message.contains("403"), "{}", refused.message);

    let r = rules(vec![Op::set_request("Origin: https://app.example").unwrap()]);
    let proxy = TestProxy::start_with(&format!("ws://{echo}"), |c| c.rules = r).await;
    let (mut ws, _) = ws_client(proxy.addr, "/ws", &[]).await;
    ws.send(Message::text("allowed now")).await.unwrap();
    assert_eq!(
        within("echo", ws.next()).await.unwrap().unwrap(),
        Message::text("allowed now")
    );
    drop(ws);
    let evs = proxy.wait_closes(1).await;
    let codes = finding_codes(&evs);
    assert!(codes.contains(&"header-rewritten".to_string()), "{codes:?}");
    assert!(!codes.contains(&"upgrade-not-accepted".to_string()));
    let hs = &handshakes(&evs)[0];
    assert_eq!(
        view_header(&hs.client_request.as_ref().unwrap().headers, "Origin"),
        None
    );
    assert_eq!(
        view_header(&hs.upstream_request.as_ref().unwrap().headers, "Origin"),
        Some("https://app.example")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_default_nginx_restoring_the_headers_is_a_verified_fix() {
    // client -> nginx (plain proxy_pass) -> wstap with the fix -> strict echo
    let echo = echo_server(EchoOptions::default()).await;
    let fix = rules(vec![
        Op::set_request("Upgrade: websocket").unwrap(),
        Op::set_request("Connection: Upgrade").unwrap(),
        Op::version("1.1").unwrap(),
    ]);
    let proxy = TestProxy::start_with(&format!("ws://{echo}"), |c| c.rules = fix).await;
    let Some(nginx) = Nginx::start(&default_config(proxy.addr)).await else {
        return;
    };
    let (mut ws, _) = ws_client(nginx.addr, "/chat", &[]).await;
    ws.send(Message::text("fixed")).await.unwrap();
    assert_eq!(
        within("echo", ws.next()).await.unwrap().unwrap(),
        Message::text("fixed")
    );
    drop(ws);
    let evs = proxy.wait_closes(1).await;
    let f = findings(&evs);
    let verified = f.iter().find(|f| f.code == "fix-verified");
    assert!(verified.is_some(), "{}", dump(&evs));
    let v = verified.unwrap();
    assert!(
        v.message
            .contains("`Upgrade: websocket`, `Connection: upgrade` and HTTP/1.1 are restored"),
        "{}",
        v.message
    );
    assert!(v.hint.contains("proxy_set_header Upgrade $http_upgrade;"));
    assert_eq!(
        handshakes(&evs)[0]
            .upstream_response
            .as_ref()
            .unwrap()
            .status,
        101
    );
}

/// Splits a captured head into (request line, headers except Host).
fn shape(head: &str) -> (String, Vec<String>) {
    let mut lines = head.split("\r\n").filter(|l| !l.is_empty());
    let first = lines.next().unwrap_or("").to_string();
    let headers = lines
        .filter(|l| !l.to_ascii_lowercase().starts_with("host:"))
        .map(str::to_string)
        .collect();
    (first, headers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulate_nginx_default_sends_what_real_nginx_sends() {
    let request = "GET /chat?room=1 HTTP/1.1\r\nHost: app.test\r\nUser-Agent: wstap-test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nOrigin: http://app.test\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n";
    let reply: &'static [u8] =
        b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

    // real nginx in front of a recording upstream
    let (up_n, seen_n) = recording(reply).await;
    let Some(nginx) = Nginx::start(&default_config(up_n)).await else {
        return;
    };
    let mut c = TcpStream::connect(nginx.addr).await.unwrap();
    send(&mut c, request.as_bytes()).await;
    read_head(&mut c).await;
    drop(c);

    // wstap simulating it in front of another recording upstream
    let (up_w, seen_w) = recording(reply).await;
    let proxy = TestProxy::start_with(&format!("ws://{up_w}"), |c| {
        c.simulate = Some(Hop::NginxDefault);
        c.idle_cut = Some(Hop::NginxDefault.idle_rule());
    })
    .await;
    let mut c = TcpStream::connect(proxy.addr).await.unwrap();
    send(&mut c, request.as_bytes()).await;
    read_head(&mut c).await;
    drop(c);
    let evs = proxy.wait_closes(1).await;

    let mut real = None;
    for _ in 0..100 {
        real = seen_n.lock().unwrap().first().cloned();
        if real.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let real = real.expect("nginx forwarded the request");
    let ours = seen_w.lock().unwrap()[0].clone();
    assert_eq!(
        shape(&ours),
        shape(&real),
        "\nnginx sent:\n{real}\nwstap sent:\n{ours}"
    );
    // Host is each one's upstream address, as nginx's $proxy_host
    assert!(real.contains(&format!("Host: {up_n}\r\n")), "{real}");
    assert!(ours.contains(&format!("Host: {up_w}\r\n")), "{ours}");
    // the same findings as wstap behind a real default nginx reports
    let mut codes = finding_codes(&evs);
    codes.sort();
    assert_eq!(
        codes,
        [
            "connection-upgrade-missing",
            "http-version-downgrade",
            "simulated-hop",
            "upgrade-header-missing",
            "upgrade-not-accepted"
        ]
    );
    let f = findings(&evs);
    let stripped = f
        .iter()
        .find(|f| f.code == "upgrade-header-missing")
        .unwrap();
    assert_eq!(stripped.view.as_deref(), Some("upstream_request"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_cuts_an_idle_connection_but_not_a_busy_one() {
    let echo = echo_server(EchoOptions::default()).await;
    let proxy = TestProxy::start_with(&format!("ws://{echo}"), |c| {
        c.idle_cut = Some(wstap::proto::simulate::IdleRule {
            after: Duration::from_secs(2),
            count_client: true,
            label: "--idle-timeout".into(),
        })
    })
    .await;
    let (mut idle, _) = ws_client(proxy.addr, "/idle", &[]).await;
    let (mut busy, _) = ws_client(proxy.addr, "/busy", &[]).await;
    let started = Instant::now();
    let idle_task = tokio::spawn(async move {
        // no close frame: the stream just ends
        let end = idle.next().await;
        (started.elapsed(), end)
    });
    for i in 0..8 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let m = Message::text(format!("tick {i}"));
        busy.send(m.clone()).await.unwrap();
        assert_eq!(
            within("echo", busy.next()).await.unwrap().unwrap(),
            m,
            "the busy connection stays up"
        );
    }
    let (after, end) = within("the idle cut", idle_task).await.unwrap();
    assert!(
        after >= Duration::from_millis(1900),
        "cut too early: {after:?}"
    );
    assert!(after < Duration::from_secs(5), "cut too late: {after:?}");
    assert!(
        !matches!(end, Some(Ok(Message::Close(_)))),
        "no close frame: {end:?}"
    );
    drop(busy);
    let evs = proxy.wait_closes(2).await;
    let reasons: Vec<_> = closes(&evs).into_iter().map(|c| c.reason).collect();
    assert!(reasons.contains(&"idle-timeout".to_string()), "{reasons:?}");
    let codes = finding_codes(&evs);
    assert!(codes.contains(&"simulated-hop".to_string()));
    assert!(codes.contains(&"abnormal-closure".to_string()));
}

#[tokio::test]
async fn the_idle_timeout_flag_cuts_like_a_load_balancer() {
    let echo = echo_server(EchoOptions::default()).await;
    let upstream = format!("ws://{echo}");
    let p = BinProxy::reverse(&upstream, &["--idle-timeout", "1s", "--quiet"]).await;
    let (mut ws, _) = ws_client(p.addr, "/idle", &[]).await;
    let m = Message::text("one");
    ws.send(m.clone()).await.unwrap();
    assert_eq!(within("echo", ws.next()).await.unwrap().unwrap(), m);
    let started = Instant::now();
    let end = within("the idle cut", ws.next()).await;
    let after = started.elapsed();
    assert!(
        after >= Duration::from_millis(900) && after < Duration::from_secs(5),
        "cut after {after:?}, wanted about 1 s"
    );
    assert!(
        !matches!(end, Some(Ok(Message::Close(_)))),
        "no close frame, as from a load balancer: {end:?}"
    );
    let (status, _) = p.terminate().await;
    assert!(status.success());
}

#[tokio::test]
async fn the_binary_announces_a_simulation() {
    let echo = echo_server(EchoOptions::default()).await;
    let upstream = format!("ws://{echo}");
    let p = BinProxy::reverse(&upstream, &["--simulate", "cloudflare", "--quiet"]).await;
    let (status, err) = p.terminate().await;
    assert!(status.success());
    assert!(
        err.contains("SIMULATING Cloudflare's 100 s idle limit"),
        "{err}"
    );
}

#[tokio::test]
async fn rewrites_on_top_of_a_simulated_hop_verify_the_fix_locally() {
    // reproduce nginx's defaults and try the fix in one proxy: the
    // simulated hop strips the upgrade, the rules put it back
    let echo = echo_server(EchoOptions::default()).await;
    let fix = rules(vec![
        Op::set_request("Upgrade: {header:upgrade}").unwrap(),
        Op::set_request("Connection: upgrade").unwrap(),
        Op::version("1.1").unwrap(),
    ]);
    let proxy = TestProxy::start_with(&format!("ws://{echo}"), |c| {
        c.simulate = Some(Hop::NginxDefault);
        c.rules = fix;
    })
    .await;
    let (mut ws, _) = ws_client(proxy.addr, "/chat", &[]).await;
    ws.send(Message::text("fixed locally")).await.unwrap();
    assert_eq!(
        within("echo", ws.next()).await.unwrap().unwrap(),
        Message::text("fixed locally")
    );
    drop(ws);
    let evs = proxy.wait_closes(1).await;
    let f = findings(&evs);
    let v = f.iter().find(|f| f.code == "fix-verified");
    assert!(v.is_some(), "{}", dump(&evs));
    assert!(v.unwrap().hint.contains("proxy_http_version 1.1;"));
    // the client's own request was healthy: nothing blamed on it
    assert!(
        !f.iter().any(|f| f.view.as_deref() == Some("client_request")
            && f.severity == wstap::proto::event::Severity::Error)
    );
}
