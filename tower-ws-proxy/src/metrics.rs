//! The proxy's Prometheus metrics, registered into a `prometheus_client` registry the
//! application owns (no global state). No label carries a user's key.

use std::{sync::Arc, time::Duration};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric},
    metrics::MetricType,
    metrics::{
        counter::ConstCounter,
        counter::Counter,
        family::Family,
        gauge::ConstGauge,
        histogram::{exponential_buckets, Histogram},
    },
    registry::Registry,
};
use tokio::time::Instant;
use tower_hashring::NodeId;

use crate::{Flow, HandshakeResult, LiveConnections, OpenedVia, TrafficTotals};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: HandshakeResult,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ViaLabel {
    via: OpenedVia,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabel {
    backend: Backend,
}

/// A backend's id as a label value: cloning it is a reference count, not a copy, on the
/// handshake path.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct Backend(NodeId);

impl EncodeLabelValue for Backend {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelValueEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.0.as_str(), encoder)
    }
}

/// Handshakes by result and their latency, WebSockets opened per backend and how long they
/// lasted. Cheap to clone; give it to [`WebSocketLayer::metrics`](crate::WebSocketLayer::metrics)
/// and [`register`](Self::register) it.
///
/// ```
/// use prometheus_client::registry::Registry;
/// use tower_ws_proxy::ProxyMetrics;
///
/// let mut registry = Registry::with_prefix("wscluster");
/// let metrics = ProxyMetrics::default();
/// metrics.register(&mut registry);
/// let mut text = String::new();
/// prometheus_client::encoding::text::encode(&mut text, &registry)?;
/// assert!(text.contains("wscluster_websocket_handshake_seconds_count 0"));
/// # Ok::<(), std::fmt::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct ProxyMetrics {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    handshakes: Family<ResultLabel, Counter>,
    handshake_seconds: Histogram,
    opened: Family<BackendLabel, Counter>,
    opened_via: Family<ViaLabel, Counter>,
    duration_seconds: Histogram,
}

impl Default for ProxyMetrics {
    fn default() -> Self {
        Self {
            inner: Arc::new(Inner {
                handshakes: Family::default(),
                // 0.5 ms to ~16 s.
                handshake_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
                opened: Family::default(),
                opened_via: Family::default(),
                // 1 s to ~9 h.
                duration_seconds: Histogram::new(exponential_buckets(1.0, 3.0, 11)),
            }),
        }
    }
}

impl ProxyMetrics {
    /// Registers the metrics into `registry` (under its prefix).
    pub fn register(&self, registry: &mut Registry) {
        let inner = &self.inner;
        registry.register(
            "websocket_handshakes",
            "WebSocket handshakes through the proxy, by result",
            inner.handshakes.clone(),
        );
        registry.register(
            "websocket_handshake_seconds",
            "Time from a WebSocket upgrade request to the answer the client got",
            inner.handshake_seconds.clone(),
        );
        registry.register(
            "websockets_opened",
            "WebSockets relayed, by the backend that accepted them",
            inner.opened.clone(),
        );
        registry.register(
            "websockets_opened_via",
            "WebSockets relayed, by how the client asked: an HTTP/1.1 upgrade or an HTTP/2 \
             extended CONNECT",
            inner.opened_via.clone(),
        );
        registry.register(
            "websocket_duration_seconds",
            "How long relayed WebSockets lasted",
            inner.duration_seconds.clone(),
        );
    }

    pub(crate) fn handshake(&self, result: HandshakeResult, started: Instant) {
        let inner = &self.inner;
        inner
            .handshakes
            .get_or_create(&ResultLabel { result })
            .inc();
        inner
            .handshake_seconds
            .observe(started.elapsed().as_secs_f64());
    }

    pub(crate) fn opened(&self, backend: &NodeId, via: OpenedVia) {
        let label = BackendLabel {
            backend: Backend(backend.clone()),
        };
        self.inner.opened.get_or_create(&label).inc();
        self.inner.opened_via.get_or_create(&ViaLabel { via }).inc();
    }

    pub(crate) fn closed(&self, lasted: Duration) {
        self.inner.duration_seconds.observe(lasted.as_secs_f64());
    }
}

/// The live WebSockets per backend, read from the `LiveConnections` at each scrape, so live moves
/// are counted where the connections are now.
///
/// ```
/// use prometheus_client::registry::Registry;
/// use tower_ws_proxy::{ActiveWebSockets, LiveConnections};
///
/// let mut registry = Registry::default();
/// registry.register_collector(Box::new(ActiveWebSockets::new(LiveConnections::new(100))));
/// ```
pub struct ActiveWebSockets<H>(LiveConnections<H>);

impl<H> std::fmt::Debug for ActiveWebSockets<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ActiveWebSockets").field(&self.0).finish()
    }
}

impl<H> ActiveWebSockets<H> {
    /// The collector of `connections`.
    pub fn new(connections: LiveConnections<H>) -> Self {
        Self(connections)
    }
}

impl<H: Send + 'static> Collector for ActiveWebSockets<H> {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let gauge = ConstGauge::new(0i64);
        let mut family = encoder.encode_descriptor(
            "websockets_active",
            "Live relayed WebSockets, by the backend they run to now",
            None,
            gauge.metric_type(),
        )?;
        let mut counts: Vec<_> = self.0.per_backend().into_iter().collect();
        counts.sort();
        for (backend, count) in counts {
            let label = BackendLabel {
                backend: Backend(backend),
            };
            let gauge = ConstGauge::new(i64::try_from(count).unwrap_or(i64::MAX));
            gauge.encode(family.encode_family(&label)?)?;
        }
        let mut traffic: Vec<_> = self.0.traffic_per_backend().into_iter().collect();
        traffic.sort_by(|a, b| a.0.cmp(&b.0));
        let flows = |totals: &TrafficTotals| {
            [
                (FlowDirection::to_backend, totals.to_backend),
                (FlowDirection::to_client, totals.to_client),
            ]
        };
        for (name, help, value) in [
            (
                "websocket_messages",
                "Data messages relayed, by the backend they went to or came from and direction",
                (|flow: Flow| flow.messages) as fn(Flow) -> u64,
            ),
            (
                "websocket_bytes",
                "Bytes relayed (WebSocket framing included), by backend and direction",
                |flow: Flow| flow.bytes,
            ),
        ] {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (backend, totals) in &traffic {
                for (direction, flow) in flows(totals) {
                    let label = TrafficLabel {
                        backend: Backend(backend.clone()),
                        direction,
                    };
                    ConstCounter::new(value(flow)).encode(family.encode_family(&label)?)?;
                }
            }
        }
        Ok(())
    }
}

/// Which way relayed traffic went.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
enum FlowDirection {
    to_backend,
    to_client,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TrafficLabel {
    backend: Backend,
    direction: FlowDirection,
}
