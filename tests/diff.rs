//! `wstap diff` through the binary: the NDJSON logs of two wstap taps
//! around a real nginx (client -> wstap front -> nginx -> wstap back ->
//! lenient echo), in nginx's default configuration and in the standard
//! WebSocket one; and the exit codes on logs without pairs, damaged lines
//! and missing files. The nginx tests are skipped with a notice when nginx
//! is missing, failed under WSTAP_E2E=require.

mod common;

use std::path::{Path, PathBuf};

use common::nginx::{default_config, websocket_config, Nginx};
use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// Runs `wstap diff ARGS` off the runtime's threads; asserts the exit code.
async fn diff(args: &[&str], expect: i32) -> (String, String) {
    let mut all = vec!["diff".to_string()];
    all.extend(args.iter().map(|s| s.to_string()));
    let (_, out, err) = within(
        "wstap diff",
        tokio::task::spawn_blocking(move || {
            let refs: Vec<&str> = all.iter().map(String::as_str).collect();
            run_bin(&refs, Some(expect))
        }),
    )
    .await
    .expect("wstap diff ran");
    (out, err)
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 temp path")
}

/// client -> wstap (front) -> nginx with `location` -> wstap (back) ->
/// lenient echo; one WebSocket through it all, then both taps stopped.
/// Returns the two logs, or `None` without nginx.
async fn run_chain(
    location: impl FnOnce(std::net::SocketAddr) -> String,
    dir: &Path,
) -> Option<(PathBuf, PathBuf)> {
    let echo = lenient_echo().await;
    let back_log = dir.join("back.jsonl");
    let front_log = dir.join("front.jsonl");
    let back = BinProxy::start(&[
        "proxy",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        &format!("ws://{echo}"),
        "--json",
        path(&back_log),
        "--quiet",
        "--grace",
        "1s",
    ])
    .await;
    let nginx = Nginx::start(&location(back.addr)).await?;
    let front = BinProxy::start(&[
        "proxy",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        &format!("ws://{}", nginx.addr),
        "--json",
        path(&front_log),
        "--quiet",
        "--grace",
        "1s",
    ])
    .await;
    let (mut ws, _) = ws_client(front.addr, "/chat", &[]).await;
    within("send", ws.send(Message::text("through the chain")))
        .await
        .unwrap();
    let back_msg = within("echo", ws.next())
        .await
        .expect("open")
        .expect("read");
    assert_eq!(back_msg, Message::text("through the chain"));
    within("close", ws.close(None)).await.unwrap();
    while let Some(Ok(_)) = within("close reply", ws.next()).await {}
    drop(ws);
    let (status, err) = front.terminate().await;
    assert!(status.success(), "front tap: {status:?}\n{err}");
    let (status, err) = back.terminate().await;
    assert!(status.success(), "back tap: {status:?}\n{err}");
    drop(nginx);
    Some((front_log, back_log))
}

fn has(list: &Value, item: Value) -> bool {
    list.as_array().is_some_and(|l| l.contains(&item))
}

