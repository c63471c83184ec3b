//! A minimal Chrome DevTools Protocol client over tokio-tungstenite, for
//! driving headless Chromium started with `--remote-debugging-port=0`:
//! attach to the page, evaluate JavaScript, take screenshots. Calls are
//! sequential; events Chromium sends meanwhile are skipped. Every await
//! has a timeout.

use std::time::Duration;

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use super::chromium::Chromium;
use super::{within, STEP};

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub struct Cdp {
    ws: Socket,
    next: u64,
    session: Option<String>,
}

/// The browser's DevTools WebSocket address, from the line Chromium prints
/// on stderr (`DevTools listening on ws://127.0.0.1:PORT/devtools/browser/ID`).
pub fn devtools_url(stderr: &str) -> Option<String> {
    stderr
        .lines()
        .find_map(|l| l.split("DevTools listening on ").nth(1))
        .map(|u| u.trim().to_string())
}

/// Waits (up to STEP) for Chromium to print its DevTools address.
pub async fn wait_devtools(chromium: &Chromium) -> String {
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let err = chromium.stderr();
        if let Some(u) = devtools_url(&err) {
            assert!(
                u.starts_with("ws://127.0.0.1:"),
                "DevTools must listen on loopback: {u}"
            );
            return u;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("Chromium printed no DevTools address; stderr:\n{err}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Cdp {
    pub async fn connect(url: &str) -> Cdp {
        let (ws, _) = within(
            "the DevTools connection",
            tokio_tungstenite::connect_async(url),
        )
        .await
        .expect("connect to DevTools");
        Cdp {
            ws,
            next: 1,
            session: None,
        }
    }

    /// Sends one command (to the attached page, if any) and returns its
    /// result, or the protocol's error message.
    pub async fn call(&mut self, method: &str, params: Value) -> Result<Value, String> {
        let id = self.next;
        self.next += 1;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = &self.session {
            msg["sessionId"] = json!(s);
        }
        within(
            "sending a DevTools command",
            self.ws.send(Message::text(msg.to_string())),
        )
        .await
        .map_err(|e| e.to_string())?;
        loop {
            let m = within(&format!("the answer to {method}"), self.ws.next())
                .await
                .ok_or("DevTools connection closed")?
                .map_err(|e| e.to_string())?;
            let Message::Text(t) = m else { continue };
            let v: Value = serde_json::from_str(&t).map_err(|e| e.to_string())?;
            if v["id"].as_u64() != Some(id) {
                continue; // an event, or an answer for someone else
            }
            if let Some(e) = v.get("error") {
                return Err(format!("{method}: {e}"));
            }
            return Ok(v["result"].clone());
        }
    }

    /// Attaches to the first page target (the one Chromium opened).
    pub async fn attach_page(&mut self) {
        let deadline = tokio::time::Instant::now() + STEP;
        let target = loop {
            let targets = self
                .call("Target.getTargets", json!({}))
                .await
                .expect("Target.getTargets");
            let page = targets["targetInfos"]
                .as_array()
                .and_then(|ts| ts.iter().find(|t| t["type"] == "page"))
                .and_then(|t| t["targetId"].as_str())
                .map(str::to_string);
            if let Some(p) = page {
                break p;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no page target: {targets}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let attached = self
            .call(
                "Target.attachToTarget",
                json!({"targetId": target, "flatten": true}),
            )
            .await
            .expect("Target.attachToTarget");
        self.session = attached["sessionId"].as_str().map(str::to_string);
        assert!(self.session.is_some(), "no session: {attached}");
    }

    /// Evaluates `expr` in the page (promises awaited) and returns its value.
    pub async fn eval(&mut self, expr: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
            )
            .await
            .unwrap_or_else(|e| panic!("evaluating {expr}: {e}"));
        if let Some(ex) = r.get("exceptionDetails") {
            panic!("the page threw evaluating {expr}: {ex}");
        }
        r["result"]["value"].clone()
    }

    /// Evaluates `expr` until it is truthy (up to STEP); returns its value.
    pub async fn wait_for(&mut self, what: &str, expr: &str) -> Value {
        let deadline = tokio::time::Instant::now() + STEP;
        loop {
            let v = self.eval(expr).await;
            let truthy = match &v {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return v;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("timed out waiting for {what} ({expr}); last value {v}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A PNG of the page as it is.
    pub async fn screenshot(&mut self) -> Vec<u8> {
        let r = self
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await
            .expect("Page.captureScreenshot");
        base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().unwrap_or_default())
            .expect("screenshot base64")
    }
}
