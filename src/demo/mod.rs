//! The built-in peers behind `wstap demo`, the examples, the benchmark and
//! the tests: an echo upstream (WebSocket echo plus a small HTML page, with
//! a lean frame-level mode), a scripted client that exercises every kind of
//! frame, and the benchmark's verifying load client.

pub mod echo;
pub mod frame_echo;
pub mod load;
pub mod script;
