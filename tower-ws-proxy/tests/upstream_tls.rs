//! TLS toward the backends, over real sockets with certificates made here: WebSockets and
//! requests reach `wss://`/`https://` backends signed by the configured CA, checked against
//! their address or a configured name; a backend the CA did not sign gets nothing (502).
#![cfg(feature = "tls")]

use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    path::PathBuf,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use futures_util::{stream, SinkExt, StreamExt};
use http_body_util::Full;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::watch,
};
use tokio_tungstenite::tungstenite::Message;
use tower::discover::Change;
use tower_hashring::{HashRingLayer, HttpKey, NodeId};
use tower_ws_proxy::server::RequestBody;
use tower_ws_proxy::{
    server::{
        self,
        tls::{TlsAcceptor, TlsSettings},
        HttpLimits,
    },
    HashRingProxy, LiveConnections, RelayConfig, Upstream, UpstreamConfig, UpstreamTls,
    UpstreamTlsSettings,
};

/// A CA, the folder its files go to, and leaves it signs.
struct Pki {
    ca: rcgen::Certificate,
    ca_key: KeyPair,
    folder: PathBuf,
}

impl Pki {
    fn new(name: &str) -> Self {
        let ca_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = params.self_signed(&ca_key).unwrap();
        let folder = std::env::temp_dir().join(format!(
            "tower-ws-proxy-upstream-tls-{}-{name}",
            std::process::id()
        ));
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::write(folder.join("ca.pem"), ca.pem()).unwrap();
        Self { ca, ca_key, folder }
    }

    fn ca_file(&self) -> PathBuf {
        self.folder.join("ca.pem")
    }

    /// A leaf for `names` (an IP address becomes an IP name), as cert and key files.
    fn leaf(&self, names: &[&str]) -> TlsSettings {
        let key = KeyPair::generate().unwrap();
        let names = names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>();
        let params = CertificateParams::new(names).unwrap();
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        let (cert_file, key_file) = (self.folder.join("leaf.pem"), self.folder.join("leaf.key"));
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        TlsSettings::new(cert_file, key_file)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.folder);
    }
}

/// A `wss://` echo backend with `leaf`'s certificate.
async fn wss_backend(leaf: &TlsSettings) -> SocketAddr {
    slow_wss_backend(leaf, Duration::ZERO).await
}

