//! The live connections: who they belong to, where they are, and how to move them.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    sync::{Arc, Mutex, MutexGuard},
};

use tokio::{sync::Notify, time::Instant};
use tower_hashring::{LoadSource, NodeId};

use crate::MigrationPolicy;

/// A registered connection's identity within one [`Registry`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(u64);

/// One live connection as the registry sees it.
#[derive(Clone, Debug)]
pub struct Tracked<H> {
    /// Its identity in the registry.
    pub id: ConnectionId,
    /// The routing key (user id, room id).
    pub key: Arc<[u8]>,
    /// The key's position on the ring (`Ring::key_position`).
    pub position: u64,
    /// The backend it is relayed to now.
    pub backend: NodeId,
    /// The version of the ring snapshot it was routed with.
    pub ring_version: u64,
    /// When it was established.
    pub started: Instant,
    /// Its route's policy; `None`: the migrator's.
    pub policy: Option<Arc<MigrationPolicy>>,
    /// Moves it.
    pub handle: H,
}

/// The live connections, shared by the proxy (which registers them) and the migrator
/// (which moves them); cheap to clone.
///
/// ```
/// use tower_hashring::NodeId;
/// use tower_ws_migrate::Registry;
///
/// let registry = Registry::new();
/// let guard = registry.register(b"42", 7, NodeId::from("backend-a"), 1, ());
/// assert_eq!(registry.per_backend()[&NodeId::from("backend-a")], 1);
/// drop(guard); // the connection ended
/// assert!(registry.is_empty());
/// ```
pub struct Registry<H> {
    inner: Arc<Mutex<Entries<H>>>,
    stragglers_waiting: Arc<Notify>,
}

struct Entries<H> {
    next_id: u64,
    // Ordered by id, i.e. by age: plans move older connections first, deterministically.
    connections: BTreeMap<ConnectionId, Tracked<H>>,
    // Kept with every change, so bounded-loads lookups cost no scan.
    per_backend: HashMap<NodeId, u64>,
    // The newest ring version the migrator has planned for: a connection routed on an older
    // one that registers later was missed by that plan and is queued here for a check.
    planned_version: u64,
    stragglers: Vec<ConnectionId>,
}

impl<H> Entries<H> {
    fn count(&mut self, backend: &NodeId, up: bool) {
        if up {
            *self.per_backend.entry(backend.clone()).or_insert(0) += 1;
        } else if let Some(count) = self.per_backend.get_mut(backend) {
            *count -= 1;
            if *count == 0 {
                self.per_backend.remove(backend);
            }
        }
    }
}

impl<H> Clone for Registry<H> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            stragglers_waiting: self.stragglers_waiting.clone(),
        }
    }
}

impl<H> Default for Registry<H> {
    fn default() -> Self {
        Self::new()
    }
}

impl<H> fmt::Debug for Registry<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("connections", &self.len())
            .finish()
    }
}

impl<H> Registry<H> {
    /// An empty registry.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Mutex::new(Entries {
                next_id: 0,
                connections: BTreeMap::new(),
                per_backend: HashMap::new(),
                planned_version: 0,
                stragglers: Vec::new(),
            })),
            stragglers_waiting: Arc::new(Notify::new()),
        }
    }

    /// Records a connection for `key` (at ring `position`) relayed to `backend`, routed with
    /// ring snapshot `ring_version`. It stays registered until the returned guard is dropped.
    ///
    /// The version closes a race: a connection routed on an older ring but registered after
    /// the migrator planned the change is still checked against the newer ring.
    pub fn register(
        &self,
        key: &[u8],
        position: u64,
        backend: NodeId,
        ring_version: u64,
        handle: H,
    ) -> Registered<H> {
        self.register_with_policy(key, position, backend, ring_version, None, handle)
    }

    /// Like [`register`](Self::register), with the policy of the connection's route
    /// (`None`: the migrator's).
    pub fn register_with_policy(
        &self,
        key: &[u8],
        position: u64,
        backend: NodeId,
        ring_version: u64,
        policy: Option<Arc<MigrationPolicy>>,
        handle: H,
    ) -> Registered<H> {
        let mut entries = self.lock();
        let id = ConnectionId(entries.next_id);
        entries.next_id += 1;
        entries.count(&backend, true);
        if ring_version < entries.planned_version {
            entries.stragglers.push(id);
            self.stragglers_waiting.notify_one();
        }
        entries.connections.insert(
            id,
            Tracked {
                id,
                key: key.into(),
                position,
                backend,
                ring_version,
                started: Instant::now(),
                policy,
                handle,
            },
        );
        Registered {
            registry: self.clone(),
            id,
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

    /// Records that connection `id` now runs to `backend` (after a live move).
    pub fn set_backend(&self, id: ConnectionId, backend: NodeId) {
        let mut entries = self.lock();
        let Some(tracked) = entries.connections.get_mut(&id) else {
            return;
        };
        let old = std::mem::replace(&mut tracked.backend, backend.clone());
        entries.count(&old, false);
        entries.count(&backend, true);
    }

    /// Calls `f` with every live connection, oldest first, under the registry's lock.
    pub fn for_each(&self, mut f: impl FnMut(&Tracked<H>)) {
        for tracked in self.lock().connections.values() {
            f(tracked);
        }
    }

    /// Notes that the migrator plans for ring `version` now: later registrations routed on
    /// an older ring become stragglers.
    pub(crate) fn planning(&self, version: u64) {
        self.lock().planned_version = version;
    }

    /// Waits until a straggler has registered.
    pub(crate) async fn stragglers_registered(&self) {
        self.stragglers_waiting.notified().await;
    }

    /// The stragglers registered since the last call that are still live.
    pub(crate) fn take_stragglers(&self) -> Vec<Tracked<H>>
    where
        H: Clone,
    {
        let mut entries = self.lock();
        let ids = std::mem::take(&mut entries.stragglers);
        ids.iter()
            .filter_map(|id| entries.connections.get(id).cloned())
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, Entries<H>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Keeps a connection registered; dropping it (the relay ended) unregisters it.
pub struct Registered<H> {
    registry: Registry<H>,
    id: ConnectionId,
}

impl<H> Registered<H> {
    /// The connection's id.
    pub fn id(&self) -> ConnectionId {
        self.id
    }
}

impl<H> fmt::Debug for Registered<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registered").field("id", &self.id).finish()
    }
}

impl<H> Drop for Registered<H> {
    fn drop(&mut self) {
        let mut entries = self.registry.lock();
        if let Some(tracked) = entries.connections.remove(&self.id) {
            entries.count(&tracked.backend, false);
        }
    }
}

/// Live connections per backend, for the ring's bounded-loads lookup
/// (`HashRingLayer::bounded_loads`).
impl<H> LoadSource for Registry<H> {
    fn load(&self, node: &NodeId) -> u64 {
        self.lock().per_backend.get(node).copied().unwrap_or(0)
    }

    fn total(&self) -> u64 {
        self.lock().connections.len() as u64
    }
}
