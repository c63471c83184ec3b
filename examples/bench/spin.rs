//! The benchmark's "spin relay": the least latency a relay can add on this
//! machine. A thread per connection that never sleeps: it polls both
//! sockets with non-blocking reads and writes what it read at once, so no
//! wake-up, event loop or decoder sits in the path. Not a design (it burns
//! a core per connection): a yardstick for the one-connection round trips.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

/// Serves until SIGTERM: each accepted connection gets its own upstream
/// connection to `upstream` and a spinning thread.
pub fn serve(upstream: SocketAddr) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("spin relay: {e}");
            return ExitCode::from(2);
        }
    };
    rt.block_on(async {
        let Some((l, mut term)) = super::relay_listener("spin relay") else {
            return ExitCode::from(2);
        };
        loop {
            tokio::select! {
                _ = term.recv() => return ExitCode::SUCCESS,
                accepted = l.accept() => {
                    let Ok((client, _)) = accepted else {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    };
                    // connected here: a socket must be unpaced before it connects
                    let Ok(up) = wstap::proxy::pacing::connect(upstream).await else {
                        continue;
                    };
                    let (Ok(client), Ok(up)) = (client.into_std(), up.into_std()) else {
                        continue;
                    };
                    std::thread::spawn(move || {
                        if let Err(e) = relay(client, up) {
                            eprintln!("spin relay: {e}");
                        }
                    });
                }
            }
        }
    })
}

/// Both directions on this thread, polled in turn without ever blocking,
/// until both have ended.
fn relay(client: TcpStream, up: TcpStream) -> io::Result<()> {
    for s in [&client, &up] {
        s.set_nodelay(true)?;
        s.set_nonblocking(true)?;
    }
    let mut buf = vec![0u8; wstap::proxy::io::READ_CAPACITY];
    let mut open = [true, true];
    while open[0] || open[1] {
        for (i, (from, to)) in [(&client, &up), (&up, &client)].into_iter().enumerate() {
            if open[i] && !pump(from, to, &mut buf)? {
                open[i] = false;
                let _ = to.shutdown(std::net::Shutdown::Write);
            }
        }
    }
    Ok(())
}

/// Forwards what `from` has now; `false` once it has ended.
fn pump(mut from: &TcpStream, mut to: &TcpStream, buf: &mut [u8]) -> io::Result<bool> {
    let n = match from.read(buf) {
        Ok(0) => return Ok(false),
        Ok(n) => n,
        Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(true),
        Err(e) if e.kind() == ErrorKind::ConnectionReset => return Ok(false),
        Err(e) => return Err(e),
    };
    let mut sent = 0;
    while sent < n {
        match to.write(&buf[sent..n]) {
            Ok(k) => sent += k,
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::hint::spin_loop(),
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}
