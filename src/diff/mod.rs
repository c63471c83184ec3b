//! `wstap diff FRONT BACK`: reads the NDJSON logs of two taps, one in front
//! of a hop (nginx, a load balancer) and one behind it, pairs their
//! handshakes by `Sec-WebSocket-Key` (it passes hops unchanged), and says
//! what the hop changed, judged by `proto::analysis`. Prints nothing.

use std::collections::{HashMap, VecDeque};
use std::io::BufRead;
use std::path::Path;

use serde::Serialize;

use crate::proto::analysis::{self, BEHIND_HOP, NGINX_UPGRADE};
use crate::proto::event::{view_header, Event, EventKind, Finding, Handshake};

#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// A handshake event from one log.
#[derive(Debug, Clone)]
pub struct Tapped {
    pub conn: Option<u64>,
    pub handshake: Handshake,
}

/// What one log held, as far as `diff` cares.
#[derive(Debug, Clone, Default)]
pub struct Log {
    pub handshakes: Vec<Tapped>,
    /// Lines that are not JSON events (or not a readable handshake, or
    /// longer than [`MAX_LINE`]).
    pub unparsable: usize,
}

/// The longest line `read_log` looks at, in bytes (without its newline).
/// wstap never writes one near this (heads are capped at 64 KiB and 128
/// headers); a longer line is skipped unread, so one huge line (or
/// `/dev/zero`) cannot take the memory.
pub const MAX_LINE: usize = 16 << 20;

/// One line from [`next_line`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line {
    /// The line is in the buffer, without its `\n` (or `\r\n`).
    Read,
    /// Longer than the cap: passed over up to its `\n`, the buffer empty.
    TooLong,
    /// The end of the input.
    End,
}

/// Reads the next line into `buf` (cleared first), keeping at most `cap`
/// bytes of it: the rest of a longer line is consumed up to its `\n` and
/// dropped, so memory stays within `cap` whatever the input.
fn next_line(r: &mut impl BufRead, buf: &mut Vec<u8>, cap: usize) -> std::io::Result<Line> {
    buf.clear();
    // one byte over the cap is kept for the `\r` of a `\r\n`
    let keep = cap.saturating_add(1);
    let mut too_long = false;
    let mut any = false;
    let mut newline = false;
    loop {
        let chunk = match r.fill_buf() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if chunk.is_empty() {
            break;
        }
        any = true;
        let (content, used) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => {
                newline = true;
                (&chunk[..i], i + 1)
            }
            None => (chunk, chunk.len()),
        };
        if !too_long {
            if content.len() > keep - buf.len() {
                too_long = true;
                buf.clear();
            } else {
                buf.extend_from_slice(content);
            }
        }
        r.consume(used);
        if newline {
            break;
        }
    }
    if !any {
        return Ok(Line::End);
    }
    if newline && buf.last() == Some(&b'\r') {
        buf.pop();
    }
    if too_long || buf.len() > cap {
        buf.clear();
        return Ok(Line::TooLong);
    }
    Ok(Line::Read)
}

/// Reads an NDJSON event log. Unparsable lines are counted, never fatal;
/// events other than handshakes are passed over, known or not.
pub fn read_log(r: impl BufRead) -> std::io::Result<Log> {
    read_log_capped(r, MAX_LINE)
}

