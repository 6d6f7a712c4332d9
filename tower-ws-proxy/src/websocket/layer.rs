use std::{fmt, sync::Arc};

use tower_layer::Layer;

use super::{Resumer, WebSocketProxy};
#[cfg(feature = "metrics")]
use crate::ProxyMetrics;
use crate::{record::Recorder, LiveConnections, RelayConfig, RelayHandle};

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
    metrics: Recorder,
}

impl<H> WebSocketLayer<H> {
    /// Registers the WebSockets in `connections` (their cap, their records for migration,
    /// their shutdown) and relays them with `relay`'s deadlines and limits.
    pub const fn new(connections: LiveConnections<H>, relay: RelayConfig) -> Self {
        Self {
            connections,
            relay,
            metrics: Recorder::NONE,
        }
    }

    /// What resumes parked WebSockets into this layer's live connections, with its relay
    /// settings and metrics (an upgrade's new process, `server::handover`).
    pub fn resumer(&self) -> Resumer<H> {
        Resumer {
            connections: self.connections.clone(),
            relay: Arc::new(self.relay),
            metrics: self.metrics.clone(),
        }
    }

    /// Counts handshakes, their latency, and WebSockets opened and closed in `metrics`.
    #[cfg(feature = "metrics")]
    pub fn metrics(mut self, metrics: ProxyMetrics) -> Self {
        self.metrics = Recorder::new(metrics);
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
            // One copy for all of the proxy's relays.
            relay: Arc::new(self.relay),
            metrics: self.metrics.clone(),
        }
    }
}
