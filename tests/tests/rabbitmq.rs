//! Ring changes and migrations published to a real RabbitMQ, across a broker restart.
//! (One test: the restart would disturb any other test using the broker at the same time.)

use std::{collections::BTreeSet, time::Duration};

use futures_util::StreamExt;
use gateway_bin::{
    config::{EventsConfig, GatewayConfig, Listen, Shutdown},
    gateway::Gateway,
};
use lapin::{
    options::{BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    types::FieldTable,
    Connection, ConnectionProperties, Consumer, ExchangeKind,
};
use serde_json::Value;
use tokio::net::TcpStream;
use wscluster_testkit::{add_backend, ring_of, RabbitMq};

/// A consumer of every event published to `exchange` from now on.
async fn subscribe(url: &str, exchange: &str) -> (Connection, Consumer) {
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Fanout,
            durable,
            FieldTable::default(),
        )
        .await
        .unwrap();
    let exclusive = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..QueueDeclareOptions::default()
    };
    let queue = channel
        .queue_declare("".into(), exclusive, FieldTable::default())
        .await
        .unwrap();
    channel
        .queue_bind(
            queue.name().clone(),
            exchange.into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let no_ack = BasicConsumeOptions {
        no_ack: true,
        ..BasicConsumeOptions::default()
    };
    let consumer = channel
        .basic_consume(
            queue.name().clone(),
            "test".into(),
            no_ack,
            FieldTable::default(),
        )
        .await
        .unwrap();
    (connection, consumer)
}

/// The next event that `wanted` accepts, within 10 s.
async fn next_event(consumer: &mut Consumer, wanted: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let delivery = tokio::time::timeout_at(deadline, consumer.next())
            .await
            .expect("an event within 10 s")
            .unwrap()
            .unwrap();
        let event: Value = serde_json::from_slice(&delivery.data).unwrap();
        if wanted(&event) {
            return event;
        }
    }
}

async fn connect_user(
    gateway: &Gateway,
    user: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>> {
    let url = format!("ws://{}/connect/{user}", gateway.public);
    let (mut client, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    client.next().await.unwrap().unwrap(); // its hello
    client
}

/// A gateway that publishes its events to `exchange` on `broker`, and moves users without
/// pacing.
fn publishing_config(broker: &RabbitMq, exchange: &str) -> GatewayConfig {
    let mut config = GatewayConfig {
        listen: Listen::ephemeral(),
        shutdown: Shutdown {
            window: Duration::from_millis(100),
            ..Shutdown::default()
        },
        ..GatewayConfig::default()
    };
    config.events = Some(EventsConfig {
        url: broker.url(),
        exchange: exchange.to_owned(),
    });
    config.migration.pacing = tower_ws_migrate::Pacing::unlimited();
    config
}

#[tokio::test]
async fn ring_changes_and_migrations_reach_a_consumer_across_a_broker_restart() {
    let Some(broker) = RabbitMq::running().await else {
        return;
    };
    let exchange = format!("wscluster.events.test-{}", std::process::id());
    let (_connection, mut consumer) = subscribe(&broker.url(), &exchange).await;

    let config = publishing_config(&broker, &exchange);
    let gateway = gateway_bin::demo::start(config, vec![], 3).await.unwrap();
    let users: Vec<String> = (0..40).map(|n| format!("rabbit-{n}")).collect();
    let mut clients = Vec::new();
    for user in &users {
        clients.push(connect_user(&gateway, user).await);
    }

    let added = add_backend(gateway.admin).await;
    let ring = next_event(&mut consumer, |e| {
        e["type"] == "ring" && e["members"].as_array().is_some_and(|m| m.len() == 4)
    })
    .await;
    assert!(ring["version"].as_u64().unwrap() > ring["previous_version"].as_u64().unwrap());
    let moved = ring["moved"].as_array().unwrap();
    assert!(!moved.is_empty());
    assert!(
        moved.iter().all(|r| r["to"] == added.as_str()),
        "only the new backend takes keys"
    );

    // One migration event per user whose owner changed, with the right endpoints.
    let (before, after) = (
        ring_of(&["backend-a", "backend-b", "backend-c"]),
        ring_of(&["backend-a", "backend-b", "backend-c", &added]),
    );
    let expected: BTreeSet<&str> = users
        .iter()
        .filter(|u| {
            before.route(u.as_bytes()).unwrap().id() != after.route(u.as_bytes()).unwrap().id()
        })
        .map(String::as_str)
        .collect();
    assert!(!expected.is_empty());
    let mut seen = BTreeSet::new();
    while seen.len() < expected.len() {
        let event = next_event(&mut consumer, |e| e["type"] == "migration").await;
        let key = event["key"].as_str().unwrap().to_owned();
        assert!(
            expected.contains(key.as_str()),
            "{key} did not need to move"
        );
        assert_eq!(event["to"], added.as_str());
        assert_eq!(
            event["from"].as_str().unwrap(),
            before.route(key.as_bytes()).unwrap().id().as_str()
        );
        assert_eq!(event["ring_version"], ring["version"]);
        assert_eq!(event["policy"], "live");
        assert_eq!(event["outcome"]["result"], "moved");
        assert!(seen.insert(key), "one event per migration");
    }

    // The broker restarts: the gateway reconnects by itself and keeps publishing.
    broker.restart().await;
    let (_connection, mut consumer) = subscribe(&broker.url(), &exchange).await;
    add_backend(gateway.admin).await;
    let ring = next_event(&mut consumer, |e| {
        e["type"] == "ring" && e["members"].as_array().is_some_and(|m| m.len() == 5)
    })
    .await;
    assert!(!ring["moved"].as_array().unwrap().is_empty());
    drop(clients);
    gateway.shutdown().await;
}
