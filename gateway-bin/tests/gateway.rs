//! The gateway end to end on loopback: real backends, real WebSocket clients.

mod common;

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use common::*;
use futures_util::{SinkExt, StreamExt};
use gateway_bin::gateway::Gateway;
use serde_json::Value;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_tungstenite::tungstenite::{self, Message};
use tower_hashring::{NodeId, Ring};

#[tokio::test]
async fn each_user_lands_on_its_ring_owner_every_time() {
    let gateway = demo(3).await;
    // The gateway's ring is the documented default over the demo ids.
    let ring = Ring::builder()
        .node("backend-a", 1)
        .node("backend-b", 1)
        .node("backend-c", 1)
        .build()
        .unwrap();
    for user in ["1", "2", "alice", "bob", "42"] {
        let (mut first, server) = connect(&gateway, user).await;
        let (_second, again) = connect(&gateway, user).await;
        assert_eq!(server, again, "user {user} is sticky");
        assert_eq!(server, ring.route(user.as_bytes()).unwrap().id().as_str());
        first.send(Message::text("ping me")).await.unwrap();
        let echo = next_json(&mut first).await;
        assert_eq!(
            (echo["type"].as_str(), echo["content"].as_str()),
            (Some("echo"), Some("ping me"))
        );
        assert_eq!(echo["server"], server.as_str());
    }
    gateway.shutdown().await;
}