/// Reads at most 16 KiB every 2 ms (about 8 MB/s): a writer to it keeps finding the socket
/// full.
struct SlowReader<S> {
    inner: S,
    rest: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S: AsyncRead + Unpin> AsyncRead for SlowReader<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if let Some(rest) = &mut self.rest {
            std::task::ready!(rest.as_mut().poll(cx));
            self.rest = None;
        }
        let mut chunk = [0; 16 << 10];
        let wanted = buf.remaining().min(chunk.len());
        let mut small = ReadBuf::new(&mut chunk[..wanted]);
        std::task::ready!(Pin::new(&mut self.inner).poll_read(cx, &mut small))?;
        buf.put_slice(small.filled());
        self.rest = Some(Box::pin(tokio::time::sleep(Duration::from_millis(2))));
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for SlowReader<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A `wss://` echo backend that reads nothing for `pause` after each handshake and then
/// reads slowly, so what is sent to it keeps waiting in the sockets' buffers.
async fn slow_wss_backend(leaf: &TlsSettings, pause: Duration) -> SocketAddr {
    let config = TlsAcceptor::new(leaf).unwrap().config().clone();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let slow = SlowReader {
                    inner: tls,
                    rest: None,
                };
                let Ok(mut ws) = tokio_tungstenite::accept_async(slow).await else {
                    return;
                };
                tokio::time::sleep(pause).await;
                while let Some(Ok(message)) = ws.next().await {
                    let echoed = message.is_text() || message.is_binary();
                    if echoed && ws.send(message).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// An `https://` backend (this crate's TLS server) that names the scheme it was reached by.
async fn https_backend(leaf: &TlsSettings) -> (SocketAddr, watch::Sender<bool>) {
    let app = tower::service_fn(|request: http::Request<RequestBody>| async move {
        let body = format!("over tls to {}", request.uri().path());
        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(body))))
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = watch::channel(false);
    let tls = TlsAcceptor::new(leaf).unwrap();
    drop(server::serve_tls(
        listener,
        app,
        HttpLimits::default(),
        tls,
        stopped,
    ));
    (addr, stop)
}

/// The proxy over `backend`, reached with `config`, served in plaintext.
async fn gateway(backend: SocketAddr, config: UpstreamConfig) -> SocketAddr {
    let backends = stream::iter([Ok::<_, Infallible>(Change::Insert(
        NodeId::from("backend"),
        Upstream::new(backend.to_string(), config),
    ))]);
    let key = HttpKey::new().path("/connect/{userId}").unwrap();
    let (ring, driver) = HashRingLayer::new(key).shared(backends);
    tokio::spawn(driver);
    let proxy = HashRingProxy::new(ring, LiveConnections::new(100), RelayConfig::default());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = watch::channel(false);
    drop(server::serve(
        listener,
        proxy,
        HttpLimits::default(),
        stopped,
    ));
    // The gateway serves until the test's runtime ends.
    tokio::spawn(async move { stop.closed().await });
    addr
}

fn tls_config(settings: &UpstreamTlsSettings) -> UpstreamConfig {
    let mut config = UpstreamConfig::default();
    config.tls = Some(UpstreamTls::new(settings).unwrap());
    config
}

/// The status of a WebSocket handshake through `gateway` (101 when it is relayed), and the
/// echo of one message when it was.
async fn websocket(gateway: SocketAddr, user: &str) -> (u16, Option<String>) {
    let url = format!("ws://{gateway}/connect/{user}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let (mut ws, _) = loop {
        match tokio_tungstenite::connect_async(&url).await {
            Ok(connected) => break connected,
            // The ring learns of its backend from a task: 503 until then.
            Err(tokio_tungstenite::tungstenite::Error::Http(response))
                if response.status() == 503 && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                return (response.status().as_u16(), None)
            }
            Err(error) => panic!("{error}"),
        }
    };
    ws.send(Message::text(format!("hi {user}"))).await.unwrap();
    let echo = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    (101, Some(echo.into_text().unwrap().to_string()))
}

/// `GET path` through `gateway`: the status and the body.
async fn get(gateway: SocketAddr, path: &str) -> (u16, String) {
    let mut tcp = TcpStream::connect(gateway).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nhost: gateway\r\nconnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).await.unwrap();
    let status = answer[9..12].parse().unwrap();
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    (status, body.to_owned())
}

#[tokio::test]
async fn a_websocket_reaches_a_wss_backend_signed_by_the_ca() {
    let pki = Pki::new("ws");
    let backend = wss_backend(&pki.leaf(&["127.0.0.1"])).await;
    let gateway = gateway(
        backend,
        tls_config(&UpstreamTlsSettings::new(pki.ca_file())),
    )
    .await;
    assert_eq!(
        websocket(gateway, "alice").await,
        (101, Some("hi alice".to_owned()))
    );
}

/// A message larger than the sockets' buffers, toward a backend that reads slowly over TLS,
/// arrives whole: what the TLS session holds when the socket is full goes out as the backend
/// drains it (the relay flushes its destination on every step), not when a next message
/// comes.
#[tokio::test]
async fn a_large_message_to_a_slow_wss_backend_arrives_whole() {
    let pki = Pki::new("slow");
    let backend = slow_wss_backend(&pki.leaf(&["127.0.0.1"]), Duration::from_millis(300)).await;
    let gateway = gateway(
        backend,
        tls_config(&UpstreamTlsSettings::new(pki.ca_file())),
    )
    .await;
    // Its first echo opens the way (and waits out the backend's pause).
    assert_eq!(websocket(gateway, "dora").await.0, 101);
    let url = format!("ws://{gateway}/connect/dora");
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let large: Vec<u8> = (0..8 << 20).map(|i: u32| (i % 251) as u8).collect();
    ws.send(Message::binary(large.clone())).await.unwrap();
    let echo = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("the echo of 8 MiB within 10 s")
        .unwrap()
        .unwrap();
    assert_eq!(echo.into_data().len(), large.len());
}

