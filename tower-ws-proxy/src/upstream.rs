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
use http::{
    header::{self, HeaderName, HeaderValue},
    request, HeaderMap, Request, Response, StatusCode, Uri,
};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt};
use hyper::{body::Incoming, upgrade::Upgraded};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioIo},
};
use tokio::net::TcpStream;
use tower_hashring::balance::Route;
use tower_service::Service;

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

        let (mut response, upgraded) = tokio::time::timeout(
            self.config.handshake_timeout,
            handshake::handshake(tcp, client),
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
    fn new(peer: Peer) -> Self {
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
    let headers = request.headers();
    let has_token = |name: HeaderName, token: &str| {
        // The usual value is the token alone: no split needed.
        headers
            .get_all(&name)
            .iter()
            .any(|value| value.as_bytes().eq_ignore_ascii_case(token.as_bytes()))
            || header_tokens(headers, name).any(|t| t.eq_ignore_ascii_case(token))
    };
    request.method() == http::Method::GET
        && has_token(header::CONNECTION, "upgrade")
        && has_token(header::UPGRADE, "websocket")
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1): those named by `Connection`, and the
/// standard ones. `Sec-WebSocket-*` headers are end-to-end and stay.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if connection_names_more(headers) {
        let named: Vec<HeaderName> = connection_tokens(headers)
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    // Found in one pass over the names rather than nine lookups: a map holds one or two of
    // them (a 101's `Connection` and `Upgrade`).
    let mut present = [false; HOP_BY_HOP_COUNT];
    for name in headers.keys() {
        if let Some(at) = HOP_BY_HOP.iter().position(|hop| hop == name) {
            present[at] = true;
        }
    }
    for (name, present) in HOP_BY_HOP.into_iter().zip(present) {
        if present {
            headers.remove(name);
        }
    }
}

/// Whether `name` is a hop-by-hop header among `headers` (see [`strip_hop_by_hop`]), for
/// code that copies the end-to-end headers without changing the map.
///
/// ```
/// use http::{header, HeaderMap, HeaderName, HeaderValue};
/// use tower_ws_proxy::is_hop_by_hop;
///
/// let mut headers = HeaderMap::new();
/// headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade, x-trace"));
/// assert!(is_hop_by_hop(&HeaderName::from_static("x-trace"), &headers));
/// assert!(is_hop_by_hop(&header::UPGRADE, &headers));
/// assert!(!is_hop_by_hop(&header::SEC_WEBSOCKET_KEY, &headers));
/// ```
pub fn is_hop_by_hop(name: &HeaderName, headers: &HeaderMap) -> bool {
    HOP_BY_HOP.contains(name) || names_in_connection(name, headers)
}

/// Whether `headers`' `Connection` lists `name`.
fn names_in_connection(name: &HeaderName, headers: &HeaderMap) -> bool {
    connection_tokens(headers).any(|t| t.eq_ignore_ascii_case(name.as_str()))
}

/// Whether `Connection` lists anything beyond the standard hop-by-hop names (a WebSocket
/// upgrade's lists `Upgrade`, perhaps `keep-alive`): only then must each header be looked up
/// among its tokens.
fn connection_names_more(headers: &HeaderMap) -> bool {
    connection_tokens(headers).any(|token| {
        !HOP_BY_HOP
            .iter()
            .any(|name| token.eq_ignore_ascii_case(name.as_str()))
    })
}

/// The end-to-end headers among `headers`: every one but the hop-by-hop ones (see
/// [`is_hop_by_hop`]), read in place, for code that copies them to another hop without
/// changing (or copying) the map.
///
/// ```
/// use http::{header, HeaderMap, HeaderValue};
/// use tower_ws_proxy::end_to_end_headers;
///
/// let mut headers = HeaderMap::new();
/// headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade, x-trace"));
/// headers.insert("x-trace", HeaderValue::from_static("1"));
/// headers.insert(header::COOKIE, HeaderValue::from_static("a=1"));
/// let kept: Vec<_> = end_to_end_headers(&headers).map(|(name, _)| name.as_str()).collect();
/// assert_eq!(kept, ["cookie"]);
/// ```
pub fn end_to_end_headers(
    headers: &HeaderMap,
) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> {
    // `Connection` read once per map, not once per header.
    let listed = connection_names_more(headers);
    headers.iter().filter(move |(name, _)| {
        !(HOP_BY_HOP.contains(name) || listed && names_in_connection(name, headers))
    })
}

