//! A long soak of the wstap binary: many concurrent WebSocket connections
//! through it, each exchanging messages of mixed sizes until the duration
//! is up; every echo verified byte for byte, the log's frame counts checked,
//! and wstap's memory and descriptors reported from /proc.
//!
//!     cargo build --release
//!     cargo run --release --example soak -- --conns 1000 --duration 60s
//!
//! The CI version of the same run is `tests/soak.rs` (4 s).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

// the same code as the CI test (`soak` finds `proc_stats` as its sibling)
#[path = "../tests/common/proc_stats.rs"]
mod proc_stats;
#[path = "../tests/common/soak.rs"]
mod soak;

#[derive(Parser)]
#[command(about = "Soak the wstap binary with concurrent WebSocket traffic")]
struct Args {
    /// The wstap binary to run.
    #[arg(long, default_value = "target/release/wstap")]
    wstap: PathBuf,
    /// Concurrent WebSocket connections.
    #[arg(long, default_value_t = 1000)]
    conns: usize,
    /// How long each connection keeps sending.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Message sizes in bytes, used in turn.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "0,1,125,126,1000,4096,65535,65536,20000,262144"
    )]
    sizes: Vec<usize>,
    /// Where wstap writes its NDJSON log (default: a temporary file, removed).
    #[arg(long)]
    json: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if !args.wstap.is_file() {
        eprintln!(
            "soak: {} not found; build it first (cargo build --release) or pass --wstap",
            args.wstap.display()
        );
        return ExitCode::from(2);
    }
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let json = args.json.unwrap_or_else(|| tmp.path().join("soak.jsonl"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let r = rt.block_on(soak::run(soak::SoakConfig {
        wstap: args.wstap,
        conns: args.conns,
        duration: args.duration,
        sizes: args.sizes,
        json,
    }));
    println!("{r}");
    let ok = r.exit_ok
        && r.logged_from_client == r.messages
        && r.logged_from_server == r.messages
        && r.close_events == args.conns
        && r.fds_after == r.fds_idle;
    if ok {
        println!("soak: ok");
        ExitCode::SUCCESS
    } else {
        println!("soak: FAILED (see the counts above)");
        ExitCode::FAILURE
    }
}
