use std::{
    collections::HashMap,
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use pin_project_lite::pin_project;
use tokio::sync::watch;
use tower::discover::{Change, Discover};
use tower_service::Service;

use super::{
    error::{BoxError, DiscoverError, NoBackend, NoReadyBackend},
    failover::{Failover, NoFailover, Route},
    membership::{Candidates, KeyRouter, Membership, NodeWeight},
};
use crate::{HashScheme, KeyExtractor, NodeId, RingSnapshot, RingWatch, RoutingKey};

/// One ring version with the backend service of each of its nodes.
struct RouteTable<S> {
    snapshot: Arc<RingSnapshot>,
    /// Indexed like `snapshot.ring().nodes()`.
    services: Box<[Option<S>]>,
}

/// The `Clone + Send + Sync` form of the balancer: every clone routes on the latest table
/// published by its [`RingDriver`], so it drops into `axum::Router::route_service`.
///
/// Backend services must be `Clone` (as hyper clients are); each request calls a clone of
/// its owner's service. See the [module docs](super) for readiness.
///
/// ```
/// use std::convert::Infallible;
/// use axum::{body::Body, error_handling::HandleErrorLayer, http::Request, Router};
/// use futures_util::stream;
/// use tower::{discover::Change, service_fn, ServiceBuilder};
/// use tower_hashring::{error::{http_status, BoxError}, HashRingLayer, HttpKey, NodeId};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let backend = |name: &'static str| {
///     service_fn(move |_: Request<Body>| async move { Ok::<_, Infallible>(name.to_owned()) })
/// };
/// let discover = stream::iter([
///     Ok::<_, Infallible>(Change::Insert(NodeId::from("a"), backend("a"))),
///     Ok(Change::Insert(NodeId::from("b"), backend("b"))),
/// ]);
/// let key = HttpKey::new().path("/users/{id}")?;
/// let (ring_service, driver) = HashRingLayer::new(key).shared(discover);
/// tokio::spawn(driver);
///
/// // Balancer errors become responses: 400 for a missing key, 503 for no backend.
/// let app: Router = Router::new().route_service(
///     "/users/{id}",
///     ServiceBuilder::new()
///         .layer(HandleErrorLayer::new(|error: BoxError| async move {
///             (http_status(&*error), error.to_string())
///         }))
///         .service(ring_service),
/// );
/// # let _ = app;
/// # Ok(())
/// # }
/// ```
pub struct SharedHashRing<S, E, F = NoFailover> {
    routes: watch::Receiver<Arc<RouteTable<S>>>,
    snapshots: RingWatch,
    router: Arc<KeyRouter<E>>,
    failover: F,
}

impl<S, E> SharedHashRing<S, E> {
    fn from_parts(
        routes: watch::Receiver<Arc<RouteTable<S>>>,
        snapshots: RingWatch,
        router: Arc<KeyRouter<E>>,
    ) -> Self {
        Self {
            routes,
            snapshots,
            router,
            failover: NoFailover,
        }
    }
}

impl<S, E, F> SharedHashRing<S, E, F> {
    /// The same ring with the failover policy `policy`: which failed calls go on to the next
    /// backend, and how the chosen backend is told to the request (see [`Failover`]).
    pub fn failover<G>(self, policy: G) -> SharedHashRing<S, E, G> {
        SharedHashRing {
            routes: self.routes,
            snapshots: self.snapshots,
            router: self.router,
            failover: policy,
        }
    }

    /// Subscribes to ring snapshots.
    pub fn subscribe(&self) -> RingWatch {
        self.snapshots.clone()
    }

    /// The latest published ring.
    pub fn snapshot(&self) -> Arc<RingSnapshot> {
        self.routes.borrow().snapshot.clone()
    }

    /// The service of backend `id` in the latest published table, if it is a member (e.g.
    /// to dial a connection's new owner).
    pub fn service(&self, id: &NodeId) -> Option<S>
    where
        S: Clone,
    {
        let table = self.routes.borrow();
        let index = table.snapshot.ring().node_index(id.as_str())?;
        table.services.get(index)?.clone()
    }

    /// The backends to try for a request, in order (bounded-loads choice, owner, distinct
    /// successors), for callers that retry on their own, e.g. a proxy that can only replay a
    /// WebSocket handshake by rebuilding it. Fails like `call` does: [`MissingKey`] or
    /// [`NoBackend`].
    ///
    /// [`MissingKey`]: super::error::MissingKey
    pub fn candidates<Req>(&self, request: &Req) -> Result<RouteCandidates<S>, BoxError>
    where
        E: KeyExtractor<Req>,
    {
        let table = self.routes.borrow().clone();
        let candidates = self.router.route(table.snapshot.ring(), request)?;
        Ok(RouteCandidates {
            walk: Walk {
                table,
                candidates,
                tried: 0,
            },
        })
    }
}

/// The backends to try for one request, in order; see [`SharedHashRing::candidates`].
pub struct RouteCandidates<S> {
    walk: Walk<S>,
}

impl<S> RouteCandidates<S> {
    /// The version of the ring snapshot these candidates come from: a connection routed with
    /// them belongs to that ring (a migration layer checks it against newer ones).
    pub fn ring_version(&self) -> u64 {
        self.walk.table.snapshot.version()
    }

    /// The ring position the request routed to (its key's, or the fallback's for a keyless
    /// request).
    pub fn key_position(&self) -> u64 {
        self.walk.candidates.position
    }

    /// The request's key; `None` for a keyless request routed by the fallback policy.
    pub fn key(&self) -> Option<&RoutingKey> {
        self.walk.candidates.key.as_ref()
    }
}

impl<S: Clone> Iterator for RouteCandidates<S> {
    type Item = (NodeId, S);

    fn next(&mut self) -> Option<(NodeId, S)> {
        self.walk.next_node()
    }
}

impl<S> fmt::Debug for RouteCandidates<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteCandidates")
            .field("ring_version", &self.walk.table.snapshot.version())
            .finish_non_exhaustive()
    }
}

