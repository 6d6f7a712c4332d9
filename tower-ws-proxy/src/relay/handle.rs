//! Controlling a running relay, and how it ended.

use std::{
    fmt,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::Duration,
};

use tokio::sync::{oneshot, Notify};

use super::Peer;
use crate::{frame::FrameLimits, Traffic};

/// Deadlines and limits of a relay. Every state a relay can wait in has a deadline here, so
/// no peer, however broken, holds a connection's slot and descriptors past it.
///
/// ```
/// use std::time::Duration;
/// use tower_ws_proxy::RelayConfig;
///
/// let config = RelayConfig::default().idle_timeout(Some(Duration::from_secs(60)));
/// assert_eq!(config.close_timeout, Duration::from_secs(5));
/// assert_eq!(config.half_close_timeout, Duration::from_secs(1));
/// ```
///
/// With the `serde` feature it reads from a config file; a field left out keeps its default,
/// a deadline that can be off takes `"off"`, and `client_keepalive_inherited` is the
/// server's to set:
///
/// ```toml
/// idle_timeout = "10m"
/// close_timeout = "5s"
/// half_close_timeout = "1s"
/// switch_timeout = "2s"
/// tcp_keepalive = "30s"
/// limits = { max_frame = 16777216, max_message = 67108864 }   # 0: no limit
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Deserialize),
    serde(default, deny_unknown_fields)
)]
#[non_exhaustive]
pub struct RelayConfig {
    /// Close both sides with 1001 after this long without a byte either way (default: none).
    #[cfg_attr(
        feature = "serde",
        serde(deserialize_with = "crate::deserialize::off_or_duration")
    )]
    pub idle_timeout: Option<Duration>,
    /// How long to wait for the peers to answer a close the relay sent, and for the
    /// endpoints to end a connection on which a framing error was seen (default: 5 s).
    #[cfg_attr(
        feature = "serde",
        serde(deserialize_with = "crate::deserialize::positive")
    )]
    pub close_timeout: Duration,
    /// Once one side's connection has ended (EOF, reset, or its close handshake is done),
    /// how long the other side has to finish before both sockets are dropped (default: 1 s).
    #[cfg_attr(
        feature = "serde",
        serde(deserialize_with = "crate::deserialize::positive")
    )]
    pub half_close_timeout: Duration,
    /// How long a live switch waits for the client to reach a message boundary before it
    /// gives up with [`SwitchError::NoBoundary`] (default: 2 s).
    #[cfg_attr(
        feature = "serde",
        serde(deserialize_with = "crate::deserialize::positive")
    )]
    pub switch_timeout: Duration,
    /// The largest frame and message relayed; past them both sides are closed with 1009
    /// (default: 16 MiB a frame, 64 MiB a message).
    pub limits: FrameLimits,
    /// TCP keepalive on both sockets, to find half-open peers: the idle time before the
    /// first probe (default: 30 s; then 3 probes 10 s apart). Not on an upstream that
    /// [`Upstream`](crate::Upstream) dialed at a loopback address: the kernel itself reports
    /// that peer's end.
    #[cfg_attr(
        feature = "serde",
        serde(deserialize_with = "crate::deserialize::off_or_duration")
    )]
    pub tcp_keepalive: Option<Duration>,
    /// The client's socket already has `TCP_NODELAY` and this keepalive, so the relay sets
    /// keepalive on the upstream's socket only (default: false). On Linux an accepted socket
    /// inherits both from its listener: a server that applies
    /// [`RelayConfig::tune_listener`] to its listener saves five system calls per connection.
    #[cfg_attr(feature = "serde", serde(skip))]
    pub client_keepalive_inherited: bool,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            idle_timeout: None,
            close_timeout: Duration::from_secs(5),
            half_close_timeout: Duration::from_secs(1),
            switch_timeout: Duration::from_secs(2),
            limits: FrameLimits::default(),
            tcp_keepalive: Some(Duration::from_secs(30)),
            client_keepalive_inherited: false,
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

    /// Sets the half-close timeout.
    pub fn half_close_timeout(mut self, timeout: Duration) -> Self {
        self.half_close_timeout = timeout;
        self
    }

    /// Sets the switch timeout.
    pub fn switch_timeout(mut self, timeout: Duration) -> Self {
        self.switch_timeout = timeout;
        self
    }

    /// Sets the frame and message limits.
    pub fn limits(mut self, limits: FrameLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Sets TCP keepalive (`None`: off).
    pub fn tcp_keepalive(mut self, idle: Option<Duration>) -> Self {
        self.tcp_keepalive = idle;
        self
    }

    /// Says whether client sockets come with `TCP_NODELAY` and this config's keepalive
    /// already set (see [`RelayConfig::client_keepalive_inherited`]).
    pub fn client_keepalive_inherited(mut self, inherited: bool) -> Self {
        self.client_keepalive_inherited = inherited;
        self
    }

    /// Sets `TCP_NODELAY` and this config's keepalive on a listening socket. On Linux every
    /// socket it accepts inherits both, so a server can then skip those calls per connection
    /// and tell the relay with [`RelayConfig::client_keepalive_inherited`]; it returns
    /// whether that holds here.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_ws_proxy::RelayConfig;
    ///
    /// let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// let config = RelayConfig::default().tcp_keepalive(Some(Duration::from_secs(42)));
    /// let inherited = config.tune_listener(tower_ws_proxy::socket2::SockRef::from(&listener))?;
    /// let config = config.client_keepalive_inherited(inherited);
    ///
    /// let _client = std::net::TcpStream::connect(listener.local_addr()?)?;
    /// let (accepted, _) = listener.accept()?;
    /// if cfg!(target_os = "linux") {
    ///     assert!(config.client_keepalive_inherited);
    ///     assert!(accepted.nodelay()?);
    ///     let accepted = tower_ws_proxy::socket2::SockRef::from(&accepted);
    ///     assert_eq!(accepted.tcp_keepalive_time()?, Duration::from_secs(42));
    /// }
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn tune_listener(&self, listener: socket2::SockRef<'_>) -> std::io::Result<bool> {
        self.tune_socket(listener)?;
        Ok(cfg!(target_os = "linux"))
    }

    /// Sets `TCP_NODELAY` and this config's keepalive on one socket: what
    /// [`RelayConfig::tune_listener`] gives every accepted socket where they are inherited.
    pub fn tune_socket(&self, socket: socket2::SockRef<'_>) -> std::io::Result<()> {
        socket.set_tcp_nodelay(true)?;
        if let Some(idle) = self.tcp_keepalive {
            socket.set_tcp_keepalive(&keepalive_probes(idle))?;
        }
        Ok(())
    }
}

