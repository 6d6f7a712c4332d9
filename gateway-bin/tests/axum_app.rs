//! `examples/axum_app.rs` with real sockets: the proxy and live migration served by
//! `axum::serve` beside the app's own routes. The server wraps the socket, so WebSockets
//! take the relay's generic path over hyper's `Upgraded`.

mod common;

#[path = "../../tools/examples/axum_app.rs"]
#[allow(unreachable_pub)]
mod axum_app;

use std::{convert::Infallible, time::Duration};

use axum::{routing::get, Router};
use common::{
    assert_on_owners, eventually, first_echoes, next_json, owned_by, ring_of, spawn_echo_traffic,
    Client,
};
use futures_util::stream;
use reference_backend::ReferenceBackend;
use tokio::{net::TcpListener, sync::mpsc};
use tower::discover::Change;
use tower_hashring::NodeId;
use tower_ws_migrate::MigrationStats;
use tower_ws_proxy::{tcp_peer, Upstream, UpstreamConfig};

type Changes = mpsc::UnboundedSender<Result<Change<NodeId, Upstream>, Infallible>>;

async fn reference_backend(id: &str, changes: &Changes) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(ReferenceBackend::new(id).serve(listener, std::future::pending()));
    let upstream = Upstream::new(address.to_string(), UpstreamConfig::default());
    changes
        .send(Ok(Change::Insert(NodeId::from(id), upstream)))
        .unwrap();
}

/// The example app under `axum::serve`; its address, the member changes it follows and
/// its migration counters.
async fn app_under_axum_serve() -> (std::net::SocketAddr, Changes, MigrationStats) {
    let (changes, mut receiver) = mpsc::unbounded_channel();
    let members = stream::poll_fn(move |cx| receiver.poll_recv(cx));
    let (app, stats) = axum_app::app(Box::pin(members));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (address, changes, stats)
}

async fn connect(address: std::net::SocketAddr, user: &str) -> (Client, String) {
    let url = format!("ws://{address}/connect/{user}");
    let (mut client, response) = tokio_tungstenite::connect_async(url).await.unwrap();
    assert_eq!(response.status(), 101);
    let hello = next_json(&mut client).await;
    (client, hello["server"].as_str().unwrap().to_owned())
}

/// `axum::serve` wraps the socket: the raw-socket fast path cannot be taken there, which is
/// why the generic path exists.
#[tokio::test]
async fn axum_serve_hands_out_a_wrapped_connection() {
    let (seen, mut was_tcp) = mpsc::unbounded_channel();
    let app = Router::new().route(
        "/probe",
        get(move |mut request: axum::extract::Request| {
            let seen = seen.clone();
            async move {
                let key = request.headers()["sec-websocket-key"].as_bytes().to_vec();
                let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(&key);
                let upgrade = hyper::upgrade::on(&mut request);
                tokio::spawn(async move {
                    let upgraded = upgrade.await.unwrap();
                    seen.send(tcp_peer(upgraded).is_ok()).unwrap();
                });
                axum::http::Response::builder()
                    .status(101)
                    .header("connection", "upgrade")
                    .header("upgrade", "websocket")
                    .header("sec-websocket-accept", accept)
                    .body(axum::body::Body::empty())
                    .unwrap()
            }
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let _client = tokio_tungstenite::connect_async(format!("ws://{address}/probe"))
        .await
        .unwrap();
    assert_eq!(was_tcp.recv().await, Some(false));
}

/// Under `axum::serve`: the app's own routes answer, users land on their owners and echo,
/// and when a backend joins, the users it now owns move live with no close and no lost
/// message.
#[tokio::test]
async fn the_proxy_routes_relays_and_moves_live_under_axum_serve() {
    let (address, changes, stats) = app_under_axum_serve().await;
    reference_backend("backend-a", &changes).await;
    let health = plain_get(address, "/health").await;
    assert!(health.ends_with("ok"), "{health}");
    let room = plain_get(address, "/api/rooms/lobby").await;
    assert!(
        room.ends_with(r#"{"room":"lobby","topic":"anything goes"}"#),
        "{room}"
    );

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut clients = Vec::new();
    for n in 0..20 {
        let user = format!("axum-{n}");
        let (client, server) = connect(address, &user).await;
        assert_eq!(server, "backend-a");
        clients.push(spawn_echo_traffic(user, client, stopped.clone()));
    }
    // The backend joins under traffic: once every client has had an echo.
    first_echoes(&mut clients).await;
    reference_backend("backend-b", &changes).await;
    let ring = ring_of(&["backend-a", "backend-b"]);
    let affected = owned_by(&ring, (0..20).map(|n| format!("axum-{n}")), "backend-b") as u64;
    assert!(eventually(Duration::from_secs(5), async || stats.moved() == affected).await);
    // Stop once every client's traffic is echoed by its owner (the moved ones: by their
    // new owner), so each ends there.
    for client in &mut clients {
        let owner = ring.route(client.user.as_bytes()).unwrap().id().to_string();
        client.echo_from(&owner).await;
    }
    stop.send_replace(true);
    let clients = clients.into_iter().map(|c| c.traffic).collect();
    let moved = assert_on_owners(clients, &ring, "backend-b", "backend-a").await;
    assert!(moved > 0, "some users moved");
}

/// A plain GET; the whole response as text.
async fn plain_get(address: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(address).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tcp.read_to_string(&mut response).await.unwrap();
    response
}