/// `Sec-WebSocket-*` headers cross the gateway both ways, and pings are answered end to end.
#[tokio::test]
async fn subprotocols_and_pings_pass_through() {
    use tungstenite::client::IntoClientRequest;

    let gateway = demo(2).await;
    let mut request = format!("ws://{}/connect/erin", gateway.public)
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "other, wscluster.v1".parse().unwrap(),
    );
    let (mut client, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(response.headers()["sec-websocket-protocol"], "wscluster.v1");
    assert!(response.headers().contains_key("sec-websocket-accept"));
    assert_eq!(next_json(&mut client).await["type"], "connected");
    client
        .send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .unwrap();
    match tokio::time::timeout(Duration::from_secs(5), client.next())
        .await
        .unwrap()
    {
        Some(Ok(Message::Pong(payload))) => assert_eq!(&payload[..], b"are you there"),
        other => panic!("expected the pong, got {other:?}"),
    }
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_thousand_users_spread_over_all_backends() {
    let gateway = demo(3).await;
    let mut per_server: HashMap<String, usize> = HashMap::new();
    let mut clients = vec![];
    for n in 0..1000 {
        let (client, server) = connect(&gateway, &format!("user-{}", fastrand_like(n))).await;
        *per_server.entry(server).or_default() += 1;
        clients.push(client);
    }
    assert_eq!(per_server.len(), 3, "{per_server:?}");
    for count in per_server.values() {
        assert!((200..470).contains(count), "{per_server:?}");
    }
    assert_eq!(gateway.connections().len(), 1000);
    let ring = ring_json(&gateway).await;
    let listed: u64 = ring["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["connections"].as_u64().unwrap())
        .sum();
    assert_eq!(listed, 1000);
    gateway.shutdown().await;
}

/// A deterministic scramble, so user ids look random but the test is repeatable.
fn fastrand_like(n: u64) -> u64 {
    n.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17)
}

#[tokio::test]
async fn send_reaches_every_socket_of_the_user_through_its_owner() {
    let gateway = demo(3).await;
    let (mut a, server) = connect(&gateway, "carol").await;
    let (mut b, _) = connect(&gateway, "carol").await;
    let (status, body) = http(gateway.public, "POST", "/send?userId=carol", "hello carol").await;
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["delivered"], 2);
    assert_eq!(answer["server"], server.as_str());
    for client in [&mut a, &mut b] {
        let message = next_json(client).await;
        assert_eq!(message["type"], "message");
        assert_eq!(message["content"], "hello carol");
    }
    let (status, _) = http(
        gateway.public,
        "GET",
        "/send?userId=carol&message=again",
        "",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(next_json(&mut a).await["content"], "again");

    let (status, body) = http(gateway.public, "GET", "/send?userId=nobody&message=x", "").await;
    assert_eq!(
        status, 404,
        "the owner answers: nobody has no connection there"
    );
    assert!(body.contains("nobody"), "{body}");
    gateway.shutdown().await;
}

#[tokio::test]
async fn removing_a_backend_sends_its_users_to_their_new_owners() {
    let gateway = demo_reconnecting(3).await;
    let mut clients = vec![];
    for n in 0..30 {
        let user = format!("u{n}");
        let (client, server) = connect(&gateway, &user).await;
        clients.push((user, client, server));
    }
    let (status, _) = http(gateway.admin, "DELETE", "/admin/backends/backend-b", "").await;
    assert_eq!(status, 200);
    let ring = ring_json(&gateway).await;
    assert_eq!(ring["members"].as_array().unwrap().len(), 2);

    let mut moved = 0;
    for (user, client, server) in &mut clients {
        if server == "backend-b" {
            moved += 1;
            assert_eq!(next_close(client).await.0, 1012);
            let (_, new_server) = connect(&gateway, user).await;
            assert_ne!(new_server, "backend-b");
        } else {
            // Untouched: the same connection still echoes.
            client.send(Message::text("still here")).await.unwrap();
            let echo = next_json(client).await;
            assert_eq!(echo["type"], "echo");
            assert_eq!(echo["server"], server.as_str());
        }
    }
    assert!(moved > 0);
    let (status, body) = http(gateway.admin, "DELETE", "/admin/backends/backend-b", "").await;
    assert_eq!(
        (status, body.trim()),
        (404, "no backend backend-b on the ring")
    );
    gateway.shutdown().await;
}

/// Scaling up through the admin API moves exactly the users the new backend now owns: they
/// get a 1012 close and reconnect to it; everyone else keeps the same connection.
#[tokio::test]
async fn adding_a_backend_moves_exactly_the_users_it_now_owns() {
    let gateway = demo_reconnecting(3).await;
    let mut clients = vec![];
    for n in 0..60 {
        let user = format!("scale-{n}");
        let (client, server) = connect(&gateway, &user).await;
        clients.push((user, client, server));
    }
    let (status, body) = http(gateway.admin, "POST", "/admin/backends", "").await;
    assert_eq!(status, 201, "{body}");
    let added: Value = serde_json::from_str(&body).unwrap();
    let added = added["id"].as_str().unwrap().to_owned();
    let ids = ["backend-a", "backend-b", "backend-c", added.as_str()];
    let ring = ids
        .iter()
        .fold(Ring::builder(), |b, id| b.node(*id, 1))
        .build()
        .unwrap();

    let mut moved = 0;
    for (user, client, server) in &mut clients {
        let owner = ring
            .route(user.as_bytes())
            .unwrap()
            .id()
            .as_str()
            .to_owned();
        if owner != *server {
            moved += 1;
            assert_eq!(owner, added, "only the new backend takes users");
            assert_eq!(next_close(client).await.0, 1012);
            let (_, new_server) = connect(&gateway, user).await;
            assert_eq!(new_server, added);
        } else {
            client.send(Message::text("still here")).await.unwrap();
            let echo = next_json(client).await;
            assert_eq!(
                (echo["type"].as_str(), echo["server"].as_str()),
                (Some("echo"), Some(server.as_str()))
            );
        }
    }
    assert!(moved > 0, "a 4th backend takes some of 60 users");
    gateway.shutdown().await;
}

#[tokio::test]
async fn bad_input_gets_a_clear_status() {
    let gateway = demo(1).await;
    let (status, body) = http(gateway.public, "GET", "/count", "").await;
    assert_eq!(
        (status, body.trim()),
        (400, "the request carries no routing key")
    );

    let huge = "x".repeat(1 << 20);
    let (status, _) = http_raw(
        gateway.public,
        &format!(
            "GET /count?userId=1 HTTP/1.1\r\nhost: t\r\nx-big: {huge}\r\nconnection: close\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(status, 431);

    http(gateway.admin, "DELETE", "/admin/backends/backend-a", "").await;
    let (status, body) = http(gateway.public, "GET", "/count?userId=1", "").await;
    assert_eq!((status, body.trim()), (503, "no backend is on the ring"));
    assert_ws_refused(&gateway, "1", 503).await;
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_refusing_owner_fails_over_to_its_successor_then_502() {
    // Port 1 on loopback refuses connections.
    let dead: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let ids = ["dead-1", "dead-2", "dead-3"];
    let backends: Vec<_> = ids.iter().map(|id| (NodeId::from(*id), dead)).collect();
    let gateway = gateway_bin::demo::start(any_port(), backends, 1)
        .await
        .unwrap();
    let ring = Ring::builder()
        .node("dead-1", 1)
        .node("dead-2", 1)
        .node("dead-3", 1)
        .node("backend-a", 1)
        .build()
        .unwrap();
    let user = (0..)
        .map(|n| format!("user-{n}"))
        .find(|u| ring.route(u.as_bytes()).unwrap().id().as_str() != "backend-a")
        .unwrap();
    let (_client, server) = connect(&gateway, &user).await;
    assert_eq!(
        server, "backend-a",
        "the live successor took the refused user"
    );

    http(gateway.admin, "DELETE", "/admin/backends/backend-a", "").await;
    let body = assert_ws_refused(&gateway, &user, 502).await;
    assert!(body.contains("no backend accepted the websocket"), "{body}");
    gateway.shutdown().await;
}

#[tokio::test]
async fn the_connection_limit_answers_503_past_it() {
    let mut config = any_port();
    config.proxy.max_websockets = Some(2);
    let gateway = gateway_bin::demo::start(config, vec![], 1).await.unwrap();
    let _a = connect(&gateway, "1").await;
    let _b = connect(&gateway, "2").await;
    assert_ws_refused(&gateway, "3", 503).await;
    gateway.shutdown().await;
}

#[tokio::test]
async fn shutdown_closes_websockets_with_1001() {
    let gateway = demo(2).await;
    let (mut client, _) = connect(&gateway, "dave").await;
    let shutdown = tokio::spawn(gateway.shutdown());
    let (code, reason) = next_close(&mut client).await;
    assert_eq!((code, reason.as_str()), (1001, "gateway shutting down"));
    drop(client);
    tokio::time::timeout(Duration::from_secs(10), shutdown)
        .await
        .unwrap()
        .unwrap();
}

/// An HTTP request in flight when shutdown starts still gets its answer.
#[tokio::test]
async fn shutdown_finishes_in_flight_http() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let slow_backend = listener.local_addr().unwrap();
    let (arrived, mut request_arrived) = tokio::sync::mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/slow",
        axum::routing::get(move || async move {
            let _ = arrived.send(());
            tokio::time::sleep(Duration::from_millis(500)).await;
            "done"
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    let gateway = Gateway::start(any_port(), vec![(NodeId::from("slow"), slow_backend)])
        .await
        .unwrap();
    let public = gateway.public;
    let request = tokio::spawn(async move { http(public, "GET", "/slow?userId=1", "").await });
    // Shut down once the request is in flight at the backend.
    request_arrived.recv().await.unwrap();
    let shutdown = tokio::spawn(gateway.shutdown());
    let (status, body) = request.await.unwrap();
    assert_eq!((status, body.as_str()), (200, "done"));
    shutdown.await.unwrap();
    assert!(
        TcpStream::connect(public).await.is_err(),
        "no longer accepting"
    );
}

/// With per-thread workers (one `SO_REUSEPORT` listener each), users still land on their
/// owners, relays echo, and shutdown still closes every WebSocket with 1001 before the
/// worker runtimes go away.
#[tokio::test]
async fn worker_threads_route_relay_and_shut_down_cleanly() {
    let mut config = any_port();
    config.listen.workers = 2;
    let gateway = gateway_bin::demo::start(config, vec![], 3).await.unwrap();
    let mut clients = Vec::new();
    for user in 0..20 {
        let user = format!("worker-user-{user}");
        let (mut client, server) = connect(&gateway, &user).await;
        let (_again, same) = connect(&gateway, &user).await;
        assert_eq!(server, same, "user {user} is sticky across workers");
        client.send(Message::text(user.clone())).await.unwrap();
        let echo = next_json(&mut client).await;
        assert_eq!(echo["content"], user.as_str());
        assert_eq!(echo["server"], server.as_str());
        clients.push(client);
    }
    let shutdown = tokio::spawn(gateway.shutdown());
    for client in &mut clients {
        assert_eq!(next_close(client).await.0, 1001);
    }
    drop(clients);
    tokio::time::timeout(Duration::from_secs(10), shutdown)
        .await
        .unwrap()
        .unwrap();
}

/// Reads an HTTP head (up to the blank line) byte by byte, so nothing after it is consumed.
async fn read_head(tcp: &mut TcpStream) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(tcp.read_u8().await.unwrap());
    }
    String::from_utf8(head).unwrap()
}

/// permessage-deflate survives the gateway: the extension offer and answer cross it, and
/// compressed frames (RSV1 set) pass byte for byte both ways, the client's still masked.
#[tokio::test]
async fn permessage_deflate_frames_pass_byte_for_byte() {
    // deflate("hello") without its trailer, as permessage-deflate sends it.
    let compressed = [0xf2u8, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
    let mask = [0x11u8, 0x22, 0x33, 0x44];
    let mut client_frame = vec![0xC1, 0x80 | compressed.len() as u8];
    client_frame.extend(mask);
    client_frame.extend(
        compressed
            .iter()
            .zip(mask.iter().cycle())
            .map(|(b, m)| b ^ m),
    );
    let mut server_frame = vec![0xC1, compressed.len() as u8];
    server_frame.extend(compressed);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend_addr = listener.local_addr().unwrap();
    let (expected, reply) = (client_frame.clone(), server_frame.clone());
    let backend = tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let head = read_head(&mut tcp).await.to_ascii_lowercase();
        assert!(
            head.contains("sec-websocket-extensions: permessage-deflate; client_max_window_bits"),
            "the offer reaches the backend: {head}"
        );
        tcp.write_all(
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\
              sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\
              sec-websocket-extensions: permessage-deflate; server_no_context_takeover\r\n\r\n",
        )
        .await
        .unwrap();
        let mut received = vec![0; expected.len()];
        tcp.read_exact(&mut received).await.unwrap();
        assert_eq!(received, expected, "the client's frame arrives unchanged");
        tcp.write_all(&reply).await.unwrap();
        // Hold the socket until the client has read the reply.
        let _ = tcp.read_u8().await;
    });

    let gateway = Gateway::start(any_port(), vec![(NodeId::from("deflate"), backend_addr)])
        .await
        .unwrap();
    let mut client = TcpStream::connect(gateway.public).await.unwrap();
    client
        .write_all(
            b"GET /connect/zip HTTP/1.1\r\nhost: test\r\nupgrade: websocket\r\nconnection: upgrade\r\n\
              sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
              sec-websocket-extensions: permessage-deflate; client_max_window_bits\r\n\r\n",
        )
        .await
        .unwrap();
    let head = read_head(&mut client).await.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(
        head.contains("sec-websocket-extensions: permessage-deflate; server_no_context_takeover"),
        "the answer reaches the client: {head}"
    );
    client.write_all(&client_frame).await.unwrap();
    let mut received = vec![0; server_frame.len()];
    tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut received))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        received, server_frame,
        "the backend's frame arrives unchanged"
    );
    drop(client);
    backend.await.unwrap();
    gateway.shutdown().await;
}

