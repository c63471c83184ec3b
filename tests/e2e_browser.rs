//! A real browser through forward mode: headless Chromium uses wstap as
//! its HTTP proxy and trusts wstap's CA by its SPKI hash, loads an HTTPS
//! page from a local server (with its own test CA, which wstap trusts as an
//! upstream root), and the page's script talks permessage-deflate over
//! `wss://` to that server. The test checks what the page saw (its report)
//! and what wstap logged: the extension negotiation and inflated previews of
//! Chromium's compressed frames and the server's, in both directions.
//!
//! Skipped with a notice when Chromium is missing; a failure under
//! `WSTAP_E2E=require`.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::chromium::{loopback_gate, Chromium, Launch};
use common::*;
use wstap::proto::event::{ConnId, Dir, Event, EventKind, FrameEvent, Handshake};
use wstap::proxy::{ForwardOptions, Mode};
use wstap::sink::terminal::TerminalSink;
use wstap::tls::ca::LocalCa;
use wstap::tls::client::TrustOptions;
use wstap::tls::leaf::LeafMinter;
use wstap::tls::server::Interceptor;

/// How long the page may take from Chromium's start to its report: a
/// browser starting on a busy two-core machine takes seconds, not minutes.
const PAGE: Duration = Duration::from_secs(90);

/// How long Chromium gets to start before it opens the page.
const SETTLE: Duration = Duration::from_secs(2);

/// The two WebSockets the page opens: permessage-deflate with context
/// takeover both ways (what most servers agree to), and with the server
/// resetting its context per message.
const PATHS: [(&str, &str); 2] = [
    ("/ws", "permessage-deflate"),
    (
        "/ws?pmd=server_no_context_takeover",
        "permessage-deflate; server_no_context_takeover",
    ),
];

/// A sentence repeated: deflate shrinks it well, and sent twice with
/// context takeover the second copy is a back-reference of a few bytes.
fn repeated() -> String {
    "wstap inflates what the browser compressed. ".repeat(5)
}

