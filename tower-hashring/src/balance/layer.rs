use std::{fmt, marker::PhantomData, sync::Arc};

use tower::discover::Discover;
use tower_layer::Layer;

use super::{
    membership::{BoundedLoads, EqualWeight, KeyRouter},
    shared::{RingDriver, SharedHashRing},
    HashRingBalance,
};
use crate::{HashScheme, KeyExtractor, LoadFactor, LoadSource, MissingKeyPolicy, NodeId};

/// Configures a hash-ring balancer and wraps a [`Discover`] stream into one.
///
/// [`Layer::layer`] gives the owned [`HashRingBalance`]; [`HashRingLayer::shared`] gives the
/// `Clone + Send + Sync` [`SharedHashRing`] and the [`RingDriver`] to spawn.
///
/// ```
/// use std::convert::Infallible;
/// use futures_util::stream;
/// use http::Request;
/// use tower::{discover::Change, service_fn, Layer, ServiceBuilder, ServiceExt};
/// use tower_hashring::{HashRingLayer, HttpKey, MissingKeyPolicy, NodeId};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower_hashring::error::BoxError> {
/// let backend = |name: &'static str| {
///     service_fn(move |_: Request<()>| async move { Ok::<_, Infallible>(name) })
/// };
/// let discover = stream::iter([
///     Ok::<_, Infallible>(Change::Insert(NodeId::from("a"), backend("a"))),
///     Ok(Change::Insert(NodeId::from("b"), backend("b"))),
/// ]);
/// let balance = ServiceBuilder::new()
///     .layer(HashRingLayer::new(HttpKey::new().query("userId")).missing_key(MissingKeyPolicy::Reject))
///     .service(discover);
/// let answer = balance.oneshot(Request::get("/send?userId=42").body(()).unwrap()).await?;
/// assert!(answer == "a" || answer == "b");
/// # Ok(())
/// # }
/// ```
pub struct HashRingLayer<E, W = EqualWeight, Req = ()> {
    router: KeyRouter<E>,
    scheme: HashScheme,
    weights: W,
    _request: PhantomData<fn(Req)>,
}

impl<E, Req> HashRingLayer<E, EqualWeight, Req> {
    /// A layer routing by the keys `extractor` finds, with equal weights, the default
    /// [`HashScheme`] and [`MissingKeyPolicy::Reject`].
    pub fn new(extractor: E) -> Self {
        Self {
            router: KeyRouter::new(extractor),
            scheme: HashScheme::default(),
            weights: EqualWeight,
            _request: PhantomData,
        }
    }
}

impl<E, W, Req> HashRingLayer<E, W, Req> {
    /// Sets the hash scheme.
    pub fn scheme(mut self, scheme: HashScheme) -> Self {
        self.scheme = scheme;
        self
    }

    /// Sets what happens to requests without a key.
    pub fn missing_key(mut self, policy: MissingKeyPolicy) -> Self {
        self.router.missing_key = policy;
        self
    }

    /// Prefers, for each key, the first node clockwise whose load is under its bounded-loads
    /// capacity (see [`Ring::route_bounded`](crate::Ring::route_bounded)); the owner and its
    /// successors follow as failover candidates.
    pub fn bounded_loads(
        mut self,
        factor: LoadFactor,
        loads: Arc<dyn LoadSource + Send + Sync>,
    ) -> Self {
        self.router.bounded = Some(BoundedLoads { factor, loads });
        self
    }

    /// Sets how discovered services are weighted (e.g. `|_, backend| backend.weight`).
    pub fn weights<W2>(self, weights: W2) -> HashRingLayer<E, W2, Req> {
        HashRingLayer {
            router: self.router,
            scheme: self.scheme,
            weights,
            _request: PhantomData,
        }
    }
}

// The shared form serves any request type, so `Req` plays no part: fixing it to `()` here
// lets `HashRingLayer::new(key).shared(discover)` infer it.
impl<E, W> HashRingLayer<E, W, ()> {
    /// Builds the `Clone + Send + Sync` form and the driver that feeds it from `discover`.
    /// Spawn the driver (e.g. `tokio::spawn(driver)`); the service routes on the last ring
    /// the driver published.
    pub fn shared<D>(self, discover: D) -> (SharedHashRing<D::Service, E>, RingDriver<D, W>)
    where
        D: Discover,
        D::Key: Into<NodeId>,
        D::Service: Clone,
    {
        RingDriver::new(discover, self.router, self.scheme, self.weights)
    }
}

impl<D, E, W, Req> Layer<D> for HashRingLayer<E, W, Req>
where
    D: Discover,
    D::Key: Into<NodeId>,
    E: KeyExtractor<Req> + Clone,
    W: Clone,
    D::Service: tower_service::Service<Req>,
{
    type Service = HashRingBalance<D, E, Req, W>;

    fn layer(&self, discover: D) -> Self::Service {
        HashRingBalance::from_parts(
            discover,
            self.router.clone(),
            self.scheme,
            self.weights.clone(),
        )
    }
}

impl<E: Clone, W: Clone, Req> Clone for HashRingLayer<E, W, Req> {
    fn clone(&self) -> Self {
        Self {
            router: self.router.clone(),
            scheme: self.scheme,
            weights: self.weights.clone(),
            _request: PhantomData,
        }
    }
}

impl<E, W, Req> fmt::Debug for HashRingLayer<E, W, Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HashRingLayer")
            .field("scheme", &self.scheme)
            .field("missing_key", &self.router.missing_key)
            .finish_non_exhaustive()
    }
}
