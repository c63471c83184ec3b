//! Credentials are hidden in every output by default (NDJSON, HAR, the
//! terminal log) while the upstream receives them unchanged; with
//! `--show-secrets` the outputs show them.

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use tokio::net::TcpStream;

/// Secrets the client and the upstream send; none may reach an output.
const SECRETS: &[&str] = &[
    "AUTHs3cr3t",
    "COOKIEs3cr3t",
    "QUERYs3cr3t",
    "APIKEYs3cr3t",
    "HEADERs3cr3t",
    "SETCOOKIEs3cr3t",
    "USERPASSs3cr3t",
];

const WS_REQUEST: &str = "GET /ws?room=1&token=QUERYs3cr3t HTTP/1.1\r\nHost: app.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer AUTHs3cr3t\r\nCookie: sid=COOKIEs3cr3t; theme=dark\r\n\r\n";
const HTTP_REQUEST: &str = "GET /api/items?api_key=APIKEYs3cr3t&page=2 HTTP/1.1\r\nHost: app.test\r\nX-Api-Key: HEADERs3cr3t\r\nProxy-Authorization: Basic USERPASSs3cr3t\r\nConnection: close\r\n\r\n";

/// An upstream that records each request head and answers a WebSocket
/// handshake with 101 and anything else with 200, both setting a cookie.
async fn recording_upstream() -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>) {
    let heads = Arc::new(Mutex::new(Vec::new()));
    let store = heads.clone();
    let addr = scripted_upstream(move |mut s| {
        let store = store.clone();
        async move {
            let head = String::from_utf8_lossy(&read_head(&mut s).await).into_owned();
            let ws = head.contains("Sec-WebSocket-Key");
            store.lock().unwrap().push(head);
            if ws {
                let accept = wstap::proto::handshake::accept_key("dGhlIHNhbXBsZSBub25jZQ==");
                let resp = format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\nSet-Cookie: sid=SETCOOKIEs3cr3t; Path=/; HttpOnly\r\n\r\n");
                send(&mut s, resp.as_bytes()).await;
                // a server text frame "hi", then the close handshake
                send(&mut s, b"\x81\x02hi\x88\x02\x03\xe8").await;
                let _ = read_all(&mut s).await;
            } else {
                send(&mut s, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nSet-Cookie: sid=SETCOOKIEs3cr3t; Path=/\r\nConnection: close\r\n\r\nok").await;
            }
        }
    })
    .await;
    (addr, heads)
}

struct Outputs {
    json: String,
    har: String,
    stderr: String,
}

/// Runs the binary, sends one upgrade and one plain request with secrets,
/// and returns what reached the upstream and every output.
async fn run(extra: &[&str]) -> (Vec<String>, Outputs) {
    let (up, heads) = recording_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("events.jsonl");
    let har = dir.path().join("capture.har");
    let upstream = format!("ws://{up}");
    let mut args = vec![
        "proxy",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        &upstream,
        "--json",
        json.to_str().unwrap(),
        "--har",
        har.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let proxy = BinProxy::start(&args).await;

    let mut c = within("connect", TcpStream::connect(proxy.addr))
        .await
        .unwrap();
    send(&mut c, WS_REQUEST.as_bytes()).await;
    let head = String::from_utf8_lossy(&read_head(&mut c).await).into_owned();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.contains("sid=SETCOOKIEs3cr3t"),
        "the client gets the real cookie: {head}"
    );
    // the server's "hi" and close reach the client; answer the close
    let frames = read_n(&mut c, 8).await;
    assert_eq!(frames, b"\x81\x02hi\x88\x02\x03\xe8");
    send(&mut c, b"\x88\x82\x00\x00\x00\x00\x03\xe8").await;
    drop(c);

    let mut h = within("connect", TcpStream::connect(proxy.addr))
        .await
        .unwrap();
    send(&mut h, HTTP_REQUEST.as_bytes()).await;
    let resp = String::from_utf8_lossy(&read_all(&mut h).await).into_owned();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("sid=SETCOOKIEs3cr3t"), "{resp}");

    let (status, stderr) = proxy.terminate().await;
    assert!(status.success(), "exit {status:?}\n{stderr}");
    let json = std::fs::read_to_string(&json).unwrap();
    for line in json.lines() {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("bad NDJSON line {line:?}: {e}"));
    }
    let har = std::fs::read_to_string(&har).unwrap();
    serde_json::from_str::<serde_json::Value>(&har).expect("the HAR parses");
    let heads = heads.lock().unwrap().clone();
    (heads, Outputs { json, har, stderr })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_reach_the_upstream_but_no_output() {
    let (heads, out) = run(&[]).await;
    // forwarding is untouched: the upstream got every secret the client sent
    assert_eq!(heads.len(), 2, "{heads:?}");
    assert_eq!(
        heads[0], WS_REQUEST,
        "the upgrade is forwarded byte for byte"
    );
    assert_eq!(heads[1], HTTP_REQUEST);

    for (name, text) in [
        ("NDJSON", &out.json),
        ("HAR", &out.har),
        ("terminal", &out.stderr),
    ] {
        for s in SECRETS {
            assert!(!text.contains(s), "{name} output shows {s}:\n{text}");
        }
    }
    // and each says what it hid, with the sizes (the terminal shows an
    // ordinary request as one line, without headers)
    let handshake_parts = [
        "Bearer <redacted 10 bytes>",
        "sid=<redacted 12 bytes>; theme=<redacted 4 bytes>",
        "token=<redacted 11 bytes>",
        "room=1",
        "sid=<redacted 15 bytes>; Path=/; HttpOnly",
        "api_key=<redacted 12 bytes>&page=2",
    ];
    let http_headers = [
        "<redacted 12 bytes>\"]",
        "Basic <redacted 14 bytes>",
        "sid=<redacted 15 bytes>; Path=/\"]",
    ];
    for want in handshake_parts.iter().chain(&http_headers) {
        assert!(
            out.json.contains(want),
            "NDJSON lacks {want:?}:\n{}",
            out.json
        );
    }
    for want in handshake_parts {
        assert!(
            out.stderr.contains(want),
            "terminal lacks {want:?}:\n{}",
            out.stderr
        );
    }
    let har: serde_json::Value = serde_json::from_str(&out.har).unwrap();
    let entries = har["log"]["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    let url = entries[0]["request"]["url"].as_str().unwrap();
    assert!(
        url.ends_with("/ws?room=1&token=<redacted 11 bytes>"),
        "{url}"
    );
    let query = &entries[0]["request"]["queryString"];
    assert!(
        query
            .as_array()
            .unwrap()
            .iter()
            .any(|q| q["name"] == "token" && q["value"] == "<redacted 11 bytes>"),
        "{query}"
    );
    // the message itself is payload and stays visible
    assert!(out.json.contains(r#""preview":"hi""#));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_secrets_turns_redaction_off() {
    let (heads, out) = run(&["--show-secrets"]).await;
    assert_eq!(heads[0], WS_REQUEST);
    for s in SECRETS {
        assert!(out.json.contains(s), "NDJSON lacks {s}");
    }
    for s in ["AUTHs3cr3t", "COOKIEs3cr3t", "QUERYs3cr3t", "APIKEYs3cr3t"] {
        assert!(out.stderr.contains(s), "terminal lacks {s}");
    }
    assert!(!out.json.contains("<redacted"));
    assert!(out.har.contains("QUERYs3cr3t") && out.har.contains("AUTHs3cr3t"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewritten_credential_is_forwarded_but_hidden_in_the_rewrite_notes() {
    let (heads, out) = run(&[
        "--set-request-header",
        "Authorization: Bearer REWRITEs3cr3t",
    ])
    .await;
    // the rule applies to what is forwarded...
    assert!(
        heads[0].contains("Authorization: Bearer REWRITEs3cr3t\r\n"),
        "{}",
        heads[0]
    );
    assert!(heads[1].contains("Authorization: Bearer REWRITEs3cr3t\r\n"));
    // ...and no output shows the new value or the old one, notes included
    for (name, text) in [
        ("NDJSON", &out.json),
        ("HAR", &out.har),
        ("terminal", &out.stderr),
    ] {
        for s in SECRETS.iter().chain(&["REWRITEs3cr3t"]) {
            assert!(!text.contains(s), "{name} output shows {s}:\n{text}");
        }
    }
    assert!(
        out.json.contains("header-rewritten")
            && out.json.contains(
                "set Authorization: Bearer <redacted 13 bytes> (was <redacted 17 bytes>)"
            ),
        "{}",
        out.json
    );
}
