//! `--lossy-log`: when an output cannot keep up, events are dropped and
//! counted instead of slowing the relay. Here the NDJSON log goes to a
//! stdout pipe nobody reads until the end, so the sink thread is stuck: the
//! relay keeps echoing at full speed, and the log, once read, accounts for
//! every event it lacks in `dropped` events.

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncReadExt;
use tokio_tungstenite::tungstenite::Message;
use wstap::demo::echo::EchoOptions;
use wstap::proto::event::{Event, EventKind};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_output_drops_and_counts_instead_of_stalling_the_relay() {
    let echo = echo_server(EchoOptions::default()).await;
    let upstream = format!("ws://{echo}");
    let mut proxy = BinProxy::reverse(&upstream, &["--json", "-", "--quiet", "--lossy-log"]).await;
    let mut stdout = proxy.child.stdout.take().unwrap();

    // far more events than the queue (8192) and the pipe (64 KiB) hold
    const N: usize = 10_000;
    let (mut ws, _) = ws_client(proxy.addr, "/echo", &[]).await;
    within("10 000 echoes with nobody reading the log", async {
        for i in 0..N {
            let m = Message::text(format!("message {i}"));
            ws.send(m.clone()).await.unwrap();
            assert_eq!(ws.next().await.unwrap().unwrap(), m);
        }
    })
    .await;
    within("close", ws.close(None)).await.unwrap();
    drop(ws);

    // read the log while wstap shuts down
    let reader = tokio::spawn(async move {
        let mut out = String::new();
        stdout.read_to_string(&mut out).await.unwrap();
        out
    });
    let (status, stderr) = proxy.terminate().await;
    assert!(status.success(), "{stderr}");
    let out = within("the log", reader).await.unwrap();
    let evs: Vec<Event> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l:?}: {e}")))
        .collect();
    let drops: Vec<(u64, u64)> = evs
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Dropped(d) => Some((d.count, d.total)),
            _ => None,
        })
        .collect();
    let total = drops.last().map(|d| d.1).unwrap_or(0);
    assert!(total > 0, "the stuck output made wstap drop events");
    assert_eq!(drops.iter().map(|d| d.0).sum::<u64>(), total);
    assert!(
        matches!(evs.last().map(|e| &e.kind), Some(EventKind::Dropped(d)) if d.total == total),
        "the log ends with the total"
    );
    // every data frame of the exchange is either in the log or counted
    let data_frames = frames(&evs)
        .iter()
        .filter(|f| f.preview.starts_with("message "))
        .count() as u64;
    assert!(data_frames < 2 * N as u64);
    assert!(
        data_frames + total >= 2 * N as u64,
        "{data_frames} frames logged, {total} dropped, {} sent",
        2 * N
    );
}
