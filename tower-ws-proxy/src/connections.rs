//! The live, proxied WebSocket connections: counted per backend, capped, and closed on shutdown.

use std::{
    collections::HashMap,
    fmt,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tower_hashring::NodeId;

use crate::RelayHandle;

/// Why a new connection was turned away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The connection cap is reached.
    AtCapacity,
    /// The gateway is shutting down.
    ShuttingDown,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refusal::AtCapacity => "the gateway is at its websocket connection limit",
            Refusal::ShuttingDown => "the gateway is shutting down",
        })
    }
}

/// The live WebSocket connections of a proxy; cheap to clone.
///
/// ```
/// use tower_ws_proxy::LiveConnections;
///
/// let live = LiveConnections::new(10_000);
/// assert_eq!(live.len(), 0);
/// ```
#[derive(Clone)]
pub struct LiveConnections {
    inner: Arc<Inner>,
}

struct Inner {
    limit: Arc<Semaphore>,
    next_id: AtomicU64,
    entries: Mutex<HashMap<u64, (NodeId, RelayHandle)>>,
    shutting_down: AtomicBool,
    emptied: Notify,
}

/// A reserved place for one connection; frees it when dropped.
#[derive(Debug)]
pub struct Admission {
    _permit: OwnedSemaphorePermit,
}

/// Removes a connection from the registry when dropped.
#[derive(Debug)]
pub struct Registration {
    live: LiveConnections,
    id: u64,
    _admission: Admission,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut entries = self
            .live
            .inner
            .entries
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        entries.remove(&self.id);
        if entries.is_empty() {
            self.live.inner.emptied.notify_waiters();
        }
    }
}

impl LiveConnections {
    /// A registry admitting at most `limit` connections at once.
    pub fn new(limit: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                limit: Arc::new(Semaphore::new(limit.min(Semaphore::MAX_PERMITS))),
                next_id: AtomicU64::new(0),
                entries: Mutex::new(HashMap::new()),
                shutting_down: AtomicBool::new(false),
                emptied: Notify::new(),
            }),
        }
    }

    /// Reserves a place for a new connection.
    pub fn admit(&self) -> Result<Admission, Refusal> {
        if self.inner.shutting_down.load(Ordering::Acquire) {
            return Err(Refusal::ShuttingDown);
        }
        let permit = self
            .inner
            .limit
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refusal::AtCapacity)?;
        Ok(Admission { _permit: permit })
    }

    /// Records an established connection to `backend`, controlled through `handle`.
    pub fn register(
        &self,
        admission: Admission,
        backend: NodeId,
        handle: RelayHandle,
    ) -> Registration {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, (backend, handle));
        Registration {
            live: self.clone(),
            id,
            _admission: admission,
        }
    }

    /// How many connections are live.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no connection is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Live connections per backend.
    pub fn per_backend(&self) -> HashMap<NodeId, usize> {
        let mut counts = HashMap::new();
        for (backend, _) in self.lock().values() {
            *counts.entry(backend.clone()).or_insert(0) += 1;
        }
        counts
    }

    /// Closes the connections to one backend with `code`, paced evenly over `window`.
    pub async fn close_backend(&self, backend: &NodeId, code: u16, reason: &str, window: Duration) {
        let handles: Vec<RelayHandle> = self
            .lock()
            .values()
            .filter(|(b, _)| b == backend)
            .map(|(_, h)| h.clone())
            .collect();
        close_paced(handles, code, reason, window).await;
    }

    /// Refuses new connections, closes the live ones with 1001 paced evenly over `window`,
    /// then waits up to `grace` for them to finish.
    pub async fn shutdown(&self, window: Duration, grace: Duration) {
        self.inner.shutting_down.store(true, Ordering::Release);
        let handles: Vec<RelayHandle> = self.lock().values().map(|(_, h)| h.clone()).collect();
        close_paced(
            handles,
            crate::close_code::GOING_AWAY,
            "gateway shutting down",
            window,
        )
        .await;
        let _ = tokio::time::timeout(grace, async {
            loop {
                let emptied = self.inner.emptied.notified();
                if self.is_empty() {
                    return;
                }
                emptied.await;
            }
        })
        .await;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (NodeId, RelayHandle)>> {
        self.inner.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Closes `handles` spread evenly over `window`, in batches: each wakeup closes every
/// connection due by then, so 100,000 connections take the window, not 100,000 timer ticks
/// of a millisecond.
async fn close_paced(handles: Vec<RelayHandle>, code: u16, reason: &str, window: Duration) {
    let start = tokio::time::Instant::now();
    let total = handles.len();
    let mut closed = 0;
    while closed < total {
        let share = start.elapsed().as_secs_f64() / window.as_secs_f64().max(f64::MIN_POSITIVE);
        let due = ((share * total as f64).ceil() as usize).clamp(closed + 1, total);
        for handle in &handles[closed..due] {
            handle.close(code, reason);
        }
        closed = due;
        if closed < total {
            let next = start + window.mul_f64(closed as f64 / total as f64);
            tokio::time::sleep_until(next).await;
        }
    }
}

impl fmt::Debug for LiveConnections {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LiveConnections")
            .field("live", &self.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::Instant;

    use super::*;
    use crate::{RelayCommand, RelayCommands};

    /// 100,000 connections close over the window, not one per millisecond timer tick (which
    /// would take 100 s), and evenly: about half of them by half the window.
    #[tokio::test(start_paused = true)]
    async fn a_paced_close_of_100_000_connections_meets_its_window() {
        let live = LiveConnections::new(200_000);
        let mut held = Vec::new();
        for _ in 0..100_000 {
            let (handle, commands) = RelayHandle::new();
            let registration = live.register(live.admit().unwrap(), NodeId::from("a"), handle);
            held.push((registration, commands));
        }
        let closed = |held: &[(Registration, RelayCommands)]| {
            held.iter()
                .filter(|(_, c)| matches!(c.current(), RelayCommand::Close { code: 1001, .. }))
                .count()
        };
        let window = Duration::from_secs(5);
        let started = Instant::now();
        let shutdown = live.shutdown(window, Duration::ZERO);
        tokio::pin!(shutdown);
        let half_way = tokio::time::sleep(window / 2);
        tokio::select! {
            () = &mut shutdown => panic!("closed everything before half the window"),
            () = half_way => {}
        }
        let at_half = closed(&held);
        assert!(
            (45_000..=55_000).contains(&at_half),
            "{at_half} by half the window"
        );
        shutdown.await;
        assert!(
            started.elapsed() <= window + Duration::from_millis(10),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(closed(&held), 100_000);
    }
}
