//! The fast path: hyper's HTTP/1.1 server with upgrades, serving any `tower::Service` (an
//! axum `Router`, say) on a listener of the caller's runtime ([`serve`]) or on worker
//! threads that each own a runtime and an `SO_REUSEPORT` listener ([`serve_on_workers`]),
//! with bounded request heads, a cap on open connections and a graceful stop. With the
//! `tls` feature, `serve_tls` and `serve_tls_on_workers` do the same over TLS (module `tls`).
//!
//! Why not `axum::serve`: the relay needs the raw TCP socket back from an upgrade, which
//! the auto-detecting builder wraps; and a relay whose two sockets live on one thread never
//! wakes another, as in nginx's worker model. And a plaintext connection whose first request
//! is a WebSocket handshake never meets hyper: the server reads that head itself, hands the
//! service a [`Request<RequestBody>`](RequestBody) built on its read buffer, writes the
//! `101` and gives the bare socket to the relay (a refusal is written whole, with
//! `Connection: close`). hyper's HTTP/1 connection (its dispatcher, two 8 KiB buffers, the
//! upgrade's channel) cost more user time per WebSocket than the rest of the handshake. Every
//! other connection (an ordinary request first, a malformed or oversized head, TLS) is
//! hyper's from its first byte, so its answers (400, 431, keep-alive) are as before. The
//! service is the same `tower::Service` either way.
//!
//! ```no_run
//! # async fn run() -> std::io::Result<()> {
//! use std::convert::Infallible;
//!
//! use tokio::{net::TcpListener, sync::watch};
//! use tower_ws_proxy::server::{self, ClientAddr, HttpLimits};
//!
//! let app = tower::service_fn(|request: http::Request<tower_ws_proxy::server::RequestBody>| async move {
//!     // Where the client connected from (for X-Forwarded-For, logs, limits).
//!     let client = request.extensions().get::<ClientAddr>().map(|c| c.0);
//!     assert!(client.is_some());
//!     Ok::<_, Infallible>(http::Response::new(http_body_util::Full::new(bytes::Bytes::from("hi"))))
//! });
//! let (stop, stopped) = watch::channel(false);
//! let listener = TcpListener::bind("127.0.0.1:0").await?;
//! let serving = server::serve(listener, app, HttpLimits::default(), stopped);
//! server::shutdown_signal().await;
//! stop.send_replace(true);
//! serving.await; // in-flight requests finished, or the stop grace passed
//! # Ok(()) }
//! ```

mod accept;
mod body;
mod client_addr;
mod client_tls;
pub mod descriptors;
mod direct;
#[cfg(unix)]
pub mod handover;
mod handshake;
mod http2;
mod limits;
mod proxy_protocol;
mod service;
mod signal;
mod stopped;
mod systemd;
#[cfg(feature = "tls")]
pub mod tls;
mod workers;

pub use self::{
    accept::serve,
    body::RequestBody,
    client_addr::ClientAddr,
    client_tls::ClientTls,
    http2::Http2Limits,
    limits::HttpLimits,
    service::HttpService,
    signal::{interrupted_again, shutdown_signal},
    stopped::Stopped,
    systemd::notify_systemd_ready,
    workers::{bind_workers, serve_on_listeners, serve_on_workers},
};

#[cfg(feature = "tls")]
pub use self::{
    accept::serve_tls,
    workers::{serve_tls_on_listeners, serve_tls_on_workers},
};
