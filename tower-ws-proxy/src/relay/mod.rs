//! The frame-aware relay between an upgraded client connection and its upstream.
//!
//! - `handle`: how a running relay is controlled (close, switch) and how it ended;
//! - `direction`: one direction's frame bookkeeping (where a close or a handover goes in);
//! - `pump`: the read-and-forward loop of one direction.

mod client;
mod direction;
mod handle;
mod pump;
mod upstream_stream;

pub use self::{client::ClientStream, upstream_stream::UpstreamStream};

pub use self::handle::{
    ParkError, ParkedRelay, RelayCommand, RelayCommands, RelayConfig, RelayHandle, RelayOutcome,
    SwitchError,
};

use std::{
    borrow::Borrow,
    convert::Infallible,
    future::Future,
    sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering},
    time::Duration,
};

use bytes::Bytes;
use tokio::time::Instant;

use self::handle::{keepalive_probes, Control, Transferable};

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
    /// Parked at a message boundary: the bytes read past it, for whoever resumes.
    parked: Option<Vec<u8>>,
}

/// Activity of the whole relay, across upstream switches.
struct Activity {
    start: Instant,
    /// Milliseconds since `start` of the last byte read either way.
    last: AtomicU64,
}

impl Activity {
    /// A relay last active `idle_for` ago (a resumed one was, before it was parked).
    fn since(idle_for: Duration) -> Self {
        let now = Instant::now();
        Self {
            start: now.checked_sub(idle_for).unwrap_or(now),
            last: AtomicU64::new(0),
        }
    }
}

/// Shared by both directions while they relay to one upstream.
struct Shared<'a> {
    config: &'a RelayConfig,
    activity: &'a Activity,
    commands: &'a RelayCommands,
    /// Close frames seen, one per direction at most; at 2 the close handshake is complete.
    closes: AtomicU8,
    /// Directions parked; at 2 the relay is handed off.
    parked: AtomicU8,
    /// Set when the other direction must stop too (the close handshake completed, a
    /// destination failed, or a switch failed).
    stopped: AtomicBool,
    /// Set once either direction saw a framing error: bytes pass through untracked.
    opaque: AtomicBool,
    /// Milliseconds after `activity.start` by which both directions must have ended
    /// (`u64::MAX`: no such deadline yet).
    end_by: AtomicU64,
}

impl Shared<'_> {
    /// Wakes the directions after `stopped`, `opaque` or `end_by` changed (through the
    /// commands' wakeup: one per connection serves both).
    fn wake(&self) {
        self.commands.control.changed.notify_waiters();
    }

    fn touch(&self) {
        let now = self.activity.start.elapsed().as_millis() as u64;
        self.activity.last.store(now, Ordering::Relaxed);
    }

    fn stop_both(&self) {
        self.stopped.store(true, Ordering::Release);
        self.wake();
    }

    /// Both directions end within `limit` from now, whatever the peers do.
    fn end_within(&self, limit: Duration) {
        let at = (self.activity.start.elapsed() + limit).as_millis() as u64;
        if self.end_by.fetch_min(at, Ordering::AcqRel) > at {
            self.wake();
        }
    }

    fn end_by(&self) -> Option<Instant> {
        match self.end_by.load(Ordering::Acquire) {
            u64::MAX => None,
            ms => Some(self.activity.start + Duration::from_millis(ms)),
        }
    }

    /// A framing error: from now on bytes pass through as they are, and the endpoints have
    /// the close timeout to end the connection.
    fn go_opaque(&self) {
        self.opaque.store(true, Ordering::Release);
        self.end_within(self.config.close_timeout);
        self.wake();
    }

    fn is_opaque(&self) -> bool {
        self.opaque.load(Ordering::Acquire)
    }
}

