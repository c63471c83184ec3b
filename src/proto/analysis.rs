//! Handshake analysis: from the four views of an upgrade to findings with
//! the cause and the fix. Pure and view-based, so `diff` runs the same
//! judgement on handshakes read back from NDJSON.

use super::event::{view_header, Finding, Handshake, RequestView, ResponseView, Severity};
use super::handshake::{accept_key, parse_extensions};

/// The hop settings that make a WebSocket upgrade pass, for hints.
pub const NGINX_UPGRADE: &str = "proxy_http_version 1.1; proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection \"upgrade\"; proxy_set_header Host $host;";

/// Whether a header's comma-separated values include `token`.
fn has_token(headers: &[(String, String)], name: &str, token: &str) -> bool {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .any(|(_, v)| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

fn all_values(headers: &[(String, String)], name: &str) -> Vec<String> {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone())
        .collect()
}

fn shown(v: Option<&str>) -> String {
    match v {
        Some(v) => format!("{v:?}"),
        None => "(absent)".into(),
    }
}

/// A request that asks for a WebSocket: it carries the key or the version,
/// or asks for `Upgrade: websocket`.
pub fn is_attempt(r: &RequestView) -> bool {
    view_header(&r.headers, "Sec-WebSocket-Key").is_some()
        || view_header(&r.headers, "Sec-WebSocket-Version").is_some()
        || has_token(&r.headers, "Upgrade", "websocket")
}

/// Findings about one request view (`client_request` or `upstream_request`).
pub fn judge_request(r: &RequestView, view: &str) -> Vec<Finding> {
    let mut out = Vec::new();
    if !is_attempt(r) {
        return out;
    }
    let hop = "If a proxy or load balancer sits in front, it dropped the header: nginx needs `".to_string()
        + NGINX_UPGRADE
        + "`; Apache needs mod_proxy_wstunnel or `upgrade=websocket`; Cloudflare needs Network > WebSockets switched on; HAProxy forwards upgrades in `mode http` (check no rule deletes the header). With no hop in between, the client did not send it.";
    if !has_token(&r.headers, "Upgrade", "websocket") {
        out.push(
            Finding::new(
                "upgrade-header-missing",
                Severity::Error,
                format!(
                    "the {} is a WebSocket handshake without `Upgrade: websocket`",
                    label(view)
                ),
                hop.clone(),
            )
            .header("Upgrade")
            .expected("websocket")
            .observed(shown(view_header(&r.headers, "Upgrade")))
            .view(view),
        );
    }
    if !has_token(&r.headers, "Connection", "upgrade") {
        out.push(
            Finding::new(
                "connection-upgrade-missing",
                Severity::Error,
                format!("the {} has no `upgrade` token in its `Connection` header", label(view)),
                "The server will not switch protocols without it. nginx sends `Connection: close` to backends unless told `proxy_set_header Connection \"upgrade\";` (with `proxy_set_header Upgrade $http_upgrade;` and `proxy_http_version 1.1;`); other hops need their WebSocket/upgrade support enabled.",
            )
            .header("Connection")
            .expected("a list containing upgrade (e.g. `Upgrade` or `keep-alive, Upgrade`)")
            .observed(shown(view_header(&r.headers, "Connection")))
            .view(view),
        );
    }
    if r.version == "HTTP/1.0" {
        out.push(
            Finding::new(
                "http-version-downgrade",
                Severity::Error,
                format!("the {} came over HTTP/1.0; WebSocket upgrades need HTTP/1.1", label(view)),
                "nginx talks HTTP/1.0 to backends by default: add `proxy_http_version 1.1;` to the location that proxies the WebSocket. Servers refuse such upgrades (Python websockets answers 505, Node ws 426).",
            )
            .expected("HTTP/1.1")
            .observed(r.version.clone())
            .view(view),
        );
    }
    match view_header(&r.headers, "Sec-WebSocket-Version").map(str::trim) {
        Some("13") => {}
        other => out.push(
            Finding::new(
                "websocket-version-unsupported",
                Severity::Error,
                format!("the {} asks for WebSocket version {}; only 13 (RFC 6455) is standard", label(view), shown(other)),
                "Servers answer 426 with `Sec-WebSocket-Version: 13`. Update the client library; if the header is absent, a hop removed it.",
            )
            .header("Sec-WebSocket-Version")
            .expected("13")
            .observed(shown(other))
            .view(view),
        ),
    }
    out
}

/// The view name `diff` judges a hop's forwarded request under.
pub const BEHIND_HOP: &str = "behind_hop";

fn label(view: &str) -> &'static str {
    match view {
        "client_request" => "client's request",
        "upstream_request" => "request wstap sent upstream",
        "upstream_response" => "upstream's response",
        "client_response" => "response to the client",
        // `diff`: the back tap's view of what a hop forwarded
        BEHIND_HOP => "request as it arrived behind the hop",
        _ => "message",
    }
}