const HOP_BY_HOP_COUNT: usize = 9;
const HOP_BY_HOP: [HeaderName; HOP_BY_HOP_COUNT] = [
    header::CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
];

/// The header names a `Connection` header lists.
fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    header_tokens(headers, header::CONNECTION)
}

/// The comma-separated tokens of every `name` header, trimmed, empty ones skipped.
fn header_tokens(headers: &HeaderMap, name: HeaderName) -> impl Iterator<Item = &str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
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

#[cfg(test)]
mod tests {
    use http::{HeaderMap, HeaderValue};

    use super::{end_to_end_headers, is_hop_by_hop, is_websocket_upgrade, strip_hop_by_hop};

    /// The token alone, in a list, in any case, spread over several headers: all upgrades;
    /// a token that only starts like one, or another method, is not.
    #[test]
    fn websocket_upgrades_are_found_in_any_token_list() {
        let request = |method: &str, connection: &[&str], upgrade: &str| {
            let mut request = http::Request::builder().method(method).uri("/");
            for value in connection {
                request = request.header("connection", *value);
            }
            request.header("upgrade", upgrade).body(()).unwrap()
        };
        for (connection, upgrade) in [
            (&["Upgrade"][..], "websocket"),
            (&["keep-alive, Upgrade"], "WebSocket"),
            (&[" upgrade "], "h2c, websocket"),
            (&["keep-alive", "upgrade"], "websocket"),
        ] {
            assert!(
                is_websocket_upgrade(&request("GET", connection, upgrade)),
                "{connection:?} {upgrade:?}"
            );
        }
        for (method, connection, upgrade) in [
            ("GET", &["upgraded"][..], "websocket"),
            ("GET", &["keep-alive"], "websocket"),
            ("GET", &["upgrade"], "websockets"),
            ("POST", &["upgrade"], "websocket"),
        ] {
            assert!(
                !is_websocket_upgrade(&request(method, connection, upgrade)),
                "{method} {connection:?} {upgrade:?}"
            );
        }
    }

    /// The one-pass filter keeps exactly what the per-header rule keeps, and stripping a map
    /// leaves exactly that, whatever `Connection` lists (standard names only, a custom one,
    /// several headers, odd spacing).
    #[test]
    fn end_to_end_headers_agree_with_is_hop_by_hop() {
        let connections: [&[&str]; 7] = [
            &[],
            &["Upgrade"],
            &["keep-alive, Upgrade"],
            &["close"],
            &["upgrade, X-Trace"],
            &["upgrade", " x-trace ,, cookie"],
            &["Upgrade, TE, proxy-connection"],
        ];
        for connection in connections {
            let mut headers = HeaderMap::new();
            for value in connection {
                headers.append("connection", HeaderValue::from_str(value).unwrap());
            }
            for (name, value) in [
                ("upgrade", "websocket"),
                ("x-trace", "1"),
                ("cookie", "a=1"),
                ("cookie", "b=2"),
                ("close", "x"),
                ("keep-alive", "timeout=5"),
                ("te", "trailers"),
                ("sec-websocket-key", "k"),
            ] {
                headers.append(name, HeaderValue::from_static(value));
            }
            let kept: Vec<_> = end_to_end_headers(&headers).map(|(n, _)| n).collect();
            let expected: Vec<_> = headers
                .iter()
                .filter(|(name, _)| !is_hop_by_hop(name, &headers))
                .map(|(n, _)| n)
                .collect();
            assert_eq!(kept, expected, "Connection: {connection:?}");
            let mut stripped = headers.clone();
            strip_hop_by_hop(&mut stripped);
            let pairs = |iter: &mut dyn Iterator<Item = (&http::HeaderName, &HeaderValue)>| {
                let mut pairs: Vec<_> = iter.map(|(n, v)| format!("{n}: {v:?}")).collect();
                pairs.sort();
                pairs
            };
            assert_eq!(
                pairs(&mut stripped.iter()),
                pairs(&mut end_to_end_headers(&headers)),
                "Connection: {connection:?}"
            );
            assert!(kept.iter().any(|n| *n == "sec-websocket-key"));
            let named_trace = connection
                .iter()
                .any(|v| v.contains("x-trace") || v.contains("X-Trace"));
            assert_eq!(kept.iter().any(|n| *n == "x-trace"), !named_trace);
        }
    }
}
