//! `wstap demo`: an echo upstream, the proxy in front of it and a scripted
//! client, all on free loopback ports, so a newcomer sees a handshake,
//! frames and findings without setting anything up.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tokio::net::TcpListener;

use super::proxy::{start, ProxyRun};
use crate::demo::echo::{self, EchoOptions};
use crate::demo::script;
use crate::proto::event::EventKind;
use crate::proxy::ProxyConfig;
use crate::sink::collect::{CollectSink, Collected};
use crate::sink::har::{self, HarOptions, HarSink};
use crate::sink::ndjson::NdjsonSink;
use crate::sink::terminal::TerminalSink;
use crate::sink::Sink;
use crate::tls::client::TrustOptions;

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Also write the event stream as NDJSON to FILE (`-` for stdout).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Also write a HAR (import it in Chrome DevTools' Network panel).
    #[arg(long, value_name = "FILE")]
    pub har: Option<PathBuf>,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let echo_listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the echo upstream")?;
    let echo_addr = echo_listener.local_addr()?;
    let echo_task = tokio::spawn(echo::serve(echo_listener, EchoOptions::default()));
    eprintln!("wstap demo: echo upstream on {echo_addr}");

    let collected = Collected::default();
    let mut sinks: Vec<Box<dyn Sink>> = vec![
        Box::new(TerminalSink::stderr()),
        Box::new(CollectSink(collected.clone())),
    ];
    if let Some(path) = &args.json {
        sinks.push(Box::new(
            NdjsonSink::create(path).with_context(|| format!("--json {}", path.display()))?,
        ));
    }
    let upstream = format!("ws://{echo_addr}").parse()?;
    let mut config = ProxyConfig::new("127.0.0.1:0".parse()?, upstream);
    if let Some(path) = &args.har {
        sinks.push(Box::new(
            HarSink::create(path, HarOptions::default())
                .with_context(|| format!("--har {}", path.display()))?,
        ));
        config.capture = har::capture_for(har::DEFAULT_MAX_PAYLOAD);
    }
    let running = start(ProxyRun {
        config,
        sinks,
        files: Vec::new(),
        trust: TrustOptions::default(),
        outputs: Default::default(),
        ui: None,
    })
    .await?;

    let outcome = script::run(running.addr).await;
    // three connections, each ends with a close event
    collected
        .wait_for(Duration::from_secs(5), |evs| {
            evs.iter()
                .filter(|e| matches!(e.kind, EventKind::Close(_)))
                .count()
                >= 3
        })
        .await;
    running.stop().await?;
    echo_task.abort();
    outcome.context("the demo client failed")?;

    let evs = collected.snapshot();
    let frames = evs
        .iter()
        .filter(|e| matches!(e.kind, EventKind::Frame(_)))
        .count();
    let findings: Vec<String> = evs
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Finding(f) => Some(f.code.clone()),
            _ => None,
        })
        .collect();
    eprintln!();
    eprintln!(
        "wstap demo: {frames} frames logged; findings: {}",
        findings.join(", ")
    );
    eprintln!("Next: put wstap in front of your own server:");
    eprintln!("  cargo run --release -- proxy --upstream ws://127.0.0.1:5173");
    Ok(ExitCode::SUCCESS)
}
