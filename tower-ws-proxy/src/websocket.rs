//! The WebSocket proxy layer: above any service that answers a WebSocket upgrade with a
//! `101` carrying the backend's socket (an [`Upstream`](crate::Upstream), or the balancer
//! over them), it relays the upgraded connection; ordinary requests pass through.

use std::{
    convert::Infallible,
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::{body::Body, upgrade::OnUpgrade};
use hyper_util::rt::TokioIo;
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_hashring::{
    balance::{Failover, Route},
    error::http_status,
    NodeId,
};
use tower_layer::Layer;
use tower_service::Service;
use tracing::Instrument;

use crate::{
    check_upgrade, is_websocket_upgrade, metrics::HandshakeResult, relay, strip_internal_headers,
    tcp_peer, BoxError, ConnectionHandle, LiveConnections, MakeHandle, OpenedConnection, Peer,
    ProxyBody, ProxyMetrics, Registered, RelayCommands, RelayConfig, RelayHandle, RelayOutcome,
    UpstreamError, UpstreamSocket,
};

/// Relays WebSockets that the service below it upgraded; see [`WebSocketProxy`].
///
/// ```
/// use tower_layer::Layer;
/// use tower_ws_proxy::{LiveConnections, RelayConfig, Upstream, UpstreamConfig, WebSocketLayer};
///
/// let layer = WebSocketLayer::new(LiveConnections::new(10_000), RelayConfig::default());
/// let proxy = layer.layer(Upstream::new("127.0.0.1:7100", UpstreamConfig::default()));
/// # let _ = proxy;
/// ```
pub struct WebSocketLayer<H = RelayHandle> {
    connections: LiveConnections<H>,
    relay: RelayConfig,
    metrics: Option<ProxyMetrics>,
}

impl<H> WebSocketLayer<H> {
    /// Registers the WebSockets in `connections` (their cap, their records for migration,
    /// their shutdown) and relays them with `relay`'s deadlines and limits.
    pub fn new(connections: LiveConnections<H>, relay: RelayConfig) -> Self {
        Self {
            connections,
            relay,
            metrics: None,
        }
    }

    /// Counts handshakes, their latency, and WebSockets opened and closed in `metrics`.
    pub fn metrics(mut self, metrics: ProxyMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }
}

impl<H> Clone for WebSocketLayer<H> {
    fn clone(&self) -> Self {
        Self {
            connections: self.connections.clone(),
            relay: self.relay,
            metrics: self.metrics.clone(),
        }
    }
}

impl<H> fmt::Debug for WebSocketLayer<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebSocketLayer")
            .field("connections", &self.connections)
            .field("relay", &self.relay)
            .finish()
    }
}

impl<S, H> Layer<S> for WebSocketLayer<H> {
    type Service = WebSocketProxy<S, H>;

    fn layer(&self, inner: S) -> WebSocketProxy<S, H> {
        WebSocketProxy {
            inner,
            connections: self.connections.clone(),
            relay: self.relay,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service of [`WebSocketLayer`].
///
/// For a WebSocket upgrade it first checks the handshake (400, or 426 for another version)
/// and takes a place in the connection cap (503 past it), then calls the service below. A
/// `101` with an [`UpstreamSocket`] is returned to the client, the connection is registered
/// in [`LiveConnections`] under the [`Route`] the balancer recorded (key, ring position and
/// version, backend) with the handle the request's [`MakeHandle`] makes (or
/// [`ConnectionHandle::plain`]), and the two connections are relayed frame-aware (on the
/// raw socket where the server gives it back, otherwise over hyper's `Upgraded`). Ordinary requests pass through. Errors become responses: 400 (no
/// key), 503 (no backend), 502 (no backend answered; the body names none, the log does).
/// Client headers in the gateway's own `x-wscluster-*` namespace are dropped.
///
/// ```
/// use tower_layer::Layer;
/// use tower_ws_proxy::{LiveConnections, RelayConfig, Upstream, UpstreamConfig, WebSocketLayer};
///
/// let proxy = WebSocketLayer::new(LiveConnections::new(100), RelayConfig::default())
///     .layer(Upstream::new("127.0.0.1:7100", UpstreamConfig::default()));
/// assert!(proxy.connections().is_empty());
/// ```
pub struct WebSocketProxy<S, H = RelayHandle> {
    inner: S,
    connections: LiveConnections<H>,
    relay: RelayConfig,
    metrics: Option<ProxyMetrics>,
}

impl<S: Clone, H> Clone for WebSocketProxy<S, H> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            connections: self.connections.clone(),
            relay: self.relay,
            metrics: self.metrics.clone(),
        }
    }
}

