//! The gateway's members: what the ring is built from. Static configuration, discovery
//! sources (Redis, health-checked lists) and the admin API all change them here, and every
//! change reaches the ring through one `Discover` stream.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use discovery::{FlapDamping, HealthCheck, HeldDown};
use futures_util::{FutureExt, Stream, StreamExt};
use tokio::sync::mpsc;
use tower::discover::Change;
use tower_hashring::NodeId;
use tower_ws_proxy::{Upstream, UpstreamConfig};

/// The changes the ring follows.
pub(crate) type RingChanges =
    Pin<Box<dyn Stream<Item = Result<Change<NodeId, Upstream>, Infallible>> + Send>>;

/// The highest weight a member gets, whatever its source or the admin API asks: 1000
/// weights of the default ring scheme are 2 million points, where a ring change still
/// takes milliseconds.
pub(crate) const MAX_WEIGHT: u32 = 1000;

/// Where a member comes from. One id space spans them all, and where two origins claim one
/// id, the one first in this order holds it (the others' claims are kept, logged and
/// counted, and one takes over when the holder's goes): a static member is never replaced
/// or removed by a discovered one, and every gateway resolves a duplicate alike.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Origin {
    /// The configured list (`--backend`, `[[backends]]`).
    Static,
    /// Added through the admin API.
    Api,
    /// The tasks of labelled Docker Swarm services.
    Swarm,
    /// Labelled Docker containers.
    Docker,
    /// The Redis registry.
    Redis,
    /// RabbitMQ announcements.
    Amqp,
    /// The scaler's own backends (the demo's in-process ones).
    Scaler,
}

impl Origin {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Origin::Static => "static",
            Origin::Api => "api",
            Origin::Redis => "redis",
            Origin::Amqp => "amqp",
            Origin::Docker => "docker",
            Origin::Swarm => "swarm",
            Origin::Scaler => "scaler",
        }
    }

    /// Whether every gateway learns of this member's membership from a shared source:
    /// removing it through one gateway's admin API would make that gateway diverge.
    pub(crate) fn is_shared(self) -> bool {
        matches!(
            self,
            Origin::Redis | Origin::Amqp | Origin::Docker | Origin::Swarm
        )
    }
}

/// A backend the gateway routes to, as the admin API shows it.
#[derive(Clone, Debug)]
pub(crate) struct Member {
    pub(crate) address: SocketAddr,
    pub(crate) weight: u32,
    pub(crate) origin: Origin,
}

impl Member {
    pub(crate) fn at(address: SocketAddr, weight: u32, origin: Origin) -> Self {
        Self {
            address,
            weight,
            origin,
        }
    }
}

/// The members, shared by everything that changes them; cheap to clone.
#[derive(Clone)]
pub(crate) struct Members {
    changes: mpsc::UnboundedSender<Result<Change<NodeId, Upstream>, Infallible>>,
    members: Arc<Mutex<BTreeMap<NodeId, Member>>>,
    /// Members being drained on purpose: discovery may not bring them back meanwhile.
    leaving: Arc<Mutex<std::collections::BTreeSet<NodeId>>>,
    /// Weights set through the admin API: a source announcing the member again keeps them.
    weights: Arc<Mutex<BTreeMap<NodeId, u32>>>,
    /// What health-checked sources announce, healthy or not: those announced but not
    /// members are the unhealthy ones.
    announced: Arc<Mutex<BTreeMap<NodeId, SocketAddr>>>,
    /// Claims that lost an id to another origin's, by the losing origin.
    collisions: Arc<Mutex<BTreeMap<&'static str, u64>>>,
    /// Every source origin's claim on each id (the member is the first origin's).
    claims: Arc<Mutex<BTreeMap<NodeId, BTreeMap<Origin, discovery::Backend>>>>,
    /// Holds out discovered members that flap; its held members show as `held_down`.
    damping: Arc<Mutex<Option<FlapDamping>>>,
    upstream: UpstreamConfig,
}

impl Members {
    /// No members yet, and the stream of changes the ring is to follow.
    pub(crate) fn new(upstream: UpstreamConfig) -> (Self, RingChanges) {
        let (changes, receiver) = mpsc::unbounded_channel();
        let members = Self {
            changes,
            members: Arc::default(),
            leaving: Arc::default(),
            weights: Arc::default(),
            announced: Arc::default(),
            collisions: Arc::default(),
            claims: Arc::default(),
            damping: Arc::default(),
            upstream,
        };
        (members, Box::pin(ChannelDiscovery(receiver)))
    }

