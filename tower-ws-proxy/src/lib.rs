//! The WebSocket-aware data plane of a consistent-hash gateway.
//!
//! - [`Upstream`]: one backend as a `tower::Service`; forwards HTTP (pooled HTTP/1.1) and
//!   opens WebSocket handshakes (a `101` carries the backend's socket, [`UpstreamSocket`]),
//!   stripping hop-by-hop headers and keeping `Sec-WebSocket-*` end to end. The balancer
//!   over them is `tower_hashring`'s [`SharedHashRing`](tower_hashring::SharedHashRing),
//!   failing over by [`ProxyFailover`].
//! - [`WebSocketLayer`]: above the balancer, checks handshakes, caps the connections, and
//!   relays each upgraded WebSocket.
//! - [`relay`]: the frame-aware relay. It passes bytes through without re-encoding (masks and
//!   permessage-deflate survive) but follows frame and message boundaries with a
//!   [`frame::FrameTracker`], so a close can be injected toward either side between messages
//!   through a [`RelayHandle`] (the migration layer will also switch upstreams there).
//! - [`HashRingProxy`]: the two in one service,
//!   `WebSocketLayer::new(..).layer(ring.failover(ProxyFailover))`, answering errors with
//!   clear statuses.
//! - [`LiveConnections`]: the proxied WebSockets, one record each: capped, counted per
//!   backend, found by key and ring position (a migrator moves them and records their new
//!   backend there), and closed with 1001 over a paced window on shutdown.
//! - [`server`]: the fast path that hosts them: hyper's HTTP/1.1 server with upgrades on
//!   `SO_REUSEPORT` worker threads, bounded heads, a connection cap and a graceful stop; a
//!   plaintext WebSocket handshake is read and answered without hyper.
//! - [`MakeHandle`]: a request extension through which a layer above the proxy chooses
//!   what the live connections keep of each WebSocket ([`ConnectionHandle`]; a migration layer
//!   keeps what a live move needs).
//!
//! # Cargo features
//!
//! - `metrics` (off by default): `ProxyMetrics` (handshakes by `HandshakeResult` and their
//!   latency, WebSockets opened per backend and how long they lasted), given to the proxy
//!   with `WebSocketLayer::metrics`, and `ActiveWebSockets` (live WebSockets, messages and
//!   bytes per backend, read from [`LiveConnections`] at each scrape), for a
//!   `prometheus_client` registry the application owns. Without it, nothing of Prometheus
//!   is compiled and the proxy records nothing.
//! - `serde` (off by default): `Deserialize` for [`RelayConfig`], [`frame::FrameLimits`],
//!   [`UpstreamConfig`], [`server::HttpLimits`] and [`client_limit::ClientLimits`] (and,
//!   with `tls`, `server::tls::TlsSettings`), so an application reads them straight from its
//!   config file: durations as `"5s"`, `"off"` for a deadline that can be off, and every
//!   value checked (a zero deadline is an error naming the field, not a connection that ends
//!   at once).
//! - `tls` (off by default): `server::tls`, TLS on the fast path's listener
//!   (`server::serve_tls`, `server::serve_tls_on_workers`) with rustls on the `aws-lc-rs`
//!   provider, certificates chosen by SNI and reloaded in place, and `wss://` relayed over
//!   the TLS stream. With `metrics` too, the certificates' reload failures are a counter.
#![forbid(unsafe_code)]

pub mod client_limit;
mod client_upgrade;
pub mod close_code;
mod connection_handle;
mod connections;
#[cfg(feature = "serde")]
mod deserialize;
mod error;
mod extended_connect;
mod failover;
mod forwarded;
pub mod frame;
mod handshake;
mod headers;
#[cfg(feature = "metrics")]
mod metrics;
mod parked;
mod proxy;
mod record;
mod relay;
mod request_check;
pub mod server;
mod traffic;
mod upstream;
#[cfg(feature = "tls")]
mod upstream_tls;
mod websocket;

pub use self::{
    connection_handle::{ConnectionHandle, MakeHandle, OpenedConnection},
    connections::{Admission, ConnectionId, LiveConnections, Refusal, Registered, Tracked},
    error::BoxError,
    extended_connect::is_extended_connect,
    failover::ProxyFailover,
    forwarded::set_forwarded_headers,
    headers::{end_to_end_headers, is_hop_by_hop, is_websocket_upgrade, strip_hop_by_hop},
    parked::ParkedConnection,
    proxy::{text_response, HashRingProxy},
    relay::{
        relay, ClientStream, ParkError, ParkedRelay, Peer, RelayCommand, RelayCommands,
        RelayConfig, RelayHandle, RelayOutcome, SwitchError, UpstreamStream,
    },
    request_check::{check_upgrade, strip_internal_headers, BadUpgrade, INTERNAL_HEADER_PREFIX},
    traffic::{Flow, Traffic, TrafficTotals},
    upstream::{
        tcp_peer, ProxyBody, Upstream, UpstreamConfig, UpstreamError, UpstreamSocket,
        WebSocketAnswer,
    },
    // tower's name inside the middleware's module; the crate root keeps the name it had.
    websocket::{
        ResponseFuture as WebSocketFuture, ResumeError, Resumer, WebSocketLayer, WebSocketProxy,
    },
};

#[cfg(feature = "tls")]
pub use self::upstream_tls::{UpstreamTls, UpstreamTlsSettings};

#[cfg(feature = "metrics")]
pub use self::{
    metrics::{ActiveWebSockets, ProxyMetrics},
    record::{HandshakeResult, OpenedVia},
};

/// The socket options crate of [`RelayConfig::tune_listener`]'s argument.
pub use socket2;
