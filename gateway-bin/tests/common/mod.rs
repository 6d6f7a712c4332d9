//! Helpers shared by the gateway's end-to-end tests.
#![allow(dead_code, unreachable_pub, unused_imports)]

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use gateway_bin::{
    config::{GatewayConfig, Listen, Shutdown},
    gateway::Gateway,
};
use serde_json::Value;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};
use tokio_tungstenite::{
    tungstenite::{self, Message},
    MaybeTlsStream, WebSocketStream,
};
use tower_hashring::Ring;
use tower_ws_migrate::MigrationPolicy;
use tower_ws_proxy::{frame::FrameLimits, RelayConfig};

pub use wscluster_testkit::{eventually, http, http_raw, ring_of};

pub type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub fn any_port() -> GatewayConfig {
    GatewayConfig {
        listen: Listen::ephemeral(),
        shutdown: Shutdown {
            window: Duration::from_millis(200),
            ..Shutdown::default()
        },
        // Test clients do not always answer a close; do not wait 5 s for them.
        relay: RelayConfig::default().close_timeout(Duration::from_millis(300)),
        ..GatewayConfig::default()
    }
}

pub async fn demo(backends: usize) -> Gateway {
    gateway_bin::demo::start(any_port(), vec![], backends)
        .await
        .unwrap()
}

/// A demo gateway whose migrations close clients with 1012 for them to reconnect.
pub async fn demo_reconnecting(backends: usize) -> Gateway {
    let mut config = any_port();
    config.migration.policy = MigrationPolicy::reconnect();
    gateway_bin::demo::start(config, vec![], backends)
        .await
        .unwrap()
}

pub async fn next_json<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut WebSocketStream<S>,
) -> Value {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), client.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => return serde_json::from_str(&text).unwrap(),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}

/// Connects as `user`; returns the client and the server named in its `connected` message.
/// The next close frame's code and reason; panics on anything else or after 5 s.
pub async fn next_close<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut WebSocketStream<S>,
) -> (u16, String) {
    match tokio::time::timeout(Duration::from_secs(5), client.next())
        .await
        .unwrap()
    {
        Some(Ok(Message::Close(Some(frame)))) => (frame.code.into(), frame.reason.to_string()),
        other => panic!("expected a close frame, got {other:?}"),
    }
}

pub async fn connect(gateway: &Gateway, user: &str) -> (Client, String) {
    let url = format!("ws://{}/connect/{user}", gateway.public);
    let (mut client, response) = tokio_tungstenite::connect_async(url).await.unwrap();
    assert_eq!(response.status(), 101);
    let hello = next_json(&mut client).await;
    assert_eq!(hello["type"], "connected");
    (client, hello["server"].as_str().unwrap().to_owned())
}

/// Asserts that a WebSocket for `user` is refused with `status`; returns the reason body.
pub async fn assert_ws_refused(gateway: &Gateway, user: &str, status: u16) -> String {
    let url = format!("ws://{}/connect/{user}", gateway.public);
    match tokio_tungstenite::connect_async(url).await {
        Err(tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), status);
            String::from_utf8(response.into_body().unwrap_or_default()).unwrap()
        }
        other => panic!("expected a refusal with {status}, got {other:?}"),
    }
}

/// Adds the running backend `id` at `address` through the admin API.
pub async fn add_member(gateway: &Gateway, id: &str, address: impl std::fmt::Display) {
    let body = format!("{{\"id\":\"{id}\",\"address\":\"{address}\"}}");
    let (status, answer) = http(gateway.admin, "POST", "/admin/backends", &body).await;
    assert_eq!(status, 201, "{answer}");
}

pub async fn ring_json(gateway: &Gateway) -> Value {
    let (status, body) = http(gateway.admin, "GET", "/admin/ring", "").await;
    assert_eq!(status, 200);
    serde_json::from_str(&body).unwrap()
}

/// What one client saw while it sent a steady stream of messages.
pub struct Traffic {
    pub user: String,
    pub sent: usize,
    /// Every text message received, in order.
    pub received: Vec<Value>,
    /// A close frame, if one arrived (a live move must never send one).
    pub closed: Option<u16>,
}

/// Users of `users` that `ring` gives to `owner`.
pub fn owned_by(ring: &Ring, users: impl IntoIterator<Item = String>, owner: &str) -> usize {
    users
        .into_iter()
        .filter(|u| ring.route(u.as_bytes()).unwrap().id().as_str() == owner)
        .count()
}

