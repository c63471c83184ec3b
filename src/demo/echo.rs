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

/// Largest message (and frame) the message echo takes by default.
/// tungstenite reserves a frame's whole length as soon as it reads the
/// header, so without a limit a header claiming 2^45 bytes aborts the
/// process (the demo runs the proxy in it).
pub const DEFAULT_MAX_MESSAGE: usize = 64 << 20;

/// How the echo server behaves.
#[derive(Debug, Clone)]
pub struct EchoOptions {
    /// Subprotocols it accepts; it picks the first the client offers.
    pub subprotocols: Vec<String>,
    /// Refuse upgrades (403) whose `Origin` is not this.
    pub require_origin: Option<String>,
    /// How it echoes once the connection is upgraded.
    pub mode: EchoMode,
    /// [`EchoMode::Messages`]: larger messages or frames end the
    /// connection (1009). The frame echo streams and needs no limit.
    pub max_message: usize,
}

impl Default for EchoOptions {
    fn default() -> Self {
        EchoOptions {
            subprotocols: Vec::new(),
            require_origin: None,
            mode: EchoMode::default(),
            max_message: DEFAULT_MAX_MESSAGE,
        }
    }
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

/// A config without message or frame size limits, for test clients that
/// must take whatever they are sent (not for anything serving a network).
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
    let limit = opts.max_message;
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else {
            return;
        };
        match mode {
            EchoMode::Messages => {
                let ws = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(
                        WebSocketConfig::default()
                            .max_message_size(Some(limit))
                            .max_frame_size(Some(limit)),
                    ),
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const STEP: Duration = Duration::from_secs(10);

    /// Upgrades a raw connection to `/echo`; returns it after the 101.
    async fn upgraded(addr: std::net::SocketAddr) -> TcpStream {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(
            b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .await
        .unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(s.read(&mut b).await.unwrap(), 1, "the head ended early");
            head.push(b[0]);
        }
        assert!(
            head.starts_with(b"HTTP/1.1 101"),
            "{:?}",
            String::from_utf8_lossy(&head)
        );
        s
    }

    #[tokio::test]
    async fn a_frame_header_claiming_terabytes_ends_that_connection_only() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(serve(l, EchoOptions::default()));

        // a masked binary frame whose header claims 2^45 bytes: tungstenite
        // reserved that much up front, and the failed allocation aborted
        // the whole process
        let mut bomb = upgraded(addr).await;
        bomb.write_all(&[0x82, 0xff, 0, 0, 0x20, 0, 0, 0, 0, 0, 1, 2, 3, 4, 0xaa])
            .await
            .unwrap();
        let mut rest = Vec::new();
        tokio::time::timeout(STEP, bomb.read_to_end(&mut rest))
            .await
            .expect("the echo ends the connection")
            .ok();
        // a close frame 1009 (message too big), if it got one out
        if rest.len() >= 4 {
            assert_eq!(&rest[..4], &[0x88, rest[1], 0x03, 0xf1], "{rest:?}");
        }

        // the server lives on: a normal message still comes back
        let mut ok = upgraded(addr).await;
        ok.write_all(&[0x81, 0x82, 0, 0, 0, 0, b'h', b'i'])
            .await
            .unwrap();
        let mut back = [0u8; 4];
        tokio::time::timeout(STEP, ok.read_exact(&mut back))
            .await
            .expect("an echo")
            .unwrap();
        assert_eq!(back, [0x81, 2, b'h', b'i']);
    }
}
