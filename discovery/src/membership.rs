//! Several member sources merged into the one set a ring is built from.

use std::{
    collections::{BTreeMap, BTreeSet},
    convert::Infallible,
    fmt,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll},
};

use futures_util::{FutureExt, Stream, StreamExt};
use tokio::sync::mpsc;
use tower::discover::Change;
use tower_hashring::{NodeId, Ring};

use crate::{Backend, FlapDamping, HealthCheck, HeldDown};

/// The highest weight a member gets, whatever its source or an admin asks: 1000 weights of
/// the default ring scheme are 2 million points, where a ring change still takes
/// milliseconds.
pub const MAX_WEIGHT: u32 = 1000;

/// Where a member comes from. One id space spans them all, and where two origins claim one
/// id, the one first in this order holds it (the others' claims are kept, logged and
/// counted, and one takes over when the holder's goes): a static member is never replaced
/// or removed by a discovered one, and every gateway resolves a duplicate alike.
///
/// ```
/// use discovery::Origin;
///
/// assert!(Origin::Static < Origin::Redis);
/// assert!(Origin::Redis.is_shared() && !Origin::Api.is_shared());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Origin {
    /// The configured list.
    Static,
    /// Added through an admin API.
    Api,
    /// The tasks of labelled Docker Swarm services.
    Swarm,
    /// Labelled Docker containers.
    Docker,
    /// The Redis registry.
    Redis,
    /// RabbitMQ announcements.
    Amqp,
    /// A [`Scaler`](crate::Scaler)'s own backends (in-process ones, say).
    Scaler,
}

impl Origin {
    /// Its name in logs, metrics and the admin API.
    pub fn as_str(self) -> &'static str {
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

    /// Whether every gateway learns of this member from a shared source: changing it
    /// through one gateway's admin API would make that gateway diverge.
    pub fn is_shared(self) -> bool {
        matches!(
            self,
            Origin::Redis | Origin::Amqp | Origin::Docker | Origin::Swarm
        )
    }
}

/// A backend admitted to the ring, and the origin whose claim it is.
///
/// ```
/// use discovery::{Backend, Member, Origin};
///
/// let member = Member::new(Backend::new("a", "127.0.0.1:7100".parse().unwrap()), Origin::Api);
/// assert_eq!((member.backend.weight, member.origin), (1, Origin::Api));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Its id, address and weight (capped at [`MAX_WEIGHT`]).
    pub backend: Backend,
    /// The source of its claim.
    pub origin: Origin,
}

impl Member {
    /// `backend`, claimed by `origin`.
    pub fn new(backend: Backend, origin: Origin) -> Self {
        Self { backend, origin }
    }
}

/// What a member, or a backend known but kept off the ring, is doing now.
///
/// ```
/// use discovery::MemberState;
///
/// assert_eq!(MemberState::HeldDown.as_str(), "held_down");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MemberState {
    /// On the ring with a weight above 0.
    Up,
    /// On the ring with weight 0: it owns no keys, its users move away.
    Draining,
    /// A member not on the ring yet.
    Joining,
    /// Being removed on purpose; no source may bring it back meanwhile.
    Leaving,
    /// Announced by a health-checked source, failing its checks.
    Unhealthy,
    /// Held out by flap damping.
    HeldDown,
}

impl MemberState {
    /// Its name in the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Up => "up",
            MemberState::Draining => "draining",
            MemberState::Joining => "joining",
            MemberState::Leaving => "leaving",
            MemberState::Unhealthy => "unhealthy",
            MemberState::HeldDown => "held_down",
        }
    }
}

/// A backend known but not on the ring: joining, draining out, leaving, unhealthy or held
/// down, with what is known of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OffRing {
    /// Its id.
    pub id: NodeId,
    /// Its address, where known.
    pub address: Option<SocketAddr>,
    /// Its weight (0 unless it is a member).
    pub weight: u32,
}

/// The changes a ring follows: every member admitted, re-weighed or removed, as a
/// `Discover` stream of [`Backend`]s. It never fails, and ends when its [`Membership`] and
/// every clone of it are gone.
pub struct MembershipChanges(mpsc::UnboundedReceiver<Change<NodeId, Backend>>);

impl fmt::Debug for MembershipChanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MembershipChanges").finish_non_exhaustive()
    }
}

