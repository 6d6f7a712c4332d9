//! Active health checks in front of any discovery source.

use std::{collections::HashMap, fmt, net::SocketAddr, time::Duration};

use futures_core::Stream;
use futures_util::StreamExt;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::mpsc,
    task::JoinHandle,
};
use tower::discover::Change;
use tower_hashring::NodeId;

use crate::{changes::ChangeSender, Backend, MemberChanges};

/// How a backend is checked: HTTP `GET path` answered with 2xx, or a TCP connect; with the
/// number of consecutive results that flip it.
///
/// ```
/// use std::time::Duration;
/// use discovery::HealthCheck;
///
/// let check = HealthCheck::http("/health").interval(Duration::from_millis(500)).thresholds(2, 3);
/// assert_eq!(check.to_string(), "GET /health every 500ms (up after 2, down after 3)");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    http_path: Option<String>,
    interval: Duration,
    timeout: Duration,
    up: u32,
    down: u32,
}

impl HealthCheck {
    /// `GET path` over HTTP/1.1; healthy on 2xx.
    pub fn http(path: impl Into<String>) -> Self {
        Self {
            http_path: Some(path.into()),
            ..Self::tcp()
        }
    }

    /// A TCP connect; healthy when it succeeds.
    pub fn tcp() -> Self {
        Self {
            http_path: None,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            up: 2,
            down: 2,
        }
    }

    /// How often each backend is checked (default 1 s).
    pub fn interval(mut self, every: Duration) -> Self {
        self.interval = every.max(Duration::from_millis(10));
        self
    }

    /// How long one check may take (default 1 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Consecutive successes before a backend joins, and failures before it leaves
    /// (default 2 and 2; 0 is read as 1).
    pub fn thresholds(mut self, up: u32, down: u32) -> Self {
        self.up = up.max(1);
        self.down = down.max(1);
        self
    }

    /// Lets the backends of `source` into the ring only while they pass this check.
    pub fn wrap<S, E>(self, source: S) -> MemberChanges
    where
        S: Stream<Item = Result<Change<NodeId, Backend>, E>> + Send + 'static,
        E: fmt::Display + Send + 'static,
    {
        MemberChanges::spawn(|changes| supervise(self, source, changes))
    }

    /// `Some(healthy)`, or `None` when the check could not be made for a reason of our own
    /// (out of descriptors or buffers): that says nothing of the backend, and counting it
    /// as a failure would empty the ring exactly when the gateway is busiest.
    async fn check(&self, address: SocketAddr) -> Option<bool> {
        let attempt = async {
            let mut tcp = TcpStream::connect(address).await?;
            let Some(path) = &self.http_path else {
                return Ok::<_, std::io::Error>(true);
            };
            let request =
                format!("GET {path} HTTP/1.1\r\nhost: {address}\r\nconnection: close\r\n\r\n");
            tcp.write_all(request.as_bytes()).await?;
            let mut status = [0u8; 12];
            tcp.read_exact(&mut status).await?;
            Ok(status.starts_with(b"HTTP/1.") && status[9] == b'2')
        };
        match tokio::time::timeout(self.timeout, attempt).await {
            Ok(Ok(healthy)) => Some(healthy),
            Ok(Err(error)) if is_local_shortage(&error) => None,
            _ => Some(false),
        }
    }
}

impl fmt::Display for HealthCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.http_path {
            Some(path) => write!(f, "GET {path}")?,
            None => f.write_str("TCP connect")?,
        }
        write!(
            f,
            " every {:?} (up after {}, down after {})",
            self.interval, self.up, self.down
        )
    }
}

/// One backend the source knows, and what its checks said.
struct Watched {
    backend: Backend,
    generation: u64,
    in_ring: bool,
    streak: (u32, u32),
    checker: JoinHandle<()>,
}

