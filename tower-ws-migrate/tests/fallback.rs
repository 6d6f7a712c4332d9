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

/// A new owner that does not listen yet when the move first dials it (a backend that has only
/// just joined: on a Swarm, another node's gateway may dial it before its port is reachable
/// from there) and listens 250 ms later: the move dials it again and goes live; the client
/// gets no close, and its next frame reaches the new owner.
#[tokio::test]
async fn a_new_owner_listening_a_moment_late_is_dialed_again_instead_of_falling_back() {
    let (mut client, relay_client) = common::socket_pair().await;
    let (old_backend, relay_upstream) = common::socket_pair().await;
    tokio::spawn(common::answer_the_close(old_backend));
    let (handle, commands) = RelayHandle::new();
    tokio::spawn(relay(
        Peer::new(relay_client),
        Peer::new(relay_upstream.into()),
        RelayConfig::default(),
        commands,
    ));
    // The new owner's port, free for now: the first dial is refused.
    let free = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = free.local_addr().unwrap();
    drop(free);
    let joined = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let listener = TcpListener::bind(address).await.unwrap();
        common::accept_handshake(&listener).await
    });
    let lookup: Arc<dyn UpstreamLookup> = Arc::new(move |_: &NodeId| {
        Some(Upstream::new(
            address.to_string(),
            UpstreamConfig::default(),
        ))
    });
    let connection = ProxiedConnection::new(handle, &request(), &HeaderMap::new(), lookup);
    let started = Instant::now();
    let outcome = tokio::time::timeout(
        Duration::from_secs(10),
        connection.migrate(
            &MigrationPolicy::live(),
            &NodeId::from("a"),
            Some(&NodeId::from("b")),
        ),
    )
    .await
    .expect("the move ends");
    assert_eq!(outcome, Outcome::Moved);
    assert!(started.elapsed() >= Duration::from_millis(250));
    let mut new_owner = tokio::time::timeout(Duration::from_secs(5), joined)
        .await
        .expect("the new owner was dialed")
        .unwrap();
    let masked_hi = [0x81, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2];
    client.write_all(&masked_hi).await.unwrap();
    let mut got = [0u8; 8];
    tokio::time::timeout(Duration::from_secs(5), new_owner.read_exact(&mut got))
        .await
        .expect("the client's frame reaches the new owner")
        .unwrap();
    assert_eq!(got, masked_hi);
}
