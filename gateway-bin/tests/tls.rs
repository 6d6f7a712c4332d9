//! `[tls]` through the whole gateway: `wss://` to the demo's backends with a certificate made
//! at test time, and the certificates' reload failures on `/metrics`.

mod common;

use std::sync::Arc;

use common::*;
use futures_util::{SinkExt, StreamExt};
use gateway_bin::config::GatewayConfig;
use tokio_rustls::{
    rustls::{self, pki_types::ServerName},
    TlsConnector,
};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn the_tls_section_serves_wss_to_plain_backends() {
    let (dir, cert) = common::localhost_certificate("wscluster-gw-tls");
    let file = GatewayConfig::parse(&format!(
        "[tls]\ncert = \"{0}/cert.pem\"\nkey = \"{0}/key.pem\"\nmin_version = \"1.3\"",
        dir.display()
    ))
    .unwrap();
    let config = GatewayConfig {
        tls: file.tls,
        ..any_port()
    };
    let gateway = gateway_bin::demo::start(config, vec![], 2).await.unwrap();
    assert!(gateway.certificates().is_some());

    let client = common::client_trusting(cert.der());
    let tcp = tokio::net::TcpStream::connect(gateway.public)
        .await
        .unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let tls = TlsConnector::from(Arc::new(client))
        .connect(name, tcp)
        .await
        .unwrap();
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    let url = format!("wss://localhost:{}/connect/tls-user", gateway.public.port());
    let (mut ws, response) = tokio_tungstenite::client_async(url, tls).await.unwrap();
    assert_eq!(response.status(), 101);
    let Message::Text(hello) = ws.next().await.unwrap().unwrap() else {
        panic!("the backend's greeting is text");
    };
    let hello: serde_json::Value = serde_json::from_str(&hello).unwrap();
    assert_eq!(hello["type"], "connected");
    ws.send(Message::text("over tls")).await.unwrap();
    let echo = loop {
        if let Message::Text(text) = ws.next().await.unwrap().unwrap() {
            if text.contains("over tls") {
                break text;
            }
        }
    };
    assert!(echo.contains("over tls"), "{echo}");

    let (status, metrics) = http(gateway.admin, "GET", "/metrics", "").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("wscluster_tls_certificate_reload_failures_total 0"),
        "{metrics}"
    );
    drop(ws);
    gateway.shutdown().await;
    std::fs::remove_dir_all(&dir).ok();
}
