//! `--har FILE`: the file written through a real proxy on 127.0.0.1:0
//! parses as HAR 1.2 (checked field by field), holds the WebSocket messages
//! in order with Chrome's fields, reaches the disk when connections end,
//! and survives SIGTERM of the binary mid-connection.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;
use wstap::demo::echo::EchoOptions;
use wstap::sink::har::{capture_for, HarOptions, HarSink};
use wstap::tls::client::TrustOptions;

/// A fresh directory for one test's files.
fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("wstap-it-har-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn read_har(path: &Path) -> Value {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "{} is not JSON ({e}):\n{}",
            path.display(),
            String::from_utf8_lossy(&bytes)
        )
    })
}

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

fn text_pattern(len: usize) -> String {
    (0..len).map(|i| (b'a' + (i % 26) as u8) as char).collect()
}

fn is_str(v: &Value, what: &str) -> String {
    v.as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {v}"))
        .to_string()
}

fn is_num(v: &Value, what: &str) -> f64 {
    v.as_f64()
        .unwrap_or_else(|| panic!("{what} is not a number: {v}"))
}

fn is_arr<'a>(v: &'a Value, what: &str) -> &'a Vec<Value> {
    v.as_array()
        .unwrap_or_else(|| panic!("{what} is not an array: {v}"))
}

fn is_obj(v: &Value, what: &str) {
    assert!(v.is_object(), "{what} is not an object: {v}");
}

fn name_value_list(v: &Value, what: &str) -> Vec<(String, String)> {
    is_arr(v, what)
        .iter()
        .map(|nv| {
            is_obj(nv, what);
            (
                is_str(&nv["name"], &format!("{what}.name")),
                is_str(&nv["value"], &format!("{what}.value")),
            )
        })
        .collect()
}