/// A backend that accepts the TCP connection but never answers the handshake is given up
/// after the configured handshake timeout: the client gets a 502 with the reason, not a hang.
#[tokio::test]
async fn a_silent_backend_times_out_its_handshake_with_502() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut sockets = Vec::new();
        while let Ok((tcp, _)) = silent.accept().await {
            sockets.push(tcp); // Read nothing, answer nothing.
        }
    });
    let mut config = any_port();
    config.upstream.handshake_timeout = Duration::from_millis(300);
    let gateway = Gateway::start(config, vec![(NodeId::from("silent"), silent_addr)])
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let body = assert_ws_refused(&gateway, "1", 502).await;
    assert!(body.contains("no backend accepted the websocket"), "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "gave up after the handshake timeout, not the default 5 s: {:?}",
        started.elapsed()
    );
    held.abort();
    gateway.shutdown().await;
}

/// The id of `user`'s owner on `ring`.
fn owner(ring: &Ring, user: &str) -> String {
    ring.route(user.as_bytes()).unwrap().id().to_string()
}

/// Connects `count` latecomers (`late-0`, …) one every 15 ms, so that they keep arriving
/// while the ring changes; returns each with its client.
async fn latecomers_arriving(public: SocketAddr, count: usize) -> Vec<(String, Client)> {
    let mut late = Vec::new();
    for n in 0..count {
        let user = format!("late-{n}");
        let url = format!("ws://{public}/connect/{user}");
        let (client, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        late.push((user, client));
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    late
}

/// The live connections per member, as the admin API's ring counts them (members with none
/// left out).
async fn connections_per_member(gateway: &Gateway) -> HashMap<String, u64> {
    let ring = ring_json(gateway).await;
    let members = ring["members"].as_array().unwrap().clone();
    let counted = members.iter().map(|m| {
        let id = m["id"].as_str().unwrap().to_owned();
        (id, m["connections"].as_u64().unwrap())
    });
    counted.filter(|(_, n)| *n > 0).collect::<HashMap<_, _>>()
}

/// Asserts that a client that kept sending through both ring changes was never closed, got
/// one echo per message in order, and was relayed to exactly its successive owners (first
/// `first_server`, then its owner on `middle`, then on `last`), each move announced by the
/// new backend's `connected` naming the old one. Returns whether it moved at all.
fn assert_relayed_to_its_owners_in_order(
    traffic: Traffic,
    first_server: &str,
    middle: &Ring,
    last: &Ring,
) -> bool {
    let Traffic {
        user,
        sent,
        received,
        closed,
    } = traffic;
    assert_eq!(closed, None, "{user} was closed");
    assert!(sent > 50, "{user} kept sending ({sent})");
    let contents: Vec<&str> = received
        .iter()
        .filter(|m| m["type"] == "echo")
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    let expected: Vec<String> = (0..sent).map(|i| format!("n{i}")).collect();
    assert_eq!(contents, expected, "{user}: one echo per message, in order");

    // The servers it was relayed to, in order, as the echoes and hellos tell.
    let mut servers = vec![first_server.to_owned()];
    for message in &received {
        let server = message["server"].as_str().unwrap();
        if message["type"] == "connected" {
            assert_eq!(
                message["migratedFrom"].as_str(),
                servers.last().map(String::as_str),
                "{user}: the new backend is told where the user came from"
            );
            servers.push(server.to_owned());
        } else {
            assert_eq!(
                server,
                servers.last().unwrap(),
                "{user}: echo from {server}"
            );
        }
    }
    let mut owners = vec![
        first_server.to_owned(),
        owner(middle, &user),
        owner(last, &user),
    ];
    owners.dedup();
    assert_eq!(
        servers, owners,
        "{user} moved exactly when its owner changed"
    );
    owners.len() > 1
}

/// Asserts that every latecomer's echo now comes from its owner on `last`.
async fn assert_latecomers_on_their_owners(latecomers: Vec<(String, Client)>, last: &Ring) {
    for (user, mut client) in latecomers {
        client.send(Message::text("where am i")).await.unwrap();
        let server = loop {
            // Its hello, perhaps a move's hello, then the echo from where it is now.
            let message = next_json(&mut client).await;
            if message["type"] == "echo" {
                break message["server"].as_str().unwrap().to_owned();
            }
        };
        assert_eq!(server, owner(last, &user), "{user} ended on its owner");
    }
}

/// Live migration under continuous traffic: a 4th backend joins, then one of the first three
/// leaves. Clients whose owner changed end on their new owner without a close, every message
/// gets exactly one echo, in order, and each move is announced by the new backend's
/// `connected` (with the old one's id); the others see nothing but their own echoes from
/// their one backend. Clients that connect while the ring changes end on the right owner.
#[tokio::test]
async fn live_migration_moves_exactly_the_affected_clients_without_losing_a_message() {
    let mut config = any_port();
    config.migration.drain_window = Duration::from_millis(300);
    let gateway = gateway_bin::demo::start(config, vec![], 3).await.unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut clients = Vec::new();
    let mut first_server = HashMap::new();
    for n in 0..60 {
        let user = format!("live-{n}");
        let (client, server) = connect(&gateway, &user).await;
        first_server.insert(user.clone(), server);
        clients.push(tokio::spawn(echo_traffic(user, client, stopped.clone())));
    }
    // Latecomers connect throughout both changes.
    let latecomers = tokio::spawn(latecomers_arriving(gateway.public, 40));

    // The first change comes once some latecomers are in, so others arrive during it.
    let some_late = eventually(Duration::from_secs(5), async || {
        gateway.connections().len() >= 70
    });
    assert!(some_late.await, "latecomers connect");
    let (status, body) = http(gateway.admin, "POST", "/admin/backends", "").await;
    assert_eq!(status, 201, "{body}");
    let added: Value = serde_json::from_str(&body).unwrap();
    let added = added["id"].as_str().unwrap().to_owned();
    let first = ring_of(&["backend-a", "backend-b", "backend-c"]);
    let middle = ring_of(&["backend-a", "backend-b", "backend-c", &added]);
    let last = ring_of(&["backend-a", "backend-c", &added]);
    // The second change once the first one's moves of the 60 are done.
    let to_added = (0..60)
        .filter(|n| owner(&first, &format!("live-{n}")) != owner(&middle, &format!("live-{n}")))
        .count() as u64;
    let first_moves_done = eventually(Duration::from_secs(5), async || {
        ring_json(&gateway).await["migrations"]["moved"]
            .as_u64()
            .unwrap()
            >= to_added
    });
    assert!(first_moves_done.await, "{to_added} users move to {added}");
    // It answers once backend-b's users have left it.
    let (status, _) = http(gateway.admin, "DELETE", "/admin/backends/backend-b", "").await;
    assert_eq!(status, 200);
    let latecomers = latecomers.await.unwrap();
    // The live connections' records follow every live move: the counts per backend become the
    // last ring's owners of all 100 users.
    let users = (0..60)
        .map(|n| format!("live-{n}"))
        .chain((0..40).map(|n| format!("late-{n}")));
    let mut expected: HashMap<String, u64> = HashMap::new();
    for user in users {
        *expected.entry(owner(&last, &user)).or_default() += 1;
    }
    let settled = eventually(Duration::from_secs(5), async || {
        connections_per_member(&gateway).await == expected
    });
    assert!(
        settled.await,
        "{:?} != {expected:?}",
        connections_per_member(&gateway).await
    );
    stop.send_replace(true);

    let mut moved = 0;
    for client in clients {
        let traffic = client.await.unwrap();
        let started_on = first_server[&traffic.user].clone();
        let moved_once =
            assert_relayed_to_its_owners_in_order(traffic, &started_on, &middle, &last);
        moved += usize::from(moved_once);
    }
    assert!(moved > 5, "some of 60 users moved ({moved})");

    assert_latecomers_on_their_owners(latecomers, &last).await;
    let ring = ring_json(&gateway).await;
    assert_eq!(ring["migrations"]["failed"], 0);
    assert_eq!(ring["migrations"]["fell_back"], 0);
    gateway.shutdown().await;
}

/// `POST /admin/backends` with a body adds a running backend by address; a malformed body
/// is a 400 that says what is expected, a duplicate id a 409.
#[tokio::test]
async fn the_admin_api_adds_a_running_backend_by_address() {
    let gateway = demo(1).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let backend = reference_backend::ReferenceBackend::new("external");
    tokio::spawn(backend.serve(listener, std::future::pending()));

    let (status, body) = http(gateway.admin, "POST", "/admin/backends", "{\"id\": 7}").await;
    assert_eq!(status, 400);
    assert!(body.contains("the body must be"), "{body}");
    let (status, body) = http(
        gateway.admin,
        "POST",
        "/admin/backends",
        "{\"id\":\"backend-a\",\"address\":\"127.0.0.1:1\"}",
    )
    .await;
    assert_eq!(
        (status, body.trim()),
        (409, "backend backend-a is already on the ring")
    );

    let new = format!("{{\"id\":\"external\",\"address\":\"{address}\"}}");
    let (status, body) = http(gateway.admin, "POST", "/admin/backends", &new).await;
    assert_eq!(status, 201, "{body}");
    let ring = ring_of(&["backend-a", "external"]);
    let user = (0..)
        .map(|n| format!("ext-{n}"))
        .find(|u| ring.route(u.as_bytes()).unwrap().id().as_str() == "external")
        .unwrap();
    let (_client, server) = connect(&gateway, &user).await;
    assert_eq!(server, "external");
    gateway.shutdown().await;
}

/// Without a scaler (`run` without Docker), an empty `POST /admin/backends` starts nothing:
/// a 409 that says how to add a running backend, and the ring stays as it was.
#[tokio::test]
async fn without_a_scaler_an_empty_post_starts_no_backend() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let backend = reference_backend::ReferenceBackend::new("only");
    tokio::spawn(backend.serve(listener, std::future::pending()));
    let gateway = Gateway::start(any_port(), vec![(NodeId::from("only"), address)])
        .await
        .unwrap();
    let before = ring_json(&gateway).await;
    let (status, body) = http(gateway.admin, "POST", "/admin/backends", "").await;
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("no scaler"), "{body}");
    let after = ring_json(&gateway).await;
    assert_eq!(after["members"], before["members"]);
    assert_eq!(after["version"], before["version"]);
    gateway.shutdown().await;
}

