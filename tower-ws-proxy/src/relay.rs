//! The frame-aware relay between an upgraded client connection and its upstream.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, AtomicU8, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use tokio::{
    io::{AsyncRead, ReadBuf},
    net::{
        tcp::{ReadHalf, WriteHalf},
        TcpStream,
    },
    sync::{watch, Notify},
    time::Instant,
};

use crate::frame::{close_frame, FrameTracker, OpCode, ProtocolError};

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

/// One side of a relayed connection: its socket and any bytes already read from it (for
/// example frames that arrived together with the HTTP upgrade).
///
/// ```no_run
/// # async fn f() -> std::io::Result<()> {
/// use tower_ws_proxy::Peer;
///
/// let stream = tokio::net::TcpStream::connect("127.0.0.1:7100").await?;
/// let peer = Peer::new(stream);
/// # let _ = peer; Ok(()) }
/// ```
#[derive(Debug)]
pub struct Peer {
    stream: TcpStream,
    preread: Bytes,
}

impl Peer {
    /// A peer with nothing read yet.
    pub fn new(stream: TcpStream) -> Self {
        Self::with_preread(stream, Bytes::new())
    }

    /// A peer whose first bytes were already read (they are relayed first).
    pub fn with_preread(stream: TcpStream, preread: Bytes) -> Self {
        Self { stream, preread }
    }
}

/// Relays an upgraded WebSocket connection until both sides have closed.
///
/// Bytes pass through unchanged; [`FrameTracker`]s follow each direction so that a close
/// requested through the [`RelayHandle`] (or by the idle timeout) is injected only between
/// messages. After injecting a close toward one side, the relay drops whatever the other
/// side still sends that way up to its own close, so neither side sees a second close.
/// A framing error ends the relay (both connections are dropped).
///
/// The relay waits for socket readiness and reads into a stack buffer that it writes out
/// before waiting again, so an idle connection holds no buffer at all; bytes are copied to
/// the heap only while the destination cannot take them.
pub async fn relay(
    client: Peer,
    upstream: Peer,
    config: RelayConfig,
    commands: RelayCommands,
) -> RelayOutcome {
    let shared = Shared {
        config,
        start: Instant::now(),
        last_activity: AtomicU64::new(0),
        closes: AtomicU8::new(0),
        handshake_done: Notify::new(),
    };
    let (mut client_stream, mut upstream_stream) = (client.stream, upstream.stream);
    let (client_read, client_write) = client_stream.split();
    let (upstream_read, upstream_write) = upstream_stream.split();
    let up = pump(
        client_read,
        upstream_write,
        client.preread,
        Toward::Upstream,
        commands.receiver.clone(),
        &shared,
    );
    let down = pump(
        upstream_read,
        client_write,
        upstream.preread,
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

/// What to send on after reading some bytes.
enum Plan {
    /// All of them, unchanged (the common case: no copy).
    All,
    /// These bytes instead (a close was injected, or part is swallowed).
    Bytes(Vec<u8>),
}

/// The state of one direction.
struct Direction<'a> {
    toward: Toward,
    shared: &'a Shared,
    tracker: FrameTracker,
    end: DirectionEnd,
    requested: Option<(u16, String)>,
    deadline: Option<Instant>,
    handshake_complete: bool,
}

impl Direction<'_> {
    /// Follows the frames in `data`, injecting a requested close at a message boundary.
    /// Nothing after an injected close goes out: the destination already has our close.
    fn plan(&mut self, data: &[u8]) -> Result<Plan, ProtocolError> {
        let already_closed = self.end.injected.is_some();
        let mut out: Option<Vec<u8>> = None;
        let mut pos = 0;
        while pos < data.len() {
            let Some((consumed, frame)) = self.tracker.feed(&data[pos..])? else {
                break;
            };
            pos += consumed;
            if frame.opcode == OpCode::Close && self.end.close.is_none() {
                self.end.close = Some(frame.close_code.unwrap_or(1005));
                self.deadline
                    .get_or_insert(Instant::now() + self.shared.config.close_timeout);
                if self.shared.closes.fetch_add(1, Ordering::AcqRel) == 1 {
                    // Both sides have closed: nothing valid can follow either way.
                    self.handshake_complete = true;
                    self.shared.handshake_done.notify_waiters();
                }
            }
            if self.end.injected.is_none()
                && frame.message_boundary
                && frame.opcode != OpCode::Close
            {
                if let Some((code, reason)) = self.requested.take() {
                    let mut buf = data[..pos].to_vec();
                    buf.extend_from_slice(&self.close_frame(code, &reason));
                    out = Some(buf);
                }
            }
        }
        Ok(match out {
            // The close went in here: what came before it, then the close.
            Some(buf) => Plan::Bytes(buf),
            None if already_closed => Plan::Bytes(Vec::new()),
            None => Plan::All,
        })
    }

    fn close_frame(&mut self, code: u16, reason: &str) -> Bytes {
        self.end.injected = Some(code);
        self.deadline = Some(Instant::now() + self.shared.config.close_timeout);
        close_frame(code, reason, self.toward == Toward::Upstream)
    }

    /// Whether nothing more needs to go this way.
    fn finished(&self) -> bool {
        self.handshake_complete || (self.end.injected.is_some() && self.end.close.is_some())
    }
}

