//! Who may connect: the `--allow CIDR` list, checked at accept, and the
//! warning for a listener beyond loopback. A refused peer's socket is
//! closed before any byte is read; the refusal is an `error` event and a
//! `close` event (reason `not-allowed`) so the log shows every attempt.
//!
//! The list is exact: when it is given, loopback peers need an entry too
//! (`--allow 127.0.0.1/32`). On a shared machine another user's process is
//! a loopback peer as well, and a rule with a hidden exception is one
//! nobody can check by reading the command line.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::SystemTime;

use ipnet::IpNet;

use super::Shared;
use crate::proto::event::{CloseSummary, ConnId, ErrorEvent, Event, EventKind};

/// Whether `peer` may connect under `allow` (empty: everyone).
pub fn allows(allow: &[IpNet], peer: IpAddr) -> bool {
    // a v4 client of a dual-stack listener shows up as ::ffff:a.b.c.d
    let peer = peer.to_canonical();
    allow.is_empty() || allow.iter().any(|net| net.contains(&peer))
}

/// Parses one `--allow` value: a CIDR range, or one address.
pub fn parse_allow(s: &str) -> Result<IpNet, String> {
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{s:?} is not a CIDR range like 10.0.0.0/8 or an address"))
}

/// The warning printed when the listener is reachable beyond this machine.
pub fn exposure_warning(listen: SocketAddr, allow: &[IpNet]) -> Option<String> {
    if listen.ip().is_loopback() {
        return None;
    }
    let who = if allow.is_empty() {
        "anyone who can reach it may connect; limit who with --allow CIDR".to_string()
    } else {
        let list: Vec<String> = allow.iter().map(|n| n.to_string()).collect();
        format!("only {} may connect (--allow)", list.join(", "))
    };
    Some(format!(
        "warning: listening on {listen}, beyond loopback: wstap decrypts and logs the traffic through it (headers, messages); {who}"
    ))
}

/// Logs a connection refused at accept (its socket is already closed).
pub async fn refused(shared: Arc<Shared>, peer: SocketAddr, id: ConnId) {
    let list: Vec<String> = shared.cfg.allow.iter().map(|n| n.to_string()).collect();
    let message = format!(
        "connection from {peer} refused: not in --allow ({})",
        list.join(", ")
    );
    tracing::info!(%peer, conn = id.0, "refused by --allow");
    let now = SystemTime::now();
    let mut events = vec![
        Event::conn(
            now,
            id,
            EventKind::Error(ErrorEvent {
                message: message.clone(),
            }),
        ),
        Event::conn(
            now,
            id,
            EventKind::Close(CloseSummary::without_traffic("not-allowed", message, 0.0)),
        ),
    ];
    shared.events.send_all(&mut events).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| parse_allow(s).unwrap()).collect()
    }

    #[test]
    fn the_list_is_exact() {
        let allow = nets(&["10.1.0.0/16", "192.0.2.7", "2001:db8::/32"]);
        for ok in ["10.1.200.3", "192.0.2.7", "2001:db8::1", "::ffff:10.1.0.1"] {
            assert!(allows(&allow, ok.parse().unwrap()), "{ok}");
        }
        for no in ["10.2.0.1", "192.0.2.8", "127.0.0.1", "::1"] {
            assert!(!allows(&allow, no.parse().unwrap()), "{no}");
        }
        assert!(
            allows(&[], "203.0.113.9".parse().unwrap()),
            "no list: everyone"
        );
        assert!(parse_allow("10.0.0.0/33").is_err());
        assert!(parse_allow("nonsense").is_err());
    }

    #[test]
    fn only_a_listener_beyond_loopback_warns() {
        assert!(exposure_warning("127.0.0.1:9000".parse().unwrap(), &[]).is_none());
        assert!(exposure_warning("[::1]:9000".parse().unwrap(), &[]).is_none());
        let w = exposure_warning("0.0.0.0:9000".parse().unwrap(), &[]).unwrap();
        assert!(
            w.contains("decrypts and logs") && w.contains("--allow"),
            "{w}"
        );
        let w = exposure_warning("[::]:9000".parse().unwrap(), &nets(&["10.0.0.0/8"])).unwrap();
        assert!(w.contains("only 10.0.0.0/8 may connect"), "{w}");
    }
}
