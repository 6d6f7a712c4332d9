//! The proxy layer over a mock of the service below: what reaches it, and what the client
//! gets back.

use std::time::Duration;

use bytes::Bytes;
use http::{request, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Body;
#[cfg(feature = "metrics")]
use prometheus_client::{encoding::text::encode, registry::Registry};
use tower_hashring::{balance::Route, error::MissingKey, NodeId};
use tower_test::mock;

use super::WebSocketLayer;
#[cfg(feature = "metrics")]
use crate::ProxyMetrics;
use crate::{
    LiveConnections, Peer, ProxyBody, RelayConfig, RelayHandle, UpstreamError, UpstreamSocket,
};

type Handle = mock::Handle<Request<ProxyBody>, Response<ProxyBody>>;
type Proxy =
    mock::Spawn<super::WebSocketProxy<mock::Mock<Request<ProxyBody>, Response<ProxyBody>>>>;

/// What the proxy counted: with the `metrics` feature, the registry of its metrics; without
/// it, nothing (and [`assert_handshakes`] checks nothing).
#[cfg(feature = "metrics")]
struct Counts(Registry);
#[cfg(not(feature = "metrics"))]
struct Counts;

/// The proxy over a mock, its live connections capped at `limit`, and what it counted.
fn proxy(limit: usize) -> (Proxy, Handle, LiveConnections, Counts) {
    let connections = LiveConnections::<RelayHandle>::with_limit(limit);
    let layer = WebSocketLayer::new(connections.clone(), RelayConfig::default());
    #[cfg(feature = "metrics")]
    let (layer, counts) = {
        let metrics = ProxyMetrics::default();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        (layer.metrics(metrics), Counts(registry))
    };
    #[cfg(not(feature = "metrics"))]
    let counts = Counts;
    let (proxy, handle) = mock::spawn_layer(layer);
    (proxy, handle, connections, counts)
}

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// A WebSocket upgrade to `/connect/7` with these `Sec-WebSocket-Version` and
/// `Sec-WebSocket-Key` headers.
fn upgrade_with(versions: &[&str], keys: &[&str]) -> request::Builder {
    let mut request = Request::get("/connect/7?userId=7")
        .header("connection", "Upgrade")
        .header("upgrade", "websocket");
    for version in versions {
        request = request.header("sec-websocket-version", *version);
    }
    for key in keys {
        request = request.header("sec-websocket-key", *key);
    }
    request
}

/// A well-formed WebSocket upgrade (RFC 6455 §4.1).
fn upgrade() -> request::Builder {
    upgrade_with(&["13"], &[KEY])
}

fn body(text: &'static str) -> Full<Bytes> {
    Full::new(Bytes::from_static(text.as_bytes()))
}

fn response(status: u16, text: &'static str) -> Response<ProxyBody> {
    let body = body(text).map_err(|never| match never {}).boxed_unsync();
    Response::builder().status(status).body(body).unwrap()
}

async fn text<B: Body>(body: B) -> String
where
    B::Error: std::fmt::Debug,
{
    String::from_utf8(body.collect().await.unwrap().to_bytes().to_vec()).unwrap()
}

/// `expected` handshakes were counted with `result`, as a scrape reads them.
#[cfg(feature = "metrics")]
fn assert_handshakes(Counts(registry): &Counts, result: &str, expected: u64) {
    let mut scrape = String::new();
    encode(&mut scrape, registry).unwrap();
    let series = format!("websocket_handshakes_total{{result=\"{result}\"}} ");
    let counted = scrape
        .lines()
        .find_map(|line| line.strip_prefix(series.as_str()))
        .map_or(0, |count| count.parse().unwrap());
    assert_eq!(counted, expected, "handshakes counted as {result}");
}

/// Without the `metrics` feature nothing is counted.
#[cfg(not(feature = "metrics"))]
fn assert_handshakes(_: &Counts, _: &str, _: u64) {}

/// Nothing the proxy did reached the service below.
fn nothing_reached_below(handle: &mut Handle) {
    assert!(
        handle.poll_request().is_pending(),
        "a request reached the service below"
    );
}

#[tokio::test]
async fn a_plain_request_passes_through_and_its_answer_comes_back() {
    let (mut proxy, mut handle, connections, counts) = proxy(10);
    assert!(proxy.poll_ready::<Request<Full<Bytes>>>().is_ready());
    let request = Request::post("/count?userId=7")
        .header("x-request-id", "r-1")
        .header("x-wscluster-migrated-from", "backend-b")
        .body(body("hello"))
        .unwrap();
    let answer = tokio::spawn(proxy.call(request));

    let (below, send) = handle.next_request().await.expect("the request goes below");
    assert_eq!(below.method(), http::Method::POST);
    assert_eq!(below.uri(), "/count?userId=7");
    assert_eq!(below.headers()["x-request-id"], "r-1");
    assert!(
        !below.headers().contains_key("x-wscluster-migrated-from"),
        "a client's header in the gateway's namespace is dropped"
    );
    assert_eq!(text(below.into_body()).await, "hello");
    send.send_response(response(201, "made"));

    let response = answer.await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(text(response.into_body()).await, "made");
    assert!(connections.is_empty());
    assert_handshakes(&counts, "upgraded", 0);
}

#[tokio::test]
async fn a_plain_request_that_fails_below_gets_a_502_naming_no_backend() {
    let (mut proxy, mut handle, _, _) = proxy(10);
    let answer = tokio::spawn(proxy.call(Request::get("/count").body(body("")).unwrap()));
    let (_, send) = handle.next_request().await.unwrap();
    send.send_error(UpstreamError::Connect(std::io::Error::other(
        "connection refused by 10.0.0.7:7100",
    )));

    let response = answer.await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(text(response.into_body()).await, "no backend answered\n");
}

#[tokio::test]
async fn malformed_upgrades_are_refused_before_the_service_below() {
    let (mut proxy, mut handle, connections, counts) = proxy(10);
    let cases = [
        (upgrade_with(&["13"], &[]), StatusCode::BAD_REQUEST),
        (
            upgrade_with(&["13"], &["not a nonce"]),
            StatusCode::BAD_REQUEST,
        ),
        (upgrade_with(&["13"], &[KEY, KEY]), StatusCode::BAD_REQUEST),
        (upgrade_with(&["8"], &[KEY]), StatusCode::UPGRADE_REQUIRED),
        (upgrade_with(&[], &[KEY]), StatusCode::UPGRADE_REQUIRED),
        (
            upgrade().header("content-length", "5"),
            StatusCode::BAD_REQUEST,
        ),
    ];
    let refused = cases.len() as u64;
    for (request, status) in cases {
        let response = proxy.call(request.body(body("")).unwrap()).await.unwrap();
        assert_eq!(response.status(), status);
        if status == StatusCode::UPGRADE_REQUIRED {
            assert_eq!(response.headers()["sec-websocket-version"], "13");
        }
    }
    nothing_reached_below(&mut handle);
    assert!(connections.is_empty());
    assert_handshakes(&counts, "bad_request", refused);
}

#[tokio::test]
async fn past_the_connection_cap_an_upgrade_is_refused_with_503_until_a_place_frees() {
    let (mut proxy, mut handle, connections, counts) = proxy(1);
    let taken = connections.admit().expect("the one place");

    let refused = proxy.call(upgrade().body(body("")).unwrap()).await;
    assert_eq!(refused.unwrap().status(), StatusCode::SERVICE_UNAVAILABLE);
    nothing_reached_below(&mut handle);
    assert_handshakes(&counts, "refused", 1);

    drop(taken);
    let answer = tokio::spawn(proxy.call(upgrade().body(body("")).unwrap()));
    let (_, send) = handle
        .next_request()
        .await
        .expect("admitted, it goes below");
    assert!(
        connections.admit().is_err(),
        "the admitted upgrade holds the place while its backend answers"
    );
    send.send_response(response(403, "not you"));

    let response = answer.await.unwrap().unwrap();
    assert_eq!(
        response.status(),
        StatusCode::FORBIDDEN,
        "the backend's verdict"
    );
    assert_eq!(text(response.into_body()).await, "not you");
    assert_handshakes(&counts, "backend_answered", 1);
    assert!(connections.is_empty());
    assert!(connections.admit().is_ok(), "the place is free again");
}

#[tokio::test]
async fn upgrade_errors_below_become_statuses_by_who_failed() {
    let (mut proxy, mut handle, _, counts) = proxy(10);
    let cases: [(crate::BoxError, StatusCode); 2] = [
        (MissingKey::new().into(), StatusCode::BAD_REQUEST),
        (
            UpstreamError::HandshakeTimeout.into(),
            StatusCode::BAD_GATEWAY,
        ),
    ];
    for (error, status) in cases {
        let answer = tokio::spawn(proxy.call(upgrade().body(body("")).unwrap()));
        let (_, send) = handle.next_request().await.unwrap();
        send.send_error(error);
        assert_eq!(answer.await.unwrap().unwrap().status(), status);
    }
    assert_handshakes(&counts, "no_backend", 1);
    assert_handshakes(&counts, "failed", 1);
}

/// The 101 goes back to the client and the connection is registered under the balancer's
/// route; a client whose own upgrade then fails leaves the live connections (and its place).
#[tokio::test(start_paused = true)]
async fn an_upgraded_websocket_is_registered_until_its_relay_ends() {
    let (mut proxy, mut handle, connections, counts) = proxy(1);
    let request = upgrade()
        .header("x-wscluster-migrated-from", "backend-b")
        .body(body(""))
        .unwrap();
    let mut switching = response(101, "");
    switching
        .extensions_mut()
        .insert(UpstreamSocket::new(backend_socket().await));
    switching
        .extensions_mut()
        .insert(Route::new(NodeId::from("backend-a"), 42, 3));
    let backend = async {
        let (below, send) = handle.next_request().await.unwrap();
        send.send_response(switching);
        below
    };

    // Driven on this task, so the relay task it spawns has not run yet when it is done.
    let (response, below) = tokio::join!(proxy.call(request), backend);
    let response = response.unwrap();
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert!(response.extensions().get::<UpstreamSocket>().is_none());
    assert_handshakes(&counts, "upgraded", 1);
    assert_eq!(connections.per_backend()[&NodeId::from("backend-a")], 1);
    assert!(connections.admit().is_err(), "it holds its place");
    assert_eq!(below.uri(), "/connect/7?userId=7");
    assert_eq!(below.headers()["sec-websocket-key"], KEY);
    assert!(!below.headers().contains_key("x-wscluster-migrated-from"));
    let body_size = below.body().size_hint().exact();
    assert_eq!(body_size, Some(0), "no body goes down");

    // The request came from no server, so the client's side never upgrades.
    tokio::time::timeout(Duration::from_secs(5), async {
        while !connections.is_empty() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("the connection leaves the live connections");
    assert!(connections.admit().is_ok(), "and frees its place");
}

/// An upgrade goes below with the client's method, URI and headers but not its extensions,
/// which stay with the head the relay keeps (cloning them costs an allocation each).
#[tokio::test]
async fn an_upgrade_goes_below_without_the_requests_extensions() {
    #[derive(Clone, Debug, PartialEq)]
    struct Marker(u32);
    let (mut proxy, mut handle, _connections, _counts) = proxy(1);
    let mut request = upgrade().body(body("")).unwrap();
    request.extensions_mut().insert(Marker(7));
    let backend = async {
        let (below, send) = handle.next_request().await.unwrap();
        send.send_response(response(503, "busy"));
        below
    };
    let (_, below) = tokio::join!(proxy.call(request), backend);
    assert_eq!(below.uri(), "/connect/7?userId=7");
    assert_eq!(below.headers()["sec-websocket-key"], KEY);
    assert!(below.extensions().get::<Marker>().is_none());
}

/// A connected socket, as the backend's side of an upgrade.
async fn backend_socket() -> Peer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let socket = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    Peer::new(socket.into())
}