/// One side of a relayed connection: its stream and any bytes already read from it (for
/// example frames that arrived together with the HTTP upgrade). An upstream (the default
/// type) is an [`UpstreamStream`]: a TCP socket, or TLS over one; a client is a TCP socket
/// on the fast path, or any upgraded hyper connection ([`ClientStream`]).
///
/// ```no_run
/// # async fn f() -> std::io::Result<()> {
/// use tower_ws_proxy::Peer;
///
/// let stream = tokio::net::TcpStream::connect("127.0.0.1:7100").await?;
/// let client = Peer::new(stream);
/// let upstream: Peer = Peer::new(tokio::net::TcpStream::connect("127.0.0.1:7101").await?.into());
/// # let _ = (client, upstream); Ok(()) }
/// ```
#[derive(Debug)]
pub struct Peer<S = UpstreamStream> {
    stream: S,
    preread: Bytes,
    /// Dialed at a loopback address: the same kernel holds both ends and reports the
    /// other's end, so TCP keepalive would have nothing to find.
    same_host: bool,
}

impl Peer {
    /// This peer with its socket registered on the current runtime's I/O driver. A socket
    /// dialed on another runtime (a migrator's) would otherwise be driven by that runtime:
    /// every read would wake the relay from another thread, and the socket would stop
    /// working if that runtime shut down. Two system calls (deregister, register).
    fn on_this_runtime(self) -> std::io::Result<Peer> {
        Ok(Peer {
            stream: self.stream.on_this_runtime()?,
            preread: self.preread,
            same_host: self.same_host,
        })
    }
}

impl<S> Peer<S> {
    /// A peer with nothing read yet.
    pub fn new(stream: S) -> Self {
        Self::with_preread(stream, Bytes::new())
    }

    /// A peer whose first bytes were already read (they are relayed first).
    pub fn with_preread(stream: S, preread: Bytes) -> Self {
        Self {
            stream,
            preread,
            same_host: false,
        }
    }
}

/// The close sent to an old upstream when its client moves to another backend.
const MOVED_CODE: u16 = crate::close_code::GOING_AWAY;
const MOVED_REASON: &str = "moved to another backend";

/// Relays an upgraded WebSocket connection until both sides have closed.
///
/// Bytes pass through unchanged; [`FrameTracker`](crate::frame::FrameTracker)s follow each direction so that a close
/// requested through the [`RelayHandle`] (or by the idle timeout) is injected only between
/// messages. After injecting a close toward one side, the relay drops whatever the other
/// side still sends that way up to its own close, so neither side sees a second close.
/// A framing error makes the relay transparent: the bytes pass through untouched so the
/// endpoint that owns the protocol answers it (with a 1002 close, typically), and both
/// connections are dropped if they have not ended within the close timeout. A frame or
/// message past the configured limits closes both sides with 1009. Once one side's
/// connection ends, the other has the half-close timeout to finish.
///
/// [`RelayHandle::switch_to`] moves the client to another upstream without a close: the
/// relay then runs again on the new pair.
///
/// The relay waits for socket readiness and reads into a per-thread buffer that it writes
/// out before waiting again, so an idle connection holds no buffer at all; bytes are copied
/// to the heap only while the destination cannot take them.
pub fn relay<C: ClientStream>(
    client: Peer<C>,
    upstream: Peer,
    config: RelayConfig,
    commands: RelayCommands,
) -> impl Future<Output = RelayOutcome> + Send {
    relay_sharing_config(client, upstream, config, commands)
}

