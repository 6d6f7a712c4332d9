//! The ring's Prometheus metrics: version, members and points, read from its newest
//! snapshot at each scrape.

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::gauge::ConstGauge,
};

use crate::RingWatch;

/// A `prometheus_client` collector of a ring's version, member count and point count,
/// registered into a registry the application owns.
///
/// ```
/// use std::sync::Arc;
/// use prometheus_client::registry::Registry;
/// use tokio::sync::watch;
/// use tower_hashring::{HashScheme, RingMetrics, RingSnapshot};
///
/// let (_publish, ring) = watch::channel(Arc::new(RingSnapshot::initial(HashScheme::default())));
/// let mut registry = Registry::with_prefix("wscluster");
/// registry.register_collector(Box::new(RingMetrics::new(ring)));
/// let mut text = String::new();
/// prometheus_client::encoding::text::encode(&mut text, &registry)?;
/// assert!(text.contains("wscluster_ring_members 0"));
/// # Ok::<(), std::fmt::Error>(())
/// ```
#[derive(Debug)]
pub struct RingMetrics {
    ring: RingWatch,
}

impl RingMetrics {
    /// The metrics of the ring `ring` follows (`SharedHashRing::subscribe`).
    pub fn new(ring: RingWatch) -> Self {
        Self { ring }
    }
}

impl Collector for RingMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let snapshot = self.ring.borrow().clone();
        let ring = snapshot.ring();
        let gauges = [
            (
                "ring_version",
                "The version of the ring in use",
                snapshot.version(),
            ),
            (
                "ring_members",
                "Members on the ring",
                ring.nodes().len() as u64,
            ),
            (
                "ring_points",
                "Points (virtual nodes) on the ring",
                ring.len_points() as u64,
            ),
        ];
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
            let metric = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
            gauge.encode(metric)?;
        }
        Ok(())
    }
}