async fn supervise<S, E>(check: HealthCheck, source: S, changes: ChangeSender)
where
    S: Stream<Item = Result<Change<NodeId, Backend>, E>> + Send + 'static,
    E: fmt::Display,
{
    let mut source = std::pin::pin!(source);
    let (results_tx, mut results) = mpsc::unbounded_channel::<(String, u64, bool)>();
    let mut watched: HashMap<String, Watched> = HashMap::new();
    let mut generation = 0;
    let mut source_open = true;
    loop {
        tokio::select! {
            change = source.next(), if source_open => match change {
                Some(Ok(Change::Insert(id, backend))) => {
                    generation += 1;
                    let checker = spawn_checker(&check, &backend, generation, results_tx.clone());
                    let in_ring = match watched.remove(id.as_str()) {
                        Some(old) => {
                            old.checker.abort();
                            // An updated member already in the ring stays there, updated.
                            if old.in_ring && changes.send(Change::Insert(id.clone(), backend.clone())).is_err() {
                                return;
                            }
                            old.in_ring
                        }
                        None => false,
                    };
                    watched.insert(id.as_str().to_owned(), Watched { backend, generation, in_ring, streak: (0, 0), checker });
                }
                Some(Ok(Change::Remove(id))) => {
                    if let Some(old) = watched.remove(id.as_str()) {
                        old.checker.abort();
                        if old.in_ring && changes.send(Change::Remove(id)).is_err() {
                            return;
                        }
                    }
                }
                Some(Err(error)) => tracing::warn!(%error, "discovery source failed"),
                None => source_open = false,
            },
            Some((id, of_generation, healthy)) = results.recv() => {
                let Some(entry) = watched.get_mut(&id) else { continue };
                if entry.generation != of_generation {
                    continue;
                }
                entry.streak = if healthy { (entry.streak.0 + 1, 0) } else { (0, entry.streak.1 + 1) };
                let change = if !entry.in_ring && entry.streak.0 >= check.up {
                    entry.in_ring = true;
                    tracing::info!(backend = %id, "healthy: joins the ring");
                    Some(Change::Insert(entry.backend.node_id(), entry.backend.clone()))
                } else if entry.in_ring && entry.streak.1 >= check.down {
                    entry.in_ring = false;
                    tracing::warn!(backend = %id, check = %check, "unhealthy: leaves the ring");
                    Some(Change::Remove(entry.backend.node_id()))
                } else {
                    None
                };
                if let Some(change) = change {
                    if changes.send(change).is_err() {
                        return;
                    }
                }
            }
            () = changes.closed() => return,
        }
    }
}

fn spawn_checker(
    check: &HealthCheck,
    backend: &Backend,
    generation: u64,
    results: mpsc::UnboundedSender<(String, u64, bool)>,
) -> JoinHandle<()> {
    let (check, id, address) = (check.clone(), backend.id.clone(), backend.address);
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(check.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let Some(healthy) = check.check(address).await else {
                tracing::warn!(backend = %id, "health check skipped: out of local resources");
                continue;
            };
            if results.send((id.clone(), generation, healthy)).is_err() {
                return;
            }
        }
    })
}

/// Errors that come from this process or host running short, not from the peer.
fn is_local_shortage(error: &std::io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_shortages_are_inconclusive() {
        for code in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
            assert!(is_local_shortage(&std::io::Error::from_raw_os_error(code)));
        }
        for code in [libc::ECONNREFUSED, libc::ETIMEDOUT, libc::EHOSTUNREACH] {
            assert!(!is_local_shortage(&std::io::Error::from_raw_os_error(code)));
        }
    }

    /// A peer that answers is up; one that refuses is down (a verdict, not inconclusive).
    #[tokio::test]
    async fn a_check_gives_a_verdict_on_the_peer() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let check = HealthCheck::tcp();
        assert_eq!(check.check(address).await, Some(true));
        drop(listener);
        assert_eq!(
            check.check(address).await,
            Some(false),
            "refused is a failure"
        );
    }
}
