//! The live, proxied WebSockets, one record each: capped, counted per backend, found by key
//! and ring position for migration, and closed on shutdown.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::Duration,
};

use tokio::{
    sync::{Notify, OwnedSemaphorePermit, Semaphore},
    time::Instant,
};
use tower_hashring::{LoadSource, NodeId};

use crate::{client_limit::KeepWhileOpen, ConnectionHandle, Traffic, TrafficTotals};

/// The reason of the 1001 that every WebSocket gets when the gateway shuts down.
const SHUTDOWN_REASON: &str = "gateway shutting down";

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

/// A registered connection's identity within one [`LiveConnections`]; ids grow with age.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(u64);

/// One live connection's record.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Tracked<H> {
    /// Its identity among the live connections.
    pub id: ConnectionId,
    /// The routing key (user id, room id); empty for a keyless request.
    pub key: Arc<[u8]>,
    /// The key's position on the ring (`Ring::key_position`).
    pub position: u64,
    /// The backend it is relayed to now (updated after a live move).
    pub backend: NodeId,
    /// The version of the ring snapshot it was routed with.
    pub ring_version: u64,
    /// When it was established.
    pub started: Instant,
    /// Controls it: closes it, or (for a migration layer's handle) moves it.
    pub handle: H,
    /// What its relay carried so far (given to the relay with
    /// [`RelayCommands::counting`](crate::RelayCommands::counting)).
    pub traffic: Arc<Traffic>,
    // The part of `traffic` already counted for an earlier backend (before a live move).
    counted: TrafficTotals,
}

/// The live WebSocket connections: one record per connection, shared by the proxy (which
/// admits, registers and, on shutdown, closes them) and a migrator (which moves them and
/// records their new backend). Cheap to clone.
///
/// `H` is what is kept to control each connection: a bare [`RelayHandle`](crate::RelayHandle)
/// by default, or a migration layer's richer handle.
///
/// ```
/// use tower_hashring::NodeId;
/// use tower_ws_proxy::{LiveConnections, RelayHandle};
///
/// let live = LiveConnections::new(10_000);
/// let (handle, _commands) = RelayHandle::new();
/// let admission = live.admit()?;
/// let guard = live.register(b"42", 7, NodeId::from("backend-a"), 1, handle).holding(admission);
/// assert_eq!(live.per_backend()[&NodeId::from("backend-a")], 1);
/// drop(guard); // the relay ended
/// assert!(live.is_empty());
/// # Ok::<(), tower_ws_proxy::Refusal>(())
/// ```
pub struct LiveConnections<H = crate::RelayHandle> {
    inner: Arc<Inner<H>>,
}

struct Inner<H> {
    limit: Arc<Semaphore>,
    shutting_down: AtomicBool,
    emptied: Notify,
    // Woken when some backend's last connection leaves it.
    backend_emptied: Notify,
    stragglers_waiting: Notify,
    // Woken when a connection registers during the shutdown (see `register`).
    late_waiting: Notify,
    entries: Mutex<Entries<H>>,
}

struct Entries<H> {
    next_id: u64,
    // Ordered by id, i.e. by age: migration plans move older connections first. Boxed:
    // ids arrive in order, which leaves the map's nodes about half full, and half-empty
    // slots of a pointer cost less than half-empty slots of a whole record.
    connections: BTreeMap<ConnectionId, Box<Tracked<H>>>,
    // Kept with every change, so bounded-loads lookups cost no scan.
    per_backend: HashMap<NodeId, u64>,
    // The traffic of connections that ended or moved away, per backend it went to.
    retired: HashMap<NodeId, TrafficTotals>,
    // The newest ring version a migrator has planned for: a connection routed on an older
    // one that registers later was missed by that plan and is queued here for a check.
    planned_version: u64,
    stragglers: Vec<ConnectionId>,
    // Registered after the shutdown took its list of connections to close.
    late: Vec<ConnectionId>,
}

impl<H> Entries<H> {
    /// Credits what `tracked` carried since it was last counted to its backend now.
    fn retire_traffic(retired: &mut HashMap<NodeId, TrafficTotals>, tracked: &mut Tracked<H>) {
        let now = tracked.traffic.totals();
        *retired.entry(tracked.backend.clone()).or_default() += now - tracked.counted;
        tracked.counted = now;
    }

