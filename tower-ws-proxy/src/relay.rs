//! The frame-aware relay between an upgraded client connection and its upstream.

use std::{
    convert::Infallible,
    fmt,
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering},
        Arc, Mutex,
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
    sync::{oneshot, watch, Notify},
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
    /// Move the connection to the upstream handed to [`RelayHandle::switch_to`]: at a message
    /// boundary of the client, stop reading from it and close the old upstream; forward what
    /// the old upstream still sends up to its close; then relay to the new upstream.
    Switch,
}

/// Why [`RelayHandle::switch_to`] did not switch.
///
/// ```
/// use tower_ws_proxy::SwitchError;
///
/// assert_eq!(SwitchError::Busy.to_string(), "another switch is in progress");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SwitchError {
    /// Another switch is in progress.
    Busy,
    /// The relay is closing or has ended (a close was requested, or a side closed).
    Ended,
    /// The old upstream closed in the middle of a message, so the client could not be moved
    /// without seeing half a message; it was closed with 1012 instead.
    Interrupted,
}

impl fmt::Display for SwitchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SwitchError::Busy => "another switch is in progress",
            SwitchError::Ended => "the connection is closing or has ended",
            SwitchError::Interrupted => "the old backend closed in the middle of a message",
        })
    }
}

impl std::error::Error for SwitchError {}

/// An upstream waiting to take over, and who to tell how it went.
#[derive(Debug)]
struct PendingSwitch {
    upstream: Peer,
    done: oneshot::Sender<Result<(), SwitchError>>,
}

type SwitchSlot = Arc<Mutex<Option<PendingSwitch>>>;

fn lock(slot: &SwitchSlot) -> std::sync::MutexGuard<'_, Option<PendingSwitch>> {
    slot.lock().unwrap_or_else(|e| e.into_inner())
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
    switch: SwitchSlot,
}

/// The receiving end of a [`RelayHandle`], given to [`relay`].
#[derive(Debug)]
pub struct RelayCommands {
    receiver: watch::Receiver<RelayCommand>,
    // The relay's own idle timer closes through the same channel.
    sender: Arc<watch::Sender<RelayCommand>>,
    switch: SwitchSlot,
}

impl RelayHandle {
    /// A handle and the commands it sends.
    pub fn new() -> (Self, RelayCommands) {
        let (sender, receiver) = watch::channel(RelayCommand::Run);
        let sender = Arc::new(sender);
        let switch = SwitchSlot::default();
        (
            Self {
                commands: sender.clone(),
                switch: switch.clone(),
            },
            RelayCommands {
                receiver,
                sender,
                switch,
            },
        )
    }

    /// Moves the connection to `upstream`, a WebSocket already handshaken with the new
    /// backend (same subprotocol and extensions as the client negotiated). Resolves once the
    /// client is relayed to it; the client sees no close, and no frame is lost or reordered.
    ///
    /// On an error the relay goes on as before (or ends, as it was going to) and `upstream` is
    /// dropped.
    pub async fn switch_to(&self, upstream: Peer) -> Result<(), SwitchError> {
        let done = {
            let mut slot = lock(&self.switch);
            if slot.is_some() {
                return Err(SwitchError::Busy);
            }
            if self.is_finished() || matches!(*self.commands.borrow(), RelayCommand::Close { .. }) {
                return Err(SwitchError::Ended);
            }
            let (done, receiver) = oneshot::channel();
            *slot = Some(PendingSwitch { upstream, done });
            self.commands.send_replace(RelayCommand::Switch);
            receiver
        };
        done.await.unwrap_or(Err(SwitchError::Ended))
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
    /// How many times the connection moved to another upstream.
    pub switches: u32,
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
    /// Toward the upstream, switching: the client's bytes read past the message boundary
    /// where the old upstream was closed; they go to the new upstream first.
    handover: Option<Vec<u8>>,
    /// Toward the client, switching: the old upstream has closed (or timed out, or gone) and
    /// everything it sent before that reached the client.
    handed_over: bool,
}

/// Activity of the whole relay, across upstream switches.
struct Activity {
    start: Instant,
    /// Milliseconds since `start` of the last byte read either way.
    last: AtomicU64,
}

/// Shared by both directions while they relay to one upstream.
struct Shared<'a> {
    config: RelayConfig,
    activity: &'a Activity,
    /// Close frames seen, one per direction at most; at 2 the close handshake is complete.
    closes: AtomicU8,
    /// Set when the other direction must stop too (the close handshake completed, or a
    /// switch failed).
    stopped: AtomicBool,
    stop: Notify,
}

