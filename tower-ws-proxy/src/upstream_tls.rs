//! TLS toward backends (`wss://`, `https://`), for networks where the hop from the gateway
//! to its backends is not trusted: the CAs that sign the backends' certificates, and the name
//! those certificates are checked against.

use std::{
    fmt,
    future::Future,
    path::PathBuf,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use http::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::net::TcpStream;
use tokio_rustls::rustls::{
    pki_types::{pem::PemObject, CertificateDer, ServerName},
    ClientConfig, RootCertStore,
};

use crate::{server::tls::CertificateError, BoxError};

/// Where the backends' CAs are, and the name to check their certificates against.
///
/// With the `serde` feature it reads from a config file (`[upstream.tls]` in the gateway's):
///
/// ```toml
/// ca = "/etc/wscluster/backends-ca.pem"   # PEM, one or more CA certificates
/// server_name = "backend.internal"        # default: the backend's host (an IP address is
///                                         # checked against the certificate's IP names)
/// ```
///
/// ```
/// use tower_ws_proxy::UpstreamTlsSettings;
///
/// let settings = UpstreamTlsSettings::new("ca.pem").server_name("backend.internal");
/// assert_eq!(settings.server_name.as_deref(), Some("backend.internal"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Deserialize),
    serde(deny_unknown_fields)
)]
#[non_exhaustive]
pub struct UpstreamTlsSettings {
    /// The PEM bundle of the CAs that sign the backends' certificates.
    pub ca: PathBuf,
    /// The name every backend's certificate must carry; default: the host of its address.
    #[cfg_attr(feature = "serde", serde(default))]
    pub server_name: Option<String>,
}

impl UpstreamTlsSettings {
    /// Backends whose certificates `ca` signs, checked against their own host.
    pub fn new(ca: impl Into<PathBuf>) -> Self {
        Self {
            ca: ca.into(),
            server_name: None,
        }
    }

    /// Checks every backend's certificate against `name` instead.
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }
}

/// [`UpstreamTlsSettings`] loaded: a rustls client (aws-lc-rs, TLS 1.2 and 1.3, ALPN
/// `http/1.1`) trusting the bundle's CAs only. Cheap to clone; give it to
/// [`Upstream::tls`](crate::Upstream::tls).
///
/// ```no_run
/// use tower_ws_proxy::{Upstream, UpstreamConfig, UpstreamTls, UpstreamTlsSettings};
///
/// let tls = UpstreamTls::new(&UpstreamTlsSettings::new("/etc/wscluster/backends-ca.pem"))?;
/// let backend = Upstream::new("10.0.0.5:7443", UpstreamConfig::default()).tls(tls);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct UpstreamTls {
    /// For WebSockets: ALPN `http/1.1`.
    websocket: Arc<ClientConfig>,
    /// For the pooled client, whose connector sets the ALPN itself.
    requests: Arc<ClientConfig>,
    server_name: Option<ServerName<'static>>,
}

impl UpstreamTls {
    /// Reads the CA bundle; an error names the file (unreadable, no certificate in it, or a
    /// certificate rustls cannot use), or the server name.
    pub fn new(settings: &UpstreamTlsSettings) -> Result<Self, CertificateError> {
        let path = &settings.ca;
        let pem = std::fs::read(path).map_err(|error| CertificateError::read(path, error))?;
        let mut roots = RootCertStore::empty();
        for certificate in CertificateDer::pem_slice_iter(&pem) {
            let certificate =
                certificate.map_err(|error| CertificateError::unusable(path, error))?;
            roots
                .add(certificate)
                .map_err(|error| CertificateError::unusable(path, error))?;
        }
        if roots.is_empty() {
            return Err(CertificateError::unusable(path, "no CERTIFICATE in it"));
        }
        let server_name = match &settings.server_name {
            Some(name) => Some(ServerName::try_from(name.clone()).map_err(|error| {
                CertificateError::unusable(path, format!("server_name `{name}`: {error}"))
            })?),
            None => None,
        };
        let requests =
            ClientConfig::builder_with_provider(Arc::new(crate::server::tls::provider()))
                .with_safe_default_protocol_versions()
                .expect("the aws-lc-rs provider has cipher suites for TLS 1.2 and 1.3")
                .with_root_certificates(roots)
                .with_no_client_auth();
        let mut websocket = requests.clone();
        websocket.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            websocket: Arc::new(websocket),
            requests: Arc::new(requests),
            server_name,
        })
    }

    /// The name `authority`'s certificate must carry.
    fn name_for(&self, authority: &str) -> std::io::Result<ServerName<'static>> {
        if let Some(name) = &self.server_name {
            return Ok(name.clone());
        }
        let host = match authority.rsplit_once(':') {
            Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
            _ => authority,
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        ServerName::try_from(host.to_owned())
            .map_err(|error| std::io::Error::new(std::io::ErrorKind::InvalidInput, error))
    }

    /// The TLS handshake on a connected socket to `authority`.
    pub(crate) async fn connect(
        &self,
        tcp: TcpStream,
        authority: &str,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let name = self.name_for(authority)?;
        tokio_rustls::TlsConnector::from(self.websocket.clone())
            .connect(name, tcp)
            .await
    }

    /// The connector of the pooled HTTP client: `https://` URIs over TLS with these CAs and
    /// this name, `http://` ones in plaintext.
    pub(crate) fn https_connector(
        &self,
        http: HttpConnector,
    ) -> hyper_rustls::HttpsConnector<HttpConnector> {
        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config((*self.requests).clone())
            .https_or_http();
        let builder = match &self.server_name {
            Some(name) => builder.with_server_name_resolver(
                hyper_rustls::FixedServerNameResolver::new(name.clone()),
            ),
            None => builder,
        };
        builder.enable_http1().wrap_connector(http)
    }
}

/// A connector bounded by one deadline over the TCP connect and the TLS handshake: a backend
/// that accepts the connection but never finishes the handshake is a connect error (the
/// balancer then tries the next candidate) at that deadline, not a request stuck until its
/// own.
#[derive(Clone, Debug)]
pub(crate) struct BoundedConnector<C> {
    pub(crate) inner: C,
    pub(crate) deadline: Duration,
}

type ConnectFuture<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>;

impl<C> tower_service::Service<Uri> for BoundedConnector<C>
where
    C: tower_service::Service<Uri>,
    C::Error: Into<BoxError>,
    C::Future: Send + 'static,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future = ConnectFuture<C::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        let deadline = self.deadline;
        Box::pin(async move {
            match tokio::time::timeout(deadline, connecting).await {
                Ok(connected) => connected.map_err(Into::into),
                Err(_) => Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no TLS session with the backend within {deadline:?}"),
                )
                .into()),
            }
        })
    }
}

/// The same loaded client (clones of one another).
impl PartialEq for UpstreamTls {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.websocket, &other.websocket) && self.server_name == other.server_name
    }
}

impl Eq for UpstreamTls {}

/// `[upstream] tls = { ca = …, server_name = … }`: the settings, loaded as they are read.
#[cfg(feature = "serde")]
pub(crate) fn load<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<UpstreamTls>, D::Error> {
    use serde::{de::Error as _, Deserialize};
    let settings = UpstreamTlsSettings::deserialize(deserializer)?;
    UpstreamTls::new(&settings)
        .map(Some)
        .map_err(D::Error::custom)
}

impl fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}
