//! The TLS handshake of an accepted connection.

use std::{fmt, sync::Arc, time::Duration};

use bytes::Bytes;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::{net::TcpStream, sync::watch};
use tokio_rustls::{
    rustls::{version, ServerConfig, SupportedProtocolVersion},
    server::TlsStream,
};

use super::{CertificateError, Certificates, TlsSettings, TlsVersion};
use crate::{
    server::{accept::stopped, handshake::Handshake, ClientTls},
    Peer,
};

/// TLS for [`serve_tls`](crate::server::serve_tls) and
/// [`serve_tls_on_workers`](crate::server::serve_tls_on_workers): the rustls server config
/// (aws-lc-rs provider, the given oldest version, ALPN `h2` and `http/1.1`) over hot-reloadable
/// [`Certificates`]. Cheap to clone.
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
///
/// use tower_ws_proxy::server::tls::{TlsAcceptor, TlsSettings, TlsVersion};
///
/// let tls = TlsAcceptor::new(&TlsSettings::new("cert.pem", "key.pem").min_version(TlsVersion::Tls13))?;
/// let _watcher = tls.certificates().watch(Duration::from_secs(1));
/// assert_eq!(tls.config().alpn_protocols, [b"h2".to_vec(), b"http/1.1".to_vec()]);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct TlsAcceptor {
    acceptor: tokio_rustls::TlsAcceptor,
    certificates: Arc<Certificates>,
}

impl TlsAcceptor {
    /// Loads the certificates of `settings`; the error names the file that could not be
    /// read or used.
    pub fn new(settings: &TlsSettings) -> Result<Self, CertificateError> {
        let certificates = Certificates::load(settings)?;
        Ok(Self::with_certificates(
            certificates,
            settings.min_version,
            settings.http2,
        ))
    }

    /// Serves `certificates`, to clients of `min_version` or newer, offering HTTP/2 by ALPN
    /// if `http2`.
    pub fn with_certificates(
        certificates: Arc<Certificates>,
        min_version: TlsVersion,
        http2: bool,
    ) -> Self {
        let versions: &[&'static SupportedProtocolVersion] = match min_version {
            TlsVersion::Tls12 => &[&version::TLS13, &version::TLS12],
            TlsVersion::Tls13 => &[&version::TLS13],
        };
        let mut config = ServerConfig::builder_with_provider(Arc::new(super::provider()))
            .with_protocol_versions(versions)
            .expect("the aws-lc-rs provider has cipher suites for TLS 1.2 and 1.3")
            .with_no_client_auth()
            .with_cert_resolver(certificates.clone());
        // Only what the connection can be served with: hyper's HTTP/2 server (with extended
        // CONNECT, so WebSockets too) and its HTTP/1.1 server. A client that offers neither
        // is refused in the handshake rather than misunderstood after it.
        config.alpn_protocols = if http2 {
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        } else {
            vec![b"http/1.1".to_vec()]
        };
        Self {
            acceptor: Arc::new(config).into(),
            certificates,
        }
    }

    /// The certificates served: [`reload`](Certificates::reload) them on SIGHUP, or
    /// [`watch`](Certificates::watch) their files.
    pub fn certificates(&self) -> &Arc<Certificates> {
        &self.certificates
    }

    /// The rustls server config.
    pub fn config(&self) -> &Arc<ServerConfig> {
        self.acceptor.config()
    }
}

impl Handshake for TlsAcceptor {
    type Io = TlsStream<TcpStream>;

    async fn handshake(
        &self,
        tcp: TcpStream,
        within: Duration,
        stop: &mut watch::Receiver<bool>,
    ) -> Option<(Self::Io, Option<ClientTls>)> {
        let handshake = tokio::time::timeout(within, self.acceptor.accept(tcp));
        // A stop ends a handshake at once: there is no request in flight to finish.
        let handshake = tokio::select! {
            handshake = handshake => handshake,
            () = stopped(stop) => return None,
        };
        match handshake {
            Ok(Ok(stream)) => {
                let session = stream.get_ref().1;
                let tls = ClientTls {
                    server_name: session.server_name().map(Arc::from),
                    http2: session.alpn_protocol() == Some(b"h2"),
                };
                Some((stream, Some(tls)))
            }
            Ok(Err(error)) => {
                tracing::debug!(%error, "TLS handshake failed");
                None
            }
            Err(_) => {
                tracing::debug!("TLS handshake timed out");
                None
            }
        }
    }
}

/// The client's TLS stream of an upgrade on a [`serve_tls`](crate::server::serve_tls)
/// connection, with what hyper had read past the request head.
pub(crate) fn tls_peer(upgraded: Upgraded) -> Result<Peer<TlsStream<TcpStream>>, Upgraded> {
    let parts = upgraded.downcast::<TokioIo<TlsStream<TcpStream>>>()?;
    let preread = Bytes::copy_from_slice(&parts.read_buf);
    Ok(Peer::with_preread(parts.io.into_inner(), preread))
}

impl fmt::Debug for TlsAcceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsAcceptor")
            .field("certificates", &self.certificates)
            .finish_non_exhaustive()
    }
}
