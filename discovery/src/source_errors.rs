//! Where a source counts its errors. With the `metrics` feature, into the
//! `DiscoveryMetrics` given to it (`RedisRegistry::metrics`, `DockerSource::metrics`,
//! `SwarmSource::metrics`, `amqp_members_counted`), labelled with the source; without
//! metrics given, or without the feature (where the counter is zero-sized and its calls are
//! empty), nowhere.

#[cfg(feature = "metrics")]
use crate::{DiscoveryMetrics, ErrorKind, Source};

/// A source's error counter; cheap to clone.
#[derive(Clone, Debug, Default)]
pub(crate) struct SourceErrors {
    #[cfg(feature = "metrics")]
    counted: Option<(DiscoveryMetrics, Source)>,
}

#[cfg(feature = "metrics")]
impl SourceErrors {
    /// Counts the errors of `source` into `metrics`.
    pub(crate) fn new(metrics: DiscoveryMetrics, source: Source) -> Self {
        Self {
            counted: Some((metrics, source)),
        }
    }

    /// The source could not be reached, or its connection was lost.
    pub(crate) fn connection(&self) {
        self.count(ErrorKind::connection);
    }

    /// An entry or message was not a valid member and was ignored.
    pub(crate) fn invalid_entry(&self) {
        self.count(ErrorKind::invalid_entry);
    }

    fn count(&self, kind: ErrorKind) {
        if let Some((metrics, source)) = &self.counted {
            metrics.error(*source, kind);
        }
    }
}

// The same calls as with the feature, doing nothing: `self` is there to keep them so.
#[cfg(not(feature = "metrics"))]
#[allow(clippy::unused_self)]
impl SourceErrors {
    #[inline(always)]
    pub(crate) fn connection(&self) {}

    #[inline(always)]
    pub(crate) fn invalid_entry(&self) {}
}
