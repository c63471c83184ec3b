//! Spare read buffers, per thread. A relay waiting on a plain socket holds
//! no buffer: it takes one when the socket has bytes and gives it back once
//! they are forwarded, so an idle connection costs no buffer memory however
//! large its past messages were (a buffer a large read touched stays
//! resident for as long as someone holds it).

use std::cell::RefCell;

use super::io::READ_CAPACITY;

/// Buffers a thread keeps for its next reads; more are freed.
const KEEP: usize = 8;

thread_local! {
    static SPARE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// An empty buffer of [`READ_CAPACITY`].
pub fn take() -> Vec<u8> {
    SPARE
        .with(|s| s.borrow_mut().pop())
        .unwrap_or_else(|| Vec::with_capacity(READ_CAPACITY))
}

/// Returns a buffer for later reads on this thread.
pub fn give(mut buf: Vec<u8>) {
    if buf.capacity() != READ_CAPACITY {
        return;
    }
    buf.clear();
    SPARE.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < KEEP {
            s.push(buf);
        }
    });
}

/// Buffers this thread keeps now.
#[cfg(test)]
pub fn spare() -> usize {
    SPARE.with(|s| s.borrow().len())
}
