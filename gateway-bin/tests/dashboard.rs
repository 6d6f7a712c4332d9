//! What the dashboard stands on, with real sockets: its page (no data, a strict policy),
//! the live events, re-weighing, the push through the balancer, the traffic counts per
//! backend and the unhealthy state. The page itself runs in a real browser in `browser.rs`.

mod common;

use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
};
use tokio_tungstenite::tungstenite::Message;
use wscluster_testkit::add_backend;

/// The raw answer to a GET: status line and headers (lower-cased) and body.
async fn get_raw(gateway: &gateway_bin::gateway::Gateway, path: &str) -> (String, String) {
    let request = format!("GET {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n");
    let mut tcp = TcpStream::connect(gateway.admin).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut tcp, &mut answer)
        .await
        .unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    (head.to_lowercase(), body.to_owned())
}

#[tokio::test]
async fn the_page_is_static_and_served_under_a_strict_policy() {
    let gateway = demo(1).await;
    let (head, page) = get_raw(&gateway, "/").await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-type: text/html"), "{head}");
    assert!(head.contains("content-security-policy: default-src 'none'; script-src 'self'"));
    assert!(head.contains("x-frame-options: deny"), "{head}");
    assert!(!head.contains("access-control-allow-origin"), "{head}");
    assert!(page.contains("<script src=\"/dashboard.js\""));
    // Nothing outside the gateway: no CDN, no web font.
    assert!(
        !page.contains("https://") && !page.contains("//cdn"),
        "{page}"
    );
    let (head, script) = get_raw(&gateway, "/dashboard.js").await;
    assert!(head.contains("content-type: text/javascript"), "{head}");
    assert!(
        !script.contains("innerHTML"),
        "values from the network go in as text"
    );
    assert!(get_raw(&gateway, "/dashboard.css")
        .await
        .0
        .contains("text/css"));
}

/// Reads server-sent events from `/admin/events` until `wanted` accepts a state.
async fn next_state(lines: &mut tokio::io::Lines<BufReader<TcpStream>>) -> Value {
    loop {
        let line = tokio::time::timeout(Duration::from_secs(5), lines.next_line())
            .await
            .expect("an event within 5 s")
            .unwrap()
            .expect("the stream goes on");
        if let Some(data) = line.strip_prefix("data: ") {
            return serde_json::from_str(data).unwrap();
        }
    }
}