impl MembershipChanges {
    /// The same changes with each admitted [`Backend`] made into what the ring balances over
    /// (a proxy's service for its address, say).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use discovery::{Backend, Membership, Origin, StaticDiscovery};
    /// use futures_util::StreamExt;
    /// use tower::discover::Change;
    ///
    /// let (members, changes) = Membership::new();
    /// members.follow(Origin::Static, StaticDiscovery::new([
    ///     Backend::new("a", "127.0.0.1:7100".parse().unwrap()),
    /// ]));
    /// let mut addresses = changes.map_backends(|backend| backend.address);
    /// let Some(Ok(Change::Insert(_, address))) = addresses.next().await else { unreachable!() };
    /// assert_eq!(address.port(), 7100);
    /// # }
    /// ```
    pub fn map_backends<T, F>(
        self,
        mut make: F,
    ) -> impl Stream<Item = Result<Change<NodeId, T>, Infallible>> + Send + Unpin + 'static
    where
        F: FnMut(Backend) -> T + Send + 'static,
    {
        self.map(move |change| {
            change.map(|change| match change {
                Change::Insert(id, backend) => Change::Insert(id, make(backend)),
                Change::Remove(id) => Change::Remove(id),
            })
        })
    }
}

impl Stream for MembershipChanges {
    type Item = Result<Change<NodeId, Backend>, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx).map(|change| change.map(Ok))
    }
}

/// The members of a ring, merged from several sources (a static list, Redis, Docker, Swarm,
/// RabbitMQ, a scaler, an admin API) under one lock; cheap to clone.
///
/// - **One id space:** where two origins claim one id, the [`Origin`] first in order holds it;
///   the others' claims are kept and counted ([`collisions`](Self::collisions)), and one
///   takes over when the holder's claim goes.
/// - **Admin weights** ([`reweigh`](Self::reweigh)) hold whatever the member's source
///   announces meanwhile; weights are capped at [`MAX_WEIGHT`].
/// - **Leave and return:** a member taken off on purpose ([`leave`](Self::leave)) is not
///   brought back by discovery until [`returned`](Self::returned).
/// - **Damping and health:** sources followed with [`follow_checked`](Self::follow_checked)
///   pass through the [`HealthCheck`] and the [`FlapDamping`] set with
///   [`damp`](Self::damp); [`states`](Self::states) shows who is unhealthy or held down.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use discovery::{Backend, Membership, Origin, StaticDiscovery};
/// use futures_util::StreamExt;
/// use tower::discover::Change;
///
/// let (members, mut changes) = Membership::new();
/// members.follow(Origin::Static, StaticDiscovery::new([
///     Backend::new("backend-a", "127.0.0.1:7100".parse().unwrap()),
/// ]));
/// // A source of lower rank claiming the same id is counted, not admitted.
/// members.follow(Origin::Redis, StaticDiscovery::new([
///     Backend::new("backend-a", "127.0.0.1:7999".parse().unwrap()),
/// ]));
/// assert_eq!(members.collisions()["redis"], 1);
/// let Some(Ok(Change::Insert(id, backend))) = changes.next().await else { unreachable!() };
/// assert_eq!((id.as_str(), backend.address.port()), ("backend-a", 7100));
/// assert!(members.reweigh(&id, 3));
/// assert_eq!(members.weight(&id), 3);
/// # }
/// ```
#[derive(Clone)]
pub struct Membership {
    state: Arc<Mutex<State>>,
    changes: mpsc::UnboundedSender<Change<NodeId, Backend>>,
}

/// Everything behind the one lock.
#[derive(Default)]
struct State {
    members: BTreeMap<NodeId, Member>,
    /// Members being drained on purpose: discovery may not bring them back meanwhile.
    leaving: BTreeSet<NodeId>,
    /// Weights set through the admin API: a source announcing the member again keeps them.
    weights: BTreeMap<NodeId, u32>,
    /// What health-checked sources announce, healthy or not: those announced but not
    /// members are the unhealthy ones.
    announced: BTreeMap<NodeId, SocketAddr>,
    /// Claims that lost an id to another origin's, by the losing origin.
    collisions: BTreeMap<&'static str, u64>,
    /// Every origin's claim on each id (the member is the first origin's).
    claims: BTreeMap<NodeId, BTreeMap<Origin, Backend>>,
    /// Holds out discovered members that flap.
    damping: Option<FlapDamping>,
}

