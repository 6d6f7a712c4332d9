//! What `Upstream` sends a backend for a WebSocket handshake.

use std::time::Duration;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};
use tower_ws_proxy::{Upstream, UpstreamConfig};

/// The backend gets the client's method, path, query and end-to-end headers in order, then
/// the upgrade headers; no hop-by-hop header (standard or named in `Connection`) reaches it.
#[tokio::test]
async fn the_handshake_carries_end_to_end_headers_only() {
    let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = Upstream::new(
        backend.local_addr().unwrap().to_string(),
        UpstreamConfig::default(),
    );
    let (client, ()) = http::Request::get("/connect/42?userId=42&x=1")
        .header("host", "gateway.example")
        .header("connection", "keep-alive, Upgrade, X-Trace")
        .header("upgrade", "websocket")
        .header("x-trace", "abc")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic c2VjcmV0")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("sec-websocket-version", "13")
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .body(())
        .unwrap()
        .into_parts();
    let answer = tokio::spawn(async move { upstream.open_websocket(&client).await });

    let (mut socket, _) = backend.accept().await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), socket.read(&mut byte))
            .await
            .expect("the request head arrives")
            .unwrap();
        assert_eq!(read, 1, "the head ended early: {head:?}");
        head.push(byte[0]);
    }
    socket
        .write_all(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
        )
        .await
        .unwrap();

    assert_eq!(
        String::from_utf8(head).unwrap(),
        "GET /connect/42?userId=42&x=1 HTTP/1.1\r\n\
         host: gateway.example\r\n\
         sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         sec-websocket-version: 13\r\n\
         cookie: a=1\r\n\
         cookie: b=2\r\n\
         connection: upgrade\r\n\
         upgrade: websocket\r\n\r\n"
    );
    let answer = answer.await.unwrap().unwrap();
    assert_eq!(answer.response.status(), 101);
    assert!(answer.upgraded.is_some());
}
