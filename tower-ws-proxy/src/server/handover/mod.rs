//! Handing the listening sockets to a new process, for an upgrade without a refused
//! connection: the running process offers its listeners on a Unix socket, the new process
//! takes them (`SCM_RIGHTS`: the same sockets, the same accept queues), starts accepting,
//! and says so; only then does the old one stop accepting. Until the new process says it
//! serves, the old one has lost nothing: it only lent copies of its descriptors.
//!
//! The offering side is exclusive (a second offer while one runs is refused) and bounded by a
//! deadline; the socket is created with mode 0600 and a peer of another user is refused by
//! its credentials (`SO_PEERCRED`) as well.
//!
//! ```no_run
//! # async fn f(public: std::net::TcpListener) -> Result<(), tower_ws_proxy::server::handover::HandoverError> {
//! use std::os::fd::AsFd;
//! use tower_ws_proxy::server::handover::{take_listeners, Handover};
//!
//! // The running process, on SIGUSR2 (after starting the new binary):
//! let handover = Handover::new("/run/wscluster/handover.sock");
//! let taken = handover.offer(&[("public", public.as_fd())]).await?;
//! // … the new process serves: stop accepting here.
//! # drop(taken);
//!
//! // The new process, at start:
//! let mut inherited = take_listeners("/run/wscluster/handover.sock").await?;
//! let public = inherited.listener("public").expect("offered");
//! // … accept on `public`, then:
//! inherited.serving().await?;
//! # drop(public); Ok(()) }
//! ```

use std::{
    future::Future,
    io::IoSlice,
    mem::MaybeUninit,
    os::{
        fd::{AsFd, BorrowedFd, OwnedFd},
        unix::fs::PermissionsExt,
    },
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    task::Poll,
    time::Duration,
};

use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt, Interest},
    net::{UnixListener, UnixStream},
};

mod connections;
mod listeners;
mod transfer;

pub use self::{
    connections::{Arrivals, MAX_BATCH},
    listeners::NamedListeners,
    transfer::{hand_over, receive, Handed, Received, TransferOptions},
};

/// Set in the new process's environment by [`Upgrader`]: where the old one offers its
/// listeners.
pub const HANDOVER_ENV: &str = "WSCLUSTER_HANDOVER";
/// How long an [`Upgrader`]'s new process has to start and serve.
const UPGRADE_DEADLINE: Duration = Duration::from_secs(30);

/// What the first line of an offer starts with (and its version).
const GREETING: &str = "wscluster-handover 1";
/// What the new process answers once it accepts on the listeners.
const SERVING: &str = "serving";
/// The most listeners one offer carries (the public listener's workers, admin, metrics).
pub const MAX_LISTENERS: usize = 64;

/// Why a handover did not happen; the offering process keeps serving in every case.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandoverError {
    /// An offer is already running in this process.
    #[error("an upgrade is already in progress: wait for it to end")]
    InProgress,
    /// No new process took the listeners, or it did not say it serves, in time.
    #[error("no new process took over within {0:?}")]
    TimedOut(Duration),
    /// The other process did not take its next step (a batch, its answer, the go) in time.
    #[error("the other process did not answer within {0:?}")]
    Silent(Duration),
    /// The process that connected is another user's.
    #[error("refused a handover peer of user {0}: only this process's user may take over")]
    OtherUser(u32),
    /// The other side went away or broke the protocol.
    #[error("the handover broke off: {0}")]
    Protocol(String),
    /// A socket operation failed.
    #[error("handover socket: {0}")]
    Io(#[from] std::io::Error),
}

/// The offering side: lends this process's listeners to the one new process that connects
/// to `path`.
#[derive(Clone, Debug)]
pub struct Handover {
    path: PathBuf,
    deadline: Duration,
    running: Arc<AtomicBool>,
}

/// The new process has taken the listeners and accepts on them: stop accepting, and hand
/// it the live connections ([`hand_over`]). Until this is dropped, another offer is
/// refused.
#[derive(Debug)]
pub struct Taken {
    /// The new process's pid, from its socket credentials.
    pub pid: u32,
    pub(crate) stream: UnixStream,
    _running: Running,
}

