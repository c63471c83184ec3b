//! The live view in headless Chromium, driven over the DevTools protocol:
//! the page is open while a scripted client talks through wstap; the
//! connection and its frames appear live, a search narrows the list, and a
//! message typed into the page's own controls reaches the echo server and
//! comes back to the client. A screenshot must not be blank.
//!
//! Skipped with a notice when Chromium is not installed; a failure under
//! WSTAP_E2E=require. `WSTAP_UI_SCREENSHOT=FILE` also copies the
//! screenshot to FILE (that is how docs/ui.png is made).

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;

use common::cdp::{wait_devtools, Cdp};
use common::chromium::{Chromium, Launch};
use common::ui::UiProxy;
use common::{echo_server, within, ws_client, TempDir, Ws};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use wstap::demo::echo::EchoOptions;
use wstap::proto::rewrite::{Op, Rule, Rules};

async fn say(ws: &mut Ws, text: &str) {
    within("send", ws.send(Message::text(text))).await.unwrap();
    let back = within("the echo", ws.next()).await.unwrap().unwrap();
    assert_eq!(back, Message::text(text));
}

/// How many frame rows the page shows, and their previews.
const ROWS: &str = "[...document.querySelectorAll('#frames-spacer .frame-row[data-n]')]";

/// Headless Chromium on the live view at `ui`, its page loaded and its
/// event stream live; `None` (with a notice) when Chromium is missing.
async fn open_live_view(ui: SocketAddr, extra: &[&str]) -> Option<(Chromium, Cdp)> {
    let mut flags = vec![
        "--remote-debugging-port=0".to_string(),
        "--window-size=1360,900".to_string(),
    ];
    flags.extend(extra.iter().map(|f| f.to_string()));
    let chromium = Chromium::start(Launch {
        url: format!("http://{ui}/"),
        extra: flags,
        ..Default::default()
    })?;
    let url = wait_devtools(&chromium).await;
    let mut cdp = Cdp::connect(&url).await;
    cdp.attach_page().await;
    cdp.wait_for(
        "the page and its live stream",
        "document.readyState === 'complete' && document.getElementById('live-state')?.textContent === 'live'",
    )
    .await;
    Some((chromium, cdp))
}

