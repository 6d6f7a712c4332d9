//! WebSockets over HTTP/2 (RFC 8441) through the whole gateway over TLS: streams of one
//! connection routed by key, moved live one by one, closed with 1001 on shutdown; plain
//! HTTP/2 requests beside them; and what one connection may cost (its SETTINGS, and a
//! rapid-reset flood answered with GOAWAY).

mod common;

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use common::*;
use futures_util::SinkExt;
use gateway_bin::{config::GatewayConfig, gateway::Gateway};
use http_body_util::{BodyExt, Full};
use hyper::{client::conn::http2::SendRequest, ext::Protocol, upgrade::Upgraded};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::{
    client::TlsStream,
    rustls::{pki_types::ServerName, ClientConfig},
    TlsConnector,
};
use tokio_tungstenite::{
    tungstenite::{protocol::Role, Message},
    WebSocketStream,
};
use tower_hashring::Ring;

type StreamSocket = WebSocketStream<TokioIo<Upgraded>>;

/// A gateway serving TLS (HTTP/2 offered) with a certificate made here, in front of the
/// demo's `backends`; and a client config that trusts it.
struct TlsGateway {
    gateway: Gateway,
    client: Arc<ClientConfig>,
    dir: std::path::PathBuf,
}

impl TlsGateway {
    async fn start(backends: usize, http2: &str) -> Self {
        let (dir, cert) =
            common::localhost_certificate(&format!("wscluster-gw-h2-{}", fastrand_suffix()));
        let file = GatewayConfig::parse(&format!(
            "[tls]\ncert = \"{0}/cert.pem\"\nkey = \"{0}/key.pem\"\n[http.http2]\n{http2}",
            dir.display()
        ))
        .unwrap();
        let config = GatewayConfig {
            tls: file.tls,
            http: file.http,
            ..any_port()
        };
        let gateway = gateway_bin::demo::start(config, vec![], backends)
            .await
            .unwrap();
        let mut client = common::client_trusting(cert.der());
        client.alpn_protocols = vec![b"h2".to_vec()];
        Self {
            gateway,
            client: Arc::new(client),
            dir,
        }
    }

    /// A TLS connection on which the gateway picked `h2`.
    async fn tls(&self) -> TlsStream<tokio::net::TcpStream> {
        let tcp = tokio::net::TcpStream::connect(self.gateway.public)
            .await
            .unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let tls = TlsConnector::from(self.client.clone())
            .connect(name, tcp)
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        tls
    }

    /// An HTTP/2 connection, driven by a task of its own.
    async fn http2(&self) -> SendRequest<Full<Bytes>> {
        let (sender, connection) = hyper::client::conn::http2::handshake(
            TokioExecutor::new(),
            TokioIo::new(self.tls().await),
        )
        .await
        .unwrap();
        tokio::spawn(connection);
        sender
    }

    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.gateway.public.port())
    }

    async fn shutdown(self) {
        self.gateway.shutdown().await;
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

fn fastrand_suffix() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(0u8)
}

/// Opens `user`'s WebSocket as a stream of `sender`'s connection (an extended CONNECT);
/// returns it and the backend named in its greeting.
async fn open_stream(
    gateway: &TlsGateway,
    sender: &mut SendRequest<Full<Bytes>>,
    user: &str,
) -> (StreamSocket, String) {
    let mut request = http::Request::connect(gateway.url(&format!("/connect/{user}")))
        .version(http::Version::HTTP_2)
        .header("sec-websocket-version", "13")
        .body(Full::default())
        .unwrap();
    request
        .extensions_mut()
        .insert(Protocol::from_static("websocket"));
    sender.ready().await.unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(
        response.status(),
        200,
        "an RFC 8441 stream is accepted with 200"
    );
    assert!(response.headers().get("sec-websocket-accept").is_none());
    let upgraded = hyper::upgrade::on(response).await.unwrap();
    let mut socket =
        WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await;
    let hello = next_json(&mut socket).await;
    assert_eq!(hello["type"], "connected");
    (socket, hello["server"].as_str().unwrap().to_owned())
}

