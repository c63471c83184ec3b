//! Forward-proxy mode (`--forward`): absolute-form requests name their
//! upstream; CONNECT tunnels are either intercepted (TLS terminated with a
//! leaf from the local CA, then served exactly like reverse mode) or, for
//! `--no-intercept` hosts, passed through untouched.

use std::time::Instant;

use tokio::io::AsyncWriteExt;

use super::conn::{client_tls_failed, Conn, End, Step};
use super::io::{BoxIo, Prefixed};
use super::upstream::{split_host_port, Scheme, UpstreamUrl};
use super::{Mode, Shared};
use crate::proto::event::{EventKind, Handshake, HttpExchange, ResponseView};
use crate::proto::http::{split_absolute_form, RequestHead};

const ESTABLISHED: &[u8] = b"HTTP/1.1 200 Connection established\r\n\r\n";

/// `http://host:port/path?q` (or ws://) as an upstream and an origin-form
/// target; `None` for anything else.
pub fn absolute_form(target: &str) -> Option<(UpstreamUrl, String)> {
    let (scheme, authority, path) = split_absolute_form(target)?;
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "http" => Scheme::Http,
        "ws" => Scheme::Ws,
        "https" => Scheme::Https,
        "wss" => Scheme::Wss,
        _ => return None,
    };
    let (host, port) = split_host_port(authority)?;
    if host.is_empty() {
        return None;
    }
    let default = if matches!(scheme, Scheme::Https | Scheme::Wss) {
        443
    } else {
        80
    };
    Some((
        UpstreamUrl {
            scheme,
            host: host.to_string(),
            port: port.unwrap_or(default),
            path: String::new(),
        },
        path.into_owned(),
    ))
}

/// `host:port` of a CONNECT request (port 443 when absent).
fn connect_target(target: &str) -> Option<(String, u16)> {
    let (host, port) = split_host_port(target)?;
    (!host.is_empty()).then(|| (host.to_string(), port.unwrap_or(443)))
}

/// Whether a CONNECT to this target is intercepted (else tunnelled).
pub(super) fn intercepts(shared: &Shared, req: &RequestHead) -> bool {
    match (&shared.cfg.mode, connect_target(&req.target)) {
        (Mode::Forward(f), Some((host, _))) => f.intercepts(&host),
        _ => false,
    }
}

/// The answer to a CONNECT, as it appears in events.
fn established() -> ResponseView {
    ResponseView {
        status: 200,
        reason: "Connection established".into(),
        version: "HTTP/1.1".into(),
        headers: Vec::new(),
        body_preview: None,
    }
}

async fn connect_event(conn: &Conn, req: &RequestHead, started: Instant) {
    conn.emit(EventKind::Http(HttpExchange {
        client_response: Some(established()),
        ..HttpExchange::of(req, 200, started.elapsed())
    }))
    .await;
}

/// Terminates the client's TLS with a leaf for the host it asked for and
/// serves the requests inside like reverse mode, upstream `https://host:port`.
///
/// Every way out sends the connection's `close`: here through
/// [`Conn::finish`] until the client's TLS is taken over, then through
/// `client_tls_failed` or the inner connection's own end.
pub(super) async fn intercept(mut conn: Conn, req: RequestHead) {
    let started = Instant::now();
    let interceptor = match &conn.shared.cfg.mode {
        Mode::Forward(fwd) => Some(fwd.interceptor.clone()),
        Mode::Reverse(_) => None,
    };
    // `intercepts` checked both before the call; were it not so, the
    // connection would still get its close
    let (Some((host, port)), Some(interceptor)) = (connect_target(&req.target), interceptor) else {
        let message = format!("cannot intercept CONNECT {:?}", req.target);
        return conn.finish(End::new("error", message)).await;
    };
    if conn.client_wr.write_all(ESTABLISHED).await.is_err() || conn.client_wr.flush().await.is_err()
    {
        return conn
            .finish(End::new(
                "client-closed",
                "the client went away before the tunnel opened",
            ))
            .await;
    }
    connect_event(&conn, &req, started).await;
    let Conn {
        shared,
        id,
        accepted,
        client_rd,
        client_wr,
        ..
    } = conn;
    // a client may send its ClientHello before reading the 200
    let (rd, early) = client_rd.into_parts();
    let io: BoxIo = Box::new(Prefixed::new(early, rd.unsplit(client_wr)));
    let timeout = shared.cfg.header_timeout;
    match interceptor.accept(io, &host, timeout).await {
        Ok(inner) => {
            tracing::debug!(%host, "intercepted TLS for CONNECT");
            let upstream = UpstreamUrl {
                scheme: Scheme::Https,
                host,
                port,
                path: String::new(),
            };
            // boxed: serving the tunnel's requests is a connection inside a connection
            Box::pin(Conn::new(shared, id, accepted, Box::new(inner.stream), Some(upstream)).run())
                .await;
        }
        Err(f) => client_tls_failed(&shared, id, accepted, &f, &interceptor.trust_hint()).await,
    }
}

/// A CONNECT to a `--no-intercept` host: bytes pass both ways untouched.
pub(super) async fn tunnel(conn: &mut Conn, req: RequestHead) -> End {
    let started = Instant::now();
    let Some((host, port)) = connect_target(&req.target) else {
        let message = format!("CONNECT needs host:port, not {:?}", req.target);
        return match conn.refuse_route(message).await {
            Step::Done(end) => end,
            _ => End::new("bad-request", "CONNECT without host:port"),
        };
    };
    let url = UpstreamUrl {
        scheme: Scheme::Http,
        host,
        port,
        path: String::new(),
    };
    if let Err(f) = conn.ensure_upstream(&url).await {
        return match conn
            .upstream_failed(&req, Handshake::default(), f, started, &[], &url)
            .await
        {
            Step::Done(end) => end,
            _ => End::new("upstream-failed", "CONNECT failed"),
        };
    }
    if conn.client_wr.write_all(ESTABLISHED).await.is_err() || conn.client_wr.flush().await.is_err()
    {
        return End::new(
            "client-closed",
            "the client went away before the tunnel opened",
        );
    }
    match conn.tunnel(&req, Some(established()), started).await {
        Step::Done(end) => end,
        _ => End::new("tunnel-closed", "the tunnel ended"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_form_targets() {
        let (u, t) = absolute_form("http://example.test:8080/ws?x=1").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, t.as_str()),
            ("example.test", 8080, "/ws?x=1")
        );
        let (u, t) = absolute_form("http://example.test").unwrap();
        assert_eq!((u.port, t.as_str()), (80, "/"));
        let (u, t) = absolute_form("http://[::1]:9?q").unwrap();
        assert_eq!((u.host.as_str(), t.as_str()), ("::1", "/?q"));
        assert!(absolute_form("/relative").is_none());
        assert!(absolute_form("ftp://x/").is_none());
        assert_eq!(
            connect_target("example.test:8443"),
            Some(("example.test".into(), 8443))
        );
        assert_eq!(
            connect_target("example.test"),
            Some(("example.test".into(), 443))
        );
        assert_eq!(connect_target(":443"), None);
    }
}
