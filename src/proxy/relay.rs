//! The WebSocket relay after a 101: two pumps, one per direction, each
//! writing every byte it reads to the peer unchanged and showing a copy to
//! its direction's tap. A fixed buffer per direction; a full event channel
//! or a slow reader makes the pump wait, never buffer more.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::io::Inbound;
use crate::bus::EventTx;
use crate::proto::event::{Dir, Event};
use crate::proto::session::{RelayEnd, StreamEnd};
use crate::proto::stream::StreamTap;

/// Once one side has closed its half, the other gets this long without
/// sending anything before wstap closes the connection: a peer that never
/// closes must not hold the sockets forever.
pub const LINGER: Duration = Duration::from_secs(3);

/// Both sides of an upgraded connection.
pub struct Sides<CR, CW, UR, UW> {
    pub client_rd: Inbound<CR>,
    pub client_wr: CW,
    pub up_rd: Inbound<UR>,
    pub up_wr: UW,
}

/// Relays until both directions end, or one fails. Returns how it ended
/// and the taps, for the summary.
pub async fn relay<CR, CW, UR, UW>(
    sides: &mut Sides<CR, CW, UR, UW>,
    c2s: &mut StreamTap,
    s2c: &mut StreamTap,
    events: &EventTx,
) -> RelayEnd
where
    CR: AsyncRead + Unpin,
    CW: AsyncWrite + Unpin,
    UR: AsyncRead + Unpin,
    UW: AsyncWrite + Unpin,
{
    let Sides {
        client_rd,
        client_wr,
        up_rd,
        up_wr,
    } = sides;
    let (up_seen, down_seen) = (AtomicU64::new(0), AtomicU64::new(0));
    let up = pump(client_rd, up_wr, c2s, events, &up_seen);
    let down = pump(up_rd, client_wr, s2c, events, &down_seen);
    tokio::pin!(up, down);
    tokio::select! {
        end = &mut up => {
            if end == StreamEnd::Eof {
                linger(down, &down_seen).await;
            }
            RelayEnd::Peer(Dir::ClientToServer, end)
        }
        end = &mut down => {
            if end == StreamEnd::Eof {
                linger(up, &up_seen).await;
            }
            RelayEnd::Peer(Dir::ServerToClient, end)
        }
    }
}

/// Lets the remaining direction run while it keeps sending.
async fn linger<F: Future>(pump: F, seen: &AtomicU64) {
    tokio::pin!(pump);
    let mut last = seen.load(Ordering::Relaxed);
    loop {
        tokio::select! {
            _ = &mut pump => return,
            _ = tokio::time::sleep(LINGER) => {
                let now = seen.load(Ordering::Relaxed);
                if now == last {
                    tracing::debug!("the other side did not close within {LINGER:?}; closing");
                    return;
                }
                last = now;
            }
        }
    }
}

/// One direction: read, show the tap, forward unchanged, queue the events.
async fn pump<R, W>(
    rd: &mut Inbound<R>,
    wr: &mut W,
    tap: &mut StreamTap,
    events: &EventTx,
    seen: &AtomicU64,
) -> StreamEnd
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut out: Vec<Event> = Vec::new();
    loop {
        if rd.buffered().is_empty() {
            match rd.fill().await {
                Ok(0) => {
                    // Pass the half-close on: the peer learns no more is coming.
                    let _ = wr.shutdown().await;
                    return StreamEnd::Eof;
                }
                Ok(_) => {}
                Err(e) => return StreamEnd::Reset(e.to_string()),
            }
        }
        let data = rd.buffered();
        seen.fetch_add(data.len() as u64, Ordering::Relaxed);
        tap.feed(data, SystemTime::now(), &mut out);
        let n = data.len();
        let written = async {
            wr.write_all(data).await?;
            wr.flush().await
        }
        .await;
        if let Err(e) = written {
            events.send_all(&mut out).await;
            return StreamEnd::WriteFailed(e.to_string());
        }
        rd.consume(n);
        if !out.is_empty() {
            events.send_all(&mut out).await;
        }
    }
}