/// [`read_log`] with lines longer than `cap` bytes skipped and counted.
fn read_log_capped(mut r: impl BufRead, cap: usize) -> std::io::Result<Log> {
    let mut log = Log::default();
    let mut buf = Vec::new();
    let mut n = 0usize;
    loop {
        n += 1;
        match next_line(&mut r, &mut buf, cap)? {
            Line::Read => {}
            Line::TooLong => {
                tracing::debug!(line = n, cap, "skipped: longer than the cap");
                log.unparsable += 1;
                continue;
            }
            Line::End => break,
        }
        let line = match std::str::from_utf8(&buf) {
            Ok(l) => l,
            // a line that is not UTF-8 is a damaged line, not a damaged file
            Err(_) => {
                tracing::debug!(line = n, "skipped: not UTF-8");
                log.unparsable += 1;
                continue;
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        let value = match serde_json::from_str::<serde_json::Value>(line) {
            Ok(v) => v,
            Err(e) => {
                tracing::debug!(line = n, error = %e, "skipped: not JSON");
                log.unparsable += 1;
                continue;
            }
        };
        match value.get("event").and_then(|e| e.as_str()) {
            Some("handshake") => {}
            Some(_) => continue,
            None => {
                tracing::debug!(line = n, "skipped: JSON without an event name");
                log.unparsable += 1;
                continue;
            }
        }
        match serde_json::from_value::<Event>(value) {
            Ok(Event {
                conn,
                kind: EventKind::Handshake(h),
                ..
            }) => log.handshakes.push(Tapped {
                conn: conn.map(|c| c.0),
                handshake: *h,
            }),
            Ok(_) => log.unparsable += 1,
            Err(e) => {
                tracing::debug!(line = n, error = %e, "skipped: not a readable handshake");
                log.unparsable += 1;
            }
        }
    }
    Ok(log)
}

/// Reads the log at `path`.
pub fn read_log_file(path: &Path) -> Result<Log, DiffError> {
    let err = |source| DiffError::Read {
        path: path.display().to_string(),
        source,
    };
    let file = std::fs::File::open(path).map_err(err)?;
    read_log(std::io::BufReader::new(file)).map_err(err)
}

/// The same thing on both sides of the hop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Versus<T> {
    pub front: T,
    pub back: T,
}

/// Header changes. `removed` and `added` are `[name, value]`, `changed` is
/// `[name, front, back]`, names as on the wire.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HeaderDiff {
    pub removed: Vec<(String, String)>,
    pub added: Vec<(String, String)>,
    pub changed: Vec<(String, String, String)>,
}

impl HeaderDiff {
    pub fn is_empty(&self) -> bool {
        self.removed.is_empty() && self.added.is_empty() && self.changed.is_empty()
    }
}

/// Compares two header lists: names ignore case, values do not. Duplicates
/// are matched as a multiset: equal values cancel out, what is left pairs
/// up in order as changes, and the rest was removed or added.
pub fn diff_headers(from: &[(String, String)], to: &[(String, String)]) -> HeaderDiff {
    // both lists grouped once by lower-case name, names in first-seen
    // order: linear, however many headers there are
    let mut order: Vec<String> = Vec::new();
    type Side<'a> = Vec<&'a (String, String)>;
    let mut groups: HashMap<String, (Side, Side)> = HashMap::new();
    for (side, list) in [(0, from), (1, to)] {
        for h in list {
            let g = groups
                .entry(h.0.to_ascii_lowercase())
                .or_insert_with_key(|k| {
                    order.push(k.clone());
                    Default::default()
                });
            if side == 0 {
                g.0.push(h);
            } else {
                g.1.push(h);
            }
        }
    }
    let mut d = HeaderDiff::default();
    for name in &order {
        let Some((f, to_same)) = groups.remove(name) else {
            continue;
        };
        // equal values cancel out, each with the first one left in `f`
        let mut by_value: HashMap<&str, VecDeque<usize>> = HashMap::new();
        for (i, h) in f.iter().enumerate() {
            by_value.entry(h.1.as_str()).or_default().push_back(i);
        }
        let mut cancelled = vec![false; f.len()];
        let mut t: Vec<&(String, String)> = Vec::new();
        for h in to_same {
            match by_value.get_mut(h.1.as_str()).and_then(VecDeque::pop_front) {
                Some(i) => cancelled[i] = true,
                None => t.push(h),
            }
        }
        let f: Vec<&(String, String)> = f
            .into_iter()
            .zip(cancelled)
            .filter(|(_, c)| !c)
            .map(|(h, _)| h)
            .collect();
        let both = f.len().min(t.len());
        for (a, b) in f.iter().zip(&t).take(both) {
            d.changed.push((a.0.clone(), a.1.clone(), b.1.clone()));
        }
        d.removed.extend(f[both..].iter().map(|h| (*h).clone()));
        d.added.extend(t[both..].iter().map(|h| (*h).clone()));
    }
    d
}

/// One handshake seen by both taps.
#[derive(Debug, Clone, Serialize)]
pub struct Pair {
    pub key: String,
    /// The `conn` of the handshake in each log.
    pub conn: Versus<Option<u64>>,
    pub method: String,
    pub target: Versus<String>,
    /// What left the front tap vs what arrived behind the hop.
    pub removed: Vec<(String, String)>,
    pub added: Vec<(String, String)>,
    pub changed: Vec<(String, String, String)>,
    pub version: Versus<String>,
    /// The answer as the back tap passed it to the hop, and as it came out
    /// of the hop to the front tap; `null` where there was none.
    pub status: Versus<Option<u16>>,
    /// The response headers on the way back: `removed` and `added` are
    /// what the hop did to the backend's answer; `changed` keeps the
    /// `[name, front, back]` order.
    pub response: HeaderDiff,
    pub response_version: Versus<Option<String>>,
    /// Findings the hop caused: present behind it (or in front of it, on
    /// the way back) and not on the other side.
    pub findings: Vec<Finding>,
    /// The difference in one sentence, with the fix when there is one.
    pub summary: String,
}