impl<S, E, F: Clone> Clone for SharedHashRing<S, E, F> {
    fn clone(&self) -> Self {
        Self {
            routes: self.routes.clone(),
            snapshots: self.snapshots.clone(),
            router: self.router.clone(),
            failover: self.failover.clone(),
        }
    }
}

impl<S, E, F> fmt::Debug for SharedHashRing<S, E, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedHashRing")
            .field("ring_version", &self.routes.borrow().snapshot.version())
            .field("missing_key", &self.router.missing_key)
            .finish_non_exhaustive()
    }
}

impl<S, E, F, Req> Service<Req> for SharedHashRing<S, E, F>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    E: KeyExtractor<Req>,
    F: Failover<Req, S::Error>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = SharedResponseFuture<S, Req, F>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let table = self.routes.borrow().clone();
        let failover = self.failover.clone();
        let mut walk = match self.router.route(table.snapshot.ring(), &request) {
            Ok(candidates) => Walk {
                candidates,
                table,
                tried: 0,
            },
            Err(error) => return SharedResponseFuture::failed(error, failover),
        };
        match walk.next() {
            Some((node, service)) => SharedResponseFuture {
                state: SharedState::Readying {
                    service,
                    node,
                    request: Some(request),
                },
                walk: Some(walk),
                failover,
                replay: None,
            },
            None => SharedResponseFuture::failed(NoBackend::new(), failover),
        }
    }
}

struct Walk<S> {
    table: Arc<RouteTable<S>>,
    candidates: Candidates,
    tried: usize,
}

impl<S: Clone> Walk<S> {
    /// The next backend to try, counted as tried.
    fn next(&mut self) -> Option<(NodeId, S)> {
        let next = self.next_node()?;
        self.tried += 1;
        Some(next)
    }