impl fmt::Debug for Membership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Membership")
            .field("members", &self.lock().members.len())
            .finish_non_exhaustive()
    }
}

impl Membership {
    /// No members yet, and the stream of changes the ring is to follow.
    pub fn new() -> (Self, MembershipChanges) {
        let (changes, receiver) = mpsc::unbounded_channel();
        let membership = Self {
            state: Arc::default(),
            changes,
        };
        (membership, MembershipChanges(receiver))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The members now, by id.
    pub fn members(&self) -> BTreeMap<NodeId, Member> {
        self.lock().members.clone()
    }

    /// One member.
    pub fn get(&self, id: &NodeId) -> Option<Member> {
        self.lock().members.get(id).cloned()
    }

    /// Adds or replaces the member `id` (an admin API's own, say).
    pub fn insert(&self, id: NodeId, member: Member) {
        self.lock().admit(&self.changes, id, member);
    }

    /// Adds `member` as `id` unless `id` is a member already, in one step under the lock
    /// (two admins adding one id at once: one gets `false`).
    ///
    /// ```
    /// use discovery::{Backend, Member, Membership, Origin};
    /// use tower_hashring::NodeId;
    ///
    /// let (members, _changes) = Membership::new();
    /// let a = || Member::new(Backend::new("a", "127.0.0.1:7100".parse().unwrap()), Origin::Api);
    /// assert!(members.insert_new(NodeId::from("a"), a()));
    /// assert!(!members.insert_new(NodeId::from("a"), a()));
    /// ```
    pub fn insert_new(&self, id: NodeId, member: Member) -> bool {
        let mut state = self.lock();
        if state.members.contains_key(&id) {
            return false;
        }
        state.admit(&self.changes, id, member);
        true
    }

    /// Removes a member; `None` if it was not one.
    pub fn remove(&self, id: &NodeId) -> Option<Member> {
        self.lock().remove(&self.changes, id)
    }

    /// Takes `id` off the ring and keeps discovery from bringing it back until
    /// [`returned`](Self::returned) (a drain before its container stops).
    pub fn leave(&self, id: &NodeId) -> Option<Member> {
        let mut state = self.lock();
        state.leaving.insert(id.clone());
        state.weights.remove(id);
        let member = state.remove(&self.changes, id)?;
        // Its own source's claim goes with it (announced again, it comes back as new); the
        // other origins' claims stay, for `returned` to hand the id to.
        if let Some(claims) = state.claims.get_mut(id) {
            claims.remove(&member.origin);
        }
        Some(member)
    }

    /// Lets discovery announce `id` again; a source's claim on it, kept meanwhile (another
    /// origin's, when the admin API removed its own member), becomes the member.
    pub fn returned(&self, id: &NodeId) {
        let mut state = self.lock();
        state.leaving.remove(id);
        if state.members.contains_key(id) {
            return;
        }
        let first = state
            .claims
            .get(id)
            .and_then(|claims| claims.first_key_value().map(|(o, b)| (*o, b.clone())));
        if let Some((origin, backend)) = first {
            tracing::info!(backend = %id, origin = origin.as_str(), "a source's claim becomes the member");
            state.admit_claim(&self.changes, id.clone(), origin, backend);
        }
    }

    /// Sets a member's weight (0 drains it); `false` if it is not a member. The weight
    /// holds until the member leaves, whatever its source announces meanwhile.
    pub fn reweigh(&self, id: &NodeId, weight: u32) -> bool {
        let mut state = self.lock();
        let Some(mut member) = state.members.get(id).cloned() else {
            return false;
        };
        let weight = weight.min(MAX_WEIGHT);
        state.weights.insert(id.clone(), weight);
        member.backend.weight = weight;
        state.admit(&self.changes, id.clone(), member);
        true
    }

    /// A member's weight on the ring (1 for one that is not known).
    pub fn weight(&self, id: &NodeId) -> u32 {
        self.lock().members.get(id).map_or(1, |m| m.backend.weight)
    }

    /// Damps every source followed from now on with `damping` (one held-down set for all).
    pub fn damp(&self, damping: FlapDamping) {
        self.lock().damping = Some(damping);
    }

    /// How many times a flapping member was held out.
    pub fn hold_downs(&self) -> u64 {
        self.lock().held_down().total()
    }

    /// Claims that lost an id to another origin's, per losing origin.
    pub fn collisions(&self) -> BTreeMap<&'static str, u64> {
        self.lock().collisions.clone()
    }

