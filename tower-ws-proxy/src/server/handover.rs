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
    io::{IoSlice, IoSliceMut},
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
    time::Duration,
};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Interest},
    net::{UnixListener, UnixStream},
};

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

/// The new process has taken the listeners and accepts on them: stop accepting.
#[derive(Debug)]
pub struct Taken {
    /// The new process's pid, from its socket credentials.
    pub pid: u32,
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
        let offered = tokio::time::timeout(self.deadline, self.offer_once(listeners)).await;
        let _ = std::fs::remove_file(&self.path);
        self.running.store(false, Ordering::Release);
        offered.unwrap_or(Err(HandoverError::TimedOut(self.deadline)))
    }

    async fn offer_once(
        &self,
        listeners: &[(&str, BorrowedFd<'_>)],
    ) -> Result<Taken, HandoverError> {
        if listeners.len() > MAX_LISTENERS || listeners.iter().any(|(name, _)| !valid(name)) {
            return Err(HandoverError::Protocol(
                "listener names must be words".into(),
            ));
        }
        let _ = std::fs::remove_file(&self.path);
        let socket = UnixListener::bind(&self.path)?;
        std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(0o600))?;
        let (stream, _) = socket.accept().await?;
        let peer = rustix::net::sockopt::socket_peercred(&stream).map_err(std::io::Error::from)?;
        if peer.uid != rustix::process::getuid() {
            return Err(HandoverError::OtherUser(peer.uid.as_raw()));
        }
        let names: Vec<&str> = listeners.iter().map(|(name, _)| *name).collect();
        let line = format!("{GREETING} {}\n", names.join(" "));
        let fds: Vec<BorrowedFd<'_>> = listeners.iter().map(|(_, fd)| *fd).collect();
        send_with_fds(&stream, line.as_bytes(), &fds).await?;
        let mut answer = String::new();
        BufReader::new(stream).read_line(&mut answer).await?;
        if answer.trim_end() != SERVING {
            return Err(HandoverError::Protocol(format!(
                "the new process answered {answer:?} instead of serving"
            )));
        }
        Ok(Taken {
            pid: peer.pid.as_raw_nonzero().get() as u32,
        })
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

    /// Tells the old process that this one accepts on the listeners.
    pub async fn serving(mut self) -> Result<(), HandoverError> {
        self.stream
            .write_all(format!("{SERVING}\n").as_bytes())
            .await?;
        Ok(())
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

/// One message: `bytes` with `fds` attached.
async fn send_with_fds(
    stream: &UnixStream,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
) -> std::io::Result<()> {
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_LISTENERS))];
    loop {
        stream.writable().await?;
        let sent = stream.try_io(Interest::WRITABLE, || {
            let mut control = SendAncillaryBuffer::new(&mut space);
            if !fds.is_empty() {
                control.push(SendAncillaryMessage::ScmRights(fds));
            }
            let iov = [IoSlice::new(bytes)];
            rustix::net::sendmsg(stream.as_fd(), &iov, &mut control, SendFlags::NOSIGNAL)
                .map_err(std::io::Error::from)
        });
        match sent {
            Ok(n) if n == bytes.len() => return Ok(()),
            Ok(n) => {
                return Err(std::io::Error::other(format!(
                    "sent {n} of {} bytes",
                    bytes.len()
                )))
            }
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(error) => return Err(error),
        }
    }
}

/// One message's line and the descriptors attached to it (close-on-exec).
async fn receive_with_fds(stream: &UnixStream) -> Result<(String, Vec<OwnedFd>), HandoverError> {
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_LISTENERS))];
    let mut bytes = vec![0u8; 4096];
    loop {
        stream.readable().await?;
        let received = stream.try_io(Interest::READABLE, || {
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let mut iov = [IoSliceMut::new(&mut bytes)];
            let message = rustix::net::recvmsg(
                stream.as_fd(),
                &mut iov,
                &mut control,
                RecvFlags::CMSG_CLOEXEC,
            )
            .map_err(std::io::Error::from)?;
            let fds: Vec<OwnedFd> = control
                .drain()
                .flat_map(|message| match message {
                    RecvAncillaryMessage::ScmRights(fds) => fds.collect(),
                    _ => Vec::new(),
                })
                .collect();
            Ok((message.bytes, fds))
        });
        match received {
            Ok((0, _)) => return Err(HandoverError::Protocol("the offer closed".into())),
            Ok((n, fds)) => {
                let line = String::from_utf8_lossy(&bytes[..n]);
                let line = line
                    .strip_suffix('\n')
                    .ok_or_else(|| HandoverError::Protocol("the offer's line is cut".into()))?;
                return Ok((line.to_owned(), fds));
            }
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(error) => return Err(error.into()),
        }
    }
}
