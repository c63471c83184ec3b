//! Credentials out of the outputs: a pure rewrite of an event's views so
//! that logs and HARs can be pasted into a ticket. Applied to each event on
//! the sink thread, after the relay forwarded the real bytes: redaction
//! never changes what reaches a peer, and costs the relay nothing.
//!
//! What is hidden, as `<redacted N bytes>` (N = the hidden bytes):
//!
//! - `Authorization`, `Proxy-Authorization`: the credentials after the
//!   scheme (`Bearer <redacted 36 bytes>`), so the scheme stays visible.
//! - `Cookie`: each cookie's value (`sid=<redacted 32 bytes>; theme=...`),
//!   so which cookies were sent stays visible.
//! - `Set-Cookie`: the cookie's value; its attributes (`Path`, `Domain`,
//!   `SameSite`, `Secure`...) stay, as they are what cookie bugs are about.
//! - API-key headers whose whole value is a secret: `X-Api-Key`, `Api-Key`,
//!   `X-Auth-Token`, `X-Access-Token`, `X-Amz-Security-Token`, `X-Goog-Api-Key`.
//! - `Sec-WebSocket-Protocol` entries that carry a bearer token
//!   (Kubernetes' `base64url.bearer.authorization.k8s.io.<token>`).
//! - Query parameters with a secret's name (see [`is_secret_param`]) in
//!   every request target, and a password in a URL's user info.
//! - A finding's `observed`/`expected` when its `header` is one of the above,
//!   and the values of those headers in rewrite notes (`http` events'
//!   `rewrites`, the `header-rewritten` finding).
//!
//! Not hidden: frame previews (a token sent inside a message is payload,
//! and payload is what a WebSocket debugger shows), `Sec-WebSocket-Key`
//! (a nonce that `diff` pairs handshakes by).

use std::borrow::Cow;

use super::event::{Event, EventKind, Finding, RequestView, ResponseView};

/// Headers whose whole value is a credential.
const SECRET_HEADERS: &[&str] = &[
    "x-api-key",
    "api-key",
    "x-auth-token",
    "x-access-token",
    "x-amz-security-token",
    "x-goog-api-key",
];

/// Query parameter names (lower case) that carry secrets.
const SECRET_PARAMS: &[&str] = &[
    "token",
    "access_token",
    "refresh_token",
    "id_token",
    "auth",
    "authorization",
    "key",
    "api_key",
    "apikey",
    "api-key",
    "password",
    "passwd",
    "pwd",
    "secret",
    "client_secret",
    "signature",
    "sig",
    "session",
    "sessionid",
    "session_id",
    "jwt",
    "credential",
    "x-amz-credential",
];

/// Name endings that mark a secret parameter (`csrf_token`,
/// `X-Amz-Signature`, `access_key`, `db_password`...).
const SECRET_SUFFIXES: &[&str] = &["token", "secret", "password", "signature", "_key", "-key"];

const K8S_BEARER: &str = "base64url.bearer.authorization.k8s.io.";

/// `<redacted N bytes>` for a hidden value.
pub fn hidden(value: &str) -> String {
    format!("<redacted {} bytes>", value.len())
}

/// Whether a query parameter named `name` is hidden.
pub fn is_secret_param(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    SECRET_PARAMS.contains(&n.as_str()) || SECRET_SUFFIXES.iter().any(|s| n.ends_with(s))
}

/// Whether the value of header `name` is (partly) hidden.
pub fn is_secret_header(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    matches!(
        n.as_str(),
        "authorization" | "proxy-authorization" | "cookie" | "set-cookie"
    ) || SECRET_HEADERS.contains(&n.as_str())
}