/// Owners on the demo's ring of `ids`.
fn ring(ids: &[&str]) -> Ring {
    ids.iter()
        .fold(Ring::builder(), |b, id| b.node(*id, 1))
        .build()
        .unwrap()
}

/// Streams of one connection reach their keys' owners and echo; an HTTP/2 `POST /send`
/// on the same connection reaches the user's stream through its owner; the metrics count
/// the streams as extended CONNECTs.
#[tokio::test]
async fn websocket_streams_of_one_connection_reach_their_owners() {
    let gateway = TlsGateway::start(2, "").await;
    let mut sender = gateway.http2().await;
    let ring = ring(&["backend-a", "backend-b"]);
    let mut sockets = vec![];
    for n in 0..8 {
        let user = format!("h2-user-{n}");
        let (socket, server) = open_stream(&gateway, &mut sender, &user).await;
        assert_eq!(server, ring.route(user.as_bytes()).unwrap().id().as_str());
        sockets.push((user, socket, server));
    }
    let owners: std::collections::HashSet<_> = sockets.iter().map(|(_, _, s)| s).collect();
    assert_eq!(owners.len(), 2, "8 users spread over both backends");

    for (user, socket, server) in &mut sockets {
        socket
            .send(Message::text(format!("hi {user}")))
            .await
            .unwrap();
        let echo = next_json(socket).await;
        assert_eq!(echo["type"], "echo");
        assert_eq!(echo["server"], server.as_str());
        assert_eq!(echo["content"], format!("hi {user}"));
    }

    let (user, socket, server) = &mut sockets[3];
    let post = http::Request::post(gateway.url(&format!("/send?userId={user}")))
        .body(Full::new(Bytes::from("over h2")))
        .unwrap();
    sender.ready().await.unwrap();
    let answer = sender.send_request(post).await.unwrap();
    assert_eq!(answer.status(), 200);
    let body = answer.into_body().collect().await.unwrap().to_bytes();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (body["delivered"].as_u64(), body["server"].as_str()),
        (Some(1), Some(server.as_str()))
    );
    let message = next_json(socket).await;
    assert_eq!(
        (message["type"].as_str(), message["content"].as_str()),
        (Some("message"), Some("over h2"))
    );

    let (_, metrics) = http(gateway.gateway.admin, "GET", "/metrics", "").await;
    assert!(
        metrics.contains("wscluster_websockets_opened_via_total{via=\"h2_extended_connect\"} 8"),
        "{metrics}"
    );
    assert_eq!(live_connections(&gateway.gateway).await, 8);
    drop(sockets);
    gateway.shutdown().await;
}

/// A backend added mid-traffic takes some users: their streams move to it live while the
/// other streams of the same connection carry on, and no stream loses a message or sees a
/// close.
#[tokio::test]
async fn a_live_move_takes_one_stream_and_leaves_the_others() {
    let gateway = TlsGateway::start(2, "").await;
    let mut sender = gateway.http2().await;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut clients = vec![];
    for n in 0..16 {
        let user = format!("h2-move-{n}");
        let (socket, _) = open_stream(&gateway, &mut sender, &user).await;
        clients.push(spawn_echo_traffic(user, socket, stopped.clone()));
    }
    first_echoes(&mut clients).await;

    let (status, body) = http(gateway.gateway.admin, "POST", "/admin/backends", "").await;
    assert_eq!(status, 201, "{body}");
    let added: serde_json::Value = serde_json::from_str(&body).unwrap();
    let added = added["id"].as_str().unwrap().to_owned();
    let ring = ring(&["backend-a", "backend-b", &added]);
    let mut moved = 0;
    for client in &mut clients {
        if ring.route(client.user.as_bytes()).unwrap().id().as_str() == added {
            moved += 1;
            client.echo_from(&added).await;
        }
    }
    assert!(moved > 0, "a third backend takes some of 16 users");
    stop.send_replace(true);
    for client in clients {
        let traffic = client.traffic.await.unwrap();
        traffic.assert_untouched();
        let owner = ring.route(traffic.user.as_bytes()).unwrap().id().as_str();
        assert_eq!(traffic.received.last().unwrap()["server"], owner);
    }
    // Every stream still rides the one connection: a new one opens on it.
    let (_, server) = open_stream(&gateway, &mut sender, "h2-after-move").await;
    assert_eq!(server, ring.route(b"h2-after-move").unwrap().id().as_str());
    gateway.shutdown().await;
}