/// What a refused upgrade's status tells, and what to do about it.
fn refusal(status: u16, req: &RequestView, body: &str) -> (String, String) {
    let origin = view_header(&req.headers, "Origin");
    let html = body.trim_start().starts_with('<');
    match status {
        200 if html => (
            "the upgrade reached a page handler (200 with an HTML page)".into(),
            "Wrong path (the WebSocket endpoint lives elsewhere, e.g. /ws or /socket.io/), or a hop stripped the upgrade headers so the server treated it as a page request.".into(),
        ),
        200..=299 => (
            format!("the server answered {status} instead of switching protocols"),
            "The request reached an ordinary HTTP handler: check the path and that the upgrade headers arrive (see the request findings).".into(),
        ),
        300..=399 => (
            format!("the server redirected the upgrade ({status})"),
            "WebSocket clients do not follow redirects. Use the final URL (often https:// → wss://, or a trailing slash).".into(),
        ),
        400 => (
            "the server saw a broken handshake (400)".into(),
            "A required header is missing or invalid (Upgrade, Connection, Sec-WebSocket-Key, Sec-WebSocket-Version, Host). Compare what reached the upstream with what the client sent.".into(),
        ),
        401 => (
            "the server wants authentication (401)".into(),
            "Browsers cannot set Authorization on WebSocket requests: pass a token in the query string or a cookie, or authenticate after connecting.".into(),
        ),
        403 => (
            format!("the server forbade the upgrade (403); the Origin sent was {}", shown(origin)),
            "Usually an Origin check: add this origin to the server's allowed origins (or send the expected Origin). Also check authentication cookies.".into(),
        ),
        404 => (
            "no WebSocket endpoint at this path (404)".into(),
            "Check the URL path, and any path prefix a hop adds or removes (nginx `location`/`proxy_pass` with or without a trailing slash).".into(),
        ),
        426 => (
            "the server requires an upgrade it did not get (426 Upgrade Required)".into(),
            "The Upgrade/Connection headers did not arrive or the Sec-WebSocket-Version is not 13: see the request findings for which hop dropped what.".into(),
        ),
        502 => (
            "a gateway could not get a valid answer from its backend (502)".into(),
            "A hop in front of the server failed to reach it or got garbage back: check the hop's upstream address, that the backend runs, and the hop's error log.".into(),
        ),
        503 => (
            "the service is unavailable (503)".into(),
            "The backend is down, overloaded or in maintenance; a load balancer may have no healthy targets.".into(),
        ),
        504 => (
            "a gateway timed out waiting for its backend (504)".into(),
            "A hop could not get an answer from the backend in time: is the backend running and reachable from the hop?".into(),
        ),
        505 => (
            "the server refuses the HTTP version (505)".into(),
            "The upgrade arrived as HTTP/1.0: nginx needs `proxy_http_version 1.1;`.".into(),
        ),
        500..=599 => (
            format!("the server failed handling the upgrade ({status})"),
            "An error in the server's handler: check its logs.".into(),
        ),
        _ => (
            format!("the server answered {status} instead of 101"),
            "Only 101 Switching Protocols opens a WebSocket.".into(),
        ),
    }
}

