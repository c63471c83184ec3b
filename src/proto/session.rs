//! The end of a connection, judged: from both directions' taps and how the
//! relay stopped, the `close` summary and the connection-level findings
//! (abnormal closure, suspected idle timeouts). Pure: times are passed in.

use std::time::{Duration, SystemTime};

use super::close_code;
use super::event::{millis, CloseSummary, Dir, Finding, Severity};
use super::stream::{CloseSeen, StreamTap};

/// How the relay of one direction stopped reading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEnd {
    /// The sender closed its side (FIN).
    Eof,
    /// Reading failed: a reset or another socket error.
    Reset(String),
    /// Writing to the receiver failed: it went away.
    WriteFailed(String),
    /// wstap stopped this direction on purpose (strict mode, shutdown, a
    /// close from the live view): a token and words.
    Cut {
        reason: &'static str,
        detail: String,
    },
}

/// Why the relay stopped, as the I/O shell saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayEnd {
    /// A direction ended first, on its own.
    Peer(Dir, StreamEnd),
    /// wstap ended the connection itself (idle-timeout simulation, strict
    /// mode, shutdown): a token and words.
    Cut { reason: String, detail: String },
}

/// Idle limits worth naming: (limit, who uses it, what to change).
pub const KNOWN_IDLE_LIMITS: &[(u64, &str, &str)] = &[
    (
        60,
        "nginx proxy_read_timeout / AWS ALB idle timeout (both 60 s by default)",
        "raise nginx `proxy_read_timeout` and `proxy_send_timeout` (e.g. 3600s) or the ALB idle timeout (Attributes > Idle timeout), and send pings more often than every 60 s",
    ),
    (
        100,
        "Cloudflare's 100 s idle limit (free and pro plans, not adjustable)",
        "keep the connection busy: send a ping or a small message at least every 100 s (e.g. every 30 s)",
    ),
    (
        3600,
        "a one-hour tunnel timeout (HAProxy `timeout tunnel 3600s`, a raised ALB or nginx limit)",
        "raise HAProxy `timeout tunnel` / the balancer's idle timeout further, or reconnect on close",
    ),
];

/// Whether `silence` is what a limit of `limit` produces: the cut comes at
/// the limit or shortly after (timers fire late, never early).
pub fn matches_limit(silence: Duration, limit: Duration) -> bool {
    let early = Duration::from_millis(250);
    let late = Duration::from_millis(1500).max(limit / 20);
    silence + early >= limit && silence <= limit + late
}

/// Inputs of [`summarize`] that come from outside the taps.
#[derive(Debug, Clone)]
pub struct EndContext<'a> {
    pub opened_at: SystemTime,
    /// When the first direction ended (the drop itself).
    pub dropped_at: SystemTime,
    /// When the connection was finished (after any linger).
    pub ended_at: SystemTime,
    /// When the connection was accepted, for `duration_ms`.
    pub accepted_at: SystemTime,
    pub bytes_from_client: u64,
    pub bytes_from_server: u64,
    /// `--expect-idle-timeout` values, checked besides the known limits.
    pub expected_idle: &'a [Duration],
}

fn describe_close(c: &CloseSeen) -> String {
    match c.code {
        Some(code) => {
            let reason = if c.reason.is_empty() {
                String::new()
            } else {
                format!(" \"{}\"", c.reason)
            };
            format!("{code} ({}){reason}", close_code::name(code))
        }
        None => "an empty close frame".into(),
    }
}

