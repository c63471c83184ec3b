//! The per-direction frame tap over any byte sequence, fed whole and cut
//! where the input says: it must never panic, and the cut must not change
//! the events (what the relay's read sizes decide must not matter).
#![no_main]

use std::time::SystemTime;

use libfuzzer_sys::fuzz_target;
use wstap::proto::event::{ConnId, Dir, Event};
use wstap::proto::handshake::{DeflateParams, Negotiated};
use wstap::proto::stream::{StreamTap, TapConfig};

fn tap(dir: Dir, deflate: bool) -> StreamTap {
    StreamTap::new(
        ConnId(1),
        dir,
        TapConfig {
            max_preview: 64,
            capture: 128,
            negotiated: Negotiated {
                deflate: deflate.then_some(DeflateParams {
                    server_no_context_takeover: false,
                    client_no_context_takeover: false,
                    server_max_window_bits: None,
                    client_max_window_bits: None,
                }),
                ..Default::default()
            },
        },
    )
}

fn run(dir: Dir, deflate: bool, data: &[u8], cut: usize) -> Vec<String> {
    let mut t = tap(dir, deflate);
    let mut out: Vec<Event> = Vec::new();
    t.feed(&data[..cut], SystemTime::UNIX_EPOCH, &mut out);
    t.feed(&data[cut..], SystemTime::UNIX_EPOCH, &mut out);
    out.iter()
        .map(|e| serde_json::to_string(e).unwrap_or_default())
        .collect()
}

fuzz_target!(|input: &[u8]| {
    // first byte: direction, deflate and where to cut
    let Some((&ctl, data)) = input.split_first() else {
        return;
    };
    let dir = if ctl & 1 == 0 {
        Dir::ClientToServer
    } else {
        Dir::ServerToClient
    };
    let deflate = ctl & 2 != 0;
    let cut = if data.is_empty() {
        0
    } else {
        (ctl as usize >> 2) * data.len() / 63
    }
    .min(data.len());
    let whole = run(dir, deflate, data, data.len());
    let split = run(dir, deflate, data, cut);
    assert_eq!(whole, split, "cutting at {cut} changed the events");
});
