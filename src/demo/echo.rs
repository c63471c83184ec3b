//! A WebSocket echo server on hyper + tokio-tungstenite: echoes every
//! message, answers pings, serves a page at any other path. It refuses
//! broken handshakes the way common servers do (426 without the upgrade
//! headers), and can demand an Origin, so findings have something to find.
//! It serves plain or behind TLS.
//!
//! Two ways to echo after the 101 ([`EchoMode`]): whole messages through
//! tokio-tungstenite (the default: a common real-world server), or frame by
//! frame with the project's own decoder, streaming (the benchmark's lean
//! upstream: it never holds a message, so a 1 GiB message costs it no
//! memory, and it writes a whole read's worth of echoes in one syscall).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{
    HeaderValue, CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_PROTOCOL,
    UPGRADE,
};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

use super::frame_echo;
use crate::proto::handshake::accept_key;

/// How the echo server behaves.
#[derive(Debug, Clone, Default)]
pub struct EchoOptions {
    /// Subprotocols it accepts; it picks the first the client offers.
    pub subprotocols: Vec<String>,
    /// Refuse upgrades (403) whose `Origin` is not this.
    pub require_origin: Option<String>,
    /// How it echoes once the connection is upgraded.
    pub mode: EchoMode,
}

/// How an upgraded connection is echoed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum EchoMode {
    /// Whole messages through tokio-tungstenite: reassembled, then sent
    /// back as one frame.
    #[default]
    Messages,
    /// Frame by frame, streaming: see [`super::frame_echo`].
    Frames,
}

/// A config without message or frame size limits: the echo must take
/// whatever the tests and benchmarks send.
pub fn unlimited() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(None)
        .max_frame_size(None)
}

const PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>wstap echo</title></head>
<body><h1>wstap echo upstream</h1><pre id="log"></pre>
<script>
const log = (s) => document.getElementById('log').textContent += s + '\n';
const ws = new WebSocket((location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/echo');
ws.onopen = () => { log('open'); ws.send('hello from the page'); };
ws.onmessage = (e) => log('echo: ' + e.data);
ws.onclose = (e) => log('closed ' + e.code);
</script></body></html>
"#;

/// Serves connections from `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, opts: EchoOptions) {
    let opts = Arc::new(opts);
    loop {
        let Ok((sock, _)) = listener.accept().await else {
            continue;
        };
        let _ = sock.set_nodelay(true);
        tokio::spawn(serve_conn(sock, opts.clone()));
    }
}

/// Like [`serve`], behind TLS (wss://, https://) with `tls`.
pub async fn serve_tls(listener: TcpListener, tls: Arc<rustls::ServerConfig>, opts: EchoOptions) {
    let opts = Arc::new(opts);
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let Ok((sock, _)) = listener.accept().await else {
            continue;
        };
        let _ = sock.set_nodelay(true);
        let (acceptor, opts) = (acceptor.clone(), opts.clone());
        tokio::spawn(async move {
            // A client that stalls the handshake must not hold a task forever.
            let accepted = tokio::time::timeout(HANDSHAKE_LIMIT, acceptor.accept(sock)).await;
            if let Ok(Ok(stream)) = accepted {
                serve_conn(stream, opts).await;
            }
        });
    }
}

const HANDSHAKE_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

async fn serve_conn<IO>(io: IO, opts: Arc<EchoOptions>)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| handle(req, opts.clone()));
    let _ = http1::Builder::new()
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades()
        .await;
}

fn plain(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn has_token(req: &Request<Incoming>, name: hyper::header::HeaderName, token: &str) -> bool {
    req.headers().get_all(name).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

async fn handle(
    mut req: Request<Incoming>,
    opts: Arc<EchoOptions>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let Some(key) = req.headers().get(SEC_WEBSOCKET_KEY).cloned() else {
        let mut r = Response::new(Full::new(Bytes::from_static(PAGE.as_bytes())));
        r.headers_mut().insert(
            "content-type",
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        return Ok(r);
    };
    if req.version() != hyper::Version::HTTP_11 {
        return Ok(plain(
            StatusCode::HTTP_VERSION_NOT_SUPPORTED,
            "WebSocket upgrades need HTTP/1.1\n",
        ));
    }
    if !has_token(&req, UPGRADE, "websocket") || !has_token(&req, CONNECTION, "upgrade") {
        let mut r = plain(
            StatusCode::UPGRADE_REQUIRED,
            "Upgrade Required: missing Upgrade: websocket / Connection: Upgrade\n",
        );
        r.headers_mut()
            .insert(UPGRADE, HeaderValue::from_static("websocket"));
        return Ok(r);
    }
    if req
        .headers()
        .get("sec-websocket-version")
        .and_then(|v| v.to_str().ok())
        != Some("13")
    {
        return Ok(plain(
            StatusCode::BAD_REQUEST,
            "unsupported Sec-WebSocket-Version\n",
        ));
    }
    if let Some(want) = &opts.require_origin {
        let origin = req.headers().get("origin").and_then(|v| v.to_str().ok());
        if origin != Some(want.as_str()) {
            return Ok(plain(StatusCode::FORBIDDEN, "origin not allowed\n"));
        }
    }
    let offered: Vec<String> = req
        .headers()
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(',').map(|p| p.trim().to_string()))
        .collect();
    let chosen = offered
        .iter()
        .find(|p| opts.subprotocols.contains(p))
        .cloned();

    let accept = accept_key(key.to_str().unwrap_or_default());
    let upgrade = hyper::upgrade::on(&mut req);
    let mode = opts.mode;
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else {
            return;
        };
        match mode {
            EchoMode::Messages => {
                let ws = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(unlimited()),
                )
                .await;
                echo(ws).await;
            }
            EchoMode::Frames => {
                // Back to the bare socket (and the bytes hyper read past
                // the head), so the echo pays no wrapper per read.
                let _ = match upgraded.downcast::<TokioIo<TcpStream>>() {
                    Ok(parts) => {
                        frame_echo::serve_frames(parts.io.into_inner(), &parts.read_buf).await
                    }
                    Err(upgraded) => frame_echo::serve_frames(TokioIo::new(upgraded), &[]).await,
                };
            }
        }
    });
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(SEC_WEBSOCKET_ACCEPT, v);
    }
    if let Some(p) = chosen.and_then(|p| HeaderValue::from_str(&p).ok()) {
        h.insert(SEC_WEBSOCKET_PROTOCOL, p);
    }
    Ok(r)
}

/// Echoes messages until the peer closes. Reading on after a close frame
/// is what makes tungstenite send its close reply and end the connection.
pub async fn echo<S>(mut ws: WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    while let Some(Ok(msg)) = ws.next().await {
        if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
            break;
        }
    }
}
