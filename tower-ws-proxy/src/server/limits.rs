//! What an HTTP connection may cost before a request reaches the service.

use std::{sync::Arc, time::Duration};

use ipnet::IpNet;
use tokio::sync::Semaphore;

use super::Http2Limits;
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
/// assert!(limits.for_private_listener().open_connections.is_none());
/// ```
///
/// With the `serde` feature it reads from a config file; a field left out keeps its default,
/// the cap is a number, and `stop_grace` and `relay` are the server's to set from the rest of
/// its configuration:
///
/// ```toml
/// head_timeout = "10s"
/// max_head_bytes = 16384
/// max_headers = 64
/// open_connections = 10000
/// proxy_protocol_from = ["10.0.0.5/32"]
///
/// [http2]
/// max_concurrent_streams = 100
/// ```
#[derive(Clone, Debug)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Deserialize),
    serde(default, deny_unknown_fields)
)]
#[non_exhaustive]
pub struct HttpLimits {
    /// The whole request head must arrive within this, counted from when the connection
    /// waits for a request: after the accept, or after the previous response on a
    /// keep-alive connection (so it bounds the keep-alive idle wait too). Default: 10 s.
    #[cfg_attr(
        feature = "serde",
        serde(deserialize_with = "crate::deserialize::positive")
    )]
    pub head_timeout: Duration,
    /// The largest request head (hyper answers 431 past it; at least 8 KiB). Default: 16 KiB.
    #[cfg_attr(
        feature = "serde",
        serde(deserialize_with = "crate::deserialize::head_bytes")
    )]
    pub max_head_bytes: usize,
    /// The most request headers (431 past it). Default: 64.
    #[cfg_attr(
        feature = "serde",
        serde(deserialize_with = "crate::deserialize::at_least_one")
    )]
    pub max_headers: usize,
    /// Accepted connections served at once; past it new ones are closed right away, so a
    /// flood cannot take the descriptors that live WebSockets and health checks need.
    /// Default: no cap. Upgraded connections leave hyper, and this count, once relayed.
    #[cfg_attr(
        feature = "serde",
        serde(deserialize_with = "crate::deserialize::connection_cap")
    )]
    pub open_connections: Option<Arc<Semaphore>>,
    /// After the stop, in-flight requests get this long before their connections are
    /// dropped. Default: 5 s.
    #[cfg_attr(feature = "serde", serde(skip))]
    pub stop_grace: Duration,
    /// Peers that start every connection with a PROXY protocol header (v1 or v2), as a
    /// layer-4 balancer with `send-proxy` does: their connections' [`ClientAddr`](super::ClientAddr)
    /// is the client the header names. A connection from such a peer without a valid header
    /// within `head_timeout` is closed; other peers are clients themselves. Default: none.
    pub proxy_protocol_from: Vec<IpNet>,
    /// Every accepted socket gets `TCP_NODELAY` and this config's keepalive, inherited from
    /// its listener where the platform does that (Linux), so the relay need not set them
    /// (give the relay [`RelayConfig::client_keepalive_inherited`]).
    #[cfg_attr(feature = "serde", serde(skip))]
    pub relay: RelayConfig,
    /// What one HTTP/2 connection may cost (TLS connections whose client picked `h2`).
    pub http2: Http2Limits,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            head_timeout: Duration::from_secs(10),
            max_head_bytes: 16 * 1024,
            max_headers: 64,
            open_connections: None,
            stop_grace: Duration::from_secs(5),
            proxy_protocol_from: Vec::new(),
            relay: RelayConfig::default(),
            http2: Http2Limits::default(),
        }
    }
}

impl HttpLimits {
    /// Caps the connections served at once at `cap`.
    pub fn open_connections(mut self, cap: usize) -> Self {
        self.open_connections = Some(Arc::new(Semaphore::new(cap.min(Semaphore::MAX_PERMITS))));
        self
    }

    /// The same deadlines for a listener that is not public (admin, metrics): no cap, and no
    /// PROXY header expected, since a balancer does not stand in front of it (an operator's
    /// `curl` from a balancer's host must not be closed for lacking one).
    pub fn for_private_listener(&self) -> Self {
        Self {
            open_connections: None,
            proxy_protocol_from: Vec::new(),
            ..self.clone()
        }
    }
}