/// TCP keepalive: probes after `idle` without traffic, then 3 more 10 s apart, so a peer
/// that vanished without a FIN or RST is found.
pub(crate) fn keepalive_probes(idle: Duration) -> socket2::TcpKeepalive {
    socket2::TcpKeepalive::new()
        .with_time(idle)
        .with_interval(Duration::from_secs(10))
        .with_retries(3)
}

/// A request to a running relay; a [`RelayHandle`] sends them.
///
/// ```
/// use tower_ws_proxy::RelayCommand;
///
/// let command = RelayCommand::Close { code: 1001, reason: "going away".into() };
/// assert!(matches!(command, RelayCommand::Close { code: 1001, .. }));
/// ```
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
    /// Stop at the next message boundary of each direction, without a close, and hand both
    /// sockets to [`RelayHandle::park`]'s caller.
    Park,
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
    /// The client stayed inside a message for the whole switch timeout, so there was no
    /// boundary to switch at. The relay goes on with the old upstream.
    NoBoundary,
}

/// Why [`RelayHandle::park`] did not park the relay; in every case it goes on relaying (or
/// ends, as it was going to).
///
/// ```
/// use tower_ws_proxy::ParkError;
///
/// assert_eq!(ParkError::NotTransferable.to_string(), "the connection cannot leave this process");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ParkError {
    /// A switch or another park is in progress.
    Busy,
    /// The relay is closing, has ended, or has not started yet.
    Ended,
    /// A side is not a bare TCP socket (TLS, an HTTP/2 stream, a wrapped connection): its
    /// state lives in this process.
    NotTransferable,
    /// A side stayed inside a message for the whole switch timeout.
    NoBoundary,
}

