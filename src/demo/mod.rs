//! The built-in peers behind `wstap demo`, the examples and the tests: an
//! echo upstream (WebSocket echo plus a small HTML page) and a scripted
//! client that exercises every kind of frame.

pub mod echo;
pub mod script;
