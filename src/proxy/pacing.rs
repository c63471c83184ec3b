//! Loopback sockets without pacing: where the system's congestion control
//! is BBR, every TCP sender arms a pacing timer per burst, which buys
//! nothing on loopback and is dear on a VM; wstap's loopback listener and
//! upstream sockets use CUBIC or Reno instead (README "Performance").

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;

use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// Congestion controls that do not pace, best first: CUBIC, Linux's usual
/// default, where this process may use it; Reno, which every process may.
#[cfg(target_os = "linux")]
const UNPACED: [&str; 2] = ["cubic", "reno"];

/// Whether a control paces its sender itself (`SK_PACING_NEEDED`): the
/// BBR family (the kernel's `bbr` and out-of-tree `bbr2`, `bbr3`).
#[cfg(target_os = "linux")]
fn paces(name: &str) -> bool {
    name.starts_with("bbr")
}

/// An address on loopback: both ends on this machine, no link, no queue
/// to pace into.
pub fn is_loopback(a: SocketAddr) -> bool {
    match a.ip() {
        IpAddr::V4(ip) => ip.is_loopback(),
        IpAddr::V6(ip) => {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// Moves `sock` off a pacing congestion control. Call it before the
/// connection is set up (on the listener, or before `connect`): BBR
/// turns pacing on when it starts on a connection, and a later switch
/// leaves it on (measured: README "Loopback sockets do not pace").
/// Returns the control it set, if any; a socket already unpaced, or one
/// no choice could be set on, is left as it is (wstap relays either way).
#[cfg(target_os = "linux")]
pub fn unpace(sock: impl AsFd) -> Option<&'static str> {
    let fd = sock.as_fd();
    let now = rustix::net::sockopt::tcp_congestion(fd).ok()?;
    if !paces(&now) {
        return None;
    }
    let set = UNPACED
        .into_iter()
        .find(|cc| rustix::net::sockopt::set_tcp_congestion(fd, cc).is_ok());
    match set {
        Some(cc) => tracing::debug!(from = %now, to = cc, "loopback socket: no pacing"),
        None => tracing::debug!(cc = %now, "loopback socket keeps its pacing congestion control"),
    }
    set
}

/// Elsewhere the congestion control is not wstap's to pick (the option is
/// Linux's): sockets keep the system's.
#[cfg(not(target_os = "linux"))]
pub fn unpace(_sock: impl AsFd) -> Option<&'static str> {
    None
}

fn socket_for(addr: SocketAddr) -> io::Result<TcpSocket> {
    match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
}

/// A listening socket as `TcpListener::bind` makes it (address reuse, a
/// backlog of 1024), unpaced on a loopback address: the connections it
/// accepts start with its congestion control.
pub fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let sock = socket_for(addr)?;
    sock.set_reuseaddr(true)?;
    if is_loopback(addr) {
        unpace(&sock);
    }
    sock.bind(addr)?;
    sock.listen(1024)
}

/// `TcpStream::connect`, unpaced first when `addr` is on loopback.
pub async fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let sock = socket_for(addr)?;
    if is_loopback(addr) {
        unpace(&sock);
    }
    sock.connect(addr).await
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use rustix::net::sockopt::{set_tcp_congestion, tcp_congestion};

    #[test]
    fn loopback_is_127_8_and_1_including_mapped() {
        for a in [
            "127.0.0.1:80",
            "127.9.8.7:1",
            "[::1]:80",
            "[::ffff:127.0.0.1]:80",
        ] {
            assert!(is_loopback(a.parse().unwrap()), "{a}");
        }
        for a in [
            "10.0.0.1:80",
            "[::ffff:10.0.0.1]:80",
            "[2001:db8::1]:80",
            "0.0.0.0:80",
        ] {
            assert!(!is_loopback(a.parse().unwrap()), "{a}");
        }
    }

    /// A socket on BBR is moved off it; one that does not pace is left
    /// alone. Which branch runs depends on whether this machine lets a
    /// socket use BBR; both check the outcome.
    #[test]
    fn a_pacing_socket_is_moved_off_its_control_and_others_are_left() {
        let s = TcpSocket::new_v4().unwrap();
        if set_tcp_congestion(&s, "bbr").is_ok() {
            let set = unpace(&s).expect("an unpaced control is always allowed (reno)");
            assert_eq!(tcp_congestion(&s).unwrap(), set);
            assert!(UNPACED.contains(&set));
        } else {
            eprintln!("note: bbr not available here; checking only that reno is left alone");
        }
        let s = TcpSocket::new_v4().unwrap();
        set_tcp_congestion(&s, "reno").unwrap();
        assert_eq!(unpace(&s), None);
        assert_eq!(tcp_congestion(&s).unwrap(), "reno");
    }

    /// The choice made on a listener is what its connections start with,
    /// which is why wstap sets it there and not after `accept`; and a
    /// loopback upstream's socket is unpaced before it connects.
    #[tokio::test]
    async fn loopback_listeners_and_connections_start_unpaced() {
        let default = tcp_congestion(TcpSocket::new_v4().unwrap()).unwrap();
        if !paces(&default) {
            eprintln!("note: this machine's congestion control ({default}) does not pace; nothing to undo");
            return;
        }
        let l = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let (c, a) = tokio::join!(connect(l.local_addr().unwrap()), l.accept());
        let (c, (a, _)) = (c.unwrap(), a.unwrap());
        for (side, s) in [("accepted", &a), ("connected", &c)] {
            let cc = tcp_congestion(s).unwrap();
            assert!(!paces(&cc), "{side}: {cc}");
        }
    }
}
