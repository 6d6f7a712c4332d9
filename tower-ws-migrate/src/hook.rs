//! Reporting: a hook called for every migration, and running counters.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};

use tower_hashring::NodeId;

use crate::MigrationPolicy;

/// How one migration ended.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// The connection moved: switched live, or told to reconnect under Reconnect.
    Moved,
    /// Live was impossible, so the client was told to reconnect; the reason says why.
    FellBack(String),
    /// It could not be moved; the reason says why (e.g. it had already ended).
    Failed(String),
}

/// One migration, as the hook sees it.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Migration<'a> {
    /// The routing key.
    pub key: &'a [u8],
    /// The backend it left.
    pub from: &'a NodeId,
    /// Its new owner, if the ring has one.
    pub to: Option<&'a NodeId>,
    /// The policy applied.
    pub policy: &'a MigrationPolicy,
    /// How it ended.
    pub outcome: &'a Outcome,
}

/// Called for every migration: logging, metrics, telling a backend to hand state off.
/// Closures `Fn(&Migration<'_>)` implement it.
///
/// ```
/// use tower_ws_migrate::{Migration, MigrationHook};
///
/// fn takes_hook(_: impl MigrationHook) {}
/// takes_hook(|m: &Migration<'_>| println!("{} -> {:?}", m.from, m.to));
/// ```
pub trait MigrationHook: Send + Sync + 'static {
    /// Reports one migration.
    fn on_migration(&self, migration: &Migration<'_>);
}

impl<F> MigrationHook for F
where
    F: Fn(&Migration<'_>) + Send + Sync + 'static,
{
    fn on_migration(&self, migration: &Migration<'_>) {
        self(migration)
    }
}

/// The default hook: does nothing.
impl MigrationHook for () {
    fn on_migration(&self, _: &Migration<'_>) {}
}

/// Running totals of a migrator; cheap to clone, shared.
///
/// ```
/// use tower_ws_migrate::MigrationStats;
///
/// let stats = MigrationStats::default();
/// assert_eq!((stats.moved(), stats.fell_back(), stats.failed()), (0, 0, 0));
/// ```
#[derive(Clone, Debug, Default)]
pub struct MigrationStats {
    inner: Arc<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    moved: AtomicU64,
    fell_back: AtomicU64,
    failed: AtomicU64,
    ring_changes: AtomicU64,
}

impl MigrationStats {
    /// Connections told to move.
    pub fn moved(&self) -> u64 {
        self.inner.moved.load(Ordering::Relaxed)
    }

    /// Connections told to reconnect because a live move was impossible.
    pub fn fell_back(&self) -> u64 {
        self.inner.fell_back.load(Ordering::Relaxed)
    }

    /// Connections that could not be moved.
    pub fn failed(&self) -> u64 {
        self.inner.failed.load(Ordering::Relaxed)
    }

    /// Ring changes handled.
    pub fn ring_changes(&self) -> u64 {
        self.inner.ring_changes.load(Ordering::Relaxed)
    }

    pub(crate) fn count(&self, outcome: &Outcome) {
        let counter = match outcome {
            Outcome::Moved => &self.inner.moved,
            Outcome::FellBack(_) => &self.inner.fell_back,
            Outcome::Failed(_) => &self.inner.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_ring_change(&self) {
        self.inner.ring_changes.fetch_add(1, Ordering::Relaxed);
    }
}
