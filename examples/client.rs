//! A small WebSocket client to point at wstap (or any server):
//!
//! ```text
//! cargo run --example client -- ws://127.0.0.1:9000/echo            # stdin lines
//! cargo run --example client -- ws://127.0.0.1:9000/echo --send hi --send there
//! cargo run --example client -- ws://127.0.0.1:9000/echo --subprotocol chat.v1
//! ```
//!
//! Without `--send` it sends each line of standard input as a text message
//! and prints every reply until stdin ends (then it closes with 1000).
//! With `--send TEXT` (repeatable) it sends those messages, waits for as
//! many replies, and exits. Replies are printed as text, or as hex for
//! binary messages. It speaks plain `ws://` (tokio-tungstenite).

use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncBufReadExt;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

#[derive(Debug, Parser)]
#[command(about = "Send WebSocket messages and print the replies")]
struct Args {
    /// The WebSocket URL, e.g. ws://127.0.0.1:9000/echo
    url: String,
    /// Send this text message (repeatable), wait for a reply to each, exit.
    #[arg(long = "send", value_name = "TEXT")]
    send: Vec<String>,
    /// Offer this subprotocol (repeatable).
    #[arg(long = "subprotocol", value_name = "NAME")]
    subprotocols: Vec<String>,
    /// How long to wait for the connection and for each reply.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    timeout: Duration,
}

fn show(msg: &Message) -> Option<String> {
    match msg {
        Message::Text(t) => Some(format!("< {}", t.as_str())),
        Message::Binary(b) => Some(format!(
            "< binary {} bytes: {}",
            b.len(),
            b.iter()
                .take(64)
                .map(|x| format!("{x:02x}"))
                .collect::<String>()
        )),
        Message::Close(c) => Some(format!("< close {c:?}")),
        _ => None,
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut req = args
        .url
        .as_str()
        .into_client_request()
        .with_context(|| format!("{:?} is not a ws:// URL", args.url))?;
    if !args.subprotocols.is_empty() {
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            args.subprotocols.join(", ").parse()?,
        );
    }
    let (mut ws, resp) = tokio::time::timeout(args.timeout, tokio_tungstenite::connect_async(req))
        .await
        .with_context(|| format!("no connection to {} within {:?}", args.url, args.timeout))?
        .with_context(|| format!("connecting to {}", args.url))?;
    let proto = resp
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok())
        .map(|p| format!(" (subprotocol {p})"))
        .unwrap_or_default();
    eprintln!("connected to {}{proto}", args.url);

    if !args.send.is_empty() {
        for text in &args.send {
            ws.send(Message::text(text.as_str())).await?;
            println!("> {text}");
            loop {
                let msg = tokio::time::timeout(args.timeout, ws.next())
                    .await
                    .context("no reply in time")?;
                match msg {
                    Some(Ok(m)) if m.is_text() || m.is_binary() => {
                        if let Some(line) = show(&m) {
                            println!("{line}");
                        }
                        break;
                    }
                    Some(Ok(Message::Close(c))) => bail!("the server closed: {c:?}"),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(e.into()),
                    None => bail!("the connection ended before a reply"),
                }
            }
        }
        ws.close(None).await?;
        // drain until the close reply and the end of the stream
        while let Ok(Some(Ok(_))) = tokio::time::timeout(args.timeout, ws.next()).await {}
        return Ok(());
    }

    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut stdin_open = true;
    loop {
        tokio::select! {
            line = lines.next_line(), if stdin_open => match line? {
                Some(l) => ws.send(Message::text(l)).await?,
                None => {
                    stdin_open = false;
                    ws.close(None).await?;
                }
            },
            msg = ws.next() => match msg {
                Some(Ok(m)) => {
                    if let Some(line) = show(&m) {
                        println!("{line}");
                    }
                }
                Some(Err(e)) => return Err(e.into()),
                None => break,
            },
        }
    }
    Ok(())
}
