//! Soak, CI size: 1 000 concurrent WebSocket connections through the wstap
//! binary, each exchanging messages of mixed sizes for a few seconds.
//! Every echo is compared byte for byte, the log holds exactly the data
//! frames sent each way, memory does not grow while the traffic goes on,
//! and the descriptors come back. `cargo run --release --example soak`
//! runs the same for longer and wider.

mod common;
#[path = "common/proc_stats.rs"]
mod proc_stats;
#[path = "common/soak.rs"]
mod soak;

use std::time::Duration;

use soak::{run, SoakConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_websockets_echo_exactly_and_memory_stays_flat() {
    let dir = tempfile::tempdir().unwrap();
    let r = run(SoakConfig {
        wstap: common::bin_path(),
        conns: 1000,
        duration: Duration::from_secs(4),
        sizes: vec![0, 1, 125, 126, 1000, 4096, 65_535, 65_536, 20_000],
        json: dir.path().join("soak.jsonl"),
    })
    .await;
    eprintln!("{r}");
    assert!(r.exit_ok, "wstap exits 0 at SIGTERM");
    assert!(r.messages >= 1000, "every connection exchanged messages");
    assert_eq!(r.logged_from_client, r.messages, "client frames in the log");
    assert_eq!(r.logged_from_server, r.messages, "server frames in the log");
    assert_eq!(r.close_events, 1000);
    assert_eq!(r.fds_after, r.fds_idle, "descriptors after the soak");
    // flat: once every connection has carried its largest message, the
    // traffic that follows needs no more memory (margin for allocator
    // noise); what wstap holds is per connection, not per byte relayed
    let peak = r.rss_first_half_kib.max(r.rss_second_half_kib);
    assert!(
        peak <= r.rss_warm_kib + r.rss_warm_kib / 10 + 16 * 1024,
        "{r}"
    );
    assert!(r.hwm_kib < 512 * 1024, "{r}");
}
