//! The WebSocket handshake toward a backend, written and parsed directly: one request write,
//! a read or two for the answer, and the connection is the relay's. (hyper's client would
//! spawn a connection task and hand the socket back through an upgrade, which costs more
//! per handshake than the whole exchange.)

use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};
use http::{request, HeaderName, HeaderValue, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{
    headers::{end_to_end_headers, put_header_lines, strip_hop_by_hop},
    Peer, ProxyBody, UpstreamError, UpstreamStream,
};

/// The most a backend's response head may take.
const MAX_HEAD: usize = 16 * 1024;
/// The most headers a backend's response may have.
const MAX_HEADERS: usize = 64;

/// Writes the client's request head as the backend's (its method, path and query, and its
/// end-to-end headers, with the upgrade headers set) and reads the answer: a 101 leaves the
/// connection, with any bytes read past the head, to the relay; another status comes back
/// with its body (by `content-length`; a response without one ends at EOF).
pub(crate) async fn handshake(
    mut tcp: UpstreamStream,
    client: &request::Parts,
) -> Result<(Response<ProxyBody>, Option<Peer>), UpstreamError> {
    // Written straight from the client's head: no copy of its header map per handshake.
    let mut head = Vec::with_capacity(512);
    let target = client.uri.path_and_query().map_or("/", |pq| pq.as_str());
    head.extend_from_slice(client.method.as_str().as_bytes());
    head.extend_from_slice(b" ");
    head.extend_from_slice(target.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    put_header_lines(&mut head, end_to_end_headers(&client.headers));
    head.extend_from_slice(b"connection: upgrade\r\nupgrade: websocket\r\n\r\n");
    tcp.write_all(&head).await.map_err(UpstreamError::Connect)?;
    // Over TLS the head may sit in the session until flushed.
    tcp.flush().await.map_err(UpstreamError::Connect)?;

    // Read straight into spare capacity: no zeroed chunk per read.
    let mut buffer = BytesMut::with_capacity(1024);
    let (response, head_len) = loop {
        if buffer.len() >= MAX_HEAD {
            return Err(http_error("the backend's response head is too large"));
        }
        if buffer.capacity() - buffer.len() < 512 {
            buffer.reserve(4096);
        }
        let read = tcp
            .read_buf(&mut buffer)
            .await
            .map_err(|e| UpstreamError::Http(e.into()))?;
        if read == 0 {
            return Err(http_error(
                "the backend closed the connection before answering",
            ));
        }
        if let Some(parsed) = parse_head(&buffer)? {
            break parsed;
        }
    };
    let rest = buffer.split_off(head_len);
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        // Usually nothing follows the 101; what does is copied, so the head's buffer goes.
        let peer = Peer::with_preread(tcp, Bytes::copy_from_slice(&rest));
        return Ok((response.map(|()| ProxyBody::default()), Some(peer)));
    }
    // A refusal: read its body so the client gets the backend's reason.
    let length = response
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    let mut body = rest;
    match length {
        Some(length) if length <= MAX_HEAD => {
            body.reserve(length.saturating_sub(body.len()));
            while body.len() < length {
                match tcp.read_buf(&mut body).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            body.truncate(length);
        }
        // Too large, or framed some other way: the status and headers say enough.
        _ => body.clear(),
    }
    let mut response = response.map(|()| {
        Full::new(body.freeze())
            .map_err(|never| match never {})
            .boxed_unsync()
    });
    response
        .headers_mut()
        .remove(http::header::TRANSFER_ENCODING);
    Ok((response, None))
}

/// Parses a complete response head; `None` while more bytes are needed.
fn parse_head(buffer: &[u8]) -> Result<Option<(Response<()>, usize)>, UpstreamError> {
    // Uninitialised: the parser writes what it finds, so 2 KiB need not be zeroed first.
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let head_len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut parsed,
        buffer,
        &mut headers,
    ) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(error) => {
            return Err(http_error(&format!(
                "the backend's response is not HTTP: {error}"
            )))
        }
    };
    let status = parsed
        .code
        .and_then(|code| StatusCode::from_u16(code).ok())
        .ok_or_else(|| http_error("the backend's response has no valid status"))?;
    let mut response = Response::new(());
    *response.status_mut() = status;
    *response.version_mut() = Version::HTTP_11;
    // Sized once; own allocations: nothing keeps the read buffer alive.
    let headers = response.headers_mut();
    headers.reserve(parsed.headers.len());
    for header in parsed.headers.iter() {
        let name = HeaderName::from_bytes(header.name.as_bytes())
            .map_err(|_| http_error("the backend sent an invalid header name"))?;
        let value = HeaderValue::from_bytes(header.value)
            .map_err(|_| http_error("the backend sent an invalid header value"))?;
        headers.append(name, value);
    }
    strip_hop_by_hop(headers);
    Ok(Some((response, head_len)))
}

fn http_error(reason: &str) -> UpstreamError {
    UpstreamError::Http(reason.to_owned().into())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::parse_head;

    fn cases() -> u32 {
        std::env::var("FUZZ_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1_000)
    }

    /// A response head of the usual shape, then random bytes overwritten in it.
    fn head() -> impl Strategy<Value = Vec<u8>> {
        (
            0u16..1000,
            prop::collection::vec(("[a-zA-Z-]{0,12}", "[ -~]{0,20}"), 0..80),
            prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
            any::<prop::sample::Index>(),
        )
            .prop_map(|(status, headers, mutations, cut)| {
                let mut bytes = format!("HTTP/1.1 {status} X\r\n").into_bytes();
                for (name, value) in headers {
                    bytes.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
                }
                bytes.extend_from_slice(b"\r\n");
                for (at, value) in mutations {
                    let at = at.index(bytes.len());
                    bytes[at] = value;
                }
                bytes.truncate(cut.index(bytes.len() + 1));
                bytes
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(cases()))]

        /// Whatever a backend answers, the parser returns a response, "more", or an error.
        #[test]
        fn the_response_parser_survives_any_head(bytes in head()) {
            if let Ok(Some((_, head_len))) = parse_head(&bytes) {
                prop_assert!(head_len <= bytes.len());
            }
        }
    }
}
