//! The least a relay adds to a one-connection round trip on this machine:
//! the two loopback hops it puts in the path (a send and a receive each
//! way), timed in one thread, so no wake-up, scheduling or decoding is in
//! them. Printed under the round trips as the floor beneath their p50.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Instant;

/// The largest message timed: a blocking send must fit the peer's buffers
/// while this same thread is not yet reading.
pub const MAX_SIZE: usize = 4096;

/// The median time, in µs, to send `size` bytes over one loopback TCP
/// connection, receive them, send them back and receive them again.
pub fn two_hops_p50_us(size: usize, iterations: usize) -> io::Result<f64> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let mut a = TcpStream::connect(l.local_addr()?)?;
    let (mut b, _) = l.accept()?;
    for s in [&a, &b] {
        s.set_nodelay(true)?;
    }
    let msg = vec![0x5a_u8; size];
    let mut buf = vec![0_u8; size];
    let mut took = Vec::with_capacity(iterations);
    // the first thousand warm the caches and the connection up
    for i in 0..iterations + 1000 {
        let t = Instant::now();
        a.write_all(&msg)?;
        b.read_exact(&mut buf)?;
        b.write_all(&buf)?;
        a.read_exact(&mut buf)?;
        if i >= 1000 {
            took.push(t.elapsed().as_nanos() as u64);
        }
    }
    if buf != msg {
        return Err(io::Error::other("the bytes came back changed"));
    }
    took.sort_unstable();
    super::percentile(&took, 0.5).ok_or_else(|| io::Error::other("nothing timed"))
}