/// Summarises a WebSocket connection that ran its course.
pub fn summarize(
    c2s: &StreamTap,
    s2c: &StreamTap,
    end: &RelayEnd,
    ctx: &EndContext<'_>,
) -> (CloseSummary, Vec<Finding>) {
    let mut findings = Vec::new();
    let cc = c2s.close_seen();
    let sc = s2c.close_seen();
    let (reason, detail) = match (end, cc, sc) {
        (RelayEnd::Cut { reason, detail }, _, _) => (reason.clone(), detail.clone()),
        (_, Some(c), Some(s)) => {
            let (first, a, b) = if c.at <= s.at {
                ("client", c, s)
            } else {
                ("server", s, c)
            };
            let other = if first == "client" {
                "server"
            } else {
                "client"
            };
            (
                "close-handshake".to_string(),
                format!(
                    "{first} closed with {}; {other} answered {}",
                    describe_close(a),
                    describe_close(b)
                ),
            )
        }
        (RelayEnd::Peer(dir, how), _, _) => {
            let who = dir.sender();
            let token = match how {
                StreamEnd::Eof => format!("{who}-closed"),
                StreamEnd::Reset(_) => format!("{who}-reset"),
                StreamEnd::WriteFailed(_) => format!("{}-gone", dir.receiver()),
                StreamEnd::Cut { reason, .. } => reason.to_string(),
            };
            let how_words = match how {
                StreamEnd::Eof => format!("the {who} closed the TCP connection"),
                StreamEnd::Reset(e) => format!("the {who}'s connection failed ({e})"),
                StreamEnd::WriteFailed(e) => {
                    format!("the {} stopped accepting data ({e})", dir.receiver())
                }
                StreamEnd::Cut { detail, .. } => detail.clone(),
            };
            let sent = match (cc, sc) {
                (Some(c), None) => format!(" after the client's close {}", describe_close(c)),
                (None, Some(s)) => format!(" after the server's close {}", describe_close(s)),
                _ => " without a close frame".to_string(),
            };
            (token, format!("{how_words}{sent}"))
        }
    };

    let lifetime = ctx
        .dropped_at
        .duration_since(ctx.opened_at)
        .unwrap_or_default();
    let complete = cc.is_some() && sc.is_some();
    // wstap's own deliberate ends (strict mode, shutdown, the live view)
    // sent close frames and said why; a simulated idle cut is the failure
    // being reproduced, so it is judged like a real one
    let deliberate = match end {
        RelayEnd::Cut { reason, .. } => reason != "idle-timeout",
        RelayEnd::Peer(_, StreamEnd::Cut { .. }) => true,
        RelayEnd::Peer(..) => false,
    };
    if !complete && !deliberate {
        let (who, sees) = match end {
            RelayEnd::Peer(dir, StreamEnd::WriteFailed(_)) => (dir.receiver(), dir.sender()),
            RelayEnd::Peer(dir, _) => (dir.sender(), dir.receiver()),
            RelayEnd::Cut { .. } => ("wstap (simulating a hop)", "each side"),
        };
        let mut f = Finding::new(
            "abnormal-closure",
            Severity::Warning,
            format!(
                "the {who} ended the connection without a completed close handshake after {}; {sees} sees close code 1006 (Abnormal Closure)",
                human(lifetime)
            ),
            "1006 is never sent on the wire: it means the TCP connection dropped. If no side chose to end it, look for a hop that cuts connections (idle timeouts, restarts) and for crashes; end connections on purpose with a close frame (1000/1001).",
        )
        .observed(detail.clone())
        .view(who);
        if let Some(u) = c2s.unfinished().or_else(|| s2c.unfinished()) {
            f.observed = Some(format!("{detail}; {u}"));
        }
        findings.push(f);

        let last = [c2s.stats().last_frame_at, s2c.stats().last_frame_at]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(ctx.opened_at)
            .max(ctx.opened_at);
        let silence = ctx.dropped_at.duration_since(last).unwrap_or_default();
        if let Some(f) = idle_finding(silence, ctx.expected_idle, who) {
            findings.push(f);
        }
    }

    let summary = CloseSummary {
        reason,
        detail,
        duration_ms: millis(
            ctx.ended_at
                .duration_since(ctx.accepted_at)
                .unwrap_or_default(),
        ),
        frames_from_client: c2s.stats().frames,
        frames_from_server: s2c.stats().frames,
        bytes_from_client: ctx.bytes_from_client,
        bytes_from_server: ctx.bytes_from_server,
        websocket: true,
    };
    (summary, findings)
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

/// A duration for messages: milliseconds below a second, humantime above.
pub fn human(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        humantime::format_duration(round_ms(d)).to_string()
    }
}