/// The value of header `name` as outputs show it.
pub fn header_value<'a>(name: &str, value: &'a str) -> Cow<'a, str> {
    let n = name.to_ascii_lowercase();
    match n.as_str() {
        "authorization" | "proxy-authorization" => {
            let v = value.trim_start();
            match v.split_once(' ') {
                // `Scheme credentials`: keep the scheme
                Some((scheme, creds)) if !scheme.is_empty() && !creds.trim().is_empty() => {
                    Cow::Owned(format!("{scheme} {}", hidden(creds.trim())))
                }
                _ => Cow::Owned(hidden(value)),
            }
        }
        "cookie" => Cow::Owned(
            value
                .split(';')
                .map(|c| cookie_pair(c.trim()))
                .collect::<Vec<_>>()
                .join("; "),
        ),
        "set-cookie" => {
            let (pair, attrs) = match value.split_once(';') {
                Some((p, a)) => (p, Some(a)),
                None => (value, None),
            };
            let mut out = cookie_pair(pair.trim());
            if let Some(a) = attrs {
                out.push(';');
                out.push_str(a);
            }
            Cow::Owned(out)
        }
        "sec-websocket-protocol" if value.contains(K8S_BEARER) => Cow::Owned(
            value
                .split(',')
                .map(|p| {
                    let t = p.trim();
                    match t.strip_prefix(K8S_BEARER) {
                        Some(tok) => format!("{K8S_BEARER}{}", hidden(tok)),
                        None => t.to_string(),
                    }
                })
                .collect::<Vec<_>>()
                .join(", "),
        ),
        _ if SECRET_HEADERS.contains(&n.as_str()) => Cow::Owned(hidden(value)),
        _ => Cow::Borrowed(value),
    }
}

fn cookie_pair(pair: &str) -> String {
    match pair.split_once('=') {
        Some((name, v)) => format!("{name}={}", hidden(v)),
        None if pair.is_empty() => String::new(),
        None => hidden(pair),
    }
}

/// A request target (origin-form or absolute-form) as outputs show it:
/// secret query values and a URL password hidden.
pub fn target(t: &str) -> Cow<'_, str> {
    let (before, query) = match t.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (t, None),
    };
    let mut changed = false;
    let before: Cow<'_, str> = match userinfo_password(before) {
        Some((start, end)) => {
            changed = true;
            Cow::Owned(format!(
                "{}{}{}",
                &before[..start],
                hidden(&before[start..end]),
                &before[end..]
            ))
        }
        None => Cow::Borrowed(before),
    };
    let query = query.map(|q| {
        q.split('&')
            .map(|p| match p.split_once('=') {
                Some((name, v)) if is_secret_param(name) => {
                    changed = true;
                    format!("{name}={}", hidden(v))
                }
                _ => p.to_string(),
            })
            .collect::<Vec<_>>()
            .join("&")
    });
    if !changed {
        return Cow::Borrowed(t);
    }
    match query {
        Some(q) => Cow::Owned(format!("{before}?{q}")),
        None => Cow::Owned(before.into_owned()),
    }
}

/// Where the password of `scheme://user:password@host` sits in `s`.
fn userinfo_password(s: &str) -> Option<(usize, usize)> {
    let auth_start = s.find("://")? + 3;
    let rest = &s[auth_start..];
    let auth_end = rest.find('/').unwrap_or(rest.len());
    let authority = &rest[..auth_end];
    let at = authority.rfind('@')?;
    let colon = authority[..at].find(':')?;
    Some((auth_start + colon + 1, auth_start + at))
}

fn headers(list: &mut [(String, String)]) {
    for (name, value) in list.iter_mut() {
        if let Cow::Owned(v) = header_value(name, value) {
            *value = v;
        }
    }
}

fn request(v: &mut RequestView) {
    if let Cow::Owned(t) = target(&v.target) {
        v.target = t;
    }
    headers(&mut v.headers);
}

fn response(v: &mut ResponseView) {
    headers(&mut v.headers);
}

fn finding(f: &mut Finding) {
    if f.code == "header-rewritten" {
        if let Some(m) = rewritten_message(&f.message) {
            f.message = m;
        }
    }
    let Some(h) = f.header.as_deref() else {
        return;
    };
    if !is_secret_header(h) {
        return;
    }
    let h = h.to_string();
    for field in [&mut f.observed, &mut f.expected] {
        if let Some(v) = field.as_mut() {
            if let Cow::Owned(r) = header_value(&h, v) {
                *v = r;
            }
        }
    }
}

