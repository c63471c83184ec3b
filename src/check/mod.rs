//! `wstap check URL`: walks the layers a WebSocket needs (dns, tcp, tls,
//! http-upgrade, websocket, and on request an idle hold), stopping at the
//! first that fails, and returns a [`Report`] with the cause and a hint.
//! Built on the proxy's connector, the handshake analysis and the failure
//! hints, so it judges exactly as the proxy does. It prints nothing.

pub mod cert;
mod ws;

use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::proto::event::{Finding, RequestView, ResponseView};
use crate::proto::failure::{verification_disabled, TlsFailure, UpstreamFailure};
use crate::proxy::upstream::{Connector, Endpoint, Scheme, TlsInfo, UpstreamUrl, UrlError};
use crate::tls::client::{client_config_with_verifier, server_verifier, TrustOptions};
use crate::tls::TlsError;

use cert::{CertSummary, Recorder};

/// What to check and how.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    pub url: String,
    /// How long each layer may take.
    pub timeout: Duration,
    /// Hold the open WebSocket silent this long, watching for a cut.
    pub idle: Option<Duration>,
    /// Extra request headers; one named like a default header replaces it.
    pub headers: Vec<(String, String)>,
    pub origin: Option<String>,
    pub subprotocols: Vec<String>,
    /// A text message to send after the ping; the reply is shown.
    pub send: Option<String>,
    pub trust: TrustOptions,
}

impl CheckOptions {
    pub fn new(url: impl Into<String>) -> Self {
        CheckOptions {
            url: url.into(),
            timeout: Duration::from_secs(10),
            idle: None,
            headers: Vec::new(),
            origin: None,
            subprotocols: Vec::new(),
            send: None,
            trust: TrustOptions::default(),
        }
    }
}

/// Why a check could not even start: a usage problem, not a finding.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    Url(#[from] UrlError),
    #[error("header {0:?}: expected 'Name: value' with a token for a name and no line breaks")]
    Header(String),
    #[error("--timeout must be more than zero")]
    ZeroTimeout,
    #[error("{0} must be at most 365 days")]
    TooLong(&'static str),
    #[error("--origin {0:?}: not a valid header value (no line breaks or control characters)")]
    Origin(String),
    #[error("--subprotocol {0:?}: expected a token (RFC 6455 §4.1): letters, digits and !#$%&'*+-.^_`|~, no spaces or separators")]
    Subprotocol(String),
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// The URL of a check: where to connect, and the request target (path and
/// query, which a proxy upstream URL does not allow).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub url: UpstreamUrl,
    /// `/` when the URL has no path.
    pub target: String,
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, UrlError> {
        // the fragment never goes on the wire; the query does
        let url = url.split('#').next().unwrap_or_default();
        let (base, query) = match url.split_once('?') {
            Some((b, q)) => (b, Some(q)),
            None => (url, None),
        };
        let parsed: UpstreamUrl = base.parse()?;
        let mut target = if parsed.path.is_empty() {
            "/".to_string()
        } else {
            parsed.path.clone()
        };
        // keep a trailing slash the user wrote (UpstreamUrl trims it)
        if base.ends_with('/') && !target.ends_with('/') {
            target.push('/');
        }
        if let Some(q) = query {
            target.push('?');
            target.push_str(q);
        }
        if target
            .chars()
            .any(|c| c.is_ascii_whitespace() || c.is_ascii_control())
        {
            return Err(UrlError {
                url: url.to_string(),
                why: "spaces and control characters must be percent-encoded",
            });
        }
        Ok(Target {
            url: parsed,
            target,
        })
    }

    /// The `Host` header value: the default port is left out, as browsers do.
    pub fn host_header(&self) -> String {
        let default = if self.url.scheme.is_tls() { 443 } else { 80 };
        let host = if self.url.host.contains(':') {
            format!("[{}]", self.url.host)
        } else {
            self.url.host.clone()
        };
        if self.url.port == default {
            host
        } else {
            format!("{host}:{}", self.url.port)
        }
    }
}

/// The longest `--timeout` or `--idle` a check takes: anything longer is a
/// typo, and `Instant + d` panics for absurd values.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// An RFC 9110 §5.6.2 token (a header name, a subprotocol).
fn is_token(s: &str) -> bool {
    let tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    !s.is_empty() && s.chars().all(tchar)
}

