//! Per-client limits through the whole gateway, on real sockets: `[client_limits]` in the
//! config file, 429 with `Retry-After`, the slot freed when a WebSocket ends, clients named
//! by a trusted proxy's `X-Forwarded-For` or a balancer's PROXY protocol header, and the
//! refusals counted without a per-client label.

mod common;

use std::time::Duration;

use common::*;
use gateway_bin::{config::GatewayConfig, gateway::Gateway};
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};

async fn gateway(client_limits: &str) -> Gateway {
    let file = GatewayConfig::parse(&format!("[client_limits]\n{client_limits}")).unwrap();
    let config = GatewayConfig {
        client_limits: file.client_limits,
        ..any_port()
    };
    gateway_bin::demo::start(config, vec![], 1).await.unwrap()
}

/// Opens a WebSocket for `user`, as if forwarded for `forwarded_for`; the refusal's status
/// and `Retry-After` if refused.
async fn open(
    gateway: &Gateway,
    user: &str,
    forwarded_for: Option<&str>,
) -> Result<Client, (u16, Option<String>)> {
    let mut request = format!("ws://{}/connect/{user}", gateway.public)
        .into_client_request()
        .unwrap();
    // `a | b`: two lines, as a client's claim and a balancer's own line.
    for line in forwarded_for
        .into_iter()
        .flat_map(|lines| lines.split(" | "))
    {
        request
            .headers_mut()
            .append("x-forwarded-for", line.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((client, _)) => Ok(client),
        Err(tungstenite::Error::Http(response)) => Err((
            response.status().as_u16(),
            response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned()),
        )),
        Err(other) => panic!("{other}"),
    }
}

async fn refusals(gateway: &Gateway, limit: &str) -> String {
    let (status, text) = http(gateway.admin, "GET", "/metrics", "").await;
    assert_eq!(status, 200);
    let series = format!("wscluster_client_limit_refusals_total{{limit=\"{limit}\"}} ");
    let line = text
        .lines()
        .find(|l| l.starts_with(&series))
        .expect(&series);
    line[series.len()..].to_owned()
}

#[tokio::test]
async fn a_client_past_its_websockets_gets_429_until_one_ends() {
    let gateway = gateway("websockets = 2").await;
    let first = open(&gateway, "a", None).await.unwrap();
    let _second = open(&gateway, "b", None).await.unwrap();
    let refused = open(&gateway, "c", None).await.err();
    assert_eq!(refused, Some((429, Some("1".into()))));
    assert_eq!(refusals(&gateway, "websockets").await, "1");
    // The first ends: once its relay is gone, its place is free again.
    drop(first);
    let reopened = eventually(Duration::from_secs(5), async || {
        open(&gateway, "c", None).await.is_ok()
    })
    .await;
    assert!(reopened, "the slot of a closed WebSocket was never freed");
    gateway.shutdown().await;
}

#[tokio::test]
async fn handshakes_past_the_rate_get_429_with_retry_after() {
    let gateway = gateway("handshakes_per_second = 1\nburst = 2").await;
    let _a = open(&gateway, "a", None).await.unwrap();
    let _b = open(&gateway, "b", None).await.unwrap();
    assert_eq!(
        open(&gateway, "c", None).await.err(),
        Some((429, Some("1".into())))
    );
    assert_eq!(refusals(&gateway, "rate").await, "1");
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_trusted_proxy_names_its_clients_and_an_untrusted_one_does_not() {
    let trusted = gateway("websockets = 1\ntrusted_proxies = [\"127.0.0.1/32\"]").await;
    let _one = open(&trusted, "a", Some("198.51.100.1")).await.unwrap();
    let _two = open(&trusted, "b", Some("198.51.100.2")).await.unwrap();
    assert_eq!(
        open(&trusted, "c", Some("198.51.100.1"))
            .await
            .err()
            .map(|e| e.0),
        Some(429)
    );
    // A client's own line before the balancer's does not make it someone else.
    let claimed = open(&trusted, "d", Some("203.0.113.50 | 198.51.100.1")).await;
    assert_eq!(claimed.err().map(|e| e.0), Some(429));
    trusted.shutdown().await;
    // Without trust, the header changes nothing: the peer is the client.
    let untrusted = gateway("websockets = 1").await;
    let _one = open(&untrusted, "a", Some("198.51.100.1")).await.unwrap();
    let refused = open(&untrusted, "b", Some("198.51.100.2")).await.err();
    assert_eq!(refused.map(|e| e.0), Some(429));
    untrusted.shutdown().await;
}

/// A PROXY protocol v2 header for a TCP over IPv4 connection from `client`.
fn proxy_v2(client: std::net::SocketAddrV4) -> Vec<u8> {
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    header.extend_from_slice(&[0x21, 0x11, 0, 12]);
    header.extend_from_slice(&client.ip().octets());
    header.extend_from_slice(&[127, 0, 0, 1]);
    header.extend_from_slice(&client.port().to_be_bytes());
    header.extend_from_slice(&7000u16.to_be_bytes());
    header
}

/// A WebSocket through a connection that starts with `preface` (a PROXY header).
async fn open_after(gateway: &Gateway, user: &str, preface: &[u8]) -> Result<Client, u16> {
    use tokio::io::AsyncWriteExt;
    let mut tcp = tokio::net::TcpStream::connect(gateway.public)
        .await
        .unwrap();
    tcp.write_all(preface).await.unwrap();
    let url = format!("ws://{}/connect/{user}", gateway.public);
    let stream = tokio_tungstenite::MaybeTlsStream::Plain(tcp);
    match tokio_tungstenite::client_async(url, stream).await {
        Ok((client, _)) => Ok(client),
        Err(tungstenite::Error::Http(response)) => Err(response.status().as_u16()),
        Err(other) => panic!("{other}"),
    }
}

#[tokio::test]
async fn a_balancer_names_its_clients_with_the_proxy_protocol() {
    let mut config = any_port();
    config.http.proxy_protocol_from = vec!["127.0.0.1/32".parse().unwrap()];
    config.client_limits = GatewayConfig::parse("[client_limits]\nwebsockets = 1")
        .unwrap()
        .client_limits;
    let gateway = gateway_bin::demo::start(config, vec![], 1).await.unwrap();
    let one = proxy_v2("198.51.100.1:40000".parse().unwrap());
    let two = proxy_v2("198.51.100.2:40000".parse().unwrap());
    let _first = open_after(&gateway, "a", &one).await.unwrap();
    let _second = open_after(&gateway, "b", &two).await.unwrap();
    // The same client again, through another balancer connection: its limit applies.
    assert_eq!(open_after(&gateway, "c", &one).await.err(), Some(429));
    // The admin listener, on the balancer's address too, expects no header.
    assert_eq!(http(gateway.admin, "GET", "/admin/ring", "").await.0, 200);
    let v1 = b"PROXY TCP4 198.51.100.3 127.0.0.1 40000 7000\r\n";
    let _third = open_after(&gateway, "d", v1).await.unwrap();
    // A trusted peer that sends no header is closed, not served as a client.
    let mut bare = tokio::net::TcpStream::connect(gateway.public)
        .await
        .unwrap();
    use tokio::io::AsyncWriteExt;
    bare.write_all(b"GET /connect/e HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    let answer = until_closed(&mut bare, Duration::from_secs(5)).await;
    assert_eq!(answer, Some(Vec::new()), "closed without an answer");
    gateway.shutdown().await;
}
