//! The frame-aware relay between an upgraded client connection and its upstream.

use std::{
    convert::Infallible,
    sync::{
        atomic::{AtomicU64, AtomicU8, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::BytesMut;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    sync::{watch, Notify},
    time::Instant,
};

use crate::frame::{close_frame, FrameTracker, OpCode};

/// Timeouts of a relay.
///
/// ```
/// use std::time::Duration;
/// use tower_ws_proxy::RelayConfig;
///
/// let config = RelayConfig::default().idle_timeout(Some(Duration::from_secs(60)));
/// assert_eq!(config.close_timeout, Duration::from_secs(5));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RelayConfig {
    /// Close both sides with 1001 after this long without a byte either way (default: none).
    pub idle_timeout: Option<Duration>,
    /// How long to wait for the peers to answer a close the relay sent (default: 5 s).
    pub close_timeout: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            idle_timeout: None,
            close_timeout: Duration::from_secs(5),
        }
    }
}

impl RelayConfig {
    /// Sets the idle timeout.
    pub fn idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Sets the close timeout.
    pub fn close_timeout(mut self, timeout: Duration) -> Self {
        self.close_timeout = timeout;
        self
    }
}

/// A request to a running relay.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RelayCommand {
    /// Keep relaying.
    Run,
    /// At the next message boundary of each direction, send a close frame with this code and
    /// reason to both the client and the upstream, then wait for their answers.
    Close {
        /// The status code (e.g. 1001 going away, 1012 service restart).
        code: u16,
        /// The reason text (cut to fit a control frame).
        reason: String,
    },
}

/// Controls a running relay; cheap to clone.
///
/// ```
/// use tower_ws_proxy::RelayHandle;
///
/// let (handle, _commands) = RelayHandle::new();
/// handle.close(1001, "gateway shutting down");
/// ```
#[derive(Clone, Debug)]
pub struct RelayHandle {
    commands: Arc<watch::Sender<RelayCommand>>,
}

/// The receiving end of a [`RelayHandle`], given to [`relay`].
#[derive(Debug)]
pub struct RelayCommands {
    receiver: watch::Receiver<RelayCommand>,
    // The relay's own idle timer closes through the same channel.
    sender: Arc<watch::Sender<RelayCommand>>,
}

impl RelayHandle {
    /// A handle and the commands it sends.
    pub fn new() -> (Self, RelayCommands) {
        let (sender, receiver) = watch::channel(RelayCommand::Run);
        let sender = Arc::new(sender);
        (
            Self {
                commands: sender.clone(),
            },
            RelayCommands { receiver, sender },
        )
    }

    /// Asks the relay to close both sides at their next message boundaries.
    pub fn close(&self, code: u16, reason: impl Into<String>) {
        self.commands.send_replace(RelayCommand::Close {
            code,
            reason: reason.into(),
        });
    }

    /// Whether the relay has finished.
    pub fn is_finished(&self) -> bool {
        self.commands.receiver_count() == 0
    }
}

/// How a relay ended.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RelayOutcome {
    /// The close code the client sent (or answered with), if any.
    pub client_close: Option<u16>,
    /// The close code the upstream sent (or answered with), if any.
    pub upstream_close: Option<u16>,
    /// The code of a close the relay itself sent to both sides, if any.
    pub relay_close: Option<u16>,
    /// Bytes relayed from the client to the upstream.
    pub client_bytes: u64,
    /// Bytes relayed from the upstream to the client.
    pub upstream_bytes: u64,
}

/// Which way a direction flows; frames toward the upstream must be masked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Toward {
    Upstream,
    Client,
}

#[derive(Debug, Default)]
struct DirectionEnd {
    /// The close code the source sent (1005 for a close without a code).
    close: Option<u16>,
    /// The close code the relay injected toward the destination.
    injected: Option<u16>,
    bytes: u64,
}

/// Shared by both directions of one relay.
struct Shared {
    config: RelayConfig,
    start: Instant,
    /// Milliseconds since `start` of the last byte read either way.
    last_activity: AtomicU64,
    /// Close frames seen, one per direction at most; at 2 the close handshake is complete.
    closes: AtomicU8,
    /// Tells the other direction that the handshake completed.
    handshake_done: Notify,
}

impl Shared {
    fn touch(&self) {
        let now = self.start.elapsed().as_millis() as u64;
        self.last_activity.store(now, Ordering::Relaxed);
    }
}

/// Relays an upgraded WebSocket connection until both sides have closed.
///
/// Bytes pass through unchanged; [`FrameTracker`]s follow each direction so that a close
/// requested through the [`RelayHandle`] (or by the idle timeout) is injected only between
/// messages. After injecting a close toward one side, the relay drops whatever the other
/// side still sends that way up to its own close, so neither side sees a second close.
/// A framing error ends the relay (both connections are dropped).
pub async fn relay<C, U>(
    client: C,
    upstream: U,
    config: RelayConfig,
    commands: RelayCommands,
) -> RelayOutcome
where
    C: AsyncRead + AsyncWrite,
    U: AsyncRead + AsyncWrite,
{
    let (client_read, client_write) = tokio::io::split(client);
    let (upstream_read, upstream_write) = tokio::io::split(upstream);
    let shared = Shared {
        config,
        start: Instant::now(),
        last_activity: AtomicU64::new(0),
        closes: AtomicU8::new(0),
        handshake_done: Notify::new(),
    };
    let up = pump(
        client_read,
        upstream_write,
        Toward::Upstream,
        commands.receiver.clone(),
        &shared,
    );
    let down = pump(
        upstream_read,
        client_write,
        Toward::Client,
        commands.receiver.clone(),
        &shared,
    );
    let idle = idle_watch(&shared, &commands.sender);
    let (up, down) = tokio::select! {
        both = async { tokio::join!(up, down) } => both,
        never = idle => match never {},
    };
    RelayOutcome {
        client_close: up.close,
        upstream_close: down.close,
        relay_close: up.injected.or(down.injected),
        client_bytes: up.bytes,
        upstream_bytes: down.bytes,
    }
}

