//! The fault suite: hostile clients and broken backends against a real gateway on loopback.
//! Every case has a bound; none may disturb the well-behaved clients beside it, and none may
//! leave a slot, a live-connection record or a descriptor behind.

mod common;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use common::*;
use futures_util::SinkExt;
use gateway_bin::gateway::Gateway;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};
use tower_hashring::NodeId;
use tower_ws_migrate::MigrationSecret;

#[tokio::test]
async fn a_partial_request_head_is_closed_at_the_head_deadline() {
    let gateway = gateway_bin::demo::start(strict(), vec![], 1).await.unwrap();
    let mut slowloris = TcpStream::connect(gateway.public).await.unwrap();
    slowloris
        .write_all(b"GET /count?userId=1 HTTP/1.1\r\nHost: a\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    until_closed(&mut slowloris, Duration::from_secs(3))
        .await
        .expect("the gateway closed the connection");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(2),
        "{took:?}"
    );

    // An idle keep-alive connection is bounded the same way.
    let mut idle = TcpStream::connect(gateway.public).await.unwrap();
    idle.write_all(b"GET /count?userId=1 HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let answer = until_closed(&mut idle, Duration::from_secs(3))
        .await
        .unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 200"));
    assert!(started.elapsed() < Duration::from_secs(2));
    gateway.shutdown().await;
}

#[tokio::test]
async fn heads_past_the_limits_get_431() {
    let mut config = strict();
    config.http.max_headers = 16;
    let gateway = gateway_bin::demo::start(config, vec![], 1).await.unwrap();
    let many: String = (0..40).map(|n| format!("x-h{n}: v\r\n")).collect();
    let (status, _) = http_raw(
        gateway.public,
        &format!("GET /count?userId=1 HTTP/1.1\r\nhost: t\r\n{many}connection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(status, 431, "too many headers");
    let long = "v".repeat(20 * 1024);
    let (status, _) = http_raw(
        gateway.public,
        &format!("GET /count?userId=1 HTTP/1.1\r\nhost: t\r\nx-long: {long}\r\nconnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(status, 431, "a head over 16 KiB");
    let (status, _) = http(gateway.public, "GET", "/count?userId=1", "").await;
    assert_eq!(status, 200, "within the limits");
    gateway.shutdown().await;
}

/// A malformed handshake costs neither a slot nor a backend dial.
#[tokio::test]
async fn malformed_handshakes_are_refused_before_any_backend_dial() {
    let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = backend.local_addr().unwrap();
    let gateway = Gateway::start(strict(), vec![(NodeId::from("counted"), address)])
        .await
        .unwrap();
    let cases = [
        (
            "sec-websocket-version: 13\r\n".to_owned(),
            400,
            "one valid Sec-WebSocket-Key",
        ),
        (
            "sec-websocket-version: 13\r\nsec-websocket-key: abc\r\n".to_owned(),
            400,
            "one valid Sec-WebSocket-Key",
        ),
        (
            format!("sec-websocket-version: 8\r\n{KEY}"),
            426,
            "version 13",
        ),
        (
            format!("sec-websocket-version: 13\r\n{KEY}content-length: 5\r\n"),
            400,
            "must not have a body",
        ),
    ];
    for (headers, status, reason) in cases {
        let request = format!(
            "GET /connect/1 HTTP/1.1\r\nhost: t\r\n{UPGRADE}{headers}connection: upgrade\r\n\r\nhello"
        );
        let mut tcp = TcpStream::connect(gateway.public).await.unwrap();
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut answer = vec![0u8; 1024];
        let n = tcp.read(&mut answer).await.unwrap();
        let answer = String::from_utf8_lossy(&answer[..n]).to_lowercase();
        assert!(
            answer.starts_with(&format!("http/1.1 {status}")),
            "{answer}"
        );
        assert!(answer.contains(&reason.to_lowercase()), "{answer}");
        if status == 426 {
            assert!(answer.contains("sec-websocket-version: 13"), "{answer}");
        }
    }
    let dialed = tokio::time::timeout(Duration::from_millis(200), backend.accept()).await;
    assert!(dialed.is_err(), "the backend was never dialed");
    assert_eq!(live_connections(&gateway).await, 0);
    gateway.shutdown().await;
}

/// `x-wscluster-*` headers from a client never reach a backend.
#[tokio::test]
async fn a_client_cannot_claim_a_migration() {
    let gateway = demo(1).await;
    let mut request = format!("ws://{}/connect/eve", gateway.public)
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("x-wscluster-migrated-from", "backend-b".parse().unwrap());
    let (mut client, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let hello = next_json(&mut client).await;
    assert_eq!(hello["type"], "connected");
    assert!(hello.get("migratedFrom").is_none(), "{hello}");
    gateway.shutdown().await;
}

/// With a secret, live moves are signed, and the reference backend believes only a valid
/// signature for that user, origin and target.
#[tokio::test]
async fn live_moves_are_signed_and_backends_check_the_signature() {
    let secret = MigrationSecret::new("a test secret of some length");
    let mut config = strict();
    config.migration.secret = Some(secret.clone());
    let gateway = gateway_bin::demo::start(config, vec![], 1).await.unwrap();
    let mut clients = Vec::new();
    for n in 0..20 {
        clients.push(connect(&gateway, &format!("signed-{n}")).await.0);
    }
    let (status, body) = http(gateway.admin, "POST", "/admin/backends", "").await;
    assert_eq!(status, 201, "{body}");
    let added: serde_json::Value = serde_json::from_str(&body).unwrap();
    let ring = ring_of(&["backend-a", added["id"].as_str().unwrap()]);
    let mut moved = 0;
    for (n, client) in clients.iter_mut().enumerate() {
        let user = format!("signed-{n}");
        if ring.route(user.as_bytes()).unwrap().id().as_str() != "backend-a" {
            let hello = next_json(client).await;
            assert_eq!(hello["migratedFrom"], "backend-a", "{hello}");
            moved += 1;
        }
    }
    assert!(moved > 0);
    gateway.shutdown().await;

    // Straight to a backend that has the secret: a forged claim is ignored.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let backend = reference_backend::ReferenceBackend::new("backend-b").with_secret(secret.clone());
    tokio::spawn(backend.serve(listener, std::future::pending()));
    let claim = |signature: String| {
        let mut request = format!("ws://{address}/connect/mallory")
            .into_client_request()
            .unwrap();
        let headers = request.headers_mut();
        headers.insert("x-wscluster-migrated-from", "backend-a".parse().unwrap());
        headers.insert(
            "x-wscluster-migration-signature",
            signature.parse().unwrap(),
        );
        request
    };
    let forged = MigrationSecret::new("another secret entirely").sign_now(
        b"mallory",
        "backend-a",
        "backend-b",
    );
    let (mut client, _) = tokio_tungstenite::connect_async(claim(forged))
        .await
        .unwrap();
    assert!(next_json(&mut client).await.get("migratedFrom").is_none());
    let for_someone_else = secret.sign_now(b"alice", "backend-a", "backend-b");
    let (mut client, _) = tokio_tungstenite::connect_async(claim(for_someone_else))
        .await
        .unwrap();
    assert!(next_json(&mut client).await.get("migratedFrom").is_none());
    let genuine = secret.sign_now(b"mallory", "backend-a", "backend-b");
    let (mut client, _) = tokio_tungstenite::connect_async(claim(genuine))
        .await
        .unwrap();
    assert_eq!(next_json(&mut client).await["migratedFrom"], "backend-a");
}

/// A backend that records the request head it got, and answers 200.
async fn recording_backend() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (heads, received) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let heads = heads.clone();
            tokio::spawn(async move {
                loop {
                    let mut head = Vec::new();
                    while !head.ends_with(b"\r\n\r\n") {
                        let Ok(byte) = tcp.read_u8().await else {
                            return;
                        };
                        head.push(byte);
                    }
                    let _ = heads.send(String::from_utf8_lossy(&head).to_lowercase());
                    let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if tcp.write_all(ok).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (address, received)
}

#[tokio::test]
async fn forwarded_headers_and_request_ids_reach_the_backend_and_come_back() {
    let (address, mut heads) = recording_backend().await;
    let gateway = Gateway::start(strict(), vec![(NodeId::from("rec"), address)])
        .await
        .unwrap();
    let response = |request: String| {
        let public = gateway.public;
        async move {
            let mut tcp = TcpStream::connect(public).await.unwrap();
            tcp.write_all(request.as_bytes()).await.unwrap();
            let mut answer = String::new();
            tcp.read_to_string(&mut answer).await.unwrap();
            answer.to_lowercase()
        }
    };
    let answer = response(
        "GET /count?userId=1 HTTP/1.1\r\nhost: t\r\nx-forwarded-for: 203.0.113.9\r\n\
         x-request-id: trace-42\r\nx-wscluster-migrated-from: backend-z\r\nconnection: close\r\n\r\n"
            .into(),
    )
    .await;
    assert!(answer.starts_with("http/1.1 200"), "{answer}");
    assert!(answer.contains("x-request-id: trace-42"), "{answer}");
    let head = heads.recv().await.unwrap();
    assert!(
        head.contains("x-forwarded-for: 203.0.113.9, 127.0.0.1\r\n"),
        "{head}"
    );
    assert!(
        head.contains("forwarded: for=127.0.0.1;proto=http\r\n"),
        "{head}"
    );
    assert!(head.contains("x-forwarded-proto: http\r\n"), "{head}");
    assert!(head.contains("x-request-id: trace-42\r\n"), "{head}");
    assert!(!head.contains("x-wscluster"), "{head}");

    // An id no log should carry is replaced, and the new one returned.
    let answer = response(
        "GET /count?userId=1 HTTP/1.1\r\nhost: t\r\nx-request-id: <script>\r\nconnection: close\r\n\r\n"
            .into(),
    )
    .await;
    let head = heads.recv().await.unwrap();
    let id = |text: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix("x-request-id: "))
            .map(|v| v.trim().to_owned())
    };
    let sent = id(&head).expect("an id reached the backend");
    assert_ne!(sent, "<script>");
    assert_eq!(id(&answer), Some(sent));
    gateway.shutdown().await;
}

#[tokio::test]
async fn error_bodies_name_no_backend() {
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = closed.local_addr().unwrap();
    drop(closed);
    let gateway = Gateway::start(strict(), vec![(NodeId::from("secret-name"), address)])
        .await
        .unwrap();
    let (status, body) = http(gateway.public, "GET", "/count?userId=1", "").await;
    assert_eq!(status, 502);
    let body_ws = assert_ws_refused(&gateway, "1", 502).await;
    for body in [body, body_ws] {
        assert!(!body.contains("secret-name"), "{body}");
        assert!(!body.contains(&address.port().to_string()), "{body}");
        assert!(!body.to_lowercase().contains("refused"), "{body}");
    }
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_message_past_the_limit_closes_with_1009() {
    let gateway = gateway_bin::demo::start(strict(), vec![], 1).await.unwrap();
    let (mut client, _) = connect(&gateway, "big").await;
    client
        .send(Message::text("x".repeat(100 * 1024)))
        .await
        .unwrap();
    let (code, reason) = next_close(&mut client).await;
    assert_eq!((code, reason.as_str()), (1009, "message too big"));
    drop(client);
    assert!(
        eventually(Duration::from_secs(2), async || live_connections(&gateway)
            .await
            == 0)
        .await
    );
    gateway.shutdown().await;
}

/// Shutdown ends within the window plus the grace, whatever the peers do: a partial head,
/// a client parked mid-message that never answers a close, a backend that never answers a
/// handshake.
#[tokio::test]
async fn shutdown_ends_in_time_whatever_the_peers_do() {
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_address = silent.local_addr().unwrap();
    // It reads each request head, reports it, and never answers.
    let (heads, mut handshakes) = tokio::sync::mpsc::unbounded_channel();
    let held = tokio::spawn(async move {
        let mut sockets = tokio::task::JoinSet::new();
        while let Ok((mut tcp, _)) = silent.accept().await {
            let heads = heads.clone();
            sockets.spawn(async move {
                let mut head = Vec::new();
                while !head.ends_with(b"\r\n\r\n") {
                    match tcp.read_u8().await {
                        Ok(byte) => head.push(byte),
                        Err(_) => return,
                    }
                }
                let _ = heads.send(String::from_utf8_lossy(&head).into_owned());
                std::future::pending::<()>().await;
                drop(tcp);
            });
        }
    });
    let mut config = strict();
    config.upstream.handshake_timeout = Duration::from_secs(30);
    let gateway = gateway_bin::demo::start(config, vec![], 1).await.unwrap();
    let bound = gateway.shutdown_bound();
    add_member(&gateway, "silent", silent_address).await;

    let mut partial = TcpStream::connect(gateway.public).await.unwrap();
    partial
        .write_all(b"GET /count?userId=1 HTTP/1.1\r\n")
        .await
        .unwrap();
    let ring = ring_of(&["backend-a", "silent"]);
    let user_on = |owner: &str| {
        (0..)
            .map(|n| format!("user-{n}"))
            .find(|u| ring.route(u.as_bytes()).unwrap().id().as_str() == owner)
            .unwrap()
    };
    let mut parked = raw_websocket(&gateway, &user_on("backend-a")).await;
    parked.write_all(&masked(0x01, b"hel")).await.unwrap();
    let stuck_user = user_on("silent");
    let url = format!("ws://{}/connect/{stuck_user}", gateway.public);
    let stuck = tokio::spawn(tokio_tungstenite::connect_async(url));
    // Shutdown starts once the gateway's handshake to the silent backend is in flight.
    let in_flight = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let head = handshakes.recv().await.expect("the silent backend listens");
            if head.contains(&format!("/connect/{stuck_user} ")) {
                break;
            }
        }
    });
    in_flight
        .await
        .expect("the gateway sends the handshake to the silent backend");

    let started = Instant::now();
    tokio::time::timeout(bound + Duration::from_secs(1), gateway.shutdown())
        .await
        .expect("shutdown ended within its bound");
    assert!(started.elapsed() <= bound + Duration::from_millis(500));
    stuck.abort();
    held.abort();
}

/// Starts a reference `wsbackend` process (no drain delay) for each id and waits until
/// every one listens; the processes die with their handles.
async fn backend_processes(
    ids: &[&str],
) -> (Vec<(NodeId, SocketAddr)>, Vec<tokio::process::Child>) {
    let mut backends = Vec::new();
    let mut processes = Vec::new();
    for &id in ids {
        let address = free_address().await;
        let child = tokio::process::Command::new(wscluster_testkit::wsbackend_binary())
            .args([
                "--id",
                id,
                "--listen",
                &address.to_string(),
                "--drain-ms",
                "0",
            ])
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        processes.push(child);
        backends.push((NodeId::from(id), address));
    }
    for (_, address) in &backends {
        assert!(
            eventually(Duration::from_secs(10), async || TcpStream::connect(
                address
            )
            .await
            .is_ok())
            .await
        );
    }
    (backends, processes)
}

/// A gateway whose TCP health checks run every 100 ms and act on a single result, so a
/// killed backend leaves the ring at once; returned once all `backends` are members.
async fn gateway_with_fast_health_checks(backends: Vec<(NodeId, SocketAddr)>) -> Gateway {
    let expected = backends.len();
    let mut config = strict();
    config.discovery.health = Some(
        discovery::HealthCheck::tcp()
            .interval(Duration::from_millis(100))
            .timeout(Duration::from_millis(100))
            .thresholds(1, 1),
    );
    let gateway = Gateway::start(config, backends).await.unwrap();
    assert!(
        eventually(Duration::from_secs(5), async || {
            ring_json(&gateway).await["members"]
                .as_array()
                .is_some_and(|m| m.len() == expected)
        })
        .await
    );
    gateway
}

/// A backend killed with SIGKILL under echo load: its clients are told (1012), reconnect and
/// end on their new owners within 2 s; no other client sees anything but its echoes.
#[tokio::test]
async fn a_killed_backend_sends_its_clients_to_their_new_owners() {
    let (backends, mut processes) = backend_processes(&["proc-a", "proc-b", "proc-c"]).await;
    let gateway = gateway_with_fast_health_checks(backends).await;

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut clients = Vec::new();
    for n in 0..30 {
        let user = format!("kill-{n}");
        let (client, server) = connect(&gateway, &user).await;
        clients.push((server, spawn_echo_traffic(user, client, stopped.clone())));
    }
    // The kill comes once every client's traffic flows.
    first_echoes(clients.iter_mut().map(|(_, client)| client)).await;
    processes[1].start_kill().unwrap();
    let killed_at = Instant::now();
    processes[1].wait().await.unwrap();

    let survivors = ring_of(&["proc-a", "proc-c"]);
    let (affected, others): (Vec<_>, Vec<_>) = clients
        .into_iter()
        .partition(|(server, _)| server == "proc-b");
    assert!(!affected.is_empty() && !others.is_empty());
    for (_, client) in affected {
        let traffic = client.traffic.await.unwrap();
        assert_eq!(
            traffic.closed,
            Some(1012),
            "{} was told to reconnect",
            traffic.user
        );
        // Reconnect, as a client of the demo page does.
        let owner = survivors
            .route(traffic.user.as_bytes())
            .unwrap()
            .id()
            .as_str()
            .to_owned();
        let (_client, now_on) = connect(&gateway, &traffic.user).await;
        assert_eq!(now_on, owner, "{} is on its new owner", traffic.user);
        assert!(
            killed_at.elapsed() < Duration::from_secs(2),
            "{:?}",
            killed_at.elapsed()
        );
    }
    stop.send_replace(true);
    for (_, client) in others {
        client.traffic.await.unwrap().assert_untouched();
    }
    gateway.shutdown().await;
}

async fn free_address() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// A backend that answers every connection only after `delay`: it waits, then pipes to a
/// reference backend named `id`.
async fn slow_backend(id: &str, delay: Duration) -> SocketAddr {
    let real = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let real_address = real.local_addr().unwrap();
    tokio::spawn(reference_backend::ReferenceBackend::new(id).serve(real, std::future::pending()));
    let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = front.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = front.accept().await {
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let mut real = TcpStream::connect(real_address).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut client, &mut real).await;
            });
        }
    });
    address
}