/// A handshake only one tap saw (or that cannot be paired).
#[derive(Debug, Clone, Serialize)]
pub struct Unpaired {
    /// `front` or `back`.
    pub side: &'static str,
    pub conn: Option<u64>,
    pub key: Option<String>,
    pub target: Option<String>,
    pub why: String,
}

/// Lines of each log that were skipped.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Skipped {
    pub front: usize,
    pub back: usize,
}

/// The result of `diff`.
#[derive(Debug, Clone, Serialize)]
pub struct Diff {
    pub pairs: Vec<Pair>,
    pub unpaired: Vec<Unpaired>,
    pub skipped_lines: Skipped,
}

fn key_of(view: Option<&crate::proto::event::RequestView>) -> Option<String> {
    view.and_then(|r| view_header(&r.headers, "Sec-WebSocket-Key"))
        .map(|k| k.trim().to_string())
        .filter(|k| !k.is_empty())
}

/// Pairs the front tap's handshakes (by the request it sent on) with the
/// back tap's (by the request it received). A key seen more than once on
/// a side pairs in log order; the extra ones are unpaired.
pub fn diff(front: &Log, back: &Log) -> Diff {
    let mut unpaired = Vec::new();
    // back handshakes by key, as indices in log order
    let mut by_key: HashMap<String, VecDeque<usize>> = HashMap::new();
    let mut back_keys: Vec<Option<String>> = Vec::new();
    for (i, b) in back.handshakes.iter().enumerate() {
        let req = b.handshake.client_request.as_ref();
        let key = key_of(req);
        match &key {
            Some(k) => by_key.entry(k.clone()).or_default().push_back(i),
            None => unpaired.push(Unpaired {
                side: "back",
                conn: b.conn,
                key: None,
                target: req.map(|r| r.target.clone()),
                why: "the request that arrived has no Sec-WebSocket-Key (a hop removed it, or it was never a WebSocket handshake)".into(),
            }),
        }
        back_keys.push(key);
    }
    let mut paired = vec![false; back.handshakes.len()];
    let mut pairs = Vec::new();
    for f in &front.handshakes {
        let sent = f.handshake.upstream_request.as_ref();
        let target = sent
            .or(f.handshake.client_request.as_ref())
            .map(|r| r.target.clone());
        let Some(sent_req) = sent else {
            unpaired.push(Unpaired {
                side: "front",
                conn: f.conn,
                key: key_of(f.handshake.client_request.as_ref()),
                target,
                why: "nothing left the front tap: it could not reach its upstream (see its upstream-* finding)".into(),
            });
            continue;
        };
        let Some(key) = key_of(Some(sent_req)) else {
            unpaired.push(Unpaired {
                side: "front",
                conn: f.conn,
                key: None,
                target,
                why: "the request has no Sec-WebSocket-Key to pair by".into(),
            });
            continue;
        };
        match by_key.get_mut(&key).and_then(VecDeque::pop_front) {
            Some(i) => {
                paired[i] = true;
                pairs.push(pair(key, f, &back.handshakes[i]));
            }
            None => unpaired.push(Unpaired {
                side: "front",
                conn: f.conn,
                key: Some(key),
                target,
                why: "no handshake with this key behind the hop: it never reached the back tap (the hop answered itself, or sent it elsewhere)".into(),
            }),
        }
    }
    for (i, b) in back.handshakes.iter().enumerate() {
        if let (false, Some(key)) = (paired[i], &back_keys[i]) {
            unpaired.push(Unpaired {
                side: "back",
                conn: b.conn,
                key: Some(key.clone()),
                target: b.handshake.client_request.as_ref().map(|r| r.target.clone()),
                why: "no handshake with this key left the front tap: it came another way (or the front log is from another run)".into(),
            });
        }
    }
    Diff {
        pairs,
        unpaired,
        skipped_lines: Skipped {
            front: front.unparsable,
            back: back.unparsable,
        },
    }
}

/// Codes in `a` that `b` lacks, as findings.
fn only_in(a: Vec<Finding>, b: &[Finding]) -> Vec<Finding> {
    a.into_iter()
        .filter(|f| !b.iter().any(|g| g.code == f.code))
        .collect()
}

