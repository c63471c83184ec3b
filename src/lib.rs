//! wstap: a transparent WebSocket debugging proxy.
//!
//! wstap sits between a client and the real upstream. It passes ordinary
//! HTTP through, forwards the WebSocket upgrade and returns the upstream's
//! real answer, then relays the WebSocket bytes **unchanged** while it
//! decodes a copy: the handshake (four views: as the client sent it, as
//! wstap sent it upstream, as the upstream answered, as the client got it)
//! and every frame, both directions. What went wrong becomes a finding
//! with the fix.
//!
//! ```text
//! socket bytes ──> relay ──(unchanged)──> peer socket
//!                    │
//!                    └─ copy ──> proto::stream (decoder, analysis) ──> Event
//!                                     ──> bus (bounded; waits, or drops and counts with --lossy-log)
//!                                     ──> sink thread: proto::redact ──> sinks (terminal, ndjson, har, live view)
//! ```
//!
//! Layers, arrows pointing one way (`cli -> {check, diff, ui} -> {proxy, sink, tls} -> bus -> proto`):
//!
//! - [`proto`]: pure protocol code (no I/O, no clock): events, frames, the
//!   incremental decoder, HTTP heads, handshake analysis, session summaries.
//! - [`proxy`]: the I/O shell: listener, upstream connector, HTTP
//!   forwarding, the relay. It sends events; it never calls a sink.
//! - [`bus`]: the bounded channel between them.
//! - [`sink`]: outputs of the event stream, on their own thread, which
//!   hides credentials (`proto::redact`) before any output sees an event.
//! - [`tls`]: rustls configuration for both sides, the local CA and the
//!   per-host leaf certificates it signs.
//! - [`check`]: `wstap check URL`, the layers walked one at a time with the
//!   proxy's connector and the same analysis.
//! - [`diff`]: `wstap diff`, two taps' NDJSON logs paired by key and the
//!   hop's changes judged by the same analysis.
//! - [`ui`]: the live view (`--ui`): a bounded store fed as a sink, and an
//!   HTTP server with the page and its API; frames it sends reach the relay
//!   through the proxy's control handles.
//! - [`cli`]: argument parsing, validation into configs, wiring.
//!
//! Non-goals: HTTP/2 and HTTP/3 (WebSockets over h2, RFC 8441, are rare in
//! practice and browsers fall back to HTTP/1.1); changing frames in flight
//! (wstap rewrites handshakes only, so what you debug is what runs; the
//! live view may add whole frames between the peers', never alter theirs);
//! storing whole messages (previews are capped, the relay streams).

#![forbid(unsafe_code)]

pub mod bus;
pub mod check;
pub mod cli;
pub mod demo;
pub mod diff;
pub mod proto;
pub mod proxy;
pub mod sink;
pub mod tls;
pub mod ui;
