//! Rewrite rules: what the proxy changes in request and response heads
//! before sending them on, so a user can test a fix before deploying it.
//! Values can refer to the incoming request the way nginx's `$http_upgrade`
//! and `$host` do. Pure: rules in, heads out, plus a list of what changed.

use std::borrow::Cow;

use serde::Deserialize;

use super::http::{split_absolute_form, Header, Headers, RequestHead, ResponseHead, Version};

/// One piece of a value template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    /// `{header:NAME}`: the incoming request's first `NAME` value.
    Header(String),
    /// `{host}`: the incoming request's `Host` value.
    Host,
    /// `{upstream}`: the upstream's `host:port`.
    Upstream,
}

/// A header value that may refer to the incoming request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(Vec<Part>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("expected `Name: value`, got {0:?}")]
    NotAHeader(String),
    #[error("invalid header name {0:?}")]
    BadName(String),
    #[error("invalid character in header value {0:?}")]
    BadValue(String),
    #[error("unknown reference {{{0}}}: use {{header:NAME}}, {{host}} or {{upstream}}")]
    UnknownRef(String),
    #[error("unclosed `{{` in {0:?} (write `{{{{` for a literal brace)")]
    Unclosed(String),
    #[error("{0} cannot be rewritten: it frames the body, and wstap forwards the body as the original head framed it (the two would disagree)")]
    Framing(String),
    #[error("HTTP version must be 1.0 or 1.1, not {0:?}")]
    BadVersion(String),
    #[error("line {line}: {reason}")]
    AtLine { line: usize, reason: String },
}

impl Template {
    pub fn parse(s: &str) -> Result<Self, RuleError> {
        let mut parts = Vec::new();
        let mut text = String::new();
        let mut chars = s.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    text.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    text.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    let mut closed = false;
                    for c in chars.by_ref() {
                        if c == '}' {
                            closed = true;
                            break;
                        }
                        name.push(c);
                    }
                    if !closed {
                        return Err(RuleError::Unclosed(s.to_string()));
                    }
                    if !text.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut text)));
                    }
                    let part = match name.trim() {
                        "host" => Part::Host,
                        "upstream" => Part::Upstream,
                        other => match other.strip_prefix("header:") {
                            Some(h) if valid_name(h.trim()) => Part::Header(h.trim().to_string()),
                            _ => return Err(RuleError::UnknownRef(name)),
                        },
                    };
                    parts.push(part);
                }
                c => text.push(c),
            }
        }
        if !text.is_empty() {
            parts.push(Part::Text(text));
        }
        let t = Template(parts);
        if t.0
            .iter()
            .any(|p| matches!(p, Part::Text(x) if x.contains(['\r', '\n', '\0'])))
        {
            return Err(RuleError::BadValue(s.to_string()));
        }
        Ok(t)
    }

    fn render(&self, ctx: &Context<'_>) -> String {
        let mut out = String::new();
        for p in &self.0 {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Header(h) => {
                    if let Some(v) = ctx.incoming.header(h) {
                        out.push_str(&v);
                    }
                }
                Part::Host => {
                    if let Some(v) = ctx.incoming.header("Host") {
                        out.push_str(&v);
                    }
                }
                Part::Upstream => out.push_str(ctx.upstream),
            }
        }
        // a rendered value must still be a valid header value
        out.retain(|c| !matches!(c, '\r' | '\n' | '\0'));
        out
    }

    pub fn source(&self) -> String {
        self.0
            .iter()
            .map(|p| match p {
                Part::Text(t) => t.replace('{', "{{").replace('}', "}}"),
                Part::Header(h) => format!("{{header:{h}}}"),
                Part::Host => "{host}".into(),
                Part::Upstream => "{upstream}".into(),
            })
            .collect()
    }
}

/// RFC 9110 token characters.
fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn parse_name(n: &str) -> Result<String, RuleError> {
    let n = n.trim();
    if valid_name(n) {
        Ok(n.to_string())
    } else {
        Err(RuleError::BadName(n.to_string()))
    }
}

/// Splits `Name: value`.
fn parse_header_arg(s: &str) -> Result<(String, Template), RuleError> {
    let (n, v) = s
        .split_once(':')
        .ok_or_else(|| RuleError::NotAHeader(s.to_string()))?;
    Ok((parse_name(n)?, Template::parse(v.trim())?))
}

/// One operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Replace every value of a request header (an empty result removes it,
    /// as nginx does for an empty `proxy_set_header`).
    SetRequest(String, Template),
    RemoveRequest(String),
    SetResponse(String, Template),
    RemoveResponse(String),
    UpstreamVersion(Version),
}