/// Checks the HAR 1.2 structure (required fields and their types) of the
/// whole log; returns its entries.
fn check_har_1_2(har: &Value) -> Vec<Value> {
    is_obj(har, "the document");
    let log = &har["log"];
    is_obj(log, "log");
    assert_eq!(log["version"], "1.2");
    is_obj(&log["creator"], "log.creator");
    assert_eq!(log["creator"]["name"], "wstap");
    assert!(!is_str(&log["creator"]["version"], "creator.version").is_empty());
    is_arr(&log["pages"], "log.pages");
    let entries = is_arr(&log["entries"], "log.entries").clone();
    for (i, e) in entries.iter().enumerate() {
        let w = |f: &str| format!("entries[{i}].{f}");
        is_obj(e, &w(""));
        let started = is_str(&e["startedDateTime"], &w("startedDateTime"));
        humantime::parse_rfc3339(&started).unwrap_or_else(|err| {
            panic!(
                "{}: {started:?} is not ISO 8601: {err}",
                w("startedDateTime")
            )
        });
        let time = is_num(&e["time"], &w("time"));
        assert!(time >= 0.0, "{}", w("time"));

        let rq = &e["request"];
        is_obj(rq, &w("request"));
        assert!(!is_str(&rq["method"], &w("request.method")).is_empty());
        let url = is_str(&rq["url"], &w("request.url"));
        assert!(
            ["http://", "https://", "ws://", "wss://"]
                .iter()
                .any(|s| url.starts_with(s)),
            "{}: {url} is not absolute",
            w("request.url")
        );
        assert!(is_str(&rq["httpVersion"], &w("request.httpVersion")).starts_with("HTTP/"));
        name_value_list(&rq["headers"], &w("request.headers"));
        name_value_list(&rq["queryString"], &w("request.queryString"));
        is_arr(&rq["cookies"], &w("request.cookies"));
        assert!(is_num(&rq["headersSize"], &w("request.headersSize")) >= -1.0);
        assert!(is_num(&rq["bodySize"], &w("request.bodySize")) >= -1.0);

        let rs = &e["response"];
        is_obj(rs, &w("response"));
        let status = is_num(&rs["status"], &w("response.status"));
        assert!((0.0..600.0).contains(&status));
        is_str(&rs["statusText"], &w("response.statusText"));
        is_str(&rs["httpVersion"], &w("response.httpVersion"));
        name_value_list(&rs["headers"], &w("response.headers"));
        is_arr(&rs["cookies"], &w("response.cookies"));
        is_obj(&rs["content"], &w("response.content"));
        assert!(is_num(&rs["content"]["size"], &w("response.content.size")) >= 0.0);
        is_str(&rs["content"]["mimeType"], &w("response.content.mimeType"));
        is_str(&rs["redirectURL"], &w("response.redirectURL"));
        assert!(is_num(&rs["headersSize"], &w("response.headersSize")) >= -1.0);
        assert!(is_num(&rs["bodySize"], &w("response.bodySize")) >= -1.0);

        is_obj(&e["cache"], &w("cache"));
        let t = &e["timings"];
        is_obj(t, &w("timings"));
        let mut sum = 0.0;
        for f in ["send", "wait", "receive"] {
            let v = is_num(&t[f], &w(&format!("timings.{f}")));
            assert!(v >= 0.0, "HAR 1.2: timings.{f} may not be -1");
            sum += v;
        }
        for f in ["blocked", "dns", "connect", "ssl"] {
            let v = is_num(&t[f], &w(&format!("timings.{f}")));
            assert!(v >= -1.0);
            if v > 0.0 {
                sum += v;
            }
        }
        assert!(
            (sum - time).abs() < 1e-6,
            "{}: time {time} is not the sum of timings {sum}",
            w("time")
        );
        assert!(is_str(&e["connection"], &w("connection"))
            .parse::<u64>()
            .is_ok());
        if let Some(ip) = e.get("serverIPAddress") {
            is_str(ip, &w("serverIPAddress"))
                .parse::<std::net::IpAddr>()
                .unwrap_or_else(|_| panic!("{}: {ip}", w("serverIPAddress")));
        }
        if let Some(ms) = e.get("_webSocketMessages") {
            assert_eq!(e["_resourceType"], "websocket");
            for (j, m) in is_arr(ms, &w("_webSocketMessages")).iter().enumerate() {
                let mw = |f: &str| w(&format!("_webSocketMessages[{j}].{f}"));
                let kind = is_str(&m["type"], &mw("type"));
                assert!(kind == "send" || kind == "receive", "{kind}");
                assert!(is_num(&m["time"], &mw("time")) > 1e9, "epoch seconds");
                assert!(m["opcode"].is_u64(), "{}", mw("opcode"));
                is_str(&m["data"], &mw("data"));
            }
        }
    }
    entries
}

/// `(type, opcode, data)` of an entry's messages.
fn message_shape(e: &Value) -> Vec<(String, u64, String)> {
    is_arr(&e["_webSocketMessages"], "_webSocketMessages")
        .iter()
        .map(|m| {
            (
                is_str(&m["type"], "type"),
                m["opcode"].as_u64().unwrap(),
                is_str(&m["data"], "data"),
            )
        })
        .collect()
}

fn shape(list: &[(&str, u64, &str)]) -> Vec<(String, u64, String)> {
    list.iter()
        .map(|(t, o, d)| (t.to_string(), *o, d.to_string()))
        .collect()
}

async fn echo_round(ws: &mut Ws, m: Message) {
    within("send", ws.send(m.clone())).await.unwrap();
    assert_eq!(next_msg(ws).await, m);
}

