//! Reporting: a hook called for every migration, and running counters.

use std::{
    fmt,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use tower_hashring::NodeId;

use crate::MigrationPolicy;

/// How one migration ended.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// The connection moved: switched live, or told to reconnect under Reconnect.
    Moved,
    /// Live was impossible, so the client was told to reconnect.
    FellBack(Fallback),
    /// It could not be moved; the reason says why (e.g. it had already ended).
    Failed(String),
}

/// Why a live move fell back to Reconnect: the kind (counted) and the details (logged).
///
/// ```
/// use tower_ws_migrate::{Fallback, FallbackKind};
///
/// let fallback = Fallback::new(FallbackKind::DialFailed, "dialing b: connection refused");
/// assert_eq!(fallback.to_string(), "dialing b: connection refused");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fallback {
    /// What went wrong.
    pub kind: FallbackKind,
    /// The details.
    pub detail: String,
}

impl Fallback {
    /// A fallback of `kind`.
    pub fn new(kind: FallbackKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for Fallback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.detail)
    }
}

/// The kinds of [`Fallback`], each counted by [`MigrationStats`].
///
/// ```
/// use tower_ws_migrate::FallbackKind;
///
/// assert_eq!(FallbackKind::StatefulExtension.as_str(), "stateful_extension");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FallbackKind {
    /// The new owner could not be dialed (refused, timed out, failed the exchange).
    DialFailed,
    /// The new owner answered the handshake with something other than 101.
    Refused,
    /// The new owner negotiated another subprotocol than the client has.
    ProtocolMismatch,
    /// A negotiated extension keeps state across messages (permessage-deflate with context
    /// takeover), which a new backend could not continue.
    StatefulExtension,
    /// The old backend closed in the middle of a message.
    Interrupted,
    /// The new ring is empty, or has no service for the new owner, or the handle cannot dial.
    NoNewOwner,
    /// The client stayed inside a message (a fragment without FIN, then silence) for the
    /// whole switch timeout: there was no boundary to switch at.
    NoBoundary,
}

impl FallbackKind {
    /// Every kind, in a fixed order.
    pub const ALL: [FallbackKind; 7] = [
        FallbackKind::DialFailed,
        FallbackKind::Refused,
        FallbackKind::ProtocolMismatch,
        FallbackKind::StatefulExtension,
        FallbackKind::Interrupted,
        FallbackKind::NoNewOwner,
        FallbackKind::NoBoundary,
    ];

    /// A stable snake-case name (for metrics and JSON).
    pub fn as_str(self) -> &'static str {
        match self {
            FallbackKind::DialFailed => "dial_failed",
            FallbackKind::Refused => "refused",
            FallbackKind::ProtocolMismatch => "protocol_mismatch",
            FallbackKind::StatefulExtension => "stateful_extension",
            FallbackKind::Interrupted => "interrupted",
            FallbackKind::NoNewOwner => "no_new_owner",
            FallbackKind::NoBoundary => "no_boundary",
        }
    }

    fn index(self) -> usize {
        Self::ALL.iter().position(|k| *k == self).unwrap_or(0)
    }
}

/// One migration, as the hook sees it.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct MigrationEvent<'a> {
    /// The version of the ring the connection moves for.
    pub ring_version: u64,
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
/// Closures `Fn(&MigrationEvent<'_>)` implement it.
///
/// ```
/// use tower_ws_migrate::{MigrationEvent, MigrationHook};
///
/// fn takes_hook(_: impl MigrationHook) {}
/// takes_hook(|m: &MigrationEvent<'_>| println!("{} -> {:?}", m.from, m.to));
/// ```
pub trait MigrationHook: Send + Sync + 'static {
    /// Reports one migration.
    fn on_migration(&self, migration: &MigrationEvent<'_>);
}

impl<F> MigrationHook for F
where
    F: Fn(&MigrationEvent<'_>) + Send + Sync + 'static,
{
    fn on_migration(&self, migration: &MigrationEvent<'_>) {
        self(migration)
    }
}

/// The default hook: does nothing.
impl MigrationHook for () {
    fn on_migration(&self, _: &MigrationEvent<'_>) {}
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
    fell_back_by_kind: [AtomicU64; FallbackKind::ALL.len()],
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

    /// Live moves that fell back to Reconnect for this kind of reason.
    pub fn fell_back_for(&self, kind: FallbackKind) -> u64 {
        self.inner.fell_back_by_kind[kind.index()].load(Ordering::Relaxed)
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
            Outcome::FellBack(fallback) => {
                self.inner.fell_back_by_kind[fallback.kind.index()].fetch_add(1, Ordering::Relaxed);
                &self.inner.fell_back
            }
            Outcome::Failed(_) => &self.inner.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_ring_change(&self) {
        self.inner.ring_changes.fetch_add(1, Ordering::Relaxed);
    }
}