/// Refuses the headers that delimit a message body: changing them on one
/// side only would desynchronise the two connections (request smuggling).
fn not_framing(name: String) -> Result<String, RuleError> {
    if name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("transfer-encoding")
    {
        return Err(RuleError::Framing(name));
    }
    Ok(name)
}

impl Op {
    pub fn set_request(arg: &str) -> Result<Op, RuleError> {
        let (n, t) = parse_header_arg(arg)?;
        Ok(Op::SetRequest(not_framing(n)?, t))
    }

    pub fn set_response(arg: &str) -> Result<Op, RuleError> {
        let (n, t) = parse_header_arg(arg)?;
        Ok(Op::SetResponse(not_framing(n)?, t))
    }

    pub fn remove_request(arg: &str) -> Result<Op, RuleError> {
        Ok(Op::RemoveRequest(not_framing(parse_name(arg)?)?))
    }

    pub fn remove_response(arg: &str) -> Result<Op, RuleError> {
        Ok(Op::RemoveResponse(not_framing(parse_name(arg)?)?))
    }

    pub fn version(arg: &str) -> Result<Op, RuleError> {
        match arg.trim().trim_start_matches("HTTP/") {
            "1.0" => Ok(Op::UpstreamVersion(Version::Http10)),
            "1.1" => Ok(Op::UpstreamVersion(Version::Http11)),
            other => Err(RuleError::BadVersion(other.to_string())),
        }
    }
}

/// Where a rule applies; empty matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    /// Request path prefix, a plain string prefix of the path without its
    /// query (`/ws` matches `/ws`, `/ws/chat` and also `/wsx`).
    pub path: Option<String>,
    /// Host name from the `Host` header, without port unless the rule has one.
    pub host: Option<String>,
}

impl Scope {
    fn matches(&self, req: &RequestHead) -> bool {
        if let Some(prefix) = &self.path {
            // a forward proxy gets absolute-form targets (`http://h/api/x`):
            // the prefix is about the path in them, as in reverse mode
            let target = match split_absolute_form(&req.target) {
                Some((_, _, origin)) => origin,
                None => Cow::Borrowed(req.target.as_str()),
            };
            let path = target.split('?').next().unwrap_or("");
            if !path.starts_with(prefix.as_str()) {
                return false;
            }
        }
        if let Some(want) = &self.host {
            let host = req
                .header("Host")
                .map(|h| h.trim().to_ascii_lowercase())
                .unwrap_or_default();
            let want = want.to_ascii_lowercase();
            let bare = if host.starts_with('[') {
                host.split(']')
                    .next()
                    .map(|h| format!("{h}]"))
                    .unwrap_or_default()
            } else {
                host.rsplit_once(':')
                    .map(|(h, _)| h.to_string())
                    .unwrap_or(host.clone())
            };
            if host != want && bare != want {
                return false;
            }
        }
        true
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub op: Op,
    pub scope: Scope,
}

/// What templates can refer to.
pub struct Context<'a> {
    /// The request as it arrived from the client.
    pub incoming: &'a RequestHead,
    /// `host:port` of the upstream.
    pub upstream: &'a str,
}

fn set_header(
    headers: &mut Vec<Header>,
    name: &str,
    value: String,
    changes: &mut Vec<String>,
    side: &str,
) {
    let before: Vec<String> = headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value_str().into_owned())
        .collect();
    let first = headers
        .iter()
        .position(|h| h.name.eq_ignore_ascii_case(name));
    headers.retain(|h| !h.name.eq_ignore_ascii_case(name));
    if value.is_empty() {
        if !before.is_empty() {
            changes.push(format!(
                "{side}: removed {name} (set to an empty value; was {:?})",
                before.join(", ")
            ));
        }
        return;
    }
    if before.len() == 1 && before[0] == value {
        // unchanged: put it back where it was
        headers.insert(first.unwrap_or(headers.len()), Header::new(name, value));
        return;
    }
    headers.insert(
        first.unwrap_or(headers.len()),
        Header::new(name, value.clone()),
    );
    if before.is_empty() {
        changes.push(format!("{side}: added {name}: {value}"));
    } else {
        changes.push(format!(
            "{side}: set {name}: {value} (was {:?})",
            before.join(", ")
        ));
    }
}

fn remove_header(headers: &mut Vec<Header>, name: &str, changes: &mut Vec<String>, side: &str) {
    let before = headers.len();
    headers.retain(|h| !h.name.eq_ignore_ascii_case(name));
    if headers.len() != before {
        changes.push(format!("{side}: removed {name}"));
    }
}