fn pair(key: String, f: &Tapped, b: &Tapped) -> Pair {
    let empty = Vec::new();
    let sent = f.handshake.upstream_request.as_ref();
    let arrived = b.handshake.client_request.as_ref();
    let headers = |r: Option<&crate::proto::event::RequestView>| {
        r.map(|r| &r.headers).unwrap_or(&empty).clone()
    };
    let req_diff = diff_headers(&headers(sent), &headers(arrived));
    // the way back: the backend's answer as the back tap passed it on
    // (`answered`), and what came out of the hop to the front tap
    let answered = b.handshake.client_response.as_ref();
    let came_out = f.handshake.upstream_response.as_ref();
    let res_headers = |r: Option<&crate::proto::event::ResponseView>| {
        r.map(|r| &r.headers).unwrap_or(&empty).clone()
    };
    // compared as front vs back, so names are the front tap's and
    // `changed` keeps its order; removed/added turn round, the response
    // travelling back → front
    let front_vs_back = diff_headers(&res_headers(came_out), &res_headers(answered));
    let response = HeaderDiff {
        removed: front_vs_back.added,
        added: front_vs_back.removed,
        changed: front_vs_back.changed,
    };

    // the hop's findings: on the way there, what the request behind the hop
    // has that the one in front did not; on the way back, what the answer
    // out of the hop has that the backend's did not
    let mut findings = Vec::new();
    if let (Some(s), Some(a)) = (sent, arrived) {
        let before = analysis::judge_request(s, "upstream_request");
        findings.extend(only_in(analysis::judge_request(a, BEHIND_HOP), &before));
    }
    if let (Some(out), Some(s)) = (came_out, sent) {
        let backend = match (answered, arrived) {
            (Some(res), Some(req)) => analysis::judge_response(res, req, "client_response"),
            _ => Vec::new(),
        };
        findings.extend(only_in(
            analysis::judge_response(out, s, "upstream_response"),
            &backend,
        ));
    }

    let version = Versus {
        front: sent.map(|r| r.version.clone()).unwrap_or_default(),
        back: arrived.map(|r| r.version.clone()).unwrap_or_default(),
    };
    let status = Versus {
        front: came_out.map(|r| r.status),
        back: answered.map(|r| r.status),
    };
    let mut p = Pair {
        key,
        conn: Versus {
            front: f.conn,
            back: b.conn,
        },
        method: sent.map(|r| r.method.clone()).unwrap_or_default(),
        target: Versus {
            front: sent.map(|r| r.target.clone()).unwrap_or_default(),
            back: arrived.map(|r| r.target.clone()).unwrap_or_default(),
        },
        removed: req_diff.removed,
        added: req_diff.added,
        changed: req_diff.changed,
        version,
        status,
        response,
        response_version: Versus {
            front: came_out.map(|r| r.version.clone()),
            back: answered.map(|r| r.version.clone()),
        },
        findings,
        summary: String::new(),
    };
    p.summary = summarize(&p);
    p
}

/// `a`, `a and b`, `a, b and c`.
fn and_list(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// The names in `h`, each once (ignoring case) as first seen.
fn names(h: &[(String, String)]) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    h.iter()
        .filter(|(n, _)| seen.insert(n.to_ascii_lowercase()))
        .map(|(n, _)| n.clone())
        .collect()
}

