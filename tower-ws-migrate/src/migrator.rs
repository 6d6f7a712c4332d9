//! The migrator: follows the ring's snapshots and moves the affected connections, paced.

use std::{collections::HashMap, fmt, sync::Arc, time::Duration};

use tokio::sync::Semaphore;
use tower_hashring::{LoadFactor, RingSnapshot, RingWatch};
use tower_ws_proxy::{ConnectionId, LiveConnections};

#[cfg(feature = "metrics")]
use crate::MigrationMetrics;
use crate::{
    plan::{plan_stragglers, plan_with},
    Migrate, MigrationEvent, MigrationHook, MigrationPolicy, MigrationStats, Outcome, Pacing,
    PlannedMove,
};

const DEFAULT_IN_FLIGHT: usize = 256;
/// Long enough for a dial (connect 2 s, handshake 5 s), a switch (2 s) and the old
/// backend's close (5 s) at their defaults.
const DEFAULT_DEADLINE: Duration = Duration::from_secs(15);

/// Moves the [`LiveConnections`] whose owner changed, on every new ring snapshot.
///
/// Run it with [`Migrator::run`] (spawn it beside the ring's driver). A ring change that
/// arrives while a paced batch is running replaces the rest of that batch: the plan is made
/// again against the newest ring, so no connection is moved to an owner that is already
/// stale.
///
/// ```
/// use std::sync::Arc;
/// use tokio::sync::watch;
/// use tower_hashring::{HashScheme, RingSnapshot};
/// use tower_ws_migrate::{Migrator, Pacing};
/// use tower_ws_proxy::LiveConnections;
///
/// let (_ring_tx, ring) = watch::channel(Arc::new(RingSnapshot::initial(HashScheme::default())));
/// let live = LiveConnections::new(10_000);
/// let migrator = Migrator::new(live, ring).pacing(Pacing::per_second(200));
/// # let _ = migrator;
/// ```
pub struct Migrator<H> {
    connections: LiveConnections<H>,
    ring: RingWatch,
    // The ring the registered connections were placed on: advanced only when a batch
    // finishes, so a batch cut short by a newer ring is planned again in full.
    current: Arc<RingSnapshot>,
    policy: MigrationPolicy,
    pacing: Pacing,
    // One budget for every move, whatever stream or batch it is in: the earliest time the
    // next one may start.
    next_slot: tokio::time::Instant,
    bounded: Option<LoadFactor>,
    drain_window: Duration,
    in_flight: Arc<Semaphore>,
    deadline: Duration,
    hook: Arc<dyn MigrationHook>,
    stats: MigrationStats,
    #[cfg(feature = "metrics")]
    metrics: Option<MigrationMetrics>,
}

impl<H> fmt::Debug for Migrator<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Migrator")
            .field("connections", &self.connections)
            .field("policy", &self.policy)
            .field("pacing", &self.pacing)
            .field("drain_window", &self.drain_window)
            .finish_non_exhaustive()
    }
}

