//! TLS on the fast path's listener (the `tls` feature): rustls, certificates chosen by SNI
//! and reloaded without a restart.
//!
//! - [`TlsSettings`]: the certificate and key files (a default pair and one per SNI name)
//!   and the oldest TLS version accepted (1.2 by default; 1.3 is the other choice).
//! - [`Certificates`]: the loaded certificates, which rustls asks for one at each handshake.
//!   [`reload`](Certificates::reload) (on SIGHUP, say) and [`watch`](Certificates::watch)
//!   (the files, polled) replace them in place: new handshakes get the new certificate,
//!   open connections are untouched, and a file that fails to load leaves the last good
//!   certificate in use, with an error logged and counted.
//! - [`TlsAcceptor`]: the server config over them, for
//!   [`serve_tls`](super::serve_tls) and [`serve_tls_on_workers`](super::serve_tls_on_workers).
//!   The handshake runs on the connection's own task and must end within
//!   [`HttpLimits::head_timeout`](super::HttpLimits::head_timeout) (a client that opens a
//!   connection and sends nothing is dropped then); the first request head then has its
//!   own `head_timeout`. The connection cap counts TLS connections as it counts the others.
//!   Requests carry [`ClientTls`](super::ClientTls), so the forwarded headers say `https`,
//!   and upgraded WebSockets are relayed over the TLS stream (`wss://`).
//!
//! # Choices
//!
//! - **One crypto provider, `aws-lc-rs`** (rustls' default), chosen explicitly (no
//!   process-wide default to install). `ring` builds faster, but ring 0.17 is built on
//!   getrandom 0.2 while the rest of the tree (tungstenite's rand, tower-http's uuid) is on
//!   0.3, and the workspace keeps one version of each crate; aws-lc-sys builds here with the
//!   C compiler alone (about a minute of CPU, once), and its handshake code is the faster
//!   of the two. Its defaults are rustls' safe ones: TLS 1.3 and 1.2 with AEAD cipher suites and
//!   forward secrecy only, X25519 and the NIST P-256/P-384 groups, no renegotiation, no
//!   0-RTT data.
//! - **ALPN `http/1.1` only**: the connection is served by hyper's HTTP/1.1 server, so
//!   advertising `h2` would be a promise the server cannot keep.
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//!
//! use tokio::{net::TcpListener, sync::watch};
//! use tower_ws_proxy::server::{self, tls::{TlsAcceptor, TlsSettings}, ClientTls, HttpLimits};
//!
//! let app = tower::service_fn(|request: http::Request<tower_ws_proxy::server::RequestBody>| async move {
//!     let proto = ClientTls::forwarded_proto(request.extensions());
//!     Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(bytes::Bytes::from(proto))))
//! });
//! let settings = TlsSettings::new("/etc/wscluster/cert.pem", "/etc/wscluster/key.pem")
//!     .sni("chat.example.com", "/etc/wscluster/chat.pem", "/etc/wscluster/chat.key");
//! let tls = TlsAcceptor::new(&settings)?; // names the file that is missing or bad
//! let _watcher = tls.certificates().watch(Duration::from_secs(1));
//! let (stop, stopped) = watch::channel(false);
//! let listener = TcpListener::bind("0.0.0.0:443").await?;
//! let serving = server::serve_tls(listener, app, HttpLimits::default(), tls.clone(), stopped);
//! // On SIGHUP:
//! if let Err(error) = tls.certificates().reload() {
//!     eprintln!("kept the previous certificates: {error}");
//! }
//! stop.send_replace(true);
//! serving.await;
//! # Ok(()) }
//! ```

mod acceptor;
mod certificates;
mod error;
#[cfg(feature = "metrics")]
mod metrics;
mod settings;
mod watch;

pub(crate) use self::acceptor::tls_peer;
pub use self::{
    acceptor::TlsAcceptor,
    certificates::Certificates,
    error::{CertificateError, ReloadError},
    settings::{SniCertificate, TlsSettings, TlsVersion, UnknownTlsVersion},
};

/// The rustls this module is built on, for configs and clients of the same version.
pub use tokio_rustls::rustls;

/// The one crypto provider of the crate.
pub(crate) fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::aws_lc_rs::default_provider()
}
