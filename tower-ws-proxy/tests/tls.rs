//! TLS on the fast path, over real sockets, with certificates made here: `wss://` through
//! the proxy, SNI, reloads (on demand and by the watcher) that leave open connections alone,
//! broken and missing files, the oldest version accepted, the forwarded protocol, and the
//! handshake deadline.
#![cfg(feature = "tls")]

use std::{
    convert::Infallible,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use futures_util::{stream, SinkExt, StreamExt};
use http::Request;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SerialNumber};
use tokio::{
    io::AsyncReadExt,
    net::{TcpListener, TcpStream},
    sync::{mpsc, watch},
};
use tokio_tungstenite::{tungstenite::Message, WebSocketStream};
use tower::{discover::Change, ServiceBuilder};
use tower_hashring::{HashRingLayer, HttpKey, NodeId};
use tower_ws_proxy::server::RequestBody;
use tower_ws_proxy::{
    server::{
        self,
        tls::{
            rustls::{
                self,
                client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
                pki_types::{CertificateDer, ServerName, UnixTime},
                ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
            },
            Certificates, TlsAcceptor, TlsSettings, TlsVersion,
        },
        ClientAddr, ClientTls, HttpLimits, HttpService, Stopped,
    },
    set_forwarded_headers, HashRingProxy, LiveConnections, RelayConfig, Upstream, UpstreamConfig,
};

type TlsClient = tokio_rustls::client::TlsStream<TcpStream>;

/// A test CA and the leaf certificates it signs.
struct Pki {
    ca: rcgen::Certificate,
    ca_key: KeyPair,
}

/// A leaf certificate as files hold it, and its DER to compare what a client was shown.
struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

impl Pki {
    fn new() -> Self {
        let ca_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = params.self_signed(&ca_key).unwrap();
        Self { ca, ca_key }
    }

    fn leaf(&self, name: &str, serial: u64) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![name.to_owned()]).unwrap();
        params.serial_number = Some(SerialNumber::from(serial));
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    /// A client that trusts this CA only.
    fn client(&self) -> ClientConfig {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        client_builder(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .with_root_certificates(roots)
            .with_no_client_auth()
    }
}

fn client_builder(
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier> {
    ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_protocol_versions(versions)
        .unwrap()
}

/// A client that takes any certificate, to look at which one the server chose.
fn any_certificate_client(versions: &[&'static rustls::SupportedProtocolVersion]) -> ClientConfig {
    client_builder(versions)
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(
            rustls::crypto::aws_lc_rs::default_provider(),
        )))
        .with_no_client_auth()
}

#[derive(Debug)]
struct AnyCertificate(rustls::crypto::CryptoProvider);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A folder of its own under the system's temporary one, removed at the end.
struct Folder(PathBuf);