impl<H> Migrator<H>
where
    H: Migrate,
{
    /// A migrator over `connections`, following `ring`; Reconnect with 1012 and the default
    /// pacing.
    /// The snapshot current now is the starting point: changes after this call are migrated.
    pub fn new(connections: LiveConnections<H>, mut ring: RingWatch) -> Self {
        let current = ring.borrow_and_update().clone();
        Self {
            connections,
            ring,
            current,
            policy: MigrationPolicy::default(),
            pacing: Pacing::default(),
            next_slot: tokio::time::Instant::now(),
            bounded: None,
            drain_window: Duration::ZERO,
            in_flight: Arc::new(Semaphore::new(DEFAULT_IN_FLIGHT)),
            deadline: DEFAULT_DEADLINE,
            hook: Arc::new(()),
            stats: MigrationStats::default(),
            #[cfg(feature = "metrics")]
            metrics: None,
        }
    }

    /// The policy applied to affected connections registered without one of their own.
    pub fn policy(mut self, policy: MigrationPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// How fast connections are moved: one budget shared by the owner changes and the
    /// drains of departed backends, and across ring changes, so together they never start
    /// more than the rate allows.
    pub fn pacing(mut self, pacing: Pacing) -> Self {
        self.pacing = pacing;
        self
    }

    /// Plans moves as the balancer routes under bounded loads with `factor`
    /// ([`plan_bounded`](crate::plan_bounded)): no backend is pushed past its capacity.
    pub fn bounded_loads(mut self, factor: LoadFactor) -> Self {
        self.bounded = Some(factor);
        self
    }

    /// Connections of a backend that left the ring (or went to weight 0) are moved spread
    /// evenly over this window, or at the pacing's rate where that is slower (default: zero,
    /// i.e. at the pacing's rate).
    pub fn drain_window(mut self, window: Duration) -> Self {
        self.drain_window = window;
        self
    }

    /// At most this many migrations under way at once (default: 256): a live move dials
    /// the new owner, and thousands of dials at once overflow its accept queue.
    pub fn max_in_flight(mut self, limit: usize) -> Self {
        self.in_flight = Arc::new(Semaphore::new(limit.max(1)));
        self
    }

    /// A migration that has no outcome after this long counts as failed and gives back its
    /// in-flight permit, so stuck peers can never stop the others from moving (default:
    /// 15 s).
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// Called for every migration.
    pub fn hook(mut self, hook: impl MigrationHook) -> Self {
        self.hook = Arc::new(hook);
        self
    }

    /// Records every migration in `metrics` (by policy, outcome and reason; in flight;
    /// duration).
    #[cfg(feature = "metrics")]
    pub fn metrics(mut self, metrics: MigrationMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The counters, shared with the running migrator.
    pub fn stats(&self) -> MigrationStats {
        self.stats.clone()
    }

    /// Runs until the ring's sender is dropped.
    pub async fn run(mut self) {
        self.connections
            .for_migrator()
            .planning(self.current.version());
        loop {
            tokio::select! {
                changed = self.ring.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let newest = self.ring.borrow_and_update().clone();
                    self.follow_ring_change(newest).await;
                }
                // A connection routed on an older ring registered after its change was
                // planned, so that plan missed it: check it against the ring now.
                () = self.connections.for_migrator().stragglers_registered() => {
                    let current = self.current.clone();
                    let stragglers = self.connections.for_migrator().take_stragglers();
                    let moves = plan_stragglers(&self.connections, stragglers, &current, self.bounded);
                    if !moves.is_empty() {
                        tracing::debug!(count = moves.len(), "moving connections routed on an older ring");
                        if let Some(newer) = self.apply(moves, &current, &mut HashMap::new()).await {
                            // A ring change came first: it covers the rest.
                            self.follow_ring_change(newer).await;
                        }
                    }
                }
            }
        }
    }

    /// Moves what the change to `newest` (and any that follows mid-batch) affects.
    async fn follow_ring_change(&mut self, mut newest: Arc<RingSnapshot>) {
        // Connections already told to move in this round are not told twice, unless a live
        // move has since taken them elsewhere (they are then on a backend of their own).
        let mut told = HashMap::new();
        loop {
            self.stats.count_ring_change();
            self.connections.for_migrator().planning(newest.version());
            let mut moves = plan_with(&self.connections, &self.current, &newest, self.bounded);
            moves.retain(|m| told.get(&m.id) != Some(&m.from));
            tracing::debug!(
                version = newest.version(),
                affected = moves.len(),
                "ring changed"
            );
            match self.apply(moves, &newest, &mut told).await {
                None => break,
                // A newer ring arrived mid-batch: what is left is planned against it.
                Some(newer) => newest = newer,
            }
        }
        self.current = newest;
    }

    /// A place among the moves in flight, and whether it had to wait for one (`None`: the
    /// limit was closed, as the migrator stops).
    async fn in_flight_permit(&self) -> Option<(tokio::sync::OwnedSemaphorePermit, bool)> {
        match self.in_flight.clone().try_acquire_owned() {
            Ok(permit) => Some((permit, false)),
            Err(_) => {
                let permit = self.in_flight.clone().acquire_owned().await.ok()?;
                Some((permit, true))
            }
        }
    }

    /// Starts each move at its scheduled time; each runs in a task of its own, so slow
    /// live dials overlap. Returns a newer snapshot if one arrived before the batch was
    /// started in full.
    async fn apply(
        &mut self,
        moves: Vec<PlannedMove<H>>,
        ring: &RingSnapshot,
        told: &mut HashMap<ConnectionId, tower_hashring::NodeId>,
    ) -> Option<Arc<RingSnapshot>> {
        for (wanted, planned) in self.schedule(moves, ring) {
            let due = wanted.max(self.next_slot);
            if due > tokio::time::Instant::now() {
                tokio::time::sleep_until(due).await;
            }
            // A move that had to wait for a permit starts late: the budget counts from then,
            // so the wait does not earn a burst after it. (Otherwise from the deadline, so
            // timer rounding never adds up over a batch.)
            let (permit, waited) = self.in_flight_permit().await?;
            if self.ring.has_changed().unwrap_or(false) {
                return Some(self.ring.borrow_and_update().clone());
            }
            told.insert(planned.id, planned.from.clone());
            let started = if waited {
                tokio::time::Instant::now()
            } else {
                due
            };
            self.next_slot = started + self.pacing.next_gap().unwrap_or_default();
            let policy = planned
                .policy
                .unwrap_or_else(|| Arc::new(self.policy.clone()));
            let migration = planned
                .handle
                .migrate(&policy, &planned.from, planned.to.as_ref());
            let (connections, stats, hook) = (
                self.connections.clone(),
                self.stats.clone(),
                self.hook.clone(),
            );
            #[cfg(feature = "metrics")]
            let metrics = self.metrics.clone().inspect(MigrationMetrics::started);
            let ring_version = ring.version();
            let deadline = self.deadline;
            tokio::spawn(async move {
                #[cfg(feature = "metrics")]
                let started = tokio::time::Instant::now();
                let outcome = tokio::time::timeout(deadline, migration)
                    .await
                    .unwrap_or_else(|_| Outcome::Failed(format!("no outcome within {deadline:?}")));
                drop(permit);
                #[cfg(feature = "metrics")]
                if let Some(metrics) = &metrics {
                    metrics.finished(&policy, &outcome, started.elapsed().as_secs_f64());
                }
                if let (Outcome::Moved, MigrationPolicy::Live { .. }, Some(to)) =
                    (&outcome, &*policy, &planned.to)
                {
                    connections
                        .for_migrator()
                        .set_backend(planned.id, to.clone(), ring_version);
                    #[cfg(feature = "metrics")]
                    if let Some(metrics) = &metrics {
                        metrics.moved_live_to(to);
                    }
                }
                stats.count(&outcome);
                hook.on_migration(&MigrationEvent {
                    ring_version,
                    key: &planned.key,
                    from: &planned.from,
                    to: planned.to.as_ref(),
                    policy: &policy,
                    outcome: &outcome,
                });
            });
        }
        None
    }

    /// When each move would start: moves off a departed backend spread over the drain
    /// window, the others at the pacing's rate, both from now; where both are due, the one
    /// pacing budget (`next_slot`) takes them in turn. Deadlines are absolute, so timer
    /// rounding never adds up over a batch.
    fn schedule(
        &self,
        moves: Vec<PlannedMove<H>>,
        ring: &RingSnapshot,
    ) -> Vec<(tokio::time::Instant, PlannedMove<H>)> {
        let start = tokio::time::Instant::now();
        let departed = |m: &PlannedMove<H>| {
            ring.ring()
                .node(m.from.as_str())
                .is_none_or(|node| node.weight() == 0)
        };
        let (drains, changed): (Vec<_>, Vec<_>) = moves.into_iter().partition(departed);
        // The drain never runs faster than the pacing allows.
        let over_window = Pacing::over(self.drain_window, drains.len());
        let drain_pacing = if over_window.gap() > self.pacing.gap() {
            over_window
        } else {
            self.pacing
        };
        let mut timed = Vec::with_capacity(changed.len() + drains.len());
        for (moves, pacing) in [(changed, self.pacing), (drains, drain_pacing)] {
            let mut due = start;
            for (n, planned) in moves.into_iter().enumerate() {
                if n > 0 {
                    due += pacing.next_gap().unwrap_or_default();
                }
                timed.push((due, planned));
            }
        }
        // Stable: equal deadlines keep their order (oldest connection first).
        timed.sort_by_key(|(due, _)| *due);
        timed
    }
}