#[tokio::test]
async fn a_configured_name_is_checked_instead_of_the_address() {
    let pki = Pki::new("name");
    let backend = wss_backend(&pki.leaf(&["backend.internal"])).await;
    let by_address = gateway(
        backend,
        tls_config(&UpstreamTlsSettings::new(pki.ca_file())),
    )
    .await;
    assert_eq!(
        websocket(by_address, "bob").await.0,
        502,
        "127.0.0.1 is not its name"
    );
    let settings = UpstreamTlsSettings::new(pki.ca_file()).server_name("backend.internal");
    let by_name = gateway(backend, tls_config(&settings)).await;
    assert_eq!(
        websocket(by_name, "bob").await,
        (101, Some("hi bob".to_owned()))
    );
}

#[tokio::test]
async fn a_backend_another_ca_signed_gets_nothing() {
    let (trusted, other) = (Pki::new("trusted"), Pki::new("other"));
    let backend = wss_backend(&other.leaf(&["127.0.0.1"])).await;
    let gateway = gateway(
        backend,
        tls_config(&UpstreamTlsSettings::new(trusted.ca_file())),
    )
    .await;
    assert_eq!(websocket(gateway, "eve").await, (502, None));
    // And a plaintext gateway hop to a TLS backend is no WebSocket either.
    let plain = self::gateway(backend, UpstreamConfig::default()).await;
    assert_eq!(websocket(plain, "eve").await, (502, None));
}

#[tokio::test]
async fn requests_reach_an_https_backend() {
    let pki = Pki::new("https");
    let (backend, _stop) = https_backend(&pki.leaf(&["127.0.0.1"])).await;
    let gateway = gateway(
        backend,
        tls_config(&UpstreamTlsSettings::new(pki.ca_file())),
    )
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let (status, body) = loop {
        let (status, body) = get(gateway, "/connect/carol").await;
        if status != 503 || tokio::time::Instant::now() >= deadline {
            break (status, body);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!((status, body.as_str()), (200, "over tls to /connect/carol"));
}

/// A backend that accepts TCP and never says a word: no TLS session ever starts.
async fn silent_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            held.push(tcp);
        }
    });
    addr
}

#[tokio::test]
async fn a_request_to_a_backend_that_never_finishes_the_tls_handshake_fails_at_its_deadline() {
    let pki = Pki::new("silent");
    let mut config = tls_config(&UpstreamTlsSettings::new(pki.ca_file()));
    config.connect_timeout = Duration::from_millis(200);
    config.handshake_timeout = Duration::from_millis(300);
    let gateway = gateway(silent_backend().await, config).await;
    let started = tokio::time::Instant::now();
    let (status, _) = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let answer = get(gateway, "/connect/dave").await;
            if answer.0 != 503 {
                break answer;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("an answer, not a request stuck on the handshake");
    assert_eq!(status, 502);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn a_ca_file_without_a_certificate_is_an_error_naming_it() {
    let folder = std::env::temp_dir().join(format!("tower-ws-proxy-bad-ca-{}", std::process::id()));
    std::fs::create_dir_all(&folder).unwrap();
    let file = folder.join("ca.pem");
    std::fs::write(&file, "not a certificate").unwrap();
    let error = UpstreamTls::new(&UpstreamTlsSettings::new(&file)).unwrap_err();
    assert!(error.to_string().contains("ca.pem"), "{error}");
    let missing = UpstreamTls::new(&UpstreamTlsSettings::new(folder.join("missing.pem")));
    assert!(missing.unwrap_err().to_string().contains("missing.pem"));
    std::fs::remove_dir_all(&folder).ok();
}