/// Parses `Name: value` (a `--header` argument).
pub fn parse_header(s: &str) -> Result<(String, String), CheckError> {
    let bad = || CheckError::Header(s.to_string());
    let (name, value) = s.split_once(':').ok_or_else(bad)?;
    let name = name.trim();
    let value = value.trim();
    if !is_token(name) || value.contains(['\r', '\n', '\0']) {
        return Err(bad());
    }
    Ok((name.to_string(), value.to_string()))
}

/// Checks an `--origin`: it goes on the wire as a header value, so no line
/// breaks or other control characters (a tab aside, RFC 9110 §5.5).
fn check_origin(s: &str) -> Result<(), CheckError> {
    if s.chars().any(|c| c.is_ascii_control() && c != '\t') {
        return Err(CheckError::Origin(s.to_string()));
    }
    Ok(())
}

/// Checks a `--subprotocol`: RFC 6455 §4.1 requires a token.
fn check_subprotocol(s: &str) -> Result<(), CheckError> {
    if !is_token(s) {
        return Err(CheckError::Subprotocol(s.to_string()));
    }
    Ok(())
}

/// The layers, in the order they are walked.
pub const LAYERS: [&str; 6] = ["dns", "tcp", "tls", "http-upgrade", "websocket", "idle"];

/// How a layer came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    Pass,
    Fail,
    /// Not reached: an earlier layer failed.
    Skipped,
    /// Not part of this check (tls for ws://).
    NotApplicable,
}

/// One line of the checklist.
#[derive(Debug, Clone, Serialize)]
pub struct Layer {
    pub name: &'static str,
    /// Passed, or did not apply; false when it failed or was not reached.
    pub ok: bool,
    pub status: Status,
    pub detail: String,
    /// What to check or change; set on the failing layer.
    pub hint: Option<String>,
    /// How long the layer took, when it ran.
    pub ms: Option<f64>,
}

/// The handshake as `check` sent and received it.
#[derive(Debug, Clone, Serialize)]
pub struct Exchange {
    pub request: RequestView,
    pub response: Option<ResponseView>,
}

/// What the WebSocket layer measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WsOutcome {
    /// Ping to pong.
    pub rtt_ms: Option<f64>,
    /// The `--send` text, and the first message that came back.
    pub sent: Option<String>,
    pub reply: Option<String>,
    pub reply_ms: Option<f64>,
    /// Frames the server sent unasked (before the pong or during the
    /// hold): the first few in words, and how many in all.
    pub unsolicited: Vec<String>,
    pub unsolicited_total: u64,
    /// How the close went, in words.
    pub close: Option<String>,
}

/// What the idle hold saw.
#[derive(Debug, Clone, Serialize)]
pub struct IdleOutcome {
    /// How long the connection was to be held silent.
    pub requested_ms: f64,
    /// Whether something ended the connection during the hold.
    pub cut: bool,
    /// Silence before the cut (or the whole hold when it held), in ms.
    pub silence_ms: f64,
    /// How it ended, in words, when cut.
    pub how: Option<String>,
}

/// The result of a check.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub url: String,
    /// Every layer passed.
    pub ok: bool,
    /// The name of the layer that failed.
    pub failed: Option<&'static str>,
    pub layers: Vec<Layer>,
    /// Everything the analysis noticed, failing or not.
    pub findings: Vec<Finding>,
    pub addresses: Vec<String>,
    pub connected_to: Option<String>,
    pub tls: Option<TlsSummary>,
    pub handshake: Option<Exchange>,
    pub websocket: Option<WsOutcome>,
    pub idle: Option<IdleOutcome>,
}

/// The TLS layer's result.
#[derive(Debug, Clone, Serialize)]
pub struct TlsSummary {
    pub version: String,
    pub alpn: Option<String>,
    pub verified: bool,
    pub certificate: Option<CertSummary>,
}

/// A layer's failure: what happened and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failed {
    pub detail: String,
    pub hint: String,
}

