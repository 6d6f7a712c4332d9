//! The first request head of a connection: whether it is a WebSocket handshake the server
//! answers itself, and that request, built on the read buffer without copying it.

use std::mem::MaybeUninit;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, Uri, Version};

use crate::server::RequestBody;

/// The most headers parsed on the stack; a limit above it leaves larger heads to hyper.
const MAX_HEADERS_ON_STACK: usize = 64;

/// What the bytes read so far are.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum FirstHead {
    /// Not a whole head yet.
    Partial,
    /// A WebSocket handshake (`GET`, HTTP/1.1, `Connection: upgrade`, `Upgrade: websocket`,
    /// no body, origin-form target) whose head takes this many bytes.
    WebSocket(usize),
    /// Anything else, malformed or past the header limit included: hyper's to answer.
    Other,
}

/// Classifies `buffer`, the connection's first bytes, allowing at most `max_headers`.
pub(super) fn classify(buffer: &[u8], max_headers: usize) -> FirstHead {
    let mut headers =
        [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS_ON_STACK];
    let mut request = httparse::Request::new(&mut []);
    let headers = &mut headers[..max_headers.min(MAX_HEADERS_ON_STACK)];
    match httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut request,
        buffer,
        headers,
    ) {
        Ok(httparse::Status::Partial) => FirstHead::Partial,
        Ok(httparse::Status::Complete(len)) if asks_for_a_websocket(&request) => {
            FirstHead::WebSocket(len)
        }
        Ok(httparse::Status::Complete(_)) | Err(_) => FirstHead::Other,
    }
}

fn asks_for_a_websocket(request: &httparse::Request<'_, '_>) -> bool {
    let (mut connection_upgrade, mut upgrade_websocket) = (false, false);
    for header in request.headers.iter() {
        let name = header.name.as_bytes();
        if name.eq_ignore_ascii_case(b"connection") {
            connection_upgrade |= has_token(header.value, b"upgrade");
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            upgrade_websocket |= has_token(header.value, b"websocket");
        } else if name.eq_ignore_ascii_case(b"content-length") {
            // A body (or a framing to check) is hyper's to read.
            if header.value != b"0" {
                return false;
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding")
            || name.eq_ignore_ascii_case(b"expect")
        {
            return false;
        }
    }
    request.method == Some("GET")
        && request.version == Some(1)
        && request.path.is_some_and(|path| path.starts_with('/'))
        && connection_upgrade
        && upgrade_websocket
}

fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// The request `head` (a whole head that [`classify`] found to be a WebSocket handshake)
/// stands for. Its target and header values share `head`'s buffer; `None` where `http`
/// refuses a value httparse let through, for hyper to answer.
pub(super) fn request(head: &Bytes, max_headers: usize) -> Option<Request<RequestBody>> {
    let mut headers =
        [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS_ON_STACK];
    let mut parsed = httparse::Request::new(&mut []);
    let headers = &mut headers[..max_headers.min(MAX_HEADERS_ON_STACK)];
    httparse::ParserConfig::default()
        .parse_request_with_uninit_headers(&mut parsed, head, headers)
        .ok()?;
    let uri = Uri::from_maybe_shared(head.slice_ref(parsed.path?.as_bytes())).ok()?;
    let mut request = Request::new(RequestBody::default());
    *request.method_mut() = Method::GET;
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    let map = request.headers_mut();
    map.reserve(parsed.headers.len());
    for header in parsed.headers.iter() {
        let name = HeaderName::from_bytes(header.name.as_bytes()).ok()?;
        let value = HeaderValue::from_maybe_shared(head.slice_ref(header.value)).ok()?;
        map.append(name, value);
    }
    Some(request)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const HANDSHAKE: &[u8] = b"GET /chat?userId=7 HTTP/1.1\r\nHost: example\r\n\
        Connection: keep-alive, Upgrade\r\nUpgrade: WebSocket\r\n\
        Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

    #[test]
    fn a_websocket_handshake_is_recognised_and_built_whole() {
        assert_eq!(
            classify(HANDSHAKE, 64),
            FirstHead::WebSocket(HANDSHAKE.len())
        );
        let request = request(&Bytes::from_static(HANDSHAKE), 64).expect("a request");
        assert_eq!(request.uri(), "/chat?userId=7");
        assert_eq!(
            request.headers()["sec-websocket-key"],
            "dGhlIHNhbXBsZSBub25jZQ=="
        );
        assert_eq!(request.headers().len(), 5);
        assert!(crate::is_websocket_upgrade(&request));
    }

    #[test]
    fn a_head_cut_short_needs_more_bytes() {
        assert_eq!(classify(&HANDSHAKE[..40], 64), FirstHead::Partial);
    }

    #[test]
    fn anything_else_is_hypers() {
        let other = |head: &str| classify(head.as_bytes(), 64);
        let handshake = std::str::from_utf8(HANDSHAKE).unwrap();
        for head in [
            "GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            &handshake.replace("GET", "POST"),
            &handshake.replace("HTTP/1.1", "HTTP/1.0"),
            &handshake.replace("/chat", "http://example/chat"),
            &handshake.replace("Upgrade: WebSocket", "Upgrade: h2c"),
            &handshake.replace("keep-alive, Upgrade", "keep-alive"),
            &handshake.replace("Host: example", "Content-Length: 5"),
            &handshake.replace("Host: example", "Transfer-Encoding: chunked"),
            &handshake.replace("Host: example", "Expect: 100-continue"),
            "GET /\u{1} HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(other(head), FirstHead::Other, "{head:?}");
        }
        // Past the header limit: hyper answers 431.
        assert_eq!(classify(HANDSHAKE, 4), FirstHead::Other);
        let with_zero_length = handshake.replace("Host: example", "Content-Length: 0");
        assert!(matches!(other(&with_zero_length), FirstHead::WebSocket(_)));
    }

    fn cases() -> u32 {
        std::env::var("FUZZ_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1_000)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(cases()))]

        /// Whatever a client sends first, the head is classified without a panic, and one
        /// taken for a handshake is built into a request or left to hyper.
        #[test]
        fn any_first_bytes_are_classified(
            mutations in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut bytes = HANDSHAKE.to_vec();
            for (at, value) in mutations {
                let at = at.index(bytes.len());
                bytes[at] = value;
            }
            bytes.truncate(cut.index(bytes.len() + 1));
            if let FirstHead::WebSocket(len) = classify(&bytes, 64) {
                prop_assert!(len <= bytes.len());
                let head = Bytes::copy_from_slice(&bytes[..len]);
                if let Some(request) = request(&head, 64) {
                    prop_assert_eq!(request.method(), Method::GET);
                }
            }
        }
    }
}
