//! The certificates' Prometheus metrics.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::counter::ConstCounter,
    registry::Registry,
};

use super::Certificates;

impl Certificates {
    /// Registers `tls_certificate_reload_failures` (certificates that failed to reload and
    /// kept their previous version) in `registry`.
    ///
    /// ```no_run
    /// use prometheus_client::registry::Registry;
    /// use tower_ws_proxy::server::tls::{Certificates, TlsSettings};
    ///
    /// let certificates = Certificates::load(&TlsSettings::new("cert.pem", "key.pem"))?;
    /// let mut registry = Registry::with_prefix("wscluster");
    /// certificates.register(&mut registry);
    /// # Ok::<_, Box<dyn std::error::Error>>(())
    /// ```
    pub fn register(&self, registry: &mut Registry) {
        registry.register_collector(Box::new(ReloadFailures(self.failure_count())));
    }
}

/// Read at each scrape, so the registry does not keep the certificates alive.
#[derive(Debug)]
struct ReloadFailures(Arc<AtomicU64>);

impl Collector for ReloadFailures {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let counter = ConstCounter::new(self.0.load(Ordering::Relaxed));
        let metric = encoder.encode_descriptor(
            "tls_certificate_reload_failures",
            "TLS certificates that failed to reload and kept their previous version",
            None,
            counter.metric_type(),
        )?;
        counter.encode(metric)
    }
}