/// The latest sample in the first state of a fresh `/admin/events` once one lists
/// `members` members (the first may be taken before the ring has them); 15 s at most.
async fn sampled_history(admin: std::net::SocketAddr, members: usize) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let mut tcp = TcpStream::connect(admin).await.unwrap();
        tcp.write_all(b"GET /admin/events HTTP/1.1\r\nhost: test\r\n\r\n")
            .await
            .unwrap();
        let first = next_state(&mut BufReader::new(tcp).lines()).await;
        let history = first["history"]
            .as_array()
            .expect("the first state's history");
        if let Some(latest) = history.last() {
            if latest["backends"].as_object().map_or(0, |b| b.len()) == members {
                return latest.clone();
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no sample with {members} members in 15 s: {history:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn the_events_carry_the_overview_and_the_ring_on_every_change() {
    let gateway = demo(3).await;
    let mut tcp = TcpStream::connect(gateway.admin).await.unwrap();
    tcp.write_all(b"GET /admin/events HTTP/1.1\r\nhost: test\r\n\r\n")
        .await
        .unwrap();
    let mut lines = BufReader::new(tcp).lines();
    let first = next_state(&mut lines).await;
    assert_eq!(first["members"].as_array().unwrap().len(), 3);
    let arcs = &first["arcs"];
    assert_eq!(arcs["ids"].as_array().unwrap().len(), 3);
    assert_eq!(arcs["starts"][0], 0.0);
    let shares: f64 = first["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["share"].as_f64().unwrap())
        .sum();
    assert!((shares - 1.0).abs() < 1e-6, "{shares}");
    // The first state brings the charts' samples so far, each with every member's
    // connections and messages; the gateway samples every 5 s from its start.
    let sampled = sampled_history(gateway.admin, 3).await;
    assert_eq!(sampled["backends"]["backend-a"]["c"], 0, "{sampled}");
    assert_eq!(sampled["version"], first["version"], "{sampled}");
    // Unchanged ring: the next tick leaves the arcs and the history out.
    let tick = next_state(&mut lines).await;
    assert_eq!(tick["version"], first["version"]);
    assert!(tick.get("arcs").is_none());
    assert!(tick.get("history").is_none());
    add_backend(gateway.admin).await;
    let changed = loop {
        let state = next_state(&mut lines).await;
        if state["version"] != first["version"] {
            break state;
        }
    };
    assert_eq!(changed["members"].as_array().unwrap().len(), 4);
    assert_eq!(changed["arcs"]["ids"].as_array().unwrap().len(), 4);
}

#[tokio::test]
async fn weight_zero_drains_a_backend_and_its_users_move_live_with_their_traffic_counted() {
    let gateway = demo(3).await;
    let (mut client, server) = connect(&gateway, "42").await;
    for n in 0..5 {
        client.send(Message::text(format!("m{n}"))).await.unwrap();
        assert_eq!(next_json(&mut client).await["type"], "echo");
    }
    let before = ring_json(&gateway).await;
    let member = |ring: &Value, id: &str| {
        ring["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == id)
            .cloned()
            .unwrap()
    };
    let traffic = member(&before, &server)["traffic"].clone();
    assert_eq!(traffic["to_backend"]["messages"], 5, "{traffic}");
    assert_eq!(
        traffic["to_client"]["messages"], 6,
        "the hello and 5 echoes: {traffic}"
    );

    let path = format!("/admin/backends/{server}");
    let (status, body) = http(gateway.admin, "PATCH", &path, r#"{"weight":0}"#).await;
    assert_eq!(status, 200, "{body}");
    // The user moves live: a new `connected` from its new owner on the same socket.
    let moved = next_json(&mut client).await;
    assert_eq!(moved["type"], "connected");
    assert_eq!(moved["migratedFrom"], server.as_str());
    let ring = ring_json(&gateway).await;
    let drained = member(&ring, &server);
    assert_eq!(drained["state"], "draining");
    assert_eq!(drained["weight"], 0);
    assert_eq!(drained["share"], 0.0);
    assert_eq!(drained["connections"], 0);
    // What went to the drained backend stays counted there.
    assert_eq!(drained["traffic"]["to_backend"]["messages"], 5);
    client.send(Message::text("after")).await.unwrap();
    assert_eq!(next_json(&mut client).await["type"], "echo");
    let new_owner = moved["server"].as_str().unwrap();
    let ring = ring_json(&gateway).await;
    assert_eq!(
        member(&ring, &server)["traffic"]["to_backend"]["messages"],
        5
    );
    assert_eq!(
        member(&ring, new_owner)["traffic"]["to_backend"]["messages"],
        1
    );
    let metrics = http(gateway.admin, "GET", "/metrics", "").await.1;
    let line = format!(
        "wscluster_websocket_messages_total{{backend=\"{server}\",direction=\"to_backend\"}} 5"
    );
    assert!(metrics.contains(&line), "{metrics}");
}

#[tokio::test]
async fn a_bad_weight_is_refused_with_the_reason() {
    let gateway = demo(1).await;
    let patch = |path: &'static str, body: &'static str| http(gateway.admin, "PATCH", path, body);
    let (status, body) = patch("/admin/backends/backend-a", r#"{"weight":5000}"#).await;
    assert_eq!(status, 400);
    assert!(body.contains("cap of 1000"), "{body}");
    let (status, body) = patch("/admin/backends/backend-a", r#"{"weight":-1}"#).await;
    assert_eq!(status, 400);
    assert!(body.contains("\"weight\""), "{body}");
    let (status, body) = patch("/admin/backends/nobody", r#"{"weight":2}"#).await;
    assert_eq!(status, 404);
    assert!(body.contains("nobody"), "{body}");
    let (status, _) = patch("/admin/backends/backend-a", r#"{"weight":3}"#).await;
    assert_eq!(status, 200);
    assert_eq!(ring_json(&gateway).await["members"][0]["weight"], 3);
}

#[tokio::test]
async fn a_push_from_the_admin_api_reaches_the_users_socket() {
    let gateway = demo(3).await;
    let (mut client, server) = connect(&gateway, "alice").await;
    let body = r#"{"userId":"alice","message":"hello <b>alice</b>"}"#;
    let (status, answer) = http(gateway.admin, "POST", "/admin/send", body).await;
    assert_eq!(status, 200, "{answer}");
    let pushed = next_json(&mut client).await;
    assert_eq!(pushed["type"], "message");
    assert_eq!(pushed["content"], "hello <b>alice</b>");
    assert_eq!(pushed["server"], server.as_str());
    // A user with no connection: the owner's own 404 comes back.
    let body = r#"{"userId":"nobody-here","message":"x"}"#;
    let (status, _) = http(gateway.admin, "POST", "/admin/send", body).await;
    assert_eq!(status, 404);
    let (status, answer) = http(gateway.admin, "POST", "/admin/send", r#"{"to":"x"}"#).await;
    assert_eq!(status, 400);
    assert!(answer.contains("userId"), "{answer}");
}

#[tokio::test]
async fn a_push_with_no_backend_on_the_ring_is_a_503() {
    let gateway = demo(0).await;
    let body = r#"{"userId":"alice","message":"hi"}"#;
    let (status, answer) = http(gateway.admin, "POST", "/admin/send", body).await;
    assert_eq!(status, 503, "{answer}");
    assert!(answer.contains("no backend took the push"), "{answer}");
}

#[tokio::test]
async fn a_member_failing_its_health_checks_shows_as_unhealthy() {
    let mut config = any_port();
    config.discovery.health = Some(
        discovery::HealthCheck::tcp()
            .interval(Duration::from_millis(50))
            .timeout(Duration::from_millis(200)),
    );
    let dead = format!("127.0.0.1:{}", wscluster_testkit::free_port());
    let backends = vec![("dead".into(), dead.parse().unwrap())];
    let gateway = gateway_bin::demo::start(config, backends, 1).await.unwrap();
    let unhealthy = wscluster_testkit::eventually(Duration::from_secs(5), async || {
        let ring = ring_json(&gateway).await;
        ring["others"].as_array().unwrap().iter().any(|m| {
            m["id"] == "dead" && m["state"] == "unhealthy" && m["address"] == dead.as_str()
        })
    });
    assert!(unhealthy.await, "{}", ring_json(&gateway).await);
    let metrics = http(gateway.admin, "GET", "/metrics", "").await.1;
    assert!(
        metrics.contains("wscluster_backend_up{backend=\"dead\",state=\"unhealthy\"} 1"),
        "{metrics}"
    );
}

/// `POST /admin/route` answers where the ring sends each key, in order, with the digest
/// `/admin/ring` shows; the user's own connection is on that owner. Too many keys is a 413.
#[tokio::test]
async fn the_route_of_a_batch_of_keys_is_where_their_users_land() {
    let gateway = demo(3).await;
    let users: Vec<String> = (0..40).map(|u| format!("user-{u}")).collect();
    let body = serde_json::json!({ "keys": users }).to_string();
    let (status, answer) = http(gateway.admin, "POST", "/admin/route", &body).await;
    assert_eq!(status, 200, "{answer}");
    let answer: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["digest"], ring_json(&gateway).await["digest"]);
    let owners = answer["owners"].as_array().unwrap();
    assert_eq!(owners.len(), users.len());
    let distinct: std::collections::BTreeSet<_> = owners.iter().map(|o| o.to_string()).collect();
    assert_eq!(distinct.len(), 3, "40 users spread over the 3 backends");
    for (user, owner) in users.iter().zip(owners).take(6) {
        let (_client, server) = connect(&gateway, user).await;
        assert_eq!(owner.as_str(), Some(server.as_str()), "{user}");
    }
    let too_many: Vec<String> = (0..100_001).map(|u| u.to_string()).collect();
    let body = serde_json::json!({ "keys": too_many }).to_string();
    let (status, answer) = http(gateway.admin, "POST", "/admin/route", &body).await;
    assert_eq!(status, 413, "{answer}");
    assert!(answer.contains("at most 100000"), "{answer}");
    let (status, answer) = http(gateway.admin, "POST", "/admin/route", r#"{"key":"1"}"#).await;
    assert_eq!(status, 400);
    assert!(answer.contains("keys"), "{answer}");
    // The demo's scaler stops named backends only.
    let (status, answer) = http(gateway.admin, "DELETE", "/admin/backends", "").await;
    assert_eq!(status, 409);
    assert!(answer.contains("DELETE /admin/backends/{id}"), "{answer}");
}
