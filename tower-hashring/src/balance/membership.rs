//! What both balancer forms share: membership, ring publication and candidate selection.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use tower::discover::Change;

use crate::{
    error::{BoxError, MissingKey, NoBackend},
    ring::{LoadFactor, LoadSource, NodeId, Ring, SuccessorCursor, MAX_NODES, MAX_POINTS},
    snapshot::{RingPublisher, RingSnapshot, RingWatch},
    HashScheme, KeyExtractor, MissingKeyPolicy, Node, RoutingKey,
};

/// Gives each discovered node its weight; see [`HashRingLayer::weights`](super::HashRingLayer::weights).
///
/// Implemented for closures `Fn(&NodeId, &S) -> u32`.
///
/// ```
/// use tower_hashring::{balance::NodeWeight, NodeId};
///
/// struct Backend { weight: u32 }
/// let by_field = |_: &NodeId, b: &Backend| b.weight;
/// assert_eq!(by_field.weight(&NodeId::from("a"), &Backend { weight: 3 }), 3);
/// ```
pub trait NodeWeight<S> {
    /// The weight of a node when it is inserted (0 drains it).
    fn weight(&self, id: &NodeId, service: &S) -> u32;
}

impl<S, F: Fn(&NodeId, &S) -> u32> NodeWeight<S> for F {
    fn weight(&self, id: &NodeId, service: &S) -> u32 {
        self(id, service)
    }
}

/// Every node gets weight 1: the default [`NodeWeight`].
///
/// ```
/// use tower_hashring::{balance::{EqualWeight, NodeWeight}, NodeId};
/// assert_eq!(EqualWeight.weight(&NodeId::from("a"), &()), 1);
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct EqualWeight;

impl<S> NodeWeight<S> for EqualWeight {
    fn weight(&self, _: &NodeId, _: &S) -> u32 {
        1
    }
}

/// The members and their weights; rebuilds and publishes the ring once per batch of changes.
#[derive(Debug)]
pub(crate) struct Membership {
    scheme: HashScheme,
    weights: BTreeMap<NodeId, u32>,
    /// The nodes added, removed or re-weighted since the last ring was published.
    dirty: BTreeSet<NodeId>,
    publisher: RingPublisher,
}

/// Up to this many changed nodes, the next ring is made from the last one node by node (one
/// pass over the points each); past it, rebuilt (one sort of all of them).
const INCREMENTAL_CHANGES: usize = 4;

impl Membership {
    pub(crate) fn new(scheme: HashScheme) -> Self {
        Self {
            scheme,
            weights: BTreeMap::new(),
            dirty: BTreeSet::new(),
            publisher: RingPublisher::new(scheme),
        }
    }

    /// Inserts or re-weights a node. Refuses (returns false) a weight that would push the
    /// ring past [`MAX_POINTS`], or a new node past [`MAX_NODES`], keeping the ring buildable.
    pub(crate) fn insert(&mut self, id: NodeId, weight: u32) -> bool {
        if self.weights.len() >= MAX_NODES && !self.weights.contains_key(&id) {
            tracing::warn!(node = %id, "refusing node: the ring holds its limit of {MAX_NODES} members");
            return false;
        }
        let others: u64 = self
            .weights
            .iter()
            .filter(|(k, _)| **k != id)
            .fold(0u64, |sum, (_, &w)| {
                sum.saturating_add(self.scheme.points_for(w))
            });
        if others.saturating_add(self.scheme.points_for(weight)) > MAX_POINTS {
            tracing::warn!(node = %id, weight, "refusing node: its weight exceeds the ring's point limit");
            return false;
        }
        if self.weights.insert(id.clone(), weight) != Some(weight) {
            self.dirty.insert(id);
        }
        true
    }

    pub(crate) fn remove(&mut self, id: &NodeId) {
        if self.weights.remove(id).is_some() {
            self.dirty.insert(id.clone());
        }
    }

    /// Applies a discovery change to the membership and says what the caller's service
    /// store must do with it.
    pub(crate) fn apply<K: Into<NodeId>, S>(
        &mut self,
        change: Change<K, S>,
        weights: &impl NodeWeight<S>,
    ) -> Option<Change<NodeId, S>> {
        match change {
            Change::Insert(key, service) => {
                let id: NodeId = key.into();
                let weight = weights.weight(&id, &service);
                self.insert(id.clone(), weight)
                    .then_some(Change::Insert(id, service))
            }
            Change::Remove(key) => {
                let id: NodeId = key.into();
                self.remove(&id);
                Some(Change::Remove(id))
            }
        }
    }

    /// Rebuilds and publishes the ring if anything changed since the last call.
    pub(crate) fn publish_if_changed(&mut self) -> Option<Arc<RingSnapshot>> {
        self.publish_if_changed_after(|_| {})
    }

    /// Rebuilds the ring if anything changed since the last call, and publishes it to the
    /// subscribers once `prepare` has seen it.
    pub(crate) fn publish_if_changed_after(
        &mut self,
        prepare: impl FnOnce(&Arc<RingSnapshot>),
    ) -> Option<Arc<RingSnapshot>> {
        let dirty = std::mem::take(&mut self.dirty);
        if dirty.is_empty() {
            return None;
        }
        // `insert` keeps the total under the limit, so neither way can fail; keep the last
        // ring rather than panic if that ever changes.
        let ring = if dirty.len() <= INCREMENTAL_CHANGES {
            let last = self.publisher.current();
            let mut ring: Option<Ring> = None;
            for id in &dirty {
                let base = ring.as_ref().unwrap_or(last.ring());
                ring = Some(match self.weights.get(id) {
                    Some(&weight) => base.with_node(id.clone(), weight).ok()?,
                    None => base.without_node(id.as_str()),
                });
            }
            ring?
        } else {
            Ring::builder()
                .scheme(self.scheme)
                .nodes(self.weights.iter().map(|(id, &w)| Node::new(id.clone(), w)))
                .build()
                .ok()?
        };
        let snapshot = self.publisher.publish_after(ring, prepare);
        tracing::debug!(
            version = snapshot.version(),
            nodes = snapshot.ring().nodes().len(),
            "ring changed"
        );
        Some(snapshot)
    }

