//! The layer that makes every proxied WebSocket movable by a migrator.

use std::{
    fmt,
    sync::Arc,
    task::{Context, Poll},
};

use http::{request, Request};
use tower_hashring::SharedHashRing;
use tower_layer::Layer;
use tower_service::Service;

use tower_ws_proxy::{LiveConnections, MakeHandle, OpenedConnection, Upstream};

use crate::{MigrationPolicy, MigrationSecret, Migrator, ProxiedConnection, UpstreamLookup};

/// Makes every WebSocket that the proxy below it establishes movable: the proxy registers
/// each one in its [`LiveConnections`] as a [`ProxiedConnection`] (the request head to dial
/// a new owner with, the negotiated subprotocol, the route's policy, the signing secret),
/// under the key, backend and ring version the balancer routed it by, so a [`Migrator`]
/// over the same live connections can move it.
///
/// It works through the [`MakeHandle`] request extension. A route gets its own
/// [`MigrationPolicy`] from its own layer ([`policy`](Self::policy)) or from a
/// [`RoutePolicy`] that looks at the request ([`route_policy`](Self::route_policy)).
///
/// ```
/// use std::convert::Infallible;
/// use axum::{body::Body, Router};
/// use tower::Layer;
/// use tower_hashring::NodeId;
/// use tower_ws_migrate::{MigrateLayer, MigrationPolicy};
/// use tower_ws_proxy::Upstream;
///
/// let no_upstreams = |_: &NodeId| -> Option<Upstream> { None };
/// let live = MigrateLayer::new(no_upstreams).policy(MigrationPolicy::live());
/// // In front of the proxy; here a stand-in service.
/// let proxy = tower::service_fn(|_: http::Request<Body>| async {
///     Ok::<_, Infallible>(http::Response::new(Body::empty()))
/// });
/// let app: Router = Router::new().route_service("/connect/{userId}", live.layer(proxy));
/// # let _ = app;
/// ```
#[derive(Clone)]
pub struct MigrateLayer {
    make: MakeHandle<ProxiedConnection>,
    upstreams: Arc<dyn UpstreamLookup>,
    policy: Arc<dyn RoutePolicy>,
    secret: Option<MigrationSecret>,
}

impl MigrateLayer {
    /// Connections through this layer move live to the service `upstreams` finds for their
    /// new owner. The migrator's policy applies unless [`policy`](Self::policy) sets this
    /// route's own.
    pub fn new(upstreams: impl UpstreamLookup) -> Self {
        Self::build(Arc::new(upstreams), Arc::new(()), None)
    }

    /// The layer and its migrator over `ring` and the proxy's live `connections`: one
    /// call, the way `HashRingLayer::shared` returns the service and its driver. Spawn the
    /// migrator (after setting its pacing and default policy); put the layer in front of
    /// the proxy that registers in `connections`.
    ///
    /// ```
    /// use futures_util::stream;
    /// use tower::discover::Change;
    /// use tower_hashring::{HashRingLayer, HttpKey, NodeId};
    /// use tower_ws_migrate::{MigrateLayer, MigrationPolicy, Pacing};
    /// use tower_ws_proxy::{LiveConnections, RelayConfig, Upstream, WebSocketLayer};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tower_hashring::InvalidKeyPattern> {
    /// let key = HttpKey::new().path("/connect/{userId}")?;
    /// let members = stream::empty::<Result<Change<NodeId, Upstream>, std::convert::Infallible>>();
    /// let (ring, driver) = HashRingLayer::new(key).shared(members);
    /// let connections = LiveConnections::with_limit(10_000);
    /// let (migrate, migrator) = MigrateLayer::from_ring(&ring, &connections);
    /// let migrate = migrate.policy(MigrationPolicy::live());
    /// let websockets = WebSocketLayer::new(connections, RelayConfig::default());
    /// tokio::spawn(driver);
    /// tokio::spawn(migrator.pacing(Pacing::per_second(500)).run());
    /// # let _ = (migrate, websockets);
    /// # Ok(()) }
    /// ```
    pub fn from_ring<E>(
        ring: &SharedHashRing<Upstream, E>,
        connections: &LiveConnections<ProxiedConnection>,
    ) -> (Self, Migrator<ProxiedConnection>)
    where
        E: Send + Sync + 'static,
    {
        let migrator = Migrator::new(connections.clone(), ring.subscribe());
        (Self::new(ring.clone()), migrator)
    }

    /// What this layer puts in each request to make its connection's handle: also what
    /// makes the handles of connections resumed after an upgrade
    /// (`tower_ws_proxy::Resumer::resume`), with the same policy and signing.
    pub fn make_handle(&self) -> MakeHandle<ProxiedConnection> {
        self.make.clone()
    }