#[tokio::test]
async fn the_page_follows_filters_and_injects_live() {
    let echo = echo_server(EchoOptions::default()).await;
    // a rewrite rule, so the handshake diff has something to show
    let p = UiProxy::start_with(
        &format!("ws://{echo}"),
        |c| {
            c.rules = Rules(vec![Rule {
                op: Op::set_request("X-Trace: live-view").unwrap(),
                scope: Default::default(),
            }])
        },
        Default::default(),
    )
    .await;
    // earlier traffic: a full demo conversation and a handshake a
    // misconfigured nginx stripped (findings)
    within("the demo script", wstap::demo::script::conversation(p.addr))
        .await
        .unwrap();
    within(
        "a stripped handshake",
        wstap::demo::script::stripped_handshake(p.addr),
    )
    .await
    .unwrap();

    let Some((chromium, mut cdp)) = open_live_view(p.ui, &["--hide-scrollbars"]).await else {
        return;
    };
    cdp.wait_for(
        "the earlier connections",
        "document.querySelectorAll('#conn-rows tr[data-conn-id]').length === 2",
    )
    .await;
    let badge = cdp
        .eval("document.querySelector('#conn-rows .badge.error') !== null")
        .await;
    assert_eq!(badge, true, "the stripped handshake has error findings");

    // a client that starts while the page is open shows up live
    let (mut ws, _) = ws_client(p.addr, "/chat?room=7", &[]).await;
    for word in ["alpha", "beta", "gamma", "beta again"] {
        say(&mut ws, word).await;
    }
    let id = cdp
        .wait_for(
            "the new connection's row",
            "(() => { const r = [...document.querySelectorAll('#conn-rows tr[data-conn-id]')]\
               .find((r) => r.cells[1].textContent === '/chat'); return r ? Number(r.dataset.connId) : 0; })()",
        )
        .await;
    cdp.eval(&format!(
        "document.querySelector('#conn-rows tr[data-conn-id=\"{id}\"]').click(); true"
    ))
    .await;
    // the handshake diff marks the header the rule added on the way up,
    // and the findings say so
    cdp.wait_for(
        "the added header in the diff",
        "[...document.querySelectorAll('#handshake tr.added td.right')]\
           .some((td) => td.textContent.includes('X-Trace: live-view'))",
    )
    .await;
    cdp.wait_for(
        "the rewrite finding with its hint",
        "[...document.querySelectorAll('#findings li.info')].some((li) => \
           li.textContent.includes('header-rewritten') && li.querySelector('.hint'))",
    )
    .await;
    cdp.wait_for("8 frames in the list", &format!("{ROWS}.length === 8"))
        .await;
    // new frames append while the page is open, without reselecting
    say(&mut ws, "delta").await;
    cdp.wait_for("10 frames", &format!("{ROWS}.length === 10"))
        .await;
    let order = cdp
        .eval(&format!(
            "{ROWS}.map((r) => r.querySelector('.c-prev').textContent).join('|')"
        ))
        .await;
    assert_eq!(
        order,
        "alpha|alpha|beta|beta|gamma|gamma|beta again|beta again|delta|delta"
    );

    // a search narrows the list to the matching frames
    cdp.eval(
        "(() => { const q = document.getElementById('f-q'); q.value = 'beta'; \
         q.dispatchEvent(new Event('input', {bubbles: true})); return true; })()",
    )
    .await;
    cdp.wait_for(
        "only the frames with beta",
        &format!(
            "{ROWS}.length === 4 && {ROWS}.every((r) => r.querySelector('.c-prev').textContent.includes('beta'))"
        ),
    )
    .await;
    let count = cdp
        .eval("document.getElementById('frames-count').textContent")
        .await;
    assert_eq!(count, "(4 of 10 match)");
    // and the direction filter narrows it further
    cdp.eval(
        "(() => { const f = document.getElementById('f-from'); f.value = 'server'; \
         f.dispatchEvent(new Event('change', {bubbles: true})); return true; })()",
    )
    .await;
    cdp.wait_for(
        "beta from the server only",
        &format!(
            "{ROWS}.length === 2 && {ROWS}.every((r) => r.querySelector('.c-dir').textContent.includes('←'))"
        ),
    )
    .await;
    cdp.eval(
        "(() => { document.getElementById('f-q').value = ''; const f = document.getElementById('f-from'); \
         f.value = ''; f.dispatchEvent(new Event('change', {bubbles: true})); return true; })()",
    )
    .await;
    cdp.wait_for("all 10 frames again", &format!("{ROWS}.length === 10"))
        .await;

    // type a message into the page's controls and send it to the server:
    // the echo server sends it back, so the client receives what the page typed
    cdp.eval(
        "document.querySelector('#send-form input[name=to][value=server]').click(); \
         document.getElementById('send-opcode').value = 'text'; \
         document.getElementById('send-data').value = 'typed in the live view'; \
         document.getElementById('send-btn').click(); true",
    )
    .await;
    let got = within("the injected message's echo", ws.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, Message::text("typed in the live view"));
    cdp.wait_for(
        "the page to confirm",
        "document.getElementById('control-status').textContent.includes('done')",
    )
    .await;
    // the page lists the injected frame (marked) and the echo
    cdp.wait_for(
        "the injected frame and its echo",
        &format!(
            "{ROWS}.length === 12 && {ROWS}.filter((r) => r.classList.contains('injected')).length === 1 \
             && {ROWS}.filter((r) => r.textContent.includes('typed in the live view')).length === 2"
        ),
    )
    .await;
    // select a frame: the inspector offers a replay
    cdp.eval(&format!("{ROWS}[0].click(); true")).await;
    cdp.wait_for(
        "the inspector",
        "document.querySelector('#inspector button[data-replay=server]') !== null",
    )
    .await;

    // the list and the summary catch up with the two new frames
    cdp.wait_for(
        "the list to count 12 frames",
        &format!(
            "document.querySelector('#conn-rows tr[data-conn-id=\"{id}\"]').cells[4].textContent === '12' \
             && document.getElementById('detail-summary').textContent.includes('12 frames')"
        ),
    )
    .await;

    // a viewport tall enough to show the whole view at once
    cdp.call(
        "Emulation.setDeviceMetricsOverride",
        serde_json::json!({"width": 1360, "height": 1240, "deviceScaleFactor": 1, "mobile": false}),
    )
    .await
    .expect("Emulation.setDeviceMetricsOverride");
    cdp.wait_for(
        "the frame list to fill the taller view",
        "document.getElementById('frames-viewport').getBoundingClientRect().bottom < 1240",
    )
    .await;
    let tmp = TempDir::new("ui-browser");
    let png_bytes = cdp.screenshot().await;
    let shot = tmp.path("live-view.png");
    std::fs::write(&shot, &png_bytes).unwrap();
    if let Some(dest) = std::env::var_os("WSTAP_UI_SCREENSHOT") {
        std::fs::write(&dest, &png_bytes).unwrap();
    }
    assert_not_blank(&shot);

    within("close", ws.close(None)).await.unwrap();
    drop(chromium);
    p.stop().await;
}

