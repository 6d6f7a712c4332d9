//! `/metrics` on the admin listener, against what the gateway did: handshakes by result,
//! live WebSockets per backend (following live moves), the ring, migrations, connections
//! off their owner (0 at rest), member states, and no label that names a user.

mod common;

use std::{collections::HashMap, time::Duration};

use common::*;
use gateway_bin::gateway::Gateway;

async fn scrape(gateway: &Gateway) -> String {
    let request = "GET /metrics HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n";
    let mut tcp = tokio::net::TcpStream::connect(gateway.admin).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tcp.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text"),
        "{head}"
    );
    assert!(body.ends_with("# EOF\n"), "{body}");
    body.to_owned()
}

/// The value of the sample `name{labels}` (exactly as encoded), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// `name{backend="…"} value` samples as a map by backend.
fn per_backend(text: &str, name: &str) -> HashMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let (series, value) = line.split_once(' ')?;
            let labels = series.strip_prefix(name)?;
            let backend = labels.strip_prefix("{backend=\"")?.strip_suffix("\"}")?;
            Some((backend.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// The live connections per member as the admin API's ring counts them, members with none
/// left out (as `wscluster_websockets_active` leaves them out).
fn connections_per_member(ring: &serde_json::Value) -> HashMap<String, u64> {
    ring["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["id"].as_str().unwrap().to_owned(),
                m["connections"].as_u64().unwrap(),
            )
        })
        .filter(|(_, n)| *n > 0)
        .collect()
}

/// Adds a backend through the admin API and returns the id it was given.
async fn add_backend(gateway: &Gateway) -> String {
    let (status, body) = http(gateway.admin, "POST", "/admin/backends", "").await;
    assert_eq!(status, 201, "{body}");
    let added: serde_json::Value = serde_json::from_str(&body).unwrap();
    added["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn metrics_follow_handshakes_moves_and_the_ring() {
    let gateway = demo(3).await;
    let mut clients = Vec::new();
    for n in 0..12 {
        clients.push(connect(&gateway, &format!("metric-user-{n}")).await);
    }
    // A malformed handshake: no Sec-WebSocket-Key.
    let bad = "GET /connect/x HTTP/1.1\r\nhost: a\r\nconnection: upgrade\r\n\
               upgrade: websocket\r\nsec-websocket-version: 13\r\n\r\n";
    assert_eq!(http_raw(gateway.public, bad).await.0, 400);

    let text = scrape(&gateway).await;
    let upgraded = r#"wscluster_websocket_handshakes_total{result="upgraded"}"#;
    assert_eq!(sample(&text, upgraded), Some(12.0), "{text}");
    let bad_request = r#"wscluster_websocket_handshakes_total{result="bad_request"}"#;
    assert_eq!(sample(&text, bad_request), Some(1.0));
    assert_eq!(
        sample(&text, "wscluster_websocket_handshake_seconds_count"),
        Some(13.0)
    );
    assert_eq!(sample(&text, "wscluster_ring_members"), Some(3.0));
    let ring = ring_json(&gateway).await;
    assert_eq!(
        sample(&text, "wscluster_ring_version"),
        ring["version"].as_f64()
    );
    let counted = connections_per_member(&ring);
    assert_eq!(per_backend(&text, "wscluster_websockets_active"), counted);
    assert_eq!(sample(&text, "wscluster_connections_off_owner"), Some(0.0));
    for backend in ["backend-a", "backend-b", "backend-c"] {
        let up = format!("wscluster_backend_up{{backend=\"{backend}\",state=\"up\"}}");
        assert_eq!(sample(&text, &up), Some(1.0), "{backend}");
    }
    assert!(!text.contains("metric-user"), "no label names a user");

    // A fourth backend: its users move live, and the metrics follow them.
    let added = add_backend(&gateway).await;
    let settled = eventually(Duration::from_secs(5), async || {
        let text = scrape(&gateway).await;
        sample(&text, "wscluster_ring_members") == Some(4.0)
            && sample(&text, "wscluster_connections_off_owner") == Some(0.0)
            && sample(&text, "wscluster_migrations_in_flight") == Some(0.0)
    });
    assert!(settled.await, "{}", scrape(&gateway).await);
    let text = scrape(&gateway).await;
    let ring = ring_json(&gateway).await;
    let moved = r#"wscluster_migrations_total{policy="live",outcome="moved",reason=""}"#;
    assert_eq!(
        sample(&text, moved),
        ring["migrations"]["moved"].as_f64(),
        "{text}"
    );
    let on_added = per_backend(&text, "wscluster_websockets_active")
        .get(&added)
        .copied()
        .unwrap_or(0);
    let expected = owned_by(
        &ring_of(&["backend-a", "backend-b", "backend-c", &added]),
        (0..12).map(|n| format!("metric-user-{n}")),
        &added,
    ) as u64;
    assert_eq!(on_added, expected, "{text}");
    // Every user that moved opened an upstream WebSocket to the added backend.
    let arrived = format!("wscluster_migration_upstreams_opened_total{{backend=\"{added}\"}}");
    assert_eq!(sample(&text, &arrived), Some(expected as f64), "{text}");
    assert!(!text.contains("metric-user"), "no label names a user");
    drop(clients);
    gateway.shutdown().await;
}

/// `listen.metrics`: a listener that serves `/metrics` alone, without the admin token.
#[tokio::test]
async fn a_metrics_listener_needs_no_token_and_serves_nothing_else() {
    let mut config = any_port();
    config.admin.token =
        Some(gateway_bin::admin_access::AdminToken::new("metrics-test-token-0123").unwrap());
    config.listen.metrics = Some("127.0.0.1:0".parse().unwrap());
    let gateway = gateway_bin::demo::start(config, vec![], 2).await.unwrap();
    let listener = gateway.metrics.expect("a metrics listener");
    let (status, text) = http(listener, "GET", "/metrics", "").await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("wscluster_ring_members 2"), "{text}");
    assert_eq!(http(listener, "GET", "/admin/ring", "").await.0, 404);
    // The admin listener still wants the token for the same route.
    assert_eq!(http(gateway.admin, "GET", "/metrics", "").await.0, 401);
    gateway.shutdown().await;
}

#[tokio::test]
async fn discovery_errors_are_counted_per_source() {
    // A Redis source on a port nothing listens on: every attempt fails to connect.
    let mut config = any_port();
    config.discovery.redis = Some(gateway_bin::config::RedisSource {
        url: format!("redis://127.0.0.1:{}/0", wscluster_testkit::free_port()),
        service: "metrics-test".into(),
        resync: Duration::from_millis(50),
    });
    let gateway = gateway_bin::demo::start(config, vec![], 1).await.unwrap();
    let series = r#"wscluster_discovery_errors_total{source="redis",kind="connection"}"#;
    let counted = eventually(Duration::from_secs(5), async || {
        sample(&scrape(&gateway).await, series).is_some_and(|errors| errors >= 2.0)
    });
    assert!(counted.await, "{}", scrape(&gateway).await);
    // The gateway still routes over the members it has.
    let (_client, server) = connect(&gateway, "7").await;
    assert_eq!(server, "backend-a");
}
