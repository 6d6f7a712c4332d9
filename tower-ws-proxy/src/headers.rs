//! Which headers belong to one hop and which go end to end (RFC 9110 §7.6.1), and whether a
//! request asks for a WebSocket upgrade (RFC 6455 §4.1).

use http::{
    header::{self, HeaderName, HeaderValue},
    HeaderMap, Request,
};

/// Whether a request asks for a WebSocket: an HTTP/1.1 upgrade (RFC 6455 §4.1), or an HTTP/2
/// extended CONNECT (RFC 8441, see [`is_extended_connect`](crate::is_extended_connect)).
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
    (request.method() == http::Method::GET
        && has_token(header::CONNECTION, "upgrade")
        && has_token(header::UPGRADE, "websocket"))
        || crate::is_extended_connect(request)
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

/// Appends `headers` to an HTTP/1.1 head being written, one `name: value` line each.
pub(crate) fn put_header_lines<'a>(
    out: &mut Vec<u8>,
    headers: impl IntoIterator<Item = (&'a HeaderName, &'a HeaderValue)>,
) {
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// Sets the `Connection` and `Upgrade` headers of a WebSocket upgrade.
pub(crate) fn set_upgrade_headers(headers: &mut HeaderMap) {
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