    /// Counts one connection more (`up`) or less on `backend`; `true` when that was its
    /// last one.
    fn count(&mut self, backend: &NodeId, up: bool) -> bool {
        if up {
            *self.per_backend.entry(backend.clone()).or_insert(0) += 1;
        } else if let Some(count) = self.per_backend.get_mut(backend) {
            *count -= 1;
            if *count == 0 {
                self.per_backend.remove(backend);
                return true;
            }
        }
        false
    }
}

/// A reserved place for one connection under the cap; frees it when dropped.
#[derive(Debug)]
pub struct Admission {
    _permit: OwnedSemaphorePermit,
}

impl LiveConnections {
    /// Live connections with bare relay handles, admitting at most `limit` connections at once.
    pub fn new(limit: usize) -> Self {
        Self::with_limit(limit)
    }
}

impl<H> LiveConnections<H> {
    /// Live connections admitting at most `limit` connections at once.
    pub fn with_limit(limit: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                limit: Arc::new(Semaphore::new(limit.min(Semaphore::MAX_PERMITS))),
                shutting_down: AtomicBool::new(false),
                emptied: Notify::new(),
                backend_emptied: Notify::new(),
                stragglers_waiting: Notify::new(),
                late_waiting: Notify::new(),
                entries: Mutex::new(Entries {
                    next_id: 0,
                    connections: BTreeMap::new(),
                    per_backend: HashMap::new(),
                    retired: HashMap::new(),
                    planned_version: 0,
                    stragglers: Vec::new(),
                    late: Vec::new(),
                }),
            }),
        }
    }

    /// Reserves a place for a new connection: refused past the cap or once shutting down.
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

    /// Records a connection for `key` (at ring `position`) relayed to `backend`, routed with
    /// ring snapshot `ring_version`. It stays registered until the returned guard is dropped;
    /// [`Registered::holding`] ties its [`Admission`] to the same guard.
    ///
    /// The version closes a race: a connection routed on an older ring but registered after
    /// a migrator planned the change is still checked against the newer ring.
    pub fn register(
        &self,
        key: &[u8],
        position: u64,
        backend: NodeId,
        ring_version: u64,
        handle: H,
    ) -> Registered<H> {
        let traffic = Arc::new(Traffic::default());
        let mut entries = self.lock();
        let id = ConnectionId(entries.next_id);
        entries.next_id += 1;
        entries.count(&backend, true);
        if ring_version < entries.planned_version {
            entries.stragglers.push(id);
            self.inner.stragglers_waiting.notify_one();
        }
        // Read under the lock that `shutdown` takes its list under: a connection admitted
        // before the shutdown but registered after that list was taken is closed by the
        // shutdown too, or the process would exit with it open and drop it with no close frame.
        if self.inner.shutting_down.load(Ordering::Acquire) {
            entries.late.push(id);
            self.inner.late_waiting.notify_one();
        }
        entries.connections.insert(
            id,
            Box::new(Tracked {
                id,
                key: key.into(),
                position,
                backend,
                ring_version,
                started: Instant::now(),
                handle,
                traffic: traffic.clone(),
                counted: TrafficTotals::default(),
            }),
        );
        Registered {
            connections: self.clone(),
            id,
            traffic,
            _admission: None,
            _kept: None,
        }
    }

    /// Reads connection `id`'s record, if it is live.
    pub(crate) fn with_record<T>(
        &self,
        id: ConnectionId,
        read: impl FnOnce(&Tracked<H>) -> T,
    ) -> Option<T> {
        self.lock()
            .connections
            .get(&id)
            .map(|tracked| read(tracked))
    }

    /// A resumed connection was established `age` ago.
    pub(crate) fn established(&self, id: ConnectionId, age: std::time::Duration) {
        if let Some(tracked) = self.lock().connections.get_mut(&id) {
            tracked.started = Instant::now().checked_sub(age).unwrap_or(tracked.started);
        }
    }

    /// How many connections are live.
    pub fn len(&self) -> usize {
        self.lock().connections.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Live connections per backend (feeds the ring's bounded-loads lookup and the admin API).
    pub fn per_backend(&self) -> HashMap<NodeId, u64> {
        self.lock().per_backend.clone()
    }

    /// Resolves once no live connection runs to `backend`: at once if none does, else when
    /// its last one ends or moves away (the record's removal wakes it; nothing polls). Bound it
    /// with a timeout: a client that never leaves keeps it pending.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use tower_hashring::NodeId;
    /// use tower_ws_proxy::{LiveConnections, RelayHandle};
    ///
    /// let live = LiveConnections::new(10);
    /// let a = NodeId::from("a");
    /// let (handle, _commands) = RelayHandle::new();
    /// let guard = live.register(b"42", 7, a.clone(), 1, handle);
    /// let drained = live.drained(&a);
    /// drop(guard); // its last connection ends
    /// drained.await;
    /// # }
    /// ```
    pub fn drained(&self, backend: &NodeId) -> impl std::future::Future<Output = ()> + Send + '_
    where
        H: Send + Sync,
    {
        let backend = backend.clone();
        async move {
            loop {
                // Created before the check, so a wakeup between the two is not lost.
                let emptied = self.inner.backend_emptied.notified();
                if !self.lock().per_backend.contains_key(&backend) {
                    return;
                }
                emptied.await;
            }
        }
    }

    fn set_backend(&self, id: ConnectionId, backend: NodeId, ring_version: u64) {
        let mut entries = self.lock();
        let Entries {
            connections,
            retired,
            planned_version,
            stragglers,
            ..
        } = &mut *entries;
        let Some(tracked) = connections.get_mut(&id) else {
            return;
        };
        // What it carried so far stays with the backend it leaves.
        Entries::retire_traffic(retired, tracked);
        let old = std::mem::replace(&mut tracked.backend, backend.clone());
        tracked.ring_version = ring_version;
        if ring_version < *planned_version {
            stragglers.push(id);
            self.inner.stragglers_waiting.notify_one();
        }
        let emptied = entries.count(&old, false);
        entries.count(&backend, true);
        if emptied {
            self.inner.backend_emptied.notify_waiters();
        }
    }

    /// What relays carried per backend since these live connections were made: every connection's
    /// traffic goes to the backend it ran to at the time (across live moves), so each
    /// backend's totals only grow.
    ///
    /// ```
    /// use tower_hashring::NodeId;
    /// use tower_ws_proxy::{LiveConnections, RelayHandle};
    ///
    /// let live = LiveConnections::new(10);
    /// let (handle, _commands) = RelayHandle::new();
    /// let _guard = live.register(b"42", 7, NodeId::from("a"), 1, handle);
    /// assert_eq!(live.traffic_per_backend()[&NodeId::from("a")].to_client.bytes, 0);
    /// ```
    pub fn traffic_per_backend(&self) -> HashMap<NodeId, TrafficTotals> {
        let entries = self.lock();
        let mut totals = entries.retired.clone();
        for tracked in entries.connections.values() {
            *totals.entry(tracked.backend.clone()).or_default() +=
                tracked.traffic.totals() - tracked.counted;
        }
        totals
    }

    /// Calls `f` with every live connection, oldest first, under their lock.
    pub fn for_each(&self, mut f: impl FnMut(&Tracked<H>)) {
        for tracked in self.lock().connections.values() {
            f(tracked);
        }
    }

    fn planning(&self, version: u64) {
        self.lock().planned_version = version;
    }

    async fn stragglers_registered(&self) {
        self.inner.stragglers_waiting.notified().await;
    }

    fn take_stragglers(&self) -> Vec<Tracked<H>>
    where
        H: Clone,
    {
        let mut entries = self.lock();
        let ids = std::mem::take(&mut entries.stragglers);
        ids.iter()
            .filter_map(|id| entries.connections.get(id).map(|t| Tracked::clone(t)))
            .collect()
    }

    fn handles(&self, mut keep: impl FnMut(&Tracked<H>) -> bool) -> Vec<H>
    where
        H: Clone,
    {
        let entries = self.lock();
        let matching = entries.connections.values().filter(|t| keep(t));
        matching.map(|t| t.handle.clone()).collect()
    }

    fn lock(&self) -> MutexGuard<'_, Entries<H>> {
        self.inner.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<H> LiveConnections<H> {
    /// What only a migrator uses: planning, stragglers, recording moves.
    pub fn for_migrator(&self) -> ForMigrator<'_, H> {
        ForMigrator { live: self }
    }
}

impl<H: ConnectionHandle> LiveConnections<H> {
    /// Asks connection `id`'s relay to close both sides with `code` at their next message
    /// boundaries; false if it is not live.
    pub fn close(&self, id: ConnectionId, code: u16, reason: &str) -> bool {
        let handle = self.with_record(id, |t| t.handle.clone());
        handle.map(|h| h.relay().close(code, reason)).is_some()
    }

    /// Resolves once no connection is live (at once if none is). Bound it with a timeout.
    pub async fn emptied(&self) {
        loop {
            // Created before the check, so a wakeup between the two is not lost.
            let emptied = self.inner.emptied.notified();
            if self.is_empty() {
                return;
            }
            emptied.await;
        }
    }

    /// Closes the connections to one backend with `code`, paced evenly over `window`.
    pub async fn close_backend(&self, backend: &NodeId, code: u16, reason: &str, window: Duration) {
        let handles = self.handles(|t| &t.backend == backend);
        close_paced(handles, code, reason, window).await;
    }

    /// Refuses new connections, closes the live ones with 1001 paced evenly over `window`,
    /// then waits up to `grace` for them to finish.
    pub async fn shutdown(&self, window: Duration, grace: Duration) {
        self.inner.shutting_down.store(true, Ordering::Release);
        let handles = self.handles(|_| true);
        let code = crate::close_code::GOING_AWAY;
        let closing = async {
            close_paced(handles, code, SHUTDOWN_REASON, window).await;
            let _ = tokio::time::timeout(grace, self.emptied()).await;
        };
        tokio::select! {
            () = closing => {}
            () = self.close_late_arrivals() => {}
        }
    }

    /// Closes with 1001, as they arrive, the connections registered after the shutdown took
    /// its list (admitted before it, their backend's handshake still under way); never ends.
    async fn close_late_arrivals(&self) {
        loop {
            // Created before the list is taken, so an arrival between the two is not lost.
            let arrived = self.inner.late_waiting.notified();
            let late = std::mem::take(&mut self.lock().late);
            for id in late {
                self.close(id, crate::close_code::GOING_AWAY, SHUTDOWN_REASON);
            }
            arrived.await;
        }
    }
}

/// Closes `handles` spread evenly over `window`, in batches: each wakeup closes every
/// connection due by then, so 100,000 connections take the window, not 100,000 timer ticks
/// of a millisecond.
async fn close_paced<H: ConnectionHandle>(
    handles: Vec<H>,
    code: u16,
    reason: &str,
    window: Duration,
) {
    let start = Instant::now();
    let total = handles.len();
    let mut closed = 0;
    while closed < total {
        let share = start.elapsed().as_secs_f64() / window.as_secs_f64().max(f64::MIN_POSITIVE);
        let due = ((share * total as f64).ceil() as usize).clamp(closed + 1, total);
        for handle in &handles[closed..due] {
            handle.relay().close(code, reason);
        }
        closed = due;
        if closed < total {
            let next = start + window.mul_f64(closed as f64 / total as f64);
            tokio::time::sleep_until(next).await;
        }
    }
}

impl<H> Clone for LiveConnections<H> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<H> Default for LiveConnections<H> {
    /// No cap.
    fn default() -> Self {
        Self::with_limit(usize::MAX)
    }
}

impl<H> fmt::Debug for LiveConnections<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LiveConnections")
            .field("live", &self.len())
            .finish_non_exhaustive()
    }
}