impl<S, H> WebSocketProxy<S, H> {
    /// The live WebSocket connections.
    pub fn connections(&self) -> &LiveConnections<H> {
        &self.connections
    }

    /// The service below.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The service below, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The service below.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, H> fmt::Debug for WebSocketProxy<S, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebSocketProxy")
            .field("connections", &self.connections)
            .finish_non_exhaustive()
    }
}

/// The response future of [`WebSocketProxy`].
pub type WebSocketFuture =
    Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>>;

impl<S, H, B> Service<Request<B>> for WebSocketProxy<S, H>
where
    H: ConnectionHandle,
    S: Service<Request<ProxyBody>, Response = Response<ProxyBody>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = WebSocketFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The service below is made ready in the response future (clone, then ready).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request<B>) -> WebSocketFuture {
        strip_internal_headers(request.headers_mut());
        let inner = self.inner.clone();
        if !is_websocket_upgrade(&request) {
            let request: Request<ProxyBody> =
                request.map(|body| body.map_err(Into::into).boxed_unsync());
            let answer = oneshot(inner, request);
            return Box::pin(async move {
                Ok(match answer.await {
                    Ok(response) => response,
                    Err(error) => error_response(&*error, "no backend answered"),
                })
            });
        }
        let started = Instant::now();
        let metrics = self.metrics.clone();
        let count = move |metrics: &Option<ProxyMetrics>, result| {
            if let Some(metrics) = metrics {
                metrics.handshake(result, started);
            }
        };
        if let Err(refusal) = check_upgrade(&request) {
            count(&metrics, HandshakeResult::bad_request);
            return Box::pin(std::future::ready(Ok(refusal.into_response())));
        }
        let admission = match self.connections.admit() {
            Ok(admission) => admission,
            Err(refusal) => {
                count(&metrics, HandshakeResult::refused);
                let response =
                    crate::text_response(StatusCode::SERVICE_UNAVAILABLE, refusal.to_string());
                return Box::pin(std::future::ready(Ok(response)));
            }
        };
        let client_upgrade = hyper::upgrade::on(&mut request);
        let (parts, _) = request.into_parts();
        // The head as the client sent it, for the handle a layer above makes (a migration
        // layer dials a new owner with it); the request itself goes down.
        let head = parts.clone();
        let request = Request::from_parts(parts, ProxyBody::default());
        let (connections, config) = (self.connections.clone(), self.relay);
        let answer = oneshot(inner, request);
        Box::pin(async move {
            let mut response = match answer.await {
                Ok(response) => response,
                Err(error) => {
                    let response = error_response(&*error, "no backend accepted the websocket");
                    count(
                        &metrics,
                        match response.status() {
                            StatusCode::BAD_GATEWAY => HandshakeResult::failed,
                            _ => HandshakeResult::no_backend,
                        },
                    );
                    return Ok(response);
                }
            };
            let Some(upstream) = response
                .extensions_mut()
                .remove::<UpstreamSocket>()
                .and_then(|socket| socket.take())
            else {
                // The backend's own answer (a 4xx is its verdict on this request).
                count(&metrics, HandshakeResult::backend_answered);
                return Ok(response);
            };
            count(&metrics, HandshakeResult::upgraded);
            let route = response
                .extensions_mut()
                .remove::<Route>()
                .unwrap_or_else(|| Route::new(NodeId::from("-"), 0, 0));
            let (relay_handle, commands) = RelayHandle::new();
            let opened = OpenedConnection {
                request: &head,
                response_headers: response.headers(),
                backend: &route.node,
                key: route.key.as_ref(),
                key_position: route.key_position,
                ring_version: route.ring_version,
                handle: &relay_handle,
            };
            let handle = match head.extensions.get::<MakeHandle<H>>() {
                Some(make) => make.make(&opened),
                None => H::plain(&opened),
            };
            let key = route.key.as_ref().map_or(&b""[..], |k| k.as_bytes());
            let registration = connections
                .register(
                    key,
                    route.key_position,
                    route.node.clone(),
                    route.ring_version,
                    handle,
                )
                .holding(admission);
            let commands = commands.counting(registration.traffic());
            // Everything the relay logs carries the connection's key, backend and request id.
            let span = tracing::info_span!(
                "websocket",
                key = route.key.as_ref().map(|k| k.as_str()),
                backend = %route.node,
                request_id = head
                    .headers
                    .get("x-request-id")
                    .and_then(|id| id.to_str().ok()),
            );
            drop(head);
            if let Some(metrics) = &metrics {
                metrics.opened(&route.node);
            }
            let task = RelayTask {
                stage: Stage::Upgrading {
                    upgrade: client_upgrade,
                    relay: Some((upstream, config, commands)),
                    start: relay::<tokio::net::TcpStream>,
                },
                registration: Some(registration),
                metrics,
                backend: route.node,
                started,
            };
            tokio::spawn(task.instrument(span));
            Ok(response)
        })
    }
}

