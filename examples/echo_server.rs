//! A standalone WebSocket echo server to put wstap in front of:
//!
//! ```text
//! cargo run --release --example echo_server -- --listen 127.0.0.1:5173
//! cargo run --release -- proxy --upstream ws://127.0.0.1:5173
//! ```
//!
//! It echoes every message on any path (up to 64 MiB; `--frames` streams
//! any size), answers pings, and serves a small
//! page that opens a WebSocket to `/echo` (open it through the proxy to see
//! the browser's handshake). `--listen 127.0.0.1:0` picks a free port; the
//! chosen address is printed as `listening on ADDR`. It serves until
//! interrupted. The server itself is `wstap::demo::echo`.

use anyhow::Context;
use clap::Parser;
use tokio::net::TcpListener;
use wstap::demo::echo::{self, EchoMode, EchoOptions};

#[derive(Debug, Parser)]
#[command(about = "A WebSocket echo server to put wstap in front of")]
struct Args {
    /// Address to listen on; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:5173", value_name = "ADDR")]
    listen: String,
    /// A subprotocol to accept (repeatable); the first one the client offers wins.
    #[arg(long = "subprotocol", value_name = "NAME")]
    subprotocols: Vec<String>,
    /// Refuse upgrades (403) whose Origin is not this.
    #[arg(long, value_name = "ORIGIN")]
    require_origin: Option<String>,
    /// Echo frame by frame, streaming, instead of whole messages through
    /// tokio-tungstenite (the benchmark's lean upstream).
    #[arg(long)]
    frames: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    println!("listening on {addr}");
    eprintln!("echo server: ws://{addr}/echo (page at http://{addr}/); Ctrl-C stops it");
    let opts = EchoOptions {
        subprotocols: args.subprotocols,
        require_origin: args.require_origin,
        mode: if args.frames {
            EchoMode::Frames
        } else {
            EchoMode::Messages
        },
        ..Default::default()
    };
    tokio::select! {
        _ = echo::serve(listener, opts) => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}