/// Every client's traffic was untouched and ended on its owner in `ring`; those whose owner
/// is `to` were told by it that they came from `from`. Returns how many those were.
pub async fn assert_on_owners(
    clients: Vec<tokio::task::JoinHandle<Traffic>>,
    ring: &Ring,
    to: &str,
    from: &str,
) -> usize {
    let mut moved = 0;
    for client in clients {
        let traffic = client.await.unwrap();
        traffic.assert_untouched();
        let owner = ring.route(traffic.user.as_bytes()).unwrap().id().as_str();
        let last = traffic.received.last().unwrap();
        assert_eq!(last["server"], owner, "{} ends on its owner", traffic.user);
        if owner == to {
            moved += 1;
            let told = traffic
                .received
                .iter()
                .any(|m| m["type"] == "connected" && m["migratedFrom"] == from);
            assert!(told, "{} was told it came from {from}", traffic.user);
        }
    }
    moved
}

impl Traffic {
    /// How many echoes came back.
    pub fn echoes(&self) -> usize {
        self.received.iter().filter(|m| m["type"] == "echo").count()
    }

    /// No close reached the client, and every message it sent had its echo.
    pub fn assert_untouched(&self) {
        assert_eq!(self.closed, None, "{} was closed", self.user);
        assert_eq!(self.echoes(), self.sent, "{} lost messages", self.user);
    }
}

/// How far one client's echo traffic has come, while it runs: the server named by its
/// latest echo (`None` before the first). It changes, and wakes a waiter, only when an echo
/// comes from another server than the one before.
#[derive(Clone, Debug, Default)]
pub struct Progress {
    pub last_echo_from: Option<String>,
}

/// A client's echo traffic running in a task of its own, with its progress to await.
pub struct EchoClient {
    pub user: String,
    pub progress: tokio::sync::watch::Receiver<Progress>,
    pub traffic: tokio::task::JoinHandle<Traffic>,
}

/// Spawns `echo_traffic` for `user`, reporting its progress.
pub fn spawn_echo_traffic<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    user: String,
    client: WebSocketStream<S>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> EchoClient {
    let (report, progress) = tokio::sync::watch::channel(Progress::default());
    let traffic = tokio::spawn(echo_traffic_reporting(user.clone(), client, stop, report));
    EchoClient {
        user,
        progress,
        traffic,
    }
}

impl EchoClient {
    /// Waits until `ready` holds of the progress; panics after 10 s, or if the traffic
    /// ended first.
    pub async fn wait_for(&mut self, what: &str, ready: impl FnMut(&Progress) -> bool) {
        let waited = tokio::time::timeout(Duration::from_secs(10), self.progress.wait_for(ready))
            .await
            .map(|ready| ready.is_ok());
        match waited {
            Ok(true) => {}
            Ok(false) => panic!("{}: the traffic ended before {what}", self.user),
            Err(_) => panic!(
                "{}: no {what} within 10 s: {:?}",
                self.user,
                *self.progress.borrow()
            ),
        }
    }

    /// Waits until the first echo has come back: traffic flows.
    pub async fn first_echo(&mut self) {
        self.wait_for("first echo", |p| p.last_echo_from.is_some())
            .await;
    }

    /// Waits until the latest echo came from `server`.
    pub async fn echo_from(&mut self, server: &str) {
        let what = format!("echo from {server}");
        self.wait_for(&what, |p| p.last_echo_from.as_deref() == Some(server))
            .await;
    }
}

/// Waits until every client's traffic flows (its first echo came back).
pub async fn first_echoes<'a>(clients: impl IntoIterator<Item = &'a mut EchoClient>) {
    for client in clients {
        client.first_echo().await;
    }
}

/// Sends `n0`, `n1`, … every 3 ms until `stop`, while collecting everything the gateway
/// sends back, until every message has had its echo.
pub async fn echo_traffic<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    user: String,
    client: WebSocketStream<S>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Traffic {
    let (report, _) = tokio::sync::watch::channel(Progress::default());
    echo_traffic_reporting(user, client, stop, report).await
}