type RelayArgs = (Peer, RelayConfig, RelayCommands);

pin_project! {
    /// A proxied WebSocket's task: it waits for the client's upgrade, relays, then counts
    /// the close and leaves the registry. A named future rather than an `async` block,
    /// which would keep the upstream socket, the config and the commands twice (as its
    /// captures and inside the relay): every idle connection would pay for that.
    struct RelayTask<F, H> {
        #[pin]
        stage: Stage<F>,
        registration: Option<Registered<H>>,
        metrics: Option<ProxyMetrics>,
        backend: NodeId,
        started: Instant,
    }
}

pin_project! {
    #[project = StageProj]
    enum Stage<F> {
        Upgrading {
            upgrade: OnUpgrade,
            relay: Option<RelayArgs>,
            start: fn(Peer, Peer, RelayConfig, RelayCommands) -> F,
        },
        // The fast path: the raw socket, halves without a lock.
        Raw { #[pin] relay: F },
        // A server that wraps the socket (axum::serve, hyper-util's auto builder): the
        // generic path over the upgraded connection, boxed since it is the rarer one.
        Wrapped { relay: Pin<Box<dyn Future<Output = RelayOutcome> + Send>> },
    }
}

impl<F: Future<Output = RelayOutcome>> Future for Stage<F> {
    /// `None`: the client's upgrade failed.
    type Output = Option<RelayOutcome>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<RelayOutcome>> {
        loop {
            let next = match self.as_mut().project() {
                StageProj::Upgrading {
                    upgrade,
                    relay: args,
                    start,
                } => {
                    let upgraded = std::task::ready!(Pin::new(upgrade).poll(cx));
                    let Some((upstream, config, commands)) = args.take() else {
                        return Poll::Ready(None);
                    };
                    match upgraded.map(tcp_peer) {
                        Ok(Ok(client)) => Stage::Raw {
                            relay: start(client, upstream, config, commands),
                        },
                        Ok(Err(upgraded)) => {
                            let client = Peer::new(TokioIo::new(upgraded));
                            Stage::Wrapped {
                                relay: Box::pin(relay(client, upstream, config, commands)),
                            }
                        }
                        Err(error) => {
                            tracing::debug!(%error, "client upgrade failed");
                            return Poll::Ready(None);
                        }
                    }
                }
                StageProj::Raw { relay } => return relay.poll(cx).map(Some),
                StageProj::Wrapped { relay } => return relay.as_mut().poll(cx).map(Some),
            };
            self.set(next);
        }
    }
}

impl<F: Future<Output = RelayOutcome>, H> Future for RelayTask<F, H> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        if let Some(outcome) = std::task::ready!(this.stage.poll(cx)) {
            tracing::debug!(backend = %this.backend, ?outcome, "websocket closed");
            if let Some(metrics) = this.metrics {
                metrics.closed(this.started.elapsed());
            }
        }
        // Out of the registry (and its cap) as soon as the relay ends.
        this.registration.take();
        Poll::Ready(())
    }
}

