//! What the WebSocket proxy records about handshakes and relayed WebSockets. With the
//! `metrics` feature it goes into the `ProxyMetrics` given to `WebSocketLayer::metrics`, if
//! any; without it, the recorder is zero-sized and its calls are empty, so the proxy's code
//! reads the same either way and pays nothing for metrics it cannot have.

use std::time::Duration;

use tokio::time::Instant;
use tower_hashring::NodeId;

#[cfg(feature = "metrics")]
use crate::ProxyMetrics;

/// How a WebSocket handshake through the proxy ended: the `result` label of the
/// `websocket_handshakes` counter of [`ProxyMetrics`], spelled as the variants are.
///
/// ```
/// # #[cfg(feature = "metrics")] {
/// use tower_ws_proxy::HandshakeResult;
///
/// assert_eq!(format!("{:?}", HandshakeResult::bad_request), "bad_request");
/// # }
/// ```
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
#[cfg_attr(
    feature = "metrics",
    derive(prometheus_client::encoding::EncodeLabelValue)
)]
// Exported with the `metrics` feature only; without it, the proxy still tells its
// handshakes' results apart, to a recorder that drops them.
#[cfg_attr(not(feature = "metrics"), allow(unreachable_pub))]
#[allow(non_camel_case_types)]
pub enum HandshakeResult {
    /// Relayed: the backend's 101 went to the client.
    upgraded,
    /// A malformed handshake (400) or another WebSocket version (426).
    bad_request,
    /// Refused at the connection cap or while shutting down (503).
    refused,
    /// No key, or no backend on the ring (400 or 503).
    no_backend,
    /// The backend answered with its own non-101 verdict.
    backend_answered,
    /// No backend answered (502).
    failed,
}

/// How a client opened its WebSocket: the `via` label of the `websockets_opened_via` counter
/// of [`ProxyMetrics`], spelled as the variants are.
///
/// ```
/// # #[cfg(feature = "metrics")] {
/// use tower_ws_proxy::OpenedVia;
///
/// assert_eq!(format!("{:?}", OpenedVia::h2_extended_connect), "h2_extended_connect");
/// # }
/// ```
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
#[cfg_attr(
    feature = "metrics",
    derive(prometheus_client::encoding::EncodeLabelValue)
)]
#[cfg_attr(not(feature = "metrics"), allow(unreachable_pub))]
#[allow(non_camel_case_types)]
pub enum OpenedVia {
    /// An HTTP/1.1 `Upgrade: websocket` (RFC 6455).
    http1_upgrade,
    /// An HTTP/2 extended CONNECT with `:protocol websocket` (RFC 8441): one stream of the
    /// client's connection.
    h2_extended_connect,
    /// Resumed from the process before this one, which handed it over in an upgrade.
    handover,
}

/// The proxy's metrics, when it has some: cheap to clone, and empty without the `metrics`
/// feature.
#[derive(Clone, Debug, Default)]
pub(crate) struct Recorder {
    #[cfg(feature = "metrics")]
    metrics: Option<ProxyMetrics>,
}

impl Recorder {
    /// Records nothing.
    pub(crate) const NONE: Self = Self {
        #[cfg(feature = "metrics")]
        metrics: None,
    };
}

#[cfg(feature = "metrics")]
impl Recorder {
    /// Records into `metrics`.
    pub(crate) fn new(metrics: ProxyMetrics) -> Self {
        Self {
            metrics: Some(metrics),
        }
    }

    /// A handshake that began at `started` ended as `result`.
    pub(crate) fn handshake(&self, result: HandshakeResult, started: Instant) {
        if let Some(metrics) = &self.metrics {
            metrics.handshake(result, started);
        }
    }

    /// A WebSocket to `backend` opened, asked for `via` an upgrade or a stream.
    pub(crate) fn opened(&self, backend: &NodeId, via: OpenedVia) {
        if let Some(metrics) = &self.metrics {
            metrics.opened(backend, via);
        }
    }

    /// A WebSocket closed after `lasted`.
    pub(crate) fn closed(&self, lasted: Duration) {
        if let Some(metrics) = &self.metrics {
            metrics.closed(lasted);
        }
    }
}

// The same calls as with the feature, doing nothing: `self` is there to keep them so.
#[cfg(not(feature = "metrics"))]
#[allow(clippy::unused_self)]
impl Recorder {
    #[inline(always)]
    pub(crate) fn handshake(&self, _: HandshakeResult, _: Instant) {}

    #[inline(always)]
    pub(crate) fn opened(&self, _: &NodeId, _: OpenedVia) {}

    #[inline(always)]
    pub(crate) fn closed(&self, _: Duration) {}
}
