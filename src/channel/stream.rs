//! A channel conversation's stream: the WebSocket a caller opens at the conversation's stream URL.
//! Each message is a page of activities (the dialect's, as a poll answers) pushed as the log grows;
//! a keep-alive (an empty message, which clients skip, and a ping) every `KEEPALIVE`. It closes
//! when the caller's token expires, when a newer stream of the same conversation opens, when the
//! caller closes it, or when the caller stops reading (a send that cannot finish within
//! `SEND_TIMEOUT`). A caller may send pings (a few per keep-alive) and its close, nothing else: a
//! data frame closes the stream (a channel's activities are posted over HTTP), and no frame makes
//! the store be read.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use pingora::protocols::Stream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::{metrics, Channels, StreamClaim};
use crate::dialect::ChannelCaller;

/// How often an idle stream says it is alive.
const KEEPALIVE: Duration = Duration::from_secs(15);
/// How long one message may take to send before the caller counts as gone.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// The most activities one message carries.
const PAGE: usize = 100;
/// How often a stream reads a shared (Redis) conversation again, for other instances' appends.
const SHARED_POLL: Duration = Duration::from_secs(1);
/// The largest frame a caller may send (it has nothing to send but pings and its close).
const MAX_FRAME: usize = 4 << 10;
/// The most pings (and pongs) a caller may send between two keep-alives.
const MAX_CONTROL: u32 = 32;

/// The `Sec-WebSocket-Accept` of a handshake's `Sec-WebSocket-Key`.
pub fn accept_key(key: &[u8]) -> String {
    tokio_tungstenite::tungstenite::handshake::derive_accept_key(key)
}

/// What a stream follows, and until when.
pub struct Follow {
    pub channels: Arc<Channels>,
    pub conversation: String,
    /// Who the conversation belongs to.
    pub owner: String,
    pub dialect: &'static dyn ChannelCaller,
    /// The watermark the caller has read to (`None`: everything kept is sent first).
    pub watermark: Option<String>,
    /// When the caller's token expires.
    pub until: Instant,
    pub claim: StreamClaim,
}

/// Serves one stream on an upgraded connection until it ends.
pub async fn serve(stream: Stream, mut f: Follow) {
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_FRAME))
        .max_frame_size(Some(MAX_FRAME));
    let ws = WebSocketStream::from_raw_socket(stream, Role::Server, Some(config)).await;
    let m = metrics();
    m.streams.inc();
    let why = follow(ws, &mut f).await;
    m.streams.dec();
    tracing::debug!(why, "channel stream closed");
}

/// Sends what is new after `sent`, a page at a time; false if the caller is gone. A store that
/// fails is read again at the next ring or poll.
async fn send_new<S>(
    tx: &mut S,
    f: &Follow,
    sent: &mut Option<String>,
) -> Result<bool, &'static str>
where
    S: futures_util::Sink<Message> + Unpin,
{
    let c = &f.channels;
    while let Ok(page) = c
        .after(&f.conversation, &f.owner, sent.as_deref(), PAGE)
        .await
    {
        let Some(page) = page else {
            return Err("conversation gone");
        };
        if page.activities.is_empty() {
            // A watermark from the future comes back as the last place: follow from there.
            *sent = Some(page.watermark)
                .filter(|w| !w.is_empty())
                .or(sent.take());
            break;
        }
        let refs: Vec<&[u8]> = page.activities.iter().map(|a| &a[..]).collect();
        let body = f.dialect.render_page(&refs, &page.watermark);
        let text = String::from_utf8(body).unwrap_or_default();
        if !send(tx, Message::text(text)).await {
            return Ok(false);
        }
        *sent = Some(page.watermark);
    }
    Ok(true)
}

/// Follows the conversation; returns why it ended.
async fn follow(ws: WebSocketStream<Stream>, f: &mut Follow) -> &'static str {
    let (mut tx, mut rx) = ws.split();
    let mut bell = f.channels.bell(&f.conversation);
    let mut sent = f.watermark.clone();
    let mut keepalive = tokio::time::interval_at(Instant::now() + KEEPALIVE, KEEPALIVE);
    let mut poll = tokio::time::interval_at(Instant::now() + SHARED_POLL, SHARED_POLL);
    let shared = f.channels.shared();
    let expiry = tokio::time::sleep_until(f.until);
    tokio::pin!(expiry);
    let (mut read, mut control) = (true, 0);
    loop {
        if std::mem::take(&mut read) {
            match send_new(&mut tx, f, &mut sent).await {
                Ok(true) => {}
                Ok(false) => return "caller gone",
                Err(why) => return why,
            }
        }
        let close = |reason: &'static str| CloseFrame {
            code: 1000u16.into(),
            reason: reason.into(),
        };
        tokio::select! {
            c = bell.changed() => match c {
                Ok(()) => read = true,
                // The bell was dropped (forgotten while idle): ring a fresh one from now on.
                Err(_) => {
                    bell = f.channels.bell(&f.conversation);
                    read = true;
                }
            },
            _ = poll.tick(), if shared => read = true,
            _ = f.claim.newer.changed() => {
                if *f.claim.newer.borrow() != f.claim.generation {
                    let _ = send(&mut tx, Message::Close(Some(close("a newer stream opened")))).await;
                    return "replaced";
                }
            }
            _ = keepalive.tick() => {
                control = 0;
                if !send(&mut tx, Message::text("")).await
                    || !send(&mut tx, Message::Ping(Default::default())).await {
                    return "caller gone";
                }
            }
            _ = &mut expiry => {
                let _ = send(&mut tx, Message::Close(Some(close("token expired")))).await;
                return "token expired";
            }
            frame = rx.next() => match frame {
                Some(Ok(Message::Close(_))) | None => return "caller closed",
                Some(Err(_)) => return "caller error",
                // A caller has nothing to say on the stream (its activities go over HTTP).
                Some(Ok(Message::Text(_) | Message::Binary(_))) => {
                    let _ = send(&mut tx, Message::Close(Some(CloseFrame {
                        code: 1008u16.into(),
                        reason: "a stream takes no messages; post activities".into(),
                    }))).await;
                    return "caller sent data";
                }
                // Pings are answered by the next send, a few per keep-alive at most.
                Some(Ok(_)) => {
                    control += 1;
                    if control > MAX_CONTROL {
                        return "caller flooded";
                    }
                    tokio::task::yield_now().await;
                }
            },
        }
    }
}

/// Sends one message (and flushes, answering pending pings); false if the caller is gone or too
/// slow.
async fn send<S>(tx: &mut S, m: Message) -> bool
where
    S: futures_util::Sink<Message> + Unpin,
{
    matches!(
        tokio::time::timeout(SEND_TIMEOUT, tx.send(m)).await,
        Ok(Ok(()))
    )
}
