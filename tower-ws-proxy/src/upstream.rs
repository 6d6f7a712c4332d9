//! One backend: forwards HTTP requests and opens WebSocket upgrades toward it.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{request, Request, Response, StatusCode, Uri};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt};
use hyper::{body::Incoming, upgrade::Upgraded};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioIo},
};
use tokio::net::TcpStream;
use tower_hashring::balance::Route;
use tower_service::Service;

#[cfg(feature = "tls")]
use crate::upstream_tls::BoundedConnector;
#[cfg(feature = "tls")]
use crate::UpstreamTls;
#[cfg(feature = "tls")]
use hyper_rustls::HttpsConnector;

use crate::{
    handshake,
    headers::{is_websocket_upgrade, set_upgrade_headers, strip_hop_by_hop},
    BoxError, Peer, UpstreamStream,
};

/// The pooled client's TCP connector: the config's connect deadline, no Nagle.
fn http_connector(config: &UpstreamConfig) -> HttpConnector {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(config.connect_timeout));
    connector.set_nodelay(true);
    connector
}

/// The pooled HTTP client toward a TLS backend.
#[cfg(feature = "tls")]
type TlsClient = Client<BoundedConnector<HttpsConnector<HttpConnector>>, ProxyBody>;

/// A request body the upstream can send (boxed so retries can swap it for an empty one).
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::{BodyExt, Full};
/// use tower_ws_proxy::ProxyBody;
///
/// let body: ProxyBody = Full::new(Bytes::from("hello")).map_err(|e| match e {}).boxed_unsync();
/// # let _ = body;
/// ```
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// Timeouts toward one backend.
///
/// ```
/// use std::time::Duration;
/// use tower_ws_proxy::UpstreamConfig;
///
/// let config = UpstreamConfig::default();
/// assert_eq!(config.connect_timeout, Duration::from_secs(2));
/// ```
///
/// With the `serde` feature it reads as `{ connect_timeout = "2s", handshake_timeout = "5s" }`
/// (neither may be 0).
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Deserialize),
    serde(default, deny_unknown_fields)
)]
#[non_exhaustive]
pub struct UpstreamConfig {
    /// How long a TCP connect to the backend may take (default: 2 s).
    #[cfg_attr(
        feature = "serde",
        serde(deserialize_with = "crate::deserialize::positive")
    )]
    pub connect_timeout: Duration,
    /// How long the backend may take to answer a WebSocket handshake (default: 5 s).
    #[cfg_attr(
        feature = "serde",
        serde(deserialize_with = "crate::deserialize::positive")
    )]
    pub handshake_timeout: Duration,
    /// TLS to the backends (`wss://`, `https://`), with the `tls` feature; default: plaintext.
    /// In a config file, `tls = { ca = "backends-ca.pem", server_name = "backend.internal" }`
    /// ([`UpstreamTlsSettings`](crate::UpstreamTlsSettings)): the bundle is read as the file
    /// is, and a bad one is an error naming it.
    #[cfg(feature = "tls")]
    #[cfg_attr(
        feature = "serde",
        serde(deserialize_with = "crate::upstream_tls::load")
    )]
    pub tls: Option<UpstreamTls>,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(2),
            handshake_timeout: Duration::from_secs(5),
            #[cfg(feature = "tls")]
            tls: None,
        }
    }
}

/// Why a backend could not serve a request. All of these mean the request never reached a
/// backend's application, so a proxy may try the next backend.
///
/// ```
/// use tower_ws_proxy::UpstreamError;
///
/// let error = UpstreamError::Unavailable(http::StatusCode::SERVICE_UNAVAILABLE);
/// assert_eq!(
///     error.to_string(),
///     "the backend answered the websocket handshake with 503 Service Unavailable"
/// );
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum UpstreamError {
    /// The TCP connect failed or timed out.
    Connect(std::io::Error),
    /// The backend broke the HTTP exchange (e.g. closed the connection).
    Http(BoxError),
    /// The backend did not answer the WebSocket handshake in time.
    HandshakeTimeout,
    /// The backend answered the WebSocket handshake with this 5xx: it cannot take the
    /// connection now, so another may.
    Unavailable(StatusCode),
}

impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpstreamError::Connect(e) => write!(f, "cannot connect to the backend: {e}"),
            UpstreamError::Http(e) => write!(f, "the backend failed the exchange: {e}"),
            UpstreamError::HandshakeTimeout => {
                f.write_str("the backend did not answer the websocket handshake in time")
            }
            UpstreamError::Unavailable(status) => {
                write!(
                    f,
                    "the backend answered the websocket handshake with {status}"
                )
            }
        }
    }
}

impl std::error::Error for UpstreamError {}

/// The backend's answer to a WebSocket handshake.
///
/// ```
/// use tower_ws_proxy::{Upstream, UpstreamError};
///
/// /// Whether the backend took the WebSocket the client asks for in `head`.
/// async fn accepted(upstream: &Upstream, head: &http::request::Parts) -> Result<bool, UpstreamError> {
///     let answer = upstream.open_websocket(head).await?;
///     Ok(answer.upgraded.is_some())
/// }
/// ```
#[derive(Debug)]
pub struct WebSocketAnswer {
    /// The backend's response, hop-by-hop headers removed (with its body when it refused).
    pub response: Response<ProxyBody>,
    /// The upgraded connection when the response is `101 Switching Protocols`.
    pub upgraded: Option<Peer>,
}

