//! `[cluster]` with real gateways on loopback: a gateway asks its replicas what they route by,
//! marks the one whose ring differs, counts the seconds they disagreed, and names why a
//! replica could not be asked (down, another admin token).

mod common;

use std::{net::SocketAddr, time::Duration};

use common::*;
use gateway_bin::{
    admin_access::AdminToken,
    config::{ClusterConfig, GatewayConfig},
    gateway::Gateway,
};
use serde_json::Value;
use tower_hashring::NodeId;

const TOKEN: &str = "test-admin-token-0123456789";

/// A gateway over the same two (absent) backends as every other here, asking `peers` every
/// 100 ms when given.
async fn replica(token: &str, peers: Option<Vec<SocketAddr>>) -> Gateway {
    let mut config: GatewayConfig = any_port();
    config.admin.token = Some(AdminToken::new(token).unwrap());
    config.cluster = peers.map(|peers| ClusterConfig {
        peers,
        interval: Duration::from_millis(100),
        ..ClusterConfig::default()
    });
    let backends = ["backend-a", "backend-b"]
        .iter()
        .zip(["127.0.0.1:9", "127.0.0.1:10"])
        .map(|(id, address)| (NodeId::from(*id), address.parse().unwrap()))
        .collect();
    Gateway::start(config, backends).await.unwrap()
}

async fn admin_get(gateway: &Gateway, path: &str) -> String {
    let request = format!(
        "GET {path} HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer {TOKEN}\r\nconnection: close\r\n\r\n",
        gateway.admin
    );
    let (status, body) = http_raw(gateway.admin, &request).await;
    assert_eq!(status, 200, "{path}: {body}");
    body
}

/// Adds member `id` at `address` through the admin API.
async fn add(gateway: &Gateway, id: &str, address: &str) {
    let body = format!("{{\"id\":\"{id}\",\"address\":\"{address}\"}}");
    let request = format!(
        "POST /admin/backends HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer {TOKEN}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        gateway.admin,
        body.len()
    );
    let (status, answer) = http_raw(gateway.admin, &request).await;
    assert_eq!(status, 201, "{answer}");
}

async fn cluster(gateway: &Gateway) -> Value {
    serde_json::from_str(&admin_get(gateway, "/admin/cluster").await).unwrap()
}

/// Waits (up to 10 s) until the cluster view satisfies `check`; the view then.
async fn cluster_until(gateway: &Gateway, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let mut view = cluster(gateway).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check(&view) {
        assert!(tokio::time::Instant::now() < deadline, "{what}: {view:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        view = cluster(gateway).await;
    }
    view
}

/// The replica at `address` in a cluster view.
fn at(view: &Value, address: SocketAddr) -> &Value {
    let address = address.to_string();
    let replicas = view["replicas"].as_array().unwrap();
    replicas
        .iter()
        .find(|r| r["address"].as_str() == Some(address.as_str()))
        .unwrap_or_else(|| panic!("no replica at {address}: {view:#}"))
}

fn disagreement_seconds(metrics: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix("wscluster_cluster_disagreement_seconds_total "))
        .expect("the disagreement metric")
        .parse()
        .unwrap()
}

#[tokio::test]
async fn a_replica_whose_ring_differs_is_marked_and_the_seconds_counted() {
    let other = replica(TOKEN, None).await;
    let this = replica(TOKEN, Some(vec![other.admin])).await;
    let view = cluster_until(&this, "both replicas asked", |v| {
        v["replicas"].as_array().unwrap().len() == 2 && at(v, other.admin)["digest"].is_string()
    })
    .await;
    assert_eq!(view["agree"], true, "{view:#}");
    assert_eq!(at(&view, other.admin)["own"], false);
    let own = view["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["own"] == true);
    let own = own.expect("this gateway among its replicas");
    assert_ne!(own["instance"], at(&view, other.admin)["instance"]);
    assert_eq!(own["digest"], at(&view, other.admin)["digest"]);

    // One more member on the other replica only: its digest is no longer this one's.
    add(&other, "backend-c", "127.0.0.1:11").await;
    let view = cluster_until(&this, "the difference seen", |v| v["agree"] == false).await;
    assert_eq!(at(&view, other.admin)["agrees"], false, "{view:#}");
    assert_eq!(at(&view, other.admin)["members"], 3);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let metrics = admin_get(&this, "/metrics").await;
    let disagreed = disagreement_seconds(&metrics);
    assert!(disagreed >= 0.3, "{disagreed} s disagreed");
    assert!(metrics.contains("wscluster_cluster_replicas{state=\"disagreeing\"} 1"));

    // The same member here: they agree again, and the count stops.
    add(&this, "backend-c", "127.0.0.1:11").await;
    let view = cluster_until(&this, "agreement back", |v| v["agree"] == true).await;
    assert_eq!(at(&view, other.admin)["agrees"], true);
    let settled = disagreement_seconds(&admin_get(&this, "/metrics").await);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        disagreement_seconds(&admin_get(&this, "/metrics").await),
        settled
    );
    this.shutdown().await;
    other.shutdown().await;
}

#[tokio::test]
async fn a_replica_that_cannot_be_asked_says_why_and_is_no_disagreement() {
    let stranger = replica("another-admin-token-987654321", None).await;
    let gone = replica(TOKEN, None).await;
    let gone_admin = gone.admin;
    gone.shutdown().await;
    let this = replica(TOKEN, Some(vec![stranger.admin, gone_admin])).await;
    let view = cluster_until(&this, "both errors", |v| {
        v["replicas"].as_array().unwrap().len() == 3
            && at(v, stranger.admin)["error"].is_string()
            && at(v, gone_admin)["error"].is_string()
    })
    .await;
    let refused = at(&view, stranger.admin)["error"].as_str().unwrap();
    assert!(
        refused.contains("401") && refused.contains("same admin token"),
        "{refused}"
    );
    assert!(at(&view, gone_admin)["error"]
        .as_str()
        .unwrap()
        .contains("connect"));
    assert_eq!(at(&view, gone_admin)["agrees"], Value::Null);
    assert_eq!(
        view["agree"], true,
        "unreachable is not disagreeing: {view:#}"
    );
    this.shutdown().await;
    stranger.shutdown().await;
}

#[tokio::test]
async fn without_cluster_a_gateway_is_its_own_only_replica() {
    let alone = replica(TOKEN, None).await;
    let view = cluster(&alone).await;
    assert_eq!(view["configured"], false);
    let replicas = view["replicas"].as_array().unwrap();
    assert_eq!(replicas.len(), 1);
    assert_eq!(replicas[0]["own"], true);
    assert_eq!(replicas[0]["members"], 2);
    alone.shutdown().await;
}
