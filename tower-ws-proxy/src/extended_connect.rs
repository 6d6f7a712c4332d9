//! WebSockets over HTTP/2 (RFC 8441): a client opens one with an extended CONNECT
//! (`:protocol websocket`) on a stream. Backends are spoken to in HTTP/1.1 as before, so the
//! request becomes the upgrade they know, and their `101` the `200` the client expects.

use http::{header, request, HeaderMap, HeaderValue, Method, Request, StatusCode, Version};
use hyper::ext::Protocol;

/// An HTTP/2 extended CONNECT that opens a WebSocket (RFC 8441 §4): method `CONNECT` with
/// `:protocol websocket`. hyper's HTTP/2 server puts the `:protocol` pseudo-header into the
/// request's extensions as [`hyper::ext::Protocol`].
///
/// ```
/// use hyper::ext::Protocol;
/// use tower_ws_proxy::is_extended_connect;
///
/// let mut request = http::Request::connect("https://chat.example.com/connect/42").body(()).unwrap();
/// assert!(!is_extended_connect(&request));
/// request.extensions_mut().insert(Protocol::from_static("websocket"));
/// assert!(is_extended_connect(&request));
/// ```
pub fn is_extended_connect<B>(request: &Request<B>) -> bool {
    request.method() == Method::CONNECT
        && request
            .extensions()
            .get::<Protocol>()
            .is_some_and(is_websocket)
}

/// [`is_extended_connect`] on a request's head.
pub(crate) fn is_extended_connect_head(head: &request::Parts) -> bool {
    head.method == Method::CONNECT && head.extensions.get::<Protocol>().is_some_and(is_websocket)
}

fn is_websocket(protocol: &Protocol) -> bool {
    protocol.as_str().eq_ignore_ascii_case("websocket")
}

/// Rewrites an extended CONNECT's head as the HTTP/1.1 upgrade a backend expects: `GET`,
/// `Host` from `:authority`, the upgrade headers, and a fresh `Sec-WebSocket-Key` (HTTP/2
/// has none: the stream itself proves the server took the WebSocket). The client's
/// `Sec-WebSocket-Version`, `-Protocol` and `-Extensions` go on as they are.
pub(crate) fn into_upgrade(head: &mut request::Parts) {
    head.method = Method::GET;
    head.version = Version::HTTP_11;
    head.extensions.remove::<Protocol>();
    let authority = head.uri.authority().map(|a| a.as_str().to_owned());
    let headers = &mut head.headers;
    if let Some(authority) = authority {
        if let Ok(host) = HeaderValue::try_from(authority) {
            headers.entry(header::HOST).or_insert(host);
        }
    }
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::SEC_WEBSOCKET_KEY, fresh_key());
}

/// The backend's `101` as the client's answer on its HTTP/2 stream: `200`, without the
/// HTTP/1.1 upgrade's headers (`Sec-WebSocket-Protocol` and `-Extensions` stay).
pub(crate) fn into_stream_answer(status: &mut StatusCode, headers: &mut HeaderMap) {
    *status = StatusCode::OK;
    for name in [
        header::SEC_WEBSOCKET_ACCEPT,
        header::CONNECTION,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
}

/// A `Sec-WebSocket-Key`: 16 random bytes in base64 (RFC 6455 §4.1).
fn fresh_key() -> HeaderValue {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let nonce = fastrand::u128(..).to_be_bytes();
    let mut key = [b'='; 24];
    for (chunk, out) in nonce.chunks(3).zip(key.chunks_mut(4)) {
        let bits = chunk.iter().enumerate().fold(0u32, |bits, (i, &byte)| {
            bits | u32::from(byte) << (16 - 8 * i)
        });
        // A full chunk fills 4 characters; the last chunk (1 byte) fills 2, then `==`.
        for (i, slot) in out.iter_mut().enumerate().take(chunk.len() + 1) {
            *slot = ALPHABET[(bits >> (18 - 6 * i) & 63) as usize];
        }
    }
    HeaderValue::from_bytes(&key).expect("base64 is a valid header value")
}

#[cfg(test)]
mod tests {
    use http::{header, Request, StatusCode};
    use hyper::ext::Protocol;

    use super::{into_stream_answer, into_upgrade, is_extended_connect};
    use crate::{check_upgrade, is_websocket_upgrade};

    fn extended_connect() -> Request<()> {
        let mut request = Request::connect("https://chat.example.com/connect/42?room=7")
            .version(http::Version::HTTP_2)
            .header("sec-websocket-version", "13")
            .header("sec-websocket-protocol", "chat")
            .body(())
            .unwrap();
        request
            .extensions_mut()
            .insert(Protocol::from_static("websocket"));
        request
    }

    /// The CONNECT is a WebSocket handshake before and after its rewrite, and the rewrite is
    /// one a backend (and `check_upgrade`) takes as an HTTP/1.1 upgrade.
    #[test]
    fn an_extended_connect_becomes_an_http1_upgrade() {
        let request = extended_connect();
        assert!(is_websocket_upgrade(&request));
        assert_eq!(check_upgrade(&request), Ok(()));
        let (mut head, ()) = request.into_parts();
        into_upgrade(&mut head);
        let request = Request::from_parts(head, ());
        assert!(!is_extended_connect(&request));
        assert!(is_websocket_upgrade(&request));
        assert_eq!(check_upgrade(&request), Ok(()));
        assert_eq!(request.method(), "GET");
        assert_eq!(request.headers()[header::HOST], "chat.example.com");
        assert_eq!(request.headers()["sec-websocket-protocol"], "chat");
        assert_eq!(
            request.uri().path_and_query().unwrap(),
            "/connect/42?room=7"
        );
    }

    /// Every rewrite gets its own key, and each is a valid one.
    #[test]
    fn fresh_keys_are_valid_and_differ() {
        let key = |_| {
            let (mut head, ()) = extended_connect().into_parts();
            into_upgrade(&mut head);
            head.headers[header::SEC_WEBSOCKET_KEY].clone()
        };
        let keys: Vec<_> = (0..50).map(key).collect();
        for key in &keys {
            let request = Request::get("/")
                .header("sec-websocket-version", "13")
                .header(header::SEC_WEBSOCKET_KEY, key)
                .body(())
                .unwrap();
            assert_eq!(check_upgrade(&request), Ok(()), "{key:?}");
        }
        let mut unique = keys.clone();
        unique.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        unique.dedup();
        assert_eq!(unique.len(), keys.len());
    }

    /// Another `:protocol`, or a plain CONNECT, is not a WebSocket.
    #[test]
    fn only_the_websocket_protocol_is_one() {
        let mut request = extended_connect();
        request
            .extensions_mut()
            .insert(Protocol::from_static("webtransport"));
        assert!(!is_websocket_upgrade(&request));
        request.extensions_mut().remove::<Protocol>();
        assert!(!is_websocket_upgrade(&request));
    }

    #[test]
    fn the_answer_is_a_200_without_upgrade_headers() {
        let mut status = StatusCode::SWITCHING_PROTOCOLS;
        let mut headers = http::HeaderMap::new();
        headers.insert("sec-websocket-accept", "x".parse().unwrap());
        headers.insert("upgrade", "websocket".parse().unwrap());
        headers.insert("sec-websocket-protocol", "chat".parse().unwrap());
        into_stream_answer(&mut status, &mut headers);
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers.len(), 1);
        assert_eq!(headers["sec-websocket-protocol"], "chat");
    }
}