/// Copies one direction, injecting a requested close at the first message boundary.
async fn pump(
    mut src: ReadHalf<'_>,
    dst: WriteHalf<'_>,
    preread: Bytes,
    toward: Toward,
    mut commands: watch::Receiver<RelayCommand>,
    shared: &Shared,
) -> DirectionEnd {
    let dst = dst.as_ref();
    let mut this = Direction {
        toward,
        shared,
        tracker: FrameTracker::default(),
        end: DirectionEnd::default(),
        requested: None,
        deadline: None,
        handshake_complete: false,
    };
    let mut pending: Option<Vec<u8>> = None;
    // Consumed here so nothing keeps it alive for the rest of the connection.
    let preread = preread;
    if !preread.is_empty() {
        match this.plan(&preread) {
            Ok(Plan::All) => pending = Some(preread.to_vec()),
            Ok(Plan::Bytes(bytes)) => pending = Some(bytes),
            Err(_) => return this.end,
        }
        this.end.bytes += preread.len() as u64;
    }
    drop(preread);

    // The rare signals wait in futures made once, so the hot path registers nothing: only
    // when the socket has nothing to read does the pump poll them too.
    let mut close_watch = commands.clone();
    let close_requested = async move {
        let command = close_watch
            .wait_for(|c| matches!(c, RelayCommand::Close { .. }))
            .await;
        command.ok().map(|c| c.clone())
    };
    tokio::pin!(close_requested);
    let mut close_request_seen = false;
    let handshake_done = shared.handshake_done.notified();
    tokio::pin!(handshake_done);
    handshake_done.as_mut().enable();
    let close_deadline = tokio::time::sleep(Duration::from_secs(86_400));
    tokio::pin!(close_deadline);

    loop {
        if let Some(bytes) = pending.take() {
            if write_all(dst, &bytes).await.is_err() {
                return this.end;
            }
        }
        if this.finished() || shared.closes.load(Ordering::Acquire) >= 2 {
            shutdown_write(dst);
            return this.end;
        }
        // An atomic version check: cheap enough for every read.
        if commands.has_changed().unwrap_or(false) {
            if let RelayCommand::Close { code, reason } = &*commands.borrow_and_update() {
                if this.requested.is_none() && this.end.injected.is_none() {
                    this.requested = Some((*code, reason.clone()));
                }
            }
        }
        // Between messages and nothing half-forwarded: inject right away.
        if this.tracker.at_message_boundary() && this.end.close.is_none() {
            if let Some((code, reason)) = this.requested.take() {
                let frame = this.close_frame(code, &reason);
                if write_all(dst, &frame).await.is_err() {
                    return this.end;
                }
                continue;
            }
        }
        if let Some(deadline) = this.deadline {
            if close_deadline.deadline() != deadline {
                close_deadline.as_mut().reset(deadline);
            }
        }
        let step = std::future::poll_fn(|cx| {
            // `poll_read` (unlike `try_read`) marks the socket drained after a short read, so
            // each message costs one `read` and one `write`, with no `read` that finds nothing.
            if let Poll::Ready(step) = read_and_forward(cx, &mut src, dst, &mut this) {
                return Poll::Ready(step);
            }
            if !close_request_seen {
                if let Poll::Ready(command) = close_requested.as_mut().poll(cx) {
                    close_request_seen = true;
                    return Poll::Ready(Step::Command(command));
                }
            }
            if this.deadline.is_some() && close_deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Step::Finished);
            }
            if handshake_done.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Step::Finished);
            }
            Poll::Pending
        })
        .await;
        match step {
            Step::Sent => {}
            Step::Command(command) => {
                if let Some(RelayCommand::Close { code, reason }) = command {
                    if this.requested.is_none() && this.end.injected.is_none() {
                        this.requested = Some((code, reason));
                    }
                }
            }
            Step::Pending(bytes) => pending = Some(bytes),
            Step::Finished => {
                shutdown_write(dst);
                return this.end;
            }
            Step::Broken => return this.end,
        }
    }
}

