//! A live move that cannot happen falls back to Reconnect, over a real relay: the client gets
//! the policy's close, and the outcome says why.

mod common;

use std::sync::Arc;

use http::HeaderMap;
use std::time::{Duration, Instant};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tower_hashring::NodeId;
use tower_ws_migrate::{
    Fallback, FallbackKind, Migrate, MigrationPolicy, Outcome, ProxiedConnection, UpstreamLookup,
};
use tower_ws_proxy::{
    frame::close_frame, relay, Peer, RelayConfig, RelayHandle, Upstream, UpstreamConfig,
};

/// A relayed connection: the client's end of it, and its handle.
async fn relayed() -> (TcpStream, TcpStream, RelayHandle) {
    relayed_with(RelayConfig::default()).await
}

async fn relayed_with(config: RelayConfig) -> (TcpStream, TcpStream, RelayHandle) {
    let (client, relay_client) = common::socket_pair().await;
    let (upstream, relay_upstream) = common::socket_pair().await;
    let (handle, commands) = RelayHandle::new();
    tokio::spawn(relay(
        Peer::new(relay_client),
        Peer::new(relay_upstream.into()),
        config,
        commands,
    ));
    (client, upstream, handle)
}

/// A backend that accepts one WebSocket handshake (any key: the relay does not check the
/// accept value) and then holds the connection.
async fn accepting_backend() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let mut tcp = common::accept_handshake(&listener).await;
        let mut rest = Vec::new();
        let _ = tcp.read_to_end(&mut rest).await;
    });
    address
}

async fn assert_closed_with(client: &mut TcpStream, code: u16, reason: &str) {
    let expected = close_frame(code, reason, false);
    let mut got = vec![0; expected.len()];
    client.read_exact(&mut got).await.unwrap();
    assert_eq!(got, expected);
}

/// Moves `connection` live from a to b; it must fall back.
async fn live_move_falls_back(connection: &ProxiedConnection) -> Fallback {
    let (from, to) = (NodeId::from("a"), NodeId::from("b"));
    match connection
        .migrate(&MigrationPolicy::live(), &from, Some(&to))
        .await
    {
        Outcome::FellBack(why) => why,
        outcome => panic!("expected a fallback, got {outcome:?}"),
    }
}

fn request() -> http::request::Parts {
    http::Request::get("/connect/7")
        .body(())
        .unwrap()
        .into_parts()
        .0
}

#[tokio::test]
async fn permessage_deflate_with_context_takeover_reconnects_instead() {
    let (mut client, _upstream, handle) = relayed().await;
    let mut negotiated = HeaderMap::new();
    negotiated.insert(
        "sec-websocket-extensions",
        "permessage-deflate; client_max_window_bits"
            .parse()
            .unwrap(),
    );
    let never_dialed: Arc<dyn UpstreamLookup> =
        Arc::new(|_: &NodeId| -> Option<Upstream> { panic!("no dial for a blocked connection") });
    let connection = ProxiedConnection::new(handle, &request(), &negotiated, never_dialed);
    let why = live_move_falls_back(&connection).await;
    assert_eq!(why.kind, FallbackKind::StatefulExtension);
    assert!(why.detail.contains("permessage-deflate"), "{why}");
    assert_closed_with(&mut client, 1012, "Service Restart").await;
}

#[tokio::test]
async fn a_failed_dial_reconnects_with_the_policys_close() {
    let (mut client, _upstream, handle) = relayed().await;
    // A port nothing listens on: the dial is refused.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = closed.local_addr().unwrap().to_string();
    drop(closed);
    let lookup: Arc<dyn UpstreamLookup> = Arc::new(move |_: &NodeId| {
        Some(Upstream::new(address.as_str(), UpstreamConfig::default()))
    });
    // Permessage-deflate without context takeover keeps no state: live is allowed.
    let mut negotiated = HeaderMap::new();
    negotiated.insert(
        "sec-websocket-extensions",
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
            .parse()
            .unwrap(),
    );
    let connection = ProxiedConnection::new(handle, &request(), &negotiated, lookup);
    let policy = MigrationPolicy::Live {
        code: 4100,
        reason: "moving".into(),
    };
    let outcome = connection
        .migrate(&policy, &NodeId::from("a"), Some(&NodeId::from("b")))
        .await;
    let Outcome::FellBack(why) = outcome else {
        panic!("expected a fallback, got {outcome:?}");
    };
    assert_eq!(why.kind, FallbackKind::DialFailed);
    assert!(why.detail.starts_with("dialing b"), "{why}");
    assert_closed_with(&mut client, 4100, "moving").await;
}

/// A client parked inside a message (a fragment without FIN, then silence) cannot be
/// switched: after the switch timeout the move falls back to the policy's close, counted
/// as `no_boundary`, instead of holding its migration forever.
#[tokio::test]
async fn a_client_parked_mid_message_falls_back_after_the_switch_timeout() {
    let config = RelayConfig::default().switch_timeout(Duration::from_millis(300));
    let (mut client, _upstream, handle) = relayed_with(config).await;
    // Masked text "hel", no FIN.
    client
        .write_all(&[0x01, 0x83, 0, 0, 0, 0, b'h', b'e', b'l'])
        .await
        .unwrap();
    let address = accepting_backend().await;
    let lookup: Arc<dyn UpstreamLookup> = Arc::new(move |_: &NodeId| {
        Some(Upstream::new(address.as_str(), UpstreamConfig::default()))
    });
    let connection = ProxiedConnection::new(handle, &request(), &HeaderMap::new(), lookup);
    let started = Instant::now();
    let why = live_move_falls_back(&connection).await;
    assert_eq!(why.kind, FallbackKind::NoBoundary);
    assert_eq!(why.kind.as_str(), "no_boundary");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert_closed_with(&mut client, 1012, "Service Restart").await;
}
