//! Versioned, immutable ring snapshots published to other layers.

use std::sync::Arc;

use tokio::sync::watch;

use crate::{HashScheme, Ring, RingDiff};

/// One version of the ring, as published by the balancer after each membership change.
///
/// Versions start at 0 (the empty ring) and grow by one per published change.
///
/// ```
/// use tower_hashring::{HashScheme, Ring, RingSnapshot};
///
/// let first = RingSnapshot::initial(HashScheme::default());
/// assert_eq!(first.version(), 0);
/// assert!(first.ring().is_empty());
/// let next = first.next(Ring::builder().node("a", 1).build()?);
/// assert_eq!(next.version(), 1);
/// assert_eq!(first.diff(&next).ranges().len(), 1);
/// # Ok::<(), tower_hashring::RingError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RingSnapshot {
    version: u64,
    ring: Ring,
}

impl RingSnapshot {
    /// Version 0: an empty ring.
    pub fn initial(scheme: HashScheme) -> Self {
        Self {
            version: 0,
            ring: Ring::empty(scheme),
        }
    }

    /// The snapshot after this one, holding `ring`.
    pub fn next(&self, ring: Ring) -> Self {
        Self {
            version: self.version + 1,
            ring,
        }
    }

    /// The version number.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The ring.
    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    /// The positions whose owner changed from this snapshot to `newer`.
    pub fn diff(&self, newer: &RingSnapshot) -> RingDiff {
        RingDiff::between(&self.ring, &newer.ring)
    }
}

/// Receives every new [`RingSnapshot`]; cheap to clone, one per subscriber.
///
/// A `tokio::sync::watch` receiver: `borrow()` reads the latest snapshot, `changed().await`
/// waits for the next one. Intermediate versions can be skipped by a slow subscriber,
/// so diff the snapshot you last acted on against the latest one.
pub type RingWatch = watch::Receiver<Arc<RingSnapshot>>;

/// Publishes snapshots; shared by both balancer forms.
#[derive(Debug)]
pub(crate) struct RingPublisher {
    sender: watch::Sender<Arc<RingSnapshot>>,
}

impl RingPublisher {
    pub(crate) fn new(scheme: HashScheme) -> Self {
        Self {
            sender: watch::Sender::new(Arc::new(RingSnapshot::initial(scheme))),
        }
    }

    pub(crate) fn current(&self) -> Arc<RingSnapshot> {
        self.sender.borrow().clone()
    }

    /// Publishes the snapshot after `ring`, once `prepare` has seen it: what subscribers
    /// may look up when they hear of it must be in place first.
    pub(crate) fn publish_after(
        &self,
        ring: Ring,
        prepare: impl FnOnce(&Arc<RingSnapshot>),
    ) -> Arc<RingSnapshot> {
        let snapshot = Arc::new(self.current().next(ring));
        prepare(&snapshot);
        self.sender.send_replace(snapshot.clone());
        snapshot
    }

    pub(crate) fn subscribe(&self) -> RingWatch {
        self.sender.subscribe()
    }
}
