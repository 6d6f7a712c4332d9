//! An existing axum app with its own routes that adds keyed WebSocket routing, with live
//! migration, for `/connect/{userId}`; its backends are a static list merged with those
//! registered in Redis (`wsbackend --redis`), and it is served on the fast path.
//! (`gateway-bin/tests/axum_app.rs` runs `app` with real sockets.)
//!
//! ```sh
//! cargo run -p reference-backend --bin wsbackend -- --id backend-a --listen 127.0.0.1:7100 &
//! cargo run -p wscluster-tools --example axum_app -- 127.0.0.1:7000 redis://127.0.0.1:6379 backend-a=127.0.0.1:7100
//! ```

use std::{convert::Infallible, net::SocketAddr};

use axum::{
    extract::Path,
    routing::{any_service, get},
    Json, Router,
};
use discovery::{Backend, Membership, Origin, RedisRegistry, StaticDiscovery};
use futures_util::Stream;
use serde_json::{json, Value};
use tower::{discover::Change, ServiceBuilder};
use tower_hashring::{HashRingLayer, HttpKey, NodeId};
use tower_ws_migrate::{MigrateLayer, MigrationPolicy, MigrationStats};
use tower_ws_proxy::{
    server, HashRingProxy, LiveConnections, RelayConfig, Upstream, UpstreamConfig,
};

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
    let stats = migrator.stats();
    tokio::spawn(migrator.run());
    let websockets = ServiceBuilder::new().layer(migrate.policy(MigrationPolicy::live()));
    let room = |Path(name): Path<String>| async move {
        Json::<Value>(json!({ "room": name, "topic": "anything goes" }))
    };
    let app = Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/api/rooms/{name}", get(room))
        .route("/connect/{userId}", any_service(websockets.service(proxy)));
    (app, stats)
}

#[allow(dead_code)] // The test includes this file for `app` alone.
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let listen: SocketAddr = args.next().unwrap_or("127.0.0.1:7000".into()).parse()?;
    let redis = args.next().unwrap_or("redis://127.0.0.1:6379".into());
    let listed = args.map(|arg| {
        let (id, address) = arg.split_once('=').expect("backends are id=host:port");
        Backend::new(id, address.parse().expect("an address is host:port"))
    });
    // Two sources, one member set: where both claim an id, the static list holds it.
    let (members, changes) = Membership::new();
    members.follow(Origin::Static, StaticDiscovery::new(listed));
    let registry = RedisRegistry::new(&redis, "wscluster")?;
    members.follow(Origin::Redis, registry.discover());
    let config = UpstreamConfig::default();
    let upstreams =
        changes.map_backends(move |b| Upstream::new(b.address.to_string(), config.clone()));
    let (app, _stats) = app(upstreams);
    // The fast path (raw sockets for the relay); `axum::serve(listener, app)` works too.
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("listening on http://{listen} (WebSockets on ws://{listen}/connect/{{userId}})");
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    server::serve(listener, app, server::HttpLimits::default(), stopped).await;
    Ok(())
}
