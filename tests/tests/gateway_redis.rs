//! The gateway on Redis membership with health checks, end to end: backends that register
//! join the ring, one that fails its health checks leaves it while still registered, one
//! that crashes leaves when its registration lapses.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use discovery::{HealthCheck, RedisRegistry};
use gateway_bin::{
    backend::Backend,
    gateway::{Gateway, GatewayConfig, RedisSource},
};
use serde_json::Value;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::Notify,
};
use wscluster_tests::RedisServer;

async fn admin_ring(admin: SocketAddr) -> Value {
    let mut tcp = TcpStream::connect(admin).await.unwrap();
    tcp.write_all(b"GET /admin/ring HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    tcp.read_to_string(&mut response).await.unwrap();
    serde_json::from_str(response.split_once("\r\n\r\n").unwrap().1).unwrap()
}

async fn members(admin: SocketAddr) -> Vec<String> {
    let ring = admin_ring(admin).await;
    ring["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect()
}

async fn wait_for_members(admin: SocketAddr, expected: &[&str]) {
    for _ in 0..200 {
        if members(admin).await == expected {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("members {:?}, expected {expected:?}", members(admin).await);
}

/// A reference backend serving until `stop`.
async fn start_backend(id: &str) -> (SocketAddr, Arc<Notify>) {
    let listener = Backend::listen(([127, 0, 0, 1], 0).into()).unwrap();
    let address = listener.local_addr().unwrap();
    let stop = Arc::new(Notify::new());
    let stopped = stop.clone();
    tokio::spawn(Backend::new(id).serve(listener, async move { stopped.notified().await }));
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
    let gateway = Gateway::start(config, vec![], 0).await.unwrap();
    wait_for_members(gateway.admin, &["backend-1", "backend-2", "backend-3"]).await;

    // backend-2 stops answering but stays registered: its health checks take it out.
    backends[1].notify_waiters();
    wait_for_members(gateway.admin, &["backend-1", "backend-3"]).await;

    // backend-3 crashes: its registration lapses and it leaves too.
    drop(heartbeats.pop());
    wait_for_members(gateway.admin, &["backend-1"]).await;
    gateway.shutdown().await;
}