impl Shared<'_> {
    fn touch(&self) {
        let now = self.activity.start.elapsed().as_millis() as u64;
        self.activity.last.store(now, Ordering::Relaxed);
    }

    fn stop_both(&self) {
        self.stopped.store(true, Ordering::Release);
        self.stop.notify_waiters();
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

/// The close sent to an old upstream when its client moves to another backend.
const MOVED_CODE: u16 = 1001;
const MOVED_REASON: &str = "moved to another backend";

/// Relays an upgraded WebSocket connection until both sides have closed.
///
/// Bytes pass through unchanged; [`FrameTracker`]s follow each direction so that a close
/// requested through the [`RelayHandle`] (or by the idle timeout) is injected only between
/// messages. After injecting a close toward one side, the relay drops whatever the other
/// side still sends that way up to its own close, so neither side sees a second close.
/// A framing error ends the relay (both connections are dropped).
///
/// [`RelayHandle::switch_to`] moves the client to another upstream without a close: the
/// relay then runs again on the new pair.
///
/// The relay waits for socket readiness and reads into a per-thread buffer that it writes
/// out before waiting again, so an idle connection holds no buffer at all; bytes are copied
/// to the heap only while the destination cannot take them.
pub async fn relay(
    client: Peer,
    upstream: Peer,
    config: RelayConfig,
    commands: RelayCommands,
) -> RelayOutcome {
    let activity = Activity {
        start: Instant::now(),
        last: AtomicU64::new(0),
    };
    let idle = idle_watch(config, &activity, &commands.sender);
    let phases = async {
        let Peer {
            stream: mut client_stream,
            preread: mut client_bytes,
        } = client;
        let mut upstream = upstream;
        let mut outcome = RelayOutcome {
            client_close: None,
            upstream_close: None,
            relay_close: None,
            client_bytes: 0,
            upstream_bytes: 0,
            switches: 0,
        };
        loop {
            let (up, down) = relay_to(
                &mut client_stream,
                client_bytes,
                upstream,
                config,
                &commands,
                &activity,
            )
            .await;
            outcome.client_bytes += up.bytes;
            outcome.upstream_bytes += down.bytes;
            let pending = lock(&commands.switch).take();
            match (up.handover, down.handed_over, pending) {
                (Some(leftover), true, Some(next)) => {
                    client_bytes = leftover.into();
                    upstream = next.upstream;
                    outcome.switches += 1;
                    commands.sender.send_if_modified(|command| {
                        let switching = *command == RelayCommand::Switch;
                        if switching {
                            *command = RelayCommand::Run;
                        }
                        switching
                    });
                    let _ = next.done.send(Ok(()));
                }
                (_, _, pending) => {
                    if let Some(pending) = pending {
                        let error = if down.injected == Some(1012) {
                            SwitchError::Interrupted
                        } else {
                            SwitchError::Ended
                        };
                        let _ = pending.done.send(Err(error));
                    }
                    outcome.client_close = up.close;
                    outcome.upstream_close = down.close;
                    outcome.relay_close = up.injected.or(down.injected);
                    return outcome;
                }
            }
        }
    };
    tokio::select! {
        outcome = phases => outcome,
        never = idle => match never {},
    }
}

/// Relays between the client and one upstream until both have closed, or until a switch
/// handed the client over (then the upstream is dropped).
async fn relay_to(
    client: &mut TcpStream,
    client_bytes: Bytes,
    upstream: Peer,
    config: RelayConfig,
    commands: &RelayCommands,
    activity: &Activity,
) -> (DirectionEnd, DirectionEnd) {
    let Peer {
        stream: mut upstream_stream,
        preread: upstream_bytes,
    } = upstream;
    let shared = Shared {
        config,
        activity,
        closes: AtomicU8::new(0),
        stopped: AtomicBool::new(false),
        stop: Notify::new(),
    };
    let (client_read, client_write) = client.split();
    let (upstream_read, upstream_write) = upstream_stream.split();
    let up = pump(
        client_read,
        upstream_write,
        client_bytes,
        Toward::Upstream,
        commands.receiver.clone(),
        &shared,
    );
    let down = pump(
        upstream_read,
        client_write,
        upstream_bytes,
        Toward::Client,
        commands.receiver.clone(),
        &shared,
    );
    tokio::join!(up, down)
}

/// Requests a 1001 close once nothing has moved for the idle timeout; never completes.
async fn idle_watch(
    config: RelayConfig,
    activity: &Activity,
    commands: &watch::Sender<RelayCommand>,
) -> Infallible {
    if let Some(idle) = config.idle_timeout {
        loop {
            let last =
                activity.start + Duration::from_millis(activity.last.load(Ordering::Relaxed));
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
    /// These bytes instead (a close was injected, or part is swallowed or held back).
    Bytes(Vec<u8>),
}

/// What a direction was asked to inject at its next message boundary.
enum Injection {
    /// A close frame, then swallow what the source sends up to its own close.
    Close(u16, String),
    /// Toward the upstream: a close, then stop reading from the client (a switch).
    Handover,
}

/// The state of one direction.
struct Direction<'a> {
    toward: Toward,
    shared: &'a Shared<'a>,
    tracker: FrameTracker,
    end: DirectionEnd,
    requested: Option<Injection>,
    deadline: Option<Instant>,
    handshake_complete: bool,
    /// Toward the client, switching: forward the old upstream's frames up to its close.
    switching: bool,
    /// Toward the client, switching: the start of a frame that may be the old upstream's
    /// close, held back until it is known.
    held: Vec<u8>,
}

impl Direction<'_> {
    /// Takes a command into account.
    fn on_command(&mut self, command: &RelayCommand) {
        let closing =
            self.end.close.is_some() || self.end.injected.is_some() || self.requested.is_some();
        match command {
            RelayCommand::Close { code, reason } if !closing && !self.switching => {
                self.requested = Some(Injection::Close(*code, reason.clone()));
            }
            RelayCommand::Switch if !closing && !self.switching => match self.toward {
                Toward::Upstream => self.requested = Some(Injection::Handover),
                // A close frame the client has partly seen cannot be taken back.
                Toward::Client if self.tracker.current_opcode() != Some(OpCode::Close) => {
                    self.switching = true;
                    self.deadline = Some(Instant::now() + self.shared.config.close_timeout);
                }
                Toward::Client => {}
            },
            _ => {}
        }
    }

    /// Follows the frames in `data`, injecting a requested close at a message boundary.
    /// Nothing after an injected close goes out: the destination already has our close.
    fn plan(&mut self, data: &[u8]) -> Result<Plan, ProtocolError> {
        if self.switching {
            return self.plan_switching(data).map(Plan::Bytes);
        }
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
                    self.shared.stop_both();
                }
            }
            if self.end.injected.is_none()
                && frame.message_boundary
                && frame.opcode != OpCode::Close
            {
                match self.requested.take() {
                    Some(Injection::Close(code, reason)) => {
                        let mut buf = data[..pos].to_vec();
                        buf.extend_from_slice(&self.close_frame(code, &reason));
                        out = Some(buf);
                    }
                    Some(Injection::Handover) => {
                        let mut buf = data[..pos].to_vec();
                        buf.extend_from_slice(&self.close_frame(MOVED_CODE, MOVED_REASON));
                        // The rest belongs to the next upstream, unread by the tracker.
                        self.end.handover = Some(data[pos..].to_vec());
                        return Ok(Plan::Bytes(buf));
                    }
                    None => {}
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

    /// Toward the client while switching: forwards the old upstream's frames up to its
    /// close, which (with anything after it) the client never sees.
    fn plan_switching(&mut self, data: &[u8]) -> Result<Vec<u8>, ProtocolError> {
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < data.len() {
            let frame_start = pos;
            let Some((consumed, frame)) = self.tracker.feed(&data[pos..])? else {
                // Inside a frame that goes on in the next read: hold it back if it is the
                // close, forward it otherwise.
                if self.tracker.current_opcode() == Some(OpCode::Close) {
                    self.held.extend_from_slice(&data[pos..]);
                } else {
                    out.extend_from_slice(&data[pos..]);
                }
                break;
            };
            pos += consumed;
            if frame.opcode == OpCode::Close {
                self.held = Vec::new();
                self.end.close = Some(frame.close_code.unwrap_or(1005));
                if self.tracker.at_message_boundary() {
                    self.end.handed_over = true;
                } else {
                    // Moving now would leave the client with half a message.
                    out.extend_from_slice(&close_frame(1012, "Service Restart", false));
                    self.end.injected = Some(1012);
                    self.shared.stop_both();
                }
                self.switching = false;
                return Ok(out);
            }
            out.extend_from_slice(&std::mem::take(&mut self.held));
            out.extend_from_slice(&data[frame_start..pos]);
        }
        Ok(out)
    }

    fn close_frame(&mut self, code: u16, reason: &str) -> Bytes {
        self.end.injected = Some(code);
        self.deadline = Some(Instant::now() + self.shared.config.close_timeout);
        close_frame(code, reason, self.toward == Toward::Upstream)
    }

    /// Toward the client: the upstream ended without a close, and the client is between
    /// messages and has had no close from us either.
    fn upstream_vanished(&self) -> bool {
        self.toward == Toward::Client
            && self.end.close.is_none()
            && self.end.injected.is_none()
            && self.tracker.at_message_boundary()
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
    shared: &Shared<'_>,
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
        switching: false,
        held: Vec::new(),
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
    let mut command_watch = commands.clone();
    let command_arrived = async move {
        let command = command_watch.wait_for(|c| *c != RelayCommand::Run).await;
        command.ok().map(|c| c.clone())
    };
    tokio::pin!(command_arrived);
    let mut command_seen = false;
    let stop = shared.stop.notified();
    tokio::pin!(stop);
    stop.as_mut().enable();
    let close_deadline = tokio::time::sleep(Duration::from_secs(86_400));
    tokio::pin!(close_deadline);

    loop {
        if let Some(bytes) = pending.take() {
            if write_all(dst, &bytes).await.is_err() {
                return this.end;
            }
        }
        if this.end.handover.is_some() || this.end.handed_over {
            return this.end;
        }
        if this.finished() || shared.stopped.load(Ordering::Acquire) {
            shutdown_write(dst);
            return this.end;
        }
        // Between messages and nothing half-forwarded: inject right away.
        if this.tracker.at_message_boundary() && this.end.close.is_none() {
            match this.requested.take() {
                Some(Injection::Close(code, reason)) => {
                    let frame = this.close_frame(code, &reason);
                    if write_all(dst, &frame).await.is_err() {
                        return this.end;
                    }
                    continue;
                }
                Some(Injection::Handover) => {
                    let frame = this.close_frame(MOVED_CODE, MOVED_REASON);
                    let _ = write_all(dst, &frame).await;
                    this.end.handover = Some(Vec::new());
                    return this.end;
                }
                None => {}
            }
        }
        if let Some(deadline) = this.deadline {
            if close_deadline.deadline() != deadline {
                close_deadline.as_mut().reset(deadline);
            }
        }
        let step = std::future::poll_fn(|cx| {
            // A command that arrived since the last look applies before anything more is
            // read: a switch must know where the old upstream's last frames end. (This is
            // polled again without the loop's check after a wakeup.)
            if commands.has_changed().unwrap_or(false) {
                let command = commands.borrow_and_update().clone();
                return Poll::Ready(Step::Command(Some(command)));
            }
            // `poll_read` (unlike `try_read`) marks the socket drained after a short read, so
            // each message costs one `read` and one `write`, with no `read` that finds nothing.
            if let Poll::Ready(step) = read_and_forward(cx, &mut src, dst, &mut this) {
                return Poll::Ready(step);
            }
            if !command_seen {
                if let Poll::Ready(command) = command_arrived.as_mut().poll(cx) {
                    command_seen = true;
                    return Poll::Ready(Step::Command(command));
                }
            }
            if this.deadline.is_some() && close_deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Step::Finished);
            }
            if stop.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Step::Finished);
            }
            Poll::Pending
        })
        .await;
        match step {
            Step::Sent => {}
            Step::Command(command) => {
                if let Some(command) = command {
                    this.on_command(&command);
                }
            }
            Step::Pending(bytes) => pending = Some(bytes),
            // The old upstream ended or missed its deadline while handing over: the client
            // is not closed, it moves on.
            Step::Finished if this.switching => {
                this.end.handed_over = true;
                return this.end;
            }
            Step::Finished => {
                // A switch requested just before the old upstream went: the client moves on.
                if commands.has_changed().unwrap_or(false) {
                    let command = commands.borrow_and_update().clone();
                    this.on_command(&command);
                    if this.switching {
                        this.end.handed_over = true;
                        return this.end;
                    }
                }
                if this.upstream_vanished() {
                    // Tell the client, between messages, rather than leave it a bare EOF:
                    // with the close it was about to get, or a "try again".
                    let command = commands.borrow().clone();
                    let (code, reason) = match (this.requested.take(), command) {
                        (Some(Injection::Close(code, reason)), _)
                        | (_, RelayCommand::Close { code, reason }) => (code, reason),
                        _ => (1012, "the backend closed the connection".into()),
                    };
                    let frame = this.close_frame(code, &reason);
                    let _ = write_all(dst, &frame).await;
                }
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