/// Longer than the preview limit (256 bytes): the preview is its start.
fn long() -> String {
    (0..400)
        .map(|i| format!("{{\"seq\":{i},\"kind\":\"tick\",\"note\":\"compressible\"}}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn messages() -> Vec<String> {
    vec![
        "hello through wstap".into(),
        repeated(),
        repeated(),
        "grüße ✓ unicode survives inflation".into(),
        long(),
    ]
}

fn page() -> String {
    let messages = serde_json::to_string(&messages()).unwrap();
    let paths = serde_json::to_string(&PATHS.map(|(p, _)| p)).unwrap();
    format!(
        r#"<!doctype html>
<meta charset="utf-8">
<title>wstap browser test</title>
<script>
const messages = {messages};
const paths = {paths};
// one WebSocket: send every message, wait for every echo, close cleanly
function talk(path) {{
  return new Promise((resolve) => {{
    const got = [];
    const ws = new WebSocket(`wss://${{location.host}}${{path}}`);
    ws.onopen = () => messages.forEach((m) => ws.send(m));
    ws.onmessage = (e) => {{
      got.push(e.data);
      if (got.length === messages.length) ws.close(1000, "done");
    }};
    ws.onclose = (e) => resolve({{ path, extensions: ws.extensions, got, code: e.code, clean: e.wasClean }});
  }});
}}
async function report(body) {{
  await fetch("/done", {{ method: "POST", body: JSON.stringify(body) }});
}}
(async () => {{
  const results = [];
  for (const p of paths) results.push(await talk(p));
  await report({{ results }});
}})().catch((e) => report({{ error: String(e) }}));
</script>
<p>wstap browser test</p>
"#
    )
}

/// A `Write` the terminal sink can own while the test reads it.
#[derive(Clone, Default)]
struct SharedBuf(Arc<Mutex<Vec<u8>>>);

impl Write for SharedBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl SharedBuf {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Owns Chromium; when the test panics (an assertion, a timeout) it prints
/// everything needed to see why: Chromium's stderr, the server's log,
/// wstap's human log and its events.
struct Diagnostics {
    chromium: Chromium,
    server_log: Arc<Mutex<Vec<String>>>,
    human: SharedBuf,
    events: wstap::sink::collect::Collected,
    refused: Arc<Mutex<Vec<String>>>,
}

impl Diagnostics {
    fn stop_chromium(&mut self) {
        if let Some(c) = self.chromium.child() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Diagnostics {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- chromium stderr\n{}\n--- refused by the gate\n{}\n--- test server log\n{}\n--- wstap log\n{}\n--- wstap events\n{}",
                self.chromium.stderr(),
                self.refused.lock().unwrap().join("\n"),
                self.server_log.lock().unwrap().join("\n"),
                self.human.text(),
                dump(&self.events.snapshot())
            );
        }
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// The WebSocket handshakes and their connection ids.
fn websockets(evs: &[Event]) -> Vec<(ConnId, Handshake)> {
    evs.iter()
        .filter_map(|e| match (&e.kind, e.conn) {
            (EventKind::Handshake(h), Some(c)) => Some((c, (**h).clone())),
            _ => None,
        })
        .collect()
}

/// Whether connection `conn` has ended (its `close` event is in).
fn closed(evs: &[Event], conn: ConnId) -> bool {
    evs.iter()
        .any(|e| e.conn == Some(conn) && matches!(e.kind, EventKind::Close(_)))
}

fn frames_of(evs: &[Event], conn: ConnId, from: Dir) -> Vec<FrameEvent> {
    evs.iter()
        .filter(|e| e.conn == Some(conn))
        .filter_map(|e| match &e.kind {
            EventKind::Frame(f) if f.from == from => Some(f.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_through_forward_mode_with_permessage_deflate() {
    // the page's server, with a CA of its own that only wstap trusts
    let server_ca = TestCa::new("browser test server");
    let mut server = deflate_echo::start(server_ca.server_config(&["127.0.0.1"]), page()).await;
    let dir = TempDir::new("browser");
    let server_ca_pem = server_ca.write(&dir, "server-ca.pem");

    // wstap in forward mode with a CA made for this test
    let (ca, _) = LocalCa::load_or_create(&dir.path("wstap-ca")).unwrap();
    let spki = ca.spki_sha256();
    let interceptor = Arc::new(Interceptor::new(Arc::new(LeafMinter::new(ca))));
    let human = SharedBuf::default();
    let proxy = TestProxy::start_with_sinks(
        "ws://127.0.0.1:1",
        |c| {
            c.mode = Mode::Forward(ForwardOptions {
                interceptor,
                no_intercept: Vec::new(),
            })
        },
        TrustOptions {
            extra_roots: vec![server_ca_pem],
            insecure: false,
        },
        vec![Box::new(TerminalSink::new(Box::new(human.clone()), false))],
    )
    .await;

    // Chromium's own requests to Google hosts stop at the gate
    let gate = loopback_gate(proxy.addr).await;
    let Some(chromium) = Chromium::start(Launch {
        proxy: Some(format!("http://{}", gate.addr)),
        trust_spki: vec![spki],
        extra: Vec::new(),
        // Chromium flushes its connections once while starting (its net
        // log shows the first handshake aborted, ERR_ABORTED, a few hundred
        // ms in) and drops a handshake in flight without an alert, which
        // wstap cannot tell from a client refusing the certificate
        // silently. So the page is opened after start-up, from a blank one.
        url: format!(
            "data:text/html,<script>setTimeout(()=>location='https://127.0.0.1:{}/',{})</script>",
            server.addr.port(),
            SETTLE.as_millis()
        ),
    }) else {
        return;
    };
    let mut diag = Diagnostics {
        chromium,
        server_log: server.log.clone(),
        human: human.clone(),
        events: proxy.events.clone(),
        refused: gate.refused.clone(),
    };

    // (a) what the page saw
    let report = match tokio::time::timeout(PAGE, server.reports.recv()).await {
        Ok(Some(r)) => r,
        _ => panic!("no report from the page within {PAGE:?}"),
    };
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert!(report.get("error").is_none(), "the page failed: {report}");
    let results = report["results"].as_array().unwrap();
    assert_eq!(results.len(), PATHS.len(), "{report}");
    for (r, (path, accepted)) in results.iter().zip(PATHS) {
        assert_eq!(r["path"], path);
        let got: Vec<String> = serde_json::from_value(r["got"].clone()).unwrap();
        assert_eq!(got, messages(), "echoes the page saw on {path}");
        assert_eq!(
            r["extensions"], accepted,
            "what Chromium agreed to on {path}"
        );
        assert_eq!(
            (r["code"].as_u64(), r["clean"].as_bool()),
            (Some(1000), Some(true))
        );
    }

    // (b) what wstap logged
    let evs = proxy
        .wait("both WebSockets to close and the report", |evs| {
            let ws = websockets(evs);
            ws.len() >= PATHS.len()
                && ws.iter().all(|(c, _)| closed(evs, *c))
                && https(evs).iter().any(|h| h.target == "/done")
        })
        .await;
    let ws = websockets(&evs);
    assert_eq!(ws.len(), PATHS.len());
    let sent = messages();
    for (path, accepted) in PATHS {
        let (conn, h) = ws
            .iter()
            .find(|(_, h)| h.client_request.as_ref().map(|r| r.target.as_str()) == Some(path))
            .unwrap_or_else(|| panic!("no handshake for {path}"));
        let req = h.client_request.as_ref().unwrap();
        let offer = header(&req.headers, "sec-websocket-extensions").unwrap_or("");
        assert!(
            offer.contains("permessage-deflate"),
            "Chromium's offer: {offer:?}"
        );
        let resp = h.upstream_response.as_ref().unwrap();
        assert_eq!(resp.status, 101);
        assert_eq!(
            header(&resp.headers, "sec-websocket-extensions"),
            Some(accepted)
        );
        assert_eq!(h.client_response.as_ref().map(|r| r.status), Some(101));

        for from in [Dir::ClientToServer, Dir::ServerToClient] {
            let fs = frames_of(&evs, *conn, from);
            let data: Vec<&FrameEvent> = fs.iter().filter(|f| !f.opcode.is_control()).collect();
            assert_eq!(
                data.len(),
                sent.len(),
                "{path} {from:?}: one frame per message"
            );
            for (f, text) in data.iter().zip(&sent) {
                let what = format!("{path} {from:?} {text:.30}");
                assert_eq!(f.opcode.name(), "text", "{what}");
                assert!(f.fin && f.rsv1 && f.compressed, "{what}: {f:?}");
                assert_eq!(f.masked, from == Dir::ClientToServer, "{what}");
                assert_eq!(f.note, None, "{what}");
                if text.len() <= 256 {
                    assert_eq!(&f.preview, text, "{what}");
                    assert!(!f.truncated, "{what}");
                } else {
                    // the preview is the inflated text's start, cut at the limit
                    assert!(f.truncated, "{what}");
                    assert!(f.preview.len() > 200, "{what}: {:?}", f.preview);
                    assert!(text.starts_with(&f.preview), "{what}: {:?}", f.preview);
                }
                // compression is visible: the wire carries fewer bytes
                if text.len() > 100 {
                    assert!((f.len as usize) < text.len() / 2, "{what}: {} B", f.len);
                }
            }
            // the repeated message: with context takeover the sender refers
            // back to the first copy; previews stayed right either way
            let (first, second) = (data[1].len, data[2].len);
            let keeps_context = from == Dir::ClientToServer || path == "/ws";
            assert_eq!(
                second < first / 2,
                keeps_context,
                "{path} {from:?}: {first} B then {second} B"
            );
            let close = fs.iter().find(|f| f.close_code.is_some());
            assert_eq!(
                close.and_then(|f| f.close_code),
                Some(1000),
                "{path} {from:?}"
            );
        }
    }
    let http = https(&evs);
    assert!(http
        .iter()
        .any(|h| h.method == "GET" && h.target == "/" && h.status == 200));
    assert!(http
        .iter()
        .any(|h| h.method == "POST" && h.target == "/done" && h.status == 200));
    // wstap was asked for the test server only: the gate stopped the rest
    for h in http.iter().filter(|h| h.method == "CONNECT") {
        assert_eq!(h.target, server.addr.to_string(), "{}", dump(&evs));
    }

    // Chromium goes away as a browser does: its keep-alive and spare
    // connections end without TLS close_notify. That is a close, not an
    // error, and nothing in the whole run was a finding.
    diag.stop_chromium();
    let evs = proxy
        .wait("every connection to close", |evs| {
            evs.iter().filter_map(|e| e.conn).all(|c| closed(evs, c))
        })
        .await;
    let errors: Vec<&Event> = evs
        .iter()
        .filter(|e| matches!(e.kind, EventKind::Error(_)))
        .collect();
    assert!(errors.is_empty(), "{errors:?}");
    assert!(findings(&evs).is_empty(), "{:?}", findings(&evs));

    // the human log, for the README and for anyone running with --nocapture
    drop(diag);
    let _ = proxy.stop().await;
    eprintln!(
        "--- wstap log\n{}\n--- refused by the gate\n{}",
        human.text(),
        gate.refused.lock().unwrap().join("\n")
    );
}
