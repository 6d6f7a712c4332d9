//! A tower balancer that routes each request to the owner of its key on a consistent hash
//! ring, driven by a [`Discover`] stream.
//!
//! # Two forms
//!
//! - [`HashRingBalance`] owns the discovery stream and a [`ReadyCache`] of the backends,
//!   like `tower::balance::p2c::Balance`. Build it with [`HashRingLayer`].
//! - [`SharedHashRing`] is `Clone + Send + Sync` and fits `axum::Router::route_service`;
//!   a [`RingDriver`] future drains discovery and publishes routing tables to its clones.
//!
//! # Readiness
//!
//! The key is only known in `call`, so readiness cannot mean "the owner is ready".
//!
//! - `HashRingBalance::poll_ready` drains the discovery stream (rebuilding the ring once per
//!   batch of changes), drives pending backends towards readiness, and returns ready when at
//!   least one backend is ready, or when none can become ready (the ring is empty, or every
//!   backend failed), so that `call` fails at once with [`error::NoBackend`] or
//!   [`error::NoReadyBackend`] instead of waiting. `call` then uses the owner if it is
//!   ready, otherwise the first ready successor, otherwise fails with
//!   [`error::NoReadyBackend`].
//! - `SharedHashRing::poll_ready` is always ready; its response future waits on the owner's
//!   `poll_ready` (backpressure keeps the key on its owner) and moves to the next successor
//!   only if the owner's `poll_ready` fails.
//!
//! Every ring change is published as a versioned [`crate::RingSnapshot`];
//! `subscribe()` on either form returns a [`crate::RingWatch`].

pub mod error;
mod failover;
mod future;
mod layer;
mod membership;
mod shared;

pub use self::{
    failover::{Failover, NoFailover, Route},
    future::ResponseFuture,
    layer::HashRingLayer,
    membership::{EqualWeight, NodeWeight},
    shared::{RingDriver, RouteCandidates, SharedHashRing, SharedResponseFuture},
};

