//! Where no pipe can be made for splicing (here the process is out of
//! descriptors, as under a tight `ulimit -n`), the relay copies the
//! payload it would have spliced: a large binary message still arrives
//! whole and is logged exactly. Its own test binary, because it takes
//! every descriptor the process may still open.
#![cfg(target_os = "linux")]

mod common;

use std::fs::File;

use common::*;
use futures_util::{SinkExt, StreamExt};
use rlimit::Resource;
use tokio_tungstenite::tungstenite::Message;
use wstap::demo::echo::EchoOptions;
use wstap::proto::event::Dir;
use wstap::proto::frame::Opcode;

/// Lowers the soft descriptor limit to just above the highest descriptor
/// in use and fills the gaps below it, so that no new descriptor can be
/// made. Returns the limits to restore and what frees them.
fn take_every_descriptor() -> ((u64, u64), Vec<File>) {
    let (soft, hard) = rlimit::getrlimit(Resource::NOFILE).expect("getrlimit");
    let highest = std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
        .max()
        .expect("some descriptor");
    rlimit::setrlimit(Resource::NOFILE, highest + 1, hard).expect("setrlimit");
    let mut held = Vec::new();
    while let Ok(f) = File::open("/dev/null") {
        held.push(f);
    }
    ((soft, hard), held)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_pipe_large_payload_is_copied_whole() {
    let echo = echo_server(EchoOptions::default()).await;
    let proxy = TestProxy::start(&format!("ws://{echo}")).await;
    let (mut ws, _) = ws_client(proxy.addr, "/echo", &[]).await;
    // every socket of the connection exists once a message went round
    let small = Message::binary(pattern(100, 1));
    within("send", ws.send(small.clone())).await.unwrap();
    assert!(next_msg(&mut ws).await == small);

    let ((soft, hard), held) = take_every_descriptor();
    assert!(
        File::open("/dev/null").is_err(),
        "a descriptor is still free"
    );
    let spliced_before = wstap::proxy::splice::spliced_total();
    let big = Message::binary(pattern(4 << 20, 2));
    within("send", ws.send(big.clone())).await.unwrap();
    let back = next_msg(&mut ws).await;
    let spliced = wstap::proxy::splice::spliced_total() - spliced_before;
    drop(held);
    rlimit::setrlimit(Resource::NOFILE, soft, hard).expect("restore the limit");

    assert!(back == big, "the 4 MiB message came back changed");
    assert_eq!(spliced, 0, "bytes were spliced without a pipe");
    within("close", ws.close(None)).await.unwrap();
    while let Some(Ok(_)) = within("close reply", ws.next()).await {}
    drop(ws);
    let evs = proxy.wait_closes(1).await;
    let big_frames: Vec<_> = frames(&evs)
        .into_iter()
        .filter(|f| f.opcode == Opcode::Binary && f.len == 4 << 20)
        .collect();
    assert_eq!(big_frames.len(), 2, "{}", dump(&evs));
    assert!(big_frames.iter().any(|f| f.from == Dir::ClientToServer));
    assert!(big_frames.iter().any(|f| f.from == Dir::ServerToClient));
    assert!(finding_codes(&evs).is_empty(), "{:?}", findings(&evs));
}