/// The pair in one sentence: what the hop did, then why it matters.
fn summarize(p: &Pair) -> String {
    let mut did = Vec::new();
    if !p.removed.is_empty() {
        did.push(format!("removed {}", and_list(&names(&p.removed))));
    }
    if !p.changed.is_empty() {
        let c: Vec<String> = p
            .changed
            .iter()
            .map(|(n, a, b)| format!("{n} ({a:?} → {b:?})"))
            .collect();
        did.push(format!("changed {}", and_list(&c)));
    }
    if !p.added.is_empty() {
        did.push(format!("added {}", and_list(&names(&p.added))));
    }
    if p.target.front != p.target.back {
        did.push(format!(
            "rewrote the target {:?} to {:?}",
            p.target.front, p.target.back
        ));
    }
    if p.version.front != p.version.back {
        let verb = if p.version.back < p.version.front {
            "downgraded"
        } else {
            "changed the version"
        };
        did.push(format!("{verb} to {}", p.version.back));
    }
    let mut s = if did.is_empty() {
        "the hop passed the request unchanged".to_string()
    } else {
        format!("the hop {}", and_list(&did))
    };
    let codes: Vec<&str> = p.findings.iter().map(|f| f.code.as_str()).collect();
    let stripped = codes.iter().any(|c| {
        matches!(
            *c,
            "upgrade-header-missing" | "connection-upgrade-missing" | "http-version-downgrade"
        )
    });
    // nginx's plain proxy_pass: HTTP/1.0 and `Connection: close` upstream
    let close_sent = p
        .changed
        .iter()
        .any(|(n, _, b)| n.eq_ignore_ascii_case("Connection") && b.eq_ignore_ascii_case("close"))
        || p.added
            .iter()
            .any(|(n, v)| n.eq_ignore_ascii_case("Connection") && v.eq_ignore_ascii_case("close"));
    if stripped && p.version.back == "HTTP/1.0" && close_sent {
        s.push_str(&format!(
            ": nginx defaults (a plain proxy_pass); add {NGINX_UPGRADE}"
        ));
    } else if let Some(first) = p.findings.first() {
        s.push_str(&format!(": {}", first.message));
    } else if !did.is_empty() {
        s.push_str("; nothing that breaks the upgrade");
    }
    if p.status.front != p.status.back {
        let show = |s: Option<u16>| s.map_or("nothing".to_string(), |s| s.to_string());
        s.push_str(&format!(
            "; on the way back the backend's {} came out as {}",
            show(p.status.back),
            show(p.status.front)
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn header_differences_ignore_name_case_and_handle_duplicates() {
        let d = diff_headers(
            &h(&[
                ("Host", "a:1"),
                ("Upgrade", "websocket"),
                ("Connection", "Upgrade"),
                ("Cookie", "x=1"),
                ("Cookie", "y=2"),
                ("Accept", "*/*"),
            ]),
            &h(&[
                ("host", "a:1"),
                ("Connection", "close"),
                ("cookie", "y=2"),
                ("X-Real-IP", "127.0.0.1"),
                ("Accept", "*/*"),
                ("Accept", "text/html"),
            ]),
        );
        assert_eq!(d.removed, h(&[("Upgrade", "websocket"), ("Cookie", "x=1")]));
        assert_eq!(
            d.added,
            h(&[("Accept", "text/html"), ("X-Real-IP", "127.0.0.1")])
        );
        assert_eq!(
            d.changed,
            [(
                "Connection".to_string(),
                "Upgrade".to_string(),
                "close".to_string()
            )]
        );
        assert!(diff_headers(&h(&[("A", "1")]), &h(&[("a", "1")])).is_empty());
    }

    const KEY_A: &str = "dGhlIHNhbXBsZSBub25jZQ==";
    const KEY_B: &str = "AQIDBAUGBwgJCgsMDQ4PEA==";

    fn req(version: &str, headers: &[(&str, &str)]) -> serde_json::Value {
        serde_json::json!({"method": "GET", "target": "/chat", "version": version, "headers": h(headers)})
    }

    fn res(status: u16, headers: &[(&str, &str)]) -> serde_json::Value {
        serde_json::json!({"status": status, "reason": "x", "version": "HTTP/1.1", "headers": h(headers)})
    }

    fn healthy(key: &str) -> serde_json::Value {
        req(
            "HTTP/1.1",
            &[
                ("Host", "front"),
                ("Upgrade", "websocket"),
                ("Connection", "Upgrade"),
                ("Sec-WebSocket-Key", key),
                ("Sec-WebSocket-Version", "13"),
            ],
        )
    }

    fn stripped(key: &str) -> serde_json::Value {
        req(
            "HTTP/1.0",
            &[
                ("Host", "back"),
                ("Connection", "close"),
                ("Sec-WebSocket-Key", key),
                ("Sec-WebSocket-Version", "13"),
            ],
        )
    }

    fn accepted(key: &str) -> serde_json::Value {
        let accept = crate::proto::handshake::accept_key(key);
        res(
            101,
            &[
                ("Upgrade", "websocket"),
                ("Connection", "Upgrade"),
                ("Sec-WebSocket-Accept", &accept),
            ],
        )
    }

    fn line(
        conn: u64,
        up_req: serde_json::Value,
        client_req: serde_json::Value,
        up_res: serde_json::Value,
    ) -> String {
        serde_json::json!({
            "ts": "2026-01-01T00:00:00.000000Z", "conn": conn, "event": "handshake",
            "client_request": client_req, "upstream_request": up_req,
            "upstream_response": up_res.clone(), "client_response": up_res,
        })
        .to_string()
    }

    fn log(lines: &[String]) -> Log {
        read_log(lines.join("\n").as_bytes()).unwrap()
    }

    #[test]
    fn hand_made_logs_pair_by_key_with_unpaired_duplicates_and_bad_lines() {
        let front = log(&[
            r#"{"ts":"2026-01-01T00:00:00.000000Z","event":"listening","addr":"127.0.0.1:1"}"#.into(),
            "this line is not JSON".into(),
            line(1, healthy(KEY_A), healthy(KEY_A), accepted(KEY_A)),
            r#"{"ts":"2026-01-01T00:00:00.000000Z","conn":1,"event":"frame-from-the-future","x":1}"#.into(),
            line(2, healthy(KEY_A), healthy(KEY_A), accepted(KEY_A)),
            line(3, healthy(KEY_B), healthy(KEY_B), accepted(KEY_B)),
            // the upstream was unreachable: nothing left the tap
            serde_json::json!({"ts": "2026-01-01T00:00:00Z", "conn": 4, "event": "handshake",
                "client_request": healthy("AAAAAAAAAAAAAAAAAAAAAA=="), "upstream_request": null,
                "upstream_response": null, "client_response": res(502, &[])}).to_string(),
            r#"{"ts":"2026-01-01T00:00:00Z","event":"handshake","client_request":42}"#.into(),
        ]);
        assert_eq!(front.handshakes.len(), 4);
        assert_eq!(
            front.unparsable, 2,
            "the non-JSON line and the broken handshake"
        );
        let back = log(&[
            line(7, stripped(KEY_A), stripped(KEY_A), accepted(KEY_A)),
            "{truncated".into(),
            line(
                8,
                healthy("CCCCCCCCCCCCCCCCCCCCCC=="),
                healthy("CCCCCCCCCCCCCCCCCCCCCC=="),
                accepted("CCCCCCCCCCCCCCCCCCCCCC=="),
            ),
            line(
                9,
                req("HTTP/1.1", &[("Host", "b")]),
                req("HTTP/1.1", &[("Host", "b")]),
                res(200, &[]),
            ),
        ]);
        let d = diff(&front, &back);
        assert_eq!((d.skipped_lines.front, d.skipped_lines.back), (2, 1));
        assert_eq!(d.pairs.len(), 1);
        let p = &d.pairs[0];
        assert_eq!(p.key, KEY_A);
        assert_eq!((p.conn.front, p.conn.back), (Some(1), Some(7)));
        assert_eq!(p.removed, h(&[("Upgrade", "websocket")]));
        assert_eq!(
            p.changed,
            [
                ("Host".to_string(), "front".to_string(), "back".to_string()),
                (
                    "Connection".to_string(),
                    "Upgrade".to_string(),
                    "close".to_string()
                )
            ]
        );
        assert!(p.added.is_empty());
        assert_eq!(
            p.version,
            Versus {
                front: "HTTP/1.1".into(),
                back: "HTTP/1.0".into()
            }
        );
        assert_eq!(
            p.status,
            Versus {
                front: Some(101),
                back: Some(101)
            }
        );
        let codes: Vec<_> = p.findings.iter().map(|f| f.code.as_str()).collect();
        assert_eq!(
            codes,
            [
                "upgrade-header-missing",
                "connection-upgrade-missing",
                "http-version-downgrade"
            ]
        );
        assert!(
            p.findings[0].message.contains("behind the hop"),
            "{}",
            p.findings[0].message
        );
        assert!(
            p.summary
                .starts_with("the hop removed Upgrade, changed Host"),
            "{}",
            p.summary
        );
        assert!(
            p.summary.contains("downgraded to HTTP/1.0: nginx defaults"),
            "{}",
            p.summary
        );
        assert!(
            p.summary.contains("proxy_set_header Upgrade $http_upgrade"),
            "{}",
            p.summary
        );

        let un: Vec<_> = d
            .unpaired
            .iter()
            .map(|u| (u.side, u.conn, u.key.as_deref()))
            .collect();
        assert_eq!(
            un,
            [
                ("back", Some(9), None),
                // the second use of KEY_A: one arrived behind the hop
                ("front", Some(2), Some(KEY_A)),
                ("front", Some(3), Some(KEY_B)),
                ("front", Some(4), Some("AAAAAAAAAAAAAAAAAAAAAA==")),
                ("back", Some(8), Some("CCCCCCCCCCCCCCCCCCCCCC==")),
            ]
        );
        assert!(d.unpaired[3].why.contains("could not reach its upstream"));
    }

    #[test]
    fn an_unchanged_handshake_has_no_findings() {
        let front = log(&[line(1, healthy(KEY_A), healthy(KEY_A), accepted(KEY_A))]);
        let back = log(&[line(1, healthy(KEY_A), healthy(KEY_A), accepted(KEY_A))]);
        let d = diff(&front, &back);
        let p = &d.pairs[0];
        assert!(p.findings.is_empty() && p.removed.is_empty() && p.response.is_empty());
        assert_eq!(p.summary, "the hop passed the request unchanged");
    }

    #[test]
    fn the_way_back_is_compared_too() {
        // the backend accepted; the hop turned the answer into a 502
        let front = log(&[line(
            1,
            healthy(KEY_A),
            healthy(KEY_A),
            res(502, &[("Server", "lb")]),
        )]);
        let back = log(&[line(1, healthy(KEY_A), healthy(KEY_A), accepted(KEY_A))]);
        let p = &diff(&front, &back).pairs[0];
        assert_eq!(
            p.status,
            Versus {
                front: Some(502),
                back: Some(101)
            }
        );
        assert_eq!(p.response.added, h(&[("Server", "lb")]));
        assert_eq!(p.response.removed.len(), 3);
        let codes: Vec<_> = p.findings.iter().map(|f| f.code.as_str()).collect();
        assert_eq!(codes, ["upgrade-not-accepted"]);
        assert!(
            p.summary.ends_with("the backend's 101 came out as 502"),
            "{}",
            p.summary
        );
    }

    /// `next_line` over `input`, read through a tiny buffer so lines cross
    /// chunk boundaries: what each call gave, the line as text.
    fn lines_capped(input: &[u8], cap: usize) -> Vec<Result<String, Line>> {
        let mut r = std::io::BufReader::with_capacity(3, input);
        let mut buf = Vec::new();
        let mut out = Vec::new();
        loop {
            match next_line(&mut r, &mut buf, cap).unwrap() {
                Line::Read => out.push(Ok(String::from_utf8(buf.clone()).unwrap())),
                Line::End => return out,
                other => {
                    assert!(buf.is_empty());
                    out.push(Err(other));
                }
            }
        }
    }

    #[test]
    fn lines_longer_than_the_cap_are_passed_over_and_the_next_ones_read() {
        let ok = |s: &str| Ok(s.to_string());
        assert_eq!(
            lines_capped(b"12345\n123456\r\n1234567\n\n12\r\n123456", 6),
            [
                ok("12345"),
                // exactly the cap, without its \r\n
                ok("123456"),
                Err(Line::TooLong),
                ok(""),
                ok("12"),
                // the last line, without a newline
                ok("123456"),
            ]
        );
        assert_eq!(
            lines_capped(b"1234567\r\nab\n12345678901234567890", 6),
            [Err(Line::TooLong), ok("ab"), Err(Line::TooLong)]
        );
        assert_eq!(lines_capped(b"", 6), []);
        assert_eq!(lines_capped(b"\n", 0), [ok("")]);
        assert_eq!(
            lines_capped(b"x\ny", 0),
            [Err(Line::TooLong), Err(Line::TooLong)]
        );

        // in a log: a handshake over the cap is skipped and counted like
        // an unparsable line; the handshakes around it are read
        let short = line(1, healthy(KEY_A), healthy(KEY_A), accepted(KEY_A));
        let long = line(
            2,
            healthy(KEY_B),
            req("HTTP/1.1", &[("X-Pad", &"p".repeat(short.len()))]),
            accepted(KEY_B),
        );
        let third = line(3, healthy(KEY_B), healthy(KEY_B), accepted(KEY_B));
        let text = [short.as_str(), &long, &third].join("\n");
        let whole = read_log(text.as_bytes()).unwrap();
        assert_eq!((whole.handshakes.len(), whole.unparsable), (3, 0));
        let r = std::io::BufReader::with_capacity(64, text.as_bytes());
        let capped = read_log_capped(r, short.len().max(third.len())).unwrap();
        let conns: Vec<_> = capped.handshakes.iter().map(|t| t.conn).collect();
        assert_eq!(conns, [Some(1), Some(3)]);
        assert_eq!(capped.unparsable, 1, "the long line, counted");
    }

    /// `diff_headers` as it was before grouping (quadratic): what the
    /// grouped one must match exactly.
    fn diff_headers_reference(from: &[(String, String)], to: &[(String, String)]) -> HeaderDiff {
        let mut names: Vec<String> = Vec::new();
        for (n, _) in from.iter().chain(to) {
            let lower = n.to_ascii_lowercase();
            if !names.contains(&lower) {
                names.push(lower);
            }
        }
        let mut d = HeaderDiff::default();
        for name in names {
            let mut f: Vec<&(String, String)> = from
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case(&name))
                .collect();
            let mut t: Vec<&(String, String)> = Vec::new();
            for h in to.iter().filter(|(n, _)| n.eq_ignore_ascii_case(&name)) {
                match f.iter().position(|x| x.1 == h.1) {
                    Some(i) => {
                        f.remove(i);
                    }
                    None => t.push(h),
                }
            }
            let both = f.len().min(t.len());
            for (a, b) in f.iter().zip(&t).take(both) {
                d.changed.push((a.0.clone(), a.1.clone(), b.1.clone()));
            }
            d.removed.extend(f[both..].iter().map(|h| (*h).clone()));
            d.added.extend(t[both..].iter().map(|h| (*h).clone()));
        }
        d
    }

    #[test]
    fn grouped_header_diff_matches_the_pairwise_one() {
        // small alphabets, so names repeat in both cases and values
        // repeat, cancel and pair up in every way
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let names = ["A", "a", "B", "b", "Cookie", "COOKIE", "x"];
        let values = ["1", "2", "3", ""];
        for _ in 0..2000 {
            let mut list = || -> Vec<(String, String)> {
                (0..next(9))
                    .map(|_| {
                        (
                            names[next(names.len() as u64) as usize].to_string(),
                            values[next(values.len() as u64) as usize].to_string(),
                        )
                    })
                    .collect()
            };
            let (from, to) = (list(), list());
            assert_eq!(
                diff_headers(&from, &to),
                diff_headers_reference(&from, &to),
                "{from:?} vs {to:?}"
            );
        }
    }

    #[test]
    fn twenty_thousand_distinct_headers_a_side_diff_in_linear_work() {
        // 20,000 on each side: a quarter equal, a quarter changed (name in
        // another case), a quarter renamed (removed + added), a quarter equal
        const N: usize = 20_000;
        let front_h: Vec<(String, String)> = (0..N)
            .map(|i| (format!("X-Hdr-{i}"), format!("v{i}")))
            .collect();
        let back_h: Vec<(String, String)> = (0..N)
            .map(|i| match i % 4 {
                1 => (format!("x-hdr-{i}"), format!("w{i}")),
                2 => (format!("X-Back-{i}"), format!("v{i}")),
                _ => (format!("x-hdr-{i}"), format!("v{i}")),
            })
            .collect();
        let with = |hs: &[(String, String)]| {
            let mut r = healthy(KEY_A);
            let list = r["headers"].as_array_mut().unwrap();
            list.extend(hs.iter().map(|(n, v)| serde_json::json!([n, v])));
            r
        };
        let front = log(&[line(1, with(&front_h), healthy(KEY_A), accepted(KEY_A))]);
        let back = log(&[line(2, healthy(KEY_A), with(&back_h), accepted(KEY_A))]);
        let d = diff(&front, &back);
        assert_eq!(d.pairs.len(), 1);
        let p = &d.pairs[0];
        assert_eq!(p.changed.len(), N / 4);
        assert_eq!(p.removed.len(), N / 4);
        assert_eq!(p.added.len(), N / 4);
        assert_eq!(
            p.changed[0],
            ("X-Hdr-1".to_string(), "v1".to_string(), "w1".to_string())
        );
        assert_eq!(
            p.changed.last().unwrap(),
            &(
                "X-Hdr-19997".to_string(),
                "v19997".to_string(),
                "w19997".to_string()
            )
        );
        assert_eq!(p.removed[0], ("X-Hdr-2".to_string(), "v2".to_string()));
        assert_eq!(
            p.added.last().unwrap(),
            &("X-Back-19998".to_string(), "v19998".to_string())
        );
        assert!(
            p.summary
                .starts_with("the hop removed X-Hdr-2, X-Hdr-6, X-Hdr-10, "),
            "{}",
            &p.summary[..200]
        );
        assert!(p.summary.contains("and X-Back-19998"));
    }

    #[test]
    fn empty_and_unreadable_input() {
        let l = read_log(&b"\n\n"[..]).unwrap();
        assert_eq!((l.handshakes.len(), l.unparsable), (0, 0));
        let l = read_log(&b"\xff\xfe not utf-8\n{\"event\":\"close\"}\n"[..]).unwrap();
        assert_eq!(l.unparsable, 1);
        assert!(matches!(
            read_log_file(Path::new("/nonexistent/front.jsonl")),
            Err(DiffError::Read { .. })
        ));
    }
}
