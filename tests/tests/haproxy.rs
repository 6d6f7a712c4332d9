//! Behind HAProxy in TCP mode with `send-proxy-v2`, the gateway sees each client's own
//! address: per-client limits apply to the clients, not to the balancer.

use std::{net::SocketAddr, time::Duration};

use gateway_bin::{
    config::{GatewayConfig, Listen, Shutdown},
    gateway::Gateway,
};
use tokio_tungstenite::tungstenite;
use wscluster_testkit::HaproxyTcp;

/// A WebSocket through the balancer from the loopback address `from`; the refusal's status
/// if refused.
async fn open_from(balancer: SocketAddr, from: [u8; 4], user: &str) -> Result<impl Sized, u16> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind((from, 0).into()).unwrap();
    let tcp = socket.connect(balancer).await.unwrap();
    let url = format!("ws://{balancer}/connect/{user}");
    match tokio_tungstenite::client_async(url, tcp).await {
        Ok((client, _)) => Ok(client),
        Err(tungstenite::Error::Http(response)) => Err(response.status().as_u16()),
        Err(other) => panic!("{other}"),
    }
}

#[tokio::test]
async fn clients_behind_haproxy_are_told_apart_by_the_proxy_protocol() {
    let file = GatewayConfig::parse(
        "[http]\nproxy_protocol_from = [\"127.0.0.1/32\"]\n[client_limits]\nwebsockets = 1",
    )
    .unwrap();
    let config = GatewayConfig {
        listen: Listen::ephemeral(),
        shutdown: Shutdown {
            window: Duration::from_millis(100),
            ..Shutdown::default()
        },
        http: file.http,
        client_limits: file.client_limits,
        ..GatewayConfig::default()
    };
    let gateway: Gateway = gateway_bin::demo::start(config, vec![], 1).await.unwrap();
    let Some(haproxy) = HaproxyTcp::start(gateway.public).await else {
        return;
    };
    let balancer = haproxy.address();
    // HAProxy connects from 127.0.0.1 every time; the header names 127.0.0.2 and 127.0.0.3.
    let _two = open_from(balancer, [127, 0, 0, 2], "a").await.unwrap();
    let _three = open_from(balancer, [127, 0, 0, 3], "b").await.unwrap();
    let again = open_from(balancer, [127, 0, 0, 2], "c").await.err();
    assert_eq!(
        again,
        Some(429),
        "the second WebSocket of 127.0.0.2 is its own"
    );
    // A connection straight from a trusted address without a header is closed unserved.
    let direct = tokio_tungstenite::connect_async(format!("ws://{}/connect/d", gateway.public));
    assert!(direct.await.is_err());
    gateway.shutdown().await;
}
