//! Decoder micro-benchmark (criterion): bytes per second through
//! `StreamTap::feed`, the per-direction tap the relay runs on every byte,
//! over a stream of mixed masked client frames (text and binary, small to
//! 64 KiB, pings and pongs) fed in 1-byte, 1500-byte (MTU) and 64 KiB
//! chunks; and over 64-byte frames alone, where the cost per frame (the
//! event) dominates. `cargo bench --bench decoder`; runs in about half a
//! minute.

use std::hint::black_box;
use std::time::{Duration, SystemTime};

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use wstap::proto::event::{ConnId, Dir, Event};
use wstap::proto::frame::{encode_frame, Opcode};
use wstap::proto::stream::{StreamTap, TapConfig};

fn utf8_text(len: usize) -> Vec<u8> {
    // ASCII with two- and three-byte characters, cut on a char boundary
    let s = "wstap relays bytes — unchanged; ça marche. ".repeat(len / 40 + 2);
    let mut end = len.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let mut v = s.as_bytes()[..end].to_vec();
    v.resize(len, b' ');
    v
}

/// About 1.1 MiB of masked client frames of mixed kinds and sizes.
fn mixed_stream() -> Vec<u8> {
    let mut wire = Vec::new();
    let binary = |n: usize| (0..n).map(|i| (i * 31 % 251) as u8).collect::<Vec<u8>>();
    for round in 0..8u8 {
        let mask = Some([0x37, 0xfa, 0x21, round.wrapping_mul(17) | 1]);
        let frames: [(Opcode, Vec<u8>); 8] = [
            (Opcode::Text, utf8_text(16)),
            (Opcode::Binary, binary(125)),
            (Opcode::Text, utf8_text(1000)),
            (Opcode::Binary, binary(4096)),
            (Opcode::Binary, binary(65536)),
            (Opcode::Text, utf8_text(65536)),
            (Opcode::Ping, b"ping".to_vec()),
            (Opcode::Pong, b"pong".to_vec()),
        ];
        for (op, payload) in frames {
            encode_frame(&mut wire, true, false, op, mask, &payload);
        }
    }
    wire
}

/// 16 384 masked 64-byte binary frames (1.2 MiB on the wire).
fn small_stream() -> Vec<u8> {
    let mut wire = Vec::new();
    for i in 0..16_384u32 {
        let payload = [(i % 251) as u8; 64];
        encode_frame(
            &mut wire,
            true,
            false,
            Opcode::Binary,
            Some(i.to_le_bytes()),
            &payload,
        );
    }
    wire
}

/// Feeds `wire` in `chunk`-byte pieces through a fresh tap; returns the
/// number of events (checked, so the work cannot be skipped).
fn feed_all(wire: &[u8], chunk: usize) -> usize {
    let cfg = TapConfig {
        max_preview: 256,
        ..TapConfig::default()
    };
    let mut tap = StreamTap::new(ConnId(1), Dir::ClientToServer, cfg);
    let mut out: Vec<Event> = Vec::with_capacity(64);
    let now = SystemTime::UNIX_EPOCH;
    let mut events = 0;
    for piece in wire.chunks(chunk) {
        tap.feed(piece, now, &mut out);
        events += out.len();
        out.clear();
    }
    events
}

fn bench(c: &mut Criterion) {
    for (name, wire, frames, chunks) in [
        ("mixed", mixed_stream(), 64usize, &[1usize, 1500, 65536][..]),
        ("small_64B", small_stream(), 16_384, &[1500, 65536][..]),
    ] {
        // every frame is an event, and nothing else is (no violations)
        assert_eq!(feed_all(&wire, 65536), frames);
        assert_eq!(feed_all(&wire, 1500), frames);
        let mut g = c.benchmark_group(format!("stream_tap_feed/{name}"));
        g.throughput(Throughput::Bytes(wire.len() as u64))
            .sampling_mode(SamplingMode::Flat)
            .sample_size(10)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2));
        for &chunk in chunks {
            g.bench_function(format!("chunk_{chunk}"), |b| {
                b.iter(|| feed_all(black_box(&wire), chunk))
            });
        }
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
