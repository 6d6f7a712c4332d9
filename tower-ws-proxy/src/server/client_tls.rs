//! Whether the client's connection is TLS, as a request extension.

use std::sync::Arc;

/// Put into every request's extensions by `serve_tls` and `serve_tls_on_workers` (the
/// `tls` feature): the client's connection is TLS.
/// Its absence means plaintext. In an axum handler, extract it with
/// `Option<Extension<ClientTls>>`.
///
/// ```
/// use tower_ws_proxy::server::ClientTls;
///
/// let mut request = http::Request::new(());
/// assert_eq!(ClientTls::forwarded_proto(request.extensions()), "http");
/// request.extensions_mut().insert(ClientTls { server_name: Some("chat.example.com".into()), http2: true });
/// assert_eq!(ClientTls::forwarded_proto(request.extensions()), "https");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientTls {
    /// The name the client asked for (SNI), if it sent one.
    pub server_name: Option<Arc<str>>,
    /// The client picked HTTP/2 by ALPN: the connection is served by hyper's HTTP/2 server,
    /// and its WebSockets come as extended CONNECT streams (RFC 8441).
    pub http2: bool,
}

impl ClientTls {
    /// `"https"` for a request that came over TLS, `"http"` otherwise: the protocol for
    /// [`set_forwarded_headers`](crate::set_forwarded_headers).
    pub fn forwarded_proto(extensions: &http::Extensions) -> &'static str {
        match extensions.get::<ClientTls>() {
            Some(_) => "https",
            None => "http",
        }
    }
}
