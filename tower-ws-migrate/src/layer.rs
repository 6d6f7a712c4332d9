//! The layer that registers every proxied WebSocket for migration.

use std::{
    fmt,
    sync::Arc,
    task::{Context, Poll},
};

use http::{request, Request};
use tower_hashring::{KeyExtractor, SharedHashRing};
use tower_layer::Layer;
use tower_service::Service;

use tower_ws_proxy::{ObserveConnections, OpenedConnection, Upstream};

use crate::{
    MigrationPolicy, MigrationSecret, Migrator, ProxiedConnection, Registry, UpstreamLookup,
};

/// Takes a connection's routing key from its request head.
type KeyFn = Arc<dyn Fn(&Request<()>) -> Option<Vec<u8>> + Send + Sync>;

/// Registers every WebSocket that the proxy below it establishes in a [`Registry`], under
/// its key, backend and ring version, until its relay ends, so a [`Migrator`] can move it.
///
/// It works through the [`ObserveConnections`] request extension, which
/// `tower_ws_proxy::HashRingProxy` reports each new WebSocket to. A route gets its own
/// [`MigrationPolicy`] from its own layer ([`policy`](Self::policy)) or from a
/// [`RoutePolicy`] that looks at the request ([`route_policy`](Self::route_policy)).
///
/// [`Migrator`]: crate::Migrator
///
/// ```
/// use std::convert::Infallible;
/// use axum::{body::Body, Router};
/// use tower::Layer;
/// use tower_hashring::{HttpKey, NodeId};
/// use tower_ws_migrate::{MigrateLayer, MigrationPolicy, Registry};
/// use tower_ws_proxy::Upstream;
///
/// let registry = Registry::new();
/// let key = HttpKey::new().path("/connect/{userId}")?;
/// let no_upstreams = |_: &NodeId| -> Option<Upstream> { None };
/// let live = MigrateLayer::new(registry.clone(), key, no_upstreams)
///     .policy(MigrationPolicy::live());
/// // In front of the proxy; here a stand-in service.
/// let proxy = tower::service_fn(|_: http::Request<Body>| async {
///     Ok::<_, Infallible>(http::Response::new(Body::empty()))
/// });
/// let app: Router = Router::new().route_service("/connect/{userId}", live.layer(proxy));
/// # let _ = app;
/// # Ok::<(), tower_hashring::InvalidKeyPattern>(())
/// ```
#[derive(Clone)]
pub struct MigrateLayer {
    observe: ObserveConnections,
    registry: Registry<ProxiedConnection>,
    key: KeyFn,
    upstreams: Arc<dyn UpstreamLookup>,
    policy: Arc<dyn RoutePolicy>,
    secret: Option<MigrationSecret>,
}

impl MigrateLayer {
    /// Registers connections in `registry` under the key `key` takes from their request;
    /// `upstreams` finds a new owner's service for live moves. The migrator's policy applies
    /// unless [`policy`](Self::policy) sets this route's own.
    pub fn new<K>(
        registry: Registry<ProxiedConnection>,
        key: K,
        upstreams: impl UpstreamLookup,
    ) -> Self
    where
        K: KeyExtractor<Request<()>> + Send + Sync + 'static,
    {
        let key = Arc::new(move |request: &Request<()>| {
            key.extract(request).map(|k| k.as_bytes().to_vec())
        });
        Self::build(registry, key, Arc::new(upstreams), Arc::new(()), None)
    }