impl Failed {
    pub fn new(detail: impl Into<String>, hint: impl Into<String>) -> Self {
        Failed {
            detail: detail.into(),
            hint: hint.into(),
        }
    }
}

/// The proxy's hints name its own flag for trusting a CA; check's is --ca.
fn for_check(hint: &str) -> String {
    hint.replace("--upstream-ca FILE", "--ca FILE")
}

impl From<&UpstreamFailure> for Failed {
    fn from(f: &UpstreamFailure) -> Self {
        Failed::new(f.message(), for_check(f.hint()))
    }
}

/// Collects layers as they run; after a failure, the rest are skipped.
struct Walk {
    report: Report,
    idle: bool,
}

/// A duration for the checklist: fractions of a millisecond matter on
/// loopback, seconds beyond.
pub fn took(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 10.0 {
        format!("{ms:.2}ms")
    } else if ms < 1000.0 {
        format!("{ms:.0}ms")
    } else {
        crate::proto::session::human(d)
    }
}

fn ms(since: Instant) -> f64 {
    crate::proto::event::millis(since.elapsed())
}

impl Walk {
    fn pass(&mut self, name: &'static str, detail: String, started: Instant) {
        tracing::debug!(layer = name, %detail, "check passed");
        self.report.layers.push(Layer {
            name,
            ok: true,
            status: Status::Pass,
            detail,
            hint: None,
            ms: Some(ms(started)),
        });
    }

    fn not_applicable(&mut self, name: &'static str, detail: &str) {
        self.report.layers.push(Layer {
            name,
            ok: true,
            status: Status::NotApplicable,
            detail: detail.to_string(),
            hint: None,
            ms: None,
        });
    }

    /// Records the failure and skips every later layer.
    fn fail(&mut self, name: &'static str, f: Failed, started: Instant) {
        tracing::debug!(layer = name, detail = %f.detail, "check failed");
        self.report.layers.push(Layer {
            name,
            ok: false,
            status: Status::Fail,
            detail: f.detail,
            hint: Some(f.hint),
            ms: Some(ms(started)),
        });
        self.report.failed = Some(name);
        let wanted = if self.idle { 6 } else { 5 };
        let after = LAYERS[..wanted].iter().skip_while(|l| **l != name).skip(1);
        for later in after {
            self.report.layers.push(Layer {
                name: later,
                ok: false,
                status: Status::Skipped,
                detail: format!("skipped: {name} failed"),
                hint: None,
                ms: None,
            });
        }
    }

    /// Records a failure without skipping the later layers: for the close,
    /// which comes after the idle hold although it is reported before it.
    fn fail_only(&mut self, name: &'static str, f: Failed, started: Instant) {
        self.report.layers.push(Layer {
            name,
            ok: false,
            status: Status::Fail,
            detail: f.detail,
            hint: Some(f.hint),
            ms: Some(ms(started)),
        });
        self.report.failed.get_or_insert(name);
    }

    fn finish(mut self) -> Report {
        self.report.ok = self.report.failed.is_none();
        self.report
    }
}