impl fmt::Display for ParkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ParkError::Busy => "another switch or park is in progress",
            ParkError::Ended => "the connection is closing, has ended or has not started",
            ParkError::NotTransferable => "the connection cannot leave this process",
            ParkError::NoBoundary => "a side did not reach a message boundary in time",
        })
    }
}

impl std::error::Error for ParkError {}

/// A relay stopped between messages in both directions, with nothing half-forwarded: its
/// two sockets and the bytes read past the boundaries, everything another relay (in this
/// process or another) needs to go on with no byte lost, repeated or reordered.
///
/// ```
/// use tower_ws_proxy::ParkedRelay;
///
/// fn resumable(parked: &ParkedRelay) -> bool {
///     parked.client_preread.len() < 16 * 1024
/// }
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub struct ParkedRelay {
    /// The client's socket (non-blocking).
    pub client: std::net::TcpStream,
    /// The upstream's socket (non-blocking).
    pub upstream: std::net::TcpStream,
    /// Read from the client past its last message boundary: relayed to the upstream first.
    pub client_preread: bytes::Bytes,
    /// Read from the upstream past its last message boundary: relayed to the client first.
    pub upstream_preread: bytes::Bytes,
    /// How long nothing moved either way (for the idle timeout of the relay that resumes).
    pub idle_for: Duration,
}

/// Who waits for a relay to park.
pub(super) type ParkSender = oneshot::Sender<Result<ParkedRelay, ParkError>>;

impl fmt::Display for SwitchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SwitchError::Busy => "another switch is in progress",
            SwitchError::Ended => "the connection is closing or has ended",
            SwitchError::Interrupted => "the old backend closed in the middle of a message",
            SwitchError::NoBoundary => "the client did not reach a message boundary in time",
        })
    }
}

impl std::error::Error for SwitchError {}

/// An upstream waiting to take over, and who to tell how it went.
#[derive(Debug)]
pub(super) struct PendingSwitch {
    pub(super) upstream: Peer,
    pub(super) done: oneshot::Sender<Result<(), SwitchError>>,
}

/// What a relay and its handles share: the latest command, a waiting switch, and one
/// wakeup for every change. (A `watch` channel and a separate switch slot cost an idle
/// connection about 500 bytes more: the channel keeps eight notifiers.)
#[derive(Debug)]
pub(super) struct Control {
    state: Mutex<ControlState>,
    /// Bumped with every command sent, so a pump sees a new one without taking the lock.
    version: AtomicU64,
    /// Set once the relay's end ([`RelayCommands`]) is gone.
    finished: AtomicBool,
    /// Whether the running relay's sockets could be handed to another process.
    pub(super) transferable: AtomicU8,
    /// Wakes the relay's pumps: a command was sent, or their shared state changed.
    pub(super) changed: Notify,
}

#[derive(Debug)]
pub(super) struct ControlState {
    command: RelayCommand,
    // Boxed: a switch is rare, and its socket would otherwise widen every connection's block.
    pub(super) switch: Option<Box<PendingSwitch>>,
    pub(super) park: Option<ParkSender>,
}

