//! The admin API's protection with real sockets: the bearer token, no cross-site writes, no
//! permissive CORS, no backend address that points the gateway at itself or outside the
//! allowed networks, and no start on a public admin address without a token.

mod common;

use std::net::SocketAddr;

use common::*;
use gateway_bin::{
    admin_access::{AdminAccess, AdminToken},
    gateway::Gateway,
};

const TOKEN: &str = "test-admin-token-0123456789";

async fn with_token() -> Gateway {
    let mut config = any_port();
    config.admin.token = Some(AdminToken::new(TOKEN).unwrap());
    gateway_bin::demo::start(config, vec![], 1).await.unwrap()
}

/// A raw admin request with the given extra header lines.
async fn admin(
    gateway: &Gateway,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> (u16, String) {
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: {}\r\n{headers}content-length: {}\r\nconnection: close\r\n\r\n{body}",
        gateway.admin,
        body.len()
    );
    http_raw(gateway.admin, &request).await
}

fn bearer() -> String {
    format!("authorization: Bearer {TOKEN}\r\n")
}

#[tokio::test]
async fn every_admin_route_needs_the_token() {
    let gateway = with_token().await;
    for (method, path) in [
        ("GET", "/admin/ring"),
        ("GET", "/metrics"),
        ("POST", "/admin/backends"),
        ("DELETE", "/admin/backends/backend-a"),
        ("PATCH", "/admin/backends/backend-a"),
        ("GET", "/admin/events"),
        ("POST", "/admin/send"),
    ] {
        let json = "content-type: application/json\r\n";
        let (status, body) = admin(&gateway, method, path, json, "").await;
        assert_eq!(status, 401, "{method} {path}: {body}");
        assert!(body.contains("Authorization: Bearer"), "{body}");
        let wrong = format!("{json}authorization: Bearer not-the-token-at-all\r\n");
        assert_eq!(admin(&gateway, method, path, &wrong, "").await.0, 401);
        // A cookie alone is never a credential.
        let cookie = format!("{json}cookie: token={TOKEN}\r\n");
        assert_eq!(admin(&gateway, method, path, &cookie, "").await.0, 401);
    }
    let (status, body) = admin(&gateway, "GET", "/admin/ring", &bearer(), "").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"backend-a\""), "{body}");
    // The ring is untouched by all of the refused writes.
    let (_, ring) = admin(&gateway, "GET", "/admin/ring", &bearer(), "").await;
    assert!(
        ring.contains("\"backend-a\"") && !ring.contains("backend-1"),
        "{ring}"
    );
    gateway.shutdown().await;
}

/// A cross-site `text/plain` POST (what any page the operator opens can send) must not add
/// a backend pointing at the gateway itself: a write must be JSON, and a foreign origin is
/// refused even with JSON and the token.
#[tokio::test]
async fn cross_site_writes_are_refused() {
    let gateway = demo(1).await; // on loopback without a token: only these checks stand
    let body = r#"{"id":"evil","address":"127.0.0.1:9"}"#;
    let text = "content-type: text/plain\r\norigin: http://evil.example\r\n";
    let (status, reason) = admin(&gateway, "POST", "/admin/backends", text, body).await;
    assert_eq!(status, 403, "{reason}");
    let form = "content-type: application/x-www-form-urlencoded\r\n";
    let (status, reason) = admin(&gateway, "POST", "/admin/backends", form, body).await;
    assert_eq!(status, 415, "{reason}");
    assert!(reason.contains("application/json"), "{reason}");
    let foreign = "content-type: application/json\r\norigin: http://evil.example\r\n";
    let (status, reason) = admin(&gateway, "POST", "/admin/backends", foreign, body).await;
    assert_eq!(status, 403, "{reason}");
    assert!(reason.contains("evil.example"), "{reason}");
    let fetch = "content-type: application/json\r\nsec-fetch-site: cross-site\r\n";
    let (status, _) = admin(&gateway, "DELETE", "/admin/backends/backend-a", fetch, "").await;
    assert_eq!(status, 403);
    let ring = ring_json(&gateway).await;
    assert_eq!(ring["members"].as_array().unwrap().len(), 1, "{ring}");
    // The same origin may write (the dashboard will).
    let own = format!(
        "content-type: application/json\r\norigin: http://{}\r\n",
        gateway.admin
    );
    let (status, reason) = admin(&gateway, "POST", "/admin/backends", &own, "{}").await;
    assert_eq!(status, 201, "{reason}");
    gateway.shutdown().await;
}