/// An ordered list of rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules(pub Vec<Rule>);

impl Rules {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Applies the request rules, in order, to `req` (what would be sent
    /// upstream); returns the changes in words.
    pub fn apply_request(&self, req: &mut RequestHead, ctx: &Context<'_>) -> Vec<String> {
        let mut changes = Vec::new();
        for r in self.0.iter().filter(|r| r.scope.matches(ctx.incoming)) {
            match &r.op {
                Op::SetRequest(n, t) => {
                    let v = t.render(ctx);
                    set_header(&mut req.headers, n, v, &mut changes, "request");
                }
                Op::RemoveRequest(n) => remove_header(&mut req.headers, n, &mut changes, "request"),
                Op::UpstreamVersion(v) => {
                    if req.version != *v {
                        changes.push(format!("request: {} -> {}", req.version, v));
                        req.version = *v;
                    }
                }
                Op::SetResponse(..) | Op::RemoveResponse(_) => {}
            }
        }
        changes
    }

    /// Applies the response rules to the upstream's answer before it goes
    /// to the client.
    pub fn apply_response(&self, res: &mut ResponseHead, ctx: &Context<'_>) -> Vec<String> {
        let mut changes = Vec::new();
        for r in self.0.iter().filter(|r| r.scope.matches(ctx.incoming)) {
            match &r.op {
                Op::SetResponse(n, t) => {
                    let v = t.render(ctx);
                    set_header(&mut res.headers, n, v, &mut changes, "response");
                }
                Op::RemoveResponse(n) => {
                    remove_header(&mut res.headers, n, &mut changes, "response")
                }
                _ => {}
            }
        }
        changes
    }
}

/// Builds an operation from a rules-file value.
type MakeOp = fn(&str) -> Result<Op, RuleError>;

/// One `[[rule]]` of a rules file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleDef {
    // spanned: a bad value is reported on its own line, not the rule's
    path: Option<toml::Spanned<String>>,
    host: Option<String>,
    set_request_header: Option<toml::Spanned<String>>,
    remove_request_header: Option<toml::Spanned<String>>,
    set_response_header: Option<toml::Spanned<String>>,
    remove_response_header: Option<toml::Spanned<String>>,
    upstream_http_version: Option<toml::Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    #[serde(default)]
    rule: Vec<toml::Spanned<RuleDef>>,
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|b| *b == b'\n')
        .count()
        + 1
}