/// Live connections per backend, for the ring's bounded-loads lookup
/// (`HashRingLayer::bounded_loads`).
impl<H: Send + 'static> LoadSource for LiveConnections<H> {
    fn load(&self, node: &NodeId) -> u64 {
        self.lock().per_backend.get(node).copied().unwrap_or(0)
    }

    fn total(&self) -> u64 {
        self.lock().connections.len() as u64
    }
}

/// Keeps a connection registered; dropping it (the relay ended) unregisters it and frees
/// its place under the cap.
pub struct Registered<H> {
    connections: LiveConnections<H>,
    id: ConnectionId,
    traffic: Arc<Traffic>,
    _admission: Option<Admission>,
    _kept: Option<KeepWhileOpen>,
}

impl<H> Registered<H> {
    /// The connection's id.
    pub fn id(&self) -> ConnectionId {
        self.id
    }

    /// Where its relay counts what it carries ([`RelayCommands::counting`](crate::RelayCommands::counting)).
    pub fn traffic(&self) -> Arc<Traffic> {
        self.traffic.clone()
    }

    /// Holds the connection's place under the cap for as long as it is registered.
    pub fn holding(mut self, admission: Admission) -> Self {
        self._admission = Some(admission);
        self
    }

    /// Keeps what the layers above gave the connection until it is unregistered.
    pub fn keeping(mut self, kept: Option<KeepWhileOpen>) -> Self {
        self._kept = kept;
        self
    }
}

