//! The fast-path server's HTTP/1.1 connections, seen from a client's socket.

use std::{convert::Infallible, time::Duration};

use bytes::Bytes;
use http_body_util::Full;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
};
use tower_ws_proxy::server::{serve, HttpLimits};

/// A client that half-closes once its request is out still gets the answer, even one that
/// comes after the FIN (the server does not watch for the client's end while it answers).
#[tokio::test]
async fn a_client_that_half_closes_after_its_request_gets_the_answer() {
    let app = tower::service_fn(
        |_: http::Request<tower_ws_proxy::server::RequestBody>| async {
            // Answer after the client's FIN has arrived.
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from("late"))))
        },
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = watch::channel(false);
    let serving = serve(listener, app, HttpLimits::default(), stopped);

    let mut client = TcpStream::connect(address).await.unwrap();
    client
        .write_all(b"GET / HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    client.shutdown().await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(5), client.read_to_string(&mut answer))
        .await
        .expect("the server answers")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert!(answer.ends_with("late"), "{answer:?}");

    stop.send_replace(true);
    serving.await;
}

mod support;

use http_body_util::BodyExt;
use tower::{Layer, Service};
use tower_ws_proxy::{
    is_websocket_upgrade, server::RequestBody, LiveConnections, ProxyBody, RelayConfig, Upstream,
    UpstreamConfig, WebSocketLayer,
};

const HANDSHAKE: &[u8] = b"GET /chat HTTP/1.1\r\nhost: test\r\nconnection: upgrade\r\n\
    upgrade: websocket\r\nsec-websocket-version: 13\r\n\
    sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

/// A masked text frame "hi", as a client sends it.
const MASKED_HI: &[u8] = &[0x81, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2];

/// The server with the WebSocket proxy over one echo backend; ordinary requests get
/// "plain". Returns the address, the stop and the serving future.
async fn proxy_server(
    limits: HttpLimits,
) -> (
    std::net::SocketAddr,
    watch::Sender<bool>,
    tower_ws_proxy::server::Stopped,
) {
    let (backend, _) = support::echo_server().await;
    let proxy = WebSocketLayer::new(LiveConnections::new(10), RelayConfig::default()).layer(
        Upstream::new(backend.to_string(), UpstreamConfig::default()),
    );
    let app = tower::service_fn(move |request: http::Request<RequestBody>| {
        let mut proxy = proxy.clone();
        async move {
            if is_websocket_upgrade(&request) {
                return proxy.call(request).await;
            }
            let plain: ProxyBody = Full::new(Bytes::from("plain"))
                .map_err(|never| match never {})
                .boxed_unsync();
            Ok::<_, Infallible>(http::Response::new(plain))
        }
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = watch::channel(false);
    (address, stop, serve(listener, app, limits, stopped))
}

/// Reads a response head, byte by byte, so no frame byte after it is taken.
async fn read_head(client: &mut TcpStream) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(client.read_u8().await.expect("a whole head"));
    }
    String::from_utf8(head).unwrap()
}

async fn read_echo_of_hi(client: &mut TcpStream) {
    let mut frame = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut frame))
        .await
        .expect("the echo in time")
        .unwrap();
    assert_eq!(&frame, &[0x81, 2, b'h', b'i']);
}

/// A client may send its first frame right behind its handshake: the server, which read
/// both at once, hands the frame to the relay with the socket.
#[tokio::test]
async fn a_frame_sent_with_the_handshake_reaches_the_backend() {
    let (address, stop, serving) = proxy_server(HttpLimits::default()).await;
    let mut client = TcpStream::connect(address).await.unwrap();
    client
        .write_all(&[HANDSHAKE, MASKED_HI].concat())
        .await
        .unwrap();
    let head = read_head(&mut client).await;
    assert!(
        head.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
        "{head}"
    );
    assert!(
        head.contains("sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
        "{head}"
    );
    read_echo_of_hi(&mut client).await;
    stop.send_replace(true);
    serving.await;
}

/// A handshake the proxy refuses gets its status and reason, then the connection ends.
#[tokio::test]
async fn a_refused_handshake_gets_its_status_and_the_connection_closes() {
    let (address, stop, serving) = proxy_server(HttpLimits::default()).await;
    let mut client = TcpStream::connect(address).await.unwrap();
    let old_version = std::str::from_utf8(HANDSHAKE)
        .unwrap()
        .replace("version: 13", "version: 8");
    client.write_all(old_version.as_bytes()).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(5), client.read_to_string(&mut answer))
        .await
        .expect("the answer, then the end")
        .unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 426 Upgrade Required\r\n"),
        "{answer}"
    );
    assert!(answer.contains("\r\nconnection: close\r\n"), "{answer}");
    assert!(
        answer.contains("\r\nsec-websocket-version: 13\r\n"),
        "{answer}"
    );
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    let length = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length: "))
        .expect("a length");
    assert_eq!(length.parse::<usize>().unwrap(), body.len(), "{answer}");
    stop.send_replace(true);
    serving.await;
}

/// A connection that starts with an ordinary request stays hyper's: keep-alive works, and
/// a WebSocket handshake after it on the same connection is relayed too.
#[tokio::test]
async fn a_websocket_after_an_ordinary_request_on_one_connection_is_relayed() {
    let (address, stop, serving) = proxy_server(HttpLimits::default()).await;
    let mut client = TcpStream::connect(address).await.unwrap();
    client
        .write_all(b"GET /plain HTTP/1.1\r\nhost: test\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut client).await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    let mut body = [0u8; 5];
    client.read_exact(&mut body).await.unwrap();
    assert_eq!(&body, b"plain");
    client.write_all(HANDSHAKE).await.unwrap();
    let head = read_head(&mut client).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    client.write_all(MASKED_HI).await.unwrap();
    read_echo_of_hi(&mut client).await;
    stop.send_replace(true);
    serving.await;
}

/// A head that stops halfway is dropped at the head timeout, with nothing written.
#[tokio::test]
async fn a_head_that_stops_halfway_is_dropped_at_the_head_timeout() {
    let mut limits = HttpLimits::default();
    limits.head_timeout = Duration::from_millis(300);
    let (address, stop, serving) = proxy_server(limits).await;
    let mut client = TcpStream::connect(address).await.unwrap();
    client.write_all(&HANDSHAKE[..40]).await.unwrap();
    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut answer))
        .await
        .expect("closed within the bound")
        .unwrap();
    assert!(answer.is_empty(), "{answer:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
    stop.send_replace(true);
    serving.await;
}

/// After a stop, a connection whose head is still coming gets the first request's grace
/// (a second), then is closed: the server's stop does not wait for it.
#[tokio::test]
async fn a_stop_leaves_a_head_in_progress_the_grace_only() {
    let (address, stop, serving) = proxy_server(HttpLimits::default()).await;
    let mut client = TcpStream::connect(address).await.unwrap();
    client.write_all(&HANDSHAKE[..40]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = std::time::Instant::now();
    stop.send_replace(true);
    tokio::time::timeout(Duration::from_secs(4), serving)
        .await
        .expect("the stop ends within the grace");
    let mut answer = Vec::new();
    let _ = client.read_to_end(&mut answer).await;
    assert!(answer.is_empty(), "{answer:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}