/// Findings about one response view to a handshake attempt; `req` is the
/// request the responder saw.
pub fn judge_response(res: &ResponseView, req: &RequestView, view: &str) -> Vec<Finding> {
    let mut out = Vec::new();
    if !is_attempt(req) {
        return out;
    }
    if res.status != 101 {
        let body = res.body_preview.clone().unwrap_or_default();
        let (what, hint) = refusal(res.status, req, &body);
        let mut observed = format!("{} {}", res.status, res.reason);
        if !body.is_empty() {
            let first: String = body.chars().take(200).collect();
            observed.push_str(&format!("; body: {first:?}"));
        }
        out.push(
            Finding::new(
                "upgrade-not-accepted",
                Severity::Error,
                format!("the upgrade was not accepted: {what}"),
                hint,
            )
            .expected("101 Switching Protocols")
            .observed(observed)
            .view(view),
        );
        return out;
    }
    if let Some(key) = view_header(&req.headers, "Sec-WebSocket-Key") {
        let want = accept_key(key);
        let got = view_header(&res.headers, "Sec-WebSocket-Accept").map(str::trim);
        if got != Some(want.as_str()) {
            out.push(
                Finding::new(
                    "accept-key-mismatch",
                    Severity::Error,
                    match got {
                        None => "the 101 has no Sec-WebSocket-Accept: clients fail the handshake".to_string(),
                        Some(_) => "Sec-WebSocket-Accept is not derived from the request's key: clients fail the handshake".to_string(),
                    },
                    "The accept value must be base64(SHA-1(key + 258EAFA5-E914-47DA-95CA-C5AB0DC85B11)) of the key the server received. A server bug, or a hop that changed Sec-WebSocket-Key or the answer.",
                )
                .header("Sec-WebSocket-Accept")
                .expected(want)
                .observed(shown(got))
                .view(view),
            );
        }
    }
    let offered: Vec<String> = all_values(&req.headers, "Sec-WebSocket-Protocol")
        .iter()
        .flat_map(|v| v.split(',').map(|p| p.trim().to_string()))
        .filter(|p| !p.is_empty())
        .collect();
    if let Some(chosen) = view_header(&res.headers, "Sec-WebSocket-Protocol").map(str::trim) {
        if !offered.iter().any(|o| o == chosen) {
            out.push(
                Finding::new(
                    "negotiation-mismatch",
                    Severity::Error,
                    format!("the server picked subprotocol {chosen:?}, which the request did not offer"),
                    "RFC 6455 §4.1: the client must fail the connection. Fix the server's subprotocol selection, or check whether a hop stripped Sec-WebSocket-Protocol from the request.",
                )
                .header("Sec-WebSocket-Protocol")
                .expected(if offered.is_empty() { "none (nothing was offered)".to_string() } else { offered.join(", ") })
                .observed(chosen.to_string())
                .view(view),
            );
        }
    }
    let offered_ext = all_values(&req.headers, "Sec-WebSocket-Extensions");
    let offered_ext = parse_extensions(offered_ext.iter().map(String::as_str));
    let chosen_ext = all_values(&res.headers, "Sec-WebSocket-Extensions");
    for e in parse_extensions(chosen_ext.iter().map(String::as_str)) {
        if !offered_ext.iter().any(|o| o.name == e.name) {
            out.push(
                Finding::new(
                    "negotiation-mismatch",
                    Severity::Error,
                    format!("the server enabled extension {:?}, which the request did not offer", e.name),
                    "RFC 6455 §9.1: a server may only accept extensions the client offered; the client must fail the connection. Check whether a hop stripped Sec-WebSocket-Extensions from the request.",
                )
                .header("Sec-WebSocket-Extensions")
                .expected(if offered_ext.is_empty() { "none (nothing was offered)".to_string() } else { offered_ext.iter().map(|e| e.name.clone()).collect::<Vec<_>>().join(", ") })
                .observed(e.name.clone())
                .view(view),
            );
        }
    }
    out
}