#[tokio::test]
async fn no_permissive_cors_headers() {
    let gateway = with_token().await;
    let preflight = "origin: http://evil.example\r\naccess-control-request-method: POST\r\n";
    for (method, headers) in [("OPTIONS", preflight.to_owned()), ("GET", bearer())] {
        let request = format!(
            "{method} /admin/ring HTTP/1.1\r\nhost: a\r\n{headers}content-length: 0\r\nconnection: close\r\n\r\n"
        );
        let mut tcp = tokio::net::TcpStream::connect(gateway.admin).await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        tcp.read_to_string(&mut response).await.unwrap();
        let head = response
            .split("\r\n\r\n")
            .next()
            .unwrap()
            .to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 "), "{head}");
        assert!(!head.contains("access-control-"), "{method}: {head}");
    }
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_backend_address_may_not_be_the_gateway_or_outside_the_allowed_networks() {
    let mut config = any_port();
    config.admin = AdminAccess {
        token: None,
        backend_networks: vec!["127.0.0.0/8".parse().unwrap()],
        ..AdminAccess::default()
    };
    let gateway = gateway_bin::demo::start(config, vec![], 1).await.unwrap();
    let add = |address: SocketAddr| {
        format!(
            "{{\"id\":\"x-{}\",\"address\":\"{address}\"}}",
            address.port()
        )
    };
    for own in [gateway.public, gateway.admin] {
        let (status, reason) = http(gateway.admin, "POST", "/admin/backends", &add(own)).await;
        assert_eq!(status, 403, "{reason}");
        assert!(reason.contains("own listener"), "{reason}");
    }
    let outside: SocketAddr = "10.1.2.3:7100".parse().unwrap();
    let (status, reason) = http(gateway.admin, "POST", "/admin/backends", &add(outside)).await;
    assert_eq!(status, 403, "{reason}");
    assert!(reason.contains("127.0.0.0/8"), "{reason}");
    let fine: SocketAddr = "127.0.0.1:7999".parse().unwrap();
    let (status, reason) = http(gateway.admin, "POST", "/admin/backends", &add(fine)).await;
    assert_eq!(status, 201, "{reason}");
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_public_admin_listener_needs_a_token() {
    let mut config = any_port();
    config.listen.admin = "0.0.0.0:0".parse().unwrap();
    let error = Gateway::start(config.clone(), vec![]).await.unwrap_err();
    assert!(error.to_string().contains("admin.token"), "{error}");
    config.admin.token = Some(AdminToken::new(TOKEN).unwrap());
    let gateway = Gateway::start(config, vec![]).await.unwrap();
    gateway.shutdown().await;
}

#[tokio::test]
async fn the_cloud_metadata_service_is_never_a_backend() {
    let gateway = gateway_bin::demo::start(any_port(), vec![], 1)
        .await
        .unwrap();
    let body = r#"{"id":"metadata","address":"169.254.169.254:80"}"#;
    let (status, reason) = http(gateway.admin, "POST", "/admin/backends", body).await;
    assert_eq!(status, 403, "{reason}");
    assert!(reason.contains("metadata"), "{reason}");
    let ring = ring_json(&gateway).await;
    assert!(!ring.to_string().contains("169.254"), "{ring}");
    gateway.shutdown().await;
}

#[tokio::test]
async fn an_admin_listener_on_tls_without_certificates_is_not_started() {
    let mut config = any_port();
    config.admin.tls = true;
    let Err(error) = gateway_bin::demo::start(config, vec![], 1).await else {
        panic!("started with admin.tls and no certificate");
    };
    assert!(error.to_string().contains("admin.tls"), "{error}");
    assert!(error.to_string().contains("[tls]"), "{error}");
}
