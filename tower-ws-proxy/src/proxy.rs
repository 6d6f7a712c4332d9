//! The keyed reverse proxy: routes each request and WebSocket to its key's owner on the ring.

use std::{
    convert::Infallible,
    fmt,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Body;
use tower_hashring::{KeyExtractor, SharedHashRing};
use tower_layer::Layer;
use tower_service::Service;

use crate::{
    BoxError, ConnectionHandle, LiveConnections, ProxyBody, ProxyFailover, RelayConfig,
    RelayHandle, Upstream, WebSocketFuture, WebSocketLayer, WebSocketProxy,
};

/// The whole proxy in one service: [`WebSocketLayer`] over the ring of [`Upstream`]s with
/// the [`ProxyFailover`] policy, i.e.
/// `WebSocketLayer::new(connections, relay).layer(ring.failover(ProxyFailover))`.
///
/// Every request goes to the owner of its key: ordinary HTTP is forwarded, WebSocket
/// upgrades are handshaken with the backend and then relayed frame-aware. A request goes on
/// to the owner's successors only when nothing of it reached a backend's application and it
/// can be sent again ([`ProxyFailover`]). Errors become responses (see [`WebSocketProxy`]),
/// so it drops into hyper or `axum::Router` as is.
///
/// ```
/// use std::convert::Infallible;
///
/// use futures_util::stream;
/// use tower::discover::Change;
/// use tower_hashring::{HashRingLayer, HttpKey, NodeId};
/// use tower_ws_proxy::{HashRingProxy, LiveConnections, RelayConfig, Upstream, UpstreamConfig};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let backends = stream::iter([Ok::<_, Infallible>(Change::Insert(
///     NodeId::from("a"),
///     Upstream::new("127.0.0.1:7100", UpstreamConfig::default()),
/// ))]);
/// let key = HttpKey::new().path("/connect/{userId}")?;
/// let (ring, driver) = HashRingLayer::new(key).shared(backends);
/// tokio::spawn(driver);
/// let proxy = HashRingProxy::new(ring, LiveConnections::new(10_000), RelayConfig::default());
/// assert!(proxy.connections().is_empty());
/// # Ok(())
/// # }
/// ```
pub struct HashRingProxy<E, H = RelayHandle> {
    ring: SharedHashRing<Upstream, E>,
    inner: WebSocketProxy<SharedHashRing<Upstream, E, ProxyFailover>, H>,
}

impl<E, H> Clone for HashRingProxy<E, H> {
    fn clone(&self) -> Self {
        Self {
            ring: self.ring.clone(),
            inner: self.inner.clone(),
        }
    }
}

impl<E, H> HashRingProxy<E, H> {
    /// A proxy over the backends of `ring`, tracking WebSockets in `connections`.
    pub fn new(
        ring: SharedHashRing<Upstream, E>,
        connections: LiveConnections<H>,
        relay: RelayConfig,
    ) -> Self {
        let inner =
            WebSocketLayer::new(connections, relay).layer(ring.clone().failover(ProxyFailover));
        Self { ring, inner }
    }

    /// The live WebSocket connections.
    pub fn connections(&self) -> &LiveConnections<H> {
        self.inner.connections()
    }

    /// The ring service routed through.
    pub fn ring(&self) -> &SharedHashRing<Upstream, E> {
        &self.ring
    }
}

impl<E, H> fmt::Debug for HashRingProxy<E, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HashRingProxy")
            .field("ring", &self.ring)
            .field("connections", self.inner.connections())
            .finish_non_exhaustive()
    }
}

/// A plain-text response with a reason.
pub fn text_response(status: StatusCode, reason: impl Into<String>) -> Response<ProxyBody> {
    let mut body = reason.into();
    body.push('\n');
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(
            Full::new(Bytes::from(body))
                .map_err(|e| match e {})
                .boxed_unsync(),
        )
        .unwrap_or_else(|_| Response::new(ProxyBody::default()))
}

impl<E, H, B> Service<Request<B>> for HashRingProxy<E, H>
where
    H: ConnectionHandle,
    E: KeyExtractor<Request<ProxyBody>> + Send + Sync + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = WebSocketFuture<SharedHashRing<Upstream, E, ProxyFailover>, H>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Service::<Request<B>>::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        self.inner.call(request)
    }
}
