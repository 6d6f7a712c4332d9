//! `X-Forwarded-For`, `X-Forwarded-Proto` and `Forwarded` (RFC 7239) toward the backends.

use std::{
    io::Write,
    net::{IpAddr, SocketAddr},
};

use bytes::Bytes;
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
    // The address formatted on the stack, and each value built in one exact allocation:
    // this runs on every request.
    let mut text = [0u8; 64];
    let ip = {
        let mut out = &mut text[..];
        // Cannot fail: the longest IPv6 text is 45 bytes.
        let _ = write!(out, "{}", client.ip());
        let left = out.len();
        &text[..text.len() - left]
    };
    // RFC 7239 §6: an IPv6 node is bracketed and quoted.
    let (open, close): (&[u8], &[u8]) = match client.ip() {
        IpAddr::V4(_) => (b"", b""),
        IpAddr::V6(_) => (b"\"[", b"]\""),
    };
    let for_list = appended(headers.get_all(X_FORWARDED_FOR), &[ip]);
    let forwarded = appended(
        headers.get_all(header::FORWARDED),
        &[b"for=", open, ip, close, b";proto=", proto.as_bytes()],
    );
    for (name, value) in [(X_FORWARDED_FOR, for_list), (header::FORWARDED, forwarded)] {
        if let Ok(value) = HeaderValue::from_maybe_shared(value) {
            headers.insert(name, value);
        }
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
}

/// `<earlier>, <parts…>`, or the parts alone when there is no readable earlier list. Every
/// earlier line counts, in order: a proxy may add a line of its own rather than extend the
/// client's, and the list's last entries are the ones to believe.
fn appended(earlier: http::header::GetAll<'_, HeaderValue>, parts: &[&[u8]]) -> Bytes {
    let earlier: Vec<&str> = earlier
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter(|v| !v.trim().is_empty())
        .collect();
    let size = earlier.iter().map(|v| v.len() + 2).sum::<usize>()
        + parts.iter().map(|p| p.len()).sum::<usize>();
    let mut value = Vec::with_capacity(size);
    for line in earlier {
        value.extend_from_slice(line.as_bytes());
        value.extend_from_slice(b", ");
    }
    for part in parts {
        value.extend_from_slice(part);
    }
    Bytes::from(value)
}

#[cfg(test)]
mod tests {
    use http::{HeaderMap, HeaderValue};

    use super::set_forwarded_headers;

    fn forwarded(earlier: &[(&str, &[u8])], client: &str) -> (String, String) {
        let mut headers = HeaderMap::new();
        for (name, value) in earlier {
            let name = http::HeaderName::from_bytes(name.as_bytes()).unwrap();
            headers.append(name, HeaderValue::from_bytes(value).unwrap());
        }
        set_forwarded_headers(&mut headers, client.parse().unwrap(), "https");
        assert_eq!(headers["x-forwarded-proto"], "https");
        let text = |name: &str| headers[name].to_str().unwrap().to_owned();
        (text("x-forwarded-for"), text("forwarded"))
    }

    #[test]
    fn the_client_is_appended_to_what_came_before() {
        assert_eq!(
            forwarded(&[], "203.0.113.9:5000"),
            ("203.0.113.9".into(), "for=203.0.113.9;proto=https".into())
        );
        assert_eq!(
            forwarded(
                &[
                    ("x-forwarded-for", b"10.0.0.1"),
                    ("forwarded", b"for=10.0.0.1")
                ],
                "[2001:db8::1]:443"
            ),
            (
                "10.0.0.1, 2001:db8::1".into(),
                "for=10.0.0.1, for=\"[2001:db8::1]\";proto=https".into()
            )
        );
        // The longest IPv6 text still fits.
        let (for_list, _) = forwarded(&[], "[ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255]:1");
        assert_eq!(for_list, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff");
    }

    #[test]
    fn every_earlier_line_is_kept_in_order() {
        // A proxy that adds its own line: the client's claim stays first, where it is not
        // believed.
        let (for_list, forwarded) = forwarded(
            &[
                ("x-forwarded-for", b"1.2.3.4"),
                ("x-forwarded-for", b"198.51.100.9"),
                ("forwarded", b"for=1.2.3.4"),
                ("forwarded", b"for=198.51.100.9"),
            ],
            "10.0.0.2:80",
        );
        assert_eq!(for_list, "1.2.3.4, 198.51.100.9, 10.0.0.2");
        assert_eq!(
            forwarded,
            "for=1.2.3.4, for=198.51.100.9, for=10.0.0.2;proto=https"
        );
    }

    #[test]
    fn blank_or_unreadable_earlier_values_are_replaced() {
        for earlier in [&b"  "[..], &b"caf\xc3\xa9"[..]] {
            let (for_list, forwarded) = forwarded(
                &[("x-forwarded-for", earlier), ("forwarded", earlier)],
                "192.0.2.1:80",
            );
            assert_eq!(for_list, "192.0.2.1");
            assert_eq!(forwarded, "for=192.0.2.1;proto=https");
        }
    }
}