    /// Each member's state against `ring`, then the backends known but kept off it.
    pub fn states(&self, ring: &Ring) -> Vec<(NodeId, MemberState)> {
        let state = self.lock();
        let mut states: Vec<(NodeId, MemberState)> = state
            .members
            .keys()
            .map(|id| {
                let now = match ring.node(id.as_str()) {
                    Some(node) if node.weight() > 0 => MemberState::Up,
                    Some(_) => MemberState::Draining,
                    None => MemberState::Joining,
                };
                (id.clone(), now)
            })
            .collect();
        let leaving = state
            .leaving
            .iter()
            .map(|id| (id.clone(), MemberState::Leaving));
        states.extend(leaving);
        let unhealthy = state.unhealthy().into_iter();
        states.extend(unhealthy.map(|(id, _)| (id, MemberState::Unhealthy)));
        let held = state.held_down().now().into_keys();
        states.extend(held.map(|id| (id, MemberState::HeldDown)));
        states
    }

    /// Members not on `ring` (joining, draining out, leaving, unhealthy or held down), with
    /// what is known of them.
    pub fn off_ring(&self, ring: &Ring) -> Vec<OffRing> {
        let state = self.lock();
        let off = |id: &NodeId, address, weight| OffRing {
            id: id.clone(),
            address,
            weight,
        };
        let mut found: Vec<OffRing> = state
            .members
            .iter()
            .filter(|(id, _)| ring.node(id.as_str()).is_none())
            .map(|(id, m)| off(id, Some(m.backend.address), m.backend.weight))
            .collect();
        found.extend(state.leaving.iter().map(|id| off(id, None, 0)));
        let unhealthy = state.unhealthy();
        found.extend(unhealthy.iter().map(|(id, a)| off(id, Some(*a), 0)));
        let held = state.held_down().now();
        found.extend(held.keys().map(|id| off(id, None, 0)));
        found
    }

    /// Applies the changes of a member source of `origin`, for as long as it runs. What the
    /// source has ready now (a static list, say) is applied before this returns, so members
    /// are on their way to the ring before a server starts.
    pub fn follow<S>(&self, origin: Origin, source: S)
    where
        S: Stream<Item = Result<Change<NodeId, Backend>, Infallible>> + Send + 'static,
    {
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

    /// Follows `source` through `health` checks when there are any (a member is on the
    /// ring only while they pass), and through the flap damping when it is on.
    pub fn follow_checked<S>(&self, origin: Origin, health: Option<&HealthCheck>, source: S)
    where
        S: Stream<Item = Result<Change<NodeId, Backend>, Infallible>> + Send + 'static,
    {
        match health {
            Some(check) => {
                let state = self.state.clone();
                let source = source.inspect(move |change| {
                    let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
                    match change {
                        Ok(Change::Insert(id, backend)) => {
                            state.announced.insert(id.clone(), backend.address);
                        }
                        Ok(Change::Remove(id)) => {
                            state.announced.remove(id);
                        }
                        Err(never) => match *never {},
                    }
                });
                self.follow_damped(origin, check.clone().wrap(source))
            }
            // A plain static list never takes a member away: nothing to damp, and its
            // members are applied before this returns.
            None if origin == Origin::Static => self.follow(origin, source),
            None => self.follow_damped(origin, source),
        }
    }

    fn follow_damped<S>(&self, origin: Origin, source: S)
    where
        S: Stream<Item = Result<Change<NodeId, Backend>, Infallible>> + Send + 'static,
    {
        let damping = self.lock().damping.clone();
        match damping {
            Some(damping) => self.follow(origin, damping.wrap(source)),
            None => self.follow(origin, source),
        }
    }

    /// Applies a source's change. Every origin's claim on an id is kept, and the member is
    /// the claim of the origin that comes first in [`Origin`]'s order, whatever order the
    /// claims arrived in: gateways that see the same claims resolve a duplicate id alike.
    pub fn apply(&self, origin: Origin, change: Change<NodeId, Backend>) {
        let mut state = self.lock();
        match change {
            Change::Insert(id, backend) => state.claim(&self.changes, origin, id, backend),
            Change::Remove(id) => state.withdraw(&self.changes, origin, id),
        }
    }
}

type Sender = mpsc::UnboundedSender<Change<NodeId, Backend>>;

impl State {
    fn admit(&mut self, changes: &Sender, id: NodeId, member: Member) {
        let backend = member.backend.clone();
        self.members.insert(id.clone(), member);
        let _ = changes.send(Change::Insert(id, backend));
    }