/// With bounded loads on, the live WebSocket counts steer a hot key: its connections fill its
/// owner up to the bound, then spill to the next backends clockwise.
#[tokio::test]
async fn bounded_loads_spread_a_hot_key_by_live_connections() {
    let mut config = any_port();
    config.routing.load_factor = Some(tower_hashring::LoadFactor::new(1.25).unwrap());
    let gateway = gateway_bin::demo::start(config, vec![], 3).await.unwrap();
    let mut clients = Vec::new();
    let mut per_server: HashMap<String, u64> = HashMap::new();
    for _ in 0..30 {
        let (client, server) = connect(&gateway, "hot").await;
        *per_server.entry(server).or_default() += 1;
        clients.push(client);
    }
    let owner = ring_of(&["backend-a", "backend-b", "backend-c"])
        .route(b"hot")
        .unwrap()
        .id()
        .to_string();
    // Before the 30th connection, 29 were live: the bound was ceil(1.25 × 30 / 3) = 13.
    assert_eq!(
        per_server[&owner], 13,
        "the owner filled to its bound: {per_server:?}"
    );
    assert!(per_server.values().all(|n| *n <= 13), "{per_server:?}");
    assert_eq!(per_server.values().sum::<u64>(), 30);
    let ring = ring_json(&gateway).await;
    let counted: u64 = ring["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["connections"].as_u64().unwrap())
        .sum();
    assert_eq!(counted, 30, "the admin API counts the same connections");
    gateway.shutdown().await;
}

/// A backend that refuses a WebSocket with a 4xx has the last word: the client gets that
/// status and its body, and no other backend is tried; a 5xx with a body fails over.
#[tokio::test]
async fn a_backend_refusal_reaches_the_client_with_its_reason() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut tcp, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let head = read_head(&mut tcp).await;
                let answer = if head.contains("/connect/banned-") {
                    "HTTP/1.1 403 Forbidden\r\ncontent-length: 17\r\n\r\nyou are banned.\r\n"
                } else {
                    "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\nbusy"
                };
                tcp.write_all(answer.as_bytes()).await.unwrap();
            });
        }
    });
    let gateway = gateway_bin::demo::start(any_port(), vec![(NodeId::from("picky"), address)], 1)
        .await
        .unwrap();
    let ring = ring_of(&["picky", "backend-a"]);
    let on_picky = |u: &String| ring.route(u.as_bytes()).unwrap().id().as_str() == "picky";
    let banned = (0..).map(|n| format!("banned-{n}")).find(on_picky).unwrap();
    let body = assert_ws_refused(&gateway, &banned, 403).await;
    assert_eq!(body, "you are banned.\r\n");
    let busy = (0..).map(|n| format!("busy-{n}")).find(on_picky).unwrap();
    let (_client, server) = connect(&gateway, &busy).await;
    assert_eq!(server, "backend-a", "a 5xx fails over to the successor");
    gateway.shutdown().await;
}
