//! What an HTTP connection may cost before a request reaches the service.

use std::{sync::Arc, time::Duration};

use tokio::sync::Semaphore;

use crate::RelayConfig;

/// What an HTTP connection may cost and how long it may take, before a request reaches the
/// service.
///
/// ```
/// use std::time::Duration;
///
/// use tower_ws_proxy::server::HttpLimits;
///
/// let limits = HttpLimits::default().open_connections(10_000);
/// assert_eq!(limits.head_timeout, Duration::from_secs(10));
/// assert!(limits.without_cap().open_connections.is_none());
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct HttpLimits {
    /// The whole request head must arrive within this, counted from when the connection
    /// waits for a request: after the accept, or after the previous response on a
    /// keep-alive connection (so it bounds the keep-alive idle wait too). Default: 10 s.
    pub head_timeout: Duration,
    /// The largest request head (hyper answers 431 past it; at least 8 KiB). Default: 16 KiB.
    pub max_head_bytes: usize,
    /// The most request headers (431 past it). Default: 64.
    pub max_headers: usize,
    /// Accepted connections served at once; past it new ones are closed right away, so a
    /// flood cannot take the descriptors that live WebSockets and health checks need.
    /// Default: no cap. Upgraded connections leave hyper, and this count, once relayed.
    pub open_connections: Option<Arc<Semaphore>>,
    /// After the stop, in-flight requests get this long before their connections are
    /// dropped. Default: 5 s.
    pub stop_grace: Duration,
    /// Every accepted socket gets `TCP_NODELAY` and this config's keepalive, inherited from
    /// its listener where the platform does that (Linux), so the relay need not set them
    /// (give the relay [`RelayConfig::client_keepalive_inherited`]).
    pub relay: RelayConfig,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            head_timeout: Duration::from_secs(10),
            max_head_bytes: 16 * 1024,
            max_headers: 64,
            open_connections: None,
            stop_grace: Duration::from_secs(5),
            relay: RelayConfig::default(),
        }
    }
}

impl HttpLimits {
    /// Caps the connections served at once at `cap`.
    pub fn open_connections(mut self, cap: usize) -> Self {
        self.open_connections = Some(Arc::new(Semaphore::new(cap.min(Semaphore::MAX_PERMITS))));
        self
    }

    /// The same deadlines with no cap (for a listener that is not public).
    pub fn without_cap(&self) -> Self {
        Self {
            open_connections: None,
            ..self.clone()
        }
    }
}
