//! Property tests of the per-direction tap: feeding a stream whole, byte by
//! byte, or in random splits yields the same events; no byte sequence makes
//! it panic.

use std::time::SystemTime;

use proptest::prelude::*;
use wstap::proto::event::{ConnId, Dir, Event};
use wstap::proto::frame::{encode_frame, Opcode};
use wstap::proto::handshake::{DeflateParams, Negotiated};
use wstap::proto::stream::{StreamTap, TapConfig};

fn tap(dir: Dir, deflate: bool) -> StreamTap {
    StreamTap::new(
        ConnId(1),
        dir,
        TapConfig {
            max_preview: 40,
            capture: 0,
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

/// Feeds `wire` cut at `cuts` (sorted positions) and returns the events as JSON.
fn run(dir: Dir, deflate: bool, wire: &[u8], cuts: &[usize]) -> Vec<String> {
    let mut t = tap(dir, deflate);
    let mut out: Vec<Event> = Vec::new();
    let mut last = 0;
    for &c in cuts.iter().chain(std::iter::once(&wire.len())) {
        let c = c.clamp(last, wire.len());
        t.feed(&wire[last..c], SystemTime::UNIX_EPOCH, &mut out);
        last = c;
    }
    out.iter()
        .map(|e| serde_json::to_string(e).unwrap())
        .collect()
}

/// (opcode bits, fin, rsv1, mask, payload)
type FrameSpec = (u8, bool, bool, Option<[u8; 4]>, Vec<u8>);

fn arb_frame() -> impl Strategy<Value = FrameSpec> {
    (
        0u8..16,
        any::<bool>(),
        any::<bool>(),
        proptest::option::of(any::<[u8; 4]>()),
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..10),
            proptest::collection::vec(any::<u8>(), 120..130),
            proptest::collection::vec(any::<u8>(), 60_000..70_000),
        ],
    )
}

fn wire_of(frames: &[FrameSpec]) -> Vec<u8> {
    let mut w = Vec::new();
    for (op, fin, rsv1, mask, payload) in frames {
        encode_frame(&mut w, *fin, *rsv1, Opcode::from_bits(*op), *mask, payload);
    }
    w
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn any_split_gives_the_same_events(
        frames in proptest::collection::vec(arb_frame(), 1..8),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
        server in any::<bool>(),
        deflate in any::<bool>(),
    ) {
        let wire = wire_of(&frames);
        let dir = if server { Dir::ServerToClient } else { Dir::ClientToServer };
        let whole = run(dir, deflate, &wire, &[]);
        let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(wire.len() + 1)).collect();
        cuts.sort_unstable();
        prop_assert_eq!(&run(dir, deflate, &wire, &cuts), &whole);
        // one event per complete frame, findings aside
        let n_frames = whole.iter().filter(|e| e.contains(r#""event":"frame""#)).count();
        prop_assert_eq!(n_frames, frames.len());
    }

    #[test]
    fn random_bytes_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..4096),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..16),
        deflate in any::<bool>(),
    ) {
        let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
        cuts.sort_unstable();
        let a = run(Dir::ClientToServer, deflate, &bytes, &cuts);
        let b = run(Dir::ClientToServer, deflate, &bytes, &[]);
        prop_assert_eq!(a, b);
    }
}

#[test]
fn byte_by_byte_equals_whole_for_a_long_mixed_stream() {
    let mut frames = Vec::new();
    for i in 0..40u32 {
        let op = [0x1u8, 0x2, 0x9, 0xA][i as usize % 4];
        let len = [0usize, 5, 125, 126, 300, 70_000][i as usize % 6];
        let len = if op >= 0x8 { len.min(125) } else { len };
        let payload: Vec<u8> = (0..len).map(|j| b'a' + (j % 26) as u8).collect();
        frames.push((op, true, false, Some([i as u8, 1, 2, 3]), payload));
    }
    let wire = wire_of(&frames);
    let whole = run(Dir::ClientToServer, false, &wire, &[]);
    let every: Vec<usize> = (1..wire.len()).collect();
    assert_eq!(run(Dir::ClientToServer, false, &wire, &every), whole);
    assert_eq!(whole.len(), 40);
}