/// One backend reached at `host:port` over HTTP/1.1. A backend at a loopback address
/// (`127.0.0.0/8`, `[::1]`, `localhost`) shares the gateway's kernel, which reports its end,
/// so its relayed sockets get no TCP keepalive (see [`RelayConfig::tcp_keepalive`](crate::RelayConfig::tcp_keepalive)).
///
/// ```
/// use tower_ws_proxy::{Upstream, UpstreamConfig};
///
/// let upstream = Upstream::new("127.0.0.1:7100", UpstreamConfig::default());
/// assert_eq!(upstream.authority(), "127.0.0.1:7100");
/// ```
#[derive(Clone)]
pub struct Upstream(Arc<Shared>);

/// What every clone of an [`Upstream`] shares. Behind one `Arc`: the balancer clones the
/// chosen backend's service for each request, and a hyper client's clone is half a dozen
/// reference counts, touched from every worker thread.
#[derive(Clone)]
struct Shared {
    authority: Arc<str>,
    /// The authority is a loopback address: see [`Peer`]'s keepalive.
    same_host: bool,
    client: Client<HttpConnector, ProxyBody>,
    /// TLS to this backend, and the pooled client that speaks it.
    #[cfg(feature = "tls")]
    tls: Option<(UpstreamTls, TlsClient)>,
    config: UpstreamConfig,
}

impl Upstream {
    /// A backend at `authority` (`host:port`), over TLS if `config.tls` says so.
    pub fn new(authority: impl Into<Arc<str>>, config: UpstreamConfig) -> Self {
        #[cfg(feature = "tls")]
        let tls = config.tls.clone();
        let authority = authority.into();
        let upstream = Self(Arc::new(Shared {
            same_host: is_loopback(&authority),
            authority,
            client: Client::builder(TokioExecutor::new()).build(http_connector(&config)),
            #[cfg(feature = "tls")]
            tls: None,
            config,
        }));
        #[cfg(feature = "tls")]
        if let Some(tls) = tls {
            return upstream.tls(tls);
        }
        upstream
    }

    /// Speaks TLS to this backend (`wss://`, `https://`), trusting `tls`'s CAs only. A
    /// handshake that fails (an unknown CA, a name that does not match) is a connect error:
    /// the balancer tries the next candidate.
    #[cfg(feature = "tls")]
    pub fn tls(mut self, tls: UpstreamTls) -> Self {
        let mut http = http_connector(&self.0.config);
        // `https://` URIs reach it through the TLS connector above it.
        http.enforce_http(false);
        let connector = BoundedConnector {
            inner: tls.https_connector(http),
            // The TCP connect has its own deadline inside; the handshake gets the rest.
            deadline: self.0.config.connect_timeout + self.0.config.handshake_timeout,
        };
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Arc::make_mut(&mut self.0).tls = Some((tls, client));
        self
    }

    /// The backend's `host:port`.
    pub fn authority(&self) -> &str {
        &self.0.authority
    }

    /// Forwards an ordinary HTTP request (pooled connections).
    pub async fn forward(
        &self,
        request: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let (mut parts, body) = request.into_parts();
        // An HTTP/2 client's request names its host in `:authority` (the URI), not in `Host`;
        // the backend speaks HTTP/1.1 and gets it as `Host`.
        if let Some(authority) = parts.uri.authority() {
            if let Ok(host) = http::HeaderValue::try_from(authority.as_str()) {
                parts.headers.entry(http::header::HOST).or_insert(host);
            }
        }
        parts.version = http::Version::HTTP_11;
        parts.uri = self.absolute_uri(&parts.uri)?;
        strip_hop_by_hop(&mut parts.headers);
        let request = Request::from_parts(parts, body);
        #[cfg(feature = "tls")]
        let response = match &self.0.tls {
            Some((_, client)) => client.request(request).await,
            None => self.0.client.request(request).await,
        };
        #[cfg(not(feature = "tls"))]
        let response = self.0.client.request(request).await;
        let mut response = response.map_err(|e| {
            if e.is_connect() {
                UpstreamError::Connect(std::io::Error::other(e))
            } else {
                UpstreamError::Http(e.into())
            }
        })?;
        strip_hop_by_hop(response.headers_mut());
        Ok(response)
    }