/// Parses a TOML rules file; any error names its line and nothing is used.
pub fn parse_rules_toml(text: &str) -> Result<Rules, RuleError> {
    let file: RulesFile = toml::from_str(text).map_err(|e| RuleError::AtLine {
        line: e.span().map(|s| line_of(text, s.start)).unwrap_or(0),
        reason: e.message().to_string(),
    })?;
    let mut rules = Vec::new();
    for spanned in file.rule {
        let line = line_of(text, spanned.span().start);
        let d = spanned.into_inner();
        let at = |v: &toml::Spanned<String>, e: RuleError| RuleError::AtLine {
            line: line_of(text, v.span().start),
            reason: e.to_string(),
        };
        let mut ops = Vec::new();
        let makers: [(&Option<toml::Spanned<String>>, MakeOp); 5] = [
            (&d.set_request_header, Op::set_request),
            (&d.remove_request_header, Op::remove_request),
            (&d.set_response_header, Op::set_response),
            (&d.remove_response_header, Op::remove_response),
            (&d.upstream_http_version, Op::version),
        ];
        for (value, make) in makers {
            if let Some(v) = value {
                ops.push(make(v.get_ref()).map_err(|e| at(v, e))?);
            }
        }
        if ops.len() != 1 {
            return Err(RuleError::AtLine {
                line,
                reason: format!(
                    "a [[rule]] needs exactly one of set_request_header, remove_request_header, set_response_header, remove_response_header, upstream_http_version (found {})",
                    ops.len()
                ),
            });
        }
        if let Some(p) = &d.path {
            if !p.get_ref().starts_with('/') {
                return Err(RuleError::AtLine {
                    line: line_of(text, p.span().start),
                    reason: format!("path {:?} must start with /", p.get_ref()),
                });
            }
        }
        rules.push(Rule {
            op: ops.remove(0),
            scope: Scope {
                path: d.path.map(toml::Spanned::into_inner),
                host: d.host,
            },
        });
    }
    Ok(Rules(rules))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::frame::Parsed;
    use crate::proto::http::parse_request_head;

    fn req(raw: &str) -> RequestHead {
        match parse_request_head(raw.as_bytes()) {
            Ok(Parsed::Done(h, _)) => h,
            other => panic!("{other:?}"),
        }
    }

    fn names(r: &RequestHead) -> Vec<String> {
        r.headers
            .iter()
            .map(|h| format!("{}: {}", h.name, h.value_str()))
            .collect()
    }

    fn rule(op: Op) -> Rule {
        Rule {
            op,
            scope: Scope::default(),
        }
    }

    const NGINX_DEFAULT: &str = "GET /ws/chat?x=1 HTTP/1.0\r\nHost: app.example:8080\r\nConnection: close\r\nSec-WebSocket-Key: k\r\nUpgrade2: websocket\r\nCookie: a=1\r\n\r\n";

    #[test]
    fn set_remove_version_in_order_with_references() {
        let incoming = req(NGINX_DEFAULT);
        let rules = Rules(vec![
            rule(Op::set_request("Upgrade: {header:upgrade2}").unwrap()),
            rule(Op::set_request("Connection: upgrade").unwrap()),
            rule(Op::version("1.1").unwrap()),
            rule(Op::remove_request("cookie").unwrap()),
            rule(Op::set_request("X-Orig-Host: {host} via {upstream}").unwrap()),
            // later rules see earlier ones' output: this replaces the line above
            rule(Op::set_request("X-Orig-Host: second").unwrap()),
        ]);
        let mut up = incoming.clone();
        let ctx = Context {
            incoming: &incoming,
            upstream: "127.0.0.1:5173",
        };
        let changes = rules.apply_request(&mut up, &ctx);
        assert_eq!(up.version, Version::Http11);
        assert_eq!(
            names(&up),
            [
                "Host: app.example:8080",
                "Connection: upgrade",
                "Sec-WebSocket-Key: k",
                "Upgrade2: websocket",
                "Upgrade: websocket",
                "X-Orig-Host: second"
            ]
        );
        assert_eq!(changes.len(), 6, "{changes:?}");
        assert!(changes[0].contains("added Upgrade: websocket"));
        assert!(changes[1].contains("set Connection: upgrade (was \"close\")"));
        assert!(changes[2].contains("HTTP/1.0 -> HTTP/1.1"));
    }

    #[test]
    fn empty_reference_removes_and_duplicates_are_replaced() {
        let incoming = req("GET / HTTP/1.1\r\nX-A: 1\r\nHost: h\r\nx-a: 2\r\n\r\n");
        let ctx = Context {
            incoming: &incoming,
            upstream: "u:1",
        };
        let mut up = incoming.clone();
        Rules(vec![rule(Op::set_request("X-A: 3").unwrap())]).apply_request(&mut up, &ctx);
        assert_eq!(names(&up), ["X-A: 3", "Host: h"]);
        let mut up = incoming.clone();
        let ch = Rules(vec![rule(
            Op::set_request("X-A: {header:missing}").unwrap(),
        )])
        .apply_request(&mut up, &ctx);
        assert_eq!(names(&up), ["Host: h"]);
        assert!(ch[0].contains("removed X-A"));
    }

    #[test]
    fn scopes_by_path_and_host() {
        let incoming = req(NGINX_DEFAULT);
        let ctx = Context {
            incoming: &incoming,
            upstream: "u:1",
        };
        let scoped = |path: Option<&str>, host: Option<&str>| {
            let mut up = incoming.clone();
            Rules(vec![Rule {
                op: Op::remove_request("Cookie").unwrap(),
                scope: Scope {
                    path: path.map(str::to_string),
                    host: host.map(str::to_string),
                },
            }])
            .apply_request(&mut up, &ctx)
            .len()
        };
        assert_eq!(scoped(Some("/ws"), None), 1);
        assert_eq!(scoped(Some("/api"), None), 0);
        assert_eq!(scoped(None, Some("APP.example")), 1);
        assert_eq!(scoped(None, Some("app.example:8080")), 1);
        assert_eq!(scoped(None, Some("other.example")), 0);
        assert_eq!(scoped(Some("/ws"), Some("other.example")), 0);
    }

    #[test]
    fn path_scopes_match_the_path_of_an_absolute_form_target() {
        let api = Scope {
            path: Some("/api".into()),
            host: None,
        };
        let root = Scope {
            path: Some("/".into()),
            host: None,
        };
        let at = |target: &str| req(&format!("GET {target} HTTP/1.1\r\nHost: h\r\n\r\n"));
        // forward mode: the path of the URL, without its query
        assert!(api.matches(&at("http://h:8080/api/x?q=1")));
        assert!(api.matches(&at("WS://h/api")));
        assert!(!api.matches(&at("http://h/other?next=/api")));
        assert!(!api.matches(&at("http://api.example/x")));
        // a plain string prefix, as for origin-form targets
        assert!(api.matches(&at("http://h/apix")));
        assert!(api.matches(&at("/apix")));
        // the authority alone or with a query is the path `/`
        assert!(root.matches(&at("http://h")) && !api.matches(&at("http://h")));
        assert!(root.matches(&at("http://h?api")) && !api.matches(&at("http://h?api")));
        // origin-form as it is, even with a URL in its query
        assert!(api.matches(&at("/api/x?to=http://h/other")));
        assert!(!api.matches(&at("/other?to=http://h/api")));
    }

    #[test]
    fn response_rules() {
        let incoming = req("GET / HTTP/1.1\r\nHost: h\r\n\r\n");
        let mut res = ResponseHead {
            version: Version::Http11,
            status: 200,
            reason: "OK".into(),
            headers: vec![Header::new("Server", "x"), Header::new("Set-Cookie", "s=1")],
        };
        let rules = Rules(vec![
            rule(Op::remove_response("set-cookie").unwrap()),
            rule(Op::set_response("X-Debug: {header:host}").unwrap()),
            rule(Op::remove_request("Host").unwrap()),
        ]);
        let ch = rules.apply_response(
            &mut res,
            &Context {
                incoming: &incoming,
                upstream: "u",
            },
        );
        assert_eq!(ch.len(), 2);
        let h: Vec<_> = res.headers.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(h, ["Server", "X-Debug"]);
    }

    #[test]
    fn templates_and_bad_arguments() {
        assert_eq!(Template::parse("a{{b}}c").unwrap().source(), "a{{b}}c");
        assert!(matches!(
            Template::parse("{nope}"),
            Err(RuleError::UnknownRef(_))
        ));
        assert!(matches!(
            Template::parse("{host"),
            Err(RuleError::Unclosed(_))
        ));
        assert!(matches!(
            Op::set_request("NoColon"),
            Err(RuleError::NotAHeader(_))
        ));
        assert!(matches!(
            Op::set_request("Bad Name: x"),
            Err(RuleError::BadName(_))
        ));
        assert!(matches!(Op::version("2"), Err(RuleError::BadVersion(_))));
        // body framing stays as the original head had it
        assert!(matches!(
            Op::set_request("Content-Length: 5"),
            Err(RuleError::Framing(_))
        ));
        assert!(matches!(
            Op::remove_response("transfer-encoding"),
            Err(RuleError::Framing(_))
        ));
    }

    #[test]
    fn rules_files_parse_or_name_the_line() {
        let ok = r#"
# restore what nginx's defaults strip
[[rule]]
path = "/ws"
set_request_header = "Upgrade: {header:upgrade}"

[[rule]]
upstream_http_version = "1.1"
"#;
        let rules = parse_rules_toml(ok).unwrap();
        assert_eq!(rules.0.len(), 2);
        assert_eq!(rules.0[0].scope.path.as_deref(), Some("/ws"));

        let two_ops = "\n[[rule]]\nset_request_header = \"A: 1\"\nremove_request_header = \"B\"\n";
        let e = parse_rules_toml(two_ops).unwrap_err().to_string();
        assert!(e.starts_with("line 2:"), "{e}");
        let bad_value = "[[rule]]\nupstream_http_version = \"1.1\"\n\n[[rule]]\nset_request_header = \"nocolon\"\n";
        let e = parse_rules_toml(bad_value).unwrap_err().to_string();
        // the line of the bad value, not of its [[rule]]
        assert!(e.starts_with("line 5:") && e.contains("Name: value"), "{e}");
        let bad_path = "[[rule]]\nremove_request_header = \"B\"\npath = \"ws\"\n";
        let e = parse_rules_toml(bad_path).unwrap_err().to_string();
        assert!(
            e.starts_with("line 3:") && e.contains("must start with /"),
            "{e}"
        );
        let unknown = "[[rule]]\nset_request_headr = \"A: 1\"\n";
        let e = parse_rules_toml(unknown).unwrap_err().to_string();
        assert!(
            e.starts_with("line 2:") && e.contains("set_request_headr"),
            "{e}"
        );
        let syntax = "[[rule]]\nset_request_header = \"A: 1\n";
        let e = parse_rules_toml(syntax).unwrap_err().to_string();
        assert!(e.starts_with("line 2:"), "{e}");
    }
}