impl<H> fmt::Debug for Registered<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registered").field("id", &self.id).finish()
    }
}

impl<H> Drop for Registered<H> {
    fn drop(&mut self) {
        let mut entries = self.connections.lock();
        if let Some(mut tracked) = entries.connections.remove(&self.id) {
            if entries.count(&tracked.backend, false) {
                self.connections.inner.backend_emptied.notify_waiters();
            }
            Entries::retire_traffic(&mut entries.retired, &mut tracked);
        }
        if entries.connections.is_empty() {
            self.connections.inner.emptied.notify_waiters();
        }
    }
}

/// What a migrator needs of the [`LiveConnections`] beyond what every user reads: it plans
/// against a ring version, learns of connections routed on an older ring that registered
/// after its plan (stragglers), and records where a live move took a connection. Got with
/// [`LiveConnections::for_migrator`].
///
/// ```
/// use tower_hashring::NodeId;
/// use tower_ws_proxy::{LiveConnections, RelayHandle};
///
/// let live = LiveConnections::new(10);
/// live.for_migrator().planning(2);
/// let (handle, _commands) = RelayHandle::new();
/// // Routed on ring 1, registered after the plan for ring 2: that plan missed it.
/// let guard = live.register(b"42", 7, NodeId::from("a"), 1, handle);
/// assert_eq!(live.for_migrator().take_stragglers().len(), 1);
/// live.for_migrator().set_backend(guard.id(), NodeId::from("b"), 2);
/// assert_eq!(live.per_backend()[&NodeId::from("b")], 1);
/// ```
pub struct ForMigrator<'a, H> {
    live: &'a LiveConnections<H>,
}

