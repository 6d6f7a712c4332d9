//! The gateway on Redis membership with health checks, end to end: backends that register
//! join the ring, one that fails its health checks leaves it while still registered, one
//! that crashes leaves when its registration lapses.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use discovery::{HealthCheck, RedisRegistry};
use gateway_bin::{
    config::{GatewayConfig, Listen, RedisSource, Shutdown},
    gateway::Gateway,
};
use reference_backend::ReferenceBackend;
use tokio::sync::Notify;
use wscluster_testkit::{wait_for_members, RedisServer};

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

    let health = HealthCheck::http("/health")
        .interval(Duration::from_millis(50))
        .thresholds(1, 2);
    let gateway = redis_gateway(&redis, vec![], Some(health)).await;
    wait_for_members(gateway.admin, &["backend-1", "backend-2", "backend-3"]).await;

    // backend-2 stops answering but stays registered: its health checks take it out.
    backends[1].notify_waiters();
    wait_for_members(gateway.admin, &["backend-1", "backend-3"]).await;

    // backend-3 crashes: its registration lapses and it leaves too.
    drop(heartbeats.pop());
    wait_for_members(gateway.admin, &["backend-1"]).await;
    gateway.shutdown().await;
}

/// A gateway following Redis (service `chat`), with `listed` as its static members and
/// `health` checks, if any.
async fn redis_gateway(
    redis: &RedisServer,
    listed: Vec<(tower_hashring::NodeId, SocketAddr)>,
    health: Option<HealthCheck>,
) -> Gateway {
    let mut config = GatewayConfig {
        listen: Listen::ephemeral(),
        shutdown: Shutdown {
            window: Duration::from_millis(100),
            ..Shutdown::default()
        },
        ..GatewayConfig::default()
    };
    config.discovery.redis = Some(RedisSource {
        url: redis.url(),
        service: "chat".into(),
        resync: Duration::from_millis(50),
    });
    config.discovery.health = health;
    Gateway::start(config, listed).await.unwrap()
}

async fn ring(gateway: &Gateway) -> serde_json::Value {
    let (status, body) = wscluster_testkit::http(gateway.admin, "GET", "/admin/ring", "").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

#[tokio::test]
async fn gateways_on_one_redis_agree_and_one_cannot_diverge_through_its_admin_api() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let registry = RedisRegistry::new(&redis.url(), "chat").unwrap();
    let mut heartbeats = Vec::new();
    for id in ["backend-1", "backend-2", "backend-3"] {
        let (address, _stop) = start_backend(id).await;
        heartbeats.push(
            registry
                .register(discovery::Backend::new(id, address))
                .await
                .unwrap(),
        );
    }
    let members = ["backend-1", "backend-2", "backend-3"];
    let first = redis_gateway(&redis, vec![], None).await;
    let second = redis_gateway(&redis, vec![], None).await;
    wait_for_members(first.admin, &members).await;
    wait_for_members(second.admin, &members).await;
    let digest = ring(&first).await["digest"].clone();
    assert_eq!(
        ring(&second).await["digest"],
        digest,
        "one source, one digest"
    );
    assert_eq!(digest.as_str().map(str::len), Some(16));

    // Removing or re-weighing a Redis member through one gateway would split them: 409.
    for (method, body) in [("DELETE", ""), ("PATCH", r#"{"weight":0}"#)] {
        let (status, answer) =
            wscluster_testkit::http(first.admin, method, "/admin/backends/backend-2", body).await;
        assert_eq!(status, 409, "{method}: {answer}");
        assert!(answer.contains("comes from redis"), "{answer}");
    }
    assert_eq!(ring(&first).await["digest"], digest, "nothing changed");
    let metrics = wscluster_testkit::http(first.admin, "GET", "/metrics", "")
        .await
        .1;
    assert!(
        metrics.contains(&format!("wscluster_ring_digest{{digest={digest}}} 1")),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_discovered_entry_never_replaces_nor_removes_a_static_member_of_its_id() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let (listed, _stop) = start_backend("backend-1").await;
    let gateway = redis_gateway(&redis, vec![("backend-1".into(), listed)], None).await;
    wait_for_members(gateway.admin, &["backend-1"]).await;
    // Redis announces another backend under the static member's id, and one more.
    let registry = RedisRegistry::new(&redis.url(), "chat").unwrap();
    let (impostor, _stop_impostor) = start_backend("impostor").await;
    let claim = registry
        .register(discovery::Backend::new("backend-1", impostor))
        .await
        .unwrap();
    let (other, _stop_other) = start_backend("backend-2").await;
    let other_heartbeat = registry
        .register(discovery::Backend::new("backend-2", other))
        .await
        .unwrap();
    wait_for_members(gateway.admin, &["backend-1", "backend-2"]).await;
    let address = |ring: &serde_json::Value| ring["members"][0]["address"].clone();
    assert_eq!(
        address(&ring(&gateway).await),
        listed.to_string(),
        "the static member stays"
    );
    let metrics = wscluster_testkit::http(gateway.admin, "GET", "/metrics", "")
        .await
        .1;
    assert!(
        metrics.contains(r#"wscluster_member_id_collisions_total{origin="redis"}"#),
        "{metrics}"
    );
    // Its registration going away does not take the static member with it. (backend-2 leaves
    // after it, through the same source: once it is gone, the claim's removal was seen.)
    claim.deregister().await.unwrap();
    other_heartbeat.deregister().await.unwrap();
    wait_for_members(gateway.admin, &["backend-1"]).await;
    assert_eq!(address(&ring(&gateway).await), listed.to_string());
}
