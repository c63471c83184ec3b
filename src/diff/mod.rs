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
    /// Lines that are not JSON events (or not a readable handshake).
    pub unparsable: usize,
}

/// Reads an NDJSON event log. Unparsable lines are counted, never fatal;
/// events other than handshakes are passed over, known or not.
pub fn read_log(r: impl BufRead) -> std::io::Result<Log> {
    let mut log = Log::default();
    for (n, line) in r.lines().enumerate() {
        let line = match line {
            Ok(l) => l,
            // a line that is not UTF-8 is a damaged line, not a damaged file
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                tracing::debug!(line = n + 1, "skipped: not UTF-8");
                log.unparsable += 1;
                continue;
            }
            Err(e) => return Err(e),
        };
        if line.trim().is_empty() {
            continue;
        }
        let value = match serde_json::from_str::<serde_json::Value>(&line) {
            Ok(v) => v,
            Err(e) => {
                tracing::debug!(line = n + 1, error = %e, "skipped: not JSON");
                log.unparsable += 1;
                continue;
            }
        };
        match value.get("event").and_then(|e| e.as_str()) {
            Some("handshake") => {}
            Some(_) => continue,
            None => {
                tracing::debug!(line = n + 1, "skipped: JSON without an event name");
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
                tracing::debug!(line = n + 1, error = %e, "skipped: not a readable handshake");
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

fn names(h: &[(String, String)]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (n, _) in h {
        if !out.iter().any(|o| o.eq_ignore_ascii_case(n)) {
            out.push(n.clone());
        }
    }
    out
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