fn codes(pair: &Value) -> Vec<String> {
    pair["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["code"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn around_default_nginx_diff_names_the_stripped_upgrade_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let Some((front, back)) = run_chain(default_config, dir.path()).await else {
        return;
    };
    let (out, _) = diff(&[path(&front), path(&back), "--json"], 0).await;
    let d: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(d["unpaired"], json!([]), "{d:#}");
    assert_eq!(d["skipped_lines"], json!({"front": 0, "back": 0}));
    let pairs = d["pairs"].as_array().unwrap();
    assert_eq!(pairs.len(), 1, "{d:#}");
    let p = &pairs[0];
    assert_eq!(p["key"].as_str().unwrap().len(), 24);
    assert_eq!(p["method"], "GET");
    assert_eq!(p["target"], json!({"front": "/chat", "back": "/chat"}));
    // what nginx's plain proxy_pass does to an upgrade
    assert!(has(&p["removed"], json!(["Upgrade", "websocket"])), "{p:#}");
    assert!(
        has(&p["changed"], json!(["Connection", "Upgrade", "close"])),
        "{p:#}"
    );
    assert_eq!(
        p["version"],
        json!({"front": "HTTP/1.1", "back": "HTTP/1.0"})
    );
    // the Sec-WebSocket-* headers pass (that is how the pair was found)
    for h in p["removed"].as_array().unwrap() {
        assert!(!h[0].as_str().unwrap().starts_with("Sec-WebSocket"), "{h}");
    }
    // the lenient backend accepted anyway, and nginx passed the 101 back
    assert_eq!(p["status"], json!({"front": 101, "back": 101}));
    assert!(
        p["response"]["added"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h[0] == "Server" && h[1].as_str().unwrap().starts_with("nginx")),
        "{p:#}"
    );
    assert_eq!(
        codes(p),
        [
            "upgrade-header-missing",
            "connection-upgrade-missing",
            "http-version-downgrade"
        ]
    );
    let summary = p["summary"].as_str().unwrap();
    assert!(summary.starts_with("the hop removed Upgrade"), "{summary}");
    assert!(
        summary.contains("downgraded to HTTP/1.0: nginx defaults"),
        "{summary}"
    );
    assert!(
        summary.contains("proxy_http_version 1.1; proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection \"upgrade\";"),
        "{summary}"
    );

    let (human, _) = diff(&[path(&front), path(&back)], 0).await;
    for want in [
        "1 pair, 0 unpaired handshakes",
        "GET /chat  key ",
        "version  HTTP/1.1 → HTTP/1.0",
        "- Upgrade: websocket",
        "~ Connection: Upgrade → close",
        "status   101 → 101",
        "+ Server: nginx",
        "error upgrade-header-missing",
        "=> the hop removed Upgrade",
    ] {
        assert!(human.contains(want), "missing {want:?} in:\n{human}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn around_standard_nginx_diff_finds_no_header_loss() {
    let dir = tempfile::tempdir().unwrap();
    let Some((front, back)) = run_chain(|up| websocket_config(up, ""), dir.path()).await else {
        return;
    };
    let (out, _) = diff(&[path(&front), path(&back), "--json"], 0).await;
    let d: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(d["unpaired"], json!([]), "{d:#}");
    let p = &d["pairs"][0];
    assert_eq!(p["removed"], json!([]), "{p:#}");
    assert_eq!(
        p["version"],
        json!({"front": "HTTP/1.1", "back": "HTTP/1.1"})
    );
    assert_eq!(p["status"], json!({"front": 101, "back": 101}));
    assert_eq!(codes(p), Vec::<String>::new(), "{p:#}");
    // `proxy_set_header Connection "upgrade"` writes the token in lower case
    assert!(
        has(&p["changed"], json!(["Connection", "Upgrade", "upgrade"])),
        "{p:#}"
    );
    // Upgrade passes as the client sent it
    assert!(
        !p["changed"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c[0] == "Upgrade"),
        "{p:#}"
    );
    let summary = p["summary"].as_str().unwrap();
    assert!(
        summary.ends_with("nothing that breaks the upgrade"),
        "{summary}"
    );
}

fn handshake_line(conn: u64, key: &str) -> String {
    let req = json!({"method": "GET", "target": "/ws", "version": "HTTP/1.1", "headers": [
        ["Host", "a"], ["Upgrade", "websocket"], ["Connection", "Upgrade"],
        ["Sec-WebSocket-Key", key], ["Sec-WebSocket-Version", "13"]]});
    let res = json!({"status": 101, "reason": "Switching Protocols", "version": "HTTP/1.1", "headers": [
        ["Upgrade", "websocket"], ["Connection", "Upgrade"],
        ["Sec-WebSocket-Accept", wstap::proto::handshake::accept_key(key)]]});
    json!({"ts": "2026-01-01T00:00:00.000000Z", "conn": conn, "event": "handshake",
        "client_request": req, "upstream_request": req,
        "upstream_response": res, "client_response": res})
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_without_pairs_exit_1_damaged_lines_are_counted_and_missing_files_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let front = dir.path().join("front.jsonl");
    let back = dir.path().join("back.jsonl");
    std::fs::write(
        &front,
        format!(
            "{}\nnot json\n{{\"half\": \n",
            handshake_line(1, "dGhlIHNhbXBsZSBub25jZQ==")
        ),
    )
    .unwrap();
    std::fs::write(&back, handshake_line(5, "AQIDBAUGBwgJCgsMDQ4PEA==") + "\n").unwrap();
    let (out, err) = diff(&[path(&front), path(&back), "--json"], 1).await;
    assert!(
        err.contains("skipped 2 lines of") && err.contains("front.jsonl"),
        "{err}"
    );
    let d: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(d["pairs"], json!([]));
    assert_eq!(d["skipped_lines"], json!({"front": 2, "back": 0}));
    let sides: Vec<_> = d["unpaired"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| (u["side"].as_str().unwrap(), u["conn"].as_u64().unwrap()))
        .collect();
    assert_eq!(sides, [("front", 1), ("back", 5)]);

    // the same key on both sides pairs, and an unchanged hop says so
    std::fs::write(&back, handshake_line(5, "dGhlIHNhbXBsZSBub25jZQ==") + "\n").unwrap();
    let (out, _) = diff(&[path(&front), path(&back)], 0).await;
    assert!(out.contains("1 pair, 0 unpaired"), "{out}");
    assert!(
        out.contains("=> the hop passed the request unchanged"),
        "{out}"
    );

    let missing = dir.path().join("nope.jsonl");
    let (_, err) = diff(&[path(&front), path(&missing)], 2).await;
    assert!(err.contains("nope.jsonl"), "{err}");
    diff(&[path(&front)], 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_over_16_mib_is_skipped_and_counted_and_the_next_ones_read() {
    const A: &str = "dGhlIHNhbXBsZSBub25jZQ==";
    const B: &str = "AQIDBAUGBwgJCgsMDQ4PEA==";
    let dir = tempfile::tempdir().unwrap();
    let front = dir.path().join("front.jsonl");
    let back = dir.path().join("back.jsonl");
    // a readable handshake, but 17 MiB long: wstap never writes a line
    // near 16 MiB, so it is passed over unread, not held in memory
    let pad = "p".repeat(17 << 20);
    let huge = handshake_line(1, B).replacen("\"/ws\"", &format!("\"/ws?{pad}\""), 1);
    assert!(huge.len() > 17 << 20);
    std::fs::write(&front, format!("{huge}\n{}\n", handshake_line(2, A))).unwrap();
    std::fs::write(
        &back,
        format!("{}\n{}\n", handshake_line(5, A), handshake_line(6, B)),
    )
    .unwrap();
    let (out, err) = diff(&[path(&front), path(&back), "--json"], 0).await;
    assert!(
        err.contains("skipped 1 line of") && err.contains("front.jsonl"),
        "{err}"
    );
    let d: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(d["skipped_lines"], json!({"front": 1, "back": 0}));
    let pairs = d["pairs"].as_array().unwrap();
    assert_eq!(pairs.len(), 1, "{d:#}");
    assert_eq!(pairs[0]["key"], A);
    assert_eq!(pairs[0]["conn"], json!({"front": 2, "back": 5}));
    let un: Vec<_> = d["unpaired"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| (u["side"].as_str().unwrap(), u["conn"].as_u64().unwrap()))
        .collect();
    assert_eq!(un, [("back", 6)]);
}
