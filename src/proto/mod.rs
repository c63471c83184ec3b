//! The pure protocol layer: events, frames, the incremental decoder, HTTP
//! heads, handshake records and analysis. No tokio, no sockets, no clock, no
//! files: time and connection ids come in as arguments, so everything here
//! is tested by feeding bytes and asserting events.

pub mod analysis;
pub mod close_code;
pub mod decoder;
pub mod deflate;
pub mod event;
pub mod failure;
pub mod frame;
pub mod glob;
pub mod handshake;
pub mod http;
pub mod inject;
pub mod preview;
pub mod redact;
pub mod rewrite;
pub mod session;
pub mod simulate;
pub mod stream;
pub mod utf8;
pub mod violation;