/// [`relay`], with a config that many relays may share (an `Arc` of the proxy's): a pointer
/// in each instead of a copy.
// Not an `async fn`: it would keep its arguments twice.
#[allow(clippy::manual_async_fn)]
pub(crate) fn relay_sharing_config<C: ClientStream, K: Borrow<RelayConfig> + Send + Sync>(
    mut client: Peer<C>,
    mut upstream: Peer,
    config: K,
    commands: RelayCommands,
) -> impl Future<Output = RelayOutcome> + Send {
    // An `async` block rather than an `async fn`: an `async fn` keeps its arguments twice
    // (as passed in, and moved into its body), and every idle connection would pay for it.
    async move {
        let activity = Activity::since(commands.idle_for);
        let config = config.borrow();
        loop {
            // The peers stay here and the futures below borrow them, and both futures are
            // made inside `select!`: whatever a future is handed by value, or is held in a
            // local before being moved, keeps its space in this one, and every idle
            // connection pays for it.
            let outcome = tokio::select! {
                outcome = phases(&mut client, &mut upstream, config, &commands, &activity) => outcome,
                never = idle_watch(config.idle_timeout, &activity, &commands.control) => match never {},
            };
            if !outcome.parked {
                return outcome;
            }
            // Boxed: the rare hand-off does not widen every relay's future.
            match Box::pin(hand_off(client, upstream, &commands, &activity)).await {
                None => return outcome,
                // Nobody waits for the park any more: relay on.
                Some((again_client, again_upstream)) => {
                    (client, upstream) = (again_client, again_upstream)
                }
            }
        }
    }
}

/// Gives a parked relay's sockets to [`RelayHandle::park`]'s caller; returns them if the
/// caller is gone.
async fn hand_off<C: ClientStream>(
    client: Peer<C>,
    upstream: Peer,
    commands: &RelayCommands,
    activity: &Activity,
) -> Option<(Peer<C>, Peer)> {
    let waiting = commands.control.lock().park.take();
    let Some(waiting) = waiting.filter(|waiting| !waiting.is_closed()) else {
        commands.control.back_to_run(&RelayCommand::Park);
        return Some((client, upstream));
    };
    let since_start = activity.start.elapsed().as_millis() as u64;
    let idle_ms = since_start.saturating_sub(activity.last.load(Ordering::Relaxed));
    let parked = match (client.stream.into_socket(), upstream.stream) {
        (Some(Ok(client_socket)), UpstreamStream::Tcp(upstream_socket)) => upstream_socket
            .into_std()
            .map(|upstream_socket| ParkedRelay {
                client: client_socket,
                upstream: upstream_socket,
                client_preread: client.preread,
                upstream_preread: upstream.preread,
                idle_for: Duration::from_millis(idle_ms),
            }),
        // Checked before the park was accepted; only a failing `into_std` gets here.
        (Some(Err(error)), _) => Err(error),
        _ => Err(std::io::Error::other("a side is not a bare TCP socket")),
    };
    match parked {
        Ok(parked) => {
            let _ = waiting.send(Ok(parked));
        }
        Err(error) => {
            tracing::warn!(%error, "a parked connection's sockets were lost");
            let _ = waiting.send(Err(ParkError::Ended));
        }
    }
    None
}

