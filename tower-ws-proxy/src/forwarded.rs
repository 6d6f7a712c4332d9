//! `X-Forwarded-For`, `X-Forwarded-Proto` and `Forwarded` (RFC 7239) toward the backends.

use std::net::{IpAddr, SocketAddr};

use http::{header, HeaderMap, HeaderName, HeaderValue};

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Tells the backend who the client is: appends the client's address to `X-Forwarded-For`
/// and a `for=…;proto=…` element to `Forwarded` (what came before was set by the client or
/// earlier proxies: only the last element is this gateway's word), and sets
/// `X-Forwarded-Proto`.
///
/// ```
/// use tower_ws_proxy::set_forwarded_headers;
///
/// let mut headers = http::HeaderMap::new();
/// headers.insert("x-forwarded-for", "10.0.0.1".parse().unwrap());
/// set_forwarded_headers(&mut headers, "[::1]:4000".parse().unwrap(), "http");
/// assert_eq!(headers["x-forwarded-for"], "10.0.0.1, ::1");
/// assert_eq!(headers["forwarded"], "for=\"[::1]\";proto=http");
/// assert_eq!(headers["x-forwarded-proto"], "http");
/// ```
pub fn set_forwarded_headers(headers: &mut HeaderMap, client: SocketAddr, proto: &'static str) {
    let ip = client.ip();
    let for_list = match headers
        .get(X_FORWARDED_FOR)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.trim().is_empty())
    {
        Some(earlier) => format!("{earlier}, {ip}"),
        None => ip.to_string(),
    };
    let node = match ip {
        IpAddr::V4(ip) => ip.to_string(),
        // RFC 7239 §6: an IPv6 node is bracketed and quoted.
        IpAddr::V6(ip) => format!("\"[{ip}]\""),
    };
    let element = format!("for={node};proto={proto}");
    let forwarded = match headers
        .get(header::FORWARDED)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.trim().is_empty())
    {
        Some(earlier) => format!("{earlier}, {element}"),
        None => element,
    };
    for (name, value) in [(X_FORWARDED_FOR, for_list), (header::FORWARDED, forwarded)] {
        if let Ok(value) = HeaderValue::try_from(value) {
            headers.insert(name, value);
        }
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
}