/// A shutdown closes each stream's WebSocket with 1001, as it does an upgraded connection.
#[tokio::test]
async fn a_shutdown_closes_streams_with_1001() {
    let gateway = TlsGateway::start(1, "").await;
    let mut sender = gateway.http2().await;
    let (mut first, _) = open_stream(&gateway, &mut sender, "bye-1").await;
    let (mut second, _) = open_stream(&gateway, &mut sender, "bye-2").await;
    let shutdown = tokio::spawn(gateway.shutdown());
    assert_eq!(next_close(&mut first).await.0, 1001);
    assert_eq!(next_close(&mut second).await.0, 1001);
    tokio::time::timeout(Duration::from_secs(10), shutdown)
        .await
        .expect("the shutdown ends once the streams closed")
        .unwrap();
}

/// HTTP/2 frames written by hand: what the gateway announces, and what it does when a
/// client opens and resets streams as fast as it can.
mod frames {
    pub(super) const SETTINGS: u8 = 0x4;
    pub(super) const GOAWAY: u8 = 0x7;
    pub(super) const ENABLE_CONNECT_PROTOCOL: u16 = 0x8;
    pub(super) const MAX_CONCURRENT_STREAMS: u16 = 0x3;
    pub(super) const INITIAL_WINDOW_SIZE: u16 = 0x4;
    pub(super) const MAX_HEADER_LIST_SIZE: u16 = 0x6;
    pub(super) const ENHANCE_YOUR_CALM: u32 = 0xb;

    pub(super) fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut frame = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        frame.extend_from_slice(&[kind, flags]);
        frame.extend_from_slice(&stream.to_be_bytes());
        frame.extend_from_slice(payload);
        frame
    }

    /// `GET https://localhost/count?userId=x` in HPACK: static-table indices and literals
    /// without indexing, so no dynamic table is involved.
    pub(super) fn get_headers() -> Vec<u8> {
        let mut block = vec![0x82, 0x87]; // :method GET, :scheme https
        for (index, value) in [(0x04u8, &b"/count?userId=x"[..]), (0x01, b"localhost")] {
            block.push(index); // literal without indexing, indexed name
            block.push(value.len() as u8);
            block.extend_from_slice(value);
        }
        block
    }

    /// Settings of a SETTINGS frame's payload.
    pub(super) fn settings(payload: &[u8]) -> Vec<(u16, u32)> {
        payload
            .chunks_exact(6)
            .map(|s| {
                (
                    u16::from_be_bytes([s[0], s[1]]),
                    u32::from_be_bytes([s[2], s[3], s[4], s[5]]),
                )
            })
            .collect()
    }
}

/// Reads the next frame: (type, flags, payload).
async fn read_frame(tls: &mut TlsStream<tokio::net::TcpStream>) -> Option<(u8, u8, Vec<u8>)> {
    let mut head = [0; 9];
    tls.read_exact(&mut head).await.ok()?;
    let length = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0; length];
    tls.read_exact(&mut payload).await.ok()?;
    Some((head[3], head[4], payload))
}