impl<H> fmt::Debug for ForMigrator<'_, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ForMigrator")
            .field("live", self.live)
            .finish()
    }
}

impl<H> Clone for ForMigrator<'_, H> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<H> Copy for ForMigrator<'_, H> {}

impl<'a, H> ForMigrator<'a, H> {
    /// Records that connection `id` now runs to `backend`, where a live move planned on ring
    /// `ring_version` took it.
    ///
    /// A move can finish after a newer ring was planned (the ring flapped A→B→A while it was
    /// under way): that plan saw the connection still on its old backend, so it is queued
    /// as a straggler, and a migrator checks it against the newest ring.
    pub fn set_backend(&self, id: ConnectionId, backend: NodeId, ring_version: u64) {
        self.live.set_backend(id, backend, ring_version);
    }

    /// The migrator plans for ring `version` now, so later registrations routed on an
    /// older ring become stragglers ([`take_stragglers`](Self::take_stragglers)).
    pub fn planning(&self, version: u64) {
        self.live.planning(version);
    }

    /// Waits until a straggler has registered.
    pub async fn stragglers_registered(self) {
        self.live.stragglers_registered().await;
    }

    /// The stragglers registered since the last call that are still live.
    pub fn take_stragglers(&self) -> Vec<Tracked<H>>
    where
        H: Clone,
    {
        self.live.take_stragglers()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::Instant;

    use super::*;
    use crate::{RelayCommand, RelayCommands, RelayHandle};

    /// 100,000 connections close over the window, not one per millisecond timer tick (which
    /// would take 100 s), and evenly: about half of them by half the window.
    #[tokio::test(start_paused = true)]
    async fn a_paced_close_of_100_000_connections_meets_its_window() {
        let live = LiveConnections::new(200_000);
        let mut held = Vec::new();
        for n in 0..100_000u64 {
            let (handle, commands) = RelayHandle::new();
            let registration = live
                .register(&n.to_be_bytes(), n, NodeId::from("a"), 1, handle)
                .holding(live.admit().unwrap());
            held.push((registration, commands));
        }
        let closed = |held: &[(Registered<RelayHandle>, RelayCommands)]| {
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

    /// A connection admitted before the shutdown began but registered after its list was
    /// taken (its backend's handshake still in flight) gets its 1001 too, instead of being
    /// dropped with no close frame when the process exits.
    #[tokio::test(start_paused = true)]
    async fn a_connection_registered_during_the_shutdown_is_closed_with_1001() {
        let live = LiveConnections::new(10);
        let admitted = live.admit().unwrap();
        let (before, before_commands) = RelayHandle::new();
        let _early = live.register(b"early", 1, NodeId::from("a"), 1, before);
        let shutdown = live.shutdown(Duration::from_secs(5), Duration::from_secs(1));
        tokio::pin!(shutdown);
        // The shutdown takes its list and starts pacing.
        tokio::select! {
            () = &mut shutdown => panic!("a live connection cannot let the shutdown end"),
            () = tokio::time::sleep(Duration::from_millis(10)) => {}
        }
        let (late, late_commands) = RelayHandle::new();
        let _late = live
            .register(b"late", 2, NodeId::from("a"), 1, late)
            .holding(admitted);
        // The shutdown closes it at its next turn, long before its window ends.
        tokio::select! {
            () = &mut shutdown => panic!("a live connection cannot let the shutdown end"),
            () = tokio::time::sleep(Duration::from_millis(1)) => {}
        }
        assert!(
            matches!(
                late_commands.current(),
                RelayCommand::Close { code: 1001, .. }
            ),
            "{:?}",
            late_commands.current()
        );
        shutdown.await;
        assert!(matches!(
            before_commands.current(),
            RelayCommand::Close { code: 1001, .. }
        ));
        assert!(live.admit().is_err(), "no admission once shutting down");
    }

    /// The cap, the per-backend counts and a live move's bookkeeping are one record: a move
    /// recounts it, and dropping the guard frees both the record and the place.
    #[test]
    fn traffic_stays_with_the_backend_it_went_to_across_a_move() {
        let live = LiveConnections::new(10);
        let (a, b) = (NodeId::from("a"), NodeId::from("b"));
        let (handle, _commands) = RelayHandle::new();
        let guard = live.register(b"k", 1, a.clone(), 1, handle);
        let traffic = guard.traffic();
        traffic.count(true, 2, 100);
        live.set_backend(guard.id(), b.clone(), 1);
        traffic.count(false, 1, 10);
        let totals = live.traffic_per_backend();
        assert_eq!(totals[&a].to_backend.bytes, 100, "before the move: a's");
        assert_eq!(totals[&a].to_client.bytes, 0);
        assert_eq!(totals[&b].to_client.messages, 1, "after it: b's");
        assert_eq!(totals[&b].to_backend.bytes, 0);
        traffic.count(true, 1, 5);
        drop(guard);
        let after = live.traffic_per_backend();
        assert_eq!(
            after[&a], totals[&a],
            "a's totals never shrink nor grow after the move"
        );
        assert_eq!(
            after[&b].to_backend.bytes, 5,
            "what came before the close is kept"
        );
    }

    /// A backend is drained when its last connection ends or moves away, not before, and
    /// another backend's connections do not hold it.
    #[tokio::test(start_paused = true)]
    async fn drained_resolves_when_the_last_connection_leaves_the_backend() {
        let live = LiveConnections::new(10);
        let (a, b) = (NodeId::from("a"), NodeId::from("b"));
        let mut guards = Vec::new();
        for backend in [&a, &a, &b] {
            let (handle, _commands) = RelayHandle::new();
            guards.push(live.register(b"k", 1, backend.clone(), 1, handle));
        }
        let drained = live.drained(&a);
        tokio::pin!(drained);
        use futures_util::FutureExt;
        assert!(
            drained.as_mut().now_or_never().is_none(),
            "two connections on a"
        );
        drop(guards.remove(0));
        assert!(
            drained.as_mut().now_or_never().is_none(),
            "one connection on a"
        );
        live.set_backend(guards[0].id(), b.clone(), 2);
        assert!(
            futures_util::FutureExt::now_or_never(drained.as_mut()).is_some(),
            "the last one moved to b"
        );
        live.drained(&a).await;
        assert_eq!(live.load(&b), 2);
    }

    #[test]
    fn the_cap_and_the_counts_follow_one_record() {
        let live = LiveConnections::new(1);
        let (handle, _commands) = RelayHandle::new();
        let guard = live
            .register(b"7", 1, NodeId::from("a"), 1, handle)
            .holding(live.admit().unwrap());
        assert_eq!(live.admit().unwrap_err(), Refusal::AtCapacity);
        live.set_backend(guard.id(), NodeId::from("b"), 1);
        assert_eq!(live.per_backend(), HashMap::from([(NodeId::from("b"), 1)]));
        assert_eq!(live.load(&NodeId::from("a")), 0);
        drop(guard);
        assert!(live.is_empty() && live.per_backend().is_empty());
        assert!(live.admit().is_ok());
    }
}
