//! The gateway's `/metrics`: one `prometheus_client` registry (no global state) holding
//! each layer's metrics and what only the gateway knows: connections not on their ring
//! owner, and each member's state.

use std::sync::Arc;

use discovery::DiscoveryMetrics;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
    registry::Registry,
};
use tower_hashring::{HttpKey, RingMetrics, SharedHashRing};
use tower_ws_migrate::{MigrationMetrics, ProxiedConnection};
use tower_ws_proxy::{
    client_limit::ClientRefusals, ActiveWebSockets, LiveConnections, ProxyMetrics, Upstream,
};

use discovery::Membership;

/// The metrics of the public listener and what guards it.
pub(crate) struct EdgeMetrics<'a> {
    pub(crate) proxy: &'a ProxyMetrics,
    pub(crate) client_refusals: &'a ClientRefusals,
    /// The TLS certificates' reload failures, when the listener serves TLS.
    pub(crate) certificates: Option<&'a tower_ws_proxy::server::tls::Certificates>,
}

/// The Prometheus registry every metric of the gateway is in.
#[derive(Clone, Debug)]
pub(crate) struct GatewayMetrics {
    registry: Arc<Registry>,
}

impl GatewayMetrics {
    /// The registry of `proxy` and `migration` (already given to their layers), of the
    /// per-client limits' refusals, and of what
    /// is read at each scrape from the ring, the live connections and the members.
    pub(crate) fn new(
        edge: &EdgeMetrics<'_>,
        migration: &MigrationMetrics,
        discovery: &DiscoveryMetrics,
        ring: &SharedHashRing<Upstream, HttpKey>,
        connections: &LiveConnections<ProxiedConnection>,
        members: &Membership,
        cluster: &crate::cluster::ClusterView,
    ) -> Self {
        let mut registry = Registry::with_prefix("wscluster");
        edge.proxy.register(&mut registry);
        registry.register_collector(Box::new(edge.client_refusals.clone()));
        if let Some(certificates) = edge.certificates {
            certificates.register(&mut registry);
        }
        migration.register(&mut registry);
        discovery.register(&mut registry);
        registry.register_collector(Box::new(RingMetrics::new(ring.subscribe())));
        registry.register_collector(Box::new(ActiveWebSockets::new(connections.clone())));
        registry.register_collector(Box::new(GatewayState {
            ring: ring.clone(),
            connections: connections.clone(),
            members: members.clone(),
        }));
        registry.register_collector(Box::new(cluster.clone()));
        Self {
            registry: Arc::new(registry),
        }
    }

    /// The OpenMetrics text of every metric.
    pub(crate) fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// Live WebSockets not on their key's owner in `ring` (0 at rest).
pub(crate) fn off_owner(
    ring: &tower_hashring::Ring,
    connections: &LiveConnections<ProxiedConnection>,
) -> u64 {
    let mut off_owner = 0;
    connections.for_each(|tracked| {
        let owner = ring.owner_of(tracked.position).map(|n| n.id());
        off_owner += u64::from(owner != Some(&tracked.backend));
    });
    off_owner
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MemberStateLabels {
    backend: String,
    state: &'static str,
}

/// Read at each scrape.
struct GatewayState {
    ring: SharedHashRing<Upstream, HttpKey>,
    connections: LiveConnections<ProxiedConnection>,
    members: Membership,
}

impl std::fmt::Debug for GatewayState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GatewayState")
    }
}

impl Collector for GatewayState {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let snapshot = self.ring.snapshot();
        let ring = snapshot.ring();
        let digest = crate::digest::ring_digest(ring, &self.members.members());
        let info = ConstGauge::new(1i64);
        let mut metric = encoder.encode_descriptor(
            "ring_digest",
            "1, labelled with the digest of the ring in use (scheme, members, addresses, weights): gateways with the same digest route every key alike",
            None,
            info.metric_type(),
        )?;
        info.encode(metric.encode_family(&[("digest", digest.as_str())])?)?;

        let off_owner = off_owner(ring, &self.connections);
        let gauge = ConstGauge::new(i64::try_from(off_owner).unwrap_or(i64::MAX));
        let metric = encoder.encode_descriptor(
            "connections_off_owner",
            "Live WebSockets not on their key's owner in the ring in use (0 at rest)",
            None,
            gauge.metric_type(),
        )?;
        gauge.encode(metric)?;

        let mut family = encoder.encode_descriptor(
            "backend_up",
            "1 for each member and its state: up (on the ring, weight > 0), draining (weight 0), joining, leaving (being removed), unhealthy (failing its health checks)",
            None,
            ConstGauge::new(0i64).metric_type(),
        )?;
        for (backend, state) in self.members.states(ring) {
            let labels = MemberStateLabels {
                backend: backend.as_str().to_owned(),
                state: state.as_str(),
            };
            ConstGauge::new(1i64).encode(family.encode_family(&labels)?)?;
        }
        let mut family = encoder.encode_descriptor(
            "member_id_collisions",
            "Member entries refused because another source's member has their id, by the source that sent them",
            None,
            MetricType::Counter,
        )?;
        for (origin, count) in self.members.collisions() {
            ConstCounter::new(count).encode(family.encode_family(&[("origin", origin)])?)?;
        }
        let hold_downs = encoder.encode_descriptor(
            "member_hold_downs",
            "Times a flapping member was held out of the ring (backend_up{state=\"held_down\"} names the ones held now)",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(self.members.hold_downs()).encode(hold_downs)?;
        Ok(())
    }
}
