//! Which connections a ring change affects: exactly those whose owner changed.

use tower_hashring::{NodeId, RingSnapshot};
use tower_ws_proxy::{ConnectionId, LiveConnections, Tracked};

use crate::Migrate;

/// A connection to move, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedMove<H> {
    /// The connection.
    pub id: ConnectionId,
    /// Its routing key.
    pub key: std::sync::Arc<[u8]>,
    /// The backend it is on.
    pub from: NodeId,
    /// Its owner on the new ring (`None`: the new ring is empty).
    pub to: Option<NodeId>,
    /// Its route's policy, if it has its own.
    pub policy: Option<std::sync::Arc<crate::MigrationPolicy>>,
    /// Moves it.
    pub handle: H,
}

/// The connections of `live` that must move when the ring goes from `old` to `new`:
/// those in a range the diff moved, those whose backend left (they may sit on a failover
/// successor outside any moved range) and those routed on a ring older than `old`, minus
/// those already on their new owner. Oldest first.
///
/// ```
/// use tower_hashring::{HashScheme, NodeId, Ring, RingSnapshot};
/// use tower_ws_migrate::plan;
/// use tower_ws_proxy::{LiveConnections, RelayHandle};
///
/// let first = RingSnapshot::initial(HashScheme::default());
/// let old = first.next(Ring::builder().node("a", 1).node("b", 1).build()?);
/// let new = old.next(Ring::builder().node("a", 1).node("b", 1).node("c", 1).build()?);
/// let (old_ring, new_ring) = (old.ring(), new.ring());
/// let live = LiveConnections::default();
/// let mut guards = Vec::new();
/// for user in 0..1000u32 {
///     let key = user.to_string();
///     let position = old_ring.key_position(key.as_bytes());
///     let owner = old_ring.route(key.as_bytes()).unwrap().id().clone();
///     let (handle, commands) = RelayHandle::new();
///     guards.push((live.register(key.as_bytes(), position, owner, old.version(), handle), commands));
/// }
/// let moves = plan(&live, &old, &new);
/// // Only users now owned by "c" move, and all of them do.
/// assert!(moves.iter().all(|m| m.to == Some(NodeId::from("c"))));
/// let to_c = (0..1000u32)
///     .filter(|u| new_ring.route(u.to_string().as_bytes()).unwrap().id().as_str() == "c");
/// assert_eq!(moves.len(), to_c.count());
/// # Ok::<(), tower_hashring::RingError>(())
/// ```
pub fn plan<H: Migrate>(
    live: &LiveConnections<H>,
    old: &RingSnapshot,
    new: &RingSnapshot,
) -> Vec<PlannedMove<H>> {
    let diff = old.diff(new);
    let (new_version, new) = (new.version(), new.ring());
    let mut moves = Vec::new();
    live.for_each(|tracked| {
        let candidate = tracked.ring_version < old.version()
            || diff.moved(tracked.position).is_some()
            || new
                .node(tracked.backend.as_str())
                .is_none_or(|n| n.weight() == 0);
        if !candidate || tracked.ring_version > new_version {
            return;
        }
        let to = new.owner_of(tracked.position).map(|n| n.id().clone());
        if to.as_ref() == Some(&tracked.backend) {
            return;
        }
        moves.push(PlannedMove {
            id: tracked.id,
            key: tracked.key.clone(),
            from: tracked.backend.clone(),
            to,
            policy: tracked.handle.policy(),
            handle: tracked.handle.clone(),
        });
    });
    moves
}

/// The connections among `stragglers` (routed on an older ring, registered after the plan
/// for `ring` was made) that are not on their owner in `ring`.
pub(crate) fn plan_stragglers<H: Migrate>(
    stragglers: Vec<Tracked<H>>,
    ring: &RingSnapshot,
) -> Vec<PlannedMove<H>> {
    stragglers
        .into_iter()
        .filter_map(|tracked| {
            let to = ring
                .ring()
                .owner_of(tracked.position)
                .map(|n| n.id().clone());
            (to.as_ref() != Some(&tracked.backend)).then(|| PlannedMove {
                id: tracked.id,
                key: tracked.key,
                from: tracked.backend,
                to,
                policy: tracked.handle.policy(),
                handle: tracked.handle,
            })
        })
        .collect()
}