/// All findings about a handshake. Each problem is reported once: from
/// the client's side when it is already there, from the upstream side when
/// it appears only there (a rewrite or a simulated hop caused it).
pub fn analyze(hs: &Handshake) -> Vec<Finding> {
    let mut out = Vec::new();
    let client_req = hs.client_request.as_ref();
    let up_req = hs.upstream_request.as_ref().or(client_req);
    if let Some(r) = client_req {
        out.extend(judge_request(r, "client_request"));
    }
    if let (Some(u), Some(c)) = (hs.upstream_request.as_ref(), client_req) {
        if u != c {
            for f in judge_request(u, "upstream_request") {
                if !out.iter().any(|o| o.code == f.code) {
                    out.push(f);
                }
            }
        }
    }
    let mut response_findings = Vec::new();
    if let (Some(res), Some(req)) = (hs.upstream_response.as_ref(), up_req) {
        response_findings.extend(judge_response(res, req, "upstream_response"));
    }
    if let (Some(res), Some(req)) = (hs.client_response.as_ref(), client_req) {
        // wstap's own 502/504 for an unreachable upstream is reported as an
        // upstream-* finding, not as a refused upgrade
        if hs.upstream_response.is_some() && Some(res) != hs.upstream_response.as_ref() {
            for f in judge_response(res, req, "client_response") {
                if !response_findings.iter().any(|o: &Finding| o.code == f.code) {
                    response_findings.push(f);
                }
            }
        }
    }
    out.extend(response_findings);
    let arrived = hs.client_request.as_ref();
    if let Some(f) = arrived.and_then(|a| fix_verified(a, hs, &out)) {
        out.push(f);
    }
    out
}

/// What restores each request finding, for `fix-verified`.
fn restored(code: &str) -> Option<(&'static str, &'static str)> {
    Some(match code {
        "upgrade-header-missing" => (
            "`Upgrade: websocket`",
            "proxy_set_header Upgrade $http_upgrade;",
        ),
        "connection-upgrade-missing" => (
            "`Connection: upgrade`",
            "proxy_set_header Connection \"upgrade\";",
        ),
        "http-version-downgrade" => ("HTTP/1.1", "proxy_http_version 1.1;"),
        "websocket-version-unsupported" => {
            ("`Sec-WebSocket-Version: 13`", "(fix the client library)")
        }
        _ => return None,
    })
}

/// `fix-verified` when the handshake is judged as a simulated hop
/// (`--simulate`) delivered it, `arrived`, before the rewrite rules ran:
/// the simulated breakage, undone by the rules, is the fix being tried.
pub fn fix_verified_after_hop(arrived: &RequestView, hs: &Handshake) -> Option<Finding> {
    let found = judge_request(arrived, "client_request");
    fix_verified(arrived, hs, &found)
}