impl Control {
    fn new() -> Self {
        Self {
            state: Mutex::new(ControlState {
                command: RelayCommand::Run,
                switch: None,
                park: None,
            }),
            version: AtomicU64::new(0),
            finished: AtomicBool::new(false),
            transferable: AtomicU8::new(Transferable::NOT_STARTED),
            changed: Notify::new(),
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, ControlState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces the command and wakes the pumps.
    pub(super) fn send(&self, command: RelayCommand) {
        self.modify(|current| {
            *current = command;
            true
        });
    }

    /// Changes the command in place; sends (bumps the version and wakes the pumps) only if
    /// `change` says it changed something.
    pub(super) fn modify(&self, change: impl FnOnce(&mut RelayCommand) -> bool) {
        let _ = self.update(|state| change(&mut state.command).then_some(()).ok_or(()));
    }

    /// Back to [`RelayCommand::Run`] if the command is still `command` (a switch or a park
    /// that ended, or was given up), waking the pumps; nothing if another came meanwhile.
    pub(super) fn back_to_run(&self, command: &RelayCommand) {
        self.modify(|current| {
            let still = current == command;
            if still {
                *current = RelayCommand::Run;
            }
            still
        });
    }

    /// Changes the state under the lock: `Ok` means the command was changed, and it is
    /// sent (the version bumped under the same lock, so versions and commands are seen in
    /// the same order, then the pumps woken); `Err` leaves it unsent.
    fn update<T, E>(&self, change: impl FnOnce(&mut ControlState) -> Result<T, E>) -> Result<T, E> {
        let sent = {
            let mut state = self.lock();
            let sent = change(&mut state)?;
            self.version.fetch_add(1, Ordering::Release);
            sent
        };
        self.changed.notify_waiters();
        Ok(sent)
    }

    /// Whether a command was sent since `seen`.
    pub(super) fn has_changed(&self, seen: u64) -> bool {
        self.version.load(Ordering::Acquire) != seen
    }

    /// The command now, and the version to remember as seen.
    pub(super) fn command(&self) -> (RelayCommand, u64) {
        let state = self.lock();
        (state.command.clone(), self.version.load(Ordering::Acquire))
    }
}

/// Whether a relay's sockets can leave the process: [`Control::transferable`]'s values.
pub(super) struct Transferable;

impl Transferable {
    pub(super) const NOT_STARTED: u8 = 0;
    pub(super) const YES: u8 = 1;
    pub(super) const NO: u8 = 2;
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
    control: Arc<Control>,
}

/// The receiving end of a [`RelayHandle`], given to [`relay`](super::relay).
///
/// ```
/// use tower_ws_proxy::{relay, Peer, RelayConfig, RelayHandle};
///
/// async fn relayed(client: Peer<tokio::net::TcpStream>, upstream: Peer) {
///     let (handle, commands) = RelayHandle::new();
///     let relaying = tokio::spawn(relay(client, upstream, RelayConfig::default(), commands));
///     handle.close(1001, "going away");
///     let _ = relaying.await;
/// }
/// ```
#[derive(Debug)]
pub struct RelayCommands {
    pub(super) control: Arc<Control>,
    /// Where the relay counts what it carries, if anywhere.
    pub(super) traffic: Option<Arc<Traffic>>,
    /// A resumed relay: how long nothing had moved when it was parked.
    pub(super) idle_for: Duration,
}

impl Drop for RelayCommands {
    fn drop(&mut self) {
        self.control.finished.store(true, Ordering::Release);
        // Whoever still waits on this relay hears that it ended.
        let (park, switch) = {
            let mut state = self.control.lock();
            (state.park.take(), state.switch.take())
        };
        if let Some(park) = park {
            let _ = park.send(Err(ParkError::Ended));
        }
        if let Some(switch) = switch {
            let _ = switch.done.send(Err(SwitchError::Ended));
        }
    }
}

impl RelayCommands {
    /// Counts the messages and bytes the relay carries into `traffic` (a registered
    /// connection's, [`Registered::traffic`](crate::Registered::traffic)).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use tower_ws_proxy::{RelayHandle, Traffic};
    ///
    /// let (_handle, commands) = RelayHandle::new();
    /// let _commands = commands.counting(Arc::new(Traffic::default()));
    /// ```
    pub fn counting(mut self, traffic: Arc<Traffic>) -> Self {
        self.traffic = Some(traffic);
        self
    }

    /// For a relay that resumes a [`ParkedRelay`]: its idle timeout counts from the last
    /// byte before the park, not from the resumption.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_ws_proxy::RelayHandle;
    ///
    /// let (_handle, commands) = RelayHandle::new();
    /// let _commands = commands.idle_for(Duration::from_secs(20));
    /// ```
    pub fn idle_for(mut self, idle: Duration) -> Self {
        self.idle_for = idle;
        self
    }
}

#[cfg(test)]
impl RelayCommands {
    /// The command a relay would see now.
    pub(crate) fn current(&self) -> RelayCommand {
        self.control.command().0
    }
}

impl RelayHandle {
    /// A handle and the commands it sends.
    pub fn new() -> (Self, RelayCommands) {
        let control = Arc::new(Control::new());
        (
            Self {
                control: control.clone(),
            },
            RelayCommands {
                control,
                traffic: None,
                idle_for: Duration::ZERO,
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
        // The checks and the switch under one lock, so no close slips in between.
        let done = self.control.update(|state| {
            if state.switch.is_some() || state.park.is_some() {
                return Err(SwitchError::Busy);
            }
            if self.is_finished() || matches!(state.command, RelayCommand::Close { .. }) {
                return Err(SwitchError::Ended);
            }
            let (done, receiver) = oneshot::channel();
            state.switch = Some(Box::new(PendingSwitch { upstream, done }));
            state.command = RelayCommand::Switch;
            Ok(receiver)
        })?;
        done.await.unwrap_or(Err(SwitchError::Ended))
    }

    /// Stops the relay at a message boundary of each direction, without a close to anyone,
    /// and returns its sockets and the bytes read past the boundaries, for another relay
    /// (typically in a new process, `server::handover`) to resume. Only a relay between two
    /// bare TCP sockets can be parked. A direction that stays inside a message for the
    /// switch timeout makes it [`ParkError::NoBoundary`], and the relay goes on.
    pub async fn park(&self) -> Result<ParkedRelay, ParkError> {
        match self.control.transferable.load(Ordering::Acquire) {
            Transferable::YES => {}
            Transferable::NO => return Err(ParkError::NotTransferable),
            _ => return Err(ParkError::Ended),
        }
        let parked = self.control.update(|state| {
            if state.switch.is_some() || state.park.is_some() {
                return Err(ParkError::Busy);
            }
            if self.is_finished() || matches!(state.command, RelayCommand::Close { .. }) {
                return Err(ParkError::Ended);
            }
            let (done, receiver) = oneshot::channel();
            state.park = Some(done);
            state.command = RelayCommand::Park;
            Ok(receiver)
        })?;
        parked.await.unwrap_or(Err(ParkError::Ended))
    }

    /// Whether [`park`](Self::park) can be tried: the relay runs between two bare TCP
    /// sockets.
    pub fn is_transferable(&self) -> bool {
        self.control.transferable.load(Ordering::Acquire) == Transferable::YES
            && !self.is_finished()
    }

    /// Asks the relay to close both sides at their next message boundaries.
    pub fn close(&self, code: u16, reason: impl Into<String>) {
        self.control.send(RelayCommand::Close {
            code,
            reason: reason.into(),
        });
    }

    /// Whether the relay has finished.
    pub fn is_finished(&self) -> bool {
        self.control.finished.load(Ordering::Acquire)
    }
}

/// How a relay ended.
///
/// ```
/// use tower_ws_proxy::{relay, Peer, RelayConfig, RelayHandle};
///
/// async fn relayed(client: Peer<tokio::net::TcpStream>, upstream: Peer) {
///     let (_handle, commands) = RelayHandle::new();
///     let outcome = relay(client, upstream, RelayConfig::default(), commands).await;
///     tracing::debug!(client = ?outcome.client_close, upstream = ?outcome.upstream_close, "closed");
/// }
/// ```
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
    /// The relay was parked and its sockets handed to [`RelayHandle::park`]'s caller: the
    /// connection goes on elsewhere.
    pub parked: bool,
}
