//! `wstap diff FRONT.jsonl BACK.jsonl`: reads both logs, pairs their
//! handshakes and prints what the hop changed (or one JSON object with
//! `--json`). Exit 0 when it found pairs, 1 when none, 2 on usage or I/O
//! errors.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use crate::diff::{self, Diff, HeaderDiff};

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The NDJSON log (`--json FILE`) of the tap in front of the hop.
    #[arg(value_name = "FRONT.jsonl")]
    pub front: PathBuf,
    /// The NDJSON log of the tap behind the hop.
    #[arg(value_name = "BACK.jsonl")]
    pub back: PathBuf,
    /// Print one JSON object instead of the report.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: DiffArgs) -> anyhow::Result<ExitCode> {
    let front = diff::read_log_file(&args.front).context("FRONT")?;
    let back = diff::read_log_file(&args.back).context("BACK")?;
    let d = diff::diff(&front, &back);
    for (path, n) in [
        (&args.front, front.unparsable),
        (&args.back, back.unparsable),
    ] {
        if n > 0 {
            eprintln!(
                "wstap: warning: skipped {n} line{} of {} that {} not a readable event",
                if n == 1 { "" } else { "s" },
                path.display(),
                if n == 1 { "is" } else { "are" }
            );
        }
    }
    let code = if d.pairs.is_empty() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    };
    let text = if args.json {
        // serialized first, so a closed stdout is an io::Error, not a
        // serde error
        let mut t = serde_json::to_string_pretty(&d).context("serializing the report")?;
        t.push('\n');
        t
    } else {
        let title = format!(
            "wstap diff {} {}",
            args.front.display(),
            args.back.display()
        );
        render(&title, &d)
    };
    super::print_report(&text, code)
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn headers(s: &mut String, d: &HeaderDiff) {
    for (n, v) in &d.removed {
        s.push_str(&format!("    - {n}: {v}\n"));
    }
    for (n, f, b) in &d.changed {
        s.push_str(&format!("    ~ {n}: {f} → {b}\n"));
    }
    for (n, v) in &d.added {
        s.push_str(&format!("    + {n}: {v}\n"));
    }
}

fn conn(c: Option<u64>) -> String {
    c.map_or("?".into(), |c| format!("#{c}"))
}

/// The report: per pair, the request front → back, the response back →
/// front, the hop's findings and the summary; then the unpaired.
pub fn render(title: &str, d: &Diff) -> String {
    let mut s = format!(
        "{title}\n{}, {}\n",
        plural(d.pairs.len(), "pair", "pairs"),
        plural(
            d.unpaired.len(),
            "unpaired handshake",
            "unpaired handshakes"
        )
    );
    for p in &d.pairs {
        s.push_str(&format!(
            "\n{} {}  key {}  (front {}, back {})\n",
            p.method,
            p.target.front,
            p.key,
            conn(p.conn.front),
            conn(p.conn.back)
        ));
        s.push_str("  request, front → back:\n");
        if p.target.front != p.target.back {
            s.push_str(&format!(
                "    target   {} → {}\n",
                p.target.front, p.target.back
            ));
        }
        let same = if p.version.front == p.version.back {
            " (unchanged)"
        } else {
            ""
        };
        s.push_str(&format!(
            "    version  {} → {}{same}\n",
            p.version.front, p.version.back
        ));
        headers(
            &mut s,
            &HeaderDiff {
                removed: p.removed.clone(),
                added: p.added.clone(),
                changed: p.changed.clone(),
            },
        );
        s.push_str("  response, back → front:\n");
        let show = |v: Option<u16>| v.map_or("(none)".to_string(), |v| v.to_string());
        s.push_str(&format!(
            "    status   {} → {}\n",
            show(p.status.back),
            show(p.status.front)
        ));
        // shown in the direction the response travels: the backend's value first
        let back_to_front = HeaderDiff {
            removed: p.response.removed.clone(),
            added: p.response.added.clone(),
            changed: p
                .response
                .changed
                .iter()
                .map(|(n, front, back)| (n.clone(), back.clone(), front.clone()))
                .collect(),
        };
        headers(&mut s, &back_to_front);
        if !p.findings.is_empty() {
            s.push_str("  findings the hop caused:\n");
            for f in &p.findings {
                s.push_str(&format!("    {} {}: {}\n", f.severity, f.code, f.message));
            }
        }
        s.push_str(&format!("  => {}\n", p.summary));
    }
    if !d.unpaired.is_empty() {
        s.push_str("\nunpaired:\n");
        for u in &d.unpaired {
            s.push_str(&format!(
                "  {} {}  {}  key {}: {}\n",
                u.side,
                conn(u.conn),
                u.target.as_deref().unwrap_or("?"),
                u.key.as_deref().unwrap_or("(none)"),
                u.why
            ));
        }
    }
    s
}
