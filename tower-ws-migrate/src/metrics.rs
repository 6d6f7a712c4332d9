//! The migrator's Prometheus metrics, registered into a `prometheus_client` registry the
//! application owns. No label carries a user's key.

use std::sync::Arc;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{exponential_buckets, Histogram},
    },
    registry::Registry,
};

use crate::{MigrationPolicy, Outcome};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabel {
    backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MigrationLabels {
    policy: &'static str,
    outcome: &'static str,
    reason: &'static str,
}

/// Migrations by policy, outcome and fallback reason, how many are in flight, and how long
/// they take. Cheap to clone; give it to [`Migrator::metrics`](crate::Migrator::metrics) and
/// [`register`](Self::register) it.
///
/// ```
/// use prometheus_client::registry::Registry;
/// use tower_ws_migrate::MigrationMetrics;
///
/// let mut registry = Registry::with_prefix("wscluster");
/// MigrationMetrics::default().register(&mut registry);
/// let mut text = String::new();
/// prometheus_client::encoding::text::encode(&mut text, &registry)?;
/// assert!(text.contains("wscluster_migrations_in_flight"));
/// # Ok::<(), std::fmt::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct MigrationMetrics {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    migrations: Family<MigrationLabels, Counter>,
    in_flight: Gauge,
    seconds: Histogram,
    upstreams_opened: Family<BackendLabel, Counter>,
}

impl Default for MigrationMetrics {
    fn default() -> Self {
        Self {
            inner: Arc::new(Inner {
                migrations: Family::default(),
                in_flight: Gauge::default(),
                // 1 ms to ~16 s.
                seconds: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
                upstreams_opened: Family::default(),
            }),
        }
    }
}

impl MigrationMetrics {
    /// Migrations started and not yet ended.
    ///
    /// ```
    /// assert_eq!(tower_ws_migrate::MigrationMetrics::default().in_flight(), 0);
    /// ```
    pub fn in_flight(&self) -> i64 {
        self.inner.in_flight.get()
    }

    /// Registers the metrics into `registry` (under its prefix).
    pub fn register(&self, registry: &mut Registry) {
        let inner = &self.inner;
        registry.register(
            "migrations",
            "Connections whose owner changed, by policy, outcome and fallback reason",
            inner.migrations.clone(),
        );
        registry.register(
            "migrations_in_flight",
            "Migrations under way",
            inner.in_flight.clone(),
        );
        registry.register(
            "migration_seconds",
            "How long a migration took, to its outcome",
            inner.seconds.clone(),
        );
        registry.register(
            "migration_upstreams_opened",
            "Upstream WebSockets opened by live moves, by the backend the connection moved to",
            inner.upstreams_opened.clone(),
        );
    }

    /// A live move opened an upstream WebSocket to `backend`.
    pub(crate) fn moved_live_to(&self, backend: &tower_hashring::NodeId) {
        let label = BackendLabel {
            backend: backend.as_str().to_owned(),
        };
        self.inner.upstreams_opened.get_or_create(&label).inc();
    }

    pub(crate) fn started(&self) {
        self.inner.in_flight.inc();
    }

    pub(crate) fn finished(&self, policy: &MigrationPolicy, outcome: &Outcome, seconds: f64) {
        let inner = &self.inner;
        inner.in_flight.dec();
        inner.seconds.observe(seconds);
        let policy = match policy {
            MigrationPolicy::Live { .. } => "live",
            _ => "reconnect",
        };
        let (outcome, reason) = match outcome {
            Outcome::Moved => ("moved", ""),
            Outcome::FellBack(why) => ("fell_back", why.kind.as_str()),
            Outcome::Failed(_) => ("failed", ""),
        };
        let labels = MigrationLabels {
            policy,
            outcome,
            reason,
        };
        inner.migrations.get_or_create(&labels).inc();
    }
}