/// Marks an offer as running until dropped.
#[derive(Debug)]
struct Running(Arc<AtomicBool>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl Handover {
    /// Offers on a Unix socket at `path` (replaced if a stale one is there), waiting at most
    /// 30 s for the new process.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            deadline: Duration::from_secs(30),
            running: Arc::default(),
        }
    }

    /// How long an offer waits for the new process to take the listeners and serve.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// Where the new process connects.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Lends `listeners` (a name each, without spaces) to the process that connects, and
    /// returns once it says it accepts on them. Refused while another offer runs.
    pub async fn offer(
        &self,
        listeners: &[(&str, BorrowedFd<'_>)],
    ) -> Result<Taken, HandoverError> {
        if self.running.swap(true, Ordering::AcqRel) {
            return Err(HandoverError::InProgress);
        }
        let running = Running(self.running.clone());
        let offered = tokio::time::timeout(self.deadline, self.offer_once(listeners)).await;
        let _ = std::fs::remove_file(&self.path);
        let (pid, stream) = offered.unwrap_or(Err(HandoverError::TimedOut(self.deadline)))?;
        Ok(Taken {
            pid,
            stream,
            _running: running,
        })
    }

    async fn offer_once(
        &self,
        listeners: &[(&str, BorrowedFd<'_>)],
    ) -> Result<(u32, UnixStream), HandoverError> {
        if listeners.len() > MAX_LISTENERS || listeners.iter().any(|(name, _)| !valid(name)) {
            return Err(HandoverError::Protocol(
                "listener names must be words".into(),
            ));
        }
        let _ = std::fs::remove_file(&self.path);
        let socket = UnixListener::bind(&self.path)?;
        std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(0o600))?;
        let (mut stream, _) = socket.accept().await?;
        let peer = rustix::net::sockopt::socket_peercred(&stream).map_err(std::io::Error::from)?;
        if peer.uid != rustix::process::getuid() {
            return Err(HandoverError::OtherUser(peer.uid.as_raw()));
        }
        let names: Vec<&str> = listeners.iter().map(|(name, _)| *name).collect();
        let line = format!("{GREETING} {}\n", names.join(" "));
        let fds: Vec<BorrowedFd<'_>> = listeners.iter().map(|(_, fd)| *fd).collect();
        send_with_fds(&stream, line.as_bytes(), &fds).await?;
        // Read byte by byte: what follows the line is the connections' protocol.
        let mut answer = Vec::new();
        while answer.last() != Some(&b'\n') && answer.len() <= SERVING.len() {
            let mut byte = [0u8; 1];
            if stream.read(&mut byte).await? == 0 {
                break;
            }
            answer.push(byte[0]);
        }
        if answer.strip_suffix(b"\n") != Some(SERVING.as_bytes()) {
            return Err(HandoverError::Protocol(format!(
                "the new process answered {:?} instead of serving",
                String::from_utf8_lossy(&answer)
            )));
        }
        Ok((peer.pid.as_raw_nonzero().get() as u32, stream))
    }
}

/// The listeners a new process took, by name; [`serving`](Self::serving) tells the old
/// process to stop accepting.
#[derive(Debug)]
pub struct Inherited {
    listeners: Vec<(String, OwnedFd)>,
    stream: UnixStream,
}

impl Inherited {
    /// The listener offered as `name` (once).
    pub fn listener(&mut self, name: &str) -> Option<std::net::TcpListener> {
        let at = self.listeners.iter().position(|(n, _)| n == name)?;
        let (_, fd) = self.listeners.swap_remove(at);
        let listener = std::net::TcpListener::from(fd);
        // tokio's listeners need it; the offering process set it on its own socket already.
        listener.set_nonblocking(true).ok()?;
        Some(listener)
    }

    /// The names of the listeners not taken yet.
    pub fn names(&self) -> Vec<&str> {
        self.listeners
            .iter()
            .map(|(name, _)| name.as_str())
            .collect()
    }

    /// Tells the old process that this one accepts on the listeners; its live connections
    /// come next.
    pub async fn serving(mut self) -> Result<Arrivals, HandoverError> {
        self.stream
            .write_all(format!("{SERVING}\n").as_bytes())
            .await?;
        Ok(Arrivals {
            stream: self.stream,
            incoming: connections::Incoming::default(),
        })
    }
}

/// In the new process: takes the listeners the running process offers at `path`.
pub async fn take_listeners(path: impl AsRef<Path>) -> Result<Inherited, HandoverError> {
    let stream = UnixStream::connect(path).await?;
    let (line, fds) = receive_with_fds(&stream).await?;
    let names = line
        .strip_prefix(GREETING)
        .ok_or_else(|| HandoverError::Protocol(format!("not a handover: {line:?}")))?;
    let names: Vec<String> = names.split_whitespace().map(str::to_owned).collect();
    if names.len() != fds.len() {
        return Err(HandoverError::Protocol(format!(
            "{} names for {} sockets",
            names.len(),
            fds.len()
        )));
    }
    Ok(Inherited {
        listeners: names.into_iter().zip(fds).collect(),
        stream,
    })
}

fn valid(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_graphic())
}

/// One message: `bytes`, with `fds` attached to its first part.
async fn send_with_fds(
    stream: &UnixStream,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
) -> std::io::Result<()> {
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(253))];
    let mut sent = 0;
    while sent < bytes.len() {
        stream.writable().await?;
        let attach = if sent == 0 { fds } else { &[] };
        let result = stream.try_io(Interest::WRITABLE, || {
            let mut control = SendAncillaryBuffer::new(&mut space);
            if !attach.is_empty() && !control.push(SendAncillaryMessage::ScmRights(attach)) {
                return Err(std::io::Error::other("too many sockets for one message"));
            }
            let iov = [IoSlice::new(&bytes[sent..])];
            rustix::net::sendmsg(stream.as_fd(), &iov, &mut control, SendFlags::NOSIGNAL)
                .map_err(std::io::Error::from)
        });
        match result {
            Ok(n) => sent += n,
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// The offer's line and the descriptors attached to it (close-on-exec).
async fn receive_with_fds(stream: &UnixStream) -> Result<(String, Vec<OwnedFd>), HandoverError> {
    let mut incoming = connections::Incoming::default();
    loop {
        if let Some((line, fds)) = incoming.take_line() {
            return Ok((line, fds));
        }
        if incoming.fill(stream).await? == 0 {
            return Err(HandoverError::Protocol("the offer closed".into()));
        }
    }
}

/// Waits for SIGUSR2 and upgrades on each; returns once a new process took the listeners
/// over. A signal during an upgrade is refused (logged); a failed upgrade is logged and the
/// next signal tries again.
pub async fn upgraded_on_signal(upgrader: Upgrader) -> Taken {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut signals) = signal(SignalKind::user_defined2()) else {
        tracing::warn!("no SIGUSR2 handler: no in-place upgrade");
        return std::future::pending().await;
    };
    let (done, mut finished) = tokio::sync::mpsc::unbounded_channel();
    loop {
        tokio::select! {
            Some(()) = signals.recv() => {
                tracing::info!("SIGUSR2: upgrading");
                let (upgrader, done) = (upgrader.clone(), done.clone());
                tokio::spawn(async move { let _ = done.send(upgrader.upgrade().await); });
            }
            Some(result) = finished.recv() => match result {
                Ok(taken) => return taken,
                Err(error) => tracing::error!(%error, "upgrade refused or failed: still serving"),
            },
        }
    }
}

/// Starts the binary at this process's executable path with the same arguments (as nginx
/// does on SIGUSR2: replacing the file first is how a new version is rolled out), with
/// [`HANDOVER_ENV`] naming the offer, and lends it `listeners` (named, for
/// [`take_listeners`] there).
///
/// ```no_run
/// # async fn f(public: std::net::TcpListener) -> std::io::Result<()> {
/// use tower_ws_proxy::server::handover::{upgraded_on_signal, Upgrader};
///
/// let upgrader = Upgrader::new(vec![("public".into(), public.try_clone()?.into())]);
/// let taken = upgraded_on_signal(upgrader).await; // SIGUSR2, and the new process serves
/// // … stop accepting and drain.
/// # let _ = taken.pid; Ok(()) }
/// ```
#[derive(Debug)]
pub struct Upgrader {
    handover: Handover,
    listeners: Arc<Vec<(String, OwnedFd)>>,
    /// Read at start: once the file is replaced, this process's own link to it names the
    /// deleted file.
    exe: std::io::Result<PathBuf>,
}

impl Clone for Upgrader {
    fn clone(&self) -> Self {
        Self {
            handover: self.handover.clone(),
            listeners: self.listeners.clone(),
            exe: match &self.exe {
                Ok(exe) => Ok(exe.clone()),
                Err(error) => Err(std::io::Error::new(error.kind(), error.to_string())),
            },
        }
    }
}

impl Upgrader {
    /// Lends copies of `listeners`, offered at a socket in the temporary directory named by
    /// this process's id.
    pub fn new(listeners: Vec<(String, OwnedFd)>) -> Self {
        let path =
            std::env::temp_dir().join(format!("wscluster-handover-{}.sock", std::process::id()));
        Self {
            handover: Handover::new(path).deadline(UPGRADE_DEADLINE),
            listeners: Arc::new(listeners),
            exe: std::env::current_exe(),
        }
    }

    /// Starts this executable again with the same arguments and hands it the listeners;
    /// returns its pid once it serves. Refused while an upgrade runs; on failure the new
    /// process is killed and this one goes on serving.
    pub async fn upgrade(&self) -> Result<Taken, HandoverError> {
        let exe = match &self.exe {
            Ok(exe) => exe.clone(),
            Err(error) => return Err(std::io::Error::new(error.kind(), error.to_string()).into()),
        };
        let named: Vec<(&str, _)> = self
            .listeners
            .iter()
            .map(|(name, fd)| (name.as_str(), fd.as_fd()))
            .collect();
        let offer = self.handover.offer(&named);
        tokio::pin!(offer);
        // The offer first, so a second upgrade is refused before anything starts.
        let first = std::future::poll_fn(|cx| Poll::Ready(Future::poll(offer.as_mut(), cx))).await;
        if let Poll::Ready(result) = first {
            return result;
        }
        let mut child = tokio::process::Command::new(&exe)
            .args(std::env::args_os().skip(1))
            .env(HANDOVER_ENV, self.handover.path())
            .spawn()?;
        tracing::info!(exe = %exe.display(), pid = child.id(), "upgrade: started the new process");
        let taken = tokio::select! {
            taken = &mut offer => taken,
            exited = child.wait() => Err(HandoverError::Protocol(format!(
                "the new process exited before it served: {}",
                exited.map_or_else(|e| e.to_string(), |status| status.to_string())
            ))),
        };
        match taken {
            Ok(taken) => Ok(taken),
            Err(error) => {
                let _ = child.start_kill();
                Err(error)
            }
        }
    }
}
