//! `wstap check URL`: flags into [`CheckOptions`], the walk, and the
//! report printed as a checklist (or one JSON object with `--json`).
//! Exit 0 when every layer passed, 1 when one failed, 2 on usage errors.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use crate::check::{self, CheckOptions, Report, Status};
use crate::tls::client::TrustOptions;

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The WebSocket endpoint: ws://, wss://, http:// or https://, with path and query.
    #[arg(value_name = "URL")]
    pub url: String,
    /// How long each layer may take (resolving, connecting, the TLS
    /// handshake, the response, the pong, the reply, the close).
    #[arg(long, default_value = "10s", value_parser = super::duration, value_name = "DURATION")]
    pub timeout: Duration,
    /// Hold the open WebSocket silent this long and report whether and
    /// when something cut it.
    #[arg(long, value_parser = super::duration, value_name = "DURATION")]
    pub idle: Option<Duration>,
    /// Print one JSON object instead of the checklist.
    #[arg(long)]
    pub json: bool,
    /// A request header (repeatable); it replaces a default of the same
    /// name (Host, Upgrade, Connection, Sec-WebSocket-*, User-Agent).
    #[arg(long = "header", value_name = "'Name: value'")]
    pub headers: Vec<String>,
    /// Send this Origin header (servers often check it).
    #[arg(long, value_name = "URL")]
    pub origin: Option<String>,
    /// Offer this subprotocol (repeatable; offered in order).
    #[arg(long = "subprotocol", value_name = "NAME")]
    pub subprotocols: Vec<String>,
    /// Send this text message after the ping and show the reply.
    #[arg(long, value_name = "TEXT")]
    pub send: Option<String>,
    /// Do not verify the server certificate (it is still shown).
    #[arg(long)]
    pub insecure: bool,
    /// Trust the CA certificates in this PEM file besides the web PKI roots
    /// (repeatable).
    #[arg(long, value_name = "FILE")]
    pub ca: Vec<PathBuf>,
}

pub fn validate(args: CheckArgs) -> anyhow::Result<(CheckOptions, bool)> {
    let mut opts = CheckOptions::new(args.url);
    opts.timeout = args.timeout;
    opts.idle = args.idle;
    opts.headers = args
        .headers
        .iter()
        .map(|h| check::parse_header(h).context("--header"))
        .collect::<anyhow::Result<_>>()?;
    opts.origin = args.origin;
    opts.subprotocols = args
        .subprotocols
        .iter()
        .flat_map(|p| p.split(','))
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect();
    opts.send = args.send;
    opts.trust = TrustOptions {
        extra_roots: args.ca,
        insecure: args.insecure,
    };
    Ok((opts, args.json))
}

pub async fn run(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let (opts, json) = validate(args)?;
    let report = check::run(&opts).await?;
    let code = if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    };
    let text = if json {
        let mut t = serde_json::to_string_pretty(&report).context("serializing the report")?;
        t.push('\n');
        t
    } else {
        render(&report)
    };
    super::print_report(&text, code)
}

/// The checklist: one line per layer, the hint under the failure.
pub fn render(r: &Report) -> String {
    let mut s = format!("wstap check {}\n", r.url);
    let width = r.layers.iter().map(|l| l.name.len()).max().unwrap_or(0);
    for l in &r.layers {
        let mark = match l.status {
            Status::Pass => "✓",
            Status::Fail => "✗",
            Status::Skipped => "-",
            Status::NotApplicable => "·",
        };
        s.push_str(&format!("  {mark} {:width$}  {}\n", l.name, l.detail));
        if let Some(h) = &l.hint {
            s.push_str(&format!("    {:width$}  hint: {h}\n", ""));
        }
    }
    // the failing finding is already the failed layer's line (same hint)
    let failed_hint = r
        .layers
        .iter()
        .find(|l| l.status == Status::Fail)
        .and_then(|l| l.hint.as_deref());
    let others: Vec<_> = r
        .findings
        .iter()
        .filter(|f| failed_hint != Some(f.hint.as_str()))
        .collect();
    if !others.is_empty() {
        s.push_str("findings:\n");
        for f in others {
            s.push_str(&format!("  {} {}: {}\n", f.severity, f.code, f.message));
        }
    }
    match r.failed {
        None => s.push_str("all layers passed\n"),
        Some(name) => s.push_str(&format!("failed at {name}\n")),
    }
    s
}
