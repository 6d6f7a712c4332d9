//! An existing axum app, with its own routes (`/health`, a small JSON API), that adds
//! keyed WebSocket routing with live migration for `/connect/{userId}`, served by
//! `axum::serve`.
//!
//! ```sh
//! cargo run -p gateway-bin --bin wsbackend -- --id backend-a --listen 127.0.0.1:7100 &
//! cargo run -p gateway-bin --bin wsbackend -- --id backend-b --listen 127.0.0.1:7101 &
//! cargo run -p gateway-bin --example axum_app -- 127.0.0.1:7000 backend-a=127.0.0.1:7100 backend-b=127.0.0.1:7101
//! ```
//!
//! `gateway-bin/tests/axum_app.rs` runs it with real sockets.

use std::{convert::Infallible, net::SocketAddr};

use axum::{
    extract::Path,
    routing::{any_service, get},
    Json, Router,
};
use futures_util::{Stream, StreamExt};
use serde_json::{json, Value};
use tower::{discover::Change, ServiceBuilder};
use tower_hashring::{HashRingLayer, HttpKey, NodeId};
use tower_ws_migrate::{MigrateLayer, MigrationPolicy, MigrationStats};
use tower_ws_proxy::{HashRingProxy, LiveConnections, RelayConfig, Upstream, UpstreamConfig};

/// The app's own JSON API: nothing to do with WebSockets.
async fn room(Path(name): Path<String>) -> Json<Value> {
    Json(json!({ "room": name, "topic": "anything goes" }))
}

/// The app: its own routes, plus `/connect/{userId}` routed by user id to the backend that
/// owns it, moved live when the backends change. `members` is any `Discover` stream.
pub fn app<D>(members: D) -> (Router, MigrationStats)
where
    D: Stream<Item = Result<Change<NodeId, Upstream>, Infallible>> + Send + Unpin + 'static,
{
    let key = HttpKey::new()
        .path("/connect/{userId}")
        .expect("a valid pattern");
    let (ring, driver) = HashRingLayer::new(key).shared(members);
    tokio::spawn(driver);
    // One registry of live WebSockets: the proxy registers them, the migrator moves them.
    let connections = LiveConnections::with_limit(10_000);
    let proxy = HashRingProxy::new(ring.clone(), connections.clone(), RelayConfig::default());
    let (migrate, migrator) = MigrateLayer::from_ring(&ring, &connections);
    let migrate = migrate.policy(MigrationPolicy::live());
    let stats = migrator.stats();
    tokio::spawn(migrator.run());

    let app = Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/api/rooms/{name}", get(room))
        .route(
            "/connect/{userId}",
            any_service(ServiceBuilder::new().layer(migrate).service(proxy)),
        );
    (app, stats)
}

#[allow(dead_code)] // The test includes this file for `app` alone.
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let listen: SocketAddr = args.next().unwrap_or("127.0.0.1:7000".into()).parse()?;
    let mut backends = Vec::new();
    for arg in args {
        let (id, address) = arg.split_once('=').ok_or("backends are id=host:port")?;
        let upstream = Upstream::new(address, UpstreamConfig::default());
        backends.push(Ok(Change::Insert(NodeId::from(id), upstream)));
    }
    // A static list; a real app would pass a Redis, Docker or RabbitMQ source from
    // `discovery`, which keeps the stream open for later changes.
    let members = futures_util::stream::iter(backends).chain(futures_util::stream::pending());
    let (app, _stats) = app(Box::pin(members));
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("listening on http://{listen} (WebSockets on ws://{listen}/connect/{{userId}})");
    axum::serve(listener, app).await?;
    Ok(())
}