/// The handshake arrived broken, wstap's rewrites removed the cause, and
/// the upstream then answered 101: the fix works, say so plainly.
fn fix_verified(arrived: &RequestView, hs: &Handshake, found: &[Finding]) -> Option<Finding> {
    let up = hs.upstream_request.as_ref()?;
    if arrived == up || hs.upstream_response.as_ref()?.status != 101 {
        return None;
    }
    let still = judge_request(up, "upstream_request");
    let fixed: Vec<&Finding> = found
        .iter()
        .filter(|f| f.view.as_deref() == Some("client_request") && f.severity == Severity::Error)
        .filter(|f| restored(&f.code).is_some() && !still.iter().any(|s| s.code == f.code))
        .collect();
    if fixed.is_empty() {
        return None;
    }
    let what: Vec<&str> = fixed
        .iter()
        .filter_map(|f| restored(&f.code))
        .map(|r| r.0)
        .collect();
    let how: Vec<&str> = fixed
        .iter()
        .filter_map(|f| restored(&f.code))
        .map(|r| r.1)
        .collect();
    let list = match what.as_slice() {
        [one] => one.to_string(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
        [] => String::new(),
    };
    let codes: Vec<&str> = fixed.iter().map(|f| f.code.as_str()).collect();
    Some(
        Finding::new(
            "fix-verified",
            Severity::Info,
            format!(
                "the upstream accepts the upgrade once {list} {} restored; apply that at the hop",
                if what.len() == 1 { "is" } else { "are" }
            ),
            format!("nginx: {}", how.join(" ")),
        )
        .observed(format!("fixed by the rewrite rules: {}", codes.join(", ")))
        .view("upstream_request"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(version: &str, headers: &[(&str, &str)]) -> RequestView {
        RequestView {
            method: "GET".into(),
            target: "/ws".into(),
            version: version.into(),
            headers: headers
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
        }
    }

    fn res(status: u16, headers: &[(&str, &str)], body: Option<&str>) -> ResponseView {
        ResponseView {
            status,
            reason: "x".into(),
            version: "HTTP/1.1".into(),
            headers: headers
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            body_preview: body.map(str::to_string),
        }
    }

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
    const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

    fn healthy_req() -> RequestView {
        req(
            "HTTP/1.1",
            &[
                ("Host", "a"),
                ("Upgrade", "websocket"),
                ("Connection", "keep-alive, Upgrade"),
                ("Sec-WebSocket-Key", KEY),
                ("Sec-WebSocket-Version", "13"),
                ("Sec-WebSocket-Protocol", "chat, superchat"),
                (
                    "Sec-WebSocket-Extensions",
                    "permessage-deflate; client_max_window_bits",
                ),
            ],
        )
    }

    fn healthy_res() -> ResponseView {
        res(
            101,
            &[
                ("Upgrade", "websocket"),
                ("Connection", "Upgrade"),
                ("Sec-WebSocket-Accept", ACCEPT),
                ("Sec-WebSocket-Protocol", "chat"),
                ("Sec-WebSocket-Extensions", "permessage-deflate"),
            ],
            None,
        )
    }

    fn hs(req: RequestView, res: ResponseView) -> Handshake {
        Handshake {
            client_request: Some(req.clone()),
            upstream_request: Some(req),
            upstream_response: Some(res.clone()),
            client_response: Some(res),
            ..Default::default()
        }
    }

    fn codes(f: &[Finding]) -> Vec<&str> {
        f.iter().map(|f| f.code.as_str()).collect()
    }

    #[test]
    fn a_healthy_handshake_has_no_findings() {
        assert!(analyze(&hs(healthy_req(), healthy_res())).is_empty());
        // a plain request is not judged at all
        assert!(judge_request(&req("HTTP/1.0", &[("Host", "a")]), "client_request").is_empty());
    }

    #[test]
    fn nginx_default_request_yields_the_three_findings() {
        let r = req(
            "HTTP/1.0",
            &[
                ("Host", "backend"),
                ("Connection", "close"),
                ("Sec-WebSocket-Key", KEY),
                ("Sec-WebSocket-Version", "13"),
            ],
        );
        let f = judge_request(&r, "client_request");
        assert_eq!(
            codes(&f),
            [
                "upgrade-header-missing",
                "connection-upgrade-missing",
                "http-version-downgrade"
            ]
        );
        assert_eq!(f[1].observed.as_deref(), Some("\"close\""));
        assert!(f[0].hint.contains("proxy_set_header Upgrade $http_upgrade"));
        assert!(f[0].hint.contains("Cloudflare"));
        assert!(f[2].hint.contains("proxy_http_version 1.1"));
    }

    #[test]
    fn version_other_than_13() {
        let mut r = healthy_req();
        r.headers[4].1 = "8".into();
        assert_eq!(
            codes(&judge_request(&r, "client_request")),
            ["websocket-version-unsupported"]
        );
    }

    #[test]
    fn refusals_say_what_the_status_means() {
        let mut r = healthy_req();
        r.headers
            .push(("Origin".into(), "https://evil.example".into()));
        let f = judge_response(&res(403, &[], Some("forbidden")), &r, "upstream_response");
        assert_eq!(codes(&f), ["upgrade-not-accepted"]);
        assert!(
            f[0].message.contains("\"https://evil.example\""),
            "{}",
            f[0].message
        );
        assert!(f[0].observed.as_deref().unwrap().contains("forbidden"));
        let f = judge_response(
            &res(200, &[], Some("<!doctype html><html>")),
            &r,
            "upstream_response",
        );
        assert!(f[0].message.contains("page handler"));
        for (status, needle) in [
            (400, "broken handshake"),
            (426, "426"),
            (404, "404"),
            (502, "502"),
            (504, "504"),
            (505, "505"),
        ] {
            let f = judge_response(&res(status, &[], None), &r, "upstream_response");
            assert!(f[0].message.contains(needle), "{status}: {}", f[0].message);
        }
    }

    #[test]
    fn accept_key_and_negotiation() {
        let mut bad = healthy_res();
        bad.headers[2].1 = "wrong=".into();
        assert_eq!(
            codes(&judge_response(&bad, &healthy_req(), "upstream_response")),
            ["accept-key-mismatch"]
        );
        let mut missing = healthy_res();
        missing.headers.remove(2);
        let f = judge_response(&missing, &healthy_req(), "upstream_response");
        assert_eq!(f[0].observed.as_deref(), Some("(absent)"));
        let mut proto = healthy_res();
        proto.headers[3].1 = "other".into();
        assert_eq!(
            codes(&judge_response(&proto, &healthy_req(), "upstream_response")),
            ["negotiation-mismatch"]
        );
        let mut ext = healthy_res();
        ext.headers[4].1 = "x-custom".into();
        assert_eq!(
            codes(&judge_response(&ext, &healthy_req(), "upstream_response")),
            ["negotiation-mismatch"]
        );
    }

    #[test]
    fn a_rewrite_that_removes_the_cause_is_a_verified_fix() {
        let broken = req(
            "HTTP/1.0",
            &[
                ("Host", "a"),
                ("Connection", "close"),
                ("Sec-WebSocket-Key", KEY),
                ("Sec-WebSocket-Version", "13"),
            ],
        );
        let fixed = req(
            "HTTP/1.1",
            &[
                ("Host", "a"),
                ("Connection", "upgrade"),
                ("Sec-WebSocket-Key", KEY),
                ("Sec-WebSocket-Version", "13"),
                ("Upgrade", "websocket"),
            ],
        );
        let h = Handshake {
            client_request: Some(broken.clone()),
            upstream_request: Some(fixed),
            upstream_response: Some(healthy_res()),
            client_response: Some(healthy_res()),
            ..Default::default()
        };
        let f = analyze(&h);
        let v = f
            .iter()
            .find(|f| f.code == "fix-verified")
            .expect("fix-verified");
        assert_eq!(v.severity, Severity::Info);
        assert!(
            v.message
                .contains("`Upgrade: websocket`, `Connection: upgrade` and HTTP/1.1 are restored"),
            "{}",
            v.message
        );
        assert!(v.hint.contains("proxy_http_version 1.1;"));
        // no fix without a 101, and none when nothing was rewritten
        let mut refused = h.clone();
        refused.upstream_response = Some(res(426, &[], None));
        assert!(!analyze(&refused).iter().any(|f| f.code == "fix-verified"));
        let lenient = hs(broken, healthy_res());
        assert!(!analyze(&lenient).iter().any(|f| f.code == "fix-verified"));
    }

    #[test]
    fn problems_are_reported_once_and_where_they_first_appear() {
        // a rewrite broke the upstream request: reported on the upstream view
        let mut h = hs(healthy_req(), healthy_res());
        let mut up = healthy_req();
        up.headers.retain(|(n, _)| n != "Upgrade");
        h.upstream_request = Some(up);
        let f = analyze(&h);
        assert_eq!(codes(&f), ["upgrade-header-missing"]);
        assert_eq!(f[0].view.as_deref(), Some("upstream_request"));
        // the client's problem shows once even though both views have it
        let r = req(
            "HTTP/1.0",
            &[
                ("Connection", "close"),
                ("Sec-WebSocket-Key", KEY),
                ("Sec-WebSocket-Version", "13"),
            ],
        );
        let f = analyze(&hs(r, res(505, &[], None)));
        assert_eq!(
            codes(&f),
            [
                "upgrade-header-missing",
                "connection-upgrade-missing",
                "http-version-downgrade",
                "upgrade-not-accepted"
            ]
        );
    }
}