    /// The layer and its migrator over `ring`, with a registry of their own: one call, the
    /// way `HashRingLayer::shared` returns the service and its driver. Spawn the migrator
    /// (after setting its pacing and default policy); put the layer in front of the proxy.
    ///
    /// ```
    /// use futures_util::stream;
    /// use tower::discover::Change;
    /// use tower_hashring::{HashRingLayer, HttpKey, NodeId};
    /// use tower_ws_migrate::{MigrateLayer, MigrationPolicy, Pacing};
    /// use tower_ws_proxy::Upstream;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tower_hashring::InvalidKeyPattern> {
    /// let key = HttpKey::new().path("/connect/{userId}")?;
    /// let members = stream::empty::<Result<Change<NodeId, Upstream>, std::convert::Infallible>>();
    /// let (ring, driver) = HashRingLayer::new(key.clone()).shared(members);
    /// let (migrate, migrator) = MigrateLayer::from_ring(key, &ring);
    /// let migrate = migrate.policy(MigrationPolicy::live());
    /// tokio::spawn(driver);
    /// tokio::spawn(migrator.pacing(Pacing::per_second(500)).run());
    /// # let _ = migrate;
    /// # Ok(()) }
    /// ```
    pub fn from_ring<K, E>(
        key: K,
        ring: &SharedHashRing<Upstream, E>,
    ) -> (Self, Migrator<ProxiedConnection>)
    where
        K: KeyExtractor<Request<()>> + Send + Sync + 'static,
        E: Send + Sync + 'static,
    {
        let registry = Registry::new();
        let migrator = Migrator::new(registry.clone(), ring.subscribe());
        (Self::new(registry, key, ring.clone()), migrator)
    }

    /// The policy of every connection through this layer.
    pub fn policy(self, policy: MigrationPolicy) -> Self {
        self.route_policy(Arc::new(policy))
    }

    /// Chooses each connection's policy from its request (e.g. by path).
    pub fn route_policy(self, policy: impl RoutePolicy) -> Self {
        let policy: Arc<dyn RoutePolicy> = Arc::new(policy);
        Self::build(self.registry, self.key, self.upstreams, policy, self.secret)
    }

    /// Signs every live move with `secret` ([`MIGRATION_SIGNATURE`](crate::MIGRATION_SIGNATURE)),
    /// so backends can check that `x-wscluster-migrated-from` came from a gateway.
    pub fn secret(self, secret: MigrationSecret) -> Self {
        Self::build(
            self.registry,
            self.key,
            self.upstreams,
            self.policy,
            Some(secret),
        )
    }

    fn build(
        registry: Registry<ProxiedConnection>,
        key: KeyFn,
        upstreams: Arc<dyn UpstreamLookup>,
        policy: Arc<dyn RoutePolicy>,
        secret: Option<MigrationSecret>,
    ) -> Self {
        let observe = {
            let (registry, key, upstreams) = (registry.clone(), key.clone(), upstreams.clone());
            let (policy, secret) = (policy.clone(), secret.clone());
            ObserveConnections::new(move |opened: &OpenedConnection<'_>| {
                let request = Request::from_parts(opened.request.clone(), ());
                let key = key(&request).unwrap_or_default();
                let (parts, ()) = request.into_parts();
                let policy = policy.policy(&parts);
                let mut connection = ProxiedConnection::new(
                    opened.handle.clone(),
                    parts,
                    opened.response_headers,
                    upstreams.clone(),
                );
                if let Some(secret) = &secret {
                    connection = connection.signed(&key, secret.clone());
                }
                registry.register_with_policy(
                    &key,
                    opened.key_position,
                    opened.backend.clone(),
                    opened.ring_version,
                    policy,
                    connection,
                )
            })
        };
        Self {
            observe,
            registry,
            key,
            upstreams,
            policy,
            secret,
        }
    }
}

impl fmt::Debug for MigrateLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MigrateLayer")
            .field("registry", &self.registry)
            .finish_non_exhaustive()
    }
}

impl<S> Layer<S> for MigrateLayer {
    type Service = MigrateService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MigrateService {
            inner,
            observe: self.observe.clone(),
        }
    }
}

/// The service of [`MigrateLayer`]: puts the registering observer into each request's
/// extensions, then calls the proxy.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::convert::Infallible;
/// use tower::{Layer, ServiceExt};
/// use tower_hashring::{HttpKey, NodeId};
/// use tower_ws_migrate::{MigrateLayer, Registry};
/// use tower_ws_proxy::{ObserveConnections, Upstream};
///
/// let layer = MigrateLayer::new(Registry::new(), HttpKey::new().query("userId"), |_: &NodeId| -> Option<Upstream> { None });
/// let service = layer.layer(tower::service_fn(|request: http::Request<()>| async move {
///     Ok::<_, Infallible>(request.extensions().get::<ObserveConnections>().is_some())
/// }));
/// assert!(service.oneshot(http::Request::new(())).await?);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct MigrateService<S> {
    inner: S,
    observe: ObserveConnections,
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
        request.extensions_mut().insert(self.observe.clone());
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