/// Requests a 1001 close once nothing has moved for the idle timeout; never completes.
async fn idle_watch(shared: &Shared, commands: &watch::Sender<RelayCommand>) -> Infallible {
    if let Some(idle) = shared.config.idle_timeout {
        loop {
            let last =
                shared.start + Duration::from_millis(shared.last_activity.load(Ordering::Relaxed));
            if Instant::now() >= last + idle {
                commands.send_replace(RelayCommand::Close {
                    code: 1001,
                    reason: "idle timeout".into(),
                });
                break;
            }
            tokio::time::sleep_until(last + idle).await;
        }
    }
    std::future::pending().await
}

/// Copies one direction, injecting a requested close at the first message boundary.
async fn pump<R, W>(
    mut src: R,
    mut dst: W,
    toward: Toward,
    mut commands: watch::Receiver<RelayCommand>,
    shared: &Shared,
) -> DirectionEnd
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut tracker = FrameTracker::default();
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut end = DirectionEnd::default();
    let mut requested: Option<(u16, String)> = None;
    let mut deadline: Option<Instant> = None;
    let mut handshake_complete = false;
    loop {
        if requested.is_none() && end.injected.is_none() {
            if let RelayCommand::Close { code, reason } = &*commands.borrow_and_update() {
                requested = Some((*code, reason.clone()));
            }
        }
        // Between messages and nothing half-forwarded: inject right away.
        if tracker.at_message_boundary() && end.close.is_none() {
            if let Some((code, reason)) = requested.take() {
                if inject(&mut dst, toward, code, &reason).await.is_err() {
                    return end;
                }
                end.injected = Some(code);
                deadline = Some(Instant::now() + shared.config.close_timeout);
            }
        }
        let read = tokio::select! {
            read = src.read_buf(&mut buf) => read,
            Ok(()) = commands.changed(), if end.injected.is_none() && requested.is_none() => continue,
            () = sleep_until_some(deadline) => {
                let _ = dst.shutdown().await;
                return end;
            }
            () = shared.handshake_done.notified() => {
                let _ = dst.shutdown().await;
                return end;
            }
        };
        match read {
            Ok(0) | Err(_) => {
                let _ = dst.shutdown().await;
                return end;
            }
            Ok(_) => shared.touch(),
        }
        let mut forward_from = 0;
        let mut pos = 0;
        while pos < buf.len() {
            let frame = match tracker.feed(&buf[pos..]) {
                Ok(Some((consumed, frame))) => {
                    pos += consumed;
                    frame
                }
                Ok(None) => break,
                Err(error) => {
                    tracing::debug!(%error, ?toward, "dropping websocket relay");
                    return end;
                }
            };
            if frame.opcode == OpCode::Close && end.close.is_none() {
                end.close = Some(frame.close_code.unwrap_or(1005));
                deadline.get_or_insert(Instant::now() + shared.config.close_timeout);
                if shared.closes.fetch_add(1, Ordering::AcqRel) == 1 {
                    // Both sides have closed: nothing valid can follow either way.
                    handshake_complete = true;
                    shared.handshake_done.notify_one();
                }
            }
            if end.injected.is_some() {
                // Swallowing: the destination already got our close.
                forward_from = pos;
                continue;
            }
            if frame.message_boundary && frame.opcode != OpCode::Close {
                if let Some((code, reason)) = requested.take() {
                    if dst.write_all(&buf[forward_from..pos]).await.is_err() {
                        return end;
                    }
                    end.bytes += (pos - forward_from) as u64;
                    if inject(&mut dst, toward, code, &reason).await.is_err() {
                        return end;
                    }
                    end.injected = Some(code);
                    deadline = Some(Instant::now() + shared.config.close_timeout);
                    forward_from = pos;
                }
            }
        }
        if end.injected.is_none() {
            if dst.write_all(&buf[forward_from..]).await.is_err() {
                return end;
            }
            end.bytes += (buf.len() - forward_from) as u64;
        }
        buf.clear();
        if handshake_complete || (end.injected.is_some() && end.close.is_some()) {
            // Our close went out and the source answered: this direction is done.
            let _ = dst.shutdown().await;
            return end;
        }
    }
}

async fn inject<W: AsyncWrite + Unpin>(
    dst: &mut W,
    toward: Toward,
    code: u16,
    reason: &str,
) -> std::io::Result<()> {
    dst.write_all(&close_frame(code, reason, toward == Toward::Upstream))
        .await?;
    dst.flush().await
}

async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
