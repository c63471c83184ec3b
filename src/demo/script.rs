//! The demo's scripted client: one healthy WebSocket conversation (text,
//! binary, a fragmented message, a ping, a close with a code), a plain page
//! request, and a handshake shaped like one that crossed a misconfigured
//! nginx, so the log shows frames, HTTP and findings.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{CloseFrame, Frame};
use tokio_tungstenite::tungstenite::Message;

#[derive(Debug, thiserror::Error)]
pub enum ScriptError {
    #[error("WebSocket error: {0}")]
    Ws(#[from] tokio_tungstenite::tungstenite::Error),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    #[error("unexpected reply: {0}")]
    Unexpected(String),
}

const STEP: Duration = Duration::from_secs(5);

async fn within<T, F: std::future::Future<Output = T>>(
    what: &'static str,
    f: F,
) -> Result<T, ScriptError> {
    tokio::time::timeout(STEP, f)
        .await
        .map_err(|_| ScriptError::Timeout(what))
}

/// Runs the whole script against a proxy (or server) at `addr`.
pub async fn run(addr: SocketAddr) -> Result<(), ScriptError> {
    conversation(addr).await?;
    page(addr).await?;
    stripped_handshake(addr).await?;
    Ok(())
}

async fn expect_echo<S>(ws: &mut S, want: &Message) -> Result<(), ScriptError>
where
    S: StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    match within("an echo", ws.next()).await? {
        Some(Ok(m)) if &m == want => Ok(()),
        other => Err(ScriptError::Unexpected(format!("{other:?}"))),
    }
}

/// A healthy conversation with every kind of frame.
pub async fn conversation(addr: SocketAddr) -> Result<(), ScriptError> {
    let tcp = within("the TCP connection", TcpStream::connect(addr)).await??;
    tcp.set_nodelay(true)?;
    let url = format!("ws://{addr}/echo");
    let (mut ws, _) = within("the handshake", tokio_tungstenite::client_async(url, tcp)).await??;

    let text = Message::text("hello from the wstap demo");
    ws.send(text.clone()).await?;
    expect_echo(&mut ws, &text).await?;

    let binary = Message::binary(Bytes::from_static(&[0xde, 0xad, 0xbe, 0xef, 0x00, 0x01]));
    ws.send(binary.clone()).await?;
    expect_echo(&mut ws, &binary).await?;

    // one message in two frames: FIN clear, then a continuation
    ws.send(Message::Frame(Frame::message(
        Bytes::from_static(b"a fragmented "),
        OpCode::Data(Data::Text),
        false,
    )))
    .await?;
    ws.send(Message::Frame(Frame::message(
        Bytes::from_static(b"message"),
        OpCode::Data(Data::Continue),
        true,
    )))
    .await?;
    expect_echo(&mut ws, &Message::text("a fragmented message")).await?;

    ws.send(Message::Ping(Bytes::from_static(b"are you there?")))
        .await?;
    match within("a pong", ws.next()).await? {
        Some(Ok(Message::Pong(p))) if &p[..] == b"are you there?" => {}
        other => return Err(ScriptError::Unexpected(format!("{other:?}"))),
    }

    ws.send(Message::Close(Some(CloseFrame {
        code: CloseCode::from(4001),
        reason: "demo finished".into(),
    })))
    .await?;
    // read the close reply and the end of the stream
    while let Some(m) = within("the close reply", ws.next()).await? {
        if m.is_err() {
            break;
        }
    }
    Ok(())
}

async fn raw_exchange(addr: SocketAddr, request: String) -> Result<String, ScriptError> {
    let mut tcp = within("the TCP connection", TcpStream::connect(addr)).await??;
    tcp.write_all(request.as_bytes()).await?;
    let mut buf = Vec::new();
    within("the response", tcp.read_to_end(&mut buf)).await??;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// An ordinary page request: HTTP passes through.
pub async fn page(addr: SocketAddr) -> Result<(), ScriptError> {
    let resp = raw_exchange(
        addr,
        format!("GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
    )
    .await?;
    if !resp.starts_with("HTTP/1.1 200") {
        return Err(ScriptError::Unexpected(resp));
    }
    Ok(())
}

/// The request nginx sends with a plain `proxy_pass`: HTTP/1.0, no
/// `Upgrade`, `Connection: close`, the WebSocket headers still there.
pub async fn stripped_handshake(addr: SocketAddr) -> Result<(), ScriptError> {
    let resp = raw_exchange(
        addr,
        format!(
            "GET /echo HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ),
    )
    .await?;
    if resp.starts_with("HTTP/1.1 101") || resp.starts_with("HTTP/1.0 101") {
        return Err(ScriptError::Unexpected(
            "a stripped handshake was accepted".into(),
        ));
    }
    Ok(())
}
