//! Property tests of the per-direction tap: feeding a stream whole, byte by
//! byte, or in random splits yields the same events; no byte sequence makes
//! it panic, random or a valid stream with bytes flipped, inserted, removed
//! or cut off.

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
            frames_unwanted: false,
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

/// One change to a valid stream.
#[derive(Debug, Clone)]
enum Mutation {
    Flip(prop::sample::Index, u8),
    Insert(prop::sample::Index, u8),
    Remove(prop::sample::Index),
    Truncate(prop::sample::Index),
}

fn arb_mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<prop::sample::Index>(), 1u8..=255).prop_map(|(i, x)| Mutation::Flip(i, x)),
        2 => (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        2 => any::<prop::sample::Index>().prop_map(Mutation::Remove),
        1 => any::<prop::sample::Index>().prop_map(Mutation::Truncate),
    ]
}

fn mutate(wire: &mut Vec<u8>, m: &Mutation) {
    if wire.is_empty() {
        if let Mutation::Insert(_, b) = m {
            wire.push(*b);
        }
        return;
    }
    match m {
        Mutation::Flip(i, x) => {
            let i = i.index(wire.len());
            wire[i] ^= x;
        }
        Mutation::Insert(i, b) => {
            let i = i.index(wire.len() + 1);
            wire.insert(i, *b);
        }
        Mutation::Remove(i) => {
            let i = i.index(wire.len());
            wire.remove(i);
        }
        Mutation::Truncate(i) => {
            let i = i.index(wire.len() + 1);
            wire.truncate(i);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Valid frames with a few bytes broken: a header bit, a length, a
    /// mask, a close code, a byte of UTF-8. The tap never panics, and
    /// where the stream is cut does not change what it reports.
    #[test]
    fn mutated_valid_streams_never_panic_and_stay_split_invariant(
        frames in proptest::collection::vec(arb_frame(), 1..6),
        mutations in proptest::collection::vec(arb_mutation(), 1..6),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
        server in any::<bool>(),
        deflate in any::<bool>(),
    ) {
        let mut wire = wire_of(&frames);
        for m in &mutations {
            mutate(&mut wire, m);
        }
        let dir = if server { Dir::ServerToClient } else { Dir::ClientToServer };
        let whole = run(dir, deflate, &wire, &[]);
        let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(wire.len() + 1)).collect();
        cuts.sort_unstable();
        prop_assert_eq!(&run(dir, deflate, &wire, &cuts), &whole);
    }
}

#[test]
fn every_single_byte_flip_of_a_valid_stream_is_survived() {
    // exhaustive over positions and a few flip patterns: close frames with
    // codes and reasons, a fragmented text message, control frames
    let mut frames: Vec<FrameSpec> = vec![
        (
            0x1,
            false,
            false,
            Some([1, 2, 3, 4]),
            "héllo ".as_bytes().to_vec(),
        ),
        (0x9, true, false, Some([5, 6, 7, 8]), b"ping".to_vec()),
        (
            0x0,
            true,
            false,
            Some([9, 9, 9, 9]),
            "wörld".as_bytes().to_vec(),
        ),
        (0x2, true, false, Some([0, 1, 0, 1]), vec![0xff; 200]),
    ];
    let mut close = vec![0x03, 0xe8];
    close.extend_from_slice(b"bye");
    frames.push((0x8, true, false, Some([4, 3, 2, 1]), close));
    let wire = wire_of(&frames);
    for pos in 0..wire.len() {
        for x in [0x01u8, 0x80, 0x7f, 0xff] {
            let mut w = wire.clone();
            w[pos] ^= x;
            let whole = run(Dir::ClientToServer, false, &w, &[]);
            let split = run(
                Dir::ClientToServer,
                false,
                &w,
                &[pos, (pos + 1).min(w.len())],
            );
            assert_eq!(whole, split, "flip {x:#x} at {pos}");
        }
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
