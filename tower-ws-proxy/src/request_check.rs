//! What a client request must be before it costs a slot or a backend dial: a well-formed
//! WebSocket handshake, and no header from the gateway's own namespace.

use std::fmt;

use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode};

use crate::{text_response, ProxyBody};

/// Headers whose names start with this are the gateway's own (migration origin and
/// signature): a client's are dropped, so a backend sees only what a gateway set.
pub const INTERNAL_HEADER_PREFIX: &str = "x-wscluster-";

/// Removes every `x-wscluster-*` header.
///
/// ```
/// use tower_ws_proxy::strip_internal_headers;
///
/// let mut headers = http::HeaderMap::new();
/// headers.insert("x-wscluster-migrated-from", "backend-b".parse().unwrap());
/// headers.insert("x-request-id", "1".parse().unwrap());
/// strip_internal_headers(&mut headers);
/// assert_eq!(headers.len(), 1);
/// ```
pub fn strip_internal_headers(headers: &mut HeaderMap) {
    // Names are stored lowercase, so a prefix test on the str covers every spelling.
    if headers
        .keys()
        .any(|name| name.as_str().starts_with(INTERNAL_HEADER_PREFIX))
    {
        let internal: Vec<_> = headers
            .keys()
            .filter(|name| name.as_str().starts_with(INTERNAL_HEADER_PREFIX))
            .cloned()
            .collect();
        for name in internal {
            headers.remove(name);
        }
    }
}

/// Why a WebSocket upgrade request was refused before reaching a backend.
///
/// ```
/// use tower_ws_proxy::{check_upgrade, BadUpgrade};
///
/// let request = http::Request::get("/connect/1")
///     .header("connection", "upgrade")
///     .header("upgrade", "websocket")
///     .header("sec-websocket-version", "8")
///     .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
///     .body(())
///     .unwrap();
/// let refusal = check_upgrade(&request).unwrap_err();
/// assert_eq!(refusal, BadUpgrade::Version);
/// assert_eq!(refusal.into_response().status(), 426);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BadUpgrade {
    /// No `Sec-WebSocket-Key`, several, or not the base64 of 16 bytes: 400.
    Key,
    /// A `Sec-WebSocket-Version` other than 13: 426 with `Sec-WebSocket-Version: 13`.
    Version,
    /// The upgrade request has a body: 400.
    Body,
}

impl BadUpgrade {
    /// The status that answers it.
    pub fn status(self) -> StatusCode {
        match self {
            BadUpgrade::Version => StatusCode::UPGRADE_REQUIRED,
            BadUpgrade::Key | BadUpgrade::Body => StatusCode::BAD_REQUEST,
        }
    }

    /// The response: the status with the reason, and for a version, the one supported.
    pub fn into_response(self) -> Response<ProxyBody> {
        let mut response = text_response(self.status(), self.to_string());
        if self == BadUpgrade::Version {
            response.headers_mut().insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
        }
        response
    }
}

impl fmt::Display for BadUpgrade {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BadUpgrade::Key => "the websocket handshake needs one valid Sec-WebSocket-Key",
            BadUpgrade::Version => "only websocket version 13 is supported",
            BadUpgrade::Body => "a websocket upgrade request must not have a body",
        })
    }
}

impl std::error::Error for BadUpgrade {}

/// Checks a WebSocket upgrade request (RFC 6455 §4.2.1), or an HTTP/2 extended CONNECT
/// (RFC 8441 §5: the version only), before anything is spent on it.
pub fn check_upgrade<B>(request: &Request<B>) -> Result<(), BadUpgrade> {
    let headers = request.headers();
    let mut versions = headers.get_all(header::SEC_WEBSOCKET_VERSION).iter();
    if versions.next().map(HeaderValue::as_bytes) != Some(b"13") || versions.next().is_some() {
        return Err(BadUpgrade::Version);
    }
    if crate::is_extended_connect(request) {
        // RFC 8441 §5: no key (the stream proves the server took the WebSocket), and the
        // stream's data is the WebSocket, not a body.
        return Ok(());
    }
    let mut keys = headers.get_all(header::SEC_WEBSOCKET_KEY).iter();
    match (keys.next(), keys.next()) {
        (Some(key), None) if is_nonce(key.as_bytes()) => {}
        _ => return Err(BadUpgrade::Key),
    }
    let has_body = headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|length| length.as_bytes() != b"0");
    if has_body {
        return Err(BadUpgrade::Body);
    }
    Ok(())
}

/// The base64 of 16 bytes: 22 significant characters and `==`.
fn is_nonce(key: &[u8]) -> bool {
    let is_base64 = |b: &u8| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/';
    // The last significant character holds 2 bits: it must be one of A, Q, g, w.
    key.len() == 24
        && key.ends_with(b"==")
        && key[..22].iter().all(is_base64)
        && matches!(key[21], b'A' | b'Q' | b'g' | b'w')
}