/// The gateway's SETTINGS advertise extended CONNECT and the configured stream cap; a flood
/// of streams reset as soon as they are opened ends the connection with GOAWAY
/// `ENHANCE_YOUR_CALM`, and the gateway goes on serving others.
#[tokio::test]
async fn settings_are_announced_and_a_rapid_reset_flood_gets_goaway() {
    let gateway = TlsGateway::start(
        1,
        "max_concurrent_streams = 7\nmax_pending_resets = 10\nstream_window = 65536",
    )
    .await;
    let mut tls = gateway.tls().await;
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    tls.write_all(&frames::frame(frames::SETTINGS, 0, 0, &[]))
        .await
        .unwrap();
    let (kind, flags, payload) = read_frame(&mut tls).await.unwrap();
    assert_eq!((kind, flags), (frames::SETTINGS, 0), "the server's preface");
    let settings = frames::settings(&payload);
    assert!(
        settings.contains(&(frames::ENABLE_CONNECT_PROTOCOL, 1)),
        "{settings:?}"
    );
    assert!(
        settings.contains(&(frames::MAX_CONCURRENT_STREAMS, 7)),
        "{settings:?}"
    );
    for expected in [
        (frames::INITIAL_WINDOW_SIZE, 65_536),
        (frames::MAX_HEADER_LIST_SIZE, 16_384),
    ] {
        assert!(settings.contains(&expected), "{expected:?} in {settings:?}");
    }

    let mut flood = vec![];
    for stream in (1..2_000u32).step_by(2) {
        // HEADERS (END_STREAM | END_HEADERS), then RST_STREAM CANCEL.
        flood.extend(frames::frame(0x1, 0x5, stream, &frames::get_headers()));
        flood.extend(frames::frame(0x3, 0, stream, &8u32.to_be_bytes()));
    }
    // The gateway may close while the flood is still being written.
    let _ = tls.write_all(&flood).await;
    let goaway = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some((kind, _, payload)) = read_frame(&mut tls).await {
            if kind == frames::GOAWAY {
                return Some(u32::from_be_bytes(payload[4..8].try_into().unwrap()));
            }
        }
        None
    })
    .await
    .expect("the gateway answers the flood within 5 s");
    assert_eq!(goaway, Some(frames::ENHANCE_YOUR_CALM));

    let mut sender = gateway.http2().await;
    let (_, server) = open_stream(&gateway, &mut sender, "after-the-flood").await;
    assert_eq!(server, "backend-a");
    gateway.shutdown().await;
}

/// A stream past the connection's cap waits (the client honours the cap): the gateway's
/// streams are bounded per connection, and a closed stream frees its place.
#[tokio::test]
async fn a_connection_carries_at_most_its_stream_cap() {
    let gateway = TlsGateway::start(1, "max_concurrent_streams = 2").await;
    let mut sender = gateway.http2().await;
    let (first, _) = open_stream(&gateway, &mut sender, "cap-1").await;
    let (_second, _) = open_stream(&gateway, &mut sender, "cap-2").await;
    let third = tokio::time::timeout(
        Duration::from_millis(500),
        open_stream(&gateway, &mut sender.clone(), "cap-3"),
    )
    .await;
    assert!(third.is_err(), "a third stream waits for a place");
    drop(first);
    let (_, server) = tokio::time::timeout(
        Duration::from_secs(5),
        open_stream(&gateway, &mut sender, "cap-3"),
    )
    .await
    .expect("a closed stream frees its place");
    assert_eq!(server, "backend-a");
    gateway.shutdown().await;
}

/// A header list past `http.max_head_bytes` is refused on its stream (431), and the
/// connection goes on serving.
#[tokio::test]
async fn an_oversized_header_list_is_refused_on_its_stream() {
    let gateway = TlsGateway::start(1, "").await;
    let mut sender = gateway.http2().await;
    let big = http::Request::get(gateway.url("/count?userId=big"))
        .header("x-big", "x".repeat(32 * 1024))
        .body(Full::default())
        .unwrap();
    sender.ready().await.unwrap();
    // h2 answers it itself, before the stack sees the request.
    let answer = sender.send_request(big).await.unwrap();
    assert_eq!(answer.status(), 431);
    let (_, server) = open_stream(&gateway, &mut sender, "after-the-big-one").await;
    assert_eq!(server, "backend-a");
    gateway.shutdown().await;
}
