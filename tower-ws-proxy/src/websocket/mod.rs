//! The WebSocket proxy middleware: above any service that answers a WebSocket upgrade with a
//! `101` carrying the backend's socket (an [`Upstream`](crate::Upstream), or the balancer
//! over them), it relays the upgraded connection; ordinary requests pass through.
//!
//! - `layer`: [`WebSocketLayer`], which puts a [`WebSocketProxy`] over a service;
//! - `future`: [`ResponseFuture`], the proxy's response future;
//! - `upgrade`: an admitted upgrade once the backend answered: the client's answer, the
//!   connection's registration, its relay;
//! - `relay_task`: the spawned task of one proxied WebSocket;
//! - `error`: errors from below, as the responses the client gets.

mod error;
mod future;
mod layer;
mod relay_task;
mod resume;
#[cfg(test)]
mod tests;
mod upgrade;

pub use self::{
    future::ResponseFuture,
    layer::WebSocketLayer,
    resume::{ResumeError, Resumer},
};

use std::{
    convert::Infallible,
    fmt,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Body;
use tokio::time::Instant;
use tower_service::Service;

use self::{error::NotAdmitted, upgrade::PendingUpgrade};
use crate::{
    check_upgrade,
    client_limit::KeepWhileOpen,
    client_upgrade::ClientUpgrade,
    extended_connect::{self, is_extended_connect_head},
    is_websocket_upgrade,
    record::{OpenedVia, Recorder},
    strip_internal_headers, Admission, BoxError, ConnectionHandle, LiveConnections, ProxyBody,
    RelayConfig, RelayHandle,
};

/// The service of [`WebSocketLayer`].
///
/// For a WebSocket upgrade it first checks the handshake (400, or 426 for another version)
/// and takes a place in the connection cap (503 past it), then calls the service below. A
/// `101` with an [`UpstreamSocket`](crate::UpstreamSocket) is returned to the client, the
/// connection is registered in [`LiveConnections`] under the
/// [`Route`](tower_hashring::balance::Route) the balancer recorded (key, ring position and
/// version, backend) with the handle the request's [`MakeHandle`](crate::MakeHandle) makes
/// (or [`ConnectionHandle::plain`]), and the two connections are relayed frame-aware (on the
/// raw socket where the server gives it back, otherwise over hyper's `Upgraded`). An HTTP/2
/// extended CONNECT (RFC 8441) goes below as the HTTP/1.1 upgrade it stands for (fresh key,
/// `Host` from `:authority`), and the backend's `101` reaches the client as a `200` on its
/// stream: backends see one kind of handshake. Ordinary
/// requests pass through. Errors become responses: 400 (no key), 503 (no backend), 502 (no
/// backend answered; the body names none, the log does). Client headers in the gateway's
/// own `x-wscluster-*` namespace are dropped.
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
    relay: Arc<RelayConfig>,
    metrics: Recorder,
}

impl<S: Clone, H> Clone for WebSocketProxy<S, H> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            connections: self.connections.clone(),
            relay: self.relay.clone(),
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
    type Future = ResponseFuture<S, H>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The service below is made ready in the response future (clone, then ready).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request<B>) -> ResponseFuture<S, H> {
        strip_internal_headers(request.headers_mut());
        if !is_websocket_upgrade(&request) {
            return self.forward_plain(request);
        }
        let started = Instant::now();
        match self.admit(&request) {
            Ok(admission) => self.handshake_upstream(request, admission, started),
            Err(not_admitted) => {
                self.metrics.handshake(not_admitted.result(), started);
                ResponseFuture::answered(not_admitted.into_response())
            }
        }
    }
}

/// The request a handshake sends below: `head`'s method, URI, version and headers, no body,
/// no extensions.
fn request_below(head: &http::request::Parts) -> Request<ProxyBody> {
    let mut request = Request::new(ProxyBody::default());
    *request.method_mut() = head.method.clone();
    *request.uri_mut() = head.uri.clone();
    *request.version_mut() = head.version;
    *request.headers_mut() = head.headers.clone();
    request
}

impl<S, H> WebSocketProxy<S, H>
where
    S: Service<Request<ProxyBody>> + Clone,
{
    /// An ordinary request goes down as it is (its body boxed); a failure below becomes the
    /// response.
    fn forward_plain<B>(&self, request: Request<B>) -> ResponseFuture<S, H>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let request = request.map(|body| body.map_err(Into::into).boxed_unsync());
        ResponseFuture::forwarding(self.inner.clone(), request)
    }

    /// Lets an upgrade in only when its handshake is well formed and the connection cap has
    /// room for it.
    fn admit<B>(&self, request: &Request<B>) -> Result<Admission, NotAdmitted> {
        check_upgrade(request).map_err(NotAdmitted::BadHandshake)?;
        self.connections.admit().map_err(NotAdmitted::NoPlace)
    }

    /// Sends the handshake below, without a body, keeping what answering the client takes
    /// once a backend answered.
    fn handshake_upstream<B>(
        &self,
        mut request: Request<B>,
        admission: Admission,
        started: Instant,
    ) -> ResponseFuture<S, H> {
        let client_upgrade = ClientUpgrade::take(&mut request);
        let (mut parts, _) = request.into_parts();
        // An HTTP/2 stream's WebSocket goes to its backend as an HTTP/1.1 upgrade.
        let via = if is_extended_connect_head(&parts) {
            extended_connect::into_upgrade(&mut parts);
            OpenedVia::h2_extended_connect
        } else {
            OpenedVia::http1_upgrade
        };
        // Out of the head before it is kept: held by the relay, not by every copy of it.
        let kept = parts.extensions.remove::<KeepWhileOpen>();
        // The head as the client sent it stays here, extensions and all, for the handle a
        // layer above makes (a migration layer dials a new owner with it). What goes down
        // is its method, URI and headers: the extensions would be cloned one boxed value at
        // a time, for a service that reads none of them (an `Upstream` takes only the
        // `Route` the balancer sets, and a failover's replay carries none either).
        let request = request_below(&parts);
        let head = parts;
        let upgrade = PendingUpgrade {
            via,
            admission,
            kept,
            head,
            client_upgrade,
            connections: self.connections.clone(),
            relay: self.relay.clone(),
            metrics: self.metrics.clone(),
            started,
        };
        ResponseFuture::upgrading(self.inner.clone(), request, upgrade)
    }
}