/// Reads what `src` has and forwards it, without holding a buffer across an await: the
/// per-thread buffer is only borrowed in this synchronous step, and what `dst` cannot take
/// now is copied.
fn read_and_forward(
    cx: &mut Context<'_>,
    src: &mut ReadHalf<'_>,
    dst: &TcpStream,
    this: &mut Direction<'_>,
) -> Poll<Step> {
    READ_BUFFER.with_borrow_mut(|buf| {
        let mut read_buf = ReadBuf::new(buf);
        let read = match Pin::new(&mut *src).poll_read(cx, &mut read_buf) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(_)) => return Poll::Ready(Step::Finished),
            Poll::Ready(Ok(())) if read_buf.filled().is_empty() => {
                return Poll::Ready(Step::Finished)
            }
            Poll::Ready(Ok(())) => read_buf.filled().len(),
        };
        this.shared.touch();
        this.end.bytes += read as u64;
        Poll::Ready(match this.plan(&buf[..read]) {
            Ok(Plan::All) => match try_write_all(dst, &buf[..read]) {
                Ok(written) if written == read => Step::Sent,
                Ok(written) => Step::Pending(buf[written..read].to_vec()),
                Err(_) => Step::Broken,
            },
            Ok(Plan::Bytes(bytes)) if bytes.is_empty() => Step::Sent,
            Ok(Plan::Bytes(bytes)) => Step::Pending(bytes),
            Err(error) => {
                tracing::debug!(%error, toward = ?this.toward, "dropping websocket relay");
                Step::Broken
            }
        })
    })
}

/// What one wait of a pump produced.
enum Step {
    /// Everything read was forwarded.
    Sent,
    /// A command arrived while the socket had nothing to read.
    Command(Option<RelayCommand>),
    /// These bytes still have to be written.
    Pending(Vec<u8>),
    /// The source ended, the close deadline passed, or the close handshake completed.
    Finished,
    /// The destination failed or the framing was invalid: drop both sides.
    Broken,
}

thread_local! {
    /// One read buffer per runtime thread, shared by every relay on it.
    static READ_BUFFER: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; 16 * 1024]);
}

/// Writes as much as the socket takes now; returns how much that was.
fn try_write_all(dst: &TcpStream, data: &[u8]) -> std::io::Result<usize> {
    let mut written = 0;
    while written < data.len() {
        match dst.try_write(&data[written..]) {
            Ok(n) => written += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    Ok(written)
}

async fn write_all(dst: &TcpStream, mut data: &[u8]) -> std::io::Result<()> {
    while !data.is_empty() {
        dst.writable().await?;
        let written = try_write_all(dst, data)?;
        data = &data[written..];
    }
    Ok(())
}

/// Half-closes toward `dst`: it reads EOF after what was sent.
fn shutdown_write(dst: &TcpStream) {
    let _ = socket2::SockRef::from(dst).shutdown(std::net::Shutdown::Write);
}