use std::{
    fmt,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use tower::{
    discover::{Change, Discover},
    ready_cache::{error::Failed, ReadyCache},
};
use tower_service::Service;

use self::{
    error::{BoxError, DiscoverError, NoReadyBackend},
    membership::{KeyRouter, Membership},
};
use crate::{HashScheme, KeyExtractor, NodeId, RingSnapshot, RingWatch};

/// Routes each request to the ready owner of its key (or a ready successor) among the
/// services of a [`Discover`] stream; see the [module docs](self) for readiness.
///
/// ```
/// use std::convert::Infallible;
/// use futures_util::stream;
/// use tower::{discover::Change, service_fn, Layer, Service, ServiceExt};
/// use tower_hashring::{HashRingLayer, NodeId};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower_hashring::error::BoxError> {
/// let backend = |name: &'static str| {
///     service_fn(move |user: u32| async move { Ok::<_, Infallible>(format!("{name} has {user}")) })
/// };
/// let discover = stream::iter([
///     Ok::<_, Infallible>(Change::Insert(NodeId::from("a"), backend("a"))),
///     Ok(Change::Insert(NodeId::from("b"), backend("b"))),
/// ]);
/// let by_user = |user: &u32| Some(user.to_string());
/// let mut balance = HashRingLayer::new(by_user).layer(discover);
/// let first = balance.ready().await?.call(7).await?;
/// let again = balance.ready().await?.call(7).await?;
/// assert_eq!(first, again);
/// # Ok(())
/// # }
/// ```
pub struct HashRingBalance<D, E, Req, W = EqualWeight>
where
    D: Discover,
    D::Service: Service<Req>,
{
    discover: D,
    discover_done: bool,
    services: ReadyCache<NodeId, D::Service, Req>,
    membership: Membership,
    snapshot: Arc<RingSnapshot>,
    router: KeyRouter<E>,
    weights: W,
}

impl<D, E, Req, W> HashRingBalance<D, E, Req, W>
where
    D: Discover,
    D::Key: Into<NodeId>,
    D::Service: Service<Req>,
{
    pub(crate) fn from_parts(
        discover: D,
        router: KeyRouter<E>,
        scheme: HashScheme,
        weights: W,
    ) -> Self {
        let membership = Membership::new(scheme);
        Self {
            discover,
            discover_done: false,
            services: ReadyCache::default(),
            snapshot: membership.current(),
            membership,
            router,
            weights,
        }
    }

    /// Subscribes to ring snapshots.
    pub fn subscribe(&self) -> RingWatch {
        self.membership.subscribe()
    }

    /// The ring currently routed on.
    pub fn snapshot(&self) -> &Arc<RingSnapshot> {
        &self.snapshot
    }

    /// The number of backends, ready or not.
    pub fn len(&self) -> usize {
        self.services.len()
    }

    /// Whether discovery has produced no backend yet.
    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    fn drain_discover(&mut self, cx: &mut Context<'_>) -> Result<(), DiscoverError>
    where
        D: Unpin,
        D::Error: Into<BoxError>,
        <D::Service as Service<Req>>::Error: Into<BoxError>,
        W: membership::NodeWeight<D::Service>,
    {
        while !self.discover_done {
            let change = match Pin::new(&mut self.discover).poll_discover(cx) {
                Poll::Pending => break,
                Poll::Ready(None) => {
                    // A finished stream (e.g. a static list) means the membership is final.
                    self.discover_done = true;
                    break;
                }
                Poll::Ready(Some(change)) => change.map_err(|e| DiscoverError::new(e.into()))?,
            };
            match self.membership.apply(change, &self.weights) {
                Some(Change::Insert(id, service)) => self.services.push(id, service),
                Some(Change::Remove(id)) => {
                    self.services.evict(&id);
                }
                None => {}
            }
        }
        if let Some(snapshot) = self.membership.publish_if_changed() {
            self.snapshot = snapshot;
        }
        Ok(())
    }
}

impl<D, E, Req, W> Service<Req> for HashRingBalance<D, E, Req, W>
where
    D: Discover + Unpin,
    D::Key: Into<NodeId>,
    D::Error: Into<BoxError>,
    D::Service: Service<Req>,
    <D::Service as Service<Req>>::Error: Into<BoxError>,
    E: KeyExtractor<Req>,
    W: membership::NodeWeight<D::Service>,
{
    type Response = <D::Service as Service<Req>>::Response;
    type Error = BoxError;
    type Future = ResponseFuture<<D::Service as Service<Req>>::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.drain_discover(cx)?;
        loop {
            match self.services.poll_pending(cx) {
                Poll::Ready(Ok(())) | Poll::Pending => break,
                Poll::Ready(Err(Failed(id, error))) => {
                    // Evicted from the cache but kept on the ring: its keys fail over to
                    // successors until discovery inserts it again.
                    tracing::debug!(node = %id, %error, "backend failed");
                }
            }
        }
        // Pending only while some backend may still become ready: with none ready or
        // pending (all failed), nothing would wake us, so let `call` fail instead.
        let waiting = self.services.ready_len() == 0 && self.services.pending_len() > 0;
        if self.snapshot.ring().is_empty() || !waiting {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let ring = self.snapshot.ring();
        let mut candidates = match self.router.route(ring, &request) {
            Ok(candidates) => candidates,
            Err(error) => return ResponseFuture::failed(error),
        };
        let mut tried = 0;
        while let Some(node) = candidates.next(ring) {
            tried += 1;
            if let Some((index, _, _)) = self.services.get_ready(ring.nodes()[node].id()) {
                return ResponseFuture::called(self.services.call_ready_index(index, request));
            }
        }
        ResponseFuture::failed(NoReadyBackend::new(tried, None))
    }
}

impl<D, E, Req, W> fmt::Debug for HashRingBalance<D, E, Req, W>
where
    D: Discover,
    D::Service: Service<Req>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HashRingBalance")
            .field("backends", &self.services.len())
            .field("ready", &self.services.ready_len())
            .field("ring_version", &self.snapshot.version())
            .field("missing_key", &self.router.missing_key)
            .finish_non_exhaustive()
    }
}