/// An `idle-timeout-suspected` finding when `silence` matches a limit.
pub fn idle_finding(silence: Duration, expected: &[Duration], who: &str) -> Option<Finding> {
    let user = expected.iter().find(|l| matches_limit(silence, **l)).map(|l| {
        (
            *l,
            "the idle limit you named (--expect-idle-timeout)".to_string(),
            "raise that hop's idle/read timeout above your longest silence, and send pings more often than the limit".to_string(),
        )
    });
    let known = || {
        KNOWN_IDLE_LIMITS
            .iter()
            .find(|(secs, _, _)| matches_limit(silence, Duration::from_secs(*secs)))
            .map(|(secs, who, fix)| (Duration::from_secs(*secs), who.to_string(), fix.to_string()))
    };
    let (limit, source, fix) = user.or_else(known)?;
    Some(
        Finding::new(
            "idle-timeout-suspected",
            Severity::Warning,
            format!(
                "the connection was cut after {} without frames in either direction, which matches {source}",
                humantime::format_duration(round_ms(silence))
            ),
            format!("An idle timeout of {} on a hop between the peers is the likely cause: {fix}.", humantime::format_duration(limit)),
        )
        .expected(format!("a frame at least every {}", humantime::format_duration(limit)))
        .observed(format!("{} of silence, then the {who} ended the connection", humantime::format_duration(round_ms(silence))))
        .view(who),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::event::{ConnId, Event};
    use crate::proto::frame::{encode_frame, Opcode};
    use crate::proto::stream::TapConfig;

    fn t0() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000)
    }

    fn taps() -> (StreamTap, StreamTap) {
        let cfg = TapConfig {
            max_preview: 32,
            ..Default::default()
        };
        (
            StreamTap::new(ConnId(1), Dir::ClientToServer, cfg.clone()),
            StreamTap::new(ConnId(1), Dir::ServerToClient, cfg),
        )
    }

    fn send(t: &mut StreamTap, at: SystemTime, op: Opcode, payload: &[u8]) {
        let mask = (t.dir() == Dir::ClientToServer).then_some([1, 2, 3, 4]);
        let mut w = Vec::new();
        encode_frame(&mut w, true, false, op, mask, payload);
        let mut out: Vec<Event> = Vec::new();
        t.feed(&w, at, &mut out);
    }

    fn ctx(ended: SystemTime) -> EndContext<'static> {
        EndContext {
            opened_at: t0(),
            dropped_at: ended,
            ended_at: ended,
            accepted_at: t0(),
            bytes_from_client: 0,
            bytes_from_server: 0,
            expected_idle: &[],
        }
    }

    #[test]
    fn clean_close_handshake_has_no_findings() {
        let (mut c, mut s) = taps();
        send(&mut c, t0(), Opcode::Close, &1000u16.to_be_bytes());
        send(
            &mut s,
            t0() + Duration::from_millis(1),
            Opcode::Close,
            &1000u16.to_be_bytes(),
        );
        let (sum, findings) = summarize(
            &c,
            &s,
            &RelayEnd::Peer(Dir::ServerToClient, StreamEnd::Eof),
            &ctx(t0() + Duration::from_secs(1)),
        );
        assert_eq!(sum.reason, "close-handshake");
        assert!(
            sum.detail
                .starts_with("client closed with 1000 (Normal Closure)"),
            "{}",
            sum.detail
        );
        assert!(findings.is_empty());
        assert_eq!((sum.frames_from_client, sum.frames_from_server), (1, 1));
    }

    #[test]
    fn drop_without_close_is_abnormal_and_idle_matches() {
        let (mut c, s) = taps();
        send(&mut c, t0(), Opcode::Text, b"hi");
        let end = t0() + Duration::from_millis(60_400);
        let (sum, findings) = summarize(
            &c,
            &s,
            &RelayEnd::Peer(Dir::ServerToClient, StreamEnd::Eof),
            &ctx(end),
        );
        assert_eq!(sum.reason, "server-closed");
        let codes: Vec<_> = findings.iter().map(|f| f.code.as_str()).collect();
        assert_eq!(codes, ["abnormal-closure", "idle-timeout-suspected"]);
        assert!(
            findings[1].message.contains("1m 400ms"),
            "{}",
            findings[1].message
        );
        assert!(findings[1].hint.contains("proxy_read_timeout"));
    }

    #[test]
    fn idle_limits_match_only_near_the_limit() {
        let l = Duration::from_secs(60);
        assert!(matches_limit(Duration::from_millis(59_900), l));
        assert!(matches_limit(Duration::from_millis(61_000), l));
        assert!(!matches_limit(Duration::from_secs(30), l));
        assert!(!matches_limit(Duration::from_secs(70), l));
        assert!(idle_finding(Duration::from_secs(45), &[], "server").is_none());
        let f = idle_finding(
            Duration::from_millis(3_100),
            &[Duration::from_secs(3)],
            "server",
        )
        .unwrap();
        assert!(f.message.contains("you named"));
        assert!(idle_finding(Duration::from_millis(100_300), &[], "server")
            .unwrap()
            .message
            .contains("Cloudflare"));
    }
}