    fn next_node(&mut self) -> Option<(NodeId, S)> {
        let ring = self.table.snapshot.ring();
        loop {
            let index = self.candidates.next(ring)?;
            if let Some(service) = &self.table.services[index] {
                return Some((ring.nodes()[index].id().clone(), service.clone()));
            }
        }
    }

    fn route(&self, node: NodeId) -> Route {
        Route::new(
            node,
            self.candidates.position,
            self.table.snapshot.version(),
        )
        .with_key(self.candidates.key.clone())
    }
}

pin_project! {
    /// The response future of [`SharedHashRing`]: waits for the owner's readiness, fails over
    /// to successors whose `poll_ready` does not fail, then calls; a failed call goes on to
    /// the next successor where the [`Failover`] policy allows.
    pub struct SharedResponseFuture<S, Req, F = NoFailover>
    where
        S: Service<Req>,
    {
        #[pin]
        state: SharedState<S, Req>,
        walk: Option<Walk<S>>,
        failover: F,
        // The copy of the request in flight, for the next backend should the call fail.
        replay: Option<Req>,
    }
}

pin_project! {
    #[project = SharedStateProj]
    enum SharedState<S, Req>
    where
        S: Service<Req>,
    {
        Readying { service: S, node: NodeId, request: Option<Req> },
        Calling { #[pin] future: S::Future },
        Failed { error: Option<BoxError> },
    }
}

impl<S: Service<Req>, Req, F> SharedResponseFuture<S, Req, F> {
    fn failed(error: impl Into<BoxError>, failover: F) -> Self {
        Self {
            state: SharedState::Failed {
                error: Some(error.into()),
            },
            walk: None,
            failover,
            replay: None,
        }
    }
}

impl<S, Req, F> Future for SharedResponseFuture<S, Req, F>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    F: Failover<Req, S::Error>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                SharedStateProj::Calling { future } => {
                    let error = match future.poll(cx) {
                        Poll::Ready(Err(error)) => error,
                        other => return other.map_err(Into::into),
                    };
                    let next = match this.replay.take() {
                        Some(replay) if this.failover.fails_over(&error) => this
                            .walk
                            .as_mut()
                            .and_then(Walk::next)
                            .map(|(node, service)| (node, service, replay)),
                        _ => None,
                    };
                    let Some((node, service, request)) = next else {
                        return Poll::Ready(Err(error.into()));
                    };
                    this.state.set(SharedState::Readying {
                        service,
                        node,
                        request: Some(request),
                    });
                }
                SharedStateProj::Failed { error } => {
                    return Poll::Ready(Err(error
                        .take()
                        .expect("SharedResponseFuture polled after completion")));
                }
                SharedStateProj::Readying {
                    service,
                    node,
                    request,
                } => {
                    let error = match service.poll_ready(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Ok(())) => {
                            let mut request = request
                                .take()
                                .expect("SharedResponseFuture polled after completion");
                            // The copy is taken before the route is recorded on the request:
                            // the next backend records its own.
                            *this.replay = this.failover.replay(&request);
                            if let Some(walk) = this.walk.as_ref() {
                                let route = walk.route(node.clone());
                                this.failover.on_route(&mut request, &route);
                            }
                            let future = service.call(request);
                            this.state.set(SharedState::Calling { future });
                            continue;
                        }
                        Poll::Ready(Err(error)) => error.into(),
                    };
                    let request = request.take();
                    let next = this.walk.as_mut().and_then(Walk::next);
                    let next_state = match next {
                        Some((node, service)) => SharedState::Readying {
                            service,
                            node,
                            request,
                        },
                        None => SharedState::Failed {
                            error: Some(Box::new(NoReadyBackend::new(
                                this.walk.as_ref().map_or(1, |w| w.tried),
                                Some(error),
                            ))),
                        },
                    };
                    this.state.set(next_state);
                }
            }
        }
    }
}