    pub(crate) fn current(&self) -> Arc<RingSnapshot> {
        self.publisher.current()
    }

    pub(crate) fn subscribe(&self) -> RingWatch {
        self.publisher.subscribe()
    }
}

/// Per-request routing decisions: key extraction, missing-key policy, bounded loads.
pub(crate) struct KeyRouter<E> {
    pub(crate) extractor: E,
    pub(crate) missing_key: MissingKeyPolicy,
    pub(crate) bounded: Option<BoundedLoads>,
    /// Weyl sequence for round-robin positions: successive values are spread evenly.
    next_fallback: AtomicU64,
}

#[derive(Clone)]
pub(crate) struct BoundedLoads {
    pub(crate) factor: LoadFactor,
    pub(crate) loads: Arc<dyn LoadSource + Send + Sync>,
}

/// 2^64 / golden ratio: consecutive multiples cover the ring evenly.
const WEYL_STEP: u64 = 0x9E37_79B9_7F4A_7C15;

impl<E> KeyRouter<E> {
    pub(crate) fn new(extractor: E) -> Self {
        Self {
            extractor,
            missing_key: MissingKeyPolicy::default(),
            bounded: None,
            next_fallback: AtomicU64::new(0),
        }
    }

    /// The nodes to try for a request, in order; fails when the request has no key (under
    /// [`MissingKeyPolicy::Reject`]) or the ring routes nothing.
    pub(crate) fn route<Req>(&self, ring: &Ring, request: &Req) -> Result<Candidates, BoxError>
    where
        E: KeyExtractor<Req>,
    {
        let (key, position) = self.position(ring.scheme(), request)?;
        if ring.is_empty() {
            return Err(NoBackend::new().into());
        }
        Ok(self.candidates(ring, key, position))
    }

    /// A request's key (if it has one) and the ring position it routes to.
    fn position<Req>(
        &self,
        scheme: HashScheme,
        request: &Req,
    ) -> Result<(Option<RoutingKey>, u64), MissingKey>
    where
        E: KeyExtractor<Req>,
    {
        match self.extractor.extract(request) {
            Some(key) => {
                let position = scheme.key_position(key.as_bytes());
                Ok((Some(key), position))
            }
            None => match self.missing_key {
                MissingKeyPolicy::Reject => Err(MissingKey::new()),
                MissingKeyPolicy::RoundRobin => Ok((
                    None,
                    self.next_fallback.fetch_add(WEYL_STEP, Ordering::Relaxed),
                )),
                MissingKeyPolicy::Random => Ok((None, fastrand::u64(..))),
            },
        }
    }

    fn candidates(&self, ring: &Ring, key: Option<RoutingKey>, position: u64) -> Candidates {
        let preferred = self
            .bounded
            .as_ref()
            .and_then(|b| ring.route_bounded_index(position, b.factor, &*b.loads));
        Candidates {
            key,
            position,
            preferred,
            preferred_taken: false,
            cursor: SuccessorCursor::new(ring, position),
        }
    }
}

impl<E: Clone> Clone for KeyRouter<E> {
    fn clone(&self) -> Self {
        Self {
            extractor: self.extractor.clone(),
            missing_key: self.missing_key,
            bounded: self.bounded.clone(),
            next_fallback: AtomicU64::new(self.next_fallback.load(Ordering::Relaxed)),
        }
    }
}

/// The nodes to try for one request, in order: the bounded-loads choice (if any), then the
/// owner and its distinct successors.
#[derive(Debug)]
pub(crate) struct Candidates {
    /// The request's key; `None` for a keyless request routed by the fallback.
    pub(crate) key: Option<RoutingKey>,
    pub(crate) position: u64,
    preferred: Option<usize>,
    preferred_taken: bool,
    cursor: SuccessorCursor,
}

impl Candidates {
    /// The next candidate's index in `ring.nodes()`.
    pub(crate) fn next(&mut self, ring: &Ring) -> Option<usize> {
        if !self.preferred_taken {
            self.preferred_taken = true;
            if self.preferred.is_some() {
                return self.preferred;
            }
        }
        loop {
            let (index, _) = self.cursor.next(ring)?;
            if Some(index) != self.preferred {
                return Some(index);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A member past the node limit is refused, as one past the point limit is, so the ring
    /// stays buildable; the members already there can still be re-weighed or removed.
    #[test]
    fn a_member_past_the_node_limit_is_refused() {
        let mut membership = Membership::new(HashScheme::default());
        // Drained members (weight 0) place no points, so only the count is at stake.
        membership.weights = (0..MAX_NODES)
            .map(|n| (NodeId::from(format!("n{n}")), 0))
            .collect();
        assert!(!membership.insert(NodeId::from("one-more"), 1));
        assert!(!membership.weights.contains_key(&NodeId::from("one-more")));
        assert!(membership.insert(NodeId::from("n7"), 1), "a re-weight");
        membership.remove(&NodeId::from("n8"));
        assert!(membership.insert(NodeId::from("one-more"), 1), "room again");
        assert!(membership.publish_if_changed().is_some(), "the ring builds");
    }
}