    fn remove(&mut self, changes: &Sender, id: &NodeId) -> Option<Member> {
        let member = self.members.remove(id)?;
        let _ = changes.send(Change::Remove(id.clone()));
        Some(member)
    }

    /// Makes `backend` the member `id`, of `origin`, with its admin weight or its capped own.
    fn admit_claim(&mut self, changes: &Sender, id: NodeId, origin: Origin, mut backend: Backend) {
        let mut weight = self.weights.get(&id).copied().unwrap_or(backend.weight);
        if weight > MAX_WEIGHT {
            tracing::warn!(backend = %id, weight, "weight above the cap of {MAX_WEIGHT}: capped");
            weight = MAX_WEIGHT;
        }
        backend.weight = weight;
        self.admit(changes, id, Member::new(backend, origin));
    }

    fn claim(&mut self, changes: &Sender, origin: Origin, id: NodeId, backend: Backend) {
        let claims = self.claims.entry(id.clone()).or_default();
        claims.insert(origin, backend.clone());
        // Kept, but not admitted while the member is drained on purpose.
        if self.leaving.contains(&id) {
            return;
        }
        match self.members.get(&id).map(|m| m.origin) {
            Some(held) if held < origin => return self.collision(&id, held, origin, "ignored"),
            Some(held) if held > origin => self.collision(&id, origin, held, "replaced"),
            _ => {}
        }
        tracing::info!(backend = %id, address = %backend.address, origin = origin.as_str(), "discovered");
        self.admit_claim(changes, id, origin, backend);
    }

    fn withdraw(&mut self, changes: &Sender, origin: Origin, id: NodeId) {
        let next = self.claims.get_mut(&id).and_then(|of_id| {
            of_id.remove(&origin);
            of_id.first_key_value().map(|(o, b)| (*o, b.clone()))
        });
        if self.claims.get(&id).is_some_and(BTreeMap::is_empty) {
            self.claims.remove(&id);
        }
        // Only the origin whose claim is the member removes it.
        if self.members.get(&id).map(|m| m.origin) != Some(origin) {
            return;
        }
        match next {
            Some((next, backend)) => {
                tracing::warn!(backend = %id, address = %backend.address, "the {} claim is gone: the {} claim on the id takes over", origin.as_str(), next.as_str());
                self.admit_claim(changes, id, next, backend);
            }
            None => {
                tracing::info!(backend = %id, "gone");
                self.remove(changes, &id);
            }
        }
    }

    /// Logs and counts (against the losing origin) two origins' claims on one id.
    fn collision(&mut self, id: &NodeId, winner: Origin, loser: Origin, what: &str) {
        tracing::warn!(
            backend = %id,
            "a {} member and a {} member claim one id: the {} one is {what} (ids are one space across sources)",
            winner.as_str(),
            loser.as_str(),
            loser.as_str(),
        );
        *self.collisions.entry(loser.as_str()).or_default() += 1;
    }

    fn held_down(&self) -> HeldDown {
        self.damping
            .as_ref()
            .map(FlapDamping::held_down)
            .unwrap_or_default()
    }

    /// Announced by a health-checked source, but failing its checks (and not leaving nor
    /// held down).
    fn unhealthy(&self) -> Vec<(NodeId, SocketAddr)> {
        let held = self.held_down().now();
        self.announced
            .iter()
            .filter(|(id, _)| {
                !self.members.contains_key(*id)
                    && !self.leaving.contains(*id)
                    && !held.contains_key(*id)
            })
            .map(|(id, address)| (id.clone(), *address))
            .collect()
    }
}
