//! The live view in-process: a proxy whose events go to a collector and to
//! the UI store, the UI server on 127.0.0.1:0, and a small HTTP/1.1 client
//! (raw TCP, every read under a timeout) to call its API.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use wstap::bus;
use wstap::proxy::{Proxy, ProxyConfig};
use wstap::sink::collect::{CollectSink, Collected};
use wstap::sink::{spawn_dispatcher, Sink};
use wstap::tls::client::{client_config, TrustOptions};
use wstap::ui::{Limits, LiveView, Store, UiSink};

use super::{within, STEP};

/// A proxy with the live view.
pub struct UiProxy {
    pub addr: SocketAddr,
    pub ui: SocketAddr,
    pub events: Collected,
    pub store: Arc<Store>,
    view: Option<LiveView>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    dispatcher: Option<std::thread::JoinHandle<wstap::sink::DispatchReport>>,
}

impl UiProxy {
    pub async fn start(upstream: &str) -> UiProxy {
        Self::start_with(upstream, |_| {}, Limits::default()).await
    }

    pub async fn start_with(
        upstream: &str,
        tweak: impl FnOnce(&mut ProxyConfig),
        limits: Limits,
    ) -> UiProxy {
        Self::start_full(upstream, tweak, limits, wstap::ui::BODY_TIMEOUT).await
    }

    /// With `body_timeout` as the live view's wait for request bodies.
    pub async fn start_full(
        upstream: &str,
        tweak: impl FnOnce(&mut ProxyConfig),
        limits: Limits,
        body_timeout: Duration,
    ) -> UiProxy {
        let mut cfg = ProxyConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            upstream.parse().expect("upstream URL"),
        );
        cfg.grace = Duration::from_millis(500);
        // as the binary runs: connections dealt out to relay threads
        cfg.relay_threads = 2;
        tweak(&mut cfg);
        let events = Collected::default();
        let store = Store::new(limits);
        let (tx, rx) = bus::channel(bus::DEFAULT_CAPACITY, false);
        let sinks: Vec<Box<dyn Sink>> = vec![
            Box::new(CollectSink(events.clone())),
            Box::new(UiSink(store.clone())),
        ];
        let dispatcher = spawn_dispatcher(rx, sinks).unwrap();
        let proxy = within(
            "binding the proxy",
            Proxy::bind(cfg, client_config(&TrustOptions::default()).unwrap(), tx),
        )
        .await
        .unwrap();
        let addr = proxy.local_addr();
        let listener = within(
            "binding the live view",
            wstap::ui::bind("127.0.0.1:0".parse().unwrap(), false),
        )
        .await
        .unwrap();
        let view = LiveView::start_with_body_timeout(
            listener,
            store.clone(),
            &proxy.shared(),
            body_timeout,
        );
        let ui = view.addr();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            proxy
                .run(async {
                    let _ = stopped.await;
                })
                .await
        });
        UiProxy {
            addr,
            ui,
            events,
            store,
            view: Some(view),
            stop: Some(stop),
            task: Some(task),
            dispatcher: Some(dispatcher),
        }
    }

    /// GET with the UI's own Host.
    pub async fn get(&self, path: &str) -> HttpResp {
        http(self.ui, "GET", path, &[], None).await
    }

    /// POST a JSON body with the UI's own Host.
    pub async fn post_json(&self, path: &str, body: &serde_json::Value) -> HttpResp {
        let b = serde_json::to_vec(body).unwrap();
        http(self.ui, "POST", path, &[], Some(("application/json", &b))).await
    }

    /// Polls `GET /api/connections` until `done` holds for the list.
    pub async fn wait_conns(
        &self,
        what: &str,
        done: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        let deadline = tokio::time::Instant::now() + STEP;
        loop {
            let r = self.get("/api/connections").await;
            assert_eq!(r.status, 200, "{}", r.text());
            let list = r.json().as_array().cloned().unwrap_or_default();
            if done(&list) {
                return list;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("timed out waiting for {what}; connections: {list:#?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the proxy, then the live view.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = within("proxy shutdown", t).await;
        }
        if let Some(d) = self.dispatcher.take() {
            let _ = tokio::task::spawn_blocking(move || d.join()).await;
        }
        if let Some(v) = self.view.take() {
            v.stop().await;
        }
    }
}

impl Drop for UiProxy {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// One HTTP answer.
#[derive(Debug)]
pub struct HttpResp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.text()))
    }

    /// The `error` message of an API failure (which every 4xx carries).
    pub fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error message in {}", self.text()))
            .to_string()
    }
}

