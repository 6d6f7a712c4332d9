//! Which connections a ring change affects: exactly those whose owner changed.

use std::collections::HashMap;

use tower_hashring::{LoadFactor, NodeId, Ring, RingSnapshot};
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
    plan_with(live, old, new, None)
}

/// [`plan`] for a balancer that routes with bounded loads
/// (`HashRingLayer::bounded_loads` with the same `factor`): each affected connection goes
/// where the balancer would place it now, the first backend clockwise with room, counting
/// the moves planned before it. A backend never ends a plan above its capacity, and a
/// connection whose backend is still that choice stays.
///
/// ```
/// use tower_hashring::{HashScheme, LoadFactor, NodeId, Ring, RingSnapshot};
/// use tower_ws_migrate::{plan, plan_bounded};
/// use tower_ws_proxy::{LiveConnections, RelayHandle};
///
/// let first = RingSnapshot::initial(HashScheme::default());
/// let old = first.next(Ring::builder().node("a", 1).node("b", 1).build()?);
/// let new = old.next(Ring::builder().node("a", 1).node("b", 1).node("c", 1).build()?);
/// let live = LiveConnections::default();
/// let mut guards = Vec::new();
/// // 300 users that "c" owns on the new ring, all on their old owners.
/// for user in (0..).map(|u: u32| u.to_string()).filter(|u| {
///     new.ring().route(u.as_bytes()).unwrap().id().as_str() == "c"
/// }).take(300) {
///     let position = old.ring().key_position(user.as_bytes());
///     let owner = old.ring().route(user.as_bytes()).unwrap().id().clone();
///     let (handle, commands) = RelayHandle::new();
///     guards.push((live.register(user.as_bytes(), position, owner, old.version(), handle), commands));
/// }
/// let factor = LoadFactor::new(1.25).unwrap();
/// assert_eq!(plan(&live, &old, &new).len(), 300, "without bounds: all onto c");
/// let bounded = plan_bounded(&live, &old, &new, factor);
/// let onto_c = bounded.iter().filter(|m| m.to == Some(NodeId::from("c"))).count();
/// // c may hold ceil(1.25 · 300 / 3) = 125 of the 300.
/// assert!((124..=125).contains(&onto_c), "{onto_c}");
/// # Ok::<(), tower_hashring::RingError>(())
/// ```
pub fn plan_bounded<H: Migrate>(
    live: &LiveConnections<H>,
    old: &RingSnapshot,
    new: &RingSnapshot,
    factor: LoadFactor,
) -> Vec<PlannedMove<H>> {
    plan_with(live, old, new, Some(factor))
}

pub(crate) fn plan_with<H: Migrate>(
    live: &LiveConnections<H>,
    old: &RingSnapshot,
    new: &RingSnapshot,
    bounded: Option<LoadFactor>,
) -> Vec<PlannedMove<H>> {
    let diff = old.diff(new);
    let (new_version, new) = (new.version(), new.ring());
    let mut target = Target::new(live, bounded);
    let mut moves = Vec::new();
    live.for_each(|tracked| {
        // Routed on another ring than `old` (older, or moved live on a newer one since):
        // checked against `new` whatever the diff says.
        let candidate = tracked.ring_version != old.version()
            || diff.moved(tracked.position).is_some()
            || new
                .node(tracked.backend.as_str())
                .is_none_or(|n| n.weight() == 0);
        if !candidate || tracked.ring_version > new_version {
            return;
        }
        if let Some(planned) = target.move_for(new, tracked) {
            moves.push(planned);
        }
    });
    moves
}

/// Where a connection belongs on a ring: its owner, or under bounded loads the balancer's
/// choice given the loads as the plan so far leaves them.
struct Target {
    bounded: Option<(LoadFactor, HashMap<NodeId, u64>)>,
}

impl Target {
    fn new<H>(live: &LiveConnections<H>, bounded: Option<LoadFactor>) -> Self {
        Self {
            bounded: bounded.map(|factor| (factor, live.per_backend())),
        }
    }

    /// The move that puts `tracked` where it belongs on `ring`, if it is elsewhere.
    fn move_for<H: Migrate>(
        &mut self,
        ring: &Ring,
        tracked: &Tracked<H>,
    ) -> Option<PlannedMove<H>> {
        let to = match &mut self.bounded {
            None => ring.owner_of(tracked.position).map(|n| n.id().clone()),
            Some((factor, loads)) => {
                // Placed as a newcomer would be: without itself in the counts.
                let from = loads.entry(tracked.backend.clone()).or_insert(1);
                *from = from.saturating_sub(1);
                let to = ring
                    .route_bounded(tracked.position, *factor, &*loads)
                    .map(|n| n.id().clone());
                *loads
                    .entry(to.clone().unwrap_or_else(|| tracked.backend.clone()))
                    .or_insert(0) += 1;
                to
            }
        };
        (to.as_ref() != Some(&tracked.backend)).then(|| PlannedMove {
            id: tracked.id,
            key: tracked.key.clone(),
            from: tracked.backend.clone(),
            to,
            policy: tracked.handle.policy(),
            handle: tracked.handle.clone(),
        })
    }
}

/// The connections among `stragglers` (routed on an older ring, registered after the plan
/// for `ring` was made) that are not on their owner in `ring`.
pub(crate) fn plan_stragglers<H: Migrate>(
    live: &LiveConnections<H>,
    stragglers: Vec<Tracked<H>>,
    ring: &RingSnapshot,
    bounded: Option<LoadFactor>,
) -> Vec<PlannedMove<H>> {
    let mut target = Target::new(live, bounded);
    stragglers
        .iter()
        .filter_map(|tracked| target.move_for(ring.ring(), tracked))
        .collect()
}