/// One rewrite note (`HttpExchange::rewrites`, see `proto::rewrite`) as
/// outputs show it: a secret header's new and old values hidden. Notes read
/// `request: added Name: value`, `request: set Name: value (was "old")`,
/// `request: removed Name (set to an empty value; was "old")`.
pub fn rewrite_note(note: &str) -> Cow<'_, str> {
    let Some((side, rest)) = note.split_once(": ") else {
        return Cow::Borrowed(note);
    };
    let (verb, rest) = match rest.split_once(' ') {
        Some(x) => x,
        None => return Cow::Borrowed(note),
    };
    match verb {
        "added" | "set" => {
            let Some((name, value)) = rest.split_once(": ") else {
                return Cow::Borrowed(note);
            };
            if !is_secret_header(name) {
                return Cow::Borrowed(note);
            }
            let (value, was) = match value.rfind(" (was ") {
                Some(i) if verb == "set" && value.ends_with(')') => {
                    (&value[..i], Some(&value[i + 6..value.len() - 1]))
                }
                _ => (value, None),
            };
            let mut out = format!("{side}: {verb} {name}: {}", header_value(name, value));
            if let Some(old) = was {
                out.push_str(&format!(" (was {})", hidden(old.trim_matches('"'))));
            }
            Cow::Owned(out)
        }
        "removed" => match rest.split_once(" (set to an empty value; was ") {
            Some((name, old)) if is_secret_header(name) => Cow::Owned(format!(
                "{side}: removed {name} (set to an empty value; was {})",
                hidden(old.trim_end_matches(')').trim_matches('"'))
            )),
            _ => Cow::Borrowed(note),
        },
        _ => Cow::Borrowed(note),
    }
}

/// The `header-rewritten` finding's message: the notes joined by `; `,
/// each starting with its side (values may hold `; ` themselves).
fn rewritten_message(message: &str) -> Option<String> {
    let list = message.strip_prefix("wstap rewrote the handshake: ")?;
    let mut notes: Vec<&str> = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while let Some(off) = list[i..].find("; ") {
        let at = i + off;
        let next = &list[at + 2..];
        if next.starts_with("request: ") || next.starts_with("response: ") {
            notes.push(&list[start..at]);
            start = at + 2;
        }
        i = at + 2;
    }
    notes.push(&list[start..]);
    let redacted: Vec<Cow<'_, str>> = notes.iter().map(|n| rewrite_note(n)).collect();
    if redacted.iter().all(|n| matches!(n, Cow::Borrowed(_))) {
        return None;
    }
    Some(format!(
        "wstap rewrote the handshake: {}",
        redacted.join("; ")
    ))
}

