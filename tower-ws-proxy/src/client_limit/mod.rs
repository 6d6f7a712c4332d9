//! Per-client limits at the edge: WebSockets at once and handshakes per second for each
//! client IP, refused with 429 and `Retry-After` before a slot, a dial or a backend is spent.
//!
//! The count of a client's WebSockets lasts as long as each WebSocket: the layer hands the
//! proxy below a [`KeepWhileOpen`] that the relay holds until it ends.
//!
//! The rate is a GCRA token bucket per IP written here, not `governor`'s: governor 0.10
//! needs hashbrown 0.16 while the rest of the tree is on 0.17, and the workspace keeps one
//! version of each crate; the bucket is a dozen lines. State is kept only for clients that
//! hold a WebSocket or are inside their rate window, swept when the table doubles or a second
//! has passed, so a scan from many addresses leaves nothing behind.
//!
//! ```
//! use std::num::NonZeroU32;
//! use tower::ServiceBuilder;
//! use tower_ws_proxy::{
//!     client_limit::{ClientLimitLayer, ClientLimits},
//!     LiveConnections, RelayConfig, Upstream, UpstreamConfig, WebSocketLayer,
//! };
//!
//! let mut limits = ClientLimits::default();
//! limits.websockets = Some(50);
//! limits.handshakes_per_second = NonZeroU32::new(10);
//! let limit = ClientLimitLayer::new(limits);
//! let refusals = limit.refusals(); // for a metric
//! let proxy = ServiceBuilder::new()
//!     .layer(limit)
//!     .layer(WebSocketLayer::new(LiveConnections::new(10_000), RelayConfig::default()))
//!     .service(Upstream::new("127.0.0.1:7100", UpstreamConfig::default()));
//! # let _ = (proxy, refusals);
//! ```

mod client_ip;
mod future;
mod keep;
mod limits;
mod table;
#[cfg(test)]
mod tests;

use std::{
    convert::Infallible,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    task::{Context, Poll},
};

use http::{header::RETRY_AFTER, HeaderValue, Request, Response, StatusCode};
use tower_layer::Layer;
use tower_service::Service;

pub(crate) use self::client_ip::is_in;
use self::table::{ClientTable, Refusal};
pub use self::{future::ResponseFuture, keep::KeepWhileOpen, limits::ClientLimits};
use crate::{is_websocket_upgrade, text_response, ProxyBody};

/// Applies [`ClientLimits`] to the WebSocket handshakes that pass; see the
/// [module](self). Place it above [`WebSocketLayer`](crate::WebSocketLayer).
#[derive(Clone, Debug)]
pub struct ClientLimitLayer {
    limits: Arc<ClientLimits>,
    table: ClientTable,
    refusals: ClientRefusals,
}

impl ClientLimitLayer {
    /// A layer enforcing `limits`.
    pub fn new(limits: ClientLimits) -> Self {
        Self {
            limits: Arc::new(limits),
            table: ClientTable::default(),
            refusals: ClientRefusals::default(),
        }
    }

    /// The counts of refused handshakes, by limit (shared with the running layer).
    pub fn refusals(&self) -> ClientRefusals {
        self.refusals.clone()
    }
}

impl<S> Layer<S> for ClientLimitLayer {
    type Service = ClientLimit<S>;

    fn layer(&self, inner: S) -> ClientLimit<S> {
        ClientLimit {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of [`ClientLimitLayer`].
#[derive(Clone, Debug)]
pub struct ClientLimit<S> {
    inner: S,
    layer: ClientLimitLayer,
}

impl<S, B> Service<Request<B>> for ClientLimit<S>
where
    S: Service<Request<B>, Response = Response<ProxyBody>, Error = Infallible>,
{
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let limits = &self.layer.limits;
        if !limits.limits_anything() || !is_websocket_upgrade(&request) {
            return ResponseFuture::passed(self.inner.call(request));
        }
        let Some(ip) = client_ip::client_ip(&request, &limits.trusted_proxies) else {
            return ResponseFuture::passed(self.inner.call(request));
        };
        if client_ip::is_in(ip, &limits.exempt) {
            return ResponseFuture::passed(self.inner.call(request));
        }
        match self.layer.table.admit(client_ip::counted_as(ip), limits) {
            Ok(slot) => {
                KeepWhileOpen::add(&mut request, slot);
                ResponseFuture::passed(self.inner.call(request))
            }
            Err(refusal) => {
                self.layer.refusals.count(refusal);
                ResponseFuture::refused(too_many(refusal))
            }
        }
    }
}

/// 429, with the whole seconds until a handshake would be allowed (at least 1).
fn too_many(refusal: Refusal) -> Response<ProxyBody> {
    let (reason, retry_after) = match refusal {
        Refusal::Websockets => ("too many websockets from this address", 1),
        Refusal::Rate(wait) => (
            "too many websocket handshakes from this address",
            wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
        ),
    };
    let mut response = text_response(StatusCode::TOO_MANY_REQUESTS, reason);
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(retry_after.max(1)));
    response
}

/// Handshakes refused by a [`ClientLimitLayer`], by limit; no per-client label, so a scan
/// from a million addresses costs two numbers. With the `metrics` feature it is a
/// `prometheus_client` collector of `client_limit_refusals_total{limit}`.
///
/// ```
/// use tower_ws_proxy::client_limit::{ClientLimitLayer, ClientLimits};
///
/// let refusals = ClientLimitLayer::new(ClientLimits::default()).refusals();
/// assert_eq!((refusals.websockets(), refusals.rate()), (0, 0));
/// ```
#[derive(Clone, Debug, Default)]
pub struct ClientRefusals {
    counts: Arc<[AtomicU64; 2]>,
}

impl ClientRefusals {
    fn count(&self, refusal: Refusal) {
        let index = match refusal {
            Refusal::Websockets => 0,
            Refusal::Rate(_) => 1,
        };
        self.counts[index].fetch_add(1, Ordering::Relaxed);
    }

    /// Refused because the client held its share of WebSockets.
    pub fn websockets(&self) -> u64 {
        self.counts[0].load(Ordering::Relaxed)
    }

    /// Refused because the client started handshakes too fast.
    pub fn rate(&self) -> u64 {
        self.counts[1].load(Ordering::Relaxed)
    }
}

#[cfg(feature = "metrics")]
impl prometheus_client::collector::Collector for ClientRefusals {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder<'_>,
    ) -> std::fmt::Result {
        use prometheus_client::{
            encoding::EncodeMetric,
            metrics::{counter::ConstCounter, MetricType},
        };
        let mut family = encoder.encode_descriptor(
            "client_limit_refusals",
            "WebSocket handshakes refused with 429 by a per-client limit",
            None,
            MetricType::Counter,
        )?;
        for (limit, count) in [("websockets", self.websockets()), ("rate", self.rate())] {
            let labels = [("limit", limit)];
            ConstCounter::new(count).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}