    /// Sends a WebSocket handshake built from the client's request head (its path, query and
    /// end-to-end headers, `Sec-WebSocket-*` included) on a fresh connection.
    pub async fn open_websocket(
        &self,
        client: &request::Parts,
    ) -> Result<WebSocketAnswer, UpstreamError> {
        let tcp = tokio::time::timeout(
            self.0.config.connect_timeout,
            TcpStream::connect(&*self.0.authority),
        )
        .await
        .map_err(|_| UpstreamError::Connect(std::io::ErrorKind::TimedOut.into()))?
        .map_err(UpstreamError::Connect)?;
        let _ = tcp.set_nodelay(true);

        let (mut response, upgraded) =
            tokio::time::timeout(self.0.config.handshake_timeout, async {
                let stream = self.secure(tcp).await.map_err(UpstreamError::Connect)?;
                handshake::handshake(stream, client).await
            })
            .await
            .map_err(|_| UpstreamError::HandshakeTimeout)??;
        if upgraded.is_some() {
            set_upgrade_headers(response.headers_mut());
        }
        let upgraded = upgraded.map(|peer| peer.on_same_host(self.0.same_host));
        Ok(WebSocketAnswer { response, upgraded })
    }

    /// The socket as the relay's upstream: in TLS if this backend speaks it.
    async fn secure(&self, tcp: TcpStream) -> std::io::Result<UpstreamStream> {
        #[cfg(feature = "tls")]
        if let Some((tls, _)) = &self.0.tls {
            let stream = tls.connect(tcp, &self.0.authority).await?;
            return Ok(UpstreamStream::Tls(Box::new(stream)));
        }
        Ok(tcp.into())
    }

    #[cfg_attr(not(feature = "tls"), allow(clippy::unused_self))]
    fn scheme(&self) -> &'static str {
        #[cfg(feature = "tls")]
        if self.0.tls.is_some() {
            return "https";
        }
        "http"
    }

    fn absolute_uri(&self, uri: &Uri) -> Result<Uri, UpstreamError> {
        let path = uri.path_and_query().map_or("/", |pq| pq.as_str());
        format!("{}://{}{path}", self.scheme(), self.0.authority)
            .parse()
            .map_err(|e: http::uri::InvalidUri| UpstreamError::Http(e.into()))
    }
}

/// Whether `host:port` names this host: a loopback address, or `localhost` (RFC 6761).
fn is_loopback(authority: &str) -> bool {
    if let Ok(address) = authority.parse::<std::net::SocketAddr>() {
        return address.ip().is_loopback();
    }
    authority
        .rsplit_once(':')
        .is_some_and(|(host, _)| host.eq_ignore_ascii_case("localhost"))
}

/// The backend's side of an upgraded WebSocket, carried in the extensions of the `101`
/// response that [`Upstream`]'s `Service` returns, for the relay above to take once.
///
/// ```
/// use tower_ws_proxy::UpstreamSocket;
///
/// let response = http::Response::new(());
/// assert!(response.extensions().get::<UpstreamSocket>().is_none());
/// ```
#[derive(Clone, Debug)]
pub struct UpstreamSocket(Arc<std::sync::Mutex<Option<Peer>>>);

impl UpstreamSocket {
    pub(crate) fn new(peer: Peer) -> Self {
        Self(Arc::new(std::sync::Mutex::new(Some(peer))))
    }

    /// The socket, the first time it is asked for.
    pub fn take(&self) -> Option<Peer> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// One backend as a `tower::Service`: an HTTP request is forwarded (pooled HTTP/1.1); a
/// WebSocket upgrade is handshaken with the backend on a fresh connection, and a `101`
/// comes back with the backend's socket in its extensions ([`UpstreamSocket`]), while a
/// 5xx is [`UpstreamError::Unavailable`]. A [`Route`](tower_hashring::balance::Route) in
/// the request's extensions moves to the response's.
impl Service<Request<ProxyBody>> for Upstream {
    type Response = Response<ProxyBody>;
    type Error = UpstreamError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, UpstreamError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), UpstreamError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request<ProxyBody>) -> Self::Future {
        let this = self.clone();
        let route = request.extensions_mut().remove::<Route>();
        Box::pin(async move {
            let mut response = if is_websocket_upgrade(&request) {
                let (parts, _) = request.into_parts();
                let answer = this.open_websocket(&parts).await?;
                if answer.response.status().is_server_error() {
                    return Err(UpstreamError::Unavailable(answer.response.status()));
                }
                let mut response = answer.response;
                if let Some(peer) = answer.upgraded {
                    response.extensions_mut().insert(UpstreamSocket::new(peer));
                }
                response
            } else {
                this.forward(request)
                    .await?
                    .map(|body| body.map_err(Into::into).boxed_unsync())
            };
            if let Some(route) = route {
                response.extensions_mut().insert(route);
            }
            Ok(response)
        })
    }
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("authority", &self.0.authority)
            .field("scheme", &self.scheme())
            .field("config", &self.0.config)
            .finish_non_exhaustive()
    }
}

/// The TCP socket under an upgraded hyper connection, with the bytes hyper already read; the
/// connection back when the server wrapped its socket (then relay it as it is).
pub fn tcp_peer(upgraded: Upgraded) -> Result<Peer<TcpStream>, Upgraded> {
    let parts = upgraded.downcast::<TokioIo<TcpStream>>()?;
    // `read_buf` can share hyper's whole read buffer; copying the few leftover bytes lets
    // that buffer go, instead of pinning it for the connection's lifetime.
    let preread = Bytes::copy_from_slice(&parts.read_buf);
    Ok(Peer::with_preread(parts.io.into_inner(), preread))
}

#[cfg(test)]
mod tests;
