//! The gateway on Redis membership with health checks, end to end: backends that register
//! join the ring, one that fails its health checks leaves it while still registered, one
//! that crashes leaves when its registration lapses.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use discovery::{HealthCheck, RedisRegistry};
use gateway_bin::{
    backend::ReferenceBackend,
    gateway::{Gateway, GatewayConfig, RedisSource},
};
use tokio::sync::Notify;
use wscluster_tests::{wait_for_members, RedisServer};

/// A reference backend serving until `stop`.
async fn start_backend(id: &str) -> (SocketAddr, Arc<Notify>) {
    let listener = ReferenceBackend::listen(([127, 0, 0, 1], 0).into()).unwrap();
    let address = listener.local_addr().unwrap();
    let stop = Arc::new(Notify::new());
    let stopped = stop.clone();
    tokio::spawn(
        ReferenceBackend::new(id).serve(listener, async move { stopped.notified().await }),
    );
    (address, stop)
}

#[tokio::test]
async fn the_gateway_follows_redis_and_health_checks() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let registry = RedisRegistry::new(&redis.url(), "chat")
        .unwrap()
        .ttl(Duration::from_millis(600));
    let mut backends = Vec::new();
    let mut heartbeats = Vec::new();
    for id in ["backend-1", "backend-2", "backend-3"] {
        let (address, stop) = start_backend(id).await;
        let me = discovery::Backend::new(id, address);
        heartbeats.push(registry.register(me).await.unwrap());
        backends.push(stop);
    }

    let mut config = GatewayConfig {
        public: "127.0.0.1:0".parse().unwrap(),
        admin: "127.0.0.1:0".parse().unwrap(),
        shutdown_window: Duration::from_millis(100),
        ..GatewayConfig::default()
    };
    config.discovery.redis = Some(RedisSource {
        url: redis.url(),
        service: "chat".into(),
        resync: Duration::from_millis(100),
    });
    config.discovery.health = Some(
        HealthCheck::http("/health")
            .interval(Duration::from_millis(50))
            .thresholds(1, 2),
    );
    let gateway = Gateway::start(config, vec![]).await.unwrap();
    wait_for_members(gateway.admin, &["backend-1", "backend-2", "backend-3"]).await;

    // backend-2 stops answering but stays registered: its health checks take it out.
    backends[1].notify_waiters();
    wait_for_members(gateway.admin, &["backend-1", "backend-3"]).await;

    // backend-3 crashes: its registration lapses and it leaves too.
    drop(heartbeats.pop());
    wait_for_members(gateway.admin, &["backend-1"]).await;
    gateway.shutdown().await;
}