impl Folder {
    fn new() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("tower-ws-proxy-tls-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    /// Writes `leaf` as `<name>.pem` and `<name>.key`, each replaced whole (by a rename), as
    /// a certificate manager does.
    fn write(&self, name: &str, leaf: &Leaf) -> (PathBuf, PathBuf) {
        let cert = self.0.join(format!("{name}.pem"));
        let key = self.0.join(format!("{name}.key"));
        replace(&cert, leaf.cert_pem.as_bytes());
        replace(&key, leaf.key_pem.as_bytes());
        (cert, key)
    }
}

fn replace(path: &Path, contents: &[u8]) {
    let next = path.with_extension("next");
    std::fs::write(&next, contents).unwrap();
    std::fs::rename(&next, path).unwrap();
}

impl Drop for Folder {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A WebSocket backend that echoes every message, and reports each handshake's
/// `X-Forwarded-Proto`.
async fn echo_backend() -> (SocketAddr, mpsc::UnboundedReceiver<Option<String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (protos, received) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let protos = protos.clone();
            tokio::spawn(async move {
                // The error type is tungstenite's, not ours to make smaller.
                #[allow(clippy::result_large_err)]
                let callback = |request: &http::Request<()>, response| {
                    let proto = request
                        .headers()
                        .get("x-forwarded-proto")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    let _ = protos.send(proto);
                    Ok(response)
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tcp, callback).await else {
                    return;
                };
                while let Some(Ok(message)) = ws.next().await {
                    let data = message.is_text() || message.is_binary();
                    if data && ws.send(message).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, received)
}

/// The gateway under test: the proxy over one backend, served over TLS on a port of its
/// own, with the forwarded headers saying how the client connected.
struct Gateway {
    addr: SocketAddr,
    tls: TlsAcceptor,
    stop: watch::Sender<bool>,
    serving: Stopped,
}

async fn gateway(backend: SocketAddr, tls: TlsAcceptor, limits: HttpLimits) -> Gateway {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = watch::channel(false);
    let serving = server::serve_tls(listener, app(backend), limits, tls.clone(), stopped);
    Gateway {
        addr,
        tls,
        stop,
        serving,
    }
}

/// The proxy over `backend`, telling it how the client connected.
fn app(backend: SocketAddr) -> impl HttpService {
    let backends = stream::iter([Ok::<_, Infallible>(Change::Insert(
        NodeId::from("backend"),
        Upstream::new(backend.to_string(), UpstreamConfig::default()),
    ))]);
    let key = HttpKey::new().path("/connect/{userId}").unwrap();
    let (ring, driver) = HashRingLayer::new(key).shared(backends);
    tokio::spawn(driver);
    let proxy = HashRingProxy::new(ring, LiveConnections::new(100), RelayConfig::default());
    ServiceBuilder::new()
        .map_request(|mut request: Request<RequestBody>| {
            if let Some(ClientAddr(client)) = request.extensions().get::<ClientAddr>().copied() {
                let proto = ClientTls::forwarded_proto(request.extensions());
                set_forwarded_headers(request.headers_mut(), client, proto);
            }
            request
        })
        .service(proxy)
}

async fn tls_connect(
    addr: SocketAddr,
    name: &str,
    config: ClientConfig,
) -> std::io::Result<TlsClient> {
    let tcp = TcpStream::connect(addr).await?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from(name.to_owned()).unwrap();
    connector.connect(name, tcp).await
}

/// The leaf certificate a new handshake asking for `name` is shown.
async fn presented(addr: SocketAddr, name: &str) -> CertificateDer<'static> {
    let tls = tls_connect(
        addr,
        name,
        any_certificate_client(&[&rustls::version::TLS13]),
    )
    .await
    .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].clone()
}

/// A `wss://` WebSocket through the gateway, verified against the test CA. The ring learns
/// of its backend from a task: until then the gateway answers 503, so this retries briefly.
async fn wss(addr: SocketAddr, pki: &Pki, user: &str) -> WebSocketStream<TlsClient> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let tls = tls_connect(addr, "localhost", pki.client()).await.unwrap();
        let url = format!("wss://localhost/connect/{user}");
        match tokio_tungstenite::client_async(url, tls).await {
            Ok((ws, _)) => return ws,
            Err(error) if Instant::now() < deadline => {
                let _ = error;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(error) => panic!("no WebSocket through the gateway: {error}"),
        }
    }
}

async fn echoes(ws: &mut WebSocketStream<TlsClient>, text: &str) {
    ws.send(Message::text(text)).await.unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("an answer in time")
        .unwrap()
        .unwrap();
    assert_eq!(answer, Message::text(text));
    let bytes = vec![7u8; 70_000]; // past one TLS record, and a 64-bit frame length
    ws.send(Message::binary(bytes.clone())).await.unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("an answer in time")
        .unwrap()
        .unwrap();
    assert_eq!(answer, Message::binary(bytes));
}

/// One certificate for `localhost`, written to a new folder.
fn localhost(pki: &Pki, serial: u64) -> (Folder, Leaf, TlsSettings) {
    let folder = Folder::new();
    let leaf = pki.leaf("localhost", serial);
    let (cert, key) = folder.write("localhost", &leaf);
    (folder, leaf, TlsSettings::new(cert, key))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wss_websocket_is_relayed_to_a_plain_backend_which_is_told_https() {
    let pki = Pki::new();
    let (_folder, _, settings) = localhost(&pki, 1);
    let (backend, mut protos) = echo_backend().await;
    let gateway = gateway(
        backend,
        TlsAcceptor::new(&settings).unwrap(),
        HttpLimits::default(),
    )
    .await;

    let mut ws = wss(gateway.addr, &pki, "alice").await;
    echoes(&mut ws, "hello over tls").await;
    assert_eq!(protos.recv().await.unwrap().as_deref(), Some("https"));
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn sni_chooses_the_certificate_and_an_unknown_name_gets_the_default() {
    let pki = Pki::new();
    let folder = Folder::new();
    let (default, chat, any) = (
        pki.leaf("default.test", 1),
        pki.leaf("chat.example.com", 2),
        pki.leaf("*.example.org", 3),
    );
    let (cert, key) = folder.write("default", &default);
    let (chat_cert, chat_key) = folder.write("chat", &chat);
    let (any_cert, any_key) = folder.write("any", &any);
    let settings = TlsSettings::new(cert, key)
        .sni("chat.example.com", chat_cert, chat_key)
        .sni("*.example.org", any_cert, any_key);
    let (backend, _) = echo_backend().await;
    let gateway = gateway(
        backend,
        TlsAcceptor::new(&settings).unwrap(),
        HttpLimits::default(),
    )
    .await;

    assert_eq!(presented(gateway.addr, "chat.example.com").await, chat.der);
    assert_eq!(presented(gateway.addr, "CHAT.example.com").await, chat.der);
    assert_eq!(presented(gateway.addr, "a.example.org").await, any.der);
    assert_eq!(presented(gateway.addr, "unknown.test").await, default.der);
    // A client without SNI (an address as its server name) gets the default too.
    assert_eq!(presented(gateway.addr, "127.0.0.1").await, default.der);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_serves_the_new_certificate_and_open_websockets_go_on() {
    let pki = Pki::new();
    let (folder, first, settings) = localhost(&pki, 1);
    let (backend, _) = echo_backend().await;
    let gateway = gateway(
        backend,
        TlsAcceptor::new(&settings).unwrap(),
        HttpLimits::default(),
    )
    .await;
    let mut before = wss(gateway.addr, &pki, "bob").await;
    echoes(&mut before, "before").await;
    assert_eq!(presented(gateway.addr, "localhost").await, first.der);

    let second = pki.leaf("localhost", 2);
    folder.write("localhost", &second);
    // Not watched: nothing changes until the reload.
    assert_eq!(presented(gateway.addr, "localhost").await, first.der);
    gateway.tls.certificates().reload().unwrap();
    assert_eq!(presented(gateway.addr, "localhost").await, second.der);

    echoes(&mut before, "after the reload").await;
    let mut after = wss(gateway.addr, &pki, "carol").await;
    echoes(&mut after, "a new one").await;
    assert_eq!(gateway.tls.certificates().reload_failures(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watcher_serves_changed_files_within_two_periods() {
    let pki = Pki::new();
    let (folder, first, settings) = localhost(&pki, 1);
    let (backend, _) = echo_backend().await;
    let gateway = gateway(
        backend,
        TlsAcceptor::new(&settings).unwrap(),
        HttpLimits::default(),
    )
    .await;
    let period = Duration::from_millis(200);
    let _watcher = gateway.tls.certificates().watch(period);
    let mut before = wss(gateway.addr, &pki, "dave").await;
    assert_eq!(presented(gateway.addr, "localhost").await, first.der);

    let second = pki.leaf("localhost", 2);
    let written = Instant::now();
    folder.write("localhost", &second);
    while presented(gateway.addr, "localhost").await != second.der {
        assert!(
            written.elapsed() < Duration::from_secs(3),
            "the watcher missed the change"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = written.elapsed();
    eprintln!("new certificate served {took:?} after its files changed (period {period:?})");
    // Two periods, and room for a busy machine.
    assert!(took < 5 * period + Duration::from_secs(1), "{took:?}");
    echoes(&mut before, "still open").await;
    assert_eq!(gateway.tls.certificates().reload_failures(), 0);
}

#[tokio::test]
async fn a_broken_file_keeps_the_last_good_certificate_and_is_counted() {
    let pki = Pki::new();
    let (folder, first, settings) = localhost(&pki, 1);
    let (backend, _) = echo_backend().await;
    let gateway = gateway(
        backend,
        TlsAcceptor::new(&settings).unwrap(),
        HttpLimits::default(),
    )
    .await;
    let certificates = gateway.tls.certificates();

    replace(
        &settings.cert,
        b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    );
    let error = certificates.reload().unwrap_err();
    assert_eq!(error.failed.len(), 1);
    assert_eq!(error.failed[0].path(), settings.cert);
    assert_eq!(certificates.reload_failures(), 1);
    assert_eq!(presented(gateway.addr, "localhost").await, first.der);

    // A whole certificate with another certificate's key: refused too.
    let other = pki.leaf("localhost", 2);
    replace(&settings.cert, other.cert_pem.as_bytes());
    let error = certificates.reload().unwrap_err();
    assert_eq!(error.failed[0].path(), settings.key);
    assert_eq!(certificates.reload_failures(), 2);
    assert_eq!(presented(gateway.addr, "localhost").await, first.der);

    #[cfg(feature = "metrics")]
    {
        let mut registry = prometheus_client::registry::Registry::with_prefix("wscluster");
        certificates.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("wscluster_tls_certificate_reload_failures_total 2"),
            "{text}"
        );
    }

    // Made whole again: served.
    folder.write("localhost", &other);
    certificates.reload().unwrap();
    assert_eq!(presented(gateway.addr, "localhost").await, other.der);
    assert_eq!(certificates.reload_failures(), 2);
}

#[tokio::test]
async fn a_missing_or_broken_file_at_the_start_is_an_error_naming_it() {
    let pki = Pki::new();
    let (folder, _, settings) = localhost(&pki, 1);
    let missing = folder.0.join("missing.pem");
    let error = Certificates::load(&TlsSettings::new(&missing, &settings.key)).unwrap_err();
    assert_eq!(error.path(), missing);
    assert!(error.to_string().contains("missing.pem"), "{error}");

    let sni_key = folder.0.join("chat.key");
    let error = TlsAcceptor::new(&settings.clone().sni(
        "chat.example.com",
        &settings.cert,
        &sni_key,
    ))
    .unwrap_err();
    assert!(error.to_string().contains("chat.key"), "{error}");

    std::fs::write(&missing, "no PEM here").unwrap();
    let error = Certificates::load(&TlsSettings::new(&missing, &settings.key)).unwrap_err();
    assert!(error.to_string().contains("missing.pem"), "{error}");
}

#[tokio::test]
async fn with_tls_1_3_as_the_oldest_a_tls_1_2_client_is_refused() {
    let pki = Pki::new();
    let (_folder, leaf, settings) = localhost(&pki, 1);
    let (backend, _) = echo_backend().await;
    let tls = TlsAcceptor::new(&settings.min_version(TlsVersion::Tls13)).unwrap();
    let gateway = gateway(backend, tls, HttpLimits::default()).await;

    let old = any_certificate_client(&[&rustls::version::TLS12]);
    assert!(tls_connect(gateway.addr, "localhost", old).await.is_err());
    assert_eq!(presented(gateway.addr, "localhost").await, leaf.der);

    // And by default, TLS 1.2 is served, with ALPN h2 preferred; without HTTP/2, http/1.1.
    let (_folder, _, settings) = localhost(&pki, 2);
    for (http2, chosen) in [(true, &b"h2"[..]), (false, b"http/1.1")] {
        let gateway = gateway_at_default(&settings.clone().http2(http2)).await;
        let mut old = any_certificate_client(&[&rustls::version::TLS12]);
        old.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let tls = tls_connect(gateway.addr, "localhost", old).await.unwrap();
        let (_, session) = tls.get_ref();
        assert_eq!(
            session.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_2)
        );
        assert_eq!(session.alpn_protocol(), Some(chosen));
    }
}

async fn gateway_at_default(settings: &TlsSettings) -> Gateway {
    let (backend, _) = echo_backend().await;
    gateway(
        backend,
        TlsAcceptor::new(settings).unwrap(),
        HttpLimits::default(),
    )
    .await
}

#[tokio::test]
async fn a_client_that_sends_nothing_is_dropped_at_the_head_timeout_without_holding_up_others() {
    let pki = Pki::new();
    let (_folder, leaf, settings) = localhost(&pki, 1);
    let (backend, _) = echo_backend().await;
    let mut limits = HttpLimits::default();
    limits.head_timeout = Duration::from_secs(1);
    let gateway = gateway(backend, TlsAcceptor::new(&settings).unwrap(), limits).await;

    let started = Instant::now();
    let mut silent = TcpStream::connect(gateway.addr).await.unwrap();
    // Meanwhile, other clients are accepted and served.
    assert_eq!(presented(gateway.addr, "localhost").await, leaf.der);
    assert!(started.elapsed() < Duration::from_millis(900));
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut byte))
        .await
        .expect("the silent client was dropped in time");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(900), "{took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
}

#[tokio::test]
async fn the_connection_cap_counts_tls_connections_in_their_handshake() {
    let pki = Pki::new();
    let (_folder, leaf, settings) = localhost(&pki, 1);
    let (backend, _) = echo_backend().await;
    let limits = HttpLimits::default().open_connections(1);
    let gateway = gateway(backend, TlsAcceptor::new(&settings).unwrap(), limits).await;

    let silent = TcpStream::connect(gateway.addr).await.unwrap();
    // The listener's backlog is first in, first out: the silent one takes the place.
    let refused = tls_connect(
        gateway.addr,
        "localhost",
        any_certificate_client(&[&rustls::version::TLS13]),
    );
    assert!(
        refused.await.is_err(),
        "a second connection past a cap of one"
    );
    drop(silent);
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let client = any_certificate_client(&[&rustls::version::TLS13]);
        if let Ok(tls) = tls_connect(gateway.addr, "localhost", client).await {
            assert_eq!(tls.get_ref().1.peer_certificates().unwrap()[0], leaf.der);
            break;
        }
        assert!(Instant::now() < deadline, "the place was never given back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_stop_ends_a_handshake_in_progress_at_once() {
    let pki = Pki::new();
    let (_folder, _, settings) = localhost(&pki, 1);
    let (backend, _) = echo_backend().await;
    let gateway = gateway(
        backend,
        TlsAcceptor::new(&settings).unwrap(),
        HttpLimits::default(),
    )
    .await;
    let mut silent = TcpStream::connect(gateway.addr).await.unwrap();
    // Served once a handshake after it finished: the silent one is on its task by then.
    presented(gateway.addr, "localhost").await;

    let started = Instant::now();
    gateway.stop.send_replace(true);
    tokio::time::timeout(Duration::from_secs(3), gateway.serving)
        .await
        .expect("stopped without waiting for the handshake's deadline");
    assert!(
        // Well before the stop grace (5 s) that a handshake left running would take.
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let mut byte = [0u8; 1];
    assert!(matches!(silent.read(&mut byte).await, Ok(0) | Err(_)));
}

#[test]
fn worker_threads_serve_wss_with_one_set_of_certificates() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let pki = Pki::new();
        let (folder, first, settings) = localhost(&pki, 1);
        let (backend, mut protos) = echo_backend().await;
        let tls = TlsAcceptor::new(&settings).unwrap();
        let (stop, stopped) = watch::channel(false);
        let (exit, exited) = watch::channel(false);
        let (addr, servers) = server::serve_tls_on_workers(
            "127.0.0.1:0".parse().unwrap(),
            2,
            app(backend),
            HttpLimits::default(),
            tls.clone(),
            stopped,
            exited,
        )
        .unwrap();
        let mut ws = wss(addr, &pki, "erin").await;
        echoes(&mut ws, "through a worker").await;
        assert_eq!(protos.recv().await.unwrap().as_deref(), Some("https"));

        let second = pki.leaf("localhost", 2);
        folder.write("localhost", &second);
        tls.certificates().reload().unwrap();
        // Whichever worker the kernel hands them to, new handshakes see the new one.
        for _ in 0..8 {
            assert_eq!(presented(addr, "localhost").await, second.der);
        }
        assert_ne!(first.der, second.der);
        echoes(&mut ws, "still open").await;

        drop(ws);
        stop.send_replace(true);
        futures_util::future::join_all(servers).await;
        exit.send_replace(true);
    });
}