/// `echo_traffic`, reporting each echo to `report` as it arrives.
async fn echo_traffic_reporting<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    user: String,
    client: WebSocketStream<S>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    report: tokio::sync::watch::Sender<Progress>,
) -> Traffic {
    let (mut sink, mut stream) = client.split();
    let sender = tokio::spawn(async move {
        let mut sent = 0;
        while !*stop.borrow_and_update() {
            if sink.send(Message::text(format!("n{sent}"))).await.is_err() {
                break;
            }
            sent += 1;
            let _ = tokio::time::timeout(Duration::from_millis(3), stop.changed()).await;
        }
        sent
    });
    tokio::pin!(sender);
    let (mut received, mut closed, mut sent) = (Vec::new(), None, None);
    let echoes = |received: &Vec<Value>| received.iter().filter(|m| m["type"] == "echo").count();
    while sent.is_none_or(|sent| echoes(&received) < sent) {
        tokio::select! {
            message = tokio::time::timeout(Duration::from_secs(10), stream.next()) => match message {
                Ok(Some(Ok(Message::Text(text)))) => {
                    let message: Value = serde_json::from_str(&text).unwrap();
                    // Reported only where someone waits, and only when the server changes:
                    // this runs for every echo of many clients on one thread.
                    if message["type"] == "echo" && !report.is_closed() {
                        let server = message["server"].as_str();
                        report.send_if_modified(|progress| {
                            let changed = progress.last_echo_from.as_deref() != server;
                            if changed {
                                progress.last_echo_from = server.map(str::to_owned);
                            }
                            changed
                        });
                    }
                    received.push(message);
                }
                Ok(Some(Ok(Message::Close(frame)))) => {
                    closed = Some(frame.map_or(1005, |f| f.code.into()));
                    break;
                }
                Ok(Some(Ok(_))) => {}
                other => panic!("{user}: the stream ended with {other:?}"),
            },
            done = &mut sender, if sent.is_none() => sent = Some(done.unwrap()),
        }
    }
    Traffic {
        user,
        sent: sent.unwrap_or_default(),
        received,
        closed,
    }
}

pub fn strict() -> GatewayConfig {
    let mut config = any_port();
    config.http.head_timeout = Duration::from_millis(300);
    config.relay = RelayConfig::default()
        .close_timeout(Duration::from_millis(300))
        .half_close_timeout(Duration::from_millis(300))
        .switch_timeout(Duration::from_millis(200))
        .limits(FrameLimits {
            max_frame: Some(64 * 1024),
            max_message: Some(64 * 1024),
        });
    config.shutdown.grace = Duration::from_millis(500);
    config
}

/// Reads until EOF or a reset; `None` if the gateway kept the socket open past `limit`.
pub async fn until_closed(tcp: &mut TcpStream, limit: Duration) -> Option<Vec<u8>> {
    let mut received = Vec::new();
    let read = async {
        let mut chunk = [0u8; 4096];
        loop {
            match tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(limit, read).await.ok()?;
    Some(received)
}

pub const UPGRADE: &str = "upgrade: websocket\r\nconnection: upgrade\r\n";
pub const KEY: &str = "sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

/// A raw WebSocket to `user` through the gateway, handshaken; the 101 is checked.
pub async fn raw_websocket(gateway: &Gateway, user: &str) -> TcpStream {
    let mut tcp = TcpStream::connect(gateway.public).await.unwrap();
    let head = format!(
        "GET /connect/{user} HTTP/1.1\r\nhost: t\r\n{UPGRADE}{KEY}sec-websocket-version: 13\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    while !response.ends_with(b"\r\n\r\n") {
        response.push(tcp.read_u8().await.unwrap());
    }
    assert!(
        response.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&response)
    );
    tcp
}

/// A masked client frame with a short payload.
pub fn masked(first_byte: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![first_byte, 0x80 | payload.len() as u8, 1, 2, 3, 4];
    frame.extend(
        payload
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ [1, 2, 3, 4][i % 4]),
    );
    frame
}

pub fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Waits up to `limit` for `check` to hold.
pub async fn live_connections(gateway: &Gateway) -> u64 {
    ring_json(gateway).await["connections"].as_u64().unwrap()
}

/// A self-signed certificate for `localhost` made now, as `cert.pem` and `key.pem` in a new
/// folder of the temporary directory named after `name` and this process; returns the folder
/// and the certificate (for a client to trust).
pub fn localhost_certificate(name: &str) -> (std::path::PathBuf, rcgen::Certificate) {
    let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
    (dir, cert)
}

/// A TLS client config (rustls, aws-lc-rs) that trusts `cert` alone, as the tests' clients of
/// a gateway serving `localhost`'s test certificate.
pub fn client_trusting(
    cert: &tokio_rustls::rustls::pki_types::CertificateDer<'static>,
) -> tokio_rustls::rustls::ClientConfig {
    use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
    let mut roots = RootCertStore::empty();
    roots.add(cert.clone()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}