/// Polls the file until `done` holds for its JSON, for at most `limit`.
async fn poll_file(path: &Path, limit: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let v = read_har(path);
        if done(&v) || Instant::now() >= deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn entries_len(v: &Value) -> usize {
    v["log"]["entries"].as_array().map_or(0, Vec::len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_and_http_through_the_proxy_make_a_chrome_har() {
    const LIMIT: usize = 100;
    let dir = scratch("inproc");
    let path = dir.join("capture.har");
    let echo = echo_server(EchoOptions::default()).await;
    let sink = HarSink::create(&path, HarOptions::new(LIMIT)).unwrap();
    let before = SystemTime::now();
    let proxy = TestProxy::start_with_sinks(
        &format!("ws://{echo}"),
        |c| c.capture = capture_for(LIMIT),
        TrustOptions::default(),
        vec![Box::new(sink)],
    )
    .await;

    let (mut ws, _) = ws_client(proxy.addr, "/echo?room=7", &[]).await;
    echo_round(&mut ws, Message::text("hello")).await;
    echo_round(&mut ws, Message::binary(vec![0u8, 1, 2, 255])).await;
    for (part, op, fin) in [
        ("hello ", Data::Text, false),
        ("fragmented ", Data::Continue, false),
        ("world", Data::Continue, true),
    ] {
        let f = Frame::message(Bytes::from(part), OpCode::Data(op), fin);
        within("a fragment", ws.send(Message::Frame(f)))
            .await
            .unwrap();
    }
    assert_eq!(
        next_msg(&mut ws).await,
        Message::text("hello fragmented world")
    );
    within("ping", ws.send(Message::Ping(Bytes::from_static(b"p1"))))
        .await
        .unwrap();
    assert_eq!(
        next_msg(&mut ws).await,
        Message::Pong(Bytes::from_static(b"p1"))
    );
    let long_text = text_pattern(300);
    echo_round(&mut ws, Message::text(long_text.clone())).await;
    let long_bin = pattern(3 * LIMIT + 1);
    echo_round(&mut ws, Message::binary(long_bin.clone())).await;
    within("close", ws.close(None)).await.unwrap();
    while let Some(Ok(_)) = within("the close reply", ws.next()).await {}
    drop(ws);
    proxy.wait_closes(1).await;
    let closed_at = Instant::now();

    // the connection's end reaches the disk within about a second, before
    // the proxy stops
    let on_disk = poll_file(&path, Duration::from_secs(2), |v| entries_len(v) == 1).await;
    assert_eq!(entries_len(&on_disk), 1, "{on_disk:#}");
    assert!(
        closed_at.elapsed() < Duration::from_millis(1500),
        "took {:?}",
        closed_at.elapsed()
    );

    // an ordinary GET on its own connection
    let mut c = within("connect", tokio::net::TcpStream::connect(proxy.addr))
        .await
        .unwrap();
    let get = format!(
        "GET /page?x=1&y=two HTTP/1.1\r\nHost: {}\r\nX-Test: a\r\nConnection: close\r\n\r\n",
        proxy.addr
    );
    within("GET", c.write_all(get.as_bytes())).await.unwrap();
    let mut answer = Vec::new();
    within("the page", c.read_to_end(&mut answer))
        .await
        .unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 200"));
    let body_len = answer.len() - answer.windows(4).position(|w| w == b"\r\n\r\n").unwrap() - 4;
    proxy.wait_closes(2).await;
    let addr = proxy.addr;
    let evs = proxy.stop().await;
    let after = SystemTime::now();

    let har = read_har(&path);
    let entries = check_har_1_2(&har);
    assert_eq!(entries.len(), 2, "{har:#}\nevents:\n{}", dump(&evs));
    let (ws_e, http_e) = (&entries[0], &entries[1]);

    // the WebSocket entry
    assert_eq!(ws_e["_resourceType"], "websocket");
    assert_eq!(ws_e["request"]["method"], "GET");
    assert_eq!(ws_e["request"]["url"], format!("ws://{}/echo?room=7", addr));
    assert_eq!(
        name_value_list(&ws_e["request"]["queryString"], "queryString"),
        [("room".to_string(), "7".to_string())]
    );
    let req_headers = name_value_list(&ws_e["request"]["headers"], "headers");
    let hs = &handshakes(&evs)[0];
    assert_eq!(
        req_headers,
        hs.client_request.as_ref().unwrap().headers,
        "headers in wire order, as the client sent them"
    );
    assert_eq!(ws_e["response"]["status"], 101);
    assert_eq!(ws_e["response"]["statusText"], "Switching Protocols");
    assert_eq!(ws_e["serverIPAddress"], "127.0.0.1");
    let conn_id = evs.iter().find_map(|e| e.conn).unwrap();
    assert_eq!(ws_e["connection"], conn_id.0.to_string());
    let cut_text = &long_text[..LIMIT];
    let long_bin_b64 = b64(&long_bin[..LIMIT]);
    let p1 = b64(b"p1");
    let bin4 = b64(&[0, 1, 2, 255]);
    assert_eq!(
        message_shape(ws_e),
        shape(&[
            ("send", 1, "hello"),
            ("receive", 1, "hello"),
            ("send", 2, &bin4),
            ("receive", 2, &bin4),
            ("send", 1, "hello fragmented world"),
            ("receive", 1, "hello fragmented world"),
            ("send", 9, &p1),
            ("receive", 10, &p1),
            ("send", 1, cut_text),
            ("receive", 1, cut_text),
            ("send", 2, &long_bin_b64),
            ("receive", 2, &long_bin_b64),
            ("send", 8, ""),
            ("receive", 8, ""),
        ])
    );
    let msgs = is_arr(&ws_e["_webSocketMessages"], "messages");
    for (i, m) in msgs.iter().enumerate() {
        let cut = (8..12).contains(&i);
        assert_eq!(
            m.get("_truncated").and_then(Value::as_bool),
            cut.then_some(true),
            "message {i}: {m}"
        );
        let full = if i < 10 { 300 } else { long_bin.len() as u64 };
        assert_eq!(
            m.get("_length").and_then(Value::as_u64),
            cut.then_some(full),
            "message {i}: {m}"
        );
    }
    // epoch seconds, in order, within the test's run
    let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
    let times: Vec<f64> = msgs.iter().map(|m| m["time"].as_f64().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    assert!(
        times[0] >= secs(before) && times[times.len() - 1] <= secs(after),
        "{times:?}"
    );

    // the HTTP entry
    assert!(http_e.get("_resourceType").is_none());
    assert!(http_e.get("_webSocketMessages").is_none());
    assert_eq!(http_e["request"]["method"], "GET");
    assert_eq!(
        http_e["request"]["url"],
        format!("http://{}/page?x=1&y=two", addr)
    );
    assert_eq!(
        name_value_list(&http_e["request"]["queryString"], "queryString"),
        [
            ("x".to_string(), "1".to_string()),
            ("y".to_string(), "two".to_string())
        ]
    );
    assert_eq!(
        name_value_list(&http_e["request"]["headers"], "headers"),
        [
            ("Host".to_string(), addr.to_string()),
            ("X-Test".to_string(), "a".to_string()),
            ("Connection".to_string(), "close".to_string())
        ]
    );
    assert_eq!(http_e["request"]["headersSize"], get.len());
    assert_eq!(http_e["request"]["bodySize"], 0);
    assert_eq!(http_e["response"]["status"], 200);
    assert_eq!(
        http_e["response"]["content"]["mimeType"],
        "text/html; charset=utf-8"
    );
    assert_eq!(http_e["response"]["bodySize"], body_len);
    assert_eq!(http_e["response"]["content"]["size"], body_len);
    assert!(http_e["time"].as_f64().unwrap() > 0.0);
    let started = humantime::parse_rfc3339(http_e["startedDateTime"].as_str().unwrap()).unwrap();
    assert!(started + Duration::from_millis(1) >= before && started <= after);

    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_failing_har_sink_is_switched_off_and_the_proxy_goes_on() {
    let dir = scratch("failing");
    let path = dir.join("sub").join("capture.har");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let sink = HarSink::create(&path, HarOptions::new(64)).unwrap();
    // the directory goes away: every later write fails
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    let echo = echo_server(EchoOptions::default()).await;
    let proxy = TestProxy::start_with_sinks(
        &format!("ws://{echo}"),
        |c| c.capture = capture_for(64),
        TrustOptions::default(),
        vec![Box::new(sink)],
    )
    .await;
    for i in 0..2 {
        let (mut ws, _) = ws_client(proxy.addr, "/echo", &[]).await;
        echo_round(&mut ws, Message::text(format!("m{i}"))).await;
        within("close", ws.close(None)).await.unwrap();
        while let Some(Ok(_)) = within("the close reply", ws.next()).await {}
    }
    // the collector beside it saw both connections to their end
    let evs = proxy.wait_closes(2).await;
    assert_eq!(frames(&evs).len(), 8, "{}", dump(&evs));
    let evs = proxy.stop().await;
    assert_eq!(closes(&evs).len(), 2);
    assert!(!path.exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn sigterm_mid_connection_leaves_a_complete_har() {
    let dir = scratch("sigterm");
    let path = dir.join("live.har");
    let echo = echo_server(EchoOptions::default()).await;
    let upstream = format!("ws://{echo}");
    let path_s = path.to_str().unwrap().to_string();
    let bin = BinProxy::reverse(
        &upstream,
        &[
            "--har",
            &path_s,
            "--har-max-payload",
            "1000",
            "--grace",
            "300ms",
            "--quiet",
        ],
    )
    .await;
    let (mut ws, _) = ws_client(bin.addr, "/live", &[]).await;
    let sent = ["first", "second", "third"];
    for m in sent {
        echo_round(&mut ws, Message::text(m)).await;
    }
    echo_round(&mut ws, Message::binary(pattern(1500))).await;
    // no connection has ended yet: the file is the empty one from startup
    let early = read_har(&path);
    assert_eq!(entries_len(&early), 0, "{early:#}");

    let args = bin.args.clone();
    let addr = bin.addr;
    let (status, stderr) = bin.terminate().await;
    assert!(
        status.success(),
        "wstap {args:?} exited with {status:?} after SIGTERM\n--- stderr\n{stderr}"
    );
    drop(ws);

    let har = read_har(&path);
    let entries = check_har_1_2(&har);
    assert_eq!(entries.len(), 1, "{har:#}\n--- stderr\n{stderr}");
    let e = &entries[0];
    assert_eq!(e["request"]["url"], format!("ws://{addr}/live"));
    assert_eq!(e["response"]["status"], 101);
    let got = message_shape(e);
    let cut = b64(&pattern(1000));
    let want = shape(&[
        ("send", 1, "first"),
        ("receive", 1, "first"),
        ("send", 1, "second"),
        ("receive", 1, "second"),
        ("send", 1, "third"),
        ("receive", 1, "third"),
        ("send", 2, &cut),
        ("receive", 2, &cut),
    ]);
    // the grace period may end with close frames wstap or the peers sent
    assert!(got.len() >= want.len(), "{got:?}");
    assert_eq!(got[..want.len()], want[..], "{har:#}");
    let msgs = is_arr(&e["_webSocketMessages"], "messages");
    assert_eq!(msgs[6]["_truncated"], true);
    assert_eq!(msgs[6]["_length"], 1500);
    assert!(
        got[want.len()..].iter().all(|(_, op, _)| *op == 8),
        "{got:?}"
    );
    assert!(!std::fs::read_dir(&dir).unwrap().any(|f| f
        .unwrap()
        .file_name()
        .to_string_lossy()
        .ends_with(".tmp")));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn har_flags_are_validated_at_startup() {
    let dir = scratch("flags");
    let missing = dir.join("no-such-dir").join("x.har");
    let (_, _, err) = run_bin(
        &[
            "proxy",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            "ws://127.0.0.1:9",
            "--har",
            missing.to_str().unwrap(),
        ],
        Some(2),
    );
    assert!(err.contains("--har"), "{err}");
    let ok = dir.join("x.har");
    let (_, _, err) = run_bin(
        &[
            "proxy",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            "ws://127.0.0.1:9",
            "--har",
            ok.to_str().unwrap(),
            "--har-max-payload",
            "100000000",
        ],
        Some(2),
    );
    assert!(err.contains("--har-max-payload"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
