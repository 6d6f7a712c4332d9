//! One backend: forwards HTTP requests and opens WebSocket upgrades toward it.

use std::{fmt, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{
    header::{self, HeaderName, HeaderValue},
    request, HeaderMap, Request, Response, Uri,
};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::{body::Incoming, upgrade::Upgraded};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioIo},
};
use tokio::net::TcpStream;

use crate::{handshake, Peer};

/// A request body the upstream can send (boxed so retries can swap it for an empty one).
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// A type-erased error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Timeouts toward one backend.
///
/// ```
/// use std::time::Duration;
/// use tower_ws_proxy::UpstreamConfig;
///
/// let config = UpstreamConfig::default();
/// assert_eq!(config.connect_timeout, Duration::from_secs(2));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct UpstreamConfig {
    /// How long a TCP connect to the backend may take (default: 2 s).
    pub connect_timeout: Duration,
    /// How long the backend may take to answer a WebSocket handshake (default: 5 s).
    pub handshake_timeout: Duration,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(2),
            handshake_timeout: Duration::from_secs(5),
        }
    }
}

/// Why a backend could not serve a request. All of these mean the request never reached a
/// backend's application, so a proxy may try the next backend.
#[derive(Debug)]
#[non_exhaustive]
pub enum UpstreamError {
    /// The TCP connect failed or timed out.
    Connect(std::io::Error),
    /// The backend broke the HTTP exchange (e.g. closed the connection).
    Http(BoxError),
    /// The backend did not answer the WebSocket handshake in time.
    HandshakeTimeout,
}

impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpstreamError::Connect(e) => write!(f, "cannot connect to the backend: {e}"),
            UpstreamError::Http(e) => write!(f, "the backend failed the exchange: {e}"),
            UpstreamError::HandshakeTimeout => {
                f.write_str("the backend did not answer the websocket handshake in time")
            }
        }
    }
}

impl std::error::Error for UpstreamError {}

/// The backend's answer to a WebSocket handshake.
#[derive(Debug)]
pub struct WebSocketAnswer {
    /// The backend's response, hop-by-hop headers removed (with its body when it refused).
    pub response: Response<ProxyBody>,
    /// The upgraded connection when the response is `101 Switching Protocols`.
    pub upgraded: Option<Peer>,
}

/// One backend reached at `host:port` over HTTP/1.1.
///
/// ```
/// use tower_ws_proxy::{Upstream, UpstreamConfig};
///
/// let upstream = Upstream::new("127.0.0.1:7100", UpstreamConfig::default());
/// assert_eq!(upstream.authority(), "127.0.0.1:7100");
/// ```
#[derive(Clone)]
pub struct Upstream {
    authority: Arc<str>,
    client: Client<HttpConnector, ProxyBody>,
    config: UpstreamConfig,
}

impl Upstream {
    /// A backend at `authority` (`host:port`).
    pub fn new(authority: impl Into<Arc<str>>, config: UpstreamConfig) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.set_nodelay(true);
        Self {
            authority: authority.into(),
            client: Client::builder(TokioExecutor::new()).build(connector),
            config,
        }
    }

    /// The backend's `host:port`.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// Forwards an ordinary HTTP request (pooled connections).
    pub async fn forward(
        &self,
        request: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let (mut parts, body) = request.into_parts();
        parts.uri = self.absolute_uri(&parts.uri)?;
        strip_hop_by_hop(&mut parts.headers);
        let mut response = self
            .client
            .request(Request::from_parts(parts, body))
            .await
            .map_err(|e| {
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
            self.config.connect_timeout,
            TcpStream::connect(&*self.authority),
        )
        .await
        .map_err(|_| UpstreamError::Connect(std::io::ErrorKind::TimedOut.into()))?
        .map_err(UpstreamError::Connect)?;
        let _ = tcp.set_nodelay(true);

        let mut request = Request::builder()
            .method(client.method.clone())
            .uri(client.uri.path_and_query().map_or("/", |pq| pq.as_str()))
            .body(())
            .map_err(|e| UpstreamError::Http(e.into()))?
            .into_parts()
            .0;
        request.headers = client.headers.clone();
        strip_hop_by_hop(&mut request.headers);
        set_upgrade_headers(&mut request.headers);

        let (mut response, upgraded) = tokio::time::timeout(
            self.config.handshake_timeout,
            handshake::handshake(tcp, &request),
        )
        .await
        .map_err(|_| UpstreamError::HandshakeTimeout)??;
        if upgraded.is_some() {
            set_upgrade_headers(response.headers_mut());
        }
        Ok(WebSocketAnswer { response, upgraded })
    }

    fn absolute_uri(&self, uri: &Uri) -> Result<Uri, UpstreamError> {
        let path = uri.path_and_query().map_or("/", |pq| pq.as_str());
        format!("http://{}{path}", self.authority)
            .parse()
            .map_err(|e: http::uri::InvalidUri| UpstreamError::Http(e.into()))
    }
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("authority", &self.authority)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Whether a request asks for a WebSocket upgrade (RFC 6455 §4.1).
///
/// ```
/// use tower_ws_proxy::is_websocket_upgrade;
///
/// let req = http::Request::get("/connect/1")
///     .header("connection", "keep-alive, Upgrade")
///     .header("upgrade", "websocket")
///     .body(())
///     .unwrap();
/// assert!(is_websocket_upgrade(&req));
/// ```
pub fn is_websocket_upgrade<B>(request: &Request<B>) -> bool {
    let has_token = |name: HeaderName, token: &str| {
        request
            .headers()
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    request.method() == http::Method::GET
        && has_token(header::CONNECTION, "upgrade")
        && has_token(header::UPGRADE, "websocket")
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1): those named by `Connection`, and the
/// standard ones. `Sec-WebSocket-*` headers are end-to-end and stay.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
    ] {
        headers.remove(name);
    }
}

/// The TCP socket under an upgraded hyper connection, with the bytes hyper already read; the
/// connection back when the server wrapped its socket (then relay it as it is).
pub fn tcp_peer(upgraded: Upgraded) -> Result<Peer, Upgraded> {
    let parts = upgraded.downcast::<TokioIo<TcpStream>>()?;
    // `read_buf` can share hyper's whole read buffer; copying the few leftover bytes lets
    // that buffer go, instead of pinning it for the connection's lifetime.
    let preread = Bytes::copy_from_slice(&parts.read_buf);
    Ok(Peer::with_preread(parts.io.into_inner(), preread))
}

fn set_upgrade_headers(headers: &mut HeaderMap) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
}