/// Runs a check. `Err` only for usage problems (a bad URL, header or CA
/// file); every network outcome is in the report.
pub async fn run(opts: &CheckOptions) -> Result<Report, CheckError> {
    if opts.timeout.is_zero() {
        return Err(CheckError::ZeroTimeout);
    }
    if opts.timeout > MAX_DURATION {
        return Err(CheckError::TooLong("--timeout"));
    }
    if opts.idle.is_some_and(|d| d > MAX_DURATION) {
        return Err(CheckError::TooLong("--idle"));
    }
    if let Some(o) = &opts.origin {
        check_origin(o)?;
    }
    for p in &opts.subprotocols {
        check_subprotocol(p)?;
    }
    let target = Target::parse(&opts.url)?;
    let recorder = Recorder::new(server_verifier(&opts.trust)?);
    let connector = Connector {
        timeout: opts.timeout,
        tls: client_config_with_verifier(recorder.clone())?,
    };
    let mut walk = Walk {
        report: Report {
            url: opts.url.clone(),
            ok: false,
            failed: None,
            layers: Vec::new(),
            findings: Vec::new(),
            addresses: Vec::new(),
            connected_to: None,
            tls: None,
            handshake: None,
            websocket: None,
            idle: None,
        },
        idle: opts.idle.is_some(),
    };
    let ep = Endpoint::from(&target.url);

    // dns
    let started = Instant::now();
    let addrs = match connector.resolve(&ep, started + opts.timeout).await {
        Ok(a) => a,
        Err(f) => {
            walk.fail("dns", Failed::from(&f), started);
            return Ok(walk.finish());
        }
    };
    walk.report.addresses = addrs.iter().map(|a| a.ip().to_string()).collect();
    let literal = ep.host.parse::<std::net::IpAddr>().is_ok();
    let detail = if literal {
        format!("{} is an address: nothing to resolve", ep.host)
    } else {
        format!("{} → {}", ep.host, walk.report.addresses.join(", "))
    };
    walk.pass("dns", detail, started);

    // tcp
    let started = Instant::now();
    let (tcp, addr) = match connector.tcp(&addrs, &ep, started + opts.timeout).await {
        Ok(c) => c,
        Err(f) => {
            walk.fail("tcp", Failed::from(&f), started);
            return Ok(walk.finish());
        }
    };
    let _ = tcp.set_nodelay(true);
    walk.report.connected_to = Some(addr.to_string());
    walk.pass(
        "tcp",
        format!("connected to {addr} in {}", took(started.elapsed())),
        started,
    );

    // tls
    let io: crate::proxy::io::BoxIo = if ep.tls {
        let started = Instant::now();
        match connector
            .tls_handshake(tcp, &ep, started + opts.timeout)
            .await
        {
            Ok((io, info)) => {
                let summary = tls_summary(&info, opts.trust.insecure);
                let mut detail = describe_tls(&summary);
                if opts.trust.insecure {
                    detail.push_str("; NOT verified (--insecure)");
                    let mut f = verification_disabled(&addr.to_string());
                    f.hint = for_check(&f.hint);
                    walk.report.findings.push(f);
                }
                walk.report.tls = Some(summary);
                walk.pass("tls", detail, started);
                io
            }
            Err(f) => {
                let mut failed = Failed::from(&f);
                if let UpstreamFailure::Tls { kind, .. } = &f {
                    // name whose certificate it was, when one was shown
                    let seen = recorder
                        .seen()
                        .and_then(|c| cert::summarize(&c, SystemTime::now()));
                    if let (Some(c), false) = (&seen, *kind == TlsFailure::NotTls) {
                        failed.detail.push_str(&format!("; {}", c.describe()));
                    }
                    walk.report.tls = seen.map(|c| TlsSummary {
                        version: String::new(),
                        alpn: None,
                        verified: false,
                        certificate: Some(c),
                    });
                }
                walk.fail("tls", failed, started);
                return Ok(walk.finish());
            }
        }
    } else {
        let scheme = if target.url.scheme == Scheme::Http {
            "http://"
        } else {
            "ws://"
        };
        walk.not_applicable("tls", &format!("not used: {scheme} is plain TCP"));
        Box::new(tcp)
    };

    ws::walk_websocket(&mut walk, io, &target, opts).await;
    Ok(walk.finish())
}

fn tls_summary(info: &TlsInfo, insecure: bool) -> TlsSummary {
    TlsSummary {
        version: info.version.replace("TLSv1_", "TLS 1."),
        alpn: info.alpn.clone(),
        verified: !insecure,
        certificate: info
            .peer_certs
            .first()
            .and_then(|c| cert::summarize(c, SystemTime::now())),
    }
}

