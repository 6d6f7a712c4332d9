//! What discovery sources count: errors per source, for a `prometheus_client` registry the
//! application owns (no global state).

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue},
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

/// Which source met an error.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Source {
    /// The Redis registry.
    redis,
    /// RabbitMQ announcements.
    amqp,
    /// The Docker engine.
    docker,
    /// Docker Swarm services.
    swarm,
}

/// What went wrong.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum ErrorKind {
    /// The source could not be reached, or its connection was lost (it reconnects, and
    /// keeps the last members meanwhile).
    connection,
    /// An entry or message was not a valid member and was ignored.
    invalid_entry,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    source: Source,
    kind: ErrorKind,
}

/// Errors of the discovery sources, by source and kind. Cheap to clone; give it to each
/// source (`RedisRegistry::metrics`, `DockerSource::metrics`,
/// `amqp_members_counted`) and [`register`](Self::register) it.
///
/// ```
/// use discovery::{DiscoveryMetrics, ErrorKind, Source};
/// use prometheus_client::registry::Registry;
///
/// let metrics = DiscoveryMetrics::default();
/// let mut registry = Registry::with_prefix("wscluster");
/// metrics.register(&mut registry);
/// assert_eq!(metrics.errors(Source::redis, ErrorKind::connection), 0);
/// ```
#[derive(Clone, Debug, Default)]
pub struct DiscoveryMetrics {
    errors: Family<ErrorLabels, Counter>,
}

impl DiscoveryMetrics {
    /// Registers the metrics into `registry` (under its prefix).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "discovery_errors",
            "Errors of the discovery sources: lost connections and ignored entries",
            self.errors.clone(),
        );
    }

    /// How many errors of `kind` `source` met.
    pub fn errors(&self, source: Source, kind: ErrorKind) -> u64 {
        self.errors
            .get_or_create(&ErrorLabels { source, kind })
            .get()
    }

    #[cfg_attr(
        not(any(feature = "redis", feature = "amqp", feature = "docker")),
        allow(dead_code)
    )]
    pub(crate) fn error(&self, source: Source, kind: ErrorKind) {
        self.errors
            .get_or_create(&ErrorLabels { source, kind })
            .inc();
    }
}