/// Sends one request with `Host: ADDR` (unless `extra` has a Host) and
/// `Connection: close`, and reads the whole answer.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    extra: &[(&str, &str)],
    body: Option<(&str, &[u8])>,
) -> HttpResp {
    let mut head = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !extra.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        head.push_str(&format!("Host: {addr}\r\n"));
    }
    for (n, v) in extra {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    let payload = body.map(|(_, b)| b).unwrap_or(b"");
    if let Some((ct, _)) = body {
        if !ct.is_empty() {
            head.push_str(&format!("Content-Type: {ct}\r\n"));
        }
    }
    if body.is_some() || method == "POST" {
        head.push_str(&format!("Content-Length: {}\r\n", payload.len()));
    }
    head.push_str("\r\n");
    raw(addr, head.as_bytes(), payload).await
}

/// Writes `head` and `body` as they are and parses the answer.
pub async fn raw(addr: SocketAddr, head: &[u8], body: &[u8]) -> HttpResp {
    let mut s = within("connect to the live view", TcpStream::connect(addr))
        .await
        .unwrap();
    within("write the request", async {
        s.write_all(head).await?;
        s.write_all(body).await
    })
    .await
    .unwrap();
    let mut buf = Vec::new();
    within("the answer", s.read_to_end(&mut buf)).await.unwrap();
    parse_response(&buf)
}

fn parse_response(buf: &[u8]) -> HttpResp {
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(buf)));
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = buf[end + 4..].to_vec();
    let chunked = headers.iter().any(|(n, v)| {
        n.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    if chunked {
        body = dechunk(&body);
    }
    HttpResp {
        status,
        headers,
        body,
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(i) = b.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&b[..i]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = i + 2;
        out.extend_from_slice(&b[start..(start + size).min(b.len())]);
        b = &b[(start + size + 2).min(b.len())..];
    }
    out
}

/// An open `GET /api/events` stream.
pub struct Sse {
    s: TcpStream,
    pub text: String,
}

impl Sse {
    pub async fn open(ui: SocketAddr) -> Sse {
        let mut s = within("connect to the live view", TcpStream::connect(ui))
            .await
            .unwrap();
        let req =
            format!("GET /api/events HTTP/1.1\r\nHost: {ui}\r\nAccept: text/event-stream\r\n\r\n");
        within("write", s.write_all(req.as_bytes())).await.unwrap();
        let mut sse = Sse {
            s,
            text: String::new(),
        };
        sse.read_until("the event stream's head", |t| t.contains("\r\n\r\n"))
            .await;
        sse
    }

    /// Reads until `done` holds for everything read so far.
    pub async fn read_until(&mut self, what: &str, done: impl Fn(&str) -> bool) {
        let deadline = tokio::time::Instant::now() + STEP;
        let mut buf = [0u8; 16 * 1024];
        while !done(&self.text) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.s.read(&mut buf)).await {
                Ok(Ok(0)) => panic!("event stream ended before {what}:\n{}", self.text),
                Ok(Ok(n)) => self.text.push_str(&String::from_utf8_lossy(&buf[..n])),
                Ok(Err(e)) => panic!("event stream failed before {what}: {e}"),
                Err(_) => panic!(
                    "timed out waiting for {what}; stream so far:\n{}",
                    self.text
                ),
            }
        }
    }
}

impl Sse {
    /// Reads until `marker` appears in what arrives from now on, searching
    /// only new text (the stream may be megabytes long).
    pub async fn read_until_marker(&mut self, marker: &str) {
        let mut from = self.text.len();
        let deadline = tokio::time::Instant::now() + STEP;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let start = from.saturating_sub(marker.len());
            let start = (start..=self.text.len())
                .find(|i| self.text.is_char_boundary(*i))
                .unwrap_or(self.text.len());
            if self.text[start..].contains(marker) {
                return;
            }
            from = self.text.len();
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.s.read(&mut buf)).await {
                Ok(Ok(0)) => panic!("event stream ended before {marker:?}"),
                Ok(Ok(n)) => self.text.push_str(&String::from_utf8_lossy(&buf[..n])),
                Ok(Err(e)) => panic!("event stream failed before {marker:?}: {e}"),
                Err(_) => panic!(
                    "timed out waiting for {marker:?} after {} bytes",
                    self.text.len()
                ),
            }
        }
    }
}

/// A WebSocket upstream that echoes text and binary messages and reports
/// every message it receives (close frames included) on a channel.
pub async fn recording_echo() -> (
    SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<tokio_tungstenite::tungstenite::Message>,
) {
    use futures_util::{SinkExt, StreamExt};
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    let _ = tx.send(m.clone());
                    if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (addr, rx)
}