/// A new owner that takes its time to answer the handshake: the users it now owns keep
/// their echo traffic through the old backend meanwhile, then move without a close or a
/// lost message.
#[tokio::test]
async fn a_slow_new_owner_takes_its_users_without_a_loss() {
    let mut config = strict();
    config.upstream.handshake_timeout = Duration::from_secs(5);
    let gateway = gateway_bin::demo::start(config, vec![], 1).await.unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut clients = Vec::new();
    for n in 0..20 {
        let user = format!("slow-{n}");
        let (client, _) = connect(&gateway, &user).await;
        clients.push(spawn_echo_traffic(user, client, stopped.clone()));
    }
    let delay = Duration::from_millis(600);
    let slow = slow_backend("slow", delay).await;
    let added = Instant::now();
    add_member(&gateway, "slow", slow).await;
    let ring = ring_of(&["backend-a", "slow"]);
    let affected = owned_by(&ring, (0..20).map(|n| format!("slow-{n}")), "slow") as u64;
    assert!(
        eventually(Duration::from_secs(5), async || {
            ring_json(&gateway).await["migrations"]["moved"].as_u64() == Some(affected)
        })
        .await
    );
    // Stop once every client's traffic is echoed by its owner (the moved ones: by their
    // new owner), so each ends there.
    for client in &mut clients {
        let owner = ring.route(client.user.as_bytes()).unwrap().id().to_string();
        client.echo_from(&owner).await;
    }
    stop.send_replace(true);
    let clients = clients.into_iter().map(|c| c.traffic).collect();
    let moved = assert_on_owners(clients, &ring, "slow", "backend-a").await;
    assert!(moved > 0);
    assert!(added.elapsed() >= delay);
    gateway.shutdown().await;
}