type Answer = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, BoxError>> + Send>>;

/// Readies `service`, then calls it. A named future, not an `async` block: the compiler
/// cannot prove an `async` block holding `S::Future` to be `Send` (its lifetimes are erased
/// there), but it can for this type.
fn oneshot<S>(service: S, request: Request<ProxyBody>) -> Answer
where
    S: Service<Request<ProxyBody>, Response = Response<ProxyBody>> + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
{
    Box::pin(Oneshot::NotReady {
        service,
        request: Some(request),
    })
}

pin_project! {
    #[project = OneshotProj]
    enum Oneshot<S, Req>
    where
        S: Service<Req>,
    {
        NotReady { service: S, request: Option<Req> },
        Called { #[pin] future: S::Future },
    }
}

impl<S, Req> Future for Oneshot<S, Req>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            match self.as_mut().project() {
                OneshotProj::NotReady { service, request } => {
                    if let Err(error) = std::task::ready!(service.poll_ready(cx)) {
                        return Poll::Ready(Err(error.into()));
                    }
                    let request = request.take().expect("Oneshot polled after completion");
                    let future = service.call(request);
                    self.set(Oneshot::Called { future });
                }
                OneshotProj::Called { future } => return future.poll(cx).map_err(Into::into),
            }
        }
    }
}

/// A balancer's own errors say what is wrong with the request or the ring; anything else
/// came from a backend, and goes to the log only.
fn error_response(error: &(dyn std::error::Error + 'static), public: &str) -> Response<ProxyBody> {
    match http_status(error) {
        StatusCode::BAD_GATEWAY => {
            tracing::warn!(%error, "{public}");
            crate::text_response(StatusCode::BAD_GATEWAY, public)
        }
        status => crate::text_response(status, error.to_string()),
    }
}

/// The failover policy of the proxy's balancer: a request goes on to the next backend only
/// when nothing of it reached a backend's application (the connect failed or timed out, the
/// WebSocket handshake timed out or was answered with a 5xx), and only if it can be sent
/// again: a WebSocket upgrade, or a request whose body is known to be empty. The chosen
/// backend is recorded in the request's extensions ([`Route`]), for the relay's bookkeeping.
///
/// ```
/// use tower_hashring::balance::Failover;
/// use tower_ws_proxy::{ProxyBody, ProxyFailover, UpstreamError};
///
/// let request = http::Request::get("/count?userId=1").body(ProxyBody::default()).unwrap();
/// assert!(ProxyFailover.replay(&request).is_some(), "no body: it can be sent again");
/// assert!(ProxyFailover.fails_over(&UpstreamError::HandshakeTimeout));
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct ProxyFailover;

impl Failover<Request<ProxyBody>, UpstreamError> for ProxyFailover {
    /// The method, URI, version and headers of a request without a body. Not its
    /// extensions: an [`Upstream`](crate::Upstream) reads none but the [`Route`], which
    /// [`on_route`](Failover::on_route) sets on the copy again (and copying them is most of
    /// the cost of a copy made for every handshake).
    fn replay(&self, request: &Request<ProxyBody>) -> Option<Request<ProxyBody>> {
        if request.body().size_hint().exact() != Some(0) {
            return None;
        }
        let mut copy = Request::new(ProxyBody::default());
        *copy.method_mut() = request.method().clone();
        *copy.uri_mut() = request.uri().clone();
        *copy.version_mut() = request.version();
        *copy.headers_mut() = request.headers().clone();
        Some(copy)
    }

    fn fails_over(&self, error: &UpstreamError) -> bool {
        matches!(
            error,
            UpstreamError::Connect(_)
                | UpstreamError::HandshakeTimeout
                | UpstreamError::Unavailable(_)
        )
    }

    fn on_route(&self, request: &mut Request<ProxyBody>, route: &Route) {
        request.extensions_mut().insert(route.clone());
    }
}