/// Relays to one upstream after another (a switch hands the client over) until the end.
// Not an `async fn`: it would keep its arguments twice (see `relay_sharing_config`).
#[allow(clippy::manual_async_fn)]
fn phases<'a, C: ClientStream>(
    client: &'a mut Peer<C>,
    upstream: &'a mut Peer,
    config: &'a RelayConfig,
    commands: &'a RelayCommands,
    activity: &'a Activity,
) -> impl Future<Output = RelayOutcome> + 'a {
    async move {
        if let (Some(idle), Some(socket), false) = (
            config.tcp_keepalive,
            client.stream.socket(),
            config.client_keepalive_inherited,
        ) {
            keepalive(socket, idle);
        }
        let mut outcome = RelayOutcome {
            client_close: None,
            upstream_close: None,
            relay_close: None,
            client_bytes: 0,
            upstream_bytes: 0,
            switches: 0,
            parked: false,
        };
        loop {
            let (up, down) = relay_to(client, upstream, config, commands, activity).await;
            outcome.client_bytes += up.bytes;
            outcome.upstream_bytes += down.bytes;
            if let (Some(to_upstream), Some(to_client)) = (up.parked, down.parked) {
                client.preread = to_upstream.into();
                upstream.preread = to_client.into();
                outcome.parked = true;
                return outcome;
            }
            let pending = commands.control.lock().switch.take();
            match (up.handover, down.handed_over, pending) {
                (Some(leftover), true, Some(next)) => {
                    client.preread = leftover.into();
                    *upstream = match next.upstream.on_this_runtime() {
                        Ok(peer) => peer,
                        Err(error) => {
                            // Only when the dialing runtime is gone mid-switch: the new socket
                            // went with it, and the old upstream is closed.
                            tracing::warn!(%error, "the switched-to socket was lost");
                            let _ = next.done.send(Err(SwitchError::Ended));
                            return outcome;
                        }
                    };
                    outcome.switches += 1;
                    commands.control.back_to_run(&RelayCommand::Switch);
                    let _ = next.done.send(Ok(()));
                }
                (_, _, pending) => {
                    if let Some(pending) = pending {
                        let error = if down.injected == Some(crate::close_code::SERVICE_RESTART) {
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
    }
}

/// Relays between the client and one upstream until both have closed, or until a switch
/// handed the client over (then the caller drops the upstream). Each side's bytes read
/// ahead are relayed first.
fn relay_to<'a, C: ClientStream>(
    client: &'a mut Peer<C>,
    upstream: &'a mut Peer,
    config: &'a RelayConfig,
    commands: &'a RelayCommands,
    activity: &'a Activity,
) -> impl Future<Output = (DirectionEnd, DirectionEnd)> + 'a {
    if let Some(idle) = config.tcp_keepalive.filter(|_| !upstream.same_host) {
        keepalive(upstream.stream.socket(), idle);
    }
    let transferable = C::TRANSFERABLE && matches!(upstream.stream, UpstreamStream::Tcp(_));
    commands.control.transferable.store(
        if transferable {
            Transferable::YES
        } else {
            Transferable::NO
        },
        Ordering::Release,
    );
    async move {
        let shared = Shared {
            config,
            activity,
            commands,
            closes: AtomicU8::new(0),
            parked: AtomicU8::new(0),
            stopped: AtomicBool::new(false),
            opaque: AtomicBool::new(false),
            end_by: AtomicU64::new(u64::MAX),
        };
        let (client_read, client_write) = client.stream.halves();
        let (upstream_read, upstream_write) = upstream.stream.halves();
        tokio::join!(
            pump::pump(
                client_read,
                upstream_write,
                &mut client.preread,
                Toward::Upstream,
                &shared,
            ),
            pump::pump(
                upstream_read,
                client_write,
                &mut upstream.preread,
                Toward::Client,
                &shared,
            ),
        )
    }
}

/// Requests a 1001 close once nothing has moved for the idle timeout; never completes.
// Not an `async fn`: it would keep its arguments twice (see `relay_sharing_config`).
#[allow(clippy::manual_async_fn)]
fn idle_watch<'a>(
    idle_timeout: Option<Duration>,
    activity: &'a Activity,
    commands: &'a Control,
) -> impl Future<Output = Infallible> + 'a {
    async move {
        if let Some(idle) = idle_timeout {
            // Boxed: without an idle timeout a relay keeps no room for a timer here.
            let mut timer = Box::pin(tokio::time::sleep(idle));
            loop {
                let last =
                    activity.start + Duration::from_millis(activity.last.load(Ordering::Relaxed));
                if Instant::now() >= last + idle {
                    commands.send(RelayCommand::Close {
                        code: crate::close_code::GOING_AWAY,
                        reason: "idle timeout".into(),
                    });
                    break;
                }
                timer.as_mut().reset(last + idle);
                timer.as_mut().await;
            }
        }
        std::future::pending().await
    }
}

/// Sets [`keepalive_probes`] on a socket.
fn keepalive(socket: socket2::SockRef<'_>, idle: Duration) {
    if let Err(error) = socket.set_tcp_keepalive(&keepalive_probes(idle)) {
        tracing::debug!(%error, "cannot set TCP keepalive");
    }
}
