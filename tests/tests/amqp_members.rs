//! Membership announced through a real RabbitMQ: up, repeated up, a stale down, a clean
//! down, and a crash noticed when the TTL lapses.

use std::{collections::BTreeMap, time::Duration};

use discovery::{amqp_members, AmqpAnnouncer, Announcement, Backend};
use futures_util::StreamExt;
use lapin::{options::BasicPublishOptions, BasicProperties, Connection, ConnectionProperties};
use wscluster_testkit::{members_until, RabbitMq};

async fn send(url: &str, exchange: &str, announcement: &Announcement) {
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let payload = serde_json::to_vec(announcement).unwrap();
    channel
        .basic_publish(
            exchange.into(),
            "".into(),
            BasicPublishOptions::default(),
            &payload,
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
}

#[tokio::test]
async fn announcements_make_idempotent_members_and_crashes_lapse() {
    let Some(broker) = RabbitMq::running().await else {
        return;
    };
    let exchange = format!("wscluster.members.test-{}", std::process::id());
    let mut stream = amqp_members(&broker.url(), &exchange);
    // No wait for the follower's queue to be bound: an announcement published before it is
    // lost, but announcers repeat theirs every TTL/3, and `until` waits for them.
    let ttl = Duration::from_millis(900);
    let a = Backend::new("backend-a", "127.0.0.1:7101".parse().unwrap()).weight(2);
    let b = Backend::new("backend-b", "127.0.0.1:7102".parse().unwrap());
    let announcer_a = AmqpAnnouncer::start(&broker.url(), &exchange, a.clone(), ttl);
    let announcer_b = AmqpAnnouncer::start(&broker.url(), &exchange, b.clone(), ttl);
    let mut members = BTreeMap::new();
    members_until(&mut stream, &mut members, Duration::from_secs(5), |m| {
        m.len() == 2
    })
    .await;
    assert_eq!(members["backend-a"], a);

    // Repeated ups (every TTL/3) change nothing; a down from another instance is stale.
    let stale = Announcement::Down {
        instance: "an-old-run".into(),
        id: "backend-a".into(),
    };
    send(&broker.url(), &exchange, &stale).await;
    let quiet = tokio::time::timeout(Duration::from_millis(1200), stream.next()).await;
    assert!(
        quiet.is_err(),
        "repeats or a stale down changed the members: {quiet:?}"
    );

    // A clean leave is immediate.
    announcer_b.leave().await;
    members_until(&mut stream, &mut members, Duration::from_millis(800), |m| {
        !m.contains_key("backend-b")
    })
    .await;

    // A crash: the announcer stops without a down; gone once its TTL lapses.
    let crashed_at = tokio::time::Instant::now();
    drop(announcer_a);
    members_until(&mut stream, &mut members, Duration::from_secs(5), |m| {
        m.is_empty()
    })
    .await;
    assert!(
        crashed_at.elapsed() >= ttl / 2,
        "not before its TTL: {:?}",
        crashed_at.elapsed()
    );
}
