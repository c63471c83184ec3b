//! The command line: clap structs stay raw; `validate` steps turn them into
//! configs (addresses parsed, files opened), and `run` steps wire the
//! pieces. The only module that knows every other one; `anyhow` lives here.

mod ca;
mod check;
mod demo;
mod diff;
mod proxy;

use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "wstap",
    version,
    about = "A transparent WebSocket debugging proxy: relays bytes unchanged, logs the handshake and every frame, and names what broke."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Threads that relay the proxy's connections (default: one per CPU).
    /// Each runs its own event loop and a connection stays on one, so one
    /// connection never pays for cross-thread wake-ups (see README
    /// "Performance").
    #[arg(long, global = true, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub threads: Option<u64>,
    /// How long a relay thread keeps polling its sockets after work before
    /// it sleeps, at most; the window adapts to the traffic and is never
    /// spent while idle. Sleeping and being woken costs tens of µs on a VM;
    /// 0 turns polling off (default 50us; see README "Busy-polling").
    #[arg(long, global = true, value_name = "DURATION", value_parser = parse_busy_poll)]
    pub busy_poll: Option<Duration>,
}

/// `--busy-poll`: humantime (which takes a bare "0"), at most 10 ms.
fn parse_busy_poll(s: &str) -> Result<Duration, String> {
    let d =
        humantime::parse_duration(s).map_err(|e| format!("{e} (say 50us, 1ms, or 0 for off)"))?;
    if d > Duration::from_millis(10) {
        return Err("at most 10ms: a longer window only burns CPU".into());
    }
    Ok(d)
}

// One value, parsed once at start-up: boxing the big variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy in front of an upstream.
    Proxy(proxy::ProxyArgs),
    /// See wstap work: an echo upstream, the proxy and a scripted client.
    Demo(demo::DemoArgs),
    /// The local CA for intercepting TLS: create it, find it.
    Ca(ca::CaArgs),
    /// Check a WebSocket URL layer by layer (dns, tcp, tls, http-upgrade,
    /// websocket), stopping at the first that fails.
    Check(check::CheckArgs),
    /// Pair the handshakes of two taps around a hop (by Sec-WebSocket-Key)
    /// and show what the hop removed, added or changed.
    Diff(diff::DiffArgs),
}

/// Exit codes: 0 ok, 1 a check or diff found a problem, 2 usage or runtime error.
pub fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    init_tracing();
    raise_fd_limit();
    let relay_threads = cli
        .threads
        .map_or_else(crate::proxy::shards::one_per_cpu, |n| n as usize);
    // The accept loop, the live view and check/diff/demo: one worker is
    // plenty, the relaying happens on the relay threads.
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wstap: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Proxy(args) => {
                proxy::run(
                    args,
                    matches.subcommand_matches("proxy"),
                    relay_threads,
                    cli.busy_poll
                        .unwrap_or(crate::proxy::busy_poll::DEFAULT_WINDOW),
                )
                .await
            }
            Command::Demo(args) => demo::run(args).await,
            Command::Ca(args) => ca::run(args),
            Command::Check(args) => check::run(args).await,
            Command::Diff(args) => diff::run(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            if is_broken_pipe(&e) {
                return ExitCode::SUCCESS;
            }
            eprintln!("wstap: {}", describe(&e));
            ExitCode::from(2)
        }
    }
}

/// A duration flag: humantime, at most [`check::MAX_DURATION`] (365 days;
/// longer is a typo, and would overflow a deadline: `Instant + d` panics).
fn duration(s: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d > crate::check::MAX_DURATION {
        return Err("too long: at most 365 days".into());
    }
    Ok(d)
}

/// Prints a subcommand's report and returns its exit code. A reader that
/// left (`| head`) does not change the verdict: a failed check piped to
/// `head` must still exit 1 under `set -o pipefail`.
fn print_report(text: &str, code: ExitCode) -> anyhow::Result<ExitCode> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(code),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(code),
        Err(e) => Err(e.into()),
    }
}

/// `e` and its causes, joined by ": " as `{:#}` joins them, leaving out a
/// cause the message already ends with: wstap's errors name their cause
/// in their own text (an event's `message` is printed with `{}`) and
/// expose it as the source too, and the user should not read it twice.
fn describe(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let cause = cause.to_string();
        if text.is_empty() {
            text = cause;
        } else if !text.ends_with(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Every proxied connection holds two sockets; a common default soft
/// limit of 1024 would cap wstap near 500 connections, so take the hard
/// limit the system allows.
fn raise_fd_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(limit = n, "open-files limit"),
        Err(e) => tracing::debug!(error = %e, "could not raise the open-files limit"),
    }
}

/// wstap's own diagnostics (not the event stream): `WSTAP_LOG=debug`.
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WSTAP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Resolves when the process is asked to stop (SIGINT or SIGTERM).
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    // The handlers are installed here, before the future is first polled:
    // a signal that arrives right after the listening line must already
    // mean "shut down cleanly", not the default "die".
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate()).ok();
        let int = signal(SignalKind::interrupt()).ok();
        async move {
            let wait = |s: Option<tokio::signal::unix::Signal>| async move {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = wait(term) => {}
                _ = wait(int) => {}
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_already_in_the_message_is_printed_once() {
        let io = || std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let e = anyhow::Error::new(crate::diff::DiffError::Read {
            path: "a.ndjson".into(),
            source: io(),
        })
        .context("FRONT");
        assert_eq!(describe(&e), "FRONT: cannot read a.ndjson: no such file");
        // a cause the message does not name is still shown
        let e = anyhow::Error::new(io()).context("cannot open the log");
        assert_eq!(describe(&e), "cannot open the log: no such file");
    }
}