    /// Adds or updates a member.
    pub(crate) fn insert(&self, id: NodeId, member: Member) {
        let upstream = Upstream::new(member.address.to_string(), self.upstream);
        self.lock().insert(id.clone(), member);
        let _ = self.changes.send(Ok(Change::Insert(id, upstream)));
    }

    /// Removes a member; `None` if it was not one.
    pub(crate) fn remove(&self, id: &NodeId) -> Option<Member> {
        let member = self.lock().remove(id)?;
        let _ = self.changes.send(Ok(Change::Remove(id.clone())));
        Some(member)
    }

    /// Takes `id` off the ring and keeps discovery from bringing it back until
    /// [`returned`](Self::returned) (a drain before its container stops).
    pub(crate) fn leave(&self, id: &NodeId) -> Option<Member> {
        self.leaving
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone());
        guard(&self.weights).remove(id);
        let member = self.remove(id)?;
        // Its own source's claim goes with it (announced again, it comes back as new); the
        // other origins' claims stay, for `returned` to hand the id to.
        if let Some(claims) = guard(&self.claims).get_mut(id) {
            claims.remove(&member.origin);
        }
        Some(member)
    }

    /// Sets a member's weight (0 drains it); `false` if it is not a member. The weight
    /// holds until the member is removed through the admin API, whatever its source
    /// announces meanwhile.
    pub(crate) fn reweigh(&self, id: &NodeId, weight: u32) -> bool {
        let Some(mut member) = self.lock().get(id).cloned() else {
            return false;
        };
        guard(&self.weights).insert(id.clone(), weight);
        member.weight = weight;
        self.insert(id.clone(), member);
        true
    }

    /// Damps every source followed from now on with `damping` (one held-down set for all).
    pub(crate) fn damp(&self, damping: FlapDamping) {
        *guard(&self.damping) = Some(damping);
    }

    fn held_down(&self) -> HeldDown {
        guard(&self.damping)
            .as_ref()
            .map(FlapDamping::held_down)
            .unwrap_or_default()
    }

    /// How many times a flapping member was held out.
    pub(crate) fn hold_downs(&self) -> u64 {
        self.held_down().total()
    }

    /// Claims that lost an id to another origin's, per losing origin.
    pub(crate) fn collisions(&self) -> BTreeMap<&'static str, u64> {
        guard(&self.collisions).clone()
    }

    /// Lets discovery announce `id` again; a source's claim on it, kept meanwhile (another
    /// origin's, when the admin API removed its own member), becomes the member.
    pub(crate) fn returned(&self, id: &NodeId) {
        self.leaving
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        if self.lock().contains_key(id) {
            return;
        }
        let first = guard(&self.claims)
            .get(id)
            .and_then(|claims| claims.first_key_value().map(|(o, b)| (*o, b.clone())));
        if let Some((origin, backend)) = first {
            tracing::info!(backend = %id, origin = origin.as_str(), "a source's claim becomes the member");
            self.admit(id.clone(), origin, &backend);
        }
    }

    fn is_leaving(&self, id: &NodeId) -> bool {
        self.leaving
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(id)
    }

    /// Each member's state against `ring`: `up` (on it, weight > 0), `draining` (weight 0),
    /// `joining` (not on it yet), and `leaving` (being removed, its users moving away).
    pub(crate) fn states(&self, ring: &tower_hashring::Ring) -> Vec<(NodeId, &'static str)> {
        let mut states: Vec<(NodeId, &'static str)> = self
            .lock()
            .keys()
            .map(|id| {
                let state = match ring.node(id.as_str()) {
                    Some(node) if node.weight() > 0 => "up",
                    Some(_) => "draining",
                    None => "joining",
                };
                (id.clone(), state)
            })
            .collect();
        let leaving: Vec<NodeId> = guard(&self.leaving).iter().cloned().collect();
        states.extend(leaving.into_iter().map(|id| (id, "leaving")));
        states.extend(
            self.unhealthy()
                .into_iter()
                .map(|(id, _)| (id, "unhealthy")),
        );
        states.extend(
            self.held_down()
                .now()
                .into_keys()
                .map(|id| (id, "held_down")),
        );
        states
    }

    /// Announced by a health-checked source, but failing its checks (and not leaving nor
    /// held down).
    fn unhealthy(&self) -> Vec<(NodeId, SocketAddr)> {
        let held = self.held_down().now();
        let members = self.lock();
        let leaving = guard(&self.leaving);
        guard(&self.announced)
            .iter()
            .filter(|(id, _)| {
                !members.contains_key(*id) && !leaving.contains(*id) && !held.contains_key(*id)
            })
            .map(|(id, address)| (id.clone(), *address))
            .collect()
    }

    /// Members not on `ring` (joining, draining out, leaving or unhealthy), with the
    /// address and weight known for them.
    pub(crate) fn off_ring(
        &self,
        ring: &tower_hashring::Ring,
    ) -> Vec<(NodeId, Option<SocketAddr>, u32)> {
        let mut off: Vec<_> = self
            .lock()
            .iter()
            .filter(|(id, _)| ring.node(id.as_str()).is_none())
            .map(|(id, m)| (id.clone(), Some(m.address), m.weight))
            .collect();
        let leaving: Vec<NodeId> = guard(&self.leaving).iter().cloned().collect();
        off.extend(leaving.into_iter().map(|id| (id, None, 0)));
        off.extend(
            self.unhealthy()
                .into_iter()
                .map(|(id, address)| (id, Some(address), 0)),
        );
        off.extend(self.held_down().now().into_keys().map(|id| (id, None, 0)));
        off
    }

    /// A member's weight on the ring (1 for one that is not known).
    pub(crate) fn weight(&self, id: &NodeId) -> u32 {
        self.lock().get(id).map_or(1, |m| m.weight)
    }

    /// The weight `id` gets when its source announces `announced`.
    fn weight_for(&self, id: &NodeId, announced: u32) -> u32 {
        guard(&self.weights).get(id).copied().unwrap_or(announced)
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<NodeId, Member>> {
        self.members.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies the changes of a member source of `origin`, for as long as it runs.
    pub(crate) fn follow<S>(&self, origin: Origin, source: S)
    where
        S: Stream<Item = Result<Change<NodeId, discovery::Backend>, Infallible>> + Send + 'static,
    {
        // What the source has ready now (a static list, say) is applied before this returns,
        // so a gateway starts with those members already on their way to the ring.
        let mut source = Box::pin(source);
        while let Some(Some(Ok(change))) = source.next().now_or_never() {
            self.apply(origin, change);
        }
        let members = self.clone();
        tokio::spawn(async move {
            while let Some(Ok(change)) = source.next().await {
                members.apply(origin, change);
            }
        });
    }

    /// Applies a source's change. Every origin's claim on an id is kept, and the member is
    /// the claim of the origin that comes first in [`Origin`]'s order, whatever order the
    /// claims arrived in: gateways that see the same claims resolve a duplicate id alike.
    fn apply(&self, origin: Origin, change: Change<NodeId, discovery::Backend>) {
        match change {
            Change::Insert(id, backend) => {
                guard(&self.claims)
                    .entry(id.clone())
                    .or_default()
                    .insert(origin, backend.clone());
                // Kept, but not admitted while the member is drained on purpose.
                if self.is_leaving(&id) {
                    return;
                }
                let held = self.lock().get(&id).map(|m| m.origin);
                match held {
                    Some(held) if held < origin => {
                        self.collision(&id, held, origin, "ignored");
                        return;
                    }
                    Some(held) if held > origin => self.collision(&id, origin, held, "replaced"),
                    _ => {}
                }
                tracing::info!(backend = %id, address = %backend.address, origin = origin.as_str(), "discovered");
                self.admit(id, origin, &backend);
            }
            Change::Remove(id) => {
                let next = {
                    let mut claims = guard(&self.claims);
                    let remaining = claims.get_mut(&id).map(|of_id| {
                        of_id.remove(&origin);
                        of_id.first_key_value().map(|(o, b)| (*o, b.clone()))
                    });
                    if claims.get(&id).is_some_and(BTreeMap::is_empty) {
                        claims.remove(&id);
                    }
                    remaining.flatten()
                };
                // Only the origin whose claim is the member removes it.
                if self.lock().get(&id).map(|m| m.origin) != Some(origin) {
                    return;
                }
                match next {
                    Some((next, backend)) => {
                        tracing::warn!(backend = %id, address = %backend.address, "the {} claim is gone: the {} claim on the id takes over", origin.as_str(), next.as_str());
                        self.admit(id, next, &backend);
                    }
                    None => {
                        tracing::info!(backend = %id, "gone");
                        self.remove(&id);
                    }
                }
            }
        }
    }

    /// Logs and counts (against the losing origin) two origins' claims on one id.
    fn collision(&self, id: &NodeId, winner: Origin, loser: Origin, what: &str) {
        tracing::warn!(
            backend = %id,
            "a {} member and a {} member claim one id: the {} one is {what} (ids are one space across sources)",
            winner.as_str(),
            loser.as_str(),
            loser.as_str(),
        );
        *guard(&self.collisions).entry(loser.as_str()).or_default() += 1;
    }

    /// Makes `backend` the member `id`, of `origin`, with its weight capped.
    fn admit(&self, id: NodeId, origin: Origin, backend: &discovery::Backend) {
        let mut weight = self.weight_for(&id, backend.weight);
        if weight > MAX_WEIGHT {
            tracing::warn!(backend = %id, weight, "weight above the cap of {MAX_WEIGHT}: capped");
            weight = MAX_WEIGHT;
        }
        self.insert(id, Member::at(backend.address, weight, origin));
    }

    /// Follows `source`, through `health` checks when there are any (a member is on the
    /// ring only while they pass), and through the flap damping when it is on.
    pub(crate) fn follow_checked<S>(&self, origin: Origin, health: Option<&HealthCheck>, source: S)
    where
        S: Stream<Item = Result<Change<NodeId, discovery::Backend>, Infallible>> + Send + 'static,
    {
        match health {
            Some(check) => {
                let announced = self.announced.clone();
                let source = source.inspect(move |change| match change {
                    Ok(Change::Insert(id, backend)) => {
                        guard(&announced).insert(id.clone(), backend.address);
                    }
                    Ok(Change::Remove(id)) => {
                        guard(&announced).remove(id);
                    }
                    Err(never) => match *never {},
                });
                self.follow_damped(origin, check.clone().wrap(source))
            }
            // A plain static list never takes a member away: nothing to damp, and its
            // members are applied before the gateway starts serving.
            None if origin == Origin::Static => self.follow(origin, source),
            None => self.follow_damped(origin, source),
        }
    }

    fn follow_damped<S>(&self, origin: Origin, source: S)
    where
        S: Stream<Item = Result<Change<NodeId, discovery::Backend>, Infallible>> + Send + 'static,
    {
        let damping = guard(&self.damping).clone();
        match damping {
            Some(damping) => self.follow(origin, damping.wrap(source)),
            None => self.follow(origin, source),
        }
    }
}

fn guard<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

struct ChannelDiscovery(mpsc::UnboundedReceiver<Result<Change<NodeId, Upstream>, Infallible>>);

impl Stream for ChannelDiscovery {
    type Item = Result<Change<NodeId, Upstream>, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A health-flapping member is held out and shows as `held_down`, not as unhealthy; the
    /// ring saw its departures, and not its held return.
    #[tokio::test(start_paused = true)]
    async fn a_flapping_member_is_held_down_and_shown_so() {
        let (members, mut ring_changes) = Members::new(tower_ws_proxy::UpstreamConfig::default());
        let window = std::time::Duration::from_secs(60);
        let hold = std::time::Duration::from_secs(30);
        members.damp(FlapDamping::new(2, window, hold));
        let (source, receiver) = mpsc::unbounded_channel();
        let source_stream = futures_util::stream::unfold(receiver, |mut r| async move {
            r.recv().await.map(|change| (change, r))
        });
        members.follow_checked(Origin::Redis, None, source_stream);
        let a = NodeId::from("a");
        let up = || {
            Ok(Change::Insert(
                a.clone(),
                discovery::Backend::new("a", "127.0.0.1:7100".parse().unwrap()),
            ))
        };
        for _ in 0..2 {
            source.send(up()).unwrap();
            source.send(Ok(Change::Remove(a.clone()))).unwrap();
        }
        source.send(up()).unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        let ring = tower_hashring::Ring::builder().build().unwrap();
        assert_eq!(members.states(&ring), vec![(a.clone(), "held_down")]);
        assert_eq!(members.hold_downs(), 1);
        let mut seen = Vec::new();
        while let Some(Some(Ok(change))) = ring_changes.next().now_or_never() {
            seen.push(matches!(change, Change::Insert(..)));
        }
        assert_eq!(
            seen,
            [true, false, true, false],
            "two flaps reached the ring, not the third"
        );
        tokio::time::sleep(hold).await;
        assert!(matches!(
            ring_changes.next().await,
            Some(Ok(Change::Insert(..)))
        ));
        assert!(members
            .states(&ring)
            .iter()
            .all(|(_, state)| *state == "joining"));
    }

    /// Two sources claim one id: whatever order the claims come in, the same one holds it,
    /// the other's is counted, and it takes over when the holder's claim goes.
    #[tokio::test]
    async fn a_duplicate_id_resolves_alike_whatever_the_order() {
        let backend = |port: u16| discovery::Backend::new("x", ([10, 0, 0, 1], port).into());
        let x = NodeId::from("x");
        for docker_first in [true, false] {
            let (members, _changes) = Members::new(tower_ws_proxy::UpstreamConfig::default());
            let (docker, redis) = (
                Change::Insert(x.clone(), backend(1)),
                Change::Insert(x.clone(), backend(2)),
            );
            if docker_first {
                members.apply(Origin::Docker, docker);
                members.apply(Origin::Redis, redis);
            } else {
                members.apply(Origin::Redis, redis);
                members.apply(Origin::Docker, docker);
            }
            let held = members.lock()[&x].clone();
            assert_eq!(
                (held.origin, held.address.port()),
                (Origin::Docker, 1),
                "docker first: {docker_first}"
            );
            assert_eq!(members.collisions()["redis"], 1);
            // The loser's claim going changes nothing; the holder's going hands over.
            members.apply(Origin::Redis, Change::Remove(x.clone()));
            assert_eq!(members.lock()[&x].origin, Origin::Docker);
            members.apply(Origin::Redis, Change::Insert(x.clone(), backend(2)));
            members.apply(Origin::Docker, Change::Remove(x.clone()));
            let held = members.lock()[&x].clone();
            assert_eq!((held.origin, held.address.port()), (Origin::Redis, 2));
            members.apply(Origin::Redis, Change::Remove(x.clone()));
            assert!(members.lock().is_empty());
        }
    }

    /// An admin API member holds its id against a source's claim; once it is removed through
    /// the API, the kept claim becomes the member, as on gateways that never had it.
    #[tokio::test]
    async fn a_claim_kept_behind_an_api_member_takes_over_when_it_is_removed() {
        let (members, _changes) = Members::new(tower_ws_proxy::UpstreamConfig::default());
        let x = NodeId::from("x");
        members.insert(
            x.clone(),
            Member::at(([10, 0, 0, 9], 1).into(), 1, Origin::Api),
        );
        let docker = discovery::Backend::new("x", ([10, 0, 0, 1], 7100).into());
        members.apply(Origin::Docker, Change::Insert(x.clone(), docker));
        assert_eq!(members.lock()[&x].origin, Origin::Api);
        members.leave(&x);
        members.returned(&x);
        let held = members.lock()[&x].clone();
        assert_eq!((held.origin, held.address.port()), (Origin::Docker, 7100));
        // A source's own member removed through the API does not come straight back.
        members.leave(&x);
        members.returned(&x);
        assert!(members.lock().is_empty());
    }

    #[tokio::test]
    async fn a_weight_above_the_cap_is_capped() {
        let (members, _changes) = Members::new(tower_ws_proxy::UpstreamConfig::default());
        let heavy =
            discovery::Backend::new("heavy", "127.0.0.1:7100".parse().unwrap()).weight(u32::MAX);
        let plain = discovery::Backend::new("plain", "127.0.0.1:7101".parse().unwrap()).weight(7);
        members.follow(
            Origin::Redis,
            futures_util::stream::iter([
                Ok(Change::Insert(NodeId::from("heavy"), heavy)),
                Ok(Change::Insert(NodeId::from("plain"), plain)),
            ]),
        );
        assert_eq!(members.weight(&NodeId::from("heavy")), MAX_WEIGHT);
        assert_eq!(members.weight(&NodeId::from("plain")), 7);
    }
}