/// Decodes the PNG and checks it shows a page, not a single colour.
fn assert_not_blank(path: &std::path::Path) {
    let file = std::fs::File::open(path).unwrap();
    let decoder = png::Decoder::new(std::io::BufReader::new(file));
    let mut reader = decoder.read_info().expect("a PNG");
    let mut buf = vec![0; reader.output_buffer_size().expect("PNG size")];
    let info = reader.next_frame(&mut buf).expect("PNG pixels");
    assert!(
        info.width >= 800 && info.height >= 600,
        "{}x{}",
        info.width,
        info.height
    );
    let px = info.color_type.samples();
    let mut counts: HashMap<&[u8], usize> = HashMap::new();
    for p in buf[..info.buffer_size()].chunks_exact(px) {
        *counts.entry(p).or_default() += 1;
    }
    let total = (info.width * info.height) as usize;
    let top = counts.values().max().copied().unwrap_or(0);
    assert!(
        counts.len() >= 50,
        "only {} colours in {}",
        counts.len(),
        path.display()
    );
    assert!(
        top * 100 < total * 90,
        "one colour covers {}% of {}",
        top * 100 / total,
        path.display()
    );
}

fn synthetic(id: u64, n: usize) -> wstap::proto::event::Event {
    use wstap::proto::event::{ConnId, Dir, Event, EventKind, FrameEvent};
    let from = if n % 2 == 0 {
        Dir::ClientToServer
    } else {
        Dir::ServerToClient
    };
    let text = format!("message number {n}");
    Event::conn(
        std::time::SystemTime::now(),
        ConnId(id),
        EventKind::Frame(FrameEvent {
            len: text.len() as u64,
            preview: text,
            ..FrameEvent::new(from, wstap::proto::frame::Opcode::Text, 0)
        }),
    )
}

/// The top row in the frame list's viewport: its frame number.
const TOP_N: &str = "(() => { const vp = document.getElementById('frames-viewport'); \
     const i = Math.ceil(vp.scrollTop / 24); \
     const r = [...document.querySelectorAll('#frames-spacer .frame-row[data-n]')] \
       .find((r) => Math.round(parseFloat(r.style.top) / 24) === i); \
     return r ? Number(r.dataset.n) : -1; })()";