fn describe_tls(t: &TlsSummary) -> String {
    let alpn = match &t.alpn {
        Some(a) => format!("ALPN {a}"),
        None => "no ALPN".into(),
    };
    match &t.certificate {
        Some(c) => format!("{}, {alpn}; {}", t.version, c.describe()),
        None => format!("{}, {alpn}; the certificate could not be read", t.version),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_keep_their_path_and_query() {
        let t = Target::parse("ws://127.0.0.1:9000").unwrap();
        assert_eq!(
            (t.target.as_str(), t.host_header()),
            ("/", "127.0.0.1:9000".into())
        );
        let t = Target::parse("wss://example.com/chat/?room=1&x=%20#top").unwrap();
        assert_eq!(t.target, "/chat/?room=1&x=%20");
        assert_eq!(t.host_header(), "example.com", "443 is left out for wss");
        assert_eq!(t.url.port, 443);
        let t = Target::parse("ws://[::1]:80/socket").unwrap();
        assert_eq!(
            (t.target.as_str(), t.host_header()),
            ("/socket", "[::1]".into())
        );
        for bad in [
            "example.com",
            "ftp://x/",
            "ws://u:p@h/",
            "ws://h/a b",
            "ws://h:0x/",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn header_arguments() {
        assert_eq!(
            parse_header("Authorization: Bearer a:b").unwrap(),
            ("Authorization".into(), "Bearer a:b".into())
        );
        assert_eq!(
            parse_header("X-Empty:").unwrap(),
            ("X-Empty".into(), "".into())
        );
        for bad in [
            "no colon",
            ": value",
            "Bad Name: x",
            "X: a\r\nInjected: y",
            "Ünï: x",
        ] {
            assert!(parse_header(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn origins_and_subprotocols() {
        check_origin("https://app.example.com").unwrap();
        check_origin("null").unwrap();
        for bad in ["http://a\r\nX-Injected: 1", "http://a\n", "a\0b", "a\x7fb"] {
            assert!(check_origin(bad).is_err(), "{bad:?}");
        }
        check_subprotocol("graphql-transport-ws").unwrap();
        check_subprotocol("v1.chat").unwrap();
        for bad in ["", "a b", "a/b", "a\r\nX: 1", "chät", "a;b"] {
            assert!(check_subprotocol(bad).is_err(), "{bad:?}");
        }
    }

    fn walk(idle: bool) -> Walk {
        Walk {
            report: Report {
                url: "ws://x/".into(),
                ok: false,
                failed: None,
                layers: Vec::new(),
                findings: Vec::new(),
                addresses: Vec::new(),
                connected_to: None,
                tls: None,
                handshake: None,
                websocket: None,
                idle: None,
            },
            idle,
        }
    }

    #[test]
    fn a_failure_skips_every_later_layer() {
        let t = Instant::now();
        let mut w = walk(false);
        w.pass("dns", "ok".into(), t);
        w.fail("tcp", Failed::new("refused", "start it"), t);
        let r = w.finish();
        let got: Vec<_> = r.layers.iter().map(|l| (l.name, l.status, l.ok)).collect();
        assert_eq!(
            got,
            [
                ("dns", Status::Pass, true),
                ("tcp", Status::Fail, false),
                ("tls", Status::Skipped, false),
                ("http-upgrade", Status::Skipped, false),
                ("websocket", Status::Skipped, false),
            ]
        );
        assert_eq!((r.ok, r.failed), (false, Some("tcp")));
        assert_eq!(r.layers[1].hint.as_deref(), Some("start it"));

        let mut w = walk(true);
        w.fail("websocket", Failed::new("no pong", "h"), t);
        let r = w.finish();
        assert_eq!(
            r.layers.last().map(|l| (l.name, l.status)),
            Some(("idle", Status::Skipped))
        );

        let mut w = walk(false);
        w.pass("dns", "ok".into(), t);
        let r = w.finish();
        assert_eq!((r.ok, r.failed), (true, None));
    }

    #[test]
    fn the_proxys_hints_name_checks_own_flag() {
        let f = UpstreamFailure::Tls {
            addr: "a:1".into(),
            kind: TlsFailure::Untrusted,
            detail: "UnknownIssuer".into(),
        };
        let failed = Failed::from(&f);
        assert!(failed.hint.contains("--ca FILE"), "{}", failed.hint);
        assert!(!failed.hint.contains("--upstream-ca"), "{}", failed.hint);
        assert!(failed.detail.contains("not trusted"));
        let insecure = for_check(&verification_disabled("a:1").hint);
        assert!(insecure.contains("--ca FILE"), "{insecure}");
    }

    #[test]
    fn durations_for_the_checklist() {
        assert_eq!(took(Duration::from_micros(210)), "0.21ms");
        assert_eq!(took(Duration::from_micros(42_400)), "42ms");
        assert_eq!(took(Duration::from_millis(1500)), "1s 500ms");
    }
}
