//! The migrator: follows the ring's snapshots and moves the affected connections, paced.

use std::{collections::HashSet, fmt, sync::Arc};

use tower_hashring::{RingSnapshot, RingWatch};

use crate::{
    plan, ConnectionId, Migrate, Migration, MigrationHook, MigrationPolicy, MigrationStats,
    Outcome, Pacing, Registry,
};

/// Moves the connections of a [`Registry`] whose owner changed, on every new ring snapshot.
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
/// use tower_ws_migrate::{Migrator, Pacing, Registry};
/// use tower_ws_proxy::RelayHandle;
///
/// let (_ring_tx, ring) = watch::channel(Arc::new(RingSnapshot::initial(HashScheme::default())));
/// let registry: Registry<RelayHandle> = Registry::new();
/// let migrator = Migrator::new(registry, ring).pacing(Pacing::per_second(200));
/// # let _ = migrator;
/// ```
pub struct Migrator<H> {
    registry: Registry<H>,
    ring: RingWatch,
    // The ring the registered connections were placed on: advanced only when a batch
    // finishes, so a batch cut short by a newer ring is planned again in full.
    current: Arc<RingSnapshot>,
    policy: MigrationPolicy,
    pacing: Pacing,
    hook: Arc<dyn MigrationHook>,
    stats: MigrationStats,
}

impl<H> fmt::Debug for Migrator<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Migrator")
            .field("registry", &self.registry)
            .field("policy", &self.policy)
            .field("pacing", &self.pacing)
            .finish_non_exhaustive()
    }
}

impl<H> Migrator<H>
where
    H: Migrate + Clone + Send + 'static,
{
    /// A migrator over `registry`, following `ring`; Reconnect with 1012 and the default
    /// pacing.
    /// The snapshot current now is the starting point: changes after this call are migrated.
    pub fn new(registry: Registry<H>, mut ring: RingWatch) -> Self {
        let current = ring.borrow_and_update().clone();
        Self {
            registry,
            ring,
            current,
            policy: MigrationPolicy::default(),
            pacing: Pacing::default(),
            hook: Arc::new(()),
            stats: MigrationStats::default(),
        }
    }

    /// The policy applied to affected connections.
    pub fn policy(mut self, policy: MigrationPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// How fast connections are moved.
    pub fn pacing(mut self, pacing: Pacing) -> Self {
        self.pacing = pacing;
        self
    }

    /// Called for every migration.
    pub fn hook(mut self, hook: impl MigrationHook) -> Self {
        self.hook = Arc::new(hook);
        self
    }

    /// The counters, shared with the running migrator.
    pub fn stats(&self) -> MigrationStats {
        self.stats.clone()
    }

    /// Runs until the ring's sender is dropped.
    pub async fn run(mut self) {
        while self.ring.changed().await.is_ok() {
            let mut newest = self.ring.borrow_and_update().clone();
            // Connections already told to move in this round are not told twice.
            let mut told = HashSet::new();
            loop {
                self.stats.count_ring_change();
                let mut moves = plan(&self.registry, &self.current, &newest);
                moves.retain(|m| !told.contains(&m.id));
                tracing::debug!(
                    version = newest.version(),
                    affected = moves.len(),
                    "ring changed"
                );
                match self.apply(moves, &mut told).await {
                    None => break,
                    // A newer ring arrived mid-batch: what is left is planned against it.
                    Some(newer) => newest = newer,
                }
            }
            self.current = newest;
        }
    }

    /// Moves each connection in turn, paced. Returns a newer snapshot if one arrived before
    /// the batch finished.
    async fn apply(
        &mut self,
        moves: Vec<crate::PlannedMove<H>>,
        told: &mut HashSet<ConnectionId>,
    ) -> Option<Arc<RingSnapshot>> {
        // Deadlines from the batch's start, so timer rounding never adds up over a batch.
        let mut due = tokio::time::Instant::now();
        for (n, planned) in moves.into_iter().enumerate() {
            if n > 0 {
                if let Some(gap) = self.pacing.next_gap() {
                    due += gap;
                    tokio::time::sleep_until(due).await;
                }
            }
            if self.ring.has_changed().unwrap_or(false) {
                return Some(self.ring.borrow_and_update().clone());
            }
            told.insert(planned.id);
            let outcome = match planned.handle.migrate(&self.policy) {
                Ok(()) => Outcome::Moved,
                Err(reason) => Outcome::Failed(reason),
            };
            self.stats.count(&outcome);
            self.hook.on_migration(&Migration {
                key: &planned.key,
                from: &planned.from,
                to: planned.to.as_ref(),
                policy: &self.policy,
                outcome: &outcome,
            });
        }
        None
    }
}