/// 100 000 frames in one connection (fed to the store as the dispatcher
/// would): the list renders only what is visible, scrolls quickly, and a
/// reader's place does not move when more frames arrive, even when the
/// oldest are trimmed from memory.
#[tokio::test]
async fn a_hundred_thousand_frames_stay_responsive_and_do_not_jump() {
    use wstap::proto::event::{ConnId, Event, EventKind, Handshake, RequestView, ResponseView};
    use wstap::sink::Sink;
    let echo = echo_server(EchoOptions::default()).await;
    let p = UiProxy::start(&format!("ws://{echo}")).await;
    let mut sink = wstap::ui::UiSink(p.store.clone());
    let id = 4242;
    sink.event(&Event::conn(
        std::time::SystemTime::now(),
        ConnId(id),
        EventKind::Handshake(Box::new(Handshake {
            client_request: Some(RequestView {
                method: "GET".into(),
                target: "/firehose".into(),
                version: "HTTP/1.1".into(),
                headers: vec![("Host".into(), "example".into())],
            }),
            client_response: Some(ResponseView {
                status: 101,
                reason: "Switching Protocols".into(),
                version: "HTTP/1.1".into(),
                headers: vec![],
                body_preview: None,
            }),
            ..Default::default()
        })),
    ))
    .unwrap();
    for n in 0..100_000 {
        sink.event(&synthetic(id, n)).unwrap();
    }

    let Some((chromium, mut cdp)) = open_live_view(p.ui, &[]).await else {
        return;
    };
    cdp.wait_for(
        "the busy connection",
        &format!("document.querySelector('#conn-rows tr[data-conn-id=\"{id}\"]') !== null"),
    )
    .await;
    cdp.eval(&format!(
        "document.querySelector('#conn-rows tr[data-conn-id=\"{id}\"]').click(); true"
    ))
    .await;
    // it opens at the newest frame, following
    cdp.wait_for(
        "the newest frame",
        "document.getElementById('frames-count').textContent === '(100000)' \
         && document.getElementById('frame-99999') !== null",
    )
    .await;
    let rendered = cdp
        .eval("document.querySelectorAll('#frames-spacer .frame-row').length")
        .await;
    let rendered = rendered.as_u64().unwrap();
    assert!(
        (10..100).contains(&rendered),
        "{rendered} rows in the DOM for 100 000 frames"
    );

    // jump to the middle: the rows there arrive, numbered right
    cdp.eval("document.getElementById('frames-viewport').scrollTop = 50000 * 24; true")
        .await;
    cdp.wait_for("row 50000 at the top", &format!("{TOP_N} === 50000"))
        .await;
    // scrolling through cached rows is fast: 200 redraws well under a frame each
    let ms = cdp
        .eval(
            "(() => { const vp = document.getElementById('frames-viewport'); const t = performance.now(); \
               for (let k = 0; k < 200; k++) { vp.scrollTop = (50000 + (k % 50)) * 24; renderRows(); } \
               return (performance.now() - t) / 200; })()",
        )
        .await;
    let ms = ms.as_f64().unwrap();
    assert!(ms < 50.0, "{ms} ms per redraw");
    cdp.eval(
        "document.getElementById('frames-viewport').scrollTop = 50000 * 24; renderRows(); true",
    )
    .await;
    cdp.wait_for("row 50000 at the top again", &format!("{TOP_N} === 50000"))
        .await;
    let following = cdp
        .eval("document.getElementById('follow').textContent")
        .await;
    assert!(
        following.as_str().unwrap().starts_with("paused"),
        "{following}"
    );

    // more frames arrive (and the oldest chunk is trimmed past 100 000):
    // the row the reader looks at stays where it is
    for n in 100_000..101_000 {
        sink.event(&synthetic(id, n)).unwrap();
    }
    cdp.wait_for(
        "the new frames to be counted",
        "document.getElementById('detail-summary').textContent.includes('101000 frames')",
    )
    .await;
    cdp.wait_for(
        "the trimmed total",
        "document.getElementById('frames-count').textContent === '(99976)'",
    )
    .await;
    // give the page a moment to (wrongly) move, then check it did not
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    cdp.wait_for("the same row at the top", &format!("{TOP_N} === 50000"))
        .await;
    drop(chromium);
    p.stop().await;
}