/// Hides the credentials in one event, in place.
pub fn event(ev: &mut Event) {
    match &mut ev.kind {
        EventKind::Handshake(h) => {
            for r in [&mut h.client_request, &mut h.upstream_request]
                .into_iter()
                .flatten()
            {
                request(r);
            }
            for r in [&mut h.upstream_response, &mut h.client_response]
                .into_iter()
                .flatten()
            {
                response(r);
            }
        }
        EventKind::Http(x) => {
            if let Cow::Owned(t) = target(&x.target) {
                x.target = t;
            }
            if let Some(r) = x.client_request.as_mut() {
                request(r);
            }
            if let Some(r) = x.client_response.as_mut() {
                response(r);
            }
            for note in x.rewrites.iter_mut() {
                if let Cow::Owned(n) = rewrite_note(note) {
                    *note = n;
                }
            }
        }
        EventKind::Finding(f) => finding(f),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorization_keeps_its_scheme() {
        assert_eq!(
            header_value("Authorization", "Bearer abc.def.ghi"),
            "Bearer <redacted 11 bytes>"
        );
        assert_eq!(
            header_value("proxy-authorization", "Basic dXNlcjpwYXNz"),
            "Basic <redacted 12 bytes>"
        );
        assert_eq!(
            header_value("AUTHORIZATION", "opaquetoken"),
            "<redacted 11 bytes>"
        );
    }

    #[test]
    fn cookies_keep_names_and_attributes() {
        assert_eq!(
            header_value("Cookie", "sid=s3cr3t; theme=dark"),
            "sid=<redacted 6 bytes>; theme=<redacted 4 bytes>"
        );
        assert_eq!(
            header_value(
                "Set-Cookie",
                "sid=s3cr3t; Path=/; HttpOnly; SameSite=None; Secure"
            ),
            "sid=<redacted 6 bytes>; Path=/; HttpOnly; SameSite=None; Secure"
        );
        assert_eq!(header_value("X-Api-Key", "k-123"), "<redacted 5 bytes>");
        assert_eq!(
            header_value(
                "Sec-WebSocket-Protocol",
                "base64url.bearer.authorization.k8s.io.ZXlK, v4.channel.k8s.io"
            ),
            "base64url.bearer.authorization.k8s.io.<redacted 4 bytes>, v4.channel.k8s.io"
        );
    }

    #[test]
    fn harmless_headers_are_untouched() {
        for (n, v) in [
            ("Host", "example.test"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Protocol", "chat, superchat"),
            ("Origin", "https://app.test"),
        ] {
            assert!(matches!(header_value(n, v), Cow::Borrowed(x) if x == v));
        }
    }

    #[test]
    fn secret_query_values_and_url_passwords_are_hidden() {
        assert_eq!(
            target("/ws?room=1&token=abc123&Access_Token=xy&x&csrf_token=q&X-Amz-Signature=ff"),
            "/ws?room=1&token=<redacted 6 bytes>&Access_Token=<redacted 2 bytes>&x&csrf_token=<redacted 1 bytes>&X-Amz-Signature=<redacted 2 bytes>"
        );
        assert_eq!(
            target("http://user:hunter2@h.test/a?api_key=k"),
            "http://user:<redacted 7 bytes>@h.test/a?api_key=<redacted 1 bytes>"
        );
        assert!(matches!(
            target("/plain?room=1&keyboard=us"),
            Cow::Borrowed(_)
        ));
        assert!(matches!(target("http://user@h.test/"), Cow::Borrowed(_)));
        for name in ["sig", "password", "client_secret", "apikey", "access_key"] {
            assert!(is_secret_param(name), "{name}");
        }
        for name in ["room", "monkey", "keys", "page"] {
            assert!(!is_secret_param(name), "{name}");
        }
    }

    #[test]
    fn rewrite_notes_hide_secret_values() {
        assert_eq!(
            rewrite_note("request: set Authorization: Bearer new1 (was \"Bearer old22\")"),
            "request: set Authorization: Bearer <redacted 4 bytes> (was <redacted 12 bytes>)"
        );
        assert_eq!(
            rewrite_note("request: added Cookie: a=1; b=22"),
            "request: added Cookie: a=<redacted 1 bytes>; b=<redacted 2 bytes>"
        );
        assert_eq!(
            rewrite_note("response: removed Set-Cookie (set to an empty value; was \"s=1\")"),
            "response: removed Set-Cookie (set to an empty value; was <redacted 3 bytes>)"
        );
        for harmless in [
            "request: set Origin: https://a.test (was \"https://b.test\")",
            "request: removed Authorization",
            "request: HTTP/1.0 -> HTTP/1.1",
        ] {
            assert!(
                matches!(rewrite_note(harmless), Cow::Borrowed(_)),
                "{harmless}"
            );
        }
        let mut f = Finding::new(
            "header-rewritten",
            super::super::event::Severity::Info,
            "wstap rewrote the handshake: request: added Cookie: a=1; b=2; request: set Origin: https://a.test (was \"x\")",
            "h",
        );
        finding(&mut f);
        assert_eq!(
            f.message,
            "wstap rewrote the handshake: request: added Cookie: a=<redacted 1 bytes>; b=<redacted 1 bytes>; request: set Origin: https://a.test (was \"x\")"
        );
    }

    #[test]
    fn findings_about_secret_headers_are_hidden() {
        let mut f = Finding::new(
            "header-rewritten",
            super::super::event::Severity::Info,
            "m",
            "h",
        )
        .header("Authorization")
        .observed("Bearer abc")
        .expected("Bearer xyz1");
        finding(&mut f);
        assert_eq!(f.observed.as_deref(), Some("Bearer <redacted 3 bytes>"));
        assert_eq!(f.expected.as_deref(), Some("Bearer <redacted 4 bytes>"));
        let mut g = Finding::new("x", super::super::event::Severity::Info, "m", "h")
            .header("Origin")
            .observed("https://a.test");
        finding(&mut g);
        assert_eq!(g.observed.as_deref(), Some("https://a.test"));
    }
}
