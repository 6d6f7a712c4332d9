//! Writing the service's answer to a WebSocket handshake read without hyper.

use std::{pin::pin, time::SystemTime};

use bytes::{Buf, Bytes};
use http::{header, HeaderMap, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Body;
use tokio::{io::AsyncWriteExt, net::TcpStream, sync::oneshot, time::Instant};

use crate::{headers::put_header_lines, BoxError, Peer};

/// Bytes gathered before a write, for a response that is not a `101`.
const WRITE_CHUNK: usize = 16 * 1024;

/// Writes `response` within `deadline`. A `101`: its head, then the socket, with `rest` (bytes
/// the client sent past its head), goes to the relay through `upgrade`. Any other status: the
/// whole response with `Connection: close`, and the connection ends.
pub(super) async fn answer<B>(
    mut tcp: TcpStream,
    response: Response<B>,
    rest: Bytes,
    upgrade: oneshot::Sender<Peer<TcpStream>>,
    deadline: Instant,
) -> Result<(), BoxError>
where
    B: Body<Data: Send, Error: Into<BoxError>>,
{
    let (head, body) = response.into_parts();
    let mut out = Vec::with_capacity(256);
    if head.status == StatusCode::SWITCHING_PROTOCOLS {
        encode_head(head.status, &head.headers, &mut out);
        out.extend_from_slice(b"\r\n");
        tokio::time::timeout_at(deadline, tcp.write_all(&out)).await??;
        // The relay may already be gone (its backend left): then the socket closes here.
        let _ = upgrade.send(Peer::with_preread(tcp, rest));
        return Ok(());
    }
    drop(upgrade);
    // Boxed: a refusal is rare, and its state would take room in every connection's task.
    let written = Box::pin(tokio::time::timeout_at(
        deadline,
        write_final(&mut tcp, head, body, out),
    ))
    .await;
    let _ = tcp.shutdown().await;
    written?
}

/// A response that ends the connection: its head with its framing, then its body.
async fn write_final<B>(
    tcp: &mut TcpStream,
    mut head: http::response::Parts,
    body: B,
    mut out: Vec<u8>,
) -> Result<(), BoxError>
where
    B: Body<Data: Send, Error: Into<BoxError>>,
{
    for name in [
        header::CONNECTION,
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        head.headers.remove(name);
    }
    encode_head(head.status, &head.headers, &mut out);
    out.extend_from_slice(b"connection: close\r\n");
    if !head.headers.contains_key(header::DATE) {
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(httpdate::fmt_http_date(SystemTime::now()).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let bodiless = head.status.is_informational()
        || head.status == StatusCode::NO_CONTENT
        || head.status == StatusCode::NOT_MODIFIED;
    let length = body.size_hint().exact();
    match length {
        _ if bodiless => {}
        Some(length) => out.extend_from_slice(format!("content-length: {length}\r\n").as_bytes()),
        None => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
    if !bodiless {
        let mut left = length;
        let mut body = pin!(body);
        loop {
            // (No frame is held across a write: a body's error need not be `Send`.)
            let mut data = match body.frame().await {
                None => break,
                Some(frame) => match frame.map_err(Into::<BoxError>::into)?.into_data() {
                    Ok(data) => data,
                    // Trailers: not sent on a response that is closed anyway.
                    Err(_) => continue,
                },
            };
            // A body longer than it said is cut at its length.
            let take = left.map_or(data.remaining(), |left| data.remaining().min(left as usize));
            if left.is_none() && take > 0 {
                out.extend_from_slice(format!("{take:x}\r\n").as_bytes());
            }
            out.extend_from_slice(&data.copy_to_bytes(take));
            drop(data);
            if left.is_none() && take > 0 {
                out.extend_from_slice(b"\r\n");
            }
            left = left.map(|left| left - take as u64);
            if out.len() >= WRITE_CHUNK {
                tcp.write_all(&out).await?;
                out.clear();
            }
        }
        if length.is_none() {
            out.extend_from_slice(b"0\r\n\r\n");
        }
    }
    tcp.write_all(&out).await?;
    Ok(())
}

/// The status line and the headers, without the blank line that ends the head.
fn encode_head(status: StatusCode, headers: &HeaderMap, out: &mut Vec<u8>) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    put_header_lines(out, headers);
}

#[cfg(test)]
mod tests {
    use http_body_util::{Full, StreamBody};
    use hyper::body::Frame;
    use tokio::{
        io::AsyncReadExt,
        net::{TcpListener, TcpStream},
    };

    use super::*;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        (listener.accept().await.unwrap().0, client)
    }

    fn soon() -> Instant {
        Instant::now() + std::time::Duration::from_secs(5)
    }

    #[tokio::test]
    async fn a_101_hands_the_socket_and_the_bytes_past_the_head_to_the_relay() {
        let (server, mut client) = pair().await;
        let (upgrade, upgraded) = oneshot::channel();
        let response = Response::builder()
            .status(101)
            .header("upgrade", "websocket")
            .body(Full::new(Bytes::new()))
            .unwrap();
        answer(
            server,
            response,
            Bytes::from_static(b"\x81"),
            upgrade,
            soon(),
        )
        .await
        .unwrap();
        let peer = upgraded.await.expect("the socket");
        let mut head = vec![0u8; 64];
        let n = client.read(&mut head).await.unwrap();
        assert_eq!(
            &head[..n],
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n"
        );
        drop(peer);
    }

    #[tokio::test]
    async fn a_refusal_is_written_whole_and_closes_the_connection() {
        let (server, mut client) = pair().await;
        let (upgrade, upgraded) = oneshot::channel();
        let response = Response::builder()
            .status(503)
            .header("connection", "keep-alive")
            .body(Full::new(Bytes::from_static(b"no backend")))
            .unwrap();
        answer(server, response, Bytes::new(), upgrade, soon())
            .await
            .unwrap();
        assert!(upgraded.await.is_err(), "no relay for a refusal");
        let mut all = String::new();
        client.read_to_string(&mut all).await.unwrap();
        assert!(
            all.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{all}"
        );
        assert!(all.contains("\r\nconnection: close\r\n"), "{all}");
        assert!(!all.contains("keep-alive"), "{all}");
        assert!(all.contains("\r\ndate: "), "{all}");
        assert!(
            all.ends_with("content-length: 10\r\n\r\nno backend"),
            "{all}"
        );
    }

    #[tokio::test]
    async fn a_body_of_unknown_length_is_chunked() {
        let (server, mut client) = pair().await;
        let (upgrade, _upgraded) = oneshot::channel();
        let frames = futures_util::stream::iter([
            Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(b"hello "))),
            Ok(Frame::data(Bytes::from_static(b"world"))),
        ]);
        let response = Response::builder()
            .status(400)
            .body(StreamBody::new(frames))
            .unwrap();
        answer(server, response, Bytes::new(), upgrade, soon())
            .await
            .unwrap();
        let mut all = String::new();
        client.read_to_string(&mut all).await.unwrap();
        assert!(
            all.ends_with(
                "transfer-encoding: chunked\r\n\r\n6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n"
            ),
            "{all}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_reads_nothing_is_left_at_the_deadline() {
        let (server, _client) = pair().await;
        let (upgrade, _upgraded) = oneshot::channel();
        // Far more than the socket buffers hold, and a client that never reads.
        let response = Response::builder()
            .status(400)
            .body(Full::new(Bytes::from(vec![b'x'; 64 << 20])))
            .unwrap();
        let result = answer(server, response, Bytes::new(), upgrade, soon()).await;
        assert!(result.is_err(), "the write stopped at the deadline");
    }
}