impl<S: Service<Req>, Req, F> fmt::Debug for SharedResponseFuture<S, Req, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedResponseFuture")
            .finish_non_exhaustive()
    }
}

/// Drains a [`Discover`] stream and publishes routing tables to a [`SharedHashRing`].
///
/// Resolves when the stream ends (the service keeps routing on the last table) or fails
/// with [`DiscoverError`]. Created by [`HashRingLayer::shared`](super::HashRingLayer::shared).
pub struct RingDriver<D: Discover, W> {
    discover: D,
    membership: Membership,
    services: HashMap<NodeId, D::Service>,
    routes: watch::Sender<Arc<RouteTable<D::Service>>>,
    /// A service was replaced or removed since the last table, even if the ring is the same.
    services_changed: bool,
    weights: W,
}

impl<D, W> RingDriver<D, W>
where
    D: Discover,
    D::Key: Into<NodeId>,
    D::Service: Clone,
{
    pub(crate) fn new<E>(
        discover: D,
        router: KeyRouter<E>,
        scheme: HashScheme,
        weights: W,
    ) -> (SharedHashRing<D::Service, E>, Self) {
        let membership = Membership::new(scheme);
        let (routes, receiver) = watch::channel(Arc::new(RouteTable {
            snapshot: membership.current(),
            services: Box::default(),
        }));
        let service =
            SharedHashRing::from_parts(receiver, membership.subscribe(), Arc::new(router));
        let driver = Self {
            discover,
            membership,
            services: HashMap::new(),
            routes,
            services_changed: false,
            weights,
        };
        (service, driver)
    }

    fn publish_if_changed(&mut self) {
        let (services, routes) = (&self.services, &self.routes);
        let send_table = |snapshot: &Arc<RingSnapshot>| {
            let table = snapshot
                .ring()
                .nodes()
                .iter()
                .map(|node| services.get(node.id()).cloned())
                .collect();
            let snapshot = snapshot.clone();
            routes.send_replace(Arc::new(RouteTable {
                snapshot,
                services: table,
            }));
        };
        // The table first, then the snapshot's subscribers: one that hears of a new member
        // (the migrator, to dial it for the connections it now owns) finds its service.
        if self
            .membership
            .publish_if_changed_after(send_table)
            .is_none()
            && self.services_changed
        {
            send_table(&self.membership.current());
        }
        self.services_changed = false;
    }
}

impl<D, W> Future for RingDriver<D, W>
where
    D: Discover + Unpin,
    D::Key: Into<NodeId>,
    D::Error: Into<BoxError>,
    D::Service: Clone,
    W: NodeWeight<D::Service>,
{
    type Output = Result<(), DiscoverError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        loop {
            let change = match Pin::new(&mut this.discover).poll_discover(cx) {
                Poll::Pending => {
                    this.publish_if_changed();
                    return Poll::Pending;
                }
                Poll::Ready(None) => {
                    this.publish_if_changed();
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(Some(Err(error))) => {
                    this.publish_if_changed();
                    return Poll::Ready(Err(DiscoverError::new(error.into())));
                }
                Poll::Ready(Some(Ok(change))) => change,
            };
            match this.membership.apply(change, &this.weights) {
                Some(Change::Insert(id, service)) => {
                    this.services.insert(id, service);
                    this.services_changed = true;
                }
                Some(Change::Remove(id)) => {
                    this.services_changed |= this.services.remove(&id).is_some();
                }
                None => {}
            }
        }
    }
}

// The driver never pins its backends or weights, only the stream, which must be `Unpin`.
impl<D: Discover + Unpin, W> Unpin for RingDriver<D, W> {}

impl<D: Discover, W> fmt::Debug for RingDriver<D, W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RingDriver")
            .field("backends", &self.services.len())
            .field("ring_version", &self.membership.current().version())
            .finish()
    }
}