    /// The policy of every connection through this layer.
    pub fn policy(self, policy: MigrationPolicy) -> Self {
        self.route_policy(Arc::new(policy))
    }

    /// Chooses each connection's policy from its request (e.g. by path).
    pub fn route_policy(self, policy: impl RoutePolicy) -> Self {
        Self::build(self.upstreams, Arc::new(policy), self.secret)
    }

    /// Signs every live move with `secret` ([`MIGRATION_SIGNATURE`](crate::MIGRATION_SIGNATURE)),
    /// so backends can check that `x-wscluster-migrated-from` came from a gateway.
    pub fn secret(self, secret: MigrationSecret) -> Self {
        Self::build(self.upstreams, self.policy, Some(secret))
    }

    fn build(
        upstreams: Arc<dyn UpstreamLookup>,
        policy: Arc<dyn RoutePolicy>,
        secret: Option<MigrationSecret>,
    ) -> Self {
        let make = {
            let (upstreams, policy, secret) = (upstreams.clone(), policy.clone(), secret.clone());
            MakeHandle::new(move |opened: &OpenedConnection<'_>| {
                let connection = ProxiedConnection::new(
                    opened.handle.clone(),
                    opened.request,
                    opened.response_headers,
                    upstreams.clone(),
                )
                .with_policy(policy.policy(opened.request));
                match (&secret, opened.key) {
                    (Some(secret), Some(key)) => connection.signed(key.as_bytes(), secret.clone()),
                    (Some(secret), None) => connection.signed(b"", secret.clone()),
                    (None, _) => connection,
                }
            })
        };
        Self {
            make,
            upstreams,
            policy,
            secret,
        }
    }
}

impl fmt::Debug for MigrateLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MigrateLayer")
            .field("signed", &self.secret.is_some())
            .finish_non_exhaustive()
    }
}

impl<S> Layer<S> for MigrateLayer {
    type Service = MigrateService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MigrateService {
            inner,
            make: self.make.clone(),
        }
    }
}

/// The service of [`MigrateLayer`]: puts the [`MakeHandle`] of movable connections into each
/// request's extensions, then calls the proxy.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::convert::Infallible;
/// use tower::{Layer, ServiceExt};
/// use tower_hashring::NodeId;
/// use tower_ws_migrate::{MigrateLayer, ProxiedConnection};
/// use tower_ws_proxy::{MakeHandle, Upstream};
///
/// let layer = MigrateLayer::new(|_: &NodeId| -> Option<Upstream> { None });
/// let service = layer.layer(tower::service_fn(|request: http::Request<()>| async move {
///     let make = request.extensions().get::<MakeHandle<ProxiedConnection>>();
///     Ok::<_, Infallible>(make.is_some())
/// }));
/// assert!(service.oneshot(http::Request::new(())).await?);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct MigrateService<S> {
    inner: S,
    make: MakeHandle<ProxiedConnection>,
}

impl<S> MigrateService<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps it.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: fmt::Debug> fmt::Debug for MigrateService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MigrateService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, B> Service<Request<B>> for MigrateService<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        request.extensions_mut().insert(self.make.clone());
        self.inner.call(request)
    }
}

/// Chooses the [`MigrationPolicy`] of a connection from the request that opened it; `None`
/// leaves it to the migrator's.
///
/// Implemented by closures `Fn(&request::Parts) -> Option<MigrationPolicy>`, by
/// `Arc<MigrationPolicy>` (the same for every request) and by `()` (always the migrator's).
///
/// ```
/// use tower_ws_migrate::{MigrationPolicy, RoutePolicy};
///
/// let by_path = |request: &http::request::Parts| {
///     request.uri.path().starts_with("/game/").then(MigrationPolicy::reconnect)
/// };
/// let (parts, ()) = http::Request::get("/game/7").body(()).unwrap().into_parts();
/// assert_eq!(by_path.policy(&parts).as_deref(), Some(&MigrationPolicy::reconnect()));
/// ```
pub trait RoutePolicy: Send + Sync + 'static {
    /// The policy for the connection `request` opened.
    fn policy(&self, request: &request::Parts) -> Option<Arc<MigrationPolicy>>;
}

impl<F> RoutePolicy for F
where
    F: Fn(&request::Parts) -> Option<MigrationPolicy> + Send + Sync + 'static,
{
    fn policy(&self, request: &request::Parts) -> Option<Arc<MigrationPolicy>> {
        self(request).map(Arc::new)
    }
}

impl RoutePolicy for Arc<MigrationPolicy> {
    fn policy(&self, _: &request::Parts) -> Option<Arc<MigrationPolicy>> {
        Some(self.clone())
    }
}

impl RoutePolicy for () {
    fn policy(&self, _: &request::Parts) -> Option<Arc<MigrationPolicy>> {
        None
    }
}
